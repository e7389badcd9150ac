//! `embassy-time-driver` on the CMSDK APB timers (PCLK 25 MHz), tick rate 1 MHz.
//!
//! * TIMER0 runs free as a 32-bit down-counter from 0xFFFF_FFFF; its wrap interrupt
//!   (every 171.8 s) increments `high`, which extends the count to 64 bits.
//! * TIMER1 is a one-shot alarm for the head of the timer queue
//!   (`embassy_time_queue_utils::Queue`, integrated with the executor's tasks).

use core::cell::{Cell, RefCell};
use core::task::Waker;

use critical_section::{CriticalSection, Mutex};
use embassy_time_driver::Driver;
use embassy_time_queue_utils::Queue;

use super::irq::{self, Interrupt};
use super::mmio::Mmio;

const TIMER0_BASE: usize = 0x4000_0000;
const TIMER1_BASE: usize = 0x4000_1000;
const CTRL: usize = 0x00;
const VALUE: usize = 0x04;
const RELOAD: usize = 0x08;
const INTSTATUS: usize = 0x0C; // read: status, write 1: clear
const CTRL_EN: u32 = 1 << 0;
const CTRL_IRQ_EN: u32 = 1 << 3;

/// Timer input clock (PCLK).
pub const PCLK_HZ: u64 = 25_000_000;
const CYCLES_PER_TICK: u64 = PCLK_HZ / embassy_time_driver::TICK_HZ;
const _: () = assert!(
    PCLK_HZ.is_multiple_of(embassy_time_driver::TICK_HZ),
    "tick must divide PCLK"
);

fn timer0() -> Mmio {
    // SAFETY: CMSDK APB TIMER0 register block on MPS2; only its 4 registers are used.
    unsafe { Mmio::new(TIMER0_BASE) }
}

fn timer1() -> Mmio {
    // SAFETY: CMSDK APB TIMER1 register block on MPS2; only its 4 registers are used.
    unsafe { Mmio::new(TIMER1_BASE) }
}

struct CmsdkTimeDriver {
    /// Number of TIMER0 wraps handled so far.
    high: Mutex<Cell<u32>>,
    queue: Mutex<RefCell<Queue>>,
}

embassy_time_driver::time_driver_impl!(static DRIVER: CmsdkTimeDriver = CmsdkTimeDriver {
    high: Mutex::new(Cell::new(0)),
    queue: Mutex::new(RefCell::new(Queue::new())),
});

impl CmsdkTimeDriver {
    /// PCLK cycles since `init`, as 64 bits.
    fn cycles(&self, cs: CriticalSection) -> u64 {
        let t = timer0();
        let v1 = t.read(VALUE);
        let wrap_pending = t.read(INTSTATUS) & 1 != 0;
        let v2 = t.read(VALUE);
        let high = self.high.borrow(cs).get() as u64;
        // If the wrap was pending when INTSTATUS was read, it happened before that read, so
        // `v2` (read after it) belongs to the next period. Otherwise `v1` (read before it)
        // belongs to the current one.
        let (high, value) = if wrap_pending {
            (high + 1, v2)
        } else {
            (high, v1)
        };
        (high << 32) | u64::from(u32::MAX - value)
    }

    fn on_wrap(&self) {
        critical_section::with(|cs| {
            timer0().write(INTSTATUS, 1);
            let high = self.high.borrow(cs);
            high.set(high.get().wrapping_add(1));
        });
    }

    fn on_alarm(&self) {
        critical_section::with(|cs| {
            let t = timer1();
            t.write(CTRL, 0);
            t.write(INTSTATUS, 1);
            self.dispatch(cs);
        });
    }

    /// Wake what is due and arm the alarm for the next expiration.
    fn dispatch(&self, cs: CriticalSection) {
        let mut queue = self.queue.borrow(cs).borrow_mut();
        let mut next = queue.next_expiration(self.now_in(cs));
        while !self.set_alarm(cs, next) {
            next = queue.next_expiration(self.now_in(cs));
        }
    }

    fn now_in(&self, cs: CriticalSection) -> u64 {
        self.cycles(cs) / CYCLES_PER_TICK
    }

    /// Arm TIMER1 for tick `at`. Returns false if `at` is not in the future (nothing armed).
    fn set_alarm(&self, cs: CriticalSection, at: u64) -> bool {
        let t = timer1();
        t.write(CTRL, 0);
        t.write(INTSTATUS, 1);
        if at == u64::MAX {
            return true;
        }
        let now = self.now_in(cs);
        if at <= now {
            return false;
        }
        // Further than one counter period away: fire early; `dispatch` re-arms.
        let cycles = ((at - now) * CYCLES_PER_TICK).min(u64::from(u32::MAX)) as u32;
        // QEMU also loads VALUE on a RELOAD write, so RELOAD first, then VALUE.
        // RELOAD = max keeps the counter from firing again soon after it reaches zero.
        t.write(RELOAD, u32::MAX);
        t.write(VALUE, cycles.max(1));
        t.write(CTRL, CTRL_EN | CTRL_IRQ_EN);
        true
    }
}

impl Driver for CmsdkTimeDriver {
    fn now(&self) -> u64 {
        critical_section::with(|cs| self.now_in(cs))
    }

    fn schedule_wake(&self, at: u64, waker: &Waker) {
        critical_section::with(|cs| {
            let changed = self.queue.borrow(cs).borrow_mut().schedule_wake(at, waker);
            if changed {
                self.dispatch(cs);
            }
        })
    }
}

/// Start TIMER0 free-running and unmask both timer interrupts. Call before anything reads time.
pub fn init() {
    let t0 = timer0();
    t0.write(CTRL, 0);
    t0.write(RELOAD, u32::MAX);
    t0.write(VALUE, u32::MAX);
    t0.write(INTSTATUS, 1);
    t0.write(CTRL, CTRL_EN | CTRL_IRQ_EN);

    let t1 = timer1();
    t1.write(CTRL, 0);
    t1.write(INTSTATUS, 1);

    irq::enable(Interrupt::Timer0);
    irq::enable(Interrupt::Timer1);
}

/// Raw 64-bit PCLK cycle count (for seeding and fine-grained measurements).
pub fn cycles() -> u64 {
    critical_section::with(|cs| DRIVER.cycles(cs))
}

pub(super) fn on_timer0_interrupt() {
    DRIVER.on_wrap();
}

pub(super) fn on_timer1_interrupt() {
    DRIVER.on_alarm();
}
