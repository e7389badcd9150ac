//! The Tight encoding against real peers:
//! * TigerVNC 1.12 `vncviewer` under Xvfb against `kvmio vnc serve`: lossless Tight
//!   (`-NoJPEG`) shows the served image pixel for pixel; with a JPEG quality the image is there
//!   within a PSNR bound, and the server's log says which sub-encodings went out;
//! * gtk-vnc 1.3 `gvncviewer` under Xvfb (it asks for Tight with JPEG quality 5; gvnccapture
//!   asks for ZRLE, Hextile, RRE and Raw only, never Tight): the few-colour half of the image
//!   exact, the photo half within a PSNR bound;
//! * `kvmio vnc capture --encodings tight` against TigerVNC's `Xvnc` (the root window painted
//!   with a test picture) equals a Raw capture of the same server, and with `--quality` is
//!   near it but not equal (JPEG decoded); against QEMU's VNC server it equals the screendump.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kvmio_tests::vnc::*;
use kvmio_tests::{Proc, Runtime, tempdir};

/// A photo-like picture: smooth colour ramps with a little noise.
fn photo(width: usize, height: usize) -> Rgb {
    let mut rng = 0x1234_5678u32;
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let n = |k: u32| ((rng >> k) % 5) as i32 - 2;
            let c = |v: usize, k: u32| (v as i32 + n(k)).clamp(0, 255) as u8;
            data.extend_from_slice(&[
                c(x * 200 / width + 30, 0),
                c(y * 180 / height + 40, 8),
                c((x + y) * 100 / (width + height) + 90, 16),
            ]);
        }
    }
    Rgb {
        width,
        height,
        data,
    }
}

/// A picture with few colours (4 levels a channel): sent with palettes, never as JPEG.
fn few_colours(width: usize, height: usize, seed: u32) -> Rgb {
    let mut p = test_picture(width, height, seed);
    for v in &mut p.data {
        *v = (*v / 64) * 85;
    }
    p
}

/// `top` above `bottom` (same width).
fn stack(top: &Rgb, bottom: &Rgb) -> Rgb {
    assert_eq!(top.width, bottom.width);
    let mut data = top.data.clone();
    data.extend_from_slice(&bottom.data);
    Rgb {
        width: top.width,
        height: top.height + bottom.height,
        data,
    }
}

/// The numbers of the server's last "Tight rectangles: …" line, by kind.
fn tight_counts(log: &str) -> Vec<(String, u64)> {
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.split("Tight rectangles: ").nth(1))
        .unwrap_or_else(|| panic!("no Tight rectangles in the server log:\n{log}"));
    line.split(", ")
        .map(|part| {
            let (n, kind) = part.trim().split_once(' ').expect("count and kind");
            (kind.to_string(), n.parse().expect("count"))
        })
        .collect()
}

fn count(counts: &[(String, u64)], kind: &str) -> u64 {
    counts
        .iter()
        .find(|(k, _)| k == kind)
        .map(|(_, n)| *n)
        .unwrap_or_else(|| panic!("no {kind} in {counts:?}"))
}

/// Screenshots `x` until `check` accepts one (30 s), with `viewer` alive throughout.
fn until_shown(
    x: &XServer,
    dir: &Path,
    viewer: &mut Proc,
    what: &str,
    mut check: impl FnMut(&Rgb) -> Option<(usize, usize)>,
) -> (usize, usize) {
    let end = Instant::now() + Duration::from_secs(30);
    let mut n = 0;
    loop {
        viewer.assert_alive();
        let shot = x.screenshot(dir, &format!("{what}-{n}.png"));
        n += 1;
        if let Some(at) = check(&shot) {
            return at;
        }
        assert!(
            Instant::now() < end,
            "{what}: the picture never appeared (last screenshot {}); viewer log:\n{}",
            dir.join(format!("{what}-{}.png", n - 1)).display(),
            viewer.log()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

fn tigervnc(x: &XServer, dir: &Path, port: u16, args: &[&str], what: &str) -> Proc {
    let mut c = Command::new(vnc_tool("vncviewer"));
    c.env("DISPLAY", x.env())
        .env("HOME", dir)
        .args(["-SecurityTypes", "None", "-AutoSelect=0", "-FullColor"])
        .args(["-PreferredEncoding", "Tight", "-geometry", "+0+0"])
        .args(["-Log", "*:stderr:30,DecodeManager:stderr:100"])
        .args(args)
        .arg(format!("127.0.0.1::{port}"));
    Proc::spawn(&format!("vncviewer ({what})"), c)
}

#[test]
fn tigervnc_viewer_decodes_our_tight() {
    let dir = tempdir();
    let pic = test_picture(320, 200, 5);
    let image = picture_file(dir.path(), &pic, "pic.png")
        .display()
        .to_string();
    let x = XServer::xvfb(800, 600);

    // Lossless: the picture exactly.
    let mut srv = VncServer::start(Runtime::Threads, &["--image", &image]);
    let mut viewer = tigervnc(&x, dir.path(), srv.port, &["-NoJPEG"], "lossless");
    let at = until_shown(&x, dir.path(), &mut viewer, "lossless", |s| s.find(&pic));
    let log = srv.proc.wait_log("encoding Tight", Duration::from_secs(10));
    assert!(
        log.contains("encoding Tight, compression level 2, no JPEG"),
        "{log}"
    );
    viewer.stop();
    let log = srv
        .proc
        .wait_log("Tight rectangles:", Duration::from_secs(10));
    let c = tight_counts(&log);
    assert_eq!(count(&c, "JPEG"), 0, "{c:?}");
    assert!(
        count(&c, "full colour") + count(&c, "gradient") > 0,
        "the picture's ramps and noise need full colour: {c:?}"
    );
    srv.proc.assert_alive();

    // JPEG (quality level 6): the picture at the same place, within a bound.
    let mut srv = VncServer::start(Runtime::Threads, &["--image", &image]);
    let mut viewer = tigervnc(&x, dir.path(), srv.port, &["-QualityLevel", "6"], "jpeg");
    let mut best = 0.0;
    until_shown(&x, dir.path(), &mut viewer, "jpeg", |s| {
        if s.width < at.0 + pic.width || s.height < at.1 + pic.height {
            return None;
        }
        let q = psnr(&s.crop(at.0, at.1, pic.width, pic.height), &pic);
        best = f64::max(best, q);
        (q >= 26.0).then_some(at)
    });
    eprintln!("TigerVNC viewer, JPEG quality level 6: PSNR {best:.1} dB");
    let log = srv.proc.wait_log("encoding Tight", Duration::from_secs(10));
    assert!(log.contains("JPEG quality 70"), "{log}");
    viewer.assert_alive();
    viewer.stop();
    let log = srv
        .proc
        .wait_log("Tight rectangles:", Duration::from_secs(10));
    assert!(count(&tight_counts(&log), "JPEG") > 0, "{log}");
    let vlog = viewer.log();
    assert!(
        !vlog.to_lowercase().contains("error") && !vlog.contains("Exception"),
        "the viewer reported a problem:\n{vlog}"
    );
    srv.proc.assert_alive();
}

#[test]
fn gtk_vnc_viewer_decodes_our_tight() {
    let dir = tempdir();
    // The server's pieces are 64 rows high: each half is its own pieces.
    let top = few_colours(512, 128, 3);
    let bottom = photo(512, 128);
    let pic = stack(&top, &bottom);
    let image = picture_file(dir.path(), &pic, "pic.png")
        .display()
        .to_string();
    let x = XServer::xvfb(800, 600);
    let mut srv = VncServer::start(Runtime::Threads, &["--image", &image]);
    let mut c = Command::new(vnc_tool("gvncviewer"));
    c.env("DISPLAY", x.env())
        .env("HOME", dir.path())
        .env("NO_AT_BRIDGE", "1")
        .arg(format!("127.0.0.1:{}", srv.port - 5900));
    assert!(srv.port > 5900);
    let mut viewer = Proc::spawn("gvncviewer", c);
    let mut quality = 0.0;
    let at = until_shown(&x, dir.path(), &mut viewer, "gvnc", |s| {
        let (x0, y0) = s.find(&top)?;
        if s.height < y0 + pic.height {
            return None;
        }
        quality = psnr(&s.crop(x0, y0 + 128, 512, 128), &bottom);
        (quality >= 30.0).then_some((x0, y0))
    });
    eprintln!("gvncviewer: picture at {at:?}, photo half PSNR {quality:.1} dB");
    // gtk-vnc asks for JPEG quality level 5.
    let log = srv.proc.wait_log("encoding Tight", Duration::from_secs(10));
    assert!(log.contains("JPEG quality 60"), "{log}");
    viewer.stop();
    let log = srv
        .proc
        .wait_log("Tight rectangles:", Duration::from_secs(10));
    let c = tight_counts(&log);
    assert!(count(&c, "JPEG") > 0, "{c:?}");
    assert!(count(&c, "indexed") + count(&c, "mono") > 0, "{c:?}");
    srv.proc.assert_alive();
}

/// `kvmio vnc capture` with the given encodings; the picture and the capture's output.
fn capture_with(url: &str, dir: &Path, name: &str, args: &[&str]) -> (Rgb, String) {
    let out = dir.join(format!("{name}.png"));
    let o = capture(url, &out, args).expect_ok();
    (read_png(&out), o.text())
}

#[test]
fn our_client_decodes_xvnc_tight() {
    let dir = tempdir();
    let (x, port) = XServer::xvnc(400, 300, &["-SecurityTypes", "None"]);
    let mut x = x;
    let mut pic = test_picture(400, 300, 9);
    // A photo-like band too (Xvnc sends such areas as JPEG when asked for a quality).
    let ph = photo(400, 100);
    pic.data[200 * 400 * 3..].copy_from_slice(&ph.data);
    x.paint_root(dir.path(), &pic);
    let url = format!("vnc://127.0.0.1:{port}");
    let (raw, text) = capture_with(&url, dir.path(), "raw", &["--encodings", "raw"]);
    assert!(text.contains("Raw"), "{text}");
    assert_same_image(&raw, &pic, "Raw capture of Xvnc");
    // Lossless Tight (no quality level: TigerVNC sends no JPEG).
    let (tight, text) = capture_with(&url, dir.path(), "tight", &["--encodings", "tight"]);
    assert!(
        text.contains(" Tight") && !text.contains("Raw"),
        "Xvnc did not answer in Tight: {text}"
    );
    assert_same_image(&tight, &raw, "Tight capture of Xvnc");
    // Tight with JPEG: close to the picture, not equal to it.
    let (jpeg, text) = capture_with(
        &url,
        dir.path(),
        "tight-jpeg",
        &["--encodings", "tight", "--quality", "8"],
    );
    assert!(text.contains(" Tight"), "{text}");
    let q = psnr(&jpeg, &raw);
    eprintln!("Xvnc Tight JPEG quality level 8: PSNR {q:.1} dB");
    assert!(
        q.is_finite(),
        "the quality-level capture is exact: no JPEG came"
    );
    assert!(q >= 30.0, "PSNR {q:.1} dB");
    x.proc.assert_alive();
}

#[test]
fn our_client_decodes_qemu_tight() {
    let dir = tempdir();
    let q = Qemu::start("", &[]);
    // SeaBIOS' text screen, then the guest stopped so the screen stays as it is.
    q.boot_and_stop(dir.path());
    let url = format!("vnc://127.0.0.1:{}", q.port);
    let dump = q.screendump(dir.path(), "dump");
    let (tight, text) = capture_with(
        &url,
        dir.path(),
        "qemu-tight",
        &["--security", "None", "--encodings", "tight"],
    );
    assert!(
        text.contains(" Tight"),
        "QEMU did not answer in Tight: {text}"
    );
    assert_same_image(&tight, &dump, "Tight capture of QEMU");
}

/// JPEG pass-through: `--image photo.jpg` (a frame that already is a JPEG, as an MJPEG capture
/// gives) reaches a client that takes Tight JPEG as those very bytes. Our client decodes them
/// with the same decoder the server used for everybody else, so the Tight capture equals the
/// Raw one pixel for pixel, and the server counts the frame as passed through, not encoded.
#[test]
fn a_jpeg_frame_passes_through() {
    let dir = tempdir();
    let pic = photo(320, 240);
    let file = jpeg_file(
        dir.path(),
        &pic,
        85,
        rfb_core::jpeg::Subsampling::Quarter,
        "photo.jpg",
    );
    let mut s = VncServer::start(Runtime::Threads, &["--image", file.to_str().unwrap()]);
    let raw = dir.path().join("raw.png");
    capture(&s.url(), &raw, &["--encodings", "raw"]).expect_ok();
    let raw = read_png(&raw);
    assert!(psnr(&raw, &pic) > 30.0, "the server decoded the JPEG");
    let tight = dir.path().join("tight.png");
    let o = capture(
        &s.url(),
        &tight,
        &["--encodings", "tight", "--quality", "6"],
    )
    .expect_ok();
    assert_same_image(&read_png(&tight), &raw, "Tight JPEG pass-through");
    let log = s
        .proc
        .wait_log("JPEG frames passed through", Duration::from_secs(10));
    let c = tight_counts(&log);
    assert_eq!(count(&c, "JPEG frames passed through"), 1, "{log}");
    assert_eq!(count(&c, "JPEG"), 0, "{log}");
    eprintln!("{}", o.text());
    // without a quality the client gets no JPEG: the pixels, encoded losslessly
    let lossless = dir.path().join("lossless.png");
    capture(&s.url(), &lossless, &["--encodings", "tight"]).expect_ok();
    assert_same_image(&read_png(&lossless), &raw, "Tight without JPEG");
    s.proc.assert_alive();
}
