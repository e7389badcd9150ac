//! Errors: fatal peer violations ([`Error`]) are separate from misuse by the application
//! ([`CommandError`], non-fatal, state unchanged), as in nbd-core.

use core::fmt;

/// What the peer did wrong. Every variant is fatal for the connection.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum ProtocolError {
    /// The ProtocolVersion message is not `RFB xxx.yyy\n`.
    MalformedVersion,
    /// A message has a field no valid message of its kind has.
    Malformed,
    /// The peer's protocol version cannot be served (major version not 3, or minor below 3).
    UnsupportedVersion,
    /// The client chose a security type the server did not offer (CVE-2006-2369).
    SecurityTypeNotOffered,
    /// The client chose a VeNCrypt sub-type the server did not offer.
    SubtypeNotOffered,
    /// The server offered no security type this client accepts.
    NoAcceptableSecurityType,
    /// The server offers only anonymous TLS (security type 18, or VeNCrypt TLSNone/TLSVnc/
    /// TLSPlain/TLSSASL/TLSIdent); the TLS backend (rustls) has no anonymous cipher suites.
    AnonymousTlsUnsupported,
    /// The server picked (RFB 3.3) or offered an invalid security type value.
    InvalidSecurityType,
    /// The peer speaks a VeNCrypt version other than 0.2 or refused ours.
    VencryptVersion,
    /// The server did not acknowledge the VeNCrypt sub-type.
    VencryptRefused,
    /// A VeNCrypt sub-type list is empty or a message of it is malformed.
    MalformedVencrypt,
    /// Plain credentials exceed the configured limits.
    CredentialsTooLong,
    /// The SecurityResult word is not 0, 1 or 2.
    InvalidSecurityResult,
    /// A reason or name string exceeds the hard limit.
    StringTooLong,
    /// A message type this implementation does not know (RFB has no length field to skip it).
    UnknownMessageType(u8),
    /// A QEMU client message with an unknown or unnegotiated sub-type.
    UnknownQemuMessage(u8),
    /// A message the peer may not send in the current state (e.g. an unnegotiated extension).
    UnexpectedMessage(u8),
    /// SetPixelFormat (or ServerInit) carries an unusable pixel format.
    InvalidPixelFormat,
    /// SetEncodings lists more encodings than the configured limit.
    TooManyEncodings,
    /// Cut text longer than the configured limit (CVE-2018-7225).
    CutTextTooLong,
    /// A Fence payload longer than 64 bytes.
    FencePayloadTooLong,
    /// SetDesktopSize / ExtendedDesktopSize with too many or zero screens.
    InvalidScreenLayout,
    /// A rectangle extends outside the framebuffer.
    RectangleOutOfBounds,
    /// A CopyRect source extends outside the framebuffer.
    CopyRectSourceOutOfBounds,
    /// A rectangle uses an encoding the client did not ask for.
    UnrequestedEncoding(i32),
    /// A QEMU LED State byte with bits other than ScrollLock, NumLock and CapsLock.
    InvalidLedState(u8),
    /// An RRE rectangle announces more sub-rectangles than its area allows.
    TooManySubrectangles,
    /// A sub-rectangle extends outside its rectangle or tile.
    SubrectangleOutOfBounds,
    /// A Hextile tile has an invalid sub-encoding (e.g. no background for the first tile).
    MalformedHextile,
    /// A ZRLE tile is malformed (bad sub-encoding, palette index, run length, or trailing data).
    MalformedZrle,
    /// The zlib stream inside a ZRLE or Tight rectangle is corrupt.
    ZlibError,
    /// A Tight rectangle is malformed (bad control byte, filter, palette index, data length,
    /// too much or too little zlib data, or bytes after the end of its zlib stream).
    MalformedTight,
    /// A Tight rectangle (other than Fill) is wider than 2048 pixels.
    TightTooWide,
    /// A Tight JPEG rectangle arrived and the client has no JPEG decoder.
    JpegUnsupported,
    /// A Tight JPEG rectangle is larger than the client's `max_jpeg_pixels`.
    JpegTooLarge,
    /// A Tight JPEG image cannot be decoded, or is not the rectangle's size.
    BadJpeg,
    /// A cursor shape exceeds the configured maximum size.
    CursorTooLarge,
    /// SetColourMapEntries addresses entries past 65535 (CVE-2017-5885).
    ColourMapOutOfRange,
    /// The connection ended in the middle of the handshake or a message.
    UnexpectedEof,
    /// The peer sent data after the point where TLS starts, in plaintext.
    DataBeforeTls,
}

impl fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ProtocolError::*;
        match self {
            MalformedVersion => f.write_str("malformed ProtocolVersion message"),
            Malformed => f.write_str("malformed message"),
            UnsupportedVersion => f.write_str("unsupported RFB protocol version"),
            SecurityTypeNotOffered => {
                f.write_str("client chose a security type that was not offered")
            }
            SubtypeNotOffered => {
                f.write_str("client chose a VeNCrypt sub-type that was not offered")
            }
            NoAcceptableSecurityType => {
                f.write_str("the server offered no acceptable security type")
            }
            AnonymousTlsUnsupported => f.write_str(
                "the server offers only anonymous TLS, which the TLS backend (rustls) does not support; configure X509 VeNCrypt sub-types on the server",
            ),
            InvalidSecurityType => f.write_str("invalid security type"),
            VencryptVersion => f.write_str("unsupported VeNCrypt version (only 0.2 is supported)"),
            VencryptRefused => f.write_str("server refused the VeNCrypt sub-type"),
            MalformedVencrypt => f.write_str("malformed VeNCrypt negotiation"),
            CredentialsTooLong => f.write_str("credentials exceed the configured limit"),
            InvalidSecurityResult => f.write_str("invalid SecurityResult value"),
            StringTooLong => f.write_str("string exceeds the length limit"),
            UnknownMessageType(t) => write!(f, "unknown message type {t}"),
            UnknownQemuMessage(t) => write!(f, "unknown QEMU message sub-type {t}"),
            UnexpectedMessage(t) => write!(f, "message type {t} not allowed in this state"),
            InvalidPixelFormat => f.write_str("invalid pixel format"),
            TooManyEncodings => f.write_str("too many encodings in SetEncodings"),
            CutTextTooLong => f.write_str("cut text exceeds the configured limit"),
            FencePayloadTooLong => f.write_str("fence payload longer than 64 bytes"),
            InvalidScreenLayout => f.write_str("invalid screen layout"),
            RectangleOutOfBounds => f.write_str("rectangle outside the framebuffer"),
            CopyRectSourceOutOfBounds => f.write_str("CopyRect source outside the framebuffer"),
            UnrequestedEncoding(e) => {
                write!(f, "rectangle uses encoding {e} which was not requested")
            }
            InvalidLedState(s) => write!(f, "invalid QEMU LED state {s:#04x}"),
            TooManySubrectangles => f.write_str("too many sub-rectangles"),
            SubrectangleOutOfBounds => f.write_str("sub-rectangle outside its rectangle"),
            MalformedHextile => f.write_str("malformed Hextile data"),
            MalformedZrle => f.write_str("malformed ZRLE data"),
            ZlibError => f.write_str("corrupt zlib stream"),
            MalformedTight => f.write_str("malformed Tight data"),
            TightTooWide => f.write_str("Tight rectangle wider than 2048 pixels"),
            JpegUnsupported => f.write_str("Tight JPEG rectangle without a JPEG decoder"),
            JpegTooLarge => f.write_str("Tight JPEG rectangle larger than the configured limit"),
            BadJpeg => f.write_str("undecodable Tight JPEG image or one of the wrong size"),
            CursorTooLarge => f.write_str("cursor shape too large"),
            ColourMapOutOfRange => f.write_str("colour map entries out of range"),
            UnexpectedEof => f.write_str("connection closed in the middle of a message"),
            DataBeforeTls => f.write_str("plaintext data after the TLS switch point"),
        }
    }
}

impl core::error::Error for ProtocolError {}

/// A fatal error: the peer violated the protocol, or the connection cannot go on. Only the
/// handlers (`handle_input`, `handle_eof`) return it. The driver drains `poll_transmit` once
/// more (it may hold a failure message the protocol lets us tell the peer) and `poll_event`
/// (the client reports the server's reason and the offered security types there), then closes
/// the transport.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Error {
    /// The peer violated the protocol.
    Protocol(ProtocolError),
    /// The server rejected our authentication (or our security types).
    AuthenticationFailed,
    /// The framebuffer lent to `Client::handle_input_fb` cannot take the rectangle's pixels (a
    /// colour-mapped session needs a framebuffer in the wire format itself). Before the split
    /// into [`Error`] and [`CommandError`] this was a non-fatal `InvalidArgument`, although the
    /// rectangle's header had been consumed already.
    UnusableFramebuffer,
    /// The connection is closed; no further input is accepted.
    Closed,
}

impl From<ProtocolError> for Error {
    fn from(e: ProtocolError) -> Self {
        Error::Protocol(e)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Protocol(p) => write!(f, "protocol violation: {p}"),
            Error::AuthenticationFailed => f.write_str("authentication failed"),
            Error::UnusableFramebuffer => {
                f.write_str("the framebuffer cannot take the session's pixel format")
            }
            Error::Closed => f.write_str("connection closed"),
        }
    }
}

impl core::error::Error for Error {}

/// The application misused a command. Non-fatal: the state is unchanged and the connection goes
/// on.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum CommandError {
    /// The command is not valid in the current state.
    InvalidState,
    /// An argument is out of range (too long, zero-sized, …).
    InvalidArgument,
    /// The output queue has no room for this message; drain `poll_transmit` and retry.
    QueueFull,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CommandError::InvalidState => f.write_str("command not valid in the current state"),
            CommandError::InvalidArgument => f.write_str("invalid argument"),
            CommandError::QueueFull => f.write_str("output queue full; drain poll_transmit first"),
        }
    }
}

impl core::error::Error for CommandError {}

/// The output buffer passed to `poll_transmit` (or an encoder) is too small; nothing was written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct InsufficientSize {
    /// The smallest buffer length that makes progress.
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
