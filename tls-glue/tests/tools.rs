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
        .expect("certtool not found: install gnutls-bin (tests/setup.sh does)");
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
    let scfg = TlsServerConfig::with_options(&sc, &{
        let mut o = ServerOptions::default();
        o.acl = acl;
        o
    })
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
        let opts = {
            let mut o = GenerateOptions::default();
            o.hostnames = vec!["localhost".into(), "nbd.example.com".into()];
            o.client_cn = "laptop.example.com".into();
            o.key_algorithm = alg;
            o
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

/// A minimal blocking driver (the shape of the crate-level example) over a real socket:
/// runs until `done` says so, feeding plaintext to `on_plain`, which may answer.
#[cfg(feature = "generate")]
fn drive(
    sock: &mut std::net::TcpStream,
    tls: &mut TlsLayer,
    mut first: Option<&[u8]>,
    mut on_plain: impl FnMut(&[u8]) -> Option<Vec<u8>>,
    mut done: impl FnMut(&TlsLayer) -> bool,
) -> Result<(), String> {
    use std::io::{Read, Write};
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    let mut wire = vec![0u8; 64 * 1024];
    loop {
        while let Some(n) = tls.poll_transmit(&mut wire).map_err(|e| e.to_string())? {
            sock.write_all(&wire[..n]).map_err(|e| e.to_string())?;
        }
        if let Some(e) = tls.error() {
            return Err(e.to_string());
        }
        if !tls.is_handshaking()
            && let Some(data) = first.take()
        {
            let m = tls.encrypt(data, &mut wire).map_err(|e| e.to_string())?;
            sock.write_all(&wire[..m]).map_err(|e| e.to_string())?;
        }
        if !tls.is_handshaking() && !tls.plaintext().is_empty() {
            let n = tls.plaintext().len();
            let answer = on_plain(tls.plaintext());
            tls.consume_plaintext(n);
            if let Some(a) = answer {
                let m = tls.encrypt(&a, &mut wire).map_err(|e| e.to_string())?;
                sock.write_all(&wire[..m]).map_err(|e| e.to_string())?;
            }
        }
        if done(tls) {
            return Ok(());
        }
        if std::time::Instant::now() > deadline {
            return Err("timeout".into());
        }
        match sock.read(tls.ciphertext_buffer()) {
            Ok(0) => return tls.handle_eof().map_err(|e| e.to_string()),
            Ok(n) => tls.commit_ciphertext(n).map_err(|e| e.to_string())?,
            Err(e)
                if e.kind() == std::io::ErrorKind::WouldBlock
                    || e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// gnutls (the TLS library of qemu-nbd, nbdkit and libnbd) as a client of our server, with
/// a client certificate, over loopback.
#[cfg(feature = "generate")]
#[test]
fn gnutls_client_to_our_server() {
    use std::io::{Read, Write};
    let dir = tmpdir("gnutls-cli");
    let generated = generate_qemu_layout(&dir, &GenerateOptions::default()).unwrap();
    let creds = TlsCreds::load_dir(&dir, CredsOptions::system(Endpoint::Server)).unwrap();
    let cfg = TlsServerConfig::with_options(&creds, &{
        let mut o = ServerOptions::default();
        o.acl = Some(Acl::allow_only([generated.client_dn.clone()]));
        o
    })
    .unwrap();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port().to_string();
    let mut child = Command::new("gnutls-cli")
        .current_dir(&dir)
        .args([
            "--x509cafile",
            "ca-cert.pem",
            "--x509certfile",
            "client-cert.pem",
            "--x509keyfile",
            "client-key.pem",
            "--port",
            &port,
            "127.0.0.1",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("gnutls-cli not found: install gnutls-bin");
    listener.set_nonblocking(true).unwrap();
    let t0 = std::time::Instant::now();
    let mut sock = loop {
        match listener.accept() {
            Ok((s, _)) => break s,
            Err(_) if t0.elapsed() < std::time::Duration::from_secs(20) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("gnutls-cli did not connect: {e}");
            }
        }
    };
    sock.set_nonblocking(false).unwrap();
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"ping\n").unwrap();
    stdin.flush().unwrap();
    let mut tls = TlsLayer::server(&cfg).unwrap();
    let got = std::cell::RefCell::new(Vec::new());
    let r = drive(
        &mut sock,
        &mut tls,
        None,
        |p| {
            let mut g = got.borrow_mut();
            g.extend_from_slice(p);
            g.ends_with(b"ping\n").then(|| b"pong\n".to_vec())
        },
        |_| got.borrow().ends_with(b"ping\n"),
    );
    let got = got.into_inner();
    drop(stdin);
    let dn = tls.peer_subject_dn();
    let version = tls.protocol_version();
    let mut wire = vec![0u8; 1024];
    if let Ok(n) = tls.close_notify(&mut wire) {
        let _ = sock.write_all(&wire[..n]);
    }
    drop(sock);
    let t1 = std::time::Instant::now();
    while child.try_wait().unwrap().is_none() && t1.elapsed() < std::time::Duration::from_secs(10) {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let _ = child.kill();
    let mut out = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut out)
        .unwrap();
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        r.is_ok() && got.ends_with(b"ping\n"),
        "{r:?}; gnutls-cli said: {out}{err}"
    );
    assert_eq!(dn.as_deref(), Some(generated.client_dn.as_str()));
    assert_eq!(version, Some("TLSv1.3"));
    assert!(out.contains("pong"), "gnutls-cli output: {out}{err}");
}

/// Our client against `gnutls-serv --echo` over loopback.
#[cfg(feature = "generate")]
#[test]
fn our_client_to_gnutls_server() {
    let dir = tmpdir("gnutls-serv");
    generate_qemu_layout(&dir, &GenerateOptions::default()).unwrap();
    let creds = TlsCreds::load_dir(&dir, CredsOptions::system(Endpoint::Client)).unwrap();
    let cfg = TlsClientConfig::new(&creds).unwrap();
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let mut child = Command::new("gnutls-serv")
        .current_dir(&dir)
        .args([
            "--echo",
            "--x509cafile",
            "ca-cert.pem",
            "--x509certfile",
            "server-cert.pem",
            "--x509keyfile",
            "server-key.pem",
            "--port",
            &port.to_string(),
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("gnutls-serv not found: install gnutls-bin");
    let t0 = std::time::Instant::now();
    let mut sock = loop {
        match std::net::TcpStream::connect(("127.0.0.1", port)) {
            Ok(s) => break s,
            Err(_) if t0.elapsed() < std::time::Duration::from_secs(20) => {
                std::thread::sleep(std::time::Duration::from_millis(50))
            }
            Err(e) => {
                let _ = child.kill();
                panic!("gnutls-serv did not start: {e}");
            }
        }
    };
    sock.set_read_timeout(Some(std::time::Duration::from_millis(200)))
        .unwrap();
    let mut tls = TlsLayer::client(&cfg, "127.0.0.1").unwrap();
    let msg: &[u8] = b"hello gnutls\n";
    let echoed = std::cell::RefCell::new(Vec::new());
    let r = drive(
        &mut sock,
        &mut tls,
        Some(msg),
        |p| {
            echoed.borrow_mut().extend_from_slice(p);
            None
        },
        |_| echoed.borrow().ends_with(msg),
    );
    let echoed = echoed.into_inner();
    let version = tls.protocol_version();
    let dn = tls.peer_subject_dn();
    let _ = child.kill();
    let _ = child.wait();
    let _ = std::fs::remove_dir_all(&dir);
    r.unwrap();
    assert_eq!(echoed, msg);
    assert_eq!(version, Some("TLSv1.3"));
    assert_eq!(dn.as_deref(), Some("O=kvmio,CN=localhost"));
}
