//! Decoders of sealed bytes under a fixed key and store id, for the fuzz targets (`fuzz/`) and
//! their seed corpus (`tests/fuzz_corpus.rs`). Not part of the API.
//!
//! At the top of the crate, not in the codec nor in `crypto`, because these hooks need both:
//! the codec's decoders and a real cipher as their sealing stage. `crypto` depends on the codec
//! (it implements [`crate::codec::seal::Seal`]) and the codec on neither, so this is the one
//! place that sees both without closing a loop. The plaintext decoders need no hook: the fuzz
//! targets call the codec's public functions directly. The one exception is the persisted
//! projection (a record the store derives from a log), whose decoder lives with the store.

use std::sync::Arc;

use crate::codec::{frame, value, Codec};
use crate::crypto::{Key, Keyring, StoreCipher};
use crate::error::Result;

/// The log and sequence sealed frames are checked at.
pub const LOG: &str = "fuzz-exec";
/// See [`LOG`].
pub const SEQ: u64 = 7;

/// The codec of an encrypted store with a fixed key and id (the seeds in `fuzz/corpus/sealed`
/// are sealed with them).
fn codec() -> Codec {
    let ring = Keyring::new(&[Key::from_bytes([0x5a; 32])]);
    Codec::sealed(Arc::new(StoreCipher::new(
        ring.expect("one key"),
        [0x11; 16],
    )))
}

/// Verifies, opens and decodes a frame as an encrypted store reads it at [`LOG`], [`SEQ`].
pub fn decode_sealed_frame(bytes: &[u8]) -> Result<()> {
    let decoded = codec().frames.decode(LOG, SEQ, bytes)?;
    decoded.body(LOG, SEQ)?;
    Ok(())
}

/// Verifies and decodes a persisted projection (a derived record of execution [`LOG`]) as a
/// plaintext store reads it when it opens the execution; `Err` says why it is not usable.
pub fn decode_projection_record(bytes: &[u8]) -> std::result::Result<(), String> {
    crate::store::decode_record(LOG, bytes)
}

/// Decodes a search index entry as the store reads it from the backend's search table: the
/// first byte says how many of the next bytes are the key (modulo their count), the rest is
/// the value. Returns how many parts decoded; must never panic.
pub fn decode_search_entry(data: &[u8]) -> usize {
    let Some((len, rest)) = data.split_first() else {
        return 0;
    };
    let split = usize::from(*len).min(rest.len());
    crate::store::decode_index_entry(&rest[..split], &rest[split..])
}

/// Opens and decodes a blob as an encrypted store reads it under `hash`.
pub fn decode_sealed_blob(hash: &[u8; 32], bytes: &[u8]) -> Result<()> {
    let content = codec().blobs.decode(hash, bytes)?;
    let _ = value::decode(&content);
    Ok(())
}

/// A sealed save frame (at [`LOG`], [`SEQ`]) and a sealed blob prefixed by its address: seeds.
pub fn seeds() -> Result<(Vec<u8>, Vec<u8>)> {
    let c = codec();
    let header = frame::SaveHeader {
        node: "n".into(),
        metadata: Default::default(),
        timestamp_us: 1,
        parent: None,
        state_size: 3,
        delta_base: None,
    };
    let body = value::encode(&rmpv::Value::from("state"));
    let f = c.frames.encode_save(LOG, SEQ, &header, &body)?;
    let content = value::encode(&rmpv::Value::from("x".repeat(300)));
    let mut lifting = c.lifting();
    crate::codec::tree::externalize(&rmpv::Value::from("x".repeat(300)), &mut lifting);
    let hash = lifting.blobs[0].0;
    let mut b = hash.to_vec();
    b.extend_from_slice(&c.blobs.encode(&hash, &content)?);
    Ok((f, b))
}
