//! A small rustls `CryptoProvider` built from maintained RustCrypto crates, for targets where
//! neither aws-lc-rs nor ring builds (thumbv7em). Randomness comes from the caller.
//!
//! What it offers follows the cargo features, so firmware pays only for what it uses:
//! * `rustcrypto-core`: TLS 1.3 AES-128-GCM-SHA256 and ChaCha20-Poly1305-SHA256, key exchange
//!   X25519 and P-256, ECDSA P-256 with SHA-256 (verify and sign);
//! * `rustcrypto-sha384`: TLS 1.3 AES-256-GCM-SHA384 (and SHA-384 signatures where a curve is
//!   enabled);
//! * `rustcrypto-p384`: P-384 key exchange and ECDSA P-384;
//! * `rustcrypto-ed25519`: Ed25519 signatures;
//! * `rustcrypto-rsa`: RSA PKCS#1 v1.5 and PSS signatures (SHA-256/384/512);
//! * `rustcrypto`: all of the above.
//!
//! rustls-rustcrypto 0.0.2-alpha was not used: it pulls a second webpki, getrandom 0.2 with a
//! global custom hook (no injectable RNG) and has not been released for a long time.

use alloc::boxed::Box;
use alloc::sync::Arc;
use alloc::vec::Vec;

use aes_gcm::aead::{AeadInPlace, Buffer, KeyInit};
use rustls::crypto::cipher::{
    AeadKey, BorrowedPayload, InboundOpaqueMessage, InboundPlainMessage, Iv, MessageDecrypter,
    MessageEncrypter, Nonce, OutboundOpaqueMessage, OutboundPlainMessage, PrefixedPayload,
    Tls13AeadAlgorithm, UnsupportedOperationError, make_tls13_aad,
};
#[cfg(feature = "tls12")]
use rustls::crypto::cipher::{KeyBlockShape, NONCE_LEN, Tls12AeadAlgorithm, make_tls12_aad};
use rustls::crypto::{self, CryptoProvider, GetRandomFailed, SupportedKxGroup};
use rustls::pki_types::{
    AlgorithmIdentifier, InvalidSignature, PrivateKeyDer, SignatureVerificationAlgorithm,
    SubjectPublicKeyInfoDer, alg_id,
};
use rustls::sign::{Signer, SigningKey};
use rustls::{
    CipherSuite, ConnectionTrafficSecrets, ContentType, Error, NamedGroup, ProtocolVersion,
    SignatureAlgorithm, SignatureScheme, SupportedCipherSuite,
};
use sha2::Digest;

use crate::backend::RandomSource;

/// Builds the provider; leaks the RNG adapter and the key-exchange groups (see
/// [`CryptoBackend::rustcrypto`](crate::CryptoBackend::rustcrypto)).
pub(crate) fn provider(rng: Arc<dyn RandomSource>) -> CryptoProvider {
    let rand: &'static Rand = Box::leak(Box::new(Rand(rng)));
    let x25519: &'static dyn SupportedKxGroup = Box::leak(Box::new(X25519(rand)));
    let p256: &'static dyn SupportedKxGroup = Box::leak(Box::new(P256Kx(rand)));
    #[cfg(feature = "rustcrypto-p384")]
    let p384: &'static dyn SupportedKxGroup = Box::leak(Box::new(P384Kx(rand)));
    CryptoProvider {
        cipher_suites: ALL_SUITES.to_vec(),
        kx_groups: alloc::vec![
            x25519,
            p256,
            #[cfg(feature = "rustcrypto-p384")]
            p384
        ],
        signature_verification_algorithms: ALGORITHMS,
        secure_random: rand,
        key_provider: rand,
    }
}

#[derive(Debug)]
struct Rand(Arc<dyn RandomSource>);

impl Rand {
    fn bytes<const N: usize>(&self) -> Result<[u8; N], Error> {
        let mut b = [0u8; N];
        self.0
            .fill(&mut b)
            .map_err(|_| Error::FailedToGetRandomBytes)?;
        Ok(b)
    }
}

impl crypto::SecureRandom for Rand {
    fn fill(&self, buf: &mut [u8]) -> Result<(), GetRandomFailed> {
        self.0.fill(buf).map_err(|_| GetRandomFailed)
    }
}

#[cfg(feature = "rustcrypto-rsa")]
/// rand_core 0.6 adapter for the RSA-PSS signer.
struct RngAdapter<'a>(&'a dyn RandomSource);

#[cfg(feature = "rustcrypto-rsa")]
impl rsa::rand_core::RngCore for RngAdapter<'_> {
    fn next_u32(&mut self) -> u32 {
        let mut b = [0u8; 4];
        self.fill_bytes(&mut b);
        u32::from_le_bytes(b)
    }
    fn next_u64(&mut self) -> u64 {
        let mut b = [0u8; 8];
        self.fill_bytes(&mut b);
        u64::from_le_bytes(b)
    }
    fn fill_bytes(&mut self, dest: &mut [u8]) {
        // A failing hardware RNG must not yield predictable signatures: the signer below
        // checks the source first and only then signs.
        let _ = self.0.fill(dest);
    }
    fn try_fill_bytes(&mut self, dest: &mut [u8]) -> Result<(), rsa::rand_core::Error> {
        self.fill_bytes(dest);
        Ok(())
    }
}

#[cfg(feature = "rustcrypto-rsa")]
impl rsa::rand_core::CryptoRng for RngAdapter<'_> {}

// ---------------------------------------------------------------- hashes and HMAC

struct Hash<D>(core::marker::PhantomData<D>, crypto::hash::HashAlgorithm);

struct HashCtx<D>(D);

impl<D: Digest + Clone + Send + Sync + 'static> crypto::hash::Hash for Hash<D> {
    fn start(&self) -> Box<dyn crypto::hash::Context> {
        Box::new(HashCtx(D::new()))
    }
    fn hash(&self, data: &[u8]) -> crypto::hash::Output {
        crypto::hash::Output::new(&D::digest(data)[..])
    }
    fn algorithm(&self) -> crypto::hash::HashAlgorithm {
        self.1
    }
    fn output_len(&self) -> usize {
        <D as Digest>::output_size()
    }
}

impl<D: Digest + Clone + Send + Sync + 'static> crypto::hash::Context for HashCtx<D> {
    fn fork_finish(&self) -> crypto::hash::Output {
        crypto::hash::Output::new(&self.0.clone().finalize()[..])
    }
    fn fork(&self) -> Box<dyn crypto::hash::Context> {
        Box::new(HashCtx(self.0.clone()))
    }
    fn finish(self: Box<Self>) -> crypto::hash::Output {
        crypto::hash::Output::new(&self.0.finalize()[..])
    }
    fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

static SHA256: Hash<sha2::Sha256> = Hash(
    core::marker::PhantomData,
    crypto::hash::HashAlgorithm::SHA256,
);
#[cfg(feature = "rustcrypto-sha384")]
static SHA384: Hash<sha2::Sha384> = Hash(
    core::marker::PhantomData,
    crypto::hash::HashAlgorithm::SHA384,
);

struct HmacSha256;
#[cfg(feature = "rustcrypto-sha384")]
struct HmacSha384;
struct HmacKey<M>(M);

macro_rules! hmac_impl {
    ($name:ident, $d:ty) => {
        impl crypto::hmac::Hmac for $name {
            fn with_key(&self, key: &[u8]) -> Box<dyn crypto::hmac::Key> {
                // HMAC accepts keys of any length; this cannot fail.
                match <hmac::Hmac<$d> as hmac::Mac>::new_from_slice(key) {
                    Ok(m) => Box::new(HmacKey(m)),
                    Err(_) => Box::new(HmacKey(<hmac::Hmac<$d> as hmac::digest::KeyInit>::new(
                        &Default::default(),
                    ))),
                }
            }
            fn hash_output_len(&self) -> usize {
                <$d as Digest>::output_size()
            }
        }
        impl crypto::hmac::Key for HmacKey<hmac::Hmac<$d>> {
            fn sign_concat(
                &self,
                first: &[u8],
                middle: &[&[u8]],
                last: &[u8],
            ) -> crypto::hmac::Tag {
                use hmac::Mac;
                let mut ctx = self.0.clone();
                ctx.update(first);
                for m in middle {
                    ctx.update(m);
                }
                ctx.update(last);
                crypto::hmac::Tag::new(&ctx.finalize().into_bytes()[..])
            }
            fn tag_len(&self) -> usize {
                <$d as Digest>::output_size()
            }
        }
    };
}
hmac_impl!(HmacSha256, sha2::Sha256);
#[cfg(feature = "rustcrypto-sha384")]
hmac_impl!(HmacSha384, sha2::Sha384);

// ---------------------------------------------------------------- AEADs

#[derive(Clone, Copy)]
enum Aead {
    Aes128Gcm,
    #[cfg(feature = "rustcrypto-sha384")]
    Aes256Gcm,
    ChaCha,
}

enum Cipher {
    Aes128(Box<aes_gcm::Aes128Gcm>),
    #[cfg(feature = "rustcrypto-sha384")]
    Aes256(Box<aes_gcm::Aes256Gcm>),
    ChaCha(Box<chacha20poly1305::ChaCha20Poly1305>),
}

impl Aead {
    fn key_len(self) -> usize {
        match self {
            Aead::Aes128Gcm => 16,
            #[cfg(feature = "rustcrypto-sha384")]
            Aead::Aes256Gcm => 32,
            Aead::ChaCha => 32,
        }
    }

    fn cipher(self, key: &AeadKey) -> Cipher {
        // Key lengths come from `key_len`, so construction cannot fail; fall back to a zero
        // key of the right size would be wrong, so use `from_slice` on an exact-length key.
        let k = key.as_ref();
        match self {
            Aead::Aes128Gcm => Cipher::Aes128(Box::new(aes_gcm::Aes128Gcm::new(aes_gcm::Key::<
                aes_gcm::Aes128Gcm,
            >::from_slice(
                &k[..16]
            )))),
            #[cfg(feature = "rustcrypto-sha384")]
            Aead::Aes256Gcm => Cipher::Aes256(Box::new(aes_gcm::Aes256Gcm::new(aes_gcm::Key::<
                aes_gcm::Aes256Gcm,
            >::from_slice(
                &k[..32]
            )))),
            Aead::ChaCha => Cipher::ChaCha(Box::new(chacha20poly1305::ChaCha20Poly1305::new(
                chacha20poly1305::Key::from_slice(&k[..32]),
            ))),
        }
    }

    fn secrets(self, key: AeadKey, iv: Iv) -> ConnectionTrafficSecrets {
        match self {
            Aead::Aes128Gcm => ConnectionTrafficSecrets::Aes128Gcm { key, iv },
            #[cfg(feature = "rustcrypto-sha384")]
            Aead::Aes256Gcm => ConnectionTrafficSecrets::Aes256Gcm { key, iv },
            Aead::ChaCha => ConnectionTrafficSecrets::Chacha20Poly1305 { key, iv },
        }
    }
}

impl Cipher {
    fn seal(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut dyn Buffer) -> Result<(), Error> {
        let n = aes_gcm::Nonce::from_slice(nonce);
        let r = match self {
            Cipher::Aes128(c) => c.encrypt_in_place(n, aad, buf),
            #[cfg(feature = "rustcrypto-sha384")]
            Cipher::Aes256(c) => c.encrypt_in_place(n, aad, buf),
            Cipher::ChaCha(c) => c.encrypt_in_place(n, aad, buf),
        };
        r.map_err(|_| Error::EncryptError)
    }

    fn open(&self, nonce: &[u8; 12], aad: &[u8], buf: &mut dyn Buffer) -> Result<(), Error> {
        let n = aes_gcm::Nonce::from_slice(nonce);
        let r = match self {
            Cipher::Aes128(c) => c.decrypt_in_place(n, aad, buf),
            #[cfg(feature = "rustcrypto-sha384")]
            Cipher::Aes256(c) => c.decrypt_in_place(n, aad, buf),
            Cipher::ChaCha(c) => c.decrypt_in_place(n, aad, buf),
        };
        r.map_err(|_| Error::DecryptError)
    }
}

const TAG_LEN: usize = 16;

struct EncBuf<'a>(&'a mut PrefixedPayload);

impl AsRef<[u8]> for EncBuf<'_> {
    fn as_ref(&self) -> &[u8] {
        self.0.as_ref()
    }
}
impl AsMut<[u8]> for EncBuf<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0.as_mut()
    }
}
impl Buffer for EncBuf<'_> {
    fn extend_from_slice(&mut self, other: &[u8]) -> aes_gcm::aead::Result<()> {
        self.0.extend_from_slice(other);
        Ok(())
    }
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len)
    }
}

/// Decryption happens in the record's own bytes; the tag is cut off with `truncate`.
struct DecBuf<'a, 'p>(&'a mut BorrowedPayload<'p>);

impl AsRef<[u8]> for DecBuf<'_, '_> {
    fn as_ref(&self) -> &[u8] {
        self.0
    }
}
impl AsMut<[u8]> for DecBuf<'_, '_> {
    fn as_mut(&mut self) -> &mut [u8] {
        self.0
    }
}
impl Buffer for DecBuf<'_, '_> {
    fn extend_from_slice(&mut self, _: &[u8]) -> aes_gcm::aead::Result<()> {
        Err(aes_gcm::aead::Error) // never used by decrypt_in_place
    }
    fn truncate(&mut self, len: usize) {
        self.0.truncate(len)
    }
}

/// In-place over a sub-range of the payload (TLS 1.2 GCM skips the explicit nonce).
#[cfg(feature = "tls12")]
struct SliceBuf<'a> {
    data: &'a mut [u8],
    len: usize,
}
#[cfg(feature = "tls12")]
impl AsRef<[u8]> for SliceBuf<'_> {
    fn as_ref(&self) -> &[u8] {
        &self.data[..self.len]
    }
}
#[cfg(feature = "tls12")]
impl AsMut<[u8]> for SliceBuf<'_> {
    fn as_mut(&mut self) -> &mut [u8] {
        &mut self.data[..self.len]
    }
}
#[cfg(feature = "tls12")]
impl Buffer for SliceBuf<'_> {
    fn extend_from_slice(&mut self, _: &[u8]) -> aes_gcm::aead::Result<()> {
        Err(aes_gcm::aead::Error)
    }
    fn truncate(&mut self, len: usize) {
        self.len = self.len.min(len);
    }
}

struct Tls13(Cipher, Iv);

impl MessageEncrypter for Tls13 {
    fn encrypt(
        &mut self,
        m: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total = self.encrypted_payload_len(m.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        payload.extend_from_chunks(&m.payload);
        payload.extend_from_slice(&m.typ.to_array());
        let nonce = Nonce::new(&self.1, seq).0;
        let aad = make_tls13_aad(total);
        self.0.seal(&nonce, &aad, &mut EncBuf(&mut payload))?;
        Ok(OutboundOpaqueMessage::new(
            ContentType::ApplicationData,
            ProtocolVersion::TLSv1_2,
            payload,
        ))
    }
    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + 1 + TAG_LEN
    }
}

impl MessageDecrypter for Tls13 {
    fn decrypt<'a>(
        &mut self,
        mut m: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let payload = &mut m.payload;
        if payload.len() < TAG_LEN {
            return Err(Error::DecryptError);
        }
        let nonce = Nonce::new(&self.1, seq).0;
        let aad = make_tls13_aad(payload.len());
        self.0.open(&nonce, &aad, &mut DecBuf(payload))?;
        m.into_tls13_unpadded_message()
    }
}

struct Tls13Alg(Aead);

impl Tls13AeadAlgorithm for Tls13Alg {
    fn encrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageEncrypter> {
        Box::new(Tls13(self.0.cipher(&key), iv))
    }
    fn decrypter(&self, key: AeadKey, iv: Iv) -> Box<dyn MessageDecrypter> {
        Box::new(Tls13(self.0.cipher(&key), iv))
    }
    fn key_len(&self) -> usize {
        self.0.key_len()
    }
    fn extract_keys(
        &self,
        key: AeadKey,
        iv: Iv,
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        Ok(self.0.secrets(key, iv))
    }
}

/// TLS 1.2 record protection: GCM with an 8-byte explicit nonce, or ChaCha20-Poly1305.
#[cfg(feature = "tls12")]
struct Tls12 {
    cipher: Cipher,
    iv: Iv,
    gcm: bool,
}

#[cfg(feature = "tls12")]
const GCM_EXPLICIT: usize = 8;

#[cfg(feature = "tls12")]
impl MessageEncrypter for Tls12 {
    fn encrypt(
        &mut self,
        m: OutboundPlainMessage<'_>,
        seq: u64,
    ) -> Result<OutboundOpaqueMessage, Error> {
        let total = self.encrypted_payload_len(m.payload.len());
        let mut payload = PrefixedPayload::with_capacity(total);
        let nonce = Nonce::new(&self.iv, seq).0;
        let aad = make_tls12_aad(seq, m.typ, m.version, m.payload.len());
        if self.gcm {
            payload.extend_from_slice(&nonce[4..]);
            payload.extend_from_chunks(&m.payload);
            let body = &mut payload.as_mut()[GCM_EXPLICIT..];
            let n = aes_gcm::Nonce::from_slice(&nonce);
            let tag = match &self.cipher {
                Cipher::Aes128(c) => c.encrypt_in_place_detached(n, &aad, body),
                #[cfg(feature = "rustcrypto-sha384")]
                Cipher::Aes256(c) => c.encrypt_in_place_detached(n, &aad, body),
                Cipher::ChaCha(c) => c.encrypt_in_place_detached(n, &aad, body),
            }
            .map_err(|_| Error::EncryptError)?;
            payload.extend_from_slice(&tag);
        } else {
            payload.extend_from_chunks(&m.payload);
            self.cipher.seal(&nonce, &aad, &mut EncBuf(&mut payload))?;
        }
        Ok(OutboundOpaqueMessage::new(m.typ, m.version, payload))
    }

    fn encrypted_payload_len(&self, payload_len: usize) -> usize {
        payload_len + TAG_LEN + if self.gcm { GCM_EXPLICIT } else { 0 }
    }
}

#[cfg(feature = "tls12")]
impl MessageDecrypter for Tls12 {
    fn decrypt<'a>(
        &mut self,
        mut m: InboundOpaqueMessage<'a>,
        seq: u64,
    ) -> Result<InboundPlainMessage<'a>, Error> {
        let overhead = TAG_LEN + if self.gcm { GCM_EXPLICIT } else { 0 };
        let len = m.payload.len();
        if len < overhead {
            return Err(Error::DecryptError);
        }
        let plain_len = len - overhead;
        let aad = make_tls12_aad(seq, m.typ, m.version, plain_len);
        if self.gcm {
            let mut nonce = [0u8; NONCE_LEN];
            nonce[..4].copy_from_slice(&self.iv.as_ref()[..4]);
            nonce[4..].copy_from_slice(&m.payload[..GCM_EXPLICIT]);
            let body: &mut [u8] = &mut m.payload[GCM_EXPLICIT..];
            let mut buf = SliceBuf {
                len: body.len(),
                data: body,
            };
            self.cipher.open(&nonce, &aad, &mut buf)?;
            Ok(m.into_plain_message_range(GCM_EXPLICIT..GCM_EXPLICIT + plain_len))
        } else {
            let nonce = Nonce::new(&self.iv, seq).0;
            self.cipher
                .open(&nonce, &aad, &mut DecBuf(&mut m.payload))?;
            Ok(m.into_plain_message())
        }
    }
}

#[cfg(feature = "tls12")]
struct Tls12Alg(Aead);

#[cfg(feature = "tls12")]
impl Tls12AeadAlgorithm for Tls12Alg {
    fn encrypter(&self, key: AeadKey, iv: &[u8], extra: &[u8]) -> Box<dyn MessageEncrypter> {
        let gcm = !matches!(self.0, Aead::ChaCha);
        let iv = if gcm {
            let mut full = [0u8; NONCE_LEN];
            full[..4].copy_from_slice(&iv[..4]);
            full[4..].copy_from_slice(&extra[..8]);
            Iv::from(full)
        } else {
            let mut full = [0u8; NONCE_LEN];
            full.copy_from_slice(&iv[..NONCE_LEN]);
            Iv::from(full)
        };
        Box::new(Tls12 {
            cipher: self.0.cipher(&key),
            iv,
            gcm,
        })
    }

    fn decrypter(&self, key: AeadKey, iv: &[u8]) -> Box<dyn MessageDecrypter> {
        let gcm = !matches!(self.0, Aead::ChaCha);
        let mut full = [0u8; NONCE_LEN];
        if gcm {
            full[..4].copy_from_slice(&iv[..4]);
        } else {
            full.copy_from_slice(&iv[..NONCE_LEN]);
        }
        Box::new(Tls12 {
            cipher: self.0.cipher(&key),
            iv: Iv::from(full),
            gcm,
        })
    }

    fn key_block_shape(&self) -> KeyBlockShape {
        match self.0 {
            Aead::ChaCha => KeyBlockShape {
                enc_key_len: 32,
                fixed_iv_len: 12,
                explicit_nonce_len: 0,
            },
            a => KeyBlockShape {
                enc_key_len: a.key_len(),
                fixed_iv_len: 4,
                explicit_nonce_len: 8,
            },
        }
    }

    fn extract_keys(
        &self,
        key: AeadKey,
        iv: &[u8],
        explicit: &[u8],
    ) -> Result<ConnectionTrafficSecrets, UnsupportedOperationError> {
        let mut full = [0u8; NONCE_LEN];
        if matches!(self.0, Aead::ChaCha) {
            full.copy_from_slice(&iv[..NONCE_LEN]);
        } else {
            full[..4].copy_from_slice(&iv[..4]);
            full[4..].copy_from_slice(&explicit[..8]);
        }
        Ok(self.0.secrets(key, Iv::from(full)))
    }
}

static AES128: Tls13Alg = Tls13Alg(Aead::Aes128Gcm);
#[cfg(feature = "rustcrypto-sha384")]
static AES256: Tls13Alg = Tls13Alg(Aead::Aes256Gcm);
static CHACHA: Tls13Alg = Tls13Alg(Aead::ChaCha);
static HKDF256: crypto::tls13::HkdfUsingHmac<'static> = crypto::tls13::HkdfUsingHmac(&HmacSha256);
#[cfg(feature = "rustcrypto-sha384")]
static HKDF384: crypto::tls13::HkdfUsingHmac<'static> = crypto::tls13::HkdfUsingHmac(&HmacSha384);

static TLS13_AES_128_GCM_SHA256: rustls::Tls13CipherSuite = rustls::Tls13CipherSuite {
    common: crypto::CipherSuiteCommon {
        suite: CipherSuite::TLS13_AES_128_GCM_SHA256,
        hash_provider: &SHA256,
        confidentiality_limit: 1 << 24,
    },
    hkdf_provider: &HKDF256,
    aead_alg: &AES128,
    quic: None,
};
#[cfg(feature = "rustcrypto-sha384")]
static TLS13_AES_256_GCM_SHA384: rustls::Tls13CipherSuite = rustls::Tls13CipherSuite {
    common: crypto::CipherSuiteCommon {
        suite: CipherSuite::TLS13_AES_256_GCM_SHA384,
        hash_provider: &SHA384,
        confidentiality_limit: 1 << 24,
    },
    hkdf_provider: &HKDF384,
    aead_alg: &AES256,
    quic: None,
};
static TLS13_CHACHA20_POLY1305_SHA256: rustls::Tls13CipherSuite = rustls::Tls13CipherSuite {
    common: crypto::CipherSuiteCommon {
        suite: CipherSuite::TLS13_CHACHA20_POLY1305_SHA256,
        hash_provider: &SHA256,
        confidentiality_limit: u64::MAX,
    },
    hkdf_provider: &HKDF256,
    aead_alg: &CHACHA,
    quic: None,
};

#[cfg(feature = "tls12")]
mod tls12_suites {
    use super::*;
    use rustls::crypto::KeyExchangeAlgorithm;

    static AES128_12: Tls12Alg = Tls12Alg(Aead::Aes128Gcm);
    #[cfg(feature = "rustcrypto-sha384")]
    static AES256_12: Tls12Alg = Tls12Alg(Aead::Aes256Gcm);
    static CHACHA_12: Tls12Alg = Tls12Alg(Aead::ChaCha);
    static PRF256: crypto::tls12::PrfUsingHmac<'static> = crypto::tls12::PrfUsingHmac(&HmacSha256);
    #[cfg(feature = "rustcrypto-sha384")]
    static PRF384: crypto::tls12::PrfUsingHmac<'static> = crypto::tls12::PrfUsingHmac(&HmacSha384);

    const ECDSA_SCHEMES: &[SignatureScheme] = &[
        #[cfg(feature = "rustcrypto-ed25519")]
        SignatureScheme::ED25519,
        #[cfg(feature = "rustcrypto-p384")]
        SignatureScheme::ECDSA_NISTP384_SHA384,
        SignatureScheme::ECDSA_NISTP256_SHA256,
    ];
    const RSA_SCHEMES: &[SignatureScheme] = &[
        SignatureScheme::RSA_PSS_SHA512,
        SignatureScheme::RSA_PSS_SHA384,
        SignatureScheme::RSA_PSS_SHA256,
        SignatureScheme::RSA_PKCS1_SHA512,
        SignatureScheme::RSA_PKCS1_SHA384,
        SignatureScheme::RSA_PKCS1_SHA256,
    ];

    macro_rules! suite12 {
        ($name:ident, $id:ident, $hash:expr, $prf:expr, $aead:expr, $sign:expr, $limit:expr) => {
            pub(super) static $name: rustls::Tls12CipherSuite = rustls::Tls12CipherSuite {
                common: crypto::CipherSuiteCommon {
                    suite: CipherSuite::$id,
                    hash_provider: $hash,
                    confidentiality_limit: $limit,
                },
                kx: KeyExchangeAlgorithm::ECDHE,
                sign: $sign,
                prf_provider: $prf,
                aead_alg: $aead,
            };
        };
    }
    suite12!(
        ECDSA_AES128,
        TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
        &SHA256,
        &PRF256,
        &AES128_12,
        ECDSA_SCHEMES,
        1 << 24
    );
    #[cfg(feature = "rustcrypto-sha384")]
    suite12!(
        ECDSA_AES256,
        TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384,
        &SHA384,
        &PRF384,
        &AES256_12,
        ECDSA_SCHEMES,
        1 << 24
    );
    suite12!(
        ECDSA_CHACHA,
        TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256,
        &SHA256,
        &PRF256,
        &CHACHA_12,
        ECDSA_SCHEMES,
        u64::MAX
    );
    suite12!(
        RSA_AES128,
        TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256,
        &SHA256,
        &PRF256,
        &AES128_12,
        RSA_SCHEMES,
        1 << 24
    );
    #[cfg(feature = "rustcrypto-sha384")]
    suite12!(
        RSA_AES256,
        TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384,
        &SHA384,
        &PRF384,
        &AES256_12,
        RSA_SCHEMES,
        1 << 24
    );
    suite12!(
        RSA_CHACHA,
        TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256,
        &SHA256,
        &PRF256,
        &CHACHA_12,
        RSA_SCHEMES,
        u64::MAX
    );
}

static ALL_SUITES: &[SupportedCipherSuite] = &[
    SupportedCipherSuite::Tls13(&TLS13_AES_128_GCM_SHA256),
    #[cfg(feature = "rustcrypto-sha384")]
    SupportedCipherSuite::Tls13(&TLS13_AES_256_GCM_SHA384),
    SupportedCipherSuite::Tls13(&TLS13_CHACHA20_POLY1305_SHA256),
    #[cfg(feature = "tls12")]
    SupportedCipherSuite::Tls12(&tls12_suites::ECDSA_AES128),
    #[cfg(all(feature = "tls12", feature = "rustcrypto-sha384"))]
    SupportedCipherSuite::Tls12(&tls12_suites::ECDSA_AES256),
    #[cfg(feature = "tls12")]
    SupportedCipherSuite::Tls12(&tls12_suites::ECDSA_CHACHA),
    #[cfg(feature = "tls12")]
    SupportedCipherSuite::Tls12(&tls12_suites::RSA_AES128),
    #[cfg(all(feature = "tls12", feature = "rustcrypto-sha384"))]
    SupportedCipherSuite::Tls12(&tls12_suites::RSA_AES256),
    #[cfg(feature = "tls12")]
    SupportedCipherSuite::Tls12(&tls12_suites::RSA_CHACHA),
];

// ---------------------------------------------------------------- key exchange

#[derive(Debug)]
struct X25519(&'static Rand);

struct X25519Active {
    secret: x25519_dalek::StaticSecret,
    public: x25519_dalek::PublicKey,
}

impl SupportedKxGroup for X25519 {
    fn start(&self) -> Result<Box<dyn crypto::ActiveKeyExchange>, Error> {
        let secret = x25519_dalek::StaticSecret::from(self.0.bytes::<32>()?);
        let public = x25519_dalek::PublicKey::from(&secret);
        Ok(Box::new(X25519Active { secret, public }))
    }
    fn name(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

impl crypto::ActiveKeyExchange for X25519Active {
    fn complete(self: Box<Self>, peer: &[u8]) -> Result<crypto::SharedSecret, Error> {
        let peer: [u8; 32] = peer
            .try_into()
            .map_err(|_| Error::from(rustls::PeerMisbehaved::InvalidKeyShare))?;
        let shared = self
            .secret
            .diffie_hellman(&x25519_dalek::PublicKey::from(peer));
        if !shared.was_contributory() {
            return Err(rustls::PeerMisbehaved::InvalidKeyShare.into());
        }
        Ok(crypto::SharedSecret::from(&shared.as_bytes()[..]))
    }
    fn pub_key(&self) -> &[u8] {
        self.public.as_bytes()
    }
    fn group(&self) -> NamedGroup {
        NamedGroup::X25519
    }
}

macro_rules! nist_kx {
    ($kx:ident, $active:ident, $curve:ident, $group:ident, $len:expr) => {
        #[derive(Debug)]
        struct $kx(&'static Rand);

        struct $active {
            secret: $curve::NonZeroScalar,
            public: Vec<u8>,
        }

        impl SupportedKxGroup for $kx {
            fn start(&self) -> Result<Box<dyn crypto::ActiveKeyExchange>, Error> {
                // Rejection sampling: a uniformly random scalar in [1, n-1].
                for _ in 0..64 {
                    let b = self.0.bytes::<$len>()?;
                    if let Ok(sk) = $curve::SecretKey::from_slice(&b) {
                        let public = sk.public_key();
                        use $curve::elliptic_curve::sec1::ToEncodedPoint;
                        let public = public.to_encoded_point(false).as_bytes().to_vec();
                        return Ok(Box::new($active {
                            secret: sk.to_nonzero_scalar(),
                            public,
                        }));
                    }
                }
                Err(Error::FailedToGetRandomBytes)
            }
            fn name(&self) -> NamedGroup {
                NamedGroup::$group
            }
        }

        impl crypto::ActiveKeyExchange for $active {
            fn complete(self: Box<Self>, peer: &[u8]) -> Result<crypto::SharedSecret, Error> {
                let peer = $curve::PublicKey::from_sec1_bytes(peer)
                    .map_err(|_| Error::from(rustls::PeerMisbehaved::InvalidKeyShare))?;
                let shared = $curve::ecdh::diffie_hellman(self.secret, peer.as_affine());
                Ok(crypto::SharedSecret::from(&shared.raw_secret_bytes()[..]))
            }
            fn pub_key(&self) -> &[u8] {
                &self.public
            }
            fn group(&self) -> NamedGroup {
                NamedGroup::$group
            }
        }
    };
}
nist_kx!(P256Kx, P256Active, p256, secp256r1, 32);
#[cfg(feature = "rustcrypto-p384")]
nist_kx!(P384Kx, P384Active, p384, secp384r1, 48);

// ---------------------------------------------------------------- signature verification

#[derive(Debug)]
struct EcdsaVerify {
    pk: AlgorithmIdentifier,
    sig: AlgorithmIdentifier,
    curve: u16,
    hash: u16,
}

fn prehash(hash: u16, msg: &[u8]) -> Vec<u8> {
    match hash {
        #[cfg(feature = "rustcrypto-sha384")]
        384 => sha2::Sha384::digest(msg).to_vec(),
        #[cfg(feature = "rustcrypto-rsa")]
        512 => sha2::Sha512::digest(msg).to_vec(),
        // Only the schemes compiled in ask for a hash: SHA-256 is the rest.
        _ => sha2::Sha256::digest(msg).to_vec(),
    }
}

impl SignatureVerificationAlgorithm for EcdsaVerify {
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        self.pk
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.sig
    }
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        use p256::ecdsa::signature::hazmat::PrehashVerifier;
        let digest = prehash(self.hash, message);
        match self.curve {
            256 => {
                let vk = p256::ecdsa::VerifyingKey::from_sec1_bytes(public_key)
                    .map_err(|_| InvalidSignature)?;
                let sig =
                    p256::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
                vk.verify_prehash(&digest, &sig)
                    .map_err(|_| InvalidSignature)
            }
            #[cfg(feature = "rustcrypto-p384")]
            384 => {
                let vk = p384::ecdsa::VerifyingKey::from_sec1_bytes(public_key)
                    .map_err(|_| InvalidSignature)?;
                let sig =
                    p384::ecdsa::Signature::from_der(signature).map_err(|_| InvalidSignature)?;
                vk.verify_prehash(&digest, &sig)
                    .map_err(|_| InvalidSignature)
            }
            _ => Err(InvalidSignature),
        }
    }
}

#[cfg(feature = "rustcrypto-ed25519")]
#[derive(Debug)]
struct Ed25519Verify;

#[cfg(feature = "rustcrypto-ed25519")]
impl SignatureVerificationAlgorithm for Ed25519Verify {
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let pk: [u8; 32] = public_key.try_into().map_err(|_| InvalidSignature)?;
        let vk = ed25519_dalek::VerifyingKey::from_bytes(&pk).map_err(|_| InvalidSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| InvalidSignature)?;
        vk.verify_strict(message, &sig)
            .map_err(|_| InvalidSignature)
    }
}

#[cfg(feature = "rustcrypto-rsa")]
#[derive(Debug)]
struct RsaVerify {
    sig: AlgorithmIdentifier,
    pss: bool,
    hash: u16,
}

#[cfg(feature = "rustcrypto-rsa")]
fn rsa_public(public_key: &[u8]) -> Result<rsa::RsaPublicKey, InvalidSignature> {
    use rsa::pkcs1::DecodeRsaPublicKey;
    let key = rsa::RsaPublicKey::from_pkcs1_der(public_key).map_err(|_| InvalidSignature)?;
    // rustls/webpki accept 2048..=8192-bit keys.
    if !(2048..=8192).contains(&(rsa::traits::PublicKeyParts::size(&key) * 8)) {
        return Err(InvalidSignature);
    }
    Ok(key)
}

#[cfg(feature = "rustcrypto-rsa")]
impl SignatureVerificationAlgorithm for RsaVerify {
    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }
    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        self.sig
    }
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key = rsa_public(public_key)?;
        let digest = prehash(self.hash, message);
        let scheme_ok = match (self.pss, self.hash) {
            (false, 256) => {
                key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest, signature)
            }
            (false, 384) => {
                key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha384>(), &digest, signature)
            }
            (false, _) => key.verify(rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), &digest, signature),
            (true, 256) => key.verify(rsa::Pss::new::<sha2::Sha256>(), &digest, signature),
            (true, 384) => key.verify(rsa::Pss::new::<sha2::Sha384>(), &digest, signature),
            (true, _) => key.verify(rsa::Pss::new::<sha2::Sha512>(), &digest, signature),
        };
        scheme_ok.map_err(|_| InvalidSignature)
    }
}

static ECDSA_P256_SHA256: EcdsaVerify = EcdsaVerify {
    pk: alg_id::ECDSA_P256,
    sig: alg_id::ECDSA_SHA256,
    curve: 256,
    hash: 256,
};
#[cfg(feature = "rustcrypto-sha384")]
static ECDSA_P256_SHA384: EcdsaVerify = EcdsaVerify {
    pk: alg_id::ECDSA_P256,
    sig: alg_id::ECDSA_SHA384,
    curve: 256,
    hash: 384,
};
#[cfg(feature = "rustcrypto-p384")]
static ECDSA_P384_SHA384: EcdsaVerify = EcdsaVerify {
    pk: alg_id::ECDSA_P384,
    sig: alg_id::ECDSA_SHA384,
    curve: 384,
    hash: 384,
};
#[cfg(feature = "rustcrypto-p384")]
static ECDSA_P384_SHA256: EcdsaVerify = EcdsaVerify {
    pk: alg_id::ECDSA_P384,
    sig: alg_id::ECDSA_SHA256,
    curve: 384,
    hash: 256,
};
#[cfg(feature = "rustcrypto-ed25519")]
static ED25519: Ed25519Verify = Ed25519Verify;
#[cfg(feature = "rustcrypto-rsa")]
static RSA_PKCS1_SHA256: RsaVerify = RsaVerify {
    sig: alg_id::RSA_PKCS1_SHA256,
    pss: false,
    hash: 256,
};
#[cfg(feature = "rustcrypto-rsa")]
static RSA_PKCS1_SHA384: RsaVerify = RsaVerify {
    sig: alg_id::RSA_PKCS1_SHA384,
    pss: false,
    hash: 384,
};
#[cfg(feature = "rustcrypto-rsa")]
static RSA_PKCS1_SHA512: RsaVerify = RsaVerify {
    sig: alg_id::RSA_PKCS1_SHA512,
    pss: false,
    hash: 512,
};
#[cfg(feature = "rustcrypto-rsa")]
static RSA_PSS_SHA256: RsaVerify = RsaVerify {
    sig: alg_id::RSA_PSS_SHA256,
    pss: true,
    hash: 256,
};
#[cfg(feature = "rustcrypto-rsa")]
static RSA_PSS_SHA384: RsaVerify = RsaVerify {
    sig: alg_id::RSA_PSS_SHA384,
    pss: true,
    hash: 384,
};
#[cfg(feature = "rustcrypto-rsa")]
static RSA_PSS_SHA512: RsaVerify = RsaVerify {
    sig: alg_id::RSA_PSS_SHA512,
    pss: true,
    hash: 512,
};

static ALGORITHMS: crypto::WebPkiSupportedAlgorithms = crypto::WebPkiSupportedAlgorithms {
    all: &[
        &ECDSA_P256_SHA256,
        #[cfg(feature = "rustcrypto-sha384")]
        &ECDSA_P256_SHA384,
        #[cfg(feature = "rustcrypto-p384")]
        &ECDSA_P384_SHA384,
        #[cfg(feature = "rustcrypto-p384")]
        &ECDSA_P384_SHA256,
        #[cfg(feature = "rustcrypto-ed25519")]
        &ED25519,
        #[cfg(feature = "rustcrypto-rsa")]
        &RSA_PKCS1_SHA256,
        #[cfg(feature = "rustcrypto-rsa")]
        &RSA_PKCS1_SHA384,
        #[cfg(feature = "rustcrypto-rsa")]
        &RSA_PKCS1_SHA512,
        #[cfg(feature = "rustcrypto-rsa")]
        &RSA_PSS_SHA256,
        #[cfg(feature = "rustcrypto-rsa")]
        &RSA_PSS_SHA384,
        #[cfg(feature = "rustcrypto-rsa")]
        &RSA_PSS_SHA512,
    ],
    mapping: &[
        #[cfg(feature = "rustcrypto-p384")]
        (
            SignatureScheme::ECDSA_NISTP384_SHA384,
            &[&ECDSA_P384_SHA384, &ECDSA_P256_SHA384],
        ),
        #[cfg(feature = "rustcrypto-p384")]
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[&ECDSA_P256_SHA256, &ECDSA_P384_SHA256],
        ),
        #[cfg(not(feature = "rustcrypto-p384"))]
        (
            SignatureScheme::ECDSA_NISTP256_SHA256,
            &[&ECDSA_P256_SHA256],
        ),
        #[cfg(feature = "rustcrypto-ed25519")]
        (SignatureScheme::ED25519, &[&ED25519]),
        #[cfg(feature = "rustcrypto-rsa")]
        (SignatureScheme::RSA_PSS_SHA512, &[&RSA_PSS_SHA512]),
        #[cfg(feature = "rustcrypto-rsa")]
        (SignatureScheme::RSA_PSS_SHA384, &[&RSA_PSS_SHA384]),
        #[cfg(feature = "rustcrypto-rsa")]
        (SignatureScheme::RSA_PSS_SHA256, &[&RSA_PSS_SHA256]),
        #[cfg(feature = "rustcrypto-rsa")]
        (SignatureScheme::RSA_PKCS1_SHA512, &[&RSA_PKCS1_SHA512]),
        #[cfg(feature = "rustcrypto-rsa")]
        (SignatureScheme::RSA_PKCS1_SHA384, &[&RSA_PKCS1_SHA384]),
        #[cfg(feature = "rustcrypto-rsa")]
        (SignatureScheme::RSA_PKCS1_SHA256, &[&RSA_PKCS1_SHA256]),
    ],
};

// ---------------------------------------------------------------- signing keys

impl crypto::KeyProvider for Rand {
    fn load_private_key(&self, key: PrivateKeyDer<'static>) -> Result<Arc<dyn SigningKey>, Error> {
        load_key(key, &self.0)
    }
}

fn bad_key() -> Error {
    Error::General(
        "unsupported or malformed private key for the rustcrypto backend (as built: \
         ECDSA P-256 always; P-384, Ed25519 and RSA only with the rustcrypto-p384, \
         rustcrypto-ed25519 and rustcrypto-rsa features)"
            .into(),
    )
}

fn load_key(
    key: PrivateKeyDer<'static>,
    rand: &Arc<dyn RandomSource>,
) -> Result<Arc<dyn SigningKey>, Error> {
    use p256::pkcs8::DecodePrivateKey;
    #[cfg(feature = "rustcrypto-rsa")]
    use rsa::pkcs1::DecodeRsaPrivateKey;
    #[cfg(not(feature = "rustcrypto-rsa"))]
    let _ = rand;
    match &key {
        PrivateKeyDer::Pkcs8(k) => {
            let der = k.secret_pkcs8_der();
            if let Ok(sk) = p256::ecdsa::SigningKey::from_pkcs8_der(der) {
                return Ok(Arc::new(Key::P256(sk)));
            }
            #[cfg(feature = "rustcrypto-p384")]
            if let Ok(sk) = p384::ecdsa::SigningKey::from_pkcs8_der(der) {
                return Ok(Arc::new(Key::P384(sk)));
            }
            #[cfg(feature = "rustcrypto-ed25519")]
            if let Ok(sk) = ed25519_dalek::SigningKey::from_pkcs8_der(der) {
                return Ok(Arc::new(Key::Ed25519(sk)));
            }
            #[cfg(feature = "rustcrypto-rsa")]
            if let Ok(sk) = rsa::RsaPrivateKey::from_pkcs8_der(der) {
                return Ok(Arc::new(Key::Rsa(Box::new(sk), rand.clone())));
            }
            Err(bad_key())
        }
        PrivateKeyDer::Sec1(k) => {
            let der = k.secret_sec1_der();
            if let Ok(sk) = p256::SecretKey::from_sec1_der(der) {
                return Ok(Arc::new(Key::P256(sk.into())));
            }
            #[cfg(feature = "rustcrypto-p384")]
            if let Ok(sk) = p384::SecretKey::from_sec1_der(der) {
                return Ok(Arc::new(Key::P384(sk.into())));
            }
            Err(bad_key())
        }
        #[cfg(feature = "rustcrypto-rsa")]
        PrivateKeyDer::Pkcs1(k) => rsa::RsaPrivateKey::from_pkcs1_der(k.secret_pkcs1_der())
            .map(|sk| Arc::new(Key::Rsa(Box::new(sk), rand.clone())) as Arc<dyn SigningKey>)
            .map_err(|_| bad_key()),
        _ => Err(bad_key()),
    }
}

enum Key {
    P256(p256::ecdsa::SigningKey),
    #[cfg(feature = "rustcrypto-p384")]
    P384(p384::ecdsa::SigningKey),
    #[cfg(feature = "rustcrypto-ed25519")]
    Ed25519(ed25519_dalek::SigningKey),
    #[cfg(feature = "rustcrypto-rsa")]
    Rsa(Box<rsa::RsaPrivateKey>, Arc<dyn RandomSource>),
}

impl core::fmt::Debug for Key {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Key::P256(_) => "Key::P256",
            #[cfg(feature = "rustcrypto-p384")]
            Key::P384(_) => "Key::P384",
            #[cfg(feature = "rustcrypto-ed25519")]
            Key::Ed25519(_) => "Key::Ed25519",
            #[cfg(feature = "rustcrypto-rsa")]
            Key::Rsa(..) => "Key::Rsa",
        })
    }
}

struct KeySigner {
    key: Arc<Key>,
    scheme: SignatureScheme,
}

impl core::fmt::Debug for KeySigner {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeySigner")
            .field("scheme", &self.scheme)
            .finish()
    }
}

impl SigningKey for Key {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn Signer>> {
        let mine: &[SignatureScheme] = match self {
            Key::P256(_) => &[SignatureScheme::ECDSA_NISTP256_SHA256],
            #[cfg(feature = "rustcrypto-p384")]
            Key::P384(_) => &[SignatureScheme::ECDSA_NISTP384_SHA384],
            #[cfg(feature = "rustcrypto-ed25519")]
            Key::Ed25519(_) => &[SignatureScheme::ED25519],
            #[cfg(feature = "rustcrypto-rsa")]
            Key::Rsa(..) => &[
                SignatureScheme::RSA_PSS_SHA256,
                SignatureScheme::RSA_PSS_SHA384,
                SignatureScheme::RSA_PSS_SHA512,
                SignatureScheme::RSA_PKCS1_SHA256,
                SignatureScheme::RSA_PKCS1_SHA384,
                SignatureScheme::RSA_PKCS1_SHA512,
            ],
        };
        let scheme = mine.iter().find(|s| offered.contains(s))?;
        let key = match self {
            Key::P256(k) => Key::P256(k.clone()),
            #[cfg(feature = "rustcrypto-p384")]
            Key::P384(k) => Key::P384(k.clone()),
            #[cfg(feature = "rustcrypto-ed25519")]
            Key::Ed25519(k) => Key::Ed25519(k.clone()),
            #[cfg(feature = "rustcrypto-rsa")]
            Key::Rsa(k, r) => Key::Rsa(k.clone(), r.clone()),
        };
        Some(Box::new(KeySigner {
            key: Arc::new(key),
            scheme: *scheme,
        }))
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        use p256::pkcs8::EncodePublicKey;
        let der = match self {
            Key::P256(k) => p256::PublicKey::from(k.verifying_key()).to_public_key_der(),
            #[cfg(feature = "rustcrypto-p384")]
            Key::P384(k) => p384::PublicKey::from(k.verifying_key()).to_public_key_der(),
            #[cfg(feature = "rustcrypto-ed25519")]
            Key::Ed25519(k) => k.verifying_key().to_public_key_der(),
            #[cfg(feature = "rustcrypto-rsa")]
            Key::Rsa(k, _) => k.to_public_key().to_public_key_der(),
        };
        Some(SubjectPublicKeyInfoDer::from(der.ok()?.into_vec()))
    }

    fn algorithm(&self) -> SignatureAlgorithm {
        match self {
            Key::P256(_) => SignatureAlgorithm::ECDSA,
            #[cfg(feature = "rustcrypto-p384")]
            Key::P384(_) => SignatureAlgorithm::ECDSA,
            #[cfg(feature = "rustcrypto-ed25519")]
            Key::Ed25519(_) => SignatureAlgorithm::ED25519,
            #[cfg(feature = "rustcrypto-rsa")]
            Key::Rsa(..) => SignatureAlgorithm::RSA,
        }
    }
}

impl Signer for KeySigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, Error> {
        use signature::{SignatureEncoding, Signer as _};
        let fail = || Error::General("signing failed".into());
        match &*self.key {
            Key::P256(k) => {
                let sig: p256::ecdsa::Signature = k.try_sign(message).map_err(|_| fail())?;
                Ok(sig.to_der().to_vec())
            }
            #[cfg(feature = "rustcrypto-p384")]
            Key::P384(k) => {
                let sig: p384::ecdsa::Signature = k.try_sign(message).map_err(|_| fail())?;
                Ok(sig.to_der().to_vec())
            }
            #[cfg(feature = "rustcrypto-ed25519")]
            Key::Ed25519(k) => Ok(k.sign(message).to_vec()),
            #[cfg(feature = "rustcrypto-rsa")]
            Key::Rsa(k, rand) => {
                let (hash, pss) = match self.scheme {
                    SignatureScheme::RSA_PSS_SHA256 => (256, true),
                    SignatureScheme::RSA_PSS_SHA384 => (384, true),
                    SignatureScheme::RSA_PSS_SHA512 => (512, true),
                    SignatureScheme::RSA_PKCS1_SHA256 => (256, false),
                    SignatureScheme::RSA_PKCS1_SHA384 => (384, false),
                    _ => (512, false),
                };
                let digest = prehash(hash, message);
                let mut rng = RngAdapter(&**rand);
                // Refuse to sign if the RNG is broken (PSS salts and blinding must be random).
                let mut probe = [0u8; 16];
                rand.fill(&mut probe)
                    .map_err(|_| Error::FailedToGetRandomBytes)?;
                let r = match (pss, hash) {
                    (true, 256) => {
                        k.sign_with_rng(&mut rng, rsa::Pss::new::<sha2::Sha256>(), &digest)
                    }
                    (true, 384) => {
                        k.sign_with_rng(&mut rng, rsa::Pss::new::<sha2::Sha384>(), &digest)
                    }
                    (true, _) => {
                        k.sign_with_rng(&mut rng, rsa::Pss::new::<sha2::Sha512>(), &digest)
                    }
                    (false, 256) => {
                        k.sign_with_rng(&mut rng, rsa::Pkcs1v15Sign::new::<sha2::Sha256>(), &digest)
                    }
                    (false, 384) => {
                        k.sign_with_rng(&mut rng, rsa::Pkcs1v15Sign::new::<sha2::Sha384>(), &digest)
                    }
                    (false, _) => {
                        k.sign_with_rng(&mut rng, rsa::Pkcs1v15Sign::new::<sha2::Sha512>(), &digest)
                    }
                };
                r.map_err(|_| fail())
            }
        }
    }

    fn scheme(&self) -> SignatureScheme {
        self.scheme
    }
}
