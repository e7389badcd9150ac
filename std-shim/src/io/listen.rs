//! Listening sockets and accept loops, shared by the thread and tokio drivers.
//!
//! A burst of connections must not be lost: the kernel completes TCP handshakes on its own and
//! holds the connections in the listen queue until the server accepts them; once the queue is
//! full it drops them, and clients that already saw their connection established hang. So
//! every listener gets a backlog as large as the system allows (`net.core.somaxconn`, or what
//! the operator configures), and the accept loops empty the whole queue each time it becomes
//! readable. A connection over the service's cap is answered the way its protocol allows (VNC:
//! a failure reason; NBD has none, so it is closed) and logged; when the process runs out of
//! file descriptors, a reserved one is released to accept and close the waiting connection
//! instead of leaving it in the queue.

use std::fs::File;
use std::io;
use std::net::TcpListener;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

use crate::io::{Endpoint, Stream};

/// How often blocked loops look at the stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(200);

/// Connections over the cap that are told why at the same time (VNC's "too many
/// connections"); past this many, further ones are closed at once (and logged).
pub const REFUSALS_AT_ONCE: usize = 64;

/// Most connections the thread driver serves at once (a thread each): above this, use the
/// tokio driver.
pub const THREADS_MAX_CONNECTIONS: usize = 4096;

/// Descriptors a server needs besides one per connection (listeners, exports, logs, the
/// runtime's own).
pub const FD_HEADROOM: u64 = 64;

/// The largest listen backlog the system allows: `net.core.somaxconn` (Linux silently caps a
/// larger backlog to it); 4096 when it cannot be read.
pub fn system_backlog() -> u32 {
    std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4096)
}

/// Raises the soft open-file limit (`RLIMIT_NOFILE`) to the hard limit, as servers do, and
/// returns the limit now in force.
pub fn raise_nofile_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let l = getrlimit(Resource::Nofile);
    if l.current != l.maximum {
        let raised = Rlimit {
            current: l.maximum,
            maximum: l.maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            log::warn!("cannot raise the open-file limit to its hard limit: {e}");
        }
    }
    getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX)
}

/// A bound, non-blocking listening socket.
pub(crate) enum Listener {
    Tcp(TcpListener),
    /// The socket, its path, and the path's (device, inode) when bound.
    Unix(UnixListener, PathBuf, (u64, u64)),
}

fn inode(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Listener {
    /// Binds `e` and listens with `backlog` (capped by the kernel at `net.core.somaxconn`).
    pub(crate) fn bind(e: &Endpoint, backlog: u32) -> Result<Self> {
        use socket2::{Domain, SockAddr, Socket, Type};
        let backlog = i32::try_from(backlog).unwrap_or(i32::MAX);
        let listener = match e {
            Endpoint::Tcp(a) => {
                let s = Socket::new(Domain::for_address(*a), Type::STREAM, None)?;
                s.set_reuse_address(true)?;
                s.bind(&SockAddr::from(*a))
                    .and_then(|()| s.listen(backlog))
                    .with_context(|| format!("listen on {a}"))?;
                Self::Tcp(s.into())
            }
            Endpoint::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let s = Socket::new(Domain::UNIX, Type::STREAM, None)?;
                s.bind(&SockAddr::unix(p)?)
                    .and_then(|()| s.listen(backlog))
                    .with_context(|| format!("listen on {}", p.display()))?;
                Self::Unix(s.into(), p.clone(), inode(p).unwrap_or_default())
            }
        };
        match &listener {
            Self::Tcp(l) => l.set_nonblocking(true)?,
            Self::Unix(l, ..) => l.set_nonblocking(true)?,
        }
        Ok(listener)
    }

    /// Accepts one waiting connection (`WouldBlock` when none is waiting). The stream is
    /// blocking.
    fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Self::Tcp(l) => {
                let (s, a) = l.accept()?;
                s.set_nonblocking(false)?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), a.to_string()))
            }
            Self::Unix(l, p, _) => {
                let (s, _) = l.accept()?;
                s.set_nonblocking(false)?;
                Ok((Stream::Unix(s), format!("unix:{}", p.display())))
            }
        }
    }

    /// The bound address, for logs and start-up lines.
    pub(crate) fn local(&self) -> String {
        match self {
            Self::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Self::Unix(_, p, _) => format!("unix:{}", p.display()),
        }
    }
}

impl AsFd for Listener {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l, ..) => l.as_fd(),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Remove the path only if it is still ours (a newer server may have bound it since).
        if let Self::Unix(_, p, id) = self
            && inode(p) == Some(*id)
        {
            let _ = std::fs::remove_file(p);
        }
    }
}

/// How a connection was admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Within the cap: serve it.
    Serve,
    /// Over the cap: tell it why (the service has a refusal session), then close.
    Refuse,
}

/// Shared state of a running server: the connection counts and the stop flag.
#[derive(Debug, Default)]
pub struct ServerControl {
    /// Connections being served.
    pub active: AtomicUsize,
    /// Connections over the cap being told so.
    refusing: AtomicUsize,
    /// Set (e.g. by SIGINT/SIGTERM) to stop accepting and end every connection cleanly.
    pub stopping: Arc<AtomicBool>,
}

/// Adds one to `counter` unless it is at `max` already.
fn take_slot(counter: &AtomicUsize, max: usize) -> bool {
    counter
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
            (n < max).then_some(n + 1)
        })
        .is_ok()
}

impl ServerControl {
    /// Asks the server to stop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Decides about a new connection from `peer`: served while fewer than `max` are, else
    /// refused with an explanation when `explain` (and not too many refusals run), else closed.
    /// Every refusal is logged.
    fn admit(&self, peer: &str, max: usize, explain: bool) -> Option<Admit> {
        if take_slot(&self.active, max) {
            return Some(Admit::Serve);
        }
        if explain && take_slot(&self.refusing, REFUSALS_AT_ONCE) {
            log::warn!("{peer}: refused, {max} connections already (telling the client)");
            return Some(Admit::Refuse);
        }
        log::warn!("{peer}: refused, {max} connections already (closed)");
        None
    }

    /// A connection admitted as `admit` ended: counts it out and logs how (served ones with
    /// the number still open).
    fn finished(&self, peer: &str, admit: Admit, r: Result<()>) {
        if admit == Admit::Refuse {
            self.refusing.fetch_sub(1, Ordering::SeqCst);
            if let Err(e) = r {
                log::debug!("{peer}: refusal: {e:#}");
            }
            return;
        }
        let open = self.active.fetch_sub(1, Ordering::SeqCst) - 1;
        match r {
            Ok(()) => log::debug!("{peer}: closed ({open} open)"),
            Err(e) => log::warn!("{peer}: {e:#} ({open} open)"),
        }
    }

    /// Waits up to `grace` for the connections to end; returns how many are left.
    pub fn drain(&self, grace: Duration) -> usize {
        let end = std::time::Instant::now() + grace;
        while self.active.load(Ordering::SeqCst) > 0 && std::time::Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        self.active.load(Ordering::SeqCst)
    }

    /// After a stop: gives the connections (which watch the stop flag) 10 s to end cleanly.
    pub(crate) fn wait_for_connections(&self) {
        let left = self.drain(Duration::from_secs(10));
        if left > 0 {
            log::warn!("{left} connections did not end within 10 s");
        }
    }
}

/// What a listener admits: the service's cap and whether it can explain refusals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Gate {
    pub(crate) max_connections: usize,
    pub(crate) explain_refusals: bool,
}

/// A file descriptor held back for when the process runs out of them: it is then released so
/// that one waiting connection can be accepted and closed (its client sees the end at once
/// instead of hanging in the queue), and taken again.
struct Reserve(Option<File>);

impl Reserve {
    fn new() -> Self {
        Self(File::open("/dev/null").ok())
    }

    /// Frees the reserved descriptor; `false` if there was none to free.
    fn release(&mut self) -> bool {
        self.0.take().is_some()
    }

    fn retake(&mut self) {
        self.0 = File::open("/dev/null").ok();
    }
}

/// What a failed `accept` means for the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum AcceptFailure {
    /// Nothing is waiting (non-blocking listener).
    Empty,
    /// The peer gave up while queued, or a signal: go on accepting.
    Skip,
    /// Out of file descriptors: shed a waiting connection with the [`Reserve`].
    OutOfFds,
    /// Anything else (e.g. no memory): log, pause, go on.
    Other,
}

fn classify(e: &io::Error) -> AcceptFailure {
    use rustix::io::Errno;
    match e.kind() {
        io::ErrorKind::WouldBlock => AcceptFailure::Empty,
        io::ErrorKind::Interrupted
        | io::ErrorKind::ConnectionAborted
        | io::ErrorKind::ConnectionReset => AcceptFailure::Skip,
        _ if matches!(
            Errno::from_io_error(e),
            Some(Errno::MFILE) | Some(Errno::NFILE)
        ) =>
        {
            AcceptFailure::OutOfFds
        }
        _ => AcceptFailure::Other,
    }
}

fn log_shed(peer: &str) {
    log::warn!("{peer}: refused, out of file descriptors (RLIMIT_NOFILE)");
}

/// Accepts every connection waiting on `l`, handing each to `take`. Returns `Ok` once the
/// queue is empty, or the error that stopped it (not one of those handled here).
fn drain_queue(
    l: &Listener,
    reserve: &mut Reserve,
    take: &mut dyn FnMut(Stream, String),
) -> io::Result<()> {
    loop {
        match l.accept() {
            Ok((s, peer)) => take(s, peer),
            Err(e) => match classify(&e) {
                AcceptFailure::Empty => return Ok(()),
                AcceptFailure::Skip => {}
                AcceptFailure::OutOfFds if reserve.release() => {
                    let shed = l.accept();
                    reserve.retake();
                    if let Ok((_closed, peer)) = shed {
                        log_shed(&peer);
                    }
                }
                AcceptFailure::OutOfFds | AcceptFailure::Other => return Err(e),
            },
        }
    }
}

/// After an accept error the loops pause this long (e.g. out of memory), so they do not spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// Waits until `fd` is readable or `STOP_POLL` passed.
fn readable(fd: BorrowedFd<'_>) -> bool {
    let mut fds = [rustix::event::PollFd::new(
        &fd,
        rustix::event::PollFlags::IN,
    )];
    let t = rustix::event::Timespec {
        tv_sec: 0,
        tv_nsec: STOP_POLL.as_nanos() as _,
    };
    matches!(rustix::event::poll(&mut fds, Some(&t)), Ok(n) if n > 0)
}

/// Work for a connection thread.
type Job = Box<dyn FnOnce() + Send>;

/// How long a connection thread waits for the next connection before it ends.
const THREAD_IDLE: Duration = Duration::from_secs(10);

/// Connection threads kept for reuse: a new connection goes to an idle thread if there is one,
/// else to a new thread; a thread idle for [`THREAD_IDLE`] ends. Starting and ending a thread
/// per connection costs a burst of short TLS connections more than their handshakes (stacks,
/// allocator arenas and the TLB shootdowns of unmapping them, the crypto library's per-thread
/// state).
#[derive(Default)]
struct Threads {
    /// Jobs waiting for an idle thread, and how many threads are idle.
    queue: std::sync::Mutex<(std::collections::VecDeque<Job>, usize)>,
    wake: std::sync::Condvar,
}

impl Threads {
    fn lock(&self) -> std::sync::MutexGuard<'_, (std::collections::VecDeque<Job>, usize)> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Runs `job` on an idle thread, or a new one.
    fn run(self: &Arc<Self>, job: Job) -> io::Result<()> {
        let mut q = self.lock();
        if q.1 > q.0.len() {
            q.0.push_back(job);
            drop(q);
            self.wake.notify_one();
            return Ok(());
        }
        drop(q);
        let pool = self.clone();
        std::thread::Builder::new()
            .name("kvmio-conn".into())
            .spawn(move || {
                job();
                pool.idle();
            })
            .map(|_| ())
    }

    /// A thread's life after its first job: the next ones, until none comes for a while.
    fn idle(&self) {
        let mut q = self.lock();
        loop {
            if let Some(job) = q.0.pop_front() {
                drop(q);
                job();
                q = self.lock();
                continue;
            }
            q.1 += 1;
            let (back, waited) = self
                .wake
                .wait_timeout(q, THREAD_IDLE)
                .unwrap_or_else(|e| e.into_inner());
            q = back;
            q.1 -= 1;
            if waited.timed_out() && q.0.is_empty() {
                return;
            }
        }
    }
}

/// Runs a connection's handler.
pub(crate) type ThreadHandler = Arc<dyn Fn(Stream, String, Admit) -> Result<()> + Send + Sync>;

/// Accepts on `l` until a stop, each admitted connection served by `handler` on a thread of
/// its own.
pub(crate) fn accept_threads(
    l: &Listener,
    gate: Gate,
    control: &Arc<ServerControl>,
    handler: &ThreadHandler,
) {
    let mut reserve = Reserve::new();
    let threads = Arc::new(Threads::default());
    while !control.is_stopping() {
        if !readable(l.as_fd()) {
            continue;
        }
        let r = drain_queue(l, &mut reserve, &mut |stream, peer| {
            let Some(admit) = control.admit(&peer, gate.max_connections, gate.explain_refusals)
            else {
                return;
            };
            let (handler, control2, who) = (handler.clone(), control.clone(), peer.clone());
            let spawned = threads.run(Box::new(move || {
                log::debug!("{who}: connected");
                let r = handler(stream, who.clone(), admit);
                control2.finished(&who, admit, r);
            }));
            if let Err(e) = spawned {
                control.finished(&peer, admit, Err(anyhow::anyhow!("no thread for it: {e}")));
            }
        });
        if let Err(e) = r {
            log::warn!("accept on {}: {e}", l.local());
            std::thread::sleep(ACCEPT_ERROR_PAUSE);
        }
    }
}

/// A connection's future on the tokio driver.
#[cfg(feature = "tokio")]
pub(crate) type BoxFuture = std::pin::Pin<Box<dyn Future<Output = Result<()>> + Send>>;

/// Runs a connection's handler on the tokio driver.
#[cfg(feature = "tokio")]
pub(crate) type TaskHandler =
    Arc<dyn Fn(crate::io::AsyncStream, String, Admit) -> BoxFuture + Send + Sync>;

/// A listener registered with tokio. The [`Listener`] it came from stays alive beside it
/// (its drop removes a Unix socket's path).
#[cfg(feature = "tokio")]
enum AsyncListener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener, String),
}

#[cfg(feature = "tokio")]
impl AsyncListener {
    fn new(l: &Listener) -> io::Result<Self> {
        Ok(match l {
            Listener::Tcp(t) => Self::Tcp(tokio::net::TcpListener::from_std(t.try_clone()?)?),
            Listener::Unix(u, ..) => Self::Unix(
                tokio::net::UnixListener::from_std(u.try_clone()?)?,
                l.local(),
            ),
        })
    }

    async fn accept(&self) -> io::Result<(crate::io::AsyncStream, String)> {
        use crate::io::AsyncStream;
        match self {
            Self::Tcp(l) => {
                let (s, a) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok((AsyncStream::Tcp(s), a.to_string()))
            }
            Self::Unix(l, name) => {
                let (s, _) = l.accept().await?;
                Ok((AsyncStream::Unix(s), name.clone()))
            }
        }
    }
}

/// [`accept_threads`] on tokio: a task per admitted connection. tokio's `accept` takes a
/// waiting connection without waiting, so the loop empties the queue as the thread one does.
#[cfg(feature = "tokio")]
pub(crate) async fn accept_tokio(
    l: Listener,
    gate: Gate,
    control: Arc<ServerControl>,
    handler: TaskHandler,
) -> Result<()> {
    let accept = AsyncListener::new(&l)?;
    let mut reserve = Reserve::new();
    while !control.is_stopping() {
        let (stream, peer) = match tokio::time::timeout(STOP_POLL, accept.accept()).await {
            Err(_) => continue,
            Ok(Ok(x)) => x,
            Ok(Err(e)) => {
                match classify(&e) {
                    AcceptFailure::Empty | AcceptFailure::Skip => {}
                    AcceptFailure::OutOfFds if reserve.release() => {
                        let shed = tokio::time::timeout(STOP_POLL, accept.accept()).await;
                        reserve.retake();
                        if let Ok(Ok((_closed, peer))) = shed {
                            log_shed(&peer);
                        }
                    }
                    AcceptFailure::OutOfFds | AcceptFailure::Other => {
                        log::warn!("accept on {}: {e}", l.local());
                        tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    }
                }
                continue;
            }
        };
        let Some(admit) = control.admit(&peer, gate.max_connections, gate.explain_refusals) else {
            continue;
        };
        let fut = handler(stream, peer.clone(), admit);
        let control = control.clone();
        tokio::spawn(async move {
            log::debug!("{peer}: connected");
            let r = fut.await;
            control.finished(&peer, admit, r);
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_stop_at_the_cap() {
        let c = ServerControl::default();
        assert_eq!(c.admit("a", 2, true), Some(Admit::Serve));
        assert_eq!(c.admit("b", 2, true), Some(Admit::Serve));
        assert_eq!(c.admit("c", 2, false), None);
        for _ in 0..REFUSALS_AT_ONCE {
            assert_eq!(c.admit("d", 2, true), Some(Admit::Refuse));
        }
        assert_eq!(c.admit("e", 2, true), None);
        c.finished("d", Admit::Refuse, Ok(()));
        assert_eq!(c.admit("f", 2, true), Some(Admit::Refuse));
        c.finished("a", Admit::Serve, Ok(()));
        assert_eq!(c.active.load(Ordering::SeqCst), 1);
        assert_eq!(c.admit("g", 2, true), Some(Admit::Serve));
    }

    /// A burst larger than the default backlog of std's `TcpListener` (128) waits in the queue
    /// until it is drained: every connection is accepted.
    #[test]
    fn a_burst_waits_in_the_backlog() {
        let ep = Endpoint::Tcp("127.0.0.1:0".parse().unwrap());
        let l = Listener::bind(&ep, system_backlog()).unwrap();
        let addr: std::net::SocketAddr = l.local().parse().unwrap();
        let n = 600.min(system_backlog() as usize);
        let clients: Vec<_> = (0..n)
            .map(|_| std::net::TcpStream::connect(addr).unwrap())
            .collect();
        let mut got = 0;
        let mut reserve = Reserve::new();
        while got < n {
            assert!(readable(l.as_fd()), "the queue emptied after {got}");
            drain_queue(&l, &mut reserve, &mut |_, _| got += 1).unwrap();
        }
        assert_eq!(got, clients.len());
    }
}
