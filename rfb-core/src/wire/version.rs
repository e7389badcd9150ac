//! ProtocolVersion (`"RFB xxx.yyy\n"`, 12 bytes).

use super::{WireError, check_len};

/// A negotiated RFB protocol version.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Version {
    /// RFB 3.3 (also used for 3.4, 3.5 and 3.6): the server picks the security type.
    V3_3,
    /// RFB 3.7: the client picks; no SecurityResult reason.
    V3_7,
    /// RFB 3.8: SecurityResult is always sent and failures carry a reason.
    V3_8,
}

impl Version {
    /// The minor version number.
    pub const fn minor(self) -> u16 {
        match self {
            Version::V3_3 => 3,
            Version::V3_7 => 7,
            Version::V3_8 => 8,
        }
    }

    /// The version a peer announcing `major.minor` is spoken with, following TigerVNC:
    /// minor ≥ 8 → 3.8, 7 → 3.7, 3…6 → 3.3 (3.4/3.5 are 3.3 by the spec); major ≠ 3 or minor < 3
    /// is unsupported (`None`), except that a major above 3 is read as 3.8 (as Apple's 3.889).
    pub const fn from_numbers(major: u16, minor: u16) -> Option<Version> {
        if major > 3 {
            return Some(Version::V3_8);
        }
        if major < 3 || minor < 3 {
            return None;
        }
        Some(match minor {
            3..=6 => Version::V3_3,
            7 => Version::V3_7,
            _ => Version::V3_8,
        })
    }
}

/// The 12-byte ProtocolVersion message, with the raw numbers as sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ProtocolVersionRepr {
    /// Major number (0…999).
    pub major: u16,
    /// Minor number (0…999).
    pub minor: u16,
}

impl ProtocolVersionRepr {
    /// Length on the wire.
    pub const LEN: usize = 12;

    /// The message announcing `v`.
    pub const fn of(v: Version) -> Self {
        Self {
            major: 3,
            minor: v.minor(),
        }
    }

    /// Parses `RFB xxx.yyy\n` (three decimal digits each).
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        // Reject garbage as early as possible, even before all 12 bytes arrived.
        const PREFIX: &[u8] = b"RFB ";
        let n = buf.len().min(4);
        if buf[..n] != PREFIX[..n] {
            return Err(WireError::Malformed);
        }
        check_len(buf, Self::LEN)?;
        let digits = |b: &[u8]| -> Result<u16, WireError> {
            let mut v = 0u16;
            for &c in b {
                if !c.is_ascii_digit() {
                    return Err(WireError::Malformed);
                }
                v = v * 10 + u16::from(c - b'0');
            }
            Ok(v)
        };
        if buf[7] != b'.' || buf[11] != b'\n' {
            return Err(WireError::Malformed);
        }
        Ok(Self {
            major: digits(&buf[4..7])?,
            minor: digits(&buf[8..11])?,
        })
    }

    /// Bytes needed by [`emit`](Self::emit).
    pub const fn buffer_len(&self) -> usize {
        Self::LEN
    }

    /// Writes the message (numbers above 999 are written modulo 1000).
    pub fn emit(&self, buf: &mut [u8]) {
        let put = |b: &mut [u8], v: u16| {
            let v = v % 1000;
            b[0] = b'0' + (v / 100) as u8;
            b[1] = b'0' + (v / 10 % 10) as u8;
            b[2] = b'0' + (v % 10) as u8;
        };
        buf[..4].copy_from_slice(b"RFB ");
        put(&mut buf[4..7], self.major);
        buf[7] = b'.';
        put(&mut buf[8..11], self.minor);
        buf[11] = b'\n';
    }
}
