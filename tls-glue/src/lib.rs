//! TLS for the protocol cores: rustls 0.23 *unbuffered* connections behind a Sans-IO layer,
//! plus credentials in the QEMU `tls-creds-x509` directory layout with load-time checks.
//!
//! # The layer
//!
//! ```text
//! transport (std TcpStream | tokio | embassy TcpSocket)   ⇅ ciphertext   (the driver's I/O)
//! TlsLayer                                                 handle_ciphertext / poll_transmit / encrypt
//! rfb-core / nbd-core                                      ⇅ plaintext    (handle_input / poll_transmit)
//! ```
//!
//! [`TlsLayer`] does no I/O, reads no clock and draws no randomness except through the
//! [`CryptoBackend`] and [`TimeSource`] the caller chose. No rustls type appears in this
//! crate's API, so moving to rustls 0.24 (which removes the unbuffered API) stays inside it.
//!
//! # Buffers and who owns them
//!
//! * **Receive**: the layer owns one ciphertext buffer ([`LayerOptions::rx_capacity`]; it grows
//!   to one maximum record, [`MAX_RECORD_LEN`], when a record does not fit, and during the
//!   handshake up to [`LayerOptions::rx_limit`]). The driver either reads from the socket directly
//!   into [`TlsLayer::ciphertext_buffer`] and calls [`TlsLayer::commit_ciphertext`] (no copy),
//!   or hands bytes it already holds (e.g. left over after STARTTLS) to
//!   [`TlsLayer::handle_ciphertext`], which reports how many it took.
//! * **Plaintext**: records are decrypted in place in the receive buffer by rustls and
//!   appended to one contiguous plaintext buffer, [`TlsLayer::plaintext`]. The core parses from
//!   it and reports what it used with [`TlsLayer::consume_plaintext`]; an unconsumed partial
//!   message stays at the front and new data lands right behind it (the buffer is compacted
//!   in place, it does not grow per record). Above [`LayerOptions::plaintext_limit`] the layer
//!   stops decrypting and stops taking ciphertext: that is the backpressure. With
//!   [`LayerOptions::deliver_in_place`] ([`LayerOptions::minimal`], for microcontrollers)
//!   [`TlsLayer::deliver_plaintext`] hands each record to the core straight from rustls'
//!   buffer and only the unconsumed rest is copied.
//! * **Send**: handshake, alert and ticket bytes wait in the layer for
//!   [`TlsLayer::poll_transmit`] (or zero-copy via [`TlsLayer::pending_transmit`] +
//!   [`TlsLayer::transmit_done`]). Application data goes through [`TlsLayer::encrypt`] into
//!   the driver's buffer: one call takes e.g. an NBD reply header plus 256 KiB payload and
//!   writes full 16 KiB records (prefixed by anything pending), ready to send in one write.
//!   Size it with [`TlsLayer::encrypted_len`].
//!
//! (rustls 0.23.46 itself still copies each decrypted record into a small internal `Vec`
//! and allocates one per encrypted record; that is inside rustls and out of our reach.)
//!
//! # Drain order
//!
//! After every input (`handle_ciphertext`/`commit_ciphertext`/`handle_eof`) and every command:
//! 1. send [`TlsLayer::poll_transmit`] until `None` (handshake replies, alerts);
//! 2. if the handshake is done, feed [`TlsLayer::plaintext`] to the core
//!    ([`TlsLayer::deliver_plaintext`]), then drain the core's `poll_transmit` through
//!    [`TlsLayer::encrypt`], then the core's `poll_event` and `poll_timeout`;
//! 3. read the transport again while [`TlsLayer::wants_input`].
//!
//! An `Err(TlsError)` is fatal and sticky: drain `poll_transmit` once more (an alert may be
//! queued) and close the transport.
//!
//! # Driver example
//!
//! A blocking driver running any core with the `handle_input`/`poll_transmit` shape on top of
//! the layer (the core needs no TLS code):
//!
//! ```no_run
//! # #[cfg(all(feature = "std", any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")))]
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::io::{Read, Write};
//! use tls_glue::{CredsOptions, Endpoint, TlsCreds, TlsLayer, TlsServerConfig};
//!
//! /// Stand-in for nbd-core / rfb-core.
//! struct Core;
//! impl Core {
//!     fn handle_input(&mut self, input: &[u8]) -> Result<usize, std::io::Error> { Ok(input.len()) }
//!     fn poll_transmit(&mut self, _buf: &mut [u8]) -> Option<usize> { None }
//! }
//!
//! // once per process, shared by every service and connection
//! let creds = TlsCreds::load_dir("/etc/pki/qemu", CredsOptions::system(Endpoint::Server))?;
//! let config = TlsServerConfig::new(&creds)?;
//!
//! let listener = std::net::TcpListener::bind("127.0.0.1:10809")?;
//! let (mut sock, _) = listener.accept()?;
//! let mut tls = TlsLayer::server(&config)?;
//! let mut core = Core;
//! let mut plain_out = vec![0u8; 256 * 1024 + 64];     // the core writes here
//! let mut wire_out = vec![0u8; tls.encrypted_len(plain_out.len())];
//! loop {
//!     // 1. handshake / alert bytes first
//!     while let Some(n) = tls.poll_transmit(&mut wire_out)? {
//!         sock.write_all(&wire_out[..n])?;
//!     }
//!     if tls.error().is_some() { break; }
//!     // 2. plaintext to the core, the core's output through the layer
//!     if !tls.is_handshaking() {
//!         tls.deliver_plaintext(|p| core.handle_input(p))?;
//!         while let Some(n) = core.poll_transmit(&mut plain_out) {
//!             let m = tls.encrypt(&plain_out[..n], &mut wire_out)?;
//!             sock.write_all(&wire_out[..m])?;
//!         }
//!     }
//!     // 3. more ciphertext, read straight into the layer's buffer
//!     if !tls.wants_input() { break; }
//!     let n = sock.read(tls.ciphertext_buffer())?;
//!     if n == 0 {
//!         tls.handle_eof()?;
//!         break;
//!     }
//!     tls.commit_ciphertext(n)?;
//! }
//! let n = tls.close_notify(&mut wire_out)?;
//! sock.write_all(&wire_out[..n])?;
//! # Ok(()) }
//! # #[cfg(not(all(feature = "std", any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core"))))]
//! # fn main() {}
//! ```
//!
//! # Credentials
//!
//! [`TlsCreds`] loads `ca-cert.pem`, `ca-crl.pem` (optional), `server-cert.pem` +
//! `server-key.pem` or `client-cert.pem` + `client-key.pem` from a directory
//! ([`default_dir`]: `/etc/pki/qemu`, `$HOME/.pki/qemu`) or from memory ([`CredsPem`]), and
//! checks them as QEMU's `crypto/tlscredsx509.c` does (validity, CA basic constraints, key
//! usage, key purpose, issued by a CA in `ca-cert.pem`, key matches certificate), judging key
//! usage by the key algorithm instead of demanding keyEncipherment from ECDSA/EdDSA keys.
//! Every finding is in a [`Report`]. One `TlsCreds` serves any number of configurations.
//!
//! Server side: client certificates are verified when `verify_peer` is on (the default) with
//! CRLs, and an [`Acl`] on the client's DN can refuse a valid certificate
//! ([`TlsError::AccessDenied`]). Client side: CA, CRL and host name checks, an optional client
//! certificate, and a [`ServerCertValidator`] hook, e.g. [`TrustedServers`] (pin per host).
//!
//! # For the `kvmio creds` commands
//!
//! * `kvmio creds generate DIR [--hostname H]... [--ip A]... [--client-cn CN]` maps to
//!   `generate_qemu_layout` with a `GenerateOptions` (feature `generate`); print
//!   `GeneratedFiles::client_dn` (the string for an ACL) and the server fingerprint.
//! * `kvmio creds check DIR --endpoint server|client` maps to [`check_dir`] (or
//!   [`check_dir_with`] to choose backend, clock or `verify_peer`); print the [`Report`]
//!   (one line per finding: `error: FILE: message`) and exit non-zero if
//!   [`Report::has_errors`].
//!
//! # Features
//!
//! * `std` (default): directory loading, [`SystemClock`], [`OsRandom`], [`TrustedServers`].
//! * `aws-lc-rs` (default), `ring`, `rustcrypto`: crypto backends; any combination, chosen per
//!   configuration with [`CryptoBackend`]. `rustcrypto` is pure Rust and builds for
//!   `thumbv7em-none-eabihf` without `std` (randomness from a [`RandomSource`]).
//!   `rustcrypto-core` is its smallest form (TLS 1.3 with AES-128-GCM/ChaCha20, X25519/P-256,
//!   ECDSA P-256 only), for firmware; `rustcrypto-sha384`, `rustcrypto-p384`,
//!   `rustcrypto-ed25519` and `rustcrypto-rsa` add algorithms, `rustcrypto` is all of them.
//! * `tls12` (default): allows [`TlsVersions::Tls12AndTls13`] for old peers (TLS 1.3 only
//!   unless asked).
//! * `generate`: `generate_qemu_layout`, `GenerateOptions` (rcgen).
//! * `test-support`: the `test_support` module (fuzz entry points, an old-peer client).
#![no_std]
#![forbid(unsafe_code)]
#![cfg_attr(docsrs, feature(doc_cfg))]

extern crate alloc;
#[cfg(feature = "std")]
extern crate std;

mod acl;
mod backend;
mod config;
mod creds;
mod error;
#[cfg(feature = "generate")]
mod generate;
mod layer;
pub mod link;
mod pin;
#[cfg(feature = "rustcrypto-core")]
mod rustcrypto;
#[cfg(any(feature = "test-support", fuzzing))]
pub mod test_support;
#[cfg(feature = "websocket")]
pub mod ws;
mod x509;

pub use acl::{Acl, AclFormat, AclPolicy, glob_match};
pub use backend::{CryptoBackend, FixedTime, RandomSource, TimeSource};
#[cfg(feature = "std")]
pub use backend::{OsRandom, SystemClock};
pub use config::{
    ClientOptions, ConfigError, ServerOptions, TlsClientConfig, TlsServerConfig, TlsVersions,
};
#[cfg(all(
    feature = "std",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")
))]
pub use creds::check_dir;
pub use creds::{
    CA_CERT_FILE, CA_CRL_FILE, CredsOptions, CredsPem, Diagnostic, Endpoint, Problem, Report,
    Severity, TlsCreds, check_pem,
};
#[cfg(feature = "std")]
pub use creds::{DirScope, check_dir_with, default_dir};
pub use error::{EncryptError, InsufficientSize, TlsError, alert_text};
#[cfg(feature = "generate")]
pub use generate::{
    GenerateOptions, GeneratedFiles, KeyAlgorithm, LAYOUT_FILES, generate_qemu_layout,
};
pub use layer::{
    LayerOptions, MAX_FRAGMENT_LEN, MAX_HANDSHAKE_BUFFER, MAX_RECORD_LEN, RECORD_OVERHEAD, TlsLayer,
};
pub use link::{Control, GrowingBuffer, Link, Storage, SwitchError};
#[cfg(feature = "std")]
pub use pin::{PinCheck, TrustedServers};
pub use pin::{ServerCertValidator, fingerprint_sha256, format_fingerprint};
