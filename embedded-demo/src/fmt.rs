//! Logging macros that map to `log` (MPS2: plain text on UART0) or `defmt` (Nucleo: RTT).
//!
//! Use only `{}` and `{:?}` placeholders with integers, `&str`, `bool` and types that
//! implement both `Debug` and `defmt::Format` (the embassy types do with the `defmt` feature),
//! so the same call compiles for both boards.

#[cfg(feature = "board-nucleo-h743")]
macro_rules! info { ($($t:tt)*) => { ::defmt::info!($($t)*) }; }
#[cfg(feature = "board-nucleo-h743")]
macro_rules! warn { ($($t:tt)*) => { ::defmt::warn!($($t)*) }; }
#[cfg(feature = "board-nucleo-h743")]
macro_rules! error { ($($t:tt)*) => { ::defmt::error!($($t)*) }; }

#[cfg(not(feature = "board-nucleo-h743"))]
macro_rules! info { ($($t:tt)*) => { ::log::info!($($t)*) }; }
#[cfg(not(feature = "board-nucleo-h743"))]
macro_rules! warn { ($($t:tt)*) => { ::log::warn!($($t)*) }; }
#[cfg(not(feature = "board-nucleo-h743"))]
macro_rules! error { ($($t:tt)*) => { ::log::error!($($t)*) }; }
