//! The KVM's video end to end in the emulated appliance: vivid's HDMI output node (written by
//! Debian's `v4l2-ctl`) loops back into its HDMI capture node, `kvmio vnc serve --video
//! /dev/video0` captures it, and a viewer on the host (`kvmio vnc capture` through the port
//! forward) sees the frame: exact for RGB24, within a stated bound for YUYV. The capture device
//! going away (vivid unbound) gives the NO SIGNAL card, and frames come back when it returns.

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
    a.run_ok(&[
        "v4l2-ctl",
        "-d",
        "/dev/video0",
        "-c",
        "loop_video=1,osd_text_mode=2",
    ]);
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

#[test]
fn the_viewer_sees_the_captured_frames_and_no_signal() {
    let v4l2_ctl = kvmio_tests::tool("v4l2-ctl");
    let mut a = Appliance::boot_with(&[VNC], &[&v4l2_ctl]);
    let dir = kvmio_tests::tempdir();
    loop_hdmi(&mut a);

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
