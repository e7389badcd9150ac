//! Tests through the public API: our client against our server in memory (the two-peer
//! harness), bad input against the server byte by byte, property tests (split invariance,
//! TLS policy), and the rule that transitions happen on input.

mod harness;
mod pair;
mod props;
mod server_bytes;
mod transitions;
