#!/bin/sh
# Smoke test of the MPS2 firmware under QEMU: boots it (run-qemu.sh), checks TCP echo on both
# forwarded ports byte-exactly (small sizes, 1 MiB, 4 concurrent sessions, 20 sequential ones),
# toggles the link through the QEMU monitor, checks that QEMU idles, reads the memory figures
# from the UART log, and stops QEMU. Exit status 0 only if every check passed.
#
# Environment (all optional):
#   SKIP_BUILD=1                   do not run `cargo build --release` first
#   VNC_HOST_PORT / NBD_HOST_PORT  host ports to use (default: two free ports on 127.0.0.1)
#   QEMU_MACHINE                   passed to run-qemu.sh (default mps2-an500)
#
# Only 127.0.0.1 is used; the guest network is slirp with restrict=on.
set -eu
cd "$(dirname "$0")"

if [ "${SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release
fi

if [ -z "${VNC_HOST_PORT:-}" ] || [ -z "${NBD_HOST_PORT:-}" ]; then
    set -- $(python3 -c 'import socket
a=socket.socket(); a.bind(("127.0.0.1",0)); b=socket.socket(); b.bind(("127.0.0.1",0))
print(a.getsockname()[1], b.getsockname()[1])')
    VNC_HOST_PORT=${VNC_HOST_PORT:-$1}
    NBD_HOST_PORT=${NBD_HOST_PORT:-$2}
fi
UART_LOG=target/smoke-uart.log
QEMU_MONITOR=target/smoke-monitor.sock
export VNC_HOST_PORT NBD_HOST_PORT UART_LOG QEMU_MONITOR

pid=$(./run-qemu.sh)
trap 'kill "$pid" 2>/dev/null || true; rm -f "$QEMU_MONITOR"' EXIT INT TERM
echo "smoke: qemu pid $pid, ports 127.0.0.1:$VNC_HOST_PORT (:5900) 127.0.0.1:$NBD_HOST_PORT (:10809)"

python3 - "$pid" <<'PY'
import os, re, socket, sys, threading, time

PID = int(sys.argv[1])
VNC = int(os.environ["VNC_HOST_PORT"])
NBD = int(os.environ["NBD_HOST_PORT"])
LOG = os.environ["UART_LOG"]
MON = os.environ["QEMU_MONITOR"]
HOST = "127.0.0.1"
failures = []

def check(cond, what):
    print(("ok    " if cond else "FAIL  ") + what, flush=True)
    if not cond:
        failures.append(what)
    return cond

def uart():
    with open(LOG, "rb") as f:
        return f.read().decode("utf-8", "replace")

def wait_log(pattern, after, timeout):
    """Wait until `pattern` appears in the UART log beyond offset `after`."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if re.search(pattern, uart()[after:]):
            return True
        time.sleep(0.05)
    return False

BANNER = {VNC: b"echo 5900\n", NBD: b"echo 10809\n"}

def read_banner(s, port):
    want = BANNER[port]
    got = b""
    while len(got) < len(want):
        d = s.recv(len(want) - len(got))
        if not d:
            break
        got += d
    if got != want:
        raise RuntimeError(f"banner {got!r}, expected {want!r}")

def echo_session(port, payload, chunk=32768, timeout=60, barrier=None):
    """Connect, wait for the banner, send `payload` while reading concurrently, half-close,
    read to EOF. The firmware closes after our FIN, so EOF also proves its orderly close."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    read_banner(s, port)
    if barrier is not None:
        # Make sure the session is really served (echo of a first byte), then wait until
        # every concurrent session is, so they overlap for certain.
        s.sendall(payload[:1])
        first = s.recv(1)
        if first != payload[:1]:
            s.close()
            raise RuntimeError("no first-byte echo")
        barrier.wait(timeout)
        payload = payload[1:]
    got, err = bytearray(), []
    def reader():
        try:
            while True:
                d = s.recv(262144)
                if not d:
                    return
                got.extend(d)
        except Exception as e:  # noqa: BLE001
            err.append(e)
    t = threading.Thread(target=reader)
    t.start()
    t0 = time.monotonic()
    view = memoryview(payload)
    for i in range(0, len(view), chunk):
        s.sendall(view[i:i + chunk])
    s.shutdown(socket.SHUT_WR)
    t.join(timeout)
    dt = time.monotonic() - t0
    s.close()
    if t.is_alive():
        raise TimeoutError("no EOF from firmware")
    if err:
        raise err[0]
    if barrier is not None:
        got[0:0] = b""
    return bytes(got), dt

def first_contact(port, attempts=15):
    """Retry until banner and echo: slirp accepts the host side before the guest answers."""
    t0 = time.monotonic()
    for attempt in range(1, attempts + 1):
        try:
            s = socket.create_connection((HOST, port), timeout=3)
            s.settimeout(3)
            read_banner(s, port)
            s.sendall(b"hello\n")
            data = b""
            while len(data) < 6:
                d = s.recv(64)
                if not d:
                    break
                data += d
            s.close()
            if data == b"hello\n":
                return attempt, time.monotonic() - t0
        except (OSError, RuntimeError):
            pass
        time.sleep(0.2)
    return None, time.monotonic() - t0

def monitor(cmd):
    m = socket.socket(socket.AF_UNIX)
    m.connect(MON)
    m.sendall(cmd.encode() + b"\n")
    time.sleep(0.2)
    m.close()

def cpu_ticks():
    with open(f"/proc/{PID}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime

# 1. first contact on both ports (the firmware's gateway ARP at boot makes it fast)
for name, port in (("5900", VNC), ("10809", NBD)):
    attempt, dt = first_contact(port)
    check(attempt is not None, f"first echo on :{name} (attempt {attempt}, {dt*1000:.0f} ms)")

# 2. byte-exact echoes of assorted sizes on both ports
for name, port in (("5900", VNC), ("10809", NBD)):
    for size in (1, 1000, 1460, 1461, 65537):
        data = os.urandom(size)
        try:
            got, _ = echo_session(port, data)
            check(got == data, f"echo {size} B on :{name}")
        except Exception as e:  # noqa: BLE001
            check(False, f"echo {size} B on :{name}: {e!r}")

# 3. 1 MiB echo
data = os.urandom(1 << 20)
try:
    got, dt = echo_session(VNC, data)
    check(got == data, f"echo 1 MiB on :5900 byte-exact ({len(data)/dt/1048576:.2f} MiB/s)")
except Exception as e:  # noqa: BLE001
    check(False, f"echo 1 MiB on :5900: {e!r}")

# 4. four sessions at the same time: two per port
N = 4
barrier = threading.Barrier(N)
payloads = [os.urandom(256 * 1024) for _ in range(N)]
results = [None] * N
def worker(i):
    port = (VNC, VNC, NBD, NBD)[i]
    try:
        got, _ = echo_session(port, payloads[i], barrier=barrier)
        results[i] = (got == payloads[i][1:])
    except Exception as e:  # noqa: BLE001
        results[i] = e
        barrier.abort()
threads = [threading.Thread(target=worker, args=(i,)) for i in range(N)]
for t in threads:
    t.start()
for t in threads:
    t.join(120)
for i, r in enumerate(results):
    check(r is True, f"concurrent session {i} ({'5900' if i < 2 else '10809'}, 256 KiB) byte-exact: {r}")

def wait_session_ends(n, timeout=5):
    """Wait until the UART log shows `n` session ends. The log is written when the firmware
    is idle, i.e. after the listener has gone back to LISTEN."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if len(re.findall(r"session end", uart())) >= n:
            return True
        time.sleep(0.02)
    return False

def sessions_ended():
    return len(re.findall(r"session end", uart()))

# Sessions so far: 2 first contacts + 10 sizes + 1 MiB + 4 concurrent.
check(wait_session_ends(17), "firmware logged the end of all 17 sessions so far")

# 4b. connection cap: two sessions per port; a third is refused (RST: the client sees EOF
# without a banner) until one ends
held = []
try:
    for _ in range(2):
        s = socket.create_connection((HOST, VNC), timeout=5)
        read_banner(s, VNC)
        held.append(s)
    s = socket.create_connection((HOST, VNC), timeout=5)
    try:
        third = s.recv(64)
    except OSError:
        third = b""
    s.close()
    check(third == b"", f"third concurrent session on :5900 refused (got {third!r})")
    base = sessions_ended()
    held.pop().close()
    check(wait_session_ends(base + 1), "held session ended")
    s = socket.create_connection((HOST, VNC), timeout=5)
    read_banner(s, VNC)
    s.sendall(b"cap\n")
    check(s.recv(16) == b"cap\n", "new session accepted after one ended")
    s.close()
except Exception as e:  # noqa: BLE001
    check(False, f"connection cap: {e!r}")
finally:
    for s in held:
        s.close()
# A slot counts as busy until its close handshake is done (about one round trip); a client
# that reconnects within that time to a full port is refused like any over-cap client.
check(wait_session_ends(17 + 3), "firmware logged the end of the cap-test sessions")
# 5. sequential sessions
bad, times, why = 0, [], []
for i in range(20):
    data = os.urandom(1000)
    port = (VNC, NBD)[i % 2]
    try:
        t0 = time.monotonic()
        got, _ = echo_session(port, data, timeout=10)
        times.append(time.monotonic() - t0)
        if got != data:
            bad += 1
            why.append(f"#{i}: {len(got)} B back, mismatch")
    except Exception as e:  # noqa: BLE001
        bad += 1
        why.append(f"#{i}: {e!r}")
times.sort()
med = times[len(times) // 2] * 1000 if times else float("nan")
mx = times[-1] * 1000 if times else float("nan")
check(bad == 0, f"20 sequential 1000 B sessions, {bad} failed (median {med:.1f} ms, max {mx:.1f} ms) {'; '.join(why)}")

# 6. link down / up through the QEMU monitor (PHY interrupt path)
mark = len(uart())
monitor("set_link lan9118.0 off")
check(wait_log(r"lan9118: link down", mark, 3), "link down reported after set_link off")
mark = len(uart())
monitor("set_link lan9118.0 on")
check(wait_log(r"lan9118: link up", mark, 3), "link up reported after set_link on")
attempt, dt = first_contact(VNC)
check(attempt is not None, f"echo after link up (attempt {attempt}, {dt*1000:.0f} ms)")

# 7. idle: the WFI executor must let QEMU sleep
time.sleep(0.5)
hz = os.sysconf("SC_CLK_TCK")
c0 = cpu_ticks()
time.sleep(2.0)
busy = (cpu_ticks() - c0) / hz / 2.0
check(busy < 0.25, f"qemu idle CPU {busy*100:.0f} % (< 25 %)")

# 8. UART log
time.sleep(0.3)
log = uart()
# "Failed to send packet" is QEMU/slirp reporting a frame the NIC's RX FIFO could not take.
for bad_word in ("PANIC", "HARDFAULT", "FAILED", "dropped rx frame", "tx error", "Failed to send packet"):
    check(bad_word not in log, f"no '{bad_word}' in UART log")
check("heap self-test ok" in log, "heap self-test ok")
check("rng self-test ok" in log, "rng self-test ok")
ends = re.findall(r"session end port=\d+ slot=\d+ (\S+)=.*clean_close=(\w+)", log)
errors = [e for e in ends if e[0] != "bytes" or e[1] != "true"]
check(len(ends) >= 30 and not errors,
      f"{len(ends)} session ends logged, {len(errors)} with error or unclean close")
mems = re.findall(r"mem: (.*)", log)
if check(bool(mems), "mem line in UART log"):
    fig = dict(kv.split("=") for kv in mems[-1].split())
    fig = {k: int(v) for k, v in fig.items()}
    check(0 < fig["stack_hwm"] < fig["stack_measured"] and fig["stack_saturated"] == 0,
          f"stack_hwm {fig['stack_hwm']} B within the measured {fig['stack_measured']} B")
    check(fig["heap_fail"] == 0, "no failed heap allocations")
    print("mem: " + " ".join(f"{k}={v}" for k, v in fig.items()))

print("SMOKE " + ("PASS" if not failures else f"FAIL ({len(failures)} checks)"))
sys.exit(1 if failures else 0)
PY
