//! RFB key events → boot keyboard reports.

use heapless::Vec;

use super::layouts::{self, Layout, Mapping, Need};
use super::led::Leds;
use super::scancode;

/// Keys (modifiers included) the keyboard remembers as held at once; a press beyond that is
/// dropped ([`KeyStatus::TooManyKeys`]) and its release ignored. Seven non-modifier keys already
/// put the report into rollover, so sixteen is well past what a person holds.
pub const MAX_HELD: usize = 16;

/// Most reports one event produces: a NumLock press and release, a modifier change, the key.
pub const MAX_REPORTS_PER_EVENT: usize = 4;

/// Usage of NumLock (Keyboard page).
const NUM_LOCK: u8 = 0x53;
/// ErrorRollOver: all six key slots when more than six keys are down.
const ERROR_ROLL_OVER: u8 = 0x01;

/// The modifier byte of the keyboard report (bit 0 LeftControl … bit 7 Right GUI: usage
/// 0xE0 + bit).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Modifiers(u8);

impl Modifiers {
    /// None held.
    pub const NONE: Self = Self(0);
    /// Left Control (bit 0).
    pub const LEFT_CTRL: Self = Self(1 << 0);
    /// Left Shift (bit 1).
    pub const LEFT_SHIFT: Self = Self(1 << 1);
    /// Left Alt (bit 2).
    pub const LEFT_ALT: Self = Self(1 << 2);
    /// Left GUI (Windows, Command, Super; bit 3).
    pub const LEFT_GUI: Self = Self(1 << 3);
    /// Right Control (bit 4).
    pub const RIGHT_CTRL: Self = Self(1 << 4);
    /// Right Shift (bit 5).
    pub const RIGHT_SHIFT: Self = Self(1 << 5);
    /// Right Alt, AltGr on layouts with a third level (bit 6).
    pub const RIGHT_ALT: Self = Self(1 << 6);
    /// Right GUI (bit 7).
    pub const RIGHT_GUI: Self = Self(1 << 7);

    const SHIFTS: u8 = Self::LEFT_SHIFT.0 | Self::RIGHT_SHIFT.0;

    /// From the report byte.
    pub const fn from_bits(bits: u8) -> Self {
        Self(bits)
    }

    /// The report byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// Whether every bit of `other` is set.
    pub const fn contains(self, other: Self) -> bool {
        self.0 & other.0 == other.0
    }

    /// The bit of a modifier usage (0xE0..=0xE7), `None` for other usages.
    pub const fn from_usage(usage: u8) -> Option<Self> {
        if scancode::is_modifier(usage) {
            Some(Self(1 << (usage - 0xE0)))
        } else {
            None
        }
    }
}

impl core::ops::BitOr for Modifiers {
    type Output = Self;
    fn bitor(self, rhs: Self) -> Self {
        Self(self.0 | rhs.0)
    }
}

/// The 8-byte boot keyboard input report (see the [module docs](super) for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyboardReport {
    /// Byte 0.
    pub modifiers: Modifiers,
    /// Bytes 2–7: usages of the keys down (Keyboard page, no modifiers, 0 = none), or
    /// ErrorRollOver (0x01) in all six when more than six are down.
    pub keys: [u8; 6],
}

impl KeyboardReport {
    /// Report length in bytes.
    pub const LEN: usize = 8;
    /// Nothing held.
    pub const EMPTY: Self = Self {
        modifiers: Modifiers::NONE,
        keys: [0; 6],
    };

    /// The bytes to send: modifiers, 0, six key slots.
    pub const fn to_bytes(&self) -> [u8; 8] {
        let k = self.keys;
        [self.modifiers.0, 0, k[0], k[1], k[2], k[3], k[4], k[5]]
    }

    /// Parses 8 report bytes (the reserved byte is ignored).
    pub const fn from_bytes(b: [u8; 8]) -> Self {
        Self {
            modifiers: Modifiers(b[0]),
            keys: [b[2], b[3], b[4], b[5], b[6], b[7]],
        }
    }

    /// No modifier and no key down.
    pub fn is_empty(&self) -> bool {
        *self == Self::EMPTY
    }

    /// More than six keys are down (all slots ErrorRollOver).
    pub fn is_rollover(&self) -> bool {
        self.keys == [ERROR_ROLL_OVER; 6]
    }

    /// The usages in the key slots (none when rolled over).
    pub fn usages(&self) -> impl Iterator<Item = u8> + '_ {
        let over = self.is_rollover();
        self.keys.iter().copied().filter(move |&u| u != 0 && !over)
    }
}

/// What happened to a key event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub enum KeyStatus {
    /// Handled: [`KeyOutput::reports`] has what changed (possibly nothing, e.g. a key press
    /// while more than six are down).
    Done,
    /// A press of a key already held (the viewer's auto-repeat): ignored, the host repeats
    /// the held key itself.
    Repeat,
    /// A release of a key that is not held: ignored.
    NotHeld,
    /// No key gives this keysym in the layout, or the key number has no Keyboard-page usage:
    /// skipped. The driver may log it.
    Unknown,
    /// [`MAX_HELD`] keys are already held: the press is dropped.
    TooManyKeys,
}

/// The reports one key event produced, oldest first: send them in this order. At most
/// [`MAX_REPORTS_PER_EVENT`]; reports equal to the one before are never produced.
#[must_use = "the reports must be sent to the host"]
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct KeyOutput {
    reports: Vec<KeyboardReport, MAX_REPORTS_PER_EVENT>,
    status: KeyStatus,
}

impl KeyOutput {
    const fn new() -> Self {
        Self {
            reports: Vec::new(),
            status: KeyStatus::Done,
        }
    }

    /// The reports to send, in order.
    pub fn reports(&self) -> &[KeyboardReport] {
        &self.reports
    }

    /// What happened to the event.
    pub fn status(&self) -> KeyStatus {
        self.status
    }
}

impl IntoIterator for KeyOutput {
    type Item = KeyboardReport;
    type IntoIter = <Vec<KeyboardReport, MAX_REPORTS_PER_EVENT> as IntoIterator>::IntoIter;
    fn into_iter(self) -> Self::IntoIter {
        self.reports.into_iter()
    }
}

/// Which event pressed a held key: keysym releases find their press by keysym, extended key
/// events by key number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Keysym(u32),
    Qnum(u8),
}

#[derive(Debug, Clone, Copy)]
struct Held {
    source: Source,
    usage: u8,
}

/// Modifiers forced on or off for the key `owner` while it is held.
#[derive(Debug, Clone, Copy)]
struct Adjust {
    owner: Source,
    on: u8,
    off: u8,
}

/// The keyboard state machine: RFB key events in, boot keyboard reports out.
///
/// The user's modifiers are the modifier keys held. A keysym that needs Shift or AltGr
/// the user is not holding, or must not have one the user is holding (`1` on US while Shift
/// is held), is sent with the modifiers adjusted — first a report with the adjusted
/// modifiers, then one with the key — and they stay adjusted while that key is the last one
/// pressed; its release restores the user's modifiers. The next press of any key, and any
/// modifier key going up or down, ends the adjustment.
///
/// A keysym release lets go of the key its press used, found by keysym; a release of a keysym
/// that is not held lets go of the last keysym press of the same key (viewers may press `a`
/// and release `A`). A press of a key already down through another event takes it over: the
/// host sees it released and pressed again. Modifier keys held through several events stay
/// down until all of them are released.
///
/// With the host's LED state known ([`set_leds`](Keyboard::set_leds)), letters are typed in
/// the right case whatever CapsLock says (Shift inverted while it is on, as Windows, Linux and
/// BIOSes treat Shift+CapsLock; macOS hosts do not), and a keypad keysym that needs the other
/// NumLock state (`KP_7` with NumLock off) is preceded by a NumLock press and release. Without
/// it, CapsLock and NumLock are assumed off and never toggled.
#[derive(Debug, Clone)]
pub struct Keyboard {
    /// In press order.
    held: Vec<Held, MAX_HELD>,
    adjust: Option<Adjust>,
    leds: Option<Leds>,
    last: KeyboardReport,
}

impl Default for Keyboard {
    fn default() -> Self {
        Self::new()
    }
}

impl Keyboard {
    /// Nothing held, LED state unknown.
    pub const fn new() -> Self {
        Self {
            held: Vec::new(),
            adjust: None,
            leds: None,
            last: KeyboardReport::EMPTY,
        }
    }

    /// The last report produced (what the host believes is held).
    pub fn report(&self) -> KeyboardReport {
        self.last
    }

    /// The host's LED state, as last set (NumLock updated after a NumLock press this keyboard
    /// made).
    pub fn leds(&self) -> Option<Leds> {
        self.leds
    }

    /// Records the host's LED state (the keyboard output report).
    pub fn set_leds(&mut self, leds: Leds) {
        self.leds = Some(leds);
    }

    /// Every key up: returns the empty report to send (when the controlling viewer goes away).
    /// The LED state is kept.
    #[must_use = "the empty report must be sent to the host"]
    pub fn release_all(&mut self) -> KeyboardReport {
        self.held.clear();
        self.adjust = None;
        self.last = KeyboardReport::EMPTY;
        self.last
    }

    /// An RFB KeyEvent: `keysym` pressed (`down`) or released, typed on `layout` (the target
    /// computer's layout).
    pub fn key_keysym(&mut self, down: bool, keysym: u32, layout: &Layout) -> KeyOutput {
        let keysym = layouts::normalize(keysym);
        let mut out = KeyOutput::new();
        out.status = if down {
            self.press_keysym(keysym, layout, &mut out)
        } else {
            self.release_keysym(keysym, layout, &mut out)
        };
        out
    }

    /// A QEMU extended key event with key number `qnum` (the XT keycode): the key itself,
    /// whatever the layouts; use it whenever the viewer sends one. Modifiers are sent as they
    /// are held, never adjusted.
    pub fn key_qnum(&mut self, down: bool, qnum: u32) -> KeyOutput {
        let mut out = KeyOutput::new();
        out.status = match (scancode::usage(qnum), u8::try_from(qnum)) {
            (Some(usage), Ok(q)) => {
                let source = Source::Qnum(q);
                if down {
                    self.press(source, usage, None, &mut out)
                } else {
                    self.release(source, &mut out)
                }
            }
            _ => KeyStatus::Unknown,
        };
        out
    }

    fn press_keysym(&mut self, keysym: u32, layout: &Layout, out: &mut KeyOutput) -> KeyStatus {
        let source = Source::Keysym(keysym);
        if let Some(usage) = modifier_usage(keysym) {
            return self.press(source, usage, None, out);
        }
        match layout.lookup(keysym) {
            Some(
                mapping @ Mapping {
                    usage: Some(usage), ..
                },
            ) => self.press(source, usage, Some(mapping), out),
            _ => KeyStatus::Unknown,
        }
    }

    fn release_keysym(&mut self, keysym: u32, layout: &Layout, out: &mut KeyOutput) -> KeyStatus {
        let source = Source::Keysym(keysym);
        if self.find(source).is_some() {
            return self.release(source, out);
        }
        // Viewers may release a different keysym than they pressed (`a` pressed, Shift
        // pressed, `A` released): release the latest keysym press of the same key.
        let usage = modifier_usage(keysym).or_else(|| layout.lookup(keysym)?.usage);
        let other = usage.and_then(|u| {
            self.held
                .iter()
                .rev()
                .find(|h| h.usage == u && matches!(h.source, Source::Keysym(_)))
        });
        match other {
            Some(h) => self.release(h.source, out),
            None => KeyStatus::NotHeld,
        }
    }

    fn find(&self, source: Source) -> Option<usize> {
        self.held.iter().position(|h| h.source == source)
    }

    /// Presses `usage` for `source`; `mapping` (keysym presses) says what the modifiers must be.
    fn press(
        &mut self,
        source: Source,
        usage: u8,
        mapping: Option<Mapping>,
        out: &mut KeyOutput,
    ) -> KeyStatus {
        if self.find(source).is_some() {
            return KeyStatus::Repeat;
        }
        let held = Held { source, usage };
        if scancode::is_modifier(usage) {
            if self.held.is_full() {
                return KeyStatus::TooManyKeys;
            }
            // the user's modifiers change: the report follows them, no adjustment
            self.adjust = None;
            let _ = self.held.push(held);
            self.emit(None, out);
            return KeyStatus::Done;
        }
        // The key already down through another event (`a` held, then `A` pressed): this press
        // takes it over, and the host gets a fresh press (released in the next report).
        let before = self.held.len();
        self.held.retain(|h| h.usage != usage);
        if self.held.len() == before && self.held.is_full() {
            return KeyStatus::TooManyKeys;
        }
        if let Some(m) = mapping {
            self.fix_numlock(m.numlock, out);
        }
        self.adjust = mapping.and_then(|m| self.adjustment(source, m));
        // the modifiers first, so that the host sees them before the key
        self.emit(None, out);
        let _ = self.held.push(held);
        self.emit(None, out);
        KeyStatus::Done
    }

    fn release(&mut self, source: Source, out: &mut KeyOutput) -> KeyStatus {
        let Some(i) = self.find(source) else {
            return KeyStatus::NotHeld;
        };
        let held = self.held.remove(i);
        let owner = self.adjust.is_some_and(|a| a.owner == source);
        if owner || scancode::is_modifier(held.usage) {
            self.adjust = None;
        }
        self.emit(None, out);
        KeyStatus::Done
    }

    /// The modifiers the user holds.
    fn user_modifiers(&self) -> u8 {
        self.held
            .iter()
            .filter_map(|h| Modifiers::from_usage(h.usage))
            .fold(0, |acc, m| acc | m.0)
    }

    fn adjustment(&self, owner: Source, m: Mapping) -> Option<Adjust> {
        let user = self.user_modifiers();
        let caps = m.caps && self.leds.is_some_and(Leds::caps_lock);
        let shift = match (m.shift, caps) {
            (Need::On, true) => Need::Off,
            (Need::Off, true) => Need::On,
            (need, _) => need,
        };
        let (mut on, mut off) = (0, 0);
        match shift {
            Need::On if user & Modifiers::SHIFTS == 0 => on |= Modifiers::LEFT_SHIFT.0,
            Need::Off if user & Modifiers::SHIFTS != 0 => off |= Modifiers::SHIFTS,
            _ => {}
        }
        let altgr = Modifiers::RIGHT_ALT.0;
        match m.altgr {
            Need::On if user & altgr == 0 => on |= altgr,
            Need::Off if user & altgr != 0 => off |= altgr,
            _ => {}
        }
        (on | off != 0).then_some(Adjust { owner, on, off })
    }

    /// A NumLock press and release first if the host's NumLock (when known) is not what the
    /// keypad keysym needs.
    fn fix_numlock(&mut self, need: Need, out: &mut KeyOutput) {
        let want = match need {
            Need::On => true,
            Need::Off => false,
            Need::Any => return,
        };
        let Some(leds) = self.leds else { return };
        let held_keys = self.held.iter().filter(|h| !scancode::is_modifier(h.usage));
        if leds.num_lock() == want
            || self.held.iter().any(|h| h.usage == NUM_LOCK)
            || held_keys.count() >= 6
        {
            return;
        }
        self.emit(Some(NUM_LOCK), out);
        self.emit(None, out);
        self.leds = Some(leds.with_num_lock(want));
    }

    /// The report of the current state (with `extra` pressed too).
    fn build(&self, extra: Option<u8>) -> KeyboardReport {
        let mut modifiers = self.user_modifiers();
        if let Some(a) = self.adjust {
            modifiers = (modifiers & !a.off) | a.on;
        }
        let mut keys = [0u8; 6];
        let mut n = 0;
        let usages = self.held.iter().map(|h| h.usage).chain(extra);
        for usage in usages.filter(|&u| !scancode::is_modifier(u)) {
            if keys[..n].contains(&usage) {
                continue;
            }
            match keys.get_mut(n) {
                Some(slot) => {
                    *slot = usage;
                    n += 1;
                }
                None => {
                    keys = [ERROR_ROLL_OVER; 6];
                    break;
                }
            }
        }
        KeyboardReport {
            modifiers: Modifiers(modifiers),
            keys,
        }
    }

    /// Queues the current report if it differs from the last one.
    fn emit(&mut self, extra: Option<u8>, out: &mut KeyOutput) {
        let report = self.build(extra);
        if report == self.last {
            return;
        }
        self.last = report;
        if let Err(report) = out.reports.push(report) {
            // cannot happen (MAX_REPORTS_PER_EVENT covers the longest event, a test checks
            // it); should it, the newest state wins
            if let Some(newest) = out.reports.last_mut() {
                *newest = report;
            }
        }
    }
}

/// Modifier keysyms → modifier usages. Meta, Super and Hyper are the GUI keys; AltGr
/// (ISO_Level3_Shift, Mode_switch) is the right Alt key.
const fn modifier_usage(keysym: u32) -> Option<u8> {
    match keysym {
        0xFFE1 => Some(0xE1),                   // Shift_L
        0xFFE2 => Some(0xE5),                   // Shift_R
        0xFFE3 => Some(0xE0),                   // Control_L
        0xFFE4 => Some(0xE4),                   // Control_R
        0xFFE7 | 0xFFEB | 0xFFED => Some(0xE3), // Meta_L, Super_L, Hyper_L
        0xFFE8 | 0xFFEC | 0xFFEE => Some(0xE7), // Meta_R, Super_R, Hyper_R
        0xFFE9 => Some(0xE2),                   // Alt_L
        0xFFEA | 0xFE03 | 0xFF7E => Some(0xE6), // Alt_R, ISO_Level3_Shift, Mode_switch
        _ => None,
    }
}
