//! `InsecureTestRng`: the only random source on MPS2, which has no hardware RNG.
//!
//! # NOT SECURE — for QEMU CI only
//!
//! It is xoshiro256** seeded (via SplitMix64) from timer readings: the CMSDK TIMER0 cycle
//! count and the LAN9118 free-running counter at a few points during boot, and it stirs the
//! current cycle count into its state on every request. Under QEMU those counters follow the
//! host clock, so consecutive runs differ, but the unpredictable part is a few tens of bits of
//! scheduling jitter at best, and xoshiro is not a cryptographic generator: its output reveals
//! its state. Anyone who sees some output or can estimate boot timing can predict the keys,
//! nonces and challenges made from it. It exists so the TLS/VNC code paths can run in CI; it
//! is only compiled with the feature `insecure-test-rng`, and the MPS2 board refuses to build
//! without that feature. Never ship it; real boards use a hardware TRNG.

use rand_core::{CryptoRng, RngCore};

/// Timer-seeded xoshiro256**. **Insecure, test only** (see the module docs).
#[derive(Debug)]
pub struct InsecureTestRng {
    s: [u64; 4],
}

fn splitmix64(x: &mut u64) -> u64 {
    *x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *x;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl InsecureTestRng {
    /// Build from seed material (timer readings, MAC address, …).
    pub fn from_seed_material(material: &[u64]) -> Self {
        let mut acc = 0x6A09_E667_F3BC_C908u64;
        for &m in material {
            acc ^= m;
            let _ = splitmix64(&mut acc);
        }
        let mut s = [0u64; 4];
        for word in &mut s {
            *word = splitmix64(&mut acc);
        }
        if s == [0; 4] {
            s[0] = 1; // xoshiro's one forbidden state
        }
        Self { s }
    }

    /// Mix a fresh reading into the state (keeps it away from the all-zero state).
    fn stir(&mut self, x: u64) {
        let mut m = x ^ self.s[3];
        self.s[0] ^= splitmix64(&mut m);
        if self.s == [0; 4] {
            self.s[0] = 1;
        }
    }

    fn next(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }
}

impl RngCore for InsecureTestRng {
    fn next_u32(&mut self) -> u32 {
        (self.next_u64() >> 32) as u32
    }

    fn next_u64(&mut self) -> u64 {
        self.stir(super::time::cycles());
        self.next()
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        self.stir(super::time::cycles());
        for chunk in dest.chunks_mut(8) {
            let v = self.next().to_le_bytes();
            chunk.copy_from_slice(&v[..chunk.len()]);
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

/// A lie, told on purpose so the type plugs into RustCrypto/rustls for CI: this generator is
/// NOT cryptographically secure (see the module docs).
impl CryptoRng for InsecureTestRng {}
