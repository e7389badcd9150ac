//! The process-wide random source.
//!
//! The board installs its generator once at boot ([`install`]); everything else draws from it
//! through [`fill`] or the zero-sized handle [`SystemRng`], which implements `rand_core` 0.6
//! `RngCore + CryptoRng` (what RustCrypto and rustls-rustcrypto expect). A later
//! `getrandom::register_custom_getrandom!` hook can simply call [`fill`].
//!
//! **The quality is the board's:** NUCLEO-H743ZI uses the STM32 hardware TRNG; MPS2 (QEMU) has
//! no RNG at all and uses [`crate::board::BoardRng`] = `InsecureTestRng`, which is NOT secure
//! and only exists behind the `insecure-test-rng` feature for CI.

use core::cell::RefCell;
use core::num::NonZeroU32;

use critical_section::Mutex;
use rand_core::{CryptoRng, RngCore};

pub use crate::board::BoardRng;

static RNG: Mutex<RefCell<Option<BoardRng>>> = Mutex::new(RefCell::new(None));

/// No random source has been installed yet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NotReady;

/// Make `rng` the process-wide source. Replaces any previous one.
pub fn install(rng: BoardRng) {
    critical_section::with(|cs| {
        RNG.borrow_ref_mut(cs).replace(rng);
    });
}

/// Fill `dest` with random bytes from the installed source.
pub fn fill(dest: &mut [u8]) -> Result<(), NotReady> {
    critical_section::with(|cs| match RNG.borrow_ref_mut(cs).as_mut() {
        Some(rng) => {
            rng.fill_bytes(dest);
            Ok(())
        }
        None => Err(NotReady),
    })
}

/// A handle on the process-wide source, usable wherever a `RngCore + CryptoRng` is wanted.
///
/// The infallible methods panic if no source has been installed (a boot-order bug);
/// `try_fill_bytes` returns an error instead.
#[derive(Clone, Copy, Debug, Default)]
pub struct SystemRng;

impl RngCore for SystemRng {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }

    fn next_u64(&mut self) -> u64 {
        let mut b = [0; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }

    fn fill_bytes(&mut self, dest: &mut [u8]) {
        if fill(dest).is_err() {
            panic!("rng: no random source installed");
        }
    }

    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rand_core::Error> {
        fill(dest).map_err(|NotReady| {
            let code = NonZeroU32::new(rand_core::Error::CUSTOM_START).unwrap_or(NonZeroU32::MIN);
            rand_core::Error::from(code)
        })
    }
}

/// As strong as the installed board source (see the module docs: insecure on MPS2).
impl CryptoRng for SystemRng {}

/// Check that a source is installed and not obviously stuck: two 32-byte draws must differ
/// and neither may be constant.
pub fn self_test() -> Result<(), &'static str> {
    let mut a = [0u8; 32];
    let mut b = [0u8; 32];
    let mut rng = SystemRng;
    rng.try_fill_bytes(&mut a)
        .map_err(|_| "rng: no source installed")?;
    rng.try_fill_bytes(&mut b)
        .map_err(|_| "rng: no source installed")?;
    let constant = |x: &[u8; 32]| x.iter().all(|&v| v == x[0]);
    if a == b || constant(&a) || constant(&b) {
        return Err("rng: output repeats or is constant");
    }
    Ok(())
}
