//! `kvmio serve`, the main job: a VNC console and NBD virtual media from one process, both over
//! TLS from one credentials object (as QEMU's `-object tls-creds-x509` shared by `-vnc` and the
//! NBD server), configured by flags or a TOML file. With no arguments it works out of the box:
//! TLS required, development credentials generated on first run, the animated test pattern on
//! 127.0.0.1:5900 and a 64 MiB RAM disk on 127.0.0.1:10809.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, ValueEnum};
use nbd_core::server::TlsMode;
use serde::Deserialize;

use crate::io::listen::ServerControl;
use crate::io::{Endpoint, parse_size};
use crate::nbd::catalog::Catalog;
use crate::nbd::server::NbdServiceOptions;
use crate::services::{self, Runtime};
use crate::vnc::cli::{VncSettings, vnc_config, vnc_service};

/// TLS policy of `kvmio serve`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsPolicy {
    /// TLS required for both services (NBD FORCEDTLS; VNC offers only the X509 types).
    Require,
    /// NBD offers TLS and allows plaintext; VNC offers the X509 types first, then the others.
    On,
    /// No TLS.
    Off,
}

/// `kvmio serve`.
#[derive(Args, Debug, Default)]
pub struct ServeAllArgs {
    /// TOML configuration file; flags given on the command line override it. See
    /// docs/kvmio-serve.toml for every key.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// TLS policy (default require).
    #[arg(long, value_enum)]
    pub tls: Option<TlsPolicy>,
    /// Credentials directory in the QEMU layout (default: development credentials, generated
    /// on first run in $XDG_DATA_HOME/kvmio/dev-pki or ~/.local/share/kvmio/dev-pki).
    #[arg(long, value_name = "DIR")]
    pub tls_creds: Option<PathBuf>,
    /// Require and verify client certificates (default yes).
    #[arg(long, value_name = "yes|no")]
    pub tls_verify_peer: Option<String>,
    /// Allow only clients whose certificate DN matches (exact or glob; repeatable).
    #[arg(long, value_name = "DN")]
    pub tls_authz: Vec<String>,
    /// Also allow TLS 1.2.
    #[arg(long)]
    pub tls12: bool,
    /// VNC listen address (repeatable; default 127.0.0.1:5900).
    #[arg(long, value_name = "ADDR")]
    pub vnc_listen: Vec<String>,
    /// Do not serve VNC.
    #[arg(long)]
    pub no_vnc: bool,
    /// VNC security types (TigerVNC names, preferred first).
    #[arg(long, value_name = "LIST")]
    pub vnc_security: Option<String>,
    /// VNC password file (vncpasswd -f format or a text line).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Plain users file (`user:password` lines).
    #[arg(long, value_name = "FILE")]
    pub plain_users: Option<PathBuf>,
    /// Serve this PNG instead of the animated test pattern.
    #[arg(long, value_name = "FILE")]
    pub image: Option<PathBuf>,
    /// Test pattern size.
    #[arg(long, value_name = "WxH")]
    pub size: Option<String>,
    /// Desktop name.
    #[arg(long)]
    pub name: Option<String>,
    /// NBD listen address (repeatable; default 127.0.0.1:10809).
    #[arg(long, value_name = "ADDR")]
    pub nbd_listen: Vec<String>,
    /// NBD Unix socket.
    #[arg(long, value_name = "PATH")]
    pub nbd_unix: Option<PathBuf>,
    /// Do not serve NBD.
    #[arg(long)]
    pub no_nbd: bool,
    /// Export a file or block device (repeatable).
    #[arg(long = "export", value_name = "NAME=PATH")]
    pub exports: Vec<String>,
    /// Export a RAM disk (repeatable; default one of 64M named "disk"). Its data lives only
    /// as long as the process: FLUSH and FUA promise nothing for it.
    #[arg(long = "memory", value_name = "NAME=SIZE")]
    pub memory: Vec<String>,
    /// Refuse writes on every export.
    #[arg(long)]
    pub read_only: bool,
    /// Threads or tokio tasks.
    #[arg(long, value_enum)]
    pub runtime: Option<Runtime>,
    /// Most connections per service.
    #[arg(long)]
    pub max_connections: Option<usize>,
    /// Listen backlog of every listener (default: the most the system allows,
    /// net.core.somaxconn).
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,
    /// Seconds a client has to finish negotiating.
    #[arg(long)]
    pub handshake_timeout: Option<u64>,
}

/// The configuration file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileConfig {
    /// `threads` or `tokio`.
    pub runtime: Option<Runtime>,
    /// Most connections per service.
    pub max_connections: Option<usize>,
    /// Listen backlog (default: the system's maximum).
    pub backlog: Option<u32>,
    /// Seconds to finish negotiating.
    pub handshake_timeout: Option<u64>,
    /// `[tls]`.
    #[serde(default)]
    pub tls: FileTls,
    /// `[vnc]`.
    #[serde(default)]
    pub vnc: FileVnc,
    /// `[nbd]`.
    #[serde(default)]
    pub nbd: FileNbd,
}

/// `[tls]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileTls {
    /// `require`, `on` or `off`.
    pub mode: Option<TlsPolicy>,
    /// Credentials directory.
    pub creds: Option<PathBuf>,
    /// Require client certificates.
    pub verify_peer: Option<bool>,
    /// DN allow-list.
    #[serde(default)]
    pub authz: Vec<String>,
    /// Allow TLS 1.2.
    #[serde(default)]
    pub tls12: bool,
}

/// `[vnc]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileVnc {
    /// Serve VNC (default true).
    pub enabled: Option<bool>,
    /// Listen addresses.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Security list.
    pub security: Option<String>,
    /// Password file.
    pub password_file: Option<PathBuf>,
    /// Plain users file.
    pub plain_users: Option<PathBuf>,
    /// Still image.
    pub image: Option<PathBuf>,
    /// Pattern size.
    pub size: Option<String>,
    /// Desktop name.
    pub name: Option<String>,
}

/// `[nbd]`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileNbd {
    /// Serve NBD (default true).
    pub enabled: Option<bool>,
    /// Listen addresses.
    #[serde(default)]
    pub listen: Vec<String>,
    /// Unix socket.
    pub unix: Option<PathBuf>,
    /// Refuse writes.
    #[serde(default)]
    pub read_only: bool,
    /// `[[nbd.exports]]`: `name` and either `path` or `memory`.
    #[serde(default)]
    pub exports: Vec<FileExport>,
}

/// One export in the file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct FileExport {
    /// Export name.
    pub name: String,
    /// File or block device.
    pub path: Option<PathBuf>,
    /// RAM disk size (`64M`).
    pub memory: Option<String>,
}

/// The per-user directory for development credentials.
pub fn dev_creds_dir() -> Result<PathBuf> {
    let base = match std::env::var_os("XDG_DATA_HOME").filter(|v| !v.is_empty()) {
        Some(d) => PathBuf::from(d),
        None => {
            let home = std::env::var_os("HOME")
                .context("neither XDG_DATA_HOME nor HOME is set: pass --tls-creds")?;
            PathBuf::from(home).join(".local/share")
        }
    };
    Ok(base.join("kvmio").join("dev-pki"))
}

fn ensure_dev_creds(dir: &Path) -> Result<()> {
    if dir.join("server-cert.pem").exists() {
        eprintln!(
            "kvmio: WARNING: using DEVELOPMENT credentials from {} (made by kvmio; not for production)",
            dir.display()
        );
        return Ok(());
    }
    std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    let g = tls_glue::generate_qemu_layout(dir, &tls_glue::GenerateOptions::default())?;
    eprintln!(
        "kvmio: WARNING: generated DEVELOPMENT credentials in {}: a CA (its key is there too), a \
         server certificate for localhost/127.0.0.1/::1 and a client certificate ({}). Use them \
         for development only; for production pass --tls-creds with your own PKI.",
        dir.display(),
        g.client_dn
    );
    Ok(())
}

fn first_tcp(e: &[Endpoint]) -> Option<std::net::SocketAddr> {
    e.iter().find_map(|e| match e {
        Endpoint::Tcp(a) => Some(*a),
        Endpoint::Unix(_) => None,
    })
}

/// Runs `kvmio serve`.
pub fn run(a: ServeAllArgs) -> Result<()> {
    let file: FileConfig = match &a.config {
        Some(p) => {
            let text =
                std::fs::read_to_string(p).with_context(|| format!("read {}", p.display()))?;
            toml::from_str(&text).with_context(|| format!("{}", p.display()))?
        }
        None => FileConfig::default(),
    };
    let runtime = a.runtime.or(file.runtime).unwrap_or(Runtime::Threads);
    let max_connections = a.max_connections.or(file.max_connections).unwrap_or(64);
    let backlog = a.backlog.or(file.backlog);
    let handshake_timeout = a.handshake_timeout.or(file.handshake_timeout).unwrap_or(10);
    let policy = a.tls.or(file.tls.mode).unwrap_or(TlsPolicy::Require);
    let verify_peer = match a.tls_verify_peer.as_deref() {
        Some("yes") => true,
        Some("no") => false,
        Some(o) => bail!("--tls-verify-peer takes yes or no, not {o:?}"),
        None => file.tls.verify_peer.unwrap_or(true),
    };
    let authz: Vec<String> = if a.tls_authz.is_empty() {
        file.tls.authz.clone()
    } else {
        a.tls_authz.clone()
    };
    let tls12 = a.tls12 || file.tls.tls12;
    let serve_vnc = !a.no_vnc && file.vnc.enabled.unwrap_or(true);
    let serve_nbd = !a.no_nbd && file.nbd.enabled.unwrap_or(true);
    if !serve_vnc && !serve_nbd {
        bail!("nothing to serve (both VNC and NBD are disabled)");
    }

    // One credentials object, one server configuration, shared by both services.
    let (creds_dir, tls) = if policy == TlsPolicy::Off {
        (None, None)
    } else {
        let dir = match a.tls_creds.clone().or(file.tls.creds.clone()) {
            Some(d) => d,
            None => {
                let d = dev_creds_dir()?;
                ensure_dev_creds(&d)?;
                d
            }
        };
        let config = crate::tls::server_config(&dir, verify_peer, &authz, tls12)?;
        (Some(dir), Some(config))
    };

    let mut services = Vec::new();
    let mut vnc_addr = None;
    if serve_vnc {
        let listen = if a.vnc_listen.is_empty() {
            file.vnc.listen.clone()
        } else {
            a.vnc_listen.clone()
        };
        let endpoints = crate::io::endpoints(&listen, None, 5900)?;
        vnc_addr = first_tcp(&endpoints);
        let size = a
            .size
            .clone()
            .or(file.vnc.size.clone())
            .unwrap_or_else(|| "1024x768".into());
        let name = a
            .name
            .clone()
            .or(file.vnc.name.clone())
            .unwrap_or_else(|| "kvmio".into());
        let security = a.vnc_security.clone().or(file.vnc.security.clone());
        let password_file = a.password_file.clone().or(file.vnc.password_file.clone());
        let plain_users = a.plain_users.clone().or(file.vnc.plain_users.clone());
        let image = a.image.clone().or(file.vnc.image.clone());
        let config = vnc_config(&VncSettings {
            security: security.as_deref(),
            password_file: password_file.as_deref(),
            plain_users: plain_users.as_deref(),
            tls: tls.is_some(),
            image: image.as_deref(),
            size: &size,
            name: &name,
            handshake_timeout,
        })?;
        let x509 = config.security.iter().any(|n| n.is_x509());
        if policy == TlsPolicy::Require && config.security.iter().any(|n| !n.is_x509()) {
            bail!(
                "--tls require: every VNC security type must be an X509 one (X509None, X509Vnc, X509Plain)"
            );
        }
        if x509 && tls.is_none() {
            bail!("the X509 VNC security types need TLS (--tls on or require)");
        }
        config.validate(x509)?;
        services.push(vnc_service(
            config,
            tls.clone().filter(|_| x509),
            endpoints,
            max_connections,
            backlog,
        ));
    }
    let mut nbd_addr = None;
    let mut catalog = None;
    if serve_nbd {
        let (mut files, mut memory) =
            crate::nbd::catalog::parse_export_args(&a.exports, &a.memory)?;
        if files.is_empty() && memory.is_empty() {
            for e in &file.nbd.exports {
                match (&e.path, &e.memory) {
                    (Some(p), None) => files.push((e.name.clone(), p.clone())),
                    (None, Some(s)) => memory.push((e.name.clone(), parse_size(s)?)),
                    _ => bail!("export {:?}: give exactly one of path and memory", e.name),
                }
            }
        }
        let c = Catalog::build(&files, &memory, a.read_only || file.nbd.read_only, 64 << 20)?;
        catalog = Some(c);
        let listen = if a.nbd_listen.is_empty() {
            file.nbd.listen.clone()
        } else {
            a.nbd_listen.clone()
        };
        let unix = a.nbd_unix.clone().or(file.nbd.unix.clone());
        let endpoints = crate::io::endpoints(&listen, unix.as_deref(), 10809)?;
        nbd_addr = first_tcp(&endpoints);
        let tls_mode = match policy {
            TlsPolicy::Require => TlsMode::Forced,
            TlsPolicy::On => TlsMode::Selective,
            TlsPolicy::Off => TlsMode::Off,
        };
        services.push(crate::nbd::server::service(
            c,
            NbdServiceOptions {
                endpoints,
                tls_mode,
                tls: tls.clone(),
                handshake_timeout: (handshake_timeout > 0)
                    .then(|| Duration::from_secs(handshake_timeout)),
                max_connections,
                backlog,
            },
        ));
    }

    let control = Arc::new(ServerControl::default());
    services::stop_on_signals(&control)?;
    let printed = std::sync::Once::new();
    let expected = services.len();
    let bound_count = std::sync::atomic::AtomicUsize::new(0);
    let result = services::run(services, runtime, control, |label, what, bound| {
        for b in bound {
            eprintln!("kvmio: {label} serving {what} on {b}");
        }
        if bound_count.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == expected {
            printed.call_once(|| {
                print_howto(
                    creds_dir.as_deref(),
                    vnc_addr,
                    nbd_addr,
                    catalog,
                    verify_peer,
                )
            });
        }
    });
    if let Some(c) = catalog {
        c.flush_all();
    }
    result?;
    eprintln!("kvmio: stopped");
    Ok(())
}

/// The exact commands to connect with kvmio, nbdinfo, qemu-img and gvnccapture.
fn print_howto(
    creds: Option<&Path>,
    vnc: Option<std::net::SocketAddr>,
    nbd: Option<std::net::SocketAddr>,
    catalog: Option<&Catalog>,
    verify_peer: bool,
) {
    let mut s = String::from("\nConnect with:\n");
    let export = catalog
        .and_then(|c| c.specs().first().map(|s| s.name.clone()))
        .unwrap_or_default();
    if let Some(a) = nbd {
        let (host, port) = (a.ip(), a.port());
        let host = if a.is_ipv6() {
            format!("[{host}]")
        } else {
            host.to_string()
        };
        match creds {
            Some(d) => {
                let d = d.display();
                s += &format!("  kvmio nbd info --tls-creds {d} nbds://{host}:{port}/{export}\n");
                s += &format!(
                    "  kvmio nbd copy --tls-creds {d} nbds://{host}:{port}/{export} disk.img\n"
                );
                s += &format!("  nbdinfo 'nbds://{host}:{port}/{export}?tls-certificates={d}'\n");
                s += &format!(
                    "  qemu-img info --object tls-creds-x509,id=tls0,endpoint=client,dir={d} \
                     --image-opts driver=nbd,host={},port={port},export={export},tls-creds=tls0\n",
                    a.ip()
                );
            }
            None => {
                s += &format!("  kvmio nbd info nbd://{host}:{port}/{export}\n");
                s += &format!("  nbdinfo nbd://{host}:{port}/{export}\n");
                s += &format!("  qemu-img info nbd://{host}:{port}/{export}\n");
            }
        }
    }
    if let Some(a) = vnc {
        let host = if a.is_ipv6() {
            format!("[{}]", a.ip())
        } else {
            a.ip().to_string()
        };
        match creds {
            Some(d) => {
                let d = d.display();
                s += &format!(
                    "  kvmio vnc capture --tls-creds {d} vnc://{host}:{} screen.png\n",
                    a.port()
                );
                if a.port() >= 5900 {
                    if verify_peer {
                        s += &format!(
                            "  gvnccapture reads its certificates from ~/.pki: mkdir -p ~/.pki/CA ~/.pki/gvnccapture/private \
                             && cp {d}/ca-cert.pem ~/.pki/CA/cacert.pem && cp {d}/client-cert.pem ~/.pki/gvnccapture/clientcert.pem \
                             && cp {d}/client-key.pem ~/.pki/gvnccapture/private/clientkey.pem\n"
                        );
                    } else {
                        s += &format!(
                            "  gvnccapture reads the CA from ~/.pki: mkdir -p ~/.pki/CA && cp {d}/ca-cert.pem ~/.pki/CA/cacert.pem\n"
                        );
                    }
                    s += &format!("  gvnccapture {host}:{} screen.png\n", a.port() - 5900);
                }
            }
            None => {
                s += &format!("  kvmio vnc capture vnc://{host}:{} screen.png\n", a.port());
                if a.port() >= 5900 {
                    s += &format!("  gvnccapture {host}:{} screen.png\n", a.port() - 5900);
                }
            }
        }
    }
    eprint!("{s}");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_example_configuration_parses() {
        let text = include_str!("../../docs/kvmio-serve.toml");
        let c: FileConfig = toml::from_str(text).unwrap();
        assert_eq!(c.tls.mode, Some(TlsPolicy::Require));
        assert_eq!(c.nbd.exports.len(), 2);
        assert!(c.vnc.listen.iter().any(|l| l.contains("5900")));
    }

    #[test]
    fn unknown_keys_are_refused() {
        assert!(toml::from_str::<FileConfig>("[tls]\nmod = \"require\"\n").is_err());
        assert!(
            toml::from_str::<FileConfig>("[nbd]\nexports = [{ name = \"x\", size = 1 }]\n")
                .is_err()
        );
    }
}
