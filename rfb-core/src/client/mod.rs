//! The RFB client state machine.
//!
//! Commands encode into the output queue; what the server says comes back from
//! [`Client::handle_input_fb`] as events and lent payloads, rectangles decoded straight into
//! the application's framebuffer.
//!
//! # Phases
//!
//! ```text
//!   Version ─ ours pending ─┬─ 3.3 ─► Security33 ─┬─ None: ClientInit pending ─► ServerInit
//!                           │                     ├─ VncAuth ─► VncChallenge
//!                           │                     └─ 0 ─► ReasonLength
//!                           └─ 3.7+ ─► SecurityList ─┬─ None ─► SecurityResult (3.7: ClientInit pending ─► ServerInit)
//!                                                   ├─ VncAuth ─► VncChallenge
//!                                                   ├─ VeNCrypt ─► VencryptVersion
//!                                                   └─ empty list ─► ReasonLength
//!   VncChallenge ─ Event::NeedCredentials ─► NeedPassword ─ send_password() ─► SecurityResult
//!   VencryptVersion ─ ours pending ─► VencryptAck ─► VencryptSubtypes ─┬─ X509*: ─► VencryptTlsAck
//!                                                                    └─ Plain/Vnc/None: as after TLS
//!   VencryptTlsAck ─ ack, Event::StartTls ─► AwaitTls ─ tls_established() ─► SecurityResult (None)
//!                                                      | VncChallenge | NeedPlain
//!   NeedPlain ─ send_plain_credentials() ─► SecurityResult
//!   SecurityResult ─┬─ OK: ClientInit pending, Event::Authenticated ─► ServerInit
//!                   └─ failed: (3.8) ReasonLength, reason, Event::SecurityFailed ─► Closed
//!   ServerInit ─ header and name, Event::ServerInit ─► Normal ─ server messages ─► Normal
//!   any phase ─ protocol error, EOF, handshake deadline ─► Closed
//! ```
//!
//! What is valid where:
//! - The handshake phases: the server's next handshake message, nothing else.
//!   `NeedPassword`/`NeedPlain`: nothing is read; [`Client::send_password`] /
//!   [`Client::send_plain_credentials`]. `AwaitTls`: nothing is read (the bytes belong to the
//!   TLS layer); [`Client::tls_established`] once the certificate is validated (no credential is
//!   sent before).
//! - `Normal`: every server message; the session commands ([`Client::request_update`],
//!   [`Client::key_event`], …). `Closed`: `handle_input` is [`Error::Closed`]. Commands in the
//!   wrong phase are [`CommandError::InvalidState`].
//!
//! # Transitions happen on input
//!
//! The phase changes, and the events are queued, when `handle_input` consumes a message or a
//! command is issued; `poll_transmit` only writes the queued messages (it always did).
//!
//! The code is one file per phase: this one holds the types, the state, the input dispatch
//! and the polls; `handshake.rs` everything up to ServerInit; `normal.rs` the server messages
//! of the normal phase and the session commands; `decode.rs` the Raw, RRE and Hextile decoders;
//! `zrle.rs` the ZRLE decoder; `tight.rs` the Tight decoder.

mod decode;
mod handshake;
mod normal;
#[cfg(feature = "alloc")]
mod tight;
#[cfg(feature = "alloc")]
mod zrle;

use crate::Progress;
use crate::auth::{CHALLENGE_LEN, vnc_response};
use crate::error::{CommandError, Error, InsufficientSize, ProtocolError};
use crate::outq::{OutQueue, Transmit};
use crate::pixel::{FramebufferMut, Translator};
use crate::shared;
use crate::time::{Duration, Instant};
use crate::wire::*;
use decode::{Hextile, Sink};

/// Limits on what a server may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ClientLimits {
    /// Longest ServerCutText accepted.
    pub max_cut_text: u32,
    /// Largest cursor width and height accepted.
    pub max_cursor: u16,
    /// Longest reason or desktop name accepted (the first 128 bytes are kept).
    pub max_string: u32,
    /// Largest Tight JPEG rectangle accepted, in pixels: its image is decoded whole into a
    /// buffer of three bytes a pixel (servers send at most 65536; default 2048 × 2048).
    pub max_jpeg_pixels: u32,
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_cut_text: 1 << 20,
            max_cursor: 256,
            max_string: 1 << 16,
            max_jpeg_pixels: 2048 * 2048,
        }
    }
}

/// Client configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// Highest version spoken.
    pub max_version: Version,
    /// Acceptable RFB security types, in order of preference (`None`, `VncAuth`, `VeNCrypt`).
    pub security_types: heapless::Vec<SecurityType, 4>,
    /// Acceptable VeNCrypt sub-types, in order of preference.
    pub vencrypt_subtypes: heapless::Vec<VencryptSubtype, 8>,
    /// Ask the server to share the desktop (ClientInit).
    pub shared: bool,
    /// Input limits.
    pub limits: ClientLimits,
    /// Give up if ServerInit has not arrived in this time.
    pub handshake_timeout: Option<Duration>,
}

impl Default for ClientConfig {
    /// Prefers X.509 VeNCrypt (VNC, Plain, None inside), then VncAuth, then None.
    fn default() -> Self {
        Self::with_security(
            &[
                SecurityType::VeNCrypt,
                SecurityType::VncAuth,
                SecurityType::None,
            ],
            &[
                VencryptSubtype::X509Vnc,
                VencryptSubtype::X509Plain,
                VencryptSubtype::X509None,
            ],
        )
    }
}

impl ClientConfig {
    /// A configuration accepting exactly these types and sub-types, in this order. Types and
    /// sub-types this crate cannot run (anonymous TLS, SASL, type 18 …) are never chosen.
    pub fn with_security(types: &[SecurityType], subtypes: &[VencryptSubtype]) -> Self {
        let mut security_types = heapless::Vec::new();
        for t in types.iter().take(4) {
            let _ = security_types.push(*t);
        }
        let mut vencrypt_subtypes = heapless::Vec::new();
        for s in subtypes.iter().take(8) {
            let _ = vencrypt_subtypes.push(*s);
        }
        Self {
            max_version: Version::V3_8,
            security_types,
            vencrypt_subtypes,
            shared: true,
            limits: ClientLimits::default(),
            handshake_timeout: Some(Duration::from_secs(30)),
        }
    }
}

/// Which credentials the server asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Credentials {
    /// A VNC password: answer with [`Client::send_password`].
    Password,
    /// Username and password: answer with [`Client::send_plain_credentials`].
    Plain,
}

/// Something the application should know or act on. Drain with [`Client::poll_event`].
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event<'a> {
    /// The server acknowledged an X.509 VeNCrypt sub-type. Send what `poll_transmit` produced
    /// so far in plaintext, then insert the TLS layer; every later byte (including received
    /// bytes this core did not consume) belongs to TLS. Validate the server certificate, then
    /// call [`Client::tls_established`]. No credential is sent before that.
    StartTls,
    /// Credentials are needed.
    NeedCredentials(Credentials),
    /// The server offered nothing this client accepts (raw type bytes; VeNCrypt sub-types if
    /// the failure was inside VeNCrypt).
    NoCommonSecurity {
        /// RFB security types offered (empty for RFB 3.3).
        types: &'a [u8],
        /// VeNCrypt sub-types offered.
        subtypes: &'a [u32],
    },
    /// The server refused the connection or the authentication. `reason` has NULs removed and
    /// is capped at 128 bytes (empty in RFB 3.3/3.7 or when the server closed without one).
    SecurityFailed {
        /// The server's reason.
        reason: &'a [u8],
    },
    /// Authentication succeeded; ClientInit was queued.
    Authenticated,
    /// ServerInit: the session starts. Updates arrive in `format` until
    /// [`Client::set_pixel_format`].
    ServerInit {
        /// Framebuffer width.
        width: u16,
        /// Framebuffer height.
        height: u16,
        /// The server's pixel format.
        format: PixelFormat,
        /// Desktop name (first 128 bytes, NULs removed).
        name: &'a [u8],
    },
    /// A FramebufferUpdate starts (65535 = until LastRect).
    UpdateBegin {
        /// Announced rectangle count.
        rects: u16,
    },
    /// A rectangle of pixels was written into the framebuffer.
    Rect {
        /// The area (session coordinates; the framebuffer clipped it).
        rect: Rect,
        /// How it was encoded.
        encoding: Encoding,
    },
    /// The FramebufferUpdate is complete.
    UpdateEnd,
    /// The framebuffer size changed (DesktopSize): resize before the next `handle_input`.
    DesktopSize {
        /// New width.
        width: u16,
        /// New height.
        height: u16,
    },
    /// ExtendedDesktopSize; `screens` [`Event::Screen`]s follow.
    ExtendedDesktopSize {
        /// 0 server, 1 this client's request, 2 another client.
        reason: u16,
        /// 0 success, else an error code (the size did not change).
        status: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
        /// Number of screens that follow.
        screens: u8,
    },
    /// A screen of the last ExtendedDesktopSize.
    Screen(Screen),
    /// A cursor shape: `data_len` bytes follow as [`Payload::CursorData`] (pixels in the wire
    /// format, then the bitmask).
    Cursor {
        /// Hotspot x.
        hotspot_x: u16,
        /// Hotspot y.
        hotspot_y: u16,
        /// Width.
        width: u16,
        /// Height.
        height: u16,
        /// Bytes of pixel data plus mask.
        data_len: u32,
    },
    /// The desktop name changed.
    DesktopName {
        /// New name (first 128 bytes, NULs removed).
        name: &'a [u8],
    },
    /// The server accepts QEMU extended key events ([`Client::qemu_key_event`]).
    QemuKeyEventsSupported,
    /// The keyboard LEDs (QEMU LED State pseudo-encoding): bit 0 ScrollLock, 1 NumLock,
    /// 2 CapsLock.
    LedState {
        /// The bits.
        state: u8,
    },
    /// SetColourMapEntries: entries follow as [`Payload::ColourMapEntries`].
    ColourMap {
        /// First index.
        first: u16,
        /// Number of entries.
        count: u16,
    },
    /// Bell.
    Bell,
    /// ServerCutText of this length starts; chunks follow as [`Payload::CutText`].
    CutText(CutTextLength),
    /// EndOfContinuousUpdates (continuous updates are off and supported).
    EndOfContinuousUpdates,
    /// ServerInit did not arrive in time; close.
    TimedOut,
}

/// Data lent from the input buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Payload<'i> {
    /// Part of a ServerCutText.
    CutText {
        /// Bytes.
        data: &'i [u8],
        /// Last chunk.
        last: bool,
    },
    /// Whole colour-map entries (`U16 r, g, b` each) starting at index `first`.
    ColourMapEntries {
        /// Index of the first entry in `data`.
        first: u16,
        /// 6 bytes per entry.
        data: &'i [u8],
    },
    /// Part of the cursor data announced by [`Event::Cursor`].
    CursorData {
        /// Offset of `data` inside the cursor data.
        offset: u32,
        /// Bytes.
        data: &'i [u8],
    },
    /// The server's answer to a fence we sent.
    FenceResponse {
        /// Flags.
        flags: u32,
        /// Our payload.
        data: &'i [u8],
    },
}

/// Where the client is in the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum State {
    /// Handshake.
    Handshake,
    /// Waiting for the driver to finish TLS and certificate validation.
    AwaitingTls,
    /// Waiting for credentials from the application.
    AwaitingCredentials,
    /// Normal message exchange.
    Running,
    /// Closed.
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Version,
    Security33,
    SecurityList,
    VncChallenge,
    NeedPassword,
    VencryptVersion,
    VencryptAck,
    VencryptSubtypes,
    VencryptTlsAck(VencryptSubtype),
    AwaitTls(VencryptSubtype),
    NeedPlain,
    SecurityResult,
    /// Reading `U32 len` of a failure reason.
    ReasonLength,
    ServerInit,
    Normal,
    Closed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    Failure,
    ServerInit,
    DesktopName,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RectDecoder {
    Raw {
        x: u16,
        y: u16,
    },
    RreHeader,
    Rre {
        remaining: u32,
    },
    Hextile(Hextile),
    #[cfg(feature = "alloc")]
    Zrle,
    #[cfg(feature = "alloc")]
    Tight,
}

/// A message being received in pieces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Msg {
    Idle,
    /// Inside a FramebufferUpdate, before the next rectangle header.
    Rects {
        remaining: u16,
    },
    Rect {
        remaining: u16,
        rect: Rect,
        encoding: Encoding,
        dec: RectDecoder,
    },
    Text {
        kind: TextKind,
        remaining: u32,
        after: u16,
    },
    CursorData {
        remaining: u16,
        offset: u32,
        total: u32,
    },
    Screens {
        remaining: u16,
        screens: u8,
    },
    ColourMap {
        next: u16,
        left: u16,
    },
    CutText {
        remaining: u32,
    },
}

/// What one step of `handle_input` did: `(consumed, lent payload)`; `(0, None)`: wait.
type Step<'i> = Result<(usize, Option<Payload<'i>>), Error>;

/// Most bytes, and messages, one step of `handle_input` queues (a fence answer is the largest).
const STEP_OUTPUT: usize = 128;
const STEP_MESSAGES: usize = 4;

// Features the server confirmed.
const HAVE_QEMU_KEY: u8 = 1;
const HAVE_CONTINUOUS: u8 = 2;
const HAVE_FENCE: u8 = 4;
const HAVE_EXT_DESKTOP: u8 = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ev {
    StartTls,
    Need(Credentials),
    NoCommon,
    Failed,
    Authenticated,
    ServerInit,
    UpdateBegin(u16),
    Rect(Rect, Encoding),
    UpdateEnd,
    DesktopSize(u16, u16),
    ExtDesktopSize {
        reason: u16,
        status: u16,
        width: u16,
        height: u16,
        screens: u8,
    },
    Screen(Screen),
    Cursor {
        hx: u16,
        hy: u16,
        w: u16,
        h: u16,
        len: u32,
    },
    DesktopName,
    QemuKey,
    LedState(u8),
    ColourMap(u16, u16),
    Bell,
    CutText(CutTextLength),
    EndOfContinuous,
    TimedOut,
}

/// The RFB client: one per connection.
#[derive(Debug)]
pub struct Client {
    config: ClientConfig,
    phase: Phase,
    version: Version,
    security: SecurityType,
    subtype: Option<VencryptSubtype>,
    challenge: [u8; CHALLENGE_LEN],
    out: OutQueue<352>,
    events: heapless::Deque<Ev, 4>,
    deadline: Option<Instant>,
    text: heapless::Vec<u8, 128>,
    offered: heapless::Vec<u8, 16>,
    offered_sub: heapless::Vec<u32, 8>,
    width: u16,
    height: u16,
    server_format: PixelFormat,
    format: PixelFormat,
    requested: u32,
    have: u8,
    msg: Msg,
    #[cfg(feature = "alloc")]
    zrle: Option<alloc::boxed::Box<zrle::ZrleDecoder>>,
    #[cfg(feature = "alloc")]
    tight: Option<alloc::boxed::Box<tight::TightDecoder>>,
    #[cfg(feature = "alloc")]
    jpeg: JpegSlot,
}

/// The client's JPEG decoder (for Tight), boxed twice to keep `Client` small (a thin pointer;
/// the default decoder is zero-sized, so only the outer box allocates, 16 bytes).
#[cfg(feature = "alloc")]
struct JpegSlot(Option<alloc::boxed::Box<alloc::boxed::Box<dyn crate::jpeg::JpegDecoder>>>);

#[cfg(feature = "alloc")]
impl core::fmt::Debug for JpegSlot {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(if self.0.is_some() {
            "JpegDecoder"
        } else {
            "no JPEG decoder"
        })
    }
}

#[cfg(feature = "alloc")]
impl JpegSlot {
    fn default_decoder() -> Self {
        #[cfg(feature = "jpeg-decode")]
        return Self(Some(alloc::boxed::Box::new(
            crate::jpeg::ZuneJpegDecoder::boxed(),
        )));
        #[cfg(not(feature = "jpeg-decode"))]
        Self(None)
    }
}

impl Client {
    /// A client for a new connection at `now`; it waits for the server's ProtocolVersion.
    pub fn new(config: ClientConfig, now: Instant) -> Self {
        Self {
            phase: Phase::Version,
            version: config.max_version,
            security: SecurityType::Invalid,
            subtype: None,
            challenge: [0; CHALLENGE_LEN],
            out: OutQueue::new(),
            events: heapless::Deque::new(),
            deadline: config.handshake_timeout.map(|d| now + d),
            text: heapless::Vec::new(),
            offered: heapless::Vec::new(),
            offered_sub: heapless::Vec::new(),
            width: 0,
            height: 0,
            server_format: PixelFormat::RGB888,
            format: PixelFormat::RGB888,
            requested: 0,
            have: 0,
            msg: Msg::Idle,
            #[cfg(feature = "alloc")]
            zrle: None,
            #[cfg(feature = "alloc")]
            tight: None,
            #[cfg(feature = "alloc")]
            jpeg: JpegSlot::default_decoder(),
            config,
        }
    }

    // ---- A. getters ----

    /// Where the connection is.
    pub fn state(&self) -> State {
        match self.phase {
            Phase::AwaitTls(_) => State::AwaitingTls,
            Phase::NeedPassword | Phase::NeedPlain => State::AwaitingCredentials,
            Phase::Normal => State::Running,
            Phase::Closed => State::Closed,
            _ => State::Handshake,
        }
    }
    /// The negotiated version.
    pub fn version(&self) -> Version {
        self.version
    }
    /// The chosen security type and VeNCrypt sub-type.
    pub fn security(&self) -> (SecurityType, Option<VencryptSubtype>) {
        (self.security, self.subtype)
    }
    /// Current framebuffer size (changes with DesktopSize/ExtendedDesktopSize).
    pub fn framebuffer_size(&self) -> (u16, u16) {
        (self.width, self.height)
    }
    /// The pixel format pixels arrive in.
    pub fn pixel_format(&self) -> PixelFormat {
        self.format
    }
    /// The server's native pixel format (from ServerInit).
    pub fn server_pixel_format(&self) -> PixelFormat {
        self.server_format
    }

    // ---- B. handlers ----

    /// Feeds bytes from the server (plaintext) without a framebuffer: pixel data is parsed and
    /// checked but not stored. Same as [`handle_input_fb`](Self::handle_input_fb) with
    /// [`FramebufferMut::empty`].
    pub fn handle_input<'i>(&mut self, input: &'i [u8]) -> Result<Progress<Payload<'i>>, Error> {
        self.handle_input_fb(input, &mut FramebufferMut::empty())
    }

    /// Feeds bytes from the server (plaintext) and decodes rectangles into `fb` (any valid
    /// true-colour format, or the wire format itself for colour-mapped sessions), clipped to
    /// its size.
    ///
    /// Consumes whole protocol units and stops after an event, a lent payload or the TLS switch
    /// point; call again with the unconsumed rest after draining. Incomplete input consumes
    /// nothing and is kept by the caller, never copied here.
    pub fn handle_input_fb<'i>(
        &mut self,
        input: &'i [u8],
        fb: &mut FramebufferMut<'_>,
    ) -> Result<Progress<Payload<'i>>, Error> {
        match self.phase {
            Phase::Closed => return Err(Error::Closed),
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
            let before = self.events.len();
            match self.step(&input[consumed..], fb) {
                Ok((0, None)) => break,
                Ok((n, payload)) => {
                    consumed += n;
                    if payload.is_some() {
                        return Ok(Progress::new(consumed, payload));
                    }
                }
                Err(e) => {
                    self.phase = Phase::Closed;
                    return Err(e);
                }
            }
            if self.events.len() != before
                || matches!(self.phase, Phase::AwaitTls(_) | Phase::Closed)
            {
                break;
            }
        }
        Ok(Progress::new(consumed, None))
    }

    /// The server closed the connection. A refusal without (or with a cut) reason — QEMU's RFB
    /// 3.3 refusal is just `U32 0` — is reported as [`Event::SecurityFailed`] and
    /// [`Error::AuthenticationFailed`].
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        let failure = matches!(self.phase, Phase::ReasonLength)
            || matches!(
                self.msg,
                Msg::Text {
                    kind: TextKind::Failure,
                    ..
                }
            );
        let clean =
            self.phase == Phase::Closed || (self.phase == Phase::Normal && self.msg == Msg::Idle);
        self.phase = Phase::Closed;
        if failure {
            self.msg = Msg::Idle;
            self.push(Ev::Failed);
            return Err(Error::AuthenticationFailed);
        }
        if clean {
            Ok(())
        } else {
            Err(Error::Protocol(ProtocolError::UnexpectedEof))
        }
    }

    /// Tells the client the time.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.deadline
            && now >= d
            && !matches!(self.phase, Phase::Normal | Phase::Closed)
        {
            self.phase = Phase::Closed;
            self.deadline = None;
            self.push(Ev::TimedOut);
        }
    }

    // ---- C. commands: in handshake.rs (TLS, credentials) and normal.rs ----

    // ---- D. polls ----

    /// Writes queued messages into `buf`.
    #[must_use = "the output must be sent"]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<Transmit>, InsufficientSize> {
        self.out.pop_into(buf)
    }

    /// The next event.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event<'_>> {
        let e = self.events.pop_front()?;
        Some(match e {
            Ev::StartTls => Event::StartTls,
            Ev::Need(c) => Event::NeedCredentials(c),
            Ev::NoCommon => Event::NoCommonSecurity {
                types: &self.offered,
                subtypes: &self.offered_sub,
            },
            Ev::Failed => Event::SecurityFailed { reason: &self.text },
            Ev::Authenticated => Event::Authenticated,
            Ev::ServerInit => Event::ServerInit {
                width: self.width,
                height: self.height,
                format: self.server_format,
                name: &self.text,
            },
            Ev::UpdateBegin(n) => Event::UpdateBegin { rects: n },
            Ev::Rect(rect, encoding) => Event::Rect { rect, encoding },
            Ev::UpdateEnd => Event::UpdateEnd,
            Ev::DesktopSize(width, height) => Event::DesktopSize { width, height },
            Ev::ExtDesktopSize {
                reason,
                status,
                width,
                height,
                screens,
            } => Event::ExtendedDesktopSize {
                reason,
                status,
                width,
                height,
                screens,
            },
            Ev::Screen(s) => Event::Screen(s),
            Ev::Cursor { hx, hy, w, h, len } => Event::Cursor {
                hotspot_x: hx,
                hotspot_y: hy,
                width: w,
                height: h,
                data_len: len,
            },
            Ev::DesktopName => Event::DesktopName { name: &self.text },
            Ev::QemuKey => Event::QemuKeyEventsSupported,
            Ev::LedState(state) => Event::LedState { state },
            Ev::ColourMap(first, count) => Event::ColourMap { first, count },
            Ev::Bell => Event::Bell,
            Ev::CutText(l) => Event::CutText(l),
            Ev::EndOfContinuous => Event::EndOfContinuousUpdates,
            Ev::TimedOut => Event::TimedOut,
        })
    }

    /// When to call [`handle_timeout`](Self::handle_timeout).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        self.deadline
            .filter(|_| !matches!(self.phase, Phase::Normal | Phase::Closed))
    }

    // ---- internals ----

    fn push(&mut self, e: Ev) {
        let _ = self.events.push_back(e);
    }

    /// Stores string bytes (NULs stripped, first 128 kept).
    fn keep_text(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b != 0 && self.text.push(b).is_err() {
                break;
            }
        }
    }

    /// One protocol unit: `(consumed, payload)`; `(0, None)` means more input is needed. The
    /// phase's handler decides, and makes the transition, as it consumes the unit.
    fn step<'i>(&mut self, input: &'i [u8], fb: &mut FramebufferMut<'_>) -> Step<'i> {
        match self.phase {
            Phase::Version => self.on_version(input),
            Phase::Security33 => self.on_security_3_3(input),
            Phase::SecurityList => self.on_security_list(input),
            Phase::VncChallenge => self.on_vnc_challenge(input),
            Phase::VencryptVersion => self.on_vencrypt_version(input),
            Phase::VencryptAck => self.on_vencrypt_ack(input),
            Phase::VencryptSubtypes => self.on_vencrypt_subtypes(input),
            Phase::VencryptTlsAck(sub) => self.on_vencrypt_tls_ack(input, sub),
            Phase::SecurityResult => self.on_security_result(input),
            Phase::ReasonLength => self.on_reason_length(input),
            Phase::ServerInit => self.on_server_init(input),
            Phase::Normal => self.on_message(input, fb),
            // Waiting for the application or the TLS layer, or over: nothing is read.
            Phase::NeedPassword | Phase::NeedPlain | Phase::AwaitTls(_) | Phase::Closed => {
                Ok((0, None))
            }
        }
    }

    fn finish_text(&mut self, kind: TextKind, after: u16) -> Result<(), Error> {
        match kind {
            TextKind::Failure => {
                self.msg = Msg::Idle;
                self.phase = Phase::Closed;
                self.push(Ev::Failed);
                return Err(Error::AuthenticationFailed);
            }
            TextKind::ServerInit => {
                self.msg = Msg::Idle;
                self.push(Ev::ServerInit);
            }
            TextKind::DesktopName => {
                self.push(Ev::DesktopName);
                self.end_rect(after, None);
            }
        }
        Ok(())
    }
}
