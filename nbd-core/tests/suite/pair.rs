//! Our client against our server, for every option and command.

use crate::harness::*;
use nbd_core::client::{self, ClientConfig, Goal, Plan, TlsPolicy};
use nbd_core::error::CommandError;
use nbd_core::export::{Export, ExportFeatures};
use nbd_core::server::{self, ServerConfig, TlsMode};
use nbd_core::wire::*;

const SIZE: usize = 1 << 20;

pub(crate) fn plan<'a>(goal: Goal, tls: TlsPolicy, eh: bool, sr: bool, meta: bool) -> Plan<'a> {
    const META: &[&str] = &["base:allocation"];
    Plan {
        export: "disk",
        tls,
        extended_headers: eh,
        structured_replies: sr,
        meta_contexts: if meta { META } else { &[] },
        goal,
    }
}

fn ready(p: &Pair<'_>) -> client::ExportInfo {
    p.log
        .iter()
        .find_map(|r| match r {
            Rec::Event(client::Event::Ready(i)) => Some(*i),
            _ => None,
        })
        .expect("client reached transmission")
}

fn server_ready(p: &Pair<'_>) -> server::Ready {
    p.server_events
        .iter()
        .find_map(|e| match e {
            server::Event::Ready(r) => Some(*r),
            _ => None,
        })
        .expect("server reached transmission")
}

/// Every command, checked against a model of the disk.
pub(crate) fn exercise(p: &mut Pair<'_>) {
    let mut model = p.disk.clone();
    let info = ready(p);
    assert_eq!(info.size, SIZE as u64);
    let t = info.flags;
    let style = p.client.style();

    // Reads spanning data and zero blocks.
    for (i, (off, len)) in [
        (0u64, 65536u64),
        (4096, 4096),
        (5000, 10000),
        (SIZE as u64 - 8192, 8192),
    ]
    .into_iter()
    .enumerate()
    {
        let cookie = 100 + i as u64;
        p.request(
            CommandType::Read,
            CommandFlags::empty(),
            cookie,
            off,
            len,
            None,
        )
        .unwrap();
        p.drive().unwrap();
        let got = p
            .read_result(cookie, off, len as usize)
            .expect("read completed");
        assert_eq!(
            got,
            model[off as usize..(off + len) as usize],
            "read {off}+{len}"
        );
    }
    // A write with FUA, read back.
    let data: Vec<u8> = (0..12288u32).map(|i| (i % 251) as u8 + 1).collect();
    p.request(
        CommandType::Write,
        CommandFlags::FUA,
        200,
        8192,
        data.len() as u64,
        Some(&data),
    )
    .unwrap();
    p.drive().unwrap();
    assert_eq!(p.done(200), Some(Ok(())));
    model[8192..8192 + data.len()].copy_from_slice(&data);
    assert_eq!(p.disk, model);
    // FLUSH, TRIM, WRITE_ZEROES (NO_HOLE), CACHE.
    assert!(t.contains(TransmissionFlags::SEND_FLUSH | TransmissionFlags::SEND_TRIM));
    p.request(CommandType::Flush, CommandFlags::empty(), 201, 0, 0, None)
        .unwrap();
    p.request(CommandType::Trim, CommandFlags::empty(), 202, 0, 4096, None)
        .unwrap();
    p.request(
        CommandType::WriteZeroes,
        CommandFlags::NO_HOLE,
        203,
        16384,
        4096,
        None,
    )
    .unwrap();
    p.request(
        CommandType::Cache,
        CommandFlags::empty(),
        204,
        0,
        65536,
        None,
    )
    .unwrap();
    p.drive().unwrap();
    for c in 201..=204 {
        assert_eq!(p.done(c), Some(Ok(())), "cookie {c}");
    }
    model[..4096].fill(0);
    model[16384..20480].fill(0);
    assert_eq!(p.disk, model);
    // FAST_ZERO: the backend refuses unaligned ones with ENOTSUP, which must come back.
    assert!(t.contains(TransmissionFlags::SEND_FAST_ZERO));
    p.request(
        CommandType::WriteZeroes,
        CommandFlags::FAST_ZERO,
        205,
        512,
        512,
        None,
    )
    .unwrap();
    p.drive().unwrap();
    assert_eq!(p.done(205), Some(Err(ErrorCode::NotSup)));
    assert_eq!(p.disk, model);
    // DF: one data chunk even over holes.
    if style != HeaderStyle::Simple {
        assert!(t.contains(TransmissionFlags::SEND_DF));
        p.request(CommandType::Read, CommandFlags::DF, 206, 0, 32768, None)
            .unwrap();
        p.drive().unwrap();
        assert_eq!(p.read_result(206, 0, 32768).unwrap(), model[..32768]);
        let chunks = p
            .log
            .iter()
            .filter(|r| matches!(r, Rec::Data(206, ..) | Rec::Hole(206, ..)))
            .count();
        assert_eq!(chunks, 1);
    } else {
        assert!(!t.contains(TransmissionFlags::SEND_DF));
        assert_eq!(
            p.request(CommandType::Read, CommandFlags::DF, 206, 0, 512, None),
            Err(CommandError::NotSupported(
                "command flag not advertised for this command"
            ))
        );
    }
}

fn block_status(p: &mut Pair<'_>) {
    let model = p.disk.clone();
    p.request(
        CommandType::BlockStatus,
        CommandFlags::empty(),
        300,
        0,
        65536,
        None,
    )
    .unwrap();
    p.request(
        CommandType::BlockStatus,
        CommandFlags::REQ_ONE,
        301,
        4096,
        4096 * 3,
        None,
    )
    .unwrap();
    p.drive().unwrap();
    assert_eq!(p.done(300), Some(Ok(())));
    assert_eq!(p.done(301), Some(Ok(())));
    let ext = |c| {
        p.log
            .iter()
            .find_map(|r| match r {
                Rec::Extents(cc, ctx, e) if *cc == c => Some((*ctx, e.clone())),
                _ => None,
            })
            .unwrap()
    };
    let (ctx, e) = ext(300);
    assert_eq!(ctx, server::BASE_ALLOCATION_ID);
    // The extents describe the disk: zero blocks are HOLE|ZERO.
    let mut pos = 0usize;
    for x in &e {
        let zero = model[pos..pos + x.length as usize].iter().all(|&b| b == 0);
        assert_eq!(x.flags == 3, zero, "extent at {pos}");
        pos += x.length as usize;
    }
    assert_eq!(pos, 65536);
    let (_, one) = ext(301);
    assert_eq!(one.len(), 1);
    assert!(one[0].length <= 4096 * 3);
}

fn config(exports: &'static [Export<'static>]) -> ServerConfig<'static> {
    ServerConfig::new(exports)
}

/// A pair serving `exports` over a patterned disk, the client negotiating `plan`.
fn pair(exports: &'static [Export<'static>], plan: Plan<'static>) -> Pair<'static> {
    Pair::new(config(exports), ClientConfig::default(), pattern_disk(SIZE)).with_plan(plan)
}

static EXPORTS: [Export<'static>; 2] = [
    Export::new("disk", SIZE as u64).with_description("the disk"),
    Export::new("iso", SIZE as u64)
        .with_read_only(true)
        .with_description(""),
];

#[test]
fn simple_replies_every_command() {
    let mut p = pair(
        &EXPORTS,
        plan(Goal::Go, TlsPolicy::Disable, false, false, false),
    );
    p.drive().unwrap();
    assert_eq!(server_ready(&p).style, HeaderStyle::Simple);
    exercise(&mut p);
    assert_eq!(
        p.request(
            CommandType::BlockStatus,
            CommandFlags::empty(),
            1,
            0,
            512,
            None
        ),
        Err(CommandError::NotSupported("no metadata context negotiated"))
    );
}

#[test]
fn structured_replies_holes_and_block_status() {
    let mut p = pair(
        &EXPORTS,
        plan(Goal::Go, TlsPolicy::Disable, false, true, true),
    );
    p.drive().unwrap();
    let r = server_ready(&p);
    assert_eq!(r.style, HeaderStyle::Structured);
    assert!(r.base_allocation);
    assert!(
        p.log
            .iter()
            .any(|r| matches!(r, Rec::Meta(1, n) if n == "base:allocation"))
    );
    exercise(&mut p);
    // Holes were used for zero blocks.
    assert!(p.log.iter().any(|r| matches!(r, Rec::Hole(..))));
    block_status(&mut p);
}

#[test]
fn extended_headers_every_command() {
    let mut p = pair(
        &EXPORTS,
        plan(Goal::Go, TlsPolicy::Disable, true, true, true),
    );
    p.drive().unwrap();
    let r = server_ready(&p);
    assert_eq!(r.style, HeaderStyle::Extended);
    assert!(r.flags.contains(TransmissionFlags::BLOCK_STATUS_PAYLOAD));
    // Extended headers take precedence: structured replies were not even asked.
    assert!(
        !p.log
            .iter()
            .any(|r| matches!(r, Rec::OptionDone(OptionType::StructuredReply, _)))
    );
    exercise(&mut p);
    block_status(&mut p);
}

#[test]
fn every_command_in_every_cut() {
    for cut in [1usize, 3, 7, 19, 4096] {
        let mut p = pair(
            &EXPORTS,
            plan(Goal::Go, TlsPolicy::Disable, false, true, true),
        );
        p.cuts = vec![cut];
        p.drive().unwrap();
        exercise(&mut p);
        block_status(&mut p);
    }
}

#[test]
fn many_requests_in_flight() {
    let mut p = pair(
        &EXPORTS,
        plan(Goal::Go, TlsPolicy::Disable, false, true, false),
    );
    p.drive().unwrap();
    p.batch = 16;
    let model = p.disk.clone();
    for c in 0..16u64 {
        p.request(
            CommandType::Read,
            CommandFlags::empty(),
            c,
            c * 8192,
            8192,
            None,
        )
        .unwrap();
    }
    assert_eq!(p.client.in_flight(), 16);
    assert!(!p.client.can_send_request());
    assert_eq!(
        p.request(CommandType::Read, CommandFlags::empty(), 99, 0, 512, None),
        Err(CommandError::TooManyInFlight)
    );
    p.drive().unwrap();
    assert_eq!(p.server.in_flight(), 0);
    for c in 0..16u64 {
        let o = (c * 8192) as usize;
        assert_eq!(
            p.read_result(c, c * 8192, 8192).unwrap(),
            model[o..o + 8192]
        );
    }
}

#[test]
fn info_list_and_abort() {
    let mut p = pair(
        &EXPORTS,
        plan(Goal::Info, TlsPolicy::Disable, false, false, false),
    );
    p.drive().unwrap();
    assert!(p.log.contains(&Rec::Info(
        "Export { size: 1048576, flags: TransmissionFlags(HAS_FLAGS | SEND_FLUSH | SEND_FUA | SEND_TRIM | SEND_WRITE_ZEROES | CAN_MULTI_CONN | SEND_CACHE | SEND_FAST_ZERO) }"
            .to_string()
    )));
    assert!(p.log.contains(&Rec::Info("Name(\"disk\")".to_string())));
    assert!(
        p.log
            .contains(&Rec::Info("Description(\"the disk\")".to_string()))
    );
    assert!(
        p.log
            .iter()
            .any(|r| matches!(r, Rec::Info(s) if s.starts_with("BlockSize")))
    );
    assert!(p.log.contains(&Rec::OptionDone(OptionType::Abort, Ok(()))));
    assert!(p.server_events.contains(&server::Event::Finished));
    assert!(p.server.is_closed() && p.client.is_closed());

    let mut p = pair(
        &EXPORTS,
        plan(Goal::List, TlsPolicy::Disable, false, false, false),
    );
    p.drive().unwrap();
    let entries: Vec<_> = p
        .log
        .iter()
        .filter(|r| matches!(r, Rec::ListEntry(..)))
        .collect();
    assert_eq!(
        entries,
        [
            &Rec::ListEntry("disk".into(), "the disk".into()),
            &Rec::ListEntry("iso".into(), "".into())
        ]
    );

    let mut p = pair(
        &EXPORTS,
        plan(
            Goal::ListMetaContexts,
            TlsPolicy::Disable,
            false,
            true,
            true,
        ),
    );
    p.drive().unwrap();
    assert!(p.log.contains(&Rec::Meta(0, "base:allocation".into())));
}

#[test]
fn read_only_export_and_default_name() {
    let mut p = pair(
        &EXPORTS,
        Plan {
            export: "iso",
            ..plan(Goal::Go, TlsPolicy::Disable, false, true, false)
        },
    );
    p.drive().unwrap();
    let info = ready(&p);
    assert!(
        info.flags
            .contains(TransmissionFlags::READ_ONLY | TransmissionFlags::CAN_MULTI_CONN)
    );
    assert!(!info.flags.contains(TransmissionFlags::SEND_TRIM));
    assert_eq!(
        p.request(
            CommandType::Write,
            CommandFlags::empty(),
            1,
            0,
            512,
            Some(&[0; 512])
        ),
        Err(CommandError::NotSupported("the export is read-only"))
    );
    // The empty name is the default export.
    let mut p = pair(
        &EXPORTS,
        Plan {
            export: "",
            ..plan(Goal::Go, TlsPolicy::Disable, false, false, false)
        },
    );
    p.drive().unwrap();
    assert_eq!(server_ready(&p).export, 0);
    // An unknown name: GO fails with ERR_UNKNOWN and the negotiator reports it.
    let mut p = pair(
        &EXPORTS,
        Plan {
            export: "nope",
            ..plan(Goal::Go, TlsPolicy::Disable, false, false, false)
        },
    );
    let e = p.drive().unwrap_err();
    assert!(e.contains("export not found"), "{e}");
}

#[test]
fn export_name_and_disconnect() {
    let mut p = Pair::new(
        config(&EXPORTS),
        ClientConfig::default(),
        pattern_disk(SIZE),
    );
    p.drive().unwrap();
    let mut out = [0u8; 64];
    let n = p.client.opt_export_name("disk", &mut out).unwrap();
    p.to_server.extend_from_slice(&out[..n]);
    p.drive().unwrap();
    assert_eq!(server_ready(&p).style, HeaderStyle::Simple);
    assert_eq!(ready(&p).size, SIZE as u64);
    p.request(CommandType::Read, CommandFlags::empty(), 5, 0, 4096, None)
        .unwrap();
    let n = p.client.disconnect(&mut out).unwrap();
    p.to_server.extend_from_slice(&out[..n]);
    p.drive().unwrap();
    assert!(p.read_result(5, 0, 4096).is_some());
    assert!(p.server_events.contains(&server::Event::Finished));
    assert!(p.server.is_closed());
    assert!(p.client.is_closed());
}

#[test]
fn block_sizes_are_advertised_and_enforced() {
    static E: [Export<'static>; 1] =
        [Export::new("disk", SIZE as u64).with_block_size(BlockSize {
            minimum: 512,
            preferred: 4096,
            maximum: 65536,
        })];
    let mut p = pair(&E, plan(Goal::Go, TlsPolicy::Disable, false, true, false));
    p.drive().unwrap();
    let info = ready(&p);
    assert_eq!(info.block_size.minimum, 512);
    assert_eq!(
        p.request(CommandType::Read, CommandFlags::empty(), 1, 100, 512, None),
        Err(CommandError::InvalidArgument(
            "request not aligned to the minimum block size"
        ))
    );
    assert_eq!(
        p.request(
            CommandType::Read,
            CommandFlags::empty(),
            1,
            0,
            1 << 17,
            None
        ),
        Err(CommandError::InvalidArgument(
            "longer than the maximum payload size"
        ))
    );
    p.request(CommandType::Read, CommandFlags::empty(), 1, 512, 1024, None)
        .unwrap();
    p.drive().unwrap();
    assert!(p.read_result(1, 512, 1024).is_some());
}

fn tls_pair(
    mode: TlsMode,
    policy: TlsPolicy,
    required: bool,
    exports: &'static [Export<'static>],
) -> Pair<'static> {
    let mut c = ServerConfig::new(exports);
    c.tls = mode;
    Pair::new(
        c,
        ClientConfig::new().with_tls_required(required),
        pattern_disk(SIZE),
    )
    .with_plan(plan(Goal::Go, policy, false, true, true))
}

#[test]
fn tls_forced_and_required() {
    let mut p = tls_pair(TlsMode::Forced, TlsPolicy::Require, true, &EXPORTS);
    p.drive().unwrap();
    assert!(p.server.tls_active() && p.client.tls_active());
    assert!(p.log.contains(&Rec::Event(client::Event::StartTls)));
    assert!(server_ready(&p).base_allocation);
    exercise(&mut p);
}

#[test]
fn tls_forced_refuses_plain_clients() {
    let mut p = tls_pair(TlsMode::Forced, TlsPolicy::Disable, false, &EXPORTS);
    let e = p.drive().unwrap_err();
    assert!(e.contains("requires TLS"), "{e}");
    // Everything the client heard was a refusal: no export name, size or flags.
    assert!(
        !p.log
            .iter()
            .any(|r| matches!(r, Rec::Info(_) | Rec::ListEntry(..) | Rec::Meta(..)))
    );
    assert!(p.log.contains(&Rec::OptionDone(
        OptionType::StructuredReply,
        Err(ReplyType::ErrTlsReqd)
    )));
    assert!(
        p.log
            .contains(&Rec::OptionDone(OptionType::Go, Err(ReplyType::ErrTlsReqd)))
    );
}

#[test]
fn tls_client_fails_closed_against_plain_server() {
    let mut p = tls_pair(TlsMode::Off, TlsPolicy::Require, true, &EXPORTS);
    let e = p.drive().unwrap_err();
    assert!(e.contains("refused STARTTLS"), "{e}");
    assert!(p.client.is_closed());
    // Only the flags and STARTTLS ever went out: the server never saw a GO.
    assert!(p.server_events.is_empty());
    // Allow: continue in the clear.
    let mut p = tls_pair(TlsMode::Off, TlsPolicy::Allow, false, &EXPORTS);
    p.drive().unwrap();
    assert!(!p.client.tls_active());
    assert_eq!(server_ready(&p).style, HeaderStyle::Structured);
}

#[test]
fn tls_selective_hides_tls_only_exports() {
    static E: [Export<'static>; 2] = [
        Export::new("disk", SIZE as u64).with_tls_only(true),
        Export::new("public", SIZE as u64),
    ];
    let mut p = tls_pair(TlsMode::Selective, TlsPolicy::Disable, false, &E);
    let e = p.drive().unwrap_err();
    assert!(e.contains("requires TLS"), "{e}");
    let mut p = tls_pair(TlsMode::Selective, TlsPolicy::Disable, false, &E);
    p.negotiator = Some((
        plan(Goal::List, TlsPolicy::Disable, false, false, false),
        nbd_core::client::Negotiator::new(),
    ));
    p.drive().unwrap();
    let names: Vec<_> = p
        .log
        .iter()
        .filter_map(|r| match r {
            Rec::ListEntry(n, _) => Some(n.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(names, ["public"]);
    // With TLS (opportunistic), the export is there.
    let mut p = tls_pair(TlsMode::Selective, TlsPolicy::Allow, false, &E);
    p.drive().unwrap();
    assert!(p.client.tls_active());
    exercise(&mut p);
}

#[test]
fn multi_conn_can_be_turned_off() {
    // Read-only exports advertise CAN_MULTI_CONN by default; a server that takes one
    // connection per client (firmware with few session slots) turns it off.
    for multi_conn in [true, false] {
        let mut c = config(&EXPORTS);
        c.multi_conn = multi_conn;
        let mut p = Pair::new(c, ClientConfig::default(), pattern_disk(SIZE)).with_plan(Plan {
            export: "iso",
            ..plan(Goal::Go, TlsPolicy::Disable, false, true, false)
        });
        p.drive().unwrap();
        let info = ready(&p);
        assert!(info.flags.contains(TransmissionFlags::READ_ONLY));
        assert_eq!(
            info.flags.contains(TransmissionFlags::CAN_MULTI_CONN),
            multi_conn
        );
    }
}

#[test]
fn read_only_multi_conn_features() {
    static E: [Export<'static>; 1] =
        [Export::new("disk", SIZE as u64).with_features(ExportFeatures::FLUSH)];
    let mut p = pair(&E, plan(Goal::Go, TlsPolicy::Disable, false, true, true));
    p.drive().unwrap();
    let info = ready(&p);
    assert!(!info.flags.contains(TransmissionFlags::CAN_MULTI_CONN));
    assert!(!info.flags.contains(TransmissionFlags::SEND_TRIM));
    // base:allocation is not offered: SET_META_CONTEXT selects nothing.
    assert!(!server_ready(&p).base_allocation);
    assert_eq!(
        p.request(CommandType::Trim, CommandFlags::empty(), 1, 0, 512, None),
        Err(CommandError::NotSupported("TRIM"))
    );
}

#[test]
fn unknown_error_chunk_is_skipped_in_every_cut() {
    for cut in [1usize, 5, 64] {
        let mut p = pair(
            &EXPORTS,
            plan(Goal::Go, TlsPolicy::Disable, false, true, false),
        );
        p.drive().unwrap();
        p.cuts = vec![cut];
        // A READ the server never sees: the test answers it with an error chunk of a type the
        // client does not know, whose payload goes on past the message.
        let mut out = [0u8; 64];
        p.client.read(7, 0, 4096, &mut out).unwrap();
        let payload = [0, 0, 0, 5, 0, 3, b'b', b'a', b'd', 1, 2, 3, 4, 5];
        let n = ChunkHeaderRepr {
            flags: ReplyFlags::DONE,
            chunk: ChunkType::Unknown(0x8003),
            cookie: 7,
            offset: 0,
            length: payload.len() as u64,
            extended: false,
        }
        .emit(&mut out)
        .unwrap();
        p.to_client.extend_from_slice(&out[..n]);
        p.to_client.extend_from_slice(&payload);
        p.drive().unwrap();
        assert!(
            p.log
                .contains(&Rec::ChunkError(7, ErrorCode::Io, "bad".into()))
        );
        assert_eq!(p.done(7), Some(Err(ErrorCode::Io)));
        assert!(p.client.is_transmitting());
        assert_eq!(p.client.in_flight(), 0);
    }
}
