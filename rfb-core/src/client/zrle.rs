//! ZRLE decoding (`alloc`): the rectangle's zlib bytes are inflated as they arrive into a bounded
//! buffer and parsed tile element by tile element; one zlib stream per connection.

use alloc::boxed::Box;
use alloc::vec::Vec;

use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZFlush};

use super::decode::Sink;
use crate::error::ProtocolError;
use crate::wire::zrle::{
    LENGTH_LEN, MAX_PALETTE, PALETTE_RUN, Subencoding, TILE_SIZE, packed_index_bits,
    parse_run_length,
};
use crate::wire::{Rect, be32};

/// Decompressed bytes kept at most (plus one inflate step).
const CHUNK: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tile {
    Start,
    Raw { i: usize },
    Packed { row: u16 },
    Rle { i: usize },
    PaletteRle { i: usize },
}

/// Per-connection ZRLE decoder.
pub(crate) struct ZrleDecoder {
    inflate: Box<InflateState>,
    /// Decompressed bytes `start..end` wait to be parsed; the buffer keeps its length (two
    /// chunks) so that small reads do not clear 32 KiB again and again.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    rect: Rect,
    bpp: usize,
    cpb: usize,
    coff: usize,
    /// Compressed bytes of this rectangle still to come (`None` before the length word).
    zlib_left: Option<u32>,
    tx: u16,
    ty: u16,
    tile: Tile,
    palette: [[u8; 4]; MAX_PALETTE + 1],
    plen: usize,
}

impl core::fmt::Debug for ZrleDecoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("ZrleDecoder")
    }
}

impl ZrleDecoder {
    pub(crate) fn new() -> Self {
        Self {
            inflate: InflateState::new_boxed(DataFormat::Zlib),
            buf: alloc::vec![0; 2 * CHUNK],
            start: 0,
            end: 0,
            rect: Rect::default(),
            bpp: 4,
            cpb: 4,
            coff: 0,
            zlib_left: None,
            tx: 0,
            ty: 0,
            tile: Tile::Start,
            palette: [[0; 4]; MAX_PALETTE + 1],
            plen: 0,
        }
    }

    /// Starts a rectangle.
    pub(crate) fn start(&mut self, r: Rect, bpp: usize, (cpb, coff): (usize, usize)) {
        self.rect = r;
        self.bpp = bpp;
        self.cpb = cpb;
        self.coff = coff;
        self.zlib_left = None;
        self.tx = 0;
        self.ty = 0;
        self.tile = Tile::Start;
        self.start = 0;
        self.end = 0;
    }

    /// The most zlib bytes this rectangle can take: twice the largest tile data it can have
    /// (every pixel a one-pixel run after a full palette), plus 4 KiB. A longer length is a
    /// server that wants the client to wait for (or inflate) data no encoder produces.
    fn max_zlib_len(&self) -> u64 {
        let r = &self.rect;
        let tiles =
            u64::from(r.width.div_ceil(TILE_SIZE)) * u64::from(r.height.div_ceil(TILE_SIZE));
        let cpb = self.cpb as u64;
        let data = tiles * (1 + 128 * cpb) + u64::from(r.area()) * (cpb + 1);
        2 * data + 4096
    }

    fn tiles_done(&self) -> bool {
        self.rect.is_empty() || self.ty >= self.rect.height.div_ceil(TILE_SIZE)
    }

    fn tile_rect(&self) -> Rect {
        let r = &self.rect;
        let x = r.x + self.tx * TILE_SIZE;
        let y = r.y + self.ty * TILE_SIZE;
        Rect::new(
            x,
            y,
            (r.x + r.width - x).min(TILE_SIZE),
            (r.y + r.height - y).min(TILE_SIZE),
        )
    }

    fn next_tile(&mut self) {
        self.tile = Tile::Start;
        self.tx += 1;
        if self.tx == self.rect.width.div_ceil(TILE_SIZE) {
            self.tx = 0;
            self.ty += 1;
        }
    }

    #[inline]
    fn wire_px(&self, c: &[u8]) -> [u8; 4] {
        let mut w = [0u8; 4];
        if self.cpb == self.bpp {
            w[..self.bpp].copy_from_slice(&c[..self.bpp]);
        } else {
            w[self.coff..self.coff + self.cpb].copy_from_slice(&c[..self.cpb]);
        }
        w
    }

    /// Fills pixels `i .. i + len` (row-major) of tile `t` with `px`.
    fn fill_span(sink: &mut Sink<'_, '_>, t: &Rect, i: usize, len: usize, px: &[u8]) {
        let w = usize::from(t.width);
        let mut i = i;
        let end = i + len;
        while i < end {
            let x = i % w;
            let n = (w - x).min(end - i);
            sink.fill(
                Rect::new(t.x + x as u16, t.y + (i / w) as u16, n as u16, 1),
                px,
            );
            i += n;
        }
    }

    /// Parses as many tile elements as the decompressed bytes allow.
    fn parse(&mut self, sink: &mut Sink<'_, '_>) -> Result<(), ProtocolError> {
        use ProtocolError::MalformedZrle as Bad;
        let (bpp, cpb) = (self.bpp, self.cpb);
        while !self.tiles_done() {
            let t = self.tile_rect();
            let total = usize::from(t.width) * usize::from(t.height);
            let b = &self.buf[self.start..self.end];
            match self.tile {
                Tile::Start => {
                    let Some(&byte) = b.first() else {
                        return Ok(());
                    };
                    let sub = Subencoding::from(byte);
                    let next = match sub {
                        Subencoding::Raw => Tile::Raw { i: 0 },
                        // Filled from the palette below.
                        Subencoding::Solid => Tile::Start,
                        Subencoding::PlainRle => Tile::Rle { i: 0 },
                        Subencoding::PackedPalette(_) => Tile::Packed { row: 0 },
                        Subencoding::PaletteRle(_) => Tile::PaletteRle { i: 0 },
                        Subencoding::Invalid(_) => return Err(Bad),
                    };
                    let plen = sub.palette_len();
                    if b.len() < 1 + plen * cpb {
                        return Ok(());
                    }
                    for k in 0..plen {
                        self.palette[k] = self.wire_px(&b[1 + k * cpb..]);
                    }
                    self.plen = plen;
                    self.start += 1 + plen * cpb;
                    if sub == Subencoding::Solid {
                        let px = self.palette[0];
                        sink.fill(t, &px[..bpp]);
                        self.next_tile();
                    } else {
                        self.tile = next;
                    }
                }
                Tile::Raw { i } => {
                    let n = (b.len() / cpb).min(total - i);
                    if n == 0 {
                        return Ok(());
                    }
                    let mut row = [0u8; TILE_SIZE as usize * 4];
                    let w = usize::from(t.width);
                    let mut k = 0;
                    while k < n {
                        let pi = i + k;
                        let x = pi % w;
                        let seg = (w - x).min(n - k);
                        for s in 0..seg {
                            let px = self.wire_px(&b[(k + s) * cpb..]);
                            row[s * bpp..s * bpp + bpp].copy_from_slice(&px[..bpp]);
                        }
                        sink.put_row(t.x + x as u16, t.y + (pi / w) as u16, &row[..seg * bpp]);
                        k += seg;
                    }
                    self.start += n * cpb;
                    if i + n == total {
                        self.next_tile();
                    } else {
                        self.tile = Tile::Raw { i: i + n };
                    }
                }
                Tile::Packed { row } => {
                    let bits = packed_index_bits(self.plen);
                    let w = usize::from(t.width);
                    let row_len = (w * bits).div_ceil(8);
                    if b.len() < row_len {
                        return Ok(());
                    }
                    let mut out = [0u8; TILE_SIZE as usize * 4];
                    for x in 0..w {
                        let bit = x * bits;
                        let idx = usize::from(
                            (b[bit / 8] >> (8 - bits - bit % 8)) & ((1 << bits) - 1) as u8,
                        );
                        if idx >= self.plen {
                            return Err(Bad);
                        }
                        out[x * bpp..x * bpp + bpp].copy_from_slice(&self.palette[idx][..bpp]);
                    }
                    sink.put_row(t.x, t.y + row, &out[..w * bpp]);
                    self.start += row_len;
                    if row + 1 == t.height {
                        self.next_tile();
                    } else {
                        self.tile = Tile::Packed { row: row + 1 };
                    }
                }
                Tile::Rle { i } => {
                    if b.len() < cpb + 1 {
                        return Ok(());
                    }
                    let Some((len, n)) = parse_run_length(&b[cpb..]) else {
                        return Ok(());
                    };
                    if i + len > total {
                        return Err(Bad);
                    }
                    let px = self.wire_px(b);
                    Self::fill_span(sink, &t, i, len, &px[..bpp]);
                    self.start += cpb + n;
                    if i + len == total {
                        self.next_tile();
                    } else {
                        self.tile = Tile::Rle { i: i + len };
                    }
                }
                Tile::PaletteRle { i } => {
                    let Some(&v) = b.first() else { return Ok(()) };
                    let idx = usize::from(v & !PALETTE_RUN);
                    if idx >= self.plen {
                        return Err(Bad);
                    }
                    let (len, n) = if v & PALETTE_RUN == 0 {
                        (1, 1)
                    } else {
                        match parse_run_length(&b[1..]) {
                            Some((len, n)) => (len, n + 1),
                            None => return Ok(()),
                        }
                    };
                    if i + len > total {
                        return Err(Bad);
                    }
                    let px = self.palette[idx];
                    Self::fill_span(sink, &t, i, len, &px[..bpp]);
                    self.start += n;
                    if i + len == total {
                        self.next_tile();
                    } else {
                        self.tile = Tile::PaletteRle { i: i + len };
                    }
                }
            }
        }
        Ok(())
    }

    /// Inflates `input` (compressed bytes of this rectangle) into the buffer; returns
    /// `(consumed, produced)`.
    fn inflate_some(&mut self, input: &[u8]) -> Result<(usize, usize), ProtocolError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        // The caller keeps the backlog under one chunk, so a whole chunk of room remains.
        let at = self.end;
        let room = (self.buf.len() - at).min(CHUNK);
        let res = inflate(
            &mut self.inflate,
            input,
            &mut self.buf[at..at + room],
            MZFlush::None,
        );
        self.end = at + res.bytes_written;
        match res.status {
            Ok(_) | Err(miniz_oxide::MZError::Buf) => Ok((res.bytes_consumed, res.bytes_written)),
            Err(_) => Err(ProtocolError::ZlibError),
        }
    }

    /// Consumes as much of `input` as belongs to this rectangle. Returns `(consumed, finished)`.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        sink: &mut Sink<'_, '_>,
    ) -> Result<(usize, bool), ProtocolError> {
        let mut pos = 0;
        let left = match self.zlib_left {
            Some(l) => l,
            None => {
                if input.len() < LENGTH_LEN {
                    return Ok((0, false));
                }
                pos = LENGTH_LEN;
                let l = be32(input, 0);
                if u64::from(l) > self.max_zlib_len() {
                    return Err(ProtocolError::MalformedZrle);
                }
                self.zlib_left = Some(l);
                l
            }
        };
        let mut left = left as usize;
        loop {
            self.parse(sink)?;
            if self.tiles_done() && self.start < self.end {
                return Err(ProtocolError::MalformedZrle);
            }
            // Keep the decompressed backlog bounded: parse before inflating more.
            if self.end - self.start >= CHUNK {
                return Err(ProtocolError::MalformedZrle);
            }
            let take = left.min(input.len() - pos);
            let (used, produced) = self.inflate_some(&input[pos..pos + take])?;
            pos += used;
            left -= used;
            self.zlib_left = Some(left as u32);
            if used == 0 && produced == 0 {
                break;
            }
        }
        self.parse(sink)?;
        if self.tiles_done() && self.start < self.end {
            return Err(ProtocolError::MalformedZrle);
        }
        if left == 0 {
            if !self.tiles_done() {
                return Err(ProtocolError::MalformedZrle);
            }
            return Ok((pos, true));
        }
        Ok((pos, false))
    }
}
