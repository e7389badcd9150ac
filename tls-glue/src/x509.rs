//! The X.509 fields the credential checks need, decoded with RustCrypto's `x509-cert` and `der`.
//!
//! rustls/webpki validate chains at handshake time; this module only interprets what the
//! load-time sanity checks (QEMU `crypto/tlscredsx509.c` rules), the DN ACL and the
//! administrator-facing messages need: validity, basic constraints, key usage, extended key
//! usage, names, the public key algorithm and the signed parts (to check "issued by").

use alloc::string::String;
use alloc::vec::Vec;
use core::fmt::Write as _;

use der::asn1::{AnyRef, ObjectIdentifier};
use der::oid::AssociatedOid;
use der::oid::db::rfc5280::{ANY_EXTENDED_KEY_USAGE, ID_KP_CLIENT_AUTH, ID_KP_SERVER_AUTH};
use der::oid::db::rfc5912::{
    ID_EC_PUBLIC_KEY, ID_RSASSA_PSS, RSA_ENCRYPTION, SECP_256_R_1, SECP_384_R_1, SECP_521_R_1,
};
use der::oid::db::rfc8410::{ID_ED_448, ID_ED_25519};
use der::{Decode, Encode, Reader, SliceReader, Tag, TagNumber, Tagged};
use x509_cert::AlgorithmIdentifier;
use x509_cert::Certificate;
use x509_cert::crl::CertificateList;
use x509_cert::ext::Extension;
use x509_cert::ext::pkix::{BasicConstraints, ExtendedKeyUsage, KeyUsage, SubjectAltName};
use x509_cert::name::Name;
use x509_cert::serial_number::SerialNumber;
use x509_cert::time::Time;

/// Why a DER structure could not be decoded.
pub(crate) type DerError = der::Error;

type R<T> = Result<T, DerError>;

/// The first element of a `SIGNED{…}` SEQUENCE (`TBSCertificate`, `TBSCertList`) exactly as
/// encoded: the bytes the signature covers. (Re-encoding the decoded value can differ where
/// the issuer used a form `der` accepts but does not produce, e.g. an explicit DEFAULT.)
fn signed_part(der: &[u8]) -> R<&[u8]> {
    let mut r = SliceReader::new(der)?;
    let tbs = r.sequence(|s| {
        let tbs = s.tlv_bytes()?;
        s.tlv_bytes()?;
        s.tlv_bytes()?;
        Ok::<_, DerError>(tbs)
    })?;
    r.finish()?;
    Ok(tbs)
}

/// An `AlgorithmIdentifier`'s contents (the OID and parameters without the SEQUENCE header),
/// the form rustls' [`pki_types::AlgorithmIdentifier`] uses.
fn alg_id(alg: &AlgorithmIdentifier) -> Vec<u8> {
    let mut out = Vec::new();
    let _ = alg.oid.encode_to_vec(&mut out);
    if let Some(p) = &alg.parameters {
        let _ = p.encode_to_vec(&mut out);
    }
    out
}

fn unix(t: Time) -> i64 {
    i64::try_from(t.to_unix_duration().as_secs()).unwrap_or(i64::MAX)
}

/// Re-encodes a SEC1 `ECPrivateKey` whose private scalar has the wrong length (gnutls'
/// certtool writes P-256 scalars as 33 bytes with a leading zero, which *ring* refuses).
/// Returns `None` when the key is already canonical or not understood. (`sec1` 0.7, on
/// `der` 0.7: the decoder p256/p384 already use for SEC1 keys, so firmware holds one copy.)
pub(crate) fn normalize_sec1(der: &[u8]) -> Option<Vec<u8>> {
    use sec1::der::{Decode as _, Encode as _};
    let key = sec1::EcPrivateKey::from_der(der).ok()?;
    let curve = key.parameters?.named_curve()?;
    let n = match curve.as_bytes() {
        c if c == SECP_256_R_1.as_bytes() => 32,
        c if c == SECP_384_R_1.as_bytes() => 48,
        c if c == SECP_521_R_1.as_bytes() => 66,
        _ => return None,
    };
    let p = key.private_key;
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
    sec1::EcPrivateKey {
        private_key: &scalar,
        ..key
    }
    .to_der()
    .ok()
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

    fn of(alg: &AlgorithmIdentifier) -> KeyAlg {
        match alg.oid {
            RSA_ENCRYPTION => KeyAlg::Rsa,
            ID_RSASSA_PSS => KeyAlg::RsaPss,
            ID_ED_25519 => KeyAlg::Ed25519,
            ID_ED_448 => KeyAlg::Ed448,
            ID_EC_PUBLIC_KEY => match alg
                .parameters
                .as_ref()
                .and_then(|p| p.decode_as::<ObjectIdentifier>().ok())
            {
                Some(SECP_256_R_1) => KeyAlg::EcP256,
                Some(SECP_384_R_1) => KeyAlg::EcP384,
                Some(SECP_521_R_1) => KeyAlg::EcP521,
                _ => KeyAlg::EcOther,
            },
            _ => KeyAlg::Unknown,
        }
    }
}

/// Key usage bits (RFC 5280 numbering, bit 0 = digitalSignature).
pub(crate) mod ku {
    pub(crate) const DIGITAL_SIGNATURE: u16 = 1 << 0;
    pub(crate) const KEY_ENCIPHERMENT: u16 = 1 << 2;
    pub(crate) const KEY_AGREEMENT: u16 = 1 << 4;
    pub(crate) const KEY_CERT_SIGN: u16 = 1 << 5;
}

/// A decoded extension value with its criticality.
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

/// One certificate, decoded by `x509-cert`, with the facts the checks use.
#[derive(Clone)]
pub(crate) struct Cert<'a> {
    /// The signed `TBSCertificate`, as encoded.
    pub(crate) tbs: &'a [u8],
    x509: Certificate,
    pub(crate) not_before: i64,
    pub(crate) not_after: i64,
    pub(crate) key_alg: KeyAlg,
    pub(crate) basic_constraints: Option<Ext<bool>>,
    pub(crate) key_usage: Option<Ext<u16>>,
    pub(crate) purposes: Option<Ext<Purposes>>,
    /// Whether the certificate has a subject alternative name extension.
    pub(crate) has_san: bool,
}

impl<'a> Cert<'a> {
    // Not inlined: `load` calls it twice, and each copy would carry the whole decoder.
    #[inline(never)]
    pub(crate) fn parse(der: &'a [u8]) -> R<Self> {
        let x509 = Certificate::from_der(der)?;
        let t = x509.tbs_certificate();
        let mut cert = Cert {
            tbs: signed_part(der)?,
            not_before: unix(t.validity().not_before),
            not_after: unix(t.validity().not_after),
            key_alg: KeyAlg::of(&t.subject_public_key_info().algorithm),
            basic_constraints: None,
            key_usage: None,
            purposes: None,
            has_san: false,
            x509,
        };
        // A later extension of the same type wins; a malformed one fails the certificate.
        for ext in cert
            .x509
            .tbs_certificate()
            .extensions()
            .into_iter()
            .flatten()
        {
            let value = ext.extn_value.as_bytes();
            let critical = ext.critical;
            match ext.extn_id {
                BasicConstraints::OID => {
                    let bc = BasicConstraints::from_der(value)?;
                    cert.basic_constraints = Some(Ext {
                        value: bc.ca,
                        critical,
                    });
                }
                KeyUsage::OID => {
                    let bits = KeyUsage::from_der(value)?.0.bits() & 0x1ff;
                    cert.key_usage = Some(Ext {
                        value: bits,
                        critical,
                    });
                }
                ExtendedKeyUsage::OID => {
                    let mut purposes = Purposes::default();
                    for p in ExtendedKeyUsage::from_der(value)?.0 {
                        match p {
                            ID_KP_SERVER_AUTH => purposes.server = true,
                            ID_KP_CLIENT_AUTH => purposes.client = true,
                            ANY_EXTENDED_KEY_USAGE => purposes.any = true,
                            _ => {}
                        }
                    }
                    cert.purposes = Some(Ext {
                        value: purposes,
                        critical,
                    });
                }
                SubjectAltName::OID => cert.has_san = true,
                _ => {}
            }
        }
        Ok(cert)
    }

    fn extensions(&self) -> impl Iterator<Item = &Extension> {
        self.x509
            .tbs_certificate()
            .extensions()
            .into_iter()
            .flatten()
    }

    pub(crate) fn serial(&self) -> &SerialNumber {
        self.x509.tbs_certificate().serial_number()
    }

    pub(crate) fn issuer(&self) -> &Name {
        self.x509.tbs_certificate().issuer()
    }

    pub(crate) fn subject(&self) -> &Name {
        self.x509.tbs_certificate().subject()
    }

    /// The signature algorithm (contents of the `AlgorithmIdentifier`).
    pub(crate) fn sig_alg(&self) -> Vec<u8> {
        alg_id(self.x509.signature_algorithm())
    }

    pub(crate) fn signature(&self) -> &[u8] {
        self.x509.signature().raw_bytes()
    }

    /// The `SubjectPublicKeyInfo`, DER.
    pub(crate) fn spki(&self) -> Vec<u8> {
        self.x509
            .tbs_certificate()
            .subject_public_key_info()
            .to_der()
            .unwrap_or_default()
    }

    /// The public key algorithm (contents of the `AlgorithmIdentifier`).
    pub(crate) fn spki_alg(&self) -> Vec<u8> {
        alg_id(
            &self
                .x509
                .tbs_certificate()
                .subject_public_key_info()
                .algorithm,
        )
    }

    /// The public key (the SPKI's BIT STRING contents).
    pub(crate) fn public_key(&self) -> &[u8] {
        self.x509
            .tbs_certificate()
            .subject_public_key_info()
            .subject_public_key
            .raw_bytes()
    }

    pub(crate) fn is_self_issued(&self) -> bool {
        self.issuer() == self.subject()
    }

    /// Subject DN in the form gnutls/QEMU print it (see [`format_dn`]).
    pub(crate) fn subject_dn(&self) -> String {
        format_dn(self.subject())
    }

    pub(crate) fn issuer_dn(&self) -> String {
        format_dn(self.issuer())
    }

    /// Subject alternative names, printable (`DNS:x`, `IP:a.b.c.d`), for reports.
    ///
    /// The `GeneralNames` are decoded as `der` values and only `dNSName` \[2\] and
    /// `iPAddress` \[7\] are read: x509-cert's `GeneralName` decodes every variant
    /// (`EDIPartyName` with its `DirectoryString`s, `directoryName`, …), which costs the
    /// firmware 11 KiB of flash for a line of the report.
    pub(crate) fn san_names(&self) -> Vec<String> {
        let mut out = Vec::new();
        let Some(ext) = self
            .extensions()
            .filter(|e| e.extn_id == SubjectAltName::OID)
            .last()
        else {
            return out;
        };
        let Ok(names) = Vec::<AnyRef<'_>>::from_der(ext.extn_value.as_bytes()) else {
            return out;
        };
        for name in names {
            match name.tag() {
                Tag::ContextSpecific {
                    constructed: false,
                    number: TagNumber(2),
                } => out.push(alloc::format!(
                    "DNS:{}",
                    String::from_utf8_lossy(name.value())
                )),
                Tag::ContextSpecific {
                    constructed: false,
                    number: TagNumber(7),
                } => {
                    if let Some(ip) = format_ip(name.value()) {
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

/// A certificate revocation list, decoded by `x509-cert`.
pub(crate) struct Crl<'a> {
    /// The signed `TBSCertList`, as encoded.
    pub(crate) tbs: &'a [u8],
    x509: CertificateList,
    pub(crate) next_update: Option<i64>,
}

impl<'a> Crl<'a> {
    #[inline(never)]
    pub(crate) fn parse(der: &'a [u8]) -> R<Self> {
        let x509 = CertificateList::from_der(der)?;
        Ok(Crl {
            tbs: signed_part(der)?,
            next_update: x509.tbs_cert_list.next_update.map(unix),
            x509,
        })
    }

    pub(crate) fn issuer(&self) -> &Name {
        &self.x509.tbs_cert_list.issuer
    }

    /// The signature algorithm (contents of the `AlgorithmIdentifier`).
    pub(crate) fn sig_alg(&self) -> Vec<u8> {
        alg_id(&self.x509.signature_algorithm)
    }

    pub(crate) fn signature(&self) -> &[u8] {
        self.x509.signature.raw_bytes()
    }

    /// Whether `serial` is listed.
    pub(crate) fn lists(&self, serial: &SerialNumber) -> bool {
        self.x509
            .tbs_cert_list
            .revoked_certificates
            .iter()
            .flatten()
            .any(|r| r.serial_number == *serial)
    }
}

fn attr_short_name(oid: &ObjectIdentifier) -> Option<&'static str> {
    Some(match oid.as_bytes() {
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

/// The text of a directory string (`tag` is the value's universal tag number): UTF8String,
/// PrintableString, IA5String, NumericString and VisibleString as UTF-8, TeletexString as
/// Latin-1, BMPString as UTF-16 and UniversalString as UTF-32 (both big-endian).
fn decode_string(tag: Tag, v: &[u8]) -> Option<String> {
    match tag {
        Tag::Utf8String
        | Tag::PrintableString
        | Tag::Ia5String
        | Tag::NumericString
        | Tag::VisibleString => core::str::from_utf8(v).ok().map(String::from),
        Tag::TeletexString => Some(v.iter().map(|&b| char::from(b)).collect()),
        Tag::BmpString if v.len().is_multiple_of(2) => {
            char::decode_utf16(v.chunks(2).map(|c| u16::from_be_bytes([c[0], c[1]])))
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    }
}

/// Formats a `Name` the way gnutls `gnutls_x509_crt_get_dn2` does for QEMU's authz checks:
/// attributes in certificate (DER) order, `,` between RDNs, `+` inside a multi-valued RDN,
/// RFC 4514 escaping, unknown attribute types as dotted OIDs with `#hex` values. Example:
/// `C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com`.
pub(crate) fn format_dn(name: &Name) -> String {
    let mut out = String::new();
    let mut first_rdn = true;
    for rdn in name.iter_rdn() {
        let mut first_atv = true;
        for atv in rdn.iter() {
            out.push_str(if first_rdn && first_atv {
                ""
            } else if first_atv {
                ","
            } else {
                "+"
            });
            first_rdn = false;
            first_atv = false;
            let short = attr_short_name(&atv.oid);
            match short {
                Some(n) => out.push_str(n),
                None => {
                    let _ = write!(out, "{}", atv.oid);
                }
            }
            out.push('=');
            match decode_string(atv.value.tag(), atv.value.value()) {
                Some(s) if short.is_some() => escape_into(&s, &mut out),
                _ => {
                    out.push('#');
                    for b in atv.value.to_der().unwrap_or_default() {
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
    use sec1::der::asn1::{ObjectIdentifier as Oid09, OctetStringRef};
    use sec1::der::{Decode as _, Encode as _};

    #[test]
    fn unix_times() {
        assert_eq!(format_unix(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_unix(1_704_067_200), "2024-01-01 00:00:00 UTC");
        assert_eq!(format_unix(951_782_400 + 3661), "2000-02-29 01:01:01 UTC");
        assert_eq!(format_unix(-1), "1969-12-31 23:59:59 UTC");
    }

    #[test]
    fn escapes() {
        let mut s = String::new();
        escape_into(" a,b+c ", &mut s);
        assert_eq!(s, "\\ a\\,b\\+c\\ ");
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
        let mut scalar = alloc::vec![0u8];
        scalar.extend(1..=32u8);
        let p256 = Oid09::new_unwrap("1.2.840.10045.3.1.7");
        let key = sec1::EcPrivateKey {
            private_key: &scalar,
            parameters: Some(sec1::EcParameters::NamedCurve(p256)),
            public_key: None,
        }
        .to_der()
        .unwrap();
        // the DER of that key holds the 33-byte OCTET STRING
        let octets = OctetStringRef::new(&scalar).unwrap().to_der().unwrap();
        assert!(key.windows(octets.len()).any(|w| w == octets));
        let fixed = normalize_sec1(&key).unwrap();
        let k = sec1::EcPrivateKey::from_der(&fixed).unwrap();
        assert_eq!(k.private_key, &scalar[1..]);
        assert_eq!(k.parameters.and_then(|p| p.named_curve()), Some(p256));
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
        }
        assert!(Cert::parse(&[0x30, 0x84, 0xff, 0xff, 0xff, 0xff]).is_err());
    }
}
