//! Arbitrary bytes from a peer into a server and a client `tls_glue::ws::WebSocket` (the layer
//! under a browser's VNC console), cut at sizes from the first byte, then EOF
//! (`tls_glue::test_support::fuzz_websocket`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| tls_glue::test_support::fuzz_websocket(data));
