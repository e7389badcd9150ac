#!/usr/bin/env bash
# Installs the Debian packages and Rust tools the test suite needs. Idempotent.
set -euo pipefail
export DEBIAN_FRONTEND=noninteractive
SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"

pkgs=(nbdkit libnbd-bin python3-libnbd nbd-server nbd-client gnutls-bin qemu-utils llvm)
# VNC peers (gvnccapture; TigerVNC viewer, Xvnc and vncpasswd; Xvfb and ImageMagick's import
# for screenshots) and libvncserver-dev + pkg-config for bench/rfb.
pkgs+=(gvncviewer tigervnc-viewer tigervnc-standalone-server tigervnc-tools xvfb xauth x11-utils
  imagemagick libvncserver-dev pkg-config)
# keysymdef.h for rfb-core/tools/gen_keymaps.py (the HID keymap tables; the keymaps themselves
# are in qemu-system-data, which qemu-system-x86 below depends on)
pkgs+=(x11proto-dev)
# The emulated appliance (tests/appliance/build.sh): unpacking Debian's kernel and busybox,
# the modules' dependency closure, the initramfs, the guest programs' libraries
pkgs+=(kmod cpio binutils util-linux)
# the range-capable web server the appliance's HTTP virtual media come from
pkgs+=(nginx-light)
# v4l2-ctl writes the frames vivid's HDMI output loops into its capture node
pkgs+=(v4l-utils)
# the console in a browser (tests/tests/vnc_browser.rs): Debian's Chromium and noVNC, websockify,
# certutil for the browser profile's trust store
pkgs+=(chromium novnc websockify libnss3-tools)
# libjpeg-turbo's TurboJPEG library, which the VNC server opens at run time for Tight's JPEG
# (std-shim/src/vnc/jpeg.rs; its test fails without it)
pkgs+=(libturbojpeg0)
missing=()
for p in "${pkgs[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  $SUDO apt-get update
  $SUDO apt-get install -y --no-install-recommends "${missing[@]}"
fi

# QEMU system emulators MUST come from bookworm-backports: plain bookworm's 7.2 would make apt
# remove qemu-utils 10 (qemu-img, qemu-nbd, qemu-io).
backports=()
for p in qemu-system-arm qemu-system-x86; do dpkg -s "$p" >/dev/null 2>&1 || backports+=("$p"); done
if [ ${#backports[@]} -gt 0 ]; then
  if ! grep -rqs bookworm-backports /etc/apt/sources.list /etc/apt/sources.list.d/; then
    $SUDO tee /etc/apt/sources.list.d/bookworm-backports.sources >/dev/null <<'SRC'
Types: deb
URIs: http://deb.debian.org/debian
Suites: bookworm-backports
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
  fi
  $SUDO apt-get update
  $SUDO apt-get install -y -t bookworm-backports --no-install-recommends "${backports[@]}"
fi

# Xvnc checks VeNCrypt Plain passwords through PAM (/etc/pam.d/tigervnc): a dedicated system
# user without home or shell for tests/tests/vnc_tigervnc.rs (tests/src/vnc.rs PAM_USER).
if ! id kvmio-vnc >/dev/null 2>&1; then
  $SUDO useradd --system --no-create-home --shell /usr/sbin/nologin kvmio-vnc
fi
echo 'kvmio-vnc:Plain-Test-1' | $SUDO chpasswd

# noVNC 1.7 and playwright-core from the npm registry, at the versions package-lock.json pins
(cd "$(dirname "$0")/browser" && npm ci --no-audit --no-fund)

rustup target list --installed | grep -q thumbv7em-none-eabihf || rustup target add thumbv7em-none-eabihf
rustup toolchain list | grep -q '^1.88' || rustup toolchain install 1.88 --profile minimal
rustup component list --installed | grep -q rustfmt || rustup component add rustfmt
rustup component list --installed | grep -q clippy || rustup component add clippy
if rustup toolchain list | grep -q '^nightly'; then
  rustup +nightly target list --installed | grep -q thumbv7em-none-eabihf || rustup +nightly target add thumbv7em-none-eabihf || true
fi
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
