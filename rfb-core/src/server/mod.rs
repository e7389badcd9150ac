//! The RFB server state machine.

mod encode;
mod update;
#[cfg(feature = "alloc")]
mod zrle;

pub use update::{CursorShape, Damage, EncodeStatus, MIN_ENCODE_BUFFER, UpdateSource};

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
    /// zlib level for ZRLE (compression-level pseudo-encoding; default 6).
    pub(crate) level: u8,
}

impl Prefs {
    const fn new() -> Self {
        Self {
            encoding: Encoding::Raw,
            flags: 0,
            level: 6,
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
            Encoding::Raw | Encoding::Rre | Encoding::Hextile | Encoding::Zrle
        );
        if pixel && !*picked {
            self.encoding = e;
            *picked = true;
        }
        self.flags |= bit;
        if let Some(l) = e.compress_level() {
            self.level = l;
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
    pub(crate) colour_map_pending: Option<u16>,
    pub(crate) update: Option<UpdateState>,
    #[cfg(feature = "alloc")]
    pub(crate) zrle: Option<alloc::boxed::Box<zrle::ZrleEncoder>>,
    #[cfg(feature = "alloc")]
    pub(crate) zlib: crate::zlib::CompressorFactory,
}

/// Most bytes, and messages, one step of `handle_input` queues (a fence answer is the largest;
/// refusals and failure reasons that do not fit are not sent, as before).
const STEP_OUTPUT: usize = 128;
const STEP_MESSAGES: usize = 4;

/// The result of a command helper an input step calls: the step reserved room for its output.
fn reserved(r: Result<(), CommandError>) {
    debug_assert!(r.is_ok(), "an input step queued more than it reserved");
}

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
            colour_map_pending: None,
            update: None,
            #[cfg(feature = "alloc")]
            zrle: None,
            #[cfg(feature = "alloc")]
            zlib: crate::zlib::MinizCompressor::boxed,
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
            Phase::Closing => State::Closing,
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

    /// Whether the client's SetEncodings listed `encoding` (a pseudo-encoding, CopyRect, RRE,
    /// Hextile or ZRLE; always false for Raw and the compression levels).
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

    // ---- C. commands ----

    /// The TLS layer finished its handshake (and verified the client certificate if configured):
    /// authentication continues over TLS.
    pub fn tls_established(&mut self) -> Result<(), CommandError> {
        let Phase::AwaitTls(sub) = self.phase else {
            return Err(CommandError::InvalidState);
        };
        match sub.sub_auth() {
            Some(SubAuth::None) => self.auth_success(),
            Some(SubAuth::Vnc) => self.send_challenge(),
            Some(SubAuth::Plain) => {
                self.phase = Phase::PlainCredentials;
                Ok(())
            }
            None => Err(CommandError::InvalidState),
        }
    }

    /// Accepts the credentials of the last [`Event::VncAuth`] / [`Event::PlainAuth`].
    pub fn accept_auth(&mut self) -> Result<(), CommandError> {
        if self.phase != Phase::AuthDecision {
            return Err(CommandError::InvalidState);
        }
        self.auth_success()
    }

    /// Rejects the credentials: after the configured delay the client gets a failed
    /// SecurityResult (with `reason` in RFB 3.8) and the connection closes.
    pub fn reject_auth(&mut self, reason: &'static str) -> Result<(), CommandError> {
        if self.phase != Phase::AuthDecision {
            return Err(CommandError::InvalidState);
        }
        self.fail_reason = reason;
        self.phase = Phase::Closing;
        let delay = self.config.auth_failure_delay;
        self.push_event(Event::AuthFailed { delay });
        if delay.is_zero() {
            self.release_failure();
        } else {
            self.fail_hold = Some(FailHold::Unarmed);
        }
        Ok(())
    }

    /// Answers ClientInit: the framebuffer size, its native pixel format and the desktop name
    /// (at most 200 bytes; UTF-8 recommended).
    pub fn server_init(
        &mut self,
        width: u16,
        height: u16,
        format: PixelFormat,
        name: &[u8],
    ) -> Result<(), CommandError> {
        if self.phase != Phase::ServerInit {
            return Err(CommandError::InvalidState);
        }
        if !format.is_valid() || !format.true_colour || name.len() > 200 {
            return Err(CommandError::InvalidArgument);
        }
        let repr = ServerInitRepr {
            width,
            height,
            format,
            name_len: name.len() as u32,
        };
        self.out.push(ServerInitRepr::LEN + name.len(), |b| {
            repr.emit(b);
            b[ServerInitRepr::LEN..].copy_from_slice(name);
        })?;
        self.width = width;
        self.height = height;
        self.native = format;
        self.client_format = format;
        self.phase = Phase::Normal;
        self.deadline = None;
        Ok(())
    }

    /// Chooses the zlib implementation ZRLE compresses with (default
    /// [`MinizCompressor`](crate::zlib::MinizCompressor)). Call before the first ZRLE update:
    /// once the connection's stream exists this returns [`CommandError::InvalidState`].
    #[cfg(feature = "alloc")]
    pub fn set_zrle_compressor(
        &mut self,
        factory: crate::zlib::CompressorFactory,
    ) -> Result<(), CommandError> {
        if self.zrle.is_some() {
            return Err(CommandError::InvalidState);
        }
        self.zlib = factory;
        Ok(())
    }

    /// Rings the client's bell.
    pub fn bell(&mut self) -> Result<(), CommandError> {
        self.running()?;
        self.out.push(1, |b| b[0] = ServerMessageType::Bell.into())
    }

    /// Sends ServerCutText: the header is queued and `poll_transmit` then asks the application to
    /// send its `len` bytes itself ([`AppPayload::CutText`](crate::AppPayload::CutText)).
    /// `Extended` needs the client's extended-clipboard support.
    pub fn send_cut_text(&mut self, len: CutTextLength) -> Result<(), CommandError> {
        self.running()?;
        let extended = self.prefs.flags & bits::EXT_CLIPBOARD != 0;
        let t = ServerMessageType::ServerCutText.into();
        shared::queue_cut_text(&mut self.out, t, len, extended)
    }

    /// Sends a ServerFence (the client must have asked for the Fence pseudo-encoding).
    pub fn send_fence(&mut self, flags: u32, payload: &[u8]) -> Result<(), CommandError> {
        self.running()?;
        if self.prefs.flags & bits::FENCE == 0 {
            return Err(CommandError::InvalidState);
        }
        shared::queue_fence(&mut self.out, flags, payload)
    }

    /// Answers the last SetDesktopSize with a status code (0 success, 1 prohibited, 2 out of
    /// resources, 3 invalid layout). The ExtendedDesktopSize reply goes out with the next update
    /// (pass the new size in [`UpdateSource`] on success).
    pub fn reply_desktop_size(&mut self, status: u16) -> Result<(), CommandError> {
        self.running()?;
        if self.prefs.flags & bits::EXT_DESKTOP_SIZE == 0 {
            return Err(CommandError::InvalidState);
        }
        self.desktop_size_reply = Some(status);
        self.update_requested = true;
        Ok(())
    }

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
        if self.phase == Phase::Closing && self.out.is_empty() && self.fail_hold.is_none() {
            self.phase = Phase::Closed;
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

    /// Queues a connection failure before security is agreed (3.3: U32 0; 3.7+: U8 0) plus reason.
    fn refuse(&mut self, reason: &'static str) {
        let r = FailureReasonRepr {
            reason: reason.as_bytes(),
        };
        let lead = if self.version == Version::V3_3 { 4 } else { 1 };
        let _ = self.out.push(lead + r.buffer_len(), |b| {
            b[..lead].fill(0);
            r.emit(&mut b[lead..]);
        });
        self.phase = Phase::Closing;
    }

    /// Queues a failed SecurityResult (reason only in 3.8).
    fn queue_security_failure(&mut self, reason: &str) {
        let r = FailureReasonRepr {
            reason: reason.as_bytes(),
        };
        let with_reason = self.version >= Version::V3_8;
        let n = 4 + if with_reason { r.buffer_len() } else { 0 };
        let _ = self.out.push(n, |b| {
            put32(b, 0, u32::from(SecurityResult::Failed));
            if with_reason {
                r.emit(&mut b[4..]);
            }
        });
    }

    fn release_failure(&mut self) {
        self.fail_hold = None;
        let reason = self.fail_reason;
        self.queue_security_failure(reason);
        self.phase = Phase::Closing;
    }

    fn send_challenge(&mut self) -> Result<(), CommandError> {
        let c = self.challenge;
        self.out.push(CHALLENGE_LEN, |b| b.copy_from_slice(&c))?;
        self.phase = Phase::VncResponse;
        Ok(())
    }

    fn auth_success(&mut self) -> Result<(), CommandError> {
        // RFB 3.3/3.7 skip SecurityResult for type None only (TigerVNC SConnection rule).
        let skip = self.version < Version::V3_8 && self.method.security_type == SecurityType::None;
        if !skip {
            self.out
                .push(4, |b| put32(b, 0, u32::from(SecurityResult::Ok)))?;
        }
        self.phase = Phase::ClientInit;
        let m = self.method;
        self.push_event(Event::Authenticated(m));
        Ok(())
    }

    fn choose(&mut self, t: SecurityType) -> Result<(), Error> {
        self.method = AuthMethod {
            security_type: t,
            subtype: None,
        };
        match t {
            SecurityType::None => reserved(self.auth_success()),
            SecurityType::VncAuth => reserved(self.send_challenge()),
            SecurityType::VeNCrypt => {
                let v = VencryptVersionRepr::V0_2;
                self.out.push_reserved(2, |b| v.emit(b));
                self.phase = Phase::VencryptVersion;
            }
            _ => return Err(Error::Protocol(ProtocolError::SecurityTypeNotOffered)),
        }
        Ok(())
    }

    /// One protocol unit: `(consumed, payload)`; `(0, None)` means more input is needed.
    fn step<'i>(&mut self, input: &'i [u8]) -> Result<(usize, Option<Payload<'i>>), Error> {
        use ProtocolError as P;
        match self.phase {
            Phase::Version => {
                let v = complete_or_wait!(
                    ProtocolVersionRepr::parse(input),
                    malformed => P::MalformedVersion
                );
                match Version::from_numbers(v.major, v.minor) {
                    None => {
                        self.version = Version::V3_3;
                        self.refuse(REASON_VERSION);
                        return Err(Error::Protocol(ProtocolError::UnsupportedVersion));
                    }
                    Some(cv) => self.version = cv.min(self.config.max_version),
                }
                debug!("rfb server: version 3.{}", self.version.minor());
                if let Some(reason) = self.config.refuse_with {
                    self.refuse(reason);
                } else if self.version == Version::V3_3 {
                    // The server picks: only None and VncAuth exist in 3.3.
                    let pick = self
                        .config
                        .security_types
                        .iter()
                        .copied()
                        .find(|t| matches!(t, SecurityType::None | SecurityType::VncAuth));
                    match pick {
                        Some(t) => {
                            self.out
                                .push_reserved(4, |b| put32(b, 0, u32::from(u8::from(t))));
                            self.choose(t)?;
                        }
                        None => self.refuse(REASON_NO_TYPES),
                    }
                } else if self.config.security_types.is_empty() {
                    self.refuse(REASON_NO_TYPES);
                } else {
                    let mut types = [0u8; 4];
                    let n = self.config.security_types.len();
                    for (d, t) in types.iter_mut().zip(self.config.security_types.iter()) {
                        *d = u8::from(*t);
                    }
                    let r = SecurityTypesRepr { types: &types[..n] };
                    self.out.push_reserved(r.buffer_len(), |b| r.emit(b));
                    self.phase = Phase::SecurityChoice;
                }
                Ok((ProtocolVersionRepr::LEN, None))
            }
            Phase::SecurityChoice => {
                let Some(&c) = input.first() else {
                    return Ok((0, None));
                };
                let t = SecurityType::from(c);
                if !self.config.security_types.contains(&t) {
                    debug!("rfb server: client chose unoffered security type {}", c);
                    self.queue_security_failure(REASON_NOT_OFFERED);
                    self.phase = Phase::Closing;
                    return Err(Error::Protocol(ProtocolError::SecurityTypeNotOffered));
                }
                self.choose(t)?;
                Ok((1, None))
            }
            Phase::VncResponse => {
                if input.len() < CHALLENGE_LEN {
                    return Ok((0, None));
                }
                let mut response = [0u8; CHALLENGE_LEN];
                response.copy_from_slice(&input[..CHALLENGE_LEN]);
                self.phase = Phase::AuthDecision;
                self.push_event(Event::VncAuth {
                    challenge: self.challenge,
                    response,
                });
                Ok((CHALLENGE_LEN, None))
            }
            Phase::AuthDecision | Phase::ServerInit => Ok((0, None)),
            Phase::VencryptVersion => {
                let v = complete_or_wait!(
                    VencryptVersionRepr::parse(input),
                    malformed => P::MalformedVencrypt
                );
                if v != VencryptVersionRepr::V0_2 {
                    let _ = self.out.push(1, |b| b[0] = vencrypt_ack::VERSION_REFUSED);
                    self.phase = Phase::Closing;
                    return Err(Error::Protocol(ProtocolError::VencryptVersion));
                }
                let subs = self.config.vencrypt_subtypes.clone();
                let n = VencryptSubtypesRepr::buffer_len_for(subs.len());
                self.out.push_reserved(1 + n, |b| {
                    b[0] = vencrypt_ack::VERSION_OK;
                    VencryptSubtypesRepr::emit_list(&subs, &mut b[1..]);
                });
                self.phase = Phase::VencryptSubtype;
                Ok((2, None))
            }
            Phase::VencryptSubtype => {
                if input.len() < 4 {
                    return Ok((0, None));
                }
                let sub = VencryptSubtype::from(be32(input, 0));
                if !self.config.vencrypt_subtypes.contains(&sub) {
                    if sub.uses_tls() {
                        let _ = self.out.push(1, |b| b[0] = vencrypt_ack::SUBTYPE_REFUSED);
                    }
                    self.phase = Phase::Closing;
                    return Err(Error::Protocol(ProtocolError::SubtypeNotOffered));
                }
                self.method.subtype = Some(sub);
                debug!("rfb server: VeNCrypt sub-type {}", u32::from(sub));
                if sub.uses_tls() {
                    self.out
                        .push_reserved(1, |b| b[0] = vencrypt_ack::SUBTYPE_OK);
                    self.phase = Phase::AwaitTls(sub);
                    self.push_event(Event::StartTls);
                } else {
                    match sub.sub_auth() {
                        Some(SubAuth::None) => reserved(self.auth_success()),
                        Some(SubAuth::Vnc) => reserved(self.send_challenge()),
                        _ => self.phase = Phase::PlainCredentials,
                    }
                }
                Ok((4, None))
            }
            Phase::AwaitTls(_) => Ok((0, None)),
            Phase::PlainCredentials => {
                let (u, p) = complete_or_wait!(
                    PlainCredentialsRepr::parse_lengths(input),
                    malformed => P::MalformedVencrypt
                );
                if u > self.config.limits.max_username || p > self.config.limits.max_password {
                    self.queue_security_failure(REASON_CREDENTIALS);
                    self.phase = Phase::Closing;
                    return Err(Error::Protocol(ProtocolError::CredentialsTooLong));
                }
                let c = complete_or_wait!(
                    PlainCredentialsRepr::parse(input),
                    malformed => P::MalformedVencrypt
                );
                self.phase = Phase::AuthDecision;
                self.push_event(Event::PlainAuth);
                Ok((
                    c.buffer_len(),
                    Some(Payload::PlainCredentials {
                        username: c.username,
                        password: c.password,
                    }),
                ))
            }
            Phase::ClientInit => {
                let m = complete_or_wait!(ClientInitRepr::parse(input), malformed => P::Malformed);
                self.phase = Phase::ServerInit;
                self.push_event(Event::ClientInit { shared: m.shared });
                Ok((ClientInitRepr::LEN, None))
            }
            Phase::Normal => self.step_message(input),
            Phase::Closing | Phase::Closed => Ok((0, None)),
        }
    }

    fn step_message<'i>(&mut self, input: &'i [u8]) -> Result<(usize, Option<Payload<'i>>), Error> {
        use ProtocolError as P;
        match self.partial {
            Partial::None => {}
            Partial::Encodings {
                remaining,
                mut acc,
                mut picked,
            } => {
                let n = (input.len() / 4).min(usize::from(remaining));
                if n == 0 {
                    return Ok((0, None));
                }
                for c in input[..4 * n].chunks_exact(4) {
                    acc.fold(Encoding::from(be32(c, 0) as i32), &mut picked);
                }
                let remaining = remaining - n as u16;
                if remaining > 0 {
                    self.partial = Partial::Encodings {
                        remaining,
                        acc,
                        picked,
                    };
                } else {
                    self.partial = Partial::None;
                    self.apply_prefs(acc);
                }
                return Ok((4 * n, None));
            }
            Partial::CutText { remaining } => {
                let Some((data, remaining)) = shared::body_chunk(input, remaining) else {
                    return Ok((0, None));
                };
                self.partial = if remaining == 0 {
                    Partial::None
                } else {
                    Partial::CutText { remaining }
                };
                let last = remaining == 0;
                return Ok((data.len(), Some(Payload::CutText { data, last })));
            }
            Partial::Screens { remaining } => {
                let s =
                    complete_or_wait!(Screen::parse(input), malformed => P::InvalidScreenLayout);
                self.partial = if remaining > 1 {
                    Partial::Screens {
                        remaining: remaining - 1,
                    }
                } else {
                    Partial::None
                };
                self.push_event(Event::Screen(s));
                return Ok((Screen::LEN, None));
            }
        }
        let Some(&t) = input.first() else {
            return Ok((0, None));
        };
        trace!("rfb server: message type {}", t);
        match ClientMessageType::from(t) {
            ClientMessageType::SetPixelFormat => {
                let m = complete_or_wait!(
                    SetPixelFormatRepr::parse(input),
                    malformed => P::InvalidPixelFormat
                );
                if !m.format.is_valid() {
                    return Err(Error::Protocol(ProtocolError::InvalidPixelFormat));
                }
                if self.update.is_some() {
                    self.pending_format = Some(m.format);
                } else {
                    self.set_client_format(m.format);
                }
                self.push_event(Event::PixelFormat(m.format));
                Ok((SetPixelFormatRepr::LEN, None))
            }
            ClientMessageType::SetEncodings => {
                let h = complete_or_wait!(SetEncodingsHeaderRepr::parse(input), malformed => P::Malformed);
                if h.count > self.config.limits.max_encodings {
                    return Err(Error::Protocol(ProtocolError::TooManyEncodings));
                }
                // Raw until the list names a pixel encoding this crate implements.
                let acc = Prefs::new();
                if h.count == 0 {
                    self.apply_prefs(acc);
                } else {
                    self.partial = Partial::Encodings {
                        remaining: h.count,
                        acc,
                        picked: false,
                    };
                }
                Ok((SetEncodingsHeaderRepr::LEN, None))
            }
            ClientMessageType::FramebufferUpdateRequest => {
                let m = complete_or_wait!(FramebufferUpdateRequestRepr::parse(input), malformed => P::Malformed);
                let rect = m.rect.clip_to(self.width, self.height);
                if self.continuous.is_some() && m.incremental {
                    return Ok((FramebufferUpdateRequestRepr::LEN, None));
                }
                self.update_requested = true;
                if !m.incremental {
                    self.full_update_requested = true;
                }
                self.push_event(Event::UpdateRequested {
                    incremental: m.incremental,
                    rect,
                });
                Ok((FramebufferUpdateRequestRepr::LEN, None))
            }
            ClientMessageType::KeyEvent => {
                let m = complete_or_wait!(KeyEventRepr::parse(input), malformed => P::Malformed);
                self.push_event(Event::Key {
                    down: m.down,
                    keysym: m.keysym,
                });
                Ok((KeyEventRepr::LEN, None))
            }
            ClientMessageType::PointerEvent => {
                let m =
                    complete_or_wait!(PointerEventRepr::parse(input), malformed => P::Malformed);
                self.push_event(Event::Pointer {
                    buttons: m.buttons,
                    x: m.x,
                    y: m.y,
                });
                Ok((PointerEventRepr::LEN, None))
            }
            ClientMessageType::ClientCutText => {
                let extended = self.prefs.flags & bits::EXT_CLIPBOARD != 0;
                let max = self.config.limits.max_cut_text;
                let Some(len) = shared::cut_text_header(input, extended, max)? else {
                    return Ok((0, None));
                };
                if !len.is_empty() {
                    self.partial = Partial::CutText {
                        remaining: len.len(),
                    };
                }
                self.push_event(Event::CutText(len));
                Ok((CutTextHeaderRepr::LEN, None))
            }
            ClientMessageType::EnableContinuousUpdates => {
                let m = complete_or_wait!(EnableContinuousUpdatesRepr::parse(input), malformed => P::Malformed);
                if self.prefs.flags & bits::CONTINUOUS == 0 {
                    return Err(Error::Protocol(ProtocolError::UnexpectedMessage(t)));
                }
                let rect = m.rect.clip_to(self.width, self.height);
                if m.enable {
                    self.continuous = Some(rect);
                } else {
                    self.continuous = None;
                    self.out.push_reserved(1, end_of_continuous_updates);
                }
                self.push_event(Event::ContinuousUpdates {
                    enabled: m.enable,
                    rect,
                });
                Ok((EnableContinuousUpdatesRepr::LEN, None))
            }
            ClientMessageType::ClientFence => {
                let (n, response) = shared::receive_fence(input, &mut self.out)?;
                Ok((
                    n,
                    response.map(|(flags, data)| Payload::FenceResponse { flags, data }),
                ))
            }
            ClientMessageType::SetDesktopSize => {
                let h = complete_or_wait!(
                    SetDesktopSizeHeaderRepr::parse(input),
                    malformed => P::InvalidScreenLayout
                );
                if h.screens > self.config.limits.max_screens {
                    return Err(Error::Protocol(ProtocolError::InvalidScreenLayout));
                }
                if h.screens > 0 {
                    self.partial = Partial::Screens {
                        remaining: h.screens,
                    };
                }
                self.push_event(Event::SetDesktopSize {
                    width: h.width,
                    height: h.height,
                    screens: h.screens,
                });
                Ok((SetDesktopSizeHeaderRepr::LEN, None))
            }
            ClientMessageType::Qemu => {
                let Some(&sub) = input.get(1) else {
                    return Ok((0, None));
                };
                if self.prefs.flags & bits::QEMU_KEY == 0 || !self.config.qemu_extended_key_events {
                    return Err(Error::Protocol(P::UnknownQemuMessage(sub)));
                }
                // The parser refuses any sub-type but the extended key event's as soon as the
                // sub-type byte is at hand.
                let m = complete_or_wait!(
                    QemuKeyEventRepr::parse(input),
                    malformed => P::UnknownQemuMessage(sub)
                );
                self.push_event(Event::QemuKey {
                    down: m.down,
                    keysym: m.keysym,
                    keycode: m.keycode,
                });
                Ok((QemuKeyEventRepr::LEN, None))
            }
            ClientMessageType::Unknown(t) => {
                Err(Error::Protocol(ProtocolError::UnknownMessageType(t)))
            }
        }
    }

    fn set_client_format(&mut self, f: PixelFormat) {
        self.client_format = f;
        if !f.true_colour {
            // Colour-map clients get a BGR233 map and are served as BGR233 (as QEMU does).
            self.colour_map_pending = Some(0);
        } else {
            self.colour_map_pending = None;
        }
    }

    fn apply_prefs(&mut self, p: Prefs) {
        // First sight of a pseudo-encoding that needs an acknowledgement.
        let new = p.flags & !self.acked;
        if new & bits::CONTINUOUS != 0 {
            self.out.push_reserved(1, end_of_continuous_updates);
        }
        if new & bits::FENCE != 0 {
            let f = FenceRepr {
                flags: fence_flags::REQUEST,
                payload: heapless::Vec::new(),
            };
            self.out.push_reserved(f.buffer_len(), |b| f.emit(b));
        }
        if p.flags & bits::EXT_CLIPBOARD != 0 {
            // Caps: text, with request/notify/provide, max unsolicited text size.
            use ext_clipboard::*;
            let caps = TEXT | CAPS | REQUEST | NOTIFY | PROVIDE;
            let max = self.config.limits.max_cut_text;
            let h = CutTextHeaderRepr {
                message_type: ServerMessageType::ServerCutText.into(),
                length: CutTextLength::Extended(8).to_wire(),
            };
            self.out.push_reserved(CutTextHeaderRepr::LEN + 8, |b| {
                h.emit(b);
                put32(b, CutTextHeaderRepr::LEN, caps);
                put32(b, CutTextHeaderRepr::LEN + 4, max);
            });
        }
        if new & bits::QEMU_KEY != 0 && self.config.qemu_extended_key_events {
            self.qemu_key_ack_pending = true;
        }
        self.acked |= p.flags & (bits::CONTINUOUS | bits::FENCE | bits::QEMU_KEY);
        if self.update.is_some() {
            self.pending_prefs = Some(p);
        } else {
            self.prefs = p;
        }
        self.push_event(Event::EncodingsChanged);
    }

    /// Applies a SetPixelFormat / SetEncodings that arrived during an update.
    pub(crate) fn finish_update(&mut self) {
        self.update = None;
        if self.continuous.is_none() {
            self.update_requested = false;
        }
        self.full_update_requested = false;
        if let Some(f) = self.pending_format.take() {
            self.set_client_format(f);
        }
        if let Some(p) = self.pending_prefs.take() {
            self.prefs = p;
        }
    }

    fn emit_colour_map(
        &mut self,
        next: u16,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        const CHUNK: u16 = 32;
        let n = CHUNK.min(256 - next);
        let len = SetColourMapEntriesRepr::LEN + usize::from(n) * 6;
        if buf.len() < len {
            return Err(InsufficientSize { required: len });
        }
        SetColourMapEntriesRepr {
            first: next,
            count: n,
        }
        .emit(buf);
        for i in 0..n {
            let v = u32::from(next + i);
            // BGR233: red bits 0-2, green 3-5, blue 6-7.
            let (r, g, b) = (v & 7, (v >> 3) & 7, (v >> 6) & 3);
            let at = SetColourMapEntriesRepr::LEN + usize::from(i) * 6;
            put16(buf, at, (r * 65535 / 7) as u16);
            put16(buf, at + 2, (g * 65535 / 7) as u16);
            put16(buf, at + 4, (b * 65535 / 3) as u16);
        }
        self.colour_map_pending = if next + n >= 256 {
            None
        } else {
            Some(next + n)
        };
        Ok(Some(Transmit { len, then: None }))
    }
}

/// EndOfContinuousUpdates (a lone type byte).
fn end_of_continuous_updates(b: &mut [u8]) {
    b[0] = ServerMessageType::EndOfContinuousUpdates.into();
}
