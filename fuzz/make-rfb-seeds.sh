#!/usr/bin/env bash
# Writes the seed corpora of the RFB and TLS fuzz targets (fuzz/corpus/<target>/seed-*):
# valid sessions from rfb-core's in-memory client and server (rfb-core/examples/fuzz_seeds.rs)
# and real TLS client first flights (ClientHello for TLS 1.3 and 1.2, from Python's ssl).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo run -q -p rfb-core --features jpeg --example fuzz_seeds -- fuzz/corpus
python3 - <<'PY'
import os, ssl
out = os.path.join("fuzz", "corpus", "tls_server")
os.makedirs(out, exist_ok=True)
for name, version in [("tls13", ssl.TLSVersion.TLSv1_3), ("tls12", ssl.TLSVersion.TLSv1_2)]:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = version
    ctx.maximum_version = version
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    conn = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    try:
        conn.do_handshake()
    except ssl.SSLWantReadError:
        pass
    hello = outgoing.read()
    # first byte: the chunk size of tls_glue::test_support::feed_server (255: whole records)
    for cut in (255, 6):
        with open(os.path.join(out, f"seed-clienthello-{name}-cut{cut}"), "wb") as f:
            f.write(bytes([cut]) + hello)
PY
ls fuzz/corpus/*/seed-* | wc -l
