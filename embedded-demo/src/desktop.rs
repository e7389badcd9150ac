//! The VNC console's desktop: a framebuffer in static RAM with a fixed test pattern, an
//! animated square, and text lines showing the uptime and the last key pressed.
//!
//! Damage is tracked per VNC session slot as a bitmap of 16×16 tiles: every drawing operation
//! marks the tiles it changed in every slot's bitmap, and a session takes (and clears) its own
//! bitmap as a short list of rectangles when it starts an update. So an incremental update
//! carries only what changed since that session's previous update.
//!
//! The animation is lazy: [`Desktop::tick`] advances it when a frame is due, and is called by
//! the sessions when they want an update. Nobody watching, nothing drawn.
//!
//! Layout (see the constants): a title bar, a pure red block at [`RED_BLOCK`] (tests check
//! its pixels), eight colour bars, the animation band, and two text lines.

use core::cell::RefCell;

use embassy_sync::blocking_mutex::Mutex;
use embassy_sync::blocking_mutex::raw::ThreadModeRawMutex;
use embassy_time::{Duration, Instant};
use rfb_core::Framebuffer;
use rfb_core::server::Damage;
use rfb_core::wire::{PixelFormat, Rect};

use crate::font;

/// Framebuffer width in pixels (a multiple of [`TILE`]).
pub const WIDTH: u16 = 240;
/// Framebuffer height in pixels (a multiple of [`TILE`]).
pub const HEIGHT: u16 = 160;
/// The framebuffer's native pixel format: 8 bpp true colour (`bbgggrrr`). Clients get their
/// own format; rfb-core translates.
pub const FORMAT: PixelFormat = PixelFormat::BGR233;
const BPP: usize = FORMAT.bytes_per_pixel();
const STRIDE: usize = WIDTH as usize * BPP;
/// Size of the framebuffer in bytes.
pub const FB_LEN: usize = STRIDE * HEIGHT as usize;

/// Damage tracking granularity.
pub const TILE: u16 = 16;
const TILES_X: usize = (WIDTH / TILE) as usize;
const TILES_Y: usize = (HEIGHT / TILE) as usize;
const TILE_WORDS: usize = (TILES_X * TILES_Y).div_ceil(32);
const _: () = assert!(WIDTH.is_multiple_of(TILE) && HEIGHT.is_multiple_of(TILE));

/// VNC sessions tracked (one bitmap each).
pub const SLOTS: usize = crate::app::VNC_SESSIONS + crate::app::VNC_WS_SESSIONS;
/// Most rectangles one update's damage list holds (beyond: their bounding box).
pub const MAX_DAMAGE: usize = 12;

/// Animation frame period.
pub const FRAME: Duration = Duration::from_millis(100);

/// A pure red block (255, 0, 0 in every client format).
pub const RED_BLOCK: Rect = Rect::new(WIDTH - 40, 16, 32, 32);
const TITLE: Rect = Rect::new(0, 0, WIDTH, 12);
const BARS: Rect = Rect::new(0, 52, WIDTH, 24);
const BAND: Rect = Rect::new(0, 80, WIDTH, 48);
const SQUARE: u16 = 16;
const TEXT_X: u16 = 4;
const TEXT_Y: [u16; 2] = [134, 148];
const COLS: usize = (WIDTH as usize - 2 * TEXT_X as usize) / font::ADVANCE;

/// A colour as 8-bit red, green, blue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rgb(pub u8, pub u8, pub u8);

const BLACK: Rgb = Rgb(0, 0, 0);
const WHITE: Rgb = Rgb(255, 255, 255);
const RED: Rgb = Rgb(255, 0, 0);
const TITLE_BG: Rgb = Rgb(0, 0, 170);
const BAR_COLOURS: [Rgb; 8] = [
    WHITE,
    Rgb(255, 255, 0),
    Rgb(0, 255, 255),
    Rgb(0, 255, 0),
    Rgb(255, 0, 255),
    RED,
    Rgb(0, 0, 255),
    BLACK,
];

/// An 8-bit channel scaled to `0..=max`.
const fn scale(v: u8, max: u16) -> u32 {
    (v as u32 * max as u32 + 127) / 255
}

/// The pixel value of `c` in [`FORMAT`].
const fn pixel(c: Rgb) -> u32 {
    let f = FORMAT;
    (scale(c.0, f.red_max) << f.red_shift)
        | (scale(c.1, f.green_max) << f.green_shift)
        | (scale(c.2, f.blue_max) << f.blue_shift)
}

/// The desktop: pixels, per-slot damage, animation and text state.
pub struct Desktop {
    fb: [u8; FB_LEN],
    dirty: [[u32; TILE_WORDS]; SLOTS],
    drawn: bool,
    frame: u32,
    next_frame: Instant,
    square_x: u16,
    text: [[u8; COLS]; 2],
    last_key: Option<u32>,
}

static DESKTOP: Mutex<ThreadModeRawMutex, RefCell<Desktop>> = Mutex::new(RefCell::new(Desktop {
    fb: [0; FB_LEN],
    dirty: [[0; TILE_WORDS]; SLOTS],
    drawn: false,
    frame: 0,
    next_frame: Instant::from_ticks(0),
    square_x: 0,
    text: [[0; COLS]; 2],
    last_key: None,
}));

/// Runs `f` on the desktop (only ever from executor tasks; never across an `.await`).
pub fn with<R>(f: impl FnOnce(&mut Desktop) -> R) -> R {
    DESKTOP.lock(|d| {
        let mut d = d.borrow_mut();
        if !d.drawn {
            d.draw_static();
        }
        f(&mut d)
    })
}

impl Desktop {
    /// The framebuffer, for an update.
    pub fn framebuffer(&self) -> Framebuffer<'_> {
        match Framebuffer::new(&self.fb, WIDTH, HEIGHT, STRIDE, FORMAT) {
            Ok(fb) => fb,
            // The geometry is checked at compile time (constants); unreachable.
            Err(_) => panic!("desktop: framebuffer geometry"),
        }
    }

    /// A session starts on `slot`: everything is new to it.
    pub fn attach(&mut self, slot: usize) {
        if let Some(d) = self.dirty.get_mut(slot) {
            d.fill(u32::MAX);
        }
    }

    /// When the next animation frame is due.
    pub fn next_frame(&self) -> Instant {
        self.next_frame
    }

    /// Advances the animation and the text if a frame is due.
    pub fn tick(&mut self, now: Instant) {
        if now < self.next_frame {
            return;
        }
        self.frame = self.frame.wrapping_add(1);
        self.next_frame = now + FRAME;
        // The square bounces across the band.
        let span = u32::from(WIDTH - SQUARE);
        let t = (self.frame * 4) % (2 * span);
        let x = if t < span { t } else { 2 * span - t } as u16;
        let y = BAND.y + (BAND.height - SQUARE) / 2;
        let old = Rect::new(self.square_x, y, SQUARE, SQUARE);
        self.draw_band(old);
        self.square_x = x;
        self.fill(Rect::new(x, y, SQUARE, SQUARE), WHITE);
        self.update_text(now);
    }

    /// The client pressed a key.
    pub fn key(&mut self, keysym: u32, now: Instant) {
        self.last_key = Some(keysym);
        self.update_text(now);
    }

    /// Takes `slot`'s damage as rectangles (cleared); false if there is none.
    pub fn take_damage(
        &mut self,
        slot: usize,
        out: &mut heapless::Vec<Damage, MAX_DAMAGE>,
    ) -> bool {
        out.clear();
        let Some(bits) = self.dirty.get_mut(slot) else {
            return false;
        };
        let dirty = |tx: usize, ty: usize| {
            let i = ty * TILES_X + tx;
            bits[i / 32] & (1 << (i % 32)) != 0
        };
        let mut rects: heapless::Vec<Rect, MAX_DAMAGE> = heapless::Vec::new();
        let mut overflow = false;
        for ty in 0..TILES_Y {
            let mut tx = 0;
            while tx < TILES_X {
                if !dirty(tx, ty) {
                    tx += 1;
                    continue;
                }
                let start = tx;
                while tx < TILES_X && dirty(tx, ty) {
                    tx += 1;
                }
                let run = Rect::new(
                    start as u16 * TILE,
                    ty as u16 * TILE,
                    (tx - start) as u16 * TILE,
                    TILE,
                );
                // Extend a rectangle of the same columns that ends on this row.
                match rects
                    .iter_mut()
                    .find(|r| r.x == run.x && r.width == run.width && r.y + r.height == run.y)
                {
                    Some(r) => r.height += TILE,
                    None => {
                        if rects.push(run).is_err() {
                            overflow = true;
                        }
                    }
                }
            }
        }
        bits.fill(0);
        if overflow {
            // Too fragmented: one bounding box.
            let bb = rects.iter().fold(rects[0], |a, r| union(a, *r));
            rects.clear();
            let _ = rects.push(bb);
        }
        for r in rects {
            let _ = out.push(Damage::Changed(r));
        }
        !out.is_empty()
    }

    // ---- drawing ----

    fn draw_static(&mut self) {
        self.drawn = true;
        self.fill(Rect::new(0, 0, WIDTH, HEIGHT), BLACK);
        self.fill(TITLE, TITLE_BG);
        self.text_at(4, 3, b"KVMIO EMBEDDED DEMO", WHITE, TITLE_BG);
        self.text_at(4, 20, b"VNC AND NBD OVER TLS", WHITE, BLACK);
        self.text_at(4, 32, crate::board::NAME.as_bytes(), WHITE, BLACK);
        self.fill(RED_BLOCK, RED);
        let w = WIDTH / BAR_COLOURS.len() as u16;
        for (i, c) in BAR_COLOURS.iter().enumerate() {
            let x = i as u16 * w;
            let width = if i + 1 == BAR_COLOURS.len() {
                WIDTH - x
            } else {
                w
            };
            self.fill(Rect::new(x, BARS.y, width, BARS.height), *c);
        }
        self.draw_band(BAND);
        self.update_text(Instant::now());
    }

    /// Redraws the band's background (a blue-green gradient) inside `r`.
    fn draw_band(&mut self, r: Rect) {
        for y in r.y..r.y + r.height {
            for x in r.x..r.x + r.width {
                let g = (u32::from(x) * 255 / u32::from(WIDTH)) as u8;
                let b = (u32::from(y - BAND.y) * 255 / u32::from(BAND.height)) as u8;
                self.put(x, y, pixel(Rgb(0, g / 2, 64 + b / 2)));
            }
        }
        self.mark(r);
    }

    fn update_text(&mut self, now: Instant) {
        let s = now.as_secs();
        let mut line = [b' '; COLS];
        let mut w = Writer::new(&mut line);
        w.str(b"UPTIME ");
        w.num(s / 3600, 2);
        w.str(b":");
        w.num(s / 60 % 60, 2);
        w.str(b":");
        w.num(s % 60, 2);
        self.set_line(0, line);

        let mut line = [b' '; COLS];
        let mut w = Writer::new(&mut line);
        w.str(b"LAST KEY ");
        match self.last_key {
            None => w.str(b"NONE"),
            Some(k) => {
                w.hex(k);
                if (0x20..0x7F).contains(&k) {
                    w.str(b" '");
                    w.str(&[k as u8]);
                    w.str(b"'");
                }
            }
        }
        self.set_line(1, line);
    }

    /// Draws the characters of text line `i` that changed.
    fn set_line(&mut self, i: usize, line: [u8; COLS]) {
        for (c, &ch) in line.iter().enumerate() {
            if self.text[i][c] != ch {
                self.text[i][c] = ch;
                let x = TEXT_X + (c * font::ADVANCE) as u16;
                self.char_at(x, TEXT_Y[i], ch, WHITE, BLACK);
            }
        }
    }

    fn text_at(&mut self, x: u16, y: u16, s: &[u8], fg: Rgb, bg: Rgb) {
        for (i, &ch) in s.iter().enumerate() {
            let cx = x + (i * font::ADVANCE) as u16;
            if cx + font::ADVANCE as u16 > WIDTH {
                break;
            }
            self.char_at(cx, y, ch, fg, bg);
        }
    }

    fn char_at(&mut self, x: u16, y: u16, ch: u8, fg: Rgb, bg: Rgb) {
        let rows = font::glyph(ch);
        let (fg, bg) = (pixel(fg), pixel(bg));
        for (dy, bits) in rows.iter().enumerate() {
            for dx in 0..font::ADVANCE {
                let on = dx < font::WIDTH && bits & (1 << (font::WIDTH - 1 - dx)) != 0;
                self.put(x + dx as u16, y + dy as u16, if on { fg } else { bg });
            }
        }
        self.mark(Rect::new(x, y, font::ADVANCE as u16, font::HEIGHT as u16));
    }

    fn fill(&mut self, r: Rect, c: Rgb) {
        let p = pixel(c);
        for y in r.y..r.y + r.height {
            for x in r.x..r.x + r.width {
                self.put(x, y, p);
            }
        }
        self.mark(r);
    }

    fn put(&mut self, x: u16, y: u16, p: u32) {
        if x >= WIDTH || y >= HEIGHT {
            return;
        }
        let at = usize::from(y) * STRIDE + usize::from(x) * BPP;
        self.fb[at..at + BPP].copy_from_slice(&p.to_le_bytes()[..BPP]);
    }

    /// Marks the tiles `r` touches as changed for every slot.
    fn mark(&mut self, r: Rect) {
        let r = r.clip_to(WIDTH, HEIGHT);
        if r.is_empty() {
            return;
        }
        let (tx0, ty0) = (usize::from(r.x / TILE), usize::from(r.y / TILE));
        let tx1 = usize::from((r.x + r.width - 1) / TILE);
        let ty1 = usize::from((r.y + r.height - 1) / TILE);
        for ty in ty0..=ty1 {
            for tx in tx0..=tx1 {
                let i = ty * TILES_X + tx;
                for d in &mut self.dirty {
                    d[i / 32] |= 1 << (i % 32);
                }
            }
        }
    }
}

fn union(a: Rect, b: Rect) -> Rect {
    let x0 = a.x.min(b.x);
    let y0 = a.y.min(b.y);
    let x1 = (a.x + a.width).max(b.x + b.width);
    let y1 = (a.y + a.height).max(b.y + b.height);
    Rect::new(x0, y0, x1 - x0, y1 - y0)
}

/// Formats into a fixed line (truncating).
struct Writer<'a> {
    buf: &'a mut [u8],
    pos: usize,
}

impl<'a> Writer<'a> {
    fn new(buf: &'a mut [u8]) -> Self {
        Self { buf, pos: 0 }
    }

    fn str(&mut self, s: &[u8]) {
        for &b in s {
            if let Some(d) = self.buf.get_mut(self.pos) {
                *d = b;
                self.pos += 1;
            }
        }
    }

    /// `v` in decimal, zero-padded to `width` digits.
    fn num(&mut self, v: u64, width: usize) {
        let mut digits = [b'0'; 20];
        let (mut n, mut v) = (0, v);
        while (v > 0 || n < width) && n < digits.len() {
            digits[n] = b'0' + (v % 10) as u8;
            v /= 10;
            n += 1;
        }
        for i in (0..n).rev() {
            self.str(&[digits[i]]);
        }
    }

    /// `v` as `0x` + at least 4 hex digits.
    fn hex(&mut self, v: u32) {
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        self.str(b"0X");
        let digits = (8 - v.leading_zeros() as usize / 4).max(4);
        for i in (0..digits).rev() {
            self.str(&[HEX[(v >> (4 * i)) as usize & 0xF]]);
        }
    }
}
