//! One encode for many sessions: `shared_update_key` / `update_sent`.

use super::harness::*;
use super::updates::session;
use crate::error::CommandError;
use crate::server::{Damage, UpdateSource};
use crate::wire::*;

const W: u16 = 61;
const H: u16 = 37;

/// A session past its first (full) update, with an incremental request pending and new
/// pixels in the server's framebuffer.
fn viewer(enc: Encoding, wire: PixelFormat) -> Pair {
    let mut p = session(Auth::None, enc, PixelFormat::RGB888, wire, wire, W, H);
    p.server_fb = ServerFb::pattern(W, H, PixelFormat::RGB888, 4242);
    p.client
        .request_update(true, Rect::new(0, 0, W, H))
        .unwrap();
    p.run();
    assert!(p.server.wants_update());
    p
}

fn encode(p: &mut Pair, damage: &[Damage]) -> Vec<u8> {
    let src = UpdateSource::new(p.server_fb.fb(), damage);
    let mut bytes = Vec::new();
    let mut out = vec![0u8; crate::server::MIN_ENCODE_BUFFER];
    loop {
        let st = p.server.encode_update(&src, &mut out).unwrap();
        bytes.extend_from_slice(&out[..st.written]);
        if st.done {
            return bytes;
        }
    }
}

#[test]
fn sessions_with_equal_keys_get_identical_bytes_and_can_reuse_them() {
    let damage = [
        Damage::Changed(Rect::new(3, 4, 40, 20)),
        Damage::Changed(Rect::new(0, 30, W, 7)),
    ];
    for enc in [Encoding::Raw, Encoding::Rre, Encoding::Hextile] {
        for wire in [
            PixelFormat::RGB888,
            PixelFormat::RGB565,
            PixelFormat::BGR233,
        ] {
            let mut a = viewer(enc, wire);
            let mut b = viewer(enc, wire);
            let mut c = viewer(enc, wire);
            let ka = {
                let src = UpdateSource::new(a.server_fb.fb(), &damage);
                a.server.shared_update_key(&src)
            };
            let kc = {
                let src = UpdateSource::new(c.server_fb.fb(), &damage);
                c.server.shared_update_key(&src)
            };
            let key = ka.unwrap_or_else(|| panic!("{enc:?} {wire:?} not shareable"));
            assert_eq!(Some(key), kc);
            assert_eq!(key.encoding, enc);
            let bytes = encode(&mut a, &damage);
            assert!(bytes == encode(&mut b, &damage), "{enc:?} {wire:?}");
            // c sends a's bytes and is told so: its client sees the new pixels, and c waits
            // for the next request exactly as a does.
            {
                let src = UpdateSource::new(c.server_fb.fb(), &damage);
                c.server.update_sent(&src, key).unwrap();
            }
            assert!(!c.server.wants_update() && !a.server.wants_update());
            let before = a.client_fb.clone();
            for p in [&mut a, &mut c] {
                p.s2c.extend_from_slice(&bytes);
                p.run();
            }
            assert!(a.client_fb != before, "{enc:?} {wire:?}: nothing changed");
            assert!(c.client_fb == a.client_fb, "{enc:?} {wire:?}");
            c.client
                .request_update(true, Rect::new(0, 0, W, H))
                .unwrap();
            c.run();
            assert!(c.server.wants_update());
        }
    }
}

#[test]
fn keys_differ_with_the_encoding_or_the_format() {
    let damage = [Damage::Changed(Rect::new(0, 0, W, H))];
    let key = |p: &Pair| {
        let src = UpdateSource::new(p.server_fb.fb(), &damage);
        p.server.shared_update_key(&src).unwrap()
    };
    let raw = key(&viewer(Encoding::Raw, PixelFormat::RGB888));
    assert_ne!(raw, key(&viewer(Encoding::Hextile, PixelFormat::RGB888)));
    assert_ne!(raw, key(&viewer(Encoding::Raw, PixelFormat::RGB565)));
    assert_eq!(raw, key(&viewer(Encoding::Raw, PixelFormat::RGB888)));
}

#[test]
fn updates_with_more_than_pixels_are_not_shared() {
    let damage = [Damage::Changed(Rect::new(0, 0, W, H))];
    let none = |p: &Pair, fb: &ServerFb, d: &[Damage]| {
        let src = UpdateSource::new(fb.fb(), d);
        p.server.shared_update_key(&src).is_none()
    };
    let p = viewer(Encoding::Hextile, PixelFormat::RGB888);
    // a resize
    let bigger = ServerFb::pattern(W + 1, H, PixelFormat::RGB888, 1);
    assert!(none(&p, &bigger, &damage));
    // CopyRect
    let copied = [Damage::Copied {
        dst: Rect::new(0, 0, 8, 8),
        src_x: 8,
        src_y: 8,
    }];
    assert!(none(&p, &p.server_fb, &copied));
    // ZRLE's and Tight's streams belong to their connection
    #[cfg(feature = "alloc")]
    for e in [Encoding::Zrle, Encoding::Tight] {
        let z = viewer(e, PixelFormat::RGB888);
        assert!(none(&z, &z.server_fb, &damage), "{e:?}");
    }
    // LED state due
    let mut l = viewer(Encoding::Hextile, PixelFormat::RGB888);
    l.client
        .set_encodings(&[Encoding::Hextile, Encoding::QemuLedState])
        .unwrap();
    l.client
        .request_update(true, Rect::new(0, 0, W, H))
        .unwrap();
    l.run();
    l.server.set_led_state(0b101).unwrap();
    assert!(l.server.led_update_due());
    assert!(none(&l, &l.server_fb, &damage));
    // a non-incremental request from an ExtendedDesktopSize client (the size goes out too)
    let mut f = viewer(Encoding::Hextile, PixelFormat::RGB888);
    f.client
        .request_update(false, Rect::new(0, 0, W, H))
        .unwrap();
    f.run();
    assert!(none(&f, &f.server_fb, &damage));
    // no request pending
    let mut q = viewer(Encoding::Hextile, PixelFormat::RGB888);
    let _ = encode(&mut q, &damage);
    assert!(none(&q, &q.server_fb, &damage));
}

#[test]
fn a_wrong_key_changes_nothing() {
    let damage = [Damage::Changed(Rect::new(0, 0, W, H))];
    let other = {
        let p = viewer(Encoding::Raw, PixelFormat::RGB888);
        let src = UpdateSource::new(p.server_fb.fb(), &damage);
        p.server.shared_update_key(&src).unwrap()
    };
    let mut p = viewer(Encoding::Hextile, PixelFormat::RGB888);
    {
        let src = UpdateSource::new(p.server_fb.fb(), &damage);
        assert_eq!(
            p.server.update_sent(&src, other),
            Err(CommandError::InvalidArgument)
        );
    }
    assert!(p.server.wants_update());
    let bytes = encode(&mut p, &damage);
    p.s2c.extend_from_slice(&bytes);
    p.run();
    assert!(p.client_fb == p.expected_client_fb(&PixelFormat::RGB888));
}
