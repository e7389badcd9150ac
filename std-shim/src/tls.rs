//! TLS for the pump (a `tls-glue` layer per connection from one shared configuration), the TLS
//! policy of a service, and loading credentials in the QEMU layout.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use tls_glue::{
    Acl, AclFormat, AclPolicy, ClientOptions, CredsOptions, Endpoint, ServerOptions,
    TlsClientConfig, TlsCreds, TlsLayer, TlsServerConfig, TlsVersions,
};

use crate::pump::TlsStarter;

/// How a service treats TLS; one policy for NBD and VNC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TlsPolicy {
    /// TLS required before anything is revealed: NBD FORCEDTLS (nbdkit `--tls=require`, QEMU
    /// with tls-creds); VNC offers only the X509 security types.
    Require,
    /// TLS offered, plaintext allowed: NBD offers STARTTLS (nbdkit `--tls=on`); VNC offers the
    /// X509 types first, then the others.
    On,
    /// No TLS: NBD refuses STARTTLS.
    Off,
}

impl TlsPolicy {
    /// The names [`FromStr`](std::str::FromStr) takes, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["require", "on", "off"];

    /// Its name: `require`, `on` or `off`.
    pub fn name(self) -> &'static str {
        match self {
            TlsPolicy::Require => "require",
            TlsPolicy::On => "on",
            TlsPolicy::Off => "off",
        }
    }

    /// The NBD server's TLS mode for this policy.
    pub fn nbd_mode(self) -> nbd_core::server::TlsMode {
        match self {
            TlsPolicy::Require => nbd_core::server::TlsMode::Forced,
            TlsPolicy::On => nbd_core::server::TlsMode::Selective,
            TlsPolicy::Off => nbd_core::server::TlsMode::Off,
        }
    }
}

impl std::fmt::Display for TlsPolicy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

impl std::str::FromStr for TlsPolicy {
    type Err = anyhow::Error;

    /// `require`, `on` or `off`.
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "require" => Ok(TlsPolicy::Require),
            "on" => Ok(TlsPolicy::On),
            "off" => Ok(TlsPolicy::Off),
            _ => bail!("unknown TLS policy {s:?} (require, on, off)"),
        }
    }
}

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
    let mut opts = ServerOptions::default();
    opts.versions = versions(tls12)?;
    opts.acl = acl;
    TlsServerConfig::with_options(&creds, &opts).map_err(|e| anyhow!("{}: {e}", dir.display()))
}

/// Loads client credentials (CA, CRL, optional client certificate) and builds the configuration.
pub fn client_config(dir: &Path, tls12: bool) -> Result<TlsClientConfig> {
    let creds = load(dir, CredsOptions::system(Endpoint::Client))?;
    let mut opts = ClientOptions::default();
    opts.versions = versions(tls12)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_by_name() {
        for name in TlsPolicy::NAMES {
            assert_eq!(name.parse::<TlsPolicy>().unwrap().to_string(), name);
        }
        assert!("forced".parse::<TlsPolicy>().is_err());
        assert_eq!(
            TlsPolicy::Require.nbd_mode(),
            nbd_core::server::TlsMode::Forced
        );
    }
}
