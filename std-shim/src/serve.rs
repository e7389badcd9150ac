//! Listening sockets: TCP and Unix, a thread per connection (blocking driver) or a task per
//! connection (tokio driver), a connection cap, and clean shutdown.

use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::{Context, Result};

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path (removed first if it exists, and on shutdown).
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// A connected stream of either kind.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix.
    Unix(UnixStream),
}

impl crate::pump::Transport for Stream {
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()> {
        match self {
            Self::Tcp(s) => s.set_read_timeout(t),
            Self::Unix(s) => s.set_read_timeout(t),
        }
    }

    /// `send(MSG_MORE)` of all of `bytes`: the kernel holds them back for what follows.
    fn write_more(&mut self, bytes: &[u8]) -> io::Result<()> {
        let mut done = 0;
        while done < bytes.len() {
            match rustix::net::send(
                self.as_fd(),
                &bytes[done..],
                rustix::net::SendFlags::MORE | rustix::net::SendFlags::NOSIGNAL,
            ) {
                Ok(n) => done += n,
                Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn send_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> io::Result<()> {
        let (mut off, end) = (offset, offset + len as u64);
        while off < end {
            match sendfile_once(self.as_fd(), file, &mut off, end) {
                Err(e) if is_retry(&e) => {}
                r => r?,
            }
        }
        Ok(())
    }
}

impl AsFd for Stream {
    fn as_fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(s) => s.as_fd(),
            Self::Unix(s) => s.as_fd(),
        }
    }
}

/// One `sendfile` of `file` from `*off` (advanced) up to `end`. A file that ends before `end`
/// is an error: the peer was promised the bytes.
fn sendfile_once(
    fd: BorrowedFd<'_>,
    file: &std::fs::File,
    off: &mut u64,
    end: u64,
) -> io::Result<()> {
    let want = (end - *off) as usize;
    match rustix::fs::sendfile(fd, file, Some(off), want) {
        Ok(0) => Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "file shorter than the export",
        )),
        Ok(_) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// EINTR, or EAGAIN on a socket that is not writable yet: try again.
fn is_retry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock
    )
}

impl io::Read for Stream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.read(buf),
            Self::Unix(s) => s.read(buf),
        }
    }
}

impl io::Write for Stream {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Self::Tcp(s) => s.write(buf),
            Self::Unix(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

enum Listener {
    Tcp(TcpListener),
    /// The socket, its path, and the path's (device, inode) when bound.
    Unix(UnixListener, PathBuf, (u64, u64)),
}

fn inode(p: &std::path::Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

impl Listener {
    fn bind(e: &Endpoint) -> Result<Self> {
        Ok(match e {
            Endpoint::Tcp(a) => {
                Self::Tcp(TcpListener::bind(a).with_context(|| format!("listen on {a}"))?)
            }
            Endpoint::Unix(p) => {
                let _ = std::fs::remove_file(p);
                let l =
                    UnixListener::bind(p).with_context(|| format!("listen on {}", p.display()))?;
                Self::Unix(l, p.clone(), inode(p).unwrap_or_default())
            }
        })
    }

    fn accept(&self) -> io::Result<(Stream, String)> {
        match self {
            Self::Tcp(l) => {
                let (s, a) = l.accept()?;
                s.set_nodelay(true)?;
                Ok((Stream::Tcp(s), a.to_string()))
            }
            Self::Unix(l, p, _) => {
                let (s, _) = l.accept()?;
                Ok((Stream::Unix(s), format!("unix:{}", p.display())))
            }
        }
    }

    fn fd(&self) -> BorrowedFd<'_> {
        match self {
            Self::Tcp(l) => l.as_fd(),
            Self::Unix(l, ..) => l.as_fd(),
        }
    }

    fn local(&self) -> String {
        match self {
            Self::Tcp(l) => l.local_addr().map(|a| a.to_string()).unwrap_or_default(),
            Self::Unix(_, p, _) => format!("unix:{}", p.display()),
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

/// Shared state of a running server: the connection count and the stop flag.
#[derive(Debug, Default)]
pub struct Control {
    /// Connections being served.
    pub active: AtomicUsize,
    /// Set (e.g. by SIGINT/SIGTERM) to stop accepting and end every connection cleanly.
    pub stopping: Arc<AtomicBool>,
}

impl Control {
    /// Asks the server to stop.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether a stop was asked.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// A connection ended: counts it out and logs how, with the number still open.
    fn finished(&self, peer: &str, r: Result<()>) {
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
}

/// How often blocked loops look at the stop flag.
pub const STOP_POLL: Duration = Duration::from_millis(200);

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

/// Binds every endpoint and serves each connection on its own thread with `handler`, keeping at
/// most `max_connections` at once (further ones are closed at once). Returns the bound
/// addresses through `on_bound` (useful with port 0) before serving. Returns once
/// `control.stop()` was called and the connections ended (their handlers watch the flag; see
/// [`crate::pump::Pump::watch`]), or after a 10 s grace period.
pub fn serve_threads(
    endpoints: &[Endpoint],
    max_connections: usize,
    control: Arc<Control>,
    on_bound: impl FnOnce(&[String]),
    handler: impl Fn(Stream, String) -> Result<()> + Send + Sync + 'static,
) -> Result<()> {
    let listeners = endpoints
        .iter()
        .map(Listener::bind)
        .collect::<Result<Vec<_>>>()?;
    on_bound(&listeners.iter().map(Listener::local).collect::<Vec<_>>());
    let handler = Arc::new(handler);
    std::thread::scope(|scope| {
        for l in &listeners {
            let handler = handler.clone();
            let control = control.clone();
            scope.spawn(move || {
                while !control.is_stopping() {
                    if !readable(l.fd()) {
                        continue;
                    }
                    let (stream, peer) = match l.accept() {
                        Ok(x) => x,
                        Err(e) => {
                            log::warn!("accept: {e}");
                            std::thread::sleep(Duration::from_millis(50));
                            continue;
                        }
                    };
                    if control.active.load(Ordering::SeqCst) >= max_connections {
                        log::warn!("{peer}: refused, {max_connections} connections already");
                        continue;
                    }
                    control.active.fetch_add(1, Ordering::SeqCst);
                    let handler = handler.clone();
                    let control = control.clone();
                    std::thread::spawn(move || {
                        log::debug!("{peer}: connected");
                        let r = handler(stream, peer.clone());
                        control.finished(&peer, r);
                    });
                }
            });
        }
    });
    wait_for_connections(&control);
    Ok(())
}

/// After a stop: gives the connections (which watch the stop flag) 10 s to end cleanly.
fn wait_for_connections(control: &Control) {
    let left = control.drain(Duration::from_secs(10));
    if left > 0 {
        log::warn!("{left} connections did not end within 10 s");
    }
}

/// Resolves a listen address: `HOST:PORT`, `[V6]:PORT`, or a bare host or address (IPv6 too),
/// which gets `default_port`.
pub fn resolve(addr: &str, default_port: u16) -> Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let has_port = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok());
    let with_port = if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{default_port}")
    } else {
        format!("{addr}:{default_port}")
    };
    let addrs: Vec<_> = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("resolve {addr}: no addresses");
    }
    Ok(addrs)
}

/// Where a service listens: every address of each `listen` entry (see [`resolve`]) and the
/// `unix` socket; with neither, `127.0.0.1:default_port`.
pub fn endpoints(
    listen: &[String],
    unix: Option<&std::path::Path>,
    default_port: u16,
) -> Result<Vec<Endpoint>> {
    let mut endpoints = Vec::new();
    for l in listen {
        endpoints.extend(resolve(l, default_port)?.into_iter().map(Endpoint::Tcp));
    }
    endpoints.extend(unix.map(|p| Endpoint::Unix(p.to_path_buf())));
    if listen.is_empty() && unix.is_none() {
        endpoints.push(Endpoint::Tcp(SocketAddr::from((
            [127, 0, 0, 1],
            default_port,
        ))));
    }
    Ok(endpoints)
}

/// Parses sizes like `64M`, `1G`, `512K`, `4096` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1u64,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => anyhow::bail!("unknown size unit in {s:?}"),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} too large"))
}

/// A connected tokio stream of either kind.
#[cfg(feature = "tokio")]
pub enum AsyncStream {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// Unix.
    Unix(tokio::net::UnixStream),
}

#[cfg(feature = "tokio")]
impl crate::pump::AsyncTransport for AsyncStream {
    async fn send_file(&mut self, file: &std::fs::File, offset: u64, len: usize) -> io::Result<()> {
        use tokio::io::Interest;
        let (mut off, end) = (offset, offset + len as u64);
        while off < end {
            let r = match self {
                Self::Tcp(s) => {
                    s.writable().await?;
                    s.try_io(Interest::WRITABLE, || {
                        sendfile_once(s.as_fd(), file, &mut off, end)
                    })
                }
                Self::Unix(s) => {
                    s.writable().await?;
                    s.try_io(Interest::WRITABLE, || {
                        sendfile_once(s.as_fd(), file, &mut off, end)
                    })
                }
            };
            match r {
                Err(e) if is_retry(&e) => {}
                r => r?,
            }
        }
        Ok(())
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncRead for AsyncStream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => std::pin::Pin::new(s).poll_read(cx, buf),
            Self::Unix(s) => std::pin::Pin::new(s).poll_read(cx, buf),
        }
    }
}

#[cfg(feature = "tokio")]
impl tokio::io::AsyncWrite for AsyncStream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<io::Result<usize>> {
        match self.get_mut() {
            Self::Tcp(s) => std::pin::Pin::new(s).poll_write(cx, buf),
            Self::Unix(s) => std::pin::Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => std::pin::Pin::new(s).poll_flush(cx),
            Self::Unix(s) => std::pin::Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<io::Result<()>> {
        match self.get_mut() {
            Self::Tcp(s) => std::pin::Pin::new(s).poll_shutdown(cx),
            Self::Unix(s) => std::pin::Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// [`serve_threads`] on a tokio runtime: a task per connection running `handler`.
#[cfg(feature = "tokio")]
pub fn serve_tokio<F, Fut>(
    endpoints: &[Endpoint],
    max_connections: usize,
    control: Arc<Control>,
    on_bound: impl FnOnce(&[String]),
    handler: F,
) -> Result<()>
where
    F: Fn(AsyncStream, String) -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<()>> + Send + 'static,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let accepting = control.clone();
    rt.block_on(async move {
        let control = accepting;
        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        let handler = Arc::new(handler);
        for e in endpoints {
            let listener = Listener::bind(e)?;
            bound.push(listener.local());
            tasks.push((listener, handler.clone(), control.clone()));
        }
        on_bound(&bound);
        let mut set = tokio::task::JoinSet::new();
        for (listener, handler, control) in tasks {
            set.spawn(async move {
                let mut accept = match &listener {
                    Listener::Tcp(l) => {
                        let l = l.try_clone()?;
                        l.set_nonblocking(true)?;
                        AsyncListener::Tcp(tokio::net::TcpListener::from_std(l)?)
                    }
                    Listener::Unix(l, ..) => {
                        let l = l.try_clone()?;
                        l.set_nonblocking(true)?;
                        AsyncListener::Unix(
                            tokio::net::UnixListener::from_std(l)?,
                            listener.local(),
                        )
                    }
                };
                while !control.is_stopping() {
                    let (stream, peer) =
                        match tokio::time::timeout(STOP_POLL, accept.accept()).await {
                            Err(_) => continue,
                            Ok(Ok(x)) => x,
                            Ok(Err(e)) => {
                                log::warn!("accept: {e}");
                                tokio::time::sleep(Duration::from_millis(50)).await;
                                continue;
                            }
                        };
                    if control.active.load(Ordering::SeqCst) >= max_connections {
                        log::warn!("{peer}: refused, {max_connections} connections already");
                        continue;
                    }
                    control.active.fetch_add(1, Ordering::SeqCst);
                    let fut = handler(stream, peer.clone());
                    let control = control.clone();
                    tokio::spawn(async move {
                        log::debug!("{peer}: connected");
                        let r = fut.await;
                        control.finished(&peer, r);
                    });
                }
                Ok::<(), anyhow::Error>(())
            });
        }
        while let Some(r) = set.join_next().await {
            r??;
        }
        Ok::<(), anyhow::Error>(())
    })?;
    // The connection tasks go on running on the runtime's workers meanwhile.
    wait_for_connections(&control);
    Ok(())
}

#[cfg(feature = "tokio")]
enum AsyncListener {
    Tcp(tokio::net::TcpListener),
    /// The listener and the name its peers get in logs (`unix:PATH`, as [`serve_threads`]).
    Unix(tokio::net::UnixListener, String),
}

#[cfg(feature = "tokio")]
impl AsyncListener {
    async fn accept(&mut self) -> io::Result<(AsyncStream, String)> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let r = |a: &str| resolve(a, 5900).unwrap()[0].to_string();
        assert_eq!(r("127.0.0.1"), "127.0.0.1:5900");
        assert_eq!(r("127.0.0.1:10"), "127.0.0.1:10");
        assert_eq!(r("::1"), "[::1]:5900");
        assert_eq!(r("[::1]:7"), "[::1]:7");
        assert!(resolve("no such host.invalid", 1).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
    }
}
