//! The hand-over from plaintext to TLS that every driver needs, as one Sans-IO state
//! machine: a connection speaks plaintext until its protocol core asks for TLS (NBD STARTTLS
//! acknowledged, a VeNCrypt X509 sub-type accepted) at an exact byte; from that byte on the
//! same connection carries TLS records.
//!
//! A [`Link`] sits between the transport and the core and knows which of the two is in
//! force:
//!
//! ```text
//!            recv_buffer / received                    input / consume / deliver
//! transport ───────────────────────────▶  Link  ───────────────────────────────▶ core
//!           ◀─────────────────────────── (plain │ TLS) ◀──────────────────────────
//!            pending_transmit (TLS's own bytes)         seal (the core's output)
//!
//!   Plain ──start_tls(layer)──▶ Handshaking ──(handshake done)──▶ Secure ──close()──▶ closing
//! ```
//!
//! * Before TLS, received bytes wait in the link's [`Storage`] and the core reads them with
//!   [`Link::input`] / [`Link::consume`]; [`Link::seal`] copies the core's output as it is.
//! * When the core asks for TLS ([`Control::StartTls`]), the driver first sends everything the
//!   core produced so far (in the clear: the STARTTLS answer itself), then calls
//!   [`Link::start_tls`] with a fresh [`TlsLayer`]. Bytes already received after the switch
//!   point go to the layer as ciphertext, never back to the core as plaintext.
//! * During the handshake [`Link::input`] is empty; [`Link::pending_transmit`] holds the
//!   handshake flights; reads go into the layer's buffer. [`Link::poll_established`] says,
//!   once, that the handshake completed (the peer verified): the driver then tells the core.
//! * Once secure, [`Link::input`] is decrypted plaintext and [`Link::seal`] encrypts the
//!   core's output. Alerts and key updates come out of [`Link::pending_transmit`].
//!
//! The drain order for a driver, after every read and every command: 1. send
//! [`Link::pending_transmit`] (then [`Link::transmit_done`]); 2. give [`Link::input`] to the core, drain the core's
//! `poll_transmit` through [`Link::seal`], then the core's `poll_event` (acting on
//! [`Control`]) and `poll_timeout`; 3. read the transport into [`Link::recv_buffer`]. A TLS
//! error is fatal: send [`Link::pending_transmit`] once more (it may hold the alert telling the
//! peer why), then close.
//!
//! std-shim's pump (blocking and tokio) and the firmware's embassy driver are both this loop
//! around a `Link`.

use crate::error::{EncryptError, InsufficientSize, TlsError};
use crate::layer::TlsLayer;

/// What a protocol session asks of its driver after handling input or a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Go on: more input, or call again if something was consumed.
    Continue,
    /// Send what the session produced so far in the clear, then run TLS on this connection
    /// from the next byte on ([`Link::start_tls`]).
    StartTls,
    /// Send what is pending, then close the connection (TLS `close_notify` first).
    Close,
}

/// Why [`Link::start_tls`] failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SwitchError {
    /// TLS is already in place: the core asked for it twice (the link is unchanged).
    AlreadyTls,
    /// The peer sent more after the switch point than a TLS handshake buffer holds.
    TooMuchAfterSwitch,
    /// The bytes after the switch point are not an acceptable TLS handshake.
    Tls(TlsError),
}

impl core::fmt::Display for SwitchError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            SwitchError::AlreadyTls => f.write_str("TLS requested twice"),
            SwitchError::TooMuchAfterSwitch => {
                f.write_str("too much data right after the TLS switch")
            }
            SwitchError::Tls(e) => core::fmt::Display::fmt(e, f),
        }
    }
}

impl core::error::Error for SwitchError {}

/// Where a [`Link`] keeps plaintext received before TLS starts.
pub trait Storage {
    /// The whole buffer.
    fn bytes(&mut self) -> &mut [u8];
    /// The whole buffer, to read.
    fn bytes_ref(&self) -> &[u8];
    /// Makes the buffer larger (keeping its contents); `false` if it cannot grow.
    fn grow(&mut self) -> bool {
        false
    }
}

impl Storage for &mut [u8] {
    fn bytes(&mut self) -> &mut [u8] {
        self
    }
    fn bytes_ref(&self) -> &[u8] {
        self
    }
}

/// A heap buffer that starts small and doubles up to a limit, so an idle connection costs
/// little and a message as large as the limit still fits.
#[derive(Debug, Clone)]
pub struct GrowingBuffer {
    buf: alloc::vec::Vec<u8>,
    limit: usize,
}

impl GrowingBuffer {
    /// `initial` bytes, growing up to `limit` (at least `initial`).
    pub fn new(initial: usize, limit: usize) -> Self {
        let initial = initial.max(1);
        Self {
            buf: alloc::vec![0; initial],
            limit: limit.max(initial),
        }
    }
}

impl Storage for GrowingBuffer {
    fn bytes(&mut self) -> &mut [u8] {
        &mut self.buf
    }

    fn bytes_ref(&self) -> &[u8] {
        &self.buf
    }

    fn grow(&mut self) -> bool {
        if self.buf.len() >= self.limit {
            return false;
        }
        let n = (self.buf.len() * 2).min(self.limit);
        self.buf.resize(n, 0);
        true
    }
}

/// A connection's plaintext-then-TLS state. See the [module documentation](self).
pub struct Link<S> {
    storage: S,
    /// Plaintext pending for the core in `storage[start..end]` (before TLS).
    start: usize,
    end: usize,
    /// The last read filled all the space offered: the peer may be sending fast.
    filled: bool,
    tls: Option<TlsLayer>,
    /// The handshake's completion was reported by `poll_established`.
    reported: bool,
}

impl<S: Storage> Link<S> {
    /// A plaintext link receiving into `storage`.
    pub fn new(storage: S) -> Self {
        Self {
            storage,
            start: 0,
            end: 0,
            filled: false,
            tls: None,
            reported: false,
        }
    }

    /// Whether TLS has been put in place (handshaking or established).
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Whether the TLS handshake is running.
    pub fn is_handshaking(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsLayer::is_handshaking)
    }

    /// The TLS layer, once in place (peer certificate, cipher suite, …).
    pub fn layer(&self) -> Option<&TlsLayer> {
        self.tls.as_ref()
    }

    /// The fatal TLS error, if one happened.
    pub fn error(&self) -> Option<TlsError> {
        self.tls.as_ref().and_then(TlsLayer::error)
    }

    /// Whether the peer sent TLS `close_notify` (nothing more will come).
    pub fn peer_closed(&self) -> bool {
        self.tls.as_ref().is_some_and(TlsLayer::peer_closed)
    }

    // ------------------------------------------------------------------ input

    /// Where the transport's next read goes: the plaintext buffer before TLS (grown when a
    /// message does not fit, or the last read filled it), the TLS layer's ciphertext buffer
    /// after. Empty when nothing fits until the core consumes: if the core consumed nothing,
    /// the peer sent a message larger than the link can hold.
    pub fn recv_buffer(&mut self) -> &mut [u8] {
        if let Some(t) = self.tls.as_mut() {
            return t.ciphertext_buffer();
        }
        let len = self.storage.bytes().len();
        if self.end == len && self.start > 0 {
            self.storage.bytes().copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == len || core::mem::take(&mut self.filled) {
            // A message that does not fit, or a fast sender: a larger buffer, if it can grow
            // (the contents stay where they are).
            let _ = self.storage.grow();
        }
        &mut self.storage.bytes()[self.end..]
    }

    /// `n` bytes were read into the last [`recv_buffer`](Self::recv_buffer). A TLS error
    /// (e.g. the peer's certificate was refused) is fatal; the alert for the peer is queued.
    pub fn received(&mut self, n: usize) -> Result<(), TlsError> {
        match self.tls.as_mut() {
            Some(t) => t.commit_ciphertext(n),
            None => {
                let len = self.storage.bytes().len();
                self.end = (self.end + n).min(len);
                self.filled = n > 0 && self.end == len;
                Ok(())
            }
        }
    }

    /// The peer closed the transport. Over TLS without `close_notify` that is
    /// [`TlsError::UnexpectedEof`] (or [`TlsError::ClosedDuringHandshake`]); the core decides
    /// whether the conversation ended cleanly anyway.
    pub fn handle_eof(&mut self) -> Result<(), TlsError> {
        match self.tls.as_mut() {
            Some(t) => t.handle_eof(),
            None => Ok(()),
        }
    }

    /// Plaintext for the core: received bytes before TLS, decrypted ones after; empty during
    /// the handshake.
    pub fn input(&self) -> &[u8] {
        match &self.tls {
            Some(t) if t.is_handshaking() => &[],
            Some(t) => t.plaintext(),
            None => &self.storage.bytes_ref()[self.start..self.end],
        }
    }

    /// The core consumed `n` bytes of [`input`](Self::input).
    pub fn consume(&mut self, n: usize) {
        match self.tls.as_mut() {
            Some(t) => t.consume_plaintext(n),
            None => {
                self.start = (self.start + n).min(self.end);
                if self.start == self.end {
                    self.start = 0;
                    self.end = 0;
                }
            }
        }
    }

    /// Hands the input to `core_input` (a closure calling the core's `handle_input` and
    /// returning what it consumed) until it consumes nothing; returns the total. Over TLS
    /// records go to the core straight from rustls' buffer where the layer was made with
    /// [`LayerOptions::deliver_in_place`](crate::LayerOptions::deliver_in_place).
    pub fn deliver<E>(
        &mut self,
        mut core_input: impl FnMut(&[u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        match self.tls.as_mut() {
            Some(t) if t.is_handshaking() => Ok(0),
            Some(t) => t.deliver_plaintext(core_input),
            None => {
                let mut total = 0;
                loop {
                    let input = &self.storage.bytes_ref()[self.start..self.end];
                    if input.is_empty() {
                        return Ok(total);
                    }
                    match core_input(input)? {
                        0 => return Ok(total),
                        n => {
                            self.consume(n);
                            total += n;
                        }
                    }
                }
            }
        }
    }

    // ------------------------------------------------------------------ the switch

    /// The core asked for TLS and everything it produced before was sent: from here on the
    /// connection carries `layer`'s records. Bytes already received after the switch point
    /// are handed to the layer as ciphertext.
    ///
    /// Refused (and the link unchanged) when TLS is already in place. More bytes after the
    /// switch point than a handshake buffer holds ([`SwitchError::TooMuchAfterSwitch`]: a peer
    /// may not send past its first flight unanswered) and bytes that are not TLS
    /// ([`SwitchError::Tls`], the alert queued) are fatal.
    pub fn start_tls(&mut self, mut layer: TlsLayer) -> Result<(), SwitchError> {
        if self.tls.is_some() {
            return Err(SwitchError::AlreadyTls);
        }
        let pending = &self.storage.bytes_ref()[self.start..self.end];
        let taken = layer.handle_ciphertext(pending);
        let all = taken.map(|n| n == pending.len());
        self.start = 0;
        self.end = 0;
        self.reported = false;
        self.tls = Some(layer);
        match all {
            Ok(true) => Ok(()),
            Ok(false) => Err(SwitchError::TooMuchAfterSwitch),
            Err(e) => Err(SwitchError::Tls(e)),
        }
    }

    /// `true` once, right after the TLS handshake completed (the peer was verified): the
    /// driver then tells the core (`tls_established`).
    pub fn poll_established(&mut self) -> bool {
        let done = self
            .tls
            .as_ref()
            .is_some_and(|t| !t.is_handshaking() && t.error().is_none());
        if done && !self.reported {
            self.reported = true;
            return true;
        }
        false
    }

    // ------------------------------------------------------------------ output

    /// TLS's own bytes to send before anything else (handshake flights, alerts, key updates,
    /// `close_notify`), without a copy; then [`transmit_done`](Self::transmit_done) with what
    /// went out. Empty when nothing is pending (and always before TLS).
    pub fn pending_transmit(&self) -> &[u8] {
        self.tls.as_ref().map_or(&[], TlsLayer::pending_transmit)
    }

    /// `n` bytes of [`pending_transmit`](Self::pending_transmit) were sent.
    pub fn transmit_done(&mut self, n: usize) {
        if let Some(t) = self.tls.as_mut() {
            t.transmit_done(n);
        }
    }

    /// An upper bound of what [`seal`](Self::seal) writes for `plain_len` bytes.
    pub fn sealed_len(&self, plain_len: usize) -> usize {
        match &self.tls {
            Some(t) => t.encrypted_len(plain_len),
            None => plain_len,
        }
    }

    /// The core's output as it goes on the wire: encrypted once TLS is established, as it is
    /// before TLS (and for the STARTTLS answer, which the core produced before the switch).
    pub fn seal(&mut self, plain: &[u8], out: &mut [u8]) -> Result<usize, EncryptError> {
        match self.tls.as_mut() {
            Some(t) => t.encrypt(plain, out),
            None => {
                let dst = out
                    .get_mut(..plain.len())
                    .ok_or(EncryptError::InsufficientSize(InsufficientSize {
                        required: plain.len(),
                    }))?;
                dst.copy_from_slice(plain);
                Ok(plain.len())
            }
        }
    }

    /// [`seal`](Self::seal) without an output buffer of the driver's: once TLS is up the
    /// record goes into the link's own storage (idle by then) and the slice returned is what
    /// to send; before TLS `plain` itself is. For drivers whose memory is counted (the
    /// firmware), so one buffer serves plaintext input before TLS and ciphertext output after.
    pub fn seal_in_place<'a>(&'a mut self, plain: &'a [u8]) -> Result<&'a [u8], EncryptError> {
        match self.tls.as_mut() {
            Some(t) => {
                let out = self.storage.bytes();
                let n = t.encrypt(plain, out)?;
                Ok(&out[..n])
            }
            None => Ok(plain),
        }
    }

    /// Writes TLS `close_notify` into `out` (nothing before TLS, or when the handshake did
    /// not finish); send it, then close the transport.
    pub fn close(&mut self, out: &mut [u8]) -> Result<usize, EncryptError> {
        match self.tls.as_mut() {
            Some(t) if !t.is_handshaking() && t.error().is_none() => t.close_notify(out),
            _ => Ok(0),
        }
    }
}
