//! Virtual media for the target computer: what each mass-storage LUN of the gadget holds,
//! inserted and ejected at run time.
//!
//! A source is a local file or block device (given to the LUN as it is) or an `http://` URL
//! read with range requests ([`http::HttpBackend`], made a block device by
//! [`kernel_nbd::KernelNbd`]). [`Media`] keeps what is inserted; [`control`] lets
//! `kvmio media insert|eject|status` talk to the running server over a Unix socket.

pub mod control;
pub mod http;
pub mod kernel_nbd;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use anyhow::{Result, bail};

use crate::gadget;
use kernel_nbd::KernelNbd;

/// Where a medium comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// A file or block device on this machine.
    File(PathBuf),
    /// An image on a web server, read with range requests.
    Http(String),
}

impl Source {
    /// `http://…` or a path (`https://`, `nbd://` and `nbds://` are refused for now).
    pub fn parse(s: &str) -> Result<Self> {
        if s.starts_with("http://") {
            http::HttpUrl::parse(s)?;
            return Ok(Source::Http(s.to_string()));
        }
        for scheme in ["https://", "nbd://", "nbds://", "nbd+unix://"] {
            if s.starts_with(scheme) {
                bail!("{s}: {scheme} media are not supported yet (http:// and files are)");
            }
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
            Source::Http(u) => f.write_str(u),
        }
    }
}

struct Inserted {
    source: Source,
    /// The block device a remote source is served through.
    nbd: Option<KernelNbd>,
}

/// The media of one gadget's LUNs.
pub struct Media {
    gadget: String,
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
    /// The media of the gadget `name` (made by `kvmio gadget up`).
    pub fn new(gadget: &str) -> Result<Arc<Self>> {
        gadget::status(gadget)?;
        Ok(Arc::new(Self {
            gadget: gadget.to_string(),
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
            Source::Http(url) => {
                let backend = Arc::new(http::HttpBackend::open(url)?);
                Some(KernelNbd::attach(backend, read_only, url)?)
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
            (None, Source::Http(_)) => unreachable!("an http source has a device"),
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
        assert_eq!(
            Source::parse("http://h:8/a.iso").unwrap(),
            Source::Http("http://h:8/a.iso".into())
        );
        assert_eq!(
            Source::parse("/srv/a.iso").unwrap(),
            Source::File("/srv/a.iso".into())
        );
        for s in ["", "nbds://h/x", "https://h/x", "http://"] {
            assert!(Source::parse(s).is_err(), "{s:?}");
        }
    }
}
