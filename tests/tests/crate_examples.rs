//! The crates' examples run as users would run them, against real peers: nbd-core's
//! `ram_server` (a blocking NBD server on the core alone) with nbdinfo, qemu-io and nbdcopy
//! (which opens several connections because the export advertises multi-conn).
//! tests/run.sh builds them (`cargo build --release -p nbd-core --examples`).

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
        "{} is missing: build it with `cargo build --release -p nbd-core --examples`",
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
