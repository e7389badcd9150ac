//! Backend faults fail only the request that hit them. `kvmio nbd serve` (release binary, both
//! runtimes) exports files whose `pread`/`pwrite`/`fdatasync` fail in the kernel: a
//! fault-injecting FUSE file system (EIO, EROFS, EDQUOT, … in chosen byte ranges, switched
//! while the server runs; [`kvmio_tests::faultfs`]), a full tmpfs (real ENOSPC), a lowered
//! `RLIMIT_FSIZE` (EFBIG) and a file truncated under the live export. Each error reply carries
//! the NBD error the spec maps the errno to; the connection, a second connection and a second,
//! healthy export keep working. `kvmio nbd copy` into a destination that fills up (a file on a
//! full tmpfs; an NBD export on one; nbdkit failing late with ENOSPC) exits non-zero naming the
//! destination's error, and every byte range it reports written is there.
//!
//! Clients: the raw client of `kvmio_tests::raw` (simple and structured replies, pipelined
//! requests), nbdsh (libnbd) and qemu-io.

use std::net::TcpStream;
use std::path::Path;

use kvmio_tests::faultfs::{FaultFs, Op, Tmpfs};
use kvmio_tests::raw::{self, Reply};
use kvmio_tests::*;
use nbd_core::wire::{
    ChunkType, CommandFlags, CommandType, OptionType, ReplyFlags, ReplyType, TransmissionFlags,
};
use rustix::io::Errno;

const MIB: u64 = 1 << 20;

// NBD error values (the spec's "Error values").
const NBD_EPERM: u32 = 1;
const NBD_EIO: u32 = 5;
const NBD_ENOMEM: u32 = 12;
const NBD_EINVAL: u32 = 22;
const NBD_ENOSPC: u32 = 28;
const NBD_EOVERFLOW: u32 = 75;
const NBD_ENOTSUP: u32 = 95;
const NBD_ESHUTDOWN: u32 = 108;

// ------------------------------------------------------------------------------ raw client

/// A failed request: the NBD error value and (structured replies) the server's message.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Failed {
    code: u32,
    message: String,
}

/// A transmission-phase connection over the raw client, with simple or structured replies.
struct Conn {
    c: raw::Nbd<TcpStream>,
    structured: bool,
    cookie: u64,
    flags: TransmissionFlags,
    what: String,
}

impl Conn {
    /// Connects to `export` on 127.0.0.1:`port`; `structured` negotiates structured replies.
    fn open(port: u16, export: &str, structured: bool) -> Self {
        let mut c = raw::connect(port);
        c.handshake().expect("handshake");
        if structured {
            let r = c
                .option(OptionType::StructuredReply, &[])
                .expect("STRUCTURED_REPLY");
            assert_eq!(r.last().map(|r| r.reply), Some(ReplyType::Ack), "{r:?}");
        }
        let (_, flags) = c.go_ok(export);
        Self {
            c,
            structured,
            cookie: 0,
            flags: TransmissionFlags::from_bits_retain(flags),
            what: format!(
                "{export} ({} replies)",
                if structured { "structured" } else { "simple" }
            ),
        }
    }

    /// Sends a request (and its payload) without waiting; returns its cookie.
    fn send(
        &mut self,
        cmd: CommandType,
        flags: CommandFlags,
        off: u64,
        len: u64,
        data: &[u8],
    ) -> u64 {
        self.cookie += 1;
        let mut b = raw::request_bytes(cmd, flags, self.cookie, off, len as u32);
        b.extend_from_slice(data);
        self.c
            .send(&b)
            .unwrap_or_else(|e| panic!("{}: send {cmd:?}: {e}", self.what));
        self.cookie
    }

    /// Reads the (whole) reply to `cookie`, the next one due; `read` is the READ's range.
    fn reply(&mut self, cookie: u64, read: Option<(u64, u64)>) -> Result<Vec<u8>, Failed> {
        let what = self.what.clone();
        let ctx = |e: std::io::Error| -> ! {
            panic!("{what}: no reply to request {cookie} (the connection broke?): {e}")
        };
        if !self.structured {
            let r = match self.c.any_reply().unwrap_or_else(|e| ctx(e)) {
                Reply::Simple(r) => r,
                other => panic!("{what}: structured reply {other:?} to a simple connection"),
            };
            assert_eq!(r.cookie, cookie, "{what}: reply out of order");
            if r.error != 0 {
                return Err(Failed {
                    code: r.error,
                    message: String::new(),
                });
            }
            return Ok(match read {
                Some((_, len)) => self.c.read_vec(len as usize).unwrap_or_else(|e| ctx(e)),
                None => Vec::new(),
            });
        }
        let (base, len) = read.unwrap_or((0, 0));
        let mut data = vec![0u8; len as usize];
        let mut failed = None;
        loop {
            let (h, p) = match self.c.any_reply().unwrap_or_else(|e| ctx(e)) {
                Reply::Chunk(h, p) => (h, p),
                other => panic!("{what}: simple reply {other:?} on a structured connection"),
            };
            assert_eq!(h.cookie, cookie, "{what}: chunk of another request");
            match h.chunk {
                ChunkType::OffsetData => {
                    let off = u64::from_be_bytes(p[..8].try_into().expect("offset"));
                    let at = (off - base) as usize;
                    data[at..at + p.len() - 8].copy_from_slice(&p[8..]);
                }
                ChunkType::OffsetHole => {
                    let off = u64::from_be_bytes(p[..8].try_into().expect("offset"));
                    let n = u32::from_be_bytes(p[8..12].try_into().expect("length"));
                    let at = (off - base) as usize;
                    data[at..at + n as usize].fill(0);
                }
                ChunkType::Error | ChunkType::ErrorOffset => {
                    let code = u32::from_be_bytes(p[..4].try_into().expect("error"));
                    let n = u16::from_be_bytes(p[4..6].try_into().expect("message length"));
                    let message = String::from_utf8_lossy(&p[6..6 + n as usize]).into_owned();
                    failed.get_or_insert(Failed { code, message });
                }
                ChunkType::None => {}
                other => panic!("{what}: unexpected chunk {other:?}"),
            }
            if h.flags.contains(ReplyFlags::DONE) {
                break;
            }
        }
        match failed {
            Some(f) => Err(f),
            None => Ok(data),
        }
    }

    fn read(&mut self, off: u64, len: u64) -> Result<Vec<u8>, Failed> {
        let c = self.send(CommandType::Read, CommandFlags::empty(), off, len, &[]);
        self.reply(c, Some((off, len)))
    }

    fn read_flags(&mut self, off: u64, len: u64, flags: CommandFlags) -> Result<Vec<u8>, Failed> {
        let c = self.send(CommandType::Read, flags, off, len, &[]);
        self.reply(c, Some((off, len)))
    }

    fn write(&mut self, off: u64, data: &[u8], flags: CommandFlags) -> Result<(), Failed> {
        let c = self.send(CommandType::Write, flags, off, data.len() as u64, data);
        self.reply(c, None).map(|_| ())
    }

    fn command(
        &mut self,
        cmd: CommandType,
        flags: CommandFlags,
        off: u64,
        len: u64,
    ) -> Result<(), Failed> {
        let c = self.send(cmd, flags, off, len, &[]);
        self.reply(c, None).map(|_| ())
    }

    fn flush(&mut self) -> Result<(), Failed> {
        self.command(CommandType::Flush, CommandFlags::empty(), 0, 0)
    }
}

/// Panics unless `r` failed with `code` (and, for structured replies, a message mentioning
/// `text`, case-insensitive).
#[track_caller]
fn expect_code<T: std::fmt::Debug>(r: Result<T, Failed>, code: u32, text: &str, what: &str) {
    match r {
        Err(f) => {
            assert_eq!(f.code, code, "{what}: error value ({f:?})");
            assert!(
                f.message.is_empty() || f.message.to_lowercase().contains(&text.to_lowercase()),
                "{what}: the message {:?} does not mention {text:?}",
                f.message
            );
        }
        Ok(v) => panic!(
            "{what}: succeeded ({:?}…) where error {code} was due",
            format!("{v:?}").get(..40)
        ),
    }
}

/// Panics unless `r` succeeded.
#[track_caller]
fn expect_ok<T>(r: Result<T, Failed>, what: &str) -> T {
    r.unwrap_or_else(|f| panic!("{what}: failed with {f:?}"))
}

/// A regular file of `size` random bytes (seeded) in `dir`; returns its path and contents.
fn random_file(dir: &Path, name: &str, size: usize, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let p = dir.join(name);
    let data = random_bytes(size, seed);
    std::fs::write(&p, &data).expect("write image");
    (p, data)
}

/// The healthy export keeps working: a write and a read back on `g`.
#[track_caller]
fn check_healthy(g: &mut Conn, step: u64) {
    let data = random_bytes(65536, 1000 + step);
    let off = (step % 32) * 65536;
    expect_ok(
        g.write(off, &data, CommandFlags::FUA),
        "healthy export: write",
    );
    let back = expect_ok(g.read(off, 65536), "healthy export: read");
    assert_same_bytes(&back, &data, "healthy export: read back");
}

// ------------------------------------------------------------------------------ EIO

/// EIO in READ, WRITE (mid-payload) and fdatasync (FLUSH, FUA) on a FUSE-backed export, over
/// simple and structured replies: each failing request gets NBD_EIO, the rest of a failed
/// WRITE's payload is consumed (a request pipelined right behind it is answered), the same
/// connections then work, and so do a second export (a healthy file) and a new connection.
fn eio_fails_only_that_request(rt: Runtime) {
    let dir = tempdir();
    let fs = FaultFs::mount(8 << 20);
    let image = random_bytes(8 << 20, 3);
    fs.set_contents(&image);
    let (good, _) = random_file(dir.path(), "good.img", 2 << 20, 4);
    let bad_arg = format!("bad={}", fs.path().display());
    let good_arg = format!("good={}", good.display());
    let mut server = KvmioServer::start(rt, &["--export", &bad_arg, "--export", &good_arg]);
    let port = server.port();
    let mut simple = Conn::open(port, "bad", false);
    let mut sr = Conn::open(port, "bad", true);
    let mut g = Conn::open(port, "good", true);

    // READ: EIO in [1 MiB, 1 MiB + 4 KiB)
    fs.fail(Op::Read, MIB..MIB + 4096, Errno::IO);
    for c in [&mut simple, &mut sr] {
        let what = format!("{}: READ over the bad sector", c.what);
        expect_code(
            c.read(MIB - 512, 8192),
            NBD_EIO,
            "input/output error",
            &what,
        );
        let ok = expect_ok(c.read(0, 65536), "READ before the bad sector");
        assert_same_bytes(&ok, &image[..65536], "READ before the bad sector");
        let ok = expect_ok(c.read(MIB + 4096, 65536), "READ after the bad sector");
        assert_same_bytes(
            &ok,
            &image[MIB as usize + 4096..MIB as usize + 4096 + 65536],
            "READ after",
        );
    }
    check_healthy(&mut g, 1);

    // WRITE: EIO in the middle of a 1 MiB payload; a READ pipelined behind it is answered
    fs.fail(
        Op::Write,
        3 * MIB + 256 * 1024..3 * MIB + 260 * 1024,
        Errno::IO,
    );
    for (i, c) in [&mut simple, &mut sr].into_iter().enumerate() {
        let data = random_bytes(MIB as usize, 10 + i as u64);
        let w = c.send(
            CommandType::Write,
            CommandFlags::empty(),
            3 * MIB,
            MIB,
            &data,
        );
        let r = c.send(CommandType::Read, CommandFlags::empty(), 0, 4096, &[]);
        let what = format!("{}: WRITE over the bad sector", c.what);
        expect_code(c.reply(w, None), NBD_EIO, "input/output error", &what);
        let back = expect_ok(
            c.reply(r, Some((0, 4096))),
            "READ pipelined behind the failed WRITE",
        );
        assert_same_bytes(
            &back,
            &image[..4096],
            "READ pipelined behind the failed WRITE",
        );
        // the same connection writes elsewhere
        let data = random_bytes(65536, 20 + i as u64);
        let off = 5 * MIB + i as u64 * 65536;
        expect_ok(
            c.write(off, &data, CommandFlags::empty()),
            "WRITE after the failed one",
        );
        assert_same_bytes(
            &expect_ok(c.read(off, 65536), "read back"),
            &data,
            "read back",
        );
    }
    check_healthy(&mut g, 2);

    // fdatasync: EIO; FLUSH and a FUA WRITE fail, a plain WRITE works
    fs.fail(Op::Fsync, 0..0, Errno::IO);
    for c in [&mut simple, &mut sr] {
        let what = format!("{}: FLUSH with failing fdatasync", c.what);
        expect_code(c.flush(), NBD_EIO, "input/output error", &what);
        let what = format!("{}: FUA WRITE with failing fdatasync", c.what);
        expect_code(
            c.write(6 * MIB, &[1u8; 4096], CommandFlags::FUA),
            NBD_EIO,
            "input/output error",
            &what,
        );
        expect_ok(
            c.write(6 * MIB, &[2u8; 4096], CommandFlags::empty()),
            "plain WRITE",
        );
    }
    check_healthy(&mut g, 3);

    // a new connection during the faults, then everything heals
    let mut late = Conn::open(port, "bad", true);
    expect_code(
        late.read(MIB, 4096),
        NBD_EIO,
        "input/output error",
        "new connection: READ",
    );
    fs.heal();
    for c in [&mut simple, &mut sr, &mut late] {
        expect_ok(c.flush(), "FLUSH after healing");
        let back = expect_ok(c.read(MIB, 4096), "READ after healing");
        assert_same_bytes(
            &back,
            &image[MIB as usize..MIB as usize + 4096],
            "READ after healing",
        );
    }
    check_healthy(&mut g, 4);
    assert!(
        fs.stats().injected >= 9,
        "faults injected: {:?}",
        fs.stats()
    );
    drop((simple, sr, g, late));
    server.assert_healthy("good", 2 << 20, None);
    let log = server.log();
    assert!(
        log.contains("Input/output error"),
        "the server logs the errors:\n{log}"
    );
    drop(server);
}

// ------------------------------------------------------------------------------ errno table

/// Every errno a write can fail with in the kernel, one per 64 KiB range of a FUSE-backed
/// export, and the NBD error value kvmio answers with (the spec, qemu-nbd and nbdkit: EROFS
/// and EACCES are EPERM, EDQUOT and EFBIG are ENOSPC; EOVERFLOW and ENOTSUP only where the
/// spec allows them, else EINVAL; an errno with no NBD namesake is EIO).
const WRITE_ERRNOS: &[(Errno, u32, &str)] = &[
    (Errno::IO, NBD_EIO, "input/output error"),
    (Errno::PERM, NBD_EPERM, "not permitted"),
    (Errno::ACCESS, NBD_EPERM, "permission denied"),
    (Errno::ROFS, NBD_EPERM, "read-only file system"),
    (Errno::NOSPC, NBD_ENOSPC, "no space left"),
    (Errno::DQUOT, NBD_ENOSPC, "quota exceeded"),
    (Errno::FBIG, NBD_ENOSPC, "file too large"),
    (Errno::NOMEM, NBD_ENOMEM, "cannot allocate memory"),
    (Errno::INVAL, NBD_EINVAL, "invalid argument"),
    (Errno::OVERFLOW, NBD_EINVAL, "value too large"),
    (Errno::NOTSUP, NBD_EINVAL, "not supported"),
    (
        Errno::SHUTDOWN,
        NBD_ESHUTDOWN,
        "after transport endpoint shutdown",
    ),
    (Errno::NXIO, NBD_EIO, "no such device or address"),
    (Errno::STALE, NBD_EIO, "stale file handle"),
];

const SLOT: u64 = 65536;

fn errno_table(rt: Runtime) {
    let fs = FaultFs::mount(4 << 20);
    for (i, (e, _, _)) in WRITE_ERRNOS.iter().enumerate() {
        let at = i as u64 * SLOT;
        fs.fail(Op::Write, at..at + SLOT, *e);
    }
    // reads: EOVERFLOW is NBD_EOVERFLOW only for READs with DF
    let read_at = 2 * MIB;
    fs.fail(Op::Read, read_at..read_at + SLOT, Errno::OVERFLOW);
    fs.fail(Op::Read, read_at + SLOT..read_at + 2 * SLOT, Errno::NOMEM);
    let arg = format!("disk={}", fs.path().display());
    let server = KvmioServer::start(rt, &["--export", &arg]);
    for structured in [false, true] {
        let mut c = Conn::open(server.port(), "disk", structured);
        for (i, (e, code, text)) in WRITE_ERRNOS.iter().enumerate() {
            let at = i as u64 * SLOT;
            let what = format!("{}: WRITE failing with {e:?}", c.what);
            expect_code(
                c.write(at + 512, &[9u8; 4096], CommandFlags::empty()),
                *code,
                text,
                &what,
            );
            // WRITE_ZEROES falls back to writing zeroes (no fallocate here): the same errno
            let what = format!("{}: WRITE_ZEROES failing with {e:?}", c.what);
            let r = c.command(CommandType::WriteZeroes, CommandFlags::NO_HOLE, at, 4096);
            expect_code(r, *code, text, &what);
        }
        // FAST_ZERO where zeroing is slow: NBD_ENOTSUP, as the spec has it
        if c.flags.contains(TransmissionFlags::SEND_FAST_ZERO) {
            let r = c.command(
                CommandType::WriteZeroes,
                CommandFlags::FAST_ZERO,
                3 * MIB,
                4096,
            );
            expect_code(r, NBD_ENOTSUP, "", "WRITE_ZEROES with FAST_ZERO");
        }
        let what = format!("{}: READ failing with EOVERFLOW", c.what);
        expect_code(c.read(read_at, 4096), NBD_EINVAL, "value too large", &what);
        let what = format!("{}: READ failing with ENOMEM", c.what);
        expect_code(
            c.read(read_at + SLOT, 4096),
            NBD_ENOMEM,
            "cannot allocate memory",
            &what,
        );
        if structured {
            assert!(
                c.flags.contains(TransmissionFlags::SEND_DF),
                "DF with structured replies"
            );
            let r = c.read_flags(read_at, 4096, CommandFlags::DF);
            expect_code(
                r,
                NBD_EOVERFLOW,
                "value too large",
                "READ with DF failing with EOVERFLOW",
            );
        }
        // after all of that, the connection still reads and writes
        expect_ok(
            c.write(3 * MIB, &[5u8; 4096], CommandFlags::FUA),
            "WRITE after the errors",
        );
        let back = expect_ok(c.read(3 * MIB, 4096), "READ after the errors");
        assert_eq!(back, vec![5u8; 4096]);
    }
    drop(server);
}

/// libnbd (nbdsh) sees the errno of the mapped NBD error: EROFS → EPERM, EDQUOT and EFBIG →
/// ENOSPC, EIO → EIO, for pwrite, pread, flush and FUA writes; qemu-io says the same.
fn nbdsh_and_qemu_io_see_the_mapped_errors(rt: Runtime) {
    let fs = FaultFs::mount(4 << 20);
    fs.fail(Op::Write, 0..MIB, Errno::ROFS);
    fs.fail(Op::Write, MIB..2 * MIB, Errno::DQUOT);
    fs.fail(Op::Write, 2 * MIB..3 * MIB, Errno::FBIG);
    fs.fail(Op::Read, 3 * MIB..3 * MIB + 4096, Errno::IO);
    let arg = format!("disk={}", fs.path().display());
    let server = KvmioServer::start(rt, &["--export", &arg]);
    let t = server.target("disk");
    let script = format!(
        "import errno\n{}\n\
         def attempt(name, f):\n\
         \x20   try:\n\
         \x20       f()\n\
         \x20       print(name, 'ok')\n\
         \x20   except nbd.Error as e:\n\
         \x20       print(name, errno.errorcode.get(e.errno, e.errno))\n\
         attempt('write-erofs', lambda: h.pwrite(b'x' * 4096, 4096))\n\
         attempt('write-edquot', lambda: h.pwrite(b'x' * 4096, 1048576))\n\
         attempt('write-efbig', lambda: h.pwrite(b'x' * 4096, 2097152))\n\
         attempt('read-eio', lambda: h.pread(4096, 3145728))\n\
         attempt('read-ok', lambda: h.pread(4096, 0))\n\
         attempt('write-ok', lambda: h.pwrite(b'y' * 4096, 3145728 + 65536, nbd.CMD_FLAG_FUA))\n\
         attempt('flush-ok', lambda: h.flush())\n\
         h.shutdown()\n",
        t.nbdsh_connect()
    );
    let out = run(nbdsh().arg("-c").arg(&script)).expect_ok();
    let text = out.text();
    for line in [
        "write-erofs EPERM",
        "write-edquot ENOSPC",
        "write-efbig ENOSPC",
        "read-eio EIO",
        "read-ok ok",
        "write-ok ok",
        "flush-ok ok",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "nbdsh lacks {line:?}:\n{text}\n{}",
            out.stderr
        );
    }
    let out = run(&mut t.qemu_io(&[
        "write -P 0x41 1048576 4096",
        "read 3145728 4096",
        "read 0 4096",
    ]));
    let text = format!("{}{}", out.text(), out.stderr);
    assert!(
        text.contains("write failed: No space left on device"),
        "qemu-io:\n{text}"
    );
    assert!(
        text.contains("read failed: Input/output error"),
        "qemu-io:\n{text}"
    );
    assert!(
        text.contains("read 4096/4096 bytes at offset 0"),
        "qemu-io:\n{text}"
    );
    drop(server);
}

// ------------------------------------------------------------------------------ ENOSPC

/// A sparse 8 MiB export on a 2 MiB tmpfs: sequential WRITEs succeed until the file system is
/// full, then fail with NBD_ENOSPC (simple and structured replies, and qemu-io says "No space
/// left on device"); overwriting allocated blocks still works, and after a TRIM frees space,
/// the write that failed succeeds.
fn enospc_on_a_full_tmpfs(rt: Runtime) {
    let tmp = Tmpfs::mount(2 * MIB);
    let path = tmp.path().join("disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(8 * MIB))
        .expect("sparse file");
    let arg = format!("disk={}", path.display());
    let mut server = KvmioServer::start(rt, &["--export", &arg]);
    let mut c = Conn::open(server.port(), "disk", false);
    let mut s = Conn::open(server.port(), "disk", true);
    let block = 256 * 1024;
    let mut written = Vec::new();
    let mut failed_at = None;
    for i in 0..32u64 {
        let data = random_bytes(block as usize, 100 + i);
        match c.write(i * block, &data, CommandFlags::empty()) {
            Ok(()) => written.push(data),
            Err(f) => {
                assert_eq!(
                    f.code, NBD_ENOSPC,
                    "the write that hit the full file system: {f:?}"
                );
                failed_at = Some(i * block);
                break;
            }
        }
    }
    let failed_at = failed_at.expect("8 MiB of writes fit on a 2 MiB tmpfs");
    assert!(!written.is_empty(), "not one write fit on the tmpfs");
    // structured replies carry the OS message
    expect_code(
        s.write(failed_at, &[7u8; 65536], CommandFlags::empty()),
        NBD_ENOSPC,
        "no space left on device",
        "structured WRITE on the full tmpfs",
    );
    let out = run(&mut server
        .target("disk")
        .qemu_io(&[&format!("write -P 0x41 {failed_at} 65536")]));
    let text = format!("{}{}", out.text(), out.stderr);
    assert!(
        text.contains("write failed: No space left on device"),
        "qemu-io:\n{text}"
    );
    // what was written reads back; allocated blocks can be overwritten
    for (i, d) in written.iter().enumerate() {
        let back = expect_ok(c.read(i as u64 * block, block), "read back");
        assert_same_bytes(&back, d, "data written before the file system filled up");
    }
    let again = random_bytes(block as usize, 999);
    expect_ok(
        s.write(0, &again, CommandFlags::FUA),
        "overwrite an allocated block",
    );
    // free 1 MiB, then the failed write fits
    expect_ok(
        s.command(CommandType::Trim, CommandFlags::empty(), block, 4 * block),
        "TRIM",
    );
    let late = random_bytes(block as usize, 1000);
    expect_ok(
        c.write(failed_at, &late, CommandFlags::FUA),
        "the failed write, after the TRIM",
    );
    assert_same_bytes(
        &expect_ok(s.read(failed_at, block), "read"),
        &late,
        "after the TRIM",
    );
    drop((c, s));
    server.assert_healthy("disk", 8 * MIB, None);
}

// ------------------------------------------------------------------------------ EFBIG

/// The server's `RLIMIT_FSIZE` lowered to 4 MiB while it runs (prlimit on its pid; SIGXFSZ is
/// ignored by kvmio): WRITEs below the limit work, at or past it they fail with NBD_ENOSPC
/// (EFBIG), one straddling it fails after writing the part below; the server lives on.
fn efbig_past_rlimit_fsize_is_enospc(rt: Runtime) {
    let dir = tempdir();
    let path = dir.path().join("disk.img");
    std::fs::File::create(&path)
        .and_then(|f| f.set_len(8 * MIB))
        .expect("sparse file");
    let arg = format!("disk={}", path.display());
    let mut server = KvmioServer::start(rt, &["--export", &arg]);
    let limit = 4 * MIB;
    let pid = rustix::process::Pid::from_raw(server.proc.id() as i32).expect("pid");
    rustix::process::prlimit(
        Some(pid),
        rustix::process::Resource::Fsize,
        rustix::process::Rlimit {
            current: Some(limit),
            maximum: Some(limit),
        },
    )
    .expect("prlimit RLIMIT_FSIZE on the server");
    let mut c = Conn::open(server.port(), "disk", false);
    let mut s = Conn::open(server.port(), "disk", true);
    expect_ok(
        c.write(0, &[1u8; 65536], CommandFlags::FUA),
        "WRITE below the limit",
    );
    expect_code(
        c.write(limit, &[2u8; 4096], CommandFlags::empty()),
        NBD_ENOSPC,
        "",
        "WRITE at the limit",
    );
    expect_code(
        s.write(6 * MIB, &[3u8; 4096], CommandFlags::empty()),
        NBD_ENOSPC,
        "file too large",
        "WRITE past the limit",
    );
    let straddle = random_bytes(8192, 5);
    expect_code(
        s.write(limit - 4096, &straddle, CommandFlags::empty()),
        NBD_ENOSPC,
        "file too large",
        "WRITE straddling the limit",
    );
    let below = expect_ok(c.read(limit - 4096, 4096), "READ below the limit");
    assert_same_bytes(
        &below,
        &straddle[..4096],
        "the part of the straddling WRITE below the limit",
    );
    // reads past the limit are fine, and so is the connection
    assert_eq!(
        expect_ok(s.read(6 * MIB, 4096), "READ past the limit"),
        vec![0u8; 4096]
    );
    expect_ok(
        s.write(65536, &[4u8; 4096], CommandFlags::FUA),
        "WRITE below the limit again",
    );
    drop((c, s));
    server.assert_healthy("disk", 8 * MIB, None);
    let log = server.log();
    assert!(
        log.contains("File too large"),
        "the server logs EFBIG:\n{log}"
    );
}

// ------------------------------------------------------------------------------ truncation

/// The exported file is truncated from 8 MiB to 3 MiB + 512 while clients are connected:
/// READs within the new end return the data, READs past it (or straddling it) fail with
/// NBD_EIO alone, on simple and structured replies; the connections go on.
fn truncated_file_under_a_live_export(rt: Runtime) {
    let dir = tempdir();
    let (path, image) = random_file(dir.path(), "disk.img", 8 << 20, 7);
    let arg = format!("disk={}", path.display());
    let mut server = KvmioServer::start(rt, &["--export", &arg]);
    let mut c = Conn::open(server.port(), "disk", false);
    let mut s = Conn::open(server.port(), "disk", true);
    assert_same_bytes(
        &expect_ok(c.read(5 * MIB, 65536), "READ"),
        &image[5 << 20..(5 << 20) + 65536],
        "READ",
    );
    let end = 3 * MIB + 512;
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_len(end))
        .expect("truncate");
    for conn in [&mut c, &mut s] {
        let what = format!("{}: READ past the new end", conn.what);
        expect_code(conn.read(5 * MIB, 65536), NBD_EIO, "", &what);
        let what = format!("{}: READ straddling the new end", conn.what);
        expect_code(conn.read(end - 4096, 8192), NBD_EIO, "", &what);
        let within = expect_ok(conn.read(end - 4096, 4096), "READ within the new end");
        assert_same_bytes(
            &within,
            &image[end as usize - 4096..end as usize],
            "READ within",
        );
        let start = expect_ok(conn.read(0, 65536), "READ at the start");
        assert_same_bytes(&start, &image[..65536], "READ at the start");
    }
    // a new connection sees the same
    let mut late = Conn::open(server.port(), "disk", true);
    expect_code(
        late.read(7 * MIB, 4096),
        NBD_EIO,
        "",
        "new connection: READ past the new end",
    );
    assert_same_bytes(
        &expect_ok(late.read(MIB, 4096), "new connection: READ"),
        &image[1 << 20..(1 << 20) + 4096],
        "READ",
    );
    drop((c, s, late));
    server.assert_healthy("disk", 8 * MIB, None);
}

// ------------------------------------------------------------------------------ copy

/// Parses the ranges of "… bytes written to the destination and flushed, at [a, b), [c, d): …"
/// from `kvmio nbd copy`'s error; panics unless the message has that form.
fn reported_ranges(stderr: &str) -> Vec<(usize, usize)> {
    let key = "bytes written to the destination and flushed, at ";
    let at = stderr
        .find(key)
        .unwrap_or_else(|| panic!("kvmio nbd copy does not say what it wrote:\n{stderr}"))
        + key.len();
    let mut v = Vec::new();
    let mut rest = &stderr[at..];
    while let Some(r) = rest.strip_prefix('[') {
        let (range, tail) = r.split_once(')').expect("range");
        let (a, b) = range.split_once(", ").expect("range");
        v.push((a.parse().expect("start"), b.parse().expect("end")));
        rest = tail.strip_prefix(", ").unwrap_or(tail);
    }
    assert!(!v.is_empty(), "no ranges in:\n{stderr}");
    assert!(
        !rest.starts_with(" and"),
        "too many ranges to check:\n{stderr}"
    );
    v
}

/// Checks every reported range of `dst` against `src`; returns the bytes checked.
#[track_caller]
fn check_reported(stderr: &str, dst: &[u8], src: &[u8]) -> usize {
    let mut total = 0;
    for (a, b) in reported_ranges(stderr) {
        assert!(
            b <= dst.len() && a < b,
            "range [{a}, {b}) outside the destination:\n{stderr}"
        );
        assert_same_bytes(
            &dst[a..b],
            &src[a..b],
            &format!("reported range [{a}, {b})"),
        );
        total += b - a;
    }
    let claimed = format!("copy failed with {total} of {} bytes written", src.len());
    assert!(
        stderr.contains(&claimed),
        "the total is not the sum of the ranges ({claimed}):\n{stderr}"
    );
    total
}

/// `kvmio nbd copy nbd://… FILE` where FILE is on a 2 MiB tmpfs and the export is 8 MiB of
/// random data: non-zero exit, "No space left on device" naming the file, and every byte
/// range reported written holds the source's bytes. With one connection and with four.
fn copy_into_a_file_on_a_full_tmpfs(rt: Runtime) {
    let dir = tempdir();
    let (src, data) = random_file(dir.path(), "src.img", 8 << 20, 11);
    let arg = format!("src={}", src.display());
    let server = KvmioServer::start(rt, &["--export", &arg, "--read-only"]);
    for connections in ["1", "4"] {
        let tmp = Tmpfs::mount(2 * MIB);
        let out = tmp.path().join("out.img");
        let r = run(kvmio()
            .args([
                "nbd",
                "copy",
                "--no-progress",
                "--connections",
                connections,
                "--request-size",
                "256K",
            ])
            .arg(server.target("src").uri())
            .arg(&out))
        .expect_fail()
        .expect_stderr(&["no space left on device", &out.display().to_string()]);
        let n = check_reported(&r.stderr, &read(&out), &data);
        assert!(
            n > 0 && n < 8 << 20,
            "{n} bytes reported written:\n{}",
            r.stderr
        );
    }
    drop(server);
}

/// `kvmio nbd copy FILE nbd://…` and `kvmio nbd copy nbd://… nbd://…` into a kvmio export on a
/// 2 MiB tmpfs (8 MiB sparse file): the server answers NBD_ENOSPC, the copy fails saying so,
/// and every range it reports written (acknowledged, then flushed) is in the exported file.
fn copy_into_an_nbd_export_that_fills_up(rt: Runtime) {
    let dir = tempdir();
    let (src, data) = random_file(dir.path(), "src.img", 8 << 20, 13);
    let src_arg = format!("src={}", src.display());
    let source = KvmioServer::start(rt, &["--export", &src_arg, "--read-only"]);
    for from_nbd in [false, true] {
        let tmp = Tmpfs::mount(2 * MIB);
        let path = tmp.path().join("disk.img");
        std::fs::File::create(&path)
            .and_then(|f| f.set_len(8 * MIB))
            .expect("sparse file");
        let arg = format!("disk={}", path.display());
        let mut dest = KvmioServer::start(rt, &["--export", &arg]);
        let from = if from_nbd {
            source.target("src").uri()
        } else {
            src.display().to_string()
        };
        let r = run(&mut kvmio_copy(&from, dest.target("disk").uri()))
            .expect_fail()
            .expect_stderr(&["no space left on device", "ENOSPC"]);
        assert!(
            !r.stderr.contains("Broken pipe"),
            "the real error is hidden:\n{}",
            r.stderr
        );
        let n = check_reported(&r.stderr, &read(&path), &data);
        assert!(
            n > 0 && n < 8 << 20,
            "{n} bytes reported written:\n{}",
            r.stderr
        );
        dest.assert_healthy("disk", 8 * MIB, None);
    }
    drop(source);
}

/// nbdkit (eval plugin over a file) fails WRITEs from 3 MiB on with ENOSPC: `kvmio nbd copy
/// FILE nbd://…` fails naming ENOSPC, and every reported range is in nbdkit's file. (The
/// failing script still reads its stdin: exiting first makes nbdkit report EPIPE as EIO.)
#[test]
fn copy_into_nbdkit_that_fails_late_with_enospc() {
    let dir = tempdir();
    let (src, data) = random_file(dir.path(), "src.img", 8 << 20, 17);
    let backing = dir.path().join("backing.img");
    std::fs::File::create(&backing)
        .and_then(|f| f.set_len(8 * MIB))
        .expect("backing file");
    let b = backing.display();
    let (_nbdkit, port) = nbdkit(
        None,
        &[
            "eval",
            "get_size=echo 8388608",
            &format!("pread=dd if={b} iflag=skip_bytes,count_bytes skip=$4 count=$3 status=none"),
            &format!(
                "pwrite=if [ $4 -ge 3145728 ]; then cat >/dev/null; echo 'ENOSPC disk full' >&2; exit 1; fi; \
                 dd of={b} oflag=seek_bytes seek=$4 conv=notrunc status=none"
            ),
            &format!("flush=sync {b}"),
        ],
    );
    let r = run(kvmio()
        .args(["nbd", "copy", "--no-progress", "--request-size", "256K"])
        .arg(&src)
        .arg(format!("nbd://127.0.0.1:{port}/")))
    .expect_fail()
    .expect_stderr_any(&["ENOSPC", "no space left"]);
    let n = check_reported(&r.stderr, &read(&backing), &data);
    assert!(
        n > 0 && n <= 3 << 20,
        "{n} bytes reported written:\n{}",
        r.stderr
    );
}

mod threads {
    use super::*;
    #[test]
    fn eio_fails_only_that_request() {
        super::eio_fails_only_that_request(Runtime::Threads);
    }
    #[test]
    fn errno_table() {
        super::errno_table(Runtime::Threads);
    }
    #[test]
    fn nbdsh_and_qemu_io_see_the_mapped_errors() {
        super::nbdsh_and_qemu_io_see_the_mapped_errors(Runtime::Threads);
    }
    #[test]
    fn enospc_on_a_full_tmpfs() {
        super::enospc_on_a_full_tmpfs(Runtime::Threads);
    }
    #[test]
    fn efbig_past_rlimit_fsize_is_enospc() {
        super::efbig_past_rlimit_fsize_is_enospc(Runtime::Threads);
    }
    #[test]
    fn truncated_file_under_a_live_export() {
        super::truncated_file_under_a_live_export(Runtime::Threads);
    }
    #[test]
    fn copy_into_a_file_on_a_full_tmpfs() {
        super::copy_into_a_file_on_a_full_tmpfs(Runtime::Threads);
    }
    #[test]
    fn copy_into_an_nbd_export_that_fills_up() {
        super::copy_into_an_nbd_export_that_fills_up(Runtime::Threads);
    }
}

mod tokio {
    use super::*;
    #[test]
    fn eio_fails_only_that_request() {
        super::eio_fails_only_that_request(Runtime::Tokio);
    }
    #[test]
    fn errno_table() {
        super::errno_table(Runtime::Tokio);
    }
    #[test]
    fn nbdsh_and_qemu_io_see_the_mapped_errors() {
        super::nbdsh_and_qemu_io_see_the_mapped_errors(Runtime::Tokio);
    }
    #[test]
    fn enospc_on_a_full_tmpfs() {
        super::enospc_on_a_full_tmpfs(Runtime::Tokio);
    }
    #[test]
    fn efbig_past_rlimit_fsize_is_enospc() {
        super::efbig_past_rlimit_fsize_is_enospc(Runtime::Tokio);
    }
    #[test]
    fn truncated_file_under_a_live_export() {
        super::truncated_file_under_a_live_export(Runtime::Tokio);
    }
    #[test]
    fn copy_into_a_file_on_a_full_tmpfs() {
        super::copy_into_a_file_on_a_full_tmpfs(Runtime::Tokio);
    }
    #[test]
    fn copy_into_an_nbd_export_that_fills_up() {
        super::copy_into_an_nbd_export_that_fills_up(Runtime::Tokio);
    }
}

/// The harness itself: faults injected in the FUSE file system reach this process's own
/// syscalls with the chosen errno, and only an fsync makes written data durable.
#[test]
fn faultfs_faults_reach_the_syscalls_and_fsync_makes_data_durable() {
    use std::os::unix::fs::FileExt;
    let fs = FaultFs::mount(1 << 20);
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(fs.path())
        .expect("open");
    f.write_all_at(&[7u8; 4096], 8192).expect("write");
    assert_eq!(&fs.contents()[8192..8192 + 4096], &[7u8; 4096][..]);
    assert_eq!(
        &fs.durable()[8192..8192 + 4096],
        &[0u8; 4096][..],
        "durable before fsync"
    );
    f.sync_data().expect("fdatasync");
    assert_eq!(
        &fs.durable()[8192..8192 + 4096],
        &[7u8; 4096][..],
        "durable after fsync"
    );
    fs.fail(Op::Read, 4096..4097, Errno::IO);
    let mut buf = [0u8; 8192];
    let e = f
        .read_exact_at(&mut buf, 0)
        .expect_err("read over the fault");
    assert_eq!(e.raw_os_error(), Some(Errno::IO.raw_os_error()), "{e}");
    f.read_exact_at(&mut buf, 8192).expect("read elsewhere");
    fs.fail(Op::Write, 0..1 << 20, Errno::ROFS);
    let e = f.write_all_at(&buf, 0).expect_err("write over the fault");
    assert_eq!(e.raw_os_error(), Some(Errno::ROFS.raw_os_error()), "{e}");
    fs.fail(Op::Fsync, 0..0, Errno::NOSPC);
    let e = f.sync_data().expect_err("fsync with a fault");
    assert_eq!(e.raw_os_error(), Some(Errno::NOSPC.raw_os_error()), "{e}");
    fs.heal();
    f.write_all_at(&buf, 0).expect("write after healing");
    f.sync_data().expect("fsync after healing");
    assert_eq!(fs.stats().injected, 3, "{:?}", fs.stats());
}
