//! The console in a real browser: noVNC (npm `@novnc/novnc` 1.7 on a bare page of ours, and
//! Debian's `novnc` package with its own UI) in Debian's Chromium, driven headless by
//! playwright-core (`tests/browser/console.mjs`), against `kvmio vnc serve --vnc-websocket
//! --web`: over ws with VncAuth, over wss (the test CA trusted by the browser profile's NSS
//! database) with the X509 types mapped to VncAuth and Plain; the canvas equals the served
//! picture pixel for pixel (the encodings noVNC gets are lossless), keys typed and clicks made
//! in the page arrive as the expected keysyms, QEMU scancodes and pointer events. websockify
//! in front of the TCP port is the other way browsers get in. Hostile WebSocket input on the
//! live port gets the RFC's answers and the server stays healthy.

use std::io::{Read, Write};
use std::net::TcpStream;

use std::process::Command;
use std::time::Duration;

use kvmio_tests::browser::{Seen, browse, browser_home, console_root};
use kvmio_tests::vnc::*;
use kvmio_tests::{Runtime, pki, tempdir};

/// The least PSNR accepted where noVNC gets JPEG (Tight at its default quality 6) of the
/// test picture.
const JPEG_PSNR: f64 = 24.0;

/// The WebSocket port from the server's start-up lines.
fn websocket_port(s: &mut VncServer) -> u16 {
    s.port_of("vnc-websocket")
}

#[track_caller]
fn assert_console(seen: &Seen, pic: &Rgb, what: &str) {
    assert_eq!(seen.state, "connected", "{what}: {}", seen.stderr);
    let c = seen.canvas.as_ref().expect("a canvas");
    assert_same_image(c, pic, what);
}

/// What the page types and clicks (`tests/browser/console.mjs`); [`assert_input`] checks its
/// events.
const INPUT: [&str; 8] = [
    "--type",
    "a1",
    "--press",
    "Shift+KeyZ",
    "--click",
    "10,10",
    "--wheel",
    "30,20",
];

/// The browser's keys and clicks ([`INPUT`]) in the server's log (the log input sink), in order.
#[track_caller]
fn assert_input(s: &mut VncServer, what: &str) {
    let log = s.proc.wait_log(
        "pointer buttons 0b00000000 at 30,20",
        Duration::from_secs(10),
    );
    let keys: Vec<&str> = log
        .lines()
        .filter_map(|l| l.split_once("] ").map(|(_, m)| m))
        .filter(|m| m.starts_with("key ") || m.starts_with("pointer buttons"))
        .collect();
    // "a1" typed, then Shift+Z: QEMU extended key events (noVNC sends them when the server
    // offers them), keysyms with the key's position; then a click at (10, 10) on the canvas
    // and the wheel at (30, 20)
    let expect = [
        "key 'a' (0x0061) (scancode 0x1e) down",
        "key 'a' (0x0061) (scancode 0x1e) up",
        "key '1' (0x0031) (scancode 0x2) down",
        "key '1' (0x0031) (scancode 0x2) up",
        "key Shift (scancode 0x2a) down",
        "key 'Z' (0x005a) (scancode 0x2c) down",
        "key 'Z' (0x005a) (scancode 0x2c) up",
        "key Shift (scancode 0x2a) up",
        "pointer buttons 0b00000001 at 10,10",
        "pointer buttons 0b00000000 at 10,10",
        // the wheel turned down: button 5 pressed and released
        "pointer buttons 0b00010000 at 30,20",
        "pointer buttons 0b00000000 at 30,20",
    ];
    let mut it = keys.iter();
    for e in expect {
        assert!(
            it.any(|k| *k == e),
            "{what}: {e:?} not seen in order; the server saw:\n{}",
            keys.join("\n")
        );
    }
}

#[test]
fn novnc_in_chromium_over_ws_and_wss() {
    let dir = tempdir();
    let pic = test_picture(320, 200, 11);
    let png = picture_file(dir.path(), &pic, "console.png");
    let root = console_root(dir.path());
    let pw = text_file(dir.path(), "pw", "s3cret");
    let users = text_file(dir.path(), "users", "ada:lovelace\n");
    let pki = pki(&dir.path().join("pki"));
    let home = browser_home(dir.path(), Some(&pki.dir.join("ca-cert.pem")));
    let root_s = root.to_str().unwrap();
    let png_s = png.to_str().unwrap();

    // ws, VncAuth: the picture, then keys and a click
    let mut s = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            png_s,
            "--password-file",
            pw.to_str().unwrap(),
            "--vnc-websocket",
            "127.0.0.1:0",
            "--web",
            root_s,
        ],
    );
    let port = websocket_port(&mut s);
    let url = format!("http://127.0.0.1:{port}/console.html?password=s3cret");
    let seen = browse(&home, &url, dir.path(), &INPUT);
    // noVNC's own choice: Tight with JPEG quality 6
    assert_eq!(seen.state, "connected", "{}", seen.stderr);
    let canvas = seen.canvas.as_ref().expect("a canvas");
    let db = psnr(canvas, &pic);
    eprintln!("noVNC 1.7, Tight with JPEG quality 6: PSNR {db:.1} dB");
    assert!(db >= JPEG_PSNR, "PSNR {db:.1} dB");
    assert_input(&mut s, "ws");
    let log = s.log();
    assert!(
        log.contains("WebSocket open (VNC security VncAuth)"),
        "{log}"
    );
    assert!(
        log.contains("encoding Tight, compression level 2, JPEG quality"),
        "{log}"
    );
    // the lossless encodings, chosen by the page: pixel for pixel
    for (name, list) in [
        ("Tight", "7"),
        ("TightPNG", "-260"),
        ("ZRLE", "16"),
        ("Hextile", "5"),
    ] {
        let url = format!(
            "http://127.0.0.1:{port}/console.html?password=s3cret&encodings={list},-223,-224,-258"
        );
        let seen = browse(&home, &url, dir.path(), &[]);
        assert_console(&seen, &pic, &format!("noVNC 1.7 over ws, {name}"));
    }
    let log = s.log();
    assert!(
        log.contains("encoding TightPng, compression level"),
        "{log}"
    );
    // a wrong password is refused like on the TCP port
    let seen = browse(
        &home,
        &format!("http://127.0.0.1:{port}/console.html?password=wrong"),
        dir.path(),
        &[],
    );
    assert_ne!(seen.state, "connected");
    assert!(seen.canvas.is_none());
    s.proc.wait_log(
        "VNC password authentication failed",
        Duration::from_secs(10),
    );
    s.assert_healthy(&["--password-file", pw.to_str().unwrap()], &pic);
    drop(s);

    // wss: the TCP port's X509Vnc and X509Plain become VncAuth and Plain inside the TLS the
    // WebSocket runs in; the browser trusts the test CA
    let tls = [
        "--tls-creds",
        pki.dir.to_str().unwrap(),
        "--tls-verify-peer",
        "no",
        "--security",
        "X509Plain,X509Vnc",
        "--password-file",
        pw.to_str().unwrap(),
        "--plain-users",
        users.to_str().unwrap(),
        "--image",
        png_s,
        "--vnc-websocket",
        "127.0.0.1:0",
        "--web",
        root_s,
    ];
    let mut s = VncServer::start(Runtime::Tokio, &tls);
    let port = websocket_port(&mut s);
    let seen = browse(
        &home,
        &format!("https://127.0.0.1:{port}/console.html?user=ada&password=lovelace"),
        dir.path(),
        &INPUT,
    );
    assert_eq!(seen.state, "connected", "{}", seen.stderr);
    assert!(psnr(seen.canvas.as_ref().unwrap(), &pic) >= JPEG_PSNR);
    assert_input(&mut s, "wss");
    let log = s.log();
    assert!(log.contains("(wss)"), "{log}");
    assert!(log.contains("user \"ada\""), "{log}");
    // a browser that does not trust the CA gets nothing
    let untrusting = browser_home(&dir.path().join("other"), None);
    let seen = browse(
        &untrusting,
        &format!("https://127.0.0.1:{port}/console.html?user=ada&password=lovelace"),
        dir.path(),
        &[],
    );
    assert_ne!(seen.state, "connected");
    assert!(seen.canvas.is_none());

    // Debian's novnc package with its own UI, from the same listener's --web
    drop(s);
    let mut debian = tls.to_vec();
    let n = debian.len();
    debian[n - 1] = "/usr/share/novnc";
    let mut s = VncServer::start(Runtime::Threads, &debian);
    let port = websocket_port(&mut s);
    let seen = browse(
        &home,
        &format!("https://127.0.0.1:{port}/vnc.html?autoconnect=1&password=s3cret&path=websockify"),
        dir.path(),
        &["--novnc-app"],
    );
    assert_eq!(seen.state, "connected", "{}", seen.stderr);
    let db = psnr(seen.canvas.as_ref().unwrap(), &pic);
    eprintln!("Debian's noVNC 1.3 (its own UI), Tight with JPEG: PSNR {db:.1} dB");
    assert!(db >= JPEG_PSNR, "PSNR {db:.1} dB");
    s.proc.assert_alive();
}

#[test]
fn novnc_through_websockify_in_front_of_the_tcp_port() {
    let dir = tempdir();
    let pic = test_picture(200, 120, 12);
    let png = picture_file(dir.path(), &pic, "p.png");
    let root = console_root(dir.path());
    let home = browser_home(dir.path(), None);
    let s = VncServer::start(Runtime::Threads, &["--image", png.to_str().unwrap()]);
    let target = format!("127.0.0.1:{}", s.port);
    let (mut ws, port) = kvmio_tests::start_on_free_port("websockify", |port| {
        let mut c = Command::new("websockify");
        c.arg("--web")
            .arg(&root)
            .arg(format!("127.0.0.1:{port}"))
            .arg(&target);
        c
    });
    let seen = browse(
        &home,
        &format!("http://127.0.0.1:{port}/console.html"),
        dir.path(),
        &[],
    );
    assert_eq!(seen.state, "connected", "{}", seen.stderr);
    assert!(psnr(seen.canvas.as_ref().unwrap(), &pic) >= JPEG_PSNR);
    ws.assert_alive();
}

/// Opens the WebSocket by hand and returns the stream after the 101.
fn upgrade(port: u16) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(
        b"GET /websockify HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
          Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101"), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo="),
        "{head}"
    );
    s
}

/// Reads until the server's close frame; returns its status code.
fn close_code(s: &mut TcpStream) -> u16 {
    let mut all = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let n = s.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        all.extend_from_slice(&buf[..n]);
    }
    // frames from the server: unmasked; find the close (opcode 8)
    let mut at = 0;
    while at + 2 <= all.len() {
        let op = all[at] & 0x0f;
        let (len, hl) = match all[at + 1] & 0x7f {
            126 => (
                usize::from(u16::from_be_bytes([all[at + 2], all[at + 3]])),
                4,
            ),
            127 => (
                u64::from_be_bytes(all[at + 2..at + 10].try_into().unwrap()) as usize,
                10,
            ),
            n => (usize::from(n), 2),
        };
        if op == 8 {
            return u16::from_be_bytes([all[at + hl], all[at + hl + 1]]);
        }
        at += hl + len;
    }
    panic!("no close frame in {} bytes", all.len())
}

#[test]
fn hostile_websocket_input_gets_the_rfc_answers() {
    let dir = tempdir();
    let pic = test_picture(64, 48, 13);
    let png = picture_file(dir.path(), &pic, "p.png");
    let mut s = VncServer::start(
        Runtime::Tokio,
        &[
            "--image",
            png.to_str().unwrap(),
            "--vnc-websocket",
            "127.0.0.1:0",
        ],
    );
    let port = websocket_port(&mut s);
    let mask = [1u8, 2, 3, 4];
    let cases: [(&str, Vec<u8>, u16); 5] = [
        ("unmasked frame", vec![0x82, 0x01, 0x00], 1002),
        (
            "2^63 length",
            [&[0x82u8, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0][..], &mask].concat(),
            1002,
        ),
        (
            "a 1 GiB frame",
            [&[0x82u8, 0xff, 0, 0, 0, 0, 0x40, 0, 0, 0][..], &mask].concat(),
            1009,
        ),
        ("opcode 3", [&[0x83u8, 0x80][..], &mask].concat(), 1002),
        (
            "fragmented ping",
            [&[0x09u8, 0x81][..], &mask, &[0]].concat(),
            1002,
        ),
    ];
    for (what, bytes, code) in cases {
        let mut c = upgrade(port);
        c.write_all(&bytes).unwrap();
        assert_eq!(close_code(&mut c), code, "{what}");
    }
    // a close in the middle of an RFB message: the server answers the close
    let mut c = upgrade(port);
    let half = [b'R', b'F', b'B', b' '];
    let mut f = vec![0x82, 0x84];
    f.extend_from_slice(&mask);
    f.extend(half.iter().zip(mask.iter().cycle()).map(|(b, m)| b ^ m));
    f.extend_from_slice(&[0x88, 0x82]);
    f.extend_from_slice(&mask);
    f.extend([0x03u8, 0xe8].iter().zip(mask.iter()).map(|(b, m)| b ^ m));
    c.write_all(&f).unwrap();
    assert_eq!(close_code(&mut c), 1000);
    // a never-ending header: 431 and the connection closed, no growth
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET / HTTP/1.1\r\nX-Long: ").unwrap();
    let chunk = [b'a'; 4096];
    for _ in 0..8 {
        if c.write_all(&chunk).is_err() {
            break;
        }
    }
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 431 "), "{resp}");
    // a plain request without --web: 426, and an unknown version: 426 with ours
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /vnc.html HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 426 "), "{resp}");
    // the server is fine, on both ports
    s.assert_healthy(&[], &pic);
    let log = s.log();
    assert!(log.contains("close 1009"), "{log}");
}

/// A connection to the WebSocket port that has not finished a request or the upgrade within
/// 30 s (`web::HTTP_IDLE`) is closed: one that sends nothing, one stuck in its request head
/// (slowloris), and one idle after a keep-alive answer; all three at once, and the port serves
/// the next request.
#[test]
fn idle_http_connections_are_closed() {
    let dir = tempdir();
    let web = dir.path().join("web");
    std::fs::create_dir(&web).unwrap();
    std::fs::write(web.join("index.html"), b"<p>console</p>").unwrap();
    let pic = test_picture(32, 24, 5);
    let png = picture_file(dir.path(), &pic, "p.png");
    let mut s = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            png.to_str().unwrap(),
            "--vnc-websocket",
            "127.0.0.1:0",
            "--web",
            web.to_str().unwrap(),
        ],
    );
    let port = websocket_port(&mut s);
    let get = b"GET /index.html HTTP/1.1\r\nHost: x\r\n\r\n";
    let cases: [(&str, &[u8]); 3] = [
        ("silent", b""),
        ("half a head", b"GET /index.html HTTP/1.1\r\nHost: x\r\n"),
        ("idle after an answer", get),
    ];
    let threads: Vec<_> = cases
        .into_iter()
        .map(|(what, send)| {
            std::thread::spawn(move || {
                let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
                c.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
                let t = std::time::Instant::now();
                c.write_all(send).unwrap();
                let mut got = Vec::new();
                let r = c.read_to_end(&mut got);
                assert!(r.is_ok(), "{what}: not closed: {r:?}");
                let got = String::from_utf8_lossy(&got).into_owned();
                (what, t.elapsed(), got)
            })
        })
        .collect();
    for t in threads {
        let (what, waited, got) = t.join().unwrap();
        // Closed for being idle, not at once.
        assert!(
            waited >= Duration::from_secs(25),
            "{what}: closed after {waited:?}"
        );
        if what == "idle after an answer" {
            assert!(
                got.starts_with("HTTP/1.1 200 ") && got.ends_with("<p>console</p>"),
                "{what}: {got}"
            );
        } else {
            assert_eq!(got, "", "{what}");
        }
    }
    let log = s.log();
    assert_eq!(
        log.matches("no request or upgrade for 30 s: closing")
            .count(),
        3,
        "{log}"
    );
    // The port still answers.
    let mut c = TcpStream::connect(("127.0.0.1", port)).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    c.write_all(b"GET /index.html HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut resp = String::new();
    let _ = c.read_to_string(&mut resp);
    assert!(resp.starts_with("HTTP/1.1 200 "), "{resp}");
    s.assert_healthy(&[], &pic);
}

/// `kvmio vnc capture ws://` and `wss://`: against kvmio's own WebSocket listener (wss with
/// the client certificate verified, as on the TCP port; refused without one) and through
/// websockify in front of the TCP port.
#[test]
fn our_client_over_ws_wss_and_websockify() {
    let dir = tempdir();
    let pic = test_picture(160, 100, 14);
    let png = picture_file(dir.path(), &pic, "p.png");
    let pw = text_file(dir.path(), "pw", "s3cret");
    let p = pki(&dir.path().join("pki"));
    let (png_s, pw_s, pki_s) = (
        png.to_str().unwrap(),
        pw.to_str().unwrap(),
        p.dir.to_str().unwrap(),
    );
    let mut s = VncServer::start(
        Runtime::Tokio,
        &[
            "--image",
            png_s,
            "--tls-creds",
            pki_s,
            "--security",
            "X509Vnc",
            "--password-file",
            pw_s,
            "--vnc-websocket",
            "127.0.0.1:0",
        ],
    );
    let port = websocket_port(&mut s);
    let out = dir.path().join("wss.png");
    let args = [
        "--security",
        "X509Vnc",
        "--tls-creds",
        pki_s,
        "--password-file",
        pw_s,
    ];
    let o = capture(&format!("wss://127.0.0.1:{port}/"), &out, &args).expect_ok();
    assert_same_image(&read_png(&out), &pic, "kvmio over wss");
    assert!(o.text().contains("VncAuth"), "{}", o.text());
    assert!(o.text().contains("TLS"), "{}", o.text());
    // without a client certificate: the TLS handshake fails, nothing is shown
    let ca_only = dir.path().join("ca-only");
    kvmio_tests::ca_only_dir(&p.dir, &ca_only);
    let mut a = args;
    a[3] = ca_only.to_str().unwrap();
    capture(&format!("wss://127.0.0.1:{port}/"), &out, &a).expect_fail();
    // plain ws to a TLS listener: refused too (the server expects a TLS ClientHello)
    capture(
        &format!("ws://127.0.0.1:{port}/"),
        &out,
        &["--security", "VncAuth"],
    )
    .expect_fail();
    s.proc.assert_alive();
    drop(s);

    // ws, and through websockify to the TCP port
    let s = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            png_s,
            "--password-file",
            pw_s,
            "--vnc-websocket",
            "127.0.0.1:0",
        ],
    );
    let mut s = s;
    let port = websocket_port(&mut s);
    let out = dir.path().join("ws.png");
    capture(
        &format!("ws://127.0.0.1:{port}/websockify"),
        &out,
        &["--password-file", pw_s],
    )
    .expect_ok();
    assert_same_image(&read_png(&out), &pic, "kvmio over ws");
    let target = format!("127.0.0.1:{}", s.port);
    let (mut w, wport) = kvmio_tests::start_on_free_port("websockify", |port| {
        let mut c = Command::new("websockify");
        c.arg(format!("127.0.0.1:{port}")).arg(&target);
        c
    });
    let out = dir.path().join("websockify.png");
    capture(
        &format!("ws://127.0.0.1:{wport}/"),
        &out,
        &["--password-file", pw_s],
    )
    .expect_ok();
    assert_same_image(&read_png(&out), &pic, "kvmio through websockify");
    w.assert_alive();
}

/// JPEG pass-through to the browser: a frame that already is a JPEG (`--image photo.jpg`, as
/// an MJPEG capture gives) reaches noVNC (Tight, JPEG quality 6) as those bytes, decoded by
/// Chromium: close to what the server decoded for everybody else, and counted as passed
/// through, not encoded again.
#[test]
fn a_jpeg_frame_reaches_novnc_as_it_is() {
    let dir = tempdir();
    let pic = test_picture(320, 200, 15);
    let file = jpeg_file(
        dir.path(),
        &pic,
        90,
        rfb_core::jpeg::Subsampling::None,
        "p.jpg",
    );
    let root = console_root(dir.path());
    let home = browser_home(dir.path(), None);
    let mut s = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            file.to_str().unwrap(),
            "--vnc-websocket",
            "127.0.0.1:0",
            "--web",
            root.to_str().unwrap(),
        ],
    );
    let port = websocket_port(&mut s);
    let raw = dir.path().join("raw.png");
    capture(&s.url(), &raw, &["--encodings", "raw"]).expect_ok();
    let decoded = read_png(&raw);
    let seen = browse(
        &home,
        &format!("http://127.0.0.1:{port}/console.html"),
        dir.path(),
        &[],
    );
    assert_eq!(seen.state, "connected", "{}", seen.stderr);
    let db = psnr(seen.canvas.as_ref().unwrap(), &decoded);
    eprintln!("the passed-through JPEG in Chromium against kvmio's decoding: {db:.1} dB");
    assert!(db >= 40.0, "PSNR {db:.1} dB");
    let log = s
        .proc
        .wait_log("JPEG frames passed through", Duration::from_secs(10));
    assert!(
        log.contains(", 0 JPEG, 0 PNG, 1 JPEG frames passed through"),
        "{log}"
    );
}
