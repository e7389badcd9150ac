//! Static files for requests that are not WebSocket upgrades (`--web DIR`, as websockify's
//! `--web`): GET and HEAD, content types by extension, 404 for what is not there, no path out
//! of the directory (`..`, symbolic links pointing out, percent-encoded tricks).

use std::fs::File;
use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use tls_glue::ws::{HttpRequest, reason_phrase, text_response};

use crate::pump::OutBuf;

/// Longest request target accepted (414 above).
pub const MAX_TARGET: usize = 2048;

/// A directory served read-only.
#[derive(Debug, Clone)]
pub struct WebRoot {
    root: PathBuf,
}

/// What answering a request wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answered {
    /// The HTTP status.
    pub status: u16,
    /// Body bytes (0 for HEAD).
    pub body: u64,
}

impl WebRoot {
    /// Serves `dir` (it must be a directory).
    pub fn new(dir: &Path) -> Result<Self> {
        let root = dir
            .canonicalize()
            .with_context(|| format!("--web {}", dir.display()))?;
        if !root.is_dir() {
            bail!("--web {}: not a directory", dir.display());
        }
        Ok(Self { root })
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Writes the response to `req` into `out` (headers, and the file as a file segment).
    pub fn answer(&self, req: &HttpRequest, out: &mut OutBuf) -> Answered {
        let head = req.method == "HEAD";
        if req.method != "GET" && !head {
            return error(out, 405, req.keep_alive, "Allow: GET, HEAD\r\n");
        }
        if req.target.len() > MAX_TARGET {
            return error(out, 414, false, "");
        }
        let Some(path) = self.resolve(req.path()) else {
            return error(out, 404, req.keep_alive, "");
        };
        let file = match File::open(&path) {
            Ok(f) => f,
            Err(_) => return error(out, 404, req.keep_alive, ""),
        };
        let len = match file.metadata() {
            Ok(m) if m.is_file() => m.len(),
            _ => return error(out, 404, req.keep_alive, ""),
        };
        let connection = if req.keep_alive {
            "keep-alive"
        } else {
            "close"
        };
        let headers = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: {}\r\nContent-Length: {len}\r\n\
             Cache-Control: no-cache\r\nX-Content-Type-Options: nosniff\r\nConnection: {connection}\r\n\r\n",
            content_type(&path)
        );
        out.extend(headers.as_bytes());
        if !head && len > 0 {
            out.push_file(Arc::new(file), 0, len as usize);
        }
        Answered {
            status: 200,
            body: if head { 0 } else { len },
        }
    }

    /// The file a request path names, inside the root; `None` for anything that leaves it or
    /// is not there. `/` and directories mean their `index.html`.
    pub fn resolve(&self, path: &str) -> Option<PathBuf> {
        let decoded = percent_decode(path)?;
        let rel = decoded.trim_start_matches('/');
        let mut p = self.root.clone();
        for c in Path::new(rel).components() {
            match c {
                Component::Normal(n) => p.push(n),
                Component::CurDir => {}
                // `..`, a second root, a prefix: never
                _ => return None,
            }
        }
        if p.is_dir() {
            p.push("index.html");
        }
        // Symbolic links may point anywhere: the real path must still be inside.
        let real = p.canonicalize().ok()?;
        real.starts_with(&self.root).then_some(real)
    }
}

fn error(out: &mut OutBuf, status: u16, keep_alive: bool, extra: &str) -> Answered {
    let why = format!("{status} {}", reason_phrase(status));
    out.extend(&text_response(status, &why, keep_alive, extra));
    Answered {
        status,
        body: why.len() as u64 + 1,
    }
}

/// `%XX` decoded; `None` for bad escapes, NUL, backslashes, or bytes that are not UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let out = crate::nbd::uri::percent_decode(s).ok()?;
    (!out.contains(['\0', '\\'])).then_some(out)
}

/// The content type of a file, by its extension.
pub fn content_type(path: &Path) -> &'static str {
    let ext = path
        .extension()
        .and_then(|e| e.to_str())
        .map(str::to_ascii_lowercase);
    match ext.as_deref() {
        Some("html" | "htm") => "text/html; charset=utf-8",
        Some("js" | "mjs") => "text/javascript; charset=utf-8",
        Some("css") => "text/css; charset=utf-8",
        Some("json" | "map") => "application/json",
        Some("svg") => "image/svg+xml",
        Some("png") => "image/png",
        Some("jpg" | "jpeg") => "image/jpeg",
        Some("gif") => "image/gif",
        Some("ico") => "image/x-icon",
        Some("woff") => "font/woff",
        Some("woff2") => "font/woff2",
        Some("ttf") => "font/ttf",
        Some("wasm") => "application/wasm",
        Some("txt" | "md") => "text/plain; charset=utf-8",
        Some("xml") => "application/xml",
        Some("oga" | "ogg") => "audio/ogg",
        Some("mp3") => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(method: &str, target: &str) -> HttpRequest {
        HttpRequest {
            method: method.into(),
            target: target.into(),
            keep_alive: true,
            headers: Vec::new(),
        }
    }

    fn text(out: &OutBuf) -> String {
        String::from_utf8_lossy(out.as_slice()).into_owned()
    }

    #[test]
    fn files_types_head_404_and_no_escape() {
        let tmp = std::env::temp_dir().join(format!("kvmio-web-{}", std::process::id()));
        let root = tmp.join("root");
        std::fs::create_dir_all(root.join("app")).unwrap();
        std::fs::write(root.join("vnc.html"), "<html>").unwrap();
        std::fs::write(root.join("app/ui.js"), "let x;").unwrap();
        std::fs::write(root.join("index.html"), "idx").unwrap();
        std::fs::write(tmp.join("secret"), "no").unwrap();
        std::os::unix::fs::symlink(tmp.join("secret"), root.join("link")).unwrap();
        let w = WebRoot::new(&root).unwrap();

        let mut out = OutBuf::default();
        let a = w.answer(&req("GET", "/vnc.html?autoconnect=1"), &mut out);
        assert_eq!(
            a,
            Answered {
                status: 200,
                body: 6
            }
        );
        let t = text(&out);
        assert!(
            t.contains("Content-Type: text/html; charset=utf-8\r\n"),
            "{t}"
        );
        assert!(t.contains("Content-Length: 6\r\n"), "{t}");
        assert_eq!(out.files().len(), 1);

        let mut out = OutBuf::default();
        assert_eq!(w.answer(&req("HEAD", "/app/ui.js"), &mut out).body, 0);
        assert!(text(&out).contains("text/javascript"));
        assert!(out.files().is_empty());

        let mut out = OutBuf::default();
        assert_eq!(w.answer(&req("GET", "/"), &mut out).status, 200);

        for bad in [
            "/../secret",
            "/app/../../secret",
            "/%2e%2e/secret",
            "/app/%2e%2e%2f%2e%2e/secret",
            "/link",
            "/nothing",
            "/vnc.html%00",
            "/%zz",
            "/..%5csecret",
        ] {
            let mut out = OutBuf::default();
            assert_eq!(w.answer(&req("GET", bad), &mut out).status, 404, "{bad}");
        }
        let mut out = OutBuf::default();
        let a = w.answer(&req("POST", "/vnc.html"), &mut out);
        assert_eq!(a.status, 405);
        assert!(text(&out).contains("Allow: GET, HEAD\r\n"));
        let long = format!("/{}", "a".repeat(MAX_TARGET));
        let mut out = OutBuf::default();
        assert_eq!(w.answer(&req("GET", &long), &mut out).status, 414);
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}
