//! `kvmio vnc capture` against QEMU's built-in VNC server (QEMU 10, `-device VGA`, SeaBIOS
//! screen): None, VncAuth (password set over QMP), X509None and X509Vnc with verify-peer on
//! (our client presents its certificate). The capture must equal QEMU's own `screendump`
//! pixel for pixel (the guest is stopped first so the screen cannot change in between).
//! Also: anonymous TLS is refused with its reason, and a missing client certificate fails.
//! QEMU's WebSocket listener (`websocket=`) as the peer of `kvmio vnc capture ws://` and, with
//! its TLS credentials, `wss://` (VncAuth inside, our client certificate verified).

use std::path::Path;

use kvmio_tests::vnc::*;
use kvmio_tests::{pki, tempdir};

/// Captures until the capture equals QEMU's screendumps taken just before and after.
fn capture_matches_screendump(q: &Qemu, dir: &Path, args: &[&str], what: &str) -> String {
    let url = format!("vnc://127.0.0.1:{}", q.port);
    capture_url_matches_screendump(q, &url, dir, args, what)
}

/// The same from `url` (QEMU's WebSocket listener, say).
fn capture_url_matches_screendump(
    q: &Qemu,
    url: &str,
    dir: &Path,
    args: &[&str],
    what: &str,
) -> String {
    let mut last = None;
    for attempt in 0..5 {
        let before = q.screendump(dir, &format!("{what}-before-{attempt}"));
        let out = dir.join(format!("{what}-{attempt}.png"));
        let o = capture(url, &out, args).expect_ok();
        let after = q.screendump(dir, &format!("{what}-after-{attempt}"));
        let got = read_png(&out);
        if before == after {
            assert_same_image(&got, &before, &format!("QEMU {what}"));
            return o.text();
        }
        last = Some(got);
    }
    panic!("QEMU's screen kept changing while stopped ({what}); last capture {last:?}");
}

/// Test credentials in `dir`, their directory, a VNC password file (`secret`) and QEMU's
/// `tls-creds-x509` object for them with client certificates verified.
fn qemu_credentials(dir: &std::path::Path) -> (kvmio_tests::Pki, String, String, String) {
    let p = pki(&dir.join("pki"));
    let pkidir = p.dir.display().to_string();
    let pw = text_file(dir, "pw.txt", "secret").display().to_string();
    let creds = format!(
        "tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer=on",
        kvmio_tests::qemu_escape(&pkidir)
    );
    (p, pkidir, pw, creds)
}

/// (name, -vnc options, extra QEMU arguments, client arguments, expected security)
type QemuCase<'a> = (&'a str, &'a str, Vec<&'a str>, Vec<&'a str>, &'a str);

#[test]
fn our_client_against_qemu() {
    let dir = tempdir();
    let (p, pkidir, pw, creds) = qemu_credentials(dir.path());
    let cases: [QemuCase; 4] = [
        (
            "None",
            "",
            vec![],
            vec!["--security", "None"],
            "RFB 3.8, None",
        ),
        (
            "VncAuth",
            ",password=on",
            vec![],
            vec!["--security", "VncAuth", "--password-file", &pw],
            "RFB 3.8, VncAuth",
        ),
        (
            "X509None",
            ",tls-creds=tls0",
            vec!["-object", &creds],
            vec!["--security", "X509None", "--tls-creds", &pkidir],
            "VeNCrypt X509None",
        ),
        (
            "X509Vnc",
            ",tls-creds=tls0,password=on",
            vec!["-object", &creds],
            vec![
                "--security",
                "X509Vnc",
                "--tls-creds",
                &pkidir,
                "--password-file",
                &pw,
            ],
            "VeNCrypt X509Vnc",
        ),
    ];
    for (what, vnc, extra, args, expect) in cases {
        let mut q = Qemu::start(vnc, &extra);
        if vnc.contains("password=on") {
            q.qmp(&[
                r#"{"execute":"set_password","arguments":{"protocol":"vnc","password":"secret"}}"#,
            ]);
        }
        let info = q.qmp(&[r#"{"execute":"query-vnc"}"#]);
        eprintln!("{what}: query-vnc {}", info[0]);
        q.boot_and_stop(dir.path());
        let text = capture_matches_screendump(&q, dir.path(), &args, what);
        assert!(text.contains(expect), "{what}: {text}");
        assert!(text.contains("720x400"), "{what}: {text}");
        if what.starts_with("X509") {
            // verify-peer=on: the handshake only completes with our client certificate; one
            // without a certificate is refused.
            let ca_only = dir.path().join("ca-only");
            kvmio_tests::ca_only_dir(&p.dir, &ca_only);
            let mut a = args.clone();
            let i = a.iter().position(|x| *x == pkidir.as_str()).unwrap();
            let ca_only = ca_only.display().to_string();
            a[i] = &ca_only;
            capture(
                &format!("vnc://127.0.0.1:{}", q.port),
                &dir.path().join("nocert.png"),
                &a,
            )
            .expect_fail();
        }
        // A wrong password is refused with QEMU's reason.
        if vnc.contains("password=on") {
            let bad = text_file(dir.path(), "bad.txt", "wrong")
                .display()
                .to_string();
            let mut a = args.clone();
            let i = a.iter().position(|x| *x == pw.as_str()).unwrap();
            a[i] = &bad;
            capture(
                &format!("vnc://127.0.0.1:{}", q.port),
                &dir.path().join("bad.png"),
                &a,
            )
            .expect_fail()
            .expect_stderr(&["Authentication failed"]);
        }
        q.proc.assert_alive();
    }
}

#[test]
fn anonymous_tls_is_refused_with_the_reason() {
    let dir = tempdir();
    let p = pki(&dir.path().join("pki"));
    let q = Qemu::start(
        ",tls-creds=anon0",
        &["-object", "tls-creds-anon,id=anon0,endpoint=server"],
    );
    let out = dir.path().join("anon.png");
    // The client accepts VeNCrypt (X509 types, with credentials) and finds only TLSNone.
    let pkidir = p.dir.display().to_string();
    capture(
        &format!("vnc://127.0.0.1:{}", q.port),
        &out,
        &["--tls-creds", &pkidir],
    )
    .expect_fail()
    .expect_stderr(&["TLSNone", "anonymous TLS is not supported"]);
    assert!(!out.exists());
}

#[test]
fn our_client_through_qemus_websocket() {
    let dir = tempdir();
    let (_p, pkidir, pw, creds) = qemu_credentials(dir.path());
    // ws, None
    let ws = kvmio_tests::free_port();
    let q = Qemu::start(&format!(",websocket=127.0.0.1:{ws}"), &[]);
    q.boot_and_stop(dir.path());
    let url = format!("ws://127.0.0.1:{ws}/");
    let text = capture_url_matches_screendump(&q, &url, dir.path(), &["--security", "None"], "ws");
    assert!(text.contains("RFB 3.8, None"), "{text}");
    drop(q);
    // wss: QEMU's X509 credentials on the WebSocket, VncAuth inside, verify-peer on
    let ws = kvmio_tests::free_port();
    let q = Qemu::start(
        &format!(",tls-creds=tls0,password=on,websocket=127.0.0.1:{ws}"),
        &["-object", &creds],
    );
    q.qmp(&[r#"{"execute":"set_password","arguments":{"protocol":"vnc","password":"secret"}}"#]);
    q.boot_and_stop(dir.path());
    let url = format!("wss://127.0.0.1:{ws}/");
    let args = [
        "--security",
        "X509Vnc",
        "--tls-creds",
        &pkidir,
        "--password-file",
        &pw,
    ];
    let text = capture_url_matches_screendump(&q, &url, dir.path(), &args, "wss");
    assert!(text.contains("RFB 3.8, VncAuth"), "{text}");
    assert!(text.contains("TLS"), "{text}");
}
