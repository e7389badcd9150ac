//! Which JPEG compressor Tight viewers get ([`JpegEncoderChoice`]), and libjpeg-turbo's
//! TurboJPEG library, found at run time, as one ([`TurboJpegEncoder`]) and as the decoder of
//! MJPEG frames, JPEG images and the client's Tight JPEG ([`TurboJpegDecoder`]).
//!
//! rfb-core's own encoder (`jpeg-encoder`, pure Rust) is what every build has; where the system
//! has `libturbojpeg.so.0` (Debian: `libturbojpeg0`) the VNC server uses it instead, because it
//! is what libvncserver, TurboVNC and TigerVNC use and several times faster on photo-like
//! content (`bench/rfb/run.sh`). It is opened with `dlopen` rather than linked, so building
//! kvmio needs no C library and a machine without it still serves JPEG.
//!
//! Nine entry points of the TurboJPEG 2.x API are used (`tjInitCompress`, `tjCompress2`,
//! `tjBufSize`, `tjInitDecompress`, `tjDecompressHeader3`, `tjDecompress2`, `tjGetErrorStr2`,
//! `tjGetErrorCode`, `tjDestroy`). Images are written into buffers we size: `tjBufSize`'s bound
//! with `TJFLAG_NOREALLOC` when encoding, the size from the header when decoding; the library
//! never allocates them for us.

#![allow(unsafe_code)]

use std::ffi::{CStr, c_char, c_int, c_uchar, c_ulong, c_void};
use std::sync::OnceLock;

use anyhow::{Result, anyhow};
use rfb_core::jpeg::{
    JpegDecoder, JpegEncoder, JpegEncoderFactory, JpegError, RustJpegEncoder, Subsampling,
};

/// The JPEG compressor of a VNC server (`--jpeg-encoder`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum JpegEncoderChoice {
    /// libjpeg-turbo where the system has it, else rfb-core's own (the default).
    #[default]
    Auto,
    /// libjpeg-turbo; starting fails without it.
    LibjpegTurbo,
    /// rfb-core's pure-Rust one (`jpeg-encoder`).
    Rust,
}

impl JpegEncoderChoice {
    /// The names `--jpeg-encoder` takes, in the order of the variants.
    pub const NAMES: [&'static str; 3] = ["auto", "libjpeg-turbo", "rust"];

    /// The factory to give `Server::set_jpeg_encoder`, and its name for the log.
    pub fn factory(self) -> Result<(JpegEncoderFactory, &'static str)> {
        let turbo = (
            TurboJpegEncoder::boxed as JpegEncoderFactory,
            "libjpeg-turbo",
        );
        let rust = (
            RustJpegEncoder::boxed as JpegEncoderFactory,
            "jpeg-encoder (Rust)",
        );
        match self {
            Self::Rust => Ok(rust),
            Self::LibjpegTurbo => available()
                .map(|()| turbo)
                .map_err(|e| anyhow!("--jpeg-encoder libjpeg-turbo: {e}")),
            Self::Auto => Ok(match available() {
                Ok(()) => turbo,
                Err(e) => {
                    log::info!("JPEG for Tight: rfb-core's own encoder ({e})");
                    rust
                }
            }),
        }
    }
}

type Handle = *mut c_void;
type Init = unsafe extern "C" fn() -> Handle;
type Compress2 = unsafe extern "C" fn(
    Handle,
    *const c_uchar,
    c_int,
    c_int,
    c_int,
    c_int,
    *mut *mut c_uchar,
    *mut c_ulong,
    c_int,
    c_int,
    c_int,
) -> c_int;
type BufSize = unsafe extern "C" fn(c_int, c_int, c_int) -> c_ulong;
type ErrorStr2 = unsafe extern "C" fn(Handle) -> *mut c_char;
type Destroy = unsafe extern "C" fn(Handle) -> c_int;
type ErrorCode = unsafe extern "C" fn(Handle) -> c_int;
type DecompressHeader3 = unsafe extern "C" fn(
    Handle,
    *const c_uchar,
    c_ulong,
    *mut c_int,
    *mut c_int,
    *mut c_int,
    *mut c_int,
) -> c_int;
type Decompress2 = unsafe extern "C" fn(
    Handle,
    *const c_uchar,
    c_ulong,
    *mut c_uchar,
    c_int,
    c_int,
    c_int,
    c_int,
    c_int,
) -> c_int;

/// `TJPF_RGB`: three bytes a pixel, red first.
const TJPF_RGB: c_int = 0;
/// `TJPF_BGRX`: four bytes a pixel, blue first (the native image's layout).
const TJPF_BGRX: c_int = 3;
/// `TJFLAG_NOREALLOC`: write into the buffer given.
const TJFLAG_NOREALLOC: c_int = 1024;

impl std::str::FromStr for JpegEncoderChoice {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Self> {
        const VARIANTS: [JpegEncoderChoice; 3] = [
            JpegEncoderChoice::Auto,
            JpegEncoderChoice::LibjpegTurbo,
            JpegEncoderChoice::Rust,
        ];
        let i = Self::NAMES
            .iter()
            .position(|n| *n == s)
            .ok_or_else(|| anyhow!("JPEG encoder {s:?}: {}", Self::NAMES.join(", ")))?;
        Ok(VARIANTS[i])
    }
}

/// The library's entry points (it stays loaded for the life of the process).
struct Api {
    init: Init,
    compress: Compress2,
    buf_size: BufSize,
    error: ErrorStr2,
    destroy: Destroy,
    init_decompress: Init,
    header: DecompressHeader3,
    decompress: Decompress2,
    error_code: ErrorCode,
    _lib: libloading::Library,
}

/// The library's file name (the soname of Debian's `libturbojpeg0`).
pub const LIBRARY: &str = "libturbojpeg.so.0";

static API: OnceLock<Result<Api, String>> = OnceLock::new();

fn load() -> Result<Api, String> {
    // SAFETY: loading libturbojpeg runs no initialisers with requirements on us, and the symbols
    // are looked up with the types of the TurboJPEG 2.x header (turbojpeg.h), which has kept
    // these signatures since 2.0 (tjGetErrorCode), 1.4 (tjDecompressHeader3) and 1.2 (the others).
    unsafe {
        let lib = libloading::Library::new(LIBRARY).map_err(|e| e.to_string())?;
        fn sym<T: Copy>(lib: &libloading::Library, name: &[u8]) -> Result<T, String> {
            // SAFETY: the caller names a symbol whose C type is T.
            unsafe { lib.get::<T>(name).map(|s| *s).map_err(|e| e.to_string()) }
        }
        Ok(Api {
            init: sym(&lib, b"tjInitCompress\0")?,
            compress: sym(&lib, b"tjCompress2\0")?,
            buf_size: sym(&lib, b"tjBufSize\0")?,
            error: sym(&lib, b"tjGetErrorStr2\0")?,
            destroy: sym(&lib, b"tjDestroy\0")?,
            init_decompress: sym(&lib, b"tjInitDecompress\0")?,
            header: sym(&lib, b"tjDecompressHeader3\0")?,
            decompress: sym(&lib, b"tjDecompress2\0")?,
            error_code: sym(&lib, b"tjGetErrorCode\0")?,
            _lib: lib,
        })
    }
}

fn api() -> Result<&'static Api, &'static str> {
    API.get_or_init(load).as_ref().map_err(String::as_str)
}

/// Whether libturbojpeg can be used here: `Err` says why not (the loader's message).
pub fn available() -> Result<(), &'static str> {
    api().map(|_| ())
}

/// A [`JpegEncoder`] on libturbojpeg: one compressor handle per connection, made at its first
/// JPEG rectangle.
pub struct TurboJpegEncoder(Tj);

/// One TurboJPEG handle (a compressor or a decompressor), destroyed when dropped.
struct Tj {
    api: &'static Api,
    handle: Handle,
}

// SAFETY: a TurboJPEG handle may be used from any thread, one at a time; its users take `&mut`.
unsafe impl Send for Tj {}

impl Tj {
    /// A handle from `init` (tjInitCompress or tjInitDecompress), or `None` when the library is
    /// missing or cannot make one.
    fn new(init: fn(&Api) -> Init) -> Option<Self> {
        let api = api().ok()?;
        // SAFETY: both init functions take nothing and return a handle or NULL.
        let handle = unsafe { init(api)() };
        (!handle.is_null()).then_some(Self { api, handle })
    }

    /// The library's message for the last failure on this handle.
    fn error(&self) -> String {
        // SAFETY: tjGetErrorStr2 returns a NUL-terminated string owned by the handle (or a
        // static one), valid until the next call on it; it is copied at once.
        unsafe {
            let s = (self.api.error)(self.handle);
            if s.is_null() {
                return String::from("unknown error");
            }
            CStr::from_ptr(s).to_string_lossy().into_owned()
        }
    }
}

impl Drop for Tj {
    fn drop(&mut self) {
        // SAFETY: the handle came from an init function and is destroyed once.
        unsafe {
            (self.api.destroy)(self.handle);
        }
    }
}

impl TurboJpegEncoder {
    /// A new compressor, or `None` when the library is missing or cannot make one.
    pub fn new() -> Option<Self> {
        Tj::new(|a| a.init).map(Self)
    }

    /// The [`JpegEncoderFactory`] to give
    /// `Server::set_jpeg_encoder` once [`available`] said yes; a connection whose handle cannot be
    /// made falls back to rfb-core's own encoder.
    pub fn boxed() -> Box<dyn JpegEncoder> {
        match Self::new() {
            Some(e) => Box::new(e),
            None => RustJpegEncoder::boxed(),
        }
    }
}

impl JpegEncoder for TurboJpegEncoder {
    fn encode(
        &mut self,
        rgb: &[u8],
        width: u16,
        height: u16,
        quality: u8,
        subsampling: Subsampling,
        out: &mut Vec<u8>,
    ) -> Result<(), JpegError> {
        let n = usize::from(width) * usize::from(height);
        if width == 0 || height == 0 || rgb.len() < n * 3 {
            return Err(JpegError);
        }
        let samp: c_int = match subsampling {
            Subsampling::None => 0,
            Subsampling::Half => 1,
            Subsampling::Quarter => 2,
            Subsampling::Grey => 3,
        };
        let (w, h) = (c_int::from(width), c_int::from(height));
        // SAFETY: tjBufSize is a pure function of its arguments.
        let room = unsafe { (self.0.api.buf_size)(w, h, samp) };
        if room == c_ulong::MAX || room == 0 {
            return Err(JpegError);
        }
        let room = usize::try_from(room).map_err(|_| JpegError)?;
        out.reserve(room);
        let start = out.len();
        let mut buf = out.spare_capacity_mut().as_mut_ptr().cast::<c_uchar>();
        let mut size = room as c_ulong;
        // SAFETY: `rgb` holds width × height RGB pixels (checked above), rows of `width * 3`
        // bytes (pitch 0); `buf` points at `room` writable bytes, the most tjBufSize says the
        // image can take, and TJFLAG_NOREALLOC keeps the library from replacing it. On success
        // `size` bytes of it are written.
        let r = unsafe {
            (self.0.api.compress)(
                self.0.handle,
                rgb.as_ptr(),
                w,
                0,
                h,
                TJPF_RGB,
                &mut buf,
                &mut size,
                samp,
                c_int::from(quality.clamp(1, 100)),
                TJFLAG_NOREALLOC,
            )
        };
        if r != 0 {
            log::debug!("libturbojpeg: {}", self.0.error());
            return Err(JpegError);
        }
        let size = usize::try_from(size).map_err(|_| JpegError)?;
        if size > room {
            return Err(JpegError);
        }
        // SAFETY: the library wrote `size` ≤ `room` bytes from the start of the spare capacity.
        unsafe { out.set_len(start + size) };
        Ok(())
    }
}

/// A TurboJPEG decompressor: what decodes MJPEG capture frames and JPEG images where the
/// library is installed (`vnc::desktop::Image::decode_jpeg_pixels`), several times faster than
/// zune-jpeg at 1080p.
pub struct TurboJpegDecoder(Tj);

impl TurboJpegDecoder {
    /// A new decompressor, or `None` when the library is missing or cannot make one.
    pub fn new() -> Option<Self> {
        Tj::new(|a| a.init_decompress).map(Self)
    }

    /// The width and height the image's header gives.
    pub fn size(&mut self, jpeg: &[u8]) -> Result<(u16, u16)> {
        let (mut w, mut h, mut samp, mut space) = (0, 0, 0, 0);
        // SAFETY: `jpeg` is readable for its length; the four outputs are writable ints.
        let r = unsafe {
            (self.0.api.header)(
                self.0.handle,
                jpeg.as_ptr(),
                jpeg.len() as c_ulong,
                &mut w,
                &mut h,
                &mut samp,
                &mut space,
            )
        };
        if r != 0 {
            return Err(anyhow!("a bad JPEG: {}", self.0.error()));
        }
        match (u16::try_from(w), u16::try_from(h)) {
            (Ok(w), Ok(h)) if w > 0 && h > 0 => Ok((w, h)),
            _ => Err(anyhow!("a JPEG of {w}x{h}")),
        }
    }

    /// Decodes `jpeg`, whose header says `width` × `height` (see [`size`](Self::size)), into
    /// `out`: four bytes a pixel, B, G, R and 0, rows without padding.
    pub fn decode_bgr0(
        &mut self,
        jpeg: &[u8],
        width: u16,
        height: u16,
        out: &mut [u8],
    ) -> Result<()> {
        self.decompress(jpeg, width, height, out, TJPF_BGRX, 4)?;
        // The library fills the fourth byte with 255; the native image has 0 there.
        for px in out.chunks_exact_mut(4) {
            px[3] = 0;
        }
        Ok(())
    }

    /// Decodes into `out` (`width * height * bpp` bytes of `format`) after checking the header.
    fn decompress(
        &mut self,
        jpeg: &[u8],
        width: u16,
        height: u16,
        out: &mut [u8],
        format: c_int,
        bpp: usize,
    ) -> Result<()> {
        let n = usize::from(width) * usize::from(height) * bpp;
        if out.len() != n || self.size(jpeg)? != (width, height) {
            return Err(anyhow!("a JPEG of another size than {width}x{height}"));
        }
        // SAFETY: the header says width × height, so the library writes at most
        // width × height × bpp bytes (pitch width × bpp) into `out`, which is that long.
        let r = unsafe {
            (self.0.api.decompress)(
                self.0.handle,
                jpeg.as_ptr(),
                jpeg.len() as c_ulong,
                out.as_mut_ptr(),
                c_int::from(width),
                c_int::from(width) * bpp as c_int,
                c_int::from(height),
                format,
                0,
            )
        };
        // A warning (TJERR_WARNING, 0: "extraneous bytes before marker" and the like, which
        // capture devices' frames often have) still decoded the whole image.
        // SAFETY: tjGetErrorCode reads the handle's last error.
        if r != 0 && unsafe { (self.0.api.error_code)(self.0.handle) } != 0 {
            return Err(anyhow!("a bad JPEG: {}", self.0.error()));
        }
        Ok(())
    }
}

/// The Tight client's decoder (`kvmio vnc capture`): 8-bit RGB, the size checked from the
/// header before anything is written.
impl JpegDecoder for TurboJpegDecoder {
    fn decode(
        &mut self,
        jpeg: &[u8],
        width: u16,
        height: u16,
        rgb: &mut [u8],
    ) -> Result<(), JpegError> {
        self.decompress(jpeg, width, height, rgb, TJPF_RGB, 3)
            .map_err(|e| {
                log::debug!("libturbojpeg: {e}");
                JpegError
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rfb_core::jpeg::{JpegDecoder, ZuneJpegDecoder};

    #[test]
    fn choices() {
        for n in JpegEncoderChoice::NAMES {
            assert!(n.parse::<JpegEncoderChoice>().is_ok());
        }
        assert!("turbo".parse::<JpegEncoderChoice>().is_err());
        assert_eq!(
            "rust".parse::<JpegEncoderChoice>().unwrap(),
            JpegEncoderChoice::Rust
        );
        assert_eq!(
            "libjpeg-turbo".parse::<JpegEncoderChoice>().unwrap(),
            JpegEncoderChoice::LibjpegTurbo
        );
        assert_eq!(
            JpegEncoderChoice::Rust.factory().unwrap().1,
            "jpeg-encoder (Rust)"
        );
        assert_eq!(
            JpegEncoderChoice::Auto.factory().unwrap().1,
            "libjpeg-turbo"
        );
        assert_eq!(
            JpegEncoderChoice::LibjpegTurbo.factory().unwrap().1,
            "libjpeg-turbo"
        );
    }

    /// The library is what tests/setup.sh installs; a machine without it is a failure here,
    /// not a skip.
    #[test]
    fn encodes_what_the_decoder_reads_back() {
        available().expect("libturbojpeg.so.0 (Debian libturbojpeg0)");
        let (w, h) = (67u16, 45u16);
        let rgb: Vec<u8> = (0..usize::from(w) * usize::from(h))
            .flat_map(|i| {
                let (x, y) = (i % usize::from(w), i / usize::from(w));
                [(x * 3) as u8, (y * 5) as u8, ((x + y) * 2) as u8]
            })
            .collect();
        let mut enc = TurboJpegEncoder::new().unwrap();
        for samp in [
            Subsampling::None,
            Subsampling::Half,
            Subsampling::Quarter,
            Subsampling::Grey,
        ] {
            let mut out = vec![1, 2, 3];
            enc.encode(&rgb, w, h, 95, samp, &mut out).unwrap();
            assert_eq!(&out[..3], &[1, 2, 3], "appended");
            assert_eq!(&out[3..5], &[0xff, 0xd8], "SOI");
            let mut back = vec![0; rgb.len()];
            ZuneJpegDecoder.decode(&out[3..], w, h, &mut back).unwrap();
            // libjpeg-turbo's decoder (the client's) reads the same picture, and checks the
            // size from the header.
            let mut turbo = vec![0; rgb.len()];
            let mut dec = TurboJpegDecoder::new().unwrap();
            JpegDecoder::decode(&mut dec, &out[3..], w, h, &mut turbo).unwrap();
            let apart = back.iter().zip(&turbo).map(|(a, b)| a.abs_diff(*b)).max();
            assert!(
                apart <= Some(4),
                "{samp:?}: the decoders differ by {apart:?}"
            );
            let mut small = vec![0; (usize::from(w) - 1) * usize::from(h) * 3];
            assert!(JpegDecoder::decode(&mut dec, &out[3..], w - 1, h, &mut small).is_err());
            // Greyscale keeps the BT.601 luma in all three channels, the others each channel.
            let want: Vec<u8> = if samp == Subsampling::Grey {
                rgb.chunks_exact(3)
                    .flat_map(|p| {
                        let y = (299 * u32::from(p[0])
                            + 587 * u32::from(p[1])
                            + 114 * u32::from(p[2])
                            + 500)
                            / 1000;
                        [y as u8; 3]
                    })
                    .collect()
            } else {
                rgb.clone()
            };
            let worst = want
                .iter()
                .zip(&back)
                .map(|(a, b)| a.abs_diff(*b))
                .max()
                .unwrap();
            assert!(worst <= 24, "{samp:?}: off by {worst}");
        }
        assert!(
            enc.encode(&rgb[..10], w, h, 90, Subsampling::None, &mut Vec::new())
                .is_err()
        );
    }
}
