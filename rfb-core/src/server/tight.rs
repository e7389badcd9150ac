//! Tight and TightPNG encoding (`alloc`).
//!
//! Every damage rectangle is cut into pieces at most [`PIECE_WIDTH`] pixels wide and
//! [`PIECE_AREA`] pixels large (well inside Tight's limit of [`MAX_WIDTH`]; each piece is one
//! Tight rectangle). A piece is encoded as the first of these that fits:
//!
//! * one colour: **Fill**;
//! * two colours: the **palette** filter with 1-bit indices, zlib stream 1;
//! * up to [`palette_max`] colours (never at 8 bits per pixel, where an index is no smaller
//!   than a pixel): the **palette** filter with 8-bit indices, stream 2;
//! * **JPEG** when the client asked for a JPEG quality (quality level −32…−23 or TigerVNC's
//!   fine quality −512…−412, chroma subsampling −768…−763), its pixel format is true colour at
//!   16 or 32 bits per pixel (the spec's rule), a [`JpegEncoder`] is available and the piece
//!   has at least [`JPEG_MIN_AREA`] pixels;
//! * full colour with the **gradient** filter (stream 3) where [`gradient_pays`] estimates it
//!   codes smaller than the pixels themselves (photo-like content), only with 3-byte TPIXELs:
//!   TigerVNC's viewer undoes the filter in 8-bit RGB for other formats, unlike the spec and
//!   libvncserver, so there the two would disagree;
//! * full colour, **copy** filter, stream 0.
//!
//! TightPNG (noVNC) sends Fill, JPEG (as above) or a PNG (indexed up to 256 colours, else RGB)
//! instead of Basic compression.
//!
//! Filtered data under 12 bytes goes out as it is; everything else through the piece's zlib
//! stream (a [`ZrleCompressor`] per stream from the connection's [`CompressorFactory`],
//! sync-flushed per rectangle) at the zlib level [`ZLIB_LEVEL`] gives the client's compression
//! level. A stream is made when first used; when that zlib level changes a stream is made anew
//! at the next use and the control byte tells the client to reset its side of that stream.
//!
//! Each piece is encoded whole into a buffer (at most about 66 KiB) and copied out across
//! [`Server::encode_update`] calls, as ZRLE's bands are.
//!
//! [`CompressorFactory`]: crate::zlib::CompressorFactory

use alloc::boxed::Box;
use alloc::vec::Vec;

use super::Server;
use super::encode::Source;
use super::palette::Palette;
use super::png::{PngPixels, write_png};
use super::update::{RectState, UpdateState};
use crate::error::CommandError;
use crate::jpeg::{JpegEncoder, JpegEncoderFactory, Subsampling};
use crate::pixel::{effective_format, read_value, unpack};
use crate::wire::tight::{
    FILL, FILTER_GRADIENT, FILTER_PALETTE, JPEG, MAX_COMPACT_LEN, MAX_PALETTE, MAX_WIDTH,
    MIN_TO_COMPRESS, PNG, READ_FILTER, STREAMS, emit_compact_len, tpixel24,
};
use crate::wire::{Encoding, PixelFormat, Rect, RectHeaderRepr};
use crate::zlib::{CompressorFactory, ZrleCompressor, compress_all};

/// Widest piece. Tight allows 2048 pixels across and TigerVNC sends up to 65536 pixels in a
/// rectangle, but a piece is analysed whole: smaller ones find more palettes and solid areas
/// (on the benchmark's desktop, 256 × 64 pieces came out 17 % smaller lossless and 40 %
/// smaller with JPEG than 2048-wide stripes of 65536 pixels, in the same time).
pub(crate) const PIECE_WIDTH: u16 = 256;

/// Most pixels in one piece.
pub(crate) const PIECE_AREA: u32 = 16384;

/// The zlib level of Tight's streams and PNG images for each compression level 0…9 the client
/// asks for (−256…−247; 6 when it asks for none).
///
/// The scale is the client's trade of CPU for bandwidth, not zlib's: Tight's data is palette
/// indices and pixels without a run-length step, where zlib's higher levels cost much and give
/// little. On the benchmark's 1920 × 1080 desktop (`bench/rfb/run.sh`, zlib-rs, full frame)
/// zlib level 3 gave 4.5 % more bytes than level 6 in 62 % of its time, level 2 8 % more in
/// 57 %; level 9 gave 2.3 % *more* than 6 in 6.6 × its time. So the middle of the scale, where
/// VNC clients' defaults sit (TigerVNC and noVNC 2, TightVNC 6), gets levels 2–3, and the top
/// of it gets zlib-rs's most useful levels, 5 and 6. libvncserver and TurboVNC scale down
/// further still: their level 6 is zlib level 1 (TurboVNC's "CL 1").
pub const ZLIB_LEVEL: [u8; 10] = [0, 1, 2, 2, 3, 3, 3, 4, 5, 6];

// Inside Tight's (and TigerVNC's) limits.
const _: () = assert!(PIECE_WIDTH <= MAX_WIDTH && PIECE_AREA <= 65536);

/// Smallest piece sent as JPEG (smaller ones cost more in JPEG headers than they save).
pub(crate) const JPEG_MIN_AREA: u32 = 256;

/// zlib streams: full colour (copy filter), mono, indexed, gradient.
const STREAM_FULL: usize = 0;
const STREAM_MONO: usize = 1;
const STREAM_INDEXED: usize = 2;
const STREAM_GRADIENT: usize = 3;

/// Palette hash slots (a power of two, four times the largest palette).
const SLOTS: usize = 1024;

/// The pieces of `r`: `(piece width, piece height, columns, rows)`.
pub(crate) fn grid(r: &Rect) -> (u16, u16, u32, u32) {
    let pw = r.width.clamp(1, PIECE_WIDTH);
    let ph = (PIECE_AREA / u32::from(pw)).min(u32::from(r.height.max(1))) as u16;
    (
        pw,
        ph,
        u32::from(r.width.div_ceil(pw)),
        u32::from(r.height.div_ceil(ph)),
    )
}

/// Number of Tight rectangles `r` is sent as.
pub(crate) fn piece_count(r: &Rect) -> u32 {
    let (_, _, c, rows) = grid(r);
    c * rows
}

/// Piece `i` (row-major) of `r`.
fn piece(r: &Rect, i: u32) -> Rect {
    let (pw, ph, cols, _) = grid(r);
    let (cx, cy) = ((i % cols) as u16, (i / cols) as u16);
    let x = r.x + cx * pw;
    let y = r.y + cy * ph;
    Rect::new(x, y, pw.min(r.x + r.width - x), ph.min(r.y + r.height - y))
}

/// Most colours a piece of `area` pixels is sent with the palette filter: a quarter of the
/// pixels without JPEG (the palette and indices are then smaller than full colour), a
/// sixteenth with JPEG (larger images with more colours are photos), at most 256.
pub(crate) fn palette_max(area: u32, jpeg: bool) -> usize {
    let d = if jpeg { 16 } else { 4 };
    ((area / d) as usize).clamp(2, MAX_PALETTE)
}

/// How the client wants JPEG, if it can have it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct JpegParams {
    pub(crate) quality: u8,
    pub(crate) subsampling: Subsampling,
}

/// JPEG quality (1…100) of each quality level 0…9.
const LEVEL_QUALITY: [u8; 10] = [10, 20, 30, 40, 50, 60, 70, 80, 90, 95];

/// The JPEG settings the client's pseudo-encodings ask for (`None`: no quality given).
pub(crate) fn jpeg_params(
    level: Option<u8>,
    fine: Option<u8>,
    subsampling: Option<u8>,
) -> Option<JpegParams> {
    let quality = match (fine, level) {
        (Some(q), _) => q.max(1),
        (None, Some(l)) => LEVEL_QUALITY[usize::from(l.min(9))],
        (None, None) => return None,
    };
    let subsampling = match subsampling {
        Some(0) => Subsampling::None,
        Some(2) => Subsampling::Half,
        Some(3) => Subsampling::Grey,
        Some(_) => Subsampling::Quarter,
        None if quality >= 70 => Subsampling::None,
        None if quality >= 40 => Subsampling::Half,
        None => Subsampling::Quarter,
    };
    Some(JpegParams {
        quality,
        subsampling,
    })
}

/// How many Tight (and TightPNG) rectangles of each kind a connection sent
/// ([`Server::tight_stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct TightStats {
    /// One colour.
    pub fill: u64,
    /// Two colours, 1-bit indices.
    pub mono: u64,
    /// A palette of 3…256 colours, 8-bit indices.
    pub indexed: u64,
    /// Full colour, copy filter.
    pub full_colour: u64,
    /// Full colour, gradient filter.
    pub gradient: u64,
    /// JPEG.
    pub jpeg: u64,
    /// PNG (TightPNG).
    pub png: u64,
    /// JPEG frames sent as they came ([`UpdateSource::jpeg`](super::UpdateSource::jpeg)),
    /// without decoding and encoding again.
    pub jpeg_passthrough: u64,
}

/// Per-connection Tight state: the four zlib streams, the JPEG encoder, reusable buffers.
pub(crate) struct TightEncoder {
    pub(crate) stats: TightStats,
    streams: [Option<Box<dyn ZrleCompressor>>; STREAMS],
    levels: [u8; STREAMS],
    jpeg: Option<Box<dyn JpegEncoder>>,
    px: Vec<u32>,
    /// Filtered data of the current piece.
    data: Vec<u8>,
    /// The current piece on the wire: rectangle header and body.
    pub(crate) wire: Vec<u8>,
    /// zlib / JPEG / PNG output before its length is known.
    body: Vec<u8>,
    rgb: Vec<u8>,
    scratch: Vec<u8>,
    /// The piece's colours.
    palette: Palette<SLOTS, MAX_PALETTE>,
}

impl core::fmt::Debug for TightEncoder {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TightEncoder")
    }
}

/// The client's pixel format seen as TPIXELs and RGB.
#[derive(Clone, Copy)]
struct Format {
    pf: PixelFormat,
    bpp: usize,
    t24: bool,
}

impl Format {
    #[inline]
    fn value(&self, p: u32) -> u32 {
        read_value(&unpack(p), self.bpp, self.pf.big_endian)
    }

    #[inline]
    fn put_tpixel(&self, out: &mut Vec<u8>, p: u32) {
        if self.t24 {
            let v = self.value(p);
            out.extend_from_slice(&[
                (v >> self.pf.red_shift) as u8,
                (v >> self.pf.green_shift) as u8,
                (v >> self.pf.blue_shift) as u8,
            ]);
        } else {
            out.extend_from_slice(&unpack(p)[..self.bpp]);
        }
    }

    /// 8-bit R, G, B of a wire pixel.
    #[inline]
    fn rgb(&self, p: u32) -> [u8; 3] {
        let v = self.value(p);
        let mut out = [0u8; 3];
        for (o, (max, shift)) in out.iter_mut().zip(self.pf.channels()) {
            let c = (v >> shift) & u32::from(max);
            let m = u32::from(max.max(1));
            *o = ((c * 255 + m / 2) / m) as u8;
        }
        out
    }
}

/// Whether the gradient filter is expected to code the (3-byte TPIXEL) rows smaller than the
/// pixels themselves: an estimate of the bits each would leave to zlib. A pixel equal to its
/// left or upper neighbour is cheap either way (a match); any other costs about 24 bits
/// raw, and `2 + log2 |residual|` bits per channel after the filter (a residual equal to the
/// left one's is a match), counted on every other row. Photo-like content has small residuals,
/// text and drawings large ones next to flat areas.
pub(crate) fn gradient_pays(rgb: &[u8], w: usize, h: usize) -> bool {
    let mut copy = 0u64;
    let mut grad = 0u64;
    let mut prev_res = [0u8; 3];
    // Every other row is enough for an estimate.
    for y in (0..h).step_by(2) {
        let row = &rgb[y * w * 3..(y + 1) * w * 3];
        let up = (y > 0).then(|| &rgb[(y - 1) * w * 3..y * w * 3]);
        for x in 0..w {
            let p = &row[x * 3..x * 3 + 3];
            let left = (x > 0).then(|| &row[x * 3 - 3..x * 3]);
            let above = up.map(|u| &u[x * 3..x * 3 + 3]);
            if left != Some(p) && above != Some(p) {
                copy += 24;
            }
            let mut res = [0u8; 3];
            for c in 0..3 {
                let a = left.map_or(0, |l| i32::from(l[c]));
                let b = above.map_or(0, |u| i32::from(u[c]));
                let d = match (up, x > 0) {
                    (Some(u), true) => i32::from(u[x * 3 - 3 + c]),
                    _ => 0,
                };
                let pred = (a + b - d).clamp(0, 255);
                res[c] = (i32::from(p[c]) - pred) as u8;
            }
            if x == 0 || res != prev_res {
                for r in res {
                    let m = (r as i8).unsigned_abs();
                    grad += 2 + u64::from(8 - m.leading_zeros());
                }
            }
            prev_res = res;
        }
    }
    grad * 8 < copy * 7
}

impl TightEncoder {
    pub(crate) fn new() -> Self {
        Self {
            stats: TightStats::default(),
            streams: [None, None, None, None],
            levels: [0; STREAMS],
            jpeg: None,
            px: Vec::new(),
            data: Vec::new(),
            wire: Vec::new(),
            body: Vec::new(),
            rgb: Vec::new(),
            scratch: Vec::new(),
            palette: Palette::new(),
        }
    }

    /// Forgets the JPEG compressor (another one was chosen).
    pub(crate) fn drop_jpeg(&mut self) {
        self.jpeg = None;
    }

    /// Counts the colours of `self.px` into the palette, stopping past `max`, and writes each
    /// pixel's palette index to `self.data` (one pass for both); returns whether they fit.
    fn census(&mut self, max: usize) -> bool {
        self.palette.clear();
        self.data.clear();
        self.data.resize(self.px.len(), 0);
        let (px, data, palette) = (&self.px, &mut self.data[..], &mut self.palette);
        let Some(&first) = px.first() else {
            return true;
        };
        let mut last = (first, 0u8);
        if palette.insert(first, max).is_none() {
            return false;
        }
        for (d, &p) in data.iter_mut().zip(px) {
            if p != last.0 {
                match palette.insert(p, max) {
                    Some(k) => last = (p, k),
                    None => return false,
                }
            }
            *d = last.1;
        }
        true
    }

    /// Stream `n` at `level`: made if missing, made anew if the level changed; returns whether
    /// the client must reset its side.
    fn stream(&mut self, n: usize, level: u8, make: CompressorFactory) -> bool {
        match &self.streams[n] {
            Some(_) if self.levels[n] == level => false,
            old => {
                let reset = old.is_some();
                self.streams[n] = Some(make(level));
                self.levels[n] = level;
                reset
            }
        }
    }

    /// Appends the filtered data through stream `n` (or as it is, when short) to `self.wire`.
    fn put_data(&mut self, n: usize) -> Result<(), CommandError> {
        if self.data.len() < MIN_TO_COMPRESS {
            self.wire.extend_from_slice(&self.data);
            return Ok(());
        }
        self.body.clear();
        let z = self.streams[n].as_mut().ok_or(CommandError::InvalidState)?;
        compress_all(&mut **z, &self.data, &mut self.body)
            .map_err(|_| CommandError::InvalidState)?;
        self.put_body()
    }

    /// Appends the compact length and `self.body` to `self.wire`.
    fn put_body(&mut self) -> Result<(), CommandError> {
        let len = u32::try_from(self.body.len())
            .ok()
            .filter(|&l| l <= MAX_COMPACT_LEN)
            .ok_or(CommandError::InvalidState)?;
        let mut b = [0u8; 3];
        let n = emit_compact_len(len, &mut b);
        self.wire.extend_from_slice(&b[..n]);
        self.wire.extend_from_slice(&self.body);
        Ok(())
    }

    /// The piece's pixels as 8-bit RGB in `self.rgb`.
    fn load_rgb(&mut self, f: &Format) {
        self.rgb.clear();
        self.rgb.resize(self.px.len() * 3, 0);
        let out = self.rgb.chunks_exact_mut(3).zip(&self.px);
        if f.t24 {
            // 8-bit channels: each is a byte of the value, no scaling.
            let (r, g, b) = (f.pf.red_shift, f.pf.green_shift, f.pf.blue_shift);
            for (o, &p) in out {
                let v = f.value(p);
                o.copy_from_slice(&[(v >> r) as u8, (v >> g) as u8, (v >> b) as u8]);
            }
        } else {
            for (o, &p) in out {
                o.copy_from_slice(&f.rgb(p));
            }
        }
    }

    /// Encodes piece `r` into `self.wire` (header and body).
    #[allow(clippy::too_many_arguments)]
    fn encode_piece(
        &mut self,
        r: Rect,
        source: &Source<'_, '_>,
        f: &Format,
        png: bool,
        level: u8,
        jpeg: Option<(JpegParams, JpegEncoderFactory)>,
        make: CompressorFactory,
    ) -> Result<(), CommandError> {
        let (w, h) = (usize::from(r.width), usize::from(r.height));
        self.px.resize(w * h, 0);
        let mut px = core::mem::take(&mut self.px);
        source.load(r.x, r.y, r.width, r.height, &mut px);
        self.px = px;
        self.wire.clear();
        self.wire.resize(RectHeaderRepr::LEN, 0);
        RectHeaderRepr {
            rect: r,
            encoding: if png {
                Encoding::TightPng
            } else {
                Encoding::Tight
            },
        }
        .emit(&mut self.wire);
        let jpeg = jpeg.filter(|_| r.area() >= JPEG_MIN_AREA);
        let max = if f.bpp == 1 && !png {
            2
        } else {
            palette_max(r.area(), jpeg.is_some())
        };
        let fits = self.census(max);
        if fits && self.palette.len() == 1 {
            self.wire.push(FILL);
            let p = self.px[0];
            f.put_tpixel(&mut self.wire, p);
            self.stats.fill += 1;
            return Ok(());
        }
        if !fits && let Some((params, factory)) = jpeg {
            self.load_rgb(f);
            self.body.clear();
            let enc = self.jpeg.get_or_insert_with(factory);
            let ok = enc
                .encode(
                    &self.rgb,
                    r.width,
                    r.height,
                    params.quality,
                    params.subsampling,
                    &mut self.body,
                )
                .is_ok()
                && self.body.len() <= MAX_COMPACT_LEN as usize;
            if ok {
                self.wire.push(JPEG);
                self.stats.jpeg += 1;
                return self.put_body();
            }
            // A failing encoder: the piece goes out lossless.
        }
        if png {
            return self.png_piece(r, f, fits, level, make);
        }
        if fits {
            let (n, mono) = if self.palette.len() == 2 {
                self.stats.mono += 1;
                (STREAM_MONO, true)
            } else {
                self.stats.indexed += 1;
                (STREAM_INDEXED, false)
            };
            let reset = self.stream(n, level, make);
            self.wire
                .push(((n as u8) << 4) | READ_FILTER | (u8::from(reset) << n));
            self.wire.push(FILTER_PALETTE);
            self.wire.push((self.palette.len() - 1) as u8);
            for k in 0..self.palette.len() {
                let p = self.palette.colours()[k];
                f.put_tpixel(&mut self.wire, p);
            }
            if mono {
                // The indices (0 or 1) packed 8 to a byte, rows padded, in place: each byte
                // written comes from indices at or after it.
                let mut out = 0;
                for row in 0..h {
                    for at in (row * w..(row + 1) * w).step_by(8) {
                        let end = (at + 8).min((row + 1) * w);
                        let mut b = 0u8;
                        for (k, i) in (at..end).enumerate() {
                            b |= self.data[i] << (7 - k);
                        }
                        self.data[out] = b;
                        out += 1;
                    }
                }
                self.data.truncate(out);
            }
            return self.put_data(n);
        }
        // Full colour.
        self.data.clear();
        if f.t24 {
            self.load_rgb(f);
            if gradient_pays(&self.rgb, w, h) {
                let reset = self.stream(STREAM_GRADIENT, level, make);
                self.wire.push(
                    ((STREAM_GRADIENT as u8) << 4)
                        | READ_FILTER
                        | (u8::from(reset) << STREAM_GRADIENT),
                );
                self.wire.push(FILTER_GRADIENT);
                gradient(&self.rgb, w, h, &mut self.data);
                self.stats.gradient += 1;
                return self.put_data(STREAM_GRADIENT);
            }
            self.data.extend_from_slice(&self.rgb);
        } else {
            self.data.reserve(w * h * f.bpp);
            for &p in &self.px {
                f.put_tpixel(&mut self.data, p);
            }
        }
        let reset = self.stream(STREAM_FULL, level, make);
        self.wire.push(u8::from(reset) << STREAM_FULL);
        self.stats.full_colour += 1;
        self.put_data(STREAM_FULL)
    }

    /// A TightPNG piece as a PNG (indexed when the colours fit a palette).
    fn png_piece(
        &mut self,
        r: Rect,
        f: &Format,
        fits: bool,
        level: u8,
        make: CompressorFactory,
    ) -> Result<(), CommandError> {
        // Each image is a whole zlib stream: a fresh one, never shared.
        let mut comp = make(level);
        self.body.clear();
        let res = if fits {
            let pal: Vec<[u8; 3]> = self.palette.colours().iter().map(|&p| f.rgb(p)).collect();
            // `self.data` holds the indices (census).
            write_png(
                &mut self.body,
                r.width,
                r.height,
                PngPixels::Indexed(&self.data, &pal),
                &mut *comp,
                &mut self.rgb,
                &mut self.scratch,
            )
        } else {
            self.load_rgb(f);
            write_png(
                &mut self.body,
                r.width,
                r.height,
                PngPixels::Rgb(&self.rgb),
                &mut *comp,
                &mut self.data,
                &mut self.scratch,
            )
        };
        res.map_err(|_| CommandError::InvalidState)?;
        self.wire.push(PNG);
        self.stats.png += 1;
        self.put_body()
    }
}

/// Gradient residuals of 3-byte RGB rows (the spec's predictor, pixels outside are zero).
pub(crate) fn gradient(rgb: &[u8], w: usize, h: usize, out: &mut Vec<u8>) {
    out.reserve(rgb.len());
    for y in 0..h {
        for x in 0..w {
            for c in 0..3 {
                let v = |xx: usize, yy: usize| i32::from(rgb[(yy * w + xx) * 3 + c]);
                let a = if x > 0 { v(x - 1, y) } else { 0 };
                let b = if y > 0 { v(x, y - 1) } else { 0 };
                let d = if x > 0 && y > 0 { v(x - 1, y - 1) } else { 0 };
                let pred = (a + b - d).clamp(0, 255);
                out.push((v(x, y) - pred) as u8);
            }
        }
    }
}

impl Server {
    /// Whether the update for `src` is its JPEG as it is: the client's encoding is Tight or
    /// TightPNG, it may get JPEG, and the frame fits one Tight rectangle.
    pub(crate) fn jpeg_passthrough(&self, src: &super::UpdateSource<'_>) -> bool {
        let fb = &src.framebuffer;
        src.jpeg
            .is_some_and(|j| j.len() <= MAX_COMPACT_LEN as usize)
            && matches!(self.prefs.encoding, Encoding::Tight | Encoding::TightPng)
            && self.tight_jpeg_params().is_some()
            && fb.width() <= MAX_WIDTH
            && fb.width() > 0
            && fb.height() > 0
    }

    /// Writes the pass-through rectangle from byte `sent` of it on (header, JPEG control
    /// byte, compact length, the JPEG); `None` if not even the header fits, else `(written,
    /// finished)`.
    pub(crate) fn write_passthrough(
        &mut self,
        jpeg: &[u8],
        sent: usize,
        out: &mut [u8],
    ) -> Option<(usize, bool)> {
        let mut head = [0u8; RectHeaderRepr::LEN + 1 + 3];
        RectHeaderRepr {
            rect: Rect::new(0, 0, self.width, self.height),
            encoding: if self.prefs.encoding == Encoding::TightPng {
                Encoding::TightPng
            } else {
                Encoding::Tight
            },
        }
        .emit(&mut head);
        head[RectHeaderRepr::LEN] = JPEG;
        let n = emit_compact_len(jpeg.len() as u32, &mut head[RectHeaderRepr::LEN + 1..]);
        let head = &head[..RectHeaderRepr::LEN + 1 + n];
        let mut pos = 0;
        if sent == 0 {
            if out.len() < head.len() {
                return None;
            }
            out[..head.len()].copy_from_slice(head);
            pos = head.len();
        }
        let from = sent.saturating_sub(head.len());
        let n = (jpeg.len() - from).min(out.len() - pos);
        out[pos..pos + n].copy_from_slice(&jpeg[from..from + n]);
        pos += n;
        let done = from + n == jpeg.len();
        if done {
            let t = self
                .tight
                .get_or_insert_with(|| Box::new(TightEncoder::new()));
            t.stats.jpeg_passthrough += 1;
        }
        Some((pos, done))
    }

    /// How many Tight and TightPNG rectangles of each kind this connection sent so far.
    pub fn tight_stats(&self) -> TightStats {
        self.tight.as_ref().map(|t| t.stats).unwrap_or_default()
    }

    /// The JPEG settings for this client, if it may get JPEG (a quality asked for, a
    /// true-colour format of 16 or 32 bits per pixel, an encoder).
    pub(crate) fn tight_jpeg(&self) -> Option<(JpegParams, JpegEncoderFactory)> {
        Some((self.tight_jpeg_params()?, self.jpeg?))
    }

    /// Whether this client takes JPEG (a quality asked for, a true-colour format of 16 or 32
    /// bits per pixel), encoder or not.
    fn tight_jpeg_params(&self) -> Option<JpegParams> {
        let pf = &self.client_format;
        if !pf.true_colour || !matches!(pf.bits_per_pixel, 16 | 32) {
            return None;
        }
        jpeg_params(
            self.prefs.quality,
            self.prefs.fine_quality,
            self.prefs.subsampling,
        )
    }

    /// Writes (part of) the Tight rectangles of `r`; returns `(bytes written, finished)`.
    pub(crate) fn encode_tight_step(
        &mut self,
        st: &mut UpdateState,
        r: Rect,
        source: &Source<'_, '_>,
        out: &mut [u8],
    ) -> Result<(usize, bool), CommandError> {
        let level = ZLIB_LEVEL[usize::from(self.prefs.level.min(9))];
        let wire = effective_format(&self.client_format);
        let f = Format {
            pf: wire,
            bpp: wire.bytes_per_pixel(),
            t24: tpixel24(&wire),
        };
        let png = self.prefs.encoding == Encoding::TightPng;
        let jpeg = self.tight_jpeg();
        let make = self.zlib;
        let t = self
            .tight
            .get_or_insert_with(|| Box::new(TightEncoder::new()));
        let RectState::Tight {
            mut piece_no,
            mut sent,
            mut len,
        } = st.rect_state()
        else {
            return Err(CommandError::InvalidState);
        };
        let pieces = piece_count(&r);
        let mut pos = 0;
        loop {
            if len == 0 {
                if piece_no >= pieces {
                    return Ok((pos, true));
                }
                t.encode_piece(piece(&r, piece_no), source, &f, png, level, jpeg, make)?;
                len = t.wire.len();
                sent = 0;
            }
            let n = (len - sent).min(out.len() - pos);
            out[pos..pos + n].copy_from_slice(&t.wire[sent..sent + n]);
            pos += n;
            sent += n;
            if sent < len {
                st.set_rect_state(RectState::Tight {
                    piece_no,
                    sent,
                    len,
                });
                return Ok((pos, false));
            }
            piece_no += 1;
            len = 0;
            sent = 0;
            st.set_rect_state(RectState::Tight {
                piece_no,
                sent,
                len,
            });
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn pieces_cover_the_rectangle() {
        for r in [
            Rect::new(3, 5, 1, 1),
            Rect::new(0, 0, 2048, 32),
            Rect::new(0, 0, 2049, 33),
            Rect::new(7, 9, 5000, 300),
            Rect::new(0, 0, 300, 1000),
            Rect::new(0, 0, 65535, 2),
        ] {
            let mut covered = 0u64;
            for i in 0..piece_count(&r) {
                let p = piece(&r, i);
                assert!(
                    p.width <= MAX_WIDTH && p.area() <= PIECE_AREA,
                    "{r:?} {p:?}"
                );
                assert!(!p.is_empty());
                assert!(p.x >= r.x && p.y >= r.y);
                assert!(p.x + p.width <= r.x + r.width && p.y + p.height <= r.y + r.height);
                covered += u64::from(p.area());
            }
            assert_eq!(covered, u64::from(r.area()), "{r:?}");
        }
    }

    #[test]
    fn jpeg_settings() {
        assert_eq!(jpeg_params(None, None, Some(1)), None);
        let p = jpeg_params(Some(9), None, None).unwrap();
        assert_eq!((p.quality, p.subsampling), (95, Subsampling::None));
        let p = jpeg_params(Some(0), None, None).unwrap();
        assert_eq!((p.quality, p.subsampling), (10, Subsampling::Quarter));
        let p = jpeg_params(Some(0), Some(77), Some(2)).unwrap();
        assert_eq!((p.quality, p.subsampling), (77, Subsampling::Half));
        assert_eq!(jpeg_params(None, Some(0), Some(3)).unwrap().quality, 1);
        assert_eq!(
            jpeg_params(None, Some(50), Some(3)).unwrap().subsampling,
            Subsampling::Grey
        );
    }

    /// The estimate picks the gradient filter for smooth photo-like pixels and the copy filter
    /// for flat areas with sharp text-like edges.
    #[test]
    fn gradient_estimate() {
        let (w, h) = (64usize, 48usize);
        let mut rng = 0x2545_f491u32;
        let mut photo = Vec::new();
        let mut desk = Vec::new();
        for y in 0..h {
            for x in 0..w {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                let n = (rng % 7) as i32 - 3;
                let v = |base: i32| (base + n).clamp(0, 255) as u8;
                photo.extend_from_slice(&[
                    v((x * 3) as i32),
                    v((y * 4) as i32),
                    v(((x + y) * 2) as i32),
                ]);
                let ink = (x / 3 + y / 5) % 4 == 0 && y % 12 < 9;
                desk.extend_from_slice(if ink { &[0, 0, 0] } else { &[240, 240, 240] });
            }
        }
        assert!(gradient_pays(&photo, w, h));
        assert!(!gradient_pays(&desk, w, h));
    }
}
