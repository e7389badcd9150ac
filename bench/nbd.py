#!/usr/bin/env python3
"""NBD throughput, kvmio side by side with qemu-nbd and nbdkit, in one run.

Reads a 1 GiB file export to null: with nbdcopy from each server (plain, and over TLS with
the same client), times `kvmio nbd copy` against `nbdcopy` reading from qemu-nbd, and counts
full TLS connections per second (connect, STARTTLS, handshake, GO, DISC). Runs are
interleaved (one of each server per round) and the median is reported. Prints a Markdown
table; the ratios are kvmio's speed over each peer's. Beside each speed it gives the CPU time
the server process used for it (user + system, from /proc/PID/stat, all threads), per GiB or
per connection; for the client row, the client's (the two clients against one server).

Usage: bench/nbd.py [--size-mib 1024] [--rounds 7] [--kvmio target/release/kvmio]
"""
import argparse, os, resource, shutil, socket, statistics, subprocess, sys, tempfile, time

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
    sys.exit(f"missing {KVMIO}: cargo build --release -p kvmio")

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

TICK = os.sysconf("SC_CLK_TCK")

def server_cpu(proc):
    """CPU seconds (user + system, every thread) the process has used so far."""
    with open(f"/proc/{proc.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK

def client_cpu():
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime

def timed(cmd, server):
    """Runs cmd; returns (wall seconds, CPU seconds of `server`, or of cmd itself if None)."""
    cpu = server_cpu if server else (lambda _: client_cpu())
    c, t = cpu(server), time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t, cpu(server) - c

def rounds(cases, servers=None):
    """cases: {name: cmd}; servers: {name: server process} whose CPU to count (else the
    client's). Interleaves one run of each per round; returns {name: (median seconds, median
    CPU seconds)}."""
    servers = servers or {}
    for n, cmd in cases.items():
        timed(cmd, servers.get(n))  # warm up (page cache, connections)
    samples = {n: [] for n in cases}
    for _ in range(args.rounds):
        for n, cmd in cases.items():
            samples[n].append(timed(cmd, servers.get(n)))
    return {n: (statistics.median(w for w, _ in v), statistics.median(c for _, c in v)) for n, v in samples.items()}

def mbs(t):
    return size / t / 1e6

rows = []
try:
    # Plain
    ports = {n: free_port() for n in ["kvmio", "qemu-nbd", "nbdkit"]}
    srv = {
        "kvmio": start([KVMIO, "nbd", "serve", "--read-only", "--export", f"disk={img}", "--listen", f"127.0.0.1:{ports['kvmio']}"], ports["kvmio"]),
        "qemu-nbd": start(["qemu-nbd", "-r", "-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", str(ports["qemu-nbd"]), "-t", "-e", "16", img], ports["qemu-nbd"]),
        "nbdkit": start(["nbdkit", "-f", "-r", "-i", "127.0.0.1", "-p", str(ports["nbdkit"]), "file", img], ports["nbdkit"]),
    }
    plain = rounds({n: ["nbdcopy", f"nbd://127.0.0.1:{p}/disk", "null:"] for n, p in ports.items()}, srv)
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
        srv = {
            "kvmio": start([KVMIO, "nbd", "serve", "--read-only", "--export", f"disk={img}", "--listen", f"127.0.0.1:{t['kvmio']}",
                            "--tls", "require", "--tls-creds", cp, "--tls-verify-peer", "no", "--max-connections", "1000"], t["kvmio"]),
            "qemu-nbd": start(["qemu-nbd", "-r", "-f", "raw", "-x", "disk", "-b", "127.0.0.1", "-p", str(t["qemu-nbd"]), "-t", "-e", "1000",
                               "--object", f"tls-creds-x509,id=tls0,endpoint=server,dir={cp},verify-peer=off", "--tls-creds", "tls0", img], t["qemu-nbd"]),
            "nbdkit": start(["nbdkit", "-f", "-r", "-i", "127.0.0.1", "-p", str(t["nbdkit"]), "--tls=require", f"--tls-certificates={cp}", "file", img], t["nbdkit"]),
        }
        tls = rounds({n: ["nbdcopy", f"nbds://127.0.0.1:{p}/disk?tls-certificates={cp}", "null:"] for n, p in t.items()}, srv)
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
        rate = rounds({n: ping(p) for n, p in t.items()}, srv)
        rows.append((f"TLS connections/s, client `kvmio nbd ping` ({conns} × connect, STARTTLS, handshake, GO, DISC)", rate, conns))
        rate = rounds({n: libnbd(p) for n, p in t.items()}, srv)
        rows.append((f"TLS connections/s, client libnbd in python ({conns} × the same)", rate, conns))
finally:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait()
    shutil.rmtree(work, ignore_errors=True)

print(f"\n{args.size_mib} MiB export, {args.rounds} interleaved rounds, median; ratio = kvmio speed / peer speed;")
print("CPU = the server's CPU time (user + system) per GiB or per connection (client row: the client's)\n")
print("| test | kvmio | kvmio CPU | peer | peer result | peer CPU | ratio |")
print("|---|---|---|---|---|---|---|")
gib = size / (1 << 30)
for row in rows:
    name, res = row[0], row[1]
    ours, our_cpu = res["kvmio"]
    for peer, (t, cpu) in res.items():
        if peer == "kvmio":
            continue
        if len(row) == 3:
            n = row[2]
            print(f"| {name} | {n / ours:.1f} conn/s | {our_cpu / n * 1e3:.2f} ms/conn | {peer} | {n / t:.1f} conn/s | {cpu / n * 1e3:.2f} ms/conn | {t / ours:.2f}× |")
        else:
            print(f"| {name} | {mbs(ours):.0f} MB/s | {our_cpu / gib:.2f} s/GiB | {peer} | {mbs(t):.0f} MB/s | {cpu / gib:.2f} s/GiB | {t / ours:.2f}× |")
