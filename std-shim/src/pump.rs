//! The one step function every I/O loop shares.
//!
//! A [`Pump`] sits between a transport and a protocol [`Session`]: it owns the receive and send
//! buffers, runs the TLS layer when the session asks for it (STARTTLS, VeNCrypt), and tells the
//! loop what to do next: send these bytes, receive into this buffer, or stop. The blocking loop
//! ([`run_blocking`]) and the tokio loop ([`run_tokio`]) are a dozen lines each around it, so no
//! protocol or TLS logic exists twice.

use std::fs::File;
use std::io;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// What a session wants after processing input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Control {
    /// Keep going (more input, or call again if something was consumed).
    Continue,
    /// Send what is pending in the clear, then run a TLS handshake on this connection.
    StartTls,
    /// Send what is pending, then close the connection (TLS close_notify first).
    Close,
}

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

/// TLS as the pump needs it: ciphertext in, plaintext out (the `tls-glue` layer behind it).
pub trait SecureLink: Send {
    /// Feeds ciphertext the pump already holds; returns the bytes consumed.
    fn feed(&mut self, ciphertext: &[u8]) -> Result<usize>;
    /// Where to read ciphertext from the transport (empty while plaintext waits to be consumed).
    fn recv_buffer(&mut self) -> &mut [u8];
    /// `n` bytes were read into `recv_buffer`.
    fn commit(&mut self, n: usize) -> Result<()>;
    /// Decrypted plaintext not yet consumed.
    fn plaintext(&self) -> &[u8];
    /// Drops `n` bytes from the front of `plaintext()`.
    fn consume_plaintext(&mut self, n: usize);
    /// Appends handshake or alert bytes the layer wants sent.
    fn take_output(&mut self, out: &mut OutBuf) -> Result<()>;
    /// Encrypts `plain` into records appended to `out`.
    fn encrypt(&mut self, plain: &[u8], out: &mut OutBuf) -> Result<()>;
    /// Whether the handshake is still running.
    fn is_handshaking(&self) -> bool;
    /// Whether the peer sent close_notify.
    fn peer_closed(&self) -> bool;
    /// Appends a close_notify alert.
    fn close_notify(&mut self, out: &mut OutBuf);
    /// The verified peer (after the handshake).
    fn peer(&self) -> PeerInfo;
}

/// Makes a [`SecureLink`] for a connection whose session asked for TLS.
pub type TlsStarter = Box<dyn FnMut() -> Result<Box<dyn SecureLink>> + Send>;

/// Bytes of a file to send right after the buffer's first `at` bytes (zero-copy reads).
#[derive(Debug, Clone)]
pub struct FileSegment {
    /// Position in the buffer the file data follows.
    pub at: usize,
    /// The file.
    pub file: Arc<File>,
    /// Where in the file.
    pub offset: u64,
    /// How many bytes.
    pub len: usize,
}

/// An output buffer that is reused without being zeroed again: `tail(n)` hands out `n` writable
/// bytes at the end (a READ's data is read straight into it) and `commit` keeps them. Ranges of
/// files can be queued between the bytes ([`OutBuf::push_file`]); a plaintext transport sends
/// them with `sendfile`, without copying them through user space.
#[derive(Debug, Default)]
pub struct OutBuf {
    buf: Vec<u8>,
    len: usize,
    files: Vec<FileSegment>,
    file_bytes: usize,
}

impl OutBuf {
    /// The buffered bytes (without file segments).
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Number of buffered bytes (without file segments).
    pub fn len(&self) -> usize {
        self.len
    }

    /// Bytes pending in all, file segments included.
    pub fn pending(&self) -> usize {
        self.len + self.file_bytes
    }

    /// Whether nothing is pending.
    pub fn is_empty(&self) -> bool {
        self.len == 0 && self.files.is_empty()
    }

    /// The queued file segments.
    pub fn files(&self) -> &[FileSegment] {
        &self.files
    }

    /// `n` writable bytes after the produced ones (contents unspecified).
    pub fn tail(&mut self, n: usize) -> &mut [u8] {
        if self.buf.len() < self.len + n {
            // Grows by doubling (Vec's amortized growth), to no more than it has to.
            self.buf.resize(self.len + n, 0);
        }
        &mut self.buf[self.len..self.len + n]
    }

    /// Keeps `n` bytes of the last `tail`.
    pub fn commit(&mut self, n: usize) {
        self.len = (self.len + n).min(self.buf.len());
    }

    /// Appends bytes.
    pub fn extend(&mut self, data: &[u8]) {
        self.tail(data.len()).copy_from_slice(data);
        self.commit(data.len());
    }

    /// Queues `len` bytes of `file` from `offset` after what is buffered now.
    pub fn push_file(&mut self, file: Arc<File>, offset: u64, len: usize) {
        self.file_bytes += len;
        self.files.push(FileSegment {
            at: self.len,
            file,
            offset,
            len,
        });
    }

    /// Reads every file segment into the buffer (for transports that must see the bytes, TLS).
    pub fn materialize(&mut self) -> std::io::Result<()> {
        if self.files.is_empty() {
            return Ok(());
        }
        let files = std::mem::take(&mut self.files);
        let old = std::mem::take(&mut self.buf);
        let old_len = std::mem::replace(&mut self.len, 0);
        self.file_bytes = 0;
        let mut pos = 0;
        for f in &files {
            self.extend(&old[pos..f.at]);
            pos = f.at;
            let dst = self.tail(f.len);
            std::os::unix::fs::FileExt::read_exact_at(&*f.file, dst, f.offset)?;
            self.commit(f.len);
        }
        self.extend(&old[pos..old_len]);
        Ok(())
    }

    /// Drops everything.
    pub fn clear(&mut self) {
        self.len = 0;
        self.files.clear();
        self.file_bytes = 0;
        if self.buf.len() > OUTBUF_KEEP {
            // One large reply (a 32 MiB READ) must not pin its buffer for the connection's life.
            self.buf = Vec::new();
        }
    }
}

/// An output buffer larger than this is freed once sent rather than kept for reuse.
const OUTBUF_KEEP: usize = 4 << 20;

/// Plaintext encrypted at a time: the ciphertext waiting to be sent stays below about this
/// much, however large the reply.
const TLS_BATCH: usize = 1 << 20;

/// A receive buffer: bytes `[start, end)` are pending; reads go to `[end, ..)`. It starts
/// small, so an idle connection costs little, and doubles up to its limit when a message
/// does not fit or a read filled all the space offered (a fast sender: fewer, larger reads).
#[derive(Debug)]
struct RxBuf {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    limit: usize,
    /// The last read filled the space offered.
    filled: bool,
}

/// The size a receive buffer starts at (or its limit, if smaller).
const RX_INITIAL: usize = 4 * 1024;

impl RxBuf {
    fn new(limit: usize) -> Self {
        Self {
            buf: vec![0u8; RX_INITIAL.min(limit)],
            start: 0,
            end: 0,
            limit,
            filled: false,
        }
    }

    fn data(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
    }

    fn spare(&mut self) -> &mut [u8] {
        if self.end == self.buf.len() && self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let full = self.end == self.buf.len();
        if (full || std::mem::take(&mut self.filled)) && self.buf.len() < self.limit {
            let grown = (self.buf.len() * 2).min(self.limit);
            self.buf.resize(grown, 0);
        }
        &mut self.buf[self.end..]
    }

    /// `n` bytes were read into the last `spare`.
    fn commit(&mut self, n: usize) {
        self.filled = self.end + n == self.buf.len();
        self.end += n;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Running,
    Handshaking,
    Closing,
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Next {
    SendPlain(usize),
    SendFile,
    SendWire,
    ReceivePlain,
    ReceiveTls,
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
    SendFile(&'a File, u64, usize),
    /// Read into this buffer, giving up at the deadline (`None`: wait for input), then call
    /// [`Pump::received`] (or [`Pump::timeout`] when the deadline passed). The deadline is
    /// taken after the session processed its input, so a timer it just set counts.
    Receive(&'a mut [u8], Option<Instant>),
    /// The conversation is over; close the transport.
    Done,
}

/// The step function: buffers, TLS and a session, without I/O.
pub struct Pump<S> {
    session: S,
    rx: RxBuf,
    out: OutBuf,
    /// Ciphertext to send (an `OutBuf`: reused without zeroing it again per record batch).
    wire: OutBuf,
    /// `out` (plain) holds bytes to send; sent up to `send_pos` and `send_file` segments.
    send_plain: bool,
    send_pos: usize,
    send_file: usize,
    /// `out` holds plaintext for TLS, encrypted up to `encrypted` so far (a batch at a time).
    encrypt_pending: bool,
    encrypted: usize,
    tls: Option<Box<dyn SecureLink>>,
    starter: Option<TlsStarter>,
    state: State,
    /// More input may be processable without reading (the session consumed something).
    again: bool,
    stop: Option<Arc<std::sync::atomic::AtomicBool>>,
    /// A fatal TLS error, reported once the alert the layer queued has been sent.
    failed: Option<anyhow::Error>,
}

/// Output above this is sent before the session processes more input.
pub const HIGH_WATER: usize = 4 << 20;

impl<S: Session> Pump<S> {
    /// A pump with an input buffer that grows up to `rx_capacity` bytes (at least what the
    /// session needs for one whole message; at least 64 KiB); `starter` makes TLS layers when the session asks for one.
    pub fn new(session: S, rx_capacity: usize, starter: Option<TlsStarter>) -> Self {
        Self {
            session,
            rx: RxBuf::new(rx_capacity.max(64 * 1024)),
            out: OutBuf::default(),
            wire: OutBuf::default(),
            send_plain: false,
            send_pos: 0,
            send_file: 0,
            encrypt_pending: false,
            encrypted: 0,
            tls: None,
            starter,
            state: State::Running,
            again: true,
            stop: None,
            failed: None,
        }
    }

    /// Watches a stop flag: the loops check it at least every [`crate::listen::STOP_POLL`] and
    /// then shut the session down cleanly.
    pub fn watch(&mut self, stop: Arc<std::sync::atomic::AtomicBool>) {
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
            .map(|_| Instant::now() + crate::listen::STOP_POLL);
        match (self.session.deadline(), poll) {
            (Some(d), Some(p)) => Some(d.min(p)),
            (d, p) => d.or(p),
        }
    }

    /// If a stop was asked, lets the session finish and starts closing. Called by the loops.
    fn check_stop(&mut self) -> Result<()> {
        if self.stop_requested() && matches!(self.state, State::Running | State::Handshaking) {
            self.stop = None;
            if self.state == State::Running {
                self.session.shutdown(&mut self.out)?;
                self.queue_output()?;
            }
            self.state = State::Closing;
        }
        Ok(())
    }

    /// Queues what the session produced: encrypted into `wire` once TLS runs, else sent as
    /// it is (before TLS starts, and the STARTTLS answer itself).
    fn queue_output(&mut self) -> Result<()> {
        if self.out.is_empty() {
            return Ok(());
        }
        match self.tls.as_mut() {
            Some(_) if self.state != State::Handshaking => {
                self.out.materialize()?;
                self.encrypt_pending = true;
            }
            _ => self.send_plain = true,
        }
        Ok(())
    }

    /// Encrypts the next [`TLS_BATCH`] of `out` into `wire`.
    fn encrypt_batch(&mut self) -> Result<()> {
        let t = self.tls.as_mut().context("TLS layer missing")?;
        let end = (self.encrypted + TLS_BATCH).min(self.out.len());
        t.encrypt(&self.out.as_slice()[self.encrypted..end], &mut self.wire)?;
        self.encrypted = end;
        if end == self.out.len() {
            self.out.clear();
            self.encrypted = 0;
            self.encrypt_pending = false;
        }
        Ok(())
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
            Next::ReceivePlain => Action::Receive(self.rx.spare(), until),
            Next::ReceiveTls => match self.tls.as_mut() {
                Some(t) => Action::Receive(t.recv_buffer(), until),
                None => bail!("TLS layer missing"),
            },
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
            if self.encrypt_pending {
                self.encrypt_batch()?;
                continue;
            }
            if let Some(e) = self.failed.take() {
                self.state = State::Done;
                return Err(e);
            }
            match self.state {
                State::Done => return Ok(Next::Done),
                State::Closing => {
                    self.state = State::Done;
                    if let Some(t) = self.tls.as_mut() {
                        t.close_notify(&mut self.wire);
                    }
                    continue;
                }
                State::Handshaking => {
                    let t = self.tls.as_mut().context("TLS layer missing")?;
                    t.take_output(&mut self.wire)?;
                    if !self.wire.is_empty() {
                        continue;
                    }
                    if t.is_handshaking() {
                        if t.recv_buffer().is_empty() {
                            bail!("TLS receive buffer full during the handshake");
                        }
                        return Ok(Next::ReceiveTls);
                    }
                    let peer = t.peer();
                    log::debug!("TLS established: {}", peer.cipher);
                    self.session.tls_established(&peer)?;
                    self.state = State::Running;
                    self.again = true;
                    continue;
                }
                State::Running => {}
            }
            if !self.again {
                let Some(t) = self.tls.as_mut() else {
                    if self.rx.spare().is_empty() {
                        bail!("peer sent more than the session can buffer");
                    }
                    return Ok(Next::ReceivePlain);
                };
                // Alerts or key updates the layer produced while decrypting.
                t.take_output(&mut self.wire)?;
                if !self.wire.is_empty() {
                    continue;
                }
                if t.peer_closed() {
                    self.session.eof()?;
                    self.state = State::Done;
                    continue;
                }
                // Read into the layer's own buffer: no copy. Empty means decrypted plaintext
                // is waiting that the session did not take.
                if t.recv_buffer().is_empty() {
                    bail!("peer sent more than the session can buffer");
                }
                return Ok(Next::ReceiveTls);
            }
            let p = match self.tls.as_mut() {
                Some(t) => {
                    let p = self.session.process(t.plaintext(), &mut self.out)?;
                    t.consume_plaintext(p.consumed);
                    p
                }
                None => {
                    let p = self.session.process(self.rx.data(), &mut self.out)?;
                    self.rx.consume(p.consumed);
                    p
                }
            };
            self.again = p.consumed > 0;
            match p.control {
                Control::Continue => {}
                Control::Close => self.state = State::Closing,
                Control::StartTls => {
                    if self.tls.is_some() {
                        bail!("TLS requested twice");
                    }
                    let starter = self
                        .starter
                        .as_mut()
                        .context("TLS requested but not configured")?;
                    let mut t = starter()?;
                    // Whatever already arrived after the STARTTLS point is ciphertext.
                    let n = match t.feed(self.rx.data()) {
                        Ok(n) => n,
                        Err(e) => {
                            let _ = t.take_output(&mut self.wire);
                            self.failed = Some(e);
                            self.send_plain = !self.out.is_empty();
                            continue;
                        }
                    };
                    self.rx.consume(n);
                    if !self.rx.data().is_empty() {
                        bail!("too much data right after the TLS switch");
                    }
                    self.tls = Some(t);
                    self.state = State::Handshaking;
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
            if self.state == State::Handshaking {
                bail!("connection closed during the TLS handshake");
            }
            if self.tls.as_ref().is_some_and(|t| !t.peer_closed()) {
                log::debug!("connection closed without TLS close_notify");
            }
            self.session.eof()?;
            self.state = State::Done;
            let unparsed = match self.tls.as_ref() {
                Some(t) => t.plaintext().len(),
                None => self.rx.data().len(),
            };
            if unparsed > 0 {
                bail!("connection closed in the middle of a message ({unparsed} bytes unparsed)");
            }
            return Ok(());
        }
        self.again = true;
        match self.tls.as_mut() {
            Some(t) => {
                if let Err(e) = t.commit(n) {
                    // The layer queued an alert telling the peer why (a refused certificate,
                    // say): send it before giving up.
                    let _ = t.take_output(&mut self.wire);
                    self.failed = Some(e);
                }
                Ok(())
            }
            None => {
                self.rx.commit(n);
                Ok(())
            }
        }
    }
}

fn is_hangup(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
    )
}

fn is_timeout(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
    )
}

/// A blocking transport the pump can drive.
pub trait Transport: io::Read + io::Write {
    /// Sets the read timeout (`None`: block).
    fn set_read_timeout(&mut self, t: Option<Duration>) -> io::Result<()>;

    /// Writes bytes that a file segment follows at once (sockets: `MSG_MORE`).
    fn write_more(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.write_all(bytes)
    }

    /// Sends `len` bytes of `file` from `offset`. The default reads and writes through a
    /// buffer; sockets override it with `sendfile`.
    fn send_file(&mut self, file: &File, offset: u64, len: usize) -> io::Result<()> {
        copy_file(file, offset, len, |b| self.write_all(b))
    }
}

/// Sends a file range through `write` in 1 MiB pieces.
pub fn copy_file(
    file: &File,
    offset: u64,
    len: usize,
    mut write: impl FnMut(&[u8]) -> io::Result<()>,
) -> io::Result<()> {
    let mut buf = vec![0u8; len.min(1 << 20)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(buf.len());
        std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..n], offset + done as u64)?;
        write(&buf[..n])?;
        done += n;
    }
    Ok(())
}

/// Runs a pump over a blocking transport.
pub fn run_blocking<S: Session, T: Transport>(pump: &mut Pump<S>, io: &mut T) -> Result<()> {
    // The read timeout set on the transport.
    let mut timeout_set: Option<Duration> = None;
    loop {
        match pump.step()? {
            Action::Done => return Ok(()),
            Action::Send(bytes) => {
                match io.write_all(bytes) {
                    Err(e) if pump.finishing() && is_hangup(&e) => return Ok(()),
                    r => r.context("send")?,
                }
                pump.sent();
            }
            Action::SendMore(bytes) => {
                io.write_more(bytes).context("send")?;
                pump.sent();
            }
            Action::SendFile(file, offset, len) => {
                io.send_file(file, offset, len).context("send")?;
                pump.sent();
            }
            Action::Receive(buf, deadline) => {
                // A wait of the stop poll or longer is read with the stop poll as timeout (the
                // loop comes back and asks again), so the socket option is set once rather
                // than before every read; shorter waits are set exactly.
                let poll = crate::listen::STOP_POLL;
                let wait = deadline.map(|d| {
                    d.saturating_duration_since(Instant::now())
                        .clamp(Duration::from_millis(1), poll)
                });
                if wait != timeout_set || wait.is_some_and(|w| w != poll) {
                    io.set_read_timeout(wait)?;
                    timeout_set = wait;
                }
                match io.read(buf) {
                    Ok(n) => pump.received(n)?,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) if is_timeout(&e) => pump.timeout(Instant::now())?,
                    Err(e) if e.kind() == io::ErrorKind::ConnectionReset => pump.received(0)?,
                    Err(e) => return Err(e).context("receive"),
                }
            }
        }
    }
}

/// A tokio transport the pump can drive.
#[cfg(feature = "tokio")]
pub trait AsyncTransport: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send {
    /// Sends `len` bytes of `file` from `offset` (`sendfile` where the transport can).
    fn send_file(
        &mut self,
        file: &File,
        offset: u64,
        len: usize,
    ) -> impl std::future::Future<Output = io::Result<()>> + Send;
}

/// Runs a pump over a tokio transport.
#[cfg(feature = "tokio")]
pub async fn run_tokio<S: Session, T: AsyncTransport>(
    pump: &mut Pump<S>,
    io: &mut T,
) -> Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    loop {
        match pump.step()? {
            Action::Done => {
                io.shutdown().await.ok();
                return Ok(());
            }
            Action::Send(bytes) | Action::SendMore(bytes) => {
                match io.write_all(bytes).await {
                    Err(e) if pump.finishing() && is_hangup(&e) => return Ok(()),
                    r => r.context("send")?,
                }
                pump.sent();
            }
            Action::SendFile(file, offset, len) => {
                io.send_file(file, offset, len).await.context("send")?;
                pump.sent();
            }
            Action::Receive(buf, deadline) => {
                let r = match deadline {
                    Some(d) => tokio::time::timeout_at(d.into(), io.read(buf)).await.ok(),
                    None => Some(io.read(buf).await),
                };
                match r {
                    None => pump.timeout(Instant::now())?,
                    Some(Ok(n)) => pump.received(n)?,
                    Some(Err(e)) if e.kind() == io::ErrorKind::ConnectionReset => {
                        pump.received(0)?
                    }
                    Some(Err(e)) => return Err(e).context("receive"),
                }
            }
        }
    }
}
