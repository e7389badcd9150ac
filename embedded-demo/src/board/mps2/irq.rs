//! The MPS2 interrupt vector table (cortex-m-rt `device` feature: we provide `__INTERRUPTS`)
//! and NVIC interrupt numbers.

use cortex_m::interrupt::InterruptNumber;
use cortex_m::peripheral::NVIC;

/// External interrupts we use (MPS2 AN385/AN386/AN500 numbering, as QEMU wires them).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum Interrupt {
    /// CMSDK APB TIMER0: the free-running time base (wrap interrupt).
    Timer0 = 8,
    /// CMSDK APB TIMER1: the one-shot alarm.
    Timer1 = 9,
    /// LAN9118/LAN9220 Ethernet controller.
    Ethernet = 13,
}

// SAFETY: the numbers are valid external interrupt numbers of the MPS2 NVIC (32 lines).
unsafe impl InterruptNumber for Interrupt {
    fn number(self) -> u16 {
        self as u16
    }
}

/// Number of external interrupt lines QEMU gives the MPS2 machines.
const IRQ_COUNT: usize = 32;

unsafe extern "C" {
    /// cortex-m-rt's default handler (spins; HardFault has our printing handler).
    fn DefaultHandler();
}

extern "C" fn timer0_handler() {
    super::time::on_timer0_interrupt();
}

extern "C" fn timer1_handler() {
    super::time::on_timer1_interrupt();
}

extern "C" fn ethernet_handler() {
    super::lan9118::on_interrupt();
}

type Handler = unsafe extern "C" fn();

/// The device part of the vector table, placed right after the 16 exception vectors.
#[unsafe(link_section = ".vector_table.interrupts")]
#[unsafe(no_mangle)]
#[used]
static __INTERRUPTS: [Handler; IRQ_COUNT] = {
    let mut v: [Handler; IRQ_COUNT] = [DefaultHandler; IRQ_COUNT];
    v[Interrupt::Timer0 as usize] = timer0_handler;
    v[Interrupt::Timer1 as usize] = timer1_handler;
    v[Interrupt::Ethernet as usize] = ethernet_handler;
    v
};

/// Unmask `irq` in the NVIC.
pub fn enable(irq: Interrupt) {
    NVIC::unpend(irq);
    // SAFETY: the handler for `irq` is in the table above and the driver behind it has been
    // initialised by the caller; unmasking cannot break a critical section because
    // `critical-section-single-core` uses PRIMASK, not the NVIC masks.
    unsafe { NVIC::unmask(irq) };
}

/// Mask every external interrupt (used before halting).
pub fn disable_all() {
    // SAFETY: ICER is write-1-to-disable; writing all ones only masks interrupts.
    unsafe {
        let nvic = &*NVIC::PTR;
        nvic.icer[0].write(u32::MAX);
    }
}
