#!/usr/bin/env bash
# Builds the emulated KVM-over-IP appliance that tests/tests/appliance.rs boots in
# qemu-system-x86_64: Debian's own kernel (downloaded with apt-get, unpacked, never installed)
# and an initramfs made of busybox-static, the kernel modules a KVM device needs (vivid for
# HDMI capture, dummy_hcd + configfs gadget functions for USB HID and mass storage, nbd, 9p)
# and tests/appliance/init.
#
# Usage: tests/appliance/build.sh                      the kernel and the base initramfs
#        tests/appliance/build.sh OUT.cpio.gz BIN...   also OUT.cpio.gz: the programs BIN...
#                                                      in /usr/bin, with their ELF loader and
#                                                      the shared libraries ldd finds
# The programs archive is meant to be appended to the base one (the kernel unpacks
# concatenated cpio archives in order), so the 70 MB kernel work is done once and cached.
#
# Output (env APPLIANCE_DIR, default target/appliance of this workspace):
#   vmlinuz, base.cpio.gz, kver; debs/, kernel/ and busybox/ are the download cache.
# Idempotent: nothing is downloaded again while the cache holds a kernel; the base initramfs
# is rebuilt when this script or the init script is newer than it.
# Needs: apt-get (and a reachable Debian mirror once), dpkg-deb, kmod (depmod, modprobe),
# cpio, gzip, binutils (readelf), flock; tests/setup.sh installs them.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
DIR=${APPLIANCE_DIR:-$here/../../target/appliance}
mkdir -p "$DIR"
DIR=$(cd "$DIR" && pwd)

for t in apt-get dpkg-deb depmod modprobe cpio gzip readelf ldd flock; do
  command -v "$t" >/dev/null || {
    echo "build.sh: $t is missing (tests/setup.sh installs kmod, cpio, binutils)" >&2
    exit 1
  }
done

# Modules loaded in the guest; their dependencies and soft dependencies are added below.
MODULES="configfs dummy_hcd libcomposite usb_f_hid usb_f_mass_storage
  usbhid hid_generic evdev usb_storage sd_mod sr_mod cdrom isofs loop
  vivid nbd 9p 9pnet_virtio virtio_pci virtio_net"

# apt-get download writes into the current directory; as root it warns that the _apt user
# cannot write there, which is harmless.
download() { # DEST_DIR PACKAGE
  (cd "$1" && { apt-get download "$2" 2>/dev/null || { apt-get update >/dev/null && apt-get download "$2"; }; })
}

base() {
  mkdir -p "$DIR/debs"
  # 1. Debian's kernel: the version the linux-image-amd64 metapackage of bookworm depends on
  #    (6.1.0-N-amd64), fetched once; a cached one is kept even when apt offers a newer one.
  if [ ! -s "$DIR/kver" ] || [ ! -f "$DIR/kernel/lib/modules/$(cat "$DIR/kver")/modules.dep" ]; then
    local pkg kver deb
    pkg=$(apt-cache depends linux-image-amd64 2>/dev/null |
      awk '$1=="Depends:" && $2 ~ /^linux-image-6\.1\.0-[0-9]+-amd64$/ {print $2; exit}')
    if [ -z "$pkg" ]; then
      apt-get update >/dev/null
      pkg=$(apt-cache depends linux-image-amd64 |
        awk '$1=="Depends:" && $2 ~ /^linux-image-6\.1\.0-[0-9]+-amd64$/ {print $2; exit}')
    fi
    [ -n "$pkg" ] || { echo "build.sh: apt offers no linux-image-6.1.0-*-amd64" >&2; exit 1; }
    kver=${pkg#linux-image-}
    rm -f "$DIR"/debs/linux-image-*.deb
    download "$DIR/debs" "$pkg"
    deb=$(ls "$DIR"/debs/"$pkg"_*_amd64.deb)
    rm -rf "$DIR/kernel"
    dpkg-deb -x "$deb" "$DIR/kernel"
    depmod -b "$DIR/kernel" "$kver"
    echo "$kver" >"$DIR/kver"
  fi
  local kver
  kver=$(cat "$DIR/kver")
  cp -f "$DIR/kernel/boot/vmlinuz-$kver" "$DIR/vmlinuz"

  # 2. busybox-static: the shell, modprobe, ip, nc, ... of the guest
  if [ ! -x "$DIR/busybox/bin/busybox" ]; then
    rm -f "$DIR"/debs/busybox-static_*.deb
    download "$DIR/debs" busybox-static
    rm -rf "$DIR/busybox"
    dpkg-deb -x "$DIR"/debs/busybox-static_*.deb "$DIR/busybox"
  fi

  local out=$DIR/base.cpio.gz
  if [ -f "$out" ] && [ "$out" -nt "$here/init" ] && [ "$out" -nt "$here/build.sh" ] &&
    [ "$out" -nt "$DIR/kver" ]; then
    return
  fi

  # 3. the root file system
  local root=$DIR/root
  rm -rf "$root"
  mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,mnt/host,lib/modules/"$kver"}
  cp "$DIR/busybox/bin/busybox" "$root/bin/busybox"
  local applet
  for applet in $("$root/bin/busybox" --list-full); do
    [ -e "$root/$applet" ] || ln -s /bin/busybox "$root/$applet"
  done
  echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
  echo 'root:x:0:' >"$root/etc/group"
  install -m 0755 "$here/init" "$root/init"

  # 4. modules with their dependency closure, at their /lib/modules paths; depmod on the
  #    staged root writes the modules.dep and modules.alias busybox modprobe reads.
  local m f rel
  for m in $MODULES; do
    modprobe -d "$DIR/kernel" -S "$kver" --show-depends "$m" | awk '$1=="insmod" {print $2}'
  done | sort -u | while read -r f; do
    rel=${f#"$DIR/kernel/"}
    mkdir -p "$root/$(dirname "$rel")"
    cp "$f" "$root/$rel"
  done
  cp "$DIR/kernel/lib/modules/$kver"/modules.{order,builtin,builtin.modinfo} "$root/lib/modules/$kver/"
  depmod -b "$root" "$kver"

  # 5. newc cpio, files owned by root, fast gzip (the kernel decompresses it at every boot)
  (cd "$root" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$out.tmp"
  mv "$out.tmp" "$out"
  echo "build.sh: $out ($(($(stat -c %s "$out") / 1024)) KiB, kernel $kver," \
    "$(find "$root" -name '*.ko' | wc -l) modules)"
}

programs() { # OUT BIN...
  local out root bin interp lib
  out=$(cd "$(dirname "$1")" && pwd)/$(basename "$1")
  shift
  root=$(mktemp -d)
  mkdir -p "$root/usr/bin" "$root/lib/x86_64-linux-gnu" "$root/lib64"
  for bin in "$@"; do
    [ -f "$bin" ] || { echo "build.sh: program $bin does not exist" >&2; exit 1; }
    install -m 0755 "$bin" "$root/usr/bin/$(basename "$bin")"
    # A dynamic glibc binary needs its loader at the PT_INTERP path and its libraries where
    # the loader looks without an ld.so.cache (/lib/x86_64-linux-gnu).
    interp=$(readelf -l "$bin" | sed -n 's/.*Requesting program interpreter: \(.*\)]$/\1/p')
    if [ -n "$interp" ]; then
      mkdir -p "$root$(dirname "$interp")"
      cp -L "$interp" "$root$interp"
      for lib in $(ldd "$bin" | awk '$2=="=>" && $3 ~ /^\// {print $3}'); do
        cp -L "$lib" "$root/lib/x86_64-linux-gnu/"
      done
    fi
  done
  (cd "$root" && find . -print0 | cpio --null -o -H newc -R 0:0 --quiet) | gzip -1 >"$out"
  rm -rf "$root"
}

# One build of the shared cache at a time (parallel test binaries may call this together).
exec 9>"$DIR/.lock"
flock 9
base
flock -u 9
if [ $# -gt 0 ]; then
  programs "$@"
fi
