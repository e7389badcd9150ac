//! Transmission: requests (checked against what the server advertised), DISC, and the replies:
//! simple replies, structured and extended chunks, READ data and extents lent piece by piece.

use super::*;

impl<const N: usize> Client<N> {
    // ---------------------------------------------------------------- commands

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

    // ---------------------------------------------------------------- internals

    fn slot(&self, cookie: u64) -> Result<u8, Error> {
        self.slots
            .iter()
            .position(|s| s.cookie == cookie)
            .map(|i| i as u8)
            .ok_or(Error::UnknownCookie(cookie))
    }

    pub(super) fn on_reply<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
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
}
