//! Tests through the public API: our client against our server in memory (the two-peer
//! harness), bad input against the server byte by byte, and property tests (split invariance,
//! TLS policy).

mod harness;
mod pair;
mod props;
mod server_bytes;
