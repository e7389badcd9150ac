//! The Rust side of `bench/rfb/run.sh`: rfb-core's Hextile, ZRLE and Tight encoders (ZRLE and
//! Tight through std-shim's zlib-rs compressor, as `kvmio vnc serve` uses it; `TightJPEG` is
//! Tight for a client asking for JPEG quality level 8) on a 1920×1080 desktop-like frame, full
//! and a 10 % damage update, written to a socket as a server would.
//!
//! `vnc_encode_bench frames DIR` writes the frames both sides encode (`frame-a.raw`,
//! `frame-b.raw`: 32-bit little-endian 0x00RRGGBB, rows without padding; `damage.txt`: the
//! damage rectangles of the update from A to B). `vnc_encode_bench run DIR` encodes them and
//! prints `encoder case fastest_ns median_ns bytes iterations` lines. `vnc_encode_bench sizes` prints the
//! state sizes of the rfb-core server and client.
//!
//! Environment: `BENCH_SECONDS` (time per case, default 3),
//! `BENCH_ONLY=Hextile|ZRLE|Tight|TightJPEG`, `BENCH_CASE=full|text|photo` (one update only),
//! `BENCH_LEVEL` (the compression level the client asks for, default 6),
//! `BENCH_MINIZ=1` (rfb-core's default miniz_oxide compressor instead of zlib-rs),
//! `BENCH_JPEG=auto|libjpeg-turbo|rust` (the JPEG compressor, as `--jpeg-encoder`; default auto).

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant as StdInstant};

use rfb_core::client::Client;
use rfb_core::jpeg::{JpegEncoder, Subsampling};
use rfb_core::server::{Damage, Event, Server, ServerConfig, UpdateSource};
use rfb_core::wire::{Encoding, PixelFormat, Rect, SecurityType};
use rfb_core::{Framebuffer, Instant};
use std_shim::video::convert::convert;
use std_shim::video::v4l2::{Negotiated, PixelFormat as V4lFormat};
use std_shim::vnc::desktop::{Image, NATIVE};
use std_shim::vnc::jpeg::{JpegEncoderChoice, TurboJpegEncoder};
use std_shim::vnc::security::ZlibRsCompressor;

const W: u16 = 1920;
const H: u16 = 1080;

/// x, y, width, height.
type Area = (u16, u16, u16, u16);

/// The damaged areas of the updates from frame A to frame B, each 10.0 % of the screen (a
/// full-width band of 108 rows) redrawn with new content from the same generator (another
/// seed): `text` crosses the windows' text, `photo` also crosses the photo-like area.
const DAMAGE: [(&str, Area); 2] = [
    ("text", (0, 400, 1920, 108)),
    ("photo", (0, 760, 1920, 108)),
];

/// A desktop: a gradient background, six overlapping windows with title bars and lines of
/// anti-aliased "text", and a photo-like noisy area.
fn desktop(seed: u32) -> Vec<u32> {
    let (w, h) = (usize::from(W), usize::from(H));
    let mut px = vec![0u32; w * h];
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    for (i, p) in px.iter_mut().enumerate() {
        let y = i / w;
        *p = 0x0020_4060 + ((y as u32 * 40 / h as u32) << 8);
    }
    for win in 0..6 {
        let (x0, y0) = (60 + win * 250, 40 + win * 120);
        let (ww, wh) = (900, 600);
        for y in y0..(y0 + wh).min(h) {
            for x in x0..(x0 + ww).min(w) {
                px[y * w + x] = if y < y0 + 28 {
                    0x0030_3540
                } else {
                    0x00f8_f8f8
                };
            }
        }
        let mut y = y0 + 40;
        while y + 12 < (y0 + wh).min(h) {
            let mut x = x0 + 10;
            while x + 8 < (x0 + ww - 10).min(w) {
                let glyph = next();
                if glyph % 7 != 0 {
                    for gy in 0..12 {
                        for gx in 0..7 {
                            let bit = (glyph >> ((gy * 7 + gx) % 31)) & 1;
                            if bit == 1 && (gy + gx) % 3 != 0 {
                                let shade = [0x0010_1010, 0x0060_6060, 0x00a0_a0a0]
                                    [((glyph >> gy) % 3) as usize];
                                px[(y + gy) * w + x + gx] = shade;
                            }
                        }
                    }
                }
                x += 8;
            }
            y += 16;
        }
    }
    for y in 700..1000 {
        for x in 1300..1800 {
            let n = next() & 0x0f0f0f;
            px[y * w + x] = (((x as u32) & 0xff) << 16 | ((y as u32) & 0xff) << 8 | 0x80) ^ n;
        }
    }
    px
}

fn bytes(px: &[u32]) -> Vec<u8> {
    px.iter().flat_map(|p| p.to_le_bytes()).collect()
}

/// Frames of the MJPEG stream (`mjpeg-N.jpg`).
const MJPEG_FRAMES: u32 = 8;

/// The 1080p MJPEG stream a capture device would deliver: desktops whose text and photo area
/// change every frame, as JPEG quality 85 with 4:2:2 chroma (what HDMI-to-USB dongles send).
fn write_mjpeg(dir: &Path) {
    let mut enc = TurboJpegEncoder::new().expect("libturbojpeg.so.0 (tests/setup.sh installs it)");
    for k in 0..MJPEG_FRAMES {
        let rgb: Vec<u8> = desktop(10 + k)
            .iter()
            .flat_map(|&p| [(p >> 16) as u8, (p >> 8) as u8, p as u8])
            .collect();
        let mut jpeg = Vec::new();
        enc.encode(&rgb, W, H, 85, Subsampling::Half, &mut jpeg)
            .unwrap();
        std::fs::write(dir.join(format!("mjpeg-{k}.jpg")), jpeg).unwrap();
    }
}

fn write_frames(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    write_mjpeg(dir);
    let a = desktop(1);
    // B: both areas are redrawn with other glyphs and other photo noise.
    let mut b = a.clone();
    let redrawn = desktop(2);
    let w = usize::from(W);
    for &(_, (x, y, dw, dh)) in &DAMAGE {
        for yy in usize::from(y)..usize::from(y + dh) {
            for xx in usize::from(x)..usize::from(x + dw) {
                b[yy * w + xx] = redrawn[yy * w + xx];
            }
        }
    }
    std::fs::write(dir.join("frame-a.raw"), bytes(&a)).unwrap();
    std::fs::write(dir.join("frame-b.raw"), bytes(&b)).unwrap();
    let d: Vec<String> = DAMAGE
        .iter()
        .map(|(case, (x, y, w, h))| format!("{case} {x} {y} {w} {h}"))
        .collect();
    std::fs::write(dir.join("damage.txt"), d.join("\n") + "\n").unwrap();
}

/// A server past the handshake (None, 3.8) whose client asked for `enc` in 32-bit RGB888 (the
/// framebuffer's own format: no translation on either side of the comparison).
fn server_for(enc: Encoding, quality: Option<u8>) -> Server {
    let mut s = Server::new(
        ServerConfig::with_security(&[SecurityType::None], &[]),
        Instant::ZERO,
        [0; 16],
    );
    if std::env::var_os("BENCH_MINIZ").is_none() {
        s.set_zrle_compressor(ZlibRsCompressor::boxed).unwrap();
    }
    let jpeg: JpegEncoderChoice = std::env::var("BENCH_JPEG")
        .as_deref()
        .unwrap_or("auto")
        .parse()
        .unwrap();
    s.set_jpeg_encoder(Some(jpeg.factory().unwrap().0));
    let level: i32 = std::env::var("BENCH_LEVEL")
        .ok()
        .and_then(|l| l.parse().ok())
        .unwrap_or(6);
    let mut input = Vec::new();
    input.extend_from_slice(b"RFB 003.008\n\x01\x01");
    input.extend_from_slice(&[2, 0, 0, 2 + u8::from(quality.is_some())]);
    input.extend_from_slice(&(i32::from(enc) as u32).to_be_bytes());
    input.extend_from_slice(&((-256 + level) as u32).to_be_bytes());
    if let Some(q) = quality {
        input.extend_from_slice(&(i32::from(Encoding::jpeg_quality(q)) as u32).to_be_bytes());
    }
    let mut at = 0;
    let mut out = vec![0u8; 4096];
    while at < input.len() {
        let p = s.handle_input(&input[at..]).unwrap();
        at += p.consumed;
        while s.poll_transmit(&mut out).unwrap().is_some() {}
        while let Some(e) = s.poll_event() {
            if let Event::ClientInit { .. } = e {
                s.server_init(W, H, PixelFormat::RGB888, b"bench").unwrap();
            }
        }
        while s.poll_transmit(&mut out).unwrap().is_some() {}
    }
    s
}

fn request(s: &mut Server, incremental: bool) {
    let mut m = [3, u8::from(incremental), 0, 0, 0, 0, 0, 0, 0, 0];
    m[6..8].copy_from_slice(&W.to_be_bytes());
    m[8..10].copy_from_slice(&H.to_be_bytes());
    let p = s.handle_input(&m).unwrap();
    assert_eq!(p.consumed, 10);
    while s.poll_event().is_some() {}
}

/// Encodes one update into `out` chunks written to `sock`; returns the bytes.
fn encode(
    s: &mut Server,
    fb: Framebuffer<'_>,
    damage: &[Damage],
    out: &mut [u8],
    sock: &mut UnixStream,
) -> usize {
    encode_source(s, &UpdateSource::new(fb, damage), out, sock)
}

/// [`encode`] from a whole [`UpdateSource`].
fn encode_source(
    s: &mut Server,
    src: &UpdateSource<'_>,
    out: &mut [u8],
    sock: &mut UnixStream,
) -> usize {
    let mut total = 0;
    loop {
        let st = s.encode_update(src, out).unwrap();
        sock.write_all(&out[..st.written]).unwrap();
        total += st.written;
        if st.done {
            return total;
        }
    }
}

/// One end of a socket whose other end a thread drains, as a client would (it returns the
/// bytes it read when the socket is closed).
fn drained_socket() -> (UnixStream, std::thread::JoinHandle<u64>) {
    let (tx, mut rx) = UnixStream::pair().unwrap();
    let reader = std::thread::spawn(move || {
        let mut buf = vec![0u8; 1 << 20];
        let mut n = 0u64;
        while let Ok(k) = rx.read(&mut buf) {
            if k == 0 {
                break;
            }
            n += k as u64;
        }
        n
    });
    (tx, reader)
}

/// Time per case (`BENCH_SECONDS`, default 3).
fn budget() -> Duration {
    Duration::from_secs(
        std::env::var("BENCH_SECONDS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(3),
    )
}

/// `(fastest, median)` in nanoseconds.
fn stats(mut v: Vec<Duration>) -> (u128, u128) {
    v.sort();
    (v[0].as_nanos(), v[v.len() / 2].as_nanos())
}

fn run(dir: &Path) {
    let a = std::fs::read(dir.join("frame-a.raw")).expect("frame-a.raw (run `frames` first)");
    let b = std::fs::read(dir.join("frame-b.raw")).expect("frame-b.raw");
    let stride = usize::from(W) * 4;
    let fa = Framebuffer::new(&a, W, H, stride, PixelFormat::RGB888).unwrap();
    let fbb = Framebuffer::new(&b, W, H, stride, PixelFormat::RGB888).unwrap();
    let full = [Damage::Changed(Rect::new(0, 0, W, H))];
    let (mut tx, reader) = drained_socket();
    let mut out = vec![0u8; 256 * 1024];
    let budget = budget();
    let only = std::env::var("BENCH_ONLY").ok();
    let case_only = std::env::var("BENCH_CASE").ok();
    let wanted = |case: &str| case_only.as_deref().is_none_or(|c| c == case);
    for (name, enc, quality) in [
        ("Hextile", Encoding::Hextile, None),
        ("ZRLE", Encoding::Zrle, None),
        ("Tight", Encoding::Tight, None),
        ("TightJPEG", Encoding::Tight, Some(8)),
    ] {
        if only.as_deref().is_some_and(|o| o != name) {
            continue;
        }
        // Full frame: a fresh connection each time (a new client's first update).
        let mut size = 0;
        if wanted("full") {
            let mut times = Vec::new();
            let start = StdInstant::now();
            while times.len() < 5 || (start.elapsed() < budget && times.len() < 200) {
                let mut s = server_for(enc, quality);
                request(&mut s, false);
                let t = StdInstant::now();
                size = encode(&mut s, fa, &full, &mut out, &mut tx);
                times.push(t.elapsed());
            }
            let n = times.len();
            let (min, med) = stats(times);
            println!("{name} full {min} {med} {size} {n}");
        }
        // 10 % damage: the first update after the full frame on a fresh connection (the zlib
        // stream of ZRLE holds the full frame, as in a real session).
        for &(case, (x, y, w, h)) in DAMAGE.iter().filter(|d| wanted(d.0)) {
            let part = [Damage::Changed(Rect::new(x, y, w, h))];
            let mut times = Vec::new();
            let start = StdInstant::now();
            while times.len() < 5 || (start.elapsed() < budget && times.len() < 200) {
                let mut s = server_for(enc, quality);
                request(&mut s, false);
                encode(&mut s, fa, &full, &mut out, &mut tx);
                request(&mut s, true);
                let t = StdInstant::now();
                size = encode(&mut s, fbb, &part, &mut out, &mut tx);
                times.push(t.elapsed());
            }
            let n = times.len();
            let (min, med) = stats(times);
            println!("{name} {case} {min} {med} {size} {n}");
        }
    }
    drop(tx);
    reader.join().unwrap();
}

/// CPU time of the calling thread.
fn thread_cpu() -> Duration {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes the timespec it is given.
    #[allow(unsafe_code)]
    let r = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut t) };
    assert_eq!(r, 0);
    Duration::new(t.tv_sec as u64, t.tv_nsec as u32)
}

/// The MJPEG stream to a Tight viewer that asked for JPEG quality level 8, as `kvmio vnc
/// serve --video` handles a capture device's frames: each decoded for the framebuffer
/// (`video::convert`, what every viewer's damage and other encodings come from), then sent as
/// it came (pass-through) or encoded anew. Prints `mjpeg MODE frames_per_s cpu_ns_per_frame
/// bytes_per_frame frames` lines.
fn mjpeg(dir: &Path) {
    let frames: Vec<Vec<u8>> = (0..MJPEG_FRAMES)
        .map(|k| std::fs::read(dir.join(format!("mjpeg-{k}.jpg"))).expect("run `frames` first"))
        .collect();
    let f = Negotiated {
        format: V4lFormat::Mjpeg,
        width: u32::from(W),
        height: u32::from(H),
        stride: 0,
        size_image: 0,
    };
    let (mut tx, reader) = drained_socket();
    let budget = budget();
    let full = [Damage::Changed(Rect::new(0, 0, W, H))];
    let mut out = vec![0u8; 256 * 1024];
    for (mode, passthrough, jpeg) in [
        ("pass-through", true, JpegEncoderChoice::Auto),
        (
            "re-encode-libjpeg-turbo",
            false,
            JpegEncoderChoice::LibjpegTurbo,
        ),
        ("re-encode-rust", false, JpegEncoderChoice::Rust),
    ] {
        let mut s = server_for(Encoding::Tight, Some(8));
        s.set_jpeg_encoder(Some(jpeg.factory().unwrap().0));
        let mut img = Image::new(W, H);
        let (mut n, mut bytes) = (0u64, 0usize);
        let (start, cpu) = (StdInstant::now(), thread_cpu());
        while n < 5 || start.elapsed() < budget {
            convert(&f, &frames[n as usize % frames.len()], &mut img).unwrap();
            let fb = Framebuffer::new(&img.data, W, H, usize::from(W) * 4, NATIVE).unwrap();
            let mut src = UpdateSource::new(fb, &full);
            if passthrough {
                src.jpeg = img.jpeg.as_deref();
            }
            request(&mut s, true);
            bytes += encode_source(&mut s, &src, &mut out, &mut tx);
            n += 1;
        }
        let (wall, cpu) = (start.elapsed(), thread_cpu() - cpu);
        let stats = s.tight_stats();
        assert_eq!(stats.jpeg_passthrough > 0, passthrough, "{mode}: {stats:?}");
        println!(
            "mjpeg {mode} {:.1} {} {} {n}",
            n as f64 / wall.as_secs_f64(),
            cpu.as_nanos() / u128::from(n),
            bytes / n as usize
        );
    }
    drop(tx);
    reader.join().unwrap();
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    match args.get(1).map(String::as_str) {
        Some("frames") => write_frames(Path::new(args.get(2).expect("DIR"))),
        Some("run") => run(Path::new(args.get(2).expect("DIR"))),
        Some("mjpeg") => mjpeg(Path::new(args.get(2).expect("DIR"))),
        Some("sizes") => {
            println!("Server {}", std::mem::size_of::<Server>());
            println!("Client {}", std::mem::size_of::<Client>());
        }
        _ => {
            eprintln!("usage: vnc_encode_bench frames DIR | run DIR | mjpeg DIR | sizes");
            std::process::exit(2);
        }
    }
}
