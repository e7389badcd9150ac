//! Errors of the TLS layer: small `Copy` enums with messages an administrator can act on.

use core::fmt;

/// The output buffer was too small; nothing was written. Retry with at least `required` bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct InsufficientSize {
    /// Bytes needed for the pending output.
    pub required: usize,
}

impl fmt::Display for InsufficientSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "output buffer too small: {} bytes required",
            self.required
        )
    }
}

impl core::error::Error for InsufficientSize {}

/// A fatal TLS failure. Once a [`TlsLayer`](crate::TlsLayer) returned one, every later call
/// returns it again; drain [`poll_transmit`](crate::TlsLayer::poll_transmit) (an alert may be
/// queued for the peer), then close the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum TlsError {
    /// The peer's certificate chain does not lead to a CA in `ca-cert.pem` (unknown issuer,
    /// bad signature, or an incomplete chain).
    UnknownCa,
    /// The peer's certificate is malformed or uses an unsupported algorithm or critical extension.
    BadCertificate,
    /// The peer's certificate (or one in its chain) has expired.
    Expired,
    /// The peer's certificate (or one in its chain) is not valid yet (check both clocks).
    NotYetValid,
    /// The peer's certificate is listed in the CA's revocation list (`ca-crl.pem`).
    Revoked,
    /// The server certificate is not valid for the host name or IP address we connected to.
    HostnameMismatch,
    /// The peer's certificate is not allowed for this use (extended key purpose).
    WrongPurpose,
    /// The server requires client certificates (`verify-peer`) and the client sent none.
    NoPeerCertificate,
    /// The client certificate is valid, but its distinguished name is not in the access list.
    AccessDenied,
    /// The server certificate passed CA validation, but the application's validator refused it
    /// (with [`TrustedServers`](crate::TrustedServers): it differs from the pinned certificate).
    CertificateRejected,
    /// The peer aborted with this TLS alert (RFC 8446 §6 code); usually it rejected us.
    PeerAlert(u8),
    /// The transport closed before the TLS handshake completed.
    ClosedDuringHandshake,
    /// The transport closed without a TLS `close_notify` (possible truncation).
    UnexpectedEof,
    /// No common TLS version, cipher suite, key exchange group or signature scheme.
    NoCommonParameters,
    /// The peer violated the TLS protocol (malformed or unexpected messages).
    Protocol,
    /// A record failed authentication (corrupted or forged data).
    Decrypt,
    /// The protocol core left more plaintext unconsumed than the configured limit.
    PlaintextBufferFull,
    /// The crypto backend failed (no randomness, no clock, exhausted keys, …).
    Internal,
}

impl TlsError {
    /// Whether the failure concerns a certificate (either side's).
    pub fn is_certificate_problem(self) -> bool {
        matches!(
            self,
            TlsError::UnknownCa
                | TlsError::BadCertificate
                | TlsError::Expired
                | TlsError::NotYetValid
                | TlsError::Revoked
                | TlsError::HostnameMismatch
                | TlsError::WrongPurpose
                | TlsError::NoPeerCertificate
                | TlsError::AccessDenied
                | TlsError::CertificateRejected
        )
    }
}

/// Name and explanation of a TLS alert code.
pub fn alert_text(code: u8) -> (&'static str, &'static str) {
    match code {
        0 => ("close_notify", "the peer closed the connection"),
        10 => (
            "unexpected_message",
            "the peer got a message it did not expect",
        ),
        20 => ("bad_record_mac", "the peer could not authenticate our data"),
        22 => ("record_overflow", "a record was too large for the peer"),
        40 => (
            "handshake_failure",
            "the peer found no acceptable parameters or refused the handshake",
        ),
        42 => ("bad_certificate", "the peer rejected our certificate"),
        43 => (
            "unsupported_certificate",
            "the peer does not support our certificate's type",
        ),
        44 => (
            "certificate_revoked",
            "the peer says our certificate is revoked",
        ),
        45 => (
            "certificate_expired",
            "the peer says our certificate has expired (or its clock is wrong)",
        ),
        46 => (
            "certificate_unknown",
            "the peer could not validate our certificate",
        ),
        47 => (
            "illegal_parameter",
            "the peer got an invalid handshake field",
        ),
        48 => (
            "unknown_ca",
            "the peer does not trust the CA that issued our certificate: compare both sides' ca-cert.pem",
        ),
        49 => (
            "access_denied",
            "the peer denied access: our certificate's distinguished name is not in its access list",
        ),
        50 => ("decode_error", "the peer could not decode a message"),
        51 => (
            "decrypt_error",
            "a handshake signature or Finished check failed at the peer",
        ),
        70 => (
            "protocol_version",
            "the peer does not accept our TLS versions (allow TLS 1.2 for old peers?)",
        ),
        71 => (
            "insufficient_security",
            "the peer wants stronger parameters",
        ),
        80 => ("internal_error", "the peer had an internal error"),
        86 => (
            "inappropriate_fallback",
            "the peer detected a version downgrade",
        ),
        90 => ("user_canceled", "the peer canceled the handshake"),
        109 => (
            "missing_extension",
            "the peer needs a TLS extension we did not send",
        ),
        110 => (
            "unsupported_extension",
            "the peer got an extension it did not ask for",
        ),
        112 => (
            "unrecognized_name",
            "the peer does not serve the host name we asked for",
        ),
        116 => (
            "certificate_required",
            "the server requires a client certificate: provide client-cert.pem and client-key.pem",
        ),
        120 => ("no_application_protocol", "no common application protocol"),
        _ => ("unknown alert", "the peer aborted the connection"),
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            TlsError::UnknownCa => {
                "the peer's certificate was not issued by a trusted CA (check that both sides use the same ca-cert.pem and that the peer sends its intermediate certificates)"
            }
            TlsError::BadCertificate => {
                "the peer's certificate is malformed or uses an unsupported algorithm or critical extension"
            }
            TlsError::Expired => {
                "the peer's certificate has expired: issue a new one (or check this machine's clock)"
            }
            TlsError::NotYetValid => {
                "the peer's certificate is not valid yet: check the clocks of both machines"
            }
            TlsError::Revoked => "the peer's certificate has been revoked (listed in ca-crl.pem)",
            TlsError::HostnameMismatch => {
                "the server certificate does not name the host we connected to: add it to the certificate's subject alternative names (dns_name / ip_address) or connect with a listed name"
            }
            TlsError::WrongPurpose => {
                "the peer's certificate is not issued for this use: a server needs extended key purpose serverAuth (tls_www_server), a client clientAuth (tls_www_client)"
            }
            TlsError::NoPeerCertificate => {
                "the client sent no certificate, but this server requires one (verify-peer is on): give the client client-cert.pem and client-key.pem, or turn verify-peer off"
            }
            TlsError::AccessDenied => {
                "the client certificate is valid, but its distinguished name is not in the access list (tls-authz)"
            }
            TlsError::CertificateRejected => {
                "the server certificate is valid for the CA and host name, but the application refused it (with a trusted-servers store: it differs from the certificate pinned for this host; remove the host's pin only if the change is legitimate)"
            }
            TlsError::PeerAlert(code) => {
                let (name, why) = alert_text(*code);
                return write!(f, "the peer sent TLS alert {name} ({code}): {why}");
            }
            TlsError::ClosedDuringHandshake => {
                "the connection closed during the TLS handshake (the peer may have rejected our certificate or does not speak TLS here)"
            }
            TlsError::UnexpectedEof => "the connection closed without a TLS close_notify",
            TlsError::NoCommonParameters => {
                "no common TLS version, cipher suite or key type with the peer (allow TLS 1.2 for old peers?)"
            }
            TlsError::Protocol => "the peer violated the TLS protocol",
            TlsError::Decrypt => "a TLS record failed authentication (corrupted or forged data)",
            TlsError::PlaintextBufferFull => {
                "the protocol core did not consume decrypted data and the buffer limit was reached"
            }
            TlsError::Internal => "internal TLS failure (randomness, clock or crypto backend)",
        };
        f.write_str(s)
    }
}

impl core::error::Error for TlsError {}

/// Why [`TlsLayer::encrypt`](crate::TlsLayer::encrypt) or
/// [`TlsLayer::close_notify`](crate::TlsLayer::close_notify) wrote nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EncryptError {
    /// `out` is too small; nothing was written (not fatal).
    InsufficientSize(InsufficientSize),
    /// The handshake has not completed yet (not fatal; misuse).
    HandshakeNotComplete,
    /// We already sent `close_notify` (misuse).
    Closed,
    /// The connection failed.
    Failed(TlsError),
}

impl fmt::Display for EncryptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EncryptError::InsufficientSize(s) => s.fmt(f),
            EncryptError::HandshakeNotComplete => f.write_str("the TLS handshake is not complete"),
            EncryptError::Closed => f.write_str("close_notify was already sent"),
            EncryptError::Failed(e) => e.fmt(f),
        }
    }
}

impl core::error::Error for EncryptError {}

impl From<TlsError> for EncryptError {
    fn from(e: TlsError) -> Self {
        EncryptError::Failed(e)
    }
}

/// Maps a rustls error to ours. `server` tells which side detected it.
pub(crate) fn map_rustls(e: &rustls::Error, server: bool) -> TlsError {
    use rustls::{CertificateError as C, Error as E};
    match e {
        E::InvalidCertificate(c) => match c {
            C::Expired | C::ExpiredContext { .. } => TlsError::Expired,
            C::NotValidYet | C::NotValidYetContext { .. } => TlsError::NotYetValid,
            C::Revoked => TlsError::Revoked,
            C::NotValidForName | C::NotValidForNameContext { .. } => TlsError::HostnameMismatch,
            C::InvalidPurpose | C::InvalidPurposeContext { .. } => TlsError::WrongPurpose,
            C::UnknownIssuer | C::BadSignature | C::UnknownRevocationStatus => TlsError::UnknownCa,
            // Only our verifiers return this: the server's ACL, the client's validator.
            C::ApplicationVerificationFailure if server => TlsError::AccessDenied,
            C::ApplicationVerificationFailure => TlsError::CertificateRejected,
            _ => TlsError::BadCertificate,
        },
        E::NoCertificatesPresented => TlsError::NoPeerCertificate,
        E::AlertReceived(a) => TlsError::PeerAlert(u8::from(*a)),
        E::DecryptError => TlsError::Decrypt,
        E::PeerIncompatible(_) => TlsError::NoCommonParameters,
        E::InappropriateMessage { .. }
        | E::InappropriateHandshakeMessage { .. }
        | E::InvalidMessage(_)
        | E::PeerMisbehaved(_)
        | E::PeerSentOversizedRecord
        | E::UnsupportedNameType => TlsError::Protocol,
        _ => TlsError::Internal,
    }
}
