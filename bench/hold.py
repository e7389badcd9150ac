#!/usr/bin/env python3
"""Many connections held open at once: 10,000 plain NBD connections and 2,000 TLS sessions on
one server, every one negotiated to the transmission phase and held, a fresh client served
meanwhile, then a checked READ on each held one. kvmio (tokio; threads up to its 4,096
connection limit) side by side with qemu-nbd and nbdkit, in one run. Reports the server's
memory per held connection (RSS with all held minus RSS before, over the count).

Usage: bench/hold.py [--plain 10000] [--tls 2000]
"""
import argparse, json, os, shutil, socket, subprocess, sys, tempfile, time

here = os.path.dirname(os.path.abspath(__file__))
ap = argparse.ArgumentParser()
ap.add_argument("--plain", type=int, default=10000)
ap.add_argument("--tls", type=int, default=2000)
ap.add_argument("--target", default=os.path.join(here, "..", "target", "release"))
args = ap.parse_args()
KVMIO = os.path.abspath(os.path.join(args.target, "kvmio"))
LOAD = os.path.abspath(os.path.join(args.target, "kvmio-load"))
THREADS_MAX = 4096
for b in [KVMIO, LOAD]:
    if not os.path.exists(b):
        sys.exit(f"missing {b}: cargo build --release -p kvmio -p kvmio-load")
for tool in ["qemu-nbd", "nbdkit"]:
    if not shutil.which(tool):
        sys.exit(f"missing {tool}: run tests/setup.sh")

work = tempfile.mkdtemp(prefix="kvmio-hold-")
img = os.path.join(work, "disk.img")
# Each connection writes its own 4 KiB block in the second half: room for all of them.
size = max(64 << 20, 2 * 4096 * (max(args.plain, args.tls) + 2))
with open(img, "wb") as f:
    f.write(os.urandom(size))
pki = os.path.join(work, "pki")
subprocess.run([KVMIO, "creds", "generate", pki], check=True, stdout=subprocess.DEVNULL)


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


def server(name, tls, port, n):
    if name.startswith("kvmio"):
        cmd = [KVMIO, "nbd", "serve", "--listen", f"127.0.0.1:{port}", "--export", f"disk={img}",
               "--max-connections", str(n + 10), "--runtime", name.split()[1].strip("()")]
        if tls:
            cmd += ["--tls", "require", "--tls-creds", pki]
        return cmd, "disk"
    if name == "qemu-nbd":
        cmd = ["qemu-nbd", "-f", "raw", "-x", "disk", "-t", "-e", str(n + 10), "-b", "127.0.0.1",
               "-p", str(port), img]
        if tls:
            cmd[1:1] = ["--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={pki},verify-peer=on",
                        "--tls-creds", "tls0"]
        return cmd, "disk"
    cmd = ["nbdkit", "-f", "-i", "127.0.0.1", "-p", str(port)]
    if tls:
        cmd += ["--tls=require", f"--tls-certificates={pki}", "--tls-verify-peer"]
    return cmd + ["file", img], ""


rows = []
for tls, n in [(False, args.plain), (True, args.tls)]:
    for name in ["kvmio (tokio)", "kvmio (threads)", "qemu-nbd", "nbdkit"]:
        count = min(n, THREADS_MAX - 10) if name == "kvmio (threads)" else n
        port = free_port()
        cmd, export = server(name, tls, port, count)
        log = open(os.path.join(work, f"{name.split()[0]}-{tls}.log"), "w")
        srv = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log)
        wait_port(port, srv)
        time.sleep(0.5)
        scheme = "nbds" if tls else "nbd"
        cmd = [LOAD, "--json", "hold", "--uri", f"{scheme}://127.0.0.1:{port}/{export}",
               "--connections", str(count), "--file", img, "--server-pid", str(srv.pid)]
        if tls:
            cmd += ["--tls-creds", pki]
        out = subprocess.run(cmd, capture_output=True, text=True)
        srv.terminate()
        try:
            srv.wait(timeout=30)
        except subprocess.TimeoutExpired:
            srv.kill()
        try:
            r = json.loads(out.stdout.strip().splitlines()[-1])
        except (ValueError, IndexError):
            r = None
        if r is None:
            rows.append(f"| {name} | {'TLS' if tls else 'plain'} | {count} | failed: "
                        f"{out.stderr.strip().splitlines()[-1] if out.stderr.strip() else '?'} | | | |")
        else:
            fin = r["finished"]
            rows.append(f"| {name} | {'TLS' if tls else 'plain'} | {r['held']} / {r['asked']} | "
                        f"{'yes' if r['fresh']['ok'] == 1 else 'NO'} | {fin['ok']} / {fin['clients']} | "
                        f"{r['rss_kib'][1] // 1024} MiB | {r['kib_per_connection']:.1f} KiB |")
        print(rows[-1], file=sys.stderr)

print(f"\nConnections held at once (`bench/hold.py --plain {args.plain} --tls {args.tls}`); "
      f"kvmio threads is held to its limit of {THREADS_MAX} connections\n")
print("| server | transport | held | fresh client served meanwhile | held ones' checked READ | server RSS held | memory per connection |")
print("|---|---|---|---|---|---|---|")
print("\n".join(rows))
shutil.rmtree(work, ignore_errors=True)
