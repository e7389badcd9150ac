//! Many viewers at once: the ClientInit shared flag under each `--share` policy (raw RFB
//! clients, and TigerVNC's `vncviewer -Shared=0` as the real peer asking for exclusive
//! access), and view-only logins (a TigerVNC 16-byte password file's second password, view-only
//! Plain users) whose keys and clicks never reach the input sink.

use std::process::Command;
use std::time::{Duration, Instant};

use kvmio_tests::vnc::*;
use kvmio_tests::{Proc, Runtime, tempdir};

/// Handshake with security type None and ClientInit's `shared`; `None` if the server closes
/// instead of sending ServerInit.
fn none_login(port: u16, shared: bool) -> Option<Raw> {
    let mut r = Raw::connect(port);
    let types = r.hello();
    assert!(types.contains(&1), "None not offered: {types:?}");
    r.send(&[1]).ok()?;
    assert_eq!(r.read(4), [0, 0, 0, 0], "SecurityResult");
    r.send(&[u8::from(shared)]).ok()?;
    let init = r.try_read(24)?;
    let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    r.try_read(name_len)?;
    Some(r)
}

/// A VncAuth login with `password`; returns the SecurityResult word and the connection.
fn vnc_login(port: u16, password: &[u8]) -> (u32, Raw) {
    let mut r = Raw::connect(port);
    let types = r.hello();
    assert!(types.contains(&2), "VncAuth not offered: {types:?}");
    r.send(&[2]).unwrap();
    let challenge: [u8; 16] = r.read(16).try_into().unwrap();
    r.send(&rfb_core::vnc_response(password, &challenge))
        .unwrap();
    let result = u32::from_be_bytes(r.read(4).try_into().unwrap());
    (result, r)
}

/// After ServerInit: a full update request for 1×1 and its answer (the server has handled
/// everything sent before it).
fn round_trip(r: &mut Raw) {
    r.send(&[3, 0, 0, 0, 0, 0, 0, 1, 0, 1]).unwrap();
    let hdr = r.read(4);
    assert_eq!(hdr[0], 0, "FramebufferUpdate");
    let rects = u16::from_be_bytes([hdr[2], hdr[3]]);
    for _ in 0..rects {
        let rh = r.read(12);
        let (w, h) = (
            u16::from_be_bytes([rh[4], rh[5]]),
            u16::from_be_bytes([rh[6], rh[7]]),
        );
        assert_eq!(i32::from_be_bytes(rh[8..12].try_into().unwrap()), 0, "Raw");
        // 32 bpp: the server's native format, the client never changed it
        r.read(usize::from(w) * usize::from(h) * 4);
    }
}

fn key(r: &mut Raw, keysym: u32) {
    for down in [1u8, 0] {
        let k = keysym.to_be_bytes();
        r.send(&[4, down, 0, 0, k[0], k[1], k[2], k[3]]).unwrap();
    }
}

/// Whether the connection is closed by the server within a few seconds.
fn closed(r: &mut Raw) -> bool {
    r.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let mut buf = [0u8; 4096];
    loop {
        match std::io::Read::read(&mut r.s, &mut buf) {
            Ok(0) => return true,
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return true,
            Err(_) => return false,
        }
    }
}

#[test]
fn the_shared_flag_under_each_policy() {
    for rt in [Runtime::Threads, Runtime::Tokio] {
        // allow-exclusive (the default): an exclusive viewer pushes the others out and keeps
        // newcomers out while it watches.
        let mut s = VncServer::start(rt, &["--size", "64x48"]);
        let mut a = none_login(s.port, true).expect("shared viewer a");
        let mut b = none_login(s.port, true).expect("shared viewer b");
        round_trip(&mut a);
        let mut x = none_login(s.port, false).expect("exclusive viewer");
        assert!(
            closed(&mut a),
            "{rt:?}: viewer a stayed after an exclusive login"
        );
        assert!(
            closed(&mut b),
            "{rt:?}: viewer b stayed after an exclusive login"
        );
        round_trip(&mut x);
        assert!(
            none_login(s.port, true).is_none(),
            "{rt:?}: a shared viewer got in next to an exclusive one"
        );
        round_trip(&mut x);
        drop(x);
        s.proc.wait_log(
            "another viewer has exclusive access",
            Duration::from_secs(10),
        );
        // once the exclusive viewer left, everybody may come in again
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut c = loop {
            if let Some(c) = none_login(s.port, true) {
                break c;
            }
            assert!(
                Instant::now() < deadline,
                "{rt:?}: nobody gets in after the exclusive viewer left"
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        round_trip(&mut c);
        s.proc.assert_alive();

        // force-shared: an exclusive request is refused, the others stay
        let mut s = VncServer::start(rt, &["--size", "64x48", "--share", "force-shared"]);
        let mut a = none_login(s.port, true).expect("shared viewer");
        assert!(
            none_login(s.port, false).is_none(),
            "{rt:?}: exclusive admitted"
        );
        round_trip(&mut a);
        s.proc
            .wait_log("exclusive access is not allowed", Duration::from_secs(10));

        // ignore: everybody shares, whatever they ask
        let s = VncServer::start(rt, &["--size", "64x48", "--share", "ignore"]);
        let mut a = none_login(s.port, false).expect("first");
        let mut b = none_login(s.port, false).expect("second");
        round_trip(&mut a);
        round_trip(&mut b);
    }
}

#[test]
fn tigervnc_asking_for_exclusive_access_disconnects_the_others() {
    let dir = tempdir();
    let pic = test_picture(96, 64, 11);
    let img = picture_file(dir.path(), &pic, "desk.png");
    let mut s = VncServer::start(Runtime::Threads, &["--image", img.to_str().unwrap()]);
    let mut a = none_login(s.port, true).expect("shared raw viewer");
    round_trip(&mut a);
    let x = XServer::xvfb(400, 300);
    let mut c = Command::new(vnc_tool("vncviewer"));
    c.env("DISPLAY", x.env())
        .env("HOME", dir.path())
        .args(["-Shared=0", "-SecurityTypes", "None", "-geometry", "+0+0"])
        // the picture is compared pixel for pixel: Tight (the viewer's default) without JPEG
        .arg("-NoJPEG")
        .arg(format!("127.0.0.1::{}", s.port));
    let mut viewer = Proc::spawn("vncviewer -Shared=0", c);
    s.proc.wait_log(
        "exclusive access (other viewers disconnected)",
        Duration::from_secs(30),
    );
    assert!(
        closed(&mut a),
        "the shared viewer stayed after vncviewer -Shared=0"
    );
    viewer.assert_alive();
    // the exclusive viewer really watches: its window shows the picture
    let end = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    while x
        .screenshot(dir.path(), &format!("shot-{n}.png"))
        .find(&pic)
        .is_none()
    {
        viewer.assert_alive();
        assert!(Instant::now() < end, "vncviewer never showed the picture");
        n += 1;
        std::thread::sleep(Duration::from_millis(300));
    }
    viewer.stop();
    s.proc.assert_alive();
}

#[test]
fn view_only_logins_watch_and_never_type() {
    let dir = tempdir();
    // TigerVNC's vncpasswd -f with two lines: the full password, then the view-only one
    let out = kvmio_tests::run_with_input(
        Command::new(vnc_tool("vncpasswd")).arg("-f"),
        Some(b"full1234\nview5678\n"),
    )
    .expect_ok();
    assert_eq!(
        out.stdout.len(),
        16,
        "vncpasswd -f with a view-only password"
    );
    let pwfile = dir.path().join("passwd");
    std::fs::write(&pwfile, &out.stdout).unwrap();
    let users = text_file(dir.path(), "users", "admin:Admin-pass-1");
    let view_users = text_file(dir.path(), "view-users", "guest:Guest-pass-1");
    let mut s = VncServer::start(
        Runtime::Threads,
        &[
            "--size",
            "64x48",
            "--security",
            "VncAuth",
            "--password-file",
            pwfile.to_str().unwrap(),
        ],
    );

    // a real viewer logs in with either password
    for pw in ["full1234", "view5678"] {
        let png = dir.path().join(format!("{pw}.png"));
        gvnccapture(s.port, &png, Some(pw)).expect_ok();
        assert_eq!(read_png(&png).width, 64);
    }
    s.proc
        .wait_log("(VncAuth, view only)", Duration::from_secs(10));

    // the view-only viewer's key never reaches the sink; the full viewer's does
    let (result, mut view) = vnc_login(s.port, b"view5678");
    assert_eq!(result, 0, "view-only login");
    view.send(&[1]).unwrap();
    view.read(24);
    view.read(5); // "kvmio"
    key(&mut view, 0x71); // 'q'
    view.send(&[5, 1, 0, 10, 0, 10]).unwrap(); // a click
    round_trip(&mut view);
    let (result, mut full) = vnc_login(s.port, b"full1234");
    assert_eq!(result, 0, "full login");
    full.send(&[1]).unwrap();
    full.read(29);
    key(&mut full, 0x77); // 'w'
    round_trip(&mut full);
    let log = s
        .proc
        .wait_log("key 'w' (0x0077) up", Duration::from_secs(10));
    assert!(
        !log.contains("key 'q'"),
        "a view-only key was typed:\n{log}"
    );
    assert!(
        !log.contains("pointer buttons 0b00000001"),
        "a view-only click was made:\n{log}"
    );
    // a wrong password is neither
    let (result, _) = vnc_login(s.port, b"nothing1");
    assert_eq!(result, 1, "wrong password");

    s.proc.assert_alive();

    // Plain: a view-only user (through kvmio's own client)
    let mut s = VncServer::start(
        Runtime::Threads,
        &[
            "--size",
            "64x48",
            "--security",
            "Plain",
            "--plain-users",
            users.to_str().unwrap(),
            "--plain-view-users",
            view_users.to_str().unwrap(),
        ],
    );
    for (user, pw, view) in [
        ("admin", "Admin-pass-1", false),
        ("guest", "Guest-pass-1", true),
    ] {
        let pwf = text_file(dir.path(), &format!("{user}.pw"), pw);
        let png = dir.path().join(format!("{user}.png"));
        capture(
            &s.url(),
            &png,
            &[
                "--security",
                "Plain",
                "--username",
                user,
                "--password-file",
                pwf.to_str().unwrap(),
            ],
        )
        .expect_ok();
        if view {
            s.proc
                .wait_log("(VeNCrypt Plain, view only)", Duration::from_secs(10));
        }
    }
    s.proc.assert_alive();
}
