//! Content-addressed blobs: their address, their stored form, and verification on read.
//!
//! Stored form: `[format 1][codec: 0 raw | 1 zstd][uncompressed length: u32 LE][payload]`. The
//! address is computed over the uncompressed content, so the same content has one address
//! whatever its compression, and every read is checked against it.
//!
//! The free functions are the plaintext forms; a [`BlobCodec`] addresses, stores and reads as
//! one store does, through its sealing stage when it is encrypted (`[2][sealed stored form]`).

use std::cell::RefCell;
use std::io::Read;
use std::sync::Arc;

use super::seal::Seal;
use crate::error::{Error, Result};
/// Hex form of a hash, for messages ([`crate::hash::hex`], re-exported where it was first
/// defined).
pub use crate::hash::hex;
use crate::hash::BlobHash;

const FORMAT: u8 = 1;
/// A sealed blob ([`Seal`]): `[2][sealed stored form]`.
const FORMAT_SEALED: u8 = 2;
const CODEC_RAW: u8 = 0;
const CODEC_ZSTD: u8 = 1;
const HEADER_LEN: usize = 6;
/// Content shorter than this is stored raw: zstd's frame overhead would eat the gain.
const COMPRESS_MIN: usize = 64;
/// Largest content a blob may hold.
pub const MAX_BLOB_LEN: usize = 1 << 30;
/// zstd level: fast, and most of the gain on text.
pub(crate) const ZSTD_LEVEL: i32 = 3;

/// The plain content address of `content` (as a plaintext store computes it).
pub fn address(content: &[u8]) -> BlobHash {
    crate::hash::address(content)
}

/// How one store addresses, stores and reads its blobs: plainly, or through a sealing stage
/// ([`Seal`]) in an encrypted store. Every chunk address in a store is computed by its
/// `BlobCodec`, so that an encrypted store uses keyed addresses everywhere. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct BlobCodec {
    seal: Option<Arc<dyn Seal>>,
}

impl BlobCodec {
    /// The codec of a plaintext store.
    pub const fn plain() -> Self {
        BlobCodec { seal: None }
    }

    /// The codec of an encrypted store sealing with `seal`.
    pub fn sealed(seal: Arc<dyn Seal>) -> Self {
        BlobCodec { seal: Some(seal) }
    }

    /// The address of `content` in this store: a keyed hash when the store is encrypted, so
    /// that addresses reveal nothing about contents to whoever lacks the key.
    pub fn address(&self, content: &[u8]) -> BlobHash {
        match &self.seal {
            Some(s) => s.address(content),
            None => address(content),
        }
    }

    /// The stored form of `content` ([`encode`]), sealed under `hash` when the store is
    /// encrypted.
    pub fn encode(&self, hash: &BlobHash, content: &[u8]) -> Result<Vec<u8>> {
        let stored = encode(content)?;
        match &self.seal {
            None => Ok(stored),
            Some(s) => {
                let sealed = s.seal_blob(hash, &stored)?;
                let mut out = Vec::with_capacity(1 + sealed.len());
                out.push(FORMAT_SEALED);
                out.extend_from_slice(&sealed);
                Ok(out)
            }
        }
    }

    /// [`decode`] in this store: when it is encrypted the blob must be sealed under `hash` (the
    /// AEAD then vouches for its content, whose keyed address may be under an older key); in a
    /// plaintext store a sealed blob is [`Error::Decrypt`].
    pub fn decode(&self, hash: &BlobHash, stored: &[u8]) -> Result<Vec<u8>> {
        let location = || format!("blob {}", hex(hash));
        match (stored.first(), &self.seal) {
            (Some(&FORMAT_SEALED), Some(s)) => {
                let opened = s.open_blob(hash, &stored[1..])?;
                decode_unchecked(hash, &opened)
            }
            (Some(&FORMAT_SEALED), None) => Err(Error::Decrypt {
                location: location(),
                key_id: "?".into(),
                reason: "the store is encrypted: open it with its key".into(),
            }),
            (_, Some(s)) => Err(Error::Decrypt {
                location: location(),
                key_id: s.sealing_id(),
                reason: "a plaintext blob in an encrypted store: refused".into(),
            }),
            (_, None) => decode(hash, stored),
        }
    }

    /// Whether `stored` is sealed with this store's newest key (never, in a plaintext store).
    /// Says nothing about whether it opens: verify it with [`BlobCodec::decode`].
    pub fn sealed_with_newest(&self, stored: &[u8]) -> bool {
        match &self.seal {
            Some(s) => stored.first() == Some(&FORMAT_SEALED) && s.sealed_with_newest(&stored[1..]),
            None => false,
        }
    }
}

/// The stored form of `content` (compressed when that pays).
pub fn encode(content: &[u8]) -> Result<Vec<u8>> {
    if content.len() > MAX_BLOB_LEN {
        return Err(Error::InvalidInput(format!(
            "a single value of {} bytes exceeds the {MAX_BLOB_LEN}-byte limit",
            content.len()
        )));
    }
    let mut out = Vec::with_capacity(HEADER_LEN + content.len());
    if content.len() >= COMPRESS_MIN {
        let compressed = compress(content).map_err(|e| Error::codec("compressing a blob", e))?;
        if compressed.len() < content.len() {
            push_header(&mut out, CODEC_ZSTD, content.len());
            out.extend_from_slice(&compressed);
            return Ok(out);
        }
    }
    push_header(&mut out, CODEC_RAW, content.len());
    out.extend_from_slice(content);
    Ok(out)
}

fn push_header(out: &mut Vec<u8>, codec: u8, len: usize) {
    out.push(FORMAT);
    out.push(codec);
    out.extend_from_slice(&(len as u32).to_le_bytes());
}

/// Decodes a stored blob and verifies it against `hash`; any mismatch is [`Error::Corrupt`].
pub fn decode(hash: &BlobHash, stored: &[u8]) -> Result<Vec<u8>> {
    let content = decode_unchecked(hash, stored)?;
    if address(&content) != *hash {
        return Err(Error::corrupt(
            format!("blob {}", hex(hash)),
            "content does not match its hash",
        ));
    }
    Ok(content)
}

/// Decodes a stored form without checking the content against its address.
fn decode_unchecked(hash: &BlobHash, stored: &[u8]) -> Result<Vec<u8>> {
    let corrupt = |reason: String| Error::corrupt(format!("blob {}", hex(hash)), reason);
    if stored.len() < HEADER_LEN {
        return Err(corrupt(format!(
            "{} bytes is shorter than a blob header",
            stored.len()
        )));
    }
    if stored[0] != FORMAT {
        return Err(corrupt(format!("unknown blob format {}", stored[0])));
    }
    let len = u32::from_le_bytes([stored[2], stored[3], stored[4], stored[5]]) as usize;
    let payload = &stored[HEADER_LEN..];
    let content = match stored[1] {
        CODEC_RAW => payload.to_vec(),
        CODEC_ZSTD => decompress_bounded(payload, len).map_err(corrupt)?,
        other => return Err(corrupt(format!("unknown blob codec {other}"))),
    };
    if content.len() != len {
        return Err(corrupt(format!(
            "content is {} bytes, the header says {len}",
            content.len()
        )));
    }
    Ok(content)
}

/// A zstd context kept per thread (a `thread_local!` slot), made on first use.
pub(crate) type ContextSlot<T> = std::thread::LocalKey<RefCell<Option<T>>>;
type Compressor = zstd::bulk::Compressor<'static>;
type Decompressor = zstd::bulk::Decompressor<'static>;
/// A streaming decoder over a payload, for outputs too large to decompress in one call.
type Stream<'p> = zstd::stream::read::Decoder<'static, std::io::BufReader<&'p [u8]>>;

thread_local! {
    // Creating a zstd context costs more than compressing a 600-byte message: reuse one per thread.
    static COMPRESSOR: RefCell<Option<Compressor>> = const { RefCell::new(None) };
    static DECOMPRESSOR: RefCell<Option<Decompressor>> = const { RefCell::new(None) };
}

/// zstd-compresses `data` at [`ZSTD_LEVEL`] with this thread's context.
pub(crate) fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    compress_in(&COMPRESSOR, || Compressor::new(ZSTD_LEVEL), data)
}

/// Compresses `data` with this thread's context in `slot`, made by `new` on first use.
pub(crate) fn compress_in(
    slot: &'static ContextSlot<Compressor>,
    new: impl FnOnce() -> std::io::Result<Compressor>,
    data: &[u8],
) -> std::io::Result<Vec<u8>> {
    slot.with(|cell| {
        let mut slot = cell.borrow_mut();
        let compressor = match slot.as_mut() {
            Some(c) => c,
            None => slot.insert(new()?),
        };
        compressor.compress(data)
    })
}

/// Outputs up to this size are decompressed in one call into a buffer of the declared size;
/// larger ones stream, so a damaged length cannot make us allocate much before failing.
const BULK_DECOMPRESS_MAX: usize = 1 << 20;

/// Decompresses zstd `payload` expected to hold `len` bytes, never allocating much more than it
/// actually decodes (plus one byte to detect overlong output).
pub(crate) fn decompress_bounded(payload: &[u8], len: usize) -> Result<Vec<u8>, String> {
    decompress_bounded_in(
        &DECOMPRESSOR,
        Decompressor::new,
        |p| zstd::stream::read::Decoder::new(p),
        payload,
        len,
    )
}

/// [`decompress_bounded`] with this thread's context in `slot` (made by `new` on first use), or
/// for large outputs a stream made by `stream`.
pub(crate) fn decompress_bounded_in(
    slot: &'static ContextSlot<Decompressor>,
    new: impl FnOnce() -> std::io::Result<Decompressor>,
    stream: impl for<'p> FnOnce(&'p [u8]) -> std::io::Result<Stream<'p>>,
    payload: &[u8],
    len: usize,
) -> Result<Vec<u8>, String> {
    if len > MAX_BLOB_LEN {
        return Err(format!("declared length {len} exceeds the limit"));
    }
    if len <= BULK_DECOMPRESS_MAX {
        return slot.with(|cell| {
            let mut slot = cell.borrow_mut();
            let decompressor = match slot.as_mut() {
                Some(d) => d,
                None => slot.insert(new().map_err(|e| format!("zstd: {e}"))?),
            };
            // One spare byte, so output longer than declared is detected, not truncated.
            let mut out = Vec::with_capacity(len + 1);
            decompressor
                .decompress_to_buffer(payload, &mut out)
                .map_err(|e| format!("zstd: {e}"))?;
            Ok(out)
        });
    }
    let decoder = stream(payload).map_err(|e| format!("zstd: {e}"))?;
    let mut out = Vec::with_capacity(len.min(1 << 20));
    decoder
        .take(len as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("zstd: {e}"))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_small_and_large() {
        for content in [b"".to_vec(), b"hi".to_vec(), vec![b'a'; 100_000]] {
            let h = address(&content);
            let stored = encode(&content).unwrap();
            assert_eq!(decode(&h, &stored).unwrap(), content);
        }
        assert!(encode(&vec![b'a'; 100_000]).unwrap().len() < 1000);
    }

    #[test]
    fn every_flipped_byte_is_detected() {
        let content =
            b"the quick brown fox jumps over the lazy dog, again and again and again".repeat(3);
        let h = address(&content);
        let stored = encode(&content).unwrap();
        for i in 0..stored.len() {
            let mut bad = stored.clone();
            bad[i] ^= 0x5a;
            assert!(decode(&h, &bad).unwrap_err().is_corrupt(), "byte {i}");
        }
    }
}
