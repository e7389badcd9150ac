#!/usr/bin/env python3
"""A burst of NBD clients over TLS, kvmio (tokio and threads) side by side with qemu-nbd and
nbdkit, in one run.

N clients connect at once (`kvmio-load nbd-burst`, the same client program for every server);
each does fixed newstyle, STARTTLS, TLS 1.3 with a client certificate, GO, four 64 KiB READs
compared with the file, a WRITE + FLUSH + READ back of its own 4 KiB block, and DISC. Every
server serves the same file with the same certificates (`kvmio creds generate`) and gets a
fresh start each round; rounds are interleaved and the median time is reported, with the
server's CPU time per connection and the kernel's listen-queue counters (TcpExt
ListenOverflows, ListenDrops, SyncookiesSent from /proc/net/netstat) over the run.

Usage: bench/burst.py [--clients 1000] [--rounds 5] [--size-mib 128]
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, time, json

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--clients", type=int, default=1000)
ap.add_argument("--rounds", type=int, default=5)
ap.add_argument("--size-mib", type=int, default=128)
ap.add_argument("--target", default=os.path.join(here, "..", "target", "release"))
args = ap.parse_args()
KVMIO = os.path.abspath(os.path.join(args.target, "kvmio"))
LOAD = os.path.abspath(os.path.join(args.target, "kvmio-load"))
for tool in ["qemu-nbd", "nbdkit"]:
    if not shutil.which(tool):
        sys.exit(f"missing {tool}: run tests/setup.sh")
for b in [KVMIO, LOAD]:
    if not os.path.exists(b):
        sys.exit(f"missing {b}: cargo build --release -p kvmio -p kvmio-load")

work = tempfile.mkdtemp(prefix="kvmio-burst-")
img = os.path.join(work, "disk.img")
with open(img, "wb") as f:
    f.write(os.urandom(args.size_mib << 20))
pki = os.path.join(work, "pki")
subprocess.run([KVMIO, "creds", "generate", pki], check=True, stdout=subprocess.DEVNULL)
TICK = os.sysconf("SC_CLK_TCK")
N = args.clients


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def wait_port(p, proc):
    for _ in range(600):
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", p), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {p} never opened")


def cpu(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def netstat():
    with open("/proc/net/netstat") as f:
        lines = f.read().splitlines()
    for head, vals in zip(lines[::2], lines[1::2]):
        if head.startswith("TcpExt:"):
            d = dict(zip(head.split()[1:], map(int, vals.split()[1:])))
            return {k: d.get(k, 0) for k in ["ListenOverflows", "ListenDrops", "SyncookiesSent"]}
    return {}


def servers(port):
    kv = [KVMIO, "nbd", "serve", "--listen", f"127.0.0.1:{port}", "--export", f"disk={img}",
          "--tls", "require", "--tls-creds", pki, "--max-connections", str(N + 100)]
    return {
        "kvmio (tokio)": (kv + ["--runtime", "tokio"], f"nbds://127.0.0.1:{port}/disk"),
        "kvmio (threads)": (kv + ["--runtime", "threads"], f"nbds://127.0.0.1:{port}/disk"),
        "qemu-nbd": (["qemu-nbd", "--object",
                      f"tls-creds-x509,id=tls0,endpoint=server,dir={pki},verify-peer=on",
                      "--tls-creds", "tls0", "-f", "raw", "-x", "disk", "-t", "-e", str(N + 100),
                      "-b", "127.0.0.1", "-p", str(port), img],
                     f"nbds://127.0.0.1:{port}/disk"),
        "nbdkit": (["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port), "--tls=require",
                    f"--tls-certificates={pki}", "--tls-verify-peer", "file", img],
                   f"nbds://127.0.0.1:{port}/"),
    }


names = list(servers(0))
results = {n: [] for n in names}
for r in range(args.rounds):
    for name in names:
        port = free_port()
        cmd, uri = servers(port)[name]
        log = open(os.path.join(work, f"{name.split()[0]}-{r}.log"), "w")
        srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        wait_port(port, srv)
        time.sleep(0.3)
        c0, n0 = cpu(srv.pid), netstat()
        out = subprocess.run([LOAD, "--json", "nbd-burst", "--uri", uri, "--tls-creds", pki,
                              "--clients", str(N), "--file", img],
                             capture_output=True, text=True)
        c1, n1 = cpu(srv.pid), netstat()
        srv.terminate(); srv.wait(timeout=30)
        try:
            rep = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            sys.exit(f"{name}: kvmio-load failed: {out.stderr}")
        rep["cpu"] = c1 - c0
        rep["kernel"] = {k: n1[k] - n0[k] for k in n1}
        results[name].append(rep)
        lost = sum(rep["failed"].values())
        print(f"round {r + 1} {name}: {rep['ok']}/{N} in {rep['seconds']:.2f} s, lost {lost} "
              f"{rep['failed'] or ''}, server CPU {rep['cpu']:.2f} s, {rep['kernel']}",
              file=sys.stderr)

med = {n: statistics.median(x["seconds"] for x in results[n]) for n in names}
print(f"\n{N} TLS clients at once, {args.rounds} rounds (median time); `bench/burst.py "
      f"--clients {N} --rounds {args.rounds}`\n")
print("| server | clients served (all rounds) | lost | time | ratio to qemu-nbd | server CPU per connection | listen overflows / drops / syncookies |")
print("|---|---|---|---|---|---|---|")
for n in names:
    rs = results[n]
    served = sum(x["ok"] for x in rs)
    lost = sum(sum(x["failed"].values()) for x in rs)
    cpu_ms = statistics.median(x["cpu"] for x in rs) / N * 1000
    k = {key: sum(x["kernel"][key] for x in rs) for key in rs[0]["kernel"]}
    ratio = med["qemu-nbd"] / med[n]
    print(f"| {n} | {served} / {N * len(rs)} | {lost} | {med[n]:.2f} s | {ratio:.2f}× | "
          f"{cpu_ms:.2f} ms | {k['ListenOverflows']} / {k['ListenDrops']} / {k['SyncookiesSent']} |")
print("\n(ratio: qemu-nbd's time over the server's; above 1 is faster than qemu-nbd)")
shutil.rmtree(work, ignore_errors=True)
