//! CMSDK APB UART0 (QEMU: serial0, i.e. stdio with `-nographic`) and a `log` backend on it.
//!
//! Plain text, one line per record: `[   12.345678] INFO  message`. Output is polled
//! (blocking while the TX buffer is full) and each record is written inside a critical section,
//! so records from interrupt handlers never interleave with thread-mode ones.

use core::fmt::{self, Write};

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
        critical_section::with(|_| {
            let _ = writeln!(
                RawUart,
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
