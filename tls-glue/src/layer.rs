//! [`TlsLayer`]: one TLS connection in the Sans-IO shape of the protocol cores.

use alloc::string::String;
use alloc::vec::Vec;

use rustls::client::UnbufferedClientConnection;
use rustls::server::UnbufferedServerConnection;
use rustls::unbuffered::{ConnectionState, EncryptError as RlEncryptError, UnbufferedStatus};

use crate::config::{ConfigError, TlsClientConfig, TlsServerConfig, server_name};
use crate::error::{EncryptError, InsufficientSize, TlsError, map_rustls};
use crate::x509::Cert;

/// Largest TLS record on the wire: header + 2^14 plaintext + 2048 expansion (TLS 1.2 limit).
pub const MAX_RECORD_LEN: usize = 5 + 16_384 + 2_048;
/// Plaintext carried by one full record.
pub const MAX_FRAGMENT_LEN: usize = 16_384;
/// Upper bound of per-record overhead added by [`TlsLayer::encrypt`] (header, content type,
/// AEAD tag, TLS 1.2 explicit nonce).
pub const RECORD_OVERHEAD: usize = 5 + 1 + 16 + 8;

/// The receive buffer grows up to this during the handshake if a handshake message spans
/// more records than it holds (rustls accepts handshake messages up to 64 KiB).
pub const MAX_HANDSHAKE_BUFFER: usize = 64 * 1024 + 4 * MAX_RECORD_LEN;

/// The receive buffer never starts smaller than this.
const MIN_RX_CAPACITY: usize = 1024;

/// Buffer sizing of a [`TlsLayer`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct LayerOptions {
    /// Initial ciphertext receive buffer, in bytes (at least 1 KiB). Larger lets one transport
    /// read carry several records. When a record does not fit, the buffer grows: to
    /// [`MAX_RECORD_LEN`] (one maximum record always fits), and during the handshake up to
    /// [`rx_limit`](Self::rx_limit). A peer that sends only small records (a VNC viewer) then
    /// never costs a full record buffer.
    pub rx_capacity: usize,
    /// Most the receive buffer may grow to during the handshake, when one handshake message
    /// (e.g. a long certificate chain) spans more records than it holds; at least
    /// [`MAX_RECORD_LEN`]. Bounds what a peer can make the layer allocate.
    pub rx_limit: usize,
    /// Stop decrypting once this much plaintext waits unconsumed (backpressure: then
    /// `handle_ciphertext` consumes less than offered).
    pub plaintext_limit: usize,
    /// Hand application data to the core straight from rustls' record buffer
    /// ([`TlsLayer::deliver_plaintext`]) and copy only what the core leaves unconsumed, instead
    /// of copying every record into the layer's plaintext buffer first. Saves up to a record
    /// of heap per connection (e.g. NBD writes arrive in full 16 KiB records). Records are then
    /// decrypted one at a time when `deliver_plaintext` asks, and
    /// [`TlsLayer::plaintext`] shows only the unconsumed remainder: use `deliver_plaintext`.
    pub deliver_in_place: bool,
}

impl Default for LayerOptions {
    fn default() -> Self {
        Self {
            rx_capacity: 4 * MAX_RECORD_LEN,
            rx_limit: MAX_HANDSHAKE_BUFFER,
            plaintext_limit: 256 * 1024,
            deliver_in_place: false,
        }
    }
}

impl LayerOptions {
    /// The smallest working buffers (one record), for microcontrollers.
    pub fn small() -> Self {
        Self {
            rx_capacity: MAX_RECORD_LEN,
            rx_limit: MAX_HANDSHAKE_BUFFER,
            plaintext_limit: MAX_FRAGMENT_LEN,
            deliver_in_place: false,
        }
    }

    /// Buffers that start small and grow only to what the peer's records need, the handshake
    /// bounded to one record's worth of buffer, records delivered in place: for
    /// microcontrollers with little heap. `plaintext_limit` must hold the largest message the
    /// protocol core needs whole.
    pub fn minimal(plaintext_limit: usize) -> Self {
        Self {
            rx_capacity: 4096,
            rx_limit: MAX_RECORD_LEN,
            plaintext_limit,
            deliver_in_place: true,
        }
    }
}

enum Conn {
    Server(UnbufferedServerConnection),
    Client(UnbufferedClientConnection),
}

enum Step {
    Continue,
    /// A decrypted record waits inside rustls (in-place delivery).
    AppData,
    Blocked,
    Writable,
    PeerClosed,
    Closed,
}

/// Runs rustls once over the layer's unconsumed ciphertext, server or client alike: `$body`
/// gets rustls' state as `$state` and the layer's plaintext and transmit buffers as `$plain`
/// and `$tx`, and returns `(bytes its records discarded, result)`. Drops every discarded byte
/// from the receive buffer and yields the result.
///
/// Always hands rustls the same unconsumed bytes: its handshake deframer remembers positions
/// inside that buffer (an empty slice makes it panic).
macro_rules! process_records {
    ($layer:expr, |$state:ident, $plain:ident, $tx:ident| $body:expr) => {{
        let TlsLayer {
            conn,
            rx,
            rx_start,
            rx_end,
            plain: $plain,
            tx: $tx,
            ..
        } = $layer;
        let buf = &mut rx[*rx_start..*rx_end];
        let (discard, result) = match conn {
            Conn::Server(c) => {
                let UnbufferedStatus {
                    discard,
                    state: $state,
                } = c.process_tls_records(buf);
                let (records, result) = $body;
                (discard + records, result)
            }
            Conn::Client(c) => {
                let UnbufferedStatus {
                    discard,
                    state: $state,
                } = c.process_tls_records(buf);
                let (records, result) = $body;
                (discard + records, result)
            }
        };
        *rx_start = (*rx_start + discard).min(*rx_end);
        result
    }};
}

/// Handles one rustls state; `plain` receives application data (unless `defer`: then a
/// decrypted record stays in rustls), `tx` handshake bytes. Returns what the records read
/// discarded.
fn handle_state<D>(
    state: Result<ConnectionState<'_, '_, D>, rustls::Error>,
    plain: &mut Plain,
    tx: &mut Vec<u8>,
    defer: bool,
) -> (usize, Result<Step, rustls::Error>) {
    let mut discard = 0;
    let state = match state {
        Ok(s) => s,
        Err(e) => return (0, Err(e)),
    };
    let step = match state {
        ConnectionState::ReadTraffic(_) if defer => Ok(Step::AppData),
        ConnectionState::ReadTraffic(mut r) => {
            while let Some(rec) = r.next_record() {
                match rec {
                    Ok(rec) => {
                        discard += rec.discard;
                        plain.append(rec.payload);
                    }
                    Err(e) => return (discard, Err(e)),
                }
            }
            Ok(Step::Continue)
        }
        ConnectionState::EncodeTlsData(mut e) => {
            let start = tx.len();
            let mut want = 1024;
            loop {
                tx.resize(start + want, 0);
                match e.encode(&mut tx[start..]) {
                    Ok(n) => {
                        tx.truncate(start + n);
                        break Ok(Step::Continue);
                    }
                    Err(rustls::unbuffered::EncodeError::InsufficientSize(s)) => {
                        want = s.required_size;
                    }
                    Err(rustls::unbuffered::EncodeError::AlreadyEncoded) => {
                        tx.truncate(start);
                        break Ok(Step::Continue);
                    }
                }
            }
        }
        ConnectionState::TransmitTlsData(t) => {
            t.done();
            Ok(Step::Continue)
        }
        ConnectionState::BlockedHandshake => Ok(Step::Blocked),
        ConnectionState::WriteTraffic(_) => Ok(Step::Writable),
        ConnectionState::PeerClosed => Ok(Step::PeerClosed),
        ConnectionState::Closed => Ok(Step::Closed),
        _ => Ok(Step::Blocked),
    };
    (discard, step)
}

/// Decrypted plaintext waiting for the protocol core: `buf[start..]`, kept contiguous.
struct Plain {
    buf: Vec<u8>,
    start: usize,
}

impl Plain {
    fn len(&self) -> usize {
        self.buf.len() - self.start
    }

    fn append(&mut self, data: &[u8]) {
        if self.start > 0 && self.buf.len() + data.len() > self.buf.capacity() {
            // compact instead of growing: move the unconsumed tail to the front
            self.buf.copy_within(self.start.., 0);
            self.buf.truncate(self.buf.len() - self.start);
            self.start = 0;
        }
        // Grow to what is needed, not to the next power of two: bounded by the limit plus
        // one record, this is the largest buffer of a session on a small heap.
        self.buf.reserve_exact(data.len());
        self.buf.extend_from_slice(data);
    }

    fn consume(&mut self, n: usize) {
        self.start += n.min(self.len());
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
        }
    }
}

/// One TLS connection (server or client) over a transport the caller owns.
///
/// * ciphertext in: [`handle_ciphertext`](Self::handle_ciphertext) (copies) or
///   [`ciphertext_buffer`](Self::ciphertext_buffer) + [`commit_ciphertext`](Self::commit_ciphertext)
///   (the driver reads from the socket straight into the layer's buffer);
/// * plaintext out: [`plaintext`](Self::plaintext), then [`consume_plaintext`](Self::consume_plaintext);
/// * handshake/alert bytes out: [`poll_transmit`](Self::poll_transmit) (or
///   [`pending_transmit`](Self::pending_transmit) + [`transmit_done`](Self::transmit_done));
/// * application data out: [`encrypt`](Self::encrypt), which also prepends any pending
///   handshake bytes, so its output can go straight to the transport.
///
/// See the crate documentation for the driver loop and the drain order.
pub struct TlsLayer {
    conn: Conn,
    rx: Vec<u8>,
    rx_start: usize,
    rx_end: usize,
    plain: Plain,
    tx: Vec<u8>,
    tx_start: usize,
    plaintext_limit: usize,
    rx_limit: usize,
    in_place: bool,
    /// In-place delivery: a decrypted record waits inside rustls.
    record_pending: bool,
    error: Option<TlsError>,
    peer_closed: bool,
    sent_close: bool,
}

impl core::fmt::Debug for TlsLayer {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("TlsLayer")
            .field("server", &self.is_server())
            .field("handshaking", &self.is_handshaking())
            .field("ciphertext_buffered", &(self.rx_end - self.rx_start))
            .field("plaintext", &self.plain.len())
            .field("pending_transmit", &(self.tx.len() - self.tx_start))
            .field("error", &self.error)
            .finish()
    }
}

impl TlsLayer {
    /// A server connection with default buffers.
    pub fn server(config: &TlsServerConfig) -> Result<Self, ConfigError> {
        Self::server_with(config, LayerOptions::default())
    }

    /// A server connection with explicit buffer sizes.
    pub fn server_with(config: &TlsServerConfig, opts: LayerOptions) -> Result<Self, ConfigError> {
        let conn = UnbufferedServerConnection::new(config.inner.clone()).map_err(|e| {
            ConfigError(alloc::format!("cannot start a TLS server connection: {e}"))
        })?;
        Ok(Self::make(Conn::Server(conn), opts))
    }

    /// A client connection to `server_name` (DNS name or IP address, checked against the
    /// server certificate's subject alternative names).
    pub fn client(config: &TlsClientConfig, server_name: &str) -> Result<Self, ConfigError> {
        Self::client_with(config, server_name, LayerOptions::default())
    }

    /// A client connection with explicit buffer sizes.
    pub fn client_with(
        config: &TlsClientConfig,
        name: &str,
        opts: LayerOptions,
    ) -> Result<Self, ConfigError> {
        let conn = UnbufferedClientConnection::new(config.inner.clone(), server_name(name)?)
            .map_err(|e| {
                ConfigError(alloc::format!("cannot start a TLS client connection: {e}"))
            })?;
        let mut layer = Self::make(Conn::Client(conn), opts);
        // the ClientHello is ready at once
        let _ = layer.process();
        Ok(layer)
    }

    fn make(conn: Conn, opts: LayerOptions) -> Self {
        Self {
            conn,
            rx: alloc::vec![0; opts.rx_capacity.max(MIN_RX_CAPACITY)],
            rx_start: 0,
            rx_end: 0,
            plain: Plain {
                buf: Vec::new(),
                start: 0,
            },
            tx: Vec::new(),
            tx_start: 0,
            plaintext_limit: opts.plaintext_limit.max(1),
            rx_limit: opts.rx_limit.max(MAX_RECORD_LEN),
            in_place: opts.deliver_in_place,
            record_pending: false,
            error: None,
            peer_closed: false,
            sent_close: false,
        }
    }

    fn is_server(&self) -> bool {
        matches!(self.conn, Conn::Server(_))
    }

    fn common(&self) -> &rustls::CommonState {
        match &self.conn {
            Conn::Server(c) => c,
            Conn::Client(c) => c,
        }
    }

    // ------------------------------------------------------------------ input

    /// Feeds ciphertext from the transport. Returns how many bytes were taken: less than
    /// offered when the receive buffer is full because the protocol core has not consumed
    /// [`plaintext`](Self::plaintext) (offer the rest again after it has). Partial records
    /// are kept inside the layer.
    pub fn handle_ciphertext(&mut self, incoming: &[u8]) -> Result<usize, TlsError> {
        let mut taken = 0;
        loop {
            if let Some(e) = self.error {
                return Err(e);
            }
            let space = self.ciphertext_buffer();
            let n = space.len().min(incoming.len() - taken);
            space[..n].copy_from_slice(&incoming[taken..taken + n]);
            taken += n;
            self.commit_ciphertext(n)?;
            if taken == incoming.len() || n == 0 {
                return Ok(taken);
            }
        }
    }

    /// Free space at the end of the receive buffer, for reading from the transport without
    /// a copy; report what was written with [`commit_ciphertext`](Self::commit_ciphertext).
    /// Empty while the layer waits for the core to consume plaintext.
    pub fn ciphertext_buffer(&mut self) -> &mut [u8] {
        if self.plain.len() >= self.plaintext_limit || self.error.is_some() {
            return &mut [];
        }
        if self.rx_start > 0 && self.rx_end == self.rx.len() {
            // compaction keeps the bytes rustls has not discarded at the same offsets
            // relative to the slice we pass it
            self.rx.copy_within(self.rx_start..self.rx_end, 0);
            self.rx_end -= self.rx_start;
            self.rx_start = 0;
        }
        if self.rx_end == self.rx.len() && self.rx.len() < self.rx_growth_cap() {
            // The buffer holds part of a record that does not fit (it starts at offset 0
            // after the compaction above): grow. After the handshake straight to one maximum
            // record; during it a handshake message spanning several records must fit whole
            // (e.g. a long certificate chain), so double up to the limit.
            let new = if self.is_handshaking() {
                (self.rx.len() * 2).clamp(MAX_RECORD_LEN.min(self.rx_limit), self.rx_limit)
            } else {
                MAX_RECORD_LEN
            };
            self.rx.resize(new, 0);
        }
        &mut self.rx[self.rx_end..]
    }

    /// How far the receive buffer may grow now.
    fn rx_growth_cap(&self) -> usize {
        if self.is_handshaking() {
            self.rx_limit
        } else {
            MAX_RECORD_LEN
        }
    }

    /// Declares `n` bytes written into [`ciphertext_buffer`](Self::ciphertext_buffer) and
    /// processes them.
    pub fn commit_ciphertext(&mut self, n: usize) -> Result<(), TlsError> {
        self.rx_end = (self.rx_end + n).min(self.rx.len());
        self.process()
    }

    /// The transport reached end of file. `Ok` only after the peer's `close_notify`;
    /// otherwise the error tells whether the handshake was cut short.
    pub fn handle_eof(&mut self) -> Result<(), TlsError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        if self.peer_closed {
            return Ok(());
        }
        let e = if self.is_handshaking() {
            TlsError::ClosedDuringHandshake
        } else {
            TlsError::UnexpectedEof
        };
        self.error = Some(e);
        Err(e)
    }

    fn fail(&mut self, e: rustls::Error) -> TlsError {
        let mapped = map_rustls(&e, self.is_server());
        self.error = Some(mapped);
        // rustls queues an alert for the peer; collect it for poll_transmit.
        // Exactly one more call: it pops the queued alert before deframing anything. A second
        // call would deframe the offending bytes again and trip rustls' "one fatal alert"
        // debug assertion.
        let _ = process_records!(self, |state, plain, tx| handle_state(
            state, plain, tx, false
        ));
        self.record_pending = false;
        mapped
    }

    /// Runs rustls over the buffered ciphertext until it needs more input.
    fn process(&mut self) -> Result<(), TlsError> {
        if let Some(e) = self.error {
            return Err(e);
        }
        let mut guard = 0u32;
        loop {
            guard += 1;
            if self.plain.len() >= self.plaintext_limit || self.record_pending || guard > 100_000 {
                break;
            }
            let defer = self.in_place;
            let step = process_records!(self, |state, plain, tx| handle_state(
                state, plain, tx, defer
            ));
            match step {
                Err(e) => return Err(self.fail(e)),
                Ok(Step::Continue) => {}
                Ok(Step::AppData) => {
                    self.record_pending = true;
                    break;
                }
                Ok(Step::PeerClosed) => {
                    self.peer_closed = true;
                }
                Ok(Step::Blocked | Step::Writable | Step::Closed) => break,
            }
        }
        if self.rx_start == self.rx_end {
            self.rx_start = 0;
            self.rx_end = 0;
        }
        Ok(())
    }

    // ------------------------------------------------------------------ plaintext

    /// Decrypted data not yet consumed by the protocol core, contiguous: what the core left
    /// unconsumed last time followed by what arrived since. With
    /// [`LayerOptions::deliver_in_place`] only what the core left unconsumed (records not yet
    /// delivered wait inside rustls): use [`deliver_plaintext`](Self::deliver_plaintext).
    pub fn plaintext(&self) -> &[u8] {
        &self.plain.buf[self.plain.start..]
    }

    /// The core consumed `n` bytes from the front of [`plaintext`](Self::plaintext).
    pub fn consume_plaintext(&mut self, n: usize) {
        self.plain.consume(n);
        if self.plain.len() < self.plaintext_limit && self.rx_end > self.rx_start {
            // records held back by backpressure can be decrypted now
            let _ = self.process();
        }
    }

    /// Hands the plaintext to `core_input` (e.g. a closure calling the core's `handle_input`
    /// and returning its consumed count) until there is none left or the core consumes
    /// nothing. Returns the total consumed.
    ///
    /// With [`LayerOptions::deliver_in_place`], records are decrypted here, one at a time,
    /// and handed over straight from rustls' buffer; what the core does not consume is kept
    /// (copied) and offered first next time, joined with the next record when the core needs
    /// more to make progress.
    pub fn deliver_plaintext<E>(
        &mut self,
        mut core_input: impl FnMut(&[u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let mut total = 0;
        loop {
            if !self.plaintext().is_empty() {
                let n = core_input(self.plaintext())?;
                if n > 0 {
                    self.consume_plaintext(n);
                    total += n;
                    continue;
                }
                if !self.record_pending {
                    break;
                }
                // The core needs more than the remainder: join the next record to it.
                self.take_record(|_| Ok::<usize, E>(0))?;
                continue;
            }
            if !self.record_pending {
                break;
            }
            total += self.take_record(|payload| {
                let mut used = 0;
                while used < payload.len() {
                    match core_input(&payload[used..])? {
                        0 => break,
                        n => used += n,
                    }
                }
                Ok(used)
            })?;
        }
        Ok(total)
    }

    /// In-place delivery: pops the record waiting inside rustls, lets `use_payload` consume a
    /// prefix, keeps the rest in the plaintext buffer, then lets rustls decrypt the next one.
    fn take_record<E>(
        &mut self,
        use_payload: impl FnOnce(&[u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        self.record_pending = false;
        let mut result = Ok(0);
        let mut use_payload = Some(use_payload);
        let step = process_records!(self, |state, plain, tx| match state {
            Ok(ConnectionState::ReadTraffic(mut r)) => match r.next_record() {
                Some(Ok(rec)) => {
                    let payload = rec.payload;
                    let used = match use_payload.take() {
                        Some(f) => f(payload),
                        None => Ok(0),
                    };
                    let keep = match &used {
                        Ok(n) => (*n).min(payload.len()),
                        Err(_) => payload.len(),
                    };
                    plain.append(&payload[keep..]);
                    result = used;
                    (rec.discard, Ok(Step::Continue))
                }
                Some(Err(e)) => (0, Err(e)),
                None => (0, Ok(Step::Continue)),
            },
            other => handle_state(other, plain, tx, false),
        });
        match step {
            Err(e) => {
                self.fail(e);
            }
            Ok(Step::PeerClosed) => self.peer_closed = true,
            Ok(_) => {}
        }
        // The next record, if one is buffered.
        let _ = self.process();
        result
    }

    // ------------------------------------------------------------------ output

    /// Copies pending handshake/alert/ticket bytes into `out`. `Ok(None)`: nothing pending.
    /// A short `out` takes a prefix (the rest stays pending); an empty one gives
    /// `InsufficientSize`.
    pub fn poll_transmit(&mut self, out: &mut [u8]) -> Result<Option<usize>, InsufficientSize> {
        let pending = self.pending_transmit();
        if pending.is_empty() {
            return Ok(None);
        }
        if out.is_empty() {
            return Err(InsufficientSize {
                required: pending.len(),
            });
        }
        let n = pending.len().min(out.len());
        out[..n].copy_from_slice(&pending[..n]);
        self.transmit_done(n);
        Ok(Some(n))
    }

    /// Pending handshake/alert bytes, to write straight from the layer's buffer; then call
    /// [`transmit_done`](Self::transmit_done) with what the transport accepted.
    pub fn pending_transmit(&self) -> &[u8] {
        &self.tx[self.tx_start..]
    }

    /// `n` bytes of [`pending_transmit`](Self::pending_transmit) were sent.
    pub fn transmit_done(&mut self, n: usize) {
        self.tx_start = (self.tx_start + n).min(self.tx.len());
        if self.tx_start == self.tx.len() {
            if self.is_handshaking() {
                self.tx.clear();
            } else {
                // The handshake flight (certificates) was the big one: give it back.
                self.tx = Vec::new();
            }
            self.tx_start = 0;
        }
    }

    /// Whether [`poll_transmit`](Self::poll_transmit) has bytes.
    pub fn wants_transmit(&self) -> bool {
        self.tx_start < self.tx.len()
    }

    /// An upper bound of what [`encrypt`](Self::encrypt) writes for `plaintext_len` bytes
    /// (records are filled to [`MAX_FRAGMENT_LEN`]), including pending handshake bytes.
    pub fn encrypted_len(&self, plaintext_len: usize) -> usize {
        let records = plaintext_len.div_ceil(MAX_FRAGMENT_LEN);
        self.pending_transmit().len() + plaintext_len + records * RECORD_OVERHEAD + 64
    }

    /// Runs `f` with rustls' `WriteTraffic` handle (after moving pending handshake output
    /// into `tx` and plaintext into the plaintext buffer).
    fn with_write(
        &mut self,
        f: impl FnOnce(&mut dyn WriteOps, &mut [u8]) -> Result<usize, RlEncryptError>,
        out: &mut [u8],
    ) -> Result<usize, EncryptError> {
        enum Out {
            Wrote(Result<usize, RlEncryptError>),
            Blocked,
            Closed,
            Other(Result<Step, rustls::Error>),
        }
        let mut f = Some(f);
        for _ in 0..64 {
            let pending = self.pending_transmit().len();
            if out.len() < pending {
                return Err(EncryptError::InsufficientSize(InsufficientSize {
                    required: self.encrypted_len(0),
                }));
            }
            let r = process_records!(self, |state, plain, tx| match state {
                Ok(ConnectionState::WriteTraffic(mut w)) => match f.take() {
                    Some(f) => (0, Out::Wrote(f(&mut w, &mut out[pending..]))),
                    None => (0, Out::Blocked),
                },
                Ok(ConnectionState::BlockedHandshake) => (0, Out::Blocked),
                Ok(ConnectionState::Closed) => (0, Out::Closed),
                other => {
                    // A record waiting for in-place delivery is copied now:
                    // rustls writes only once nothing is left to read.
                    let (records, r) = handle_state(other, plain, tx, false);
                    (records, Out::Other(r))
                }
            });
            match r {
                Out::Wrote(r) => return self.finish_write(r, out, pending),
                Out::Blocked => return Err(EncryptError::HandshakeNotComplete),
                Out::Closed => return Err(EncryptError::Closed),
                Out::Other(Err(e)) => return Err(EncryptError::Failed(self.fail(e))),
                Out::Other(Ok(Step::PeerClosed)) => {
                    self.record_pending = false;
                    self.peer_closed = true;
                }
                Out::Other(Ok(Step::Continue)) => self.record_pending = false,
                Out::Other(Ok(_)) => return Err(EncryptError::HandshakeNotComplete),
            }
        }
        Err(EncryptError::Failed(TlsError::Internal))
    }

    fn finish_write(
        &mut self,
        r: Result<usize, RlEncryptError>,
        out: &mut [u8],
        pending: usize,
    ) -> Result<usize, EncryptError> {
        match r {
            Ok(n) => {
                out[..pending].copy_from_slice(&self.tx[self.tx_start..self.tx_start + pending]);
                self.transmit_done(pending);
                Ok(pending + n)
            }
            Err(RlEncryptError::InsufficientSize(s)) => {
                Err(EncryptError::InsufficientSize(InsufficientSize {
                    required: pending + s.required_size,
                }))
            }
            Err(RlEncryptError::EncryptExhausted) => {
                self.error = Some(TlsError::Internal);
                Err(EncryptError::Failed(TlsError::Internal))
            }
        }
    }

    fn write_precheck(&mut self, out_len: usize) -> Result<usize, EncryptError> {
        if let Some(e) = self.error {
            return Err(EncryptError::Failed(e));
        }
        if self.sent_close {
            return Err(EncryptError::Closed);
        }
        if self.is_handshaking() {
            return Err(EncryptError::HandshakeNotComplete);
        }
        let pending = self.pending_transmit().len();
        if out_len < pending {
            return Err(EncryptError::InsufficientSize(InsufficientSize {
                required: self.encrypted_len(0),
            }));
        }
        Ok(pending)
    }

    /// Encrypts `plaintext` into `out` as full-size records (one call may produce many), after
    /// any pending handshake bytes; returns the bytes written, all to be sent in order.
    /// On `InsufficientSize` nothing was written or consumed; [`encrypted_len`](Self::encrypted_len)
    /// gives a sufficient size in advance.
    pub fn encrypt(&mut self, plaintext: &[u8], out: &mut [u8]) -> Result<usize, EncryptError> {
        let pending = self.write_precheck(out.len())?;
        if plaintext.is_empty() {
            out[..pending].copy_from_slice(&self.tx[self.tx_start..self.tx_start + pending]);
            self.transmit_done(pending);
            return Ok(pending);
        }
        self.with_write(|w, o| w.encrypt_data(plaintext, o), out)
    }

    /// Writes our `close_notify` alert (after pending bytes) into `out`; send it, then close
    /// or half-close the transport.
    pub fn close_notify(&mut self, out: &mut [u8]) -> Result<usize, EncryptError> {
        self.write_precheck(out.len())?;
        let n = self.with_write(|w, o| w.close(o), out)?;
        self.sent_close = true;
        Ok(n)
    }

    // ------------------------------------------------------------------ state

    /// Whether the handshake is still running.
    pub fn is_handshaking(&self) -> bool {
        self.common().is_handshaking()
    }

    /// Whether the driver should read more from the transport: no error, the peer has not
    /// closed, and there is room (the core keeps up with the plaintext).
    pub fn wants_input(&self) -> bool {
        self.error.is_none()
            && !self.peer_closed
            && self.plain.len() < self.plaintext_limit
            && (self.rx_start > 0
                || self.rx_end < self.rx.len()
                || self.rx.len() < self.rx_growth_cap())
    }

    /// Whether the peer sent `close_notify` (no more plaintext will come).
    pub fn peer_closed(&self) -> bool {
        self.peer_closed
    }

    /// The fatal error, if one happened.
    pub fn error(&self) -> Option<TlsError> {
        self.error
    }

    /// `"TLSv1.3"` or `"TLSv1.2"` once negotiated.
    pub fn protocol_version(&self) -> Option<&'static str> {
        match self.common().protocol_version()? {
            rustls::ProtocolVersion::TLSv1_3 => Some("TLSv1.3"),
            rustls::ProtocolVersion::TLSv1_2 => Some("TLSv1.2"),
            _ => Some("unknown"),
        }
    }

    /// IANA name of the cipher suite, e.g. `"TLS13_AES_256_GCM_SHA384"`.
    pub fn cipher_suite(&self) -> Option<&'static str> {
        self.common()
            .negotiated_cipher_suite()
            .map(|s| s.suite().as_str().unwrap_or("unknown"))
    }

    /// Key exchange group, e.g. `"X25519MLKEM768"`.
    pub fn key_exchange_group(&self) -> Option<&'static str> {
        self.common()
            .negotiated_key_exchange_group()
            .map(|g| g.name().as_str().unwrap_or("unknown"))
    }

    /// The negotiated ALPN protocol.
    pub fn alpn_protocol(&self) -> Option<&[u8]> {
        self.common().alpn_protocol()
    }

    /// The peer's certificate chain (DER, leaf first), once received and verified.
    pub fn peer_certificates(&self) -> Option<impl Iterator<Item = &[u8]>> {
        self.common()
            .peer_certificates()
            .map(|c| c.iter().map(|d| d.as_ref()))
    }

    /// Checks the peer certificate's subject DN against `acl` after the handshake, for a
    /// driver that decides per service rather than in the configuration
    /// ([`ServerOptions::acl`](crate::ServerOptions::acl) refuses during the handshake, with
    /// a TLS alert). `Err(AccessDenied)` also when the peer sent no certificate.
    pub fn check_acl(&self, acl: &crate::Acl) -> Result<(), TlsError> {
        match self.peer_subject_dn() {
            Some(dn) if acl.is_allowed(&dn) => Ok(()),
            _ => Err(TlsError::AccessDenied),
        }
    }

    /// The peer certificate's subject DN as gnutls/QEMU print it (RFC 4514 escaping,
    /// certificate order), e.g. `C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com`,
    /// for ACLs and logs.
    pub fn peer_subject_dn(&self) -> Option<String> {
        let leaf = self.common().peer_certificates()?.first()?;
        Cert::parse(leaf.as_ref()).ok().map(|c| c.subject_dn())
    }
}

/// The two writes the layer makes through rustls' `WriteTraffic`.
trait WriteOps {
    fn encrypt_data(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, RlEncryptError>;
    fn close(&mut self, out: &mut [u8]) -> Result<usize, RlEncryptError>;
}

impl<D> WriteOps for rustls::unbuffered::WriteTraffic<'_, D> {
    fn encrypt_data(&mut self, data: &[u8], out: &mut [u8]) -> Result<usize, RlEncryptError> {
        self.encrypt(data, out)
    }
    fn close(&mut self, out: &mut [u8]) -> Result<usize, RlEncryptError> {
        self.queue_close_notify(out)
    }
}
