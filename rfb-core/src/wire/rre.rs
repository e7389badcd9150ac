//! RRE (encoding 2): a background pixel, then sub-rectangles of one colour each.
//!
//! ```text
//! U32 count, pixel background
//! count × (pixel, U16 x, U16 y, U16 width, U16 height)   (rectangle-relative)
//! ```
//!
//! Pixels are in the client's pixel format (`bpp` bytes). CoRRE (encoding 4) is not implemented.

use super::client_msg::{parse_rect, put_rect};
use super::{Rect, be32, put32};

/// Bytes of the header (count and background pixel) at `bpp` bytes per pixel.
#[inline]
pub const fn header_len(bpp: usize) -> usize {
    4 + bpp
}

/// Bytes of one sub-rectangle (pixel and geometry) at `bpp` bytes per pixel.
#[inline]
pub const fn subrect_len(bpp: usize) -> usize {
    bpp + 8
}

/// Writes the header's count; the background pixel goes at `buf[4..4 + bpp]`.
#[inline]
pub fn emit_header_count(buf: &mut [u8], count: u32) {
    put32(buf, 0, count);
}

/// The header: the sub-rectangle count and the background pixel bytes, if all are at hand.
#[inline]
pub fn parse_header(buf: &[u8], bpp: usize) -> Option<(u32, &[u8])> {
    (buf.len() >= header_len(bpp)).then(|| (be32(buf, 0), &buf[4..4 + bpp]))
}

/// Writes a sub-rectangle's geometry after its `bpp`-byte pixel.
#[inline]
pub fn emit_subrect_geometry(buf: &mut [u8], bpp: usize, r: &Rect) {
    put_rect(buf, bpp, r);
}

/// A sub-rectangle's geometry (`buf` holds at least [`subrect_len`]`(bpp)` bytes).
#[inline]
pub fn parse_subrect_geometry(buf: &[u8], bpp: usize) -> Rect {
    parse_rect(buf, bpp)
}
