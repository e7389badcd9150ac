#!/bin/sh
# Boot the MPS2 firmware in QEMU in the background and print its PID once it is listening.
#
#   ./run-qemu.sh [ELF]            default ELF: target/thumbv7em-none-eabihf/release/embedded-demo
#
# Environment (all optional):
#   VNC_HOST_PORT  host port forwarded to guest :5900   (default 15900)
#   NBD_HOST_PORT  host port forwarded to guest :10809  (default 10809)
#   WS_HOST_PORT   host port forwarded to guest :5700 (wss) (default 15700)
#   UART_LOG       file receiving the firmware's UART0  (default target/qemu-uart.log)
#   QEMU_MONITOR   unix socket path for the QEMU monitor (default: none)
#   QEMU_PCAP      file to capture the guest's Ethernet frames into (default: none)
#   QEMU_MACHINE   mps2-an500 (Cortex-M7, default) or mps2-an386 (Cortex-M4F)
#   BOOT_TIMEOUT   seconds to wait for `listening`      (default 20)
#
# Networking is QEMU user mode (slirp) with restrict=on (the guest cannot reach anything) and
# the forwards bound to 127.0.0.1 only. stdout gets only the PID; messages go to stderr.
# Stop it with: kill <PID>
set -eu
cd "$(dirname "$0")"

ELF=${1:-target/thumbv7em-none-eabihf/release/embedded-demo}
VNC_HOST_PORT=${VNC_HOST_PORT:-15900}
NBD_HOST_PORT=${NBD_HOST_PORT:-10809}
WS_HOST_PORT=${WS_HOST_PORT:-15700}
UART_LOG=${UART_LOG:-target/qemu-uart.log}
QEMU_MACHINE=${QEMU_MACHINE:-mps2-an500}
BOOT_TIMEOUT=${BOOT_TIMEOUT:-20}

command -v qemu-system-arm >/dev/null 2>&1 || {
    echo "run-qemu: qemu-system-arm not found (apt-get install -t bookworm-backports qemu-system-arm)" >&2
    exit 1
}
[ -f "$ELF" ] || { echo "run-qemu: $ELF not found (cargo build --release)" >&2; exit 1; }

# The Nucleo build writes the same path: refuse an ELF that is not linked for MPS2 (code at 0x0).
entry=$(python3 -c 'import struct,sys
h=open(sys.argv[1],"rb").read(0x1c)
assert h[:4]==b"\x7fELF" and h[4]==1, "not a 32-bit ELF"
print(struct.unpack_from("<I",h,0x18)[0])' "$ELF")
if [ "$entry" -ge 4194304 ]; then
    echo "run-qemu: $ELF is not an MPS2 image (entry $(printf '%#x' "$entry")); rebuild with: cargo build --release" >&2
    exit 1
fi

mkdir -p "$(dirname "$UART_LOG")"
: >"$UART_LOG"
set -- -M "$QEMU_MACHINE" -nographic -kernel "$ELF" \
    -nic "user,id=net0,restrict=on,hostfwd=tcp:127.0.0.1:${VNC_HOST_PORT}-:5900,hostfwd=tcp:127.0.0.1:${NBD_HOST_PORT}-:10809,hostfwd=tcp:127.0.0.1:${WS_HOST_PORT}-:5700"
if [ -n "${QEMU_MONITOR:-}" ]; then
    rm -f "$QEMU_MONITOR"
    set -- "$@" -monitor "unix:${QEMU_MONITOR},server,nowait"
fi
if [ -n "${QEMU_PCAP:-}" ]; then
    set -- "$@" -object "filter-dump,id=dump0,netdev=net0,file=${QEMU_PCAP}"
fi
qemu-system-arm "$@" </dev/null >"$UART_LOG" 2>&1 &
pid=$!

# Poll for the `listening` line (10 ms steps).
i=0
limit=$((BOOT_TIMEOUT * 100))
while ! grep -q 'listening' "$UART_LOG" 2>/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "run-qemu: QEMU exited during boot; log $UART_LOG:" >&2
        cat "$UART_LOG" >&2
        exit 1
    fi
    i=$((i + 1))
    if [ "$i" -ge "$limit" ]; then
        echo "run-qemu: no 'listening' within ${BOOT_TIMEOUT}s; log $UART_LOG:" >&2
        cat "$UART_LOG" >&2
        kill "$pid" 2>/dev/null || true
        exit 1
    fi
    sleep 0.01
done
echo "run-qemu: listening (127.0.0.1:${VNC_HOST_PORT} -> :5900, 127.0.0.1:${WS_HOST_PORT} -> :5700, 127.0.0.1:${NBD_HOST_PORT} -> :10809), UART log $UART_LOG" >&2
echo "$pid"
