//! RFB input → USB HID reports: the keyboard and absolute pointer of a KVM-over-IP device.
//!
//! A viewer's KeyEvents (keysyms), QEMU extended key events (key numbers) and PointerEvents
//! become the input reports a USB keyboard and an absolute pointer send to the target
//! computer; the keyboard's LED output report becomes the QEMU LED State pseudo-encoding's
//! byte. Like the rest of the crate this does no I/O and no allocation and never panics: the
//! std driver writes the reports to `/dev/hidgN`, the firmware through embassy-usb.
//!
//! * [`Keyboard`]: [`key_keysym`](Keyboard::key_keysym) (RFB KeyEvent, typed on a [`Layout`]
//!   of the target computer), [`key_qnum`](Keyboard::key_qnum) (QEMU extended key event:
//!   layout-independent, preferred whenever the viewer sends it),
//!   [`release_all`](Keyboard::release_all); every event returns a [`KeyOutput`] with up to
//!   [`MAX_REPORTS_PER_EVENT`] reports to send in order and a [`KeyStatus`] (unknown keysyms
//!   are reported there, for the driver to log). Nothing is queued inside.
//! * [`Pointer`]: [`event`](Pointer::event) turns a PointerEvent and the framebuffer size into
//!   a [`PointerReport`] (or `None` when nothing changed).
//! * [`Leds`]: the keyboard output report; [`Leds::qemu_led_state`] for the viewer, and
//!   [`Keyboard::set_leds`] so that letters come out in the right case and keypad keys with
//!   the right NumLock state.
//! * [`layouts`]: keysym tables generated from QEMU's keymaps (32 layouts: `en-us`, `en-gb`,
//!   `de`, `fr`, …), each its own `static` so a firmware links only the one it names.
//! * [`scancode`]: QEMU key number → Keyboard-page usage.
//!
//! # Report formats (the contract with the report descriptors)
//!
//! The USB side declares descriptors that produce exactly these reports, without report IDs
//! (one interface per device).
//!
//! **Keyboard input report**, 8 bytes, the boot keyboard report (HID 1.11 appendix B.1):
//!
//! | byte | contents |
//! |---|---|
//! | 0 | modifiers: bit 0 LeftControl, 1 LeftShift, 2 LeftAlt, 3 Left GUI, 4 RightControl, 5 RightShift, 6 RightAlt, 7 Right GUI (usages 0xE0–0xE7, one bit each) |
//! | 1 | reserved, 0 |
//! | 2–7 | six key slots: Keyboard/Keypad page (0x07) usages of the keys down, 0 when empty; more than six keys down: ErrorRollOver (0x01) in all six |
//!
//! The key array's usage and logical range must include 0..=[`MAX_KEY_USAGE`] (0x94: the
//! International and LANG keys); the classic 0..=0x65 of HID's example descriptor would make
//! hosts drop the Japanese keys, F13–F24, Mute and Volume. Modifiers never appear in the array.
//!
//! **Keyboard output report** (host → device), 1 byte: LEDs, bit 0 NumLock, 1 CapsLock,
//! 2 ScrollLock, 3 Compose, 4 Kana, bits 5–7 padding ([`Leds::from_report`]).
//!
//! **Absolute pointer input report**, 7 bytes:
//!
//! | byte | contents |
//! |---|---|
//! | 0 | buttons: bit 0 left (button 1), 1 right (2), 2 middle (3), 3 back (4), 4 forward (5); bits 5–7 padding |
//! | 1–2 | X, u16 little-endian, 0..=32767 ([`ABS_MAX`]), Generic Desktop X, absolute |
//! | 3–4 | Y, u16 little-endian, 0..=32767, Generic Desktop Y, absolute |
//! | 5 | vertical wheel, i8 (−127..=127), Generic Desktop Wheel, relative; positive = away from the user (scroll up) |
//! | 6 | horizontal pan, i8, Consumer page AC Pan (0x0238), relative; positive = right |
//!
//! Each wheel or pan report carries one step per viewer "button" press (rfbproto buttons 4–7),
//! so the values sent are −1, 0 and 1.
//!
//! # Example
//!
//! ```
//! use rfb_core::hid::{Keyboard, KeyStatus, Leds, Modifiers, Pointer, layouts};
//!
//! let mut kbd = Keyboard::new();
//! // '@' on a German target is AltGr+Q: AltGr first, then the key
//! let out = kbd.key_keysym(true, 0x40, &layouts::DE);
//! let bytes: Vec<[u8; 8]> = out.reports().iter().map(|r| r.to_bytes()).collect();
//! assert_eq!(bytes, [[0x40, 0, 0, 0, 0, 0, 0, 0], [0x40, 0, 0x14, 0, 0, 0, 0, 0]]);
//! // its release lets go of the key and of the AltGr the user never pressed
//! let out = kbd.key_keysym(false, 0x40, &layouts::DE);
//! assert_eq!(out.reports()[0].to_bytes(), [0; 8]);
//!
//! // a keysym the layout cannot type is skipped and reported
//! let out = kbd.key_keysym(true, 0x0100_263A, &layouts::DE); // U+263A WHITE SMILING FACE
//! assert_eq!((out.status(), out.reports().len()), (KeyStatus::Unknown, 0));
//!
//! // QEMU extended key events name the key: 0x2A is left Shift, 0x1E the A key
//! let _ = kbd.key_qnum(true, 0x2A);
//! let out = kbd.key_qnum(true, 0x1E);
//! assert_eq!(out.reports()[0].modifiers, Modifiers::LEFT_SHIFT);
//! assert_eq!(out.reports()[0].keys, [0x04, 0, 0, 0, 0, 0]);
//! assert!(kbd.release_all().is_empty()); // the viewer went away
//!
//! // the host's LEDs (output report 0b010: CapsLock) for the viewer
//! assert_eq!(Leds::from_report(0b010).qemu_led_state(), 0b100);
//!
//! // a left click in the middle of a 1024×768 framebuffer
//! let mut pointer = Pointer::new();
//! let report = pointer.event(0b1, 512, 384, 1024, 768).unwrap();
//! assert_eq!(report.to_bytes(), [0x01, 0x0F, 0x40, 0x14, 0x40, 0, 0]); // X 0x400F, Y 0x4014
//! ```

mod keyboard;
pub mod layouts;
mod led;
mod pointer;
pub mod scancode;

#[cfg(test)]
mod tests;

pub use keyboard::{
    KeyOutput, KeyStatus, Keyboard, KeyboardReport, MAX_HELD, MAX_REPORTS_PER_EVENT, Modifiers,
};
pub use layouts::{Layout, Mapping, Need};
pub use led::Leds;
pub use pointer::{ABS_MAX, Pointer, PointerReport};
pub use scancode::MAX_KEY_USAGE;
