//! Board support. Exactly one board is selected by a cargo feature.
//!
//! Every board module provides the same items:
//! * `run(app: fn(Spawner, Stack<'static>)) -> !`: bring up clocks, logging, time, Ethernet,
//!   the random source and the network stack, spawn the network runner, then call `app` from
//!   inside the executor;
//! * `BoardRng`: the type installed into [`crate::rng`];
//! * `NAME`: the board's name (VNC desktop name, shown on the desktop);
//! * `HEAP_SIZE`: bytes for the global allocator ([`crate::mem`]);
//! * `RX_WINDOW_BUDGET`: bytes of TCP receive window, summed over all sockets, that the NIC
//!   can absorb in one burst ([`crate::app::TCP_RX_BUF`] is derived from it).

#[cfg(all(feature = "board-mps2", feature = "board-nucleo-h743"))]
compile_error!(
    "select exactly one board: `board-mps2` is a default feature, so build the Nucleo with \
     `--no-default-features --features board-nucleo-h743`"
);
#[cfg(not(any(feature = "board-mps2", feature = "board-nucleo-h743")))]
compile_error!("select a board: feature `board-mps2` or `board-nucleo-h743`");

#[cfg(all(feature = "board-mps2", not(feature = "board-nucleo-h743")))]
mod mps2;
#[cfg(all(feature = "board-mps2", not(feature = "board-nucleo-h743")))]
pub use mps2::{BoardRng, HEAP_SIZE, NAME, RX_WINDOW_BUDGET, run};

#[cfg(all(feature = "board-nucleo-h743", not(feature = "board-mps2")))]
mod nucleo_h743;
#[cfg(all(feature = "board-nucleo-h743", not(feature = "board-mps2")))]
pub use nucleo_h743::{BoardRng, HEAP_SIZE, NAME, RX_WINDOW_BUDGET, run};
