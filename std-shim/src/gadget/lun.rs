//! One mass-storage LUN of a running gadget: what it holds, inserting and ejecting media.

use std::fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};

/// A LUN's configfs directory (`functions/mass_storage.X/lun.N`).
#[derive(Debug, Clone)]
pub struct Lun {
    dir: PathBuf,
    index: usize,
}

/// What a LUN is and holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LunState {
    /// Its number.
    pub index: usize,
    /// A CD-ROM drive.
    pub cdrom: bool,
    /// Read-only.
    pub read_only: bool,
    /// Removable medium.
    pub removable: bool,
    /// The medium's backing file (`None`: no medium).
    pub file: Option<PathBuf>,
}

fn flag(dir: &Path, name: &str) -> Result<bool> {
    let p = dir.join(name);
    let s = fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(s.trim() == "1")
}

impl Lun {
    pub(crate) fn at(dir: PathBuf, index: usize) -> Self {
        Self { dir, index }
    }

    /// Reads the LUN's flags and medium.
    pub fn state(&self) -> Result<LunState> {
        let file = fs::read_to_string(self.dir.join("file"))
            .with_context(|| format!("reading {}", self.dir.join("file").display()))?;
        let file = file.trim_end_matches('\n');
        Ok(LunState {
            index: self.index,
            cdrom: flag(&self.dir, "cdrom")?,
            read_only: flag(&self.dir, "ro")?,
            removable: flag(&self.dir, "removable")?,
            file: (!file.is_empty()).then(|| PathBuf::from(file)),
        })
    }

    /// Inserts a medium (a file or a block device; a medium already in is ejected first).
    /// The target sees a medium change, as with a real drive.
    pub fn insert(&self, path: &Path) -> Result<()> {
        let st = self.state()?;
        if !st.removable && st.file.is_some() {
            bail!("LUN {} is not removable", self.index);
        }
        let abs = fs::canonicalize(path).with_context(|| format!("{}", path.display()))?;
        if st.file.is_some() {
            self.eject()?;
        }
        fs::write(self.dir.join("file"), abs.as_os_str().as_encoded_bytes())
            .with_context(|| format!("LUN {}: inserting {}", self.index, abs.display()))
    }

    /// Ejects the medium. A target that locked the drive (PREVENT MEDIUM REMOVAL, as an
    /// operating system does while a file system is mounted) makes a plain eject fail with
    /// EBUSY; then the kernel's `forced_eject` is used, as a KVM operator means it.
    pub fn eject(&self) -> Result<()> {
        if !self.state()?.removable {
            bail!("LUN {} is not removable", self.index);
        }
        match fs::write(self.dir.join("file"), "\n") {
            Ok(()) => Ok(()),
            Err(e) if e.raw_os_error() == Some(rustix::io::Errno::BUSY.raw_os_error()) => {
                let forced = self.dir.join("forced_eject");
                if !forced.exists() {
                    bail!(
                        "LUN {}: the target has locked the medium, and this kernel has no \
                         forced_eject",
                        self.index
                    );
                }
                log::info!("LUN {}: the target locked the medium; forcing", self.index);
                fs::write(&forced, "1").with_context(|| format!("LUN {}: forced eject", self.index))
            }
            Err(e) => Err(e).with_context(|| format!("LUN {}: eject", self.index)),
        }
    }
}
