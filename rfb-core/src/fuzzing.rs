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

/// Chunk sizes from the data itself, so splits vary with the input.
fn chunks(data: &[u8]) -> impl Iterator<Item = &[u8]> {
    let step = usize::from(data.first().copied().unwrap_or(1) % 17) + 1;
    data.chunks(step)
}

/// Feeds `data[2..]` to a server (configuration from `data[0]`, split from `data[1]`).
pub fn server(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
    let (sc, _) = configs(sel);
    let mut s = Server::new(sc, Instant::ZERO, [7; 16]);
    let pixels = [0x5au8; 16 * 16 * 4];
    let mut buf = [0u8; 4096];
    let mut out = [0u8; 2048];
    let mut have = 0usize;
    for chunk in chunks(rest) {
        let n = chunk.len().min(buf.len() - have);
        buf[have..have + n].copy_from_slice(&chunk[..n]);
        have += n;
        loop {
            let (consumed, progressed) = match s.handle_input(&buf[..have]) {
                Ok(p) => {
                    if let Some(server::Payload::PlainCredentials { .. }) = p.payload {
                        let _ = s.accept_auth();
                    }
                    (p.consumed, p.consumed > 0 || p.payload.is_some())
                }
                Err(e) => {
                    while s.poll_transmit(&mut out).ok().flatten().is_some() {}
                    if e.is_fatal() {
                        return;
                    }
                    (0, false)
                }
            };
            buf.copy_within(consumed..have, 0);
            have -= consumed;
            while let Ok(Some(_)) = s.poll_transmit(&mut out) {}
            let mut ev = false;
            while let Some(e) = s.poll_event() {
                ev = true;
                match e {
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
            while let Ok(Some(_)) = s.poll_transmit(&mut out) {}
            if s.wants_update()
                && let Ok(fb) = Framebuffer::new(&pixels, 16, 16, 64, PixelFormat::RGB888)
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
                    match s.encode_update(&src, &mut out) {
                        Ok(st) if !st.done => {}
                        _ => break,
                    }
                }
            }
            if let Some(t) = s.poll_timeout() {
                s.handle_timeout(t);
            }
            if !progressed && !ev {
                break;
            }
        }
    }
    let _ = s.handle_eof();
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

/// Completes a None handshake with a 64 × 64 server, asks for every encoding this client
/// decodes, then feeds `data` as server messages (the decoders' fuzz target).
pub fn client_messages(data: &[u8]) {
    let Some((&sel, rest)) = data.split_first() else {
        return;
    };
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
            _ => return,
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
    }
    let _ = c.set_encodings(&encs);
    drive_client(c, chunks(rest));
}

fn drive_client<'a>(mut c: Client, input: impl Iterator<Item = &'a [u8]>) {
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
                return;
            };
            let (consumed, progressed) = match c.handle_input_fb(&buf[..have], &mut fb) {
                Ok(p) => (p.consumed, p.consumed > 0 || p.payload.is_some()),
                Err(e) => {
                    while c.poll_event().is_some() {}
                    if e.is_fatal() {
                        return;
                    }
                    (0, false)
                }
            };
            buf.copy_within(consumed..have, 0);
            have -= consumed;
            let mut ev = false;
            while let Some(e) = c.poll_event() {
                ev = true;
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
