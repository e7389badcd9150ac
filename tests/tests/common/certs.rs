//! Certificates made at test time with rcgen, in the QEMU directory layout: a CA, server and
//! client leaves (adjustable: validity, names), and CRLs. ECDSA P-256 keys with key usage
//! digitalSignature + keyEncipherment (what QEMU's own-certificate check accepts).

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, DistinguishedName,
    DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyIdMethod, KeyPair, KeyUsagePurpose,
    RevokedCertParams, SanType, SerialNumber,
};
use time::{Duration, OffsetDateTime};

/// The client certificate's DN as QEMU and kvmio print it.
pub(crate) const CLIENT_DN: &str = "O=Test Org,CN=client.example.com";

static SERIAL: AtomicU64 = AtomicU64::new(0x1000);

fn serial() -> SerialNumber {
    SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed))
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

/// A certificate authority.
pub(crate) struct Ca {
    key: KeyPair,
    params: CertificateParams,
    /// The CA certificate.
    pub(crate) pem: String,
}

/// A leaf certificate and its key.
pub(crate) struct Leaf {
    /// Certificate.
    pub(crate) pem: String,
    /// Private key (PKCS#8).
    pub(crate) key_pem: String,
    /// Serial number (for CRLs).
    pub(crate) serial: SerialNumber,
}

impl Ca {
    /// A self-signed CA valid from yesterday for a year.
    pub(crate) fn new(cn: &str) -> Ca {
        let key = KeyPair::generate().expect("CA key");
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Test Org");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
        p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        p.not_before = now() - Duration::days(1);
        p.not_after = now() + Duration::days(365);
        p.serial_number = Some(serial());
        let pem = p.self_signed(&key).expect("CA certificate").pem();
        Ca {
            key,
            params: p,
            pem,
        }
    }

    fn issuer(&self) -> Issuer<'_, &KeyPair> {
        Issuer::from_params(&self.params, &self.key)
    }

    /// A leaf: server (SAN localhost, 127.0.0.1, ::1, EKU serverAuth) or client (EKU
    /// clientAuth, DN [`CLIENT_DN`]), valid from yesterday for a year, then adjusted by `f`.
    pub(crate) fn leaf_with(&self, server: bool, f: impl FnOnce(&mut CertificateParams)) -> Leaf {
        let key = KeyPair::generate().expect("leaf key");
        let mut p = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Test Org");
        dn.push(
            DnType::CommonName,
            if server {
                "localhost"
            } else {
                "client.example.com"
            },
        );
        p.distinguished_name = dn;
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        p.extended_key_usages = vec![if server {
            ExtendedKeyUsagePurpose::ServerAuth
        } else {
            ExtendedKeyUsagePurpose::ClientAuth
        }];
        if server {
            p.subject_alt_names = vec![
                SanType::DnsName("localhost".try_into().expect("name")),
                SanType::IpAddress("127.0.0.1".parse().expect("ip")),
                SanType::IpAddress("::1".parse().expect("ip")),
            ];
        }
        p.not_before = now() - Duration::days(1);
        p.not_after = now() + Duration::days(365);
        let serial = serial();
        p.serial_number = Some(serial.clone());
        p.use_authority_key_identifier_extension = true;
        f(&mut p);
        let cert = p.signed_by(&key, &self.issuer()).expect("sign leaf");
        Leaf {
            pem: cert.pem(),
            key_pem: key.serialize_pem(),
            serial,
        }
    }

    /// A default server or client leaf.
    pub(crate) fn leaf(&self, server: bool) -> Leaf {
        self.leaf_with(server, |_| {})
    }

    /// A CRL revoking `revoked`.
    pub(crate) fn crl(&self, revoked: &[&SerialNumber]) -> String {
        CertificateRevocationListParams {
            this_update: now() - Duration::days(1),
            next_update: now() + Duration::days(30),
            crl_number: serial(),
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
        .expect("sign CRL")
        .pem()
        .expect("CRL PEM")
    }
}

/// Writes a QEMU-layout directory: `ca-cert.pem` (the concatenation of `cas`), optional
/// `ca-crl.pem`, optional `server-*.pem` and `client-*.pem`.
pub(crate) fn write_dir(
    dir: &Path,
    cas: &[&str],
    crl: Option<&str>,
    server: Option<&Leaf>,
    client: Option<&Leaf>,
) {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(dir.join("ca-cert.pem"), cas.concat()).expect("ca-cert.pem");
    if let Some(c) = crl {
        std::fs::write(dir.join("ca-crl.pem"), c).expect("ca-crl.pem");
    }
    for (who, leaf) in [("server", server), ("client", client)] {
        if let Some(l) = leaf {
            std::fs::write(dir.join(format!("{who}-cert.pem")), &l.pem).expect("cert");
            let key = dir.join(format!("{who}-key.pem"));
            std::fs::write(&key, &l.key_pem).expect("key");
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).expect("chmod");
        }
    }
}

/// Validity in the past (expired a day ago).
pub(crate) fn expired(p: &mut CertificateParams) {
    p.not_before = now() - Duration::days(30);
    p.not_after = now() - Duration::days(1);
}

/// Validity in the future (active from tomorrow).
pub(crate) fn not_yet_active(p: &mut CertificateParams) {
    p.not_before = now() + Duration::days(1);
    p.not_after = now() + Duration::days(30);
}

/// A server certificate for another host only (no 127.0.0.1, no localhost).
pub(crate) fn other_host(p: &mut CertificateParams) {
    p.subject_alt_names = vec![SanType::DnsName(
        "other.example.com".try_into().expect("name"),
    )];
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "Test Org");
    dn.push(DnType::CommonName, "other.example.com");
    p.distinguished_name = dn;
}

/// A client certificate with common name `cn` (DN `O=Test Org,CN=<cn>`).
pub(crate) fn client_cn(cn: &'static str) -> impl FnOnce(&mut CertificateParams) {
    move |p| {
        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, "Test Org");
        dn.push(DnType::CommonName, cn);
        p.distinguished_name = dn;
    }
}
