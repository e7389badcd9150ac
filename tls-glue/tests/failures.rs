//! The failure matrix at the TLS level: each case gives the specific `TlsError` on the side
//! that detects it (and a peer alert on the other side where TLS has one).
#![cfg(all(
    feature = "std",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto")
))]

mod common;

use std::sync::Arc;

use common::*;
use time::Duration;
use tls_glue::*;

fn run(
    scfg: &TlsServerConfig,
    ccfg: &TlsClientConfig,
    host: &str,
) -> (
    Result<(), TlsError>,
    Result<(), TlsError>,
    TlsLayer,
    TlsLayer,
) {
    let mut c = TlsLayer::client(ccfg, host).unwrap();
    let mut s = TlsLayer::server(scfg).unwrap();
    let (rc, rs) = handshake(&mut c, &mut s);
    // TLS 1.3: the client may finish before the server judges its certificate; the server's
    // verdict arrives as an alert on the client's next read.
    (rc, rs, c, s)
}

fn server_cfg(
    pki_ca: &str,
    crl: Option<&str>,
    leaf: &Leaf,
    verify: bool,
    acl: Option<Acl>,
) -> TlsServerConfig {
    let creds = server_creds_with(pki_ca, crl, leaf, verify, default_backend());
    TlsServerConfig::with_options(&creds, &{
        let mut o = ServerOptions::default();
        o.acl = acl;
        o
    })
    .unwrap()
}

fn client_cfg(ca: &str, crl: Option<&str>, leaf: Option<&Leaf>) -> TlsClientConfig {
    TlsClientConfig::new(&client_creds_with(ca, crl, leaf, default_backend())).unwrap()
}

/// Certificates that fail the load-time checks can still reach a peer (the peer is not us):
/// build the peer's side from raw PEM without our checks, with the checks of the verifying
/// side intact. For that, the "bad" leaf is loaded by a side that does not check it: we load it
/// with a clock at which it is valid.
fn creds_at(endpoint: Endpoint, ca: &str, leaf: Option<&Leaf>, at: u64, verify: bool) -> TlsCreds {
    TlsCreds::from_pem(
        &CredsPem {
            ca_cert: Some(ca.as_bytes()),
            ca_crl: None,
            cert: leaf.map(|l| l.pem.as_bytes()),
            key: leaf.map(|l| l.key_pem.as_bytes()),
        },
        CredsOptions::new(endpoint, default_backend(), Arc::new(FixedTime(at))).verify_peer(verify),
    )
    .unwrap_or_else(|r| panic!("{r}"))
}

/// A CA valid from 30 days ago, so the clock can be moved back for the "bad" side.
fn long_lived_pki() -> Pki {
    let ca = Ca::with("Test CA", rcgen::KeyPair::generate().unwrap(), |p| {
        p.not_before = now() - Duration::days(30);
    });
    let old = |p: &mut rcgen::CertificateParams| p.not_before = now() - Duration::days(30);
    Pki {
        server: ca.leaf_with("localhost", true, rcgen::KeyPair::generate().unwrap(), old),
        client: ca.leaf_with(
            "client.example.com",
            false,
            rcgen::KeyPair::generate().unwrap(),
            old,
        ),
        ca,
    }
}

fn unix(t: time::OffsetDateTime) -> u64 {
    t.unix_timestamp() as u64
}

#[test]
fn wrong_ca() {
    let pki = Pki::new();
    let other = Ca::new("Other CA");
    // client trusts another CA: it rejects the server
    let (rc, rs, ..) = run(
        &server_cfg(&pki.ca.pem, None, &pki.server, false, None),
        &client_cfg(&other.pem, None, None),
        "localhost",
    );
    assert_eq!(rc, Err(TlsError::UnknownCa));
    assert_eq!(rs, Err(TlsError::PeerAlert(48)), "server sees unknown_ca");
    assert!(TlsError::PeerAlert(48).to_string().contains("unknown_ca"));
    // server trusts another CA for clients: it rejects the client certificate
    let other_client = other.leaf("client.example.com", false);
    // (the client's own ca-cert.pem holds both CAs, so its certificate loads)
    let both = format!("{}{}", pki.ca.pem, other.pem);
    let (_rc, rs, c, _) = run(
        &server_cfg(&pki.ca.pem, None, &pki.server, true, None),
        &client_cfg(&both, None, Some(&other_client)),
        "localhost",
    );
    assert_eq!(rs, Err(TlsError::UnknownCa));
    assert_eq!(c.error(), Some(TlsError::PeerAlert(48)));
}

#[test]
fn expired_and_not_yet_valid_server() {
    let pki = long_lived_pki();
    let expired = pki.ca.leaf_with(
        "localhost",
        true,
        rcgen::KeyPair::generate().unwrap(),
        |p| {
            p.not_before = now() - Duration::days(10);
            p.not_after = now() - Duration::days(1);
        },
    );
    let future = pki.ca.leaf_with(
        "localhost",
        true,
        rcgen::KeyPair::generate().unwrap(),
        |p| {
            p.not_before = now() + Duration::days(1);
            p.not_after = now() + Duration::days(10);
        },
    );
    for (leaf, at, want) in [
        (&expired, now() - Duration::days(5), TlsError::Expired),
        (&future, now() + Duration::days(5), TlsError::NotYetValid),
    ] {
        let sc = creds_at(Endpoint::Server, &pki.ca.pem, Some(leaf), unix(at), false);
        let scfg = TlsServerConfig::new(&sc).unwrap();
        let (rc, rs, ..) = run(&scfg, &client_cfg(&pki.ca.pem, None, None), "localhost");
        assert_eq!(rc, Err(want));
        assert!(
            matches!(rs, Err(TlsError::PeerAlert(45 | 46 | 42))),
            "{rs:?}"
        );
    }
}

#[test]
fn expired_client_detected_by_server() {
    let pki = long_lived_pki();
    let expired = pki.ca.leaf_with(
        "client.example.com",
        false,
        rcgen::KeyPair::generate().unwrap(),
        |p| {
            p.not_before = now() - Duration::days(10);
            p.not_after = now() - Duration::days(1);
        },
    );
    let cc = creds_at(
        Endpoint::Client,
        &pki.ca.pem,
        Some(&expired),
        unix(now() - Duration::days(5)),
        true,
    );
    let (_rc, rs, ..) = run(
        &server_cfg(&pki.ca.pem, None, &pki.server, true, None),
        &TlsClientConfig::new(&cc).unwrap(),
        "localhost",
    );
    assert_eq!(rs, Err(TlsError::Expired));
}

#[test]
fn revoked_by_crl() {
    let pki = Pki::new();
    // the client's CRL revokes the server certificate
    let crl = pki.ca.crl(&[&pki.server.serial]);
    let (rc, rs, ..) = run(
        &server_cfg(&pki.ca.pem, None, &pki.server, false, None),
        &client_cfg(&pki.ca.pem, Some(&crl), None),
        "localhost",
    );
    assert_eq!(rc, Err(TlsError::Revoked));
    assert!(matches!(rs, Err(TlsError::PeerAlert(44))));
    // the server's CRL revokes the client certificate
    let crl = pki.ca.crl(&[&pki.client.serial]);
    let (_rc, rs, ..) = run(
        &server_cfg(&pki.ca.pem, Some(&crl), &pki.server, true, None),
        &client_cfg(&pki.ca.pem, None, Some(&pki.client)),
        "localhost",
    );
    assert_eq!(rs, Err(TlsError::Revoked));
    // a CRL revoking someone else changes nothing
    let other = pki.ca.leaf("x", false);
    let crl = pki.ca.crl(&[&other.serial]);
    let (rc, rs, ..) = run(
        &server_cfg(&pki.ca.pem, Some(&crl), &pki.server, true, None),
        &client_cfg(&pki.ca.pem, Some(&crl), Some(&pki.client)),
        "localhost",
    );
    assert_eq!((rc, rs), (Ok(()), Ok(())));
}

#[test]
fn hostname_mismatch() {
    let pki = Pki::new();
    let scfg = server_cfg(&pki.ca.pem, None, &pki.server, false, None);
    let ccfg = client_cfg(&pki.ca.pem, None, None);
    let (rc, rs, ..) = run(&scfg, &ccfg, "other.example.com");
    assert_eq!(rc, Err(TlsError::HostnameMismatch));
    assert!(matches!(rs, Err(TlsError::PeerAlert(_))));
    assert!(
        rc.unwrap_err()
            .to_string()
            .contains("subject alternative names")
    );
    // the IP address in the SAN works, another does not
    assert_eq!(run(&scfg, &ccfg, "127.0.0.1").0, Ok(()));
    assert_eq!(
        run(&scfg, &ccfg, "127.0.0.2").0,
        Err(TlsError::HostnameMismatch)
    );
}

#[test]
fn missing_client_certificate_when_verify_peer() {
    let pki = Pki::new();
    let (_rc, rs, c, _s) = run(
        &server_cfg(&pki.ca.pem, None, &pki.server, true, None),
        &client_cfg(&pki.ca.pem, None, None),
        "localhost",
    );
    assert_eq!(rs, Err(TlsError::NoPeerCertificate));
    assert!(rs.unwrap_err().to_string().contains("verify-peer"));
    // the client learns it from the alert (TLS 1.3 certificate_required)
    assert_eq!(c.error(), Some(TlsError::PeerAlert(116)));
    assert!(c.error().unwrap().to_string().contains("client-cert.pem"));
    // with verify_peer off the same client gets in
    let (rc, rs, ..) = run(
        &server_cfg(&pki.ca.pem, None, &pki.server, false, None),
        &client_cfg(&pki.ca.pem, None, None),
        "localhost",
    );
    assert_eq!((rc, rs), (Ok(()), Ok(())));
}

#[test]
fn dn_not_in_acl() {
    let pki = Pki::new();
    let dn = "C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com";
    // exact (authz-simple) and glob (authz-list format=glob) allow
    for acl in [
        Acl::allow_only([dn]),
        Acl::new(AclPolicy::Deny).rule(
            AclPolicy::Allow,
            AclFormat::Glob,
            "C=GB,*,CN=*.example.com",
        ),
    ] {
        let (rc, rs, _, s) = run(
            &server_cfg(&pki.ca.pem, None, &pki.server, true, Some(acl)),
            &client_cfg(&pki.ca.pem, None, Some(&pki.client)),
            "localhost",
        );
        assert_eq!((rc, rs), (Ok(()), Ok(())));
        assert_eq!(s.peer_subject_dn().as_deref(), Some(dn));
    }
    // the same decision after the handshake, per service, on a shared configuration
    let (rc, rs, _, s) = run(
        &server_cfg(&pki.ca.pem, None, &pki.server, true, None),
        &client_cfg(&pki.ca.pem, None, Some(&pki.client)),
        "localhost",
    );
    assert_eq!((rc, rs), (Ok(()), Ok(())));
    assert_eq!(s.check_acl(&Acl::allow_only([dn])), Ok(()));
    assert_eq!(
        s.check_acl(&Acl::new(AclPolicy::Allow).rule(
            AclPolicy::Deny,
            AclFormat::Glob,
            "*CN=client.*"
        )),
        Err(TlsError::AccessDenied)
    );
    // deny
    let acl = Acl::allow_only(["C=GB,ST=London,L=City Of London,O=Test Org,CN=someone.else"]);
    let (_rc, rs, c, _) = run(
        &server_cfg(&pki.ca.pem, None, &pki.server, true, Some(acl)),
        &client_cfg(&pki.ca.pem, None, Some(&pki.client)),
        "localhost",
    );
    assert_eq!(rs, Err(TlsError::AccessDenied));
    assert_eq!(c.error(), Some(TlsError::PeerAlert(49)));
    // an ACL without client verification is refused at configuration time
    let creds = server_creds_with(&pki.ca.pem, None, &pki.server, false, default_backend());
    let e = TlsServerConfig::with_options(&creds, &{
        let mut o = ServerOptions::default();
        o.acl = Some(Acl::allow_only([dn]));
        o
    })
    .unwrap_err();
    assert!(e.to_string().contains("verify-peer"));
}

#[test]
fn pinning_refuses_a_changed_certificate() {
    let pki = Pki::new();
    let dir = std::env::temp_dir().join(format!("tls-glue-pins-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Arc::new(TrustedServers::open(&dir).unwrap());
    let cc = client_creds_with(&pki.ca.pem, None, None, default_backend());
    let ccfg = TlsClientConfig::with_options(&cc, &{
        let mut o = ClientOptions::default();
        o.validator = Some(store.clone());
        o
    })
    .unwrap();
    let scfg = server_cfg(&pki.ca.pem, None, &pki.server, false, None);
    assert_eq!(run(&scfg, &ccfg, "localhost").0, Ok(()), "first use pins");
    assert!(store.pinned("localhost").unwrap().is_some());
    assert_eq!(run(&scfg, &ccfg, "localhost").0, Ok(()), "same certificate");
    // a new, CA-valid certificate for the same host is refused
    let replaced = pki.ca.leaf("localhost", true);
    let scfg2 = server_cfg(&pki.ca.pem, None, &replaced, false, None);
    let (rc, rs, ..) = run(&scfg2, &ccfg, "localhost");
    assert_eq!(rc, Err(TlsError::CertificateRejected));
    assert_eq!(rs, Err(TlsError::PeerAlert(49)));
    match store.check("localhost", replaced_der(&replaced).as_slice()) {
        PinCheck::Mismatch { file, .. } => assert!(file.ends_with("localhost.sha256")),
        other => panic!("{other:?}"),
    }
    // pins are per host: 127.0.0.1 gets its own pin (the pin is no trust anchor)
    assert_eq!(run(&scfg2, &ccfg, "127.0.0.1").0, Ok(()));
    // a pin never overrides CA validation
    let rogue_ca = Ca::new("Rogue");
    let rogue = rogue_ca.leaf("localhost", true);
    store.forget("localhost").unwrap();
    let (rc, ..) = run(
        &server_cfg(&rogue_ca.pem, None, &rogue, false, None),
        &ccfg,
        "localhost",
    );
    assert_eq!(rc, Err(TlsError::UnknownCa));
    assert!(store.pinned("localhost").unwrap().is_none());
    // names cannot escape the directory
    assert!(store.pin_file("../../etc/passwd").starts_with(&dir));
    let _ = std::fs::remove_dir_all(&dir);
}

fn replaced_der(leaf: &Leaf) -> Vec<u8> {
    use pki_types::pem::PemObject;
    pki_types::CertificateDer::from_pem_slice(leaf.pem.as_bytes())
        .unwrap()
        .to_vec()
}

#[test]
fn peer_closed_during_handshake_and_truncation() {
    let pki = Pki::new();
    let scfg = server_cfg(&pki.ca.pem, None, &pki.server, false, None);
    let ccfg = client_cfg(&pki.ca.pem, None, None);
    let mut s = TlsLayer::server(&scfg).unwrap();
    assert_eq!(s.handle_eof(), Err(TlsError::ClosedDuringHandshake));
    let mut c = TlsLayer::client(&ccfg, "localhost").unwrap();
    let mut s = TlsLayer::server(&scfg).unwrap();
    let (rc, rs) = handshake(&mut c, &mut s);
    assert_eq!((rc, rs), (Ok(()), Ok(())));
    assert_eq!(s.handle_eof(), Err(TlsError::UnexpectedEof));
    // errors are sticky
    assert_eq!(s.handle_ciphertext(b"x"), Err(TlsError::UnexpectedEof));
}

#[test]
fn corrupted_record_is_a_decrypt_error() {
    let pki = Pki::new();
    let scfg = server_cfg(&pki.ca.pem, None, &pki.server, false, None);
    let ccfg = client_cfg(&pki.ca.pem, None, None);
    let mut c = TlsLayer::client(&ccfg, "localhost").unwrap();
    let mut s = TlsLayer::server(&scfg).unwrap();
    let (rc, rs) = handshake(&mut c, &mut s);
    assert_eq!((rc, rs), (Ok(()), Ok(())));
    let mut out = vec![0u8; 1024];
    let n = c.encrypt(b"secret data", &mut out).unwrap();
    out[n - 3] ^= 1;
    assert_eq!(s.handle_ciphertext(&out[..n]), Err(TlsError::Decrypt));
    // the alert for the peer is queued
    let mut alert = [0u8; 64];
    assert!(s.poll_transmit(&mut alert).unwrap().is_some());
}
