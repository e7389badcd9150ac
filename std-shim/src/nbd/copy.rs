//! Copying between NBD exports, files and stdin/stdout (`kvmio nbd copy SRC DST`).
//!
//! Reading from NBD is sparse-aware (`base:allocation` extents: zero areas are not transferred)
//! and, when the server allows several connections (`CAN_MULTI_CONN`) and the destination is
//! seekable, spread over several connections with many requests in flight on each. READ data is
//! written to the destination straight from the receive buffer; WRITE data is read from the
//! source straight into the send buffer behind the request header.
//!
//! A copy that fails says what the destination holds: the byte ranges known written there
//! (a file: written; an NBD export: acknowledged by the server), after flushing them
//! (`fdatasync`, an NBD FLUSH on a fresh connection, or flushing the stream), e.g. `copy failed
//! with 1048576 of 8388608 bytes written to the destination and flushed, at [0, 1048576): …`,
//! and then the error, the destination's own when it was the one that failed.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use nbd_core::client::{Client, ExportInfo, Goal, Item};
use nbd_core::wire::{AllocationFlags, CommandFlags, CommandType, TransmissionFlags};

use crate::nbd::backend::{Backend, FileBackend};
use crate::nbd::client::{self as nbd_client, ClientApp, ClientTls, DEPTH, InfoApp};
use crate::nbd::uri::NbdUri;
use crate::pump::OutBuf;

/// One side of a copy.
#[derive(Debug, Clone)]
pub enum Place {
    /// An NBD export.
    Nbd(NbdUri),
    /// A file or block device.
    File(PathBuf),
    /// Standard input or output.
    Stdio,
}

impl Place {
    /// `-`, an NBD URI, or a path.
    pub fn parse(s: &str) -> Result<Self> {
        Ok(if s == "-" {
            Self::Stdio
        } else if NbdUri::is_uri(s) {
            Self::Nbd(NbdUri::parse(s)?)
        } else {
            Self::File(s.into())
        })
    }
}

/// Copy settings.
#[derive(Clone)]
pub struct CopyOptions {
    /// Most connections per NBD side (used when the server allows several).
    pub connections: usize,
    /// Bytes per request.
    pub request_size: u32,
    /// TLS settings.
    pub tls: ClientTls,
    /// Shown how the copy goes (e.g. a progress bar), if anyone.
    pub progress: Option<Arc<dyn Progress>>,
}

impl Default for CopyOptions {
    fn default() -> Self {
        Self {
            connections: 4,
            request_size: 1 << 20,
            tls: ClientTls::default(),
            progress: None,
        }
    }
}

/// Watches a copy's transfers, e.g. to draw progress bars ([`CopyOptions::progress`]). A copy
/// from NBD to NBD has two at once: reading the source and writing the destination. Copies with
/// no NBD side are the OS's and report nothing.
pub trait Progress: Send + Sync {
    /// A transfer of `total` bytes begins; what it returns is told how it goes.
    fn start(&self, total: u64) -> Box<dyn TransferProgress>;
}

/// One transfer's progress, told from a thread of its own.
pub trait TransferProgress: Send {
    /// `done` bytes are copied: every 100 ms, and once more when the transfer ends.
    fn update(&mut self, done: u64);
    /// The transfer ended, copied or failed (before a failure is reported).
    fn finish(&mut self);
}

/// Byte ranges of a destination that hold their final contents, merged and in order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(BTreeMap<u64, u64>);

impl Ranges {
    /// Adds `[offset, offset + len)`.
    pub fn add(&mut self, offset: u64, len: u64) {
        if len == 0 {
            return;
        }
        let (mut start, mut end) = (offset, offset + len);
        if let Some((&s, &e)) = self.0.range(..=start).next_back()
            && e >= start
        {
            start = s;
            end = end.max(e);
        }
        let touching: Vec<u64> = self.0.range(start..=end).map(|(&s, _)| s).collect();
        for s in touching {
            if let Some(e) = self.0.remove(&s) {
                end = end.max(e);
            }
        }
        self.0.insert(start, end);
    }

    /// Bytes covered.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|(s, e)| e - s).sum()
    }

    /// The ranges as `(start, end)`, end exclusive.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.0.iter().map(|(&s, &e)| (s, e))
    }
}

/// Most ranges a failure message lists.
const SHOWN_RANGES: usize = 16;

impl std::fmt::Display for Ranges {
    /// `[0, 4096), [8192, 12288)`; after 16 ranges, how many more.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (s, e)) in self.iter().take(SHOWN_RANGES).enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "[{s}, {e})")?;
        }
        if self.0.len() > SHOWN_RANGES {
            write!(f, " and {} more ranges", self.0.len() - SHOWN_RANGES)?;
        }
        Ok(())
    }
}

/// The error of a copy that failed after writing `written` of `total` bytes, which `flushed`
/// tried to make durable.
fn failed(
    cause: anyhow::Error,
    written: &Ranges,
    total: u64,
    flushed: Result<()>,
) -> anyhow::Error {
    if written.total() == 0 {
        return cause.context("copy failed before anything was written to the destination");
    }
    let state = match flushed {
        Ok(()) => "and flushed".to_string(),
        Err(e) => format!("(but flushing them failed: {e:#})"),
    };
    cause.context(format!(
        "copy failed with {} of {total} bytes written to the destination {state}, at {written}",
        written.total()
    ))
}

/// Where data goes; shared by the copy's connections, so `&self`.
pub trait Sink: Send + Sync {
    /// Writes `data` at `offset`.
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()>;
    /// The range reads as zeroes.
    fn zero(&self, offset: u64, len: u64) -> Result<()>;
    /// Everything was written.
    fn finish(&self) -> Result<()>;
    /// Makes what was written so far durable (files) or hands it to the OS (streams).
    fn flush(&self) -> Result<()>;
    /// The ranges written so far (after a [`flush`](Self::flush): what the destination holds).
    fn written(&self) -> Ranges;
}

/// A file destination: created sparse at the right size, so zero areas need no writes.
struct FileSink {
    file: FileBackend,
    path: PathBuf,
    fresh: bool,
    written: Mutex<Ranges>,
}

impl FileSink {
    fn record(&self, offset: u64, len: u64) -> Result<()> {
        self.written
            .lock()
            .map_err(|_| anyhow!("poisoned"))?
            .add(offset, len);
        Ok(())
    }
}

impl Sink for FileSink {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        self.file.write_at(data, offset, false).with_context(|| {
            format!(
                "{}: write of {} bytes at offset {offset}",
                self.path.display(),
                data.len()
            )
        })?;
        self.record(offset, data.len() as u64)
    }

    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        if !self.fresh {
            self.file
                .write_zeroes(offset, len, true, false)
                .with_context(|| {
                    format!(
                        "{}: zeroing {len} bytes at offset {offset}",
                        self.path.display()
                    )
                })?;
        }
        self.record(offset, len)
    }

    fn finish(&self) -> Result<()> {
        self.flush()
    }

    fn flush(&self) -> Result<()> {
        match self.file.flush() {
            // Character devices (/dev/null) cannot be synced.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidInput => Ok(()),
            r => r.with_context(|| format!("{}: fdatasync", self.path.display())),
        }
    }

    fn written(&self) -> Ranges {
        self.written.lock().map(|w| w.clone()).unwrap_or_default()
    }
}

enum Piece {
    Data(Vec<u8>),
    Zero(u64),
}

/// A stream destination (stdout, a pipe): data must go out in order, so pieces that arrive
/// early wait in a small reorder buffer.
struct StreamSink<W> {
    inner: Mutex<(W, u64, BTreeMap<u64, Piece>)>,
}

impl<W: Write + Send> StreamSink<W> {
    fn new(w: W) -> Self {
        Self {
            inner: Mutex::new((w, 0, BTreeMap::new())),
        }
    }
}

fn write_zeroes(w: &mut impl Write, mut len: u64) -> Result<()> {
    let zero = [0u8; 64 * 1024];
    while len > 0 {
        let n = len.min(zero.len() as u64) as usize;
        w.write_all(&zero[..n])?;
        len -= n as u64;
    }
    Ok(())
}

impl<W: Write + Send> StreamSink<W> {
    fn put(&self, offset: u64, piece: Piece) -> Result<()> {
        let mut g = self.inner.lock().map_err(|_| anyhow!("poisoned"))?;
        let (w, next, pending) = &mut *g;
        if offset != *next {
            pending.insert(offset, piece);
            return Ok(());
        }
        let mut piece = Some(piece);
        loop {
            match piece.take() {
                Some(Piece::Data(d)) => {
                    w.write_all(&d)?;
                    *next += d.len() as u64;
                }
                Some(Piece::Zero(n)) => {
                    write_zeroes(w, n)?;
                    *next += n;
                }
                None => {}
            }
            match pending.first_key_value() {
                Some((&o, _)) if o == *next => piece = pending.remove(&o),
                _ => return Ok(()),
            }
        }
    }
}

impl<W: Write + Send> Sink for StreamSink<W> {
    fn write_at(&self, offset: u64, data: &[u8]) -> Result<()> {
        {
            // Fast path: in order, write straight from the lent buffer.
            let mut g = self.inner.lock().map_err(|_| anyhow!("poisoned"))?;
            let (w, next, pending) = &mut *g;
            if *next == offset && pending.is_empty() {
                w.write_all(data)?;
                *next += data.len() as u64;
                return Ok(());
            }
        }
        self.put(offset, Piece::Data(data.to_vec()))
    }

    fn zero(&self, offset: u64, len: u64) -> Result<()> {
        self.put(offset, Piece::Zero(len))
    }

    fn finish(&self) -> Result<()> {
        let mut g = self.inner.lock().map_err(|_| anyhow!("poisoned"))?;
        if !g.2.is_empty() {
            bail!("copy ended with a gap in the output at byte {}", g.1);
        }
        g.0.flush()?;
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        let mut g = self.inner.lock().map_err(|_| anyhow!("poisoned"))?;
        g.0.flush()?;
        Ok(())
    }

    fn written(&self) -> Ranges {
        let mut r = Ranges::default();
        if let Ok(g) = self.inner.lock() {
            r.add(0, g.1);
        }
        r
    }
}

/// Splits `[0, size)` into windows of `window` bytes and deals them round-robin to `workers`.
fn windows(size: u64, window: u64, workers: usize, worker: usize) -> VecDeque<(u64, u64)> {
    let mut v = VecDeque::new();
    let mut off = 0;
    let mut i = 0;
    while off < size {
        let len = window.min(size - off);
        if i % workers == worker {
            v.push_back((off, len));
        }
        off += len;
        i += 1;
    }
    v
}

/// Bytes per block-status window (and per unit of work spread over connections).
const WINDOW: u64 = 64 << 20;

/// The first error of a copy's destination, kept apart from the error it causes on the
/// connection that hit it (which names the other side), and a flag that stops the other
/// connections.
#[derive(Default)]
struct Failure {
    destination: Mutex<Option<anyhow::Error>>,
    stop: AtomicBool,
}

impl Failure {
    /// Records a destination error; returns the error that ends the connection.
    fn destination(&self, e: anyhow::Error) -> anyhow::Error {
        self.stop.store(true, Ordering::Relaxed);
        if let Ok(mut d) = self.destination.lock()
            && d.is_none()
        {
            *d = Some(e);
        }
        anyhow!("the destination failed")
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }

    /// The destination's error if it had one, else `other`.
    fn cause(&self, other: anyhow::Error) -> anyhow::Error {
        self.destination
            .lock()
            .ok()
            .and_then(|mut d| d.take())
            .unwrap_or(other)
    }
}

/// Reads an NBD export into a sink.
struct ReadApp {
    sink: Arc<dyn Sink>,
    failure: Arc<Failure>,
    windows: VecDeque<(u64, u64)>,
    jobs: VecDeque<(u64, u64)>,
    request: u64,
    cookie: u64,
    base_allocation: bool,
    /// Block status in flight: its cookie, where the next extent starts, the window end.
    status: Option<(u64, u64, u64)>,
    done: Arc<AtomicU64>,
}

impl ClientApp for ReadApp {
    fn ready(&mut self, info: &ExportInfo, client: &Client<DEPTH>) -> Result<()> {
        self.base_allocation = !client.contexts().is_empty();
        self.request = self.request.min(u64::from(info.block_size.maximum)).max(1);
        Ok(())
    }

    fn submit(&mut self, client: &mut Client<DEPTH>, out: &mut OutBuf) -> Result<bool> {
        if self.failure.stopped() {
            // Another connection failed: send nothing more.
            return Ok(true);
        }
        while client.can_send_request() {
            if let Some((off, len)) = self.jobs.pop_front() {
                let n = len.min(self.request);
                if n < len {
                    self.jobs.push_front((off + n, len - n));
                }
                self.cookie += 1;
                let w = client
                    .read(self.cookie, off, n as u32, out.tail(32))
                    .map_err(|e| anyhow!("{e}"))?;
                out.commit(w);
                continue;
            }
            if self.status.is_some() {
                return Ok(false);
            }
            let Some((off, len)) = self.windows.pop_front() else {
                return Ok(true);
            };
            if self.base_allocation {
                self.cookie += 1;
                let w = client
                    .request(
                        CommandType::BlockStatus,
                        CommandFlags::empty(),
                        self.cookie,
                        off,
                        len,
                        out.tail(32),
                    )
                    .map_err(|e| anyhow!("{e}"))?;
                out.commit(w);
                self.status = Some((self.cookie, off, off + len));
            } else {
                self.jobs.push_back((off, len));
            }
        }
        Ok(false)
    }

    fn reply(&mut self, item: Item<'_>) -> Result<()> {
        match item {
            Item::ReadData { offset, data, .. } => {
                self.sink
                    .write_at(offset, data)
                    .map_err(|e| self.failure.destination(e))?;
                self.done.fetch_add(data.len() as u64, Ordering::Relaxed);
            }
            Item::ReadHole { offset, length, .. } => {
                self.sink
                    .zero(offset, u64::from(length))
                    .map_err(|e| self.failure.destination(e))?;
                self.done.fetch_add(u64::from(length), Ordering::Relaxed);
            }
            Item::Extents {
                cookie, extents, ..
            } => {
                let Some((c, mut pos, end)) = self.status else {
                    bail!("unexpected block status");
                };
                if c != cookie {
                    bail!("block status for an unknown request");
                }
                let zero = u64::from(AllocationFlags::ZERO.bits());
                for e in extents.iter() {
                    if pos >= end {
                        break;
                    }
                    let len = e.length.min(end - pos);
                    if e.flags & zero != 0 {
                        self.sink
                            .zero(pos, len)
                            .map_err(|e| self.failure.destination(e))?;
                        self.done.fetch_add(len, Ordering::Relaxed);
                    } else {
                        match self.jobs.back_mut() {
                            Some((o, l)) if *o + *l == pos => *l += len,
                            _ => self.jobs.push_back((pos, len)),
                        }
                    }
                    pos += len;
                }
                self.status = Some((c, pos, end));
            }
            Item::ChunkError {
                code,
                message,
                offset,
                ..
            } => {
                bail!(
                    "server error {code}{}{}",
                    offset.map(|o| format!(" at {o}")).unwrap_or_default(),
                    if message.is_empty() {
                        String::new()
                    } else {
                        format!(": {message}")
                    }
                );
            }
            Item::Done { cookie, result } => {
                result.map_err(|e| anyhow!("request failed: {e}"))?;
                if let Some((c, pos, end)) = self.status
                    && c == cookie
                {
                    self.status = None;
                    if pos < end {
                        // A short answer: ask again for the rest of the window.
                        self.windows.push_front((pos, end - pos));
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}

/// Where a WRITE's data comes from.
enum Source {
    /// A file: random access, holes known.
    File(Arc<FileBackend>),
    /// A stream (stdin, a pipe): in order only.
    Stream(Mutex<Box<dyn Read + Send>>),
}

/// Writes a source into an NBD export.
struct WriteApp {
    source: Arc<Source>,
    failure: Arc<Failure>,
    /// Ranges the server acknowledged writing (shared by the connections).
    written: Arc<Mutex<Ranges>>,
    /// Requests in flight: cookie → (command, offset, length).
    pending: HashMap<u64, (CommandType, u64, u64)>,
    windows: VecDeque<(u64, u64)>,
    jobs: VecDeque<(u64, u64, bool)>,
    request: u64,
    cookie: u64,
    can_zero: bool,
    can_flush: bool,
    flushed: bool,
    /// For streams: the next offset and whether the stream ended.
    stream_pos: u64,
    stream_end: bool,
    size: u64,
    staging: Vec<u8>,
    done: Arc<AtomicU64>,
}

impl WriteApp {
    fn fill_jobs(&mut self) -> Result<()> {
        let Some((off, len)) = self.windows.pop_front() else {
            return Ok(());
        };
        let Source::File(f) = &*self.source else {
            return Ok(());
        };
        let mut ext = Vec::new();
        f.extents(off, len, 1 << 16, &mut ext)?;
        let zero = u64::from(AllocationFlags::ZERO.bits());
        let mut pos = off;
        for e in ext {
            let l = e.length.min(off + len - pos);
            self.jobs.push_back((pos, l, e.flags & zero != 0));
            pos += l;
        }
        if pos < off + len {
            self.windows.push_front((pos, off + len - pos));
        }
        Ok(())
    }

    fn send_data(
        &mut self,
        client: &mut Client<DEPTH>,
        out: &mut OutBuf,
        off: u64,
        data: Option<&[u8]>,
        len: u64,
    ) -> Result<()> {
        self.cookie += 1;
        let h = client
            .write(self.cookie, off, len as u32, false, out.tail(32))
            .map_err(|e| anyhow!("{e}"))?;
        out.commit(h);
        let buf = out.tail(len as usize);
        match (data, &*self.source) {
            (Some(d), _) => buf.copy_from_slice(d),
            (None, Source::File(f)) => f
                .read_at(buf, off)
                .with_context(|| format!("reading the source at offset {off}"))?,
            (None, Source::Stream(_)) => buf.fill(0),
        }
        out.commit(len as usize);
        self.pending
            .insert(self.cookie, (CommandType::Write, off, len));
        self.done.fetch_add(len, Ordering::Relaxed);
        Ok(())
    }

    fn send_zero(
        &mut self,
        client: &mut Client<DEPTH>,
        out: &mut OutBuf,
        off: u64,
        len: u64,
    ) -> Result<()> {
        if self.can_zero {
            self.cookie += 1;
            let n = client
                .request(
                    CommandType::WriteZeroes,
                    CommandFlags::empty(),
                    self.cookie,
                    off,
                    len,
                    out.tail(32),
                )
                .map_err(|e| anyhow!("{e}"))?;
            out.commit(n);
            self.pending
                .insert(self.cookie, (CommandType::WriteZeroes, off, len));
            self.done.fetch_add(len, Ordering::Relaxed);
            Ok(())
        } else {
            self.send_data(client, out, off, None, len)
        }
    }
}

impl ClientApp for WriteApp {
    fn ready(&mut self, info: &ExportInfo, _client: &Client<DEPTH>) -> Result<()> {
        self.can_zero = info.flags.contains(TransmissionFlags::SEND_WRITE_ZEROES);
        self.can_flush = info.flags.contains(TransmissionFlags::SEND_FLUSH);
        self.request = self.request.min(u64::from(info.block_size.maximum));
        if info.flags.contains(TransmissionFlags::READ_ONLY) {
            bail!("the destination export is read-only");
        }
        Ok(())
    }

    fn submit(&mut self, client: &mut Client<DEPTH>, out: &mut OutBuf) -> Result<bool> {
        if self.failure.stopped() {
            // Another connection failed: send nothing more (what is in flight is still
            // answered and recorded).
            return Ok(true);
        }
        while client.can_send_request() {
            if let Some((off, len, zero)) = self.jobs.pop_front() {
                let max = if zero && self.can_zero {
                    1 << 30
                } else {
                    self.request
                };
                let n = len.min(max);
                if n < len {
                    self.jobs.push_front((off + n, len - n, zero));
                }
                if zero {
                    self.send_zero(client, out, off, n)?;
                } else {
                    self.send_data(client, out, off, None, n)?;
                }
                continue;
            }
            if matches!(&*self.source, Source::Stream(_)) {
                if self.stream_end || self.stream_pos >= self.size {
                    if !self.stream_end {
                        // The export is full: the stream must be too.
                        let mut probe = [0u8; 1];
                        let Source::Stream(r) = &*self.source else {
                            unreachable!()
                        };
                        if r.lock()
                            .map_err(|_| anyhow!("poisoned"))?
                            .read(&mut probe)?
                            > 0
                        {
                            bail!(
                                "the source is larger than the destination export ({} bytes)",
                                self.size
                            );
                        }
                        self.stream_end = true;
                    }
                } else {
                    let want = self.request.min(self.size - self.stream_pos) as usize;
                    self.staging.resize(want, 0);
                    let mut got = 0;
                    {
                        let Source::Stream(r) = &*self.source else {
                            unreachable!()
                        };
                        let mut r = r.lock().map_err(|_| anyhow!("poisoned"))?;
                        while got < want {
                            let n = r.read(&mut self.staging[got..])?;
                            if n == 0 {
                                self.stream_end = true;
                                break;
                            }
                            got += n;
                        }
                    }
                    if got > 0 {
                        let off = self.stream_pos;
                        self.stream_pos += got as u64;
                        let staging = std::mem::take(&mut self.staging);
                        if staging[..got].iter().all(|&b| b == 0) && self.can_zero {
                            self.send_zero(client, out, off, got as u64)?;
                        } else {
                            self.send_data(client, out, off, Some(&staging[..got]), got as u64)?;
                        }
                        self.staging = staging;
                    }
                    continue;
                }
            } else if !self.windows.is_empty() {
                self.fill_jobs()?;
                continue;
            }
            // Everything is sent: flush once the writes are answered.
            if self.can_flush && !self.flushed {
                if client.in_flight() > 0 {
                    return Ok(false);
                }
                self.cookie += 1;
                let n = client
                    .request(
                        CommandType::Flush,
                        CommandFlags::empty(),
                        self.cookie,
                        0,
                        0,
                        out.tail(32),
                    )
                    .map_err(|e| anyhow!("{e}"))?;
                out.commit(n);
                self.pending.insert(self.cookie, (CommandType::Flush, 0, 0));
                self.flushed = true;
                return Ok(false);
            }
            return Ok(true);
        }
        Ok(false)
    }

    fn reply(&mut self, item: Item<'_>) -> Result<()> {
        match item {
            Item::ChunkError {
                cookie,
                code,
                message,
                ..
            } => {
                let what = self.describe(cookie);
                if message.is_empty() {
                    bail!("{what} failed: {code}");
                }
                bail!("{what} failed: {code}: {message}");
            }
            Item::Done { cookie, result } => {
                if let Err(e) = result {
                    bail!("{} failed: {e}", self.describe(cookie));
                }
                if let Some((command, off, len)) = self.pending.remove(&cookie)
                    && command != CommandType::Flush
                {
                    self.written
                        .lock()
                        .map_err(|_| anyhow!("poisoned"))?
                        .add(off, len);
                }
            }
            _ => {}
        }
        Ok(())
    }
}

impl WriteApp {
    /// The request `cookie` for messages: `WRITE of 65536 bytes at offset 0`.
    fn describe(&self, cookie: u64) -> String {
        match self.pending.get(&cookie) {
            Some((CommandType::Flush, _, _)) => "FLUSH".into(),
            Some((CommandType::WriteZeroes, off, len)) => {
                format!("WRITE_ZEROES of {len} bytes at offset {off}")
            }
            Some((_, off, len)) => format!("WRITE of {len} bytes at offset {off}"),
            None => format!("request {cookie}"),
        }
    }
}

/// Sends one FLUSH (after a failed copy, on a fresh connection: the one that failed may be
/// unusable).
#[derive(Default)]
struct FlushApp {
    can_flush: bool,
    sent: bool,
    done: bool,
}

impl ClientApp for FlushApp {
    fn ready(&mut self, info: &ExportInfo, _client: &Client<DEPTH>) -> Result<()> {
        self.can_flush = info.flags.contains(TransmissionFlags::SEND_FLUSH);
        Ok(())
    }

    fn submit(&mut self, client: &mut Client<DEPTH>, out: &mut OutBuf) -> Result<bool> {
        if !self.can_flush || self.sent {
            return Ok(true);
        }
        if !client.can_send_request() {
            return Ok(false);
        }
        let n = client
            .request(
                CommandType::Flush,
                CommandFlags::empty(),
                1,
                0,
                0,
                out.tail(32),
            )
            .map_err(|e| anyhow!("{e}"))?;
        out.commit(n);
        self.sent = true;
        Ok(true)
    }

    fn reply(&mut self, item: Item<'_>) -> Result<()> {
        match item {
            Item::ChunkError { code, message, .. } => bail!("FLUSH failed: {code}: {message}"),
            Item::Done { result, .. } => {
                result.map_err(|e| anyhow!("FLUSH failed: {e}"))?;
                self.done = true;
            }
            _ => {}
        }
        Ok(())
    }
}

/// FLUSH on the NBD export `dst` over a fresh connection.
fn flush_nbd(dst: &NbdUri, tls: &ClientTls) -> Result<()> {
    let mut o = nbd_client::Options::for_uri(dst, Goal::Go);
    o.base_allocation = false;
    let app = nbd_client::run_with(dst, tls, o, FlushApp::default())?;
    if !app.can_flush {
        bail!("the destination export offers no FLUSH");
    }
    if !app.done {
        bail!("the FLUSH was not answered");
    }
    Ok(())
}

fn probe(uri: &NbdUri, tls: &ClientTls) -> Result<InfoApp> {
    nbd_client::run(uri, tls, Goal::Go, InfoApp::default())
}

/// Tells `progress` how a transfer of `total` bytes goes (`done` so far) every 100 ms, until
/// the returned handle is [`Watch::end`]ed.
fn watch(total: u64, done: Arc<AtomicU64>, progress: Option<&Arc<dyn Progress>>) -> Watch {
    let Some(progress) = progress.cloned() else {
        return Watch(None);
    };
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let h = std::thread::spawn(move || {
        let mut transfer = progress.start(total);
        while !s2.load(Ordering::Relaxed) {
            transfer.update(done.load(Ordering::Relaxed));
            std::thread::sleep(Duration::from_millis(100));
        }
        transfer.update(done.load(Ordering::Relaxed));
        transfer.finish();
    });
    Watch(Some((h, stop)))
}

/// The thread telling a [`Progress`] about a transfer.
struct Watch(Option<(std::thread::JoinHandle<()>, Arc<AtomicBool>)>);

impl Watch {
    /// The transfer is over: one last update, and the thread ends.
    fn end(self) {
        if let Some((h, stop)) = self.0 {
            stop.store(true, Ordering::Relaxed);
            let _ = h.join();
        }
    }
}

/// Copies `src` to `dst`; returns the bytes copied.
pub fn copy(src: &Place, dst: &Place, opts: &CopyOptions) -> Result<u64> {
    match (src, dst) {
        (Place::Nbd(s), Place::Nbd(d)) => {
            let (r, w) = std::io::pipe().context("pipe")?;
            let (s, d, o) = (s.clone(), d.clone(), opts.clone());
            let writer = std::thread::spawn(move || {
                to_nbd(Source::Stream(Mutex::new(Box::new(r))), None, &d, &o)
                    .with_context(|| format!("writing {d}"))
            });
            let read = from_nbd(&s, Arc::new(StreamSink::new(w)), false, opts)
                .with_context(|| format!("reading {s}"));
            let written = writer
                .join()
                .map_err(|_| anyhow!("writer thread panicked"))?;
            // When the destination fails, the reader only sees the pipe break: report the cause.
            match (read, written) {
                (_, Err(e)) => Err(e),
                (Err(e), Ok(_)) => Err(e),
                (Ok(n), Ok(_)) => Ok(n),
            }
        }
        (Place::Nbd(s), Place::File(path)) => {
            let info = probe(s, &opts.tls)?;
            let meta = std::fs::metadata(path).ok();
            let regular = meta.as_ref().is_none_or(|m| m.file_type().is_file());
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(regular)
                .open(path)
                .with_context(|| format!("open {}", path.display()))?;
            if regular {
                f.set_len(info.size)?;
            }
            drop(f);
            let sink = FileSink {
                file: FileBackend::open(path, false)
                    .with_context(|| format!("open {}", path.display()))?,
                path: path.clone(),
                fresh: regular,
                written: Mutex::new(Ranges::default()),
            };
            from_nbd_with(s, Arc::new(sink), true, opts, info)
        }
        (Place::Nbd(s), Place::Stdio) => {
            from_nbd(s, Arc::new(StreamSink::new(std::io::stdout())), false, opts)
        }
        (Place::File(path), Place::Nbd(d)) => {
            let f = Arc::new(
                FileBackend::open(path, true)
                    .with_context(|| format!("open {}", path.display()))?,
            );
            let size = f.size();
            to_nbd(Source::File(f), Some(size), d, opts)
        }
        (Place::Stdio, Place::Nbd(d)) => to_nbd(
            Source::Stream(Mutex::new(Box::new(std::io::stdin()))),
            None,
            d,
            opts,
        ),
        // Neither side is NBD: the OS's copies (they report no progress on failure).
        (Place::File(a), Place::File(b)) => {
            std::fs::copy(a, b).with_context(|| format!("copy {} to {}", a.display(), b.display()))
        }
        (Place::File(a), Place::Stdio) => std::io::copy(
            &mut std::fs::File::open(a).with_context(|| format!("open {}", a.display()))?,
            &mut std::io::stdout(),
        )
        .with_context(|| format!("copy {} to stdout", a.display())),
        (Place::Stdio, Place::File(b)) => std::io::copy(
            &mut std::io::stdin(),
            &mut std::fs::File::create(b).with_context(|| format!("create {}", b.display()))?,
        )
        .with_context(|| format!("copy stdin to {}", b.display())),
        (Place::Stdio, Place::Stdio) => Ok(std::io::copy(
            &mut std::io::stdin(),
            &mut std::io::stdout(),
        )?),
    }
}

fn from_nbd(src: &NbdUri, sink: Arc<dyn Sink>, seekable: bool, opts: &CopyOptions) -> Result<u64> {
    let info = probe(src, &opts.tls)?;
    from_nbd_with(src, sink, seekable, opts, info)
}

fn from_nbd_with(
    src: &NbdUri,
    sink: Arc<dyn Sink>,
    seekable: bool,
    opts: &CopyOptions,
    info: InfoApp,
) -> Result<u64> {
    let multi = info
        .transmission_flags()
        .contains(TransmissionFlags::CAN_MULTI_CONN);
    let workers = if seekable && multi {
        opts.connections.max(1)
    } else {
        1
    };
    let done = Arc::new(AtomicU64::new(0));
    let failure = Arc::new(Failure::default());
    let watch = watch(info.size, done.clone(), opts.progress.as_ref());
    let result = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|i| {
                let app = ReadApp {
                    sink: sink.clone(),
                    failure: failure.clone(),
                    windows: windows(info.size, WINDOW, workers, i),
                    jobs: VecDeque::new(),
                    request: u64::from(opts.request_size),
                    cookie: 0,
                    base_allocation: false,
                    status: None,
                    done: done.clone(),
                };
                let tls = opts.tls.clone();
                let failure = failure.clone();
                scope.spawn(move || {
                    let r = nbd_client::run(src, &tls, Goal::Go, app).map(|_| ());
                    if r.is_err() {
                        failure.stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("copy thread panicked"))?)
            .collect::<Result<Vec<()>>>()
    });
    watch.end();
    if let Err(e) = result {
        let flushed = sink.flush();
        return Err(failed(
            failure.cause(e),
            &sink.written(),
            info.size,
            flushed,
        ));
    }
    sink.finish()?;
    Ok(info.size)
}

fn to_nbd(source: Source, size: Option<u64>, dst: &NbdUri, opts: &CopyOptions) -> Result<u64> {
    let info = probe(dst, &opts.tls)?;
    let flags = info.transmission_flags();
    if let Some(s) = size
        && s > info.size
    {
        bail!(
            "the source ({s} bytes) is larger than the destination export ({} bytes)",
            info.size
        );
    }
    let total = size.unwrap_or(info.size);
    let seekable = matches!(source, Source::File(_));
    let workers = if seekable && flags.contains(TransmissionFlags::CAN_MULTI_CONN) {
        opts.connections.max(1)
    } else {
        1
    };
    let source = Arc::new(source);
    let done = Arc::new(AtomicU64::new(0));
    let failure = Arc::new(Failure::default());
    let written = Arc::new(Mutex::new(Ranges::default()));
    let watch = watch(total, done.clone(), opts.progress.as_ref());
    let result = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..workers)
            .map(|i| {
                let app = WriteApp {
                    source: source.clone(),
                    failure: failure.clone(),
                    written: written.clone(),
                    pending: HashMap::new(),
                    windows: if seekable {
                        windows(total, WINDOW, workers, i)
                    } else {
                        VecDeque::new()
                    },
                    jobs: VecDeque::new(),
                    request: u64::from(opts.request_size),
                    cookie: 0,
                    can_zero: false,
                    can_flush: false,
                    flushed: false,
                    stream_pos: 0,
                    stream_end: false,
                    size: info.size,
                    staging: Vec::new(),
                    done: done.clone(),
                };
                let tls = opts.tls.clone();
                let failure = failure.clone();
                scope.spawn(move || {
                    let mut o = nbd_client::Options::for_uri(dst, Goal::Go);
                    o.base_allocation = false;
                    let r = nbd_client::run_with(dst, &tls, o, app).map(|a| a.stream_pos);
                    if r.is_err() {
                        failure.stop.store(true, Ordering::Relaxed);
                    }
                    r
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow!("copy thread panicked"))?)
            .collect::<Result<Vec<u64>>>()
    });
    watch.end();
    let streamed = match result {
        Ok(s) => s,
        Err(e) => {
            // What the server acknowledged is written: make it durable before saying so.
            let written = written.lock().map(|w| w.clone()).unwrap_or_default();
            let flushed = if written.total() > 0 {
                flush_nbd(dst, &opts.tls).with_context(|| format!("{dst}"))
            } else {
                Ok(())
            };
            return Err(failed(e, &written, total, flushed));
        }
    };
    Ok(if seekable {
        total
    } else {
        streamed.into_iter().sum()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(r: &Ranges) -> Vec<(u64, u64)> {
        r.iter().collect()
    }

    #[test]
    fn ranges_merge_touching_and_overlapping_pieces() {
        let mut r = Ranges::default();
        r.add(100, 0);
        assert_eq!(r.total(), 0);
        r.add(4096, 4096);
        r.add(0, 1024);
        r.add(16384, 100);
        assert_eq!(ranges(&r), [(0, 1024), (4096, 8192), (16384, 16484)]);
        r.add(1024, 3072); // touches both neighbours
        assert_eq!(ranges(&r), [(0, 8192), (16384, 16484)]);
        r.add(8000, 9000); // overlaps both, covers the gap
        assert_eq!(ranges(&r), [(0, 17000)]);
        r.add(10, 10); // inside
        assert_eq!(ranges(&r), [(0, 17000)]);
        assert_eq!(r.total(), 17000);
        assert_eq!(r.to_string(), "[0, 17000)");
        r.add(20000, 5);
        assert_eq!(r.to_string(), "[0, 17000), [20000, 20005)");
    }

    #[test]
    fn ranges_in_any_order_give_the_same_set() {
        let pieces: Vec<(u64, u64)> = (0..64).map(|i| (i * 1000, 1000)).collect();
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20 {
            let mut order = pieces.clone();
            for i in (1..order.len()).rev() {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                order.swap(i, (rng % (i as u64 + 1)) as usize);
            }
            let mut r = Ranges::default();
            for (o, l) in order.iter().filter(|(o, _)| o / 1000 % 7 != 3) {
                r.add(*o, *l);
            }
            let mut expect = Ranges::default();
            for (o, l) in pieces.iter().filter(|(o, _)| o / 1000 % 7 != 3) {
                expect.add(*o, *l);
            }
            assert_eq!(r, expect);
            assert_eq!(
                r.total(),
                1000 * pieces.iter().filter(|(o, _)| o / 1000 % 7 != 3).count() as u64
            );
        }
    }

    #[test]
    fn a_failure_says_what_the_destination_holds() {
        let mut w = Ranges::default();
        let e = failed(anyhow!("boom"), &w, 100, Ok(()));
        assert_eq!(
            format!("{e:#}"),
            "copy failed before anything was written to the destination: boom"
        );
        w.add(0, 10);
        w.add(20, 5);
        let e = failed(anyhow!("boom"), &w, 100, Ok(()));
        assert_eq!(
            format!("{e:#}"),
            "copy failed with 15 of 100 bytes written to the destination and flushed, at \
             [0, 10), [20, 25): boom"
        );
        let e = failed(anyhow!("boom"), &w, 100, Err(anyhow!("EIO")));
        assert!(
            format!("{e:#}").contains("(but flushing them failed: EIO), at [0, 10)"),
            "{e:#}"
        );
        for i in 0..40 {
            w.add(100 + 10 * i, 5);
        }
        assert!(w.to_string().ends_with(" and 26 more ranges"), "{w}");
    }
}
