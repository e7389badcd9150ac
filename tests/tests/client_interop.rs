//! Our client (`kvmio nbd info/list/copy`) against third-party servers in plaintext: qemu-nbd
//! (structured replies, `base:allocation`, sparse-aware copies), nbdkit `memory` and `file`,
//! and nbdkit error injection (server-side errors must make the copy fail: CVE-2022-0485).

use kvmio_tests::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

/// qemu-nbd serves a 64 MiB sparse image (read-only, so it allows multi-conn): `kvmio nbd
/// info` sees structured/extended replies and base:allocation, `kvmio nbd list` sees the
/// export, and `kvmio nbd copy` to a file is byte-identical and sparse (it used block
/// status: the copy allocates about what the source holds, far less than its size).
#[test]
fn kvmio_copy_from_qemu_nbd_is_identical_and_sparse_aware() {
    let dir = tempdir();
    let img = dir.path().join("src.img");
    let ranges = [
        (0, 4096),
        (5 * MIB + 77, 200_000),
        (33 * MIB, 1 << 20),
        (64 * MIB - 4096, 4096),
    ];
    let data = sparse_image(&img, 64 * MIB, &ranges, 41);
    let (_qemu, port) = qemu_nbd(&img, None, &["-r".into()]);
    let uri = format!("nbd://127.0.0.1:{port}/disk");

    let info = run(kvmio().args(["nbd", "info", "--json", &uri])).expect_ok();
    let v: Value = serde_json::from_slice(&info.stdout).expect("kvmio nbd info --json");
    assert_eq!(v["export-size"], 64 * MIB, "{v}");
    assert_eq!(v["is_read_only"], true, "{v}");
    assert_eq!(v["TLS"], false, "{v}");
    assert!(
        v["contexts"]
            .as_array()
            .is_some_and(|c| c.iter().any(|x| x == "base:allocation")),
        "no base:allocation: {v}"
    );
    let proto = v["protocol"].as_str().unwrap_or_default();
    assert!(
        proto.contains("structured") || proto.contains("extended"),
        "qemu-nbd offers structured and extended replies; kvmio used {proto:?}"
    );
    let list = run(kvmio().args(["nbd", "list", &format!("nbd://127.0.0.1:{port}/")])).expect_ok();
    assert_eq!(
        list.text().lines().next().map(|l| l.split('\t').next()),
        Some(Some("disk"))
    );

    let out = dir.path().join("out.img");
    run(&mut kvmio_copy(&uri, &out)).expect_ok();
    assert_same_bytes(&read(&out), &data, "kvmio nbd copy from qemu-nbd");
    let held: u64 = ranges.iter().map(|r| r.1 as u64).sum();
    let allocated = allocated_bytes(&out);
    assert!(
        allocated <= held + 4 * MIB && allocated < 64 * MIB / 8,
        "the copy is not sparse: {allocated} bytes allocated for {held} bytes of data"
    );
    // and to stdout
    let piped = run(&mut kvmio_copy(&uri, "-")).expect_ok();
    assert_same_bytes(
        &piped.stdout,
        &data,
        "kvmio nbd copy from qemu-nbd to stdout",
    );
}

/// A writable qemu-nbd export: `kvmio nbd copy FILE nbd://…` writes it, and qemu-img compare
/// finds the export identical to the file.
#[test]
fn kvmio_copy_into_qemu_nbd_then_qemu_img_compare_is_identical() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    sparse_image(&img, 16 * MIB, &[], 0);
    let src = dir.path().join("src.img");
    test_image(&src, 16 * MIB, 43);
    let (_qemu, port) = qemu_nbd(&img, None, &[]);
    let uri = format!("nbd://127.0.0.1:{port}/disk");
    run(&mut kvmio_copy(&src, &uri)).expect_ok();
    let cmp = run(&mut Target::tcp(port, "disk").qemu_img_compare(&src)).expect_ok();
    assert!(
        cmp.text().contains("Images are identical"),
        "{}",
        cmp.text()
    );
}

/// nbdkit `memory 64M`: `kvmio nbd copy FILE nbd://…` uploads an image, nbdcopy reads it back
/// byte-identical.
#[test]
fn kvmio_copy_into_nbdkit_memory_reads_back_with_nbdcopy() {
    let dir = tempdir();
    let src = dir.path().join("src.img");
    let data = test_image(&src, 64 * MIB, 47);
    let (_nbdkit, port) = nbdkit(None, &["memory", "64M"]);
    let uri = format!("nbd://127.0.0.1:{port}/");
    run(&mut kvmio_copy(&src, &uri)).expect_ok();
    let back = dir.path().join("back.img");
    run(peer("nbdcopy").arg(&uri).arg(&back)).expect_ok();
    assert_same_bytes(&read(&back), &data, "nbdcopy of what kvmio wrote to nbdkit");
    let info = run(kvmio().args(["nbd", "info", &uri])).expect_ok().text();
    assert!(info.contains("export-size: 67108864"), "{info}");
}

/// nbdkit `file`: `kvmio nbd copy` reads the file byte-identical, then writes another image
/// into it, and the file on disk is that image.
#[test]
fn kvmio_copy_from_and_to_nbdkit_file() {
    let dir = tempdir();
    let img = dir.path().join("served.img");
    let data = test_image(&img, 8 * MIB, 53);
    let spec = format!("file={}", img.display());
    let (_nbdkit, port) = nbdkit(None, &["file", &spec]);
    let uri = format!("nbd://127.0.0.1:{port}/");
    let out = dir.path().join("out.img");
    run(&mut kvmio_copy(&uri, &out)).expect_ok();
    assert_same_bytes(&read(&out), &data, "kvmio nbd copy from nbdkit file");
    let other = dir.path().join("other.img");
    let other_data = test_image(&other, 8 * MIB, 59);
    run(&mut kvmio_copy(&other, &uri)).expect_ok();
    assert_same_bytes(
        &read(&img),
        &other_data,
        "file under nbdkit after kvmio nbd copy",
    );
}

/// Every read fails on the server (nbdkit error filter, EIO): `kvmio nbd copy` to a file and
/// to stdout exits non-zero and says why. (A fresh nbdkit for each copy: nbdkit 1.32.5 can
/// abort with "raw_send_socket: Assertion `sock >= 0' failed" when a client hangs up while
/// it is still sending error replies.)
#[test]
fn kvmio_copy_fails_clearly_when_every_server_read_fails() {
    let dir = tempdir();
    let out = dir.path().join("out.img");
    for dst in [out.display().to_string(), "-".to_string()] {
        let (_nbdkit, port) = nbdkit(
            None,
            &[
                "--filter=error",
                "pattern",
                "size=16M",
                "error-pread=EIO",
                "error-pread-rate=100%",
            ],
        );
        let uri = format!("nbd://127.0.0.1:{port}/");
        let result = run(&mut kvmio_copy(&uri, &dst))
            .expect_fail()
            .expect_stderr_any(&["EIO", "input/output error"]);
        assert!(
            result.stdout.len() < 16 << 20,
            "kvmio wrote the whole size to stdout despite the errors"
        );
    }
}

/// Reads fail only past 9 MiB (nbdkit eval plugin: the first part copies fine): the copy
/// still exits non-zero with the server's error, i.e. a late error chunk is not lost
/// (CVE-2022-0485: nbdcopy once ignored read errors and wrote zeroes).
#[test]
fn kvmio_copy_fails_clearly_when_a_late_server_read_fails() {
    let (_nbdkit, port) = nbdkit(
        None,
        &[
            "eval",
            "get_size=echo 16777216",
            "pread=if [ $4 -ge 9437184 ]; then echo 'EIO injected bad sector' >&2; exit 1; fi; \
         head -c $3 /dev/zero",
            "can_write=exit 3",
        ],
    );
    let uri = format!("nbd://127.0.0.1:{port}/");
    let dir = tempdir();
    let out = dir.path().join("out.img");
    run(&mut kvmio_copy(&uri, &out))
        .expect_fail()
        .expect_stderr_any(&["EIO", "input/output error"]);
}

/// Writes fail on the server (nbdkit error filter, ENOSPC): uploading with `kvmio nbd copy`
/// exits non-zero and says why.
#[test]
fn kvmio_copy_fails_clearly_when_server_writes_fail() {
    let (_nbdkit, port) = nbdkit(
        None,
        &[
            "--filter=error",
            "memory",
            "16M",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=100%",
            "error-zero=ENOSPC",
            "error-zero-rate=100%",
            "error-trim=ENOSPC",
            "error-trim-rate=100%",
        ],
    );
    let dir = tempdir();
    let src = dir.path().join("src.img");
    test_image(&src, 16 * MIB, 61);
    run(&mut kvmio_copy(&src, format!("nbd://127.0.0.1:{port}/")))
        .expect_fail()
        .expect_stderr_any(&["ENOSPC", "no space"]);
}

/// NBD to NBD: `kvmio nbd copy` from qemu-nbd straight into nbdkit, one connection each and
/// small requests, then both ends hold the same bytes.
#[test]
fn kvmio_copy_from_qemu_nbd_into_nbdkit_is_identical() {
    let dir = tempdir();
    let img = dir.path().join("src.img");
    let data = test_image(&img, 8 * MIB, 67);
    let (_qemu, qport) = qemu_nbd(&img, None, &["-r".into()]);
    let (_nbdkit, kport) = nbdkit(None, &["memory", "8M"]);
    run(kvmio().args([
        "nbd",
        "copy",
        "--no-progress",
        "--connections",
        "1",
        "--request-size",
        "64K",
        &format!("nbd://127.0.0.1:{qport}/disk"),
        &format!("nbd://127.0.0.1:{kport}/"),
    ]))
    .expect_ok();
    let back = run(peer("nbdcopy")
        .arg(format!("nbd://127.0.0.1:{kport}/"))
        .arg("-"))
    .expect_ok();
    assert_same_bytes(
        &back.stdout,
        &data,
        "nbdkit after kvmio copied qemu-nbd into it",
    );
}

/// nbdkit with `--filter=blocksize-policy` (minimum 4 KiB, maximum 64 KiB, violations are
/// errors): `kvmio nbd info` shows the limits and `kvmio nbd copy` (1 MiB requests by default)
/// stays within them both ways.
#[test]
fn kvmio_copy_honours_server_block_size_limits() {
    let (_nbdkit, port) = nbdkit(
        None,
        &[
            "--filter=blocksize-policy",
            "memory",
            "3M",
            "blocksize-minimum=4096",
            "blocksize-preferred=65536",
            "blocksize-maximum=65536",
            "blocksize-error-policy=error",
        ],
    );
    let uri = format!("nbd://127.0.0.1:{port}/");
    let info = run(kvmio().args(["nbd", "info", "--json", &uri])).expect_ok();
    let v: Value = serde_json::from_slice(&info.stdout).expect("json");
    assert_eq!(v["block_size_minimum"], 4096, "{v}");
    assert_eq!(v["block_size_maximum"], 65536, "{v}");
    let dir = tempdir();
    let src = dir.path().join("src.img");
    let data = test_image(&src, 3 * MIB, 71);
    run(&mut kvmio_copy(&src, &uri)).expect_ok();
    let back = run(&mut kvmio_copy(&uri, "-")).expect_ok();
    assert_same_bytes(
        &back.stdout,
        &data,
        "round trip through 64 KiB-limited nbdkit",
    );
}

/// NBD to NBD, the destination refuses: a read-only destination export, or one whose writes
/// fail with ENOSPC. `kvmio nbd copy` must fail naming the destination's problem, not blame
/// the source with the broken pipe between its reader and writer halves.
#[test]
fn kvmio_copy_nbd_to_nbd_reports_the_destination_error() {
    let (_ro, roport) = nbdkit(None, &["-r", "memory", "4M"]);
    let (_full, fullport) = nbdkit(
        None,
        &[
            "--filter=error",
            "memory",
            "4M",
            "error-pwrite=ENOSPC",
            "error-pwrite-rate=100%",
        ],
    );
    for (dst, why) in [
        (format!("nbd://127.0.0.1:{roport}/"), &["read-only"][..]),
        (
            format!("nbd://127.0.0.1:{fullport}/"),
            &["ENOSPC", "no space"][..],
        ),
    ] {
        // a fresh source each time (see kvmio_copy_fails_clearly_when_every_server_read_fails)
        let (_src, sport) = nbdkit(None, &["pattern", "4M"]);
        let src = format!("nbd://127.0.0.1:{sport}/");
        let out = run(&mut kvmio_copy(&src, &dst))
            .expect_fail()
            .expect_stderr_any(why);
        assert!(
            !out.stderr.contains("Broken pipe"),
            "the real error is hidden behind a broken pipe: {}",
            out.stderr
        );
    }
}

/// nbd-server 3.24 (the reference server, no structured replies): `kvmio nbd info` falls back
/// to simple replies, `kvmio nbd list` sees the export, and copies out and in are
/// byte-identical over simple replies.
#[test]
fn kvmio_client_with_simple_replies_against_nbd_server() {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    let data = test_image(&img, 4 * MIB, 73);
    let server = nbd_server(&img, None);
    let uri = format!("nbd://127.0.0.1:{}/disk", server.port);
    let info = run(kvmio().args(["nbd", "info", &uri])).expect_ok().text();
    assert!(info.contains("using simple replies"), "{info}");
    assert!(info.contains("export-size: 4194304"), "{info}");
    let list = run(kvmio().args(["nbd", "list", &format!("nbd://127.0.0.1:{}/", server.port)]))
        .expect_ok()
        .text();
    assert_eq!(list.lines().collect::<Vec<_>>(), ["disk"]);
    let out = run(&mut kvmio_copy(&uri, "-")).expect_ok();
    assert_same_bytes(&out.stdout, &data, "kvmio nbd copy from nbd-server");
    let src = dir.path().join("src.img");
    let new = test_image(&src, 4 * MIB, 79);
    run(&mut kvmio_copy(&src, &uri)).expect_ok();
    drop(server);
    assert_same_bytes(
        &read(&img),
        &new,
        "image under nbd-server after kvmio nbd copy",
    );
}
