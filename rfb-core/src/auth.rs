//! VNC authentication (DES challenge–response), constant-time comparison, and failed-login
//! throttling.

use crate::time::{Duration, Instant};
use des::Des;
use des::cipher::{BlockCipherEncrypt, KeyInit};

/// Length of the VNC authentication challenge and response.
pub const CHALLENGE_LEN: usize = 16;

/// The DES key VNC derives from a password: the first 8 bytes, NUL-padded, each byte's bits
/// reversed (RFB uses the lowest bit of each key byte as the first bit).
pub fn vnc_key(password: &[u8]) -> [u8; 8] {
    let mut key = [0u8; 8];
    for (k, p) in key.iter_mut().zip(password.iter()) {
        *k = p.reverse_bits();
    }
    key
}

/// The response a client sends for `challenge` with `password` (DES-ECB of both halves).
pub fn vnc_response(password: &[u8], challenge: &[u8; CHALLENGE_LEN]) -> [u8; CHALLENGE_LEN] {
    let key = vnc_key(password);
    let cipher = Des::new(&key.into());
    let mut out = *challenge;
    for half in out.chunks_exact_mut(8) {
        let mut block = [0u8; 8];
        block.copy_from_slice(half);
        let mut block = block.into();
        cipher.encrypt_block(&mut block);
        half.copy_from_slice(&block);
    }
    out
}

/// The fixed DES key VNC implementations obfuscate stored passwords with (TigerVNC's and
/// RealVNC's `vncpasswd`, libvncserver's `rfbEncryptAndStorePasswd`).
const OBFUSCATION_KEY: [u8; 8] = [23, 82, 107, 6, 35, 78, 88, 7];

/// The 8 bytes `vncpasswd -f` stores for `password` (truncated to 8, NUL-padded, DES-encrypted
/// with the well-known fixed key: obfuscation, not protection).
pub fn obfuscate_password(password: &[u8]) -> [u8; 8] {
    let mut block = [0u8; 8];
    for (b, p) in block.iter_mut().zip(password.iter()) {
        *b = *p;
    }
    let cipher = Des::new(&vnc_key(&OBFUSCATION_KEY).into());
    let mut b = block.into();
    cipher.encrypt_block(&mut b);
    b.into()
}

/// The password stored in a `vncpasswd -f` file's first 8 bytes (NUL padding removed: the
/// result is the password's length, at most 8).
pub fn deobfuscate_password(stored: &[u8; 8]) -> ([u8; 8], usize) {
    use des::cipher::BlockCipherDecrypt;
    let cipher = Des::new(&vnc_key(&OBFUSCATION_KEY).into());
    let mut b = (*stored).into();
    cipher.decrypt_block(&mut b);
    let plain: [u8; 8] = b.into();
    let len = plain.iter().position(|&c| c == 0).unwrap_or(8);
    (plain, len)
}

/// Compares two byte strings in time that depends only on their lengths.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut diff = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= x ^ y;
    }
    // Keep the optimiser from short-circuiting the loop above.
    core::hint::black_box(diff) == 0
}

/// Server side: whether `response` answers `challenge` for `password`, compared in constant time.
pub fn verify_vnc_response(
    password: &[u8],
    challenge: &[u8; CHALLENGE_LEN],
    response: &[u8; CHALLENGE_LEN],
) -> bool {
    constant_time_eq(&vnc_response(password, challenge), response)
}

/// Failed-authentication throttling for a driver that accepts many connections: a fixed table of
/// peers (keyed by anything the driver chooses, e.g. a hash of the IP address) with an
/// exponentially growing block time, like TigerVNC's blacklist.
///
/// ```
/// use rfb_core::{AuthThrottle, Instant};
/// let mut t: AuthThrottle<16> = AuthThrottle::new(3);
/// let now = Instant::from_millis(0);
/// for _ in 0..3 { t.record_failure(42, now); }
/// assert!(t.check(42, now).is_err());          // blocked: close the connection at once
/// assert!(t.check(7, now).is_ok());            // others are unaffected
/// ```
#[derive(Debug, Clone)]
pub struct AuthThrottle<const N: usize> {
    entries: [ThrottleEntry; N],
    threshold: u16,
    initial_block: Duration,
    max_block: Duration,
}

#[derive(Debug, Clone, Copy, Default)]
struct ThrottleEntry {
    key: u64,
    failures: u16,
    used: bool,
    last: Instant,
    blocked_until: Instant,
    block: Duration,
}

impl<const N: usize> AuthThrottle<N> {
    /// A table that blocks a peer after `threshold` consecutive failures, first for 10 s, doubling
    /// up to 10 minutes.
    pub fn new(threshold: u16) -> Self {
        Self {
            entries: [ThrottleEntry::default(); N],
            threshold: threshold.max(1),
            initial_block: Duration::from_secs(10),
            max_block: Duration::from_secs(600),
        }
    }

    /// Sets the first block time and the cap for doubling.
    pub fn with_block_times(mut self, initial: Duration, max: Duration) -> Self {
        self.initial_block = initial;
        self.max_block = max.max(initial);
        self
    }

    /// `Ok` if `key` may try to authenticate now, else `Err(remaining block time)`.
    pub fn check(&self, key: u64, now: Instant) -> Result<(), Duration> {
        match self.entries.iter().find(|e| e.used && e.key == key) {
            Some(e) if e.blocked_until > now => Err(e.blocked_until.saturating_duration_since(now)),
            _ => Ok(()),
        }
    }

    /// Records a failed attempt by `key`.
    pub fn record_failure(&mut self, key: u64, now: Instant) {
        let idx = match self.entries.iter().position(|e| e.used && e.key == key) {
            Some(i) => i,
            None => {
                // Reuse a free slot or evict the least recently active one.
                let i = self
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| (e.used, e.last))
                    .map(|(i, _)| i)
                    .unwrap_or(0);
                if N == 0 {
                    return;
                }
                self.entries[i] = ThrottleEntry {
                    key,
                    used: true,
                    ..ThrottleEntry::default()
                };
                i
            }
        };
        let e = &mut self.entries[idx];
        e.failures = e.failures.saturating_add(1);
        e.last = now;
        if e.failures >= self.threshold {
            e.block = if e.block.is_zero() {
                self.initial_block
            } else {
                (e.block * 2).min(self.max_block)
            };
            e.blocked_until = now + e.block;
        }
    }

    /// Records a successful login by `key` (forgets its failures).
    pub fn record_success(&mut self, key: u64) {
        if let Some(e) = self.entries.iter_mut().find(|e| e.used && e.key == key) {
            *e = ThrottleEntry::default();
        }
    }
}

#[cfg(test)]
mod test {
    use super::*;

    fn hex(s: &str) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, o) in out.iter_mut().enumerate() {
            *o = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap();
        }
        out
    }

    const CHALLENGE: [u8; 16] = [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15];

    /// protocols.md §1.1 vectors (verified there against OpenSSL DES and libvncserver d3des).
    #[test]
    fn des_vectors() {
        assert_eq!(
            vnc_response(b"password", &CHALLENGE),
            hex("b866924125c8eebb9debc1db61c538e2")
        );
        assert_eq!(
            vnc_response(b"", &CHALLENGE),
            hex("491e890de9ace932838a49792f2213f3")
        );
        assert_eq!(
            vnc_response(b"secret", &CHALLENGE),
            hex("ee22539f33a5983ec12f9c2edbc995dd")
        );
        assert_eq!(
            vnc_response(b"12345678abc", &CHALLENGE),
            hex("83dd2b4dbd04367f28578fdd5b142740")
        );
        // Truncation: only the first 8 bytes count.
        assert_eq!(
            vnc_response(b"12345678", &CHALLENGE),
            vnc_response(b"12345678abc", &CHALLENGE)
        );
    }

    /// `echo secret | vncpasswd -f | xxd` (TigerVNC 1.12) and friends.
    #[test]
    fn vncpasswd_file_vectors() {
        let cases: [(&[u8], [u8; 8]); 4] = [
            (b"secret", [0x2e, 0x2d, 0xbf, 0x57, 0x6e, 0xb0, 0x6c, 0x9e]),
            (
                b"password",
                [0xdb, 0xd8, 0x3c, 0xfd, 0x72, 0x7a, 0x14, 0x58],
            ),
            (
                b"12345678abc",
                [0xf0, 0xe4, 0x31, 0x64, 0xf6, 0xc2, 0xe3, 0x73],
            ),
            (b"a", [0xd8, 0xd1, 0xe3, 0x67, 0xe1, 0xd1, 0x76, 0x46]),
        ];
        for (pw, stored) in cases {
            assert_eq!(obfuscate_password(pw), stored);
            let (plain, len) = deobfuscate_password(&stored);
            let want = &pw[..pw.len().min(8)];
            assert_eq!(&plain[..len], want);
        }
    }

    #[test]
    fn verify_and_ct_eq() {
        let r = vnc_response(b"secret", &CHALLENGE);
        assert!(verify_vnc_response(b"secret", &CHALLENGE, &r));
        assert!(!verify_vnc_response(b"secreT", &CHALLENGE, &r));
        let mut bad = r;
        bad[15] ^= 1;
        assert!(!verify_vnc_response(b"secret", &CHALLENGE, &bad));
        assert!(constant_time_eq(b"", b""));
        assert!(!constant_time_eq(b"a", b"ab"));
    }

    #[test]
    fn throttle_blocks_and_doubles() {
        let mut t: AuthThrottle<2> = AuthThrottle::new(2);
        let t0 = Instant::from_millis(0);
        t.record_failure(1, t0);
        assert!(t.check(1, t0).is_ok());
        t.record_failure(1, t0);
        assert_eq!(t.check(1, t0), Err(Duration::from_secs(10)));
        let t1 = Instant::from_millis(10_000);
        assert!(t.check(1, t1).is_ok());
        t.record_failure(1, t1);
        assert_eq!(t.check(1, t1), Err(Duration::from_secs(20)));
        // Eviction keeps the table bounded.
        t.record_failure(2, t1);
        t.record_failure(3, t1);
        t.record_success(3);
        assert!(t.check(3, t1).is_ok());
    }
}
