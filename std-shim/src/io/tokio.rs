//! The tokio I/O loop: a [`Pump`] over an [`AsyncTransport`].

use std::fs::File;
use std::io;
use std::time::Instant;

use anyhow::{Context, Result};

use super::blocking::is_hangup;
use crate::pump::{Action, Pump, Session};

/// A tokio transport the pump can drive.
pub trait AsyncTransport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// Sends `len` bytes of `file` from `offset` (`sendfile` where the transport can).
    fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        len: usize,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

/// Runs a pump over a tokio transport.
pub async fn run_tokio<S: Session, T: AsyncTransport>(
    pump: &mut Pump<S>,
    io: &mut T,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        match pump.step()? {
            Action::Done => {
                io.shutdown().await.ok();
                return Ok(());
            }
            Action::Send(bytes) | Action::SendMore(bytes) => {
                match io.write_all(bytes).await {
                    Err(e) if pump.finishing() && is_hangup(&e) => return Ok(()),
                    r => r.context("send")?,
                }
                pump.sent();
            }
            Action::SendFile(file, offset, len) => {
                io.send_file(file, offset, len).await.context("send")?;
                pump.sent();
            }
            Action::Receive(buf, deadline) => {
                let r = match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), io.read(buf)).await.ok(),
                    None => Some(io.read(buf).await),
                };
                match r {
                    None => pump.timeout(Instant::now())?,
                    Some(Ok(n)) => pump.received(n)?,
                    Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                        pump.received(0)?
                    }
                    Some(Err(e)) => return Err(e).context("receive"),
                }
            }
        }
    }
}
