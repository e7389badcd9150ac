//! Client-to-server messages, plus the message layouts both directions share (cut text, fence,
//! screens).

use super::{PixelFormat, Rect, WireError, be16, be32, check_len, put16, put32};

enum_with_unknown! {
    /// Client-to-server message type byte.
    pub enum ClientMessageType(u8) {
        /// 0
        SetPixelFormat = 0,
        /// 2
        SetEncodings = 2,
        /// 3
        FramebufferUpdateRequest = 3,
        /// 4
        KeyEvent = 4,
        /// 5
        PointerEvent = 5,
        /// 6
        ClientCutText = 6,
        /// 150
        EnableContinuousUpdates = 150,
        /// 248
        ClientFence = 248,
        /// 251
        SetDesktopSize = 251,
        /// 255 (sub-type 0: extended key event)
        Qemu = 255,
    }
}

/// ClientInit (1 byte): whether the client lets other clients share the desktop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientInitRepr {
    /// Share the desktop (else the server may disconnect other clients).
    pub shared: bool,
}

impl ClientInitRepr {
    /// Length on the wire.
    pub const LEN: usize = 1;
    /// Parses the message.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            shared: buf[0] != 0,
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = u8::from(self.shared);
    }
}

/// SetPixelFormat (20 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetPixelFormatRepr {
    /// Requested format (validate with [`PixelFormat::is_valid`]).
    pub format: PixelFormat,
}

impl SetPixelFormatRepr {
    /// Length on the wire.
    pub const LEN: usize = 20;
    /// Parses the message (type byte included).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            format: PixelFormat::parse(&buf[4..])?,
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[..4].copy_from_slice(&[ClientMessageType::SetPixelFormat.into(), 0, 0, 0]);
        self.format.emit(&mut buf[4..]);
    }
}

/// SetEncodings header (4 bytes); `count` S32 values follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetEncodingsHeaderRepr {
    /// Number of encodings that follow.
    pub count: u16,
}

impl SetEncodingsHeaderRepr {
    /// Length on the wire.
    pub const LEN: usize = 4;
    /// Parses the header.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            count: be16(buf, 2),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the header.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = ClientMessageType::SetEncodings.into();
        buf[1] = 0;
        put16(buf, 2, self.count);
    }
}

/// FramebufferUpdateRequest (10 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FramebufferUpdateRequestRepr {
    /// Only changes are wanted.
    pub incremental: bool,
    /// The area of interest.
    pub rect: Rect,
}

pub(crate) fn parse_rect(buf: &[u8], at: usize) -> Rect {
    Rect::new(
        be16(buf, at),
        be16(buf, at + 2),
        be16(buf, at + 4),
        be16(buf, at + 6),
    )
}

pub(crate) fn put_rect(buf: &mut [u8], at: usize, r: &Rect) {
    put16(buf, at, r.x);
    put16(buf, at + 2, r.y);
    put16(buf, at + 4, r.width);
    put16(buf, at + 6, r.height);
}

impl FramebufferUpdateRequestRepr {
    /// Length on the wire.
    pub const LEN: usize = 10;
    /// Parses the message.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            incremental: buf[1] != 0,
            rect: parse_rect(buf, 2),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = ClientMessageType::FramebufferUpdateRequest.into();
        buf[1] = u8::from(self.incremental);
        put_rect(buf, 2, &self.rect);
    }
}

/// KeyEvent (8 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyEventRepr {
    /// Pressed (true) or released.
    pub down: bool,
    /// X11 keysym.
    pub keysym: u32,
}

impl KeyEventRepr {
    /// Length on the wire.
    pub const LEN: usize = 8;
    /// Parses the message.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            down: buf[1] != 0,
            keysym: be32(buf, 4),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[..4].copy_from_slice(&[
            ClientMessageType::KeyEvent.into(),
            u8::from(self.down),
            0,
            0,
        ]);
        put32(buf, 4, self.keysym);
    }
}

/// PointerEvent (6 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PointerEventRepr {
    /// Button mask (bit 0 = button 1).
    pub buttons: u8,
    /// Pointer x.
    pub x: u16,
    /// Pointer y.
    pub y: u16,
}

impl PointerEventRepr {
    /// Length on the wire.
    pub const LEN: usize = 6;
    /// Parses the message.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            buttons: buf[1],
            x: be16(buf, 2),
            y: be16(buf, 4),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = ClientMessageType::PointerEvent.into();
        buf[1] = self.buttons;
        put16(buf, 2, self.x);
        put16(buf, 4, self.y);
    }
}

/// How a cut-text length word is to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CutTextLength {
    /// Latin-1 text of this many bytes.
    Text(u32),
    /// Extended-clipboard message of this many bytes (the length word was negative).
    Extended(u32),
}

impl CutTextLength {
    /// Number of bytes that follow.
    pub fn len(self) -> u32 {
        match self {
            Self::Text(n) | Self::Extended(n) => n,
        }
    }
    /// Whether no bytes follow.
    pub fn is_empty(self) -> bool {
        self.len() == 0
    }
    /// The length word on the wire.
    pub fn to_wire(self) -> u32 {
        match self {
            Self::Text(n) => n,
            // |len| up to 2^31 is representable as a negative S32 (i32::MIN for 2^31).
            Self::Extended(n) => (n as i32).wrapping_neg() as u32,
        }
    }
}

/// ClientCutText (type 6) / ServerCutText (type 3) header (8 bytes); the text follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CutTextHeaderRepr {
    /// 6 (client) or 3 (server).
    pub message_type: u8,
    /// The raw length word (U32, or S32 with the extended clipboard).
    pub length: u32,
}

impl CutTextHeaderRepr {
    /// Length on the wire.
    pub const LEN: usize = 8;
    /// Parses the header.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            message_type: buf[0],
            length: be32(buf, 4),
        })
    }
    /// The length, read as S32 when the extended clipboard is negotiated. `i32::MIN` becomes
    /// `Extended(2³¹)` through `unsigned_abs`, never an overflow.
    pub fn decode(&self, extended_clipboard: bool) -> CutTextLength {
        let s = self.length as i32;
        if extended_clipboard && s < 0 {
            CutTextLength::Extended(s.unsigned_abs())
        } else {
            CutTextLength::Text(self.length)
        }
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the header.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[..4].copy_from_slice(&[self.message_type, 0, 0, 0]);
        put32(buf, 4, self.length);
    }
}

/// Extended-clipboard flags: the first U32 of an extended cut-text message (formats in the
/// low bits, one action in the high byte).
pub mod ext_clipboard {
    /// Format: plain text (UTF-8).
    pub const TEXT: u32 = 1 << 0;
    /// Action: the sender's capabilities (a U32 size limit per format follows).
    pub const CAPS: u32 = 1 << 24;
    /// Action: asks for the formats given.
    pub const REQUEST: u32 = 1 << 25;
    /// Action: asks which formats are available.
    pub const PEEK: u32 = 1 << 26;
    /// Action: tells which formats are available.
    pub const NOTIFY: u32 = 1 << 27;
    /// Action: carries the data (zlib-compressed).
    pub const PROVIDE: u32 = 1 << 28;
}

/// EnableContinuousUpdates (10 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct EnableContinuousUpdatesRepr {
    /// Enable (true) or disable.
    pub enable: bool,
    /// The area to keep up to date.
    pub rect: Rect,
}

impl EnableContinuousUpdatesRepr {
    /// Length on the wire.
    pub const LEN: usize = 10;
    /// Parses the message.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            enable: buf[1] != 0,
            rect: parse_rect(buf, 2),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = ClientMessageType::EnableContinuousUpdates.into();
        buf[1] = u8::from(self.enable);
        put_rect(buf, 2, &self.rect);
    }
}

/// Fence flag bits.
pub mod fence_flags {
    /// Preceding messages must have taken effect before the response.
    pub const BLOCK_BEFORE: u32 = 1 << 0;
    /// Following messages wait for the response.
    pub const BLOCK_AFTER: u32 = 1 << 1;
    /// The next message is atomic with respect to the response.
    pub const SYNC_NEXT: u32 = 1 << 2;
    /// This is a request (a response clears it).
    pub const REQUEST: u32 = 1 << 31;
    /// The flags this crate understands.
    pub const KNOWN: u32 = BLOCK_BEFORE | BLOCK_AFTER | SYNC_NEXT | REQUEST;
}

/// ClientFence / ServerFence (type 248): `3 pad, U32 flags, U8 len, payload` (≤ 64 bytes).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct FenceRepr {
    /// Flag bits ([`fence_flags`]).
    pub flags: u32,
    /// Opaque payload (at most 64 bytes).
    pub payload: heapless::Vec<u8, 64>,
}

impl FenceRepr {
    /// Header length before the payload.
    pub const HEADER_LEN: usize = 9;
    /// Parses the whole message; a payload over 64 bytes is `Malformed`.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::HEADER_LEN)?;
        let n = usize::from(buf[8]);
        if n > 64 {
            return Err(WireError::Malformed);
        }
        check_len(buf, Self::HEADER_LEN + n)?;
        let mut payload = heapless::Vec::new();
        payload
            .extend_from_slice(&buf[9..9 + n])
            .map_err(|_| WireError::Malformed)?;
        Ok(Self {
            flags: be32(buf, 4),
            payload,
        })
    }
    /// Bytes needed by `emit`.
    pub fn buffer_len(&self) -> usize {
        Self::HEADER_LEN + self.payload.len()
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        // ClientFence and ServerFence share the type byte.
        buf[..4].copy_from_slice(&[ClientMessageType::ClientFence.into(), 0, 0, 0]);
        put32(buf, 4, self.flags);
        buf[8] = self.payload.len() as u8;
        buf[9..9 + self.payload.len()].copy_from_slice(&self.payload);
    }
}

/// A screen of the ExtendedDesktopSize / SetDesktopSize layout (16 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Screen {
    /// Screen id (preserved across changes).
    pub id: u32,
    /// Area inside the framebuffer.
    pub rect: Rect,
    /// Flags (unused; preserved).
    pub flags: u32,
}

impl Screen {
    /// Length on the wire.
    pub const LEN: usize = 16;
    /// Parses a screen.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            id: be32(buf, 0),
            rect: parse_rect(buf, 4),
            flags: be32(buf, 12),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the screen.
    pub fn emit(&self, buf: &mut [u8]) {
        put32(buf, 0, self.id);
        put_rect(buf, 4, &self.rect);
        put32(buf, 12, self.flags);
    }
}

/// SetDesktopSize header (8 bytes); `screens` [`Screen`]s follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetDesktopSizeHeaderRepr {
    /// Requested framebuffer width.
    pub width: u16,
    /// Requested framebuffer height.
    pub height: u16,
    /// Number of screens that follow.
    pub screens: u8,
}

impl SetDesktopSizeHeaderRepr {
    /// Length on the wire.
    pub const LEN: usize = 8;
    /// Parses the header.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            width: be16(buf, 2),
            height: be16(buf, 4),
            screens: buf[6],
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the header.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = ClientMessageType::SetDesktopSize.into();
        buf[1] = 0;
        put16(buf, 2, self.width);
        put16(buf, 4, self.height);
        buf[6] = self.screens;
        buf[7] = 0;
    }
}

/// QEMU extended key event (type 255, sub-type 0; 12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct QemuKeyEventRepr {
    /// Pressed (true) or released.
    pub down: bool,
    /// X11 keysym (0 if unknown).
    pub keysym: u32,
    /// XT scancode as defined by the extension.
    pub keycode: u32,
}

impl QemuKeyEventRepr {
    /// Length on the wire.
    pub const LEN: usize = 12;
    /// The QEMU sub-type byte of an extended key event.
    pub const SUBTYPE: u8 = 0;
    /// Parses the message (type 255 and sub-type 0 included). Any other sub-type is
    /// [`WireError::Malformed`] as soon as its byte is at hand.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, 2)?;
        if buf[1] != Self::SUBTYPE {
            return Err(WireError::Malformed);
        }
        check_len(buf, Self::LEN)?;
        Ok(Self {
            down: be16(buf, 2) != 0,
            keysym: be32(buf, 4),
            keycode: be32(buf, 8),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = ClientMessageType::Qemu.into();
        buf[1] = Self::SUBTYPE;
        put16(buf, 2, u16::from(self.down));
        put32(buf, 4, self.keysym);
        put32(buf, 8, self.keycode);
    }
}
