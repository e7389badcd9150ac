#!/usr/bin/env python3
"""NBD throughput, kvmio side by side with qemu-nbd and nbdkit, in one run.

Reads a 1 GiB file export to null: with nbdcopy from each server (plain, and over TLS with
the same client), times `kvmio nbd copy` against `nbdcopy` reading from qemu-nbd, and counts
full TLS connections per second (connect, STARTTLS, handshake, GO, DISC). Runs are
interleaved (one of each server per round) and the median is reported. Prints a Markdown
table; the ratios are kvmio's speed over each peer's.

Usage: bench/nbd.py [--size-mib 1024] [--rounds 7] [--kvmio target/release/kvmio]
"""
import argparse, os, shutil, socket, statistics, subprocess, sys, tempfile, time

ap = argparse.ArgumentParser()
ap.add_argument("--size-mib", type=int, default=1024)
ap.add_argument("--rounds", type=int, default=7)
ap.add_argument("--kvmio", default=os.path.join(os.path.dirname(__file__), "..", "target", "release", "kvmio"))
ap.add_argument("--tls", action=argparse.BooleanOptionalAction, default=True)
ap.add_argument("--connections", type=int, default=200, help="TLS connections per rate sample")
args = ap.parse_args()
KVMIO = os.path.abspath(args.kvmio)
for tool in ["nbdcopy", "qemu-nbd", "nbdkit", "certtool", "nbdinfo", "qemu-img"]:
    if not shutil.which(tool):
        sys.exit(f"missing {tool}: run tests/setup.sh")
if not os.path.exists(KVMIO):
    sys.exit(f"missing {KVMIO}: cargo build --release -p std-shim")

work = tempfile.mkdtemp(prefix="kvmio-bench-")
img = os.path.join(work, "disk.img")
with open(img, "wb") as f:
    chunk = os.urandom(1 << 20)
    for i in range(args.size_mib):
        f.write(chunk[i % 7:] + chunk[: i % 7])
size = args.size_mib << 20
procs = []

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def wait_port(p, proc):
    for _ in range(300):
        if proc.poll() is not None:
            sys.exit(f"server exited: {proc.args}")
        try:
            socket.create_connection(("127.0.0.1", p), timeout=0.2).close(); return
        except OSError:
            time.sleep(0.05)
    sys.exit(f"port {p} never opened")

def start(cmd, port):
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=open(os.path.join(work, f"{port}.log"), "w"))
    procs.append(p); wait_port(port, p); return p

def pki(d, kind):
    os.makedirs(d, exist_ok=True)
    if kind == "kvmio":
        subprocess.run([KVMIO, "creds", "generate", d, "--force"], check=True, stdout=subprocess.DEVNULL)
        return
    tmpl = {"ca": "cn = CA\nca\ncert_signing_key\nexpiration_days = 30\n",
            "server": "cn = localhost\ndns_name = localhost\nip_address = 127.0.0.1\ntls_www_server\nencryption_key\nsigning_key\nexpiration_days = 30\n",
            "client": "cn = client\ntls_www_client\nencryption_key\nsigning_key\nexpiration_days = 30\n"}
    for k, t in tmpl.items():
        open(os.path.join(d, k + ".info"), "w").write(t)
    def ct(*a):
        subprocess.run(["certtool", "--no-text", *a], check=True, cwd=d, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    for k in ["ca", "server", "client"]:
        ct("--generate-privkey", "--key-type=rsa", "--bits=2048", "--outfile", f"{k}-key.pem")
    ct("--generate-self-signed", "--load-privkey", "ca-key.pem", "--template", "ca.info", "--outfile", "ca-cert.pem")
    for k in ["server", "client"]:
        ct("--generate-certificate", "--load-ca-certificate", "ca-cert.pem", "--load-ca-privkey", "ca-key.pem",
           "--load-privkey", f"{k}-key.pem", "--template", f"{k}.info", "--outfile", f"{k}-cert.pem")

def timed(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t

def rounds(cases):
    """cases: {name: cmd}; returns {name: median seconds}, interleaving one run of each per round."""
    for cmd in cases.values():
        timed(cmd)  # warm up (page cache, connections)
    samples = {n: [] for n in cases}
    for _ in range(args.rounds):
        for n, cmd in cases.items():
            samples[n].append(timed(cmd))
    return {n: statistics.median(v) for n, v in samples.items()}

def mbs(t):
    return size / t / 1e6

rows = []
try:
    # Plain
    ports = {n: free_port() for n in ["kvmio", "qemu-nbd", "nbdkit"]}
    start([KVMIO, "nbd", "serve", "--read-only", "--export", f"disk={img}", "--listen", f"127.0.0.1:{ports['kvmio']}"], ports["kvmio"])
    start(["qemu-nbd", "-r", "-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", str(ports["qemu-nbd"]), "-t", "-e", "16", img], ports["qemu-nbd"])
    start(["nbdkit", "-f", "-r", "-i", "127.0.0.1", "-p", str(ports["nbdkit"]), "file", img], ports["nbdkit"])
    plain = rounds({n: ["nbdcopy", f"nbd://127.0.0.1:{p}/disk", "null:"] for n, p in ports.items()})
    rows.append(("nbdcopy → null:, plain", plain))
    copy = rounds({
        "kvmio": [KVMIO, "nbd", "copy", "--no-progress", f"nbd://127.0.0.1:{ports['qemu-nbd']}/disk", "/dev/null"],
        "nbdcopy": ["nbdcopy", f"nbd://127.0.0.1:{ports['qemu-nbd']}/disk", "null:"],
    })
    rows.append(("client reading qemu-nbd → null", copy))
    if args.tls:
        kp, cp = os.path.join(work, "pki-kvmio"), os.path.join(work, "pki-certtool")
        pki(kp, "kvmio"); pki(cp, "certtool")
        t = {n: free_port() for n in ["kvmio", "qemu-nbd", "nbdkit"]}
        start([KVMIO, "nbd", "serve", "--read-only", "--export", f"disk={img}", "--listen", f"127.0.0.1:{t['kvmio']}",
               "--tls", "require", "--tls-creds", cp, "--tls-verify-peer", "no", "--max-connections", "1000"], t["kvmio"])
        start(["qemu-nbd", "-r", "-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", str(t["qemu-nbd"]), "-t", "-e", "1000",
               "--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={cp},verify-peer=off", "--tls-creds", "tls0", img], t["qemu-nbd"])
        start(["nbdkit", "-f", "-r", "-i", "127.0.0.1", "-p", str(t["nbdkit"]), "--tls=require", f"--tls-certificates={cp}", "file", img], t["nbdkit"])
        tls = rounds({n: ["nbdcopy", f"nbds://127.0.0.1:{p}/disk?tls-certificates={cp}", "null:"] for n, p in t.items()})
        rows.append(("nbdcopy → null:, TLS (same certtool RSA certificates)", tls))
        # Connections per second: N sequential full connections (connect, STARTTLS, TLS
        # handshake, GO, DISC) from one client process, the same client for every server:
        # `kvmio nbd ping` (rustls; light, so the server's cost shows) and a libnbd loop in
        # Debian's python3 (gnutls; its client-side cost dominates).
        conns = args.connections
        def ping(p):
            return [KVMIO, "nbd", "ping", "--count", str(conns), "--tls-creds", cp, f"nbds://127.0.0.1:{p}/disk"]
        def libnbd(p):
            code = (
                "import nbd\n"
                f"for i in range({conns}):\n"
                "    h = nbd.NBD(); h.set_tls(nbd.TLS_REQUIRE)\n"
                f"    h.set_tls_certificates('{cp}'); h.set_export_name('disk')\n"
                f"    h.connect_tcp('127.0.0.1', '{p}'); assert h.get_size() == {size}; h.shutdown(); del h\n"
            )
            return ["/usr/bin/python3", "-c", code]
        rate = rounds({n: ping(p) for n, p in t.items()})
        rows.append((f"TLS connections/s, client `kvmio nbd ping` ({conns} × connect, STARTTLS, handshake, GO, DISC)", rate, conns))
        rate = rounds({n: libnbd(p) for n, p in t.items()})
        rows.append((f"TLS connections/s, client libnbd in python ({conns} × the same)", rate, conns))
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    shutil.rmtree(work, ignore_errors=True)

print(f"\n{args.size_mib} MiB export, {args.rounds} interleaved rounds, median; ratio = kvmio speed / peer speed\n")
print("| test | kvmio | peer | peer result | ratio |")
print("|---|---|---|---|---|")
for row in rows:
    name, res = row[0], row[1]
    ours = res.get("kvmio")
    for peer, t in res.items():
        if peer == "kvmio":
            continue
        if len(row) == 3:
            n = row[2]
            print(f"| {name} | {n / ours:.1f} conn/s | {peer} | {n / t:.1f} conn/s | {t / ours:.2f}× |")
        else:
            print(f"| {name} | {mbs(ours):.0f} MB/s | {peer} | {mbs(t):.0f} MB/s | {t / ours:.2f}× |")
