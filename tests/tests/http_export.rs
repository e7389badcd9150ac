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
    let mut cmd = kvmio_tests::kvmio();
    cmd.args(["nbd", "serve", "--listen", "127.0.0.1:0", "--export"])
        .arg(format!("x=http://127.0.0.1:{port}/missing.img"));
    run(&mut cmd)
        .expect_fail()
        .expect_stderr(&["export x", "404"]);

    // nginx dies: reads fail (an NBD error, not a hang) and the server stays up
    let mut s = KvmioServer::start(Runtime::Threads, &["--export", &format!("iso={url}")]);
    web.stop();
    let out = work.path().join("dead.img");
    run(peer("nbdcopy").arg(s.target("iso").uri()).arg(&out)).expect_fail();
    s.proc.assert_alive();
}
