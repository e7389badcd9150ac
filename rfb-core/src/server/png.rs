//! A small PNG writer for TightPNG (`alloc`): 8-bit RGB (each row filtered with whichever of
//! None, Sub, Up and Paeth gives the smallest sum of absolute values, libpng's heuristic) or
//! 8-bit indexed colour with its palette. The image data goes through the connection's zlib
//! implementation ([`ZrleCompressor`]): a fresh stream per image, sync-flushed, then closed by
//! hand with an empty final stored block and the Adler-32 of the data (a complete RFC 1950
//! stream without a finish operation in the trait).

use alloc::vec::Vec;

use crate::zlib::{CompressError, ZrleCompressor, compress_all};

const SIGNATURE: [u8; 8] = [0x89, b'P', b'N', b'G', b'\r', b'\n', 0x1a, b'\n'];

/// What the rows hold.
pub(crate) enum PngPixels<'a> {
    /// Three bytes (R, G, B) a pixel.
    Rgb(&'a [u8]),
    /// One palette index a pixel, and the palette (R, G, B each, at most 256 entries).
    Indexed(&'a [u8], &'a [[u8; 3]]),
}

const fn crc_table() -> [u32; 256] {
    let mut t = [0u32; 256];
    let mut n = 0;
    while n < 256 {
        let mut c = n as u32;
        let mut k = 0;
        while k < 8 {
            c = if c & 1 != 0 {
                0xedb8_8320 ^ (c >> 1)
            } else {
                c >> 1
            };
            k += 1;
        }
        t[n] = c;
        n += 1;
    }
    t
}

static CRC: [u32; 256] = crc_table();

fn crc32(parts: &[&[u8]]) -> u32 {
    let mut c = !0u32;
    for p in parts {
        for &b in *p {
            c = CRC[((c ^ u32::from(b)) & 0xff) as usize] ^ (c >> 8);
        }
    }
    !c
}

pub(crate) fn adler32(data: &[u8]) -> u32 {
    const MOD: u32 = 65521;
    let (mut a, mut b) = (1u32, 0u32);
    // 5552 bytes keep the sums below 2³² before the reduction (zlib's NMAX).
    for chunk in data.chunks(5552) {
        for &x in chunk {
            a += u32::from(x);
            b += a;
        }
        a %= MOD;
        b %= MOD;
    }
    (b << 16) | a
}

fn chunk(out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(kind);
    out.extend_from_slice(data);
    out.extend_from_slice(&crc32(&[kind, data]).to_be_bytes());
}

#[inline]
fn paeth(a: u8, b: u8, c: u8) -> u8 {
    let p = i16::from(a) + i16::from(b) - i16::from(c);
    let (pa, pb, pc) = (
        (p - i16::from(a)).abs(),
        (p - i16::from(b)).abs(),
        (p - i16::from(c)).abs(),
    );
    if pa <= pb && pa <= pc {
        a
    } else if pb <= pc {
        b
    } else {
        c
    }
}

/// Appends the filtered rows of an RGB image (filter byte, then the row) to `raw`.
fn filter_rgb(rgb: &[u8], width: usize, raw: &mut Vec<u8>, scratch: &mut Vec<u8>) {
    let row = width * 3;
    let zero = alloc::vec![0u8; row];
    scratch.resize(4 * row, 0);
    for (y, cur) in rgb.chunks_exact(row).enumerate() {
        let up = if y == 0 {
            &zero[..]
        } else {
            &rgb[(y - 1) * row..y * row]
        };
        let (sub, rest) = scratch.split_at_mut(row);
        let (upf, rest) = rest.split_at_mut(row);
        let (pae, _) = rest.split_at_mut(row);
        for i in 0..row {
            let a = if i >= 3 { cur[i - 3] } else { 0 };
            let c = if i >= 3 { up[i - 3] } else { 0 };
            sub[i] = cur[i].wrapping_sub(a);
            upf[i] = cur[i].wrapping_sub(up[i]);
            pae[i] = cur[i].wrapping_sub(paeth(a, up[i], c));
        }
        // Sum of the bytes as signed values: small residuals win.
        let cost =
            |r: &[u8]| -> u32 { r.iter().map(|&b| u32::from((b as i8).unsigned_abs())).sum() };
        let candidates: [(u8, &[u8]); 4] = [(0, cur), (1, sub), (2, upf), (4, pae)];
        let (f, best) = candidates
            .into_iter()
            .min_by_key(|(_, r)| cost(r))
            .unwrap_or((0, cur));
        raw.push(f);
        raw.extend_from_slice(best);
    }
}

/// Appends a PNG of `width` × `height` pixels to `out`; `comp` must be a fresh stream.
pub(crate) fn write_png(
    out: &mut Vec<u8>,
    width: u16,
    height: u16,
    pixels: PngPixels<'_>,
    comp: &mut dyn ZrleCompressor,
    raw: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
) -> Result<(), CompressError> {
    let (w, h) = (usize::from(width), usize::from(height));
    raw.clear();
    let colour_type = match pixels {
        PngPixels::Rgb(rgb) => {
            if rgb.len() < w * h * 3 {
                return Err(CompressError);
            }
            filter_rgb(&rgb[..w * h * 3], w, raw, scratch);
            2
        }
        PngPixels::Indexed(idx, palette) => {
            if idx.len() < w * h || palette.is_empty() || palette.len() > 256 {
                return Err(CompressError);
            }
            for row in idx[..w * h].chunks_exact(w) {
                raw.push(0);
                raw.extend_from_slice(row);
            }
            3
        }
    };
    out.extend_from_slice(&SIGNATURE);
    let mut ihdr = [0u8; 13];
    ihdr[..4].copy_from_slice(&u32::from(width).to_be_bytes());
    ihdr[4..8].copy_from_slice(&u32::from(height).to_be_bytes());
    ihdr[8] = 8; // bit depth
    ihdr[9] = colour_type;
    // compression 0, filter method 0, no interlace
    chunk(out, b"IHDR", &ihdr);
    if let PngPixels::Indexed(_, palette) = pixels {
        let plte: Vec<u8> = palette.iter().flatten().copied().collect();
        chunk(out, b"PLTE", &plte);
    }
    // IDAT: the chunk's length is patched once the data is there.
    let at = out.len();
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(b"IDAT");
    compress_all(comp, raw, out)?;
    // An empty final stored block ends the deflate data, then the Adler-32 (RFC 1950).
    out.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
    out.extend_from_slice(&adler32(raw).to_be_bytes());
    let len = out.len() - at - 8;
    out[at..at + 4].copy_from_slice(&(len as u32).to_be_bytes());
    let crc = crc32(&[&out[at + 4..]]);
    out.extend_from_slice(&crc.to_be_bytes());
    chunk(out, b"IEND", &[]);
    Ok(())
}

#[cfg(test)]
mod test {
    use super::*;
    use crate::zlib::MinizCompressor;

    #[test]
    fn checksums() {
        assert_eq!(crc32(&[b"IEND"]), 0xae42_6082);
        assert_eq!(adler32(b"Wikipedia"), 0x11e6_0398);
        let big = alloc::vec![0xffu8; 100_000];
        // zlib's value for 100000 bytes of 0xff
        let mut a = 1u64;
        let mut b = 0u64;
        for &x in &big {
            a = (a + u64::from(x)) % 65521;
            b = (b + a) % 65521;
        }
        assert_eq!(u64::from(adler32(&big)), (b << 16) | a);
    }

    /// The hand-closed zlib stream is a complete one (miniz inflates it with the checksum).
    #[test]
    fn closed_stream_inflates() {
        let data: Vec<u8> = (0..50_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let mut c = MinizCompressor::new(6);
        let mut z = Vec::new();
        compress_all(&mut c, &data, &mut z).unwrap();
        z.extend_from_slice(&[0x01, 0x00, 0x00, 0xff, 0xff]);
        z.extend_from_slice(&adler32(&data).to_be_bytes());
        let back = miniz_oxide::inflate::decompress_to_vec_zlib(&z).unwrap();
        assert_eq!(back, data);
    }
}
