//! An NBD server that requires TLS, on nbd-core and tls-glue's [`Link`]: the plaintext
//! negotiation until STARTTLS, then the same core over TLS from the exact byte after the
//! STARTTLS reply. One read-only export `disk` (byte at offset `o` is `o % 251`), QEMU-style
//! credentials from a directory (`ca-cert.pem`, `server-cert.pem`, `server-key.pem`, and
//! client certificates verified when `verify` is given), FORCEDTLS: a client that does not
//! start TLS learns nothing, not even the export names.
//!
//! The drain order is the one `Link` documents: TLS's own bytes first, then the core's
//! output sealed, its events (acting on STARTTLS), its input from `Link::deliver`, and only
//! then a read into `Link::recv_buffer`.
//!
//! ```text
//! kvmio creds generate /tmp/pki --hostname localhost --ip 127.0.0.1   # or certtool, as QEMU
//! cargo run -p tls-glue --example nbd_tls_server -- PORT /tmp/pki [verify]
//! nbdinfo "nbds://127.0.0.1:PORT/disk?tls-certificates=/tmp/pki"
//! ```

use std::error::Error;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;

use nbd_core::export::Export;
use nbd_core::server::{Command, Event, Lent, Request, Server, ServerConfig, TlsMode};
use nbd_core::time::Instant;
use nbd_core::wire::{BlockSize, Extent};
mod common;
use common::{eof, send};
use tls_glue::{CredsOptions, Endpoint, GrowingBuffer, Link, TlsCreds, TlsLayer, TlsServerConfig};

const SIZE: u64 = 4 << 20;
/// The largest READ payload, advertised as the export's maximum block size (the core refuses
/// longer requests with EINVAL).
const MAX_READ: u32 = 1 << 20;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args
        .next()
        .ok_or("usage: nbd_tls_server PORT CREDS_DIR [verify]")?
        .parse()?;
    let dir = args.next().ok_or("the credentials directory is missing")?;
    let verify = args.next().as_deref() == Some("verify");
    let opts = CredsOptions::system(Endpoint::Server).verify_peer(verify);
    let creds = TlsCreds::load_dir(&dir, opts).map_err(|report| format!("{dir}: {report}"))?;
    let tls = Arc::new(TlsServerConfig::new(&creds)?);
    let exports: &'static [Export<'static>] = Box::leak(Box::new([Export::new("disk", SIZE)
        .with_read_only(true)
        .with_block_size(BlockSize {
            maximum: MAX_READ,
            ..BlockSize::DEFAULT
        })]));
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("listening on {}", listener.local_addr()?);
    for sock in listener.incoming() {
        let (sock, tls) = (sock?, tls.clone());
        std::thread::spawn(move || match serve(sock, exports, &tls) {
            Ok(()) => println!("connection closed"),
            Err(e) => println!("connection failed: {e}"),
        });
    }
    Ok(())
}

fn serve(
    mut sock: TcpStream,
    exports: &[Export<'_>],
    tls: &TlsServerConfig,
) -> Result<(), Box<dyn Error>> {
    let mut config = ServerConfig::new(exports);
    config.tls = TlsMode::Forced;
    let mut server = Server::new(config, Instant::ZERO)?;
    // Plaintext before TLS: small at first, as large as the core's longest message at most.
    let mut link = Link::new(GrowingBuffer::new(1024, config.input_buffer_len()));
    let mut plain = vec![0u8; 64 + MAX_READ as usize]; // the core's output (a reply header + READ data)
    let mut wire = Vec::new(); // the same, sealed
    let mut replies = Vec::new(); // replies made while the link lends input to the core
    loop {
        // 1. TLS's own bytes (handshake flights, alerts) before anything else.
        while !link.pending_transmit().is_empty() {
            let n = sock.write(link.pending_transmit())?;
            link.transmit_done(n);
        }
        if let Some(e) = link.error() {
            return Err(format!("TLS: {e}").into());
        }
        if link.poll_established() {
            println!("TLS established");
            server.tls_established()?;
        }
        // 2. The core's output, sealed once TLS is up, then its events.
        while let Some(n) = server.poll_transmit(&mut plain)? {
            send(&mut sock, &mut link, &plain[..n], &mut wire)?;
        }
        while let Some(event) = server.poll_event() {
            match event {
                // The STARTTLS reply went out in the clear above: TLS from the next byte on.
                Event::StartTls => link.start_tls(TlsLayer::server(tls)?)?,
                Event::Ready(_) => println!("transmission"),
                Event::Finished | Event::TimedOut => {
                    wire.resize(256, 0);
                    let n = link.close(&mut wire)?; // close_notify
                    sock.write_all(&wire[..n])?;
                    return Ok(());
                }
                _ => {}
            }
        }
        // 3. Input, one message per call, until the core consumes nothing.
        let consumed = link.deliver(|input| -> Result<usize, Box<dyn Error>> {
            let p = server.handle_input(input)?;
            if let Some(Lent::Request(req)) = p.lent {
                answer(&mut server, &req, &mut plain, &mut replies)?;
            }
            Ok(p.consumed)
        })?;
        if !replies.is_empty() {
            send(&mut sock, &mut link, &replies, &mut wire)?;
            replies.clear();
        }
        if consumed > 0 {
            continue; // the core may have queued replies of its own: drain them first
        }
        if !link.pending_transmit().is_empty() {
            continue; // a handshake flight made above goes out before any read
        }
        // 4. Nothing more to do without more bytes.
        let buf = link.recv_buffer();
        if buf.is_empty() {
            return Err("the client sent a message larger than the server accepts".into());
        }
        match sock.read(buf)? {
            0 => return eof(&mut link, server.handle_eof().map_err(Into::into)),
            n => link.received(n)?,
        }
    }
}

/// Appends the reply to `req` to `replies` (`scratch` has room for a header and the longest
/// READ). The core already refused writes (the export is read-only), requests out of range
/// and READs longer than the maximum.
fn answer(
    server: &mut Server<'_>,
    req: &Request,
    scratch: &mut [u8],
    replies: &mut Vec<u8>,
) -> Result<(), Box<dyn Error>> {
    let n = match req.command {
        Command::Read => {
            // The data goes right behind the reply header, for one copy into `replies`.
            let h = server.read_data_header_len();
            let data = &mut scratch[h..h + req.length as usize];
            for (i, b) in data.iter_mut().enumerate() {
                *b = ((req.offset + i as u64) % 251) as u8;
            }
            let header =
                server.reply_read_data(req, req.offset, req.length, true, &mut scratch[..h])?;
            header + req.length as usize
        }
        Command::BlockStatus => {
            let all_data = [Extent {
                length: req.length,
                flags: 0,
            }];
            server.reply_block_status(req, &all_data, scratch)?
        }
        _ => server.reply_ok(req, scratch)?, // FLUSH, CACHE: nothing to do
    };
    replies.extend_from_slice(&scratch[..n]);
    Ok(())
}
