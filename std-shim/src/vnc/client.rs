//! The VNC client session: `rfb_core::client::Client` behind the pump. It negotiates security
//! from a TigerVNC-style preference list (X.509 VeNCrypt through the pump's TLS layer, which
//! validates the server certificate before the core is told TLS is up, so no credential is sent
//! earlier), asks for one full update in 32-bit true colour, decodes it into a framebuffer and
//! stops: `kvmio vnc capture`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use rfb_core::FramebufferMut;
use rfb_core::client::{Client, ClientConfig, Credentials, Event, Payload};
use rfb_core::wire::{Encoding, PixelFormat, Rect, SecurityType, VencryptSubtype};

use crate::io::Stream;
use crate::io::blocking::run_blocking;
use crate::pump::{Control, OutBuf, PeerInfo, Processed, Pump, Session, TlsStarter};
use crate::vnc::desktop::{Image, NATIVE};
use crate::vnc::security::{SecName, VncAddr, client_accept, format_security_list};

/// How to capture.
#[derive(Debug, Clone)]
pub struct CaptureOptions {
    /// Acceptable security types, most preferred first.
    pub security: Vec<SecName>,
    /// VNC password (VncAuth, X509Vnc) or Plain password.
    pub password: Option<Vec<u8>>,
    /// Plain username.
    pub username: Option<String>,
    /// TLS credentials directory (CA, optional client certificate) for the X509 types.
    pub tls_creds: Option<PathBuf>,
    /// Pixel encodings to ask for, most preferred first.
    pub encodings: Vec<Encoding>,
    /// JPEG quality level (0-9) to ask for: Tight may then send photo-like areas as JPEG
    /// (lossy). `None`: lossless.
    pub quality: Option<u8>,
    /// Give up after this long.
    pub timeout: Duration,
}

impl CaptureOptions {
    /// Defaults: X509Vnc, X509Plain, X509None (with TLS credentials), then VncAuth and None;
    /// ZRLE, Hextile, RRE, Raw; 60 s.
    pub fn new(tls_creds: Option<PathBuf>) -> Self {
        let mut security = Vec::new();
        if tls_creds.is_some() {
            security.extend([SecName::X509Vnc, SecName::X509Plain, SecName::X509None]);
        }
        security.extend([SecName::VncAuth, SecName::None]);
        Self {
            security,
            password: None,
            username: None,
            tls_creds,
            encodings: vec![
                Encoding::Zrle,
                Encoding::Hextile,
                Encoding::Rre,
                Encoding::Raw,
            ],
            quality: None,
            timeout: Duration::from_secs(60),
        }
    }
}

/// Parses a list of pixel encodings, most preferred first: `tight`, `zrle`, `hextile`, `rre`,
/// `raw` (comma-separated, any case).
pub fn parse_encodings(s: &str) -> Result<Vec<Encoding>> {
    let mut v = Vec::new();
    for e in s.split(',').map(str::trim).filter(|e| !e.is_empty()) {
        v.push(match e.to_ascii_lowercase().as_str() {
            "tight" => Encoding::Tight,
            "zrle" => Encoding::Zrle,
            "hextile" => Encoding::Hextile,
            "rre" => Encoding::Rre,
            "raw" => Encoding::Raw,
            _ => bail!("unknown encoding {e:?} (tight, zrle, hextile, rre, raw)"),
        });
    }
    if v.is_empty() {
        bail!("no encodings");
    }
    Ok(v)
}

/// The captured screen and how it was obtained.
#[derive(Debug, Clone)]
pub struct Captured {
    /// The framebuffer.
    pub image: Image,
    /// The desktop name.
    pub name: String,
    /// RFB version, security type and sub-type used.
    pub security: String,
    /// The server's native pixel format.
    pub server_format: PixelFormat,
    /// FramebufferUpdates received.
    pub updates: u32,
    /// TLS details, if TLS was used.
    pub tls: Option<String>,
    /// Rectangles decoded, per encoding, in the order the encodings first came.
    pub rects: Vec<(Encoding, u32)>,
}

/// One capturing client connection.
pub struct VncClientSession {
    client: Client,
    opts: CaptureOptions,
    tls_configured: bool,
    epoch: Instant,
    deadline: Instant,
    timed_out: bool,
    image: Image,
    covered: Vec<bool>,
    requests: u32,
    updates: u32,
    name: String,
    server_format: PixelFormat,
    done: bool,
    tls: Option<String>,
    rects: Vec<(Encoding, u32)>,
}

/// Pseudo-encodings the capture asks for besides the pixel encodings: the cursor shape is sent
/// apart (so servers do not paint it into the pixels), size changes and LastRect are followed.
const PSEUDO: [Encoding; 3] = [Encoding::Cursor, Encoding::DesktopSize, Encoding::LastRect];

impl VncClientSession {
    /// A session capturing per `opts`; `tls_configured` tells whether the pump has a TLS
    /// starter (without one, X.509 sub-types are not accepted).
    pub fn new(opts: CaptureOptions, tls_configured: bool) -> Result<Self> {
        if opts.security.iter().any(|n| n.is_x509()) && !tls_configured {
            bail!(
                "security types {} need TLS credentials (--tls-creds DIR with ca-cert.pem)",
                format_security_list(
                    &opts
                        .security
                        .iter()
                        .copied()
                        .filter(|n| n.is_x509())
                        .collect::<Vec<_>>()
                )
            );
        }
        let (types, subtypes) = client_accept(&opts.security);
        let mut config = ClientConfig::with_security(&types, &subtypes);
        config.handshake_timeout = Some(rfb_core::Duration::from_micros(
            opts.timeout.as_micros() as u64
        ));
        let now = Instant::now();
        let mut client = Client::new(config, rfb_core::Instant::ZERO);
        // Tight JPEG through libjpeg-turbo where installed (as the server decodes its JPEG
        // frames), else rfb-core's zune-jpeg.
        if let Some(d) = crate::vnc::jpeg::TurboJpegDecoder::new() {
            client.set_jpeg_decoder(Some(Box::new(d)));
        }
        Ok(Self {
            client,
            deadline: now + opts.timeout,
            opts,
            tls_configured,
            epoch: now,
            timed_out: false,
            image: Image::new(0, 0),
            covered: Vec::new(),
            requests: 0,
            updates: 0,
            name: String::new(),
            server_format: NATIVE,
            done: false,
            tls: None,
            rects: Vec::new(),
        })
    }

    /// The result once the session ended successfully.
    pub fn into_captured(self) -> Result<Captured> {
        if !self.done {
            bail!("the connection ended before a complete screen arrived");
        }
        let (t, s) = self.client.security();
        let security = format!(
            "RFB 3.{}, {}{}",
            self.client.version().minor(),
            SecName::describe_type(u8::from(t)),
            s.map(|s| format!(" {}", SecName::describe_subtype(u32::from(s))))
                .unwrap_or_default()
        );
        Ok(Captured {
            image: self.image,
            name: self.name,
            security,
            server_format: self.server_format,
            updates: self.updates,
            tls: self.tls,
            rects: self.rects,
        })
    }

    fn resize(&mut self, w: u16, h: u16) {
        self.image = Image::new(w, h);
        self.covered = vec![false; usize::from(w) * usize::from(h)];
    }

    fn request_full(&mut self) -> Result<()> {
        self.requests += 1;
        let (w, h) = (self.image.width, self.image.height);
        self.client
            .request_update(false, Rect::new(0, 0, w, h))
            .map_err(|e| anyhow!("{e}"))
    }

    fn transmit(&mut self, out: &mut OutBuf) -> Result<()> {
        loop {
            match self.client.poll_transmit(out.tail(1024)) {
                Ok(Some(t)) => {
                    out.commit(t.len);
                    if t.then.is_some() {
                        bail!("the client asked for application data it never sends");
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => bail!("rfb: transmit buffer: {e}"),
            }
        }
    }

    /// Drains events; `Err` carries what went wrong in the server's words where it gave some.
    fn drain(&mut self, out: &mut OutBuf) -> Result<Option<Control>> {
        loop {
            self.transmit(out)?;
            let action = match self.client.poll_event() {
                None => break,
                Some(e) => Self::classify(e),
            };
            match action {
                Action::None => {}
                Action::Fail(msg) => bail!("{msg}"),
                Action::StartTls => {
                    if !self.tls_configured {
                        bail!("the server chose X.509 TLS but no TLS credentials were given");
                    }
                    self.transmit(out)?;
                    return Ok(Some(Control::StartTls));
                }
                Action::Need(Credentials::Password) => {
                    let Some(pw) = self.opts.password.clone() else {
                        bail!("the server asks for a VNC password: pass --password-file FILE");
                    };
                    self.client.send_password(&pw).map_err(|e| anyhow!("{e}"))?;
                }
                Action::Need(Credentials::Plain) => {
                    let (Some(user), Some(pw)) =
                        (self.opts.username.clone(), self.opts.password.clone())
                    else {
                        bail!(
                            "the server asks for a username and password: pass --username U \
                             and --password-file FILE"
                        );
                    };
                    self.client
                        .send_plain_credentials(user.as_bytes(), &pw)
                        .map_err(|e| anyhow!("{e}"))?;
                }
                Action::Authenticated => log::debug!("authenticated"),
                Action::Init(w, h, format, name) => {
                    log::info!("desktop {name:?}: {w}x{h}, {format:?}");
                    check_size(w, h)?;
                    self.name = name;
                    self.server_format = format;
                    self.resize(w, h);
                    self.client
                        .set_pixel_format(NATIVE)
                        .map_err(|e| anyhow!("{e}"))?;
                    let mut encs = self.opts.encodings.clone();
                    encs.extend(PSEUDO);
                    if let Some(q) = self.opts.quality {
                        encs.push(Encoding::jpeg_quality(q));
                    }
                    self.client
                        .set_encodings(&encs)
                        .map_err(|e| anyhow!("{e}"))?;
                    self.request_full()?;
                }
                Action::Resize(w, h) => {
                    log::info!("desktop resized to {w}x{h}");
                    check_size(w, h)?;
                    self.resize(w, h);
                }
                Action::Rect(r, enc) => {
                    log::debug!("rectangle {r:?} {enc:?}");
                    match self.rects.iter_mut().find(|(e, _)| *e == enc) {
                        Some((_, n)) => *n += 1,
                        None => self.rects.push((enc, 1)),
                    }
                    let w = usize::from(self.image.width);
                    let r = r.clip_to(self.image.width, self.image.height);
                    for y in r.y..r.y + r.height {
                        let row = usize::from(y) * w;
                        self.covered[row + usize::from(r.x)..row + usize::from(r.x + r.width)]
                            .fill(true);
                    }
                }
                Action::UpdateEnd => {
                    self.updates += 1;
                    if self.covered.iter().all(|c| *c) {
                        self.done = true;
                        return Ok(Some(Control::Close));
                    }
                    if self.requests >= 20 {
                        bail!(
                            "the server sent {} updates without the whole screen",
                            self.updates
                        );
                    }
                    self.request_full()?;
                }
                Action::TimedOut => bail!("the server did not finish the handshake in time"),
            }
        }
        Ok(None)
    }

    fn classify(e: Event<'_>) -> Action {
        match e {
            Event::StartTls => Action::StartTls,
            Event::NeedCredentials(c) => Action::Need(c),
            Event::NoCommonSecurity { types, subtypes } => {
                let t: Vec<String> = types.iter().map(|t| SecName::describe_type(*t)).collect();
                let mut msg = format!(
                    "no common security type: the server offers {}",
                    if t.is_empty() {
                        "nothing".into()
                    } else {
                        t.join(", ")
                    }
                );
                if !subtypes.is_empty() {
                    let s: Vec<String> = subtypes
                        .iter()
                        .map(|s| SecName::describe_subtype(*s))
                        .collect();
                    msg.push_str(&format!(" (VeNCrypt: {})", s.join(", ")));
                }
                if types == [u8::from(SecurityType::Tls)]
                    || (!subtypes.is_empty()
                        && subtypes
                            .iter()
                            .all(|s| VencryptSubtype::from(*s).is_anonymous_tls()))
                {
                    msg.push_str(
                        "; anonymous TLS is not supported by the TLS library (rustls): \
                         configure the server with X.509 credentials",
                    );
                }
                Action::Fail(msg)
            }
            Event::SecurityFailed { reason } => Action::Fail(if reason.is_empty() {
                "the server refused the connection or the authentication".into()
            } else {
                format!(
                    "the server refused: {}",
                    String::from_utf8_lossy(reason).trim()
                )
            }),
            Event::Authenticated => Action::Authenticated,
            Event::ServerInit {
                width,
                height,
                format,
                name,
            } => Action::Init(
                width,
                height,
                format,
                String::from_utf8_lossy(name).into_owned(),
            ),
            Event::DesktopSize { width, height } => Action::Resize(width, height),
            Event::Rect { rect, encoding } => Action::Rect(rect, encoding),
            Event::UpdateEnd => Action::UpdateEnd,
            Event::TimedOut => Action::TimedOut,
            _ => Action::None,
        }
    }
}

/// Most pixels a captured framebuffer may have (the server chooses the size: 65535 × 65535
/// would be 16 GiB).
pub const MAX_PIXELS: usize = 8192 * 8192;

fn check_size(w: u16, h: u16) -> Result<()> {
    if usize::from(w) * usize::from(h) > MAX_PIXELS {
        bail!("the server's framebuffer of {w}x{h} is larger than {MAX_PIXELS} pixels");
    }
    Ok(())
}

enum Action {
    None,
    Fail(String),
    StartTls,
    Need(Credentials),
    Authenticated,
    Init(u16, u16, PixelFormat, String),
    Resize(u16, u16),
    Rect(Rect, Encoding),
    UpdateEnd,
    TimedOut,
}

impl Session for VncClientSession {
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed> {
        if self.timed_out {
            bail!(
                "no complete screen within {} s",
                self.opts.timeout.as_secs()
            );
        }
        let mut consumed = 0;
        loop {
            if let Some(control) = self.drain(out)? {
                return Ok(Processed { consumed, control });
            }
            let (w, h) = (self.image.width, self.image.height);
            let r = if w > 0 && h > 0 {
                let mut fb =
                    FramebufferMut::new(&mut self.image.data, w, h, usize::from(w) * 4, NATIVE)
                        .map_err(|e| anyhow!("{e}"))?;
                self.client.handle_input_fb(&input[consumed..], &mut fb)
            } else {
                self.client.handle_input(&input[consumed..])
            };
            let p = match r {
                Ok(p) => p,
                Err(e) => {
                    // The events say why (the server's reason, what it offered).
                    self.drain(out)?;
                    return Err(anyhow!("rfb: {e}"));
                }
            };
            consumed += p.consumed;
            match p.lent {
                Some(Payload::CursorData { .. }) | Some(Payload::CutText { .. }) => {}
                Some(_) => {}
                None if p.consumed == 0 => break,
                None => {}
            }
        }
        let control = self.drain(out)?.unwrap_or(Control::Continue);
        Ok(Processed { consumed, control })
    }

    fn tls_established(&mut self, peer: &PeerInfo) -> Result<()> {
        log::info!("TLS {} (server certificate verified)", peer.cipher);
        self.tls = Some(peer.cipher.clone());
        self.client.tls_established().map_err(|e| anyhow!("{e}"))
    }

    fn eof(&mut self) -> Result<()> {
        let r = self.client.handle_eof();
        let mut sink = OutBuf::default();
        self.drain(&mut sink)?;
        r.map_err(|e| anyhow!("the server closed the connection: {e}"))
    }

    fn deadline(&self) -> Option<Instant> {
        Some(self.deadline)
    }

    fn timeout(&mut self, now: Instant) {
        let t = now.saturating_duration_since(self.epoch);
        self.client
            .handle_timeout(rfb_core::Instant::from_micros(t.as_micros() as u64));
        if now >= self.deadline {
            self.timed_out = true;
        }
    }
}

/// Connects to `addr` and captures one complete screen.
pub fn capture(addr: &VncAddr, mut opts: CaptureOptions) -> Result<Captured> {
    let starter: Option<TlsStarter> = match &opts.tls_creds {
        Some(dir) => {
            let config = crate::tls::client_config(dir, false)?;
            Some(crate::tls::client_starter(config, addr.host.clone()))
        }
        None => None,
    };
    if let Some((true, _)) = &addr.websocket
        && starter.is_none()
    {
        bail!("wss:// needs --tls-creds DIR (its ca-cert.pem checks the server)");
    }
    let s = std::net::TcpStream::connect((addr.host.as_str(), addr.port))
        .with_context(|| format!("connect to {addr}"))?;
    s.set_nodelay(true)?;
    let mut stream = Stream::Tcp(s);
    let captured = match &addr.websocket {
        None => {
            let session = VncClientSession::new(opts, starter.is_some())?;
            let mut pump = Pump::new(session, 1 << 20, starter);
            run_blocking(&mut pump, &mut stream).with_context(|| format!("{addr}"))?;
            pump.into_session().into_captured()
        }
        Some((wss, path)) => {
            // The TLS is the WebSocket's: inside it the X509 types are what they carry.
            opts.security = crate::web::websocket_security(&opts.security, *wss)?;
            let inner = VncClientSession::new(opts, false)?;
            let host = if addr.host.contains(':') {
                format!("[{}]:{}", addr.host, addr.port)
            } else {
                format!("{}:{}", addr.host, addr.port)
            };
            let session = crate::web::client::WsClientSession::new(inner, &host, path, *wss)?;
            let mut pump = Pump::new(session, 1 << 20, starter.filter(|_| *wss));
            run_blocking(&mut pump, &mut stream).with_context(|| format!("{addr}"))?;
            let (inner, tls) = pump.into_session().into_parts();
            inner.into_captured().map(|mut c| {
                c.tls = c.tls.or(tls);
                c
            })
        }
    };
    captured.with_context(|| format!("{addr}"))
}
