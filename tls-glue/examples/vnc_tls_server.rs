//! A VNC server that offers only VeNCrypt with X.509 TLS, on rfb-core and tls-glue's
//! [`Link`]: the RFB handshake in the clear until the VeNCrypt sub-type is agreed, then the
//! same core over TLS from the byte after the sub-type ack. X509None, or X509Vnc when a
//! password is given; QEMU-style credentials from a directory (client certificates required
//! and verified with `verify`); a 320×200 picture sent whole on a full request.
//!
//! The loop is rfb-core's server driver loop with the link in the middle: TLS's own bytes
//! first, input through `Link::deliver`, the core's output through `Link::seal`, events
//! (acting on StartTls), updates, then a read into `Link::recv_buffer` that wakes up for
//! `poll_timeout`.
//!
//! ```text
//! kvmio creds generate /tmp/pki --hostname localhost --ip 127.0.0.1
//! cargo run -p tls-glue --example vnc_tls_server -- PORT /tmp/pki [PASSWORD] [verify]
//! gvnccapture 127.0.0.1:$((PORT - 5900)) shot.png     # CA in ~/.pki/CA/cacert.pem
//! ```

use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use rfb_core::server::{
    Damage, Event, MIN_ENCODE_BUFFER, Server, ServerConfig, State, UpdateSource,
};
use rfb_core::wire::{PixelFormat, Rect, SecurityType, VencryptSubtype};
use rfb_core::{Framebuffer, Instant, verify_vnc_response};
mod common;
use common::{eof, send};
use tls_glue::{CredsOptions, Endpoint, GrowingBuffer, Link, TlsCreds, TlsLayer, TlsServerConfig};

const W: u16 = 320;
const H: u16 = 200;

struct Settings {
    tls: TlsServerConfig,
    password: Option<String>,
}

fn main() -> Result<(), Box<dyn Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [port, dir, rest @ ..] = &args[..] else {
        return Err("usage: vnc_tls_server PORT CREDS_DIR [PASSWORD] [verify]".into());
    };
    let verify = rest.iter().any(|a| a == "verify");
    let password = rest.iter().find(|a| *a != "verify").cloned();
    let opts = CredsOptions::system(Endpoint::Server).verify_peer(verify);
    let creds = TlsCreds::load_dir(dir, opts).map_err(|report| format!("{dir}: {report}"))?;
    let settings = Arc::new(Settings {
        tls: TlsServerConfig::new(&creds)?,
        password,
    });
    let listener = TcpListener::bind(("127.0.0.1", port.parse::<u16>()?))?;
    println!("listening on {}", listener.local_addr()?);
    for sock in listener.incoming() {
        let (sock, settings) = (sock?, settings.clone());
        std::thread::spawn(move || match serve(sock, &settings) {
            Ok(()) => println!("connection closed"),
            Err(e) => println!("connection failed: {e}"),
        });
    }
    Ok(())
}

/// The picture of rfb-core's `vnc_server` example: red grows to the right, green downwards,
/// blue in 16-pixel checks (`PixelFormat::RGB888`, little-endian `0x00RRGGBB`).
fn picture() -> Vec<u8> {
    let mut px = Vec::with_capacity(usize::from(W) * usize::from(H) * 4);
    for y in 0..u32::from(H) {
        for x in 0..u32::from(W) {
            let (r, g) = (x * 255 / u32::from(W - 1), y * 255 / u32::from(H - 1));
            let b = if (x / 16 + y / 16) % 2 == 0 { 0 } else { 255 };
            px.extend_from_slice(&(r << 16 | g << 8 | b).to_le_bytes());
        }
    }
    px
}

fn serve(mut sock: TcpStream, settings: &Settings) -> Result<(), Box<dyn Error>> {
    let subtype = match settings.password {
        Some(_) => VencryptSubtype::X509Vnc,
        None => VencryptSubtype::X509None,
    };
    let config = ServerConfig::with_security(&[SecurityType::VeNCrypt], &[subtype]);
    let epoch = StdInstant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as u64);
    let mut challenge = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut challenge)?;
    let mut server = Server::new(config, now(), challenge);
    let mut link = Link::new(GrowingBuffer::new(256, server.min_input_buffer()));
    let pixels = picture();
    let mut out = vec![0u8; MIN_ENCODE_BUFFER.max(16 << 10)]; // the core's output
    let mut wire = Vec::new(); // the same, sealed
    let mut full = false; // a non-incremental request is pending
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
        // 2. Input until the server makes no progress; its output and events after each step.
        loop {
            let progressed = server.state() != State::Closing && {
                let mut lent = false;
                let consumed = link.deliver(|input| -> Result<usize, Box<dyn Error>> {
                    let p = server.handle_input(input)?;
                    lent |= p.lent.is_some();
                    Ok(p.consumed)
                })?;
                consumed > 0 || lent
            };
            while let Some(t) = server.poll_transmit(&mut out)? {
                send(&mut sock, &mut link, &out[..t.len], &mut wire)?;
            }
            while let Some(e) = server.poll_event() {
                match e {
                    // The sub-type ack went out in the clear above: TLS from the next byte on.
                    Event::StartTls => link.start_tls(TlsLayer::server(&settings.tls)?)?,
                    Event::VncAuth {
                        challenge,
                        response,
                    } => {
                        let pw = settings.password.as_deref().unwrap_or_default();
                        if verify_vnc_response(pw.as_bytes(), &challenge, &response) {
                            server.accept_auth()?;
                        } else {
                            println!("wrong password");
                            server.reject_auth("Authentication failed")?;
                        }
                    }
                    Event::ClientInit { .. } => {
                        server.server_init(W, H, PixelFormat::RGB888, b"tls-glue example")?
                    }
                    Event::UpdateRequested {
                        incremental: false, ..
                    } => full = true,
                    Event::Closed => {
                        wire.resize(256, 0);
                        let n = link.close(&mut wire)?; // close_notify
                        sock.write_all(&wire[..n])?;
                        return Ok(());
                    }
                    _ => {}
                }
                while let Some(t) = server.poll_transmit(&mut out)? {
                    send(&mut sock, &mut link, &out[..t.len], &mut wire)?;
                }
            }
            if !progressed {
                break;
            }
        }
        // 3. An update when one is wanted and there is something to send.
        if server.wants_update() && (full || server.update_in_progress()) {
            let fb = Framebuffer::new(&pixels, W, H, usize::from(W) * 4, PixelFormat::RGB888)?;
            let damage = [Damage::Changed(Rect::new(0, 0, W, H))];
            loop {
                let st = server.encode_update(&UpdateSource::new(fb, &damage), &mut out)?;
                send(&mut sock, &mut link, &out[..st.written], &mut wire)?;
                if st.done {
                    break;
                }
            }
            full = false;
        }
        if !link.pending_transmit().is_empty() {
            continue; // a handshake flight made above goes out before any read
        }
        // 4. Wait for input, but not past the server's next deadline.
        let wait = server.poll_timeout().map(|t| {
            let t = Duration::from_micros(t.as_micros());
            t.saturating_sub(epoch.elapsed())
                .max(Duration::from_millis(1))
        });
        if wait.is_some_and(|w| w <= Duration::from_millis(1)) {
            server.handle_timeout(now());
            continue;
        }
        if server.state() == State::Closing {
            std::thread::sleep(wait.unwrap_or(Duration::from_millis(10)));
            server.handle_timeout(now());
            continue;
        }
        sock.set_read_timeout(wait)?;
        let buf = link.recv_buffer();
        if buf.is_empty() {
            return Err("the client sent a message larger than the server accepts".into());
        }
        match sock.read(buf) {
            Ok(0) => return eof(&mut link, server.handle_eof().map_err(Into::into)),
            Ok(n) => link.received(n)?,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                server.handle_timeout(now())
            }
            Err(e) => return Err(e.into()),
        }
    }
}
