//! gvnccapture (gtk-vnc 1.3) against `kvmio vnc serve`: None, VncAuth, X509None and X509Vnc
//! with a client certificate and verify-peer on; the captured PNG must equal the served image
//! pixel for pixel. gvnccapture takes its certificates from `~/.pki` of the passwd home
//! directory: [`GvncPki`] installs them under a lock and restores what was there.

use std::time::Duration;

use kvmio_tests::vnc::*;
use kvmio_tests::{Runtime, pki, tempdir};

/// gvnccapture only takes display numbers (port 5900 + N), so the server listens on a free
/// port above 5900 (every ephemeral port is).
fn server(args: &[&str]) -> VncServer {
    let port = kvmio_tests::free_port();
    assert!(port > 5900);
    let mut all = args.to_vec();
    all.extend(["--name", "gvnc test"]);
    VncServer::start_on(Runtime::Threads, port, &all)
}

#[test]
fn gvnccapture_against_our_server() {
    let dir = tempdir();
    let pic = test_picture(333, 211, 3);
    let image = picture_file(dir.path(), &pic, "pic.png")
        .display()
        .to_string();
    let p = pki(&dir.path().join("pki"));
    let pkidir = p.dir.display().to_string();
    let pw = vncpasswd_file(dir.path(), "passwd", "secret")
        .display()
        .to_string();
    let _certs = GvncPki::install(&p.dir, true);

    // (--security, password typed, TLS expected in the log)
    let cases: [(&str, Option<&str>, bool); 4] = [
        ("None", None, false),
        ("VncAuth", Some("secret"), false),
        ("X509None", None, true),
        ("X509Vnc", Some("secret"), true),
    ];
    for (sec, password, tls) in cases {
        let mut args = vec!["--image", &image, "--security", sec, "--password-file", &pw];
        if tls {
            args.extend(["--tls-creds", &pkidir, "--tls-verify-peer", "yes"]);
        }
        let mut srv = server(&args);
        let out = dir.path().join(format!("gvnc-{sec}.png"));
        let o = gvnccapture(srv.port, &out, password);
        assert!(
            o.ok() && out.exists(),
            "gvnccapture {sec} failed ({}):\n{}\n{}\n--- server ---\n{}",
            o.status,
            o.text(),
            o.stderr,
            srv.log()
        );
        assert_same_image(&read_png(&out), &pic, &format!("gvnccapture {sec}"));
        let method = match sec {
            "None" => "authenticated (None)".to_string(),
            "VncAuth" => "authenticated (VncAuth)".to_string(),
            s => format!("authenticated (VeNCrypt {s})"),
        };
        let log = srv.proc.wait_log(&method, Duration::from_secs(10));
        if tls {
            // verify-peer on: gvnccapture presented the client certificate.
            assert!(
                log.contains("client O=kvmio,CN=client.example.com"),
                "{log}"
            );
        }
        srv.proc.assert_alive();
    }

    // A wrong password is refused (and reported by gvnccapture as a failure).
    let mut srv = server(&[
        "--image",
        &image,
        "--security",
        "VncAuth",
        "--password-file",
        &pw,
    ]);
    let out = dir.path().join("gvnc-wrong.png");
    let o = gvnccapture(srv.port, &out, Some("wrong"));
    assert!(
        !out.exists(),
        "captured with a wrong password: {}",
        o.text()
    );
    srv.proc.wait_log(
        "VNC password authentication failed",
        Duration::from_secs(10),
    );
    srv.proc.assert_alive();
}
