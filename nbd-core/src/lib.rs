//! Sans-IO NBD: the fixed-newstyle handshake with every option (STARTTLS, INFO/GO, LIST, meta
//! contexts, structured replies, extended headers) and the transmission phase, as a server
//! ([`server::Server`]) and a client ([`client::Client`]).
//!
//! `#![no_std]`, no allocation, no I/O, no clock, no randomness: the driver owns every buffer,
//! moves bytes, and passes the time in. The same state machines run under a blocking loop, tokio,
//! or embassy on a microcontroller.
//!
//! # Driving a state machine
//!
//! Every state machine has four kinds of methods (after quinn-proto):
//! - getters (`&self`);
//! - `handle_*` feed what happened: received bytes (`handle_input`), the end of the peer's
//!   stream (`handle_eof`), the time (`handle_timeout`);
//! - commands are the application's decisions (a reply to a request, an option to send). The
//!   ones that carry data encode straight into the buffer the caller passes;
//! - `poll_*` drain what the machine produced.
//!
//! After every `handle_*` call and every command, drain in this order: `poll_transmit` until it
//! returns `Ok(None)` (send what it wrote), then `poll_event` until `None`, then read
//! `poll_timeout` and arrange to call `handle_timeout` then.
//!
//! A machine changes phase when it handles input or a command, never while it writes output:
//! what it decided to send stays pending in `poll_transmit`, and until that is drained it reads
//! no further input (and the server gives out no events), so a driver draining in this order
//! sees each milestone after the bytes that lead to it. Each module documents its phases.
//!
//! `handle_input` reports how many bytes it consumed and may lend a piece of the input (a
//! request, or WRITE/READ data) that is valid until the next call: bulk data is never copied by
//! the core. It handles at most one message per call: call it again with the unconsumed rest
//! while it consumes or lends something. An incomplete message consumes nothing and is not an
//! error; feeding the same bytes in any split yields the same results. An `Err` from a
//! `handle_*` method is fatal (the peer violated the protocol, and where the protocol has a
//! way, it was told); a [`error::CommandError`] from a command is the application's mistake and
//! changes nothing.
//!
//! The loop, with the one rule that matters: everything the server has to say goes out before
//! the driver blocks for more input (a reply written by a `reply_*` command, and the replies the
//! core queues itself, such as errors for bad requests). `examples/ram_server.rs` is the whole
//! program (a RAM export served to nbdinfo, qemu-io and nbdcopy; CI runs it).
//!
//! ```no_run
//! # use nbd_core::{server::*, export::Export, time::Instant};
//! # fn recv(_: &mut [u8]) -> usize { 0 } fn send(_: &[u8]) {}
//! # fn carry_out(_: &mut Server<'_>, _: &Request, _: &mut [u8]) -> usize { 0 }
//! let exports = [Export::new("disk", 64 << 20)];
//! let config = ServerConfig::new(&exports);
//! let mut server = Server::new(config, Instant::ZERO).unwrap();
//! let (mut inbuf, mut outbuf) = (vec![0u8; config.input_buffer_len()], vec![0u8; 33 << 20]);
//! let (mut start, mut end) = (0, 0);
//! loop {
//!     while let Some(n) = server.poll_transmit(&mut outbuf).unwrap() { send(&outbuf[..n]); }
//!     while let Some(event) = server.poll_event() { /* StartTls, Ready, Finished, TimedOut */ }
//!     if server.is_closed() { break; }
//!     let mut progress = false;
//!     loop {
//!         let p = server.handle_input(&inbuf[start..end]).unwrap();
//!         start += p.consumed;
//!         match p.lent {
//!             // carry it out, encode the reply (e.g. server.reply_ok), send it now
//!             Some(Lent::Request(req)) => { let n = carry_out(&mut server, &req, &mut outbuf); send(&outbuf[..n]); }
//!             // pwrite(data, offset); after the last piece, reply to the WRITE
//!             Some(Lent::WriteData { offset, data, .. }) => {}
//!             None if p.consumed == 0 => break,
//!             None => {}
//!         }
//!         progress = true;
//!     }
//!     if progress { continue; } // drain what the core queued before blocking
//!     inbuf.copy_within(start..end, 0); end -= start; start = 0;
//!     end += recv(&mut inbuf[end..]);
//! }
//! ```
//!
//! # TLS
//!
//! When negotiation reaches STARTTLS, the machine emits `Event::StartTls` after producing the
//! plaintext ACK (server) or on receiving it (client) and consumes nothing further: the driver
//! sends what is pending in the clear, then puts a TLS layer between the transport and the
//! machine, handing the TLS layer every byte it already holds, and calls `tls_established`.
//! Everything negotiated before STARTTLS is forgotten. A server in [`server::TlsMode::Forced`]
//! reveals nothing about its exports before TLS; a client that requires TLS sends nothing but
//! STARTTLS in the clear and fails closed.
//!
//! # Logging
//!
//! With the `log` feature the machines log through `log`; with `defmt` through `defmt`.
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[macro_use]
mod macros;

pub mod client;
pub mod error;
pub mod export;
pub mod server;
pub mod time;
pub mod wire;

pub use error::{CommandError, Error};
pub use export::{ConfigError, Export, ExportFeatures};
pub use time::{Duration, Instant};
