//! Entry points for fuzz targets (`cfg(fuzzing)`, also compiled for tests): each feeds arbitrary
//! bytes to a state machine with a fixed application policy and must never panic.

use crate::client::{self, Client, ClientConfig, Credentials};
use crate::server::{self, Damage, Server, ServerConfig, UpdateSource};
use crate::wire::*;
use crate::{Framebuffer, FramebufferMut, Instant};

fn configs(sel: u8) -> (ServerConfig, ClientConfig) {
    use SecurityType as T;
    use VencryptSubtype as S;
    let (t, s): (&[T], &[S]) = match sel % 6 {
        0 => (&[T::None], &[]),
        1 => (&[T::VncAuth], &[]),
        2 => (&[T::VeNCrypt], &[S::X509Vnc, S::X509Plain]),
        3 => (&[T::VeNCrypt, T::VncAuth], &[S::Plain, S::None, S::VncAuth]),
        4 => (&[T::VeNCrypt], &[S::X509None]),
        _ => (&[T::None, T::VncAuth, T::VeNCrypt], &[S::X509Vnc]),
    };
    let (mut sc, mut cc) = (
        ServerConfig::with_security(t, s),
        ClientConfig::with_security(t, s),
    );
    sc.max_version = [Version::V3_3, Version::V3_7, Version::V3_8][usize::from(sel / 6 % 3)];
    cc.max_version = sc.max_version;
    sc.auth_failure_delay = crate::Duration::ZERO;
    (sc, cc)
}

/// Chunk sizes from the data itself, so splits vary with the input (from the last byte: the
/// first is nearly always a message type, which would mean one-byte pieces).
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let step = usize::from(data.last().copied().unwrap_or(1) % 17) + 1;
    data.chunks(step)
}

/// A server with the application policy every fuzz target gives it: VncAuth accepted when the
/// response's first bit is clear, Plain always, ServerInit at 16 × 16, desktop-size requests
/// refused, and an update (changed and copied areas over flat, striped and noisy pixels, so
/// every encoder sub-mode runs) whenever the client wants one.
pub struct ServerHarness {
    server: Server,
    pixels: [u8; 16 * 16 * 4],
    out: [u8; 2048],
    updates: usize,
    /// `StartTls` is left to the caller (a real TLS layer), else TLS counts as established
    /// at once.
    pub real_tls: bool,
    /// The server asked for TLS (with `real_tls`).
    pub tls_requested: bool,
}

impl ServerHarness {
    /// A server for `config` (its failure delay set to zero).
    pub fn new(mut config: ServerConfig) -> Self {
        config.auth_failure_delay = crate::Duration::ZERO;
        let mut pixels = [0u8; 16 * 16 * 4];
        for (i, p) in pixels.chunks_exact_mut(4).enumerate() {
            let (x, y) = (i % 16, i / 16);
            let v: u32 = if x < 8 && y < 8 {
                0x0020_4060
            } else if y % 3 == 0 {
                0x00ff_0000 | (x as u32 * 16)
            } else {
                (i as u32).wrapping_mul(0x9e37_79b9) >> 8
            };
            p.copy_from_slice(&v.to_le_bytes());
        }
        Self {
            server: Server::new(config, Instant::ZERO, [7; 16]),
            pixels,
            out: [0u8; 2048],
            updates: 0,
            real_tls: false,
            tls_requested: false,
        }
    }

    /// FramebufferUpdates completed so far.
    pub fn updates(&self) -> usize {
        self.updates
    }

    /// The server.
    pub fn server(&mut self) -> &mut Server {
        &mut self.server
    }

    /// Feeds `input`: returns the bytes consumed, or `None` once the connection is over (a
    /// fatal error). With `jump`, the virtual clock jumps to the server's next deadline.
    pub fn feed(&mut self, input: &[u8], jump: bool) -> Option<usize> {
        let mut consumed = 0;
        loop {
            let s = &mut self.server;
            let progressed = match s.handle_input(&input[consumed..]) {
                Ok(p) => {
                    if let Some(server::Payload::PlainCredentials { .. }) = p.lent {
                        let _ = s.accept_auth();
                    }
                    consumed += p.consumed;
                    p.consumed > 0 || p.lent.is_some()
                }
                Err(_) => {
                    while s.poll_transmit(&mut self.out).ok().flatten().is_some() {}
                    return None;
                }
            };
            while let Ok(Some(_)) = s.poll_transmit(&mut self.out) {}
            let mut ev = false;
            while let Some(e) = s.poll_event() {
                ev = true;
                match e {
                    server::Event::StartTls if self.real_tls => self.tls_requested = true,
                    server::Event::StartTls => {
                        let _ = s.tls_established();
                    }
                    server::Event::VncAuth { response, .. } => {
                        if response[0] & 1 == 0 {
                            let _ = s.accept_auth();
                        } else {
                            let _ = s.reject_auth("no");
                        }
                    }
                    server::Event::ClientInit { .. } => {
                        let _ = s.server_init(16, 16, PixelFormat::RGB888, b"fuzz");
                    }
                    server::Event::SetDesktopSize { .. } => {
                        let _ = s.reply_desktop_size(1);
                    }
                    _ => {}
                }
            }
            while let Ok(Some(_)) = s.poll_transmit(&mut self.out) {}
            if s.wants_update()
                && let Ok(fb) = Framebuffer::new(&self.pixels, 16, 16, 64, PixelFormat::RGB888)
            {
                let damage = [
                    Damage::Changed(Rect::new(0, 0, 16, 16)),
                    Damage::Copied {
                        dst: Rect::new(0, 0, 8, 8),
                        src_x: 8,
                        src_y: 8,
                    },
                ];
                let src = UpdateSource::new(fb, &damage);
                for _ in 0..10_000 {
                    match s.encode_update(&src, &mut self.out) {
                        Ok(st) if !st.done => {}
                        Ok(_) => {
                            self.updates += 1;
                            break;
                        }
                        Err(_) => break,
                    }
                }
            }
            // Advancing to every deadline would expire the handshake timeout at once.
            let now = if jump {
                s.poll_timeout().unwrap_or(Instant::ZERO)
            } else {
                Instant::ZERO
            };
            for _ in 0..4 {
                match s.poll_timeout() {
                    Some(t) if t <= now => s.handle_timeout(now),
                    _ => break,
                }
            }
            if !progressed && !ev {
                return Some(consumed);
            }
        }
    }
}

/// Feeds `data[1..]` to a server (configuration from `data[0]`, cut sizes from `data[1]`).
/// Returns the number of FramebufferUpdates completed (for tests: the input got that far).
///
/// The virtual clock stands still (the failure delay is zero) unless a piece of input starts
/// with 0xff: then it jumps to the server's next deadline (handshake timeout).
pub fn server(data: &[u8]) -> usize {
    let Some((&sel, rest)) = data.split_first() else {
        return 0;
    };
    let (sc, _) = configs(sel);
    let mut h = ServerHarness::new(sc);
    let mut buf = [0u8; 4096];
    let mut have = 0usize;
    for chunk in chunks(rest) {
        let n = chunk.len().min(buf.len() - have);
        buf[have..have + n].copy_from_slice(&chunk[..n]);
        have += n;
        let Some(consumed) = h.feed(&buf[..have], chunk.first() == Some(&0xff)) else {
            return h.updates();
        };
        buf.copy_within(consumed..have, 0);
        have -= consumed;
    }
    let _ = h.server.handle_eof();
    h.updates()
}

/// Feeds `data[1..]` to a client (configuration from `data[0]`) with a 32 × 32 framebuffer.
pub fn client(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (_, cc) = configs(sel);
    let c = Client::new(cc, Instant::ZERO);
    drive_client(c, chunks(rest));
}

/// A client that finished a None handshake with a 64 × 64 server in the pixel format `sel`
/// picks (RGB888, RGB565 big endian, BGR233, colour-mapped) and asked for every encoding this
/// client decodes.
fn running_client(sel: u8) -> Option<Client> {
    let mut c = Client::new(
        ClientConfig::with_security(&[SecurityType::None], &[]),
        Instant::ZERO,
    );
    let format = match sel % 4 {
        0 => PixelFormat::RGB888,
        1 => PixelFormat::RGB565_BE,
        2 => PixelFormat::BGR233,
        _ => PixelFormat::COLOUR_MAP8,
    };
    let mut hello = [0u8; 12 + 2 + 4 + 24];
    hello[..12].copy_from_slice(b"RFB 003.008\n");
    hello[12..14].copy_from_slice(&[1, 1]);
    ServerInitRepr {
        width: 64,
        height: 64,
        format,
        name_len: 0,
    }
    .emit(&mut hello[18..]);
    let mut at = 0;
    while at < hello.len() {
        match c.handle_input(&hello[at..]) {
            Ok(p) if p.consumed > 0 => at += p.consumed,
            _ => return None,
        }
        while c.poll_event().is_some() {}
    }
    let mut encs: heapless::Vec<Encoding, 16> = heapless::Vec::new();
    for e in [
        Encoding::Raw,
        Encoding::CopyRect,
        Encoding::Rre,
        Encoding::Hextile,
        Encoding::DesktopSize,
        Encoding::ExtendedDesktopSize,
        Encoding::Cursor,
        Encoding::LastRect,
        Encoding::DesktopName,
        Encoding::QemuExtendedKeyEvent,
        Encoding::Fence,
        Encoding::ContinuousUpdates,
        Encoding::ExtendedClipboard,
    ] {
        let _ = encs.push(e);
    }
    if cfg!(feature = "alloc") {
        let _ = encs.push(Encoding::Zrle);
        let _ = encs.push(Encoding::Tight);
    }
    let _ = c.set_encodings(&encs);
    // With a JPEG decoder, Tight's JPEG rectangles are allowed too.
    let _ = encs.push(Encoding::jpeg_quality(5));
    let _ = c.set_encodings(&encs);
    Some(c)
}

/// Completes a None handshake with a 64 × 64 server, asks for every encoding this client
/// decodes, then feeds `data` as server messages (the decoders' fuzz target). Returns the
/// rectangles decoded (for tests: the input got that far).
pub fn client_messages(data: &[u8]) -> usize {
    let Some((&sel, rest)) = data.split_first() else {
        return 0;
    };
    match running_client(sel) {
        Some(c) => drive_client(c, chunks(rest)),
        None => 0,
    }
}

/// Encodings (and pseudo-encodings) [`rect`] puts on its rectangle: `data[0] % 12` picks one
/// (twelve of them, so a seed's `index | 3 << 4` is `index`, 48 being a multiple of 12).
const RECT_ENCODINGS: [Encoding; 12] = [
    Encoding::Raw,
    Encoding::CopyRect,
    Encoding::Rre,
    Encoding::Hextile,
    Encoding::Zrle,
    Encoding::Cursor,
    Encoding::DesktopSize,
    Encoding::ExtendedDesktopSize,
    Encoding::DesktopName,
    Encoding::LastRect,
    Encoding::QemuExtendedKeyEvent,
    Encoding::Tight,
];

/// Each decoder on an arbitrary rectangle: `data[0]` picks the encoding (and the cut size),
/// `data[1]` the wire pixel format, `data[2..10]` are x, y, width, height; the rest is the
/// rectangle's body (and whatever follows it), fed in pieces to a client after a handshake.
/// Returns the rectangles decoded (0 or 1).
pub fn rect(data: &[u8]) -> usize {
    if data.len() < 10 {
        return 0;
    }
    let enc = RECT_ENCODINGS[usize::from(data[0]) % RECT_ENCODINGS.len()];
    let Some(c) = running_client(data[1]) else {
        return 0;
    };
    let mut msg = [0u8; 4096];
    msg[..4].copy_from_slice(&[0, 0, 0, 1]);
    msg[4..12].copy_from_slice(&data[2..10]);
    msg[12..16].copy_from_slice(&i32::from(enc).to_be_bytes());
    let body = &data[10..];
    let n = body.len().min(msg.len() - 16);
    msg[16..16 + n].copy_from_slice(&body[..n]);
    let step = usize::from(data[0] / 16) + 1;
    drive_client(c, msg[..16 + n].chunks(step))
}

/// Feeds `input` to `c`; returns the rectangles it decoded.
fn drive_client<'a>(mut c: Client, input: impl Iterator<Item = &'a [u8]>) -> usize {
    let mut rects = 0;
    let mut buf = [0u8; 4096];
    let mut out = [0u8; 512];
    let mut fbdata = [0u8; 32 * 32 * 4];
    let mut have = 0usize;
    for chunk in input {
        let n = chunk.len().min(buf.len() - have);
        buf[have..have + n].copy_from_slice(&chunk[..n]);
        have += n;
        loop {
            let fmt = if c.pixel_format().true_colour {
                PixelFormat::RGB888
            } else {
                c.pixel_format()
            };
            let Ok(mut fb) = FramebufferMut::new(&mut fbdata, 32, 32, 128, fmt) else {
                return rects;
            };
            let (consumed, progressed) = match c.handle_input_fb(&buf[..have], &mut fb) {
                Ok(p) => (p.consumed, p.consumed > 0 || p.lent.is_some()),
                Err(_) => {
                    while c.poll_event().is_some() {}
                    return rects;
                }
            };
            buf.copy_within(consumed..have, 0);
            have -= consumed;
            let mut ev = false;
            while let Some(e) = c.poll_event() {
                ev = true;
                if let client::Event::Rect { .. } = e {
                    rects += 1;
                }
                if let client::Event::NeedCredentials(k) = e {
                    let _ = match k {
                        Credentials::Password => c.send_password(b"pw"),
                        Credentials::Plain => c.send_plain_credentials(b"u", b"p"),
                    };
                    break;
                }
                if e == client::Event::StartTls {
                    let _ = c.tls_established();
                    break;
                }
            }
            while let Ok(Some(_)) = c.poll_transmit(&mut out) {}
            if !progressed && !ev {
                break;
            }
        }
    }
    let _ = c.handle_eof();
    rects
}

/// Parses `data` with every wire representation.
pub fn wire(data: &[u8]) {
    let _ = ProtocolVersionRepr::parse(data);
    let _ = PixelFormat::parse(data).map(|p| p.is_valid());
    let _ = SecurityTypesRepr::parse(data);
    let _ = FailureReasonRepr::parse(data);
    let _ = VencryptSubtypesRepr::parse(data).map(|l| l.iter().count());
    let _ = PlainCredentialsRepr::parse(data);
    let _ = SetPixelFormatRepr::parse(data);
    let _ = SetEncodingsHeaderRepr::parse(data);
    let _ = FramebufferUpdateRequestRepr::parse(data);
    let _ = KeyEventRepr::parse(data);
    let _ = PointerEventRepr::parse(data);
    let _ = CutTextHeaderRepr::parse(data).map(|h| (h.decode(true), h.decode(false)));
    let _ = EnableContinuousUpdatesRepr::parse(data);
    let _ = FenceRepr::parse(data);
    let _ = Screen::parse(data);
    let _ = SetDesktopSizeHeaderRepr::parse(data);
    let _ = QemuKeyEventRepr::parse(data);
    let _ = ServerInitRepr::parse(data);
    let _ = FramebufferUpdateRepr::parse(data);
    let _ = RectHeaderRepr::parse(data);
    let _ = SetColourMapEntriesRepr::parse(data);
    let _ = ExtendedDesktopSizeRepr::parse(data);
}
