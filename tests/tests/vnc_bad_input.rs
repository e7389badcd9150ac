//! Bad input against `kvmio vnc serve` over raw TCP, one test per RFB row of protocols.md §3:
//! each case ends in a clean close (with the reason where RFB has a way to give one), never a
//! hang or a crash, and the same server process then serves the next client pixel-exactly.
//!
//! * CVE-2006-2369/-2450: a security type (or VeNCrypt sub-type) that was not offered;
//! * CVE-2018-7225, CVE-2014-6053, CVE-2023-3255: huge cut text (0xFFFFFFFF, 0x80000000,
//!   1 MiB + 1) and, with the extended clipboard, i32::MIN and other negative lengths;
//! * CVE-2014-7815, CVE-2015-8504, CVE-2020-14397…: bad pixel formats;
//! * rectangles outside the framebuffer (clipped, not trusted);
//! * CVE-2017-7392…7396, CVE-2017-7539 class: the handshake truncated at every byte
//!   (None, VncAuth, VeNCrypt Plain; RFB 3.3, 3.7, 3.8);
//! * CVE-2023-3354, CVE-2016-10207: the connection dropped at every byte of the TLS handshake;
//! * CVE-2017-15124: a client that floods requests and never reads (bounded memory);
//! * CVE-2024-7409: the handshake deadline and the connection cap;
//! * oxide/rfb: golden bytes of the None handshake per version.

use std::io::Write;
use std::net::Shutdown;
use std::time::{Duration, Instant};

use kvmio_tests::vnc::*;
use kvmio_tests::{Runtime, TempDir, pki, tempdir};

struct Env {
    _dir: TempDir,
    pic: Rgb,
    image: String,
    pki: String,
    tiger_pw: String,
    text_pw: String,
    users: String,
}

fn env() -> Env {
    let dir = tempdir();
    let pic = test_picture(97, 61, 11);
    let image = picture_file(dir.path(), &pic, "pic.png")
        .display()
        .to_string();
    let p = pki(&dir.path().join("pki"));
    let tiger_pw = vncpasswd_file(dir.path(), "passwd", "secret")
        .display()
        .to_string();
    let text_pw = text_file(dir.path(), "pw.txt", "secret")
        .display()
        .to_string();
    let users = text_file(dir.path(), "users", "alice:wonderland")
        .display()
        .to_string();
    Env {
        pic,
        image,
        pki: p.dir.display().to_string(),
        tiger_pw,
        text_pw,
        users,
        _dir: dir,
    }
}

/// A server offering None, VncAuth and (VeNCrypt) Plain, plus both inside VeNCrypt.
fn plain_server(e: &Env, rt: Runtime, extra: &[&str]) -> VncServer {
    let mut args = vec![
        "--image",
        &e.image,
        "--security",
        "Plain,VncAuth,None",
        "--password-file",
        &e.tiger_pw,
        "--plain-users",
        &e.users,
        "--name",
        "bad-input",
    ];
    args.extend(extra);
    VncServer::start(rt, &args)
}

/// The server is alive, did not panic, and serves a None capture of the image.
#[track_caller]
fn healthy(srv: &mut VncServer, e: &Env) {
    srv.assert_healthy(&["--security", "None"], &e.pic);
}

/// A None session (RFB 3.8) up to ServerInit, with the server's (w, h).
fn running(port: u16) -> (Raw, u16, u16) {
    let mut r = Raw::connect(port);
    let (w, h) = r.none_session();
    (r, w, h)
}

/// Sends `bytes` and expects the server to close the connection (it may say why first).
#[track_caller]
fn expect_close(r: &mut Raw, bytes: &[u8], what: &str) -> Vec<u8> {
    // the server may close while we are still writing
    let _ = r.send(bytes);
    let t = Instant::now();
    let got = r.read_to_close();
    assert!(
        t.elapsed() < RAW_TIMEOUT,
        "{what}: the server did not close the connection"
    );
    got
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes(b[..4].try_into().unwrap())
}

fn set_encodings(encs: &[i32]) -> Vec<u8> {
    let mut m = vec![2, 0];
    m.extend_from_slice(&(encs.len() as u16).to_be_bytes());
    for e in encs {
        m.extend_from_slice(&e.to_be_bytes());
    }
    m
}

fn fbur(incremental: bool, x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
    let mut m = vec![3, u8::from(incremental)];
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m
}

/// Reads a FramebufferUpdate; returns its rectangles (x, y, w, h, encoding), skipping Raw
/// pixel data at `bpp` bytes per pixel (any other encoding is an error here).
fn read_update(r: &mut Raw, bpp: usize) -> Vec<(u16, u16, u16, u16, i32)> {
    let h = r.read(4);
    assert_eq!(h[0], 0, "FramebufferUpdate expected");
    let n = u16::from_be_bytes([h[2], h[3]]);
    (0..n)
        .map(|_| {
            let b = r.read(12);
            let v = |i: usize| u16::from_be_bytes([b[i], b[i + 1]]);
            let enc = i32::from_be_bytes(b[8..12].try_into().unwrap());
            assert_eq!(enc, 0, "Raw expected");
            r.read(usize::from(v(4)) * usize::from(v(6)) * bpp);
            (v(0), v(2), v(4), v(6), enc)
        })
        .collect()
}

const EXT_CLIPBOARD: i32 = 0xc0a1_e5ce_u32 as i32;

// ------------------------------------------------------------------------------ security

#[test]
fn golden_none_handshake_per_version() {
    let e = env();
    let mut srv = VncServer::start(Runtime::Threads, &["--image", &e.image, "--name", "g"]);
    for (version, security, result) in [
        // 3.3: the server picks (U32 1) and sends no SecurityResult for None
        (&b"RFB 003.003\n"[..], &[0u8, 0, 0, 1][..], None),
        // 3.7: a list; no SecurityResult for None
        (b"RFB 003.007\n", &[1, 1], None),
        // 3.8: a list, and SecurityResult 0 even for None
        (b"RFB 003.008\n", &[1, 1], Some([0u8, 0, 0, 0])),
        // 3.5 is 3.3 (rfbproto), unknown later minors are 3.8's
        (b"RFB 003.005\n", &[0, 0, 0, 1], None),
    ] {
        let mut r = Raw::connect(srv.port);
        assert_eq!(r.read(12), b"RFB 003.008\n");
        r.send(version).unwrap();
        assert_eq!(r.read(security.len()), security, "{version:?}");
        if security.len() == 2 {
            r.send(&[1]).unwrap();
        }
        if let Some(res) = result {
            assert_eq!(r.read(4), res);
        }
        r.send(&[0]).unwrap(); // ClientInit, not shared
        let init = r.read(24);
        assert_eq!(&init[..4], &[0, 97, 0, 61], "ServerInit size");
        assert_eq!(
            &init[4..8],
            &[32, 24, 0, 1],
            "32 bpp, depth 24, little endian, true colour"
        );
        assert_eq!(&init[20..24], &[0, 0, 0, 1]);
        assert_eq!(r.read(1), b"g");
    }
    // Not an RFB version at all: closed.
    let mut r = Raw::connect(srv.port);
    r.read(12);
    expect_close(&mut r, b"HTTP/1.1 200", "garbage version");
    healthy(&mut srv, &e);
}

#[test]
fn unoffered_security_types_are_refused() {
    let e = env();
    // Only VncAuth: choosing None (CVE-2006-2369) is refused with the 3.8 reason.
    let mut srv = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            &e.image,
            "--security",
            "VncAuth",
            "--password-file",
            &e.tiger_pw,
        ],
    );
    for t in [1u8, 19, 0, 255] {
        let mut r = Raw::connect(srv.port);
        assert_eq!(r.hello(), [2]);
        let got = expect_close(&mut r, &[t], "unoffered type");
        assert_eq!(
            &got[..4],
            &[0, 0, 0, 1],
            "failed SecurityResult for type {t}"
        );
        let len = be32(&got[4..]) as usize;
        assert_eq!(&got[8..8 + len], b"Security type not offered");
    }
    // RFB 3.3 cannot carry VeNCrypt: an X509-only server refuses a 3.3 client with a reason.
    let mut x509 = VncServer::start(
        Runtime::Threads,
        &[
            "--image",
            &e.image,
            "--security",
            "X509None",
            "--tls-creds",
            &e.pki,
        ],
    );
    let mut r = Raw::connect(x509.port);
    r.read(12);
    let got = expect_close(&mut r, b"RFB 003.003\n", "3.3 against VeNCrypt only");
    assert_eq!(&got[..4], &[0, 0, 0, 0], "3.3 connection failure");
    assert!(String::from_utf8_lossy(&got[8..]).contains("No supported security types"));
    x509.proc.assert_alive();

    // VeNCrypt sub-types that were not offered (TLS ones get the 0 ack, others nothing).
    let mut srv2 = plain_server(&e, Runtime::Threads, &[]);
    for (sub, expect) in [
        (261u32, &[0u8][..]),
        (257, &[0]),
        (262, &[0]),
        (0x0001_2345, &[]),
        (0, &[]),
    ] {
        let mut r = Raw::connect(srv2.port);
        assert_eq!(r.hello(), [19, 2, 1]);
        r.send(&[19]).unwrap();
        assert_eq!(r.read(2), [0, 2]);
        r.send(&[0, 2]).unwrap();
        assert_eq!(r.read(1), [0], "VeNCrypt version ack");
        let list = r.read(13);
        assert_eq!(list[0], 3);
        assert_eq!(
            [be32(&list[1..]), be32(&list[5..]), be32(&list[9..])],
            [256, 2, 1],
            "Plain, VncAuth and None inside VeNCrypt"
        );
        let got = expect_close(&mut r, &sub.to_be_bytes(), "unoffered sub-type");
        assert_eq!(got, expect, "sub-type {sub}");
    }
    // VeNCrypt 0.1 (legacy) is refused with ack 1.
    let mut r = Raw::connect(srv2.port);
    r.hello();
    r.send(&[19]).unwrap();
    r.read(2);
    assert_eq!(expect_close(&mut r, &[0, 1], "VeNCrypt 0.1"), [1]);
    // Plain credentials longer than the limit: failure and close.
    let mut r = Raw::connect(srv2.port);
    r.hello();
    r.send(&[19]).unwrap();
    r.read(2);
    r.send(&[0, 2]).unwrap();
    r.read(14);
    r.send(&256u32.to_be_bytes()).unwrap();
    let mut creds = 1000u32.to_be_bytes().to_vec();
    creds.extend_from_slice(&4u32.to_be_bytes());
    let got = expect_close(&mut r, &creds, "long Plain user name");
    assert_eq!(&got[..4], &[0, 0, 0, 1]);
    srv.assert_healthy(&["--password-file", &e.text_pw], &e.pic);
    healthy(&mut srv2, &e);
}

// ------------------------------------------------------------------------------ messages

#[test]
fn huge_cut_text_and_extended_clipboard() {
    let e = env();
    let mut srv = plain_server(&e, Runtime::Threads, &[]);
    for len in [0xffff_ffffu32, 0x8000_0000, (1 << 20) + 1] {
        let (mut r, _, _) = running(srv.port);
        let mut m = vec![6, 0, 0, 0];
        m.extend_from_slice(&len.to_be_bytes());
        expect_close(&mut r, &m, &format!("cut text of {len:#x} bytes"));
    }
    // With the extended clipboard the length is signed; negative means |len| bytes of
    // extended data. i32::MIN has no positive counterpart.
    for len in [i32::MIN, -(1 << 20) - 1, i32::MIN + 1] {
        let (mut r, _, _) = running(srv.port);
        r.send(&set_encodings(&[0, EXT_CLIPBOARD])).unwrap();
        let mut m = vec![6, 0, 0, 0];
        m.extend_from_slice(&len.to_be_bytes());
        expect_close(&mut r, &m, &format!("extended cut text of {len}"));
    }
    // Ordinary sizes work, and the session goes on.
    let (mut r, w, h) = running(srv.port);
    r.send(&set_encodings(&[0, EXT_CLIPBOARD])).unwrap();
    let mut m = vec![6, 0, 0, 0];
    m.extend_from_slice(&(-4i32).to_be_bytes());
    m.extend_from_slice(&[0, 0, 0, 1]);
    m.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 5]);
    m.extend_from_slice(b"hello");
    m.extend_from_slice(&fbur(false, 0, 0, w, h));
    r.send(&m).unwrap();
    // the server's clipboard capabilities come first (ExtendedClipboard acknowledgement)
    let caps = r.read(8);
    assert_eq!(caps[0], 3, "ServerCutText with the clipboard capabilities");
    r.read(be32(&caps[4..]).wrapping_neg() as usize);
    assert_eq!(read_update(&mut r, 4), [(0, 0, w, h, 0)]);
    srv.proc
        .wait_log("clipboard text of 5 bytes", Duration::from_secs(10));
    healthy(&mut srv, &e);
}

#[test]
fn bad_pixel_formats_and_messages() {
    let e = env();
    let mut srv = plain_server(&e, Runtime::Tokio, &[]);
    let pf = |bpp: u8, depth: u8, tc: u8, max: [u16; 3], shift: [u8; 3]| {
        let mut m = vec![0, 0, 0, 0, bpp, depth, 0, tc];
        for v in max {
            m.extend_from_slice(&v.to_be_bytes());
        }
        m.extend_from_slice(&shift);
        m.extend_from_slice(&[0, 0, 0]);
        m
    };
    let bad = [
        ("bpp 0", pf(0, 0, 1, [255, 255, 255], [16, 8, 0])),
        ("bpp 24", pf(24, 24, 1, [255, 255, 255], [16, 8, 0])),
        ("bpp 64", pf(64, 24, 1, [255, 255, 255], [16, 8, 0])),
        ("bpp 7", pf(7, 7, 1, [3, 3, 1], [0, 2, 4])),
        ("depth 0", pf(32, 0, 1, [255, 255, 255], [16, 8, 0])),
        ("depth over bpp", pf(16, 24, 1, [31, 63, 31], [11, 5, 0])),
        ("red max 0", pf(32, 24, 1, [0, 255, 255], [16, 8, 0])),
        ("max not 2^n-1", pf(32, 24, 1, [200, 255, 255], [16, 8, 0])),
        ("shift past bpp", pf(16, 16, 1, [31, 63, 255], [11, 5, 12])),
        ("shift 40", pf(32, 24, 1, [255, 255, 255], [40, 8, 0])),
        (
            "overlapping channels",
            pf(32, 24, 1, [255, 255, 255], [0, 0, 0]),
        ),
        ("colour map at 16 bpp", pf(16, 16, 0, [0, 0, 0], [0, 0, 0])),
    ];
    for (what, m) in bad {
        let (mut r, _, _) = running(srv.port);
        expect_close(&mut r, &m, what);
    }
    let other = [
        ("unknown message type 7", vec![7u8, 0, 0, 0]),
        ("unknown message type 200", vec![200, 1, 2, 3]),
        ("2000 encodings", {
            let mut m = vec![2, 0];
            m.extend_from_slice(&2000u16.to_be_bytes());
            m
        }),
        (
            "QEMU message without the extension",
            vec![255, 0, 0, 1, 0, 0, 0, 0x61, 0, 0, 0, 0x1e],
        ),
        (
            "continuous updates without the pseudo-encoding",
            vec![150, 1, 0, 0, 0, 0, 0, 10, 0, 10],
        ),
        (
            "fence payload over 64 bytes",
            vec![248, 0, 0, 0, 0, 0, 0, 0, 65],
        ),
    ];
    for (what, m) in other {
        let (mut r, _, _) = running(srv.port);
        expect_close(&mut r, &m, what);
    }
    // Valid formats are served: RGB565 little endian, and a colour-mapped client.
    let (mut r, w, h) = running(srv.port);
    let mut m = pf(16, 16, 1, [31, 63, 31], [11, 5, 0]);
    m.extend_from_slice(&set_encodings(&[0]));
    m.extend_from_slice(&fbur(false, 0, 0, w, h));
    r.send(&m).unwrap();
    assert_eq!(read_update(&mut r, 2), [(0, 0, w, h, 0)]);
    let (mut r, w, h) = running(srv.port);
    let mut m = pf(8, 8, 0, [0, 0, 0], [0, 0, 0]);
    m.extend_from_slice(&set_encodings(&[0]));
    m.extend_from_slice(&fbur(false, 0, 0, w, h));
    r.send(&m).unwrap();
    // SetColourMapEntries (BGR233 map, 256 entries in chunks), then the update
    let mut entries = 0;
    while entries < 256 {
        let hdr = r.read(6);
        assert_eq!(hdr[0], 1, "SetColourMapEntries");
        let n = usize::from(u16::from_be_bytes([hdr[4], hdr[5]]));
        r.read(6 * n);
        entries += n;
    }
    assert_eq!(read_update(&mut r, 1), [(0, 0, w, h, 0)]);
    healthy(&mut srv, &e);
}

#[test]
fn rectangles_outside_the_framebuffer_are_clipped() {
    let e = env();
    let mut srv = plain_server(&e, Runtime::Threads, &[]);
    let (mut r, w, h) = running(srv.port);
    r.send(&set_encodings(&[0])).unwrap();
    r.send(&fbur(false, w - 10, h - 7, 1000, 1000)).unwrap();
    assert_eq!(read_update(&mut r, 4), [(w - 10, h - 7, 10, 7, 0)]);
    r.send(&fbur(false, 60000, 60000, 65535, 65535)).unwrap();
    assert_eq!(
        read_update(&mut r, 4),
        [],
        "nothing inside: an empty update"
    );
    r.send(&fbur(false, 0, 0, 65535, 65535)).unwrap();
    assert_eq!(read_update(&mut r, 4), [(0, 0, w, h, 0)]);
    // pointer events outside are passed on as they are (logged), not trusted for anything
    r.send(&[5, 1, 0xff, 0xff, 0xff, 0xff]).unwrap();
    r.send(&[4, 1, 0, 0, 0, 0, 0, 0x61]).unwrap();
    srv.proc
        .wait_log("key 'a' (0x0061) down", Duration::from_secs(10));
    srv.proc.wait_log(
        "pointer buttons 0b00000001 at 65535,65535",
        Duration::from_secs(10),
    );
    healthy(&mut srv, &e);
}

// ------------------------------------------------------------------------------ truncation

/// One step of a scripted client.
enum Step {
    /// Send these bytes.
    Send(Vec<u8>),
    /// Read exactly this many bytes.
    Read(usize),
    /// Read the 16-byte challenge and answer it for this password.
    Vnc(&'static [u8]),
    /// Read ServerInit and the name.
    Init,
}

fn client_bytes(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|s| match s {
            Step::Send(b) => b.len(),
            Step::Vnc(_) => 16,
            _ => 0,
        })
        .sum()
}

/// Runs `steps` sending only the first `budget` client bytes, then half-closes and waits for
/// the server to close.
fn run_truncated(port: u16, steps: &[Step], budget: usize, what: &str) {
    let mut r = Raw::connect(port);
    let mut left = budget;
    'steps: for s in steps {
        let bytes = match s {
            Step::Send(b) => b.clone(),
            Step::Read(n) => {
                r.read(*n);
                continue;
            }
            Step::Init => {
                let init = r.read(24);
                r.read(be32(&init[20..]) as usize);
                continue;
            }
            Step::Vnc(pw) => {
                let c: [u8; 16] = r.read(16).try_into().unwrap();
                rfb_core::vnc_response(pw, &c).to_vec()
            }
        };
        let n = bytes.len().min(left);
        r.s.write_all(&bytes[..n]).unwrap();
        left -= n;
        if n < bytes.len() {
            break 'steps;
        }
    }
    let _ = r.s.shutdown(Shutdown::Write);
    let t = Instant::now();
    r.read_to_close();
    assert!(
        t.elapsed() < RAW_TIMEOUT,
        "{what} cut at {budget}: no close"
    );
}

#[test]
fn handshakes_truncated_at_every_byte() {
    use Step::*;
    let e = env();
    let mut srv = plain_server(&e, Runtime::Threads, &[]);
    let session = |v: &[u8], sec: Vec<Step>| {
        let mut s = vec![Read(12), Send(v.to_vec())];
        s.extend(sec);
        s.push(Send(vec![1]));
        s.push(Init);
        let mut m = vec![
            0, 0, 0, 0, 16, 16, 0, 1, 0, 31, 0, 63, 0, 31, 11, 5, 0, 0, 0, 0,
        ];
        m.extend_from_slice(&set_encodings(&[16, 5, 0, EXT_CLIPBOARD, -223]));
        m.extend_from_slice(&fbur(false, 0, 0, 97, 61));
        m.extend_from_slice(&[4, 1, 0, 0, 0, 0, 0, 0x41, 5, 0, 0, 10, 0, 20]);
        m.extend_from_slice(&[6, 0, 0, 0, 0, 0, 0, 3, b'a', b'b', b'c']);
        s.push(Send(m));
        s
    };
    let scripts: Vec<(&str, Vec<Step>)> = vec![
        (
            "None 3.8",
            session(b"RFB 003.008\n", vec![Read(4), Send(vec![1]), Read(4)]),
        ),
        (
            "None 3.7",
            session(b"RFB 003.007\n", vec![Read(4), Send(vec![1])]),
        ),
        // RFB 3.3: the server picks, and VncAuth is the first it can run in 3.3
        (
            "VncAuth 3.3",
            session(b"RFB 003.003\n", vec![Read(4), Vnc(b"secret"), Read(4)]),
        ),
        (
            "VncAuth 3.8",
            session(
                b"RFB 003.008\n",
                vec![Read(4), Send(vec![2]), Vnc(b"secret"), Read(4)],
            ),
        ),
        (
            "VncAuth inside VeNCrypt",
            session(
                b"RFB 003.008\n",
                vec![
                    Read(4),
                    Send(vec![19]),
                    Read(2),
                    Send(vec![0, 2]),
                    Read(14),
                    Send(2u32.to_be_bytes().to_vec()),
                    Vnc(b"secret"),
                    Read(4),
                ],
            ),
        ),
        (
            "VeNCrypt Plain",
            session(
                b"RFB 003.008\n",
                vec![
                    Read(4),
                    Send(vec![19]),
                    Read(2),
                    Send(vec![0, 2]),
                    Read(14),
                    Send(256u32.to_be_bytes().to_vec()),
                    Send({
                        let mut c = 5u32.to_be_bytes().to_vec();
                        c.extend_from_slice(&10u32.to_be_bytes());
                        c.extend_from_slice(b"alicewonderland");
                        c
                    }),
                    Read(4),
                ],
            ),
        ),
    ];
    let mut runs = 0;
    for (what, steps) in &scripts {
        let total = client_bytes(steps);
        for budget in 0..=total {
            run_truncated(srv.port, steps, budget, what);
            runs += 1;
        }
    }
    eprintln!("{runs} truncated sessions");
    // Every complete script really logged in (the credentials were right).
    let log = srv.log();
    assert!(log.contains("authenticated (VeNCrypt Plain)"), "{log}");
    assert!(log.contains("authenticated (VeNCrypt VncAuth)"), "{log}");
    assert!(!log.contains("authentication failed"), "{log}");
    healthy(&mut srv, &e);
}

/// Drives a TLS client handshake over `r`, sending at most `budget` ciphertext bytes; returns
/// how many the full handshake took (when the budget was not reached).
fn tls_client_cut(r: &mut Raw, cfg: &tls_glue::TlsClientConfig, budget: usize) -> Option<usize> {
    use std::io::Read;
    let mut layer = tls_glue::TlsLayer::client(cfg, "localhost").expect("TLS client");
    let mut sent = 0;
    loop {
        let p = layer.pending_transmit();
        let n = p.len().min(budget - sent);
        if r.s.write_all(&p[..n]).is_err() {
            return None;
        }
        sent += n;
        let all = p.len();
        layer.transmit_done(all);
        if n < all || sent == budget && layer.is_handshaking() {
            return None;
        }
        if !layer.is_handshaking() {
            return Some(sent);
        }
        let buf = layer.ciphertext_buffer();
        let k = match r.s.read(buf) {
            Ok(0) | Err(_) => return None,
            Ok(k) => k,
        };
        if layer.commit_ciphertext(k).is_err() {
            return None;
        }
    }
}

/// Up to the VeNCrypt ack of X509None.
fn to_tls(port: u16) -> Raw {
    let mut r = Raw::connect(port);
    assert_eq!(r.hello(), [19]);
    r.send(&[19]).unwrap();
    assert_eq!(r.read(2), [0, 2]);
    r.send(&[0, 2]).unwrap();
    assert_eq!(r.read(6), [0, 1, 0, 0, 1, 4], "ack and [X509None]");
    r.send(&260u32.to_be_bytes()).unwrap();
    assert_eq!(r.read(1), [1], "TLS ack");
    r
}

#[test]
fn tls_handshake_dropped_at_every_byte() {
    let e = env();
    let mut srv = VncServer::start(
        Runtime::Tokio,
        &[
            "--image",
            &e.image,
            "--security",
            "X509None",
            "--tls-creds",
            &e.pki,
            "--tls-verify-peer",
            "yes",
        ],
    );
    let cfg = kvmio_tests::tlsio::client_config(std::path::Path::new(&e.pki));
    // The whole client side of one handshake (ClientHello, then certificate and Finished).
    let mut r = to_tls(srv.port);
    let total = tls_client_cut(&mut r, &cfg, usize::MAX).expect("a complete handshake");
    drop(r);
    for budget in 0..total {
        let mut r = to_tls(srv.port);
        // The client's flight varies by a byte or two between handshakes (an ECDSA
        // signature's DER length): within that slack a cut may still complete.
        let done = tls_client_cut(&mut r, &cfg, budget);
        assert!(
            done.is_none() || budget + 2 >= total,
            "cut at {budget} of {total} completed a handshake of {done:?} bytes"
        );
        let _ = r.s.shutdown(Shutdown::Write);
        let t = Instant::now();
        r.read_to_close();
        assert!(
            t.elapsed() < RAW_TIMEOUT,
            "no close after {budget} TLS bytes"
        );
        if budget % 256 == 0 {
            srv.proc.assert_alive();
        }
    }
    eprintln!("{total} cut points");
    srv.assert_healthy(&["--tls-creds", &e.pki], &e.pic);
}

// ------------------------------------------------------------------------------ resources

#[test]
fn flood_without_reading_keeps_memory_bounded() {
    let e = env();
    let mut srv = VncServer::start(Runtime::Threads, &["--size", "1024x768"]);
    let (mut r, w, h) = running(srv.port);
    r.send(&set_encodings(&[0])).unwrap();
    let mut flood = Vec::new();
    for _ in 0..20_000 {
        flood.extend_from_slice(&fbur(false, 0, 0, w, h));
    }
    // Non-blocking: the server stops reading once its output is stuck.
    r.s.set_nonblocking(true).unwrap();
    let mut at = 0;
    let end = Instant::now() + Duration::from_secs(3);
    while at < flood.len() && Instant::now() < end {
        match r.s.write(&flood[at..]) {
            Ok(n) => at += n,
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
    std::thread::sleep(Duration::from_secs(1));
    let status =
        std::fs::read_to_string(format!("/proc/{}/status", srv.proc.id())).expect("status");
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .expect("VmRSS");
    // One 3 MiB Raw frame is pending at a time; requests are coalesced, not queued.
    assert!(
        rss_kb < 100_000,
        "server RSS {rss_kb} kB after a request flood"
    );
    drop(r);
    srv.proc.assert_alive();
    let _ = e;
}

/// Connections that never authenticate cost no framebuffer: ten of them held at the version
/// exchange against a 3840×2160 desktop (33 MB a framebuffer) leave the server's memory
/// nearly where it was.
#[test]
fn unauthenticated_connections_cost_no_framebuffer() {
    let mut srv = VncServer::start(
        Runtime::Tokio,
        &[
            "--security",
            "None",
            "--size",
            "3840x2160",
            "--max-connections",
            "20",
        ],
    );
    let rss = |pid: u32| -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    };
    let before = rss(srv.proc.id());
    let mut held = Vec::new();
    for _ in 0..10 {
        let mut r = Raw::connect(srv.port);
        assert_eq!(r.read(12), b"RFB 003.008\n");
        held.push(r);
    }
    std::thread::sleep(Duration::from_millis(500));
    let after = rss(srv.proc.id());
    assert!(
        after < before + 20_000,
        "server RSS {before} kB -> {after} kB with 10 connections at the version exchange"
    );
    drop(held);
    srv.proc.assert_alive();
}

#[test]
fn handshake_deadline_and_connection_cap() {
    let e = env();
    let mut srv = plain_server(
        &e,
        Runtime::Threads,
        &["--handshake-timeout", "1", "--max-connections", "2"],
    );
    // An idle client is dropped after the deadline.
    let mut r = Raw::connect(srv.port);
    let t = Instant::now();
    assert_eq!(r.read_to_close(), b"RFB 003.008\n");
    let waited = t.elapsed();
    assert!(
        waited >= Duration::from_millis(900) && waited < Duration::from_secs(10),
        "closed after {waited:?}"
    );
    srv.proc
        .wait_log("handshake timed out", Duration::from_secs(5));
    // Two connections are served; a third is told why it is refused, in the form its RFB
    // version allows (3.8 and 3.7: no security types and a reason; 3.3: type 0 and a reason),
    // and closed.
    let mut a = Raw::connect(srv.port);
    let mut b = Raw::connect(srv.port);
    a.read(12);
    b.read(12);
    let reason = b"too many connections";
    for (n, (version, lead)) in [
        (&b"RFB 003.008\n"[..], &[0u8][..]),
        (b"RFB 003.007\n", &[0u8][..]),
        (b"RFB 003.003\n", &[0u8, 0, 0, 0][..]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut c = Raw::connect(srv.port);
        assert_eq!(c.read(12), b"RFB 003.008\n");
        let mut want = lead.to_vec();
        want.extend((reason.len() as u32).to_be_bytes());
        want.extend(reason);
        let got = expect_close(&mut c, version, "over the cap");
        assert_eq!(got, want, "refusal for {version:?}");
        srv.proc.wait_log_count(
            "refused, 2 connections already",
            n + 1,
            Duration::from_secs(5),
        );
    }
    drop((a, b));
    // The slots free up.
    let end = Instant::now() + Duration::from_secs(10);
    loop {
        let mut d = Raw::connect(srv.port);
        if d.try_read(12).is_some() {
            break;
        }
        assert!(Instant::now() < end, "connection slots never freed");
        std::thread::sleep(Duration::from_millis(100));
    }
    healthy(&mut srv, &e);
}

// ------------------------------------------------------------------------------ our client

/// A one-connection fake server: None handshake (RFB 3.8), then `init` as ServerInit, then
/// `after` once the client's first FramebufferUpdateRequest arrived. Returns the port.
fn fake_server(init: Vec<u8>, after: Vec<u8>) -> (u16, std::thread::JoinHandle<()>) {
    use std::io::Read;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(RAW_TIMEOUT)).unwrap();
        let mut b = [0u8; 12];
        let _ = s.write_all(b"RFB 003.008\n");
        if s.read_exact(&mut b).is_err() {
            return;
        }
        let _ = s.write_all(&[1, 1]);
        let mut one = [0u8; 1];
        let _ = s.read_exact(&mut one);
        let _ = s.write_all(&[0, 0, 0, 0]);
        let _ = s.read_exact(&mut one);
        let _ = s.write_all(&init);
        // SetPixelFormat (20), SetEncodings (4 + 4n), FramebufferUpdateRequest (10)
        let mut head = [0u8; 24];
        if s.read_exact(&mut head).is_err() {
            return;
        }
        let n = usize::from(u16::from_be_bytes([head[22], head[23]]));
        let mut rest = vec![0u8; 4 * n + 10];
        let _ = s.read_exact(&mut rest);
        let _ = s.write_all(&after);
        // wait for the client to hang up
        let mut sink = [0u8; 256];
        while matches!(s.read(&mut sink), Ok(n) if n > 0) {}
    });
    (port, t)
}

fn server_init(w: u16, h: u16, name: &[u8], name_len: u32) -> Vec<u8> {
    let mut m = Vec::new();
    m.extend_from_slice(&w.to_be_bytes());
    m.extend_from_slice(&h.to_be_bytes());
    m.extend_from_slice(&[32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    m.extend_from_slice(&name_len.to_be_bytes());
    m.extend_from_slice(name);
    m
}

fn rect(x: u16, y: u16, w: u16, h: u16, enc: i32) -> Vec<u8> {
    let mut m = Vec::new();
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m.extend_from_slice(&enc.to_be_bytes());
    m
}

#[test]
fn our_client_against_a_hostile_server() {
    let dir = tempdir();
    let ok_init = server_init(64, 64, b"x", 1);
    let update = |rects: &[Vec<u8>]| {
        let mut m = vec![0, 0];
        m.extend_from_slice(&(rects.len() as u16).to_be_bytes());
        for r in rects {
            m.extend_from_slice(r);
        }
        m
    };
    let cases: Vec<(&str, Vec<u8>, Vec<u8>, &str)> = vec![
        (
            "huge framebuffer",
            server_init(65535, 65535, b"", 0),
            vec![],
            "larger than",
        ),
        (
            "huge desktop name",
            server_init(64, 64, b"", u32::MAX),
            vec![],
            "protocol",
        ),
        (
            "Raw rectangle outside",
            ok_init.clone(),
            update(&[[rect(60, 60, 16, 16, 0), vec![0; 16 * 16 * 4]].concat()]),
            "protocol",
        ),
        (
            "Hextile rectangle outside",
            ok_init.clone(),
            update(&[[rect(0, 0, 65535, 65535, 5), vec![2, 0, 0, 0, 0]].concat()]),
            "protocol",
        ),
        (
            "ZRLE with a 4 GiB zlib length",
            ok_init.clone(),
            update(&[[rect(0, 0, 64, 64, 16), vec![0xff; 4]].concat()]),
            "protocol",
        ),
        (
            "ZRLE with garbage zlib data",
            ok_init.clone(),
            update(&[[rect(0, 0, 64, 64, 16), vec![0, 0, 0, 8], vec![0x55; 8]].concat()]),
            "protocol",
        ),
        (
            "CopyRect from outside",
            ok_init.clone(),
            update(&[[rect(0, 0, 8, 8, 1), vec![0xff, 0xf0, 0xff, 0xf0]].concat()]),
            "protocol",
        ),
        (
            "unrequested encoding (Tight)",
            ok_init.clone(),
            update(&[rect(0, 0, 8, 8, 7)]),
            "protocol",
        ),
        (
            "unknown message type",
            ok_init.clone(),
            vec![99, 0, 0, 0],
            "protocol",
        ),
        (
            "colour map past 65536 entries",
            ok_init.clone(),
            [vec![1, 0, 0xff, 0xfa, 0, 10], vec![0; 60]].concat(),
            "protocol",
        ),
        (
            "4 GiB ServerCutText",
            ok_init.clone(),
            vec![3, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
            "protocol",
        ),
        (
            "cursor of 65535 x 65535",
            ok_init.clone(),
            update(&[rect(0, 0, 65535, 65535, -239)]),
            "protocol",
        ),
    ];
    for (what, init, after, msg) in cases {
        eprintln!("case: {what}");
        let (port, t) = fake_server(init, after);
        let out = dir.path().join("hostile.png");
        let o = capture(
            &format!("vnc://127.0.0.1:{port}"),
            &out,
            &["--security", "None", "--timeout", "20"],
        )
        .expect_fail()
        .expect_stderr(&[msg]);
        assert!(!o.stderr.contains("panicked"), "{what}: {}", o.stderr);
        assert!(!out.exists(), "{what}: an image was written");
        t.join().unwrap();
    }
}
