//! Storage behind an NBD export: a file (pread/pwrite, fdatasync, punch hole, SEEK_DATA/SEEK_HOLE)
//! or RAM.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::RwLock;

use nbd_core::ExportFeatures;
use nbd_core::wire::{AllocationFlags, ErrorCode, Extent};

/// What an export is stored in. Implementations are shared by every connection to the export,
/// so they are `Sync`, and FLUSH on one connection covers writes made through all of them.
///
/// Only [`size`](Backend::size) and [`read_at`](Backend::read_at) are required. The server
/// offers what [`features`](Backend::features) says and refuses the other commands itself, so a
/// backend that leaves a feature out never sees its call; the defaults are for those. A backend
/// that takes writes but keeps them in memory (or somewhere FLUSH cannot reach) must not claim
/// [`ExportFeatures::FLUSH`] or [`ExportFeatures::FUA`].
pub trait Backend: Send + Sync {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// What the backend can do beyond read/write (default: nothing more).
    fn features(&self) -> ExportFeatures {
        ExportFeatures::empty()
    }
    /// Fills `buf` from `offset` (the range is within the size).
    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Writes `buf` at `offset`; with `fua` the data is durable before this returns (default:
    /// a read-only backend, every write fails with `EROFS`; export it read-only so that clients
    /// are told up front).
    fn write_at(&self, _buf: &[u8], _offset: u64, _fua: bool) -> io::Result<()> {
        Err(io::ErrorKind::ReadOnlyFilesystem.into())
    }
    /// Makes every completed write durable (called with [`ExportFeatures::FLUSH`] only; default:
    /// nothing to do).
    fn flush(&self) -> io::Result<()> {
        Ok(())
    }
    /// Discards the range; it may then read as anything (called with [`ExportFeatures::TRIM`]
    /// only).
    fn trim(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Zeroes the range; `may_trim` allows a hole; with `fast`, fail with `Unsupported` unless
    /// it is much faster than writing zeroes (called with [`ExportFeatures::WRITE_ZEROES`] only).
    fn write_zeroes(
        &self,
        _offset: u64,
        _len: u64,
        _may_trim: bool,
        _fast: bool,
    ) -> io::Result<()> {
        Err(io::ErrorKind::Unsupported.into())
    }
    /// Prefetches the range (called with [`ExportFeatures::CACHE`] only; default: nothing).
    fn cache(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    /// The file behind the export, if reads may be sent from it directly (`sendfile`).
    fn file(&self) -> Option<&std::sync::Arc<File>> {
        None
    }
    /// Appends `base:allocation` extents describing `[offset, offset + len)` (at least one,
    /// at most `max`; the last may stop short; called with [`ExportFeatures::BASE_ALLOCATION`]
    /// only; default: all data).
    fn extents(&self, offset: u64, len: u64, _max: usize, out: &mut Vec<Extent>) -> io::Result<()> {
        let _ = offset;
        out.push(Extent {
            length: len,
            flags: 0,
        });
        Ok(())
    }
}

/// The NBD error for an I/O error, as the spec ("Error values") and qemu-nbd and nbdkit map
/// errno: EPERM, EACCES and EROFS are `NBD_EPERM`; ENOSPC, EDQUOT and EFBIG (a write past
/// `RLIMIT_FSIZE`) are `NBD_ENOSPC`; EIO, ENOMEM, EINVAL, EOVERFLOW, ENOTSUP/EOPNOTSUPP and
/// ESHUTDOWN map to their namesakes. The raw errno decides when there is one; errors without
/// one (a file that ends early, ...) go by their kind. Any other errno is `NBD_EIO`: qemu-nbd
/// and nbdkit send `NBD_EINVAL` there, but a backend error such as ENXIO or ESTALE is the
/// storage failing, not the request being invalid. An `io::Error` wrapping another (with
/// context) is looked through for the OS error inside.
pub fn errno(e: &io::Error) -> ErrorCode {
    use rustix::io::Errno as E;
    if let Some(raw) = os_error(e) {
        return match raw {
            E::PERM | E::ACCESS | E::ROFS => ErrorCode::Perm,
            E::NOSPC | E::DQUOT | E::FBIG => ErrorCode::NoSpc,
            E::NOMEM => ErrorCode::NoMem,
            E::INVAL => ErrorCode::Inval,
            E::OVERFLOW => ErrorCode::Overflow,
            E::NOTSUP => ErrorCode::NotSup,
            E::SHUTDOWN => ErrorCode::Shutdown,
            _ => ErrorCode::Io,
        };
    }
    use io::ErrorKind as K;
    match e.kind() {
        K::PermissionDenied | K::ReadOnlyFilesystem => ErrorCode::Perm,
        K::StorageFull | K::QuotaExceeded | K::FileTooLarge => ErrorCode::NoSpc,
        K::InvalidInput => ErrorCode::Inval,
        K::Unsupported => ErrorCode::NotSup,
        K::OutOfMemory => ErrorCode::NoMem,
        _ => ErrorCode::Io,
    }
}

/// The OS error in `e` or in the errors it wraps.
fn os_error(e: &io::Error) -> Option<rustix::io::Errno> {
    if let Some(raw) = rustix::io::Errno::from_io_error(e) {
        return Some(raw);
    }
    let mut inner: Option<&(dyn std::error::Error + 'static)> = e.get_ref().map(|i| i as _);
    while let Some(err) = inner {
        if let Some(raw) = err
            .downcast_ref::<io::Error>()
            .and_then(rustix::io::Errno::from_io_error)
        {
            return Some(raw);
        }
        inner = err.source();
    }
    None
}

/// An error with the step it happened in (its errno still decides the NBD error).
#[derive(Debug)]
struct Step(&'static str, io::Error);

impl std::fmt::Display for Step {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.0, self.1)
    }
}

impl std::error::Error for Step {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.1)
    }
}

const HOLE_ZERO: u64 = (AllocationFlags::HOLE.bits() | AllocationFlags::ZERO.bits()) as u64;

fn push_extent(out: &mut Vec<Extent>, length: u64, flags: u64) {
    match out.last_mut() {
        Some(e) if e.flags == flags => e.length += length,
        _ => out.push(Extent { length, flags }),
    }
}

/// A regular file or block device.
#[derive(Debug)]
pub struct FileBackend {
    file: std::sync::Arc<File>,
    size: u64,
    sparse: bool,
}

impl FileBackend {
    /// Opens `path` (read-only if asked).
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        let size = if meta.file_type().is_file() {
            meta.len()
        } else {
            // Block devices report 0 in metadata: seek to the end instead.
            rustix::fs::seek(&file, rustix::fs::SeekFrom::End(0))?
        };
        // Probe SEEK_DATA support once: tmpfs, ext4, xfs, btrfs have it.
        let sparse = meta.file_type().is_file()
            && (size == 0
                || rustix::fs::seek(&file, rustix::fs::SeekFrom::Data(0)).is_ok()
                || rustix::fs::seek(&file, rustix::fs::SeekFrom::Hole(0)).is_ok());
        Ok(Self {
            file: std::sync::Arc::new(file),
            size,
            sparse,
        })
    }
}

fn punch(file: &File, offset: u64, len: u64) -> io::Result<()> {
    use rustix::fs::FallocateFlags as F;
    rustix::fs::fallocate(file, F::PUNCH_HOLE | F::KEEP_SIZE, offset, len).map_err(io::Error::from)
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }

    fn features(&self) -> ExportFeatures {
        // FLUSH is fdatasync on the one file: it covers writes from every connection.
        ExportFeatures::all().difference(ExportFeatures::ROTATIONAL)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    fn file(&self) -> Option<&std::sync::Arc<File>> {
        Some(&self.file)
    }

    fn write_at(&self, buf: &[u8], offset: u64, fua: bool) -> io::Result<()> {
        self.file.write_all_at(buf, offset)?;
        if fua {
            self.file
                .sync_data()
                .map_err(|e| io::Error::new(e.kind(), Step("fdatasync (FUA)", e)))?;
        }
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        self.file.sync_data()
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        match punch(&self.file, offset, len) {
            // TRIM is advisory: a file system without hole punching just keeps the data.
            Err(e) if e.kind() == io::ErrorKind::Unsupported => Ok(()),
            r => r,
        }
    }

    fn write_zeroes(&self, offset: u64, len: u64, may_trim: bool, fast: bool) -> io::Result<()> {
        use rustix::fs::FallocateFlags as F;
        let r = if may_trim {
            punch(&self.file, offset, len)
        } else {
            rustix::fs::fallocate(&*self.file, F::ZERO_RANGE | F::KEEP_SIZE, offset, len)
                .map_err(io::Error::from)
        };
        match r {
            Ok(()) => Ok(()),
            Err(_) if fast => Err(io::Error::from(io::ErrorKind::Unsupported)),
            Err(_) => {
                let zero = vec![0u8; (len.min(1 << 20)) as usize];
                let mut pos = offset;
                while pos < offset + len {
                    let n = (offset + len - pos).min(zero.len() as u64) as usize;
                    self.file.write_all_at(&zero[..n], pos)?;
                    pos += n as u64;
                }
                Ok(())
            }
        }
    }

    fn cache(&self, offset: u64, len: u64) -> io::Result<()> {
        let len = std::num::NonZeroU64::new(len);
        rustix::fs::fadvise(&*self.file, offset, len, rustix::fs::Advice::WillNeed)
            .map_err(io::Error::from)
    }

    fn extents(&self, offset: u64, len: u64, max: usize, out: &mut Vec<Extent>) -> io::Result<()> {
        let end = (offset + len).min(self.size);
        if !self.sparse {
            push_extent(out, end - offset, 0);
            return Ok(());
        }
        use rustix::fs::{SeekFrom, seek};
        let mut pos = offset;
        while pos < end && out.len() < max {
            // Where does the data at or after `pos` start?
            let data = match seek(&*self.file, SeekFrom::Data(pos)) {
                Ok(d) => d,
                Err(rustix::io::Errno::NXIO) => end, // only a hole up to EOF
                Err(e) => return Err(e.into()),
            };
            if data > pos {
                let hole_end = data.min(end);
                push_extent(out, hole_end - pos, HOLE_ZERO);
                pos = hole_end;
                continue;
            }
            let hole = match seek(&*self.file, SeekFrom::Hole(pos)) {
                Ok(h) => h,
                Err(rustix::io::Errno::NXIO) => end,
                Err(e) => return Err(e.into()),
            };
            let data_end = hole.min(end).max(pos + 1);
            push_extent(out, data_end - pos, 0);
            pos = data_end;
        }
        if out.is_empty() {
            push_extent(out, end - offset, 0);
        }
        Ok(())
    }
}

/// A RAM disk. Zero 64 KiB blocks are reported as holes.
#[derive(Debug)]
pub struct RamBackend {
    data: RwLock<Vec<u8>>,
}

impl RamBackend {
    /// A zeroed RAM disk of `size` bytes.
    pub fn new(size: u64) -> io::Result<Self> {
        let size =
            usize::try_from(size).map_err(|_| io::Error::from(io::ErrorKind::OutOfMemory))?;
        Ok(Self {
            data: RwLock::new(vec![0u8; size]),
        })
    }
}

const RAM_BLOCK: u64 = 64 * 1024;

impl Backend for RamBackend {
    fn size(&self) -> u64 {
        self.data.read().map(|d| d.len() as u64).unwrap_or(0)
    }

    fn features(&self) -> ExportFeatures {
        ExportFeatures::all().difference(ExportFeatures::ROTATIONAL)
    }

    fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let d = self.data.read().map_err(|_| io::Error::other("poisoned"))?;
        let o = offset as usize;
        buf.copy_from_slice(&d[o..o + buf.len()]);
        Ok(())
    }

    fn write_at(&self, buf: &[u8], offset: u64, _fua: bool) -> io::Result<()> {
        let mut d = self
            .data
            .write()
            .map_err(|_| io::Error::other("poisoned"))?;
        let o = offset as usize;
        d[o..o + buf.len()].copy_from_slice(buf);
        Ok(())
    }

    fn flush(&self) -> io::Result<()> {
        Ok(())
    }

    fn trim(&self, offset: u64, len: u64) -> io::Result<()> {
        self.write_zeroes(offset, len, true, false)
    }

    fn write_zeroes(&self, offset: u64, len: u64, _may_trim: bool, _fast: bool) -> io::Result<()> {
        let mut d = self
            .data
            .write()
            .map_err(|_| io::Error::other("poisoned"))?;
        d[offset as usize..(offset + len) as usize].fill(0);
        Ok(())
    }

    fn cache(&self, _offset: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }

    fn extents(&self, offset: u64, len: u64, max: usize, out: &mut Vec<Extent>) -> io::Result<()> {
        let d = self.data.read().map_err(|_| io::Error::other("poisoned"))?;
        let end = (offset + len).min(d.len() as u64);
        let mut pos = offset;
        while pos < end && out.len() < max {
            let blk_end = ((pos / RAM_BLOCK + 1) * RAM_BLOCK).min(end);
            let zero = d[pos as usize..blk_end as usize].iter().all(|&b| b == 0);
            push_extent(out, blk_end - pos, if zero { HOLE_ZERO } else { 0 });
            pos = blk_end;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check_extents(b: &dyn Backend, expect_sparse: bool) {
        let size = b.size();
        let mut ext = Vec::new();
        b.extents(0, size, 1000, &mut ext).unwrap();
        assert_eq!(ext.iter().map(|e| e.length).sum::<u64>(), size);
        if expect_sparse {
            assert!(ext.iter().any(|e| e.flags == HOLE_ZERO), "{ext:?}");
            assert!(ext.iter().any(|e| e.flags == 0), "{ext:?}");
        }
    }

    #[test]
    fn errno_follows_the_spec_and_qemu_nbd() {
        use rustix::io::Errno as E;
        let os = |e: E| io::Error::from_raw_os_error(e.raw_os_error());
        for (e, code) in [
            (E::PERM, ErrorCode::Perm),
            (E::ACCESS, ErrorCode::Perm),
            (E::ROFS, ErrorCode::Perm),
            (E::IO, ErrorCode::Io),
            (E::NOMEM, ErrorCode::NoMem),
            (E::INVAL, ErrorCode::Inval),
            (E::NOSPC, ErrorCode::NoSpc),
            (E::DQUOT, ErrorCode::NoSpc),
            (E::FBIG, ErrorCode::NoSpc),
            (E::OVERFLOW, ErrorCode::Overflow),
            (E::NOTSUP, ErrorCode::NotSup),
            (E::OPNOTSUPP, ErrorCode::NotSup),
            (E::SHUTDOWN, ErrorCode::Shutdown),
            (E::NXIO, ErrorCode::Io),
            (E::STALE, ErrorCode::Io),
        ] {
            assert_eq!(errno(&os(e)), code, "{e:?}");
            // wrapped with context, the errno inside still decides
            let wrapped = io::Error::other(os(e));
            assert_eq!(errno(&wrapped), code, "wrapped {e:?}");
        }
        // no errno: by kind (a file that ends before the export does)
        assert_eq!(
            errno(&io::Error::from(io::ErrorKind::UnexpectedEof)),
            ErrorCode::Io
        );
        assert_eq!(
            errno(&io::Error::from(io::ErrorKind::Unsupported)),
            ErrorCode::NotSup
        );
        assert_eq!(
            errno(&io::Error::from(io::ErrorKind::StorageFull)),
            ErrorCode::NoSpc
        );
    }

    #[test]
    fn ram_backend() {
        let b = RamBackend::new(1 << 20).unwrap();
        b.write_at(&[7u8; 4096], 65536, false).unwrap();
        let mut buf = [0u8; 8];
        b.read_at(&mut buf, 65536 + 8).unwrap();
        assert_eq!(buf, [7; 8]);
        check_extents(&b, true);
        b.write_zeroes(65536, 4096, false, true).unwrap();
        let mut ext = Vec::new();
        b.extents(0, 1 << 20, 10, &mut ext).unwrap();
        assert_eq!(
            ext,
            [Extent {
                length: 1 << 20,
                flags: HOLE_ZERO
            }]
        );
    }

    #[test]
    fn file_backend_sparse_and_punch() {
        let dir = std::env::temp_dir().join(format!("kvmio-backend-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("disk.img");
        let f = File::create(&path).unwrap();
        f.set_len(4 << 20).unwrap();
        f.write_all_at(&[1u8; 1 << 20], 1 << 20).unwrap();
        drop(f);
        let b = FileBackend::open(&path, false).unwrap();
        assert_eq!(b.size(), 4 << 20);
        check_extents(&b, b.sparse);
        b.trim(1 << 20, 1 << 20).unwrap();
        let mut buf = vec![9u8; 4096];
        b.read_at(&mut buf, 1 << 20).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
        b.write_at(&[5u8; 512], 512, true).unwrap();
        b.write_zeroes(512, 512, false, false).unwrap();
        b.read_at(&mut buf[..1024], 0).unwrap();
        assert!(buf[..1024].iter().all(|&x| x == 0));
        b.flush().unwrap();
        b.cache(0, 4096).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
