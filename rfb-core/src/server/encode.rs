//! Pixel encoders working on packed wire pixels (see `pixel::pack`): Raw rows, RRE runs and
//! Hextile tiles. All are allocation-free and write into caller-provided buffers.

use crate::pixel::{Framebuffer, Translator, pack, unpack};
use crate::wire::hextile::{
    ANY_SUBRECTS, BACKGROUND_SPECIFIED, FOREGROUND_SPECIFIED, SUBRECTS_COLOURED, subrect_wh,
    subrect_xy,
};

/// The framebuffer seen through the client's pixel format.
pub(crate) struct Source<'a, 'b> {
    pub(crate) fb: &'b Framebuffer<'a>,
    pub(crate) tr: &'b Translator,
    /// Bytes per wire pixel.
    pub(crate) bpp: usize,
}

impl Source<'_, '_> {
    /// Loads a `w` × `h` block at `(x, y)` as packed wire pixels, row-major, into `dst`.
    #[inline]
    pub(crate) fn load(&self, x: u16, y: u16, w: u16, h: u16, dst: &mut [u32]) {
        let w = usize::from(w);
        let fbpp = self.fb.format().bytes_per_pixel();
        for (row, d) in (y..y + h).zip(dst.chunks_exact_mut(w)) {
            let src = self.fb.row(x, row, w as u16);
            if self.tr.is_identity() {
                match fbpp {
                    4 => {
                        for (o, s) in d.iter_mut().zip(src.chunks_exact(4)) {
                            *o = u32::from_ne_bytes([s[0], s[1], s[2], s[3]]);
                        }
                    }
                    2 => {
                        for (o, s) in d.iter_mut().zip(src.chunks_exact(2)) {
                            *o = u32::from_ne_bytes([s[0], s[1], 0, 0]);
                        }
                    }
                    _ => {
                        for (o, s) in d.iter_mut().zip(src.iter()) {
                            *o = pack(core::slice::from_ref(s), 1);
                        }
                    }
                }
            } else {
                for (o, s) in d.iter_mut().zip(src.chunks_exact(fbpp)) {
                    *o = self.tr.packed(s);
                }
            }
        }
    }

    /// Loads a `w` × `h` (≤ 16 × 16) block at `(x, y)` as a Hextile [`Tile`] (16 per row).
    #[inline]
    pub(crate) fn load_tile(&self, x: u16, y: u16, w: u16, h: u16, t: &mut Tile) {
        for (row, d) in (y..y + h).zip(t.chunks_exact_mut(16)) {
            self.load(x, row, w, 1, &mut d[..usize::from(w)]);
        }
    }

    /// Writes `w` pixels of row `y` from `x` in wire format into `out` (exactly `w * bpp` bytes).
    #[inline]
    pub(crate) fn write_row(&self, x: u16, y: u16, w: u16, out: &mut [u8]) {
        self.tr.row(self.fb.row(x, y, w), out);
    }

    /// One packed wire pixel.
    #[inline]
    pub(crate) fn pixel(&self, x: u16, y: u16) -> u32 {
        self.tr.packed(self.fb.row(x, y, 1))
    }
}

#[inline]
pub(crate) fn put_px(out: &mut [u8], p: u32, bpp: usize) {
    // Fixed-size copies: a variable-length one is a memcpy call per pixel.
    let b = unpack(p);
    match bpp {
        4 => out[..4].copy_from_slice(&b),
        2 => out[..2].copy_from_slice(&b[..2]),
        _ => out[0] = b[0],
    }
}

// ---------------------------------------------------------------------------------------------
// Hextile (the layout and the sub-encoding bits are in `wire::hextile`)

/// Background/foreground carried from the previous tile of the same rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct HextileCarry {
    pub(crate) bg: Option<u32>,
    pub(crate) fg: Option<u32>,
}

/// Largest encoding of one tile at `bpp` (the raw form).
pub(crate) const fn hextile_max(bpp: usize) -> usize {
    1 + 256 * bpp
}

/// A Hextile tile: packed pixels at 16 per row (only `w` × `h` of them in use). The fixed size
/// and masked indices let the compiler drop the bounds checks in the loops below.
pub(crate) type Tile = [u32; 256];

#[inline(always)]
fn at(x: usize, y: usize) -> usize {
    (y * 16 + x) & 255
}

/// Finds the sub-rectangle of colour `c` starting at `(x, y)` (pixels already sent are
/// painted over with the background, which is never `c`): the larger of the right-then-down
/// and down-then-right extents, found in one pass down the column.
#[inline]
fn subrect(t: &Tile, w: usize, h: usize, x: usize, y: usize, c: u32) -> (usize, usize) {
    // Right-then-down: the first row's run, extended while whole rows match under it.
    let mut hx = 0;
    let mut hy = y;
    let mut h_open = true;
    // Down-then-right: the column's extent, as wide as the narrowest run in it.
    let mut vx = w;
    let mut j = y;
    while j < h && t[at(x, j)] == c {
        let mut i = x + 1;
        while i < w && t[at(i, j)] == c {
            i += 1;
        }
        if j == y {
            hx = i;
        }
        vx = vx.min(i);
        if h_open && i >= hx {
            hy = j + 1;
        } else {
            h_open = false;
        }
        j += 1;
    }
    let (w1, h1) = (hx - x, hy - y);
    let (w2, h2) = (vx - x, j - y);
    if w2 * h2 > w1 * h1 {
        (w2, h2)
    } else {
        (w1, h1)
    }
}

/// A lower bound on the sub-rectangles still needed (sent ones are painted with `bg`): every
/// pixel that differs from its left and upper neighbours starts one.
fn corners(t: &Tile, w: usize, h: usize, bg: u32) -> usize {
    let mut n = 0;
    for y in 0..h {
        for x in 0..w {
            let p = t[at(x, y)];
            let left = x > 0 && t[at(x - 1, y)] == p;
            let up = y > 0 && t[at(x, y - 1)] == p;
            n += usize::from(p != bg && !left && !up);
        }
    }
    n
}

/// Encodes one tile (`w` × `h` packed pixels in `t`) into `out`, which must hold
/// [`hextile_max`]`(bpp)` bytes. Returns the bytes written, or `None` when the tile is best
/// sent raw: `t` has then been painted over (sent sub-rectangles become background), so the
/// caller reloads it and calls [`hextile_raw`].
pub(crate) fn hextile_tile(
    t: &mut Tile,
    w: usize,
    h: usize,
    bpp: usize,
    carry: &mut HextileCarry,
    out: &mut [u8],
) -> Option<usize> {
    let (w, h) = (w.clamp(1, 16), h.clamp(1, 16));
    let raw_len = 1 + w * h * bpp;
    // Solid tiles are the common case on a desktop: a branch-free check first.
    let first = t[0];
    let differs = if w == 16 && h == 16 {
        t.iter().fold(0u32, |acc, &p| acc | (p ^ first))
    } else {
        (0..h).fold(0u32, |acc, y| {
            t[at(0, y)..at(0, y) + w]
                .iter()
                .fold(acc, |a, &p| a | (p ^ first))
        })
    };
    if differs == 0 {
        let mut pos = 1;
        let mut mask = 0u8;
        if carry.bg != Some(first) {
            mask |= BACKGROUND_SPECIFIED;
            put_px(&mut out[1..], first, bpp);
            pos += bpp;
        }
        out[0] = mask;
        carry.bg = Some(first);
        return Some(pos);
    }
    // Colour census until a third colour shows up (then the tile has coloured sub-rectangles
    // and the background is the more frequent of the first two, the second on a tie, as in
    // libvncserver: counting every colour of every tile cost half the encoding time and saved
    // nothing on desktop content).
    let mut colours = [first, 0];
    let mut counts = [0u16; 2];
    let mut distinct = 1usize;
    let mut many = false;
    let mut third_at = 256;
    'census: for y in 0..h {
        for x in 0..w {
            let p = t[at(x, y)];
            if p == colours[0] {
                counts[0] += 1;
            } else if distinct == 2 && p == colours[1] {
                counts[1] += 1;
            } else if distinct == 1 {
                colours[1] = p;
                counts[1] = 1;
                distinct = 2;
            } else {
                many = true;
                third_at = y * w + x;
                break 'census;
            }
        }
    }
    let best = usize::from(distinct == 2 && counts[1] >= counts[0]);
    let bg = colours[best];

    let mut pos = 1usize;
    let mut mask = 0u8;
    if carry.bg != Some(bg) {
        mask |= BACKGROUND_SPECIFIED;
        put_px(&mut out[pos..], bg, bpp);
        pos += bpp;
    }
    let mono = distinct == 2 && !many;
    let fg = colours[1 - best];
    let mut new_fg = carry.fg;
    if mono {
        mask |= ANY_SUBRECTS;
        if carry.fg != Some(fg) {
            mask |= FOREGROUND_SPECIFIED;
            put_px(&mut out[pos..], fg, bpp);
            pos += bpp;
            new_fg = Some(fg);
        }
    } else {
        mask |= ANY_SUBRECTS | SUBRECTS_COLOURED;
        new_fg = None;
    }
    let count_at = pos;
    pos += 1;
    let cost = if mono { 2 } else { 2 + bpp };
    if third_at < 8 && pos + cost * corners(t, w, h, bg) >= raw_len {
        // Three colours in the first few pixels and too many sub-rectangles: noise.
        return None;
    }
    // Sent sub-rectangles are painted over with the background (which no sub-rectangle has).
    let mut count = 0usize;
    for y in 0..h {
        // The row's pixels that still need sending, one bit each (no branch per pixel).
        let mut todo = (0..w).fold(0u32, |m, x| m | (u32::from(t[at(x, y)] != bg) << x));
        while todo != 0 {
            if pos + cost >= raw_len {
                // Raw is no larger.
                return None;
            }
            if count == 64 && pos + cost * corners(t, w, h, bg) >= raw_len {
                // Noise: what is left needs at least that many more sub-rectangles.
                return None;
            }
            let x = todo.trailing_zeros() as usize;
            let c = t[at(x, y)];
            let (sw, sh) = subrect(t, w, h, x, y, c);
            for r in y..y + sh {
                for i in x..x + sw {
                    t[at(i, r)] = bg;
                }
            }
            todo &= !(((1u32 << sw) - 1) << x);
            if !mono {
                put_px(&mut out[pos..], c, bpp);
                pos += bpp;
            }
            out[pos] = subrect_xy(x as u8, y as u8);
            out[pos + 1] = subrect_wh(sw as u8, sh as u8);
            pos += 2;
            count += 1;
        }
    }
    out[0] = mask;
    out[count_at] = count as u8;
    carry.bg = Some(bg);
    carry.fg = new_fg;
    Some(pos)
}

/// A tile sent raw (`w` × `h` packed pixels in `t`); forgets the carried colours. Returns the
/// bytes written. (The encoder writes raw tiles straight from the framebuffer rows.)
#[cfg(test)]
fn hextile_raw(
    t: &Tile,
    w: usize,
    h: usize,
    bpp: usize,
    carry: &mut HextileCarry,
    out: &mut [u8],
) -> usize {
    out[0] = crate::wire::hextile::RAW;
    let mut pos = 1;
    for y in 0..h {
        for x in 0..w {
            put_px(&mut out[pos..], t[at(x, y)], bpp);
            pos += bpp;
        }
    }
    carry.bg = None;
    carry.fg = None;
    pos
}

// ---------------------------------------------------------------------------------------------
// RRE: one-row runs of equal non-background pixels.

/// Counts the sub-rectangles [`rre_next`] will produce for the rectangle.
pub(crate) fn rre_count(src: &Source<'_, '_>, x: u16, y: u16, w: u16, h: u16, bg: u32) -> u32 {
    let mut n = 0u32;
    let mut row = [0u32; 64];
    for yy in y..y + h {
        let mut prev: Option<u32> = None;
        let mut xx = x;
        while xx < x + w {
            let cw = (x + w - xx).min(64);
            src.load(xx, yy, cw, 1, &mut row[..usize::from(cw)]);
            for &p in &row[..usize::from(cw)] {
                if p != bg && prev != Some(p) {
                    n += 1;
                }
                prev = (p != bg).then_some(p);
            }
            xx += cw;
        }
    }
    n
}

/// Finds the run starting at or after `(cx, cy)` (rectangle-relative) in row-major order.
/// Returns `(colour, x, y, width)` and advances the cursor past it.
pub(crate) fn rre_next(
    src: &Source<'_, '_>,
    r: (u16, u16, u16, u16),
    bg: u32,
    cx: &mut u16,
    cy: &mut u16,
) -> Option<(u32, u16, u16, u16)> {
    let (x, y, w, h) = r;
    while *cy < h {
        while *cx < w {
            let p = src.pixel(x + *cx, y + *cy);
            if p == bg {
                *cx += 1;
                continue;
            }
            let start = *cx;
            *cx += 1;
            while *cx < w && src.pixel(x + *cx, y + *cy) == p {
                *cx += 1;
            }
            return Some((p, start, *cy, *cx - start));
        }
        *cx = 0;
        *cy += 1;
    }
    None
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::wire::hextile::RAW;

    /// The Hextile tile encoding written the slow, obvious way: a covered-pixel map over the
    /// original tile, both extents found by looking at every pixel, raw as soon as the
    /// sub-rectangles would not be smaller.
    fn reference(px: &[u32], w: usize, h: usize, bpp: usize, carry: &mut HextileCarry) -> Vec<u8> {
        let raw = |carry: &mut HextileCarry| {
            let mut o = std::vec![RAW];
            for &p in px {
                o.extend_from_slice(&unpack(p)[..bpp]);
            }
            carry.bg = None;
            carry.fg = None;
            o
        };
        let first = px[0];
        let mut o = std::vec![0u8];
        if px.iter().all(|&p| p == first) {
            if carry.bg != Some(first) {
                o[0] = BACKGROUND_SPECIFIED;
                o.extend_from_slice(&unpack(first)[..bpp]);
            }
            carry.bg = Some(first);
            return o;
        }
        // the first two colours, counted until a third shows up
        let mut cols: Vec<u32> = Vec::new();
        let mut counts = [0u32; 2];
        let mut many = false;
        for &p in px {
            match cols.iter().position(|&c| c == p) {
                Some(i) => counts[i] += 1,
                None if cols.len() < 2 => {
                    counts[cols.len()] = 1;
                    cols.push(p);
                }
                None => {
                    many = true;
                    break;
                }
            }
        }
        // the second colour on a tie, as libvncserver
        let bg = if counts[1] >= counts[0] {
            cols[1]
        } else {
            cols[0]
        };
        let mono = !many;
        let fg = if bg == cols[0] { cols[1] } else { cols[0] };
        let mut mask = ANY_SUBRECTS;
        if carry.bg != Some(bg) {
            mask |= BACKGROUND_SPECIFIED;
            o.extend_from_slice(&unpack(bg)[..bpp]);
        }
        let mut new_fg = None;
        if mono {
            new_fg = carry.fg;
            if carry.fg != Some(fg) {
                mask |= FOREGROUND_SPECIFIED;
                o.extend_from_slice(&unpack(fg)[..bpp]);
                new_fg = Some(fg);
            }
        } else {
            mask |= SUBRECTS_COLOURED;
        }
        let count_at = o.len();
        o.push(0);
        let raw_len = 1 + w * h * bpp;
        let cost = if mono { 2 } else { 2 + bpp };
        let mut covered = std::vec![false; w * h];
        let free = |covered: &[bool], x: usize, y: usize, c: u32| {
            px[y * w + x] == c && !covered[y * w + x]
        };
        let mut count = 0;
        for y in 0..h {
            for x in 0..w {
                let c = px[y * w + x];
                if c == bg || covered[y * w + x] {
                    continue;
                }
                if o.len() + cost >= raw_len {
                    return raw(carry);
                }
                // right, then down
                let mut x2 = x + 1;
                while x2 < w && free(&covered, x2, y, c) {
                    x2 += 1;
                }
                let mut y2 = y + 1;
                while y2 < h && (x..x2).all(|xx| free(&covered, xx, y2, c)) {
                    y2 += 1;
                }
                // down, then right
                let mut y3 = y + 1;
                while y3 < h && free(&covered, x, y3, c) {
                    y3 += 1;
                }
                let mut x3 = x + 1;
                while x3 < w && (y..y3).all(|yy| free(&covered, x3, yy, c)) {
                    x3 += 1;
                }
                let (sw, sh) = if (x3 - x) * (y3 - y) > (x2 - x) * (y2 - y) {
                    (x3 - x, y3 - y)
                } else {
                    (x2 - x, y2 - y)
                };
                for r in y..y + sh {
                    for i in x..x + sw {
                        covered[r * w + i] = true;
                    }
                }
                if !mono {
                    o.extend_from_slice(&unpack(c)[..bpp]);
                }
                o.push(((x as u8) << 4) | y as u8);
                o.push((((sw - 1) as u8) << 4) | (sh - 1) as u8);
                count += 1;
            }
        }
        o[0] = mask;
        o[count_at] = count;
        carry.bg = Some(bg);
        carry.fg = new_fg;
        o
    }

    /// The fast tile encoder gives the reference's bytes and carried colours, for tiles of
    /// every size from flat to noise, in a row of tiles (so carried colours matter).
    #[test]
    fn hextile_matches_the_reference() {
        let mut rng = 0x1234_5678u32;
        let mut next = move || {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            rng
        };
        for bpp in [1usize, 2, 4] {
            let (mut fast_carry, mut ref_carry) =
                (HextileCarry::default(), HextileCarry::default());
            for case in 0..3000 {
                let w = 1 + (next() % 16) as usize;
                let h = 1 + (next() % 16) as usize;
                let colours = [1, 2, 3, 4, 8, 200][case % 6];
                let palette: Vec<u32> = (0..colours)
                    .map(|_| next() & ((1u64 << (8 * bpp)) - 1) as u32)
                    .collect();
                let flat = next() % 4;
                let mut px = Vec::new();
                for _ in 0..w * h {
                    let i = if next() % 4 < flat {
                        0
                    } else {
                        next() as usize % colours
                    };
                    px.push(palette[i]);
                }
                let want = reference(&px, w, h, bpp, &mut ref_carry);
                let mut t: Tile = [0; 256];
                for y in 0..h {
                    t[y * 16..y * 16 + w].copy_from_slice(&px[y * w..y * w + w]);
                }
                let mut out = std::vec![0u8; hextile_max(bpp)];
                let got = match hextile_tile(&mut t, w, h, bpp, &mut fast_carry, &mut out) {
                    Some(n) => out[..n].to_vec(),
                    None => {
                        for y in 0..h {
                            t[y * 16..y * 16 + w].copy_from_slice(&px[y * w..y * w + w]);
                        }
                        let n = hextile_raw(&t, w, h, bpp, &mut fast_carry, &mut out);
                        out[..n].to_vec()
                    }
                };
                assert_eq!(
                    got, want,
                    "case {case}: {w}x{h}, {colours} colours, bpp {bpp}"
                );
                assert_eq!(fast_carry, ref_carry, "case {case}");
            }
        }
    }
}
