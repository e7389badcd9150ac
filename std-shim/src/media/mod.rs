//! Virtual media for the target computer: what each mass-storage LUN of the gadget holds,
//! inserted and ejected at run time.
//!
//! A source is a local file or block device (given to the LUN as it is) or a remote image:
//! an `http://` or `https://` URL read with range requests ([`http::HttpBackend`]) or an
//! `nbd://`, `nbds://` or `nbd+unix://` export read by kvmio's own NBD client
//! ([`nbd::NbdBackend`]), made a block device by [`kernel_nbd::KernelNbd`]. [`open_remote`]
//! opens either kind; kvmio's NBD server exports them too (`--export iso=https://…`).
//! [`Media`] keeps what is inserted; [`control`] lets `kvmio media insert|eject|status` talk to
//! the running server over a Unix socket.

pub mod control;
pub mod http;
pub mod kernel_nbd;
pub mod nbd;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};

use crate::gadget;
use crate::nbd::backend::Backend;
use crate::nbd::client::ClientTls;
use crate::nbd::uri::NbdUri;
use kernel_nbd::KernelNbd;

/// Where a medium comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file or block device on this machine.
    File(PathBuf),
    /// An image on a web server (`http://`, `https://`) or an NBD server (`nbd://`,
    /// `nbds://`, `nbd+unix://`, `nbds+unix://`).
    Remote(String),
}

impl Source {
    /// A URL (checked here, opened on insert) or a path.
    pub fn parse(s: &str) -> Result<Self> {
        if is_remote(s) {
            if s.starts_with("http") {
                http::HttpUrl::parse(s)?;
            } else {
                NbdUri::parse(s)?;
            }
            return Ok(Source::Remote(s.to_string()));
        }
        if s.contains("://") {
            bail!("{s}: unknown kind of source (http, https, nbd, nbds, nbd+unix or a path)");
        }
        if s.is_empty() {
            bail!("an empty media source");
        }
        Ok(Source::File(PathBuf::from(s)))
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Source::File(p) => write!(f, "{}", p.display()),
            Source::Remote(u) => f.write_str(u),
        }
    }
}

/// Whether `s` names a remote image ([`open_remote`] takes it).
pub fn is_remote(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://") || NbdUri::is_uri(s)
}

/// A remote image: the backend reading it and whether it can only be read (web images
/// always; NBD exports when the server says so).
pub fn open_remote(url: &str, tls: &ClientTls) -> Result<(Arc<dyn Backend>, bool)> {
    if url.starts_with("http://") || url.starts_with("https://") {
        let b = http::HttpBackend::open(url, tls)?;
        return Ok((Arc::new(b), true));
    }
    let b = nbd::NbdBackend::open(url, tls)?;
    let read_only = b.read_only();
    Ok((Arc::new(b), read_only))
}

struct Inserted {
    source: Source,
    /// The block device a remote source is served through.
    nbd: Option<KernelNbd>,
}

/// The media of one gadget's LUNs.
pub struct Media {
    gadget: String,
    tls: ClientTls,
    luns: Mutex<BTreeMap<usize, Inserted>>,
}

/// One LUN as [`Media::status`] reports it.
#[derive(Debug, Clone)]
pub struct MediaStatus {
    /// The LUN.
    pub lun: gadget::LunState,
    /// What was inserted through kvmio (`None`: nothing, or something inserted otherwise).
    pub source: Option<String>,
}

impl Media {
    /// The media of the gadget `name` (made by `kvmio gadget up`); `tls` is what `https://`
    /// and `nbds://` sources are verified with.
    pub fn new(gadget: &str, tls: ClientTls) -> Result<Arc<Self>> {
        gadget::status(gadget)?;
        Ok(Arc::new(Self {
            gadget: gadget.to_string(),
            tls,
            luns: Mutex::new(BTreeMap::new()),
        }))
    }

    /// Inserts `source` into LUN `lun`, ejecting what is there. The new source is opened
    /// first: one that cannot be opened leaves the old medium in.
    pub fn insert(&self, lun: usize, source: &Source) -> Result<()> {
        let l = gadget::lun(&self.gadget, lun)?;
        let read_only = l.state()?.read_only;
        let nbd = match source {
            Source::File(p) => {
                if !p.exists() {
                    bail!("{}: no such file", p.display());
                }
                None
            }
            Source::Remote(url) => {
                let (backend, remote_ro) = open_remote(url, &self.tls)?;
                if remote_ro && !read_only {
                    log::info!("LUN {lun}: {url} can only be read: the target sees it read-only");
                }
                Some(KernelNbd::attach(backend, read_only || remote_ro, url)?)
            }
        };
        let mut luns = self.luns.lock().unwrap_or_else(|e| e.into_inner());
        if l.state()?.file.is_some() {
            l.eject()?;
        }
        if let Some(old) = luns.remove(&lun)
            && let Some(n) = old.nbd
        {
            n.detach();
        }
        let path = match (&nbd, source) {
            (Some(n), _) => n.device().to_path_buf(),
            (None, Source::File(p)) => p.clone(),
            (None, Source::Remote(_)) => unreachable!("a remote source has a device"),
        };
        if let Err(e) = l.insert(&path) {
            if let Some(n) = nbd {
                n.detach();
            }
            return Err(e);
        }
        log::info!("LUN {lun}: inserted {source}");
        luns.insert(
            lun,
            Inserted {
                source: source.clone(),
                nbd,
            },
        );
        Ok(())
    }

    /// Ejects the medium of LUN `lun`.
    pub fn eject(&self, lun: usize) -> Result<()> {
        let l = gadget::lun(&self.gadget, lun)?;
        let mut luns = self.luns.lock().unwrap_or_else(|e| e.into_inner());
        if l.state()?.file.is_some() {
            l.eject()?;
        }
        if let Some(old) = luns.remove(&lun) {
            if let Some(n) = old.nbd {
                n.detach();
            }
            log::info!("LUN {lun}: ejected {}", old.source);
        }
        Ok(())
    }

    /// Every LUN and what it holds.
    pub fn status(&self) -> Result<Vec<MediaStatus>> {
        let st = gadget::status(&self.gadget)?;
        let luns = self.luns.lock().unwrap_or_else(|e| e.into_inner());
        Ok(st
            .luns
            .into_iter()
            .map(|lun| MediaStatus {
                source: luns
                    .get(&lun.index)
                    .filter(|_| lun.file.is_some())
                    .map(|i| i.source.to_string()),
                lun,
            })
            .collect())
    }
}

impl Drop for Media {
    fn drop(&mut self) {
        let luns = std::mem::take(&mut *self.luns.lock().unwrap_or_else(|e| e.into_inner()));
        for (lun, i) in luns {
            if i.nbd.is_some()
                && let Ok(l) = gadget::lun(&self.gadget, lun)
            {
                let _ = l.eject();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources() {
        for url in [
            "http://h:8/a.iso",
            "https://h/a.iso",
            "nbd://h/x",
            "nbds://h:10810/x?tls-certificates=/etc/pki/media",
            "nbd+unix:///x?socket=/run/nbd.sock",
        ] {
            assert_eq!(Source::parse(url).unwrap(), Source::Remote(url.into()));
            assert!(is_remote(url));
        }
        assert_eq!(
            Source::parse("/srv/a.iso").unwrap(),
            Source::File("/srv/a.iso".into())
        );
        assert!(!is_remote("/srv/a.iso"));
        for s in ["", "ftp://h/x", "http://", "nbd+unix:///x"] {
            assert!(Source::parse(s).is_err(), "{s:?}");
        }
    }
}
