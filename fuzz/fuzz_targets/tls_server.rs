//! Arbitrary bytes as ciphertext into a server `TlsLayer` (the layer the VNC and NBD servers
//! put on a connection after VeNCrypt or STARTTLS), cut at sizes from the first byte, then
//! EOF (`tls_glue::test_support::fuzz_server`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tls_glue::test_support::fuzz_server(data));
