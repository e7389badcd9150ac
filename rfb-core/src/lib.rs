//! Sans-IO RFB (VNC) protocol core: server and client state machines for RFB 3.3, 3.7 and 3.8
//! with None, VNC authentication and VeNCrypt (Plain, X509None, X509Vnc, X509Plain, and None/Vnc
//! offered inside VeNCrypt), all client and server messages, and framebuffer encoders/decoders
//! (Raw, CopyRect, RRE, Hextile; ZRLE and Tight (with JPEG) both ways and TightPNG on the
//! server with the `alloc` feature; DesktopSize, ExtendedDesktopSize, Cursor, LastRect,
//! DesktopName and QEMU extended key pseudo-encodings).
//!
//! The crate does no I/O, reads no clock and draws no random numbers; it is `no_std` and does not
//! allocate (except for ZRLE and Tight under `alloc`). The driver owns every buffer, the
//! framebuffer too. No feature needs `std`: ZRLE and Tight compress through the
//! `zlib::ZrleCompressor` trait (`miniz_oxide` by default; a hosted driver may plug in a faster
//! zlib, as std-shim does with `zlib-rs`), and Tight's JPEG goes through the `jpeg` traits
//! (pure-Rust defaults with the `jpeg-encode` and `jpeg-decode` features).
//!
//! # Shape
//!
//! [`server::Server`] and [`client::Client`] share one shape:
//!
//! * **A. getters** — `state()`, `version()`, …
//! * **B. handlers** — `handle_input(&[u8]) -> Result<Progress<Payload>, Error>` consumes whole
//!   protocol units from the front of the input (the caller drops `consumed` bytes and keeps the
//!   rest; incomplete input consumes nothing and is never copied), stopping after each event, after
//!   lending a [`Progress::lent`] payload (cut text, Plain credentials, cursor data … as slices of
//!   the input) and at the TLS switch point. `handle_eof()` and `handle_timeout(now)` complete the
//!   set; time is the driver's [`Instant`]. Every [`Error`] is fatal.
//! * **C. commands** — the application's decisions and messages (`accept_auth`, `server_init`,
//!   `send_password`, `request_update`, `key_event`, …). Misuse returns a [`CommandError`]
//!   (`InvalidState`, `InvalidArgument`, `QueueFull`) and changes nothing.
//! * **D. polls** — `poll_transmit(&mut [u8])`, `poll_event()`, `poll_timeout()`.
//!
//! **Drain order.** After every handler call and every command, drain `poll_transmit` until it
//! returns `None`, then `poll_event` until `None`, then read `poll_timeout`. Transmit comes first
//! so that bytes which must precede a protocol switch (the VeNCrypt sub-type ack before
//! [`server::Event::StartTls`]) are on the wire before the driver acts on the event. Then call
//! `handle_input` again with the unconsumed bytes while it makes progress.
//!
//! `poll_transmit` writes whole messages into the caller's buffer and reports
//! [`InsufficientSize`] (writing nothing) if the next message does not fit (256 bytes always
//! suffice except for Plain credentials and colour-map chunks: use 512). A [`Transmit`] may end
//! with [`AppPayload::CutText`]: the application then sends its own clipboard bytes, which the core
//! never copies.
//! (nbd-core's `poll_transmit` returns `Option<usize>`; here the length comes in a [`Transmit`]
//! because of that hand-over, and several queued messages may be written in one call.)
//!
//! An [`Error`] (always fatal) ends the connection: drain `poll_transmit` once more (RFB 3.8
//! failures carry a reason for the peer) and `poll_event` (the client reports the server's reason
//! and the offered security types there), then close.
//!
//! # Driver loop (server)
//!
//! One connection, VNC authentication, a framebuffer the application owns. After
//! `reject_auth` the server is [`server::State::Closing`]: read nothing more, but keep draining
//! and serving `poll_timeout` until [`server::Event::Closed`], or the "Authentication failed"
//! reason and the throttling delay never happen. Updates are encoded when the client asked for
//! the whole screen or something changed: an incremental request with nothing changed waits.
//! (The test below runs it against this crate's client, once with a wrong and once with the
//! right password.)
//!
//! ```
//! use rfb_core::server::{Damage, Event, MIN_ENCODE_BUFFER, Server, ServerConfig, State, UpdateSource};
//! use rfb_core::wire::{PixelFormat, Rect, SecurityType};
//! use rfb_core::{Framebuffer, Instant, verify_vnc_response};
//!
//! /// Serves one connection: `recv` reads (0: the client hung up), `send` writes, `now` is the
//! /// clock, `challenge` 16 bytes from a CSPRNG.
//! fn serve(
//!     mut recv: impl FnMut(&mut [u8]) -> usize,
//!     mut send: impl FnMut(&[u8]),
//!     mut now: impl FnMut() -> Instant,
//!     challenge: [u8; 16],
//! ) -> Result<(), Box<dyn core::error::Error>> {
//!     let config = ServerConfig::with_security(&[SecurityType::VncAuth], &[]);
//!     let mut server = Server::new(config, now(), challenge);
//!     let (w, h) = (64u16, 48u16);
//!     let pixels = vec![0u8; 64 * 48 * 4];
//!     let mut inbuf = vec![0u8; server.min_input_buffer().max(4096)];
//!     let (mut have, mut out) = (0usize, vec![0u8; MIN_ENCODE_BUFFER.max(4096)]);
//!     let mut full = false; // a non-incremental request is pending
//!     let mut changed: Option<Rect> = None; // what the application drew since the last update
//!     loop {
//!         loop {
//!             // Closing: a failure is held back or being sent; nothing more is read.
//!             let progressed = server.state() != State::Closing && {
//!                 let p = server.handle_input(&inbuf[..have])?; // every Err is fatal: close
//!                 // use p.lent (cut text chunk, Plain credentials) here, before the buffer moves
//!                 let (consumed, lent) = (p.consumed, p.lent.is_some());
//!                 inbuf.copy_within(consumed..have, 0);
//!                 have -= consumed;
//!                 consumed > 0 || lent
//!             };
//!             while let Some(t) = server.poll_transmit(&mut out)? {
//!                 send(&out[..t.len]); // (+ the app's cut text if t.then)
//!             }
//!             while let Some(e) = server.poll_event() {
//!                 match e {
//!                     Event::VncAuth { challenge, response } => {
//!                         if verify_vnc_response(b"secret", &challenge, &response) {
//!                             server.accept_auth()?;
//!                         } else {
//!                             server.reject_auth("Authentication failed")?;
//!                         }
//!                     }
//!                     Event::ClientInit { .. } => server.server_init(w, h, PixelFormat::RGB888, b"desk")?,
//!                     Event::UpdateRequested { incremental: false, .. } => full = true,
//!                     Event::Closed => return Ok(()), // everything is sent
//!                     _ => {}
//!                 }
//!                 while let Some(t) = server.poll_transmit(&mut out)? {
//!                     send(&out[..t.len]);
//!                 }
//!             }
//!             if !progressed {
//!                 break;
//!             }
//!         }
//!         if server.wants_update() && (full || changed.is_some() || server.update_in_progress()) {
//!             let fb = Framebuffer::new(&pixels, w, h, 64 * 4, PixelFormat::RGB888)?;
//!             let area = if full { Rect::new(0, 0, w, h) } else { changed.unwrap_or_default() };
//!             let damage = [Damage::Changed(area)];
//!             let src = UpdateSource::new(fb, &damage);
//!             loop {
//!                 let st = server.encode_update(&src, &mut out)?;
//!                 send(&out[..st.written]);
//!                 if st.done {
//!                     break;
//!                 }
//!             }
//!             (full, changed) = (false, None);
//!         }
//!         if let Some(t) = server.poll_timeout() {
//!             // (a real driver sleeps until `t`, or until input arrives)
//!             if now() >= t {
//!                 server.handle_timeout(now());
//!                 continue;
//!             }
//!         }
//!         if server.state() != State::Closing {
//!             let n = recv(&mut inbuf[have..]);
//!             if n == 0 {
//!                 return Ok(server.handle_eof()?);
//!             }
//!             have += n;
//!         }
//!     }
//! }
//! # use rfb_core::client::{self, Client, ClientConfig};
//! # use std::{cell::{Cell, RefCell}, rc::Rc};
//! # /// Runs `serve` against this crate's client answering with `password`: what the server
//! # /// sent, and the rectangles the client got.
//! # fn session(password: &'static [u8]) -> (Vec<u8>, usize) {
//! #     let to_client = Rc::new(RefCell::new(Vec::new()));
//! #     let mut c = Client::new(ClientConfig::with_security(&[SecurityType::VncAuth], &[]), Instant::ZERO);
//! #     let rects = Rc::new(Cell::new(0));
//! #     let (r, mut updates) = (rects.clone(), 0);
//! #     let tc = to_client.clone();
//! #     let recv = move |buf: &mut [u8]| {
//! #         let mut input = tc.borrow_mut();
//! #         let mut at = 0;
//! #         loop {
//! #             let p = c.handle_input(&input[at..]).unwrap();
//! #             at += p.consumed;
//! #             let mut ev = false;
//! #             while let Some(e) = c.poll_event() {
//! #                 ev = true;
//! #                 let act = match e {
//! #                     client::Event::NeedCredentials(_) => 1,
//! #                     client::Event::ServerInit { .. } => 2,
//! #                     client::Event::Rect { .. } => { r.set(r.get() + 1); 0 }
//! #                     client::Event::UpdateEnd => { updates += 1; 3 }
//! #                     _ => 0,
//! #                 };
//! #                 match act {
//! #                     1 => c.send_password(password).unwrap(),
//! #                     2 => c.request_update(false, Rect::new(0, 0, 64, 48)).unwrap(),
//! #                     3 if updates == 1 => c.request_update(true, Rect::new(0, 0, 64, 48)).unwrap(),
//! #                     _ => {}
//! #                 }
//! #             }
//! #             if p.consumed == 0 && !ev { break; }
//! #         }
//! #         input.drain(..at);
//! #         let mut n = 0;
//! #         while let Some(t) = c.poll_transmit(&mut buf[n..]).unwrap() { n += t.len; }
//! #         n
//! #     };
//! #     let send = |b: &[u8]| to_client.borrow_mut().extend_from_slice(b);
//! #     let clock = Cell::new(0u64);
//! #     let now = || { clock.set(clock.get() + 10_000); Instant::from_micros(clock.get()) };
//! #     serve(recv, send, now, [7; 16]).unwrap();
//! #     let sent = to_client.borrow().clone();
//! #     (sent, rects.get())
//! # }
//! # // The failed SecurityResult and its reason (RFB 3.8) are the last bytes out.
//! # let (sent, _) = session(b"wrong");
//! # assert!(sent.ends_with(b"\0\0\0\x01\0\0\0\x15Authentication failed"), "{sent:?}");
//! # // One frame for two requests, the second incremental with nothing changed.
//! # assert_eq!(session(b"secret").1, 1);
//! ```
//!
//! # TLS (VeNCrypt X509*)
//!
//! When the sub-type is agreed, the server queues the one-byte ack and emits `StartTls`; the
//! client consumes that ack and emits `StartTls`. Neither consumes a byte past that point: bytes
//! the driver already holds belong to the TLS engine (as ciphertext), never to the core. The driver
//! runs the TLS handshake and calls `tls_established()`; the client driver must validate the
//! server certificate first, and the client refuses to send any credential before that call.
//! Afterwards the same `handle_input`/`poll_transmit` calls carry TLS plaintext. Anonymous-TLS
//! sub-types (TLSNone/TLSVnc/TLSPlain) and security type 18 are parsed but never offered or
//! chosen: rustls has no anonymous cipher suites.
//!
//! # Framebuffer updates
//!
//! The server never owns pixels: [`server::Server::encode_update`] borrows the framebuffer
//! (native format and stride) and a damage list, translates to the client's pixel format and
//! encodes tile by tile straight into the caller's buffer (≥ [`server::MIN_ENCODE_BUFFER`]),
//! resuming where it stopped on the next call. The encoding follows the client's SetEncodings
//! order among Tight, TightPNG, ZRLE, Hextile, RRE and Raw; `Damage::Copied` becomes CopyRect
//! when allowed.
//! The client decodes every rectangle into a [`FramebufferMut`] the application lends to
//! [`client::Client::handle_input_fb`], clipping every write and checking every rectangle,
//! sub-rectangle, CopyRect source, cursor size and colour-map range.
//!
//! # Fuzzing
//!
//! Every parser is reachable with arbitrary bytes through the public API: feed
//! `Server::handle_input` / `Client::handle_input` (any split), the `wire::*Repr::parse`
//! functions, and the decoders through `Client::handle_input_fb` after a handshake (see
//! `fuzzing` (compiled with `--cfg fuzzing`, as cargo-fuzz sets it).
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;

#[macro_use]
mod macros;
#[macro_use]
mod parse;

pub mod auth;
mod error;
pub mod hid;
#[cfg(feature = "alloc")]
pub mod jpeg;
mod pixel;
pub mod time;
pub mod wire;
#[cfg(feature = "alloc")]
pub mod zlib;

pub use auth::{
    AuthThrottle, constant_time_eq, deobfuscate_password, obfuscate_password, verify_vnc_response,
    vnc_response,
};
pub use error::{CommandError, Error, InsufficientSize, ProtocolError};
pub use pixel::{Framebuffer, FramebufferMut, Translator};
pub use time::{Duration, Instant};

pub mod client;
mod outq;
pub mod server;
mod shared;

pub use outq::{AppPayload, Transmit};

/// What a `handle_input` call did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<P> {
    /// Bytes consumed from the front of the input; drop them before the next call.
    pub consumed: usize,
    /// Data lent from the consumed input (valid until the input buffer changes), as nbd-core's
    /// `Progress::lent`.
    pub lent: Option<P>,
}

impl<P> Progress<P> {
    pub(crate) fn new(consumed: usize, lent: Option<P>) -> Self {
        Self { consumed, lent }
    }
}

#[cfg(test)]
mod tests;

#[cfg(any(fuzzing, test))]
pub mod fuzzing;
