//! The normal phase: every client message (SetPixelFormat, SetEncodings and the
//! pseudo-encodings' acknowledgements, update requests, input events, cut text, continuous
//! updates, fences, SetDesktopSize, QEMU key events) and the session commands (bell, cut text,
//! fences, the SetDesktopSize answer, the ZRLE compressor).

use super::*;

impl Server {
    // ---------------------------------------------------------------- commands

    /// Chooses the zlib implementation ZRLE and Tight compress with (default
    /// [`MinizCompressor`](crate::zlib::MinizCompressor)): ZRLE's one stream, Tight's four and
    /// every TightPNG image. Call before the first ZRLE or Tight update: once a stream exists
    /// this returns [`CommandError::InvalidState`].
    #[cfg(feature = "alloc")]
    pub fn set_zrle_compressor(
        &mut self,
        factory: crate::zlib::CompressorFactory,
    ) -> Result<(), CommandError> {
        if self.zrle.is_some() || self.tight.is_some() {
            return Err(CommandError::InvalidState);
        }
        self.zlib = factory;
        Ok(())
    }

    /// Chooses the JPEG compressor Tight and TightPNG use for clients that ask for a JPEG
    /// quality (`None`: no JPEG, everything lossless). The default is
    /// [`RustJpegEncoder`](crate::jpeg::RustJpegEncoder) with the `jpeg-encode` feature, else
    /// none. Takes effect at the next JPEG rectangle.
    #[cfg(feature = "alloc")]
    pub fn set_jpeg_encoder(&mut self, factory: Option<crate::jpeg::JpegEncoderFactory>) {
        self.jpeg = factory;
        if let Some(t) = &mut self.tight {
            t.drop_jpeg();
        }
    }

    /// Rings the client's bell.
    pub fn bell(&mut self) -> Result<(), CommandError> {
        self.running()?;
        self.out.push(1, |b| b[0] = ServerMessageType::Bell.into())
    }

    /// Sends ServerCutText: the header is queued and `poll_transmit` then asks the application to
    /// send its `len` bytes itself ([`AppPayload::CutText`](crate::AppPayload::CutText)).
    /// `Extended` needs the client's extended-clipboard support.
    pub fn send_cut_text(&mut self, len: CutTextLength) -> Result<(), CommandError> {
        self.running()?;
        let extended = self.prefs.flags & bits::EXT_CLIPBOARD != 0;
        let t = ServerMessageType::ServerCutText.into();
        shared::queue_cut_text(&mut self.out, t, len, extended)
    }

    /// Sends a ServerFence (the client must have asked for the Fence pseudo-encoding).
    pub fn send_fence(&mut self, flags: u32, payload: &[u8]) -> Result<(), CommandError> {
        self.running()?;
        if self.prefs.flags & bits::FENCE == 0 {
            return Err(CommandError::InvalidState);
        }
        shared::queue_fence(&mut self.out, flags, payload)
    }

    /// Answers the last SetDesktopSize with a status code (0 success, 1 prohibited, 2 out of
    /// resources, 3 invalid layout). The ExtendedDesktopSize reply goes out with the next update
    /// (pass the new size in [`UpdateSource`] on success).
    pub fn reply_desktop_size(&mut self, status: u16) -> Result<(), CommandError> {
        self.running()?;
        if self.prefs.flags & bits::EXT_DESKTOP_SIZE == 0 {
            return Err(CommandError::InvalidState);
        }
        self.desktop_size_reply = Some(status);
        self.update_requested = true;
        Ok(())
    }

    /// The target's keyboard LEDs changed (QEMU LED State bits: 0 ScrollLock, 1 NumLock,
    /// 2 CapsLock; [`crate::hid::Leds::qemu_led_state`]). A client that asked for the QEMU LED
    /// State pseudo-encoding gets the new state as a pseudo-rectangle of the next update (and
    /// gets the current state as soon as it asks for the encoding); for others this only
    /// remembers it. Returns whether this client is waiting for an update to carry it, so the
    /// application can send one (it may be empty) as soon as [`wants_update`](Self::wants_update).
    pub fn set_led_state(&mut self, state: u8) -> Result<bool, CommandError> {
        self.running()?;
        if state & !0b111 != 0 {
            return Err(CommandError::InvalidArgument);
        }
        if state != self.leds {
            self.leds = state;
            self.leds_pending = true;
        }
        Ok(self.led_update_due())
    }

    /// Whether the client asked for the LED state and has not got the current one yet.
    pub fn led_update_due(&self) -> bool {
        self.leds_pending && self.prefs.flags & bits::QEMU_LED != 0
    }

    // ---------------------------------------------------------------- input

    /// One client message (or one piece of a message that arrives in pieces) in the normal
    /// phase.
    pub(super) fn on_message<'i>(&mut self, input: &'i [u8]) -> Step<'i> {
        use ProtocolError as P;
        match self.partial {
            Partial::None => {}
            Partial::Encodings {
                remaining,
                mut acc,
                mut picked,
            } => {
                let n = (input.len() / 4).min(usize::from(remaining));
                if n == 0 {
                    return Ok((0, None));
                }
                for c in input[..4 * n].chunks_exact(4) {
                    acc.fold(Encoding::from(be32(c, 0) as i32), &mut picked);
                }
                let remaining = remaining - n as u16;
                if remaining > 0 {
                    self.partial = Partial::Encodings {
                        remaining,
                        acc,
                        picked,
                    };
                } else {
                    self.partial = Partial::None;
                    self.apply_prefs(acc);
                }
                return Ok((4 * n, None));
            }
            Partial::CutText { remaining } => {
                let Some((data, remaining)) = shared::body_chunk(input, remaining) else {
                    return Ok((0, None));
                };
                self.partial = if remaining == 0 {
                    Partial::None
                } else {
                    Partial::CutText { remaining }
                };
                let last = remaining == 0;
                return Ok((data.len(), Some(Payload::CutText { data, last })));
            }
            Partial::Screens { remaining } => {
                let s =
                    complete_or_wait!(Screen::parse(input), malformed => P::InvalidScreenLayout);
                self.partial = if remaining > 1 {
                    Partial::Screens {
                        remaining: remaining - 1,
                    }
                } else {
                    Partial::None
                };
                self.push_event(Event::Screen(s));
                return Ok((Screen::LEN, None));
            }
        }
        let Some(&t) = input.first() else {
            return Ok((0, None));
        };
        trace!("rfb server: message type {}", t);
        match ClientMessageType::from(t) {
            ClientMessageType::SetPixelFormat => {
                let m = complete_or_wait!(
                    SetPixelFormatRepr::parse(input),
                    malformed => P::InvalidPixelFormat
                );
                if !m.format.is_valid() {
                    return Err(Error::Protocol(ProtocolError::InvalidPixelFormat));
                }
                if self.update.is_some() {
                    self.pending_format = Some(m.format);
                } else {
                    self.set_client_format(m.format);
                }
                self.push_event(Event::PixelFormat(m.format));
                Ok((SetPixelFormatRepr::LEN, None))
            }
            ClientMessageType::SetEncodings => {
                let h = complete_or_wait!(SetEncodingsHeaderRepr::parse(input), malformed => P::Malformed);
                if h.count > self.config.limits.max_encodings {
                    return Err(Error::Protocol(ProtocolError::TooManyEncodings));
                }
                // Raw until the list names a pixel encoding this crate implements.
                let acc = Prefs::new();
                if h.count == 0 {
                    self.apply_prefs(acc);
                } else {
                    self.partial = Partial::Encodings {
                        remaining: h.count,
                        acc,
                        picked: false,
                    };
                }
                Ok((SetEncodingsHeaderRepr::LEN, None))
            }
            ClientMessageType::FramebufferUpdateRequest => {
                let m = complete_or_wait!(FramebufferUpdateRequestRepr::parse(input), malformed => P::Malformed);
                let rect = m.rect.clip_to(self.width, self.height);
                if self.continuous.is_some() && m.incremental {
                    return Ok((FramebufferUpdateRequestRepr::LEN, None));
                }
                self.update_requested = true;
                if !m.incremental {
                    self.full_update_requested = true;
                }
                self.push_event(Event::UpdateRequested {
                    incremental: m.incremental,
                    rect,
                });
                Ok((FramebufferUpdateRequestRepr::LEN, None))
            }
            ClientMessageType::KeyEvent => {
                let m = complete_or_wait!(KeyEventRepr::parse(input), malformed => P::Malformed);
                self.push_event(Event::Key {
                    down: m.down,
                    keysym: m.keysym,
                });
                Ok((KeyEventRepr::LEN, None))
            }
            ClientMessageType::PointerEvent => {
                let m =
                    complete_or_wait!(PointerEventRepr::parse(input), malformed => P::Malformed);
                self.push_event(Event::Pointer {
                    buttons: m.buttons,
                    x: m.x,
                    y: m.y,
                });
                Ok((PointerEventRepr::LEN, None))
            }
            ClientMessageType::ClientCutText => {
                let extended = self.prefs.flags & bits::EXT_CLIPBOARD != 0;
                let max = self.config.limits.max_cut_text;
                let Some(len) = shared::cut_text_header(input, extended, max)? else {
                    return Ok((0, None));
                };
                if !len.is_empty() {
                    self.partial = Partial::CutText {
                        remaining: len.len(),
                    };
                }
                self.push_event(Event::CutText(len));
                Ok((CutTextHeaderRepr::LEN, None))
            }
            ClientMessageType::EnableContinuousUpdates => {
                let m = complete_or_wait!(EnableContinuousUpdatesRepr::parse(input), malformed => P::Malformed);
                if self.prefs.flags & bits::CONTINUOUS == 0 {
                    return Err(Error::Protocol(ProtocolError::UnexpectedMessage(t)));
                }
                let rect = m.rect.clip_to(self.width, self.height);
                if m.enable {
                    self.continuous = Some(rect);
                } else {
                    self.continuous = None;
                    self.out.push_reserved(1, end_of_continuous_updates);
                }
                self.push_event(Event::ContinuousUpdates {
                    enabled: m.enable,
                    rect,
                });
                Ok((EnableContinuousUpdatesRepr::LEN, None))
            }
            ClientMessageType::ClientFence => {
                let (n, response) = shared::receive_fence(input, &mut self.out)?;
                Ok((
                    n,
                    response.map(|(flags, data)| Payload::FenceResponse { flags, data }),
                ))
            }
            ClientMessageType::SetDesktopSize => {
                let h = complete_or_wait!(
                    SetDesktopSizeHeaderRepr::parse(input),
                    malformed => P::InvalidScreenLayout
                );
                if h.screens > self.config.limits.max_screens {
                    return Err(Error::Protocol(ProtocolError::InvalidScreenLayout));
                }
                if h.screens > 0 {
                    self.partial = Partial::Screens {
                        remaining: h.screens,
                    };
                }
                self.push_event(Event::SetDesktopSize {
                    width: h.width,
                    height: h.height,
                    screens: h.screens,
                });
                Ok((SetDesktopSizeHeaderRepr::LEN, None))
            }
            ClientMessageType::Qemu => {
                let Some(&sub) = input.get(1) else {
                    return Ok((0, None));
                };
                if self.prefs.flags & bits::QEMU_KEY == 0 || !self.config.qemu_extended_key_events {
                    return Err(Error::Protocol(P::UnknownQemuMessage(sub)));
                }
                // The parser refuses any sub-type but the extended key event's as soon as the
                // sub-type byte is at hand.
                let m = complete_or_wait!(
                    QemuKeyEventRepr::parse(input),
                    malformed => P::UnknownQemuMessage(sub)
                );
                self.push_event(Event::QemuKey {
                    down: m.down,
                    keysym: m.keysym,
                    keycode: m.keycode,
                });
                Ok((QemuKeyEventRepr::LEN, None))
            }
            ClientMessageType::Unknown(t) => {
                Err(Error::Protocol(ProtocolError::UnknownMessageType(t)))
            }
        }
    }

    fn set_client_format(&mut self, f: PixelFormat) {
        self.client_format = f;
        if !f.true_colour {
            // Colour-map clients get a BGR233 map and are served as BGR233 (as QEMU does).
            self.colour_map_pending = Some(0);
        } else {
            self.colour_map_pending = None;
        }
    }

    fn apply_prefs(&mut self, p: Prefs) {
        // First sight of a pseudo-encoding that needs an acknowledgement.
        let new = p.flags & !self.acked;
        if new & bits::CONTINUOUS != 0 {
            self.out.push_reserved(1, end_of_continuous_updates);
        }
        if new & bits::FENCE != 0 {
            let f = FenceRepr {
                flags: fence_flags::REQUEST,
                payload: heapless::Vec::new(),
            };
            self.out.push_reserved(f.buffer_len(), |b| f.emit(b));
        }
        if p.flags & bits::EXT_CLIPBOARD != 0 {
            // Caps: text, with request/notify/provide, max unsolicited text size.
            use ext_clipboard::*;
            let caps = TEXT | CAPS | REQUEST | NOTIFY | PROVIDE;
            let max = self.config.limits.max_cut_text;
            let h = CutTextHeaderRepr {
                message_type: ServerMessageType::ServerCutText.into(),
                length: CutTextLength::Extended(8).to_wire(),
            };
            self.out.push_reserved(CutTextHeaderRepr::LEN + 8, |b| {
                h.emit(b);
                put32(b, CutTextHeaderRepr::LEN, caps);
                put32(b, CutTextHeaderRepr::LEN + 4, max);
            });
        }
        if new & bits::QEMU_KEY != 0 && self.config.qemu_extended_key_events {
            self.qemu_key_ack_pending = true;
        }
        if new & bits::QEMU_LED != 0 {
            // The first update after the client asks tells it the current state.
            self.leds_pending = true;
        }
        self.acked |= p.flags & (bits::CONTINUOUS | bits::FENCE | bits::QEMU_KEY | bits::QEMU_LED);
        if self.update.is_some() {
            self.pending_prefs = Some(p);
        } else {
            self.prefs = p;
        }
        self.push_event(Event::EncodingsChanged);
    }

    /// Applies a SetPixelFormat / SetEncodings that arrived during an update.
    pub(crate) fn finish_update(&mut self) {
        self.update = None;
        if self.continuous.is_none() {
            self.update_requested = false;
        }
        self.full_update_requested = false;
        if let Some(f) = self.pending_format.take() {
            self.set_client_format(f);
        }
        if let Some(p) = self.pending_prefs.take() {
            self.prefs = p;
        }
    }

    pub(super) fn emit_colour_map(
        &mut self,
        next: u16,
        buf: &mut [u8],
    ) -> Result<Option<Transmit>, InsufficientSize> {
        const CHUNK: u16 = 32;
        let n = CHUNK.min(256 - next);
        let len = SetColourMapEntriesRepr::LEN + usize::from(n) * 6;
        if buf.len() < len {
            return Err(InsufficientSize { required: len });
        }
        SetColourMapEntriesRepr {
            first: next,
            count: n,
        }
        .emit(buf);
        for i in 0..n {
            let v = u32::from(next + i);
            // BGR233: red bits 0-2, green 3-5, blue 6-7.
            let (r, g, b) = (v & 7, (v >> 3) & 7, (v >> 6) & 3);
            let at = SetColourMapEntriesRepr::LEN + usize::from(i) * 6;
            put16(buf, at, (r * 65535 / 7) as u16);
            put16(buf, at + 2, (g * 65535 / 7) as u16);
            put16(buf, at + 4, (b * 65535 / 3) as u16);
        }
        self.colour_map_pending = if next + n >= 256 {
            None
        } else {
            Some(next + n)
        };
        Ok(Some(Transmit { len, then: None }))
    }
}

/// EndOfContinuousUpdates (a lone type byte).
fn end_of_continuous_updates(b: &mut [u8]) {
    b[0] = ServerMessageType::EndOfContinuousUpdates.into();
}
