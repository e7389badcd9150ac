//! Helpers for fuzz targets and external tests (feature `test-support`, or `--cfg fuzzing`).
//!
//! A later cargo-fuzz target can call [`fuzz_server`] with arbitrary bytes:
//! they are fed as ciphertext from a client to a fresh server [`TlsLayer`], cut into pieces
//! at points taken from the input itself, followed by EOF. Nothing may panic.

use crate::{TlsLayer, TlsServerConfig};

/// Feeds `data` to a server layer made from `config`: the first byte chooses a chunk size
/// (1..=256), the rest is ciphertext, then EOF. Returns the layer for inspection.
pub fn feed_server(config: &TlsServerConfig, data: &[u8]) -> Option<TlsLayer> {
    let mut layer = TlsLayer::server(config).ok()?;
    let (chunk, rest) = match data.split_first() {
        Some((c, rest)) => (usize::from(*c) + 1, rest),
        None => (1, data),
    };
    let mut out = [0u8; 4096];
    for piece in rest.chunks(chunk) {
        let mut off = 0;
        while off < piece.len() {
            match layer.handle_ciphertext(&piece[off..]) {
                Ok(0) => {
                    let n = layer.plaintext().len();
                    layer.consume_plaintext(n);
                    if layer.handle_ciphertext(&piece[off..]) == Ok(0) {
                        break;
                    }
                }
                Ok(n) => off += n,
                Err(_) => break,
            }
        }
        while let Ok(Some(_)) = layer.poll_transmit(&mut out) {}
        if layer.error().is_some() {
            break;
        }
    }
    let _ = layer.handle_eof();
    Some(layer)
}

/// A server configuration with freshly generated credentials (cached per process),
/// for fuzzing. Needs `std` and `generate`.
#[cfg(all(
    feature = "generate",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")
))]
pub fn fuzz_server_config() -> &'static TlsServerConfig {
    static CONFIG: std::sync::OnceLock<TlsServerConfig> = std::sync::OnceLock::new();
    CONFIG.get_or_init(|| {
        let dir = std::env::temp_dir().join(std::format!("tls-glue-fuzz-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::generate_qemu_layout(&dir, &crate::GenerateOptions::default())
            .expect("generate fuzz credentials");
        let creds = crate::TlsCreds::load_dir(
            &dir,
            crate::CredsOptions::system(crate::Endpoint::Server).verify_peer(false),
        )
        .expect("load fuzz credentials");
        let _ = std::fs::remove_dir_all(&dir);
        crate::TlsServerConfig::new(&creds).expect("fuzz server config")
    })
}

/// The fuzz entry point: arbitrary bytes into a server [`TlsLayer`].
#[cfg(all(
    feature = "generate",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")
))]
pub fn fuzz_server(data: &[u8]) {
    let _ = feed_server(fuzz_server_config(), data);
}

/// A server and a client configuration that trust each other (fresh credentials, cached per
/// process; the server does not ask for a client certificate), for fuzzing a TLS session end
/// to end. Needs `std` and `generate`.
#[cfg(all(
    feature = "generate",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")
))]
pub fn fuzz_pair_configs() -> &'static (TlsServerConfig, crate::TlsClientConfig) {
    static CONFIGS: std::sync::OnceLock<(TlsServerConfig, crate::TlsClientConfig)> =
        std::sync::OnceLock::new();
    CONFIGS.get_or_init(|| {
        let dir =
            std::env::temp_dir().join(std::format!("tls-glue-fuzz-pair-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        crate::generate_qemu_layout(&dir, &crate::GenerateOptions::default())
            .expect("generate fuzz credentials");
        let server = crate::TlsCreds::load_dir(
            &dir,
            crate::CredsOptions::system(crate::Endpoint::Server).verify_peer(false),
        )
        .expect("load fuzz server credentials");
        let client =
            crate::TlsCreds::load_dir(&dir, crate::CredsOptions::system(crate::Endpoint::Client))
                .expect("load fuzz client credentials");
        let _ = std::fs::remove_dir_all(&dir);
        (
            TlsServerConfig::new(&server).expect("fuzz server config"),
            crate::TlsClientConfig::new(&client).expect("fuzz client config"),
        )
    })
}

/// A client configuration that offers TLS 1.2 only: stands in for an old peer in tests.
#[cfg(feature = "tls12")]
pub fn tls12_only_client(creds: &crate::TlsCreds) -> crate::TlsClientConfig {
    static V12: &[&rustls::SupportedProtocolVersion] = &[&rustls::version::TLS12];
    crate::TlsClientConfig::build(creds, &crate::ClientOptions::default(), V12)
        .expect("TLS 1.2 client configuration")
}

/// The WebSocket fuzz entry point: arbitrary bytes from a peer into a server
/// [`WebSocket`](crate::ws::WebSocket) and a client one, cut into pieces at sizes the input
/// chooses, with the payload consumed as a protocol core would, then EOF. Nothing may panic,
/// and nothing may grow past the configured bounds.
#[cfg(feature = "websocket")]
pub fn fuzz_websocket(data: &[u8]) {
    use crate::ws::{Event, WebSocket, WsConfig};
    let Some((&first, rest)) = data.split_first() else {
        return;
    };
    let chunk = usize::from(first & 0x3f) + 1;
    let config = WsConfig::default()
        .with_max_head(512)
        .with_max_headers(8)
        .with_max_frame(4096)
        .with_payload_limit(1024);
    for mut ws in [
        WebSocket::server(config),
        WebSocket::client(config, "h", "/", None, [7; 16], [1; 32]),
    ] {
        let mut input = rest;
        let mut out = [0u8; 64];
        while !input.is_empty() {
            let n = match ws.handle_input(&input[..chunk.min(input.len())]) {
                Ok(n) => n,
                Err(_) => break,
            };
            assert!(ws.payload().len() <= 1024);
            while let Some(e) = ws.poll_event() {
                if let Event::Http(_) = e {
                    let _ = ws.http_done(first & 0x40 != 0);
                }
            }
            // a core takes half of what it is given, and answers
            let p = ws.payload().len();
            ws.consume_payload(p.div_ceil(2));
            if ws.is_open() {
                let _ = ws.frame(b"ok", &mut out);
            }
            while ws.poll_transmit(&mut out).is_some() {}
            if n == 0 && ws.payload().is_empty() {
                break;
            }
            input = &input[n..];
        }
        let _ = ws.handle_eof();
    }
}
