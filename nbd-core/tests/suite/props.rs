//! Property tests: wire round trips and panic-freedom, split invariance of client and server,
//! and the TLS policy over random option sequences.

use proptest::prelude::*;

use crate::harness::*;
use crate::pair::plan;
use nbd_core::client::{ClientConfig, Goal, TlsPolicy};
use nbd_core::export::Export;
use nbd_core::server::{Event, Lent, Server, ServerConfig, TlsMode};
use nbd_core::time::Instant;
use nbd_core::wire::*;

const SIZE: usize = 256 * 1024;
static EXPORTS: [Export<'static>; 1] = [Export::new("disk", SIZE as u64)];

fn any_option() -> impl Strategy<Value = OptionType> {
    (0u32..14).prop_map(OptionType::from)
}

proptest! {
    #[test]
    fn request_round_trip(flags: u16, cmd in 0u16..10, cookie: u64, offset: u64, len: u32, ext: bool, elen: u64) {
        let r = RequestRepr {
            flags: CommandFlags::from_bits_retain(flags),
            command: cmd.into(),
            cookie,
            offset,
            length: if ext { elen } else { u64::from(len) },
        };
        let mut buf = [0u8; 32];
        let n = r.emit(&mut buf, ext).unwrap();
        prop_assert_eq!(RequestRepr::parse(&buf[..n], ext), Ok(Some(r)));
    }

    #[test]
    fn reply_round_trips(error: u32, cookie: u64, flags: u16, chunk: u16, offset: u64, len: u32, elen: u64, ext: bool) {
        let s = SimpleReplyRepr { error, cookie };
        let mut buf = [0u8; 32];
        s.emit(&mut buf).unwrap();
        prop_assert_eq!(SimpleReplyRepr::parse(&buf[..16]), Ok(Some(s)));
        let c = ChunkHeaderRepr {
            flags: ReplyFlags::from_bits_retain(flags),
            chunk: chunk.into(),
            cookie,
            offset: if ext { offset } else { 0 },
            length: if ext { elen } else { u64::from(len) },
            extended: ext,
        };
        let n = c.emit(&mut buf).unwrap();
        prop_assert_eq!(ChunkHeaderRepr::parse(&buf[..n]), Ok(Some(c)));
    }

    #[test]
    fn option_round_trips(o in any_option(), r: u32, len: u32, name in "[a-z0-9/:.-]{0,64}", reqs in proptest::collection::vec(0u16..6, 0..6), queries in proptest::collection::vec("[a-z]{1,8}:[a-z]{0,12}", 0..5)) {
        let mut buf = vec![0u8; 1024];
        let h = OptionHeaderRepr { option: o, length: len };
        h.emit(&mut buf).unwrap();
        prop_assert_eq!(OptionHeaderRepr::parse(&buf), Ok(Some(h)));
        let h = OptionReplyHeaderRepr { option: o, reply: r.into(), length: len };
        h.emit(&mut buf).unwrap();
        prop_assert_eq!(OptionReplyHeaderRepr::parse(&buf), Ok(Some(h)));
        let reqs: Vec<InfoType> = reqs.into_iter().map(InfoType::from).collect();
        let n = InfoRequestRepr::emit_data(&name, &reqs, &mut buf).unwrap();
        let p = InfoRequestRepr::parse(&buf[..n]).unwrap();
        prop_assert_eq!(p.name, name.as_bytes());
        prop_assert_eq!(p.requests().collect::<Vec<_>>(), reqs);
        let q: Vec<&str> = queries.iter().map(|s| s.as_str()).collect();
        let n = MetaContextRequestRepr::emit_data(&name, &q, &mut buf).unwrap();
        let p = MetaContextRequestRepr::parse(&buf[..n]).unwrap();
        prop_assert_eq!(p.queries().collect::<Vec<_>>(), q.iter().map(|s| s.as_bytes()).collect::<Vec<_>>());
        let s = ServerReplyRepr { name: &name, description: &name };
        let n = s.emit(&mut buf).unwrap();
        prop_assert_eq!(ServerReplyRepr::parse(&buf[..n]), Ok(s));
        for i in [
            InfoReplyRepr::Name(&name),
            InfoReplyRepr::Description(&name),
            InfoReplyRepr::Export { size: u64::from(len), flags: TransmissionFlags::from_bits_retain(r as u16) },
        ] {
            let n = i.emit(&mut buf).unwrap();
            prop_assert_eq!(InfoReplyRepr::parse(&buf[..n]), Ok(i));
        }
    }

    #[test]
    fn parsers_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200), ext: bool) {
        let _ = GreetingRepr::parse(&bytes);
        let _ = OptionHeaderRepr::parse(&bytes);
        let _ = OptionReplyHeaderRepr::parse(&bytes);
        let _ = InfoRequestRepr::parse(&bytes).map(|r| r.requests().count());
        let _ = MetaContextRequestRepr::parse(&bytes).map(|r| r.queries().count());
        let _ = ServerReplyRepr::parse(&bytes);
        let _ = InfoReplyRepr::parse(&bytes);
        let _ = MetaContextReplyRepr::parse(&bytes);
        let _ = RequestRepr::parse(&bytes, ext);
        let _ = SimpleReplyRepr::parse(&bytes);
        let _ = ChunkHeaderRepr::parse(&bytes);
        let _ = ErrorChunkRepr::parse(&bytes, ext, ext);
        let _ = ExtentsView::new(&bytes, ext).iter().count();
        let _ = ExportNameReplyRepr::parse(&bytes, ext);
    }

    /// Any bytes into a server (after a valid greeting exchange or not) give replies or a clean
    /// error, never a panic, and never an unbounded loop.
    #[test]
    fn server_survives_garbage(prefix in 0usize..3, bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
        let mut server = Server::new(ServerConfig::new(&EXPORTS), Instant::ZERO).unwrap();
        let mut input = Vec::new();
        if prefix > 0 { input.extend_from_slice(&3u32.to_be_bytes()); }
        if prefix > 1 { input.extend_from_slice(b"IHAVEOPT\0\0\0\x07\0\0\0\x0a\0\0\0\x04disk\0\0"); }
        input.extend_from_slice(&bytes);
        let mut out = [0u8; 8192];
        let mut pos = 0;
        for _ in 0..10_000 {
            while let Ok(Some(_)) = server.poll_transmit(&mut out) {}
            match server.handle_input(&input[pos..]) {
                Err(_) => break,
                Ok(p) => {
                    pos += p.consumed;
                    if let Some(Lent::Request(r)) = p.lent {
                        let _ = server.reply_error(&r, ErrorCode::Io, "x", &mut out);
                    }
                    if p.consumed == 0 && p.lent.is_none() && !matches!(server.poll_transmit(&mut out), Ok(Some(_))) {
                        break;
                    }
                }
            }
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Read(u64, u64),
    Write(u64, Vec<u8>),
    Trim(u64, u64),
    Zero(u64, u64),
    Status(u64, u64, bool),
}

fn any_op() -> impl Strategy<Value = Op> {
    let range = (0u64..(SIZE as u64 / 512 - 1))
        .prop_flat_map(|b| (Just(b * 512), 1u64..((SIZE as u64 - b * 512) / 512).min(64)));
    prop_oneof![
        range.clone().prop_map(|(o, l)| Op::Read(o, l * 512)),
        (
            0u64..(SIZE as u64 / 512 - 16),
            proptest::collection::vec(any::<u8>(), 1..3000)
        )
            .prop_map(|(b, d)| Op::Write(b * 512, d)),
        range.clone().prop_map(|(o, l)| Op::Trim(o, l * 512)),
        range.clone().prop_map(|(o, l)| Op::Zero(o, l * 512)),
        (range, any::<bool>()).prop_map(|((o, l), one)| Op::Status(o, l * 512, one)),
    ]
}

/// Runs a whole conversation; returns what the client saw, the server's events and the disk.
fn scenario(
    cuts: Vec<usize>,
    tls: bool,
    eh: bool,
    sr: bool,
    ops: &[Op],
) -> (Vec<Rec>, Vec<Event>, Vec<u8>) {
    let mut config = ServerConfig::new(&EXPORTS);
    config.tls = if tls { TlsMode::Forced } else { TlsMode::Off };
    let policy = if tls {
        TlsPolicy::Require
    } else {
        TlsPolicy::Disable
    };
    let mut p = Pair::new(
        config,
        ClientConfig::new().with_tls_required(tls),
        pattern_disk(SIZE),
    )
    .with_plan(plan(Goal::Go, policy, eh, sr, true));
    p.cuts = cuts;
    p.drive().unwrap();
    for (i, op) in ops.iter().enumerate() {
        let c = i as u64;
        let r = match op {
            Op::Read(o, l) => p.request(CommandType::Read, CommandFlags::empty(), c, *o, *l, None),
            Op::Write(o, d) => p.request(
                CommandType::Write,
                CommandFlags::empty(),
                c,
                *o,
                d.len() as u64,
                Some(d),
            ),
            Op::Trim(o, l) => p.request(CommandType::Trim, CommandFlags::empty(), c, *o, *l, None),
            Op::Zero(o, l) => p.request(
                CommandType::WriteZeroes,
                CommandFlags::empty(),
                c,
                *o,
                *l,
                None,
            ),
            Op::Status(o, l, one) => {
                let f = if *one {
                    CommandFlags::REQ_ONE
                } else {
                    CommandFlags::empty()
                };
                p.request(CommandType::BlockStatus, f, c, *o, *l, None)
            }
        };
        // Not every negotiation allows every command (block status needs structured replies).
        if r.is_ok() && i % 3 == 2 {
            p.drive().unwrap();
        }
    }
    p.drive().unwrap();
    (p.log, p.server_events, p.disk)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Feeding the same bytes in any split gives the same events and results, on both sides.
    #[test]
    fn split_invariance(cuts in proptest::collection::vec(1usize..300, 1..12), tls: bool, eh: bool, sr: bool, ops in proptest::collection::vec(any_op(), 0..12)) {
        let whole = scenario(Vec::new(), tls, eh, sr, &ops);
        let split = scenario(cuts.clone(), tls, eh, sr, &ops);
        let bytes = scenario(vec![1], tls, eh, sr, &ops);
        prop_assert_eq!(&whole, &split);
        prop_assert_eq!(&whole, &bytes);
    }

    /// FORCEDTLS: before STARTTLS every option but STARTTLS and ABORT gets ERR_TLS_REQD, so no
    /// export name, size, flag or list ever leaves in the clear.
    #[test]
    fn forced_tls_reveals_nothing(opts in proptest::collection::vec((any_option(), proptest::collection::vec(any::<u8>(), 0..40)), 1..20)) {
        let mut config = ServerConfig::new(&EXPORTS);
        config.tls = TlsMode::Forced;
        let mut server = Server::new(config, Instant::ZERO).unwrap();
        let mut input = 3u32.to_be_bytes().to_vec();
        for (o, d) in &opts {
            if *o == OptionType::StartTls || *o == OptionType::Abort { continue; }
            let mut h = [0u8; 16];
            OptionHeaderRepr { option: *o, length: d.len() as u32 }.emit(&mut h).unwrap();
            input.extend_from_slice(&h);
            input.extend_from_slice(d);
        }
        let mut out = Vec::new();
        let mut buf = [0u8; 4096];
        let mut pos = 0;
        loop {
            while let Some(n) = server.poll_transmit(&mut buf).unwrap() { out.extend_from_slice(&buf[..n]); }
            match server.handle_input(&input[pos..]) {
                Err(e) => { prop_assert_eq!(e, nbd_core::error::Error::TlsRequired); break; }
                Ok(p) if p.consumed == 0 => break,
                Ok(p) => pos += p.consumed,
            }
        }
        // Skip the greeting, then every reply must be TLS_REQD.
        let mut at = 18;
        while at < out.len() {
            let h = OptionReplyHeaderRepr::parse(&out[at..]).unwrap().unwrap();
            prop_assert_eq!(h.reply, ReplyType::ErrTlsReqd);
            at += 20 + h.length as usize;
        }
    }

    /// Options sent before STARTTLS (structured replies, extended headers, meta contexts) have no
    /// effect after it.
    #[test]
    fn nothing_survives_starttls(before in proptest::collection::vec(0u8..4, 0..8), forced: bool) {
        let mut config = ServerConfig::new(&EXPORTS);
        config.tls = if forced { TlsMode::Forced } else { TlsMode::Selective };
        let mut server = Server::new(config, Instant::ZERO).unwrap();
        let opt = |o: OptionType, d: &[u8]| {
            let mut v = vec![0u8; 16];
            OptionHeaderRepr { option: o, length: d.len() as u32 }.emit(&mut v).unwrap();
            v.extend_from_slice(d);
            v
        };
        let mut meta = vec![0u8; 64];
        let n = MetaContextRequestRepr::emit_data("disk", &["base:allocation"], &mut meta).unwrap();
        meta.truncate(n);
        let mut input = 3u32.to_be_bytes().to_vec();
        for b in before {
            input.extend(match b {
                0 => opt(OptionType::StructuredReply, &[]),
                1 => opt(OptionType::ExtendedHeaders, &[]),
                2 => opt(OptionType::SetMetaContext, &meta),
                _ => opt(OptionType::Info, &[0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 0]),
            });
        }
        input.extend(opt(OptionType::StartTls, &[]));
        let mut buf = [0u8; 4096];
        let mut pos = 0;
        let mut events = Vec::new();
        let mut run = |server: &mut Server<'_>, input: &[u8], pos: &mut usize, events: &mut Vec<Event>| loop {
            while server.poll_transmit(&mut buf).unwrap().is_some() {}
            while let Some(e) = server.poll_event() { events.push(e); }
            let p = server.handle_input(&input[*pos..]).unwrap();
            if p.consumed == 0 { break; }
            *pos += p.consumed;
        };
        run(&mut server, &input, &mut pos, &mut events);
        prop_assert_eq!(pos, input.len());
        prop_assert_eq!(events.last(), Some(&Event::StartTls));
        server.tls_established().unwrap();
        let input2 = opt(OptionType::Go, &[0, 0, 0, 4, b'd', b'i', b's', b'k', 0, 0]);
        let mut pos2 = 0;
        run(&mut server, &input2, &mut pos2, &mut events);
        while server.poll_transmit(&mut buf).unwrap().is_some() {}
        while let Some(e) = server.poll_event() { events.push(e); }
        let Some(Event::Ready(r)) = events.last().copied() else { panic!("no Ready: {events:?}") };
        prop_assert_eq!(r.style, HeaderStyle::Simple);
        prop_assert!(!r.base_allocation);
        prop_assert!(!r.flags.contains(TransmissionFlags::SEND_DF | TransmissionFlags::BLOCK_STATUS_PAYLOAD));
    }
}
