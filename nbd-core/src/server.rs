//! The NBD server state machine: fixed-newstyle negotiation with every option, the TLS policy
//! of the spec's TLS section, and the transmission phase.
//!
//! See the crate documentation for the driver loop. In short: feed received bytes to
//! [`Server::handle_input`] until it consumes nothing and lends nothing; answer each lent
//! [`Request`] with one of the `reply_*` commands, which encode straight into your output
//! buffer (READ data goes right behind the header, from your own buffer); drain
//! [`Server::poll_transmit`], then [`Server::poll_event`], then [`Server::poll_timeout`].

use heapless::Deque;

use crate::error::{CommandError, Error};
use crate::export::{ConfigError, Export, ExportFeatures};
use crate::time::{Duration, Instant};
use crate::wire::*;

/// The name of the one metadata context the core implements.
pub const BASE_ALLOCATION: &str = "base:allocation";
/// The context id the server assigns to `base:allocation`.
pub const BASE_ALLOCATION_ID: u32 = 1;
/// Option data up to this size is read and discarded when it exceeds `max_option_len` (the
/// client gets `NBD_REP_ERR_TOO_BIG`); beyond it the connection is closed (QEMU
/// CVE-2017-15119 read up to 4 GiB of junk).
pub const OPTION_DRAIN_LIMIT: u32 = 32 * 1024 * 1024;
/// Core-generated transmission replies (errors, zero-length successes) queued at most.
const QUEUE: usize = 8;
/// Most metadata context ids a BLOCK_STATUS payload may list before it is refused.
const MAX_STATUS_IDS: u64 = 16;

/// The server's TLS policy, as the spec's TLS section defines the modes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsMode {
    /// NOTLS: STARTTLS is refused with `NBD_REP_ERR_POLICY`.
    Off,
    /// SELECTIVETLS: TLS is optional; exports marked `tls_only` need it (opportunistic TLS
    /// when no export is marked, as nbdkit `--tls=on`).
    Selective,
    /// FORCEDTLS: nothing but STARTTLS (and ABORT) is answered before TLS; no export name,
    /// size or list is revealed in the clear.
    Forced,
}

/// Server configuration. The export table is borrowed for the connection's lifetime.
#[derive(Debug, Clone, Copy)]
pub struct ServerConfig<'a> {
    /// The exports offered.
    pub exports: &'a [Export<'a>],
    /// The export the empty name selects (`None`: the empty name is unknown).
    pub default_export: Option<u16>,
    /// The TLS policy.
    pub tls: TlsMode,
    /// Longest export name accepted (at most 4096, the spec's limit).
    pub max_name_len: u16,
    /// Longest option data read whole; longer options get `NBD_REP_ERR_TOO_BIG` (up to
    /// [`OPTION_DRAIN_LIMIT`], then the connection is closed). The driver's input buffer must
    /// hold [`ServerConfig::input_buffer_len`] bytes.
    pub max_option_len: u32,
    /// Requests lent to the application and not yet answered before the server stops reading.
    pub max_in_flight: u16,
    /// Time from connect to the transmission phase before the connection is dropped
    /// (QEMU CVE-2024-7409: idle handshakes must not pin the server).
    pub handshake_timeout: Option<Duration>,
    /// Offer `NBD_OPT_STRUCTURED_REPLY`.
    pub structured_replies: bool,
    /// Offer `NBD_OPT_EXTENDED_HEADERS`.
    pub extended_headers: bool,
    /// In selective mode, answer `NBD_REP_ERR_TLS_REQD` rather than `NBD_REP_ERR_UNKNOWN` for
    /// unknown exports before TLS, so clients cannot enumerate exports in the clear.
    pub hide_unknown_before_tls: bool,
    /// Advertise `NBD_FLAG_CAN_MULTI_CONN` where the export allows it (read-only exports and
    /// [`ExportFeatures::MULTI_CONN`]). A server that takes only one connection per client at
    /// a time (a microcontroller with a session or two per port) turns this off, so clients
    /// such as nbdcopy do not open several connections and fail on the refused ones.
    pub multi_conn: bool,
}

impl<'a> ServerConfig<'a> {
    /// A configuration with the defaults: no TLS, the first export as the default one, names
    /// up to 4096 bytes, options up to 16 KiB, 64 requests in flight, a 10 s handshake
    /// deadline, structured replies, extended headers and multi-conn on.
    pub const fn new(exports: &'a [Export<'a>]) -> Self {
        Self {
            exports,
            default_export: Some(0),
            tls: TlsMode::Off,
            max_name_len: MAX_STRING_LEN as u16,
            max_option_len: 16 * 1024,
            max_in_flight: 64,
            handshake_timeout: Some(Duration::from_secs(10)),
            structured_replies: true,
            extended_headers: true,
            hide_unknown_before_tls: false,
            multi_conn: true,
        }
    }

    /// Checks the configuration.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if usize::from(self.max_name_len) > MAX_STRING_LEN {
            return Err(ConfigError::NameLimitTooLarge);
        }
        if (self.max_option_len as usize) < 4 + usize::from(self.max_name_len) + 2 + 8 {
            return Err(ConfigError::OptionLimitTooSmall);
        }
        if self.exports.len() > usize::from(u16::MAX) {
            return Err(ConfigError::TooManyExports);
        }
        if let Some(d) = self.default_export
            && usize::from(d) >= self.exports.len()
        {
            return Err(ConfigError::BadDefaultExport);
        }
        for (i, e) in self.exports.iter().enumerate() {
            e.check()?;
            if self.exports[..i].iter().any(|o| o.name == e.name) {
                return Err(ConfigError::DuplicateName);
            }
        }
        Ok(())
    }

    /// The smallest input buffer the driver must offer `handle_input`: a whole option (header
    /// and data) or a request header with the largest BLOCK_STATUS payload must fit.
    pub fn input_buffer_len(&self) -> usize {
        (OptionHeaderRepr::LEN + self.max_option_len as usize)
            .max(RequestRepr::EXTENDED_LEN + 8 + 4 * MAX_STATUS_IDS as usize)
    }
}

/// A transmission request the application must answer with exactly one final `reply_*`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Request {
    /// The client's cookie.
    pub cookie: u64,
    /// What to do.
    pub command: Command,
    /// Command flags (validated: only flags valid for this command and negotiation).
    pub flags: CommandFlags,
    /// Export offset (validated against the size and block size).
    pub offset: u64,
    /// Length in bytes (for BLOCK_STATUS the effect length, clamped to the export's end).
    pub length: u64,
}

/// A validated transmission command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Command {
    /// Read `length` bytes: answer with `reply_read_data`/`reply_read_hole` or `reply_error`.
    Read,
    /// Write `length` bytes, which arrive as [`Lent::WriteData`]; answer after the last piece.
    Write,
    /// Make completed writes durable.
    Flush,
    /// Discard the range (punch a hole).
    Trim,
    /// Prefetch the range.
    Cache,
    /// Write zeroes (`NO_HOLE`: keep it allocated; `FAST_ZERO`: fail with ENOTSUP if slow).
    WriteZeroes,
    /// Report `base:allocation` extents: answer with `reply_block_status`.
    BlockStatus,
}

/// Something `handle_input` lends the application: borrowed from the input, valid until the
/// next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Lent<'i> {
    /// A request to carry out.
    Request(Request),
    /// A piece of a WRITE's payload: `data` belongs at export `offset`. A WRITE's payload
    /// arrives as one or more pieces, in order, right after its `Request`.
    WriteData {
        /// The WRITE's cookie.
        cookie: u64,
        /// Export offset of `data[0]`.
        offset: u64,
        /// The bytes, straight from the input.
        data: &'i [u8],
    },
}

/// The result of one `handle_input` call.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Progress<'i> {
    /// Bytes of the input consumed; the driver drops them from its buffer.
    pub consumed: usize,
    /// What the application must act on, if anything.
    pub lent: Option<Lent<'i>>,
}

/// The transmission phase has begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Ready {
    /// Index of the export in the configuration's table.
    pub export: usize,
    /// Its size.
    pub size: u64,
    /// The transmission flags advertised.
    pub flags: TransmissionFlags,
    /// The header style in use.
    pub style: HeaderStyle,
    /// Whether `base:allocation` was selected, so BLOCK_STATUS can come.
    pub base_allocation: bool,
}

/// Milestones the driver must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event {
    /// The STARTTLS ACK has been produced. Send everything `poll_transmit` gave so far in the
    /// clear, then put the TLS layer between the transport and the server (every byte already
    /// received after the STARTTLS option is ciphertext for the TLS layer), run the handshake,
    /// and call [`Server::tls_established`].
    StartTls,
    /// The transmission phase has begun (open the backend for this export now).
    Ready(Ready),
    /// The conversation ended cleanly (ABORT answered, or DISC with every reply sent): close
    /// the connection (TLS close_notify first).
    Finished,
    /// The handshake deadline passed: close the connection.
    TimedOut,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct InfoMask(u8);

impl InfoMask {
    const EXPORT: u8 = 1;
    const NAME: u8 = 2;
    const DESCRIPTION: u8 = 4;
    const BLOCK_SIZE: u8 = 8;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// ACK, with what it sets off for STARTTLS and ABORT.
    Ack(OptionType),
    Error(OptionType, ReplyType, &'static str),
    List {
        next: u16,
    },
    Info {
        go: bool,
        export: u16,
        pending: InfoMask,
        block_size_required: bool,
    },
    Meta {
        option: OptionType,
        id: u32,
        context: bool,
    },
    ExportName {
        export: u16,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    ClientFlags,
    Options,
    Reply(Reply),
    Drain { remaining: u32, option: OptionType },
    AwaitTls,
    Transmission,
    Closed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Negotiated {
    structured: bool,
    extended: bool,
    /// The export a successful SET_META_CONTEXT selected `base:allocation` for.
    meta: Option<u16>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Payload {
    None,
    Write {
        cookie: u64,
        offset: u64,
        remaining: u64,
    },
    Discard {
        remaining: u64,
        reply: Queued,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Queued {
    cookie: u64,
    offset: u64,
    result: Result<(), (ErrorCode, &'static str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Transmission {
    export: u16,
    style: HeaderStyle,
    flags: TransmissionFlags,
    base_allocation: bool,
    in_flight: u16,
    payload: Payload,
    disconnecting: bool,
}

type Checked<T> = Result<T, (ErrorCode, &'static str)>;

/// An NBD server connection.
#[derive(Debug)]
pub struct Server<'a> {
    config: ServerConfig<'a>,
    phase: Phase,
    greeting_sent: bool,
    fixed: bool,
    no_zeroes: bool,
    tls_active: bool,
    neg: Negotiated,
    tx: Transmission,
    queue: Deque<Queued, QUEUE>,
    events: Deque<Event, 4>,
    deadline: Option<Instant>,
}

impl<'a> Server<'a> {
    /// A server for a connection accepted at `now`.
    pub fn new(config: ServerConfig<'a>, now: Instant) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self {
            phase: Phase::ClientFlags,
            greeting_sent: false,
            fixed: false,
            no_zeroes: false,
            tls_active: false,
            neg: Negotiated::default(),
            tx: Transmission {
                export: 0,
                style: HeaderStyle::Simple,
                flags: TransmissionFlags::HAS_FLAGS,
                base_allocation: false,
                in_flight: 0,
                payload: Payload::None,
                disconnecting: false,
            },
            queue: Deque::new(),
            events: Deque::new(),
            deadline: config.handshake_timeout.map(|t| now + t),
            config,
        })
    }

    /// The configuration.
    pub fn config(&self) -> &ServerConfig<'a> {
        &self.config
    }

    /// Whether TLS has been established on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Whether the transmission phase is running.
    pub fn is_transmitting(&self) -> bool {
        self.phase == Phase::Transmission
    }

    /// Requests lent and not yet answered.
    pub fn in_flight(&self) -> u16 {
        self.tx.in_flight
    }

    /// Whether the conversation is over (cleanly or not): close the connection.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Failed)
    }

    // ---------------------------------------------------------------- B. input handlers

    /// Feeds received bytes. Handles at most one message (or one piece of a WRITE payload)
    /// per call; call again with the rest while `consumed > 0` or something is lent. Incomplete
    /// messages consume nothing. An `Err` is fatal: close the connection.
    pub fn handle_input<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        let r = match self.phase {
            Phase::ClientFlags => self.on_client_flags(input),
            Phase::Options => self.on_option(input),
            Phase::Drain { remaining, option } => {
                let n = (remaining as usize).min(input.len());
                let left = remaining - n as u32;
                self.phase = if left == 0 {
                    Phase::Reply(Reply::Error(
                        option,
                        ReplyType::ErrTooBig,
                        "option data longer than this server accepts",
                    ))
                } else {
                    Phase::Drain {
                        remaining: left,
                        option,
                    }
                };
                Ok(consumed(n))
            }
            Phase::Reply(_) | Phase::AwaitTls => Ok(consumed(0)),
            Phase::Transmission => self.on_transmission(input),
            // Nothing may follow ABORT or DISC; whatever does is dropped unread.
            Phase::Closed => Ok(consumed(input.len())),
            Phase::Failed => Err(Error::Failed),
        };
        if let Err(e) = r {
            debug!("nbd server: fatal: {:?}", e);
            self.phase = Phase::Failed;
        }
        r
    }

    /// The peer closed its sending side. In negotiation that is an error (unless after ABORT);
    /// in transmission it is a hard disconnect the driver simply follows.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        match self.phase {
            Phase::Closed | Phase::Failed => Ok(()),
            Phase::Transmission => {
                self.phase = Phase::Closed;
                Ok(())
            }
            _ => {
                self.phase = Phase::Failed;
                Err(Error::UnexpectedEof)
            }
        }
    }

    /// Tells the server the time; past the handshake deadline it gives up
    /// ([`Event::TimedOut`]). Spurious calls are harmless.
    pub fn handle_timeout(&mut self, now: Instant) {
        if let Some(d) = self.poll_timeout()
            && now >= d
        {
            debug!("nbd server: handshake timed out");
            self.deadline = None;
            self.phase = Phase::Failed;
            self.push_event(Event::TimedOut);
        }
    }

    // ---------------------------------------------------------------- C. commands

    /// The TLS handshake after [`Event::StartTls`] succeeded: negotiation continues, encrypted.
    pub fn tls_established(&mut self) -> Result<(), CommandError> {
        if self.phase != Phase::AwaitTls {
            return Err(CommandError::InvalidState);
        }
        self.tls_active = true;
        self.phase = Phase::Options;
        Ok(())
    }

    /// Bytes of header `reply_read_data` writes before the data: read the data into
    /// `out[header_len..]` first, then encode the header into `out[..header_len]`, and send both
    /// in one write.
    pub fn read_data_header_len(&self) -> usize {
        match self.tx.style {
            HeaderStyle::Simple => SimpleReplyRepr::LEN,
            HeaderStyle::Structured => ChunkHeaderRepr::STRUCTURED_LEN + 8,
            HeaderStyle::Extended => ChunkHeaderRepr::EXTENDED_LEN + 8,
        }
    }

    /// Encodes the header of a READ reply carrying `len` bytes of data for export `offset`;
    /// the driver sends exactly those bytes right behind it. With simple replies the data
    /// must be the whole request (and `done` true); with structured or extended replies it
    /// may be any non-empty piece of it, `done` marking the last chunk.
    pub fn reply_read_data(
        &mut self,
        req: &Request,
        offset: u64,
        len: u64,
        done: bool,
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        self.check_reply(req, Command::Read)?;
        check_within(req, offset, len)?;
        let n = match self.tx.style {
            HeaderStyle::Simple => {
                if offset != req.offset || len != req.length || !done {
                    return Err(CommandError::InvalidArgument(
                        "simple replies carry the whole read in one piece",
                    ));
                }
                SimpleReplyRepr {
                    error: 0,
                    cookie: req.cookie,
                }
                .emit(out)?
            }
            _ => {
                let hdr = self.chunk(req, ChunkType::OffsetData, 8 + len, done);
                let mut w = Writer::new(out, hdr.buffer_len() + 8)?;
                w.nested(|b| hdr.emit(b))?.u64(offset);
                w.len()
            }
        };
        if done {
            self.finish();
        }
        Ok(n)
    }

    /// Encodes an `OFFSET_HOLE` chunk: `len` bytes at `offset` read as zeroes (structured or
    /// extended replies only; with simple replies send zeroes with `reply_read_data`).
    pub fn reply_read_hole(
        &mut self,
        req: &Request,
        offset: u64,
        len: u32,
        done: bool,
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        self.check_reply(req, Command::Read)?;
        if self.tx.style == HeaderStyle::Simple {
            return Err(CommandError::InvalidState);
        }
        check_within(req, offset, u64::from(len))?;
        let hdr = self.chunk(req, ChunkType::OffsetHole, 12, done);
        let mut w = Writer::new(out, hdr.buffer_len() + 12)?;
        w.nested(|b| hdr.emit(b))?.u64(offset).u32(len);
        if done {
            self.finish();
        }
        Ok(w.len())
    }

    /// Encodes the final success reply of a request without data (WRITE, FLUSH, TRIM, CACHE,
    /// WRITE_ZEROES), or the final `NONE` chunk after READ data chunks sent with `done` false.
    pub fn reply_ok(&mut self, req: &Request, out: &mut [u8]) -> Result<usize, CommandError> {
        self.check_any_reply()?;
        if self.tx.style == HeaderStyle::Simple && matches!(req.command, Command::Read) {
            return Err(CommandError::InvalidArgument(
                "a simple READ reply carries data: use reply_read_data",
            ));
        }
        if matches!(req.command, Command::BlockStatus) {
            return Err(CommandError::InvalidArgument(
                "BLOCK_STATUS succeeds with reply_block_status",
            ));
        }
        let n = self.encode_result(req.cookie, req.offset, Ok(()), out)?;
        self.finish();
        Ok(n)
    }

    /// Encodes the final error reply of a request, with a message for humans where structured
    /// replies can carry one (truncated to 4096 bytes).
    pub fn reply_error(
        &mut self,
        req: &Request,
        code: ErrorCode,
        message: &str,
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        self.check_any_reply()?;
        if u32::from(code) == 0 {
            return Err(CommandError::InvalidArgument("error code 0 is success"));
        }
        let n = self.encode_result(req.cookie, req.offset, Err((code, message)), out)?;
        self.finish();
        Ok(n)
    }

    /// Encodes the `base:allocation` answer to a BLOCK_STATUS request: consecutive extents
    /// from the request's offset (non-empty, non-zero lengths; the last may run past the
    /// request). With `REQ_ONE` only the first extent is sent, clipped to the request; with
    /// compact headers an extent over 4 GiB ends the list, clipped.
    pub fn reply_block_status(
        &mut self,
        req: &Request,
        extents: &[Extent],
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        self.check_reply(req, Command::BlockStatus)?;
        if extents.is_empty() || extents.iter().any(|e| e.length == 0) {
            return Err(CommandError::InvalidArgument(
                "block status needs at least one extent, none empty",
            ));
        }
        let wide = self.tx.style == HeaderStyle::Extended;
        let min = u64::from(self.export().block_size.minimum);
        let narrow_max = u64::from(u32::MAX) / min * min;
        let one = req.flags.contains(CommandFlags::REQ_ONE);
        // How many extents go out, and the (possibly clipped) last one.
        let mut count = 0usize;
        let mut last = extents[0];
        for e in extents.iter().take(if one { 1 } else { 1 << 20 }) {
            let mut e = *e;
            if one {
                e.length = e.length.min(req.length);
            }
            if !wide && (e.length > narrow_max || e.flags > u64::from(u32::MAX)) {
                e.length = e.length.min(narrow_max);
                e.flags &= u64::from(u32::MAX);
                count += 1;
                last = e;
                break;
            }
            count += 1;
            last = e;
        }
        let dlen = ExtentsView::descriptor_len(wide);
        let payload = if wide { 8 } else { 4 } + dlen * count;
        let chunk = if wide {
            ChunkType::BlockStatusExt
        } else {
            ChunkType::BlockStatus
        };
        let hdr = self.chunk(req, chunk, payload as u64, true);
        let mut w = Writer::new(out, hdr.buffer_len() + payload)?;
        w.nested(|b| hdr.emit(b))?.u32(BASE_ALLOCATION_ID);
        if wide {
            w.u32(count as u32);
        }
        for (i, e) in extents.iter().take(count).enumerate() {
            let e = if i + 1 == count { last } else { *e };
            w.nested(|b| ExtentsView::emit_descriptor(&e, wide, b))?;
        }
        self.finish();
        Ok(w.len())
    }

    // ---------------------------------------------------------------- D. polls

    /// Writes the next message the server itself generates (greeting, option replies, replies
    /// to requests it refused) into `buf`. `Ok(None)`: nothing to send. On `Err` nothing was
    /// written and the message stays queued.
    #[must_use = "the output must be sent"]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<usize>, InsufficientSize> {
        if !self.greeting_sent {
            let n = GreetingRepr {
                flags: HandshakeFlags::FIXED_NEWSTYLE | HandshakeFlags::NO_ZEROES,
            }
            .emit(buf)?;
            self.greeting_sent = true;
            return Ok(Some(n));
        }
        match self.phase {
            Phase::Reply(r) => self.emit_reply(r, buf).map(Some),
            Phase::Transmission => {
                let Some(q) = self.queue.front().copied() else {
                    return Ok(None);
                };
                let n = self
                    .encode_result(q.cookie, q.offset, q.result, buf)
                    .map_err(|e| match e {
                        CommandError::InsufficientSize(s) => s,
                        _ => InsufficientSize { required: 0 },
                    })?;
                self.queue.pop_front();
                self.check_finished();
                Ok(Some(n))
            }
            _ => Ok(None),
        }
    }

    /// The next milestone, if any.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// When to call `handle_timeout` next (the handshake deadline while negotiating).
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Transmission | Phase::Closed | Phase::Failed => None,
            _ => self.deadline,
        }
    }

    // ---------------------------------------------------------------- negotiation

    fn on_client_flags<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        let Some(f) = ClientFlagsRepr::parse(input) else {
            return Ok(consumed(0));
        };
        let known = ClientFlags::FIXED_NEWSTYLE | ClientFlags::NO_ZEROES;
        if !known.contains(f.flags) {
            return Err(Error::UnknownClientFlags(f.flags.bits()));
        }
        self.fixed = f.flags.contains(ClientFlags::FIXED_NEWSTYLE);
        self.no_zeroes = f.flags.contains(ClientFlags::NO_ZEROES);
        if !self.fixed && self.config.tls == TlsMode::Forced {
            return Err(Error::NotFixedNewstyle);
        }
        self.phase = Phase::Options;
        Ok(consumed(ClientFlagsRepr::LEN))
    }

    fn on_option<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        let Some(h) = OptionHeaderRepr::parse(input)? else {
            return Ok(consumed(0));
        };
        if !self.fixed && h.option != OptionType::ExportName {
            // Plain newstyle has no option replies: the only answer is to hang up.
            return Err(Error::NotFixedNewstyle);
        }
        if h.length > self.config.max_option_len {
            if h.option == OptionType::ExportName || h.length > OPTION_DRAIN_LIMIT {
                return Err(Error::OptionTooLarge {
                    option: h.option,
                    length: h.length,
                });
            }
            trace!(
                "nbd server: draining {} bytes of oversized option",
                h.length
            );
            self.phase = Phase::Drain {
                remaining: h.length,
                option: h.option,
            };
            return Ok(consumed(OptionHeaderRepr::LEN));
        }
        let total = OptionHeaderRepr::LEN + h.length as usize;
        let Some(data) = input.get(OptionHeaderRepr::LEN..total) else {
            return Ok(consumed(0));
        };
        trace!("nbd server: option {:?} ({} bytes)", h.option, h.length);
        let reply = self.dispatch(h.option, data)?;
        self.phase = Phase::Reply(reply);
        Ok(consumed(total))
    }

    fn dispatch(&mut self, opt: OptionType, data: &[u8]) -> Result<Reply, Error> {
        use OptionType as O;
        if self.config.tls == TlsMode::Forced && !self.tls_active {
            match opt {
                O::StartTls => {}
                O::Abort => return Ok(Reply::Ack(opt)),
                O::ExportName => return Err(Error::TlsRequired),
                _ => {
                    return Ok(Reply::Error(
                        opt,
                        ReplyType::ErrTlsReqd,
                        "TLS is required: send NBD_OPT_STARTTLS first",
                    ));
                }
            }
        }
        let invalid = |msg| Ok(Reply::Error(opt, ReplyType::ErrInvalid, msg));
        match opt {
            O::ExportName => self.export_name(data),
            O::Abort => Ok(Reply::Ack(opt)),
            O::List => {
                if !data.is_empty() {
                    return invalid("NBD_OPT_LIST takes no data");
                }
                Ok(Reply::List { next: 0 })
            }
            O::StartTls => {
                if self.tls_active {
                    return invalid("TLS is already active");
                }
                if !data.is_empty() {
                    return invalid("NBD_OPT_STARTTLS takes no data");
                }
                if self.config.tls == TlsMode::Off {
                    return Ok(Reply::Error(
                        opt,
                        ReplyType::ErrPolicy,
                        "TLS is not configured on this server",
                    ));
                }
                Ok(Reply::Ack(opt))
            }
            O::Info | O::Go => Ok(self.info_or_go(opt, data)),
            O::StructuredReply => {
                if !data.is_empty() {
                    return invalid("NBD_OPT_STRUCTURED_REPLY takes no data");
                }
                if !self.config.structured_replies {
                    return Ok(unsupported(opt));
                }
                if self.neg.extended {
                    return Ok(Reply::Error(
                        opt,
                        ReplyType::ErrExtHeaderReqd,
                        "extended headers are already negotiated",
                    ));
                }
                self.neg.structured = true;
                Ok(Reply::Ack(opt))
            }
            O::ExtendedHeaders => {
                if !data.is_empty() {
                    return invalid("NBD_OPT_EXTENDED_HEADERS takes no data");
                }
                if !self.config.extended_headers {
                    return Ok(unsupported(opt));
                }
                self.neg.extended = true;
                Ok(Reply::Ack(opt))
            }
            O::ListMetaContext | O::SetMetaContext => Ok(self.meta_context(opt, data)),
            _ => Ok(unsupported(opt)),
        }
    }

    fn export_name(&mut self, data: &[u8]) -> Result<Reply, Error> {
        if self.neg.extended {
            return Err(Error::ExportNameWithExtendedHeaders);
        }
        let name = self.check_name(data).map_err(|_| Error::BadExportName)?;
        let export = self.lookup(name).ok_or(Error::UnknownExport)?;
        if self.needs_tls(export) {
            return Err(Error::TlsRequired);
        }
        Ok(Reply::ExportName { export })
    }

    fn info_or_go(&mut self, opt: OptionType, data: &[u8]) -> Reply {
        let go = opt == OptionType::Go;
        let req = match InfoRequestRepr::parse(data) {
            Ok(r) => r,
            Err(_) => {
                return Reply::Error(
                    opt,
                    ReplyType::ErrInvalid,
                    "malformed NBD_OPT_INFO/GO data (name length or request count)",
                );
            }
        };
        let export = match self.find(opt, req.name) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let e = &self.config.exports[usize::from(export)];
        let mut pending = InfoMask::EXPORT;
        let mut asked_block_size = false;
        for r in req.requests() {
            pending |= match r {
                InfoType::Name => InfoMask::NAME,
                InfoType::Description if !e.description.is_empty() => InfoMask::DESCRIPTION,
                InfoType::BlockSize => {
                    asked_block_size = true;
                    InfoMask::BLOCK_SIZE
                }
                _ => 0,
            };
        }
        // A server with non-default constraints may insist the client learns them; it sends
        // them first so the client need not ask twice.
        let block_size_required = go && !asked_block_size && e.block_size.minimum > 1;
        if block_size_required {
            pending |= InfoMask::BLOCK_SIZE;
        }
        Reply::Info {
            go,
            export,
            pending: InfoMask(pending),
            block_size_required,
        }
    }

    fn meta_context(&mut self, opt: OptionType, data: &[u8]) -> Reply {
        let set = opt == OptionType::SetMetaContext;
        if set {
            // SET replaces the selection, even when it fails.
            self.neg.meta = None;
        }
        let invalid = |msg| Reply::Error(opt, ReplyType::ErrInvalid, msg);
        if !(self.neg.structured || self.neg.extended) {
            return invalid("negotiate structured replies or extended headers first");
        }
        let req = match MetaContextRequestRepr::parse(data) {
            Ok(r) => r,
            Err(_) => return invalid("malformed meta context request"),
        };
        let export = match self.find(opt, req.name) {
            Ok(e) => e,
            Err(r) => return r,
        };
        let available = self.config.exports[usize::from(export)]
            .features
            .contains(ExportFeatures::BASE_ALLOCATION);
        let mut matched = !set && req.count == 0 && available;
        for q in req.queries() {
            let Ok(q) = check_string(q) else {
                return invalid("meta context query is not a valid string");
            };
            if !q.contains(':') {
                return invalid("meta context query lacks a namespace");
            }
            if available && (q == BASE_ALLOCATION || (!set && q == "base:")) {
                matched = true;
            }
        }
        if set && matched {
            self.neg.meta = Some(export);
        }
        Reply::Meta {
            option: opt,
            id: if set { BASE_ALLOCATION_ID } else { 0 },
            context: matched,
        }
    }

    /// Checks a requested name and finds its export, or the error reply to send.
    fn find(&self, opt: OptionType, name: &[u8]) -> Result<u16, Reply> {
        let name = self
            .check_name(name)
            .map_err(|(code, msg)| Reply::Error(opt, code, msg))?;
        let Some(export) = self.lookup(name) else {
            let hide = self.config.hide_unknown_before_tls
                && self.config.tls == TlsMode::Selective
                && !self.tls_active;
            return Err(if hide {
                Reply::Error(opt, ReplyType::ErrTlsReqd, "TLS is required")
            } else {
                Reply::Error(opt, ReplyType::ErrUnknown, "no export of that name")
            });
        };
        if self.needs_tls(export) {
            return Err(Reply::Error(
                opt,
                ReplyType::ErrTlsReqd,
                "this export requires TLS",
            ));
        }
        Ok(export)
    }

    fn check_name<'n>(&self, name: &'n [u8]) -> Result<&'n str, (ReplyType, &'static str)> {
        if name.len() > MAX_STRING_LEN {
            return Err((
                ReplyType::ErrInvalid,
                "export name longer than the 4096 bytes the spec allows",
            ));
        }
        if name.len() > usize::from(self.config.max_name_len) {
            return Err((ReplyType::ErrTooBig, "export name too long for this server"));
        }
        check_string(name).map_err(|_| {
            (
                ReplyType::ErrInvalid,
                "export name is not UTF-8 or contains NUL",
            )
        })
    }

    fn lookup(&self, name: &str) -> Option<u16> {
        if name.is_empty()
            && let Some(d) = self.config.default_export
        {
            return Some(d);
        }
        self.config
            .exports
            .iter()
            .position(|e| e.name == name)
            .map(|i| i as u16)
    }

    fn needs_tls(&self, export: u16) -> bool {
        self.config.tls == TlsMode::Selective
            && !self.tls_active
            && self.config.exports[usize::from(export)].tls_only
    }

    fn visible(&self, export: usize) -> bool {
        !self.needs_tls(export as u16)
    }

    fn emit_reply(&mut self, r: Reply, buf: &mut [u8]) -> Result<usize, InsufficientSize> {
        match r {
            Reply::Ack(opt) => {
                let n = option_reply(buf, opt, ReplyType::Ack, 0, no_data)?;
                self.phase = match opt {
                    OptionType::StartTls => {
                        // The spec: after STARTTLS nothing negotiated before it survives
                        // (CVE-2021-3716: an injected STRUCTURED_REPLY must have no effect).
                        self.neg = Negotiated::default();
                        self.push_event(Event::StartTls);
                        Phase::AwaitTls
                    }
                    OptionType::Abort => {
                        self.push_event(Event::Finished);
                        Phase::Closed
                    }
                    _ => Phase::Options,
                };
                Ok(n)
            }
            Reply::Error(opt, code, msg) => {
                let n = option_reply(buf, opt, code, msg.len(), |b| {
                    b[..msg.len()].copy_from_slice(msg.as_bytes());
                    Ok(msg.len())
                })?;
                self.phase = Phase::Options;
                Ok(n)
            }
            Reply::List { next } => {
                let exports = self.config.exports;
                let found = (usize::from(next)..exports.len()).find(|&i| self.visible(i));
                let Some(i) = found else {
                    return self.emit_reply(Reply::Ack(OptionType::List), buf);
                };
                let s = ServerReplyRepr {
                    name: exports[i].name,
                    description: exports[i].description,
                };
                let n = option_reply(
                    buf,
                    OptionType::List,
                    ReplyType::Server,
                    s.buffer_len(),
                    |b| s.emit(b),
                )?;
                self.phase = Phase::Reply(Reply::List {
                    next: (i + 1) as u16,
                });
                Ok(n)
            }
            Reply::Info {
                go,
                export,
                pending,
                block_size_required,
            } => {
                let opt = if go { OptionType::Go } else { OptionType::Info };
                let e = self.config.exports[usize::from(export)];
                let next = [
                    InfoMask::EXPORT,
                    InfoMask::NAME,
                    InfoMask::DESCRIPTION,
                    InfoMask::BLOCK_SIZE,
                ]
                .into_iter()
                .find(|&bit| pending.0 & bit != 0);
                let Some(bit) = next else {
                    if block_size_required {
                        let msg = "this export needs NBD_INFO_BLOCK_SIZE to be requested";
                        return self
                            .emit_reply(Reply::Error(opt, ReplyType::ErrBlockSizeReqd, msg), buf);
                    }
                    if !go {
                        return self.emit_reply(Reply::Ack(opt), buf);
                    }
                    let n = option_reply(buf, opt, ReplyType::Ack, 0, no_data)?;
                    self.enter_transmission(export);
                    return Ok(n);
                };
                let info = match bit {
                    InfoMask::EXPORT => InfoReplyRepr::Export {
                        size: e.size,
                        flags: self.flags_of(&e, self.neg.structured, self.neg.extended),
                    },
                    InfoMask::NAME => InfoReplyRepr::Name(e.name),
                    InfoMask::DESCRIPTION => InfoReplyRepr::Description(e.description),
                    _ => InfoReplyRepr::BlockSize(e.block_size),
                };
                let n = option_reply(buf, opt, ReplyType::Info, info.buffer_len(), |b| {
                    info.emit(b)
                })?;
                self.phase = Phase::Reply(Reply::Info {
                    go,
                    export,
                    pending: InfoMask(pending.0 & !bit),
                    block_size_required,
                });
                Ok(n)
            }
            Reply::Meta {
                option,
                id,
                context,
            } => {
                if !context {
                    return self.emit_reply(Reply::Ack(option), buf);
                }
                let m = MetaContextReplyRepr {
                    id,
                    name: BASE_ALLOCATION,
                };
                let n = option_reply(buf, option, ReplyType::MetaContext, m.buffer_len(), |b| {
                    m.emit(b)
                })?;
                self.phase = Phase::Reply(Reply::Meta {
                    option,
                    id,
                    context: false,
                });
                Ok(n)
            }
            Reply::ExportName { export } => {
                let e = self.config.exports[usize::from(export)];
                let n = ExportNameReplyRepr {
                    size: e.size,
                    flags: self.flags_of(&e, self.neg.structured, false),
                    zeroes: !self.no_zeroes,
                }
                .emit(buf)?;
                self.enter_transmission(export);
                Ok(n)
            }
        }
    }

    /// The transmission flags of `e` under this configuration.
    fn flags_of(&self, e: &Export<'_>, structured: bool, extended: bool) -> TransmissionFlags {
        let mut flags = e.transmission_flags(structured, extended);
        if !self.config.multi_conn {
            flags.remove(TransmissionFlags::CAN_MULTI_CONN);
        }
        flags
    }

    fn enter_transmission(&mut self, export: u16) {
        let e = self.config.exports[usize::from(export)];
        let style = if self.neg.extended {
            HeaderStyle::Extended
        } else if self.neg.structured {
            HeaderStyle::Structured
        } else {
            HeaderStyle::Simple
        };
        let base_allocation = style != HeaderStyle::Simple && self.neg.meta == Some(export);
        let flags = self.flags_of(&e, self.neg.structured, self.neg.extended);
        self.tx = Transmission {
            export,
            style,
            flags,
            base_allocation,
            in_flight: 0,
            payload: Payload::None,
            disconnecting: false,
        };
        self.phase = Phase::Transmission;
        self.deadline = None;
        debug!(
            "nbd server: transmission, export {}, style {:?}",
            export, style
        );
        self.push_event(Event::Ready(Ready {
            export: usize::from(export),
            size: e.size,
            flags,
            style,
            base_allocation,
        }));
    }

    // ---------------------------------------------------------------- transmission

    fn export(&self) -> &Export<'a> {
        &self.config.exports[usize::from(self.tx.export)]
    }

    fn on_transmission<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        if self.tx.disconnecting {
            // "A client MUST NOT send anything to the server after sending an NBD_CMD_DISC".
            return Ok(consumed(input.len()));
        }
        match self.tx.payload {
            Payload::None => {}
            Payload::Write {
                cookie,
                offset,
                remaining,
            } => {
                let n = remaining.min(input.len() as u64) as usize;
                if n == 0 {
                    return Ok(consumed(0));
                }
                let left = remaining - n as u64;
                self.tx.payload = if left == 0 {
                    Payload::None
                } else {
                    Payload::Write {
                        cookie,
                        offset: offset + n as u64,
                        remaining: left,
                    }
                };
                return Ok(Progress {
                    consumed: n,
                    lent: Some(Lent::WriteData {
                        cookie,
                        offset,
                        data: &input[..n],
                    }),
                });
            }
            Payload::Discard { remaining, reply } => {
                let n = remaining.min(input.len() as u64);
                let left = remaining - n;
                if left == 0 {
                    self.tx.payload = Payload::None;
                    // Room was checked before entering Discard.
                    let _ = self.queue.push_back(reply);
                } else {
                    self.tx.payload = Payload::Discard {
                        remaining: left,
                        reply,
                    };
                }
                return Ok(consumed(n as usize));
            }
        }
        if self.tx.in_flight >= self.config.max_in_flight || self.queue.is_full() {
            return Ok(consumed(0));
        }
        let extended = self.tx.style == HeaderStyle::Extended;
        let Some(req) = RequestRepr::parse(input, extended)? else {
            return Ok(consumed(0));
        };
        let hdr = self.tx.style.request_len();
        // With extended headers the spec wants PAYLOAD_LEN on every WRITE, but QEMU (10.0)
        // sends extended WRITEs without it, and its own server reads the payload anyway: so
        // does ours, or the data would be parsed as requests.
        let payload_len = if extended {
            if req.flags.contains(CommandFlags::PAYLOAD_LEN) || req.command == CommandType::Write {
                req.length
            } else {
                0
            }
        } else if req.command == CommandType::Write {
            req.length
        } else {
            0
        };
        let maximum = self.export().block_size.maximum;
        if payload_len > u64::from(maximum) {
            return Err(Error::PayloadTooLarge {
                length: payload_len,
                maximum,
            });
        }
        let refuse = |this: &mut Self, (code, msg): (ErrorCode, &'static str), n: usize| {
            trace!("nbd server: refusing request: {}", msg);
            let reply = Queued {
                cookie: req.cookie,
                offset: req.offset,
                result: Err((code, msg)),
            };
            if payload_len > 0 {
                this.tx.payload = Payload::Discard {
                    remaining: payload_len,
                    reply,
                };
            } else {
                let _ = this.queue.push_back(reply);
            }
            Ok(consumed(n))
        };
        if req.command == CommandType::Disc {
            self.tx.disconnecting = true;
            debug!("nbd server: client disconnects");
            self.check_finished();
            return Ok(consumed(input.len()));
        }
        let command = match self.validate(&req) {
            Ok(c) => c,
            Err(e) => return refuse(self, e, hdr),
        };
        let mut request = Request {
            cookie: req.cookie,
            command,
            flags: req.flags,
            offset: req.offset,
            length: req.length,
        };
        let mut used = hdr;
        if command == Command::BlockStatus {
            if req.flags.contains(CommandFlags::PAYLOAD_LEN) {
                // The payload form: u64 effect length, then the context ids to report on.
                let Some(payload) = input.get(hdr..hdr + payload_len as usize) else {
                    return Ok(consumed(0));
                };
                let mut r = Reader::new(payload);
                let effect = r.u64().unwrap_or(0);
                let ids_ok = r.remaining() == 4 && r.u32() == Some(BASE_ALLOCATION_ID);
                if !ids_ok {
                    return refuse(
                        self,
                        (ErrorCode::Inval, "unknown or duplicate metadata context id"),
                        hdr,
                    );
                }
                request.length = effect;
                used += payload_len as usize;
                request.flags.remove(CommandFlags::PAYLOAD_LEN);
            }
            let size = self.export().size;
            if request.length == 0 || request.offset >= size {
                return refuse(
                    self,
                    (
                        ErrorCode::Inval,
                        "block status range is empty or beyond the end",
                    ),
                    used,
                );
            }
            request.length = request.length.min(size - request.offset);
        }
        if request.length == 0 && command != Command::Flush {
            // Zero-length READ/WRITE/TRIM/CACHE/WRITE_ZEROES: nothing to do, success.
            let _ = self.queue.push_back(Queued {
                cookie: req.cookie,
                offset: req.offset,
                result: Ok(()),
            });
            return Ok(consumed(used));
        }
        self.tx.in_flight += 1;
        if command == Command::Write {
            self.tx.payload = Payload::Write {
                cookie: req.cookie,
                offset: req.offset,
                remaining: payload_len,
            };
        }
        Ok(Progress {
            consumed: used,
            lent: Some(Lent::Request(request)),
        })
    }

    /// Validates a request against the negotiation and the export; the error to answer with.
    fn validate(&self, req: &RequestRepr) -> Checked<Command> {
        use CommandFlags as F;
        use TransmissionFlags as T;
        const EINVAL: ErrorCode = ErrorCode::Inval;
        let t = self.tx.flags;
        let e = self.export();
        let command = match req.command {
            CommandType::Read => Command::Read,
            CommandType::Write => Command::Write,
            CommandType::Flush => Command::Flush,
            CommandType::Trim => Command::Trim,
            CommandType::Cache => Command::Cache,
            CommandType::WriteZeroes => Command::WriteZeroes,
            CommandType::BlockStatus => Command::BlockStatus,
            _ => return Err((EINVAL, "unknown command")),
        };
        let mut allowed = req.command.allowed_flags(t);
        if self.tx.style == HeaderStyle::Extended {
            allowed |= F::PAYLOAD_LEN;
        }
        if !allowed.contains(req.flags) {
            return Err((EINVAL, "command flag not valid for this command"));
        }
        let payload = req.flags.contains(F::PAYLOAD_LEN);
        match command {
            Command::BlockStatus if payload => {
                if !t.contains(T::BLOCK_STATUS_PAYLOAD) {
                    return Err((EINVAL, "block status payload form not offered"));
                }
                let n = req.length;
                if n < 8 || !(n - 8).is_multiple_of(4) || (n - 8) / 4 > MAX_STATUS_IDS {
                    return Err((EINVAL, "malformed block status payload"));
                }
            }
            Command::Write | Command::BlockStatus => {}
            _ if payload => return Err((EINVAL, "this command takes no payload")),
            _ => {}
        }
        if req.command.writes() && e.read_only {
            return Err((ErrorCode::Perm, "the export is read-only"));
        }
        let advertised = if command == Command::BlockStatus {
            self.tx.base_allocation
        } else {
            req.command
                .advertised_by()
                .is_none_or(|(flag, _)| t.contains(flag))
        };
        if !advertised {
            return Err((EINVAL, "command not negotiated for this export"));
        }
        if command == Command::Flush {
            if req.offset != 0 || req.length != 0 {
                return Err((EINVAL, "FLUSH offset and length must be zero"));
            }
            return Ok(command);
        }
        if command == Command::BlockStatus {
            // Range checks happen once the effect length is known (payload form).
            return Ok(command);
        }
        let end = req.offset.checked_add(req.length);
        if end.is_none_or(|end| end > e.size) {
            return Err(
                if matches!(command, Command::Write | Command::WriteZeroes) {
                    (
                        ErrorCode::NoSpc,
                        "request reaches past the end of the export",
                    )
                } else {
                    (EINVAL, "request reaches past the end of the export")
                },
            );
        }
        if !e.block_size.aligned(req.offset, req.length) {
            return Err((EINVAL, "request not aligned to the minimum block size"));
        }
        if command == Command::Read && req.length > u64::from(e.block_size.maximum) {
            return Err((
                ErrorCode::Overflow,
                "read longer than the maximum payload size",
            ));
        }
        Ok(command)
    }

    fn check_any_reply(&self) -> Result<(), CommandError> {
        if self.phase != Phase::Transmission || self.tx.in_flight == 0 {
            return Err(CommandError::InvalidState);
        }
        Ok(())
    }

    fn check_reply(&self, req: &Request, command: Command) -> Result<(), CommandError> {
        self.check_any_reply()?;
        if req.command != command {
            return Err(CommandError::InvalidArgument(
                "reply does not fit the command",
            ));
        }
        Ok(())
    }

    fn chunk(&self, req: &Request, chunk: ChunkType, length: u64, done: bool) -> ChunkHeaderRepr {
        chunk_header(self.tx.style, req.cookie, req.offset, chunk, length, done)
    }

    fn encode_result(
        &self,
        cookie: u64,
        offset: u64,
        result: Result<(), (ErrorCode, &str)>,
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        let style = self.tx.style;
        match (style, result) {
            (HeaderStyle::Simple, r) => Ok(SimpleReplyRepr {
                error: r.err().map_or(0, |(c, _)| c.into()),
                cookie,
            }
            .emit(out)?),
            (_, Ok(())) => {
                Ok(chunk_header(style, cookie, offset, ChunkType::None, 0, true).emit(out)?)
            }
            (_, Err((code, msg))) => {
                let msg = truncate(msg, MAX_STRING_LEN);
                let e = ErrorChunkRepr {
                    error: code.into(),
                    message: msg,
                    offset: None,
                };
                let hdr = chunk_header(
                    style,
                    cookie,
                    offset,
                    ChunkType::Error,
                    e.buffer_len() as u64,
                    true,
                );
                let mut w = Writer::new(out, hdr.buffer_len() + e.buffer_len())?;
                w.nested(|b| hdr.emit(b))?.nested(|b| e.emit(b))?;
                Ok(w.len())
            }
        }
    }

    fn finish(&mut self) {
        self.tx.in_flight = self.tx.in_flight.saturating_sub(1);
        self.check_finished();
    }

    fn check_finished(&mut self) {
        if self.phase == Phase::Transmission
            && self.tx.disconnecting
            && self.tx.in_flight == 0
            && self.queue.is_empty()
        {
            self.phase = Phase::Closed;
            self.push_event(Event::Finished);
        }
    }

    fn push_event(&mut self, e: Event) {
        // Events are few and drained after every call; a full queue means the driver ignores
        // them, and dropping the oldest is the least harm.
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(e);
    }
}

fn consumed<'i>(n: usize) -> Progress<'i> {
    Progress {
        consumed: n,
        lent: None,
    }
}

/// An option reply: the header, then `len` bytes of data that `data` writes.
fn option_reply(
    buf: &mut [u8],
    option: OptionType,
    reply: ReplyType,
    len: usize,
    data: impl FnOnce(&mut [u8]) -> Result<usize, InsufficientSize>,
) -> Result<usize, InsufficientSize> {
    let mut w = Writer::new(buf, OptionReplyHeaderRepr::LEN + len)?;
    let header = OptionReplyHeaderRepr {
        option,
        reply,
        length: len as u32,
    };
    w.nested(|b| header.emit(b))?.nested(data)?;
    Ok(w.len())
}

fn no_data(_: &mut [u8]) -> Result<usize, InsufficientSize> {
    Ok(0)
}

fn unsupported(opt: OptionType) -> Reply {
    Reply::Error(opt, ReplyType::ErrUnsup, "option not supported")
}

fn check_within(req: &Request, offset: u64, len: u64) -> Result<(), CommandError> {
    let end = offset.checked_add(len);
    let req_end = req.offset.saturating_add(req.length);
    if len == 0 || offset < req.offset || end.is_none_or(|end| end > req_end) {
        return Err(CommandError::InvalidArgument(
            "reply data must be a non-empty part of the requested range",
        ));
    }
    Ok(())
}

fn chunk_header(
    style: HeaderStyle,
    cookie: u64,
    offset: u64,
    chunk: ChunkType,
    length: u64,
    done: bool,
) -> ChunkHeaderRepr {
    let extended = style == HeaderStyle::Extended;
    ChunkHeaderRepr {
        flags: if done {
            ReplyFlags::DONE
        } else {
            ReplyFlags::empty()
        },
        chunk,
        cookie,
        offset: if extended { offset } else { 0 },
        length,
        extended,
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character boundary.
pub(crate) fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}
