//! A blocking NBD client on nbd-core alone: negotiates with [`Negotiator`] (extended headers or
//! structured replies when the server has them, GO with the EXPORT_NAME fallback for old
//! servers), then copies the whole export into a file with up to 16 READs in flight, writing
//! each piece of READ data straight from the input buffer where it belongs (holes are left as
//! holes), and disconnects. Plain TCP only: tls-glue's `nbd_tls_server` example shows TLS.
//!
//! ```text
//! qemu-nbd -r -t -p PORT -x disk -f raw disk.img &
//! cargo run -p nbd-core --example nbd_client -- 127.0.0.1:PORT disk copy.img
//! cmp disk.img copy.img
//! ```

use std::error::Error;
use std::fs::File;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::FileExt;

use nbd_core::client::{Client, ClientConfig, Event, Goal, Item, Negotiator, Plan, TlsPolicy};

/// Requests in flight at most (the client's queue size).
const DEPTH: usize = 16;
/// Bytes per READ.
const CHUNK: u32 = 256 * 1024;

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [addr, export, out] = &args[..] else {
        return Err("usage: nbd_client HOST:PORT EXPORT OUTPUT".into());
    };
    let size = copy(&mut TcpStream::connect(addr)?, export, &File::create(out)?)?;
    println!("copied {size} bytes of {export:?} to {out}");
    Ok(())
}

/// Copies `export` into `out`; returns its size.
fn copy(sock: &mut TcpStream, export: &str, out: &File) -> Result<u64, Box<dyn Error>> {
    let plan = Plan {
        export,
        tls: TlsPolicy::Disable,
        extended_headers: true,
        structured_replies: true,
        meta_contexts: &[],
        goal: Goal::Go,
    };
    let config = ClientConfig::default();
    let mut client: Client<DEPTH> = Client::new(config);
    let mut negotiator = Negotiator::new();
    let mut tx = [0u8; 4096];
    // Room for a whole READ reply as well as the longest option reply.
    let mut rx = vec![0u8; config.input_buffer_len().max(CHUNK as usize + 64)];
    let (mut start, mut end) = (0, 0);
    let (mut size, mut next, mut ready, mut disconnected) = (0u64, 0u64, false, false);
    loop {
        // Drain: what the client sends on its own, then its milestones.
        while let Some(n) = client.poll_transmit(&mut tx)? {
            sock.write_all(&tx[..n])?;
        }
        while let Some(event) = client.poll_event() {
            match event {
                Event::Ready(info) => {
                    (size, ready) = (info.size, true);
                    out.set_len(size)?;
                }
                Event::Finished => return Ok(size),
                Event::StartTls => return Err("STARTTLS was not asked for".into()),
                _ => {}
            }
        }
        // Commands: the next option while negotiating, then READs while there is room.
        if !ready {
            match negotiator.step(&plan, &mut client, &mut tx) {
                Ok(Some(n)) => sock.write_all(&tx[..n])?,
                Ok(None) => {}
                Err(e) => {
                    // Say goodbye properly (ABORT) before giving up.
                    if let Ok(n) = client.opt_abort(&mut tx) {
                        sock.write_all(&tx[..n]).ok();
                    }
                    return Err(format!("negotiation: {e}").into());
                }
            }
        } else if !disconnected {
            while next < size && client.can_send_request() {
                let len = CHUNK.min(u32::try_from(size - next).unwrap_or(CHUNK));
                let n = client.read(next, next, len, &mut tx)?;
                sock.write_all(&tx[..n])?;
                next += u64::from(len);
            }
            if next >= size && client.in_flight() == 0 {
                let n = client.disconnect(&mut tx)?;
                sock.write_all(&tx[..n])?;
                disconnected = true;
                if client.is_closed() {
                    return Ok(size);
                }
            }
        }
        // Input: feed what was received until the client takes nothing more from it.
        let mut progressed = false;
        loop {
            let p = client.handle_input(&rx[start..end])?;
            start += p.consumed;
            let Some(item) = p.item else {
                if p.consumed == 0 {
                    break;
                }
                progressed = true;
                continue;
            };
            progressed = true;
            match item {
                Item::ReadData { offset, data, .. } => out.write_all_at(data, offset)?,
                Item::ChunkError { message, .. } => eprintln!("server: {message}"),
                Item::Done {
                    result: Err(e),
                    cookie,
                } => {
                    return Err(format!("READ at {cookie}: {e:?}").into());
                }
                // Holes stay holes in the sparse file; refused options are the negotiator's
                // (it falls back, or its step fails with the reason).
                _ => {}
            }
        }
        if progressed {
            continue; // something changed: drain and issue commands before blocking
        }
        // Nothing more to do without new input: make room and block in recv.
        rx.copy_within(start..end, 0);
        (start, end) = (0, end - start);
        let n = sock.read(&mut rx[end..])?;
        if n == 0 {
            client.handle_eof()?;
            return if client.is_closed() {
                Ok(size)
            } else {
                Err("the server closed the connection".into())
            };
        }
        end += n;
    }
}
