//! The normal phase: every server message (FramebufferUpdate and its rectangles, decoded by
//! `decode.rs` and `zrle.rs` into the application's framebuffer; pseudo-rectangles; colour
//! map, bell, cut text, continuous updates, fences) and the session commands.

use super::*;

impl Client {
    // ---------------------------------------------------------------- commands

    fn running(&self) -> Result<(), CommandError> {
        if self.phase == Phase::Normal {
            Ok(())
        } else {
            Err(CommandError::InvalidState)
        }
    }

    /// SetPixelFormat: later updates arrive in `format` (do not have an update request
    /// outstanding, as the spec says).
    pub fn set_pixel_format(&mut self, format: PixelFormat) -> Result<(), CommandError> {
        self.running()?;
        if !format.is_valid() {
            return Err(CommandError::InvalidArgument);
        }
        let m = SetPixelFormatRepr { format };
        self.out.push(SetPixelFormatRepr::LEN, |b| m.emit(b))?;
        self.format = format;
        Ok(())
    }

    /// SetEncodings, in order of preference (at most 90). Only encodings this client decodes are
    /// allowed (Raw, CopyRect, RRE, Hextile, ZRLE and Tight with `alloc`, and the
    /// pseudo-encodings of [`Encoding`] it handles, plus compression levels, and JPEG quality
    /// levels when it has a JPEG decoder: see `set_jpeg_decoder`, with `alloc`).
    pub fn set_encodings(&mut self, encodings: &[Encoding]) -> Result<(), CommandError> {
        self.running()?;
        let mut bits = 0;
        for e in encodings {
            bits |= e.bit().ok_or(CommandError::InvalidArgument)?;
            // TightPNG is for browsers: this client has no PNG decoder.
            if *e == Encoding::TightPng {
                return Err(CommandError::InvalidArgument);
            }
            let jpeg = e.jpeg_quality_level().is_some() || e.jpeg_fine_quality().is_some();
            #[cfg(feature = "alloc")]
            if jpeg && self.jpeg.0.is_none() {
                return Err(CommandError::InvalidArgument);
            }
            #[cfg(not(feature = "alloc"))]
            if jpeg {
                return Err(CommandError::InvalidArgument);
            }
        }
        let n = SetEncodingsHeaderRepr::LEN + 4 * encodings.len();
        if encodings.len() > 90 {
            return Err(CommandError::InvalidArgument);
        }
        self.out.push(n, |b| {
            SetEncodingsHeaderRepr {
                count: encodings.len() as u16,
            }
            .emit(b);
            for (i, e) in encodings.iter().enumerate() {
                put32(b, 4 + 4 * i, i32::from(*e) as u32);
            }
        })?;
        self.requested = bits;
        Ok(())
    }

    /// Chooses the JPEG decompressor for Tight JPEG rectangles (`None`: none; then JPEG quality
    /// levels cannot be asked for and a JPEG rectangle is a protocol error). The default is
    /// [`ZuneJpegDecoder`](crate::jpeg::ZuneJpegDecoder) with the `jpeg-decode` feature, else
    /// none.
    #[cfg(feature = "alloc")]
    pub fn set_jpeg_decoder(
        &mut self,
        decoder: Option<alloc::boxed::Box<dyn crate::jpeg::JpegDecoder>>,
    ) {
        self.jpeg.0 = decoder.map(alloc::boxed::Box::new);
    }

    /// FramebufferUpdateRequest.
    pub fn request_update(&mut self, incremental: bool, rect: Rect) -> Result<(), CommandError> {
        self.running()?;
        let m = FramebufferUpdateRequestRepr { incremental, rect };
        self.out
            .push(FramebufferUpdateRequestRepr::LEN, |b| m.emit(b))
    }

    /// KeyEvent.
    pub fn key_event(&mut self, down: bool, keysym: u32) -> Result<(), CommandError> {
        self.running()?;
        let m = KeyEventRepr { down, keysym };
        self.out.push(KeyEventRepr::LEN, |b| m.emit(b))
    }

    /// QEMU extended key event (after [`Event::QemuKeyEventsSupported`]).
    pub fn qemu_key_event(
        &mut self,
        down: bool,
        keysym: u32,
        keycode: u32,
    ) -> Result<(), CommandError> {
        self.running()?;
        if self.have & HAVE_QEMU_KEY == 0 {
            return Err(CommandError::InvalidState);
        }
        let m = QemuKeyEventRepr {
            down,
            keysym,
            keycode,
        };
        self.out.push(QemuKeyEventRepr::LEN, |b| m.emit(b))
    }

    /// PointerEvent.
    pub fn pointer_event(&mut self, buttons: u8, x: u16, y: u16) -> Result<(), CommandError> {
        self.running()?;
        let m = PointerEventRepr { buttons, x, y };
        self.out.push(PointerEventRepr::LEN, |b| m.emit(b))
    }

    /// ClientCutText: the header is queued and `poll_transmit` asks the application to send the
    /// `len` bytes itself. `Extended` needs the ExtendedClipboard pseudo-encoding.
    pub fn send_cut_text(&mut self, len: CutTextLength) -> Result<(), CommandError> {
        self.running()?;
        let extended = self.requested & bits::EXT_CLIPBOARD != 0;
        let t = ClientMessageType::ClientCutText.into();
        shared::queue_cut_text(&mut self.out, t, len, extended)
    }

    /// EnableContinuousUpdates (after [`Event::EndOfContinuousUpdates`] showed support).
    pub fn enable_continuous_updates(
        &mut self,
        enable: bool,
        rect: Rect,
    ) -> Result<(), CommandError> {
        self.running()?;
        if self.have & HAVE_CONTINUOUS == 0 {
            return Err(CommandError::InvalidState);
        }
        let m = EnableContinuousUpdatesRepr { enable, rect };
        self.out
            .push(EnableContinuousUpdatesRepr::LEN, |b| m.emit(b))
    }

    /// ClientFence (after the server sent a fence).
    pub fn send_fence(&mut self, flags: u32, payload: &[u8]) -> Result<(), CommandError> {
        self.running()?;
        if self.have & HAVE_FENCE == 0 {
            return Err(CommandError::InvalidState);
        }
        shared::queue_fence(&mut self.out, flags, payload)
    }

    /// SetDesktopSize (after an ExtendedDesktopSize arrived); at most 16 screens.
    pub fn set_desktop_size(
        &mut self,
        width: u16,
        height: u16,
        screens: &[Screen],
    ) -> Result<(), CommandError> {
        self.running()?;
        if self.have & HAVE_EXT_DESKTOP == 0 {
            return Err(CommandError::InvalidState);
        }
        if screens.is_empty() || screens.len() > 16 {
            return Err(CommandError::InvalidArgument);
        }
        let h = SetDesktopSizeHeaderRepr {
            width,
            height,
            screens: screens.len() as u8,
        };
        self.out
            .push(SetDesktopSizeHeaderRepr::LEN + 16 * screens.len(), |b| {
                h.emit(b);
                for (i, s) in screens.iter().enumerate() {
                    s.emit(&mut b[8 + 16 * i..]);
                }
            })
    }

    // ---------------------------------------------------------------- input

    /// After a rectangle: the next header, or the end of the update.
    pub(super) fn end_rect(&mut self, remaining: u16, done: Option<(Rect, Encoding)>) {
        if let Some((r, e)) = done {
            self.push(Ev::Rect(r, e));
        }
        if remaining == 0 {
            self.msg = Msg::Idle;
            self.push(Ev::UpdateEnd);
        } else {
            self.msg = Msg::Rects { remaining };
        }
    }

    /// The framebuffer seen through the wire format.
    fn sink<'a, 'f>(&self, fb: &'a mut FramebufferMut<'f>) -> Result<Sink<'a, 'f>, Error> {
        let tr = if fb.width() == 0 || fb.height() == 0 {
            None
        } else {
            let tr = Translator::new(&self.format, &fb.format());
            Some(tr.ok_or(Error::UnusableFramebuffer)?)
        };
        Ok(Sink {
            fb,
            tr,
            bpp: self.format.bytes_per_pixel(),
        })
    }

    /// One server message (or one piece of a message that arrives in pieces: rectangles,
    /// text, cursor data, screens, colour-map entries, cut text) in the normal phase.
    pub(super) fn on_message<'i>(
        &mut self,
        input: &'i [u8],
        fb: &mut FramebufferMut<'_>,
    ) -> Step<'i> {
        use ProtocolError as P;
        match self.msg {
            Msg::Idle => {}
            Msg::Rects { remaining } => return self.rect_header(input, remaining),
            Msg::Rect {
                remaining,
                rect,
                encoding,
                dec,
            } => return self.rect_data(input, fb, remaining, rect, encoding, dec),
            Msg::Text {
                kind,
                remaining,
                after,
            } => {
                let Some((data, remaining)) = shared::body_chunk(input, remaining) else {
                    return Ok((0, None));
                };
                self.keep_text(data);
                if remaining == 0 {
                    self.finish_text(kind, after)?;
                } else {
                    self.msg = Msg::Text {
                        kind,
                        remaining,
                        after,
                    };
                }
                return Ok((data.len(), None));
            }
            Msg::CursorData {
                remaining,
                offset,
                total,
            } => {
                let Some((data, left)) = shared::body_chunk(input, total - offset) else {
                    return Ok((0, None));
                };
                if left == 0 {
                    self.end_rect(remaining, None);
                } else {
                    self.msg = Msg::CursorData {
                        remaining,
                        offset: total - left,
                        total,
                    };
                }
                return Ok((data.len(), Some(Payload::CursorData { offset, data })));
            }
            Msg::Screens { remaining, screens } => {
                let s =
                    complete_or_wait!(Screen::parse(input), malformed => P::InvalidScreenLayout);
                self.push(Ev::Screen(s));
                if screens > 1 {
                    self.msg = Msg::Screens {
                        remaining,
                        screens: screens - 1,
                    };
                } else {
                    self.end_rect(remaining, None);
                }
                return Ok((Screen::LEN, None));
            }
            Msg::ColourMap { next, left } => {
                let n = (input.len() / 6).min(usize::from(left));
                if n == 0 {
                    return Ok((0, None));
                }
                let left2 = left - n as u16;
                self.msg = if left2 == 0 {
                    Msg::Idle
                } else {
                    Msg::ColourMap {
                        next: next.wrapping_add(n as u16),
                        left: left2,
                    }
                };
                return Ok((
                    6 * n,
                    Some(Payload::ColourMapEntries {
                        first: next,
                        data: &input[..6 * n],
                    }),
                ));
            }
            Msg::CutText { remaining } => {
                let Some((data, remaining)) = shared::body_chunk(input, remaining) else {
                    return Ok((0, None));
                };
                self.msg = if remaining == 0 {
                    Msg::Idle
                } else {
                    Msg::CutText { remaining }
                };
                let last = remaining == 0;
                return Ok((data.len(), Some(Payload::CutText { data, last })));
            }
        }
        let Some(&t) = input.first() else {
            return Ok((0, None));
        };
        trace!("rfb client: message type {}", t);
        match ServerMessageType::from(t) {
            ServerMessageType::FramebufferUpdate => {
                let h = complete_or_wait!(FramebufferUpdateRepr::parse(input), malformed => P::Malformed);
                self.push(Ev::UpdateBegin(h.rects));
                if h.rects == 0 {
                    self.push(Ev::UpdateEnd);
                } else {
                    self.msg = Msg::Rects { remaining: h.rects };
                }
                Ok((FramebufferUpdateRepr::LEN, None))
            }
            ServerMessageType::SetColourMapEntries => {
                let h = complete_or_wait!(
                    SetColourMapEntriesRepr::parse(input),
                    malformed => P::ColourMapOutOfRange
                );
                if u32::from(h.first) + u32::from(h.count) > 65536 {
                    return Err(P::ColourMapOutOfRange.into());
                }
                if h.count > 0 {
                    self.msg = Msg::ColourMap {
                        next: h.first,
                        left: h.count,
                    };
                }
                self.push(Ev::ColourMap(h.first, h.count));
                Ok((SetColourMapEntriesRepr::LEN, None))
            }
            ServerMessageType::Bell => {
                self.push(Ev::Bell);
                Ok((1, None))
            }
            ServerMessageType::ServerCutText => {
                let extended = self.requested & bits::EXT_CLIPBOARD != 0;
                let max = self.config.limits.max_cut_text;
                let Some(len) = shared::cut_text_header(input, extended, max)? else {
                    return Ok((0, None));
                };
                if !len.is_empty() {
                    self.msg = Msg::CutText {
                        remaining: len.len(),
                    };
                }
                self.push(Ev::CutText(len));
                Ok((CutTextHeaderRepr::LEN, None))
            }
            ServerMessageType::EndOfContinuousUpdates => {
                self.have |= HAVE_CONTINUOUS;
                self.push(Ev::EndOfContinuous);
                Ok((1, None))
            }
            ServerMessageType::ServerFence => {
                let (n, response) = shared::receive_fence(input, &mut self.out)?;
                if n > 0 {
                    self.have |= HAVE_FENCE;
                }
                Ok((
                    n,
                    response.map(|(flags, data)| Payload::FenceResponse { flags, data }),
                ))
            }
            ServerMessageType::Qemu => {
                if input.len() < 2 {
                    return Ok((0, None));
                }
                Err(P::UnknownQemuMessage(input[1]).into())
            }
            ServerMessageType::Unknown(t) => Err(P::UnknownMessageType(t).into()),
        }
    }

    fn rect_header<'i>(
        &mut self,
        input: &'i [u8],
        remaining: u16,
    ) -> Result<(usize, Option<Payload<'i>>), Error> {
        use ProtocolError as P;
        let h = complete_or_wait!(RectHeaderRepr::parse(input), malformed => P::Malformed);
        let n = RectHeaderRepr::LEN;
        let r = h.rect;
        // 65535 with LastRect negotiated means "until LastRect".
        const UNTIL_LAST: u16 = FramebufferUpdateRepr::UNTIL_LAST_RECT;
        let until_last = remaining == UNTIL_LAST && self.requested & bits::LAST_RECT != 0;
        let remaining = if until_last {
            UNTIL_LAST
        } else {
            remaining - 1
        };
        let bit = h
            .encoding
            .bit()
            .ok_or(Error::Protocol(P::UnrequestedEncoding(h.encoding.into())))?;
        if bit != 0 && self.requested & bit == 0 {
            return Err(P::UnrequestedEncoding(h.encoding.into()).into());
        }
        let pixel_rect = |dec: RectDecoder| Msg::Rect {
            remaining,
            rect: r,
            encoding: h.encoding,
            dec,
        };
        match h.encoding {
            Encoding::Raw
            | Encoding::Rre
            | Encoding::Hextile
            | Encoding::Zrle
            | Encoding::Tight
            | Encoding::CopyRect => {
                if !r.fits_in(self.width, self.height) {
                    return Err(P::RectangleOutOfBounds.into());
                }
                // Empty ZRLE, RRE and Tight rectangles still carry their headers.
                if r.is_empty()
                    && h.encoding != Encoding::CopyRect
                    && h.encoding != Encoding::Zrle
                    && h.encoding != Encoding::Tight
                    && h.encoding != Encoding::Rre
                {
                    self.end_rect(remaining, Some((r, h.encoding)));
                    return Ok((n, None));
                }
                self.msg = pixel_rect(match h.encoding {
                    Encoding::Raw => RectDecoder::Raw { x: 0, y: 0 },
                    Encoding::Rre => RectDecoder::RreHeader,
                    Encoding::Hextile => RectDecoder::Hextile(Hextile::new()),
                    #[cfg(feature = "alloc")]
                    Encoding::Zrle => RectDecoder::Zrle,
                    #[cfg(feature = "alloc")]
                    Encoding::Tight => RectDecoder::Tight,
                    // CopyRect reuses the RRE-header slot for its 4 bytes (see rect_data).
                    _ => RectDecoder::Raw {
                        x: u16::MAX,
                        y: u16::MAX,
                    },
                });
                #[cfg(feature = "alloc")]
                if h.encoding == Encoding::Zrle {
                    let bpp = self.format.bytes_per_pixel();
                    let cp = crate::pixel::cpixel_layout(&self.format);
                    self.zrle
                        .get_or_insert_with(|| alloc::boxed::Box::new(zrle::ZrleDecoder::new()))
                        .start(r, bpp, cp);
                }
                #[cfg(feature = "alloc")]
                if h.encoding == Encoding::Tight {
                    let max = self.config.limits.max_jpeg_pixels;
                    self.tight
                        .get_or_insert_with(|| alloc::boxed::Box::new(tight::TightDecoder::new()))
                        .start(r, self.format, max);
                }
                Ok((n, None))
            }
            Encoding::LastRect => {
                self.end_rect(0, None);
                Ok((n, None))
            }
            Encoding::DesktopSize => {
                self.width = r.width;
                self.height = r.height;
                self.push(Ev::DesktopSize(r.width, r.height));
                self.end_rect(remaining, None);
                Ok((n, None))
            }
            Encoding::ExtendedDesktopSize => {
                if input.len() < n + ExtendedDesktopSizeRepr::LEN {
                    return Ok((0, None));
                }
                let e = ExtendedDesktopSizeRepr::parse(&input[n..])
                    .map_err(|_| Error::Protocol(P::InvalidScreenLayout))?;
                let (reason, status) = (r.x, r.y);
                if reason != desktop_size::REASON_THIS_CLIENT || status == desktop_size::STATUS_OK {
                    self.width = r.width;
                    self.height = r.height;
                }
                self.have |= HAVE_EXT_DESKTOP;
                self.push(Ev::ExtDesktopSize {
                    reason,
                    status,
                    width: r.width,
                    height: r.height,
                    screens: e.screens,
                });
                if e.screens == 0 {
                    self.end_rect(remaining, None);
                } else {
                    self.msg = Msg::Screens {
                        remaining,
                        screens: e.screens,
                    };
                }
                Ok((n + ExtendedDesktopSizeRepr::LEN, None))
            }
            Encoding::Cursor => {
                let max = self.config.limits.max_cursor;
                if r.width > max || r.height > max {
                    return Err(P::CursorTooLarge.into());
                }
                let bpp = self.format.bytes_per_pixel() as u64;
                let len = u64::from(r.width) * u64::from(r.height) * bpp
                    + cursor_mask_len(r.width, r.height) as u64;
                let len = u32::try_from(len).map_err(|_| Error::Protocol(P::CursorTooLarge))?;
                self.push(Ev::Cursor {
                    hx: r.x,
                    hy: r.y,
                    w: r.width,
                    h: r.height,
                    len,
                });
                if len == 0 {
                    self.end_rect(remaining, None);
                } else {
                    self.msg = Msg::CursorData {
                        remaining,
                        offset: 0,
                        total: len,
                    };
                }
                Ok((n, None))
            }
            Encoding::DesktopName => {
                if input.len() < n + 4 {
                    return Ok((0, None));
                }
                let len = be32(input, n);
                if len > self.config.limits.max_string {
                    return Err(P::StringTooLong.into());
                }
                self.text.clear();
                if len == 0 {
                    self.finish_text(TextKind::DesktopName, remaining)?;
                } else {
                    self.msg = Msg::Text {
                        kind: TextKind::DesktopName,
                        remaining: len,
                        after: remaining,
                    };
                }
                Ok((n + 4, None))
            }
            Encoding::QemuLedState => {
                if input.len() < n + 1 {
                    return Ok((0, None));
                }
                let state = input[n];
                if state & !0b111 != 0 {
                    return Err(P::InvalidLedState(state).into());
                }
                self.push(Ev::LedState(state));
                self.end_rect(remaining, None);
                Ok((n + 1, None))
            }
            Encoding::QemuExtendedKeyEvent => {
                self.have |= HAVE_QEMU_KEY;
                self.push(Ev::QemuKey);
                self.end_rect(remaining, None);
                Ok((n, None))
            }
            e => Err(P::UnrequestedEncoding(e.into()).into()),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn rect_data<'i>(
        &mut self,
        input: &'i [u8],
        fb: &mut FramebufferMut<'_>,
        remaining: u16,
        r: Rect,
        encoding: Encoding,
        dec: RectDecoder,
    ) -> Result<(usize, Option<Payload<'i>>), Error> {
        use ProtocolError as P;
        let bpp = self.format.bytes_per_pixel();
        let mut sink = self.sink(fb)?;
        let (n, finished, dec) = match (encoding, dec) {
            (Encoding::CopyRect, _) => {
                let c = complete_or_wait!(
                    CopyRectRepr::parse(input),
                    malformed => P::CopyRectSourceOutOfBounds
                );
                let src = Rect::new(c.src_x, c.src_y, r.width, r.height);
                if !src.fits_in(self.width, self.height) {
                    return Err(P::CopyRectSourceOutOfBounds.into());
                }
                sink.copy(r, c.src_x, c.src_y);
                (CopyRectRepr::LEN, true, dec)
            }
            (_, RectDecoder::Raw { mut x, mut y }) => {
                let (n, done) = decode::raw(&r, &mut x, &mut y, input, &mut sink);
                (n, done, RectDecoder::Raw { x, y })
            }
            (_, RectDecoder::RreHeader) => {
                let Some((count, bg)) = rre::parse_header(input, bpp) else {
                    return Ok((0, None));
                };
                if count > r.area() {
                    return Err(P::TooManySubrectangles.into());
                }
                sink.fill(r, bg);
                let n = rre::header_len(bpp);
                (n, count == 0, RectDecoder::Rre { remaining: count })
            }
            (_, RectDecoder::Rre { mut remaining }) => {
                let (n, done) = decode::rre(&r, &mut remaining, input, &mut sink)?;
                (n, done, RectDecoder::Rre { remaining })
            }
            (_, RectDecoder::Hextile(mut h)) => {
                let (n, done) = h.decode(&r, input, &mut sink)?;
                (n, done, RectDecoder::Hextile(h))
            }
            #[cfg(feature = "alloc")]
            (_, RectDecoder::Zrle) => {
                // `rect_header` made the decoder and started the rectangle.
                let z = self
                    .zrle
                    .get_or_insert_with(|| alloc::boxed::Box::new(zrle::ZrleDecoder::new()));
                let (n, done) = z.decode(input, &mut sink)?;
                (n, done, RectDecoder::Zrle)
            }
            #[cfg(feature = "alloc")]
            (_, RectDecoder::Tight) => {
                // `rect_header` made the decoder and started the rectangle.
                let t = self
                    .tight
                    .get_or_insert_with(|| alloc::boxed::Box::new(tight::TightDecoder::new()));
                let jpeg = self.jpeg.0.as_deref_mut().map(|b| &mut **b);
                let (n, done) = t.decode(input, &mut sink, jpeg)?;
                (n, done, RectDecoder::Tight)
            }
        };
        if finished {
            self.end_rect(remaining, Some((r, encoding)));
        } else {
            self.msg = Msg::Rect {
                remaining,
                rect: r,
                encoding,
                dec,
            };
        }
        Ok((n, None))
    }
}
