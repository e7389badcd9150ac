//! Framebuffer updates: the application lends its framebuffer and damage list, the server
//! encodes straight from it into the caller's output buffer, resumable across calls.

use super::Server;
use super::encode::{HextileCarry, Source, hextile_max, hextile_tile, put_px, rre_count, rre_next};
use crate::error::CommandError;
use crate::pixel::{Framebuffer, Translator, effective_format};
use crate::wire::*;

/// What changed in the framebuffer since the last update.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum Damage {
    /// These pixels changed.
    Changed(Rect),
    /// `dst` now holds what was at `(src_x, src_y)` (scrolling, window moves). Sent as CopyRect
    /// when the client supports it, else as changed pixels.
    Copied {
        /// Destination area (already updated in the framebuffer).
        dst: Rect,
        /// Source left edge (before the copy).
        src_x: u16,
        /// Source top edge (before the copy).
        src_y: u16,
    },
}

/// A cursor shape for clients that draw the cursor themselves (Cursor pseudo-encoding).
#[derive(Debug, Clone, Copy)]
pub struct CursorShape<'a> {
    /// Hotspot x inside the image.
    pub hotspot_x: u16,
    /// Hotspot y inside the image.
    pub hotspot_y: u16,
    /// The image (at most 256 × 256).
    pub image: Framebuffer<'a>,
    /// Validity bitmask: rows of `(width + 7) / 8` bytes, most significant bit leftmost.
    pub mask: &'a [u8],
}

/// Everything one update is made from, lent by the application. Pass the same source to every
/// [`Server::encode_update`] call of one update.
#[derive(Debug, Clone, Copy)]
pub struct UpdateSource<'a> {
    /// The current framebuffer in its native format. A size different from the session's is a
    /// resize (sent as ExtendedDesktopSize or DesktopSize).
    pub framebuffer: Framebuffer<'a>,
    /// Changed areas (clipped to the framebuffer; empty ones are skipped).
    pub damage: &'a [Damage],
    /// A new cursor shape, sent if the client supports the Cursor pseudo-encoding.
    pub cursor: Option<CursorShape<'a>>,
    /// A new desktop name (≤ 1024 bytes), sent if the client supports DesktopName.
    pub desktop_name: Option<&'a [u8]>,
    /// Screen layout for ExtendedDesktopSize (≤ 16; empty means one screen covering everything).
    pub screens: &'a [Screen],
    /// The whole framebuffer as a JPEG file, as a capture device delivered it (MJPEG) or as
    /// it was read. A client that takes Tight (or TightPNG) JPEG gets it as it is, one
    /// rectangle covering the framebuffer, instead of the damage encoded anew (JPEG
    /// pass-through, `alloc`); other clients get the damage from `framebuffer` as usual. The
    /// caller vouches that it is the same picture.
    pub jpeg: Option<&'a [u8]>,
}

impl<'a> UpdateSource<'a> {
    /// A source with only a framebuffer and damage.
    pub fn new(framebuffer: Framebuffer<'a>, damage: &'a [Damage]) -> Self {
        Self {
            framebuffer,
            damage,
            cursor: None,
            desktop_name: None,
            screens: &[],
            jpeg: None,
        }
    }
}

/// What makes two sessions' updates from the same pixels byte-identical: see
/// [`Server::shared_update_key`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct SharedUpdateKey {
    /// The encoding of the pixel rectangles (Raw, RRE or Hextile).
    pub encoding: Encoding,
    /// The framebuffer's format.
    pub native: PixelFormat,
    /// The format on the wire.
    pub wire: PixelFormat,
}

/// Progress of [`Server::encode_update`].
#[must_use]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct EncodeStatus {
    /// Bytes written to the output buffer; send them.
    pub written: usize,
    /// The update is complete.
    pub done: bool,
}

/// Height of the horizontal bands a ZRLE rectangle of this width is cut into: whole 64-row
/// tile rows, about 256 K pixels per band (bounds the compression buffers; fewer bands mean
/// fewer zlib flushes).
#[cfg(feature = "alloc")]
pub(crate) fn zrle_band(width: u16) -> u16 {
    let rows = (256 * 1024 / u32::from(width.max(1))) / 64 * 64;
    rows.clamp(64, 1024) as u16
}

const PSEUDO_SIZE: u8 = 1;
const PSEUDO_NAME: u8 = 2;
const PSEUDO_QEMU_KEY: u8 = 4;
const PSEUDO_CURSOR: u8 = 8;
const PSEUDO_LED: u8 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Header,
    Pseudo,
    Damage,
    LastRect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RectState {
    /// The next damage entry starts.
    Start,
    Raw {
        y: u16,
        x: u16,
    },
    Rre {
        bg: u32,
        cx: u16,
        cy: u16,
    },
    Hextile {
        tx: u16,
        ty: u16,
        carry: HextileCarry,
    },
    #[cfg(feature = "alloc")]
    Zrle {
        band: u16,
        sent: usize,
        len: usize,
    },
    #[cfg(feature = "alloc")]
    Tight {
        piece_no: u32,
        sent: usize,
        len: usize,
    },
    Cursor {
        row: u16,
        mask_sent: usize,
    },
}

/// Resumable position inside an update.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UpdateState {
    stage: Stage,
    pseudo: u8,
    size_ext: bool,
    rects: u16,
    last_rect: bool,
    damage: usize,
    rect: RectState,
    encoding: Encoding,
    /// The update is `src.jpeg` as one Tight JPEG rectangle; bytes of it sent so far.
    passthrough: Option<usize>,
}

impl UpdateState {
    #[cfg(feature = "alloc")]
    pub(crate) fn rect_state(&self) -> RectState {
        self.rect
    }
    #[cfg(feature = "alloc")]
    pub(crate) fn set_rect_state(&mut self, r: RectState) {
        self.rect = r;
    }
}

/// Smallest output buffer [`Server::encode_update`] works with.
pub const MIN_ENCODE_BUFFER: usize = 2048;

fn piece_count(r: &Rect, encoding: Encoding) -> u32 {
    #[cfg(feature = "alloc")]
    if encoding == Encoding::Zrle {
        return u32::from(r.height.div_ceil(zrle_band(r.width)));
    }
    #[cfg(feature = "alloc")]
    if matches!(encoding, Encoding::Tight | Encoding::TightPng) {
        return super::tight::piece_count(r);
    }
    let _ = (r, encoding);
    1
}

impl Server {
    /// Whether `d` goes out as CopyRect in this update.
    fn as_copy(&self, d: &Damage, fb: &Framebuffer<'_>) -> Option<(Rect, u16, u16)> {
        match *d {
            Damage::Copied { dst, src_x, src_y }
                if self.prefs.flags & bits::COPYRECT != 0 && !self.full_update_requested =>
            {
                let src = Rect::new(src_x, src_y, dst.width, dst.height);
                (dst.fits_in(fb.width(), fb.height())
                    && src.fits_in(fb.width(), fb.height())
                    && !dst.is_empty())
                .then_some((dst, src_x, src_y))
            }
            _ => None,
        }
    }

    fn damage_rect(d: &Damage, fb: &Framebuffer<'_>) -> Rect {
        match *d {
            Damage::Changed(r) | Damage::Copied { dst: r, .. } => {
                r.clip_to(fb.width(), fb.height())
            }
        }
    }

    fn start_update(&mut self, src: &UpdateSource<'_>) -> Result<UpdateState, CommandError> {
        let (st, resized) = self.plan_update(src)?;
        if resized {
            self.width = src.framebuffer.width();
            self.height = src.framebuffer.height();
        }
        Ok(st)
    }

    /// What the next update made from `src` holds, and whether it is a resize; changes nothing.
    fn plan_update(&self, src: &UpdateSource<'_>) -> Result<(UpdateState, bool), CommandError> {
        if self.phase != super::Phase::Normal
            || !(self.update_requested || self.continuous.is_some())
        {
            return Err(CommandError::InvalidState);
        }
        if !self.out.is_empty() || self.colour_map_pending.is_some() {
            return Err(CommandError::QueueFull);
        }
        let fb = &src.framebuffer;
        if !fb.format().true_colour
            || src.screens.len() > 16
            || src.desktop_name.is_some_and(|n| n.len() > 1024)
        {
            return Err(CommandError::InvalidArgument);
        }
        let flags = self.prefs.flags;
        let resized = (fb.width(), fb.height()) != (self.width, self.height);
        let ext = flags & bits::EXT_DESKTOP_SIZE != 0;
        let mut pseudo = 0u8;
        if resized || (ext && (self.full_update_requested || self.desktop_size_reply.is_some())) {
            if !ext && (flags & bits::DESKTOP_SIZE == 0) {
                // The client cannot follow a resize; the application must disconnect it.
                return Err(CommandError::InvalidArgument);
            }
            pseudo |= PSEUDO_SIZE;
        }
        if src.desktop_name.is_some() && flags & bits::DESKTOP_NAME != 0 {
            pseudo |= PSEUDO_NAME;
        }
        if self.qemu_key_ack_pending {
            pseudo |= PSEUDO_QEMU_KEY;
        }
        if self.led_update_due() {
            pseudo |= PSEUDO_LED;
        }
        if let Some(c) = &src.cursor
            && flags & bits::CURSOR != 0
        {
            let (w, h) = (c.image.width(), c.image.height());
            let mask_len = cursor_mask_len(w, h);
            if w > 256 || h > 256 || c.mask.len() < mask_len || !c.image.format().true_colour {
                return Err(CommandError::InvalidArgument);
            }
            pseudo |= PSEUDO_CURSOR;
        }
        let encoding = self.prefs.encoding;
        let mut rects = pseudo.count_ones();
        #[cfg(feature = "alloc")]
        let passthrough = self.jpeg_passthrough(src);
        #[cfg(not(feature = "alloc"))]
        let passthrough = false;
        if passthrough {
            rects += 1;
        }
        for d in src.damage.iter().filter(|_| !passthrough) {
            if self.as_copy(d, fb).is_some() {
                rects += 1;
            } else {
                let r = Self::damage_rect(d, fb);
                if !r.is_empty() {
                    rects += piece_count(&r, encoding);
                }
            }
        }
        let last_rect = rects > 0xfffe;
        if last_rect && flags & bits::LAST_RECT == 0 {
            return Err(CommandError::InvalidArgument);
        }
        let st = UpdateState {
            stage: Stage::Header,
            pseudo,
            size_ext: ext,
            rects: if last_rect {
                FramebufferUpdateRepr::UNTIL_LAST_RECT
            } else {
                rects as u16
            },
            last_rect,
            damage: 0,
            rect: RectState::Start,
            encoding,
            passthrough: passthrough.then_some(0),
        };
        Ok((st, resized))
    }

    /// The key under which the next update made from `src` can be shared with other sessions,
    /// or `None` if it cannot.
    ///
    /// An update can be shared when it holds only changed pixels (no resize, CopyRect, cursor,
    /// name, LED state or key acknowledgement due, no LastRect needed) in a stateless encoding
    /// (Raw, RRE, Hextile; the zlib streams of ZRLE and Tight belong to one connection). Two sessions whose
    /// keys are equal produce byte-identical updates from the same framebuffer contents and the
    /// same damage list, so a server with many viewers of one picture can encode it once, send
    /// those bytes to every session with an equal key and tell each with
    /// [`update_sent`](Self::update_sent). Checking that the contents and the damage are the
    /// same is the caller's part.
    pub fn shared_update_key(&self, src: &UpdateSource<'_>) -> Option<SharedUpdateKey> {
        if self.update.is_some() {
            return None;
        }
        let (st, resized) = self.plan_update(src).ok()?;
        let fb = &src.framebuffer;
        if resized
            || st.passthrough.is_some()
            || st.pseudo != 0
            || st.last_rect
            || src.damage.iter().any(|d| self.as_copy(d, fb).is_some())
        {
            return None;
        }
        // Only the stateless encodings: ZRLE's and Tight's zlib streams belong to one
        // connection.
        let encoding = match st.encoding {
            e @ (Encoding::Raw | Encoding::Hextile | Encoding::Rre) => e,
            _ => return None,
        };
        Some(SharedUpdateKey {
            encoding,
            native: fb.format(),
            wire: effective_format(&self.client_format),
        })
    }

    /// Records that the update for `src` went out as bytes another session encoded under
    /// `key` (see [`shared_update_key`](Self::shared_update_key)): the session moves on exactly
    /// as if [`encode_update`](Self::encode_update) had written them.
    /// [`CommandError::InvalidArgument`] if this session's key for `src` is not `key` (nothing
    /// changes then; encode the update instead).
    pub fn update_sent(
        &mut self,
        src: &UpdateSource<'_>,
        key: SharedUpdateKey,
    ) -> Result<(), CommandError> {
        if self.shared_update_key(src) != Some(key) {
            return Err(CommandError::InvalidArgument);
        }
        self.desktop_size_reply = None;
        self.qemu_key_ack_pending = false;
        self.finish_update();
        Ok(())
    }

    /// Encodes (part of) a FramebufferUpdate from `src` into `out` (at least
    /// [`MIN_ENCODE_BUFFER`] bytes). Call while [`wants_update`](Self::wants_update) is true,
    /// with the same `src` until `done`; send each `written` prefix in order. Other messages
    /// wait in `poll_transmit` until the update is done; drain `poll_transmit` before the first
    /// call (else [`CommandError::QueueFull`]).
    ///
    /// Pixels are translated from the framebuffer's format into the client's and encoded with
    /// the client's preferred supported encoding (Tight, TightPNG, ZRLE, Hextile, RRE or Raw);
    /// copied areas go out as CopyRect when the client asked for it.
    pub fn encode_update(
        &mut self,
        src: &UpdateSource<'_>,
        out: &mut [u8],
    ) -> Result<EncodeStatus, CommandError> {
        if out.len() < MIN_ENCODE_BUFFER {
            return Err(CommandError::InvalidArgument);
        }
        let mut st = match self.update {
            Some(st) => st,
            None => self.start_update(src)?,
        };
        let fb = &src.framebuffer;
        if (fb.width(), fb.height()) != (self.width, self.height) {
            // The application changed the framebuffer in the middle of an update.
            return Err(CommandError::InvalidArgument);
        }
        let wire = effective_format(&self.client_format);
        let tr = Translator::new(&fb.format(), &wire).ok_or(CommandError::InvalidArgument)?;
        let source = Source {
            fb,
            tr: &tr,
            bpp: wire.bytes_per_pixel(),
        };
        let mut pos = 0usize;
        let done = loop {
            match st.stage {
                Stage::Header => {
                    FramebufferUpdateRepr { rects: st.rects }.emit(&mut out[pos..]);
                    pos += FramebufferUpdateRepr::LEN;
                    st.stage = Stage::Pseudo;
                }
                Stage::Pseudo => {
                    if st.pseudo == 0 {
                        st.stage = Stage::Damage;
                        continue;
                    }
                    match self.encode_pseudo(&mut st, src, &source, &mut out[pos..]) {
                        Some(n) => pos += n,
                        None => break false,
                    }
                }
                Stage::Damage => {
                    #[cfg(feature = "alloc")]
                    if let Some(sent) = st.passthrough {
                        let jpeg = src.jpeg.ok_or(CommandError::InvalidArgument)?;
                        match self.write_passthrough(jpeg, sent, &mut out[pos..]) {
                            Some((n, done)) => {
                                pos += n;
                                st.passthrough = Some(sent + n);
                                if !done {
                                    break false;
                                }
                                st.stage = Stage::LastRect;
                                continue;
                            }
                            None => break false,
                        }
                    }
                    if st.damage >= src.damage.len() {
                        st.stage = Stage::LastRect;
                        continue;
                    }
                    match self.encode_damage(&mut st, src, &source, &mut out[pos..])? {
                        Some(n) => pos += n,
                        None => break false,
                    }
                }
                Stage::LastRect => {
                    if st.last_rect {
                        if out.len() - pos < RectHeaderRepr::LEN {
                            break false;
                        }
                        RectHeaderRepr {
                            rect: Rect::default(),
                            encoding: Encoding::LastRect,
                        }
                        .emit(&mut out[pos..]);
                        pos += RectHeaderRepr::LEN;
                    }
                    break true;
                }
            }
        };
        if done {
            self.desktop_size_reply = None;
            self.qemu_key_ack_pending = false;
            self.finish_update();
        } else {
            self.update = Some(st);
        }
        Ok(EncodeStatus { written: pos, done })
    }

    /// Writes the next pseudo-rectangle (or part of the cursor); `None` if `out` is too full.
    fn encode_pseudo(
        &mut self,
        st: &mut UpdateState,
        src: &UpdateSource<'_>,
        source: &Source<'_, '_>,
        out: &mut [u8],
    ) -> Option<usize> {
        let fb = &src.framebuffer;
        let (w, h) = (fb.width(), fb.height());
        if st.pseudo & PSEUDO_SIZE != 0 {
            if st.size_ext {
                let default = [Screen {
                    id: 0,
                    rect: Rect::new(0, 0, w, h),
                    flags: 0,
                }];
                let screens = if src.screens.is_empty() {
                    &default[..]
                } else {
                    src.screens
                };
                let n = RectHeaderRepr::LEN
                    + ExtendedDesktopSizeRepr::LEN
                    + Screen::LEN * screens.len();
                if out.len() < n {
                    return None;
                }
                let (reason, status) = match self.desktop_size_reply {
                    Some(s) => (desktop_size::REASON_THIS_CLIENT, s),
                    None => (desktop_size::REASON_SERVER, desktop_size::STATUS_OK),
                };
                RectHeaderRepr {
                    rect: Rect::new(reason, status, w, h),
                    encoding: Encoding::ExtendedDesktopSize,
                }
                .emit(out);
                ExtendedDesktopSizeRepr {
                    screens: screens.len() as u8,
                }
                .emit(&mut out[RectHeaderRepr::LEN..]);
                let at = RectHeaderRepr::LEN + ExtendedDesktopSizeRepr::LEN;
                for (i, s) in screens.iter().enumerate() {
                    s.emit(&mut out[at + Screen::LEN * i..]);
                }
                st.pseudo &= !PSEUDO_SIZE;
                return Some(n);
            }
            if out.len() < RectHeaderRepr::LEN {
                return None;
            }
            RectHeaderRepr {
                rect: Rect::new(0, 0, w, h),
                encoding: Encoding::DesktopSize,
            }
            .emit(out);
            st.pseudo &= !PSEUDO_SIZE;
            return Some(RectHeaderRepr::LEN);
        }
        if st.pseudo & PSEUDO_NAME != 0 {
            let name = src.desktop_name.unwrap_or_default();
            let n = RectHeaderRepr::LEN + 4 + name.len();
            if out.len() < n {
                return None;
            }
            RectHeaderRepr {
                rect: Rect::default(),
                encoding: Encoding::DesktopName,
            }
            .emit(out);
            // U32 length, then the name.
            put32(out, RectHeaderRepr::LEN, name.len() as u32);
            out[RectHeaderRepr::LEN + 4..n].copy_from_slice(name);
            st.pseudo &= !PSEUDO_NAME;
            return Some(n);
        }
        if st.pseudo & PSEUDO_QEMU_KEY != 0 {
            if out.len() < RectHeaderRepr::LEN {
                return None;
            }
            RectHeaderRepr {
                rect: Rect::new(0, 0, w, h),
                encoding: Encoding::QemuExtendedKeyEvent,
            }
            .emit(out);
            st.pseudo &= !PSEUDO_QEMU_KEY;
            return Some(RectHeaderRepr::LEN);
        }
        if st.pseudo & PSEUDO_LED != 0 {
            // As QEMU sends it: a 1 × 1 pseudo-rectangle at the origin, then one byte.
            let n = RectHeaderRepr::LEN + 1;
            if out.len() < n {
                return None;
            }
            RectHeaderRepr {
                rect: Rect::new(0, 0, 1, 1),
                encoding: Encoding::QemuLedState,
            }
            .emit(out);
            out[RectHeaderRepr::LEN] = self.leds;
            self.leds_pending = false;
            st.pseudo &= !PSEUDO_LED;
            return Some(n);
        }
        // Cursor: header, then rows of translated pixels, then the mask.
        let c = src.cursor?;
        let img = &c.image;
        let wire = effective_format(&self.client_format);
        let tr = Translator::new(&img.format(), &wire)?;
        let bpp = source.bpp;
        let mut pos = 0;
        if st.rect != RectState::Start && !matches!(st.rect, RectState::Cursor { .. }) {
            return None;
        }
        if st.rect == RectState::Start {
            if out.len() < RectHeaderRepr::LEN {
                return None;
            }
            let hx = c.hotspot_x.min(img.width().saturating_sub(1));
            let hy = c.hotspot_y.min(img.height().saturating_sub(1));
            RectHeaderRepr {
                rect: Rect::new(hx, hy, img.width(), img.height()),
                encoding: Encoding::Cursor,
            }
            .emit(out);
            pos = RectHeaderRepr::LEN;
            st.rect = RectState::Cursor {
                row: 0,
                mask_sent: 0,
            };
        }
        let RectState::Cursor {
            mut row,
            mut mask_sent,
        } = st.rect
        else {
            return None;
        };
        let row_len = usize::from(img.width()) * bpp;
        while row < img.height() {
            if out.len() - pos < row_len {
                st.rect = RectState::Cursor { row, mask_sent };
                return Some(pos);
            }
            tr.row(img.row(0, row, img.width()), &mut out[pos..pos + row_len]);
            pos += row_len;
            row += 1;
        }
        let mask_len = cursor_mask_len(img.width(), img.height());
        let n = (mask_len - mask_sent).min(out.len() - pos);
        out[pos..pos + n].copy_from_slice(&c.mask[mask_sent..mask_sent + n]);
        pos += n;
        mask_sent += n;
        if mask_sent < mask_len {
            st.rect = RectState::Cursor { row, mask_sent };
        } else {
            st.rect = RectState::Start;
            st.pseudo &= !PSEUDO_CURSOR;
        }
        Some(pos)
    }

    /// Writes (part of) the current damage rectangle; `None` if nothing fit.
    fn encode_damage(
        &mut self,
        st: &mut UpdateState,
        src: &UpdateSource<'_>,
        source: &Source<'_, '_>,
        out: &mut [u8],
    ) -> Result<Option<usize>, CommandError> {
        let fb = &src.framebuffer;
        let d = &src.damage[st.damage];
        let bpp = source.bpp;
        let mut pos = 0usize;
        if st.rect == RectState::Start {
            if let Some((dst, sx, sy)) = self.as_copy(d, fb) {
                let n = RectHeaderRepr::LEN + CopyRectRepr::LEN;
                if out.len() < n {
                    return Ok(None);
                }
                RectHeaderRepr {
                    rect: dst,
                    encoding: Encoding::CopyRect,
                }
                .emit(out);
                CopyRectRepr {
                    src_x: sx,
                    src_y: sy,
                }
                .emit(&mut out[RectHeaderRepr::LEN..]);
                st.damage += 1;
                return Ok(Some(n));
            }
            let r = Self::damage_rect(d, fb);
            if r.is_empty() {
                st.damage += 1;
                return Ok(Some(0));
            }
            match st.encoding {
                #[cfg(feature = "alloc")]
                Encoding::Zrle => {
                    st.rect = RectState::Zrle {
                        band: 0,
                        sent: 0,
                        len: 0,
                    };
                }
                #[cfg(feature = "alloc")]
                Encoding::Tight | Encoding::TightPng => {
                    st.rect = RectState::Tight {
                        piece_no: 0,
                        sent: 0,
                        len: 0,
                    };
                }
                Encoding::Hextile => {
                    if out.len() < RectHeaderRepr::LEN {
                        return Ok(None);
                    }
                    RectHeaderRepr {
                        rect: r,
                        encoding: Encoding::Hextile,
                    }
                    .emit(out);
                    pos = RectHeaderRepr::LEN;
                    st.rect = RectState::Hextile {
                        tx: 0,
                        ty: 0,
                        carry: HextileCarry::default(),
                    };
                }
                Encoding::Rre => {
                    let bg = source.pixel(r.x, r.y);
                    let count = rre_count(source, r.x, r.y, r.width, r.height, bg);
                    let n = RectHeaderRepr::LEN + rre::header_len(bpp);
                    if out.len() < n {
                        return Ok(None);
                    }
                    RectHeaderRepr {
                        rect: r,
                        encoding: Encoding::Rre,
                    }
                    .emit(out);
                    let body = &mut out[RectHeaderRepr::LEN..];
                    rre::emit_header_count(body, count);
                    put_px(&mut body[4..], bg, bpp);
                    pos = n;
                    st.rect = RectState::Rre { bg, cx: 0, cy: 0 };
                }
                _ => {
                    if out.len() < RectHeaderRepr::LEN {
                        return Ok(None);
                    }
                    RectHeaderRepr {
                        rect: r,
                        encoding: Encoding::Raw,
                    }
                    .emit(out);
                    pos = RectHeaderRepr::LEN;
                    st.rect = RectState::Raw { y: 0, x: 0 };
                }
            }
        }
        let r = Self::damage_rect(d, fb);
        #[cfg(feature = "alloc")]
        if matches!(st.rect, RectState::Zrle { .. } | RectState::Tight { .. }) {
            let (n, finished) = if matches!(st.rect, RectState::Zrle { .. }) {
                self.encode_zrle_step(st, r, source, &mut out[pos..])?
            } else {
                self.encode_tight_step(st, r, source, &mut out[pos..])?
            };
            pos += n;
            if finished {
                st.rect = RectState::Start;
                st.damage += 1;
            }
            return Ok(if pos == 0 && !finished {
                None
            } else {
                Some(pos)
            });
        }
        let finished = match &mut st.rect {
            RectState::Raw { y, x } => {
                while *y < r.height {
                    let fit = ((out.len() - pos) / bpp).min(usize::from(r.width - *x)) as u16;
                    if fit == 0 {
                        break;
                    }
                    let n = usize::from(fit) * bpp;
                    source.write_row(r.x + *x, r.y + *y, fit, &mut out[pos..pos + n]);
                    pos += n;
                    *x += fit;
                    if *x == r.width {
                        *x = 0;
                        *y += 1;
                    }
                }
                *y >= r.height
            }
            RectState::Rre { bg, cx, cy } => {
                let mut done = false;
                loop {
                    let len = rre::subrect_len(bpp);
                    if out.len() - pos < len {
                        break;
                    }
                    match rre_next(source, (r.x, r.y, r.width, r.height), *bg, cx, cy) {
                        Some((p, sx, sy, sw)) => {
                            put_px(&mut out[pos..], p, bpp);
                            let geometry = Rect::new(sx, sy, sw, 1);
                            rre::emit_subrect_geometry(&mut out[pos..], bpp, &geometry);
                            pos += len;
                        }
                        None => {
                            done = true;
                            break;
                        }
                    }
                }
                done
            }
            RectState::Hextile { tx, ty, carry } => {
                let mut px = [0u32; 256];
                let max = hextile_max(bpp);
                const TILE: u16 = hextile::TILE_SIZE;
                let tiles_x = r.width.div_ceil(TILE);
                let tiles_y = r.height.div_ceil(TILE);
                while *ty < tiles_y {
                    if out.len() - pos < max {
                        break;
                    }
                    let x = r.x + *tx * TILE;
                    let y = r.y + *ty * TILE;
                    let w = (r.x + r.width - x).min(TILE);
                    let h = (r.y + r.height - y).min(TILE);
                    let (tw, th) = (usize::from(w), usize::from(h));
                    source.load_tile(x, y, w, h, &mut px);
                    pos += match hextile_tile(&mut px, tw, th, bpp, carry, &mut out[pos..]) {
                        Some(len) => len,
                        None => {
                            // Raw: the rows in the client's format, straight from the framebuffer.
                            out[pos] = hextile::RAW;
                            let row = tw * bpp;
                            for r in 0..h {
                                let at = pos + 1 + usize::from(r) * row;
                                source.write_row(x, y + r, w, &mut out[at..at + row]);
                            }
                            *carry = HextileCarry::default();
                            1 + th * row
                        }
                    };
                    *tx += 1;
                    if *tx == tiles_x {
                        *tx = 0;
                        *ty += 1;
                    }
                }
                *ty >= tiles_y
            }
            #[cfg(feature = "alloc")]
            RectState::Zrle { .. } | RectState::Tight { .. } => true,
            RectState::Start | RectState::Cursor { .. } => true,
        };
        if finished {
            st.rect = RectState::Start;
            st.damage += 1;
        }
        Ok(if pos == 0 && !finished {
            None
        } else {
            Some(pos)
        })
    }
}
