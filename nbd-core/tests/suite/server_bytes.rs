//! The server against hand-made bytes: the NBD rows of the security history (protocols.md §3),
//! the TLS policy, and bad transmission requests.

use nbd_core::error::Error;
use nbd_core::export::Export;
use nbd_core::server::{Event, Lent, Request, Server, ServerConfig, TlsMode};
use nbd_core::time::{Duration, Instant};
use nbd_core::wire::*;

static EXPORTS: [Export<'static>; 2] = [
    Export::new("disk", 1 << 20),
    Export::new("ro", 1 << 20).with_read_only(true),
];

struct S {
    server: Server<'static>,
    out: Vec<u8>,
    lent: Vec<Request>,
    writes: Vec<u8>,
    events: Vec<Event>,
}

impl S {
    fn new(config: ServerConfig<'static>) -> Self {
        let mut s = Self {
            server: Server::new(config, Instant::ZERO).unwrap(),
            out: Vec::new(),
            lent: Vec::new(),
            writes: Vec::new(),
            events: Vec::new(),
        };
        s.drain();
        assert_eq!(s.out, b"NBDMAGICIHAVEOPT\x00\x03");
        s.out.clear();
        s
    }

    fn plain() -> Self {
        Self::new(ServerConfig::new(&EXPORTS))
    }

    fn mode(tls: TlsMode) -> Self {
        let mut c = ServerConfig::new(&EXPORTS);
        c.tls = tls;
        Self::new(c)
    }

    fn drain(&mut self) {
        let mut buf = [0u8; 8192];
        while let Some(n) = self.server.poll_transmit(&mut buf).unwrap() {
            self.out.extend_from_slice(&buf[..n]);
        }
        while let Some(e) = self.server.poll_event() {
            self.events.push(e);
        }
    }

    /// Feeds `bytes` until the server stops; returns the bytes consumed.
    fn feed(&mut self, bytes: &[u8]) -> Result<usize, Error> {
        let mut pos = 0;
        loop {
            let p = self.server.handle_input(&bytes[pos..])?;
            pos += p.consumed;
            match p.lent {
                Some(Lent::Request(r)) => self.lent.push(r),
                Some(Lent::WriteData { data, .. }) => self.writes.extend_from_slice(data),
                None if p.consumed == 0 => {
                    self.drain();
                    // A reply may have unblocked the next option.
                    let p = self.server.handle_input(&bytes[pos..])?;
                    if p.consumed == 0 && p.lent.is_none() {
                        return Ok(pos);
                    }
                    pos += p.consumed;
                    if let Some(Lent::Request(r)) = p.lent {
                        self.lent.push(r);
                    }
                }
                None => {}
            }
            self.drain();
        }
    }

    /// The option replies sent so far, as (option, reply type, data); clears the output.
    fn replies(&mut self) -> Vec<(OptionType, ReplyType, Vec<u8>)> {
        let mut v = Vec::new();
        let mut pos = 0;
        while let Ok(Some(h)) = OptionReplyHeaderRepr::parse(&self.out[pos..]) {
            let d = self.out[pos + 20..pos + 20 + h.length as usize].to_vec();
            pos += 20 + h.length as usize;
            v.push((h.option, h.reply, d));
        }
        assert_eq!(pos, self.out.len(), "trailing output");
        self.out.clear();
        v
    }

    fn reply_types(&mut self) -> Vec<(OptionType, ReplyType)> {
        self.replies().into_iter().map(|(o, r, _)| (o, r)).collect()
    }
}

fn flags(f: u32) -> Vec<u8> {
    f.to_be_bytes().to_vec()
}

/// An option header and its data, as a client sends them.
pub(crate) fn opt(o: OptionType, data: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 16];
    OptionHeaderRepr {
        option: o,
        length: data.len() as u32,
    }
    .emit(&mut v)
    .unwrap();
    v.extend_from_slice(data);
    v
}

fn go_data(name: &[u8], reqs: &[u16]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
    for r in reqs {
        v.extend_from_slice(&r.to_be_bytes());
    }
    v
}

fn request(
    cmd: CommandType,
    flags: CommandFlags,
    cookie: u64,
    offset: u64,
    len: u64,
    ext: bool,
) -> Vec<u8> {
    let mut v = vec![0u8; 32];
    let n = RequestRepr {
        flags,
        command: cmd,
        cookie,
        offset,
        length: len,
    }
    .emit(&mut v, ext)
    .unwrap();
    v.truncate(n);
    v
}

/// A server in transmission (simple replies, or structured / extended per `sr` / `eh`).
fn transmitting(export: &[u8], sr: bool, eh: bool) -> S {
    let mut s = S::plain();
    let mut b = flags(3);
    if sr {
        b.extend(opt(OptionType::StructuredReply, &[]));
    }
    if eh {
        b.extend(opt(OptionType::ExtendedHeaders, &[]));
    }
    b.extend(opt(OptionType::Go, &go_data(export, &[])));
    assert_eq!(s.feed(&b).unwrap(), b.len());
    assert!(s.server.is_transmitting());
    s.out.clear();
    s
}

/// Parses simple replies from the output: (error, cookie).
fn simple_replies(out: &[u8]) -> Vec<(u32, u64)> {
    out.chunks(16)
        .map(|c| {
            let r = SimpleReplyRepr::parse(c).unwrap().unwrap();
            (r.error, r.cookie)
        })
        .collect()
}

#[test]
fn unknown_client_flags_close() {
    for f in [4u32, 0x8000_0000, 0xffff_ffff, 7] {
        let mut s = S::plain();
        assert_eq!(s.feed(&flags(f)), Err(Error::UnknownClientFlags(f)));
        assert!(s.server.is_closed());
        assert_eq!(s.feed(b"x"), Err(Error::Failed));
    }
}

#[test]
fn export_name_lengths() {
    // CVE-2017-15118 / CVE-2020-10761 / CVE-2022-26495: 0, 256, 4096, 4097, 0xFFFFFFFF.
    for (len, expect) in [
        (0usize, ReplyType::Ack),
        (256, ReplyType::ErrUnknown),
        (4096, ReplyType::ErrUnknown),
        (4097, ReplyType::ErrInvalid),
    ] {
        let mut s = S::plain();
        let mut b = flags(3);
        b.extend(opt(OptionType::Info, &go_data(&vec![b'a'; len], &[])));
        s.feed(&b).unwrap();
        let r = s.reply_types();
        assert_eq!(r.last().unwrap().1, expect, "name length {len}");
    }
    // A name length field of 0xFFFFFFFF with a short option.
    let mut s = S::plain();
    let mut data = go_data(b"disk", &[]);
    data[..4].copy_from_slice(&u32::MAX.to_be_bytes());
    let mut b = flags(3);
    b.extend(opt(OptionType::Go, &data));
    b.extend(opt(OptionType::Go, &go_data(b"disk", &[])));
    s.feed(&b).unwrap();
    let r = s.replies();
    assert_eq!(r[0].1, ReplyType::ErrInvalid);
    assert!(
        std::str::from_utf8(&r[0].2)
            .unwrap()
            .contains("name length")
    );
    // ... and the connection is still usable: the second GO worked.
    assert_eq!(r.last().unwrap().1, ReplyType::Ack);
    assert!(s.server.is_transmitting());
    // A server configured for shorter names answers TOO_BIG.
    let mut c = ServerConfig::new(&EXPORTS);
    c.max_name_len = 256;
    let mut s = S::new(c);
    let mut b = flags(3);
    b.extend(opt(OptionType::Go, &go_data(&[b'a'; 257], &[])));
    s.feed(&b).unwrap();
    assert_eq!(s.reply_types(), [(OptionType::Go, ReplyType::ErrTooBig)]);
    // EXPORT_NAME cannot be answered: an over-long or unknown name closes.
    let mut s = S::plain();
    let mut b = flags(3);
    b.extend(opt(OptionType::ExportName, &[b'a'; 4097]));
    assert_eq!(s.feed(&b), Err(Error::BadExportName));
    let mut s = S::plain();
    let mut b = flags(3);
    b.extend(opt(OptionType::ExportName, b"nope"));
    assert_eq!(s.feed(&b), Err(Error::UnknownExport));
    let mut s = S::plain();
    let mut b = flags(3);
    b.extend(opt(OptionType::ExportName, b"disk\0"));
    assert_eq!(s.feed(&b), Err(Error::BadExportName));
}

#[test]
fn options_over_the_cap() {
    // 20 KiB of data (over the 16 KiB default): read and discarded, ERR_TOO_BIG, still usable.
    let mut s = S::plain();
    let mut b = flags(3);
    b.extend(opt(OptionType::SetMetaContext, &vec![0u8; 20 * 1024]));
    b.extend(opt(OptionType::List, &[]));
    // Feed in small pieces: draining streams.
    let mut consumed = 0;
    let mut end = 0;
    while consumed < b.len() {
        end = (end + 1000).min(b.len());
        consumed += s.feed(&b[consumed..end]).unwrap();
    }
    let r = s.reply_types();
    assert_eq!(r[0], (OptionType::SetMetaContext, ReplyType::ErrTooBig));
    assert_eq!(r.last().unwrap(), &(OptionType::List, ReplyType::Ack));
    // 64 MiB announced: closed without reading it (CVE-2017-15119).
    let mut s = S::plain();
    let mut b = flags(3);
    let mut h = vec![0u8; 16];
    OptionHeaderRepr {
        option: OptionType::List,
        length: 64 << 20,
    }
    .emit(&mut h)
    .unwrap();
    b.extend(h);
    assert_eq!(
        s.feed(&b),
        Err(Error::OptionTooLarge {
            option: OptionType::List,
            length: 64 << 20
        })
    );
}

#[test]
fn option_data_rules() {
    let mut s = S::plain();
    let mut b = flags(3);
    b.extend(opt(OptionType::List, b"x"));
    b.extend(opt(OptionType::StructuredReply, b"x"));
    b.extend(opt(OptionType::ExtendedHeaders, b"x"));
    b.extend(opt(OptionType::StartTls, &[]));
    b.extend(opt(OptionType::PeekExport, &[]));
    b.extend(opt(OptionType::Unknown(99), b"abc"));
    b.extend(opt(OptionType::SetMetaContext, &[]));
    b.extend(opt(OptionType::Abort, b"ignored"));
    s.feed(&b).unwrap();
    assert_eq!(
        s.reply_types(),
        [
            (OptionType::List, ReplyType::ErrInvalid),
            (OptionType::StructuredReply, ReplyType::ErrInvalid),
            (OptionType::ExtendedHeaders, ReplyType::ErrInvalid),
            (OptionType::StartTls, ReplyType::ErrPolicy),
            (OptionType::PeekExport, ReplyType::ErrUnsup),
            (OptionType::Unknown(99), ReplyType::ErrUnsup),
            // meta contexts need structured replies first
            (OptionType::SetMetaContext, ReplyType::ErrInvalid),
            (OptionType::Abort, ReplyType::Ack),
        ]
    );
    assert_eq!(s.events, [Event::Finished]);
    // Data after ABORT is dropped unread.
    assert_eq!(s.feed(b"garbage").unwrap(), 7);
}

#[test]
fn info_go_abort_permutations() {
    // CVE-2019-14851: options in unexpected orders must never trip the server.
    let info = opt(OptionType::Info, &go_data(b"disk", &[1, 2, 3, 1, 77]));
    let bad_info = opt(OptionType::Info, &[0, 0, 0]);
    let go = opt(OptionType::Go, &go_data(b"disk", &[3]));
    let go_unknown = opt(OptionType::Go, &go_data(b"nope", &[]));
    let abort = opt(OptionType::Abort, &[]);
    let parts = [&info, &bad_info, &go, &go_unknown, &abort];
    // Every ordered pair and triple of the five.
    for a in 0..5 {
        for b in 0..5 {
            for c in 0..5 {
                let mut s = S::plain();
                let mut bytes = flags(3);
                for i in [a, b, c] {
                    bytes.extend_from_slice(parts[i]);
                }
                match s.feed(&bytes) {
                    Ok(consumed) => {
                        let ended = s.server.is_transmitting() || s.server.is_closed();
                        assert!(consumed == bytes.len() || ended, "{a}{b}{c}");
                    }
                    // After a successful GO the rest is read as requests: a bad magic.
                    Err(Error::Malformed(Malformed::BadMagic)) => {
                        assert!(
                            s.replies()
                                .iter()
                                .any(|r| r.0 == OptionType::Go && r.1 == ReplyType::Ack)
                        );
                    }
                    Err(e) => panic!("{a}{b}{c}: {e}"),
                }
            }
        }
    }
    // INFO then GO with the same parameters: the same information.
    let mut s = S::plain();
    let mut b = flags(3);
    b.extend(opt(OptionType::Info, &go_data(b"disk", &[1, 3])));
    b.extend(opt(OptionType::Go, &go_data(b"disk", &[1, 3])));
    s.feed(&b).unwrap();
    let r = s.replies();
    let infos = |o| {
        let mut v: Vec<Vec<u8>> = r
            .iter()
            .filter(|x| x.0 == o && x.1 == ReplyType::Info)
            .map(|x| x.2.clone())
            .collect();
        v.sort();
        v
    };
    assert_eq!(infos(OptionType::Info), infos(OptionType::Go));
    assert_eq!(infos(OptionType::Go).len(), 3);
    // A duplicate request and an unknown one are ignored.
    let mut s = S::plain();
    let mut b = flags(3);
    b.extend(info.clone());
    s.feed(&b).unwrap();
    let r = s.reply_types();
    // EXPORT, NAME, BLOCK_SIZE (no DESCRIPTION: it is empty), then ACK.
    assert_eq!(
        r,
        [
            (OptionType::Info, ReplyType::Info),
            (OptionType::Info, ReplyType::Info),
            (OptionType::Info, ReplyType::Info),
            (OptionType::Info, ReplyType::Ack)
        ]
    );
}

#[test]
fn truncated_handshakes_at_every_byte() {
    let mut full = flags(3);
    full.extend(opt(OptionType::StructuredReply, &[]));
    full.extend(opt(OptionType::SetMetaContext, &{
        let mut d = go_data(b"disk", &[]);
        d.truncate(8);
        d.extend_from_slice(&1u32.to_be_bytes());
        d.extend_from_slice(&15u32.to_be_bytes());
        d.extend_from_slice(b"base:allocation");
        d
    }));
    full.extend(opt(OptionType::Go, &go_data(b"disk", &[3])));
    full.extend(request(
        CommandType::Read,
        CommandFlags::empty(),
        1,
        0,
        512,
        false,
    ));
    for cut in 0..full.len() {
        let mut s = S::plain();
        let r = s.feed(&full[..cut]);
        assert!(r.is_ok(), "cut {cut}: {r:?}");
        // In negotiation an EOF is an error; in transmission a hard disconnect.
        let was_transmitting = s.server.is_transmitting();
        let eof = s.server.handle_eof();
        if was_transmitting {
            assert_eq!(eof, Ok(()), "cut {cut}");
        } else {
            assert_eq!(eof, Err(Error::UnexpectedEof), "cut {cut}");
        }
        assert!(s.server.is_closed(), "cut {cut}");
    }
}

#[test]
fn forced_tls_reveals_nothing() {
    let mut s = S::mode(TlsMode::Forced);
    let mut b = flags(3);
    for o in [
        opt(OptionType::List, &[]),
        opt(OptionType::Info, &go_data(b"disk", &[1, 2, 3])),
        opt(OptionType::Go, &go_data(b"disk", &[])),
        opt(OptionType::StructuredReply, &[]),
        opt(OptionType::ExtendedHeaders, &[]),
        opt(OptionType::ListMetaContext, &go_data(b"disk", &[])),
        opt(OptionType::Unknown(42), &[]),
    ] {
        b.extend(o);
    }
    s.feed(&b).unwrap();
    let r = s.replies();
    assert_eq!(r.len(), 7);
    for (o, t, d) in &r {
        assert_eq!(*t, ReplyType::ErrTlsReqd, "{o:?}");
        assert!(!std::str::from_utf8(d).unwrap().contains("disk"));
    }
    // EXPORT_NAME in the clear: hang up (it has no error reply).
    let mut s = S::mode(TlsMode::Forced);
    let mut b = flags(3);
    b.extend(opt(OptionType::ExportName, b"disk"));
    assert_eq!(s.feed(&b), Err(Error::TlsRequired));
    // A client without fixed newstyle cannot do TLS at all.
    let mut s = S::mode(TlsMode::Forced);
    assert_eq!(s.feed(&flags(0)), Err(Error::NotFixedNewstyle));
    // ABORT is allowed.
    let mut s = S::mode(TlsMode::Forced);
    let mut b = flags(3);
    b.extend(opt(OptionType::Abort, &[]));
    s.feed(&b).unwrap();
    assert_eq!(s.reply_types(), [(OptionType::Abort, ReplyType::Ack)]);
}

#[test]
fn starttls_stops_at_the_exact_byte_and_forgets_everything() {
    // CVE-2021-3716: STRUCTURED_REPLY and meta contexts before STARTTLS, and bytes pipelined
    // right after it, must have no effect after TLS.
    for mode in [TlsMode::Forced, TlsMode::Selective] {
        let mut s = S::mode(mode);
        let mut b = flags(3);
        if mode == TlsMode::Selective {
            b.extend(opt(OptionType::StructuredReply, &[]));
            b.extend(opt(OptionType::ExtendedHeaders, &[]));
        }
        let start = b.len();
        b.extend(opt(OptionType::StartTls, &[]));
        let end = b.len();
        let injected = opt(OptionType::StructuredReply, &[]);
        b.extend(&injected);
        let consumed = s.feed(&b).unwrap();
        assert_eq!(
            consumed, end,
            "consumed exactly through STARTTLS ({start}..{end})"
        );
        assert_eq!(s.events, [Event::StartTls]);
        assert_eq!(s.replies().last().unwrap().1, ReplyType::Ack);
        // The injected bytes are not parsed while TLS is pending.
        assert_eq!(s.server.handle_input(&injected).unwrap().consumed, 0);
        s.server.tls_established().unwrap();
        // After TLS: GO without asking for structured replies ⇒ simple replies.
        let mut b = opt(OptionType::Go, &go_data(b"disk", &[]));
        b.extend(request(
            CommandType::Read,
            CommandFlags::empty(),
            7,
            0,
            512,
            false,
        ));
        s.feed(&b).unwrap();
        let Some(Event::Ready(r)) = s.events.last().copied() else {
            panic!("not ready")
        };
        assert_eq!(r.style, HeaderStyle::Simple);
        assert!(!r.flags.contains(TransmissionFlags::SEND_DF));
        assert_eq!(s.lent.len(), 1);
        s.out.clear();
        let mut out = [0u8; 16];
        let req = s.lent[0];
        assert_eq!(
            s.server.reply_read_data(&req, 0, 512, true, &mut out),
            Ok(16)
        );
        assert_eq!(&out[..4], &SIMPLE_REPLY_MAGIC.to_be_bytes());
    }
}

#[test]
fn second_starttls_and_starttls_with_data() {
    let mut s = S::mode(TlsMode::Forced);
    let mut b = flags(3);
    b.extend(opt(OptionType::StartTls, b"x"));
    b.extend(opt(OptionType::StartTls, &[]));
    s.feed(&b).unwrap();
    assert_eq!(
        s.reply_types(),
        [
            (OptionType::StartTls, ReplyType::ErrInvalid),
            (OptionType::StartTls, ReplyType::Ack)
        ]
    );
    s.server.tls_established().unwrap();
    assert_eq!(
        s.server.tls_established(),
        Err(nbd_core::error::CommandError::InvalidState)
    );
    s.feed(&opt(OptionType::StartTls, &[])).unwrap();
    assert_eq!(
        s.reply_types(),
        [(OptionType::StartTls, ReplyType::ErrInvalid)]
    );
}

#[test]
fn plain_newstyle_clients() {
    // No FIXED_NEWSTYLE, no NO_ZEROES: EXPORT_NAME works and gets the 124 zero bytes.
    let mut s = S::plain();
    let mut b = flags(0);
    b.extend(opt(OptionType::ExportName, b"disk"));
    s.feed(&b).unwrap();
    assert_eq!(s.out.len(), 134);
    assert!(s.out[10..].iter().all(|&x| x == 0));
    assert!(s.server.is_transmitting());
    // Any other option: no way to answer, hang up.
    let mut s = S::plain();
    let mut b = flags(0);
    b.extend(opt(OptionType::List, &[]));
    assert_eq!(s.feed(&b), Err(Error::NotFixedNewstyle));
}

#[test]
fn bad_requests_get_the_spec_errors() {
    let mut s = transmitting(b"disk", false, false);
    let size = 1u64 << 20;
    let mut b = Vec::new();
    b.extend(request(
        CommandType::Unknown(99),
        CommandFlags::empty(),
        1,
        0,
        0,
        false,
    ));
    b.extend(request(
        CommandType::Read,
        CommandFlags::REQ_ONE,
        2,
        0,
        512,
        false,
    ));
    b.extend(request(
        CommandType::Read,
        CommandFlags::DF,
        3,
        0,
        512,
        false,
    )); // DF needs SR
    b.extend(request(
        CommandType::Read,
        CommandFlags::empty(),
        4,
        size - 256,
        512,
        false,
    ));
    b.extend(request(
        CommandType::Write,
        CommandFlags::empty(),
        5,
        size - 256,
        512,
        false,
    ));
    b.extend(vec![0xAB; 512]);
    b.extend(request(
        CommandType::Flush,
        CommandFlags::empty(),
        6,
        1,
        0,
        false,
    ));
    b.extend(request(
        CommandType::BlockStatus,
        CommandFlags::empty(),
        7,
        0,
        512,
        false,
    ));
    b.extend(request(
        CommandType::Read,
        CommandFlags::empty(),
        8,
        0,
        0,
        false,
    ));
    b.extend(request(
        CommandType::Read,
        CommandFlags::empty(),
        9,
        u64::MAX - 10,
        512,
        false,
    ));
    b.extend(request(
        CommandType::Read,
        CommandFlags::PAYLOAD_LEN,
        10,
        0,
        512,
        false,
    ));
    b.extend(request(
        CommandType::Read,
        CommandFlags::empty(),
        11,
        0,
        512,
        false,
    ));
    assert_eq!(s.feed(&b).unwrap(), b.len());
    let r = simple_replies(&s.out);
    assert_eq!(
        r,
        [
            (22, 1),
            (22, 2),
            (22, 3),
            (22, 4),
            (28, 5),
            (22, 6),
            (22, 7),
            (0, 8),
            (22, 9),
            (22, 10)
        ]
    );
    // The rejected WRITE's payload was drained, not lent, and the next request was parsed.
    assert!(s.writes.is_empty());
    assert_eq!(s.lent.len(), 1);
    assert_eq!(s.lent[0].cookie, 11);
}

#[test]
fn read_only_and_limits() {
    let mut s = transmitting(b"ro", false, false);
    let mut b = request(CommandType::Write, CommandFlags::empty(), 1, 0, 4096, false);
    b.extend(vec![1u8; 4096]);
    b.extend(request(
        CommandType::Trim,
        CommandFlags::empty(),
        2,
        0,
        4096,
        false,
    ));
    b.extend(request(
        CommandType::WriteZeroes,
        CommandFlags::empty(),
        3,
        0,
        4096,
        false,
    ));
    b.extend(request(
        CommandType::Read,
        CommandFlags::empty(),
        4,
        0,
        4096,
        false,
    ));
    assert_eq!(s.feed(&b).unwrap(), b.len());
    assert_eq!(simple_replies(&s.out), [(1, 1), (1, 2), (1, 3)]);
    assert_eq!(s.lent.len(), 1);
    // A write payload over the maximum: hang up before reading it.
    let mut s = transmitting(b"disk", false, false);
    let b = request(
        CommandType::Write,
        CommandFlags::empty(),
        1,
        0,
        64 << 20,
        false,
    );
    assert!(matches!(s.feed(&b), Err(Error::PayloadTooLarge { .. })));
    // A READ over the maximum payload: EOVERFLOW.
    let mut s = transmitting(b"disk", false, false);
    let _ = s.feed(&request(
        CommandType::Read,
        CommandFlags::empty(),
        1,
        0,
        64 << 20,
        false,
    ));
    // (the export is 1 MiB: out of bounds first)
    assert_eq!(simple_replies(&s.out), [(22, 1)]);
    // A wrong magic is fatal.
    let mut s = transmitting(b"disk", false, false);
    let mut b = request(CommandType::Read, CommandFlags::empty(), 1, 0, 512, false);
    b[0] ^= 1;
    assert_eq!(s.feed(&b), Err(Error::Malformed(Malformed::BadMagic)));
}

#[test]
fn extended_payloads() {
    let mut s = transmitting(b"disk", false, true);
    let mut b = Vec::new();
    // PAYLOAD_LEN on a FLUSH: the payload is consumed, then EINVAL.
    b.extend(request(
        CommandType::Flush,
        CommandFlags::PAYLOAD_LEN,
        1,
        0,
        100,
        true,
    ));
    b.extend(vec![7u8; 100]);
    // An extended WRITE without PAYLOAD_LEN, as QEMU sends them: the payload is read anyway.
    b.extend(request(
        CommandType::Write,
        CommandFlags::empty(),
        2,
        0,
        512,
        true,
    ));
    b.extend(vec![8u8; 512]);
    // A proper one.
    b.extend(request(
        CommandType::Write,
        CommandFlags::PAYLOAD_LEN,
        3,
        0,
        512,
        true,
    ));
    b.extend(vec![9u8; 512]);
    // PAYLOAD_LEN on a READ: payload drained, EINVAL.
    b.extend(request(
        CommandType::Read,
        CommandFlags::PAYLOAD_LEN,
        4,
        0,
        16,
        true,
    ));
    b.extend(vec![7u8; 16]);
    assert_eq!(s.feed(&b).unwrap(), b.len());
    assert_eq!(s.lent.len(), 2);
    let mut expect = vec![8u8; 512];
    expect.extend(vec![9u8; 512]);
    assert_eq!(s.writes, expect);
    // Two extended ERROR chunks, each with the request offset.
    let mut pos = 0;
    let mut seen = Vec::new();
    while pos < s.out.len() {
        let h = ChunkHeaderRepr::parse(&s.out[pos..]).unwrap().unwrap();
        assert!(h.extended);
        assert_eq!(h.chunk, ChunkType::Error);
        assert!(h.flags.contains(ReplyFlags::DONE));
        let e = ErrorChunkRepr::parse(&s.out[pos + 32..pos + 32 + h.length as usize], false, true)
            .unwrap();
        seen.push((h.cookie, e.error));
        pos += 32 + h.length as usize;
    }
    assert_eq!(seen, [(1, 22), (4, 22)]);
}

#[test]
fn disconnect_waits_for_replies() {
    let mut s = transmitting(b"disk", true, false);
    let mut b = request(CommandType::Read, CommandFlags::empty(), 1, 0, 512, false);
    b.extend(request(
        CommandType::Disc,
        CommandFlags::empty(),
        2,
        0,
        0,
        false,
    ));
    b.extend(b"trailing junk after DISC");
    assert_eq!(s.feed(&b).unwrap(), b.len());
    assert!(!s.events.contains(&Event::Finished));
    let req = s.lent[0];
    let mut out = [0u8; 64];
    s.server
        .reply_read_hole(&req, 0, 512, true, &mut out)
        .unwrap();
    s.drain();
    assert_eq!(s.events.last(), Some(&Event::Finished));
    assert!(s.server.is_closed());
}

#[test]
fn handshake_deadline() {
    let mut c = ServerConfig::new(&EXPORTS);
    c.handshake_timeout = Some(Duration::from_secs(5));
    let mut s = S::new(c);
    assert_eq!(s.server.poll_timeout(), Some(Instant::from_millis(5000)));
    s.server.handle_timeout(Instant::from_millis(4999));
    assert!(!s.server.is_closed());
    s.server.handle_timeout(Instant::from_millis(5000));
    s.drain();
    assert_eq!(s.events, [Event::TimedOut]);
    assert!(s.server.is_closed());
    // No deadline once transmitting.
    let s = transmitting(b"disk", false, false);
    assert_eq!(s.server.poll_timeout(), None);
}

#[test]
fn config_is_validated() {
    use nbd_core::export::ConfigError;
    static DUP: [Export<'static>; 2] = [Export::new("a", 1), Export::new("a", 2)];
    assert_eq!(
        ServerConfig::new(&DUP).validate(),
        Err(ConfigError::DuplicateName)
    );
    let mut c = ServerConfig::new(&EXPORTS);
    c.default_export = Some(5);
    assert_eq!(c.validate(), Err(ConfigError::BadDefaultExport));
    let mut c = ServerConfig::new(&EXPORTS);
    c.max_option_len = 100;
    assert_eq!(c.validate(), Err(ConfigError::OptionLimitTooSmall));
    c.max_name_len = 64;
    assert_eq!(c.validate(), Ok(()));
    assert!(c.input_buffer_len() >= 116);
}

#[test]
fn state_sizes() {
    let server = core::mem::size_of::<Server<'static>>();
    let client = core::mem::size_of::<nbd_core::client::Client<16>>();
    println!("size_of::<Server>() = {server}, size_of::<Client<16>>() = {client}");
    assert!(server <= 1024, "server state {server} bytes");
    assert!(client <= 1024, "client state {client} bytes");
}
