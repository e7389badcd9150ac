//! VeNCrypt inside TLS on the RFB server: a client picks an X509 sub-type in the clear
//! (`data[0]` chooses X509None, X509Vnc or X509Plain and the record and read sizes), a real
//! in-memory TLS session (our client layer against our server layer) starts at the exact byte
//! the server asks for it, and the rest of the input is sent as encrypted application data:
//! credentials inside TLS (the VNC challenge response, Plain user and password), ClientInit
//! and normal messages, delivered to rfb-core from the server layer's plaintext as a driver
//! does. Nothing may panic, and the server must not parse a byte before TLS is established.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rfb_core::fuzzing::ServerHarness;
use rfb_core::server::ServerConfig;
use rfb_core::wire::{SecurityType, VencryptSubtype};
use tls_glue::TlsLayer;

fn move_bytes(from: &mut TlsLayer, to: &mut TlsLayer, buf: &mut [u8]) -> Option<bool> {
    let mut moved = false;
    while let Ok(Some(n)) = from.poll_transmit(buf) {
        moved = true;
        to.handle_ciphertext(&buf[..n]).ok()?;
    }
    Some(moved)
}

fn handshake(a: &mut TlsLayer, b: &mut TlsLayer) -> bool {
    let mut buf = vec![0u8; 1 << 16];
    for _ in 0..32 {
        let (Some(x), Some(y)) = (move_bytes(a, b, &mut buf), move_bytes(b, a, &mut buf)) else {
            return false;
        };
        if !x && !y {
            return !a.is_handshaking() && !b.is_handshaking();
        }
    }
    false
}

fuzz_target!(|data: &[u8]| {
    let Some((&sel, data)) = data.split_first() else { return };
    let subtypes = [VencryptSubtype::X509None, VencryptSubtype::X509Vnc, VencryptSubtype::X509Plain];
    let pick = subtypes[usize::from(sel % 3)];
    let config = ServerConfig::with_security(&[SecurityType::VeNCrypt], &subtypes);
    let mut h = ServerHarness::new(config);
    h.real_tls = true;
    // In the clear: version, VeNCrypt, its version 0.2, the sub-type.
    let mut hello = b"RFB 003.008\n".to_vec();
    hello.push(u8::from(SecurityType::VeNCrypt));
    hello.extend_from_slice(&[0, 2]);
    hello.extend_from_slice(&u32::from(pick).to_be_bytes());
    match h.feed(&hello, false) {
        Some(n) => assert_eq!(n, hello.len(), "the server stops at the TLS switch"),
        None => panic!("the VeNCrypt handshake failed"),
    }
    assert!(h.tls_requested, "the server asks for TLS after the sub-type");
    let (server_cfg, client_cfg) = tls_glue::test_support::fuzz_pair_configs();
    let mut server = TlsLayer::server(server_cfg).unwrap();
    let mut client = TlsLayer::client(client_cfg, "localhost").unwrap();
    if !handshake(&mut client, &mut server) {
        return;
    }
    h.server().tls_established().unwrap();
    let record = usize::from(sel >> 2 & 0x07) * 61 + 1;
    let read = usize::from(sel >> 5) * 257 + 1;
    let mut wire = Vec::new();
    for piece in data.chunks(record) {
        let start = wire.len();
        wire.resize(start + client.encrypted_len(piece.len()), 0);
        let Ok(n) = client.encrypt(piece, &mut wire[start..]) else { return };
        wire.truncate(start + n);
    }
    for chunk in wire.chunks(read) {
        let mut off = 0;
        while off < chunk.len() {
            match server.handle_ciphertext(&chunk[off..]) {
                Ok(n) => off += n,
                Err(_) => return,
            }
            // A piece of input starting with 0xff moves the clock to the next deadline.
            let jump = server.plaintext().first() == Some(&0xff);
            let Some(consumed) = h.feed(server.plaintext(), jump) else { return };
            server.consume_plaintext(consumed);
            if off < chunk.len() && server.plaintext().len() >= 256 * 1024 {
                return;
            }
        }
    }
    let _ = h.server().handle_eof();
});
