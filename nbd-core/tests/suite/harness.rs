//! The two-peer harness: a client and a server connected back to back in memory, each side
//! fed in configurable cuts, with a RAM backend behind the server that answers READs with data
//! and hole chunks and BLOCK_STATUS with real extents.

use std::collections::VecDeque;

use nbd_core::client::{self, Client, ClientConfig, Item, Negotiator, Plan};
use nbd_core::server::{self, Command, Lent, Request, Server, ServerConfig};
use nbd_core::time::Instant;
use nbd_core::wire::*;

/// What the client saw, owned, with adjacent data pieces merged so any split compares equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Rec {
    Event(client::Event),
    ListEntry(String, String),
    Info(String),
    Meta(u32, String),
    OptionDone(OptionType, Result<(), ReplyType>),
    Data(u64, u64, Vec<u8>),
    Hole(u64, u64, u32),
    Extents(u64, u32, Vec<Extent>),
    ChunkError(u64, ErrorCode, String),
    Done(u64, Result<(), ErrorCode>),
}

fn push_rec(log: &mut Vec<Rec>, r: Rec) {
    match (log.last_mut(), r) {
        (Some(Rec::Data(c, o, d)), Rec::Data(c2, o2, d2))
            if *c == c2 && *o + d.len() as u64 == o2 =>
        {
            d.extend_from_slice(&d2)
        }
        (Some(Rec::Extents(c, x, e)), Rec::Extents(c2, x2, e2)) if *c == c2 && *x == x2 => {
            e.extend_from_slice(&e2)
        }
        (_, r) => log.push(r),
    }
}

/// A READ is answered in 4 KiB blocks: runs of zero blocks become holes (structured replies).
pub(crate) const BLOCK: usize = 4096;

pub(crate) struct Pair<'a> {
    pub server: Server<'a>,
    pub client: Client<16>,
    pub disk: Vec<u8>,
    /// Bytes in flight to the server / to the client.
    pub to_server: Vec<u8>,
    pub to_client: Vec<u8>,
    /// Cut sizes for feeding each side (cycled); empty: feed everything at once.
    pub cuts: Vec<usize>,
    cut_i: usize,
    pub log: Vec<Rec>,
    pub negotiator: Option<(Plan<'a>, Negotiator)>,
    /// Requests the server lent, answered in FIFO order (several in flight).
    pending: VecDeque<Request>,
    write_buf: Vec<(u64, Vec<u8>)>,
    /// Answer requests only when this many are pending (exercises many in flight).
    pub batch: usize,
    pub server_events: Vec<server::Event>,
}

impl<'a> Pair<'a> {
    pub(crate) fn new(config: ServerConfig<'a>, client: ClientConfig, disk: Vec<u8>) -> Self {
        Self {
            server: Server::new(config, Instant::ZERO).unwrap(),
            client: Client::new(client),
            disk,
            to_server: Vec::new(),
            to_client: Vec::new(),
            cuts: Vec::new(),
            cut_i: 0,
            log: Vec::new(),
            negotiator: None,
            pending: VecDeque::new(),
            write_buf: Vec::new(),
            batch: 1,
            server_events: Vec::new(),
        }
    }

    pub(crate) fn with_plan(mut self, plan: Plan<'a>) -> Self {
        self.negotiator = Some((plan, Negotiator::new()));
        self
    }

    fn cut(&mut self, avail: usize) -> usize {
        if self.cuts.is_empty() {
            return avail;
        }
        let c = self.cuts[self.cut_i % self.cuts.len()].max(1);
        self.cut_i += 1;
        c.min(avail)
    }

    /// Runs both sides until neither has anything to do. Returns a fatal error of either side.
    pub(crate) fn drive(&mut self) -> Result<(), String> {
        for _ in 0..100_000 {
            let mut busy = false;
            busy |= self.step_server()?;
            busy |= self.step_client()?;
            if !busy {
                return Ok(());
            }
        }
        Err("no quiescence".to_string())
    }

    fn step_server(&mut self) -> Result<bool, String> {
        let mut busy = false;
        let mut out = vec![0u8; 1 << 16];
        while let Some(n) = self
            .server
            .poll_transmit(&mut out)
            .map_err(|e| e.to_string())?
        {
            self.to_client.extend_from_slice(&out[..n]);
            busy = true;
        }
        while let Some(e) = self.server.poll_event() {
            busy = true;
            self.server_events.push(e);
        }
        // Feed the server what the client sent, in cuts.
        let mut start = 0;
        loop {
            let avail = self.to_server.len() - start;
            let take = self.cut(avail);
            // Grow the window until the server can make progress (incomplete: consume 0).
            let mut window = take;
            let p = loop {
                let p = self
                    .server
                    .handle_input(&self.to_server[start..start + window])
                    .map_err(|e| format!("server: {e}"))?;
                if p.consumed > 0 || p.lent.is_some() || window == avail {
                    break p;
                }
                window = (window + take.max(1)).min(avail);
            };
            start += p.consumed;
            match p.lent {
                Some(Lent::Request(r)) => {
                    busy = true;
                    self.pending.push_back(r);
                }
                Some(Lent::WriteData {
                    cookie,
                    offset,
                    data,
                }) => {
                    busy = true;
                    let _ = cookie;
                    self.write_buf.push((offset, data.to_vec()));
                }
                None if p.consumed == 0 => break,
                None => busy = true,
            }
        }
        self.to_server.drain(..start);
        // Apply completed writes, then answer requests.
        for (off, data) in self.write_buf.drain(..) {
            let o = off as usize;
            self.disk[o..o + data.len()].copy_from_slice(&data);
        }
        if self.pending.len() >= self.batch
            || (!self.pending.is_empty() && self.to_server.is_empty())
        {
            while let Some(r) = self.pending.pop_front() {
                busy = true;
                self.answer(&r)?;
            }
        }
        Ok(busy)
    }

    fn answer(&mut self, r: &Request) -> Result<(), String> {
        let mut out = vec![0u8; (1 << 16) + 64];
        let s = &mut self.server;
        let err = |e: nbd_core::error::CommandError| e.to_string();
        let (o, l) = (r.offset as usize, r.length as usize);
        match r.command {
            Command::Read => {
                let structured = s.read_data_header_len() != SimpleReplyRepr::LEN;
                if !structured || r.flags.contains(CommandFlags::DF) {
                    let h = s.read_data_header_len();
                    s.reply_read_data(r, r.offset, r.length, true, &mut out[..h])
                        .map_err(err)?;
                    self.to_client.extend_from_slice(&out[..h]);
                    self.to_client.extend_from_slice(&self.disk[o..o + l]);
                    return Ok(());
                }
                // Runs of zero / non-zero blocks, as a sparse-aware server would send them.
                let mut pos = o;
                let end = o + l;
                while pos < end {
                    let blk_end = ((pos / BLOCK + 1) * BLOCK).min(end);
                    let zero = self.disk[pos..blk_end].iter().all(|&b| b == 0);
                    let mut run_end = blk_end;
                    while run_end < end {
                        let next = ((run_end / BLOCK + 1) * BLOCK).min(end);
                        if self.disk[run_end..next].iter().all(|&b| b == 0) != zero {
                            break;
                        }
                        run_end = next;
                    }
                    let done = run_end == end;
                    if zero {
                        let n = s
                            .reply_read_hole(r, pos as u64, (run_end - pos) as u32, done, &mut out)
                            .map_err(err)?;
                        self.to_client.extend_from_slice(&out[..n]);
                    } else {
                        let h = s.read_data_header_len();
                        s.reply_read_data(
                            r,
                            pos as u64,
                            (run_end - pos) as u64,
                            done,
                            &mut out[..h],
                        )
                        .map_err(err)?;
                        self.to_client.extend_from_slice(&out[..h]);
                        self.to_client.extend_from_slice(&self.disk[pos..run_end]);
                    }
                    pos = run_end;
                }
            }
            Command::Write | Command::Flush | Command::Cache => {
                let n = s.reply_ok(r, &mut out).map_err(err)?;
                self.to_client.extend_from_slice(&out[..n]);
            }
            Command::Trim | Command::WriteZeroes => {
                if r.flags.contains(CommandFlags::FAST_ZERO) && o % BLOCK != 0 {
                    let n = s
                        .reply_error(r, ErrorCode::NotSup, "unaligned fast zero", &mut out)
                        .map_err(err)?;
                    self.to_client.extend_from_slice(&out[..n]);
                    return Ok(());
                }
                self.disk[o..o + l].fill(0);
                let n = s.reply_ok(r, &mut out).map_err(err)?;
                self.to_client.extend_from_slice(&out[..n]);
            }
            Command::BlockStatus => {
                let mut extents = Vec::new();
                let mut pos = o;
                let end = (o + l).min(self.disk.len());
                while pos < end {
                    let blk_end = ((pos / BLOCK + 1) * BLOCK).min(end);
                    let zero = self.disk[pos..blk_end].iter().all(|&b| b == 0);
                    let flags = if zero {
                        (AllocationFlags::HOLE | AllocationFlags::ZERO).bits()
                    } else {
                        0
                    };
                    match extents.last_mut() {
                        Some(Extent { length, flags: f }) if *f == u64::from(flags) => {
                            *length += (blk_end - pos) as u64
                        }
                        _ => extents.push(Extent {
                            length: (blk_end - pos) as u64,
                            flags: u64::from(flags),
                        }),
                    }
                    pos = blk_end;
                }
                let n = s.reply_block_status(r, &extents, &mut out).map_err(err)?;
                self.to_client.extend_from_slice(&out[..n]);
            }
        }
        Ok(())
    }

    fn step_client(&mut self) -> Result<bool, String> {
        let mut busy = false;
        let mut out = vec![0u8; 1 << 16];
        while let Some(n) = self
            .client
            .poll_transmit(&mut out)
            .map_err(|e| e.to_string())?
        {
            self.to_server.extend_from_slice(&out[..n]);
            busy = true;
        }
        let mut start = 0;
        loop {
            let avail = self.to_client.len() - start;
            let take = self.cut(avail);
            let mut window = take;
            let p = loop {
                let p = self
                    .client
                    .handle_input(&self.to_client[start..start + window])
                    .map_err(|e| format!("client: {e}"))?;
                if p.consumed > 0 || p.item.is_some() || window == avail {
                    break p;
                }
                window = (window + take.max(1)).min(avail);
            };
            start += p.consumed;
            let Some(item) = p.item else {
                if p.consumed == 0 {
                    break;
                }
                busy = true;
                continue;
            };
            busy = true;
            let rec = match item {
                Item::ListEntry { name, description } => {
                    Rec::ListEntry(name.into(), description.into())
                }
                Item::Info(i) => Rec::Info(format!("{i:?}")),
                Item::MetaContext { id, name } => Rec::Meta(id, name.into()),
                Item::OptionDone { option, result } => {
                    Rec::OptionDone(option, result.map_err(|e| e.reply))
                }
                Item::ReadData {
                    cookie,
                    offset,
                    data,
                } => Rec::Data(cookie, offset, data.to_vec()),
                Item::ReadHole {
                    cookie,
                    offset,
                    length,
                } => Rec::Hole(cookie, offset, length),
                Item::Extents {
                    cookie,
                    context,
                    extents,
                } => Rec::Extents(cookie, context, extents.iter().collect()),
                Item::ChunkError {
                    cookie,
                    code,
                    message,
                    ..
                } => Rec::ChunkError(cookie, code, message.into()),
                Item::Done { cookie, result } => Rec::Done(cookie, result.map_err(|e| e.code)),
                other => return Err(format!("item the harness does not know: {other:?}")),
            };
            push_rec(&mut self.log, rec);
        }
        self.to_client.drain(..start);
        let mut tls = false;
        while let Some(e) = self.client.poll_event() {
            busy = true;
            if e == client::Event::StartTls {
                tls = true;
            }
            push_rec(&mut self.log, Rec::Event(e));
        }
        if tls {
            // The fake TLS layer: both sides agree the handshake happened.
            while let Some(e) = self.server.poll_event() {
                self.server_events.push(e);
            }
            self.server.tls_established().map_err(|e| e.to_string())?;
            self.client.tls_established().map_err(|e| e.to_string())?;
        }
        if let Some((plan, neg)) = self.negotiator.as_mut()
            && let Some(n) = neg
                .step(plan, &mut self.client, &mut out)
                .map_err(|e| format!("negotiator: {e}"))?
        {
            self.to_server.extend_from_slice(&out[..n]);
            busy = true;
        }
        Ok(busy)
    }

    /// Sends a request from the client (the WRITE payload from `data`).
    pub(crate) fn request(
        &mut self,
        command: CommandType,
        flags: CommandFlags,
        cookie: u64,
        offset: u64,
        length: u64,
        data: Option<&[u8]>,
    ) -> Result<(), nbd_core::error::CommandError> {
        let mut out = [0u8; 64];
        let n = self
            .client
            .request(command, flags, cookie, offset, length, &mut out)?;
        self.to_server.extend_from_slice(&out[..n]);
        if let Some(d) = data {
            self.to_server.extend_from_slice(d);
        }
        Ok(())
    }

    /// Reassembles what the client received for a READ (data and holes).
    pub(crate) fn read_result(&self, cookie: u64, offset: u64, len: usize) -> Option<Vec<u8>> {
        let mut buf = vec![0xEEu8; len];
        let mut done = false;
        for r in &self.log {
            match r {
                Rec::Data(c, o, d) if *c == cookie => {
                    let s = (*o - offset) as usize;
                    buf[s..s + d.len()].copy_from_slice(d);
                }
                Rec::Hole(c, o, l) if *c == cookie => {
                    let s = (*o - offset) as usize;
                    buf[s..s + *l as usize].fill(0);
                }
                Rec::Done(c, Ok(())) if *c == cookie => done = true,
                _ => {}
            }
        }
        done.then_some(buf)
    }

    pub(crate) fn done(&self, cookie: u64) -> Option<Result<(), ErrorCode>> {
        self.log.iter().find_map(|r| match r {
            Rec::Done(c, res) if *c == cookie => Some(*res),
            _ => None,
        })
    }
}

/// A disk image with a recognisable pattern and some zero regions.
pub(crate) fn pattern_disk(size: usize) -> Vec<u8> {
    let mut d = vec![0u8; size];
    for (i, b) in d.iter_mut().enumerate() {
        let blk = i / BLOCK;
        if blk % 3 != 1 {
            *b = (i as u32).wrapping_mul(2_654_435_761).to_be_bytes()[0] | 1;
        }
    }
    d
}
