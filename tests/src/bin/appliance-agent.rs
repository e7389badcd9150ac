//! The test agent inside the emulated appliance (tests/appliance/init starts it): a TCP
//! server on port 7000 that the host side (`tests/tests/common/appliance.rs`) reaches through
//! QEMU's port forward. One JSON request per line, one JSON reply per line; every reply has
//! `"ok": true` or `"ok": false` with an `"error"`.
//!
//! | cmd | fields | reply |
//! |---|---|---|
//! | `run` | `argv`, `stdin`?, `timeout_ms`? | `code` (null if killed), `stdout`, `stderr` |
//! | `spawn` | `argv` | `id`; output goes to files |
//! | `wait` | `id`, `timeout_ms` | `code` (null: still running) |
//! | `kill` | `id` | `code` |
//! | `output` | `id` | `stdout`, `stderr` so far |
//! | `write_file` | `path`, `hex` | |
//! | `read_file` | `path` | `hex` |
//! | `evfind` | `phys` or `name` (substring) | `path` of the first `/dev/input/eventN` whose sysfs `phys`/`name` contains it |
//! | `ev_start` | `path` | `id`: events are recorded from now on |
//! | `ev_take` | `id`, `count`, `timeout_ms` | `events`: `[type, code, value]` without EV_SYN and EV_MSC, once `count` arrived or at the timeout |
//! | `ev_stop` | `id` | |
//! | `evwrite` | `path`, `type`, `code`, `value` | the event and a SYN_REPORT written |
//! | `poweroff` | | the machine powers off after the reply |
//!
//! It is test equipment, run only inside the VM the test boots, with the VM's root rights.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// `struct input_event` on x86_64: a 16-byte timeval, u16 type, u16 code, i32 value.
const EVENT_LEN: usize = 24;

type Events = Arc<(Mutex<(Vec<[i64; 3]>, bool)>, Condvar)>;

#[derive(Default)]
struct Agent {
    children: HashMap<u64, (Child, PathBuf, PathBuf)>,
    recorders: HashMap<u64, Events>,
    next: u64,
}

fn main() {
    let listener = TcpListener::bind("0.0.0.0:7000").expect("bind 0.0.0.0:7000");
    eprintln!("appliance-agent: listening on 7000");
    let agent = Arc::new(Mutex::new(Agent::default()));
    for s in listener.incoming() {
        let Ok(s) = s else { continue };
        let agent = agent.clone();
        std::thread::spawn(move || serve(s, &agent));
    }
}

fn serve(s: TcpStream, agent: &Mutex<Agent>) {
    let mut out = match s.try_clone() {
        Ok(o) => o,
        Err(_) => return,
    };
    for line in BufReader::new(s).lines() {
        let Ok(line) = line else { return };
        let (reply, off) = match serde_json::from_str::<Value>(&line) {
            Ok(req) => {
                let off = req["cmd"] == "poweroff";
                (handle(&req, agent), off)
            }
            Err(e) => (Err(format!("bad request: {e}")), false),
        };
        let reply = match reply {
            Ok(mut v) => {
                v["ok"] = json!(true);
                v
            }
            Err(e) => json!({"ok": false, "error": e}),
        };
        if writeln!(out, "{reply}").is_err() {
            return;
        }
        if off {
            let _ = out.flush();
            std::thread::sleep(Duration::from_millis(100));
            let _ = Command::new("poweroff").arg("-f").status();
        }
    }
}

fn str_field<'a>(req: &'a Value, k: &str) -> Result<&'a str, String> {
    req[k]
        .as_str()
        .ok_or_else(|| format!("missing string field {k:?}"))
}

fn u64_field(req: &Value, k: &str) -> Result<u64, String> {
    req[k]
        .as_u64()
        .ok_or_else(|| format!("missing number field {k:?}"))
}

fn argv(req: &Value) -> Result<Command, String> {
    let v: Vec<&str> = req["argv"]
        .as_array()
        .ok_or("missing argv")?
        .iter()
        .map(|a| a.as_str().ok_or("argv must be strings"))
        .collect::<Result<_, _>>()?;
    let (prog, args) = v.split_first().ok_or("empty argv")?;
    let mut c = Command::new(prog);
    c.args(args);
    Ok(c)
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn unhex(s: &str) -> Result<Vec<u8>, String> {
    if !s.len().is_multiple_of(2) {
        return Err("odd hex length".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|e| e.to_string()))
        .collect()
}

fn wait_timeout(c: &mut Child, timeout: Duration) -> Result<Option<i32>, String> {
    let end = Instant::now() + timeout;
    loop {
        if let Some(st) = c.try_wait().map_err(|e| e.to_string())? {
            return Ok(Some(st.code().unwrap_or(-1)));
        }
        if Instant::now() >= end {
            return Ok(None);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn handle(req: &Value, agent: &Mutex<Agent>) -> Result<Value, String> {
    let cmd = str_field(req, "cmd")?;
    let timeout = Duration::from_millis(req["timeout_ms"].as_u64().unwrap_or(60_000));
    match cmd {
        "run" => {
            let mut c = argv(req)?;
            let dir = tempfile_dir();
            let (o, e) = (dir.join("out"), dir.join("err"));
            c.stdin(Stdio::piped())
                .stdout(File::create(&o).map_err(|e| e.to_string())?)
                .stderr(File::create(&e).map_err(|e| e.to_string())?);
            let mut child = c.spawn().map_err(|e| format!("{}: {e}", req["argv"]))?;
            if let Some(mut si) = child.stdin.take() {
                let input = req["stdin"].as_str().unwrap_or("").as_bytes().to_vec();
                std::thread::spawn(move || {
                    let _ = si.write_all(&input);
                });
            }
            let code = wait_timeout(&mut child, timeout)?;
            if code.is_none() {
                let _ = child.kill();
                let _ = child.wait();
            }
            let r = json!({
                "code": code,
                "stdout": String::from_utf8_lossy(&std::fs::read(&o).unwrap_or_default()),
                "stderr": String::from_utf8_lossy(&std::fs::read(&e).unwrap_or_default()),
            });
            let _ = std::fs::remove_dir_all(&dir);
            Ok(r)
        }
        "spawn" => {
            let mut c = argv(req)?;
            let dir = tempfile_dir();
            let (o, e) = (dir.join("out"), dir.join("err"));
            c.stdin(Stdio::null())
                .stdout(File::create(&o).map_err(|e| e.to_string())?)
                .stderr(File::create(&e).map_err(|e| e.to_string())?);
            let child = c.spawn().map_err(|e| format!("{}: {e}", req["argv"]))?;
            let mut a = agent.lock().unwrap();
            a.next += 1;
            let id = a.next;
            a.children.insert(id, (child, o, e));
            Ok(json!({"id": id}))
        }
        "wait" | "kill" | "output" => {
            let id = u64_field(req, "id")?;
            // Waiting must not hold the lock for long: poll with short holds.
            let end = Instant::now() + timeout;
            loop {
                let mut a = agent.lock().unwrap();
                let (child, o, e) = a.children.get_mut(&id).ok_or("no such process")?;
                if cmd == "output" {
                    return Ok(json!({
                        "stdout": String::from_utf8_lossy(&std::fs::read(&*o).unwrap_or_default()),
                        "stderr": String::from_utf8_lossy(&std::fs::read(&*e).unwrap_or_default()),
                    }));
                }
                if cmd == "kill" {
                    let _ = child.kill();
                    let st = child.wait().map_err(|e| e.to_string())?;
                    return Ok(json!({"code": st.code()}));
                }
                if let Some(st) = child.try_wait().map_err(|e| e.to_string())? {
                    return Ok(json!({"code": st.code().unwrap_or(-1)}));
                }
                drop(a);
                if Instant::now() >= end {
                    return Ok(json!({"code": null}));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        "write_file" => {
            let data = unhex(str_field(req, "hex")?)?;
            std::fs::write(str_field(req, "path")?, data).map_err(|e| e.to_string())?;
            Ok(json!({}))
        }
        "read_file" => {
            let data = std::fs::read(str_field(req, "path")?).map_err(|e| e.to_string())?;
            Ok(json!({"hex": hex(&data)}))
        }
        "evfind" => {
            let (key, pat) = if let Some(p) = req["phys"].as_str() {
                ("phys", p)
            } else {
                ("name", str_field(req, "name")?)
            };
            let mut found: Vec<String> = Vec::new();
            for e in std::fs::read_dir("/sys/class/input").map_err(|e| e.to_string())? {
                let e = e.map_err(|e| e.to_string())?;
                let n = e.file_name().to_string_lossy().into_owned();
                if !n.starts_with("event") {
                    continue;
                }
                let v =
                    std::fs::read_to_string(e.path().join("device").join(key)).unwrap_or_default();
                if v.contains(pat) {
                    found.push(format!("/dev/input/{n}"));
                }
            }
            found.sort();
            match found.first() {
                Some(p) => Ok(json!({"path": p})),
                None => Err(format!("no input device whose {key} contains {pat:?}")),
            }
        }
        "ev_start" => {
            let path = str_field(req, "path")?.to_string();
            let file = File::open(&path).map_err(|e| format!("{path}: {e}"))?;
            let events: Events = Arc::new((Mutex::new((Vec::new(), false)), Condvar::new()));
            let ev = events.clone();
            std::thread::spawn(move || record(file, &ev));
            let mut a = agent.lock().unwrap();
            a.next += 1;
            let id = a.next;
            a.recorders.insert(id, events);
            Ok(json!({"id": id}))
        }
        "ev_take" => {
            let id = u64_field(req, "id")?;
            let count = u64_field(req, "count")? as usize;
            let events = agent
                .lock()
                .unwrap()
                .recorders
                .get(&id)
                .cloned()
                .ok_or("no such recorder")?;
            let (m, cv) = &*events;
            let end = Instant::now() + timeout;
            let mut g = m.lock().unwrap();
            while g.0.len() < count {
                let now = Instant::now();
                if now >= end {
                    break;
                }
                g = cv.wait_timeout(g, end - now).unwrap().0;
            }
            let n = g.0.len().min(count);
            let taken: Vec<[i64; 3]> = g.0.drain(..n).collect();
            Ok(json!({"events": taken}))
        }
        "ev_stop" => {
            let id = u64_field(req, "id")?;
            if let Some(ev) = agent.lock().unwrap().recorders.remove(&id) {
                ev.0.lock().unwrap().1 = true;
            }
            Ok(json!({}))
        }
        "evwrite" => {
            let path = str_field(req, "path")?;
            let mut f = OpenOptions::new()
                .write(true)
                .open(path)
                .map_err(|e| format!("{path}: {e}"))?;
            let mut buf = Vec::new();
            for (t, c, v) in [
                (
                    u64_field(req, "type")?,
                    u64_field(req, "code")?,
                    req["value"].as_i64().ok_or("value")?,
                ),
                (0, 0, 0),
            ] {
                buf.extend_from_slice(&[0u8; 16]);
                buf.extend_from_slice(&(t as u16).to_ne_bytes());
                buf.extend_from_slice(&(c as u16).to_ne_bytes());
                buf.extend_from_slice(&(v as i32).to_ne_bytes());
            }
            f.write_all(&buf).map_err(|e| e.to_string())?;
            Ok(json!({}))
        }
        "poweroff" => Ok(json!({})),
        other => Err(format!("unknown cmd {other:?}")),
    }
}

/// Reads events until stopped; polls so that a stopped recorder lets go of the node.
fn record(mut file: File, events: &Events) {
    let (m, cv) = &**events;
    let mut pending = Vec::new();
    let mut buf = [0u8; EVENT_LEN * 64];
    loop {
        if m.lock().unwrap().1 {
            return;
        }
        let mut fds = [rustix::event::PollFd::new(
            &file,
            rustix::event::PollFlags::IN,
        )];
        let ready = rustix::event::poll(
            &mut fds,
            Some(&rustix::event::Timespec {
                tv_sec: 0,
                tv_nsec: 100_000_000,
            }),
        );
        match ready {
            Ok(0) | Err(rustix::io::Errno::INTR) => continue,
            Ok(_) => {}
            Err(_) => return,
        }
        let n = match file.read(&mut buf) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        let whole = pending.len() / EVENT_LEN * EVENT_LEN;
        let mut g = m.lock().unwrap();
        for e in pending[..whole].chunks_exact(EVENT_LEN) {
            let t = u16::from_ne_bytes([e[16], e[17]]);
            let c = u16::from_ne_bytes([e[18], e[19]]);
            let v = i32::from_ne_bytes([e[20], e[21], e[22], e[23]]);
            // EV_SYN and EV_MSC (scan codes) carry nothing a test asks about.
            if t != 0 && t != 4 {
                g.0.push([i64::from(t), i64::from(c), i64::from(v)]);
            }
        }
        drop(g);
        pending.drain(..whole);
        cv.notify_all();
    }
}

fn tempfile_dir() -> PathBuf {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let d = Path::new("/tmp").join(format!("agent-{}-{n}", std::process::id()));
    let _ = std::fs::create_dir_all(&d);
    d
}
