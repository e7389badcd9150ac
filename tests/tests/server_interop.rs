//! Our server (`kvmio nbd serve`, threads and tokio drivers) against third-party clients in
//! plaintext: qemu-img, qemu-io, nbdinfo, nbdcopy and nbdsh (libnbd's Python bindings), on RAM
//! disks, a sparse file, a read-only export and a Unix socket.

use kvmio_tests::raw::{self, Reply};
use kvmio_tests::*;
use nbd_core::wire::{CommandType, ErrorCode};
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// `qemu-img convert` of a random sparse image into a RAM disk, then `qemu-img compare`
/// against the source, then `qemu-img convert` back out: byte-identical both ways.
fn qemu_img_convert_into_server_then_compare_is_identical(rt: Runtime) {
    let dir = tempdir();
    let src = dir.path().join("src.img");
    let data = test_image(&src, 16 * MIB, 11);
    let server = KvmioServer::start(rt, &["--memory", "disk=16M"]);
    let t = server.target("disk");
    run(&mut t.qemu_img_convert_into(&src)).expect_ok();
    let cmp = run(&mut t.qemu_img_compare(&src)).expect_ok();
    assert!(
        cmp.text().contains("Images are identical"),
        "qemu-img compare: {}",
        cmp.text()
    );
    let back = dir.path().join("back.img");
    run(&mut t.qemu_img_convert_from(&back)).expect_ok();
    assert_same_bytes(&read(&back), &data, "qemu-img convert back out");
}

/// qemu-io writes patterns (aligned and unaligned), zeroes, discards and flushes; every read
/// verifies its pattern, and a final nbdcopy of the whole disk matches a model byte for byte
/// (except the discarded range, whose contents the spec leaves open).
fn qemu_io_patterns_zeroes_discard_flush_read_back(rt: Runtime) {
    let server = KvmioServer::start(rt, &["--memory", "disk=8M"]);
    let t = server.target("disk");
    let out = run(&mut t.qemu_io(&[
        "write -P 0x41 0 65536",
        "read -P 0x41 0 65536",
        "write -P 0x42 1048583 1000",
        "read -P 0x42 1048583 1000",
        "write -P 0x43 2097152 2097152",
        "write -z 2621440 524288",
        "read -P 0 2621440 524288",
        "read -P 0x43 2097152 524288",
        "read -P 0x43 3145728 1048576",
        "write -P 0x44 5242880 1048576",
        "discard 5242880 1048576",
        "flush",
        "write -P 0x45 8388096 512",
        "read -P 0x45 8388096 512",
    ]))
    .expect_ok();
    let text = out.text();
    assert!(
        !text.contains("Pattern verification failed"),
        "qemu-io: {text}"
    );
    for line in [
        "wrote 65536/65536 bytes at offset 0",
        "read 1000/1000 bytes at offset 1048583",
        "wrote 524288/524288 bytes at offset 2621440",
        "discard 1048576/1048576 bytes at offset 5242880",
        "read 512/512 bytes at offset 8388096",
    ] {
        assert!(
            text.contains(line),
            "qemu-io output lacks {line:?}:\n{text}"
        );
    }
    // model of the disk
    let mut model = vec![0u8; 8 << 20];
    model[..65536].fill(0x41);
    model[1048583..1048583 + 1000].fill(0x42);
    model[2097152..4194304].fill(0x43);
    model[2621440..2621440 + 524288].fill(0);
    model[8388096..].fill(0x45);
    let dir = tempdir();
    let out_file = dir.path().join("out.img");
    run(peer("nbdcopy").arg(t.uri()).arg(&out_file)).expect_ok();
    let mut got = read(&out_file);
    // the discarded range may read as the old data or zeroes: only ever those
    let discarded = &mut got[5242880..5242880 + 1048576];
    assert!(
        discarded.iter().all(|b| *b == 0 || *b == 0x44),
        "discarded range reads as something never written"
    );
    discarded.fill(0);
    assert_same_bytes(&got, &model, "disk after the qemu-io session");
}

/// nbdcopy uploads a random image into a RAM disk and downloads it again: byte-identical.
fn nbdcopy_upload_and_download_are_byte_identical(rt: Runtime) {
    let dir = tempdir();
    let src = dir.path().join("src.img");
    let data = test_image(&src, 12 * MIB, 21);
    let server = KvmioServer::start(rt, &["--memory", "disk=12M"]);
    let t = server.target("disk");
    run(peer("nbdcopy").arg(&src).arg(t.uri())).expect_ok();
    let dst = dir.path().join("dst.img");
    run(peer("nbdcopy").arg(t.uri()).arg(&dst)).expect_ok();
    assert_same_bytes(&read(&dst), &data, "nbdcopy round trip");
    // and through a pipe, single connection
    let out = run(peer("nbdcopy")
        .args(["--connections=1"])
        .arg(t.uri())
        .arg("-"))
    .expect_ok();
    assert_same_bytes(&out.stdout, &data, "nbdcopy to stdout");
}

mod threads {
    use super::*;
    #[test]
    fn qemu_img_convert_into_server_then_compare_is_identical() {
        super::qemu_img_convert_into_server_then_compare_is_identical(Runtime::Threads);
    }
    #[test]
    fn qemu_io_patterns_zeroes_discard_flush_read_back() {
        super::qemu_io_patterns_zeroes_discard_flush_read_back(Runtime::Threads);
    }
    #[test]
    fn nbdcopy_upload_and_download_are_byte_identical() {
        super::nbdcopy_upload_and_download_are_byte_identical(Runtime::Threads);
    }
}

mod tokio {
    use super::*;
    #[test]
    fn qemu_img_convert_into_server_then_compare_is_identical() {
        super::qemu_img_convert_into_server_then_compare_is_identical(Runtime::Tokio);
    }
    #[test]
    fn qemu_io_patterns_zeroes_discard_flush_read_back() {
        super::qemu_io_patterns_zeroes_discard_flush_read_back(Runtime::Tokio);
    }
    #[test]
    fn nbdcopy_upload_and_download_are_byte_identical() {
        super::nbdcopy_upload_and_download_are_byte_identical(Runtime::Tokio);
    }
}

fn field<'a>(text: &'a str, key: &str) -> &'a str {
    text.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("nbdinfo output lacks {key}:\n{text}"))
}

/// nbdinfo's plain output: the size, structured replies, base:allocation, and the flags of a
/// writable RAM disk (including can_multi_conn, which a RAM disk can promise).
#[test]
fn nbdinfo_shows_size_structured_replies_and_flags() {
    let server = KvmioServer::start(Runtime::Threads, &["--memory", "disk=5M"]);
    let out = run(peer("nbdinfo").arg(server.target("disk").uri())).expect_ok();
    let text = out.text();
    assert!(text.contains("export=\"disk\":"), "{text}");
    assert!(
        text.contains("protocol: newstyle-fixed without TLS, using structured packets"),
        "{text}"
    );
    assert!(text.contains("base:allocation"), "{text}");
    assert!(
        field(&text, "export-size").starts_with("5242880 "),
        "{text}"
    );
    for (k, v) in [
        ("is_read_only", "false"),
        ("can_multi_conn", "true"),
        ("can_flush", "true"),
        ("can_trim", "true"),
        ("can_zero", "true"),
        ("can_fua", "true"),
    ] {
        assert_eq!(field(&text, k), v, "{k} in:\n{text}");
    }
    let size = run(peer("nbdinfo")
        .arg("--size")
        .arg(server.target("disk").uri()))
    .expect_ok();
    assert_eq!(size.text().trim(), "5242880");
}

/// `nbdinfo --list` shows both exports with their sizes and descriptions.
#[test]
fn nbdinfo_list_shows_both_exports() {
    let server = KvmioServer::start(
        Runtime::Tokio,
        &["--memory", "alpha=1M", "--memory", "beta=3M"],
    );
    let out = run(peer("nbdinfo")
        .args(["--list", "--json"])
        .arg(format!("nbd://127.0.0.1:{}/", server.port())))
    .expect_ok();
    let v: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --list --json");
    let exports = v["exports"].as_array().expect("exports");
    let mut got: Vec<(String, u64)> = exports
        .iter()
        .map(|e| {
            (
                e["export-name"].as_str().expect("name").to_string(),
                e["export-size"].as_u64().expect("size"),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        vec![("alpha".to_string(), MIB), ("beta".to_string(), 3 * MIB)]
    );
    let text = run(peer("nbdinfo")
        .arg("--list")
        .arg(format!("nbd://127.0.0.1:{}/", server.port())))
    .expect_ok()
    .text();
    assert!(
        text.contains("export=\"alpha\":") && text.contains("export=\"beta\":"),
        "{text}"
    );
}

fn map(uri: &str) -> Vec<(u64, u64, u64)> {
    let out = run(peer("nbdinfo").args(["--map", "--json"]).arg(uri)).expect_ok();
    let v: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --map --json");
    v.as_array()
        .expect("array")
        .iter()
        .map(|e| {
            (
                e["offset"].as_u64().expect("offset"),
                e["length"].as_u64().expect("length"),
                e["type"].as_u64().expect("type"),
            )
        })
        .collect()
}

/// Checks a block status map: contiguous over `[0, size)`, every byte of `data` ranges in a
/// data extent (hole bit clear), every byte of `holes` ranges in a hole extent.
#[track_caller]
fn check_map(m: &[(u64, u64, u64)], size: u64, data: &[(u64, u64)], holes: &[(u64, u64)]) {
    let mut pos = 0;
    for &(off, len, _) in m {
        assert_eq!(off, pos, "extents not contiguous: {m:?}");
        assert!(len > 0, "empty extent: {m:?}");
        pos += len;
    }
    assert_eq!(pos, size, "extents do not cover the export: {m:?}");
    let kind_at = |x: u64| m.iter().find(|(o, l, _)| x >= *o && x < o + l).map(|e| e.2);
    for &(o, l) in data {
        for x in [o, o + l / 2, o + l - 1] {
            assert_eq!(
                kind_at(x).map(|t| t & 1),
                Some(0),
                "byte {x} should be data: {m:?}"
            );
        }
    }
    for &(o, l) in holes {
        for x in [o, o + l / 2, o + l - 1] {
            assert_eq!(
                kind_at(x).map(|t| t & 1),
                Some(1),
                "byte {x} should be a hole: {m:?}"
            );
        }
    }
}

/// `nbdinfo --map` (block status, base:allocation) of a RAM disk after writes at 1 MiB and
/// 9 MiB + 100: data exactly around the writes, holes everywhere else.
#[test]
fn nbdinfo_map_shows_written_data_and_holes() {
    let server = KvmioServer::start(Runtime::Threads, &["--memory", "disk=16M"]);
    let t = server.target("disk");
    let all_hole = map(&t.uri());
    check_map(&all_hole, 16 * MIB, &[], &[(0, 16 * MIB)]);
    run(&mut t.qemu_io(&["write -P 0x61 1048576 65536", "write -P 0x62 9437284 5000"])).expect_ok();
    let m = map(&t.uri());
    check_map(
        &m,
        16 * MIB,
        &[(MIB, 65536), (9437284, 5000)],
        &[(0, 512 * 1024), (2 * MIB, 6 * MIB), (10 * MIB, 6 * MIB)],
    );
    // zeroed again: write_zeroes may punch, so no data may remain reported outside writes
    run(&mut t.qemu_io(&["write -z 1048576 65536"])).expect_ok();
    let m = map(&t.uri());
    check_map(
        &m,
        16 * MIB,
        &[(9437284, 5000)],
        &[(0, 512 * 1024), (2 * MIB, 6 * MIB)],
    );
    let zero_at_1m = m
        .iter()
        .find(|(o, l, _)| MIB >= *o && MIB < o + l)
        .map(|e| e.2)
        .expect("extent at 1 MiB");
    assert_eq!(zero_at_1m & 2, 2, "zeroed range must read as zero: {m:?}");
}

/// `nbdinfo --json` of one export: the fields match what the server announces.
#[test]
fn nbdinfo_json_matches_export() {
    let server = KvmioServer::start(Runtime::Tokio, &["--memory", "disk=3M"]);
    let out = run(peer("nbdinfo")
        .arg("--json")
        .arg(server.target("disk").uri()))
    .expect_ok();
    let v: Value = serde_json::from_slice(&out.stdout).expect("nbdinfo --json");
    assert_eq!(v["protocol"], "newstyle-fixed");
    assert_eq!(v["TLS"], false);
    assert_eq!(v["structured"], true);
    let e = &v["exports"][0];
    assert_eq!(e["export-name"], "disk");
    assert_eq!(e["export-size"], 3 * MIB);
    assert_eq!(e["is_read_only"], false);
    assert_eq!(e["can_multi_conn"], true);
    assert_eq!(e["contexts"][0], "base:allocation");
    assert_eq!(e["block_size_minimum"], 1);
}

fn nbdsh_json(script: &str) -> Value {
    let out = run(nbdsh().arg("-c").arg(script)).expect_ok();
    let text = out.text();
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .unwrap_or_else(|| panic!("no JSON from nbdsh:\n{text}\n{}", out.stderr));
    serde_json::from_str(line).expect("nbdsh JSON")
}

/// libnbd's Python bindings (nbdsh): size, pwrite/pread of random bytes, every can_* flag,
/// structured replies, and block status extents that match the writes.
fn nbdsh_size_pread_pwrite_flags_and_block_status(t: &Target, size: u64) {
    let script = format!(
        "import json, random\n\
         {connect}\
         random.seed(5)\n\
         data = bytes(random.getrandbits(8) for _ in range(70000))\n\
         h.pwrite(data, 3 * 65536 + 17)\n\
         back = h.pread(len(data), 3 * 65536 + 17)\n\
         h.flush()\n\
         ext = []\n\
         def cb(ctx, off, entries, err):\n\
         \x20   ext.append([ctx, off, list(entries)])\n\
         \x20   return 0\n\
         h.block_status(h.get_size(), 0, cb)\n\
         print(json.dumps({{'size': h.get_size(), 'same': back == data, 'ro': h.is_read_only(),\n\
         \x20 'flush': h.can_flush(), 'trim': h.can_trim(), 'zero': h.can_zero(), 'fua': h.can_fua(),\n\
         \x20 'multi': h.can_multi_conn(), 'cache': h.can_cache(), 'df': h.can_df(),\n\
         \x20 'meta': h.can_meta_context('base:allocation'), 'sr': h.get_structured_replies_negotiated(),\n\
         \x20 'tls': h.get_tls_negotiated(), 'ext': ext}}))\n\
         h.shutdown()\n",
        connect = t.nbdsh_connect()
    );
    let v = nbdsh_json(&script);
    assert_eq!(v["size"], size);
    assert_eq!(v["same"], true, "pread after pwrite");
    for k in [
        "flush", "trim", "zero", "fua", "multi", "cache", "df", "meta", "sr",
    ] {
        assert_eq!(v[k], true, "{k}: {v}");
    }
    assert_eq!(v["ro"], false);
    assert_eq!(v["tls"], t.tls.is_some());
    // one callback for base:allocation covering the disk: data around the write only
    let ext = v["ext"].as_array().expect("ext");
    assert_eq!(ext.len(), 1, "{ext:?}");
    assert_eq!(ext[0][0], "base:allocation");
    assert_eq!(ext[0][1], 0);
    let entries: Vec<u64> = ext[0][2]
        .as_array()
        .expect("entries")
        .iter()
        .map(|x| x.as_u64().expect("u64"))
        .collect();
    let mut m = Vec::new();
    let mut off = 0;
    for pair in entries.chunks(2) {
        m.push((off, pair[0], pair[1]));
        off += pair[0];
    }
    check_map(
        &m,
        size,
        &[(3 * 65536 + 17, 70000)],
        &[(0, 65536), (8 * 65536, size - 8 * 65536)],
    );
}

#[test]
fn nbdsh_checks_size_pread_pwrite_flags_and_block_status() {
    let server = KvmioServer::start(Runtime::Threads, &["--memory", "disk=4M"]);
    nbdsh_size_pread_pwrite_flags_and_block_status(&server.target("disk"), 4 * MIB);
}

#[test]
fn nbdsh_checks_size_pread_pwrite_flags_and_block_status_tokio() {
    let server = KvmioServer::start(Runtime::Tokio, &["--memory", "disk=4M"]);
    nbdsh_size_pread_pwrite_flags_and_block_status(&server.target("disk"), 4 * MIB);
}

/// A file export of a sparse file: reads are byte-exact, block status reports the file's
/// holes, and writes through qemu-io land in the file at the right place.
#[test]
fn file_export_of_sparse_file_reads_maps_and_writes_through() {
    let dir = tempdir();
    let img = dir.path().join("sparse.img");
    let size = 32 * MIB;
    let mut data = sparse_image(
        &img,
        size,
        &[(4 * MIB, 300_000), (20 * MIB + 12345, 7000)],
        31,
    );
    assert!(
        allocated_bytes(&img) < 2 * MIB,
        "the test file is not sparse"
    );
    let spec = format!("disk={}", img.display());
    let server = KvmioServer::start(Runtime::Threads, &["--export", &spec]);
    let t = server.target("disk");
    let out = dir.path().join("out.img");
    run(peer("nbdcopy").arg(t.uri()).arg(&out)).expect_ok();
    assert_same_bytes(&read(&out), &data, "nbdcopy of the file export");
    check_map(
        &map(&t.uri()),
        size,
        &[(4 * MIB, 300_000), (20 * MIB + 12345, 7000)],
        &[(0, 2 * MIB), (8 * MIB, 8 * MIB), (24 * MIB, 8 * MIB)],
    );
    run(&mut t.qemu_io(&["write -P 0x5a 10485763 4097", "flush"])).expect_ok();
    data[10485763..10485763 + 4097].fill(0x5a);
    assert_same_bytes(&read(&img), &data, "the exported file after a write");
}

/// `--read-only`: qemu-io cannot open it for writing (permission error), a read-only open
/// reads but refuses writes, nbdinfo shows is_read_only, and raw WRITE, WRITE_ZEROES and
/// TRIM requests get EPERM from the server itself.
#[test]
fn read_only_export_refuses_writes() {
    let server = KvmioServer::start(Runtime::Threads, &["--memory", "disk=1M", "--read-only"]);
    let t = server.target("disk");
    run(&mut t.qemu_io(&["write -P 0x41 0 512"]))
        .expect_fail()
        .expect_stderr_any(&["Permission denied", "read-only", "read only"]);
    run(&mut t.qemu_io_ro(&["read -P 0 0 4096"])).expect_ok();
    run(&mut t.qemu_io_ro(&["write -P 0x41 0 512"]))
        .expect_fail()
        .expect_stderr_any(&["read-only", "read only", "Permission denied"]);
    let info = run(peer("nbdinfo").arg(t.uri())).expect_ok().text();
    assert_eq!(field(&info, "is_read_only"), "true", "{info}");

    let mut c = raw::connect(server.port());
    c.handshake().unwrap();
    let (_, flags) = c.go_ok("disk");
    assert!(
        flags & 2 != 0,
        "READ_ONLY transmission flag missing: {flags:#x}"
    );
    assert_eq!(
        c.simple_write(1, 0, &[0x41; 512]).unwrap(),
        u32::from(ErrorCode::Perm),
        "WRITE"
    );
    for (cookie, cmd) in [(2, CommandType::WriteZeroes), (3, CommandType::Trim)] {
        c.request(cmd, cookie, 0, 4096, &[]).unwrap();
        match c.any_reply().unwrap() {
            Reply::Simple(r) => {
                assert_eq!(r.cookie, cookie);
                assert_eq!(r.error, u32::from(ErrorCode::Perm), "{cmd:?}");
            }
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(
        c.simple_read(4, 0, 512).unwrap().unwrap(),
        vec![0u8; 512],
        "read still works"
    );
}

/// `--unix PATH`: nbdinfo, nbdcopy and kvmio with nbd+unix URIs, qemu-io with a unix
/// server address.
#[test]
fn unix_socket_serves_nbd_unix_uris() {
    let dir = tempdir();
    let sock = dir.path().join("nbd.sock");
    let sock_s = sock.display().to_string();
    let server = KvmioServer::start(Runtime::Tokio, &["--unix", &sock_s, "--memory", "disk=2M"]);
    assert!(server.port.is_none());
    let t = Target::unix(&sock, "disk");
    let size = run(peer("nbdinfo").arg("--size").arg(t.uri())).expect_ok();
    assert_eq!(size.text().trim(), "2097152");
    run(&mut t.qemu_io(&["write -P 0x77 4096 4096", "read -P 0x77 4096 4096"])).expect_ok();
    let out = run(peer("nbdcopy").arg(t.uri()).arg("-")).expect_ok();
    let mut model = vec![0u8; 2 << 20];
    model[4096..8192].fill(0x77);
    assert_same_bytes(&out.stdout, &model, "nbdcopy over the unix socket");
    let info = run(kvmio().args(["nbd", "info"]).arg(t.uri()))
        .expect_ok()
        .text();
    assert!(info.contains("export-size: 2097152"), "{info}");
    let got = run(kvmio().args(["nbd", "copy"]).arg(t.uri()).arg("-")).expect_ok();
    assert_same_bytes(&got.stdout, &model, "kvmio nbd copy over the unix socket");
    drop(server);
}

/// One server listening on TCP and on a Unix socket at once: both serve the same RAM disk
/// (a write over one is read back over the other).
#[test]
fn tcp_and_unix_listeners_serve_the_same_export() {
    let dir = tempdir();
    let sock = dir.path().join("both.sock");
    let sock_s = sock.display().to_string();
    let server = KvmioServer::start(
        Runtime::Threads,
        &[
            "--listen",
            "127.0.0.1:0",
            "--unix",
            &sock_s,
            "--memory",
            "disk=1M",
        ],
    );
    let tcp = server.target("disk");
    let unix = Target::unix(&sock, "disk");
    run(&mut tcp.qemu_io(&["write -P 0x3c 512 1024"])).expect_ok();
    run(&mut unix.qemu_io(&["read -P 0x3c 512 1024", "write -P 0x3d 8192 512"])).expect_ok();
    run(&mut tcp.qemu_io(&["read -P 0x3d 8192 512"])).expect_ok();
}
