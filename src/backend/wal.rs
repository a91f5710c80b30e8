//! A small write-ahead log that makes the sled backend's appends durable with one `fdatasync`
//! per group of appends, instead of one sled flush each.
//!
//! Why: a sled 0.34 flush seals its I/O buffer and hands it to sled's thread pool, which wakes
//! every idle pool thread for each buffer; on a small machine that costs more than the disk
//! write. The WAL is a fixed-size, pre-zeroed file, so overwriting it and calling `fdatasync`
//! changes no file metadata and costs one device flush (~0.1 ms here).
//!
//! ```text
//! header = [magic "ckptwal1"][generation u64 LE][checksum 8]            (HEADER_LEN bytes)
//! record = [len u32 LE][generation u64 LE][payload: len bytes][checksum 8]
//! checksum = first 8 bytes of blake3 over everything before it in the header / record
//! ```
//! Records are written after the header, back to back. When the next group does not fit, the
//! owner makes its database durable by other means (a sled flush), and the WAL restarts with the
//! next generation: records of older generations left in the file are ignored. Recovery reads
//! records of the header's generation until the first one that does not verify (a torn write).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::Path;

const MAGIC: &[u8; 8] = b"ckptwal1";
const CHECKSUM_LEN: usize = 8;
/// Bytes of the header.
pub const HEADER_LEN: u64 = 8 + 8 + CHECKSUM_LEN as u64;
const RECORD_OVERHEAD: usize = 4 + 8 + CHECKSUM_LEN;

/// The WAL file, positioned after its last record.
#[derive(Debug)]
pub struct Wal {
    file: File,
    size: u64,
    generation: u64,
    offset: u64,
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
    /// it with the payloads of the records it holds, oldest first. The caller applies them and
    /// then calls [`Wal::restart`].
    pub fn open(path: &Path, size: u64) -> io::Result<(Wal, Vec<Vec<u8>>)> {
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
        let mut wal = Wal {
            file,
            size,
            generation: 0,
            offset: HEADER_LEN,
        };
        let records = wal.read_records()?;
        Ok((wal, records))
    }

    /// The payloads of the current generation's records; leaves the WAL positioned after them.
    fn read_records(&mut self) -> io::Result<Vec<Vec<u8>>> {
        let mut contents = vec![0u8; self.size as usize];
        self.file.read_exact_at(&mut contents, 0)?;
        let parsed = parse(&contents);
        if let Some(generation) = parsed.generation {
            self.generation = generation;
        }
        self.offset = parsed.end;
        Ok(parsed.records)
    }

    /// Whether `payloads` fit after the records already written.
    pub fn fits(&self, payloads: &[Vec<u8>]) -> bool {
        let need: u64 = payloads
            .iter()
            .map(|p| (p.len() + RECORD_OVERHEAD) as u64)
            .sum();
        self.offset + need <= self.size
    }

    /// Writes `payloads` as records and makes them durable (one write, one fdatasync).
    pub fn append(&mut self, payloads: &[Vec<u8>]) -> io::Result<()> {
        let mut buf = Vec::with_capacity(payloads.iter().map(|p| p.len() + RECORD_OVERHEAD).sum());
        for p in payloads {
            let len = u32::try_from(p.len())
                .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "WAL record too long"))?;
            let mut head = [0u8; 12];
            head[..4].copy_from_slice(&len.to_le_bytes());
            head[4..].copy_from_slice(&self.generation.to_le_bytes());
            buf.extend_from_slice(&head);
            buf.extend_from_slice(p);
            buf.extend_from_slice(&checksum(&[&head, p]));
        }
        self.file.write_all_at(&buf, self.offset)?;
        self.file.sync_data()?;
        self.offset += buf.len() as u64;
        Ok(())
    }

    /// Starts the next generation with no records. Call only once everything the WAL holds is
    /// durable elsewhere.
    pub fn restart(&mut self) -> io::Result<()> {
        self.generation += 1;
        let mut header = Vec::with_capacity(HEADER_LEN as usize);
        header.extend_from_slice(MAGIC);
        header.extend_from_slice(&self.generation.to_le_bytes());
        let sum = checksum(&[&header]);
        header.extend_from_slice(&sum);
        self.file.write_all_at(&header, 0)?;
        self.file.sync_data()?;
        self.offset = HEADER_LEN;
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

/// What a WAL file holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parsed {
    /// The header's generation; `None` when the header does not verify (a new or torn file).
    pub generation: Option<u64>,
    /// Payloads of the records of that generation, up to the first that does not verify.
    pub records: Vec<Vec<u8>>,
    /// Where the next record goes.
    pub end: u64,
}

/// Reads the records of a WAL file's contents. Never panics; anything that does not verify ends
/// the records (it is a write a crash tore, or an older generation's leftovers).
pub fn parse(file: &[u8]) -> Parsed {
    let mut parsed = Parsed {
        generation: None,
        records: Vec::new(),
        end: HEADER_LEN,
    };
    let Some((body, rest)) = file.split_at_checked(HEADER_LEN as usize - CHECKSUM_LEN) else {
        return parsed;
    };
    if &body[..8] != MAGIC || rest.get(..CHECKSUM_LEN) != Some(&checksum(&[body])[..]) {
        return parsed;
    }
    let generation = u64::from_le_bytes(body[8..16].try_into().unwrap_or_default());
    parsed.generation = Some(generation);
    let mut offset = HEADER_LEN as usize;
    while let Some(head) = file.get(offset..offset + 12) {
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let record_generation = u64::from_le_bytes(head[4..12].try_into().unwrap_or_default());
        let end = offset + RECORD_OVERHEAD + len;
        let (Some(payload), Some(sum)) = (
            file.get(offset + 12..offset + 12 + len),
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
        let (mut wal, records) = Wal::open(&path, 4096).unwrap();
        assert!(records.is_empty());
        wal.restart().unwrap();
        wal.append(&[b"one".to_vec(), b"two".to_vec()]).unwrap();
        wal.append(&[b"three".to_vec()]).unwrap();
        drop(wal);
        let (mut wal, records) = Wal::open(&path, 4096).unwrap();
        assert_eq!(
            records,
            [b"one".to_vec(), b"two".to_vec(), b"three".to_vec()]
        );
        wal.restart().unwrap();
        wal.append(&[b"four".to_vec()]).unwrap();
        drop(wal);
        // Older generations' records further in the file are not replayed.
        let (_, records) = Wal::open(&path, 4096).unwrap();
        assert_eq!(records, [b"four".to_vec()]);
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
        let (_, records) = Wal::open(&path, 4096).unwrap();
        assert_eq!(records, [b"kept".to_vec()]);
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
}
