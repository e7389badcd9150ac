//! TLS that must work (issue 3), with certificates from `kvmio creds generate` (ECDSA P-256
//! and RSA 2048) and from certtool (peers.md §0.3):
//! * our server (`--tls require`, both drivers) with qemu-img/qemu-io (`--object
//!   tls-creds-x509 … --image-opts …,tls-creds=tls0`), nbdinfo/nbdcopy (`nbds://…?
//!   tls-certificates=DIR`) and nbdsh (`set_tls`), with a DN ACL and with optional TLS;
//! * our client with qemu-nbd (`verify-peer` on and off, `--tls-authz`) and nbdkit
//!   (`--tls=require`, with and without `--tls-verify-peer`).

use std::path::Path;

use kvmio_tests::*;
use serde_json::Value;

const MIB: u64 = 1 << 20;

fn tls_server(rt: Runtime, pki: &Pki, extra: &[&str]) -> KvmioServer {
    let dir = pki.dir.display().to_string();
    let mut args = vec!["--tls", "require", "--tls-creds", &dir];
    args.extend_from_slice(extra);
    KvmioServer::start(rt, &args)
}

/// qemu-img convert into our TLS server, qemu-img compare, qemu-io pattern write/read, all
/// over TLS with the client credentials in `pki`.
fn qemu_over_tls(rt: Runtime, pki: &Pki) {
    let dir = tempdir();
    let src = dir.path().join("src.img");
    test_image(&src, 8 * MIB, 101);
    let server = tls_server(rt, pki, &["--memory", "disk=8M"]);
    let t = server.target("disk").with_tls(&pki.dir);
    run(&mut t.qemu_img_convert_into(&src)).expect_ok();
    let cmp = run(&mut t.qemu_img_compare(&src)).expect_ok();
    assert!(
        cmp.text().contains("Images are identical"),
        "{}",
        cmp.text()
    );
    run(&mut t.qemu_io(&["write -P 0x41 4096 512", "read -P 0x41 4096 512"])).expect_ok();
    let log = server.log();
    assert!(
        log.contains("TLS"),
        "server log does not show the TLS session:\n{log}"
    );
}

/// `kvmio creds generate` defaults (ECDSA P-256) with qemu-img and qemu-io. QEMU checks
/// client certificate key usage; this passes once the generator makes certificates QEMU
/// accepts for ECDSA keys.
#[test]
fn qemu_img_and_qemu_io_over_tls_with_kvmio_ecdsa_creds() {
    let d = tempdir();
    let pki = pki(d.path());
    qemu_over_tls(Runtime::Threads, &pki);
}

/// `kvmio creds generate --key rsa2048` with qemu-img and qemu-io (tokio driver).
#[test]
fn qemu_img_and_qemu_io_over_tls_with_kvmio_rsa2048_creds_tokio() {
    let d = tempdir();
    let pki = pki_with(d.path(), &["--key", "rsa2048"]);
    qemu_over_tls(Runtime::Tokio, &pki);
}

/// certtool-made credentials (RSA, PKCS#1 keys) with qemu-img and qemu-io.
#[test]
fn qemu_img_and_qemu_io_over_tls_with_certtool_creds() {
    let d = tempdir();
    let pki = certtool_pki(d.path());
    qemu_over_tls(Runtime::Threads, &pki);
}

/// nbdinfo shows a TLS session; nbdcopy uploads and downloads byte-identical over TLS.
fn libnbd_over_tls(rt: Runtime, pki: &Pki) {
    let dir = tempdir();
    let server = tls_server(rt, pki, &["--memory", "disk=6M"]);
    let t = server.target("disk").with_tls(&pki.dir);
    let info = run(peer("nbdinfo").arg(t.uri())).expect_ok().text();
    assert!(
        info.contains("protocol: newstyle-fixed with TLS"),
        "nbdinfo over TLS:\n{info}"
    );
    let src = dir.path().join("src.img");
    let data = test_image(&src, 6 * MIB, 103);
    run(peer("nbdcopy").arg(&src).arg(t.uri())).expect_ok();
    let dst = dir.path().join("dst.img");
    run(peer("nbdcopy").arg(t.uri()).arg(&dst)).expect_ok();
    assert_same_bytes(&read(&dst), &data, "nbdcopy over TLS");
    let list = run(peer("nbdinfo").arg("--list").arg(format!(
        "nbds://127.0.0.1:{}/?tls-certificates={}",
        server.port(),
        pki.dir.display()
    )))
    .expect_ok()
    .text();
    assert!(list.contains("export=\"disk\":"), "{list}");
}

#[test]
fn nbdinfo_and_nbdcopy_over_tls_threads() {
    let d = tempdir();
    libnbd_over_tls(Runtime::Threads, &pki(d.path()));
}

#[test]
fn nbdinfo_and_nbdcopy_over_tls_tokio() {
    let d = tempdir();
    libnbd_over_tls(Runtime::Tokio, &pki(d.path()));
}

#[test]
fn nbdinfo_and_nbdcopy_over_tls_with_certtool_creds_tokio() {
    let d = tempdir();
    libnbd_over_tls(Runtime::Tokio, &certtool_pki(d.path()));
}

/// nbdsh with `set_tls(TLS_REQUIRE)` and `set_tls_certificates`: TLS negotiated, structured
/// replies, pwrite/pread and block status inside TLS.
#[test]
fn nbdsh_over_tls_reads_writes_and_reports_tls() {
    let d = tempdir();
    let pki = pki_with(d.path(), &["--key", "rsa2048"]);
    let server = tls_server(Runtime::Tokio, &pki, &["--memory", "disk=2M"]);
    let t = server.target("disk").with_tls(&pki.dir);
    let script = format!(
        "import json\n{}\
         h.pwrite(b'TLS!' * 1024, 8192)\n\
         print(json.dumps({{'tls': h.get_tls_negotiated(), 'sr': h.get_structured_replies_negotiated(),\n\
         \x20 'same': h.pread(4096, 8192) == b'TLS!' * 1024, 'size': h.get_size()}}))\n\
         h.shutdown()\n",
        t.nbdsh_connect()
    );
    let out = run(nbdsh().arg("-c").arg(&script)).expect_ok();
    let line = out
        .text()
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .map(String::from);
    let v: Value = serde_json::from_str(&line.unwrap_or_default()).expect("nbdsh JSON");
    assert_eq!(v["tls"], true, "{v}");
    assert_eq!(v["sr"], true, "{v}");
    assert_eq!(v["same"], true, "{v}");
    assert_eq!(v["size"], 2 * MIB, "{v}");
}

/// `--tls-authz` with the DN `kvmio creds generate` printed (and the certtool DN): the
/// listed client gets in.
#[test]
fn tls_authz_admits_the_listed_client_dn() {
    for (i, make) in [pki as fn(&Path) -> Pki, certtool_pki]
        .into_iter()
        .enumerate()
    {
        let d = tempdir();
        let pki = make(d.path());
        let server = tls_server(
            if i == 0 {
                Runtime::Threads
            } else {
                Runtime::Tokio
            },
            &pki,
            &[
                "--memory",
                "disk=1M",
                "--tls-authz",
                "CN=nobody",
                "--tls-authz",
                &pki.client_dn,
            ],
        );
        let size = run(peer("nbdinfo")
            .arg("--size")
            .arg(server.target("disk").with_tls(&pki.dir).uri()))
        .expect_ok();
        assert_eq!(size.text().trim(), "1048576");
    }
}

/// `--tls on` (optional TLS, nbdkit's `--tls=on`): plaintext clients and TLS clients are both
/// served, and each sees what it negotiated.
#[test]
fn optional_tls_serves_plain_and_tls_clients() {
    let d = tempdir();
    let pki = pki(d.path());
    let dir = pki.dir.display().to_string();
    let server = KvmioServer::start(
        Runtime::Tokio,
        &["--tls", "on", "--tls-creds", &dir, "--memory", "disk=1M"],
    );
    let plain = run(peer("nbdinfo").arg(server.target("disk").uri()))
        .expect_ok()
        .text();
    assert!(plain.contains("without TLS"), "{plain}");
    let tls = run(peer("nbdinfo").arg(server.target("disk").with_tls(&pki.dir).uri()))
        .expect_ok()
        .text();
    assert!(tls.contains("with TLS"), "{tls}");
}

// ------------------------------------------------------------------------------ our client

/// Our client against qemu-nbd over TLS with a required client certificate: info (with
/// TLS), copy out byte-identical, copy in and read back.
fn kvmio_client_to_qemu_nbd_with_client_cert(pki: &Pki) {
    let dir = tempdir();
    let img = dir.path().join("disk.img");
    let data = test_image(&img, 4 * MIB, 107);
    let (qemu, port) = qemu_nbd(
        &img,
        Some(PeerTls {
            dir: &pki.dir,
            verify_peer: true,
        }),
        &[],
    );
    let uri = Target::tcp(port, "disk").with_tls(&pki.dir).uri();
    let info = run(kvmio().args(["nbd", "info", &uri])).expect_ok().text();
    assert!(info.contains("with TLS"), "{info}");
    let out = dir.path().join("out.img");
    run(&mut kvmio_copy(&uri, &out)).expect_ok();
    assert_same_bytes(&read(&out), &data, "kvmio nbd copy from qemu-nbd over TLS");
    let src = dir.path().join("src.img");
    let new = test_image(&src, 4 * MIB, 109);
    run(&mut kvmio_copy(&src, &uri)).expect_ok();
    drop(qemu);
    assert_same_bytes(
        &read(&img),
        &new,
        "image under qemu-nbd after kvmio nbd copy over TLS",
    );
}

/// With `kvmio creds generate` defaults (ECDSA P-256): qemu-nbd must accept the server
/// certificate (it checks key usage); passes once the generator makes ECDSA certificates
/// QEMU accepts.
#[test]
fn kvmio_client_to_qemu_nbd_tls_verify_peer_with_kvmio_ecdsa_creds() {
    let d = tempdir();
    kvmio_client_to_qemu_nbd_with_client_cert(&pki(d.path()));
}

#[test]
fn kvmio_client_to_qemu_nbd_tls_verify_peer_with_kvmio_rsa2048_creds() {
    let d = tempdir();
    kvmio_client_to_qemu_nbd_with_client_cert(&pki_with(d.path(), &["--key", "rsa2048"]));
}

#[test]
fn kvmio_client_to_qemu_nbd_tls_verify_peer_with_certtool_creds() {
    let d = tempdir();
    kvmio_client_to_qemu_nbd_with_client_cert(&certtool_pki(d.path()));
}

/// qemu-nbd with `verify-peer=off`: our client without any client certificate (a directory
/// holding only ca-cert.pem) gets in over TLS.
#[test]
fn kvmio_client_without_client_cert_to_qemu_nbd_without_verify_peer() {
    let d = tempdir();
    let pki = certtool_pki(&d.path().join("pki"));
    let ca_only = d.path().join("ca-only");
    ca_only_dir(&pki.dir, &ca_only);
    let img = d.path().join("disk.img");
    let data = test_image(&img, 2 * MIB, 113);
    let (_qemu, port) = qemu_nbd(
        &img,
        Some(PeerTls {
            dir: &pki.dir,
            verify_peer: false,
        }),
        &[],
    );
    let uri = Target::tcp(port, "disk").with_tls(&ca_only).uri();
    let got = run(&mut kvmio_copy(&uri, "-")).expect_ok();
    assert_same_bytes(
        &got.stdout,
        &data,
        "kvmio nbd copy without a client certificate",
    );
}

/// qemu-nbd with `--tls-authz` on `authz-simple` whose identity is the DN `kvmio creds
/// generate` printed (commas doubled for QEMU): our client is admitted.
fn qemu_nbd_authz_admits(pki: &Pki) {
    let d = tempdir();
    let img = d.path().join("disk.img");
    let data = test_image(&img, MIB, 127);
    let (_qemu, port) = qemu_nbd(
        &img,
        Some(PeerTls {
            dir: &pki.dir,
            verify_peer: true,
        }),
        &qemu_authz_args(&pki.client_dn),
    );
    let uri = Target::tcp(port, "disk").with_tls(&pki.dir).uri();
    let got = run(&mut kvmio_copy(&uri, "-")).expect_ok();
    assert_same_bytes(
        &got.stdout,
        &data,
        "kvmio nbd copy through qemu-nbd's authz",
    );
}

#[test]
fn qemu_nbd_tls_authz_admits_kvmio_generated_dn() {
    let d = tempdir();
    qemu_nbd_authz_admits(&pki_with(d.path(), &["--key", "rsa2048"]));
}

#[test]
fn qemu_nbd_tls_authz_admits_certtool_dn() {
    let d = tempdir();
    qemu_nbd_authz_admits(&certtool_pki(d.path()));
}

/// nbdkit `--tls=require --tls-certificates=DIR [--tls-verify-peer] memory 16M`: our client
/// copies an image in and reads it back over TLS; nbdcopy (libnbd) reads the same bytes.
fn kvmio_client_to_nbdkit_tls(pki: &Pki, verify_peer: bool) {
    let d = tempdir();
    let (_nbdkit, port) = nbdkit(
        Some(PeerTls {
            dir: &pki.dir,
            verify_peer,
        }),
        &["memory", "16M"],
    );
    let uri = Target::tcp(port, "").with_tls(&pki.dir).uri();
    let src = d.path().join("src.img");
    let data = test_image(&src, 16 * MIB, 131);
    run(&mut kvmio_copy(&src, &uri)).expect_ok();
    let back = run(&mut kvmio_copy(&uri, "-")).expect_ok();
    assert_same_bytes(
        &back.stdout,
        &data,
        "kvmio nbd copy round trip through nbdkit over TLS",
    );
    let libnbd = run(peer("nbdcopy").arg(&uri).arg("-")).expect_ok();
    assert_same_bytes(
        &libnbd.stdout,
        &data,
        "nbdcopy of what kvmio wrote through TLS",
    );
    let info = run(kvmio().args(["nbd", "info", &uri])).expect_ok().text();
    assert!(info.contains("with TLS"), "{info}");
}

#[test]
fn kvmio_client_to_nbdkit_tls_require_with_verify_peer() {
    let d = tempdir();
    kvmio_client_to_nbdkit_tls(&pki(d.path()), true);
}

#[test]
fn kvmio_client_to_nbdkit_tls_require_without_verify_peer_certtool_creds() {
    let d = tempdir();
    kvmio_client_to_nbdkit_tls(&certtool_pki(d.path()), false);
}

/// Our client against our server over TLS, with a client certificate and a DN ACL: the two
/// halves agree byte for byte.
#[test]
fn kvmio_client_to_kvmio_server_over_tls_with_authz() {
    let d = tempdir();
    let pki = pki(d.path());
    let server = tls_server(
        Runtime::Tokio,
        &pki,
        &["--memory", "disk=8M", "--tls-authz", &pki.client_dn],
    );
    let uri = server.target("disk").with_tls(&pki.dir).uri();
    let src = d.path().join("src.img");
    let data = test_image(&src, 8 * MIB, 137);
    run(&mut kvmio_copy(&src, &uri)).expect_ok();
    let back = run(&mut kvmio_copy(&uri, "-")).expect_ok();
    assert_same_bytes(&back.stdout, &data, "kvmio to kvmio over TLS");
}

/// TLS over a Unix socket (`--unix` with `--tls require`): nbdinfo and kvmio with
/// `nbds+unix://` URIs (the certificate is checked for "localhost"), qemu-img with a unix
/// server address and `tls-hostname=localhost`, and `kvmio nbd copy -` from stdin and back.
#[test]
fn tls_over_unix_socket_with_nbds_unix_uris() {
    let d = tempdir();
    let pki = pki(&d.path().join("pki"));
    let sock = d.path().join("tls.sock");
    let sock_s = sock.display().to_string();
    let server = tls_server(
        Runtime::Tokio,
        &pki,
        &["--unix", &sock_s, "--memory", "disk=1M"],
    );
    let t = Target::unix(&sock, "disk").with_tls(&pki.dir);
    let info = run(peer("nbdinfo").arg(t.uri())).expect_ok().text();
    assert!(info.contains("with TLS"), "{info}");
    let info = run(kvmio().args(["nbd", "info"]).arg(t.uri()))
        .expect_ok()
        .text();
    assert!(info.contains("with TLS"), "{info}");
    let q = run(peer("qemu-img")
        .arg("info")
        .args(t.qemu_objects())
        .arg("--image-opts")
        .arg(format!("{},tls-hostname=localhost", t.qemu_opts())))
    .expect_ok();
    assert!(q.text().contains("1 MiB"), "{}", q.text());
    let data = random_bytes(1 << 20, 139);
    run_with_input(&mut kvmio_copy("-", t.uri()), Some(&data)).expect_ok();
    let back = run(&mut kvmio_copy(t.uri(), "-")).expect_ok();
    assert_same_bytes(&back.stdout, &data, "stdin to nbds+unix and back");
    drop(server);
}

/// nbd-server with `force_tls` (gnutls, simple replies): our client copies in and out over
/// TLS, and a plaintext kvmio is told TLS is required.
#[test]
fn kvmio_client_to_nbd_server_force_tls() {
    let d = tempdir();
    let pki = pki(&d.path().join("pki"));
    let img = d.path().join("disk.img");
    let data = test_image(&img, 2 * MIB, 149);
    let server = nbd_server(&img, Some(&pki.dir));
    let t = Target::tcp(server.port, "disk");
    let tls_uri = t.clone().with_tls(&pki.dir).uri();
    let info = run(kvmio().args(["nbd", "info", &tls_uri]))
        .expect_ok()
        .text();
    assert!(info.contains("with TLS"), "{info}");
    let got = run(&mut kvmio_copy(&tls_uri, "-")).expect_ok();
    assert_same_bytes(
        &got.stdout,
        &data,
        "kvmio nbd copy from nbd-server over TLS",
    );
    let src = d.path().join("src.img");
    let new = test_image(&src, 2 * MIB, 151);
    run(&mut kvmio_copy(&src, &tls_uri)).expect_ok();
    run(kvmio().args(["nbd", "info"]).arg(t.uri()))
        .expect_fail()
        .expect_stderr(&["NBD_REP_ERR_TLS_REQD"]);
    drop(server);
    assert_same_bytes(&read(&img), &new, "image under nbd-server after a TLS copy");
}

/// Our client over `nbds+unix://`, ten times each against our server and qemu-nbd (`-k`):
/// every run exits 0. After NBD_CMD_DISC the server may close at once; the client's
/// close_notify then meets a closed Unix socket (EPIPE), which must not turn a finished
/// session into a failure.
#[test]
fn kvmio_client_over_nbds_unix_exits_zero_after_a_finished_session() {
    let d = tempdir();
    let pki = pki_with(&d.path().join("pki"), &["--key", "rsa2048"]);
    let sock = d.path().join("kvmio.sock");
    let sock_s = sock.display().to_string();
    let _server = tls_server(
        Runtime::Threads,
        &pki,
        &["--unix", &sock_s, "--memory", "disk=1M"],
    );
    let img = d.path().join("disk.img");
    sparse_image(&img, 1 << 20, &[(0, 4096)], 157);
    let qsock = d.path().join("qemu.sock");
    let _qemu = qemu_nbd_unix(
        &img,
        &qsock,
        Some(PeerTls {
            dir: &pki.dir,
            verify_peer: true,
        }),
    );
    let mut failures = Vec::new();
    for s in [&sock, &qsock] {
        let uri = Target::unix(s, "disk").with_tls(&pki.dir).uri();
        for _ in 0..10 {
            let out = run(kvmio().args(["nbd", "info", &uri]));
            if !out.ok() {
                failures.push(format!("{}: {}", s.display(), out.stderr.trim()));
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} of 20 runs failed after finishing:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
