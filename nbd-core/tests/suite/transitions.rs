//! Transitions happen on input, not on emission: once `handle_input` has consumed an option
//! (server) or a reply (client), the getters show the new phase; the replies the server decided
//! on are pending output that blocks further input and holds back the events until
//! `poll_transmit` has written them, so the wire order and the drain order are unchanged.

use nbd_core::client::{self, Client, ClientConfig, Item};
use nbd_core::error::CommandError;
use nbd_core::export::Export;
use nbd_core::server::{Event, Lent, Server, ServerConfig, TlsMode};
use nbd_core::time::Instant;
use nbd_core::wire::*;

use crate::server_bytes::opt;

static EXPORTS: [Export<'static>; 1] = [Export::new("disk", 1 << 20)];

fn server(tls: TlsMode) -> Server<'static> {
    let mut c = ServerConfig::new(&EXPORTS);
    c.tls = tls;
    let mut s = Server::new(c, Instant::ZERO).unwrap();
    let mut buf = [0u8; 64];
    assert_eq!(s.poll_transmit(&mut buf), Ok(Some(18)), "greeting");
    s
}

fn go_data(name: &[u8], reqs: &[InfoType]) -> Vec<u8> {
    let mut v = (name.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(name);
    v.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
    for r in reqs {
        v.extend_from_slice(&u16::from(*r).to_be_bytes());
    }
    v
}

/// Feeds `bytes` as one message: it must be consumed whole, with nothing lent.
fn consume(s: &mut Server<'_>, bytes: &[u8]) {
    let p = s.handle_input(bytes).unwrap();
    assert_eq!((p.consumed, p.lent), (bytes.len(), None));
}

/// Writes everything pending; the option replies' types.
fn drain(s: &mut Server<'_>) -> Vec<ReplyType> {
    let mut out = Vec::new();
    let mut buf = [0u8; 4096];
    while let Some(n) = s.poll_transmit(&mut buf).unwrap() {
        out.push(
            OptionReplyHeaderRepr::parse(&buf[..n])
                .unwrap()
                .unwrap()
                .reply,
        );
    }
    out
}

#[test]
fn server_starttls_decided_on_input() {
    for mode in [TlsMode::Selective, TlsMode::Forced] {
        let mut s = server(mode);
        consume(&mut s, &3u32.to_be_bytes());
        if mode == TlsMode::Selective {
            consume(&mut s, &opt(OptionType::StructuredReply, &[]));
            assert_eq!(drain(&mut s), [ReplyType::Ack]);
        }
        consume(&mut s, &opt(OptionType::StartTls, &[]));
        // The transition has happened; the ACK is still to be written and holds everything.
        let ciphertext = opt(OptionType::ExtendedHeaders, &[]);
        assert_eq!(s.handle_input(&ciphertext).unwrap().consumed, 0);
        assert_eq!(s.poll_event(), None, "StartTls only after the ACK");
        assert_eq!(s.tls_established(), Err(CommandError::InvalidState));
        assert!(!s.tls_active());
        // A buffer too small keeps it pending.
        let mut small = [0u8; 8];
        assert!(s.poll_transmit(&mut small).is_err());
        assert_eq!(s.poll_event(), None);
        assert_eq!(drain(&mut s), [ReplyType::Ack]);
        assert_eq!(s.poll_event(), Some(Event::StartTls));
        assert_eq!(s.poll_event(), None);
        // AwaitTls: nothing is read, the bytes are the TLS layer's.
        assert_eq!(s.handle_input(&ciphertext).unwrap().consumed, 0);
        s.tls_established().unwrap();
        assert!(s.tls_active());
        // Everything negotiated before STARTTLS was forgotten when it was handled.
        consume(&mut s, &opt(OptionType::Go, &go_data(b"disk", &[])));
        assert_eq!(drain(&mut s).last(), Some(&ReplyType::Ack));
        let Some(Event::Ready(r)) = s.poll_event() else {
            panic!("not ready")
        };
        assert_eq!(r.style, HeaderStyle::Simple);
    }
}

#[test]
fn server_go_enters_transmission_on_input() {
    let mut s = server(TlsMode::Off);
    consume(&mut s, &3u32.to_be_bytes());
    consume(&mut s, &opt(OptionType::StructuredReply, &[]));
    assert_eq!(drain(&mut s), [ReplyType::Ack]);
    assert!(s.poll_timeout().is_some());
    let go = opt(
        OptionType::Go,
        &go_data(b"disk", &[InfoType::Name, InfoType::BlockSize]),
    );
    consume(&mut s, &go);
    let mut read = vec![0u8; 28];
    RequestRepr {
        flags: CommandFlags::empty(),
        command: CommandType::Read,
        cookie: 1,
        offset: 0,
        length: 512,
    }
    .emit(&mut read, false)
    .unwrap();
    // In transmission as soon as GO is consumed, with its replies still pending.
    assert!(s.is_transmitting() && !s.is_closed());
    assert_eq!(s.poll_timeout(), None, "no handshake deadline any more");
    assert_eq!(s.handle_input(&read).unwrap().consumed, 0);
    assert_eq!(s.poll_event(), None);
    // Part by part: the INFO cursor is output progress; input stays blocked to the last part.
    let mut buf = [0u8; 4096];
    let mut parts = Vec::new();
    while let Some(n) = s.poll_transmit(&mut buf).unwrap() {
        parts.push(
            OptionReplyHeaderRepr::parse(&buf[..n])
                .unwrap()
                .unwrap()
                .reply,
        );
        if parts.last() != Some(&ReplyType::Ack) {
            assert_eq!(s.handle_input(&read).unwrap().consumed, 0);
            assert_eq!(s.poll_event(), None, "Ready only after the final ACK");
        }
    }
    assert_eq!(
        parts,
        [
            ReplyType::Info,
            ReplyType::Info,
            ReplyType::Info,
            ReplyType::Ack
        ]
    );
    let Some(Event::Ready(r)) = s.poll_event() else {
        panic!("not ready")
    };
    assert_eq!(r.style, HeaderStyle::Structured);
    let p = s.handle_input(&read).unwrap();
    assert!(matches!(p.lent, Some(Lent::Request(_))));
    assert_eq!(p.consumed, 28);
}

#[test]
fn server_export_name_and_abort_decided_on_input() {
    // EXPORT_NAME: transmission once consumed; Ready after the reply.
    let mut s = server(TlsMode::Off);
    consume(&mut s, &3u32.to_be_bytes());
    consume(&mut s, &opt(OptionType::ExportName, b"disk"));
    assert!(s.is_transmitting());
    assert_eq!(s.poll_event(), None);
    let mut buf = [0u8; 256];
    assert_eq!(s.poll_transmit(&mut buf), Ok(Some(10)));
    assert!(matches!(s.poll_event(), Some(Event::Ready(_))));

    // ABORT: closed once consumed; the ACK is still written, then Finished.
    let mut s = server(TlsMode::Forced);
    consume(&mut s, &3u32.to_be_bytes());
    consume(&mut s, &opt(OptionType::Abort, &[]));
    assert!(s.is_closed());
    assert_eq!(s.poll_timeout(), None);
    assert_eq!(s.handle_input(b"after").unwrap().consumed, 0);
    assert_eq!(s.poll_event(), None);
    assert_eq!(drain(&mut s), [ReplyType::Ack]);
    assert_eq!(s.poll_event(), Some(Event::Finished));
    // Now whatever follows ABORT is dropped unread.
    assert_eq!(s.handle_input(b"after").unwrap().consumed, 5);

    // An oversized option: once its last byte is read, ERR_TOO_BIG is pending and blocks.
    let mut s = server(TlsMode::Off);
    consume(&mut s, &3u32.to_be_bytes());
    let big = opt(OptionType::List, &vec![0u8; 20 * 1024]);
    consume(&mut s, &big[..16]);
    consume(&mut s, &big[16..]);
    let list = opt(OptionType::List, &[]);
    assert_eq!(s.handle_input(&list).unwrap().consumed, 0);
    assert_eq!(drain(&mut s), [ReplyType::ErrTooBig]);
    consume(&mut s, &list);
    assert_eq!(drain(&mut s), [ReplyType::Server, ReplyType::Ack]);
}

/// A client that has read the greeting and written its flags, and the server bytes of the
/// answer to `option` (sent by our server).
fn client_with_reply(option: &[u8], tls: TlsMode) -> (Client, Vec<u8>) {
    let mut s = server(tls);
    let mut c = Client::<16>::new(ClientConfig::default());
    let greeting = b"NBDMAGICIHAVEOPT\x00\x03";
    assert_eq!(c.handle_input(greeting).unwrap().consumed, 18);
    // Options is entered on the greeting; the client flags are pending output until written.
    assert!(!c.can_send_option());
    let mut buf = [0u8; 256];
    let n = c.poll_transmit(&mut buf).unwrap().unwrap();
    assert!(c.can_send_option());
    consume(&mut s, &buf[..n]);
    assert!(matches!(
        c.poll_event(),
        Some(client::Event::Greeted {
            fixed_newstyle: true
        })
    ));
    consume(&mut s, option);
    let mut reply = Vec::new();
    while let Some(n) = s.poll_transmit(&mut buf).unwrap() {
        reply.extend_from_slice(&buf[..n]);
    }
    (c, reply)
}

#[test]
fn client_transitions_on_input() {
    // GO: transmission as the final ACK is consumed.
    let mut buf = [0u8; 256];
    let go = opt(OptionType::Go, &go_data(b"disk", &[]));
    let (mut c, mut reply) = client_with_reply(&go, TlsMode::Off);
    assert_eq!(c.opt_go("disk", &[], &mut buf), Ok(go.len()));
    reply.extend_from_slice(b"extra");
    let p = c.handle_input(&reply).unwrap();
    assert!(matches!(p.item, Some(Item::Info(_))));
    assert!(!c.is_transmitting());
    let p2 = c.handle_input(&reply[p.consumed..]).unwrap();
    assert!(matches!(
        p2.item,
        Some(Item::OptionDone { result: Ok(()), .. })
    ));
    assert_eq!(p.consumed + p2.consumed, reply.len() - 5);
    assert!(c.is_transmitting() && c.can_send_request());
    assert_eq!(c.export().map(|e| e.size), Some(1 << 20));
    assert!(matches!(c.poll_event(), Some(client::Event::Ready(_))));

    // STARTTLS: AwaitTls as the ACK is consumed; the bytes after it are not read.
    let starttls = opt(OptionType::StartTls, &[]);
    let (mut c, mut reply) = client_with_reply(&starttls, TlsMode::Selective);
    c.opt_starttls(&mut buf).unwrap();
    let ack = reply.len();
    reply.extend_from_slice(b"\x16\x03\x03");
    let p = c.handle_input(&reply).unwrap();
    assert_eq!(p.consumed, ack);
    assert!(!c.can_send_option());
    assert_eq!(c.handle_input(&reply[ack..]).unwrap().consumed, 0);
    assert_eq!(c.poll_event(), Some(client::Event::StartTls));
    c.tls_established().unwrap();
    assert!(c.can_send_option() && c.tls_active());

    // ABORT: closed as the ACK is consumed.
    let abort = opt(OptionType::Abort, &[]);
    let (mut c, reply) = client_with_reply(&abort, TlsMode::Off);
    c.opt_abort(&mut buf).unwrap();
    assert!(!c.is_closed());
    let p = c.handle_input(&reply).unwrap();
    assert_eq!(p.consumed, reply.len());
    assert!(c.is_closed());
    assert_eq!(c.poll_event(), Some(client::Event::Finished));
}
