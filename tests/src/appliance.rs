//! The emulated KVM-over-IP appliance: Debian's kernel in `qemu-system-x86_64` (TCG) with
//! vivid as the capture card, dummy_hcd as the USB device controller whose host side is the
//! "target computer" on the same kernel, and the release `kvmio` inside
//! (`tests/appliance/build.sh` makes the kernel and initramfs, `tests/appliance/init` boots
//! it). The test talks to `appliance-agent` in the guest through a forwarded port; guest
//! ports it asks for are forwarded to free ports on 127.0.0.1; a host directory is shared
//! at `/mnt/host` (virtio-9p).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tempfile::TempDir;

use crate::{free_port, kvmio_bin};

/// The address at which the guest reaches the host services of [`Appliance::boot_full`].
pub const HOST_IP: &str = "10.0.2.100";

/// The agent's guest port.
const AGENT_PORT: u16 = 7000;
/// How long a boot may take under TCG on a loaded 2-core machine (about 5 s idle).
const BOOT_DEADLINE: Duration = Duration::from_secs(180);

/// What a command in the guest did.
#[derive(Debug, Clone)]
pub struct GuestOut {
    /// Exit code (`None`: killed at the timeout).
    pub code: Option<i64>,
    /// Standard output.
    pub stdout: String,
    /// Standard error.
    pub stderr: String,
}

/// A booted appliance; dropping it powers the VM off.
pub struct Appliance {
    qemu: Child,
    agent: BufReader<TcpStream>,
    ports: HashMap<u16, u16>,
    share: TempDir,
    serial: PathBuf,
    boot_time: Duration,
    _work: TempDir,
}

fn workspace_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_path_buf()
}

/// The agent binary next to the kvmio one (both are built by `cargo build --release`).
fn agent_bin() -> PathBuf {
    let kvmio = kvmio_bin();
    let p = kvmio.with_file_name("appliance-agent");
    assert!(
        p.is_file(),
        "{} is missing: build it with `cargo build --release -p kvmio-tests --bins` \
         (tests/run.sh does)",
        p.display()
    );
    p
}

impl Appliance {
    /// Boots with `guest_ports` forwarded (see [`port`](Self::port)).
    pub fn boot(guest_ports: &[u16]) -> Self {
        Self::boot_with(guest_ports, &[])
    }

    /// Boots with `guest_ports` forwarded and `programs` (host binaries, with their
    /// libraries) in the guest's `/usr/bin` besides kvmio and the agent.
    pub fn boot_with(guest_ports: &[u16], programs: &[&Path]) -> Self {
        Self::boot_full(guest_ports, programs, &[])
    }

    /// [`boot_with`](Self::boot_with), and each host port in `host_ports` (a server on the
    /// host's 127.0.0.1) reachable from the guest at [`HOST_IP`]`:port`: the guest reaches
    /// nothing else outside (QEMU's `restrict=on`).
    pub fn boot_full(guest_ports: &[u16], programs: &[&Path], host_ports: &[u16]) -> Self {
        let work = tempfile::Builder::new()
            .prefix("kvmio-appliance-")
            .tempdir()
            .expect("tempdir");
        let share = tempfile::Builder::new()
            .prefix("kvmio-share-")
            .tempdir()
            .expect("tempdir");
        let build = workspace_dir().join("tests/appliance/build.sh");
        let out_dir = workspace_dir().join("target/appliance");
        let progs = work.path().join("programs.cpio.gz");
        let mut cmd = Command::new(&build);
        cmd.env("APPLIANCE_DIR", &out_dir)
            .arg(&progs)
            .arg(kvmio_bin())
            .arg(agent_bin())
            .args(programs);
        let st = cmd.status().expect("run tests/appliance/build.sh");
        assert!(st.success(), "tests/appliance/build.sh failed: {st}");
        // The kernel unpacks concatenated archives in order: the base, then the programs.
        let initrd = work.path().join("initrd.gz");
        let mut all = std::fs::read(out_dir.join("base.cpio.gz")).expect("base.cpio.gz");
        all.extend(std::fs::read(&progs).expect("programs.cpio.gz"));
        std::fs::write(&initrd, all).expect("initrd");

        let mut ports = HashMap::new();
        let mut nic = String::from("user,model=virtio-net-pci,restrict=on");
        for g in std::iter::once(AGENT_PORT).chain(guest_ports.iter().copied()) {
            let h = free_port();
            ports.insert(g, h);
            nic.push_str(&format!(",hostfwd=tcp:127.0.0.1:{h}-:{g}"));
        }
        // One tcp-pipe per guest connection: QEMU's `-tcp:` form would open a single
        // connection at start, which a server that speaks first (NBD) greets too early.
        let pipe = kvmio_bin().with_file_name("tcp-pipe");
        assert!(
            pipe.is_file(),
            "{} is missing: build it with `cargo build --release -p kvmio-tests --bins`",
            pipe.display()
        );
        for p in host_ports {
            nic.push_str(&format!(
                ",guestfwd=tcp:{HOST_IP}:{p}-cmd:{} 127.0.0.1:{p}",
                pipe.display()
            ));
        }
        let serial = work.path().join("serial.log");
        let qemu_bin = crate::tool("qemu-system-x86_64");
        let mut q = Command::new(qemu_bin);
        q.args(["-accel", "tcg", "-m", "1024", "-smp", "2", "-no-reboot"])
            .arg("-kernel")
            .arg(out_dir.join("vmlinuz"))
            .arg("-initrd")
            .arg(&initrd)
            .args(["-append", "console=ttyS0 quiet panic=-1"])
            .args(["-display", "none", "-monitor", "none"])
            .arg("-serial")
            .arg(format!("file:{}", serial.display()))
            .args(["-nic", &nic])
            .arg("-virtfs")
            .arg(format!(
                "local,path={},mount_tag=host0,security_model=none,id=host0",
                share.path().display()
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let t0 = Instant::now();
        let mut qemu = q.spawn().expect("start qemu-system-x86_64");
        let agent_port = ports[&AGENT_PORT];
        let agent = loop {
            if let Some(st) = qemu.try_wait().expect("qemu") {
                panic!(
                    "qemu exited during boot ({st}); serial console:\n{}",
                    std::fs::read_to_string(&serial).unwrap_or_default()
                );
            }
            // QEMU accepts on the forwarded port before the guest listens; a working agent
            // answers a request.
            if let Ok(s) = TcpStream::connect(("127.0.0.1", agent_port)) {
                s.set_read_timeout(Some(Duration::from_secs(2))).ok();
                let mut r = BufReader::new(s);
                let ok = writeln!(r.get_mut(), "{}", json!({"cmd": "poweroff_not"})).is_ok() && {
                    let mut line = String::new();
                    r.read_line(&mut line).is_ok_and(|n| n > 0)
                };
                if ok {
                    r.get_ref().set_read_timeout(None).ok();
                    break r;
                }
            }
            assert!(
                t0.elapsed() < BOOT_DEADLINE,
                "the appliance did not come up in {BOOT_DEADLINE:?}; serial console:\n{}",
                std::fs::read_to_string(&serial).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(200));
        };
        let boot_time = t0.elapsed();
        eprintln!("appliance: booted in {boot_time:.1?} (TCG)");
        Self {
            qemu,
            agent,
            ports,
            share,
            serial,
            boot_time,
            _work: work,
        }
    }

    /// Time from starting QEMU to the agent's first answer.
    pub fn boot_time(&self) -> Duration {
        self.boot_time
    }

    /// The host port (on 127.0.0.1) forwarded to `guest_port`.
    pub fn port(&self, guest_port: u16) -> u16 {
        *self
            .ports
            .get(&guest_port)
            .unwrap_or_else(|| panic!("guest port {guest_port} was not forwarded at boot"))
    }

    /// The host directory the guest sees at `/mnt/host`.
    pub fn share(&self) -> &Path {
        self.share.path()
    }

    /// The serial console so far (the kernel's and init's messages).
    pub fn serial(&self) -> String {
        std::fs::read_to_string(&self.serial).unwrap_or_default()
    }

    /// Sends one request and returns the reply; panics (with the console) if the agent
    /// reports an error.
    #[track_caller]
    pub fn call(&mut self, req: Value) -> Value {
        match self.try_call(req.clone()) {
            Ok(v) => v,
            Err(e) => panic!(
                "appliance agent: {req}: {e}\nserial console:\n{}",
                self.serial()
            ),
        }
    }

    /// Sends one request; the agent's error as `Err`.
    pub fn try_call(&mut self, req: Value) -> Result<Value, String> {
        writeln!(self.agent.get_mut(), "{req}").map_err(|e| format!("send: {e}"))?;
        let mut line = String::new();
        self.agent
            .read_line(&mut line)
            .map_err(|e| format!("receive: {e}"))?;
        if line.is_empty() {
            return Err("the agent closed the connection".into());
        }
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("reply {line:?}: {e}"))?;
        if v["ok"] == true {
            Ok(v)
        } else {
            Err(v["error"].as_str().unwrap_or("?").to_string())
        }
    }

    /// Runs a command in the guest (60 s at most).
    pub fn run(&mut self, argv: &[&str]) -> GuestOut {
        self.run_input(argv, "")
    }

    /// Runs a command with `stdin`.
    pub fn run_input(&mut self, argv: &[&str], stdin: &str) -> GuestOut {
        let v =
            self.call(json!({"cmd": "run", "argv": argv, "stdin": stdin, "timeout_ms": 60_000}));
        GuestOut {
            code: v["code"].as_i64(),
            stdout: v["stdout"].as_str().unwrap_or_default().to_string(),
            stderr: v["stderr"].as_str().unwrap_or_default().to_string(),
        }
    }

    /// Runs a command that must succeed; returns its standard output.
    #[track_caller]
    pub fn run_ok(&mut self, argv: &[&str]) -> String {
        let o = self.run(argv);
        assert_eq!(
            o.code,
            Some(0),
            "in the guest: {argv:?} failed\n--- stdout\n{}\n--- stderr\n{}",
            o.stdout,
            o.stderr
        );
        o.stdout
    }

    /// `sh -c SCRIPT`, which must succeed.
    #[track_caller]
    pub fn sh(&mut self, script: &str) -> String {
        self.run_ok(&["sh", "-c", script])
    }

    /// Starts a command in the background; returns its id.
    pub fn spawn(&mut self, argv: &[&str]) -> u64 {
        self.call(json!({"cmd": "spawn", "argv": argv}))["id"]
            .as_u64()
            .expect("id")
    }

    /// Waits up to `timeout` for a spawned command; its exit code, `None` if still running.
    pub fn wait(&mut self, id: u64, timeout: Duration) -> Option<i64> {
        self.call(json!({"cmd": "wait", "id": id, "timeout_ms": timeout.as_millis() as u64}))
            ["code"]
            .as_i64()
    }

    /// Kills a spawned command.
    pub fn kill(&mut self, id: u64) {
        self.call(json!({"cmd": "kill", "id": id}));
    }

    /// A spawned command's (stdout, stderr) so far.
    pub fn output(&mut self, id: u64) -> (String, String) {
        let v = self.call(json!({"cmd": "output", "id": id}));
        (
            v["stdout"].as_str().unwrap_or_default().to_string(),
            v["stderr"].as_str().unwrap_or_default().to_string(),
        )
    }

    /// Waits until a spawned command's stderr (or stdout) contains `needle`; returns both.
    #[track_caller]
    pub fn wait_output(&mut self, id: u64, needle: &str, timeout: Duration) -> String {
        let end = Instant::now() + timeout;
        loop {
            let (o, e) = self.output(id);
            let all = format!("{o}{e}");
            if all.contains(needle) {
                return all;
            }
            if let Some(code) = self.wait(id, Duration::ZERO) {
                let (o, e) = self.output(id);
                panic!("in the guest: process {id} exited ({code}) before {needle:?}:\n{o}{e}");
            }
            assert!(
                Instant::now() < end,
                "in the guest: no {needle:?} in:\n{all}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Writes a file in the guest.
    pub fn write_file(&mut self, path: &str, data: &[u8]) {
        let hex: String = data.iter().map(|b| format!("{b:02x}")).collect();
        self.call(json!({"cmd": "write_file", "path": path, "hex": hex}));
    }

    /// Reads a file in the guest.
    pub fn read_file(&mut self, path: &str) -> Vec<u8> {
        let v = self.call(json!({"cmd": "read_file", "path": path}));
        let h = v["hex"].as_str().expect("hex");
        (0..h.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&h[i..i + 2], 16).expect("hex"))
            .collect()
    }

    /// The first `/dev/input/eventN` whose sysfs `phys` contains `phys`, waiting up to 20 s
    /// for it to appear (the target enumerates the gadget after it is bound).
    #[track_caller]
    pub fn evfind(&mut self, phys: &str) -> String {
        let end = Instant::now() + Duration::from_secs(20);
        loop {
            match self.try_call(json!({"cmd": "evfind", "phys": phys})) {
                Ok(v) => return v["path"].as_str().expect("path").to_string(),
                Err(e) => assert!(Instant::now() < end, "{e}\n{}", self.serial()),
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Starts recording an event node; returns the recorder.
    pub fn ev_start(&mut self, path: &str) -> u64 {
        self.call(json!({"cmd": "ev_start", "path": path}))["id"]
            .as_u64()
            .expect("id")
    }

    /// Up to `count` recorded events `(type, code, value)` (EV_SYN and EV_MSC left out),
    /// waiting at most `timeout` for them.
    pub fn ev_take(&mut self, id: u64, count: usize, timeout: Duration) -> Vec<(u16, u16, i32)> {
        let v = self.call(json!({
            "cmd": "ev_take", "id": id, "count": count, "timeout_ms": timeout.as_millis() as u64
        }));
        v["events"]
            .as_array()
            .expect("events")
            .iter()
            .map(|e| {
                (
                    e[0].as_u64().unwrap() as u16,
                    e[1].as_u64().unwrap() as u16,
                    e[2].as_i64().unwrap() as i32,
                )
            })
            .collect()
    }

    /// Stops a recorder.
    pub fn ev_stop(&mut self, id: u64) {
        self.call(json!({"cmd": "ev_stop", "id": id}));
    }

    /// Writes an input event (and SYN_REPORT) to an event node: EV_LED on a keyboard's node
    /// makes the target send the LED output report to the gadget.
    pub fn evwrite(&mut self, path: &str, ty: u16, code: u16, value: i32) {
        self.call(
            json!({"cmd": "evwrite", "path": path, "type": ty, "code": code, "value": value}),
        );
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        let _ = self.try_call(json!({"cmd": "poweroff"}));
        let end = Instant::now() + Duration::from_secs(10);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.qemu.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.qemu.kill();
        let _ = self.qemu.wait();
    }
}

/// How many updates the VNC server's log says were sent as another viewer's encode (the
/// "disconnected after N updates (M of them another viewer's encode)" lines, summed).
pub fn shared_encodes(log: &str) -> u64 {
    log.lines()
        .filter_map(|l| {
            l.split_once(" updates (")?
                .1
                .split_once(" of them")?
                .0
                .parse::<u64>()
                .ok()
        })
        .sum()
}
