//! An image on a web server as an NBD export (`kvmio nbd serve --export iso=http://…`, the
//! same range-request source the gadget's virtual media use): nbdcopy and qemu-img read it byte
//! for byte from nginx through kvmio, nbdinfo says read-only, writes are refused, a server
//! without the file or without range support is refused at start, and when nginx dies the
//! client gets read errors, not a hang.

use std::os::unix::fs::PermissionsExt;

use kvmio_tests::web::nginx;
use kvmio_tests::{KvmioServer, Runtime, free_port, peer, run, tempdir};

#[test]
fn an_http_image_is_an_nbd_export() {
    let work = tempdir();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let www = work.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).unwrap();
    let mut rng = fastrand::Rng::with_seed(5);
    // a whole number of sectors: QEMU rounds an export's size down to one
    let data: Vec<u8> = (0..(3 << 20) + 3 * 4096).map(|_| rng.u8(..)).collect();
    let img = www.join("disk.img");
    std::fs::write(&img, &data).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    let port = free_port();
    let mut web = nginx(work.path(), &www, port);
    let url = format!("http://127.0.0.1:{port}/disk.img");

    for rt in [Runtime::Threads, Runtime::Tokio] {
        let s = KvmioServer::start(rt, &["--export", &format!("iso={url}")]);
        let t = s.target("iso");
        let out = work.path().join(format!("copy-{rt:?}.img"));
        run(peer("nbdcopy").arg(t.uri()).arg(&out)).expect_ok();
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{rt:?}: nbdcopy of the HTTP export differs"
        );
        let info = run(peer("nbdinfo").arg(t.uri())).expect_ok().text();
        assert!(info.contains("is_read_only: true"), "{info}");
        assert!(
            info.contains(&format!("export-size: {}", data.len())),
            "{info}"
        );
        // qemu-img converts it too
        let conv = work.path().join(format!("conv-{rt:?}.raw"));
        run(peer("qemu-img")
            .args(["convert", "-f", "raw", "-O", "raw"])
            .arg(t.uri())
            .arg(&conv))
        .expect_ok();
        assert!(
            std::fs::read(&conv).unwrap() == data,
            "{rt:?}: qemu-img convert differs"
        );
        // writes are refused
        run(peer("qemu-io")
            .args(["-f", "raw", "-c", "write 0 4096"])
            .arg(t.uri()))
        .expect_fail();
    }

    // a missing file (404) and a URL that is not http are clear errors at start
    serve_export(&format!("x=http://127.0.0.1:{port}/missing.img"), &[])
        .expect_fail()
        .expect_stderr(&["export x", "404"]);

    // nginx dies: reads fail (an NBD error, not a hang) and the server stays up
    let mut s = KvmioServer::start(Runtime::Threads, &["--export", &format!("iso={url}")]);
    web.stop();
    let out = work.path().join("dead.img");
    run(peer("nbdcopy").arg(s.target("iso").uri()).arg(&out)).expect_fail();
    s.proc.assert_alive();
}

/// `kvmio nbd serve --export EXPORT EXTRA…`, for the cases that must fail at start.
fn serve_export(export: &str, extra: &[&str]) -> kvmio_tests::Out {
    let mut cmd = kvmio_tests::kvmio();
    cmd.args([
        "nbd",
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--export",
        export,
    ])
    .args(extra);
    run(&mut cmd)
}

/// The image of the tests below: random bytes, a whole number of sectors.
fn image(dir: &std::path::Path, seed: u64) -> (std::path::PathBuf, Vec<u8>) {
    let mut rng = fastrand::Rng::with_seed(seed);
    let data: Vec<u8> = (0..(2 << 20) + 5 * 4096).map(|_| rng.u8(..)).collect();
    let img = dir.join("disk.img");
    std::fs::write(&img, &data).unwrap();
    std::fs::set_permissions(&img, std::fs::Permissions::from_mode(0o644)).unwrap();
    (img, data)
}

/// `https://`: nginx with a certificate from a test CA; kvmio verifies it with
/// `--remote-tls-creds` (the CA) and exports the image byte for byte; a CA that did not sign
/// the server's certificate is refused at start (no fallback to plain HTTP).
#[test]
fn an_https_image_is_an_nbd_export() {
    let work = tempdir();
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    let www = work.path().join("www");
    std::fs::create_dir(&www).unwrap();
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).unwrap();
    let (_, data) = image(&www, 11);
    let pki = kvmio_tests::pki(&work.path().join("pki"));
    let port = free_port();
    let _web = kvmio_tests::web::nginx_tls(work.path(), &www, port, &pki.dir);
    let url = format!("https://127.0.0.1:{port}/disk.img");
    let ca = pki.dir.display().to_string();

    for rt in [Runtime::Threads, Runtime::Tokio] {
        let s = KvmioServer::start(
            rt,
            &["--export", &format!("iso={url}"), "--remote-tls-creds", &ca],
        );
        let out = work.path().join(format!("copy-{rt:?}.img"));
        run(peer("nbdcopy").arg(s.target("iso").uri()).arg(&out)).expect_ok();
        assert!(
            std::fs::read(&out).unwrap() == data,
            "{rt:?}: nbdcopy of the HTTPS export differs"
        );
        let info = run(peer("nbdinfo").arg(s.target("iso").uri()))
            .expect_ok()
            .text();
        assert!(info.contains("is_read_only: true"), "{info}");
    }

    // another CA: the certificate does not verify, and kvmio says so at start
    let other = kvmio_tests::pki(&work.path().join("other"));
    let other_ca = other.dir.display().to_string();
    serve_export(&format!("iso={url}"), &["--remote-tls-creds", &other_ca])
        .expect_fail()
        .expect_stderr(&["export iso", "TLS"]);
    // the same server asked for plain http: nginx answers 400, not the image
    serve_export(&format!("iso=http://127.0.0.1:{port}/disk.img"), &[])
        .expect_fail()
        .expect_stderr(&["export iso"]);
}

/// `nbds://`: qemu-nbd serving the image over TLS; kvmio's own client reads and writes it and
/// kvmio's server exports it again; nbdcopy reads it byte for byte through kvmio, a write made
/// through kvmio lands in qemu-nbd's file, and when qemu-nbd dies reads fail and kvmio stays
/// up.
#[test]
fn an_nbds_export_is_re_exported() {
    let work = tempdir();
    let (img, mut data) = image(work.path(), 12);
    let pki = kvmio_tests::pki(&work.path().join("pki"));
    let tls = kvmio_tests::PeerTls {
        dir: &pki.dir,
        verify_peer: true,
    };
    let (mut qemu, qport) = kvmio_tests::qemu_nbd(&img, Some(tls), &[]);
    let upstream = format!("nbds://127.0.0.1:{qport}/disk");
    let ca = pki.dir.display().to_string();

    let mut s = KvmioServer::start(
        Runtime::Threads,
        &[
            "--export",
            &format!("disk={upstream}"),
            "--remote-tls-creds",
            &ca,
        ],
    );
    let out = work.path().join("copy.img");
    run(peer("nbdcopy").arg(s.target("disk").uri()).arg(&out)).expect_ok();
    assert!(
        std::fs::read(&out).unwrap() == data,
        "nbdcopy of the re-exported nbds export differs"
    );
    let info = run(peer("nbdinfo").arg(s.target("disk").uri()))
        .expect_ok()
        .text();
    assert!(info.contains("is_read_only: false"), "{info}");
    // a write through kvmio reaches qemu-nbd's image (FUA: durable when acknowledged)
    run(peer("qemu-io")
        .args(["-f", "raw", "-c", "write -P 0xa5 -f 1048576 65536"])
        .arg(s.target("disk").uri()))
    .expect_ok();
    data[1 << 20..(1 << 20) + 65536].fill(0xa5);
    assert!(
        std::fs::read(&img).unwrap() == data,
        "the write did not land in qemu-nbd's image"
    );

    // the upstream dies: reads are errors, not a hang, and kvmio serves on
    qemu.stop();
    run(peer("nbdcopy")
        .arg(s.target("disk").uri())
        .arg(work.path().join("dead.img")))
    .expect_fail();
    s.proc.assert_alive();

    // without the CA kvmio refuses to start rather than talk to an unverified server
    let (_q2, qport2) = kvmio_tests::qemu_nbd(&img, Some(tls), &[]);
    let other = kvmio_tests::pki(&work.path().join("other"));
    let other_ca = other.dir.display().to_string();
    serve_export(
        &format!("disk=nbds://127.0.0.1:{qport2}/disk"),
        &["--remote-tls-creds", &other_ca],
    )
    .expect_fail()
    .expect_stderr(&["export disk"]);
}
