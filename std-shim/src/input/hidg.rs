//! The target computer's keyboard and pointer: reports from `rfb_core::hid` written to the
//! USB HID gadget's `/dev/hidgN` nodes (made by [`crate::gadget::up`]), and the keyboard's
//! LED output reports read back.
//!
//! A hidg write blocks until the host has taken the previous report (a target that is off,
//! asleep or unplugged takes none), so each node has its own writer thread with a bounded
//! queue: a viewer never waits for the target, and a flood of key events cannot grow memory.
//! When the queue overflows, what is queued is replaced by the newest report, which is the
//! whole current state (a boot report carries every key and button held): the target may
//! miss keystrokes of the flood, but never ends up with a key held that the viewer released.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use rfb_core::hid::{KeyStatus, Keyboard, Layout, Leds, Pointer};

use super::{InputSink, keysym_name};

/// Reports queued per node before the queue collapses to the current state.
pub const QUEUE_REPORTS: usize = 256;

/// Where the gadget's nodes are and which layout the target computer types with.
#[derive(Debug, Clone)]
pub struct HidGadgetConfig {
    /// The keyboard node (`/dev/hidg0` for `kvmio gadget up`'s default gadget).
    pub keyboard: Option<PathBuf>,
    /// The absolute pointer node.
    pub pointer: Option<PathBuf>,
    /// The target's keyboard layout (keysyms are typed with it; QEMU key events ignore it).
    pub layout: &'static Layout,
}

/// The USB HID gadget as an input sink.
pub struct HidGadget {
    keyboard: Keyboard,
    pointer: Pointer,
    layout: &'static Layout,
    kbd: Option<ReportWriter>,
    ptr: Option<ReportWriter>,
    /// `(changes << 8) | output report`; 0 until the host sent one.
    leds: Arc<AtomicU64>,
    leds_applied: u64,
}

impl HidGadget {
    /// Opens the nodes and starts their writer threads (and the LED reader).
    pub fn open(config: &HidGadgetConfig) -> Result<Self> {
        let leds = Arc::new(AtomicU64::new(0));
        let kbd = match &config.keyboard {
            Some(p) => {
                let w = ReportWriter::start(p, "keyboard")?;
                start_led_reader(p, leds.clone())?;
                Some(w)
            }
            None => None,
        };
        let ptr = match &config.pointer {
            Some(p) => Some(ReportWriter::start(p, "pointer")?),
            None => None,
        };
        Ok(Self {
            keyboard: Keyboard::new(),
            pointer: Pointer::new(),
            layout: config.layout,
            kbd,
            ptr,
            leds,
            leds_applied: 0,
        })
    }

    /// The host's last LED output report applies to the key translation (letters in the
    /// right case, keypad keys with the right NumLock).
    fn sync_leds(&mut self) {
        let v = self.leds.load(Ordering::Acquire);
        if v != self.leds_applied && v >> 8 != 0 {
            self.keyboard.set_leds(Leds::from_report(v as u8));
            self.leds_applied = v;
        }
    }
}

impl InputSink for HidGadget {
    fn key(&mut self, down: bool, keysym: u32, qnum: Option<u32>) {
        if self.kbd.is_none() {
            return;
        }
        self.sync_leds();
        let out = match qnum {
            Some(q) => self.keyboard.key_qnum(down, q),
            None => self.keyboard.key_keysym(down, keysym, self.layout),
        };
        match out.status() {
            KeyStatus::Unknown => match qnum {
                Some(q) => log::info!("key number 0x{q:x} has no USB usage; skipped"),
                None => log::info!(
                    "key {} cannot be typed on layout {}; skipped",
                    keysym_name(keysym),
                    self.layout.name()
                ),
            },
            KeyStatus::TooManyKeys => {
                log::info!("key {}: too many keys held; dropped", keysym_name(keysym))
            }
            _ => {}
        }
        if let Some(kbd) = &self.kbd {
            for r in out.reports() {
                kbd.send(&r.to_bytes());
            }
        }
    }

    fn pointer(&mut self, buttons: u8, x: u16, y: u16, width: u16, height: u16) {
        let Some(ptr) = &self.ptr else {
            return;
        };
        if let Some(r) = self.pointer.event(buttons, x, y, width, height) {
            ptr.send(&r.to_bytes());
        }
    }

    fn release_all(&mut self) {
        if let Some(kbd) = &self.kbd {
            kbd.send(&self.keyboard.release_all().to_bytes());
        }
        if let Some(ptr) = &self.ptr {
            ptr.send(&self.pointer.release_all().to_bytes());
        }
    }

    fn leds(&self) -> Option<(u8, u64)> {
        self.kbd.as_ref()?;
        let v = self.leds.load(Ordering::Acquire);
        Some((Leds::from_report(v as u8).qemu_led_state(), v >> 8))
    }
}

impl Drop for HidGadget {
    fn drop(&mut self) {
        self.release_all();
    }
}

struct Queue {
    reports: VecDeque<Vec<u8>>,
    collapsed: u64,
}

/// One node's writer thread and its queue.
struct ReportWriter {
    shared: Arc<(Mutex<Queue>, Condvar)>,
}

impl ReportWriter {
    fn start(path: &Path, what: &'static str) -> Result<Self> {
        let file = open_rw(path).with_context(|| format!("the HID {what} {}", path.display()))?;
        let shared = Arc::new((
            Mutex::new(Queue {
                reports: VecDeque::new(),
                collapsed: 0,
            }),
            Condvar::new(),
        ));
        let s = shared.clone();
        let path = path.to_path_buf();
        std::thread::Builder::new()
            .name(format!("hid-{what}"))
            .spawn(move || write_loop(file, &path, what, &s))
            .context("starting the HID writer")?;
        Ok(Self { shared })
    }

    fn send(&self, report: &[u8]) {
        let (m, cv) = &*self.shared;
        let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
        if q.reports.len() >= QUEUE_REPORTS {
            q.reports.clear();
            q.collapsed += 1;
            if q.collapsed.is_power_of_two() {
                log::warn!(
                    "the target is not taking HID reports fast enough: queue collapsed to \
                     the current state ({} times)",
                    q.collapsed
                );
            }
        }
        q.reports.push_back(report.to_vec());
        cv.notify_one();
    }
}

fn open_rw(path: &Path) -> std::io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

fn write_loop(mut file: File, path: &Path, what: &str, shared: &(Mutex<Queue>, Condvar)) {
    let (m, cv) = shared;
    let mut failing = false;
    loop {
        let report = {
            let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
            loop {
                if let Some(r) = q.reports.front() {
                    break r.clone();
                }
                q = cv.wait(q).unwrap_or_else(|e| e.into_inner());
            }
        };
        match file.write_all(&report) {
            Ok(()) => {
                if failing {
                    log::info!("HID {what}: the target takes reports again");
                    failing = false;
                }
                let mut q = m.lock().unwrap_or_else(|e| e.into_inner());
                // The front is still this report unless a collapse replaced the queue.
                if q.reports.front() == Some(&report) {
                    q.reports.pop_front();
                }
            }
            Err(e) => {
                // ESHUTDOWN: the gadget is unbound or the host is gone. Keep the report (it
                // is the state to restore) and try again.
                if !failing {
                    log::warn!("HID {what} {}: {e}; retrying", path.display());
                    failing = true;
                }
                std::thread::sleep(Duration::from_millis(250));
                if let Ok(f) = open_rw(path) {
                    file = f;
                }
            }
        }
    }
}

/// Reads the keyboard's LED output reports (one byte each) into `leds`.
fn start_led_reader(path: &Path, leds: Arc<AtomicU64>) -> Result<()> {
    let mut file = open_rw(path).with_context(|| format!("{}", path.display()))?;
    let path = path.to_path_buf();
    std::thread::Builder::new()
        .name("hid-leds".into())
        .spawn(move || {
            let mut buf = [0u8; 64];
            let mut failing = false;
            loop {
                match file.read(&mut buf) {
                    Ok(n) if n > 0 => {
                        failing = false;
                        let report = buf[n - 1];
                        let old = leds.load(Ordering::Acquire);
                        if old >> 8 == 0 || old as u8 != report {
                            leds.store(
                                (((old >> 8) + 1) << 8) | u64::from(report),
                                Ordering::Release,
                            );
                            log::debug!("target keyboard LEDs {report:#04x}");
                        }
                    }
                    Ok(_) | Err(_) => {
                        if !failing {
                            log::debug!("HID LEDs {}: no reports; retrying", path.display());
                            failing = true;
                        }
                        std::thread::sleep(Duration::from_millis(250));
                        if let Ok(f) = open_rw(&path) {
                            file = f;
                        }
                    }
                }
            }
        })
        .context("starting the LED reader")?;
    Ok(())
}
