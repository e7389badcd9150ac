//! Client faults: clients that vanish at random points, against the running `kvmio nbd serve`
//! and `kvmio vnc serve` processes, on both drivers (`--runtime threads` and `tokio`).
//!
//! 1,000 connections in all (8 runs of 125: NBD plain, NBD over STARTTLS, VNC None and VNC
//! VeNCrypt X509None, each on both runtimes) are cut at a point drawn from a seeded RNG
//! (`KVMIO_CUT_SEED` replays another seed): in the NBD negotiation, before or in the
//! STARTTLS/TLS handshake, in a VeNCrypt or RFB version/security exchange, inside a TLS record,
//! in a READ reply (up to 32 MiB) being read, in a WRITE payload (up to 16 MiB) being sent, in a
//! request header, in a client RFB message, or in a full framebuffer update (3840x2160, Raw)
//! being read. Each cut is a close or a reset (`SO_LINGER` 0), at random.
//!
//! Each run asserts, by counts and never by times (deadlines only guard against hangs):
//! * a client connected before the cuts keeps working during and after them (checked writes
//!   and reads for NBD, framebuffer updates for VNC), and a client connecting after them works;
//! * the server logs (`-v`) the end of exactly as many connections as were made, the last
//!   saying `(0 open)`, and as many `connected` lines;
//! * its open file descriptors (`/proc/PID/fd`) come back to the baseline taken after one
//!   warm-up connection (plus one while the long-lived client is still connected).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use kvmio_tests::faults::{self, Cut, Tls};
use kvmio_tests::raw::{self, Nbd};
use kvmio_tests::vnc::VncServer;
use kvmio_tests::*;
use nbd_core::wire::{CommandFlags, CommandType, OptionType, ReplyType};
use tls_glue::TlsClientConfig;

/// Runs (2 runtimes x 4 services) sharing the 1,000 cuts.
const RUNS: usize = 8;
/// Cuts in all.
const TOTAL_CUTS: usize = 1000;
/// Cuts per run.
const CUTS: usize = TOTAL_CUTS / RUNS;
/// The long-lived client is checked after every this many cuts.
const CHECK_EVERY: usize = 25;
/// How long the server may take to end every cut connection (a hang guard).
const END_DEADLINE: Duration = Duration::from_secs(45);

/// RAM disk size.
const DISK: u64 = 64 << 20;
/// The long-lived and later clients' region of the disk (cut WRITEs stay below 32 MiB).
const KEEP_AT: u64 = 56 << 20;
const KEEP_LEN: usize = 1 << 20;

/// The test pattern's size: a full Raw update is 33 MB, far more than the socket buffers
/// hold, so a cut while reading it finds the server still writing.
const VNC_W: u16 = 3840;
const VNC_H: u16 = 2160;
/// `--name`, whose length ServerInit carries.
const VNC_NAME: &str = "cut";

// ------------------------------------------------------------------------------ run bookkeeping

/// One run: the RNG, the connections made, and the cuts done by kind.
struct Run {
    what: String,
    seed: u64,
    rng: fastrand::Rng,
    made: usize,
    tally: BTreeMap<(&'static str, Cut), usize>,
}

impl Run {
    fn new(what: String, base_seed: u64) -> Self {
        let seed = std::env::var("KVMIO_CUT_SEED")
            .ok()
            .and_then(|s| s.parse::<u64>().ok())
            .map_or(base_seed, |s| s ^ base_seed);
        eprintln!("{what}: seed {seed} (KVMIO_CUT_SEED changes it)");
        Self {
            what,
            seed,
            rng: fastrand::Rng::with_seed(seed),
            made: 0,
            tally: BTreeMap::new(),
        }
    }

    /// A TCP connection to the server (counted), with the raw clients' timeouts.
    fn connect(&mut self, port: u16) -> TcpStream {
        self.made += 1;
        raw::connect(port).s
    }

    fn pick<T: Copy>(&mut self, from: &[T]) -> T {
        from[self.rng.usize(..from.len())]
    }

    /// Cuts `s` (close or reset at random) and counts it under `kind`.
    fn cut(&mut self, kind: &'static str, s: TcpStream) {
        let how = Cut::pick(&mut self.rng);
        how.apply(s);
        *self.tally.entry((kind, how)).or_default() += 1;
    }

    fn cuts(&self) -> usize {
        self.tally.values().sum()
    }

    /// After the warm-up connection (the only one so far) ended: the server's descriptor
    /// count, once it is steady.
    fn baseline(&self, proc: &mut Proc) -> usize {
        faults::wait_all_ended(proc, self.made, END_DEADLINE);
        let pid = proc.id();
        faults::wait_settled(
            "the server's descriptor count",
            Duration::from_millis(50),
            5,
            0,
            Duration::from_secs(20),
            || faults::fd_count(pid) as u64,
        ) as usize
    }

    /// The end of a run: every connection but the long-lived one ends (fds: baseline + 1),
    /// then `close_keep` closes it and the server is back to no connections and the baseline.
    fn finish(&self, proc: &mut Proc, baseline: usize, close_keep: impl FnOnce()) {
        assert_eq!(self.cuts(), CUTS, "cuts done");
        faults::wait_ended(proc, self.made - 1, END_DEADLINE);
        faults::wait_fds(
            proc,
            baseline + 1,
            END_DEADLINE,
            &format!("{}: with only the long-lived client connected", self.what),
        );
        close_keep();
        let log = faults::wait_all_ended(proc, self.made, END_DEADLINE);
        let fds = faults::wait_fds(
            proc,
            baseline,
            END_DEADLINE,
            &format!("{}: after every connection ended", self.what),
        );
        let connected = log.lines().filter(|l| l.ends_with(": connected")).count();
        assert_eq!(connected, self.made, "connections the server saw");
        assert!(!log.contains("panicked"), "the server panicked:\n{log}");
        proc.assert_alive();
        let kinds: Vec<String> = self
            .tally
            .iter()
            .map(|((k, c), n)| format!("{k}/{c:?}: {n}"))
            .collect();
        // how the server saw them end, numbers left out
        let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
        for l in faults::ended_lines(&log) {
            let l = l.rsplit_once(" (").map_or(l, |(a, _)| a);
            let l = l.split_once(": ").map_or(l, |(_, b)| b);
            let l: String = l.chars().filter(|c| !c.is_ascii_digit()).collect();
            *reasons.entry(l).or_default() += 1;
        }
        let reasons: Vec<String> = reasons.iter().map(|(r, n)| format!("{n:4} {r}")).collect();
        eprintln!(
            "{}: seed {}, {} cuts, {} connections, all ended, (0 open), fds {fds} = baseline \
             {baseline}\n  cuts:\n  {}\n  ends as the server logged them:\n  {}",
            self.what,
            self.seed,
            self.cuts(),
            self.made,
            kinds.join("\n  "),
            reasons.join("\n  ")
        );
    }
}

// ------------------------------------------------------------------------------ scripts

/// One step of a client's side of a handshake.
enum Step {
    /// Read this many bytes from the server.
    Read(usize),
    /// Send these bytes.
    Send(Vec<u8>),
}

fn script_len(steps: &[Step]) -> usize {
    steps
        .iter()
        .map(|s| match s {
            Step::Read(n) => *n,
            Step::Send(b) => b.len(),
        })
        .sum()
}

/// Runs `steps` until `budget` bytes (read or sent) are through: the last step may be partial.
#[track_caller]
fn drive(s: &mut impl ReadWrite, steps: &[Step], budget: usize, what: &str) {
    let mut left = budget;
    for st in steps {
        if left == 0 {
            return;
        }
        match st {
            Step::Read(n) => {
                let m = (*n).min(left);
                faults::skip(s, m)
                    .unwrap_or_else(|e| panic!("{what}: reading {m} bytes from the server: {e}"));
                left -= m;
            }
            Step::Send(b) => {
                let m = b.len().min(left);
                s.write_all(&b[..m])
                    .unwrap_or_else(|e| panic!("{what}: sending {m} bytes: {e}"));
                left -= m;
            }
        }
    }
}

/// Read + Write.
trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A random cut point of a script: at least one byte from the server has been read (so the
/// server accepted the connection), at most the whole script.
fn script_cut(rng: &mut fastrand::Rng, steps: &[Step]) -> usize {
    rng.usize(1..=script_len(steps))
}

// ------------------------------------------------------------------------------ NBD

fn nbd_server(rt: Runtime, extra: &[&str]) -> KvmioServer {
    let mut args = vec![
        "-v",
        "--memory",
        "disk=64M",
        "--max-connections",
        "100000",
        // no handshake deadline: a connection the server failed to end would stay open
        "--handshake-timeout",
        "0",
    ];
    args.extend_from_slice(extra);
    KvmioServer::start(rt, &args)
}

/// A WRITE of 64 KiB somewhere in the keep region and a READ of the whole region, checked
/// against `model`.
fn nbd_check<S: Read + Write>(c: &mut Nbd<S>, round: u64, model: &mut [u8], what: &str) {
    let mut rng = fastrand::Rng::with_seed(round);
    let len = 64 * 1024;
    let off = rng.usize(..KEEP_LEN - len);
    let data = random_bytes(len, round ^ 0x5eed);
    let e = c
        .simple_write(round, KEEP_AT + off as u64, &data)
        .unwrap_or_else(|e| panic!("{what}: WRITE: {e}"));
    assert_eq!(e, 0, "{what}: WRITE error");
    model[off..off + len].copy_from_slice(&data);
    let got = c
        .simple_read(round + 1, KEEP_AT, KEEP_LEN as u32)
        .unwrap_or_else(|e| panic!("{what}: READ: {e}"))
        .unwrap_or_else(|e| panic!("{what}: READ error {e}"));
    assert_same_bytes(&got, model, what);
}

/// A plaintext session in the transmission phase (simple replies).
fn nbd_plain_session(run: &mut Run, port: u16) -> Nbd<TcpStream> {
    let mut c = Nbd::new(run.connect(port));
    c.handshake().expect("handshake");
    assert_eq!(c.go_ok("disk").0, DISK);
    c
}

/// Up to the STARTTLS acknowledgement.
fn nbd_starttls(run: &mut Run, port: u16) -> TcpStream {
    let mut c = Nbd::new(run.connect(port));
    c.handshake().expect("handshake");
    let r = c.option(OptionType::StartTls, &[]).expect("STARTTLS");
    assert_eq!(r[0].reply, ReplyType::Ack, "STARTTLS: {r:?}");
    c.s
}

/// A TLS session in the transmission phase (simple replies).
fn nbd_tls_session(run: &mut Run, port: u16, cfg: &TlsClientConfig) -> Nbd<Tls> {
    let s = nbd_starttls(run, port);
    let mut t = Tls::new(s, cfg, "127.0.0.1");
    t.handshake().expect("TLS handshake");
    let mut c = Nbd::new(t);
    assert_eq!(c.go_ok("disk").0, DISK);
    c
}

fn request(cmd: CommandType, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
    raw::request_bytes(cmd, CommandFlags::empty(), cookie, offset, len)
}

/// A READ of 1 to 32 MiB below the keep region, and how many reply bytes to read before the
/// cut (up to half of it).
fn big_read(rng: &mut fastrand::Rng) -> (Vec<u8>, usize) {
    let len = rng.u32(1 << 20..=32 << 20);
    (
        request(CommandType::Read, 7, 0, len),
        rng.usize(..=len as usize / 2),
    )
}

/// A WRITE header of 64 KiB to 16 MiB below 32 MiB and the part of its payload to send.
fn big_write(rng: &mut fastrand::Rng) -> (Vec<u8>, usize) {
    let len = rng.u32(64 << 10..=16 << 20);
    let off = rng.u64(..(16 << 20)) & !511;
    let part = rng.usize(..len as usize);
    let mut b = request(CommandType::Write, 8, off, len);
    b.extend(std::iter::repeat_n(0xa5u8, part));
    (b, part)
}

const NBD_PLAIN_KINDS: &[&str] = &[
    "NBD negotiation",
    "mid-READ reply",
    "mid-WRITE payload",
    "mid-request header",
];

fn nbd_plain(rt: Runtime) {
    let mut srv = nbd_server(rt, &[]);
    let port = srv.port();
    let mut run = Run::new(format!("NBD plain, {}", rt.arg()), 0x4e42_4450 ^ rt as u64);

    // warm-up, and the length of the GO replies after STRUCTURED_REPLY
    let mut c = Nbd::new(run.connect(port));
    c.handshake().unwrap();
    let sr = c.option(OptionType::StructuredReply, &[]).unwrap();
    assert_eq!(sr.len(), 1);
    let go = c
        .option(OptionType::Go, &raw::go_data("disk", &[]))
        .unwrap();
    assert_eq!(go.last().unwrap().reply, ReplyType::Ack, "{go:?}");
    let go_len: usize = go.iter().map(|r| 20 + r.data.len()).sum();
    drop(c);
    let baseline = run.baseline(&mut srv.proc);

    let negotiation = vec![
        Step::Read(18),
        Step::Send(raw::CLIENT_FLAGS.to_be_bytes().to_vec()),
        Step::Send(raw::option_bytes(OptionType::StructuredReply, &[])),
        Step::Read(20),
        Step::Send(raw::option_bytes(
            OptionType::Go,
            &raw::go_data("disk", &[]),
        )),
        Step::Read(go_len),
    ];

    let mut model = vec![0u8; KEEP_LEN];
    let mut keep = nbd_plain_session(&mut run, port);
    nbd_check(
        &mut keep,
        1,
        &mut model,
        "long-lived client before the cuts",
    );
    for i in 0..CUTS {
        let kind = run.pick(NBD_PLAIN_KINDS);
        let s = match kind {
            "NBD negotiation" => {
                let mut s = run.connect(port);
                let at = script_cut(&mut run.rng, &negotiation);
                drive(&mut s, &negotiation, at, kind);
                s
            }
            "mid-READ reply" => {
                let mut c = nbd_plain_session(&mut run, port);
                let (req, read) = big_read(&mut run.rng);
                c.send(&req).unwrap();
                faults::skip(&mut c.s, read).expect("READ reply");
                c.s
            }
            "mid-WRITE payload" => {
                let mut c = nbd_plain_session(&mut run, port);
                let (b, _) = big_write(&mut run.rng);
                c.send(&b).unwrap();
                c.s
            }
            "mid-request header" => {
                let mut c = nbd_plain_session(&mut run, port);
                let b = request(CommandType::Read, 9, 0, 4096);
                let n = run.rng.usize(1..b.len());
                c.send(&b[..n]).unwrap();
                c.s
            }
            _ => unreachable!(),
        };
        run.cut(kind, s);
        if (i + 1) % CHECK_EVERY == 0 {
            srv.proc.assert_alive();
            nbd_check(&mut keep, 10 + i as u64, &mut model, "long-lived client");
        }
    }
    nbd_check(&mut keep, 2, &mut model, "long-lived client after the cuts");
    let mut fresh = nbd_plain_session(&mut run, port);
    nbd_check(&mut fresh, 3, &mut model, "a new client after the cuts");
    drop(fresh);
    run.finish(&mut srv.proc, baseline, move || drop(keep));
}

const NBD_TLS_KINDS: &[&str] = &[
    "NBD negotiation before STARTTLS",
    "TLS handshake",
    "GO inside TLS",
    "mid-TLS record",
    "mid-READ reply over TLS",
    "mid-WRITE payload over TLS",
];

fn nbd_tls(rt: Runtime) {
    let tmp = tempdir();
    let pki = pki(&tmp.path().join("pki"));
    let dir = pki.dir.display().to_string();
    let mut srv = nbd_server(rt, &["--tls", "require", "--tls-creds", &dir]);
    let port = srv.port();
    let cfg = tlsio::client_config(&pki.dir);
    let mut run = Run::new(format!("NBD TLS, {}", rt.arg()), 0x4e42_4454 ^ rt as u64);

    // warm-up, and the length of our side of a TLS handshake
    let s = nbd_starttls(&mut run, port);
    let mut t = Tls::new(s, &cfg, "127.0.0.1");
    t.handshake().expect("TLS handshake");
    let hs_len = t.sent;
    let mut c = Nbd::new(t);
    c.go_ok("disk");
    drop(c);
    let baseline = run.baseline(&mut srv.proc);

    let before_tls = vec![
        Step::Read(18),
        Step::Send(raw::CLIENT_FLAGS.to_be_bytes().to_vec()),
        Step::Send(raw::option_bytes(OptionType::StartTls, &[])),
        Step::Read(20),
    ];

    let mut model = vec![0u8; KEEP_LEN];
    let mut keep = nbd_tls_session(&mut run, port, &cfg);
    nbd_check(
        &mut keep,
        1,
        &mut model,
        "long-lived TLS client before the cuts",
    );
    for i in 0..CUTS {
        let kind = run.pick(NBD_TLS_KINDS);
        let s = match kind {
            "NBD negotiation before STARTTLS" => {
                let mut s = run.connect(port);
                let at = script_cut(&mut run.rng, &before_tls);
                drive(&mut s, &before_tls, at, kind);
                s
            }
            "TLS handshake" => {
                let s = nbd_starttls(&mut run, port);
                let mut t = Tls::new(s, &cfg, "127.0.0.1");
                let budget = run.rng.usize(..hs_len);
                // the client's flight varies by a byte or two (ECDSA signature lengths)
                let done = t.handshake_cut(budget).expect("TLS handshake prefix");
                assert!(
                    !done || budget + 2 >= hs_len,
                    "a {budget}-byte prefix of a {hs_len}-byte handshake completed"
                );
                t.into_socket()
            }
            "GO inside TLS" => {
                let s = nbd_starttls(&mut run, port);
                let mut t = Tls::new(s, &cfg, "127.0.0.1");
                t.handshake().expect("TLS handshake");
                let go = t.seal(&raw::option_bytes(
                    OptionType::Go,
                    &raw::go_data("disk", &[]),
                ));
                if run.rng.bool() {
                    let at = faults::inside_a_record(&go, &mut run.rng);
                    t.send_raw(&go[..at]).unwrap();
                } else {
                    t.send_raw(&go).unwrap();
                    // the replies are at least 52 bytes plus a record header and tag
                    let n = run.rng.usize(..=60);
                    t.skip_raw(n).expect("GO reply");
                }
                t.into_socket()
            }
            "mid-TLS record" => {
                let mut c = nbd_tls_session(&mut run, port, &cfg);
                let len = run.rng.u32(1..=256 << 10);
                let mut b = request(CommandType::Write, 5, 0, len);
                b.extend(random_bytes(len as usize, u64::from(len)));
                let wire = c.s.seal(&b);
                let at = faults::inside_a_record(&wire, &mut run.rng);
                c.s.send_raw(&wire[..at]).unwrap();
                c.s.into_socket()
            }
            "mid-READ reply over TLS" => {
                let mut c = nbd_tls_session(&mut run, port, &cfg);
                let (req, read) = big_read(&mut run.rng);
                c.send(&req).unwrap();
                c.s.skip_raw(read).expect("READ reply");
                c.s.into_socket()
            }
            "mid-WRITE payload over TLS" => {
                let mut c = nbd_tls_session(&mut run, port, &cfg);
                let (b, _) = big_write(&mut run.rng);
                // whole records: the cut falls between two of them
                c.send(&b).unwrap();
                c.s.into_socket()
            }
            _ => unreachable!(),
        };
        run.cut(kind, s);
        if (i + 1) % CHECK_EVERY == 0 {
            srv.proc.assert_alive();
            nbd_check(
                &mut keep,
                10 + i as u64,
                &mut model,
                "long-lived TLS client",
            );
        }
    }
    nbd_check(
        &mut keep,
        2,
        &mut model,
        "long-lived TLS client after the cuts",
    );
    let mut fresh = nbd_tls_session(&mut run, port, &cfg);
    nbd_check(&mut fresh, 3, &mut model, "a new TLS client after the cuts");
    drop(fresh);
    run.finish(&mut srv.proc, baseline, move || drop(keep));
}

// ------------------------------------------------------------------------------ VNC

fn vnc_server(rt: Runtime, extra: &[&str]) -> VncServer {
    let size = format!("{VNC_W}x{VNC_H}");
    let mut args = vec![
        "-v",
        "--size",
        &size,
        "--name",
        VNC_NAME,
        "--max-connections",
        "100000",
        // longer than the test's deadlines: only a real end frees a connection
        "--handshake-timeout",
        "600",
    ];
    args.extend_from_slice(extra);
    VncServer::start(rt, &args)
}

fn fbur(incremental: bool, x: u16, y: u16, w: u16, h: u16) -> Vec<u8> {
    let mut m = vec![3, u8::from(incremental)];
    for v in [x, y, w, h] {
        m.extend_from_slice(&v.to_be_bytes());
    }
    m
}

/// ServerInit's length with our desktop name.
const SERVER_INIT: usize = 24 + VNC_NAME.len();

/// Reads ServerInit: (width, height), checked against the pattern's size and 32 bpp.
fn server_init(s: &mut impl Read) -> (u16, u16) {
    let mut b = [0u8; SERVER_INIT];
    s.read_exact(&mut b).expect("ServerInit");
    let (w, h) = (
        u16::from_be_bytes([b[0], b[1]]),
        u16::from_be_bytes([b[2], b[3]]),
    );
    assert_eq!((w, h), (VNC_W, VNC_H), "ServerInit size");
    assert_eq!(b[4], 32, "bits per pixel");
    assert_eq!(&b[24..], VNC_NAME.as_bytes(), "desktop name");
    (w, h)
}

/// Asks for a non-incremental update of a random 64x48 area and reads it: Raw rectangles
/// inside the area covering it exactly.
fn vnc_check(s: &mut impl ReadWrite, rng: &mut fastrand::Rng, what: &str) {
    let (w, h) = (64u16, 48u16);
    let (x, y) = (rng.u16(..VNC_W - w), rng.u16(..VNC_H - h));
    s.write_all(&fbur(false, x, y, w, h))
        .unwrap_or_else(|e| panic!("{what}: FramebufferUpdateRequest: {e}"));
    let mut hdr = [0u8; 4];
    s.read_exact(&mut hdr)
        .unwrap_or_else(|e| panic!("{what}: FramebufferUpdate: {e}"));
    assert_eq!(hdr[0], 0, "{what}: FramebufferUpdate expected: {hdr:?}");
    let n = u16::from_be_bytes([hdr[2], hdr[3]]);
    let mut area = 0usize;
    for _ in 0..n {
        let mut r = [0u8; 12];
        s.read_exact(&mut r).expect("rectangle header");
        let v = |i: usize| u16::from_be_bytes([r[i], r[i + 1]]);
        let enc = i32::from_be_bytes(r[8..12].try_into().unwrap());
        assert_eq!(enc, 0, "{what}: Raw expected");
        let (rx, ry, rw, rh) = (v(0), v(2), v(4), v(6));
        assert!(
            rx >= x && ry >= y && rx + rw <= x + w && ry + rh <= y + h,
            "{what}: rectangle {rx},{ry} {rw}x{rh} outside {x},{y} {w}x{h}"
        );
        area += usize::from(rw) * usize::from(rh);
        faults::skip(s, usize::from(rw) * usize::from(rh) * 4).expect("pixels");
    }
    assert_eq!(
        area,
        usize::from(w) * usize::from(h),
        "{what}: area covered"
    );
}

/// The client side of the None handshake (RFB 3.8), server reads included.
fn none_script() -> Vec<Step> {
    vec![
        Step::Read(12),
        Step::Send(b"RFB 003.008\n".to_vec()),
        Step::Read(2),
        Step::Send(vec![1]),
        Step::Read(4),
        Step::Send(vec![1]),
        Step::Read(SERVER_INIT),
    ]
}

/// A None session up to ServerInit.
fn vnc_plain_session(run: &mut Run, port: u16) -> TcpStream {
    let mut s = run.connect(port);
    let steps = none_script();
    let n = script_len(&steps) - SERVER_INIT;
    drive(&mut s, &steps, n, "None handshake");
    server_init(&mut s);
    s
}

/// A client message of a random kind.
fn client_message(rng: &mut fastrand::Rng) -> Vec<u8> {
    match rng.u8(..6) {
        0 => fbur(rng.bool(), 0, 0, VNC_W, VNC_H),
        1 => {
            let n = rng.u16(1..40);
            let mut m = vec![2, 0];
            m.extend_from_slice(&n.to_be_bytes());
            for _ in 0..n {
                m.extend_from_slice(&rng.i32(..).to_be_bytes());
            }
            m
        }
        2 => vec![4, 1, 0, 0, 0, 0, 0, 0x41],
        3 => vec![5, 0, 0, 10, 0, 20],
        4 => {
            let len = rng.u32(1..2000);
            let mut m = vec![6, 0, 0, 0];
            m.extend_from_slice(&len.to_be_bytes());
            m.extend(std::iter::repeat_n(b'x', len as usize));
            m
        }
        _ => vec![
            0, 0, 0, 0, 32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0,
        ],
    }
}

/// How much of a full update to read before the cut: up to 16 MiB of its 33 MB.
fn update_part(rng: &mut fastrand::Rng) -> usize {
    rng.usize(..16 << 20)
}

const VNC_PLAIN_KINDS: &[&str] = &[
    "RFB version/security handshake",
    "mid-VNC update",
    "mid-client message",
];

fn vnc_plain(rt: Runtime) {
    let mut srv = vnc_server(rt, &["--security", "None"]);
    let port = srv.port;
    let mut run = Run::new(format!("VNC None, {}", rt.arg()), 0x564e_4350 ^ rt as u64);
    let mut check_rng = fastrand::Rng::with_seed(run.seed);

    let mut s = vnc_plain_session(&mut run, port);
    vnc_check(&mut s, &mut check_rng, "warm-up client");
    drop(s);
    let baseline = run.baseline(&mut srv.proc);

    let handshake = none_script();
    let mut keep = vnc_plain_session(&mut run, port);
    vnc_check(
        &mut keep,
        &mut check_rng,
        "long-lived client before the cuts",
    );
    for i in 0..CUTS {
        let kind = run.pick(VNC_PLAIN_KINDS);
        let s = match kind {
            "RFB version/security handshake" => {
                let mut s = run.connect(port);
                let at = script_cut(&mut run.rng, &handshake);
                drive(&mut s, &handshake, at, kind);
                s
            }
            "mid-VNC update" => {
                let mut s = vnc_plain_session(&mut run, port);
                s.write_all(&fbur(false, 0, 0, VNC_W, VNC_H)).unwrap();
                let n = update_part(&mut run.rng);
                faults::skip(&mut s, n).expect("update");
                s
            }
            "mid-client message" => {
                let mut s = vnc_plain_session(&mut run, port);
                let m = client_message(&mut run.rng);
                let n = run.rng.usize(1..m.len());
                s.write_all(&m[..n]).unwrap();
                s
            }
            _ => unreachable!(),
        };
        run.cut(kind, s);
        if (i + 1) % CHECK_EVERY == 0 {
            srv.proc.assert_alive();
            vnc_check(&mut keep, &mut check_rng, "long-lived client");
        }
    }
    vnc_check(
        &mut keep,
        &mut check_rng,
        "long-lived client after the cuts",
    );
    let mut fresh = vnc_plain_session(&mut run, port);
    vnc_check(&mut fresh, &mut check_rng, "a new client after the cuts");
    drop(fresh);
    run.finish(&mut srv.proc, baseline, move || drop(keep));
}

/// The client side of VeNCrypt up to the TLS switch (X509None only offered).
fn vencrypt_script() -> Vec<Step> {
    vec![
        Step::Read(12),
        Step::Send(b"RFB 003.008\n".to_vec()),
        Step::Read(2),
        Step::Send(vec![19]),
        Step::Read(2),
        Step::Send(vec![0, 2]),
        Step::Read(6),
        Step::Send(260u32.to_be_bytes().to_vec()),
        Step::Read(1),
    ]
}

/// Up to the VeNCrypt TLS ack.
fn vnc_to_tls(run: &mut Run, port: u16) -> TcpStream {
    let mut s = run.connect(port);
    let mut b = [0u8; 12];
    s.read_exact(&mut b).expect("version");
    s.write_all(b"RFB 003.008\n").unwrap();
    let mut b = [0u8; 2];
    s.read_exact(&mut b).expect("security types");
    assert_eq!(b, [1, 19], "only VeNCrypt offered");
    s.write_all(&[19]).unwrap();
    s.read_exact(&mut b).expect("VeNCrypt version");
    assert_eq!(b, [0, 2]);
    s.write_all(&[0, 2]).unwrap();
    let mut b = [0u8; 6];
    s.read_exact(&mut b).expect("sub-types");
    assert_eq!(b, [0, 1, 0, 0, 1, 4], "ack and [X509None]");
    s.write_all(&260u32.to_be_bytes()).unwrap();
    let mut b = [0u8; 1];
    s.read_exact(&mut b).expect("TLS ack");
    assert_eq!(b, [1], "TLS ack");
    s
}

/// A VeNCrypt X509None session up to ServerInit, inside TLS.
fn vnc_tls_session(run: &mut Run, port: u16, cfg: &TlsClientConfig) -> Tls {
    let s = vnc_to_tls(run, port);
    let mut t = Tls::new(s, cfg, "localhost");
    t.handshake().expect("TLS handshake");
    let mut res = [0u8; 4];
    t.read_exact(&mut res).expect("SecurityResult");
    assert_eq!(res, [0, 0, 0, 0], "SecurityResult");
    t.write_all(&[1]).unwrap();
    server_init(&mut t);
    t
}

const VNC_TLS_KINDS: &[&str] = &[
    "VeNCrypt negotiation",
    "TLS handshake",
    "SecurityResult/ClientInit inside TLS",
    "mid-TLS record",
    "mid-VNC update over TLS",
];

fn vnc_tls(rt: Runtime) {
    let tmp = tempdir();
    let pki = pki(&tmp.path().join("pki"));
    let dir = pki.dir.display().to_string();
    let mut srv = vnc_server(
        rt,
        &[
            "--security",
            "X509None",
            "--tls-creds",
            &dir,
            "--tls-verify-peer",
            "yes",
        ],
    );
    let port = srv.port;
    let cfg = tlsio::client_config(Path::new(&pki.dir));
    let mut run = Run::new(
        format!("VNC X509None, {}", rt.arg()),
        0x564e_4354 ^ rt as u64,
    );
    let mut check_rng = fastrand::Rng::with_seed(run.seed);

    let s = vnc_to_tls(&mut run, port);
    let mut t = Tls::new(s, &cfg, "localhost");
    t.handshake().expect("TLS handshake");
    let hs_len = t.sent;
    drop(t);
    let mut t = vnc_tls_session(&mut run, port, &cfg);
    vnc_check(&mut t, &mut check_rng, "warm-up client");
    drop(t);
    let baseline = run.baseline(&mut srv.proc);

    let vencrypt = vencrypt_script();
    let mut keep = vnc_tls_session(&mut run, port, &cfg);
    vnc_check(
        &mut keep,
        &mut check_rng,
        "long-lived client before the cuts",
    );
    for i in 0..CUTS {
        let kind = run.pick(VNC_TLS_KINDS);
        let s = match kind {
            "VeNCrypt negotiation" => {
                let mut s = run.connect(port);
                let at = script_cut(&mut run.rng, &vencrypt);
                drive(&mut s, &vencrypt, at, kind);
                s
            }
            "TLS handshake" => {
                let s = vnc_to_tls(&mut run, port);
                let mut t = Tls::new(s, &cfg, "localhost");
                let budget = run.rng.usize(..hs_len);
                let done = t.handshake_cut(budget).expect("TLS handshake prefix");
                assert!(
                    !done || budget + 2 >= hs_len,
                    "a {budget}-byte prefix of a {hs_len}-byte handshake completed"
                );
                t.into_socket()
            }
            "SecurityResult/ClientInit inside TLS" => {
                let s = vnc_to_tls(&mut run, port);
                let mut t = Tls::new(s, &cfg, "localhost");
                t.handshake().expect("TLS handshake");
                match run.rng.u8(..4) {
                    0 => {}
                    1 => {
                        let mut b = vec![0u8; run.rng.usize(1..=4)];
                        t.read_exact(&mut b).expect("SecurityResult");
                    }
                    2 => {
                        let mut b = [0u8; 4];
                        t.read_exact(&mut b).expect("SecurityResult");
                        let wire = t.seal(&[1]);
                        let at = faults::inside_a_record(&wire, &mut run.rng);
                        t.send_raw(&wire[..at]).unwrap();
                    }
                    _ => {
                        let mut b = [0u8; 4];
                        t.read_exact(&mut b).expect("SecurityResult");
                        t.write_all(&[1]).unwrap();
                        let n = run.rng.usize(..SERVER_INIT + 22);
                        t.skip_raw(n).expect("ServerInit");
                    }
                }
                t.into_socket()
            }
            "mid-TLS record" => {
                let mut t = vnc_tls_session(&mut run, port, &cfg);
                let mut m = Vec::new();
                for _ in 0..run.rng.usize(1..8) {
                    m.extend(client_message(&mut run.rng));
                }
                let wire = t.seal(&m);
                let at = faults::inside_a_record(&wire, &mut run.rng);
                t.send_raw(&wire[..at]).unwrap();
                t.into_socket()
            }
            "mid-VNC update over TLS" => {
                let mut t = vnc_tls_session(&mut run, port, &cfg);
                t.write_all(&fbur(false, 0, 0, VNC_W, VNC_H)).unwrap();
                let n = update_part(&mut run.rng);
                t.skip_raw(n).expect("update");
                t.into_socket()
            }
            _ => unreachable!(),
        };
        run.cut(kind, s);
        if (i + 1) % CHECK_EVERY == 0 {
            srv.proc.assert_alive();
            vnc_check(&mut keep, &mut check_rng, "long-lived TLS client");
        }
    }
    vnc_check(
        &mut keep,
        &mut check_rng,
        "long-lived TLS client after the cuts",
    );
    let mut fresh = vnc_tls_session(&mut run, port, &cfg);
    vnc_check(
        &mut fresh,
        &mut check_rng,
        "a new TLS client after the cuts",
    );
    drop(fresh);
    run.finish(&mut srv.proc, baseline, move || drop(keep));
}

macro_rules! per_runtime {
    ($($name:ident),* $(,)?) => {
        mod threads {
            use super::*;
            $( #[test] fn $name() { super::$name(Runtime::Threads) } )*
        }
        mod tokio {
            use super::*;
            $( #[test] fn $name() { super::$name(Runtime::Tokio) } )*
        }
    };
}

per_runtime!(nbd_plain, nbd_tls, vnc_plain, vnc_tls);

#[test]
fn the_runs_add_up_to_1000_cuts() {
    assert_eq!(CUTS * RUNS, TOTAL_CUTS);
    assert_eq!(RUNS, 2 * 4, "2 runtimes x 4 services");
}
