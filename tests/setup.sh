#!/usr/bin/env bash
# Installs the Debian packages and Rust tools the test suite needs. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

pkgs=(nbdkit libnbd-bin python3-libnbd nbd-server nbd-client gnutls-bin qemu-utils llvm)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

rustup target list --installed | grep -q thumbv7em-none-eabihf || rustup target add thumbv7em-none-eabihf
rustup component list --installed | grep -q rustfmt || rustup component add rustfmt
rustup component list --installed | grep -q clippy || rustup component add clippy
if rustup toolchain list | grep -q '^nightly'; then
  rustup +nightly target list --installed | grep -q thumbv7em-none-eabihf || rustup +nightly target add thumbv7em-none-eabihf || true
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
