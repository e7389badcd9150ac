//! Durability: after `kill -9` of `kvmio nbd serve` (release binary, both runtimes), every
//! WRITE acknowledged with FUA, and every WRITE acknowledged before a FLUSH that was then
//! acknowledged, is in the exported file.
//!
//! Two connections (the export offers `CAN_MULTI_CONN`, so a FLUSH on one covers writes
//! acknowledged on the other) pipeline hundreds of WRITEs of random lengths to random,
//! distinct places, a quarter of them with FUA, with a FLUSH every 20 requests; then WRITEs
//! without FUA and a last FLUSH; and WRITEs with FUA and no FLUSH, in either order (the later
//! of the two is made durable by nothing else: its FLUSH, or its FUA); then more WRITEs that
//! are acknowledged but never flushed; then more that are sent and not waited for; then the
//! server is killed with SIGKILL. What must be durable follows the spec exactly: a
//! FLUSH covers the WRITEs whose acknowledgement arrived before it was sent, on either
//! connection.
//!
//! The export is either
//! * a file on the test machine's disk: after SIGKILL the page cache still has every completed
//!   `pwrite`, so *every* acknowledged WRITE must be there (an acknowledgement never precedes
//!   its write); or
//! * a file on the fault-injecting FUSE file system ([`kvmio_tests::faultfs`]), which keeps
//!   apart what was written and what an fsync made durable (what a crash of the machine would
//!   leave): there the FUA and flushed WRITEs must be in the durable image, i.e. kvmio called
//!   `fdatasync` before acknowledging them.
//!
//! Either way, unacknowledged WRITEs leave each byte old or new, and no byte outside the
//! WRITEs changes.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Barrier, Mutex};

use kvmio_tests::faultfs::FaultFs;
use kvmio_tests::raw::{self, Reply};
use kvmio_tests::*;
use nbd_core::wire::{CommandFlags, CommandType, TransmissionFlags};

const MIB: u64 = 1 << 20;
/// Export size.
const DISK: u64 = 64 * MIB;
/// Each WRITE lies inside its own slot: no two overlap, so each can be checked alone.
const SLOT: u64 = 64 * 1024;
const CONNECTIONS: usize = 2;
/// Requests in flight per connection.
const DEPTH: usize = 16;
/// WRITEs per connection with FUA now and then and FLUSHes in between.
const MIXED_PHASE: usize = 300;
/// Then WRITEs without FUA, FLUSHes in between and at the end.
const FLUSHED_PHASE: usize = 60;
/// Then WRITEs with FUA, no FLUSH.
const FUA_PHASE: usize = 30;
/// Then WRITEs acknowledged but neither FUA nor flushed.
const UNFLUSHED_PHASE: usize = 40;
/// Then WRITEs sent and not waited for.
const IN_FLIGHT_PHASE: usize = 16;
/// A FLUSH after this many WRITEs.
const FLUSH_EVERY: usize = 20;

#[derive(Debug, Clone)]
struct Write {
    off: u64,
    data: Vec<u8>,
    fua: bool,
}

/// The phases, in order.
const MIXED: usize = 0;
const FLUSHED: usize = 1;
const FUA_ONLY: usize = 2;
const UNFLUSHED: usize = 3;
const IN_FLIGHT: usize = 4;

/// The plan: per connection, its phases' WRITEs, at random offsets in distinct slots.
fn plan(seed: u64) -> Vec<[Vec<Write>; 5]> {
    let mut rng = fastrand::Rng::with_seed(seed);
    let mut slots: Vec<u64> = (0..DISK / SLOT).collect();
    rng.shuffle(&mut slots);
    let mut slots = slots.into_iter();
    let mut write = |fua: bool| {
        let slot = slots.next().expect("enough slots");
        let lead = rng.u64(0..1024);
        let len = rng.usize(1..=(SLOT - lead) as usize);
        let mut data = vec![0u8; len];
        rng.fill(&mut data);
        // no zero bytes: a byte that reads as zero was not written
        for b in &mut data {
            *b |= 1;
        }
        Write {
            off: slot * SLOT + lead,
            data,
            fua,
        }
    };
    (0..CONNECTIONS)
        .map(|_| {
            let mixed = (0..MIXED_PHASE).map(|i| write(i % 4 == 1)).collect();
            let flushed = (0..FLUSHED_PHASE).map(|_| write(false)).collect();
            let fua = (0..FUA_PHASE).map(|_| write(true)).collect();
            let unflushed = (0..UNFLUSHED_PHASE).map(|_| write(false)).collect();
            let in_flight = (0..IN_FLIGHT_PHASE).map(|_| write(false)).collect();
            [mixed, flushed, fua, unflushed, in_flight]
        })
        .collect()
}

/// What the connections learnt, shared: the order WRITEs were acknowledged in, and how much of
/// that order a completed FLUSH covers.
#[derive(Default)]
struct Log {
    /// (connection, phase, index) of each acknowledged WRITE, in order of arrival.
    acked: Vec<(usize, usize, usize)>,
    /// `acked[..flushed]` is covered by a FLUSH that completed.
    flushed: usize,
    flushes: usize,
}

enum Pending {
    Write(usize, usize, usize),
    /// A FLUSH sent when `acked` had this length.
    Flush(usize),
}

/// One client connection of the test.
struct Connection<'a> {
    c: raw::Nbd<std::net::TcpStream>,
    index: usize,
    cookie: u64,
    log: &'a Mutex<Log>,
}

impl Connection<'_> {
    /// Sends a FLUSH covering what is acknowledged so far.
    fn send_flush(&mut self, pending: &mut HashMap<u64, Pending>) {
        self.cookie += 1;
        let covered = self.log.lock().unwrap().acked.len();
        self.c
            .send(&raw::request_bytes(
                CommandType::Flush,
                CommandFlags::empty(),
                self.cookie,
                0,
                0,
            ))
            .expect("send FLUSH");
        pending.insert(self.cookie, Pending::Flush(covered));
    }

    /// Runs phase `ph`: its WRITEs pipelined `DEPTH` deep (with a FLUSH every `FLUSH_EVERY`
    /// and one after the last reply when `flush`), every reply awaited unless `wait` is false.
    fn phase(&mut self, ph: usize, writes: &[Write], flush: bool, wait: bool) {
        let mut pending: HashMap<u64, Pending> = HashMap::new();
        let mut next = 0;
        let mut since_flush = 0;
        let mut final_flush = flush;
        while next < writes.len() || (wait && !pending.is_empty()) || final_flush {
            if next == writes.len() && pending.is_empty() && final_flush {
                self.send_flush(&mut pending);
                final_flush = false;
            }
            while (pending.len() < DEPTH || !wait) && next < writes.len() {
                if flush && since_flush == FLUSH_EVERY {
                    self.send_flush(&mut pending);
                    since_flush = 0;
                    continue;
                }
                self.cookie += 1;
                let w = &writes[next];
                let flags = if w.fua {
                    CommandFlags::FUA
                } else {
                    CommandFlags::empty()
                };
                let mut b = raw::request_bytes(
                    CommandType::Write,
                    flags,
                    self.cookie,
                    w.off,
                    w.data.len() as u32,
                );
                b.extend_from_slice(&w.data);
                self.c.send(&b).expect("send WRITE");
                pending.insert(self.cookie, Pending::Write(self.index, ph, next));
                next += 1;
                since_flush += 1;
            }
            if !wait {
                break;
            }
            let r = match self.c.any_reply().expect("reply") {
                Reply::Simple(r) => r,
                other => panic!("structured reply {other:?} on a simple connection"),
            };
            let p = pending
                .remove(&r.cookie)
                .unwrap_or_else(|| panic!("reply for unknown cookie {}", r.cookie));
            assert_eq!(r.error, 0, "request {} failed", r.cookie);
            let mut l = self.log.lock().unwrap();
            match p {
                Pending::Write(a, b, i) => l.acked.push((a, b, i)),
                Pending::Flush(covered) => {
                    l.flushed = l.flushed.max(covered);
                    l.flushes += 1;
                }
            }
        }
    }
}

/// Where the export lives.
enum Backing {
    Disk { _dir: TempDir, path: PathBuf },
    Fuse(FaultFs),
}

/// Which of the FLUSH-only and the FUA-only phases comes last (its WRITEs are made durable by
/// nothing else).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Last {
    Flush,
    Fua,
}

fn durability(rt: Runtime, fuse: bool, last: Last, seed: u64) {
    let backing = if fuse {
        Backing::Fuse(FaultFs::mount(DISK as usize))
    } else {
        let dir = tempdir();
        let p = dir.path().join("disk.img");
        std::fs::File::create(&p)
            .and_then(|f| f.set_len(DISK))
            .expect("create the image");
        Backing::Disk { _dir: dir, path: p }
    };
    let path = match &backing {
        Backing::Disk { path, .. } => path.clone(),
        Backing::Fuse(fs) => fs.path().to_path_buf(),
    };
    let arg = format!("disk={}", path.display());
    let mut server = KvmioServer::start(rt, &["--export", &arg]);
    let plan = plan(seed);
    let log = Mutex::new(Log::default());
    let barrier = Barrier::new(CONNECTIONS);
    // the connections stay open (with WRITEs in flight) until the server is killed
    let conns: Vec<_> = std::thread::scope(|s| {
        let handles: Vec<_> = plan
            .iter()
            .enumerate()
            .map(|(i, phases)| {
                let (log, barrier, port) = (&log, &barrier, server.port());
                s.spawn(move || {
                    let mut c = raw::connect(port);
                    c.handshake().expect("handshake");
                    let (size, flags) = c.go_ok("disk");
                    assert_eq!(size, DISK);
                    let flags = TransmissionFlags::from_bits_retain(flags);
                    for f in [
                        TransmissionFlags::SEND_FLUSH,
                        TransmissionFlags::SEND_FUA,
                        TransmissionFlags::CAN_MULTI_CONN,
                    ] {
                        assert!(flags.contains(f), "the file export lacks {f:?}: {flags:?}");
                    }
                    let mut c = Connection {
                        c,
                        index: i,
                        cookie: 0,
                        log,
                    };
                    c.phase(MIXED, &phases[MIXED], true, true);
                    barrier.wait();
                    let order = match last {
                        Last::Flush => [FUA_ONLY, FLUSHED],
                        Last::Fua => [FLUSHED, FUA_ONLY],
                    };
                    for ph in order {
                        c.phase(ph, &phases[ph], ph == FLUSHED, true);
                        barrier.wait();
                    }
                    c.phase(UNFLUSHED, &phases[UNFLUSHED], false, true);
                    barrier.wait();
                    c.phase(IN_FLIGHT, &phases[IN_FLIGHT], false, false);
                    c.c
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("connection thread"))
            .collect()
    });
    server.proc.assert_alive();
    // kill -9
    server.proc.stop();
    assert!(
        server
            .proc
            .exit_status()
            .is_some_and(|s| s.code().is_none()),
        "the server was not killed by a signal"
    );
    drop(conns);

    let log = log.into_inner().unwrap();
    let (durable, current) = match &backing {
        Backing::Disk { path, .. } => {
            let d = read(path);
            (d.clone(), d)
        }
        Backing::Fuse(fs) => (fs.durable(), fs.contents()),
    };
    assert_eq!(durable.len() as u64, DISK, "the file changed size");
    assert_eq!(current.len() as u64, DISK, "the file changed size");
    let write = |(c, p, i): (usize, usize, usize)| &plan[c][p][i];
    let region =
        |img: &[u8], w: &Write| img[w.off as usize..w.off as usize + w.data.len()].to_vec();

    // FUA, or acknowledged before a completed FLUSH: durable
    let mut fua = 0;
    let mut flushed = 0;
    let mut flushed_only = 0;
    for (k, &id) in log.acked.iter().enumerate() {
        let w = write(id);
        let why = if w.fua {
            fua += 1;
            "acknowledged with FUA"
        } else if k < log.flushed {
            flushed += 1;
            if id.1 == FLUSHED {
                flushed_only += 1;
            }
            "acknowledged before a completed FLUSH"
        } else {
            continue;
        };
        assert_same_bytes(
            &region(&durable, w),
            &w.data,
            &format!(
                "WRITE {id:?} of {} bytes at {} ({why}) after kill -9",
                w.data.len(),
                w.off
            ),
        );
    }
    // every acknowledged WRITE was done before its acknowledgement
    for &id in &log.acked {
        let w = write(id);
        assert_same_bytes(
            &region(&current, w),
            &w.data,
            &format!("acknowledged WRITE {id:?} at {} after kill -9", w.off),
        );
    }
    if !fuse {
        // on a real file system the page cache outlives the process: the same image
        assert_eq!(durable, current);
    }
    // unacknowledged WRITEs: each byte old or new; nothing outside the WRITEs changed
    let mut expect_zero = vec![true; DISK as usize];
    for (c, phases) in plan.iter().enumerate() {
        for (p, writes) in phases.iter().enumerate() {
            for (i, w) in writes.iter().enumerate() {
                let at = w.off as usize;
                expect_zero[at..at + w.data.len()].fill(false);
                if p == IN_FLIGHT {
                    for img in [&durable, &current] {
                        let got = &img[at..at + w.data.len()];
                        if let Some(j) =
                            got.iter().zip(&w.data).position(|(g, d)| *g != 0 && g != d)
                        {
                            panic!(
                                "in-flight WRITE {:?} at {}: byte {j} is neither old nor new",
                                (c, p, i),
                                w.off
                            );
                        }
                    }
                }
            }
        }
    }
    for img in [&durable, &current] {
        if let Some(at) = img
            .iter()
            .zip(&expect_zero)
            .position(|(b, z)| *z && *b != 0)
        {
            panic!("byte {at} changed though no WRITE covers it");
        }
    }
    // the run tested what it claims to
    let unflushed = log.acked.len() - fua - flushed;
    assert_eq!(
        log.acked.len(),
        CONNECTIONS * (MIXED_PHASE + FLUSHED_PHASE + FUA_PHASE + UNFLUSHED_PHASE),
        "acknowledged WRITEs"
    );
    // no FLUSH after the FUA phase: only FUA makes those durable
    assert_eq!(
        fua,
        CONNECTIONS * (MIXED_PHASE / 4 + FUA_PHASE),
        "FUA WRITEs checked"
    );
    assert!(
        flushed >= CONNECTIONS * MIXED_PHASE / 2,
        "{flushed} flushed WRITEs checked"
    );
    // no FUA after these: only a FLUSH makes them durable
    assert_eq!(
        flushed_only,
        CONNECTIONS * FLUSHED_PHASE,
        "WRITEs covered by FLUSH alone"
    );
    assert!(
        log.flushes >= CONNECTIONS * (MIXED_PHASE + FLUSHED_PHASE) / FLUSH_EVERY,
        "{} FLUSHes",
        log.flushes
    );
    assert!(
        unflushed >= CONNECTIONS * UNFLUSHED_PHASE,
        "{unflushed} unflushed WRITEs"
    );
    if let Backing::Fuse(fs) = &backing {
        assert!(fs.stats().fsyncs > 0, "{:?}", fs.stats());
    }
    drop(server);
    drop(backing);
}

mod threads {
    use super::*;
    #[test]
    fn fua_and_flushed_writes_survive_kill_9_on_disk() {
        durability(Runtime::Threads, false, Last::Flush, 1);
    }
    #[test]
    fn flush_is_fdatasync_before_its_ack() {
        durability(Runtime::Threads, true, Last::Flush, 2);
    }
    #[test]
    fn fua_is_fdatasync_before_its_ack() {
        durability(Runtime::Threads, true, Last::Fua, 3);
    }
}

mod tokio {
    use super::*;
    #[test]
    fn fua_and_flushed_writes_survive_kill_9_on_disk() {
        durability(Runtime::Tokio, false, Last::Fua, 4);
    }
    #[test]
    fn flush_is_fdatasync_before_its_ack() {
        durability(Runtime::Tokio, true, Last::Flush, 5);
    }
    #[test]
    fn fua_is_fdatasync_before_its_ack() {
        durability(Runtime::Tokio, true, Last::Fua, 6);
    }
}
