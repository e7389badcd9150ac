//! Slow readers: an NBD client over TLS that sends 64 READs of 1 MiB at once and then stops
//! reading (socket open, nothing read), against the running `kvmio nbd serve --tls require`
//! on both drivers.
//!
//! Asserted, by counts and sizes (deadlines only guard against hangs):
//! * **Bounded memory.** The server's resident memory (`VmRSS`) is sampled just before the
//!   64 READs are sent and again once it has stopped growing (no change over 2 s): the growth
//!   stays below [`RSS_BOUND`] = 16 MiB, against 64 MiB of replies (plus as much ciphertext)
//!   that a server queueing them all would hold. What the server may hold for a stuck
//!   connection is the socket buffers, one output batch and the TLS buffers: the socket
//!   buffers (the server's send queue and the client's receive queue, several MiB, reported
//!   from `/proc/net/tcp`) are kernel memory and not in VmRSS; the output batch is one reply
//!   (the session stops taking requests at 1 MiB of output, so 1 MiB + 16 bytes); the TLS
//!   buffers are one encrypted batch (1 MiB of plaintext in 16 KiB records, about 1 MiB) and the
//!   layer's own record buffers (under 100 KiB); allocator slack makes up the rest.
//! * **Others are not slowed.** While the slow reader is stuck, a second raw TLS client does a
//!   fixed workload (32 rounds of a 256 KiB WRITE read back, and a 1 MiB READ of the file's
//!   original data), and `qemu-io` over TLS writes and verifies a pattern: both complete, data
//!   checked, within the hang guard; the slow reader's socket is still stuck afterwards.
//! * **Then** the slow reader either resumes and gets all 64 replies with the right cookies
//!   and data, or hangs up (reset); either way every connection the server saw ends (as many
//!   `(N open)` lines as `connected` lines, the last `(0 open)`) and its descriptor count is
//!   back to where it was before the slow reader connected.

use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use kvmio_tests::faults;
use kvmio_tests::raw::{self, Nbd, Reply};
use kvmio_tests::tlsio::{TlsStream, client_config};
use kvmio_tests::*;
use nbd_core::wire::{CommandFlags, CommandType, OptionType, ReplyType};
use tls_glue::TlsClientConfig;

/// READs the slow reader sends at once.
const READS: usize = 64;
/// Each READ's length.
const READ_LEN: usize = 1 << 20;
/// The export: the slow reader reads `[0, 64 MiB)`, the other clients work above it.
const FILE_LEN: usize = 72 << 20;
const OTHERS_AT: usize = READS * READ_LEN;
/// The most the server's VmRSS may grow while the slow reader is stuck.
const RSS_BOUND: u64 = 16 << 20;
/// How long the end of every connection may take (a hang guard).
const END_DEADLINE: Duration = Duration::from_secs(30);

struct Fixture {
    _tmp: TempDir,
    pki: Pki,
    cfg: TlsClientConfig,
    srv: KvmioServer,
    data: Vec<u8>,
}

fn fixture(rt: Runtime) -> Fixture {
    let tmp = tempdir();
    let pki = pki(&tmp.path().join("pki"));
    let image = tmp.path().join("disk.img");
    let data = random_bytes(FILE_LEN, 0x510e);
    std::fs::write(&image, &data).expect("write image");
    let export = format!("disk={}", image.display());
    let dir = pki.dir.display().to_string();
    let srv = KvmioServer::start(
        rt,
        &[
            "-v",
            "--tls",
            "require",
            "--tls-creds",
            &dir,
            "--export",
            &export,
        ],
    );
    let cfg = client_config(&pki.dir);
    Fixture {
        _tmp: tmp,
        pki,
        cfg,
        srv,
        data,
    }
}

/// STARTTLS, the TLS handshake and GO: a session in the transmission phase.
fn tls_session(f: &Fixture) -> Nbd<TlsStream> {
    let mut c = raw::connect(f.srv.port());
    c.handshake().expect("handshake");
    let r = c.option(OptionType::StartTls, &[]).expect("STARTTLS");
    assert_eq!(r[0].reply, ReplyType::Ack, "STARTTLS: {r:?}");
    let mut t = TlsStream::client(c.s, &f.cfg, "127.0.0.1");
    t.handshake().expect("TLS handshake");
    let mut c = Nbd::new(t);
    assert_eq!(c.go_ok("disk").0, FILE_LEN as u64);
    c
}

fn local_port(s: &TcpStream) -> u16 {
    s.local_addr().expect("local_addr").port()
}

/// Bytes waiting in the kernel between the server and the client on `client_port`: the
/// server's send queue and the client's receive queue.
fn queued(server_port: u16, client_port: u16) -> (u64, u64) {
    let server = faults::tcp_queues(server_port, client_port).map_or(0, |q| q.0);
    let client = faults::tcp_queues(client_port, server_port).map_or(0, |q| q.1);
    (server, client)
}

fn kib(b: u64) -> String {
    format!("{} KiB", b / 1024)
}

/// A stuck slow reader: connected, 64 READs sent, nothing read; the server's RSS growth
/// checked. Returns the client.
fn stuck_slow_reader(f: &mut Fixture) -> Nbd<TlsStream> {
    let pid = f.srv.proc.id();
    let mut slow = tls_session(f);
    let slow_port = local_port(slow.s.get_ref());
    let before = faults::rss_kb(pid) * 1024;
    let mut reqs = Vec::new();
    for i in 0..READS {
        reqs.extend(raw::request_bytes(
            CommandType::Read,
            CommandFlags::empty(),
            1000 + i as u64,
            (i * READ_LEN) as u64,
            READ_LEN as u32,
        ));
    }
    slow.send(&reqs).expect("64 READs");
    // the server fills the socket buffers, then blocks: wait until the queues and its memory
    // stop changing
    let port = f.srv.port();
    faults::wait_settled(
        "the slow reader's socket queues",
        Duration::from_millis(100),
        20,
        0,
        Duration::from_secs(30),
        || {
            let (s, c) = queued(port, slow_port);
            s + c
        },
    );
    let after = faults::wait_settled(
        "the server's VmRSS",
        Duration::from_millis(100),
        20,
        64 * 1024,
        Duration::from_secs(30),
        || faults::rss_kb(pid) * 1024,
    );
    let (sq, cq) = queued(port, slow_port);
    let growth = after.saturating_sub(before);
    eprintln!(
        "slow reader stuck: server VmRSS {} -> {} (+{}), queued in the kernel: server send \
         {} + client receive {} = {} of {} of replies",
        kib(before),
        kib(after),
        kib(growth),
        kib(sq),
        kib(cq),
        kib(sq + cq),
        kib((READS * (READ_LEN + 16)) as u64)
    );
    assert!(
        growth < RSS_BOUND,
        "the server's VmRSS grew by {} (from {} to {}) for a client that does not read its \
         64 x 1 MiB READ replies: bound {}",
        kib(growth),
        kib(before),
        kib(after),
        kib(RSS_BOUND)
    );
    // the client really is stuck: most of the replies are neither in the kernel nor read
    assert!(
        sq + cq < (READS * READ_LEN / 2) as u64,
        "{} of the replies are queued in the kernel: the client is not stuck",
        kib(sq + cq)
    );
    slow
}

/// The other clients' fixed workload, with checks: a raw TLS client (32 rounds of a 256 KiB
/// WRITE read back, and a 1 MiB READ of the original data at the slow reader's offsets) and
/// qemu-io over TLS (a 1 MiB pattern written and verified).
fn others_work(f: &Fixture) {
    let mut c = tls_session(f);
    for round in 0..32u64 {
        let len = 256 << 10;
        let off = OTHERS_AT + (round as usize % 16) * len;
        let data = random_bytes(len, round + 77);
        assert_eq!(
            c.simple_write(round, off as u64, &data).expect("WRITE"),
            0,
            "WRITE error"
        );
        let got = c
            .simple_read(round, off as u64, len as u32)
            .expect("READ")
            .expect("READ error");
        assert_same_bytes(&got, &data, "the other client's WRITE read back");
        let at = (round as usize % READS) * READ_LEN;
        let got = c
            .simple_read(round, at as u64, READ_LEN as u32)
            .expect("READ")
            .expect("READ error");
        assert_same_bytes(
            &got,
            &f.data[at..at + READ_LEN],
            "the other client's READ of the original data",
        );
    }
    drop(c);
    let t = f.srv.target("disk").with_tls(&f.pki.dir);
    let at = OTHERS_AT + (4 << 20);
    let out = run(&mut t.qemu_io(&[
        &format!("write -P 0x5a {at} 1M"),
        &format!("read -P 0x5a {at} 1M"),
    ]))
    .expect_ok();
    let text = out.text();
    assert!(
        !text.contains("failed") && text.matches("1 MiB").count() >= 2,
        "qemu-io:\n{text}\n{}",
        out.stderr
    );
}

/// Every connection the server saw ended, the last with `(0 open)`.
fn all_ended(f: &mut Fixture) {
    let end = std::time::Instant::now() + END_DEADLINE;
    loop {
        let log = f.srv.log();
        let connected = log.lines().filter(|l| l.ends_with(": connected")).count();
        let ended = faults::ended_lines(&log);
        if ended.len() == connected && ended.last().is_some_and(|l| l.ends_with("(0 open)")) {
            assert!(!log.contains("panicked"), "the server panicked:\n{log}");
            eprintln!("{connected} connections, all ended");
            return;
        }
        assert!(
            std::time::Instant::now() < end,
            "{connected} connections but {} ended within {END_DEADLINE:?} (last: {:?})\n{log}",
            ended.len(),
            ended.last()
        );
        f.srv.proc.assert_alive();
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn baseline_fds(f: &mut Fixture) -> usize {
    all_ended(f);
    let pid = f.srv.proc.id();
    faults::wait_settled(
        "the server's descriptor count",
        Duration::from_millis(50),
        5,
        0,
        Duration::from_secs(20),
        || faults::fd_count(pid) as u64,
    ) as usize
}

/// The slow reader resumes and gets every reply, data checked.
fn slow_reader_resumes_and_gets_every_reply(rt: Runtime) {
    let mut f = fixture(rt);
    // a first session, so that what is made once per process is not counted as growth
    tls_session(&f).simple_read(1, 0, 4096).unwrap().unwrap();
    let fds = baseline_fds(&mut f);
    let mut slow = stuck_slow_reader(&mut f);
    let slow_port = local_port(slow.s.get_ref());
    others_work(&f);
    // still stuck: its replies wait in the kernel, and most are not even there
    let (sq, cq) = queued(f.srv.port(), slow_port);
    assert!(
        cq > 0 && sq + cq < (READS * READ_LEN / 2) as u64,
        "the slow reader's queues after the others' work: server send {sq}, client receive {cq}"
    );
    // resume: every reply, in any order, with its data
    let mut seen = [false; READS];
    for _ in 0..READS {
        match slow.any_reply().expect("reply") {
            Reply::Simple(r) => {
                assert_eq!(r.error, 0, "READ error for cookie {}", r.cookie);
                let i = usize::try_from(r.cookie - 1000).expect("cookie");
                assert!(i < READS && !seen[i], "unexpected cookie {}", r.cookie);
                seen[i] = true;
                let got = slow.read_vec(READ_LEN).expect("READ data");
                assert_same_bytes(
                    &got,
                    &f.data[i * READ_LEN..(i + 1) * READ_LEN],
                    &format!("reply {i} to the slow reader"),
                );
            }
            other => panic!("{other:?}"),
        }
    }
    // and the session goes on
    let got = slow.simple_read(1, 0, 4096).unwrap().unwrap();
    assert_same_bytes(&got, &f.data[..4096], "a READ after the 64");
    drop(slow);
    all_ended(&mut f);
    faults::wait_fds(
        &mut f.srv.proc,
        fds,
        END_DEADLINE,
        "after the slow reader left",
    );
    f.srv
        .assert_healthy("disk", FILE_LEN as u64, Some(&f.pki.dir.clone()));
}

/// The slow reader hangs up (reset) while stuck.
fn slow_reader_that_hangs_up_is_forgotten(rt: Runtime) {
    let mut f = fixture(rt);
    tls_session(&f).simple_read(1, 0, 4096).unwrap().unwrap();
    let fds = baseline_fds(&mut f);
    let slow = stuck_slow_reader(&mut f);
    others_work(&f);
    faults::set_reset_on_close(slow.s.get_ref());
    drop(slow);
    all_ended(&mut f);
    faults::wait_fds(
        &mut f.srv.proc,
        fds,
        END_DEADLINE,
        "after the slow reader hung up",
    );
    let dir = f.pki.dir.clone();
    f.srv
        .assert_healthy("disk", FILE_LEN as u64, Some(Path::new(&dir)));
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

per_runtime!(
    slow_reader_resumes_and_gets_every_reply,
    slow_reader_that_hangs_up_is_forgotten,
);
