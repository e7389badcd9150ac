#!/usr/bin/env bash
# `cargo publish --dry-run` for the crates meant for crates.io (nbd-core, rfb-core, tls-glue),
# in a scratch copy of the tree with `publish` switched on (it stays off in the repository
# until a person decides to publish): packaging, the include lists and a build of each package
# from its .crate file. tests/run.sh calls it.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git ls-files -z --cached --others --exclude-standard | tar --null -T - -cf - | tar -xf - -C "$work"
crates=(nbd-core rfb-core tls-glue)
for c in "${crates[@]}"; do
  sed -i 's/^publish.workspace = true$/publish = true/' "$work/$c/Cargo.toml"
  grep -q '^publish = true$' "$work/$c/Cargo.toml" || { echo "$c: could not switch publish on" >&2; exit 1; }
done
args=()
for c in "${crates[@]}"; do args+=(-p "$c"); done
cd "$work"
status=0
CARGO_TARGET_DIR=$root/target/publish-check cargo publish --dry-run --allow-dirty "${args[@]}" \
  >"$work/publish.log" 2>&1 || status=$?
grep -E '^(error|\s+(Packaged|Uploading))' "$work/publish.log" || true
if [ "$status" -ne 0 ]; then
  tail -n 40 "$work/publish.log" >&2
  exit "$status"
fi
