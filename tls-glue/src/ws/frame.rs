//! RFC 6455 §5 frames: the header codec and masking.

use super::{CloseCode, WsError};

/// Frame opcodes (RFC 6455 §5.2).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Opcode {
    Continuation,
    Text,
    Binary,
    Close,
    Ping,
    Pong,
}

impl Opcode {
    fn from_bits(b: u8) -> Option<Self> {
        Some(match b {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }

    pub(crate) fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    pub(crate) fn is_control(self) -> bool {
        matches!(self, Self::Close | Self::Ping | Self::Pong)
    }
}

/// Most bytes a frame header takes (2 + 8 length + 4 mask).
pub const MAX_HEADER_LEN: usize = 14;
/// Largest payload of a control frame (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// A parsed frame header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Header {
    pub(crate) fin: bool,
    pub(crate) opcode: Opcode,
    pub(crate) mask: Option<[u8; 4]>,
    pub(crate) len: u64,
    /// Bytes the header took.
    pub(crate) size: usize,
}

/// Parses a frame header from the front of `b`: `Ok(None)` if more bytes are needed.
/// Checks what RFC 6455 §5.2 requires of every frame (no reserved bits without an extension,
/// known opcodes, minimal and 63-bit lengths, control frames short and unfragmented).
pub(crate) fn parse_header(b: &[u8]) -> Result<Option<Header>, WsError> {
    if b.len() < 2 {
        return Ok(None);
    }
    let protocol = |what| WsError::Protocol(CloseCode::PROTOCOL_ERROR, what);
    if b[0] & 0x70 != 0 {
        return Err(protocol("reserved bits set (no extension was negotiated)"));
    }
    let opcode = Opcode::from_bits(b[0] & 0x0f).ok_or(protocol("unknown opcode"))?;
    let fin = b[0] & 0x80 != 0;
    let masked = b[1] & 0x80 != 0;
    let (len, at) = match b[1] & 0x7f {
        126 => {
            if b.len() < 4 {
                return Ok(None);
            }
            let n = u64::from(u16::from_be_bytes([b[2], b[3]]));
            if n < 126 {
                return Err(protocol("length not in its shortest form"));
            }
            (n, 4)
        }
        127 => {
            if b.len() < 10 {
                return Ok(None);
            }
            let mut l = [0u8; 8];
            l.copy_from_slice(&b[2..10]);
            let n = u64::from_be_bytes(l);
            if n >> 63 != 0 {
                return Err(protocol("64-bit length with the most significant bit set"));
            }
            if n <= 0xffff {
                return Err(protocol("length not in its shortest form"));
            }
            (n, 10)
        }
        n => (u64::from(n), 2),
    };
    if opcode.is_control() && (!fin || len > MAX_CONTROL_PAYLOAD as u64) {
        return Err(protocol("fragmented or oversized control frame"));
    }
    let (mask, size) = if masked {
        if b.len() < at + 4 {
            return Ok(None);
        }
        let mut m = [0u8; 4];
        m.copy_from_slice(&b[at..at + 4]);
        (Some(m), at + 4)
    } else {
        (None, at)
    };
    Ok(Some(Header {
        fin,
        opcode,
        mask,
        len,
        size,
    }))
}

/// The header length for a payload of `len` bytes (masked or not).
pub fn header_len(len: usize, masked: bool) -> usize {
    let base = match len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    base + if masked { 4 } else { 0 }
}

/// Writes a final frame's header into `out` (at least [`header_len`] bytes); returns its length.
pub(crate) fn write_header(
    opcode: Opcode,
    len: usize,
    mask: Option<[u8; 4]>,
    out: &mut [u8],
) -> usize {
    out[0] = 0x80 | opcode.bits();
    let m = if mask.is_some() { 0x80 } else { 0 };
    let mut at = match len {
        0..=125 => {
            out[1] = m | len as u8;
            2
        }
        126..=0xffff => {
            out[1] = m | 126;
            out[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            4
        }
        _ => {
            out[1] = m | 127;
            out[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            10
        }
    };
    if let Some(k) = mask {
        out[at..at + 4].copy_from_slice(&k);
        at += 4;
    }
    at
}

/// XORs `data` with the mask, starting at byte `offset` of the frame's payload.
pub(crate) fn apply_mask(data: &mut [u8], mask: [u8; 4], offset: u64) {
    let start = (offset % 4) as usize;
    let rotated = [
        mask[start],
        mask[(start + 1) % 4],
        mask[(start + 2) % 4],
        mask[(start + 3) % 4],
    ];
    let mut chunks = data.chunks_exact_mut(4);
    for c in &mut chunks {
        c[0] ^= rotated[0];
        c[1] ^= rotated[1];
        c[2] ^= rotated[2];
        c[3] ^= rotated[3];
    }
    for (b, k) in chunks.into_remainder().iter_mut().zip(rotated) {
        *b ^= k;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headers_round_trip_in_their_shortest_form() {
        for len in [0usize, 1, 125, 126, 127, 0xffff, 0x10000, 1 << 20] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut b = [0u8; MAX_HEADER_LEN];
                let n = write_header(Opcode::Binary, len, mask, &mut b);
                assert_eq!(n, header_len(len, mask.is_some()));
                let h = parse_header(&b[..n]).unwrap().unwrap();
                assert_eq!((h.len, h.mask, h.size, h.fin), (len as u64, mask, n, true));
                // one byte short: more needed
                assert_eq!(parse_header(&b[..n - 1]).unwrap(), None);
            }
        }
    }

    #[test]
    fn bad_headers_are_protocol_errors() {
        let bad: &[&[u8]] = &[
            &[0x82 | 0x40, 0x80],                              // RSV1
            &[0x83, 0x80],                                     // opcode 3
            &[0x8b, 0x80],                                     // opcode 0xB
            &[0x09, 0x80],                                     // fragmented ping
            &[0x89, 0x80 | 126, 0, 126],                       // 126-byte ping
            &[0x82, 0x80 | 126, 0, 5],                         // non-minimal 16-bit length
            &[0x82, 0x80 | 127, 0, 0, 0, 0, 0, 0, 0xff, 0xff], // non-minimal 64-bit length
            &[0x82, 0x80 | 127, 0x80, 0, 0, 0, 0, 0, 0, 0],    // 2^63
        ];
        for b in bad {
            assert!(
                matches!(
                    parse_header(b),
                    Err(WsError::Protocol(CloseCode::PROTOCOL_ERROR, _))
                ),
                "{b:x?}"
            );
        }
    }

    #[test]
    fn masking_is_its_own_inverse_at_any_offset() {
        let mask = [0x37, 0xfa, 0x21, 0x3d];
        let plain: alloc::vec::Vec<u8> = (0..=255u8).collect();
        let mut whole = plain.clone();
        apply_mask(&mut whole, mask, 0);
        // masking in pieces at their offsets gives the same bytes
        let mut pieces = plain.clone();
        let (a, b) = pieces.split_at_mut(7);
        apply_mask(a, mask, 0);
        apply_mask(b, mask, 7);
        assert_eq!(whole, pieces);
        apply_mask(&mut whole, mask, 0);
        assert_eq!(whole, plain);
        // RFC 6455 §5.7: "Hello" masked with 37 fa 21 3d
        let mut hello = *b"Hello";
        apply_mask(&mut hello, mask, 0);
        assert_eq!(hello, [0x7f, 0x9f, 0x4d, 0x51, 0x58]);
    }
}
