//! Shared server and client configurations built once from [`TlsCreds`].

use alloc::string::{String, ToString};
use alloc::sync::Arc;
use alloc::vec::Vec;
use core::fmt;

use pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::client::WebPkiServerVerifier;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::server::WebPkiClientVerifier;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, RootCertStore, SignatureScheme};

use crate::acl::Acl;
use crate::backend::RustlsTime;
use crate::creds::{Endpoint, TlsCreds};
use crate::pin::ServerCertValidator;
use crate::x509::Cert;

/// Which TLS versions to offer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TlsVersions {
    /// TLS 1.3 only (default).
    #[default]
    Tls13,
    /// TLS 1.3 and 1.2, for old peers.
    #[cfg(feature = "tls12")]
    Tls12AndTls13,
}

impl TlsVersions {
    fn list(self) -> &'static [&'static rustls::SupportedProtocolVersion] {
        static V13: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS13];
        #[cfg(feature = "tls12")]
        static V12: &[&rustls::SupportedProtocolVersion] =
            &[&rustls::version::TLS13, &rustls::version::TLS12];
        match self {
            TlsVersions::Tls13 => V13,
            #[cfg(feature = "tls12")]
            TlsVersions::Tls12AndTls13 => V12,
        }
    }
}

/// A configuration could not be built from the credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl core::error::Error for ConfigError {}

fn cfg_err(what: &str, e: impl fmt::Display) -> ConfigError {
    ConfigError(alloc::format!("{what}: {e}"))
}

/// Options for [`TlsServerConfig::with_options`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ServerOptions {
    /// TLS versions to accept.
    pub versions: TlsVersions,
    /// Only clients whose certificate DN this list allows may connect (needs `verify_peer`).
    pub acl: Option<Acl>,
    /// ALPN protocols to accept, in preference order (empty: no ALPN).
    pub alpn: Vec<Vec<u8>>,
}

/// Options for [`TlsClientConfig::with_options`].
#[derive(Debug, Clone, Default)]
#[non_exhaustive]
pub struct ClientOptions {
    /// TLS versions to offer.
    pub versions: TlsVersions,
    /// Called after chain and host-name validation to accept or refuse the server's
    /// certificate (e.g. [`TrustedServers`](crate::TrustedServers)).
    pub validator: Option<Arc<dyn ServerCertValidator>>,
    /// ALPN protocols to offer.
    pub alpn: Vec<Vec<u8>>,
}

/// A server configuration, shared (cheap clones) by any number of connections and services.
#[derive(Debug, Clone)]
pub struct TlsServerConfig {
    pub(crate) inner: Arc<rustls::ServerConfig>,
}

/// A client configuration, shared (cheap clones) by any number of connections.
#[derive(Debug, Clone)]
pub struct TlsClientConfig {
    pub(crate) inner: Arc<rustls::ClientConfig>,
}

fn roots(creds: &TlsCreds) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut roots = RootCertStore::empty();
    for c in &creds.inner.ca_certs {
        roots
            .add(c.clone())
            .map_err(|e| cfg_err("ca-cert.pem: cannot use the CA certificate", e))?;
    }
    Ok(Arc::new(roots))
}

/// The provider with its cipher suites reordered: AES-128-GCM first (TLS 1.3's mandatory
/// suite, 128-bit security), then AES-256-GCM, then ChaCha20-Poly1305, each TLS 1.3 before 1.2.
/// Peers (gnutls, OpenSSL) list AES-256-GCM first; AES-128 takes 10 AES rounds instead of 14, so
/// choosing it makes bulk transfers cheaper on both ends (bench/nbd.py: NBD over TLS).
fn aes128_first(
    provider: &Arc<rustls::crypto::CryptoProvider>,
) -> Arc<rustls::crypto::CryptoProvider> {
    use rustls::CipherSuite as C;
    let rank = |s: &rustls::SupportedCipherSuite| match s.suite() {
        C::TLS13_AES_128_GCM_SHA256 => 0,
        C::TLS13_AES_256_GCM_SHA384 => 1,
        C::TLS13_CHACHA20_POLY1305_SHA256 => 2,
        C::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256 | C::TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256 => 3,
        C::TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 | C::TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384 => 4,
        _ => 5,
    };
    let mut p = (**provider).clone();
    p.cipher_suites.sort_by_key(rank);
    Arc::new(p)
}

impl TlsServerConfig {
    /// TLS 1.3 only, no ACL.
    pub fn new(creds: &TlsCreds) -> Result<Self, ConfigError> {
        Self::with_options(creds, &ServerOptions::default())
    }

    /// Builds a server configuration. Client certificates are required and verified (CA,
    /// validity, clientAuth purpose, CRLs) when the credentials have `verify_peer`.
    pub fn with_options(creds: &TlsCreds, opts: &ServerOptions) -> Result<Self, ConfigError> {
        let c = &creds.inner;
        if c.opts.endpoint != Endpoint::Server {
            return Err(ConfigError(
                "these credentials were loaded for endpoint=client; a server needs endpoint=server"
                    .into(),
            ));
        }
        let provider = c.opts.backend.provider.clone();
        let verifier: Arc<dyn ClientCertVerifier> = if c.opts.verify_peer {
            let inner =
                WebPkiClientVerifier::builder_with_provider(roots(creds)?, provider.clone())
                    .with_crls(c.crls.iter().cloned())
                    .allow_unknown_revocation_status()
                    .build()
                    .map_err(|e| cfg_err("cannot build the client certificate verifier", e))?;
            Arc::new(AclVerifier {
                inner,
                acl: opts.acl.clone(),
            })
        } else {
            if opts.acl.is_some() {
                return Err(ConfigError(
                    "an ACL on client certificate names needs verify-peer=on (clients send no certificate otherwise)".into(),
                ));
            }
            WebPkiClientVerifier::no_client_auth()
        };
        let key = c
            .key
            .as_ref()
            .ok_or_else(|| ConfigError("no server private key loaded".into()))?
            .clone_key();
        let mut cfg = rustls::ServerConfig::builder_with_details(
            aes128_first(&provider),
            Arc::new(RustlsTime(c.opts.time.clone())),
        )
        .with_protocol_versions(opts.versions.list())
        .map_err(|e| cfg_err("the crypto backend does not support these TLS versions", e))?
        .with_client_cert_verifier(verifier)
        .with_single_cert(c.chain.clone(), key)
        .map_err(|e| cfg_err("cannot use server-cert.pem/server-key.pem", e))?;
        cfg.alpn_protocols = opts.alpn.clone();
        // No TLS 1.3 session tickets (rustls sends two by default): nothing resumes sessions
        // here, gnutls servers (QEMU, Xvnc, nbdkit) send none either, and TigerVNC's viewer
        // stalls when tickets arrive together with the first application data.
        cfg.send_tls13_tickets = 0;
        // The server picks the suite (AES-128-GCM first: see `aes128_first`).
        cfg.ignore_client_order = true;
        Ok(Self {
            inner: Arc::new(cfg),
        })
    }
}

impl TlsClientConfig {
    /// TLS 1.3 only, no validator.
    pub fn new(creds: &TlsCreds) -> Result<Self, ConfigError> {
        Self::with_options(creds, &ClientOptions::default())
    }

    /// Builds a client configuration: the server's chain is validated against `ca-cert.pem`
    /// (with CRLs) and its host name or IP against the certificate's subject alternative
    /// names; then the optional validator decides. The client certificate is sent if loaded.
    pub fn with_options(creds: &TlsCreds, opts: &ClientOptions) -> Result<Self, ConfigError> {
        Self::build(creds, opts, opts.versions.list())
    }

    pub(crate) fn build(
        creds: &TlsCreds,
        opts: &ClientOptions,
        versions: &'static [&'static rustls::SupportedProtocolVersion],
    ) -> Result<Self, ConfigError> {
        let c = &creds.inner;
        if c.opts.endpoint != Endpoint::Client {
            return Err(ConfigError(
                "these credentials were loaded for endpoint=server; a client needs endpoint=client"
                    .into(),
            ));
        }
        let provider = c.opts.backend.provider.clone();
        let inner = WebPkiServerVerifier::builder_with_provider(roots(creds)?, provider.clone())
            .with_crls(c.crls.iter().cloned())
            .allow_unknown_revocation_status()
            .build()
            .map_err(|e| cfg_err("cannot build the server certificate verifier", e))?;
        let verifier = Arc::new(ValidatingVerifier {
            inner,
            validator: opts.validator.clone(),
        });
        let builder = rustls::ClientConfig::builder_with_details(
            provider,
            Arc::new(RustlsTime(c.opts.time.clone())),
        )
        .with_protocol_versions(versions)
        .map_err(|e| cfg_err("the crypto backend does not support these TLS versions", e))?
        .dangerous()
        .with_custom_certificate_verifier(verifier);
        let mut cfg = match &c.key {
            Some(k) if !c.chain.is_empty() => builder
                .with_client_auth_cert(c.chain.clone(), k.clone_key())
                .map_err(|e| cfg_err("cannot use client-cert.pem/client-key.pem", e))?,
            _ => builder.with_no_client_auth(),
        };
        cfg.alpn_protocols = opts.alpn.clone();
        Ok(Self {
            inner: Arc::new(cfg),
        })
    }
}

#[derive(Debug)]
struct AclVerifier {
    inner: Arc<dyn ClientCertVerifier>,
    acl: Option<Acl>,
}

impl ClientCertVerifier for AclVerifier {
    fn offer_client_auth(&self) -> bool {
        self.inner.offer_client_auth()
    }
    fn client_auth_mandatory(&self) -> bool {
        self.inner.client_auth_mandatory()
    }
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.inner.root_hint_subjects()
    }
    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        let ok = self
            .inner
            .verify_client_cert(end_entity, intermediates, now)?;
        if let Some(acl) = &self.acl {
            let dn = Cert::parse(end_entity.as_ref())
                .map(|c| c.subject_dn())
                .unwrap_or_default();
            if !acl.is_allowed(&dn) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

#[derive(Debug)]
struct ValidatingVerifier {
    inner: Arc<WebPkiServerVerifier>,
    validator: Option<Arc<dyn ServerCertValidator>>,
}

impl ServerCertVerifier for ValidatingVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let ok = self.inner.verify_server_cert(
            end_entity,
            intermediates,
            server_name,
            ocsp_response,
            now,
        )?;
        if let Some(v) = &self.validator {
            let host = host_string(server_name);
            if !v.accept(&host, end_entity.as_ref()) {
                return Err(rustls::Error::InvalidCertificate(
                    rustls::CertificateError::ApplicationVerificationFailure,
                ));
            }
        }
        Ok(ok)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls12_signature(message, cert, dss)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.inner.verify_tls13_signature(message, cert, dss)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.inner.supported_verify_schemes()
    }
}

pub(crate) fn server_name(name: &str) -> Result<ServerName<'static>, ConfigError> {
    ServerName::try_from(name.to_string()).map_err(|_| {
        ConfigError(alloc::format!(
            "'{name}' is neither a valid DNS name nor an IP address"
        ))
    })
}

fn host_string(name: &ServerName<'_>) -> String {
    let ip = match name {
        ServerName::DnsName(d) => return d.as_ref().to_string(),
        ServerName::IpAddress(pki_types::IpAddr::V4(a)) => &a.as_ref()[..],
        ServerName::IpAddress(pki_types::IpAddr::V6(a)) => &a.as_ref()[..],
        _ => return String::new(),
    };
    crate::x509::format_ip(ip).unwrap_or_default()
}
