//! Server-to-client messages and rectangle headers.

use super::client_msg::{parse_rect, put_rect};
use super::{Encoding, PixelFormat, Rect, WireError, be16, be32, check_len, put16, put32};

enum_with_unknown! {
    /// Server-to-client message type byte.
    pub enum ServerMessageType(u8) {
        /// 0
        FramebufferUpdate = 0,
        /// 1
        SetColourMapEntries = 1,
        /// 2
        Bell = 2,
        /// 3
        ServerCutText = 3,
        /// 150
        EndOfContinuousUpdates = 150,
        /// 248
        ServerFence = 248,
        /// 255
        Qemu = 255,
    }
}

/// ServerInit header (24 bytes); `name_len` name bytes follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ServerInitRepr {
    /// Framebuffer width.
    pub width: u16,
    /// Framebuffer height.
    pub height: u16,
    /// The server's natural pixel format.
    pub format: PixelFormat,
    /// Length of the desktop name that follows.
    pub name_len: u32,
}

impl ServerInitRepr {
    /// Length on the wire (without the name).
    pub const LEN: usize = 24;
    /// Parses the header.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            width: be16(buf, 0),
            height: be16(buf, 2),
            format: PixelFormat::parse(&buf[4..])?,
            name_len: be32(buf, 20),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the header.
    pub fn emit(&self, buf: &mut [u8]) {
        put16(buf, 0, self.width);
        put16(buf, 2, self.height);
        self.format.emit(&mut buf[4..20]);
        put32(buf, 20, self.name_len);
    }
}

/// FramebufferUpdate header (4 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FramebufferUpdateRepr {
    /// Number of rectangles (65535 with LastRect = "until LastRect").
    pub rects: u16,
}

impl FramebufferUpdateRepr {
    /// Length on the wire.
    pub const LEN: usize = 4;
    /// `rects` meaning "until a LastRect rectangle" (with the LastRect pseudo-encoding).
    pub const UNTIL_LAST_RECT: u16 = 0xffff;
    /// Parses the header.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            rects: be16(buf, 2),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the header.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = ServerMessageType::FramebufferUpdate.into();
        buf[1] = 0;
        put16(buf, 2, self.rects);
    }
}

/// Rectangle header (12 bytes).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RectHeaderRepr {
    /// Position and size (meaning varies for pseudo-encodings).
    pub rect: Rect,
    /// Encoding of the data that follows.
    pub encoding: Encoding,
}

impl RectHeaderRepr {
    /// Length on the wire.
    pub const LEN: usize = 12;
    /// Parses the header.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            rect: parse_rect(buf, 0),
            encoding: Encoding::from(be32(buf, 8) as i32),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the header.
    pub fn emit(&self, buf: &mut [u8]) {
        put_rect(buf, 0, &self.rect);
        put32(buf, 8, i32::from(self.encoding) as u32);
    }
}

/// CopyRect rectangle body (4 bytes): the top-left corner the rectangle's pixels come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CopyRectRepr {
    /// Source left edge.
    pub src_x: u16,
    /// Source top edge.
    pub src_y: u16,
}

impl CopyRectRepr {
    /// Length on the wire.
    pub const LEN: usize = 4;
    /// Parses the body.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            src_x: be16(buf, 0),
            src_y: be16(buf, 2),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the body.
    pub fn emit(&self, buf: &mut [u8]) {
        put16(buf, 0, self.src_x);
        put16(buf, 2, self.src_y);
    }
}

/// Cursor pseudo-rectangle: bytes of the validity bitmask after the pixels (rows of
/// `⌈width / 8⌉` bytes, most significant bit leftmost).
pub const fn cursor_mask_len(width: u16, height: u16) -> usize {
    width.div_ceil(8) as usize * height as usize
}

/// SetColourMapEntries header (6 bytes); `count` × (U16 r, g, b) follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SetColourMapEntriesRepr {
    /// First colour index.
    pub first: u16,
    /// Number of entries that follow.
    pub count: u16,
}

impl SetColourMapEntriesRepr {
    /// Length on the wire (without entries).
    pub const LEN: usize = 6;
    /// Bytes per entry.
    pub const ENTRY_LEN: usize = 6;
    /// Parses the header.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            first: be16(buf, 2),
            count: be16(buf, 4),
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the header.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = ServerMessageType::SetColourMapEntries.into();
        buf[1] = 0;
        put16(buf, 2, self.first);
        put16(buf, 4, self.count);
    }
}

/// ExtendedDesktopSize codes: the reason (rectangle x) and status (rectangle y).
pub mod desktop_size {
    /// Reason: the server changed the size.
    pub const REASON_SERVER: u16 = 0;
    /// Reason: the answer to this client's SetDesktopSize.
    pub const REASON_THIS_CLIENT: u16 = 1;
    /// Reason: another client's SetDesktopSize.
    pub const REASON_OTHER_CLIENT: u16 = 2;
    /// Status: the change happened.
    pub const STATUS_OK: u16 = 0;
    /// Status: resizing is prohibited.
    pub const STATUS_PROHIBITED: u16 = 1;
    /// Status: out of resources.
    pub const STATUS_OUT_OF_RESOURCES: u16 = 2;
    /// Status: the layout is invalid.
    pub const STATUS_INVALID_LAYOUT: u16 = 3;
}

/// ExtendedDesktopSize rectangle body header (4 bytes); `screens` [`Screen`](super::Screen)s follow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ExtendedDesktopSizeRepr {
    /// Number of screens.
    pub screens: u8,
}

impl ExtendedDesktopSizeRepr {
    /// Length on the wire.
    pub const LEN: usize = 4;
    /// Parses the header.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self { screens: buf[0] })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }
    /// Writes the header.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[..4].copy_from_slice(&[self.screens, 0, 0, 0]);
    }
}

/// Reads a big-endian U16 colour component triple of a colour-map entry.
pub fn parse_colour_entry(buf: &[u8]) -> Result<[u16; 3], WireError> {
    check_len(buf, 6)?;
    Ok([be16(buf, 0), be16(buf, 2), be16(buf, 4)])
}
