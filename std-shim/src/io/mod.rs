//! I/O around the pump: connected streams, the blocking and tokio loops, listening sockets
//! and accept loops, and listen addresses.

pub mod blocking;
pub mod listen;
pub mod stream;
pub mod tls_stream;
#[cfg(feature = "tokio")]
pub mod tokio;

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{Context, Result};

#[cfg(feature = "tokio")]
pub use stream::AsyncStream;
pub use stream::Stream;

/// Where to listen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    /// A TCP address.
    Tcp(SocketAddr),
    /// A Unix socket path (removed first if it exists, and on shutdown).
    Unix(PathBuf),
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Tcp(a) => write!(f, "{a}"),
            Self::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// Resolves a listen address: `HOST:PORT`, `[V6]:PORT`, or a bare host or address (IPv6 too),
/// which gets `default_port`.
pub fn resolve(addr: &str, default_port: u16) -> Result<Vec<SocketAddr>> {
    use std::net::ToSocketAddrs;
    if let Ok(a) = addr.parse::<SocketAddr>() {
        return Ok(vec![a]);
    }
    let has_port = addr
        .rsplit_once(':')
        .is_some_and(|(h, p)| !h.is_empty() && !h.ends_with(':') && p.parse::<u16>().is_ok());
    let with_port = if has_port {
        addr.to_string()
    } else if addr.contains(':') && !addr.starts_with('[') {
        format!("[{addr}]:{default_port}")
    } else {
        format!("{addr}:{default_port}")
    };
    let addrs: Vec<_> = with_port
        .to_socket_addrs()
        .with_context(|| format!("resolve {addr}"))?
        .collect();
    if addrs.is_empty() {
        anyhow::bail!("resolve {addr}: no addresses");
    }
    Ok(addrs)
}

/// Where a service listens: every address of each `listen` entry (see [`resolve`]) and the
/// `unix` socket; with neither, `127.0.0.1:default_port`.
pub fn endpoints(
    listen: &[String],
    unix: Option<&std::path::Path>,
    default_port: u16,
) -> Result<Vec<Endpoint>> {
    let mut endpoints = Vec::new();
    for l in listen {
        endpoints.extend(resolve(l, default_port)?.into_iter().map(Endpoint::Tcp));
    }
    endpoints.extend(unix.map(|p| Endpoint::Unix(p.to_path_buf())));
    if listen.is_empty() && unix.is_none() {
        endpoints.push(Endpoint::Tcp(SocketAddr::from((
            [127, 0, 0, 1],
            default_port,
        ))));
    }
    Ok(endpoints)
}

/// Parses sizes like `64M`, `1G`, `512K`, `4096` (binary multiples).
pub fn parse_size(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().find(|(_, c)| c.is_ascii_alphabetic()) {
        Some((i, _)) => {
            let unit = s[i..].to_ascii_lowercase();
            let m = match unit.trim_end_matches("ib").trim_end_matches('b') {
                "" => 1u64,
                "k" => 1 << 10,
                "m" => 1 << 20,
                "g" => 1 << 30,
                "t" => 1 << 40,
                _ => anyhow::bail!("unknown size unit in {s:?}"),
            };
            (&s[..i], m)
        }
        None => (s, 1),
    };
    let n: u64 = num
        .trim()
        .parse()
        .with_context(|| format!("bad size {s:?}"))?;
    n.checked_mul(mult)
        .with_context(|| format!("size {s:?} too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let r = |a: &str| resolve(a, 5900).unwrap()[0].to_string();
        assert_eq!(r("127.0.0.1"), "127.0.0.1:5900");
        assert_eq!(r("127.0.0.1:10"), "127.0.0.1:10");
        assert_eq!(r("::1"), "[::1]:5900");
        assert_eq!(r("[::1]:7"), "[::1]:7");
        assert!(resolve("no such host.invalid", 1).is_err());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M").unwrap(), 64 << 20);
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
        assert_eq!(parse_size("512KiB").unwrap(), 512 << 10);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("12Q").is_err());
        assert!(parse_size("").is_err());
    }
}
