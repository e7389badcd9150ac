//! The exports an NBD server offers: names, descriptions, storage, and the core's table.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow};
use nbd_core::server::ServerConfig;
use nbd_core::{Export, ExportFeatures};

use super::backend::Backend;
use super::server::MAX_PAYLOAD;

/// One export: its name, description and storage.
#[non_exhaustive]
pub struct ExportSpec {
    /// Name clients select.
    pub name: String,
    /// Description shown by LIST and INFO.
    pub description: String,
    /// Storage.
    pub backend: Arc<dyn Backend>,
    /// Refuse writes.
    pub read_only: bool,
    /// Reachable only over TLS (selective mode).
    pub tls_only: bool,
}

impl ExportSpec {
    /// An export named `name` with no description, writable (unless the backend refuses),
    /// reachable with or without TLS as the server's policy says.
    pub fn new(name: impl Into<String>, backend: Arc<dyn Backend>) -> Self {
        Self {
            name: name.into(),
            description: String::new(),
            backend,
            read_only: false,
            tls_only: false,
        }
    }
}

/// The exports a server offers and the core's view of them.
pub struct Catalog {
    specs: Vec<ExportSpec>,
    exports: Vec<Export<'static>>,
}

impl Catalog {
    /// Builds the catalog.
    pub fn new(specs: Vec<ExportSpec>) -> Result<Self> {
        let exports = specs
            .iter()
            .map(|s| {
                let mut features = s.backend.features();
                if s.read_only {
                    features.remove(
                        ExportFeatures::TRIM
                            | ExportFeatures::WRITE_ZEROES
                            | ExportFeatures::FAST_ZERO,
                    );
                }
                // The names live as long as the catalog; the core borrows them from here.
                let mut e = Export::new(leak(&s.name), s.backend.size());
                e.description = leak(&s.description);
                e.read_only = s.read_only;
                e.tls_only = s.tls_only;
                e.block_size = nbd_core::wire::BlockSize {
                    minimum: 1,
                    preferred: 4096,
                    maximum: MAX_PAYLOAD,
                };
                e.features = features;
                e
            })
            .collect::<Vec<_>>();
        ServerConfig::new(&exports)
            .validate()
            .map_err(|e| anyhow!("exports: {e}"))?;
        Ok(Self { specs, exports })
    }

    /// The core's export table.
    pub fn exports(&self) -> &[Export<'static>] {
        &self.exports
    }

    /// The specs.
    pub fn specs(&self) -> &[ExportSpec] {
        &self.specs
    }
}

/// The `--export NAME=PATH` and `--memory NAME=SIZE` arguments, for [`Catalog::build`].
pub type ExportArgs = (Vec<(String, std::path::PathBuf)>, Vec<(String, u64)>);

/// Parses `--export NAME=PATH` and `--memory NAME=SIZE` arguments.
pub fn parse_export_args(exports: &[String], memory: &[String]) -> Result<ExportArgs> {
    let files = exports
        .iter()
        .map(|e| {
            let (n, p) = e
                .split_once('=')
                .with_context(|| format!("expected NAME=PATH, got {e:?}"))?;
            Ok((n.to_string(), p.into()))
        })
        .collect::<Result<_>>()?;
    let memory = memory
        .iter()
        .map(|m| {
            let (n, s) = m
                .split_once('=')
                .with_context(|| format!("expected NAME=SIZE, got {m:?}"))?;
            Ok((n.to_string(), crate::io::parse_size(s)?))
        })
        .collect::<Result<_>>()?;
    Ok((files, memory))
}

impl Catalog {
    /// A catalog from `--export NAME=PATH` files or URLs (see [`crate::media::open_remote`];
    /// `remote_tls` verifies `https://` and `nbds://` servers), `--memory NAME=SIZE` RAM disks,
    /// and if both are empty, `default_ram` bytes of RAM disk named `disk`. Lives for the whole
    /// process.
    pub fn build(
        files: &[(String, std::path::PathBuf)],
        memory: &[(String, u64)],
        read_only: bool,
        default_ram: u64,
        remote_tls: &crate::nbd::client::ClientTls,
    ) -> Result<&'static Self> {
        let mut specs = Vec::new();
        for (name, path) in files {
            // A URL is a remote image (the same sources virtual media take): a web server's,
            // read with range requests (read-only), or another NBD server's export, read and
            // written by kvmio's client (read-only if that server says so).
            if let Some(url) = path.to_str().filter(|p| crate::media::is_remote(p)) {
                let (backend, remote_ro) = crate::media::open_remote(url, remote_tls)
                    .with_context(|| format!("export {name}"))?;
                specs.push(ExportSpec {
                    name: name.clone(),
                    description: url.to_string(),
                    backend,
                    read_only: read_only || remote_ro,
                    tls_only: false,
                });
                continue;
            }
            let backend = crate::nbd::backend::FileBackend::open(path, read_only)
                .with_context(|| format!("open {}", path.display()))?;
            specs.push(ExportSpec {
                name: name.clone(),
                description: path.display().to_string(),
                backend: Arc::new(backend) as Arc<dyn Backend>,
                read_only,
                tls_only: false,
            });
        }
        for (name, size) in memory {
            specs.push(ExportSpec {
                name: name.clone(),
                description: format!("RAM disk of {size} bytes"),
                backend: Arc::new(crate::nbd::backend::RamBackend::new(*size)?),
                read_only,
                tls_only: false,
            });
        }
        if specs.is_empty() {
            specs.push(ExportSpec {
                name: "disk".into(),
                description: format!("RAM disk of {default_ram} bytes"),
                backend: Arc::new(crate::nbd::backend::RamBackend::new(default_ram)?),
                read_only,
                tls_only: false,
            });
        }
        Ok(Box::leak(Box::new(Self::new(specs)?)))
    }

    /// Flushes every export (at exit).
    pub fn flush_all(&self) {
        for s in &self.specs {
            if let Err(e) = s.backend.flush() {
                log::warn!("flush {:?}: {e}", s.name);
            }
        }
    }

    /// One line per export, for start-up messages.
    pub fn describe(&self) -> String {
        self.specs
            .iter()
            .map(|s| {
                format!(
                    "{:?} ({} bytes{})",
                    s.name,
                    s.backend.size(),
                    if s.read_only { ", read-only" } else { "" }
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Catalogs live for the whole process (built once at start), so their strings can be leaked
/// for the `'static` the core's tables want.
fn leak(s: &str) -> &'static str {
    Box::leak(s.to_owned().into_boxed_str())
}
