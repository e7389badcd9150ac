//! VNC on std: the server session over a desktop ([`server`], [`desktop`]) built from a user's
//! settings ([`settings`]), security type names, password files and users ([`security`]), and
//! the capture client ([`client`]).

pub mod client;
pub mod desktop;
pub mod security;
pub mod server;
pub mod settings;
