//! The RFB client from the first byte on: `data[0]` picks the security configuration and
//! version, the rest is what a server sends; rectangles are decoded into a 32 × 32
//! framebuffer (`rfb_core::fuzzing::client`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| rfb_core::fuzzing::client(data));
