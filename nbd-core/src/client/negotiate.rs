//! Negotiation: the greeting and the client flags, the option commands, the option replies
//! (each transition made as the reply is consumed), and the step into transmission.

use super::*;

impl<const N: usize> Client<N> {
    // ---------------------------------------------------------------- commands

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

    pub(super) fn on_greeting<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
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

    pub(super) fn on_option_reply<'i>(
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

    /// EXPORT_NAME's reply: transmission begins as it is consumed.
    pub(super) fn on_export_name_reply<'i>(
        &mut self,
        input: &'i [u8],
    ) -> Result<Progress<'i>, Error> {
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

    fn start_transmission(&mut self, info: ExportInfo) {
        if !(self.structured || self.extended) {
            self.contexts.clear();
        }
        self.export = Some(info);
        self.phase = Phase::Transmission;
        debug!("nbd client: transmission, size {}", info.size);
        self.push_event(Event::Ready(info));
    }
}

fn check_name(name: &str) -> Result<(), CommandError> {
    if name.len() > MAX_STRING_LEN || name.contains('\0') {
        return Err(CommandError::InvalidArgument(
            "export name over 4096 bytes or with NUL",
        ));
    }
    Ok(())
}
