//! Tight (encoding 7) and TightPNG (−260): one compression-control byte, then what it names.
//!
//! ```text
//! U8 control:  bits 0-3  reset zlib stream n before this rectangle (each bit one stream)
//!              bits 4-7  0b0fss  Basic: zlib stream ss; f = a filter-id byte follows
//!                        0b1000  Fill: one TPIXEL
//!                        0b1001  JPEG: compact length, then a JFIF stream
//!                        0b1010  Tight: Basic without zlib (never used here); TightPNG: PNG
//! Basic:       [U8 filter-id: COPY | PALETTE | GRADIENT]
//!              PALETTE: U8 colours − 1, then that many TPIXELs
//!              data: rows of TPIXELs (copy, gradient residuals), of 1-bit indices (2 colours,
//!                    most significant bit leftmost, rows padded to a byte) or of 8-bit indices;
//!                    under MIN_TO_COMPRESS bytes sent as they are, else compact length + zlib
//! compact length: 7 bits per byte, least significant first, high bit = another byte follows;
//!              the third byte carries 8 bits (at most MAX_COMPACT_LEN)
//! TPIXEL:      R, G, B bytes for 32-bit true colour of depth 24 with 8-bit byte-aligned
//!              channels ([`tpixel24`]); otherwise the pixel itself
//! ```
//!
//! A rectangle is at most [`MAX_WIDTH`] pixels wide (TigerVNC's decoder accepts wider ones for
//! Fill only, which its servers before 1.16 sent).

use super::PixelFormat;

/// Widest Tight rectangle.
pub const MAX_WIDTH: u16 = 2048;

/// Filtered data shorter than this is sent without zlib (and without a length).
pub const MIN_TO_COMPRESS: usize = 12;

/// Largest value a compact length can carry (22 bits).
pub const MAX_COMPACT_LEN: u32 = (1 << 22) - 1;

/// Number of zlib streams per connection.
pub const STREAMS: usize = 4;

/// Control byte: a filter-id byte follows (Basic compression).
pub const READ_FILTER: u8 = 0x40;

/// Control byte, high nibble: Fill.
pub const FILL: u8 = 0x80;

/// Control byte, high nibble: JPEG.
pub const JPEG: u8 = 0x90;

/// Control byte, high nibble: PNG (TightPNG only; in Tight this value is Basic without zlib).
pub const PNG: u8 = 0xa0;

/// Filter id: pixels as they are.
pub const FILTER_COPY: u8 = 0;
/// Filter id: a palette, then indices.
pub const FILTER_PALETTE: u8 = 1;
/// Filter id: gradient residuals.
pub const FILTER_GRADIENT: u8 = 2;

/// Most colours a palette may have.
pub const MAX_PALETTE: usize = 256;

/// What a compression-control byte asks for (the reset bits aside).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Compression {
    /// Basic compression through zlib stream `stream` (0…3); `filter`: a filter-id byte follows.
    Basic {
        /// The zlib stream.
        stream: u8,
        /// A filter-id byte follows (else the copy filter).
        filter: bool,
    },
    /// One TPIXEL fills the rectangle.
    Fill,
    /// A JPEG image.
    Jpeg,
    /// A PNG image (TightPNG), or Basic without zlib (Tight; only for clients that asked).
    Png,
    /// Any other value.
    Invalid(u8),
}

impl Compression {
    /// The compression named by `control` (its reset bits ignored).
    pub const fn of(control: u8) -> Self {
        match control >> 4 {
            n @ 0..=7 => Self::Basic {
                stream: n & 3,
                filter: n & 4 != 0,
            },
            8 => Self::Fill,
            9 => Self::Jpeg,
            10 => Self::Png,
            n => Self::Invalid(n),
        }
    }

    /// The high nibble of the control byte for this compression.
    pub const fn control(self) -> u8 {
        match self {
            Self::Basic { stream, filter } => {
                ((stream & 3) << 4) | if filter { READ_FILTER } else { 0 }
            }
            Self::Fill => FILL,
            Self::Jpeg => JPEG,
            Self::Png => PNG,
            Self::Invalid(n) => n << 4,
        }
    }
}

/// The streams a control byte resets (bit n: stream n).
#[inline]
pub const fn resets(control: u8) -> u8 {
    control & 0x0f
}

/// Whether TPIXELs of `pf` are 3 bytes (R, G, B): true colour, 32 bits per pixel, depth 24,
/// every channel 8 bits wide and byte-aligned (TigerVNC's rule; libvncserver does not look at
/// the shifts, which only differs for formats no client uses).
pub fn tpixel24(pf: &PixelFormat) -> bool {
    pf.true_colour
        && pf.bits_per_pixel == 32
        && pf.depth == 24
        && pf
            .channels()
            .iter()
            .all(|&(max, shift)| max == 255 && shift % 8 == 0 && shift <= 24)
}

/// Bytes per TPIXEL in `pf`.
pub fn tpixel_len(pf: &PixelFormat) -> usize {
    if tpixel24(pf) {
        3
    } else {
        pf.bytes_per_pixel()
    }
}

/// Bytes of a compact length for `len` (≤ [`MAX_COMPACT_LEN`]).
pub const fn compact_len_len(len: u32) -> usize {
    if len < 1 << 7 {
        1
    } else if len < 1 << 14 {
        2
    } else {
        3
    }
}

/// Writes `len` (≤ [`MAX_COMPACT_LEN`]) as a compact length into `out` (room for 3 bytes);
/// returns the bytes written.
pub fn emit_compact_len(len: u32, out: &mut [u8]) -> usize {
    let n = compact_len_len(len);
    out[0] = (len & 0x7f) as u8 | if n > 1 { 0x80 } else { 0 };
    if n > 1 {
        out[1] = ((len >> 7) & 0x7f) as u8 | if n > 2 { 0x80 } else { 0 };
    }
    if n > 2 {
        out[2] = (len >> 14) as u8;
    }
    n
}

/// A compact length at the start of `b`: `(value, bytes)`, or `None` while incomplete.
pub fn parse_compact_len(b: &[u8]) -> Option<(u32, usize)> {
    let b0 = *b.first()?;
    let mut v = u32::from(b0 & 0x7f);
    if b0 & 0x80 == 0 {
        return Some((v, 1));
    }
    let b1 = *b.get(1)?;
    v |= u32::from(b1 & 0x7f) << 7;
    if b1 & 0x80 == 0 {
        return Some((v, 2));
    }
    let b2 = *b.get(2)?;
    Some((v | (u32::from(b2) << 14), 3))
}

/// Bytes of one row of filtered data: `palette` colours (0: no palette) over `width` pixels of
/// `tpixel` bytes.
pub const fn row_len(width: u16, palette: usize, tpixel: usize) -> usize {
    let w = width as usize;
    match palette {
        0 => w * tpixel,
        1 | 2 => w.div_ceil(8),
        _ => w,
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn compact_lengths() {
        // The spec's example: 10000 is 90 4E.
        let mut b = [0u8; 3];
        assert_eq!(emit_compact_len(10000, &mut b), 2);
        assert_eq!(&b[..2], &[0x90, 0x4e]);
        for v in [
            0,
            1,
            127,
            128,
            16383,
            16384,
            65535,
            1 << 21,
            MAX_COMPACT_LEN,
        ] {
            let n = emit_compact_len(v, &mut b);
            assert_eq!(n, compact_len_len(v));
            assert_eq!(parse_compact_len(&b[..n]), Some((v, n)), "{v}");
            assert_eq!(parse_compact_len(&b[..n - 1]), None);
        }
        assert_eq!(
            parse_compact_len(&[0xff, 0xff, 0xff]),
            Some((MAX_COMPACT_LEN, 3))
        );
    }

    #[test]
    fn control_bytes() {
        for c in 0..=255u8 {
            let k = Compression::of(c);
            if !matches!(k, Compression::Invalid(_)) {
                assert_eq!(k.control() | resets(c), c, "{c:#x}");
            }
        }
        assert_eq!(
            Compression::of(0x5f),
            Compression::Basic {
                stream: 1,
                filter: true
            }
        );
        assert_eq!(Compression::of(0x81), Compression::Fill);
        assert_eq!(Compression::of(0x90), Compression::Jpeg);
        assert_eq!(Compression::of(0xb0), Compression::Invalid(0xb));
    }

    #[test]
    fn tpixels() {
        assert!(tpixel24(&PixelFormat::RGB888));
        assert!(tpixel24(&PixelFormat::RGB888_BE));
        assert!(tpixel24(&PixelFormat::BGR888));
        assert!(tpixel24(&PixelFormat::true_colour(
            32,
            24,
            false,
            [255; 3],
            [24, 16, 8]
        )));
        assert!(!tpixel24(&PixelFormat::true_colour(
            32,
            24,
            false,
            [255; 3],
            [20, 12, 4]
        )));
        assert!(!tpixel24(&PixelFormat::true_colour(
            32,
            30,
            false,
            [1023; 3],
            [20, 10, 0]
        )));
        assert_eq!(tpixel_len(&PixelFormat::RGB565), 2);
        assert_eq!(tpixel_len(&PixelFormat::BGR233), 1);
        assert_eq!(row_len(9, 2, 3), 2);
        assert_eq!(row_len(9, 3, 3), 9);
        assert_eq!(row_len(9, 0, 3), 27);
    }
}
