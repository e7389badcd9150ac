//! `LayerOptions::minimal`: buffers that start small and grow only as the peer's records
//! need, a bounded handshake buffer, and in-place delivery of records to the core.
#![cfg(all(
    feature = "std",
    any(feature = "aws-lc-rs", feature = "ring", feature = "rustcrypto-core")
))]
// The only unsafe: a counting global allocator, to measure what the layer allocates.
#![allow(unsafe_code)]

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use common::*;
use tls_glue::*;

const LIMIT: usize = 1024;

/// Counts this thread's live heap bytes and their peak (tests run on several threads).
struct Counting;

thread_local! {
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

// SAFETY: forwards to the system allocator unchanged; only updates thread-local counters.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let _ = LIVE.try_with(|l| {
                l.set(l.get() + layout.size() as isize);
                let _ = PEAK.try_with(|p| p.set(p.get().max(l.get())));
            });
        }
        p
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        let _ = LIVE.try_with(|l| l.set(l.get() - layout.size() as isize));
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Heap bytes `f` needs at its peak beyond what is live when it starts (this thread).
fn peak_during(f: impl FnOnce()) -> isize {
    let base = LIVE.with(Cell::get);
    PEAK.with(|p| p.set(base));
    f();
    PEAK.with(Cell::get) - base
}

fn pair_with(pki: &Pki, server: LayerOptions, client_leaf: &Leaf) -> (TlsLayer, TlsLayer) {
    let b = default_backend();
    let sc = server_creds_with(&pki.ca.pem, None, &pki.server, true, b.clone());
    let cc = client_creds_with(&pki.ca.pem, None, Some(client_leaf), b);
    let s = TlsLayer::server_with(&TlsServerConfig::new(&sc).unwrap(), server).unwrap();
    let c = TlsLayer::client(&TlsClientConfig::new(&cc).unwrap(), "localhost").unwrap();
    (c, s)
}

fn connected(server: LayerOptions) -> (TlsLayer, TlsLayer) {
    let pki = Pki::new();
    let (mut c, mut s) = pair_with(&pki, server, &pki.client);
    let (rc, rs) = handshake(&mut c, &mut s);
    rc.unwrap();
    rs.unwrap();
    (c, s)
}

/// Encrypts `data` on `c` in records of at most `record` bytes.
fn records(c: &mut TlsLayer, data: &[u8], record: usize) -> Vec<u8> {
    let mut wire = Vec::new();
    for piece in data.chunks(record) {
        let mut out = vec![0u8; c.encrypted_len(piece.len())];
        let n = c.encrypt(piece, &mut out).unwrap();
        wire.extend_from_slice(&out[..n]);
    }
    wire
}

/// Feeds `wire` to `s` through its own buffer in `read`-byte transport reads, delivering
/// plaintext to a "core" that takes whole `unit`-byte messages (several per call if it can);
/// returns what the core got and the most plaintext the layer ever held unconsumed.
fn deliver(s: &mut TlsLayer, wire: &[u8], read: usize, unit: usize) -> (Vec<u8>, usize) {
    let mut got = Vec::with_capacity(wire.len());
    let mut held = 0;
    let mut rest = wire;
    let mut rounds = 0;
    loop {
        rounds += 1;
        assert!(rounds < 100_000, "no progress");
        s.deliver_plaintext(|p| {
            let n = p.len() / unit * unit;
            got.extend_from_slice(&p[..n]);
            Ok::<usize, ()>(n)
        })
        .unwrap();
        held = held.max(s.plaintext().len());
        if rest.is_empty() {
            break;
        }
        let buf = s.ciphertext_buffer();
        assert!(!buf.is_empty(), "layer refuses input with {} held", held);
        let k = buf.len().min(rest.len()).min(read);
        buf[..k].copy_from_slice(&rest[..k]);
        s.commit_ciphertext(k).unwrap();
        rest = &rest[k..];
    }
    (got, held)
}

fn pattern(len: usize) -> Vec<u8> {
    (0..len as u32).map(|i| (i * 31 + i / 97) as u8).collect()
}

#[test]
fn full_records_are_delivered_in_place() {
    let data = pattern(200_000);
    let mut peaks = Vec::new();
    for in_place in [true, false] {
        let opts = {
            let mut o = LayerOptions::minimal(LIMIT);
            o.deliver_in_place = in_place;
            o
        };
        let (mut c, mut s) = connected(opts);
        let wire = records(&mut c, &data, MAX_FRAGMENT_LEN);
        // A core that consumes everything.
        let mut got = Vec::with_capacity(data.len());
        let peak = peak_during(|| {
            let (g, held) = deliver(&mut s, &wire, 1460, 1);
            assert_eq!(held, 0);
            got = g;
        });
        assert_eq!(got, data);
        // Less the collecting vector `deliver` allocates.
        peaks.push(peak - wire.len() as isize);
    }
    // In place, no record is copied into the layer: a full record less heap at the peak
    // (the receive buffer grows to one record and rustls holds one decrypted record in
    // both modes).
    assert!(
        peaks[0] + MAX_FRAGMENT_LEN as isize <= peaks[1],
        "in place {} vs copying {}",
        peaks[0],
        peaks[1]
    );
    assert!(
        peaks[0] < 2 * MAX_RECORD_LEN as isize + 4096,
        "{}",
        peaks[0]
    );
}

#[test]
fn remainders_are_kept_and_joined_with_the_next_record() {
    let (mut c, mut s) = connected(LayerOptions::minimal(LIMIT));
    let data = pattern(100_000);
    // 700-byte messages in 1000-byte records: every other message spans two records.
    let wire = records(&mut c, &data, 1000);
    let (got, held) = deliver(&mut s, &wire, 333, 700);
    assert_eq!(got, data[..data.len() / 700 * 700]);
    assert!(held < 700, "held {held}");
    assert_eq!(s.plaintext(), &data[data.len() / 700 * 700..]);
}

#[test]
fn same_results_without_in_place_delivery() {
    for in_place in [false, true] {
        let opts = {
            let mut o = LayerOptions::minimal(LIMIT);
            o.deliver_in_place = in_place;
            o
        };
        let (mut c, mut s) = connected(opts);
        let data = pattern(60_000);
        let wire = records(&mut c, &data, 5000);
        let (got, _) = deliver(&mut s, &wire, 4096, 100);
        assert_eq!(got, data, "in place: {in_place}");
    }
}

#[test]
fn writing_while_a_record_waits_keeps_it() {
    let (mut c, mut s) = connected(LayerOptions::minimal(LIMIT));
    let wire = records(&mut c, b"request", 100);
    feed_all(&mut s, &wire).unwrap();
    // The server answers before the core took the record: rustls writes only after reading,
    // so the record moves into the layer's buffer and is still delivered afterwards.
    assert_eq!(send(&mut s, &mut c, b"unsolicited"), b"unsolicited");
    let mut got = Vec::new();
    s.deliver_plaintext(|p| {
        got.extend_from_slice(p);
        Ok::<usize, ()>(p.len())
    })
    .unwrap();
    assert_eq!(got, b"request");
}

#[test]
fn close_notify_after_data_is_seen_once_the_data_is_delivered() {
    let (mut c, mut s) = connected(LayerOptions::minimal(LIMIT));
    let mut wire = records(&mut c, b"last words", 100);
    let mut out = vec![0u8; 1024];
    let n = c.close_notify(&mut out).unwrap();
    wire.extend_from_slice(&out[..n]);
    feed_all(&mut s, &wire).unwrap();
    let mut got = Vec::new();
    s.deliver_plaintext(|p| {
        got.extend_from_slice(p);
        Ok::<usize, ()>(p.len())
    })
    .unwrap();
    assert_eq!(got, b"last words");
    assert!(s.peer_closed());
    assert_eq!(s.handle_eof(), Ok(()));
}

#[test]
fn handshake_buffer_is_bounded_by_rx_limit() {
    // A client certificate with a 40 KB extension: its Certificate message spans three
    // records. The default layer grows to hold it; the minimal one refuses instead of
    // allocating beyond one record's buffer.
    let pki = Pki::new();
    let big = pki.ca.leaf_with(
        "client.example.com",
        false,
        rcgen::KeyPair::generate().unwrap(),
        |p| {
            p.custom_extensions
                .push(rcgen::CustomExtension::from_oid_content(
                    &[1, 3, 6, 1, 4, 1, 99999, 1],
                    {
                        let mut der = vec![0x04, 0x82, 0x9C, 0x40];
                        der.extend(std::iter::repeat_n(0x5A, 40_000));
                        der
                    },
                ))
        },
    );
    let (mut c, mut s) = pair_with(&pki, LayerOptions::small(), &big);
    let (rc, rs) = handshake(&mut c, &mut s);
    rc.unwrap();
    rs.unwrap();

    let (mut c, mut s) = pair_with(&pki, LayerOptions::minimal(LIMIT), &big);
    let mut buf = vec![0u8; 128 * 1024];
    let mut refused = false;
    for _ in 0..20 {
        let mut moved = false;
        while let Ok(Some(n)) = c.poll_transmit(&mut buf) {
            moved = true;
            let mut rest = &buf[..n];
            while !rest.is_empty() {
                let space = s.ciphertext_buffer();
                if space.is_empty() {
                    refused = true;
                    break;
                }
                let k = space.len().min(rest.len());
                space[..k].copy_from_slice(&rest[..k]);
                rest = &rest[k..];
                if s.commit_ciphertext(k).is_err() {
                    refused = true;
                    break;
                }
            }
            if refused {
                break;
            }
        }
        while let Ok(Some(n)) = s.poll_transmit(&mut buf) {
            moved = true;
            let _ = feed_all(&mut c, &buf[..n]);
        }
        if refused || !moved {
            break;
        }
    }
    assert!(refused, "the minimal layer took a 40 KB handshake message");
    assert!(s.is_handshaking());
    assert!(!s.wants_input());
}
