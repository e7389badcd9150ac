//! Figures for docs/BENCHMARKS.md (not run in CI: timings belong in benchmarks, not tests):
//! frames per second delivered and kvmio's CPU per frame, from vivid's moving test pattern
//! captured as YUYV at 1280×720 and 1920×1080, to one and to four viewers asking for ZRLE or
//! Hextile incremental updates, all in the emulated appliance under TCG.
//!
//! `cargo test --release -p kvmio-tests --test appliance_bench -- --ignored --nocapture`

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use kvmio_tests::appliance::Appliance;

const VNC: u16 = 5900;
const SECONDS: u64 = 10;

fn read_exact(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).ok().map(|_| v)
}

/// A viewer that asks for `encoding` and counts complete FramebufferUpdates (ZRLE and
/// Hextile rectangles are skipped by their lengths without decoding: Hextile is not asked
/// with sub-rectangles we parse, so Hextile viewers get Raw-sized tiles counted by walking).
fn viewer(port: u16, encoding: i32, stop: Arc<AtomicBool>, frames: Arc<AtomicU64>) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    read_exact(&mut s, 12).unwrap();
    s.write_all(b"RFB 003.008\n").unwrap();
    let n = read_exact(&mut s, 1).unwrap()[0];
    read_exact(&mut s, usize::from(n)).unwrap();
    s.write_all(&[1]).unwrap();
    read_exact(&mut s, 4).unwrap();
    s.write_all(&[1]).unwrap();
    let init = read_exact(&mut s, 24).unwrap();
    let (w, h) = (
        u16::from_be_bytes([init[0], init[1]]),
        u16::from_be_bytes([init[2], init[3]]),
    );
    let nl = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
    read_exact(&mut s, nl).unwrap();
    let mut m = vec![2, 0, 0, 2];
    m.extend_from_slice(&encoding.to_be_bytes());
    m.extend_from_slice(&(-223i32).to_be_bytes()); // DesktopSize
    s.write_all(&m).unwrap();
    let req = |inc: u8| {
        [
            3,
            inc,
            0,
            0,
            0,
            0,
            (w >> 8) as u8,
            w as u8,
            (h >> 8) as u8,
            h as u8,
        ]
    };
    s.write_all(&req(0)).unwrap();
    while !stop.load(Ordering::Relaxed) {
        let Some(hdr) = read_exact(&mut s, 4) else {
            return;
        };
        assert_eq!(hdr[0], 0);
        let rects = u16::from_be_bytes([hdr[2], hdr[3]]);
        for _ in 0..rects {
            let rh = read_exact(&mut s, 12).unwrap();
            let (rw, rhh) = (
                usize::from(u16::from_be_bytes([rh[4], rh[5]])),
                usize::from(u16::from_be_bytes([rh[6], rh[7]])),
            );
            match i32::from_be_bytes(rh[8..12].try_into().unwrap()) {
                16 => {
                    let l = read_exact(&mut s, 4).unwrap();
                    read_exact(&mut s, u32::from_be_bytes(l.try_into().unwrap()) as usize).unwrap();
                }
                0 => {
                    read_exact(&mut s, rw * rhh * 4).unwrap();
                }
                5 => skip_hextile(&mut s, rw, rhh),
                -223 => {}
                e => panic!("encoding {e}"),
            }
        }
        frames.fetch_add(1, Ordering::Relaxed);
        s.write_all(&req(1)).unwrap();
    }
}

fn skip_hextile(s: &mut TcpStream, w: usize, h: usize) {
    for ty in (0..h).step_by(16) {
        for tx in (0..w).step_by(16) {
            let (tw, th) = ((w - tx).min(16), (h - ty).min(16));
            let sub = read_exact(s, 1).unwrap()[0];
            if sub & 1 != 0 {
                read_exact(s, tw * th * 4).unwrap();
                continue;
            }
            if sub & 2 != 0 {
                read_exact(s, 4).unwrap();
            }
            if sub & 4 != 0 {
                read_exact(s, 4).unwrap();
            }
            if sub & 8 != 0 {
                let n = usize::from(read_exact(s, 1).unwrap()[0]);
                let per = if sub & 16 != 0 { 6 } else { 2 };
                read_exact(s, n * per).unwrap();
            }
        }
    }
}

fn cpu_ticks(a: &mut Appliance, pid: &str) -> u64 {
    let stat = a.run_ok(&["cat", &format!("/proc/{pid}/stat")]);
    let after = stat.rsplit_once(')').unwrap().1;
    let f: Vec<&str> = after.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

#[test]
#[ignore = "a benchmark: run it by hand for docs/BENCHMARKS.md"]
fn capture_to_viewers() {
    let v4l2_ctl = kvmio_tests::tool("v4l2-ctl");
    let mut a = Appliance::boot_with(&[VNC], &[&v4l2_ctl]);
    eprintln!(
        "| capture | viewers | encoding | frames/s per viewer | kvmio CPU ms per delivered frame \
         | updates sent as another viewer's encode |"
    );
    eprintln!("|---|---|---|---|---|---|");
    for (w, h) in [(1280, 720), (1920, 1080)] {
        // vivid's webcam input, its test pattern moving right, at its highest frame rate
        a.run_ok(&["v4l2-ctl", "-d", "/dev/video0", "--set-input=0"]);
        a.run_ok(&[
            "v4l2-ctl",
            "-d",
            "/dev/video0",
            "-c",
            "horizontal_movement=6",
        ]);
        a.run_ok(&[
            "v4l2-ctl",
            "-d",
            "/dev/video0",
            &format!("--set-fmt-video=width={w},height={h},pixelformat=YUYV"),
        ]);
        let intervals = a.run_ok(&[
            "v4l2-ctl",
            "-d",
            "/dev/video0",
            &format!("--list-frameintervals=width={w},height={h},pixelformat=YUYV"),
        ]);
        eprintln!(
            "vivid {w}x{h} frame intervals: {}",
            intervals.replace('\n', " ")
        );
        let server = a.spawn(&[
            "kvmio",
            "vnc",
            "serve",
            "--listen",
            "0.0.0.0:5900",
            "--video",
            "/dev/video0",
            "--video-format",
            "yuyv",
            "--video-size",
            &format!("{w}x{h}"),
        ]);
        a.wait_output(server, "vnc serving", Duration::from_secs(60));
        let pid = a.run_ok(&["pidof", "kvmio"]).trim().to_string();
        let mut copies_before = 0;
        for (viewers, encoding, name) in [
            (1, 16, "ZRLE"),
            (4, 16, "ZRLE"),
            (1, 5, "Hextile"),
            (4, 5, "Hextile"),
        ] {
            let stop = Arc::new(AtomicBool::new(false));
            let frames = Arc::new(AtomicU64::new(0));
            let port = a.port(VNC);
            let threads: Vec<_> = (0..viewers)
                .map(|_| {
                    let (s, f) = (stop.clone(), frames.clone());
                    std::thread::spawn(move || viewer(port, encoding, s, f))
                })
                .collect();
            std::thread::sleep(Duration::from_secs(3));
            let (f0, c0, t0) = (
                frames.load(Ordering::Relaxed),
                cpu_ticks(&mut a, &pid),
                Instant::now(),
            );
            std::thread::sleep(Duration::from_secs(SECONDS));
            let (f1, c1) = (frames.load(Ordering::Relaxed), cpu_ticks(&mut a, &pid));
            let secs = t0.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            for t in threads {
                let _ = t.join();
            }
            // the server logs, per viewer that left, how many updates were another
            // viewer's encode
            std::thread::sleep(Duration::from_secs(1));
            let (o, e) = a.output(server);
            let copies = kvmio_tests::appliance::shared_encodes(&format!("{o}{e}"));
            let shared = copies - copies_before;
            copies_before = copies;
            let delivered = (f1 - f0) as f64;
            let per_viewer = delivered / secs / viewers as f64;
            let cpu_ms = (c1 - c0) as f64 * 10.0 / delivered.max(1.0);
            eprintln!(
                "| {w}×{h} YUYV | {viewers} | {name} | {per_viewer:.1} | {cpu_ms:.1} | {shared} |"
            );
        }
        a.kill(server);
    }
}
