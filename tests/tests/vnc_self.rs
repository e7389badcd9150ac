//! `kvmio vnc capture` against `kvmio vnc serve`: every security type with and without TLS on
//! both drivers, every encoding, pixel-exact against the served image; failures (wrong
//! password, throttling, wrong CA, missing client certificate, DN ACL); incremental updates of
//! the animated test pattern, paced by the frame timer, with no busy loop while idle.

use std::path::Path;
use std::time::{Duration, Instant};

use kvmio_tests::vnc::*;
use kvmio_tests::{Runtime, pki, tempdir};

struct Setup {
    dir: kvmio_tests::TempDir,
    pic: Rgb,
    image: String,
    pki: String,
    /// `vncpasswd -f` file with "secret" (server side).
    tiger_pw: String,
    /// Plain-text "secret" (client side).
    text_pw: String,
    users: String,
    alice_pw: String,
}

fn setup() -> Setup {
    let dir = tempdir();
    let pic = test_picture(203, 117, 1);
    let image = picture_file(dir.path(), &pic, "pic.png");
    let p = pki(&dir.path().join("pki"));
    let tiger_pw = vncpasswd_file(dir.path(), "tiger-passwd", "secret");
    let text_pw = text_file(dir.path(), "pw.txt", "secret");
    let users = text_file(dir.path(), "users", "bob:builder\nalice:wonder:land");
    let alice_pw = text_file(dir.path(), "alice.txt", "wonder:land");
    let s = |p: &Path| p.display().to_string();
    Setup {
        pic,
        image: s(&image),
        pki: s(&p.dir),
        tiger_pw: s(&tiger_pw),
        text_pw: s(&text_pw),
        users: s(&users),
        alice_pw: s(&alice_pw),
        dir,
    }
}

/// (server --security, client --security, TLS, expected "authenticated (…)" text)
const MATRIX: &[(&str, &str, bool, &str)] = &[
    ("None", "None", false, "authenticated (None)"),
    ("VncAuth", "VncAuth", false, "authenticated (VncAuth)"),
    ("Plain", "Plain", false, "authenticated (VeNCrypt Plain)"),
    // None and VncAuth inside VeNCrypt: the client prefers VeNCrypt (its first type is
    // X509Vnc, which this server does not offer) and finds the plain type in the sub-types.
    (
        "Plain,VncAuth",
        "X509Vnc,VncAuth",
        false,
        "authenticated (VeNCrypt VncAuth)",
    ),
    (
        "Plain,None",
        "X509Vnc,None",
        false,
        "authenticated (VeNCrypt None)",
    ),
    (
        "X509None",
        "X509None",
        true,
        "authenticated (VeNCrypt X509None)",
    ),
    (
        "X509Vnc",
        "X509Vnc",
        true,
        "authenticated (VeNCrypt X509Vnc)",
    ),
    (
        "X509Plain",
        "X509Plain",
        true,
        "authenticated (VeNCrypt X509Plain)",
    ),
    // A TigerVNC-style list: the client's first choice wins.
    (
        "X509Vnc,X509Plain,VncAuth,None",
        "X509Plain,X509Vnc",
        true,
        "authenticated (VeNCrypt X509Plain)",
    ),
];

fn matrix(rt: Runtime) {
    let s = setup();
    for (server_sec, client_sec, tls, expect) in MATRIX {
        let mut args = vec![
            "--image",
            &s.image,
            "--security",
            server_sec,
            "--password-file",
            &s.tiger_pw,
            "--plain-users",
            &s.users,
        ];
        if *tls {
            args.extend(["--tls-creds", &s.pki, "--tls-verify-peer", "yes"]);
        }
        let mut srv = VncServer::start(rt, &args);
        let plain = client_sec.contains("Plain");
        let mut cargs = vec!["--security", client_sec];
        if plain {
            cargs.extend(["--username", "alice", "--password-file", &s.alice_pw]);
        } else {
            cargs.extend(["--password-file", &s.text_pw]);
        }
        if *tls || client_sec.contains("X509") {
            cargs.extend(["--tls-creds", &s.pki]);
        }
        let out = s
            .dir
            .path()
            .join(format!("{}.png", server_sec.replace(',', "-")));
        let o = capture(&srv.url(), &out, &cargs).expect_ok();
        assert_same_image(
            &read_png(&out),
            &s.pic,
            &format!("{server_sec} / {client_sec} ({rt:?})"),
        );
        let log = srv.proc.wait_log(expect, Duration::from_secs(10));
        if *tls {
            assert!(o.text().contains("TLS"), "{}", o.text());
            assert!(
                log.contains("client O=kvmio,CN=client.example.com"),
                "{log}"
            );
        }
        srv.assert_healthy(&cargs, &s.pic);
    }
}

#[test]
fn every_security_type_threads() {
    matrix(Runtime::Threads);
}

#[test]
fn every_security_type_tokio() {
    matrix(Runtime::Tokio);
}

#[test]
fn every_encoding_pixel_exact() {
    let s = setup();
    let pic = test_picture(301, 199, 7);
    let image = picture_file(s.dir.path(), &pic, "enc.png");
    let image = image.display().to_string();
    let srv = VncServer::start(Runtime::Threads, &["--image", &image]);
    for enc in [
        "tight",
        "zrle",
        "hextile",
        "rre",
        "raw",
        "raw,zrle",
        "hextile,tight",
    ] {
        let out = s.dir.path().join(format!("{enc}.png"));
        capture(
            &srv.url(),
            &out,
            &["--security", "None", "--encodings", enc],
        )
        .expect_ok();
        assert_same_image(&read_png(&out), &pic, enc);
    }
    // Through TLS too, with the big framebuffer of the test pattern.
    let srv = VncServer::start(
        Runtime::Tokio,
        &[
            "--security",
            "X509None",
            "--tls-creds",
            &s.pki,
            "--size",
            "1920x1080",
        ],
    );
    for enc in ["zrle", "hextile"] {
        let out = s.dir.path().join(format!("pattern-{enc}.png"));
        capture(
            &srv.url(),
            &out,
            &["--tls-creds", &s.pki, "--encodings", enc],
        )
        .expect_ok();
        let got = read_png(&out);
        assert_eq!((got.width, got.height), (1920, 1080));
        // The colour bars of the test pattern (below the clock line).
        assert_eq!(got.px(100, 300), [0xc0, 0xc0, 0xc0], "{enc}: first bar");
        assert_eq!(got.px(1900, 300), [0x10, 0x10, 0x10], "{enc}: last bar");
    }
}

#[test]
fn wrong_password_and_throttling() {
    let s = setup();
    let mut srv = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            &s.image,
            "--security",
            "VncAuth",
            "--password-file",
            &s.tiger_pw,
        ],
    );
    let bad = text_file(s.dir.path(), "bad.txt", "wrong");
    let bad = bad.display().to_string();
    let out = s.dir.path().join("x.png");
    for i in 0..5 {
        capture(&srv.url(), &out, &["--password-file", &bad])
            .expect_fail()
            .expect_stderr(&["authentication failed"]);
        assert!(!out.exists(), "attempt {i} wrote an image");
    }
    // Five failures in a row: this address is blocked, the right password does not help.
    capture(&srv.url(), &out, &["--password-file", &s.text_pw]).expect_fail();
    let log = srv
        .proc
        .wait_log("too many failed logins", Duration::from_secs(10));
    assert_eq!(
        log.matches("VNC password authentication failed").count(),
        5,
        "{log}"
    );
    srv.proc.assert_alive();
}

#[test]
fn tls_failures_send_no_credentials() {
    let s = setup();
    let other = pki(&s.dir.path().join("other-pki"));
    let srv = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            &s.image,
            "--security",
            "X509Vnc",
            "--password-file",
            &s.tiger_pw,
            "--tls-creds",
            &s.pki,
        ],
    );
    let out = s.dir.path().join("x.png");
    // A client trusting another CA stops at the certificate: no password goes out.
    let o = capture(
        &srv.url(),
        &out,
        &[
            "--tls-creds",
            &other.dir.display().to_string(),
            "--password-file",
            &s.text_pw,
        ],
    )
    .expect_fail();
    o.expect_stderr_any(&["certificate", "unknown issuer", "UnknownIssuer"]);
    // verify-peer is on: a client without a certificate is refused in the handshake.
    let ca_only = s.dir.path().join("ca-only");
    kvmio_tests::ca_only_dir(Path::new(&s.pki), &ca_only);
    capture(
        &srv.url(),
        &out,
        &[
            "--tls-creds",
            &ca_only.display().to_string(),
            "--password-file",
            &s.text_pw,
        ],
    )
    .expect_fail();
    std::thread::sleep(Duration::from_millis(300));
    let log = srv.log();
    assert!(!log.contains("authenticated"), "{log}");
    assert!(
        !log.contains("authentication failed"),
        "a credential was checked:\n{log}"
    );
    assert!(!out.exists());
}

#[test]
fn tls_authz() {
    let s = setup();
    let dn = "O=kvmio,CN=client.example.com";
    let srv = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            &s.image,
            "--security",
            "X509None",
            "--tls-creds",
            &s.pki,
            "--tls-authz",
            dn,
        ],
    );
    let out = s.dir.path().join("ok.png");
    capture(&srv.url(), &out, &["--tls-creds", &s.pki]).expect_ok();
    assert_same_image(&read_png(&out), &s.pic, "allowed DN");
    let srv = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            &s.image,
            "--security",
            "X509None",
            "--tls-creds",
            &s.pki,
            "--tls-authz",
            "O=kvmio,CN=somebody-else",
        ],
    );
    let out = s.dir.path().join("denied.png");
    capture(&srv.url(), &out, &["--tls-creds", &s.pki]).expect_fail();
    assert!(!out.exists());
}

#[test]
fn configuration_errors_are_clear() {
    let s = setup();
    for (args, msg) in [
        (vec!["--security", "X509Vnc"], "--tls-creds"),
        (vec!["--security", "VncAuth"], "needs a VNC password"),
        (vec!["--security", "Plain"], "needs users"),
        (vec!["--security", "TLSVnc"], "anonymous TLS"),
        (vec!["--security", "RA2"], "unknown security type"),
        (vec!["--size", "0x10"], "width and height"),
        (vec!["--image", "/nonexistent.png"], "nonexistent"),
    ] {
        let mut cmd = kvmio_tests::kvmio();
        cmd.args(["vnc", "serve", "--listen", "127.0.0.1:0"])
            .args(&args);
        kvmio_tests::run(&mut cmd)
            .expect_fail()
            .expect_stderr(&[msg]);
    }
    let _ = s;
}

// ------------------------------------------------------------------------------ updates

fn be16(b: &[u8]) -> u16 {
    u16::from_be_bytes([b[0], b[1]])
}

/// Reads one FramebufferUpdate of Raw rectangles in the server's 32 bpp format; returns the
/// rectangles.
fn read_raw_update(r: &mut Raw) -> Vec<(u16, u16, u16, u16)> {
    let h = r.read(4);
    assert_eq!(h[0], 0, "FramebufferUpdate expected, got message {}", h[0]);
    let n = be16(&h[2..]);
    let mut rects = Vec::new();
    for _ in 0..n {
        let rh = r.read(12);
        let (x, y, w, hh) = (be16(&rh), be16(&rh[2..]), be16(&rh[4..]), be16(&rh[6..]));
        let enc = i32::from_be_bytes(rh[8..12].try_into().unwrap());
        assert_eq!(enc, 0, "Raw expected");
        r.read(usize::from(w) * usize::from(hh) * 4);
        rects.push((x, y, w, hh));
    }
    rects
}

fn request(r: &mut Raw, incremental: bool, w: u16, h: u16) {
    let mut m = vec![3, u8::from(incremental), 0, 0, 0, 0];
    m.extend_from_slice(&w.to_be_bytes());
    m.extend_from_slice(&h.to_be_bytes());
    r.send(&m).unwrap();
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("stat");
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
fn pattern_incremental_updates_paced_and_idle() {
    let mut srv = VncServer::start(Runtime::Threads, &["--size", "640x480"]);
    let mut r = Raw::connect(srv.port);
    let (w, h) = r.none_session();
    assert_eq!((w, h), (640, 480));
    r.send(&[2, 0, 0, 1, 0, 0, 0, 0]).unwrap(); // SetEncodings [Raw]
    request(&mut r, false, w, h);
    let full = read_raw_update(&mut r);
    assert_eq!(full, [(0, 0, 640, 480)]);
    // Incremental: only the clock line and the moving bar change.
    let start = Instant::now();
    let mut frames = 0;
    while start.elapsed() < Duration::from_secs(2) {
        request(&mut r, true, w, h);
        let rects = read_raw_update(&mut r);
        let area: u32 = rects.iter().map(|r| u32::from(r.2) * u32::from(r.3)).sum();
        assert!(
            !rects.is_empty() && area < 640 * 480 / 4,
            "damage {rects:?}"
        );
        frames += 1;
    }
    // 15 frames per second at most (the timer paces them), and they keep coming.
    assert!((10..=40).contains(&frames), "{frames} frames in 2 s");
    srv.proc.assert_alive();

    // A still image: an incremental request waits (nothing changes) without spinning.
    let s = setup();
    let still = VncServer::start(Runtime::Threads, &["--image", &s.image]);
    let mut r = Raw::connect(still.port);
    let (w, h) = r.none_session();
    r.send(&[2, 0, 0, 1, 0, 0, 0, 0]).unwrap();
    request(&mut r, false, w, h);
    read_raw_update(&mut r);
    request(&mut r, true, w, h);
    let t0 = cpu_ticks(still.proc.id());
    std::thread::sleep(Duration::from_secs(2));
    let used = cpu_ticks(still.proc.id()) - t0;
    assert!(used <= 5, "the idle server used {used} clock ticks in 2 s");
    r.s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let mut b = [0u8; 1];
    assert!(
        std::io::Read::read(&mut r.s, &mut b).is_err(),
        "an update without damage was sent"
    );
}
