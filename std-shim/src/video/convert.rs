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
        }
    }
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
