//! The board-independent application: network services on an `embassy_net::Stack<'static>`.
//!
//! For now every service is a TCP echo, which proves the whole path (driver, stack, sockets,
//! timers, executor) on every board. The team replaces [`serve`] with the rfb-core (:5900) and
//! nbd-core (:10809) servers over tls-glue; the listener/socket/buffer plumbing stays.
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
use embedded_io_async::Write;
use static_cell::ConstStaticCell;

/// The VNC (RFB) port.
pub const VNC_PORT: u16 = 5900;
/// The NBD port.
pub const NBD_PORT: u16 = 10809;
/// Every listening port.
pub const PORTS: [u16; 2] = [VNC_PORT, NBD_PORT];
/// Concurrent sessions per port (one listening socket each).
pub const SESSIONS_PER_PORT: usize = 2;
/// TCP sockets the application uses; the board sizes `StackResources` with it.
pub const SOCKET_COUNT: usize = PORTS.len() * SESSIONS_PER_PORT;
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
/// Transmit buffer per socket.
pub const TCP_TX_BUF: usize = 8 * 1024;
/// A session with no incoming data for this long is closed by the stack.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a closing session may take to get its last data and FIN acknowledged.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

type RxBufs = [[u8; TCP_RX_BUF]; SOCKET_COUNT];
type TxBufs = [[u8; TCP_TX_BUF]; SOCKET_COUNT];

/// Listening sockets that are in LISTEN state (counted once per slot).
static LISTENING: AtomicUsize = AtomicUsize::new(0);
static LISTENING_CHANGED: Signal<CriticalSectionRawMutex, ()> = Signal::new();

/// Application entry point, called by the board from inside the executor once the network
/// stack exists (its runner task is already spawned). Must not block: it only spawns tasks.
pub fn start(spawner: Spawner, stack: Stack<'static>) {
    static RX: ConstStaticCell<RxBufs> = ConstStaticCell::new([[0; TCP_RX_BUF]; SOCKET_COUNT]);
    static TX: ConstStaticCell<TxBufs> = ConstStaticCell::new([[0; TCP_TX_BUF]; SOCKET_COUNT]);

    match crate::mem::self_test() {
        Ok(()) => info!("heap self-test ok"),
        Err(e) => error!("heap self-test FAILED: {}", e),
    }
    match crate::rng::self_test() {
        Ok(()) => info!("rng self-test ok"),
        Err(e) => error!("rng self-test FAILED: {}", e),
    }

    let rx = RX.take();
    let tx = TX.take();
    for (slot, (rx, tx)) in rx.iter_mut().zip(tx.iter_mut()).enumerate() {
        let port = PORTS[slot / SESSIONS_PER_PORT];
        spawner.spawn(listener(stack, port, slot, rx, tx).expect("listener pool too small"));
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
    match stack.config_v4() {
        Some(c) => info!(
            "listening on {} tcp ports {} and {} ({} sessions each)",
            c.address, VNC_PORT, NBD_PORT, SESSIONS_PER_PORT
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
        let result = serve(port, &mut socket).await;
        let ms = started.elapsed().as_millis();
        let clean = close(&mut socket).await;
        match result {
            Ok(n) => info!(
                "session end port={} slot={} bytes={} ms={} clean_close={}",
                port, slot, n, ms, clean
            ),
            Err(e) => warn!(
                "session end port={} slot={} error={:?} ms={} clean_close={}",
                port, slot, e, ms, clean
            ),
        }
        crate::mem::log_figures();
    }
}

/// The service on one accepted connection. Returns the number of bytes echoed.
///
/// Placeholder until the protocol servers land: a banner `echo <port>\n`, then everything
/// the peer sends is echoed back until it closes. The banner makes the server speak first,
/// like RFB and NBD do: a client that waits for it knows the firmware is really connected
/// (QEMU's slirp accepts the host side before the guest answers), and it avoids a slirp race
/// in which data a client sends right after connecting sits in slirp for 0.5 s.
async fn serve(port: u16, socket: &mut TcpSocket<'_>) -> Result<usize, embassy_net::tcp::Error> {
    socket.write_all(banner(port).as_bytes()).await?;
    // Lives in the task's (static) future, not on the stack.
    let mut buf = [0u8; 1024];
    let mut total = 0usize;
    loop {
        let n = socket.read(&mut buf).await?;
        if n == 0 {
            return Ok(total);
        }
        socket.write_all(&buf[..n]).await?;
        total += n;
    }
}

fn banner(port: u16) -> &'static str {
    match port {
        VNC_PORT => "echo 5900\n",
        NBD_PORT => "echo 10809\n",
        _ => "echo\n",
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
