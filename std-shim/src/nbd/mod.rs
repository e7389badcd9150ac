//! NBD on std: the server session over exports ([`catalog`], [`backend`]), the client session
//! and its applications ([`client`], [`copy`]), and `nbd://` URIs ([`uri`]).

pub mod backend;
pub mod catalog;
pub mod client;
pub mod copy;
pub mod server;
pub mod uri;
