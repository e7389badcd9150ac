//! ZRLE encoding (`alloc`): 64×64 tiles (raw, solid, packed palette, plain RLE, palette RLE,
//! whichever is smallest), one zlib stream per connection (a [`ZrleCompressor`]), cut into
//! bands of whole 64-row tile rows.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use super::Server;
use super::encode::Source;
use super::update::{RectState, UpdateState, zrle_band};
use crate::error::CommandError;
use crate::pixel::{cpixel_layout, effective_format, unpack};
use crate::wire::zrle::{
    LENGTH_LEN, MAX_PACKED_PALETTE, MAX_PALETTE, PALETTE_RUN, RUN_LENGTH_MORE, Subencoding,
    TILE_SIZE, packed_index_bits, run_length_len,
};
use crate::wire::{Encoding, Rect, RectHeaderRepr, put32};
use crate::zlib::{ZrleCompressor, compress_all};

use super::palette::Palette;

/// Per-connection ZRLE state: the zlib stream and reusable buffers.
pub(crate) struct ZrleEncoder {
    comp: Box<dyn ZrleCompressor>,
    /// Uncompressed tile data of the current band.
    raw: Vec<u8>,
    /// The current band on the wire: rectangle header, length, zlib data.
    wire: Vec<u8>,
    px: Vec<u32>,
    /// The tile's colours.
    palette: Palette<256, MAX_PALETTE>,
}

impl core::fmt::Debug for ZrleEncoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ZrleEncoder")
    }
}

impl ZrleEncoder {
    pub(crate) fn new(comp: Box<dyn ZrleCompressor>) -> Self {
        Self {
            comp,
            raw: Vec::new(),
            wire: Vec::new(),
            px: vec![0; usize::from(TILE_SIZE) * usize::from(TILE_SIZE)],
            palette: Palette::new(),
        }
    }

    /// Appends one tile (`w` × `h` packed pixels in `self.px`) to `self.raw`.
    fn tile(&mut self, w: usize, h: usize, cpb: usize, coff: usize) {
        let n = w * h;
        self.palette.clear();
        let mut overflow = false;
        let mut runs = 0usize;
        let mut singles = 0usize;
        let mut rle_len_bytes = 0usize;
        let mut i = 0;
        while i < n {
            let p = self.px[i];
            let mut j = i + 1;
            while j < n && self.px[j] == p {
                j += 1;
            }
            let len = j - i;
            runs += 1;
            if len == 1 {
                singles += 1;
            }
            rle_len_bytes += run_length_len(len);
            if !overflow && self.palette.insert(p, MAX_PALETTE).is_none() {
                overflow = true;
            }
            i = j;
        }
        let plen = self.palette.len();
        let put_cpixel = |out: &mut Vec<u8>, p: u32| {
            let b = unpack(p);
            out.extend_from_slice(&b[coff..coff + cpb]);
        };
        if plen == 1 && !overflow {
            self.raw.push(Subencoding::Solid.into());
            put_cpixel(&mut self.raw, self.px[0]);
            return;
        }
        let raw_size = n * cpb;
        let plain_rle = runs * cpb + rle_len_bytes;
        let mut best = raw_size;
        let mut kind = 0u8; // 0 raw, 1 plain RLE, 2 packed, 3 palette RLE
        if plain_rle < best {
            best = plain_rle;
            kind = 1;
        }
        if !overflow {
            let pal = plen * cpb;
            // Palette RLE: one byte per single run, index + length bytes for the others.
            let prle = pal + singles + (runs - singles) + (rle_len_bytes - singles);
            if prle < best {
                best = prle;
                kind = 3;
            }
            if plen <= MAX_PACKED_PALETTE {
                let bits = packed_index_bits(plen);
                let packed = pal + h * (w * bits).div_ceil(8);
                if packed < best {
                    kind = 2;
                }
            }
        }
        let px = &self.px[..n];
        match kind {
            0 => {
                self.raw.push(Subencoding::Raw.into());
                let at = self.raw.len();
                self.raw.resize(at + n * cpb, 0);
                let dst = &mut self.raw[at..];
                // Fixed-size copies for the usual layouts (a memcpy call per pixel otherwise).
                match (cpb, coff) {
                    (3, 0) => {
                        for (d, &p) in dst.chunks_exact_mut(3).zip(px) {
                            let b = unpack(p);
                            d.copy_from_slice(&[b[0], b[1], b[2]]);
                        }
                    }
                    (3, _) => {
                        for (d, &p) in dst.chunks_exact_mut(3).zip(px) {
                            let b = unpack(p);
                            d.copy_from_slice(&[b[1], b[2], b[3]]);
                        }
                    }
                    (4, _) => {
                        for (d, &p) in dst.chunks_exact_mut(4).zip(px) {
                            d.copy_from_slice(&unpack(p));
                        }
                    }
                    _ => {
                        for (d, &p) in dst.chunks_exact_mut(cpb).zip(px) {
                            d.copy_from_slice(&unpack(p)[coff..coff + cpb]);
                        }
                    }
                }
            }
            1 => {
                self.raw.push(Subencoding::PlainRle.into());
                let mut i = 0;
                while i < n {
                    let p = px[i];
                    let mut j = i + 1;
                    while j < n && px[j] == p {
                        j += 1;
                    }
                    put_cpixel(&mut self.raw, p);
                    push_run_len(&mut self.raw, j - i);
                    i = j;
                }
            }
            2 => {
                self.raw.push(Subencoding::PackedPalette(plen as u8).into());
                for k in 0..plen {
                    put_cpixel(&mut self.raw, self.palette.colours()[k]);
                }
                let bits = packed_index_bits(plen);
                for row in px.chunks_exact(w) {
                    let mut byte = 0u8;
                    let mut nbits = 0;
                    for &p in row {
                        byte = (byte << bits) | self.palette.index(p);
                        nbits += bits;
                        if nbits == 8 {
                            self.raw.push(byte);
                            byte = 0;
                            nbits = 0;
                        }
                    }
                    if nbits > 0 {
                        self.raw.push(byte << (8 - nbits));
                    }
                }
            }
            _ => {
                self.raw.push(Subencoding::PaletteRle(plen as u8).into());
                for k in 0..plen {
                    put_cpixel(&mut self.raw, self.palette.colours()[k]);
                }
                let mut i = 0;
                while i < n {
                    let p = px[i];
                    let mut j = i + 1;
                    while j < n && px[j] == p {
                        j += 1;
                    }
                    let idx = self.palette.index(p);
                    if j - i == 1 {
                        self.raw.push(idx);
                    } else {
                        self.raw.push(idx | PALETTE_RUN);
                        push_run_len(&mut self.raw, j - i);
                    }
                    i = j;
                }
            }
        }
    }

    /// Encodes `band` of the rectangle into `self.wire` (header, length, zlib data).
    fn band(
        &mut self,
        r: Rect,
        band: u16,
        source: &Source<'_, '_>,
        cpb: usize,
        coff: usize,
    ) -> Result<(), CommandError> {
        let band_rows = zrle_band(r.width);
        let y0 = r.y + band * band_rows;
        let bh = (r.y + r.height - y0).min(band_rows);
        self.raw.clear();
        let mut ty = y0;
        while ty < y0 + bh {
            let th = (y0 + bh - ty).min(TILE_SIZE);
            let mut tx = r.x;
            while tx < r.x + r.width {
                let tw = (r.x + r.width - tx).min(TILE_SIZE);
                let mut px = core::mem::take(&mut self.px);
                source.load(tx, ty, tw, th, &mut px[..usize::from(tw) * usize::from(th)]);
                self.px = px;
                self.tile(usize::from(tw), usize::from(th), cpb, coff);
                tx += tw;
            }
            ty += th;
        }
        self.wire.clear();
        self.wire.resize(RectHeaderRepr::LEN + LENGTH_LEN, 0);
        RectHeaderRepr {
            rect: Rect::new(r.x, y0, r.width, bh),
            encoding: Encoding::Zrle,
        }
        .emit(&mut self.wire);
        compress_all(&mut *self.comp, &self.raw, &mut self.wire)
            .map_err(|_| CommandError::InvalidState)?;
        let len = (self.wire.len() - RectHeaderRepr::LEN - LENGTH_LEN) as u32;
        put32(&mut self.wire, RectHeaderRepr::LEN, len);
        Ok(())
    }
}

/// A run length (see [`crate::wire::zrle`]): `(len - 1) / 255` bytes of 255, then the rest.
fn push_run_len(out: &mut Vec<u8>, len: usize) {
    let mut l = len - 1;
    while l >= usize::from(RUN_LENGTH_MORE) {
        out.push(RUN_LENGTH_MORE);
        l -= usize::from(RUN_LENGTH_MORE);
    }
    out.push(l as u8);
}

impl Server {
    /// Writes (part of) the ZRLE bands of `r`; returns `(bytes written, rectangle finished)`.
    pub(crate) fn encode_zrle_step(
        &mut self,
        st: &mut UpdateState,
        r: Rect,
        source: &Source<'_, '_>,
        out: &mut [u8],
    ) -> Result<(usize, bool), CommandError> {
        let level = self.prefs.level;
        let wire = effective_format(&self.client_format);
        let (cpb, coff) = cpixel_layout(&wire);
        let make = self.zlib;
        let z = self
            .zrle
            .get_or_insert_with(|| Box::new(ZrleEncoder::new(make(level))));
        let RectState::Zrle {
            mut band,
            mut sent,
            mut len,
        } = st.rect_state()
        else {
            return Err(CommandError::InvalidState);
        };
        let bands = r.height.div_ceil(zrle_band(r.width));
        let mut pos = 0;
        loop {
            if len == 0 {
                if band >= bands {
                    return Ok((pos, true));
                }
                z.band(r, band, source, cpb, coff)?;
                len = z.wire.len();
                sent = 0;
            }
            let n = (len - sent).min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&z.wire[sent..sent + n]);
            pos += n;
            sent += n;
            if sent < len {
                st.set_rect_state(RectState::Zrle { band, sent, len });
                return Ok((pos, false));
            }
            band += 1;
            len = 0;
            sent = 0;
            st.set_rect_state(RectState::Zrle { band, sent, len });
        }
    }
}
