//! In-memory client ↔ server handshakes and data, per backend and TLS version; split
//! invariance; abort at every handshake byte.
#![cfg(all(
    feature = "std",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto")
))]

mod common;

use common::*;
use proptest::prelude::*;
use tls_glue::*;

fn pair(
    pki: &Pki,
    sb: CryptoBackend,
    cb: CryptoBackend,
    versions: TlsVersions,
) -> (TlsLayer, TlsLayer) {
    let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, sb);
    let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), cb);
    let scfg = TlsServerConfig::with_options(&sc, &{
        let mut o = ServerOptions::default();
        o.versions = versions;
        o
    })
    .unwrap();
    let ccfg = TlsClientConfig::with_options(&cc, &{
        let mut o = ClientOptions::default();
        o.versions = versions;
        o
    })
    .unwrap();
    (
        TlsLayer::client(&ccfg, "localhost").unwrap(),
        TlsLayer::server(&scfg).unwrap(),
    )
}

fn exchange(c: &mut TlsLayer, s: &mut TlsLayer) {
    let (rc, rs) = handshake(c, s);
    rc.unwrap();
    rs.unwrap();
    assert!(!c.is_handshaking() && !s.is_handshaking());
    assert_eq!(
        s.peer_subject_dn().as_deref(),
        Some("C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com")
    );
    assert_eq!(
        c.peer_subject_dn().as_deref(),
        Some("C=GB,ST=London,L=City Of London,O=Test Org,CN=localhost")
    );
    assert_eq!(send(c, s, b"hello server"), b"hello server");
    assert_eq!(send(s, c, b"hello client"), b"hello client");
    // a large write becomes several full records and arrives intact
    let big: Vec<u8> = (0..300_000u32).map(|i| (i * 7 + i / 251) as u8).collect();
    assert_eq!(send(s, c, &big), big);
    assert_eq!(send(c, s, &big), big);
    // orderly close
    let mut out = vec![0u8; 1024];
    let n = c.close_notify(&mut out).unwrap();
    feed_all(s, &out[..n]).unwrap();
    assert!(s.peer_closed());
    assert_eq!(s.handle_eof(), Ok(()));
}

#[test]
fn tls13_every_backend() {
    let pki = Pki::new();
    for b in backends() {
        let (mut c, mut s) = pair(&pki, b.clone(), b.clone(), TlsVersions::Tls13);
        exchange(&mut c, &mut s);
        assert_eq!(c.protocol_version(), Some("TLSv1.3"), "{}", b.name());
        assert!(c.cipher_suite().unwrap().starts_with("TLS13_"));
        if b.name() == "aws-lc-rs" {
            assert_eq!(s.key_exchange_group(), Some("X25519MLKEM768"));
        }
    }
}

#[cfg(all(feature = "tls12", feature = "test-support"))]
#[test]
fn tls12_every_backend() {
    let pki = Pki::new();
    for b in backends() {
        let (mut c, mut s) = pair(&pki, b.clone(), b.clone(), TlsVersions::Tls12AndTls13);
        // offering both negotiates 1.3; force 1.2 on one side
        let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, b.clone());
        let scfg = TlsServerConfig::with_options(&sc, &{
            let mut o = ServerOptions::default();
            o.versions = TlsVersions::Tls12AndTls13;
            o
        })
        .unwrap();
        exchange(&mut c, &mut s);
        assert_eq!(c.protocol_version(), Some("TLSv1.3"));
        let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), b.clone());
        let only12 = tls12_only_client(&cc);
        let mut c = TlsLayer::client(&only12, "localhost").unwrap();
        let mut s = TlsLayer::server(&scfg).unwrap();
        exchange(&mut c, &mut s);
        assert_eq!(c.protocol_version(), Some("TLSv1.2"), "{}", b.name());
        assert!(c.cipher_suite().unwrap().starts_with("TLS_ECDHE_"));
    }
}

/// A TLS-1.2-only client (an "old peer"), via the test-support hook.
#[cfg(all(feature = "tls12", feature = "test-support"))]
fn tls12_only_client(creds: &TlsCreds) -> TlsClientConfig {
    tls_glue::test_support::tls12_only_client(creds)
}

#[test]
fn tls13_only_server_refuses_tls12_client() {
    #[cfg(all(feature = "tls12", feature = "test-support"))]
    {
        let pki = Pki::new();
        let b = default_backend();
        let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, b.clone());
        let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), b);
        let mut s = TlsLayer::server(&TlsServerConfig::new(&sc).unwrap()).unwrap();
        let mut c = TlsLayer::client(&tls12_only_client(&cc), "localhost").unwrap();
        let (rc, rs) = handshake(&mut c, &mut s);
        assert_eq!(rs, Err(TlsError::NoCommonParameters));
        assert!(matches!(rc, Err(TlsError::PeerAlert(_))));
    }
}

#[test]
fn cross_backend_interop() {
    let pki = Pki::new();
    let all = backends();
    for sb in &all {
        for cb in &all {
            let (mut c, mut s) = pair(&pki, sb.clone(), cb.clone(), TlsVersions::Tls13);
            let (rc, rs) = handshake(&mut c, &mut s);
            assert!(
                rc.is_ok() && rs.is_ok(),
                "{} server, {} client: {rc:?} {rs:?}",
                sb.name(),
                cb.name()
            );
            assert_eq!(send(&mut c, &mut s, b"x"), b"x");
        }
    }
}

#[test]
fn key_types_every_backend() {
    use rcgen::KeyPair;
    let algs: Vec<&'static rcgen::SignatureAlgorithm> = vec![
        &rcgen::PKCS_ECDSA_P256_SHA256,
        &rcgen::PKCS_ECDSA_P384_SHA384,
        &rcgen::PKCS_ED25519,
        &rcgen::PKCS_RSA_SHA256,
    ];
    for alg in algs {
        let key = || {
            if alg == &rcgen::PKCS_RSA_SHA256 {
                KeyPair::generate_rsa_for(alg, rcgen::RsaKeySize::_2048).unwrap()
            } else {
                KeyPair::generate_for(alg).unwrap()
            }
        };
        let ca = Ca::with("Test CA", key(), |_| {});
        let pki = Pki {
            server: ca.leaf_with("localhost", true, key(), |_| {}),
            client: ca.leaf_with("client.example.com", false, key(), |_| {}),
            ca,
        };
        for b in backends() {
            let (mut c, mut s) = pair(&pki, b.clone(), b.clone(), TlsVersions::Tls13);
            let (rc, rs) = handshake(&mut c, &mut s);
            assert!(
                rc.is_ok() && rs.is_ok(),
                "{alg:?} on {}: {rc:?} {rs:?}",
                b.name()
            );
            assert_eq!(send(&mut s, &mut c, b"ok"), b"ok");
        }
    }
}

#[test]
fn backpressure_keeps_plaintext_contiguous() {
    let pki = Pki::new();
    let b = default_backend();
    let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, b.clone());
    let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), b);
    let mut s =
        TlsLayer::server_with(&TlsServerConfig::new(&sc).unwrap(), LayerOptions::small()).unwrap();
    let mut c = TlsLayer::client(&TlsClientConfig::new(&cc).unwrap(), "localhost").unwrap();
    let (rc, rs) = handshake(&mut c, &mut s);
    rc.unwrap();
    rs.unwrap();
    let data: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    let mut wire = vec![0u8; c.encrypted_len(data.len())];
    let n = c.encrypt(&data, &mut wire).unwrap();
    assert!(n <= c.encrypted_len(data.len()));
    // the "core" consumes 1000 bytes at a time and leaves the rest unconsumed
    let mut got = Vec::new();
    let mut rest = &wire[..n];
    let mut rounds = 0;
    while got.len() < data.len() {
        rounds += 1;
        assert!(rounds < 10_000);
        let k = s.handle_ciphertext(rest).unwrap();
        rest = &rest[k..];
        let p = s.plaintext();
        assert!(p.len() <= 2 * MAX_FRAGMENT_LEN);
        let take = p.len().min(1000);
        got.extend_from_slice(&p[..take]);
        s.consume_plaintext(take);
    }
    assert_eq!(got, data);
}

#[test]
fn encrypt_reports_insufficient_size_without_side_effects() {
    let pki = Pki::new();
    let (mut c, mut s) = pair(
        &pki,
        default_backend(),
        default_backend(),
        TlsVersions::Tls13,
    );
    let (rc, rs) = handshake(&mut c, &mut s);
    rc.unwrap();
    rs.unwrap();
    let mut small = [0u8; 10];
    match c.encrypt(b"some data here", &mut small) {
        Err(EncryptError::InsufficientSize(InsufficientSize { required })) => {
            assert!(required > 10)
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(send(&mut c, &mut s, b"after"), b"after");
    // encrypt before the handshake is misuse, not fatal
    let (mut c2, _s2) = pair(
        &pki,
        default_backend(),
        default_backend(),
        TlsVersions::Tls13,
    );
    let mut out = [0u8; 4096];
    assert_eq!(
        c2.encrypt(b"x", &mut out),
        Err(EncryptError::HandshakeNotComplete)
    );
    assert!(c2.error().is_none());
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, .. ProptestConfig::default() })]
    /// The same ciphertext stream cut anywhere gives the same plaintext. A recorded TLS stream
    /// cannot be replayed to a new server (fresh randomness), so both peers run live and only
    /// the server's input is cut; the client's output stays identical across cuts because it
    /// does not depend on how the server receives.
    #[test]
    fn split_invariance(cuts in proptest::collection::vec(1usize..3000, 1..40), size in 0usize..70_000) {
        let pki = shared_pki();
        let payload: Vec<u8> = (0..size).map(|i| (i * 31 % 256) as u8).collect();
        let b = default_backend();
        let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, b.clone());
        let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), b);
        let mut s = TlsLayer::server(&TlsServerConfig::new(&sc).unwrap()).unwrap();
        let mut c = TlsLayer::client(&TlsClientConfig::new(&cc).unwrap(), "localhost").unwrap();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = Vec::new();
        let mut cut_i = 0;
        let mut feed_cut = |s: &mut TlsLayer, data: &[u8], got: &mut Vec<u8>| {
            let mut rest = data;
            while !rest.is_empty() {
                let take = cuts[cut_i % cuts.len()].min(rest.len());
                cut_i += 1;
                let mut piece = &rest[..take];
                while !piece.is_empty() {
                    let k = s.handle_ciphertext(piece).unwrap();
                    piece = &piece[k..];
                    got.extend_from_slice(s.plaintext());
                    let p = s.plaintext().len();
                    s.consume_plaintext(p);
                }
                rest = &rest[take..];
            }
        };
        for _ in 0..20 {
            while let Ok(Some(n)) = c.poll_transmit(&mut buf) {
                let chunk = buf[..n].to_vec();
                feed_cut(&mut s, &chunk, &mut got);
            }
            while let Ok(Some(n)) = s.poll_transmit(&mut buf) {
                feed_all(&mut c, &buf[..n]).unwrap();
            }
        }
        prop_assert!(!s.is_handshaking());
        let mut out = vec![0u8; c.encrypted_len(payload.len())];
        let n = c.encrypt(&payload, &mut out).unwrap();
        let m = c.close_notify(&mut out[n..]).unwrap();
        let wire = out[..n + m].to_vec();
        feed_cut(&mut s, &wire, &mut got);
        prop_assert_eq!(&got, &payload);
        prop_assert!(s.peer_closed());
    }
}

fn shared_pki() -> &'static Pki {
    static P: std::sync::OnceLock<Pki> = std::sync::OnceLock::new();
    P.get_or_init(Pki::new)
}

/// CVE-2023-3354 / CVE-2016-10207: a peer that disappears at any byte of the handshake must
/// give an error, never a panic, on both sides.
#[test]
fn abort_at_every_handshake_byte() {
    let pki = shared_pki();
    let b = default_backend();
    let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, b.clone());
    let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), b);
    let scfg = TlsServerConfig::new(&sc).unwrap();
    let ccfg = TlsClientConfig::new(&cc).unwrap();

    // record one full handshake: client flight 1, server flight, client flight 2
    let mut c = TlsLayer::client(&ccfg, "localhost").unwrap();
    let mut s = TlsLayer::server(&scfg).unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let n = c.poll_transmit(&mut buf).unwrap().unwrap();
    let hello = buf[..n].to_vec();
    feed_all(&mut s, &hello).unwrap();
    let mut server_flight = Vec::new();
    while let Ok(Some(n)) = s.poll_transmit(&mut buf) {
        server_flight.extend_from_slice(&buf[..n]);
    }
    assert!(server_flight.len() > 500);

    // server side: the ClientHello cut at every byte, then EOF
    for cut in 0..hello.len() {
        let mut s = TlsLayer::server(&scfg).unwrap();
        let r = s.handle_ciphertext(&hello[..cut]);
        assert!(r.is_ok(), "a prefix is not an error");
        assert_eq!(
            s.handle_eof(),
            Err(TlsError::ClosedDuringHandshake),
            "cut {cut}"
        );
    }
    // client side: the server's flight cut at every byte, then EOF
    for cut in 0..server_flight.len() {
        let mut c = TlsLayer::client(&ccfg, "localhost").unwrap();
        while let Ok(Some(_)) = c.poll_transmit(&mut buf) {}
        let r = c.handle_ciphertext(&server_flight[..cut]);
        let eof = c.handle_eof();
        assert!(r.is_err() || eof.is_err(), "cut {cut}");
        if r.is_ok() {
            assert_eq!(eof, Err(TlsError::ClosedDuringHandshake), "cut {cut}");
        }
    }
    // corrupt every byte of the server flight once: error, never panic
    for i in (0..server_flight.len()).step_by(7) {
        let mut c = TlsLayer::client(&ccfg, "localhost").unwrap();
        while let Ok(Some(_)) = c.poll_transmit(&mut buf) {}
        let mut bad = server_flight.clone();
        bad[i] ^= 0x55;
        let r = c.handle_ciphertext(&bad).and_then(|_| c.handle_eof());
        assert!(r.is_err(), "byte {i}");
    }
}

#[cfg(feature = "test-support")]
#[test]
fn garbage_into_server_never_panics() {
    let pki = shared_pki();
    let sc = server_creds_with(&pki.ca.pem, None, &pki.server, false, default_backend());
    let scfg = TlsServerConfig::new(&sc).unwrap();
    let mut seed = 0x1234_5678u64;
    for len in [0usize, 1, 5, 6, 100, 5000, 20_000] {
        let data: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect();
        let mut d = vec![0x16, 0x03, 0x01];
        d.extend_from_slice(&data);
        tls_glue::test_support::feed_server(&scfg, &d);
        tls_glue::test_support::feed_server(&scfg, &data);
    }
}

/// A certificate chain larger than one record reaches a client with the smallest buffers
/// (the handshake message spans records and stays buffered until complete).
#[test]
fn big_certificate_with_small_buffers() {
    let ca = Ca::new("Test CA");
    let server = ca.leaf_with(
        "localhost",
        true,
        rcgen::KeyPair::generate().unwrap(),
        |p| {
            for i in 0..900 {
                p.subject_alt_names.push(rcgen::SanType::DnsName(
                    format!("host-{i:04}.a-rather-long-domain-name.example.com")
                        .try_into()
                        .unwrap(),
                ));
            }
        },
    );
    assert!(
        server.pem.len() * 3 / 4 > 2 * MAX_FRAGMENT_LEN,
        "DER spans three records"
    );
    let client = ca.leaf("client.example.com", false);
    let b = default_backend();
    let sc = server_creds_with(&ca.pem, None, &server, true, b.clone());
    let cc = client_creds_with(&ca.pem, None, Some(&client), b);
    let mut s =
        TlsLayer::server_with(&TlsServerConfig::new(&sc).unwrap(), LayerOptions::small()).unwrap();
    let mut c = TlsLayer::client_with(
        &TlsClientConfig::new(&cc).unwrap(),
        "host-0899.a-rather-long-domain-name.example.com",
        LayerOptions::small(),
    )
    .unwrap();
    // deliver in 1000-byte pieces through the zero-copy path
    let mut buf = vec![0u8; 256 * 1024];
    for _ in 0..50 {
        let mut moved = false;
        while let Some(n) = c.poll_transmit(&mut buf).unwrap() {
            moved = true;
            feed_all(&mut s, &buf[..n]).unwrap();
        }
        while let Some(n) = s.poll_transmit(&mut buf).unwrap() {
            moved = true;
            for piece in buf[..n].chunks(1000) {
                let mut rest = piece;
                while !rest.is_empty() {
                    assert!(c.wants_input());
                    let space = c.ciphertext_buffer();
                    let k = space.len().min(rest.len());
                    assert!(k > 0);
                    space[..k].copy_from_slice(&rest[..k]);
                    c.commit_ciphertext(k).unwrap();
                    rest = &rest[k..];
                }
            }
        }
        if !moved {
            break;
        }
    }
    assert!(!c.is_handshaking() && !s.is_handshaking());
    assert_eq!(send(&mut s, &mut c, b"big"), b"big");
}

/// Nothing follows the handshake from the server: no TLS 1.3 session tickets. gnutls servers
/// (QEMU, Xvnc, nbdkit) send none unless given a ticket key, and TigerVNC's viewer stalls when
/// tickets arrive together with the first application data (it waits on the socket while the
/// data sits in gnutls' buffer).
#[test]
fn tls13_server_sends_no_session_tickets() {
    let pki = Pki::new();
    for b in backends() {
        let (mut c, mut s) = pair(&pki, b.clone(), b.clone(), TlsVersions::Tls13);
        let mut buf = vec![0u8; 64 * 1024];
        for _ in 0..4 {
            while let Ok(Some(n)) = c.poll_transmit(&mut buf) {
                feed_all(&mut s, &buf[..n]).unwrap();
            }
            if !s.is_handshaking() {
                break;
            }
            while let Ok(Some(n)) = s.poll_transmit(&mut buf) {
                feed_all(&mut c, &buf[..n]).unwrap();
            }
        }
        assert!(!s.is_handshaking() && !c.is_handshaking(), "{}", b.name());
        assert!(
            matches!(s.poll_transmit(&mut buf), Ok(None)),
            "{}: the server sent records after the handshake (session tickets)",
            b.name()
        );
    }
}
