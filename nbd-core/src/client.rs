//! The NBD client state machine, and [`Negotiator`], which runs the usual option sequence
//! (STARTTLS, extended headers or structured replies, `base:allocation`, GO with an EXPORT_NAME
//! fallback) on top of it.
//!
//! Options and requests are commands that encode straight into the caller's buffer; replies come
//! back from [`Client::handle_input`] as [`Item`]s that borrow the input (READ data is lent, never
//! copied). Up to `N` requests may be in flight.

use heapless::{Deque, Vec};

use crate::error::{CommandError, Error, RequestError};
use crate::time::Instant;
use crate::wire::*;

/// Client configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
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
        Self {
            tls_required: false,
            max_reply_len: 16 * 1024,
        }
    }
}

impl ClientConfig {
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

    // ---------------------------------------------------------------- A. getters

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

    // ---------------------------------------------------------------- B. handlers

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

    // ---------------------------------------------------------------- C. commands

    /// TLS is up and the server's certificate validated: negotiation continues, encrypted,
    /// with nothing negotiated before STARTTLS kept.
    pub fn tls_established(&mut self) -> Result<(), CommandError> {
        if self.phase != Phase::AwaitTls {
            return Err(CommandError::InvalidState);
        }
        self.tls_active = true;
        self.structured = false;
        self.extended = false;
        self.contexts.clear();
        self.info = None;
        self.block_size = None;
        self.phase = Phase::Options;
        Ok(())
    }

    /// `NBD_OPT_STARTTLS`.
    pub fn opt_starttls(&mut self, out: &mut [u8]) -> Result<usize, CommandError> {
        if self.tls_active {
            return Err(CommandError::InvalidState);
        }
        self.send_option(OptionType::StartTls, out, 0, |_| Ok(0))
    }

    /// `NBD_OPT_STRUCTURED_REPLY`.
    pub fn opt_structured_reply(&mut self, out: &mut [u8]) -> Result<usize, CommandError> {
        self.send_option(OptionType::StructuredReply, out, 0, |_| Ok(0))
    }

    /// `NBD_OPT_EXTENDED_HEADERS`.
    pub fn opt_extended_headers(&mut self, out: &mut [u8]) -> Result<usize, CommandError> {
        self.send_option(OptionType::ExtendedHeaders, out, 0, |_| Ok(0))
    }

    /// `NBD_OPT_LIST`.
    pub fn opt_list(&mut self, out: &mut [u8]) -> Result<usize, CommandError> {
        self.send_option(OptionType::List, out, 0, |_| Ok(0))
    }

    /// `NBD_OPT_ABORT`.
    pub fn opt_abort(&mut self, out: &mut [u8]) -> Result<usize, CommandError> {
        self.send_option(OptionType::Abort, out, 0, |_| Ok(0))
    }

    /// `NBD_OPT_INFO` for `name`, asking for `requests` (EXPORT always comes).
    pub fn opt_info(
        &mut self,
        name: &str,
        requests: &[InfoType],
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        self.info_or_go(OptionType::Info, name, requests, out)
    }

    /// `NBD_OPT_GO` for `name`: on ACK the transmission phase begins.
    pub fn opt_go(
        &mut self,
        name: &str,
        requests: &[InfoType],
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        self.info_or_go(OptionType::Go, name, requests, out)
    }

    /// `NBD_OPT_LIST_META_CONTEXT`.
    pub fn opt_list_meta_context(
        &mut self,
        name: &str,
        queries: &[&str],
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        self.meta(OptionType::ListMetaContext, name, queries, out)
    }

    /// `NBD_OPT_SET_META_CONTEXT` (replaces the selection, even if it fails).
    pub fn opt_set_meta_context(
        &mut self,
        name: &str,
        queries: &[&str],
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        if !(self.structured || self.extended) {
            return Err(CommandError::InvalidState);
        }
        let n = self.meta(OptionType::SetMetaContext, name, queries, out)?;
        self.contexts.clear();
        Ok(n)
    }

    /// `NBD_OPT_EXPORT_NAME`: ends negotiation without a way for the server to refuse politely
    /// (prefer GO; not allowed after extended headers).
    pub fn opt_export_name(&mut self, name: &str, out: &mut [u8]) -> Result<usize, CommandError> {
        if self.extended {
            return Err(CommandError::InvalidState);
        }
        check_name(name)?;
        let n = self.send_option_any(OptionType::ExportName, out, name.len(), |buf| {
            buf[..name.len()].copy_from_slice(name.as_bytes());
            Ok(name.len())
        })?;
        self.phase = Phase::AwaitExportName;
        Ok(n)
    }

    /// Encodes a request header. For WRITE, send exactly `length` bytes of data right behind
    /// it. The request is checked against what the server advertised (commands, flags, size,
    /// block sizes) before anything is written.
    pub fn request(
        &mut self,
        command: CommandType,
        mut flags: CommandFlags,
        cookie: u64,
        offset: u64,
        length: u64,
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        use CommandFlags as F;
        use TransmissionFlags as T;
        if self.phase != Phase::Transmission || self.disconnected {
            return Err(CommandError::InvalidState);
        }
        if self.slots.is_full() {
            return Err(CommandError::TooManyInFlight);
        }
        if self.slots.iter().any(|s| s.cookie == cookie) {
            return Err(CommandError::InvalidArgument("cookie already in flight"));
        }
        let info = self.export.unwrap_or(ExportInfo {
            size: 0,
            flags: T::HAS_FLAGS,
            block_size: BlockSize::DEFAULT,
        });
        let t = info.flags;
        if matches!(
            command,
            CommandType::Disc | CommandType::Resize | CommandType::Unknown(_)
        ) {
            return Err(CommandError::InvalidArgument("use disconnect() for DISC"));
        }
        if command == CommandType::BlockStatus && self.contexts.is_empty() {
            return Err(CommandError::NotSupported("no metadata context negotiated"));
        }
        if let Some((needed, what)) = command.advertised_by()
            && !t.contains(needed)
        {
            return Err(CommandError::NotSupported(what));
        }
        if command.writes() && t.contains(T::READ_ONLY) {
            return Err(CommandError::NotSupported("the export is read-only"));
        }
        if !command.allowed_flags(t).contains(flags) {
            return Err(CommandError::NotSupported(
                "command flag not advertised for this command",
            ));
        }
        if command == CommandType::Flush {
            if offset != 0 || length != 0 {
                return Err(CommandError::InvalidArgument(
                    "FLUSH has offset and length 0",
                ));
            }
        } else {
            if offset.checked_add(length).is_none_or(|end| end > info.size) {
                return Err(CommandError::InvalidArgument(
                    "request reaches past the end of the export",
                ));
            }
            if !info.block_size.aligned(offset, length) {
                return Err(CommandError::InvalidArgument(
                    "request not aligned to the minimum block size",
                ));
            }
        }
        if matches!(command, CommandType::Read | CommandType::Write)
            && length > u64::from(info.block_size.maximum)
        {
            return Err(CommandError::InvalidArgument(
                "longer than the maximum payload size",
            ));
        }
        if !self.extended && length > u64::from(u32::MAX) {
            return Err(CommandError::InvalidArgument(
                "length over 4 GiB needs extended headers",
            ));
        }
        if self.extended && command == CommandType::Write {
            flags |= F::PAYLOAD_LEN;
        }
        let n = RequestRepr {
            flags,
            command,
            cookie,
            offset,
            length,
        }
        .emit(out, self.extended)?;
        // Cannot fail: fullness was checked above.
        let _ = self.slots.push(Slot {
            cookie,
            offset,
            length,
            covered: 0,
            error: 0,
            command,
            req_one: flags.contains(F::REQ_ONE),
        });
        Ok(n)
    }

    /// READ `length` bytes at `offset`.
    pub fn read(
        &mut self,
        cookie: u64,
        offset: u64,
        length: u32,
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        self.request(
            CommandType::Read,
            CommandFlags::empty(),
            cookie,
            offset,
            u64::from(length),
            out,
        )
    }

    /// WRITE header for `length` bytes at `offset` (send the data right after it).
    pub fn write(
        &mut self,
        cookie: u64,
        offset: u64,
        length: u32,
        fua: bool,
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        let flags = if fua {
            CommandFlags::FUA
        } else {
            CommandFlags::empty()
        };
        self.request(
            CommandType::Write,
            flags,
            cookie,
            offset,
            u64::from(length),
            out,
        )
    }

    /// `NBD_CMD_DISC`: nothing more may be sent; close after sending it.
    pub fn disconnect(&mut self, out: &mut [u8]) -> Result<usize, CommandError> {
        if self.phase != Phase::Transmission || self.disconnected {
            return Err(CommandError::InvalidState);
        }
        let n = RequestRepr {
            flags: CommandFlags::empty(),
            command: CommandType::Disc,
            cookie: 0,
            offset: 0,
            length: 0,
        }
        .emit(out, self.extended)?;
        self.disconnected = true;
        if self.slots.is_empty() {
            self.phase = Phase::Closed;
            self.push_event(Event::Finished);
        }
        Ok(n)
    }

    // ---------------------------------------------------------------- D. polls

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

    // ---------------------------------------------------------------- internals

    fn info_or_go(
        &mut self,
        opt: OptionType,
        name: &str,
        requests: &[InfoType],
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        check_name(name)?;
        let len = InfoRequestRepr::data_len(name, requests);
        let n = self.send_option(opt, out, len, |buf| {
            Ok(InfoRequestRepr::emit_data(name, requests, buf)?)
        })?;
        self.info = None;
        self.block_size = None;
        Ok(n)
    }

    fn meta(
        &mut self,
        opt: OptionType,
        name: &str,
        queries: &[&str],
        out: &mut [u8],
    ) -> Result<usize, CommandError> {
        check_name(name)?;
        if queries
            .iter()
            .any(|q| q.len() > MAX_STRING_LEN || !q.contains(':'))
        {
            return Err(CommandError::InvalidArgument(
                "a query is `namespace:leaf`, at most 4096 bytes",
            ));
        }
        let len = MetaContextRequestRepr::data_len(name, queries);
        self.send_option(opt, out, len, |buf| {
            Ok(MetaContextRequestRepr::emit_data(name, queries, buf)?)
        })
    }

    fn send_option(
        &mut self,
        opt: OptionType,
        out: &mut [u8],
        len: usize,
        data: impl FnOnce(&mut [u8]) -> Result<usize, CommandError>,
    ) -> Result<usize, CommandError> {
        if !self.fixed {
            return Err(CommandError::NotSupported("options need fixed newstyle"));
        }
        let n = self.send_option_any(opt, out, len, data)?;
        self.phase = Phase::AwaitReply(opt);
        Ok(n)
    }

    fn send_option_any(
        &mut self,
        opt: OptionType,
        out: &mut [u8],
        len: usize,
        data: impl FnOnce(&mut [u8]) -> Result<usize, CommandError>,
    ) -> Result<usize, CommandError> {
        if self.phase != Phase::Options || self.flags_pending {
            return Err(CommandError::InvalidState);
        }
        if self.config.tls_required
            && !self.tls_active
            && !matches!(opt, OptionType::StartTls | OptionType::Abort)
        {
            return Err(CommandError::TlsRequired);
        }
        let length = u32::try_from(len)
            .map_err(|_| CommandError::InvalidArgument("option data too long"))?;
        let total = OptionHeaderRepr::LEN + len;
        if out.len() < total {
            return Err(InsufficientSize { required: total }.into());
        }
        OptionHeaderRepr {
            option: opt,
            length,
        }
        .emit(out)?;
        data(&mut out[OptionHeaderRepr::LEN..total])?;
        trace!("nbd client: option {:?}", opt);
        Ok(total)
    }

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
            Phase::AwaitExportName => {
                let Some(r) = ExportNameReplyRepr::parse(input, !self.no_zeroes) else {
                    return Ok(progress(0, None));
                };
                self.start_transmission(ExportInfo {
                    size: r.size,
                    flags: r.flags,
                    block_size: BlockSize::DEFAULT,
                });
                Ok(progress(r.buffer_len(), None))
            }
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

    fn on_greeting<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        let hello = match GreetingRepr::parse(input)? {
            None => return Ok(progress(0, None)),
            Some(ServerHello::Oldstyle) => return Err(Error::Oldstyle),
            Some(ServerHello::Newstyle(g)) => g,
        };
        self.fixed = hello.flags.contains(HandshakeFlags::FIXED_NEWSTYLE);
        self.no_zeroes = hello.flags.contains(HandshakeFlags::NO_ZEROES);
        if !self.fixed && self.config.tls_required {
            // libnbd CVE-2019-14842: never fall back to plaintext.
            return Err(Error::TlsImpossible);
        }
        self.flags_pending = true;
        self.phase = Phase::Options;
        self.push_event(Event::Greeted {
            fixed_newstyle: self.fixed,
        });
        Ok(progress(GreetingRepr::LEN, None))
    }

    fn on_option_reply<'i>(
        &mut self,
        opt: OptionType,
        input: &'i [u8],
    ) -> Result<Progress<'i>, Error> {
        let Some(h) = OptionReplyHeaderRepr::parse(input)? else {
            return Ok(progress(0, None));
        };
        if h.option != opt {
            return Err(Error::WrongOptionReply {
                expected: opt,
                got: h.option,
            });
        }
        if h.length > self.config.max_reply_len {
            return Err(Error::ReplyTooLarge(u64::from(h.length)));
        }
        let total = OptionReplyHeaderRepr::LEN + h.length as usize;
        let Some(data) = input.get(OptionReplyHeaderRepr::LEN..total) else {
            return Ok(progress(0, None));
        };
        let item = match h.reply {
            ReplyType::Ack => {
                if !data.is_empty() {
                    return Err(Malformed::BadLength.into());
                }
                self.option_acked(opt)?;
                Item::OptionDone {
                    option: opt,
                    result: Ok(()),
                }
            }
            ReplyType::Server if opt == OptionType::List => {
                let s = ServerReplyRepr::parse(data)?;
                Item::ListEntry {
                    name: s.name,
                    description: s.description,
                }
            }
            ReplyType::Info if matches!(opt, OptionType::Info | OptionType::Go) => {
                let info = InfoReplyRepr::parse(data)?;
                match info {
                    InfoReplyRepr::Export { size, flags } => {
                        self.info = Some(ExportInfo {
                            size,
                            flags,
                            block_size: BlockSize::DEFAULT,
                        });
                    }
                    InfoReplyRepr::BlockSize(b) => {
                        if !b.is_valid() {
                            return Err(Error::UnexpectedReply);
                        }
                        self.block_size = Some(b);
                    }
                    _ => {}
                }
                Item::Info(info)
            }
            ReplyType::MetaContext
                if matches!(
                    opt,
                    OptionType::ListMetaContext | OptionType::SetMetaContext
                ) =>
            {
                let m = MetaContextReplyRepr::parse(data)?;
                if opt == OptionType::SetMetaContext && !self.contexts.contains(&m.id) {
                    self.contexts
                        .push(m.id)
                        .map_err(|_| Error::UnexpectedReply)?;
                }
                Item::MetaContext {
                    id: m.id,
                    name: m.name,
                }
            }
            r if r.is_error() => {
                let message = check_string(data).unwrap_or("");
                if opt == OptionType::StartTls && self.config.tls_required {
                    return Err(Error::TlsRefused(r));
                }
                if opt == OptionType::SetMetaContext {
                    self.contexts.clear();
                }
                self.last = Some((opt, Err(r)));
                self.phase = Phase::Options;
                Item::OptionDone {
                    option: opt,
                    result: Err(OptionError { reply: r, message }),
                }
            }
            r => return Err(Error::UnexpectedOptionReply(r)),
        };
        Ok(progress(total, Some(item)))
    }

    fn option_acked(&mut self, opt: OptionType) -> Result<(), Error> {
        self.last = Some((opt, Ok(())));
        self.phase = Phase::Options;
        match opt {
            OptionType::StartTls => {
                self.phase = Phase::AwaitTls;
                self.push_event(Event::StartTls);
            }
            OptionType::StructuredReply => self.structured = true,
            OptionType::ExtendedHeaders => self.extended = true,
            OptionType::Abort => {
                self.phase = Phase::Closed;
                self.push_event(Event::Finished);
            }
            OptionType::Go => {
                let Some(mut info) = self.info else {
                    // The spec: success needs at least NBD_INFO_EXPORT (libnbd CVE-2021-20286
                    // was an assertion on odd reply counts: this is an error, not a crash).
                    return Err(Error::UnexpectedReply);
                };
                info.block_size = self.block_size.unwrap_or(BlockSize::DEFAULT);
                self.start_transmission(info);
            }
            _ => {}
        }
        Ok(())
    }

    fn start_transmission(&mut self, info: ExportInfo) {
        if !(self.structured || self.extended) {
            self.contexts.clear();
        }
        self.export = Some(info);
        self.phase = Phase::Transmission;
        debug!("nbd client: transmission, size {}", info.size);
        self.push_event(Event::Ready(info));
    }

    fn slot(&self, cookie: u64) -> Result<u8, Error> {
        self.slots
            .iter()
            .position(|s| s.cookie == cookie)
            .map(|i| i as u8)
            .ok_or(Error::UnknownCookie(cookie))
    }

    fn on_reply<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        if let Some(body) = self.rx {
            return self.on_body(body, input);
        }
        let Some(magic) = input.get(..4) else {
            return Ok(progress(0, None));
        };
        if magic == SIMPLE_REPLY_MAGIC.to_be_bytes() {
            return self.on_simple_reply(input);
        }
        let Some(h) = ChunkHeaderRepr::parse(input)? else {
            return Ok(progress(0, None));
        };
        if h.extended != self.extended || (!h.extended && !self.structured) {
            return Err(Error::BadChunk);
        }
        self.on_chunk(h, input)
    }

    fn on_body<'i>(&mut self, body: Body, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        let mut n = body.remaining.min(input.len() as u64);
        if let BodyKind::Extents { wide, .. } = body.kind {
            // Descriptors are lent whole.
            let d = ExtentsView::descriptor_len(wide) as u64;
            n = n / d * d;
        }
        if n == 0 {
            return Ok(progress(0, None));
        }
        let data = &input[..n as usize];
        let cookie = self.slots[usize::from(body.slot)].cookie;
        let (item, kind) = match body.kind {
            BodyKind::Data { offset } => (
                Some(Item::ReadData {
                    cookie,
                    offset,
                    data,
                }),
                BodyKind::Data { offset: offset + n },
            ),
            BodyKind::Extents { context, wide } => {
                let extents = ExtentsView::new(data, wide);
                if extents.iter().any(|e| e.length == 0) {
                    return Err(Error::BadChunk);
                }
                let item = Item::Extents {
                    cookie,
                    context,
                    extents,
                };
                (Some(item), body.kind)
            }
            BodyKind::Skip => (None, BodyKind::Skip),
        };
        if n < body.remaining {
            self.rx = Some(Body {
                remaining: body.remaining - n,
                kind,
                ..body
            });
        } else {
            self.rx = None;
            if body.done {
                self.complete(body.slot)?;
            }
        }
        Ok(progress(n as usize, item))
    }

    fn on_simple_reply<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        if self.extended {
            return Err(Error::BadChunk);
        }
        let Some(r) = SimpleReplyRepr::parse(input)? else {
            return Ok(progress(0, None));
        };
        let slot = self.slot(r.cookie)?;
        let s = self.slots[usize::from(slot)];
        let reading = s.command == CommandType::Read;
        if reading && self.structured {
            return Err(Error::UnexpectedReply);
        }
        if reading && r.error == 0 {
            self.slots[usize::from(slot)].covered = u32::try_from(s.length).unwrap_or(u32::MAX);
            self.rx = Some(Body {
                slot,
                remaining: s.length,
                done: true,
                kind: BodyKind::Data { offset: s.offset },
            });
            return Ok(progress(SimpleReplyRepr::LEN, None));
        }
        self.slots[usize::from(slot)].error = r.error;
        if r.error == 0 && s.command == CommandType::BlockStatus {
            return Err(Error::UnexpectedReply);
        }
        let (cookie, result) = self.finish(slot);
        Ok(progress(
            SimpleReplyRepr::LEN,
            Some(Item::Done { cookie, result }),
        ))
    }

    fn on_chunk<'i>(&mut self, h: ChunkHeaderRepr, input: &'i [u8]) -> Result<Progress<'i>, Error> {
        let slot = self.slot(h.cookie)?;
        let s = self.slots[usize::from(slot)];
        if h.extended && h.offset != s.offset {
            return Err(Error::UnexpectedReply);
        }
        let hl = h.buffer_len();
        let done = h.flags.contains(ReplyFlags::DONE);
        let req_end = s.offset.saturating_add(s.length);
        match h.chunk {
            ChunkType::None => {
                if h.length != 0 || !done {
                    return Err(Error::BadChunk);
                }
                self.complete(slot)?;
                let item = self
                    .pending_done
                    .take()
                    .map(|(cookie, result)| Item::Done { cookie, result });
                Ok(progress(hl, item))
            }
            ChunkType::OffsetData => {
                if s.command != CommandType::Read || h.length < 9 {
                    return Err(Error::BadChunk);
                }
                let Some(off) = input.get(hl..hl + 8) else {
                    return Ok(progress(0, None));
                };
                let offset = u64::from_be_bytes(off.try_into().unwrap_or_default());
                let len = h.length - 8;
                if offset < s.offset || offset.checked_add(len).is_none_or(|e| e > req_end) {
                    return Err(Error::BadChunk);
                }
                self.cover(slot, len)?;
                self.rx = Some(Body {
                    slot,
                    remaining: len,
                    done,
                    kind: BodyKind::Data { offset },
                });
                Ok(progress(hl + 8, None))
            }
            ChunkType::OffsetHole => {
                if s.command != CommandType::Read || h.length != 12 {
                    return Err(Error::BadChunk);
                }
                let Some(p) = input.get(hl..hl + 12) else {
                    return Ok(progress(0, None));
                };
                let mut r = Reader::new(p);
                let offset = r.u64().unwrap_or(0);
                let length = r.u32().unwrap_or(0);
                if length == 0
                    || offset < s.offset
                    || offset
                        .checked_add(u64::from(length))
                        .is_none_or(|e| e > req_end)
                {
                    return Err(Error::BadChunk);
                }
                self.cover(slot, u64::from(length))?;
                if done {
                    self.complete(slot)?;
                }
                Ok(progress(
                    hl + 12,
                    Some(Item::ReadHole {
                        cookie: s.cookie,
                        offset,
                        length,
                    }),
                ))
            }
            ChunkType::BlockStatus | ChunkType::BlockStatusExt => {
                let wide = h.chunk == ChunkType::BlockStatusExt;
                if s.command != CommandType::BlockStatus || wide != self.extended {
                    return Err(Error::BadChunk);
                }
                let fixed = if wide { 8 } else { 4 };
                let d = ExtentsView::descriptor_len(wide) as u64;
                let n = h.length.checked_sub(fixed).ok_or(Error::BadChunk)?;
                if n == 0 || n % d != 0 || h.length > MAX_STATUS_CHUNK {
                    return Err(Error::BadChunk);
                }
                if s.req_one && n != d {
                    return Err(Error::BadChunk);
                }
                let Some(p) = input.get(hl..hl + fixed as usize) else {
                    return Ok(progress(0, None));
                };
                let mut r = Reader::new(p);
                let context = r.u32().unwrap_or(0);
                if wide && u64::from(r.u32().unwrap_or(0)) != n / d {
                    return Err(Error::BadChunk);
                }
                if !self.contexts.contains(&context) {
                    return Err(Error::BadChunk);
                }
                self.rx = Some(Body {
                    slot,
                    remaining: n,
                    done,
                    kind: BodyKind::Extents { context, wide },
                });
                Ok(progress(hl + fixed as usize, None))
            }
            c if c.is_error() => {
                let known = matches!(c, ChunkType::Error | ChunkType::ErrorOffset);
                let with_offset = c == ChunkType::ErrorOffset;
                if h.length < 6 || (known && h.length > (6 + MAX_STRING_LEN + 8) as u64) {
                    return Err(Error::BadChunk);
                }
                // Known chunks are read whole; of an unknown one, the error and message.
                let head = if known {
                    h.length as usize
                } else {
                    let Some(f) = input.get(hl + 4..hl + 6) else {
                        return Ok(progress(0, None));
                    };
                    let msglen = usize::from(u16::from_be_bytes([f[0], f[1]]));
                    if (6 + msglen) as u64 > h.length || msglen > MAX_STRING_LEN {
                        return Err(Error::BadChunk);
                    }
                    6 + msglen
                };
                let Some(p) = input.get(hl..hl + head) else {
                    return Ok(progress(0, None));
                };
                let e = ErrorChunkRepr::parse(p, with_offset, known)?;
                let slot_ref = &mut self.slots[usize::from(slot)];
                if slot_ref.error == 0 {
                    slot_ref.error = e.error;
                }
                let rest = h.length - head as u64;
                if rest > 0 {
                    self.rx = Some(Body {
                        slot,
                        remaining: rest,
                        done,
                        kind: BodyKind::Skip,
                    });
                } else if done {
                    self.complete(slot)?;
                }
                Ok(progress(
                    hl + head,
                    Some(Item::ChunkError {
                        cookie: s.cookie,
                        code: e.error.into(),
                        message: e.message,
                        offset: e.offset,
                    }),
                ))
            }
            _ => Err(Error::BadChunk),
        }
    }

    fn cover(&mut self, slot: u8, len: u64) -> Result<(), Error> {
        let s = &mut self.slots[usize::from(slot)];
        s.covered = s
            .covered
            .saturating_add(u32::try_from(len).unwrap_or(u32::MAX));
        if u64::from(s.covered) > s.length {
            // Content chunks must not overlap: more bytes than asked means they did.
            return Err(Error::BadChunk);
        }
        Ok(())
    }

    /// The final chunk of a request arrived: its completion is reported by the next call.
    fn complete(&mut self, slot: u8) -> Result<(), Error> {
        let s = self.slots[usize::from(slot)];
        if s.error == 0 && s.command == CommandType::Read && u64::from(s.covered) != s.length {
            // Success claimed without covering the whole read.
            return Err(Error::UnexpectedReply);
        }
        let done = self.finish(slot);
        self.pending_done = Some(done);
        Ok(())
    }

    fn finish(&mut self, slot: u8) -> (u64, Result<(), RequestError>) {
        let s = self.slots.swap_remove(usize::from(slot));
        if self.disconnected && self.slots.is_empty() {
            self.phase = Phase::Closed;
            self.push_event(Event::Finished);
        }
        let result = if s.error == 0 {
            Ok(())
        } else {
            Err(RequestError {
                code: s.error.into(),
            })
        };
        (s.cookie, result)
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

fn check_name(name: &str) -> Result<(), CommandError> {
    if name.len() > MAX_STRING_LEN || name.contains('\0') {
        return Err(CommandError::InvalidArgument(
            "export name over 4096 bytes or with NUL",
        ));
    }
    Ok(())
}

/// How a [`Negotiator`] treats TLS.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum TlsPolicy {
    /// Never try TLS.
    Disable,
    /// Try STARTTLS; continue in the clear if the server refuses (libnbd "allow").
    Allow,
    /// TLS or nothing (`nbds://`). The client must also be configured with `tls_required`.
    Require,
}

/// What the negotiation ends in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Goal {
    /// Enter transmission with GO (EXPORT_NAME if the server lacks GO).
    Go,
    /// Ask INFO about the export, then ABORT.
    Info,
    /// LIST the exports, then ABORT.
    List,
    /// LIST_META_CONTEXT for the export, then ABORT.
    ListMetaContexts,
}

/// The usual option sequence a client runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Plan<'p> {
    /// The export.
    pub export: &'p str,
    /// TLS policy.
    pub tls: TlsPolicy,
    /// Ask for extended headers.
    pub extended_headers: bool,
    /// Ask for structured replies (if extended headers are not had).
    pub structured_replies: bool,
    /// Metadata contexts to select (e.g. `["base:allocation"]`).
    pub meta_contexts: &'p [&'p str],
    /// What to do at the end.
    pub goal: Goal,
}

/// A negotiation failure the application should report.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum NegotiateError {
    /// The server refused the final option (GO, INFO, LIST).
    Refused(OptionType, ReplyType),
    /// A command failed (buffer too small, invalid state).
    Command(CommandError),
    /// TLS is required and was not established.
    TlsUnavailable,
}

impl From<CommandError> for NegotiateError {
    fn from(e: CommandError) -> Self {
        Self::Command(e)
    }
}

impl core::fmt::Display for NegotiateError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Refused(o, r) => write!(f, "server refused {o:?}: {r}"),
            Self::Command(e) => e.fmt(f),
            Self::TlsUnavailable => f.write_str("TLS is required but could not be established"),
        }
    }
}

impl core::error::Error for NegotiateError {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Step {
    StartTls,
    Extended,
    Structured,
    Meta,
    Final,
    Fallback,
    Abort,
    Done,
}

/// Runs a [`Plan`] on a [`Client`]: whenever the client can send an option, call
/// [`Negotiator::step`] with the plan; it encodes the next option (or nothing, once the goal is
/// reached). TLS itself is the driver's: on `Event::StartTls` it sets up the layer and calls
/// `tls_established`, after which `step` continues. The plan is passed on every call (it
/// borrows strings the negotiator does not keep).
#[derive(Debug, Clone, Copy)]
pub struct Negotiator {
    step: Step,
}

impl Default for Negotiator {
    fn default() -> Self {
        Self::new()
    }
}

impl Negotiator {
    /// A negotiator at the start of a plan.
    pub fn new() -> Self {
        Self {
            step: Step::StartTls,
        }
    }

    /// Whether the plan has run to its end (transmission, or the goal's ABORT sent).
    pub fn is_done(&self) -> bool {
        self.step == Step::Done
    }

    /// Encodes the next option of `plan` into `out` if the client can send one; `Ok(None)`
    /// when there is nothing to send now.
    pub fn step<const N: usize>(
        &mut self,
        plan: &Plan<'_>,
        client: &mut Client<N>,
        out: &mut [u8],
    ) -> Result<Option<usize>, NegotiateError> {
        if !client.can_send_option() {
            return Ok(None);
        }
        let plan = *plan;
        loop {
            let last = client.last_option();
            match self.step {
                Step::StartTls => {
                    self.step = Step::Extended;
                    if plan.tls != TlsPolicy::Disable
                        && !client.tls_active()
                        && client.fixed_newstyle()
                    {
                        return Ok(Some(client.opt_starttls(out)?));
                    }
                }
                Step::Extended => {
                    if plan.tls == TlsPolicy::Require && !client.tls_active() {
                        return Err(NegotiateError::TlsUnavailable);
                    }
                    self.step = Step::Structured;
                    if plan.extended_headers && client.fixed_newstyle() {
                        return Ok(Some(client.opt_extended_headers(out)?));
                    }
                }
                Step::Structured => {
                    self.step = Step::Meta;
                    if plan.structured_replies && !client.extended() && client.fixed_newstyle() {
                        return Ok(Some(client.opt_structured_reply(out)?));
                    }
                }
                Step::Meta => {
                    self.step = Step::Final;
                    let can = client.structured() || client.extended();
                    if can && !plan.meta_contexts.is_empty() && plan.goal == Goal::Go {
                        return Ok(Some(client.opt_set_meta_context(
                            plan.export,
                            plan.meta_contexts,
                            out,
                        )?));
                    }
                }
                Step::Final => {
                    if !client.fixed_newstyle() {
                        self.step = Step::Done;
                        return Ok(Some(client.opt_export_name(plan.export, out)?));
                    }
                    const WANT: [InfoType; 3] =
                        [InfoType::Name, InfoType::Description, InfoType::BlockSize];
                    let n = match plan.goal {
                        Goal::Go => {
                            self.step = Step::Fallback;
                            client.opt_go(plan.export, &WANT, out)?
                        }
                        Goal::Info => {
                            self.step = Step::Abort;
                            client.opt_info(plan.export, &WANT, out)?
                        }
                        Goal::List => {
                            self.step = Step::Abort;
                            client.opt_list(out)?
                        }
                        Goal::ListMetaContexts => {
                            self.step = Step::Abort;
                            client.opt_list_meta_context(plan.export, plan.meta_contexts, out)?
                        }
                    };
                    return Ok(Some(n));
                }
                Step::Fallback => {
                    self.step = Step::Done;
                    match last {
                        Some((OptionType::Go, Err(ReplyType::ErrUnsup))) if !client.extended() => {
                            return Ok(Some(client.opt_export_name(plan.export, out)?));
                        }
                        Some((OptionType::Go, Err(r))) => {
                            return Err(NegotiateError::Refused(OptionType::Go, r));
                        }
                        _ => return Ok(None),
                    }
                }
                Step::Abort => {
                    self.step = Step::Done;
                    if let Some((opt, Err(r))) = last
                        && matches!(
                            opt,
                            OptionType::Info | OptionType::List | OptionType::ListMetaContext
                        )
                    {
                        return Err(NegotiateError::Refused(opt, r));
                    }
                    return Ok(Some(client.opt_abort(out)?));
                }
                Step::Done => return Ok(None),
            }
        }
    }
}
