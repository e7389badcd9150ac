//! `Link`, the plaintext-to-TLS hand-over, in memory: a client that pipelines its ClientHello
//! right behind the plaintext that asks for TLS (the bytes after the switch point must reach
//! the TLS layer, never the core), the handshake reported once, data both ways; a second
//! switch refused; bytes that are not TLS after the switch; plaintext before TLS.
#![cfg(all(
    feature = "std",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto")
))]

mod common;

use common::*;
use tls_glue::*;

const ASK: &[u8] = b"STARTTLS\n";

fn layers(pki: &Pki) -> (TlsLayer, TlsLayer) {
    let b = default_backend();
    let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, b.clone());
    let cc = client_creds_with(&pki.ca.pem, None, Some(&pki.client), b);
    let scfg = TlsServerConfig::new(&sc).unwrap();
    let ccfg = TlsClientConfig::new(&cc).unwrap();
    (
        TlsLayer::client(&ccfg, "localhost").unwrap(),
        TlsLayer::server(&scfg).unwrap(),
    )
}

/// Copies `bytes` into the link as the transport would, in reads of whatever it offers.
fn receive(link: &mut Link<GrowingBuffer>, mut bytes: &[u8]) -> Result<(), TlsError> {
    while !bytes.is_empty() {
        let buf = link.recv_buffer();
        assert!(!buf.is_empty(), "the link has no room");
        let n = buf.len().min(bytes.len());
        buf[..n].copy_from_slice(&bytes[..n]);
        link.received(n)?;
        bytes = &bytes[n..];
    }
    Ok(())
}

/// What the link wants sent, taken.
fn take(link: &mut Link<GrowingBuffer>) -> Vec<u8> {
    let p = link.pending_transmit().to_vec();
    link.transmit_done(p.len());
    p
}

/// The server's plaintext, as a core would consume it.
fn drain_input(link: &mut Link<GrowingBuffer>) -> Vec<u8> {
    let mut got = Vec::new();
    link.deliver(|p| {
        got.extend_from_slice(p);
        Ok::<_, ()>(p.len())
    })
    .unwrap();
    got
}

#[test]
fn ciphertext_pipelined_after_the_switch_point_goes_to_tls() {
    let pki = Pki::new();
    let (mut client, server_layer) = layers(&pki);
    let mut server = Link::new(GrowingBuffer::new(16, 64 * 1024));

    // The client's plaintext request and its ClientHello arrive in one read.
    let mut first = ASK.to_vec();
    first.extend(client.pending_transmit());
    let hello = client.pending_transmit().len();
    client.transmit_done(hello);
    receive(&mut server, &first).unwrap();

    // The core sees the plaintext and consumes exactly the request.
    assert!(server.input().starts_with(ASK));
    assert_eq!(server.input().len(), first.len());
    server.consume(ASK.len());
    assert!(!server.is_tls());
    assert!(
        server.pending_transmit().is_empty(),
        "nothing to send before TLS"
    );

    server.start_tls(server_layer).unwrap();
    assert!(server.is_handshaking());
    assert!(
        server.input().is_empty(),
        "the ClientHello is not plaintext for the core"
    );
    assert!(!server.poll_established());

    // Flights both ways until the handshake is done.
    for _ in 0..10 {
        let to_client = take(&mut server);
        feed_all(&mut client, &to_client).unwrap();
        let to_server = client.pending_transmit().to_vec();
        client.transmit_done(to_server.len());
        receive(&mut server, &to_server).unwrap();
        if !server.is_handshaking() && !client.is_handshaking() {
            break;
        }
    }
    assert!(!server.is_handshaking(), "handshake did not finish");
    assert!(server.poll_established(), "established is reported");
    assert!(!server.poll_established(), "… once");
    assert_eq!(
        server
            .layer()
            .and_then(TlsLayer::peer_subject_dn)
            .as_deref(),
        Some("C=GB,ST=London,L=City Of London,O=Test Org,CN=client.example.com")
    );

    // Client → core through the link, core → client through seal.
    let mut rec = vec![0u8; client.encrypted_len(11)];
    let n = client.encrypt(b"hello link!", &mut rec).unwrap();
    receive(&mut server, &rec[..n]).unwrap();
    assert_eq!(drain_input(&mut server), b"hello link!");
    let mut out = vec![0u8; server.sealed_len(5)];
    let n = server.seal(b"reply", &mut out).unwrap();
    assert_ne!(&out[..n], b"reply", "sealed output is encrypted");
    feed_all(&mut client, &out[..n]).unwrap();
    assert_eq!(client.plaintext(), b"reply");

    // A second switch is refused and changes nothing.
    let (_, another) = layers(&pki);
    assert_eq!(server.start_tls(another), Err(SwitchError::AlreadyTls));
    assert!(server.error().is_none());
    let n = server.seal(b"still", &mut out).unwrap();
    let k = client.plaintext().len();
    client.consume_plaintext(k);
    feed_all(&mut client, &out[..n]).unwrap();
    assert_eq!(client.plaintext(), b"still");

    // close_notify reaches the client.
    let n = server.close(&mut out).unwrap();
    assert!(n > 0);
    feed_all(&mut client, &out[..n]).unwrap();
    assert!(client.peer_closed());
}

#[test]
fn before_tls_the_link_carries_plaintext_as_it_is() {
    let mut link = Link::new(GrowingBuffer::new(4, 1024));
    receive(&mut link, b"0123456789").unwrap();
    assert_eq!(drain_input(&mut link), b"0123456789");
    let mut out = [0u8; 8];
    assert_eq!(link.seal(b"abc", &mut out), Ok(3));
    assert_eq!(&out[..3], b"abc");
    assert_eq!(link.seal_in_place(b"abc").unwrap(), b"abc");
    assert_eq!(link.close(&mut out), Ok(0), "no close_notify without TLS");
    assert_eq!(link.handle_eof(), Ok(()));
}

#[test]
fn a_full_buffer_offers_no_room_until_the_core_consumes() {
    let mut link = Link::new(GrowingBuffer::new(8, 16));
    receive(&mut link, &[7u8; 16]).unwrap();
    assert!(
        link.recv_buffer().is_empty(),
        "16 bytes fill a link limited to 16"
    );
    link.consume(10);
    assert_eq!(
        link.recv_buffer().len(),
        10,
        "consumed bytes make room again"
    );
}

#[test]
fn bytes_after_the_switch_that_are_not_tls_are_fatal() {
    let pki = Pki::new();
    let (_, server_layer) = layers(&pki);
    let mut link = Link::new(GrowingBuffer::new(64, 1024));
    let mut first = ASK.to_vec();
    first.extend_from_slice(b"GET / HTTP/1.1\r\n\r\n");
    receive(&mut link, &first).unwrap();
    link.consume(ASK.len());
    match link.start_tls(server_layer) {
        Err(SwitchError::Tls(_)) => {}
        other => panic!("expected a TLS error, got {other:?}"),
    }
    assert!(link.error().is_some());
}
