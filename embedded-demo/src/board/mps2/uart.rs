//! CMSDK APB UART0 (QEMU: serial0, i.e. stdio with `-nographic`) and a `log` backend on it.
//!
//! Plain text, one line per record: `[   12.345678] INFO  message`.
//!
//! Records are formatted into a RAM ring (inside a critical section, so records from interrupt
//! handlers never interleave) and written to the UART only when the executor is idle
//! ([`drain`], called from its idle loop). Each UART byte is an MMIO exit in QEMU, and
//! writing a line synchronously blocked the executor for ~1 ms per line, long enough to delay
//! SYN-ACKs and trip slirp's 0.5 s stall. If the ring overflows, the excess of a record is
//! dropped and a `[log: N bytes dropped]` line says so. Fault and panic handlers flush the ring
//! and then write directly ([`RawUart`]).

use core::cell::RefCell;
use core::fmt::{self, Write};

use critical_section::Mutex;

use super::mmio::Mmio;

const UART0_BASE: usize = 0x4000_4000;
const DATA: usize = 0x00;
const STATE: usize = 0x04;
const CTRL: usize = 0x08;
const BAUDDIV: usize = 0x10;
const STATE_TX_FULL: u32 = 1 << 0;
const CTRL_TX_EN: u32 = 1 << 0;
/// PCLK is 25 MHz; 25e6 / 115200 ≈ 217 (QEMU ignores the rate but needs BAUDDIV >= 16).
const BAUD_DIVISOR: u32 = 25_000_000 / 115_200;

fn uart0() -> Mmio {
    // SAFETY: 0x4000_4000 is the CMSDK UART0 block on MPS2 AN385/AN386/AN500; we only use
    // its DATA/STATE/CTRL/BAUDDIV registers.
    unsafe { Mmio::new(UART0_BASE) }
}

/// Enable the transmitter.
pub fn init() {
    let u = uart0();
    u.write(BAUDDIV, BAUD_DIVISOR);
    u.write(CTRL, CTRL_TX_EN);
}

/// A raw writer on UART0: usable anywhere, including fault and panic handlers.
pub struct RawUart;

impl RawUart {
    fn put(&mut self, b: u8) {
        let u = uart0();
        while u.read(STATE) & STATE_TX_FULL != 0 {}
        u.write(DATA, b as u32);
    }
}

impl Write for RawUart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for b in s.bytes() {
            self.put(b);
        }
        Ok(())
    }
}

/// Log bytes waiting for the UART.
const LOG_RING: usize = 2 * 1024;

struct Ring {
    buf: [u8; LOG_RING],
    head: usize,
    len: usize,
    dropped: usize,
}

impl Ring {
    fn push(&mut self, bytes: &[u8]) {
        for &b in bytes {
            if self.len == LOG_RING {
                self.dropped += 1;
                continue;
            }
            self.buf[(self.head + self.len) % LOG_RING] = b;
            self.len += 1;
        }
    }

    fn pop(&mut self, out: &mut [u8]) -> usize {
        let n = out.len().min(self.len);
        for slot in &mut out[..n] {
            *slot = self.buf[self.head];
            self.head = (self.head + 1) % LOG_RING;
        }
        self.len -= n;
        n
    }
}

impl Write for Ring {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.push(s.as_bytes());
        Ok(())
    }
}

static RING: Mutex<RefCell<Ring>> = Mutex::new(RefCell::new(Ring {
    buf: [0; LOG_RING],
    head: 0,
    len: 0,
    dropped: 0,
}));

/// Whether log output is waiting.
pub fn pending() -> bool {
    critical_section::with(|cs| {
        let r = RING.borrow_ref(cs);
        r.len > 0 || r.dropped > 0
    })
}

/// Write up to one chunk of waiting log output to the UART. Returns whether anything was
/// written. Interrupts stay enabled while the bytes go out.
pub fn drain() -> bool {
    let mut chunk = [0u8; 32];
    let (n, dropped) = critical_section::with(|cs| {
        let mut r = RING.borrow_ref_mut(cs);
        let n = r.pop(&mut chunk);
        let dropped = if r.len == 0 {
            core::mem::take(&mut r.dropped)
        } else {
            0
        };
        (n, dropped)
    });
    let mut uart = RawUart;
    for &b in &chunk[..n] {
        uart.put(b);
    }
    if dropped > 0 {
        let _ = writeln!(uart, "[log: {} bytes dropped]", dropped);
    }
    n > 0 || dropped > 0
}

/// Write out everything waiting (fault and panic handlers: before their own output).
pub fn flush_blocking() {
    while drain() {}
}

struct UartLogger;

impl log::Log for UartLogger {
    fn enabled(&self, metadata: &log::Metadata) -> bool {
        metadata.level() <= log::max_level()
    }

    fn log(&self, record: &log::Record) {
        if !self.enabled(record.metadata()) {
            return;
        }
        let us = embassy_time::Instant::now().as_micros();
        critical_section::with(|cs| {
            let _ = writeln!(
                RING.borrow_ref_mut(cs),
                "[{:>5}.{:06}] {:<5} {}",
                us / 1_000_000,
                us % 1_000_000,
                record.level(),
                record.args()
            );
        });
    }

    fn flush(&self) {}
}

static LOGGER: UartLogger = UartLogger;

/// Install the UART logger as the `log` backend (level Info).
pub fn init_logger() {
    if log::set_logger(&LOGGER).is_ok() {
        log::set_max_level(log::LevelFilter::Info);
    }
}
