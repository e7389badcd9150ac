//! In-memory TLS throughput of `TlsLayer` (one core, both peers in one thread), the way an
//! NBD server sends READ replies: a 16-byte header + 256 KiB payload per `encrypt` call.
//!
//! `cargo run --release -p tls-glue --example throughput --features generate [-- MIB]`
//! (MIB: bytes per measurement in MiB, default 1024)
use std::sync::Arc;
use std::time::Instant;

use tls_glue::*;

#[allow(clippy::vec_init_then_push)]
fn main() {
    let dir = std::env::temp_dir().join(format!("tls-glue-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    generate_qemu_layout(&dir, &GenerateOptions::default()).expect("generate");
    let mut backends = vec![];
    #[cfg(feature = "aws-lc-rs")]
    backends.push(CryptoBackend::aws_lc_rs());
    #[cfg(feature = "ring")]
    backends.push(CryptoBackend::ring());
    #[cfg(feature = "rustcrypto")]
    backends.push(CryptoBackend::rustcrypto(Arc::new(OsRandom)));
    let mib: usize = std::env::args()
        .nth(1)
        .map_or(1024, |a| a.parse().expect("MIB: a number"));
    let total: usize = mib << 20;
    let chunk = 256 * 1024 + 16;
    for b in backends {
        let sc = TlsCreds::load_dir(
            &dir,
            CredsOptions::new(Endpoint::Server, b.clone(), Arc::new(SystemClock)),
        )
        .unwrap();
        let cc = TlsCreds::load_dir(
            &dir,
            CredsOptions::new(Endpoint::Client, b.clone(), Arc::new(SystemClock)),
        )
        .unwrap();
        let mut s = TlsLayer::server(&TlsServerConfig::new(&sc).unwrap()).unwrap();
        let mut c = TlsLayer::client(&TlsClientConfig::new(&cc).unwrap(), "localhost").unwrap();
        let mut wire = vec![0u8; 1 << 20];
        for _ in 0..10 {
            while let Ok(Some(n)) = c.poll_transmit(&mut wire) {
                s.handle_ciphertext(&wire[..n]).unwrap();
            }
            while let Ok(Some(n)) = s.poll_transmit(&mut wire) {
                c.handle_ciphertext(&wire[..n]).unwrap();
            }
        }
        assert!(!s.is_handshaking());
        let payload = vec![0x5au8; chunk];
        let mut out = vec![0u8; s.encrypted_len(chunk)];
        // encrypt + decrypt (the receiving side reads into the layer's own buffer)
        let t = Instant::now();
        let mut sent = 0;
        let mut got = 0;
        while sent < total {
            let n = s.encrypt(&payload, &mut out).unwrap();
            sent += chunk;
            let mut rest = &out[..n];
            while !rest.is_empty() {
                let buf = c.ciphertext_buffer();
                let k = buf.len().min(rest.len());
                buf[..k].copy_from_slice(&rest[..k]);
                c.commit_ciphertext(k).unwrap();
                rest = &rest[k..];
                got += c.plaintext().len();
                let p = c.plaintext().len();
                c.consume_plaintext(p);
            }
        }
        assert_eq!(got, sent);
        let both = sent as f64 / t.elapsed().as_secs_f64() / 1e9;
        // encrypt only (last: the client never sees these records)
        let t = Instant::now();
        let mut sent = 0;
        while sent < total {
            s.encrypt(&payload, &mut out).unwrap();
            sent += chunk;
        }
        let enc = sent as f64 / t.elapsed().as_secs_f64() / 1e9;
        println!(
            "{:10} {} {:28} encrypt {:.2} GB/s, encrypt+decrypt {:.2} GB/s",
            b.name(),
            s.protocol_version().unwrap(),
            s.cipher_suite().unwrap(),
            enc,
            both
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
