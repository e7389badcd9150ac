//! VNC on std: the server session over a desktop ([`server`], [`desktop`]), security type
//! names, password files and users ([`security`]), and the capture client ([`client`]).

pub mod cli;
pub mod client;
pub mod desktop;
pub mod security;
pub mod server;
