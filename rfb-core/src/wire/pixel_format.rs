//! PIXEL_FORMAT (16 bytes).

use super::{WireError, be16, check_len, put16};

/// An RFB pixel format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PixelFormat {
    /// Bits per pixel on the wire: 8, 16 or 32.
    pub bits_per_pixel: u8,
    /// Useful bits in a pixel value.
    pub depth: u8,
    /// Multi-byte pixels are big endian.
    pub big_endian: bool,
    /// Pixel values hold red/green/blue intensities (else they index a colour map).
    pub true_colour: bool,
    /// Maximum red value (2ⁿ − 1).
    pub red_max: u16,
    /// Maximum green value (2ⁿ − 1).
    pub green_max: u16,
    /// Maximum blue value (2ⁿ − 1).
    pub blue_max: u16,
    /// Shift of red within a pixel value.
    pub red_shift: u8,
    /// Shift of green within a pixel value.
    pub green_shift: u8,
    /// Shift of blue within a pixel value.
    pub blue_shift: u8,
}

impl PixelFormat {
    /// Length on the wire.
    pub const LEN: usize = 16;

    /// 32 bpp, depth 24, little endian, `0x00RRGGBB` (the usual desktop format).
    pub const RGB888: Self = Self::true_colour(32, 24, false, [255, 255, 255], [16, 8, 0]);
    /// 32 bpp, depth 24, big endian, `0x00RRGGBB`.
    pub const RGB888_BE: Self = Self::true_colour(32, 24, true, [255, 255, 255], [16, 8, 0]);
    /// 32 bpp, depth 24, little endian, `0x00BBGGRR`.
    pub const BGR888: Self = Self::true_colour(32, 24, false, [255, 255, 255], [0, 8, 16]);
    /// 16 bpp, depth 16, little endian, RGB 5-6-5.
    pub const RGB565: Self = Self::true_colour(16, 16, false, [31, 63, 31], [11, 5, 0]);
    /// 16 bpp, depth 16, big endian, RGB 5-6-5.
    pub const RGB565_BE: Self = Self::true_colour(16, 16, true, [31, 63, 31], [11, 5, 0]);
    /// 16 bpp, depth 15, little endian, RGB 5-5-5.
    pub const RGB555: Self = Self::true_colour(16, 15, false, [31, 31, 31], [10, 5, 0]);
    /// 8 bpp true colour, BGR 2-3-3 (`bbgggrrr`), as TigerVNC's 256-colour mode.
    pub const BGR233: Self = Self::true_colour(8, 8, false, [7, 7, 3], [0, 3, 6]);
    /// 8 bpp colour-mapped.
    pub const COLOUR_MAP8: Self = Self {
        bits_per_pixel: 8,
        depth: 8,
        big_endian: false,
        true_colour: false,
        red_max: 0,
        green_max: 0,
        blue_max: 0,
        red_shift: 0,
        green_shift: 0,
        blue_shift: 0,
    };

    /// A true-colour format.
    pub const fn true_colour(
        bpp: u8,
        depth: u8,
        big_endian: bool,
        max: [u16; 3],
        shift: [u8; 3],
    ) -> Self {
        Self {
            bits_per_pixel: bpp,
            depth,
            big_endian,
            true_colour: true,
            red_max: max[0],
            green_max: max[1],
            blue_max: max[2],
            red_shift: shift[0],
            green_shift: shift[1],
            blue_shift: shift[2],
        }
    }

    /// Bytes per pixel (1, 2 or 4 for a valid format).
    pub const fn bytes_per_pixel(&self) -> usize {
        (self.bits_per_pixel / 8) as usize
    }

    /// Whether the format is usable: bits-per-pixel 8, 16 or 32; depth 1…bpp; for true colour,
    /// every max is 2ⁿ − 1 and non-zero (CVE-2015-8504), every channel fits inside the pixel
    /// (CVE-2014-7815, libvncserver 2020 shift bugs) and no two channels overlap; colour maps
    /// only at 8 bits per pixel.
    pub fn is_valid(&self) -> bool {
        if !matches!(self.bits_per_pixel, 8 | 16 | 32)
            || self.depth == 0
            || self.depth > self.bits_per_pixel
        {
            return false;
        }
        if !self.true_colour {
            return self.bits_per_pixel == 8;
        }
        let mut used = 0u64;
        for (max, shift) in self.channels() {
            if max == 0 || (max & max.wrapping_add(1)) != 0 {
                return false;
            }
            let bits = 16 - max.leading_zeros();
            if u32::from(shift) + bits > u32::from(self.bits_per_pixel) {
                return false;
            }
            let mask = u64::from(max) << shift;
            if used & mask != 0 {
                return false;
            }
            used |= mask;
        }
        true
    }

    /// `(max, shift)` for red, green and blue.
    pub const fn channels(&self) -> [(u16, u8); 3] {
        [
            (self.red_max, self.red_shift),
            (self.green_max, self.green_shift),
            (self.blue_max, self.blue_shift),
        ]
    }

    /// Bits of the pixel value used by the colour channels (true colour) or `0xff` (colour map).
    pub fn used_bits(&self) -> u32 {
        if !self.true_colour {
            return 0xff;
        }
        self.channels()
            .iter()
            .fold(0u32, |m, &(max, shift)| m | (u32::from(max) << shift))
    }

    /// Parses 16 bytes (no validation; see [`is_valid`](Self::is_valid)).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, Self::LEN)?;
        Ok(Self {
            bits_per_pixel: buf[0],
            depth: buf[1],
            big_endian: buf[2] != 0,
            true_colour: buf[3] != 0,
            red_max: be16(buf, 4),
            green_max: be16(buf, 6),
            blue_max: be16(buf, 8),
            red_shift: buf[10],
            green_shift: buf[11],
            blue_shift: buf[12],
        })
    }

    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes 16 bytes (padding zeroed).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.bits_per_pixel;
        buf[1] = self.depth;
        buf[2] = u8::from(self.big_endian);
        buf[3] = u8::from(self.true_colour);
        put16(buf, 4, self.red_max);
        put16(buf, 6, self.green_max);
        put16(buf, 8, self.blue_max);
        buf[10] = self.red_shift;
        buf[11] = self.green_shift;
        buf[12] = self.blue_shift;
        buf[13..16].fill(0);
    }
}
