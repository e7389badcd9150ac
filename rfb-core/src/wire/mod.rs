//! Wire formats: `Repr` types with `parse` / `emit` / `buffer_len`.
//!
//! Every `parse` checks the length first and never panics afterwards; it reports
//! [`WireError::Truncated`] when more bytes are needed, so a state machine can consume nothing and
//! wait. Every `emit` is panic-free on a buffer of at least `buffer_len()` bytes. Code points this
//! crate does not know are kept as `Unknown(n)`.
//!
//! The layouts inside pixel-encoded rectangles are here too, for the server's encoders and the
//! client's decoders alike: [`rre`], [`hextile`] (sub-encoding bits), [`zrle`] (tile
//! sub-encodings) and [`tight`] (control byte, filters, compact lengths), plus [`CopyRectRepr`].

mod client_msg;
mod encoding;
pub mod hextile;
mod pixel_format;
pub mod rre;
mod security;
mod server_msg;
pub mod tight;
mod version;
pub mod zrle;

pub use client_msg::*;
pub use encoding::*;
pub use pixel_format::*;
pub use security::*;
pub use server_msg::*;
pub use version::*;

use core::fmt;

/// Why a `Repr::parse` failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum WireError {
    /// More bytes are needed: at least `needed` in total.
    Truncated {
        /// Total length required to make progress.
        needed: usize,
    },
    /// The bytes can never form a valid message.
    Malformed,
}

impl fmt::Display for WireError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WireError::Truncated { needed } => write!(f, "truncated: {needed} bytes needed"),
            WireError::Malformed => f.write_str("malformed"),
        }
    }
}

impl core::error::Error for WireError {}

#[inline]
pub(crate) fn check_len(buf: &[u8], needed: usize) -> Result<(), WireError> {
    if buf.len() < needed {
        Err(WireError::Truncated { needed })
    } else {
        Ok(())
    }
}

#[inline]
pub(crate) fn be16(b: &[u8], at: usize) -> u16 {
    u16::from_be_bytes([b[at], b[at + 1]])
}

#[inline]
pub(crate) fn be32(b: &[u8], at: usize) -> u32 {
    u32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

#[inline]
pub(crate) fn put16(b: &mut [u8], at: usize, v: u16) {
    b[at..at + 2].copy_from_slice(&v.to_be_bytes());
}

#[inline]
pub(crate) fn put32(b: &mut [u8], at: usize, v: u32) {
    b[at..at + 4].copy_from_slice(&v.to_be_bytes());
}

/// A rectangle in framebuffer coordinates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Rect {
    /// Left edge.
    pub x: u16,
    /// Top edge.
    pub y: u16,
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
}

impl Rect {
    /// A rectangle from its position and size.
    pub const fn new(x: u16, y: u16, width: u16, height: u16) -> Self {
        Self {
            x,
            y,
            width,
            height,
        }
    }

    /// Whether the rectangle covers no pixel.
    pub const fn is_empty(&self) -> bool {
        self.width == 0 || self.height == 0
    }

    /// Number of pixels (cannot overflow: at most 65535²).
    pub const fn area(&self) -> u32 {
        self.width as u32 * self.height as u32
    }

    /// Whether the rectangle lies fully inside a `width` × `height` framebuffer.
    pub const fn fits_in(&self, width: u16, height: u16) -> bool {
        self.x as u32 + self.width as u32 <= width as u32
            && self.y as u32 + self.height as u32 <= height as u32
    }

    /// The part of the rectangle inside a `width` × `height` framebuffer (possibly empty).
    pub fn clip_to(&self, width: u16, height: u16) -> Rect {
        let x0 = self.x.min(width);
        let y0 = self.y.min(height);
        let x1 = (self.x as u32 + self.width as u32).min(width as u32) as u16;
        let y1 = (self.y as u32 + self.height as u32).min(height as u32) as u16;
        Rect::new(x0, y0, x1 - x0, y1 - y0)
    }
}
