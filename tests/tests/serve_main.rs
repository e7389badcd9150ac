//! `kvmio serve`, the main job: out of the box (generated development credentials, the
//! commands it prints work as printed), a TOML configuration, and a clean stop on SIGTERM with
//! every write flushed.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use kvmio_tests::vnc::{GvncPki, read_png};
use kvmio_tests::{Proc, kvmio_bin, nbdsh, run, tempdir};

/// Starts `kvmio serve` with its own data directory; waits until both services listen and the
/// connection commands are printed. Returns the process and the printed commands.
fn serve(home: &Path, args: &[&str]) -> (Proc, Vec<String>) {
    let mut cmd = Command::new(kvmio_bin());
    cmd.arg("serve")
        .args(args)
        .env("XDG_DATA_HOME", home.join("data"))
        .env_remove("RUST_LOG");
    let mut p = Proc::spawn("kvmio serve", cmd);
    let log = p.wait_log("gvnccapture 1", Duration::from_secs(30));
    let commands = log
        .lines()
        .skip_while(|l| !l.starts_with("Connect with:"))
        .skip(1)
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect::<Vec<_>>();
    (p, commands)
}

/// Runs a printed command line (with `sh -c`, as a user would paste it) in `cwd`.
fn sh(line: &str, cwd: &Path) -> kvmio_tests::Out {
    let line = line.replace("kvmio ", &format!("{} ", kvmio_bin().display()));
    run(Command::new("sh").arg("-c").arg(&line).current_dir(cwd))
}

fn ports(log: &str) -> (u16, u16) {
    let port = |label: &str| {
        log.lines()
            .find(|l| l.starts_with(&format!("kvmio: {label} serving")))
            .and_then(|l| l.rsplit(':').next())
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or_else(|| panic!("no {label} line in\n{log}"))
    };
    (port("vnc"), port("nbd"))
}

#[test]
fn out_of_the_box_with_generated_development_credentials_and_printed_commands() {
    let home = tempdir();
    // The defaults are 127.0.0.1:5900 and :10809; other tests use free ports, so take the
    // defaults' shape but free ports here too (the same code path builds the defaults).
    let vnc = kvmio_tests::free_port();
    let nbd = kvmio_tests::free_port();
    let (mut p, commands) = serve(
        home.path(),
        &[
            "--vnc-listen",
            &format!("127.0.0.1:{vnc}"),
            "--nbd-listen",
            &format!("127.0.0.1:{nbd}"),
        ],
    );
    let log = p.log();
    assert!(log.contains("generated DEVELOPMENT credentials"), "{log}");
    assert_eq!(ports(&log), (vnc, nbd));
    let pki = home.path().join("data/kvmio/dev-pki");
    for f in [
        "ca-cert.pem",
        "server-cert.pem",
        "server-key.pem",
        "client-cert.pem",
        "client-key.pem",
    ] {
        assert!(pki.join(f).exists(), "{f} missing");
    }
    // TLS is required: a plaintext client learns nothing.
    run(Command::new("nbdinfo").arg(format!("nbd://127.0.0.1:{nbd}/disk"))).expect_fail();
    // Every printed command works as printed.
    let work = tempdir();
    let mut ran = Vec::new();
    for c in &commands {
        let first = c.split_whitespace().next().unwrap_or_default();
        match first {
            "kvmio" | "nbdinfo" | "qemu-img" => {
                sh(c, work.path()).expect_ok();
                ran.push(first.to_string());
            }
            "gvnccapture" if c.contains("reads its certificates") => {}
            "gvnccapture" => {
                let _pki = GvncPki::install(&pki, true);
                sh(&format!("timeout 30 {c}"), work.path()).expect_ok();
                ran.push(first.to_string());
            }
            _ => panic!("unexpected printed line {c:?}"),
        }
    }
    for tool in ["kvmio", "nbdinfo", "qemu-img", "gvnccapture"] {
        assert!(
            ran.iter().any(|r| r == tool),
            "no {tool} command printed: {commands:?}"
        );
    }
    let copied =
        std::fs::metadata(work.path().join("disk.img")).expect("kvmio nbd copy wrote disk.img");
    assert_eq!(copied.len(), 64 << 20);
    let screen = read_png(&work.path().join("screen.png"));
    assert_eq!((screen.width, screen.height), (1024, 768));
    // Second start: the credentials are reused, with the warning.
    p.stop();
    let (p2, _) = serve(
        home.path(),
        &[
            "--vnc-listen",
            &format!("127.0.0.1:{vnc}"),
            "--nbd-listen",
            &format!("127.0.0.1:{nbd}"),
        ],
    );
    assert!(
        p2.log().contains("using DEVELOPMENT credentials"),
        "{}",
        p2.log()
    );
}

#[test]
fn configuration_file_and_clean_stop_flushes_writes() {
    let home = tempdir();
    let pki = home.path().join("pki");
    run(Command::new(kvmio_bin())
        .args(["creds", "generate"])
        .arg(&pki))
    .expect_ok();
    let image = home.path().join("disk.img");
    std::fs::write(&image, vec![0u8; 4 << 20]).unwrap();
    let (vnc, nbd) = (kvmio_tests::free_port(), kvmio_tests::free_port());
    let config = home.path().join("kvmio.toml");
    std::fs::write(
        &config,
        format!(
            r#"runtime = "tokio"
[tls]
mode = "require"
creds = "{}"
[vnc]
listen = ["127.0.0.1:{vnc}"]
size = "320x200"
[nbd]
listen = ["127.0.0.1:{nbd}"]
[[nbd.exports]]
name = "disk"
path = "{}"
[[nbd.exports]]
name = "scratch"
memory = "1M"
"#,
            pki.display(),
            image.display()
        ),
    )
    .unwrap();
    let (mut p, _) = serve(home.path(), &["--config", config.to_str().unwrap()]);
    assert!(!p.log().contains("DEVELOPMENT"), "{}", p.log());
    let uri = format!(
        "nbds://127.0.0.1:{nbd}/disk?tls-certificates={}",
        pki.display()
    );
    // A client writes without flushing, then the server is told to stop while the client is
    // still connected: the data must be on disk and the client must see a clean end.
    let script = format!(
        "h.set_uri_allow_local_file(True)\nh.connect_uri({uri:?})\nh.pwrite(b'kvmio' * 1000, 8192)\nprint('written', flush=True)\nimport time\ntime.sleep(3)\n"
    );
    let mut client_cmd = nbdsh();
    client_cmd.args(["-c", &script]);
    let mut client = Proc::spawn("nbdsh", client_cmd);
    let end = std::time::Instant::now() + Duration::from_secs(20);
    while !client.stdout().contains("written") {
        client.assert_alive();
        assert!(
            std::time::Instant::now() < end,
            "client did not write: {}",
            client.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    rustix::process::kill_process(
        rustix::process::Pid::from_raw(p.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    )
    .unwrap();
    let st = p.wait_exit(Duration::from_secs(15));
    assert!(st.success(), "kvmio serve exited with {st}\n{}", p.log());
    let log = p.log();
    assert!(
        log.contains("closing for shutdown") && log.contains("kvmio: stopped"),
        "{log}"
    );
    let data = std::fs::read(&image).unwrap();
    assert_eq!(&data[8192..8192 + 5000], "kvmio".repeat(1000).as_bytes());
    let _ = std::fs::remove_dir_all(home.path().join("data"));
}
