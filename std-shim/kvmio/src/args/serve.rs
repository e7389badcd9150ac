//! `kvmio serve`: flags given on the command line override the configuration file.

use std::path::PathBuf;

use clap::Args;
use std_shim::services::Runtime;
use std_shim::tls::TlsPolicy;

use super::{runtime, serve_tls_policy};

/// `kvmio serve`.
#[derive(Args, Debug, Default)]
pub(crate) struct ServeArgs {
    /// TOML configuration file; flags given on the command line override it. See
    /// docs/kvmio-serve.toml for every key.
    #[arg(long, value_name = "FILE")]
    pub(crate) config: Option<PathBuf>,
    /// TLS policy (default require).
    #[arg(long, value_parser = serve_tls_policy())]
    pub(crate) tls: Option<TlsPolicy>,
    /// Credentials directory in the QEMU layout (default: development credentials, generated
    /// on first run in $XDG_DATA_HOME/kvmio/dev-pki or ~/.local/share/kvmio/dev-pki).
    #[arg(long, value_name = "DIR")]
    pub(crate) tls_creds: Option<PathBuf>,
    /// Require and verify client certificates (default yes).
    #[arg(long, value_name = "yes|no")]
    pub(crate) tls_verify_peer: Option<String>,
    /// Allow only clients whose certificate DN matches (exact or glob; repeatable).
    #[arg(long, value_name = "DN")]
    pub(crate) tls_authz: Vec<String>,
    /// Also allow TLS 1.2.
    #[arg(long)]
    pub(crate) tls12: bool,
    /// VNC listen address (repeatable; default 127.0.0.1:5900).
    #[arg(long, value_name = "ADDR")]
    pub(crate) vnc_listen: Vec<String>,
    /// Do not serve VNC.
    #[arg(long)]
    pub(crate) no_vnc: bool,
    /// VNC security types (TigerVNC names, preferred first).
    #[arg(long, value_name = "LIST")]
    pub(crate) vnc_security: Option<String>,
    /// VNC password file (vncpasswd -f format or a text line).
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// Plain users file (`user:password` lines).
    #[arg(long, value_name = "FILE")]
    pub(crate) plain_users: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) viewers: super::ViewerArgs,
    #[command(flatten)]
    pub(crate) web: super::WebArgs,
    /// Serve this PNG instead of the animated test pattern.
    #[arg(long, value_name = "FILE")]
    pub(crate) image: Option<PathBuf>,
    /// Test pattern size.
    #[arg(long, value_name = "WxH")]
    pub(crate) size: Option<String>,
    /// Desktop name.
    #[arg(long)]
    pub(crate) name: Option<String>,
    #[command(flatten)]
    pub(crate) hid: super::gadget::HidArgs,
    #[command(flatten)]
    pub(crate) media: super::gadget::MediaArgs,
    #[command(flatten)]
    pub(crate) video: super::gadget::VideoArgs,
    /// NBD listen address (repeatable; default 127.0.0.1:10809).
    #[arg(long, value_name = "ADDR")]
    pub(crate) nbd_listen: Vec<String>,
    /// NBD Unix socket.
    #[arg(long, value_name = "PATH")]
    pub(crate) nbd_unix: Option<PathBuf>,
    /// Do not serve NBD.
    #[arg(long)]
    pub(crate) no_nbd: bool,
    /// Export a file, a block device or an http:// URL (read with range requests, read-only)
    /// (repeatable).
    #[arg(long = "export", value_name = "NAME=PATH")]
    pub(crate) exports: Vec<String>,
    /// Export a RAM disk (repeatable; default one of 64M named "disk"). Its data lives only
    /// as long as the process: FLUSH and FUA promise nothing for it.
    #[arg(long = "memory", value_name = "NAME=SIZE")]
    pub(crate) memory: Vec<String>,
    /// Refuse writes on every export.
    #[arg(long)]
    pub(crate) read_only: bool,
    /// Threads or tokio tasks.
    #[arg(long, value_parser = runtime())]
    pub(crate) runtime: Option<Runtime>,
    /// Most connections per service.
    #[arg(long)]
    pub(crate) max_connections: Option<usize>,
    /// Listen backlog of every listener (default: the most the system allows,
    /// net.core.somaxconn).
    #[arg(long, value_name = "N")]
    pub(crate) backlog: Option<u32>,
    /// Seconds a client has to finish negotiating.
    #[arg(long)]
    pub(crate) handshake_timeout: Option<u64>,
}
