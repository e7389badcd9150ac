//! The HTTP/1.1 side of the opening handshake (RFC 6455 §4): requests and responses parsed by
//! `httparse`, the `Sec-WebSocket-Accept` digest, and the few responses the layer writes itself.

use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

use super::{WsConfig, WsError};

/// The GUID of RFC 6455 §1.3.
const GUID: &[u8] = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11";
/// Headers httparse is given room for; the configured limit is checked against the count.
pub(crate) const HEADER_SLOTS: usize = 64;

/// `Sec-WebSocket-Accept` for a `Sec-WebSocket-Key`.
pub fn accept_key(key: &[u8]) -> String {
    let mut h = Sha1::new();
    h.update(key);
    h.update(GUID);
    BASE64.encode(h.finalize())
}

/// A request that is not a WebSocket upgrade, for the application to answer (static files).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpRequest {
    /// `GET`, `HEAD`, …
    pub method: String,
    /// The request target as sent (`/vnc.html?x=1`).
    pub target: String,
    /// Whether the connection stays open after the response (HTTP/1.1 without
    /// `Connection: close`, or HTTP/1.0 with `Connection: keep-alive`).
    pub keep_alive: bool,
    /// The request's headers (names as sent), in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

impl HttpRequest {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&[u8]> {
        self.headers
            .iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    }

    /// The path part of the target, without the query string.
    pub fn path(&self) -> &str {
        self.target.split(['?', '#']).next().unwrap_or("")
    }
}

/// What a complete request head turned out to be.
pub(crate) enum Parsed {
    /// A valid upgrade: the response to send, and the subprotocol chosen.
    Upgrade {
        response: Vec<u8>,
        protocol: Option<String>,
    },
    /// An ordinary request.
    Http(HttpRequest),
}

/// Whether a comma-separated header value holds `token` (case-insensitive).
fn has_token(value: &[u8], token: &str) -> bool {
    value
        .split(|&b| b == b',')
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Parses a request head (`head` ends with the blank line). A failure carries the status the
/// peer is answered with.
pub(crate) fn parse_request(head: &[u8], config: &WsConfig) -> Result<Parsed, WsError> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut req = httparse::Request::new(&mut slots);
    match req.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => {
            return Err(WsError::BadRequest(400, "incomplete request"));
        }
        Err(httparse::Error::TooManyHeaders) => {
            return Err(WsError::BadRequest(431, "too many header fields"));
        }
        Err(_) => return Err(WsError::BadRequest(400, "malformed HTTP request")),
    }
    if req.headers.len() > config.max_headers {
        return Err(WsError::BadRequest(431, "too many header fields"));
    }
    let method = req.method.unwrap_or("");
    let target = req.path.unwrap_or("");
    let version = req.version.unwrap_or(0);
    let find = |name: &str| {
        req.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    let upgrade = find("upgrade").is_some_and(|v| has_token(v, "websocket"));
    if !upgrade {
        let connection = find("connection");
        let keep_alive = if version >= 1 {
            !connection.is_some_and(|v| has_token(v, "close"))
        } else {
            connection.is_some_and(|v| has_token(v, "keep-alive"))
        };
        return Ok(Parsed::Http(HttpRequest {
            method: method.into(),
            target: target.into(),
            keep_alive,
            headers: req
                .headers
                .iter()
                .map(|h| (h.name.into(), h.value.to_vec()))
                .collect(),
        }));
    }
    if method != "GET" || version < 1 {
        return Err(WsError::BadRequest(
            400,
            "a WebSocket upgrade must be a GET over HTTP/1.1",
        ));
    }
    if !find("connection").is_some_and(|v| has_token(v, "upgrade")) {
        return Err(WsError::BadRequest(
            400,
            "Upgrade without Connection: Upgrade",
        ));
    }
    if find("sec-websocket-version").map(<[u8]>::trim_ascii) != Some(b"13") {
        return Err(WsError::BadRequest(
            426,
            "unsupported Sec-WebSocket-Version (13 only)",
        ));
    }
    let key = find("sec-websocket-key")
        .map(<[u8]>::trim_ascii)
        .ok_or(WsError::BadRequest(400, "no Sec-WebSocket-Key"))?;
    if BASE64.decode(key).map(|k| k.len()) != Ok(16) {
        return Err(WsError::BadRequest(
            400,
            "Sec-WebSocket-Key is not 16 bytes in base64",
        ));
    }
    // Offered subprotocols: echo `binary` (websockify's name for raw bytes) when offered,
    // choose none otherwise (noVNC offers none).
    let protocol = req
        .headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("sec-websocket-protocol"))
        .any(|h| has_token(h.value, "binary"))
        .then(|| String::from("binary"));
    let mut response = Vec::with_capacity(160);
    response.extend_from_slice(
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n",
    );
    response.extend_from_slice(b"Sec-WebSocket-Accept: ");
    response.extend_from_slice(accept_key(key).as_bytes());
    response.extend_from_slice(b"\r\n");
    if let Some(p) = &protocol {
        response.extend_from_slice(b"Sec-WebSocket-Protocol: ");
        response.extend_from_slice(p.as_bytes());
        response.extend_from_slice(b"\r\n");
    }
    response.extend_from_slice(b"\r\n");
    Ok(Parsed::Upgrade { response, protocol })
}

/// A short plain-text error response that closes the connection (426 also names the
/// WebSocket version spoken).
pub fn error_response(status: u16, why: &str) -> Vec<u8> {
    let extra = if status == 426 {
        "Sec-WebSocket-Version: 13\r\n"
    } else {
        ""
    };
    text_response(status, why, false, extra)
}

/// A plain-text response: `status`, `why` and a newline as the body, `Connection:
/// keep-alive` or `close`, then `extra` header lines (each ending in CRLF).
pub fn text_response(status: u16, why: &str, keep_alive: bool, extra: &str) -> Vec<u8> {
    let reason = reason_phrase(status);
    let body_len = why.len() + 1;
    let connection = if keep_alive { "keep-alive" } else { "close" };
    let mut r = Vec::with_capacity(160 + why.len() + extra.len());
    let head = alloc::format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n\
         Content-Length: {body_len}\r\nConnection: {connection}\r\n{extra}\r\n"
    );
    r.extend_from_slice(head.as_bytes());
    r.extend_from_slice(why.as_bytes());
    r.push(b'\n');
    r
}

/// The reason phrase of the status codes this crate and its users send.
pub fn reason_phrase(status: u16) -> &'static str {
    match status {
        101 => "Switching Protocols",
        200 => "OK",
        206 => "Partial Content",
        301 => "Moved Permanently",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        426 => "Upgrade Required",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "",
    }
}

/// The client's opening request.
pub(crate) fn client_request(
    host: &str,
    target: &str,
    key: &str,
    protocol: Option<&str>,
) -> Vec<u8> {
    let mut r = alloc::format!(
        "GET {target} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
    );
    if let Some(p) = protocol {
        r.push_str("Sec-WebSocket-Protocol: ");
        r.push_str(p);
        r.push_str("\r\n");
    }
    r.push_str("\r\n");
    r.into_bytes()
}

/// Checks the server's response head to our request with `key`.
pub(crate) fn check_response(head: &[u8], key: &str, config: &WsConfig) -> Result<(), WsError> {
    let mut slots = [httparse::EMPTY_HEADER; HEADER_SLOTS];
    let mut resp = httparse::Response::new(&mut slots);
    match resp.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        _ => return Err(WsError::Handshake("malformed HTTP response")),
    }
    if resp.headers.len() > config.max_headers {
        return Err(WsError::Handshake("too many header fields in the response"));
    }
    if resp.code != Some(101) {
        return Err(WsError::Refused(resp.code.unwrap_or(0)));
    }
    let find = |name: &str| {
        resp.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    };
    if !find("upgrade").is_some_and(|v| has_token(v, "websocket"))
        || !find("connection").is_some_and(|v| has_token(v, "upgrade"))
    {
        return Err(WsError::Handshake("101 without Upgrade: websocket"));
    }
    if find("sec-websocket-accept").map(<[u8]>::trim_ascii)
        != Some(accept_key(key.as_bytes()).as_bytes())
    {
        return Err(WsError::Handshake("wrong Sec-WebSocket-Accept"));
    }
    if find("sec-websocket-extensions").is_some() {
        return Err(WsError::Handshake(
            "the server chose an extension we did not offer",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rfc_example_key() {
        // RFC 6455 §1.3
        assert_eq!(
            accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
    }
}
