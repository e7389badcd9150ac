//! `embedded-demo`: the firmware that serves the protocol cores over TCP on a microcontroller.
//!
//! Layout:
//! * [`board`]: everything board-specific (clocks, Ethernet driver, time driver, executor,
//!   logging, fault handling, the random number source). One board is selected by a cargo
//!   feature: `board-mps2` (QEMU `mps2-an500`, the default) or `board-nucleo-h743`.
//! * [`app`]: board-independent services on an `embassy_net::Stack<'static>`: listeners and
//!   session slots; [`driver`]: the one Sans-IO connection driver (TCP ⇄ TLS ⇄ core) both
//!   services share; [`vnc`] + [`desktop`] + [`font`]: the VNC console (rfb-core), and
//!   `ws` (feature `wss`): the same console over WebSocket in TLS for browsers (`tls_glue::ws`);
//!   [`nbd`] + [`storage`]: the NBD virtual media (nbd-core); [`tls`]: the one set of
//!   credentials and server configuration both use.
//! * [`mem`]: stack high-water mark (stack painting) and heap accounting.
//! * [`rng`]: the process-wide random source the services draw from.
//!
//! Boot order: paint the stack, set up the heap, then hand over to the board, which brings up
//! the hardware and the network stack and calls [`app::start`] from inside the executor.

#![no_std]
#![no_main]
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs, clippy::undocumented_unsafe_blocks)]

extern crate alloc;

#[macro_use]
mod fmt;

mod app;
mod board;
mod desktop;
mod driver;
mod font;
mod mem;
mod nbd;
mod rng;
mod storage;
mod tls;
mod vnc;
#[cfg(feature = "wss")]
mod ws;

#[cortex_m_rt::entry]
fn main() -> ! {
    // Nothing may use much stack before the paint: it only covers the area below this frame.
    mem::paint_stack();
    mem::init_heap();
    board::run(app::start)
}
