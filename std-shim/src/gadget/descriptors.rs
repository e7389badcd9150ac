//! The HID report descriptors of the gadget's keyboard and pointer: exactly the reports
//! `rfb_core::hid` produces (its module documentation is the contract), without report IDs.

/// The boot keyboard: 8-byte input reports (modifiers, reserved, six key slots of usages
/// 0..=255, which covers `rfb_core::hid::MAX_KEY_USAGE`), 1-byte LED output reports (NumLock,
/// CapsLock, ScrollLock, Compose, Kana).
pub const KEYBOARD: &[u8] = &[
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x06, // Usage (Keyboard)
    0xa1, 0x01, // Collection (Application)
    0x05, 0x07, //   Usage Page (Keyboard/Keypad)
    0x19, 0xe0, //   Usage Minimum (Left Control)
    0x29, 0xe7, //   Usage Maximum (Right GUI)
    0x15, 0x00, //   Logical Minimum (0)
    0x25, 0x01, //   Logical Maximum (1)
    0x75, 0x01, //   Report Size (1)
    0x95, 0x08, //   Report Count (8)
    0x81, 0x02, //   Input (Data, Variable, Absolute): modifiers
    0x95, 0x01, //   Report Count (1)
    0x75, 0x08, //   Report Size (8)
    0x81, 0x01, //   Input (Constant): reserved
    0x95, 0x05, //   Report Count (5)
    0x75, 0x01, //   Report Size (1)
    0x05, 0x08, //   Usage Page (LEDs)
    0x19, 0x01, //   Usage Minimum (Num Lock)
    0x29, 0x05, //   Usage Maximum (Kana)
    0x91, 0x02, //   Output (Data, Variable, Absolute): LEDs
    0x95, 0x01, //   Report Count (1)
    0x75, 0x03, //   Report Size (3)
    0x91, 0x01, //   Output (Constant): padding
    0x95, 0x06, //   Report Count (6)
    0x75, 0x08, //   Report Size (8)
    0x15, 0x00, //   Logical Minimum (0)
    0x26, 0xff, 0x00, //   Logical Maximum (255)
    0x05, 0x07, //   Usage Page (Keyboard/Keypad)
    0x19, 0x00, //   Usage Minimum (0)
    0x2a, 0xff, 0x00, //   Usage Maximum (255)
    0x81, 0x00, //   Input (Data, Array): six key slots
    0xc0, // End Collection
];

/// Bytes per keyboard input report.
pub const KEYBOARD_REPORT_LEN: usize = rfb_core::hid::KeyboardReport::LEN;

/// The absolute pointer: 7-byte input reports (5 buttons, X and Y 0..=32767, vertical wheel
/// and horizontal pan −127..=127 relative).
pub const POINTER: &[u8] = &[
    0x05, 0x01, // Usage Page (Generic Desktop)
    0x09, 0x02, // Usage (Mouse)
    0xa1, 0x01, // Collection (Application)
    0x09, 0x01, //   Usage (Pointer)
    0xa1, 0x00, //   Collection (Physical)
    0x05, 0x09, //     Usage Page (Button)
    0x19, 0x01, //     Usage Minimum (1)
    0x29, 0x05, //     Usage Maximum (5)
    0x15, 0x00, //     Logical Minimum (0)
    0x25, 0x01, //     Logical Maximum (1)
    0x95, 0x05, //     Report Count (5)
    0x75, 0x01, //     Report Size (1)
    0x81, 0x02, //     Input (Data, Variable, Absolute): buttons
    0x95, 0x01, //     Report Count (1)
    0x75, 0x03, //     Report Size (3)
    0x81, 0x01, //     Input (Constant): padding
    0x05, 0x01, //     Usage Page (Generic Desktop)
    0x09, 0x30, //     Usage (X)
    0x09, 0x31, //     Usage (Y)
    0x16, 0x00, 0x00, //     Logical Minimum (0)
    0x26, 0xff, 0x7f, //     Logical Maximum (32767)
    0x75, 0x10, //     Report Size (16)
    0x95, 0x02, //     Report Count (2)
    0x81, 0x02, //     Input (Data, Variable, Absolute): X, Y
    0x09, 0x38, //     Usage (Wheel)
    0x15, 0x81, //     Logical Minimum (-127)
    0x25, 0x7f, //     Logical Maximum (127)
    0x75, 0x08, //     Report Size (8)
    0x95, 0x01, //     Report Count (1)
    0x81, 0x06, //     Input (Data, Variable, Relative): wheel
    0x05, 0x0c, //     Usage Page (Consumer)
    0x0a, 0x38, 0x02, //     Usage (AC Pan)
    0x15, 0x81, //     Logical Minimum (-127)
    0x25, 0x7f, //     Logical Maximum (127)
    0x75, 0x08, //     Report Size (8)
    0x95, 0x01, //     Report Count (1)
    0x81, 0x06, //     Input (Data, Variable, Relative): pan
    0xc0, //   End Collection
    0xc0, // End Collection
];

/// Bytes per pointer input report.
pub const POINTER_REPORT_LEN: usize = rfb_core::hid::PointerReport::LEN;

#[cfg(test)]
mod tests {
    use super::*;

    /// Walks a descriptor's short items and adds up the bits of the Input and Output main
    /// items: a descriptor out of step with the reports would make the host misread them.
    fn report_bits(desc: &[u8]) -> (usize, usize) {
        let (mut size, mut count, mut input, mut output) = (0usize, 0usize, 0, 0);
        let mut i = 0;
        while i < desc.len() {
            let prefix = desc[i];
            let len = match prefix & 3 {
                3 => 4,
                n => usize::from(n),
            };
            let data = &desc[i + 1..i + 1 + len];
            let value = data
                .iter()
                .rev()
                .fold(0usize, |v, b| (v << 8) | usize::from(*b));
            match prefix & 0xfc {
                0x74 => size = value,
                0x94 => count = value,
                0x80 => input += size * count,
                0x90 => output += size * count,
                _ => {}
            }
            i += 1 + len;
        }
        assert_eq!(i, desc.len(), "a truncated item");
        (input, output)
    }

    #[test]
    fn descriptors_describe_the_reports_rfb_core_makes() {
        assert_eq!(report_bits(KEYBOARD), (KEYBOARD_REPORT_LEN * 8, 8));
        assert_eq!(report_bits(POINTER), (POINTER_REPORT_LEN * 8, 0));
    }
}
