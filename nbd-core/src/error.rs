//! Errors: fatal peer violations ([`Error`]) are separate from misuse by the application
//! ([`CommandError`], non-fatal, state unchanged).

use core::fmt;

use crate::wire::{ErrorCode, InsufficientSize, Malformed, OptionType, ReplyType};

/// A fatal error: the peer violated the protocol, or the connection cannot go on. The driver
/// closes the connection (after sending whatever `poll_transmit` still yields, where the error
/// says the peer was told). Nothing else is affected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Error {
    /// A message was malformed (bad magic, inconsistent lengths).
    Malformed(Malformed),
    /// The client set client flags we do not know or did not offer.
    UnknownClientFlags(u32),
    /// The client does not speak fixed newstyle, which TLS and every option but EXPORT_NAME need.
    NotFixedNewstyle,
    /// An option's data is longer than any limit we accept (QEMU CVE-2017-15119).
    OptionTooLarge {
        /// The option.
        option: OptionType,
        /// Its announced length.
        length: u32,
    },
    /// `NBD_OPT_EXPORT_NAME` named an export that does not exist (the option has no error reply).
    UnknownExport,
    /// `NBD_OPT_EXPORT_NAME` had a name that is too long or not a valid string.
    BadExportName,
    /// The client tried to reach an export without TLS where TLS is required.
    TlsRequired,
    /// `NBD_OPT_EXPORT_NAME` after extended headers were negotiated.
    ExportNameWithExtendedHeaders,
    /// A request's payload is longer than the maximum payload size.
    PayloadTooLarge {
        /// The payload length the client announced.
        length: u64,
        /// Our maximum.
        maximum: u32,
    },
    /// A reply did not fit the request it claims to answer (client side).
    UnexpectedReply,
    /// A reply for a cookie that is not in flight (client side).
    UnknownCookie(u64),
    /// An option reply carried data longer than our limit (client side).
    ReplyTooLarge(u64),
    /// The server replied to an option we did not send (client side).
    WrongOptionReply {
        /// What we asked.
        expected: OptionType,
        /// What the reply says.
        got: OptionType,
    },
    /// The server's option reply type is not valid for the option (client side).
    UnexpectedOptionReply(ReplyType),
    /// The server sent an oldstyle greeting; we speak only fixed newstyle.
    Oldstyle,
    /// TLS is required but the server does not offer fixed newstyle (libnbd CVE-2019-14842).
    TlsImpossible,
    /// TLS is required but the server refused STARTTLS.
    TlsRefused(ReplyType),
    /// Bytes arrived that must not (data after STARTTLS before the TLS layer took over, or after
    /// the end of the conversation).
    UnexpectedData,
    /// The server sent a reply chunk type we must not accept.
    BadChunk,
    /// The peer closed the connection in the middle of negotiation.
    UnexpectedEof,
    /// The handshake did not finish before the deadline.
    HandshakeTimeout,
    /// The state machine already failed; nothing more is processed.
    Failed,
}

impl From<Malformed> for Error {
    fn from(m: Malformed) -> Self {
        Self::Malformed(m)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Malformed(m) => write!(f, "malformed message: {m}"),
            Self::UnknownClientFlags(flags) => {
                write!(f, "client sent unknown client flags {flags:#x}; closing as the spec requires")
            }
            Self::NotFixedNewstyle => f.write_str(
                "client does not support fixed newstyle negotiation (needed for TLS and for every option but EXPORT_NAME)",
            ),
            Self::OptionTooLarge { option, length } => {
                write!(f, "option {option:?} has {length} bytes of data, more than we accept")
            }
            Self::UnknownExport => f.write_str("client asked for an export that does not exist"),
            Self::BadExportName => {
                f.write_str("export name is too long or not valid UTF-8 without NUL")
            }
            Self::TlsRequired => f.write_str("TLS is required before this export can be used"),
            Self::ExportNameWithExtendedHeaders => {
                f.write_str("NBD_OPT_EXPORT_NAME is not allowed after extended headers")
            }
            Self::PayloadTooLarge { length, maximum } => {
                write!(f, "request payload of {length} bytes exceeds the maximum of {maximum}")
            }
            Self::UnexpectedReply => f.write_str("server reply does not match the request"),
            Self::UnknownCookie(c) => write!(f, "server replied to cookie {c:#x}, which is not in flight"),
            Self::ReplyTooLarge(n) => write!(f, "server reply of {n} bytes exceeds our limit"),
            Self::WrongOptionReply { expected, got } => {
                write!(f, "server answered option {got:?} but we asked {expected:?}")
            }
            Self::UnexpectedOptionReply(r) => write!(f, "unexpected option reply: {r}"),
            Self::Oldstyle => f.write_str("server uses oldstyle negotiation, which is not supported"),
            Self::TlsImpossible => f.write_str(
                "TLS is required but the server does not support fixed newstyle negotiation",
            ),
            Self::TlsRefused(r) => write!(f, "TLS is required but the server refused STARTTLS: {r}"),
            Self::UnexpectedData => f.write_str("peer sent data at a point where none is allowed"),
            Self::BadChunk => f.write_str("server sent an invalid reply chunk"),
            Self::UnexpectedEof => f.write_str("connection closed during negotiation"),
            Self::HandshakeTimeout => f.write_str("negotiation did not finish in time"),
            Self::Failed => f.write_str("connection already failed"),
        }
    }
}

impl core::error::Error for Error {}

/// The application misused a command. Non-fatal: the state is unchanged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum CommandError {
    /// The command is not valid in the current state.
    InvalidState,
    /// The output buffer is too small; nothing was written.
    InsufficientSize(InsufficientSize),
    /// An argument is out of range for this request or negotiation (the string says which).
    InvalidArgument(&'static str),
    /// The server did not advertise what the command needs (client side).
    NotSupported(&'static str),
    /// Every request slot is in use (client side); wait for a reply.
    TooManyInFlight,
    /// TLS is required and not yet established; nothing but STARTTLS may be sent in the clear.
    TlsRequired,
}

impl From<InsufficientSize> for CommandError {
    fn from(e: InsufficientSize) -> Self {
        Self::InsufficientSize(e)
    }
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidState => f.write_str("command not valid in the current state"),
            Self::InsufficientSize(e) => e.fmt(f),
            Self::InvalidArgument(what) => write!(f, "invalid argument: {what}"),
            Self::NotSupported(what) => write!(f, "not supported by the server: {what}"),
            Self::TooManyInFlight => f.write_str("too many requests in flight"),
            Self::TlsRequired => f.write_str("TLS is required before anything else is sent"),
        }
    }
}

impl core::error::Error for CommandError {}

/// An NBD error a request failed with, and the server's message if it sent one in the reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct RequestError {
    /// The error value.
    pub code: ErrorCode,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.code.fmt(f)
    }
}

impl core::error::Error for RequestError {}
