//! WebSocket (RFC 6455) as a Sans-IO layer between a transport (TCP, or TLS for `wss://`) and
//! a protocol core, in the shape of [`TlsLayer`](crate::TlsLayer): feed received bytes to
//! [`WebSocket::handle_input`], take the unmasked payload from [`WebSocket::payload`], frame the
//! core's output with [`WebSocket::frame`], and send [`WebSocket::poll_transmit`] (handshake
//! replies, pongs, close frames) before anything else.
//!
//! ```text
//! transport (TCP | TlsLayer plaintext)  ⇅ HTTP/1.1 Upgrade, then frames
//! WebSocket                              handle_input / payload / frame / poll_transmit
//! rfb-core                               ⇅ the RFB byte stream
//! ```
//!
//! The server side answers the opening handshake (`Sec-WebSocket-Accept`, the `binary`
//! subprotocol echoed only when offered), hands requests that are not upgrades to the
//! application ([`Event::Http`]: a web page on the same port), requires masked client frames,
//! streams binary messages whatever their fragmentation, answers pings and runs the close
//! handshake with RFC 6455 §7.4 status codes. The request head, its header count and every
//! frame's length are bounded by [`WsConfig`]; a peer that breaks a rule gets the close frame
//! (or HTTP status) the RFC gives, and the layer fails with a sticky [`WsError`]. The client
//! side ([`WebSocket::client`]) sends the request and masks its frames with keys the caller
//! draws (the layer has no randomness). Nothing here allocates beyond the configured bounds.
//!
//! HTTP parsing is `httparse`, SHA-1 `sha1`, base64 `base64`; the rest is written here.

mod conn;
mod frame;
mod http;

use core::fmt;

pub use conn::{Event, WebSocket};
pub use frame::{MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, header_len};
pub use http::{HttpRequest, accept_key, error_response, reason_phrase, text_response};

/// A close status code (RFC 6455 §7.4.1).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: normal closure.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the endpoint is going away (server shutdown).
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: protocol error.
    pub const PROTOCOL_ERROR: Self = Self(1002);
    /// 1003: a data type the endpoint cannot accept (text frames here).
    pub const UNSUPPORTED_DATA: Self = Self(1003);
    /// 1005: no status code was present (never sent).
    pub const NO_STATUS: Self = Self(1005);
    /// 1007: payload inconsistent with the message type (a close reason that is not UTF-8).
    pub const INVALID_PAYLOAD: Self = Self(1007);
    /// 1008: policy violation.
    pub const POLICY: Self = Self(1008);
    /// 1009: a frame or message too big to process.
    pub const TOO_BIG: Self = Self(1009);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL_ERROR: Self = Self(1011);

    /// Whether a peer may send this code in a close frame (RFC 6455 §7.4).
    pub fn is_valid_on_wire(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1011 | 3000..=4999)
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = match self.0 {
            1000 => "normal closure",
            1001 => "going away",
            1002 => "protocol error",
            1003 => "unsupported data",
            1005 => "no status",
            1006 => "abnormal closure",
            1007 => "invalid payload",
            1008 => "policy violation",
            1009 => "message too big",
            1010 => "extension required",
            1011 => "internal error",
            _ => "",
        };
        if what.is_empty() {
            write!(f, "{}", self.0)
        } else {
            write!(f, "{} ({what})", self.0)
        }
    }
}

/// Bounds and choices of a [`WebSocket`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsConfig {
    /// Most bytes of a request (or response) head, request line and headers included. A longer
    /// one is answered with 431 and closed.
    pub max_head: usize,
    /// Most header fields in a head (at most 64).
    pub max_headers: usize,
    /// Largest frame payload accepted; a longer frame is closed with 1009. Payloads are
    /// streamed, so this bounds no buffer: it refuses absurd lengths early.
    pub max_frame: u64,
    /// Stop taking input once this much unmasked payload waits for the application
    /// (backpressure: `handle_input` then consumes less than offered).
    pub payload_limit: usize,
}

impl Default for WsConfig {
    fn default() -> Self {
        Self {
            max_head: 8 * 1024,
            max_headers: 32,
            max_frame: 16 << 20,
            payload_limit: 256 * 1024,
        }
    }
}

impl WsConfig {
    /// The defaults: 8 KiB heads, 32 headers, 16 MiB frames, 256 KiB of waiting payload.
    pub fn new() -> Self {
        Self::default()
    }

    /// With another head bound.
    pub fn with_max_head(mut self, n: usize) -> Self {
        self.max_head = n;
        self
    }

    /// With another header count bound (at most 64).
    pub fn with_max_headers(mut self, n: usize) -> Self {
        self.max_headers = n.min(http::HEADER_SLOTS);
        self
    }

    /// With another frame length bound.
    pub fn with_max_frame(mut self, n: u64) -> Self {
        self.max_frame = n;
        self
    }

    /// With another payload backpressure limit.
    pub fn with_payload_limit(mut self, n: usize) -> Self {
        self.payload_limit = n.max(1);
        self
    }
}

/// A fatal WebSocket failure; sticky. Send [`WebSocket::poll_transmit`] once more (the HTTP
/// error or the close frame is queued), then close the transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum WsError {
    /// The opening request was refused with this HTTP status.
    BadRequest(u16, &'static str),
    /// The peer broke a framing rule; closed with this code.
    Protocol(CloseCode, &'static str),
    /// The server's handshake response is not a valid upgrade (client side).
    Handshake(&'static str),
    /// The server answered the upgrade with this HTTP status instead of 101 (client side).
    Refused(u16),
    /// The transport closed before the close handshake (or in the middle of a frame or head).
    UnexpectedEof,
    /// A command that does not fit the state (e.g. framing data before the upgrade).
    InvalidState,
}

impl fmt::Display for WsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadRequest(status, why) => {
                write!(f, "bad WebSocket request: {why} (HTTP {status})")
            }
            Self::Protocol(code, why) => {
                write!(f, "WebSocket protocol error: {why} (close {code})")
            }
            Self::Handshake(why) => write!(f, "WebSocket handshake failed: {why}"),
            Self::Refused(status) => {
                write!(
                    f,
                    "the server refused the WebSocket upgrade (HTTP {status})"
                )
            }
            Self::UnexpectedEof => f.write_str("the connection closed without a WebSocket close"),
            Self::InvalidState => f.write_str("WebSocket command not valid in this state"),
        }
    }
}

impl core::error::Error for WsError {}
