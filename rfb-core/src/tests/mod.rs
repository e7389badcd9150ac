//! Crate tests: two-peer harness, split invariance, bad input, spec vectors.

extern crate std;

mod harness;
mod negotiation;
mod security;
mod updates;
mod wire_roundtrip;
