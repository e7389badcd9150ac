#!/usr/bin/env bash
# The whole test suite. Installs what it needs (Debian packages, Rust targets and tools), then
# runs everything: format, lints, docs, no_std builds, the no-allocator link check, unit,
# property and interop tests, and short fuzz runs.
# Usage: tests/run.sh                 (everything)
#        SKIP_SETUP=1 tests/run.sh    (skip installing packages and tools)
#        FUZZ_SECONDS=N tests/run.sh  (fuzz time per target, default 20)
set -euo pipefail
cd "$(dirname "$0")/.."
export CARGO_TERM_COLOR=never
FUZZ_SECONDS=${FUZZ_SECONDS:-20}
start=$(date +%s)

step() { printf '\n=== %s (%ss)\n' "$*" "$(( $(date +%s) - start ))"; }

if [ -z "${SKIP_SETUP:-}" ]; then
  step "setup"
  tests/setup.sh
fi

step "format"
cargo fmt --all -- --check

step "generated HID keymap tables (rfb-core/src/hid/layouts/generated.rs) match their sources"
keymaps_scratch=$(mktemp -d)
python3 rfb-core/tools/gen_keymaps.py --out "$keymaps_scratch"
diff -u rfb-core/src/hid/layouts/generated.rs "$keymaps_scratch/generated.rs"
rm -rf "$keymaps_scratch"

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "MSRV: the published crates with Rust 1.88 (rust-version)"
CARGO_TARGET_DIR=target/msrv cargo +1.88 build -p nbd-core -p rfb-core -p tls-glue --all-features

step "cargo publish --dry-run of the published crates (scratch copy, publish switched on)"
tests/publish-check.sh

step "no_std builds for thumbv7em-none-eabihf"
cargo build -p nbd-core --target thumbv7em-none-eabihf --no-default-features
cargo build -p rfb-core --target thumbv7em-none-eabihf --no-default-features
cargo build -p tls-glue --target thumbv7em-none-eabihf --no-default-features --features rustcrypto,websocket

step "cores linked into a Cortex-M binary with no global allocator, run under qemu-system-arm"
(cd tests/no-alloc-link && cargo build --release --target thumbv7em-none-eabihf)
llvm-size tests/no-alloc-link/target/thumbv7em-none-eabihf/release/no-alloc-link
timeout 60 qemu-system-arm -M mps2-an500 -nographic -semihosting-config enable=on,target=native \
  -kernel tests/no-alloc-link/target/thumbv7em-none-eabihf/release/no-alloc-link

step "unit, property and interop tests"
# the interop tests (kvmio-tests) run the release kvmio binary against qemu/libnbd/nbdkit;
# the appliance tests boot Debian's kernel (tests/appliance/build.sh downloads and unpacks it
# into target/appliance) with release kvmio and appliance-agent inside
cargo build --release -p kvmio -p kvmio-tests --bins
tests/appliance/build.sh
cargo build --release -p nbd-core -p rfb-core -p tls-glue -p std-shim --examples
cargo test --workspace

step "the crates' tool examples, briefly (the role examples ran above, in crate_examples)"
examples_scratch=$(mktemp -d)
cargo run -q --release -p tls-glue --features generate --example throughput -- 64
cargo run -q --release -p rfb-core --features jpeg --example fuzz_seeds -- "$examples_scratch/corpus"
for t in rfb_server rfb_client rfb_decoders; do
  test -n "$(ls -A "$examples_scratch/corpus/$t")"
done
target/release/examples/vnc_encode_bench sizes
target/release/examples/vnc_encode_bench frames "$examples_scratch/frames"
BENCH_SECONDS=1 target/release/examples/vnc_encode_bench run "$examples_scratch/frames"
rm -rf "$examples_scratch"

step "fuzz (${FUZZ_SECONDS}s per target)"
if rustup toolchain list | grep -q '^nightly'; then
  fuzz=(cargo +nightly fuzz)
else
  # cargo-fuzz needs -Z flags; without a nightly toolchain let stable accept them.
  export RUSTC_BOOTSTRAP=1
  fuzz=(cargo fuzz)
fi
# Each target starts from the committed, minimized corpus (fuzz/corpus/<target>, kept by
# fuzz/campaign.sh); what it finds new goes to a scratch directory, not into the tree.
fuzz_scratch=$(mktemp -d)
(cd fuzz && for t in $("${fuzz[@]}" list); do
  echo "--- $t"
  mkdir -p "$fuzz_scratch/$t" "corpus/$t"  # a new target may have no corpus yet
  "${fuzz[@]}" run "$t" "$fuzz_scratch/$t" "corpus/$t" -- -max_total_time="$FUZZ_SECONDS" -print_final_stats=1 2>&1 | grep -E 'Done|stat::number_of_executed_units|ERROR|panicked' || true
  test "${PIPESTATUS[0]}" -eq 0
done)
rm -rf "$fuzz_scratch"

# --- embedded-demo: the firmware (MPS2-AN500) booted in qemu-system-arm and driven with real
# peers over TLS (nbdinfo, qemu-img, qemu-io, kvmio, gvnccapture, hostile input); also builds
# the NUCLEO-H743ZI image and prints the footprint table. See embedded-demo/ci.sh.
step "firmware under qemu-system-arm"
embedded-demo/ci.sh

echo
echo "ALL TESTS PASSED in $(( $(date +%s) - start ))s"
