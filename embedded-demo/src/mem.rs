//! Memory figures for docs/BENCHMARKS.md: stack high-water mark and heap usage.
//!
//! * Stack: [`paint_stack`] fills the top [`STACK_MEASURE`] bytes of the stack area (up to just
//!   below the current frame) with [`PAINT`] at boot. [`stack_hwm`] later scans that window from
//!   the bottom for the first overwritten word. The window is bounded so a report costs a
//!   16 K-word scan instead of the whole RAM (scanning 4 MiB took ~15 ms on QEMU, long enough
//!   to delay SYN-ACKs and trip a 0.5 s stall in slirp). A figure equal to the window size
//!   means "at least that much" (`stack_saturated=1`). A word that happened to be written with
//!   the paint value would be missed, which could only under-report by that word's depth.
//! * Heap: the global allocator is [`CountingHeap`], an `embedded_alloc::LlffHeap` wrapped with
//!   counters of the bytes requested by live allocations (`now`) and their maximum (`peak`).
//!   Allocator bookkeeping/rounding is reported separately by `used` (the allocator's own view).
//!
//! Read them with [`stats`] or print them with [`log_figures`], which emits one line
//! `mem: stack_hwm=… stack_measured=… stack_saturated=… stack_size=… heap_peak=… heap_peak_all=… heap_now=… heap_used=… heap_size=… heap_fail=…`.

use core::alloc::{GlobalAlloc, Layout};
use core::mem::MaybeUninit;
use core::sync::atomic::{AtomicUsize, Ordering};

use embedded_alloc::LlffHeap;

/// The word written over the free stack at boot.
pub const PAINT: u32 = 0xC0DE_57AC;
/// Size of the painted (measured) window at the top of the stack.
pub const STACK_MEASURE: usize = 64 * 1024;
/// Bytes below the stack pointer of [`paint_stack`] that are left unpainted (its own calls).
const PAINT_MARGIN: usize = 256;

/// Heap size in bytes (chosen by the board).
pub const HEAP_SIZE: usize = crate::board::HEAP_SIZE;

unsafe extern "C" {
    // cortex-m-rt's link.x: the stack grows down from `_stack_start` to `_stack_end`
    // (which is the end of `.bss`/`.uninit`, i.e. our static heap is below it).
    static _stack_start: u32;
    static _stack_end: u32;
}

/// Painted range `[PAINTED_BOTTOM, PAINTED_TOP)` (top 0 = not painted).
static PAINTED_TOP: AtomicUsize = AtomicUsize::new(0);
static PAINTED_BOTTOM: AtomicUsize = AtomicUsize::new(0);

fn stack_top() -> usize {
    // Only the address of the linker symbol is taken, never its contents.
    (&raw const _stack_start) as usize
}

fn stack_bottom() -> usize {
    (&raw const _stack_end) as usize
}

/// Size of the stack area in bytes (all RAM above the statics).
pub fn stack_size() -> usize {
    stack_top() - stack_bottom()
}

/// Fill the measured stack window with [`PAINT`]. Call first thing in `main`, before
/// interrupts are on.
#[inline(never)]
pub fn paint_stack() {
    let sp = cortex_m::register::msp::read() as usize;
    let top = sp.saturating_sub(PAINT_MARGIN) & !3;
    let bottom = (stack_top()
        .saturating_sub(STACK_MEASURE)
        .max(stack_bottom())
        + 3)
        & !3;
    let mut p = bottom;
    while p < top {
        // SAFETY: `p` lies in the stack area between the end of the statics and the current
        // stack pointer minus a margin: RAM that no live object occupies yet. Interrupts are
        // not enabled at this point, so nothing else pushes a frame there concurrently.
        unsafe { core::ptr::write_volatile(p as *mut u32, PAINT) };
        p += 4;
    }
    PAINTED_BOTTOM.store(bottom, Ordering::Relaxed);
    PAINTED_TOP.store(top, Ordering::Relaxed);
}

/// Deepest stack use since boot in bytes (saturates at the measured window), or `None` if
/// the stack was not painted.
pub fn stack_hwm() -> Option<usize> {
    let painted_top = PAINTED_TOP.load(Ordering::Relaxed);
    if painted_top == 0 {
        return None;
    }
    let mut p = PAINTED_BOTTOM.load(Ordering::Relaxed);
    // SAFETY: reads of RAM words inside the stack area; words above the current stack pointer
    // may be live frames, which we only read, never write.
    while p < painted_top && unsafe { core::ptr::read_volatile(p as *const u32) } == PAINT {
        p += 4;
    }
    Some(stack_top() - p)
}

/// A global allocator that counts the bytes of live allocations and their peak.
pub struct CountingHeap {
    inner: LlffHeap,
    now: AtomicUsize,
    peak: AtomicUsize,
    peak_all: AtomicUsize,
    failures: AtomicUsize,
}

impl CountingHeap {
    const fn new() -> Self {
        Self {
            inner: LlffHeap::empty(),
            now: AtomicUsize::new(0),
            peak: AtomicUsize::new(0),
            peak_all: AtomicUsize::new(0),
            failures: AtomicUsize::new(0),
        }
    }
}

// SAFETY: every call is forwarded unchanged to `LlffHeap`, which upholds the `GlobalAlloc`
// contract; the wrapper only updates counters.
unsafe impl GlobalAlloc for CountingHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: the caller upholds `GlobalAlloc::alloc`'s contract, which we pass on.
        let p = unsafe { self.inner.alloc(layout) };
        if p.is_null() {
            self.failures.fetch_add(1, Ordering::Relaxed);
        } else {
            let now = self.now.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            self.peak.fetch_max(now, Ordering::Relaxed);
            self.peak_all.fetch_max(now, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller upholds `GlobalAlloc::dealloc`'s contract, which we pass on.
        unsafe { self.inner.dealloc(ptr, layout) };
        self.now.fetch_sub(layout.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static HEAP: CountingHeap = CountingHeap::new();

/// Hand the heap memory to the allocator. Call once at boot, before anything allocates.
pub fn init_heap() {
    static mut HEAP_MEM: [MaybeUninit<u8>; HEAP_SIZE] = [MaybeUninit::uninit(); HEAP_SIZE];
    static DONE: AtomicUsize = AtomicUsize::new(0);
    if DONE.swap(1, Ordering::AcqRel) != 0 {
        return;
    }
    // SAFETY: `HEAP_MEM` is only ever touched here, once (guarded by `DONE`); the allocator
    // becomes the sole owner of that memory for the rest of the program.
    unsafe { HEAP.inner.init((&raw mut HEAP_MEM) as usize, HEAP_SIZE) };
}

/// Bytes the allocator has free (possibly fragmented).
pub fn heap_free() -> usize {
    HEAP.inner.free()
}

/// Start a new peak measurement from the current heap use (e.g. before a benchmark phase).
pub fn reset_heap_peak() {
    HEAP.peak
        .store(HEAP.now.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// A snapshot of the memory figures.
#[derive(Clone, Copy, Debug)]
pub struct MemStats {
    /// Deepest stack use since boot, in bytes (0 if the stack was not painted).
    pub stack_hwm: usize,
    /// Size of the measured window; `stack_hwm` cannot report more.
    pub stack_measured: usize,
    /// `stack_hwm` reached the bottom of the window: the real figure may be larger.
    pub stack_saturated: bool,
    /// Size of the stack area, in bytes.
    pub stack_size: usize,
    /// Maximum of the bytes requested by simultaneously live allocations since the last
    /// [`reset_heap_peak`].
    pub heap_peak: usize,
    /// The same maximum since boot (after the self-test).
    pub heap_peak_all: usize,
    /// Bytes requested by live allocations now.
    pub heap_now: usize,
    /// Bytes the allocator considers used now (includes its rounding and bookkeeping).
    pub heap_used: usize,
    /// Size of the heap, in bytes.
    pub heap_size: usize,
    /// Number of allocation requests that failed.
    pub heap_fail: usize,
}

/// Current memory figures.
pub fn stats() -> MemStats {
    let hwm = stack_hwm().unwrap_or(0);
    let measured = stack_top() - PAINTED_BOTTOM.load(Ordering::Relaxed);
    MemStats {
        stack_hwm: hwm,
        stack_measured: measured,
        stack_saturated: hwm >= measured,
        stack_size: stack_size(),
        heap_peak: HEAP.peak.load(Ordering::Relaxed),
        heap_peak_all: HEAP.peak_all.load(Ordering::Relaxed),
        heap_now: HEAP.now.load(Ordering::Relaxed),
        heap_used: HEAP.inner.used(),
        heap_size: HEAP_SIZE,
        heap_fail: HEAP.failures.load(Ordering::Relaxed),
    }
}

/// Print the memory figures as one `mem: …` line.
pub fn log_figures() {
    let s = stats();
    info!(
        "mem: stack_hwm={} stack_measured={} stack_saturated={} stack_size={} heap_peak={} heap_peak_all={} heap_now={} heap_used={} heap_size={} heap_fail={}",
        s.stack_hwm,
        s.stack_measured,
        u8::from(s.stack_saturated),
        s.stack_size,
        s.heap_peak,
        s.heap_peak_all,
        s.heap_now,
        s.heap_used,
        s.heap_size,
        s.heap_fail
    );
}

/// Check that the heap and its counters work: allocate, check the counters, free, check again.
/// Resets the peak afterwards so the self-test does not show up in later figures.
pub fn self_test() -> Result<(), &'static str> {
    const N: usize = 1000;
    let before = HEAP.now.load(Ordering::Relaxed);
    let mut v: alloc::vec::Vec<u8> = alloc::vec::Vec::new();
    v.try_reserve_exact(N)
        .map_err(|_| "heap: allocation of 1000 bytes failed")?;
    v.resize(N, 0xA5);
    let during = HEAP.now.load(Ordering::Relaxed);
    let peak = HEAP.peak.load(Ordering::Relaxed);
    let ok_during = during == before + N && peak >= during && v.iter().all(|&b| b == 0xA5);
    drop(v);
    let after = HEAP.now.load(Ordering::Relaxed);
    reset_heap_peak();
    HEAP.peak_all
        .store(HEAP.now.load(Ordering::Relaxed), Ordering::Relaxed);
    if !ok_during {
        return Err("heap: counters wrong while allocated");
    }
    if after != before {
        return Err("heap: counters wrong after free");
    }
    Ok(())
}
