//! Shared helpers: certificates made at test time with rcgen, in-memory peers.
#![allow(dead_code, unreachable_pub)]

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension,
    DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair,
    KeyUsagePurpose, RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};
use tls_glue::*;

pub fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

static SERIAL: AtomicU64 = AtomicU64::new(1000);

pub fn next_serial() -> SerialNumber {
    SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed))
}

#[allow(clippy::vec_init_then_push)]
pub fn backends() -> Vec<CryptoBackend> {
    let mut v = Vec::new();
    #[cfg(feature = "aws-lc-rs")]
    v.push(CryptoBackend::aws_lc_rs());
    #[cfg(feature = "ring")]
    v.push(CryptoBackend::ring());
    #[cfg(feature = "rustcrypto-core")]
    v.push(CryptoBackend::rustcrypto(Arc::new(OsRandom)));
    v
}

pub fn default_backend() -> CryptoBackend {
    CryptoBackend::platform_default()
}

pub struct Ca {
    pub key: KeyPair,
    pub params: CertificateParams,
    pub pem: String,
}

pub struct Leaf {
    pub pem: String,
    pub key_pem: String,
    pub serial: SerialNumber,
}

/// Key usage extension with explicit criticality; `bits` are RFC 5280 bit numbers.
pub fn ku_ext(bits: &[usize], critical: bool) -> CustomExtension {
    let max = bits.iter().copied().max().unwrap_or(0);
    let nbytes = max / 8 + 1;
    let mut bytes = vec![0u8; nbytes];
    for &b in bits {
        bytes[b / 8] |= 0x80 >> (b % 8);
    }
    let last = bytes[nbytes - 1];
    let unused = if last == 0 {
        0
    } else {
        last.trailing_zeros() as u8
    };
    let mut der = vec![0x03, (nbytes + 1) as u8, unused];
    der.extend_from_slice(&bytes);
    let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 15], der);
    e.set_criticality(critical);
    e
}

pub const SERVER_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 1];
pub const CLIENT_AUTH: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 2];
pub const CODE_SIGNING: &[u64] = &[1, 3, 6, 1, 5, 5, 7, 3, 3];

fn oid_der(oid: &[u64]) -> Vec<u8> {
    let mut body = vec![(oid[0] * 40 + oid[1]) as u8];
    for &c in &oid[2..] {
        let mut tmp = vec![(c & 0x7f) as u8];
        let mut v = c >> 7;
        while v > 0 {
            tmp.push(((v & 0x7f) as u8) | 0x80);
            v >>= 7;
        }
        tmp.reverse();
        body.extend(tmp);
    }
    let mut out = vec![0x06, body.len() as u8];
    out.extend(body);
    out
}

/// Extended key usage extension with explicit criticality.
pub fn eku_ext(oids: &[&[u64]], critical: bool) -> CustomExtension {
    let mut body = Vec::new();
    for o in oids {
        body.extend(oid_der(o));
    }
    let mut der = vec![0x30, body.len() as u8];
    der.extend(body);
    let mut e = CustomExtension::from_oid_content(&[2, 5, 29, 37], der);
    e.set_criticality(critical);
    e
}

impl Ca {
    pub fn new(cn: &str) -> Ca {
        Self::with(cn, KeyPair::generate().unwrap(), |_| {})
    }

    pub fn with(cn: &str, key: KeyPair, f: impl FnOnce(&mut CertificateParams)) -> Ca {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Test Org");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = now() - Duration::days(1);
        p.not_after = now() + Duration::days(365);
        p.serial_number = Some(next_serial());
        f(&mut p);
        let pem = p.self_signed(&key).unwrap().pem();
        Ca {
            key,
            params: p,
            pem,
        }
    }

    pub fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A leaf like `generate_qemu_layout` makes, adjusted by `f`.
    pub fn leaf_with(
        &self,
        cn: &str,
        server: bool,
        key: KeyPair,
        f: impl FnOnce(&mut CertificateParams),
    ) -> Leaf {
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CountryName, "GB");
        dn.push(DnType::StateOrProvinceName, "London");
        dn.push(DnType::LocalityName, "City Of London");
        dn.push(DnType::OrganizationName, "Test Org");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if server {
            p.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into().unwrap()),
                SanType::IpAddress("127.0.0.1".parse().unwrap()),
            ];
        }
        p.not_before = now() - Duration::days(1);
        p.not_after = now() + Duration::days(365);
        let serial = next_serial();
        p.serial_number = Some(serial.clone());
        p.use_authority_key_identifier_extension = true;
        f(&mut p);
        let cert = p.signed_by(&key, &self.issuer()).unwrap();
        Leaf {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        }
    }

    pub fn leaf(&self, cn: &str, server: bool) -> Leaf {
        self.leaf_with(cn, server, KeyPair::generate().unwrap(), |_| {})
    }

    pub fn crl(&self, revoked: &[&SerialNumber]) -> String {
        CertificateRevocationListParams {
            this_update: now() - Duration::days(1),
            next_update: now() + Duration::days(30),
            crl_number: next_serial(),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: (*s).clone(),
                    revocation_time: now() - Duration::hours(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.issuer())
        .unwrap()
        .pem()
        .unwrap()
    }
}

/// A CA with one server and one client certificate.
pub struct Pki {
    pub ca: Ca,
    pub server: Leaf,
    pub client: Leaf,
}

impl Pki {
    pub fn new() -> Pki {
        let ca = Ca::new("Test CA");
        let server = ca.leaf("localhost", true);
        let client = ca.leaf("client.example.com", false);
        Pki { ca, server, client }
    }
}

pub fn server_creds_with(
    ca: &str,
    crl: Option<&str>,
    leaf: &Leaf,
    verify_peer: bool,
    backend: CryptoBackend,
) -> TlsCreds {
    let pem = CredsPem {
        ca_cert: Some(ca.as_bytes()),
        ca_crl: crl.map(str::as_bytes),
        cert: Some(leaf.pem.as_bytes()),
        key: Some(leaf.key_pem.as_bytes()),
    };
    TlsCreds::from_pem(
        &pem,
        CredsOptions::new(Endpoint::Server, backend, Arc::new(SystemClock))
            .verify_peer(verify_peer),
    )
    .unwrap_or_else(|r| panic!("server creds: {r}"))
}

pub fn client_creds_with(
    ca: &str,
    crl: Option<&str>,
    leaf: Option<&Leaf>,
    backend: CryptoBackend,
) -> TlsCreds {
    let pem = CredsPem {
        ca_cert: Some(ca.as_bytes()),
        ca_crl: crl.map(str::as_bytes),
        cert: leaf.map(|l| l.pem.as_bytes()),
        key: leaf.map(|l| l.key_pem.as_bytes()),
    };
    TlsCreds::from_pem(
        &pem,
        CredsOptions::new(Endpoint::Client, backend, Arc::new(SystemClock)),
    )
    .unwrap_or_else(|r| panic!("client creds: {r}"))
}

/// Moves bytes both ways until nothing moves. Returns (client result, server result).
pub fn handshake(
    c: &mut TlsLayer,
    s: &mut TlsLayer,
) -> (Result<(), TlsError>, Result<(), TlsError>) {
    let mut buf = vec![0u8; 64 * 1024];
    let (mut rc, mut rs) = (Ok(()), Ok(()));
    for _ in 0..100 {
        let mut moved = false;
        while let Ok(Some(n)) = c.poll_transmit(&mut buf) {
            moved = true;
            if rs.is_ok() {
                rs = feed_all(s, &buf[..n]);
            }
        }
        while let Ok(Some(n)) = s.poll_transmit(&mut buf) {
            moved = true;
            if rc.is_ok() {
                rc = feed_all(c, &buf[..n]);
            }
        }
        if !moved {
            break;
        }
    }
    (rc, rs)
}

/// Feeds everything, consuming plaintext into a sink when the layer pushes back.
pub fn feed_all(l: &mut TlsLayer, mut data: &[u8]) -> Result<(), TlsError> {
    while !data.is_empty() {
        let n = l.handle_ciphertext(data)?;
        data = &data[n..];
        if n == 0 {
            let k = l.plaintext().len();
            l.consume_plaintext(k);
        }
    }
    Ok(())
}

/// Sends `data` from `a` to `b`, returns what `b` decrypted.
pub fn send(a: &mut TlsLayer, b: &mut TlsLayer, data: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; a.encrypted_len(data.len())];
    let n = a.encrypt(data, &mut out).unwrap();
    let mut got = Vec::new();
    let mut rest = &out[..n];
    while !rest.is_empty() {
        let k = b.handle_ciphertext(rest).unwrap();
        rest = &rest[k..];
        got.extend_from_slice(b.plaintext());
        let p = b.plaintext().len();
        b.consume_plaintext(p);
    }
    got.extend_from_slice(b.plaintext());
    let p = b.plaintext().len();
    b.consume_plaintext(p);
    got
}
