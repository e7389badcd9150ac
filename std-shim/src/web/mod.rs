//! The VNC console for browsers: a WebSocket listener (`--vnc-websocket ADDR`, as QEMU's
//! `websocket=`), `wss://` with the server's credentials when TLS is on, and static files on the
//! same port (`--web DIR`, e.g. Debian's `/usr/share/novnc`).
//!
//! A [`WebSession`] is a [`Session`] around the RFB session: it starts TLS at the first byte
//! (wss), runs [`tls_glue::ws::WebSocket`] over the plaintext, answers plain HTTP requests from
//! [`files::WebRoot`], and after the upgrade hands the unmasked payload to a
//! [`VncServerSession`] and frames what it writes. The RFB session offers the security types
//! of the TCP port with the TLS ones mapped to what they are inside wss (X509Vnc → VncAuth,
//! X509Plain → Plain, X509None → None): the browser authenticates inside the TLS the
//! WebSocket already runs in (or with a client certificate when the credentials verify peers),
//! never with less than the TCP port asks.

pub mod client;
pub mod files;
mod framed;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use tls_glue::TlsServerConfig;
use tls_glue::ws::{CloseCode, Event, WebSocket, WsConfig, error_response};

use crate::io::Endpoint;
use crate::pump::{Control, OutBuf, PeerInfo, Processed, Session};
use crate::services::{BoxedSession, Service};
use crate::vnc::security::SecName;
use crate::vnc::server::{VncServerSession, VncShared};

pub use files::WebRoot;

/// A connection that has not finished a request or the upgrade by then is closed.
pub const HTTP_IDLE: Duration = Duration::from_secs(30);

/// The security types a WebSocket connection offers for a TCP port that offers `tcp`: inside
/// wss the X509 types become the authentication they carry (the TLS is the WebSocket's); over
/// plain ws the TCP port must not use TLS at all.
pub fn websocket_security(tcp: &[SecName], wss: bool) -> Result<Vec<SecName>> {
    let mut out = Vec::new();
    for n in tcp {
        let m = match (n, wss) {
            (SecName::X509None, true) => SecName::None,
            (SecName::X509Vnc, true) => SecName::VncAuth,
            (SecName::X509Plain, true) => SecName::Plain,
            (n, false) if n.is_x509() => {
                bail!("the VNC port uses TLS ({n}): the WebSocket listener needs it too (wss)")
            }
            (n, _) => *n,
        };
        if !out.contains(&m) {
            out.push(m);
        }
    }
    Ok(out)
}

/// Where and how the WebSocket listener runs.
pub struct WebServiceOptions {
    /// Where to listen.
    pub endpoints: Vec<Endpoint>,
    /// wss: the TLS configuration (the server's credentials); `None`: ws.
    pub tls: Option<TlsServerConfig>,
    /// Static files for requests that are not upgrades.
    pub web: Option<WebRoot>,
    /// Most connections at once.
    pub max_connections: usize,
    /// Listen backlog.
    pub backlog: Option<u32>,
}

/// The WebSocket service for the VNC console whose connections share `shared` (viewers,
/// input, the failed-login throttle) with its TCP port; it offers the TCP port's security
/// types as [`websocket_security`] maps them.
pub fn service(shared: Arc<VncShared>, o: WebServiceOptions) -> Result<Service> {
    let security = websocket_security(&shared.config().security, o.tls.is_some())?;
    let scheme = if o.tls.is_some() { "wss" } else { "ws" };
    let names: Vec<String> = security.iter().map(ToString::to_string).collect();
    let mut what = format!("VNC over {scheme} ({})", names.join(", "));
    if let Some(w) = &o.web {
        what.push_str(&format!(", files from {}", w.dir().display()));
    }
    let wss = o.tls.is_some();
    let web = o.web.map(Arc::new);
    let security = Arc::new(security);
    Ok(Service {
        label: "vnc-websocket",
        what,
        endpoints: o.endpoints,
        max_connections: o.max_connections.max(1),
        backlog: o.backlog,
        tls: o.tls,
        factory: Arc::new(move |peer| {
            let session = WebSession::new(shared.clone(), peer, wss, web.clone(), security.clone());
            Ok((Box::new(session) as BoxedSession, 64 * 1024))
        }),
        refusal: None,
    })
}

/// One browser connection: TLS (wss), HTTP and WebSocket, then RFB.
pub struct WebSession {
    link: framed::Framed,
    shared: Arc<VncShared>,
    security: Arc<Vec<SecName>>,
    web: Option<Arc<WebRoot>>,
    peer: String,
    vnc: Option<VncServerSession>,
    idle_until: Instant,
    /// Close once what is queued went out.
    closing: bool,
}

impl WebSession {
    /// A connection from `peer`.
    pub fn new(
        shared: Arc<VncShared>,
        peer: String,
        wss: bool,
        web: Option<Arc<WebRoot>>,
        security: Arc<Vec<SecName>>,
    ) -> Self {
        Self {
            link: framed::Framed::new(WebSocket::server(WsConfig::default()), wss),
            shared,
            security,
            web,
            peer,
            vnc: None,
            idle_until: Instant::now() + HTTP_IDLE,
            closing: false,
        }
    }

    fn close(&mut self, code: CloseCode, why: &str, out: &mut OutBuf) -> Processed {
        self.link.ws.close(code, why);
        self.link.flush(out);
        self.closing = true;
        Processed {
            consumed: 0,
            control: Control::Close,
        }
    }

    fn on_event(&mut self, e: Event, out: &mut OutBuf) -> Result<Option<Control>> {
        match e {
            Event::Http(req) => {
                self.idle_until = Instant::now() + HTTP_IDLE;
                let a = match &self.web {
                    Some(w) => w.answer(&req, out),
                    None => {
                        // No --web: only upgrades are served here.
                        out.extend(&error_response(
                            426,
                            "this port serves the VNC console over WebSocket only",
                        ));
                        self.link.ws.http_done(false).map_err(|e| anyhow!("{e}"))?;
                        log::info!("{}: {} {} → 426", self.peer, req.method, req.target);
                        return Ok(Some(Control::Close));
                    }
                };
                log::info!(
                    "{}: {} {} → {} ({} bytes)",
                    self.peer,
                    req.method,
                    req.target,
                    a.status,
                    a.body
                );
                let keep = req.keep_alive && a.status != 414;
                self.link.ws.http_done(keep).map_err(|e| anyhow!("{e}"))?;
                if !keep {
                    return Ok(Some(Control::Close));
                }
            }
            Event::Open { protocol } => {
                let names: Vec<String> = self.security.iter().map(ToString::to_string).collect();
                log::info!(
                    "{}: WebSocket open{} (VNC security {})",
                    self.peer,
                    protocol
                        .map(|p| format!(", subprotocol {p}"))
                        .unwrap_or_default(),
                    names.join(", ")
                );
                let v = VncServerSession::with_security(
                    self.shared.clone(),
                    self.peer.clone(),
                    &self.security,
                )?;
                self.vnc = Some(v);
            }
            Event::Closed { code } => {
                log::info!(
                    "{}: WebSocket closed by the browser ({})",
                    self.peer,
                    code.map(|c| c.to_string())
                        .unwrap_or_else(|| "no status".into())
                );
                if let Some(v) = self.vnc.as_mut() {
                    // the viewer is gone: release what it held, as on EOF
                    let _ = v.eof();
                }
                self.link.flush(out);
                return Ok(Some(Control::Close));
            }
        }
        Ok(None)
    }
}

impl Session for WebSession {
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed> {
        if let Some(p) = self.link.tls_first() {
            return Ok(p);
        }
        if self.closing {
            return Ok(Processed {
                consumed: input.len(),
                control: Control::Close,
            });
        }
        let mut consumed = 0;
        loop {
            let n = match self.link.ws.handle_input(&input[consumed..]) {
                Ok(n) => n,
                Err(e) => {
                    log::warn!("{}: {e}", self.peer);
                    if let Some(v) = self.vnc.as_mut() {
                        let _ = v.eof();
                    }
                    self.link.flush(out);
                    self.closing = true;
                    return Ok(Processed {
                        consumed: input.len(),
                        control: Control::Close,
                    });
                }
            };
            consumed += n;
            self.link.flush(out);
            let mut events = false;
            while let Some(e) = self.link.ws.poll_event() {
                events = true;
                if let Some(c) = self.on_event(e, out)? {
                    self.link.flush(out);
                    self.closing = true;
                    return Ok(Processed {
                        consumed: input.len(),
                        control: c,
                    });
                }
            }
            // The RFB session: the payload so far, and whatever it wants to send anyway.
            if let Some(v) = self.vnc.as_mut() {
                let p = match self.link.pass(v, out) {
                    Ok(p) => p,
                    Err(e) => {
                        log::warn!("{}: {e:#}", self.peer);
                        return Ok(self.close(CloseCode::POLICY, "", out));
                    }
                };
                match p.control {
                    Control::Continue => {}
                    Control::Close => return Ok(self.close(CloseCode::NORMAL, "", out)),
                    Control::StartTls => {
                        log::warn!("{}: TLS inside a WebSocket is not offered", self.peer);
                        return Ok(self.close(CloseCode::POLICY, "", out));
                    }
                }
                if p.consumed > 0 && !self.link.ws.payload().is_empty() {
                    continue;
                }
            }
            if (n == 0 && !events) || consumed == input.len() {
                break;
            }
        }
        Ok(Processed {
            consumed,
            control: Control::Continue,
        })
    }

    fn tls_established(&mut self, peer: &PeerInfo) -> Result<()> {
        log::info!("{}: TLS {peer} (wss)", self.peer);
        Ok(())
    }

    fn eof(&mut self) -> Result<()> {
        let vnc = self.vnc.as_mut().map(|v| v.eof());
        match self.link.ws.handle_eof() {
            Ok(()) => vnc.unwrap_or(Ok(())),
            Err(e) if self.closing => {
                log::debug!("{}: {e}", self.peer);
                Ok(())
            }
            Err(e) => {
                if let Some(Err(v)) = vnc {
                    log::debug!("{}: {v:#}", self.peer);
                }
                Err(anyhow!("{e}"))
            }
        }
    }

    fn deadline(&self) -> Option<Instant> {
        match &self.vnc {
            Some(v) => v.deadline(),
            None if self.closing => None,
            None => Some(self.idle_until),
        }
    }

    fn timeout(&mut self, now: Instant) {
        match self.vnc.as_mut() {
            Some(v) => v.timeout(now),
            None if now >= self.idle_until => {
                log::info!(
                    "{}: no request or upgrade for {} s: closing",
                    self.peer,
                    HTTP_IDLE.as_secs()
                );
                self.closing = true;
            }
            None => {}
        }
    }

    fn shutdown(&mut self, out: &mut OutBuf) -> Result<()> {
        if let Some(v) = self.vnc.as_mut() {
            v.shutdown(self.link.inner_out())?;
            self.link.frame_inner(out)?;
        }
        self.link
            .ws
            .close(CloseCode::GOING_AWAY, "server shutting down");
        self.link.flush(out);
        Ok(())
    }
}
