//! NUCLEO-H743ZI (STM32H743ZI, LAN8742A PHY on RMII), logging with defmt over RTT.
//!
//! Clocks: HSI 64 MHz → PLL1 (÷4 ×50 ÷2) = 400 MHz core (VOS1), AHB 200 MHz, APBs 100 MHz;
//! HSI48 for the RNG. Ethernet: RMII pins of the Nucleo-144 (REF_CLK PA1, CRS_DV PA7,
//! RXD0 PC4, RXD1 PC5, TXD0 PG13, TXD1 PB13, TX_EN PG11, MDIO PA2, MDC PC1), IPv4 by DHCP,
//! MAC address derived from the chip's unique ID (locally administered). Randomness: the
//! hardware TRNG. `.bss` (incl. the Ethernet DMA buffers) lands in AXI SRAM, which the
//! Ethernet DMA can reach; the D-cache stays off.
//!
//! Built but not run here (no board on the CI machine).

use cortex_m_rt::{ExceptionFrame, exception};
use defmt_rtt as _;
use embassy_executor::{Executor, Spawner};
use embassy_net::{Runner, Stack, StackResources};
use embassy_stm32::eth::{self, Ethernet, GenericPhy, PacketQueue, Sma};
use embassy_stm32::peripherals::{ETH, ETH_SMA, RNG};
use embassy_stm32::{Config, bind_interrupts, rng};
use panic_probe as _;
use static_cell::{ConstStaticCell, StaticCell};

#[cfg(feature = "insecure-test-rng")]
compile_error!("`insecure-test-rng` is for the MPS2 (QEMU) board only; the Nucleo has a TRNG");

bind_interrupts!(struct Irqs {
    ETH => eth::InterruptHandler;
    RNG => rng::InterruptHandler<RNG>;
});

/// The hardware TRNG.
pub type BoardRng = rng::Rng<'static, RNG>;

/// The board's name.
pub const NAME: &str = "NUCLEO-H743ZI";

/// Heap for the global allocator (TLS sessions need ~36 KB each with rustls).
pub const HEAP_SIZE: usize = 128 * 1024;

/// Sum of the TCP receive windows of all sockets (see [`crate::app::TCP_RX_BUF`]): about what
/// the 4 RX DMA descriptors hold while the executor is busy (e.g. in a TLS signature), so a burst
/// filling every window is not dropped. 4 descriptors (not 8) keep the firmware within 160 KiB of
/// RAM with one VNC and one NBD session live. An estimate, not measured on hardware.
pub const RX_WINDOW_BUDGET: usize = 4 * 1460;

/// Application sockets plus the DHCP socket.
const SOCKETS: usize = crate::app::SOCKET_COUNT + 1;

type Device = Ethernet<'static, ETH, GenericPhy<Sma<'static, ETH_SMA>>>;

#[embassy_executor::task]
async fn net_task(mut runner: Runner<'static, Device>) -> ! {
    runner.run().await
}

fn rcc_config() -> Config {
    use embassy_stm32::rcc::{
        AHBPrescaler, APBPrescaler, HSIPrescaler, Pll, PllDiv, PllMul, PllPreDiv, PllSource,
        Sysclk, VoltageScale,
    };
    let mut config = Config::default();
    config.rcc.hsi = Some(HSIPrescaler::DIV1);
    config.rcc.csi = true;
    config.rcc.hsi48 = Some(Default::default());
    config.rcc.pll1 = Some(Pll {
        source: PllSource::HSI,
        prediv: PllPreDiv::DIV4,
        mul: PllMul::MUL50,
        fracn: None,
        divp: Some(PllDiv::DIV2),
        divq: None,
        divr: None,
    });
    config.rcc.sys = Sysclk::PLL1_P;
    config.rcc.ahb_pre = AHBPrescaler::DIV2;
    config.rcc.apb1_pre = APBPrescaler::DIV2;
    config.rcc.apb2_pre = APBPrescaler::DIV2;
    config.rcc.apb3_pre = APBPrescaler::DIV2;
    config.rcc.apb4_pre = APBPrescaler::DIV2;
    config.rcc.voltage_scale = VoltageScale::Scale1;
    config
}

/// A stable, locally administered unicast MAC from the 96-bit unique device ID.
fn mac_from_uid(uid: [u8; 12]) -> [u8; 6] {
    let mut mac = [0x02, 0, 0, 0, 0, 0];
    for (i, b) in uid.iter().enumerate() {
        mac[1 + i % 5] ^= b.rotate_left((i / 5) as u32);
    }
    mac
}

#[exception]
unsafe fn HardFault(ef: &ExceptionFrame) -> ! {
    defmt::error!(
        "HARDFAULT pc={=u32:#010x} lr={=u32:#010x} xpsr={=u32:#010x}",
        ef.pc(),
        ef.lr(),
        ef.xpsr()
    );
    loop {
        cortex_m::asm::bkpt();
    }
}

/// Bring up the board and run `app` inside the executor. Never returns.
pub fn run(app: fn(Spawner, Stack<'static>)) -> ! {
    static PACKETS: ConstStaticCell<PacketQueue<2, 4>> = ConstStaticCell::new(PacketQueue::new());
    static RESOURCES: ConstStaticCell<StackResources<SOCKETS>> =
        ConstStaticCell::new(StackResources::new());
    static EXECUTOR: StaticCell<Executor> = StaticCell::new();

    let p = embassy_stm32::init(rcc_config());
    defmt::info!(
        "boot: nucleo-h743zi uid={=str}",
        embassy_stm32::uid::uid_hex()
    );

    let mut rng = rng::Rng::new(p.RNG, Irqs);
    let seed = rng.next_u64();
    crate::rng::install(rng);

    let mac = mac_from_uid(embassy_stm32::uid::uid());
    defmt::info!("eth: mac={=[u8]:02x}", mac[..]);
    let device: Device = Ethernet::new(
        PACKETS.take(),
        p.ETH,
        Irqs,
        p.PA1,  // REF_CLK
        p.PA7,  // CRS_DV
        p.PC4,  // RXD0
        p.PC5,  // RXD1
        p.PG13, // TXD0
        p.PB13, // TXD1
        p.PG11, // TX_EN
        mac,
        p.ETH_SMA,
        p.PA2, // MDIO
        p.PC1, // MDC
    );
    let config = embassy_net::Config::dhcpv4(Default::default());
    let (stack, runner) = embassy_net::new(device, config, RESOURCES.take(), seed);

    EXECUTOR.init(Executor::new()).run(move |spawner| {
        spawner.spawn(net_task(runner).expect("net task spawned twice"));
        app(spawner, stack);
    })
}
