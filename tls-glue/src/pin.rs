//! Client-side acceptance of server certificates after chain validation: the validator hook
//! (libvirt's `virConnectCertificateValidator`) and a ready trust-on-first-use store.

use alloc::string::String;
use core::fmt;
use core::fmt::Write as _;

use sha2::Digest;

/// Decides, after the certificate chain and host name were validated against the CA, whether
/// to accept a server certificate. Called once per full handshake.
pub trait ServerCertValidator: fmt::Debug + Send + Sync {
    /// `host` is the name the client connected to; `leaf_der` the server's certificate.
    /// Return `false` to abort the handshake ([`TlsError::CertificateRejected`](crate::TlsError::CertificateRejected)).
    fn accept(&self, host: &str, leaf_der: &[u8]) -> bool;
}

/// SHA-256 of a certificate's DER.
pub fn fingerprint_sha256(der: &[u8]) -> [u8; 32] {
    sha2::Sha256::digest(der).into()
}

/// `AB:CD:…` (upper-case hex, colon separated), as certtool and openssl print fingerprints.
pub fn format_fingerprint(fp: &[u8]) -> String {
    let mut s = String::with_capacity(fp.len() * 3);
    for (i, b) in fp.iter().enumerate() {
        if i > 0 {
            s.push(':');
        }
        let _ = write!(s, "{b:02X}");
    }
    s
}

#[cfg(feature = "std")]
pub use store::{PinCheck, TrustedServers};

#[cfg(feature = "std")]
mod store {
    use super::*;
    use std::path::{Path, PathBuf};
    use std::string::ToString;
    use std::sync::Mutex;

    /// What [`TrustedServers::check`] found.
    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum PinCheck {
        /// Same certificate as pinned.
        Match,
        /// No pin existed; this one was stored (trust on first use).
        Pinned([u8; 32]),
        /// No pin exists and trust on first use is off.
        Unknown([u8; 32]),
        /// The server presents a different certificate than the pinned one.
        Mismatch {
            /// Fingerprint on file.
            pinned: [u8; 32],
            /// Fingerprint presented now.
            presented: [u8; 32],
            /// The pin file to remove if the change is legitimate.
            file: PathBuf,
        },
        /// The store could not be read or written (the certificate is refused).
        StoreError(String),
    }

    /// Pins each server's leaf certificate (SHA-256 of its DER) per host name, one file per
    /// host in a directory (`<dir>/<host>.sha256`). The pin is an additional check after CA
    /// validation, never a trust anchor: a pinned certificate cannot vouch for another host
    /// (TigerVNC CVE-2020-26117 stored exceptions as CAs).
    #[derive(Debug)]
    pub struct TrustedServers {
        dir: PathBuf,
        tofu: bool,
        lock: Mutex<()>,
    }

    impl TrustedServers {
        /// Opens (creating if needed) a store; trust on first use is on.
        pub fn open(dir: impl AsRef<Path>) -> std::io::Result<Self> {
            std::fs::create_dir_all(dir.as_ref())?;
            Ok(Self {
                dir: dir.as_ref().to_path_buf(),
                tofu: true,
                lock: Mutex::new(()),
            })
        }

        /// `$HOME/.pki/qemu/trusted-servers` (next to the per-user credentials).
        pub fn default_dir() -> Option<PathBuf> {
            crate::creds::default_dir(crate::creds::DirScope::User)
                .map(|d| d.join("trusted-servers"))
        }

        /// With `false`, unknown hosts are refused instead of pinned (pre-provisioned pins only).
        pub fn trust_on_first_use(mut self, on: bool) -> Self {
            self.tofu = on;
            self
        }

        /// The pin file of `host`. Anything outside `[A-Za-z0-9.-]` is hex-escaped, so a
        /// host name cannot leave the directory.
        pub fn pin_file(&self, host: &str) -> PathBuf {
            let mut name = String::new();
            for b in host.bytes() {
                if b.is_ascii_alphanumeric() || b == b'-' || (b == b'.' && !name.is_empty()) {
                    name.push(char::from(b));
                } else {
                    let _ = write!(name, "_{b:02x}");
                }
            }
            self.dir.join(name + ".sha256")
        }

        /// The pinned fingerprint of `host`, if any.
        pub fn pinned(&self, host: &str) -> std::io::Result<Option<[u8; 32]>> {
            match std::fs::read_to_string(self.pin_file(host)) {
                Ok(s) => parse_fp(s.trim()).map(Some).ok_or_else(|| {
                    std::io::Error::new(std::io::ErrorKind::InvalidData, "malformed pin file")
                }),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
                Err(e) => Err(e),
            }
        }

        /// Stores (replaces) the pin of `host`.
        pub fn pin(&self, host: &str, fp: &[u8; 32]) -> std::io::Result<()> {
            let path = self.pin_file(host);
            let tmp = path.with_extension("tmp");
            std::fs::write(&tmp, format_fingerprint(fp) + "\n")?;
            std::fs::rename(&tmp, &path)
        }

        /// Removes the pin of `host` (after a legitimate certificate change).
        pub fn forget(&self, host: &str) -> std::io::Result<()> {
            match std::fs::remove_file(self.pin_file(host)) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            }
        }

        /// Compares `leaf_der` with the pin of `host`, pinning it on first use.
        pub fn check(&self, host: &str, leaf_der: &[u8]) -> PinCheck {
            let _guard = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let presented = fingerprint_sha256(leaf_der);
            match self.pinned(host) {
                Ok(Some(p)) if p == presented => PinCheck::Match,
                Ok(Some(pinned)) => PinCheck::Mismatch {
                    pinned,
                    presented,
                    file: self.pin_file(host),
                },
                Ok(None) if !self.tofu => PinCheck::Unknown(presented),
                Ok(None) => match self.pin(host, &presented) {
                    Ok(()) => PinCheck::Pinned(presented),
                    Err(e) => PinCheck::StoreError(e.to_string()),
                },
                Err(e) => PinCheck::StoreError(e.to_string()),
            }
        }
    }

    fn parse_fp(s: &str) -> Option<[u8; 32]> {
        let hex: String = s.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(out)
    }

    impl ServerCertValidator for TrustedServers {
        fn accept(&self, host: &str, leaf_der: &[u8]) -> bool {
            matches!(
                self.check(host, leaf_der),
                PinCheck::Match | PinCheck::Pinned(_)
            )
        }
    }
}
