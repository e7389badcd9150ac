//! The VNC console over WebSocket inside TLS (wss, [`crate::app::VNC_WS_PORT`]) for browsers
//! (noVNC) and `kvmio vnc capture wss://…`: TCP → TLS → WebSocket → RFB.
//!
//! The service asks the driver for TLS before the first byte, with the same credentials and
//! the same required client certificate as the VNC port; then `tls_glue::ws` (the layer
//! std-shim's WebSocket listener runs) carries the [`VncService`], which offers VncAuth inside
//! (the TLS is the WebSocket's: X509Vnc becomes VncAuth, as QEMU and kvmio map it for wss).
//! Requests that are not upgrades get 426. The WebSocket's own limits are small here
//! ([`config`]): a 2 KiB request head, 2 KiB of payload waiting for the core.

use alloc::vec::Vec;

use embassy_time::Instant;
use tls_glue::TlsLayer;
use tls_glue::ws::{CloseCode, Event, WebSocket, WsConfig, WsError, error_response};

use crate::driver::{Control, PLAIN_OUT, Service, ServiceError, WS_HEADER};
use crate::vnc::VncService;

/// The WebSocket limits on the board.
fn config() -> WsConfig {
    WsConfig::new()
        .with_max_head(2048)
        .with_max_headers(32)
        .with_max_frame(1 << 20)
        .with_payload_limit(2048)
}

/// A failure for the log (defmt has no `Display`): what, and the HTTP status or close code
/// the layer answered with.
fn describe(e: WsError) -> (&'static str, u16) {
    match e {
        WsError::BadRequest(status, why) => (why, status),
        WsError::Protocol(code, why) => (why, code.0),
        WsError::UnexpectedEof => ("the peer closed in mid-frame", 1006),
        _ => ("WebSocket failure", 0),
    }
}

/// One console connection over wss.
pub struct WsVncService {
    ws: WebSocket,
    vnc: VncService,
    slot: usize,
    /// StartTls was handed to the driver.
    tls_asked: bool,
    /// The TLS handshake is done: the WebSocket's bytes flow.
    tls_up: bool,
    /// An HTTP answer (426) still to send, then the connection closes.
    http: Vec<u8>,
    /// The connection ends once everything pending is sent.
    closing: bool,
    /// The core's output, framed into the driver's buffer.
    inner: [u8; PLAIN_OUT - WS_HEADER],
}

impl WsVncService {
    /// A service for a connection accepted now on VNC session slot `slot` (shared with the
    /// desktop's damage tracking).
    pub fn new(slot: usize) -> Result<Self, ServiceError> {
        Ok(Self {
            ws: WebSocket::server(config()),
            vnc: VncService::inside_tls(slot)?,
            slot,
            tls_asked: false,
            tls_up: false,
            http: Vec::new(),
            closing: false,
            inner: [0; PLAIN_OUT - WS_HEADER],
        })
    }

    /// Hands the payload received so far to the core, as far as it takes it.
    fn feed(&mut self) -> Result<(), ServiceError> {
        while !self.closing && !self.ws.payload().is_empty() {
            let n = self.vnc.handle_input(self.ws.payload())?;
            if n == 0 {
                break;
            }
            self.ws.consume_payload(n);
        }
        Ok(())
    }

    /// Acts on what the layer reported.
    fn events(&mut self) {
        while let Some(e) = self.ws.poll_event() {
            match e {
                Event::Open { .. } => info!("ws slot {}: WebSocket open", self.slot),
                Event::Http(req) => {
                    info!(
                        "ws slot {}: {} {} (not an upgrade): 426",
                        self.slot,
                        req.method.as_str(),
                        req.target.as_str()
                    );
                    self.http = error_response(426, "this port serves the VNC console over wss");
                    let _ = self.ws.http_done(false);
                    self.closing = true;
                }
                Event::Closed { code, .. } => {
                    info!(
                        "ws slot {}: the peer closed ({})",
                        self.slot,
                        code.map_or(1005, |c| c.0)
                    );
                    self.closing = true;
                }
            }
        }
    }

    /// Starts the close handshake (once).
    fn close(&mut self, code: CloseCode) {
        if !self.closing {
            self.ws.close(code, "");
            self.closing = true;
        }
    }
}

impl Service for WsVncService {
    fn handle_input(&mut self, input: &[u8]) -> Result<usize, ServiceError> {
        if !self.tls_up || self.closing {
            return Ok(0);
        }
        let n = match self.ws.handle_input(input) {
            Ok(n) => n,
            Err(e) => {
                // The layer queued its answer (an HTTP error or a close frame with the RFC's
                // code); send it, then close.
                let (why, code) = describe(e);
                warn!("ws slot {}: {} ({})", self.slot, why, code);
                self.closing = true;
                return Ok(input.len());
            }
        };
        self.events();
        self.feed()?;
        Ok(n)
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<usize, ServiceError> {
        if let Some(n) = self.ws.poll_transmit(buf) {
            return Ok(n);
        }
        if !self.http.is_empty() {
            let n = self.http.len().min(buf.len());
            buf[..n].copy_from_slice(&self.http[..n]);
            self.http.drain(..n);
            return Ok(n);
        }
        if !self.ws.is_open() {
            return Ok(0);
        }
        // Input the core left waiting while it had output to send.
        self.feed()?;
        let n = self.vnc.poll_transmit(&mut self.inner)?;
        if n == 0 {
            return Ok(0);
        }
        self.ws
            .frame(&self.inner[..n], buf)
            .map_err(|_| ServiceError("ws: framing failed"))
    }

    fn poll_event(&mut self) -> Option<Control> {
        if !self.tls_asked {
            self.tls_asked = true;
            return Some(Control::StartTls);
        }
        if !self.closing && self.tls_up {
            match self.vnc.poll_event() {
                // The core ended the session: a normal close frame first.
                Some(Control::Close) => self.close(CloseCode::NORMAL),
                Some(c) => return Some(c),
                None => {}
            }
        }
        let drained = self.ws.pending_transmit().is_empty() && self.http.is_empty();
        (self.closing && drained).then_some(Control::Close)
    }

    fn tls_established(&mut self, tls: &TlsLayer) -> Result<(), ServiceError> {
        crate::nbd::log_tls("ws", self.slot, tls);
        self.tls_up = true;
        Ok(())
    }

    fn handle_eof(&mut self) -> Result<(), ServiceError> {
        if self.ws.handle_eof().is_err() {
            return Err(ServiceError("ws: peer closed in mid-frame"));
        }
        if self.ws.is_open() {
            self.vnc.handle_eof()?;
        }
        Ok(())
    }

    fn poll_timeout(&self) -> Option<Instant> {
        // The core's handshake deadline runs from the accept: it also bounds the upgrade.
        self.vnc.poll_timeout()
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.vnc.handle_timeout(now);
    }
}
