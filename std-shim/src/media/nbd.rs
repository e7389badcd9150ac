//! An export on another NBD server (qemu-nbd, nbdkit, nbd-server, kvmio), read and written by
//! kvmio's own client: a [`Backend`], so `nbd://`, `nbds://` (TLS, the same credentials
//! directories as everywhere else) and `nbd+unix://` exports can be gadget LUNs (through
//! [`super::kernel_nbd`]) or be re-exported by kvmio's NBD server.
//!
//! One connection, run by a worker thread (the client session in the blocking pump). Callers'
//! requests reach it over a channel; one call's pieces are pipelined up to the client's depth.
//! A request that fails on the wire, or is not answered within [`TIMEOUT`], fails its caller with
//! an I/O error and drops the connection; the next request connects again (a server that
//! restarts comes back). An error the server reports for one request (`NBD_EIO`, ...) fails that
//! request only.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError, Sender, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nbd_core::ExportFeatures;
use nbd_core::client::{Client, ExportInfo, Goal, Item};
use nbd_core::wire::{CommandFlags, CommandType, ErrorCode, TransmissionFlags};

use crate::io::blocking::run_blocking;
use crate::nbd::backend::Backend;
use crate::nbd::client::{self, ClientApp, ClientSession, ClientTls, DEPTH, Options};
use crate::nbd::uri::NbdUri;
use crate::pump::{OutBuf, Pump};

/// Time a request (or connecting) may take before it fails.
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Largest piece one request carries (the server's maximum block size may lower it).
const MAX_REQUEST: u32 = 1 << 20;

/// Where a piece's answer goes: its offset and its data (reads) or error.
type Reply = Sender<(u64, Result<Vec<u8>, ErrorCode>)>;

enum Job {
    Read {
        offset: u64,
        len: u32,
        reply: Reply,
    },
    Write {
        offset: u64,
        data: Vec<u8>,
        fua: bool,
        reply: Reply,
    },
    Flush {
        reply: Reply,
    },
}

/// What the server said about the export.
#[derive(Debug, Clone, Copy)]
struct Info {
    size: u64,
    flags: TransmissionFlags,
    max: u32,
}

/// One live connection: its job queue and stop flag (the worker ends when either goes).
struct Conn {
    jobs: Sender<Job>,
    stop: Arc<AtomicBool>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// An export on an NBD server.
pub struct NbdBackend {
    uri: NbdUri,
    tls: ClientTls,
    info: Info,
    conn: Mutex<Option<Conn>>,
}

impl NbdBackend {
    /// Connects to the export `uri` names (`nbd://`, `nbds://`, `nbd+unix://`, `nbds+unix://`).
    pub fn open(uri: &str, tls: &ClientTls) -> Result<Self> {
        let parsed = NbdUri::parse(uri)?;
        let (conn, info) = connect(&parsed, tls).with_context(|| uri.to_string())?;
        if info.size == 0 {
            bail!("{uri}: the export is empty");
        }
        Ok(Self {
            uri: parsed,
            tls: tls.clone(),
            info,
            conn: Mutex::new(Some(conn)),
        })
    }

    /// Whether the server exports it read-only.
    pub fn read_only(&self) -> bool {
        self.info.flags.contains(TransmissionFlags::READ_ONLY)
    }

    /// Sends `jobs` (made with the reply sender given) on the live connection, reconnecting if
    /// there is none, and waits for every reply; on a timeout or a lost connection the
    /// connection is dropped.
    fn call(&self, jobs: impl FnOnce(&Reply) -> Vec<Job>) -> io::Result<Vec<(u64, Vec<u8>)>> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        if guard.is_none() {
            let (conn, info) = connect(&self.uri, &self.tls).map_err(|e| {
                log::warn!("{}: reconnect: {e:#}", self.uri);
                io::Error::other(format!("{}: {e:#}", self.uri))
            })?;
            if info.size != self.info.size {
                log::warn!(
                    "{}: the export changed size ({} → {} bytes): not used",
                    self.uri,
                    self.info.size,
                    info.size
                );
                return Err(io::Error::other("the export changed size"));
            }
            *guard = Some(conn);
        }
        let (tx, rx) = mpsc::channel();
        let jobs = jobs(&tx);
        drop(tx);
        let count = jobs.len();
        let conn = guard.as_ref().expect("connected above");
        for j in jobs {
            if conn.jobs.send(j).is_err() {
                *guard = None;
                return Err(io::Error::other("the NBD connection is gone"));
            }
        }
        let deadline = Instant::now() + TIMEOUT;
        let mut out = Vec::with_capacity(count);
        for _ in 0..count {
            match rx.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                Ok((offset, Ok(d))) => out.push((offset, d)),
                Ok((_, Err(code))) => return Err(code_error(code)),
                Err(RecvTimeoutError::Timeout) => {
                    log::warn!("{}: no reply within {TIMEOUT:?}: reconnecting", self.uri);
                    *guard = None;
                    return Err(io::ErrorKind::TimedOut.into());
                }
                Err(RecvTimeoutError::Disconnected) => {
                    *guard = None;
                    return Err(io::Error::other("the NBD connection was lost"));
                }
            }
        }
        Ok(out)
    }

    /// The pieces `[offset, offset + len)` is cut into.
    fn pieces(&self, offset: u64, len: usize) -> impl Iterator<Item = (u64, usize, usize)> {
        let step = self.info.max as usize;
        (0..len)
            .step_by(step.max(1))
            .map(move |at| (offset + at as u64, at, step.min(len - at)))
    }
}

fn code_error(code: ErrorCode) -> io::Error {
    let kind = match code {
        ErrorCode::Perm => io::ErrorKind::PermissionDenied,
        ErrorCode::NoSpc => io::ErrorKind::StorageFull,
        ErrorCode::Inval => io::ErrorKind::InvalidInput,
        ErrorCode::NotSup => io::ErrorKind::Unsupported,
        ErrorCode::NoMem => io::ErrorKind::OutOfMemory,
        _ => io::ErrorKind::Other,
    };
    io::Error::new(kind, format!("the NBD server answered {code}"))
}

impl Backend for NbdBackend {
    fn size(&self) -> u64 {
        self.info.size
    }

    fn features(&self) -> ExportFeatures {
        let mut f = ExportFeatures::empty();
        if self.info.flags.contains(TransmissionFlags::SEND_FLUSH) {
            f |= ExportFeatures::FLUSH;
        }
        if self.info.flags.contains(TransmissionFlags::SEND_FUA) {
            f |= ExportFeatures::FUA;
        }
        f
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        let pieces: Vec<_> = self.pieces(offset, buf.len()).collect();
        let got = self
            .call(|reply| {
                pieces
                    .iter()
                    .map(|&(offset, _, len)| Job::Read {
                        offset,
                        len: len as u32,
                        reply: reply.clone(),
                    })
                    .collect()
            })
            .inspect_err(|e| log::warn!("{}: read {offset}+{}: {e}", self.uri, buf.len()))?;
        // Pieces complete in any order: each lands at its offset.
        for (at, data) in got {
            let i = (at - offset) as usize;
            buf[i..i + data.len()].copy_from_slice(&data);
        }
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        if self.read_only() {
            return Err(io::ErrorKind::ReadOnlyFilesystem.into());
        }
        let fua = fua && self.info.flags.contains(TransmissionFlags::SEND_FUA);
        let pieces: Vec<_> = self.pieces(offset, buf.len()).collect();
        self.call(|reply| {
            pieces
                .iter()
                .map(|&(offset, at, len)| Job::Write {
                    offset,
                    data: buf[at..at + len].to_vec(),
                    fua,
                    reply: reply.clone(),
                })
                .collect()
        })
        .inspect_err(|e| log::warn!("{}: write {offset}+{}: {e}", self.uri, buf.len()))?;
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        if !self.info.flags.contains(TransmissionFlags::SEND_FLUSH) {
            return Ok(());
        }
        self.call(|reply| {
            vec![Job::Flush {
                reply: reply.clone(),
            }]
        })
        .inspect_err(|e| log::warn!("{}: flush: {e}", self.uri))?;
        Ok(())
    }
}

/// Starts a worker connected to `uri` and waits until the export is open.
fn connect(uri: &NbdUri, tls: &ClientTls) -> Result<(Conn, Info)> {
    let (jobs_tx, jobs_rx) = mpsc::channel();
    let (ready_tx, ready_rx) = mpsc::channel::<Result<Info, String>>();
    let stop = Arc::new(AtomicBool::new(false));
    let worker = Worker {
        jobs: jobs_rx,
        ready: Some(ready_tx.clone()),
        pending: HashMap::new(),
        cookie: 0,
    };
    let (uri2, tls2, stop2) = (uri.clone(), tls.clone(), stop.clone());
    std::thread::Builder::new()
        .name("nbd-media".into())
        .spawn(move || {
            let r = (|| -> Result<()> {
                let starter = client::starter(&uri2, &tls2)?;
                let mut stream = client::open(&uri2)?;
                let session = ClientSession::new(Options::for_uri(&uri2, Goal::Go), worker);
                let mut pump = Pump::new(session, 4 << 20, starter);
                pump.watch(stop2);
                run_blocking(&mut pump, &mut stream)
            })();
            match r {
                Ok(()) => log::debug!("{uri2}: disconnected"),
                Err(e) => {
                    // Before the export opened this is the answer to connect(); after, the
                    // callers waiting see their replies vanish.
                    let _ = ready_tx.send(Err(format!("{e:#}")));
                    log::warn!("{uri2}: {e:#}");
                }
            }
        })
        .context("spawn the NBD media thread")?;
    let info = match ready_rx.recv_timeout(TIMEOUT) {
        Ok(Ok(info)) => info,
        Ok(Err(e)) => return Err(anyhow!(e)),
        Err(_) => {
            stop.store(true, Ordering::SeqCst);
            bail!("no answer within {TIMEOUT:?}");
        }
    };
    Ok((
        Conn {
            jobs: jobs_tx,
            stop,
        },
        info,
    ))
}

/// A request on the wire: where its data goes and who waits for it.
struct Pending {
    offset: u64,
    data: Vec<u8>,
    error: Option<ErrorCode>,
    reply: Reply,
}

/// The client application on the worker thread.
struct Worker {
    jobs: Receiver<Job>,
    ready: Option<Sender<Result<Info, String>>>,
    pending: HashMap<u64, Pending>,
    cookie: u64,
}

impl Worker {
    fn send(&mut self, job: Job, client: &mut Client<DEPTH>, out: &mut OutBuf) -> Result<()> {
        self.cookie += 1;
        let cookie = self.cookie;
        let (offset, data, reply) = match job {
            Job::Read { offset, len, reply } => {
                let n = client
                    .read(cookie, offset, len, out.tail(32))
                    .map_err(|e| anyhow!("{e}"))?;
                out.commit(n);
                (offset, vec![0; len as usize], reply)
            }
            Job::Write {
                offset,
                data,
                fua,
                reply,
            } => {
                let n = client
                    .write(cookie, offset, data.len() as u32, fua, out.tail(32))
                    .map_err(|e| anyhow!("{e}"))?;
                out.commit(n);
                out.extend(&data);
                (offset, Vec::new(), reply)
            }
            Job::Flush { reply } => {
                let n = client
                    .request(
                        CommandType::Flush,
                        CommandFlags::empty(),
                        cookie,
                        0,
                        0,
                        out.tail(32),
                    )
                    .map_err(|e| anyhow!("{e}"))?;
                out.commit(n);
                (0, Vec::new(), reply)
            }
        };
        self.pending.insert(
            cookie,
            Pending {
                offset,
                data,
                error: None,
                reply,
            },
        );
        Ok(())
    }
}

impl ClientApp for Worker {
    fn ready(&mut self, info: &ExportInfo, _client: &Client<DEPTH>) -> Result<()> {
        let max = info.block_size.maximum.clamp(4096, MAX_REQUEST);
        if let Some(r) = self.ready.take() {
            let _ = r.send(Ok(Info {
                size: info.size,
                flags: info.flags,
                max,
            }));
        }
        Ok(())
    }

    fn submit(&mut self, client: &mut Client<DEPTH>, out: &mut OutBuf) -> Result<bool> {
        while client.can_send_request() {
            // Nothing on the wire and every completion handed over (the client frees a request's
            // slot before it reports the request done): wait for work, since the pump calls
            // again only when a reply comes in, and none will. The callers' side going away ends
            // the connection cleanly.
            let job = if client.in_flight() == 0 && self.pending.is_empty() {
                match self.jobs.recv() {
                    Ok(j) => j,
                    Err(_) => return Ok(true),
                }
            } else {
                match self.jobs.try_recv() {
                    Ok(j) => j,
                    Err(TryRecvError::Empty) => return Ok(false),
                    Err(TryRecvError::Disconnected) => return Ok(true),
                }
            };
            self.send(job, client, out)?;
        }
        Ok(false)
    }

    fn reply(&mut self, item: Item<'_>) -> Result<()> {
        match item {
            Item::ReadData {
                cookie,
                offset,
                data,
            } => {
                let p = self
                    .pending
                    .get_mut(&cookie)
                    .context("data for no request")?;
                let at = offset
                    .checked_sub(p.offset)
                    .and_then(|a| usize::try_from(a).ok())
                    .filter(|a| a + data.len() <= p.data.len())
                    .context("read data outside its request")?;
                p.data[at..at + data.len()].copy_from_slice(data);
            }
            Item::ReadHole {
                cookie,
                offset,
                length,
            } => {
                let p = self
                    .pending
                    .get_mut(&cookie)
                    .context("a hole for no request")?;
                let at = offset
                    .checked_sub(p.offset)
                    .and_then(|a| usize::try_from(a).ok())
                    .filter(|a| a + length as usize <= p.data.len())
                    .context("a hole outside its request")?;
                p.data[at..at + length as usize].fill(0);
            }
            Item::ChunkError {
                cookie,
                code,
                message,
                ..
            } => {
                if !message.is_empty() {
                    log::warn!("NBD server: {code}: {message}");
                }
                if let Some(p) = self.pending.get_mut(&cookie) {
                    p.error = Some(code);
                }
            }
            Item::Done { cookie, result } => {
                let p = self
                    .pending
                    .remove(&cookie)
                    .context("a reply to no request")?;
                let r = match (result, p.error) {
                    (Err(e), _) => Err(e.code),
                    (Ok(()), Some(code)) => Err(code),
                    (Ok(()), None) => Ok(p.data),
                };
                let _ = p.reply.send((p.offset, r));
            }
            _ => {}
        }
        Ok(())
    }
}
