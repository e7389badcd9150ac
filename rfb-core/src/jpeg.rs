//! JPEG for the Tight encoding (`alloc`): the server compresses through a [`JpegEncoder`], the
//! client decompresses through a [`JpegDecoder`], so a driver can plug in whatever codec it
//! has (a hardware one, libjpeg-turbo on a host). The crate ships pure-Rust, `no_std` ones:
//! [`RustJpegEncoder`] (crate `jpeg-encoder`, feature `jpeg-encode`) and [`ZuneJpegDecoder`]
//! (crate `zune-jpeg`, feature `jpeg-decode`); with the features on they are the defaults.
//!
//! Both sides work on 8-bit RGB, three bytes a pixel, row after row; the pixel format of the
//! session is applied around them.

use alloc::boxed::Box;
use alloc::vec::Vec;

/// A JPEG could not be made or read (for the client: the server sent a bad image).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct JpegError;

impl core::fmt::Display for JpegError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("JPEG coding failed")
    }
}

impl core::error::Error for JpegError {}

/// Chroma subsampling of an encoded image.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Subsampling {
    /// Every pixel keeps its colour (4:4:4).
    None,
    /// Colour for every other pixel of a row (4:2:2).
    Half,
    /// Colour for one pixel in four (4:2:0).
    Quarter,
    /// No colour at all (greyscale).
    Grey,
}

/// A JPEG compressor (baseline JFIF, as every Tight client decodes).
pub trait JpegEncoder: Send {
    /// Appends the JFIF image of `width` × `height` pixels (`rgb`: three bytes each, rows top to
    /// bottom) at `quality` (1 … 100) with `subsampling` to `out`.
    fn encode(
        &mut self,
        rgb: &[u8],
        width: u16,
        height: u16,
        quality: u8,
        subsampling: Subsampling,
        out: &mut Vec<u8>,
    ) -> Result<(), JpegError>;
}

/// Makes a connection's JPEG compressor when its first JPEG rectangle is encoded
/// ([`Server::set_jpeg_encoder`](crate::server::Server::set_jpeg_encoder)).
pub type JpegEncoderFactory = fn() -> Box<dyn JpegEncoder>;

/// A JPEG decompressor.
pub trait JpegDecoder: Send {
    /// Decodes `jpeg`, which must be a `width` × `height` image, into `rgb` (exactly
    /// `width * height * 3` bytes). An image of any other size is an error found from its
    /// header, before anything is allocated for it: the size comes from the rectangle the
    /// server announced, the image from the server too.
    fn decode(
        &mut self,
        jpeg: &[u8],
        width: u16,
        height: u16,
        rgb: &mut [u8],
    ) -> Result<(), JpegError>;
}

/// A [`JpegEncoder`] on the `jpeg-encoder` crate (pure Rust, `no_std`).
#[cfg(feature = "jpeg-encode")]
#[derive(Debug, Default, Clone, Copy)]
pub struct RustJpegEncoder;

#[cfg(feature = "jpeg-encode")]
impl RustJpegEncoder {
    /// The default [`JpegEncoderFactory`].
    pub fn boxed() -> Box<dyn JpegEncoder> {
        Box::new(Self)
    }
}

#[cfg(feature = "jpeg-encode")]
impl JpegEncoder for RustJpegEncoder {
    fn encode(
        &mut self,
        rgb: &[u8],
        width: u16,
        height: u16,
        quality: u8,
        subsampling: Subsampling,
        out: &mut Vec<u8>,
    ) -> Result<(), JpegError> {
        use jpeg_encoder::{ColorType, Encoder, SamplingFactor};
        let n = usize::from(width) * usize::from(height);
        if width == 0 || height == 0 || rgb.len() < n * 3 {
            return Err(JpegError);
        }
        let mut enc = Encoder::new(&mut *out, quality.clamp(1, 100));
        enc.set_sampling_factor(match subsampling {
            Subsampling::None | Subsampling::Grey => SamplingFactor::F_1_1,
            Subsampling::Half => SamplingFactor::F_2_1,
            Subsampling::Quarter => SamplingFactor::F_2_2,
        });
        if subsampling == Subsampling::Grey {
            // BT.601 luma, as the encoder's own colour conversion.
            let luma: Vec<u8> = rgb[..n * 3]
                .chunks_exact(3)
                .map(|p| {
                    let y =
                        19595 * u32::from(p[0]) + 38470 * u32::from(p[1]) + 7471 * u32::from(p[2]);
                    ((y + 32768) >> 16) as u8
                })
                .collect();
            return enc
                .encode(&luma, width, height, ColorType::Luma)
                .map_err(|_| JpegError);
        }
        enc.encode(&rgb[..n * 3], width, height, ColorType::Rgb)
            .map_err(|_| JpegError)
    }
}

/// A [`JpegDecoder`] on the `zune-jpeg` crate (pure Rust, `no_std`): greyscale images come out
/// as RGB, the size is checked from the header (the decoder's maximum width and height are the
/// rectangle's, so a bigger image is refused before its pixels are allocated).
#[cfg(feature = "jpeg-decode")]
#[derive(Debug, Default, Clone, Copy)]
pub struct ZuneJpegDecoder;

#[cfg(feature = "jpeg-decode")]
impl ZuneJpegDecoder {
    /// A boxed decoder (what the client starts with).
    pub fn boxed() -> Box<dyn JpegDecoder> {
        Box::new(Self)
    }
}

#[cfg(feature = "jpeg-decode")]
impl JpegDecoder for ZuneJpegDecoder {
    fn decode(
        &mut self,
        jpeg: &[u8],
        width: u16,
        height: u16,
        rgb: &mut [u8],
    ) -> Result<(), JpegError> {
        use zune_core::bytestream::ZCursor;
        use zune_core::colorspace::ColorSpace;
        use zune_core::options::DecoderOptions;
        let n = usize::from(width) * usize::from(height) * 3;
        if width == 0 || height == 0 || rgb.len() != n {
            return Err(JpegError);
        }
        let options = DecoderOptions::default()
            .jpeg_set_out_colorspace(ColorSpace::RGB)
            .set_max_width(usize::from(width))
            .set_max_height(usize::from(height));
        let mut d = zune_jpeg::JpegDecoder::new_with_options(ZCursor::new(jpeg), options);
        d.decode_headers().map_err(|_| JpegError)?;
        if d.dimensions() != Some((usize::from(width), usize::from(height)))
            || d.output_buffer_size() != Some(n)
        {
            return Err(JpegError);
        }
        d.decode_into(rgb).map_err(|_| JpegError)
    }
}

#[cfg(all(test, feature = "jpeg-encode", feature = "jpeg-decode"))]
mod test {
    use super::*;

    /// Both defaults agree on an image, in colour and grey, and the decoder refuses an image of
    /// another size than it was told.
    #[test]
    fn defaults_round_trip() {
        let (w, h) = (40u16, 24u16);
        let mut rgb = Vec::new();
        for y in 0..h {
            for x in 0..w {
                rgb.extend_from_slice(&[(x * 6) as u8, (y * 10) as u8, 128]);
            }
        }
        for s in [
            Subsampling::None,
            Subsampling::Half,
            Subsampling::Quarter,
            Subsampling::Grey,
        ] {
            let mut jpeg = Vec::new();
            RustJpegEncoder
                .encode(&rgb, w, h, 95, s, &mut jpeg)
                .unwrap();
            let mut back = alloc::vec![0u8; rgb.len()];
            ZuneJpegDecoder.decode(&jpeg, w, h, &mut back).unwrap();
            let grey = s == Subsampling::Grey;
            let err = rgb
                .chunks_exact(3)
                .zip(back.chunks_exact(3))
                .map(|(a, b)| {
                    if grey {
                        let y =
                            (u32::from(a[0]) * 299 + u32::from(a[1]) * 587 + u32::from(a[2]) * 114)
                                / 1000;
                        (y as i32 - i32::from(b[1])).unsigned_abs()
                    } else {
                        (0..3)
                            .map(|c| (i32::from(a[c]) - i32::from(b[c])).unsigned_abs())
                            .max()
                            .unwrap()
                    }
                })
                .max()
                .unwrap();
            assert!(err <= 12, "{s:?}: error {err}");
            let mut other = alloc::vec![0u8; 39 * 24 * 3];
            assert_eq!(
                ZuneJpegDecoder.decode(&jpeg, 39, 24, &mut other),
                Err(JpegError)
            );
            let mut bigger = alloc::vec![0u8; 80 * 24 * 3];
            assert_eq!(
                ZuneJpegDecoder.decode(&jpeg, 80, 24, &mut bigger),
                Err(JpegError)
            );
        }
        let mut back = alloc::vec![0u8; rgb.len()];
        assert_eq!(
            ZuneJpegDecoder.decode(b"not a jpeg", w, h, &mut back),
            Err(JpegError)
        );
    }
}
