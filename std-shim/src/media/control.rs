//! The media control socket of a running server: one command per connection, one line each
//! way (`insert LUN SOURCE`, `eject LUN`, `status`; the answer starts with `ok` or `error`).
//! Only who may open the socket file (mode 0600, the server's user) may change media.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};

use super::{Media, Source};

/// Longest command line accepted.
const MAX_LINE: u64 = 8192;

/// Listens on `path` (replacing a stale socket) and serves commands in a thread.
pub fn serve(path: &Path, media: Arc<Media>) -> Result<()> {
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            bail!(
                "{}: another server is using this control socket",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("{}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).ok();
    }
    let l = UnixListener::bind(path).with_context(|| format!("{}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    log::info!("media control on {}", path.display());
    std::thread::Builder::new()
        .name("media-control".into())
        .spawn(move || {
            for s in l.incoming() {
                let Ok(s) = s else { continue };
                let media = media.clone();
                std::thread::spawn(move || {
                    if let Err(e) = one(s, &media) {
                        log::debug!("media control: {e:#}");
                    }
                });
            }
        })?;
    Ok(())
}

fn one(s: UnixStream, media: &Media) -> Result<()> {
    s.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut line = String::new();
    BufReader::new(&s).take(MAX_LINE).read_line(&mut line)?;
    let answer = match execute(line.trim_end_matches(['\r', '\n']), media) {
        Ok(text) => format!("ok {text}"),
        Err(e) => format!("error {e:#}").replace('\n', " "),
    };
    let mut w = &s;
    writeln!(w, "{answer}")?;
    Ok(())
}

fn lun_of(s: Option<&str>) -> Result<usize> {
    s.context("which LUN?")?
        .parse()
        .context("the LUN is a number")
}

fn execute(line: &str, media: &Media) -> Result<String> {
    let mut words = line.splitn(3, ' ');
    match words.next() {
        Some("insert") => {
            let lun = lun_of(words.next())?;
            let source = Source::parse(words.next().context("insert what?")?)?;
            media.insert(lun, &source)?;
            Ok(format!("LUN {lun}: {source}"))
        }
        Some("eject") => {
            let lun = lun_of(words.next())?;
            media.eject(lun)?;
            Ok(format!("LUN {lun}: ejected"))
        }
        Some("status") => {
            let mut out = Vec::new();
            for m in media.status()? {
                let what = match (&m.source, &m.lun.file) {
                    (Some(s), _) => s.clone(),
                    (None, Some(f)) => f.display().to_string(),
                    (None, None) => "(no medium)".into(),
                };
                let kind = if m.lun.cdrom { "cdrom" } else { "disk" };
                out.push(format!("{}:{kind}:{what}", m.lun.index));
            }
            Ok(out.join(" | "))
        }
        _ => bail!("commands: insert LUN SOURCE, eject LUN, status"),
    }
}

/// Sends one command to a running server's control socket; its answer (without `ok`).
pub fn request(path: &Path, command: &str) -> Result<String> {
    let s = UnixStream::connect(path).with_context(|| {
        format!(
            "{}: no server (start kvmio serve with --media-control)",
            path.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut w = &s;
    writeln!(w, "{command}")?;
    let mut line = String::new();
    BufReader::new(&s).take(1 << 20).read_line(&mut line)?;
    let line = line.trim_end();
    match line.split_once(' ') {
        Some(("ok", rest)) => Ok(rest.to_string()),
        Some(("error", rest)) => bail!("{rest}"),
        _ if line == "ok" => Ok(String::new()),
        _ => bail!("unexpected answer {line:?}"),
    }
}
