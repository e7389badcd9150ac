//! A blocking NBD server on nbd-core alone: one RAM export named `ram`, shared by every
//! connection (a thread each, so multi-conn clients such as nbdcopy work), every transmission
//! command answered, in under 150 lines. It shows the driver loop
//! the crate documentation describes: drain `poll_transmit`, then `poll_event`; feed input
//! until the server consumes and lends nothing; only then block in `recv`.
//!
//! ```text
//! cargo run -p nbd-core --example ram_server -- [PORT] [SIZE_MIB]
//! nbdinfo nbd://127.0.0.1:PORT/ram
//! qemu-io -f raw nbd://127.0.0.1:PORT/ram -c 'write -P 7 0 1M' -c 'read -P 7 0 1M'
//! ```

use std::error::Error;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::{Arc, Mutex};

use nbd_core::export::Export;
use nbd_core::server::{Command, Event, Lent, Request, Server, ServerConfig};
use nbd_core::time::Instant;
use nbd_core::wire::Extent;

/// Room for the longest READ reply header (extended headers: 40 bytes) before the data.
const HEADER_ROOM: usize = 64;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map_or(Ok(0), |a| a.parse())?;
    let size = args.next().map_or(Ok(64), |a| a.parse::<u64>())? << 20;
    // One disk for all connections: a FLUSH on one covers writes on all, so the export's
    // default MULTI_CONN is true.
    let exports: &'static [Export<'static>] = Box::leak(Box::new([Export::new("ram", size)]));
    let disk = Arc::new(Mutex::new(vec![0u8; usize::try_from(size)?]));
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("listening on {}", listener.local_addr()?);
    for sock in listener.incoming() {
        let (sock, disk) = (sock?, disk.clone());
        std::thread::spawn(move || match serve(sock, exports, &disk) {
            Ok(()) => println!("connection closed"),
            Err(e) => println!("connection failed: {e}"),
        });
    }
    Ok(())
}

type Disk = Mutex<Vec<u8>>;

fn serve(mut sock: TcpStream, exports: &[Export<'_>], disk: &Disk) -> Result<(), Box<dyn Error>> {
    let config = ServerConfig::new(exports);
    let mut server = Server::new(config, Instant::ZERO)?;
    let mut input = vec![0u8; config.input_buffer_len().max(256 << 10)];
    let mut out = vec![0u8; HEADER_ROOM + exports[0].block_size.maximum as usize];
    let (mut start, mut end) = (0, 0);
    // The WRITE whose payload is arriving, and where it ends.
    let mut writing: Option<(Request, u64)> = None;
    loop {
        // 1. Everything the server has to say, then its events.
        while let Some(n) = server.poll_transmit(&mut out)? {
            sock.write_all(&out[..n])?;
        }
        while let Some(event) = server.poll_event() {
            match event {
                Event::Ready(_) => println!("transmission"),
                Event::Finished | Event::TimedOut => return Ok(()),
                Event::StartTls => return Err("no TLS in this example".into()),
                _ => {}
            }
        }
        if server.is_closed() {
            return Ok(());
        }
        // 2. Input, one message per call, until nothing is consumed or lent.
        let mut progress = false;
        loop {
            let p = server.handle_input(&input[start..end])?;
            start += p.consumed;
            match p.lent {
                Some(Lent::Request(req)) => match answer(&mut server, &req, disk, &mut out)? {
                    Some(n) => sock.write_all(&out[..n])?,
                    // A WRITE is answered once its payload is in.
                    None => writing = Some((req, req.offset + req.length)),
                },
                Some(Lent::WriteData { offset, data, .. }) => {
                    let at = usize::try_from(offset)?;
                    disk.lock().unwrap()[at..at + data.len()].copy_from_slice(data);
                    if let Some((req, last)) = writing
                        && offset + data.len() as u64 == last
                    {
                        let n = server.reply_ok(&req, &mut out)?;
                        sock.write_all(&out[..n])?;
                        writing = None;
                    }
                }
                None if p.consumed == 0 => break,
                None => {}
            }
            progress = true;
        }
        if progress {
            continue; // the core may have queued replies of its own: drain them first
        }
        // 3. Nothing more to do without more bytes.
        input.copy_within(start..end, 0);
        (start, end) = (0, end - start);
        match sock.read(&mut input[end..])? {
            0 => return Ok(server.handle_eof()?),
            n => end += n,
        }
    }
}

/// Carries out a request; the reply's length in `out`, or `None` for a WRITE (its payload
/// follows as `Lent::WriteData`).
fn answer(
    server: &mut Server<'_>,
    req: &Request,
    disk: &Disk,
    out: &mut [u8],
) -> Result<Option<usize>, Box<dyn Error>> {
    let mut disk = disk.lock().unwrap();
    let (at, len) = (usize::try_from(req.offset)?, usize::try_from(req.length)?);
    Ok(Some(match req.command {
        Command::Write => return Ok(None),
        Command::Read => {
            // The data goes right behind the header, in one buffer and one write.
            let h = server.read_data_header_len();
            out[h..h + len].copy_from_slice(&disk[at..at + len]);
            let header =
                server.reply_read_data(req, req.offset, req.length, true, &mut out[..h])?;
            header + len
        }
        Command::Trim | Command::WriteZeroes => {
            disk[at..at + len].fill(0);
            server.reply_ok(req, out)?
        }
        Command::Flush | Command::Cache => server.reply_ok(req, out)?,
        Command::BlockStatus => {
            let all_data = [Extent {
                length: req.length,
                flags: 0,
            }];
            server.reply_block_status(req, &all_data, out)?
        }
    }))
}
