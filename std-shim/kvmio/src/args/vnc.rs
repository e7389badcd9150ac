//! `kvmio vnc serve` and `kvmio vnc capture`.

use std::path::PathBuf;

use clap::{Args, Subcommand};
use std_shim::services::Runtime;

use super::{YES_NO_EXPLAINED, YesNo, one_of, runtime};

/// `kvmio vnc …`.
#[derive(Subcommand)]
pub(crate) enum VncCommand {
    /// Serve a desktop over VNC: an animated test pattern, or a still image (--image).
    Serve(Box<VncServeArgs>),
    /// Connect to a VNC server and save its screen as a PNG file (like gvnccapture).
    Capture(VncCaptureArgs),
}

/// `kvmio vnc serve`.
#[derive(Args)]
pub(crate) struct VncServeArgs {
    /// Address to listen on (repeatable; default 127.0.0.1:5900; the port defaults to 5900).
    #[arg(long = "listen", value_name = "ADDR")]
    pub(crate) listen: Vec<String>,
    /// Security types offered, most preferred first, with TigerVNC's names: None, VncAuth,
    /// Plain, X509None, X509Vnc, X509Plain (e.g. X509Vnc,X509Plain,VncAuth). When any
    /// VeNCrypt type is listed, None and VncAuth are also offered inside VeNCrypt, as TigerVNC
    /// does. Default: the X509 types the credentials allow when --tls-creds is given, else
    /// VncAuth with a password file, else None.
    #[arg(long, value_name = "LIST")]
    pub(crate) security: Option<String>,
    /// VNC password: a TigerVNC `vncpasswd -f` file (8 obfuscated bytes) or a text file whose
    /// first line is the password (only 8 bytes count).
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// Users for Plain and X509Plain: `user:password` lines.
    #[arg(long, value_name = "FILE")]
    pub(crate) plain_users: Option<PathBuf>,
    #[command(flatten)]
    pub(crate) viewers: super::ViewerArgs,
    #[command(flatten)]
    pub(crate) web: super::WebArgs,
    /// TLS credentials directory in the QEMU layout (ca-cert.pem, server-cert.pem,
    /// server-key.pem, optional ca-crl.pem) for the X509 types.
    #[arg(long, value_name = "DIR")]
    pub(crate) tls_creds: Option<PathBuf>,
    /// Require and verify client certificates (default yes, as QEMU).
    #[arg(long, value_parser = one_of::<YesNo>(YES_NO_EXPLAINED), default_value_t = YesNo::Yes)]
    pub(crate) tls_verify_peer: YesNo,
    /// Allow only clients whose certificate DN matches (exact, or a glob with * and ?;
    /// repeatable).
    #[arg(long, value_name = "DN")]
    pub(crate) tls_authz: Vec<String>,
    /// Also allow TLS 1.2 (default: TLS 1.3 only).
    #[arg(long)]
    pub(crate) tls12: bool,
    /// Show this PNG image (any colour type; alpha is ignored) instead of the test pattern.
    #[arg(long, value_name = "FILE", conflicts_with = "size")]
    pub(crate) image: Option<PathBuf>,
    /// Size of the test pattern.
    #[arg(long, value_name = "WxH", default_value = "1024x768")]
    pub(crate) size: String,
    /// Desktop name.
    #[arg(long, default_value = "kvmio")]
    pub(crate) name: String,
    #[command(flatten)]
    pub(crate) hid: super::gadget::HidArgs,
    #[command(flatten)]
    pub(crate) media: super::gadget::MediaArgs,
    #[command(flatten)]
    pub(crate) video: super::gadget::VideoArgs,
    /// Serve connections on threads or tokio tasks.
    #[arg(long, value_parser = runtime(), default_value_t = Runtime::Threads)]
    pub(crate) runtime: Runtime,
    /// Seconds a client may take from connecting to ServerInit.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub(crate) handshake_timeout: u64,
    /// Most connections served at once (more are told "too many connections").
    #[arg(long, default_value_t = 64)]
    pub(crate) max_connections: usize,
    /// Listen backlog: connections the kernel completes and holds until they are accepted
    /// (default: the most the system allows, net.core.somaxconn).
    #[arg(long, value_name = "N")]
    pub(crate) backlog: Option<u32>,
}

/// `kvmio vnc capture`.
#[derive(Args)]
pub(crate) struct VncCaptureArgs {
    /// The server: `vnc://HOST:PORT` (the port defaults to 5900).
    pub(crate) addr: String,
    /// The PNG file to write.
    pub(crate) out: PathBuf,
    /// Acceptable security types, most preferred first (TigerVNC names). Default: X509Vnc,
    /// X509Plain, X509None (with --tls-creds), VncAuth, None.
    #[arg(long, value_name = "LIST")]
    pub(crate) security: Option<String>,
    /// The password (VNC or Plain): a `vncpasswd -f` file or a text file's first line.
    #[arg(long, value_name = "FILE")]
    pub(crate) password_file: Option<PathBuf>,
    /// Username for Plain and X509Plain.
    #[arg(long, value_name = "U")]
    pub(crate) username: Option<String>,
    /// TLS credentials directory: ca-cert.pem (the server's CA), optional ca-crl.pem, and
    /// client-cert.pem + client-key.pem for servers that want a client certificate.
    #[arg(long, value_name = "DIR")]
    pub(crate) tls_creds: Option<PathBuf>,
    /// Pixel encodings to ask for, most preferred first: tight, zrle, hextile, rre, raw.
    #[arg(long, value_name = "LIST", default_value = "zrle,hextile,rre,raw")]
    pub(crate) encodings: String,
    /// Ask for JPEG at this quality level (0 lowest … 9 highest): a Tight server may then send
    /// photo-like areas as JPEG, so the capture is no longer exact. Default: lossless.
    #[arg(long, value_name = "0-9", value_parser = clap::value_parser!(u8).range(0..=9))]
    pub(crate) quality: Option<u8>,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub(crate) timeout: u64,
}
