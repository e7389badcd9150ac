//! A blocking VNC server on rfb-core alone: a thread per connection, VNC authentication (or
//! none), a 320×200 picture the application owns, sent whole when the viewer asks for the
//! whole screen and not again for incremental requests while nothing changes. It shows the
//! server driver loop of the crate documentation with a real socket and clock: input until
//! no progress, `poll_transmit`, `poll_event` (transmitting after each), updates, and a read
//! that wakes up for `poll_timeout` (a rejected login's reason and throttling delay go out
//! before the connection closes).
//!
//! ```text
//! cargo run -p rfb-core --example vnc_server -- [PORT] [PASSWORD]
//! gvnccapture 127.0.0.1:$((PORT - 5900)) shot.png     # asks for the password when one is set
//! ```

use std::error::Error;
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant as StdInstant};

use rfb_core::server::{
    Damage, Event, MIN_ENCODE_BUFFER, Server, ServerConfig, State, UpdateSource,
};
use rfb_core::wire::{PixelFormat, Rect, SecurityType};
use rfb_core::{Framebuffer, Instant, verify_vnc_response};

const W: u16 = 320;
const H: u16 = 200;

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1);
    let port: u16 = args.next().map_or(Ok(0), |a| a.parse())?;
    let password: Option<&'static str> = args.next().map(|p| &*p.leak());
    let listener = TcpListener::bind(("127.0.0.1", port))?;
    println!("listening on {}", listener.local_addr()?);
    for sock in listener.incoming() {
        let sock = sock?;
        std::thread::spawn(move || match serve(sock, password) {
            Ok(()) => println!("connection closed"),
            Err(e) => println!("connection failed: {e}"),
        });
    }
    Ok(())
}

/// The picture: red grows to the right, green downwards, blue in 16-pixel checks, in the
/// framebuffer's native format (`PixelFormat::RGB888`: little-endian `0x00RRGGBB`).
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

fn serve(mut sock: TcpStream, password: Option<&str>) -> Result<(), Box<dyn Error>> {
    let security = if password.is_some() {
        SecurityType::VncAuth
    } else {
        SecurityType::None
    };
    let config = ServerConfig::with_security(&[security], &[]);
    let epoch = StdInstant::now();
    let now = || Instant::from_micros(epoch.elapsed().as_micros() as u64);
    // The VncAuth challenge must be unpredictable: the core has no RNG, the OS has one.
    let mut challenge = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut challenge)?;
    let mut server = Server::new(config, now(), challenge);
    let pixels = picture();
    let mut inbuf = vec![0u8; server.min_input_buffer().max(4096)];
    let mut out = vec![0u8; MIN_ENCODE_BUFFER.max(64 << 10)];
    let mut have = 0;
    let mut full = false; // a non-incremental request is pending
    loop {
        // 1. Input until the server makes no progress; its output and events after each step.
        loop {
            let progressed = server.state() != State::Closing && {
                let p = server.handle_input(&inbuf[..have])?;
                let (consumed, lent) = (p.consumed, p.lent.is_some());
                inbuf.copy_within(consumed..have, 0);
                have -= consumed;
                consumed > 0 || lent
            };
            while let Some(t) = server.poll_transmit(&mut out)? {
                sock.write_all(&out[..t.len])?;
            }
            while let Some(e) = server.poll_event() {
                match e {
                    Event::VncAuth {
                        challenge,
                        response,
                    } => {
                        let pw = password.unwrap_or_default().as_bytes();
                        if verify_vnc_response(pw, &challenge, &response) {
                            server.accept_auth()?;
                        } else {
                            println!("wrong password");
                            server.reject_auth("Authentication failed")?;
                        }
                    }
                    Event::ClientInit { .. } => {
                        server.server_init(W, H, PixelFormat::RGB888, b"rfb-core example")?
                    }
                    Event::UpdateRequested {
                        incremental: false, ..
                    } => full = true,
                    Event::Closed => return Ok(()), // everything is sent
                    _ => {}
                }
                while let Some(t) = server.poll_transmit(&mut out)? {
                    sock.write_all(&out[..t.len])?;
                }
            }
            if !progressed {
                break;
            }
        }
        // 2. An update when one is wanted and there is something to send.
        if server.wants_update() && (full || server.update_in_progress()) {
            let fb = Framebuffer::new(&pixels, W, H, usize::from(W) * 4, PixelFormat::RGB888)?;
            let damage = [Damage::Changed(Rect::new(0, 0, W, H))];
            loop {
                let st = server.encode_update(&UpdateSource::new(fb, &damage), &mut out)?;
                sock.write_all(&out[..st.written])?;
                if st.done {
                    break;
                }
            }
            full = false;
        }
        // 3. Wait for input, but not past the server's next deadline.
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
            // Reading is over: only the deadline (the failure delay) matters.
            std::thread::sleep(wait.unwrap_or(Duration::from_millis(10)));
            server.handle_timeout(now());
            continue;
        }
        sock.set_read_timeout(wait)?;
        match sock.read(&mut inbuf[have..]) {
            Ok(0) => return Ok(server.handle_eof()?),
            Ok(n) => have += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                server.handle_timeout(now())
            }
            Err(e) => return Err(e.into()),
        }
    }
}
