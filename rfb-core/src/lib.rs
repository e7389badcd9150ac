//! Sans-IO RFB (VNC) protocol core.
#![cfg_attr(not(test), no_std)]
#![forbid(unsafe_code)]

#[cfg(feature = "alloc")]
extern crate alloc;
// `arbitrary` derives name `std` paths; fuzzing builds run on a host with std.
#[cfg(feature = "arbitrary")]
extern crate std;

#[macro_use]
mod macros;

pub mod auth;
mod error;
mod pixel;
pub mod time;
pub mod wire;

pub use auth::{AuthThrottle, constant_time_eq, verify_vnc_response, vnc_response};
pub use error::{Error, InsufficientSize, ProtocolError};
pub use pixel::{Framebuffer, FramebufferMut, Translator};
pub use time::{Duration, Instant};

mod outq;
pub mod client;
pub mod server;

pub use outq::{AppPayload, Transmit};

/// What a `handle_input` call did.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress<P> {
    /// Bytes consumed from the front of the input; drop them before the next call.
    pub consumed: usize,
    /// Data lent from the consumed input (valid until the input buffer changes).
    pub payload: Option<P>,
}

impl<P> Progress<P> {
    pub(crate) fn new(consumed: usize, payload: Option<P>) -> Self {
        Self { consumed, payload }
    }
}

#[cfg(test)]
mod tests;
