//! The one step function every I/O loop shares.
//!
//! A [`Pump`] sits between a transport and a protocol [`Session`]: it owns the send buffers,
//! hands received bytes to the session through a [`tls_glue::Link`] (plaintext until the
//! session asks for TLS at an exact byte, TLS records after: STARTTLS, VeNCrypt), and tells
//! the loop what to do next: send these bytes, receive into this buffer, or stop. The blocking
//! loop ([`run_blocking`](crate::io::blocking::run_blocking)) and the tokio loop
//! ([`run_tokio`](crate::io::tokio::run_tokio)) are a few dozen lines each around it, so no
//! protocol or TLS logic exists twice; the firmware's embassy driver runs the same `Link`.
//!
//! The order of one step: the session's plaintext output (with file ranges, `sendfile`) goes
//! out before anything else; then ciphertext ready to send (TLS's own records — handshake,
//! alerts, `close_notify` — first, then the session's output encrypted 1 MiB at a time); then
//! a pending fatal error; then input to the session, until it consumes nothing; then a read.

mod buffers;

use std::time::Instant;

use anyhow::{Context, Result, anyhow, bail};
pub use buffers::{FileSegment, OutBuf};
pub use tls_glue::Control;
use tls_glue::{GrowingBuffer, Link, SwitchError, TlsLayer};

/// The result of [`Session::process`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Processed {
    /// Input bytes consumed.
    pub consumed: usize,
    /// What to do next.
    pub control: Control,
}

/// Who is at the other end of a TLS connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer certificate's subject DN (RFC 4514), if it sent one.
    pub subject: Option<String>,
    /// Negotiated protocol version and cipher suite, for logs.
    pub cipher: String,
}

impl PeerInfo {
    /// What `layer` negotiated and whom it verified.
    pub fn of(layer: &TlsLayer) -> Self {
        Self {
            subject: layer.peer_subject_dn(),
            cipher: format!(
                "{} {} {}",
                layer.protocol_version().unwrap_or("?"),
                layer.cipher_suite().unwrap_or("?"),
                layer.key_exchange_group().unwrap_or("")
            )
            .trim_end()
            .to_string(),
        }
    }
}

impl std::fmt::Display for PeerInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.cipher)?;
        if let Some(s) = &self.subject {
            write!(f, ", client {s}")?;
        }
        Ok(())
    }
}

/// A protocol conversation driven by bytes (an NBD or VNC server or client session).
pub trait Session {
    /// Handles buffered plaintext input and appends output to `out`. Stops early when `out`
    /// holds a lot (the pump sends it and calls again).
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed>;
    /// The TLS handshake the session asked for is complete and the peer verified.
    fn tls_established(&mut self, peer: &PeerInfo) -> Result<()>;
    /// The peer closed its side. `Ok` if that ends the conversation cleanly.
    fn eof(&mut self) -> Result<()>;
    /// When `timeout` should be called.
    fn deadline(&self) -> Option<Instant> {
        None
    }
    /// The deadline passed.
    fn timeout(&mut self, _now: Instant) {}
    /// The server is shutting down: finish what was received (flush writes), append anything
    /// to say; the pump then closes the connection cleanly.
    fn shutdown(&mut self, _out: &mut OutBuf) -> Result<()> {
        Ok(())
    }
}

/// Makes the TLS layer for a connection whose session asked for TLS (a server or a client
/// layer from a shared configuration; see [`crate::tls`]).
pub type TlsStarter = Box<dyn FnMut() -> Result<TlsLayer> + Send>;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Closing,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    SendPlain(usize),
    SendFile,
    SendWire,
    Receive,
    Done,
}

/// What the I/O loop must do next.
#[derive(Debug)]
pub enum Action<'a> {
    /// Write all of these bytes, then call [`Pump::sent`].
    Send(&'a [u8]),
    /// Like `Send`, but a file segment follows at once: the transport may hold the bytes back
    /// to send them in the same segments as the file data (`MSG_MORE`).
    SendMore(&'a [u8]),
    /// Send `len` bytes of this file from this offset (`sendfile`), then call [`Pump::sent`].
    SendFile(&'a std::fs::File, u64, usize),
    /// Read into this buffer, giving up at the deadline (`None`: wait for input), then call
    /// [`Pump::received`] (or [`Pump::timeout`] when the deadline passed). The deadline is
    /// taken after the session processed its input, so a timer it just set counts.
    Receive(&'a mut [u8], Option<Instant>),
    /// The conversation is over; close the transport.
    Done,
}

/// The receive buffer starts this small and doubles up to the session's limit.
const RX_INITIAL: usize = 4 * 1024;

/// The step function: buffers, the plaintext-then-TLS [`Link`] and a session, without I/O.
pub struct Pump<S> {
    session: S,
    link: Link<GrowingBuffer>,
    out: OutBuf,
    /// Bytes ready for the wire: TLS records, or nothing before TLS (reused without zeroing).
    wire: OutBuf,
    /// `out` holds plaintext to send as it is; sent up to `send_pos` and `send_file` segments.
    send_plain: bool,
    send_pos: usize,
    send_file: usize,
    /// `out` holds plaintext for TLS, encrypted up to `encrypted` so far (a batch at a time).
    encrypt_pending: bool,
    encrypted: usize,
    starter: Option<TlsStarter>,
    state: State,
    /// More input may be processable without reading (the session consumed something).
    again: bool,
    stop: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
    /// A fatal error, reported once the alert telling the peer why has been sent.
    failed: Option<anyhow::Error>,
}

/// Output above this is sent before the session processes more input.
pub const HIGH_WATER: usize = 4 << 20;

fn tls_err(e: impl std::fmt::Display) -> anyhow::Error {
    anyhow!("TLS: {e}")
}

impl<S: Session> Pump<S> {
    /// A pump with an input buffer that grows up to `rx_capacity` bytes (at least what the
    /// session needs for one whole message; at least 64 KiB); `starter` makes the TLS layer
    /// when the session asks for one.
    pub fn new(session: S, rx_capacity: usize, starter: Option<TlsStarter>) -> Self {
        Self {
            session,
            link: Link::new(GrowingBuffer::new(RX_INITIAL, rx_capacity.max(64 * 1024))),
            out: OutBuf::default(),
            wire: OutBuf::default(),
            send_plain: false,
            send_pos: 0,
            send_file: 0,
            encrypt_pending: false,
            encrypted: 0,
            starter,
            state: State::Running,
            again: true,
            stop: None,
            failed: None,
        }
    }

    /// Watches a stop flag: the loops check it at least every
    /// [`crate::io::listen::STOP_POLL`] and then shut the session down cleanly.
    pub fn watch(&mut self, stop: std::sync::Arc<std::sync::atomic::AtomicBool>) {
        self.stop = Some(stop);
    }

    fn stop_requested(&self) -> bool {
        self.stop
            .as_ref()
            .is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst))
    }

    /// When the loop must wake up next: the session's deadline, or the stop-flag poll.
    pub fn wake_at(&self) -> Option<Instant> {
        let poll = self
            .stop
            .as_ref()
            .map(|_| Instant::now() + crate::io::listen::STOP_POLL);
        match (self.session.deadline(), poll) {
            (Some(d), Some(p)) => Some(d.min(p)),
            (d, p) => d.or(p),
        }
    }

    /// If a stop was asked, lets the session finish and starts closing. Called by the loops.
    fn check_stop(&mut self) -> Result<()> {
        if self.stop_requested() && self.state == State::Running {
            self.stop = None;
            if !self.link.is_handshaking() {
                self.session.shutdown(&mut self.out)?;
                self.queue_output()?;
            }
            self.state = State::Closing;
        }
        Ok(())
    }

    /// Queues what the session produced: encrypted once TLS is up, else sent as it is
    /// (before TLS starts, and the STARTTLS answer itself).
    fn queue_output(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        if self.link.is_handshaking() {
            bail!("the session produced output during the TLS handshake");
        }
        if self.link.is_tls() {
            self.out.materialize()?;
            self.encrypt_pending = true;
        } else {
            self.send_plain = true;
        }
        Ok(())
    }

    /// Encrypts the next [`buffers::TLS_BATCH`] of `out` into `wire`.
    fn encrypt_batch(&mut self) -> Result<()> {
        let end = (self.encrypted + buffers::TLS_BATCH).min(self.out.len());
        let plain = &self.out.as_slice()[self.encrypted..end];
        let need = self.link.sealed_len(plain.len());
        let n = self
            .link
            .seal(plain, self.wire.tail(need))
            .map_err(tls_err)?;
        self.wire.commit(n);
        self.encrypted = end;
        if end == self.out.len() {
            self.out.clear();
            self.encrypted = 0;
            self.encrypt_pending = false;
        }
        Ok(())
    }

    /// Moves TLS's own pending bytes (handshake, alerts) into `wire`; whether there were any.
    fn take_tls_output(&mut self) -> bool {
        let p = self.link.pending_transmit();
        if p.is_empty() {
            return false;
        }
        let n = p.len();
        self.wire.extend(p);
        self.link.transmit_done(n);
        true
    }

    /// The session.
    pub fn session(&self) -> &S {
        &self.session
    }

    /// Ends the pump, returning the session.
    pub fn into_session(self) -> S {
        self.session
    }

    /// The deadline (or the stop poll) passed without input.
    pub fn timeout(&mut self, now: Instant) -> Result<()> {
        if self.stop_requested() {
            return self.check_stop();
        }
        if self.session.deadline().is_some_and(|d| now >= d) {
            self.session.timeout(now);
            self.again = true;
        }
        Ok(())
    }

    /// The next thing to do.
    pub fn step(&mut self) -> Result<Action<'_>> {
        let next = self.decide()?;
        let until = self.wake_at();
        Ok(match next {
            Next::SendPlain(end) => {
                let bytes = &self.out.as_slice()[self.send_pos..end];
                if self
                    .out
                    .files()
                    .get(self.send_file)
                    .is_some_and(|f| f.at == end)
                {
                    Action::SendMore(bytes)
                } else {
                    Action::Send(bytes)
                }
            }
            Next::SendFile => {
                let f = &self.out.files()[self.send_file];
                Action::SendFile(&f.file, f.offset, f.len)
            }
            Next::SendWire => Action::Send(self.wire.as_slice()),
            Next::Receive => Action::Receive(self.link.recv_buffer(), until),
            Next::Done => Action::Done,
        })
    }

    fn decide(&mut self) -> Result<Next> {
        self.check_stop()?;
        loop {
            if self.send_plain {
                let files = self.out.files();
                match files.get(self.send_file) {
                    Some(f) if f.at == self.send_pos => return Ok(Next::SendFile),
                    Some(f) => return Ok(Next::SendPlain(f.at)),
                    None if self.send_pos < self.out.len() => {
                        return Ok(Next::SendPlain(self.out.len()));
                    }
                    None => {
                        self.send_plain = false;
                        self.send_pos = 0;
                        self.send_file = 0;
                        self.out.clear();
                        continue;
                    }
                }
            }
            if !self.wire.is_empty() {
                return Ok(Next::SendWire);
            }
            if self.take_tls_output() {
                continue;
            }
            if let Some(e) = self.link.error()
                && self.failed.is_none()
                && self.state != State::Done
            {
                // The alert telling the peer why went out with the last send.
                self.failed = Some(tls_err(e));
            }
            if let Some(e) = self.failed.take() {
                self.state = State::Done;
                return Err(e);
            }
            if self.encrypt_pending {
                self.encrypt_batch()?;
                continue;
            }
            match self.state {
                State::Done => return Ok(Next::Done),
                State::Closing => {
                    self.state = State::Done;
                    let n = self.link.close(self.wire.tail(256)).map_err(tls_err)?;
                    self.wire.commit(n);
                    continue;
                }
                State::Running => {}
            }
            if self.link.is_handshaking() {
                if self.link.recv_buffer().is_empty() {
                    bail!("TLS receive buffer full during the handshake");
                }
                return Ok(Next::Receive);
            }
            if self.link.poll_established() {
                let peer = self
                    .link
                    .layer()
                    .map(PeerInfo::of)
                    .context("TLS layer missing")?;
                log::debug!("TLS established: {}", peer.cipher);
                self.session.tls_established(&peer)?;
                self.again = true;
                continue;
            }
            if !self.again {
                if self.link.peer_closed() {
                    self.session.eof()?;
                    self.state = State::Done;
                    continue;
                }
                // Empty means input is waiting that the session did not take.
                if self.link.recv_buffer().is_empty() {
                    bail!("peer sent more than the session can buffer");
                }
                return Ok(Next::Receive);
            }
            let p = self.session.process(self.link.input(), &mut self.out)?;
            self.link.consume(p.consumed);
            self.again = p.consumed > 0;
            match p.control {
                Control::Continue => {}
                Control::Close => self.state = State::Closing,
                Control::StartTls => {
                    // The answer that asked for TLS goes out in the clear, before the switch.
                    self.queue_output()?;
                    let starter = self
                        .starter
                        .as_mut()
                        .context("TLS requested but not configured")?;
                    let layer = starter()?;
                    // Whatever already arrived after the switch point is ciphertext; a failure
                    // is reported once the alert (if any) went out.
                    if let Err(e) = self.link.start_tls(layer) {
                        self.failed = Some(match e {
                            SwitchError::Tls(e) => tls_err(e),
                            e => anyhow!("{e}"),
                        });
                    }
                    continue;
                }
            }
            self.queue_output()?;
        }
    }

    /// Whether the pump is sending its last bytes (close_notify) before closing: a peer that
    /// already hung up (EPIPE, ECONNRESET) is then no error.
    pub fn finishing(&self) -> bool {
        self.state == State::Done
    }

    /// The bytes of the last `Send` or `SendFile` went out.
    pub fn sent(&mut self) {
        if self.send_plain {
            match self.out.files().get(self.send_file) {
                Some(f) if f.at == self.send_pos => self.send_file += 1,
                Some(f) => self.send_pos = f.at,
                None => self.send_pos = self.out.len(),
            }
        } else {
            self.wire.clear();
        }
    }

    /// `n` bytes arrived in the last `Receive` buffer (0: end of stream).
    pub fn received(&mut self, n: usize) -> Result<()> {
        if n == 0 {
            if self.link.is_handshaking() {
                bail!("connection closed during the TLS handshake");
            }
            if self.link.is_tls() && !self.link.peer_closed() {
                log::debug!("connection closed without TLS close_notify");
            }
            self.session.eof()?;
            self.state = State::Done;
            let unparsed = self.link.input().len();
            if unparsed > 0 {
                bail!("connection closed in the middle of a message ({unparsed} bytes unparsed)");
            }
            return Ok(());
        }
        self.again = true;
        // A TLS error (a refused certificate, say) is reported once the alert the layer
        // queued for the peer has been sent (`decide`).
        let _ = self.link.received(n);
        Ok(())
    }
}
