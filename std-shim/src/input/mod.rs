//! Where the viewers' keyboard and pointer go: an [`InputSink`] (the target computer's USB HID
//! gadget, [`hidg::HidGadget`], or the log, [`LogSink`]) behind one [`Input`] that every VNC
//! session of a server shares.
//!
//! The target has one keyboard and one pointer, so every viewer types into the same key
//! state. A viewer that leaves while it holds keys or buttons (a dropped connection in the
//! middle of Ctrl+Alt+Del) gets everything released on the target: nothing stays pressed.

pub mod hidg;
mod log_sink;

use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

pub use log_sink::{LogSink, keysym_name};

/// A destination for input events.
pub trait InputSink: Send {
    /// A key went down or up: `keysym` from an RFB KeyEvent, plus the QEMU key number
    /// (`qnum`) when the viewer sent a QEMU extended key event (then the key is pressed by
    /// its position, whatever the layout).
    fn key(&mut self, down: bool, keysym: u32, qnum: Option<u32>);
    /// The pointer: rfbproto's button mask at (`x`, `y`) on a `width` × `height` screen.
    fn pointer(&mut self, buttons: u8, x: u16, y: u16, width: u16, height: u16);
    /// Releases every key and button.
    fn release_all(&mut self);
    /// The keyboard LEDs as the QEMU LED State bits (0 ScrollLock, 1 NumLock, 2 CapsLock)
    /// and a number that changes whenever they do; `None` if the sink has no LEDs.
    fn leds(&self) -> Option<(u8, u64)> {
        None
    }
}

/// One viewer's standing with the shared sink.
#[derive(Debug, Default)]
struct Held {
    keys: u32,
    buttons: u8,
}

/// The input of one server, shared by its sessions.
pub struct Input {
    sink: Mutex<Box<dyn InputSink>>,
    next_viewer: AtomicU64,
}

impl Input {
    /// Input going to `sink`.
    pub fn new(sink: Box<dyn InputSink>) -> Self {
        Self {
            sink: Mutex::new(sink),
            next_viewer: AtomicU64::new(1),
        }
    }

    /// Input that is only logged.
    pub fn log() -> Self {
        Self::new(Box::new(LogSink::default()))
    }

    fn sink(&self) -> std::sync::MutexGuard<'_, Box<dyn InputSink>> {
        // A panic while holding the lock leaves a key state that is still a key state.
        self.sink.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A handle for one viewer (`peer` names it in the log).
    pub fn viewer(self: &std::sync::Arc<Self>, peer: &str) -> Viewer {
        Viewer {
            input: self.clone(),
            id: self.next_viewer.fetch_add(1, Ordering::Relaxed),
            peer: peer.to_string(),
            held: Held::default(),
        }
    }

    /// The keyboard LEDs, see [`InputSink::leds`].
    pub fn leds(&self) -> Option<(u8, u64)> {
        self.sink().leds()
    }
}

/// One viewer's input; dropping it (the connection ended) releases what it held.
pub struct Viewer {
    input: std::sync::Arc<Input>,
    id: u64,
    peer: String,
    held: Held,
}

impl Viewer {
    /// A key event.
    pub fn key(&mut self, down: bool, keysym: u32, qnum: Option<u32>) {
        self.held.keys = if down {
            self.held.keys.saturating_add(1)
        } else {
            self.held.keys.saturating_sub(1)
        };
        self.input.sink().key(down, keysym, qnum);
    }

    /// A pointer event on a `width` × `height` screen (coordinates outside it are clipped).
    pub fn pointer(&mut self, buttons: u8, x: u16, y: u16, width: u16, height: u16) {
        // Wheel "buttons" (4–7) are momentary: only 1–3 and 8 stay held.
        self.held.buttons = buttons & 0b1000_0111;
        self.input.sink().pointer(buttons, x, y, width, height);
    }

    /// Whether the viewer holds keys or buttons down.
    pub fn holds_anything(&self) -> bool {
        self.held.keys > 0 || self.held.buttons != 0
    }

    /// The viewer's number (unique per server).
    pub fn id(&self) -> u64 {
        self.id
    }

    /// The keyboard LEDs, see [`InputSink::leds`].
    pub fn leds(&self) -> Option<(u8, u64)> {
        self.input.leds()
    }
}

impl Drop for Viewer {
    fn drop(&mut self) {
        if self.holds_anything() {
            log::info!(
                "{}: left with keys or buttons down; releasing everything on the target",
                self.peer
            );
            self.input.sink().release_all();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[derive(Default)]
    struct Record(Arc<Mutex<Vec<String>>>);

    impl InputSink for Record {
        fn key(&mut self, down: bool, keysym: u32, qnum: Option<u32>) {
            self.0
                .lock()
                .unwrap()
                .push(format!("key {down} {keysym:#x} {qnum:?}"));
        }
        fn pointer(&mut self, buttons: u8, x: u16, y: u16, _w: u16, _h: u16) {
            self.0
                .lock()
                .unwrap()
                .push(format!("ptr {buttons} {x} {y}"));
        }
        fn release_all(&mut self) {
            self.0.lock().unwrap().push("release".into());
        }
    }

    #[test]
    fn a_viewer_leaving_with_keys_down_releases_everything() {
        let log = Arc::new(Mutex::new(Vec::new()));
        let input = Arc::new(Input::new(Box::new(Record(log.clone()))));
        {
            let mut a = input.viewer("a");
            a.key(true, 0xffe3, None);
            a.key(true, 0x61, Some(0x1e));
            a.key(false, 0x61, Some(0x1e));
            assert!(a.holds_anything());
        }
        {
            let mut b = input.viewer("b");
            b.key(true, 0x61, None);
            b.key(false, 0x61, None);
            b.pointer(0b1000, 1, 2, 10, 10); // a wheel step holds nothing
            assert!(!b.holds_anything());
        }
        {
            let mut c = input.viewer("c");
            c.pointer(1, 3, 4, 10, 10);
        }
        let got = log.lock().unwrap().clone();
        assert_eq!(
            got,
            [
                "key true 0xffe3 None",
                "key true 0x61 Some(30)",
                "key false 0x61 Some(30)",
                "release",
                "key true 0x61 None",
                "key false 0x61 None",
                "ptr 8 1 2",
                "ptr 1 3 4",
                "release",
            ]
        );
    }
}
