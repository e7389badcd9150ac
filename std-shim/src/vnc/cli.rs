//! `kvmio vnc serve` and `kvmio vnc capture`: the command-line arguments and what they run.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use rfb_core::wire::Encoding;

use crate::io::Endpoint;
use crate::io::listen::ServerControl;
use crate::vnc::client::{CaptureOptions, capture};
use crate::vnc::desktop::{Desktop, Image};
use crate::vnc::security::{PlainUsers, SecName, VncAddr, parse_security_list, read_password_file};
use crate::vnc::server::{
    VncRefusal, VncServerConfig, VncServerSession, VncShared, describe, peer_key,
};

/// `kvmio vnc …`.
#[derive(Subcommand)]
pub enum VncCommand {
    /// Serve a desktop over VNC: an animated test pattern, or a still image (--image).
    Serve(VncServeArgs),
    /// Connect to a VNC server and save its screen as a PNG file (like gvnccapture).
    Capture(VncCaptureArgs),
}

impl VncCommand {
    /// Whether this runs a server (which logs at info level by default).
    pub fn is_serve(&self) -> bool {
        matches!(self, VncCommand::Serve(_))
    }
}

/// yes | no.
#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum YesNo {
    /// Yes.
    Yes,
    /// No.
    No,
}

pub use crate::services::Runtime;

/// `kvmio vnc serve`.
#[derive(Args)]
pub struct VncServeArgs {
    /// Address to listen on (repeatable; default 127.0.0.1:5900; the port defaults to 5900).
    #[arg(long = "listen", value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Security types offered, most preferred first, with TigerVNC's names: None, VncAuth,
    /// Plain, X509None, X509Vnc, X509Plain (e.g. X509Vnc,X509Plain,VncAuth). When any
    /// VeNCrypt type is listed, None and VncAuth are also offered inside VeNCrypt, as TigerVNC
    /// does. Default: the X509 types the credentials allow when --tls-creds is given, else
    /// VncAuth with a password file, else None.
    #[arg(long, value_name = "LIST")]
    pub security: Option<String>,
    /// VNC password: a TigerVNC `vncpasswd -f` file (8 obfuscated bytes) or a text file whose
    /// first line is the password (only 8 bytes count).
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Users for Plain and X509Plain: `user:password` lines.
    #[arg(long, value_name = "FILE")]
    pub plain_users: Option<PathBuf>,
    /// TLS credentials directory in the QEMU layout (ca-cert.pem, server-cert.pem,
    /// server-key.pem, optional ca-crl.pem) for the X509 types.
    #[arg(long, value_name = "DIR")]
    pub tls_creds: Option<PathBuf>,
    /// Require and verify client certificates (default yes, as QEMU).
    #[arg(long, value_enum, default_value_t = YesNo::Yes)]
    pub tls_verify_peer: YesNo,
    /// Allow only clients whose certificate DN matches (exact, or a glob with * and ?;
    /// repeatable).
    #[arg(long, value_name = "DN")]
    pub tls_authz: Vec<String>,
    /// Also allow TLS 1.2 (default: TLS 1.3 only).
    #[arg(long)]
    pub tls12: bool,
    /// Show this PNG image (any colour type; alpha is ignored) instead of the test pattern.
    #[arg(long, value_name = "FILE", conflicts_with = "size")]
    pub image: Option<PathBuf>,
    /// Size of the test pattern.
    #[arg(long, value_name = "WxH", default_value = "1024x768")]
    pub size: String,
    /// Desktop name.
    #[arg(long, default_value = "kvmio")]
    pub name: String,
    /// Serve connections on threads or tokio tasks.
    #[arg(long, value_enum, default_value_t = Runtime::Threads)]
    pub runtime: Runtime,
    /// Seconds a client may take from connecting to ServerInit.
    #[arg(long, value_name = "SECONDS", default_value_t = 30)]
    pub handshake_timeout: u64,
    /// Most connections served at once (more are told "too many connections").
    #[arg(long, default_value_t = 64)]
    pub max_connections: usize,
    /// Listen backlog: connections the kernel completes and holds until they are accepted
    /// (default: the most the system allows, net.core.somaxconn).
    #[arg(long, value_name = "N")]
    pub backlog: Option<u32>,
}

/// `kvmio vnc capture`.
#[derive(Args)]
pub struct VncCaptureArgs {
    /// The server: `vnc://HOST:PORT` (the port defaults to 5900).
    pub addr: String,
    /// The PNG file to write.
    pub out: PathBuf,
    /// Acceptable security types, most preferred first (TigerVNC names). Default: X509Vnc,
    /// X509Plain, X509None (with --tls-creds), VncAuth, None.
    #[arg(long, value_name = "LIST")]
    pub security: Option<String>,
    /// The password (VNC or Plain): a `vncpasswd -f` file or a text file's first line.
    #[arg(long, value_name = "FILE")]
    pub password_file: Option<PathBuf>,
    /// Username for Plain and X509Plain.
    #[arg(long, value_name = "U")]
    pub username: Option<String>,
    /// TLS credentials directory: ca-cert.pem (the server's CA), optional ca-crl.pem, and
    /// client-cert.pem + client-key.pem for servers that want a client certificate.
    #[arg(long, value_name = "DIR")]
    pub tls_creds: Option<PathBuf>,
    /// Pixel encodings to ask for, most preferred first: zrle, hextile, rre, raw.
    #[arg(long, value_name = "LIST", default_value = "zrle,hextile,rre,raw")]
    pub encodings: String,
    /// Give up after this many seconds.
    #[arg(long, value_name = "SECONDS", default_value_t = 60)]
    pub timeout: u64,
}

/// Runs a `kvmio vnc` command.
pub fn run(cmd: VncCommand) -> Result<()> {
    match cmd {
        VncCommand::Serve(a) => serve(a),
        VncCommand::Capture(a) => capture_cmd(a),
    }
}

/// Parses `WxH`.
pub fn parse_size(s: &str) -> Result<(u16, u16)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("expected WxH, got {s:?}"))?;
    let w: u16 = w
        .trim()
        .parse()
        .with_context(|| format!("bad width in {s:?}"))?;
    let h: u16 = h
        .trim()
        .parse()
        .with_context(|| format!("bad height in {s:?}"))?;
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        bail!("size {s:?}: width and height must be 1 to 8192");
    }
    Ok((w, h))
}

/// Parses an encoding list.
pub fn parse_encodings(s: &str) -> Result<Vec<Encoding>> {
    let mut v = Vec::new();
    for e in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        v.push(match e.to_ascii_lowercase().as_str() {
            "zrle" => Encoding::Zrle,
            "hextile" => Encoding::Hextile,
            "rre" => Encoding::Rre,
            "raw" => Encoding::Raw,
            _ => bail!("unknown encoding {e:?} (zrle, hextile, rre, raw)"),
        });
    }
    if v.is_empty() {
        bail!("no encodings");
    }
    Ok(v)
}

/// What a VNC server offers, as the CLI and the configuration file say it.
pub struct VncSettings<'a> {
    /// `--security` (TigerVNC names), or the default from what is given.
    pub security: Option<&'a str>,
    /// `--password-file`.
    pub password_file: Option<&'a std::path::Path>,
    /// `--plain-users`.
    pub plain_users: Option<&'a std::path::Path>,
    /// Whether TLS credentials are available (the default list then uses the X509 types).
    pub tls: bool,
    /// `--image`.
    pub image: Option<&'a std::path::Path>,
    /// `--size`.
    pub size: &'a str,
    /// `--name`.
    pub name: &'a str,
    /// Seconds to finish the handshake.
    pub handshake_timeout: u64,
}

/// Builds the server configuration: reads the password and users files, picks the default
/// security list, loads the image. The configuration's `security` says whether TLS is needed.
pub fn vnc_config(v: &VncSettings<'_>) -> Result<VncServerConfig> {
    let password = match v.password_file {
        Some(p) => {
            let pw = read_password_file(p)?;
            if pw.len() > 8 {
                log::warn!("VNC authentication uses only the first 8 bytes of the password");
            }
            Some(pw)
        }
        None => None,
    };
    let plain_users = v.plain_users.map(PlainUsers::load).transpose()?;
    let security = match v.security {
        Some(s) => parse_security_list(s)?,
        None => {
            let mut l = Vec::new();
            if v.tls {
                if password.is_some() {
                    l.push(SecName::X509Vnc);
                }
                if plain_users.is_some() {
                    l.push(SecName::X509Plain);
                }
                if l.is_empty() {
                    l.push(SecName::X509None);
                }
            } else if password.is_some() {
                l.push(SecName::VncAuth);
            } else if plain_users.is_some() {
                bail!("Plain sends passwords in the clear: give --tls-creds, or --security Plain");
            } else {
                l.push(SecName::None);
            }
            l
        }
    };
    if security.contains(&SecName::None) {
        log::warn!("security type None: anyone who can connect sees the desktop");
    }
    if security.contains(&SecName::Plain) {
        log::warn!("security type Plain sends user names and passwords in the clear");
    }
    let desktop = match v.image {
        Some(p) => Desktop::Still(Arc::new(Image::load_png(p)?)),
        None => {
            let (width, height) = parse_size(v.size)?;
            Desktop::Pattern { width, height }
        }
    };
    Ok(VncServerConfig {
        security,
        password,
        plain_users,
        desktop,
        name: v.name.to_string(),
        fps: 15,
        handshake_timeout: Duration::from_secs(v.handshake_timeout.max(1)),
        throttle_threshold: 5,
    })
}

fn serve(a: VncServeArgs) -> Result<()> {
    let config = vnc_config(&VncSettings {
        security: a.security.as_deref(),
        password_file: a.password_file.as_deref(),
        plain_users: a.plain_users.as_deref(),
        tls: a.tls_creds.is_some(),
        image: a.image.as_deref(),
        size: &a.size,
        name: &a.name,
        handshake_timeout: a.handshake_timeout,
    })?;
    let needs_tls = config.security.iter().any(|n| n.is_x509());
    if !needs_tls && (a.tls_creds.is_some() || !a.tls_authz.is_empty()) {
        bail!("--tls-creds and --tls-authz need an X509 security type in --security");
    }
    let tls_dir = if needs_tls {
        Some(crate::tls::creds_dir(a.tls_creds.as_deref())?)
    } else {
        None
    };
    config.validate(tls_dir.is_some())?;
    let tls_config = match &tls_dir {
        Some(dir) => Some(crate::tls::server_config(
            dir,
            a.tls_verify_peer == YesNo::Yes,
            &a.tls_authz,
            a.tls12,
        )?),
        None => None,
    };
    let endpoints = crate::io::endpoints(&a.listen, None, 5900)?;
    let service = vnc_service(config, tls_config, endpoints, a.max_connections, a.backlog);
    let control = Arc::new(ServerControl::default());
    crate::services::stop_on_signals(&control)?;
    crate::services::run(vec![service], a.runtime, control, |_, what, bound| {
        for b in bound {
            eprintln!("kvmio: vnc serving {what} on {b}");
        }
    })?;
    eprintln!("kvmio: stopped");
    Ok(())
}

/// The VNC service: sessions over one shared configuration (password, users, desktop, the
/// failed-login blacklist).
pub fn vnc_service(
    config: VncServerConfig,
    tls: Option<tls_glue::TlsServerConfig>,
    endpoints: Vec<Endpoint>,
    max_connections: usize,
    backlog: Option<u32>,
) -> crate::services::Service {
    let what = describe(&config);
    let shared = VncShared::new(config);
    crate::services::Service {
        label: "vnc",
        what,
        endpoints,
        max_connections: max_connections.max(1),
        backlog,
        tls,
        factory: {
            let shared = shared.clone();
            Arc::new(move |peer| {
                if let Some(d) = shared.blocked(peer_key(&peer)) {
                    // Told why, as over the cap (TigerVNC says the same).
                    log::warn!(
                        "{peer}: refused, too many failed logins from this address \
                         (blocked for {} s more)",
                        d.as_secs() + 1
                    );
                    let session =
                        VncRefusal::new(shared.clone(), peer, "Too many security failures")?;
                    let cap = session.input_buffer_len();
                    return Ok((Box::new(session) as crate::services::BoxedSession, cap));
                }
                let session = VncServerSession::new(shared.clone(), peer)?;
                let cap = session.input_buffer_len();
                Ok((Box::new(session) as crate::services::BoxedSession, cap))
            })
        },
        refusal: Some(Arc::new(move |peer| {
            let session = VncRefusal::new(shared.clone(), peer, "too many connections")?;
            let cap = session.input_buffer_len();
            Ok((Box::new(session) as crate::services::BoxedSession, cap))
        })),
    }
}

fn capture_cmd(a: VncCaptureArgs) -> Result<()> {
    let addr = VncAddr::parse(&a.addr)?;
    let mut opts = CaptureOptions::new(a.tls_creds.clone());
    if let Some(s) = &a.security {
        opts.security = parse_security_list(s)?;
    }
    opts.password = a
        .password_file
        .as_deref()
        .map(read_password_file)
        .transpose()?;
    opts.username = a.username.clone();
    opts.encodings = parse_encodings(&a.encodings)?;
    opts.timeout = Duration::from_secs(a.timeout.max(1));
    let c = capture(&addr, opts)?;
    c.image
        .save_png(&a.out)
        .with_context(|| format!("write {}", a.out.display()))?;
    println!(
        "Connected to {addr} ({}{}), desktop {:?}",
        c.security,
        c.tls
            .as_deref()
            .map(|t| format!(", TLS {t}"))
            .unwrap_or_default(),
        c.name
    );
    println!(
        "Saved {}x{} display to {}",
        c.image.width,
        c.image.height,
        a.out.display()
    );
    Ok(())
}
