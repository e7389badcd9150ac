//! The crates' examples run as users would run them, against real peers: nbd-core's
//! `ram_server` (a blocking NBD server on the core alone) with nbdinfo, qemu-io and nbdcopy
//! (which opens several connections because the export advertises multi-conn); nbd-core's
//! `nbd_client` copying from qemu-nbd and nbdkit; std-shim's `nbd_own_backend` (an own
//! `Backend` on std-shim's services) on both runtimes with nbdinfo and qemu-io; rfb-core's
//! `vnc_server` (a blocking VNC server on the core alone) with gvnccapture and a wrong
//! password; tls-glue's `nbd_tls_server` and `vnc_tls_server` (each core over a `Link`) with
//! nbdinfo, nbdcopy and qemu-io over NBD STARTTLS, gvnccapture over VeNCrypt X509None and
//! X509Vnc, client certificates verified, and nothing served in the clear.
//! tests/run.sh builds them (`cargo build --release -p nbd-core -p rfb-core -p tls-glue -p
//! std-shim --examples`).

use std::path::PathBuf;

use kvmio_tests::vnc::{GvncPki, Raw, Rgb, assert_same_image, gvnccapture, read_png};
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
        "{} is missing: build it with `cargo build --release -p nbd-core -p rfb-core -p tls-glue -p std-shim --examples`",
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

/// The picture rfb-core's `vnc_server` and tls-glue's `vnc_tls_server` serve (320×200).
fn example_picture() -> Rgb {
    let (w, h) = (320usize, 200usize);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        for x in 0..w {
            let b = if (x / 16 + y / 16) % 2 == 0 { 0 } else { 255 };
            data.extend_from_slice(&[(x * 255 / (w - 1)) as u8, (y * 255 / (h - 1)) as u8, b]);
        }
    }
    Rgb {
        width: w,
        height: h,
        data,
    }
}

/// A VncAuth login with a wrong response on a raw socket: the bytes the server sent after the
/// challenge, up to its close.
fn wrong_vnc_login(port: u16) -> Vec<u8> {
    let mut raw = Raw::connect(port);
    let types = raw.hello();
    assert_eq!(types, [2], "offered security types");
    raw.send(&[2]).unwrap();
    let _challenge = raw.read(16);
    raw.send(&[0x55; 16]).unwrap();
    raw.read_to_close()
}

#[test]
fn rfb_core_vnc_server_serves_gvnccapture_and_refuses_a_wrong_password() {
    let (mut server, port) = start("vnc_server", &["secret"]);
    let dir = tempdir();
    let shot = dir.path().join("shot.png");
    let o = gvnccapture(port, &shot, Some("secret"));
    assert!(o.ok(), "gvnccapture: {}\n{}", o.text(), o.stderr);
    assert_same_image(
        &read_png(&shot),
        &example_picture(),
        "gvnccapture of vnc_server",
    );

    // A wrong password: gvnccapture fails; on the wire the failure carries its reason (RFB
    // 3.8) and comes after the throttling delay, then the server closes.
    let bad = gvnccapture(port, &dir.path().join("bad.png"), Some("wrong"));
    assert!(!bad.ok(), "gvnccapture logged in with a wrong password");
    let sent = wrong_vnc_login(port);
    assert_eq!(
        sent, b"\0\0\0\x01\0\0\0\x15Authentication failed",
        "after a wrong response"
    );
    server.assert_alive();
    let log = server.stdout();
    assert_eq!(
        log.matches("wrong password").count(),
        2,
        "vnc_server: {log}"
    );
    assert!(!log.contains("connection failed"), "vnc_server: {log}");
}

#[test]
fn tls_glue_nbd_server_serves_nbds_to_libnbd_and_qemu_and_refuses_plaintext() {
    let dir = tempdir();
    let p = pki(&dir.path().join("pki"));
    let pkidir = p.dir.display().to_string();
    let want: Vec<u8> = (0..4u64 << 20).map(|o| (o % 251) as u8).collect();
    for verify in [false, true] {
        let args: &[&str] = if verify {
            &[&pkidir, "verify"]
        } else {
            &[&pkidir]
        };
        let (mut server, port) = start("nbd_tls_server", args);
        let uri = format!("nbds://127.0.0.1:{port}/disk?tls-certificates={pkidir}");
        let info = run(peer("nbdinfo").arg(&uri)).expect_ok().text();
        for needle in ["with TLS", "export-size: 4194304", "is_read_only: true"] {
            assert!(info.contains(needle), "verify {verify}: nbdinfo: {info}");
        }
        let out = dir.path().join("copy.img");
        run(peer("nbdcopy").arg(&uri).arg(&out)).expect_ok();
        assert_same_bytes(&read(&out), &want, "nbdcopy over TLS");

        let opts = format!("driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0");
        let io = run(peer("qemu-io").args([
            "-r",
            "--object",
            &format!("tls-creds-x509,id=tls0,endpoint=client,dir={pkidir}"),
            "--image-opts",
            &opts,
            "-c",
            "read -P 0 0 1",
            "-c",
            "read -P 250 250 1",
            "-c",
            "read -P 3 1007 1",
            "-c",
            "read 0 1M",
        ]))
        .expect_ok()
        .text();
        assert!(!io.contains("Pattern verification failed"), "qemu-io: {io}");
        assert_eq!(io.matches("read ").count(), 4, "qemu-io: {io}");

        // Plaintext: FORCEDTLS answers nothing but STARTTLS, so the export stays unknown.
        let plain = run(peer("nbdinfo").arg(format!("nbd://127.0.0.1:{port}/disk")));
        assert!(!plain.ok(), "plaintext NBD was served: {}", plain.text());
        let list = run(peer("nbdinfo")
            .arg("--list")
            .arg(format!("nbd://127.0.0.1:{port}")));
        assert!(
            !list.text().contains("disk"),
            "exports listed in the clear: {}",
            list.text()
        );

        if verify {
            // Without a client certificate the handshake is refused.
            let ca_only = dir.path().join("ca-only");
            std::fs::create_dir_all(&ca_only).unwrap();
            std::fs::copy(p.dir.join("ca-cert.pem"), ca_only.join("ca-cert.pem")).unwrap();
            let anon = format!(
                "nbds://127.0.0.1:{port}/disk?tls-certificates={}",
                ca_only.display()
            );
            let o = run(peer("nbdinfo").arg(&anon));
            assert!(!o.ok(), "served without a client certificate: {}", o.text());
        }
        server.assert_alive();
        let log = server.stdout();
        assert!(log.contains("TLS established"), "nbd_tls_server: {log}");
    }
}

#[test]
fn tls_glue_vnc_server_serves_gvnccapture_over_vencrypt_x509() {
    let dir = tempdir();
    let p = pki(&dir.path().join("pki"));
    let pkidir = p.dir.display().to_string();
    let _certs = GvncPki::install(&p.dir, true);
    // (arguments, password typed)
    let cases: [(&[&str], Option<&str>); 3] = [
        (&[&pkidir], None),
        (&[&pkidir, "secret"], Some("secret")),
        (&[&pkidir, "verify"], None),
    ];
    for (args, password) in cases {
        let (mut server, port) = start("vnc_tls_server", args);
        let shot = dir.path().join("shot.png");
        let o = gvnccapture(port, &shot, password);
        assert!(o.ok(), "{args:?}: gvnccapture: {}\n{}", o.text(), o.stderr);
        assert_same_image(&read_png(&shot), &example_picture(), "gvnccapture over TLS");
        // Only VeNCrypt is offered: nothing in the clear.
        let mut raw = Raw::connect(port);
        assert_eq!(raw.hello(), [19], "{args:?}: offered security types");
        drop(raw);
        if password.is_some() {
            let bad = gvnccapture(port, &dir.path().join("bad.png"), Some("wrong"));
            assert!(!bad.ok(), "gvnccapture logged in with a wrong password");
            // gvnccapture gave up after the server's failure reason and close
            assert!(
                server.stdout().contains("wrong password"),
                "{}",
                server.stdout()
            );
        }
        server.assert_alive();
        let log = server.stdout();
        assert!(
            log.contains("TLS established"),
            "{args:?}: vnc_tls_server: {log}"
        );
    }
}
