//! STARTTLS security against the running `kvmio nbd serve` process, over raw TCP from the
//! test (messages crafted with `nbd_core::wire`, TLS with `tls_glue::TlsLayer` as the client):
//! * CVE-2021-3716 (nbdkit): negotiation state from before STARTTLS (structured replies, meta
//!   contexts) must not survive into the TLS session, and plaintext pipelined right after
//!   STARTTLS must never be parsed as options;
//! * a second STARTTLS inside TLS is `NBD_REP_ERR_INVALID`;
//! * forced TLS reveals nothing before STARTTLS;
//! * aborting at every byte of the TLS handshake (CVE-2023-3354 / CVE-2016-10207 class)
//!   never hurts the server, and a client connected meanwhile keeps working.

use std::io::Read;
use std::net::TcpStream;

use kvmio_tests::raw::{self, Nbd, Reply, option_bytes};
use kvmio_tests::tlsio::{TlsStream, client_config};
use kvmio_tests::*;
use nbd_core::wire::{
    CommandType, OPTION_REPLY_MAGIC, OptionReplyHeaderRepr, OptionType, ReplyType, ServerReplyRepr,
    TransmissionFlags,
};
use tls_glue::TlsClientConfig;

const SIZE: u64 = 1 << 20;

struct Fixture {
    _tmp: TempDir,
    pki: Pki,
    config: TlsClientConfig,
    server: KvmioServer,
    /// What the export holds (written over TLS by nbdcopy).
    data: Vec<u8>,
}

fn fixture(rt: Runtime, tls: &str, extra: &[&str]) -> Fixture {
    let tmp = tempdir();
    let pki = pki(&tmp.path().join("pki"));
    let dir = pki.dir.display().to_string();
    let mut args = vec!["--tls", tls, "--tls-creds", &dir, "--memory", "disk=1M"];
    args.extend_from_slice(extra);
    let server = KvmioServer::start(rt, &args);
    let src = tmp.path().join("src.img");
    let data = test_image(&src, SIZE, 211);
    run(peer("nbdcopy")
        .arg(&src)
        .arg(server.target("disk").with_tls(&pki.dir).uri()))
    .expect_ok();
    let config = client_config(&pki.dir);
    Fixture {
        _tmp: tmp,
        pki,
        config,
        server,
        data,
    }
}

impl Fixture {
    fn connect(&self) -> Nbd<TcpStream> {
        let mut c = raw::connect(self.server.port());
        c.handshake().expect("handshake");
        c
    }

    /// STARTTLS (must be acknowledged) and the TLS handshake.
    fn starttls(&self, mut c: Nbd<TcpStream>) -> Nbd<TlsStream> {
        let r = c.option(OptionType::StartTls, &[]).expect("STARTTLS");
        assert_eq!(r.len(), 1);
        assert_eq!(r[0].reply, ReplyType::Ack, "STARTTLS: {:?}", r[0]);
        let mut tls = TlsStream::client(c.s, &self.config, "127.0.0.1");
        tls.handshake().expect("TLS handshake");
        Nbd::new(tls)
    }

    /// Sessions that reached the transmission phase so far.
    fn sessions(&self) -> usize {
        self.server.log().matches("export \"disk\"").count()
    }

    fn healthy(&mut self) {
        let dir = self.pki.dir.clone();
        self.server.assert_healthy("disk", SIZE, Some(&dir));
        let log = self.server.log();
        assert!(!log.contains("panicked"), "{log}");
    }
}

/// After GO without structured replies, a READ must come back as a simple reply with the
/// export's bytes.
fn assert_simple_read<S: std::io::Read + std::io::Write>(c: &mut Nbd<S>, data: &[u8]) {
    let got = c
        .simple_read(7, 4096, 8192)
        .expect("READ")
        .expect("READ error");
    assert_same_bytes(&got, &data[4096..4096 + 8192], "READ inside TLS");
}

/// NBD_OPT_STRUCTURED_REPLY (and SET_META_CONTEXT) negotiated in the clear before STARTTLS are
/// forgotten: inside TLS, GO without structured replies gives simple replies (magic
/// 0x67446698) to READ, and BLOCK_STATUS is refused.
fn structured_reply_before_starttls_is_forgotten(rt: Runtime, tls: &str) {
    let mut f = fixture(rt, tls, &[]);
    let mut c = f.connect();
    let sr = c.option(OptionType::StructuredReply, &[]).expect("SR");
    if tls == "on" {
        assert_eq!(sr[0].reply, ReplyType::Ack, "{sr:?}");
        let meta = c
            .option(
                OptionType::SetMetaContext,
                &raw::meta_data("disk", &["base:allocation"]),
            )
            .expect("SET_META_CONTEXT");
        assert_eq!(
            meta.first().map(|r| r.reply),
            Some(ReplyType::MetaContext),
            "{meta:?}"
        );
    } else {
        assert_eq!(sr[0].reply, ReplyType::ErrTlsReqd, "{sr:?}");
    }
    let mut t = f.starttls(c);
    let (size, _) = t.go_ok("disk");
    assert_eq!(size, SIZE);
    assert_simple_read(&mut t, &f.data);
    // without structured replies and a meta context, BLOCK_STATUS is not available
    t.request(CommandType::BlockStatus, 9, 0, 65536, &[])
        .expect("BLOCK_STATUS");
    match t.any_reply().expect("reply") {
        Reply::Simple(r) => assert_ne!(r.error, 0, "BLOCK_STATUS succeeded with a simple reply"),
        other => {
            panic!("a structured reply inside TLS although SR was not negotiated there: {other:?}")
        }
    }
    drop(t);
    f.healthy();
}

/// Structured replies renegotiated inside TLS, but not the meta context: BLOCK_STATUS must
/// not report `base:allocation` from the pre-TLS SET_META_CONTEXT.
fn meta_context_before_starttls_is_forgotten(rt: Runtime) {
    let mut f = fixture(rt, "on", &[]);
    let mut c = f.connect();
    c.option(OptionType::StructuredReply, &[]).expect("SR");
    let meta = c
        .option(
            OptionType::SetMetaContext,
            &raw::meta_data("disk", &["base:allocation"]),
        )
        .expect("SET_META_CONTEXT");
    assert_eq!(
        meta.first().map(|r| r.reply),
        Some(ReplyType::MetaContext),
        "{meta:?}"
    );
    let mut t = f.starttls(c);
    let sr = t
        .option(OptionType::StructuredReply, &[])
        .expect("SR in TLS");
    assert_eq!(sr[0].reply, ReplyType::Ack);
    t.go_ok("disk");
    t.request(CommandType::BlockStatus, 11, 0, 65536, &[])
        .expect("BLOCK_STATUS");
    match t.any_reply().expect("reply") {
        Reply::Chunk(h, payload) => {
            assert!(
                h.chunk.is_error(),
                "BLOCK_STATUS answered with {:?} ({payload:02x?}) for a context negotiated before TLS",
                h.chunk
            );
        }
        Reply::Simple(r) => assert_ne!(r.error, 0),
    }
    drop(t);
    f.healthy();
}

/// STARTTLS with a plaintext NBD_OPT_STRUCTURED_REPLY pipelined right behind it in the same
/// write: the server never answers the injected option in the clear, and either the TLS
/// handshake fails (the injected bytes went to the TLS engine) or, if it succeeds, the
/// injected option had no effect (simple replies after GO).
fn pipelined_plaintext_after_starttls_is_not_an_option(rt: Runtime, tls: &str) {
    let mut f = fixture(rt, tls, &[]);
    let sessions = f.sessions();
    let mut c = f.connect();
    c.option(OptionType::StructuredReply, &[]).expect("SR");
    let mut burst = option_bytes(OptionType::StartTls, &[]);
    burst.extend(option_bytes(OptionType::StructuredReply, &[]));
    c.send(&burst).expect("send");
    // The STARTTLS ACK (20 bytes), or a close: never a reply to the injected option.
    let ack = OptionReplyHeaderRepr {
        option: OptionType::StartTls,
        reply: ReplyType::Ack,
        length: 0,
    };
    let mut expected = [0u8; OptionReplyHeaderRepr::LEN];
    ack.emit(&mut expected).expect("emit");
    let mut got = Vec::new();
    let mut byte = [0u8; 1];
    while got.len() < expected.len() {
        match c.s.read(&mut byte) {
            Ok(0) => break,
            Ok(_) => got.push(byte[0]),
            Err(e) if raw::is_closed_error(&e) => break,
            Err(e) => panic!("no STARTTLS reply and no close: {e}"),
        }
    }
    assert!(
        expected.starts_with(&got),
        "the server sent {got:02x?} instead of the STARTTLS ACK"
    );
    if got.len() < expected.len() {
        // the server refused the connection (the injected bytes broke the TLS handshake)
        assert_eq!(f.sessions(), sessions, "{}", f.server.log());
        f.healthy();
        return;
    }
    let mut tls = TlsStream::client(c.s, &f.config, "127.0.0.1");
    match tls.handshake() {
        Err(e) => {
            assert!(
                !tls.received.starts_with(&OPTION_REPLY_MAGIC.to_be_bytes()),
                "the server answered the injected option in the clear ({e}): {:02x?}",
                &tls.received[..tls.received.len().min(40)]
            );
            // the TLS record layer must see either an alert or nothing
            if let Some(&b) = tls.received.first() {
                assert_eq!(
                    b,
                    0x15,
                    "expected a TLS alert, got {:02x?}",
                    &tls.received[..tls.received.len().min(40)]
                );
            }
            assert_eq!(f.sessions(), sessions, "{}", f.server.log());
        }
        Ok(()) => {
            let mut t = Nbd::new(tls);
            t.go_ok("disk");
            assert_simple_read(&mut t, &f.data);
        }
    }
    f.healthy();
}

/// A second STARTTLS inside TLS gets NBD_REP_ERR_INVALID and the session goes on; STARTTLS
/// with a payload gets NBD_REP_ERR_INVALID in the clear.
fn second_starttls_inside_tls_is_invalid(rt: Runtime) {
    let mut f = fixture(rt, "require", &[]);
    let mut c = f.connect();
    let r = c
        .option(OptionType::StartTls, b"junk")
        .expect("STARTTLS with data");
    assert_eq!(r[0].reply, ReplyType::ErrInvalid, "{r:?}");
    let mut t = f.starttls(c);
    let r = t
        .option(OptionType::StartTls, &[])
        .expect("second STARTTLS");
    assert_eq!(r.len(), 1);
    assert_eq!(r[0].reply, ReplyType::ErrInvalid, "{r:?}");
    let (size, flags) = t.go_ok("disk");
    assert_eq!(size, SIZE);
    assert!(TransmissionFlags::from_bits_retain(flags).contains(TransmissionFlags::HAS_FLAGS));
    assert_simple_read(&mut t, &f.data);
    drop(t);
    f.healthy();
}

/// `--tls require`: before STARTTLS every option but STARTTLS and ABORT gets
/// NBD_REP_ERR_TLS_REQD and no data (LIST reveals no export), EXPORT_NAME closes the
/// connection, ABORT is acknowledged or closes; after TLS the same LIST works.
fn forced_tls_reveals_nothing_before_starttls(rt: Runtime) {
    let mut f = fixture(rt, "require", &[]);
    let mut c = f.connect();
    for (opt, data) in [
        (OptionType::List, Vec::new()),
        (OptionType::Info, raw::go_data("disk", &[])),
        (OptionType::Go, raw::go_data("disk", &[])),
        (OptionType::StructuredReply, Vec::new()),
        (
            OptionType::ListMetaContext,
            raw::meta_data("disk", &["base:"]),
        ),
        (OptionType::ExtendedHeaders, Vec::new()),
        (OptionType::from(0x4242u32), b"junk".to_vec()),
    ] {
        let r = c.option(opt, &data).expect("option");
        assert_eq!(r.len(), 1, "{opt:?}: {r:?}");
        assert_eq!(r[0].reply, ReplyType::ErrTlsReqd, "{opt:?}: {r:?}");
        assert!(!r[0].message().contains("disk"), "{opt:?} revealed: {r:?}");
    }
    c.send_option(OptionType::ExportName, b"disk")
        .expect("send");
    c.expect_closed("EXPORT_NAME before TLS");

    let mut c = f.connect();
    c.send_option(OptionType::Abort, &[]).expect("ABORT");
    let rest = c.read_to_close().expect("close after ABORT");
    if !rest.is_empty() {
        assert_eq!(rest.len(), 20, "ABORT reply: {rest:02x?}");
        assert_eq!(&rest[..8], &OPTION_REPLY_MAGIC.to_be_bytes());
        assert_eq!(&rest[12..16], &u32::from(ReplyType::Ack).to_be_bytes());
    }

    let c = f.connect();
    let mut t = f.starttls(c);
    let list = t.option(OptionType::List, &[]).expect("LIST");
    assert!(
        list.iter().any(|r| r.reply == ReplyType::Server
            && ServerReplyRepr::parse(&r.data).is_ok_and(|s| s.name == "disk")),
        "{list:?}"
    );
    drop(t);
    f.healthy();
}

/// Replays a captured client TLS handshake (all our flights) cut at every byte, each on a
/// fresh connection after STARTTLS, then closes; meanwhile a TLS client connected before
/// keeps reading and writing correctly. The server survives and serves new clients.
fn abort_at_every_byte_of_the_tls_handshake(rt: Runtime) {
    let mut f = fixture(
        rt,
        "require",
        &["--max-connections", "100000", "--handshake-timeout", "0"],
    );
    // capture a complete client handshake, then keep that session as the concurrent client
    let c = f.connect();
    let mut keep = f.starttls(c);
    let transcript = keep.s.sent.clone();
    assert!(
        transcript.len() > 200,
        "implausible handshake: {} bytes",
        transcript.len()
    );
    keep.go_ok("disk");
    eprintln!("replaying {} handshake prefixes", transcript.len() + 1);
    let mut model = f.data.clone();
    let mut check = |i: usize, keep: &mut Nbd<TlsStream>| {
        let off = (i * 4099) % (SIZE as usize - 512);
        let pattern = vec![(i % 251) as u8; 512];
        assert_eq!(
            keep.simple_write(i as u64, off as u64, &pattern)
                .expect("WRITE"),
            0
        );
        model[off..off + 512].copy_from_slice(&pattern);
        let got = keep
            .simple_read(i as u64, 0, SIZE as u32)
            .expect("READ")
            .expect("READ error");
        assert_same_bytes(&got, &model, "the concurrent TLS client's view");
    };
    let mut starttls = raw::option_bytes(OptionType::StartTls, &[]);
    let mut flags = raw::CLIENT_FLAGS.to_be_bytes().to_vec();
    flags.append(&mut starttls);
    for n in 0..=transcript.len() {
        let mut c = raw::connect(f.server.port());
        c.greeting().expect("greeting");
        c.send(&flags).expect("flags + STARTTLS");
        let r = c.reply().expect("STARTTLS reply");
        assert_eq!(r.reply, ReplyType::Ack);
        if n > 0 {
            // the server may already have given up on a broken prefix
            let _ = c.send(&transcript[..n]);
        }
        drop(c);
        if n % 200 == 0 {
            check(n, &mut keep);
            f.server.proc.assert_alive();
        }
    }
    check(transcript.len() + 1, &mut keep);
    drop(keep);
    f.healthy();
}

macro_rules! per_runtime {
    ($($name:ident($($arg:expr),*);)*) => {
        mod threads {
            use super::*;
            $( #[test] fn $name() { super::$name(Runtime::Threads $(, $arg)*) } )*
        }
        mod tokio {
            use super::*;
            $( #[test] fn $name() { super::$name(Runtime::Tokio $(, $arg)*) } )*
        }
    };
}

fn structured_reply_before_starttls_is_forgotten_with_optional_tls(rt: Runtime) {
    structured_reply_before_starttls_is_forgotten(rt, "on");
}
fn structured_reply_before_starttls_is_forgotten_with_forced_tls(rt: Runtime) {
    structured_reply_before_starttls_is_forgotten(rt, "require");
}
fn pipelined_plaintext_after_starttls_is_not_an_option_with_optional_tls(rt: Runtime) {
    pipelined_plaintext_after_starttls_is_not_an_option(rt, "on");
}
fn pipelined_plaintext_after_starttls_is_not_an_option_with_forced_tls(rt: Runtime) {
    pipelined_plaintext_after_starttls_is_not_an_option(rt, "require");
}

per_runtime! {
    structured_reply_before_starttls_is_forgotten_with_optional_tls();
    structured_reply_before_starttls_is_forgotten_with_forced_tls();
    meta_context_before_starttls_is_forgotten();
    pipelined_plaintext_after_starttls_is_not_an_option_with_optional_tls();
    pipelined_plaintext_after_starttls_is_not_an_option_with_forced_tls();
    second_starttls_inside_tls_is_invalid();
    forced_tls_reveals_nothing_before_starttls();
    abort_at_every_byte_of_the_tls_handshake();
}
