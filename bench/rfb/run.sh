#!/usr/bin/env bash
# VNC encoders side by side: rfb-core (Rust, as `kvmio vnc serve` runs it: ZRLE and Tight
# through zlib-rs) and libvncserver (C, compiled here against libvncserver-dev), Hextile, ZRLE,
# Tight and Tight with JPEG, on
# the same 1920x1080 desktop-like frame: a full update and a 10 % damage update. Both sides read
# the frames from files the Rust side writes, encode in the server's own pixel format and write
# every update to a socketpair drained by a reader thread. Prints a Markdown table; then a second
# one for a 1080p MJPEG stream (what an HDMI-to-USB capture dongle sends) to a Tight JPEG
# viewer: rfb-core passing the frames through and encoding them anew, libvncserver encoding them.
#
# Usage: bench/rfb/run.sh            (BENCH_SECONDS=N per case, default 3)
set -euo pipefail
cd "$(dirname "$0")/../.."
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
export BENCH_SECONDS=${BENCH_SECONDS:-3}

pkg-config --exists libvncserver || { echo "libvncserver-dev is not installed (tests/setup.sh installs it)" >&2; exit 1; }
cargo build --release -q -p std-shim --example vnc_encode_bench
bin=${CARGO_TARGET_DIR:-target}/release/examples/vnc_encode_bench
"$bin" frames "$work"
cc -O2 -o "$work/libvnc_bench" bench/rfb/libvnc_bench.c $(pkg-config --cflags --libs libvncserver) -lpthread
if [ -z "${BENCH_MJPEG_ONLY:-}" ]; then
  "$work/libvnc_bench" "$work" > "$work/c.txt"
  "$bin" run "$work" > "$work/rust.txt"
fi
"$work/libvnc_bench" mjpeg "$work" > "$work/mjpeg.txt"
"$bin" mjpeg "$work" >> "$work/mjpeg.txt"
"$bin" sizes > "$work/sizes.txt"

python3 - "$work" "$(pkg-config --modversion libvncserver)" <<'PY'
import sys
work, libver = sys.argv[1], sys.argv[2]
def load(name):
    r = {}
    for line in open(f"{work}/{name}"):
        enc, case, best, med, size, n = line.split()
        r[(enc, case)] = (int(best), int(med), int(size), int(n))
    return r
import os
if not os.path.exists(f"{work}/rust.txt"):
    rust, c = {}, {}
else:
    rust, c = load("rust.txt"), load("c.txt")
cases = {"full": "full frame", "text": "10 % damage: text", "photo": "10 % damage: text + photo"}
if rust:
    print(f"| encoder | update | rfb-core | libvncserver {libver} | speed-up | rfb-core bytes | libvncserver bytes | size ratio |")
    print("|---|---|---:|---:|---:|---:|---:|---:|")
    for key in rust:
        (rb_, rm, rs, rn), (cb_, cm, cs, cn) = rust[key], c[key]
        print(f"| {key[0]} | {cases[key[1]]} | {rb_/1e6:.2f} ms ({rm/1e6:.2f}) | {cb_/1e6:.2f} ms ({cm/1e6:.2f}) "
              f"| {cb_/rb_:.2f}x ({cm/rm:.2f}x) | {rs:,} | {cs:,} | {rs/cs:.3f} |")
    sizes = dict(l.split() for l in open(f"{work}/sizes.txt"))
    print()
    print(f"Times: fastest of {min(v[3] for v in rust.values())}+ (rfb-core) and {min(v[3] for v in c.values())}+ "
          f"(libvncserver) runs per case, medians in parentheses. size_of: rfb_core::server::Server = "
          f"{sizes['Server']} bytes, rfb_core::client::Client = {sizes['Client']} bytes (with the `alloc` feature).")
m = {}
for line in open(f"{work}/mjpeg.txt"):
    _, mode, fps, cpu, size, n = line.split()
    m[mode] = (float(fps), int(cpu), int(size), int(n))
base = m["libvncserver"][1]
names = {"libvncserver": "libvncserver: decode (its TurboJPEG layer) + Tight JPEG",
         "pass-through": "rfb-core: decode (libjpeg-turbo) + pass-through",
         "re-encode-libjpeg-turbo": "rfb-core: decode + Tight JPEG (libjpeg-turbo)",
         "re-encode-rust": "rfb-core: decode + Tight JPEG (jpeg-encoder)"}
print()
print("| 1080p MJPEG → Tight JPEG viewer | frames/s | CPU per frame | CPU vs libvncserver | bytes per frame |")
print("|---|---:|---:|---:|---:|")
for mode in ["libvncserver", "pass-through", "re-encode-libjpeg-turbo", "re-encode-rust"]:
    fps, cpu, size, n = m[mode]
    print(f"| {names[mode]} | {fps:.1f} | {cpu/1e6:.2f} ms | {base/cpu:.2f}x | {size:,} |")
PY
