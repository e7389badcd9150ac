//! The crates' examples run as users would run them, against real peers: nbd-core's
//! `ram_server` (a blocking NBD server on the core alone) with nbdinfo, qemu-io and nbdcopy
//! (which opens several connections because the export advertises multi-conn); nbd-core's
//! `nbd_client` copying from qemu-nbd and nbdkit; std-shim's `nbd_own_backend` (an own
//! `Backend` on std-shim's services) on both runtimes with nbdinfo and qemu-io.
//! tests/run.sh builds them (`cargo build --release -p nbd-core -p std-shim --examples`).

use std::path::PathBuf;

use kvmio_tests::*;

/// An example binary next to the kvmio binary (`target/release/examples/NAME`).
fn example(name: &str) -> PathBuf {
    let p = kvmio_bin()
        .parent()
        .expect("target dir")
        .join("examples")
        .join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build --release -p nbd-core -p std-shim --examples`",
        p.display()
    );
    p
}

/// Starts an example that takes its port as the first argument, on a free port.
fn start(name: &str, args: &[&str]) -> (Proc, u16) {
    let port = free_port();
    let mut cmd = std::process::Command::new(example(name));
    cmd.arg(port.to_string()).args(args);
    let mut proc = Proc::spawn(name, cmd);
    wait_port(port, &mut proc);
    (proc, port)
}

#[test]
fn nbd_core_ram_server_serves_nbdinfo_qemu_io_and_nbdcopy() {
    let (mut server, port) = start("ram_server", &["8"]);
    let uri = format!("nbd://127.0.0.1:{port}/ram");

    let info = run(peer("nbdinfo").arg(&uri)).expect_ok().text();
    assert!(info.contains("export-size: 8388608"), "nbdinfo: {info}");
    assert!(info.contains("can_multi_conn: true"), "nbdinfo: {info}");

    let io = run(peer("qemu-io").args([
        "-f",
        "raw",
        &uri,
        "-c",
        "write -P 0x5a 4096 1M",
        "-c",
        "write -z 2M 64k",
        "-c",
        "flush",
        "-c",
        "read -P 0x5a 4096 1M",
        "-c",
        "read -P 0 2M 64k",
    ]))
    .expect_ok()
    .text();
    assert!(!io.contains("Pattern verification failed"), "qemu-io: {io}");

    let dir = tempdir();
    let out = dir.path().join("copy.img");
    run(peer("nbdcopy").arg(&uri).arg(&out)).expect_ok();
    let mut want = vec![0u8; 8 << 20];
    want[4096..4096 + (1 << 20)].fill(0x5a);
    assert_same_bytes(&read(&out), &want, "nbdcopy of the RAM export");

    server.assert_alive();
    let log = server.stdout();
    assert!(!log.contains("connection failed"), "ram_server: {log}");
}

#[test]
fn nbd_core_client_copies_from_qemu_nbd_and_nbdkit() {
    let dir = tempdir();
    let image = dir.path().join("disk.img");
    let data = random_bytes(3 << 20, 7);
    std::fs::write(&image, &data).unwrap();

    // qemu-nbd: fixed newstyle, structured replies (extended headers where it has them).
    let port = free_port();
    let mut cmd = peer("qemu-nbd");
    cmd.args([
        "-r",
        "-t",
        "-f",
        "raw",
        "-x",
        "disk",
        "-b",
        "127.0.0.1",
        "-p",
    ])
    .arg(port.to_string())
    .arg(&image);
    let mut qemu = Proc::spawn("qemu-nbd", cmd);
    wait_port(port, &mut qemu);
    let out = dir.path().join("from-qemu.img");
    let said = run(std::process::Command::new(example("nbd_client"))
        .arg(format!("127.0.0.1:{port}"))
        .arg("disk")
        .arg(&out))
    .expect_ok()
    .text();
    assert!(said.contains("copied 3145728 bytes"), "nbd_client: {said}");
    assert_same_bytes(&read(&out), &data, "nbd_client's copy from qemu-nbd");

    // An export the server does not have: the client says why and fails.
    let bad = run(std::process::Command::new(example("nbd_client"))
        .arg(format!("127.0.0.1:{port}"))
        .arg("nope")
        .arg(dir.path().join("nope.img")));
    assert!(
        !bad.ok(),
        "nbd_client succeeded on an unknown export: {}",
        bad.text()
    );
    assert!(
        bad.stderr.contains("NBD_REP_ERR_UNKNOWN"),
        "nbd_client: {}",
        bad.stderr
    );
    qemu.assert_alive();

    // nbdkit's file plugin: sparse reads come back as holes where it can.
    let port = free_port();
    let mut cmd = peer("nbdkit");
    cmd.args(["-f", "-r", "-i", "127.0.0.1", "-p"])
        .arg(port.to_string())
        .arg("file")
        .arg(&image);
    let mut kit = Proc::spawn("nbdkit", cmd);
    wait_port(port, &mut kit);
    let out = dir.path().join("from-nbdkit.img");
    run(std::process::Command::new(example("nbd_client"))
        .arg(format!("127.0.0.1:{port}"))
        .arg("")
        .arg(&out))
    .expect_ok();
    assert_same_bytes(&read(&out), &data, "nbd_client's copy from nbdkit");
}

#[test]
fn std_shim_own_backend_serves_nbdinfo_and_qemu_io_on_both_runtimes() {
    for runtime in ["tokio", "threads"] {
        let (mut server, port) = start("nbd_own_backend", &[runtime]);
        let uri = format!("nbd://127.0.0.1:{port}/blocks");
        let info = run(peer("nbdinfo").arg(&uri)).expect_ok().text();
        assert!(
            info.contains("export-size: 67108864"),
            "{runtime}: nbdinfo: {info}"
        );
        // Only read and write: the default features, so no FLUSH, TRIM or zeroing offered.
        for flag in ["can_flush: false", "can_trim: false", "can_zero: false"] {
            assert!(info.contains(flag), "{runtime}: nbdinfo: {info}");
        }

        // Block numbers underneath; a write spanning two blocks lands in the overlay, the rest
        // of both blocks keeps its numbers.
        let io = run(peer("qemu-io").args([
            "-f",
            "raw",
            &uri,
            "-c",
            "read -P 5 20480 4096",
            "-c",
            "read -P 255 1044480 4096",
            "-c",
            "write -P 0xab 8000 300",
            "-c",
            "read -P 1 4096 3904",
            "-c",
            "read -P 0xab 8000 300",
            "-c",
            "read -P 2 8300 3988",
            "-c",
            "read -P 3 12288 4096",
        ]))
        .expect_ok()
        .text();
        assert!(
            !io.contains("Pattern verification failed"),
            "{runtime}: qemu-io: {io}"
        );
        assert_eq!(io.matches("read ").count(), 6, "{runtime}: qemu-io: {io}");
        server.assert_alive();
        let log = server.stdout();
        assert!(log.contains(&format!("({runtime})")), "{runtime}: {log}");
    }
}
