//! A small write-ahead log that makes the sled backend's appends durable with one `fdatasync`
//! per group of appends, instead of one sled flush each.
//!
//! Why: a sled 0.34 flush seals its I/O buffer and hands it to sled's thread pool, which wakes
//! every idle pool thread for each buffer; on a small machine that costs more than the disk
//! write. The WAL is a fixed-size, pre-zeroed file, so overwriting it and calling `fdatasync`
//! changes no file metadata and costs one device flush (~0.1 ms here).
//!
//! ```text
//! header = [magic "ckptwal2"][generation u64 LE][checksum 8]                    (HEADER_LEN bytes)
//! record = [len u32 LE][generation u64 LE][group u64 LE][payload: len bytes][checksum 8]
//! checksum = first 8 bytes of blake3 over everything before it in the header / record
//! ```
//! Records are written after the header, back to back; the records written by one group write
//! (one `pwrite` and one `fdatasync`) share a group number, which grows by one per group write.
//! When the next group does not fit, the owner makes its database durable by other means (a sled
//! flush), and the WAL restarts with the next generation: records of older generations left in
//! the file are ignored, and a restart zeroes the first record slot so that none of them follows
//! the header.
//!
//! # Recovery
//!
//! Recovery reads the records of the header's generation. A record that does not verify is
//! either a write a crash tore (the group in flight, never acknowledged) or damage to a record
//! that was acknowledged. They differ in what follows: a group's write starts only after the
//! previous group was synced, so a verified record of a *later group* than any the damaged bytes
//! may belong to proves they were acknowledged. Then recovery reports the damaged span
//! ([`WalDamage`]) and keeps every verified record after it; otherwise the damage is the torn
//! tail and recovery ends there. A header that does not verify while a verified record follows
//! it is reported too, and that record's generation is read. The older format (`ckptwal1`,
//! without groups) is still read, up to its first bad record.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"ckptwal2";
/// The format before group numbers; read (as it was: up to the first bad record), never written.
const MAGIC_V1: &[u8; 8] = b"ckptwal1";
const CHECKSUM_LEN: usize = 8;
/// Bytes of the header.
pub const HEADER_LEN: u64 = 8 + 8 + CHECKSUM_LEN as u64;
/// Bytes of a record's head: length, generation, group.
const RECORD_HEAD: usize = 4 + 8 + 8;
const RECORD_OVERHEAD: usize = RECORD_HEAD + CHECKSUM_LEN;
const RECORD_HEAD_V1: usize = 4 + 8;
const RECORD_OVERHEAD_V1: usize = RECORD_HEAD_V1 + CHECKSUM_LEN;

/// The WAL file, positioned after its last record.
#[derive(Debug)]
pub struct Wal {
    file: File,
    size: u64,
    generation: u64,
    /// The group number of the next group write.
    group: u64,
    offset: u64,
    /// The next restart must zero the whole file: its header did not verify, so records of any
    /// generation may be lying in it.
    wipe: bool,
}

fn checksum(parts: &[&[u8]]) -> [u8; CHECKSUM_LEN] {
    let mut h = blake3::Hasher::new();
    for p in parts {
        h.update(p);
    }
    let mut out = [0u8; CHECKSUM_LEN];
    out.copy_from_slice(&h.finalize().as_bytes()[..CHECKSUM_LEN]);
    out
}

impl Wal {
    /// Opens (creating and pre-zeroing to `size` bytes if needed) the WAL at `path`, and returns
    /// it with what it holds (see [`parse`]). The caller applies the records and then calls
    /// [`Wal::restart`].
    pub fn open(path: &Path, size: u64) -> io::Result<(Wal, Parsed)> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        let len = file.metadata()?.len();
        if len < size {
            // Zeros written now make later overwrites pure data writes (no block allocation,
            // no size change), which is what keeps fdatasync cheap.
            let zeros = vec![0u8; (size - len) as usize];
            file.write_all_at(&zeros, len)?;
            file.sync_all()?;
        }
        let size = size.max(len);
        let mut contents = vec![0u8; size as usize];
        file.read_exact_at(&mut contents, 0)?;
        let parsed = parse(&contents);
        let wal = Wal {
            file,
            size,
            generation: parsed.generation.unwrap_or(0),
            group: parsed.next_group,
            offset: parsed.end,
            wipe: parsed.header != HeaderState::Current,
        };
        Ok((wal, parsed))
    }

    /// Whether `payloads` fit after the records already written.
    pub fn fits(&self, payloads: &[Vec<u8>]) -> bool {
        let need: u64 = payloads
            .iter()
            .map(|p| (p.len() + RECORD_OVERHEAD) as u64)
            .sum();
        self.offset + need <= self.size
    }

    /// Writes `payloads` as records of one group and makes them durable (one write, one
    /// fdatasync).
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(payloads.iter().map(|p| p.len() + RECORD_OVERHEAD).sum());
        for p in payloads {
            let len = u32::try_from(p.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WAL record too long"))?;
            let mut head = [0u8; RECORD_HEAD];
            head[..4].copy_from_slice(&len.to_le_bytes());
            head[4..12].copy_from_slice(&self.generation.to_le_bytes());
            head[12..].copy_from_slice(&self.group.to_le_bytes());
            buf.extend_from_slice(&head);
            buf.extend_from_slice(p);
            buf.extend_from_slice(&checksum(&[&head, p]));
        }
        self.file.write_all_at(&buf, self.offset)?;
        self.file.sync_data()?;
        self.offset += buf.len() as u64;
        self.group += 1;
        Ok(())
    }

    /// Starts the next generation with no records. Call only once everything the WAL holds is
    /// durable elsewhere.
    pub fn restart(&mut self) -> io::Result<()> {
        self.generation += 1;
        let mut header = Vec::with_capacity(HEADER_LEN as usize + RECORD_HEAD);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&self.generation.to_le_bytes());
        let sum = checksum(&[&header]);
        header.extend_from_slice(&sum);
        if self.wipe {
            // Records of unknown generations may lie anywhere in the file: none may ever be
            // taken for one of the new generation's.
            self.file.write_all_at(&vec![0u8; self.size as usize], 0)?;
            self.wipe = false;
        } else {
            // No older record directly follows the header (read when the header is damaged).
            header.extend_from_slice(&[0u8; RECORD_HEAD]);
        }
        self.file.write_all_at(&header, 0)?;
        self.file.sync_data()?;
        self.offset = HEADER_LEN;
        self.group = 0;
        Ok(())
    }

    /// Largest payload that fits in an empty WAL.
    #[cfg(test)]
    pub fn capacity(&self) -> u64 {
        self.size - HEADER_LEN - RECORD_OVERHEAD as u64
    }
}

/// The writes of one append, as a WAL record payload: `[kind u8][key len u32][key][value len u32]
/// [value]` repeated; kind 0 inserts, kind 1 raises a log's next sequence number (u64 BE) to at
/// least the value (replay never lowers one that sled already holds).
#[derive(Debug, Default)]
pub struct WalRecord(Vec<u8>);

const WAL_INSERT: u8 = 0;
const WAL_RAISE: u8 = 1;

impl WalRecord {
    fn push(&mut self, kind: u8, key: &[u8], value: &[u8]) {
        self.0.push(kind);
        self.0.extend_from_slice(&(key.len() as u32).to_le_bytes());
        self.0.extend_from_slice(key);
        self.0
            .extend_from_slice(&(value.len() as u32).to_le_bytes());
        self.0.extend_from_slice(value);
    }

    /// Records an insert.
    pub fn insert(&mut self, key: &[u8], value: &[u8]) {
        self.push(WAL_INSERT, key, value);
    }

    /// Records raising the next sequence number stored under `key` to at least `next_seq`.
    pub fn raise(&mut self, key: &[u8], next_seq: u64) {
        self.push(WAL_RAISE, key, &next_seq.to_be_bytes());
    }

    /// The record's payload.
    pub fn into_bytes(self) -> Vec<u8> {
        self.0
    }
}

/// One write of a WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalWrite {
    /// Insert `value` under `key`.
    Insert(Vec<u8>, Vec<u8>),
    /// Raise the next sequence number stored under `key` to at least this.
    Raise(Vec<u8>, [u8; 8]),
}

/// Decodes a record's writes (bytes read back from disk: never panics).
pub fn parse_record(record: &[u8]) -> Result<Vec<WalWrite>, String> {
    let corrupt = |reason: &str| reason.to_owned();
    let mut rest = record;
    let mut take = |n: usize| -> Result<&[u8], String> {
        if rest.len() < n {
            return Err(corrupt("a record ends in the middle of a write"));
        }
        let (head, tail) = rest.split_at(n);
        rest = tail;
        Ok(head)
    };
    let read_len = |b: &[u8]| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let mut writes = Vec::new();
    while let Ok(kind) = take(1).map(|k| k[0]) {
        let key = take(4).map(read_len).and_then(&mut take)?.to_vec();
        let value = take(4).map(read_len).and_then(&mut take)?;
        writes.push(match kind {
            WAL_INSERT => WalWrite::Insert(key, value.to_vec()),
            WAL_RAISE => WalWrite::Raise(
                key,
                value
                    .try_into()
                    .map_err(|_| corrupt("a sequence number is not 8 bytes"))?,
            ),
            _ => return Err(corrupt("unknown write kind")),
        });
    }
    Ok(writes)
}

/// What the header of a WAL file says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderState {
    /// A verified header of the current format.
    Current,
    /// A verified header of the older format (`ckptwal1`).
    Older,
    /// No verified header: a new (zeroed) file, or a damaged header.
    Missing,
}

/// A span of a WAL file that did not verify although verified records of a later group follow
/// it: records that were acknowledged as durable, and whose content is lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WalDamage {
    /// Offset of the first byte that did not verify.
    pub offset: u64,
    /// Bytes skipped to the next verified record (0 for a damaged header).
    pub len: u64,
    /// The index in [`Parsed::records`] of the first record read after the damage.
    pub next_record: usize,
    /// What was damaged, for messages.
    pub what: String,
}

/// What a WAL file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The generation whose records were read; `None` when no header or record verifies (a new
    /// file, or nothing left to read).
    pub generation: Option<u64>,
    /// What the header says.
    pub header: HeaderState,
    /// Payloads of the verified records of that generation, in order.
    pub records: Vec<Vec<u8>>,
    /// Acknowledged records that did not verify, with where reading went on.
    pub damage: Vec<WalDamage>,
    /// Where the next record goes.
    pub end: u64,
    /// The group number after the last record's.
    pub next_group: u64,
}

/// A verified record found in a file.
struct Found<'a> {
    payload: &'a [u8],
    group: u64,
    end: usize,
}

/// The record at `offset` if it verifies (of `generation`, when given).
fn record_at(file: &[u8], offset: usize, generation: Option<u64>) -> Option<(u64, Found<'_>)> {
    let head = file.get(offset..offset.checked_add(RECORD_HEAD)?)?;
    let record_generation = u64::from_le_bytes(head[4..12].try_into().ok()?);
    if generation.is_some_and(|g| g != record_generation) {
        return None;
    }
    let len = u32::from_le_bytes(head[..4].try_into().ok()?) as usize;
    let body_end = offset.checked_add(RECORD_HEAD)?.checked_add(len)?;
    let end = body_end.checked_add(CHECKSUM_LEN)?;
    let payload = file.get(offset + RECORD_HEAD..body_end)?;
    let sum = file.get(body_end..end)?;
    if checksum(&[head, payload]) != sum {
        return None;
    }
    let group = u64::from_le_bytes(head[12..20].try_into().ok()?);
    Some((
        record_generation,
        Found {
            payload,
            group,
            end,
        },
    ))
}

/// Reads the records of a WAL file's contents (see the [module documentation](self)). Never
/// panics, and never yields more records for a prefix of a file than for the whole file.
pub fn parse(file: &[u8]) -> Parsed {
    let mut parsed = Parsed {
        generation: None,
        header: HeaderState::Missing,
        records: Vec::new(),
        damage: Vec::new(),
        end: HEADER_LEN,
        next_group: 0,
    };
    let Some((body, rest)) = file.split_at_checked(HEADER_LEN as usize - CHECKSUM_LEN) else {
        return parsed;
    };
    let verified = rest.get(..CHECKSUM_LEN) == Some(&checksum(&[body])[..]);
    let header_generation = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
    let generation = match (verified, &body[..8]) {
        (true, magic) if magic == MAGIC_V1 => {
            parsed.header = HeaderState::Older;
            return parse_v1(file, header_generation, parsed);
        }
        (true, magic) if magic == MAGIC => {
            parsed.header = HeaderState::Current;
            header_generation
        }
        _ => {
            // A damaged header: the record after it, if one verifies, says the generation.
            let Some((generation, _)) = record_at(file, HEADER_LEN as usize, None) else {
                return parsed;
            };
            parsed.damage.push(WalDamage {
                offset: 0,
                len: 0,
                next_record: 0,
                what: "the header".to_owned(),
            });
            generation
        }
    };
    parsed.generation = Some(generation);
    let mut offset = HEADER_LEN as usize;
    let mut last_group: Option<u64> = None;
    loop {
        if let Some((_, found)) = record_at(file, offset, Some(generation)) {
            parsed.records.push(found.payload.to_vec());
            last_group = Some(found.group);
            offset = found.end;
            continue;
        }
        match resume_after_damage(file, offset, generation, last_group) {
            Some(next) => {
                parsed.damage.push(WalDamage {
                    offset: offset as u64,
                    len: (next - offset) as u64,
                    next_record: parsed.records.len(),
                    what: format!(
                        "{} bytes of records after group {}",
                        next - offset,
                        last_group.map_or_else(|| "none".to_owned(), |g| g.to_string())
                    ),
                });
                offset = next;
            }
            None => break,
        }
    }
    parsed.end = offset as u64;
    parsed.next_group = last_group.map_or(0, |g| g + 1);
    parsed
}

/// Where reading goes on after bytes at `from` that do not verify (following a record of group
/// `last_group`): the next verified record of `generation`, provided the damaged bytes were
/// acknowledged. A group is written only after the one before it was synced, and any record the
/// damaged bytes held was of a group between `last_group` and that next record's; so they were
/// acknowledged if a whole group lies between the two, or if a verified record of a later group
/// than the next one follows. `None` means the damage is the torn tail.
fn resume_after_damage(
    file: &[u8],
    from: usize,
    generation: u64,
    last_group: Option<u64>,
) -> Option<usize> {
    let skipped_a_group = |group: u64| group > last_group.map_or(0, |g| g + 1);
    let generation_bytes = generation.to_le_bytes();
    let mut first: Option<(usize, u64)> = None;
    let mut offset = from + 1;
    while offset + RECORD_OVERHEAD <= file.len() {
        // Only where the generation matches is a checksum worth computing.
        let found = (file.get(offset + 4..offset + 12) == Some(&generation_bytes[..]))
            .then(|| record_at(file, offset, Some(generation)))
            .flatten();
        let Some((_, found)) = found else {
            offset += 1;
            continue;
        };
        match first {
            None if skipped_a_group(found.group) => return Some(offset),
            None => first = Some((offset, found.group)),
            Some((next, group)) if found.group > group => return Some(next),
            Some(_) => {}
        }
        offset = found.end;
    }
    None
}

/// Reads a file of the older format: records of the header's generation up to the first that
/// does not verify.
fn parse_v1(file: &[u8], generation: u64, mut parsed: Parsed) -> Parsed {
    parsed.generation = Some(generation);
    let mut offset = HEADER_LEN as usize;
    while let Some(head) = file.get(offset..offset + RECORD_HEAD_V1) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let record_generation = u64::from_le_bytes(head[4..12].try_into().unwrap_or_default());
        let end = offset + RECORD_OVERHEAD_V1 + len;
        let (Some(payload), Some(sum)) = (
            file.get(offset + RECORD_HEAD_V1..offset + RECORD_HEAD_V1 + len),
            file.get(end - CHECKSUM_LEN..end),
        ) else {
            break;
        };
        if record_generation != generation || checksum(&[head, payload]) != sum {
            break;
        }
        parsed.records.push(payload.to_vec());
        offset = end;
    }
    parsed.end = offset as u64;
    parsed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_survive_reopen_until_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, parsed) = Wal::open(&path, 4096).unwrap();
        assert!(parsed.records.is_empty());
        wal.restart().unwrap();
        wal.append(&[b"one".to_vec(), b"two".to_vec()]).unwrap();
        wal.append(&[b"three".to_vec()]).unwrap();
        drop(wal);
        let (mut wal, parsed) = Wal::open(&path, 4096).unwrap();
        assert_eq!(
            parsed.records,
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        wal.restart().unwrap();
        wal.append(&[b"four".to_vec()]).unwrap();
        drop(wal);
        // Older generations' records further in the file are not replayed.
        let (_, parsed) = Wal::open(&path, 4096).unwrap();
        assert_eq!(parsed.records, [b"four".to_vec()]);
    }

    #[test]
    fn a_torn_record_ends_recovery() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 4096).unwrap();
        wal.restart().unwrap();
        wal.append(&[b"kept".to_vec()]).unwrap();
        let torn_at = wal.offset;
        wal.append(&[b"torn".to_vec(), b"after".to_vec()]).unwrap();
        drop(wal);
        let file = OpenOptions::new().write(true).open(&path).unwrap();
        file.write_all_at(&[0xff], torn_at + 13).unwrap();
        let (_, parsed) = Wal::open(&path, 4096).unwrap();
        assert_eq!(parsed.records, [b"kept".to_vec()]);
        assert!(parsed.damage.is_empty(), "a torn tail is not damage");
        // Any prefix of a file parses without panicking, and never yields more.
        let contents = std::fs::read(&path).unwrap();
        for cut in 0..200 {
            assert!(parse(&contents[..cut]).records.len() <= 1);
        }
    }

    #[test]
    fn record_payloads_round_trip_and_refuse_damage() {
        let mut r = WalRecord::default();
        r.insert(b"k1", b"v1");
        r.raise(b"l", 9);
        let bytes = r.into_bytes();
        assert_eq!(
            parse_record(&bytes).unwrap(),
            [
                WalWrite::Insert(b"k1".to_vec(), b"v1".to_vec()),
                WalWrite::Raise(b"l".to_vec(), 9u64.to_be_bytes())
            ]
        );
        // A cut between writes leaves the earlier ones; a cut inside a write is an error.
        let first_write = 1 + 4 + 2 + 4 + 2;
        for cut in 1..bytes.len() {
            let parsed = parse_record(&bytes[..cut]);
            if cut == first_write {
                assert_eq!(parsed.unwrap().len(), 1);
            } else {
                assert!(parsed.is_err(), "cut at {cut}");
            }
        }
        let mut bad = bytes.clone();
        bad[0] = 7;
        assert!(parse_record(&bad).is_err());
    }

    #[test]
    fn fits_counts_record_overhead() {
        let dir = tempfile::tempdir().unwrap();
        let (mut wal, _) = Wal::open(&dir.path().join("wal"), 256).unwrap();
        wal.restart().unwrap();
        let big = vec![vec![0u8; wal.capacity() as usize]];
        assert!(wal.fits(&big));
        assert!(!wal.fits(&[vec![0u8; wal.capacity() as usize + 1]]));
        wal.append(&big).unwrap();
        assert!(!wal.fits(&[vec![]]));
    }

    /// Writes groups of records into a fresh WAL and returns the file's bytes with each
    /// record's offset.
    fn wal_of(groups: &[&[&str]]) -> (Vec<u8>, Vec<usize>) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 4096).unwrap();
        wal.restart().unwrap();
        let mut offsets = Vec::new();
        for group in groups {
            let payloads: Vec<Vec<u8>> = group.iter().map(|s| s.as_bytes().to_vec()).collect();
            let mut at = wal.offset as usize;
            for p in &payloads {
                offsets.push(at);
                at += p.len() + RECORD_OVERHEAD;
            }
            wal.append(&payloads).unwrap();
        }
        (std::fs::read(&path).unwrap(), offsets)
    }

    fn strings(records: &[Vec<u8>]) -> Vec<String> {
        records
            .iter()
            .map(|r| String::from_utf8(r.clone()).unwrap())
            .collect()
    }

    #[test]
    fn damage_before_a_later_group_is_reported_and_skipped() {
        let (mut file, at) = wal_of(&[&["one"], &["two"], &["three"]]);
        file[at[1] + RECORD_HEAD + 1] ^= 0x40;
        let parsed = parse(&file);
        assert_eq!(strings(&parsed.records), ["one", "three"]);
        assert_eq!(parsed.damage.len(), 1);
        assert_eq!(parsed.damage[0].offset, at[1] as u64);
        assert_eq!(parsed.damage[0].len, (at[2] - at[1]) as u64);
        assert_eq!(parsed.damage[0].next_record, 1);
        // A damaged length field too: reading resumes at the next record all the same.
        let (mut file, at) = wal_of(&[&["one"], &["two"], &["three"], &["four"]]);
        file[at[1] + 2] = 0x7f;
        let parsed = parse(&file);
        assert_eq!(strings(&parsed.records), ["one", "three", "four"]);
        assert_eq!(parsed.next_group, 4);
    }

    #[test]
    fn damage_in_the_last_group_is_a_torn_tail() {
        // The last group's write may have been torn by a crash: never acknowledged, so its
        // surviving records are not applied either (they would leave a hole).
        let (mut file, at) = wal_of(&[&["one"], &["two", "three"]]);
        file[at[1] + RECORD_HEAD] ^= 1;
        let parsed = parse(&file);
        assert_eq!(strings(&parsed.records), ["one"]);
        assert!(parsed.damage.is_empty());
        // With a later group after it, the same damage was acknowledged: kept and reported.
        let (mut file, at) = wal_of(&[&["one"], &["two", "three"], &["four"]]);
        file[at[1] + RECORD_HEAD] ^= 1;
        let parsed = parse(&file);
        assert_eq!(strings(&parsed.records), ["one", "three", "four"]);
        assert_eq!(parsed.damage.len(), 1);
    }

    #[test]
    fn a_damaged_header_is_reported_and_its_records_kept() {
        let (mut file, _) = wal_of(&[&["one"], &["two"]]);
        file[3] ^= 0x10;
        let parsed = parse(&file);
        assert_eq!(strings(&parsed.records), ["one", "two"]);
        assert_eq!(parsed.header, HeaderState::Missing);
        assert_eq!(parsed.damage.len(), 1);
        assert_eq!(parsed.damage[0].what, "the header");
    }

    #[test]
    fn a_restart_hides_older_records_even_from_a_damaged_header() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("wal");
        let (mut wal, _) = Wal::open(&path, 4096).unwrap();
        wal.restart().unwrap();
        wal.append(&[b"old".to_vec()]).unwrap();
        wal.restart().unwrap();
        drop(wal);
        let mut file = std::fs::read(&path).unwrap();
        file[9] ^= 0x01;
        let parsed = parse(&file);
        assert!(parsed.records.is_empty(), "{parsed:?}");
        // And the next restart wipes every older record.
        std::fs::write(&path, &file).unwrap();
        let (mut wal, _) = Wal::open(&path, 4096).unwrap();
        wal.restart().unwrap();
        drop(wal);
        let file = std::fs::read(&path).unwrap();
        assert!(file[HEADER_LEN as usize..].iter().all(|b| *b == 0));
    }

    #[test]
    fn the_older_format_is_still_read() {
        let mut file = Vec::new();
        file.extend_from_slice(MAGIC_V1);
        file.extend_from_slice(&3u64.to_le_bytes());
        let sum = checksum(&[&file]);
        file.extend_from_slice(&sum);
        for payload in [&b"a"[..], b"bc"] {
            let mut head = Vec::new();
            head.extend_from_slice(&(payload.len() as u32).to_le_bytes());
            head.extend_from_slice(&3u64.to_le_bytes());
            let sum = checksum(&[&head, payload]);
            file.extend_from_slice(&head);
            file.extend_from_slice(payload);
            file.extend_from_slice(&sum);
        }
        file.resize(512, 0);
        let parsed = parse(&file);
        assert_eq!(parsed.header, HeaderState::Older);
        assert_eq!(strings(&parsed.records), ["a", "bc"]);
    }

    #[test]
    fn no_prefix_yields_more_than_the_whole() {
        let (mut file, at) = wal_of(&[&["one"], &["two"], &["three"], &["four"]]);
        file[at[1] + RECORD_HEAD] ^= 1;
        let whole = parse(&file).records.len();
        for cut in 0..file.len() {
            assert!(parse(&file[..cut]).records.len() <= whole, "cut {cut}");
        }
    }

    #[test]
    fn random_damage_never_panics_nor_invents_records() {
        let (file, _) = wal_of(&[&["one", "two"], &["three"], &["four"], &["five", "six"]]);
        let payloads: Vec<Vec<u8>> = ["one", "two", "three", "four", "five", "six"]
            .iter()
            .map(|s| s.as_bytes().to_vec())
            .collect();
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for _ in 0..3000 {
            let mut damaged = file.clone();
            for _ in 0..1 + next() % 4 {
                let at = (next() % 400) as usize;
                damaged[at] ^= 1 << (next() % 8);
            }
            let parsed = parse(&damaged);
            // Every record read is one that was written, in order.
            let mut rest = payloads.iter();
            for record in &parsed.records {
                assert!(rest.any(|p| p == record), "{parsed:?}");
            }
        }
    }
}
