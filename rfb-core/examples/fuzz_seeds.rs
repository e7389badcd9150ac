//! Writes the seed corpora of the RFB fuzz targets (`fuzz/corpus/<target>/seed-*`): valid
//! sessions between this crate's client and server, run in memory, in the input layout of each
//! target (see `rfb_core::fuzzing`, compiled with `--cfg fuzzing`):
//!
//! * `rfb_server`: `[sel]` + what a client sends (every security configuration × version);
//! * `rfb_client`: `[sel]` + what a server sends to a client that asks for nothing special;
//! * `rfb_decoders`: `[format]` + server messages after ServerInit (every encoding and
//!   pseudo-encoding, Tight also with a JPEG quality, `fuzzing::client_messages`), and single
//!   rectangles (`[encoding | cut << 4, format, x, y, w, h, body]`, `fuzzing::rect`).
//!
//! `cargo run -p rfb-core --features jpeg --example fuzz_seeds -- fuzz/corpus` (with
//! `--features alloc` only, no JPEG seeds)

use std::path::{Path, PathBuf};

use rfb_core::client::{self, Client, ClientConfig, Credentials};
use rfb_core::server::{self, Damage, Server, ServerConfig, UpdateSource};
use rfb_core::wire::*;
use rfb_core::{Framebuffer, FramebufferMut, Instant};

/// The security configurations of `fuzzing::configs` (same order).
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
    sc.auth_failure_delay = rfb_core::Duration::ZERO;
    (sc, cc)
}

/// The fuzz server answers VNC challenge [7; 16] and accepts a response with an even first
/// byte: a password whose response is accepted.
fn accepted_password() -> Vec<u8> {
    (0..)
        .map(|i| format!("pw{i}").into_bytes())
        .find(|p| rfb_core::vnc_response(p, &[7; 16])[0] & 1 == 0)
        .unwrap()
}

struct Fb {
    data: Vec<u8>,
    w: u16,
    h: u16,
    format: PixelFormat,
}

impl Fb {
    fn new(w: u16, h: u16, format: PixelFormat, seed: u32) -> Self {
        let bpp = format.bytes_per_pixel();
        let mut data = vec![0u8; usize::from(w) * usize::from(h) * bpp];
        let mut rng = seed | 1;
        for y in 0..usize::from(h) {
            for x in 0..usize::from(w) {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                let v = if (x / 8 + y / 8) % 3 == 0 {
                    rng
                } else if y % 5 == 0 {
                    0x00ff_0000
                } else {
                    0x0020_4080 + x as u32
                };
                let i = (y * usize::from(w) + x) * bpp;
                data[i..i + bpp].copy_from_slice(&v.to_le_bytes()[..bpp]);
            }
        }
        Self { data, w, h, format }
    }
    fn fb(&self) -> Framebuffer<'_> {
        let stride = usize::from(self.w) * self.format.bytes_per_pixel();
        Framebuffer::new(&self.data, self.w, self.h, stride, self.format).unwrap()
    }
}

/// A client and a server in memory; records both directions.
struct Pair {
    s: Server,
    c: Client,
    fb: Fb,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
    pending_c2s: Vec<u8>,
    pending_s2c: Vec<u8>,
    init_at: Option<usize>,
    password: Vec<u8>,
    client_fb: Vec<u8>,
    tls_s: bool,
    tls_c: bool,
}

impl Pair {
    fn new(sc: ServerConfig, cc: ClientConfig, fb: Fb, challenge: [u8; 16]) -> Self {
        Self {
            s: Server::new(sc, Instant::ZERO, challenge),
            c: Client::new(cc, Instant::ZERO),
            fb,
            c2s: Vec::new(),
            s2c: Vec::new(),
            pending_c2s: Vec::new(),
            pending_s2c: Vec::new(),
            init_at: None,
            password: accepted_password(),
            client_fb: Vec::new(),
            tls_s: false,
            tls_c: false,
        }
    }

    fn pump(&mut self, damage: &[Damage]) {
        let mut buf = vec![0u8; 8192];
        for _ in 0..10_000 {
            let mut moved = false;
            while let Some(t) = self.s.poll_transmit(&mut buf).unwrap() {
                self.pending_s2c.extend_from_slice(&buf[..t.len]);
                if let Some(rfb_core::AppPayload::CutText { len }) = t.then {
                    self.pending_s2c
                        .extend(std::iter::repeat_n(b's', len as usize));
                }
                moved = true;
            }
            while let Some(e) = self.s.poll_event() {
                moved = true;
                match e {
                    server::Event::StartTls => self.tls_s = true,
                    server::Event::VncAuth { .. } => self.s.accept_auth().unwrap(),
                    server::Event::ClientInit { .. } => {
                        self.s
                            .server_init(self.fb.w, self.fb.h, self.fb.format, b"seed")
                            .unwrap();
                        // what the client sees after ServerInit starts after these bytes
                        while let Some(t) = self.s.poll_transmit(&mut buf).unwrap() {
                            self.pending_s2c.extend_from_slice(&buf[..t.len]);
                        }
                        self.init_at = Some(self.s2c.len() + self.pending_s2c.len());
                    }
                    _ => {}
                }
            }
            while let Some(t) = self.c.poll_transmit(&mut buf).unwrap() {
                self.pending_c2s.extend_from_slice(&buf[..t.len]);
                if let Some(rfb_core::AppPayload::CutText { len }) = t.then {
                    self.pending_c2s
                        .extend(std::iter::repeat_n(b'c', len as usize));
                }
                moved = true;
            }
            while let Some(e) = self.c.poll_event() {
                moved = true;
                match e {
                    client::Event::StartTls => self.tls_c = true,
                    client::Event::NeedCredentials(Credentials::Password) => {
                        let pw = self.password.clone();
                        self.c.send_password(&pw).unwrap();
                    }
                    client::Event::NeedCredentials(Credentials::Plain) => {
                        self.c.send_plain_credentials(b"u", b"p").unwrap()
                    }
                    client::Event::ServerInit { width, height, .. } => {
                        self.client_fb = vec![0; usize::from(width) * usize::from(height) * 4];
                    }
                    _ => {}
                }
            }
            if self.tls_s && self.tls_c {
                // no TLS in memory: the fuzz targets skip it the same way
                self.s.tls_established().unwrap();
                self.c.tls_established().unwrap();
                self.tls_s = false;
                self.tls_c = false;
                moved = true;
            }
            if !self.pending_c2s.is_empty() && !self.tls_s {
                let Ok(p) = self.s.handle_input(&self.pending_c2s) else {
                    self.c2s.append(&mut self.pending_c2s);
                    return;
                };
                let plain = matches!(p.lent, Some(server::Payload::PlainCredentials { .. }));
                let n = p.consumed;
                if plain {
                    self.s.accept_auth().unwrap();
                }
                self.c2s.extend_from_slice(&self.pending_c2s[..n]);
                self.pending_c2s.drain(..n);
                moved |= n > 0;
            }
            if !self.pending_s2c.is_empty() && !self.tls_c {
                let (w, h) = self.c.framebuffer_size();
                let mut fb = if self.client_fb.is_empty() {
                    FramebufferMut::empty()
                } else {
                    FramebufferMut::new(
                        &mut self.client_fb,
                        w,
                        h,
                        usize::from(w) * 4,
                        PixelFormat::RGB888,
                    )
                    .unwrap()
                };
                let Ok(p) = self.c.handle_input_fb(&self.pending_s2c, &mut fb) else {
                    // a refusal (RFB 3.3 cannot carry VeNCrypt): the session ends here
                    self.s2c.append(&mut self.pending_s2c);
                    return;
                };
                let (n, lent) = (p.consumed, p.lent.is_some());
                self.s2c.extend_from_slice(&self.pending_s2c[..n]);
                self.pending_s2c.drain(..n);
                moved |= n > 0 || lent;
            }
            if self.s.wants_update() && !damage.is_empty() {
                let src = UpdateSource::new(self.fb.fb(), damage);
                loop {
                    let st = self.s.encode_update(&src, &mut buf).unwrap();
                    self.pending_s2c.extend_from_slice(&buf[..st.written]);
                    if st.done {
                        break;
                    }
                }
                moved = true;
            }
            if !moved {
                return;
            }
        }
        panic!("the pair did not settle");
    }
}

fn write(dir: &Path, target: &str, name: &str, data: &[u8]) {
    let d = dir.join(target);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join(format!("seed-{name}")), data).unwrap();
}

fn main() {
    let dir = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/corpus".into()),
    );
    let mut n = 0;
    // rfb_server and rfb_client: every configuration and version.
    for sel in 0u8..18 {
        // As the server sees it: a client exercising every message.
        let (sc, cc) = configs(sel);
        let fb = Fb::new(16, 16, PixelFormat::RGB888, 3);
        let mut p = Pair::new(sc, cc, fb, [7; 16]);
        p.pump(&[]);
        if p.c.state() != client::State::Running {
            // RFB 3.3 cannot carry VeNCrypt: the refusal is the seed.
            let mut seed = vec![sel];
            seed.extend_from_slice(&p.c2s);
            write(&dir, "rfb_server", &format!("refused-{sel:02}"), &seed);
            let mut seed = vec![sel];
            seed.extend_from_slice(&p.s2c);
            write(&dir, "rfb_client", &format!("refused-{sel:02}"), &seed);
            n += 2;
            continue;
        }
        let encs = [
            [
                Encoding::Raw,
                Encoding::Rre,
                Encoding::Hextile,
                Encoding::Zrle,
                Encoding::Tight,
            ][usize::from(sel) % 5],
            Encoding::CopyRect,
            Encoding::ExtendedDesktopSize,
            Encoding::LastRect,
            Encoding::Fence,
            Encoding::ContinuousUpdates,
            Encoding::ExtendedClipboard,
            Encoding::QemuExtendedKeyEvent,
        ];
        p.c.set_pixel_format(PixelFormat::RGB565).unwrap();
        p.c.set_encodings(&encs).unwrap();
        p.c.request_update(false, Rect::new(0, 0, 16, 16)).unwrap();
        p.c.key_event(true, 0x61).unwrap();
        p.c.key_event(false, 0x61).unwrap();
        p.c.pointer_event(1, 3, 4).unwrap();
        p.c.send_cut_text(CutTextLength::Text(5)).unwrap();
        p.c.request_update(true, Rect::new(0, 0, 16, 16)).unwrap();
        let damage = [
            Damage::Changed(Rect::new(0, 0, 16, 16)),
            Damage::Copied {
                dst: Rect::new(0, 0, 4, 4),
                src_x: 8,
                src_y: 8,
            },
        ];
        p.pump(&damage);
        let mut seed = vec![sel];
        seed.extend_from_slice(&p.c2s);
        write(&dir, "rfb_server", &format!("session-{sel:02}"), &seed);
        n += 1;

        // As a client that asks for nothing sees it: Raw updates, bell, cut text.
        let (sc, cc) = configs(sel);
        let fb = Fb::new(40, 24, PixelFormat::RGB888, u32::from(sel) + 9);
        let mut p = Pair::new(sc, cc, fb, [7; 16]);
        p.pump(&[]);
        p.c.request_update(false, Rect::new(0, 0, 40, 24)).unwrap();
        p.s.bell().unwrap();
        p.s.send_cut_text(CutTextLength::Text(7)).unwrap();
        p.pump(&[Damage::Changed(Rect::new(0, 0, 40, 24))]);
        let mut seed = vec![sel];
        seed.extend_from_slice(&p.s2c);
        write(&dir, "rfb_client", &format!("session-{sel:02}"), &seed);
        n += 1;
    }
    // rfb_decoders: every encoding in each true-colour wire format of fuzzing::client_messages.
    let formats = [
        PixelFormat::RGB888,
        PixelFormat::RGB565_BE,
        PixelFormat::BGR233,
    ];
    for (fi, format) in formats.iter().enumerate() {
        // (Tight with a JPEG quality needs the JPEG features: `--features jpeg`)
        let jpeg = cfg!(feature = "jpeg");
        for (ei, (enc, quality)) in [
            (Encoding::Raw, None),
            (Encoding::Rre, None),
            (Encoding::Hextile, None),
            (Encoding::Zrle, None),
            (Encoding::Tight, None),
            (Encoding::Tight, Some(5)),
        ]
        .iter()
        .enumerate()
        .filter(|(_, (_, q))| q.is_none() || jpeg)
        {
            let with_quality = |encs: &[Encoding]| {
                let mut v = encs.to_vec();
                v.extend(quality.map(Encoding::jpeg_quality));
                v
            };
            let tag = match quality {
                Some(q) => format!("{enc:?}-jpeg{q}"),
                None => format!("{enc:?}"),
            };
            let (sc, cc) = configs(0);
            let fb = Fb::new(64, 64, *format, 17 + ei as u32);
            let mut p = Pair::new(sc, cc, fb, [7; 16]);
            p.pump(&[]);
            p.c.set_encodings(&with_quality(&[
                *enc,
                Encoding::CopyRect,
                Encoding::DesktopSize,
                Encoding::ExtendedDesktopSize,
                Encoding::DesktopName,
                Encoding::LastRect,
                Encoding::QemuExtendedKeyEvent,
                Encoding::from(-256 + 1),
            ]))
            .unwrap();
            p.c.request_update(false, Rect::new(0, 0, 64, 64)).unwrap();
            let damage = [
                Damage::Changed(Rect::new(0, 0, 64, 64)),
                Damage::Copied {
                    dst: Rect::new(0, 0, 16, 8),
                    src_x: 40,
                    src_y: 40,
                },
                Damage::Changed(Rect::new(5, 7, 30, 20)),
            ];
            p.pump(&damage);
            let at = p.init_at.expect("ServerInit sent");
            let mut seed = vec![fi as u8];
            seed.extend_from_slice(&p.s2c[at..]);
            write(&dir, "rfb_decoders", &format!("messages-{tag}-{fi}"), &seed);
            n += 1;

            // The same first rectangle alone, in fuzzing::rect's layout.
            let (sc, cc) = configs(0);
            let fb = Fb::new(64, 64, *format, 31 + ei as u32);
            let mut p = Pair::new(sc, cc, fb, [7; 16]);
            p.pump(&[]);
            p.c.set_encodings(&with_quality(&[*enc])).unwrap();
            p.c.request_update(false, Rect::new(0, 0, 64, 64)).unwrap();
            p.pump(&[Damage::Changed(Rect::new(3, 2, 50, 40))]);
            let at = p.init_at.unwrap();
            let msg = &p.s2c[at..];
            assert_eq!(&msg[..4], &[0, 0, 0, 1]);
            // RECT_ENCODINGS in rfb_core::fuzzing: Raw 0, CopyRect 1, RRE 2, Hextile 3, ZRLE 4,
            // Tight 11 (the high nibble 3 is the cut size, 48 a multiple of the 12 entries)
            let idx = [0u8, 2, 3, 4, 11, 11][ei];
            let mut seed = vec![idx | (3 << 4), fi as u8];
            seed.extend_from_slice(&msg[4..12]);
            seed.extend_from_slice(&msg[16..]);
            write(&dir, "rfb_decoders", &format!("rect-{tag}-{fi}"), &seed);
            n += 1;
        }
    }
    // A cursor, a desktop size and a name as single rectangles.
    let mut cursor = vec![5 | (3 << 4), 0, 0, 1, 0, 2, 0, 4, 0, 3];
    cursor.extend(std::iter::repeat_n(0x5a, 4 * 3 * 4));
    cursor.extend_from_slice(&[0xf0, 0x70, 0x30]);
    write(&dir, "rfb_decoders", "rect-cursor", &cursor);
    write(
        &dir,
        "rfb_decoders",
        "rect-desktop-size",
        &[6, 0, 0, 0, 0, 0, 0, 40, 0, 30],
    );
    let mut name = vec![8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 4];
    name.extend_from_slice(b"name");
    write(&dir, "rfb_decoders", "rect-name", &name);
    n += 3;
    eprintln!("wrote {n} seeds under {}", dir.display());
}
