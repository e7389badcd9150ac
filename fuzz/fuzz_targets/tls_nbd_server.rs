//! The TLS layer feeding a core: a real in-memory TLS session (our client layer against our
//! server layer) is set up after an NBD STARTTLS, then the fuzz input is sent as encrypted
//! application data and cut into TLS records and transport reads at sizes taken from the input;
//! the server layer's plaintext goes to nbd-core's server, as a driver would do it. Nothing may
//! panic, and the server must never parse a byte before TLS is established.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_core::export::Export;
use nbd_core::server::{Event, Lent, Server, ServerConfig, TlsMode};
use nbd_core::wire::ErrorCode;
use nbd_core::Instant;
use tls_glue::TlsLayer;

static EXPORTS: [Export<'static>; 1] = [Export::new("disk", 1 << 20)];

/// Moves `from`'s pending bytes to `to`; `None` on a TLS error, else whether anything moved.
fn move_bytes(from: &mut TlsLayer, to: &mut TlsLayer, buf: &mut [u8]) -> Option<bool> {
    let mut moved = false;
    while let Ok(Some(n)) = from.poll_transmit(buf) {
        moved = true;
        to.handle_ciphertext(&buf[..n]).ok()?;
    }
    Some(moved)
}

/// Runs the handshake between two layers in memory.
fn pump(a: &mut TlsLayer, b: &mut TlsLayer) -> bool {
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
    let Some((&cuts, data)) = data.split_first() else { return };
    let (server_cfg, client_cfg) = tls_glue::test_support::fuzz_pair_configs();
    let mut config = ServerConfig::new(&EXPORTS);
    config.tls = TlsMode::Forced;
    let mut nbd = Server::new(config, Instant::ZERO).unwrap();
    let mut out = vec![0u8; 1 << 16];
    // Plaintext up to STARTTLS.
    let mut hello = 3u32.to_be_bytes().to_vec();
    hello.extend_from_slice(b"IHAVEOPT\0\0\0\x05\0\0\0\0");
    let mut pos = 0;
    while let Ok(p) = nbd.handle_input(&hello[pos..]) {
        while let Ok(Some(_)) = nbd.poll_transmit(&mut out) {}
        if p.consumed == 0 {
            break;
        }
        pos += p.consumed;
    }
    assert_eq!(nbd.poll_event(), Some(Event::StartTls));
    let mut server = TlsLayer::server(server_cfg).unwrap();
    let mut client = TlsLayer::client(client_cfg, "localhost").unwrap();
    if !pump(&mut client, &mut server) {
        return;
    }
    nbd.tls_established().unwrap();
    // The input, encrypted by the client in pieces (so record boundaries vary), delivered to the
    // server layer in transport reads of another size.
    let record = usize::from(cuts & 0x0f) * 97 + 1;
    let read = usize::from(cuts >> 4) * 331 + 1;
    let mut wire = Vec::new();
    for piece in data.chunks(record) {
        let start = wire.len();
        wire.resize(start + client.encrypted_len(piece.len()), 0);
        let Ok(n) = client.encrypt(piece, &mut wire[start..]) else { return };
        wire.truncate(start + n);
    }
    let mut requests = 0u32;
    for chunk in wire.chunks(read) {
        let mut off = 0;
        while off < chunk.len() {
            match server.handle_ciphertext(&chunk[off..]) {
                Ok(n) => off += n,
                Err(_) => return,
            }
            // Deliver plaintext to the core the way the drivers do.
            loop {
                let (consumed, request, lent) = match nbd.handle_input(server.plaintext()) {
                    Ok(p) => (
                        p.consumed,
                        match p.lent {
                            Some(Lent::Request(r)) => Some(r),
                            _ => None,
                        },
                        p.lent.is_some(),
                    ),
                    Err(_) => return,
                };
                if let Some(r) = request {
                    requests += 1;
                    let _ = if requests % 2 == 0 {
                        nbd.reply_error(&r, ErrorCode::Io, "fuzz", &mut out)
                    } else {
                        nbd.reply_ok(&r, &mut out)
                    };
                }
                server.consume_plaintext(consumed);
                while let Ok(Some(n)) = nbd.poll_transmit(&mut out) {
                    let mut enc = vec![0u8; server.encrypted_len(n)];
                    if server.encrypt(&out[..n], &mut enc).is_err() {
                        return;
                    }
                }
                while nbd.poll_event().is_some() {}
                if nbd.is_closed() {
                    return;
                }
                if consumed == 0 && !lent {
                    break;
                }
            }
            if off < chunk.len() && server.plaintext().len() >= 256 * 1024 {
                return;
            }
        }
    }
});
