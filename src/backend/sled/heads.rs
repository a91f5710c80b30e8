//! The heads file: a witness, kept outside sled's own files, of every log's acknowledged next
//! sequence number, so that a rollback of sled's files (damage its recovery silently truncates
//! at) is detected instead of served.
//!
//! The sled backend's write-ahead log holds every acknowledged append until sled's files are
//! flushed; before the WAL restarts, the heads of the logs its records raised are appended here
//! and synced. So at any moment each acknowledged head is in the WAL or in this file, and an open
//! that finds a log in sled below the head recorded for it knows that acknowledged frames were
//! lost, and which.
//!
//! ```text
//! file    = [magic "ckpthds1"] record*
//! record  = [len u32 LE][payload: len bytes][checksum 8]
//! payload = ([name len u16 LE][name][next seq u64 LE])*
//! checksum = first 8 bytes of blake3 over the length and the payload
//! ```
//! Records only raise heads (a log's head is the largest recorded for it), so reading merges them
//! in any order. A record that does not verify ends the file when nothing verified follows it (a
//! write a crash tore: its heads are still in the WAL); otherwise it is reported as damage and
//! reading goes on. When the file grows past four times the size of one record holding every
//! head, it is rewritten as that one record (a new file, synced, then renamed over the old one).

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"ckpthds1";
const CHECKSUM_LEN: usize = 8;
const RECORD_OVERHEAD: usize = 4 + CHECKSUM_LEN;
/// A file smaller than this is never rewritten.
const MIN_REWRITE: u64 = 64 * 1024;

fn checksum(len: &[u8], payload: &[u8]) -> [u8; CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    h.update(len);
    h.update(payload);
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECKSUM_LEN]);
    out
}

/// What a heads file holds.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedHeads {
    /// Each log's largest recorded head.
    pub heads: HashMap<String, u64>,
    /// Spans (offset, length) that did not verify although verified records follow them: heads
    /// lost from the witness (the logs they named can no longer be checked for a rollback
    /// below them).
    pub damage: Vec<(u64, u64)>,
    /// Whether the file starts with the magic (false for an empty or foreign file).
    pub recognised: bool,
    /// Where the next record goes.
    pub end: u64,
}

/// The payload of a record holding `heads`.
fn encode_payload<'a>(heads: impl IntoIterator<Item = (&'a str, u64)>) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, head) in heads {
        // Log names longer than u16::MAX bytes cannot exist in sled (its frame keys refuse them).
        let Ok(len) = u16::try_from(name.len()) else {
            continue;
        };
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&head.to_le_bytes());
    }
    out
}

/// A record's bytes.
fn encode_record(payload: &[u8]) -> Vec<u8> {
    let len = (payload.len() as u32).to_le_bytes();
    let mut out = Vec::with_capacity(payload.len() + RECORD_OVERHEAD);
    out.extend_from_slice(&len);
    out.extend_from_slice(payload);
    out.extend_from_slice(&checksum(&len, payload));
    out
}

/// The payload of the verified record at `offset`, and where it ends.
fn record_at(file: &[u8], offset: usize) -> Option<(&[u8], usize)> {
    let len_bytes = file.get(offset..offset.checked_add(4)?)?;
    let len = u32::from_le_bytes(len_bytes.try_into().ok()?) as usize;
    let body_end = offset.checked_add(4)?.checked_add(len)?;
    let end = body_end.checked_add(CHECKSUM_LEN)?;
    let payload = file.get(offset + 4..body_end)?;
    (file.get(body_end..end)? == checksum(len_bytes, payload)).then_some((payload, end))
}

/// Merges a verified payload's heads into `heads`; `None` if its entries do not parse (which a
/// verified checksum makes a bug, not damage, but is never trusted blindly).
fn merge_payload(payload: &[u8], heads: &mut HashMap<String, u64>) -> Option<()> {
    let mut rest = payload;
    let mut parsed = Vec::new();
    while !rest.is_empty() {
        let len = u16::from_le_bytes(rest.get(..2)?.try_into().ok()?) as usize;
        let name = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
        let head = u64::from_le_bytes(rest.get(2 + len..10 + len)?.try_into().ok()?);
        parsed.push((name, head));
        rest = &rest[10 + len..];
    }
    for (name, head) in parsed {
        let slot = heads.entry(name.to_owned()).or_insert(0);
        *slot = (*slot).max(head);
    }
    Some(())
}

/// Reads a heads file's contents. Never panics.
pub fn parse(file: &[u8]) -> ParsedHeads {
    let mut parsed = ParsedHeads {
        end: MAGIC.len() as u64,
        ..ParsedHeads::default()
    };
    if file.get(..MAGIC.len()) != Some(&MAGIC[..]) {
        return parsed;
    }
    parsed.recognised = true;
    let mut offset = MAGIC.len();
    while offset < file.len() {
        if let Some((payload, end)) = record_at(file, offset) {
            if merge_payload(payload, &mut parsed.heads).is_some() {
                offset = end;
                continue;
            }
        }
        // Damage, or the torn tail: damage only if a verified record follows.
        let next = (offset + 1..file.len()).find(|&o| {
            record_at(file, o).is_some_and(|(p, _)| merge_payload(p, &mut HashMap::new()).is_some())
        });
        match next {
            Some(next) => {
                parsed.damage.push((offset as u64, (next - offset) as u64));
                offset = next;
            }
            None => break,
        }
    }
    parsed.end = offset as u64;
    parsed
}

/// The heads file of a sled store, open for appending.
#[derive(Debug)]
pub struct Heads {
    path: PathBuf,
    file: File,
    end: u64,
    heads: HashMap<String, u64>,
}

impl Heads {
    /// Opens (creating it if needed) the heads file at `path`, returning it with what it held.
    pub fn open(path: &Path) -> io::Result<(Heads, ParsedHeads)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        let mut contents = vec![0u8; len as usize];
        file.read_exact_at(&mut contents, 0)?;
        let parsed = parse(&contents);
        let mut heads = Heads {
            path: path.to_path_buf(),
            file,
            end: parsed.end,
            heads: parsed.heads.clone(),
        };
        if !parsed.recognised || !parsed.damage.is_empty() {
            // A new file, or one whose damage was just reported: start a clean one holding
            // every head still known.
            heads.rewrite()?;
        }
        Ok((heads, parsed))
    }

    /// Each log's largest recorded head.
    pub fn heads(&self) -> &HashMap<String, u64> {
        &self.heads
    }

    /// Records `changed` heads durably (one write, one fdatasync), rewriting the file when it
    /// has grown past four times what its heads need.
    pub fn record(&mut self, changed: &HashMap<String, u64>) -> io::Result<()> {
        let raised: Vec<(&str, u64)> = changed
            .iter()
            .filter(|(name, head)| self.heads.get(*name).is_none_or(|h| h < *head))
            .map(|(name, head)| (name.as_str(), *head))
            .collect();
        if raised.is_empty() {
            return Ok(());
        }
        let record = encode_record(&encode_payload(raised.iter().copied()));
        self.file.write_all_at(&record, self.end)?;
        self.file.sync_data()?;
        self.end += record.len() as u64;
        for (name, head) in raised {
            self.heads.insert(name.to_owned(), head);
        }
        let needed = self.heads.keys().map(|n| n.len() as u64 + 10).sum::<u64>()
            + (MAGIC.len() + RECORD_OVERHEAD) as u64;
        if self.end > MIN_REWRITE.max(4 * needed) {
            self.rewrite()?;
        }
        Ok(())
    }

    /// Replaces the file by one holding every head in one record: written to a new file,
    /// synced, renamed over the old one, and the directory synced, so a crash leaves one or the
    /// other whole.
    fn rewrite(&mut self) -> io::Result<()> {
        let mut bytes = MAGIC.to_vec();
        if !self.heads.is_empty() {
            let payload = encode_payload(self.heads.iter().map(|(n, h)| (n.as_str(), *h)));
            bytes.extend_from_slice(&encode_record(&payload));
        }
        let mut tmp_name = self.path.as_os_str().to_owned();
        tmp_name.push(".new");
        let tmp = PathBuf::from(tmp_name);
        {
            let mut file = File::create(&tmp)?;
            file.write_all(&bytes)?;
            file.sync_all()?;
        }
        std::fs::rename(&tmp, &self.path)?;
        if let Some(dir) = self.path.parent() {
            File::open(dir)?.sync_all()?;
        }
        self.file = OpenOptions::new().read(true).write(true).open(&self.path)?;
        self.end = bytes.len() as u64;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(items: &[(&str, u64)]) -> HashMap<String, u64> {
        items.iter().map(|(n, h)| (n.to_string(), *h)).collect()
    }

    #[test]
    fn heads_survive_reopen_and_only_rise() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads");
        let (mut heads, parsed) = Heads::open(&path).unwrap();
        assert!(parsed.heads.is_empty());
        heads.record(&map(&[("a", 3), ("b", 2)])).unwrap();
        heads.record(&map(&[("a", 7)])).unwrap();
        heads.record(&map(&[("a", 5)])).unwrap();
        drop(heads);
        let (heads, parsed) = Heads::open(&path).unwrap();
        assert_eq!(parsed.heads, map(&[("a", 7), ("b", 2)]));
        assert_eq!(heads.heads(), &map(&[("a", 7), ("b", 2)]));
        assert!(parsed.damage.is_empty());
    }

    #[test]
    fn damage_before_a_verified_record_is_reported_a_torn_tail_is_not() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads");
        let (mut heads, _) = Heads::open(&path).unwrap();
        heads.record(&map(&[("a", 3)])).unwrap();
        let second = heads.end as usize;
        heads.record(&map(&[("b", 4)])).unwrap();
        heads.record(&map(&[("c", 5)])).unwrap();
        drop(heads);
        let file = std::fs::read(&path).unwrap();
        let mut damaged = file.clone();
        damaged[second + 5] ^= 0x20;
        let parsed = parse(&damaged);
        assert_eq!(parsed.heads, map(&[("a", 3), ("c", 5)]));
        assert_eq!(parsed.damage.len(), 1);
        assert_eq!(parsed.damage[0].0, second as u64);
        let torn = parse(&file[..file.len() - 3]);
        assert_eq!(torn.heads, map(&[("a", 3), ("b", 4)]));
        assert!(torn.damage.is_empty());
        for cut in 0..file.len() {
            assert!(parse(&file[..cut]).heads.len() <= 3);
        }
    }

    #[test]
    fn a_growing_file_is_rewritten_with_every_head() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("heads");
        let (mut heads, _) = Heads::open(&path).unwrap();
        for i in 1..=5_000u64 {
            heads.record(&map(&[("exec", i), ("other", 1)])).unwrap();
        }
        let len = std::fs::metadata(&path).unwrap().len();
        assert!(len <= MIN_REWRITE, "{len}");
        drop(heads);
        let (_, parsed) = Heads::open(&path).unwrap();
        assert_eq!(parsed.heads, map(&[("exec", 5_000), ("other", 1)]));
    }
}
