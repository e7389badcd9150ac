//! The blocking I/O loop: a [`Pump`] over a [`Transport`] (std `TcpStream`, `UnixStream`).

use std::fs::File;
use std::io;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::pump::{Action, Pump, Session};

pub(crate) fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A blocking transport the pump can drive.
pub trait Transport: io::Read + io::Write {
    /// Sets the read timeout (`None`: block).
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;

    /// Writes bytes that a file segment follows at once (sockets: `MSG_MORE`).
    fn write_more(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    /// Sends `len` bytes of `file` from `offset`. The default reads and writes through a
    /// buffer; sockets override it with `sendfile`.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<()> {
        copy_file(file, offset, len, |b| self.write_all(b))
    }
}

/// Sends a file range through `write` in 1 MiB pieces.
pub fn copy_file(
    file: &File,
    offset: u64,
    len: usize,
    mut write: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..n], offset + done as u64)?;
        write(&buf[..n])?;
        done += n;
    }
    Ok(())
}

/// Runs a pump over a blocking transport.
pub fn run_blocking<S: Session, T: Transport>(pump: &mut Pump<S>, io: &mut T) -> Result<()> {
    // The read timeout set on the transport.
    let mut timeout_set: Option<Duration> = None;
    loop {
        match pump.step()? {
            Action::Done => return Ok(()),
            Action::Send(bytes) => {
                match io.write_all(bytes) {
                    Err(e) if pump.finishing() && is_hangup(&e) => return Ok(()),
                    r => r.context("send")?,
                }
                pump.sent();
            }
            Action::SendMore(bytes) => {
                io.write_more(bytes).context("send")?;
                pump.sent();
            }
            Action::SendFile(file, offset, len) => {
                io.send_file(file, offset, len).context("send")?;
                pump.sent();
            }
            Action::Receive(buf, deadline) => {
                // A wait of the stop poll or longer is read with the stop poll as timeout (the
                // loop comes back and asks again), so the socket option is set once rather
                // than before every read; shorter waits are set exactly.
                let poll = crate::io::listen::STOP_POLL;
                let wait = deadline.map(|d| {
                    d.saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(1), poll)
                });
                if wait != timeout_set || wait.is_some_and(|w| w != poll) {
                    io.set_read_timeout(wait)?;
                    timeout_set = wait;
                }
                match io.read(buf) {
                    Ok(n) => pump.received(n)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if is_timeout(&e) => pump.timeout(Instant::now())?,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => pump.received(0)?,
                    Err(e) => return Err(e).context("receive"),
                }
            }
        }
    }
}
