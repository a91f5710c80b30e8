//! The base every layer shares: blob addresses ([`BlobHash`]), how they are computed, and hex.
//!
//! This module depends on nothing else in the crate, so the codec, the cipher, the backends and
//! the store can all name an address without depending on each other.
//!
//! Every content address in ckpt comes from [`address`] (a plaintext store) or
//! [`keyed_address`] (an encrypted store, whose addresses must not reveal whether a guessed
//! plaintext is present); the codec chooses between them through its sealing stage
//! (`codec::seal`), so no other module hashes content into addresses.

/// The address of a blob: the blake3 hash of its content (keyed in an encrypted store).
pub type BlobHash = [u8; 32];

/// The plain content address of `content`: its blake3 hash.
pub fn address(content: &[u8]) -> BlobHash {
    *blake3::hash(content).as_bytes()
}

/// The content address of `content` in an encrypted store: its blake3 keyed hash under `key`
/// (a key derived for addresses only, see `crypto`).
pub fn keyed_address(key: &[u8; 32], content: &[u8]) -> BlobHash {
    *blake3::keyed_hash(key, content).as_bytes()
}

/// Lowercase hex of `bytes` (an address, a storage key), for messages and keys.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(2 * bytes.len());
    for b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    out
}

/// Why hex text did not decode ([`decode_hex_into`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HexError {
    /// The text is not twice as long as the bytes it must fill.
    Length {
        /// Hex digits expected.
        expected: usize,
        /// Characters found.
        found: usize,
    },
    /// A character is not a hex digit.
    Digit,
}

/// Decodes `text` (exactly `2 * out.len()` hex digits, either case) into `out`.
///
/// On error `out` may hold part of the input: a caller decoding a secret wipes it. Errors never
/// repeat the text (it may be a key).
pub fn decode_hex_into(text: &str, out: &mut [u8]) -> Result<(), HexError> {
    if text.len() != 2 * out.len() {
        return Err(HexError::Length {
            expected: 2 * out.len(),
            found: text.len(),
        });
    }
    let digit = |c: u8| (c as char).to_digit(16);
    for (slot, pair) in out.iter_mut().zip(text.as_bytes().chunks(2)) {
        match (digit(pair[0]), digit(pair[1])) {
            (Some(h), Some(l)) => *slot = (h * 16 + l) as u8,
            _ => return Err(HexError::Digit),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_round_trips_and_refuses_what_is_not_hex() {
        let bytes = [0x00, 0x0f, 0xa5, 0xff];
        assert_eq!(hex(&bytes), "000fa5ff");
        let mut out = [0u8; 4];
        decode_hex_into("000FA5ff", &mut out).unwrap();
        assert_eq!(out, bytes);
        assert_eq!(
            decode_hex_into("000fa5f", &mut out),
            Err(HexError::Length {
                expected: 8,
                found: 7
            })
        );
        assert_eq!(decode_hex_into("000fa5fg", &mut out), Err(HexError::Digit));
        // A multi-byte character is refused, never split.
        assert!(decode_hex_into("000fa5é", &mut out).is_err());
    }

    #[test]
    fn keyed_addresses_differ_from_plain_ones() {
        let key = [7u8; 32];
        assert_eq!(address(b"x"), address(b"x"));
        assert_ne!(address(b"x"), keyed_address(&key, b"x"));
        assert_eq!(keyed_address(&key, b"x"), keyed_address(&key, b"x"));
    }
}
