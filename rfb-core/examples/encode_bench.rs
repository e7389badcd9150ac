//! Encode-speed check: a 1920×1080 desktop-like frame, full and 10 % damage, Hextile and ZRLE.
//!
//! `cargo run --release -p rfb-core --features alloc --example encode_bench`

use std::time::Instant as StdInstant;

use rfb_core::server::{Damage, Event, Server, ServerConfig, UpdateSource};
use rfb_core::wire::{Encoding, PixelFormat, Rect, SecurityType};
use rfb_core::{Framebuffer, Instant};

const W: u16 = 1920;
const H: u16 = 1080;

/// Desktop-like content: flat background, windows with title bars, anti-aliased "text", a photo.
fn desktop(seed: u32) -> Vec<u8> {
    let (w, h) = (usize::from(W), usize::from(H));
    let mut px = vec![0u32; w * h];
    let mut rng = seed | 1;
    let mut next = move || {
        rng ^= rng << 13;
        rng ^= rng >> 17;
        rng ^= rng << 5;
        rng
    };
    for (i, p) in px.iter_mut().enumerate() {
        let y = i / w;
        *p = 0x0020_4060 + ((y as u32 * 40 / h as u32) << 8);
    }
    for win in 0..6 {
        let (x0, y0) = (60 + win * 250, 40 + win * 120);
        let (ww, wh) = (900, 600);
        for y in y0..(y0 + wh).min(h) {
            for x in x0..(x0 + ww).min(w) {
                px[y * w + x] = if y < y0 + 28 {
                    0x0030_3540
                } else {
                    0x00f8_f8f8
                };
            }
        }
        // Text lines with anti-aliased glyph edges.
        let mut y = y0 + 40;
        while y + 12 < (y0 + wh).min(h) {
            let mut x = x0 + 10;
            while x + 8 < (x0 + ww - 10).min(w) {
                let glyph = next();
                if glyph % 7 != 0 {
                    for gy in 0..12 {
                        for gx in 0..7 {
                            let bit = (glyph >> ((gy * 7 + gx) % 31)) & 1;
                            if bit == 1 && (gy + gx) % 3 != 0 {
                                let shade = [0x0010_1010, 0x0060_6060, 0x00a0_a0a0]
                                    [((glyph >> gy) % 3) as usize];
                                px[(y + gy) * w + x + gx] = shade;
                            }
                        }
                    }
                }
                x += 8;
            }
            y += 16;
        }
    }
    // A photo-like area.
    let photo_rows = if std::env::var_os("NOPHOTO").is_some() {
        700..700
    } else {
        700..1000
    };
    for y in photo_rows {
        for x in 1300..1800 {
            let n = next() & 0x0f0f0f;
            px[y * w + x] = (((x as u32) & 0xff) << 16 | ((y as u32) & 0xff) << 8 | 0x80) ^ n;
        }
    }
    px.iter().flat_map(|p| p.to_le_bytes()).collect()
}

fn server_for(enc: Encoding) -> Server {
    server_level(enc, 6)
}

fn server_level(enc: Encoding, level: i32) -> Server {
    let mut s = Server::new(
        ServerConfig::with_security(&[SecurityType::None], &[]),
        Instant::ZERO,
        [0; 16],
    );
    let mut input = Vec::new();
    input.extend_from_slice(b"RFB 003.008\n\x01\x01");
    input.extend_from_slice(&[2, 0, 0, 2]);
    input.extend_from_slice(&(i32::from(enc) as u32).to_be_bytes());
    input.extend_from_slice(&((-256 + level) as u32).to_be_bytes());
    input.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0x07, 0x80, 0x04, 0x38]);
    let mut at = 0;
    let mut out = vec![0u8; 4096];
    while at < input.len() {
        let p = s.handle_input(&input[at..]).unwrap();
        at += p.consumed;
        while s.poll_transmit(&mut out).unwrap().is_some() {}
        while let Some(e) = s.poll_event() {
            if let Event::ClientInit { .. } = e {
                s.server_init(W, H, PixelFormat::RGB888, b"bench").unwrap();
            }
        }
        while s.poll_transmit(&mut out).unwrap().is_some() {}
    }
    s
}

fn encode(s: &mut Server, fb: Framebuffer<'_>, damage: &[Damage], out: &mut [u8]) -> usize {
    let src = UpdateSource::new(fb, damage);
    let mut total = 0;
    loop {
        let st = s.encode_update(&src, out).unwrap();
        total += st.written;
        if st.done {
            return total;
        }
    }
}

/// Writes the uncompressed ZRLE tile stream of a full-frame update (for comparing zlib speed).
fn dump_zrle_raw(a: &[u8]) {
    let stride = usize::from(W) * 4;
    let fb = Framebuffer::new(a, W, H, stride, PixelFormat::RGB888).unwrap();
    let mut s = server_level(Encoding::Zrle, 6);
    let full = [Damage::Changed(Rect::new(0, 0, W, H))];
    let src = UpdateSource::new(fb, &full);
    let mut wire = Vec::new();
    let mut out = vec![0u8; 65536];
    loop {
        let st = s.encode_update(&src, &mut out).unwrap();
        wire.extend_from_slice(&out[..st.written]);
        if st.done {
            break;
        }
    }
    // Walk the rectangles: header 4, then per rect 12 + 4 + len.
    let mut z = Vec::new();
    let mut at = 4;
    while at < wire.len() {
        let len = u32::from_be_bytes(wire[at + 12..at + 16].try_into().unwrap()) as usize;
        z.extend_from_slice(&wire[at + 16..at + 16 + len]);
        at += 16 + len;
    }
    let raw = miniz_oxide::inflate::decompress_to_vec_zlib(&z).unwrap_or_else(|e| e.output);
    std::fs::write(std::env::var("DUMP_ZRLE").unwrap(), raw).unwrap();
}

fn main() {
    if std::env::var_os("DUMP_ZRLE").is_some() {
        dump_zrle_raw(&desktop(1));
        return;
    }
    let a = desktop(1);
    let stride = usize::from(W) * 4;
    let mut out = vec![0u8; 64 * 1024];
    for level in [1, 2, 3, 4, 6] {
        let fb = Framebuffer::new(&a, W, H, stride, PixelFormat::RGB888).unwrap();
        let full = [Damage::Changed(Rect::new(0, 0, W, H))];
        let mut best = f64::MAX;
        let mut bytes = 0;
        for _ in 0..3 {
            let mut s = server_level(Encoding::Zrle, level);
            let t = StdInstant::now();
            bytes = encode(&mut s, fb, &full, &mut out);
            best = best.min(t.elapsed().as_secs_f64() * 1e3);
        }
        println!("ZRLE level {level}: full frame {bytes} bytes in {best:.2} ms");
    }
    // 10 % damage: rewrite a band of text in one window.
    let mut b = a.clone();
    let stride = usize::from(W) * 4;
    for y in 400..508 {
        for x in 100..1060 {
            let i = y * stride + x * 4;
            b[i] ^= 0x55;
        }
    }
    let mut out = vec![0u8; 64 * 1024];
    for enc in [Encoding::Hextile, Encoding::Zrle, Encoding::Raw] {
        let mut s = server_for(enc);
        let fb = Framebuffer::new(&a, W, H, stride, PixelFormat::RGB888).unwrap();
        let full = [Damage::Changed(Rect::new(0, 0, W, H))];
        let t = StdInstant::now();
        let bytes = encode(&mut s, fb, &full, &mut out);
        let full_t = t.elapsed();
        let mut best = full_t;
        for _ in 0..4 {
            let mut s2 = server_for(enc);
            let t = StdInstant::now();
            encode(&mut s2, fb, &full, &mut out);
            best = best.min(t.elapsed());
        }
        let fbb = Framebuffer::new(&b, W, H, stride, PixelFormat::RGB888).unwrap();
        let part = [
            Damage::Changed(Rect::new(96, 400, 968, 108)),
            Damage::Changed(Rect::new(0, 0, 1920, 100)),
        ];
        // Ask for another update.
        let _ = s
            .handle_input(&[3, 1, 0, 0, 0, 0, 0x07, 0x80, 0x04, 0x38])
            .unwrap();
        while s.poll_event().is_some() {}
        let t = StdInstant::now();
        let pbytes = encode(&mut s, fbb, &part, &mut out);
        let part_t = t.elapsed();
        println!(
            "{enc:?}: full frame {bytes} bytes in {:.2} ms (best of 5); damage update {pbytes} bytes in {:.2} ms",
            best.as_secs_f64() * 1e3,
            part_t.as_secs_f64() * 1e3
        );
    }
}
