#!/usr/bin/env bash
# Firmware CI: builds the MPS2-AN500 image with freshly generated credentials, boots it under
# qemu-system-arm (user networking, restrict=on, forwards on 127.0.0.1 only) and drives it
# with real peers; also builds the NUCLEO-H743ZI image. Fails on any mismatch.
#
#   embedded-demo/ci.sh            (tests/run.sh calls it)
#
# Steps: the firmware's crypto configuration on the host (tls-glue rustcrypto-core); kvmio
# (built if missing); credentials (kvmio creds generate) in a temporary directory; both
# firmware builds; boot; NBD over TLS with nbdinfo (info, --map), qemu-img (compare,
# convert), qemu-io (RAM disk write/read back), kvmio nbd copy; VNC over TLS (X509Vnc with a
# client certificate) with gvnccapture and kvmio vnc capture, pixels checked; X509None
# refused; the console over wss (TLS → WebSocket → RFB, tls_glue::ws) with kvmio vnc capture
# wss://, pixels checked, and its hostile input (ci/fwtest.py wss); hostile input
# (ci/fwtest.py hostile) with a normal client after every case; one VNC
# and one NBD session at the same time; the NBD handshake deadline; link down/up through the
# QEMU monitor and idle host CPU (WFI); footprint figures (llvm-size, the UART `mem:` lines)
# as a table for docs/BENCHMARKS.md; the UART log free of panics, faults and dropped frames.
#
# Environment: CI_SKIP_NUCLEO=1 skips the NUCLEO-H743ZI build (≈2 min and ≈0.7 GB cold).
# embedded-demo/target is reused between runs (the Nucleo build goes to target/nucleo).
set -euo pipefail
cd "$(dirname "$0")"
HERE=$PWD
ROOT=$(cd .. && pwd)
KVMIO=$ROOT/target/release/kvmio
ELF=target/thumbv7em-none-eabihf/release/embedded-demo
IMAGE=$HERE/target/thumbv7em-none-eabihf/release/flash-image.bin
NUCLEO_ELF=target/nucleo/thumbv7em-none-eabihf/release/embedded-demo
WSS_ELF=target/wss/thumbv7em-none-eabihf/release/embedded-demo
export CARGO_TERM_COLOR=never
start=$(date +%s)

step() { printf '\n--- %s (%ss)\n' "$*" "$(($(date +%s) - start))"; }
fail() {
    echo "FAIL: $*" >&2
    if [ -n "${UART_LOG:-}" ] && [ -f "$UART_LOG" ]; then
        echo "--- last lines of the firmware's UART log ($UART_LOG):" >&2
        tail -n 40 "$UART_LOG" >&2
    fi
    exit 1
}

for tool in qemu-system-arm qemu-img qemu-io nbdinfo gvnccapture script llvm-size python3 cargo; do
    command -v "$tool" >/dev/null 2>&1 || fail "$tool not found (tests/setup.sh installs the peers)"
done

WORK=$(mktemp -d /tmp/kvmio-fw-ci.XXXXXX)
QEMU_PID=
PKI_HOME=$(getent passwd "$(id -u)" | cut -d: -f6)
PKI_BACKUP=
cleanup() {
    if [ -n "$QEMU_PID" ]; then
        kill "$QEMU_PID" 2>/dev/null || true
        wait "$QEMU_PID" 2>/dev/null || true
    fi
    if [ -n "$PKI_BACKUP" ]; then
        rm -rf "$PKI_HOME/.pki"
        if [ -e "$PKI_BACKUP/.pki" ]; then mv "$PKI_BACKUP/.pki" "$PKI_HOME/.pki"; fi
    fi
    rm -rf "$WORK"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step "firmware crypto configuration on the host (tls-glue rustcrypto-core)"
(cd "$ROOT" && cargo test -q -p tls-glue --no-default-features --features std,rustcrypto-core \
    --test rustcrypto_features --test small_buffers 2>&1 | grep -E '^test result|FAILED|panicked') ||
    fail "tls-glue with rustcrypto-core"

step "kvmio and credentials"
if [ ! -x "$KVMIO" ]; then
    (cd "$ROOT" && cargo build --release -p kvmio)
fi
CREDS=$WORK/creds
"$KVMIO" creds generate "$CREDS" --hostname mps2.test --ip 127.0.0.1 --ip 10.0.2.15 >/dev/null

step "build MPS2-AN500 firmware"
KVMIO_CREDS=$CREDS cargo build --release 2>&1 | grep -E '^(warning|error)|Finished' || true
[ -f "$ELF" ] && [ -f "$IMAGE" ] || fail "firmware build"
if KVMIO_CREDS=$CREDS cargo build --release 2>&1 | grep -qE '^(warning|error)'; then
    fail "the firmware build has warnings or errors"
fi

step "build the MPS2-AN500 firmware with the wss console (feature wss)"
KVMIO_CREDS=$CREDS cargo build --release --features wss --target-dir target/wss 2>&1 |
    grep -E '^(warning|error)|Finished' || true
[ -f "$WSS_ELF" ] || fail "firmware build with wss"

if [ -z "${CI_SKIP_NUCLEO:-}" ]; then
    step "build NUCLEO-H743ZI firmware (same app, hardware RNG)"
    KVMIO_CREDS=$CREDS cargo build --release --no-default-features --features board-nucleo-h743 \
        --target-dir target/nucleo 2>&1 | grep -E '^(warning|error)|Finished' || true
    [ -f "$NUCLEO_ELF" ] || fail "NUCLEO-H743ZI build"
fi

step "boot under qemu-system-arm"
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
VNC_PORT=$(free_port)
NBD_PORT=$(free_port)
while [ "$VNC_PORT" -le 5900 ] || [ "$VNC_PORT" = "$NBD_PORT" ]; do VNC_PORT=$(free_port); done
WS_PORT=$(free_port)
while [ "$WS_PORT" = "$VNC_PORT" ] || [ "$WS_PORT" = "$NBD_PORT" ]; do WS_PORT=$(free_port); done
UART_LOG=$WORK/uart.log
MONITOR=$WORK/monitor.sock
QEMU_PID=$(VNC_HOST_PORT=$VNC_PORT NBD_HOST_PORT=$NBD_PORT WS_HOST_PORT=$WS_PORT UART_LOG=$UART_LOG BOOT_TIMEOUT=30 \
    QEMU_MONITOR=$MONITOR ./run-qemu.sh "$ELF") || fail "boot"
echo "qemu pid $QEMU_PID, VNC 127.0.0.1:$VNC_PORT, NBD 127.0.0.1:$NBD_PORT"
grep -E 'listening|tls:|vnc:' "$UART_LOG"
slot_line=$(grep -o 'per-slot static.*' "$UART_LOG" | sed 's/per-slot static //')

# Waits until every session the firmware opened has ended (the slots are free again) and the
# log has been quiet for 0.2 s: the firmware writes its log when idle, so a line can lag
# behind what a client already saw.
idle() {
    local i size last=-1 quiet=0
    for i in $(seq 400); do
        size=$(stat -c %s "$UART_LOG")
        if [ "$size" = "$last" ]; then quiet=$((quiet + 1)); else quiet=0; last=$size; fi
        if [ "$quiet" -ge 4 ] &&
            [ "$(grep -c 'session open' "$UART_LOG")" = "$(grep -c 'session end' "$UART_LOG")" ]; then
            return 0
        fi
        sleep 0.05
    done
    fail "sessions still open on the firmware"
}
# The `mem:` line printed when the last session ended.
last_mem() { grep 'mem: stack_hwm' "$UART_LOG" | tail -n 1 | sed 's/.*mem: //'; }
field() { echo "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }

NBD_URI="nbds://127.0.0.1:$NBD_PORT"
TLS_OBJ="tls-creds-x509,id=tls0,endpoint=client,dir=$CREDS"
nbd_opts() { echo "driver=nbd,host=127.0.0.1,port=$NBD_PORT,export=$1,tls-creds=tls0"; }

step "NBD: nbdinfo over TLS"
info=$(nbdinfo "$NBD_URI/iso?tls-certificates=$CREDS") || fail "nbdinfo"
echo "$info" | grep -E 'protocol|export-size|is_read_only|can_multi_conn|base:allocation'
grep -q 'with TLS' <<<"$info" || fail "nbdinfo: not TLS"
grep -q "export-size: $(stat -c %s "$IMAGE")" <<<"$info" || fail "nbdinfo: iso size"
grep -q 'is_read_only: true' <<<"$info" || fail "nbdinfo: iso not read-only"
grep -q 'base:allocation' <<<"$info" || fail "nbdinfo: no base:allocation"
nbdinfo "$NBD_URI/ram?tls-certificates=$CREDS" | grep -q 'can_multi_conn: false' ||
    fail "nbdinfo: the RAM disk claims multi-conn"
idle

step "NBD: nbdinfo --map shows the zero regions"
map=$(nbdinfo --map "$NBD_URI/iso?tls-certificates=$CREDS") || fail "nbdinfo --map"
echo "$map"
want_map=$(python3 - "$IMAGE" <<'EOF'
import sys
img = open(sys.argv[1], "rb").read()
B = 4096
runs = []
for off in range(0, len(img), B):
    z = not any(img[off:off + B])
    if runs and runs[-1][2] == z:
        runs[-1][1] += B
    else:
        runs.append([off, B, z])
for off, n, z in runs:
    print(off, n, 3 if z else 0)
EOF
)
got_map=$(echo "$map" | awk '{print $1, $2, $3}')
[ "$got_map" = "$want_map" ] || fail "nbdinfo --map differs from the image's zero blocks: want
$want_map"
grep -q 'hole,zero' <<<"$map" || fail "no zero region reported"
idle

step "NBD: qemu-img compare and convert over TLS, byte for byte"
qemu-img compare --object "$TLS_OBJ" --image-opts "$(nbd_opts iso)" \
    "driver=raw,file.filename=$IMAGE" || fail "qemu-img compare"
idle
qemu-img convert --object "$TLS_OBJ" --image-opts "$(nbd_opts iso)" -O raw "$WORK/iso.raw" ||
    fail "qemu-img convert"
cmp "$WORK/iso.raw" "$IMAGE" || fail "qemu-img convert: image differs"
echo "qemu-img: identical ($(stat -c %s "$IMAGE") bytes)"
idle

step "NBD: qemu-io writes the RAM disk and reads it back (TLS)"
qio() { qemu-io --object "$TLS_OBJ" --image-opts "$(nbd_opts ram)" "$@"; }
out=$(qio -c 'write -P 0xa5 0 16k' -c 'write -P 0x3c 4096 4096' -c 'write -z 12288 4096' \
    -c 'flush' -c 'read -P 0xa5 0 4096' -c 'read -P 0x3c 4096 4096' -c 'read -P 0xa5 8192 4096' \
    -c 'read -P 0 12288 4096') || fail "qemu-io: $out"
echo "$out" | grep -E '^(wrote|read)'
echo "$out" | grep -qiE 'fail|mismatch|error' && fail "qemu-io: $out"
idle
ram_mem=$(last_mem)
# A second connection sees what the first wrote.
qio -c 'read -P 0x3c 4096 4096' -c 'read -P 0 12288 4096' >/dev/null || fail "qemu-io: read back"
idle

step "NBD: kvmio nbd copy (TLS)"
"$KVMIO" nbd copy --no-progress --tls-creds "$CREDS" "$NBD_URI/iso" "$WORK/kvmio-copy.bin" ||
    fail "kvmio nbd copy"
cmp "$WORK/kvmio-copy.bin" "$IMAGE" || fail "kvmio nbd copy: image differs"
echo "kvmio nbd copy: identical"
idle

step "VNC: gvnccapture (VeNCrypt X509Vnc, client certificate, password from a TTY)"
PKI_BACKUP=$WORK/pki-backup
mkdir -p "$PKI_BACKUP"
if [ -e "$PKI_HOME/.pki" ]; then mv "$PKI_HOME/.pki" "$PKI_BACKUP/.pki"; fi
mkdir -p "$PKI_HOME/.pki/CA" "$PKI_HOME/.pki/gvnccapture/private"
cp "$CREDS/ca-cert.pem" "$PKI_HOME/.pki/CA/cacert.pem"
cp "$CREDS/client-cert.pem" "$PKI_HOME/.pki/gvnccapture/clientcert.pem"
cp "$CREDS/client-key.pem" "$PKI_HOME/.pki/gvnccapture/private/clientkey.pem"
(sleep 2; echo secret) | timeout 30 script -qec \
    "gvnccapture 127.0.0.1:$((VNC_PORT - 5900)) $WORK/gvnc.png" /dev/null >"$WORK/gvnc.log" 2>&1 ||
    { cat "$WORK/gvnc.log"; fail "gvnccapture"; }
rm -rf "$PKI_HOME/.pki"
if [ -e "$PKI_BACKUP/.pki" ]; then mv "$PKI_BACKUP/.pki" "$PKI_HOME/.pki"; fi
PKI_BACKUP=
grep -E 'Connected|Saved' "$WORK/gvnc.log" | tr -d '\r'
grep -q 'sub-type 261' "$UART_LOG" || fail "gvnccapture did not use X509Vnc"
(cd ci && python3 fwtest.py png "$WORK/gvnc.png" 240 160) || fail "gvnccapture PNG"
idle

step "VNC: kvmio vnc capture"
"$KVMIO" vnc --help | grep -q capture ||
    fail "kvmio has no 'vnc capture' command (expected from the kvmio VNC work)"
echo secret >"$WORK/vncpass"
"$KVMIO" vnc capture "vnc://127.0.0.1:$VNC_PORT" "$WORK/kvmio.png" --security X509Vnc \
    --password-file "$WORK/vncpass" --tls-creds "$CREDS" || fail "kvmio vnc capture"
(cd ci && python3 fwtest.py png "$WORK/kvmio.png" 240 160) || fail "kvmio vnc capture PNG"
vnc_mem=$(last_mem)
idle
if "$KVMIO" vnc capture "vnc://127.0.0.1:$VNC_PORT" "$WORK/none.png" --security X509None \
    --tls-creds "$CREDS" --timeout 20 >/dev/null 2>&1; then
    fail "X509None (not offered) was accepted"
fi
echo "X509None refused (not offered)"
idle

step "hostile input; a normal client after every case"
(cd ci && python3 fwtest.py hostile "$VNC_PORT" "$NBD_PORT" "$CREDS" "$IMAGE" "$UART_LOG") ||
    fail "hostile input"
idle

step "one VNC and one NBD session at the same time"
(cd ci && python3 fwtest.py vnc-watch "$VNC_PORT" "$CREDS" 6) >"$WORK/watch.log" 2>&1 &
watch_pid=$!
sleep 1.5
qio -c 'write -P 0x77 0 16k' -c 'read -P 0x77 0 16k' >/dev/null || fail "qemu-io during VNC"
qemu-img compare --object "$TLS_OBJ" --image-opts "$(nbd_opts iso)" \
    "driver=raw,file.filename=$IMAGE" >/dev/null || fail "qemu-img compare during VNC"
wait "$watch_pid" || { cat "$WORK/watch.log"; fail "VNC session during NBD"; }
cat "$WORK/watch.log"
idle
both_mem=$(last_mem)
# The NBD sessions ran while the VNC one was open.
python3 - "$UART_LOG" <<'EOF' || fail "the VNC and NBD sessions did not overlap"
import re, sys
live, both = set(), False
for line in open(sys.argv[1]):
    m = re.search(r"session (open|end) port=(\d+) slot=(\d+)", line)
    if m:
        (live.add if m[1] == "open" else live.discard)((m[2], m[3]))
        both = both or {p for p, _ in live} == {"5900", "10809"}
sys.exit(0 if both else 1)
EOF
echo "sessions overlapped"

step "handshake deadline"
(cd ci && python3 fwtest.py deadline "$NBD_PORT" 10) || fail "handshake deadline"
grep -q 'handshake deadline passed' "$UART_LOG" || fail "no deadline in the UART log"
idle

step "link down and up, then idle"
(cd ci && python3 fwtest.py link-idle "$QEMU_PID" "$MONITOR" "$UART_LOG" "$NBD_PORT" "$CREDS" \
    "$IMAGE") || fail "link down/up or idle CPU"

step "UART log"
for bad in PANIC panicked HARDFAULT 'heap_fail=[1-9]' 'dropped' 'self-test FAILED'; do
    if grep -qE "$bad" "$UART_LOG"; then fail "UART log: $bad"; fi
done
if grep -q 'Failed to send packet' "$UART_LOG"; then fail "slirp dropped frames"; fi
echo "$(grep -c 'session end' "$UART_LOG") sessions, no panic, fault, heap failure or drop"

step "the wss image: boot it, and its UART log"
kill "$QEMU_PID" 2>/dev/null || true
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=
UART_LOG=$WORK/uart-wss.log
QEMU_PID=$(VNC_HOST_PORT=$VNC_PORT NBD_HOST_PORT=$NBD_PORT WS_HOST_PORT=$WS_PORT UART_LOG=$UART_LOG \
    BOOT_TIMEOUT=30 ./run-qemu.sh "$WSS_ELF") || fail "boot the wss image"
grep -E 'listening|vnc over wss' "$UART_LOG"
grep -q 'vnc over wss on tcp port 5700' "$UART_LOG" || fail "the wss image does not serve wss"

step "VNC over wss: kvmio vnc capture wss://, hostile WebSocket input"
"$KVMIO" vnc capture "wss://127.0.0.1:$WS_PORT/" "$WORK/wss.png" \
    --password-file "$WORK/vncpass" --tls-creds "$CREDS" || fail "kvmio vnc capture wss://"
(cd ci && python3 fwtest.py png "$WORK/wss.png" 240 160) || fail "kvmio vnc capture wss:// PNG"
grep -q 'ws slot 1: WebSocket open' "$UART_LOG" || fail "no WebSocket session in the UART log"
idle
wss_mem=$(last_mem)
echo wrong >"$WORK/badpass"
if "$KVMIO" vnc capture "wss://127.0.0.1:$WS_PORT/" "$WORK/bad.png" \
    --password-file "$WORK/badpass" --tls-creds "$CREDS" --timeout 20 >/dev/null 2>&1; then
    fail "a wrong password was accepted over wss"
fi
echo "wrong password refused over wss"
idle
(cd ci && python3 fwtest.py wss "$WS_PORT" "$CREDS" "$UART_LOG") || fail "wss hostile input"
idle

"$KVMIO" vnc capture "vnc://127.0.0.1:$VNC_PORT" "$WORK/kvmio-wss-image.png" --security X509Vnc \
    --password-file "$WORK/vncpass" --tls-creds "$CREDS" || fail "kvmio vnc capture (wss image)"
idle
for bad in PANIC panicked HARDFAULT 'heap_fail=1'; do
    if grep -q "$bad" "$UART_LOG"; then fail "UART log (wss image): $bad"; fi
done
echo "$(grep -c 'session end' "$UART_LOG") sessions on the wss image, no panic, fault or heap failure"

step "footprint (paste into docs/BENCHMARKS.md)"
kill "$QEMU_PID" 2>/dev/null || true
wait "$QEMU_PID" 2>/dev/null || true
QEMU_PID=
sec() { llvm-size -A "$1" | awk -v s="$2" '$1 == s { print $2 }'; }
heap_of() { llvm-nm --print-size --radix=d "$1" | awk '/init_heap.*HEAP_MEM/ { print $2 + 0 }'; }
kib() { awk -v b="$1" 'BEGIN { printf "%.1f", b / 1024 }'; }
row() { # board elf [mem line]
    local elf=$2 text rodata data bss image heap static flash
    text=$(sec "$elf" .text); rodata=$(sec "$elf" .rodata); data=$(sec "$elf" .data)
    bss=$(( $(sec "$elf" .bss) + $(sec "$elf" .uninit | grep . || echo 0) ))
    image=$(sec "$elf" .nbd_image); heap=$(heap_of "$elf")
    flash=$((text + rodata)); static=$((data + bss - heap))
    if [ -n "${3:-}" ]; then
        local peak hwm
        peak=$(field "$3" heap_peak); hwm=$(field "$3" stack_hwm)
        echo "| $1 | $flash ($(kib $flash) KiB) | $image | $static ($(kib $static) KiB) | $heap | $peak | $hwm | $((static + peak + hwm)) ($(kib $((static + peak + hwm))) KiB) |"
    else
        # Not run here: the same app's heap and stack as measured on MPS2.
        local peak hwm
        peak=$(field "$4" heap_peak); hwm=$(field "$4" stack_hwm)
        echo "| $1 | $flash ($(kib $flash) KiB) | $image | $static ($(kib $static) KiB) | $heap | not run (MPS2: $peak) | not run (MPS2: $hwm) | ≈ $((static + peak + hwm)) (≈ $(kib $((static + peak + hwm))) KiB, estimate) |"
    fi
    STATIC=$static
}
echo
echo "| board | flash: .text+.rodata | .nbd_image | static RAM: .data+.bss − heap arena | heap arena | heap peak, 1 VNC + 1 NBD live | stack high-water | RAM total (static + heap peak + stack) |"
echo "|---|---|---|---|---|---|---|---|"
row "MPS2-AN500 (QEMU)" "$ELF" "$both_mem"
mps2_static=$STATIC
row "MPS2-AN500 with the wss console (one wss session live)" "$WSS_ELF" "$wss_mem"
if [ -z "${CI_SKIP_NUCLEO:-}" ]; then row "NUCLEO-H743ZI" "$NUCLEO_ELF" "" "$both_mem"; fi
base=$(field "$vnc_mem" heap_now)
echo
echo "Per session (heap, measured alone; baseline $base B of credentials and configuration):"
echo "VNC (kvmio vnc capture): $(( $(field "$vnc_mem" heap_peak) - base )) B;" \
    "VNC over wss (kvmio vnc capture wss://): $(( $(field "$wss_mem" heap_peak) - base )) B;" \
    "NBD with 16 KiB-record writes (qemu-io): $(( $(field "$ram_mem" heap_peak) - base )) B;" \
    "static per session slot: $slot_line (the wss image: $(grep -o 'per-slot static.*' "$UART_LOG" | sed 's/per-slot static //'))"
vnc_heap=$(( $(field "$vnc_mem" heap_peak) - base ))
nbd_heap=$(( $(field "$ram_mem" heap_peak) - base ))
worst=$((mps2_static + base + vnc_heap + nbd_heap + $(field "$both_mem" stack_hwm)))
echo "MPS2 with both lone-session peaks at once (static + baseline + VNC + NBD + stack):" \
    "$worst B ($(kib $worst) KiB)"
echo "mem line after the concurrent sessions: $both_mem"
echo
echo "FIRMWARE CI PASSED in $(($(date +%s) - start))s"
