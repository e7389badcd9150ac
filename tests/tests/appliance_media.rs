//! Virtual media end to end in the emulated appliance: `kvmio gadget up` (a CD-ROM LUN and a
//! disk LUN), the main job `kvmio serve --media 0=http://…` with the image on nginx outside
//! the VM (range requests, through the kernel's nbd device), `kvmio media insert|eject|status`
//! through the control socket, a local file on the disk LUN, then a disk served by qemu-nbd over
//! NBD + TLS (client certificates required) and a CD-ROM from nginx over HTTPS, both verified
//! with a CA made at test time. The target computer (the host side of dummy_hcd) reads
//! `/dev/sr0` and `/dev/sda` with the images' SHA-256, writes to the disks (the bytes land in
//! the file and in qemu-nbd's image), sees ejects and inserts, and gets I/O errors, not a hang,
//! when the web server or qemu-nbd dies.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use kvmio_tests::appliance::{Appliance, HOST_IP};
use kvmio_tests::web::{nginx, nginx_tls};
use kvmio_tests::{PeerTls, free_port, qemu_nbd};

const CONTROL: &str = "/run/kvmio/media.sock";

/// A file of `len` pseudo-random bytes; returns its SHA-256 (hex).
fn image(path: &Path, len: usize, seed: u64) -> String {
    let mut rng = fastrand::Rng::with_seed(seed);
    let data: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
    std::fs::write(path, &data).unwrap();
    sha256_host(path)
}

fn sha256_host(path: &Path) -> String {
    let o = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum");
    assert!(o.status.success());
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

/// The SHA-256 the target reads from `dev`, waiting up to 30 s for a medium of `size` bytes.
#[track_caller]
fn target_sha(a: &mut Appliance, dev: &str, size: usize) -> String {
    wait_medium(a, dev, size);
    a.sh("echo 3 > /proc/sys/vm/drop_caches");
    let out = a.sh(&format!("sha256sum {dev}"));
    out.split_whitespace().next().unwrap().to_string()
}

/// Waits up to 30 s for the target to see a medium of `size` bytes in `dev`.
#[track_caller]
fn wait_medium(a: &mut Appliance, dev: &str, size: usize) {
    let name = dev.trim_start_matches("/dev/");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        // Opening the device makes the target look at the medium (the sr driver checks for
        // a media change on open).
        let o = a.run(&[
            "sh",
            "-c",
            &format!(
                "dd if={dev} of=/dev/null bs=2048 count=1 2>/dev/null; cat /sys/block/{name}/size"
            ),
        ]);
        let sectors: usize = o.stdout.trim().parse().unwrap_or(0);
        if sectors * 512 == size {
            break;
        }
        assert!(
            Instant::now() < end,
            "{dev}: the target never saw a {size}-byte medium (size {sectors} sectors)\n{}",
            a.serial()
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

/// Whether the target finds no medium in `dev` (within 30 s).
#[track_caller]
fn target_sees_no_medium(a: &mut Appliance, dev: &str) {
    let name = dev.trim_start_matches("/dev/");
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        let o = a.run(&[
            "sh",
            "-c",
            &format!("dd if={dev} of=/dev/null bs=2048 count=1 2>&1; cat /sys/block/{name}/size"),
        ]);
        // the size in sysfs may stay stale; opening the drive tells
        if o.stdout.contains("No medium found") {
            return;
        }
        assert!(
            Instant::now() < end,
            "{dev}: still a medium after eject: {}",
            o.stdout
        );
        std::thread::sleep(Duration::from_millis(300));
    }
}

#[test]
fn the_target_reads_media_from_http_https_nbd_tls_and_files_and_sees_ejects() {
    let work = kvmio_tests::tempdir();
    let www = work.path().join("www");
    std::fs::create_dir(&www).unwrap();
    // nginx's workers run as nobody: the files must be readable by all.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(work.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(&www, std::fs::Permissions::from_mode(0o755)).unwrap();
    // CD-ROM images: 2048-byte sectors, at least 300 of them (f_mass_storage's minimum)
    let iso1 = image(&www.join("one.iso"), 2048 * 1024, 1);
    let iso2 = image(&www.join("two.iso"), 2048 * 700, 2);
    for f in ["one.iso", "two.iso"] {
        std::fs::set_permissions(www.join(f), std::fs::Permissions::from_mode(0o644)).unwrap();
    }
    let port = free_port();
    let mut web = nginx(work.path(), &www, port);
    // TLS: one CA; the server certificates name the address the guest reaches the host by
    let pki_dir = work.path().join("pki");
    kvmio_tests::run(
        kvmio_tests::kvmio()
            .args(["creds", "generate"])
            .arg(&pki_dir)
            .args(["--ip", HOST_IP, "--ip", "127.0.0.1"]),
    )
    .expect_ok();
    let web_tls_dir = work.path().join("tls-web");
    std::fs::create_dir(&web_tls_dir).unwrap();
    let iso3 = image(&www.join("three.iso"), 2048 * 512, 5);
    std::fs::set_permissions(
        www.join("three.iso"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    let tls_port = free_port();
    let _web_tls = nginx_tls(&web_tls_dir, &www, tls_port, &pki_dir);
    let nbd_img = work.path().join("nbd.img");
    let nbd_sha = image(&nbd_img, 3 << 20, 6);
    let tls = PeerTls {
        dir: &pki_dir,
        verify_peer: true,
    };
    // on the host's loopback, where the guest's forwarded connections come from
    let (mut qemu, nbd_port) = qemu_nbd(&nbd_img, Some(tls), &[]);

    let mut a = Appliance::boot_full(&[], &[], &[port, tls_port, nbd_port]);
    // the CA and the client certificate qemu-nbd asks for, as a device would keep them
    copy_dir(&pki_dir, &a.share().join("pki"));
    let disk = image(&a.share().join("disk.img"), 4 << 20, 3);
    let up = a.run_ok(&["kvmio", "gadget", "up"]);
    assert!(up.contains("lun 0 cdrom"), "{up}");
    let url1 = format!("http://{HOST_IP}:{port}/one.iso");
    // the main job, as on a device (no TLS here: the test is about the media)
    let server = a.spawn(&[
        "kvmio",
        "serve",
        "--tls",
        "off",
        "--no-nbd",
        "--vnc-listen",
        "127.0.0.1:5900",
        "--media",
        &format!("0={url1}"),
        "--media-control",
        CONTROL,
        "--remote-tls-creds",
        "/mnt/host/pki",
    ]);
    a.wait_output(server, "vnc serving", Duration::from_secs(60));

    // the CD-ROM from the web server, the disk from a file
    assert_eq!(
        target_sha(&mut a, "/dev/sr0", 2048 * 1024),
        iso1,
        "CD-ROM over HTTP"
    );
    let ins = media_ok(&mut a, &["insert", "--lun", "1", "/mnt/host/disk.img"]);
    assert!(ins.contains("LUN 1: /mnt/host/disk.img"), "{ins}");
    assert_eq!(
        target_sha(&mut a, "/dev/sda", 4 << 20),
        disk,
        "disk from a file"
    );

    // the target writes to the disk: the bytes land in the backing file on the host
    a.sh("dd if=/dev/urandom of=/tmp/w.bin bs=4096 count=8 2>/dev/null");
    a.sh("dd if=/tmp/w.bin of=/dev/sda bs=4096 seek=100 conv=fsync 2>/dev/null");
    let written = a.read_file("/tmp/w.bin");
    let backing = std::fs::read(a.share().join("disk.img")).unwrap();
    assert!(
        backing[100 * 4096..108 * 4096] == written[..],
        "the target's write did not reach the backing file"
    );
    let st = media_ok(&mut a, &["status"]);
    assert!(st.contains(&format!("0:cdrom:{url1}")), "{st}");
    assert!(st.contains("1:disk:/mnt/host/disk.img"), "{st}");

    // eject: the target sees no disc; another one inserted is read in full
    media_ok(&mut a, &["eject", "--lun", "0"]);
    target_sees_no_medium(&mut a, "/dev/sr0");
    let url2 = format!("http://{HOST_IP}:{port}/two.iso");
    media_ok(&mut a, &["insert", "--lun", "0", &url2]);
    assert_eq!(
        target_sha(&mut a, "/dev/sr0", 2048 * 700),
        iso2,
        "the second CD-ROM"
    );

    // bad requests get clear answers
    let bad = media(&mut a, &["insert", "--lun", "7", &url2]);
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("no LUN 7"), "{}", bad.stderr);
    let bad = media(
        &mut a,
        &[
            "insert",
            "--lun",
            "0",
            &format!("http://{HOST_IP}:{port}/missing.iso"),
        ],
    );
    assert_ne!(bad.code, Some(0));
    assert!(bad.stderr.contains("404"), "{}", bad.stderr);

    // the web server dies while a disc is in: reads of what the target has not read yet
    // fail with I/O errors instead of hanging
    let big = image(&www.join("big.iso"), 16 << 20, 4);
    std::fs::set_permissions(www.join("big.iso"), std::fs::Permissions::from_mode(0o644)).unwrap();
    let url3 = format!("http://{HOST_IP}:{port}/big.iso");
    media_ok(&mut a, &["insert", "--lun", "0", &url3]);
    wait_medium(&mut a, "/dev/sr0", 16 << 20);
    web.stop();
    let t0 = Instant::now();
    let dead = a.run(&[
        "dd",
        "if=/dev/sr0",
        "of=/dev/null",
        "bs=65536",
        "skip=128",
        "count=16",
    ]);
    assert_ne!(
        dead.code,
        Some(0),
        "reading a dead source succeeded: {}",
        dead.stderr
    );
    assert!(dead.code.is_some(), "reading a dead source hung");
    eprintln!(
        "dead source: dd failed after {:.1?}: {}",
        t0.elapsed(),
        dead.stderr.trim()
    );
    assert!(
        dead.stderr.contains("I/O error") || dead.stderr.contains("Input/output error"),
        "the target did not get I/O errors: {}\n{}",
        dead.stderr,
        a.output(server).1
    );
    // and the server is still there for the next medium
    let st = media_ok(&mut a, &["status"]);
    assert!(st.contains("1:disk:/mnt/host/disk.img"), "{st}");
    assert!(st.contains(&format!("0:cdrom:{url3}")), "{st}");
    let _ = big;

    // a disk from qemu-nbd over NBD + TLS, in place of the file; the target writes to it and
    // the bytes land in qemu-nbd's image
    let nbds = format!("nbds://{HOST_IP}:{nbd_port}/disk");
    let ins = media_ok(&mut a, &["insert", "--lun", "1", &nbds]);
    assert!(ins.contains(&format!("LUN 1: {nbds}")), "{ins}");
    assert_eq!(
        target_sha(&mut a, "/dev/sda", 3 << 20),
        nbd_sha,
        "disk over NBD + TLS"
    );
    a.sh("dd if=/dev/urandom of=/tmp/n.bin bs=4096 count=4 2>/dev/null");
    a.sh("dd if=/tmp/n.bin of=/dev/sda bs=4096 seek=200 conv=fsync 2>/dev/null");
    let written = a.read_file("/tmp/n.bin");
    let upstream = std::fs::read(&nbd_img).unwrap();
    assert!(
        upstream[200 * 4096..204 * 4096] == written[..],
        "the target's write did not reach qemu-nbd's image"
    );
    // a CD-ROM over HTTPS, in place of the one whose web server died
    let https = format!("https://{HOST_IP}:{tls_port}/three.iso");
    media_ok(&mut a, &["insert", "--lun", "0", &https]);
    assert_eq!(
        target_sha(&mut a, "/dev/sr0", 2048 * 512),
        iso3,
        "CD-ROM over HTTPS"
    );
    let st = media_ok(&mut a, &["status"]);
    assert!(st.contains(&format!("0:cdrom:{https}")), "{st}");
    assert!(st.contains(&format!("1:disk:{nbds}")), "{st}");

    // qemu-nbd dies: the target's reads fail with I/O errors instead of hanging (the caches
    // of both sides, one kernel here, dropped so that the reads reach the source)
    qemu.stop();
    a.sh("echo 3 > /proc/sys/vm/drop_caches");
    let dead = a.run(&[
        "dd",
        "if=/dev/sda",
        "of=/dev/null",
        "bs=65536",
        "skip=32",
        "count=8",
    ]);
    assert!(dead.code.is_some(), "reading a dead NBD source hung");
    assert_ne!(dead.code, Some(0), "reading a dead NBD source succeeded");
    assert!(
        dead.stderr.contains("I/O error") || dead.stderr.contains("Input/output error"),
        "the target did not get I/O errors from the dead NBD source: {}",
        dead.stderr
    );
    a.kill(server);
}

/// `kvmio media ARGS… --control CONTROL` in the guest.
fn media(a: &mut Appliance, args: &[&str]) -> kvmio_tests::appliance::GuestOut {
    let mut argv = vec!["kvmio", "media"];
    argv.extend_from_slice(args);
    argv.extend_from_slice(&["--control", CONTROL]);
    a.run(&argv)
}

/// [`media`], which must succeed; its stdout.
#[track_caller]
fn media_ok(a: &mut Appliance, args: &[&str]) -> String {
    let o = media(a, args);
    assert_eq!(o.code, Some(0), "kvmio media {args:?}: {}", o.stderr);
    o.stdout
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}
