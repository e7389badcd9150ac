//! What `kvmio vnc serve` shows: a still image loaded from a PNG file, or an animated test
//! pattern whose every frame changes a few known rectangles (so incremental updates carry real
//! damage). Pixels are kept as 32-bit little-endian `0x00RRGGBB` (rfb-core's
//! `PixelFormat::RGB888`), the server's native format.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rfb_core::server::Damage;
use rfb_core::wire::{PixelFormat, Rect};

use crate::vnc::jpeg::TurboJpegDecoder;

/// The server's native pixel format.
pub const NATIVE: PixelFormat = PixelFormat::RGB888;

/// An image in the native format (4 bytes per pixel, rows without padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: u16,
    /// Height in pixels.
    pub height: u16,
    /// `width * height * 4` bytes, `B, G, R, 0` per pixel.
    pub data: Vec<u8>,
    /// The same picture as the JPEG it was decoded from (an MJPEG capture, a `.jpg` image):
    /// viewers that take Tight JPEG get these bytes as they are (`UpdateSource::jpeg`).
    pub jpeg: Option<Arc<[u8]>>,
}

impl Image {
    /// A black image.
    pub fn new(width: u16, height: u16) -> Self {
        Self {
            width,
            height,
            data: vec![0; usize::from(width) * usize::from(height) * 4],
            jpeg: None,
        }
    }

    /// Bytes per row.
    pub fn stride(&self) -> usize {
        usize::from(self.width) * 4
    }

    /// The pixel at (x, y) as `0xRRGGBB`.
    pub fn rgb(&self, x: u16, y: u16) -> u32 {
        let i = (usize::from(y) * usize::from(self.width) + usize::from(x)) * 4;
        u32::from_le_bytes([self.data[i], self.data[i + 1], self.data[i + 2], 0])
    }

    /// RGB triples, row by row (for PNG output and comparisons).
    pub fn to_rgb8(&self) -> Vec<u8> {
        self.data
            .chunks_exact(4)
            .flat_map(|p| [p[2], p[1], p[0]])
            .collect()
    }

    /// An image from RGB triples.
    pub fn from_rgb8(width: u16, height: u16, rgb: &[u8]) -> Result<Self> {
        let n = usize::from(width) * usize::from(height);
        if rgb.len() != n * 3 {
            bail!("{} bytes of RGB for {width}x{height}", rgb.len());
        }
        let data = rgb
            .chunks_exact(3)
            .flat_map(|p| [p[2], p[1], p[0], 0])
            .collect();
        Ok(Self {
            width,
            height,
            data,
            jpeg: None,
        })
    }

    /// Loads a PNG or a JPEG file (by its first bytes). A JPEG is decoded
    /// ([`Image::decode_jpeg_pixels`]) and kept as it is for the viewers that take Tight JPEG ([`Image::jpeg`]).
    pub fn load(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).with_context(|| format!("read {}", path.display()))?;
        if bytes.starts_with(&[0xff, 0xd8]) {
            Self::decode_jpeg(&bytes).with_context(|| format!("image {}", path.display()))
        } else {
            Self::decode_png(std::io::Cursor::new(bytes))
                .with_context(|| format!("image {}", path.display()))
        }
    }

    /// Decodes a JPEG (at most 8192 × 8192 pixels), keeping its bytes.
    pub fn decode_jpeg(bytes: &[u8]) -> Result<Self> {
        let mut img = Self::new(0, 0);
        img.decode_jpeg_pixels(bytes, 8192, 8192)?;
        img.jpeg = Some(Arc::from(bytes));
        Ok(img)
    }

    /// Decodes a JPEG of at most `max_w` × `max_h` pixels (the header is checked before any
    /// pixel is) into this image, resized to it; [`Image::jpeg`] is left alone. Through
    /// libjpeg-turbo where `libturbojpeg.so.0` is installed (one decompressor per thread), else
    /// zune-jpeg.
    pub fn decode_jpeg_pixels(&mut self, bytes: &[u8], max_w: u16, max_h: u16) -> Result<()> {
        use std::cell::RefCell;
        thread_local! {
            static TURBO: RefCell<Option<Option<TurboJpegDecoder>>> = const { RefCell::new(None) };
        }
        let turbo = TURBO.with(|t| -> Result<bool> {
            let mut t = t.borrow_mut();
            let Some(d) = t.get_or_insert_with(TurboJpegDecoder::new) else {
                return Ok(false);
            };
            let (w, h) = d.size(bytes)?;
            if w > max_w || h > max_h {
                bail!("a JPEG of {w}x{h}, more than {max_w}x{max_h}");
            }
            self.resize(w, h);
            d.decode_bgr0(bytes, w, h, &mut self.data)?;
            Ok(true)
        })?;
        if turbo {
            return Ok(());
        }
        self.decode_zune(bytes, max_w, max_h)
    }

    /// Makes the image `w` × `h` (black) unless it is that size already; [`Image::jpeg`] stays.
    fn resize(&mut self, w: u16, h: u16) {
        if (self.width, self.height) != (w, h) {
            *self = Self {
                jpeg: self.jpeg.take(),
                ..Self::new(w, h)
            };
        }
    }

    /// [`Image::decode_jpeg_pixels`] through zune-jpeg.
    fn decode_zune(&mut self, bytes: &[u8], max_w: u16, max_h: u16) -> Result<()> {
        use zune_core::bytestream::ZCursor;
        use zune_core::colorspace::ColorSpace;
        use zune_core::options::DecoderOptions;
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_max_width(usize::from(max_w))
            .set_max_height(usize::from(max_h));
        let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(bytes), options);
        let rgb = d
            .decode()
            .map_err(|e| anyhow::anyhow!("a bad JPEG: {e:?}"))?;
        let info = d.info().ok_or_else(|| anyhow::anyhow!("a bad JPEG"))?;
        let (w, h) = (info.width, info.height);
        if rgb.len() != usize::from(w) * usize::from(h) * 3 {
            bail!("a bad JPEG: {} bytes of RGB for {w}x{h}", rgb.len());
        }
        self.resize(w, h);
        for (d, s) in self.data.chunks_exact_mut(4).zip(rgb.chunks_exact(3)) {
            d.copy_from_slice(&[s[2], s[1], s[0], 0]);
        }
        Ok(())
    }

    /// Loads a PNG file. Every PNG colour type and bit depth is accepted: palettes and grey
    /// are expanded, 16-bit channels are cut to their high 8 bits, and **alpha is ignored**
    /// (pixels are shown as if opaque). At most 8192 × 8192 pixels.
    pub fn load_png(path: &Path) -> Result<Self> {
        let f = std::fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
        Self::decode_png(std::io::BufReader::new(f))
            .with_context(|| format!("image {}", path.display()))
    }

    /// Decodes PNG bytes (see [`Image::load_png`]).
    pub fn decode_png(r: impl std::io::BufRead + std::io::Seek) -> Result<Self> {
        let mut dec = png::Decoder::new(r);
        dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
        let mut reader = dec.read_info().context("not a PNG file")?;
        let info = reader.info();
        let (w, h) = (info.width, info.height);
        if w == 0 || h == 0 || w > 8192 || h > 8192 {
            bail!("{w}x{h} pixels: the size must be 1 to 8192 each way");
        }
        let mut buf = vec![0u8; reader.output_buffer_size().context("image too large")?];
        let frame = reader.next_frame(&mut buf).context("decode PNG")?;
        let (ct, _) = reader.output_color_type();
        let channels = match ct {
            png::ColorType::Grayscale => 1,
            png::ColorType::GrayscaleAlpha => 2,
            png::ColorType::Rgb => 3,
            png::ColorType::Rgba => 4,
            png::ColorType::Indexed => bail!("palette not expanded"),
        };
        let mut img = Image::new(w as u16, h as u16);
        for y in 0..h as usize {
            let row = &buf[y * frame.line_size..][..w as usize * channels];
            for x in 0..w as usize {
                let p = &row[x * channels..][..channels];
                let (r, g, b) = if channels >= 3 {
                    (p[0], p[1], p[2])
                } else {
                    (p[0], p[0], p[0])
                };
                let o = (y * w as usize + x) * 4;
                img.data[o..o + 4].copy_from_slice(&[b, g, r, 0]);
            }
        }
        Ok(img)
    }

    /// Writes the image as an 8-bit RGB PNG.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let f =
            std::fs::File::create(path).with_context(|| format!("create {}", path.display()))?;
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(f),
            u32::from(self.width),
            u32::from(self.height),
        );
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header()?;
        w.write_image_data(&self.to_rgb8())?;
        w.finish()?;
        Ok(())
    }

    pub(crate) fn fill(&mut self, r: Rect, rgb: u32) {
        let r = r.clip_to(self.width, self.height);
        let px = (rgb & 0x00ff_ffff).to_le_bytes();
        let stride = self.stride();
        for y in r.y..r.y + r.height {
            let row = &mut self.data[usize::from(y) * stride..][..stride];
            for x in r.x..r.x + r.width {
                row[usize::from(x) * 4..][..4].copy_from_slice(&px);
            }
        }
    }
}

/// What the server shows.
#[derive(Debug, Clone)]
pub enum Desktop {
    /// One picture for every client.
    Still(Arc<Image>),
    /// The animated test pattern at this size.
    Pattern {
        /// Width.
        width: u16,
        /// Height.
        height: u16,
    },
    /// Frames from a capture device (the target computer's screen).
    Video(Arc<crate::video::Hub>),
}

impl Desktop {
    /// The framebuffer size.
    pub fn size(&self) -> (u16, u16) {
        match self {
            Desktop::Still(i) => (i.width, i.height),
            Desktop::Pattern { width, height } => (*width, *height),
            Desktop::Video(hub) => {
                let i = hub.current().0;
                (i.width, i.height)
            }
        }
    }
}

/// Parses a framebuffer size, `WxH` (e.g. `1024x768`; each 1 to 8192).
pub fn parse_geometry(s: &str) -> Result<(u16, u16)> {
    let (w, h) = s
        .split_once(['x', 'X'])
        .with_context(|| format!("expected WxH, got {s:?}"))?;
    let w: u16 = w
        .trim()
        .parse()
        .with_context(|| format!("bad width in {s:?}"))?;
    let h: u16 = h
        .trim()
        .parse()
        .with_context(|| format!("bad height in {s:?}"))?;
    if w == 0 || h == 0 || w > 8192 || h > 8192 {
        bail!("size {s:?}: width and height must be 1 to 8192");
    }
    Ok((w, h))
}

// ------------------------------------------------------------------------------ test pattern

/// 5 × 7 glyphs, one row per byte (bit 4 is the leftmost column).
fn glyph(c: char) -> [u8; 7] {
    match c {
        '0' => [0x0e, 0x11, 0x13, 0x15, 0x19, 0x11, 0x0e],
        '1' => [0x04, 0x0c, 0x04, 0x04, 0x04, 0x04, 0x0e],
        '2' => [0x0e, 0x11, 0x01, 0x02, 0x04, 0x08, 0x1f],
        '3' => [0x1f, 0x02, 0x04, 0x02, 0x01, 0x11, 0x0e],
        '4' => [0x02, 0x06, 0x0a, 0x12, 0x1f, 0x02, 0x02],
        '5' => [0x1f, 0x10, 0x1e, 0x01, 0x01, 0x11, 0x0e],
        '6' => [0x06, 0x08, 0x10, 0x1e, 0x11, 0x11, 0x0e],
        '7' => [0x1f, 0x01, 0x02, 0x04, 0x08, 0x08, 0x08],
        '8' => [0x0e, 0x11, 0x11, 0x0e, 0x11, 0x11, 0x0e],
        '9' => [0x0e, 0x11, 0x11, 0x0f, 0x01, 0x02, 0x0c],
        ':' => [0x00, 0x0c, 0x0c, 0x00, 0x0c, 0x0c, 0x00],
        '.' => [0x00, 0x00, 0x00, 0x00, 0x00, 0x0c, 0x0c],
        'A' => [0x0e, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'E' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x1f],
        'F' => [0x1f, 0x10, 0x10, 0x1e, 0x10, 0x10, 0x10],
        'I' => [0x0e, 0x04, 0x04, 0x04, 0x04, 0x04, 0x0e],
        'K' => [0x11, 0x12, 0x14, 0x18, 0x14, 0x12, 0x11],
        'M' => [0x11, 0x1b, 0x15, 0x15, 0x11, 0x11, 0x11],
        'O' => [0x0e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'R' => [0x1e, 0x11, 0x11, 0x1e, 0x14, 0x12, 0x11],
        'V' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x0a, 0x04],
        'D' => [0x1e, 0x11, 0x11, 0x11, 0x11, 0x11, 0x1e],
        'G' => [0x0e, 0x11, 0x10, 0x17, 0x11, 0x11, 0x0f],
        'L' => [0x10, 0x10, 0x10, 0x10, 0x10, 0x10, 0x1f],
        'N' => [0x11, 0x19, 0x15, 0x13, 0x11, 0x11, 0x11],
        'S' => [0x0f, 0x10, 0x10, 0x0e, 0x01, 0x01, 0x1e],
        'T' => [0x1f, 0x04, 0x04, 0x04, 0x04, 0x04, 0x04],
        'C' => [0x0e, 0x11, 0x10, 0x10, 0x10, 0x11, 0x0e],
        'U' => [0x11, 0x11, 0x11, 0x11, 0x11, 0x11, 0x0e],
        'P' => [0x1e, 0x11, 0x11, 0x1e, 0x10, 0x10, 0x10],
        'H' => [0x11, 0x11, 0x11, 0x1f, 0x11, 0x11, 0x11],
        'B' => [0x1e, 0x11, 0x11, 0x1e, 0x11, 0x11, 0x1e],
        'W' => [0x11, 0x11, 0x11, 0x15, 0x15, 0x15, 0x0a],
        'Y' => [0x11, 0x11, 0x0a, 0x04, 0x04, 0x04, 0x04],
        'X' => [0x11, 0x11, 0x0a, 0x04, 0x0a, 0x11, 0x11],
        '/' => [0x01, 0x01, 0x02, 0x04, 0x08, 0x10, 0x10],
        '-' => [0x00, 0x00, 0x00, 0x1f, 0x00, 0x00, 0x00],
        _ => [0; 7],
    }
}

/// Draws `text` (upper-case letters, digits and a little punctuation of the built-in 5 × 7
/// font) with its top left corner at (`x`, `y`), each font pixel `scale` × `scale`, clipped to
/// the image; returns the area drawn.
pub fn draw_text(image: &mut Image, x: u16, y: u16, text: &str, scale: u16, rgb: u32) -> Rect {
    let bound = Rect::new(0, 0, image.width, image.height);
    for (i, c) in text.chars().enumerate() {
        let g = glyph(c.to_ascii_uppercase());
        let x0 = u32::from(x) + i as u32 * 6 * u32::from(scale);
        for (row, bits) in g.iter().enumerate() {
            for col in 0..5u32 {
                if bits & (0x10 >> col) != 0 {
                    let px = x0 + col * u32::from(scale);
                    let py = u32::from(y) + row as u32 * u32::from(scale);
                    if px >= u32::from(image.width) || py >= u32::from(image.height) {
                        continue;
                    }
                    let r = clip(Rect::new(px as u16, py as u16, scale, scale), bound);
                    image.fill(r, rgb);
                }
            }
        }
    }
    let w = (text.chars().count() as u32 * 6 * u32::from(scale)).min(u32::from(u16::MAX)) as u16;
    clip(Rect::new(x, y, w, 7 * scale), bound)
}

const SCALE: u16 = 3;
const CELL_W: u16 = 6 * SCALE;
const CELL_H: u16 = 9 * SCALE;
/// Characters in the clock line: `KVMIO  HH:MM:SS.T  FRAME NNNNNNNN` (UTC time of day).
const CLOCK_CHARS: u16 = 33;
const BAR_W: u16 = 48;
const BAR_STEP: u16 = 12;

/// The animated test pattern of one connection: static colour bars and a grey ramp, a clock
/// line with a frame counter (top left) and a bar sliding across a band in the lower third.
#[derive(Debug)]
pub struct Pattern {
    /// The current frame.
    pub image: Image,
    frame: u64,
    bar_x: u16,
}

impl Pattern {
    /// The first frame at `width` × `height`.
    pub fn new(width: u16, height: u16) -> Self {
        let mut p = Self {
            image: Image::new(width, height),
            frame: 0,
            bar_x: 0,
        };
        p.draw_background();
        p.draw_band();
        p.draw_clock();
        p
    }

    /// Frames drawn so far.
    pub fn frame(&self) -> u64 {
        self.frame
    }

    fn band(&self) -> Rect {
        let h = self.image.height;
        let y = h / 3 * 2;
        Rect::new(0, y, self.image.width, (h / 6).max(1)).clip_to(self.image.width, h)
    }

    fn clock_box(&self) -> Rect {
        Rect::new(8, 8, CLOCK_CHARS * CELL_W + 8, CELL_H + 8)
            .clip_to(self.image.width, self.image.height)
    }

    fn draw_background(&mut self) {
        let (w, h) = (self.image.width, self.image.height);
        const BARS: [u32; 8] = [
            0xc0c0c0, 0xc0c000, 0x00c0c0, 0x00c000, 0xc000c0, 0xc00000, 0x0000c0, 0x101010,
        ];
        let bars_h = h / 3 * 2;
        for (i, c) in BARS.iter().enumerate() {
            let x0 = (u32::from(w) * i as u32 / 8) as u16;
            let x1 = (u32::from(w) * (i as u32 + 1) / 8) as u16;
            self.image.fill(Rect::new(x0, 0, x1 - x0, bars_h), *c);
        }
        // A grey ramp below the band, and a fine checker in the last rows (text-like detail).
        for y in bars_h..h {
            for x in 0..w {
                let v = (u32::from(x) * 255 / u32::from(w.max(1))) & 0xff;
                let mut rgb = v << 16 | v << 8 | v;
                if y >= h - h / 12 && (x / 2 + y / 2) % 2 == 0 {
                    rgb ^= 0x203040;
                }
                self.image.fill(Rect::new(x, y, 1, 1), rgb);
            }
        }
    }

    fn draw_band(&mut self) {
        let b = self.band();
        self.image.fill(b, 0x182030);
        let bar = Rect::new(self.bar_x, b.y, BAR_W, b.height);
        self.image.fill(bar, 0xffe040);
    }

    fn draw_clock(&mut self) {
        let bx = self.clock_box();
        self.image.fill(bx, 0x000000);
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_millis();
        let text = format!(
            "KVMIO  {:02}:{:02}:{:02}.{}  FRAME {:08}",
            t / 3_600_000 % 24,
            t / 60_000 % 60,
            t / 1000 % 60,
            t / 100 % 10,
            self.frame % 100_000_000
        );
        for (i, c) in text.chars().enumerate() {
            let g = glyph(c);
            let x0 = bx.x + 4 + i as u16 * CELL_W;
            for (row, bits) in g.iter().enumerate() {
                for col in 0..5u16 {
                    if bits & (0x10 >> col) != 0 {
                        let r = Rect::new(
                            x0 + col * SCALE,
                            bx.y + 4 + SCALE + row as u16 * SCALE,
                            SCALE,
                            SCALE,
                        );
                        // Stay inside the box when the framebuffer is narrow.
                        let r = clip(r, bx);
                        self.image.fill(r, 0x40ff80);
                    }
                }
            }
        }
    }

    /// Draws the next frame (the clock shows the current time) and returns the areas that
    /// changed since the previous one.
    pub fn advance(&mut self) -> Vec<Damage> {
        self.frame += 1;
        let band = self.band();
        let old_bar =
            Rect::new(self.bar_x, band.y, BAR_W, band.height).clip_to(band.width, u16::MAX);
        let width = self.image.width.max(1);
        self.bar_x = ((u32::from(self.bar_x) + u32::from(BAR_STEP)) % u32::from(width)) as u16;
        self.draw_band();
        let new_bar =
            Rect::new(self.bar_x, band.y, BAR_W, band.height).clip_to(band.width, u16::MAX);
        self.draw_clock();
        let mut d = vec![Damage::Changed(self.clock_box())];
        for r in [old_bar, new_bar] {
            let r = r.clip_to(self.image.width, self.image.height);
            if !r.is_empty() {
                d.push(Damage::Changed(r));
            }
        }
        d
    }
}

/// The part of `r` inside `bound`.
pub fn clip(r: Rect, bound: Rect) -> Rect {
    let x0 = r.x.max(bound.x);
    let y0 = r.y.max(bound.y);
    let x1 = (u32::from(r.x) + u32::from(r.width)).min(u32::from(bound.x) + u32::from(bound.width));
    let y1 =
        (u32::from(r.y) + u32::from(r.height)).min(u32::from(bound.y) + u32::from(bound.height));
    if x1 <= u32::from(x0) || y1 <= u32::from(y0) {
        return Rect::new(x0, y0, 0, 0);
    }
    Rect::new(
        x0,
        y0,
        (x1 - u32::from(x0)) as u16,
        (y1 - u32::from(y0)) as u16,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// libjpeg-turbo (what decodes where it is installed, as tests/setup.sh makes it here) and
    /// zune-jpeg (the fallback) decode the same picture, within the rounding of their IDCTs,
    /// with the padding byte 0; both refuse an image larger than allowed and garbage.
    #[test]
    fn both_jpeg_decoders_agree() {
        use rfb_core::jpeg::{JpegEncoder, RustJpegEncoder, Subsampling};
        let (w, h) = (77u16, 41u16);
        let rgb: Vec<u8> = (0..usize::from(w) * usize::from(h))
            .flat_map(|i| {
                let (x, y) = (i % usize::from(w), i / usize::from(w));
                [(x * 3) as u8, (y * 6) as u8, (x * y) as u8]
            })
            .collect();
        let mut jpeg = Vec::new();
        RustJpegEncoder
            .encode(&rgb, w, h, 90, Subsampling::Half, &mut jpeg)
            .unwrap();
        crate::vnc::jpeg::available().expect("libturbojpeg.so.0 (Debian libturbojpeg0)");
        let mut turbo = Image::new(1, 1);
        turbo.decode_jpeg_pixels(&jpeg, w, h).unwrap();
        let mut zune = Image::new(1, 1);
        zune.decode_zune(&jpeg, w, h).unwrap();
        assert_eq!((turbo.width, turbo.height), (w, h));
        assert_eq!((zune.width, zune.height), (w, h));
        let worst = turbo
            .data
            .iter()
            .zip(&zune.data)
            .map(|(a, b)| a.abs_diff(*b))
            .max()
            .unwrap();
        assert!(worst <= 4, "the decoders differ by {worst}");
        assert!(turbo.data.chunks_exact(4).all(|p| p[3] == 0));
        assert!(turbo.decode_jpeg_pixels(&jpeg, w - 1, h).is_err());
        assert!(zune.decode_zune(&jpeg, w, h - 1).is_err());
        assert!(
            turbo
                .decode_jpeg_pixels(b"\xff\xd8 not a jpeg", w, h)
                .is_err()
        );
    }

    #[test]
    fn pattern_damage_covers_every_change() {
        let mut p = Pattern::new(320, 200);
        for i in 1..40u64 {
            let before = p.image.clone();
            let d = p.advance();
            // Every changed pixel lies inside a damage rectangle, and something changed.
            let inside = |x: u16, y: u16| {
                d.iter().any(|d| match d {
                    Damage::Changed(r) => {
                        x >= r.x && y >= r.y && x < r.x + r.width && y < r.y + r.height
                    }
                    Damage::Copied { .. } => false,
                })
            };
            let mut changed = 0;
            for y in 0..200 {
                for x in 0..320 {
                    if before.rgb(x, y) != p.image.rgb(x, y) {
                        changed += 1;
                        assert!(inside(x, y), "frame {i}: ({x},{y}) changed outside damage");
                    }
                }
            }
            assert!(changed > 0, "frame {i} changed nothing");
        }
        // Tiny framebuffers do not panic.
        let mut p = Pattern::new(1, 1);
        p.advance();
        let mut p = Pattern::new(7, 500);
        p.advance();
    }

    #[test]
    fn png_round_trip() {
        let dir = std::env::temp_dir().join(format!("kvmio-png-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = Pattern::new(67, 33);
        let f = dir.join("a.png");
        p.image.save_png(&f).unwrap();
        assert_eq!(Image::load_png(&f).unwrap(), p.image);
        std::fs::write(&f, b"not a png").unwrap();
        assert!(Image::load_png(&f).is_err());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
