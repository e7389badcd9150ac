//! Captured frames into the server's native image (`B, G, R, 0`), and the tiles that changed.

use anyhow::{Result, bail};
use rfb_core::wire::Rect;

use super::v4l2::{Negotiated, PixelFormat};
use crate::vnc::desktop::Image;

/// Side of the square tiles compared for damage (ZRLE's tile size).
pub const TILE: u16 = 64;

fn clamp(v: i32) -> u8 {
    v.clamp(0, 255) as u8
}

/// BT.601 limited range (what capture chips and vivid produce) → RGB, in integers.
fn yuv(y: u8, u: u8, v: u8) -> [u8; 3] {
    let c = i32::from(y) - 16;
    let d = i32::from(u) - 128;
    let e = i32::from(v) - 128;
    [
        clamp((298 * c + 409 * e + 128) >> 8),
        clamp((298 * c - 100 * d - 208 * e + 128) >> 8),
        clamp((298 * c + 516 * d + 128) >> 8),
    ]
}

/// Converts one frame of `f` (`bytes` as the driver filled them) into `out` (which is
/// resized to the frame).
pub fn convert(f: &Negotiated, bytes: &[u8], out: &mut Image) -> Result<()> {
    if f.format == PixelFormat::Mjpeg {
        return mjpeg(f, bytes, out);
    }
    let (w, h) = (f.width as usize, f.height as usize);
    let stride = f.stride as usize;
    if bytes.len() < stride * (h - 1) + w * f.format.bytes_per_pixel() as usize {
        bail!("a short frame: {} bytes for {w}x{h}", bytes.len());
    }
    if (usize::from(out.width), usize::from(out.height)) != (w, h) {
        *out = Image::new(w as u16, h as u16);
    }
    for y in 0..h {
        let src = &bytes[y * stride..];
        let dst = &mut out.data[y * w * 4..(y + 1) * w * 4];
        match f.format {
            PixelFormat::Rgb24 | PixelFormat::Bgr24 => {
                let bgr = f.format == PixelFormat::Bgr24;
                for (d, s) in dst.chunks_exact_mut(4).zip(src.chunks_exact(3)) {
                    let (r, g, b) = if bgr {
                        (s[2], s[1], s[0])
                    } else {
                        (s[0], s[1], s[2])
                    };
                    d.copy_from_slice(&[b, g, r, 0]);
                }
            }
            PixelFormat::Yuyv | PixelFormat::Uyvy => {
                let uyvy = f.format == PixelFormat::Uyvy;
                for (d, s) in dst.chunks_mut(8).zip(src[..w * 2].chunks_exact(4)) {
                    let (y0, u, y1, v) = if uyvy {
                        (s[1], s[0], s[3], s[2])
                    } else {
                        (s[0], s[1], s[2], s[3])
                    };
                    for (k, yy) in [y0, y1].into_iter().enumerate() {
                        if let Some(px) = d.get_mut(k * 4..k * 4 + 4) {
                            let [r, g, b] = yuv(yy, u, v);
                            px.copy_from_slice(&[b, g, r, 0]);
                        }
                    }
                }
            }
            PixelFormat::Mjpeg => unreachable!("decoded above"),
        }
    }
    Ok(())
}

/// Whether a JPEG has neither Huffman tables (DHT) nor an `AVI1` APP0 before its first scan:
/// what many USB grabbers send (the standard tables of the MJPEG/AVI convention apply, which
/// zune-jpeg supplies once it sees the `AVI1` marker).
fn lacks_tables(d: &[u8]) -> bool {
    if d.len() < 4 || d[0] != 0xff || d[1] != 0xd8 {
        return false;
    }
    let mut i = 2;
    while i + 4 <= d.len() {
        if d[i] != 0xff {
            return false;
        }
        let m = d[i + 1];
        match m {
            0xff => {
                i += 1;
                continue;
            }
            0x01 | 0xd0..=0xd7 => {
                i += 2;
                continue;
            }
            0xc4 => return false,
            0xda => return true,
            _ => {}
        }
        let len = usize::from(u16::from_be_bytes([d[i + 2], d[i + 3]]));
        if m == 0xe0 && d.get(i + 4..i + 8) == Some(b"AVI1") {
            return false;
        }
        if len < 2 {
            return false;
        }
        i += 2 + len;
    }
    false
}

/// Decodes one MJPEG frame (of the negotiated size; a frame of another size is an error).
fn mjpeg(f: &Negotiated, bytes: &[u8], out: &mut Image) -> Result<()> {
    let patched;
    let data = if lacks_tables(bytes) {
        let mut v = Vec::with_capacity(bytes.len() + 9);
        v.extend_from_slice(&bytes[..2]);
        v.extend_from_slice(&[0xff, 0xe0, 0x00, 0x07, b'A', b'V', b'I', b'1', 0]);
        v.extend_from_slice(&bytes[2..]);
        patched = v;
        &patched[..]
    } else {
        bytes
    };
    let (fw, fh) = (
        u16::try_from(f.width).unwrap_or(u16::MAX),
        u16::try_from(f.height).unwrap_or(u16::MAX),
    );
    // No stale frame for pass-through if this one fails half-way.
    out.jpeg = None;
    out.decode_jpeg_pixels(data, fw, fh)
        .map_err(|e| anyhow::anyhow!("a bad MJPEG frame: {e}"))?;
    if (out.width, out.height) != (fw, fh) {
        bail!(
            "an MJPEG frame of {}x{} in a {}x{} stream",
            out.width,
            out.height,
            f.width,
            f.height
        );
    }
    // Kept for the viewers that take it as it is (with the AVI1 marker, when the tables were
    // left out, so that any decoder knows the standard ones apply).
    out.jpeg = Some(std::sync::Arc::from(data));
    Ok(())
}

/// The tiles in which `new` differs from `old` (the whole image if the sizes differ), merged
/// along rows.
pub fn damage(old: &Image, new: &Image) -> Vec<Rect> {
    let (w, h) = (new.width, new.height);
    if (old.width, old.height) != (w, h) {
        return vec![Rect::new(0, 0, w, h)];
    }
    let stride = new.stride();
    let mut out: Vec<Rect> = Vec::new();
    for ty in (0..h).step_by(usize::from(TILE)) {
        let th = TILE.min(h - ty);
        let mut run: Option<Rect> = None;
        for tx in (0..w).step_by(usize::from(TILE)) {
            let tw = TILE.min(w - tx);
            let (a, b) = (usize::from(tx) * 4, usize::from(tx + tw) * 4);
            let changed = (usize::from(ty)..usize::from(ty + th)).any(|y| {
                old.data[y * stride + a..y * stride + b] != new.data[y * stride + a..y * stride + b]
            });
            match (&mut run, changed) {
                (Some(r), true) => r.width += tw,
                (None, true) => run = Some(Rect::new(tx, ty, tw, th)),
                (Some(_), false) => out.extend(run.take()),
                (None, false) => {}
            }
        }
        out.extend(run);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fmt(format: PixelFormat, w: u32, h: u32, pad: u32) -> Negotiated {
        let stride = w * format.bytes_per_pixel() + pad;
        Negotiated {
            format,
            width: w,
            height: h,
            stride,
            size_image: stride * h,
        }
    }

    #[test]
    fn rgb_and_bgr_are_exact_with_padded_rows() {
        let f = fmt(PixelFormat::Rgb24, 3, 2, 7);
        let mut bytes = vec![0xeeu8; (f.stride * 2) as usize];
        for y in 0..2usize {
            for x in 0..3usize {
                let i = y * f.stride as usize + x * 3;
                bytes[i..i + 3].copy_from_slice(&[x as u8 * 50, y as u8 * 90, 7]);
            }
        }
        let mut img = Image::new(1, 1);
        convert(&f, &bytes, &mut img).unwrap();
        assert_eq!((img.width, img.height), (3, 2));
        assert_eq!(img.rgb(2, 1), 0x0064_5a07);
        let mut img2 = Image::new(3, 2);
        let f = Negotiated {
            format: PixelFormat::Bgr24,
            ..f
        };
        convert(&f, &bytes, &mut img2).unwrap();
        assert_eq!(img2.rgb(2, 1), 0x0007_5a64);
    }

    #[test]
    fn yuyv_within_rounding_of_bt601() {
        // black, white, red, blue and 75% red in limited-range BT.601
        let cases = [
            ((16, 128, 128), [0, 0, 0]),
            ((235, 128, 128), [255, 255, 255]),
            ((81, 90, 240), [255, 0, 0]),
            ((41, 240, 110), [0, 0, 255]),
            ((65, 100, 212), [191, 0, 0]),
        ];
        for ((y, u, v), want) in cases {
            let f = fmt(PixelFormat::Yuyv, 2, 1, 0);
            let mut img = Image::new(2, 1);
            convert(&f, &[y, u, y, v], &mut img).unwrap();
            let got = img.rgb(1, 0).to_be_bytes();
            for c in 0..3 {
                assert!(
                    (i32::from(got[c + 1]) - want[c]).abs() <= 2,
                    "{y},{u},{v}: {got:?} vs {want:?}"
                );
            }
            let f = fmt(PixelFormat::Uyvy, 2, 1, 0);
            let mut img2 = Image::new(2, 1);
            convert(&f, &[u, y, v, y], &mut img2).unwrap();
            assert_eq!(img, img2);
        }
        let f = fmt(PixelFormat::Yuyv, 4, 4, 0);
        assert!(convert(&f, &[0; 10], &mut Image::new(1, 1)).is_err());
    }

    /// Removes every DHT segment, as many webcams send their frames.
    fn strip_dht(j: &[u8]) -> Vec<u8> {
        let mut out = j[..2].to_vec();
        let mut i = 2;
        loop {
            let m = j[i + 1];
            if m == 0xda {
                out.extend_from_slice(&j[i..]);
                return out;
            }
            let len = usize::from(u16::from_be_bytes([j[i + 2], j[i + 3]]));
            if m != 0xc4 {
                out.extend_from_slice(&j[i..i + 2 + len]);
            }
            i += 2 + len;
        }
    }

    #[test]
    fn mjpeg_frames_decode_with_or_without_their_tables() {
        let (w, h) = (64u16, 48u16);
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x * 4) as u8, (y * 5) as u8, 128]);
            }
        }
        let mut jpeg = Vec::new();
        jpeg_encoder::Encoder::new(&mut jpeg, 100)
            .encode(&rgb, w, h, jpeg_encoder::ColorType::Rgb)
            .unwrap();
        let f = Negotiated {
            format: PixelFormat::Mjpeg,
            width: u32::from(w),
            height: u32::from(h),
            stride: 0,
            size_image: 1 << 20,
        };
        let mut img = Image::new(1, 1);
        convert(&f, &jpeg, &mut img).unwrap();
        assert_eq!((img.width, img.height), (w, h));
        let worst = img
            .to_rgb8()
            .iter()
            .zip(&rgb)
            .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
            .max()
            .unwrap();
        assert!(worst <= 12, "quality 100 JPEG off by {worst}");
        // the standard tables fill in for missing ones: the same picture
        let bare = strip_dht(&jpeg);
        assert!(bare.len() < jpeg.len() && lacks_tables(&bare) && !lacks_tables(&jpeg));
        let mut img2 = Image::new(1, 1);
        convert(&f, &bare, &mut img2).unwrap();
        assert_eq!(img.data, img2.data);
        // the frames are kept for JPEG pass-through: as they came, or with the AVI1 marker
        // that tells any decoder the standard tables apply (and decode to the same picture)
        assert_eq!(img.jpeg.as_deref(), Some(&jpeg[..]));
        let kept = img2.jpeg.clone().unwrap();
        assert!(kept.windows(4).any(|w| w == b"AVI1") && !lacks_tables(&kept));
        assert_eq!(Image::decode_jpeg(&kept).unwrap().data, img.data);
        // a frame of another size, and garbage, are errors
        let small = Negotiated { width: 32, ..f };
        assert!(convert(&small, &jpeg, &mut img2).is_err());
        assert!(convert(&f, &[0xff, 0xd8, 0xff, 0xda, 0, 2, 1, 2, 3], &mut img2).is_err());
        assert!(convert(&f, b"not a jpeg", &mut img2).is_err());
    }

    #[test]
    fn damage_is_the_changed_tiles() {
        let a = Image::new(200, 130);
        let mut b = a.clone();
        assert!(damage(&a, &b).is_empty());
        b.fill(Rect::new(70, 10, 2, 2), 0xffffff); // tile (1, 0)
        b.fill(Rect::new(130, 10, 1, 1), 0xffffff); // tile (2, 0), next to it
        b.fill(Rect::new(199, 129, 1, 1), 0xffffff); // the last, partial tile
        assert_eq!(
            damage(&a, &b),
            [Rect::new(64, 0, 128, 64), Rect::new(192, 128, 8, 2)]
        );
        assert_eq!(damage(&Image::new(10, 10), &b), [Rect::new(0, 0, 200, 130)]);
    }
}
