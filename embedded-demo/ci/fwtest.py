#!/usr/bin/env python3
"""Checks for the firmware CI (embedded-demo/ci.sh); each subcommand exits non-zero on failure.

  fwtest.py png FILE W H                  PNG of the desktop: size, red block, colour bars
  fwtest.py vnc-watch PORT CREDS SECONDS  a VNC session that stays: animation, damage, keys
  fwtest.py hostile VNC_PORT NBD_PORT CREDS IMAGE UART_LOG
                                          hostile input; a normal client after every case
  fwtest.py deadline NBD_PORT SECONDS     a client that never negotiates is dropped after SECONDS
  fwtest.py link-idle QEMU_PID MONITOR UART_LOG NBD_PORT CREDS IMAGE
                                          link down/up (QEMU monitor), then idle host CPU
  fwtest.py wss PORT CREDS UART_LOG       the wss console port: requests and frames that break
                                          the rules get the RFC's answers
Environment: VNC_PASSWORD (default "secret").
"""

import os
import re
import socket
import ssl
import struct
import sys
import time

import peers
from peers import Closed, Nbd, Rfb

PASSWORD = os.environ.get("VNC_PASSWORD", "secret").encode()

# The desktop's layout (src/desktop.rs): a pure red block at (W-40, 16) 32x32, eight colour
# bars at y 52..76 (white, yellow, cyan, green, magenta, red, blue, black).
BARS = [(255, 255, 255), (255, 255, 0), (0, 255, 255), (0, 255, 0),
        (255, 0, 255), (255, 0, 0), (0, 0, 255), (0, 0, 0)]


def fail(msg):
    print(f"FAIL: {msg}", file=sys.stderr)
    sys.exit(1)


def check_desktop(w, h, pixel, what):
    red = pixel(w - 24, 32)
    if red != (255, 0, 0):
        fail(f"{what}: red block pixel ({w - 24}, 32) is {red}, want (255, 0, 0)")
    bar_w = w // 8
    for i, want in enumerate(BARS):
        got = pixel(i * bar_w + bar_w // 2, 64)
        if got != want:
            fail(f"{what}: colour bar {i} is {got}, want {want}")


def cmd_png(path, w, h):
    import png
    pw, ph, rows = png.read_png(path)
    if (pw, ph) != (w, h):
        fail(f"{path}: {pw}x{ph}, want {w}x{h}")
    check_desktop(w, h, lambda x, y: rows[y][x], path)
    print(f"{path}: {pw}x{ph}, red block and colour bars ok")


def cmd_vnc_watch(port, creds, seconds):
    """Stays connected for `seconds`, asking for incremental updates: the animation must keep
    coming, as small rectangles (damage tracking), and a key press must change the text."""
    c = Rfb(port, creds)
    w, h = c.login(PASSWORD)
    c.request(False)
    first = c.update()
    if sum(rw * rh for _, _, rw, rh in first) < w * h:
        fail(f"the first (full) update covers less than {w}x{h}: {first}")
    check_desktop(w, h, c.pixel, "vnc-watch")
    text_before = bytes(c.fb[(h - 12) * w * 4:(h - 5) * w * 4])
    updates, area, biggest = 0, 0, 0
    keyed = False
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        if not keyed and time.monotonic() > end - seconds / 2:
            c.key(0x71, True)   # 'q'
            c.key(0x71, False)
            c.pointer(1, 10, 10)
            c.pointer(0, 11, 12)
            keyed = True
        c.request(True)
        rects = c.update()
        updates += 1
        a = sum(rw * rh for _, _, rw, rh in rects)
        area += a
        biggest = max(biggest, a)
    c.close()
    text_after = bytes(c.fb[(h - 12) * w * 4:(h - 5) * w * 4])
    if updates < seconds * 3:
        fail(f"only {updates} incremental updates in {seconds} s (animation at 10 fps)")
    if biggest > w * h // 4:
        fail(f"an incremental update covered {biggest} pixels of {w * h}: damage not tracked")
    if text_before == text_after:
        fail("the text line did not change after a key press")
    print(f"vnc-watch: {w}x{h}, {updates} incremental updates in {seconds} s, "
          f"average {area // max(updates, 1)} pixels, largest {biggest}; key shown")


# ---------------------------------------------------------------------------------- hostile


class Uart:
    """Follows the firmware's UART log: the session slots must be free before the next case."""

    def __init__(self, path):
        self.path = path

    def text(self):
        with open(self.path, errors="replace") as f:
            return f.read()

    def count(self, pattern):
        return len(re.findall(pattern, self.text()))

    def wait_idle(self, ended=0, timeout=20.0):
        """Until every opened session has ended, at least `ended` have, and the log has been
        quiet for 0.2 s (the firmware writes its log when idle, so a line can lag behind what
        a client already saw)."""
        end = time.monotonic() + timeout
        last, since = None, time.monotonic()
        while time.monotonic() < end:
            t = self.text()
            if t != last:
                last, since = t, time.monotonic()
            ends = t.count("session end")
            if (t.count("session open") == ends and ends >= ended
                    and time.monotonic() - since >= 0.2):
                return
            time.sleep(0.05)
        fail("sessions still open on the firmware (UART log)")


def expect_closed(s, what):
    if not peers.closed_by_server(s):
        fail(f"{what}: the server did not close the connection")
    s.close()


def expect_reply(c, opt, typ, what):
    try:
        o, t, data = c.reply()
    except Closed as e:
        fail(f"{what}: connection closed instead of reply {typ:#x}: {e}")
    if (o, t) != (opt, typ):
        fail(f"{what}: reply {o}/{t:#x} {data!r}, want {opt}/{typ:#x}")


def nbd_cases(port, creds):
    """(name, function) pairs; each leaves the connection to be closed by the server or itself."""
    def unknown_client_flags():
        c = Nbd(port)
        c.client_flags(0xFFFFFFFF)
        expect_closed(c.s, "unknown client flags")

    def truncated_client_flags():
        c = Nbd(port)
        c.send(b"\x00\x00")
        c.s.close()

    def truncated_option_header():
        c = Nbd(port)
        c.client_flags()
        c.send(peers.IHAVEOPT + b"\x00\x00")
        c.s.close()

    def plaintext_go():
        c = Nbd(port)
        c.client_flags()
        c.option(peers.OPT_GO, struct.pack(">I", 3) + b"iso" + struct.pack(">H", 0))
        expect_reply(c, peers.OPT_GO, peers.ERR_TLS_REQD, "GO in the clear")
        c.option(peers.OPT_LIST)
        expect_reply(c, peers.OPT_LIST, peers.ERR_TLS_REQD, "LIST in the clear")
        c.option(peers.OPT_ABORT)
        expect_reply(c, peers.OPT_ABORT, peers.REP_ACK, "ABORT")
        expect_closed(c.s, "after ABORT")

    def plaintext_export_name():
        c = Nbd(port)
        c.client_flags()
        c.option(peers.OPT_EXPORT_NAME, b"iso")
        expect_closed(c.s, "EXPORT_NAME in the clear")

    def plaintext_request():
        c = Nbd(port)
        c.client_flags()
        c.request(peers.CMD_READ, 0, 4096)
        expect_closed(c.s, "a transmission request during negotiation")

    def name_length_ffffffff_clear():
        c = Nbd(port)
        c.client_flags()
        c.option(peers.OPT_GO, struct.pack(">I", 0xFFFFFFFF) + b"iso\x00\x00")
        expect_reply(c, peers.OPT_GO, peers.ERR_TLS_REQD, "name length 0xFFFFFFFF (clear)")
        c.s.close()

    def option_over_cap_clear():
        c = Nbd(port)
        c.client_flags()
        name = b"n" * 4097
        c.option(peers.OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        expect_reply(c, peers.OPT_GO, peers.ERR_TOO_BIG, "4097-byte name (clear)")
        c.s.close()

    def option_length_huge():
        c = Nbd(port)
        c.client_flags()
        c.option(peers.OPT_INFO, b"", length=0x7FFFFFFF)
        expect_closed(c.s, "option length 0x7FFFFFFF")

    def tls_then(fn):
        def case():
            c = Nbd(port, creds)
            c.client_flags()
            c.starttls()
            fn(c)
        return case

    def tls_name_ffffffff(c):
        c.option(peers.OPT_GO, struct.pack(">I", 0xFFFFFFFF) + b"iso\x00\x00")
        expect_reply(c, peers.OPT_GO, peers.ERR_INVALID, "name length 0xFFFFFFFF (TLS)")
        c.s.close()

    def tls_name_4097(c):
        name = b"n" * 4097
        c.option(peers.OPT_GO, struct.pack(">I", len(name)) + name + struct.pack(">H", 0))
        expect_reply(c, peers.OPT_GO, peers.ERR_TOO_BIG, "4097-byte name (TLS)")
        c.option(peers.OPT_INFO, struct.pack(">I", 3) + b"nop" + struct.pack(">H", 0))
        expect_reply(c, peers.OPT_INFO, peers.ERR_UNKNOWN, "unknown export (TLS)")
        c.option(99)
        expect_reply(c, 99, peers.ERR_UNSUP, "unknown option (TLS)")
        c.option(peers.OPT_ABORT)
        expect_reply(c, peers.OPT_ABORT, peers.REP_ACK, "ABORT (TLS)")
        expect_closed(c.s, "after ABORT (TLS)")

    def tls_second_starttls(c):
        c.option(peers.OPT_STARTTLS)
        expect_reply(c, peers.OPT_STARTTLS, peers.ERR_INVALID, "second STARTTLS")
        c.s.close()

    def tls_bad_requests(c):
        size = c.go("iso")
        c.request(peers.CMD_READ, size - 10, 4096, cookie=7)
        err, _ = c.simple_reply(0)
        if err == 0:
            fail("READ past the end succeeded")
        c.request(peers.CMD_WRITE, 0, 4, cookie=8, payload=b"abcd")
        err, _ = c.simple_reply(0)
        if err == 0:
            fail("WRITE to the read-only iso succeeded")
        c.request(peers.CMD_READ, 0, 0x7FFFFFFF, cookie=9)
        err, _ = c.simple_reply(0)
        if err == 0:
            fail("READ of 2 GiB succeeded")
        # A WRITE announcing more payload than the maximum cannot be skipped: hang up.
        c.request(peers.CMD_WRITE, 0, 0x7FFFFFFF, cookie=10)
        expect_closed(c.s, "WRITE of 2 GiB")

    def tls_truncated_request(c):
        c.go("ram")
        c.send(struct.pack(">IHH", peers.REQUEST_MAGIC, 0, peers.CMD_WRITE))
        c.s.close()

    def tls_write_then_vanish(c):
        c.go("ram")
        c.request(peers.CMD_WRITE, 0, 8192, cookie=3, payload=b"x" * 100)
        c.s.close()

    def no_client_certificate():
        c = Nbd(port, creds)
        c.client_flags()
        c.option(peers.OPT_STARTTLS)
        c.reply()
        try:
            s = peers.tls_wrap(c.s, creds, client_cert=False)
            s.sendall(peers.IHAVEOPT + struct.pack(">II", peers.OPT_LIST, 0))
            data = s.recv(100)
            if data:
                fail("TLS without a client certificate was accepted")
        except (OSError, Closed):
            pass
        c.s.close()

    def tls_abort(cut):
        def case():
            c = Nbd(port, creds)
            c.client_flags()
            c.option(peers.OPT_STARTTLS)
            c.reply()
            hello = peers.client_hello(creds)
            c.send(hello[:cut] if cut else hello)
            if cut is None:
                time.sleep(0.3)  # the server answers, the client vanishes mid-handshake
            c.s.close()
        return case

    def garbage_after_starttls():
        c = Nbd(port, creds)
        c.client_flags()
        c.option(peers.OPT_STARTTLS)
        c.reply()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        expect_closed(c.s, "garbage instead of a ClientHello")

    return [
        ("nbd: unknown client flags", unknown_client_flags),
        ("nbd: truncated client flags", truncated_client_flags),
        ("nbd: truncated option header", truncated_option_header),
        ("nbd: GO/LIST in the clear (FORCEDTLS)", plaintext_go),
        ("nbd: EXPORT_NAME in the clear", plaintext_export_name),
        ("nbd: request in the clear", plaintext_request),
        ("nbd: name length 0xFFFFFFFF (clear)", name_length_ffffffff_clear),
        ("nbd: 4097-byte name (clear, over the option cap)", option_over_cap_clear),
        ("nbd: option length 0x7FFFFFFF", option_length_huge),
        ("nbd: name length 0xFFFFFFFF (TLS)", tls_then(tls_name_ffffffff)),
        ("nbd: 4097-byte name, unknown export and option (TLS)", tls_then(tls_name_4097)),
        ("nbd: second STARTTLS", tls_then(tls_second_starttls)),
        ("nbd: bad requests (TLS)", tls_then(tls_bad_requests)),
        ("nbd: truncated request (TLS)", tls_then(tls_truncated_request)),
        ("nbd: WRITE cut short (TLS)", tls_then(tls_write_then_vanish)),
        ("nbd: TLS without client certificate", no_client_certificate),
        ("nbd: garbage instead of ClientHello", garbage_after_starttls),
        ("nbd: abort after 5 bytes of ClientHello", tls_abort(5)),
        ("nbd: abort after 100 bytes of ClientHello", tls_abort(100)),
        ("nbd: abort after the ClientHello", tls_abort(None)),
    ]


def rfb_cases(port, creds):
    def bad_version():
        c = Rfb(port)
        c.send(b"RFB 002.009\n")
        reply = peers.recv_exact(c.s, 4)
        if reply != b"\x00\x00\x00\x00":
            fail(f"RFB 2.9: reply {reply!r}, want a 3.3 failure (0)")
        expect_closed(c.s, "RFB 2.9")

    def garbage_version():
        c = Rfb(port)
        c.send(b"GET / HTTP/1.1\r\n\r\n")
        expect_closed(c.s, "garbage version")

    def truncated_version():
        c = Rfb(port)
        c.send(b"RFB 00")
        c.s.close()

    def unoffered_type():
        c = Rfb(port)
        c.send(b"RFB 003.008\n")
        n = peers.recv_exact(c.s, 1)[0]
        peers.recv_exact(c.s, n)
        c.send(b"\x01")  # None: not offered
        result = struct.unpack(">I", peers.recv_exact(c.s, 4))[0]
        if result != 1:
            fail(f"unoffered security type: result {result}")
        expect_closed(c.s, "unoffered security type")

    def unoffered_subtype(sub):
        def case():
            c = Rfb(port)
            c.security_types()
            c.vencrypt_subtypes()
            c.send(struct.pack(">I", sub))
            expect_closed(c.s, f"unoffered VeNCrypt sub-type {sub}")
        return case

    def bad_vencrypt_version():
        c = Rfb(port)
        c.security_types()
        c.send(bytes([peers.SEC_VENCRYPT]))
        peers.recv_exact(c.s, 2)
        c.send(b"\x00\x01")
        expect_closed(c.s, "VeNCrypt 0.1")

    def tls_abort(cut):
        def case():
            c = Rfb(port)
            c.security_types()
            c.vencrypt_subtypes()
            c.choose(peers.X509_VNC)
            hello = peers.client_hello(creds)
            c.send(hello[:cut] if cut else hello)
            if cut is None:
                time.sleep(0.3)
            c.s.close()
        return case

    def no_client_certificate():
        c = Rfb(port, creds)
        c.security_types()
        c.vencrypt_subtypes()
        c.choose(peers.X509_VNC)
        try:
            c.start_tls(client_cert=False)
            if c.s.recv(16):
                fail("TLS without a client certificate was accepted")
        except (OSError, Closed):
            pass
        c.s.close()

    def logged_in(fn, password=PASSWORD):
        def case():
            c = Rfb(port, creds)
            c.security_types()
            c.vencrypt_subtypes()
            c.choose(peers.X509_VNC)
            c.start_tls()
            fn(c)
        return case

    def wrong_password(c):
        result, reason = c.vnc_auth(b"wrong!!")
        if result == 0:
            fail("a wrong VNC password was accepted")
        expect_closed(c.s, f"wrong password ({reason!r})")

    def authed(fn):
        def inner(c):
            result, reason = c.vnc_auth(PASSWORD)
            if result:
                fail(f"login failed: {reason!r}")
            c.init()
            fn(c)
        return inner

    def huge_cut_text(c):
        c.send(struct.pack(">BxxxI", 6, 0x7FFFFFFF) + b"x" * 1000)
        expect_closed(c.s, "huge cut text")

    def too_many_encodings(c):
        c.send(struct.pack(">BxH", 2, 65535) + b"\x00\x00\x00\x00" * 100)
        expect_closed(c.s, "65535 encodings")

    def unknown_message(c):
        c.send(b"\xc8" + b"\x00" * 20)
        expect_closed(c.s, "unknown message type 200")

    def cut_text_ok_then_more(c):
        # A clipboard text within the limit is taken (and ignored); the session goes on.
        c.send(struct.pack(">BxxxI", 6, 5000) + b"y" * 5000)
        c.request(False)
        c.update()
        c.close()

    return [
        ("rfb: version 2.9", bad_version),
        ("rfb: garbage version", garbage_version),
        ("rfb: truncated version", truncated_version),
        ("rfb: unoffered security type (None)", unoffered_type),
        ("rfb: bad VeNCrypt version", bad_vencrypt_version),
        ("rfb: unoffered sub-type X509None", unoffered_subtype(peers.X509_NONE)),
        ("rfb: unoffered sub-type TLSNone (anonymous)", unoffered_subtype(257)),
        ("rfb: TLS without client certificate", no_client_certificate),
        ("rfb: abort after 5 bytes of ClientHello", tls_abort(5)),
        ("rfb: abort after 200 bytes of ClientHello", tls_abort(200)),
        ("rfb: abort after the ClientHello", tls_abort(None)),
        ("rfb: wrong password", logged_in(wrong_password)),
        ("rfb: huge cut text", logged_in(authed(huge_cut_text))),
        ("rfb: 65535 encodings", logged_in(authed(too_many_encodings))),
        ("rfb: unknown message type", logged_in(authed(unknown_message))),
        ("rfb: cut text within the limit", logged_in(authed(cut_text_ok_then_more))),
    ]


def third_tls_session(vnc_port, nbd_port, creds):
    """Two TLS sessions are live (the heap holds two): a third is refused at STARTTLS, and
    nothing else is disturbed. Returns the number of connections made (3)."""
    v = Rfb(vnc_port, creds)
    v.login(PASSWORD)
    a = Nbd(nbd_port, creds)
    a.client_flags()
    a.starttls()
    a.go("ram")
    b = Nbd(nbd_port, creds)
    b.client_flags()
    b.option(peers.OPT_STARTTLS)
    b.reply()
    try:
        s = peers.tls_wrap(b.s, creds)
        s.sendall(peers.IHAVEOPT + struct.pack(">II", peers.OPT_LIST, 0))
        if s.recv(100):
            fail("a third TLS session was accepted")
    except (OSError, Closed):
        pass
    b.close()
    # The two live sessions still work.
    a.request(peers.CMD_READ, 0, 512)
    if a.simple_reply(512)[0]:
        fail("the live NBD session failed next to the refused one")
    v.request(False)
    v.update()
    a.close()
    v.close()
    return 3


def cmd_hostile(vnc_port, nbd_port, creds, image_path, uart_log):
    image = open(image_path, "rb").read()
    uart = Uart(uart_log)
    started = time.monotonic()
    cases = nbd_cases(nbd_port, creds) + rfb_cases(vnc_port, creds)
    cases.append(("tls: a third TLS session is refused",
                  lambda: third_tls_session(vnc_port, nbd_port, creds)))
    for i, (name, case) in enumerate(cases):
        t0 = time.monotonic()
        ended = uart.count("session end")
        try:
            opened = case() or 1
        except (Closed, ConnectionResetError, BrokenPipeError, socket.timeout) as e:
            fail(f"{name}: {type(e).__name__}: {e}")
        # Every case but the last is one connection.
        uart.wait_idle(ended + opened)
        ended += opened - 1
        # The next normal client must be served.
        try:
            if name.startswith("nbd"):
                peers.nbd_normal(nbd_port, creds, image, offset=(i * 4096) % len(image))
            else:
                peers.rfb_normal(vnc_port, creds, PASSWORD)
        except (AssertionError, Closed, OSError) as e:
            fail(f"{name}: the next normal client failed: {e}")
        uart.wait_idle(ended + 2)
        print(f"ok   {name} ({time.monotonic() - t0:.2f} s)")
    log = uart.text()
    for bad in ("PANIC", "panicked", "HARDFAULT", "heap_fail=1"):
        if bad in log:
            fail(f"UART log shows {bad!r}")
    print(f"hostile: {len(cases)} cases, a normal client served after each "
          f"({time.monotonic() - started:.1f} s)")


WS_KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
WS_ACCEPT = b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


def wss_connect(port, creds, client_cert=True):
    return peers.tls_wrap(peers.connect(port), creds, client_cert)


def ws_head(s):
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        head += peers.recv_exact(s, 1)
    return head


def ws_upgrade(port, creds):
    s = wss_connect(port, creds)
    s.sendall(b"GET /websockify HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
              b"Connection: Upgrade\r\nSec-WebSocket-Key: " + WS_KEY +
              b"\r\nSec-WebSocket-Version: 13\r\n\r\n")
    head = ws_head(s)
    if not head.startswith(b"HTTP/1.1 101") or WS_ACCEPT not in head:
        fail(f"upgrade: {head!r}")
    return s


def ws_close_code(s):
    """Reads to the end; returns the status code of the server's close frame."""
    data = b""
    s.settimeout(15)
    try:
        while True:
            chunk = s.recv(65536)
            if not chunk:
                break
            data += chunk
    except (ConnectionResetError, OSError):
        pass
    at = 0
    while at + 2 <= len(data):
        op, n = data[at] & 0x0F, data[at + 1] & 0x7F
        hl = 2
        if n == 126:
            n, hl = struct.unpack(">H", data[at + 2:at + 4])[0], 4
        elif n == 127:
            n, hl = struct.unpack(">Q", data[at + 2:at + 10])[0], 10
        if op == 8:
            return struct.unpack(">H", data[at + hl:at + hl + 2])[0]
        at += hl + n
    fail(f"no close frame in {len(data)} bytes")


def cmd_wss(port, creds, uart_log):
    uart = Uart(uart_log)
    mask = b"\x01\x02\x03\x04"

    def masked(op_byte, payload):
        return (bytes([op_byte, 0x80 | len(payload)]) + mask
                + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))

    def http(request, status):
        def case():
            s = wss_connect(port, creds)
            s.sendall(request)
            head = ws_head(s)
            if not head.startswith(b"HTTP/1.1 %d " % status):
                fail(f"{request[:40]!r}: {head!r}")
            if not peers.closed_by_server(s):
                fail(f"{request[:40]!r}: not closed after {status}")
        return case

    def frame(data, code):
        def case():
            s = ws_upgrade(port, creds)
            s.sendall(data)
            got = ws_close_code(s)
            if got != code:
                fail(f"close code {got}, want {code}")
        return case

    def no_client_certificate():
        try:
            s = wss_connect(port, creds, client_cert=False)
            s.sendall(b"GET / HTTP/1.1\r\n\r\n")
            s.recv(1)
        except (ssl.SSLError, ConnectionResetError, OSError):
            return
        fail("a client without a certificate got through")

    cases = [
        ("a request that is not an upgrade: 426",
         http(b"GET /vnc.html HTTP/1.1\r\nHost: x\r\n\r\n", 426)),
        ("a never-ending header: 431",
         http(b"GET / HTTP/1.1\r\nX-Long: " + b"a" * 3000 + b"\r\n\r\n", 431)),
        ("an unmasked frame: 1002", frame(b"\x82\x01\x00", 1002)),
        ("a 2^63 length: 1002", frame(b"\x82\xff\x80" + bytes(7) + mask, 1002)),
        ("a 1 GiB frame: 1009", frame(b"\x82\xff" + struct.pack(">Q", 1 << 30) + mask, 1009)),
        ("opcode 3: 1002", frame(masked(0x83, b""), 1002)),
        ("a fragmented ping: 1002", frame(masked(0x09, b"x"), 1002)),
        ("a close in the middle of an RFB message: answered 1000",
         frame(masked(0x82, b"RFB ") + masked(0x88, b"\x03\xe8"), 1000)),
        ("no client certificate: refused", no_client_certificate),
    ]
    for name, case in cases:
        ended = uart.count("session end")
        t0 = time.monotonic()
        case()
        uart.wait_idle(ended + 1)
        print(f"ok   wss: {name} ({time.monotonic() - t0:.2f} s)")


def cmd_deadline(port, seconds):
    """The core's handshake deadline (poll_timeout → embassy_time) drops a silent client."""
    c = Nbd(port)
    t0 = time.monotonic()
    closed = peers.closed_by_server(c.s, timeout=seconds + 5)
    took = time.monotonic() - t0
    if not closed or not seconds - 1 <= took <= seconds + 3:
        fail(f"silent NBD client: closed={closed} after {took:.1f} s, deadline {seconds} s")
    print(f"silent NBD client dropped after {took:.1f} s (deadline {seconds} s)")


def cmd_link_idle(qemu_pid, monitor_path, uart_log, nbd_port, creds, image_path):
    """The NIC's link goes down and up (PHY interrupt path), a client is served afterwards,
    and the idle firmware (WFI) leaves QEMU's host CPU near zero."""
    image = open(image_path, "rb").read()
    uart = Uart(uart_log)

    def monitor(cmd):
        m = socket.socket(socket.AF_UNIX)
        m.connect(monitor_path)
        m.sendall(cmd.encode() + b"\n")
        time.sleep(0.2)
        m.close()

    def wait_log(pattern, before):
        end = time.monotonic() + 5
        while time.monotonic() < end:
            if uart.count(pattern) > before:
                return
            time.sleep(0.05)
        fail(f"no {pattern!r} in the UART log")

    n = uart.count("lan9118: link down")
    monitor("set_link lan9118.0 off")
    wait_log("lan9118: link down", n)
    n = uart.count("lan9118: link up")
    monitor("set_link lan9118.0 on")
    wait_log("lan9118: link up", n)
    peers.nbd_normal(nbd_port, creds, image)
    uart.wait_idle()
    time.sleep(0.5)

    def ticks():
        with open(f"/proc/{qemu_pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return int(fields[11]) + int(fields[12])

    hz = os.sysconf("SC_CLK_TCK")
    t0 = ticks()
    time.sleep(2.0)
    busy = (ticks() - t0) / hz / 2.0
    if busy >= 0.25:
        fail(f"QEMU uses {busy * 100:.0f} % of a host CPU while the firmware idles")
    print(f"link down/up reported, client served after it; idle QEMU CPU {busy * 100:.0f} %")


def main(argv):
    if len(argv) < 2:
        fail(__doc__)
    cmd, args = argv[1], argv[2:]
    try:
        if cmd == "png":
            cmd_png(args[0], int(args[1]), int(args[2]))
        elif cmd == "vnc-watch":
            cmd_vnc_watch(int(args[0]), args[1], float(args[2]))
        elif cmd == "hostile":
            cmd_hostile(int(args[0]), int(args[1]), args[2], args[3], args[4])
        elif cmd == "deadline":
            cmd_deadline(int(args[0]), float(args[1]))
        elif cmd == "wss":
            cmd_wss(int(args[0]), args[1], args[2])
        elif cmd == "link-idle":
            cmd_link_idle(int(args[0]), args[1], args[2], int(args[3]), args[4], args[5])
        else:
            fail(f"unknown command {cmd}")
    except AssertionError as e:
        fail(str(e))


if __name__ == "__main__":
    main(sys.argv)
