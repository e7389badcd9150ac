//! Drivers for the protocol cores on `std`: the shared step function ([`pump`]), blocking and
//! tokio loops around it, NBD backends and sessions, and the pieces of the `kvmio` tool.

pub mod backend;
pub mod nbd_server;
pub mod pump;
pub mod serve;
