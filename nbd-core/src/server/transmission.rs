//! Transmission: requests and their validation, the `reply_*` commands, and chunk encoding.
//!
//! Requests are read only once nothing of negotiation is pending (GO's final ACK, or
//! EXPORT_NAME's reply, has been written): see [`Server::handle_input`].

use super::*;

impl<'a> Server<'a> {
    // ---------------------------------------------------------------- commands

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

    /// Encodes the header of a READ reply carrying `len` bytes of data for export `offset`
    /// into `out` and returns the header's length (`read_data_header_len()` bytes); the driver
    /// sends exactly `len` bytes of data right behind it, best in the same write. With simple replies the data
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

    // ---------------------------------------------------------------- transmission

    fn export(&self) -> &Export<'a> {
        &self.config.exports[usize::from(self.tx.export)]
    }

    pub(super) fn on_transmission<'i>(&mut self, input: &'i [u8]) -> Result<Progress<'i>, Error> {
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

    pub(super) fn encode_result(
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

    pub(super) fn check_finished(&mut self) {
        if self.phase == Phase::Transmission
            && self.tx.disconnecting
            && self.tx.in_flight == 0
            && self.queue.is_empty()
        {
            self.phase = Phase::Closed;
            self.push_event(Event::Finished);
        }
    }
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
