//! The connection driver every service shares: bytes between an `embedded-io-async` transport
//! (an `embassy-net` [`TcpSocket`](embassy_net::tcp::TcpSocket) here) and a Sans-IO protocol
//! core, through a [`tls_glue::Link`] that carries plaintext until the core asks for TLS and a
//! [`TlsLayer`] after: the same hand-over state machine std-shim's pump runs.
//!
//! A service is a protocol core plus the application state it needs (the NBD exports, the
//! VNC desktop), with the core's shape ([`Service`]): `handle_input` takes plaintext,
//! `poll_transmit` produces plaintext, `poll_event` reports what the driver must act on
//! (switch to TLS, close), `poll_timeout`/`handle_timeout` carry the core's deadlines. The
//! driver knows nothing about NBD or RFB.
//!
//! One round of the loop, in the order the cores prescribe:
//! 1. drain `poll_transmit` (encrypted once TLS is up, else in the clear), then `poll_event`,
//!    repeatedly, until neither yields anything;
//! 2. on [`Control::StartTls`]: everything the service produced so far has been sent in the
//!    clear; bytes already received after the switch point go to a new [`TlsLayer`] as
//!    ciphertext; run the handshake (same deadline as the core's handshake), then
//!    `tls_established`;
//! 3. feed buffered plaintext to `handle_input` ([`Link::deliver`]; with TLS straight from the
//!    decrypted record) until it consumes nothing, going back to 1 if it took anything: a
//!    service takes no input while it has output to drain;
//! 4. otherwise wait for the transport or the service's deadline, whichever comes first.
//!
//! Memory: the driver's buffers come from the caller ([`Buffers`], static per session slot);
//! the TLS layer allocates its record buffers on the heap (see [`crate::tls`]).

use embassy_time::{Duration, Instant, with_deadline, with_timeout};
use embedded_io_async::{Read, Write};
pub use tls_glue::Control;
use tls_glue::{EncryptError, LayerOptions, Link, SwitchError, TlsError, TlsLayer};

/// A service's fatal error. The service has logged the details.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ServiceError(pub &'static str);

/// A protocol core with its application state, in the shape of the cores.
pub trait Service {
    /// Feeds plaintext received from the peer and returns the bytes consumed; the driver calls
    /// it again with the rest while it consumes something. It must return 0 when more input
    /// is needed, and while output or events must be drained first (the cores' own queues are
    /// bounded and stop them; the services stop while a reply is pending).
    fn handle_input(&mut self, input: &[u8]) -> Result<usize, ServiceError>;
    /// Writes the next plaintext output into `buf` ([`PLAIN_OUT`] bytes); `Ok(0)`: nothing now.
    fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<usize, ServiceError>;
    /// Handles the core's events; `None` when there were none.
    fn poll_event(&mut self) -> Option<Control>;
    /// The TLS handshake the service asked for succeeded (the client certificate is verified).
    fn tls_established(&mut self, tls: &TlsLayer) -> Result<(), ServiceError>;
    /// The peer closed its side.
    fn handle_eof(&mut self) -> Result<(), ServiceError>;
    /// When [`handle_timeout`](Self::handle_timeout) is due.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The time passed `poll_timeout`.
    fn handle_timeout(&mut self, now: Instant);
}

/// Plaintext output buffer size: one `poll_transmit` at most (rfb-core's encoder needs 2048,
/// and over WebSocket a frame header goes in front of that).
pub const PLAIN_OUT: usize = 2048 + WS_HEADER;
/// The WebSocket frame header of a server frame of up to 65535 bytes ([`crate::ws`]).
pub const WS_HEADER: usize = 4;
/// The link's buffer ([`Buffers::wire`]): plaintext input before TLS (the largest pre-TLS
/// message a service accepts whole), then one encrypted record of [`PLAIN_OUT`] bytes plus
/// overhead and slack ([`Link::seal_in_place`]).
pub const WIRE_OUT: usize = PLAIN_OUT + tls_glue::RECORD_OVERHEAD + 64;
/// TLS layer buffers: one record in; the core may leave up to this much plaintext unconsumed
/// (a whole NBD option, VNC credentials) before the layer stops decrypting.
pub const TLS_PLAINTEXT_LIMIT: usize = 1024;
/// Initial TLS receive buffer: a ClientHello (1.5 KiB with a post-quantum key share) and the
/// client's small records fit; it grows to a full record only for peers that send them.
pub const TLS_RX_INITIAL: usize = 2048;
/// A write that makes no progress for this long ends the session (peer stopped reading).
const WRITE_TIMEOUT: Duration = Duration::from_secs(30);

/// The buffers of one session slot.
pub struct Buffers {
    /// The service's plaintext output.
    pub plain_out: [u8; PLAIN_OUT],
    /// The link's storage: plaintext input before TLS, encrypted output after.
    pub wire: [u8; WIRE_OUT],
}

impl Buffers {
    /// Zeroed buffers (for a `ConstStaticCell`).
    pub const fn new() -> Self {
        Self {
            plain_out: [0; PLAIN_OUT],
            wire: [0; WIRE_OUT],
        }
    }
}

/// Why a session ended badly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DriverError {
    /// The transport failed (reset, idle timeout) or a write stalled.
    Io,
    /// TLS failed (bad or missing client certificate, protocol error, …).
    Tls(TlsError),
    /// The protocol core ended the connection on a peer error.
    Service(&'static str),
    /// The peer closed the connection in the middle of the conversation.
    UnexpectedEof,
    /// The handshake deadline passed.
    TimedOut,
    /// Not enough memory for another TLS session right now.
    NoTlsMemory,
}

impl DriverError {
    /// A short description for the log.
    pub fn as_str(&self) -> &'static str {
        match self {
            DriverError::Io => "transport error",
            DriverError::Tls(e) => crate::tls::error_str(*e),
            DriverError::Service(s) => s,
            DriverError::UnexpectedEof => "peer closed in mid-conversation",
            DriverError::TimedOut => "handshake deadline passed",
            DriverError::NoTlsMemory => "no memory for another TLS session",
        }
    }
}

impl From<ServiceError> for DriverError {
    fn from(e: ServiceError) -> Self {
        DriverError::Service(e.0)
    }
}

/// How a session went.
#[derive(Debug, Clone, Copy, Default)]
pub struct Summary {
    /// Plaintext bytes the service consumed.
    pub bytes_in: u64,
    /// Plaintext bytes the service produced.
    pub bytes_out: u64,
    /// TLS was established.
    pub tls: bool,
    /// The peer closed the connection without TLS close_notify (after a clean end of the
    /// protocol conversation).
    pub no_close_notify: bool,
}

/// Runs `service` over `io` until the conversation ends. The caller closes the transport.
pub async fn run<T, S>(
    io: &mut T,
    service: &mut S,
    bufs: &mut Buffers,
) -> Result<Summary, DriverError>
where
    T: Read + Write,
    S: Service,
{
    let Buffers { plain_out, wire } = bufs;
    let mut d = Driver {
        io,
        service,
        plain_out,
        link: Link::new(&mut wire[..]),
        _permit: None,
        summary: Summary::default(),
    };
    let r = d.run().await;
    let summary = d.summary;
    match r {
        Ok(()) => Ok(summary),
        Err(e) => {
            // An alert for the peer may be queued (bad certificate, …): best effort.
            let p = d.link.pending_transmit();
            if !p.is_empty() {
                let _ = with_timeout(Duration::from_secs(1), d.io.write_all(p)).await;
            }
            Err(e)
        }
    }
}

struct Driver<'a, T, S> {
    io: &'a mut T,
    service: &'a mut S,
    plain_out: &'a mut [u8; PLAIN_OUT],
    link: Link<&'a mut [u8]>,
    /// Held while TLS is up: bounds concurrent TLS sessions (heap).
    _permit: Option<crate::tls::Permit>,
    summary: Summary,
}

impl<T: Read + Write, S: Service> Driver<'_, T, S> {
    async fn run(&mut self) -> Result<(), DriverError> {
        loop {
            // 1. output and events
            loop {
                self.flush_output().await?;
                match self.service.poll_event() {
                    None => break,
                    Some(Control::Continue) => {}
                    Some(Control::StartTls) => self.start_tls().await?,
                    Some(Control::Close) => return self.close_notify().await,
                }
            }
            // 2. input, until the service consumes nothing (over TLS records go to it straight
            // from rustls' buffer; it stops taking input when it has output to drain)
            let service = &mut *self.service;
            let consumed = match self.link.deliver(|p| service.handle_input(p)) {
                Ok(n) => n,
                Err(e) => return Err(self.fail(e).await),
            };
            self.summary.bytes_in += consumed as u64;
            if consumed > 0 {
                continue;
            }
            // 3. wait for input or the deadline
            if self.link.is_tls() {
                // Alerts, key updates: whatever the layer wants sent.
                self.flush_tls().await?;
                if let Some(e) = self.link.error() {
                    return Err(DriverError::Tls(e));
                }
                if self.link.peer_closed() {
                    self.service.handle_eof()?;
                    return self.close_notify().await;
                }
            }
            if self.link.recv_buffer().is_empty() {
                // The core needs more than the link holds: a message over the limits.
                return Err(DriverError::Service("message larger than the input buffer"));
            }
            if let Some(0) = self.read_some().await? {
                // The peer closed. Over TLS without close_notify the service decides
                // whether that was a clean end (a VNC viewer just hangs up).
                let tls_eof = self.link.is_tls().then(|| self.link.handle_eof());
                return match (self.service.handle_eof(), tls_eof) {
                    (Ok(()), Some(Err(_))) => {
                        self.summary.no_close_notify = true;
                        Ok(())
                    }
                    (Ok(()), _) => Ok(()),
                    (Err(_), Some(Err(e))) => Err(DriverError::Tls(e)),
                    (Err(_), _) => Err(DriverError::UnexpectedEof),
                };
            }
        }
    }

    /// Flushes what the service has to say before giving up on a fatal error (the cores
    /// queue a reason for the peer where the protocol has one).
    async fn fail(&mut self, e: ServiceError) -> DriverError {
        let _ = self.flush_output().await;
        let _ = self.close_notify().await;
        DriverError::Service(e.0)
    }

    /// Reads once into the link, or handles the deadline. `Some(n)`: `n` bytes read (0: end
    /// of stream); `None`: the deadline passed.
    async fn read_some(&mut self) -> Result<Option<usize>, DriverError> {
        let deadline = self.service.poll_timeout();
        let buf = self.link.recv_buffer();
        let r = match deadline {
            Some(t) => match with_deadline(t, self.io.read(buf)).await {
                Ok(r) => r,
                Err(_) => {
                    self.service.handle_timeout(Instant::now());
                    return Ok(None);
                }
            },
            None => self.io.read(buf).await,
        };
        let n = r.map_err(|_| DriverError::Io)?;
        self.link.received(n).map_err(DriverError::Tls)?;
        Ok(Some(n))
    }

    /// Drains the service's output: encrypted once TLS is up, else in the clear.
    async fn flush_output(&mut self) -> Result<(), DriverError> {
        loop {
            let n = self.service.poll_transmit(&mut self.plain_out[..])?;
            if n == 0 {
                return Ok(());
            }
            self.summary.bytes_out += n as u64;
            let wire = self
                .link
                .seal_in_place(&self.plain_out[..n])
                .map_err(encrypt_error)?;
            write_all(self.io, wire).await?;
        }
    }

    /// Sends the TLS layer's own pending bytes (handshake, alerts), without copying.
    async fn flush_tls(&mut self) -> Result<(), DriverError> {
        let pending = self.link.pending_transmit();
        if !pending.is_empty() {
            let n = pending.len();
            write_all(self.io, pending).await?;
            self.link.transmit_done(n);
        }
        Ok(())
    }

    /// The service asked for TLS: its plaintext is out; the rest of the input is ciphertext.
    async fn start_tls(&mut self) -> Result<(), DriverError> {
        let permit = crate::tls::Permit::acquire().ok_or(DriverError::NoTlsMemory)?;
        let mut options = LayerOptions::minimal(TLS_PLAINTEXT_LIMIT);
        options.rx_capacity = TLS_RX_INITIAL;
        let layer = crate::tls::new_layer(options).ok_or(DriverError::NoTlsMemory)?;
        // Held from here on: the layer's heap is counted even if the switch fails.
        self._permit = Some(permit);
        self.link.start_tls(layer).map_err(switch_error)?;
        // The handshake, bounded by the core's handshake deadline.
        loop {
            self.flush_tls().await?;
            if let Some(e) = self.link.error() {
                return Err(DriverError::Tls(e));
            }
            if !self.link.is_handshaking() {
                break;
            }
            if self.link.recv_buffer().is_empty() {
                return Err(DriverError::Tls(TlsError::Protocol));
            }
            match self.read_some().await {
                Ok(Some(0)) => return Err(DriverError::Tls(TlsError::ClosedDuringHandshake)),
                Ok(Some(_)) => {}
                Ok(None) => {
                    // The core's deadline: it reports TimedOut / Close.
                    while let Some(c) = self.service.poll_event() {
                        if c == Control::Close {
                            return Err(DriverError::TimedOut);
                        }
                    }
                }
                Err(e) => return Err(e),
            }
        }
        self.summary.tls = true;
        if self.link.poll_established() {
            let layer = self.link.layer().ok_or(DriverError::Io)?;
            self.service.tls_established(layer)?;
        }
        Ok(())
    }

    /// Ends the conversation: pending TLS bytes, then close_notify.
    async fn close_notify(&mut self) -> Result<(), DriverError> {
        if !self.link.is_tls() {
            return Ok(());
        }
        self.flush_tls().await?;
        match self.link.close(&mut self.plain_out[..]) {
            Ok(0) | Err(_) => Ok(()),
            Ok(n) => write_all(self.io, &self.plain_out[..n]).await,
        }
    }
}
fn switch_error(e: SwitchError) -> DriverError {
    match e {
        SwitchError::AlreadyTls => DriverError::Service("TLS requested twice"),
        SwitchError::TooMuchAfterSwitch => {
            DriverError::Service("too much data right after the TLS switch")
        }
        SwitchError::Tls(e) => DriverError::Tls(e),
    }
}

fn encrypt_error(e: EncryptError) -> DriverError {
    match e {
        EncryptError::Failed(t) => DriverError::Tls(t),
        _ => DriverError::Tls(TlsError::Internal),
    }
}

/// `write_all` with a stall timeout. No flush: the TCP stack sends on its own, and a flush
/// would wait for the peer's ACK of every write.
async fn write_all<T: Write>(io: &mut T, bytes: &[u8]) -> Result<(), DriverError> {
    let mut done = 0;
    while done < bytes.len() {
        match with_timeout(WRITE_TIMEOUT, io.write(&bytes[done..])).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => return Err(DriverError::Io),
            Ok(Ok(n)) => done += n,
        }
    }
    Ok(())
}
