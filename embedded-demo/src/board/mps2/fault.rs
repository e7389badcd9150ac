//! HardFault and panic handlers that print to UART0 and then halt without burning host CPU.

use core::fmt::Write;

use cortex_m_rt::{ExceptionFrame, exception};

use super::irq;
use super::uart::{self, RawUart};

/// System Control Block fault status registers.
const SCB_CFSR: usize = 0xE000_ED28;
const SCB_HFSR: usize = 0xE000_ED2C;
const SCB_MMFAR: usize = 0xE000_ED34;
const SCB_BFAR: usize = 0xE000_ED38;

fn read_scb(addr: usize) -> u32 {
    // SAFETY: architecturally defined, always-present SCB registers of ARMv7-M; reads have
    // no side effects.
    unsafe { core::ptr::read_volatile(addr as *const u32) }
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    // Best effort: if the fault hit while the log ring was being written, this may print a
    // torn record; it still shows what led up to the fault.
    uart::flush_blocking();
    let mut w = RawUart;
    let _ = writeln!(
        w,
        "\nHARDFAULT pc={:#010x} lr={:#010x} xpsr={:#010x} r0={:#010x} r1={:#010x} r2={:#010x} r3={:#010x} r12={:#010x}",
        ef.pc(),
        ef.lr(),
        ef.xpsr(),
        ef.r0(),
        ef.r1(),
        ef.r2(),
        ef.r3(),
        ef.r12()
    );
    let _ = writeln!(
        w,
        "HARDFAULT cfsr={:#010x} hfsr={:#010x} mmfar={:#010x} bfar={:#010x}",
        read_scb(SCB_CFSR),
        read_scb(SCB_HFSR),
        read_scb(SCB_MMFAR),
        read_scb(SCB_BFAR)
    );
    halt()
}

#[panic_handler]
fn panic(info: &core::panic::PanicInfo) -> ! {
    cortex_m::interrupt::disable();
    uart::flush_blocking();
    let _ = writeln!(RawUart, "\nPANIC {}", info);
    halt()
}

/// Stop: mask every interrupt and sleep forever (WFI then never wakes, so QEMU idles).
fn halt() -> ! {
    irq::disable_all();
    loop {
        cortex_m::asm::wfi();
    }
}
