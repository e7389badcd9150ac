#!/usr/bin/env bash
# The whole test suite. Installs what it needs (Debian packages, Rust targets and tools), then runs everything.
# Usage: tests/run.sh            (everything)
#        SKIP_SETUP=1 tests/run.sh   (skip the package installation step)
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
export CARGO_TERM_COLOR=never

step() { printf '\n=== %s (%s)\n' "$*" "$(date +%T)"; }

if [ -z "${SKIP_SETUP:-}" ]; then
  step "setup"
  tests/setup.sh
fi

step "format"
cargo fmt --all -- --check

step "clippy"
cargo clippy --workspace --all-targets -- -D warnings

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --workspace --no-deps

step "no_std builds for thumbv7em-none-eabihf"
cargo build -p nbd-core --target thumbv7em-none-eabihf

step "unit, property and interop tests"
cargo test --workspace

echo
echo "ALL TESTS PASSED"
