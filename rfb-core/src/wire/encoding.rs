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
        /// −260: TightPNG (Tight with PNG instead of Basic compression; noVNC).
        TightPng = -260,
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

/// One bit per encoding and pseudo-encoding this crate implements: the sets both peers fold a
/// SetEncodings into (the client: what it asked for; the server: what the client listed).
pub(crate) mod bits {
    pub(crate) const COPYRECT: u32 = 1 << 0;
    pub(crate) const RRE: u32 = 1 << 1;
    pub(crate) const HEXTILE: u32 = 1 << 2;
    pub(crate) const ZRLE: u32 = 1 << 3;
    pub(crate) const DESKTOP_SIZE: u32 = 1 << 4;
    pub(crate) const EXT_DESKTOP_SIZE: u32 = 1 << 5;
    pub(crate) const CURSOR: u32 = 1 << 6;
    pub(crate) const LAST_RECT: u32 = 1 << 7;
    pub(crate) const DESKTOP_NAME: u32 = 1 << 8;
    pub(crate) const QEMU_KEY: u32 = 1 << 9;
    pub(crate) const FENCE: u32 = 1 << 10;
    pub(crate) const CONTINUOUS: u32 = 1 << 11;
    pub(crate) const EXT_CLIPBOARD: u32 = 1 << 12;
    pub(crate) const QEMU_LED: u32 = 1 << 13;
    pub(crate) const TIGHT: u32 = 1 << 14;
    pub(crate) const TIGHT_PNG: u32 = 1 << 15;
}

impl Encoding {
    /// Its bit in a SetEncodings set ([`bits`]): 0 for Raw, the compression and JPEG levels
    /// (nothing to ask for), `None` for what this crate does not implement (ZRLE and Tight
    /// without `alloc`).
    pub(crate) fn bit(self) -> Option<u32> {
        use bits::*;
        Some(match self {
            Self::Raw => 0,
            Self::CopyRect => COPYRECT,
            Self::Rre => RRE,
            Self::Hextile => HEXTILE,
            Self::Zrle if cfg!(feature = "alloc") => ZRLE,
            Self::Tight if cfg!(feature = "alloc") => TIGHT,
            Self::TightPng if cfg!(feature = "alloc") => TIGHT_PNG,
            Self::DesktopSize => DESKTOP_SIZE,
            Self::ExtendedDesktopSize => EXT_DESKTOP_SIZE,
            Self::Cursor => CURSOR,
            Self::LastRect => LAST_RECT,
            Self::DesktopName => DESKTOP_NAME,
            Self::QemuExtendedKeyEvent => QEMU_KEY,
            Self::Fence => FENCE,
            Self::ContinuousUpdates => CONTINUOUS,
            Self::ExtendedClipboard => EXT_CLIPBOARD,
            Self::QemuLedState => QEMU_LED,
            e if e.compress_level().is_some()
                || e.jpeg_quality_level().is_some()
                || e.jpeg_fine_quality().is_some()
                || e.jpeg_subsampling().is_some() =>
            {
                0
            }
            _ => return None,
        })
    }

    /// Compression level pseudo-encoding (−256 … −247 = level 0 … 9), if this is one.
    pub fn compress_level(self) -> Option<u8> {
        let v = i32::from(self);
        (-256..=-247).contains(&v).then(|| (v + 256) as u8)
    }

    /// The compression-level pseudo-encoding for `level` (0 … 9; larger values are 9).
    pub fn compress(level: u8) -> Self {
        Self::from(-256 + i32::from(level.min(9)))
    }

    /// JPEG quality level pseudo-encoding (−32 … −23 = level 0 … 9), if this is one.
    pub fn jpeg_quality_level(self) -> Option<u8> {
        let v = i32::from(self);
        (-32..=-23).contains(&v).then(|| (v + 32) as u8)
    }

    /// The JPEG quality level pseudo-encoding for `level` (0 … 9; larger values are 9).
    pub fn jpeg_quality(level: u8) -> Self {
        Self::from(-32 + i32::from(level.min(9)))
    }

    /// TigerVNC's fine-grained JPEG quality pseudo-encoding (−512 … −412 = quality 0 … 100), if
    /// this is one.
    pub fn jpeg_fine_quality(self) -> Option<u8> {
        let v = i32::from(self);
        (-512..=-412).contains(&v).then(|| (v + 512) as u8)
    }

    /// JPEG chroma subsampling level pseudo-encoding (−768 … −763), if this is one: 0 none,
    /// 1 4× (4:2:0), 2 2× (4:2:2), 3 greyscale, 4 8×, 5 16× (the last two are served as 4×).
    pub fn jpeg_subsampling(self) -> Option<u8> {
        let v = i32::from(self);
        (-768..=-763).contains(&v).then(|| (v + 768) as u8)
    }
}

#[cfg(test)]
mod test {
    use super::*;

    #[test]
    fn pseudo_encoding_ranges() {
        assert_eq!(i32::from(Encoding::jpeg_quality(0)), -32);
        assert_eq!(i32::from(Encoding::jpeg_quality(9)), -23);
        assert_eq!(Encoding::from(-27).jpeg_quality_level(), Some(5));
        assert_eq!(Encoding::from(-22).jpeg_quality_level(), None);
        assert_eq!(Encoding::from(-33).jpeg_quality_level(), None);
        assert_eq!(Encoding::compress(3), Encoding::from(-253));
        assert_eq!(Encoding::from(-412).jpeg_fine_quality(), Some(100));
        assert_eq!(Encoding::from(-411).jpeg_fine_quality(), None);
        assert_eq!(Encoding::from(-766).jpeg_subsampling(), Some(2));
        assert_eq!(Encoding::from(-762).jpeg_subsampling(), None);
        assert_eq!(Encoding::from(-260), Encoding::TightPng);
        assert_eq!(Encoding::from(-30).bit(), Some(0));
    }
}
