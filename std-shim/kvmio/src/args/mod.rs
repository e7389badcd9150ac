//! The command line: one module per command group, and the values several of them take (one
//! enum per concept: the library's [`TlsPolicy`] and [`Runtime`], the CLI's [`YesNo`]).

pub(crate) mod creds;
pub(crate) mod gadget;
pub(crate) mod nbd;
pub(crate) mod serve;
pub(crate) mod vnc;

use std::fmt;
use std::str::FromStr;

use anyhow::{Result, bail};
use clap::builder::{PossibleValue, PossibleValuesParser, TypedValueParser};
use clap::{Parser, Subcommand};
use std_shim::services::Runtime;
use std_shim::tls::TlsPolicy;
use std_shim::vnc::jpeg::JpegEncoderChoice;
use std_shim::vnc::sharing::SharePolicy;

/// `kvmio`.
#[derive(Parser)]
#[command(
    name = "kvmio",
    version,
    about = "Secure remote console (VNC) and virtual media (NBD)"
)]
pub(crate) struct Cli {
    /// More log output (-v debug, -vv trace).
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub(crate) verbose: u8,
    #[command(subcommand)]
    pub(crate) command: Top,
}

/// The command groups.
#[derive(Subcommand)]
pub(crate) enum Top {
    /// NBD server and client tools.
    #[command(subcommand)]
    Nbd(nbd::NbdCommand),
    /// TLS credentials in the QEMU directory layout.
    #[command(subcommand)]
    Creds(creds::CredsCommand),
    /// VNC server and capture client.
    #[command(subcommand)]
    Vnc(vnc::VncCommand),
    /// The USB gadget (keyboard, pointer, virtual media) the target computer is plugged into.
    #[command(subcommand)]
    Gadget(gadget::GadgetCommand),
    /// Virtual media of a running server: insert, eject, status.
    #[command(subcommand)]
    Media(gadget::MediaCommand),
    /// Serve VNC and NBD together over TLS from one set of credentials (the main job; with no
    /// arguments: development credentials, a test pattern on 127.0.0.1:5900 and a 64 MiB RAM
    /// disk on 127.0.0.1:10809).
    Serve(Box<serve::ServeArgs>),
}

impl Top {
    /// Whether this runs a server (which logs at info level by default).
    pub(crate) fn is_serve(&self) -> bool {
        match self {
            Top::Nbd(n) => matches!(n, nbd::NbdCommand::Serve(_)),
            Top::Vnc(v) => matches!(v, vnc::VncCommand::Serve(_)),
            Top::Serve(_) => true,
            Top::Creds(_) | Top::Gadget(_) | Top::Media(_) => false,
        }
    }
}

/// What viewers get (`kvmio vnc serve`, `kvmio serve`): who may watch, who may only watch,
/// and how their JPEG is made.
#[derive(clap::Args, Debug, Default, Clone)]
pub(crate) struct ViewerArgs {
    /// View-only VNC password (same formats as --password-file; a 16-byte `vncpasswd -f`
    /// file given to --password-file holds one in its second half, as TigerVNC's does):
    /// viewers who log in with it see the screen, their keys and clicks are dropped.
    #[arg(long, value_name = "FILE")]
    pub(crate) view_password_file: Option<std::path::PathBuf>,
    /// View-only Plain users (`user:password` lines).
    #[arg(long, value_name = "FILE")]
    pub(crate) plain_view_users: Option<std::path::PathBuf>,
    /// What a viewer's "shared" flag does (as QEMU's share=): allow-exclusive (a viewer that
    /// does not share disconnects the others; default), force-shared (such a viewer is
    /// refused), ignore (everybody shares).
    #[arg(long, value_name = "POLICY", value_parser = share_policy())]
    pub(crate) share: Option<SharePolicy>,
    /// What makes the JPEG images of Tight viewers that ask for them (noVNC, TigerVNC).
    #[arg(long, value_name = "ENCODER", value_parser = jpeg_encoder())]
    pub(crate) jpeg_encoder: Option<JpegEncoderChoice>,
}

/// The console for browsers (`kvmio vnc serve`, `kvmio serve`).
#[derive(clap::Args, Debug, Default, Clone)]
pub(crate) struct WebArgs {
    /// Also serve the VNC console over WebSocket on this address (repeatable; as QEMU's
    /// websocket=): wss with the same credentials when the VNC port uses TLS, ws otherwise.
    /// Browsers (noVNC) connect to ws[s]://ADDR/.
    #[arg(long, value_name = "ADDR")]
    pub(crate) vnc_websocket: Vec<String>,
    /// Serve the files of DIR on the WebSocket port for requests that are not upgrades (e.g.
    /// /usr/share/novnc: the console at https://ADDR/vnc.html).
    #[arg(long, value_name = "DIR", requires = "vnc_websocket")]
    pub(crate) web: Option<std::path::PathBuf>,
}

/// A JPEG encoder.
pub(crate) fn jpeg_encoder() -> impl TypedValueParser<Value = JpegEncoderChoice> {
    one_of(&[
        (
            "auto",
            "libjpeg-turbo where the system has it, else the built-in one (default)",
        ),
        (
            "libjpeg-turbo",
            "libturbojpeg.so.0 (Debian libturbojpeg0); refuse to start without it",
        ),
        ("rust", "The built-in pure-Rust encoder"),
    ])
}

/// A share policy.
pub(crate) fn share_policy() -> impl TypedValueParser<Value = SharePolicy> {
    one_of(&[
        (
            "allow-exclusive",
            "A non-shared viewer disconnects the others (default)",
        ),
        ("force-shared", "A non-shared viewer is refused"),
        ("ignore", "The flag is ignored: everybody shares"),
    ])
}

/// yes | no.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum YesNo {
    /// Yes.
    Yes,
    /// No.
    No,
}

impl YesNo {
    /// Whether it is yes.
    pub(crate) fn yes(self) -> bool {
        self == YesNo::Yes
    }
}

impl fmt::Display for YesNo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            YesNo::Yes => "yes",
            YesNo::No => "no",
        })
    }
}

impl FromStr for YesNo {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "yes" => Ok(YesNo::Yes),
            "no" => Ok(YesNo::No),
            _ => bail!("takes yes or no, not {s:?}"),
        }
    }
}

/// A value's name and, if it has one, its help text (shown by `--help`).
pub(crate) type Choice = (&'static str, &'static str);

/// `yes`, `no`.
pub(crate) const YES_NO: &[Choice] = &[("yes", ""), ("no", "")];
/// `yes`, `no`, each explained.
pub(crate) const YES_NO_EXPLAINED: &[Choice] = &[("yes", "Yes"), ("no", "No")];
/// The runtimes.
pub(crate) const RUNTIMES: &[Choice] = &[
    ("threads", "A thread per connection (blocking driver)"),
    ("tokio", "A tokio task per connection"),
];

/// A value parser for one of `choices`, made a `T` by its [`FromStr`] (which takes each of
/// them): the help texts say what each choice means.
pub(crate) fn one_of<T>(choices: &'static [Choice]) -> impl TypedValueParser<Value = T>
where
    T: FromStr<Err = anyhow::Error> + Clone + Send + Sync + 'static,
{
    PossibleValuesParser::new(choices.iter().map(|&(name, help)| {
        let v = PossibleValue::new(name);
        if help.is_empty() { v } else { v.help(help) }
    }))
    .try_map(|s| s.parse::<T>())
}

/// A TLS policy, as `kvmio nbd serve --tls` explains it.
pub(crate) fn nbd_tls_policy() -> impl TypedValueParser<Value = TlsPolicy> {
    one_of(&[
        ("off", "No TLS (STARTTLS is refused)"),
        ("on", "TLS offered, plaintext allowed (nbdkit --tls=on)"),
        (
            "require",
            "TLS required before anything is revealed (nbdkit --tls=require, QEMU with tls-creds)",
        ),
    ])
}

/// A TLS policy, as `kvmio serve --tls` explains it (for both services).
pub(crate) fn serve_tls_policy() -> impl TypedValueParser<Value = TlsPolicy> {
    one_of(&[
        (
            "require",
            "TLS required for both services (NBD FORCEDTLS; VNC offers only the X509 types)",
        ),
        (
            "on",
            "NBD offers TLS and allows plaintext; VNC offers the X509 types first, then the others",
        ),
        ("off", "No TLS"),
    ])
}

/// A runtime.
pub(crate) fn runtime() -> impl TypedValueParser<Value = Runtime> {
    one_of(RUNTIMES)
}
