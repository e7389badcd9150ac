//! The sink of a server without a target computer: every key and click is logged.

use super::InputSink;

/// Logs input events (keys and button changes at info level, moves at debug).
#[derive(Debug, Default)]
pub struct LogSink {
    buttons: u8,
}

impl InputSink for LogSink {
    fn key(&mut self, down: bool, keysym: u32, qnum: Option<u32>) {
        let state = if down { "down" } else { "up" };
        match qnum {
            Some(q) => log::info!("key {} (scancode 0x{q:x}) {state}", keysym_name(keysym)),
            None => log::info!("key {} {state}", keysym_name(keysym)),
        }
    }

    fn pointer(&mut self, buttons: u8, x: u16, y: u16, _width: u16, _height: u16) {
        if buttons != self.buttons {
            log::info!("pointer buttons {buttons:#010b} at {x},{y}");
            self.buttons = buttons;
        } else {
            log::debug!("pointer at {x},{y}");
        }
    }

    fn release_all(&mut self) {
        self.buttons = 0;
        log::info!("all keys and buttons released");
    }
}

/// A keysym for the log: the character for printable Latin-1, else a name or the number.
pub fn keysym_name(k: u32) -> String {
    match k {
        0x20..=0x7e | 0xa0..=0xff => format!("{:?} (0x{k:04x})", char::from(k as u8)),
        0xff08 => "BackSpace".into(),
        0xff09 => "Tab".into(),
        0xff0d => "Return".into(),
        0xff1b => "Escape".into(),
        0xff51..=0xff54 => ["Left", "Up", "Right", "Down"][(k - 0xff51) as usize].into(),
        0xffe1 | 0xffe2 => "Shift".into(),
        0xffe3 | 0xffe4 => "Control".into(),
        0xffe9 | 0xffea => "Alt".into(),
        0xffff => "Delete".into(),
        0xffbe..=0xffc9 => format!("F{}", k - 0xffbe + 1),
        _ => format!("0x{k:04x}"),
    }
}
