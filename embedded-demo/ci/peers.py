"""Minimal NBD and RFB clients (plain sockets + Python's ssl) for the firmware CI.

They speak just enough protocol to test the firmware byte by byte, including the parts real
clients never send (hostile input). TLS uses the client certificate of the credentials
directory (QEMU layout) and checks the server certificate against its CA and 127.0.0.1.
"""

import os
import socket
import ssl
import struct
import time

import des

HOST = "127.0.0.1"

# ---------------------------------------------------------------------------------- transport


class Closed(Exception):
    """The server closed the connection."""


def connect(port, timeout=15.0):
    s = socket.create_connection((HOST, port), timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s, n):
    buf = b""
    while len(buf) < n:
        try:
            chunk = s.recv(n - len(buf))
        except (ConnectionResetError, ssl.SSLError) as e:
            raise Closed(f"after {len(buf)} of {n} bytes: {e}") from e
        if not chunk:
            raise Closed(f"after {len(buf)} of {n} bytes")
        buf += chunk
    return buf


def closed_by_server(s, timeout=15.0):
    """True if the server closes the connection (EOF or reset) within `timeout`, reading and
    discarding whatever it still sends."""
    s.settimeout(timeout)
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            if not s.recv(65536):
                return True
    except (ConnectionResetError, BrokenPipeError, ssl.SSLError, OSError) as e:
        return not isinstance(e, socket.timeout)
    return False


def tls_context(creds, client_cert=True):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_verify_locations(os.path.join(creds, "ca-cert.pem"))
    if client_cert:
        ctx.load_cert_chain(os.path.join(creds, "client-cert.pem"),
                            os.path.join(creds, "client-key.pem"))
    return ctx


def tls_wrap(sock, creds, client_cert=True):
    return tls_context(creds, client_cert).wrap_socket(sock, server_hostname=HOST)


def client_hello(creds):
    """The first flight of a TLS client (a ClientHello), for abort-in-the-handshake tests."""
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = tls_context(creds).wrap_bio(inc, out, server_hostname=HOST)
    try:
        obj.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


# ---------------------------------------------------------------------------------- NBD

NBDMAGIC = b"NBDMAGIC"
IHAVEOPT = b"IHAVEOPT"
REPLY_MAGIC = 0x3E889045565A9
REQUEST_MAGIC = 0x25609513
SIMPLE_REPLY_MAGIC = 0x67446698
OPT_EXPORT_NAME, OPT_ABORT, OPT_LIST, OPT_STARTTLS, OPT_INFO, OPT_GO = 1, 2, 3, 5, 6, 7
REP_ACK, REP_SERVER, REP_INFO = 1, 2, 3
ERR_UNSUP, ERR_POLICY, ERR_INVALID = 0x80000001, 0x80000002, 0x80000003
ERR_TLS_REQD, ERR_UNKNOWN, ERR_TOO_BIG = 0x80000005, 0x80000006, 0x80000009
CMD_READ, CMD_WRITE, CMD_DISC = 0, 1, 2


class Nbd:
    """A fixed-newstyle NBD client over a socket (plain or TLS)."""

    def __init__(self, port, creds=None):
        self.creds = creds
        self.s = connect(port)
        hello = recv_exact(self.s, 18)
        if hello[:8] != NBDMAGIC or hello[8:16] != IHAVEOPT:
            raise AssertionError(f"bad NBD greeting {hello!r}")
        self.flags = struct.unpack(">H", hello[16:])[0]

    def send(self, data):
        self.s.sendall(data)

    def client_flags(self, flags=3):
        self.send(struct.pack(">I", flags))

    def option(self, opt, data=b"", length=None):
        n = len(data) if length is None else length
        self.send(IHAVEOPT + struct.pack(">II", opt, n) + data)

    def reply(self):
        h = recv_exact(self.s, 20)
        magic, opt, typ, n = struct.unpack(">QIII", h)
        if magic != REPLY_MAGIC:
            raise AssertionError(f"bad option reply magic {magic:#x}")
        return opt, typ, recv_exact(self.s, n)

    def starttls(self):
        self.option(OPT_STARTTLS)
        opt, typ, _ = self.reply()
        if (opt, typ) != (OPT_STARTTLS, REP_ACK):
            raise AssertionError(f"STARTTLS refused: {typ:#x}")
        self.s = tls_wrap(self.s, self.creds)

    def go(self, name):
        n = name.encode()
        self.option(OPT_GO, struct.pack(">I", len(n)) + n + struct.pack(">H", 0))
        size = None
        while True:
            opt, typ, data = self.reply()
            if typ == REP_INFO and struct.unpack(">H", data[:2])[0] == 0:
                size = struct.unpack(">QH", data[2:12])[0]
            elif typ == REP_ACK:
                return size
            elif typ & 0x80000000:
                raise AssertionError(f"GO {name}: error {typ:#x} {data!r}")

    def request(self, cmd, offset, length, cookie=1, payload=b""):
        self.send(struct.pack(">IHHQQI", REQUEST_MAGIC, 0, cmd, cookie, offset, length) + payload)

    def simple_reply(self, length):
        magic, err, cookie = struct.unpack(">IIQ", recv_exact(self.s, 16))
        if magic != SIMPLE_REPLY_MAGIC:
            raise AssertionError(f"bad reply magic {magic:#x}")
        return err, (recv_exact(self.s, length) if err == 0 else b"")

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def nbd_normal(port, creds, image, offset=0, length=4096):
    """A normal client: TLS, GO `iso`, READ, compare with the image, DISC."""
    c = Nbd(port, creds)
    try:
        c.client_flags()
        c.starttls()
        size = c.go("iso")
        if size != len(image):
            raise AssertionError(f"iso size {size}, image {len(image)}")
        c.request(CMD_READ, offset, length)
        err, data = c.simple_reply(length)
        if err or data != image[offset:offset + length]:
            raise AssertionError(f"READ {offset}+{length}: error {err} or data differs")
        c.request(CMD_DISC, 0, 0)
    finally:
        c.close()


# ---------------------------------------------------------------------------------- RFB

SEC_VENCRYPT = 19
X509_NONE, X509_VNC = 260, 261
PIXEL_FORMAT_32 = struct.pack(">BBBBHHHBBB3x", 32, 24, 0, 1, 255, 255, 255, 16, 8, 0)


class Rfb:
    """An RFB 3.8 client: VeNCrypt X509Vnc/X509None with a client certificate, Raw updates."""

    def __init__(self, port, creds=None):
        self.creds = creds
        self.s = connect(port)
        v = recv_exact(self.s, 12)
        if v != b"RFB 003.008\n":
            raise AssertionError(f"bad RFB version {v!r}")
        self.fb = None

    def send(self, data):
        self.s.sendall(data)

    def security_types(self):
        self.send(b"RFB 003.008\n")
        n = recv_exact(self.s, 1)[0]
        return list(recv_exact(self.s, n))

    def vencrypt_subtypes(self):
        self.send(bytes([SEC_VENCRYPT]))
        if recv_exact(self.s, 2) != b"\x00\x02":
            raise AssertionError("VeNCrypt version")
        self.send(b"\x00\x02")
        if recv_exact(self.s, 1) != b"\x00":
            raise AssertionError("VeNCrypt version refused")
        n = recv_exact(self.s, 1)[0]
        return [struct.unpack(">I", recv_exact(self.s, 4))[0] for _ in range(n)]

    def choose(self, subtype):
        self.send(struct.pack(">I", subtype))
        return recv_exact(self.s, 1)[0]

    def start_tls(self, client_cert=True):
        self.s = tls_wrap(self.s, self.creds, client_cert)

    def vnc_auth(self, password):
        challenge = recv_exact(self.s, 16)
        self.send(des.vnc_response(password, challenge))
        result = struct.unpack(">I", recv_exact(self.s, 4))[0]
        if result != 0:
            n = struct.unpack(">I", recv_exact(self.s, 4))[0]
            return result, recv_exact(self.s, n)
        return 0, b""

    def init(self):
        self.send(b"\x01")
        w, h = struct.unpack(">HH", recv_exact(self.s, 4))
        self.server_format = recv_exact(self.s, 16)
        n = struct.unpack(">I", recv_exact(self.s, 4))[0]
        self.name = recv_exact(self.s, n)
        self.w, self.h = w, h
        self.fb = bytearray(w * h * 4)
        self.send(b"\x00\x00\x00\x00" + PIXEL_FORMAT_32)
        self.send(struct.pack(">BxHi", 2, 1, 0))  # SetEncodings: Raw only
        return w, h

    def login(self, password, subtype=X509_VNC):
        """Everything up to ServerInit; returns (width, height)."""
        if SEC_VENCRYPT not in self.security_types():
            raise AssertionError("VeNCrypt not offered")
        subs = self.vencrypt_subtypes()
        if subtype not in subs:
            raise AssertionError(f"sub-type {subtype} not offered: {subs}")
        if self.choose(subtype) != 1:
            raise AssertionError("sub-type refused")
        self.start_tls()
        if subtype == X509_VNC:
            result, reason = self.vnc_auth(password)
            if result:
                raise AssertionError(f"VNC authentication failed: {reason!r}")
        elif struct.unpack(">I", recv_exact(self.s, 4))[0] != 0:
            raise AssertionError("authentication failed")
        return self.init()

    def request(self, incremental, x=0, y=0, w=None, h=None):
        w = self.w if w is None else w
        h = self.h if h is None else h
        self.send(struct.pack(">BBHHHH", 3, 1 if incremental else 0, x, y, w, h))

    def key(self, keysym, down=True):
        self.send(struct.pack(">BBxxI", 4, 1 if down else 0, keysym))

    def pointer(self, buttons, x, y):
        self.send(struct.pack(">BBHH", 5, buttons, x, y))

    def update(self):
        """Reads server messages until a FramebufferUpdate; returns its rectangles."""
        while True:
            t = recv_exact(self.s, 1)[0]
            if t == 0:
                n = struct.unpack(">xH", recv_exact(self.s, 3))[0]
                rects = []
                for _ in range(n):
                    x, y, w, h, enc = struct.unpack(">HHHHi", recv_exact(self.s, 12))
                    if enc != 0:
                        raise AssertionError(f"unexpected encoding {enc}")
                    data = recv_exact(self.s, w * h * 4)
                    for row in range(h):
                        at = ((y + row) * self.w + x) * 4
                        self.fb[at:at + w * 4] = data[row * w * 4:(row + 1) * w * 4]
                    rects.append((x, y, w, h))
                return rects
            if t == 2:  # bell
                continue
            if t == 3:  # cut text
                n = struct.unpack(">3xI", recv_exact(self.s, 7))[0]
                recv_exact(self.s, n)
                continue
            raise AssertionError(f"unexpected server message {t}")

    def pixel(self, x, y):
        at = (y * self.w + x) * 4
        b, g, r = self.fb[at], self.fb[at + 1], self.fb[at + 2]
        return r, g, b

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass


def rfb_normal(port, creds, password):
    """A normal client: log in, full update, check the size and the red block."""
    c = Rfb(port, creds)
    try:
        w, h = c.login(password)
        c.request(False)
        c.update()
        red = c.pixel(w - 24, 32)
        if red != (255, 0, 0):
            raise AssertionError(f"red block pixel is {red}")
        return w, h
    finally:
        c.close()
