//! Every encoding × pixel formats, pixel-exact through our client; split invariance.

use proptest::prelude::*;

use super::harness::*;
use crate::client::{self, Client, Credentials};
use crate::server::{self, Damage, Server, UpdateSource};
use crate::wire::*;
use crate::{FramebufferMut, Instant};

pub(crate) fn encodings_for(e: Encoding) -> Vec<Encoding> {
    let mut v = vec![e];
    if e != Encoding::CopyRect {
        v.push(Encoding::CopyRect);
    } else {
        v.push(Encoding::Raw);
    }
    v.extend_from_slice(&[
        Encoding::ExtendedDesktopSize,
        Encoding::DesktopSize,
        Encoding::LastRect,
        Encoding::Cursor,
        Encoding::DesktopName,
        Encoding::QemuExtendedKeyEvent,
        Encoding::Fence,
        Encoding::ContinuousUpdates,
    ]);
    v
}

/// Runs a session: handshake, SetPixelFormat(wire), SetEncodings, full update request, update.
pub(crate) fn session(
    auth: Auth,
    enc: Encoding,
    native: PixelFormat,
    wire: PixelFormat,
    client_fb: PixelFormat,
    w: u16,
    h: u16,
) -> Pair {
    let fb = ServerFb::pattern(w, h, native, u32::from(w) * 7 + u32::from(h));
    let mut p = Pair::new(auth, fb, client_fb);
    p.out_chunk = crate::server::MIN_ENCODE_BUFFER;
    p.run();
    assert!(
        p.client_ready,
        "{:?} / {:?}",
        p.client_events, p.server_events
    );
    p.client.set_pixel_format(wire).unwrap();
    p.client.set_encodings(&encodings_for(enc)).unwrap();
    p.client
        .request_update(false, Rect::new(0, 0, w, h))
        .unwrap();
    p.damage = vec![Damage::Changed(Rect::new(0, 0, w, h))];
    p.run();
    p
}

pub(crate) fn transcript(auth: Auth, enc: Encoding, wire: PixelFormat) -> (Vec<u8>, Vec<u8>) {
    let p = session(auth, enc, PixelFormat::RGB888, wire, wire, 37, 21);
    (p.rec_c2s, p.rec_s2c)
}

pub(crate) fn pixel_encodings() -> Vec<Encoding> {
    let mut v = vec![Encoding::Raw, Encoding::Rre, Encoding::Hextile];
    if cfg!(feature = "alloc") {
        v.push(Encoding::Zrle);
        v.push(Encoding::Tight);
    }
    v
}

#[test]
fn every_encoding_every_format_pixel_exact() {
    let wires = [
        PixelFormat::RGB888,
        PixelFormat::RGB888_BE,
        PixelFormat::BGR888,
        PixelFormat::true_colour(32, 24, false, [255, 255, 255], [24, 16, 8]), // MS 3 bytes
        PixelFormat::RGB565,
        PixelFormat::RGB565_BE,
        PixelFormat::RGB555,
        PixelFormat::BGR233,
    ];
    for enc in pixel_encodings() {
        for native in [PixelFormat::RGB888, PixelFormat::RGB565] {
            for wire in wires {
                for client_fb in [PixelFormat::RGB888, wire] {
                    let p = session(Auth::None, enc, native, wire, client_fb, 83, 45);
                    let expect = p.expected_client_fb(&wire);
                    assert_eq!(p.client_fb.len(), expect.len());
                    assert!(
                        p.client_fb == expect,
                        "{enc:?} native {native:?} wire {wire:?} fb {client_fb:?}"
                    );
                    let tag = format!("encoding: {enc:?} }}");
                    assert!(
                        p.client_events
                            .iter()
                            .any(|e| e.starts_with("Rect") && e.ends_with(&tag)),
                        "{:?}",
                        p.client_events
                    );
                }
            }
        }
    }
}

#[test]
fn colour_map_clients_get_bgr233_map() {
    for enc in pixel_encodings() {
        let p = session(
            Auth::None,
            enc,
            PixelFormat::RGB888,
            PixelFormat::COLOUR_MAP8,
            PixelFormat::COLOUR_MAP8,
            20,
            20,
        );
        assert!(
            p.client_events
                .iter()
                .any(|e| e == "ColourMap { first: 0, count: 32 }"),
            "{:?}",
            p.client_events
        );
        // Pixels are BGR233 indices.
        let expect = {
            let mut q = Pair::new(
                Auth::None,
                ServerFb::pattern(20, 20, PixelFormat::RGB888, 20 * 7 + 20),
                PixelFormat::COLOUR_MAP8,
            );
            q.client_fb_format = PixelFormat::COLOUR_MAP8;
            q.expected_client_fb(&PixelFormat::COLOUR_MAP8)
        };
        assert_eq!(p.client_fb, expect, "{enc:?}");
    }
}

#[test]
fn every_security_type_carries_updates() {
    for auth in [
        Auth::None,
        Auth::Vnc,
        Auth::VencryptPlain,
        Auth::X509None,
        Auth::X509Vnc,
        Auth::X509Plain,
    ] {
        for enc in pixel_encodings() {
            let p = session(
                auth,
                enc,
                PixelFormat::RGB888,
                PixelFormat::RGB565,
                PixelFormat::RGB888,
                33,
                17,
            );
            assert_eq!(
                p.client_fb,
                p.expected_client_fb(&PixelFormat::RGB565),
                "{auth:?} {enc:?}"
            );
        }
    }
}

#[test]
fn copyrect_and_incremental_updates() {
    for enc in pixel_encodings() {
        let mut p = session(
            Auth::None,
            enc,
            PixelFormat::RGB888,
            PixelFormat::RGB888,
            PixelFormat::RGB888,
            64,
            48,
        );
        // Scroll a band up by 8 rows on the server, then repaint the bottom strip.
        let sf = &mut p.server_fb;
        let stride = sf.stride;
        for y in 8..40 {
            let (a, b) = sf.data.split_at_mut(y * stride);
            a[(y - 8) * stride..(y - 8) * stride + 64 * 4].copy_from_slice(&b[..64 * 4]);
        }
        for y in 32..40 {
            for x in 0..64 {
                sf.data[y * stride + x * 4..][..4]
                    .copy_from_slice(&(0x0012_3456u32 + x as u32).to_le_bytes());
            }
        }
        p.client
            .request_update(true, Rect::new(0, 0, 64, 48))
            .unwrap();
        p.damage = vec![
            Damage::Copied {
                dst: Rect::new(0, 0, 64, 32),
                src_x: 0,
                src_y: 8,
            },
            Damage::Changed(Rect::new(0, 32, 64, 8)),
            Damage::Changed(Rect::new(60, 40, 100, 100)), // clipped
            Damage::Changed(Rect::new(100, 100, 5, 5)),   // outside: skipped
        ];
        p.run();
        assert!(
            p.client_events
                .iter()
                .any(|e| e.contains("encoding: CopyRect")),
            "{:?}",
            p.client_events
        );
        assert_eq!(
            p.client_fb,
            p.expected_client_fb(&PixelFormat::RGB888),
            "{enc:?}"
        );
    }
}

#[test]
fn pseudo_encodings_resize_name_cursor_key() {
    let mut p = session(
        Auth::None,
        Encoding::Hextile,
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        32,
        32,
    );
    // Initial full request: ExtendedDesktopSize (reason 0) and the QEMU key ack came with it.
    assert!(
        p.client_events
            .iter()
            .any(|e| e.starts_with("ExtendedDesktopSize { reason: 0, status: 0, width: 32")),
        "{:?}",
        p.client_events
    );
    assert!(
        p.client_events
            .iter()
            .any(|e| e == "QemuKeyEventsSupported")
    );
    assert!(
        p.client_events
            .iter()
            .any(|e| e == "EndOfContinuousUpdates")
    );
    p.client.qemu_key_event(true, 0x61, 0x1e).unwrap();
    // Resize + name + cursor in one update.
    p.server_fb = ServerFb::pattern(40, 20, PixelFormat::RGB888, 9);
    let cur = ServerFb::pattern(5, 3, PixelFormat::RGB888, 4);
    let mask = [0xf8u8, 0x50, 0xa8];
    p.client
        .request_update(true, Rect::new(0, 0, 40, 20))
        .unwrap();
    p.run();
    let damage = [Damage::Changed(Rect::new(0, 0, 40, 20))];
    let src = UpdateSource {
        framebuffer: p.server_fb.fb(),
        damage: &damage,
        cursor: Some(server::CursorShape {
            hotspot_x: 2,
            hotspot_y: 1,
            image: cur.fb(),
            mask: &mask,
        }),
        desktop_name: Some(b"renamed"),
        screens: &[],
        jpeg: None,
    };
    assert!(p.server.wants_update());
    let mut out = vec![0u8; 4096];
    loop {
        let st = p.server.encode_update(&src, &mut out).unwrap();
        p.s2c.extend_from_slice(&out[..st.written]);
        if st.done {
            break;
        }
    }
    p.run();
    let ev = p.client_events.join("\n");
    assert!(
        ev.contains(
            "ExtendedDesktopSize { reason: 0, status: 0, width: 40, height: 20, screens: 1 }"
        ),
        "{ev}"
    );
    assert!(ev.contains("DesktopName { name: [114, 101"), "{ev}");
    assert!(
        ev.contains("Cursor { hotspot_x: 2, hotspot_y: 1, width: 5, height: 3, data_len: 63 }"),
        "{ev}"
    );
    assert!(
        ev.contains("QemuKey { down: true, keysym: 97, keycode: 30 }")
            || p.server_events.iter().any(|e| e.contains("QemuKey"))
    );
    assert_eq!(p.client.framebuffer_size(), (40, 20));
    assert_eq!(p.client_fb, p.expected_client_fb(&PixelFormat::RGB888));
}

#[test]
fn small_messages_wait_for_update_and_cut_text_is_app_payload() {
    let mut p = session(
        Auth::None,
        Encoding::Raw,
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        16,
        16,
    );
    p.server.send_cut_text(CutTextLength::Text(30)).unwrap();
    p.server.bell().unwrap();
    p.client.send_cut_text(CutTextLength::Text(5)).unwrap();
    p.client.key_event(true, 0xff0d).unwrap();
    p.client.pointer_event(1, 3, 4).unwrap();
    p.client
        .send_fence(crate::wire::fence_flags::REQUEST | 1, b"abc")
        .unwrap();
    p.run();
    let ev = p.client_events.join("\n");
    assert!(ev.contains("CutText(Text(30))"), "{ev}");
    assert!(ev.contains("Bell"));
    let sv = p.server_events.join("\n");
    assert!(sv.contains("CutText(Text(5))"), "{sv}");
    assert!(
        sv.contains("payload CutText { data: [65, 66, 67, 68, 69], last: true }"),
        "{sv}"
    );
    assert!(sv.contains("Key { down: true, keysym: 65293 }"));
    assert!(sv.contains("Pointer { buttons: 1, x: 3, y: 4 }"));
    assert!(
        ev.contains("FenceResponse { flags: 1, data: [97, 98, 99] }"),
        "{ev}"
    );
}

// ---- split invariance ----

/// What one side observably did: events, payloads, bytes sent, and (client) the framebuffer.
#[derive(PartialEq, Eq)]
struct Observed {
    events: Vec<String>,
    output: Vec<u8>,
    fb: Vec<u8>,
}

impl core::fmt::Debug for Observed {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        write!(
            f,
            "events {:?}, {} output bytes, {} fb bytes",
            self.events,
            self.output.len(),
            self.fb.len()
        )
    }
}

fn run_server_split(auth: Auth, input: &[u8], cuts: &[usize]) -> Observed {
    let (sc, _) = auth.configs();
    let mut s = Server::new(sc, Instant::ZERO, CHALLENGE);
    let fb = ServerFb::pattern(37, 21, PixelFormat::RGB888, 37 * 7 + 21);
    let mut o = Observed {
        events: Vec::new(),
        output: Vec::new(),
        fb: Vec::new(),
    };
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut tx = vec![0u8; 4096];
    let mut chunks = cuts.iter().copied().chain(std::iter::repeat(usize::MAX));
    loop {
        if fed < input.len() {
            let n = chunks.next().unwrap().min(input.len() - fed).max(1);
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
        }
        loop {
            let p = match s.handle_input(&buf) {
                Ok(p) => p,
                Err(e) => {
                    o.events.push(format!("error {e:?}"));
                    return o;
                }
            };
            let n = p.consumed;
            let had_payload = p.lent.is_some();
            if let Some(pl) = p.lent {
                o.events.push(format!("{pl:?}"));
                if let server::Payload::PlainCredentials { .. } = pl {
                    s.accept_auth().unwrap();
                }
            }
            buf.drain(..n);
            while let Some(t) = s.poll_transmit(&mut tx).unwrap() {
                o.output.extend_from_slice(&tx[..t.len]);
            }
            let mut ev = false;
            while let Some(e) = s.poll_event() {
                ev = true;
                o.events.push(format!("{e:?}"));
                match e {
                    server::Event::StartTls => s.tls_established().unwrap(),
                    server::Event::VncAuth { .. } => s.accept_auth().unwrap(),
                    server::Event::ClientInit { .. } => s
                        .server_init(37, 21, PixelFormat::RGB888, b"test desktop")
                        .unwrap(),
                    _ => {}
                }
            }
            while let Some(t) = s.poll_transmit(&mut tx).unwrap() {
                o.output.extend_from_slice(&tx[..t.len]);
            }
            if n == 0 && !had_payload && !ev {
                break;
            }
        }
        if fed >= input.len() {
            break;
        }
    }
    if s.wants_update() {
        let damage = [Damage::Changed(Rect::new(0, 0, 37, 21))];
        let src = UpdateSource::new(fb.fb(), &damage);
        let mut out = vec![0u8; 2048];
        loop {
            let st = s.encode_update(&src, &mut out).unwrap();
            o.output.extend_from_slice(&out[..st.written]);
            if st.done {
                break;
            }
        }
    }
    o
}

fn run_client_split(
    auth: Auth,
    enc: Encoding,
    wire: PixelFormat,
    input: &[u8],
    cuts: &[usize],
) -> Observed {
    let (_, cc) = auth.configs();
    let mut c = Client::new(cc, Instant::ZERO);
    let mut o = Observed {
        events: Vec::new(),
        output: Vec::new(),
        fb: Vec::new(),
    };
    let mut size = (0u16, 0u16);
    let mut configured = false;
    let mut buf: Vec<u8> = Vec::new();
    let mut fed = 0;
    let mut tx = vec![0u8; 4096];
    let mut chunks = cuts.iter().copied().chain(std::iter::repeat(usize::MAX));
    loop {
        if fed < input.len() {
            let n = chunks.next().unwrap().min(input.len() - fed).max(1);
            buf.extend_from_slice(&input[fed..fed + n]);
            fed += n;
        }
        loop {
            let (n, had_payload) = {
                let mut fb = FramebufferMut::new(
                    &mut o.fb,
                    size.0,
                    size.1,
                    usize::from(size.0) * 4,
                    PixelFormat::RGB888,
                )
                .unwrap();
                match c.handle_input_fb(&buf, &mut fb) {
                    Ok(p) => {
                        if let Some(pl) = p.lent {
                            o.events.push(format!("{pl:?}"));
                        }
                        (p.consumed, p.lent.is_some())
                    }
                    Err(e) => {
                        o.events.push(format!("error {e:?}"));
                        return o;
                    }
                }
            };
            buf.drain(..n);
            let mut ev = false;
            while let Some(e) = c.poll_event() {
                ev = true;
                o.events.push(format!("{e:?}"));
                match e {
                    client::Event::StartTls => {}
                    client::Event::NeedCredentials(Credentials::Password) => {
                        c.send_password(PASSWORD).unwrap()
                    }
                    client::Event::NeedCredentials(Credentials::Plain) => {
                        c.send_plain_credentials(b"user", b"pass").unwrap()
                    }
                    client::Event::ServerInit { width, height, .. }
                    | client::Event::DesktopSize { width, height }
                    | client::Event::ExtendedDesktopSize {
                        width,
                        height,
                        status: 0,
                        ..
                    } => {
                        size = (width, height);
                        o.fb = vec![0; usize::from(width) * usize::from(height) * 4];
                    }
                    _ => {}
                }
            }
            if c.state() == client::State::AwaitingTls {
                c.tls_established().unwrap();
                ev = true;
            }
            if c.state() == client::State::Running && !configured {
                configured = true;
                c.set_pixel_format(wire).unwrap();
                c.set_encodings(&encodings_for(enc)).unwrap();
                c.request_update(false, Rect::new(0, 0, 37, 21)).unwrap();
            }
            while let Some(t) = c.poll_transmit(&mut tx).unwrap() {
                o.output.extend_from_slice(&tx[..t.len]);
            }
            if n == 0 && !had_payload && !ev {
                break;
            }
        }
        if fed >= input.len() {
            break;
        }
    }
    o
}

fn cut_sets(len: usize, seed: u64) -> Vec<Vec<usize>> {
    let mut rng = seed | 1;
    let mut random = Vec::new();
    let mut total = 0;
    while total < len {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        let n = 1 + (rng % 23) as usize;
        random.push(n);
        total += n;
    }
    vec![
        vec![len],
        vec![1; len],
        random,
        vec![2, 3, 5, 7, 11, 13, 17, 19, 23, 29, 31],
    ]
}

#[test]
fn split_invariance_fixed_cuts() {
    let encs = pixel_encodings();
    for auth in [
        Auth::None,
        Auth::Vnc,
        Auth::X509Vnc,
        Auth::X509Plain,
        Auth::VencryptPlain,
    ] {
        for &enc in &encs {
            let (c2s, s2c) = transcript(auth, enc, PixelFormat::RGB565);
            let sets = cut_sets(c2s.len(), 7);
            let base = run_server_split(auth, &c2s, &sets[0]);
            assert!(
                !base.events.iter().any(|e| e.starts_with("error")),
                "{:?}",
                base.events
            );
            for cuts in &sets[1..] {
                assert_eq!(run_server_split(auth, &c2s, cuts), base, "{auth:?} {enc:?}");
            }
            let sets = cut_sets(s2c.len(), 11);
            let base = run_client_split(auth, enc, PixelFormat::RGB565, &s2c, &sets[0]);
            assert!(
                !base.events.iter().any(|e| e.starts_with("error")),
                "{:?}",
                base.events
            );
            assert!(
                base.events.iter().any(|e| e == "UpdateEnd"),
                "{:?}",
                base.events
            );
            for cuts in &sets[1..] {
                assert_eq!(
                    run_client_split(auth, enc, PixelFormat::RGB565, &s2c, cuts),
                    base,
                    "{auth:?} {enc:?}"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn split_invariance_random_cuts(cuts in prop::collection::vec(1usize..300, 1..400), pick in 0usize..5) {
        let encs = pixel_encodings();
        let enc = encs[pick % encs.len()];
        let (c2s, s2c) = transcript(Auth::X509Vnc, enc, PixelFormat::RGB888);
        let whole = run_server_split(Auth::X509Vnc, &c2s, &[c2s.len()]);
        prop_assert_eq!(run_server_split(Auth::X509Vnc, &c2s, &cuts), whole);
        let whole = run_client_split(Auth::X509Vnc, enc, PixelFormat::RGB888, &s2c, &[s2c.len()]);
        prop_assert_eq!(run_client_split(Auth::X509Vnc, enc, PixelFormat::RGB888, &s2c, &cuts), whole);
    }
}

type Transcripts = Vec<(Encoding, Vec<u8>, Vec<u8>)>;

fn transcripts() -> &'static Transcripts {
    static T: std::sync::OnceLock<Transcripts> = std::sync::OnceLock::new();
    T.get_or_init(|| {
        pixel_encodings()
            .into_iter()
            .map(|e| {
                let (c2s, s2c) = transcript(Auth::X509Vnc, e, PixelFormat::RGB565);
                (e, c2s, s2c)
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1024, ..ProptestConfig::default() })]

    /// Valid sessions with a few corrupted bytes: every failure is an error, never a panic, and
    /// the client's framebuffer writes stay in bounds.
    #[test]
    fn mutated_sessions_never_panic(pick in 0usize..5, muts in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8), cut in any::<prop::sample::Index>()) {
        let t = transcripts();
        let (enc, c2s, s2c) = &t[pick % t.len()];
        let mut s2c = s2c.clone();
        let mut c2s = c2s.clone();
        for (i, v) in &muts {
            let k = i.index(s2c.len());
            s2c[k] = *v;
            let k = i.index(c2s.len());
            c2s[k] ^= *v;
        }
        let n = cut.index(s2c.len()) + 1;
        let _ = run_client_split(Auth::X509Vnc, *enc, PixelFormat::RGB565, &s2c[..n], &[7, 300, 1]);
        let _ = run_server_split(Auth::X509Vnc, &c2s, &[5, 64]);
    }
}

/// A compressor the application plugs in is the one ZRLE uses (for the whole connection), and
/// it can only be chosen before the connection's stream exists.
#[cfg(feature = "alloc")]
#[test]
fn pluggable_zrle_compressor() {
    use crate::zlib::{CompressError, MinizCompressor, ZrleCompressor};
    use core::sync::atomic::{AtomicUsize, Ordering};
    static CALLS: AtomicUsize = AtomicUsize::new(0);
    static LEVEL: AtomicUsize = AtomicUsize::new(99);
    struct Counting(MinizCompressor);
    impl ZrleCompressor for Counting {
        fn compress_sync(
            &mut self,
            input: &[u8],
            out: &mut [u8],
        ) -> Result<(usize, usize), CompressError> {
            CALLS.fetch_add(1, Ordering::SeqCst);
            self.0.compress_sync(input, out)
        }
    }
    fn make(level: u8) -> Box<dyn ZrleCompressor> {
        LEVEL.store(usize::from(level), Ordering::SeqCst);
        Box::new(Counting(MinizCompressor::new(level)))
    }
    let (w, h) = (70u16, 130u16);
    let fb = ServerFb::pattern(w, h, PixelFormat::RGB888, 5);
    let mut p = Pair::new(Auth::None, fb, PixelFormat::RGB888);
    p.server.set_zrle_compressor(make).unwrap();
    p.run();
    assert!(p.client_ready);
    p.client
        .set_encodings(&[Encoding::Zrle, Encoding::from(-256 + 3)])
        .unwrap();
    p.client
        .request_update(false, Rect::new(0, 0, w, h))
        .unwrap();
    p.damage = vec![Damage::Changed(Rect::new(0, 0, w, h))];
    p.run();
    assert_eq!(p.client_fb, p.expected_client_fb(&PixelFormat::RGB888));
    assert!(
        CALLS.load(Ordering::SeqCst) > 0,
        "the plugged compressor was not used"
    );
    assert_eq!(
        LEVEL.load(Ordering::SeqCst),
        3,
        "the client's compression level"
    );
    assert_eq!(
        p.server.set_zrle_compressor(MinizCompressor::boxed),
        Err(crate::CommandError::InvalidState)
    );
}

/// Sends one update with no damage (what carries a pending LED state) and delivers it.
fn empty_update(p: &mut Pair) {
    let src = UpdateSource::new(p.server_fb.fb(), &[]);
    let mut out = vec![0u8; 4096];
    loop {
        let st = p.server.encode_update(&src, &mut out).unwrap();
        p.s2c.extend_from_slice(&out[..st.written]);
        p.rec_s2c.extend_from_slice(&out[..st.written]);
        if st.done {
            break;
        }
    }
    p.run();
}

#[test]
fn qemu_led_state_goes_to_clients_that_ask() {
    let mut p = session(
        Auth::None,
        Encoding::Raw,
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        PixelFormat::RGB888,
        8,
        8,
    );
    let leds = |p: &Pair| -> Vec<String> {
        p.client_events
            .iter()
            .filter(|e| e.starts_with("LedState"))
            .cloned()
            .collect()
    };
    // Not asked for: remembered, never sent.
    assert!(!p.server.set_led_state(0b100).unwrap());
    p.client
        .request_update(true, Rect::new(0, 0, 8, 8))
        .unwrap();
    p.run();
    empty_update(&mut p);
    assert!(leds(&p).is_empty(), "{:?}", p.client_events);
    assert_eq!(
        p.server.set_led_state(0b1000),
        Err(crate::CommandError::InvalidArgument)
    );

    // Asking for it brings the current state with the next update.
    let mut enc = encodings_for(Encoding::Raw);
    enc.push(Encoding::QemuLedState);
    p.client.set_encodings(&enc).unwrap();
    p.client
        .request_update(true, Rect::new(0, 0, 8, 8))
        .unwrap();
    p.run();
    assert!(p.server.led_update_due());
    empty_update(&mut p);
    assert_eq!(leds(&p), ["LedState { state: 4 }"]);
    assert!(!p.server.led_update_due());

    // A change is due at once; the same state again is not.
    p.client
        .request_update(true, Rect::new(0, 0, 8, 8))
        .unwrap();
    p.run();
    assert!(p.server.set_led_state(0b110).unwrap());
    empty_update(&mut p);
    assert!(!p.server.set_led_state(0b110).unwrap());
    assert_eq!(leds(&p), ["LedState { state: 4 }", "LedState { state: 6 }"]);
    // The wire form is QEMU's: a 1 × 1 rectangle of encoding −261, then the byte.
    let tail = &p.rec_s2c[p.rec_s2c.len() - 17..];
    assert_eq!(
        tail,
        [
            0, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 1, 0xff, 0xff, 0xfe, 0xfb, 6
        ]
    );
}
