//! The client side: a [`Session`] (our VNC client) over WebSocket, for `kvmio vnc capture
//! ws://…` and `wss://…` (kvmio's `--vnc-websocket`, QEMU's `websocket=`, websockify).

use anyhow::{Result, anyhow, bail};
use tls_glue::ws::{CloseCode, Event, WebSocket, WsConfig};

use super::framed::Framed;
use crate::pump::{Control, OutBuf, PeerInfo, Processed, Session};

/// `inner` over a WebSocket to `host` (the `Host` header) and `path`; `wss`: TLS first (the
/// pump's TLS starter connects it).
pub struct WsClientSession<S> {
    link: Framed,
    inner: S,
    done: bool,
    tls: Option<String>,
}

impl<S: Session> WsClientSession<S> {
    /// The session; masks and the key are drawn from the OS random source.
    pub fn new(inner: S, host: &str, path: &str, wss: bool) -> Result<Self> {
        let mut nonce = [0u8; 16];
        let mut seed = [0u8; 32];
        getrandom::fill(&mut nonce).map_err(|e| anyhow!("OS random source: {e}"))?;
        getrandom::fill(&mut seed).map_err(|e| anyhow!("OS random source: {e}"))?;
        Ok(Self {
            link: Framed::new(
                WebSocket::client(WsConfig::default(), host, path, Some("binary"), nonce, seed),
                wss,
            ),
            inner,
            done: false,
            tls: None,
        })
    }

    /// The session inside, and the TLS protocol and cipher of wss.
    pub fn into_parts(self) -> (S, Option<String>) {
        (self.inner, self.tls)
    }
}

impl<S: Session> Session for WsClientSession<S> {
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed> {
        if let Some(p) = self.link.tls_first() {
            return Ok(p);
        }
        if self.done {
            return Ok(Processed {
                consumed: input.len(),
                control: Control::Close,
            });
        }
        self.link.flush(out);
        let mut consumed = 0;
        loop {
            let n = match self.link.ws.handle_input(&input[consumed..]) {
                Ok(n) => n,
                Err(e) => {
                    self.link.flush(out);
                    bail!("{e}");
                }
            };
            consumed += n;
            self.link.flush(out);
            while let Some(e) = self.link.ws.poll_event() {
                match e {
                    Event::Open { .. } => log::info!("WebSocket open"),
                    Event::Closed { code } => {
                        log::info!(
                            "the server closed the WebSocket ({})",
                            code.map(|c| c.to_string())
                                .unwrap_or_else(|| "no status".into())
                        );
                        self.link.flush(out);
                        self.done = true;
                        self.inner.eof()?;
                        return Ok(Processed {
                            consumed: input.len(),
                            control: Control::Close,
                        });
                    }
                    Event::Http(_) => bail!("an HTTP request from the server"),
                }
            }
            if self.link.ws.is_open() {
                let p = self.link.pass(&mut self.inner, out)?;
                match p.control {
                    Control::Continue => {}
                    Control::Close => {
                        self.link.ws.close(CloseCode::NORMAL, "");
                        self.link.flush(out);
                        self.done = true;
                        return Ok(Processed {
                            consumed,
                            control: Control::Close,
                        });
                    }
                    Control::StartTls => {
                        bail!(
                            "the server asks for TLS inside the WebSocket: use wss:// with \
                             a non-X509 security type instead"
                        )
                    }
                }
                if p.consumed > 0 && !self.link.ws.payload().is_empty() {
                    continue;
                }
            }
            if n == 0 || consumed == input.len() {
                break;
            }
        }
        Ok(Processed {
            consumed,
            control: Control::Continue,
        })
    }

    fn tls_established(&mut self, peer: &PeerInfo) -> Result<()> {
        log::info!("TLS {} (server certificate verified, wss)", peer.cipher);
        self.tls = Some(peer.cipher.clone());
        Ok(())
    }

    fn eof(&mut self) -> Result<()> {
        let inner = self.inner.eof();
        if self.done {
            return Ok(());
        }
        self.link.ws.handle_eof().map_err(|e| anyhow!("{e}"))?;
        inner
    }

    fn deadline(&self) -> Option<std::time::Instant> {
        self.inner.deadline()
    }

    fn timeout(&mut self, now: std::time::Instant) {
        self.inner.timeout(now)
    }
}
