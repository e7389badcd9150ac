//! Helpers for the client-fault and slow-reader tests (`tests/tests/client_faults.rs`,
//! `tests/tests/slow_reader.rs`): cutting a TCP connection by close or by reset, the server
//! process's resources from `/proc` (open descriptors, resident memory, socket queues), the
//! server's per-connection end lines, and a blocking TLS client ([`Tls`]) that can stop its
//! handshake after any byte and hand out ciphertext without sending it (to send part of a
//! record).

use std::io::{self, ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tls_glue::{TlsClientConfig, TlsLayer};

use crate::Proc;

// ------------------------------------------------------------------------------ cuts

/// How a client cuts its connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Cut {
    /// `close(2)`: a FIN (or a reset if unread data is waiting, as the kernel does).
    Close,
    /// `SO_LINGER` 0 then `close(2)`: a reset (RST), whatever is queued.
    Reset,
}

impl Cut {
    /// Either, at random.
    pub fn pick(rng: &mut fastrand::Rng) -> Self {
        if rng.bool() { Self::Close } else { Self::Reset }
    }

    /// Cuts the connection of `s` (dropping it).
    pub fn apply(self, s: TcpStream) {
        if self == Self::Reset {
            set_reset_on_close(&s);
        }
        drop(s);
    }
}

/// Makes the next close of `s` a reset (`SO_LINGER` on with a zero timeout).
pub fn set_reset_on_close(s: &TcpStream) {
    rustix::net::sockopt::set_socket_linger(s, Some(Duration::ZERO)).expect("SO_LINGER 0");
}

// ------------------------------------------------------------------------------ /proc

/// The number of open file descriptors of process `pid` (entries of `/proc/PID/fd`).
pub fn fd_count(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/fd: {e}"))
        .count()
}

/// What the open descriptors of `pid` point at (`socket:[…]`, paths…), sorted, for messages.
pub fn fd_targets(pid: u32) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| {
            d.flatten()
                .map(|e| {
                    let t = std::fs::read_link(e.path())
                        .map(|p| p.display().to_string())
                        .unwrap_or_else(|_| "?".into());
                    format!("{}: {t}", e.file_name().to_string_lossy())
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Waits (up to `deadline`) until `proc` has exactly `want` open descriptors; panics with the
/// descriptor list if it does not get there. Returns the count.
#[track_caller]
pub fn wait_fds(proc: &mut Proc, want: usize, deadline: Duration, what: &str) -> usize {
    let end = Instant::now() + deadline;
    loop {
        proc.assert_alive();
        let n = fd_count(proc.id());
        if n == want {
            return n;
        }
        if Instant::now() > end {
            panic!(
                "{what}: the server has {n} open file descriptors, expected {want} (after \
                 waiting {deadline:?}):\n{}",
                fd_targets(proc.id()).join("\n")
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A field of `/proc/PID/status` in kB (`VmRSS`, `VmHWM`…).
pub fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"))
}

/// The resident set size of `pid` in kB (`VmRSS`).
pub fn rss_kb(pid: u32) -> u64 {
    status_kb(pid, "VmRSS")
}

/// The send and receive queues (bytes) of the TCP socket `127.0.0.1:local` ↔
/// `127.0.0.1:remote` from `/proc/net/tcp`, if it exists.
pub fn tcp_queues(local: u16, remote: u16) -> Option<(u64, u64)> {
    let (l, r) = (
        format!("0100007F:{local:04X}"),
        format!("0100007F:{remote:04X}"),
    );
    let table = std::fs::read_to_string("/proc/net/tcp").ok()?;
    table.lines().skip(1).find_map(|line| {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 5 || f[1] != l || f[2] != r {
            return None;
        }
        let (tx, rx) = f[4].split_once(':')?;
        Some((
            u64::from_str_radix(tx, 16).ok()?,
            u64::from_str_radix(rx, 16).ok()?,
        ))
    })
}

/// Polls `sample` every `every` until it returned the same value `stable` times in a row
/// (within `slack`), or `deadline` passed (then panics, naming `what` and the samples).
/// Returns the settled value.
#[track_caller]
pub fn wait_settled(
    what: &str,
    every: Duration,
    stable: usize,
    slack: u64,
    deadline: Duration,
    mut sample: impl FnMut() -> u64,
) -> u64 {
    let end = Instant::now() + deadline;
    let mut last = sample();
    let mut same = 0;
    let mut history = vec![last];
    loop {
        std::thread::sleep(every);
        let v = sample();
        history.push(v);
        if v.abs_diff(last) <= slack {
            same += 1;
            if same >= stable {
                return v;
            }
        } else {
            same = 0;
            last = v;
        }
        assert!(
            Instant::now() < end,
            "{what} did not settle within {deadline:?}: samples {history:?}"
        );
    }
}

// ------------------------------------------------------------------------------ log

/// The server's lines for ended connections: `PEER: closed (N open)` or
/// `PEER: ERROR (N open)`.
pub fn ended_lines(log: &str) -> Vec<&str> {
    log.lines().filter(|l| l.ends_with(" open)")).collect()
}

/// Waits until the server logged the end of `count` connections (up to `deadline`), then
/// checks that it logged no more than that and that the last one left none open. Returns the
/// log.
#[track_caller]
pub fn wait_all_ended(proc: &mut Proc, count: usize, deadline: Duration) -> String {
    let log = proc.wait_log_count(" open)", count, deadline);
    let ended = ended_lines(&log);
    assert_eq!(
        ended.len(),
        count,
        "the server logged the end of {} connections, {count} were made",
        ended.len()
    );
    let last = ended.last().expect("an ended connection");
    assert!(
        last.ends_with("(0 open)"),
        "the last ended connection left some open: {last}"
    );
    log
}

/// Waits until the server logged the end of `count` connections (more is an error).
#[track_caller]
pub fn wait_ended(proc: &mut Proc, count: usize, deadline: Duration) -> String {
    let log = proc.wait_log_count(" open)", count, deadline);
    let n = ended_lines(&log).len();
    assert_eq!(n, count, "the server logged the end of {n} connections");
    log
}

// ------------------------------------------------------------------------------ TLS

/// TLS record boundaries in `ciphertext` (a whole number of records): `(start, len)` of each,
/// header included.
pub fn records(ciphertext: &[u8]) -> Vec<(usize, usize)> {
    let mut v = Vec::new();
    let mut at = 0;
    while at + 5 <= ciphertext.len() {
        let len = 5 + usize::from(u16::from_be_bytes([ciphertext[at + 3], ciphertext[at + 4]]));
        v.push((at, len));
        at += len;
    }
    assert_eq!(at, ciphertext.len(), "not a whole number of TLS records");
    v
}

/// A point strictly inside a record of `ciphertext` (in its header or its body), at random.
pub fn inside_a_record(ciphertext: &[u8], rng: &mut fastrand::Rng) -> usize {
    let recs = records(ciphertext);
    let (start, len) = recs[rng.usize(..recs.len())];
    start + rng.usize(1..len)
}

/// A blocking TLS client over a TCP stream (`tls_glue::TlsLayer`), for cutting connections
/// at chosen ciphertext bytes: [`handshake_cut`](Self::handshake_cut) sends at most a budget
/// of handshake bytes, [`seal`](Self::seal) encrypts without sending, and the socket is
/// reachable for raw reads and writes.
pub struct Tls {
    /// The TCP stream.
    pub sock: TcpStream,
    layer: TlsLayer,
    /// Ciphertext bytes sent so far.
    pub sent: usize,
}

fn tls_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(format!("TLS: {e}"))
}

impl Tls {
    /// A client for `server_name` on `sock` (nothing sent yet).
    pub fn new(sock: TcpStream, config: &TlsClientConfig, server_name: &str) -> Self {
        let layer =
            TlsLayer::client(config, server_name).unwrap_or_else(|e| panic!("TLS client: {e}"));
        Self {
            sock,
            layer,
            sent: 0,
        }
    }

    /// Runs the handshake, sending at most `budget` ciphertext bytes. `Ok(true)`: the
    /// handshake completed within the budget; `Ok(false)`: the budget ran out first (the last
    /// write may have been partial).
    pub fn handshake_cut(&mut self, budget: usize) -> io::Result<bool> {
        loop {
            let p = self.layer.pending_transmit();
            if !p.is_empty() {
                let all = p.len();
                let n = all.min(budget.saturating_sub(self.sent));
                self.sock.write_all(&p[..n])?;
                self.sent += n;
                self.layer.transmit_done(n);
                if n < all {
                    return Ok(false);
                }
            }
            if let Some(e) = self.layer.error() {
                return Err(tls_err(e));
            }
            if !self.layer.is_handshaking() {
                return Ok(true);
            }
            if self.sent >= budget {
                return Ok(false);
            }
            if !self.pull()? {
                return Err(io::Error::new(
                    ErrorKind::UnexpectedEof,
                    "server closed during the TLS handshake",
                ));
            }
        }
    }

    /// Runs the whole handshake.
    pub fn handshake(&mut self) -> io::Result<()> {
        if self.handshake_cut(usize::MAX)? {
            Ok(())
        } else {
            Err(io::Error::other("handshake budget"))
        }
    }

    /// Receives ciphertext once; `Ok(false)` at the end of the stream.
    fn pull(&mut self) -> io::Result<bool> {
        let buf = self.layer.ciphertext_buffer();
        if buf.is_empty() {
            return Err(io::Error::other("TLS receive buffer full"));
        }
        let n = self.sock.read(buf)?;
        if n == 0 {
            return match self.layer.handle_eof() {
                Ok(()) => Ok(false),
                Err(e) => Err(io::Error::new(ErrorKind::UnexpectedEof, tls_err(e))),
            };
        }
        // what the layer wants to send in answer (a handshake flight, an alert) is sent by
        // the caller: `handshake_cut` holds it to its budget
        self.layer.commit_ciphertext(n).map_err(tls_err)?;
        Ok(true)
    }

    /// Sends what the layer has pending (post-handshake messages, alerts).
    fn flush_pending(&mut self) -> io::Result<()> {
        let p = self.layer.pending_transmit();
        if !p.is_empty() {
            let k = p.len();
            self.sock.write_all(p)?;
            self.sent += k;
            self.layer.transmit_done(k);
        }
        Ok(())
    }

    /// `plain` encrypted into records (after any pending handshake bytes), not sent.
    pub fn seal(&mut self, plain: &[u8]) -> Vec<u8> {
        let mut out = vec![0u8; self.layer.encrypted_len(plain.len())];
        let n = self
            .layer
            .encrypt(plain, &mut out)
            .unwrap_or_else(|e| panic!("encrypt: {e}"));
        out.truncate(n);
        out
    }

    /// Sends ciphertext as it is.
    pub fn send_raw(&mut self, ciphertext: &[u8]) -> io::Result<()> {
        self.sock.write_all(ciphertext)?;
        self.sent += ciphertext.len();
        Ok(())
    }

    /// Reads and discards exactly `n` ciphertext bytes (they are never decrypted: use this
    /// only before cutting the connection).
    pub fn skip_raw(&mut self, n: usize) -> io::Result<()> {
        skip(&mut self.sock, n)
    }

    /// The socket, for cutting the connection.
    pub fn into_socket(self) -> TcpStream {
        self.sock
    }
}

impl Read for Tls {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        self.handshake()?;
        loop {
            let p = self.layer.plaintext();
            if !p.is_empty() {
                let n = p.len().min(out.len());
                out[..n].copy_from_slice(&p[..n]);
                self.layer.consume_plaintext(n);
                return Ok(n);
            }
            if self.layer.peer_closed() || !self.pull()? {
                return Ok(0);
            }
            self.flush_pending()?;
        }
    }
}

impl Write for Tls {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.handshake()?;
        let c = self.seal(data);
        self.send_raw(&c)?;
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Reads and discards exactly `n` bytes.
pub fn skip(r: &mut impl Read, mut n: usize) -> io::Result<()> {
    let mut buf = vec![0u8; n.min(1 << 20)];
    while n > 0 {
        let k = buf.len().min(n);
        r.read_exact(&mut buf[..k])?;
        n -= k;
    }
    Ok(())
}
