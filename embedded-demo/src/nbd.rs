//! The NBD virtual media service: `nbd-core`'s server glued to the two stores in
//! [`crate::storage`].
//!
//! * TLS is required (FORCEDTLS): before STARTTLS the core answers nothing but STARTTLS and
//!   ABORT, and reveals no export.
//! * Exports: `iso` (read-only, the image in flash; the default for the empty name) and `ram`
//!   (writable RAM disk). `CAN_MULTI_CONN` is advertised only for `iso` (read-only); the RAM
//!   disk does not claim it. Both answer BLOCK_STATUS (`base:allocation`).
//! * Requests are answered one at a time, in order: a READ streams straight from the store
//!   into the driver's output buffer in [`crate::driver::PLAIN_OUT`]-sized pieces (structured
//!   replies send zero runs as holes), WRITE data goes straight from the decrypted input into
//!   the RAM disk. No request needs a buffer of its own size.

use embassy_time::Instant;
use nbd_core::server::{Command, Event, Lent, Request, Server, ServerConfig, TlsMode};
use nbd_core::wire::{BlockSize, ErrorCode, Extent, HeaderStyle};
use nbd_core::{Export, ExportFeatures};
use tls_glue::TlsLayer;

use crate::driver::{Control, Service, ServiceError};
use crate::storage::{IMAGE_LEN, RAM_DISK_LEN, Store};

/// The exports; index = [`STORES`] index.
const EXPORTS: [Export<'static>; 2] = [
    Export::new("iso", IMAGE_LEN as u64)
        .with_description("read-only test image in flash")
        .with_read_only(true)
        .with_block_size(BLOCK_SIZE)
        .with_features(
            ExportFeatures::FLUSH
                .union(ExportFeatures::CACHE)
                .union(ExportFeatures::BASE_ALLOCATION),
        ),
    Export::new("ram", RAM_DISK_LEN as u64)
        .with_description("writable RAM disk")
        .with_block_size(BLOCK_SIZE)
        // No MULTI_CONN: not claimed for the writable disk.
        .with_features(
            ExportFeatures::FLUSH
                .union(ExportFeatures::FUA)
                .union(ExportFeatures::TRIM)
                .union(ExportFeatures::WRITE_ZEROES)
                .union(ExportFeatures::FAST_ZERO)
                .union(ExportFeatures::CACHE)
                .union(ExportFeatures::BASE_ALLOCATION),
        ),
];
const STORES: [Store; 2] = [Store::Flash, Store::Ram];

/// Payloads are streamed, so the maximum costs no memory; 1 MiB covers both exports whole.
const BLOCK_SIZE: BlockSize = BlockSize {
    minimum: 1,
    preferred: 4096,
    maximum: 1024 * 1024,
};

/// The server configuration shared by every NBD connection.
const CONFIG: ServerConfig<'static> = {
    let mut c = ServerConfig::new(&EXPORTS);
    c.tls = TlsMode::Forced;
    // Names are short here; longer ones get an error reply. Whole options up to 512 bytes
    // (they must fit the driver's input buffers), longer ones are drained and refused.
    c.max_name_len = 256;
    c.max_option_len = 512;
    c.max_in_flight = 16;
    c.handshake_timeout = Some(core::time::Duration::from_secs(10));
    // One session per client: no CAN_MULTI_CONN, so clients do not open more connections
    // than the session slots take.
    c.multi_conn = false;
    c
};
const _: () = assert!(16 + 512 <= crate::driver::WIRE_OUT);

/// Most extents in one BLOCK_STATUS reply.
const MAX_EXTENTS: usize = 16;

/// The answer the service owes for the request being served.
#[derive(Debug, Clone, Copy)]
enum Pending {
    None,
    /// A reply without data.
    Done(Request, Result<(), (ErrorCode, &'static str)>),
    /// A READ: bytes `[pos, end)` still to send (simple replies: `header` not yet sent).
    Read {
        req: Request,
        pos: u64,
        end: u64,
        header: bool,
    },
    BlockStatus(Request),
}

/// One NBD connection.
pub struct NbdService {
    server: Server<'static>,
    store: Option<Store>,
    style: HeaderStyle,
    pending: Pending,
    /// A WRITE whose data is arriving: the request and the bytes still to come.
    write: Option<(Request, u64)>,
    slot: usize,
}

fn core_now() -> nbd_core::Instant {
    nbd_core::Instant::from_micros(Instant::now().as_micros())
}

impl NbdService {
    /// A server for a connection accepted now on session slot `slot` (for logs).
    pub fn new(slot: usize) -> Result<Self, ServiceError> {
        let server = Server::new(CONFIG, core_now()).map_err(|e| {
            error!("nbd: bad configuration: {:?}", e);
            ServiceError("nbd: bad configuration")
        })?;
        Ok(Self {
            server,
            store: None,
            style: HeaderStyle::Simple,
            pending: Pending::None,
            write: None,
            slot,
        })
    }

    fn store(&self) -> Result<Store, ServiceError> {
        self.store
            .ok_or(ServiceError("nbd: request before an export was chosen"))
    }

    fn execute(&mut self, req: Request) -> Result<(), ServiceError> {
        let store = self.store()?;
        let (off, len) = (req.offset as usize, req.length as usize);
        self.pending = match req.command {
            Command::Read => Pending::Read {
                req,
                pos: req.offset,
                end: req.offset + req.length,
                header: false,
            },
            Command::Write => {
                self.write = Some((req, req.length));
                Pending::None
            }
            Command::Flush | Command::Cache => Pending::Done(req, Ok(())),
            Command::Trim | Command::WriteZeroes => {
                store.zero(off, len);
                Pending::Done(req, Ok(()))
            }
            Command::BlockStatus => Pending::BlockStatus(req),
        };
        Ok(())
    }

    fn write_data(&mut self, offset: u64, data: &[u8]) -> Result<(), ServiceError> {
        let store = self.store()?;
        let Some((req, remaining)) = self.write.as_mut() else {
            return Err(ServiceError("nbd: write data without a write"));
        };
        store.write(offset as usize, data);
        *remaining -= data.len() as u64;
        if *remaining == 0 {
            self.pending = Pending::Done(*req, Ok(()));
            self.write = None;
        }
        Ok(())
    }

    /// The next piece of a READ reply into `buf`.
    fn read_piece(
        &mut self,
        req: Request,
        pos: u64,
        end: u64,
        header: bool,
        buf: &mut [u8],
    ) -> Result<usize, ServiceError> {
        let store = self.store()?;
        let hdr = self.server.read_data_header_len();
        let room = (buf.len() - hdr) as u64;
        let bad = |e| {
            error!("nbd: cannot encode a read reply: {:?}", e);
            ServiceError("nbd: internal error")
        };
        if self.style == HeaderStyle::Simple {
            // One header for the whole request, then the data in pieces.
            let at = if header { 0 } else { hdr };
            let n = (end - pos).min(buf.len() as u64 - at as u64) as usize;
            store.read(pos as usize, &mut buf[at..at + n]);
            if !header {
                self.server
                    .reply_read_data(&req, req.offset, req.length, true, &mut buf[..hdr])
                    .map_err(bad)?;
            }
            let pos = pos + n as u64;
            self.pending = if pos == end {
                Pending::None
            } else {
                Pending::Read {
                    req,
                    pos,
                    end,
                    header: true,
                }
            };
            return Ok(at + n);
        }
        // Structured or extended: data chunks, zero runs as hole chunks.
        let left = end - pos;
        let zeros = store.zero_run(pos as usize, left.min(u64::from(u32::MAX)) as usize) as u64;
        let (n, written) = if zeros >= room.min(left) {
            let done = pos + zeros == end;
            let w = self
                .server
                .reply_read_hole(&req, pos, zeros as u32, done, buf)
                .map_err(bad)?;
            (zeros, w)
        } else {
            let n = room.min(left);
            store.read(pos as usize, &mut buf[hdr..hdr + n as usize]);
            let done = pos + n == end;
            self.server
                .reply_read_data(&req, pos, n, done, &mut buf[..hdr])
                .map_err(bad)?;
            (n, hdr + n as usize)
        };
        let pos = pos + n;
        self.pending = if pos == end {
            Pending::None
        } else {
            Pending::Read {
                req,
                pos,
                end,
                header: true,
            }
        };
        Ok(written)
    }
}

impl Service for NbdService {
    fn handle_input(&mut self, input: &[u8]) -> Result<usize, ServiceError> {
        if !matches!(self.pending, Pending::None) {
            return Ok(0);
        }
        let p = match self.server.handle_input(input) {
            Ok(p) => p,
            Err(e) => {
                warn!("nbd slot {}: peer error: {:?}", self.slot, e);
                return Err(ServiceError("nbd: protocol error"));
            }
        };
        let consumed = p.consumed;
        match p.lent {
            Some(Lent::Request(req)) => self.execute(req)?,
            Some(Lent::WriteData { offset, data, .. }) => self.write_data(offset, data)?,
            None => {}
        }
        Ok(consumed)
    }

    fn poll_transmit(&mut self, buf: &mut [u8]) -> Result<usize, ServiceError> {
        let bad = |e| {
            error!("nbd: cannot encode a reply: {:?}", e);
            ServiceError("nbd: internal error")
        };
        match self.pending {
            Pending::None => {}
            Pending::Done(req, result) => {
                self.pending = Pending::None;
                let n = match result {
                    Ok(()) => self.server.reply_ok(&req, buf),
                    Err((code, msg)) => self.server.reply_error(&req, code, msg, buf),
                };
                return n.map_err(bad);
            }
            Pending::BlockStatus(req) => {
                self.pending = Pending::None;
                let mut extents = [Extent {
                    length: 0,
                    flags: 0,
                }; MAX_EXTENTS];
                let n = self.store()?.extents(req.offset, req.length, &mut extents);
                return self
                    .server
                    .reply_block_status(&req, &extents[..n], buf)
                    .map_err(bad);
            }
            Pending::Read {
                req,
                pos,
                end,
                header,
            } => return self.read_piece(req, pos, end, header, buf),
        }
        match self.server.poll_transmit(buf) {
            Ok(n) => Ok(n.unwrap_or(0)),
            Err(e) => {
                error!("nbd: output buffer too small: {:?}", e);
                Err(ServiceError("nbd: internal error"))
            }
        }
    }

    fn poll_event(&mut self) -> Option<Control> {
        let e = self.server.poll_event()?;
        Some(match e {
            Event::StartTls => Control::StartTls,
            Event::Ready(r) => {
                self.store = STORES.get(r.export).copied();
                self.style = r.style;
                info!(
                    "nbd slot {}: export {} ({} bytes), {:?} replies, block status {}",
                    self.slot, EXPORTS[r.export].name, r.size, r.style, r.base_allocation
                );
                Control::Continue
            }
            Event::Finished => Control::Close,
            Event::TimedOut => {
                warn!("nbd slot {}: handshake deadline passed", self.slot);
                Control::Close
            }
            _ => Control::Continue,
        })
    }

    fn tls_established(&mut self, tls: &TlsLayer) -> Result<(), ServiceError> {
        log_tls("nbd", self.slot, tls);
        self.server.tls_established().map_err(|e| {
            error!("nbd: tls_established: {:?}", e);
            ServiceError("nbd: TLS in the wrong state")
        })
    }

    fn handle_eof(&mut self) -> Result<(), ServiceError> {
        self.server
            .handle_eof()
            .map_err(|_| ServiceError("nbd: peer closed during negotiation"))
    }

    fn poll_timeout(&self) -> Option<Instant> {
        self.server
            .poll_timeout()
            .map(|t| Instant::from_micros(t.as_micros()))
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.server
            .handle_timeout(nbd_core::Instant::from_micros(now.as_micros()));
    }
}

/// Logs the negotiated TLS parameters and the client certificate's subject.
pub fn log_tls(service: &str, slot: usize, tls: &TlsLayer) {
    let dn = tls.peer_subject_dn();
    info!(
        "{} slot {}: {} {} client {}",
        service,
        slot,
        tls.protocol_version().unwrap_or("?"),
        tls.cipher_suite().unwrap_or("?"),
        dn.as_deref().unwrap_or("(none)")
    );
}
