//! Drivers for the protocol cores on `std`: the shared step function ([`pump`]), blocking and
//! tokio loops and listeners around it ([`io`]), TLS configuration ([`tls`]), running services
//! ([`services`]), and the NBD ([`nbd`]) and VNC ([`vnc`]) sessions.

pub mod io;
pub mod nbd;
pub mod pump;
pub mod serve;
pub mod services;
pub mod tls;
pub mod vnc;
