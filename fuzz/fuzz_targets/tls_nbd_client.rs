//! The TLS client layer feeding the NBD client: a server greets and acknowledges STARTTLS in
//! the clear, a real in-memory TLS session (our server layer against our client layer) starts
//! where the client asks for it, and the fuzz input is what the server then sends, as
//! encrypted application data cut into records and transport reads at sizes taken from the
//! input: option replies for the negotiator (GO, INFO, meta contexts, errors) and
//! transmission replies to the requests the client keeps in flight. Nothing may panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_core::client::{Client, ClientConfig, Event, Goal, Negotiator, Plan, TlsPolicy};
use nbd_core::wire::{CommandFlags, CommandType};
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

/// One round of the client application: drain, negotiate, keep requests in flight.
fn drive(client: &mut Client<8>, neg: &mut Negotiator, plan: &Plan<'_>, cookie: &mut u64, out: &mut [u8]) -> bool {
    while let Ok(Some(_)) = client.poll_transmit(out) {}
    while client.poll_event().is_some() {}
    if client.is_closed() || neg.step(plan, client, out).is_err() {
        return false;
    }
    while client.can_send_request() {
        *cookie += 1;
        let cmd = [CommandType::Read, CommandType::BlockStatus, CommandType::Write, CommandType::Flush]
            [(*cookie % 4) as usize];
        let len = if cmd == CommandType::Flush { 0 } else { 512 * (*cookie % 9 + 1) };
        if client.request(cmd, CommandFlags::empty(), *cookie, 0, len, out).is_err() {
            break;
        }
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, input)) = data.split_first() else { return };
    let plan = Plan {
        export: "disk",
        tls: TlsPolicy::Require,
        extended_headers: cfg & 1 != 0,
        structured_replies: cfg & 2 != 0,
        meta_contexts: if cfg & 4 != 0 { &["base:allocation"] } else { &[] },
        goal: if cfg & 8 != 0 { Goal::Info } else { Goal::Go },
    };
    let mut client: Client<8> = Client::new(ClientConfig::new().with_tls_required(true));
    let mut neg = Negotiator::new();
    let mut out = vec![0u8; 1 << 14];
    let mut cookie = 0u64;
    // In the clear: the greeting (fixed newstyle, no zeroes), then the STARTTLS ACK.
    let mut clear = b"NBDMAGICIHAVEOPT\x00\x03".to_vec();
    clear.extend_from_slice(&0x0003_e889_0455_65a9u64.to_be_bytes());
    clear.extend_from_slice(&[0, 0, 0, 5, 0, 0, 0, 1, 0, 0, 0, 0]);
    let mut pos = 0;
    let mut started = false;
    for _ in 0..16 {
        if !drive(&mut client, &mut neg, &plan, &mut cookie, &mut out) {
            return;
        }
        if started {
            break;
        }
        let Ok(p) = client.handle_input(&clear[pos..]) else { return };
        pos += p.consumed;
        while let Some(e) = client.poll_event() {
            started |= e == Event::StartTls;
        }
    }
    assert!(started && pos == clear.len(), "the client asks for TLS after the ACK");
    let (server_cfg, client_cfg) = tls_glue::test_support::fuzz_pair_configs();
    let mut tls_server = TlsLayer::server(server_cfg).unwrap();
    let mut tls_client = TlsLayer::client(client_cfg, "localhost").unwrap();
    if !handshake(&mut tls_client, &mut tls_server) {
        return;
    }
    client.tls_established().unwrap();
    let record = usize::from(cfg >> 4 & 0x03) * 509 + 1;
    let read = usize::from(cfg >> 6) * 701 + 1;
    let mut wire = Vec::new();
    for piece in input.chunks(record) {
        let start = wire.len();
        wire.resize(start + tls_server.encrypted_len(piece.len()), 0);
        let Ok(n) = tls_server.encrypt(piece, &mut wire[start..]) else { return };
        wire.truncate(start + n);
    }
    for chunk in wire.chunks(read) {
        let mut off = 0;
        while off < chunk.len() {
            match tls_client.handle_ciphertext(&chunk[off..]) {
                Ok(n) => off += n,
                Err(_) => return,
            }
            loop {
                if !drive(&mut client, &mut neg, &plan, &mut cookie, &mut out) {
                    return;
                }
                let (consumed, item) = match client.handle_input(tls_client.plaintext()) {
                    Ok(p) => (p.consumed, p.item.is_some()),
                    Err(_) => return,
                };
                tls_client.consume_plaintext(consumed);
                if consumed == 0 && !item {
                    break;
                }
            }
            if off < chunk.len() && tls_client.plaintext().len() >= 256 * 1024 {
                return;
            }
        }
    }
    let _ = client.handle_eof();
});
