//! ARM MPS2 AN500 (Cortex-M7) as emulated by QEMU `-M mps2-an500`; the same image also runs
//! on `mps2-an386` (Cortex-M4F).
//!
//! Hardware used: UART0 (log), TIMER0/TIMER1 (time driver), LAN9118 (Ethernet, base chosen
//! from the SCC ID: 0xA000_0000 on AN500, 0x4020_0000 on AN385/AN386). The network
//! configuration matches QEMU's user-mode (slirp) network: 10.0.2.15/24, gateway 10.0.2.2.

#[cfg(not(feature = "insecure-test-rng"))]
compile_error!(
    "board-mps2 has no hardware random number generator: build it with the feature \
     `insecure-test-rng` (a timer-seeded, NOT secure generator for QEMU CI only)"
);

mod executor;
mod fault;
mod insecure_rng;
mod irq;
mod lan9118;
mod mmio;
mod time;
mod uart;

use embassy_executor::Spawner;
use embassy_net::{Ipv4Address, Ipv4Cidr, Runner, Stack, StackResources, StaticConfigV4};
use heapless::Vec;
use rand_core::RngCore;
use static_cell::ConstStaticCell;

pub use insecure_rng::InsecureTestRng;
use lan9118::Lan9118;

/// The random source of this board: **insecure**, test only (see [`InsecureTestRng`]).
pub type BoardRng = InsecureTestRng;

/// The board's name.
pub const NAME: &str = "MPS2-AN500 (QEMU)";

/// Heap for the global allocator (TLS sessions need ~36 KB each with rustls).
pub const HEAP_SIZE: usize = 128 * 1024;

/// Sum of the TCP receive windows of all sockets (see [`crate::app::TCP_RX_BUF`]). QEMU's
/// LAN9118 RX data FIFO holds 10 560 bytes (at most 6 full-size frames) and slirp delivers a
/// whole window burst before the guest runs again; what does not fit is dropped.
pub const RX_WINDOW_BUDGET: usize = 8 * 1024;

/// SCC (serial configuration controller) ID register: bits [15:4] are the FPGA image number.
const SCC_ID: usize = 0x4002_FFFC;
const LAN9118_BASE_AN500: usize = 0xA000_0000;
const LAN9118_BASE_AN385_AN386: usize = 0x4020_0000;

const SOCKETS: usize = crate::app::SOCKET_COUNT;

fn scc_id() -> u32 {
    // SAFETY: the SCC ID register exists on every MPS2 image; reading it has no side effects.
    unsafe { core::ptr::read_volatile(SCC_ID as *const u32) }
}

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Lan9118>) -> ! {
    runner.run().await
}

/// Bring up the board and run `app` inside the executor. Never returns.
pub fn run(app: fn(Spawner, Stack<'static>)) -> ! {
    static RESOURCES: ConstStaticCell<StackResources<SOCKETS>> =
        ConstStaticCell::new(StackResources::new());

    time::init();
    let t_boot = time::cycles();
    uart::init();
    uart::init_logger();

    let scc = scc_id();
    let image = (scc >> 4) & 0xFFF;
    let base = if image == 0x500 {
        LAN9118_BASE_AN500
    } else {
        LAN9118_BASE_AN385_AN386
    };
    info!(
        "boot: mps2 scc_id={:#010x} (AN{:x}), lan9118 at {:#010x}",
        scc, image, base
    );

    // SAFETY: `base` is the LAN9118 block of this MPS2 image (chosen from the SCC ID above);
    // nothing else accesses it. A wrong guess is caught by the BYTE_TEST probe.
    let mut eth = match unsafe { Lan9118::new(base) } {
        Ok(eth) => eth,
        Err(e) => panic!("lan9118 init failed: {:?}", e),
    };
    let m = eth.mac();
    info!(
        "lan9118: id_rev={:#010x} mac={:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x} link={}",
        eth.chip_id(),
        m[0],
        m[1],
        m[2],
        m[3],
        m[4],
        m[5],
        if eth.link_up() { "up" } else { "down" }
    );
    irq::enable(irq::Interrupt::Ethernet);

    // The only entropy here is host-timing jitter in the emulated counters. Insecure.
    // SAFETY: LAN9118 FREE_RUN (offset 0x9C) is a read-only counter of the verified controller.
    let free_run = unsafe { mmio::Mmio::new(base) }.read(0x9C);
    let mac_word = u64::from_le_bytes([m[0], m[1], m[2], m[3], m[4], m[5], 0, 0]);
    let mut rng = InsecureTestRng::from_seed_material(&[
        t_boot,
        u64::from(free_run),
        mac_word,
        time::cycles(),
    ]);
    let seed = rng.next_u64();
    crate::rng::install(rng);
    warn!("rng: InsecureTestRng (timer-seeded, NOT secure; feature insecure-test-rng)");

    let address = Ipv4Address::new(10, 0, 2, 15);
    let gateway = Ipv4Address::new(10, 0, 2, 2);
    eth.set_arp_keepalive(address.octets(), gateway.octets());
    let config = embassy_net::Config::ipv4_static(StaticConfigV4 {
        address: Ipv4Cidr::new(address, 24),
        gateway: Some(gateway),
        dns_servers: Vec::new(),
    });
    let (stack, runner) = embassy_net::new(eth, config, RESOURCES.take(), seed);

    executor::run(move |spawner| {
        spawner.spawn(net_task(runner).expect("net task spawned twice"));
        app(spawner, stack);
    })
}
