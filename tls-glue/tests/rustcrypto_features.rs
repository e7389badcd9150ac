//! The RustCrypto provider offers what its cargo features enable, no more: `rustcrypto-core`
//! (the firmware's configuration) still completes a P-256 handshake with client certificates,
//! and refuses keys of algorithms left out with a message naming the feature.
//!
//! Run: `cargo test -p tls-glue --no-default-features --features std,rustcrypto-core --test
//! rustcrypto_features` (embedded-demo/ci.sh does), and with `--features std,rustcrypto`.
#![cfg(all(feature = "std", feature = "rustcrypto-core"))]

mod common;

use std::sync::Arc;

use common::*;
use tls_glue::*;

fn rustcrypto() -> CryptoBackend {
    CryptoBackend::rustcrypto(Arc::new(OsRandom))
}

#[test]
fn p256_handshake_with_client_certificate() {
    let pki = Pki::new();
    let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, rustcrypto());
    let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), rustcrypto());
    let mut s = TlsLayer::server(&TlsServerConfig::new(&sc).unwrap()).unwrap();
    let mut c = TlsLayer::client(&TlsClientConfig::new(&cc).unwrap(), "localhost").unwrap();
    let (rc, rs) = handshake(&mut c, &mut s);
    rc.unwrap();
    rs.unwrap();
    assert_eq!(
        s.peer_subject_dn().as_deref(),
        Some("C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com")
    );
    let suite = s.cipher_suite().unwrap();
    assert!(suite.starts_with("TLS13_"), "{suite}");
    if cfg!(not(feature = "rustcrypto-sha384")) {
        assert!(
            suite.ends_with("SHA256"),
            "{suite} without rustcrypto-sha384"
        );
    }
    let big: Vec<u8> = (0..100_000u32).map(|i| (i * 13) as u8).collect();
    assert_eq!(send(&mut c, &mut s, &big), big);
    assert_eq!(send(&mut s, &mut c, b"bye"), b"bye");
}

/// Loads a server key of `alg` through the provider: Ok, or the report's text.
fn load_server_key(alg: &'static rcgen::SignatureAlgorithm) -> Result<(), String> {
    let ca = Ca::new("Test CA");
    let leaf = ca.leaf_with(
        "localhost",
        true,
        rcgen::KeyPair::generate_for(alg).unwrap(),
        |_| {},
    );
    let pem = CredsPem {
        ca_cert: Some(ca.pem.as_bytes()),
        ca_crl: None,
        cert: Some(leaf.pem.as_bytes()),
        key: Some(leaf.key_pem.as_bytes()),
    };
    let opts = CredsOptions::new(Endpoint::Server, rustcrypto(), Arc::new(SystemClock));
    TlsCreds::from_pem(&pem, opts)
        .and_then(|c| {
            TlsServerConfig::new(&c).map(|_| ()).map_err(|e| {
                let mut r = Report::default();
                r.diagnostics.push(Diagnostic {
                    severity: Severity::Error,
                    problem: Problem::Unsupported,
                    file: "server-key.pem".into(),
                    message: e.0,
                });
                r
            })
        })
        .map_err(|r| r.to_string())
}

fn expect(alg: &'static rcgen::SignatureAlgorithm, enabled: bool, feature: &str) {
    match load_server_key(alg) {
        Ok(()) => assert!(enabled, "{alg:?} loaded without {feature}"),
        Err(e) => {
            assert!(!enabled, "{alg:?} refused with {feature}: {e}");
            assert!(e.contains(feature) || e.contains("not supported"), "{e}");
        }
    }
}

#[test]
fn key_algorithms_follow_the_features() {
    expect(&rcgen::PKCS_ECDSA_P256_SHA256, true, "rustcrypto-core");
    expect(
        &rcgen::PKCS_ECDSA_P384_SHA384,
        cfg!(feature = "rustcrypto-p384"),
        "rustcrypto-p384",
    );
    expect(
        &rcgen::PKCS_ED25519,
        cfg!(feature = "rustcrypto-ed25519"),
        "rustcrypto-ed25519",
    );
    expect(
        &rcgen::PKCS_RSA_SHA256,
        cfg!(feature = "rustcrypto-rsa"),
        "rustcrypto-rsa",
    );
}
