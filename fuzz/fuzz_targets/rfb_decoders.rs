//! Every decoder (Raw, CopyRect, RRE, Hextile, ZRLE, Tight with JPEG and the pseudo-encodings)
//! on arbitrary rectangles: the same bytes as one rectangle with chosen encoding, geometry and body
//! (`rfb_core::fuzzing::rect`), as server messages after a handshake that asked for every
//! encoding (`fuzzing::client_messages`), and through every wire parser (`fuzzing::wire`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    rfb_core::fuzzing::rect(data);
    rfb_core::fuzzing::client_messages(data);
    rfb_core::fuzzing::wire(data);
});
