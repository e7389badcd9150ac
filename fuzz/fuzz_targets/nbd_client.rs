//! The NBD client and its negotiator: the first byte picks the plan, the second the cut size,
//! the rest is what a server sends. Once transmitting, the client keeps requests in flight.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_core::client::{Client, ClientConfig, Goal, Negotiator, Plan, TlsPolicy};
use nbd_core::wire::{CommandFlags, CommandType};

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else { return };
    let Some((&cut, input)) = rest.split_first() else { return };
    let tls = match cfg % 3 {
        0 => TlsPolicy::Disable,
        1 => TlsPolicy::Allow,
        _ => TlsPolicy::Require,
    };
    let plan = Plan {
        export: "disk",
        tls,
        extended_headers: cfg & 4 != 0,
        structured_replies: cfg & 8 != 0,
        meta_contexts: if cfg & 16 != 0 { &["base:allocation"] } else { &[] },
        goal: match (cfg >> 5) & 3 {
            0 => Goal::Go,
            1 => Goal::Info,
            2 => Goal::List,
            _ => Goal::ListMetaContexts,
        },
    };
    let mut client: Client<8> = Client::new(ClientConfig::new().with_tls_required(tls == TlsPolicy::Require));
    let mut neg = Negotiator::new();
    let cut = usize::from(cut).max(1);
    let mut out = vec![0u8; 1 << 14];
    let (mut pos, mut end, mut cookie) = (0usize, 0usize, 0u64);
    for _ in 0..100_000 {
        while let Ok(Some(_)) = client.poll_transmit(&mut out) {}
        while let Some(e) = client.poll_event() {
            if e == nbd_core::client::Event::StartTls {
                let _ = client.tls_established();
            }
        }
        if client.is_closed() {
            break;
        }
        if neg.step(&plan, &mut client, &mut out).is_err() {
            break;
        }
        while client.can_send_request() {
            cookie += 1;
            let cmd = [CommandType::Read, CommandType::BlockStatus, CommandType::Write, CommandType::Flush][(cookie % 4) as usize];
            let len = if cmd == CommandType::Flush { 0 } else { 512 * (cookie % 9 + 1) };
            if client.request(cmd, CommandFlags::empty(), cookie, 0, len, &mut out).is_err() {
                break;
            }
        }
        let p = match client.handle_input(&input[pos..end]) {
            Ok(p) => p,
            Err(_) => break,
        };
        pos += p.consumed;
        if p.consumed == 0 && p.item.is_none() {
            if end == input.len() {
                let _ = client.handle_eof();
                break;
            }
            end = (end + cut).min(input.len());
        }
    }
});
