//! The VNC server session: glues `rfb_core::server::Server` to the pump, with VNC passwords,
//! Plain users, failed-login throttling shared by all connections, fresh OS-random challenges,
//! and a framebuffer the session owns (a still image or the animated test pattern), sent as
//! the client's FramebufferUpdateRequests and a frame timer allow.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Result, anyhow, bail};
use rfb_core::server::{
    AuthMethod, Damage, Event, Payload, Server, ServerConfig, State, UpdateSource,
};
use rfb_core::wire::{Encoding, Rect};
use rfb_core::{AuthThrottle, Framebuffer};

use crate::input::{Input, Viewer};
use crate::pump::{Control, OutBuf, PeerInfo, Processed, Session};
use crate::video::SharedKey;
use crate::vnc::desktop::{Desktop, Image, NATIVE, Pattern, clip};
use crate::vnc::security::{
    PlainUsers, SecName, ZlibRsCompressor, format_security_list, server_offer,
};
use crate::vnc::sharing::{Membership, SharePolicy, Viewers};

/// How often a viewer looks whether an exclusive viewer pushed it out.
const SHARE_POLL: Duration = Duration::from_millis(200);

/// How often a session that shows the target's LEDs looks for a change.
const LED_POLL: Duration = Duration::from_millis(50);

/// Peers remembered by the failed-login throttle.
pub const THROTTLE_PEERS: usize = 256;

/// How a VNC service runs.
pub struct VncServiceOptions {
    /// Where to listen.
    pub endpoints: Vec<crate::io::Endpoint>,
    /// The TLS configuration of the X509 security types (needed when one is offered).
    pub tls: Option<tls_glue::TlsServerConfig>,
    /// Most connections at once (more are told "too many connections").
    pub max_connections: usize,
    /// Listen backlog (`None`: the most the system allows).
    pub backlog: Option<u32>,
}

/// The VNC service: sessions over one shared configuration (password, users, desktop, the
/// failed-login blacklist). A peer blocked for failed logins is told so and closed.
pub fn service(config: VncServerConfig, o: VncServiceOptions) -> crate::services::Service {
    service_shared(VncShared::new(config), o)
}

/// The VNC service over `shared`, which other listeners (the WebSocket one) may share: the
/// viewers, the input and the failed-login throttle are the same for all.
pub fn service_shared(shared: Arc<VncShared>, o: VncServiceOptions) -> crate::services::Service {
    let what = describe(shared.config());
    crate::services::Service {
        label: "vnc",
        what,
        endpoints: o.endpoints,
        max_connections: o.max_connections.max(1),
        backlog: o.backlog,
        tls: o.tls,
        factory: {
            let shared = shared.clone();
            Arc::new(move |peer| {
                if let Some(d) = shared.blocked(peer_key(&peer)) {
                    // Told why, as over the cap (TigerVNC says the same).
                    log::warn!(
                        "{peer}: refused, too many failed logins from this address \
                         (blocked for {} s more)",
                        d.as_secs() + 1
                    );
                    let session =
                        VncRefusal::new(shared.clone(), peer, "Too many security failures")?;
                    let cap = session.input_buffer_len();
                    return Ok((Box::new(session) as crate::services::BoxedSession, cap));
                }
                let session = VncServerSession::new(shared.clone(), peer)?;
                let cap = session.input_buffer_len();
                Ok((Box::new(session) as crate::services::BoxedSession, cap))
            })
        },
        refusal: Some(Arc::new(move |peer| {
            let session = VncRefusal::new(shared.clone(), peer, "too many connections")?;
            let cap = session.input_buffer_len();
            Ok((Box::new(session) as crate::services::BoxedSession, cap))
        })),
    }
}

/// Settings shared by every connection of one server.
pub struct VncServerConfig {
    /// Security types offered (TigerVNC names, in order of preference).
    pub security: Vec<SecName>,
    /// The VNC password (at most 8 bytes count).
    pub password: Option<Vec<u8>>,
    /// Plain users.
    pub plain_users: Option<PlainUsers>,
    /// What is shown.
    pub desktop: Desktop,
    /// Desktop name sent in ServerInit.
    pub name: String,
    /// Frames per second of the test pattern (updates are never sent faster).
    pub fps: u32,
    /// Time a client has to finish the handshake.
    pub handshake_timeout: Duration,
    /// Failures in a row after which a peer address is blocked (10 s, doubling up to 10 min).
    pub throttle_threshold: u16,
    /// Where keys and pointer events go (the target's HID gadget, or the log), shared by
    /// every connection.
    pub input: Arc<Input>,
    /// The view-only VNC password: who logs in with it sees the screen, and its keys and
    /// clicks are dropped.
    pub view_password: Option<Vec<u8>>,
    /// View-only Plain users.
    pub plain_view_users: Option<PlainUsers>,
    /// What the ClientInit shared flag does.
    pub share: SharePolicy,
    /// The JPEG compressor of Tight rectangles.
    pub jpeg: rfb_core::jpeg::JpegEncoderFactory,
    /// Its name (for the start-up line).
    pub jpeg_name: &'static str,
}

impl VncServerConfig {
    /// Checks that every offered type has what it needs.
    pub fn validate(&self, tls: bool) -> Result<()> {
        for n in &self.security {
            if n.is_x509() && !tls {
                bail!("security type {n} needs TLS credentials (--tls-creds DIR)");
            }
            if n.needs_password() && self.password.is_none() {
                bail!("security type {n} needs a VNC password (--password-file FILE)");
            }
            if n.needs_user() && self.plain_users.is_none() {
                bail!("security type {n} needs users (--plain-users FILE)");
            }
        }
        let (w, h) = self.desktop.size();
        if w == 0 || h == 0 {
            bail!("the framebuffer must not be empty");
        }
        if self.name.len() > 200 {
            bail!("the desktop name is longer than 200 bytes");
        }
        self.core_config().validate().map_err(|e| anyhow!("{e}"))?;
        Ok(())
    }

    fn core_config(&self) -> ServerConfig {
        self.core_config_for(&self.security)
    }

    fn core_config_for(&self, security: &[SecName]) -> ServerConfig {
        let (types, subtypes) = server_offer(security);
        let mut c = ServerConfig::with_security(&types, &subtypes);
        c.handshake_timeout = Some(self.handshake_timeout);
        c
    }
}

/// What all connections of a server share: the configuration and the throttle table.
pub struct VncShared {
    config: VncServerConfig,
    viewers: Arc<Viewers>,
    next_viewer: std::sync::atomic::AtomicU64,
    throttle: Mutex<AuthThrottle<THROTTLE_PEERS>>,
    epoch: Instant,
}

impl VncShared {
    /// Shared state for `config` (validate it first).
    pub fn new(config: VncServerConfig) -> Arc<Self> {
        let throttle = AuthThrottle::new(config.throttle_threshold);
        Arc::new(Self {
            config,
            viewers: Arc::default(),
            next_viewer: std::sync::atomic::AtomicU64::new(1),
            throttle: Mutex::new(throttle),
            epoch: Instant::now(),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &VncServerConfig {
        &self.config
    }

    /// Viewers past ClientInit.
    pub fn viewers(&self) -> usize {
        self.viewers.len()
    }

    fn core_now(&self, t: Instant) -> rfb_core::Instant {
        rfb_core::Instant::from_micros(t.saturating_duration_since(self.epoch).as_micros() as u64)
    }

    fn std_time(&self, t: rfb_core::Instant) -> Instant {
        self.epoch + Duration::from_micros(t.as_micros())
    }

    /// How long `peer` is still blocked for failed logins.
    pub fn blocked(&self, peer: u64) -> Option<Duration> {
        let now = self.core_now(Instant::now());
        let t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        t.check(peer, now)
            .err()
            .map(|d| Duration::from_micros(d.as_micros() as u64))
    }

    fn record(&self, peer: u64, ok: bool) {
        let now = self.core_now(Instant::now());
        let mut t = self.throttle.lock().unwrap_or_else(|e| e.into_inner());
        if ok {
            t.record_success(peer);
        } else {
            t.record_failure(peer, now);
        }
    }
}

/// The throttle key of a peer (`ip:port` as the listeners report it): its IP address.
pub fn peer_key(peer: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    match peer.parse::<SocketAddr>() {
        Ok(a) => a.ip().hash(&mut h),
        Err(_) => peer.hash(&mut h),
    }
    h.finish()
}

/// 16 fresh bytes from the operating system's random source.
pub fn random_challenge() -> Result<[u8; 16]> {
    let mut c = [0u8; 16];
    getrandom::fill(&mut c).map_err(|e| anyhow!("OS random source: {e}"))?;
    Ok(c)
}

enum Fb {
    Still(Arc<Image>),
    Pattern(Box<Pattern>),
    /// The frame of a capture this viewer has (frames are shared by every viewer).
    Video {
        hub: Arc<crate::video::Hub>,
        image: Arc<Image>,
        seq: u64,
    },
}

impl Fb {
    fn image(&self) -> &Image {
        match self {
            Fb::Still(i) => i,
            Fb::Pattern(p) => &p.image,
            Fb::Video { image, .. } => image,
        }
    }
}

/// One VNC server connection.
pub struct VncServerSession {
    server: Server,
    shared: Arc<VncShared>,
    peer: String,
    key: u64,
    /// Drawn at ClientInit, after authentication: a connection that never logs in costs no
    /// framebuffer.
    fb: Option<Fb>,
    /// Union of the areas asked for by non-incremental requests since the last update.
    full: Option<Rect>,
    /// Union of the areas asked for by incremental requests.
    wanted: Option<Rect>,
    /// The ExtendedDesktopSize answer to a SetDesktopSize must go out even without damage.
    forced: bool,
    next_frame: Instant,
    frame_period: Duration,
    /// The viewer's input (from authentication on; never for view-only logins).
    viewer: Option<Viewer>,
    view_only: bool,
    /// The viewer's place among the server's viewers (from ClientInit on).
    membership: Option<Membership>,
    /// When to look whether an exclusive viewer pushed this one out.
    next_share_poll: Instant,
    /// The LED change last passed to the core, and when to look for the next one.
    leds_seen: u64,
    next_led_poll: Instant,
    authenticated: bool,
    updates: u64,
    /// Updates sent as bytes another viewer's session encoded (see `video::Hub::keep_update`).
    copies: u64,
}

fn union(a: Option<Rect>, b: Rect) -> Rect {
    let Some(a) = a else { return b };
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = (u32::from(a.x) + u32::from(a.width)).max(u32::from(b.x) + u32::from(b.width));
    let y1 = (u32::from(a.y) + u32::from(a.height)).max(u32::from(b.y) + u32::from(b.height));
    Rect::new(
        x0,
        y0,
        (x1 - u32::from(x0)) as u16,
        (y1 - u32::from(y0)) as u16,
    )
}

impl VncServerSession {
    /// A session for a connection from `peer` (`ip:port`). Fails (the connection is then
    /// closed at once) while the peer is blocked for failed logins.
    pub fn new(shared: Arc<VncShared>, peer: String) -> Result<Self> {
        let security = shared.config.security.clone();
        Self::with_security(shared, peer, &security)
    }

    /// A session that offers `security` instead of the configured types (the WebSocket
    /// listener's mapping of them; see `web::websocket_security`).
    pub fn with_security(
        shared: Arc<VncShared>,
        peer: String,
        security: &[SecName],
    ) -> Result<Self> {
        let key = peer_key(&peer);
        if let Some(d) = shared.blocked(key) {
            bail!(
                "refused: too many failed logins from this address, blocked for {} s more",
                d.as_secs() + 1
            );
        }
        let now = Instant::now();
        let mut server = Server::new(
            shared.config.core_config_for(security),
            shared.core_now(now),
            random_challenge()?,
        );
        server
            .set_zrle_compressor(ZlibRsCompressor::boxed)
            .map_err(|e| anyhow!("{e}"))?;
        server.set_jpeg_encoder(Some(shared.config.jpeg));
        let fps = shared.config.fps.clamp(1, 120);
        Ok(Self {
            server,
            shared,
            peer,
            key,
            fb: None,
            full: None,
            wanted: None,
            forced: false,
            next_frame: now,
            frame_period: Duration::from_secs(1) / fps,
            viewer: None,
            view_only: false,
            membership: None,
            next_share_poll: now,
            leds_seen: 0,
            next_led_poll: now,
            authenticated: false,
            updates: 0,
            copies: 0,
        })
    }

    /// The input buffer the session needs.
    pub fn input_buffer_len(&self) -> usize {
        self.server.min_input_buffer()
    }

    /// The framebuffer, drawn on first use.
    fn framebuffer(&mut self) -> &mut Fb {
        let desktop = &self.shared.config.desktop;
        self.fb.get_or_insert_with(|| match desktop {
            Desktop::Still(i) => Fb::Still(i.clone()),
            Desktop::Pattern { width, height } => {
                Fb::Pattern(Box::new(Pattern::new(*width, *height)))
            }
            Desktop::Video(hub) => {
                let (image, seq) = hub.current();
                Fb::Video {
                    hub: hub.clone(),
                    image,
                    seq,
                }
            }
        })
    }

    /// The framebuffer size (before ClientInit: the desktop's).
    fn fb_size(&self) -> (u16, u16) {
        match &self.fb {
            Some(f) => {
                let i = f.image();
                (i.width, i.height)
            }
            None => self.shared.config.desktop.size(),
        }
    }

    /// Whether the viewer wants the target's keyboard LEDs and the sink has them.
    fn watches_leds(&self) -> bool {
        self.authenticated
            && self.server.client_supports(Encoding::QemuLedState)
            && self.viewer.as_ref().is_some_and(|v| v.leds().is_some())
    }

    /// Hands a change of the target's LEDs to the core (which sends it with the next update).
    fn poll_leds(&mut self, now: Instant) -> Result<()> {
        if !self.watches_leds() {
            return Ok(());
        }
        self.next_led_poll = now + LED_POLL;
        if let Some((bits, seq)) = self.viewer.as_ref().and_then(Viewer::leds)
            && seq != self.leds_seen
        {
            self.leds_seen = seq;
            self.server
                .set_led_state(bits)
                .map_err(|e| anyhow!("{e}"))?;
        }
        Ok(())
    }

    /// FramebufferUpdates sent so far.
    pub fn updates_sent(&self) -> u64 {
        self.updates
    }

    fn transmit(&mut self, out: &mut OutBuf) -> Result<()> {
        loop {
            let buf = out.tail(1024);
            match self.server.poll_transmit(buf) {
                Ok(Some(t)) => {
                    out.commit(t.len);
                    if t.then.is_some() {
                        bail!("the server asked for application data it never gets");
                    }
                }
                Ok(None) => return Ok(()),
                Err(e) => bail!("rfb: transmit buffer: {e}"),
            }
        }
    }

    fn auth_decision(&mut self, ok: bool, what: &str) -> Result<()> {
        if ok {
            self.shared.record(self.key, true);
            self.server.accept_auth().map_err(|e| anyhow!("{e}"))
        } else {
            self.shared.record(self.key, false);
            log::warn!("{}: {what} authentication failed", self.peer);
            self.server
                .reject_auth("Authentication failed")
                .map_err(|e| anyhow!("{e}"))
        }
    }

    /// Whether authentication may even be tried (the peer may have been blocked since it
    /// connected, by failures on other connections).
    fn may_try(&self) -> bool {
        match self.shared.blocked(self.key) {
            Some(d) => {
                log::warn!(
                    "{}: blocked for {} s after failed logins; refusing without checking",
                    self.peer,
                    d.as_secs() + 1
                );
                false
            }
            None => true,
        }
    }

    fn drain(&mut self, out: &mut OutBuf) -> Result<Option<Control>> {
        let mut control = None;
        loop {
            self.transmit(out)?;
            let Some(e) = self.server.poll_event() else {
                break;
            };
            match e {
                Event::StartTls => {
                    log::debug!("{}: VeNCrypt sub-type agreed, starting TLS", self.peer);
                    self.transmit(out)?;
                    return Ok(Some(Control::StartTls));
                }
                Event::VncAuth {
                    challenge,
                    response,
                } => {
                    let check = |pw: &Option<Vec<u8>>| {
                        pw.as_deref().is_some_and(|pw| {
                            rfb_core::verify_vnc_response(pw, &challenge, &response)
                        })
                    };
                    let may = self.may_try();
                    let full = may && check(&self.shared.config.password);
                    let view = may && !full && check(&self.shared.config.view_password);
                    self.view_only = view;
                    self.auth_decision(full || view, "VNC password")?;
                }
                Event::PlainAuth => {}
                Event::Authenticated(AuthMethod {
                    security_type,
                    subtype,
                }) => {
                    self.authenticated = true;
                    if !self.view_only {
                        self.viewer = Some(self.shared.config.input.viewer(&self.peer));
                    }
                    let how = match subtype {
                        Some(s) => format!("VeNCrypt {}", SecName::describe_subtype(u32::from(s))),
                        None => SecName::describe_type(u8::from(security_type)),
                    };
                    let view = if self.view_only { ", view only" } else { "" };
                    log::info!("{}: authenticated ({how}{view})", self.peer);
                }
                Event::AuthFailed { .. } => {}
                Event::ClientInit { shared } => {
                    let id = self
                        .shared
                        .next_viewer
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    match self
                        .shared
                        .viewers
                        .join(id, shared, self.shared.config.share)
                    {
                        Ok(m) => self.membership = Some(m),
                        Err(why) => {
                            // RFB has no message for this after ClientInit: the connection
                            // ends, as with QEMU and TigerVNC.
                            log::warn!("{}: refused: {why}", self.peer);
                            return Ok(Some(Control::Close));
                        }
                    }
                    if !shared && self.shared.config.share == SharePolicy::AllowExclusive {
                        log::info!(
                            "{}: exclusive access (other viewers disconnected)",
                            self.peer
                        );
                    }
                    let img = self.framebuffer().image();
                    let (w, h) = (img.width, img.height);
                    log::debug!("{}: ClientInit (shared {shared})", self.peer);
                    let name = self.shared.config.name.clone();
                    self.server
                        .server_init(w, h, NATIVE, name.as_bytes())
                        .map_err(|e| anyhow!("{e}"))?;
                }
                Event::PixelFormat(f) => log::debug!("{}: pixel format {f:?}", self.peer),
                Event::EncodingsChanged => log::info!(
                    "{}: encoding {:?}, compression level {}, {}",
                    self.peer,
                    self.server.client_encoding(),
                    self.server.client_compress_level(),
                    match self.server.client_jpeg_quality() {
                        Some(q) => format!("JPEG quality {q}"),
                        None => "no JPEG".into(),
                    }
                ),
                Event::UpdateRequested { incremental, rect } => {
                    if incremental {
                        self.wanted = Some(union(self.wanted, rect));
                    } else {
                        self.full = Some(union(self.full, rect));
                    }
                }
                Event::Key { down, keysym } => {
                    if let Some(v) = self.viewer.as_mut() {
                        v.key(down, keysym, None);
                    }
                }
                Event::QemuKey {
                    down,
                    keysym,
                    keycode,
                } => {
                    if let Some(v) = self.viewer.as_mut() {
                        v.key(down, keysym, Some(keycode));
                    }
                }
                Event::Pointer { buttons, x, y } => {
                    let (w, h) = self.fb_size();
                    if let Some(v) = self.viewer.as_mut() {
                        v.pointer(buttons, x, y, w, h);
                    }
                }
                Event::CutText(len) => {
                    log::info!("{}: clipboard text of {} bytes", self.peer, len.len())
                }
                Event::ContinuousUpdates { enabled, rect } => {
                    log::debug!("{}: continuous updates {enabled} for {rect:?}", self.peer);
                    if enabled {
                        self.wanted = Some(union(self.wanted, rect));
                    }
                }
                Event::SetDesktopSize { width, height, .. } => {
                    log::info!(
                        "{}: client asks for {width}x{height}: not allowed",
                        self.peer
                    );
                    if self.server.client_supports(Encoding::ExtendedDesktopSize) {
                        self.server
                            .reply_desktop_size(1)
                            .map_err(|e| anyhow!("{e}"))?;
                        self.forced = true;
                    }
                }
                Event::Screen(_) => {}
                Event::TimedOut => {
                    log::warn!("{}: handshake timed out", self.peer);
                    control = Some(Control::Close);
                }
                Event::Closed => control = control.or(Some(Control::Close)),
                _ => {}
            }
        }
        Ok(control)
    }

    /// Sends an update if one is wanted and due.
    fn update(&mut self, out: &mut OutBuf) -> Result<()> {
        if !self.server.wants_update() || !self.authenticated {
            return Ok(());
        }
        let now = Instant::now();
        self.poll_leds(now)?;
        let leds = self.server.led_update_due();
        self.framebuffer();
        let Some(fbuf) = self.fb.as_mut() else {
            return Ok(());
        };
        let (w, h) = {
            let i = fbuf.image();
            (i.width, i.height)
        };
        let whole = Rect::new(0, 0, w, h);
        let mut damage = Vec::new();
        if let Fb::Video { hub, image, seq } = fbuf
            && (self.full.is_some() || now >= self.next_frame)
            && let Some(c) = hub.changes_since(*seq)
        {
            *image = c.image;
            *seq = c.seq;
            let (nw, nh) = (image.width, image.height);
            if (nw, nh) != (w, h) {
                if !self.server.client_supports(Encoding::DesktopSize)
                    && !self.server.client_supports(Encoding::ExtendedDesktopSize)
                {
                    bail!(
                        "the capture is now {nw}x{nh} and this viewer cannot follow a resize \
                         (no DesktopSize): disconnecting it"
                    );
                }
                log::info!("{}: desktop resized to {nw}x{nh}", self.peer);
                damage.push(Damage::Changed(Rect::new(0, 0, nw, nh)));
            } else {
                let area = self.wanted.unwrap_or(whole);
                match c.damage {
                    None => damage.push(Damage::Changed(area)),
                    Some(d) => damage.extend(
                        d.into_iter()
                            .map(|r| clip(r, area))
                            .filter(|r| !r.is_empty())
                            .map(Damage::Changed),
                    ),
                }
            }
        }
        // A new capture size is the size from now on.
        let (w, h) = self
            .fb
            .as_ref()
            .map_or((w, h), |f| (f.image().width, f.image().height));
        let Some(fbuf) = self.fb.as_mut() else {
            return Ok(());
        };
        if let Some(full) = self.full {
            if let Fb::Pattern(p) = fbuf {
                p.advance();
            }
            damage.push(Damage::Changed(full.clip_to(w, h)));
        } else if let Fb::Video { .. } = fbuf {
            if damage.is_empty() && !leds && !self.forced {
                // Nothing new yet: look again at the next frame time.
                if now >= self.next_frame {
                    self.next_frame = now + self.frame_period;
                }
                return Ok(());
            }
        } else if let Fb::Pattern(p) = fbuf {
            if now < self.next_frame && !leds {
                return Ok(());
            }
            let area = self.wanted.unwrap_or(whole);
            for d in p.advance() {
                if let Damage::Changed(r) = d {
                    let r = clip(r, area);
                    if !r.is_empty() {
                        damage.push(Damage::Changed(r));
                    }
                }
            }
        }
        if damage.is_empty() && !self.forced && !leds {
            return Ok(());
        }
        let Some(fbuf) = self.fb.as_ref() else {
            return Ok(());
        };
        let img = fbuf.image();
        let fb = Framebuffer::new(&img.data, img.width, img.height, img.stride(), NATIVE)
            .map_err(|e| anyhow!("{e}"))?;
        let mut src = UpdateSource::new(fb, &damage);
        // A frame that came as a JPEG goes as it is to viewers that take Tight JPEG.
        src.jpeg = img.jpeg.as_deref();
        // A captured frame is the same for every viewer: an update that holds only its pixels
        // in a stateless encoding is encoded by the first viewer that needs it and copied by
        // the others that need the same areas in the same format.
        let shared = match fbuf {
            Fb::Video { hub, seq, .. } if out.files().is_empty() => self
                .server
                .shared_update_key(&src)
                .map(|update| (hub.clone(), SharedKey::new(*seq, &damage, update))),
            _ => None,
        };
        let kept = shared
            .as_ref()
            .and_then(|(hub, key)| Some((hub.shared_update(key)?, key.update)));
        if let Some((bytes, update)) = kept {
            self.server
                .update_sent(&src, update)
                .map_err(|e| anyhow!("rfb: shared update: {e}"))?;
            out.extend(&bytes);
            self.copies += 1;
        } else {
            let start = out.len();
            loop {
                let buf = out.tail(256 * 1024);
                let st = self
                    .server
                    .encode_update(&src, buf)
                    .map_err(|e| anyhow!("rfb: encode: {e}"))?;
                out.commit(st.written);
                if st.done {
                    break;
                }
            }
            if let Some((hub, key)) = shared {
                hub.keep_update(key, &out.as_slice()[start..]);
            }
        }
        self.updates += 1;
        self.full = None;
        self.wanted = None;
        self.forced = false;
        self.next_frame = now + self.frame_period;
        Ok(())
    }
}

impl Session for VncServerSession {
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed> {
        let mut consumed = 0;
        if self.membership.as_ref().is_some_and(Membership::kicked) {
            log::info!(
                "{}: disconnected: another viewer asked for exclusive access",
                self.peer
            );
            return Ok(Processed {
                consumed: 0,
                control: Control::Close,
            });
        }
        if self.membership.is_some() {
            self.next_share_poll = Instant::now() + SHARE_POLL;
        }
        loop {
            if let Some(control) = self.drain(out)? {
                return Ok(Processed { consumed, control });
            }
            if !matches!(
                self.server.state(),
                State::Handshake | State::AwaitingApplication | State::Running
            ) {
                // Closing: a failure is being held back (throttling delay) or sent; the rest
                // of the input no longer matters.
                break;
            }
            let r = self.server.handle_input(&input[consumed..]);
            let p = match r {
                Ok(p) => p,
                Err(e) => {
                    log::warn!("{}: {e}", self.peer);
                    // A failure the protocol can report (RFB 3.8 reasons) goes out first.
                    self.transmit(out)?;
                    while self.server.poll_event().is_some() {}
                    self.transmit(out)?;
                    return Ok(Processed {
                        consumed,
                        control: Control::Close,
                    });
                }
            };
            consumed += p.consumed;
            match p.lent {
                Some(Payload::PlainCredentials { username, password }) => {
                    let may = self.may_try();
                    let config = &self.shared.config;
                    let full = may
                        && config
                            .plain_users
                            .as_ref()
                            .is_some_and(|u| u.check(username, password));
                    let view = may
                        && !full
                        && config
                            .plain_view_users
                            .as_ref()
                            .is_some_and(|u| u.check(username, password));
                    self.view_only = view;
                    let ok = full || view;
                    let user = String::from_utf8_lossy(username).into_owned();
                    if ok {
                        log::info!("{}: user {user:?}", self.peer);
                    }
                    self.auth_decision(ok, &format!("Plain (user {user:?})"))?;
                }
                Some(Payload::CutText { .. }) | Some(Payload::FenceResponse { .. }) => {}
                None if p.consumed == 0 => break,
                None => {}
            }
        }
        if let Some(control) = self.drain(out)? {
            return Ok(Processed { consumed, control });
        }
        self.update(out)?;
        Ok(Processed {
            consumed,
            control: Control::Continue,
        })
    }

    fn tls_established(&mut self, peer: &PeerInfo) -> Result<()> {
        log::info!("{}: TLS {peer}", self.peer);
        self.server.tls_established().map_err(|e| anyhow!("{e}"))
    }

    fn eof(&mut self) -> Result<()> {
        match self.server.handle_eof() {
            Ok(()) => {
                let t = self.server.tight_stats();
                let tight = if t == Default::default() {
                    String::new()
                } else {
                    format!(
                        "; Tight rectangles: {} fill, {} mono, {} indexed, {} full colour, \
                         {} gradient, {} JPEG, {} PNG, {} JPEG frames passed through",
                        t.fill,
                        t.mono,
                        t.indexed,
                        t.full_colour,
                        t.gradient,
                        t.jpeg,
                        t.png,
                        t.jpeg_passthrough
                    )
                };
                let copies = if self.copies > 0 {
                    format!(" ({} of them another viewer's encode)", self.copies)
                } else {
                    String::new()
                };
                log::info!(
                    "{}: disconnected after {} updates{copies}{tight}",
                    self.peer,
                    self.updates
                );
                Ok(())
            }
            Err(e) => Err(anyhow!("rfb: {e}")),
        }
    }

    fn deadline(&self) -> Option<Instant> {
        let core = self.server.poll_timeout().map(|t| self.shared.std_time(t));
        let frame = (self.authenticated
            && self.server.wants_update()
            && self.full.is_none()
            && matches!(self.fb, Some(Fb::Pattern(_) | Fb::Video { .. })))
        .then_some(self.next_frame);
        let leds = self.watches_leds().then_some(self.next_led_poll);
        let share = self.membership.is_some().then_some(self.next_share_poll);
        [core, frame, leds, share].into_iter().flatten().min()
    }

    fn timeout(&mut self, now: Instant) {
        self.server.handle_timeout(self.shared.core_now(now));
    }
}

/// A connection over the server's cap: the version exchange, then `reason` (e.g. "too many
/// connections") in the form the client's RFB version allows, then close. The full session
/// (framebuffer, encoders) is never built.
pub struct VncRefusal {
    server: Server,
    shared: Arc<VncShared>,
    peer: String,
}

impl VncRefusal {
    /// The refusal for a connection from `peer`.
    pub fn new(shared: Arc<VncShared>, peer: String, reason: &'static str) -> Result<Self> {
        let mut config = shared.config.core_config();
        config.refuse_with = Some(reason);
        let server = Server::new(config, shared.core_now(Instant::now()), random_challenge()?);
        Ok(Self {
            server,
            shared,
            peer,
        })
    }

    /// The input buffer the session needs.
    pub fn input_buffer_len(&self) -> usize {
        self.server.min_input_buffer()
    }
}

impl Session for VncRefusal {
    fn process(&mut self, input: &[u8], out: &mut OutBuf) -> Result<Processed> {
        let consumed = match self.server.state() {
            State::Handshake => match self.server.handle_input(input) {
                Ok(p) => p.consumed,
                Err(e) => {
                    log::debug!("{}: {e}", self.peer);
                    input.len()
                }
            },
            // The refusal is on its way: nothing else matters.
            _ => input.len(),
        };
        while let Some(t) = self
            .server
            .poll_transmit(out.tail(1024))
            .map_err(|e| anyhow!("rfb: transmit buffer: {e}"))?
        {
            out.commit(t.len);
        }
        let mut control = Control::Continue;
        while let Some(e) = self.server.poll_event() {
            if matches!(e, Event::Closed) {
                control = Control::Close;
            }
        }
        if matches!(self.server.state(), State::Closed) {
            control = Control::Close;
        }
        Ok(Processed { consumed, control })
    }

    fn tls_established(&mut self, _peer: &PeerInfo) -> Result<()> {
        bail!("a refused connection never starts TLS")
    }

    fn eof(&mut self) -> Result<()> {
        Ok(())
    }

    fn deadline(&self) -> Option<Instant> {
        self.server.poll_timeout().map(|t| self.shared.std_time(t))
    }

    fn timeout(&mut self, now: Instant) {
        self.server.handle_timeout(self.shared.core_now(now));
    }
}

/// A one-line description of what a server offers, for its start-up message.
pub fn describe(config: &VncServerConfig) -> String {
    let (w, h) = config.desktop.size();
    let what = match &config.desktop {
        Desktop::Still(_) => "image",
        Desktop::Pattern { .. } => "test pattern",
        Desktop::Video(_) => "video",
    };
    let (types, subtypes) = server_offer(&config.security);
    let rfb: Vec<String> = types
        .iter()
        .map(|t| SecName::describe_type(u8::from(*t)))
        .collect();
    let sub: Vec<String> = subtypes
        .iter()
        .map(|s| SecName::describe_subtype(u32::from(*s)))
        .collect();
    let mut s = format!(
        "{what} {w}x{h} \"{}\", security {}",
        config.name,
        format_security_list(&config.security)
    );
    if !sub.is_empty() {
        s.push_str(&format!(
            " (RFB types {}; VeNCrypt {})",
            rfb.join(","),
            sub.join(",")
        ));
    }
    s.push_str(&format!(", JPEG by {}", config.jpeg_name));
    s
}
