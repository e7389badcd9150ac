//! Connection bursts lose nothing: every connection the kernel completes is accepted and
//! served, or refused the way its protocol allows, and logged — never left hanging.
//!
//! * 1,000 NBD clients over TLS at once (STARTTLS, TLS 1.3 with a client certificate, GO,
//!   checked READs, WRITE + FLUSH + read back, DISC), on both runtimes: all served. Before
//!   the listen backlog and the accept loops were fixed, 141 (tokio) and 378 (threads) of
//!   them were lost: the kernel completed their handshakes and dropped them from a full
//!   queue.
//! * 1,000 plain NBD clients at once over a Unix socket, both runtimes: all served.
//! * Over `--max-connections`: NBD connections are closed at once (NBD cannot say why
//!   before its greeting) and each is logged; VNC ones are told "too many connections" in the
//!   form their RFB version allows; the connections within the cap are served meanwhile.
//!
//! Counts, not times: the clients' deadlines only keep a broken server from hanging the test.

use std::io::Read;
use std::net::TcpStream;
use std::path::Path;
use std::time::Duration;

use kvmio_load::{nbd, vnc};
use kvmio_tests::vnc::VncServer;
use kvmio_tests::*;

/// Each client's deadline (a hang guard, not a measurement).
const CLIENT_DEADLINE: Duration = Duration::from_secs(120);

fn rt() -> tokio::runtime::Runtime {
    kvmio_load::raise_nofile_limit();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio")
}

/// An export file big enough for `clients` (each writes its own block in the second half).
fn export_file(dir: &Path, clients: usize) -> std::path::PathBuf {
    let path = dir.join("disk.img");
    let size = (2 * 4096 * (clients as u64 + 2)).max(16 << 20);
    test_image(&path, size, 1009);
    path
}

#[track_caller]
fn assert_all_served(r: &nbd::BurstReport, what: &str) {
    assert_eq!(
        r.ok, r.clients,
        "{what}: {r}\nfirst failures: {:#?}",
        r.examples
    );
}

/// The server ends with every connection counted out (`(0 open)` is the last count logged).
#[track_caller]
fn wait_all_closed(proc: &mut Proc, connections: usize) {
    let log = proc.wait_log_count(" open)", connections, Duration::from_secs(60));
    let last = log.lines().rfind(|l| l.contains(" open)")).unwrap_or("");
    assert!(last.contains("(0 open)"), "last count: {last}");
}

fn tls_burst(runtime: Runtime) {
    let dir = tempdir();
    let pki = pki(&dir.path().join("pki"));
    let n = 1000;
    let file = export_file(dir.path(), n);
    let export = format!("disk={}", file.display());
    let creds = pki.dir.display().to_string();
    let mut server = KvmioServer::start(
        runtime,
        &[
            "-v",
            "--export",
            &export,
            "--tls",
            "require",
            "--tls-creds",
            &creds,
            "--max-connections",
            "1100",
        ],
    );
    let uri = format!("nbds://127.0.0.1:{}/disk", server.port());
    let target = nbd::Target::new(&uri, Some(pki.dir.clone()), &file).expect("target");
    let report = rt()
        .block_on(nbd::burst(&target, n, CLIENT_DEADLINE))
        .expect("burst");
    assert_all_served(&report, &format!("TLS burst on {runtime:?}"));
    wait_all_closed(&mut server.proc, n);
    let log = server.log();
    assert!(!log.contains("refused"), "nothing over the cap:\n{log}");
    server.assert_healthy(
        "disk",
        std::fs::metadata(&file).unwrap().len(),
        Some(&pki.dir),
    );
}

#[test]
fn a_thousand_tls_clients_at_once_on_threads() {
    tls_burst(Runtime::Threads);
}

#[test]
fn a_thousand_tls_clients_at_once_on_tokio() {
    tls_burst(Runtime::Tokio);
}

fn unix_burst(runtime: Runtime) {
    let dir = tempdir();
    let n = 1000;
    let file = export_file(dir.path(), n);
    let sock = dir.path().join("nbd.sock");
    let (export, sock_s) = (
        format!("disk={}", file.display()),
        sock.display().to_string(),
    );
    let mut server = KvmioServer::start(
        runtime,
        &[
            "-v",
            "--unix",
            &sock_s,
            "--export",
            &export,
            "--max-connections",
            "1100",
        ],
    );
    let uri = format!("nbd+unix:///disk?socket={sock_s}");
    let target = nbd::Target::new(&uri, None, &file).expect("target");
    let report = rt()
        .block_on(nbd::burst(&target, n, CLIENT_DEADLINE))
        .expect("burst");
    assert_all_served(&report, &format!("Unix burst on {runtime:?}"));
    wait_all_closed(&mut server.proc, n);
}

#[test]
fn a_thousand_clients_at_once_over_a_unix_socket() {
    unix_burst(Runtime::Threads);
    unix_burst(Runtime::Tokio);
}

/// Reads the whole NBD greeting (18 bytes), or what arrived before the server closed.
fn greeting_or_close(s: &mut TcpStream) -> Vec<u8> {
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut got = Vec::new();
    let mut b = [0u8; 18];
    while got.len() < b.len() {
        match s.read(&mut b[got.len()..]) {
            Ok(0) => return got,
            Ok(n) => got.extend_from_slice(&b[got.len()..got.len() + n]),
            Err(e) if raw::is_closed_error(&e) => return got,
            Err(e) => panic!("neither a greeting nor a close: {e}"),
        }
    }
    got
}

fn nbd_over_the_cap(runtime: Runtime) {
    let (cap, extra) = (20, 200);
    let mut server = KvmioServer::start(
        runtime,
        &[
            "--memory",
            "disk=1M",
            "--max-connections",
            &cap.to_string(),
            "--handshake-timeout",
            "0",
        ],
    );
    let port = server.port();
    // The cap's worth, each greeted and kept open.
    let mut within: Vec<_> = (0..cap)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    for s in &mut within {
        assert_eq!(&greeting_or_close(s)[..8], b"NBDMAGIC", "within the cap");
    }
    // A burst over it: every one is closed at once, none hangs, each refusal is logged.
    let mut over: Vec<_> = (0..extra)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    for s in &mut over {
        assert_eq!(
            greeting_or_close(s),
            b"",
            "over the cap: closed without a greeting"
        );
    }
    server.proc.wait_log_count(
        &format!("refused, {cap} connections already (closed)"),
        extra,
        Duration::from_secs(30),
    );
    // The ones within the cap are still served.
    for s in &mut within {
        let mut c = raw::Nbd::new(s.try_clone().unwrap());
        c.client_flags(3).unwrap();
        c.go_ok("disk");
    }
    drop(within);
    server.assert_healthy("disk", 1 << 20, None);
}

#[test]
fn nbd_connections_over_the_cap_are_closed_and_logged() {
    nbd_over_the_cap(Runtime::Threads);
    nbd_over_the_cap(Runtime::Tokio);
}

fn vnc_over_the_cap(runtime: Runtime) {
    let (cap, extra) = (20, 50);
    let mut server = VncServer::start(
        runtime,
        &[
            "-v",
            "--security",
            "None",
            "--size",
            "64x48",
            "--max-connections",
            &cap.to_string(),
        ],
    );
    let addr = format!("127.0.0.1:{}", server.port);
    let report = rt().block_on(vnc::burst(&addr, cap + extra, CLIENT_DEADLINE));
    assert_eq!(report.served, cap, "{report}: {:?}", report.examples);
    assert_eq!(
        report.refused.get("too many connections").copied(),
        Some(extra),
        "{report}: {:?}",
        report.examples
    );
    assert_eq!(report.lost, 0, "{report}: {:?}", report.examples);
    server.proc.wait_log_count(
        &format!("refused, {cap} connections already (telling the client)"),
        extra,
        Duration::from_secs(30),
    );
    // Once those have gone, a burst within the cap is served whole.
    wait_all_closed(&mut server.proc, cap);
    let report = rt().block_on(vnc::burst(&addr, cap, CLIENT_DEADLINE));
    assert_eq!(report.served, cap, "{report}: {:?}", report.examples);
    server.proc.assert_alive();
}

#[test]
fn vnc_connections_over_the_cap_are_told_why() {
    vnc_over_the_cap(Runtime::Threads);
    vnc_over_the_cap(Runtime::Tokio);
}

/// 300 VNC viewers at once, each served a full frame, on both runtimes.
#[test]
fn vnc_burst_within_the_cap_is_served() {
    for runtime in [Runtime::Threads, Runtime::Tokio] {
        let mut server = VncServer::start(
            runtime,
            &[
                "--security",
                "None",
                "--size",
                "64x48",
                "--max-connections",
                "400",
            ],
        );
        let addr = format!("127.0.0.1:{}", server.port);
        let report = rt().block_on(vnc::burst(&addr, 300, CLIENT_DEADLINE));
        assert_eq!(report.served, 300, "{report}: {:?}", report.examples);
        server.proc.assert_alive();
    }
}
