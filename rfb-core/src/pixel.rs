//! Framebuffers owned by the application and pixel-format translation.

use crate::error::CommandError;
use crate::wire::{PixelFormat, Rect};

/// A framebuffer the application owns, lent read-only to the server's encoders.
#[derive(Debug, Clone, Copy)]
pub struct Framebuffer<'a> {
    data: &'a [u8],
    width: u16,
    height: u16,
    stride: usize,
    format: PixelFormat,
}

fn check_geometry(
    len: usize,
    width: u16,
    height: u16,
    stride: usize,
    format: &PixelFormat,
) -> Result<(), CommandError> {
    if !format.is_valid() {
        return Err(CommandError::InvalidArgument);
    }
    let row = usize::from(width)
        .checked_mul(format.bytes_per_pixel())
        .ok_or(CommandError::InvalidArgument)?;
    if stride < row {
        return Err(CommandError::InvalidArgument);
    }
    if height > 0 {
        let need = stride
            .checked_mul(usize::from(height) - 1)
            .and_then(|v| v.checked_add(row))
            .ok_or(CommandError::InvalidArgument)?;
        if len < need {
            return Err(CommandError::InvalidArgument);
        }
    }
    Ok(())
}

impl<'a> Framebuffer<'a> {
    /// A `width` × `height` framebuffer in `format` whose rows start `stride` bytes apart.
    ///
    /// Fails with [`CommandError::InvalidArgument`] if the format is invalid or `data` is too short.
    pub fn new(
        data: &'a [u8],
        width: u16,
        height: u16,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self, CommandError> {
        check_geometry(data.len(), width, height, stride, &format)?;
        Ok(Self {
            data,
            width,
            height,
            stride,
            format,
        })
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.height
    }
    /// Bytes between row starts.
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// Pixel format of `data`.
    pub fn format(&self) -> PixelFormat {
        self.format
    }
    /// The underlying bytes.
    pub fn data(&self) -> &'a [u8] {
        self.data
    }

    /// The bytes of `w` pixels of row `y` starting at `x` (caller guarantees the bounds).
    #[inline]
    pub(crate) fn row(&self, x: u16, y: u16, w: u16) -> &'a [u8] {
        let bpp = self.format.bytes_per_pixel();
        let start = usize::from(y) * self.stride + usize::from(x) * bpp;
        &self.data[start..start + usize::from(w) * bpp]
    }
}

/// A framebuffer the application owns, lent mutably to the client's decoders.
#[derive(Debug)]
pub struct FramebufferMut<'a> {
    data: &'a mut [u8],
    width: u16,
    height: u16,
    stride: usize,
    format: PixelFormat,
}

impl<'a> FramebufferMut<'a> {
    /// A `width` × `height` framebuffer in `format` whose rows start `stride` bytes apart.
    pub fn new(
        data: &'a mut [u8],
        width: u16,
        height: u16,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self, CommandError> {
        check_geometry(data.len(), width, height, stride, &format)?;
        Ok(Self {
            data,
            width,
            height,
            stride,
            format,
        })
    }

    /// A 0 × 0 framebuffer: every rectangle is parsed and checked, and no pixel is stored.
    pub fn empty() -> FramebufferMut<'static> {
        FramebufferMut {
            data: &mut [],
            width: 0,
            height: 0,
            stride: 0,
            format: PixelFormat::RGB888,
        }
    }

    /// Width in pixels.
    pub fn width(&self) -> u16 {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> u16 {
        self.height
    }
    /// Bytes between row starts.
    pub fn stride(&self) -> usize {
        self.stride
    }
    /// Pixel format of the data.
    pub fn format(&self) -> PixelFormat {
        self.format
    }
    /// The underlying bytes.
    pub fn data(&self) -> &[u8] {
        self.data
    }
    /// A read-only view.
    pub fn as_framebuffer(&self) -> Framebuffer<'_> {
        Framebuffer {
            data: self.data,
            width: self.width,
            height: self.height,
            stride: self.stride,
            format: self.format,
        }
    }

    /// Mutable bytes of `w` pixels of row `y` from `x` (caller guarantees the bounds).
    #[inline]
    pub(crate) fn row_mut(&mut self, x: u16, y: u16, w: u16) -> &mut [u8] {
        let bpp = self.format.bytes_per_pixel();
        let start = usize::from(y) * self.stride + usize::from(x) * bpp;
        &mut self.data[start..start + usize::from(w) * bpp]
    }

    /// Fills `r` (clipped to this framebuffer) with the pixel whose bytes are `px`.
    pub(crate) fn fill(&mut self, r: Rect, px: &[u8]) {
        let r = r.clip_to(self.width, self.height);
        if r.is_empty() {
            return;
        }
        let bpp = px.len();
        for y in r.y..r.y + r.height {
            let row = self.row_mut(r.x, y, r.width);
            match bpp {
                4 => {
                    let p = [px[0], px[1], px[2], px[3]];
                    for c in row.chunks_exact_mut(4) {
                        c.copy_from_slice(&p);
                    }
                }
                2 => {
                    let p = [px[0], px[1]];
                    for c in row.chunks_exact_mut(2) {
                        c.copy_from_slice(&p);
                    }
                }
                _ => row.fill(px[0]),
            }
        }
    }

    /// Copies `src` (a `dst`-sized area with its top-left at `src_x, src_y`) to `dst`, both
    /// clipped to this framebuffer, with overlapping areas handled like `memmove`.
    pub(crate) fn copy_within(&mut self, dst: Rect, src_x: u16, src_y: u16) {
        let (w, h) = (self.width, self.height);
        // Clip by the tighter of the two rectangles.
        let src = Rect::new(src_x, src_y, dst.width, dst.height);
        let cw = dst.clip_to(w, h).width.min(src.clip_to(w, h).width);
        let ch = dst.clip_to(w, h).height.min(src.clip_to(w, h).height);
        if cw == 0 || ch == 0 || dst.x >= w || dst.y >= h || src_x >= w || src_y >= h {
            return;
        }
        let bpp = self.format.bytes_per_pixel();
        let len = usize::from(cw) * bpp;
        let rows: &mut dyn Iterator<Item = u16> = if dst.y > src_y {
            &mut (0..ch).rev()
        } else {
            &mut (0..ch)
        };
        for i in rows {
            let s = usize::from(src_y + i) * self.stride + usize::from(src_x) * bpp;
            let d = usize::from(dst.y + i) * self.stride + usize::from(dst.x) * bpp;
            self.data.copy_within(s..s + len, d);
        }
    }
}

/// Reads a pixel value of `bpp` bytes (1, 2 or 4) in the given byte order.
#[inline]
pub(crate) fn read_value(b: &[u8], bpp: usize, big_endian: bool) -> u32 {
    match (bpp, big_endian) {
        (4, false) => u32::from_le_bytes([b[0], b[1], b[2], b[3]]),
        (4, true) => u32::from_be_bytes([b[0], b[1], b[2], b[3]]),
        (2, false) => u32::from(u16::from_le_bytes([b[0], b[1]])),
        (2, true) => u32::from(u16::from_be_bytes([b[0], b[1]])),
        _ => u32::from(b[0]),
    }
}

/// Writes a pixel value as `bpp` bytes in the given byte order.
#[inline]
pub(crate) fn write_value(b: &mut [u8], v: u32, bpp: usize, big_endian: bool) {
    match (bpp, big_endian) {
        (4, false) => b[..4].copy_from_slice(&v.to_le_bytes()),
        (4, true) => b[..4].copy_from_slice(&v.to_be_bytes()),
        (2, false) => b[..2].copy_from_slice(&(v as u16).to_le_bytes()),
        (2, true) => b[..2].copy_from_slice(&(v as u16).to_be_bytes()),
        _ => b[0] = v as u8,
    }
}

/// Packs up to four wire bytes into a `u32` whose native-endian bytes are those wire bytes
/// (padded with zeros): equal pixels compare equal and emitting is a byte copy.
#[inline]
pub(crate) fn pack(b: &[u8], bpp: usize) -> u32 {
    match bpp {
        4 => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
        2 => u32::from_ne_bytes([b[0], b[1], 0, 0]),
        _ => u32::from_ne_bytes([b[0], 0, 0, 0]),
    }
}

/// Inverse of [`pack`]: the wire bytes of a packed pixel.
#[inline]
pub(crate) fn unpack(p: u32) -> [u8; 4] {
    p.to_ne_bytes()
}

/// The colour of an RFB pixel format, as a value of the BGR233 colour map that servers send to
/// colour-map clients (as QEMU does): treat such clients as BGR233 true colour.
pub(crate) fn effective_format(pf: &PixelFormat) -> PixelFormat {
    if pf.true_colour {
        *pf
    } else {
        PixelFormat::BGR233
    }
}

/// Converts pixel values between two true-colour formats (or copies identical formats).
///
/// Channels are rescaled with rounding, `v' = (v·max' + max/2) / max`; the same function is
/// used by the server (native → client format) and the client (wire → framebuffer format), so
/// round trips are predictable.
#[derive(Clone)]
pub struct Translator {
    from: PixelFormat,
    to: PixelFormat,
    identity: bool,
    lut: Option<[[u32; 256]; 3]>,
}

impl core::fmt::Debug for Translator {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Translator")
            .field("from", &self.from)
            .field("to", &self.to)
            .finish()
    }
}

fn same_layout(a: &PixelFormat, b: &PixelFormat) -> bool {
    a.bits_per_pixel == b.bits_per_pixel
        && (a.big_endian == b.big_endian || a.bits_per_pixel == 8)
        && a.true_colour == b.true_colour
        && (!a.true_colour || a.channels() == b.channels())
}

#[inline]
fn scale(v: u32, from_max: u32, to_max: u32) -> u32 {
    if from_max == to_max {
        v
    } else {
        ((u64::from(v) * u64::from(to_max) + u64::from(from_max / 2)) / u64::from(from_max)) as u32
    }
}

impl Translator {
    /// A translator from `from` to `to`, or `None` if one side is colour-mapped and the formats
    /// differ (colour-map pixels pass through only unchanged).
    pub fn new(from: &PixelFormat, to: &PixelFormat) -> Option<Self> {
        if same_layout(from, to) {
            return Some(Self {
                from: *from,
                to: *to,
                identity: true,
                lut: None,
            });
        }
        if !from.true_colour || !to.true_colour {
            return None;
        }
        let fc = from.channels();
        let tc = to.channels();
        let lut = if fc.iter().all(|&(m, _)| m <= 255) {
            let mut lut = [[0u32; 256]; 3];
            for c in 0..3 {
                let (fm, _) = fc[c];
                let (tm, ts) = tc[c];
                for v in 0..=u32::from(fm) {
                    lut[c][v as usize] = scale(v, u32::from(fm), u32::from(tm)) << ts;
                }
            }
            Some(lut)
        } else {
            None
        };
        Some(Self {
            from: *from,
            to: *to,
            identity: false,
            lut,
        })
    }

    /// Whether pixels are copied unchanged.
    pub fn is_identity(&self) -> bool {
        self.identity
    }

    /// Source format.
    pub fn from_format(&self) -> &PixelFormat {
        &self.from
    }

    /// Destination format.
    pub fn to_format(&self) -> &PixelFormat {
        &self.to
    }

    /// Translates one pixel value.
    #[inline]
    pub fn value(&self, v: u32) -> u32 {
        if self.identity {
            return v;
        }
        let fc = self.from.channels();
        match &self.lut {
            Some(lut) => {
                lut[0][((v >> fc[0].1) & u32::from(fc[0].0)) as usize & 0xff]
                    | lut[1][((v >> fc[1].1) & u32::from(fc[1].0)) as usize & 0xff]
                    | lut[2][((v >> fc[2].1) & u32::from(fc[2].0)) as usize & 0xff]
            }
            None => {
                let tc = self.to.channels();
                let mut out = 0;
                for c in 0..3 {
                    let x = (v >> fc[c].1) & u32::from(fc[c].0);
                    out |= scale(x, u32::from(fc[c].0), u32::from(tc[c].0)) << tc[c].1;
                }
                out
            }
        }
    }

    /// Translates one pixel from its source bytes, returning it [`pack`]ed in destination bytes.
    #[inline]
    pub(crate) fn packed(&self, src: &[u8]) -> u32 {
        let fb = self.from.bytes_per_pixel();
        if self.identity {
            return pack(src, fb);
        }
        let v = self.value(read_value(src, fb, self.from.big_endian));
        let mut out = [0u8; 4];
        write_value(&mut out, v, self.to.bytes_per_pixel(), self.to.big_endian);
        u32::from_ne_bytes(out)
    }

    /// Translates a row of pixels from `src` into `dst` (`dst` holds whole destination pixels).
    #[inline]
    pub(crate) fn row(&self, src: &[u8], dst: &mut [u8]) {
        if self.identity {
            dst.copy_from_slice(&src[..dst.len()]);
            return;
        }
        let fb = self.from.bytes_per_pixel();
        let tb = self.to.bytes_per_pixel();
        for (s, d) in src.chunks_exact(fb).zip(dst.chunks_exact_mut(tb)) {
            let v = self.value(read_value(s, fb, self.from.big_endian));
            write_value(d, v, tb, self.to.big_endian);
        }
    }
}

/// ZRLE's compressed pixel: `(bytes per CPIXEL, offset of those bytes inside the wire pixel)`.
///
/// 32-bit true colour with depth ≤ 24 whose colour bits fit in the three least (preferred) or
/// most significant bytes uses three bytes.
#[cfg(feature = "alloc")]
pub(crate) fn cpixel_layout(pf: &PixelFormat) -> (usize, usize) {
    let pf = effective_format(pf);
    if pf.true_colour && pf.bits_per_pixel == 32 && pf.depth <= 24 {
        let used = pf.used_bits();
        if used < 1 << 24 {
            return (3, usize::from(pf.big_endian));
        }
        if used & 0xff == 0 {
            return (3, usize::from(!pf.big_endian));
        }
    }
    (pf.bytes_per_pixel(), 0)
}
