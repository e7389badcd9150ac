//! Streaming rectangle decoders. Each consumes whole wire elements only (a pixel, a sub-rectangle,
//! a tile header) and writes into the application's framebuffer through [`Sink`], clipped to it.

use crate::error::ProtocolError;
use crate::pixel::{FramebufferMut, Translator, read_value, write_value};
use crate::wire::hextile::{
    ANY_SUBRECTS, BACKGROUND_SPECIFIED, FOREGROUND_SPECIFIED, RAW, SUBRECTS_COLOURED, TILE_SIZE,
    parse_subrect,
};
use crate::wire::{Rect, rre};

/// The application's framebuffer seen through the wire pixel format.
pub(crate) struct Sink<'a, 'f> {
    pub(crate) fb: &'a mut FramebufferMut<'f>,
    /// Wire → framebuffer; `None` when the framebuffer is empty.
    pub(crate) tr: Option<Translator>,
    /// Bytes per wire pixel.
    pub(crate) bpp: usize,
}

impl Sink<'_, '_> {
    /// The framebuffer bytes of one wire pixel.
    #[inline]
    pub(crate) fn convert(&self, wire: &[u8]) -> [u8; 4] {
        let mut out = [0u8; 4];
        if let Some(tr) = &self.tr {
            if tr.is_identity() {
                out[..self.bpp].copy_from_slice(&wire[..self.bpp]);
            } else {
                let f = tr.from_format();
                let t = tr.to_format();
                let v = tr.value(read_value(wire, self.bpp, f.big_endian));
                write_value(&mut out, v, t.bytes_per_pixel(), t.big_endian);
            }
        }
        out
    }

    /// Writes a run of wire pixels starting at `(x, y)` on one row (clipped).
    #[inline]
    pub(crate) fn put_row(&mut self, x: u16, y: u16, wire: &[u8]) {
        let Some(tr) = &self.tr else { return };
        let (fw, fh) = (self.fb.width(), self.fb.height());
        if y >= fh || x >= fw {
            return;
        }
        let n = (wire.len() / self.bpp).min(usize::from(fw - x));
        let tb = self.fb.format().bytes_per_pixel();
        let dst = self.fb.row_mut(x, y, n as u16);
        debug_assert_eq!(dst.len(), n * tb);
        tr.row(&wire[..n * self.bpp], dst);
    }

    /// Fills `r` with one wire pixel (clipped).
    #[inline]
    pub(crate) fn fill(&mut self, r: Rect, wire: &[u8]) {
        if self.tr.is_none() {
            return;
        }
        let px = self.convert(wire);
        let tb = self.fb.format().bytes_per_pixel();
        self.fb.fill(r, &px[..tb]);
    }

    /// Copies a `dst`-sized area from `(sx, sy)` (clipped).
    pub(crate) fn copy(&mut self, dst: Rect, sx: u16, sy: u16) {
        if self.tr.is_some() {
            self.fb.copy_within(dst, sx, sy);
        }
    }
}

/// Hextile decoding state inside one rectangle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hextile {
    tx: u16,
    ty: u16,
    tile: TileState,
    bg: Option<[u8; 4]>,
    fg: Option<[u8; 4]>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TileState {
    Start,
    Raw { i: u16 },
    Subrects { remaining: u8, coloured: bool },
}

impl Hextile {
    pub(crate) const fn new() -> Self {
        Self {
            tx: 0,
            ty: 0,
            tile: TileState::Start,
            bg: None,
            fg: None,
        }
    }

    fn tile_rect(&self, r: &Rect) -> Rect {
        let x = r.x + self.tx * TILE_SIZE;
        let y = r.y + self.ty * TILE_SIZE;
        Rect::new(
            x,
            y,
            (r.x + r.width - x).min(TILE_SIZE),
            (r.y + r.height - y).min(TILE_SIZE),
        )
    }

    fn next_tile(&mut self, r: &Rect) {
        self.tile = TileState::Start;
        self.tx += 1;
        if self.tx == r.width.div_ceil(TILE_SIZE) {
            self.tx = 0;
            self.ty += 1;
        }
    }

    /// Decodes as much as `input` allows. Returns `(consumed, rectangle finished)`.
    pub(crate) fn decode(
        &mut self,
        r: &Rect,
        input: &[u8],
        sink: &mut Sink<'_, '_>,
    ) -> Result<(usize, bool), ProtocolError> {
        let bpp = sink.bpp;
        let mut pos = 0;
        let tiles_y = r.height.div_ceil(TILE_SIZE);
        loop {
            if self.ty >= tiles_y {
                return Ok((pos, true));
            }
            let t = self.tile_rect(r);
            let inp = &input[pos..];
            match self.tile {
                TileState::Start => {
                    let Some(&mask) = inp.first() else {
                        return Ok((pos, false));
                    };
                    if mask & RAW != 0 {
                        self.tile = TileState::Raw { i: 0 };
                        self.bg = None;
                        self.fg = None;
                        pos += 1;
                        continue;
                    }
                    let bg_spec = mask & BACKGROUND_SPECIFIED != 0;
                    let fg_spec = mask & FOREGROUND_SPECIFIED != 0;
                    let any = mask & ANY_SUBRECTS != 0;
                    let coloured = mask & SUBRECTS_COLOURED != 0;
                    let mut need = 1;
                    if bg_spec {
                        need += bpp;
                    }
                    if fg_spec {
                        need += bpp;
                    }
                    if any {
                        need += 1;
                    }
                    if inp.len() < need {
                        return Ok((pos, false));
                    }
                    let mut at = 1;
                    if bg_spec {
                        let mut b = [0u8; 4];
                        b[..bpp].copy_from_slice(&inp[at..at + bpp]);
                        self.bg = Some(b);
                        at += bpp;
                    }
                    if fg_spec {
                        let mut b = [0u8; 4];
                        b[..bpp].copy_from_slice(&inp[at..at + bpp]);
                        self.fg = Some(b);
                        at += bpp;
                    }
                    let bg = self.bg.ok_or(ProtocolError::MalformedHextile)?;
                    sink.fill(t, &bg[..bpp]);
                    let count = if any { inp[at] } else { 0 };
                    pos += need;
                    if coloured {
                        self.fg = None;
                    } else if count > 0 && self.fg.is_none() {
                        return Err(ProtocolError::MalformedHextile);
                    }
                    if count > 0 {
                        self.tile = TileState::Subrects {
                            remaining: count,
                            coloured,
                        };
                    } else {
                        self.next_tile(r);
                    }
                }
                TileState::Raw { i } => {
                    let total = t.width * t.height;
                    let avail = (inp.len() / bpp) as u32;
                    if avail == 0 {
                        return Ok((pos, false));
                    }
                    let mut i = i;
                    let mut used = 0usize;
                    while i < total && (used / bpp) < avail as usize {
                        let x = i % t.width;
                        let y = i / t.width;
                        let n = (t.width - x).min((avail as usize - used / bpp) as u16);
                        let bytes = usize::from(n) * bpp;
                        sink.put_row(t.x + x, t.y + y, &inp[used..used + bytes]);
                        used += bytes;
                        i += n;
                    }
                    pos += used;
                    if i == total {
                        self.next_tile(r);
                    } else {
                        self.tile = TileState::Raw { i };
                    }
                }
                TileState::Subrects {
                    remaining,
                    coloured,
                } => {
                    let len = if coloured { bpp + 2 } else { 2 };
                    if inp.len() < len {
                        return Ok((pos, false));
                    }
                    let (px, xy, wh) = if coloured {
                        (&inp[..bpp], inp[bpp], inp[bpp + 1])
                    } else {
                        (&[][..], inp[0], inp[1])
                    };
                    let (sx, sy, sw, sh) = parse_subrect(xy, wh);
                    if sx + sw > t.width || sy + sh > t.height {
                        return Err(ProtocolError::SubrectangleOutOfBounds);
                    }
                    let sub = Rect::new(t.x + sx, t.y + sy, sw, sh);
                    if coloured {
                        sink.fill(sub, px);
                    } else {
                        let fg = self.fg.ok_or(ProtocolError::MalformedHextile)?;
                        sink.fill(sub, &fg[..bpp]);
                    }
                    pos += len;
                    if remaining > 1 {
                        self.tile = TileState::Subrects {
                            remaining: remaining - 1,
                            coloured,
                        };
                    } else {
                        self.next_tile(r);
                    }
                }
            }
        }
    }
}

/// Raw decoding: writes whole pixels as they arrive. Returns `(consumed, finished)`.
pub(crate) fn raw(
    r: &Rect,
    x: &mut u16,
    y: &mut u16,
    input: &[u8],
    sink: &mut Sink<'_, '_>,
) -> (usize, bool) {
    let bpp = sink.bpp;
    let mut pos = 0;
    while *y < r.height {
        let avail = ((input.len() - pos) / bpp).min(usize::from(r.width - *x)) as u16;
        if avail == 0 {
            break;
        }
        let n = usize::from(avail) * bpp;
        sink.put_row(r.x + *x, r.y + *y, &input[pos..pos + n]);
        pos += n;
        *x += avail;
        if *x == r.width {
            *x = 0;
            *y += 1;
        }
    }
    (pos, *y >= r.height)
}

/// RRE sub-rectangles after the header. Returns `(consumed, finished)`.
pub(crate) fn rre(
    r: &Rect,
    remaining: &mut u32,
    input: &[u8],
    sink: &mut Sink<'_, '_>,
) -> Result<(usize, bool), ProtocolError> {
    let bpp = sink.bpp;
    let len = rre::subrect_len(bpp);
    let mut pos = 0;
    while *remaining > 0 && input.len() - pos >= len {
        let s = &input[pos..pos + len];
        let sub = rre::parse_subrect_geometry(s, bpp);
        if !sub.fits_in(r.width, r.height) {
            return Err(ProtocolError::SubrectangleOutOfBounds);
        }
        sink.fill(
            Rect::new(r.x + sub.x, r.y + sub.y, sub.width, sub.height),
            &s[..bpp],
        );
        pos += len;
        *remaining -= 1;
    }
    Ok((pos, *remaining == 0))
}
