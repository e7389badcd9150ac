//! QEMU key numbers ("qnum", the XT keycodes of the QEMU extended key event) → USB HID usages
//! of the Keyboard/Keypad page (0x07).
//!
//! A qnum is a PS/2 scan code set 1 make code; an 0xE0-prefixed code is `0x80 | code`
//! (rfbproto, "QEMU Extended Key Event Message"; Print Screen is 0x54, with 0xB7 accepted as a
//! synonym, and Pause is 0xC6).
//!
//! Written by hand, not generated: the keys of the PC-AT set (0x01–0x59 and the 0xE0 keys) are
//! taken from the USB HID Usage Tables (HUT 1.5, chapter 10, Keyboard/Keypad page) together with
//! the set-1 make codes of Microsoft's *Keyboard Scan Code Specification* (appendix C, "USB HID
//! to PS/2 scan code translation table"). Keys outside that set (the Japanese and Brazilian
//! keys, F13–F24, the Sun-style Open, Front, Again, Undo, Cut, Copy, Paste, Find, Help, Stop
//! and Menu keys, Mute and Volume, Power) use QEMU's numbering, which differs from Microsoft's
//! for F13–F24 and Paste: the `AT set1 keycode` column of QEMU's keycodemapdb (the numbering
//! viewers use to compute qnums), mapped to the Keyboard-page usage the HUT gives that key.
//! Keys with no Keyboard-page usage (Consumer-page media and browser keys, Linefeed,
//! Hangul/Hanja, which QEMU has no number for) map to nothing. Every entry was compared with
//! keycodemapdb's `USB Keycodes` column (the Linux input mapping) and agrees with it.
//!
//! Set-1 code 0x2B is the key above Enter on ANSI keyboards (HUT 0x31 `\ |`) and the key left of
//! Enter on ISO keyboards (HUT 0x32, Non-US `# ~`); it maps to 0x31: Linux and Windows read 0x31
//! and 0x32 as that same key.

/// The highest usage this table gives outside the modifiers (0x94, LANG5): the keyboard report
/// descriptor's key array must accept at least 0..=`MAX_KEY_USAGE` (see [`super`]).
pub const MAX_KEY_USAGE: u8 = max_key_usage();

/// Keyboard-page usage of a QEMU key number, or `None` for numbers above 0xFF and keys without
/// a Keyboard-page usage.
pub fn usage(qnum: u32) -> Option<u8> {
    let index = usize::try_from(qnum).ok()?;
    match QNUM_TO_USAGE.get(index) {
        Some(&u) if u != 0 => Some(u),
        _ => None,
    }
}

/// Whether a usage is one of the eight modifiers (0xE0 LeftControl ..= 0xE7 Right GUI), which
/// the report carries as bits, not in the key array.
pub const fn is_modifier(usage: u8) -> bool {
    usage >= 0xE0 && usage <= 0xE7
}

const fn max_key_usage() -> u8 {
    let mut max = 0;
    let mut i = 0;
    while i < QNUM_TO_USAGE.len() {
        let u = QNUM_TO_USAGE[i];
        if !is_modifier(u) && u > max {
            max = u;
        }
        i += 1;
    }
    max
}

/// Index: qnum; value: usage, 0 for none.
pub(crate) static QNUM_TO_USAGE: [u8; 256] = {
    let mut t = [0u8; 256];
    // (qnum, usage), // key
    let pairs: &[(u8, u8)] = &[
        (0x01, 0x29), // Escape
        (0x02, 0x1E), // 1 !
        (0x03, 0x1F), // 2 @
        (0x04, 0x20), // 3 #
        (0x05, 0x21), // 4 $
        (0x06, 0x22), // 5 %
        (0x07, 0x23), // 6 ^
        (0x08, 0x24), // 7 &
        (0x09, 0x25), // 8 *
        (0x0A, 0x26), // 9 (
        (0x0B, 0x27), // 0 )
        (0x0C, 0x2D), // - _
        (0x0D, 0x2E), // = +
        (0x0E, 0x2A), // Backspace
        (0x0F, 0x2B), // Tab
        (0x10, 0x14), // Q
        (0x11, 0x1A), // W
        (0x12, 0x08), // E
        (0x13, 0x15), // R
        (0x14, 0x17), // T
        (0x15, 0x1C), // Y
        (0x16, 0x18), // U
        (0x17, 0x0C), // I
        (0x18, 0x12), // O
        (0x19, 0x13), // P
        (0x1A, 0x2F), // [ {
        (0x1B, 0x30), // ] }
        (0x1C, 0x28), // Enter
        (0x1D, 0xE0), // Left Control
        (0x1E, 0x04), // A
        (0x1F, 0x16), // S
        (0x20, 0x07), // D
        (0x21, 0x09), // F
        (0x22, 0x0A), // G
        (0x23, 0x0B), // H
        (0x24, 0x0D), // J
        (0x25, 0x0E), // K
        (0x26, 0x0F), // L
        (0x27, 0x33), // ; :
        (0x28, 0x34), // ' "
        (0x29, 0x35), // ` ~
        (0x2A, 0xE1), // Left Shift
        (0x2B, 0x31), // \ | (ISO: Non-US # ~, see the module docs)
        (0x2C, 0x1D), // Z
        (0x2D, 0x1B), // X
        (0x2E, 0x06), // C
        (0x2F, 0x19), // V
        (0x30, 0x05), // B
        (0x31, 0x11), // N
        (0x32, 0x10), // M
        (0x33, 0x36), // , <
        (0x34, 0x37), // . >
        (0x35, 0x38), // / ?
        (0x36, 0xE5), // Right Shift
        (0x37, 0x55), // Keypad *
        (0x38, 0xE2), // Left Alt
        (0x39, 0x2C), // Space
        (0x3A, 0x39), // Caps Lock
        (0x3B, 0x3A), // F1
        (0x3C, 0x3B), // F2
        (0x3D, 0x3C), // F3
        (0x3E, 0x3D), // F4
        (0x3F, 0x3E), // F5
        (0x40, 0x3F), // F6
        (0x41, 0x40), // F7
        (0x42, 0x41), // F8
        (0x43, 0x42), // F9
        (0x44, 0x43), // F10
        (0x45, 0x53), // Num Lock
        (0x46, 0x47), // Scroll Lock
        (0x47, 0x5F), // Keypad 7 Home
        (0x48, 0x60), // Keypad 8 Up
        (0x49, 0x61), // Keypad 9 PageUp
        (0x4A, 0x56), // Keypad -
        (0x4B, 0x5C), // Keypad 4 Left
        (0x4C, 0x5D), // Keypad 5
        (0x4D, 0x5E), // Keypad 6 Right
        (0x4E, 0x57), // Keypad +
        (0x4F, 0x59), // Keypad 1 End
        (0x50, 0x5A), // Keypad 2 Down
        (0x51, 0x5B), // Keypad 3 PageDown
        (0x52, 0x62), // Keypad 0 Insert
        (0x53, 0x63), // Keypad . Delete
        (0x54, 0x46), // Print Screen / SysRq (rfbproto: always 0x54)
        (0x55, 0x6B), // F16 (QEMU numbering)
        (0x56, 0x64), // Non-US \ | (the ISO key left of Z)
        (0x57, 0x44), // F11
        (0x58, 0x45), // F12
        (0x59, 0x67), // Keypad =
        (0x5A, 0x6F), // F20 (QEMU numbering)
        (0x5C, 0x8C), // International6 (Keypad JP comma)
        (0x5D, 0x68), // F13 (QEMU numbering)
        (0x5E, 0x69), // F14 (QEMU numbering)
        (0x5F, 0x6A), // F15 (QEMU numbering)
        (0x64, 0x74), // Execute (Sun Open; QEMU numbering)
        (0x65, 0x7D), // Paste (QEMU numbering)
        (0x6D, 0x72), // F23 (QEMU numbering)
        (0x6F, 0x73), // F24 (QEMU numbering)
        (0x70, 0x88), // International2 (Katakana/Hiragana)
        (0x73, 0x87), // International1 (Ro)
        (0x74, 0x70), // F21 (QEMU numbering)
        (0x76, 0x94), // LANG5 (Zenkaku/Hankaku)
        (0x77, 0x93), // LANG4 (Hiragana)
        (0x78, 0x92), // LANG3 (Katakana)
        (0x79, 0x8A), // International4 (Henkan)
        (0x7B, 0x8B), // International5 (Muhenkan)
        (0x7D, 0x89), // International3 (Yen)
        (0x7E, 0x85), // Keypad , (Brazilian keypad)
        (0x83, 0x6C), // F17 (QEMU numbering)
        (0x84, 0x6E), // F19 (QEMU numbering)
        (0x85, 0x79), // Again
        (0x87, 0x7A), // Undo
        (0x8C, 0x77), // Select (Sun Front)
        (0x9C, 0x58), // Keypad Enter
        (0x9D, 0xE4), // Right Control
        (0x9E, 0x76), // Menu
        (0xA0, 0x7F), // Mute
        (0xAE, 0x81), // Volume Down
        (0xB0, 0x80), // Volume Up
        (0xB5, 0x54), // Keypad /
        (0xB7, 0x46), // Print Screen (E0 37; rfbproto: accept as a synonym of 0x54)
        (0xB8, 0xE6), // Right Alt (AltGr)
        (0xBC, 0x7B), // Cut
        (0xC1, 0x7E), // Find
        (0xC6, 0x48), // Pause (rfbproto: always 0xC6)
        (0xC7, 0x4A), // Home
        (0xC8, 0x52), // Up
        (0xC9, 0x4B), // Page Up
        (0xCB, 0x50), // Left
        (0xCD, 0x4F), // Right
        (0xCF, 0x4D), // End
        (0xD0, 0x51), // Down
        (0xD1, 0x4E), // Page Down
        (0xD2, 0x49), // Insert
        (0xD3, 0x4C), // Delete
        (0xDB, 0xE3), // Left GUI
        (0xDC, 0xE7), // Right GUI
        (0xDD, 0x65), // Application (Menu key of PC keyboards)
        (0xDE, 0x66), // Power
        (0xE8, 0x78), // Stop
        (0xF5, 0x75), // Help
        (0xF7, 0x6D), // F18 (QEMU numbering)
        (0xF8, 0x7C), // Copy
        (0xF9, 0x71), // F22 (QEMU numbering)
    ];
    let mut i = 0;
    while i < pairs.len() {
        t[pairs[i].0 as usize] = pairs[i].1;
        i += 1;
    }
    t
};
