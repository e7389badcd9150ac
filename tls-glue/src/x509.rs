//! A small, panic-free DER reader for the X.509 fields the credential checks need.
//!
//! rustls/webpki validate chains at handshake time; this module only extracts what the
//! load-time sanity checks (QEMU `crypto/tlscredsx509.c` rules), the DN ACL and the
//! administrator-facing messages need: validity, basic constraints, key usage, extended key
//! usage, names, the public key algorithm and the signed parts (to check "issued by").

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

/// Why a DER structure could not be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DerError;

type R<T> = Result<T, DerError>;

pub(crate) const TAG_BOOLEAN: u8 = 0x01;
pub(crate) const TAG_INTEGER: u8 = 0x02;
pub(crate) const TAG_BIT_STRING: u8 = 0x03;
pub(crate) const TAG_OCTET_STRING: u8 = 0x04;
pub(crate) const TAG_OID: u8 = 0x06;
pub(crate) const TAG_UTC_TIME: u8 = 0x17;
pub(crate) const TAG_GENERALIZED_TIME: u8 = 0x18;
pub(crate) const TAG_SEQUENCE: u8 = 0x30;
pub(crate) const TAG_SET: u8 = 0x31;

/// A cursor over DER TLVs (single-byte tags, definite lengths only).
#[derive(Clone, Copy)]
pub(crate) struct Reader<'a> {
    data: &'a [u8],
}

/// One TLV: its tag, its contents and the whole encoding.
#[derive(Clone, Copy)]
pub(crate) struct Tlv<'a> {
    pub(crate) tag: u8,
    pub(crate) value: &'a [u8],
    pub(crate) raw: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(data: &'a [u8]) -> Self {
        Self { data }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.data.is_empty()
    }

    pub(crate) fn peek_tag(&self) -> Option<u8> {
        self.data.first().copied()
    }

    pub(crate) fn any(&mut self) -> R<Tlv<'a>> {
        let d = self.data;
        let tag = *d.first().ok_or(DerError)?;
        if tag & 0x1f == 0x1f {
            return Err(DerError); // high tag numbers never appear in what we parse
        }
        let first = *d.get(1).ok_or(DerError)?;
        let (len, hdr) = if first < 0x80 {
            (first as usize, 2usize)
        } else {
            let n = (first & 0x7f) as usize;
            if n == 0 || n > 4 {
                return Err(DerError);
            }
            let mut len = 0usize;
            for i in 0..n {
                len = (len << 8) | *d.get(2 + i).ok_or(DerError)? as usize;
            }
            (len, 2 + n)
        };
        let end = hdr.checked_add(len).ok_or(DerError)?;
        if end > d.len() {
            return Err(DerError);
        }
        self.data = &d[end..];
        Ok(Tlv {
            tag,
            value: &d[hdr..end],
            raw: &d[..end],
        })
    }

    pub(crate) fn expect(&mut self, tag: u8) -> R<Tlv<'a>> {
        let t = self.any()?;
        if t.tag == tag { Ok(t) } else { Err(DerError) }
    }

    /// Reads the TLV only if it carries `tag`.
    pub(crate) fn optional(&mut self, tag: u8) -> R<Option<Tlv<'a>>> {
        if self.peek_tag() == Some(tag) {
            self.any().map(Some)
        } else {
            Ok(None)
        }
    }
}

/// Reads exactly one TLV with `tag` from `data`, refusing trailing bytes.
pub(crate) fn single(data: &[u8], tag: u8) -> R<Tlv<'_>> {
    let mut r = Reader::new(data);
    let t = r.expect(tag)?;
    if r.is_empty() { Ok(t) } else { Err(DerError) }
}

/// Appends one DER TLV.
pub(crate) fn der_push(out: &mut Vec<u8>, tag: u8, content: &[u8]) {
    out.push(tag);
    let n = content.len();
    if n < 0x80 {
        out.push(n as u8);
    } else if n < 0x100 {
        out.extend_from_slice(&[0x81, n as u8]);
    } else if n < 0x1_0000 {
        out.extend_from_slice(&[0x82, (n >> 8) as u8, n as u8]);
    } else {
        out.extend_from_slice(&[0x83, (n >> 16) as u8, (n >> 8) as u8, n as u8]);
    }
    out.extend_from_slice(content);
}

/// Re-encodes a SEC1 `ECPrivateKey` whose private scalar has the wrong length (gnutls'
/// certtool writes P-256 scalars as 33 bytes with a leading zero, which *ring* refuses).
/// Returns `None` when the key is already canonical or not understood.
pub(crate) fn normalize_sec1(der: &[u8]) -> Option<Vec<u8>> {
    let seq = single(der, TAG_SEQUENCE).ok()?;
    let mut r = Reader::new(seq.value);
    let version = r.expect(TAG_INTEGER).ok()?;
    let private = r.expect(TAG_OCTET_STRING).ok()?;
    let rest_start = seq.value.len() - r.data.len();
    let rest = &seq.value[rest_start..];
    let mut look = Reader::new(rest);
    let params = look.optional(0xa0).ok()??;
    let curve = single(params.value, TAG_OID).ok()?.value;
    let n = match curve {
        oid::P256 => 32,
        oid::P384 => 48,
        oid::P521 => 66,
        _ => return None,
    };
    let p = private.value;
    if p.len() == n {
        return None;
    }
    let mut scalar = alloc::vec![0u8; n];
    if p.len() > n {
        let (lead, tail) = p.split_at(p.len() - n);
        if lead.iter().any(|b| *b != 0) {
            return None;
        }
        scalar.copy_from_slice(tail);
    } else {
        scalar[n - p.len()..].copy_from_slice(p);
    }
    let mut body = Vec::new();
    body.extend_from_slice(version.raw);
    der_push(&mut body, TAG_OCTET_STRING, &scalar);
    body.extend_from_slice(rest);
    let mut out = Vec::new();
    der_push(&mut out, TAG_SEQUENCE, &body);
    Some(out)
}

/// The public key algorithm of a certificate or private key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeyAlg {
    Rsa,
    RsaPss,
    EcP256,
    EcP384,
    EcP521,
    EcOther,
    Ed25519,
    Ed448,
    Unknown,
}

impl KeyAlg {
    pub(crate) fn name(self) -> &'static str {
        match self {
            KeyAlg::Rsa => "RSA",
            KeyAlg::RsaPss => "RSA-PSS",
            KeyAlg::EcP256 => "ECDSA P-256",
            KeyAlg::EcP384 => "ECDSA P-384",
            KeyAlg::EcP521 => "ECDSA P-521",
            KeyAlg::EcOther => "ECDSA (unusual curve)",
            KeyAlg::Ed25519 => "Ed25519",
            KeyAlg::Ed448 => "Ed448",
            KeyAlg::Unknown => "unknown key type",
        }
    }

    pub(crate) fn is_rsa(self) -> bool {
        matches!(self, KeyAlg::Rsa | KeyAlg::RsaPss)
    }
}

pub(crate) mod oid {
    pub(crate) const RSA: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01];
    pub(crate) const RSA_PSS: &[u8] = &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a];
    pub(crate) const EC_PUBLIC_KEY: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
    pub(crate) const P256: &[u8] = &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
    pub(crate) const P384: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x22];
    pub(crate) const P521: &[u8] = &[0x2b, 0x81, 0x04, 0x00, 0x23];
    pub(crate) const ED25519: &[u8] = &[0x2b, 0x65, 0x70];
    pub(crate) const ED448: &[u8] = &[0x2b, 0x65, 0x71];
    pub(crate) const BASIC_CONSTRAINTS: &[u8] = &[0x55, 0x1d, 0x13];
    pub(crate) const KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x0f];
    pub(crate) const EXT_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25];
    pub(crate) const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
    pub(crate) const ANY_EKU: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
    pub(crate) const SERVER_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x01];
    pub(crate) const CLIENT_AUTH: &[u8] = &[0x2b, 0x06, 0x01, 0x05, 0x05, 0x07, 0x03, 0x02];
}

/// Key usage bits (RFC 5280 numbering, bit 0 = digitalSignature).
pub(crate) mod ku {
    pub(crate) const DIGITAL_SIGNATURE: u16 = 1 << 0;
    pub(crate) const KEY_ENCIPHERMENT: u16 = 1 << 2;
    pub(crate) const KEY_AGREEMENT: u16 = 1 << 4;
    pub(crate) const KEY_CERT_SIGN: u16 = 1 << 5;
}

/// A parsed extension value with its criticality.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Ext<T> {
    pub(crate) value: T,
    pub(crate) critical: bool,
}

/// Extended key purposes found in a certificate.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Purposes {
    pub(crate) server: bool,
    pub(crate) client: bool,
    pub(crate) any: bool,
}

/// The fields of one certificate that the checks use; everything borrows the DER.
#[derive(Clone)]
pub(crate) struct Cert<'a> {
    pub(crate) tbs: &'a [u8],
    pub(crate) sig_alg: &'a [u8],
    pub(crate) signature: &'a [u8],
    pub(crate) serial: &'a [u8],
    pub(crate) issuer: &'a [u8],
    pub(crate) subject: &'a [u8],
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) spki: &'a [u8],
    pub(crate) spki_alg: &'a [u8],
    pub(crate) public_key: &'a [u8],
    pub(crate) key_alg: KeyAlg,
    pub(crate) basic_constraints: Option<Ext<bool>>,
    pub(crate) key_usage: Option<Ext<u16>>,
    pub(crate) purposes: Option<Ext<Purposes>>,
    pub(crate) san: Option<&'a [u8]>,
}

fn bit_string(t: Tlv<'_>) -> R<&[u8]> {
    match t.value.split_first() {
        Some((0, rest)) => Ok(rest),
        // key usage may have unused trailing bits; the caller masks
        Some((n, rest)) if *n < 8 && !rest.is_empty() => Ok(rest),
        _ => Err(DerError),
    }
}

pub(crate) fn key_alg_of(alg_id_contents: &[u8]) -> KeyAlg {
    let mut r = Reader::new(alg_id_contents);
    let Ok(o) = r.expect(TAG_OID) else {
        return KeyAlg::Unknown;
    };
    match o.value {
        oid::RSA => KeyAlg::Rsa,
        oid::RSA_PSS => KeyAlg::RsaPss,
        oid::ED25519 => KeyAlg::Ed25519,
        oid::ED448 => KeyAlg::Ed448,
        oid::EC_PUBLIC_KEY => match r.expect(TAG_OID).map(|t| t.value) {
            Ok(oid::P256) => KeyAlg::EcP256,
            Ok(oid::P384) => KeyAlg::EcP384,
            Ok(oid::P521) => KeyAlg::EcP521,
            _ => KeyAlg::EcOther,
        },
        _ => KeyAlg::Unknown,
    }
}

fn parse_time(t: Tlv<'_>) -> R<i64> {
    let v = t.value;
    let digits = |s: &[u8]| -> R<i64> {
        let mut n = 0i64;
        for &c in s {
            if !c.is_ascii_digit() {
                return Err(DerError);
            }
            n = n * 10 + i64::from(c - b'0');
        }
        Ok(n)
    };
    let (year, rest) = match t.tag {
        TAG_UTC_TIME if v.len() == 13 => {
            let yy = digits(&v[..2])?;
            (if yy >= 50 { 1900 + yy } else { 2000 + yy }, &v[2..])
        }
        TAG_GENERALIZED_TIME if v.len() == 15 => (digits(&v[..4])?, &v[4..]),
        _ => return Err(DerError),
    };
    if rest[10] != b'Z' {
        return Err(DerError);
    }
    let (mo, d, h, mi, s) = (
        digits(&rest[0..2])?,
        digits(&rest[2..4])?,
        digits(&rest[4..6])?,
        digits(&rest[6..8])?,
        digits(&rest[8..10])?,
    );
    if !(1..=12).contains(&mo) || !(1..=31).contains(&d) || h > 23 || mi > 59 || s > 60 {
        return Err(DerError);
    }
    Ok(days_from_civil(year, mo, d) * 86_400 + h * 3600 + mi * 60 + s)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
pub(crate) fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Formats Unix seconds as `YYYY-MM-DD HH:MM:SS UTC`.
pub(crate) fn format_unix(t: i64) -> String {
    let days = t.div_euclid(86_400);
    let secs = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    let mut s = String::new();
    let _ = write!(
        s,
        "{y:04}-{m:02}-{d:02} {:02}:{:02}:{:02} UTC",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    );
    s
}

impl<'a> Cert<'a> {
    pub(crate) fn parse(der: &'a [u8]) -> R<Self> {
        let outer = single(der, TAG_SEQUENCE)?;
        let mut r = Reader::new(outer.value);
        let tbs = r.expect(TAG_SEQUENCE)?;
        let sig_alg = r.expect(TAG_SEQUENCE)?;
        let signature = bit_string(r.expect(TAG_BIT_STRING)?)?;
        if !r.is_empty() {
            return Err(DerError);
        }
        let mut t = Reader::new(tbs.value);
        let _version = t.optional(0xa0)?;
        let serial = t.expect(TAG_INTEGER)?;
        let _inner_sig = t.expect(TAG_SEQUENCE)?;
        let issuer = t.expect(TAG_SEQUENCE)?;
        let validity = t.expect(TAG_SEQUENCE)?;
        let subject = t.expect(TAG_SEQUENCE)?;
        let spki = t.expect(TAG_SEQUENCE)?;
        let _ = t.optional(0x81)?;
        let _ = t.optional(0x82)?;
        let exts = t.optional(0xa3)?;

        let mut v = Reader::new(validity.value);
        let not_before = parse_time(v.any()?)?;
        let not_after = parse_time(v.any()?)?;

        let mut s = Reader::new(spki.value);
        let spki_alg = s.expect(TAG_SEQUENCE)?;
        let public_key = bit_string(s.expect(TAG_BIT_STRING)?)?;

        let mut cert = Cert {
            tbs: tbs.raw,
            sig_alg: sig_alg.value,
            signature,
            serial: serial.value,
            issuer: issuer.raw,
            subject: subject.raw,
            not_before,
            not_after,
            spki: spki.raw,
            spki_alg: spki_alg.value,
            public_key,
            key_alg: key_alg_of(spki_alg.value),
            basic_constraints: None,
            key_usage: None,
            purposes: None,
            san: None,
        };
        if let Some(exts) = exts {
            let list = single(exts.value, TAG_SEQUENCE)?;
            let mut e = Reader::new(list.value);
            while !e.is_empty() {
                let ext = e.expect(TAG_SEQUENCE)?;
                let mut x = Reader::new(ext.value);
                let id = x.expect(TAG_OID)?.value;
                let critical = match x.optional(TAG_BOOLEAN)? {
                    Some(b) => b.value.first().is_some_and(|v| *v != 0),
                    None => false,
                };
                let value = x.expect(TAG_OCTET_STRING)?.value;
                match id {
                    oid::BASIC_CONSTRAINTS => {
                        let seq = single(value, TAG_SEQUENCE)?;
                        let mut b = Reader::new(seq.value);
                        let ca = match b.optional(TAG_BOOLEAN)? {
                            Some(t) => t.value.first().is_some_and(|v| *v != 0),
                            None => false,
                        };
                        cert.basic_constraints = Some(Ext {
                            value: ca,
                            critical,
                        });
                    }
                    oid::KEY_USAGE => {
                        let bits = bit_string(single(value, TAG_BIT_STRING)?)?;
                        let mut v = 0u16;
                        for i in 0..9usize {
                            if let Some(byte) = bits.get(i / 8)
                                && byte & (0x80 >> (i % 8)) != 0
                            {
                                v |= 1 << i;
                            }
                        }
                        cert.key_usage = Some(Ext { value: v, critical });
                    }
                    oid::EXT_KEY_USAGE => {
                        let seq = single(value, TAG_SEQUENCE)?;
                        let mut p = Reader::new(seq.value);
                        let mut purposes = Purposes::default();
                        while !p.is_empty() {
                            match p.expect(TAG_OID)?.value {
                                oid::SERVER_AUTH => purposes.server = true,
                                oid::CLIENT_AUTH => purposes.client = true,
                                oid::ANY_EKU => purposes.any = true,
                                _ => {}
                            }
                        }
                        cert.purposes = Some(Ext {
                            value: purposes,
                            critical,
                        });
                    }
                    oid::SUBJECT_ALT_NAME => cert.san = Some(value),
                    _ => {}
                }
            }
        }
        Ok(cert)
    }

    pub(crate) fn is_self_issued(&self) -> bool {
        self.issuer == self.subject
    }

    /// Subject DN in the form gnutls/QEMU print it (see [`format_dn`]).
    pub(crate) fn subject_dn(&self) -> String {
        format_dn(self.subject)
    }

    pub(crate) fn issuer_dn(&self) -> String {
        format_dn(self.issuer)
    }

    /// Subject alternative names, printable (`DNS:x`, `IP:a.b.c.d`), for reports.
    pub(crate) fn san_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(san) = self.san else { return out };
        let Ok(seq) = single(san, TAG_SEQUENCE) else {
            return out;
        };
        let mut r = Reader::new(seq.value);
        while let Ok(t) = r.any() {
            match t.tag {
                0x82 => out.push(alloc::format!("DNS:{}", String::from_utf8_lossy(t.value))),
                0x87 => {
                    if let Some(ip) = format_ip(t.value) {
                        out.push(alloc::format!("IP:{ip}"));
                    }
                }
                _ => {}
            }
        }
        out
    }
}

/// An IPv4 (4 bytes) or IPv6 (16 bytes) address as text: dotted decimal, or eight
/// colon-separated hex groups (not shortened with `::`).
pub(crate) fn format_ip(octets: &[u8]) -> Option<String> {
    let mut s = String::new();
    match octets.len() {
        4 => {
            let _ = write!(s, "{}.{}.{}.{}", octets[0], octets[1], octets[2], octets[3]);
        }
        16 => {
            for (i, pair) in octets.chunks(2).enumerate() {
                if i > 0 {
                    s.push(':');
                }
                let _ = write!(s, "{:x}", u16::from_be_bytes([pair[0], pair[1]]));
            }
        }
        _ => return None,
    }
    Some(s)
}

/// A parsed certificate revocation list.
pub(crate) struct Crl<'a> {
    pub(crate) tbs: &'a [u8],
    pub(crate) sig_alg: &'a [u8],
    pub(crate) signature: &'a [u8],
    pub(crate) issuer: &'a [u8],
    pub(crate) next_update: Option<i64>,
    revoked: Option<&'a [u8]>,
}

impl<'a> Crl<'a> {
    pub(crate) fn parse(der: &'a [u8]) -> R<Self> {
        let outer = single(der, TAG_SEQUENCE)?;
        let mut r = Reader::new(outer.value);
        let tbs = r.expect(TAG_SEQUENCE)?;
        let sig_alg = r.expect(TAG_SEQUENCE)?;
        let signature = bit_string(r.expect(TAG_BIT_STRING)?)?;
        let mut t = Reader::new(tbs.value);
        let _version = t.optional(TAG_INTEGER)?;
        let _sig = t.expect(TAG_SEQUENCE)?;
        let issuer = t.expect(TAG_SEQUENCE)?;
        let _this_update = parse_time(t.any()?)?;
        let next_update = match t.peek_tag() {
            Some(TAG_UTC_TIME | TAG_GENERALIZED_TIME) => Some(parse_time(t.any()?)?),
            _ => None,
        };
        let revoked = t.optional(TAG_SEQUENCE)?.map(|s| s.value);
        Ok(Crl {
            tbs: tbs.raw,
            sig_alg: sig_alg.value,
            signature,
            issuer: issuer.raw,
            next_update,
            revoked,
        })
    }

    /// Whether `serial` (INTEGER contents) is listed.
    pub(crate) fn lists(&self, serial: &[u8]) -> bool {
        let Some(list) = self.revoked else {
            return false;
        };
        let mut r = Reader::new(list);
        while let Ok(entry) = r.expect(TAG_SEQUENCE) {
            let mut e = Reader::new(entry.value);
            if let Ok(s) = e.expect(TAG_INTEGER)
                && s.value == serial
            {
                return true;
            }
        }
        false
    }
}

fn attr_short_name(oid: &[u8]) -> Option<&'static str> {
    Some(match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x09] => "street",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x05] => "serialNumber",
        [0x55, 0x04, 0x04] => "surName",
        [0x55, 0x04, 0x2a] => "givenName",
        [0x55, 0x04, 0x0c] => "title",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x19] => "DC",
        [0x09, 0x92, 0x26, 0x89, 0x93, 0xf2, 0x2c, 0x64, 0x01, 0x01] => "UID",
        [0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01] => "EMAIL",
        _ => return None,
    })
}

fn format_oid(oid: &[u8], out: &mut String) {
    let mut first = true;
    let mut acc: u64 = 0;
    for &b in oid {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if first {
                let (a, b) = if acc < 40 {
                    (0, acc)
                } else if acc < 80 {
                    (1, acc - 40)
                } else {
                    (2, acc - 80)
                };
                let _ = write!(out, "{a}.{b}");
                first = false;
            } else {
                let _ = write!(out, ".{acc}");
            }
            acc = 0;
        }
    }
}

fn escape_into(value: &str, out: &mut String) {
    let n = value.chars().count();
    for (i, c) in value.chars().enumerate() {
        match c {
            ',' | '+' | '"' | '\\' | '<' | '>' | ';' => {
                out.push('\\');
                out.push(c);
            }
            '#' if i == 0 => out.push_str("\\#"),
            ' ' if i == 0 || i + 1 == n => out.push_str("\\ "),
            '\0' => out.push_str("\\00"),
            c => out.push(c),
        }
    }
}

fn decode_string(tag: u8, v: &[u8]) -> Option<String> {
    match tag {
        0x0c | 0x13 | 0x16 | 0x12 | 0x1a => core::str::from_utf8(v).ok().map(String::from),
        0x14 => Some(v.iter().map(|&b| char::from(b)).collect()),
        0x1e if v.len().is_multiple_of(2) => {
            char::decode_utf16(v.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
                .collect::<Result<String, _>>()
                .ok()
        }
        0x1c if v.len().is_multiple_of(4) => v
            .chunks(4)
            .map(|c| char::from_u32(u32::from_be_bytes([c[0], c[1], c[2], c[3]])))
            .collect(),
        _ => None,
    }
}

/// Formats a DER `Name` (the full SEQUENCE TLV) the way gnutls `gnutls_x509_crt_get_dn2`
/// does for QEMU's authz checks: attributes in certificate (DER) order, `,` between RDNs,
/// `+` inside a multi-valued RDN, RFC 4514 escaping, unknown attribute types as dotted
/// OIDs with `#hex` values. Example: `C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com`.
pub(crate) fn format_dn(name_tlv: &[u8]) -> String {
    let mut out = String::new();
    let Ok(name) = single(name_tlv, TAG_SEQUENCE) else {
        return out;
    };
    let mut rdns = Reader::new(name.value);
    let mut first_rdn = true;
    while let Ok(rdn) = rdns.expect(TAG_SET) {
        let mut atvs = Reader::new(rdn.value);
        let mut first_atv = true;
        while let Ok(atv) = atvs.expect(TAG_SEQUENCE) {
            let mut a = Reader::new(atv.value);
            let (Ok(id), Ok(val)) = (a.expect(TAG_OID), a.any()) else {
                continue;
            };
            out.push_str(if first_rdn && first_atv {
                ""
            } else if first_atv {
                ","
            } else {
                "+"
            });
            first_rdn = false;
            first_atv = false;
            match attr_short_name(id.value) {
                Some(n) => out.push_str(n),
                None => format_oid(id.value, &mut out),
            }
            out.push('=');
            match decode_string(val.tag, val.value) {
                Some(s) if attr_short_name(id.value).is_some() => escape_into(&s, &mut out),
                _ => {
                    out.push('#');
                    for b in val.raw {
                        let _ = write!(out, "{b:02X}");
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_round_trip() {
        assert_eq!(days_from_civil(1970, 1, 1), 0);
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(1_704_067_200), "2024-01-01 00:00:00 UTC");
        assert_eq!(days_from_civil(2024, 1, 1) * 86_400, 1_704_067_200);
        assert_eq!(format_unix(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
    }

    #[test]
    fn escapes_and_oids() {
        let mut s = String::new();
        escape_into(" a,b+c ", &mut s);
        assert_eq!(s, "\\ a\\,b\\+c\\ ");
        let mut o = String::new();
        format_oid(oid::SERVER_AUTH, &mut o);
        assert_eq!(o, "1.3.6.1.5.5.7.3.1");
    }

    #[test]
    fn ip_addresses() {
        assert_eq!(format_ip(&[127, 0, 0, 1]).as_deref(), Some("127.0.0.1"));
        let mut v6 = [0u8; 16];
        v6[0] = 0x20;
        v6[1] = 0x01;
        v6[15] = 1;
        assert_eq!(format_ip(&v6).as_deref(), Some("2001:0:0:0:0:0:0:1"));
        assert_eq!(format_ip(&[1, 2, 3]), None);
    }

    #[test]
    fn sec1_scalar_is_normalized() {
        // version 1, 33-byte scalar with a leading zero (as certtool writes), P-256 params
        let mut body = Vec::new();
        der_push(&mut body, TAG_INTEGER, &[1]);
        let mut scalar = alloc::vec![0u8];
        scalar.extend((1..=32u8).collect::<Vec<_>>());
        der_push(&mut body, TAG_OCTET_STRING, &scalar);
        let mut curve = Vec::new();
        der_push(&mut curve, TAG_OID, oid::P256);
        der_push(&mut body, 0xa0, &curve);
        let mut key = Vec::new();
        der_push(&mut key, TAG_SEQUENCE, &body);
        let fixed = normalize_sec1(&key).unwrap();
        let seq = single(&fixed, TAG_SEQUENCE).unwrap();
        let mut r = Reader::new(seq.value);
        r.expect(TAG_INTEGER).unwrap();
        assert_eq!(r.expect(TAG_OCTET_STRING).unwrap().value, &scalar[1..]);
        assert_eq!(r.expect(0xa0).unwrap().value, &curve[..]);
        // canonical keys are left alone; a non-zero excess byte is not "fixed"
        assert!(normalize_sec1(&fixed).is_none());
        let mut bad = key.clone();
        let pos = bad.iter().position(|b| *b == 33).unwrap() + 1;
        bad[pos] = 9;
        assert!(normalize_sec1(&bad).is_none());
    }

    #[test]
    fn garbage_never_panics() {
        for len in 0..64usize {
            let data: Vec<u8> = (0..len).map(|i| (i * 37 + 0x30) as u8).collect();
            let _ = Cert::parse(&data);
            let _ = Crl::parse(&data);
            let _ = format_dn(&data);
        }
        assert!(Cert::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
