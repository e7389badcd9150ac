//! The RFB client state machine.

mod decode;
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
}

impl Default for ClientLimits {
    fn default() -> Self {
        Self {
            max_cut_text: 1 << 20,
            max_cursor: 256,
            max_string: 1 << 16,
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

    // ---- C. commands: handshake ----

    /// The driver finished the TLS handshake **and validated the server certificate**; the
    /// sub-authentication continues over TLS.
    pub fn tls_established(&mut self) -> Result<(), CommandError> {
        let Phase::AwaitTls(sub) = self.phase else {
            return Err(CommandError::InvalidState);
        };
        self.start_sub_auth(sub);
        Ok(())
    }

    /// Answers [`Credentials::Password`] (only the first 8 bytes count).
    pub fn send_password(&mut self, password: &[u8]) -> Result<(), CommandError> {
        if self.phase != Phase::NeedPassword {
            return Err(CommandError::InvalidState);
        }
        let r = vnc_response(password, &self.challenge);
        self.out.push(CHALLENGE_LEN, |b| b.copy_from_slice(&r))?;
        self.phase = Phase::SecurityResult;
        Ok(())
    }

    /// Answers [`Credentials::Plain`]; username and password together may be 344 bytes.
    pub fn send_plain_credentials(
        &mut self,
        username: &[u8],
        password: &[u8],
    ) -> Result<(), CommandError> {
        if self.phase != Phase::NeedPlain {
            return Err(CommandError::InvalidState);
        }
        let c = PlainCredentialsRepr { username, password };
        if c.buffer_len() > self.out.free() {
            return Err(CommandError::InvalidArgument);
        }
        self.out.push(c.buffer_len(), |b| c.emit(b))?;
        self.phase = Phase::SecurityResult;
        Ok(())
    }

    // ---- C. commands: session ----

    fn running(&self) -> Result<(), CommandError> {
        if self.phase == Phase::Normal {
            Ok(())
        } else {
            Err(CommandError::InvalidState)
        }
    }

    /// SetPixelFormat: later updates arrive in `format` (do not have an update request
    /// outstanding, as the spec says).
    pub fn set_pixel_format(&mut self, format: PixelFormat) -> Result<(), CommandError> {
        self.running()?;
        if !format.is_valid() {
            return Err(CommandError::InvalidArgument);
        }
        let m = SetPixelFormatRepr { format };
        self.out.push(SetPixelFormatRepr::LEN, |b| m.emit(b))?;
        self.format = format;
        Ok(())
    }

    /// SetEncodings, in order of preference (at most 90). Only encodings this client decodes are
    /// allowed (Raw, CopyRect, RRE, Hextile, ZRLE with `alloc`, and the pseudo-encodings of
    /// [`Encoding`] it handles, plus compression levels).
    pub fn set_encodings(&mut self, encodings: &[Encoding]) -> Result<(), CommandError> {
        self.running()?;
        let mut bits = 0;
        for e in encodings {
            bits |= e.bit().ok_or(CommandError::InvalidArgument)?;
        }
        let n = SetEncodingsHeaderRepr::LEN + 4 * encodings.len();
        if encodings.len() > 90 {
            return Err(CommandError::InvalidArgument);
        }
        self.out.push(n, |b| {
            SetEncodingsHeaderRepr {
                count: encodings.len() as u16,
            }
            .emit(b);
            for (i, e) in encodings.iter().enumerate() {
                put32(b, 4 + 4 * i, i32::from(*e) as u32);
            }
        })?;
        self.requested = bits;
        Ok(())
    }

    /// FramebufferUpdateRequest.
    pub fn request_update(&mut self, incremental: bool, rect: Rect) -> Result<(), CommandError> {
        self.running()?;
        let m = FramebufferUpdateRequestRepr { incremental, rect };
        self.out
            .push(FramebufferUpdateRequestRepr::LEN, |b| m.emit(b))
    }

    /// KeyEvent.
    pub fn key_event(&mut self, down: bool, keysym: u32) -> Result<(), CommandError> {
        self.running()?;
        let m = KeyEventRepr { down, keysym };
        self.out.push(KeyEventRepr::LEN, |b| m.emit(b))
    }

    /// QEMU extended key event (after [`Event::QemuKeyEventsSupported`]).
    pub fn qemu_key_event(
        &mut self,
        down: bool,
        keysym: u32,
        keycode: u32,
    ) -> Result<(), CommandError> {
        self.running()?;
        if self.have & HAVE_QEMU_KEY == 0 {
            return Err(CommandError::InvalidState);
        }
        let m = QemuKeyEventRepr {
            down,
            keysym,
            keycode,
        };
        self.out.push(QemuKeyEventRepr::LEN, |b| m.emit(b))
    }

    /// PointerEvent.
    pub fn pointer_event(&mut self, buttons: u8, x: u16, y: u16) -> Result<(), CommandError> {
        self.running()?;
        let m = PointerEventRepr { buttons, x, y };
        self.out.push(PointerEventRepr::LEN, |b| m.emit(b))
    }

    /// ClientCutText: the header is queued and `poll_transmit` asks the application to send the
    /// `len` bytes itself. `Extended` needs the ExtendedClipboard pseudo-encoding.
    pub fn send_cut_text(&mut self, len: CutTextLength) -> Result<(), CommandError> {
        self.running()?;
        let extended = self.requested & bits::EXT_CLIPBOARD != 0;
        let t = ClientMessageType::ClientCutText.into();
        shared::queue_cut_text(&mut self.out, t, len, extended)
    }

    /// EnableContinuousUpdates (after [`Event::EndOfContinuousUpdates`] showed support).
    pub fn enable_continuous_updates(
        &mut self,
        enable: bool,
        rect: Rect,
    ) -> Result<(), CommandError> {
        self.running()?;
        if self.have & HAVE_CONTINUOUS == 0 {
            return Err(CommandError::InvalidState);
        }
        let m = EnableContinuousUpdatesRepr { enable, rect };
        self.out
            .push(EnableContinuousUpdatesRepr::LEN, |b| m.emit(b))
    }

    /// ClientFence (after the server sent a fence).
    pub fn send_fence(&mut self, flags: u32, payload: &[u8]) -> Result<(), CommandError> {
        self.running()?;
        if self.have & HAVE_FENCE == 0 {
            return Err(CommandError::InvalidState);
        }
        shared::queue_fence(&mut self.out, flags, payload)
    }

    /// SetDesktopSize (after an ExtendedDesktopSize arrived); at most 16 screens.
    pub fn set_desktop_size(
        &mut self,
        width: u16,
        height: u16,
        screens: &[Screen],
    ) -> Result<(), CommandError> {
        self.running()?;
        if self.have & HAVE_EXT_DESKTOP == 0 {
            return Err(CommandError::InvalidState);
        }
        if screens.is_empty() || screens.len() > 16 {
            return Err(CommandError::InvalidArgument);
        }
        let h = SetDesktopSizeHeaderRepr {
            width,
            height,
            screens: screens.len() as u8,
        };
        self.out
            .push(SetDesktopSizeHeaderRepr::LEN + 16 * screens.len(), |b| {
                h.emit(b);
                for (i, s) in screens.iter().enumerate() {
                    s.emit(&mut b[8 + 16 * i..]);
                }
            })
    }

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

    fn start_sub_auth(&mut self, sub: VencryptSubtype) {
        match sub.sub_auth() {
            Some(SubAuth::None) => self.phase = Phase::SecurityResult,
            Some(SubAuth::Vnc) => self.phase = Phase::VncChallenge,
            _ => {
                self.phase = Phase::NeedPlain;
                self.push(Ev::Need(Credentials::Plain));
            }
        }
    }

    fn authenticated(&mut self) {
        let m = ClientInitRepr {
            shared: self.config.shared,
        };
        self.out.push_reserved(ClientInitRepr::LEN, |b| m.emit(b));
        self.phase = Phase::ServerInit;
        self.push(Ev::Authenticated);
    }

    /// Stores string bytes (NULs stripped, first 128 kept).
    fn keep_text(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if b != 0 && self.text.push(b).is_err() {
                break;
            }
        }
    }

    fn step<'i>(
        &mut self,
        input: &'i [u8],
        fb: &mut FramebufferMut<'_>,
    ) -> Result<(usize, Option<Payload<'i>>), Error> {
        use ProtocolError as P;
        match self.phase {
            Phase::Version => {
                let v = complete_or_wait!(
                    ProtocolVersionRepr::parse(input),
                    malformed => P::MalformedVersion
                );
                let sv = Version::from_numbers(v.major, v.minor)
                    .ok_or(Error::Protocol(P::UnsupportedVersion))?;
                self.version = sv.min(self.config.max_version);
                let r = ProtocolVersionRepr::of(self.version);
                self.out
                    .push_reserved(ProtocolVersionRepr::LEN, |b| r.emit(b));
                self.phase = if self.version == Version::V3_3 {
                    Phase::Security33
                } else {
                    Phase::SecurityList
                };
                Ok((ProtocolVersionRepr::LEN, None))
            }
            Phase::Security33 => {
                if input.len() < 4 {
                    return Ok((0, None));
                }
                let t = be32(input, 0);
                match t {
                    0 => self.phase = Phase::ReasonLength,
                    1 | 2 => {
                        let t = SecurityType::from(t as u8);
                        self.offered.clear();
                        let _ = self.offered.push(t.into());
                        if !self.config.security_types.contains(&t) {
                            self.push(Ev::NoCommon);
                            return Err(P::NoAcceptableSecurityType.into());
                        }
                        self.security = t;
                        if t == SecurityType::None {
                            self.authenticated();
                        } else {
                            self.phase = Phase::VncChallenge;
                        }
                    }
                    _ => return Err(P::InvalidSecurityType.into()),
                }
                Ok((4, None))
            }
            Phase::SecurityList => {
                let list = complete_or_wait!(
                    SecurityTypesRepr::parse(input),
                    malformed => P::InvalidSecurityType
                );
                let n = list.buffer_len();
                if list.types.is_empty() {
                    self.phase = Phase::ReasonLength;
                    return Ok((n, None));
                }
                self.offered.clear();
                for &t in list.types.iter().take(16) {
                    let _ = self.offered.push(t);
                }
                let choice = self.config.security_types.iter().copied().find(|t| {
                    matches!(
                        t,
                        SecurityType::None | SecurityType::VncAuth | SecurityType::VeNCrypt
                    ) && list.types.contains(&u8::from(*t))
                });
                let Some(t) = choice else {
                    self.push(Ev::NoCommon);
                    if list.types == [u8::from(SecurityType::Tls)] {
                        return Err(P::AnonymousTlsUnsupported.into());
                    }
                    return Err(P::NoAcceptableSecurityType.into());
                };
                self.out.push_reserved(1, |b| b[0] = t.into());
                self.security = t;
                match t {
                    SecurityType::None => {
                        if self.version >= Version::V3_8 {
                            self.phase = Phase::SecurityResult;
                        } else {
                            self.authenticated();
                        }
                    }
                    SecurityType::VncAuth => self.phase = Phase::VncChallenge,
                    _ => self.phase = Phase::VencryptVersion,
                }
                Ok((n, None))
            }
            Phase::VncChallenge => {
                if input.len() < CHALLENGE_LEN {
                    return Ok((0, None));
                }
                self.challenge.copy_from_slice(&input[..CHALLENGE_LEN]);
                self.phase = Phase::NeedPassword;
                self.push(Ev::Need(Credentials::Password));
                Ok((CHALLENGE_LEN, None))
            }
            Phase::NeedPassword | Phase::NeedPlain | Phase::AwaitTls(_) | Phase::Closed => {
                Ok((0, None))
            }
            Phase::VencryptVersion => {
                let v = complete_or_wait!(
                    VencryptVersionRepr::parse(input),
                    malformed => P::MalformedVencrypt
                );
                if (v.major, v.minor) < (0, 2) {
                    return Err(P::VencryptVersion.into());
                }
                let ours = VencryptVersionRepr::V0_2;
                self.out.push_reserved(2, |b| ours.emit(b));
                self.phase = Phase::VencryptAck;
                Ok((2, None))
            }
            Phase::VencryptAck => {
                let Some(&ack) = input.first() else {
                    return Ok((0, None));
                };
                if ack != vencrypt_ack::VERSION_OK {
                    return Err(P::VencryptVersion.into());
                }
                self.phase = Phase::VencryptSubtypes;
                Ok((1, None))
            }
            Phase::VencryptSubtypes => {
                let list = complete_or_wait!(
                    VencryptSubtypesRepr::parse(input),
                    malformed => P::MalformedVencrypt
                );
                if list.is_empty() {
                    return Err(P::MalformedVencrypt.into());
                }
                self.offered_sub.clear();
                for s in list.iter().take(8) {
                    let _ = self.offered_sub.push(s.into());
                }
                let choice = self
                    .config
                    .vencrypt_subtypes
                    .iter()
                    .copied()
                    .find(|s| s.is_supported() && list.iter().any(|o| o == *s));
                let Some(sub) = choice else {
                    self.push(Ev::NoCommon);
                    if list.iter().all(|s| s.is_anonymous_tls()) {
                        return Err(P::AnonymousTlsUnsupported.into());
                    }
                    return Err(P::NoAcceptableSecurityType.into());
                };
                self.out.push_reserved(4, |b| put32(b, 0, sub.into()));
                self.subtype = Some(sub);
                if sub.uses_tls() {
                    self.phase = Phase::VencryptTlsAck(sub);
                } else {
                    self.start_sub_auth(sub);
                }
                Ok((VencryptSubtypesRepr::buffer_len_for(list.len()), None))
            }
            Phase::VencryptTlsAck(sub) => {
                let Some(&ack) = input.first() else {
                    return Ok((0, None));
                };
                if ack != vencrypt_ack::SUBTYPE_OK {
                    return Err(P::VencryptRefused.into());
                }
                self.phase = Phase::AwaitTls(sub);
                self.push(Ev::StartTls);
                Ok((1, None))
            }
            Phase::SecurityResult => {
                if input.len() < 4 {
                    return Ok((0, None));
                }
                match SecurityResult::from(be32(input, 0)) {
                    SecurityResult::Ok => self.authenticated(),
                    SecurityResult::Failed | SecurityResult::TooManyAttempts => {
                        if self.version >= Version::V3_8 {
                            self.phase = Phase::ReasonLength;
                        } else {
                            self.phase = Phase::Closed;
                            self.push(Ev::Failed);
                            return Err(Error::AuthenticationFailed);
                        }
                    }
                    SecurityResult::Unknown(_) => return Err(P::InvalidSecurityResult.into()),
                }
                Ok((4, None))
            }
            Phase::ReasonLength => {
                if input.len() < 4 {
                    return Ok((0, None));
                }
                let len = be32(input, 0);
                if len > self.config.limits.max_string {
                    return Err(P::StringTooLong.into());
                }
                self.text.clear();
                self.phase = Phase::Normal;
                self.msg = Msg::Text {
                    kind: TextKind::Failure,
                    remaining: len,
                    after: 0,
                };
                if len == 0 {
                    return self.finish_text(TextKind::Failure, 0).map(|_| (4, None));
                }
                Ok((4, None))
            }
            Phase::ServerInit => {
                let h = complete_or_wait!(
                    ServerInitRepr::parse(input),
                    malformed => P::InvalidPixelFormat
                );
                if !h.format.is_valid() {
                    return Err(P::InvalidPixelFormat.into());
                }
                if h.name_len > self.config.limits.max_string {
                    return Err(P::StringTooLong.into());
                }
                self.width = h.width;
                self.height = h.height;
                self.server_format = h.format;
                self.format = h.format;
                self.text.clear();
                self.phase = Phase::Normal;
                self.deadline = None;
                self.msg = Msg::Text {
                    kind: TextKind::ServerInit,
                    remaining: h.name_len,
                    after: 0,
                };
                if h.name_len == 0 {
                    self.finish_text(TextKind::ServerInit, 0)?;
                }
                Ok((ServerInitRepr::LEN, None))
            }
            Phase::Normal => self.step_normal(input, fb),
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

    /// After a rectangle: the next header, or the end of the update.
    fn end_rect(&mut self, remaining: u16, done: Option<(Rect, Encoding)>) {
        if let Some((r, e)) = done {
            self.push(Ev::Rect(r, e));
        }
        if remaining == 0 {
            self.msg = Msg::Idle;
            self.push(Ev::UpdateEnd);
        } else {
            self.msg = Msg::Rects { remaining };
        }
    }

    /// The framebuffer seen through the wire format.
    fn sink<'a, 'f>(&self, fb: &'a mut FramebufferMut<'f>) -> Result<Sink<'a, 'f>, Error> {
        let tr = if fb.width() == 0 || fb.height() == 0 {
            None
        } else {
            let tr = Translator::new(&self.format, &fb.format());
            Some(tr.ok_or(Error::UnusableFramebuffer)?)
        };
        Ok(Sink {
            fb,
            tr,
            bpp: self.format.bytes_per_pixel(),
        })
    }

    fn step_normal<'i>(
        &mut self,
        input: &'i [u8],
        fb: &mut FramebufferMut<'_>,
    ) -> Result<(usize, Option<Payload<'i>>), Error> {
        use ProtocolError as P;
        match self.msg {
            Msg::Idle => {}
            Msg::Rects { remaining } => return self.rect_header(input, remaining),
            Msg::Rect {
                remaining,
                rect,
                encoding,
                dec,
            } => return self.rect_data(input, fb, remaining, rect, encoding, dec),
            Msg::Text {
                kind,
                remaining,
                after,
            } => {
                let Some((data, remaining)) = shared::body_chunk(input, remaining) else {
                    return Ok((0, None));
                };
                self.keep_text(data);
                if remaining == 0 {
                    self.finish_text(kind, after)?;
                } else {
                    self.msg = Msg::Text {
                        kind,
                        remaining,
                        after,
                    };
                }
                return Ok((data.len(), None));
            }
            Msg::CursorData {
                remaining,
                offset,
                total,
            } => {
                let Some((data, left)) = shared::body_chunk(input, total - offset) else {
                    return Ok((0, None));
                };
                if left == 0 {
                    self.end_rect(remaining, None);
                } else {
                    self.msg = Msg::CursorData {
                        remaining,
                        offset: total - left,
                        total,
                    };
                }
                return Ok((data.len(), Some(Payload::CursorData { offset, data })));
            }
            Msg::Screens { remaining, screens } => {
                let s =
                    complete_or_wait!(Screen::parse(input), malformed => P::InvalidScreenLayout);
                self.push(Ev::Screen(s));
                if screens > 1 {
                    self.msg = Msg::Screens {
                        remaining,
                        screens: screens - 1,
                    };
                } else {
                    self.end_rect(remaining, None);
                }
                return Ok((Screen::LEN, None));
            }
            Msg::ColourMap { next, left } => {
                let n = (input.len() / 6).min(usize::from(left));
                if n == 0 {
                    return Ok((0, None));
                }
                let left2 = left - n as u16;
                self.msg = if left2 == 0 {
                    Msg::Idle
                } else {
                    Msg::ColourMap {
                        next: next.wrapping_add(n as u16),
                        left: left2,
                    }
                };
                return Ok((
                    6 * n,
                    Some(Payload::ColourMapEntries {
                        first: next,
                        data: &input[..6 * n],
                    }),
                ));
            }
            Msg::CutText { remaining } => {
                let Some((data, remaining)) = shared::body_chunk(input, remaining) else {
                    return Ok((0, None));
                };
                self.msg = if remaining == 0 {
                    Msg::Idle
                } else {
                    Msg::CutText { remaining }
                };
                let last = remaining == 0;
                return Ok((data.len(), Some(Payload::CutText { data, last })));
            }
        }
        let Some(&t) = input.first() else {
            return Ok((0, None));
        };
        trace!("rfb client: message type {}", t);
        match ServerMessageType::from(t) {
            ServerMessageType::FramebufferUpdate => {
                let h = complete_or_wait!(FramebufferUpdateRepr::parse(input), malformed => P::Malformed);
                self.push(Ev::UpdateBegin(h.rects));
                if h.rects == 0 {
                    self.push(Ev::UpdateEnd);
                } else {
                    self.msg = Msg::Rects { remaining: h.rects };
                }
                Ok((FramebufferUpdateRepr::LEN, None))
            }
            ServerMessageType::SetColourMapEntries => {
                let h = complete_or_wait!(
                    SetColourMapEntriesRepr::parse(input),
                    malformed => P::ColourMapOutOfRange
                );
                if u32::from(h.first) + u32::from(h.count) > 65536 {
                    return Err(P::ColourMapOutOfRange.into());
                }
                if h.count > 0 {
                    self.msg = Msg::ColourMap {
                        next: h.first,
                        left: h.count,
                    };
                }
                self.push(Ev::ColourMap(h.first, h.count));
                Ok((SetColourMapEntriesRepr::LEN, None))
            }
            ServerMessageType::Bell => {
                self.push(Ev::Bell);
                Ok((1, None))
            }
            ServerMessageType::ServerCutText => {
                let extended = self.requested & bits::EXT_CLIPBOARD != 0;
                let max = self.config.limits.max_cut_text;
                let Some(len) = shared::cut_text_header(input, extended, max)? else {
                    return Ok((0, None));
                };
                if !len.is_empty() {
                    self.msg = Msg::CutText {
                        remaining: len.len(),
                    };
                }
                self.push(Ev::CutText(len));
                Ok((CutTextHeaderRepr::LEN, None))
            }
            ServerMessageType::EndOfContinuousUpdates => {
                self.have |= HAVE_CONTINUOUS;
                self.push(Ev::EndOfContinuous);
                Ok((1, None))
            }
            ServerMessageType::ServerFence => {
                let (n, response) = shared::receive_fence(input, &mut self.out)?;
                if n > 0 {
                    self.have |= HAVE_FENCE;
                }
                Ok((
                    n,
                    response.map(|(flags, data)| Payload::FenceResponse { flags, data }),
                ))
            }
            ServerMessageType::Qemu => {
                if input.len() < 2 {
                    return Ok((0, None));
                }
                Err(P::UnknownQemuMessage(input[1]).into())
            }
            ServerMessageType::Unknown(t) => Err(P::UnknownMessageType(t).into()),
        }
    }

    fn rect_header<'i>(
        &mut self,
        input: &'i [u8],
        remaining: u16,
    ) -> Result<(usize, Option<Payload<'i>>), Error> {
        use ProtocolError as P;
        let h = complete_or_wait!(RectHeaderRepr::parse(input), malformed => P::Malformed);
        let n = RectHeaderRepr::LEN;
        let r = h.rect;
        // 65535 with LastRect negotiated means "until LastRect".
        const UNTIL_LAST: u16 = FramebufferUpdateRepr::UNTIL_LAST_RECT;
        let until_last = remaining == UNTIL_LAST && self.requested & bits::LAST_RECT != 0;
        let remaining = if until_last {
            UNTIL_LAST
        } else {
            remaining - 1
        };
        let bit = h
            .encoding
            .bit()
            .ok_or(Error::Protocol(P::UnrequestedEncoding(h.encoding.into())))?;
        if bit != 0 && self.requested & bit == 0 {
            return Err(P::UnrequestedEncoding(h.encoding.into()).into());
        }
        let pixel_rect = |dec: RectDecoder| Msg::Rect {
            remaining,
            rect: r,
            encoding: h.encoding,
            dec,
        };
        match h.encoding {
            Encoding::Raw
            | Encoding::Rre
            | Encoding::Hextile
            | Encoding::Zrle
            | Encoding::CopyRect => {
                if !r.fits_in(self.width, self.height) {
                    return Err(P::RectangleOutOfBounds.into());
                }
                if r.is_empty()
                    && h.encoding != Encoding::CopyRect
                    && h.encoding != Encoding::Zrle
                    && h.encoding != Encoding::Rre
                {
                    self.end_rect(remaining, Some((r, h.encoding)));
                    return Ok((n, None));
                }
                self.msg = pixel_rect(match h.encoding {
                    Encoding::Raw => RectDecoder::Raw { x: 0, y: 0 },
                    Encoding::Rre => RectDecoder::RreHeader,
                    Encoding::Hextile => RectDecoder::Hextile(Hextile::new()),
                    #[cfg(feature = "alloc")]
                    Encoding::Zrle => RectDecoder::Zrle,
                    // CopyRect reuses the RRE-header slot for its 4 bytes (see rect_data).
                    _ => RectDecoder::Raw {
                        x: u16::MAX,
                        y: u16::MAX,
                    },
                });
                #[cfg(feature = "alloc")]
                if h.encoding == Encoding::Zrle {
                    let bpp = self.format.bytes_per_pixel();
                    let cp = crate::pixel::cpixel_layout(&self.format);
                    self.zrle
                        .get_or_insert_with(|| alloc::boxed::Box::new(zrle::ZrleDecoder::new()))
                        .start(r, bpp, cp);
                }
                Ok((n, None))
            }
            Encoding::LastRect => {
                self.end_rect(0, None);
                Ok((n, None))
            }
            Encoding::DesktopSize => {
                self.width = r.width;
                self.height = r.height;
                self.push(Ev::DesktopSize(r.width, r.height));
                self.end_rect(remaining, None);
                Ok((n, None))
            }
            Encoding::ExtendedDesktopSize => {
                if input.len() < n + ExtendedDesktopSizeRepr::LEN {
                    return Ok((0, None));
                }
                let e = ExtendedDesktopSizeRepr::parse(&input[n..])
                    .map_err(|_| Error::Protocol(P::InvalidScreenLayout))?;
                let (reason, status) = (r.x, r.y);
                if reason != desktop_size::REASON_THIS_CLIENT || status == desktop_size::STATUS_OK {
                    self.width = r.width;
                    self.height = r.height;
                }
                self.have |= HAVE_EXT_DESKTOP;
                self.push(Ev::ExtDesktopSize {
                    reason,
                    status,
                    width: r.width,
                    height: r.height,
                    screens: e.screens,
                });
                if e.screens == 0 {
                    self.end_rect(remaining, None);
                } else {
                    self.msg = Msg::Screens {
                        remaining,
                        screens: e.screens,
                    };
                }
                Ok((n + ExtendedDesktopSizeRepr::LEN, None))
            }
            Encoding::Cursor => {
                let max = self.config.limits.max_cursor;
                if r.width > max || r.height > max {
                    return Err(P::CursorTooLarge.into());
                }
                let bpp = self.format.bytes_per_pixel() as u64;
                let len = u64::from(r.width) * u64::from(r.height) * bpp
                    + cursor_mask_len(r.width, r.height) as u64;
                let len = u32::try_from(len).map_err(|_| Error::Protocol(P::CursorTooLarge))?;
                self.push(Ev::Cursor {
                    hx: r.x,
                    hy: r.y,
                    w: r.width,
                    h: r.height,
                    len,
                });
                if len == 0 {
                    self.end_rect(remaining, None);
                } else {
                    self.msg = Msg::CursorData {
                        remaining,
                        offset: 0,
                        total: len,
                    };
                }
                Ok((n, None))
            }
            Encoding::DesktopName => {
                if input.len() < n + 4 {
                    return Ok((0, None));
                }
                let len = be32(input, n);
                if len > self.config.limits.max_string {
                    return Err(P::StringTooLong.into());
                }
                self.text.clear();
                if len == 0 {
                    self.finish_text(TextKind::DesktopName, remaining)?;
                } else {
                    self.msg = Msg::Text {
                        kind: TextKind::DesktopName,
                        remaining: len,
                        after: remaining,
                    };
                }
                Ok((n + 4, None))
            }
            Encoding::QemuExtendedKeyEvent => {
                self.have |= HAVE_QEMU_KEY;
                self.push(Ev::QemuKey);
                self.end_rect(remaining, None);
                Ok((n, None))
            }
            e => Err(P::UnrequestedEncoding(e.into()).into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rect_data<'i>(
        &mut self,
        input: &'i [u8],
        fb: &mut FramebufferMut<'_>,
        remaining: u16,
        r: Rect,
        encoding: Encoding,
        dec: RectDecoder,
    ) -> Result<(usize, Option<Payload<'i>>), Error> {
        use ProtocolError as P;
        let bpp = self.format.bytes_per_pixel();
        let mut sink = self.sink(fb)?;
        let (n, finished, dec) = match (encoding, dec) {
            (Encoding::CopyRect, _) => {
                let c = complete_or_wait!(
                    CopyRectRepr::parse(input),
                    malformed => P::CopyRectSourceOutOfBounds
                );
                let src = Rect::new(c.src_x, c.src_y, r.width, r.height);
                if !src.fits_in(self.width, self.height) {
                    return Err(P::CopyRectSourceOutOfBounds.into());
                }
                sink.copy(r, c.src_x, c.src_y);
                (CopyRectRepr::LEN, true, dec)
            }
            (_, RectDecoder::Raw { mut x, mut y }) => {
                let (n, done) = decode::raw(&r, &mut x, &mut y, input, &mut sink);
                (n, done, RectDecoder::Raw { x, y })
            }
            (_, RectDecoder::RreHeader) => {
                let Some((count, bg)) = rre::parse_header(input, bpp) else {
                    return Ok((0, None));
                };
                if count > r.area() {
                    return Err(P::TooManySubrectangles.into());
                }
                sink.fill(r, bg);
                let n = rre::header_len(bpp);
                (n, count == 0, RectDecoder::Rre { remaining: count })
            }
            (_, RectDecoder::Rre { mut remaining }) => {
                let (n, done) = decode::rre(&r, &mut remaining, input, &mut sink)?;
                (n, done, RectDecoder::Rre { remaining })
            }
            (_, RectDecoder::Hextile(mut h)) => {
                let (n, done) = h.decode(&r, input, &mut sink)?;
                (n, done, RectDecoder::Hextile(h))
            }
            #[cfg(feature = "alloc")]
            (_, RectDecoder::Zrle) => {
                // `rect_header` made the decoder and started the rectangle.
                let z = self
                    .zrle
                    .get_or_insert_with(|| alloc::boxed::Box::new(zrle::ZrleDecoder::new()));
                let (n, done) = z.decode(input, &mut sink)?;
                (n, done, RectDecoder::Zrle)
            }
        };
        if finished {
            self.end_rect(remaining, Some((r, encoding)));
        } else {
            self.msg = Msg::Rect {
                remaining,
                rect: r,
                encoding,
                dec,
            };
        }
        Ok((n, None))
    }
}
