//! The KVM's keyboard and mouse, end to end in the emulated appliance: `kvmio gadget up` on
//! dummy_udc, `kvmio vnc serve --hid kvmio` in the guest, a viewer on the host (through the
//! port forward) typing and clicking, and the target computer (the host side of dummy_hcd, on
//! the same kernel) receiving the key codes and pointer events on its `/dev/input/eventN`
//! nodes. Its LEDs come back to the viewer; a viewer that drops with keys held leaves nothing
//! pressed; floods, unknown keysyms and pointers outside the screen do no harm; `kvmio gadget`
//! run twice, torn down twice or without configfs says so.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use kvmio_tests::appliance::Appliance;

const VNC: u16 = 5900;
const W: u16 = 320;
const H: u16 = 200;

// Linux input event codes (include/uapi/linux/input-event-codes.h)
const EV_KEY: u16 = 1;
const EV_REL: u16 = 2;
const EV_ABS: u16 = 3;
const EV_LED: u16 = 17;
const KEY_Q: u16 = 16;
const KEY_W: u16 = 17;
const KEY_Y: u16 = 21;
const KEY_A: u16 = 30;
const KEY_B: u16 = 48;
const KEY_C: u16 = 46;
const KEY_Z: u16 = 44;
const KEY_2: u16 = 3;
const KEY_LEFTSHIFT: u16 = 42;
const KEY_RIGHTALT: u16 = 100;
const KEY_LEFTCTRL: u16 = 29;
const BTN_LEFT: u16 = 272;
const BTN_RIGHT: u16 = 273;
const BTN_MIDDLE: u16 = 274;
const REL_HWHEEL: u16 = 6;
const REL_WHEEL: u16 = 8;
const ABS_X: u16 = 0;
const ABS_Y: u16 = 1;
const LED_CAPSL: u16 = 1;

/// A minimal RFB viewer: None security, Raw pixels, QEMU extended key events and the QEMU
/// LED State pseudo-encoding; a reader thread keeps asking for incremental updates (as real
/// viewers do) and reports every LED state it receives.
struct Viewer {
    s: TcpStream,
    leds: mpsc::Receiver<u8>,
}

fn read_exact(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).ok().map(|_| v)
}

impl Viewer {
    fn connect(port: u16) -> Self {
        let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the appliance");
        s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let v = read_exact(&mut s, 12).expect("version");
        assert_eq!(v, b"RFB 003.008\n");
        s.write_all(b"RFB 003.008\n").unwrap();
        let n = read_exact(&mut s, 1).unwrap()[0];
        let types = read_exact(&mut s, usize::from(n)).unwrap();
        assert!(types.contains(&1), "None offered: {types:?}");
        s.write_all(&[1]).unwrap();
        assert_eq!(read_exact(&mut s, 4).unwrap(), [0; 4]);
        s.write_all(&[1]).unwrap(); // shared
        let init = read_exact(&mut s, 24).unwrap();
        assert_eq!(
            (
                u16::from_be_bytes([init[0], init[1]]),
                u16::from_be_bytes([init[2], init[3]])
            ),
            (W, H)
        );
        let name_len = u32::from_be_bytes(init[20..24].try_into().unwrap()) as usize;
        read_exact(&mut s, name_len).unwrap();
        // SetEncodings: Raw, QEMU extended key events (-258), QEMU LED State (-261)
        let mut m = vec![2, 0, 0, 3];
        for e in [0i32, -258, -261] {
            m.extend_from_slice(&e.to_be_bytes());
        }
        s.write_all(&m).unwrap();
        s.write_all(&[
            3,
            0,
            0,
            0,
            0,
            0,
            (W >> 8) as u8,
            W as u8,
            (H >> 8) as u8,
            H as u8,
        ])
        .unwrap();
        let (tx, leds) = mpsc::channel();
        let mut r = s.try_clone().unwrap();
        std::thread::spawn(move || {
            while let Some(hdr) = read_exact(&mut r, 4) {
                assert_eq!(hdr[0], 0, "only FramebufferUpdates were asked for");
                let rects = u16::from_be_bytes([hdr[2], hdr[3]]);
                for _ in 0..rects {
                    let Some(rh) = read_exact(&mut r, 12) else {
                        return;
                    };
                    let (w, h) = (
                        usize::from(u16::from_be_bytes([rh[4], rh[5]])),
                        usize::from(u16::from_be_bytes([rh[6], rh[7]])),
                    );
                    match i32::from_be_bytes(rh[8..12].try_into().unwrap()) {
                        0 => {
                            if read_exact(&mut r, w * h * 4).is_none() {
                                return;
                            }
                        }
                        -258 => {}
                        -261 => {
                            let Some(b) = read_exact(&mut r, 1) else {
                                return;
                            };
                            let _ = tx.send(b[0]);
                        }
                        e => panic!("unexpected encoding {e}"),
                    }
                }
                let req = [
                    3,
                    1,
                    0,
                    0,
                    0,
                    0,
                    (W >> 8) as u8,
                    W as u8,
                    (H >> 8) as u8,
                    H as u8,
                ];
                if r.write_all(&req).is_err() {
                    return;
                }
            }
        });
        Self { s, leds }
    }

    fn key(&mut self, down: bool, keysym: u32) {
        let k = keysym.to_be_bytes();
        self.s
            .write_all(&[4, u8::from(down), 0, 0, k[0], k[1], k[2], k[3]])
            .unwrap();
    }

    fn tap(&mut self, keysym: u32) {
        self.key(true, keysym);
        self.key(false, keysym);
    }

    /// QEMU extended key event: the key by its number, whatever the layout.
    fn qkey(&mut self, down: bool, keysym: u32, qnum: u32) {
        let mut m = vec![255, 0, 0, u8::from(down)];
        m.extend_from_slice(&keysym.to_be_bytes());
        m.extend_from_slice(&qnum.to_be_bytes());
        self.s.write_all(&m).unwrap();
    }

    fn pointer(&mut self, mask: u8, x: u16, y: u16) {
        let (x, y) = (x.to_be_bytes(), y.to_be_bytes());
        self.s
            .write_all(&[5, mask, x[0], x[1], y[0], y[1]])
            .unwrap();
    }

    /// Waits for an LED state equal to `want`.
    #[track_caller]
    fn wait_leds(&self, want: u8) {
        let end = Instant::now() + Duration::from_secs(30);
        let mut seen = Vec::new();
        while Instant::now() < end {
            if let Ok(l) = self.leds.recv_timeout(Duration::from_millis(200)) {
                if l == want {
                    return;
                }
                seen.push(l);
            }
        }
        panic!("LED state {want:#05b} never reached the viewer (saw {seen:?})");
    }
}

impl Drop for Viewer {
    /// The connection ends (the reader thread's clone of the socket would keep it open).
    fn drop(&mut self) {
        let _ = self.s.shutdown(std::net::Shutdown::Both);
    }
}

/// Key events only, as (code, value), value 2 (autorepeat) left out.
fn keys(ev: &[(u16, u16, i32)]) -> Vec<(u16, i32)> {
    ev.iter()
        .filter(|e| e.0 == EV_KEY && e.2 != 2)
        .map(|e| (e.1, e.2))
        .collect()
}

/// Releases that one report makes (a key and the modifier it needed) come in the kernel's
/// order: runs of releases are compared as sets.
fn releases_sorted(k: &[(u16, i32)]) -> Vec<(u16, i32)> {
    let mut out = k.to_vec();
    let mut i = 0;
    while i < out.len() {
        let mut j = i;
        while j < out.len() && out[j].1 == 0 {
            j += 1;
        }
        out[i..j].sort();
        i = j.max(i + 1);
    }
    out
}

/// Collects key events until `n` of them (not counting autorepeat) arrived.
#[track_caller]
fn take_keys(a: &mut Appliance, rec: u64, n: usize) -> Vec<(u16, i32)> {
    let end = Instant::now() + Duration::from_secs(30);
    let mut got = Vec::new();
    while got.len() < n && Instant::now() < end {
        got.extend(keys(&a.ev_take(rec, 1, Duration::from_millis(500))));
    }
    got
}

fn serve(a: &mut Appliance, layout: &str) -> u64 {
    let id = a.spawn(&[
        "kvmio",
        "vnc",
        "serve",
        "--listen",
        "0.0.0.0:5900",
        "--size",
        &format!("{W}x{H}"),
        "--hid",
        "kvmio",
        "--keyboard-layout",
        layout,
    ]);
    a.wait_output(id, "vnc serving", Duration::from_secs(60));
    id
}

#[test]
fn keyboard_mouse_and_leds_reach_the_target() {
    let mut a = Appliance::boot(&[VNC]);
    // the harness: the device's kernel interfaces and the release kvmio are there
    a.run_ok(&["test", "-e", "/dev/video0"]);
    a.run_ok(&["test", "-e", "/sys/class/udc/dummy_udc.0"]);
    assert!(a.run_ok(&["kvmio", "--version"]).starts_with("kvmio "));

    // kvmio gadget up: the HID nodes are printed, a second `up` is refused
    let up = a.run_ok(&["kvmio", "gadget", "up"]);
    assert!(up.contains("keyboard /dev/hidg0"), "{up}");
    assert!(up.contains("pointer /dev/hidg1"), "{up}");
    assert!(up.contains("udc dummy_udc.0"), "{up}");
    assert!(up.contains("lun 0 cdrom removable (no medium)"), "{up}");
    assert!(up.contains("lun 1 disk removable (no medium)"), "{up}");
    let again = a.run(&["kvmio", "gadget", "up"]);
    assert_ne!(again.code, Some(0));
    assert!(again.stderr.contains("already exists"), "{}", again.stderr);
    // the target enumerates a keyboard (interface 0) and a pointer (interface 1)
    let kbd = a.evfind("dummy_hcd.0-1/input0");
    let mouse = a.evfind("dummy_hcd.0-1/input1");
    let status = a.run_ok(&["kvmio", "gadget", "status"]);
    assert!(status.contains("(configured)"), "{status}");

    // --- German layout: keysyms are typed where a German keyboard has them
    let server = serve(&mut a, "de");
    let rec = a.ev_start(&kbd);
    let mut v = Viewer::connect(a.port(VNC));
    v.tap(0x7a); // 'z' is the key a US keyboard calls Y
    v.tap(0x40); // '@' is AltGr+Q
    v.tap(0x22); // '"' is Shift+2
    v.tap(0x263a); // a keysym no layout types: skipped
    // QEMU extended key events: the key by position (0x1e is A), whatever the layout
    v.qkey(true, 0x71, 0x1e);
    v.qkey(false, 0x71, 0x1e);
    let got = take_keys(&mut a, rec, 12);
    assert_eq!(
        releases_sorted(&got),
        releases_sorted(&[
            (KEY_Y, 1),
            (KEY_Y, 0),
            (KEY_RIGHTALT, 1),
            (KEY_Q, 1),
            (KEY_Q, 0),
            (KEY_RIGHTALT, 0),
            (KEY_LEFTSHIFT, 1),
            (KEY_2, 1),
            (KEY_2, 0),
            (KEY_LEFTSHIFT, 0),
            (KEY_A, 1),
            (KEY_A, 0),
        ]),
        "key codes on the target: {got:?}"
    );
    let (_, log) = a.output(server);
    assert!(
        log.contains("cannot be typed on layout de; skipped"),
        "{log}"
    );

    // --- the target's CapsLock LED reaches the viewer
    v.wait_leds(0);
    a.evwrite(&kbd, EV_LED, LED_CAPSL, 1);
    v.wait_leds(0b100);
    a.evwrite(&kbd, EV_LED, LED_CAPSL, 0);
    v.wait_leds(0);

    // --- pointer: absolute position, clicks, wheel, horizontal wheel, clipping
    let prec = a.ev_start(&mouse);
    let mut model = rfb_core::hid::Pointer::new();
    let expect = model.event(0, 160, 100, W, H).unwrap();
    v.pointer(0, 160, 100);
    v.pointer(1, 160, 100);
    v.pointer(0, 160, 100);
    v.pointer(2, 160, 100); // rfbproto's button 2 is the middle one
    v.pointer(0, 160, 100);
    v.pointer(4, 160, 100);
    v.pointer(0, 160, 100);
    v.pointer(8, 160, 100); // wheel up
    v.pointer(0, 160, 100);
    v.pointer(64, 160, 100); // button 7: right
    v.pointer(0, 160, 100);
    v.pointer(0, 5000, 5000); // outside the screen: clipped to the far corner
    let end = Instant::now() + Duration::from_secs(30);
    let mut ev = Vec::new();
    while Instant::now() < end && !ev.contains(&(EV_ABS, ABS_Y, 32767)) {
        ev.extend(a.ev_take(prec, 64, Duration::from_millis(500)));
    }
    assert!(ev.contains(&(EV_ABS, ABS_X, i32::from(expect.x))), "{ev:?}");
    assert!(ev.contains(&(EV_ABS, ABS_Y, i32::from(expect.y))), "{ev:?}");
    let k = keys(&ev);
    assert_eq!(
        k,
        [
            (BTN_LEFT, 1),
            (BTN_LEFT, 0),
            (BTN_MIDDLE, 1),
            (BTN_MIDDLE, 0),
            (BTN_RIGHT, 1),
            (BTN_RIGHT, 0)
        ],
        "{ev:?}"
    );
    assert!(ev.contains(&(EV_REL, REL_WHEEL, 1)), "{ev:?}");
    assert!(ev.contains(&(EV_REL, REL_HWHEEL, 1)), "{ev:?}");
    assert!(ev.contains(&(EV_ABS, ABS_X, 32767)), "{ev:?}");

    // --- a flood of keys: the target may drop some, never ends with one held, still types
    let mut flood = Vec::new();
    for _ in 0..3000 {
        for down in [1u8, 0] {
            flood.extend_from_slice(&[4, down, 0, 0, 0, 0, 0, 0x62]);
        }
    }
    v.s.write_all(&flood).unwrap();
    v.tap(0x63); // 'c' after the flood
    let end = Instant::now() + Duration::from_secs(120);
    let mut got = Vec::new();
    while !got.contains(&(KEY_C, 0)) {
        assert!(Instant::now() < end, "'c' never arrived after the flood");
        got.extend(keys(&a.ev_take(rec, 512, Duration::from_millis(500))));
    }
    let last_b = got.iter().rev().find(|k| k.0 == KEY_B).copied();
    assert_eq!(last_b, Some((KEY_B, 0)), "B is left held after the flood");
    eprintln!(
        "flood: 6000 events sent, {} key events of B reached the target",
        got.iter().filter(|k| k.0 == KEY_B).count()
    );

    // --- a viewer that drops with Ctrl and W held leaves nothing pressed
    v.key(true, 0xffe3);
    v.key(true, 0x77);
    let got = take_keys(&mut a, rec, 2);
    assert_eq!(got, [(KEY_LEFTCTRL, 1), (KEY_W, 1)]);
    drop(v);
    let mut got = take_keys(&mut a, rec, 2);
    got.sort();
    assert_eq!(
        got,
        [(KEY_W, 0), (KEY_LEFTCTRL, 0)],
        "keys left held on the target"
    );
    a.kill(server);

    // --- French layout: AZERTY, so 'a' is where a US keyboard has Q, 'w' where it has Z
    let server = serve(&mut a, "fr");
    let mut v = Viewer::connect(a.port(VNC));
    v.tap(0x61);
    v.tap(0x77);
    let got = take_keys(&mut a, rec, 4);
    assert_eq!(got, [(KEY_Q, 1), (KEY_Q, 0), (KEY_Z, 1), (KEY_Z, 0)]);
    drop(v);
    a.kill(server);
    a.ev_stop(rec);
    a.ev_stop(prec);

    // --- gadget down, twice; without configfs: clear errors
    a.run_ok(&["kvmio", "gadget", "down"]);
    let st = a.run(&["kvmio", "gadget", "status"]);
    assert!(st.stderr.contains("no gadget \"kvmio\""), "{}", st.stderr);
    let again = a.run(&["kvmio", "gadget", "down"]);
    assert_ne!(again.code, Some(0));
    assert!(again.stderr.contains("no gadget"), "{}", again.stderr);
    a.run_ok(&["umount", "/sys/kernel/config"]);
    let nocfg = a.run(&["kvmio", "gadget", "up"]);
    assert_ne!(nocfg.code, Some(0));
    assert!(nocfg.stderr.contains("configfs"), "{}", nocfg.stderr);
    a.run_ok(&["mount", "-t", "configfs", "configfs", "/sys/kernel/config"]);
    // and up again after all that
    a.run_ok(&["kvmio", "gadget", "up", "--lun", "none"]);
    a.run_ok(&["kvmio", "gadget", "down"]);
}

const KEY_1: u16 = 2;
const WS: u16 = 5700;

/// The README's browser console, all the way to the target: the main job `kvmio serve` in the
/// appliance with the HID gadget, TLS (the credentials made on the host, verify-peer off for
/// the browser) and `--web` Debian's noVNC; Chromium on the host opens
/// `https://…/vnc.html`, logs in (VncAuth inside wss), sees the console, types and clicks, and
/// the target's evdev nodes get the keys (by position: noVNC sends QEMU extended key events)
/// and the button.
#[test]
fn the_browser_console_types_into_the_target() {
    use kvmio_tests::browser::{browse, browser_home};
    let mut a = Appliance::boot(&[VNC, WS]);
    let share = a.share().to_path_buf();
    let p = kvmio_tests::pki(&share.join("pki"));
    std::fs::write(share.join("pw"), "s3cret\n").unwrap();
    let st = std::process::Command::new("cp")
        .arg("-rL")
        .arg("/usr/share/novnc")
        .arg(share.join("novnc"))
        .status()
        .unwrap();
    assert!(
        st.success(),
        "Debian's novnc package (tests/setup.sh installs it)"
    );
    a.run_ok(&["kvmio", "gadget", "up"]);
    let kbd = a.evfind("dummy_hcd.0-1/input0");
    let mouse = a.evfind("dummy_hcd.0-1/input1");
    let server = a.spawn(&[
        "kvmio",
        "serve",
        "--tls",
        "require",
        "--tls-creds",
        "/mnt/host/pki",
        "--tls-verify-peer",
        "no",
        "--no-nbd",
        "--vnc-listen",
        "0.0.0.0:5900",
        "--vnc-security",
        "X509Vnc",
        "--password-file",
        "/mnt/host/pw",
        "--size",
        &format!("{W}x{H}"),
        "--hid",
        "kvmio",
        "--vnc-websocket",
        "0.0.0.0:5700",
        "--web",
        "/mnt/host/novnc",
    ]);
    a.wait_output(server, "vnc-websocket serving", Duration::from_secs(60));
    let rec = a.ev_start(&kbd);
    let prec = a.ev_start(&mouse);

    let dir = kvmio_tests::tempdir();
    let home = browser_home(dir.path(), Some(&p.dir.join("ca-cert.pem")));
    let url = format!(
        "https://127.0.0.1:{}/vnc.html?autoconnect=1&password=s3cret&path=websockify",
        a.port(WS)
    );
    let seen = browse(
        &home,
        &url,
        dir.path(),
        &[
            "--novnc-app",
            "--type",
            "a1",
            "--press",
            "Shift+KeyZ",
            "--click",
            "100,50",
        ],
    );
    assert_eq!(seen.state, "connected", "{}", seen.stderr);
    let c = seen.canvas.expect("the console's canvas");
    assert_eq!((c.width, c.height), (usize::from(W), usize::from(H)));

    // the page clicks the canvas once to focus it, then types: the keys in order
    let got = take_keys(&mut a, rec, 8);
    assert_eq!(
        releases_sorted(&got),
        releases_sorted(&[
            (KEY_A, 1),
            (KEY_A, 0),
            (KEY_1, 1),
            (KEY_1, 0),
            (KEY_LEFTSHIFT, 1),
            (KEY_Z, 1),
            (KEY_Z, 0),
            (KEY_LEFTSHIFT, 0),
        ]),
        "{got:?}"
    );
    // and the clicks (the focusing one and the one at 100,50) as left-button presses
    let end = Instant::now() + Duration::from_secs(30);
    let mut ev = Vec::new();
    while Instant::now() < end
        && ev
            .iter()
            .filter(|e: &&(u16, u16, i32)| **e == (EV_KEY, BTN_LEFT, 0))
            .count()
            < 2
    {
        ev.extend(a.ev_take(prec, 64, Duration::from_millis(500)));
    }
    let presses = ev.iter().filter(|e| **e == (EV_KEY, BTN_LEFT, 1)).count();
    assert_eq!(presses, 2, "{ev:?}");
    let (log, err) = a.output(server);
    let log = format!("{log}{err}");
    assert!(log.contains("(wss)"), "{log}");
    assert!(log.contains("GET /vnc.html"), "{log}");
    a.kill(server);
}
