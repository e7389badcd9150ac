//! The VNC console service: `rfb-core`'s server glued to the [`crate::desktop`].
//!
//! * Security: VeNCrypt with X.509 TLS only (client certificates required, see
//!   [`crate::tls`]): `X509Vnc` with the build-time password [`PASSWORD`], and `X509None` as
//!   well when built with `KVMIO_VNC_X509NONE=1`.
//! * The VNC challenge is 16 fresh bytes from the board's random source per connection.
//! * Updates: on a request, the session takes its damage from the desktop (everything on a
//!   non-incremental request) and encodes it with the client's preferred encoding straight
//!   from the framebuffer into the driver's output buffer. While a client waits for an
//!   incremental update and nothing changed, the session sleeps until the next animation frame.
//! * Key and pointer events are logged; the last key pressed is shown on the desktop.

use embassy_time::{Duration, Instant};
use rfb_core::server::{Damage, Event, Payload, Server, ServerConfig, UpdateSource};
use rfb_core::verify_vnc_response;
use rfb_core::wire::{Rect, SecurityType, VencryptSubtype};
use tls_glue::TlsLayer;

use crate::desktop::{self, MAX_DAMAGE};
use crate::driver::{Control, Service, ServiceError};

/// The VNC password (DES: only the first 8 bytes count): `KVMIO_VNC_PASSWORD` at build time,
/// `secret` if unset (the CI build).
pub const PASSWORD: &str = match option_env!("KVMIO_VNC_PASSWORD") {
    Some(p) => p,
    None => "secret",
};

/// Whether `X509None` is offered after `X509Vnc` (`KVMIO_VNC_X509NONE=1` at build time).
pub const OFFER_X509NONE: bool = match option_env!("KVMIO_VNC_X509NONE") {
    Some(v) => matches!(v.as_bytes(), b"1"),
    None => false,
};

/// Pointer moves are logged at most this often (button changes always).
const POINTER_LOG_INTERVAL: Duration = Duration::from_millis(250);

/// The pixel format announced in ServerInit, i.e. what updates use until the client sets its
/// own: 32 bpp RGB888, which every viewer decodes. The framebuffer itself stays 8 bpp
/// ([`desktop::FORMAT`]); rfb-core translates every update from it. (gtk-vnc, e.g.
/// gvnccapture, keeps the server's format and renders an 8 bpp `bbgggrrr` one almost black.)
const SERVER_INIT_FORMAT: rfb_core::wire::PixelFormat = rfb_core::wire::PixelFormat::RGB888;

/// The configuration of a session on the VNC port (VeNCrypt with X.509), or (`inside_tls`) of
/// one inside wss, where the TLS is the WebSocket's and the same choices are offered without
/// it: VncAuth (for X509Vnc), None (for X509None).
#[cfg_attr(not(feature = "wss"), allow(unused_variables))]
fn config(inside_tls: bool) -> ServerConfig {
    let mut c = if inside_tls {
        let types: &[SecurityType] = if OFFER_X509NONE {
            &[SecurityType::VncAuth, SecurityType::None]
        } else {
            &[SecurityType::VncAuth]
        };
        ServerConfig::with_security(types, &[])
    } else {
        let subtypes: &[VencryptSubtype] = if OFFER_X509NONE {
            &[VencryptSubtype::X509Vnc, VencryptSubtype::X509None]
        } else {
            &[VencryptSubtype::X509Vnc]
        };
        ServerConfig::with_security(&[SecurityType::VeNCrypt], subtypes)
    };
    // Nothing here needs long client messages: refuse long clipboard texts and credentials.
    c.limits.max_cut_text = 64 * 1024;
    c.limits.max_username = 64;
    c.limits.max_password = 64;
    c.limits.max_encodings = 64;
    c.handshake_timeout = Some(core::time::Duration::from_secs(30));
    c
}

/// The desktop name sent in ServerInit.
fn desktop_name() -> &'static [u8] {
    crate::board::NAME.as_bytes()
}

/// One VNC connection.
pub struct VncService {
    server: Server,
    slot: usize,
    /// A non-incremental update was asked for: send everything.
    full: bool,
    /// The damage of the update being encoded.
    damage: heapless::Vec<Damage, MAX_DAMAGE>,
    buttons: u8,
    last_pointer_log: Instant,
    /// StartTls / Close taken from the core in `handle_input`, for `poll_event` (the driver
    /// acts on them only after the output before them is sent).
    control: Option<Control>,
}

fn core_now() -> rfb_core::Instant {
    rfb_core::Instant::from_micros(Instant::now().as_micros())
}

impl VncService {
    /// A server for a connection accepted now on VNC session slot `slot`.
    pub fn new(slot: usize) -> Result<Self, ServiceError> {
        Self::with_config(slot, config(false))
    }

    /// A server inside a TLS the transport already runs (wss, `crate::ws`).
    #[cfg(feature = "wss")]
    pub fn inside_tls(slot: usize) -> Result<Self, ServiceError> {
        Self::with_config(slot, config(true))
    }

    fn with_config(slot: usize, config: ServerConfig) -> Result<Self, ServiceError> {
        let mut challenge = [0u8; 16];
        crate::rng::fill(&mut challenge).map_err(|_| ServiceError("vnc: no random source"))?;
        if let Err(e) = config.validate() {
            error!("vnc: bad configuration: {:?}", e);
            return Err(ServiceError("vnc: bad configuration"));
        }
        let server = Server::new(config, core_now(), challenge);
        desktop::with(|d| d.attach(slot));
        Ok(Self {
            server,
            slot,
            full: false,
            damage: heapless::Vec::new(),
            buttons: 0,
            last_pointer_log: Instant::from_ticks(0),
            control: None,
        })
    }

    /// The peer broke the protocol (or the connection cannot go on).
    fn fail(&self, what: &'static str, e: rfb_core::Error) -> ServiceError {
        warn!("vnc slot {}: {}: {:?}", self.slot, what, e);
        ServiceError(what)
    }

    /// A command of ours was refused: a bug in this driver.
    fn refused(&self, what: &'static str, e: rfb_core::CommandError) -> ServiceError {
        warn!("vnc slot {}: {}: {:?}", self.slot, what, e);
        ServiceError(what)
    }

    /// Encodes the next piece of a framebuffer update, if one is wanted and there is damage.
    fn update(&mut self, buf: &mut [u8]) -> Result<usize, ServiceError> {
        if !self.server.wants_update() {
            return Ok(0);
        }
        let slot = self.slot;
        let now = Instant::now();
        let full = self.full;
        let in_progress = self.server.update_in_progress();
        let r = desktop::with(|d| {
            if !in_progress {
                d.tick(now);
                let changed = d.take_damage(slot, &mut self.damage);
                if full {
                    self.damage.clear();
                    let all = Rect::new(0, 0, desktop::WIDTH, desktop::HEIGHT);
                    let _ = self.damage.push(Damage::Changed(all));
                } else if !changed {
                    return Ok(None);
                }
            }
            let src = UpdateSource::new(d.framebuffer(), &self.damage);
            self.server.encode_update(&src, buf).map(Some)
        });
        match r {
            Ok(None) => Ok(0),
            Ok(Some(st)) => {
                if st.done {
                    self.full = false;
                    self.damage.clear();
                }
                Ok(st.written)
            }
            Err(e) => Err(self.refused("vnc: update failed", e)),
        }
    }

    fn event(&mut self, e: Event) -> Result<Control, ServiceError> {
        let slot = self.slot;
        match e {
            Event::StartTls => return Ok(Control::StartTls),
            Event::VncAuth {
                challenge,
                response,
            } => {
                if verify_vnc_response(PASSWORD.as_bytes(), &challenge, &response) {
                    self.server
                        .accept_auth()
                        .map_err(|e| self.refused("vnc: accept_auth", e))?;
                } else {
                    warn!("vnc slot {}: wrong VNC password", slot);
                    self.server
                        .reject_auth("Authentication failed")
                        .map_err(|e| self.refused("vnc: reject_auth", e))?;
                }
            }
            Event::PlainAuth => {
                // Plain is never offered; the core cannot get here, refuse anyway.
                let _ = self.server.reject_auth("Authentication failed");
            }
            Event::Authenticated(m) => info!(
                "vnc slot {}: authenticated (security type {}, sub-type {})",
                slot,
                u8::from(m.security_type),
                m.subtype.map(u32::from).unwrap_or(0)
            ),
            Event::AuthFailed { .. } => warn!("vnc slot {}: authentication failed", slot),
            Event::ClientInit { shared } => {
                info!("vnc slot {}: client init (shared {})", slot, shared);
                self.server
                    .server_init(
                        desktop::WIDTH,
                        desktop::HEIGHT,
                        SERVER_INIT_FORMAT,
                        desktop_name(),
                    )
                    .map_err(|e| self.refused("vnc: server_init", e))?;
            }
            Event::UpdateRequested {
                incremental: false, ..
            } => self.full = true,
            Event::Key { down, keysym } | Event::QemuKey { down, keysym, .. } => {
                info!(
                    "vnc slot {}: key {} keysym={:#x}",
                    slot,
                    if down { "down" } else { "up" },
                    keysym
                );
                if down {
                    let now = Instant::now();
                    desktop::with(|d| d.key(keysym, now));
                }
            }
            Event::Pointer { buttons, x, y } => {
                let now = Instant::now();
                if buttons != self.buttons
                    || now.duration_since(self.last_pointer_log) >= POINTER_LOG_INTERVAL
                {
                    info!(
                        "vnc slot {}: pointer x={} y={} buttons={:#04x}",
                        slot, x, y, buttons
                    );
                    self.buttons = buttons;
                    self.last_pointer_log = now;
                }
            }
            Event::CutText(len) => {
                info!(
                    "vnc slot {}: clipboard text, {} bytes (ignored)",
                    slot,
                    len.len()
                );
            }
            Event::SetDesktopSize { .. } => {
                // The framebuffer has a fixed size: "prohibited".
                let _ = self.server.reply_desktop_size(1);
            }
            Event::TimedOut => {
                warn!("vnc slot {}: handshake deadline passed", slot);
                return Ok(Control::Close);
            }
            Event::Closed => return Ok(Control::Close),
            _ => {}
        }
        Ok(Control::Continue)
    }
}

impl Service for VncService {
    fn handle_input(&mut self, input: &[u8]) -> Result<usize, ServiceError> {
        if self.control.is_some() {
            return Ok(0);
        }
        let p = match self.server.handle_input(input) {
            Ok(p) => p,
            Err(e) => return Err(self.fail("vnc: peer error", e)),
        };
        match p.lent {
            // Clipboard text is not used; the chunks are dropped.
            Some(Payload::CutText { .. }) | Some(Payload::FenceResponse { .. }) | None => {}
            Some(Payload::PlainCredentials { .. }) => {
                let _ = self.server.reject_auth("Authentication failed");
            }
        }
        // Events take effect at once (an update request must be known before the next
        // update is encoded); StartTls and Close wait for `poll_event`.
        while let Some(e) = self.server.poll_event() {
            match self.event(e)? {
                Control::Continue => {}
                c => {
                    self.control = Some(c);
                    break;
                }
            }
        }
        Ok(p.consumed)
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<usize, ServiceError> {
        match self.server.poll_transmit(buf) {
            // The app never sends clipboard text, so no application payload follows.
            Ok(Some(t)) => return Ok(t.len),
            Ok(None) => {}
            Err(e) => {
                error!("vnc: output buffer too small: {:?}", e.required);
                return Err(ServiceError("vnc: internal error"));
            }
        }
        self.update(buf)
    }

    fn poll_event(&mut self) -> Option<Control> {
        if let Some(c) = self.control.take() {
            return Some(c);
        }
        let e = self.server.poll_event()?;
        Some(self.event(e).unwrap_or(Control::Close))
    }

    fn tls_established(&mut self, tls: &TlsLayer) -> Result<(), ServiceError> {
        crate::nbd::log_tls("vnc", self.slot, tls);
        self.server
            .tls_established()
            .map_err(|e| self.refused("vnc: TLS in the wrong state", e))
    }

    fn handle_eof(&mut self) -> Result<(), ServiceError> {
        self.server
            .handle_eof()
            .map_err(|_| ServiceError("vnc: peer closed during the handshake"))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let core = self
            .server
            .poll_timeout()
            .map(|t| Instant::from_micros(t.as_micros()));
        // A client waiting for an update: wake up for the next animation frame.
        let frame = (self.server.wants_update() && !self.server.update_in_progress())
            .then(|| desktop::with(|d| d.next_frame()));
        match (core, frame) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.server
            .handle_timeout(rfb_core::Instant::from_micros(now.as_micros()));
    }
}
