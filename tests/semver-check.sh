#!/usr/bin/env bash
# API compatibility of the published crates (nbd-core, rfb-core, tls-glue) with cargo-semver-checks.
#
# Usage: tests/semver-check.sh [BASELINE]
#   BASELINE  a git revision to compare with (default: the crates' newest version on crates.io,
#             which does not exist until a person decides to publish: see README).
# Not part of CI: there is no released baseline to compare with yet (every change before the
# first release is free to break), and building cargo-semver-checks takes 8-13 minutes on this
# 2-core machine, which would take CI past its 30-minute budget. Run it before a release and in
# review of an API change. Installs cargo-semver-checks from crates.io if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! cargo semver-checks --version >/dev/null 2>&1; then
  cargo install cargo-semver-checks --locked
fi
if [ $# -gt 0 ]; then
  baseline=(--baseline-rev "$1")
else
  baseline=()
fi
cargo semver-checks -p nbd-core -p rfb-core -p tls-glue "${baseline[@]}"
