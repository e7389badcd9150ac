//! Tight and TightPNG: every sub-encoding through our client pixel for pixel in every pixel
//! format, the choice of sub-encoding, rectangle splitting, zlib stream resets (both ways),
//! output independent of the encode buffer size, JPEG within a PSNR bound, TightPNG images read
//! back with the `png` crate, and hostile Tight data refused with a clear error.

use proptest::prelude::*;

use super::harness::*;
use crate::client::{Client, ClientConfig};
use crate::error::{Error, ProtocolError};
use crate::server::Damage;
use crate::wire::tight::*;
use crate::wire::*;
use crate::{FramebufferMut, Instant};

// ------------------------------------------------------------------------------ content

/// A server framebuffer (native RGB888) from a colour function.
fn fb_of(w: u16, h: u16, f: impl Fn(usize, usize) -> u32) -> ServerFb {
    let mut fb = ServerFb::pattern(w, h, PixelFormat::RGB888, 1);
    for y in 0..usize::from(h) {
        for x in 0..usize::from(w) {
            let at = y * fb.stride + x * 4;
            fb.data[at..at + 4].copy_from_slice(&f(x, y).to_le_bytes());
        }
    }
    fb
}

fn noise(seed: u32) -> impl Fn(usize, usize) -> u32 {
    move |x, y| {
        let mut v = (x as u32)
            .wrapping_mul(0x9e37_79b9)
            .wrapping_add((y as u32).wrapping_mul(0x85eb_ca6b))
            ^ seed;
        v ^= v >> 15;
        v = v.wrapping_mul(0x2c1b_3c6d);
        v ^= v >> 12;
        v & 0xff_ffff
    }
}

/// Smooth colour ramps with a little noise: photo-like.
fn photo(x: usize, y: usize) -> u32 {
    let n = noise(7)(x, y);
    let j = |v: usize, k: u32| (v as i32 + ((n >> k) & 3) as i32 - 1).clamp(0, 255) as u32;
    (j(x * 2 + 20, 0) << 16) | (j(y * 3 + 10, 8) << 8) | j((x + y) + 40, 16)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Content {
    Solid,
    Mono,
    Indexed,
    Photo,
    Noise,
}

fn content(c: Content, w: u16, h: u16) -> ServerFb {
    match c {
        Content::Solid => fb_of(w, h, |_, _| 0x0034_5678),
        Content::Mono => fb_of(w, h, |x, y| {
            if (x / 3 + y / 2) % 3 == 0 {
                0x0010_1010
            } else {
                0x00f0_e0d0
            }
        }),
        Content::Indexed => fb_of(w, h, |x, y| {
            const P: [u32; 10] = [
                0x000000, 0xffffff, 0xff0000, 0x00ff00, 0x0000ff, 0x808080, 0xffff00, 0x00ffff,
                0x804020, 0x2040c0,
            ];
            P[(x / 4 + y / 3 * 7) % 10]
        }),
        Content::Photo => fb_of(w, h, photo),
        Content::Noise => fb_of(w, h, noise(3)),
    }
}

// ------------------------------------------------------------------------------ the wire

/// What one Tight rectangle on the wire is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Kind {
    Fill,
    Jpeg,
    Png(Vec<u8>),
    Basic {
        stream: u8,
        filter: u8,
        colours: usize,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct TightRect {
    rect: Rect,
    encoding: Encoding,
    resets: u8,
    kind: Kind,
}

/// The Tight rectangles of the FramebufferUpdate at the start of `b` (an update of nothing
/// else), in the wire format `pf`.
fn walk(b: &[u8], pf: &PixelFormat) -> Vec<TightRect> {
    assert_eq!(b[0], 0, "not a FramebufferUpdate");
    let n = be16(b, 2);
    let tp = tpixel_len(&crate::pixel::effective_format(pf));
    let mut pos = 4;
    let mut out = Vec::new();
    for _ in 0..n {
        let h = RectHeaderRepr::parse(&b[pos..]).unwrap();
        pos += RectHeaderRepr::LEN;
        assert!(
            matches!(h.encoding, Encoding::Tight | Encoding::TightPng),
            "{h:?}"
        );
        let r = h.rect;
        assert!(r.width <= MAX_WIDTH && r.area() <= 65536, "{r:?}");
        let ctl = b[pos];
        pos += 1;
        let compact = |pos: &mut usize| {
            let (len, k) = parse_compact_len(&b[*pos..]).unwrap();
            *pos += k;
            let s = *pos;
            *pos += len as usize;
            b[s..*pos].to_vec()
        };
        let kind = match Compression::of(ctl) {
            Compression::Fill => {
                pos += tp;
                Kind::Fill
            }
            Compression::Jpeg => {
                compact(&mut pos);
                Kind::Jpeg
            }
            Compression::Png => Kind::Png(compact(&mut pos)),
            Compression::Basic { stream, filter } => {
                let filter = if filter {
                    pos += 1;
                    b[pos - 1]
                } else {
                    FILTER_COPY
                };
                let mut colours = 0;
                if filter == FILTER_PALETTE {
                    colours = usize::from(b[pos]) + 1;
                    pos += 1 + colours * tp;
                }
                let len = usize::from(r.height) * row_len(r.width, colours, tp);
                if len < MIN_TO_COMPRESS {
                    pos += len;
                } else {
                    compact(&mut pos);
                }
                Kind::Basic {
                    stream,
                    filter,
                    colours,
                }
            }
            Compression::Invalid(v) => panic!("invalid control {v}"),
        };
        out.push(TightRect {
            rect: r,
            encoding: h.encoding,
            resets: resets(ctl),
            kind,
        });
    }
    assert_eq!(pos, b.len(), "bytes after the update");
    out
}

/// A session with `encodings`, one full update of `fb`: the pair and the update's bytes.
fn tight_session(
    fb: ServerFb,
    wire: PixelFormat,
    client_fb: PixelFormat,
    encodings: &[Encoding],
) -> (Pair, Vec<u8>) {
    let all = [Rect::new(0, 0, fb.width, fb.height)];
    tight_session_damage(fb, wire, client_fb, encodings, &all)
}

/// The same with the update made of `damage`.
fn tight_session_damage(
    fb: ServerFb,
    wire: PixelFormat,
    client_fb: PixelFormat,
    encodings: &[Encoding],
    damage: &[Rect],
) -> (Pair, Vec<u8>) {
    let (w, h) = (fb.width, fb.height);
    let mut p = Pair::new(Auth::None, fb, client_fb);
    p.run();
    assert!(p.client_ready);
    p.client.set_pixel_format(wire).unwrap();
    p.client.set_encodings(encodings).unwrap();
    p.run();
    let at = p.rec_s2c.len();
    p.client
        .request_update(false, Rect::new(0, 0, w, h))
        .unwrap();
    p.damage = damage.iter().map(|r| Damage::Changed(*r)).collect();
    p.run();
    let mut update = p.rec_s2c[at..].to_vec();
    if !wire.true_colour {
        // The colour map (32 entries a message) came first.
        let mut pos = 0;
        while update[pos] == 1 {
            pos += 6 + 6 * usize::from(be16(&update, pos + 4));
        }
        update.drain(..pos);
    }
    (p, update)
}

const WIRES: [PixelFormat; 9] = [
    PixelFormat::RGB888,
    PixelFormat::RGB888_BE,
    PixelFormat::BGR888,
    PixelFormat::true_colour(32, 24, false, [255, 255, 255], [24, 16, 8]),
    PixelFormat::true_colour(32, 30, true, [1023, 1023, 1023], [20, 10, 0]),
    PixelFormat::RGB565,
    PixelFormat::RGB565_BE,
    PixelFormat::RGB555,
    PixelFormat::BGR233,
];

fn assert_exact(p: &Pair, wire: &PixelFormat, what: &str) {
    let expect = p.expected_client_fb(wire);
    assert!(
        !p.client_events.iter().any(|e| e.starts_with("error")),
        "{what}: {:?}",
        p.client_events
    );
    assert!(p.client_fb == expect, "{what}: pixels differ");
}

// ------------------------------------------------------------------------------ round trips

/// Every content in every wire format (and colour-mapped) and two client framebuffer formats:
/// pixel for pixel, with the sub-encoding the content calls for.
#[test]
fn every_sub_encoding_every_format_pixel_exact() {
    let mut wires = WIRES.to_vec();
    wires.push(PixelFormat::COLOUR_MAP8);
    for c in [
        Content::Solid,
        Content::Mono,
        Content::Indexed,
        Content::Photo,
        Content::Noise,
    ] {
        for wire in &wires {
            // (a colour-mapped session needs a framebuffer in its own format)
            let fbs: &[PixelFormat] = if wire.true_colour {
                &[PixelFormat::RGB888, *wire]
            } else {
                &[*wire]
            };
            for &client_fb in fbs {
                let what = format!("{c:?} wire {wire:?} fb {client_fb:?}");
                let (p, update) =
                    tight_session(content(c, 83, 45), *wire, client_fb, &[Encoding::Tight]);
                assert_exact(&p, wire, &what);
                let rects = walk(&update, wire);
                assert_eq!(rects.len(), 1, "{what}");
                let eff = crate::pixel::effective_format(wire);
                let small = eff.bits_per_pixel == 8;
                let want = match c {
                    Content::Solid => Kind::Fill,
                    Content::Mono => Kind::Basic {
                        stream: 1,
                        filter: FILTER_PALETTE,
                        colours: 2,
                    },
                    // An 8-bit index is no smaller than an 8-bit pixel.
                    Content::Indexed if small => Kind::Basic {
                        stream: 0,
                        filter: FILTER_COPY,
                        colours: 0,
                    },
                    Content::Indexed => Kind::Basic {
                        stream: 2,
                        filter: FILTER_PALETTE,
                        colours: 10,
                    },
                    Content::Photo if tpixel24(&eff) => Kind::Basic {
                        stream: 3,
                        filter: FILTER_GRADIENT,
                        colours: 0,
                    },
                    // Few colours left after reducing a photo to 8 bits: a palette or copy.
                    Content::Photo if small => rects[0].kind.clone(),
                    Content::Photo | Content::Noise => Kind::Basic {
                        stream: 0,
                        filter: FILTER_COPY,
                        colours: 0,
                    },
                };
                assert_eq!(rects[0].kind, want, "{what}");
                assert_eq!(rects[0].resets, 0, "{what}");
                let st = p.server.tight_stats();
                let counted = match rects[0].kind {
                    Kind::Fill => st.fill,
                    Kind::Basic { colours: 2, .. } => st.mono,
                    Kind::Basic {
                        filter: FILTER_PALETTE,
                        ..
                    } => st.indexed,
                    Kind::Basic {
                        filter: FILTER_GRADIENT,
                        ..
                    } => st.gradient,
                    Kind::Basic { .. } => st.full_colour,
                    Kind::Jpeg => st.jpeg,
                    Kind::Png(_) => st.png,
                };
                let all = st.fill
                    + st.mono
                    + st.indexed
                    + st.full_colour
                    + st.gradient
                    + st.jpeg
                    + st.png;
                assert_eq!((counted, all), (1, 1), "{what}: {st:?}");
            }
        }
    }
}

/// The default desktop pattern in every format, as the other encodings' round trip.
#[test]
fn desktop_pattern_every_format() {
    for wire in WIRES {
        let fb = ServerFb::pattern(150, 120, PixelFormat::RGB565, 42);
        let (p, update) = tight_session(fb, wire, PixelFormat::RGB888, &[Encoding::Tight]);
        assert_exact(&p, &wire, &format!("{wire:?}"));
        assert!(!walk(&update, &wire).is_empty());
    }
}

/// Wide and large rectangles are cut into pieces of at most 256 pixels across and 16384 in all
/// (inside Tight's 2048 and 65536), which cover the rectangle.
#[test]
fn large_rectangles_are_split() {
    let (w, h) = (2100u16, 70u16);
    let fb = fb_of(w, h, |x, y| {
        if (x / 300 + y / 20) % 2 == 0 {
            noise(1)(x, y)
        } else {
            0x00ff_8000
        }
    });
    let (p, update) = tight_session(
        fb,
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        &[Encoding::Tight],
    );
    assert_exact(&p, &PixelFormat::RGB888, "2100x70");
    let rects = walk(&update, &PixelFormat::RGB888);
    let area: u32 = rects.iter().map(|r| r.rect.area()).sum();
    assert_eq!(area, u32::from(w) * u32::from(h));
    // 9 columns (8 of 256, one of 52) by 2 rows (64 and 6).
    assert_eq!(rects.len(), 9 * 2, "{rects:?}");
    assert_eq!(rects[0].rect, Rect::new(0, 0, 256, 64));
    assert_eq!(rects[8].rect, Rect::new(2048, 0, 52, 64));
    assert_eq!(rects[17].rect, Rect::new(2048, 64, 52, 6));
    assert!(rects.iter().any(|r| r.kind == Kind::Fill), "{rects:?}");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, ..ProptestConfig::default() })]

    /// Random pictures (a few colours to noise, every size up to 100 × 70) in random formats
    /// come through pixel for pixel.
    #[test]
    fn random_pictures_round_trip(
        w in 1u16..100,
        h in 1u16..70,
        colours in prop::sample::select(vec![1usize, 2, 3, 7, 40, 300, 100_000]),
        seed in any::<u32>(),
        wire in 0usize..WIRES.len(),
        level in 0u8..10,
    ) {
        let wire = WIRES[wire];
        let n = noise(seed);
        let fb = fb_of(w, h, |x, y| {
            let v = n(x / 3, y / 2);
            if colours >= 100_000 { v } else { n(v as usize % colours, 0) }
        });
        let (p, update) = tight_session(fb, wire, PixelFormat::RGB888, &[Encoding::Tight, Encoding::compress(level)]);
        prop_assert!(p.client_fb == p.expected_client_fb(&wire), "{:?}", p.client_events);
        prop_assert!(!walk(&update, &wire).is_empty());
    }
}

// ------------------------------------------------------------------------------ resets

/// A compression level change makes the server start its streams anew at their next use,
/// telling the client to reset its side in that rectangle's control byte (and only there).
#[test]
fn compression_level_change_resets_streams() {
    // Mono, indexed and full-colour bands (three streams), several pieces each.
    let fb = fb_of(300, 660, |x, y| match y / 220 {
        0 => {
            if (x + y) % 5 == 0 {
                0
            } else {
                0xffffff
            }
        }
        1 => [0x000000, 0xff0000, 0x00ff00, 0x0000ff, 0xffffff][(x / 7 + y) % 5],
        _ => noise(9)(x, y),
    });
    let (w, h) = (fb.width, fb.height);
    let (mut p, first) = tight_session(
        fb,
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        &[Encoding::Tight, Encoding::compress(6)],
    );
    assert_exact(&p, &PixelFormat::RGB888, "first");
    assert!(
        walk(&first, &PixelFormat::RGB888)
            .iter()
            .all(|r| r.resets == 0)
    );
    let round = |p: &mut Pair, encodings: &[Encoding]| {
        p.client.set_encodings(encodings).unwrap();
        p.run();
        let at = p.rec_s2c.len();
        p.client
            .request_update(false, Rect::new(0, 0, w, h))
            .unwrap();
        p.damage = vec![Damage::Changed(Rect::new(0, 0, w, h))];
        p.run();
        assert_exact(p, &PixelFormat::RGB888, "after the change");
        walk(&p.rec_s2c[at..], &PixelFormat::RGB888)
    };
    // The same level: no reset.
    let same = round(&mut p, &[Encoding::Tight, Encoding::compress(6)]);
    assert!(same.iter().all(|r| r.resets == 0));
    // Another level with the same zlib level (5 and 6 are both zlib 3): no reset either.
    assert_eq!(
        crate::server::TIGHT_ZLIB_LEVEL[5],
        crate::server::TIGHT_ZLIB_LEVEL[6]
    );
    let alike = round(&mut p, &[Encoding::Tight, Encoding::compress(5)]);
    assert!(alike.iter().all(|r| r.resets == 0));
    // Another level: each stream is reset once, in the first rectangle that uses it.
    let changed = round(&mut p, &[Encoding::Tight, Encoding::compress(1)]);
    let mut seen = 0u8;
    for r in &changed {
        let Kind::Basic { stream, .. } = r.kind else {
            assert_eq!(r.resets, 0);
            continue;
        };
        let bit = 1 << stream;
        if seen & bit == 0 {
            assert_eq!(r.resets, bit, "{r:?}");
            seen |= bit;
        } else {
            assert_eq!(r.resets, 0, "{r:?}");
        }
    }
    let used = changed.iter().fold(0u8, |m, r| match r.kind {
        Kind::Basic { stream, .. } => m | 1 << stream,
        _ => m,
    });
    assert_eq!(seen, used, "{changed:?}");
    assert_eq!(
        used & 0b111,
        0b111,
        "mono, indexed and full colour: {changed:?}"
    );
}

/// A running client in `format` after a None handshake with a `w` × `h` server, having asked
/// for Tight (and a JPEG quality, if it has a decoder).
fn tight_client(
    format: PixelFormat,
    w: u16,
    h: u16,
    limits: Option<crate::client::ClientLimits>,
) -> Client {
    let mut cc = ClientConfig::with_security(&[SecurityType::None], &[]);
    if let Some(l) = limits {
        cc.limits = l;
    }
    let mut c = Client::new(cc, Instant::ZERO);
    let mut hello = [0u8; 12 + 2 + 4 + 24];
    hello[..12].copy_from_slice(b"RFB 003.008\n");
    hello[12..14].copy_from_slice(&[1, 1]);
    ServerInitRepr {
        width: w,
        height: h,
        format,
        name_len: 0,
    }
    .emit(&mut hello[18..]);
    let mut at = 0;
    while at < hello.len() {
        at += c.handle_input(&hello[at..]).unwrap().consumed;
        while c.poll_event().is_some() {}
    }
    if cfg!(feature = "jpeg-decode") {
        c.set_encodings(&[Encoding::Tight, Encoding::jpeg_quality(5)])
            .unwrap();
    } else {
        c.set_encodings(&[Encoding::Tight]).unwrap();
    }
    let mut out = [0u8; 512];
    while c.poll_transmit(&mut out).unwrap().is_some() {}
    c
}

/// An update of `rects` (header, body) for a client.
fn update_of(rects: &[(Rect, Vec<u8>)]) -> Vec<u8> {
    let mut m = vec![0, 0];
    m.extend_from_slice(&(rects.len() as u16).to_be_bytes());
    for (r, body) in rects {
        let mut h = [0u8; 12];
        RectHeaderRepr {
            rect: *r,
            encoding: Encoding::Tight,
        }
        .emit(&mut h);
        m.extend_from_slice(&h);
        m.extend_from_slice(body);
    }
    m
}

/// Feeds `msg` to `c` in pieces of `step` bytes into a `w` × `h` RGB888 framebuffer; the
/// first error, and whether the update ended. A client that stops consuming while the
/// whole message is there is a hang (a failure of the test).
fn feed(
    c: &mut Client,
    msg: &[u8],
    step: usize,
    fb: &mut [u8],
    w: u16,
    h: u16,
) -> Result<bool, Error> {
    let mut have = 0;
    let mut at = 0;
    let mut ended = false;
    loop {
        have = (have + step).min(msg.len());
        loop {
            let mut f =
                FramebufferMut::new(fb, w, h, usize::from(w) * 4, PixelFormat::RGB888).unwrap();
            let p = c.handle_input_fb(&msg[at..have], &mut f)?;
            at += p.consumed;
            let mut ev = false;
            while let Some(e) = c.poll_event() {
                ev = true;
                ended |= e == crate::client::Event::UpdateEnd;
            }
            if p.consumed == 0 && !ev {
                break;
            }
        }
        if have == msg.len() {
            assert_eq!(
                at,
                msg.len(),
                "the client stalled with the whole message in hand"
            );
            return Ok(ended);
        }
    }
}

fn zlib(c: &mut crate::zlib::MinizCompressor, data: &[u8]) -> Vec<u8> {
    let mut z = Vec::new();
    crate::zlib::compress_all(c, data, &mut z).unwrap();
    z
}

fn compact(len: usize) -> Vec<u8> {
    let mut b = [0u8; 3];
    let n = emit_compact_len(len as u32, &mut b);
    b[..n].to_vec()
}

/// The client resets the streams a control byte names: a rectangle from a new server-side
/// stream decodes after a reset, and is a zlib error without one.
#[test]
fn client_honours_stream_resets() {
    use crate::zlib::MinizCompressor;
    let r = Rect::new(0, 0, 8, 4);
    let data: Vec<u8> = (0..8 * 4 * 3).map(|i| (i * 5) as u8).collect();
    let body = |ctl: u8, z: &[u8]| {
        let mut b = vec![ctl];
        b.extend(compact(z.len()));
        b.extend_from_slice(z);
        b
    };
    for stream in 0..4u8 {
        for reset in [true, false] {
            let mut a = MinizCompressor::new(6);
            let mut b = MinizCompressor::new(6);
            let first = zlib(&mut a, &data);
            let again = zlib(&mut a, &data);
            let fresh = zlib(&mut b, &data);
            let ctl = stream << 4;
            let rects = [
                (r, body(ctl, &first)),
                (r, body(ctl, &again)),
                (r, body(ctl | if reset { 1 << stream } else { 0 }, &fresh)),
            ];
            for step in [1, 7, 100_000] {
                let mut c = tight_client(PixelFormat::RGB888, 8, 4, None);
                let mut fb = vec![0u8; 8 * 4 * 4];
                let res = feed(&mut c, &update_of(&rects), step, &mut fb, 8, 4);
                if reset {
                    assert_eq!(res, Ok(true), "stream {stream}");
                    for (i, px) in fb.chunks_exact(4).enumerate() {
                        assert_eq!(&px[..3], &[data[i * 3 + 2], data[i * 3 + 1], data[i * 3]]);
                    }
                } else {
                    assert!(
                        matches!(
                            res,
                            Err(Error::Protocol(
                                ProtocolError::ZlibError | ProtocolError::MalformedTight
                            ))
                        ),
                        "stream {stream}: {res:?}"
                    );
                }
            }
        }
    }
}

// ------------------------------------------------------------------------------ buffers

/// The bytes of an update do not depend on the size of the buffer it is encoded into.
#[test]
fn output_independent_of_the_encode_buffer() {
    let fb = || {
        fb_of(700, 300, |x, y| match (x / 100 + y / 100) % 4 {
            0 => photo(x, y),
            1 => noise(2)(x, y),
            2 => 0x00c0_c0c0,
            _ => [0x000000, 0xffffff, 0x3366ff][(x + y) % 3],
        })
    };
    let mut first: Option<Vec<u8>> = None;
    for chunk in [crate::server::MIN_ENCODE_BUFFER, 2049, 3001, 65536, 1 << 20] {
        {
            let mut p = Pair::new(Auth::None, fb(), PixelFormat::RGB888);
            p.out_chunk = chunk;
            p.run();
            let mut encs = vec![Encoding::Tight, Encoding::compress(4)];
            if cfg!(feature = "jpeg-decode") {
                encs.push(Encoding::jpeg_quality(7));
            }
            p.client.set_encodings(&encs).unwrap();
            p.client
                .request_update(false, Rect::new(0, 0, 700, 300))
                .unwrap();
            p.damage = vec![
                Damage::Changed(Rect::new(0, 0, 700, 300)),
                Damage::Changed(Rect::new(10, 10, 5, 5)),
            ];
            p.run();
            assert!(!p.client_events.iter().any(|e| e.starts_with("error")));
            match &first {
                None => first = Some(p.rec_s2c.clone()),
                Some(f) => assert!(*f == p.rec_s2c, "chunk {chunk}"),
            }
        }
    }
}

// ------------------------------------------------------------------------------ JPEG

#[cfg(all(feature = "jpeg-encode", feature = "jpeg-decode"))]
fn psnr(a: &[u8], b: &[u8]) -> f64 {
    let mut se = 0f64;
    let mut n = 0f64;
    for (pa, pb) in a.chunks_exact(4).zip(b.chunks_exact(4)) {
        for c in 0..3 {
            let d = f64::from(pa[c]) - f64::from(pb[c]);
            se += d * d;
            n += 1.0;
        }
    }
    if se == 0.0 {
        return f64::INFINITY;
    }
    10.0 * (255.0 * 255.0 / (se / n)).log10()
}

/// With a JPEG quality, photo-like pieces go out as JPEG and come back within a PSNR bound
/// (higher levels closer); flat and few-colour pieces stay lossless; formats JPEG may not be
/// used with (8 bits per pixel, colour maps) get none.
#[test]
#[cfg(all(feature = "jpeg-encode", feature = "jpeg-decode"))]
fn jpeg_within_psnr_bound() {
    let fb = || {
        fb_of(
            256,
            128,
            |x, y| if x < 200 { photo(x, y) } else { 0x0020_4060 },
        )
    };
    let mut last = 0.0;
    for (level, bound) in [(1u8, 33.0), (5, 37.0), (9, 41.0)] {
        for wire in [PixelFormat::RGB888, PixelFormat::RGB565] {
            let (p, update) = tight_session_damage(
                fb(),
                wire,
                PixelFormat::RGB888,
                &[Encoding::Tight, Encoding::jpeg_quality(level)],
                &[Rect::new(0, 0, 200, 128), Rect::new(200, 0, 56, 128)],
            );
            let rects = walk(&update, &wire);
            assert!(rects.iter().any(|r| r.kind == Kind::Jpeg), "{rects:?}");
            let jpegs = rects.iter().filter(|r| r.kind == Kind::Jpeg).count() as u64;
            assert_eq!(p.server.tight_stats().jpeg, jpegs);
            let q = [10u8, 20, 30, 40, 50, 60, 70, 80, 90, 95][usize::from(level)];
            let asked = if wire.bits_per_pixel == 8 {
                None
            } else {
                Some(q)
            };
            assert_eq!(p.server.client_jpeg_quality(), asked);
            let expect = p.expected_client_fb(&wire);
            let q = psnr(&p.client_fb, &expect);
            assert!(
                q >= bound,
                "level {level} {wire:?}: PSNR {q:.1} dB < {bound}"
            );
            // The flat strip on the right is exact.
            for y in 0..128usize {
                for x in 200..256usize {
                    let i = (y * 256 + x) * 4;
                    assert_eq!(p.client_fb[i..i + 4], expect[i..i + 4]);
                }
            }
            if wire == PixelFormat::RGB888 {
                assert!(q > last, "level {level}: {q:.1} dB");
                last = q;
            }
        }
    }
    for wire in [PixelFormat::BGR233, PixelFormat::COLOUR_MAP8] {
        let (p, update) = tight_session(
            fb(),
            wire,
            wire,
            &[Encoding::Tight, Encoding::jpeg_quality(9)],
        );
        assert_exact(&p, &wire, &format!("{wire:?}"));
        assert!(walk(&update, &wire).iter().all(|r| r.kind != Kind::Jpeg));
        assert_eq!(p.server.client_jpeg_quality(), None, "{wire:?}");
    }
    // Without a quality level there is no JPEG.
    let (p, update) = tight_session(
        fb(),
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        &[Encoding::Tight],
    );
    assert_exact(&p, &PixelFormat::RGB888, "no quality");
    assert!(
        walk(&update, &PixelFormat::RGB888)
            .iter()
            .all(|r| r.kind != Kind::Jpeg)
    );
}

/// TigerVNC's fine quality and subsampling pseudo-encodings: greyscale subsampling gives grey
/// pixels, the fine quality alone turns JPEG on.
#[test]
#[cfg(all(feature = "jpeg-encode", feature = "jpeg-decode"))]
fn fine_quality_and_subsampling() {
    let fb = || fb_of(128, 64, photo);
    let (p, update) = tight_session(
        fb(),
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        &[
            Encoding::Tight,
            Encoding::from(-512 + 90),
            Encoding::from(-768 + 3),
        ],
    );
    assert!(
        walk(&update, &PixelFormat::RGB888)
            .iter()
            .all(|r| r.kind == Kind::Jpeg)
    );
    for px in p.client_fb.chunks_exact(4) {
        let (lo, hi) = (px[..3].iter().min().unwrap(), px[..3].iter().max().unwrap());
        assert!(hi - lo <= 2, "not grey: {px:?}");
    }
    let (p, update) = tight_session(
        fb(),
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        &[Encoding::Tight, Encoding::from(-512 + 95)],
    );
    assert!(
        walk(&update, &PixelFormat::RGB888)
            .iter()
            .all(|r| r.kind == Kind::Jpeg)
    );
    let q = psnr(&p.client_fb, &p.expected_client_fb(&PixelFormat::RGB888));
    assert!(q >= 34.0, "fine quality 95: {q:.1} dB");
}

/// A server without a JPEG encoder (or told to use none) sends everything lossless.
#[test]
fn no_jpeg_encoder_means_lossless() {
    let fb = fb_of(128, 64, photo);
    let mut p = Pair::new(Auth::None, fb, PixelFormat::RGB888);
    p.server.set_jpeg_encoder(None);
    p.run();
    p.client.set_encodings(&[Encoding::Tight]).unwrap();
    // (a client without a JPEG decoder cannot ask for a quality level)
    let asked = p
        .client
        .set_encodings(&[Encoding::Tight, Encoding::jpeg_quality(9)])
        .is_ok();
    assert_eq!(asked, cfg!(feature = "jpeg-decode"));
    let at = p.rec_s2c.len();
    p.client
        .request_update(false, Rect::new(0, 0, 128, 64))
        .unwrap();
    p.damage = vec![Damage::Changed(Rect::new(0, 0, 128, 64))];
    p.run();
    assert_exact(&p, &PixelFormat::RGB888, "no encoder");
    assert!(
        walk(&p.rec_s2c[at..], &PixelFormat::RGB888)
            .iter()
            .all(|r| r.kind != Kind::Jpeg)
    );
}

// ------------------------------------------------------------------------------ TightPNG

/// TightPNG sends Fill, PNG (indexed or RGB) and, with a quality level, JPEG; the PNGs read
/// back with the `png` crate are the pixels exactly.
#[test]
fn tight_png_images_are_the_pixels() {
    let (w, h) = (300u16, 240u16);
    let fb = || {
        fb_of(w, h, |x, y| match y / 80 {
            0 => 0x0055_aa00,
            1 => [0x000000, 0xffffff, 0xff00ff][(x / 5 + y) % 3],
            _ => photo(x, y),
        })
    };
    let qualities: &[bool] = if cfg!(feature = "jpeg-encode") {
        &[false, true]
    } else {
        &[false]
    };
    for &jpeg in qualities {
        let mut p = Pair::new(Auth::None, fb(), PixelFormat::RGB888);
        p.run();
        // Our client cannot ask for TightPNG: the message is written by hand.
        let mut encs = vec![Encoding::TightPng];
        if jpeg {
            encs.push(Encoding::jpeg_quality(8));
        }
        let mut m = vec![2, 0];
        m.extend_from_slice(&(encs.len() as u16).to_be_bytes());
        for e in &encs {
            m.extend_from_slice(&i32::from(*e).to_be_bytes());
        }
        p.c2s.extend_from_slice(&m);
        p.run();
        let at = p.rec_s2c.len();
        p.client
            .request_update(false, Rect::new(0, 0, w, h))
            .unwrap();
        p.damage = (0..3)
            .map(|b| Damage::Changed(Rect::new(0, b * 80, w, 80)))
            .collect();
        p.run();
        let rects = walk(&p.rec_s2c[at..], &PixelFormat::RGB888);
        let mut kinds = (0, 0, 0);
        for r in &rects {
            assert_eq!(r.encoding, Encoding::TightPng);
            match &r.kind {
                Kind::Fill => kinds.0 += 1,
                Kind::Jpeg => kinds.2 += 1,
                Kind::Png(data) => {
                    kinds.1 += 1;
                    let mut d = png::Decoder::new(std::io::Cursor::new(data));
                    d.set_transformations(png::Transformations::EXPAND);
                    let mut reader = d.read_info().unwrap();
                    let mut buf = vec![0u8; reader.output_buffer_size().unwrap()];
                    let info = reader.next_frame(&mut buf).unwrap();
                    assert_eq!(
                        (info.width, info.height),
                        (u32::from(r.rect.width), u32::from(r.rect.height))
                    );
                    assert_eq!(info.color_type, png::ColorType::Rgb);
                    for y in 0..usize::from(r.rect.height) {
                        for x in 0..usize::from(r.rect.width) {
                            let (fx, fy) = (usize::from(r.rect.x) + x, usize::from(r.rect.y) + y);
                            let at = fy * p.server_fb.stride + fx * 4;
                            let s = &p.server_fb.data[at..at + 3];
                            let d = &buf[(y * usize::from(r.rect.width) + x) * 3..][..3];
                            assert_eq!([s[2], s[1], s[0]], [d[0], d[1], d[2]], "({fx},{fy})");
                        }
                    }
                }
                Kind::Basic { .. } => panic!("Basic compression in TightPNG: {r:?}"),
            }
        }
        assert!(kinds.0 > 0 && kinds.1 > 0, "{kinds:?}");
        assert_eq!(kinds.2 > 0, jpeg, "{kinds:?}");
    }
}

// ------------------------------------------------------------------------------ hostile data

/// Bad Tight data from a server is a clear protocol error at every split, never a panic or a
/// stall.
#[test]
fn hostile_tight_data_is_refused() {
    use crate::zlib::MinizCompressor;
    use ProtocolError as P;
    let r = Rect::new(0, 0, 16, 16);
    let tp = [1u8, 2, 3];
    let zdata = |data: &[u8]| {
        let z = zlib(&mut MinizCompressor::new(6), data);
        let mut b = compact(z.len());
        b.extend(z);
        b
    };
    let cat = |parts: &[&[u8]]| parts.concat();
    let copy_data = vec![7u8; 16 * 16 * 3];
    #[cfg_attr(not(feature = "jpeg-decode"), allow(unused_mut))]
    let mut cases: Vec<(&str, Rect, Vec<u8>, P)> = vec![
        ("invalid control", r, vec![0xb0], P::MalformedTight),
        (
            "Basic without zlib, not asked for",
            r,
            vec![0xa0],
            P::MalformedTight,
        ),
        ("unknown filter", r, vec![0x40, 3], P::MalformedTight),
        (
            "2 colours, index 2 of a 1-colour palette",
            r,
            cat(&[&[0x50, 1, 0], &tp, &zdata(&[0xff; 32])]),
            P::MalformedTight,
        ),
        (
            "3 colours, index 5",
            r,
            cat(&[&[0x60, 1, 2], &tp, &tp, &tp, &zdata(&[5; 256])]),
            P::MalformedTight,
        ),
        (
            "zlib length beyond any encoder's",
            r,
            cat(&[&[0x00], &compact(2 * 768 + 1025)]),
            P::MalformedTight,
        ),
        (
            "too little data",
            r,
            cat(&[&[0x00], &zdata(&copy_data[..700])]),
            P::MalformedTight,
        ),
        (
            "too much data",
            r,
            cat(&[&[0x00], &zdata(&[copy_data.clone(), vec![1; 30]].concat())]),
            P::MalformedTight,
        ),
        (
            "bytes after a finished zlib stream",
            r,
            {
                let mut z = miniz_oxide::deflate::compress_to_vec_zlib(&copy_data, 6);
                z.extend_from_slice(b"garbage");
                cat(&[&[0x00], &compact(z.len()), &z])
            },
            P::MalformedTight,
        ),
        (
            "corrupt zlib",
            r,
            cat(&[&[0x10], &compact(40), &[0x78, 0x9c], &[0xff; 38]]),
            P::ZlibError,
        ),
        (
            "wider than 2048",
            Rect::new(0, 0, 2049, 1),
            vec![0x00],
            P::TightTooWide,
        ),
    ];
    #[cfg(feature = "jpeg-decode")]
    cases.push((
        "JPEG garbage",
        r,
        cat(&[&[0x90], &compact(5), b"hello"]),
        P::BadJpeg,
    ));
    #[cfg(all(feature = "jpeg-encode", feature = "jpeg-decode"))]
    {
        use crate::jpeg::{JpegEncoder, RustJpegEncoder, Subsampling};
        let mut small = Vec::new();
        RustJpegEncoder
            .encode(&[9u8; 8 * 8 * 3], 8, 8, 80, Subsampling::None, &mut small)
            .unwrap();
        cases.push((
            "JPEG of another size",
            r,
            cat(&[&[0x90], &compact(small.len()), &small]),
            P::BadJpeg,
        ));
        // The same image claiming 60000 × 60000 in its frame header.
        let mut huge = small.clone();
        let sof = huge.windows(2).position(|w| w == [0xff, 0xc0]).unwrap();
        huge[sof + 5..sof + 9].copy_from_slice(&[0xea, 0x60, 0xea, 0x60]);
        cases.push((
            "JPEG claiming 60000 x 60000",
            r,
            cat(&[&[0x90], &compact(huge.len()), &huge]),
            P::BadJpeg,
        ));
    }
    for (what, rect, body, want) in &cases {
        for format in [PixelFormat::RGB888, PixelFormat::RGB565] {
            for step in [1, 3, 1 << 20] {
                let (w, h) = (rect.width.max(64), rect.height.max(64));
                let mut c = tight_client(format, w, h, None);
                let mut fb = vec![0u8; usize::from(w) * usize::from(h) * 4];
                let res = feed(
                    &mut c,
                    &update_of(&[(*rect, body.clone())]),
                    step,
                    &mut fb,
                    w,
                    h,
                );
                let want = match (want, format.bits_per_pixel) {
                    // 2-byte TPIXELs: the palettes above are 3 bytes a colour, so the data
                    // lengths are off: still an error, maybe another one.
                    (_, 16) if what.contains("colour") => {
                        assert!(res.is_err(), "{what} {format:?}: {res:?}");
                        continue;
                    }
                    (w, _) => *w,
                };
                assert_eq!(
                    res,
                    Err(Error::Protocol(want)),
                    "{what} {format:?} step {step}"
                );
            }
        }
    }
    // Gradient at 8 bits per pixel.
    let mut c = tight_client(PixelFormat::BGR233, 16, 16, None);
    let mut fb = vec![0u8; 16 * 16 * 4];
    assert_eq!(
        feed(
            &mut c,
            &update_of(&[(r, vec![0x40, 2])]),
            1,
            &mut fb,
            16,
            16
        ),
        Err(Error::Protocol(P::MalformedTight))
    );
    // A JPEG rectangle larger than the client's limit.
    #[cfg(feature = "jpeg-decode")]
    {
        let limits = crate::client::ClientLimits {
            max_jpeg_pixels: 100,
            ..Default::default()
        };
        let mut c = tight_client(PixelFormat::RGB888, 16, 16, Some(limits));
        assert_eq!(
            feed(&mut c, &update_of(&[(r, vec![0x90])]), 1, &mut fb, 16, 16),
            Err(Error::Protocol(P::JpegTooLarge))
        );
    }
    // A JPEG rectangle for a client without a decoder.
    let mut c = tight_client(PixelFormat::RGB888, 16, 16, None);
    c.set_jpeg_decoder(None);
    assert_eq!(
        feed(
            &mut c,
            &update_of(&[(r, vec![0x90, 1, 0])]),
            1,
            &mut fb,
            16,
            16
        ),
        Err(Error::Protocol(P::JpegUnsupported))
    );
    assert_eq!(
        c.set_encodings(&[Encoding::Tight]),
        Err(crate::CommandError::InvalidState),
        "the connection is over"
    );
    // Without a decoder no quality level may be asked for.
    let mut c = tight_client(PixelFormat::RGB888, 16, 16, None);
    c.set_jpeg_decoder(None);
    assert_eq!(
        c.set_encodings(&[Encoding::Tight, Encoding::jpeg_quality(3)]),
        Err(crate::CommandError::InvalidArgument)
    );
    assert_eq!(
        c.set_encodings(&[Encoding::Tight, Encoding::from(-512 + 50)]),
        Err(crate::CommandError::InvalidArgument)
    );
    // Fill may be wider than 2048 (TigerVNC servers before 1.16 sent such).
    let mut c = tight_client(PixelFormat::RGB888, 2100, 2, None);
    let mut fb = vec![0u8; 2100 * 2 * 4];
    assert_eq!(
        feed(
            &mut c,
            &update_of(&[(Rect::new(0, 0, 2100, 2), vec![0x80, 1, 2, 3])]),
            5,
            &mut fb,
            2100,
            2
        ),
        Ok(true)
    );
    assert!(fb.chunks_exact(4).all(|p| p[..3] == [3, 2, 1]));
    // A finished zlib stream followed by another rectangle on the same stream: an error, not a
    // wait for bytes that can never help.
    let z = miniz_oxide::deflate::compress_to_vec_zlib(&copy_data, 6);
    let first = cat(&[&[0x00], &compact(z.len()), &z]);
    let second = cat(&[&[0x00], &compact(20), &[0u8; 20]]);
    for step in [1, 1 << 20] {
        let mut c = tight_client(PixelFormat::RGB888, 16, 16, None);
        let mut fb = vec![0u8; 16 * 16 * 4];
        let res = feed(
            &mut c,
            &update_of(&[(r, first.clone()), (r, second.clone())]),
            step,
            &mut fb,
            16,
            16,
        );
        assert!(
            matches!(res, Err(Error::Protocol(P::MalformedTight | P::ZlibError))),
            "{res:?}"
        );
    }
}

/// Unrequested: a server may not send Tight to a client that did not ask for it, nor TightPNG
/// to ours (which never asks).
#[test]
fn unrequested_tight_is_refused() {
    let mut c = tight_client(PixelFormat::RGB888, 16, 16, None);
    c.set_encodings(&[Encoding::Raw]).unwrap();
    let mut out = [0u8; 512];
    while c.poll_transmit(&mut out).unwrap().is_some() {}
    let mut fb = vec![0u8; 16 * 16 * 4];
    assert_eq!(
        feed(
            &mut c,
            &update_of(&[(Rect::new(0, 0, 1, 1), vec![0x80, 1, 2, 3])]),
            100,
            &mut fb,
            16,
            16
        ),
        Err(Error::Protocol(ProtocolError::UnrequestedEncoding(7)))
    );
    let mut c = tight_client(PixelFormat::RGB888, 16, 16, None);
    assert_eq!(
        c.set_encodings(&[Encoding::TightPng]),
        Err(crate::CommandError::InvalidArgument)
    );
}

/// The decoders' fuzz entry points reach Tight: a rectangle in `fuzzing::rect`'s layout and a
/// whole update in `fuzzing::client_messages`' decode (every sub-encoding's seed).
#[test]
fn fuzz_entry_points_decode_tight() {
    for c in [
        Content::Solid,
        Content::Mono,
        Content::Indexed,
        Content::Photo,
        Content::Noise,
    ] {
        // A 64 × 64 server in RGB888 (format 0 of the fuzz client); one piece.
        let (_, update) = tight_session(
            content(c, 40, 30),
            PixelFormat::RGB888,
            PixelFormat::RGB888,
            &[Encoding::Tight],
        );
        let mut seed = vec![11 | (3 << 4), 0];
        seed.extend_from_slice(&update[4..12]);
        seed.extend_from_slice(&update[16..]);
        assert_eq!(crate::fuzzing::rect(&seed), 1, "{c:?}");
        let mut msgs = vec![0];
        msgs.extend_from_slice(&update);
        assert_eq!(crate::fuzzing::client_messages(&msgs), 1, "{c:?}");
    }
}

/// A frame that already is a JPEG (an MJPEG capture) goes to a Tight JPEG client as it is: one
/// rectangle over the framebuffer carrying exactly those bytes, decoded by the client; clients
/// without JPEG (no quality asked, Raw, ZRLE) get the pixels as usual.
#[test]
#[cfg(all(feature = "jpeg-encode", feature = "jpeg-decode"))]
fn a_jpeg_frame_passes_through_to_jpeg_clients() {
    let (w, h) = (200u16, 120u16);
    let fb = || fb_of(w, h, photo);
    // the "captured" JPEG of the same picture
    let rgb: Vec<u8> = {
        let p = Pair::new(Auth::None, fb(), PixelFormat::RGB888);
        p.expected_client_fb(&PixelFormat::RGB888)
            .chunks_exact(4)
            .flat_map(|px| [px[2], px[1], px[0]])
            .collect()
    };
    let mut jpeg = Vec::new();
    use crate::jpeg::JpegEncoder as _;
    crate::jpeg::RustJpegEncoder
        .encode(&rgb, w, h, 90, crate::jpeg::Subsampling::None, &mut jpeg)
        .unwrap();
    let with_chunk = |encodings: &[Encoding], chunk: Option<usize>| {
        let mut p = Pair::new(Auth::None, fb(), PixelFormat::RGB888);
        if let Some(c) = chunk {
            p.out_chunk = c;
        }
        p.run();
        p.client.set_encodings(encodings).unwrap();
        p.run();
        let at = p.rec_s2c.len();
        p.jpeg = Some(jpeg.clone());
        p.client
            .request_update(false, Rect::new(0, 0, w, h))
            .unwrap();
        p.damage = vec![Damage::Changed(Rect::new(0, 0, w, h))];
        p.run();
        let update = p.rec_s2c[at..].to_vec();
        (p, update)
    };
    let with = |encodings: &[Encoding]| with_chunk(encodings, None);
    // (TightPNG takes the same path; our client does not decode TightPNG to show it)
    {
        let e = Encoding::Tight;
        let (p, update) = with(&[e, Encoding::jpeg_quality(5)]);
        // FramebufferUpdate of one rectangle: (0, 0, w, h), JPEG, compact length, the bytes
        assert_eq!(be16(&update, 2), 1, "{e:?}");
        let h0 = RectHeaderRepr::parse(&update[4..]).unwrap();
        assert_eq!((h0.rect, h0.encoding), (Rect::new(0, 0, w, h), e));
        let body = &update[4 + RectHeaderRepr::LEN..];
        assert_eq!(body[0], crate::wire::tight::JPEG);
        let n = compact(jpeg.len()).len();
        assert_eq!(&body[1..1 + n], &compact(jpeg.len())[..]);
        assert!(body[1 + n..] == jpeg[..], "{e:?}: not the captured bytes");
        let t = p.server.tight_stats();
        assert_eq!((t.jpeg_passthrough, t.jpeg), (1, 0), "{e:?}");
        // our client decoded it: close to the picture
        let q = psnr(&p.client_fb, &p.expected_client_fb(&PixelFormat::RGB888));
        assert!(q >= 35.0, "PSNR {q:.1}");
    }
    // without JPEG: encoded from the pixels, exact
    for encodings in [
        &[Encoding::Tight][..],
        &[Encoding::Raw, Encoding::jpeg_quality(5)][..],
        &[Encoding::Zrle, Encoding::jpeg_quality(5)][..],
    ] {
        let (p, _) = with(encodings);
        assert_exact(&p, &PixelFormat::RGB888, &format!("{encodings:?}"));
        assert_eq!(p.server.tight_stats().jpeg_passthrough, 0);
    }
    // split invariance: the same bytes whatever the encode buffer
    let (_, a) = with(&[Encoding::Tight, Encoding::jpeg_quality(5)]);
    let (_, b) = with_chunk(
        &[Encoding::Tight, Encoding::jpeg_quality(5)],
        Some(crate::server::MIN_ENCODE_BUFFER),
    );
    assert!(b[..] == a[..]);
}
