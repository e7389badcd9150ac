//! The board-independent application: the VNC console (:5900, and with the `wss` feature over
//! WebSocket in TLS for browsers on :5700) and the NBD virtual media (:10809) on an `embassy_net::Stack<'static>`, all over TLS
//! from one shared configuration ([`crate::tls`]).
//!
//! Session slots: [`VNC_SESSIONS`] on the VNC port, [`VNC_WS_SESSIONS`] on the WebSocket port,
//! [`NBD_SESSIONS`] on the NBD port; a slot
//! is one listener task with its own static TCP and driver buffers. One console session at a
//! time; NBD has a second slot so a client that opens its next connection before the previous
//! one is closed (kvmio's probe, a quick reconnect) is not refused. At most
//! [`crate::tls::MAX_SESSIONS`] TLS sessions run at once (heap). An accepted connection runs the shared
//! [`crate::driver`] with the service of its port ([`crate::vnc::VncService`],
//! [`crate::nbd::NbdService`]); the firmware holds no protocol logic beyond that glue.
//!
//! Interfaces the services build on:
//! * sockets: one [`TcpSocket`] per session slot, with `'static` buffers from
//!   `ConstStaticCell` (never `StaticCell::init([0; N])`, which builds the array on the stack);
//! * time: `embassy_time::{Instant, Timer, with_timeout}` (the board provides the driver);
//! * randomness: [`crate::rng::fill`] / [`crate::rng::SystemRng`];
//! * memory figures: [`crate::mem::stats`] / [`crate::mem::log_figures`] (printed after every
//!   session and once when listening).

use core::future::{Future, poll_fn};
use core::pin::pin;
use core::sync::atomic::{AtomicUsize, Ordering};
use core::task::Poll;

use embassy_executor::Spawner;
use embassy_net::Stack;
use embassy_net::tcp::{State, TcpSocket};
use embassy_sync::blocking_mutex::raw::CriticalSectionRawMutex;
use embassy_sync::signal::Signal;
use embassy_time::{Duration, Instant, with_timeout};
use static_cell::ConstStaticCell;

use crate::driver::{self, Buffers, DriverError, Summary};
use crate::nbd::NbdService;
use crate::vnc::VncService;

/// The VNC (RFB) port.
pub const VNC_PORT: u16 = 5900;
/// The VNC console over WebSocket in TLS (wss), as kvmio's `--vnc-websocket` default.
pub const VNC_WS_PORT: u16 = 5700;
/// The NBD port.
pub const NBD_PORT: u16 = 10809;
/// Concurrent VNC sessions (listening sockets on the VNC port).
pub const VNC_SESSIONS: usize = 1;
/// Concurrent VNC sessions over wss (none without the `wss` feature).
pub const VNC_WS_SESSIONS: usize = if cfg!(feature = "wss") { 1 } else { 0 };
/// Concurrent NBD sessions (listening sockets on the NBD port).
pub const NBD_SESSIONS: usize = 2;
/// TCP sockets the application uses; the board sizes `StackResources` with it.
pub const SOCKET_COUNT: usize = VNC_SESSIONS + VNC_WS_SESSIONS + NBD_SESSIONS;

/// `size_of` the wss service, for the `mem:` line (0 without the feature).
#[cfg(feature = "wss")]
const WS_SERVICE_SIZE: usize = core::mem::size_of::<crate::ws::WsVncService>();
#[cfg(not(feature = "wss"))]
const WS_SERVICE_SIZE: usize = 0;

/// The port of session slot `slot` and the slot's index among that port's slots (the wss
/// slots come after the VNC port's in the desktop's numbering: [`crate::desktop::SLOTS`]).
const fn slot_port(slot: usize) -> (u16, usize) {
    if slot < VNC_SESSIONS {
        (VNC_PORT, slot)
    } else if slot < VNC_SESSIONS + VNC_WS_SESSIONS {
        (VNC_WS_PORT, slot - VNC_SESSIONS)
    } else {
        (NBD_PORT, slot - VNC_SESSIONS - VNC_WS_SESSIONS)
    }
}
/// Receive buffer per socket. The receive buffer is the TCP window a socket advertises, and
/// all windows together must fit what the board's NIC can hold in one burst
/// ([`crate::board::RX_WINDOW_BUDGET`]); otherwise concurrent sessions overflow it, frames are
/// dropped and TCP stalls in retransmission timeouts (measured on MPS2: 4 sessions with 8 KiB
/// windows took 0.6–6.5 s for 256 KiB each; with 2 KiB windows 0.14 s and no drops, and one
/// session still echoes several MiB/s).
pub const TCP_RX_BUF: usize = crate::board::RX_WINDOW_BUDGET / SOCKET_COUNT;
const _: () = assert!(
    TCP_RX_BUF >= 1024,
    "too many sockets for the board's RX window budget"
);
/// Transmit buffer per socket (TLS records are written into it as space frees up).
pub const TCP_TX_BUF: usize = 2 * 1024;
/// A session with no incoming data for this long is closed by the stack.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a closing session may take to get its last data and FIN acknowledged.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type RxBufs = [[u8; TCP_RX_BUF]; SOCKET_COUNT];
type TxBufs = [[u8; TCP_TX_BUF]; SOCKET_COUNT];
type DriverBufs = [Buffers; SOCKET_COUNT];

/// Sessions running now (the heap peak is reset when one starts alone, so the `mem:` line
/// after a lone session shows that session's peak).
static LIVE_SESSIONS: AtomicUsize = AtomicUsize::new(0);

/// Listening sockets that are in LISTEN state (counted once per slot).
static LISTENING: AtomicUsize = AtomicUsize::new(0);
static LISTENING_CHANGED: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// Application entry point, called by the board from inside the executor once the network
/// stack exists (its runner task is already spawned). Must not block: it only spawns tasks.
pub fn start(spawner: Spawner, stack: Stack<'static>) {
    static RX: ConstStaticCell<RxBufs> = ConstStaticCell::new([[0; TCP_RX_BUF]; SOCKET_COUNT]);
    static TX: ConstStaticCell<TxBufs> = ConstStaticCell::new([[0; TCP_TX_BUF]; SOCKET_COUNT]);
    static BUFS: ConstStaticCell<DriverBufs> =
        ConstStaticCell::new([const { Buffers::new() }; SOCKET_COUNT]);

    match crate::mem::self_test() {
        Ok(()) => info!("heap self-test ok"),
        Err(e) => error!("heap self-test FAILED: {}", e),
    }
    match crate::rng::self_test() {
        Ok(()) => info!("rng self-test ok"),
        Err(e) => error!("rng self-test FAILED: {}", e),
    }
    if !crate::tls::init() {
        // Without credentials neither service can run: say so and serve nothing.
        error!("tls: no usable credentials; services NOT started");
        return;
    }
    info!(
        "vnc: {}x{} framebuffer ({} bytes), security VeNCrypt X509Vnc{}; nbd: exports iso ({} bytes, flash) and ram ({} bytes), TLS required",
        crate::desktop::WIDTH,
        crate::desktop::HEIGHT,
        crate::desktop::FB_LEN,
        if crate::vnc::OFFER_X509NONE {
            " + X509None"
        } else {
            ""
        },
        crate::storage::IMAGE_LEN,
        crate::storage::RAM_DISK_LEN
    );
    info!(
        "mem: per-slot static tcp_rx={} tcp_tx={} driver_buffers={} vnc_service={} ws_service={} nbd_service={} slots={} tls_layer={}",
        TCP_RX_BUF,
        TCP_TX_BUF,
        core::mem::size_of::<Buffers>(),
        core::mem::size_of::<VncService>(),
        WS_SERVICE_SIZE,
        core::mem::size_of::<NbdService>(),
        SOCKET_COUNT,
        core::mem::size_of::<tls_glue::TlsLayer>()
    );

    let rx = RX.take();
    let tx = TX.take();
    let bufs = BUFS.take();
    for (slot, ((rx, tx), bufs)) in rx
        .iter_mut()
        .zip(tx.iter_mut())
        .zip(bufs.iter_mut())
        .enumerate()
    {
        let (port, _) = slot_port(slot);
        spawner.spawn(listener(stack, port, slot, rx, tx, bufs).expect("listener pool too small"));
    }
    spawner.spawn(announce(stack).expect("announce task already spawned"));
}

/// Prints `listening …` once the address is configured and every slot is in LISTEN.
#[embassy_executor::task]
async fn announce(stack: Stack<'static>) {
    stack.wait_config_up().await;
    while LISTENING.load(Ordering::Acquire) < SOCKET_COUNT {
        LISTENING_CHANGED.wait().await;
    }
    if cfg!(feature = "wss") {
        info!(
            "vnc over wss on tcp port {} ({} session)",
            VNC_WS_PORT, VNC_WS_SESSIONS
        );
    }
    match stack.config_v4() {
        Some(c) => info!(
            "listening on {} tcp ports {} ({} session) and {} ({} sessions)",
            c.address, VNC_PORT, VNC_SESSIONS, NBD_PORT, NBD_SESSIONS
        ),
        None => info!("listening on tcp ports {} and {}", VNC_PORT, NBD_PORT),
    }
    crate::mem::log_figures();
}

/// One session slot: accept on `port`, serve, close, repeat.
#[embassy_executor::task(pool_size = SOCKET_COUNT)]
async fn listener(
    stack: Stack<'static>,
    port: u16,
    slot: usize,
    rx: &'static mut [u8; TCP_RX_BUF],
    tx: &'static mut [u8; TCP_TX_BUF],
    bufs: &'static mut Buffers,
) -> ! {
    let mut announced = false;
    loop {
        let mut socket = TcpSocket::new(stack, &mut rx[..], &mut tx[..]);
        socket.set_timeout(Some(IDLE_TIMEOUT));

        let accepted = {
            let mut accept = pin!(socket.accept(port));
            // The first poll puts the socket into LISTEN; report that before waiting, so
            // `listening` on the console means a SYN will find a socket.
            let first = poll_fn(|cx| Poll::Ready(accept.as_mut().poll(cx))).await;
            if !announced {
                announced = true;
                LISTENING.fetch_add(1, Ordering::AcqRel);
                LISTENING_CHANGED.signal(());
            }
            match first {
                Poll::Ready(r) => r,
                Poll::Pending => accept.await,
            }
        };
        if let Err(e) = accepted {
            warn!("port {} slot {}: accept failed: {:?}", port, slot, e);
            continue;
        }

        info!(
            "session open port={} slot={} peer={:?}",
            port,
            slot,
            socket.remote_endpoint()
        );
        let started = Instant::now();
        if LIVE_SESSIONS.fetch_add(1, Ordering::AcqRel) == 0 {
            crate::mem::reset_heap_peak();
        }
        let result = serve(port, slot_port(slot).1, &mut socket, bufs).await;
        LIVE_SESSIONS.fetch_sub(1, Ordering::AcqRel);
        let ms = started.elapsed().as_millis();
        let clean = close(&mut socket).await;
        match result {
            Ok(s) => info!(
                "session end port={} slot={} ok tls={} in={} out={} ms={} clean_close={}{}",
                port,
                slot,
                s.tls,
                s.bytes_in,
                s.bytes_out,
                ms,
                clean,
                if s.no_close_notify {
                    " (peer sent no close_notify)"
                } else {
                    ""
                }
            ),
            Err(e) => warn!(
                "session end port={} slot={} error=\"{}\" ms={} clean_close={}",
                port,
                slot,
                e.as_str(),
                ms,
                clean
            ),
        }
        crate::mem::log_figures();
    }
}

/// The service of `port` on one accepted connection; `slot` numbers the port's sessions.
async fn serve(
    port: u16,
    slot: usize,
    socket: &mut TcpSocket<'_>,
    bufs: &mut Buffers,
) -> Result<Summary, DriverError> {
    if port == VNC_PORT {
        let mut service = VncService::new(slot)?;
        driver::run(socket, &mut service, bufs).await
    } else if port == VNC_WS_PORT {
        #[cfg(feature = "wss")]
        {
            let mut service = crate::ws::WsVncService::new(VNC_SESSIONS + slot)?;
            driver::run(socket, &mut service, bufs).await
        }
        #[cfg(not(feature = "wss"))]
        unreachable!("no wss slots without the feature")
    } else {
        let mut service = NbdService::new(slot)?;
        driver::run(socket, &mut service, bufs).await
    }
}

/// Orderly close: send FIN, wait until data and FIN are acknowledged. Falls back to RST if
/// the peer does not finish in time. Returns whether the close was orderly.
async fn close(socket: &mut TcpSocket<'_>) -> bool {
    socket.close();
    let flushed = matches!(
        with_timeout(CLOSE_TIMEOUT, socket.flush()).await,
        Ok(Ok(()))
    );
    let state = socket.state();
    if flushed && matches!(state, State::Closed | State::TimeWait) {
        return true;
    }
    socket.abort();
    // Give the stack a chance to send the RST before the socket is dropped.
    let _ = with_timeout(Duration::from_millis(100), socket.flush()).await;
    false
}
