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
        buf[0] = 0;
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
        buf[0] = 1;
        buf[1] = 0;
        put16(buf, 2, self.first);
        put16(buf, 4, self.count);
    }
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
