//! Runs an NBD server and client, and an RFB server and client, against each other through fixed
//! buffers, so every part of the cores is linked in, on a Cortex-M with no heap. tests/run.sh
//! links it (any use of `alloc` would fail to link) and runs it under qemu-system-arm.
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
    let frames = rfb();
    // Under QEMU with semihosting (tests/run.sh): report and exit with the verdict.
    let ok = requests == 2 && client.in_flight() == 0 && frames >= 1;
    cortex_m_semihosting::hprintln!(
        "no-alloc-link: nbd requests answered {}/2, rfb frames decoded {}: {}",
        requests - client.in_flight() as u64,
        frames,
        if ok { "ok" } else { "FAILED" }
    );
    cortex_m_semihosting::debug::exit(if ok {
        cortex_m_semihosting::debug::EXIT_SUCCESS
    } else {
        cortex_m_semihosting::debug::EXIT_FAILURE
    });
    loop {
        cortex_m::asm::wfi();
    }
}

static mut SERVER_PIXELS: [u8; 64 * 48 * 4] = [0; 64 * 48 * 4];
static mut CLIENT_PIXELS: [u8; 64 * 48 * 4] = [0; 64 * 48 * 4];

/// VNC authentication, ServerInit, and Hextile/RRE/Raw updates of a 64x48 framebuffer.
fn rfb() -> u64 {
    use rfb_core::client::{Client as VClient, ClientConfig as VClientConfig, Event as CE};
    use rfb_core::server::{Damage, Event as SE, Server as VServer, ServerConfig as VServerConfig, UpdateSource};
    use rfb_core::wire::{Encoding, PixelFormat, Rect, SecurityType};
    use rfb_core::{Framebuffer, FramebufferMut, Instant as I, verify_vnc_response};
    let (w, h) = (64u16, 48u16);
    // SAFETY: single-threaded firmware, the only references to these buffers.
    let (spx, cpx) = unsafe { (&mut *core::ptr::addr_of_mut!(SERVER_PIXELS), &mut *core::ptr::addr_of_mut!(CLIENT_PIXELS)) };
    for (i, b) in spx.iter_mut().enumerate() {
        *b = (i / 37) as u8;
    }
    let types = [SecurityType::VncAuth];
    let mut server = VServer::new(VServerConfig::with_security(&types, &[]), I::ZERO, [3; 16]);
    let mut client = VClient::new(VClientConfig::with_security(&types, &[]), I::ZERO);
    let mut s2c = [0u8; 16384];
    let mut c2s = [0u8; 1024];
    let (mut ns, mut nc) = (0usize, 0usize);
    let mut out = [0u8; 4096];
    let mut frames = 0u64;
    for _ in 0..64 {
        while let Ok(Some(t)) = server.poll_transmit(&mut out) {
            s2c[nc..nc + t.len].copy_from_slice(&out[..t.len]);
            nc += t.len;
        }
        while let Some(e) = server.poll_event() {
            match e {
                SE::VncAuth { challenge, response } => {
                    if verify_vnc_response(b"secret", &challenge, &response) {
                        let _ = server.accept_auth();
                    } else {
                        let _ = server.reject_auth("Authentication failed");
                    }
                }
                SE::ClientInit { .. } => {
                    let _ = server.server_init(w, h, PixelFormat::RGB888, b"no-alloc");
                }
                _ => {}
            }
        }
        if server.wants_update() {
            let fb = Framebuffer::new(&spx[..], w, h, usize::from(w) * 4, PixelFormat::RGB888).unwrap();
            let damage = [Damage::Changed(Rect::new(0, 0, w, h))];
            let src = UpdateSource::new(fb, &damage);
            while let Ok(st) = server.encode_update(&src, &mut out) {
                s2c[nc..nc + st.written].copy_from_slice(&out[..st.written]);
                nc += st.written;
                if st.done {
                    break;
                }
            }
        }
        while let Ok(Some(t)) = client.poll_transmit(&mut out) {
            c2s[ns..ns + t.len].copy_from_slice(&out[..t.len]);
            ns += t.len;
        }
        while let Some(e) = client.poll_event() {
            match e {
                CE::NeedCredentials { .. } => {
                    let _ = client.send_password(b"secret");
                }
                CE::ServerInit { .. } => {
                    let _ = client.set_encodings(&[Encoding::Hextile, Encoding::Rre, Encoding::Raw]);
                    let _ = client.request_update(false, Rect::new(0, 0, w, h));
                }
                CE::UpdateEnd => frames += 1,
                _ => {}
            }
        }
        let mut pos = 0;
        while let Ok(p) = server.handle_input(&c2s[pos..ns]) {
            if p.consumed == 0 && p.lent.is_none() {
                break;
            }
            pos += p.consumed;
        }
        c2s.copy_within(pos..ns, 0);
        ns -= pos;
        let mut fbm = FramebufferMut::new(&mut cpx[..], w, h, usize::from(w) * 4, PixelFormat::RGB888).unwrap();
        let mut pos = 0;
        while let Ok(p) = client.handle_input_fb(&s2c[pos..nc], &mut fbm) {
            if p.consumed == 0 && p.lent.is_none() {
                break;
            }
            pos += p.consumed;
        }
        s2c.copy_within(pos..nc, 0);
        nc -= pos;
    }
    frames
}
