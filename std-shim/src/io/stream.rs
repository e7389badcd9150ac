//! Connected streams, TCP or Unix, blocking and tokio, with `sendfile` and `MSG_MORE`.

use std::io;
use std::net::TcpStream;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::net::UnixStream;
use std::time::Duration;

/// A connected stream of either kind.
#[derive(Debug)]
pub enum Stream {
    /// TCP.
    Tcp(TcpStream),
    /// Unix.
    Unix(UnixStream),
}

impl crate::io::blocking::Transport for Stream {
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

/// A connected tokio stream of either kind.
#[cfg(feature = "tokio")]
pub enum AsyncStream {
    /// TCP.
    Tcp(tokio::net::TcpStream),
    /// Unix.
    Unix(tokio::net::UnixStream),
}

#[cfg(feature = "tokio")]
impl crate::io::tokio::AsyncTransport for AsyncStream {
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
