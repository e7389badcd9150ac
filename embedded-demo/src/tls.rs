//! TLS for both services: ONE [`TlsCreds`] and ONE [`TlsServerConfig`], made once at boot
//! from the credentials compiled in (see `build.rs`, `KVMIO_CREDS`), shared by VNC and NBD.
//!
//! * Crypto: tls-glue's RustCrypto provider; randomness from [`crate::rng`] (the board's
//!   source: the STM32 TRNG, or on MPS2 the insecure test generator).
//! * Clock: the build time (`KVMIO_BUILD_UNIX_TIME`, set by `build.rs` from
//!   `SOURCE_DATE_EPOCH` or the build host's clock) plus the uptime. Certificates are checked
//!   against it, so they must be valid at build time and stay valid while the board runs.
//!   A board with an RTC or NTP would plug its clock in here instead.
//! * Client certificates are required and verified (`verify_peer`, QEMU's default).
//! * Memory: each live session holds a [`TlsLayer`] on the heap. [`Permit`] bounds how many
//!   exist at once and checks that the heap has room for one more, so a connection beyond
//!   what the heap holds is refused instead of exhausting it.

use alloc::sync::Arc;
use core::sync::atomic::{AtomicUsize, Ordering};

use embassy_sync::once_lock::OnceLock;
use tls_glue::{
    CredsOptions, CredsPem, CryptoBackend, Endpoint, LayerOptions, RandomSource, Severity,
    TimeSource, TlsCreds, TlsError, TlsLayer, TlsServerConfig,
};

static CA_CERT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/creds/ca-cert.pem"));
static CA_CRL: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/creds/ca-crl.pem"));
static SERVER_CERT: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/creds/server-cert.pem"));
static SERVER_KEY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/creds/server-key.pem"));

/// Unix time of the build (seconds): the wall clock starts here at boot.
pub const BUILD_UNIX_TIME: u64 = parse_u64(env!("KVMIO_BUILD_UNIX_TIME"));

const fn parse_u64(s: &str) -> u64 {
    let b = s.as_bytes();
    let mut v = 0u64;
    let mut i = 0;
    while i < b.len() {
        assert!(
            b[i].is_ascii_digit(),
            "KVMIO_BUILD_UNIX_TIME is not a number"
        );
        v = v * 10 + (b[i] - b'0') as u64;
        i += 1;
    }
    v
}

/// Most TLS sessions alive at once (each needs [`SESSION_HEAP`] of heap).
pub const MAX_SESSIONS: usize = 2;
/// Heap one TLS session may need at its peak (record buffers, rustls state, handshake
/// messages); a new session starts only if this much is free.
pub const SESSION_HEAP: usize = 56 * 1024;

/// The wall clock: build time + uptime.
#[derive(Debug)]
struct BoardClock;

impl TimeSource for BoardClock {
    fn unix_time(&self) -> Option<u64> {
        Some(BUILD_UNIX_TIME + embassy_time::Instant::now().as_secs())
    }
}

/// The board's random source.
#[derive(Debug)]
struct BoardRandom;

impl RandomSource for BoardRandom {
    fn fill(&self, buf: &mut [u8]) -> Result<(), ()> {
        crate::rng::fill(buf).map_err(|_| ())
    }
}

static CONFIG: OnceLock<TlsServerConfig> = OnceLock::new();

/// Loads the compiled-in credentials and builds the shared server configuration. Call once
/// at boot; returns false (after logging every finding) if the credentials are unusable.
pub fn init() -> bool {
    let backend = CryptoBackend::rustcrypto(Arc::new(BoardRandom));
    let opts = CredsOptions::new(Endpoint::Server, backend, Arc::new(BoardClock));
    let pem = CredsPem {
        ca_cert: Some(CA_CERT),
        ca_crl: (!CA_CRL.is_empty()).then_some(CA_CRL),
        cert: Some(SERVER_CERT),
        key: Some(SERVER_KEY),
    };
    let creds = match TlsCreds::from_pem(&pem, opts) {
        Ok(c) => c,
        Err(report) => {
            for d in &report.diagnostics {
                error!("tls creds: {}: {}", d.file.as_str(), d.message.as_str());
            }
            return false;
        }
    };
    for d in &creds.report().diagnostics {
        if d.severity == Severity::Warning {
            warn!("tls creds: {}: {}", d.file.as_str(), d.message.as_str());
        }
    }
    let config = match TlsServerConfig::new(&creds) {
        Ok(c) => c,
        Err(e) => {
            error!("tls config: {}", e.0.as_str());
            return false;
        }
    };
    if let Some(dn) = creds.subject_dn() {
        info!(
            "tls: server certificate {}, client certificates required, clock {} + uptime",
            dn.as_str(),
            BUILD_UNIX_TIME
        );
    }
    CONFIG.init(config).is_ok()
}

/// A new server-side TLS layer on the shared configuration (`None`: not initialised).
pub fn new_layer(opts: LayerOptions) -> Option<TlsLayer> {
    let config = CONFIG.try_get()?;
    TlsLayer::server_with(config, opts).ok()
}

static LIVE: AtomicUsize = AtomicUsize::new(0);

/// A reservation for one TLS session; released on drop.
#[derive(Debug)]
pub struct Permit(());

impl Permit {
    /// Reserves a TLS session if fewer than [`MAX_SESSIONS`] are live and the heap has
    /// [`SESSION_HEAP`] bytes free.
    pub fn acquire() -> Option<Self> {
        if crate::mem::heap_free() < SESSION_HEAP {
            warn!(
                "tls: refusing a session: {} bytes of heap free, {} needed",
                crate::mem::heap_free(),
                SESSION_HEAP
            );
            return None;
        }
        LIVE.fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
            (n < MAX_SESSIONS).then_some(n + 1)
        })
        .map_err(|_| warn!("tls: refusing a session: {} already live", MAX_SESSIONS))
        .ok()
        .map(|_| Permit(()))
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        LIVE.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A short description of a TLS failure for the log.
pub fn error_str(e: TlsError) -> &'static str {
    match e {
        TlsError::UnknownCa => "tls: client certificate not issued by our CA",
        TlsError::BadCertificate => "tls: bad client certificate",
        TlsError::Expired => "tls: certificate expired (check the build-time clock)",
        TlsError::NotYetValid => "tls: certificate not valid yet (check the build-time clock)",
        TlsError::Revoked => "tls: client certificate revoked",
        TlsError::WrongPurpose => "tls: certificate not for this purpose",
        TlsError::NoPeerCertificate => "tls: client sent no certificate",
        TlsError::AccessDenied => "tls: client not allowed",
        TlsError::PeerAlert(_) => "tls: peer sent an alert",
        TlsError::ClosedDuringHandshake => "tls: peer closed during the handshake",
        TlsError::UnexpectedEof => "tls: peer closed without close_notify",
        TlsError::NoCommonParameters => "tls: no common parameters",
        TlsError::Protocol => "tls: protocol violation",
        TlsError::Decrypt => "tls: record failed authentication",
        TlsError::PlaintextBufferFull => "tls: plaintext buffer full",
        TlsError::Internal => "tls: internal error",
        _ => "tls: failure",
    }
}
