//! Our client against our server in memory, with a fake TLS step (no encryption: the TLS layer
//! is another crate) that checks nothing crosses the StartTls boundary.

use crate::client::{self, Client, ClientConfig, Credentials};
use crate::server::{self, Damage, Server, ServerConfig, UpdateSource};
use crate::wire::*;
use crate::{Framebuffer, FramebufferMut, Instant, vnc_response};

pub(crate) const CHALLENGE: [u8; 16] = *b"0123456789abcdef";
pub(crate) const PASSWORD: &[u8] = b"secret";

/// A server-side framebuffer with a desktop-like pattern.
pub(crate) struct ServerFb {
    pub(crate) data: Vec<u8>,
    pub(crate) width: u16,
    pub(crate) height: u16,
    pub(crate) stride: usize,
    pub(crate) format: PixelFormat,
}

impl ServerFb {
    pub(crate) fn pattern(width: u16, height: u16, format: PixelFormat, seed: u32) -> Self {
        let bpp = format.bytes_per_pixel();
        let stride = usize::from(width) * bpp + 8;
        let mut data = vec![0u8; stride * usize::from(height)];
        let mut rng = seed.wrapping_mul(2_654_435_761).max(1);
        for y in 0..usize::from(height) {
            for x in 0..usize::from(width) {
                rng ^= rng << 13;
                rng ^= rng >> 17;
                rng ^= rng << 5;
                // Mostly flat areas and stripes, some noise, like a desktop.
                let v: u32 = if (x / 7 + y / 5) % 11 == 0 {
                    rng
                } else if (x / 16 + y / 16) % 3 == 0 {
                    0x00a0_b0c0
                } else if y % 9 < 2 {
                    0x0010_2030 + (x as u32 % 3)
                } else {
                    0x00ff_ffff
                };
                let val = pack_rgb(&format, v);
                crate::pixel::write_value(
                    &mut data[y * stride + x * bpp..],
                    val,
                    bpp,
                    format.big_endian,
                );
            }
        }
        Self {
            data,
            width,
            height,
            stride,
            format,
        }
    }

    pub(crate) fn fb(&self) -> Framebuffer<'_> {
        Framebuffer::new(
            &self.data,
            self.width,
            self.height,
            self.stride,
            self.format,
        )
        .unwrap()
    }
}

/// 0xRRGGBB into a pixel value of `f`.
pub(crate) fn pack_rgb(f: &PixelFormat, rgb: u32) -> u32 {
    let c = [(rgb >> 16) & 255, (rgb >> 8) & 255, rgb & 255];
    let mut v = 0;
    for (i, (max, shift)) in f.channels().iter().enumerate() {
        v |= (c[i] * u32::from(*max) / 255) << shift;
    }
    v
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Auth {
    None,
    Vnc,
    VencryptPlain,
    VencryptNone,
    VencryptVnc,
    X509None,
    X509Vnc,
    X509Plain,
}

impl Auth {
    pub(crate) fn configs(self) -> (ServerConfig, ClientConfig) {
        use SecurityType as T;
        use VencryptSubtype as S;
        let (t, s): (&[T], &[S]) = match self {
            Auth::None => (&[T::None], &[]),
            Auth::Vnc => (&[T::VncAuth], &[]),
            Auth::VencryptPlain => (&[T::VeNCrypt], &[S::Plain]),
            Auth::VencryptNone => (&[T::VeNCrypt], &[S::None]),
            Auth::VencryptVnc => (&[T::VeNCrypt], &[S::VncAuth]),
            Auth::X509None => (&[T::VeNCrypt], &[S::X509None]),
            Auth::X509Vnc => (&[T::VeNCrypt], &[S::X509Vnc]),
            Auth::X509Plain => (&[T::VeNCrypt], &[S::X509Plain]),
        };
        (
            ServerConfig::with_security(t, s),
            ClientConfig::with_security(t, s),
        )
    }
}

/// Deterministic application behaviour for both sides.
pub(crate) struct Pair {
    pub(crate) server: Server,
    pub(crate) client: Client,
    pub(crate) s2c: Vec<u8>,
    pub(crate) c2s: Vec<u8>,
    pub(crate) server_fb: ServerFb,
    pub(crate) client_fb: Vec<u8>,
    pub(crate) client_fb_format: PixelFormat,
    pub(crate) client_fb_size: (u16, u16),
    pub(crate) server_events: Vec<String>,
    pub(crate) client_events: Vec<String>,
    pub(crate) damage: Vec<Damage>,
    /// The framebuffer as a JPEG, lent with the updates (`UpdateSource::jpeg`).
    pub(crate) jpeg: Option<Vec<u8>>,
    pub(crate) out_chunk: usize,
    pub(crate) tls_server: bool,
    pub(crate) tls_client: bool,
    pub(crate) password: &'static [u8],
    pub(crate) plain: (&'static [u8], &'static [u8]),
    pub(crate) server_init_done: bool,
    pub(crate) client_ready: bool,
    pub(crate) auth_failed: bool,
    /// Everything sent server → client and client → server.
    pub(crate) rec_s2c: Vec<u8>,
    pub(crate) rec_c2s: Vec<u8>,
}

impl Pair {
    pub(crate) fn new(auth: Auth, fb: ServerFb, client_fb_format: PixelFormat) -> Self {
        let (sc, cc) = auth.configs();
        Self::with_configs(sc, cc, fb, client_fb_format)
    }

    pub(crate) fn with_configs(
        sc: ServerConfig,
        cc: ClientConfig,
        fb: ServerFb,
        client_fb_format: PixelFormat,
    ) -> Self {
        Self {
            server: Server::new(sc, Instant::ZERO, CHALLENGE),
            client: Client::new(cc, Instant::ZERO),
            s2c: Vec::new(),
            c2s: Vec::new(),
            server_fb: fb,
            client_fb: Vec::new(),
            client_fb_format,
            client_fb_size: (0, 0),
            server_events: Vec::new(),
            client_events: Vec::new(),
            damage: Vec::new(),
            jpeg: None,
            out_chunk: 4096,
            tls_server: false,
            tls_client: false,
            password: PASSWORD,
            plain: (b"user", b"pass"),
            server_init_done: false,
            client_ready: false,
            auth_failed: false,
            rec_s2c: Vec::new(),
            rec_c2s: Vec::new(),
        }
    }

    fn drain_server(&mut self) {
        let mut buf = vec![0u8; 4096];
        while let Some(t) = self.server.poll_transmit(&mut buf).unwrap() {
            self.s2c.extend_from_slice(&buf[..t.len]);
            self.rec_s2c.extend_from_slice(&buf[..t.len]);
            if let Some(crate::AppPayload::CutText { len }) = t.then {
                self.s2c.extend((0..len).map(|i| b'a' + (i % 26) as u8));
                self.rec_s2c.extend((0..len).map(|i| b'a' + (i % 26) as u8));
            }
        }
        while let Some(e) = self.server.poll_event() {
            self.server_events.push(format!("{e:?}"));
            match e {
                server::Event::StartTls => {
                    // Everything before the switch point has been sent; nothing may follow it.
                    assert!(self.c2s.is_empty(), "plaintext after the VeNCrypt sub-type");
                    self.tls_server = true;
                }
                server::Event::VncAuth {
                    challenge,
                    response,
                } => {
                    if crate::verify_vnc_response(PASSWORD, &challenge, &response) {
                        self.server.accept_auth().unwrap();
                    } else {
                        self.server.reject_auth("Authentication failed").unwrap();
                    }
                }
                server::Event::ClientInit { .. } => {
                    let fb = &self.server_fb;
                    self.server
                        .server_init(fb.width, fb.height, fb.format, b"test desktop")
                        .unwrap();
                    self.server_init_done = true;
                }
                server::Event::AuthFailed { .. } => self.auth_failed = true,
                _ => {}
            }
        }
        if self.auth_failed {
            // Virtual clock: run the failure delay at once.
            while let Some(t) = self.server.poll_timeout() {
                self.server.handle_timeout(t);
            }
            self.drain_server_transmit_only();
        }
    }

    fn drain_server_transmit_only(&mut self) {
        let mut buf = vec![0u8; 4096];
        while let Some(t) = self.server.poll_transmit(&mut buf).unwrap() {
            self.s2c.extend_from_slice(&buf[..t.len]);
            self.rec_s2c.extend_from_slice(&buf[..t.len]);
        }
    }

    fn drain_client(&mut self) {
        let mut buf = vec![0u8; 4096];
        while let Some(t) = self.client.poll_transmit(&mut buf).unwrap() {
            self.c2s.extend_from_slice(&buf[..t.len]);
            self.rec_c2s.extend_from_slice(&buf[..t.len]);
            if let Some(crate::AppPayload::CutText { len }) = t.then {
                self.c2s.extend((0..len).map(|i| b'A' + (i % 26) as u8));
                self.rec_c2s.extend((0..len).map(|i| b'A' + (i % 26) as u8));
            }
        }
        while let Some(e) = self.client.poll_event() {
            self.client_events.push(format!("{e:?}"));
            match e {
                client::Event::StartTls => {
                    assert!(self.s2c.is_empty(), "plaintext after the VeNCrypt ack");
                    self.tls_client = true;
                }
                client::Event::NeedCredentials(Credentials::Password) => {
                    let pw = self.password;
                    self.client.send_password(pw).unwrap();
                }
                client::Event::NeedCredentials(Credentials::Plain) => {
                    let (u, p) = self.plain;
                    self.client.send_plain_credentials(u, p).unwrap();
                }
                client::Event::ServerInit { width, height, .. } => {
                    self.resize_client_fb(width, height);
                    self.client_ready = true;
                }
                client::Event::DesktopSize { width, height } => {
                    self.resize_client_fb(width, height)
                }
                client::Event::ExtendedDesktopSize {
                    width,
                    height,
                    status: 0,
                    ..
                } => self.resize_client_fb(width, height),
                _ => {}
            }
        }
        if self.tls_client && self.tls_server {
            self.client.tls_established().unwrap();
            self.server.tls_established().unwrap();
            self.tls_client = false;
            self.tls_server = false;
        }
    }

    pub(crate) fn resize_client_fb(&mut self, w: u16, h: u16) {
        let bpp = self.client_fb_format.bytes_per_pixel();
        self.client_fb = vec![0u8; usize::from(w) * usize::from(h) * bpp];
        self.client_fb_size = (w, h);
    }

    /// Moves bytes until neither side makes progress.
    pub(crate) fn run(&mut self) {
        for _ in 0..100_000 {
            let mut progress = false;
            self.drain_server();
            self.drain_client();
            if !self.s2c.is_empty() {
                let (w, h) = self.client_fb_size;
                let bpp = self.client_fb_format.bytes_per_pixel();
                let fmt = self.client_fb_format;
                let mut fb =
                    FramebufferMut::new(&mut self.client_fb, w, h, usize::from(w) * bpp, fmt)
                        .unwrap();
                match self.client.handle_input_fb(&self.s2c, &mut fb) {
                    Ok(p) => {
                        if let Some(pl) = p.lent {
                            self.client_events.push(format!("payload {pl:?}"));
                        }
                        if p.consumed > 0 || p.lent.is_some() {
                            progress = true;
                        }
                        self.s2c.drain(..p.consumed);
                    }
                    Err(e) => {
                        self.client_events.push(format!("error {e:?}"));
                        self.drain_client();
                        return;
                    }
                }
            }
            self.drain_client();
            if !self.c2s.is_empty() && !self.tls_server {
                match self.server.handle_input(&self.c2s) {
                    Ok(p) => {
                        if let Some(pl) = p.lent {
                            self.server_events.push(format!("payload {pl:?}"));
                            if let server::Payload::PlainCredentials { username, password } = pl {
                                if (username, password) == (&b"user"[..], &b"pass"[..]) {
                                    self.server.accept_auth().unwrap();
                                } else {
                                    self.server
                                        .reject_auth("Invalid username or password")
                                        .unwrap();
                                }
                            }
                        }
                        if p.consumed > 0 || p.lent.is_some() {
                            progress = true;
                        }
                        self.c2s.drain(..p.consumed);
                    }
                    Err(e) => {
                        self.server_events.push(format!("error {e:?}"));
                        self.drain_server();
                        self.drain_client();
                        let _ = self.client.handle_input(&self.s2c);
                        return;
                    }
                }
            }
            self.drain_server();
            if self.server.wants_update() && !self.damage.is_empty() {
                let damage = self.damage.clone();
                let mut src = UpdateSource::new(self.server_fb.fb(), &damage);
                src.jpeg = self.jpeg.as_deref();
                let mut out = vec![0u8; self.out_chunk];
                loop {
                    let st = self.server.encode_update(&src, &mut out).unwrap();
                    self.s2c.extend_from_slice(&out[..st.written]);
                    self.rec_s2c.extend_from_slice(&out[..st.written]);
                    if st.done {
                        break;
                    }
                }
                self.damage.clear();
                progress = true;
            }
            if !progress && self.s2c.is_empty() && self.c2s.is_empty() {
                self.drain_server();
                self.drain_client();
                if self.s2c.is_empty() && self.c2s.is_empty() {
                    return;
                }
            }
        }
        panic!("harness did not settle");
    }

    /// Expected client framebuffer contents: server pixels through native → wire → client
    /// framebuffer format.
    pub(crate) fn expected_client_fb(&self, wire: &PixelFormat) -> Vec<u8> {
        let sf = &self.server_fb;
        let wire_eff = crate::pixel::effective_format(wire);
        let t1 = crate::Translator::new(&sf.format, &wire_eff).unwrap();
        let t2 = crate::Translator::new(wire, &self.client_fb_format).unwrap();
        let (w, h) = (sf.width, sf.height);
        let cb = self.client_fb_format.bytes_per_pixel();
        let mut out = vec![0u8; usize::from(w) * usize::from(h) * cb];
        let mut mid = [0u8; 4];
        for y in 0..usize::from(h) {
            for x in 0..usize::from(w) {
                let s = &sf.data[y * sf.stride + x * sf.format.bytes_per_pixel()..];
                let wb = wire.bytes_per_pixel();
                t1.row(&s[..sf.format.bytes_per_pixel()], &mut mid[..wb]);
                t2.row(&mid[..wb], &mut out[(y * usize::from(w) + x) * cb..][..cb]);
            }
        }
        out
    }
}

/// The VNC response our harness client sends.
pub(crate) fn response() -> [u8; 16] {
    vnc_response(PASSWORD, &CHALLENGE)
}
