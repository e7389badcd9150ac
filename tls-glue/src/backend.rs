//! Crypto providers, clock and randomness: everything the platform supplies.

use alloc::sync::Arc;
use core::fmt;

use rustls::crypto::CryptoProvider;

/// A wall clock. The layer never reads a clock by itself: certificates are checked against
/// this source (on `std`, [`SystemClock`]; on a microcontroller, an RTC or a time from NTP).
pub trait TimeSource: fmt::Debug + Send + Sync {
    /// Seconds since the Unix epoch, or `None` if the time is not known (certificate
    /// validation then fails, closed).
    fn unix_time(&self) -> Option<u64>;
}

/// A cryptographically secure random source (e.g. the STM32 RNG peripheral).
pub trait RandomSource: fmt::Debug + Send + Sync {
    /// Fills `buf` with random bytes. Returns `Err(())` on a hardware failure.
    #[allow(clippy::result_unit_err)]
    fn fill(&self, buf: &mut [u8]) -> Result<(), ()>;
}

/// The system clock (`std`).
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemClock;

#[cfg(feature = "std")]
impl TimeSource for SystemClock {
    fn unix_time(&self) -> Option<u64> {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .ok()
            .map(|d| d.as_secs())
    }
}

/// A fixed time, for tests and for checks "as of" a date.
#[derive(Debug, Clone, Copy)]
pub struct FixedTime(pub u64);

impl TimeSource for FixedTime {
    fn unix_time(&self) -> Option<u64> {
        Some(self.0)
    }
}

/// The operating system's random generator (`std`, via `getrandom`).
#[cfg(feature = "std")]
#[derive(Debug, Clone, Copy, Default)]
pub struct OsRandom;

#[cfg(feature = "std")]
impl RandomSource for OsRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), ()> {
        getrandom::fill(buf).map_err(|_| ())
    }
}

#[derive(Debug)]
pub(crate) struct RustlsTime(pub(crate) Arc<dyn TimeSource>);

impl rustls::time_provider::TimeProvider for RustlsTime {
    fn current_time(&self) -> Option<pki_types::UnixTime> {
        self.0
            .unix_time()
            .map(|s| pki_types::UnixTime::since_unix_epoch(core::time::Duration::from_secs(s)))
    }
}

/// Which crypto implementation a configuration uses. Several can be compiled in; nothing
/// is installed process-wide, every configuration names its backend explicitly.
#[derive(Clone)]
pub struct CryptoBackend {
    pub(crate) provider: Arc<CryptoProvider>,
    name: &'static str,
}

impl fmt::Debug for CryptoBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CryptoBackend")
            .field("name", &self.name)
            .finish()
    }
}

impl CryptoBackend {
    /// aws-lc-rs, with the post-quantum hybrid group X25519MLKEM768 offered first, then
    /// X25519, P-256 and P-384.
    #[cfg(feature = "aws-lc-rs")]
    pub fn aws_lc_rs() -> Self {
        use rustls::crypto::aws_lc_rs::{self as a, kx_group as k};
        let mut p = a::default_provider();
        p.kx_groups = alloc::vec![k::X25519MLKEM768, k::X25519, k::SECP256R1, k::SECP384R1];
        Self {
            provider: Arc::new(p),
            name: "aws-lc-rs",
        }
    }

    /// *ring*.
    #[cfg(feature = "ring")]
    pub fn ring() -> Self {
        Self {
            provider: Arc::new(rustls::crypto::ring::default_provider()),
            name: "ring",
        }
    }

    /// The in-tree RustCrypto provider (pure Rust, builds for microcontrollers), drawing
    /// randomness from `rng`. Suites: TLS 1.3 AES-128/256-GCM and ChaCha20-Poly1305 (and the
    /// ECDHE TLS 1.2 equivalents); groups X25519, P-256, P-384; verifies ECDSA P-256/P-384,
    /// Ed25519 and RSA (PKCS#1 v1.5, PSS); signs with ECDSA P-256/P-384, Ed25519 and RSA.
    ///
    /// Each call leaks one small allocation (rustls wants `'static` RNG and key-exchange
    /// objects): create the backend once at start-up and clone it.
    #[cfg(feature = "rustcrypto-core")]
    pub fn rustcrypto(rng: Arc<dyn RandomSource>) -> Self {
        Self {
            provider: Arc::new(crate::rustcrypto::provider(rng)),
            name: "rustcrypto",
        }
    }

    /// The best backend compiled in: aws-lc-rs, else ring, else RustCrypto with the
    /// operating system's randomness.
    #[cfg(all(
        feature = "std",
        any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")
    ))]
    pub fn platform_default() -> Self {
        #[cfg(feature = "aws-lc-rs")]
        return Self::aws_lc_rs();
        #[cfg(all(not(feature = "aws-lc-rs"), feature = "ring"))]
        return Self::ring();
        #[cfg(all(not(feature = "aws-lc-rs"), not(feature = "ring")))]
        return Self::rustcrypto(Arc::new(OsRandom));
    }

    /// The backend's name: `aws-lc-rs`, `ring` or `rustcrypto`.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// Verifies `signature` over `message` made by the key in the certificate's SPKI, if the
    /// backend knows the algorithm pair. `None` means "unsupported algorithm".
    pub(crate) fn verify_signed(
        &self,
        spki_alg: &[u8],
        public_key: &[u8],
        sig_alg: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Option<bool> {
        let algs = self.provider.signature_verification_algorithms.all;
        let mut found = false;
        for alg in algs {
            if alg.public_key_alg_id().as_ref() == spki_alg
                && alg.signature_alg_id().as_ref() == sig_alg
            {
                found = true;
                if alg.verify_signature(public_key, message, signature).is_ok() {
                    return Some(true);
                }
            }
        }
        if found { Some(false) } else { None }
    }
}
