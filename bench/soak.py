#!/usr/bin/env python3
"""A mixed NBD + VNC soak against `kvmio serve` (both services, TLS with client certificates):
for M minutes, NBD bursts (connect, STARTTLS, GO, checked READs, WRITE + FLUSH + read back,
DISC) one after another, 50 NBD connections held open for the whole run, `kvmio nbd copy` of
the export now and then, and VNC viewers (`kvmio vnc capture`, VeNCrypt X509) connecting,
taking a frame and leaving. Every minute it samples the server's RSS, open file descriptors
and threads. At the end it says whether anything grew, comparing the samples after the first
two minutes (warm-up) with the last ones (median RSS, least descriptors: single samples vary
with the connections open at that moment): the exit status is 1 if RSS grew by more than
10 % + 4 MiB, if the descriptors grew, or if any client failed.

Usage: bench/soak.py [--minutes 30] [--runtime tokio|threads]
"""
import argparse, os, socket, statistics, subprocess, sys, tempfile, threading, time

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--minutes", type=float, default=30)
ap.add_argument("--runtime", default="tokio")
ap.add_argument("--target", default=os.path.join(here, "..", "target", "release"))
args = ap.parse_args()
KVMIO = os.path.abspath(os.path.join(args.target, "kvmio"))
LOAD = os.path.abspath(os.path.join(args.target, "kvmio-load"))
for b in [KVMIO, LOAD]:
    if not os.path.exists(b):
        sys.exit(f"missing {b}: cargo build --release -p kvmio -p kvmio-load")

work = tempfile.mkdtemp(prefix="kvmio-soak-")
img = os.path.join(work, "disk.img")
with open(img, "wb") as f:
    f.write(os.urandom(64 << 20))
pki = os.path.join(work, "pki")
subprocess.run([KVMIO, "creds", "generate", pki], check=True, stdout=subprocess.DEVNULL)


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


vnc, nbd = free_port(), free_port()
srv = subprocess.Popen(
    [KVMIO, "serve", "--tls-creds", pki, "--vnc-listen", f"127.0.0.1:{vnc}", "--nbd-listen",
     f"127.0.0.1:{nbd}", "--export", f"disk={img}", "--runtime", args.runtime,
     "--max-connections", "200"],
    stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, "server.log"), "w"))
for _ in range(300):
    try:
        socket.create_connection(("127.0.0.1", nbd), timeout=0.2).close()
        socket.create_connection(("127.0.0.1", vnc), timeout=0.2).close()
        break
    except OSError:
        time.sleep(0.05)
else:
    sys.exit("kvmio serve did not start")

uri = f"nbds://127.0.0.1:{nbd}/disk"
end = time.time() + args.minutes * 60
stats = {"nbd bursts": [0, 0], "nbd copies": [0, 0], "vnc captures": [0, 0], "held": [0, 0]}
lock = threading.Lock()


def count(kind, ok, detail=""):
    with lock:
        stats[kind][0 if ok else 1] += 1
    if not ok:
        print(f"  {kind} failed: {detail.strip()[-300:]}", file=sys.stderr)


def loop(kind, cmd, pause):
    while time.time() < end:
        r = subprocess.run(cmd, capture_output=True, text=True)
        count(kind, r.returncode == 0, r.stderr)
        time.sleep(pause)


def held():
    keep = int(end - time.time()) + 15  # past the last sample taken under load
    r = subprocess.run([LOAD, "hold", "--uri", uri, "--tls-creds", pki, "--connections", "50",
                        "--file", img, "--keep", str(keep)], capture_output=True, text=True)
    count("held", r.returncode == 0, r.stderr + r.stdout)


threads = [
    threading.Thread(target=loop, args=("nbd bursts", [LOAD, "nbd-burst", "--uri", uri, "--tls-creds", pki,
                                                       "--clients", "20", "--file", img], 1)),
    threading.Thread(target=loop, args=("vnc captures", [KVMIO, "vnc", "capture", "--tls-creds", pki,
                                                         f"vnc://127.0.0.1:{vnc}", os.path.join(work, "s.png")], 0.5)),
    threading.Thread(target=loop, args=("nbd copies", [KVMIO, "nbd", "copy", "--no-progress", "--tls-creds", pki,
                                                       uri, "/dev/null"], 20)),
    threading.Thread(target=held),
]
for t in threads:
    t.start()


def sample():
    with open(f"/proc/{srv.pid}/status") as f:
        st = dict(l.split(":", 1) for l in f.read().splitlines() if ":" in l)
    return (int(st["VmRSS"].split()[0]), len(os.listdir(f"/proc/{srv.pid}/fd")),
            int(st["Threads"].split()[0]))


samples = []
start = time.time()
print("| minute | RSS (MiB) | open fds | threads |")
print("|---|---|---|---|")
while True:
    rss, fds, thr = sample()
    samples.append((rss, fds, thr))
    print(f"| {len(samples) - 1} | {rss / 1024:.1f} | {fds} | {thr} |", flush=True)
    if time.time() >= end:
        break
    time.sleep(min(60, max(0, end - time.time())))
for t in threads:
    t.join()
time.sleep(2)
rss, fds, thr = sample()
print(f"| end (clients gone) | {rss / 1024:.1f} | {fds} | {thr} |")
srv.terminate()
srv.wait(timeout=30)

print(f"\n`bench/soak.py --minutes {args.minutes:g} --runtime {args.runtime}`: " +
      ", ".join(f"{k} {ok} ok / {bad} failed" for k, (ok, bad) in stats.items()))
# The connections come and go, so single samples vary with what is running at that moment:
# compare the least descriptors and the median RSS of the first samples after warm-up with
# those of the last ones.
under_load = samples[2:] if len(samples) > 4 else samples
k = max(1, min(5, len(under_load) // 3))
first, final = under_load[:k], under_load[-k:]
med = lambda xs: statistics.median(xs)
base = (med([x[0] for x in first]), min(x[1] for x in first))
last = (med([x[0] for x in final]), min(x[1] for x in final))
grew = []
if last[0] > base[0] * 1.10 + 4096:
    grew.append(f"median RSS {base[0]:.0f} -> {last[0]:.0f} KiB")
if last[1] > base[1]:
    grew.append(f"fds {base[1]} -> {last[1]}")
failed = sum(bad for _, bad in stats.values())
if grew or failed:
    print("GREW or FAILED: " + "; ".join(grew + ([f"{failed} client runs failed"] if failed else [])))
    sys.exit(1)
print(f"nothing grew: median RSS {base[0] / 1024:.1f} -> {last[0] / 1024:.1f} MiB, least fds "
      f"{base[1]} -> {last[1]} (the first {k} samples under load against the last {k})")
