//! Harness for the cross-crate NBD interop and security tests.
//!
//! The tests run the real `kvmio` binary against real third-party programs from Debian packages
//! (qemu-utils, libnbd-bin, python3-libnbd, nbdkit, gnutls-bin), over 127.0.0.1 only. This
//! crate provides what every test file needs:
//!
//! * [`kvmio_bin`]: the `kvmio` binary (`KVMIO_BIN`, else `target/release/kvmio`, else
//!   `target/debug/kvmio` next to the test executable; `tests/run.sh` builds the release one);
//! * [`Proc`]: a child process that is killed on drop, with its stderr captured to a file and
//!   printed when the test fails;
//! * [`run`] and [`Out`]: one-shot commands with a deadline;
//! * [`free_port`], [`wait_port`], [`start_on_free_port`]: ports, polled with a deadline;
//! * [`KvmioServer`]: `kvmio nbd serve` on a port of its own choosing (`--listen 127.0.0.1:0`);
//! * [`Target`]: an NBD endpoint and the right arguments for each peer (libnbd URIs,
//!   `qemu-img`/`qemu-io` `--object tls-creds-x509 … --image-opts …`);
//! * [`pki`] (`kvmio creds generate`) and [`certtool_pki`] (the certtool recipe);
//! * test images ([`random_bytes`], [`sparse_image`]) and exact byte comparison
//!   ([`assert_same_bytes`]);
//! * [`raw`]: a hand-driven NBD client for crafted bytes, and [`tlsio`]: a blocking TLS stream
//!   over `tls_glue::TlsLayer` for it.
//!
//! A missing peer program is a test failure that names the Debian package to install, never a
//! skip.

pub mod appliance;
pub mod browser;
pub mod faultfs;
pub mod faults;
pub mod raw;
pub mod tlsio;
pub mod vnc;
pub mod web;

use std::collections::HashSet;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::net::TcpListener;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

pub use tempfile::TempDir;

/// How long a one-shot command may run before the test fails.
pub const COMMAND_DEADLINE: Duration = Duration::from_secs(120);
/// How long a server may take to start listening.
pub const LISTEN_DEADLINE: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------------------ binaries

/// The `kvmio` binary: `$KVMIO_BIN`, else `target/release/kvmio`, else `target/debug/kvmio`
/// in the target directory holding this test executable. Panics with instructions if absent.
pub fn kvmio_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Some(p) = std::env::var_os("KVMIO_BIN") {
            let p = PathBuf::from(p);
            assert!(p.is_file(), "KVMIO_BIN={} is not a file", p.display());
            return p;
        }
        let exe = std::env::current_exe().expect("current_exe");
        for dir in exe.ancestors().skip(1) {
            for profile in ["release", "debug"] {
                let p = dir.join(profile).join("kvmio");
                if p.is_file() {
                    warn_if_stale(&p);
                    return p;
                }
            }
        }
        panic!(
            "the kvmio binary was not found (looked for release/kvmio and debug/kvmio in the \
             directories above {}): build it with `cargo build --release -p kvmio` \
             (tests/run.sh does) or set KVMIO_BIN",
            exe.display()
        )
    })
    .clone()
}

/// Prints a warning (once) if a source file of the crates behind `kvmio` is newer than the
/// binary: the tests would exercise old code (`cargo build --release -p kvmio`).
fn warn_if_stale(bin: &Path) {
    fn newest(dir: &Path) -> Option<std::time::SystemTime> {
        let mut best = None;
        for e in std::fs::read_dir(dir).ok()?.flatten() {
            let p = e.path();
            let t = if p.is_dir() {
                newest(&p)
            } else {
                e.metadata().and_then(|m| m.modified()).ok()
            };
            best = best.max(t);
        }
        best
    }
    let Ok(built) = std::fs::metadata(bin).and_then(|m| m.modified()) else {
        return;
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    for krate in ["std-shim/kvmio", "std-shim", "nbd-core", "tls-glue"] {
        if newest(&root.join(krate).join("src")).is_some_and(|t| t > built) {
            eprintln!(
                "kvmio-tests: warning: {} is older than {krate}/src; rebuild it with \
                 `cargo build --release -p kvmio`",
                bin.display()
            );
            return;
        }
    }
}

/// A `kvmio` command.
pub fn kvmio() -> Command {
    Command::new(kvmio_bin())
}

/// `kvmio nbd copy --no-progress SRC DST` (files, `-`, or NBD URIs).
pub fn kvmio_copy(src: impl AsRef<OsStr>, dst: impl AsRef<OsStr>) -> Command {
    let mut c = kvmio();
    c.args(["nbd", "copy", "--no-progress"]).arg(src).arg(dst);
    c
}

/// The Debian package that ships a peer program.
fn package_of(program: &str) -> &'static str {
    match program {
        "qemu-img" | "qemu-io" | "qemu-nbd" => "qemu-utils",
        "nbdinfo" | "nbdcopy" => "libnbd-bin",
        "nbdsh" => "python3-libnbd",
        "nbdkit" => "nbdkit",
        "nbd-server" => "nbd-server",
        "certtool" => "gnutls-bin",
        "python3" => "python3 and python3-libnbd",
        _ => "(unknown package)",
    }
}

/// The full path of a peer program, searched in `$PATH`, `/usr/bin` and `/usr/sbin`. Panics
/// (a test failure, not a skip) naming the Debian package when it is missing.
pub fn tool(program: &str) -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.extend(["/usr/bin", "/usr/sbin", "/bin", "/sbin"].map(PathBuf::from));
    for d in dirs {
        let p = d.join(program);
        if p.is_file() {
            return p;
        }
    }
    panic!(
        "peer program `{program}` is not installed: install the Debian package {} \
         (tests/setup.sh installs every peer)",
        package_of(program)
    )
}

/// A command for a peer program (see [`tool`]).
pub fn peer(program: &str) -> Command {
    let mut c = Command::new(tool(program));
    // keep libnbd quiet unless a test asks for its debug output
    c.env_remove("LIBNBD_DEBUG");
    c
}

/// `nbdsh` as Debian's Python runs it: `/usr/bin/python3 -m nbd` (a pyenv `python3` first in
/// `$PATH` has no `nbd` module). Checks once that the module is importable.
pub fn nbdsh() -> Command {
    static CHECKED: OnceLock<()> = OnceLock::new();
    let python = Path::new("/usr/bin/python3");
    CHECKED.get_or_init(|| {
        assert!(
            python.is_file(),
            "/usr/bin/python3 is missing: install the Debian packages python3 and python3-libnbd"
        );
        let ok = Command::new(python)
            .args(["-c", "import nbd"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(
            ok,
            "/usr/bin/python3 cannot import nbd: install the Debian package python3-libnbd"
        );
    });
    let mut c = Command::new(python);
    c.args(["-m", "nbd"]);
    c
}

// ------------------------------------------------------------------------------ processes

/// A long-running child process (a server). Killed and reaped on drop; its stderr goes to a
/// file ([`Proc::log`]) that is printed if the test is failing when the guard drops.
pub struct Proc {
    name: String,
    child: Child,
    err_path: PathBuf,
    out_path: PathBuf,
    exited: Option<ExitStatus>,
    _dir: TempDir,
}

impl Proc {
    /// Starts `cmd` (stdin closed, stdout and stderr to files).
    pub fn spawn(name: &str, mut cmd: Command) -> Self {
        let dir = tempdir();
        let err_path = dir.path().join("stderr");
        let out_path = dir.path().join("stdout");
        cmd.stdin(Stdio::null())
            .stdout(File::create(&out_path).expect("stdout file"))
            .stderr(File::create(&err_path).expect("stderr file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Self {
            name: name.to_string(),
            child,
            err_path,
            out_path,
            exited: None,
            _dir: dir,
        }
    }

    /// What the process wrote to stderr so far.
    pub fn log(&self) -> String {
        std::fs::read(&self.err_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// What the process wrote to stdout so far.
    pub fn stdout(&self) -> String {
        std::fs::read(&self.out_path)
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default()
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// The exit status if the process has exited.
    pub fn exit_status(&mut self) -> Option<ExitStatus> {
        if self.exited.is_none() {
            self.exited = self.child.try_wait().ok().flatten();
        }
        self.exited
    }

    /// Panics (with the log) unless the process is still running.
    pub fn assert_alive(&mut self) {
        if let Some(st) = self.exit_status() {
            panic!(
                "{} (pid {}) is no longer running: {st}\n--- stderr ---\n{}",
                self.name,
                self.id(),
                self.log()
            );
        }
    }

    /// Waits until the stderr log has a complete line containing `needle`; panics if the
    /// process exits first or the deadline passes. Returns the log up to the end of the last
    /// complete line.
    pub fn wait_log(&mut self, needle: &str, deadline: Duration) -> String {
        self.wait_log_count(needle, 1, deadline)
    }

    /// Waits until `count` complete lines of the stderr log contain `needle` (see
    /// [`wait_log`](Self::wait_log)).
    pub fn wait_log_count(&mut self, needle: &str, count: usize, deadline: Duration) -> String {
        let end = Instant::now() + deadline;
        let complete = |log: String| -> Option<String> {
            let cut = log.rfind('\n')? + 1;
            let log = &log[..cut];
            (log.lines().filter(|l| l.contains(needle)).count() >= count).then(|| log.to_string())
        };
        loop {
            let log = self.log();
            if let Some(l) = complete(log.clone()) {
                return l;
            }
            if let Some(st) = self.exit_status() {
                // one more read: the line may have been written just before exiting
                let log = self.log();
                if let Some(l) = complete(log.clone()) {
                    return l;
                }
                panic!(
                    "{} exited ({st}) before logging {needle:?} {count} time(s)\n--- stderr ---\n{log}",
                    self.name
                );
            }
            assert!(
                Instant::now() < end,
                "{} did not log {needle:?} {count} time(s) within {deadline:?}\n--- stderr ---\n{log}",
                self.name
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the process to exit by itself (deadline), returning its status.
    pub fn wait_exit(&mut self, deadline: Duration) -> ExitStatus {
        let end = Instant::now() + deadline;
        loop {
            if let Some(st) = self.exit_status() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "{} did not exit within {deadline:?}\n--- stderr ---\n{}",
                self.name,
                self.log()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Kills the process and reaps it.
    pub fn stop(&mut self) {
        if self.exit_status().is_none() {
            let _ = self.child.kill();
            self.exited = self.child.wait().ok();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            eprintln!(
                "----- {} (pid {}) stderr -----\n{}----- end of {} -----",
                self.name,
                self.child.id(),
                self.log(),
                self.name
            );
            let out = self.stdout();
            if !out.is_empty() {
                eprintln!("----- {} stdout -----\n{out}", self.name);
            }
        }
    }
}

/// The result of a one-shot command.
#[derive(Debug)]
pub struct Out {
    /// The command line, for messages.
    pub cmd: String,
    /// Exit status.
    pub status: ExitStatus,
    /// Everything written to stdout.
    pub stdout: Vec<u8>,
    /// Everything written to stderr (lossy UTF-8).
    pub stderr: String,
}

impl Out {
    /// Whether the command exited with status 0.
    pub fn ok(&self) -> bool {
        self.status.success()
    }

    /// Stdout as (lossy) UTF-8.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Panics with everything known unless the command succeeded.
    #[track_caller]
    pub fn expect_ok(self) -> Self {
        assert!(
            self.ok(),
            "command failed ({}): {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            self.cmd,
            self.text(),
            self.stderr
        );
        self
    }

    /// Panics unless the command failed (non-zero exit, not killed by a signal: a crash is
    /// not a clean failure).
    #[track_caller]
    pub fn expect_fail(self) -> Self {
        assert!(
            !self.ok(),
            "command unexpectedly succeeded: {}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.cmd,
            self.text(),
            self.stderr
        );
        assert!(
            self.status.code().is_some(),
            "command was killed by a signal ({}): {}\n--- stderr ---\n{}",
            self.status,
            self.cmd,
            self.stderr
        );
        assert!(
            !self.stderr.contains("panicked at"),
            "command panicked instead of failing cleanly: {}\n--- stderr ---\n{}",
            self.cmd,
            self.stderr
        );
        self
    }

    /// Panics unless stderr contains every one of `needles` (case-insensitive).
    #[track_caller]
    pub fn expect_stderr(self, needles: &[&str]) -> Self {
        let low = self.stderr.to_lowercase();
        for n in needles {
            assert!(
                low.contains(&n.to_lowercase()),
                "stderr of `{}` does not mention {n:?}\n--- stderr ---\n{}",
                self.cmd,
                self.stderr
            );
        }
        self
    }

    /// Panics unless stderr contains at least one of `needles` (case-insensitive).
    #[track_caller]
    pub fn expect_stderr_any(self, needles: &[&str]) -> Self {
        let low = self.stderr.to_lowercase();
        assert!(
            needles.iter().any(|n| low.contains(&n.to_lowercase())),
            "stderr of `{}` mentions none of {needles:?}\n--- stderr ---\n{}",
            self.cmd,
            self.stderr
        );
        self
    }
}

fn describe(cmd: &Command) -> String {
    let mut s = String::new();
    for (k, v) in cmd.get_envs() {
        if let Some(v) = v {
            s.push_str(&format!("{}={} ", k.to_string_lossy(), v.to_string_lossy()));
        }
    }
    s.push_str(&cmd.get_program().to_string_lossy());
    for a in cmd.get_args() {
        let a = a.to_string_lossy();
        if a.contains([' ', '\'', '"', '\n']) || a.is_empty() {
            s.push_str(&format!(" '{}'", a.replace('\'', "'\\''")));
        } else {
            s.push(' ');
            s.push_str(&a);
        }
    }
    s
}

/// Runs a command to completion (stdin closed) with [`COMMAND_DEADLINE`].
pub fn run(cmd: &mut Command) -> Out {
    run_with_input(cmd, None)
}

/// Runs a command with `input` on its stdin.
pub fn run_with_input(cmd: &mut Command, input: Option<&[u8]>) -> Out {
    let desc = describe(cmd);
    let mut out = tempfile::tempfile().expect("tempfile");
    let mut err = tempfile::tempfile().expect("tempfile");
    let stdin = match input {
        Some(data) => {
            let mut f = tempfile::tempfile().expect("tempfile");
            f.write_all(data).expect("write stdin file");
            f.seek(SeekFrom::Start(0)).expect("seek");
            Stdio::from(f)
        }
        None => Stdio::null(),
    };
    cmd.stdin(stdin)
        .stdout(out.try_clone().expect("dup"))
        .stderr(err.try_clone().expect("dup"));
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {desc}: {e}"));
    let end = Instant::now() + COMMAND_DEADLINE;
    let status = loop {
        if let Some(st) = child.try_wait().expect("wait") {
            break st;
        }
        if Instant::now() > end {
            let _ = child.kill();
            let _ = child.wait();
            let mut e = String::new();
            let _ = err.seek(SeekFrom::Start(0));
            let _ = err.read_to_string(&mut e);
            panic!(
                "command did not finish within {COMMAND_DEADLINE:?}: {desc}\n--- stderr ---\n{e}"
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut stdout = Vec::new();
    out.seek(SeekFrom::Start(0)).expect("seek");
    out.read_to_end(&mut stdout).expect("read stdout");
    let mut stderr = Vec::new();
    err.seek(SeekFrom::Start(0)).expect("seek");
    err.read_to_end(&mut stderr).expect("read stderr");
    Out {
        cmd: desc,
        status,
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

// ------------------------------------------------------------------------------ ports, dirs

/// A fresh temporary directory (removed on drop).
pub fn tempdir() -> TempDir {
    tempfile::Builder::new()
        .prefix("kvmio-tests-")
        .tempdir()
        .expect("temporary directory")
}

/// A TCP port on 127.0.0.1 that was free a moment ago and has not been handed out before by
/// this process. Peers that cannot listen on port 0 get one of these; [`start_on_free_port`]
/// retries if another process took it in between.
pub fn free_port() -> u16 {
    static GIVEN: OnceLock<Mutex<HashSet<u16>>> = OnceLock::new();
    let given = GIVEN.get_or_init(Default::default);
    loop {
        let l = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let port = l.local_addr().expect("local_addr").port();
        drop(l);
        if given.lock().unwrap().insert(port) && !is_listening(port) {
            return port;
        }
    }
}

/// Whether something listens on TCP `port` (any local address), from `/proc/net/tcp{,6}`:
/// no connection is made, so servers that count connections are not disturbed.
pub fn is_listening(port: u16) -> bool {
    let want = format!(":{port:04X}");
    ["/proc/net/tcp", "/proc/net/tcp6"].iter().any(|f| {
        std::fs::read_to_string(f).is_ok_and(|s| {
            s.lines().skip(1).any(|l| {
                let mut it = l.split_whitespace();
                let local = it.nth(1).unwrap_or("");
                let state = it.nth(1).unwrap_or("");
                state == "0A" && local.ends_with(&want)
            })
        })
    })
}

/// Waits until `port` is listening; panics if `proc` exits first or the deadline passes.
pub fn wait_port(port: u16, proc: &mut Proc) {
    if let Err(e) = try_wait_port(port, proc) {
        panic!("{e}");
    }
}

fn try_wait_port(port: u16, proc: &mut Proc) -> Result<(), String> {
    let end = Instant::now() + LISTEN_DEADLINE;
    loop {
        if is_listening(port) {
            return Ok(());
        }
        if let Some(st) = proc.exit_status() {
            return Err(format!(
                "{} exited ({st}) before listening on port {port}\n--- stderr ---\n{}",
                proc.name,
                proc.log()
            ));
        }
        if Instant::now() > end {
            return Err(format!(
                "{} did not listen on port {port} within {LISTEN_DEADLINE:?}\n--- stderr ---\n{}",
                proc.name,
                proc.log()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Starts a server made by `make(port)` on a free port and waits until it listens; retries
/// with another port if the server lost a race for it ("Address already in use").
pub fn start_on_free_port(name: &str, make: impl Fn(u16) -> Command) -> (Proc, u16) {
    let mut last = String::new();
    for _ in 0..4 {
        let port = free_port();
        let mut p = Proc::spawn(name, make(port));
        match try_wait_port(port, &mut p) {
            Ok(()) => return (p, port),
            Err(e) if p.log().to_lowercase().contains("in use") => last = e,
            Err(e) => panic!("{e}"),
        }
    }
    panic!("{name} could not get a port: {last}")
}

// ------------------------------------------------------------------------------ kvmio server

/// Which driver `kvmio nbd serve` runs connections on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Runtime {
    /// `--runtime threads` (blocking driver, a thread per connection).
    Threads,
    /// `--runtime tokio`.
    Tokio,
}

impl Runtime {
    /// The `--runtime` value.
    pub fn arg(self) -> &'static str {
        match self {
            Self::Threads => "threads",
            Self::Tokio => "tokio",
        }
    }
}

/// A running `kvmio nbd serve`.
pub struct KvmioServer {
    /// The process.
    pub proc: Proc,
    /// The TCP port (when it listens on TCP).
    pub port: Option<u16>,
    /// The Unix socket (when it listens on one).
    pub unix: Option<PathBuf>,
}

impl KvmioServer {
    /// Starts `kvmio nbd serve --runtime RT ARGS…`, adding `--listen 127.0.0.1:0` unless `args`
    /// has `--listen` or `--unix`, and waits for the `kvmio: serving` line giving the port.
    pub fn start(rt: Runtime, args: &[&str]) -> Self {
        let mut cmd = kvmio();
        cmd.args(["nbd", "serve", "--runtime", rt.arg()]);
        if !args.iter().any(|a| *a == "--listen" || *a == "--unix") {
            cmd.args(["--listen", "127.0.0.1:0"]);
        }
        cmd.args(args);
        let unix = args
            .iter()
            .position(|a| *a == "--unix")
            .map(|i| PathBuf::from(args[i + 1]));
        let mut proc = Proc::spawn(&format!("kvmio nbd serve ({})", rt.arg()), cmd);
        let log = proc.wait_log("kvmio: serving", LISTEN_DEADLINE);
        let port = log
            .lines()
            .filter(|l| l.starts_with("kvmio: serving"))
            .find_map(|l| {
                l.rsplit_once(" on 127.0.0.1:")
                    .and_then(|(_, p)| p.trim().parse::<u16>().ok())
            });
        if unix.is_none() {
            assert!(
                port.is_some(),
                "no 127.0.0.1 port in the server log:\n{log}"
            );
        }
        if let Some(u) = &unix {
            // the line is printed after bind, so the socket exists
            assert!(u.exists(), "{} does not exist:\n{log}", u.display());
        }
        Self { proc, port, unix }
    }

    /// The TCP port.
    pub fn port(&self) -> u16 {
        self.port.expect("server listens on TCP")
    }

    /// The export `name` over TCP.
    pub fn target(&self, name: &str) -> Target {
        Target::tcp(self.port(), name)
    }

    /// The server's stderr so far.
    pub fn log(&self) -> String {
        self.proc.log()
    }

    /// Panics unless the server is still running and a fresh `nbdinfo --size` of `export`
    /// over TCP (plain, or TLS with `tls_dir`) gives `size`.
    #[track_caller]
    pub fn assert_healthy(&mut self, export: &str, size: u64, tls_dir: Option<&Path>) {
        self.proc.assert_alive();
        let mut t = self.target(export);
        if let Some(d) = tls_dir {
            t = t.with_tls(d);
        }
        let out = run(peer("nbdinfo").arg("--size").arg(t.uri())).expect_ok();
        assert_eq!(
            out.text().trim(),
            size.to_string(),
            "nbdinfo --size after the test"
        );
        self.proc.assert_alive();
        let log = self.log();
        assert!(!log.contains("panicked at"), "the server panicked:\n{log}");
    }
}

// ------------------------------------------------------------------------------ peer servers

/// TLS settings of a peer server: the credentials directory (QEMU layout) and whether client
/// certificates are required.
#[derive(Debug, Clone, Copy)]
pub struct PeerTls<'a> {
    /// Server credentials directory.
    pub dir: &'a Path,
    /// Require and verify client certificates.
    pub verify_peer: bool,
}

/// `qemu-nbd [TLS] EXTRA… -f raw -x disk -t -e 8 ADDRESS… IMAGE`. With `tls`: `--object
/// tls-creds-x509,id=tls0,endpoint=server,dir=…,verify-peer=on|off --tls-creds tls0`.
fn qemu_nbd_command(
    image: &Path,
    tls: Option<PeerTls<'_>>,
    extra: &[String],
    address: &[String],
) -> Command {
    let mut c = peer("qemu-nbd");
    if let Some(t) = tls {
        c.arg("--object")
            .arg(format!(
                "tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer={}",
                qemu_escape(&t.dir.display().to_string()),
                if t.verify_peer { "on" } else { "off" }
            ))
            .args(["--tls-creds", "tls0"]);
    }
    c.args(extra)
        .args(["-f", "raw", "-x", "disk", "-t", "-e", "8"])
        .args(address)
        .arg(image);
    c
}

/// `qemu-nbd` (see `qemu_nbd_command`) on `-b 127.0.0.1 -p PORT`, a free port, listening
/// when this returns. `extra` may add e.g. `-r`, [`qemu_authz_args`], or its own TLS object.
pub fn qemu_nbd(image: &Path, tls: Option<PeerTls<'_>>, extra: &[String]) -> (Proc, u16) {
    start_on_free_port("qemu-nbd", |port| {
        let address = [
            "-b".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ];
        qemu_nbd_command(image, tls, extra, &address)
    })
}

/// `qemu-nbd` (see `qemu_nbd_command`) on the Unix socket `-k SOCKET`, listening when this
/// returns.
pub fn qemu_nbd_unix(image: &Path, socket: &Path, tls: Option<PeerTls<'_>>) -> Proc {
    let address = ["-k".into(), socket.display().to_string()];
    let mut p = Proc::spawn(
        "qemu-nbd (unix)",
        qemu_nbd_command(image, tls, &[], &address),
    );
    let end = Instant::now() + LISTEN_DEADLINE;
    while !socket.exists() {
        p.assert_alive();
        assert!(
            Instant::now() < end,
            "qemu-nbd did not create {}",
            socket.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    p
}

/// The qemu-nbd arguments of an `authz-simple` ACL admitting exactly the client DN `dn`
/// (commas doubled): `--object authz-simple,id=auth0,identity=DN --tls-authz auth0`.
pub fn qemu_authz_args(dn: &str) -> Vec<String> {
    vec![
        "--object".into(),
        format!("authz-simple,id=auth0,identity={}", qemu_escape(dn)),
        "--tls-authz".into(),
        "auth0".into(),
    ]
}

/// `nbdkit -f --exit-with-parent -i 127.0.0.1 -p PORT [TLS] ARGS…` on a free port, listening
/// when this returns. With `tls`: `--tls=require --tls-certificates=DIR [--tls-verify-peer]`.
pub fn nbdkit(tls: Option<PeerTls<'_>>, args: &[&str]) -> (Proc, u16) {
    start_on_free_port("nbdkit", |port| {
        let mut c = peer("nbdkit");
        c.args(["-f", "--exit-with-parent", "-i", "127.0.0.1", "-p"])
            .arg(port.to_string());
        if let Some(t) = tls {
            c.arg("--tls=require")
                .arg(format!("--tls-certificates={}", t.dir.display()));
            if t.verify_peer {
                c.arg("--tls-verify-peer");
            }
        }
        c.args(args);
        c
    })
}

/// A daemonized `nbd-server` (the reference server: fixed newstyle, simple replies only in
/// Debian's 3.24), killed by its PID (from its PID file) on drop.
pub struct NbdServer {
    /// The TCP port on 127.0.0.1.
    pub port: u16,
    pid: u32,
    _dir: TempDir,
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.pid.to_string())
            .stderr(Stdio::null())
            .status();
    }
}

/// `nbd-server -C CONFIG -p PIDFILE` exporting `image` as "disk" on 127.0.0.1 (LIST allowed);
/// with `tls_dir`, `force_tls` with the server certificate, key and CA from that directory.
/// Waits until it listens.
pub fn nbd_server(image: &Path, tls_dir: Option<&Path>) -> NbdServer {
    let dir = tempdir();
    let mut last = String::new();
    for _ in 0..4 {
        let port = free_port();
        let mut conf = format!(
            "[generic]\n    listenaddr = 127.0.0.1\n    port = {port}\n    allowlist = true\n"
        );
        if let Some(t) = tls_dir {
            conf.push_str(&format!(
                "    force_tls = true\n    certfile = {}\n    keyfile = {}\n    cacertfile = {}\n",
                t.join("server-cert.pem").display(),
                t.join("server-key.pem").display(),
                t.join("ca-cert.pem").display()
            ));
        }
        conf.push_str(&format!("[disk]\n    exportname = {}\n", image.display()));
        let conf_path = dir.path().join("config");
        std::fs::write(&conf_path, conf).expect("nbd-server config");
        let pid_path = dir.path().join("pid");
        let _ = std::fs::remove_file(&pid_path);
        let out = run(peer("nbd-server")
            .arg("-C")
            .arg(&conf_path)
            .arg("-p")
            .arg(&pid_path));
        if !out.ok() {
            last = out.stderr;
            continue;
        }
        let end = Instant::now() + LISTEN_DEADLINE;
        loop {
            let pid = std::fs::read_to_string(&pid_path)
                .ok()
                .and_then(|p| p.trim().parse::<u32>().ok());
            if let Some(pid) = pid
                && is_listening(port)
            {
                return NbdServer {
                    port,
                    pid,
                    _dir: dir,
                };
            }
            assert!(
                Instant::now() < end,
                "nbd-server did not come up on port {port}: {}",
                out.stderr
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    panic!("nbd-server could not start: {last}")
}

// ------------------------------------------------------------------------------ targets

/// An NBD endpoint as each kind of peer names it.
#[derive(Debug, Clone)]
pub struct Target {
    /// TCP port on 127.0.0.1 (`None`: Unix socket).
    pub port: Option<u16>,
    /// Unix socket path.
    pub socket: Option<PathBuf>,
    /// Export name.
    pub export: String,
    /// TLS credentials directory (client side); `None` is plaintext.
    pub tls: Option<PathBuf>,
}

impl Target {
    /// `127.0.0.1:port`, export `export`, plaintext.
    pub fn tcp(port: u16, export: &str) -> Self {
        Self {
            port: Some(port),
            socket: None,
            export: export.into(),
            tls: None,
        }
    }

    /// A Unix socket, export `export`, plaintext.
    pub fn unix(socket: &Path, export: &str) -> Self {
        Self {
            port: None,
            socket: Some(socket.into()),
            export: export.into(),
            tls: None,
        }
    }

    /// The same with TLS, using the credentials in `dir` (QEMU layout).
    pub fn with_tls(mut self, dir: &Path) -> Self {
        self.tls = Some(dir.into());
        self
    }

    /// The NBD URI (libnbd and kvmio syntax): `nbd[s][+unix]://…/export[?socket=…]
    /// [&tls-certificates=DIR]`.
    pub fn uri(&self) -> String {
        let scheme = if self.tls.is_some() { "nbds" } else { "nbd" };
        let mut q = Vec::new();
        let base = match (&self.port, &self.socket) {
            (Some(p), _) => format!("{scheme}://127.0.0.1:{p}/{}", self.export),
            (None, Some(s)) => {
                q.push(format!("socket={}", s.display()));
                format!("{scheme}+unix:///{}", self.export)
            }
            (None, None) => unreachable!("target without an address"),
        };
        if let Some(d) = &self.tls {
            q.push(format!("tls-certificates={}", d.display()));
        }
        if q.is_empty() {
            base
        } else {
            format!("{base}?{}", q.join("&"))
        }
    }

    /// The QEMU `--object` arguments (TLS credentials `tls0`), empty for plaintext.
    pub fn qemu_objects(&self) -> Vec<String> {
        match &self.tls {
            Some(d) => vec![
                "--object".into(),
                format!(
                    "tls-creds-x509,id=tls0,endpoint=client,dir={}",
                    qemu_escape(&d.display().to_string())
                ),
            ],
            None => Vec::new(),
        }
    }

    /// The QEMU image options: `driver=nbd,host=…,port=…,export=…[,tls-creds=tls0]`.
    pub fn qemu_opts(&self) -> String {
        let mut s = match (&self.port, &self.socket) {
            (Some(p), _) => {
                format!("driver=nbd,server.type=inet,server.host=127.0.0.1,server.port={p}")
            }
            (None, Some(sock)) => format!(
                "driver=nbd,server.type=unix,server.path={}",
                qemu_escape(&sock.display().to_string())
            ),
            (None, None) => unreachable!("target without an address"),
        };
        s.push_str(&format!(",export={}", qemu_escape(&self.export)));
        if self.tls.is_some() {
            s.push_str(",tls-creds=tls0");
        }
        s
    }

    /// `qemu-io [--object …] --image-opts OPTS -c CMD…`.
    pub fn qemu_io(&self, cmds: &[&str]) -> Command {
        let mut c = peer("qemu-io");
        c.args(self.qemu_objects())
            .arg("--image-opts")
            .arg(self.qemu_opts());
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        c
    }

    /// `qemu-io -r …` (read-only open).
    pub fn qemu_io_ro(&self, cmds: &[&str]) -> Command {
        let mut c = peer("qemu-io");
        c.arg("-r")
            .args(self.qemu_objects())
            .arg("--image-opts")
            .arg(self.qemu_opts());
        for cmd in cmds {
            c.arg("-c").arg(cmd);
        }
        c
    }

    /// `qemu-img convert -n -f raw SRC --target-image-opts OPTS` (write `src` into the export).
    pub fn qemu_img_convert_into(&self, src: &Path) -> Command {
        let mut c = peer("qemu-img");
        c.args(["convert", "-n", "-f", "raw"])
            .args(self.qemu_objects())
            .arg(src)
            .arg("--target-image-opts")
            .arg(self.qemu_opts());
        c
    }

    /// `qemu-img convert -O raw --image-opts OPTS DST` (read the export into `dst`).
    pub fn qemu_img_convert_from(&self, dst: &Path) -> Command {
        let mut c = peer("qemu-img");
        c.args(["convert", "-O", "raw"])
            .args(self.qemu_objects())
            .arg("--image-opts")
            .arg(self.qemu_opts())
            .arg(dst);
        c
    }

    /// `qemu-img compare --image-opts driver=file,filename=LOCAL OPTS`.
    pub fn qemu_img_compare(&self, local: &Path) -> Command {
        let mut c = peer("qemu-img");
        c.arg("compare")
            .args(self.qemu_objects())
            .arg("--image-opts")
            .arg(format!(
                "driver=file,filename={}",
                qemu_escape(&local.display().to_string())
            ))
            .arg(self.qemu_opts());
        c
    }

    /// `qemu-img info --image-opts OPTS`.
    pub fn qemu_img_info(&self) -> Command {
        let mut c = peer("qemu-img");
        c.arg("info")
            .args(self.qemu_objects())
            .arg("--image-opts")
            .arg(self.qemu_opts());
        c
    }

    /// nbdsh set-up lines connecting `h` to this target (TLS via `set_tls*`, since nbdsh
    /// refuses `tls-certificates=` in URIs), after `h.add_meta_context("base:allocation")`.
    pub fn nbdsh_connect(&self) -> String {
        let mut s = String::from("h.add_meta_context('base:allocation')\n");
        if let Some(d) = &self.tls {
            s.push_str(&format!(
                "h.set_tls(nbd.TLS_REQUIRE)\nh.set_tls_certificates({:?})\n",
                d.display().to_string()
            ));
        }
        s.push_str(&format!("h.set_export_name({:?})\n", self.export));
        match (&self.port, &self.socket) {
            (Some(p), _) => s.push_str(&format!("h.connect_tcp('127.0.0.1', '{p}')\n")),
            (None, Some(sock)) => s.push_str(&format!(
                "h.connect_unix({:?})\n",
                sock.display().to_string()
            )),
            (None, None) => unreachable!("target without an address"),
        }
        s
    }
}

/// QEMU option escaping: commas doubled.
pub fn qemu_escape(s: &str) -> String {
    s.replace(',', ",,")
}

// ------------------------------------------------------------------------------ PKI

/// A credentials directory in the QEMU layout.
#[derive(Debug, Clone)]
pub struct Pki {
    /// The directory (ca-cert.pem, server-*.pem, client-*.pem, maybe ca-key.pem/ca-crl.pem).
    pub dir: PathBuf,
    /// The client certificate's subject DN as `--tls-authz` / QEMU `authz-simple` name it.
    pub client_dn: String,
}

/// `kvmio creds generate DIR EXTRA…` (ECDSA P-256 unless `extra` has `--key`).
pub fn pki_with(dir: &Path, extra: &[&str]) -> Pki {
    let out = run(kvmio().args(["creds", "generate"]).arg(dir).args(extra)).expect_ok();
    let text = out.text();
    let dn = text
        .lines()
        .find_map(|l| l.strip_prefix("client certificate DN (for --tls-authz): "))
        .unwrap_or_else(|| panic!("no client DN in the output of kvmio creds generate:\n{text}"))
        .trim()
        .to_string();
    Pki {
        dir: dir.into(),
        client_dn: dn,
    }
}

/// `kvmio creds generate DIR` with its defaults (ECDSA P-256).
pub fn pki(dir: &Path) -> Pki {
    pki_with(dir, &[])
}

/// The certtool recipe of peers.md §0.3 (RSA 2048, PKCS#1 keys): a CA, a server certificate
/// for localhost/127.0.0.1/::1 and a client certificate with the DN
/// `C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com`. Keeps `ca-key.pem`
/// (for CRLs) in `dir`.
pub fn certtool_pki(dir: &Path) -> Pki {
    std::fs::create_dir_all(dir).expect("mkdir");
    std::fs::write(
        dir.join("ca.info"),
        "cn = Test CA\nca\ncert_signing_key\ncrl_signing_key\nexpiration_days = 3650\n",
    )
    .expect("template");
    certtool_rsa_key(dir, "ca-key.pem");
    certtool(
        dir,
        &[
            "--generate-self-signed",
            "--load-privkey",
            "ca-key.pem",
            "--template",
            "ca.info",
            "--outfile",
            "ca-cert.pem",
        ],
    );
    let _ = std::fs::remove_file(dir.join("ca.info"));
    certtool_leaf(
        dir,
        "server",
        "organization = Test Org\ncn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\n\
         ip_address = ::1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 3650\n",
        dir,
    );
    certtool_leaf(
        dir,
        "client",
        "country = GB\nstate = London\nlocality = City Of London\norganization = Test Org\n\
         cn = client.example.com\ntls_www_client\nencryption_key\nsigning_key\n\
         expiration_days = 3650\n",
        dir,
    );
    Pki {
        dir: dir.into(),
        client_dn: "C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com".into(),
    }
}

/// `certtool --no-text ARGS…` in `dir`.
fn certtool(dir: &Path, args: &[&str]) {
    run(peer("certtool")
        .current_dir(dir)
        .arg("--no-text")
        .args(args))
    .expect_ok();
}

/// An RSA 2048 key made by certtool in `dir/file`.
fn certtool_rsa_key(dir: &Path, file: &str) {
    certtool(
        dir,
        &[
            "--generate-privkey",
            "--key-type=rsa",
            "--bits=2048",
            "--outfile",
            file,
        ],
    );
}

/// An RSA 2048 key and a certificate made by certtool from the template text `template`,
/// signed by the CA in `ca_dir` (`ca-cert.pem`, `ca-key.pem`): `dir/{who}-key.pem` and
/// `dir/{who}-cert.pem`.
pub fn certtool_leaf(dir: &Path, who: &str, template: &str, ca_dir: &Path) {
    std::fs::create_dir_all(dir).expect("mkdir");
    let (key, cert, info) = (
        format!("{who}-key.pem"),
        format!("{who}-cert.pem"),
        format!("{who}.info"),
    );
    std::fs::write(dir.join(&info), template).expect("template");
    certtool_rsa_key(dir, &key);
    let ca_cert = ca_dir.join("ca-cert.pem").display().to_string();
    let ca_key = ca_dir.join("ca-key.pem").display().to_string();
    certtool(
        dir,
        &[
            "--generate-certificate",
            "--load-ca-certificate",
            &ca_cert,
            "--load-ca-privkey",
            &ca_key,
            "--load-privkey",
            &key,
            "--template",
            &info,
            "--outfile",
            &cert,
        ],
    );
    let _ = std::fs::remove_file(dir.join(&info));
}

/// A CRL in `dir/ca-crl.pem` made by certtool with the CA in `dir`, revoking the certificate
/// files `revoke` (none: an empty CRL).
pub fn certtool_crl(dir: &Path, revoke: &[&Path]) {
    std::fs::write(
        dir.join("crl.info"),
        "crl_next_update = 30\ncrl_number = 7\n",
    )
    .expect("crl");
    let mut cmd = peer("certtool");
    cmd.current_dir(dir).args([
        "--no-text",
        "--generate-crl",
        "--load-ca-privkey",
        "ca-key.pem",
        "--load-ca-certificate",
        "ca-cert.pem",
        "--template",
        "crl.info",
        "--outfile",
        "ca-crl.pem",
    ]);
    if !revoke.is_empty() {
        // certtool takes one file holding every certificate to revoke
        let mut all = Vec::new();
        for r in revoke {
            all.extend(std::fs::read(r).expect("certificate to revoke"));
        }
        std::fs::write(dir.join("revoke.pem"), all).expect("revoke.pem");
        cmd.args(["--load-certificate", "revoke.pem"]);
    }
    run(&mut cmd).expect_ok();
    let _ = std::fs::remove_file(dir.join("crl.info"));
    let _ = std::fs::remove_file(dir.join("revoke.pem"));
}

/// A client credentials directory holding only `ca-cert.pem` from `from` (no client
/// certificate).
pub fn ca_only_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("mkdir");
    std::fs::copy(from.join("ca-cert.pem"), to.join("ca-cert.pem")).expect("copy ca-cert.pem");
}

// ------------------------------------------------------------------------------ images

/// `len` pseudo-random bytes from `seed`.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut v = vec![0u8; len];
    rng.fill(&mut v);
    v
}

/// A sparse file of `size` bytes at `path` with random data written only in `ranges`
/// (offset, length); returns its full contents.
pub fn sparse_image(path: &Path, size: u64, ranges: &[(u64, usize)], seed: u64) -> Vec<u8> {
    let mut f = File::create(path).expect("create image");
    f.set_len(size).expect("set_len");
    let mut all = vec![0u8; usize::try_from(size).expect("size")];
    for (i, &(off, len)) in ranges.iter().enumerate() {
        let data = random_bytes(len, seed.wrapping_add(i as u64));
        f.seek(SeekFrom::Start(off)).expect("seek");
        f.write_all(&data).expect("write");
        let o = usize::try_from(off).expect("offset");
        all[o..o + len].copy_from_slice(&data);
    }
    f.sync_all().expect("sync");
    all
}

/// A test image: `size` bytes, random data in scattered, unaligned ranges (about a quarter of
/// it), the rest holes. Returns its contents.
pub fn test_image(path: &Path, size: u64, seed: u64) -> Vec<u8> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut ranges = Vec::new();
    let mut off = 0u64;
    while off < size {
        let gap = rng.u64(0..size / 16);
        let len = rng.u64(1..size / 32).min(size.saturating_sub(off + gap));
        if off + gap >= size || len == 0 {
            break;
        }
        ranges.push((off + gap, len as usize));
        off += gap + len;
    }
    // always some data at the very start and the very end
    ranges.push((0, 4096.min(size as usize)));
    ranges.push((size - 513, 513));
    sparse_image(path, size, &ranges, seed)
}

/// The contents of a file.
pub fn read(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()))
}

/// Bytes the file system allocated for `path` (`st_blocks * 512`).
pub fn allocated_bytes(path: &Path) -> u64 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("stat {}: {e}", path.display()))
        .blocks()
        * 512
}

/// Asserts `actual == expected` byte for byte, reporting the first difference (not the data).
#[track_caller]
pub fn assert_same_bytes(actual: &[u8], expected: &[u8], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, b)| a != b)
        .unwrap_or(actual.len().min(expected.len()));
    panic!(
        "{what}: contents differ (lengths {} and {}, first difference at byte {first}: {:?} vs {:?})",
        actual.len(),
        expected.len(),
        actual.get(first),
        expected.get(first)
    );
}
