#!/usr/bin/env python3
"""Writes the seed corpora (fuzz/corpus/<target>/seed-*): valid NBD conversations, each
prefixed by the fuzz targets' configuration byte and cut-size byte."""
import os, struct

IHAVEOPT = b"IHAVEOPT"
REPLY = struct.pack(">Q", 0x0003e889045565a9)

def opt(o, data=b""):
    return IHAVEOPT + struct.pack(">II", o, len(data)) + data

def go_data(name, reqs=()):
    return struct.pack(">I", len(name)) + name + struct.pack(">H", len(reqs)) + b"".join(struct.pack(">H", r) for r in reqs)

def meta_data(name, queries):
    d = struct.pack(">I", len(name)) + name + struct.pack(">I", len(queries))
    for q in queries:
        d += struct.pack(">I", len(q)) + q
    return d

def req(cmd, cookie, off, ln, flags=0, ext=False):
    if ext:
        return struct.pack(">IHHQQQ", 0x21e41c71, flags, cmd, cookie, off, ln)
    return struct.pack(">IHHQQI", 0x25609513, flags, cmd, cookie, off, ln)

def rep(o, t, data=b""):
    return REPLY + struct.pack(">III", o, t, len(data)) + data

def chunk(flags, typ, cookie, payload, ext=False, off=0):
    if ext:
        return struct.pack(">IHHQQQ", 0x6e8a278c, flags, typ, cookie, off, len(payload)) + payload
    return struct.pack(">IHHQI", 0x668e33ef, flags, typ, cookie, len(payload)) + payload

def write(target, name, data):
    d = os.path.join(os.path.dirname(__file__), "corpus", target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)

FLAGS = struct.pack(">I", 3)
base = meta_data(b"disk", [b"base:allocation"])
structured = (FLAGS + opt(8) + opt(10, base) + opt(7, go_data(b"disk", (1, 2, 3)))
    + req(0, 1, 0, 4096) + req(1, 2, 4096, 512) + b"\xab" * 512 + req(7, 3, 0, 65536)
    + req(7, 4, 0, 4096, flags=8) + req(4, 5, 0, 4096) + req(6, 6, 8192, 4096, flags=2)
    + req(5, 7, 0, 4096) + req(3, 8, 0, 0) + req(2, 9, 0, 0))
write("nbd_server", "structured", bytes([0, 7]) + structured)
write("nbd_server", "whole", bytes([0, 255]) + structured)
ext = (FLAGS + opt(11) + opt(10, base) + opt(7, go_data(b"", (3,)))
    + req(0, 1, 0, 4096, ext=True) + req(1, 2, 0, 512, flags=0x20, ext=True) + b"\x11" * 512
    + req(7, 3, 0, 12, flags=0x20, ext=True) + struct.pack(">QI", 65536, 1)
    + req(6, 4, 0, 1 << 20, flags=0x10, ext=True) + req(2, 5, 0, 0, ext=True))
write("nbd_server", "extended", bytes([0, 13]) + ext)
forced = FLAGS + opt(3) + opt(6, go_data(b"disk")) + opt(1, b"disk") + opt(5) + opt(8) + opt(7, go_data(b"disk")) + req(0, 1, 0, 512)
write("nbd_server", "forced-tls", bytes([2, 5]) + forced)
write("nbd_server", "selective-tls", bytes([1, 9]) + FLAGS + opt(3) + opt(7, go_data(b"ro")) + opt(5) + opt(9, meta_data(b"ro", [b"base:"])) + opt(7, go_data(b"ro", (3,))) + req(0, 1, 0, 512))
write("nbd_server", "info-list-abort", bytes([0, 3]) + FLAGS + opt(6, go_data(b"disk", (0, 1, 2, 3, 99))) + opt(3) + opt(9, meta_data(b"disk", [])) + opt(4) + opt(99, b"junk") + opt(2))
write("nbd_server", "export-name", bytes([0, 1]) + struct.pack(">I", 0) + opt(1, b"disk") + req(0, 1, 0, 512) + req(1, 2, 0, 4) + b"abcd" + req(2, 3, 0, 0))

GREETING = b"NBDMAGIC" + IHAVEOPT + struct.pack(">H", 3)
info = rep(7, 3, struct.pack(">HQH", 0, 1 << 20, 0x1ff)) + rep(7, 3, struct.pack(">H", 1) + b"disk") + rep(7, 3, struct.pack(">HIII", 3, 1, 4096, 1 << 25))
client = (GREETING + rep(11, 1) + rep(10, 4, struct.pack(">I", 1) + b"base:allocation") + rep(10, 1) + info + rep(7, 1)
    + chunk(0, 1, 1, struct.pack(">Q", 0) + b"\x01" * 256, ext=True) + chunk(1, 2, 1, struct.pack(">QI", 256, 256), ext=True)
    + chunk(1, 6, 2, struct.pack(">IIQQ", 1, 1, 1024, 3), ext=True)
    + chunk(1, 0x8001, 3, struct.pack(">IH", 5, 4) + b"oops", ext=True) + chunk(1, 0, 4, b"", ext=True))
write("nbd_client", "extended", bytes([4 | 16, 11]) + client)
simple = GREETING + rep(7, 2) + rep(7, 3, struct.pack(">HQH", 0, 1 << 20, 0x1ff)) + rep(7, 1) + struct.pack(">IIQ", 0x67446698, 0, 1) + b"\x02" * 512 + struct.pack(">IIQ", 0x67446698, 22, 2)
write("nbd_client", "simple", bytes([0, 64]) + simple)
write("nbd_client", "list", bytes([2 << 5, 5]) + GREETING + rep(3, 2, struct.pack(">I", 4) + b"diska disk") + rep(3, 1) + rep(2, 1))
write("nbd_client", "tls", bytes([2, 3]) + GREETING + rep(5, 1) + rep(7, 3, struct.pack(">HQH", 0, 4096, 1)) + rep(7, 1))
write("nbd_client", "refused", bytes([1, 2]) + GREETING + rep(5, 0x80000002, b"no TLS") + rep(7, 0x80000001))
for name in sorted(os.listdir(os.path.join(os.path.dirname(__file__), "corpus", "nbd_server"))):
    if not name.startswith("seed-"):
        continue  # fuzzer-found inputs live beside the seeds (git ignores them)
    src = os.path.join(os.path.dirname(__file__), "corpus", "nbd_server", name)
    write("nbd_wire", name[5:], open(src, "rb").read()[2:])

# tls_nbd_server: a cut byte, then what a client sends inside TLS after STARTTLS.
inside = (opt(8) + opt(10, base) + opt(7, go_data(b"disk", (1, 2, 3))) + req(0, 1, 0, 4096)
    + req(1, 2, 4096, 512) + b"\xab" * 512 + req(7, 3, 0, 65536) + req(3, 4, 0, 0) + req(2, 5, 0, 0))
write("tls_nbd_server", "structured", bytes([0x21]) + inside)
write("tls_nbd_server", "one-record", bytes([0xff]) + inside)
write("tls_nbd_server", "extended", bytes([0x13]) + opt(11) + opt(7, go_data(b"", ())) + req(0, 1, 0, 512, ext=True) + req(2, 2, 0, 0, ext=True))
write("tls_nbd_server", "second-starttls", bytes([0x05]) + opt(5) + opt(3) + opt(2))
