//! Encoding and pseudo-encoding numbers (S32).

enum_with_unknown! {
    /// A rectangle encoding or pseudo-encoding.
    pub enum Encoding(i32) {
        /// 0: raw pixels.
        Raw = 0,
        /// 1: copy from elsewhere in the framebuffer.
        CopyRect = 1,
        /// 2: rise-and-run-length.
        Rre = 2,
        /// 4: compact RRE.
        CoRre = 4,
        /// 5: 16×16 tiles.
        Hextile = 5,
        /// 6: zlib.
        Zlib = 6,
        /// 7: Tight.
        Tight = 7,
        /// 8: zlibhex.
        ZlibHex = 8,
        /// 16: zlib run-length (64×64 tiles).
        Zrle = 16,
        /// −223: the framebuffer changed size.
        DesktopSize = -223,
        /// −224: the last rectangle of an update.
        LastRect = -224,
        /// −239: rich cursor shape.
        Cursor = -239,
        /// −240: X cursor shape.
        XCursor = -240,
        /// −257: QEMU pointer motion change.
        QemuPointerMotionChange = -257,
        /// −258: QEMU extended key events.
        QemuExtendedKeyEvent = -258,
        /// −259: QEMU audio.
        QemuAudio = -259,
        /// −261: QEMU LED state.
        QemuLedState = -261,
        /// −307: desktop name changes.
        DesktopName = -307,
        /// −308: extended desktop size (screens, SetDesktopSize).
        ExtendedDesktopSize = -308,
        /// −312: Fence messages.
        Fence = -312,
        /// −313: continuous updates.
        ContinuousUpdates = -313,
        /// −314: cursor with alpha.
        CursorWithAlpha = -314,
        /// −316: extended mouse buttons.
        ExtendedMouseButtons = -316,
        /// 0xc0a1e5ce: extended clipboard (signed cut-text length).
        ExtendedClipboard = -1_063_131_698,
    }
}

impl Encoding {
    /// Compression level pseudo-encoding (−256 … −247 = level 0 … 9), if this is one.
    pub fn compress_level(self) -> Option<u8> {
        let v = i32::from(self);
        (-256..=-247).contains(&v).then(|| (v + 256) as u8)
    }
}
