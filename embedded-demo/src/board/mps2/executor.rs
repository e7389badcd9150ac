//! A thread-mode embassy executor that sleeps with WFI.
//!
//! embassy-executor's `platform-cortex-m` executor sleeps with WFE, which QEMU treats as a NOP
//! on M-profile cores: the emulator then spins a host core at 100 % while idle. This one uses
//! the raw executor with our own `__pender` (sets a flag) and sleeps with WFI inside a critical
//! section only when the flag is clear. WFI wakes on a pending interrupt even with PRIMASK set;
//! the interrupt is taken when the critical section ends, and the next loop polls again.
//! Before sleeping, the idle loop writes pending log output to the UART, one small chunk per
//! round, so logging never delays a task that has work.

use core::sync::atomic::{AtomicBool, Ordering};

use embassy_executor::{Spawner, raw};
use static_cell::StaticCell;

use super::uart;

/// Set by `__pender` when a task was woken; cleared before each poll.
static WORK_PENDING: AtomicBool = AtomicBool::new(false);

/// Called by embassy-executor whenever a task of our executor is woken (from any context).
#[unsafe(export_name = "__pender")]
fn pender(_context: *mut ()) {
    WORK_PENDING.store(true, Ordering::Release);
}

/// Run the executor forever. `init` spawns the first tasks.
pub fn run(init: impl FnOnce(Spawner)) -> ! {
    static EXECUTOR: StaticCell<raw::Executor> = StaticCell::new();
    let executor: &'static raw::Executor = EXECUTOR.init(raw::Executor::new(core::ptr::null_mut()));
    init(executor.spawner());
    loop {
        // Cleared before polling: a wake during or after the poll sets it again, and the
        // tasks woken before are in the run queue that `poll` drains anyway.
        WORK_PENDING.store(false, Ordering::Release);
        // SAFETY: `poll` is only ever called from this loop, in thread mode, never re-entered.
        unsafe { executor.poll() };
        if WORK_PENDING.load(Ordering::Acquire) {
            continue;
        }
        // Idle: spend it on the log, a chunk at a time, re-checking for work in between.
        if uart::drain() {
            continue;
        }
        cortex_m::interrupt::free(|_| {
            if !WORK_PENDING.load(Ordering::Acquire) && !uart::pending() {
                cortex_m::asm::wfi();
            }
        });
    }
}
