//! Negotiation: the client flags, every option, the TLS policy, the option replies, and the
//! step into transmission.
//!
//! Each option is handled whole by `handle_input` ([`Server::on_option`]): [`Server::dispatch`]
//! works out the reply, [`Server::decide`] makes the transition the option sets off (STARTTLS,
//! ABORT, GO, EXPORT_NAME) right then, and the reply becomes the pending output
//! [`Server::emit_reply`] writes part by part.

use super::*;

impl<'a> Server<'a> {
    // ---------------------------------------------------------------- commands

    /// The TLS handshake after [`Event::StartTls`] succeeded: negotiation continues, encrypted.
    pub fn tls_established(&mut self) -> Result<(), CommandError> {
        if self.phase != Phase::AwaitTls || self.reply.is_some() {
            return Err(CommandError::InvalidState);
        }
        self.tls_active = true;
        self.phase = Phase::Options;
        Ok(())
    }

    // ---------------------------------------------------------------- negotiation

    pub(super) fn on_client_flags<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
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

    pub(super) fn on_option<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
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
        self.decide(&reply);
        self.reply = Some(reply);
        Ok(consumed(total))
    }

    /// The transition an option's outcome sets off, made as it is handled: its reply is still
    /// to be written, and until it is no input is read and no event given out.
    fn decide(&mut self, reply: &Reply) {
        match *reply {
            Reply::Ack(OptionType::StartTls) => {
                // The spec: after STARTTLS nothing negotiated before it survives
                // (CVE-2021-3716: an injected STRUCTURED_REPLY must have no effect).
                self.neg = Negotiated::default();
                self.push_event(Event::StartTls);
                self.phase = Phase::AwaitTls;
            }
            Reply::Ack(OptionType::Abort) => {
                self.push_event(Event::Finished);
                self.phase = Phase::Closed;
            }
            Reply::Info {
                go: true,
                export,
                block_size_required: false,
                ..
            }
            | Reply::ExportName { export } => self.enter_transmission(export),
            // Every other reply leaves negotiation where it is.
            _ => {}
        }
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

    /// Writes the next part of the pending reply `r`: its last part clears it. Output only:
    /// the phase changed when the option was handled ([`Server::decide`]).
    pub(super) fn emit_reply(
        &mut self,
        r: Reply,
        buf: &mut [u8],
    ) -> Result<usize, InsufficientSize> {
        match r {
            Reply::Ack(opt) => {
                let n = option_reply(buf, opt, ReplyType::Ack, 0, no_data)?;
                self.reply = None;
                Ok(n)
            }
            Reply::Error(opt, code, msg) => {
                let n = option_reply(buf, opt, code, msg.len(), |b| {
                    b[..msg.len()].copy_from_slice(msg.as_bytes());
                    Ok(msg.len())
                })?;
                self.reply = None;
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
                self.reply = Some(Reply::List {
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
                    // INFO's ACK, or GO's final one (transmission began when GO was handled).
                    return self.emit_reply(Reply::Ack(opt), buf);
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
                self.reply = Some(Reply::Info {
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
                self.reply = Some(Reply::Meta {
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
                self.reply = None;
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
