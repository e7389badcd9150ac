//! The RFB server state machine.
//!
//! See the crate documentation for the driver loop. In short: feed received bytes to
//! [`Server::handle_input`] until it consumes nothing and lends nothing; answer the events
//! that ask for a decision (`accept_auth`/`reject_auth`, `server_init`, `tls_established`);
//! drain [`Server::poll_transmit`], then [`Server::poll_event`], then [`Server::poll_timeout`];
//! encode updates with [`Server::encode_update`] while [`Server::wants_update`].
//!
//! # Phases
//!
//! ```text
//!   Version ─┬─ 3.7/3.8: types offered ──────────────────────────► SecurityChoice
//!            ├─ 3.3: the type picked (None or VncAuth) ─► as SecurityChoice's choice
//!            └─ unsupported version, refuse_with, nothing to offer: reason pending ─► Closing
//!   SecurityChoice ─┬─ None: SecurityResult pending (not in 3.3/3.7) ─► ClientInit
//!                   ├─ VncAuth: challenge pending ─► VncResponse
//!                   ├─ VeNCrypt: version 0.2 pending ─► VencryptVersion
//!                   └─ a type not offered: failure pending ─► Closing
//!   VncResponse ─ 16 bytes, Event::VncAuth ─► AuthDecision
//!   VencryptVersion ─┬─ 0.2: ack and sub-types pending ─► VencryptSubtype
//!                    └─ another: refusal pending ─► Closing
//!   VencryptSubtype ─┬─ an X509 sub-type: ack pending, Event::StartTls ─► AwaitTls
//!                    ├─ Plain / Vnc / None without TLS: as after tls_established()
//!                    └─ not offered: refusal pending ─► Closing
//!   AwaitTls ─ tls_established() ─► ClientInit (None) | VncResponse (challenge) | PlainCredentials
//!   PlainCredentials ─ credentials lent, Event::PlainAuth ─► AuthDecision
//!   AuthDecision ─┬─ accept_auth(): SecurityResult pending ─► ClientInit
//!                 └─ reject_auth(): failure held back `auth_failure_delay` ─► Closing
//!   ClientInit ─ 1 byte, Event::ClientInit ─► ServerInit ─ server_init(): ServerInit pending ─► Normal
//!   Normal ─ client messages, updates ─► Normal
//!   Closing ─ everything written (and the failure delay over): Event::Closed (state Closed)
//!   any phase ─ protocol error with nothing to tell, EOF, handshake deadline ─► Closed
//! ```
//!
//! ("pending": the message is queued for `poll_transmit`; the arrow is taken when
//! `handle_input` consumes the input, or when the command is issued.)
//!
//! What is valid where:
//! - `Version` … `PlainCredentials`, `ClientInit`: the client's next handshake message, nothing
//!   else (a byte that does not fit is a fatal [`Error`]). `AwaitTls`: nothing is read (the
//!   bytes belong to the TLS layer: `handle_input` consumes nothing); the command
//!   [`Server::tls_established`]. `AuthDecision`: nothing is read; [`Server::accept_auth`],
//!   [`Server::reject_auth`]. `ServerInit`: nothing is read; [`Server::server_init`].
//! - `Normal`: every client message; the session commands ([`Server::bell`],
//!   [`Server::send_cut_text`], [`Server::send_fence`], [`Server::reply_desktop_size`]) and
//!   [`Server::encode_update`].
//! - `Closing`/`Closed`: `handle_input` is [`Error::Closed`]. Commands in the wrong phase are
//!   [`CommandError::InvalidState`]; getters are valid everywhere.
//!
//! # Transitions happen on input
//!
//! The phase changes, and its events are queued, when `handle_input` consumes a message (or a
//! command is issued, or the failure delay runs out in `handle_timeout`), never in
//! `poll_transmit` or `poll_event`: the answers it decided on are pending output in the queue.
//! `Closing` is entered as the final message is decided; [`Event::Closed`] is held back until
//! `poll_transmit` has written everything (and the failure delay is over), and `state()` says
//! [`State::Closing`] until that event is handed out. (It used to be `poll_event` that moved
//! `Closing` to `Closed`; the events and their order are as before.) An update in progress is
//! output, not a transition: SetPixelFormat and SetEncodings that arrive during it are
//! handled at once (their events and acknowledgements go out as before) and apply to the
//! next update, when `encode_update` finishes this one.
//!
//! The code is one file per phase: this one holds the types, the state, the input dispatch,
//! the polls and the event queue; `handshake.rs` the version, the security types, VeNCrypt,
//! authentication and ClientInit/ServerInit; `normal.rs` the client messages of the normal
//! phase and the session commands; `update.rs` framebuffer updates; `encode.rs` the Raw, RRE
//! and Hextile encoders; `zrle.rs` the ZRLE encoder; `tight.rs` the Tight and TightPNG encoder
//! (`png.rs` its PNG writer).

mod encode;
mod handshake;
mod normal;
#[cfg(feature = "alloc")]
mod palette;
#[cfg(feature = "alloc")]
mod png;
#[cfg(feature = "alloc")]
mod tight;
mod update;
#[cfg(feature = "alloc")]
mod zrle;

#[cfg(feature = "alloc")]
pub use tight::{TightStats, ZLIB_LEVEL as TIGHT_ZLIB_LEVEL};
pub use update::{
    CursorShape, Damage, EncodeStatus, MIN_ENCODE_BUFFER, SharedUpdateKey, UpdateSource,
};

use crate::Progress;
use crate::auth::CHALLENGE_LEN;
use crate::error::{CommandError, Error, InsufficientSize, ProtocolError};
use crate::outq::{OutQueue, Transmit};
use crate::shared;
use crate::time::{Duration, Instant};
use crate::wire::*;
use update::UpdateState;

/// Limits on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ServerLimits {
    /// Longest ClientCutText accepted (plain or extended); longer ends the connection.
    pub max_cut_text: u32,
    /// Most encodings in one SetEncodings.
    pub max_encodings: u16,
    /// Longest Plain username.
    pub max_username: u32,
    /// Longest Plain password.
    pub max_password: u32,
    /// Most screens in one SetDesktopSize.
    pub max_screens: u8,
}

impl Default for ServerLimits {
    fn default() -> Self {
        Self {
            max_cut_text: 1 << 20,
            max_encodings: 1024,
            max_username: 255,
            max_password: 255,
            max_screens: 16,
        }
    }
}

/// Why a [`ServerConfig`] cannot be served as written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ConfigError {
    /// The sub-type needs anonymous TLS, which rustls does not offer (TLSNone/TLSVnc/TLSPlain).
    AnonymousTls(VencryptSubtype),
    /// A sub-type this crate does not implement (SASL, Ident, unknown).
    UnsupportedSubtype(VencryptSubtype),
    /// A security type this crate does not implement (type 18 TLS, SASL, …).
    UnsupportedType(SecurityType),
    /// VeNCrypt is offered without sub-types, or sub-types are listed without VeNCrypt.
    VencryptMismatch,
    /// Nothing is offered.
    NothingOffered,
}

impl core::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            ConfigError::AnonymousTls(s) => write!(
                f,
                "VeNCrypt sub-type {} needs anonymous TLS, which the TLS backend (rustls) does not support; use the X509 sub-types",
                u32::from(*s)
            ),
            ConfigError::UnsupportedSubtype(s) => {
                write!(f, "VeNCrypt sub-type {} is not supported", u32::from(*s))
            }
            ConfigError::UnsupportedType(t) => {
                write!(f, "security type {} is not supported", u8::from(*t))
            }
            ConfigError::VencryptMismatch => {
                f.write_str("VeNCrypt needs at least one sub-type, and sub-types need VeNCrypt")
            }
            ConfigError::NothingOffered => f.write_str("no security type offered"),
        }
    }
}

impl core::error::Error for ConfigError {}

/// Server configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerConfig {
    /// Highest version offered (3.8 unless testing old clients).
    pub max_version: Version,
    /// RFB security types offered, in order of preference: `None`, `VncAuth`, `VeNCrypt`.
    pub security_types: heapless::Vec<SecurityType, 4>,
    /// VeNCrypt sub-types offered, in order of preference.
    pub vencrypt_subtypes: heapless::Vec<VencryptSubtype, 8>,
    /// Input limits.
    pub limits: ServerLimits,
    /// Close connections that have not finished the handshake (up to ServerInit) in this time.
    pub handshake_timeout: Option<Duration>,
    /// Delay before a failed SecurityResult is sent (TigerVNC uses 100 ms).
    pub auth_failure_delay: Duration,
    /// Offer QEMU extended key events to clients that ask for them.
    pub qemu_extended_key_events: bool,
    /// Refuse the connection with this reason right after the version exchange, in the way
    /// the client's version allows (no security types and a reason; 3.3: security type 0 and
    /// a reason): e.g. "too many connections" from a server at its connection limit.
    pub refuse_with: Option<&'static str>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        let mut security_types = heapless::Vec::new();
        let _ = security_types.push(SecurityType::None);
        Self {
            max_version: Version::V3_8,
            security_types,
            vencrypt_subtypes: heapless::Vec::new(),
            limits: ServerLimits::default(),
            handshake_timeout: Some(Duration::from_secs(30)),
            auth_failure_delay: Duration::from_millis(100),
            qemu_extended_key_events: true,
            refuse_with: None,
        }
    }
}

impl ServerConfig {
    /// A configuration offering exactly `types` (RFB level) and `subtypes` (inside VeNCrypt).
    pub fn with_security(types: &[SecurityType], subtypes: &[VencryptSubtype]) -> Self {
        let mut c = Self::default();
        c.security_types.clear();
        for t in types.iter().take(4) {
            let _ = c.security_types.push(*t);
        }
        for s in subtypes.iter().take(8) {
            let _ = c.vencrypt_subtypes.push(*s);
        }
        c
    }

    /// Checks that everything offered can be served. [`Server::new`] never offers what fails
    /// here (it drops it), so call this at start-up to report mistakes.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for t in &self.security_types {
            if !matches!(
                t,
                SecurityType::None | SecurityType::VncAuth | SecurityType::VeNCrypt
            ) {
                return Err(ConfigError::UnsupportedType(*t));
            }
        }
        for s in &self.vencrypt_subtypes {
            if s.is_anonymous_tls() {
                return Err(ConfigError::AnonymousTls(*s));
            }
            if !s.is_supported() {
                return Err(ConfigError::UnsupportedSubtype(*s));
            }
        }
        let has_v = self.security_types.contains(&SecurityType::VeNCrypt);
        if has_v == self.vencrypt_subtypes.is_empty() {
            return Err(ConfigError::VencryptMismatch);
        }
        if self.security_types.is_empty() {
            return Err(ConfigError::NothingOffered);
        }
        Ok(())
    }

    fn sanitized(mut self) -> Self {
        self.vencrypt_subtypes.retain(|s| s.is_supported());
        let no_sub = self.vencrypt_subtypes.is_empty();
        self.security_types.retain(|t| match t {
            SecurityType::None | SecurityType::VncAuth => true,
            SecurityType::VeNCrypt => !no_sub,
            _ => false,
        });
        self
    }
}

/// How the client authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct AuthMethod {
    /// The RFB security type.
    pub security_type: SecurityType,
    /// The VeNCrypt sub-type, if any.
    pub subtype: Option<VencryptSubtype>,
}

/// Something the application should know or decide. Drain with [`Server::poll_event`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Event {
    /// Send the bytes `poll_transmit` produced so far in plaintext, then put the TLS layer in
    /// place: every later byte in both directions (including bytes already received after the
    /// sub-type, which this core did not consume) belongs to TLS. Call
    /// [`Server::tls_established`] when the handshake is done.
    StartTls,
    /// The client answered the VNC challenge: check it (e.g. with
    /// [`verify_vnc_response`](crate::verify_vnc_response)) and call [`Server::accept_auth`] or
    /// [`Server::reject_auth`].
    VncAuth {
        /// The challenge that was sent.
        challenge: [u8; CHALLENGE_LEN],
        /// The client's response.
        response: [u8; CHALLENGE_LEN],
    },
    /// Plain credentials arrived as [`Payload::PlainCredentials`]: decide with
    /// [`Server::accept_auth`] or [`Server::reject_auth`].
    PlainAuth,
    /// Authentication succeeded (also for `None`).
    Authenticated(AuthMethod),
    /// Authentication was rejected. Throttle the peer (see [`AuthThrottle`](crate::AuthThrottle)):
    /// the failure message waits `delay` on the core's timer before it is sent.
    AuthFailed {
        /// How long the core holds the failure message back.
        delay: Duration,
    },
    /// ClientInit arrived: answer with [`Server::server_init`].
    ClientInit {
        /// The client asked to share the desktop with other clients.
        shared: bool,
    },
    /// The client changed its pixel format (already validated; updates translate to it).
    PixelFormat(PixelFormat),
    /// The client's SetEncodings was applied (see [`Server::client_encoding`]).
    EncodingsChanged,
    /// The client wants an update of `rect` (already clipped to the framebuffer).
    UpdateRequested {
        /// Only changes are wanted.
        incremental: bool,
        /// Area of interest.
        rect: Rect,
    },
    /// KeyEvent.
    Key {
        /// Pressed or released.
        down: bool,
        /// X11 keysym.
        keysym: u32,
    },
    /// QEMU extended key event.
    QemuKey {
        /// Pressed or released.
        down: bool,
        /// X11 keysym.
        keysym: u32,
        /// XT keycode.
        keycode: u32,
    },
    /// PointerEvent.
    Pointer {
        /// Button mask.
        buttons: u8,
        /// x.
        x: u16,
        /// y.
        y: u16,
    },
    /// ClientCutText of this length starts; the bytes follow as [`Payload::CutText`] chunks.
    CutText(CutTextLength),
    /// Continuous updates were switched on (for `rect`) or off.
    ContinuousUpdates {
        /// On or off.
        enabled: bool,
        /// Area.
        rect: Rect,
    },
    /// SetDesktopSize: `screens` [`Event::Screen`] events follow; answer with
    /// [`Server::reply_desktop_size`].
    SetDesktopSize {
        /// Requested width.
        width: u16,
        /// Requested height.
        height: u16,
        /// Number of screens that follow.
        screens: u8,
    },
    /// One screen of a SetDesktopSize layout.
    Screen(Screen),
    /// The handshake deadline passed; close the connection.
    TimedOut,
    /// Everything is sent; close the connection.
    Closed,
}

/// Data lent from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'i> {
    /// VeNCrypt Plain credentials (decide with `accept_auth` / `reject_auth`).
    PlainCredentials {
        /// Username bytes.
        username: &'i [u8],
        /// Password bytes.
        password: &'i [u8],
    },
    /// A chunk of ClientCutText (Latin-1 text, or extended-clipboard bytes).
    CutText {
        /// The bytes.
        data: &'i [u8],
        /// This is the last chunk.
        last: bool,
    },
    /// The client's answer to a fence we sent.
    FenceResponse {
        /// Flags (request bit clear).
        flags: u32,
        /// Payload we sent.
        data: &'i [u8],
    },
}

/// Where the server is in the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum State {
    /// Handshake (version, security, authentication, init).
    Handshake,
    /// Waiting for the driver to run the TLS handshake.
    AwaitingTls,
    /// Waiting for an application decision (authentication or ServerInit).
    AwaitingApplication,
    /// Normal message exchange.
    Running,
    /// A final message is queued; close after sending it.
    Closing,
    /// Closed.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    SecurityChoice,
    VncResponse,
    AuthDecision,
    VencryptVersion,
    VencryptSubtype,
    AwaitTls(VencryptSubtype),
    PlainCredentials,
    ClientInit,
    ServerInit,
    Normal,
    Closing,
    Closed,
}

/// A message being received in pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Partial {
    None,
    Encodings {
        remaining: u16,
        acc: Prefs,
        /// A pixel encoding was chosen (else `acc` keeps Raw).
        picked: bool,
    },
    CutText {
        remaining: u32,
    },
    Screens {
        remaining: u8,
    },
}

/// The client's encoding preferences, folded from SetEncodings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Prefs {
    /// Best pixel encoding we support, in the client's order.
    pub(crate) encoding: Encoding,
    pub(crate) flags: u32,
    /// Compression level 0…9 (pseudo-encoding; default 6): ZRLE's zlib level, Tight's through
    /// [`TIGHT_ZLIB_LEVEL`].
    pub(crate) level: u8,
    /// JPEG quality level 0…9 (−32…−23), if asked for.
    pub(crate) quality: Option<u8>,
    /// TigerVNC's fine JPEG quality 0…100 (−512…−412), if asked for.
    pub(crate) fine_quality: Option<u8>,
    /// JPEG chroma subsampling level 0…5 (−768…−763), if asked for.
    pub(crate) subsampling: Option<u8>,
}

impl Prefs {
    const fn new() -> Self {
        Self {
            encoding: Encoding::Raw,
            flags: 0,
            level: 6,
            quality: None,
            fine_quality: None,
            subsampling: None,
        }
    }
    /// Folds in the next encoding of a SetEncodings; the first pixel encoding this crate
    /// implements is chosen (`picked` tells whether an earlier one was).
    fn fold(&mut self, e: Encoding, picked: &mut bool) {
        let Some(bit) = e.bit() else {
            return;
        };
        let pixel = matches!(
            e,
            Encoding::Raw
                | Encoding::Rre
                | Encoding::Hextile
                | Encoding::Zrle
                | Encoding::Tight
                | Encoding::TightPng
        );
        if pixel && !*picked {
            self.encoding = e;
            *picked = true;
        }
        self.flags |= bit;
        if let Some(l) = e.compress_level() {
            self.level = l;
        }
        if let Some(q) = e.jpeg_quality_level() {
            self.quality = Some(q);
        }
        if let Some(q) = e.jpeg_fine_quality() {
            self.fine_quality = Some(q);
        }
        if let Some(s) = e.jpeg_subsampling() {
            self.subsampling = Some(s);
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum FailHold {
    /// Waiting for the first `handle_timeout` to start the delay.
    Unarmed,
    Until(Instant),
}

/// The RFB server: one per connection.
///
/// See the [crate documentation](crate) for the driver loop.
#[derive(Debug)]
pub struct Server {
    config: ServerConfig,
    phase: Phase,
    version: Version,
    challenge: [u8; CHALLENGE_LEN],
    method: AuthMethod,
    out: OutQueue<256>,
    events: heapless::Deque<Event, 4>,
    deadline: Option<Instant>,
    fail_reason: &'static str,
    fail_hold: Option<FailHold>,
    /// [`Event::Closed`] was handed out (`Closing` is over for the driver).
    closed_reported: bool,
    partial: Partial,
    // Session.
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) native: PixelFormat,
    pub(crate) client_format: PixelFormat,
    pending_format: Option<PixelFormat>,
    pub(crate) prefs: Prefs,
    pending_prefs: Option<Prefs>,
    acked: u32,
    update_requested: bool,
    pub(crate) full_update_requested: bool,
    pub(crate) continuous: Option<Rect>,
    pub(crate) desktop_size_reply: Option<u16>,
    pub(crate) qemu_key_ack_pending: bool,
    /// The keyboard LEDs (QEMU LED State bits) and whether the client has yet to get them.
    pub(crate) leds: u8,
    pub(crate) leds_pending: bool,
    pub(crate) colour_map_pending: Option<u16>,
    pub(crate) update: Option<UpdateState>,
    #[cfg(feature = "alloc")]
    pub(crate) zrle: Option<alloc::boxed::Box<zrle::ZrleEncoder>>,
    #[cfg(feature = "alloc")]
    pub(crate) zlib: crate::zlib::CompressorFactory,
    #[cfg(feature = "alloc")]
    pub(crate) tight: Option<alloc::boxed::Box<tight::TightEncoder>>,
    #[cfg(feature = "alloc")]
    pub(crate) jpeg: Option<crate::jpeg::JpegEncoderFactory>,
}

/// The JPEG compressor a new server starts with: the crate's own with `jpeg-encode`, else
/// none (no JPEG until the application plugs one in).
#[cfg(feature = "alloc")]
fn default_jpeg_encoder() -> Option<crate::jpeg::JpegEncoderFactory> {
    #[cfg(feature = "jpeg-encode")]
    return Some(crate::jpeg::RustJpegEncoder::boxed);
    #[cfg(not(feature = "jpeg-encode"))]
    None
}

/// Most bytes, and messages, one step of `handle_input` queues (a fence answer is the largest;
/// refusals and failure reasons that do not fit are not sent, as before).
const STEP_OUTPUT: usize = 128;
const STEP_MESSAGES: usize = 4;

/// The result of a command helper an input step calls: the step reserved room for its output.
fn reserved(r: Result<(), CommandError>) {
    debug_assert!(r.is_ok(), "an input step queued more than it reserved");
}

/// What one step of `handle_input` did: `(consumed, lent payload)`; `(0, None)`: wait.
type Step<'i> = Result<(usize, Option<Payload<'i>>), Error>;

const REASON_NOT_OFFERED: &str = "Security type not offered";
const REASON_NO_TYPES: &str = "No supported security types";
const REASON_VERSION: &str = "Unsupported RFB protocol version";
const REASON_CREDENTIALS: &str = "Credentials too long";

impl Server {
    /// Smallest input the driver must be able to hold at once: the largest message that has to
    /// be whole before it is parsed (Plain credentials at the configured limits, at least 128).
    pub fn min_input_buffer(&self) -> usize {
        let l = &self.config.limits;
        (8u64 + u64::from(l.max_username) + u64::from(l.max_password)).max(128) as usize
    }

    /// A server for a new connection at `now`. `challenge` must be 16 fresh bytes from a CSPRNG
    /// (used only if VNC authentication runs). The server's ProtocolVersion is queued at once.
    ///
    /// Security types or sub-types this crate cannot run are dropped from what is offered (see
    /// [`ServerConfig::validate`]).
    pub fn new(config: ServerConfig, now: Instant, challenge: [u8; CHALLENGE_LEN]) -> Self {
        let config = config.sanitized();
        let mut s = Self {
            phase: Phase::Version,
            version: config.max_version,
            challenge,
            method: AuthMethod {
                security_type: SecurityType::Invalid,
                subtype: None,
            },
            out: OutQueue::new(),
            events: heapless::Deque::new(),
            deadline: config.handshake_timeout.map(|d| now + d),
            fail_reason: "",
            fail_hold: None,
            closed_reported: false,
            partial: Partial::None,
            width: 0,
            height: 0,
            native: PixelFormat::RGB888,
            client_format: PixelFormat::RGB888,
            pending_format: None,
            prefs: Prefs::new(),
            pending_prefs: None,
            acked: 0,
            update_requested: false,
            full_update_requested: false,
            continuous: None,
            desktop_size_reply: None,
            qemu_key_ack_pending: false,
            leds: 0,
            leds_pending: false,
            colour_map_pending: None,
            update: None,
            #[cfg(feature = "alloc")]
            zrle: None,
            #[cfg(feature = "alloc")]
            zlib: crate::zlib::MinizCompressor::boxed,
            #[cfg(feature = "alloc")]
            tight: None,
            #[cfg(feature = "alloc")]
            jpeg: default_jpeg_encoder(),
            config,
        };
        let v = ProtocolVersionRepr::of(s.config.max_version);
        let _ = s.out.push(v.buffer_len(), |b| v.emit(b));
        s
    }

    // ---- A. getters ----

    /// Where the connection is.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::AwaitTls(_) => State::AwaitingTls,
            Phase::AuthDecision | Phase::ServerInit => State::AwaitingApplication,
            Phase::Normal => State::Running,
            Phase::Closing if !self.closed_reported => State::Closing,
            Phase::Closing => State::Closed,
            Phase::Closed => State::Closed,
            _ => State::Handshake,
        }
    }

    /// The negotiated protocol version (the offered one until the client answered).
    pub fn version(&self) -> Version {
        self.version
    }

    /// The authentication method chosen by the client (once chosen).
    pub fn auth_method(&self) -> Option<AuthMethod> {
        (self.method.security_type != SecurityType::Invalid).then_some(self.method)
    }

    /// The pixel format updates are sent in.
    pub fn client_pixel_format(&self) -> PixelFormat {
        self.client_format
    }

    /// The pixel encoding updates use (chosen from the client's SetEncodings order).
    pub fn client_encoding(&self) -> Encoding {
        self.prefs.encoding
    }

    /// The compression level the client asked for (−256…−247: 0…9; 6 when it did not).
    pub fn client_compress_level(&self) -> u8 {
        self.prefs.level
    }

    /// The JPEG quality (1…100) Tight rectangles of photo-like content are sent with, from the
    /// client's quality level or fine quality; `None` when the client asked for none, its pixel
    /// format cannot have JPEG (colour-mapped, 8 bits per pixel) or there is no JPEG encoder.
    #[cfg(feature = "alloc")]
    pub fn client_jpeg_quality(&self) -> Option<u8> {
        self.tight_jpeg().map(|(p, _)| p.quality)
    }

    /// Whether the client's SetEncodings listed `encoding` (a pseudo-encoding, CopyRect, RRE,
    /// Hextile, ZRLE, Tight or TightPNG; always false for Raw and the compression and JPEG
    /// levels).
    pub fn client_supports(&self, encoding: Encoding) -> bool {
        encoding
            .bit()
            .is_some_and(|b| b != 0 && self.prefs.flags & b != 0)
    }

    /// Whether an update may be sent now: a request is pending (or continuous updates are on)
    /// and no update is in progress.
    pub fn wants_update(&self) -> bool {
        self.phase == Phase::Normal && (self.update_requested || self.continuous.is_some())
            || self.update.is_some()
    }

    /// Whether an update is half-sent (call [`encode_update`](Self::encode_update) again).
    pub fn update_in_progress(&self) -> bool {
        self.update.is_some()
    }

    // ---- B. handlers ----

    /// Feeds bytes received from the client (plaintext: after TLS, the decrypted stream).
    ///
    /// Consumes whole protocol units only and stops after the first event, after lending a
    /// payload, or at the TLS switch point; call again with the unconsumed rest after draining.
    pub fn handle_input<'i>(&mut self, input: &'i [u8]) -> Result<Progress<Payload<'i>>, Error> {
        match self.phase {
            Phase::Closed | Phase::Closing => return Err(Error::Closed),
            // Nothing is read: the bytes belong to the TLS layer.
            Phase::AwaitTls(_) => return Ok(Progress::new(0, None)),
            _ => {}
        }
        let mut consumed = 0;
        loop {
            // Stop while an event waits for room, or the answers a step may queue do not fit
            // (the driver drains `poll_transmit` after every call, so they always do at first).
            if self.events.is_full() || !self.out.has_room(STEP_OUTPUT, STEP_MESSAGES) {
                break;
            }
            let rest = &input[consumed..];
            let before = self.events.len();
            match self.step(rest) {
                Ok((0, None)) => break,
                Ok((n, payload)) => {
                    consumed += n;
                    if payload.is_some() {
                        return Ok(Progress::new(consumed, payload));
                    }
                }
                Err(e) => {
                    self.fail();
                    return Err(e);
                }
            }
            if self.events.len() != before
                || matches!(
                    self.phase,
                    Phase::AwaitTls(_) | Phase::Closing | Phase::Closed | Phase::AuthDecision
                )
            {
                break;
            }
        }
        Ok(Progress::new(consumed, None))
    }

    /// The client closed its side of the connection.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        let clean = matches!(self.phase, Phase::Normal | Phase::Closing | Phase::Closed)
            && self.partial == Partial::None;
        self.phase = Phase::Closed;
        if clean {
            Ok(())
        } else {
            Err(Error::Protocol(ProtocolError::UnexpectedEof))
        }
    }

    /// Tells the server the time; spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.fail_hold {
            Some(FailHold::Unarmed) => {
                self.fail_hold = Some(FailHold::Until(now + self.config.auth_failure_delay))
            }
            Some(FailHold::Until(t)) if now >= t => self.release_failure(),
            _ => {}
        }
        if let Some(d) = self.deadline
            && now >= d
            && !matches!(self.phase, Phase::Normal | Phase::Closed | Phase::Closing)
        {
            debug!("rfb server: handshake timeout");
            self.phase = Phase::Closed;
            self.deadline = None;
            self.push_event(Event::TimedOut);
        }
    }

    // ---- C. commands: in handshake.rs (authentication, ServerInit) and normal.rs ----

    // ---- D. polls ----

    /// Writes queued messages into `buf`. While an update is half-encoded this returns `None`
    /// (messages wait until [`encode_update`](Self::encode_update) finishes it).
    #[must_use = "the output must be sent"]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<Transmit>, InsufficientSize> {
        if self.update.is_some() {
            return Ok(None);
        }
        if let Some(next) = self.colour_map_pending
            && self.out.is_empty()
        {
            return self.emit_colour_map(next, buf);
        }
        self.out.pop_into(buf)
    }

    /// The next event, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        if let Some(e) = self.events.pop_front() {
            return Some(e);
        }
        // `Closing` was entered when the final message was decided; the event waits until it
        // is written (and the failure delay is over).
        if self.phase == Phase::Closing
            && !self.closed_reported
            && self.out.is_empty()
            && self.fail_hold.is_none()
        {
            self.closed_reported = true;
            return Some(Event::Closed);
        }
        None
    }

    /// When to call [`handle_timeout`](Self::handle_timeout) next.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        let hold = match self.fail_hold {
            Some(FailHold::Unarmed) => Some(Instant::ZERO),
            Some(FailHold::Until(t)) => Some(t),
            None => None,
        };
        let deadline = self
            .deadline
            .filter(|_| !matches!(self.phase, Phase::Normal | Phase::Closed | Phase::Closing));
        match (hold, deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    // ---- internals ----

    fn running(&self) -> Result<(), CommandError> {
        if self.phase == Phase::Normal {
            Ok(())
        } else {
            Err(CommandError::InvalidState)
        }
    }

    fn push_event(&mut self, e: Event) {
        // The input loop stops while the queue is full, so this only drops on misuse.
        let _ = self.events.push_back(e);
    }

    fn fail(&mut self) {
        if !matches!(self.phase, Phase::Closing) {
            self.phase = Phase::Closed;
        }
    }

    /// One protocol unit: `(consumed, payload)`; `(0, None)` means more input is needed. The
    /// phase's handler decides, and makes the transition, as it consumes the unit.
    fn step<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        match self.phase {
            Phase::Version => self.on_version(input),
            Phase::SecurityChoice => self.on_security_choice(input),
            Phase::VncResponse => self.on_vnc_response(input),
            Phase::VencryptVersion => self.on_vencrypt_version(input),
            Phase::VencryptSubtype => self.on_vencrypt_subtype(input),
            Phase::PlainCredentials => self.on_plain_credentials(input),
            Phase::ClientInit => self.on_client_init(input),
            Phase::Normal => self.on_message(input),
            // Waiting for the application or the TLS layer, or over: nothing is read.
            Phase::AuthDecision
            | Phase::ServerInit
            | Phase::AwaitTls(_)
            | Phase::Closing
            | Phase::Closed => Ok((0, None)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drain(s: &mut Server) -> usize {
        let mut buf = [0u8; 512];
        let mut n = 0;
        while let Some(t) = s.poll_transmit(&mut buf).unwrap() {
            n += t.len;
        }
        n
    }

    /// The phase changes when the input is handled, with the answer still pending; the
    /// `Closed` event waits until the final message is written, and comes once.
    #[test]
    fn transitions_happen_when_the_input_is_handled() {
        let c = ServerConfig::with_security(&[SecurityType::VncAuth], &[]);
        let mut s = Server::new(c, Instant::ZERO, [7; CHALLENGE_LEN]);
        assert_eq!(drain(&mut s), 12);
        assert_eq!(s.handle_input(b"RFB 003.008\n").unwrap().consumed, 12);
        assert_eq!(
            s.phase,
            Phase::SecurityChoice,
            "with the type list still queued"
        );
        assert!(!s.out.is_empty());
        assert_eq!(drain(&mut s), 2);
        assert_eq!(s.handle_input(&[2]).unwrap().consumed, 1);
        assert_eq!(
            s.phase,
            Phase::VncResponse,
            "with the challenge still queued"
        );
        assert_eq!(drain(&mut s), CHALLENGE_LEN);
        assert_eq!(s.handle_input(&[0; CHALLENGE_LEN]).unwrap().consumed, 16);
        assert!(matches!(s.poll_event(), Some(Event::VncAuth { .. })));
        s.config.auth_failure_delay = Duration::ZERO;
        s.reject_auth("no").unwrap();
        assert_eq!((s.phase, s.state()), (Phase::Closing, State::Closing));
        assert_eq!(
            s.poll_event(),
            Some(Event::AuthFailed {
                delay: Duration::ZERO
            })
        );
        assert_eq!(
            s.poll_event(),
            None,
            "held back until the failure is written"
        );
        assert_eq!(s.state(), State::Closing);
        assert_eq!(drain(&mut s), 4 + 4 + 2);
        assert_eq!(s.phase, Phase::Closing, "writing output changes no phase");
        assert_eq!(s.poll_event(), Some(Event::Closed));
        assert_eq!((s.phase, s.state()), (Phase::Closing, State::Closed));
        assert_eq!(s.poll_event(), None);
        assert_eq!(s.handle_input(&[0]), Err(Error::Closed));
    }
}
