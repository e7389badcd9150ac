//! Hextile (encoding 5): the rectangle is cut into 16 × 16 tiles, left to right and top to
//! bottom (the last column and row narrower); each tile starts with a sub-encoding mask.
//!
//! ```text
//! U8 mask
//! mask & RAW:                  width × height pixels (nothing else; carried colours forgotten)
//! mask & BACKGROUND_SPECIFIED: pixel  (else the previous tile's background)
//! mask & FOREGROUND_SPECIFIED: pixel  (else the previous tile's foreground)
//! mask & ANY_SUBRECTS:         U8 count, then count sub-rectangles:
//!     mask & SUBRECTS_COLOURED:  pixel, U8 xy, U8 wh
//!     otherwise:                 U8 xy, U8 wh (in the foreground colour)
//! ```

/// Width and height of a tile (the last column and row of a rectangle may be narrower).
pub const TILE_SIZE: u16 = 16;

/// The tile is raw pixels; every other bit is ignored.
pub const RAW: u8 = 1;
/// A background pixel follows.
pub const BACKGROUND_SPECIFIED: u8 = 2;
/// A foreground pixel follows (for sub-rectangles that are not coloured).
pub const FOREGROUND_SPECIFIED: u8 = 4;
/// A sub-rectangle count follows, then the sub-rectangles.
pub const ANY_SUBRECTS: u8 = 8;
/// Every sub-rectangle carries its own pixel (and the foreground is forgotten).
pub const SUBRECTS_COLOURED: u8 = 16;

/// A sub-rectangle's position byte: `x` (0…15, tile-relative) in the high nibble, `y` in the low.
#[inline]
pub const fn subrect_xy(x: u8, y: u8) -> u8 {
    (x << 4) | y
}

/// A sub-rectangle's size byte: `width − 1` in the high nibble, `height − 1` in the low
/// (`width` and `height` 1…16).
#[inline]
pub const fn subrect_wh(width: u8, height: u8) -> u8 {
    ((width - 1) << 4) | (height - 1)
}

/// A sub-rectangle's tile-relative `(x, y, width, height)` from its two bytes.
#[inline]
pub const fn parse_subrect(xy: u8, wh: u8) -> (u16, u16, u16, u16) {
    (
        (xy >> 4) as u16,
        (xy & 15) as u16,
        (wh >> 4) as u16 + 1,
        (wh & 15) as u16 + 1,
    )
}
