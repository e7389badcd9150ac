//! Runs an NBD server and client against each other through fixed buffers, so every part of the
//! cores is linked in, on a Cortex-M with no heap.
#![no_std]
#![no_main]

use cortex_m_rt::entry;
use nbd_core::client::{Client, ClientConfig, Goal, Negotiator, Plan, TlsPolicy};
use nbd_core::export::Export;
use nbd_core::server::{Lent, Server, ServerConfig};
use nbd_core::wire::Extent;
use nbd_core::Instant;
use panic_halt as _;

static EXPORTS: [Export<'static>; 1] = [Export::new("disk", 1 << 20)];

#[entry]
fn main() -> ! {
    let mut server = Server::new(ServerConfig::new(&EXPORTS), Instant::ZERO).unwrap();
    let mut client: Client<4> = Client::new(ClientConfig::default());
    let plan = Plan {
        export: "disk",
        tls: TlsPolicy::Disable,
        extended_headers: true,
        structured_replies: true,
        meta_contexts: &["base:allocation"],
        goal: Goal::Go,
    };
    let mut neg = Negotiator::new();
    let mut to_server = [0u8; 8192];
    let mut to_client = [0u8; 8192];
    let (mut ns, mut nc) = (0usize, 0usize);
    let mut tmp = [0u8; 4096];
    let mut requests = 0u64;
    for _ in 0..64 {
        while let Ok(Some(n)) = server.poll_transmit(&mut to_client[nc..]) {
            nc += n;
        }
        while let Ok(Some(n)) = client.poll_transmit(&mut to_server[ns..]) {
            ns += n;
        }
        if let Ok(Some(n)) = neg.step(&plan, &mut client, &mut to_server[ns..]) {
            ns += n;
        }
        if client.can_send_request() && requests < 2 {
            requests += 1;
            let cmd = if requests == 1 { nbd_core::wire::CommandType::Read } else { nbd_core::wire::CommandType::BlockStatus };
            if let Ok(n) = client.request(cmd, nbd_core::wire::CommandFlags::empty(), requests, 0, 512, &mut to_server[ns..]) {
                ns += n;
            }
        }
        let mut pos = 0;
        while let Ok(p) = server.handle_input(&to_server[pos..ns]) {
            pos += p.consumed;
            if let Some(Lent::Request(r)) = p.lent {
                let n = match r.command {
                    nbd_core::server::Command::BlockStatus => server
                        .reply_block_status(&r, &[Extent { length: 512, flags: 0 }], &mut tmp)
                        .unwrap_or(0),
                    _ => server.reply_read_data(&r, r.offset, r.length, true, &mut tmp).unwrap_or(0) + r.length as usize,
                };
                to_client[nc..nc + n].copy_from_slice(&tmp[..n]);
                nc += n;
            } else if p.consumed == 0 {
                break;
            }
        }
        to_server.copy_within(pos..ns, 0);
        ns -= pos;
        let mut pos = 0;
        while let Ok(p) = client.handle_input(&to_client[pos..nc]) {
            pos += p.consumed;
            if p.consumed == 0 && p.item.is_none() {
                break;
            }
        }
        to_client.copy_within(pos..nc, 0);
        nc -= pos;
    }
    // Keep the results observable so nothing is optimised away.
    unsafe { core::ptr::write_volatile(0x2000_0000 as *mut u64, requests + client.in_flight() as u64) };
    loop {
        cortex_m::asm::wfi();
    }
}
