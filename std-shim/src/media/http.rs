//! A disk image behind an HTTP or HTTPS URL, read with range requests (what iDRAC, iLO and
//! OpenBMC's legacy virtual media do): an NBD [`Backend`], so the same image can be a gadget LUN
//! (through [`super::kernel_nbd`]) or an NBD export.
//!
//! `https://` runs TLS through [`crate::io::tls_stream`] and verifies the server against the CA
//! of the media's credentials directory (as `nbds://` does): a certificate that does not chain
//! to it, or names another host, fails the open; there is no fallback to plain HTTP.
//!
//! One keep-alive connection, reopened when the server closes it; every read is
//! `GET` with `Range: bytes=A-B` and must come back as `206` with exactly that range. Reads and
//! connects time out, so a server that dies or stalls gives the reader an I/O error, never a
//! hang. Responses are parsed with `httparse`; headers are bounded in size.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use crate::io::tls_stream::TlsStream;
use crate::nbd::backend::Backend;
use crate::nbd::client::ClientTls;

/// Time one request may take to start answering (and between its bytes).
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Largest response header accepted.
const MAX_HEADER: usize = 16 * 1024;

/// An `http://host[:port]/path` or `https://…` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpUrl {
    /// `https`.
    pub tls: bool,
    /// Host name or address.
    pub host: String,
    /// Port (default 80, or 443 for https).
    pub port: u16,
    /// Path with query, starting with `/`.
    pub path: String,
}

impl HttpUrl {
    /// Parses an `http://` or `https://` URL.
    pub fn parse(url: &str) -> Result<Self> {
        let (tls, rest) = match url.strip_prefix("https://") {
            Some(r) => (true, r),
            None => (
                false,
                url.strip_prefix("http://")
                    .with_context(|| format!("{url}: not an http:// or https:// URL"))?,
            ),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if authority.contains('@') {
            bail!("{url}: credentials in the URL are not supported");
        }
        let (host, port) = match authority.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || authority.starts_with('[') => (
                h.trim_start_matches('[').trim_end_matches(']'),
                p.parse::<u16>()
                    .with_context(|| format!("{url}: bad port {p:?}"))?,
            ),
            _ => (authority, if tls { 443 } else { 80 }),
        };
        if host.is_empty() || path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            bail!("{url}: bad host or path");
        }
        Ok(Self {
            tls,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }
}

impl HttpUrl {
    /// `host:port`, an IPv6 address in brackets (for `Host:` and messages).
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }
}

impl std::fmt::Display for HttpUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scheme = if self.tls { "https" } else { "http" };
        write!(f, "{scheme}://{}{}", self.authority(), self.path)
    }
}

/// The image behind an HTTP(S) URL.
pub struct HttpBackend {
    url: HttpUrl,
    size: u64,
    tls: Option<tls_glue::TlsClientConfig>,
    conn: Mutex<Option<BufReader<Conn>>>,
}

/// A connection to the web server.
enum Conn {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Read for Conn {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.read(buf),
            Conn::Tls(s) => s.read(buf),
        }
    }
}

impl Write for Conn {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Conn::Plain(s) => s.write(buf),
            Conn::Tls(s) => s.write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match self {
            Conn::Plain(s) => s.flush(),
            Conn::Tls(s) => s.flush(),
        }
    }
}

/// What a range response said.
struct Partial {
    start: u64,
    end: u64,
    total: u64,
    length: u64,
}

impl HttpBackend {
    /// Opens the URL: the server must answer a one-byte range request with `206` and the
    /// image's total size. `tls` says where the CA for `https://` is.
    pub fn open(url: &str, tls: &ClientTls) -> Result<Self> {
        let url = HttpUrl::parse(url)?;
        let tls = if url.tls {
            Some(
                tls.config(None)
                    .with_context(|| format!("{url}: the CA to verify it"))?,
            )
        } else {
            None
        };
        let b = Self {
            url,
            size: 0,
            tls,
            conn: Mutex::new(None),
        };
        let mut one = [0u8; 1];
        let total = b.range(&mut one, 0).with_context(|| format!("{}", b.url))?;
        Ok(Self { size: total, ..b })
    }

    /// The URL.
    pub fn url(&self) -> &HttpUrl {
        &self.url
    }

    fn connect(&self) -> io::Result<BufReader<Conn>> {
        use std::net::ToSocketAddrs;
        let mut last = io::Error::new(io::ErrorKind::NotFound, "no address");
        for a in (self.url.host.as_str(), self.url.port).to_socket_addrs()? {
            match TcpStream::connect_timeout(&a, TIMEOUT) {
                Ok(s) => {
                    s.set_read_timeout(Some(TIMEOUT))?;
                    s.set_write_timeout(Some(TIMEOUT))?;
                    s.set_nodelay(true)?;
                    let conn = match &self.tls {
                        None => Conn::Plain(s),
                        Some(config) => {
                            Conn::Tls(Box::new(TlsStream::connect(s, config, &self.url.host)?))
                        }
                    };
                    return Ok(BufReader::with_capacity(256 * 1024, conn));
                }
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// Reads `buf.len()` bytes at `offset`; returns the image's total size.
    fn range(&self, buf: &mut [u8], offset: u64) -> io::Result<u64> {
        let mut guard = self.conn.lock().unwrap_or_else(|e| e.into_inner());
        // A kept-alive connection the server has closed fails at once: try a fresh one then.
        for attempt in 0..2 {
            let reused = guard.is_some();
            let mut conn = match guard.take() {
                Some(c) => c,
                None => self.connect()?,
            };
            match self.request(&mut conn, buf, offset) {
                Ok((total, keep)) => {
                    if keep {
                        *guard = Some(conn);
                    }
                    return Ok(total);
                }
                Err(e) if reused && attempt == 0 && is_stale(&e) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(io::Error::other("unreachable"))
    }

    fn request(
        &self,
        conn: &mut BufReader<Conn>,
        buf: &mut [u8],
        offset: u64,
    ) -> io::Result<(u64, bool)> {
        let end = offset + buf.len() as u64 - 1;
        let req = format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nRange: bytes={offset}-{end}\r\n\
             User-Agent: kvmio/{}\r\nAccept-Encoding: identity\r\n\r\n",
            self.url.path,
            self.url.authority(),
            env!("CARGO_PKG_VERSION")
        );
        conn.get_mut().write_all(req.as_bytes())?;
        conn.get_mut().flush()?;
        let head = read_head(conn)?;
        let (status, p, keep) = parse_head(&head)?;
        if status != 206 {
            return Err(io::Error::other(match status {
                200 => "the server ignores range requests (200 instead of 206)".to_string(),
                416 => format!("range {offset}-{end} is outside the image (416)"),
                s => format!("HTTP status {s}"),
            }));
        }
        if p.start != offset || p.end != end || p.length != buf.len() as u64 {
            return Err(io::Error::other(format!(
                "asked for bytes {offset}-{end}, got {}-{} ({} bytes)",
                p.start, p.end, p.length
            )));
        }
        conn.read_exact(buf)?;
        Ok((p.total, keep))
    }
}

fn is_stale(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::UnexpectedEof
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::ConnectionAborted
    )
}

/// Reads up to and including the blank line that ends the header.
fn read_head(conn: &mut BufReader<Conn>) -> io::Result<Vec<u8>> {
    let mut head = Vec::new();
    loop {
        let n = conn
            .by_ref()
            .take((MAX_HEADER - head.len()) as u64)
            .read_until(b'\n', &mut head)?;
        if n == 0 {
            return Err(if head.len() >= MAX_HEADER {
                io::Error::other("response header too long")
            } else {
                io::ErrorKind::UnexpectedEof.into()
            });
        }
        if head.ends_with(b"\r\n\r\n") || head.ends_with(b"\n\n") {
            return Ok(head);
        }
    }
}

/// Status, the range the response holds, and whether the connection stays open.
fn parse_head(head: &[u8]) -> io::Result<(u16, Partial, bool)> {
    let bad = |m: &str| io::Error::other(format!("bad HTTP response: {m}"));
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut r = httparse::Response::new(&mut headers);
    match r.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(bad("incomplete header")),
        Err(e) => return Err(bad(&e.to_string())),
    }
    let status = r.code.ok_or_else(|| bad("no status"))?;
    let mut keep = r.version == Some(1);
    let mut range = None;
    let mut length = None;
    for h in r.headers.iter() {
        let v = std::str::from_utf8(h.value).map_err(|_| bad("non-UTF-8 header"))?;
        if h.name.eq_ignore_ascii_case("content-range") {
            range = Some(v.trim().to_string());
        } else if h.name.eq_ignore_ascii_case("content-length") {
            length = Some(v.trim().parse::<u64>().map_err(|_| bad("Content-Length"))?);
        } else if h.name.eq_ignore_ascii_case("connection") {
            keep = !v.eq_ignore_ascii_case("close");
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            return Err(bad("chunked range responses are not supported"));
        }
    }
    if status != 206 {
        let empty = Partial {
            start: 0,
            end: 0,
            total: 0,
            length: 0,
        };
        return Ok((status, empty, false));
    }
    let range = range.ok_or_else(|| bad("206 without Content-Range"))?;
    // bytes START-END/TOTAL
    let spec = range
        .strip_prefix("bytes ")
        .ok_or_else(|| bad("Content-Range unit"))?;
    let (se, total) = spec.split_once('/').ok_or_else(|| bad("Content-Range"))?;
    let (s, e) = se.split_once('-').ok_or_else(|| bad("Content-Range"))?;
    let num = |x: &str| {
        x.trim()
            .parse::<u64>()
            .map_err(|_| bad("Content-Range number"))
    };
    let p = Partial {
        start: num(s)?,
        end: num(e)?,
        total: num(total).map_err(|_| bad("the server does not say the image's size"))?,
        length: length.ok_or_else(|| bad("206 without Content-Length"))?,
    };
    if p.end < p.start || p.end >= p.total || p.length != p.end - p.start + 1 {
        return Err(bad("inconsistent Content-Range"));
    }
    Ok((status, p, keep))
}

impl Backend for HttpBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        if buf.is_empty() {
            return Ok(());
        }
        self.range(buf, offset).map(|_| ()).map_err(|e| {
            log::warn!("{}: read {}+{}: {e}", self.url, offset, buf.len());
            e
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let u = HttpUrl::parse("http://10.0.2.100:8080/media/debian.iso?x=1").unwrap();
        assert_eq!(
            (u.host.as_str(), u.port, u.path.as_str()),
            ("10.0.2.100", 8080, "/media/debian.iso?x=1")
        );
        let u = HttpUrl::parse("http://example.com").unwrap();
        assert_eq!((u.tls, u.port, u.path.as_str()), (false, 80, "/"));
        let u = HttpUrl::parse("https://[::1]:8443/a.iso").unwrap();
        assert_eq!(
            (u.tls, u.host.as_str(), u.port, u.path.as_str()),
            (true, "::1", 8443, "/a.iso")
        );
        assert_eq!(HttpUrl::parse("https://example.com/x").unwrap().port, 443);
        assert_eq!(u.to_string(), "https://[::1]:8443/a.iso");
        assert!(HttpUrl::parse("ftp://example.com/x").is_err());
        assert!(HttpUrl::parse("http://u:p@example.com/x").is_err());
        assert!(HttpUrl::parse("http://example.com/a b").is_err());
    }

    #[test]
    fn range_headers() {
        let ok = b"HTTP/1.1 206 Partial Content\r\nContent-Range: bytes 10-19/1000\r\nContent-Length: 10\r\n\r\n";
        let (s, p, keep) = parse_head(ok).unwrap();
        assert_eq!(
            (s, p.start, p.end, p.total, p.length, keep),
            (206, 10, 19, 1000, 10, true)
        );
        for bad in [
            &b"HTTP/1.1 206 X\r\nContent-Length: 10\r\n\r\n"[..],
            b"HTTP/1.1 206 X\r\nContent-Range: bytes 10-19/*\r\nContent-Length: 10\r\n\r\n",
            b"HTTP/1.1 206 X\r\nContent-Range: bytes 10-19/15\r\nContent-Length: 10\r\n\r\n",
            b"HTTP/1.1 206 X\r\nContent-Range: bytes 10-19/100\r\nContent-Length: 9\r\n\r\n",
            b"HTTP/1.1 206 X\r\nContent-Range: bytes 10-19/100\r\nTransfer-Encoding: chunked\r\n\r\n",
            b"garbage\r\n\r\n",
        ] {
            assert!(parse_head(bad).is_err(), "{}", String::from_utf8_lossy(bad));
        }
        let (s, _, keep) = parse_head(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n").unwrap();
        assert_eq!((s, keep), (200, false));
    }
}
