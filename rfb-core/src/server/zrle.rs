//! ZRLE encoding (`alloc`): 64×64 tiles (raw, solid, packed palette, plain RLE, palette RLE,
//! whichever is smallest), one zlib stream per connection (a [`ZrleCompressor`]), cut into
//! bands of whole 64-row tile rows.

use alloc::boxed::Box;
use alloc::vec;
use alloc::vec::Vec;

use super::Server;
use super::encode::Source;
use super::update::{RectState, UpdateState, zrle_band};
use crate::error::Error;
use crate::pixel::{cpixel_layout, effective_format, unpack};
use crate::wire::{Encoding, Rect, RectHeaderRepr, put32};
use crate::zlib::{ZrleCompressor, compress_all};

const NO_ENTRY: u16 = u16::MAX;

/// Per-connection ZRLE state: the zlib stream and reusable buffers.
pub(crate) struct ZrleEncoder {
    comp: Box<dyn ZrleCompressor>,
    /// Uncompressed tile data of the current band.
    raw: Vec<u8>,
    /// The current band on the wire: rectangle header, length, zlib data.
    wire: Vec<u8>,
    px: Vec<u32>,
    /// Palette lookup: open addressing over 256 slots (`index` into `palette`, or NO_ENTRY).
    slots: [u16; 256],
    keys: [u32; 256],
    palette: [u32; 128],
}

impl core::fmt::Debug for ZrleEncoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ZrleEncoder")
    }
}

#[inline]
fn slot_of(p: u32) -> usize {
    (p.wrapping_mul(0x9e37_79b1) >> 24) as usize
}

impl ZrleEncoder {
    pub(crate) fn new(comp: Box<dyn ZrleCompressor>) -> Self {
        Self {
            comp,
            raw: Vec::new(),
            wire: Vec::new(),
            px: vec![0; 64 * 64],
            slots: [NO_ENTRY; 256],
            keys: [0; 256],
            palette: [0; 128],
        }
    }

    /// Palette index of `p`, inserting it if there is room (`None` when full).
    #[inline]
    fn lookup_insert(&mut self, p: u32, len: &mut usize) -> Option<u8> {
        let mut s = slot_of(p);
        loop {
            let e = self.slots[s];
            if e == NO_ENTRY {
                if *len >= 127 {
                    return None;
                }
                self.slots[s] = *len as u16;
                self.keys[s] = p;
                self.palette[*len] = p;
                *len += 1;
                return Some((*len - 1) as u8);
            }
            if self.keys[s] == p {
                return Some(e as u8);
            }
            s = (s + 1) & 255;
        }
    }

    #[inline]
    fn lookup(&self, p: u32) -> u8 {
        let mut s = slot_of(p);
        loop {
            if self.keys[s] == p && self.slots[s] != NO_ENTRY {
                return self.slots[s] as u8;
            }
            s = (s + 1) & 255;
        }
    }

    /// Appends one tile (`w` × `h` packed pixels in `self.px`) to `self.raw`.
    fn tile(&mut self, w: usize, h: usize, cpb: usize, coff: usize) {
        let n = w * h;
        self.slots = [NO_ENTRY; 256];
        let mut plen = 0usize;
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
            rle_len_bytes += (len - 1) / 255 + 1;
            if !overflow && self.lookup_insert(p, &mut plen).is_none() {
                overflow = true;
            }
            i = j;
        }
        let put_cpixel = |out: &mut Vec<u8>, p: u32| {
            let b = unpack(p);
            out.extend_from_slice(&b[coff..coff + cpb]);
        };
        if plen == 1 && !overflow {
            self.raw.push(1);
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
            if plen <= 16 {
                let bits = match plen {
                    2 => 1,
                    3 | 4 => 2,
                    _ => 4,
                };
                let packed = pal + h * (w * bits).div_ceil(8);
                if packed < best {
                    kind = 2;
                }
            }
        }
        let px = &self.px[..n];
        match kind {
            0 => {
                self.raw.push(0);
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
                self.raw.push(128);
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
                self.raw.push(plen as u8);
                for k in 0..plen {
                    put_cpixel(&mut self.raw, self.palette[k]);
                }
                let bits = match plen {
                    2 => 1,
                    3 | 4 => 2,
                    _ => 4,
                };
                for row in px.chunks_exact(w) {
                    let mut byte = 0u8;
                    let mut nbits = 0;
                    for &p in row {
                        byte = (byte << bits) | self.lookup(p);
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
                self.raw.push(128 + plen as u8);
                for k in 0..plen {
                    put_cpixel(&mut self.raw, self.palette[k]);
                }
                let mut i = 0;
                while i < n {
                    let p = px[i];
                    let mut j = i + 1;
                    while j < n && px[j] == p {
                        j += 1;
                    }
                    let idx = self.lookup(p);
                    if j - i == 1 {
                        self.raw.push(idx);
                    } else {
                        self.raw.push(idx | 128);
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
    ) -> Result<(), Error> {
        let band_rows = zrle_band(r.width);
        let y0 = r.y + band * band_rows;
        let bh = (r.y + r.height - y0).min(band_rows);
        self.raw.clear();
        let mut ty = y0;
        while ty < y0 + bh {
            let th = (y0 + bh - ty).min(64);
            let mut tx = r.x;
            while tx < r.x + r.width {
                let tw = (r.x + r.width - tx).min(64);
                let mut px = core::mem::take(&mut self.px);
                source.load(tx, ty, tw, th, &mut px[..usize::from(tw) * usize::from(th)]);
                self.px = px;
                self.tile(usize::from(tw), usize::from(th), cpb, coff);
                tx += tw;
            }
            ty += th;
        }
        self.wire.clear();
        self.wire.resize(RectHeaderRepr::LEN + 4, 0);
        RectHeaderRepr {
            rect: Rect::new(r.x, y0, r.width, bh),
            encoding: Encoding::Zrle,
        }
        .emit(&mut self.wire);
        compress_all(&mut *self.comp, &self.raw, &mut self.wire)
            .map_err(|_| Error::InvalidState)?;
        let len = (self.wire.len() - RectHeaderRepr::LEN - 4) as u32;
        put32(&mut self.wire, RectHeaderRepr::LEN, len);
        Ok(())
    }
}

fn push_run_len(out: &mut Vec<u8>, len: usize) {
    let mut l = len - 1;
    while l >= 255 {
        out.push(255);
        l -= 255;
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
    ) -> Result<(usize, bool), Error> {
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
            return Err(Error::InvalidState);
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
