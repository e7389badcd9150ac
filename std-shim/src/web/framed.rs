//! What both ends of a WebSocket do with the session inside it: ask for TLS first (wss), hand
//! it the unmasked payload, frame what it writes, and send what the layer itself has to say
//! first.

use anyhow::{Result, anyhow};
use tls_glue::ws::WebSocket;

use crate::pump::{Control, OutBuf, Processed, Session};

/// Framed at most this much of the inner session's output per WebSocket frame.
const FRAME_CHUNK: usize = 1 << 20;

/// A WebSocket and the output buffer of the session inside it.
pub(crate) struct Framed {
    pub(crate) ws: WebSocket,
    inner_out: OutBuf,
    /// wss, and the pump has not been asked for TLS yet.
    tls_pending: bool,
}

impl Framed {
    /// `wss`: the WebSocket runs inside TLS from the first byte.
    pub(crate) fn new(ws: WebSocket, wss: bool) -> Self {
        Self {
            ws,
            inner_out: OutBuf::default(),
            tls_pending: wss,
        }
    }

    /// For wss, the first `process` asks the pump for TLS before anything else: this is that
    /// answer, once.
    pub(crate) fn tls_first(&mut self) -> Option<Processed> {
        std::mem::take(&mut self.tls_pending).then_some(Processed {
            consumed: 0,
            control: Control::StartTls,
        })
    }

    /// Appends what the layer wants sent (the handshake, pongs, close frames, HTTP errors).
    pub(crate) fn flush(&mut self, out: &mut OutBuf) {
        let p = self.ws.pending_transmit();
        if !p.is_empty() {
            out.extend(p);
            let n = p.len();
            self.ws.transmit_done(n);
        }
    }

    /// Runs `inner` on the payload received so far, consumes what it used and frames what it
    /// wrote (also when it failed: its last words go out). Returns its result.
    pub(crate) fn pass<S: Session + ?Sized>(
        &mut self,
        inner: &mut S,
        out: &mut OutBuf,
    ) -> Result<Processed> {
        let r = inner.process(self.ws.payload(), &mut self.inner_out);
        if let Ok(p) = &r {
            self.ws.consume_payload(p.consumed);
        }
        let framed = self.frame_inner(out);
        let p = r?;
        framed?;
        Ok(p)
    }

    /// Frames what the inner session wrote (its file segments read in).
    pub(crate) fn frame_inner(&mut self, out: &mut OutBuf) -> Result<()> {
        self.inner_out
            .materialize()
            .map_err(|e| anyhow!("read a file segment: {e}"))?;
        let data = self.inner_out.as_slice();
        for chunk in data.chunks(FRAME_CHUNK) {
            let n = self.ws.framed_len(chunk.len());
            let w = self
                .ws
                .frame(chunk, out.tail(n))
                .map_err(|e| anyhow!("{e}"))?;
            out.commit(w);
        }
        self.inner_out.clear();
        Ok(())
    }

    /// The inner session's output buffer (for calls other than `process`, e.g. shutdown).
    pub(crate) fn inner_out(&mut self) -> &mut OutBuf {
        &mut self.inner_out
    }
}
