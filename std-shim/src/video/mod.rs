//! Video from the target computer: a V4L2 capture device ([`v4l2`]) behind a [`Hub`] that
//! captures and converts each frame once, works out what changed ([`convert::damage`]) and
//! serves every viewer from the same frames. Without a signal (no device, no frames, a device
//! error or removal) the hub shows a "NO SIGNAL" card of the last size and keeps trying.

pub mod convert;
pub mod v4l2;

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rfb_core::server::{Damage, SharedUpdateKey};
use rfb_core::wire::Rect;

use crate::vnc::desktop::{Image, draw_text};

/// Frames whose damage the hub remembers (a viewer further behind gets a full update).
pub const HISTORY: usize = 64;
/// No frame for this long is "no signal".
pub const SIGNAL_TIMEOUT: Duration = Duration::from_secs(2);
/// How often a digital input's receiver is asked whether the source changed.
pub const SOURCE_CHECK: Duration = Duration::from_secs(1);
/// The size of the no-signal card before any frame was seen.
pub const DEFAULT_SIZE: (u16, u16) = (1024, 768);

/// Encoded updates the hub keeps for other viewers of the same frame (per frame: one per
/// distinct encoding and pixel format in use).
pub const SHARED_UPDATES: usize = 8;
/// And their bytes at most.
pub const SHARED_BYTES: usize = 32 << 20;

/// What an encoded update was made from: the frame, the areas sent and how they were encoded
/// (`rfb_core`'s [`SharedUpdateKey`]). Viewers with equal keys get the same bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedKey {
    /// The frame's number.
    pub seq: u64,
    /// The rectangles sent, in order.
    pub damage: Vec<Rect>,
    /// The encoding and the formats.
    pub update: SharedUpdateKey,
}

impl SharedKey {
    /// The key of an update of frame `seq` holding `damage` (changed areas only).
    pub fn new(seq: u64, damage: &[Damage], update: SharedUpdateKey) -> Self {
        let damage = damage
            .iter()
            .map(|d| match *d {
                Damage::Changed(r) | Damage::Copied { dst: r, .. } => r,
            })
            .collect();
        Self {
            seq,
            damage,
            update,
        }
    }
}

/// How often viewers reused another viewer's encode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SharedStats {
    /// Updates encoded and kept.
    pub kept: u64,
    /// Updates sent from kept bytes.
    pub reused: u64,
}

/// A capture device and what to ask it for.
#[derive(Debug, Clone)]
pub struct VideoConfig {
    /// The device (`/dev/video0`).
    pub device: PathBuf,
    /// Format and size.
    pub capture: v4l2::CaptureConfig,
}

struct State {
    image: Arc<Image>,
    seq: u64,
    /// `(seq, damage of frame seq against frame seq - 1)`, oldest first.
    history: VecDeque<(u64, Vec<Rect>)>,
    signal: bool,
    /// Encoded updates of the current frame, oldest first.
    shared: VecDeque<(SharedKey, Arc<[u8]>)>,
    shared_stats: SharedStats,
}

/// One capture shared by every viewer.
pub struct Hub {
    state: Mutex<State>,
    device: String,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (image, seq) = self.current();
        write!(
            f,
            "Hub({}, {}x{}, frame {seq})",
            self.device, image.width, image.height
        )
    }
}

/// What a viewer has to send to catch up.
pub struct Changes {
    /// The current frame.
    pub image: Arc<Image>,
    /// Its number.
    pub seq: u64,
    /// The areas changed since the viewer's frame (`None`: all of it).
    pub damage: Option<Vec<Rect>>,
}

impl Hub {
    /// Starts capturing from `config.device` in a thread of its own.
    pub fn start(config: VideoConfig) -> Arc<Self> {
        let device = config.device.display().to_string();
        let (w, h) = config.capture.size.map_or(DEFAULT_SIZE, |(w, h)| {
            (w.min(8192) as u16, h.min(8192) as u16)
        });
        let hub = Arc::new(Self {
            state: Mutex::new(State {
                image: Arc::new(no_signal(w.max(1), h.max(1), &device)),
                seq: 1,
                history: VecDeque::new(),
                signal: false,
                shared: VecDeque::new(),
                shared_stats: SharedStats::default(),
            }),
            device,
        });
        let h2 = hub.clone();
        std::thread::Builder::new()
            .name("video-capture".into())
            .spawn(move || h2.run(&config))
            .expect("start the capture thread");
        hub
    }

    /// The device's name.
    pub fn device(&self) -> &str {
        &self.device
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current frame and its number.
    pub fn current(&self) -> (Arc<Image>, u64) {
        let s = self.lock();
        (s.image.clone(), s.seq)
    }

    /// Whether frames are arriving.
    pub fn has_signal(&self) -> bool {
        self.lock().signal
    }

    /// What changed since frame `seq` (`None` if nothing did).
    pub fn changes_since(&self, seq: u64) -> Option<Changes> {
        let s = self.lock();
        if s.seq == seq {
            return None;
        }
        let mut damage = Some(Vec::new());
        if seq == 0 || s.history.front().is_none_or(|(first, _)| *first > seq + 1) {
            damage = None;
        } else {
            for (n, d) in &s.history {
                if *n > seq
                    && let Some(v) = damage.as_mut()
                {
                    v.extend_from_slice(d);
                }
            }
        }
        Some(Changes {
            image: s.image.clone(),
            seq: s.seq,
            damage,
        })
    }

    /// The bytes another viewer's update was encoded to under `key`, if they are still kept.
    pub fn shared_update(&self, key: &SharedKey) -> Option<Arc<[u8]>> {
        let mut s = self.lock();
        let bytes = s.shared.iter().find(|(k, _)| k == key)?.1.clone();
        s.shared_stats.reused += 1;
        Some(bytes)
    }

    /// Keeps an update encoded for the frame `key.seq` for the other viewers (only while that
    /// frame is the current one; at most [`SHARED_UPDATES`] of [`SHARED_BYTES`] in all).
    pub fn keep_update(&self, key: SharedKey, bytes: &[u8]) {
        let mut s = self.lock();
        if key.seq != s.seq || bytes.len() > SHARED_BYTES || s.shared.iter().any(|(k, _)| *k == key)
        {
            return;
        }
        s.shared.push_back((key, Arc::from(bytes)));
        s.shared_stats.kept += 1;
        let mut total: usize = s.shared.iter().map(|(_, b)| b.len()).sum();
        while s.shared.len() > SHARED_UPDATES || total > SHARED_BYTES {
            let Some((_, b)) = s.shared.pop_front() else {
                break;
            };
            total -= b.len();
        }
    }

    /// How often viewers shared an encode.
    pub fn shared_stats(&self) -> SharedStats {
        self.lock().shared_stats
    }

    /// Publishes a new frame with its damage against the previous one.
    fn publish(&self, image: Image, damage: Vec<Rect>, signal: bool) {
        let mut s = self.lock();
        let full = (image.width, image.height) != (s.image.width, s.image.height);
        s.seq += 1;
        let seq = s.seq;
        if full {
            s.history.clear();
        }
        s.history.push_back((seq, damage));
        while s.history.len() > HISTORY {
            s.history.pop_front();
        }
        s.image = Arc::new(image);
        s.signal = signal;
        // Every viewer moves on to the new frame: what was encoded for the old one is done.
        s.shared.clear();
    }

    fn show_no_signal(&self, why: &str) {
        let (w, h, had) = {
            let s = self.lock();
            (s.image.width, s.image.height, s.signal)
        };
        if had {
            log::warn!("{}: no signal ({why})", self.device);
            let img = no_signal(w, h, &self.device);
            self.publish(img, vec![Rect::new(0, 0, w, h)], false);
        }
    }

    fn run(&self, config: &VideoConfig) {
        let mut backoff = Duration::from_millis(250);
        let mut last_error = String::new();
        loop {
            let mut cap = match v4l2::Capture::open(&config.device, &config.capture) {
                Ok(c) => {
                    let rate = c.rate.map(|r| format!(" at {r:.2} Hz")).unwrap_or_default();
                    let timings = c
                        .timings
                        .map(|t| format!(" (source {t})"))
                        .unwrap_or_default();
                    log::info!("{}: capturing {}{rate}{timings}", self.device, c.format);
                    last_error.clear();
                    backoff = Duration::from_millis(250);
                    c
                }
                Err(e) => {
                    let msg = format!("{e:#}");
                    if msg != last_error {
                        log::warn!("{}: {msg}; retrying", self.device);
                        last_error = msg.clone();
                    }
                    self.show_no_signal(&msg);
                    std::thread::sleep(backoff);
                    backoff = (backoff * 2).min(Duration::from_secs(4));
                    continue;
                }
            };
            let mut prev = self.current().0;
            let mut last_frame = Instant::now();
            let mut last_check = Instant::now();
            loop {
                // A digital source may change mode or go away while frames still come (the
                // receiver keeps sending its last or a blank picture): ask it now and then.
                if last_check.elapsed() >= SOURCE_CHECK {
                    last_check = Instant::now();
                    match cap.source_changed() {
                        Ok(None) => {}
                        Ok(Some(t)) => {
                            log::info!("{}: the source changed to {t}: following", self.device);
                            break;
                        }
                        Err(e) => {
                            self.show_no_signal(&format!("{e:#}"));
                            break;
                        }
                    }
                }
                let fmt = cap.format;
                let r = cap.next_frame(Duration::from_millis(500), |bytes| {
                    let mut img = Image::new(1, 1);
                    convert::convert(&fmt, bytes, &mut img).map(|()| img)
                });
                match r {
                    Ok(Some(Ok(img))) => {
                        last_frame = Instant::now();
                        let was = self.has_signal();
                        let d = if was {
                            convert::damage(&prev, &img)
                        } else {
                            vec![Rect::new(0, 0, img.width, img.height)]
                        };
                        if !was {
                            log::info!("{}: signal", self.device);
                        }
                        if !d.is_empty() || !was {
                            self.publish(img, d, true);
                            prev = self.current().0;
                        }
                    }
                    Ok(Some(Err(e))) => log::debug!("{}: {e:#}", self.device),
                    Ok(None) => {
                        if last_frame.elapsed() > SIGNAL_TIMEOUT {
                            self.show_no_signal("no frames");
                            if last_frame.elapsed() > SIGNAL_TIMEOUT * 3 {
                                // Reopen: some drivers need a new stream after the source
                                // changed.
                                break;
                            }
                        }
                    }
                    Err(e) => {
                        self.show_no_signal(&format!("{e:#}"));
                        break;
                    }
                }
            }
            drop(cap);
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The card shown without a signal.
pub fn no_signal(w: u16, h: u16, device: &str) -> Image {
    let mut img = Image::new(w, h);
    img.fill(Rect::new(0, 0, w, h), 0x202028);
    let scale = (w / 120).clamp(1, 8);
    let text = "NO SIGNAL";
    let tw = 9 * 6 * scale;
    let x = w.saturating_sub(tw) / 2;
    let y = (h / 2).saturating_sub(7 * scale);
    draw_text(&mut img, x, y, text, scale, 0xe0e0e0);
    let small = (scale / 2).max(1);
    let dx = w.saturating_sub(device.len() as u16 * 6 * small) / 2;
    draw_text(&mut img, dx, y + 10 * scale, device, small, 0x909090);
    img
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hub() -> Hub {
        Hub {
            state: Mutex::new(State {
                image: Arc::new(Image::new(128, 128)),
                seq: 1,
                history: VecDeque::new(),
                signal: true,
                shared: VecDeque::new(),
                shared_stats: SharedStats::default(),
            }),
            device: "test".into(),
        }
    }

    #[test]
    fn viewers_get_the_union_of_what_they_missed() {
        let h = hub();
        assert!(h.changes_since(1).is_none());
        h.publish(Image::new(128, 128), vec![Rect::new(0, 0, 64, 64)], true);
        h.publish(Image::new(128, 128), vec![Rect::new(64, 64, 64, 64)], true);
        let c = h.changes_since(1).unwrap();
        assert_eq!(c.seq, 3);
        assert_eq!(
            c.damage.unwrap(),
            [Rect::new(0, 0, 64, 64), Rect::new(64, 64, 64, 64)]
        );
        assert_eq!(h.changes_since(2).unwrap().damage.unwrap().len(), 1);
        // a new viewer, or one further behind than the history: everything
        assert!(h.changes_since(0).unwrap().damage.is_none());
        for _ in 0..HISTORY + 2 {
            h.publish(Image::new(128, 128), vec![Rect::new(0, 0, 1, 1)], true);
        }
        assert!(h.changes_since(3).unwrap().damage.is_none());
        // a new size forgets the history
        let s = h.current().1;
        h.publish(Image::new(64, 32), vec![Rect::new(0, 0, 64, 32)], true);
        let c = h.changes_since(s).unwrap();
        assert_eq!((c.image.width, c.image.height), (64, 32));
    }

    #[test]
    fn kept_updates_are_found_by_their_key_and_bounded() {
        use rfb_core::wire::{Encoding, PixelFormat};
        let h = hub();
        let update = SharedUpdateKey {
            encoding: Encoding::Hextile,
            native: PixelFormat::RGB888,
            wire: PixelFormat::RGB888,
        };
        let key = |seq, n| SharedKey {
            seq,
            damage: vec![Rect::new(0, 0, n, 1)],
            update,
        };
        h.keep_update(key(1, 1), b"one");
        assert_eq!(h.shared_update(&key(1, 1)).as_deref(), Some(&b"one"[..]));
        // another area, another format, or a frame that is not the current one: not found
        assert!(h.shared_update(&key(1, 2)).is_none());
        let other = SharedKey {
            update: SharedUpdateKey {
                wire: PixelFormat::RGB565,
                ..update
            },
            ..key(1, 1)
        };
        assert!(h.shared_update(&other).is_none());
        h.keep_update(key(7, 1), b"stale");
        assert!(h.shared_update(&key(7, 1)).is_none());
        // a new frame forgets the old frame's updates
        h.publish(Image::new(128, 128), vec![Rect::new(0, 0, 1, 1)], true);
        assert!(h.shared_update(&key(1, 1)).is_none());
        // at most SHARED_UPDATES, the oldest go first
        for n in 0..SHARED_UPDATES as u16 + 3 {
            h.keep_update(key(2, n + 1), &[0; 16]);
        }
        assert!(h.shared_update(&key(2, 1)).is_none());
        assert!(
            h.shared_update(&key(2, SHARED_UPDATES as u16 + 3))
                .is_some()
        );
        // and never more than SHARED_BYTES
        h.keep_update(key(2, 500), &vec![0; SHARED_BYTES / 2 + 1]);
        h.keep_update(key(2, 501), &vec![0; SHARED_BYTES / 2 + 1]);
        assert!(h.shared_update(&key(2, 500)).is_none());
        assert!(h.shared_update(&key(2, 501)).is_some());
        h.keep_update(key(2, 502), &vec![0; SHARED_BYTES + 1]);
        assert!(h.shared_update(&key(2, 502)).is_none());
        let st = h.shared_stats();
        assert_eq!((st.kept, st.reused), (SHARED_UPDATES as u64 + 6, 3));
    }

    #[test]
    fn the_no_signal_card_says_so() {
        let img = no_signal(320, 240, "/dev/video0");
        let lit = img.data.chunks_exact(4).filter(|p| p[0] == 0xe0).count();
        assert!(lit > 200, "{lit} text pixels");
        let tiny = no_signal(1, 1, "/dev/video0");
        assert_eq!((tiny.width, tiny.height), (1, 1));
    }
}
