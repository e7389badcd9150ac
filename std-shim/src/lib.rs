//! Drivers for the protocol cores on `std`: the shared step function ([`pump`]), blocking and
//! tokio loops around it, NBD backends and sessions, VNC sessions, and the pieces of the `kvmio`
//! tool.

pub mod backend;
pub mod copy;
pub mod listen;
pub mod nbd_client;
pub mod nbd_server;
pub mod pump;
pub mod serve;
pub mod serve_all;
pub mod services;
pub mod tls;
pub mod uri;
pub mod vnc_cli;
pub mod vnc_client;
pub mod vnc_desktop;
pub mod vnc_security;
pub mod vnc_server;
