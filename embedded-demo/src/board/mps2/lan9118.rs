//! `embassy-net-driver` for the SMSC LAN9118 (and its successor LAN9220) as found on MPS2.
//!
//! * RX is interrupt driven: the ISR masks the controller's interrupts and wakes the network
//!   runner; `receive` pops frames from the RX FIFOs and re-arms the RX-status interrupt when
//!   there is nothing left (re-checking afterwards, which closes the race with a frame that
//!   arrives in between).
//! * TX writes the frame into the TX data FIFO (one segment, two command words), then drains
//!   the TX status FIFO. There is no TX-space interrupt: if the FIFO lacks room for a full
//!   frame, `transmit` returns `None` and asks to be polled again (QEMU sends synchronously,
//!   so this never happens there).
//! * The link state follows the PHY: its link-down / auto-negotiation-complete interrupts reach
//!   us through `INT_STS.PHY_INT`; `link_state` then re-reads BMSR (QEMU: `set_link` in the
//!   monitor toggles it).
//! * Optionally ([`Lan9118::set_arp_keepalive`]) it sends an ARP request for the gateway on
//!   link up and every 30 s while the link is up. The gateway learns our address from the
//!   request and its reply refreshes smoltcp's neighbor cache (entries expire after 60 s).
//!   Under QEMU slirp this removes ~0.5 s stalls: without an entry for the guest, slirp drops
//!   the SYN it forwards and retransmits it 0.5 s later; without an entry for the gateway,
//!   smoltcp delays the SYN-ACK for an ARP round trip and slirp then holds the client's first
//!   data until its next 0.5 s timer. (Observed in packet captures with `filter-dump`.)
//! * The MAC address is the one the controller loaded from its EEPROM at reset (QEMU models
//!   the EEPROM with the `-nic …,mac=` address); without an EEPROM a fixed locally
//!   administered address is programmed.
//!
//! Register semantics: SMSC LAN9118 datasheet; checked against QEMU's `hw/net/lan9118.c`.

use core::future::Future;
use core::pin::pin;
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use core::task::Context;

use embassy_net_driver::{Capabilities, HardwareAddress, LinkState};
use embassy_sync::waitqueue::AtomicWaker;
use embassy_time::{Duration, Instant, Timer};
use static_cell::ConstStaticCell;

use super::mmio::Mmio;

// System control and status registers (offsets from the base).
const RX_DATA_FIFO: usize = 0x00;
const TX_DATA_FIFO: usize = 0x20;
const RX_STATUS_FIFO: usize = 0x40;
const TX_STATUS_FIFO: usize = 0x48;
const ID_REV: usize = 0x50;
const IRQ_CFG: usize = 0x54;
const INT_STS: usize = 0x58;
const INT_EN: usize = 0x5C;
const BYTE_TEST: usize = 0x64;
const RX_CFG: usize = 0x6C;
const TX_CFG: usize = 0x70;
const HW_CFG: usize = 0x74;
const RX_FIFO_INF: usize = 0x7C;
const TX_FIFO_INF: usize = 0x80;
const PMT_CTRL: usize = 0x84;
const MAC_CSR_CMD: usize = 0xA4;
const MAC_CSR_DATA: usize = 0xA8;
const E2P_CMD: usize = 0xB0;

const BYTE_TEST_VALUE: u32 = 0x8765_4321;
const HW_CFG_SRST: u32 = 1 << 0;
const PMT_CTRL_READY: u32 = 1 << 0;
/// IRQ_EN | IRQ_POL (active high) | IRQ_TYPE (push-pull). Without POL|TYPE QEMU drives the
/// line asserted whenever no interrupt is pending: an interrupt storm.
const IRQ_CFG_VALUE: u32 = (1 << 8) | (1 << 4) | (1 << 0);
const INT_RSFL: u32 = 1 << 3;
const INT_PHY: u32 = 1 << 18;
const TX_CFG_TX_ON: u32 = 1 << 1;
const RX_STS_ERROR: u32 = 1 << 15;
const TX_STS_ERROR: u32 = 1 << 15;
const TX_CMD_A_FIRST_SEG: u32 = 1 << 13;
const TX_CMD_A_LAST_SEG: u32 = 1 << 12;
const MAC_CSR_BUSY: u32 = 1 << 31;
const MAC_CSR_READ: u32 = 1 << 30;
const E2P_CMD_BUSY: u32 = 1 << 31;
const E2P_CMD_MAC_LOADED: u32 = 1 << 8;

// MAC CSRs (indirect, through MAC_CSR_CMD/DATA).
const MAC_CR: u32 = 1;
const MAC_ADDRH: u32 = 2;
const MAC_ADDRL: u32 = 3;
const MAC_MII_ACC: u32 = 6;
const MAC_MII_DATA: u32 = 7;
const MAC_CR_RXEN: u32 = 1 << 2;
const MAC_CR_TXEN: u32 = 1 << 3;
const MAC_CR_FDPX: u32 = 1 << 20;
const MII_BUSY: u32 = 1 << 0;
const MII_WRITE: u32 = 1 << 1;

// Internal PHY (address 1).
const PHY_ADDR: u32 = 1;
const PHY_BMCR: u32 = 0;
const PHY_BMSR: u32 = 1;
const PHY_ANAR: u32 = 4;
const PHY_ANLPAR: u32 = 5;
const PHY_INT_SRC: u32 = 29;
const PHY_INT_MASK: u32 = 30;
const BMCR_AN_ENABLE: u32 = 1 << 12;
const BMCR_AN_RESTART: u32 = 1 << 9;
const BMSR_LINK: u32 = 1 << 2;
/// 10/100, half/full duplex, 802.3 selector.
const ANAR_ALL: u32 = 0x01E1;
const AN_FULL_DUPLEX: u32 = (1 << 8) | (1 << 6); // 100BASE-TX FD, 10BASE-T FD
const PHY_INT_AN_COMPLETE: u32 = 1 << 6;
const PHY_INT_LINK_DOWN: u32 = 1 << 4;

/// Largest frame we handle, without FCS (no VLAN tags).
pub const MTU: usize = 1514;
/// Frame buffers: MTU + 4 bytes FCS, rounded up to words, with room to spare.
const BUF_LEN: usize = 1536;
/// Frames smoltcp may send in one burst; also caps each socket's advertised TCP window at
/// 6 MSS, so one connection's burst fits QEMU's 10 560-byte RX data FIFO (at most 6 full
/// frames). Several connections together are kept within it by the application's buffer
/// sizes (`RX_WINDOW_BUDGET`).
const MAX_BURST: usize = 6;
/// Locally administered fallback address if no EEPROM supplied one.
const FALLBACK_MAC: [u8; 6] = [0x02, 0x00, 0x4C, 0x41, 0x4E, 0x01];
/// Period of the gateway ARP request (below smoltcp's 60 s neighbor lifetime).
pub const ARP_KEEPALIVE_PERIOD: Duration = Duration::from_secs(30);
/// An ARP frame, padded to the Ethernet minimum (without FCS).
const ARP_FRAME_LEN: usize = 60;
/// Busy-wait bound for register handshakes (each iteration is a bus read).
const SPIN_LIMIT: u32 = 1_000_000;

static WAKER: AtomicWaker = AtomicWaker::new();
/// Register base once the driver is initialised (0 before): read by the ISR.
static BASE: AtomicUsize = AtomicUsize::new(0);
/// Set by the ISR when the PHY raised an interrupt; consumed by `link_state`.
static PHY_EVENT: AtomicBool = AtomicBool::new(false);

/// Why the controller could not be brought up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum InitError {
    /// BYTE_TEST did not read 0x87654321: no LAN9118-family chip at this address.
    NotPresent {
        /// What BYTE_TEST read.
        byte_test: u32,
    },
    /// A register handshake did not complete (which one).
    Timeout(&'static str),
}

/// Word-aligned frame buffers, kept in a static (not in the driver value) so that moving the
/// driver around at boot does not copy 3 KiB over the stack.
#[repr(C, align(4))]
struct Buffers {
    rx: [u8; BUF_LEN],
    tx: [u8; BUF_LEN],
}

static BUFFERS: ConstStaticCell<Buffers> = ConstStaticCell::new(Buffers {
    rx: [0; BUF_LEN],
    tx: [0; BUF_LEN],
});

/// The LAN9118 driver. Create it with [`Lan9118::new`], then unmask its NVIC line.
pub struct Lan9118 {
    regs: Mmio,
    mac: [u8; 6],
    chip_id: u32,
    link_up: bool,
    full_duplex: bool,
    tx_tag: u16,
    /// `(our IPv4, gateway IPv4)` for the ARP keepalive, and when it is next due.
    arp_keepalive: Option<([u8; 4], [u8; 4])>,
    next_arp: Instant,
    bufs: &'static mut Buffers,
}

fn spin_until(what: &'static str, mut done: impl FnMut() -> bool) -> Result<(), InitError> {
    for _ in 0..SPIN_LIMIT {
        if done() {
            return Ok(());
        }
    }
    Err(InitError::Timeout(what))
}

impl Lan9118 {
    /// Probe, reset and configure the controller at `base`. Can be called once.
    ///
    /// # Safety
    /// `base` must be the register block of a LAN9118-family controller (or unmapped-but-
    /// harmless memory, which the BYTE_TEST probe rejects), used by nothing else.
    pub unsafe fn new(base: usize) -> Result<Self, InitError> {
        // SAFETY: per this function's contract.
        let regs = unsafe { Mmio::new(base) };
        let byte_test = regs.read(BYTE_TEST);
        if byte_test != BYTE_TEST_VALUE {
            return Err(InitError::NotPresent { byte_test });
        }
        let chip_id = regs.read(ID_REV);

        spin_until("PMT_CTRL.READY before reset", || {
            regs.read(PMT_CTRL) & PMT_CTRL_READY != 0
        })?;
        regs.write(HW_CFG, HW_CFG_SRST);
        spin_until("HW_CFG.SRST", || regs.read(HW_CFG) & HW_CFG_SRST == 0)?;
        spin_until("PMT_CTRL.READY after reset", || {
            regs.read(PMT_CTRL) & PMT_CTRL_READY != 0
        })?;

        // Interrupts: all masked and cleared, then the pin configured before the NVIC line
        // is unmasked by the caller.
        regs.write(INT_EN, 0);
        regs.write(INT_STS, u32::MAX);
        regs.write(IRQ_CFG, IRQ_CFG_VALUE);

        let mut dev = Self {
            regs,
            mac: FALLBACK_MAC,
            chip_id,
            link_up: false,
            full_duplex: true,
            tx_tag: 0,
            arp_keepalive: None,
            next_arp: Instant::from_ticks(0),
            bufs: BUFFERS.take(),
        };

        // The EEPROM load starts with the reset; the MAC CSRs hold its address when done.
        spin_until("E2P_CMD busy", || regs.read(E2P_CMD) & E2P_CMD_BUSY == 0)?;
        if regs.read(E2P_CMD) & E2P_CMD_MAC_LOADED != 0 {
            let lo = dev.mac_read(MAC_ADDRL)?.to_le_bytes();
            let hi = dev.mac_read(MAC_ADDRH)?.to_le_bytes();
            dev.mac = [lo[0], lo[1], lo[2], lo[3], hi[0], hi[1]];
        } else {
            let m = dev.mac;
            dev.mac_write(MAC_ADDRL, u32::from_le_bytes([m[0], m[1], m[2], m[3]]))?;
            dev.mac_write(MAC_ADDRH, u32::from(m[4]) | (u32::from(m[5]) << 8))?;
        }

        // PHY: advertise everything, (re)start auto-negotiation, interrupt on link changes.
        dev.phy_write(PHY_ANAR, ANAR_ALL)?;
        dev.phy_write(PHY_BMCR, BMCR_AN_ENABLE | BMCR_AN_RESTART)?;
        dev.phy_write(PHY_INT_MASK, PHY_INT_AN_COMPLETE | PHY_INT_LINK_DOWN)?;
        let _ = dev.phy_read(PHY_INT_SRC)?; // clear what reset left pending
        regs.write(INT_STS, INT_PHY);

        // FIFOs: RX without offset or end padding, TX on; then the MAC.
        regs.write(RX_CFG, 0);
        regs.write(TX_CFG, TX_CFG_TX_ON);
        dev.update_link()?;
        dev.write_mac_cr()?;

        BASE.store(base, Ordering::Release);
        Ok(dev)
    }

    /// The station address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// ID_REV (0x0118_xxxx on QEMU's LAN9118, 0x9220_xxxx on a LAN9220).
    pub fn chip_id(&self) -> u32 {
        self.chip_id
    }

    /// Link state as last read from the PHY.
    pub fn link_up(&self) -> bool {
        self.link_up
    }

    /// Send an ARP request for `gateway` (from `ip`) now, after every link-up, and every
    /// [`ARP_KEEPALIVE_PERIOD`] while the link is up. For statically configured addresses.
    pub fn set_arp_keepalive(&mut self, ip: [u8; 4], gateway: [u8; 4]) {
        self.arp_keepalive = Some((ip, gateway));
        self.next_arp = Instant::from_ticks(0);
    }

    /// Send the keepalive ARP request if it is due, and make sure the runner is woken when
    /// the next one is.
    fn arp_keepalive(&mut self, cx: &mut Context) {
        let Some((ip, gateway)) = self.arp_keepalive else {
            return;
        };
        if !self.link_up {
            return;
        }
        let now = Instant::now();
        if now >= self.next_arp && self.tx_free() >= tx_fifo_need(ARP_FRAME_LEN) {
            let first = self.next_arp == Instant::from_ticks(0);
            self.next_arp = now + ARP_KEEPALIVE_PERIOD;
            let f = &mut self.bufs.tx[..ARP_FRAME_LEN];
            f.fill(0);
            f[0..6].copy_from_slice(&[0xFF; 6]); // broadcast
            f[6..12].copy_from_slice(&self.mac);
            f[12..14].copy_from_slice(&[0x08, 0x06]); // ARP
            f[14..22].copy_from_slice(&[0x00, 0x01, 0x08, 0x00, 6, 4, 0x00, 0x01]); // Ethernet/IPv4, request
            f[22..28].copy_from_slice(&self.mac); // sender hardware address
            f[28..32].copy_from_slice(&ip); // sender protocol address
            f[38..42].copy_from_slice(&gateway); // target protocol address
            push_frame(self.regs, &self.bufs.tx, ARP_FRAME_LEN, &mut self.tx_tag);
            if first {
                info!(
                    "lan9118: ARP keepalive for gateway {}.{}.{}.{} every {} s",
                    gateway[0],
                    gateway[1],
                    gateway[2],
                    gateway[3],
                    ARP_KEEPALIVE_PERIOD.as_secs()
                );
            }
        }
        // Registers a wake-up of the runner task at `next_arp` (the timer queue keeps the
        // earliest deadline per task, so this does not disturb smoltcp's own timer).
        let timer = pin!(Timer::at(self.next_arp));
        if timer.poll(cx).is_ready() {
            cx.waker().wake_by_ref();
        }
    }

    fn write_mac_cr(&mut self) -> Result<(), InitError> {
        // Clears the reset default PRMS (promiscuous): perfect unicast filter plus broadcast.
        let duplex = if self.full_duplex { MAC_CR_FDPX } else { 0 };
        self.mac_write(MAC_CR, MAC_CR_TXEN | MAC_CR_RXEN | duplex)
    }

    fn mac_wait(&self) -> Result<(), InitError> {
        let regs = self.regs;
        spin_until("MAC_CSR_CMD busy", || {
            regs.read(MAC_CSR_CMD) & MAC_CSR_BUSY == 0
        })
    }

    fn mac_read(&self, index: u32) -> Result<u32, InitError> {
        self.mac_wait()?;
        self.regs
            .write(MAC_CSR_CMD, MAC_CSR_BUSY | MAC_CSR_READ | index);
        self.mac_wait()?;
        Ok(self.regs.read(MAC_CSR_DATA))
    }

    fn mac_write(&self, index: u32, value: u32) -> Result<(), InitError> {
        self.mac_wait()?;
        self.regs.write(MAC_CSR_DATA, value);
        self.regs.write(MAC_CSR_CMD, MAC_CSR_BUSY | index);
        self.mac_wait()
    }

    fn mii_wait(&self) -> Result<(), InitError> {
        for _ in 0..SPIN_LIMIT {
            if self.mac_read(MAC_MII_ACC)? & MII_BUSY == 0 {
                return Ok(());
            }
        }
        Err(InitError::Timeout("MII_ACC busy"))
    }

    fn phy_read(&self, reg: u32) -> Result<u32, InitError> {
        self.mii_wait()?;
        self.mac_write(MAC_MII_ACC, (PHY_ADDR << 11) | (reg << 6) | MII_BUSY)?;
        self.mii_wait()?;
        Ok(self.mac_read(MAC_MII_DATA)? & 0xFFFF)
    }

    fn phy_write(&self, reg: u32, value: u32) -> Result<(), InitError> {
        self.mii_wait()?;
        self.mac_write(MAC_MII_DATA, value)?;
        self.mac_write(
            MAC_MII_ACC,
            (PHY_ADDR << 11) | (reg << 6) | MII_WRITE | MII_BUSY,
        )?;
        self.mii_wait()
    }

    /// Re-read the link from the PHY; on link up, follow the negotiated duplex.
    /// Returns whether the MAC configuration changed.
    fn update_link(&mut self) -> Result<bool, InitError> {
        // BMSR.link is latched low: the first read reports a drop since the last read.
        let _ = self.phy_read(PHY_BMSR)?;
        self.link_up = self.phy_read(PHY_BMSR)? & BMSR_LINK != 0;
        if self.link_up {
            let common = self.phy_read(PHY_ANAR)? & self.phy_read(PHY_ANLPAR)?;
            let full = common & AN_FULL_DUPLEX != 0;
            if full != self.full_duplex {
                self.full_duplex = full;
                return Ok(true);
            }
        }
        Ok(false)
    }

    fn frames_pending(&self) -> u32 {
        (self.regs.read(RX_FIFO_INF) >> 16) & 0xFF
    }

    /// Pop the next good frame into the RX buffer and return its length without FCS.
    /// Frames with errors or impossible lengths are read out and dropped.
    fn pop_frame(&mut self) -> Option<usize> {
        while self.frames_pending() > 0 {
            let status = self.regs.read(RX_STATUS_FIFO);
            let len = ((status >> 16) & 0x3FFF) as usize; // includes the 4-byte FCS
            let words = len.div_ceil(4);
            if status & RX_STS_ERROR != 0 || len < 14 + 4 || words * 4 > BUF_LEN {
                // Read the words out rather than using RX_DP_CTRL fast-forward, whose QEMU
                // model does not release the FIFO space.
                for _ in 0..words {
                    let _ = self.regs.read(RX_DATA_FIFO);
                }
                warn!("lan9118: dropped rx frame, status={:#010x}", status);
                continue;
            }
            for chunk in self.bufs.rx[..words * 4].chunks_exact_mut(4) {
                chunk.copy_from_slice(&self.regs.read(RX_DATA_FIFO).to_le_bytes());
            }
            return Some(len - 4);
        }
        None
    }

    /// Register for a wake-up and unmask the RX-status (and, unless one is still to be
    /// handled, the PHY) interrupt. The ISR masks them again.
    fn arm(&self, cx: &mut Context) {
        WAKER.register(cx.waker());
        self.regs.write(INT_STS, INT_RSFL);
        let phy = if PHY_EVENT.load(Ordering::Acquire) {
            0
        } else {
            INT_PHY
        };
        self.regs.write(INT_EN, INT_RSFL | phy);
    }

    fn tx_free(&self) -> usize {
        (self.regs.read(TX_FIFO_INF) & 0xFFFF) as usize
    }
}

/// Interrupt handler (NVIC line 13).
pub(super) fn on_interrupt() {
    let base = BASE.load(Ordering::Acquire);
    if base == 0 {
        return;
    }
    // SAFETY: `BASE` is only set by `Lan9118::new` after it verified the controller there.
    let regs = unsafe { Mmio::new(base) };
    if regs.read(INT_STS) & INT_PHY != 0 {
        PHY_EVENT.store(true, Ordering::Release);
    }
    regs.write(INT_EN, 0);
    WAKER.wake();
}

/// A received frame (already copied out of the RX FIFO).
pub struct RxToken<'a> {
    frame: &'a mut [u8],
}

impl embassy_net_driver::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, f: F) -> R {
        f(self.frame)
    }
}

/// Permission to send one frame.
pub struct TxToken<'a> {
    regs: Mmio,
    buf: &'a mut [u8; BUF_LEN],
    tag: &'a mut u16,
}

/// Bytes of TX FIFO a frame of `len` bytes needs: two command words plus the data words.
fn tx_fifo_need(len: usize) -> usize {
    8 + len.div_ceil(4) * 4
}

/// Write one frame (`buf[..len]`) into the TX data FIFO and drain the TX status FIFO.
fn push_frame(regs: Mmio, buf: &[u8; BUF_LEN], len: usize, tag: &mut u16) {
    // Normally the caller checked the space already; the token handed out with a received
    // frame was not, so wait here (real hardware drains a full frame in ~120 µs).
    let need = tx_fifo_need(len);
    while ((regs.read(TX_FIFO_INF) & 0xFFFF) as usize) < need {}

    *tag = tag.wrapping_add(1);
    let len32 = len as u32;
    regs.write(TX_DATA_FIFO, TX_CMD_A_FIRST_SEG | TX_CMD_A_LAST_SEG | len32);
    regs.write(TX_DATA_FIFO, (u32::from(*tag) << 16) | len32);
    for chunk in buf[..len.div_ceil(4) * 4].chunks_exact(4) {
        regs.write(
            TX_DATA_FIFO,
            u32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]),
        );
    }
    // Drain the status FIFO so it never fills (QEMU keeps 512 entries).
    while (regs.read(TX_FIFO_INF) >> 16) & 0xFF != 0 {
        let status = regs.read(TX_STATUS_FIFO);
        if status & TX_STS_ERROR != 0 {
            warn!("lan9118: tx error, status={:#010x}", status);
        }
    }
}

impl embassy_net_driver::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let len = len.min(MTU);
        let result = f(&mut self.buf[..len]);
        push_frame(self.regs, self.buf, len, self.tag);
        result
    }
}

impl embassy_net_driver::Driver for Lan9118 {
    type RxToken<'a> = RxToken<'a>;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, cx: &mut Context) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let len = match self.pop_frame() {
            Some(len) => len,
            None => {
                self.arm(cx);
                // A frame that arrived between the check and the re-arm left RSFL cleared.
                self.pop_frame()?
            }
        };
        let Buffers { rx, tx } = &mut *self.bufs;
        Some((
            RxToken {
                frame: &mut rx[..len],
            },
            TxToken {
                regs: self.regs,
                buf: tx,
                tag: &mut self.tx_tag,
            },
        ))
    }

    fn transmit(&mut self, cx: &mut Context) -> Option<TxToken<'_>> {
        if self.tx_free() < tx_fifo_need(MTU) {
            cx.waker().wake_by_ref();
            return None;
        }
        Some(TxToken {
            regs: self.regs,
            buf: &mut self.bufs.tx,
            tag: &mut self.tx_tag,
        })
    }

    fn link_state(&mut self, cx: &mut Context) -> LinkState {
        if PHY_EVENT.swap(false, Ordering::AcqRel) {
            let was_up = self.link_up;
            // Reading the PHY's interrupt source clears it (and with it INT_STS.PHY_INT).
            let result = self.phy_read(PHY_INT_SRC).and_then(|_| self.update_link());
            self.regs.write(INT_STS, INT_PHY);
            match result {
                Ok(duplex_changed) => {
                    if duplex_changed && let Err(e) = self.write_mac_cr() {
                        error!("lan9118: MAC_CR update failed: {:?}", e);
                    }
                    if !was_up && self.link_up {
                        self.next_arp = Instant::from_ticks(0); // right away
                    }
                    if was_up != self.link_up {
                        info!(
                            "lan9118: link {} ({} duplex)",
                            if self.link_up { "up" } else { "down" },
                            if self.full_duplex { "full" } else { "half" }
                        );
                    }
                }
                Err(e) => error!("lan9118: PHY access failed: {:?}", e),
            }
        }
        self.arp_keepalive(cx);
        self.arm(cx);
        if self.frames_pending() > 0 {
            cx.waker().wake_by_ref();
        }
        if self.link_up {
            LinkState::Up
        } else {
            LinkState::Down
        }
    }

    fn capabilities(&self) -> Capabilities {
        let mut caps = Capabilities::default();
        caps.max_transmission_unit = MTU;
        caps.max_burst_size = Some(MAX_BURST);
        caps
    }

    fn hardware_address(&self) -> HardwareAddress {
        HardwareAddress::Ethernet(self.mac)
    }
}
