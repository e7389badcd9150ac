//! parse(emit(x)) == x for every message representation.

use proptest::prelude::*;

use crate::wire::*;

fn rect() -> impl Strategy<Value = Rect> {
    (any::<u16>(), any::<u16>(), any::<u16>(), any::<u16>())
        .prop_map(|(x, y, w, h)| Rect::new(x, y, w, h))
}

fn pixel_format() -> impl Strategy<Value = PixelFormat> {
    (
        any::<u8>(),
        any::<u8>(),
        any::<bool>(),
        any::<bool>(),
        any::<[u16; 3]>(),
        any::<[u8; 3]>(),
    )
        .prop_map(|(bpp, depth, be, tc, max, shift)| PixelFormat {
            bits_per_pixel: bpp,
            depth,
            big_endian: be,
            true_colour: tc,
            red_max: max[0],
            green_max: max[1],
            blue_max: max[2],
            red_shift: shift[0],
            green_shift: shift[1],
            blue_shift: shift[2],
        })
}

macro_rules! roundtrip {
    ($v:expr) => {{
        let v = $v;
        let mut buf = vec![0u8; v.buffer_len()];
        v.emit(&mut buf);
        prop_assert_eq!(&v, &Parse::parse(&buf).unwrap());
        // Every strict prefix is "truncated", never "malformed" or a panic.
        for cut in 0..buf.len() {
            let truncated = matches!(
                Parse::parse_as(&v, &buf[..cut]),
                Err(WireError::Truncated { .. })
            );
            prop_assert!(truncated, "cut {}", cut);
        }
    }};
}

/// Lets the macro call the right `parse`.
trait Parse: Sized {
    fn parse(b: &[u8]) -> Result<Self, WireError>;
    fn parse_as(_: &Self, b: &[u8]) -> Result<Self, WireError> {
        Self::parse(b)
    }
}

macro_rules! impl_parse {
    ($($t:ty),*) => { $(impl Parse for $t { fn parse(b: &[u8]) -> Result<Self, WireError> { <$t>::parse(b) } })* };
}
impl_parse!(
    ProtocolVersionRepr,
    PixelFormat,
    VencryptVersionRepr,
    SetPixelFormatRepr,
    SetEncodingsHeaderRepr,
    FramebufferUpdateRequestRepr,
    KeyEventRepr,
    PointerEventRepr,
    CutTextHeaderRepr,
    EnableContinuousUpdatesRepr,
    FenceRepr,
    Screen,
    SetDesktopSizeHeaderRepr,
    QemuKeyEventRepr,
    ServerInitRepr,
    FramebufferUpdateRepr,
    RectHeaderRepr,
    SetColourMapEntriesRepr,
    ExtendedDesktopSizeRepr,
    ClientInitRepr,
    CopyRectRepr
);

proptest! {
    #[test]
    fn handshake_reprs(major in 0u16..1000, minor in 0u16..1000, a in any::<u8>(), b in any::<u8>()) {
        roundtrip!(ProtocolVersionRepr { major, minor });
        roundtrip!(VencryptVersionRepr { major: a, minor: b });
    }

    #[test]
    fn pixel_format_repr(pf in pixel_format()) {
        // Normalise the flags to what the wire carries.
        roundtrip!(pf);
        roundtrip!(SetPixelFormatRepr { format: pf });
    }

    #[test]
    fn client_messages(r in rect(), inc in any::<bool>(), n in any::<u16>(), k in any::<u32>(), code in any::<u32>(), btn in any::<u8>(),
                       len in any::<u32>(), payload in prop::collection::vec(any::<u8>(), 0..=64), id in any::<u32>(), screens in any::<u8>()) {
        roundtrip!(SetEncodingsHeaderRepr { count: n });
        roundtrip!(FramebufferUpdateRequestRepr { incremental: inc, rect: r });
        roundtrip!(KeyEventRepr { down: inc, keysym: k });
        roundtrip!(PointerEventRepr { buttons: btn, x: r.x, y: r.y });
        roundtrip!(CutTextHeaderRepr { message_type: 6, length: len });
        roundtrip!(CutTextHeaderRepr { message_type: 3, length: len });
        roundtrip!(EnableContinuousUpdatesRepr { enable: inc, rect: r });
        roundtrip!(FenceRepr { flags: k, payload: heapless::Vec::from_slice(&payload).unwrap() });
        roundtrip!(Screen { id, rect: r, flags: k });
        roundtrip!(SetDesktopSizeHeaderRepr { width: r.width, height: r.height, screens });
        roundtrip!(QemuKeyEventRepr { down: inc, keysym: k, keycode: code });
    }

    #[test]
    fn server_messages(r in rect(), pf in pixel_format(), n in any::<u16>(), m in any::<u16>(), len in any::<u32>(), enc in any::<i32>(), s in any::<u8>()) {
        roundtrip!(ServerInitRepr { width: r.width, height: r.height, format: pf, name_len: len });
        roundtrip!(FramebufferUpdateRepr { rects: n });
        roundtrip!(RectHeaderRepr { rect: r, encoding: Encoding::from(enc) });
        roundtrip!(SetColourMapEntriesRepr { first: n, count: m });
        roundtrip!(ExtendedDesktopSizeRepr { screens: s });
        roundtrip!(ClientInitRepr { shared: s & 1 != 0 });
        roundtrip!(CopyRectRepr { src_x: n, src_y: m });
    }

    /// The encoder's and the decoder's view of the rectangle encodings' fields agree.
    #[test]
    fn encoding_fields(x in 0u8..16, y in 0u8..16, w in 1u8..=16, h in 1u8..=16, run in 1usize..100_000, r in rect(), bpp in prop::sample::select(vec![1usize, 2, 4])) {
        prop_assert_eq!(
            hextile::parse_subrect(hextile::subrect_xy(x, y), hextile::subrect_wh(w, h)),
            (u16::from(x), u16::from(y), u16::from(w), u16::from(h))
        );
        // A run length: (n - 1) / 255 bytes of 255, then the rest.
        let mut b = vec![zrle::RUN_LENGTH_MORE; (run - 1) / 255];
        b.push(((run - 1) % 255) as u8);
        prop_assert_eq!(b.len(), zrle::run_length_len(run));
        prop_assert_eq!(zrle::parse_run_length(&b), Some((run, b.len())));
        prop_assert_eq!(zrle::parse_run_length(&b[..b.len() - 1]), None);
        let mut b = vec![0u8; rre::subrect_len(bpp)];
        rre::emit_subrect_geometry(&mut b, bpp, &r);
        prop_assert_eq!(rre::parse_subrect_geometry(&b, bpp), r);
        let mut b = vec![0u8; rre::header_len(bpp)];
        rre::emit_header_count(&mut b, r.area());
        prop_assert_eq!(rre::parse_header(&b, bpp), Some((r.area(), &b[4..])));
        prop_assert_eq!(rre::parse_header(&b[..b.len() - 1], bpp), None);
    }

    #[test]
    fn cut_text_length_words(v in any::<i32>()) {
        let h = CutTextHeaderRepr { message_type: 6, length: v as u32 };
        match h.decode(true) {
            CutTextLength::Extended(n) => { prop_assert!(v < 0); prop_assert_eq!(u64::from(n), u64::from(v.unsigned_abs())); prop_assert_eq!(CutTextLength::Extended(n).to_wire(), v as u32); }
            CutTextLength::Text(n) => { prop_assert!(v >= 0); prop_assert_eq!(n, v as u32); }
        }
        prop_assert_eq!(h.decode(false), CutTextLength::Text(v as u32));
    }

    #[test]
    fn enums_keep_unknown_values(t in any::<u8>(), s in any::<u32>(), e in any::<i32>()) {
        prop_assert_eq!(u8::from(SecurityType::from(t)), t);
        prop_assert_eq!(u32::from(VencryptSubtype::from(s)), s);
        prop_assert_eq!(i32::from(Encoding::from(e)), e);
        prop_assert_eq!(u8::from(ClientMessageType::from(t)), t);
        prop_assert_eq!(u8::from(ServerMessageType::from(t)), t);
        let sub = zrle::Subencoding::from(t);
        prop_assert_eq!(u8::from(sub), t);
        let valid = matches!(t, 0..=16 | 128 | 130..=255);
        prop_assert_eq!(valid, !matches!(sub, zrle::Subencoding::Invalid(_)));
    }

    #[test]
    fn variable_lists(types in prop::collection::vec(any::<u8>(), 0..=255), subs in prop::collection::vec(any::<u32>(), 0..=255),
                      user in prop::collection::vec(any::<u8>(), 0..300), pass in prop::collection::vec(any::<u8>(), 0..300)) {
        let r = SecurityTypesRepr { types: &types };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b);
        prop_assert_eq!(SecurityTypesRepr::parse(&b).unwrap(), r);
        let r = FailureReasonRepr { reason: &types };
        let mut b = vec![0u8; r.buffer_len()];
        r.emit(&mut b);
        prop_assert_eq!(FailureReasonRepr::parse(&b).unwrap(), r);
        let list: std::vec::Vec<VencryptSubtype> = subs.iter().map(|&s| VencryptSubtype::from(s)).collect();
        let mut b = vec![0u8; VencryptSubtypesRepr::buffer_len_for(list.len())];
        VencryptSubtypesRepr::emit_list(&list, &mut b);
        let parsed = VencryptSubtypesRepr::parse(&b).unwrap();
        prop_assert!(parsed.iter().eq(list.iter().copied()));
        let c = PlainCredentialsRepr { username: &user, password: &pass };
        let mut b = vec![0u8; c.buffer_len()];
        c.emit(&mut b);
        prop_assert_eq!(PlainCredentialsRepr::parse(&b).unwrap(), c);
        prop_assert!(PlainCredentialsRepr::parse(&b[..b.len() - 1]).is_err() || c.buffer_len() == 8 && b.len() == 8);
    }
}

#[test]
fn spec_byte_vectors() {
    let mut b = [0u8; 12];
    ProtocolVersionRepr::of(Version::V3_8).emit(&mut b);
    assert_eq!(&b, b"RFB 003.008\n");
    assert_eq!(
        b,
        [
            0x52, 0x46, 0x42, 0x20, 0x30, 0x30, 0x33, 0x2e, 0x30, 0x30, 0x38, 0x0a
        ]
    );
    let mut b = [0u8; 16];
    PixelFormat::RGB888.emit(&mut b);
    assert_eq!(b, [32, 24, 0, 1, 0, 255, 0, 255, 0, 255, 16, 8, 0, 0, 0, 0]);
    let mut b = [0u8; 12];
    QemuKeyEventRepr {
        down: true,
        keysym: 0xff53,
        keycode: 0xcd,
    }
    .emit(&mut b);
    assert_eq!(b, [255, 0, 0, 1, 0, 0, 0xff, 0x53, 0, 0, 0, 0xcd]);
    assert_eq!(i32::from(Encoding::ExtendedClipboard) as u32, 0xc0a1_e5ce);
    assert_eq!(Encoding::from(-256).compress_level(), Some(0));
    assert_eq!(Encoding::from(-247).compress_level(), Some(9));
    assert!(ProtocolVersionRepr::parse(b"RFB 003.00x\n").is_err());
    assert_eq!(
        ProtocolVersionRepr::parse(b"XFB"),
        Err(WireError::Malformed)
    );
}
