//! `generate_qemu_layout`: a CA, a server and a client certificate in the QEMU directory
//! layout, made the way QEMU's documentation makes them with certtool (feature `generate`).

use std::format;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::string::{String, ToString};
use std::vec::Vec;

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose, SanType,
    SerialNumber,
};

/// Key type of the generated certificates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum KeyAlgorithm {
    /// ECDSA P-256 with SHA-256 (default: small, fast, accepted by gnutls, OpenSSL, rustls).
    #[default]
    EcdsaP256,
    /// ECDSA P-384 with SHA-384.
    EcdsaP384,
    /// Ed25519 (not accepted by every peer).
    Ed25519,
    /// RSA 2048 (what certtool makes by default; widest compatibility).
    Rsa2048,
    /// RSA 3072.
    Rsa3072,
}

/// What to generate.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct GenerateOptions {
    /// DNS names of the server (subject alternative names; the first is also its CN).
    pub hostnames: Vec<String>,
    /// IP addresses of the server (subject alternative names).
    pub ips: Vec<IpAddr>,
    /// Common name of the client certificate (what an ACL matches, with the organization).
    pub client_cn: String,
    /// Organization (O=) of every certificate.
    pub organization: String,
    /// Validity in days, from one hour ago.
    pub validity_days: u32,
    /// Key type for all three keys.
    pub key_algorithm: KeyAlgorithm,
    /// Replace existing files instead of refusing.
    pub overwrite: bool,
}

impl Default for GenerateOptions {
    fn default() -> Self {
        Self {
            hostnames: std::vec!["localhost".into()],
            ips: std::vec![
                IpAddr::from([127, 0, 0, 1]),
                IpAddr::from([0, 0, 0, 0, 0, 0, 0, 1u16])
            ],
            client_cn: "client.example.com".into(),
            organization: "kvmio".into(),
            validity_days: 3650,
            key_algorithm: KeyAlgorithm::EcdsaP256,
            overwrite: false,
        }
    }
}

/// What [`generate_qemu_layout`] wrote.
#[derive(Debug, Clone)]
pub struct GeneratedFiles {
    /// Every file written, in order.
    pub files: Vec<PathBuf>,
    /// The client certificate's subject DN, as an ACL (QEMU `authz-simple`) would name it.
    pub client_dn: String,
    /// SHA-256 fingerprint of the server certificate (`AB:CD:…`).
    pub server_fingerprint: String,
}

/// Files written, in this order.
pub const LAYOUT_FILES: [&str; 7] = [
    "ca-cert.pem",
    "ca-key.pem",
    "ca-crl.pem",
    "server-cert.pem",
    "server-key.pem",
    "client-cert.pem",
    "client-key.pem",
];

fn err(what: &str, e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(format!("{what}: {e}"))
}

fn new_key(alg: KeyAlgorithm) -> std::io::Result<KeyPair> {
    let r = match alg {
        KeyAlgorithm::EcdsaP256 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256),
        KeyAlgorithm::EcdsaP384 => KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384),
        KeyAlgorithm::Ed25519 => KeyPair::generate_for(&rcgen::PKCS_ED25519),
        KeyAlgorithm::Rsa2048 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_2048)
        }
        KeyAlgorithm::Rsa3072 => {
            KeyPair::generate_rsa_for(&rcgen::PKCS_RSA_SHA256, rcgen::RsaKeySize::_3072)
        }
    };
    r.map_err(|e| err("key generation failed", e))
}

fn serial() -> std::io::Result<SerialNumber> {
    let mut b = [0u8; 16];
    getrandom::fill(&mut b).map_err(|e| err("no randomness", e))?;
    b[0] &= 0x7f;
    b[0] |= 0x01;
    Ok(SerialNumber::from_slice(&b))
}

fn write_file(path: &Path, data: &[u8], secret: bool, overwrite: bool) -> std::io::Result<()> {
    use std::io::Write;
    let mut o = std::fs::OpenOptions::new();
    o.write(true);
    if overwrite {
        o.create(true).truncate(true);
    } else {
        o.create_new(true);
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        o.mode(if secret { 0o600 } else { 0o644 });
    }
    let mut f = o
        .open(path)
        .map_err(|e| err(&format!("{}", path.display()), e))?;
    f.write_all(data)?;
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    }
    Ok(())
}

/// Generates a private CA, a server certificate and a client certificate in `dir` (created if
/// needed) in the QEMU layout, ready for QEMU (`tls-creds-x509,dir=`), qemu-nbd, nbdkit
/// (`--tls-certificates=`) and libnbd (`tls-certificates=`), and for this crate:
///
/// * `ca-cert.pem`: self-signed, basic constraints CA:TRUE, key usage keyCertSign + cRLSign
///   (certtool `ca`, `cert_signing_key`);
/// * `ca-key.pem` (mode 0600): needed only to issue more certificates: move it off the host;
/// * `ca-crl.pem`: an empty CRL signed by the CA;
/// * `server-cert.pem`/`server-key.pem`: CA:FALSE, SAN DNS + IP, EKU serverAuth, key usage
///   digitalSignature (+ keyEncipherment for RSA keys) (certtool `tls_www_server`,
///   `signing_key`, `encryption_key`);
/// * `client-cert.pem`/`client-key.pem`: the same with EKU clientAuth and CN `client_cn`.
///
/// Keys are PKCS#8 PEM with mode 0600. Existing files are kept (error) unless `overwrite`.
pub fn generate_qemu_layout(dir: &Path, opts: &GenerateOptions) -> std::io::Result<GeneratedFiles> {
    if opts.hostnames.is_empty() && opts.ips.is_empty() {
        return Err(err(
            "nothing to name the server",
            "give at least one host name or IP address",
        ));
    }
    std::fs::create_dir_all(dir)?;
    if !opts.overwrite {
        for f in LAYOUT_FILES {
            if dir.join(f).exists() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!("{} exists; refusing to overwrite it", dir.join(f).display()),
                ));
            }
        }
    }
    let now = time::OffsetDateTime::now_utc();
    let not_before = now - time::Duration::hours(1);
    let not_after = now + time::Duration::days(i64::from(opts.validity_days.max(1)));

    let name = |cn: &str| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, opts.organization.as_str());
        dn.push(DnType::CommonName, cn);
        dn
    };

    let ca_key = new_key(opts.key_algorithm)?;
    let mut ca = CertificateParams::default();
    ca.distinguished_name = name(&format!("{} CA", opts.organization));
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = std::vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.not_before = not_before;
    ca.not_after = not_after;
    ca.serial_number = Some(serial()?);
    let ca_cert = ca
        .self_signed(&ca_key)
        .map_err(|e| err("cannot make the CA certificate", e))?;
    let issuer = Issuer::new(ca, &ca_key);

    let leaf = |cn: &str, server: bool| -> std::io::Result<(KeyPair, rcgen::Certificate)> {
        let key = new_key(opts.key_algorithm)?;
        let mut p = CertificateParams::default();
        p.distinguished_name = name(cn);
        p.is_ca = IsCa::ExplicitNoCa;
        // keyEncipherment is meaningless for ECDSA/EdDSA keys, but QEMU (gnutls) refuses a
        // leaf whose critical key usage lacks it, whatever the key type ("usage does not
        // permit key encipherment"); certtool's `encryption_key` sets it too. It harms nothing.
        p.key_usages = std::vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment
        ];
        p.extended_key_usages = std::vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if server {
            for h in &opts.hostnames {
                p.subject_alt_names.push(SanType::DnsName(
                    h.as_str()
                        .try_into()
                        .map_err(|e| err(&format!("host name '{h}'"), e))?,
                ));
            }
            for ip in &opts.ips {
                p.subject_alt_names.push(SanType::IpAddress(*ip));
            }
        }
        p.not_before = not_before;
        p.not_after = not_after;
        p.serial_number = Some(serial()?);
        p.use_authority_key_identifier_extension = true;
        let cert = p
            .signed_by(&key, &issuer)
            .map_err(|e| err("cannot sign the certificate", e))?;
        Ok((key, cert))
    };
    let server_cn = opts
        .hostnames
        .first()
        .cloned()
        .unwrap_or_else(|| opts.ips[0].to_string());
    let (server_key, server_cert) = leaf(&server_cn, true)?;
    let (client_key, client_cert) = leaf(&opts.client_cn, false)?;

    let crl = CertificateRevocationListParams {
        this_update: not_before,
        next_update: not_after,
        crl_number: SerialNumber::from(1u64),
        issuing_distribution_point: None,
        revoked_certs: Vec::new(),
        key_identifier_method: KeyIdMethod::Sha256,
    }
    .signed_by(&issuer)
    .map_err(|e| err("cannot sign the CRL", e))?;

    let contents: [(String, bool); 7] = [
        (ca_cert.pem(), false),
        (ca_key.serialize_pem(), true),
        (crl.pem().map_err(|e| err("CRL PEM", e))?, false),
        (server_cert.pem(), false),
        (server_key.serialize_pem(), true),
        (client_cert.pem(), false),
        (client_key.serialize_pem(), true),
    ];
    let mut files = Vec::new();
    for (name, (data, secret)) in LAYOUT_FILES.iter().zip(contents.iter()) {
        let path = dir.join(name);
        write_file(&path, data.as_bytes(), *secret, opts.overwrite)?;
        files.push(path);
    }
    Ok(GeneratedFiles {
        files,
        client_dn: crate::x509::Cert::parse(client_cert.der())
            .map(|c| c.subject_dn())
            .unwrap_or_default(),
        server_fingerprint: crate::pin::format_fingerprint(&crate::pin::fingerprint_sha256(
            server_cert.der(),
        )),
    })
}
