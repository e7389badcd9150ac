//! The connection: opening handshake, frames in and out, the close handshake.

use alloc::collections::VecDeque;
use alloc::string::String;
use alloc::vec::Vec;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use sha1::{Digest, Sha1};

use super::frame::{self, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN, Opcode, apply_mask, header_len};
use super::http::{self, HttpRequest, Parsed};
use super::{CloseCode, WsConfig, WsError};

/// What happened, for the application ([`WebSocket::poll_event`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A request that is not an upgrade arrived (server side). Write the response to the
    /// transport yourself, after [`WebSocket::pending_transmit`], then call
    /// [`WebSocket::http_done`]; input waits until then.
    Http(HttpRequest),
    /// The opening handshake is complete: payload flows from now on.
    Open {
        /// The subprotocol chosen (`binary` when the client offered it).
        protocol: Option<String>,
    },
    /// The peer sent a close frame (answered already). Send what is pending, then close.
    Closed {
        /// Its status code (`None`: it gave none).
        code: Option<CloseCode>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Reading a request head (server) or the response head (client).
    Head,
    /// The application answers an HTTP request.
    Http,
    /// Frames.
    Open,
    /// Closed (handshake done, or a failure): input is ignored.
    Closed,
}

#[derive(Debug)]
enum Role {
    Server,
    Client {
        key: String,
        mask_seed: [u8; 32],
        masks: u64,
    },
}

/// The frame being read.
#[derive(Debug, Clone, Copy)]
struct Reading {
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    remaining: u64,
    offset: u64,
}

/// One WebSocket connection, server or client side. See [the module](super).
#[derive(Debug)]
pub struct WebSocket {
    config: WsConfig,
    role: Role,
    phase: Phase,
    /// Head bytes, or the start of a frame header.
    rx: Vec<u8>,
    payload: Vec<u8>,
    payload_pos: usize,
    /// A control frame's payload being read.
    control: Vec<u8>,
    reading: Option<Reading>,
    /// A fragmented binary message is open (continuations expected).
    in_message: bool,
    tx: Vec<u8>,
    tx_pos: usize,
    close_sent: bool,
    close_received: bool,
    error: Option<WsError>,
    events: VecDeque<Event>,
}

impl WebSocket {
    fn new(config: WsConfig, role: Role) -> Self {
        Self {
            config,
            role,
            phase: Phase::Head,
            rx: Vec::new(),
            payload: Vec::new(),
            payload_pos: 0,
            control: Vec::new(),
            reading: None,
            in_message: false,
            tx: Vec::new(),
            tx_pos: 0,
            close_sent: false,
            close_received: false,
            error: None,
            events: VecDeque::new(),
        }
    }

    /// The server side of a connection, waiting for the request.
    pub fn server(config: WsConfig) -> Self {
        Self::new(config, Role::Server)
    }

    /// The client side: queues the opening request for `target` (`/websockify`) at `host`
    /// (the `Host` header). `nonce` becomes `Sec-WebSocket-Key`; frames are masked with keys
    /// derived from `mask_seed` (SHA-1 of the seed and a counter). Draw both from a good
    /// random source: the RFC wants masks a proxy cannot predict.
    pub fn client(
        config: WsConfig,
        host: &str,
        target: &str,
        protocol: Option<&str>,
        nonce: [u8; 16],
        mask_seed: [u8; 32],
    ) -> Self {
        let key = BASE64.encode(nonce);
        let mut ws = Self::new(
            config,
            Role::Client {
                key: key.clone(),
                mask_seed,
                masks: 0,
            },
        );
        ws.tx = http::client_request(host, target, &key, protocol);
        ws
    }

    fn is_server(&self) -> bool {
        matches!(self.role, Role::Server)
    }

    fn next_mask(&mut self) -> Option<[u8; 4]> {
        match &mut self.role {
            Role::Server => None,
            Role::Client {
                mask_seed, masks, ..
            } => {
                let mut h = Sha1::new();
                h.update(&mask_seed[..]);
                h.update(masks.to_be_bytes());
                *masks += 1;
                let d = h.finalize();
                Some([d[0], d[1], d[2], d[3]])
            }
        }
    }

    // ------------------------------------------------------------------ input

    /// Takes received bytes; returns how many it consumed. It stops early when the payload
    /// reached [`WsConfig::payload_limit`] (consume some, then offer the rest again), after a
    /// complete head (look at [`poll_event`](Self::poll_event) first) and while an
    /// [`Event::Http`] is being answered. An error is fatal and sticky: send
    /// [`pending_transmit`](Self::pending_transmit), then close.
    pub fn handle_input(&mut self, input: &[u8]) -> Result<usize, WsError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut used = 0;
        while used < input.len() {
            let step = match self.phase {
                Phase::Head => {
                    let (n, done) = self.read_head(&input[used..])?;
                    used += n;
                    if done {
                        break;
                    }
                    continue;
                }
                Phase::Http => break,
                Phase::Closed => input.len() - used,
                Phase::Open => self.read_frames(&input[used..])?,
            };
            if step == 0 {
                break;
            }
            used += step;
        }
        Ok(used)
    }

    /// The transport reached end of file.
    pub fn handle_eof(&mut self) -> Result<(), WsError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let clean = match self.phase {
            Phase::Head => self.rx.is_empty() && self.is_server(),
            Phase::Http | Phase::Closed => true,
            Phase::Open => false,
        };
        self.phase = Phase::Closed;
        if clean {
            Ok(())
        } else {
            self.error = Some(WsError::UnexpectedEof);
            Err(WsError::UnexpectedEof)
        }
    }

    fn fail(&mut self, e: WsError) -> WsError {
        match e {
            WsError::BadRequest(status, why) => {
                self.tx
                    .extend_from_slice(&http::error_response(status, why));
            }
            WsError::Protocol(code, _) => self.queue_close(code, b""),
            _ => {}
        }
        self.phase = Phase::Closed;
        self.error = Some(e);
        e
    }

    /// Reads head bytes; `(consumed, complete)`.
    fn read_head(&mut self, input: &[u8]) -> Result<(usize, bool), WsError> {
        let old = self.rx.len();
        let take = input.len().min(self.config.max_head.saturating_sub(old));
        self.rx.extend_from_slice(&input[..take]);
        let from = old.saturating_sub(3);
        let Some(end) = self.rx[from..]
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|p| from + p + 4)
        else {
            if self.rx.len() >= self.config.max_head {
                let e = if self.is_server() {
                    WsError::BadRequest(431, "request head too long")
                } else {
                    WsError::Handshake("response head too long")
                };
                return Err(self.fail(e));
            }
            return Ok((take, false));
        };
        // What followed the head stays with the caller.
        let consumed = end - old;
        let head = core::mem::take(&mut self.rx);
        let head = &head[..end];
        match &self.role {
            Role::Server => match http::parse_request(head, &self.config) {
                Ok(Parsed::Upgrade { response, protocol }) => {
                    self.tx.extend_from_slice(&response);
                    self.phase = Phase::Open;
                    self.events.push_back(Event::Open { protocol });
                }
                Ok(Parsed::Http(req)) => {
                    self.phase = Phase::Http;
                    self.events.push_back(Event::Http(req));
                }
                Err(e) => return Err(self.fail(e)),
            },
            Role::Client { key, .. } => {
                let key = key.clone();
                if let Err(e) = http::check_response(head, &key, &self.config) {
                    return Err(self.fail(e));
                }
                self.phase = Phase::Open;
                self.events.push_back(Event::Open { protocol: None });
            }
        }
        Ok((consumed, true))
    }

    /// Reads frame bytes; returns how many were consumed (0: wait).
    fn read_frames(&mut self, input: &[u8]) -> Result<usize, WsError> {
        let Some(mut r) = self.reading else {
            // A header: gathered in `rx` (at most MAX_HEADER_LEN bytes).
            let old = self.rx.len();
            let take = input.len().min(MAX_HEADER_LEN - old);
            self.rx.extend_from_slice(&input[..take]);
            let h = match frame::parse_header(&self.rx) {
                Ok(Some(h)) => h,
                Ok(None) => return Ok(take),
                Err(e) => return Err(self.fail(e)),
            };
            let consumed = h.size - old;
            self.rx.clear();
            if let Err(e) = self.start_frame(h) {
                return Err(self.fail(e));
            }
            if h.len == 0 {
                self.end_frame(h.opcode)?;
            }
            return Ok(consumed);
        };
        let n = if r.opcode.is_control() {
            let n = (r.remaining as usize).min(input.len());
            let at = self.control.len();
            self.control.extend_from_slice(&input[..n]);
            if let Some(m) = r.mask {
                apply_mask(&mut self.control[at..], m, r.offset);
            }
            n
        } else {
            if self.payload_pos > 0 {
                self.payload.drain(..self.payload_pos);
                self.payload_pos = 0;
            }
            let room = self.config.payload_limit.saturating_sub(self.payload.len());
            let n = usize::try_from(r.remaining)
                .unwrap_or(usize::MAX)
                .min(input.len())
                .min(room);
            let at = self.payload.len();
            self.payload.extend_from_slice(&input[..n]);
            if let Some(m) = r.mask {
                apply_mask(&mut self.payload[at..], m, r.offset);
            }
            n
        };
        r.remaining -= n as u64;
        r.offset += n as u64;
        self.reading = Some(r);
        if r.remaining == 0 {
            self.reading = None;
            self.end_frame(r.opcode)?;
        }
        Ok(n)
    }

    fn start_frame(&mut self, h: frame::Header) -> Result<(), WsError> {
        let p = |why| WsError::Protocol(CloseCode::PROTOCOL_ERROR, why);
        match (self.is_server(), h.mask.is_some()) {
            (true, false) => return Err(p("unmasked frame from the client")),
            (false, true) => return Err(p("masked frame from the server")),
            _ => {}
        }
        match h.opcode {
            Opcode::Continuation if !self.in_message => {
                return Err(p("continuation frame without a message"));
            }
            Opcode::Text | Opcode::Binary if self.in_message => {
                return Err(p("new message inside a fragmented one"));
            }
            Opcode::Text => {
                return Err(WsError::Protocol(
                    CloseCode::UNSUPPORTED_DATA,
                    "text frames are not accepted (binary only)",
                ));
            }
            _ => {}
        }
        if !h.opcode.is_control() {
            if h.len > self.config.max_frame {
                return Err(WsError::Protocol(
                    CloseCode::TOO_BIG,
                    "frame longer than allowed",
                ));
            }
            self.in_message = !h.fin;
        }
        self.control.clear();
        self.reading = Some(Reading {
            opcode: h.opcode,
            mask: h.mask,
            remaining: h.len,
            offset: 0,
        });
        Ok(())
    }

    fn end_frame(&mut self, opcode: Opcode) -> Result<(), WsError> {
        self.reading = None;
        match opcode {
            Opcode::Ping if !self.close_sent => {
                let data = core::mem::take(&mut self.control);
                self.queue_control(Opcode::Pong, &data);
            }
            Opcode::Close => {
                let data = core::mem::take(&mut self.control);
                let code = match data.len() {
                    0 => None,
                    1 => {
                        return Err(self.fail(WsError::Protocol(
                            CloseCode::PROTOCOL_ERROR,
                            "close frame with a one-byte payload",
                        )));
                    }
                    _ => Some(CloseCode(u16::from_be_bytes([data[0], data[1]]))),
                };
                if code.is_some_and(|c| !c.is_valid_on_wire()) {
                    return Err(self.fail(WsError::Protocol(
                        CloseCode::PROTOCOL_ERROR,
                        "close status code not allowed on the wire",
                    )));
                }
                if data.len() > 2 && core::str::from_utf8(&data[2..]).is_err() {
                    return Err(self.fail(WsError::Protocol(
                        CloseCode::INVALID_PAYLOAD,
                        "close reason is not UTF-8",
                    )));
                }
                self.close_received = true;
                self.queue_close(code.unwrap_or(CloseCode::NORMAL), b"");
                self.phase = Phase::Closed;
                self.events.push_back(Event::Closed { code });
            }
            _ => {}
        }
        Ok(())
    }

    fn queue_control(&mut self, opcode: Opcode, data: &[u8]) {
        if self.tx_pos > 0 && self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        }
        let mask = self.next_mask();
        let mut hdr = [0u8; MAX_HEADER_LEN];
        let n = frame::write_header(opcode, data.len(), mask, &mut hdr);
        self.tx.extend_from_slice(&hdr[..n]);
        let at = self.tx.len();
        self.tx.extend_from_slice(data);
        if let Some(m) = mask {
            apply_mask(&mut self.tx[at..], m, 0);
        }
    }

    fn queue_close(&mut self, code: CloseCode, reason: &[u8]) {
        if self.close_sent || !matches!(self.phase, Phase::Open) {
            return;
        }
        let mut data = [0u8; MAX_CONTROL_PAYLOAD];
        data[..2].copy_from_slice(&code.0.to_be_bytes());
        let r = reason.len().min(MAX_CONTROL_PAYLOAD - 2);
        data[2..2 + r].copy_from_slice(&reason[..r]);
        self.queue_control(Opcode::Close, &data[..2 + r]);
        self.close_sent = true;
    }

    // ------------------------------------------------------------------ for the application

    /// The next event.
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// Unmasked payload received so far (the protocol's byte stream).
    pub fn payload(&self) -> &[u8] {
        &self.payload[self.payload_pos..]
    }

    /// The application used `n` bytes of [`payload`](Self::payload).
    pub fn consume_payload(&mut self, n: usize) {
        self.payload_pos = (self.payload_pos + n).min(self.payload.len());
        if self.payload_pos == self.payload.len() {
            self.payload.clear();
            self.payload_pos = 0;
        }
    }

    /// The response to an [`Event::Http`] went out: read the next request on the same
    /// connection (`keep_alive`), or ignore further input (the application closes).
    pub fn http_done(&mut self, keep_alive: bool) -> Result<(), WsError> {
        if self.phase != Phase::Http {
            return Err(WsError::InvalidState);
        }
        self.phase = if keep_alive {
            Phase::Head
        } else {
            Phase::Closed
        };
        Ok(())
    }

    /// Bytes framing `len` bytes of payload takes on the wire.
    pub fn framed_len(&self, len: usize) -> usize {
        header_len(len, !self.is_server()) + len
    }

    /// Writes `payload` as one binary frame into `out` (at least
    /// [`framed_len`](Self::framed_len) bytes); returns the bytes written. Send what
    /// [`pending_transmit`](Self::pending_transmit) holds first.
    pub fn frame(&mut self, payload: &[u8], out: &mut [u8]) -> Result<usize, WsError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.phase != Phase::Open || self.close_sent {
            return Err(WsError::InvalidState);
        }
        let need = self.framed_len(payload.len());
        if out.len() < need {
            return Err(WsError::InvalidState);
        }
        let mask = self.next_mask();
        let n = frame::write_header(Opcode::Binary, payload.len(), mask, out);
        out[n..need].copy_from_slice(payload);
        if let Some(m) = mask {
            apply_mask(&mut out[n..need], m, 0);
        }
        Ok(need)
    }

    /// Starts the close handshake with `code` (no more frames are sent after it). Does nothing
    /// before the upgrade or once a close was sent.
    pub fn close(&mut self, code: CloseCode, reason: &str) {
        self.queue_close(code, reason.as_bytes());
    }

    /// Bytes the layer itself wants sent (the handshake, pongs, close frames, an HTTP error).
    pub fn pending_transmit(&self) -> &[u8] {
        &self.tx[self.tx_pos..]
    }

    /// `n` bytes of [`pending_transmit`](Self::pending_transmit) were sent.
    pub fn transmit_done(&mut self, n: usize) {
        self.tx_pos = (self.tx_pos + n).min(self.tx.len());
        if self.tx_pos == self.tx.len() {
            self.tx.clear();
            self.tx_pos = 0;
        }
    }

    /// Copies pending bytes into `out`: `Some(n)`, or `None` when nothing is pending.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Option<usize> {
        let p = self.pending_transmit();
        if p.is_empty() {
            return None;
        }
        let n = p.len().min(out.len());
        out[..n].copy_from_slice(&p[..n]);
        self.transmit_done(n);
        Some(n)
    }

    /// Whether frames flow (the handshake is done and no close was sent or received).
    pub fn is_open(&self) -> bool {
        self.phase == Phase::Open && !self.close_sent
    }

    /// Whether the connection is over for this layer: a close was received (and answered), a
    /// failure happened, or an HTTP exchange ended without keep-alive. Send what is pending,
    /// then close the transport.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed
    }

    /// Whether a close frame went out (ours or the answer to the peer's).
    pub fn close_sent(&self) -> bool {
        self.close_sent
    }

    /// Whether the peer sent a close frame.
    pub fn close_received(&self) -> bool {
        self.close_received
    }

    /// The sticky failure, if any.
    pub fn error(&self) -> Option<WsError> {
        self.error
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use alloc::vec;

    const REQUEST: &[u8] = b"GET /websockify HTTP/1.1\r\nHost: example\r\nUpgrade: websocket\r\n\
        Connection: keep-alive, Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\
        Sec-WebSocket-Version: 13\r\n\r\n";

    fn masked(opcode: u8, fin: bool, payload: &[u8]) -> Vec<u8> {
        let mask = [0xa1, 0x02, 0x33, 0xc4];
        let mut v = vec![0u8; MAX_HEADER_LEN];
        let op = Opcode::from_test(opcode);
        let n = frame::write_header(op, payload.len(), Some(mask), &mut v);
        v.truncate(n);
        if !fin {
            v[0] &= 0x7f;
        }
        let at = v.len();
        v.extend_from_slice(payload);
        apply_mask(&mut v[at..], mask, 0);
        v
    }

    impl Opcode {
        fn from_test(b: u8) -> Self {
            match b {
                0 => Opcode::Continuation,
                1 => Opcode::Text,
                2 => Opcode::Binary,
                8 => Opcode::Close,
                9 => Opcode::Ping,
                _ => Opcode::Pong,
            }
        }
    }

    fn open() -> WebSocket {
        let mut ws = WebSocket::server(WsConfig::default());
        assert_eq!(ws.handle_input(REQUEST), Ok(REQUEST.len()));
        assert_eq!(ws.poll_event(), Some(Event::Open { protocol: None }));
        let resp = ws.pending_transmit().to_vec();
        let text = core::str::from_utf8(&resp).unwrap();
        assert!(text.starts_with("HTTP/1.1 101 "), "{text}");
        assert!(text.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"));
        assert!(!text.contains("Sec-WebSocket-Protocol"));
        ws.transmit_done(resp.len());
        ws
    }

    #[test]
    fn payload_streams_through_fragments_and_pings() {
        let mut ws = open();
        let mut wire = masked(2, false, b"RFB 003");
        wire.extend(masked(9, true, b"hi")); // a ping between fragments
        wire.extend(masked(0, true, b".008\n"));
        // byte by byte, as a slow transport delivers it
        for b in &wire {
            assert_eq!(ws.handle_input(core::slice::from_ref(b)), Ok(1));
        }
        assert_eq!(ws.payload(), b"RFB 003.008\n");
        ws.consume_payload(4);
        assert_eq!(ws.payload(), b"003.008\n");
        // the pong: unmasked, same payload
        assert_eq!(ws.pending_transmit(), [0x8a, 2, b'h', b'i']);
    }

    #[test]
    fn the_binary_subprotocol_is_echoed_only_when_offered() {
        let req = b"GET / HTTP/1.1\r\nHost: h\r\nUpgrade: WebSocket\r\nConnection: Upgrade\r\n\
            Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
            Sec-WebSocket-Protocol: chat, binary\r\n\r\n";
        let mut ws = WebSocket::server(WsConfig::default());
        ws.handle_input(req).unwrap();
        assert_eq!(
            ws.poll_event(),
            Some(Event::Open {
                protocol: Some("binary".into())
            })
        );
        let text = core::str::from_utf8(ws.pending_transmit()).unwrap();
        assert!(
            text.contains("Sec-WebSocket-Protocol: binary\r\n"),
            "{text}"
        );
    }

    #[test]
    fn frames_out_are_unmasked_and_minimal() {
        let mut ws = open();
        for len in [0usize, 5, 125, 126, 70_000] {
            let data = vec![7u8; len];
            let mut out = vec![0u8; ws.framed_len(len)];
            let n = ws.frame(&data, &mut out).unwrap();
            assert_eq!(n, out.len());
            let h = frame::parse_header(&out).unwrap().unwrap();
            assert_eq!(
                (h.opcode, h.mask, h.len),
                (Opcode::Binary, None, len as u64)
            );
            assert_eq!(&out[h.size..], &data[..]);
        }
    }

    #[test]
    fn the_close_handshake_echoes_the_code() {
        let mut ws = open();
        let mut close = vec![0x03, 0xe8];
        close.extend_from_slice(b"bye");
        let f = masked(8, true, &close);
        assert_eq!(ws.handle_input(&f), Ok(f.len()));
        assert_eq!(
            ws.poll_event(),
            Some(Event::Closed {
                code: Some(CloseCode::NORMAL)
            })
        );
        assert_eq!(ws.pending_transmit(), [0x88, 2, 0x03, 0xe8]);
        assert!(ws.is_closed() && !ws.is_open());
        assert_eq!(ws.handle_eof(), Ok(()));
        let mut out = [0u8; 16];
        assert_eq!(ws.frame(b"x", &mut out), Err(WsError::InvalidState));
    }

    fn closes_with(wire: &[u8], code: CloseCode) {
        let mut ws = open();
        let r = ws.handle_input(wire);
        assert!(
            matches!(r, Err(WsError::Protocol(c, _)) if c == code),
            "{wire:x?}: {r:?}"
        );
        let pending = ws.pending_transmit();
        assert_eq!(pending[0], 0x88, "{pending:x?}");
        assert_eq!(&pending[2..4], code.0.to_be_bytes());
        // sticky
        assert_eq!(ws.handle_input(b"more"), r);
        assert!(ws.is_closed());
    }

    #[test]
    fn hostile_frames_get_the_rfc_close_codes() {
        // unmasked client frame
        closes_with(&[0x82, 0x01, 0x00], CloseCode::PROTOCOL_ERROR);
        // a 2^63 length
        closes_with(
            &[0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4],
            CloseCode::PROTOCOL_ERROR,
        );
        // longer than configured
        closes_with(
            &[0x82, 0xff, 0, 0, 0, 1, 0, 0, 0, 0, 1, 2, 3, 4],
            CloseCode::TOO_BIG,
        );
        // bad opcode
        closes_with(&[0x85, 0x80, 1, 2, 3, 4], CloseCode::PROTOCOL_ERROR);
        // fragmented control frame, oversized control frame
        closes_with(&masked(9, false, b"x"), CloseCode::PROTOCOL_ERROR);
        closes_with(&masked(9, true, &[0; 126]), CloseCode::PROTOCOL_ERROR);
        // continuation without a message; a new message inside a fragmented one
        closes_with(&masked(0, true, b"x"), CloseCode::PROTOCOL_ERROR);
        let mut two = masked(2, false, b"a");
        two.extend(masked(2, true, b"b"));
        closes_with(&two, CloseCode::PROTOCOL_ERROR);
        // text frames
        closes_with(&masked(1, true, b"hello"), CloseCode::UNSUPPORTED_DATA);
        // close frames: one byte, a reserved code, a reason that is not UTF-8
        closes_with(&masked(8, true, &[3]), CloseCode::PROTOCOL_ERROR);
        closes_with(&masked(8, true, &[0x03, 0xed]), CloseCode::PROTOCOL_ERROR); // 1005
        closes_with(
            &masked(8, true, &[0x03, 0xe8, 0xff]),
            CloseCode::INVALID_PAYLOAD,
        );
    }

    #[test]
    fn hostile_heads_get_http_errors_and_never_grow() {
        let cfg = WsConfig::default();
        // never-ending header: refused at max_head, having buffered no more than that
        let mut ws = WebSocket::server(cfg);
        let mut fed = 0;
        let junk = [b'a'; 1000];
        let r = loop {
            match ws.handle_input(&junk) {
                Ok(n) => {
                    fed += n;
                    assert!(fed <= cfg.max_head);
                }
                Err(e) => break e,
            }
        };
        assert_eq!(r, WsError::BadRequest(431, "request head too long"));
        assert!(ws.pending_transmit().starts_with(b"HTTP/1.1 431 "));
        // too many headers
        let mut req = Vec::from(&b"GET / HTTP/1.1\r\n"[..]);
        for i in 0..40 {
            req.extend_from_slice(alloc::format!("X-{i}: y\r\n").as_bytes());
        }
        req.extend_from_slice(b"\r\n");
        let mut ws = WebSocket::server(cfg);
        assert!(matches!(
            ws.handle_input(&req),
            Err(WsError::BadRequest(431, _))
        ));
        // wrong version: 426 with the version we speak
        let bad = REQUEST
            .windows(4)
            .position(|w| w == b": 13")
            .map(|p| [&REQUEST[..p], b": 8\r\n\r\n"].concat())
            .unwrap();
        let mut ws = WebSocket::server(cfg);
        assert!(matches!(
            ws.handle_input(&bad),
            Err(WsError::BadRequest(426, _))
        ));
        let t = core::str::from_utf8(ws.pending_transmit()).unwrap();
        assert!(t.contains("Sec-WebSocket-Version: 13\r\n"), "{t}");
        // no key; garbage
        let nokey = b"GET / HTTP/1.1\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\
            Sec-WebSocket-Version: 13\r\n\r\n";
        let mut ws = WebSocket::server(cfg);
        assert!(matches!(
            ws.handle_input(nokey),
            Err(WsError::BadRequest(400, _))
        ));
        let mut ws = WebSocket::server(cfg);
        assert!(matches!(
            ws.handle_input(b"\x16\x03\x01\x02\x00\r\n\r\n"),
            Err(WsError::BadRequest(400, _))
        ));
    }

    #[test]
    fn plain_requests_go_to_the_application_with_keep_alive() {
        let mut ws = WebSocket::server(WsConfig::default());
        let two = b"GET /vnc.html?x=1 HTTP/1.1\r\nHost: h\r\n\r\nHEAD /app.js HTTP/1.0\r\n\r\n";
        let n = ws.handle_input(two).unwrap();
        let Some(Event::Http(req)) = ws.poll_event() else {
            panic!("no request")
        };
        assert_eq!(
            (req.method.as_str(), req.path(), req.keep_alive),
            ("GET", "/vnc.html", true)
        );
        assert_eq!(req.header("HOST"), Some(&b"h"[..]));
        // input waits while the application answers
        assert_eq!(ws.handle_input(&two[n..]), Ok(0));
        ws.http_done(true).unwrap();
        ws.handle_input(&two[n..]).unwrap();
        let Some(Event::Http(req)) = ws.poll_event() else {
            panic!("no second request")
        };
        assert_eq!((req.method.as_str(), req.keep_alive), ("HEAD", false));
        ws.http_done(false).unwrap();
        assert!(ws.is_closed());
    }

    #[test]
    fn backpressure_stops_input_at_the_payload_limit() {
        let mut ws = WebSocket::server(WsConfig::default().with_payload_limit(10));
        ws.handle_input(REQUEST).unwrap();
        let f = masked(2, true, &[1u8; 30]);
        let n = ws.handle_input(&f).unwrap();
        assert_eq!(ws.payload().len(), 10);
        assert_eq!(ws.handle_input(&f[n..]), Ok(0));
        ws.consume_payload(10);
        let m = ws.handle_input(&f[n..]).unwrap();
        assert_eq!(ws.payload().len(), 10);
        ws.consume_payload(10);
        ws.handle_input(&f[n + m..]).unwrap();
        assert_eq!(ws.payload(), [1u8; 10]);
    }

    #[test]
    fn client_and_server_talk() {
        let cfg = WsConfig::default();
        let mut c = WebSocket::client(cfg, "127.0.0.1:5700", "/", Some("binary"), [9; 16], [3; 32]);
        let mut s = WebSocket::server(cfg);
        let req = c.pending_transmit().to_vec();
        c.transmit_done(req.len());
        assert_eq!(s.handle_input(&req), Ok(req.len()));
        assert!(matches!(s.poll_event(), Some(Event::Open { .. })));
        let resp = s.pending_transmit().to_vec();
        s.transmit_done(resp.len());
        // the server's first bytes may share the read with the response
        let mut out = vec![0u8; 64];
        let n = s.frame(b"RFB 003.008\n", &mut out).unwrap();
        let mut wire = resp.clone();
        wire.extend_from_slice(&out[..n]);
        let used = c.handle_input(&wire).unwrap();
        assert_eq!(used, resp.len());
        assert!(matches!(c.poll_event(), Some(Event::Open { .. })));
        c.handle_input(&wire[used..]).unwrap();
        assert_eq!(c.payload(), b"RFB 003.008\n");
        // client frames are masked, and two frames get different masks
        let mut f1 = vec![0u8; 64];
        let n1 = c.frame(b"RFB 003.008\n", &mut f1).unwrap();
        let mut f2 = vec![0u8; 64];
        let n2 = c.frame(b"RFB 003.008\n", &mut f2).unwrap();
        assert_ne!(f1[..n1], f2[..n2]);
        s.handle_input(&f1[..n1]).unwrap();
        s.handle_input(&f2[..n2]).unwrap();
        assert_eq!(s.payload(), b"RFB 003.008\nRFB 003.008\n");
        // the client closes; the server answers; the client sees the answer
        c.close(CloseCode::NORMAL, "done");
        let close = c.pending_transmit().to_vec();
        c.transmit_done(close.len());
        s.handle_input(&close).unwrap();
        let answer = s.pending_transmit().to_vec();
        assert!(s.is_closed());
        c.handle_input(&answer).unwrap();
        assert!(matches!(c.poll_event(), Some(Event::Closed { .. })));
        assert!(c.is_closed());
    }

    #[test]
    fn a_client_refuses_a_wrong_accept_and_a_refusal() {
        let cfg = WsConfig::default();
        let mut c = WebSocket::client(cfg, "h", "/", None, [1; 16], [0; 32]);
        let r = c.handle_input(
            b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
              Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
        );
        assert_eq!(r, Err(WsError::Handshake("wrong Sec-WebSocket-Accept")));
        let mut c = WebSocket::client(cfg, "h", "/", None, [1; 16], [0; 32]);
        let r = c.handle_input(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(r, Err(WsError::Refused(404)));
        // a masked server frame
        let mut c = WebSocket::client(cfg, "h", "/", None, [1; 16], [0; 32]);
        let key = BASE64.encode([1u8; 16]);
        let resp = alloc::format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\n\r\n",
            http::accept_key(key.as_bytes())
        );
        c.handle_input(resp.as_bytes()).unwrap();
        assert!(matches!(
            c.handle_input(&masked(2, true, b"x")),
            Err(WsError::Protocol(CloseCode::PROTOCOL_ERROR, _))
        ));
    }

    proptest::proptest! {
        #[test]
        fn any_fragmentation_and_cutting_gives_the_same_stream(
            messages in proptest::collection::vec(
                (proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300), 1usize..4),
                1..8,
            ),
            cut in 1usize..64,
        ) {
            let mut wire = Vec::new();
            let mut expect = Vec::new();
            for (data, parts) in &messages {
                expect.extend_from_slice(data);
                let step = data.len().div_ceil(*parts).max(1);
                let pieces: Vec<&[u8]> = if data.is_empty() { vec![&data[..]] } else { data.chunks(step).collect() };
                for (i, p) in pieces.iter().enumerate() {
                    let op = if i == 0 { 2 } else { 0 };
                    wire.extend(masked(op, i + 1 == pieces.len(), p));
                    if i == 0 {
                        wire.extend(masked(9, true, b"p"));
                    }
                }
            }
            let mut ws = open();
            let mut got = Vec::new();
            for c in wire.chunks(cut) {
                let mut c = c;
                while !c.is_empty() {
                    let n = ws.handle_input(c).unwrap();
                    got.extend_from_slice(ws.payload());
                    let p = ws.payload().len();
                    ws.consume_payload(p);
                    c = &c[n..];
                }
            }
            proptest::prop_assert_eq!(got, expect);
        }

        #[test]
        fn hostile_bytes_never_panic_or_grow(
            junk in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..2000),
            cut in 1usize..64,
        ) {
            let cfg = WsConfig::default().with_payload_limit(100).with_max_frame(1000);
            let mut ws = WebSocket::server(cfg);
            ws.handle_input(REQUEST).unwrap();
            for c in junk.chunks(cut) {
                match ws.handle_input(c) {
                    Ok(_) => {
                        proptest::prop_assert!(ws.payload().len() <= 100);
                        let p = ws.payload().len();
                        ws.consume_payload(p / 2);
                    }
                    Err(_) => break,
                }
            }
            let _ = ws.handle_eof();
        }
    }
}
