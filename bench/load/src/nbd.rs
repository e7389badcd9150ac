//! NBD clients for load: the burst sequence, and connections held open.
//!
//! Every client runs kvmio's own NBD client stack (`nbd-core` behind `std-shim`'s pump, TLS by
//! `tls-glue`), so it speaks to qemu-nbd and nbdkit as `kvmio nbd` does. The export is split in
//! two halves: reads are checked against the file in the first half, which nobody writes; each
//! client writes its own 4 KiB block in the second half (client `i` at `size / 2 + 4096 * i`)
//! and reads it back.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use nbd_core::client::{Client, ExportInfo, Goal, Item};
use std_shim::io::AsyncStream;
use std_shim::io::tokio::run_tokio;
use std_shim::nbd::client::{ClientApp, ClientSession, ClientTls, DEPTH, Options, starter};
use std_shim::nbd::uri::{NbdUri, Transport};
use std_shim::pump::{OutBuf, PeerInfo, Processed, Pump, Session};

/// Bytes of each checked READ.
pub const READ_LEN: u32 = 64 * 1024;
/// READs per client.
pub const READS: usize = 4;
/// Bytes of each client's own block.
pub const BLOCK: u32 = 4096;

/// What a burst or hold talks to.
#[derive(Clone)]
pub struct Target {
    /// The server.
    pub uri: NbdUri,
    /// TLS credentials (for `nbds://`).
    pub tls: ClientTls,
    /// The export's contents, to check reads against.
    pub file: Arc<Vec<u8>>,
}

impl Target {
    /// A target for `uri` whose export holds `file`'s bytes.
    pub fn new(
        uri: &str,
        tls_creds: Option<std::path::PathBuf>,
        file: &std::path::Path,
    ) -> Result<Self> {
        let uri = NbdUri::parse(uri)?;
        let file = std::fs::read(file).with_context(|| format!("read {}", file.display()))?;
        Ok(Self {
            uri,
            tls: ClientTls {
                creds: tls_creds,
                tls12: false,
            },
            file: Arc::new(file),
        })
    }

    /// Largest client index whose block fits in the second half.
    pub fn max_clients(&self) -> usize {
        (self.file.len() / 2) / BLOCK as usize
    }
}

/// Why a client failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failure {
    /// `connect()` failed.
    Connect,
    /// The server never sent its greeting (or closed before it) within the deadline.
    NoGreeting,
    /// The connection closed or failed after the greeting, before the export was ready
    /// (TLS failures included).
    Negotiation,
    /// A READ returned other bytes than the file holds.
    Mismatch,
    /// A request failed, or the connection ended, after the export was ready.
    Transmission,
    /// The deadline passed after the export was ready.
    Stalled,
}

/// Progress a client made, shared with the task watching its deadline.
#[derive(Debug, Default)]
pub struct Milestones {
    greeted: AtomicBool,
    ready: AtomicBool,
    mismatch: AtomicBool,
}

impl Milestones {
    fn failure(&self, timed_out: bool) -> Failure {
        if self.mismatch.load(Ordering::SeqCst) {
            Failure::Mismatch
        } else if self.ready.load(Ordering::SeqCst) {
            if timed_out {
                Failure::Stalled
            } else {
                Failure::Transmission
            }
        } else if self.greeted.load(Ordering::SeqCst) {
            Failure::Negotiation
        } else {
            Failure::NoGreeting
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    Reads,
    Write,
    Flush,
    ReadBack,
    Done,
}

/// The burst sequence: four checked READs, a WRITE of the client's own block, FLUSH, the block
/// read back and checked. With `hold`, it waits after the export is ready until the flag is
/// set, then does one checked READ only.
struct Sequence {
    file: Arc<Vec<u8>>,
    index: usize,
    seed: u64,
    step: Step,
    in_flight: usize,
    milestones: Arc<Milestones>,
    hold: Option<Arc<AtomicBool>>,
    ready_count: Option<Arc<AtomicUsize>>,
    error: Option<String>,
}

impl Sequence {
    fn block_offset(&self) -> u64 {
        (self.file.len() / 2 + self.index * BLOCK as usize) as u64
    }

    fn block(&self) -> Vec<u8> {
        let mut x = self.seed | 1;
        (0..BLOCK)
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect()
    }

    fn read_offset(&self, k: usize) -> u64 {
        let slots = (self.file.len() / 2) / READ_LEN as usize;
        let mut x = self
            .seed
            .wrapping_add(k as u64)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
        x ^= x >> 29;
        (x as usize % slots.max(1)) as u64 * u64::from(READ_LEN)
    }

    fn expected(&self, offset: u64, len: usize) -> Option<&[u8]> {
        let o = usize::try_from(offset).ok()?;
        self.file.get(o..o.checked_add(len)?)
    }
}

fn cmd(e: nbd_core::CommandError) -> anyhow::Error {
    anyhow!("{e}")
}

impl ClientApp for Sequence {
    fn ready(&mut self, info: &ExportInfo, _client: &Client<DEPTH>) -> Result<()> {
        if info.size < self.file.len() as u64 {
            bail!(
                "the export has {} bytes, the file {}",
                info.size,
                self.file.len()
            );
        }
        self.milestones.ready.store(true, Ordering::SeqCst);
        if let Some(c) = &self.ready_count {
            c.fetch_add(1, Ordering::SeqCst);
        }
        Ok(())
    }

    fn submit(&mut self, client: &mut Client<DEPTH>, out: &mut OutBuf) -> Result<bool> {
        if let Some(e) = &self.error {
            bail!("{e}");
        }
        if let Some(h) = &self.hold {
            if !h.load(Ordering::SeqCst) {
                return Ok(false);
            }
            if self.step == Step::Reads && self.in_flight == 0 {
                let n = client
                    .read(100, self.read_offset(0), READ_LEN, out.tail(64))
                    .map_err(cmd)?;
                out.commit(n);
                self.in_flight = 1;
                self.step = Step::Done;
            }
            return Ok(self.step == Step::Done);
        }
        match self.step {
            Step::Reads if self.in_flight == 0 => {
                for k in 0..READS {
                    let n = client
                        .read(k as u64, self.read_offset(k), READ_LEN, out.tail(64))
                        .map_err(cmd)?;
                    out.commit(n);
                }
                self.in_flight = READS;
            }
            Step::Write if self.in_flight == 0 => {
                let data = self.block();
                let n = client
                    .write(10, self.block_offset(), BLOCK, false, out.tail(64))
                    .map_err(cmd)?;
                out.commit(n);
                out.extend(&data);
                self.in_flight = 1;
            }
            Step::Flush if self.in_flight == 0 => {
                let n = client
                    .request(
                        nbd_core::wire::CommandType::Flush,
                        nbd_core::wire::CommandFlags::empty(),
                        11,
                        0,
                        0,
                        out.tail(64),
                    )
                    .map_err(cmd)?;
                out.commit(n);
                self.in_flight = 1;
            }
            Step::ReadBack if self.in_flight == 0 => {
                let n = client
                    .read(12, self.block_offset(), BLOCK, out.tail(64))
                    .map_err(cmd)?;
                out.commit(n);
                self.in_flight = 1;
            }
            _ => {}
        }
        Ok(self.step == Step::Done)
    }

    fn reply(&mut self, item: Item<'_>) -> Result<()> {
        match item {
            Item::ReadData {
                cookie,
                offset,
                data,
            } => {
                let ok = if cookie == 12 {
                    let start = (offset - self.block_offset()) as usize;
                    self.block().get(start..start + data.len()) == Some(data)
                } else {
                    self.expected(offset, data.len()) == Some(data)
                };
                if !ok {
                    self.milestones.mismatch.store(true, Ordering::SeqCst);
                    bail!("READ {cookie} at {offset}: other bytes than the file holds");
                }
            }
            Item::ReadHole { offset, length, .. } => {
                let zero = self
                    .expected(offset, length as usize)
                    .is_some_and(|d| d.iter().all(|&b| b == 0));
                if !zero {
                    self.milestones.mismatch.store(true, Ordering::SeqCst);
                    bail!("READ at {offset}: a hole where the file has data");
                }
            }
            Item::Done { cookie, result } => {
                if let Err(e) = result {
                    bail!("request {cookie} failed: {e}");
                }
                self.in_flight -= 1;
                if self.in_flight == 0 {
                    self.step = match self.step {
                        Step::Reads => Step::Write,
                        Step::Write => Step::Flush,
                        Step::Flush => Step::ReadBack,
                        Step::ReadBack | Step::Done => Step::Done,
                    };
                }
            }
            Item::ChunkError { message, .. } => {
                self.error = Some(format!("server error: {message}"));
            }
            _ => {}
        }
        Ok(())
    }
}

/// The client session, noting the greeting and waking up every `tick` while it holds (so a
/// held connection notices its release).
struct Watched {
    inner: ClientSession<Sequence>,
    milestones: Arc<Milestones>,
    tick: Option<Duration>,
    next_tick: Instant,
}

impl Session for Watched {
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed> {
        if !input.is_empty() {
            self.milestones.greeted.store(true, Ordering::SeqCst);
        }
        self.inner.process(input, out)
    }
    fn tls_established(&mut self, peer: &PeerInfo) -> Result<()> {
        self.inner.tls_established(peer)
    }
    fn eof(&mut self) -> Result<()> {
        self.inner.eof()
    }
    fn deadline(&self) -> Option<Instant> {
        self.tick.map(|_| self.next_tick)
    }
    fn timeout(&mut self, now: Instant) {
        if let Some(t) = self.tick {
            self.next_tick = now + t;
        }
    }
}

/// One client: index `index` (its block), held until `hold` is set if given.
async fn client(
    t: &Target,
    index: usize,
    hold: Option<Arc<AtomicBool>>,
    ready_count: Option<Arc<AtomicUsize>>,
    deadline: Duration,
) -> Result<Duration, (Failure, String)> {
    let start = Instant::now();
    let milestones = Arc::new(Milestones::default());
    let fail = |timed_out: bool, e: String| (milestones.failure(timed_out), e);
    let tls = starter(&t.uri, &t.tls).map_err(|e| (Failure::Negotiation, format!("{e:#}")))?;
    let tick = hold.as_ref().map(|_| Duration::from_millis(500));
    let app = Sequence {
        file: t.file.clone(),
        index,
        seed: 0x5eed_0000 + index as u64,
        step: Step::Reads,
        in_flight: 0,
        milestones: milestones.clone(),
        hold,
        ready_count,
        error: None,
    };
    let session = Watched {
        inner: ClientSession::new(Options::for_uri(&t.uri, Goal::Go), app),
        milestones: milestones.clone(),
        tick,
        next_tick: start + tick.unwrap_or_default(),
    };
    let run = async {
        let mut stream = match &t.uri.transport {
            Transport::Tcp { host, port } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(|e| (Failure::Connect, e.to_string()))?;
                s.set_nodelay(true).ok();
                AsyncStream::Tcp(s)
            }
            Transport::Unix(p) => AsyncStream::Unix(
                tokio::net::UnixStream::connect(p)
                    .await
                    .map_err(|e| (Failure::Connect, e.to_string()))?,
            ),
        };
        let mut pump = Pump::new(session, 256 * 1024, tls);
        run_tokio(&mut pump, &mut stream)
            .await
            .map_err(|e| fail(false, format!("{e:#}")))?;
        let app = pump.into_session().inner.into_app();
        if app.step != Step::Done {
            return Err(fail(false, "the server closed the connection".into()));
        }
        Ok(start.elapsed())
    };
    match tokio::time::timeout(deadline, run).await {
        Ok(r) => r,
        Err(_) => Err(fail(true, format!("no progress within {deadline:?}"))),
    }
}

/// The outcome of a burst.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct BurstReport {
    /// Clients started.
    pub clients: usize,
    /// Clients that did the whole sequence correctly.
    pub ok: usize,
    /// Failures by kind.
    pub failed: std::collections::BTreeMap<Failure, usize>,
    /// The first few failure messages.
    pub examples: Vec<String>,
    /// From the first connect to the last client's end, in seconds.
    pub seconds: f64,
    /// Median client time, in seconds.
    pub p50: f64,
    /// 99th percentile client time, in seconds.
    pub p99: f64,
}

impl BurstReport {
    /// Clients that failed.
    pub fn lost(&self) -> usize {
        self.failed.values().sum()
    }
}

impl std::fmt::Display for BurstReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} of {} clients served, {} failed, in {:.2} s (client p50 {:.3} s, p99 {:.3} s)",
            self.ok,
            self.clients,
            self.lost(),
            self.seconds,
            self.p50,
            self.p99
        )?;
        for (k, n) in &self.failed {
            write!(f, "; {k:?}: {n}")?;
        }
        Ok(())
    }
}

fn percentile(sorted: &[Duration], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i].as_secs_f64()
}

fn report(results: Vec<Result<Duration, (Failure, String)>>, seconds: f64) -> BurstReport {
    let mut r = BurstReport {
        clients: results.len(),
        seconds,
        ..Default::default()
    };
    let mut times = Vec::new();
    for x in results {
        match x {
            Ok(d) => {
                r.ok += 1;
                times.push(d);
            }
            Err((kind, msg)) => {
                *r.failed.entry(kind).or_default() += 1;
                if r.examples.len() < 5 {
                    r.examples.push(format!("{kind:?}: {msg}"));
                }
            }
        }
    }
    times.sort();
    r.p50 = percentile(&times, 0.5);
    r.p99 = percentile(&times, 0.99);
    r
}

/// `clients` clients started at once (as fast as tasks can call `connect`), each running the
/// burst sequence within `deadline`.
pub async fn burst(t: &Target, clients: usize, deadline: Duration) -> Result<BurstReport> {
    if clients > t.max_clients() {
        bail!(
            "the file is too small for {clients} clients (at most {})",
            t.max_clients()
        );
    }
    let start = Instant::now();
    let tasks: Vec<_> = (0..clients)
        .map(|i| {
            let t = t.clone();
            tokio::spawn(async move { client(&t, i, None, None, deadline).await })
        })
        .collect();
    let mut results = Vec::with_capacity(clients);
    for task in tasks {
        results.push(task.await.map_err(|e| anyhow!("client task: {e}"))?);
    }
    Ok(report(results, start.elapsed().as_secs_f64()))
}

/// What a hold measured.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct HoldReport {
    /// Connections held (negotiated to the transmission phase at the same time).
    pub held: usize,
    /// Connections asked for.
    pub asked: usize,
    /// The fresh client run while all were held.
    pub fresh: BurstReport,
    /// The held connections' final checked READ.
    pub finished: BurstReport,
    /// Server RSS before, with every connection held, and after (KiB), if a PID was given.
    pub rss_kib: Option<[u64; 3]>,
    /// (held RSS - RSS before) / connections, in KiB.
    pub kib_per_connection: Option<f64>,
}

/// VmRSS of `pid` in KiB.
pub fn rss_kib(pid: u32) -> Result<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS")
}

/// Opens `connections` connections, negotiates each to the transmission phase and holds them;
/// while all are held, a fresh client runs the burst sequence; `keep` later, each held one
/// does a checked READ and disconnects. `server_pid` lets it report the server's memory.
pub async fn hold(
    t: &Target,
    connections: usize,
    server_pid: Option<u32>,
    deadline: Duration,
    keep: Duration,
) -> Result<HoldReport> {
    if connections + 1 > t.max_clients() {
        bail!("the file is too small for {connections} connections");
    }
    let before = server_pid.map(rss_kib).transpose()?;
    let release = Arc::new(AtomicBool::new(false));
    let ready = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let tasks: Vec<_> = (0..connections)
        .map(|i| {
            let (t, release, ready) = (t.clone(), release.clone(), ready.clone());
            tokio::spawn(async move {
                client(
                    &t,
                    i + 1,
                    Some(release),
                    Some(ready),
                    deadline + deadline + keep,
                )
                .await
            })
        })
        .collect();
    // Wait until every connection is ready (or the deadline), watching for early ends.
    while ready.load(Ordering::SeqCst) < connections && start.elapsed() < deadline {
        if tasks.iter().filter(|t| t.is_finished()).count() > 0
            && ready.load(Ordering::SeqCst) + tasks.iter().filter(|t| t.is_finished()).count()
                >= connections
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let held = ready.load(Ordering::SeqCst);
    // Let the server settle, then measure it with everything held.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let during = server_pid.map(rss_kib).transpose()?;
    let fresh_start = Instant::now();
    let fresh = client(t, 0, None, None, deadline).await;
    let fresh = report(vec![fresh], fresh_start.elapsed().as_secs_f64());
    tokio::time::sleep(keep).await;
    release.store(true, Ordering::SeqCst);
    let fin_start = Instant::now();
    let mut results = Vec::with_capacity(connections);
    for task in tasks {
        results.push(task.await.map_err(|e| anyhow!("client task: {e}"))?);
    }
    let finished = report(results, fin_start.elapsed().as_secs_f64());
    tokio::time::sleep(Duration::from_secs(1)).await;
    let after = server_pid.map(rss_kib).transpose()?;
    let rss = match (before, during, after) {
        (Some(a), Some(b), Some(c)) => Some([a, b, c]),
        _ => None,
    };
    Ok(HoldReport {
        held,
        asked: connections,
        fresh,
        finished,
        kib_per_connection: rss
            .map(|[a, b, _]| (b.saturating_sub(a)) as f64 / connections.max(1) as f64),
        rss_kib: rss,
    })
}
