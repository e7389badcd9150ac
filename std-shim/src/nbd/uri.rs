//! NBD URIs as libnbd accepts them: `nbd://host[:port]/export`, `nbds://…`,
//! `nbd+unix:///export?socket=PATH`, `nbds+unix://…`, with the `tls-certificates`,
//! `tls-verify-peer` and `tls-hostname` query parameters.

use std::fmt;
use std::path::PathBuf;

use anyhow::{Context, Result, bail};

/// Where an NBD server is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    /// TCP host and port.
    Tcp {
        /// Host name or address (IPv6 without brackets).
        host: String,
        /// Port (10809 by default).
        port: u16,
    },
    /// A Unix socket.
    Unix(PathBuf),
}

/// A parsed NBD URI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NbdUri {
    /// Where to connect.
    pub transport: Transport,
    /// The export name (may be empty: the default export).
    pub export: String,
    /// `nbds`: TLS required, never plaintext.
    pub tls: bool,
    /// `tls-certificates=DIR`: credentials in the QEMU/libnbd layout.
    pub tls_certificates: Option<PathBuf>,
    /// `tls-verify-peer=false` disables server certificate verification (default true).
    pub tls_verify_peer: bool,
    /// `tls-hostname=NAME`: the name to verify instead of the host.
    pub tls_hostname: Option<String>,
}

impl NbdUri {
    /// Whether `s` looks like an NBD URI (rather than a file name).
    pub fn is_uri(s: &str) -> bool {
        ["nbd://", "nbds://", "nbd+unix://", "nbds+unix://"]
            .iter()
            .any(|p| s.starts_with(p))
    }

    /// Parses a URI.
    pub fn parse(s: &str) -> Result<Self> {
        let (scheme, rest) = s
            .split_once("://")
            .with_context(|| format!("not an NBD URI: {s:?}"))?;
        let (tls, unix) = match scheme {
            "nbd" => (false, false),
            "nbds" => (true, false),
            "nbd+unix" => (false, true),
            "nbds+unix" => (true, true),
            "nbd+vsock" | "nbds+vsock" => bail!("vsock NBD URIs are not supported"),
            _ => bail!("unknown NBD URI scheme {scheme:?}"),
        };
        let (rest, query) = match rest.split_once('?') {
            Some((r, q)) => (r, Some(q)),
            None => (rest, None),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if authority.contains('@') {
            bail!(
                "user names in NBD URIs are for TLS-PSK, which is not supported (rustls has no PSK)"
            );
        }
        // libnbd: the export is the path without its leading '/'.
        let export = percent_decode(path.strip_prefix('/').unwrap_or(path))?;
        let mut socket = None;
        let mut tls_certificates = None;
        let mut tls_verify_peer = true;
        let mut tls_hostname = None;
        for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            let v = percent_decode(v)?;
            match k {
                "socket" => socket = Some(PathBuf::from(v)),
                "tls-certificates" => tls_certificates = Some(PathBuf::from(v)),
                "tls-verify-peer" => {
                    tls_verify_peer = match v.as_str() {
                        "1" | "true" | "yes" | "on" => true,
                        "0" | "false" | "no" | "off" => false,
                        _ => bail!("tls-verify-peer must be true or false, not {v:?}"),
                    }
                }
                "tls-hostname" => tls_hostname = Some(v),
                "tls-psk-file" => bail!(
                    "tls-psk-file: TLS-PSK is not supported (rustls has no PSK); use certificates"
                ),
                other => bail!("unknown NBD URI parameter {other:?}"),
            }
        }
        let transport = if unix {
            if !authority.is_empty() {
                bail!("nbd+unix URIs have no host: {s:?}");
            }
            Transport::Unix(socket.context("nbd+unix URIs need ?socket=PATH")?)
        } else {
            if socket.is_some() {
                bail!("socket= is only for nbd+unix URIs");
            }
            let (host, port) = split_host_port(authority)?;
            if host.is_empty() {
                bail!("NBD URI without a host: {s:?}");
            }
            Transport::Tcp { host, port }
        };
        Ok(Self {
            transport,
            export,
            tls,
            tls_certificates,
            tls_verify_peer,
            tls_hostname,
        })
    }

    /// The host name the server's certificate must match.
    pub fn server_name(&self) -> String {
        if let Some(h) = &self.tls_hostname {
            return h.clone();
        }
        match &self.transport {
            Transport::Tcp { host, .. } => host.clone(),
            Transport::Unix(_) => "localhost".into(),
        }
    }
}

impl fmt::Display for NbdUri {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = if self.tls { "nbds" } else { "nbd" };
        match &self.transport {
            Transport::Tcp { host, port } if host.contains(':') => {
                write!(f, "{s}://[{host}]:{port}/{}", self.export)
            }
            Transport::Tcp { host, port } => write!(f, "{s}://{host}:{port}/{}", self.export),
            Transport::Unix(p) => write!(f, "{s}+unix:///{}?socket={}", self.export, p.display()),
        }
    }
}

fn split_host_port(a: &str) -> Result<(String, u16)> {
    if let Some(rest) = a.strip_prefix('[') {
        let (host, after) = rest.split_once(']').context("unterminated [ in NBD URI")?;
        let port = match after.strip_prefix(':') {
            Some(p) => p.parse().with_context(|| format!("bad port {p:?}"))?,
            None if after.is_empty() => 10809,
            None => bail!("junk after ] in NBD URI"),
        };
        return Ok((host.to_string(), port));
    }
    match a.rsplit_once(':') {
        Some((h, p)) => Ok((
            h.to_string(),
            p.parse().with_context(|| format!("bad port {p:?}"))?,
        )),
        None => Ok((a.to_string(), 10809)),
    }
}

/// `%XX` escapes decoded (URIs, HTTP request paths).
pub(crate) fn percent_decode(s: &str) -> Result<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = s.get(i + 1..i + 3).context("truncated %-escape")?;
            out.push(u8::from_str_radix(hex, 16).with_context(|| format!("bad %-escape %{hex}"))?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).context("URI is not UTF-8 after decoding")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libnbd_forms() {
        let u = NbdUri::parse("nbd://example.com/disk").unwrap();
        assert_eq!(
            u.transport,
            Transport::Tcp {
                host: "example.com".into(),
                port: 10809
            }
        );
        assert_eq!(u.export, "disk");
        assert!(!u.tls);
        let u = NbdUri::parse("nbds://127.0.0.1:10810/?tls-certificates=/tmp/pki").unwrap();
        assert!(u.tls);
        assert_eq!(u.export, "");
        assert_eq!(u.tls_certificates, Some("/tmp/pki".into()));
        assert_eq!(NbdUri::parse("nbd://h").unwrap().export, "");
        assert_eq!(
            NbdUri::parse("nbd://h//abs/name").unwrap().export,
            "/abs/name"
        );
        assert_eq!(NbdUri::parse("nbd://h/a%20b").unwrap().export, "a b");
        let u = NbdUri::parse("nbd://[::1]:1234/x").unwrap();
        assert_eq!(
            u.transport,
            Transport::Tcp {
                host: "::1".into(),
                port: 1234
            }
        );
        assert_eq!(u.to_string(), "nbd://[::1]:1234/x");
        let u = NbdUri::parse(
            "nbds+unix:///disk?socket=/run/nbd.sock&tls-hostname=srv&tls-verify-peer=false",
        )
        .unwrap();
        assert_eq!(u.transport, Transport::Unix("/run/nbd.sock".into()));
        assert!(u.tls && !u.tls_verify_peer);
        assert_eq!(u.server_name(), "srv");
        assert_eq!(u.to_string(), "nbds+unix:///disk?socket=/run/nbd.sock");
    }

    #[test]
    fn refusals() {
        for bad in [
            "http://x/y",
            "nbd+unix:///disk",
            "nbd://alice@h/disk",
            "nbds://h/d?tls-psk-file=/k",
            "nbd://h:port/d",
            "nbd://h/d?bogus=1",
            "nbd:///d",
            "nbd://h/%zz",
        ] {
            assert!(NbdUri::parse(bad).is_err(), "{bad}");
        }
        assert!(NbdUri::is_uri("nbds+unix:///x?socket=/s"));
        assert!(!NbdUri::is_uri("/tmp/file"));
    }
}
