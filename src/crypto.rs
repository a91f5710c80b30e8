//! Encryption at rest: keys, and the AEAD that seals frames and blobs.
//!
//! Sealed form: `[key id: 4][nonce: 24][XChaCha20-Poly1305 ciphertext and tag]`. The associated
//! data binds each ciphertext to its place (the store's id, and the execution and sequence of a
//! frame or the address of a blob), so bytes copied elsewhere fail to open instead of loading
//! as someone else's state. Nonces are random (192 bits: no practical collision risk).
//!
//! Several keys may be configured: the newest seals, any of them opens (by the key id in the
//! sealed bytes). Chunk addresses of an encrypted store are blake3 keyed hashes under a key
//! derived from the sealing key, so stored addresses do not reveal whether a guessed plaintext
//! is present.
//!
//! `StoreCipher` is the codec's sealing stage ([`crate::codec::seal::Seal`]) for an encrypted
//! store: the codec decides where sealed bytes go, this module how they are sealed.

use std::fmt;

use chacha20poly1305::aead::{Aead, Generate, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::codec::seal::Seal;
use crate::error::{Error, Result};
use crate::hash::{self, BlobHash};

const KEY_ID_LEN: usize = 4;
const NONCE_LEN: usize = 24;
const TAG_LEN: usize = 16;

/// A 256-bit master key. Never printed: `Debug` shows only its [`KeyId`]; wiped from memory
/// when dropped.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct Key {
    bytes: [u8; 32],
}

impl Key {
    /// A key from 32 bytes.
    pub fn from_bytes(bytes: [u8; 32]) -> Key {
        Key { bytes }
    }

    /// A key from 64 hex digits (as `ckpt keygen` prints). Errors never repeat the text.
    pub fn from_hex(text: &str) -> Result<Key> {
        let text = text.trim();
        let refuse = |why: &str| {
            Error::InvalidInput(format!(
                "an encryption key must be 64 hex digits (32 bytes); {why}"
            ))
        };
        let mut bytes = [0u8; 32];
        match hash::decode_hex_into(text, &mut bytes) {
            Ok(()) => Ok(Key { bytes }),
            Err(e) => {
                // Part of the key may have been decoded before the error.
                bytes.zeroize();
                Err(match e {
                    hash::HexError::Length { found, .. } => {
                        refuse(&format!("got {found} characters"))
                    }
                    hash::HexError::Digit => refuse("found a character that is not a hex digit"),
                })
            }
        }
    }

    /// A new random key.
    pub fn generate() -> Key {
        let key = chacha20poly1305::Key::generate();
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(key.as_slice());
        Key { bytes }
    }

    /// The key as 64 hex digits (to store it somewhere safe).
    pub fn to_hex(&self) -> String {
        hash::hex(&self.bytes)
    }

    /// The key's id: a fingerprint that names it in sealed bytes and in messages.
    pub fn id(&self) -> KeyId {
        let derived = blake3::derive_key("ckpt 2026-11 key id", &self.bytes);
        let mut id = [0u8; KEY_ID_LEN];
        id.copy_from_slice(&derived[..KEY_ID_LEN]);
        KeyId(id)
    }
}

impl fmt::Debug for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Key {{ id: {}, .. }}", self.id())
    }
}

/// A key's fingerprint (8 hex digits), as found in every sealed frame and blob.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct KeyId([u8; KEY_ID_LEN]);

impl fmt::Display for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for KeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyId({self})")
    }
}

/// The keys of a store: the first seals, all open.
#[derive(Clone)]
pub(crate) struct Keyring {
    keys: Vec<(KeyId, XChaCha20Poly1305)>,
    address_key: [u8; 32],
}

impl fmt::Debug for Keyring {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ids: Vec<String> = self.keys.iter().map(|(id, _)| id.to_string()).collect();
        write!(f, "Keyring {{ keys: {ids:?} }}")
    }
}

impl Drop for Keyring {
    fn drop(&mut self) {
        self.address_key.zeroize();
    }
}

impl Keyring {
    /// A keyring sealing with `keys[0]`; `None` when `keys` is empty.
    pub(crate) fn new(keys: &[Key]) -> Option<Keyring> {
        let newest = keys.first()?;
        Some(Keyring {
            keys: keys
                .iter()
                .map(|k| (k.id(), XChaCha20Poly1305::new(&k.bytes.into())))
                .collect(),
            address_key: blake3::derive_key("ckpt 2026-11 chunk address", &newest.bytes),
        })
    }

    /// The id of the key that seals.
    pub(crate) fn sealing_id(&self) -> KeyId {
        self.keys[0].0
    }

    /// The key chunk addresses are keyed hashes under.
    pub(crate) fn address_key(&self) -> &[u8; 32] {
        &self.address_key
    }

    /// Seals `plaintext` with the newest key, bound to `aad`.
    pub(crate) fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>> {
        let (id, cipher) = &self.keys[0];
        let nonce = XNonce::generate();
        let sealed = cipher
            .encrypt(
                &nonce,
                Payload {
                    msg: plaintext,
                    aad,
                },
            )
            .map_err(|_| Error::InvalidInput("encryption failed".into()))?;
        let mut out = Vec::with_capacity(KEY_ID_LEN + NONCE_LEN + sealed.len());
        out.extend_from_slice(&id.0);
        out.extend_from_slice(nonce.as_slice());
        out.extend_from_slice(&sealed);
        Ok(out)
    }

    /// Opens bytes [`Keyring::seal`] made with `aad`; `location` names them in errors.
    pub(crate) fn open(
        &self,
        aad: &[u8],
        sealed: &[u8],
        location: &dyn Fn() -> String,
    ) -> Result<Vec<u8>> {
        if sealed.len() < KEY_ID_LEN + NONCE_LEN + TAG_LEN {
            return Err(Error::Decrypt {
                location: location(),
                key_id: "?".into(),
                reason: format!("{} bytes is shorter than sealed data", sealed.len()),
            });
        }
        let (id, rest) = sealed.split_at(KEY_ID_LEN);
        let (nonce, ciphertext) = rest.split_at(NONCE_LEN);
        let mut key_id = [0u8; KEY_ID_LEN];
        key_id.copy_from_slice(id);
        let key_id = KeyId(key_id);
        let Some((_, cipher)) = self.keys.iter().find(|(k, _)| *k == key_id) else {
            return Err(Error::Decrypt {
                location: location(),
                key_id: key_id.to_string(),
                reason: format!(
                    "sealed with key {key_id}, which is not among the configured keys ({}); \
                     add it with the store's decryption keys",
                    self.ids()
                ),
            });
        };
        let nonce = XNonce::try_from(nonce).map_err(|_| Error::Decrypt {
            location: location(),
            key_id: key_id.to_string(),
            reason: "malformed nonce".into(),
        })?;
        cipher
            .decrypt(
                &nonce,
                Payload {
                    msg: ciphertext,
                    aad,
                },
            )
            .map_err(|_| Error::Decrypt {
                location: location(),
                key_id: key_id.to_string(),
                reason: "authentication failed: the bytes were changed, or belong to another \
                         place or store"
                    .into(),
            })
    }

    fn ids(&self) -> String {
        let ids: Vec<String> = self.keys.iter().map(|(id, _)| id.to_string()).collect();
        ids.join(", ")
    }
}

/// A store's keyring and id: seals and opens its frames and blobs in place.
#[derive(Debug, Clone)]
pub(crate) struct StoreCipher {
    ring: Keyring,
    store_id: [u8; 16],
}

impl StoreCipher {
    pub(crate) fn new(ring: Keyring, store_id: [u8; 16]) -> Self {
        StoreCipher { ring, store_id }
    }

    /// The id of the store this cipher seals for.
    pub(crate) fn store_id(&self) -> [u8; 16] {
        self.store_id
    }

    /// A cipher with the same keys for another store (`store_id`): opens what that store
    /// sealed, when one of these keys sealed it.
    pub(crate) fn for_store(&self, store_id: [u8; 16]) -> StoreCipher {
        StoreCipher::new(self.ring.clone(), store_id)
    }

    fn frame_aad(&self, log: &str, seq: u64) -> Vec<u8> {
        let mut aad = Vec::with_capacity(40 + log.len());
        aad.extend_from_slice(b"ckpt frame");
        aad.extend_from_slice(&self.store_id);
        aad.extend_from_slice(&(log.len() as u32).to_le_bytes());
        aad.extend_from_slice(log.as_bytes());
        aad.extend_from_slice(&seq.to_le_bytes());
        aad
    }

    fn blob_aad(&self, hash: &[u8; 32]) -> Vec<u8> {
        let mut aad = Vec::with_capacity(58);
        aad.extend_from_slice(b"ckpt blob");
        aad.extend_from_slice(&self.store_id);
        aad.extend_from_slice(hash);
        aad
    }

    /// The id of the key that seals.
    pub(crate) fn sealing_id(&self) -> KeyId {
        self.ring.sealing_id()
    }
}

/// The sealing stage of an encrypted store's codec.
impl Seal for StoreCipher {
    /// A blake3 keyed hash under the key derived for addresses from the newest key.
    fn address(&self, content: &[u8]) -> BlobHash {
        hash::keyed_address(self.ring.address_key(), content)
    }

    fn seal_frame(&self, log: &str, seq: u64, inner: &[u8]) -> Result<Vec<u8>> {
        self.ring.seal(&self.frame_aad(log, seq), inner)
    }

    fn open_frame(&self, log: &str, seq: u64, sealed: &[u8]) -> Result<Vec<u8>> {
        let location = || format!("execution {log:?} seq {seq}");
        self.ring.open(&self.frame_aad(log, seq), sealed, &location)
    }

    fn seal_blob(&self, hash: &BlobHash, stored: &[u8]) -> Result<Vec<u8>> {
        self.ring.seal(&self.blob_aad(hash), stored)
    }

    fn open_blob(&self, hash: &BlobHash, sealed: &[u8]) -> Result<Vec<u8>> {
        let location = || format!("blob {}", hash::hex(hash));
        self.ring.open(&self.blob_aad(hash), sealed, &location)
    }

    fn sealing_id(&self) -> String {
        self.ring.sealing_id().to_string()
    }

    /// Whether `sealed` (as [`Keyring::seal`] makes it) is sealed with the newest key.
    fn sealed_with_newest(&self, sealed: &[u8]) -> bool {
        sealed.get(..KEY_ID_LEN) == Some(&self.ring.sealing_id().0[..])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seals_open_only_in_place_and_with_a_known_key() {
        let k1 = Key::generate();
        let k2 = Key::generate();
        let ring = Keyring::new(std::slice::from_ref(&k1)).unwrap();
        let sealed = ring.seal(b"here", b"secret state").unwrap();
        let loc = || "test".to_string();
        assert_eq!(ring.open(b"here", &sealed, &loc).unwrap(), b"secret state");
        assert!(matches!(
            ring.open(b"there", &sealed, &loc),
            Err(Error::Decrypt { .. })
        ));
        let mut flipped = sealed.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        assert!(ring.open(b"here", &flipped, &loc).is_err());
        assert!(ring.open(b"here", &sealed[..20], &loc).is_err());
        let other = Keyring::new(std::slice::from_ref(&k2)).unwrap();
        let e = other.open(b"here", &sealed, &loc).unwrap_err().to_string();
        assert!(e.contains(&k1.id().to_string()), "{e}");
        // Rotation: the newest seals, the older still opens.
        let rotated = Keyring::new(&[k2, k1]).unwrap();
        assert_eq!(
            rotated.open(b"here", &sealed, &loc).unwrap(),
            b"secret state"
        );
    }

    #[test]
    fn keys_never_print_and_parse_from_hex() {
        let k = Key::generate();
        let hex = k.to_hex();
        assert!(!format!("{k:?}").contains(&hex));
        assert_eq!(Key::from_hex(&hex).unwrap().id(), k.id());
        let e = Key::from_hex(&format!("{}zz", &hex[..62]))
            .unwrap_err()
            .to_string();
        assert!(!e.contains(&hex[..62]), "{e}");
        assert!(Key::from_hex("abc").is_err());
    }
}
