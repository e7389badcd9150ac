//! The NBD server, negotiation and transmission: the first byte picks the configuration, the
//! second the cut size; the rest is what a client sends. Requests are answered (alternately
//! with data, holes, errors, extents) so every reply path runs.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nbd_core::export::Export;
use nbd_core::server::{Command, Lent, Server, ServerConfig, TlsMode};
use nbd_core::wire::{BlockSize, ErrorCode, Extent};
use nbd_core::Instant;

static EXPORTS: [Export<'static>; 2] = [
    Export::new("disk", 1 << 20),
    Export::new("ro", 1 << 20).with_read_only(true).with_tls_only(true).with_block_size(BlockSize { minimum: 512, preferred: 4096, maximum: 1 << 20 }),
];

fuzz_target!(|data: &[u8]| {
    let Some((&cfg, rest)) = data.split_first() else { return };
    let Some((&cut, input)) = rest.split_first() else { return };
    let mut config = ServerConfig::new(&EXPORTS);
    config.tls = match cfg % 3 {
        0 => TlsMode::Off,
        1 => TlsMode::Selective,
        _ => TlsMode::Forced,
    };
    config.structured_replies = cfg & 4 == 0;
    config.extended_headers = cfg & 8 == 0;
    config.max_option_len = if cfg & 16 == 0 { 16 * 1024 } else { 4200 };
    config.hide_unknown_before_tls = cfg & 32 != 0;
    let mut server = Server::new(config, Instant::ZERO).unwrap();
    let cut = usize::from(cut).max(1);
    let mut out = vec![0u8; 1 << 16];
    let mut pos = 0;
    let mut end = 0;
    let mut n_req = 0u32;
    for _ in 0..100_000 {
        while let Ok(Some(_)) = server.poll_transmit(&mut out) {}
        while let Some(e) = server.poll_event() {
            if e == nbd_core::server::Event::StartTls {
                let _ = server.tls_established();
            }
        }
        if server.is_closed() {
            break;
        }
        let p = match server.handle_input(&input[pos..end]) {
            Ok(p) => p,
            Err(_) => break,
        };
        pos += p.consumed;
        match p.lent {
            Some(Lent::Request(r)) => {
                n_req += 1;
                let _ = match (r.command, n_req % 4) {
                    (Command::Read, 0) => server.reply_error(&r, ErrorCode::Io, "boom", &mut out),
                    (Command::Read, 1) if r.length > 1 => {
                        let half = r.length / 2;
                        let _ = server.reply_read_hole(&r, r.offset, half as u32, false, &mut out);
                        server.reply_read_data(&r, r.offset + half, r.length - half, true, &mut out)
                    }
                    (Command::Read, _) => server.reply_read_data(&r, r.offset, r.length, true, &mut out),
                    (Command::BlockStatus, _) => server.reply_block_status(
                        &r,
                        &[Extent { length: 4096, flags: 3 }, Extent { length: r.length, flags: 0 }],
                        &mut out,
                    ),
                    (Command::Write, _) => Ok(0),
                    _ => server.reply_ok(&r, &mut out),
                };
                if r.command == Command::Write {
                    // Answered after its data; a stray early reply must be harmless too.
                    if n_req % 5 == 0 {
                        let _ = server.reply_ok(&r, &mut out);
                    }
                }
            }
            Some(Lent::WriteData { .. }) => {}
            None if p.consumed == 0 => {
                if end == input.len() {
                    let _ = server.handle_eof();
                    break;
                }
                end = (end + cut).min(input.len());
            }
            None => {}
        }
    }
});
