//! Streams (TCP and Unix, blocking and tokio) and listen addresses.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
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
