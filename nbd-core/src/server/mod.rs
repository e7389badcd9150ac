//! The NBD server state machine: fixed-newstyle negotiation with every option, the TLS policy
//! of the spec's TLS section, and the transmission phase.
//!
//! See the crate documentation for the driver loop. In short: feed received bytes to
//! [`Server::handle_input`] until it consumes nothing and lends nothing; answer each lent
//! [`Request`] with one of the `reply_*` commands, which encode straight into your output
//! buffer (READ data goes right behind the header, from your own buffer); drain
//! [`Server::poll_transmit`], then [`Server::poll_event`], then [`Server::poll_timeout`].
//!
//! # Phases
//!
//! ```text
//!   ClientFlags ─ client flags ─► Options
//!   Options ─┬─ any other option, or one refused: its reply pending ─► Options
//!            ├─ option over max_option_len ─► Drain ─ data read, ERR_TOO_BIG pending ─► Options
//!            ├─ STARTTLS: ACK pending ─► AwaitTls ─ tls_established() ─► Options
//!            ├─ GO: INFOs, ACK pending ─────┐
//!            ├─ EXPORT_NAME: reply pending ─┴─► Transmission
//!            └─ ABORT: ACK pending ──────────► Closed
//!   Transmission ─ DISC, then every reply written ─► Closed;   Transmission ─ EOF ─► Closed
//!   any phase ─ protocol error, EOF in negotiation, handshake deadline ─► Failed
//! ```
//!
//! ("pending": the reply is written by `poll_transmit`; the arrow is taken when `handle_input`
//! consumes the option.)
//!
//! What is valid where:
//! - `ClientFlags`: the client's 4 flag bytes. `Options`: one option at a time (with
//!   [`TlsMode::Forced`] and no TLS yet only STARTTLS and ABORT are answered in substance).
//!   `Drain`: the rest of an oversized option, read and dropped. `AwaitTls`: nothing is read;
//!   the command [`Server::tls_established`] (once the ACK is written). `Transmission`:
//!   requests; the `reply_*` commands for lent requests, [`Server::read_data_header_len`].
//!   `Closed`: input is dropped unread. `Failed`: every `handle_input` is an error.
//! - The getters are valid everywhere; `reply_*` outside transmission (or with nothing in
//!   flight) is [`CommandError::InvalidState`].
//!
//! # Transitions happen on input
//!
//! The phase changes, and its events are queued, when `handle_input` *handles* an option: on
//! STARTTLS it forgets what was negotiated and enters `AwaitTls`, on ABORT `Closed`, on GO or
//! EXPORT_NAME `Transmission` (so [`Server::is_transmitting`] and [`Server::is_closed`] hold
//! as soon as the option is consumed). The replies it decided on are *pending output*:
//! `poll_transmit` writes them, and until it has, `handle_input` consumes nothing and
//! `poll_event` returns nothing. So the wire order and the events a driver sees with the
//! crate's drain order are as before: [`Event::StartTls`] after the STARTTLS ACK was written,
//! [`Event::Ready`] after GO's final ACK (or EXPORT_NAME's reply), [`Event::Finished`] after
//! ABORT's ACK. Multi-part replies (LIST entries, INFO items, meta contexts) keep a cursor in
//! the pending reply that `poll_transmit` advances as it writes each part: that is output
//! progress, not a protocol transition.
//!
//! The code is one file per phase: this one holds the types, the state, the input dispatch,
//! the polls and the event queue; `negotiate.rs` the client flags, every option, the TLS
//! policy, the option replies and the step into transmission; `transmission.rs` requests,
//! their validation, the `reply_*` commands and chunk encoding.

use heapless::Deque;

use crate::error::{CommandError, Error};
use crate::export::{ConfigError, Export, ExportFeatures};
use crate::time::{Duration, Instant};
use crate::wire::*;

mod negotiate;
mod transmission;

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
#[non_exhaustive]
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
///
/// Requests the core can answer alone never reach the application: a zero-length READ,
/// WRITE, TRIM, CACHE or WRITE_ZEROES succeeds at once, and a request that breaks a rule
/// (beyond the end, misaligned, a flag not negotiated, a write to a read-only export) gets
/// the spec's error; both replies come out of `poll_transmit` in order with the others.
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
    /// arrives as one or more pieces, in order, right after its `Request`; the payload is
    /// complete when the pieces add up to the request's `length` (the last piece ends at
    /// `offset + length`): reply then. No other request is lent in between.
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

/// An option reply still to be written: what `handle_input` decided, which `poll_transmit`
/// drains. The multi-part ones keep a cursor that advances as each part is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reply {
    /// ACK (what it sets off for STARTTLS, ABORT and GO happened when the option was handled).
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
    /// The option reply still to be written: while there is one, no input is read and no event
    /// is given out.
    reply: Option<Reply>,
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
            reply: None,
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

    // ---------------------------------------------------------------- getters

    /// The configuration.
    pub fn config(&self) -> &ServerConfig<'a> {
        &self.config
    }

    /// Whether TLS has been established on this connection.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Whether the transmission phase is running: from the moment `handle_input` consumed a
    /// successful GO or EXPORT_NAME, while the final reply may still be pending in
    /// `poll_transmit` (requests are read once it is written).
    pub fn is_transmitting(&self) -> bool {
        self.phase == Phase::Transmission
    }

    /// Requests lent and not yet answered.
    pub fn in_flight(&self) -> u16 {
        self.tx.in_flight
    }

    /// Whether the conversation is over (cleanly or not): close the connection, once
    /// `poll_transmit` is drained (after ABORT this holds as soon as the option is consumed,
    /// with its ACK still pending).
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Failed)
    }

    // ---------------------------------------------------------------- input handlers

    /// Feeds received bytes. Handles at most one message (or one piece of a WRITE payload)
    /// per call; call again with the rest while `consumed > 0` or something is lent. Incomplete
    /// messages consume nothing. An `Err` is fatal: close the connection.
    pub fn handle_input<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        if self.reply.is_some() {
            // A reply is still to be written: nothing is read until it is (the option's
            // transition has happened already).
            return Ok(consumed(0));
        }
        let r = match self.phase {
            Phase::ClientFlags => self.on_client_flags(input),
            Phase::Options => self.on_option(input),
            Phase::Drain { remaining, option } => {
                let n = (remaining as usize).min(input.len());
                let left = remaining - n as u32;
                if left == 0 {
                    self.phase = Phase::Options;
                    self.reply = Some(Reply::Error(
                        option,
                        ReplyType::ErrTooBig,
                        "option data longer than this server accepts",
                    ));
                } else {
                    self.phase = Phase::Drain {
                        remaining: left,
                        option,
                    };
                }
                Ok(consumed(n))
            }
            Phase::AwaitTls => Ok(consumed(0)),
            Phase::Transmission => self.on_transmission(input),
            // Nothing may follow ABORT or DISC; whatever does is dropped unread.
            Phase::Closed => Ok(consumed(input.len())),
            Phase::Failed => Err(Error::Failed),
        };
        if let Err(e) = r {
            debug!("nbd server: fatal: {:?}", e);
            self.fail();
        }
        r
    }

    /// The peer closed its sending side. In negotiation that is an error (unless after ABORT);
    /// in transmission it is a hard disconnect the driver simply follows. (Once ABORT, GO or
    /// EXPORT_NAME has been consumed the phase is `Closed` or `Transmission`, even while its
    /// reply is still pending.)
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        match self.phase {
            Phase::Closed | Phase::Failed => Ok(()),
            Phase::Transmission => {
                self.phase = Phase::Closed;
                Ok(())
            }
            _ => {
                self.fail();
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
            self.fail();
            self.push_event(Event::TimedOut);
        }
    }

    // ---------------------------------------------------------------- polls

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
        if let Some(r) = self.reply {
            return self.emit_reply(r, buf).map(Some);
        }
        match self.phase {
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

    /// The next milestone, if any. None while a reply is pending in `poll_transmit`: the
    /// events an option set off come after its reply has been written.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        if self.reply.is_some() {
            return None;
        }
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

    /// Gives up: nothing pending is written any more.
    fn fail(&mut self) {
        self.phase = Phase::Failed;
        self.reply = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    static EXPORTS: [Export<'static>; 1] = [Export::new("disk", 1 << 20)];

    fn option(o: OptionType, data: &[u8], buf: &mut [u8]) -> usize {
        OptionHeaderRepr {
            option: o,
            length: data.len() as u32,
        }
        .emit(buf)
        .unwrap();
        buf[16..16 + data.len()].copy_from_slice(data);
        16 + data.len()
    }

    /// The phase, the negotiated state and the events change when an option is handled; the
    /// reply waits in `reply`, and only writing it lets the events out.
    #[test]
    fn transitions_happen_when_the_option_is_handled() {
        let mut config = ServerConfig::new(&EXPORTS);
        config.tls = TlsMode::Selective;
        let mut s = Server::new(config, Instant::ZERO).unwrap();
        let (mut inp, mut out) = ([0u8; 64], [0u8; 256]);
        assert_eq!(s.poll_transmit(&mut out), Ok(Some(18)));
        assert_eq!(s.handle_input(&3u32.to_be_bytes()).unwrap().consumed, 4);
        let n = option(OptionType::StructuredReply, &[], &mut inp);
        assert_eq!(s.handle_input(&inp[..n]).unwrap().consumed, n);
        assert!(s.neg.structured);
        assert_eq!(s.poll_transmit(&mut out), Ok(Some(20)));

        let n = option(OptionType::StartTls, &[], &mut inp);
        assert_eq!(s.handle_input(&inp[..n]).unwrap().consumed, n);
        assert_eq!(s.phase, Phase::AwaitTls);
        assert_eq!(
            s.neg,
            Negotiated::default(),
            "forgotten when STARTTLS is handled"
        );
        assert_eq!(s.reply, Some(Reply::Ack(OptionType::StartTls)));
        assert_eq!(s.events.front(), Some(&Event::StartTls));
        assert_eq!(s.poll_event(), None, "held back until the ACK is written");
        assert_eq!(s.poll_transmit(&mut out), Ok(Some(20)));
        assert_eq!((s.phase, s.reply), (Phase::AwaitTls, None));
        assert_eq!(s.poll_event(), Some(Event::StartTls));
        s.tls_established().unwrap();

        let n = option(OptionType::Go, b"\0\0\0\x04disk\0\0", &mut inp);
        assert_eq!(s.handle_input(&inp[..n]).unwrap().consumed, n);
        assert_eq!(s.phase, Phase::Transmission);
        assert_eq!((s.tx.export, s.tx.style), (0, HeaderStyle::Simple));
        assert_eq!(s.deadline, None);
        assert!(matches!(s.reply, Some(Reply::Info { go: true, .. })));
        assert!(matches!(s.events.front(), Some(Event::Ready(_))));
        // The INFO cursor advances as parts are written; the phase stays.
        assert!(s.poll_transmit(&mut out).unwrap().is_some());
        assert!(matches!(
            s.reply,
            Some(Reply::Info {
                pending: InfoMask(0),
                ..
            })
        ));
        assert_eq!(s.poll_event(), None);
        assert_eq!(s.poll_transmit(&mut out), Ok(Some(20)));
        assert_eq!((s.phase, s.reply), (Phase::Transmission, None));
        assert!(matches!(s.poll_event(), Some(Event::Ready(_))));
    }
}
