//! The keyboard's LED output report and the QEMU LED State pseudo-encoding.

/// The LED state the target computer set: the keyboard's 1-byte output report (HID LED page:
/// bit 0 NumLock, 1 CapsLock, 2 ScrollLock, 3 Compose, 4 Kana; bits 5–7 are padding and
/// ignored).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct Leds(u8);

impl Leds {
    /// NumLock (output report bit 0).
    pub const NUM_LOCK: u8 = 1 << 0;
    /// CapsLock (bit 1).
    pub const CAPS_LOCK: u8 = 1 << 1;
    /// ScrollLock (bit 2).
    pub const SCROLL_LOCK: u8 = 1 << 2;
    /// Compose (bit 3).
    pub const COMPOSE: u8 = 1 << 3;
    /// Kana (bit 4).
    pub const KANA: u8 = 1 << 4;

    /// From the output report byte the host sent (padding bits dropped).
    pub const fn from_report(byte: u8) -> Self {
        Self(byte & 0x1F)
    }

    /// The output report byte.
    pub const fn bits(self) -> u8 {
        self.0
    }

    /// NumLock is on.
    pub const fn num_lock(self) -> bool {
        self.0 & Self::NUM_LOCK != 0
    }

    /// CapsLock is on.
    pub const fn caps_lock(self) -> bool {
        self.0 & Self::CAPS_LOCK != 0
    }

    /// ScrollLock is on.
    pub const fn scroll_lock(self) -> bool {
        self.0 & Self::SCROLL_LOCK != 0
    }

    /// The same state with NumLock set to `on`.
    pub const fn with_num_lock(self, on: bool) -> Self {
        if on {
            Self(self.0 | Self::NUM_LOCK)
        } else {
            Self(self.0 & !Self::NUM_LOCK)
        }
    }

    /// The *state* byte of the QEMU LED State pseudo-encoding (RFB pseudo-encoding −261;
    /// rfbproto: bit 0 ScrollLock, bit 1 NumLock, bit 2 CapsLock, other bits reserved), for the
    /// server to send the viewer. Compose and Kana have no bit there.
    pub const fn qemu_led_state(self) -> u8 {
        (self.scroll_lock() as u8)
            | ((self.num_lock() as u8) << 1)
            | ((self.caps_lock() as u8) << 2)
    }
}
