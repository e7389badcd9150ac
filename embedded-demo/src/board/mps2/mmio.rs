//! 32-bit memory-mapped register blocks.

use core::ptr::{read_volatile, write_volatile};

/// A block of 32-bit device registers at a fixed address.
#[derive(Clone, Copy, Debug)]
pub struct Mmio {
    base: usize,
}

impl Mmio {
    /// # Safety
    /// `base` must be the address of a device register block that stays mapped for the whole
    /// program, and every offset later passed to [`Mmio::read`]/[`Mmio::write`] must be a
    /// 32-bit register of that block whose access has no memory-safety side effects.
    pub const unsafe fn new(base: usize) -> Self {
        Self { base }
    }

    /// Read the register at `offset`.
    #[inline(always)]
    pub fn read(self, offset: usize) -> u32 {
        // SAFETY: guaranteed by the contract of `Mmio::new`.
        unsafe { read_volatile((self.base + offset) as *const u32) }
    }

    /// Write the register at `offset`.
    #[inline(always)]
    pub fn write(self, offset: usize, value: u32) {
        // SAFETY: guaranteed by the contract of `Mmio::new`.
        unsafe { write_volatile((self.base + offset) as *mut u32, value) }
    }
}
