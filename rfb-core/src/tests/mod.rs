//! Crate tests: two-peer harness, split invariance, bad input, spec vectors.

mod harness;
mod negotiation;
mod security;
mod shared_updates;
#[cfg(feature = "alloc")]
mod tight;
mod updates;
mod wire_roundtrip;

mod fuzz_smoke {
    use proptest::prelude::*;

    /// The fuzz server harness gets through a valid session to its updates (it used to move its
    /// clock to every deadline, so the handshake timed out before the first message).
    #[test]
    fn fuzz_server_harness_reaches_updates() {
        use crate::wire::{Encoding, PixelFormat};
        for (sel, enc) in [
            (12u8, Encoding::Raw),
            (12, Encoding::Hextile),
            (12, Encoding::Rre),
        ] {
            let (c2s, _) =
                super::updates::transcript(super::harness::Auth::None, enc, PixelFormat::RGB565);
            let mut data = std::vec![sel];
            data.extend_from_slice(&c2s);
            assert_eq!(crate::fuzzing::server(&data), 1, "{enc:?}");
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: std::env::var("RFB_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512), ..ProptestConfig::default() })]
        #[test]
        fn no_panics_on_random_bytes(data in prop::collection::vec(any::<u8>(), 0..2048)) {
            crate::fuzzing::server(&data);
            crate::fuzzing::client(&data);
            crate::fuzzing::client_messages(&data);
            crate::fuzzing::rect(&data);
            crate::fuzzing::wire(&data);
        }

        /// Random bytes after a valid prefix reach deeper states.
        #[test]
        fn no_panics_after_valid_prefix(sel in any::<u8>(), tail in prop::collection::vec(any::<u8>(), 0..1024)) {
            let mut d = std::vec![sel, 12];
            d.extend_from_slice(b"RFB 003.008\n");
            d.extend_from_slice(&tail);
            crate::fuzzing::server(&d[1..]);
            let mut m = std::vec![sel];
            for chunk in tail.chunks(7) {
                // Plausible message starts to get past the type byte.
                m.push([0u8, 1, 2, 3, 150, 248][usize::from(chunk[0]) % 6]);
                m.extend_from_slice(chunk);
            }
            crate::fuzzing::client_messages(&m);
        }
    }
}
