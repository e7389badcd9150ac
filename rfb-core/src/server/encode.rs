//! Pixel encoders working on packed wire pixels (see `pixel::pack`): Raw rows, RRE runs and
//! Hextile tiles. All are allocation-free and write into caller-provided buffers.

use crate::pixel::{Framebuffer, Translator, pack, unpack};

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
    out[..bpp].copy_from_slice(&unpack(p)[..bpp]);
}

// ---------------------------------------------------------------------------------------------
// Hextile

pub(crate) const HEXTILE_RAW: u8 = 1;
pub(crate) const HEXTILE_BG: u8 = 2;
pub(crate) const HEXTILE_FG: u8 = 4;
pub(crate) const HEXTILE_ANY: u8 = 8;
pub(crate) const HEXTILE_COLOURED: u8 = 16;

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

/// Finds the sub-rectangle of colour `c` starting at `(x, y)`: the larger of the
/// right-then-down and down-then-right extents over uncovered pixels.
#[inline]
fn subrect(
    px: &[u32],
    w: usize,
    h: usize,
    covered: &[u16; 16],
    x: usize,
    y: usize,
    c: u32,
) -> (usize, usize) {
    let same = |xx: usize, yy: usize| px[yy * w + xx] == c && covered[yy] & (1 << xx) == 0;
    // Right, then down.
    let mut x2 = x + 1;
    while x2 < w && same(x2, y) {
        x2 += 1;
    }
    let mut y2 = y + 1;
    'rows: while y2 < h {
        for xx in x..x2 {
            if !same(xx, y2) {
                break 'rows;
            }
        }
        y2 += 1;
    }
    let (w1, h1) = (x2 - x, y2 - y);
    // Down, then right.
    let mut y3 = y + 1;
    while y3 < h && same(x, y3) {
        y3 += 1;
    }
    let mut x3 = x + 1;
    'cols: while x3 < w {
        for yy in y..y3 {
            if !same(x3, yy) {
                break 'cols;
            }
        }
        x3 += 1;
    }
    let (w2, h2) = (x3 - x, y3 - y);
    if w2 * h2 > w1 * h1 {
        (w2, h2)
    } else {
        (w1, h1)
    }
}

/// Encodes one tile of packed pixels (`w` × `h`, row-major) into `out`, which must hold
/// [`hextile_max`]`(bpp)` bytes. Returns the bytes written.
pub(crate) fn hextile_tile(
    px: &[u32],
    w: usize,
    h: usize,
    bpp: usize,
    carry: &mut HextileCarry,
    out: &mut [u8],
) -> usize {
    let n = w * h;
    let px = &px[..n];
    let raw_len = 1 + n * bpp;
    // Solid tiles are the common case on a desktop: a branch-free check first.
    let first = px[0];
    if px.iter().fold(0u32, |acc, &p| acc | (p ^ first)) == 0 {
        let mut pos = 1;
        let mut mask = 0u8;
        if carry.bg != Some(first) {
            mask |= HEXTILE_BG;
            put_px(&mut out[1..], first, bpp);
            pos += bpp;
        }
        out[0] = mask;
        carry.bg = Some(first);
        return pos;
    }
    // Colour census: up to 8 distinct colours with counts.
    let mut colours = [0u32; 8];
    let mut counts = [0u16; 8];
    let mut distinct = 1usize;
    colours[0] = first;
    let mut many = false;
    let mut last_idx = 0usize;
    for &p in px {
        if p == colours[last_idx] {
            counts[last_idx] += 1;
            continue;
        }
        match colours[..distinct].iter().position(|&c| c == p) {
            Some(i) => {
                counts[i] += 1;
                last_idx = i;
            }
            None if distinct < 8 => {
                colours[distinct] = p;
                counts[distinct] = 1;
                last_idx = distinct;
                distinct += 1;
            }
            None => {
                many = true;
                break;
            }
        }
    }
    let best = (0..distinct).max_by_key(|&i| counts[i]).unwrap_or(0);
    let bg = colours[best];

    let mut pos = 1usize;
    let mut mask = 0u8;
    if carry.bg != Some(bg) {
        mask |= HEXTILE_BG;
        put_px(&mut out[pos..], bg, bpp);
        pos += bpp;
    }
    if distinct == 1 {
        out[0] = mask;
        carry.bg = Some(bg);
        return pos;
    }
    let mono = distinct == 2 && !many;
    let fg = colours[1 - best.min(1)];
    let mut new_fg = carry.fg;
    if mono {
        mask |= HEXTILE_ANY;
        if carry.fg != Some(fg) {
            mask |= HEXTILE_FG;
            put_px(&mut out[pos..], fg, bpp);
            pos += bpp;
            new_fg = Some(fg);
        }
    } else {
        mask |= HEXTILE_ANY | HEXTILE_COLOURED;
        new_fg = None;
    }
    let count_at = pos;
    pos += 1;
    let cost = if mono { 2 } else { 2 + bpp };
    let mut covered = [0u16; 16];
    let mut count = 0usize;
    let mut too_big = false;
    'scan: for y in 0..h {
        let row = &px[y * w..y * w + w];
        let mut x = 0;
        while x < w {
            let c = row[x];
            if c == bg || covered[y] & (1 << x) != 0 {
                x += 1;
                continue;
            }
            if pos + cost >= raw_len {
                too_big = true;
                break 'scan;
            }
            let (sw, sh) = subrect(px, w, h, &covered, x, y, c);
            let bits = (((1u32 << sw) - 1) << x) as u16;
            for r in &mut covered[y..y + sh] {
                *r |= bits;
            }
            if !mono {
                put_px(&mut out[pos..], c, bpp);
                pos += bpp;
            }
            out[pos] = ((x as u8) << 4) | y as u8;
            out[pos + 1] = (((sw - 1) as u8) << 4) | (sh - 1) as u8;
            pos += 2;
            count += 1;
            x += sw;
        }
    }
    if too_big {
        out[0] = HEXTILE_RAW;
        for (i, &p) in px.iter().enumerate() {
            put_px(&mut out[1 + i * bpp..], p, bpp);
        }
        carry.bg = None;
        carry.fg = None;
        return raw_len;
    }
    out[0] = mask;
    out[count_at] = count as u8;
    carry.bg = Some(bg);
    carry.fg = new_fg;
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
