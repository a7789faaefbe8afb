//! Encryption and authentication of everything stored in memcached
//! (`sessionEncryptionKeys`): XChaCha20-Poly1305 from RustCrypto.
//!
//! Keys are 32 random bytes each, written in base64; the first key seals,
//! every listed key opens, so a key is rotated by putting the new key first
//! and removing the old one once every session sealed with it has expired
//! (at most the memcached TTL: 2 × `maxInactiveInterval` plus margin).
//!
//! A sealed blob is `magic (2) | key fingerprint (4) | nonce (24) |
//! ciphertext + tag`, with the memcached key as associated data: a blob
//! copied under another key, modified in any bit, sealed with an unknown
//! key, or written by a foreign application fails to open and is treated as
//! "no session". Nonces are random (24 bytes: no practical collision risk).

use std::fmt;

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE};
use chacha20poly1305::XChaCha20Poly1305;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::error::ConfigError;

const MAGIC: [u8; 2] = [0xA5, 0x45];
const FINGERPRINT_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const HEADER_LEN: usize = MAGIC.len() + FINGERPRINT_LEN + NONCE_LEN;
/// More keys than this is a configuration mistake, not a rotation.
const MAX_KEYS: usize = 8;

struct SealKey {
    cipher: XChaCha20Poly1305,
    fingerprint: [u8; FINGERPRINT_LEN],
}

/// The configured encryption keys.
pub(crate) struct Sealer {
    keys: Vec<SealKey>,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Sealer({} keys, redacted)", self.keys.len())
    }
}

/// HMAC-SHA256 of `label` under `key`: independent subkeys from one secret.
pub(crate) fn derive(key: &[u8], label: &str) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as hmac::KeyInit>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(label.as_bytes());
    mac.finalize().into_bytes().into()
}

/// Decodes standard or URL-safe base64, with or without padding.
pub(crate) fn decode_base64(text: &str) -> Option<Vec<u8>> {
    let padded = match text.len() % 4 {
        2 => format!("{text}=="),
        3 => format!("{text}="),
        _ => text.to_owned(),
    };
    STANDARD.decode(&padded).or_else(|_| URL_SAFE.decode(&padded)).ok()
}

impl Sealer {
    /// Parses `sessionEncryptionKeys`: base64 keys of 32 bytes, separated
    /// by commas or whitespace. The error never quotes key material.
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigError> {
        const SETTING: &str = "sessionEncryptionKeys";
        let mut keys = Vec::new();
        for (position, token) in text
            .split(|c: char| c == ',' || c.is_whitespace())
            .filter(|t| !t.is_empty())
            .enumerate()
        {
            let bytes = decode_base64(token)
                .filter(|b| b.len() == 32)
                .ok_or_else(|| ConfigError::new(SETTING, format!("key #{} is not 32 bytes of base64", position + 1)))?;
            let fingerprint = derive(&bytes, "memcached-sessions/v1/fingerprint");
            let cipher_key = derive(&bytes, "memcached-sessions/v1/seal");
            keys.push(SealKey {
                cipher: XChaCha20Poly1305::new(&cipher_key.into()),
                fingerprint: fingerprint[..FINGERPRINT_LEN].try_into().expect("4 of 32 bytes"),
            });
        }
        if keys.is_empty() {
            return Err(ConfigError::new(SETTING, "no key given"));
        }
        if keys.len() > MAX_KEYS {
            return Err(ConfigError::new(
                SETTING,
                format!("{} keys given; at most {MAX_KEYS}", keys.len()),
            ));
        }
        Ok(Self { keys })
    }

    /// Seals `plaintext` stored under `storage_key` with the first key.
    pub(crate) fn seal(&self, storage_key: &str, plaintext: &[u8]) -> Vec<u8> {
        let key = &self.keys[0];
        let mut nonce = [0u8; NONCE_LEN];
        getrandom::fill(&mut nonce).expect("the operating system's random number generator failed");
        let payload = Payload {
            msg: plaintext,
            aad: storage_key.as_bytes(),
        };
        let ciphertext = key
            .cipher
            .encrypt(&nonce.into(), payload)
            .expect("XChaCha20-Poly1305 encrypts any message below 256 GiB");
        let mut blob = Vec::with_capacity(HEADER_LEN + ciphertext.len());
        blob.extend_from_slice(&MAGIC);
        blob.extend_from_slice(&key.fingerprint);
        blob.extend_from_slice(&nonce);
        blob.extend_from_slice(&ciphertext);
        blob
    }

    /// Opens a blob read from `storage_key`; `None` unless it was sealed by
    /// one of the keys, for this key, and not modified.
    pub(crate) fn open(&self, storage_key: &str, blob: &[u8]) -> Option<Vec<u8>> {
        if blob.len() < HEADER_LEN || blob[..2] != MAGIC {
            return None;
        }
        let fingerprint = &blob[2..2 + FINGERPRINT_LEN];
        let nonce: [u8; NONCE_LEN] = blob[2 + FINGERPRINT_LEN..HEADER_LEN].try_into().ok()?;
        let key = self.keys.iter().find(|k| k.fingerprint == fingerprint)?;
        let payload = Payload {
            msg: &blob[HEADER_LEN..],
            aad: storage_key.as_bytes(),
        };
        key.cipher.decrypt(&nonce.into(), payload).ok()
    }
}

#[cfg(test)]
mod tests {
    use base64::engine::general_purpose::STANDARD_NO_PAD;

    use super::*;

    fn key(byte: u8) -> String {
        STANDARD.encode([byte; 32])
    }

    #[test]
    fn seals_and_opens_bound_to_the_storage_key() {
        let sealer = Sealer::parse(&key(1)).unwrap();
        let blob = sealer.seal("k1", b"session bytes");
        assert!(
            !blob.windows(7).any(|w| w == b"session"),
            "ciphertext hides the plaintext"
        );
        assert_eq!(sealer.open("k1", &blob).as_deref(), Some(&b"session bytes"[..]));
        assert_eq!(sealer.open("k2", &blob), None, "moved under another key");
        for i in 0..blob.len() {
            let mut tampered = blob.clone();
            tampered[i] ^= 1;
            assert_eq!(sealer.open("k1", &tampered), None, "bit {i} flipped");
        }
        assert_eq!(sealer.open("k1", &blob[..blob.len() - 1]), None);
        assert_eq!(sealer.open("k1", b"plain bytes from another app"), None);
        assert_ne!(
            sealer.seal("k1", b"x"),
            sealer.seal("k1", b"x"),
            "fresh nonce every time"
        );
    }

    #[test]
    fn rotation_first_key_seals_every_key_opens() {
        let old = Sealer::parse(&key(1)).unwrap();
        let rotated = Sealer::parse(&format!("{}, {}", key(2), key(1))).unwrap();
        let sealed_by_old = old.seal("k", b"v");
        assert_eq!(rotated.open("k", &sealed_by_old).as_deref(), Some(&b"v"[..]));
        let sealed_by_new = rotated.seal("k", b"v");
        assert_eq!(
            old.open("k", &sealed_by_new),
            None,
            "the old set does not know the new key"
        );
        let only_new = Sealer::parse(&key(2)).unwrap();
        assert_eq!(
            only_new.open("k", &sealed_by_old),
            None,
            "a removed key no longer opens"
        );
    }

    #[test]
    fn key_parsing_accepts_base64_variants_and_never_echoes_keys() {
        assert!(Sealer::parse(&STANDARD_NO_PAD.encode([3; 32])).is_ok());
        assert!(Sealer::parse(&URL_SAFE.encode([0xfb; 32])).is_ok());
        let err = Sealer::parse("c2hvcnQ=").unwrap_err().to_string();
        assert_eq!(err, "sessionEncryptionKeys: key #1 is not 32 bytes of base64");
        assert!(Sealer::parse("").is_err());
        let nine = (0..9).map(key).collect::<Vec<_>>().join(",");
        assert!(Sealer::parse(&nine).is_err());
    }
}

/// Keyed hash of session ids for memcached keys (`storageKeySecret`), so a
/// dump of memcached (or a look at its traffic) yields no usable cookie
/// value. Only the random part is hashed: the node id and route stay
/// visible, since routing needs them.
pub(crate) struct StorageKeyHasher {
    key: [u8; 32],
}

impl fmt::Debug for StorageKeyHasher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("StorageKeyHasher(redacted)")
    }
}

impl StorageKeyHasher {
    /// Parses `storageKeySecret`: at least 16 bytes of base64.
    pub(crate) fn parse(text: &str) -> Result<Self, ConfigError> {
        let bytes = decode_base64(text.trim())
            .filter(|b| b.len() >= 16)
            .ok_or_else(|| ConfigError::new("storageKeySecret", "the secret is not at least 16 bytes of base64"))?;
        Ok(Self {
            key: derive(&bytes, "memcached-sessions/v1/storage-key"),
        })
    }

    /// The hashed form of a session id's random part (32 base64url chars).
    pub(crate) fn hash(&self, random_part: &str) -> String {
        use base64::engine::general_purpose::URL_SAFE_NO_PAD;
        let digest = derive(&self.key, random_part);
        let mut hashed = URL_SAFE_NO_PAD.encode(digest);
        hashed.truncate(32);
        hashed
    }
}

#[cfg(test)]
mod hasher_tests {
    use super::*;

    #[test]
    fn hashes_are_stable_keyed_and_key_safe() {
        let a = StorageKeyHasher::parse(&STANDARD.encode([1u8; 16])).unwrap();
        let b = StorageKeyHasher::parse(&STANDARD.encode([2u8; 16])).unwrap();
        let h = a.hash("abc");
        assert_eq!(h, a.hash("abc"));
        assert_ne!(h, b.hash("abc"));
        assert_ne!(h, a.hash("abd"));
        assert_eq!(h.len(), 32);
        assert!(h.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
        assert!(StorageKeyHasher::parse("c2hvcnQ=").is_err());
    }

    proptest::proptest! {
        #[test]
        fn opening_any_bytes_never_panics_nor_succeeds(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..256)) {
            let sealer = Sealer::parse(&STANDARD.encode([5u8; 32])).unwrap();
            proptest::prop_assert_eq!(sealer.open("k", &bytes), None);
        }
    }
}
