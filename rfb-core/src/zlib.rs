//! The zlib stream ZRLE compresses through (`alloc`).
//!
//! ZRLE keeps one zlib (RFC 1950) deflate stream per connection and ends every rectangle with a
//! sync flush. The core only needs that one operation, so the compressor is a small trait: the
//! crate ships a [`MinizCompressor`] (pure Rust, `no_std` + `alloc`), and a hosted driver can plug
//! in a faster one (std-shim uses `zlib-rs`) with
//! [`Server::set_zrle_compressor`](crate::server::Server::set_zrle_compressor).

use alloc::boxed::Box;

/// The compressor failed (a broken stream; the connection cannot continue).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct CompressError;

impl core::fmt::Display for CompressError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("zlib compression failed")
    }
}

impl core::error::Error for CompressError {}

/// One zlib deflate stream that lives as long as the connection (never reset between
/// rectangles: the client inflates everything with one stream too).
pub trait ZrleCompressor: Send {
    /// Compresses from `input` into `out` with a sync flush (`Z_SYNC_FLUSH`): returns
    /// `(consumed, written)`. The core calls it again with the unconsumed input and fresh room
    /// until all input is consumed **and** a call left room in `out` (then the flush is
    /// complete and the output ends on a byte boundary with the empty stored block).
    fn compress_sync(
        &mut self,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), CompressError>;
}

/// Makes the connection's compressor at zlib `level` (0–9; the client's compression-level
/// pseudo-encoding, 6 by default) when the first ZRLE rectangle is encoded.
pub type CompressorFactory = fn(level: u8) -> Box<dyn ZrleCompressor>;

/// A [`ZrleCompressor`] on `miniz_oxide` (the default).
pub struct MinizCompressor(Box<miniz_oxide::deflate::core::CompressorOxide>);

impl core::fmt::Debug for MinizCompressor {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("MinizCompressor")
    }
}

impl MinizCompressor {
    /// A zlib stream (15-bit window) at `level` (capped at 9).
    pub fn new(level: u8) -> Self {
        use miniz_oxide::deflate::core::{CompressorOxide, create_comp_flags_from_zip_params};
        let flags = create_comp_flags_from_zip_params(i32::from(level.min(9)), 15, 0);
        Self(Box::new(CompressorOxide::new(flags)))
    }

    /// The default [`CompressorFactory`].
    pub fn boxed(level: u8) -> Box<dyn ZrleCompressor> {
        Box::new(Self::new(level))
    }
}

impl ZrleCompressor for MinizCompressor {
    fn compress_sync(
        &mut self,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), CompressError> {
        let res = miniz_oxide::deflate::stream::deflate(
            &mut self.0,
            input,
            out,
            miniz_oxide::MZFlush::Sync,
        );
        match res.status {
            Ok(_) | Err(miniz_oxide::MZError::Buf) => Ok((res.bytes_consumed, res.bytes_written)),
            Err(_) => Err(CompressError),
        }
    }
}

/// Runs `c` over all of `input` with a sync flush, appending the compressed bytes to `out`.
pub(crate) fn compress_all(
    c: &mut dyn ZrleCompressor,
    mut input: &[u8],
    out: &mut alloc::vec::Vec<u8>,
) -> Result<(), CompressError> {
    loop {
        let at = out.len();
        let room = input.len() / 2 + 1024;
        out.resize(at + room, 0);
        let (used, written) = c.compress_sync(input, &mut out[at..])?;
        out.truncate(at + written);
        if used > input.len() || written > room {
            return Err(CompressError);
        }
        input = &input[used..];
        if input.is_empty() && written < room {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    /// Output of several sync-flushed pieces inflates back with one stream, piece by piece.
    #[test]
    fn miniz_sync_flush_round_trip() {
        use miniz_oxide::inflate::stream::{InflateState, inflate};
        let mut c = MinizCompressor::new(6);
        let mut inf = InflateState::new_boxed(miniz_oxide::DataFormat::Zlib);
        for piece in [&b"hello hello hello"[..], &[7u8; 100_000][..], b"", b"x"] {
            let mut z = alloc::vec::Vec::new();
            compress_all(&mut c, piece, &mut z).unwrap();
            // A sync flush ends with the empty stored block.
            assert_eq!(&z[z.len() - 4..], &[0, 0, 0xff, 0xff]);
            let mut back = std::vec![0u8; piece.len() + 16];
            let r = inflate(&mut inf, &z, &mut back, miniz_oxide::MZFlush::Sync);
            assert_eq!(r.bytes_consumed, z.len());
            assert_eq!(&back[..r.bytes_written], piece);
        }
    }
}
