//! Storage that fails on demand, for the backend-fault and durability tests: the faults come
//! from the kernel, through kvmio's own `pread`/`pwrite`/`fdatasync`, not from a fake backend.
//!
//! * [`FaultFs`]: a FUSE file system (the `fuser` crate, mounted in this test process) holding
//!   one file, `disk.img`, whose reads, writes and fsyncs fail with a chosen errno in a chosen
//!   byte range, switched at run time ([`FaultFs::fail`], [`FaultFs::heal`]). It is opened
//!   with `FOPEN_DIRECT_IO`, so every `pread`/`pwrite` of the server reaches it (no page cache
//!   in between), and it keeps two images: what reads return ([`FaultFs::contents`]) and what
//!   would survive a crash of the machine ([`FaultFs::durable`]: the contents as of the last
//!   fsync), which is how the durability tests see whether an acknowledgement came after
//!   `fdatasync`.
//! * [`Tmpfs`]: a small tmpfs mount, for real ENOSPC.
//!
//! Both need root (mounting) and [`FaultFs`] needs `/dev/fuse`; without them they panic with
//! the reason (a failure, never a skip). Both unmount on drop: drop the processes using them
//! first.

use std::ffi::OsStr;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use fuser::{
    Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags, INodeNo, LockOwner, MountOption,
    OpenFlags, ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite,
    Request, WriteFlags,
};

use crate::TempDir;

/// The name of the one file in a [`FaultFs`].
pub const FILE_NAME: &str = "disk.img";

const FILE_INO: INodeNo = INodeNo(2);

/// An operation a fault can hit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `read`/`pread` (FUSE READ).
    Read,
    /// `write`/`pwrite` (FUSE WRITE).
    Write,
    /// `fsync`/`fdatasync` (FUSE FSYNC); the range is ignored.
    Fsync,
}

#[derive(Debug, Clone)]
struct Fault {
    op: Op,
    range: Range<u64>,
    errno: i32,
}

/// What a [`FaultFs`] has seen.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// READs answered with data.
    pub reads: u64,
    /// WRITEs applied.
    pub writes: u64,
    /// FSYNCs that succeeded.
    pub fsyncs: u64,
    /// Requests failed by a fault.
    pub injected: u64,
}

#[derive(Debug, Default)]
struct Inner {
    /// What reads return.
    data: Vec<u8>,
    /// What an fsync made durable.
    durable: Vec<u8>,
    /// Ranges written since the last fsync.
    dirty: Vec<Range<u64>>,
    faults: Vec<Fault>,
    stats: Stats,
}

impl Inner {
    /// The errno of the first fault hitting `op` on `range`.
    fn fault(&mut self, op: Op, range: Range<u64>) -> Option<Errno> {
        let hit = self.faults.iter().find(|f| {
            f.op == op
                && (op == Op::Fsync || (f.range.start < range.end && range.start < f.range.end))
        })?;
        let errno = Errno::from_i32(hit.errno);
        self.stats.injected += 1;
        Some(errno)
    }
}

#[derive(Debug, Default)]
struct State(Mutex<Inner>);

impl State {
    fn lock(&self) -> MutexGuard<'_, Inner> {
        // a panic in a FUSE callback must not hide the state from the test
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }
}

struct Fs(Arc<State>);

fn attr(ino: INodeNo, size: u64) -> FileAttr {
    let dir = ino == INodeNo::ROOT;
    FileAttr {
        ino,
        size,
        blocks: size.div_ceil(512),
        atime: SystemTime::UNIX_EPOCH,
        mtime: SystemTime::UNIX_EPOCH,
        ctime: SystemTime::UNIX_EPOCH,
        crtime: SystemTime::UNIX_EPOCH,
        kind: if dir {
            FileType::Directory
        } else {
            FileType::RegularFile
        },
        perm: if dir { 0o755 } else { 0o644 },
        nlink: if dir { 2 } else { 1 },
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 4096,
        flags: 0,
    }
}

/// Attributes are never cached: a size change shows at once.
const TTL: Duration = Duration::ZERO;

impl Filesystem for Fs {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == FILE_NAME {
            let size = self.0.lock().data.len() as u64;
            reply.entry(&TTL, &attr(FILE_INO, size), fuser::Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT => reply.attr(&TTL, &attr(ino, 0)),
            FILE_INO => {
                let size = self.0.lock().data.len() as u64;
                reply.attr(&TTL, &attr(ino, size));
            }
            _ => reply.error(Errno::ENOENT),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino != FILE_INO {
            reply.error(Errno::EPERM);
            return;
        }
        let mut s = self.0.lock();
        if let Some(n) = size {
            s.data.resize(n as usize, 0);
        }
        let size = s.data.len() as u64;
        reply.attr(&TTL, &attr(ino, size));
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        if ino == FILE_INO {
            // every read and write comes here, none is answered from the page cache
            reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
        } else {
            reply.error(Errno::EISDIR);
        }
    }

    fn read(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let mut s = self.0.lock();
        if let Some(e) = s.fault(Op::Read, offset..offset + u64::from(size)) {
            drop(s);
            reply.error(e);
            return;
        }
        s.stats.reads += 1;
        let len = s.data.len();
        let start = (offset as usize).min(len);
        let end = (start + size as usize).min(len);
        reply.data(&s.data[start..end]);
    }

    fn write(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let mut s = self.0.lock();
        let end = offset + data.len() as u64;
        if let Some(e) = s.fault(Op::Write, offset..end) {
            drop(s);
            reply.error(e);
            return;
        }
        if s.data.len() < end as usize {
            s.data.resize(end as usize, 0);
        }
        s.data[offset as usize..end as usize].copy_from_slice(data);
        s.dirty.push(offset..end);
        s.stats.writes += 1;
        drop(s);
        reply.written(data.len() as u32);
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let mut s = self.0.lock();
        if let Some(e) = s.fault(Op::Fsync, 0..0) {
            drop(s);
            reply.error(e);
            return;
        }
        let Inner {
            data,
            durable,
            dirty,
            ..
        } = &mut *s;
        durable.resize(data.len(), 0);
        for r in dirty.drain(..) {
            let end = (r.end as usize).min(data.len());
            let start = (r.start as usize).min(end);
            durable[start..end].copy_from_slice(&data[start..end]);
        }
        s.stats.fsyncs += 1;
        drop(s);
        reply.ok();
    }

    fn fallocate(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _offset: u64,
        _length: u64,
        _mode: i32,
        reply: ReplyEmpty,
    ) {
        // kvmio then writes zeroes (and TRIM keeps the data), through write()
        reply.error(Errno::EOPNOTSUPP);
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            reply.error(Errno::ENOTDIR);
            return;
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, FILE_NAME),
        ];
        for (i, (ino, kind, name)) in entries.into_iter().enumerate().skip(offset as usize) {
            if reply.add(ino, (i + 1) as u64, kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// Panics unless this process may mount file systems (root) and, for FUSE, `/dev/fuse` exists.
fn require_mount_rights(fuse: bool) {
    assert!(
        rustix::process::geteuid().is_root(),
        "these tests mount file systems (FUSE, tmpfs) and must run as root"
    );
    if fuse {
        assert!(
            Path::new("/dev/fuse").exists(),
            "/dev/fuse is missing: these tests need the fuse kernel module (modprobe fuse) and \
             the device in this container"
        );
    }
}

/// A mounted fault-injecting FUSE file system with one file (see the module docs).
pub struct FaultFs {
    session: Option<fuser::BackgroundSession>,
    mountpoint: PathBuf,
    file: PathBuf,
    state: Arc<State>,
    _dir: TempDir,
}

impl FaultFs {
    /// Mounts a file system whose `disk.img` holds `size` zero bytes (all durable).
    pub fn mount(size: usize) -> Self {
        require_mount_rights(true);
        let dir = crate::tempdir();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mkdir mountpoint");
        let state = Arc::new(State::default());
        {
            let mut s = state.lock();
            s.data = vec![0; size];
            s.durable = vec![0; size];
        }
        let mut config = fuser::Config::default();
        config.mount_options = vec![
            MountOption::FSName("kvmio-faultfs".into()),
            MountOption::Subtype("faultfs".into()),
        ];
        let session =
            fuser::spawn_mount(Fs(state.clone()), &mountpoint, &config).unwrap_or_else(|e| {
                panic!(
                    "cannot mount the fault-injecting FUSE file system at {}: {e} (it needs \
                     root and /dev/fuse)",
                    mountpoint.display()
                )
            });
        let file = mountpoint.join(FILE_NAME);
        let fs = Self {
            session: Some(session),
            mountpoint,
            file,
            state,
            _dir: dir,
        };
        let meta = std::fs::metadata(&fs.file)
            .unwrap_or_else(|e| panic!("stat {} on the new FUSE mount: {e}", fs.file.display()));
        assert_eq!(meta.len(), size as u64, "size of {}", fs.file.display());
        fs
    }

    /// The file (`MOUNTPOINT/disk.img`).
    pub fn path(&self) -> &Path {
        &self.file
    }

    /// Replaces the contents (durable too), as if written and synced long ago.
    pub fn set_contents(&self, data: &[u8]) {
        let mut s = self.state.lock();
        s.data = data.to_vec();
        s.durable = data.to_vec();
        s.dirty.clear();
    }

    /// From now on, `op` on any byte of `range` fails with `errno` (for [`Op::Fsync`]: every
    /// fsync). Faults add up; [`heal`](Self::heal) removes them all.
    pub fn fail(&self, op: Op, range: Range<u64>, errno: rustix::io::Errno) {
        self.state.lock().faults.push(Fault {
            op,
            range,
            errno: errno.raw_os_error(),
        });
    }

    /// Removes every fault.
    pub fn heal(&self) {
        self.state.lock().faults.clear();
    }

    /// What reads return now.
    pub fn contents(&self) -> Vec<u8> {
        self.state.lock().data.clone()
    }

    /// What the last fsync made durable: what a crash of the machine would leave.
    pub fn durable(&self) -> Vec<u8> {
        self.state.lock().durable.clone()
    }

    /// Counters.
    pub fn stats(&self) -> Stats {
        self.state.lock().stats
    }
}

impl Drop for FaultFs {
    fn drop(&mut self) {
        if let Some(s) = self.session.take()
            && let Err(e) = s.umount_and_join()
        {
            // still in use (a server that was not stopped): detach it instead
            eprintln!(
                "faultfs: unmount {}: {e}; detaching it",
                self.mountpoint.display()
            );
            let _ = rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH);
        }
    }
}

/// A tmpfs of a given size, mounted in a temporary directory (real ENOSPC when it fills up).
pub struct Tmpfs {
    mountpoint: PathBuf,
    _dir: TempDir,
}

impl Tmpfs {
    /// Mounts a tmpfs of `size` bytes (rounded up to pages by the kernel).
    pub fn mount(size: u64) -> Self {
        require_mount_rights(false);
        let dir = crate::tempdir();
        let mountpoint = dir.path().join("mnt");
        std::fs::create_dir(&mountpoint).expect("mkdir mountpoint");
        rustix::mount::mount(
            "kvmio-test-tmpfs",
            &mountpoint,
            "tmpfs",
            rustix::mount::MountFlags::NOSUID | rustix::mount::MountFlags::NODEV,
            Some(
                std::ffi::CString::new(format!("size={size},mode=0755"))
                    .expect("no NUL")
                    .as_c_str(),
            ),
        )
        .unwrap_or_else(|e| {
            panic!(
                "cannot mount a tmpfs of {size} bytes at {} (it needs root): {e}",
                mountpoint.display()
            )
        });
        Self {
            mountpoint,
            _dir: dir,
        }
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mountpoint
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // detached at once even if a file is still open; freed when the last one closes
        if let Err(e) =
            rustix::mount::unmount(&self.mountpoint, rustix::mount::UnmountFlags::DETACH)
        {
            eprintln!("tmpfs: unmount {}: {e}", self.mountpoint.display());
        }
    }
}
