//! The KVM's video end to end in the emulated appliance: vivid's HDMI output node (written by
//! Debian's `v4l2-ctl`) loops back into its HDMI capture node, `kvmio vnc serve --video
//! /dev/video0` captures it, and a viewer on the host (`kvmio vnc capture` through the port
//! forward) sees the frame: exact for RGB24, within a stated bound for YUYV. The capture device
//! going away (vivid unbound) gives the NO SIGNAL card, and frames come back when it returns.
//! A source that changes mode (vivid's DV timings controls) resizes a connected viewer's desktop
//! (DesktopSize); one that loses the link shows NO SIGNAL until it returns.

use std::path::Path;
use std::time::{Duration, Instant};

use kvmio_tests::appliance::Appliance;
use kvmio_tests::vnc::{Rgb, read_png, test_picture};

const VNC: u16 = 5900;
/// vivid's default HDMI timings.
const W: usize = 1280;
const H: usize = 720;
/// Largest channel difference accepted for YUYV (our conversion against the test's own
/// BT.601 arithmetic, both on the same 4:2:2 samples: rounding only).
const YUYV_BOUND: i32 = 2;

/// The index of the first input or output whose name contains HDMI.
fn hdmi_index(listing: &str, what: &str) -> String {
    let mut index = None;
    for l in listing.lines() {
        let l = l.trim();
        if l.starts_with(what)
            && let Some((_, n)) = l.split_once(':')
        {
            index = Some(n.split_whitespace().next().unwrap_or("").to_string());
        }
        if l.starts_with("Name") && l.contains("HDMI") {
            return index.expect("an index before the name");
        }
    }
    panic!("no HDMI {what} in:\n{listing}")
}

/// Selects the HDMI input and output and turns on vivid's loop (no on-screen text).
fn loop_hdmi(a: &mut Appliance) {
    let inputs = a.run_ok(&["v4l2-ctl", "-d", "/dev/video0", "--list-inputs"]);
    let outputs = a.run_ok(&["v4l2-ctl", "-d", "/dev/video1", "--list-outputs"]);
    let (i, o) = (hdmi_index(&inputs, "Input"), hdmi_index(&outputs, "Output"));
    a.run_ok(&["v4l2-ctl", "-d", "/dev/video0", &format!("--set-input={i}")]);
    a.run_ok(&[
        "v4l2-ctl",
        "-d",
        "/dev/video1",
        &format!("--set-output={o}"),
    ]);
    set_ctrl(a, "loop_video=1,osd_text_mode=2");
}

/// Starts writing `frame` (raw, `fourcc`) to the output node in a loop.
fn write_frames(a: &mut Appliance, file: &str, fourcc: &str) -> u64 {
    a.spawn(&[
        "v4l2-ctl",
        "-d",
        "/dev/video1",
        &format!("--set-fmt-video-out=width={W},height={H},pixelformat={fourcc}"),
        "--stream-out-mmap=3",
        &format!("--stream-from={file}"),
        "--stream-loop",
    ])
}

fn serve(a: &mut Appliance, args: &[&str]) -> u64 {
    let mut argv = vec!["kvmio", "vnc", "serve", "--listen", "0.0.0.0:5900"];
    argv.extend_from_slice(args);
    let id = a.spawn(&argv);
    a.wait_output(id, "vnc serving", Duration::from_secs(60));
    id
}

fn capture(a: &Appliance, out: &Path) -> Option<Rgb> {
    let url = format!("vnc://127.0.0.1:{}", a.port(VNC));
    let o = kvmio_tests::vnc::capture(&url, out, &["--timeout", "60"]);
    o.ok().then(|| read_png(out))
}

/// Captures until `accept` holds (60 s at most); returns the last capture.
#[track_caller]
fn capture_until(a: &Appliance, dir: &Path, what: &str, accept: impl Fn(&Rgb) -> bool) -> Rgb {
    let end = Instant::now() + Duration::from_secs(90);
    let mut n = 0;
    loop {
        let p = dir.join(format!("{what}-{n}.png"));
        n += 1;
        if let Some(img) = capture(a, &p)
            && accept(&img)
        {
            return img;
        }
        assert!(
            Instant::now() < end,
            "{what}: never seen (last capture {})",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn max_diff(a: &Rgb, b: &Rgb) -> i32 {
    a.data
        .iter()
        .zip(&b.data)
        .map(|(x, y)| (i32::from(*x) - i32::from(*y)).abs())
        .max()
        .unwrap_or(0)
}

/// Limited-range BT.601 YUYV of `pic` (chroma of each pixel pair averaged) and what it shows.
fn yuyv_of(pic: &Rgb) -> (Vec<u8>, Rgb) {
    let mut yuyv = Vec::with_capacity(pic.width * pic.height * 2);
    let mut shown = pic.clone();
    for y in 0..pic.height {
        for x in (0..pic.width).step_by(2) {
            let p = [pic.px(x, y), pic.px(x + 1, y)].map(|c| c.map(f64::from));
            let luma =
                |c: [f64; 3]| 16.0 + (65.481 * c[0] + 128.553 * c[1] + 24.966 * c[2]) / 255.0;
            let avg = [0, 1, 2].map(|i| (p[0][i] + p[1][i]) / 2.0);
            let u = 128.0 + (-37.797 * avg[0] - 74.203 * avg[1] + 112.0 * avg[2]) / 255.0;
            let v = 128.0 + (112.0 * avg[0] - 93.786 * avg[1] - 18.214 * avg[2]) / 255.0;
            let q = |f: f64| f.round().clamp(0.0, 255.0) as u8;
            let (y0, y1, u, v) = (q(luma(p[0])), q(luma(p[1])), q(u), q(v));
            yuyv.extend_from_slice(&[y0, u, y1, v]);
            for (k, yy) in [y0, y1].into_iter().enumerate() {
                let c = 1.164 * (f64::from(yy) - 16.0);
                let (d, e) = (f64::from(u) - 128.0, f64::from(v) - 128.0);
                let rgb = [c + 1.596 * e, c - 0.392 * d - 0.813 * e, c + 2.017 * d];
                let i = (y * pic.width + x + k) * 3;
                for (dst, c) in shown.data[i..i + 3].iter_mut().zip(rgb) {
                    *dst = q(c);
                }
            }
        }
    }
    (yuyv, shown)
}

/// Most pixels the colour of the NO SIGNAL card's background.
fn is_no_signal(img: &Rgb) -> bool {
    let bg = img
        .data
        .chunks_exact(3)
        .filter(|p| *p == [0x20, 0x20, 0x28])
        .count();
    let text = img
        .data
        .chunks_exact(3)
        .filter(|p| *p == [0xe0, 0xe0, 0xe0])
        .count();
    bg * 10 > img.width * img.height * 9 && text > 100
}

/// The appliance with v4l2-ctl, vivid's HDMI loop on, and a scratch directory.
fn boot_vivid() -> (Appliance, kvmio_tests::TempDir) {
    let v4l2_ctl = kvmio_tests::tool("v4l2-ctl");
    let mut a = Appliance::boot_with(&[VNC], &[&v4l2_ctl]);
    loop_hdmi(&mut a);
    (a, kvmio_tests::tempdir())
}

/// Sets a control of the capture node (`NAME=VALUE`).
fn set_ctrl(a: &mut Appliance, ctrl: &str) {
    a.run_ok(&["v4l2-ctl", "-d", "/dev/video0", "-c", ctrl]);
}

#[test]
fn the_viewer_sees_the_captured_frames_and_no_signal() {
    let (mut a, dir) = boot_vivid();

    // RGB24: pixel for pixel
    let pic = test_picture(W, H, 7);
    std::fs::write(a.share().join("frame.rgb"), &pic.data).unwrap();
    let writer = write_frames(&mut a, "/mnt/host/frame.rgb", "RGB3");
    let server = serve(
        &mut a,
        &["--video", "/dev/video0", "--video-format", "rgb24"],
    );
    let got = capture_until(&a, dir.path(), "rgb24", |img| img.data == pic.data);
    assert_eq!((got.width, got.height), (W, H));
    let (_, log) = a.output(server);
    assert!(log.contains("capturing 1280x720 Rgb24"), "{log}");
    a.kill(server);
    a.kill(writer);

    // YUYV: within the bound
    let pic = test_picture(W, H, 8);
    let (yuyv, shown) = yuyv_of(&pic);
    std::fs::write(a.share().join("frame.yuyv"), &yuyv).unwrap();
    let writer = write_frames(&mut a, "/mnt/host/frame.yuyv", "YUYV");
    let server = serve(&mut a, &["--video", "/dev/video0"]);
    let got = capture_until(&a, dir.path(), "yuyv", |img| {
        (img.width, img.height) == (W, H) && max_diff(img, &shown) <= YUYV_BOUND
    });
    eprintln!(
        "YUYV: largest channel difference {}",
        max_diff(&got, &shown)
    );
    let (_, log) = a.output(server);
    assert!(log.contains("Yuyv"), "{log}");

    // the capture device goes away: NO SIGNAL, the server keeps running; it comes back:
    // frames again
    a.kill(writer);
    a.sh("echo vivid.0 > /sys/bus/platform/drivers/vivid/unbind");
    capture_until(&a, dir.path(), "nosignal", is_no_signal);
    a.wait_output(server, "no signal", Duration::from_secs(10));
    a.sh("echo vivid.0 > /sys/bus/platform/drivers/vivid/bind");
    a.wait_output(server, "/dev/video0: signal", Duration::from_secs(60));
    capture_until(&a, dir.path(), "recovered", |img| !is_no_signal(img));
    assert!(
        a.wait(server, Duration::ZERO).is_none(),
        "the server exited"
    );
    a.kill(server);

    // a device that is not there at all: the card, and clear log lines
    let server = serve(
        &mut a,
        &["--video", "/dev/video9", "--video-size", "640x480"],
    );
    let img = capture_until(&a, dir.path(), "missing", is_no_signal);
    assert_eq!((img.width, img.height), (640, 480));
    let (_, log) = a.output(server);
    assert!(log.contains("/dev/video9"), "{log}");
    a.kill(server);
}

/// A viewer that stays connected: None security, Raw pixels and the DesktopSize
/// pseudo-encoding; a reader thread keeps asking for incremental updates of the current size
/// and reports every size the server announces.
struct SizeViewer {
    s: std::net::TcpStream,
    init: (u16, u16),
    sizes: std::sync::mpsc::Receiver<(u16, u16)>,
}

fn read_n(s: &mut std::net::TcpStream, n: usize) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).ok().map(|_| v)
}

fn update_request(incremental: bool, (w, h): (u16, u16)) -> [u8; 10] {
    let (w, h) = (w.to_be_bytes(), h.to_be_bytes());
    [3, u8::from(incremental), 0, 0, 0, 0, w[0], w[1], h[0], h[1]]
}

impl SizeViewer {
    fn connect(port: u16) -> Self {
        use std::io::Write;
        let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        assert_eq!(read_n(&mut s, 12).unwrap(), b"RFB 003.008\n");
        s.write_all(b"RFB 003.008\n").unwrap();
        let n = read_n(&mut s, 1).unwrap()[0];
        let types = read_n(&mut s, usize::from(n)).unwrap();
        assert!(types.contains(&1), "None offered: {types:?}");
        s.write_all(&[1]).unwrap();
        assert_eq!(read_n(&mut s, 4).unwrap(), [0; 4]);
        s.write_all(&[1]).unwrap();
        let init = read_n(&mut s, 24).unwrap();
        let size = (
            u16::from_be_bytes([init[0], init[1]]),
            u16::from_be_bytes([init[2], init[3]]),
        );
        let bytes_pp = usize::from(init[4] / 8);
        let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        read_n(&mut s, name_len).unwrap();
        // SetEncodings: Raw, DesktopSize (-223)
        let mut m = vec![2, 0, 0, 2];
        for e in [0i32, -223] {
            m.extend_from_slice(&e.to_be_bytes());
        }
        s.write_all(&m).unwrap();
        s.write_all(&update_request(false, size)).unwrap();
        let (tx, sizes) = std::sync::mpsc::channel();
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || {
            let mut cur = size;
            while let Some(hdr) = read_n(&mut r, 4) {
                match hdr[0] {
                    0 => {}
                    2 => continue, // Bell: one byte
                    t => panic!("unexpected server message {t}"),
                }
                let rects = u16::from_be_bytes([hdr[2], hdr[3]]);
                for _ in 0..rects {
                    let Some(rh) = read_n(&mut r, 12) else {
                        return;
                    };
                    let (w, h) = (
                        u16::from_be_bytes([rh[4], rh[5]]),
                        u16::from_be_bytes([rh[6], rh[7]]),
                    );
                    match i32::from_be_bytes(rh[8..12].try_into().unwrap()) {
                        0 => {
                            let n = usize::from(w) * usize::from(h) * bytes_pp;
                            if read_n(&mut r, n).is_none() {
                                return;
                            }
                        }
                        -223 => {
                            cur = (w, h);
                            let _ = tx.send(cur);
                        }
                        e => panic!("unexpected encoding {e}"),
                    }
                }
                use std::io::Write;
                if r.write_all(&update_request(true, cur)).is_err() {
                    return;
                }
            }
        });
        Self {
            s,
            init: size,
            sizes,
        }
    }

    /// Waits for the server to announce `want` as the desktop's size.
    #[track_caller]
    fn wait_size(&self, want: (u16, u16)) {
        let end = Instant::now() + Duration::from_secs(90);
        let mut seen = Vec::new();
        while Instant::now() < end {
            if let Ok(s) = self.sizes.recv_timeout(Duration::from_millis(200)) {
                if s == want {
                    return;
                }
                seen.push(s);
            }
        }
        panic!("the desktop never became {want:?} (announced: {seen:?})");
    }
}

impl Drop for SizeViewer {
    fn drop(&mut self) {
        let _ = self.s.shutdown(std::net::Shutdown::Both);
    }
}

/// The index of the first entry of vivid's `dv_timings` menu that starts with `prefix`.
fn dv_preset(a: &mut Appliance, prefix: &str) -> String {
    let menus = a.run_ok(&["v4l2-ctl", "-d", "/dev/video0", "--list-ctrls-menus"]);
    let mut in_dv = false;
    for l in menus.lines() {
        let t = l.trim();
        // control lines are indented with spaces, their menu entries with tabs
        if !l.starts_with('\t') {
            in_dv = t.starts_with("dv_timings ");
            continue;
        }
        if in_dv
            && let Some((i, name)) = t.split_once(": ")
            && name.starts_with(prefix)
        {
            return i.to_string();
        }
    }
    panic!("no {prefix} in vivid's dv_timings menu:\n{menus}")
}

/// The HDMI source changes mode while a viewer is connected: kvmio's capture notices through
/// the receiver's DV timings (QUERY_DV_TIMINGS), locks to the new ones (S_DV_TIMINGS) and the
/// viewer is told the new desktop size; a source that loses the link (ENOLINK) gives the NO
/// SIGNAL card, and frames come back with it. vivid's "DV Timings Signal Mode" control plays
/// the source.
#[test]
fn a_source_mode_change_resizes_the_viewers_desktop() {
    let (mut a, dir) = boot_vivid();
    let server = serve(&mut a, &["--video", "/dev/video0"]);
    let log = a.wait_output(server, "capturing", Duration::from_secs(30));
    assert!(log.contains("(source 1280x720p"), "{log}");
    let viewer = SizeViewer::connect(a.port(VNC));
    assert_eq!(viewer.init, (W as u16, H as u16));

    // the source switches to 1024x768 (vivid: "Selected DV Timings" with that preset)
    let preset = dv_preset(&mut a, "1024x768p60");
    set_ctrl(&mut a, &format!("dv_timings={preset}"));
    set_ctrl(&mut a, "dv_timings_signal_mode=4");
    viewer.wait_size((1024, 768));
    let log = a.wait_output(
        server,
        "source changed to 1024x768p60",
        Duration::from_secs(10),
    );
    assert!(log.contains("capturing 1024x768"), "{log}");
    let img = capture_until(&a, dir.path(), "resized", |img| {
        (img.width, img.height) == (1024, 768) && !is_no_signal(img)
    });
    assert_eq!(img.width, 1024);

    // the link goes (ENOLINK): NO SIGNAL of the last size; it returns: frames again
    set_ctrl(&mut a, "dv_timings_signal_mode=1");
    let img = capture_until(&a, dir.path(), "nolink", is_no_signal);
    assert_eq!((img.width, img.height), (1024, 768));
    a.wait_output(server, "no signal (no link)", Duration::from_secs(10));
    set_ctrl(&mut a, "dv_timings_signal_mode=4");
    capture_until(&a, dir.path(), "relinked", |img| {
        (img.width, img.height) == (1024, 768) && !is_no_signal(img)
    });
    assert!(
        a.wait(server, Duration::ZERO).is_none(),
        "the server exited"
    );
    drop(viewer);
    a.kill(server);
}

/// Two viewers of a moving picture in the same format and encoding (Raw): each captured frame
/// is encoded once, for the first viewer that asks, and the other gets the same bytes (the
/// server's log counts them when a viewer leaves). rfb-core's `shared_updates` tests show the
/// bytes are the ones its own encode would have made.
#[test]
fn viewers_of_the_same_frames_share_one_encode() {
    let (mut a, _dir) = boot_vivid();
    // vivid's webcam input, its test pattern moving right
    a.run_ok(&["v4l2-ctl", "-d", "/dev/video0", "--set-input=0"]);
    set_ctrl(&mut a, "horizontal_movement=6");
    let server = serve(
        &mut a,
        &[
            "--video",
            "/dev/video0",
            "--video-format",
            "yuyv",
            "--video-size",
            "640x360",
        ],
    );
    a.wait_output(server, "capturing 640x360 Yuyv", Duration::from_secs(30));
    let viewers = [
        SizeViewer::connect(a.port(VNC)),
        SizeViewer::connect(a.port(VNC)),
    ];
    for v in &viewers {
        assert_eq!(v.init, (640, 360));
    }
    std::thread::sleep(Duration::from_secs(15));
    drop(viewers);
    let log = a.wait_output(server, "another viewer's encode", Duration::from_secs(20));
    let copies = kvmio_tests::appliance::shared_encodes(&log);
    eprintln!("updates copied from the other viewer's encode: {copies}");
    assert!(copies > 0, "{log}");
    assert!(
        a.wait(server, Duration::ZERO).is_none(),
        "the server exited"
    );
    a.kill(server);
}
