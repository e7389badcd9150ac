//! TLS for the pump (a `tls-glue` layer per connection from one shared configuration) and
//! loading credentials in the QEMU layout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tls_glue::{
    Acl, AclFormat, AclPolicy, ClientOptions, CredsOptions, Endpoint, ServerOptions,
    TlsClientConfig, TlsCreds, TlsLayer, TlsServerConfig, TlsVersions,
};

use crate::pump::TlsStarter;

fn tls_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("TLS: {e}")
}

/// Makes a server-side TLS layer per connection from one shared configuration.
pub fn server_starter(config: TlsServerConfig) -> TlsStarter {
    Box::new(move || TlsLayer::server(&config).map_err(tls_err))
}

/// Makes a client-side TLS layer verifying `server_name`.
pub fn client_starter(config: TlsClientConfig, server_name: String) -> TlsStarter {
    Box::new(move || TlsLayer::client(&config, &server_name).map_err(tls_err))
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
