//! ZRLE (encoding 16): `U32 length`, then that many bytes of one zlib stream per connection
//! which inflate to 64 × 64 tiles, left to right and top to bottom (the last column and row
//! narrower). Each tile is a [`Subencoding`] byte, the palette it announces (CPIXELs), then:
//!
//! ```text
//! Raw            width × height CPIXELs
//! Solid          nothing (the palette's one colour fills the tile)
//! PackedPalette  per row: indices of packed_index_bits(n) bits, MSB first, padded to a byte
//! PlainRle       (CPIXEL, run length) until the tile is full
//! PaletteRle     U8 index (one pixel), or U8 index | PALETTE_RUN then a run length
//! run length     (n - 1) / 255 bytes of 255, then (n - 1) % 255
//! ```

/// Width and height of a tile (the last column and row of a rectangle may be narrower).
pub const TILE_SIZE: u16 = 64;

/// Bytes of the compressed-length word before the zlib data.
pub const LENGTH_LEN: usize = 4;

/// Most colours a packed-palette tile may have.
pub const MAX_PACKED_PALETTE: usize = 16;

/// Most colours a palette-RLE tile may have (an index is 7 bits).
pub const MAX_PALETTE: usize = 127;

/// In a palette-RLE tile: the index byte is followed by a run length.
pub const PALETTE_RUN: u8 = 128;

/// A run-length byte of this value is followed by another one.
pub const RUN_LENGTH_MORE: u8 = 255;

/// A tile's sub-encoding byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Subencoding {
    /// 0: raw CPIXELs.
    Raw,
    /// 1: one CPIXEL (the palette) fills the tile.
    Solid,
    /// 2…16: a palette of this many CPIXELs, then packed indices.
    PackedPalette(u8),
    /// 128: CPIXEL and run-length pairs.
    PlainRle,
    /// 130…255 (`128 + n`): a palette of `n` (2…127) CPIXELs, then runs of indices.
    PaletteRle(u8),
    /// 17…127 and 129: not defined.
    Invalid(u8),
}

impl From<u8> for Subencoding {
    fn from(v: u8) -> Self {
        match v {
            0 => Self::Raw,
            1 => Self::Solid,
            2..=16 => Self::PackedPalette(v),
            128 => Self::PlainRle,
            130..=255 => Self::PaletteRle(v - 128),
            _ => Self::Invalid(v),
        }
    }
}

impl From<Subencoding> for u8 {
    fn from(s: Subencoding) -> Self {
        match s {
            Subencoding::Raw => 0,
            Subencoding::Solid => 1,
            Subencoding::PackedPalette(n) => n,
            Subencoding::PlainRle => 128,
            Subencoding::PaletteRle(n) => 128 + n,
            Subencoding::Invalid(v) => v,
        }
    }
}

impl Subencoding {
    /// Number of CPIXELs in the palette right after the sub-encoding byte.
    pub const fn palette_len(self) -> usize {
        match self {
            Self::Raw | Self::PlainRle | Self::Invalid(_) => 0,
            Self::Solid => 1,
            Self::PackedPalette(n) | Self::PaletteRle(n) => n as usize,
        }
    }
}

/// Bits per index in a packed-palette tile of `palette_len` (2…16) colours.
#[inline]
pub const fn packed_index_bits(palette_len: usize) -> usize {
    match palette_len {
        2 => 1,
        3 | 4 => 2,
        _ => 4,
    }
}

/// Bytes of the run-length field of a run of `n` (≥ 1) pixels.
#[inline]
pub const fn run_length_len(n: usize) -> usize {
    (n - 1) / 255 + 1
}

/// A run length at the start of `b`: `(pixels, bytes)`, or `None` while incomplete.
#[inline]
pub fn parse_run_length(b: &[u8]) -> Option<(usize, usize)> {
    let mut len = 1usize;
    for (k, &v) in b.iter().enumerate() {
        len += usize::from(v);
        if v != RUN_LENGTH_MORE {
            return Some((len, k + 1));
        }
    }
    None
}
