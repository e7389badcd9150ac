//! `tls-glue` behind the pump's [`SecureLink`], and loading credentials for the CLI.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tls_glue::{
    Acl, AclFormat, AclPolicy, ClientOptions, CredsOptions, Endpoint, ServerOptions,
    TlsClientConfig, TlsCreds, TlsLayer, TlsServerConfig, TlsVersions,
};

use crate::pump::{OutBuf, PeerInfo, SecureLink, TlsStarter};

struct Link(TlsLayer);

fn tls_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("TLS: {e}")
}

impl SecureLink for Link {
    fn feed(&mut self, ciphertext: &[u8]) -> Result<usize> {
        self.0.handle_ciphertext(ciphertext).map_err(tls_err)
    }

    fn recv_buffer(&mut self) -> &mut [u8] {
        self.0.ciphertext_buffer()
    }

    fn commit(&mut self, n: usize) -> Result<()> {
        self.0.commit_ciphertext(n).map_err(tls_err)
    }

    fn plaintext(&self) -> &[u8] {
        self.0.plaintext()
    }

    fn consume_plaintext(&mut self, n: usize) {
        self.0.consume_plaintext(n);
    }

    fn take_output(&mut self, out: &mut OutBuf) -> Result<()> {
        let p = self.0.pending_transmit();
        let n = p.len();
        out.extend(p);
        self.0.transmit_done(n);
        if let Some(e) = self.0.error() {
            // Send the alert (already appended), then fail.
            if n == 0 {
                return Err(tls_err(e));
            }
        }
        Ok(())
    }

    fn encrypt(&mut self, plain: &[u8], out: &mut OutBuf) -> Result<()> {
        let need = self.0.encrypted_len(plain.len());
        let n = self.0.encrypt(plain, out.tail(need)).map_err(tls_err)?;
        out.commit(n);
        Ok(())
    }

    fn is_handshaking(&self) -> bool {
        self.0.is_handshaking()
    }

    fn peer_closed(&self) -> bool {
        self.0.peer_closed()
    }

    fn close_notify(&mut self, out: &mut OutBuf) {
        let need = self.0.encrypted_len(0) + 64;
        if let Ok(n) = self.0.close_notify(out.tail(need)) {
            out.commit(n);
        }
    }

    fn peer(&self) -> PeerInfo {
        PeerInfo {
            subject: self.0.peer_subject_dn(),
            cipher: format!(
                "{} {} {}",
                self.0.protocol_version().unwrap_or("?"),
                self.0.cipher_suite().unwrap_or("?"),
                self.0.key_exchange_group().unwrap_or("")
            )
            .trim_end()
            .to_string(),
        }
    }
}

/// Makes a server-side TLS layer per connection from one shared configuration.
pub fn server_starter(config: TlsServerConfig) -> TlsStarter {
    Box::new(move || {
        Ok(Box::new(Link(TlsLayer::server(&config).map_err(tls_err)?)) as Box<dyn SecureLink>)
    })
}

/// Makes a client-side TLS layer verifying `server_name`.
pub fn client_starter(config: TlsClientConfig, server_name: String) -> TlsStarter {
    Box::new(move || {
        Ok(Box::new(Link(
            TlsLayer::client(&config, &server_name).map_err(tls_err)?,
        )) as Box<dyn SecureLink>)
    })
}

/// The credentials directory: the one given, or QEMU's default (`$HOME/.pki/qemu` if it
/// exists, else `/etc/pki/qemu`).
pub fn creds_dir(dir: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = dir {
        return Ok(d.to_path_buf());
    }
    for scope in [tls_glue::DirScope::User, tls_glue::DirScope::System] {
        if let Some(d) = tls_glue::default_dir(scope)
            && d.is_dir()
        {
            return Ok(d);
        }
    }
    bail!("no TLS credentials: pass --tls-creds DIR (or create $HOME/.pki/qemu or /etc/pki/qemu)")
}

/// Loads server credentials and builds the shared configuration. `authz` entries are DNs
/// (exact) or globs (containing `*` or `?`); a client matching none is refused.
pub fn server_config(
    dir: &Path,
    verify_peer: bool,
    authz: &[String],
    tls12: bool,
) -> Result<TlsServerConfig> {
    let creds = load(
        dir,
        CredsOptions::system(Endpoint::Server).verify_peer(verify_peer),
    )?;
    let acl = (!authz.is_empty()).then(|| {
        authz.iter().fold(Acl::new(AclPolicy::Deny), |acl, a| {
            let format = if a.contains(['*', '?']) {
                AclFormat::Glob
            } else {
                AclFormat::Exact
            };
            acl.rule(AclPolicy::Allow, format, a.clone())
        })
    });
    let opts = ServerOptions {
        versions: versions(tls12)?,
        acl,
        ..ServerOptions::default()
    };
    TlsServerConfig::with_options(&creds, &opts).map_err(|e| anyhow!("{}: {e}", dir.display()))
}

/// Loads client credentials (CA, CRL, optional client certificate) and builds the configuration.
pub fn client_config(dir: &Path, tls12: bool) -> Result<TlsClientConfig> {
    let creds = load(dir, CredsOptions::system(Endpoint::Client))?;
    let opts = ClientOptions {
        versions: versions(tls12)?,
        ..ClientOptions::default()
    };
    TlsClientConfig::with_options(&creds, &opts).map_err(|e| anyhow!("{}: {e}", dir.display()))
}

fn versions(tls12: bool) -> Result<TlsVersions> {
    Ok(if tls12 {
        TlsVersions::Tls12AndTls13
    } else {
        TlsVersions::Tls13
    })
}

fn load(dir: &Path, opts: CredsOptions) -> Result<TlsCreds> {
    match TlsCreds::load_dir(dir, opts) {
        Ok(c) => {
            for d in &c.report().diagnostics {
                match d.severity {
                    tls_glue::Severity::Note => log::debug!("{d}"),
                    _ => log::warn!("{d}"),
                }
            }
            Ok(c)
        }
        Err(report) => Err(anyhow!(
            "TLS credentials in {} are not usable:\n{report}",
            dir.display()
        ))
        .context("loading TLS credentials"),
    }
}
