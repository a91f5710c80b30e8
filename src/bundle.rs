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

use std::io::Read;

use crate::codec::blob::MAX_BLOB_LEN;
use crate::error::{Error, Result};
use crate::hash::BlobHash;

const MAGIC: &[u8; 11] = b"ckptbundle\0";
const FORMAT: u8 = 1;
/// The format of a bundle whose frames and blobs are sealed (it has a store entry).
const FORMAT_SEALED: u8 = 2;
const TAG_END: u8 = 0;
const TAG_LOG: u8 = 1;
const TAG_FRAME: u8 = 2;
const TAG_BLOB: u8 = 3;
const TAG_STORE: u8 = 4;

/// The largest payload one bundle entry may declare: the largest blob a store holds
/// ([`MAX_BLOB_LEN`], 1 GiB), with room for its hash, its header and a seal. A bundle entry that
/// declares more is refused before any of it is read.
pub const MAX_ENTRY_LEN: usize = MAX_BLOB_LEN + 64 * 1024;
/// How much a payload buffer reserves up front, whatever the entry declares: the rest grows as
/// bytes arrive.
const READ_CHUNK: usize = 64 * 1024;

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

    /// Reads a bundle from bytes in memory: [`Bundle::read_from`] over a slice.
    pub fn decode(bytes: &[u8]) -> Result<Bundle> {
        Bundle::read_from(bytes)
    }

    /// Reads a bundle from a stream, checking its format, structure and checksum. Never panics;
    /// anything wrong is [`Error::Corrupt`] (or [`Error::InvalidInput`] for a stream that is not
    /// a bundle, [`Error::Codec`] when reading fails).
    ///
    /// Input is bounded: the magic and the format are checked first (a stream that is not a
    /// bundle is refused after its first 12 bytes), an entry that declares more than
    /// [`MAX_ENTRY_LEN`] bytes is refused before any of it is read, and memory grows only with
    /// the bytes that actually arrive. The bundle is returned only once the end entry's entry
    /// count and blake3 checksum match everything before it and nothing follows it, so a caller
    /// that writes only what this returns writes nothing from a damaged or truncated stream.
    pub fn read_from(reader: impl Read) -> Result<Bundle> {
        let mut input = Input {
            reader,
            hasher: blake3::Hasher::new(),
        };
        let corrupt = |reason: String| Error::corrupt("bundle", reason);
        let mut magic = [0u8; MAGIC.len()];
        if input.fill(&mut magic)? < magic.len() || &magic != MAGIC {
            return Err(Error::InvalidInput(
                "not a ckpt bundle (it does not start with the bundle magic)".into(),
            ));
        }
        let mut format = [0u8; 1];
        if input.fill(&mut format)? == 0 {
            return Err(corrupt("no format byte".into()));
        }
        // The checksum covers every byte before the end entry, the header included.
        input.hasher.update(&magic);
        input.hasher.update(&format);
        let format = format[0];
        if format != FORMAT && format != FORMAT_SEALED {
            return Err(Error::InvalidInput(format!(
                "bundle format {format} is not one this ckpt reads (1, 2); upgrade ckpt"
            )));
        }
        let mut bundle = Bundle::default();
        let mut entries = 0u64;
        loop {
            let (tag, len) = input.entry_header()?;
            if tag == TAG_END {
                input.end(len, entries)?;
                if (format == FORMAT_SEALED) != bundle.sealed_for.is_some() {
                    return Err(corrupt("the store entry does not match the format".into()));
                }
                return Ok(bundle);
            }
            let payload = input.payload(tag, len)?;
            bundle.add_entry(format, entries, tag, payload)?;
            entries += 1;
        }
    }

    /// Adds one entry (not the end entry) read from a bundle of `format`, after `entries` others.
    fn add_entry(&mut self, format: u8, entries: u64, tag: u8, payload: Vec<u8>) -> Result<()> {
        let corrupt = |reason: String| Error::corrupt("bundle", reason);
        match tag {
            TAG_STORE => {
                if format != FORMAT_SEALED || entries != 0 {
                    return Err(corrupt("a store entry out of place".into()));
                }
                let id: [u8; 16] = payload
                    .as_slice()
                    .try_into()
                    .map_err(|_| corrupt("malformed store entry".into()))?;
                self.sealed_for = Some(id);
            }
            TAG_LOG => {
                let (name, p) = take_name(&payload).map_err(&corrupt)?;
                if p.len() != 16 {
                    return Err(corrupt(format!(
                        "malformed log entry for {}",
                        shown_name(&name)
                    )));
                }
                let first = u64::from_le_bytes(p[..8].try_into().unwrap_or_default());
                let next = u64::from_le_bytes(p[8..].try_into().unwrap_or_default());
                self.logs.push(BundleLog {
                    name,
                    first_seq: first,
                    next_seq: next,
                    frames: Vec::new(),
                });
            }
            TAG_FRAME => {
                let (name, p) = take_name(&payload).map_err(&corrupt)?;
                let shown = shown_name(&name);
                let log = self
                    .logs
                    .last_mut()
                    .filter(|l| l.name == name)
                    .ok_or_else(|| corrupt(format!("a frame of {shown} outside its log")))?;
                if p.len() < 8 {
                    return Err(corrupt(format!("malformed frame entry for {shown}")));
                }
                let (seq, frame) = p.split_at(8);
                let seq = u64::from_le_bytes(seq.try_into().unwrap_or_default());
                log.frames.push((seq, frame.to_vec()));
            }
            TAG_BLOB => {
                if payload.len() < 32 {
                    return Err(corrupt("malformed blob entry".into()));
                }
                let mut blob = payload;
                let hash: BlobHash = blob[..32].try_into().unwrap_or_default();
                blob.drain(..32);
                self.blobs.push((hash, blob));
            }
            other => return Err(corrupt(format!("unknown entry tag {other}"))),
        }
        Ok(())
    }
}

/// A bundle stream being read: every byte before the end entry goes through the checksum.
struct Input<R> {
    reader: R,
    hasher: blake3::Hasher,
}

impl<R: Read> Input<R> {
    /// Reads into `buf` until it is full or the stream ends; returns how many bytes were read.
    /// The bytes are not hashed (see [`Input::hashed`]).
    fn fill(&mut self, buf: &mut [u8]) -> Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            match self.reader.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(Error::codec("reading the bundle", e)),
            }
        }
        Ok(filled)
    }

    /// An entry's tag and declared length (not hashed yet: the end entry's are not).
    fn entry_header(&mut self) -> Result<(u8, usize)> {
        let mut header = [0u8; 5];
        if self.fill(&mut header)? < header.len() {
            return Err(Error::corrupt(
                "bundle",
                "the file ends before its end entry (truncated?)",
            ));
        }
        let len = u32::from_le_bytes([header[1], header[2], header[3], header[4]]) as usize;
        if header[0] != TAG_END {
            self.hasher.update(&header);
        }
        Ok((header[0], len))
    }

    /// The payload of an entry (not the end entry) declaring `len` bytes, hashed. A length
    /// above [`MAX_ENTRY_LEN`] is refused unread; memory grows only as bytes arrive, so a
    /// truncated stream that declares a large entry costs no more than what it holds.
    fn payload(&mut self, tag: u8, len: usize) -> Result<Vec<u8>> {
        if len > MAX_ENTRY_LEN {
            return Err(Error::corrupt(
                "bundle",
                format!(
                    "an entry (tag {tag}) declares {len} bytes, more than the limit of \
                     {MAX_ENTRY_LEN} bytes (1 GiB + 64 KiB: the largest blob a store holds, \
                     with room for its header) an entry may have"
                ),
            ));
        }
        let mut payload = Vec::with_capacity(len.min(READ_CHUNK));
        let read = (&mut self.reader)
            .take(len as u64)
            .read_to_end(&mut payload)
            .map_err(|e| Error::codec("reading the bundle", e))?;
        if read < len {
            return Err(Error::corrupt(
                "bundle",
                "an entry runs past the end of the file (truncated?)",
            ));
        }
        self.hasher.update(&payload);
        Ok(payload)
    }

    /// Checks the end entry (declaring `len` bytes) against the `entries` read and the
    /// checksum of everything before it, and that nothing follows it.
    fn end(&mut self, len: usize, entries: u64) -> Result<()> {
        let corrupt = |reason: &str| Error::corrupt("bundle", reason);
        if len != 40 {
            return Err(corrupt("malformed end entry"));
        }
        let mut end = [0u8; 40];
        if self.fill(&mut end)? < end.len() {
            return Err(corrupt("the end entry is cut short (truncated?)"));
        }
        let (count, sum) = end.split_at(8);
        if u64::from_le_bytes(count.try_into().unwrap_or_default()) != entries {
            return Err(corrupt("the entry count does not match"));
        }
        if self.hasher.finalize().as_bytes()[..] != sum[..] {
            return Err(corrupt(
                "checksum mismatch: the file is damaged or truncated",
            ));
        }
        if self.fill(&mut [0u8; 1])? != 0 {
            return Err(corrupt("bytes after the end entry"));
        }
        Ok(())
    }
}

/// An execution name as error messages show it (long names shortened).
fn shown_name(name: &str) -> String {
    crate::checkpoint::quote_name(name)
}

fn name_bytes(name: &str) -> Vec<u8> {
    let mut p = Vec::with_capacity(2 + name.len() + 16);
    p.extend_from_slice(&(name.len() as u16).to_le_bytes());
    p.extend_from_slice(name.as_bytes());
    p
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

    /// An endless stream of one byte value that counts what was read from it.
    struct Endless {
        byte: u8,
        read: usize,
    }

    impl Read for Endless {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            buf.fill(self.byte);
            self.read += buf.len();
            Ok(buf.len())
        }
    }

    #[test]
    fn a_stream_that_is_not_a_bundle_is_refused_after_its_header() {
        let mut noise = Endless {
            byte: 0xA7,
            read: 0,
        };
        let e = Bundle::read_from(&mut noise).unwrap_err();
        assert!(matches!(e, Error::InvalidInput(_)), "{e}");
        assert!(noise.read <= MAGIC.len() + 1, "read {} bytes", noise.read);
        // The right magic and an unknown format: refused at the format byte.
        let mut stream = MAGIC.chain(&[9u8][..]).chain(Endless { byte: 0, read: 0 });
        let e = Bundle::read_from(&mut stream).unwrap_err();
        assert!(e.to_string().contains("format 9"), "{e}");
    }

    #[test]
    fn an_entry_declaring_more_than_the_limit_is_refused_unread() {
        let mut head = MAGIC.to_vec();
        head.push(FORMAT);
        head.push(TAG_BLOB);
        head.extend_from_slice(&u32::MAX.to_le_bytes());
        let mut rest = Endless { byte: 1, read: 0 };
        let e = Bundle::read_from(head.as_slice().chain(&mut rest)).unwrap_err();
        assert!(e.is_corrupt(), "{e}");
        let text = e.to_string();
        assert!(
            text.contains(&format!("{}", u32::MAX))
                && text.contains(&format!("limit of {MAX_ENTRY_LEN}")),
            "{text}"
        );
        assert_eq!(rest.read, 0, "nothing of the entry is read");
        // At the limit, a truncated entry costs only what arrives.
        let mut at_limit = MAGIC.to_vec();
        at_limit.push(FORMAT);
        at_limit.push(TAG_BLOB);
        at_limit.extend_from_slice(&(MAX_ENTRY_LEN as u32).to_le_bytes());
        at_limit.extend_from_slice(&[0; 100]);
        let e = Bundle::read_from(at_limit.as_slice()).unwrap_err();
        assert!(e.to_string().contains("truncated"), "{e}");
    }

    #[test]
    fn a_stream_reads_as_its_bytes_do() {
        let bytes = sample().encode();
        // One byte per read: the decoder must not depend on how the stream splits.
        struct Trickle<'a>(&'a [u8]);
        impl Read for Trickle<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let Some((first, rest)) = self.0.split_first() else {
                    return Ok(0);
                };
                match buf.first_mut() {
                    Some(b) => *b = *first,
                    None => return Ok(0),
                }
                self.0 = rest;
                Ok(1)
            }
        }
        assert_eq!(Bundle::read_from(Trickle(&bytes)).unwrap(), sample());
        // Anything after the end entry is refused, even an endless stream.
        let e =
            Bundle::read_from(bytes.as_slice().chain(Endless { byte: 0, read: 0 })).unwrap_err();
        assert!(e.to_string().contains("after the end entry"), "{e}");
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
