//! What VNC server and client sessions share: TigerVNC-style security type lists, VNC password
//! files, Plain user files, `vnc://` addresses and a zlib-rs ZRLE compressor.

use std::fmt;
use std::path::Path;

use anyhow::{Context, Result, bail};
use rfb_core::wire::{SecurityType, VencryptSubtype};
use rfb_core::zlib::{CompressError, ZrleCompressor};

/// A security type as TigerVNC names it (`-SecurityTypes`, `-SecurityTypes` in vncviewer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecName {
    /// RFB type 1 (also offered inside VeNCrypt as sub-type 1 when VeNCrypt is on).
    None,
    /// RFB type 2, DES challenge-response (also sub-type 2 inside VeNCrypt).
    VncAuth,
    /// VeNCrypt 256: username and password **in the clear**.
    Plain,
    /// VeNCrypt 260: X.509 TLS, no further authentication.
    X509None,
    /// VeNCrypt 261: X.509 TLS + VNC password.
    X509Vnc,
    /// VeNCrypt 262: X.509 TLS + username and password.
    X509Plain,
}

impl SecName {
    /// Every name, in TigerVNC's spelling.
    pub const ALL: [SecName; 6] = [
        SecName::None,
        SecName::VncAuth,
        SecName::Plain,
        SecName::X509None,
        SecName::X509Vnc,
        SecName::X509Plain,
    ];

    /// The VeNCrypt sub-type number (1 and 2 for the plain RFB types).
    pub fn subtype(self) -> VencryptSubtype {
        match self {
            SecName::None => VencryptSubtype::None,
            SecName::VncAuth => VencryptSubtype::VncAuth,
            SecName::Plain => VencryptSubtype::Plain,
            SecName::X509None => VencryptSubtype::X509None,
            SecName::X509Vnc => VencryptSubtype::X509Vnc,
            SecName::X509Plain => VencryptSubtype::X509Plain,
        }
    }

    /// The RFB-level type for the two that exist outside VeNCrypt.
    pub fn rfb_type(self) -> Option<SecurityType> {
        match self {
            SecName::None => Some(SecurityType::None),
            SecName::VncAuth => Some(SecurityType::VncAuth),
            _ => None,
        }
    }

    /// Whether the type runs over X.509 TLS.
    pub fn is_x509(self) -> bool {
        matches!(
            self,
            SecName::X509None | SecName::X509Vnc | SecName::X509Plain
        )
    }

    /// Whether the type authenticates with a VNC password.
    pub fn needs_password(self) -> bool {
        matches!(self, SecName::VncAuth | SecName::X509Vnc)
    }

    /// Whether the type authenticates with a username and password.
    pub fn needs_user(self) -> bool {
        matches!(self, SecName::Plain | SecName::X509Plain)
    }

    /// The name of a VeNCrypt sub-type or RFB type number, for messages.
    pub fn describe_subtype(n: u32) -> String {
        match n {
            1 => "None".into(),
            2 => "VncAuth".into(),
            256 => "Plain".into(),
            257 => "TLSNone".into(),
            258 => "TLSVnc".into(),
            259 => "TLSPlain".into(),
            260 => "X509None".into(),
            261 => "X509Vnc".into(),
            262 => "X509Plain".into(),
            263 => "X509SASL".into(),
            264 => "TLSSASL".into(),
            n => format!("sub-type {n}"),
        }
    }

    /// The name of an RFB security type number, for messages.
    pub fn describe_type(n: u8) -> String {
        match n {
            1 => "None".into(),
            2 => "VncAuth".into(),
            16 => "Tight".into(),
            18 => "TLS (anonymous)".into(),
            19 => "VeNCrypt".into(),
            20 => "SASL".into(),
            30 => "ARD".into(),
            n => format!("type {n}"),
        }
    }
}

impl fmt::Display for SecName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SecName::None => "None",
            SecName::VncAuth => "VncAuth",
            SecName::Plain => "Plain",
            SecName::X509None => "X509None",
            SecName::X509Vnc => "X509Vnc",
            SecName::X509Plain => "X509Plain",
        })
    }
}

/// Parses a comma-separated list of TigerVNC security type names (case-insensitive), keeping
/// the order and dropping repeats. The anonymous-TLS types are refused with the reason.
pub fn parse_security_list(s: &str) -> Result<Vec<SecName>> {
    let mut out = Vec::new();
    for word in s.split(',').map(str::trim).filter(|w| !w.is_empty()) {
        let lower = word.to_ascii_lowercase();
        let name = match SecName::ALL
            .iter()
            .find(|n| n.to_string().to_ascii_lowercase() == lower)
        {
            Some(n) => *n,
            None if matches!(lower.as_str(), "tlsnone" | "tlsvnc" | "tlsplain") => bail!(
                "security type {word} needs anonymous TLS, which the TLS library (rustls) does \
                 not support; use the X509 types (X509None, X509Vnc, X509Plain)"
            ),
            None => bail!(
                "unknown security type {word:?}; known: {}",
                SecName::ALL.map(|n| n.to_string()).join(", ")
            ),
        };
        if !out.contains(&name) {
            out.push(name);
        }
    }
    if out.is_empty() {
        bail!("empty security type list");
    }
    Ok(out)
}

/// Formats a list back (`X509Vnc,VncAuth`).
pub fn format_security_list(list: &[SecName]) -> String {
    list.iter()
        .map(|n| n.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// What a server offers for `list`, as TigerVNC does: the RFB types are VeNCrypt (first, if any
/// VeNCrypt-only type is listed) followed by None/VncAuth in list order; inside VeNCrypt every
/// listed type is offered in list order, None and VncAuth included (sub-types 1 and 2).
pub fn server_offer(list: &[SecName]) -> (Vec<SecurityType>, Vec<VencryptSubtype>) {
    let mut types = Vec::new();
    let mut subtypes = Vec::new();
    if list.iter().any(|n| n.rfb_type().is_none()) {
        types.push(SecurityType::VeNCrypt);
        subtypes = list.iter().map(|n| n.subtype()).collect();
    }
    types.extend(list.iter().filter_map(|n| n.rfb_type()));
    (types, subtypes)
}

/// What a client accepts for `list`, in the list's order of preference: an RFB type for None and
/// VncAuth, VeNCrypt where the first VeNCrypt-only type stands, and every listed type as a
/// VeNCrypt sub-type (so VncAuth is also accepted inside VeNCrypt).
pub fn client_accept(list: &[SecName]) -> (Vec<SecurityType>, Vec<VencryptSubtype>) {
    let mut types = Vec::new();
    for n in list {
        let t = n.rfb_type().unwrap_or(SecurityType::VeNCrypt);
        if !types.contains(&t) {
            types.push(t);
        }
    }
    let subtypes = if types.contains(&SecurityType::VeNCrypt) {
        list.iter().map(|n| n.subtype()).collect()
    } else {
        Vec::new()
    };
    (types, subtypes)
}

/// Reads a VNC password file. Two formats:
///
/// * TigerVNC's `vncpasswd -f` output: exactly 8 bytes (or 16: a second, view-only password
///   follows, which is ignored) of DES-obfuscated password, unless those bytes are lines of
///   printable ASCII ending in a newline;
/// * anything else: the first line is the password in plain text (`\n` or `\r\n` ends it; the
///   rest of the file is ignored). End an 8-character plain-text password with a newline, or it
///   is read as the obfuscated format.
///
/// VNC authentication uses at most 8 bytes of the password (DES); longer ones are truncated by
/// every implementation, so they are here too (with a warning from the callers).
pub fn read_password_file(path: &Path) -> Result<Vec<u8>> {
    let bytes =
        std::fs::read(path).with_context(|| format!("read password file {}", path.display()))?;
    Ok(parse_password_file(&bytes))
}

/// The view-only password of a password file: the second 8 bytes of a 16-byte
/// `vncpasswd -f` file (TigerVNC's layout for "full, then view-only"), if it has them.
pub fn view_password_of(bytes: &[u8]) -> Option<Vec<u8>> {
    if bytes.len() != 16 || is_text_password(bytes) {
        return None;
    }
    let mut stored = [0u8; 8];
    stored.copy_from_slice(&bytes[8..]);
    let (plain, len) = rfb_core::deobfuscate_password(&stored);
    Some(plain[..len].to_vec())
}

fn is_text_password(bytes: &[u8]) -> bool {
    bytes.ends_with(b"\n")
        && bytes
            .iter()
            .all(|&c| matches!(c, b'\t' | b'\r' | b'\n') || (0x20..0x7f).contains(&c))
}

/// [`read_password_file`] on bytes.
pub fn parse_password_file(bytes: &[u8]) -> Vec<u8> {
    if matches!(bytes.len(), 8 | 16) {
        // Text: printable ASCII lines (tabs allowed) ending in a newline.
        if !is_text_password(bytes) {
            let mut stored = [0u8; 8];
            stored.copy_from_slice(&bytes[..8]);
            let (plain, len) = rfb_core::deobfuscate_password(&stored);
            return plain[..len].to_vec();
        }
    }
    let line = bytes.split(|&c| c == b'\n').next().unwrap_or_default();
    line.strip_suffix(b"\r").unwrap_or(line).to_vec()
}

/// Users for Plain authentication, from a file of `user:password` lines (the first `:` splits;
/// empty lines and lines starting with `#` are skipped).
#[derive(Clone, Default)]
pub struct PlainUsers {
    users: Vec<(Vec<u8>, Vec<u8>)>,
}

impl fmt::Debug for PlainUsers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "PlainUsers({} users)", self.users.len())
    }
}

impl PlainUsers {
    /// Reads the file.
    pub fn load(path: &Path) -> Result<Self> {
        let text =
            std::fs::read(path).with_context(|| format!("read users file {}", path.display()))?;
        Self::parse(&text).with_context(|| format!("users file {}", path.display()))
    }

    /// Parses `user:password` lines.
    pub fn parse(text: &[u8]) -> Result<Self> {
        let mut users = Vec::new();
        for (i, line) in text.split(|&c| c == b'\n').enumerate() {
            let line = line.strip_suffix(b"\r").unwrap_or(line);
            if line.is_empty() || line.starts_with(b"#") {
                continue;
            }
            let Some(colon) = line.iter().position(|&c| c == b':') else {
                bail!("line {}: expected user:password", i + 1);
            };
            let (u, p) = (&line[..colon], &line[colon + 1..]);
            if u.is_empty() || u.len() > 255 || p.len() > 255 {
                bail!("line {}: user names and passwords are 1-255 bytes", i + 1);
            }
            users.push((u.to_vec(), p.to_vec()));
        }
        if users.is_empty() {
            bail!("no users");
        }
        Ok(Self { users })
    }

    /// Whether `user`/`password` match an entry. Every entry is compared, each comparison in
    /// time that depends only on the lengths, so the answer time does not tell which part was
    /// wrong or where.
    pub fn check(&self, user: &[u8], password: &[u8]) -> bool {
        let mut ok = false;
        for (u, p) in &self.users {
            let hit = rfb_core::constant_time_eq(u, user) & rfb_core::constant_time_eq(p, password);
            ok |= hit;
        }
        std::hint::black_box(ok)
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.users.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }
}

/// Where a VNC server is: `vnc://HOST[:PORT]` (default port 5900; IPv6 in brackets), or
/// `HOST::PORT` as TigerVNC writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VncAddr {
    /// Host name or address (IPv6 without brackets).
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Over WebSocket (`ws://`, `wss://`): whether TLS carries it, and the request path.
    pub websocket: Option<(bool, String)>,
}

impl VncAddr {
    /// Parses an address: `vnc://HOST[:PORT]`, `HOST[:DISPLAY-PORT]`, `HOST::PORT`, or
    /// `ws://HOST[:PORT][/PATH]` and `wss://…` for a WebSocket (QEMU's `websocket=`, kvmio's
    /// `--vnc-websocket`, websockify; ports 80 and 443 by default).
    pub fn parse(s: &str) -> Result<Self> {
        let (rest, websocket) = match s.split_once("://") {
            Some(("vnc", r)) => (r, None),
            Some((scheme @ ("ws" | "wss"), r)) => {
                let (hp, path) = match r.find('/') {
                    Some(i) => (&r[..i], r[i..].to_string()),
                    None => (r, "/".to_string()),
                };
                (hp, Some((scheme == "wss", path)))
            }
            Some((scheme, _)) => {
                bail!("unknown scheme {scheme:?} (expected vnc://, ws:// or wss://HOST:PORT)")
            }
            None => {
                if let Some((h, p)) = s.split_once("::") {
                    return Ok(Self {
                        host: h.to_string(),
                        port: p.parse().with_context(|| format!("bad port in {s:?}"))?,
                        websocket: None,
                    });
                }
                (s, None)
            }
        };
        let default_port = match &websocket {
            Some((true, _)) => 443,
            Some((false, _)) => 80,
            None => 5900,
        };
        let rest = rest.trim_end_matches('/');
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, after) = r
                .split_once(']')
                .with_context(|| format!("unclosed [ in {s:?}"))?;
            let port = match after.strip_prefix(':') {
                Some(p) => p.parse().with_context(|| format!("bad port in {s:?}"))?,
                None if after.is_empty() => default_port,
                None => bail!("unexpected {after:?} in {s:?}"),
            };
            (h.to_string(), port)
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) => (
                    h.to_string(),
                    p.parse().with_context(|| format!("bad port in {s:?}"))?,
                ),
                None => (rest.to_string(), default_port),
            }
        };
        if host.is_empty() {
            bail!("no host in {s:?}");
        }
        Ok(Self {
            host,
            port,
            websocket,
        })
    }
}

impl fmt::Display for VncAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (scheme, path) = match &self.websocket {
            Some((true, p)) => ("wss", p.as_str()),
            Some((false, p)) => ("ws", p.as_str()),
            None => ("vnc", ""),
        };
        if self.host.contains(':') {
            write!(f, "{scheme}://[{}]:{}{path}", self.host, self.port)
        } else {
            write!(f, "{scheme}://{}:{}{path}", self.host, self.port)
        }
    }
}

/// A [`ZrleCompressor`] on `zlib-rs` (a Rust port of zlib-ng: about twice the speed of
/// `miniz_oxide` at the same level and output size). The VNC server session uses it.
pub struct ZlibRsCompressor(zlib_rs::Deflate);

impl ZlibRsCompressor {
    /// A zlib stream (15-bit window) at `level` (0-9).
    pub fn new(level: u8) -> Self {
        Self(zlib_rs::Deflate::new(i32::from(level.min(9)), true, 15))
    }

    /// The [`CompressorFactory`](rfb_core::zlib::CompressorFactory) to hand to
    /// `Server::set_zrle_compressor`.
    pub fn boxed(level: u8) -> Box<dyn ZrleCompressor> {
        Box::new(Self::new(level))
    }
}

impl ZrleCompressor for ZlibRsCompressor {
    fn compress_sync(
        &mut self,
        input: &[u8],
        out: &mut [u8],
    ) -> Result<(usize, usize), CompressError> {
        let (i0, o0) = (self.0.total_in(), self.0.total_out());
        self.0
            .compress(input, out, zlib_rs::DeflateFlush::SyncFlush)
            .map_err(|_| CompressError)?;
        Ok((
            (self.0.total_in() - i0) as usize,
            (self.0.total_out() - o0) as usize,
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lists() {
        let l = parse_security_list("X509Vnc, x509plain,VncAuth,None,vncauth").unwrap();
        assert_eq!(
            l,
            [
                SecName::X509Vnc,
                SecName::X509Plain,
                SecName::VncAuth,
                SecName::None
            ]
        );
        assert_eq!(format_security_list(&l), "X509Vnc,X509Plain,VncAuth,None");
        let e = parse_security_list("TLSVnc").unwrap_err().to_string();
        assert!(e.contains("anonymous TLS"), "{e}");
        assert!(parse_security_list("Bogus").is_err());
        assert!(parse_security_list(" , ").is_err());
    }

    #[test]
    fn offers_like_tigervnc() {
        // peers.md §2.2: X509Vnc,X509None,TLSVnc,VncAuth -> RFB [19, 2], VeNCrypt [261, 260, 258, 2]
        // (without TLSVnc here).
        let (t, s) = server_offer(&[SecName::X509Vnc, SecName::X509None, SecName::VncAuth]);
        assert_eq!(t, [SecurityType::VeNCrypt, SecurityType::VncAuth]);
        assert_eq!(
            s,
            [
                VencryptSubtype::X509Vnc,
                VencryptSubtype::X509None,
                VencryptSubtype::VncAuth
            ]
        );
        let (t, s) = server_offer(&[SecName::VncAuth, SecName::None]);
        assert_eq!(t, [SecurityType::VncAuth, SecurityType::None]);
        assert!(s.is_empty());
        let (t, s) = client_accept(&[SecName::VncAuth, SecName::X509Vnc, SecName::None]);
        assert_eq!(
            t,
            [
                SecurityType::VncAuth,
                SecurityType::VeNCrypt,
                SecurityType::None
            ]
        );
        assert_eq!(
            s,
            [
                VencryptSubtype::VncAuth,
                VencryptSubtype::X509Vnc,
                VencryptSubtype::None
            ]
        );
    }

    #[test]
    fn password_files() {
        // `echo secret | vncpasswd -f`
        let tiger = [0x2e, 0x2d, 0xbf, 0x57, 0x6e, 0xb0, 0x6c, 0x9e];
        assert_eq!(parse_password_file(&tiger), b"secret");
        let mut with_view = tiger.to_vec();
        with_view.extend_from_slice(&tiger);
        assert_eq!(parse_password_file(&with_view), b"secret");
        assert_eq!(parse_password_file(b"secret\n"), b"secret");
        assert_eq!(parse_password_file(b"secret"), b"secret");
        assert_eq!(parse_password_file(b"secret\r\nignored\n"), b"secret");
        assert_eq!(parse_password_file(b"12345678\n"), b"12345678");
        assert_eq!(parse_password_file(b""), b"");
        // 8 printable bytes without a newline are the obfuscated format (documented).
        let obf = rfb_core::obfuscate_password(b"pw");
        assert_eq!(parse_password_file(&obf), b"pw");
    }

    #[test]
    fn users() {
        let u = PlainUsers::parse(b"# comment\nalice:s3cret:with:colons\r\n\nbob:\n").unwrap();
        assert_eq!(u.len(), 2);
        assert!(u.check(b"alice", b"s3cret:with:colons"));
        assert!(u.check(b"bob", b""));
        assert!(!u.check(b"alice", b"s3cret"));
        assert!(!u.check(b"bob", b"x"));
        assert!(!u.check(b"carol", b""));
        assert!(PlainUsers::parse(b"nocolon\n").is_err());
        assert!(PlainUsers::parse(b"\n").is_err());
    }

    #[test]
    fn addresses() {
        let a = VncAddr::parse("vnc://127.0.0.1:5901").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("127.0.0.1", 5901));
        let a = VncAddr::parse("vnc://[::1]:5902").unwrap();
        assert_eq!((a.host.as_str(), a.port), ("::1", 5902));
        assert_eq!(a.to_string(), "vnc://[::1]:5902");
        assert_eq!(VncAddr::parse("vnc://host").unwrap().port, 5900);
        assert_eq!(VncAddr::parse("localhost::6000").unwrap().port, 6000);
        assert!(VncAddr::parse("http://x:1").is_err());
        let w = VncAddr::parse("ws://127.0.0.1:5700/websockify").unwrap();
        assert_eq!(
            (w.port, w.websocket.clone()),
            (5700, Some((false, "/websockify".into())))
        );
        assert_eq!(w.to_string(), "ws://127.0.0.1:5700/websockify");
        let w = VncAddr::parse("wss://[::1]").unwrap();
        assert_eq!((w.host.as_str(), w.port), ("::1", 443));
        assert_eq!(w.websocket, Some((true, "/".into())));
        assert!(VncAddr::parse("vnc://:1").is_err());
    }

    /// zlib-rs output inflates back through rfb-core's own ZRLE decoder stream format.
    #[test]
    fn zlib_rs_sync_flush() {
        let mut c = ZlibRsCompressor::new(6);
        let input = vec![5u8; 50_000];
        let mut out = vec![0u8; 100_000];
        let (used, n) = c.compress_sync(&input, &mut out).unwrap();
        assert_eq!(used, input.len());
        assert!(n < out.len());
        assert_eq!(&out[n - 4..n], &[0, 0, 0xff, 0xff]);
    }
}
