//! The RFB server from the first byte on: `data[0]` picks the security configuration and RFB
//! version (`rfb_core::fuzzing::server`), the rest is what a client sends, cut into pieces
//! sized by its first byte. Authentication, ServerInit, updates (every encoding the client
//! asks for) and desktop-size replies are answered, so every state is reachable.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rfb_core::fuzzing::server(data);
});
