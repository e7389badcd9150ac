//! The TLS failure matrix, in the style of QEMU iotest 233: every misconfiguration fails, and
//! the side that detects it says so (stderr of the client, or the server's log), no session
//! reaches the transmission phase, and the server keeps serving good clients.
//!
//! Certificates are made at test time (rcgen, certtool); nothing is committed.

#[path = "common/certs.rs"]
mod certs;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::time::Duration;

use certs::*;
use kvmio_tests::*;
use nbd_core::wire::{
    CLISERV_MAGIC, IHAVEOPT, NBDMAGIC, OPTION_REPLY_MAGIC, OptionHeaderRepr, OptionType, ReplyType,
};

const LOG_WAIT: Duration = Duration::from_secs(10);
/// Logged by our server when a session reaches the transmission phase.
const SESSION: &str = "export \"disk\"";

/// A CA, a good server directory and a good client directory, plus room for variants.
struct World {
    tmp: TempDir,
    ca: Ca,
    server_leaf: Leaf,
    client_leaf: Leaf,
    server_dir: PathBuf,
    client_dir: PathBuf,
}

impl World {
    fn new() -> Self {
        let tmp = tempdir();
        let ca = Ca::new("Test CA");
        let server_leaf = ca.leaf(true);
        let client_leaf = ca.leaf(false);
        let server_dir = tmp.path().join("server");
        write_dir(&server_dir, &[&ca.pem], None, Some(&server_leaf), None);
        let client_dir = tmp.path().join("client");
        write_dir(&client_dir, &[&ca.pem], None, None, Some(&client_leaf));
        Self {
            tmp,
            ca,
            server_leaf,
            client_leaf,
            server_dir,
            client_dir,
        }
    }

    /// A directory `name` in the QEMU layout.
    fn dir(
        &self,
        name: &str,
        cas: &[&str],
        crl: Option<&str>,
        server: Option<&Leaf>,
        client: Option<&Leaf>,
    ) -> PathBuf {
        let d = self.tmp.path().join(name);
        write_dir(&d, cas, crl, server, client);
        d
    }

    /// A client directory with only `ca-cert.pem`.
    fn ca_only(&self) -> PathBuf {
        self.dir("ca-only", &[&self.ca.pem], None, None, None)
    }
}

fn tls_server(rt: Runtime, dir: &Path, extra: &[&str]) -> KvmioServer {
    let d = dir.display().to_string();
    let mut args = vec!["--tls", "require", "--tls-creds", &d, "--memory", "disk=1M"];
    args.extend_from_slice(extra);
    KvmioServer::start(rt, &args)
}

fn nbdinfo(t: &Target) -> Out {
    run(peer("nbdinfo").arg(t.uri()))
}

fn qemu_img_info(t: &Target) -> Out {
    run(&mut t.qemu_img_info())
}

fn kvmio_info(t: &Target) -> Out {
    run(kvmio().args(["nbd", "info"]).arg(t.uri()))
}

/// The server refused every session so far and still serves a good client.
#[track_caller]
fn assert_no_session_and_healthy(server: &mut KvmioServer, good: Option<&Path>) {
    let log = server.log();
    assert!(
        !log.contains(SESSION),
        "a refused client reached the transmission phase:\n{log}"
    );
    server.assert_healthy("disk", 1 << 20, good);
}

/// nbdinfo, qemu-img and kvmio in turn are refused, and `server` logs `msg` for each.
#[track_caller]
fn three_clients_refused(server: &mut KvmioServer, t: &Target, msg: &str) {
    nbdinfo(t).expect_fail();
    server.proc.wait_log_count(msg, 1, LOG_WAIT);
    qemu_img_info(t).expect_fail();
    server.proc.wait_log_count(msg, 2, LOG_WAIT);
    kvmio_info(t).expect_fail();
    server.proc.wait_log_count(msg, 3, LOG_WAIT);
}

// ------------------------------------------------------------------ plaintext vs TLS

/// A plaintext client against `--tls require` is told TLS is required and learns nothing:
/// nbdinfo (the server's message in libnbd's debug output), qemu-img ("TLS negotiation
/// required"), kvmio (`NBD_REP_ERR_TLS_REQD`, for info and list).
#[test]
fn plain_clients_to_forced_tls_server_are_told_tls_is_required() {
    let w = World::new();
    let mut server = tls_server(Runtime::Tokio, &w.server_dir, &[]);
    let t = server.target("disk");
    let out = run(peer("nbdinfo").arg(t.uri()).env("LIBNBD_DEBUG", "1"))
        .expect_fail()
        .expect_stderr(&["TLS is required"]);
    assert!(
        !out.text().contains("export-size"),
        "nbdinfo learned the size in the clear:\n{}",
        out.text()
    );
    qemu_img_info(&t)
        .expect_fail()
        .expect_stderr(&["TLS negotiation required"]);
    kvmio_info(&t)
        .expect_fail()
        .expect_stderr(&["NBD_REP_ERR_TLS_REQD"]);
    let list = run(kvmio()
        .args(["nbd", "list"])
        .arg(format!("nbd://127.0.0.1:{}/", server.port())))
    .expect_fail()
    .expect_stderr(&["NBD_REP_ERR_TLS_REQD"]);
    assert!(!list.text().contains("disk"), "export listed in the clear");
    assert_no_session_and_healthy(&mut server, Some(&w.client_dir));
}

/// TLS clients against a plaintext server fail closed, never falling back to plaintext:
/// kvmio (server refused STARTTLS), nbdinfo, nbdcopy, qemu-img; the server saw no session.
#[test]
fn tls_clients_to_plain_server_fail_closed() {
    let w = World::new();
    let mut server = KvmioServer::start(Runtime::Threads, &["--memory", "disk=1M"]);
    let t = server.target("disk").with_tls(&w.client_dir);
    kvmio_info(&t)
        .expect_fail()
        .expect_stderr(&["refused STARTTLS", "NBD_REP_ERR_POLICY"]);
    let src = w.tmp.path().join("src.img");
    std::fs::write(&src, vec![7u8; 1 << 20]).expect("write");
    run(&mut kvmio_copy(&src, t.uri()))
        .expect_fail()
        .expect_stderr(&["refused STARTTLS"]);
    nbdinfo(&t).expect_fail();
    run(peer("nbdcopy").arg(t.uri()).arg("-"))
        .expect_fail()
        .expect_stderr(&["server refused TLS"]);
    qemu_img_info(&t).expect_fail().expect_stderr(&["starttls"]);
    assert_no_session_and_healthy(&mut server, None);
    // and nothing was written in the clear
    let got = run(peer("nbdcopy").arg(server.target("disk").uri()).arg("-")).expect_ok();
    assert!(
        got.stdout.iter().all(|b| *b == 0),
        "a TLS client wrote in the clear"
    );
}

/// What a fake server received from a client, option by option.
#[derive(Debug, Default)]
struct Seen {
    flags: Option<u32>,
    options: Vec<OptionType>,
    trailing: Vec<u8>,
}

fn read_exact_or_eof(s: &mut TcpStream, n: usize) -> Option<Vec<u8>> {
    let mut v = vec![0u8; n];
    s.read_exact(&mut v).ok().map(|_| v)
}

/// A one-connection fake NBD server: sends `greeting`; with fixed newstyle it reads the
/// client flags and options, refusing STARTTLS with `NBD_REP_ERR_POLICY` and everything else
/// with `NBD_REP_ERR_UNSUP` (a downgrading client would go on in the clear); records all.
fn fake_server(greeting: Vec<u8>, fixed: bool) -> (u16, std::thread::JoinHandle<Seen>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = l.local_addr().expect("addr").port();
    let h = std::thread::spawn(move || {
        let (mut s, _) = l.accept().expect("accept");
        s.set_read_timeout(Some(Duration::from_secs(15)))
            .expect("timeout");
        let mut seen = Seen::default();
        s.write_all(&greeting).expect("greeting");
        if fixed {
            let Some(f) = read_exact_or_eof(&mut s, 4) else {
                return seen;
            };
            seen.flags = Some(u32::from_be_bytes(f.try_into().expect("4")));
            loop {
                let Some(h) = read_exact_or_eof(&mut s, OptionHeaderRepr::LEN) else {
                    return seen;
                };
                let Ok(Some(h)) = OptionHeaderRepr::parse(&h) else {
                    seen.trailing = h;
                    break;
                };
                if read_exact_or_eof(&mut s, h.length as usize).is_none() {
                    return seen;
                }
                seen.options.push(h.option);
                let reply = match h.option {
                    OptionType::StartTls => ReplyType::ErrPolicy,
                    OptionType::Abort => ReplyType::Ack,
                    _ => ReplyType::ErrUnsup,
                };
                let mut r = OPTION_REPLY_MAGIC.to_be_bytes().to_vec();
                r.extend(u32::from(h.option).to_be_bytes());
                r.extend(u32::from(reply).to_be_bytes());
                r.extend(0u32.to_be_bytes());
                if s.write_all(&r).is_err() || h.option == OptionType::Abort {
                    return seen;
                }
            }
        }
        let mut rest = Vec::new();
        let _ = s.read_to_end(&mut rest);
        seen.trailing.extend(rest);
        seen
    });
    (port, h)
}

/// kvmio with an nbds URI sends nothing but the client flags and NBD_OPT_STARTTLS in the
/// clear (at most an ABORT after the refusal), fails, and says TLS was refused; against a
/// server without fixed newstyle or an oldstyle one it sends no option at all (libnbd
/// CVE-2019-14842 silently downgraded there).
#[test]
fn kvmio_tls_client_sends_nothing_but_starttls_in_the_clear() {
    let w = World::new();
    let target = |port: u16| Target::tcp(port, "disk").with_tls(&w.client_dir);

    let mut greeting = NBDMAGIC.to_be_bytes().to_vec();
    greeting.extend(IHAVEOPT.to_be_bytes());
    greeting.extend(3u16.to_be_bytes());
    let (port, h) = fake_server(greeting, true);
    kvmio_info(&target(port))
        .expect_fail()
        .expect_stderr(&["STARTTLS"]);
    let seen = h.join().expect("fake server");
    assert!(seen.flags.is_some_and(|f| f & 1 == 1), "{seen:?}");
    assert!(
        seen.options == [OptionType::StartTls]
            || seen.options == [OptionType::StartTls, OptionType::Abort],
        "the client sent more than STARTTLS in the clear: {seen:?}"
    );
    assert!(seen.trailing.is_empty(), "{seen:?}");

    let mut plain_newstyle = NBDMAGIC.to_be_bytes().to_vec();
    plain_newstyle.extend(IHAVEOPT.to_be_bytes());
    plain_newstyle.extend(0u16.to_be_bytes());
    let (port, h) = fake_server(plain_newstyle, false);
    kvmio_info(&target(port)).expect_fail();
    let seen = h.join().expect("fake server");
    assert!(
        seen.trailing.len() <= 4,
        "the client negotiated in the clear with a non-fixed-newstyle server: {:02x?}",
        seen.trailing
    );

    let mut oldstyle = NBDMAGIC.to_be_bytes().to_vec();
    oldstyle.extend(CLISERV_MAGIC.to_be_bytes());
    oldstyle.extend((1u64 << 20).to_be_bytes());
    oldstyle.extend(1u32.to_be_bytes());
    oldstyle.extend([0u8; 124]);
    let (port, h) = fake_server(oldstyle, false);
    kvmio_info(&target(port)).expect_fail();
    let seen = h.join().expect("fake server");
    assert!(
        seen.trailing.is_empty(),
        "the client sent {:02x?} to an oldstyle server",
        seen.trailing
    );
}

// ------------------------------------------------------------------ certificates

/// Wrong CA: the client trusts another CA. nbdinfo, qemu-img and kvmio refuse the server
/// certificate (each says why); a kvmio client whose own certificate comes from another CA is
/// refused by our server ("not issued by a trusted CA" in its log); our client refuses
/// nbdkit's certificate from another CA.
#[test]
fn wrong_ca_is_refused_by_the_side_that_checks() {
    let w = World::new();
    let other = Ca::new("Other CA");
    let wrong = w.dir("wrong", &[&other.pem], None, None, Some(&other.leaf(false)));
    let mut server = tls_server(Runtime::Threads, &w.server_dir, &[]);
    let t = server.target("disk").with_tls(&wrong);
    nbdinfo(&t)
        .expect_fail()
        .expect_stderr(&["certificate verification"]);
    qemu_img_info(&t)
        .expect_fail()
        .expect_stderr(&["known issuer"]);
    kvmio_info(&t)
        .expect_fail()
        .expect_stderr(&["not issued by a trusted CA"]);
    // our server detects a client certificate from another CA
    let foreign_client = w.dir(
        "foreign-client",
        &[&w.ca.pem, &other.pem],
        None,
        None,
        Some(&other.leaf(false)),
    );
    kvmio_info(&server.target("disk").with_tls(&foreign_client)).expect_fail();
    server.proc.wait_log("not issued by a trusted CA", LOG_WAIT);
    assert_no_session_and_healthy(&mut server, Some(&w.client_dir));

    let (_nbdkit, port) = nbdkit_tls(&w.server_dir);
    kvmio_info(&Target::tcp(port, "").with_tls(&wrong))
        .expect_fail()
        .expect_stderr(&["not issued by a trusted CA"]);
}

fn nbdkit_tls(dir: &Path) -> (Proc, u16) {
    nbdkit(
        Some(PeerTls {
            dir,
            verify_peer: false,
        }),
        &["memory", "1M"],
    )
}

fn qemu_nbd_tls(dir: &Path, extra: &[String]) -> (Proc, u16) {
    let img = dir.join("disk.img");
    std::fs::File::create(&img)
        .and_then(|f| f.set_len(1 << 20))
        .expect("image");
    qemu_nbd(
        &img,
        Some(PeerTls {
            dir,
            verify_peer: true,
        }),
        extra,
    )
}

/// An expired or not-yet-active certificate:
/// * our server refuses to start with it (QEMU-style load-time check naming the problem);
/// * our client refuses it from nbdkit (which serves it);
/// * our client refuses to use such a client certificate of its own;
/// * our server refuses such a client certificate that a gnutls client (nbdinfo) presents.
fn bad_validity(adjust: fn(&mut rcgen::CertificateParams), load_msg: &str, tls_msg: &str) {
    let w = World::new();
    let bad_server = w.ca.leaf_with(true, adjust);
    let bad_dir = w.dir("bad-server", &[&w.ca.pem], None, Some(&bad_server), None);
    let start = run(kvmio()
        .args([
            "nbd",
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--tls",
            "require",
            "--tls-creds",
        ])
        .arg(&bad_dir))
    .expect_fail()
    .expect_stderr(&["server-cert.pem", load_msg]);
    assert!(!start.stderr.contains("kvmio: serving"), "{}", start.stderr);

    let (_nbdkit, port) = nbdkit_tls(&bad_dir);
    kvmio_info(&Target::tcp(port, "").with_tls(&w.client_dir))
        .expect_fail()
        .expect_stderr(&[tls_msg]);

    let bad_client = w.ca.leaf_with(false, adjust);
    let bad_client_dir = w.dir("bad-client", &[&w.ca.pem], None, None, Some(&bad_client));
    let mut server = tls_server(Runtime::Tokio, &w.server_dir, &[]);
    let t = server.target("disk").with_tls(&bad_client_dir);
    kvmio_info(&t)
        .expect_fail()
        .expect_stderr(&["client-cert.pem", load_msg]);
    nbdinfo(&t).expect_fail();
    server.proc.wait_log(tls_msg, LOG_WAIT);
    assert_no_session_and_healthy(&mut server, Some(&w.client_dir));
}

#[test]
fn expired_certificates_are_refused() {
    bad_validity(expired, "expired on", "has expired");
}

#[test]
fn not_yet_active_certificates_are_refused() {
    bad_validity(not_yet_active, "is not yet active", "not valid yet");
}

/// A revoked client certificate (CRL in the server's ca-crl.pem, made by rcgen): nbdinfo,
/// qemu-img and kvmio are refused and our server logs "revoked" for each; a second client
/// certificate of the same CA still gets in. qemu-nbd refuses our client the same way, and
/// our client refuses a server whose certificate its own CRL revokes.
#[test]
fn revoked_certificates_are_refused() {
    let w = World::new();
    let crl = w.ca.crl(&[&w.client_leaf.serial]);
    let server_dir = w.dir(
        "server-crl",
        &[&w.ca.pem],
        Some(&crl),
        Some(&w.server_leaf),
        None,
    );
    let mut server = tls_server(Runtime::Threads, &server_dir, &[]);
    let t = server.target("disk").with_tls(&w.client_dir);
    three_clients_refused(&mut server, &t, "has been revoked");
    let other_client = w.ca.leaf_with(false, client_cn("second.example.com"));
    let good = w.dir(
        "second-client",
        &[&w.ca.pem],
        None,
        None,
        Some(&other_client),
    );
    assert_no_session_and_healthy(&mut server, Some(&good));

    let (qemu, port) = qemu_nbd_tls(&server_dir, &[]);
    kvmio_info(&Target::tcp(port, "disk").with_tls(&w.client_dir)).expect_fail();
    let mut qemu = qemu;
    qemu.wait_log("The certificate has been revoked", LOG_WAIT);

    let client_crl = w.ca.crl(&[&w.server_leaf.serial]);
    let wary = w.dir(
        "client-crl",
        &[&w.ca.pem],
        Some(&client_crl),
        None,
        Some(&w.client_leaf),
    );
    let plain_server = tls_server(Runtime::Tokio, &w.server_dir, &[]);
    kvmio_info(&plain_server.target("disk").with_tls(&wary))
        .expect_fail()
        .expect_stderr(&["has been revoked"]);
}

/// certtool PKI with a CRL made by certtool revoking the client certificate: qemu-io is
/// refused, our server logs the revocation, and a client with a fresh certtool certificate
/// of the same CA gets in.
#[test]
fn certtool_crl_revokes_client_certificate() {
    let tmp = tempdir();
    let pki = certtool_pki(&tmp.path().join("pki"));
    certtool_crl(&pki.dir, &[&pki.dir.join("client-cert.pem")]);
    let mut server = tls_server(Runtime::Threads, &pki.dir, &[]);
    let t = server.target("disk").with_tls(&pki.dir);
    run(&mut t.qemu_io(&["read 0 512"])).expect_fail();
    server.proc.wait_log("has been revoked", LOG_WAIT);
    // a second client certificate from the same CA (certtool again)
    let second = tmp.path().join("second");
    ca_only_dir(&pki.dir, &second);
    certtool_leaf(
        &second,
        "client",
        "organization = Test Org\ncn = second.example.com\ntls_www_client\nencryption_key\n\
         signing_key\nexpiration_days = 30\n",
        &pki.dir,
    );
    run(&mut server
        .target("disk")
        .with_tls(&second)
        .qemu_io(&["read 0 512"]))
    .expect_ok();
    assert!(server.log().contains(SESSION));
}

/// The server certificate names another host only: nbdinfo, qemu-img and kvmio (against our
/// server and against nbdkit) refuse to talk to 127.0.0.1 with it.
#[test]
fn hostname_mismatch_is_refused_by_clients() {
    let w = World::new();
    let other = w.ca.leaf_with(true, other_host);
    let dir = w.dir("other-host", &[&w.ca.pem], None, Some(&other), None);
    let mut server = tls_server(Runtime::Tokio, &dir, &[]);
    let t = server.target("disk").with_tls(&w.client_dir);
    nbdinfo(&t)
        .expect_fail()
        .expect_stderr(&["certificate verification"]);
    qemu_img_info(&t)
        .expect_fail()
        .expect_stderr(&["does not match the hostname"]);
    kvmio_info(&t)
        .expect_fail()
        .expect_stderr(&["does not name the host"]);
    let log = server.log();
    assert!(!log.contains(SESSION), "{log}");
    server.proc.assert_alive();

    let (_nbdkit, port) = nbdkit_tls(&dir);
    kvmio_info(&Target::tcp(port, "").with_tls(&w.client_dir))
        .expect_fail()
        .expect_stderr(&["does not name the host"]);
}

/// verify-peer (the default) and a client without a certificate: nbdinfo, qemu-img and kvmio
/// are refused and our server logs why for each; with `--tls-verify-peer no` the same clients
/// get in. qemu-nbd with verify-peer=on refuses our client without a certificate.
#[test]
fn missing_client_certificate_is_refused_when_verify_peer() {
    let w = World::new();
    let ca_only = w.ca_only();
    let mut server = tls_server(Runtime::Threads, &w.server_dir, &[]);
    let t = server.target("disk").with_tls(&ca_only);
    three_clients_refused(&mut server, &t, "sent no certificate");
    assert_no_session_and_healthy(&mut server, Some(&w.client_dir));

    let mut lenient = tls_server(Runtime::Tokio, &w.server_dir, &["--tls-verify-peer", "no"]);
    let t = lenient.target("disk").with_tls(&ca_only);
    nbdinfo(&t).expect_ok();
    qemu_img_info(&t).expect_ok();
    kvmio_info(&t).expect_ok();
    lenient.proc.assert_alive();

    let (mut qemu, port) = qemu_nbd_tls(&w.server_dir, &[]);
    kvmio_info(&Target::tcp(port, "disk").with_tls(&ca_only)).expect_fail();
    qemu.wait_log("No certificate was found", LOG_WAIT);
}

/// A valid client certificate whose DN is not in `--tls-authz`: nbdinfo, qemu-img and kvmio
/// are refused and our server logs the ACL refusal for each; a certificate with a listed DN
/// (exact or glob) gets in. qemu-nbd's authz-simple refuses our client likewise.
#[test]
fn dn_not_in_tls_authz_is_refused() {
    let w = World::new();
    let allowed = w.ca.leaf_with(false, client_cn("allowed.example.com"));
    let allowed_dir = w.dir("allowed", &[&w.ca.pem], None, None, Some(&allowed));
    let mut server = tls_server(
        Runtime::Tokio,
        &w.server_dir,
        &[
            "--tls-authz",
            "O=Test Org,CN=allowed.example.com",
            "--tls-authz",
            "O=Other Org,*",
        ],
    );
    let t = server.target("disk").with_tls(&w.client_dir);
    let msg = "not in the access list";
    three_clients_refused(&mut server, &t, msg);
    assert_no_session_and_healthy(&mut server, Some(&allowed_dir));

    let mut glob = tls_server(
        Runtime::Threads,
        &w.server_dir,
        &["--tls-authz", "O=Test Org,CN=client.*"],
    );
    kvmio_info(&glob.target("disk").with_tls(&w.client_dir)).expect_ok();
    kvmio_info(&glob.target("disk").with_tls(&allowed_dir)).expect_fail();
    glob.proc.wait_log(msg, LOG_WAIT);

    let (mut qemu, port) = qemu_nbd_tls(
        &w.server_dir,
        &qemu_authz_args("O=Test Org,CN=allowed.example.com"),
    );
    kvmio_info(&Target::tcp(port, "disk").with_tls(&w.client_dir)).expect_fail();
    qemu.wait_log(&format!("authz check for {CLIENT_DN} is denied"), LOG_WAIT);
    kvmio_info(&Target::tcp(port, "disk").with_tls(&allowed_dir)).expect_ok();
}

/// TLS 1.3 is the default on both sides: a TLS 1.2-only peer (QEMU with
/// `priority=NORMAL:-VERS-TLS1.3`) is refused with "no common TLS version" unless `--tls12`
/// is given, for our server (qemu-img as client) and our client (qemu-nbd as server).
#[test]
fn tls12_only_peers_need_the_tls12_flag() {
    let w = World::new();
    let tls12_object = format!(
        "tls-creds-x509,id=tls0,endpoint=client,dir={},priority=NORMAL:-VERS-TLS1.3",
        qemu_escape(&w.client_dir.display().to_string())
    );
    let qemu_img = |port: u16| {
        run(peer("qemu-img")
            .arg("info")
            .args(["--object", &tls12_object, "--image-opts"])
            .arg(format!(
                "driver=nbd,host=127.0.0.1,port={port},export=disk,tls-creds=tls0"
            )))
    };
    let mut strict = tls_server(Runtime::Threads, &w.server_dir, &[]);
    qemu_img(strict.port()).expect_fail();
    strict.proc.wait_log("no common TLS version", LOG_WAIT);
    assert_no_session_and_healthy(&mut strict, Some(&w.client_dir));
    let lenient = tls_server(Runtime::Tokio, &w.server_dir, &["--tls12"]);
    let out = qemu_img(lenient.port()).expect_ok();
    assert!(out.text().contains("1048576"), "{}", out.text());

    // our client against a TLS 1.2-only qemu-nbd
    let img = w.tmp.path().join("disk.img");
    sparse_image(&img, 1 << 20, &[(0, 4096)], 5);
    let (_qemu, port) = qemu_nbd(
        &img,
        None,
        &[
            "--object".into(),
            format!(
                "tls-creds-x509,id=tls0,endpoint=server,dir={},verify-peer=on,\
                 priority=NORMAL:-VERS-TLS1.3",
                qemu_escape(&w.server_dir.display().to_string())
            ),
            "--tls-creds".into(),
            "tls0".into(),
        ],
    );
    let uri = Target::tcp(port, "disk").with_tls(&w.client_dir).uri();
    run(kvmio().args(["nbd", "info", &uri]))
        .expect_fail()
        .expect_stderr(&["no common TLS version"]);
    run(kvmio().args(["nbd", "info", "--tls12", &uri])).expect_ok();
}

/// When our server refuses a client certificate it tells the client why with a TLS alert
/// (RFC 8446 §6.2; tls-glue queues one, as its in-memory tests check), instead of just closing
/// the socket: revoked → certificate_revoked (44), none while verify-peer →
/// certificate_required (116), DN not in `--tls-authz` → access_denied (49), issued by an
/// unknown CA → unknown_ca (48). Checked with our own TLS client over the real socket, which
/// reports the alert it received.
fn server_rejections_reach_the_client_as_tls_alerts(rt: Runtime) {
    let w = World::new();
    let other = Ca::new("Other CA");
    let crl = w.ca.crl(&[&w.client_leaf.serial]);
    let with_crl = w.dir(
        "server-crl",
        &[&w.ca.pem],
        Some(&crl),
        Some(&w.server_leaf),
        None,
    );
    let foreign = w.dir(
        "foreign-client",
        &[&w.ca.pem, &other.pem],
        None,
        None,
        Some(&other.leaf(false)),
    );
    let cases: [(&str, &Path, &[&str], PathBuf, u8); 4] = [
        (
            "revoked client certificate",
            &with_crl,
            &[],
            w.client_dir.clone(),
            44,
        ),
        (
            "no client certificate",
            &w.server_dir,
            &[],
            w.ca_only(),
            116,
        ),
        (
            "DN not in --tls-authz",
            &w.server_dir,
            &["--tls-authz", "O=Test Org,CN=someone-else"],
            w.client_dir.clone(),
            49,
        ),
        (
            "client certificate from an unknown CA",
            &w.server_dir,
            &[],
            foreign,
            48,
        ),
    ];
    let mut wrong = Vec::new();
    for (what, server_dir, extra, client_dir, alert) in cases {
        let mut server = tls_server(rt, server_dir, extra);
        let mut c = kvmio_tests::raw::connect(server.port());
        c.handshake().expect("NBD handshake");
        let r = c.option(OptionType::StartTls, &[]).expect("STARTTLS");
        assert_eq!(r[0].reply, ReplyType::Ack);
        let config = kvmio_tests::tlsio::client_config(&client_dir);
        let mut tls = kvmio_tests::tlsio::TlsStream::client(c.s, &config, "127.0.0.1");
        let _ = tls.handshake();
        let mut byte = [0u8; 1];
        let read = tls.read(&mut byte);
        assert!(
            read.is_err() || read.is_ok_and(|n| n == 0),
            "{what}: the server let us in"
        );
        server.proc.assert_alive();
        let got = tls.error();
        if got != Some(tls_glue::TlsError::PeerAlert(alert)) {
            wrong.push(format!(
                "{what}: expected alert {alert}, the client saw {got:?}"
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "the server closed without telling the client why:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn server_rejections_reach_the_client_as_tls_alerts_threads() {
    server_rejections_reach_the_client_as_tls_alerts(Runtime::Threads);
}

#[test]
fn server_rejections_reach_the_client_as_tls_alerts_tokio() {
    server_rejections_reach_the_client_as_tls_alerts(Runtime::Tokio);
}
