//! Harness for the VNC tests: `kvmio vnc serve` / `kvmio vnc capture`, the third-party peers
//! (gvnccapture, gtk-vnc's gvncviewer and TigerVNC vncviewer under Xvfb, Xvnc, QEMU's VNC
//! server), images (PNG, PPM, pixel-exact comparison, finding a picture inside a screenshot)
//! and raw RFB helpers.
//!
//! A missing peer is a test failure naming the Debian package (tests/setup.sh installs them).

use std::fs::File;
use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::{LISTEN_DEADLINE, Proc, Runtime, TempDir, kvmio, tempdir};

// ------------------------------------------------------------------------------ programs

/// The Debian package shipping a VNC peer program.
fn vnc_package(program: &str) -> &'static str {
    match program {
        "gvnccapture" | "gvncviewer" => "gvncviewer",
        "vncviewer" => "tigervnc-viewer",
        "Xvnc" => "tigervnc-standalone-server",
        "vncpasswd" => "tigervnc-tools",
        "Xvfb" => "xvfb",
        "import" | "display" => "imagemagick",
        "script" => "bsdutils",
        "qemu-system-x86_64" => {
            "qemu-system-x86 (from bookworm-backports: apt-get install -t bookworm-backports qemu-system-x86)"
        }
        "useradd" | "chpasswd" => "passwd",
        _ => "(unknown package)",
    }
}

/// The path of a VNC peer program; panics naming its Debian package if it is missing.
pub fn vnc_tool(program: &str) -> PathBuf {
    for d in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let p = Path::new(d).join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "peer program `{program}` is not installed: install the Debian package {} \
         (tests/setup.sh installs every peer)",
        vnc_package(program)
    )
}

// ------------------------------------------------------------------------------ images

/// An 8-bit RGB picture.
#[derive(Clone, PartialEq, Eq)]
pub struct Rgb {
    /// Width.
    pub width: usize,
    /// Height.
    pub height: usize,
    /// `width * height * 3` bytes.
    pub data: Vec<u8>,
}

impl std::fmt::Debug for Rgb {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Rgb({}x{})", self.width, self.height)
    }
}

impl Rgb {
    /// The pixel at (x, y).
    pub fn px(&self, x: usize, y: usize) -> [u8; 3] {
        let i = (y * self.width + x) * 3;
        [self.data[i], self.data[i + 1], self.data[i + 2]]
    }

    /// The `w` × `h` part at (x, y).
    pub fn crop(&self, x: usize, y: usize, w: usize, h: usize) -> Rgb {
        assert!(x + w <= self.width && y + h <= self.height, "crop outside");
        let mut data = Vec::with_capacity(w * h * 3);
        for row in y..y + h {
            let s = (row * self.width + x) * 3;
            data.extend_from_slice(&self.data[s..s + w * 3]);
        }
        Rgb {
            width: w,
            height: h,
            data,
        }
    }

    /// Writes an RGB PNG.
    pub fn save_png(&self, path: &Path) {
        let f = File::create(path).unwrap_or_else(|e| panic!("create {}: {e}", path.display()));
        let mut enc = png::Encoder::new(
            std::io::BufWriter::new(f),
            self.width as u32,
            self.height as u32,
        );
        enc.set_color(png::ColorType::Rgb);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().expect("PNG header");
        w.write_image_data(&self.data).expect("PNG data");
        w.finish().expect("PNG end");
    }

    /// Where `needle` appears in this picture (top-left corner), found by its first row and
    /// then checked whole.
    pub fn find(&self, needle: &Rgb) -> Option<(usize, usize)> {
        if needle.width > self.width || needle.height > self.height {
            return None;
        }
        let first = &needle.data[..needle.width * 3];
        for y in 0..=self.height - needle.height {
            let row = &self.data[y * self.width * 3..(y + 1) * self.width * 3];
            for x in 0..=self.width - needle.width {
                if &row[x * 3..(x + needle.width) * 3] == first
                    && self.crop(x, y, needle.width, needle.height) == *needle
                {
                    return Some((x, y));
                }
            }
        }
        None
    }
}

/// Reads a PNG of any colour type as RGB (palettes and grey expanded, 16-bit cut to 8 bits,
/// alpha dropped).
pub fn read_png(path: &Path) -> Rgb {
    let f = File::open(path).unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    let mut dec = png::Decoder::new(BufReader::new(f));
    dec.set_transformations(png::Transformations::EXPAND | png::Transformations::STRIP_16);
    let mut r = dec
        .read_info()
        .unwrap_or_else(|e| panic!("{} is not a PNG: {e}", path.display()));
    let mut buf = vec![0u8; r.output_buffer_size().expect("PNG size")];
    let info = r.next_frame(&mut buf).expect("PNG frame");
    let (ct, _) = r.output_color_type();
    let ch = match ct {
        png::ColorType::Grayscale => 1,
        png::ColorType::GrayscaleAlpha => 2,
        png::ColorType::Rgb => 3,
        png::ColorType::Rgba => 4,
        png::ColorType::Indexed => panic!("palette not expanded"),
    };
    let (w, h) = (info.width as usize, info.height as usize);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let row = &buf[y * info.line_size..];
        for x in 0..w {
            let p = &row[x * ch..x * ch + ch];
            if ch >= 3 {
                data.extend_from_slice(&p[..3]);
            } else {
                data.extend_from_slice(&[p[0], p[0], p[0]]);
            }
        }
    }
    Rgb {
        width: w,
        height: h,
        data,
    }
}

/// Reads a binary PPM (P6, maxval 255), as QEMU's `screendump` writes.
pub fn read_ppm(path: &Path) -> Rgb {
    let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let mut fields = Vec::new();
    let mut i = 0;
    while fields.len() < 4 {
        while i < bytes.len() && bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        if bytes.get(i) == Some(&b'#') {
            while i < bytes.len() && bytes[i] != b'\n' {
                i += 1;
            }
            continue;
        }
        let s = i;
        while i < bytes.len() && !bytes[i].is_ascii_whitespace() {
            i += 1;
        }
        assert!(i > s, "truncated PPM header in {}", path.display());
        fields.push(String::from_utf8_lossy(&bytes[s..i]).into_owned());
    }
    i += 1; // the single whitespace after maxval
    assert_eq!(fields[0], "P6", "{} is not a binary PPM", path.display());
    assert_eq!(fields[3], "255", "PPM maxval");
    let (w, h): (usize, usize) = (fields[1].parse().unwrap(), fields[2].parse().unwrap());
    assert_eq!(bytes.len() - i, w * h * 3, "PPM data length");
    Rgb {
        width: w,
        height: h,
        data: bytes[i..].to_vec(),
    }
}

/// Panics unless the pictures are identical, naming the first differing pixel and how many
/// differ (and saving both next to `keep` for inspection, if given).
#[track_caller]
pub fn assert_same_image(actual: &Rgb, expected: &Rgb, what: &str) {
    assert_eq!(
        (actual.width, actual.height),
        (expected.width, expected.height),
        "{what}: sizes differ"
    );
    if actual.data == expected.data {
        return;
    }
    let mut first = None;
    let mut count = 0;
    for y in 0..actual.height {
        for x in 0..actual.width {
            if actual.px(x, y) != expected.px(x, y) {
                count += 1;
                first.get_or_insert((x, y));
            }
        }
    }
    let (x, y) = first.expect("a difference");
    panic!(
        "{what}: {count} of {} pixels differ; first at ({x},{y}): {:?} instead of {:?}",
        actual.width * actual.height,
        actual.px(x, y),
        expected.px(x, y)
    );
}

/// A test picture with distinctive content: colour gradients, flat blocks, fine stripes and a
/// noisy patch (so every encoder sub-mode runs), different for each `seed`.
pub fn test_picture(width: usize, height: usize, seed: u32) -> Rgb {
    let mut rng = seed.wrapping_mul(2_654_435_761) | 1;
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height {
        for x in 0..width {
            rng ^= rng << 13;
            rng ^= rng >> 17;
            rng ^= rng << 5;
            let p = if x > width * 3 / 4 && y > height * 3 / 4 {
                [(rng >> 8) as u8, (rng >> 16) as u8, (rng >> 24) as u8]
            } else if (x / 24 + y / 16) % 5 == 0 {
                [0x20, 0x90, 0xd0]
            } else if y % 7 == 0 {
                [0xf0, (x * 3) as u8, 0x10]
            } else {
                [
                    (x * 255 / width.max(1)) as u8,
                    (y * 255 / height.max(1)) as u8,
                    ((x + y + seed as usize) % 256) as u8,
                ]
            };
            data.extend_from_slice(&p);
        }
    }
    Rgb {
        width,
        height,
        data,
    }
}

// ------------------------------------------------------------------------------ kvmio

/// A running `kvmio vnc serve`.
pub struct VncServer {
    /// The process.
    pub proc: Proc,
    /// Its TCP port on 127.0.0.1.
    pub port: u16,
}

fn listen_port(proc: &mut Proc, label: &str) -> u16 {
    let prefix = format!("kvmio: {label} serving");
    let log = proc.wait_log(&prefix, LISTEN_DEADLINE);
    log.lines()
        .filter(|l| l.starts_with(&prefix))
        .find_map(|l| {
            l.rsplit_once(" on 127.0.0.1:")
                .and_then(|(_, p)| p.trim().parse::<u16>().ok())
        })
        .unwrap_or_else(|| panic!("no 127.0.0.1 port for {label} in the server log:\n{log}"))
}

impl VncServer {
    /// Starts `kvmio vnc serve --runtime RT --listen 127.0.0.1:0 ARGS…` and waits for the
    /// `kvmio: vnc serving … on 127.0.0.1:PORT` line.
    pub fn start(rt: Runtime, args: &[&str]) -> Self {
        Self::start_on(rt, 0, args)
    }

    /// The same on a given port (0: any).
    pub fn start_on(rt: Runtime, port: u16, args: &[&str]) -> Self {
        let mut cmd = kvmio();
        cmd.args(["vnc", "serve", "--runtime", rt.arg(), "--listen"])
            .arg(format!("127.0.0.1:{port}"))
            .args(args);
        let mut proc = Proc::spawn(&format!("kvmio vnc serve ({})", rt.arg()), cmd);
        let port = listen_port(&mut proc, "vnc");
        Self { proc, port }
    }

    /// The 127.0.0.1 port of the server's listener `label` (`vnc`, `vnc-websocket`), from its
    /// `kvmio: LABEL serving … on 127.0.0.1:PORT` line.
    pub fn port_of(&mut self, label: &str) -> u16 {
        listen_port(&mut self.proc, label)
    }

    /// `vnc://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("vnc://127.0.0.1:{}", self.port)
    }

    /// The log so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Panics unless the server still runs, never panicked, and serves a fresh capture
    /// (`capture_args` as for [`capture`]) equal to `expect`.
    #[track_caller]
    pub fn assert_healthy(&mut self, capture_args: &[&str], expect: &Rgb) {
        self.proc.assert_alive();
        let dir = tempdir();
        let out = dir.path().join("healthy.png");
        capture(&self.url(), &out, capture_args).expect_ok();
        assert_same_image(&read_png(&out), expect, "capture after the test");
        self.proc.assert_alive();
        let log = self.log();
        assert!(!log.contains("panicked"), "the server panicked:\n{log}");
    }
}

/// `kvmio vnc capture URL OUT ARGS…`.
pub fn capture(url: &str, out: &Path, args: &[&str]) -> crate::Out {
    crate::run(kvmio().args(["vnc", "capture", url]).arg(out).args(args))
}

/// A picture written as PNG into `dir` for `--image`; returns the path.
pub fn picture_file(dir: &Path, pic: &Rgb, name: &str) -> PathBuf {
    let p = dir.join(name);
    pic.save_png(&p);
    p
}

/// Writes `pic` as a JPEG of `quality` with `subsampling` (rfb-core's pure-Rust encoder) to
/// `dir/name`; returns the path.
pub fn jpeg_file(
    dir: &Path,
    pic: &Rgb,
    quality: u8,
    subsampling: rfb_core::jpeg::Subsampling,
    name: &str,
) -> PathBuf {
    use rfb_core::jpeg::{JpegEncoder, RustJpegEncoder};
    let mut jpeg = Vec::new();
    RustJpegEncoder
        .encode(
            &pic.data,
            pic.width as u16,
            pic.height as u16,
            quality,
            subsampling,
            &mut jpeg,
        )
        .expect("encode the JPEG");
    let p = dir.join(name);
    std::fs::write(&p, &jpeg).expect("write file");
    p
}

/// Writes `text` (plus a newline) to `dir/name`; returns the path.
pub fn text_file(dir: &Path, name: &str, text: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{text}\n")).expect("write file");
    p
}

/// TigerVNC's `vncpasswd -f` output for `password` in `dir/name`; returns the path.
pub fn vncpasswd_file(dir: &Path, name: &str, password: &str) -> PathBuf {
    let out = crate::run_with_input(
        Command::new(vnc_tool("vncpasswd")).arg("-f"),
        Some(format!("{password}\n").as_bytes()),
    )
    .expect_ok();
    assert_eq!(out.stdout.len(), 8, "vncpasswd -f output");
    let p = dir.join(name);
    std::fs::write(&p, &out.stdout).expect("write passwd");
    p
}

// ------------------------------------------------------------------------------ gvnccapture

/// gvnccapture reads its certificates from `~/.pki` of the **passwd** home directory (it
/// ignores `$HOME`). This guard serializes every test that installs certificates there (a lock
/// file, across processes too), backs up whatever files it replaces and restores them on drop.
pub struct GvncPki {
    _lock: File,
    installed: Vec<(PathBuf, Option<Vec<u8>>)>,
    created_dirs: Vec<PathBuf>,
}

/// The home directory of the current user from the passwd database.
pub fn passwd_home() -> PathBuf {
    let uid = rustix::process::getuid().as_raw();
    let passwd = std::fs::read_to_string("/etc/passwd").expect("/etc/passwd");
    for line in passwd.lines() {
        let f: Vec<&str> = line.split(':').collect();
        if f.len() >= 6 && f[2].parse::<u32>().ok() == Some(uid) {
            return PathBuf::from(f[5]);
        }
    }
    panic!("uid {uid} has no entry in /etc/passwd");
}

impl GvncPki {
    /// Installs `ca-cert.pem` (and the client certificate and key, if `client`) from `pki`.
    pub fn install(pki: &Path, client: bool) -> Self {
        let lock = File::create(std::env::temp_dir().join("kvmio-tests-gvnc-pki.lock"))
            .expect("lock file");
        rustix::fs::flock(&lock, rustix::fs::FlockOperation::LockExclusive).expect("flock");
        let pki_dir = passwd_home().join(".pki");
        assert!(
            !Path::new("/etc/pki/CA/cacert.pem").exists(),
            "/etc/pki/CA/cacert.pem exists: gtk-vnc would use it instead of ~/.pki"
        );
        let mut g = Self {
            _lock: lock,
            installed: Vec::new(),
            created_dirs: Vec::new(),
        };
        let mut files = vec![("ca-cert.pem", "CA/cacert.pem")];
        if client {
            files.push(("client-cert.pem", "gvnccapture/clientcert.pem"));
            files.push(("client-key.pem", "gvnccapture/private/clientkey.pem"));
        }
        for (src, dst) in files {
            let dst = pki_dir.join(dst);
            let parent = dst.parent().expect("parent").to_path_buf();
            let mut missing = Vec::new();
            let mut d = parent.as_path();
            while !d.exists() {
                missing.push(d.to_path_buf());
                d = d.parent().expect("parent");
            }
            std::fs::create_dir_all(&parent).expect("mkdir ~/.pki");
            g.created_dirs.extend(missing);
            let old = std::fs::read(&dst).ok();
            g.installed.push((dst.clone(), old));
            std::fs::copy(pki.join(src), &dst)
                .unwrap_or_else(|e| panic!("copy {src} to {}: {e}", dst.display()));
        }
        g
    }
}

impl Drop for GvncPki {
    fn drop(&mut self) {
        for (path, old) in self.installed.drain(..).rev() {
            match old {
                Some(bytes) => {
                    let _ = std::fs::write(&path, bytes);
                }
                None => {
                    let _ = std::fs::remove_file(&path);
                }
            }
        }
        // deepest first; only directories this guard created, and only if empty
        self.created_dirs
            .sort_by_key(|d| std::cmp::Reverse(d.components().count()));
        for d in &self.created_dirs {
            let _ = std::fs::remove_dir(d);
        }
    }
}

/// Runs `gvnccapture 127.0.0.1:DISPLAY OUT` against `port` (≥ 5900: gvnccapture only takes
/// display numbers). With a password, gvnccapture reads it from a terminal only, so it runs
/// under `script` and the password is typed after the `Password:` prompt.
pub fn gvnccapture(port: u16, out: &Path, password: Option<&str>) -> crate::Out {
    assert!(port >= 5900, "gvnccapture needs a port of 5900 or more");
    let target = format!("127.0.0.1:{}", port - 5900);
    let gv = vnc_tool("gvnccapture");
    let Some(password) = password else {
        let mut c = Command::new(gv);
        c.env_remove("DISPLAY").arg(&target).arg(out);
        return crate::run(&mut c);
    };
    let cmdline = format!(
        "{} {} {}",
        gv.display(),
        target,
        out.display().to_string().replace(' ', "\\ ")
    );
    let mut child = Command::new(vnc_tool("script"))
        .args(["-qec", &cmdline, "/dev/null"])
        .env_remove("DISPLAY")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let mut stdin = child.stdin.take().expect("stdin");
    let mut stdout = child.stdout.take().expect("stdout");
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let reader = std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        loop {
            match stdout.read(&mut buf) {
                Ok(0) | Err(_) => return,
                Ok(n) => {
                    if tx.send(buf[..n].to_vec()).is_err() {
                        return;
                    }
                }
            }
        }
    });
    let mut text = Vec::new();
    let end = Instant::now() + crate::COMMAND_DEADLINE;
    let mut typed = false;
    loop {
        match rx.recv_timeout(Duration::from_millis(50)) {
            Ok(b) => text.extend_from_slice(&b),
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
        }
        if !typed && String::from_utf8_lossy(&text).contains("Password:") {
            // the terminal is in no-echo mode once the prompt is out
            std::thread::sleep(Duration::from_millis(100));
            stdin
                .write_all(format!("{password}\n").as_bytes())
                .expect("type password");
            typed = true;
        }
        if Instant::now() > end {
            let _ = child.kill();
            break;
        }
    }
    drop(stdin);
    let status = child.wait().expect("wait");
    let _ = reader.join();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    crate::Out {
        cmd: format!("script -qec {cmdline:?} /dev/null (password typed: {typed})"),
        status,
        stdout: text,
        stderr,
    }
}

// ------------------------------------------------------------------------------ X servers

/// A free X display number (no lock file, no socket), at least `from`.
pub fn free_display(from: u32) -> u32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = from + NEXT.fetch_add(1, Ordering::SeqCst) + (std::process::id() % 50) * 7;
        if !Path::new(&format!("/tmp/.X{n}-lock")).exists()
            && !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists()
        {
            return n;
        }
    }
}

/// Waits until the X server of display `n` accepts connections on its Unix socket.
fn wait_x(n: u32, proc: &mut Proc) {
    let sock = format!("/tmp/.X11-unix/X{n}");
    let end = Instant::now() + LISTEN_DEADLINE;
    loop {
        if UnixStream::connect(&sock).is_ok() {
            return;
        }
        proc.assert_alive();
        assert!(Instant::now() < end, "X display :{n} did not come up");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A running X server (Xvfb or Xvnc) on display `:n`.
pub struct XServer {
    /// The process.
    pub proc: Proc,
    /// The display number.
    pub display: u32,
}

impl XServer {
    /// `Xvfb :N -screen 0 WxHx24 -nolisten tcp`.
    pub fn xvfb(width: u32, height: u32) -> Self {
        for _ in 0..5 {
            let n = free_display(120);
            let mut c = Command::new(vnc_tool("Xvfb"));
            c.arg(format!(":{n}"))
                .args(["-screen", "0", &format!("{width}x{height}x24")])
                .args(["-nolisten", "tcp", "-noreset"]);
            let mut proc = Proc::spawn(&format!("Xvfb :{n}"), c);
            std::thread::sleep(Duration::from_millis(50));
            if proc.exit_status().is_some() && proc.log().contains("already active") {
                continue;
            }
            wait_x(n, &mut proc);
            return Self { proc, display: n };
        }
        panic!("no free X display for Xvfb");
    }

    /// `Xvnc :N -rfbport PORT ARGS…` (geometry, depth 24, 127.0.0.1 only).
    pub fn xvnc(width: u32, height: u32, args: &[&str]) -> (Self, u16) {
        for _ in 0..5 {
            let n = free_display(160);
            let port = crate::free_port();
            let mut c = Command::new(vnc_tool("Xvnc"));
            c.arg(format!(":{n}"))
                .args(["-geometry", &format!("{width}x{height}"), "-depth", "24"])
                .args(["-interface", "127.0.0.1", "-rfbport", &port.to_string()])
                .args(["-nolisten", "tcp", "-noreset"])
                .args(args);
            let mut proc = Proc::spawn(&format!("Xvnc :{n}"), c);
            std::thread::sleep(Duration::from_millis(50));
            if proc.exit_status().is_some() {
                let log = proc.log();
                if log.contains("already active") || log.contains("in use") {
                    continue;
                }
                panic!("Xvnc exited at once:\n{log}");
            }
            wait_x(n, &mut proc);
            crate::wait_port(port, &mut proc);
            return (Self { proc, display: n }, port);
        }
        panic!("no free X display for Xvnc");
    }

    /// `DISPLAY=:N`.
    pub fn env(&self) -> String {
        format!(":{}", self.display)
    }

    /// A screenshot of the root window (`import -window root`).
    pub fn screenshot(&self, dir: &Path, name: &str) -> Rgb {
        let p = dir.join(name);
        crate::run(
            Command::new(vnc_tool("import"))
                .args(["-display", &self.env(), "-window", "root"])
                .arg(&p),
        )
        .expect_ok();
        read_png(&p)
    }

    /// Paints the root window with `pic` (so the display shows known pixels; `pic` must have
    /// the screen's size): the picture is written as PPM and set as the root background with
    /// ImageMagick's `display -window root` (which exits with 1 even when it worked, so the
    /// screen is checked instead).
    pub fn paint_root(&self, dir: &Path, pic: &Rgb) {
        let p = dir.join("root.ppm");
        let mut bytes = format!("P6\n{} {}\n255\n", pic.width, pic.height).into_bytes();
        bytes.extend_from_slice(&pic.data);
        std::fs::write(&p, bytes).expect("write ppm");
        let out = crate::run(
            Command::new(vnc_tool("display"))
                .args(["-display", &self.env(), "-window", "root"])
                .arg(&p),
        );
        let shot = self.screenshot(dir, "painted.png");
        assert!(
            shot == *pic,
            "display -window root did not paint the root window ({}): {}",
            out.status,
            out.stderr
        );
    }
}

// ------------------------------------------------------------------------------ QEMU

/// QEMU's built-in VNC server (`-device VGA -display none -vnc …`), with a QMP socket.
pub struct Qemu {
    /// The process.
    pub proc: Proc,
    /// VNC TCP port.
    pub port: u16,
    qmp: PathBuf,
    _dir: TempDir,
}

impl Qemu {
    /// Starts QEMU with `-vnc 127.0.0.1:N<vnc_opts>` and extra `args` (e.g. the tls-creds
    /// object). `vnc_opts` starts with a comma or is empty.
    pub fn start(vnc_opts: &str, args: &[&str]) -> Self {
        let dir = tempdir();
        let qmp = dir.path().join("qmp.sock");
        for _ in 0..5 {
            let port = crate::free_port();
            let mut c = Command::new(vnc_tool("qemu-system-x86_64"));
            c.args(["-nodefaults", "-machine", "pc,accel=tcg", "-m", "64"])
                .args(["-device", "VGA", "-display", "none"])
                .args(args)
                .arg("-vnc")
                .arg(format!("127.0.0.1:{}{vnc_opts}", port - 5900))
                .arg("-qmp")
                .arg(format!("unix:{},server=on,wait=off", qmp.display()));
            let mut proc = Proc::spawn("qemu-system-x86_64", c);
            let end = Instant::now() + LISTEN_DEADLINE;
            while !crate::is_listening(port) {
                if proc.exit_status().is_some() {
                    break;
                }
                assert!(Instant::now() < end, "QEMU did not listen:\n{}", proc.log());
                std::thread::sleep(Duration::from_millis(20));
            }
            if proc.exit_status().is_some() {
                if proc.log().contains("in use") {
                    continue;
                }
                panic!("QEMU exited:\n{}", proc.log());
            }
            return Self {
                proc,
                port,
                qmp,
                _dir: dir,
            };
        }
        panic!("QEMU could not get a port");
    }

    /// Waits for SeaBIOS' text screen (720 × 400 with something printed), then stops the guest.
    pub fn boot_and_stop(&self, dir: &Path) {
        let end = Instant::now() + Duration::from_secs(60);
        let mut n = 0;
        loop {
            let shot = self.screendump(dir, &format!("boot-{n}"));
            n += 1;
            let lit = shot
                .data
                .chunks(3)
                .filter(|p| p.iter().any(|&c| c > 0x80))
                .count();
            if (shot.width, shot.height) == (720, 400) && lit > 500 {
                break;
            }
            assert!(
                Instant::now() < end,
                "no SeaBIOS text screen in 60 s ({}x{})",
                shot.width,
                shot.height
            );
            std::thread::sleep(Duration::from_millis(300));
        }
        self.qmp(&[r#"{"execute":"stop"}"#]);
    }

    /// Runs QMP commands (JSON), returning each `return` value; panics on an `error`.
    pub fn qmp(&self, cmds: &[&str]) -> Vec<serde_json::Value> {
        let end = Instant::now() + LISTEN_DEADLINE;
        let s = loop {
            match UnixStream::connect(&self.qmp) {
                Ok(s) => break s,
                Err(_) if Instant::now() < end => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => panic!("QMP socket: {e}"),
            }
        };
        s.set_read_timeout(Some(Duration::from_secs(60))).ok();
        let mut r = BufReader::new(s.try_clone().expect("clone"));
        let mut w = s;
        let mut line = String::new();
        r.read_line(&mut line).expect("QMP greeting");
        let mut out = Vec::new();
        for cmd in std::iter::once(r#"{"execute":"qmp_capabilities"}"#).chain(cmds.iter().copied())
        {
            w.write_all(cmd.as_bytes()).expect("QMP write");
            w.write_all(b"\n").expect("QMP write");
            loop {
                line.clear();
                r.read_line(&mut line).expect("QMP read");
                let v: serde_json::Value = serde_json::from_str(&line).expect("QMP JSON");
                if v.get("event").is_some() {
                    continue;
                }
                if let Some(e) = v.get("error") {
                    panic!("QMP {cmd} failed: {e}");
                }
                out.push(v["return"].clone());
                break;
            }
        }
        out.remove(0);
        out
    }

    /// `screendump` into `dir/name.ppm`, read back.
    pub fn screendump(&self, dir: &Path, name: &str) -> Rgb {
        let p = dir.join(format!("{name}.ppm"));
        self.qmp(&[&format!(
            r#"{{"execute":"screendump","arguments":{{"filename":{}}}}}"#,
            serde_json::Value::String(p.display().to_string())
        )]);
        read_ppm(&p)
    }
}

// ------------------------------------------------------------------------------ raw RFB

/// How long raw reads wait.
pub const RAW_TIMEOUT: Duration = Duration::from_secs(20);

/// A raw TCP connection to an RFB server.
pub struct Raw {
    /// The socket.
    pub s: TcpStream,
}

impl Raw {
    /// Connects to 127.0.0.1:`port`.
    pub fn connect(port: u16) -> Self {
        let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        s.set_read_timeout(Some(RAW_TIMEOUT)).expect("timeout");
        s.set_nodelay(true).ok();
        Self { s }
    }

    /// Sends bytes (a reset by the server counts as sent: it may have closed already).
    pub fn send(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.s.write_all(b)
    }

    /// Reads exactly `n` bytes.
    pub fn read(&mut self, n: usize) -> Vec<u8> {
        let mut v = vec![0u8; n];
        self.s
            .read_exact(&mut v)
            .unwrap_or_else(|e| panic!("reading {n} bytes: {e}"));
        v
    }

    /// Reads exactly `n` bytes, or `None` if the connection ends first.
    pub fn try_read(&mut self, n: usize) -> Option<Vec<u8>> {
        let mut v = vec![0u8; n];
        self.s.read_exact(&mut v).ok().map(|_| v)
    }

    /// Reads until the server closes; returns what arrived. Panics on a timeout.
    #[track_caller]
    pub fn read_to_close(&mut self) -> Vec<u8> {
        let mut v = Vec::new();
        let mut buf = [0u8; 65536];
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return v,
                Ok(n) => {
                    v.extend_from_slice(&buf[..n]);
                    assert!(v.len() < 256 << 20, "server keeps sending");
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e)
                    if matches!(
                        e.kind(),
                        ErrorKind::ConnectionReset | ErrorKind::ConnectionAborted
                    ) =>
                {
                    return v;
                }
                Err(e) => panic!("the server did not close the connection: {e}"),
            }
        }
    }

    /// Version exchange and security type list (RFB 3.8): returns the offered types.
    pub fn hello(&mut self) -> Vec<u8> {
        assert_eq!(self.read(12), b"RFB 003.008\n");
        self.send(b"RFB 003.008\n").expect("send version");
        let n = self.read(1)[0];
        assert!(n > 0, "no security types offered");
        self.read(usize::from(n))
    }

    /// A None handshake up to ServerInit (shared); returns (width, height).
    pub fn none_session(&mut self) -> (u16, u16) {
        let types = self.hello();
        assert!(types.contains(&1), "None not offered: {types:?}");
        self.send(&[1]).expect("choose None");
        assert_eq!(self.read(4), [0, 0, 0, 0], "SecurityResult");
        self.send(&[1]).expect("ClientInit");
        let init = self.read(24);
        let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        self.read(name_len);
        (
            u16::from_be_bytes([init[0], init[1]]),
            u16::from_be_bytes([init[2], init[3]]),
        )
    }
}

// ------------------------------------------------------------------------------ PAM user

/// The system user Xvnc's Plain authentication checks through PAM (`/etc/pam.d/tigervnc`,
/// pam_unix): a dedicated account without a home or login shell, created by tests/setup.sh
/// (or here, when running as root).
pub const PAM_USER: &str = "kvmio-vnc";
/// Its password.
pub const PAM_PASSWORD: &str = "Plain-Test-1";

/// Makes sure [`PAM_USER`] exists with [`PAM_PASSWORD`].
pub fn ensure_pam_user() {
    let exists = std::fs::read_to_string("/etc/passwd")
        .expect("/etc/passwd")
        .lines()
        .any(|l| l.split(':').next() == Some(PAM_USER));
    let root = rustix::process::getuid().is_root();
    if !root {
        assert!(
            exists,
            "the test user {PAM_USER} is missing: run tests/setup.sh as root (it creates it)"
        );
        return;
    }
    if !exists {
        crate::run(
            Command::new(vnc_tool("useradd"))
                .args([
                    "--system",
                    "--no-create-home",
                    "--shell",
                    "/usr/sbin/nologin",
                ])
                .arg(PAM_USER),
        )
        .expect_ok();
    }
    crate::run_with_input(
        &mut Command::new(vnc_tool("chpasswd")),
        Some(format!("{PAM_USER}:{PAM_PASSWORD}\n").as_bytes()),
    )
    .expect_ok();
}

/// Peak signal-to-noise ratio between two pictures of the same size, in dB.
pub fn psnr(a: &Rgb, b: &Rgb) -> f64 {
    assert_eq!((a.width, a.height), (b.width, b.height));
    let se: f64 = a
        .data
        .iter()
        .zip(&b.data)
        .map(|(&x, &y)| (f64::from(x) - f64::from(y)).powi(2))
        .sum();
    if se == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0f64 * 255.0 / (se / a.data.len() as f64)).log10()
}
