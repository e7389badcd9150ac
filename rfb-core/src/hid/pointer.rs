//! RFB PointerEvent → absolute pointer report.

/// The largest coordinate of the absolute pointer report (both axes are 0..=`ABS_MAX`).
pub const ABS_MAX: u16 = 32767;

/// RFB *button-mask* bits (rfbproto, PointerEvent).
mod rfb {
    pub(super) const LEFT: u8 = 1 << 0;
    pub(super) const MIDDLE: u8 = 1 << 1;
    pub(super) const RIGHT: u8 = 1 << 2;
    pub(super) const WHEEL_UP: u8 = 1 << 3;
    pub(super) const WHEEL_DOWN: u8 = 1 << 4;
    pub(super) const WHEEL_LEFT: u8 = 1 << 5;
    pub(super) const WHEEL_RIGHT: u8 = 1 << 6;
    /// Button 8, back; with ExtendedMouseButtons the marker of an extended message instead.
    pub(super) const BACK: u8 = 1 << 7;
    /// *extended-buttons-mask* (ExtendedMouseButtons pseudo-encoding, −316).
    pub(super) const EXT_BACK: u8 = 1 << 0;
    pub(super) const EXT_FORWARD: u8 = 1 << 1;
}

/// The 7-byte absolute pointer input report (see the [module docs](super) for the layout).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "defmt", derive(defmt::Format))]
pub struct PointerReport {
    /// Buttons: [`PointerReport::LEFT`], [`RIGHT`](PointerReport::RIGHT),
    /// [`MIDDLE`](PointerReport::MIDDLE), [`BACK`](PointerReport::BACK),
    /// [`FORWARD`](PointerReport::FORWARD).
    pub buttons: u8,
    /// X, 0..=[`ABS_MAX`] (left to right).
    pub x: u16,
    /// Y, 0..=[`ABS_MAX`] (top to bottom).
    pub y: u16,
    /// Vertical wheel steps, positive away from the user (scroll up).
    pub wheel: i8,
    /// Horizontal steps (AC Pan), positive to the right.
    pub pan: i8,
}

impl PointerReport {
    /// Report length in bytes.
    pub const LEN: usize = 7;
    /// Button 1 (primary).
    pub const LEFT: u8 = 1 << 0;
    /// Button 2 (secondary).
    pub const RIGHT: u8 = 1 << 1;
    /// Button 3 (middle).
    pub const MIDDLE: u8 = 1 << 2;
    /// Button 4 (back).
    pub const BACK: u8 = 1 << 3;
    /// Button 5 (forward).
    pub const FORWARD: u8 = 1 << 4;

    /// The bytes to send: buttons, X (LE), Y (LE), wheel, pan.
    pub const fn to_bytes(&self) -> [u8; 7] {
        let x = self.x.to_le_bytes();
        let y = self.y.to_le_bytes();
        [
            self.buttons,
            x[0],
            x[1],
            y[0],
            y[1],
            self.wheel as u8,
            self.pan as u8,
        ]
    }
}

/// Turns RFB pointer events into absolute pointer reports: scales the position to the report's
/// range, maps the buttons and turns wheel "button" presses into steps.
#[derive(Debug, Clone, Default)]
pub struct Pointer {
    /// The wheel bits of the previous event (a step is a press: 0 → 1).
    wheel_mask: u8,
    /// The last report returned (wheel and pan cleared).
    last: Option<PointerReport>,
}

impl Pointer {
    /// No buttons down, no position yet.
    pub const fn new() -> Self {
        Self {
            wheel_mask: 0,
            last: None,
        }
    }

    /// A PointerEvent (`mask`: rfbproto's *button-mask*, bit 7 = back) at (`x`, `y`) on a
    /// `width` × `height` framebuffer. Returns the report to send, or `None` if nothing
    /// changed (same position and buttons, no wheel step).
    #[must_use = "the report must be sent to the host"]
    pub fn event(
        &mut self,
        mask: u8,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    ) -> Option<PointerReport> {
        let back = mask & rfb::BACK != 0;
        self.update(mask, back, false, x, y, width, height)
    }

    /// An extended PointerEvent of the ExtendedMouseButtons pseudo-encoding (−316): bit 7 of
    /// `mask` is the marker (not a button), `extended` carries back (bit 0) and forward
    /// (bit 1). A driver that negotiated the extension calls this for messages with the
    /// marker and [`event`](Pointer::event) for the rest.
    #[must_use = "the report must be sent to the host"]
    pub fn event_extended(
        &mut self,
        mask: u8,
        extended: u8,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    ) -> Option<PointerReport> {
        let back = extended & rfb::EXT_BACK != 0;
        let forward = extended & rfb::EXT_FORWARD != 0;
        self.update(mask & !rfb::BACK, back, forward, x, y, width, height)
    }

    /// All buttons up at the last position: send it when the controlling viewer goes away.
    #[must_use = "the report must be sent to the host"]
    pub fn release_all(&mut self) -> PointerReport {
        self.wheel_mask = 0;
        let report = PointerReport {
            buttons: 0,
            ..self.last.unwrap_or_default()
        };
        self.last = Some(report);
        report
    }

    #[allow(clippy::too_many_arguments)]
    fn update(
        &mut self,
        mask: u8,
        back: bool,
        forward: bool,
        x: u16,
        y: u16,
        width: u16,
        height: u16,
    ) -> Option<PointerReport> {
        let wheel_bits = rfb::WHEEL_UP | rfb::WHEEL_DOWN | rfb::WHEEL_LEFT | rfb::WHEEL_RIGHT;
        let pressed = mask & !self.wheel_mask & wheel_bits;
        self.wheel_mask = mask & wheel_bits;
        let step = |plus: u8, minus: u8| -> i8 {
            i8::from(pressed & plus != 0) - i8::from(pressed & minus != 0)
        };
        let mut buttons = 0;
        for (rfb_bit, hid_bit) in [
            (rfb::LEFT, PointerReport::LEFT),
            (rfb::MIDDLE, PointerReport::MIDDLE),
            (rfb::RIGHT, PointerReport::RIGHT),
        ] {
            if mask & rfb_bit != 0 {
                buttons |= hid_bit;
            }
        }
        if back {
            buttons |= PointerReport::BACK;
        }
        if forward {
            buttons |= PointerReport::FORWARD;
        }
        let report = PointerReport {
            buttons,
            x: scale(x, width),
            y: scale(y, height),
            wheel: step(rfb::WHEEL_UP, rfb::WHEEL_DOWN),
            pan: step(rfb::WHEEL_RIGHT, rfb::WHEEL_LEFT),
        };
        let still = PointerReport {
            wheel: 0,
            pan: 0,
            ..report
        };
        let changed = self.last != Some(still) || report.wheel != 0 || report.pan != 0;
        self.last = Some(still);
        changed.then_some(report)
    }
}

/// `pos` on an axis of `size` pixels → 0..=ABS_MAX: pixel 0 is 0, pixel `size - 1` is
/// ABS_MAX, positions past the edge are clipped to it; an axis of 0 or 1 pixels gives 0.
fn scale(pos: u16, size: u16) -> u16 {
    let Some(last) = size.checked_sub(1).filter(|&l| l > 0) else {
        return 0;
    };
    let pos = u32::from(pos.min(last));
    // pos <= last, so the quotient is <= ABS_MAX and fits
    u16::try_from(pos * u32::from(ABS_MAX) / u32::from(last)).unwrap_or(ABS_MAX)
}
