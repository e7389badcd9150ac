//! Security handshake messages: type lists, SecurityResult, VeNCrypt, Plain credentials.

use super::{WireError, be32, check_len, put32};

enum_with_unknown! {
    /// An RFB security type (one byte on the wire; four bytes in RFB 3.3).
    pub enum SecurityType(u8) {
        /// 0: the connection failed; a reason string follows.
        Invalid = 0,
        /// 1: no authentication.
        None = 1,
        /// 2: DES challenge–response.
        VncAuth = 2,
        /// 5: RSA-AES (RA2).
        Ra2 = 5,
        /// 6: RSA-AES unencrypted (RA2ne).
        Ra2ne = 6,
        /// 16: Tight.
        Tight = 16,
        /// 17: UltraVNC.
        Ultra = 17,
        /// 18: anonymous TLS followed by a nested type list (Vino, gtk-vnc). Parsed and refused:
        /// rustls has no anonymous cipher suites.
        Tls = 18,
        /// 19: VeNCrypt.
        VeNCrypt = 19,
        /// 20: SASL.
        Sasl = 20,
        /// 22: xvp.
        Xvp = 22,
        /// 30: Apple Diffie-Hellman.
        DiffieHellman = 30,
        /// 113: MSLogonII.
        MsLogonII = 113,
    }
}

enum_with_unknown! {
    /// A VeNCrypt sub-type (U32). Plain RFB types (1 None, 2 VncAuth) may also appear in the list.
    ///
    /// SASL numbering follows QEMU, gtk-vnc and libvncserver (263 = X509SASL, 264 = TLSSASL),
    /// not rfbproto.rst, which swaps them.
    pub enum VencryptSubtype(u32) {
        /// 1: plain None offered inside VeNCrypt (TigerVNC, PiKVM).
        None = 1,
        /// 2: plain VncAuth offered inside VeNCrypt (TigerVNC, PiKVM).
        VncAuth = 2,
        /// 256: username and password in the clear.
        Plain = 256,
        /// 257: anonymous TLS, no authentication (refused: no anonymous suites in rustls).
        TlsNone = 257,
        /// 258: anonymous TLS + VNC authentication (refused).
        TlsVnc = 258,
        /// 259: anonymous TLS + Plain (refused).
        TlsPlain = 259,
        /// 260: X.509 TLS, no further authentication.
        X509None = 260,
        /// 261: X.509 TLS + VNC authentication.
        X509Vnc = 261,
        /// 262: X.509 TLS + Plain.
        X509Plain = 262,
        /// 263: X.509 TLS + SASL (implementations' numbering).
        X509Sasl = 263,
        /// 264: anonymous TLS + SASL (implementations' numbering).
        TlsSasl = 264,
        /// 265: Ident.
        Ident = 265,
        /// 266: anonymous TLS + Ident.
        TlsIdent = 266,
        /// 267: X.509 TLS + Ident.
        X509Ident = 267,
    }
}

/// What happens inside a VeNCrypt sub-type after the sub-type is agreed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum SubAuth {
    /// No further authentication.
    None,
    /// VNC challenge–response.
    Vnc,
    /// Username and password.
    Plain,
}

impl VencryptSubtype {
    /// Whether this sub-type runs over X.509 TLS (the server acks it and TLS starts).
    pub fn is_x509(self) -> bool {
        matches!(
            self,
            Self::X509None | Self::X509Vnc | Self::X509Plain | Self::X509Sasl | Self::X509Ident
        )
    }

    /// Whether this sub-type needs anonymous (EC)DH TLS, which rustls cannot do.
    pub fn is_anonymous_tls(self) -> bool {
        matches!(
            self,
            Self::TlsNone | Self::TlsVnc | Self::TlsPlain | Self::TlsSasl | Self::TlsIdent
        )
    }

    /// Whether the server sends the one-byte ack (and TLS starts) after this sub-type is chosen.
    pub fn uses_tls(self) -> bool {
        self.is_x509() || self.is_anonymous_tls()
    }

    /// The authentication that follows, for the sub-types this crate implements.
    pub fn sub_auth(self) -> Option<SubAuth> {
        match self {
            Self::None | Self::X509None => Some(SubAuth::None),
            Self::VncAuth | Self::X509Vnc => Some(SubAuth::Vnc),
            Self::Plain | Self::X509Plain => Some(SubAuth::Plain),
            _ => None,
        }
    }

    /// Whether this crate can run the sub-type (X.509 or non-TLS with None/Vnc/Plain).
    pub fn is_supported(self) -> bool {
        !self.is_anonymous_tls() && self.sub_auth().is_some()
    }
}

enum_with_unknown! {
    /// The SecurityResult word.
    pub enum SecurityResult(u32) {
        /// 0: authentication succeeded.
        Ok = 0,
        /// 1: authentication failed.
        Failed = 1,
        /// 2: failed, too many attempts (Tight only).
        TooManyAttempts = 2,
    }
}

/// RFB 3.7+ security type list: `U8 n, U8[n] types` (n ≥ 1; n = 0 is a failure, see
/// [`FailureReasonRepr`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct SecurityTypesRepr<'a> {
    /// Raw type bytes, in the server's order of preference.
    pub types: &'a [u8],
}

impl<'a> SecurityTypesRepr<'a> {
    /// Parses the list; `n = 0` is reported as `Ok` with an empty list (a reason follows).
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        check_len(buf, 1)?;
        let n = usize::from(buf[0]);
        check_len(buf, 1 + n)?;
        Ok(Self {
            types: &buf[1..1 + n],
        })
    }
    /// Bytes needed by `emit`.
    pub fn buffer_len(&self) -> usize {
        1 + self.types.len()
    }
    /// Writes the list (at most 255 entries are meaningful).
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.types.len() as u8;
        buf[1..1 + self.types.len()].copy_from_slice(self.types);
    }
}

/// `U32 reason-length, reason` (connection failure or RFB 3.8 SecurityResult failure).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FailureReasonRepr<'a> {
    /// Reason bytes (any encoding; clients strip NULs).
    pub reason: &'a [u8],
}

impl<'a> FailureReasonRepr<'a> {
    /// Parses a whole reason (the state machines stream long reasons instead).
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        check_len(buf, 4)?;
        let len = be32(buf, 0) as usize;
        check_len(buf, 4usize.saturating_add(len))?;
        Ok(Self {
            reason: &buf[4..4 + len],
        })
    }
    /// Bytes needed by `emit`.
    pub fn buffer_len(&self) -> usize {
        4 + self.reason.len()
    }
    /// Writes length and reason.
    pub fn emit(&self, buf: &mut [u8]) {
        put32(buf, 0, self.reason.len() as u32);
        buf[4..4 + self.reason.len()].copy_from_slice(self.reason);
    }
}

/// VeNCrypt version (`U8 major, U8 minor`), sent by both sides.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct VencryptVersionRepr {
    /// Major version.
    pub major: u8,
    /// Minor version.
    pub minor: u8,
}

impl VencryptVersionRepr {
    /// Version 0.2, the only one this crate speaks.
    pub const V0_2: Self = Self { major: 0, minor: 2 };
    /// Parses two bytes.
    pub fn parse(buf: &[u8]) -> Result<Self, WireError> {
        check_len(buf, 2)?;
        Ok(Self {
            major: buf[0],
            minor: buf[1],
        })
    }
    /// Bytes needed by `emit`.
    pub const fn buffer_len(&self) -> usize {
        2
    }
    /// Writes two bytes.
    pub fn emit(&self, buf: &mut [u8]) {
        buf[0] = self.major;
        buf[1] = self.minor;
    }
}

/// The server's one-byte VeNCrypt answers.
pub mod vencrypt_ack {
    /// After the client's version: accepted (0.2).
    pub const VERSION_OK: u8 = 0;
    /// After the client's version: refused (any non-zero value; this crate sends 1).
    pub const VERSION_REFUSED: u8 = 1;
    /// After the client's sub-type: accepted (TLS starts for the TLS sub-types).
    pub const SUBTYPE_OK: u8 = 1;
    /// After the client's sub-type: refused.
    pub const SUBTYPE_REFUSED: u8 = 0;
}

/// VeNCrypt sub-type list: `U8 n, U32[n]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct VencryptSubtypesRepr<'a> {
    raw: &'a [u8],
}

impl<'a> VencryptSubtypesRepr<'a> {
    /// Parses the list.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        check_len(buf, 1)?;
        let n = usize::from(buf[0]);
        check_len(buf, 1 + 4 * n)?;
        Ok(Self {
            raw: &buf[1..1 + 4 * n],
        })
    }
    /// Number of sub-types.
    pub fn len(&self) -> usize {
        self.raw.len() / 4
    }
    /// Whether the list is empty.
    pub fn is_empty(&self) -> bool {
        self.raw.is_empty()
    }
    /// The sub-types in the server's order.
    pub fn iter(&self) -> impl Iterator<Item = VencryptSubtype> + 'a {
        self.raw
            .chunks_exact(4)
            .map(|c| VencryptSubtype::from(be32(c, 0)))
    }
    /// Bytes `emit_list` needs for `n` sub-types.
    pub const fn buffer_len_for(n: usize) -> usize {
        1 + 4 * n
    }
    /// Writes a list (at most 255 entries).
    pub fn emit_list(list: &[VencryptSubtype], buf: &mut [u8]) {
        buf[0] = list.len() as u8;
        for (i, s) in list.iter().enumerate() {
            put32(buf, 1 + 4 * i, u32::from(*s));
        }
    }
}

/// Plain credentials: `U32 ulen, U32 plen, username, password`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PlainCredentialsRepr<'a> {
    /// Username bytes.
    pub username: &'a [u8],
    /// Password bytes.
    pub password: &'a [u8],
}

impl<'a> PlainCredentialsRepr<'a> {
    /// Parses the header's two lengths (to check limits before waiting for the data).
    pub fn parse_lengths(buf: &[u8]) -> Result<(u32, u32), WireError> {
        check_len(buf, 8)?;
        Ok((be32(buf, 0), be32(buf, 4)))
    }
    /// Parses the whole message.
    pub fn parse(buf: &'a [u8]) -> Result<Self, WireError> {
        let (u, p) = Self::parse_lengths(buf)?;
        let (u, p) = (u as usize, p as usize);
        check_len(buf, 8usize.saturating_add(u).saturating_add(p))?;
        Ok(Self {
            username: &buf[8..8 + u],
            password: &buf[8 + u..8 + u + p],
        })
    }
    /// Bytes needed by `emit`.
    pub fn buffer_len(&self) -> usize {
        8 + self.username.len() + self.password.len()
    }
    /// Writes the message.
    pub fn emit(&self, buf: &mut [u8]) {
        let (u, p) = (self.username.len(), self.password.len());
        put32(buf, 0, u as u32);
        put32(buf, 4, p as u32);
        buf[8..8 + u].copy_from_slice(self.username);
        buf[8 + u..8 + u + p].copy_from_slice(self.password);
    }
}
