//! TigerVNC 1.12 both ways:
//! * `vncviewer` under Xvfb against `kvmio vnc serve` (X509Vnc, X509Plain, VncAuth, and the
//!   animated test pattern): the served image must appear pixel for pixel in a screenshot of
//!   the viewer's window, and the viewer must log its successful authentication;
//! * `kvmio vnc capture` against `Xvnc` (X509Vnc, X509Plain through PAM, VncAuth, and VncAuth
//!   inside VeNCrypt): the capture must equal a screenshot of the Xvnc display.

use std::process::Command;
use std::time::{Duration, Instant};

use kvmio_tests::vnc::*;
use kvmio_tests::{Proc, Runtime, pki, tempdir};

/// Info level, plus the connection and TLS steps at debug level (`*:stderr:100` would also
/// switch on the viewer's statistics overlay, which covers part of the picture).
const VIEWER_LOG: &str = "*:stderr:30,CConnection:stderr:100,TLS:stderr:100";

/// Starts the viewer and waits until the screenshot shows `expect` exactly.
fn viewer_shows(
    x: &XServer,
    dir: &std::path::Path,
    port: u16,
    args: &[&str],
    env: &[(&str, &str)],
    expect: &Rgb,
    what: &str,
) -> Proc {
    let mut c = Command::new(vnc_tool("vncviewer"));
    c.env("DISPLAY", x.env())
        .env("HOME", dir)
        .args(args)
        .args(["-Log", VIEWER_LOG, "-FullColor", "-AutoSelect=0"])
        .args(["-PreferredEncoding", "ZRLE", "-geometry", "+0+0"])
        .arg(format!("127.0.0.1::{port}"));
    for (k, v) in env {
        c.env(k, v);
    }
    let mut viewer = Proc::spawn(&format!("vncviewer ({what})"), c);
    let end = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        viewer.assert_alive();
        let shot = x.screenshot(dir, &format!("shot-{n}.png"));
        n += 1;
        if let Some((sx, sy)) = shot.find(expect) {
            eprintln!("{what}: found the served image at ({sx},{sy}) of the viewer screenshot");
            return viewer;
        }
        assert!(
            Instant::now() < end,
            "{what}: the served image never appeared in the viewer (last screenshot {})",
            dir.join(format!("shot-{}.png", n - 1)).display()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// (name, server --security, viewer arguments, viewer environment, server log line)
type ViewerCase<'a> = (
    &'a str,
    &'a str,
    Vec<&'a str>,
    Vec<(&'a str, &'a str)>,
    &'a str,
);

#[test]
fn vncviewer_against_our_server() {
    let dir = tempdir();
    let pic = test_picture(320, 200, 5);
    let image = picture_file(dir.path(), &pic, "pic.png")
        .display()
        .to_string();
    let p = pki(&dir.path().join("pki"));
    let pkidir = p.dir.display().to_string();
    let ca = p.dir.join("ca-cert.pem").display().to_string();
    let pw = vncpasswd_file(dir.path(), "passwd", "secret")
        .display()
        .to_string();
    let users = text_file(dir.path(), "users", "alice:wonderland");
    let users = users.display().to_string();
    let x = XServer::xvfb(800, 600);

    // (name, server --security, viewer args, viewer environment, server log line)
    let cases: [ViewerCase; 3] = [
        (
            "X509Vnc",
            "X509Vnc",
            vec![
                "-SecurityTypes",
                "X509Vnc",
                "-X509CA",
                &ca,
                "-PasswordFile",
                &pw,
            ],
            vec![],
            "authenticated (VeNCrypt X509Vnc)",
        ),
        (
            "X509Plain",
            "X509Plain",
            vec!["-SecurityTypes", "X509Plain", "-X509CA", &ca],
            vec![("VNC_USERNAME", "alice"), ("VNC_PASSWORD", "wonderland")],
            "authenticated (VeNCrypt X509Plain)",
        ),
        (
            "VncAuth",
            "VncAuth",
            vec!["-SecurityTypes", "VncAuth", "-PasswordFile", &pw],
            vec![],
            "authenticated (VncAuth)",
        ),
    ];
    for (what, sec, args, env, line) in cases {
        for rt in [Runtime::Threads, Runtime::Tokio] {
            let mut srv_args = vec![
                "--image",
                &image,
                "--security",
                sec,
                "--password-file",
                &pw,
                "--plain-users",
                &users,
            ];
            if sec.starts_with("X509") {
                // the viewer has no client certificates
                srv_args.extend(["--tls-creds", &pkidir, "--tls-verify-peer", "no"]);
            }
            let mut srv = VncServer::start(rt, &srv_args);
            let mut viewer = viewer_shows(&x, dir.path(), srv.port, &args, &env, &pic, what);
            srv.proc.wait_log(line, Duration::from_secs(10));
            let vlog = viewer.wait_log("Authentication success", Duration::from_secs(10));
            if sec.starts_with("X509") {
                assert!(vlog.contains("TLS handshake completed"), "{vlog}");
            }
            viewer.stop();
            srv.proc
                .wait_log("disconnected after", Duration::from_secs(10));
            srv.proc.assert_alive();
        }
    }

    // The animated test pattern: the viewer keeps asking for incremental updates and gets
    // one per frame (the clock and the moving bar), not a full screen each time.
    let mut srv = VncServer::start(Runtime::Threads, &["--size", "640x360"]);
    let mut c = Command::new(vnc_tool("vncviewer"));
    c.env("DISPLAY", x.env())
        .env("HOME", dir.path())
        .args([
            "-SecurityTypes",
            "None",
            "-Log",
            "*:stderr:30",
            "-geometry",
            "+0+0",
        ])
        .arg(format!("127.0.0.1::{}", srv.port));
    let mut viewer = Proc::spawn("vncviewer (pattern)", c);
    srv.proc
        .wait_log("authenticated (None)", Duration::from_secs(20));
    std::thread::sleep(Duration::from_secs(3));
    let a = x.screenshot(dir.path(), "pattern-a.png");
    std::thread::sleep(Duration::from_millis(500));
    let b = x.screenshot(dir.path(), "pattern-b.png");
    assert_ne!(a, b, "the pattern did not move in the viewer");
    viewer.stop();
    let log = srv
        .proc
        .wait_log("disconnected after", Duration::from_secs(10));
    let updates: u32 = log
        .lines()
        .find_map(|l| l.split("disconnected after ").nth(1))
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no update count in {log}"));
    assert!(updates >= 20, "only {updates} updates in about 3.5 s");
}

#[test]
fn our_client_against_xvnc() {
    let dir = tempdir();
    ensure_pam_user();
    let p = pki(&dir.path().join("pki"));
    let pkidir = p.dir.display().to_string();
    let cert = p.dir.join("server-cert.pem").display().to_string();
    let key = p.dir.join("server-key.pem").display().to_string();
    let tiger = vncpasswd_file(dir.path(), "passwd", "secret")
        .display()
        .to_string();
    let pw = text_file(dir.path(), "pw.txt", "secret")
        .display()
        .to_string();
    let plain_pw = text_file(dir.path(), "plain.txt", PAM_PASSWORD);
    let plain_pw = plain_pw.display().to_string();
    let (x, port) = XServer::xvnc(
        400,
        300,
        &[
            "-SecurityTypes",
            "X509Vnc,X509Plain,VncAuth",
            "-X509Cert",
            &cert,
            "-X509Key",
            &key,
            "-PasswordFile",
            &tiger,
            "-PlainUsers",
            PAM_USER,
        ],
    );
    let mut x = x;
    x.paint_root(dir.path(), &test_picture(400, 300, 9));
    let url = format!("vnc://127.0.0.1:{port}");
    // (client --security, extra args, what Xvnc logs for the choice)
    let cases: [(&str, Vec<&str>, &str); 4] = [
        (
            "X509Vnc",
            vec!["--password-file", &pw],
            "Client requests security type X509Vnc (261)",
        ),
        (
            "X509Plain",
            vec!["--username", PAM_USER, "--password-file", &plain_pw],
            "Client requests security type X509Plain (262)",
        ),
        (
            "VncAuth",
            vec!["--password-file", &pw],
            "Client requests security type VncAuth(2)",
        ),
        // Xvnc offers VncAuth inside VeNCrypt too: preferring VeNCrypt (X509None, which Xvnc
        // does not offer here) lands on the VeNCrypt sub-type 2.
        (
            "X509None,VncAuth",
            vec!["--password-file", &pw],
            "SVeNCrypt:   Client requests security type VncAuth (2)",
        ),
    ];
    for (sec, extra, line) in cases {
        let out = dir
            .path()
            .join(format!("xvnc-{}.png", sec.replace(',', "-")));
        let mut args = vec!["--security", sec, "--tls-creds", &pkidir];
        args.extend(extra);
        let o = capture(&url, &out, &args).expect_ok();
        let shot = x.screenshot(dir.path(), "xvnc-root.png");
        assert_same_image(&read_png(&out), &shot, &format!("Xvnc {sec}"));
        assert!(o.text().contains("400x300"), "{}", o.text());
        x.proc.wait_log(line, Duration::from_secs(10));
    }
    // The picture painted on the root window is what was captured.
    let shot = x.screenshot(dir.path(), "final.png");
    assert_eq!(shot.px(10, 10), test_picture(400, 300, 9).px(10, 10));
    // A wrong Plain password: Xvnc's PAM refusal is reported with its reason.
    let bad = text_file(dir.path(), "bad.txt", "wrong")
        .display()
        .to_string();
    capture(
        &url,
        &dir.path().join("bad.png"),
        &[
            "--security",
            "X509Plain",
            "--tls-creds",
            &pkidir,
            "--username",
            PAM_USER,
            "--password-file",
            &bad,
        ],
    )
    .expect_fail()
    .expect_stderr(&["refused"]);
    x.proc.assert_alive();
}
