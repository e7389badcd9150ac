//! Tight decoding (`alloc`): the control byte (with its zlib stream resets), Fill, JPEG through
//! the client's [`JpegDecoder`], and Basic compression with the copy, palette and gradient
//! filters over four zlib streams per connection.
//!
//! Bounds: a rectangle (other than Fill) is at most [`MAX_WIDTH`] wide; the filtered data has
//! exactly the size the rectangle and filter give, is inflated into a 64 KiB buffer and turned
//! into framebuffer rows as it comes (so no buffer grows with the rectangle), and a zlib length
//! may not exceed twice that size plus 1 KiB; more output than that size, or less, is an error.
//! A JPEG is collected whole (its compact length is at most 4 MiB) and decoded into a buffer of
//! the rectangle's size, which [`ClientLimits::max_jpeg_pixels`] bounds; the decoder refuses
//! an image of any other size from its header.
//!
//! [`ClientLimits::max_jpeg_pixels`]: super::ClientLimits::max_jpeg_pixels

use alloc::boxed::Box;
use alloc::vec::Vec;

use miniz_oxide::inflate::stream::{InflateState, inflate};
use miniz_oxide::{DataFormat, MZFlush};

use super::decode::Sink;
use crate::error::ProtocolError;
use crate::jpeg::JpegDecoder;
use crate::pixel::{read_value, write_value};
use crate::wire::tight::{
    Compression, FILTER_COPY, FILTER_GRADIENT, FILTER_PALETTE, MAX_WIDTH, MIN_TO_COMPRESS, STREAMS,
    parse_compact_len, resets, row_len, tpixel24,
};
use crate::wire::{PixelFormat, Rect};

/// Inflated bytes kept at most before they are parsed.
const CHUNK: usize = 32 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Filter {
    Copy,
    /// A palette of this many colours.
    Palette(usize),
    Gradient,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Control,
    Fill,
    JpegLength,
    Jpeg {
        len: usize,
    },
    FilterId {
        stream: usize,
    },
    PaletteSize {
        stream: usize,
    },
    Palette {
        stream: usize,
        n: usize,
        got: usize,
    },
    Data {
        stream: usize,
        filter: Filter,
    },
    Zlib {
        stream: usize,
        filter: Filter,
        left: usize,
    },
}

/// The wire pixel format as TPIXELs.
#[derive(Debug, Clone, Copy)]
struct Format {
    pf: PixelFormat,
    bpp: usize,
    t24: bool,
    tp: usize,
}

impl Format {
    fn new(pf: PixelFormat) -> Self {
        let t24 = tpixel24(&pf);
        let bpp = pf.bytes_per_pixel();
        Self {
            pf,
            bpp,
            t24,
            tp: if t24 { 3 } else { bpp },
        }
    }

    /// The wire pixel of channel values.
    #[inline]
    fn pack_channels(&self, c: [u32; 3], out: &mut [u8]) {
        let ch = self.pf.channels();
        let v = (c[0] << ch[0].1) | (c[1] << ch[1].1) | (c[2] << ch[2].1);
        write_value(out, v, self.bpp, self.pf.big_endian);
    }

    /// The wire pixel of a TPIXEL.
    #[inline]
    fn wire(&self, tp: &[u8], out: &mut [u8]) {
        if self.t24 {
            self.pack_channels([tp[0].into(), tp[1].into(), tp[2].into()], out);
        } else {
            out[..self.bpp].copy_from_slice(&tp[..self.bpp]);
        }
    }

    /// The channel values of a TPIXEL.
    #[inline]
    fn channels(&self, tp: &[u8]) -> [u32; 3] {
        if self.t24 {
            return [tp[0].into(), tp[1].into(), tp[2].into()];
        }
        let v = read_value(tp, self.bpp, self.pf.big_endian);
        let ch = self.pf.channels();
        [0, 1, 2].map(|i| (v >> ch[i].1) & u32::from(ch[i].0))
    }

    fn maxes(&self) -> [u32; 3] {
        self.pf.channels().map(|(m, _)| u32::from(m))
    }
}

/// Per-connection Tight decoder.
pub(crate) struct TightDecoder {
    streams: [Option<Box<InflateState>>; STREAMS],
    /// Inflated bytes `start..end` wait to be parsed.
    buf: Vec<u8>,
    start: usize,
    end: usize,
    rect: Rect,
    fmt: Format,
    phase: Phase,
    palette: [[u8; 4]; 256],
    /// Rows of the rectangle written so far.
    row: u16,
    /// Gradient: the previous and the current row's channel values.
    prev: Vec<u32>,
    cur: Vec<u32>,
    /// One row of wire pixels.
    line: Vec<u8>,
    jpeg: Vec<u8>,
    rgb: Vec<u8>,
    max_jpeg_pixels: u32,
}

impl core::fmt::Debug for TightDecoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TightDecoder")
    }
}

use ProtocolError::MalformedTight as Bad;

impl TightDecoder {
    pub(crate) fn new() -> Self {
        Self {
            streams: [None, None, None, None],
            buf: Vec::new(),
            start: 0,
            end: 0,
            rect: Rect::default(),
            fmt: Format::new(PixelFormat::RGB888),
            phase: Phase::Control,
            palette: [[0; 4]; 256],
            row: 0,
            prev: Vec::new(),
            cur: Vec::new(),
            line: Vec::new(),
            jpeg: Vec::new(),
            rgb: Vec::new(),
            max_jpeg_pixels: 0,
        }
    }

    /// Starts a rectangle in the wire format `pf`.
    pub(crate) fn start(&mut self, r: Rect, pf: PixelFormat, max_jpeg_pixels: u32) {
        self.rect = r;
        self.fmt = Format::new(pf);
        self.phase = Phase::Control;
        self.row = 0;
        self.start = 0;
        self.end = 0;
        self.max_jpeg_pixels = max_jpeg_pixels;
    }

    fn data_len(&self, filter: Filter) -> usize {
        let n = match filter {
            Filter::Palette(n) => n,
            _ => 0,
        };
        usize::from(self.rect.height) * row_len(self.rect.width, n, self.fmt.tp)
    }

    fn row_len(&self, filter: Filter) -> usize {
        let n = match filter {
            Filter::Palette(n) => n,
            _ => 0,
        };
        row_len(self.rect.width, n, self.fmt.tp)
    }

    fn rows_done(&self) -> bool {
        self.row >= self.rect.height
    }

    /// The first data step of the Basic compression: the buffers for the rows.
    fn begin_rows(&mut self, filter: Filter) {
        let w = usize::from(self.rect.width);
        self.line.clear();
        self.line.resize(w * self.fmt.bpp, 0);
        if filter == Filter::Gradient {
            self.prev.clear();
            self.prev.resize(w * 3, 0);
            self.cur.clear();
            self.cur.resize(w * 3, 0);
        }
    }

    /// Writes one row of filtered data (`b`: exactly one row) into the framebuffer.
    fn put_row(
        &mut self,
        filter: Filter,
        b: &[u8],
        sink: &mut Sink<'_, '_>,
    ) -> Result<(), ProtocolError> {
        let f = self.fmt;
        let w = usize::from(self.rect.width);
        let bpp = f.bpp;
        match filter {
            Filter::Copy => {
                for (o, tp) in self.line.chunks_exact_mut(bpp).zip(b.chunks_exact(f.tp)) {
                    f.wire(tp, o);
                }
            }
            Filter::Palette(n) if n <= 2 => {
                for (x, o) in self.line.chunks_exact_mut(bpp).enumerate() {
                    let i = usize::from((b[x / 8] >> (7 - x % 8)) & 1);
                    if i >= n {
                        return Err(Bad);
                    }
                    o.copy_from_slice(&self.palette[i][..bpp]);
                }
            }
            Filter::Palette(n) => {
                for (o, &i) in self.line.chunks_exact_mut(bpp).zip(b) {
                    let i = usize::from(i);
                    if i >= n {
                        return Err(Bad);
                    }
                    o.copy_from_slice(&self.palette[i][..bpp]);
                }
            }
            Filter::Gradient => {
                let max = f.maxes();
                for x in 0..w {
                    let d = f.channels(&b[x * f.tp..x * f.tp + f.tp]);
                    let mut v = [0u32; 3];
                    for c in 0..3 {
                        let left = if x > 0 { self.cur[(x - 1) * 3 + c] } else { 0 };
                        let up = self.prev[x * 3 + c];
                        let upleft = if x > 0 { self.prev[(x - 1) * 3 + c] } else { 0 };
                        let pred = (i64::from(left) + i64::from(up) - i64::from(upleft))
                            .clamp(0, i64::from(max[c])) as u32;
                        // Channel maxima are 2ⁿ − 1: the sum wraps within the channel.
                        v[c] = (d[c] + pred) & max[c];
                        self.cur[x * 3 + c] = v[c];
                    }
                    f.pack_channels(v, &mut self.line[x * bpp..x * bpp + bpp]);
                }
                core::mem::swap(&mut self.prev, &mut self.cur);
            }
        }
        sink.put_row(self.rect.x, self.rect.y + self.row, &self.line);
        self.row += 1;
        Ok(())
    }

    /// Writes as many whole rows as `self.buf` holds.
    fn parse_rows(&mut self, filter: Filter, sink: &mut Sink<'_, '_>) -> Result<(), ProtocolError> {
        let len = self.row_len(filter);
        while !self.rows_done() && self.end - self.start >= len {
            let buf = core::mem::take(&mut self.buf);
            let r = self.put_row(filter, &buf[self.start..self.start + len], sink);
            self.buf = buf;
            r?;
            self.start += len;
        }
        Ok(())
    }

    /// Inflates `input` through `stream` into `self.buf`, at most `room` bytes; returns
    /// `(consumed, produced)`.
    fn inflate_some(
        &mut self,
        stream: usize,
        input: &[u8],
        room: usize,
    ) -> Result<(usize, usize), ProtocolError> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() < 2 * CHUNK {
            self.buf.resize(2 * CHUNK, 0);
        }
        let at = self.end;
        let room = room.min(self.buf.len() - at).min(CHUNK);
        let z =
            self.streams[stream].get_or_insert_with(|| InflateState::new_boxed(DataFormat::Zlib));
        let res = inflate(z, input, &mut self.buf[at..at + room], MZFlush::None);
        self.end = at + res.bytes_written;
        match res.status {
            Ok(_) | Err(miniz_oxide::MZError::Buf) => Ok((res.bytes_consumed, res.bytes_written)),
            Err(_) => Err(ProtocolError::ZlibError),
        }
    }

    /// The zlib data of a Basic rectangle: `(consumed, finished)`.
    fn zlib(
        &mut self,
        stream: usize,
        filter: Filter,
        mut left: usize,
        input: &[u8],
        sink: &mut Sink<'_, '_>,
    ) -> Result<(usize, bool), ProtocolError> {
        let total = self.data_len(filter);
        let row = self.row_len(filter);
        let mut pos = 0;
        loop {
            self.parse_rows(filter, sink)?;
            let take = left.min(input.len() - pos);
            if self.rows_done() {
                if self.start < self.end {
                    return Err(Bad);
                }
                // The rest of the compressed bytes (the flush), and whatever the inflater
                // still holds, must inflate to nothing.
                let mut scratch = [0u8; 64];
                loop {
                    let take = left.min(input.len() - pos);
                    let z = self.streams[stream]
                        .get_or_insert_with(|| InflateState::new_boxed(DataFormat::Zlib));
                    let res = inflate(z, &input[pos..pos + take], &mut scratch, MZFlush::None);
                    let broken = matches!(res.status, Err(e) if e != miniz_oxide::MZError::Buf);
                    if res.bytes_written > 0 || broken {
                        return Err(Bad);
                    }
                    pos += res.bytes_consumed;
                    left -= res.bytes_consumed;
                    if left == 0 {
                        return Ok((pos, true));
                    }
                    if take == 0 {
                        self.phase = Phase::Zlib {
                            stream,
                            filter,
                            left,
                        };
                        return Ok((pos, false));
                    }
                    if res.bytes_consumed == 0 {
                        // Bytes after the end of the zlib stream.
                        return Err(Bad);
                    }
                }
            }
            let buffered = self.end - self.start;
            let wanted = total - usize::from(self.row) * row - buffered;
            let (used, produced) = self.inflate_some(stream, &input[pos..pos + take], wanted)?;
            pos += used;
            left -= used;
            if used == 0 && produced == 0 {
                if left == 0 || take > 0 {
                    // Every compressed byte is in and the rows are not, or the stream ended.
                    return Err(Bad);
                }
                self.phase = Phase::Zlib {
                    stream,
                    filter,
                    left,
                };
                return Ok((pos, false));
            }
        }
    }

    /// Consumes as much of `input` as belongs to this rectangle: `(consumed, finished)`.
    pub(crate) fn decode(
        &mut self,
        input: &[u8],
        sink: &mut Sink<'_, '_>,
        jpeg: Option<&mut (dyn JpegDecoder + 'static)>,
    ) -> Result<(usize, bool), ProtocolError> {
        let mut pos = 0;
        let mut jpeg = jpeg;
        loop {
            let inp = &input[pos..];
            match self.phase {
                Phase::Control => {
                    let Some(&ctl) = inp.first() else {
                        return Ok((pos, false));
                    };
                    pos += 1;
                    for (i, s) in self.streams.iter_mut().enumerate() {
                        if resets(ctl) & (1 << i) != 0
                            && let Some(z) = s
                        {
                            z.reset(DataFormat::Zlib);
                        }
                    }
                    let c = Compression::of(ctl);
                    if c != Compression::Fill && self.rect.width > MAX_WIDTH {
                        return Err(ProtocolError::TightTooWide);
                    }
                    self.phase = match c {
                        Compression::Fill => Phase::Fill,
                        Compression::Jpeg => {
                            if jpeg.is_none() {
                                return Err(ProtocolError::JpegUnsupported);
                            }
                            if !self.fmt.pf.true_colour
                                || !matches!(self.fmt.pf.bits_per_pixel, 16 | 32)
                            {
                                return Err(Bad);
                            }
                            if self.rect.area() > self.max_jpeg_pixels {
                                return Err(ProtocolError::JpegTooLarge);
                            }
                            Phase::JpegLength
                        }
                        Compression::Basic { stream, filter } => {
                            let stream = usize::from(stream);
                            if filter {
                                Phase::FilterId { stream }
                            } else {
                                self.begin_rows(Filter::Copy);
                                Phase::Data {
                                    stream,
                                    filter: Filter::Copy,
                                }
                            }
                        }
                        // Basic without zlib (never asked for) or invalid.
                        Compression::Png | Compression::Invalid(_) => return Err(Bad),
                    };
                }
                Phase::Fill => {
                    let tp = self.fmt.tp;
                    if inp.len() < tp {
                        return Ok((pos, false));
                    }
                    let mut px = [0u8; 4];
                    self.fmt.wire(&inp[..tp], &mut px);
                    sink.fill(self.rect, &px[..self.fmt.bpp]);
                    return Ok((pos + tp, true));
                }
                Phase::JpegLength => {
                    let Some((len, n)) = parse_compact_len(inp) else {
                        return Ok((pos, false));
                    };
                    pos += n;
                    self.jpeg.clear();
                    self.phase = Phase::Jpeg { len: len as usize };
                }
                Phase::Jpeg { len } => {
                    let n = (len - self.jpeg.len()).min(inp.len());
                    self.jpeg.extend_from_slice(&inp[..n]);
                    pos += n;
                    if self.jpeg.len() < len {
                        return Ok((pos, false));
                    }
                    let dec = jpeg.take().ok_or(ProtocolError::JpegUnsupported)?;
                    self.put_jpeg(dec, sink)?;
                    return Ok((pos, true));
                }
                Phase::FilterId { stream } => {
                    let Some(&id) = inp.first() else {
                        return Ok((pos, false));
                    };
                    pos += 1;
                    self.phase = match id {
                        FILTER_COPY => {
                            self.begin_rows(Filter::Copy);
                            Phase::Data {
                                stream,
                                filter: Filter::Copy,
                            }
                        }
                        FILTER_PALETTE => Phase::PaletteSize { stream },
                        FILTER_GRADIENT => {
                            // The spec: 16 or 32 bits per pixel (and true colour) only.
                            if !self.fmt.pf.true_colour || self.fmt.bpp == 1 {
                                return Err(Bad);
                            }
                            self.begin_rows(Filter::Gradient);
                            Phase::Data {
                                stream,
                                filter: Filter::Gradient,
                            }
                        }
                        _ => return Err(Bad),
                    };
                }
                Phase::PaletteSize { stream } => {
                    let Some(&n) = inp.first() else {
                        return Ok((pos, false));
                    };
                    pos += 1;
                    self.phase = Phase::Palette {
                        stream,
                        n: usize::from(n) + 1,
                        got: 0,
                    };
                }
                Phase::Palette { stream, n, got } => {
                    let tp = self.fmt.tp;
                    let k = (inp.len() / tp).min(n - got);
                    for i in 0..k {
                        let mut px = [0u8; 4];
                        self.fmt.wire(&inp[i * tp..i * tp + tp], &mut px);
                        self.palette[got + i] = px;
                    }
                    pos += k * tp;
                    if got + k < n {
                        self.phase = Phase::Palette {
                            stream,
                            n,
                            got: got + k,
                        };
                        return Ok((pos, false));
                    }
                    let filter = Filter::Palette(n);
                    self.begin_rows(filter);
                    self.phase = Phase::Data { stream, filter };
                }
                Phase::Data { stream, filter } => {
                    let total = self.data_len(filter);
                    if total < MIN_TO_COMPRESS {
                        // Sent as it is: wait for all of it (under 12 bytes).
                        if inp.len() < total {
                            return Ok((pos, false));
                        }
                        let row = self.row_len(filter);
                        if row > 0 {
                            for r in inp[..total].chunks_exact(row) {
                                self.put_row(filter, r, sink)?;
                            }
                        }
                        return Ok((pos + total, true));
                    }
                    let Some((len, n)) = parse_compact_len(inp) else {
                        return Ok((pos, false));
                    };
                    if len as usize > 2 * total + 1024 {
                        return Err(Bad);
                    }
                    pos += n;
                    self.phase = Phase::Zlib {
                        stream,
                        filter,
                        left: len as usize,
                    };
                }
                Phase::Zlib {
                    stream,
                    filter,
                    left,
                } => {
                    let (n, done) = self.zlib(stream, filter, left, inp, sink)?;
                    return Ok((pos + n, done));
                }
            }
        }
    }

    /// Decodes the collected JPEG into the rectangle.
    fn put_jpeg(
        &mut self,
        dec: &mut dyn JpegDecoder,
        sink: &mut Sink<'_, '_>,
    ) -> Result<(), ProtocolError> {
        let (w, h) = (self.rect.width, self.rect.height);
        if w == 0 || h == 0 {
            return Err(ProtocolError::BadJpeg);
        }
        let n = usize::from(w) * usize::from(h) * 3;
        self.rgb.clear();
        self.rgb.resize(n, 0);
        dec.decode(&self.jpeg, w, h, &mut self.rgb)
            .map_err(|_| ProtocolError::BadJpeg)?;
        let f = self.fmt;
        let max = f.maxes();
        self.line.clear();
        self.line.resize(usize::from(w) * f.bpp, 0);
        for (y, row) in self.rgb.chunks_exact(usize::from(w) * 3).enumerate() {
            for (o, p) in self.line.chunks_exact_mut(f.bpp).zip(row.chunks_exact(3)) {
                let c = [0, 1, 2].map(|i| (u32::from(p[i]) * max[i] + 127) / 255);
                f.pack_channels(c, o);
            }
            sink.put_row(self.rect.x, self.rect.y + y as u16, &self.line);
        }
        // The image is not kept.
        self.jpeg = Vec::new();
        self.rgb = Vec::new();
        Ok(())
    }
}
