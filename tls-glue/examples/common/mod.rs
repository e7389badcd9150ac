//! What both tls-glue examples do around their core: send the core's output through the
//! link, and judge the peer's close.

use std::error::Error;
use std::io::Write;
use std::net::TcpStream;

use tls_glue::{GrowingBuffer, Link};

/// Sends the core's output `plain` as it goes on the wire (encrypted once TLS is up).
pub(crate) fn send(
    sock: &mut TcpStream,
    link: &mut Link<GrowingBuffer>,
    plain: &[u8],
    wire: &mut Vec<u8>,
) -> Result<(), Box<dyn Error>> {
    wire.resize(link.sealed_len(plain.len()), 0);
    let n = link.seal(plain, wire)?;
    sock.write_all(&wire[..n])?;
    Ok(())
}

/// The peer closed the connection: the core's verdict (`core`: did the conversation end
/// between messages?) decides. A missing TLS `close_notify` alone is only reported: the
/// core's own framing already catches a truncated message.
pub(crate) fn eof(
    link: &mut Link<GrowingBuffer>,
    core: Result<(), Box<dyn Error>>,
) -> Result<(), Box<dyn Error>> {
    let tls = link.handle_eof();
    core?;
    if let Err(e) = tls {
        println!("({e})");
    }
    Ok(())
}
