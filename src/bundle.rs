//! Bundles: a portable, versioned, checksummed file holding executions as stored (their log
//! frames, byte for byte, and the blobs they reference), so that moving them between stores or
//! backends keeps every id, version, timestamp, parent and metadata exactly.
//!
//! ```text
//! bundle = "ckptbundle\0" [format: 1] entry* end
//! entry  = [tag u8][len u32 LE][payload: len bytes]
//!   tag 1, log:   [name len u16 LE][name][first seq u64 LE][next seq u64 LE]
//!   tag 2, frame: [name len u16 LE][name][seq u64 LE][frame bytes]
//!   tag 3, blob:  [hash: 32 bytes][blob as stored]
//!   tag 4, store: [store id: 16 bytes]   (format 2 only: first entry, exactly once)
//! end    = [tag 0][len u32 LE = 40][entries u64 LE][blake3 of every byte before this entry]
//! ```
//! A frame's own checksum binds it to its execution and sequence number, and a blob is verified
//! against its hash, so [`Bundle::decode`] checks the file as a whole and the store checks every
//! piece again before writing it.
//!
//! A bundle exported from an encrypted store is format 2: its frames and blobs stay sealed as
//! stored, and the store entry names the store they are bound to, so that a store holding one of
//! the keys can open them on import (and seal them again for itself). Nothing in a sealed bundle
//! is readable without a key.

use crate::backend::BlobHash;
use crate::error::{Error, Result};

const MAGIC: &[u8; 11] = b"ckptbundle\0";
const FORMAT: u8 = 1;
/// The format of a bundle whose frames and blobs are sealed (it has a store entry).
const FORMAT_SEALED: u8 = 2;
const TAG_END: u8 = 0;
const TAG_LOG: u8 = 1;
const TAG_FRAME: u8 = 2;
const TAG_BLOB: u8 = 3;
const TAG_STORE: u8 = 4;

/// One execution's log in a bundle.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleLog {
    /// The execution id (log name).
    pub name: String,
    /// Sequence number of the first frame (above 1 when the source's log was truncated by gc).
    pub first_seq: u64,
    /// The log's next sequence number in the source (its high-water mark).
    pub next_seq: u64,
    /// Frames as stored, with their sequence numbers, in order.
    pub frames: Vec<(u64, Vec<u8>)>,
}

/// Executions and the blobs they reference.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    /// The logs.
    pub logs: Vec<BundleLog>,
    /// Blobs as stored, by hash.
    pub blobs: Vec<(BlobHash, Vec<u8>)>,
    /// For a bundle exported from an encrypted store: that store's id, which its frames and
    /// blobs are sealed to (`None`: they are plaintext).
    pub sealed_for: Option<[u8; 16]>,
}

impl Bundle {
    /// The bundle's bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        out.extend_from_slice(MAGIC);
        out.push(match self.sealed_for {
            Some(_) => FORMAT_SEALED,
            None => FORMAT,
        });
        let mut entries = 0u64;
        let mut entry = |out: &mut Vec<u8>, tag: u8, payload: &[u8]| {
            out.push(tag);
            out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            out.extend_from_slice(payload);
            entries += 1;
        };
        if let Some(id) = &self.sealed_for {
            entry(&mut out, TAG_STORE, id);
        }
        for log in &self.logs {
            let mut p = name_bytes(&log.name);
            p.extend_from_slice(&log.first_seq.to_le_bytes());
            p.extend_from_slice(&log.next_seq.to_le_bytes());
            entry(&mut out, TAG_LOG, &p);
            for (seq, frame) in &log.frames {
                let mut p = name_bytes(&log.name);
                p.extend_from_slice(&seq.to_le_bytes());
                p.extend_from_slice(frame);
                entry(&mut out, TAG_FRAME, &p);
            }
        }
        for (hash, blob) in &self.blobs {
            let mut p = hash.to_vec();
            p.extend_from_slice(blob);
            entry(&mut out, TAG_BLOB, &p);
        }
        let sum = blake3::hash(&out);
        out.push(TAG_END);
        out.extend_from_slice(&40u32.to_le_bytes());
        out.extend_from_slice(&entries.to_le_bytes());
        out.extend_from_slice(sum.as_bytes());
        out
    }

    /// Reads a bundle, checking its format, structure and checksum. Never panics; anything wrong
    /// is [`Error::Corrupt`] (or [`Error::InvalidInput`] for a file that is not a bundle).
    pub fn decode(bytes: &[u8]) -> Result<Bundle> {
        let corrupt = |reason: String| Error::corrupt("bundle", reason);
        let rest = bytes.strip_prefix(&MAGIC[..]).ok_or_else(|| {
            Error::InvalidInput(
                "not a ckpt bundle (it does not start with the bundle magic)".into(),
            )
        })?;
        let (&format, mut rest) = rest
            .split_first()
            .ok_or_else(|| corrupt("no format byte".into()))?;
        if format != FORMAT && format != FORMAT_SEALED {
            return Err(Error::InvalidInput(format!(
                "bundle format {format} is not one this ckpt reads (1, 2); upgrade ckpt"
            )));
        }
        let mut bundle = Bundle::default();
        let mut entries = 0u64;
        loop {
            let offset = bytes.len() - rest.len();
            let (tag, payload, tail) = take_entry(rest).map_err(&corrupt)?;
            rest = tail;
            match tag {
                TAG_END => {
                    if payload.len() != 40 {
                        return Err(corrupt("malformed end entry".into()));
                    }
                    let (count, sum) = payload.split_at(8);
                    if u64::from_le_bytes(count.try_into().unwrap_or_default()) != entries {
                        return Err(corrupt("the entry count does not match".into()));
                    }
                    if blake3::hash(&bytes[..offset]).as_bytes()[..] != sum[..] {
                        return Err(corrupt(
                            "checksum mismatch: the file is damaged or truncated".into(),
                        ));
                    }
                    if !rest.is_empty() {
                        return Err(corrupt("bytes after the end entry".into()));
                    }
                    if (format == FORMAT_SEALED) != bundle.sealed_for.is_some() {
                        return Err(corrupt("the store entry does not match the format".into()));
                    }
                    return Ok(bundle);
                }
                TAG_STORE => {
                    if format != FORMAT_SEALED || entries != 0 {
                        return Err(corrupt("a store entry out of place".into()));
                    }
                    let id: [u8; 16] = payload
                        .try_into()
                        .map_err(|_| corrupt("malformed store entry".into()))?;
                    bundle.sealed_for = Some(id);
                }
                TAG_LOG => {
                    let (name, p) = take_name(payload).map_err(&corrupt)?;
                    if p.len() != 16 {
                        return Err(corrupt(format!("malformed log entry for {name:?}")));
                    }
                    let first = u64::from_le_bytes(p[..8].try_into().unwrap_or_default());
                    let next = u64::from_le_bytes(p[8..].try_into().unwrap_or_default());
                    bundle.logs.push(BundleLog {
                        name,
                        first_seq: first,
                        next_seq: next,
                        frames: Vec::new(),
                    });
                }
                TAG_FRAME => {
                    let (name, p) = take_name(payload).map_err(&corrupt)?;
                    let log = bundle
                        .logs
                        .last_mut()
                        .filter(|l| l.name == name)
                        .ok_or_else(|| corrupt(format!("a frame of {name:?} outside its log")))?;
                    if p.len() < 8 {
                        return Err(corrupt(format!("malformed frame entry for {name:?}")));
                    }
                    let (seq, frame) = p.split_at(8);
                    let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
                    log.frames.push((seq, frame.to_vec()));
                }
                TAG_BLOB => {
                    if payload.len() < 32 {
                        return Err(corrupt("malformed blob entry".into()));
                    }
                    let (hash, blob) = payload.split_at(32);
                    let hash: BlobHash = hash.try_into().unwrap_or_default();
                    bundle.blobs.push((hash, blob.to_vec()));
                }
                other => return Err(corrupt(format!("unknown entry tag {other}"))),
            }
            entries += 1;
        }
    }
}

fn name_bytes(name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + name.len() + 16);
    p.extend_from_slice(&(name.len() as u16).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p
}

fn take_entry(rest: &[u8]) -> std::result::Result<(u8, &[u8], &[u8]), String> {
    if rest.len() < 5 {
        return Err("the file ends before its end entry (truncated?)".into());
    }
    let tag = rest[0];
    let len = u32::from_le_bytes([rest[1], rest[2], rest[3], rest[4]]) as usize;
    let body = &rest[5..];
    if body.len() < len {
        return Err("an entry runs past the end of the file (truncated?)".into());
    }
    Ok((tag, &body[..len], &body[len..]))
}

fn take_name(payload: &[u8]) -> std::result::Result<(String, &[u8]), String> {
    if payload.len() < 2 {
        return Err("an entry too short for its execution name".into());
    }
    let len = u16::from_le_bytes([payload[0], payload[1]]) as usize;
    let name = payload
        .get(2..2 + len)
        .ok_or("an execution name runs past its entry")?;
    let name = String::from_utf8(name.to_vec()).map_err(|_| "an execution name is not UTF-8")?;
    crate::checkpoint::validate_execution_id(&name).map_err(|e| e.to_string())?;
    Ok((name, &payload[2 + len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Bundle {
        Bundle {
            logs: vec![
                BundleLog {
                    name: "a".into(),
                    first_seq: 3,
                    next_seq: 6,
                    frames: vec![(3, b"f3".to_vec()), (4, b"f4".to_vec())],
                },
                BundleLog {
                    name: "b@x".into(),
                    first_seq: 1,
                    next_seq: 1,
                    frames: vec![],
                },
            ],
            blobs: vec![([9; 32], b"blob".to_vec())],
            sealed_for: None,
        }
    }

    #[test]
    fn a_sealed_bundle_names_its_store() {
        let sealed = Bundle {
            sealed_for: Some([7; 16]),
            ..sample()
        };
        let bytes = sealed.encode();
        assert_eq!(bytes[MAGIC.len()], FORMAT_SEALED);
        assert_eq!(Bundle::decode(&bytes).unwrap(), sealed);
        assert_eq!(
            Bundle::decode(&with_valid_checksum(bytes.clone())).unwrap(),
            sealed
        );
        // The format byte and the store entry must agree, even with a valid checksum.
        let mut plain_format = bytes.clone();
        plain_format[MAGIC.len()] = FORMAT;
        assert!(Bundle::decode(&with_valid_checksum(plain_format)).is_err());
        let mut sealed_format = sample().encode();
        sealed_format[MAGIC.len()] = FORMAT_SEALED;
        assert!(Bundle::decode(&with_valid_checksum(sealed_format)).is_err());
    }

    /// `bytes` with its end entry's checksum recomputed (the end entry is the last 45 bytes).
    fn with_valid_checksum(mut bytes: Vec<u8>) -> Vec<u8> {
        let body = bytes.len() - 45;
        let sum = blake3::hash(&bytes[..body]);
        let at = bytes.len() - 32;
        bytes[at..].copy_from_slice(sum.as_bytes());
        bytes
    }

    #[test]
    fn round_trips() {
        assert_eq!(Bundle::decode(&sample().encode()).unwrap(), sample());
        assert_eq!(
            Bundle::decode(&Bundle::default().encode()).unwrap(),
            Bundle::default()
        );
    }

    #[test]
    fn damage_anywhere_is_refused() {
        let bytes = sample().encode();
        for i in 0..bytes.len() {
            let mut bad = bytes.clone();
            bad[i] ^= 0x20;
            assert!(Bundle::decode(&bad).is_err(), "byte {i}");
        }
        for cut in 0..bytes.len() {
            assert!(Bundle::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(
            Bundle::decode(b"hello"),
            Err(Error::InvalidInput(_))
        ));
    }
}
