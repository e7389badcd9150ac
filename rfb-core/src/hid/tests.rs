//! Tests of the HID translation: tables, the keyboard's report sequences, pointer, LEDs.

use super::layouts::{ALL, DE, EN_GB, EN_US, FR};
use super::*;
use proptest::prelude::*;

const NONE: Modifiers = Modifiers::NONE;
const LS: Modifiers = Modifiers::LEFT_SHIFT;
const RS: Modifiers = Modifiers::RIGHT_SHIFT;
const LC: Modifiers = Modifiers::LEFT_CTRL;
const RA: Modifiers = Modifiers::RIGHT_ALT;

// keysyms
const SHIFT_L: u32 = 0xFFE1;
const SHIFT_R: u32 = 0xFFE2;
const CONTROL_L: u32 = 0xFFE3;
const ISO_LEVEL3_SHIFT: u32 = 0xFE03;
const TAB: u32 = 0xFF09;
const ISO_LEFT_TAB: u32 = 0xFE20;
const KP_7: u32 = 0xFFB7;
const KP_HOME: u32 = 0xFF95;
const LINEFEED: u32 = 0xFF0A;

fn r(modifiers: Modifiers, keys: &[u8]) -> KeyboardReport {
    let mut report = KeyboardReport {
        modifiers,
        keys: [0; 6],
    };
    report.keys[..keys.len()].copy_from_slice(keys);
    report
}

/// Sends a keysym event and returns its reports (expecting `Done`).
fn key(kbd: &mut Keyboard, down: bool, keysym: u32, layout: &Layout) -> Vec<KeyboardReport> {
    let out = kbd.key_keysym(down, keysym, layout);
    assert_eq!(
        out.status(),
        KeyStatus::Done,
        "keysym {keysym:#x} down={down}"
    );
    out.reports().to_vec()
}

fn map(layout: &Layout, keysym: u32) -> (u8, Need, Need) {
    let m = layout
        .lookup(keysym)
        .unwrap_or_else(|| panic!("{}: no {keysym:#x}", layout.name()));
    (m.usage.expect("usage"), m.shift, m.altgr)
}

// ---------------------------------------------------------------------------------------------
// tables

#[test]
fn scancode_spot_checks() {
    assert_eq!(scancode::usage(0x1E), Some(0x04)); // A
    assert_eq!(scancode::usage(0x1C), Some(0x28)); // Enter
    assert_eq!(scancode::usage(0xC8), Some(0x52)); // E0 48: Up
    assert_eq!(scancode::usage(0x56), Some(0x64)); // Non-US \ |
    assert_eq!(scancode::usage(0x2B), Some(0x31)); // \ | (ISO: # ~)
    assert_eq!(scancode::usage(0x54), Some(0x46)); // Print Screen, rfbproto's code
    assert_eq!(scancode::usage(0xB7), Some(0x46)); // and its synonym
    assert_eq!(scancode::usage(0xC6), Some(0x48)); // Pause
    assert_eq!(scancode::usage(0x9C), Some(0x58)); // Keypad Enter
    assert_eq!(scancode::usage(0xB8), Some(0xE6)); // Right Alt
    assert_eq!(scancode::usage(0x73), Some(0x87)); // Ro
    assert_eq!(scancode::usage(0x5B), None); // Linefeed: no Keyboard-page usage
    assert_eq!(scancode::usage(0x00), None);
    assert_eq!(scancode::usage(0x100), None);
    assert_eq!(scancode::usage(u32::MAX), None);
    assert_eq!(MAX_KEY_USAGE, 0x94);
}

/// Every usage comes from one key only, except Print Screen's documented synonym; the
/// modifiers are exactly the eight modifier keys.
#[test]
fn scancode_table_is_one_to_one() {
    let mut seen = std::collections::HashMap::new();
    for q in 0..=0xFFu32 {
        let Some(u) = scancode::usage(q) else {
            continue;
        };
        if let Some(prev) = seen.insert(u, q) {
            assert_eq!(
                (prev, q),
                (0x54, 0xB7),
                "usage {u:#x} from {prev:#x} and {q:#x}"
            );
        }
    }
    let modifiers: Vec<u8> = (0xE0..=0xE7).collect();
    let mut mapped: Vec<u8> = seen.keys().copied().filter(|&u| u >= 0xE0).collect();
    mapped.sort();
    assert_eq!(mapped, modifiers);
}

/// Every key the layouts use has a usage (only Linefeed's key has none: no HID usage exists).
#[test]
fn every_layout_key_has_a_usage() {
    for layout in ALL {
        for q in layout.qnums() {
            assert!(
                scancode::usage(u32::from(q)).is_some() || q == 0x5B,
                "{}: key {q:#x} has no usage",
                layout.name()
            );
        }
    }
    assert_eq!(EN_US.lookup(LINEFEED).map(|m| m.usage), Some(None));
}

#[test]
fn tables_are_sorted_and_named() {
    assert!(ALL.len() >= 4);
    for pair in ALL.windows(2) {
        assert!(pair[0].name() < pair[1].name());
    }
    for layout in ALL {
        let keysyms: Vec<u32> = layout.keysyms().collect();
        assert!(keysyms.windows(2).all(|w| w[0] < w[1]), "{}", layout.name());
        assert!(layout.len() > 150, "{}: {}", layout.name(), layout.len());
        assert!(!layout.description().is_empty());
        assert_eq!(
            Layout::by_name(layout.name()).map(Layout::name),
            Some(layout.name())
        );
    }
    for name in ["en-us", "EN-GB", "de", "fr"] {
        assert!(Layout::by_name(name).is_some(), "{name}");
    }
    assert!(Layout::by_name("xx").is_none());
}

/// The flash the tables take (`cargo test -p rfb-core table_sizes -- --nocapture`).
#[test]
fn table_sizes() {
    let mut total = 0;
    for layout in ALL {
        println!(
            "{:6} {:4} keysyms {:5} bytes",
            layout.name(),
            layout.len(),
            layout.table_bytes()
        );
        assert_eq!(layout.table_bytes(), 6 * layout.len());
        assert!(layout.table_bytes() < 2048);
        total += layout.table_bytes();
    }
    let scancodes = core::mem::size_of_val(&scancode::QNUM_TO_USAGE);
    println!(
        "all {} layouts: {total} bytes; scancode table: {scancodes} bytes",
        ALL.len()
    );
    assert_eq!(scancodes, 256);
}

#[test]
fn layout_spot_checks() {
    use Need::{Any, Off, On};
    // us
    assert_eq!(map(&EN_US, '@' as u32), (0x1F, On, Any)); // Shift+2
    assert_eq!(map(&EN_US, 'a' as u32), (0x04, Off, Any));
    assert_eq!(map(&EN_US, 'A' as u32), (0x04, On, Any));
    assert_eq!(map(&EN_US, '1' as u32), (0x1E, Off, Any));
    assert_eq!(map(&EN_US, '<' as u32), (0x36, On, Any)); // Shift+comma, not the ISO key
    assert_eq!(map(&EN_US, '|' as u32), (0x31, On, Any));
    assert_eq!(map(&EN_US, TAB), (0x2B, Any, Any)); // Shift+Tab stays Shift+Tab
    assert_eq!(map(&EN_US, ISO_LEFT_TAB), (0x2B, On, Any));
    assert_eq!(map(&EN_US, 0xFF52), (0x52, Any, Any)); // Up
    assert_eq!(map(&EN_US, ' ' as u32), (0x2C, Any, Any));
    // gb
    assert_eq!(map(&EN_GB, '@' as u32), (0x34, On, Any)); // Shift+'
    assert_eq!(map(&EN_GB, '"' as u32), (0x1F, On, Off)); // Shift+2
    assert_eq!(map(&EN_GB, '#' as u32), (0x31, Off, Any)); // the ISO key left of Enter
    assert_eq!(map(&EN_GB, '\\' as u32), (0x64, Off, Off)); // the ISO key left of Z
    assert_eq!(map(&EN_GB, 0xA3), (0x20, On, Any)); // £ = Shift+3
    // de
    assert_eq!(map(&DE, 'z' as u32), (0x1C, Off, Off)); // the Y key
    assert_eq!(map(&DE, 'y' as u32), (0x1D, Off, Off)); // the Z key
    assert_eq!(map(&DE, '@' as u32), (0x14, Off, On)); // AltGr+Q
    assert_eq!(map(&DE, 0xDF), (0x2D, Off, Off)); // ß on the - key
    assert_eq!(map(&DE, 0xE4), (0x34, Off, Off)); // ä
    assert_eq!(map(&DE, 0x20AC), (0x08, Any, On)); // € = AltGr+E
    assert_eq!(map(&DE, '<' as u32), (0x64, Off, Off));
    assert_eq!(map(&DE, '|' as u32), (0x64, Any, On)); // AltGr+<
    // fr
    assert_eq!(map(&FR, 'a' as u32), (0x14, Off, Off)); // the Q key
    assert_eq!(map(&FR, 'q' as u32), (0x04, Off, Off)); // the A key
    assert_eq!(map(&FR, '1' as u32), (0x1E, On, Off)); // Shift+&
    assert_eq!(map(&FR, '&' as u32), (0x1E, Off, Off));
    assert_eq!(map(&FR, '!' as u32), (0x38, Off, Any)); // unshifted, Shift gives §
    assert_eq!(map(&FR, '@' as u32), (0x27, Off, On)); // AltGr+à
    assert_eq!(map(&FR, 0xE9), (0x1F, Off, Off)); // é
    assert!(EN_US.lookup(0x0100_263A).is_none());
}

#[test]
fn caps_and_numlock_flags() {
    let a = EN_US.lookup('a' as u32).unwrap();
    assert!(a.caps);
    assert!(!EN_US.lookup('1' as u32).unwrap().caps);
    assert!(DE.lookup(0xE4).unwrap().caps); // ä/Ä are a case pair
    assert!(!FR.lookup('1' as u32).unwrap().caps); // digits are not letters
    assert_eq!(EN_US.lookup(KP_7).unwrap().numlock, Need::On);
    assert_eq!(EN_US.lookup(KP_HOME).unwrap().numlock, Need::Off);
    assert_eq!(EN_US.lookup(0xFF50).unwrap().numlock, Need::Any); // Home
}

#[test]
fn unicode_latin1_keysyms_are_the_legacy_ones() {
    assert_eq!(EN_US.lookup(0x0100_0061), EN_US.lookup('a' as u32));
    assert_eq!(DE.lookup(0x0100_00DF), DE.lookup(0xDF));
    let mut kbd = Keyboard::new();
    assert_eq!(key(&mut kbd, true, 0x0100_0061, &EN_US), [r(NONE, &[0x04])]);
    assert_eq!(
        key(&mut kbd, false, 'a' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
}

// ---------------------------------------------------------------------------------------------
// keyboard: report sequences

#[test]
fn report_bytes() {
    let report = r(LS | RA, &[0x04, 0x05]);
    assert_eq!(report.to_bytes(), [0x42, 0, 0x04, 0x05, 0, 0, 0, 0]);
    assert_eq!(KeyboardReport::from_bytes(report.to_bytes()), report);
    assert_eq!(KeyboardReport::EMPTY.to_bytes(), [0; 8]);
    assert_eq!(Modifiers::from_usage(0xE0), Some(LC));
    assert_eq!(Modifiers::from_usage(0xE7), Some(Modifiers::RIGHT_GUI));
    assert_eq!(Modifiers::from_usage(0x04), None);
}

#[test]
fn plain_keys_and_modifier_keysyms() {
    let mut kbd = Keyboard::new();
    assert_eq!(key(&mut kbd, true, CONTROL_L, &EN_US), [r(LC, &[])]);
    assert_eq!(key(&mut kbd, true, 'c' as u32, &EN_US), [r(LC, &[0x06])]);
    assert_eq!(key(&mut kbd, false, 'c' as u32, &EN_US), [r(LC, &[])]);
    assert_eq!(
        key(&mut kbd, false, CONTROL_L, &EN_US),
        [KeyboardReport::EMPTY]
    );
    // every modifier keysym lands on its bit
    for (keysym, bit) in [
        (0xFFE1, LS),
        (0xFFE2, RS),
        (0xFFE3, LC),
        (0xFFE4, Modifiers::RIGHT_CTRL),
        (0xFFE7, Modifiers::LEFT_GUI),  // Meta_L
        (0xFFE8, Modifiers::RIGHT_GUI), // Meta_R
        (0xFFE9, Modifiers::LEFT_ALT),
        (0xFFEA, RA),
        (0xFFEB, Modifiers::LEFT_GUI),  // Super_L
        (0xFFEC, Modifiers::RIGHT_GUI), // Super_R
        (ISO_LEVEL3_SHIFT, RA),
        (0xFF7E, RA), // Mode_switch
    ] {
        for layout in [&EN_US, &EN_GB, &DE, &FR] {
            assert_eq!(
                key(&mut kbd, true, keysym, layout),
                [r(bit, &[])],
                "{keysym:#x}"
            );
            assert_eq!(
                key(&mut kbd, false, keysym, layout),
                [KeyboardReport::EMPTY]
            );
        }
    }
}

/// A keysym that needs Shift the user does not hold: Shift first, then the key; the release
/// restores the user's (empty) modifiers.
#[test]
fn shift_added_for_the_key() {
    let mut kbd = Keyboard::new();
    assert_eq!(
        key(&mut kbd, true, 'A' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x04])]
    );
    assert_eq!(
        key(&mut kbd, false, 'A' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
    // us '@' = Shift+2, gb '@' = Shift+'
    assert_eq!(
        key(&mut kbd, true, '@' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x1F])]
    );
    assert_eq!(
        key(&mut kbd, false, '@' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
    assert_eq!(
        key(&mut kbd, true, '@' as u32, &EN_GB),
        [r(LS, &[]), r(LS, &[0x34])]
    );
    assert_eq!(
        key(&mut kbd, false, '@' as u32, &EN_GB),
        [KeyboardReport::EMPTY]
    );
    // fr '1' = Shift+&
    assert_eq!(
        key(&mut kbd, true, '1' as u32, &FR),
        [r(LS, &[]), r(LS, &[0x1E])]
    );
    assert_eq!(
        key(&mut kbd, false, '1' as u32, &FR),
        [KeyboardReport::EMPTY]
    );
    // already held: nothing to adjust
    assert_eq!(key(&mut kbd, true, SHIFT_R, &FR), [r(RS, &[])]);
    assert_eq!(key(&mut kbd, true, '1' as u32, &FR), [r(RS, &[0x1E])]);
    assert_eq!(key(&mut kbd, false, '1' as u32, &FR), [r(RS, &[])]);
}

/// A keysym that must not have the Shift the user holds: Shift lifted for the key, put back
/// on its release.
#[test]
fn shift_removed_for_the_key() {
    let mut kbd = Keyboard::new();
    assert_eq!(key(&mut kbd, true, SHIFT_L, &EN_US), [r(LS, &[])]);
    assert_eq!(
        key(&mut kbd, true, '1' as u32, &EN_US),
        [r(NONE, &[]), r(NONE, &[0x1E])]
    );
    assert_eq!(key(&mut kbd, false, '1' as u32, &EN_US), [r(LS, &[])]);
    // fr '!' is unshifted (Shift gives §)
    assert_eq!(
        key(&mut kbd, true, '!' as u32, &FR),
        [r(NONE, &[]), r(NONE, &[0x38])]
    );
    assert_eq!(key(&mut kbd, false, '!' as u32, &FR), [r(LS, &[])]);
    // keys whose keysym ignores Shift keep it: Shift+Tab, Shift+Up
    assert_eq!(key(&mut kbd, true, TAB, &EN_US), [r(LS, &[0x2B])]);
    assert_eq!(key(&mut kbd, false, TAB, &EN_US), [r(LS, &[])]);
    assert_eq!(key(&mut kbd, true, 0xFF52, &DE), [r(LS, &[0x52])]);
    assert_eq!(key(&mut kbd, false, 0xFF52, &DE), [r(LS, &[])]);
    assert_eq!(
        key(&mut kbd, false, SHIFT_L, &EN_US),
        [KeyboardReport::EMPTY]
    );
    // ISO_Left_Tab is Shift+Tab
    assert_eq!(
        key(&mut kbd, true, ISO_LEFT_TAB, &EN_US),
        [r(LS, &[]), r(LS, &[0x2B])]
    );
}

#[test]
fn altgr_added_and_removed() {
    let mut kbd = Keyboard::new();
    // de '@' = AltGr+Q
    assert_eq!(
        key(&mut kbd, true, '@' as u32, &DE),
        [r(RA, &[]), r(RA, &[0x14])]
    );
    assert_eq!(
        key(&mut kbd, false, '@' as u32, &DE),
        [KeyboardReport::EMPTY]
    );
    // with AltGr held nothing is adjusted
    assert_eq!(key(&mut kbd, true, ISO_LEVEL3_SHIFT, &DE), [r(RA, &[])]);
    assert_eq!(key(&mut kbd, true, '@' as u32, &DE), [r(RA, &[0x14])]);
    assert_eq!(key(&mut kbd, false, '@' as u32, &DE), [r(RA, &[])]);
    // 'q' must not have it (AltGr+Q is '@')
    assert_eq!(
        key(&mut kbd, true, 'q' as u32, &DE),
        [r(NONE, &[]), r(NONE, &[0x14])]
    );
    assert_eq!(key(&mut kbd, false, 'q' as u32, &DE), [r(RA, &[])]);
    assert_eq!(
        key(&mut kbd, false, ISO_LEVEL3_SHIFT, &DE),
        [KeyboardReport::EMPTY]
    );
    // de 'ß' needs neither; fr '@' = AltGr+à
    assert_eq!(key(&mut kbd, true, 0xDF, &DE), [r(NONE, &[0x2D])]);
    assert_eq!(key(&mut kbd, false, 0xDF, &DE), [KeyboardReport::EMPTY]);
    assert_eq!(
        key(&mut kbd, true, '@' as u32, &FR),
        [r(RA, &[]), r(RA, &[0x27])]
    );
    assert_eq!(
        key(&mut kbd, false, '@' as u32, &FR),
        [KeyboardReport::EMPTY]
    );
}

/// Fast typing overlaps keys: the newest press decides the modifiers.
#[test]
fn overlapping_keys() {
    let mut kbd = Keyboard::new();
    assert_eq!(
        key(&mut kbd, true, 'A' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x04])]
    );
    assert_eq!(
        key(&mut kbd, true, 'b' as u32, &EN_US),
        [r(NONE, &[0x04]), r(NONE, &[0x04, 0x05])]
    );
    assert_eq!(key(&mut kbd, false, 'A' as u32, &EN_US), [r(NONE, &[0x05])]);
    assert_eq!(
        key(&mut kbd, true, 'C' as u32, &EN_US),
        [r(LS, &[0x05]), r(LS, &[0x05, 0x06])]
    );
    assert_eq!(key(&mut kbd, false, 'C' as u32, &EN_US), [r(NONE, &[0x05])]);
    assert_eq!(
        key(&mut kbd, false, 'b' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
}

/// A modifier key going up or down ends the adjustment; the release still lets go of the
/// usage the press used.
#[test]
fn modifier_changes_while_adjusted() {
    let mut kbd = Keyboard::new();
    assert_eq!(
        key(&mut kbd, true, 'A' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x04])]
    );
    assert_eq!(key(&mut kbd, true, CONTROL_L, &EN_US), [r(LC, &[0x04])]);
    assert_eq!(key(&mut kbd, false, 'A' as u32, &EN_US), [r(LC, &[])]);
    assert_eq!(
        key(&mut kbd, false, CONTROL_L, &EN_US),
        [KeyboardReport::EMPTY]
    );

    assert_eq!(
        key(&mut kbd, true, 'A' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x04])]
    );
    assert_eq!(key(&mut kbd, true, SHIFT_R, &EN_US), [r(RS, &[0x04])]);
    assert_eq!(key(&mut kbd, false, SHIFT_R, &EN_US), [r(NONE, &[0x04])]);
    assert_eq!(
        key(&mut kbd, false, 'A' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
}

/// Viewers may release another keysym of the same key (`a` down, Shift down, `A` up).
#[test]
fn release_by_another_keysym_of_the_key() {
    let mut kbd = Keyboard::new();
    assert_eq!(key(&mut kbd, true, 'a' as u32, &EN_US), [r(NONE, &[0x04])]);
    assert_eq!(key(&mut kbd, true, SHIFT_L, &EN_US), [r(LS, &[0x04])]);
    assert_eq!(key(&mut kbd, false, 'A' as u32, &EN_US), [r(LS, &[])]);
    assert_eq!(
        key(&mut kbd, false, SHIFT_L, &EN_US),
        [KeyboardReport::EMPTY]
    );
    let out = kbd.key_keysym(false, 'a' as u32, &EN_US);
    assert_eq!((out.status(), out.reports()), (KeyStatus::NotHeld, &[][..]));
}

#[test]
fn ctrl_shift_letter() {
    let mut kbd = Keyboard::new();
    assert_eq!(key(&mut kbd, true, CONTROL_L, &EN_US), [r(LC, &[])]);
    assert_eq!(key(&mut kbd, true, SHIFT_L, &EN_US), [r(LC | LS, &[])]);
    assert_eq!(
        key(&mut kbd, true, 'T' as u32, &EN_US),
        [r(LC | LS, &[0x17])]
    );
}

#[test]
fn capslock_known_types_the_right_case() {
    let mut kbd = Keyboard::new();
    kbd.set_leds(Leds::from_report(Leds::CAPS_LOCK));
    assert_eq!(key(&mut kbd, true, 'A' as u32, &EN_US), [r(NONE, &[0x04])]);
    assert_eq!(
        key(&mut kbd, false, 'A' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
    assert_eq!(
        key(&mut kbd, true, 'a' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x04])]
    );
    assert_eq!(
        key(&mut kbd, false, 'a' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
    assert_eq!(key(&mut kbd, true, 0xC4, &DE), [r(NONE, &[0x34])]); // Ä
    assert_eq!(key(&mut kbd, false, 0xC4, &DE), [KeyboardReport::EMPTY]);
    // CapsLock does not touch digits
    assert_eq!(key(&mut kbd, true, '1' as u32, &EN_US), [r(NONE, &[0x1E])]);
    assert_eq!(
        key(&mut kbd, false, '1' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
}

#[test]
fn numlock_toggled_for_keypad_keysyms_when_known() {
    // unknown LED state: sent as is
    let mut kbd = Keyboard::new();
    assert_eq!(key(&mut kbd, true, KP_7, &EN_US), [r(NONE, &[0x5F])]);
    assert_eq!(key(&mut kbd, false, KP_7, &EN_US), [KeyboardReport::EMPTY]);

    kbd.set_leds(Leds::from_report(0));
    let tap = [r(NONE, &[0x53]), KeyboardReport::EMPTY];
    assert_eq!(
        key(&mut kbd, true, KP_7, &EN_US),
        [tap[0], tap[1], r(NONE, &[0x5F])]
    );
    assert_eq!(kbd.leds().map(Leds::num_lock), Some(true));
    assert_eq!(key(&mut kbd, false, KP_7, &EN_US), [KeyboardReport::EMPTY]);
    assert_eq!(key(&mut kbd, true, KP_7, &EN_US), [r(NONE, &[0x5F])]);
    assert_eq!(key(&mut kbd, false, KP_7, &EN_US), [KeyboardReport::EMPTY]);
    // KP_Home needs NumLock off
    assert_eq!(
        key(&mut kbd, true, KP_HOME, &EN_US),
        [tap[0], tap[1], r(NONE, &[0x5F])]
    );
    assert_eq!(kbd.leds().map(Leds::num_lock), Some(false));
}

/// The longest event: a NumLock press and release, a modifier change and the key.
#[test]
fn longest_event_fits() {
    let mut kbd = Keyboard::new();
    kbd.set_leds(Leds::from_report(0));
    assert_eq!(
        key(&mut kbd, true, 'A' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x04])]
    );
    let reports = key(&mut kbd, true, KP_7, &EN_US);
    assert_eq!(
        reports,
        [
            r(LS, &[0x04, 0x53]),
            r(LS, &[0x04]),
            r(NONE, &[0x04]),
            r(NONE, &[0x04, 0x5F])
        ]
    );
    assert_eq!(reports.len(), MAX_REPORTS_PER_EVENT);
}

#[test]
fn rollover_past_six_keys() {
    let mut kbd = Keyboard::new();
    key(&mut kbd, true, SHIFT_L, &EN_US);
    for (i, c) in "abcdef".chars().enumerate() {
        let reports = key(&mut kbd, true, c.to_ascii_uppercase() as u32, &EN_US);
        assert_eq!(reports.last().unwrap().usages().count(), i + 1);
    }
    let reports = key(&mut kbd, true, 'G' as u32, &EN_US);
    assert_eq!(reports, [r(LS, &[0x01; 6])]);
    assert!(reports[0].is_rollover());
    // an eighth key: still rolled over, nothing to send
    let out = kbd.key_qnum(true, 0x0F); // Tab
    assert_eq!((out.status(), out.reports()), (KeyStatus::Done, &[][..]));
    let out = kbd.key_qnum(false, 0x0F);
    assert_eq!((out.status(), out.reports()), (KeyStatus::Done, &[][..]));
    assert_eq!(
        key(&mut kbd, false, 'G' as u32, &EN_US),
        [r(LS, &[4, 5, 6, 7, 8, 9])]
    );
    assert_eq!(
        key(&mut kbd, false, 'A' as u32, &EN_US),
        [r(LS, &[5, 6, 7, 8, 9])]
    );
}

/// A press of a key that is already down through another event takes it over: the host sees
/// it go up and down again, and one release lets go of it.
#[test]
fn press_of_a_held_key_is_a_fresh_press() {
    let mut kbd = Keyboard::new();
    assert_eq!(key(&mut kbd, true, 'a' as u32, &EN_US), [r(NONE, &[0x04])]);
    assert_eq!(key(&mut kbd, true, SHIFT_L, &EN_US), [r(LS, &[0x04])]);
    assert_eq!(
        key(&mut kbd, true, 'A' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x04])]
    );
    assert_eq!(key(&mut kbd, false, 'a' as u32, &EN_US), [r(LS, &[])]);
    assert_eq!(
        kbd.key_keysym(false, 'A' as u32, &EN_US).status(),
        KeyStatus::NotHeld
    );
    assert_eq!(
        key(&mut kbd, false, SHIFT_L, &EN_US),
        [KeyboardReport::EMPTY]
    );
    // the same through an extended key event
    assert_eq!(key(&mut kbd, true, 'a' as u32, &EN_US), [r(NONE, &[0x04])]);
    let out = kbd.key_qnum(true, 0x1E);
    assert_eq!(out.reports(), [KeyboardReport::EMPTY, r(NONE, &[0x04])]);
    assert_eq!(kbd.key_qnum(false, 0x1E).reports(), [KeyboardReport::EMPTY]);
    // while rolled over the takeover is a release and a press of the seventh key
    for c in "bcdefgh".chars() {
        key(&mut kbd, true, c as u32, &EN_US);
    }
    assert!(kbd.report().is_rollover());
    let out = kbd.key_qnum(true, 0x30); // B
    assert_eq!(
        out.reports(),
        [r(NONE, &[6, 7, 8, 9, 10, 11]), r(NONE, &[1; 6])]
    );
    let _ = kbd.release_all();
    // modifiers held twice stay down until both are released
    assert_eq!(key(&mut kbd, true, SHIFT_L, &EN_US), [r(LS, &[])]);
    assert_eq!(kbd.key_qnum(true, 0x2A).reports(), []);
    assert_eq!(key(&mut kbd, false, SHIFT_L, &EN_US), []);
    assert_eq!(kbd.key_qnum(false, 0x2A).reports(), [KeyboardReport::EMPTY]);
}

#[test]
fn auto_repeat_fills_nothing() {
    let mut kbd = Keyboard::new();
    assert_eq!(key(&mut kbd, true, 'x' as u32, &EN_US), [r(NONE, &[0x1B])]);
    for _ in 0..100 {
        let out = kbd.key_keysym(true, 'x' as u32, &EN_US);
        assert_eq!((out.status(), out.reports()), (KeyStatus::Repeat, &[][..]));
        let out = kbd.key_qnum(true, 0x2A);
        assert!(out.status() == KeyStatus::Repeat || out.reports() == [r(LS, &[0x1B])]);
    }
    let _ = kbd.key_qnum(false, 0x2A);
    assert_eq!(
        key(&mut kbd, false, 'x' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
    let out = kbd.key_keysym(false, 'x' as u32, &EN_US);
    assert_eq!(out.status(), KeyStatus::NotHeld);
}

#[test]
fn unknown_keysyms_and_keys_are_reported() {
    let mut kbd = Keyboard::new();
    for keysym in [0x0100_263A, 0, LINEFEED, u32::MAX, 0x1008_FF11] {
        let out = kbd.key_keysym(true, keysym, &EN_US);
        assert_eq!((out.status(), out.reports()), (KeyStatus::Unknown, &[][..]));
        assert_eq!(
            kbd.key_keysym(false, keysym, &EN_US).status(),
            KeyStatus::NotHeld
        );
    }
    for qnum in [0, 0x5B, 0xFF, 0x100, 0x1E | 0x100, u32::MAX] {
        let out = kbd.key_qnum(true, qnum);
        assert_eq!((out.status(), out.reports()), (KeyStatus::Unknown, &[][..]));
    }
    assert!(kbd.report().is_empty());
}

#[test]
fn qnum_path_sends_keys_as_they_are() {
    let mut kbd = Keyboard::new();
    let q = |kbd: &mut Keyboard, down, qnum| {
        let out = kbd.key_qnum(down, qnum);
        assert_eq!(out.status(), KeyStatus::Done);
        out.reports().to_vec()
    };
    assert_eq!(q(&mut kbd, true, 0xB8), [r(RA, &[])]); // AltGr
    assert_eq!(q(&mut kbd, true, 0x10), [r(RA, &[0x14])]); // Q: '@' on de, whatever the layout
    assert_eq!(q(&mut kbd, false, 0x10), [r(RA, &[])]);
    assert_eq!(q(&mut kbd, false, 0xB8), [KeyboardReport::EMPTY]);
    assert_eq!(q(&mut kbd, true, 0xC8), [r(NONE, &[0x52])]); // Up
    assert_eq!(q(&mut kbd, true, 0x54), [r(NONE, &[0x52, 0x46])]); // Print Screen
    assert_eq!(q(&mut kbd, false, 0x54), [r(NONE, &[0x52])]);
    assert_eq!(q(&mut kbd, false, 0xC8), [KeyboardReport::EMPTY]);
    assert_eq!(kbd.key_qnum(false, 0xC8).status(), KeyStatus::NotHeld);
    // a qnum press ends a keysym press's adjustment; releases find their own kind
    assert_eq!(
        key(&mut kbd, true, 'A' as u32, &EN_US),
        [r(LS, &[]), r(LS, &[0x04])]
    );
    assert_eq!(
        q(&mut kbd, true, 0x30),
        [r(NONE, &[0x04]), r(NONE, &[0x04, 0x05])]
    );
    assert_eq!(
        kbd.key_keysym(false, 'b' as u32, &EN_US).status(),
        KeyStatus::NotHeld
    );
    assert_eq!(q(&mut kbd, false, 0x30), [r(NONE, &[0x04])]);
    assert_eq!(
        key(&mut kbd, false, 'A' as u32, &EN_US),
        [KeyboardReport::EMPTY]
    );
}

#[test]
fn release_all_gives_the_empty_report() {
    let mut kbd = Keyboard::new();
    key(&mut kbd, true, CONTROL_L, &DE);
    key(&mut kbd, true, '@' as u32, &DE);
    let _ = kbd.key_qnum(true, 0x1E);
    assert!(!kbd.report().is_empty());
    assert_eq!(kbd.release_all(), KeyboardReport::EMPTY);
    assert!(kbd.report().is_empty());
    assert_eq!(
        kbd.key_keysym(false, '@' as u32, &DE).status(),
        KeyStatus::NotHeld
    );
    assert_eq!(kbd.key_qnum(false, 0x1E).status(), KeyStatus::NotHeld);
    // and it starts afresh
    assert_eq!(key(&mut kbd, true, 'a' as u32, &DE), [r(NONE, &[0x04])]);
}

#[test]
fn presses_past_max_held_are_dropped() {
    let mut kbd = Keyboard::new();
    let qnums: Vec<u32> = (0x10..0x10 + MAX_HELD as u32 + 1).collect();
    for (i, &q) in qnums.iter().enumerate() {
        let status = kbd.key_qnum(true, q).status();
        let expected = if i < MAX_HELD {
            KeyStatus::Done
        } else {
            KeyStatus::TooManyKeys
        };
        assert_eq!(status, expected, "{q:#x}");
    }
    assert_eq!(
        kbd.key_keysym(true, 'z' as u32, &EN_US).status(),
        KeyStatus::TooManyKeys
    );
    for &q in &qnums {
        let _ = kbd.key_qnum(false, q);
    }
    assert!(kbd.report().is_empty());
}

// ---------------------------------------------------------------------------------------------
// pointer, LEDs

#[test]
fn pointer_scaling_and_clipping() {
    let mut p = Pointer::new();
    let xy = |p: &mut Pointer, x, y, w, h| {
        let _ = p.release_all();
        let r = p.event(1, x, y, w, h).unwrap();
        (r.x, r.y)
    };
    assert_eq!(xy(&mut p, 0, 0, 1024, 768), (0, 0));
    assert_eq!(xy(&mut p, 1023, 767, 1024, 768), (ABS_MAX, ABS_MAX));
    assert_eq!(xy(&mut p, 5000, 800, 1024, 768), (ABS_MAX, ABS_MAX)); // clipped
    assert_eq!(xy(&mut p, 1, 1, 3, 3), (16383, 16383));
    assert_eq!(xy(&mut p, 9, 9, 0, 0), (0, 0)); // no framebuffer
    assert_eq!(xy(&mut p, 9, 9, 1, 1), (0, 0));
    assert_eq!(
        xy(&mut p, u16::MAX, u16::MAX, u16::MAX, u16::MAX),
        (ABS_MAX, ABS_MAX)
    );
    assert_eq!(xy(&mut p, u16::MAX - 1, 0, u16::MAX, 2), (ABS_MAX, 0));
}

#[test]
fn pointer_buttons_wheel_and_bytes() {
    let mut p = Pointer::new();
    let (w, h) = (800, 600);
    let r = p.event(0b0000_0111, 0, 0, w, h).unwrap(); // left, middle, right
    assert_eq!(
        r.buttons,
        PointerReport::LEFT | PointerReport::MIDDLE | PointerReport::RIGHT
    );
    assert_eq!(p.event(0b0000_0111, 0, 0, w, h), None); // nothing changed
    assert_eq!(
        p.event(0b0000_0010, 0, 0, w, h).unwrap().buttons,
        PointerReport::MIDDLE
    );
    assert_eq!(
        p.event(0b1000_0000, 0, 0, w, h).unwrap().buttons,
        PointerReport::BACK
    );
    assert_eq!(p.event(0, 0, 0, w, h).unwrap().buttons, 0);
    // one wheel step per press: down (bit 4) pressed, held, released, pressed again
    let r = p.event(0b0001_0000, 0, 0, w, h).unwrap();
    assert_eq!((r.wheel, r.pan, r.buttons), (-1, 0, 0));
    assert_eq!(p.event(0b0001_0000, 0, 0, w, h), None);
    assert_eq!(p.event(0, 0, 0, w, h), None);
    assert_eq!(p.event(0b0001_0000, 0, 0, w, h).unwrap().wheel, -1);
    assert_eq!(p.event(0b0000_1000, 0, 0, w, h).unwrap().wheel, 1); // up
    assert_eq!(p.event(0b0010_0000, 0, 0, w, h).unwrap().pan, -1); // left
    assert_eq!(p.event(0b0100_0000, 0, 0, w, h).unwrap().pan, 1); // right
    // up and down pressed together cancel out: nothing to send
    assert_eq!(p.event(0b0001_1000, 0, 0, w, h), None);
    // movement
    let r = p.event(0, 799, 0, w, h).unwrap();
    assert_eq!(r.to_bytes(), [0, 0xFF, 0x7F, 0, 0, 0, 0]);
    let r = p.event(0b0000_1001, 0, 599, w, h).unwrap();
    assert_eq!(r.to_bytes(), [1, 0, 0, 0xFF, 0x7F, 1, 0]);
    let r = p.event(0b0001_0001, 0, 599, w, h).unwrap();
    assert_eq!(r.to_bytes(), [1, 0, 0, 0xFF, 0x7F, 0xFF, 0]); // wheel −1
    // release_all keeps the position
    assert_eq!(p.release_all().to_bytes(), [0, 0, 0, 0xFF, 0x7F, 0, 0]);
}

#[test]
fn pointer_extended_buttons() {
    let mut p = Pointer::new();
    let r = p
        .event_extended(0b1000_0001, 0b10, 10, 10, 100, 100)
        .unwrap();
    assert_eq!(r.buttons, PointerReport::LEFT | PointerReport::FORWARD);
    let r = p
        .event_extended(0b1000_0000, 0b01, 10, 10, 100, 100)
        .unwrap();
    assert_eq!(r.buttons, PointerReport::BACK);
    // a normal message after extended ones: bit 7 is back again, forward up
    let r = p.event(0b1000_0000, 10, 10, 100, 100);
    assert_eq!(r, None);
    assert_eq!(p.event(0, 10, 10, 100, 100).unwrap().buttons, 0);
}

#[test]
fn leds_to_qemu_state() {
    assert_eq!(Leds::from_report(0).qemu_led_state(), 0);
    assert_eq!(Leds::from_report(Leds::NUM_LOCK).qemu_led_state(), 0b010);
    assert_eq!(Leds::from_report(Leds::CAPS_LOCK).qemu_led_state(), 0b100);
    assert_eq!(Leds::from_report(Leds::SCROLL_LOCK).qemu_led_state(), 0b001);
    assert_eq!(Leds::from_report(0xFF).qemu_led_state(), 0b111);
    assert_eq!(Leds::from_report(0xFF).bits(), 0x1F);
    assert_eq!(
        Leds::from_report(Leds::COMPOSE | Leds::KANA).qemu_led_state(),
        0
    );
    let leds = Leds::from_report(Leds::CAPS_LOCK);
    assert!(leds.caps_lock() && !leds.num_lock() && !leds.scroll_lock());
    assert!(leds.with_num_lock(true).num_lock());
    assert_eq!(leds.with_num_lock(true).with_num_lock(false), leds);
}

// ---------------------------------------------------------------------------------------------
// properties

#[derive(Debug, Clone)]
enum Event {
    Keysym {
        down: bool,
        keysym: u32,
        layout: usize,
    },
    Qnum {
        down: bool,
        qnum: u32,
    },
    Leds(u8),
}

fn interesting_keysyms() -> Vec<u32> {
    let mut v: Vec<u32> = [&EN_US, &EN_GB, &DE, &FR]
        .iter()
        .flat_map(|l| l.keysyms())
        .collect();
    v.extend([
        SHIFT_L,
        SHIFT_R,
        CONTROL_L,
        ISO_LEVEL3_SHIFT,
        0xFFE9,
        0xFFEA,
        0xFFEB,
        KP_7,
    ]);
    v.extend([0x0100_0061, 0x0100_263A, 0]);
    v.sort();
    v.dedup();
    v
}

fn event() -> impl Strategy<Value = Event> {
    let keysym = prop_oneof![
        8 => prop::sample::select(interesting_keysyms()),
        1 => any::<u32>(),
    ];
    prop_oneof![
        6 => (any::<bool>(), keysym, 0..ALL.len())
            .prop_map(|(down, keysym, layout)| Event::Keysym { down, keysym, layout }),
        3 => (any::<bool>(), prop_oneof![0u32..0x100, any::<u32>()])
            .prop_map(|(down, qnum)| Event::Qnum { down, qnum }),
        1 => any::<u8>().prop_map(Event::Leds),
    ]
}

fn check_report(report: &KeyboardReport) {
    if report.is_rollover() {
        return;
    }
    let keys: Vec<u8> = report.keys.iter().copied().filter(|&u| u != 0).collect();
    let mut distinct = keys.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), keys.len(), "duplicate usage in {report:?}");
    assert!(keys.len() <= 6);
    assert!(
        keys.iter()
            .all(|&u| !(0xE0..=0xE7).contains(&u) && u != 0x01)
    );
    // the slots fill from the front
    let n = keys.len();
    assert!(report.keys[n..].iter().all(|&u| u == 0), "{report:?}");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("RFB_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(512),
        ..ProptestConfig::default()
    })]

    /// Any events: no panic, at most six distinct usages per report, every report differs
    /// from the one before, and releasing every key pressed leaves the empty report.
    #[test]
    fn keyboard_never_panics_and_releases_to_empty(
        events in prop::collection::vec(event(), 0..80),
        order in any::<prop::sample::Index>(),
    ) {
        let mut kbd = Keyboard::new();
        let mut last = KeyboardReport::EMPTY;
        let mut pressed = Vec::new();
        let run = |kbd: &mut Keyboard, e: &Event, last: &mut KeyboardReport| {
            let out = match *e {
                Event::Keysym { down, keysym, layout } => kbd.key_keysym(down, keysym, ALL[layout]),
                Event::Qnum { down, qnum } => kbd.key_qnum(down, qnum),
                Event::Leds(b) => {
                    kbd.set_leds(Leds::from_report(b));
                    return;
                }
            };
            assert!(out.reports().len() <= MAX_REPORTS_PER_EVENT);
            for report in out.reports() {
                check_report(report);
                assert_ne!(report, last, "repeated report");
                *last = *report;
            }
            assert_eq!(kbd.report(), *last);
        };
        for e in &events {
            run(&mut kbd, e, &mut last);
            match *e {
                Event::Keysym { down: true, keysym, layout } => {
                    pressed.push(Event::Keysym { down: false, keysym, layout })
                }
                Event::Qnum { down: true, qnum } => pressed.push(Event::Qnum { down: false, qnum }),
                _ => {}
            }
        }
        // release in an arbitrary rotation of the press order
        if !pressed.is_empty() {
            let k = order.index(pressed.len());
            pressed.rotate_left(k);
        }
        for e in &pressed {
            run(&mut kbd, e, &mut last);
        }
        prop_assert_eq!(kbd.report(), KeyboardReport::EMPTY);
    }

    #[test]
    fn pointer_never_panics(
        events in prop::collection::vec(
            (any::<u8>(), any::<u8>(), any::<bool>(), any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>()),
            0..50,
        )
    ) {
        let mut p = Pointer::new();
        for (mask, ext, extended, x, y, w, h) in events {
            let r = if extended {
                p.event_extended(mask, ext, x, y, w, h)
            } else {
                p.event(mask, x, y, w, h)
            };
            if let Some(r) = r {
                prop_assert!(r.x <= ABS_MAX && r.y <= ABS_MAX);
                prop_assert!((-1..=1).contains(&r.wheel) && (-1..=1).contains(&r.pan));
                prop_assert!(r.buttons < 0x20);
                if w >= 2 && x >= w - 1 {
                    prop_assert_eq!(r.x, ABS_MAX);
                }
                if x == 0 {
                    prop_assert_eq!(r.x, 0);
                }
            }
        }
    }
}
