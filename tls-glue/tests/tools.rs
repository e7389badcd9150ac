//! Certificates made by certtool (QEMU's documented recipe) load and handshake with us, and
//! `generate_qemu_layout` makes certificates that load here and that gnutls accepts.
#![cfg(all(
    feature = "std",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto")
))]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use common::*;
use tls_glue::*;

const CLIENT_DN: &str = "C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com";

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("tls-glue-tools-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn certtool(dir: &Path, args: &[&str]) {
    let out = Command::new("certtool")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("certtool not found: install gnutls-bin (reference/peers.md §0.1)");
    assert!(
        out.status.success(),
        "certtool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// peers.md §0.3 `gen-pki.sh`, with a choice of key type.
fn certtool_pki(dir: &Path, key_type: &[&str]) {
    std::fs::write(
        dir.join("ca.info"),
        "cn = Test CA\nca\ncert_signing_key\nexpiration_days = 3650\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("server.info"),
        "organization = Test Org\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\nip_address = ::1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 3650\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("client.info"),
        "country = GB\nstate = London\nlocality = City Of London\norganization = Test Org\ncn = client.example.com\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 3650\n",
    )
    .unwrap();
    for who in ["ca", "server", "client"] {
        let key = format!("{who}-key.pem");
        let mut args = vec!["--no-text", "--generate-privkey"];
        args.extend_from_slice(key_type);
        args.extend_from_slice(&["--outfile", &key]);
        certtool(dir, &args);
    }
    certtool(
        dir,
        &[
            "--no-text",
            "--generate-self-signed",
            "--load-privkey",
            "ca-key.pem",
            "--template",
            "ca.info",
            "--outfile",
            "ca-cert.pem",
        ],
    );
    for who in ["server", "client"] {
        certtool(
            dir,
            &[
                "--no-text",
                "--generate-certificate",
                "--load-ca-certificate",
                "ca-cert.pem",
                "--load-ca-privkey",
                "ca-key.pem",
                "--load-privkey",
                &format!("{who}-key.pem"),
                "--template",
                &format!("{who}.info"),
                "--outfile",
                &format!("{who}-cert.pem"),
            ],
        );
    }
}

fn handshake_dir(dir: &Path, backend: &CryptoBackend, acl: Option<Acl>) -> (TlsLayer, TlsLayer) {
    let sopts = CredsOptions::new(Endpoint::Server, backend.clone(), Arc::new(SystemClock));
    let copts = CredsOptions::new(Endpoint::Client, backend.clone(), Arc::new(SystemClock));
    let sc = TlsCreds::load_dir(dir, sopts).unwrap_or_else(|r| panic!("{}: {r}", backend.name()));
    let cc = TlsCreds::load_dir(dir, copts).unwrap_or_else(|r| panic!("{}: {r}", backend.name()));
    assert!(!sc.report().has_errors());
    let scfg = TlsServerConfig::with_options(
        &sc,
        &ServerOptions {
            acl,
            ..Default::default()
        },
    )
    .unwrap();
    let mut s = TlsLayer::server(&scfg).unwrap();
    let mut c = TlsLayer::client(&TlsClientConfig::new(&cc).unwrap(), "localhost").unwrap();
    let (rc, rs) = handshake(&mut c, &mut s);
    assert_eq!((rc, rs), (Ok(()), Ok(())), "{}", backend.name());
    assert_eq!(send(&mut c, &mut s, b"NBD_OPT_GO"), b"NBD_OPT_GO");
    (c, s)
}

#[test]
fn certtool_made_certificates() {
    for (name, key_type) in [
        ("rsa", &["--key-type=rsa", "--bits=2048"][..]),
        ("ecdsa", &["--key-type=ecdsa", "--curve=secp256r1"][..]),
    ] {
        let dir = tmpdir(&format!("certtool-{name}"));
        certtool_pki(&dir, key_type);
        // the keys are PKCS#1 (RSA) or SEC1 (EC) PEM as certtool writes them
        let key = std::fs::read_to_string(dir.join("server-key.pem")).unwrap();
        assert!(
            key.contains("BEGIN RSA PRIVATE KEY")
                || key.contains("BEGIN EC PRIVATE KEY")
                || key.contains("BEGIN PRIVATE KEY"),
            "{key}"
        );
        for b in backends() {
            let (_c, s) = handshake_dir(&dir, &b, Some(Acl::allow_only([CLIENT_DN])));
            // the DN as gnutls/QEMU print it (peers.md §0.3)
            assert_eq!(s.peer_subject_dn().as_deref(), Some(CLIENT_DN));
        }
        let report = check_dir(&dir, Endpoint::Server);
        assert!(!report.has_errors(), "{report}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[cfg(feature = "generate")]
#[test]
fn generated_layout_loads_and_gnutls_accepts_it() {
    for alg in [
        KeyAlgorithm::EcdsaP256,
        KeyAlgorithm::Ed25519,
        KeyAlgorithm::Rsa2048,
    ] {
        let dir = tmpdir(&format!("gen-{alg:?}"));
        let opts = GenerateOptions {
            hostnames: vec!["localhost".into(), "nbd.example.com".into()],
            client_cn: "laptop.example.com".into(),
            key_algorithm: alg,
            ..Default::default()
        };
        let out = generate_qemu_layout(&dir, &opts).unwrap();
        assert_eq!(out.files.len(), 7);
        assert_eq!(out.client_dn, "O=kvmio,CN=laptop.example.com");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            for k in ["ca-key.pem", "server-key.pem", "client-key.pem"] {
                let mode = std::fs::metadata(dir.join(k)).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{k}");
            }
        }
        // a second run refuses to overwrite
        let e = generate_qemu_layout(&dir, &opts).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AlreadyExists);
        for ep in [Endpoint::Server, Endpoint::Client] {
            let r = check_dir(&dir, ep);
            assert!(!r.has_errors(), "{alg:?} {ep:?}: {r}");
            assert!(
                r.diagnostics.iter().all(|d| d.severity == Severity::Note),
                "{alg:?}: {r}"
            );
        }
        for b in backends() {
            let (c, s) = handshake_dir(&dir, &b, Some(Acl::allow_only([out.client_dn.clone()])));
            assert_eq!(
                s.peer_subject_dn().as_deref(),
                Some("O=kvmio,CN=laptop.example.com")
            );
            let fp = format_fingerprint(&fingerprint_sha256(
                c.peer_certificates().unwrap().next().unwrap(),
            ));
            assert_eq!(fp, out.server_fingerprint);
        }
        // gnutls (what qemu-nbd, nbdkit and libnbd use) verifies the chain too
        for leaf in ["server-cert.pem", "client-cert.pem"] {
            let o = Command::new("certtool")
                .current_dir(&dir)
                .args([
                    "--verify",
                    "--load-ca-certificate",
                    "ca-cert.pem",
                    "--infile",
                    leaf,
                ])
                .output()
                .expect("certtool not found: install gnutls-bin");
            let text = String::from_utf8_lossy(&o.stdout);
            assert!(
                o.status.success() && text.contains("Chain verification output: Verified"),
                "{alg:?} {leaf}: {text}"
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
