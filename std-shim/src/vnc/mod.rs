//! VNC on std: the server session over a desktop ([`server`], [`desktop`]) built from a user's
//! settings ([`settings`]), security type names, password files and users ([`security`]), and
//! the capture client ([`client`]); who may watch at once ([`sharing`]); which JPEG compressor
//! Tight viewers get ([`jpeg`]).

pub mod client;
pub mod desktop;
pub mod jpeg;
pub mod security;
pub mod server;
pub mod settings;
pub mod sharing;
