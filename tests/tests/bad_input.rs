//! Bad input against the running `kvmio nbd serve` process over raw TCP (protocols.md §3, NBD
//! rows): oversized and malformed names and options, unknown client flags, odd option orders,
//! truncated handshakes, oversized writes, junk after DISC, the connection cap and the
//! handshake deadline. Each time the server answers per the spec or closes that connection,
//! and afterwards the same process is alive and a fresh nbdinfo works.

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use kvmio_tests::raw::{self, Nbd, OptReply, Reply, option_bytes, option_header};
use kvmio_tests::*;
use nbd_core::wire::{
    CommandFlags, CommandType, ErrorCode, InfoType, OptionType, ReplyType, ServerReplyRepr,
};

const SIZE: u64 = 1 << 20;

/// A server with a 1 MiB RAM disk "disk" and no handshake deadline (so a server that waits
/// for data it should have refused is caught by the test's own deadline, not rescued by the
/// server's), plus `extra`.
fn server(rt: Runtime, extra: &[&str]) -> KvmioServer {
    let mut args = vec!["--memory", "disk=1M", "--handshake-timeout", "0"];
    args.extend_from_slice(extra);
    KvmioServer::start(rt, &args)
}

fn connect(s: &KvmioServer) -> Nbd<TcpStream> {
    let mut c = raw::connect(s.port());
    c.handshake().expect("handshake");
    c
}

#[track_caller]
fn healthy(s: &mut KvmioServer) {
    s.assert_healthy("disk", SIZE, None);
    let log = s.log();
    assert!(!log.contains("panicked"), "{log}");
}

/// Sends an option and returns its replies, or `None` if the server closed the connection
/// (before or instead of replying).
fn option_or_close(c: &mut Nbd<TcpStream>, bytes: &[u8]) -> Option<Vec<OptReply>> {
    if let Err(e) = c.send(bytes) {
        assert!(raw::is_closed_error(&e), "send: {e}");
        return None;
    }
    match c.replies() {
        Ok(r) => Some(r),
        Err(e) if raw::is_closed_error(&e) => None,
        Err(e) => panic!("neither a reply nor a close: {e}"),
    }
}

/// The option got exactly one error reply of one of `allowed` (the connection then still
/// answers options: ABORT), or the server closed the connection.
#[track_caller]
fn refused_or_closed(mut c: Nbd<TcpStream>, bytes: &[u8], allowed: &[ReplyType], what: &str) {
    match option_or_close(&mut c, bytes) {
        None => {}
        Some(r) => {
            assert_eq!(r.len(), 1, "{what}: {r:?}");
            assert!(allowed.contains(&r[0].reply), "{what}: {r:?}");
            // still talking: ABORT is acknowledged or closes
            if let Some(r) = option_or_close(&mut c, &option_bytes(OptionType::Abort, &[])) {
                assert_eq!(
                    r[0].reply,
                    ReplyType::Ack,
                    "{what}: ABORT after the error: {r:?}"
                );
            }
        }
    }
}

/// The data of INFO/GO with a raw name length field and `name` bytes.
fn go_data_raw(namelen: u32, name: &[u8]) -> Vec<u8> {
    let mut v = namelen.to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend(0u16.to_be_bytes());
    v
}

/// GO/INFO/EXPORT_NAME with name lengths 0xFFFFFFFF (field lying about the data), 4097
/// (over the spec's limit), 4096 and 256 (fine, but unknown: NBD_REP_ERR_UNKNOWN), 0 (the
/// default export).
fn bad_export_name_lengths_are_refused_or_closed(rt: Runtime) {
    let mut s = server(rt, &[]);
    let invalid = [ReplyType::ErrInvalid, ReplyType::ErrTooBig];
    for opt in [OptionType::Go, OptionType::Info] {
        refused_or_closed(
            connect(&s),
            &option_bytes(opt, &go_data_raw(0xFFFF_FFFF, b"")),
            &invalid,
            &format!("{opt:?} with name length 0xFFFFFFFF and no name"),
        );
        refused_or_closed(
            connect(&s),
            &option_bytes(opt, &go_data_raw(0xFFFF_FFFF, &[b'a'; 4096])),
            &invalid,
            &format!("{opt:?} with name length 0xFFFFFFFF and 4 KiB of name"),
        );
        refused_or_closed(
            connect(&s),
            &option_bytes(opt, &go_data_raw(4097, &[b'a'; 4097])),
            &invalid,
            &format!("{opt:?} with a 4097-byte name"),
        );
        for len in [4096, 256] {
            let mut c = connect(&s);
            let r = c
                .option(opt, &go_data_raw(len as u32, &vec![b'n'; len]))
                .expect("reply");
            assert_eq!(r.len(), 1, "{r:?}");
            assert_eq!(
                r[0].reply,
                ReplyType::ErrUnknown,
                "{opt:?} {len}-byte name: {r:?}"
            );
            // the connection goes on
            let (size, _) = c.go_ok("disk");
            assert_eq!(size, SIZE);
            assert_eq!(c.simple_read(1, 0, 512).unwrap().unwrap(), vec![0; 512]);
        }
    }
    // the empty name selects the default export
    let mut c = connect(&s);
    assert_eq!(c.go_ok("").0, SIZE);

    // EXPORT_NAME cannot be answered with an error: the server closes
    let mut c = connect(&s);
    c.send(&option_bytes(OptionType::ExportName, &[b'a'; 4097]))
        .expect("send");
    c.expect_closed("EXPORT_NAME with a 4097-byte name");
    let mut c = connect(&s);
    c.send(&option_header(OptionType::ExportName, 0xFFFF_FFFF))
        .expect("send");
    c.expect_closed("EXPORT_NAME announcing 4 GiB");
    let mut c = connect(&s);
    c.send(&option_bytes(OptionType::ExportName, b"nope"))
        .expect("send");
    c.expect_closed("EXPORT_NAME of an unknown export");
    healthy(&mut s);
}

/// A 100 KiB SET_META_CONTEXT (over the 16 KiB option cap) gets NBD_REP_ERR_TOO_BIG and the
/// connection stays usable; a 64 MiB, 32 MiB + 1 or 4 GiB announcement is disconnected at
/// once, without the server waiting for the data (it has no handshake deadline here).
fn oversized_options_get_too_big_or_a_disconnect(rt: Runtime) {
    let mut s = server(rt, &[]);
    let long = format!("base:{}", "x".repeat(100 * 1024));
    let mut c = connect(&s);
    let r = c
        .option(
            OptionType::SetMetaContext,
            &raw::meta_data("disk", &[&long]),
        )
        .expect("reply to 100 KiB option");
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(r[0].reply, ReplyType::ErrTooBig, "{r:?}");
    let r = c
        .option(OptionType::List, &vec![0u8; 20 * 1024])
        .expect("LIST with 20 KiB");
    assert!(r.last().is_some_and(|r| r.reply.is_error()), "{r:?}");
    let (size, _) = c.go_ok("disk");
    assert_eq!(size, SIZE);
    assert_eq!(c.simple_read(2, 4096, 512).unwrap().unwrap(), vec![0; 512]);

    for (opt, len) in [
        (OptionType::SetMetaContext, 64u32 << 20),
        (OptionType::Info, (32 << 20) + 1),
        (OptionType::from(0x7777u32), 0xFFFF_FFFF),
    ] {
        let mut c = connect(&s);
        let mut b = option_header(opt, len);
        b.extend(vec![0u8; 1024]);
        c.send(&b).expect("send");
        let rest = c
            .read_to_close()
            .unwrap_or_else(|e| panic!("{opt:?} announcing {len} bytes: no disconnect: {e}"));
        // at most one error reply before the close
        assert!(rest.len() <= 20 + 4096, "{opt:?}: {} bytes", rest.len());
    }
    healthy(&mut s);
}

/// Client flags with unknown bits: the server closes (the spec's MUST).
fn unknown_client_flags_close_the_connection(rt: Runtime) {
    let mut s = server(rt, &[]);
    for flags in [0x1 | 0x4, 0x1 | 0x8000_0000, 0xFFFF_FFFF, 0x3 | 0x100] {
        let mut c = raw::connect(s.port());
        c.greeting().expect("greeting");
        c.client_flags(flags).expect("flags");
        // an option right behind, which must not be answered
        let _ = c.send(&option_bytes(OptionType::List, &[]));
        c.expect_closed(&format!("client flags {flags:#x}"));
    }
    healthy(&mut s);
}

fn export_info(r: &[OptReply]) -> (u64, u16) {
    r.iter()
        .find_map(OptReply::export_info)
        .unwrap_or_else(|| panic!("no NBD_INFO_EXPORT in {r:?}"))
}

/// INFO, GO, ABORT, LIST and unknown options in various orders (CVE-2019-14850/14851: per-
/// export state only at GO, odd orders must not trip assertions): each answered per spec,
/// INFO and GO agree, and the session works after GO.
fn info_go_abort_list_permutations_follow_the_spec(rt: Runtime) {
    let mut s = server(rt, &["--memory", "other=2M"]);
    let reqs = [InfoType::Name, InfoType::Description, InfoType::BlockSize];
    // INFO, INFO, GO: same export information, ACK each time
    let mut c = connect(&s);
    let i1 = c
        .option(OptionType::Info, &raw::go_data("disk", &reqs))
        .unwrap();
    let i2 = c
        .option(OptionType::Info, &raw::go_data("other", &[]))
        .unwrap();
    assert_eq!(i1.last().unwrap().reply, ReplyType::Ack, "{i1:?}");
    assert_eq!(export_info(&i2).0, 2 << 20);
    let g = c
        .option(OptionType::Go, &raw::go_data("disk", &reqs))
        .unwrap();
    assert_eq!(g.last().unwrap().reply, ReplyType::Ack, "{g:?}");
    assert_eq!(export_info(&i1), export_info(&g), "INFO and GO disagree");
    assert_eq!(c.simple_read(3, 0, 4096).unwrap().unwrap(), vec![0; 4096]);

    // LIST, unknown option, INFO of an unknown export, GO of an unknown one, then GO
    let mut c = connect(&s);
    let l = c.option(OptionType::List, &[]).unwrap();
    let mut names: Vec<String> = l
        .iter()
        .filter(|r| r.reply == ReplyType::Server)
        .map(|r| {
            ServerReplyRepr::parse(&r.data)
                .expect("SERVER")
                .name
                .to_string()
        })
        .collect();
    names.sort();
    assert_eq!(names, ["disk", "other"]);
    let u = c.option(OptionType::from(0x1234u32), b"xyz").unwrap();
    assert_eq!(u.len(), 1);
    assert_eq!(u[0].reply, ReplyType::ErrUnsup, "{u:?}");
    let r = c
        .option(OptionType::Info, &raw::go_data("missing", &[]))
        .unwrap();
    assert_eq!(r[0].reply, ReplyType::ErrUnknown, "{r:?}");
    let r = c
        .option(OptionType::Go, &raw::go_data("missing", &[]))
        .unwrap();
    assert_eq!(r[0].reply, ReplyType::ErrUnknown, "{r:?}");
    let r = c.option(OptionType::List, b"data").unwrap();
    assert_eq!(r[0].reply, ReplyType::ErrInvalid, "LIST with data: {r:?}");
    let r = c.option(OptionType::StartTls, &[]).unwrap();
    assert!(
        r[0].reply.is_error() && r[0].reply != ReplyType::ErrTlsReqd,
        "STARTTLS without TLS configured: {r:?}"
    );
    assert_eq!(c.go_ok("other").0, 2 << 20);

    // ABORT first, INFO then ABORT: acknowledged (or closed), then closed
    for prefix in [
        Vec::new(),
        option_bytes(OptionType::Info, &raw::go_data("disk", &[])),
    ] {
        let mut c = connect(&s);
        let mut b = prefix.clone();
        b.extend(option_bytes(OptionType::Abort, &[]));
        c.send(&b).unwrap();
        if !prefix.is_empty() {
            let r = c.replies().unwrap();
            assert_eq!(r.last().unwrap().reply, ReplyType::Ack);
        }
        let rest = c.read_to_close().expect("close after ABORT");
        assert!(
            rest.is_empty() || rest.len() == 20,
            "ABORT reply: {rest:02x?}"
        );
    }

    // EXPORT_NAME (the old way) with NO_ZEROES: 10-byte reply, then transmission
    let mut c = connect(&s);
    c.send(&option_bytes(OptionType::ExportName, b"disk"))
        .unwrap();
    let r = c.read_vec(10).unwrap();
    assert_eq!(u64::from_be_bytes(r[..8].try_into().unwrap()), SIZE);
    assert_eq!(c.simple_read(4, 0, 512).unwrap().unwrap(), vec![0; 512]);

    // an option after GO is not a request: closed
    let mut c = connect(&s);
    c.go_ok("disk");
    // (28 bytes: as long as a request header, so the server must judge it)
    c.send(&option_bytes(OptionType::List, &[0u8; 12])).unwrap();
    c.expect_closed("an option in the transmission phase");
    healthy(&mut s);
}

/// A valid client transcript (flags, SR, SET_META_CONTEXT, INFO, GO, READ, DISC) cut at every
/// byte on a fresh connection each (CVE-2017-7539 class); also cut after reading the replies.
fn truncated_handshakes_at_every_byte_leave_the_server_serving(rt: Runtime) {
    let mut s = server(rt, &["--max-connections", "100000"]);
    let mut t = raw::CLIENT_FLAGS.to_be_bytes().to_vec();
    t.extend(option_bytes(OptionType::StructuredReply, &[]));
    t.extend(option_bytes(
        OptionType::SetMetaContext,
        &raw::meta_data("disk", &["base:allocation"]),
    ));
    t.extend(option_bytes(
        OptionType::Info,
        &raw::go_data("disk", &[InfoType::BlockSize]),
    ));
    t.extend(option_bytes(OptionType::Go, &raw::go_data("disk", &[])));
    t.extend(raw::request_bytes(
        CommandType::Read,
        CommandFlags::empty(),
        1,
        0,
        4096,
    ));
    t.extend(raw::request_bytes(
        CommandType::BlockStatus,
        CommandFlags::empty(),
        2,
        0,
        8192,
    ));
    t.extend(raw::request_bytes(
        CommandType::Disc,
        CommandFlags::empty(),
        3,
        0,
        0,
    ));
    for n in 0..=t.len() {
        let mut c = raw::connect(s.port());
        c.greeting().expect("greeting");
        let _ = c.s.write_all(&t[..n]);
        if n % 2 == 1 {
            // half-close and let the server answer what it got before the full close
            let _ = c.s.shutdown(std::net::Shutdown::Write);
            let _ = c.read_to_close();
        }
        drop(c);
        if n % 64 == 0 {
            s.proc.assert_alive();
        }
    }
    // the full transcript is a valid session
    let mut c = raw::connect(s.port());
    c.greeting().unwrap();
    c.send(&t).unwrap();
    let rest = c.read_to_close().unwrap();
    assert!(
        rest.len() > 4096,
        "the full transcript got {} bytes",
        rest.len()
    );
    healthy(&mut s);
}

/// Requests the server must refuse: WRITE/READ longer than the 32 MiB maximum (error reply or
/// close), WRITE and READ past the end (EINVAL/ENOSPC, payload consumed, session goes on),
/// unknown command (EINVAL, goes on), bad request magic (close).
fn oversized_and_out_of_range_requests_are_refused(rt: Runtime) {
    let mut s = server(rt, &[]);
    for len in [64u32 << 20, 0xFFFF_FFFF] {
        for cmd in [CommandType::Write, CommandType::Read] {
            let mut c = connect(&s);
            c.go_ok("disk");
            c.request(cmd, 5, 0, len, &[0u8; 4096]).unwrap();
            match c.any_reply() {
                Ok(Reply::Simple(r)) => {
                    assert_eq!(r.cookie, 5);
                    assert_ne!(r.error, 0, "{cmd:?} of {len} bytes succeeded");
                }
                Ok(other) => panic!("{other:?}"),
                Err(e) => assert!(raw::is_closed_error(&e), "{cmd:?} of {len}: {e}"),
            }
        }
    }
    let mut c = connect(&s);
    c.go_ok("disk");
    let e = c.simple_write(6, SIZE - 100, &[0x55; 4096]).unwrap();
    assert!(
        e == u32::from(ErrorCode::NoSpc) || e == u32::from(ErrorCode::Inval),
        "WRITE past the end: {e}"
    );
    let e = c.simple_read(7, SIZE - 100, 4096).unwrap();
    assert!(e.is_err(), "READ past the end succeeded");
    c.request(CommandType::from(99u16), 8, 0, 512, &[]).unwrap();
    match c.any_reply().unwrap() {
        Reply::Simple(r) => assert_eq!(r.error, u32::from(ErrorCode::Inval)),
        other => panic!("{other:?}"),
    }
    // the payload of the refused WRITE was consumed: the session is in sync
    assert_eq!(c.simple_write(9, 0, &[0x66; 512]).unwrap(), 0);
    assert_eq!(c.simple_read(10, 0, 512).unwrap().unwrap(), vec![0x66; 512]);
    c.send(&[0xde, 0xad, 0xbe, 0xef]).unwrap();
    c.send(&[0u8; 24]).unwrap();
    c.expect_closed("bad request magic");
    healthy(&mut s);
}

/// NBD_CMD_DISC followed by junk: no reply, the server closes.
fn junk_after_disc_gets_no_reply_and_a_close(rt: Runtime) {
    let mut s = server(rt, &[]);
    let mut c = connect(&s);
    c.go_ok("disk");
    let mut b = raw::request_bytes(CommandType::Disc, CommandFlags::empty(), 1, 0, 0);
    b.extend(random_bytes(5000, 3));
    b.extend(raw::request_bytes(
        CommandType::Read,
        CommandFlags::empty(),
        2,
        0,
        512,
    ));
    let _ = c.send(&b);
    c.expect_closed("junk after DISC");
    healthy(&mut s);
}

/// `--max-connections 2`: a third simultaneous connection is closed at once without a
/// greeting; when one of the two leaves, a new one is served.
fn max_connections_refuses_a_third_connection(rt: Runtime) {
    let mut s = server(rt, &["--max-connections", "2"]);
    let mut a = connect(&s);
    let mut b = connect(&s);
    let mut third = raw::connect(s.port());
    let got = third.read_to_close().expect("third connection closed");
    assert!(got.is_empty(), "the third connection got {got:02x?}");
    a.go_ok("disk");
    b.go_ok("disk");
    drop(a);
    // the slot frees once the server notices; poll with a deadline
    let end = Instant::now() + Duration::from_secs(15);
    let mut c = loop {
        let mut c = raw::connect(s.port());
        match c.greeting() {
            Ok(_) => break c,
            Err(_) => {
                assert!(Instant::now() < end, "the freed slot was never reused");
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    c.client_flags(raw::CLIENT_FLAGS).unwrap();
    c.go_ok("disk");
    assert_eq!(b.simple_read(1, 0, 512).unwrap().unwrap(), vec![0; 512]);
    drop((b, c));
    let end = Instant::now() + Duration::from_secs(15);
    loop {
        // nbdinfo needs a free slot: wait for both to be released
        let out = run(peer("nbdinfo").arg("--size").arg(s.target("disk").uri()));
        if out.ok() {
            break;
        }
        assert!(Instant::now() < end, "slots never released: {}", out.stderr);
        std::thread::sleep(Duration::from_millis(50));
    }
    healthy(&mut s);
}

/// `--handshake-timeout 3` (CVE-2024-7409): a client idling after the greeting and one
/// dribbling an option byte by byte are both dropped; a client that reached the transmission
/// phase in time is not; the server stays up.
fn handshake_timeout_drops_idle_and_trickling_clients(rt: Runtime) {
    let mut s = KvmioServer::start(rt, &["--memory", "disk=1M", "--handshake-timeout", "3"]);
    let mut done = connect(&s);
    done.go_ok("disk");
    let mut idle = connect(&s);
    idle.expect_closed("idle client in negotiation");
    let mut slow = connect(&s);
    let opt = option_bytes(OptionType::Go, &raw::go_data("disk", &[]));
    slow.s
        .set_read_timeout(Some(Duration::from_millis(250)))
        .unwrap();
    // one byte per 250 ms: the GO would be complete after 6 s, long past the deadline
    let mut closed = false;
    for b in &opt[..opt.len() - 1] {
        if slow.s.write_all(&[*b]).is_err() {
            closed = true;
            break;
        }
        let mut probe = [0u8; 64];
        match std::io::Read::read(&mut slow.s, &mut probe) {
            Ok(0) => {
                closed = true;
                break;
            }
            Ok(n) => panic!(
                "the server answered a half-sent option: {:02x?}",
                &probe[..n]
            ),
            Err(e) if raw::is_closed_error(&e) => {
                closed = true;
                break;
            }
            Err(_) => {}
        }
    }
    if !closed {
        slow.s.set_read_timeout(Some(raw::IO_TIMEOUT)).unwrap();
        slow.expect_closed("client trickling an option");
    }
    // the finished client outlived the deadline
    assert_eq!(
        done.simple_read(1, 0, 4096).unwrap().unwrap(),
        vec![0; 4096]
    );
    healthy(&mut s);
}

/// A client that hangs up in the middle of a WRITE payload or of a request header is logged
/// as such, not as a clean close.
fn a_hang_up_mid_message_is_logged_as_one(rt: Runtime) {
    let mut s = server(rt, &[]);
    let mut c = connect(&s);
    c.go_ok("disk");
    let mut b = raw::request_bytes(CommandType::Write, CommandFlags::empty(), 1, 0, 65536);
    b.extend([7u8; 1000]);
    c.send(&b).unwrap();
    drop(c);
    s.proc.wait_log(
        "in the middle of a WRITE payload (64536 of 65536 bytes missing)",
        Duration::from_secs(10),
    );
    let mut c = connect(&s);
    c.go_ok("disk");
    let header = raw::request_bytes(CommandType::Read, CommandFlags::empty(), 2, 0, 512);
    c.send(&header[..11]).unwrap();
    drop(c);
    s.proc.wait_log(
        "connection closed in the middle of a message (11 bytes unparsed)",
        Duration::from_secs(10),
    );
    healthy(&mut s);
}

macro_rules! per_runtime {
    ($($name:ident),* $(,)?) => {
        mod threads {
            use super::*;
            $( #[test] fn $name() { super::$name(Runtime::Threads) } )*
        }
        mod tokio {
            use super::*;
            $( #[test] fn $name() { super::$name(Runtime::Tokio) } )*
        }
    };
}

per_runtime!(
    bad_export_name_lengths_are_refused_or_closed,
    oversized_options_get_too_big_or_a_disconnect,
    unknown_client_flags_close_the_connection,
    info_go_abort_list_permutations_follow_the_spec,
    truncated_handshakes_at_every_byte_leave_the_server_serving,
    oversized_and_out_of_range_requests_are_refused,
    junk_after_disc_gets_no_reply_and_a_close,
    max_connections_refuses_a_third_connection,
    handshake_timeout_drops_idle_and_trickling_clients,
    a_hang_up_mid_message_is_logged_as_one,
);
