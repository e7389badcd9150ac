//! The NBD client state machine, and [`Negotiator`], which runs the usual option sequence
//! (STARTTLS, extended headers or structured replies, `base:allocation`, GO with an EXPORT_NAME
//! fallback) on top of it.
//!
//! Options and requests are commands that encode straight into the caller's buffer; replies come
//! back from [`Client::handle_input`] as [`Item`]s that borrow the input (READ data is lent, never
//! copied). Up to `N` requests may be in flight.
//!
//! # Phases
//!
//! ```text
//!   Greeting ─ the greeting (client flags pending) ─► Options
//!   Options ─ opt_*() ─► AwaitReply(opt) ─ LIST, INFO or META items ─► AwaitReply(opt)
//!                        AwaitReply(opt) ─ an error, or any other ACK ─► Options
//!                        AwaitReply(STARTTLS) ─ ACK ─► AwaitTls ─ tls_established() ─► Options
//!                        AwaitReply(GO) ─ ACK ─► Transmission
//!                        AwaitReply(ABORT) ─ ACK, or EOF ─► Closed
//!   Options ─ opt_export_name() ─► AwaitExportName ─ its reply ─► Transmission
//!                                  AwaitExportName ─ EOF ─► Failed (unknown export)
//!   Transmission ─ disconnect(), once nothing is in flight ─► Closed
//!   any phase ─ protocol error, unexpected EOF ─► Failed
//! ```
//!
//! What is valid where:
//! - `Options`, once the client flags are drained ([`Client::can_send_option`]): the `opt_*`
//!   commands (all but EXPORT_NAME need fixed newstyle; with `tls_required` and no TLS yet only
//!   STARTTLS and ABORT). Nothing may arrive from the server.
//! - `AwaitReply`: the replies to that option, nothing else. `AwaitTls`: nothing is read (the
//!   bytes belong to the TLS layer); the command [`Client::tls_established`].
//! - `Transmission`: [`Client::request`] and its shorthands while [`Client::can_send_request`],
//!   [`Client::disconnect`]; replies to requests in flight.
//! - `Closed`: nothing more may arrive. Other commands in the wrong phase are
//!   [`CommandError::InvalidState`].
//!
//! # Transitions happen on input
//!
//! The phase changes when `handle_input` consumes a reply (the STARTTLS ACK enters `AwaitTls`,
//! GO's ACK or EXPORT_NAME's reply `Transmission`, ABORT's ACK `Closed`) or when a command is
//! issued (an option enters `AwaitReply`, DISC with nothing in flight `Closed`; with requests in
//! flight the last reply consumed after DISC does), never in `poll_transmit`, and the events
//! are queued right then. The one message the client writes
//! on its own, the client flags after the greeting, is pending output: `Options` is entered on
//! the greeting, and no option can be sent until `poll_transmit` has written the flags.
//!
//! The code is one file per phase: this one holds the types, the state, the input dispatch and
//! the polls; `negotiate.rs` the greeting, the option commands and replies and the step into
//! transmission; `transmission.rs` requests and their replies; `negotiator.rs` the
//! [`Negotiator`] and its [`Plan`].

use heapless::{Deque, Vec};

use crate::error::{CommandError, Error, RequestError};
use crate::time::Instant;
use crate::wire::*;

mod negotiate;
mod negotiator;
mod transmission;

pub use negotiator::{Goal, NegotiateError, Negotiator, Plan, TlsPolicy};

/// Client configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub struct ClientConfig {
    /// Refuse to send anything but STARTTLS in the clear, and fail if TLS cannot be had
    /// (`nbds://`).
    pub tls_required: bool,
    /// Longest option reply data accepted (and the input buffer needed: see
    /// [`ClientConfig::input_buffer_len`]).
    pub max_reply_len: u32,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl ClientConfig {
    /// The defaults (no TLS required, 16 KiB option replies), usable in `const` items.
    pub const fn new() -> Self {
        Self {
            tls_required: false,
            max_reply_len: 16 * 1024,
        }
    }

    /// With TLS required or not.
    pub const fn with_tls_required(mut self, tls_required: bool) -> Self {
        self.tls_required = tls_required;
        self
    }

    /// With this longest option reply.
    pub const fn with_max_reply_len(mut self, max_reply_len: u32) -> Self {
        self.max_reply_len = max_reply_len;
        self
    }

    /// The smallest input buffer the driver must offer `handle_input`.
    pub fn input_buffer_len(&self) -> usize {
        (OptionReplyHeaderRepr::LEN + self.max_reply_len as usize)
            .max(ChunkHeaderRepr::EXTENDED_LEN + 6 + MAX_STRING_LEN + 8)
    }
}

/// What the client knows about the export it uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct ExportInfo {
    /// Size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: TransmissionFlags,
    /// Block size constraints (the defaults if the server sent none).
    pub block_size: BlockSize,
}

/// An option's final outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct OptionError<'i> {
    /// The error reply.
    pub reply: ReplyType,
    /// The server's message (may be empty).
    pub message: &'i str,
}

/// Something the server said, lent from the input until the next call.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Item<'i> {
    /// An `NBD_REP_SERVER` entry of LIST.
    ListEntry {
        /// Export name.
        name: &'i str,
        /// Description.
        description: &'i str,
    },
    /// An `NBD_REP_INFO` of INFO or GO.
    Info(InfoReplyRepr<'i>),
    /// An `NBD_REP_META_CONTEXT` of LIST_META_CONTEXT or SET_META_CONTEXT.
    MetaContext {
        /// Context id (meaningful for SET only).
        id: u32,
        /// Context name.
        name: &'i str,
    },
    /// The final reply to the outstanding option.
    OptionDone {
        /// The option.
        option: OptionType,
        /// `Ok` for ACK.
        result: Result<(), OptionError<'i>>,
    },
    /// A piece of READ data for export `offset`.
    ReadData {
        /// The request.
        cookie: u64,
        /// Export offset of `data[0]`.
        offset: u64,
        /// The bytes, straight from the input.
        data: &'i [u8],
    },
    /// A hole: `length` bytes at `offset` read as zeroes.
    ReadHole {
        /// The request.
        cookie: u64,
        /// Export offset.
        offset: u64,
        /// Length.
        length: u32,
    },
    /// Block-status extents (a run of them; one reply may lend several runs).
    Extents {
        /// The request.
        cookie: u64,
        /// The metadata context id.
        context: u32,
        /// The extents.
        extents: ExtentsView<'i>,
    },
    /// An error chunk (the request will complete with an error).
    ChunkError {
        /// The request.
        cookie: u64,
        /// The error.
        code: ErrorCode,
        /// The server's message.
        message: &'i str,
        /// Where the error happened (`ERROR_OFFSET`).
        offset: Option<u64>,
    },
    /// A request completed.
    Done {
        /// The request.
        cookie: u64,
        /// Its outcome.
        result: Result<(), RequestError>,
    },
}

/// The result of one `handle_input` call.
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Progress<'i> {
    /// Bytes consumed.
    pub consumed: usize,
    /// What the server said, if a message (or a piece of one) was complete.
    pub item: Option<Item<'i>>,
}

/// Milestones.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
#[non_exhaustive]
pub enum Event {
    /// The server's greeting arrived; options may be sent (all of them only with fixed newstyle).
    Greeted {
        /// The server speaks fixed newstyle.
        fixed_newstyle: bool,
    },
    /// STARTTLS was acknowledged. Send nothing more in the clear: put the TLS layer between
    /// the transport and the client (bytes already received after the ACK go to it), run the
    /// handshake with certificate validation, then call [`Client::tls_established`].
    StartTls,
    /// The transmission phase has begun.
    Ready(ExportInfo),
    /// The conversation is over (ABORT answered, or DISC sent): close the connection.
    Finished,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Greeting,
    Options,
    AwaitReply(OptionType),
    AwaitExportName,
    AwaitTls,
    Transmission,
    Closed,
    Failed,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    cookie: u64,
    offset: u64,
    length: u64,
    /// READ bytes covered by data and hole chunks (READs are at most 4 GiB).
    covered: u32,
    error: u32,
    command: CommandType,
    req_one: bool,
}

/// The payload of a reply the parser is inside of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Body {
    slot: u8,
    remaining: u64,
    /// The chunk is the reply's last.
    done: bool,
    kind: BodyKind,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum BodyKind {
    /// READ data of a simple reply or an `OFFSET_DATA` chunk, for export `offset`.
    Data { offset: u64 },
    /// Descriptors of a block-status chunk.
    Extents { context: u32, wide: bool },
    /// The rest of an unknown error chunk.
    Skip,
}

/// Most contexts a SET_META_CONTEXT may select that the client tracks.
const MAX_CONTEXTS: usize = 4;
/// Longest block-status chunk accepted: the spec's 2^20 extents.
const MAX_STATUS_CHUNK: u64 = 8 + 16 * (1 << 20);

/// An NBD client connection with up to `N` requests in flight.
#[derive(Debug)]
pub struct Client<const N: usize = 16> {
    config: ClientConfig,
    phase: Phase,
    fixed: bool,
    no_zeroes: bool,
    flags_pending: bool,
    tls_active: bool,
    structured: bool,
    extended: bool,
    contexts: Vec<u32, MAX_CONTEXTS>,
    /// EXPORT info seen in the current INFO/GO reply sequence.
    info: Option<ExportInfo>,
    block_size: Option<BlockSize>,
    export: Option<ExportInfo>,
    last: Option<(OptionType, Result<(), ReplyType>)>,
    slots: Vec<Slot, N>,
    rx: Option<Body>,
    pending_done: Option<(u64, Result<(), RequestError>)>,
    disconnected: bool,
    events: Deque<Event, 4>,
}

impl<const N: usize> Client<N> {
    /// A client for a connection just opened.
    pub fn new(config: ClientConfig) -> Self {
        Self {
            config,
            phase: Phase::Greeting,
            fixed: false,
            no_zeroes: false,
            flags_pending: false,
            tls_active: false,
            structured: false,
            extended: false,
            contexts: Vec::new(),
            info: None,
            block_size: None,
            export: None,
            last: None,
            slots: Vec::new(),
            rx: None,
            pending_done: None,
            disconnected: false,
            events: Deque::new(),
        }
    }

    // ---------------------------------------------------------------- getters

    /// Whether TLS is established.
    pub fn tls_active(&self) -> bool {
        self.tls_active
    }

    /// Whether structured replies were negotiated (and extended headers were not).
    pub fn structured(&self) -> bool {
        self.structured && !self.extended
    }

    /// Whether extended headers were negotiated.
    pub fn extended(&self) -> bool {
        self.extended
    }

    /// Context ids the last SET_META_CONTEXT selected.
    pub fn contexts(&self) -> &[u32] {
        &self.contexts
    }

    /// Whether the server speaks fixed newstyle (known after the greeting).
    pub fn fixed_newstyle(&self) -> bool {
        self.fixed
    }

    /// Whether an option can be sent now (negotiation, nothing outstanding, the client flags
    /// already drained from `poll_transmit`).
    pub fn can_send_option(&self) -> bool {
        self.phase == Phase::Options && !self.flags_pending
    }

    /// The outcome of the last option that completed.
    pub fn last_option(&self) -> Option<(OptionType, Result<(), ReplyType>)> {
        self.last
    }

    /// The export in use (transmission phase).
    pub fn export(&self) -> Option<ExportInfo> {
        self.export
    }

    /// Whether the transmission phase is running.
    pub fn is_transmitting(&self) -> bool {
        self.phase == Phase::Transmission
    }

    /// Whether the conversation is over.
    pub fn is_closed(&self) -> bool {
        matches!(self.phase, Phase::Closed | Phase::Failed)
    }

    /// Requests in flight.
    pub fn in_flight(&self) -> usize {
        self.slots.len()
    }

    /// Whether another request fits.
    pub fn can_send_request(&self) -> bool {
        self.phase == Phase::Transmission && !self.disconnected && !self.slots.is_full()
    }

    /// The header style of the transmission phase.
    pub fn style(&self) -> HeaderStyle {
        if self.extended {
            HeaderStyle::Extended
        } else if self.structured {
            HeaderStyle::Structured
        } else {
            HeaderStyle::Simple
        }
    }

    // ---------------------------------------------------------------- input handlers

    /// Feeds received bytes; at most one message (or piece of READ data or extents) per call.
    /// Call again with the unconsumed rest while it consumes or yields something. An `Err` is
    /// fatal.
    pub fn handle_input<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        let r = self.input(input);
        if let Err(e) = r {
            debug!("nbd client: fatal: {:?}", e);
            self.phase = Phase::Failed;
        }
        r
    }

    /// The server closed its side.
    pub fn handle_eof(&mut self) -> Result<(), Error> {
        match self.phase {
            Phase::Closed | Phase::Failed => Ok(()),
            Phase::AwaitExportName => {
                // EXPORT_NAME has no error reply: the server hangs up on an unknown export.
                self.phase = Phase::Failed;
                Err(Error::UnknownExport)
            }
            Phase::Transmission if self.disconnected => {
                self.phase = Phase::Closed;
                Ok(())
            }
            Phase::AwaitReply(OptionType::Abort) => {
                // Servers may close after ABORT without replying.
                self.phase = Phase::Closed;
                self.push_event(Event::Finished);
                Ok(())
            }
            _ => {
                self.phase = Phase::Failed;
                Err(Error::UnexpectedEof)
            }
        }
    }

    /// The client has no timers of its own; deadlines belong to the application.
    pub fn handle_timeout(&mut self, _now: Instant) {}

    // ---------------------------------------------------------------- polls

    /// Writes what the client sends on its own (the client flags after the greeting).
    #[must_use = "the output must be sent"]
    pub fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<Option<usize>, InsufficientSize> {
        if self.flags_pending {
            let mut flags = ClientFlags::empty();
            if self.fixed {
                flags |= ClientFlags::FIXED_NEWSTYLE;
            }
            if self.no_zeroes {
                flags |= ClientFlags::NO_ZEROES;
            }
            let n = ClientFlagsRepr { flags }.emit(buf)?;
            self.flags_pending = false;
            return Ok(Some(n));
        }
        Ok(None)
    }

    /// The next milestone.
    #[must_use]
    pub fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    /// The client has no deadlines of its own.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Instant> {
        None
    }

    // ---------------------------------------------------------------- input dispatch

    fn input<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        if let Some((cookie, result)) = self.pending_done.take() {
            return Ok(progress(0, Some(Item::Done { cookie, result })));
        }
        match self.phase {
            Phase::Greeting => self.on_greeting(input),
            Phase::Options | Phase::AwaitTls => {
                // Nothing is due from the server: after a STARTTLS ACK the bytes belong to the
                // TLS layer, and before an option nothing may come.
                if input.is_empty() || self.phase == Phase::AwaitTls {
                    Ok(progress(0, None))
                } else {
                    Err(Error::UnexpectedData)
                }
            }
            Phase::AwaitReply(opt) => self.on_option_reply(opt, input),
            Phase::AwaitExportName => self.on_export_name_reply(input),
            Phase::Transmission => self.on_reply(input),
            Phase::Closed => {
                if input.is_empty() {
                    Ok(progress(0, None))
                } else {
                    Err(Error::UnexpectedData)
                }
            }
            Phase::Failed => Err(Error::Failed),
        }
    }

    fn push_event(&mut self, e: Event) {
        if self.events.is_full() {
            self.events.pop_front();
        }
        let _ = self.events.push_back(e);
    }
}

fn progress(consumed: usize, item: Option<Item<'_>>) -> Progress<'_> {
    Progress { consumed, item }
}
