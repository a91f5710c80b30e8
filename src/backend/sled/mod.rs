//! The embedded, durable [`Backend`], on [sled](https://docs.rs/sled/0.34.7).
//!
//! # Layout
//!
//! Everything is in sled's default tree, under one-byte key prefixes:
//!
//! | key | value |
//! | --- | --- |
//! | `b'e'` + `u16` BE length of the log name + log name + `u64` BE sequence | the frame |
//! | `b'l'` + log name | a high-water mark for the log's next sequence number, `u64` BE (present for every log ever appended to; the next sequence number is the larger of it and one past the last frame) |
//! | `b'b'` + 32-byte hash | the blob |
//! | `b'r'` + key | a derived record ([`SideTable`]; not in the write-ahead log: a crash may lose it) |
//!
//! Beside sled's files, `ckpt-wal` is the write-ahead log of synced appends ([`wal`]).
//!
//! # Concurrency and durability
//!
//! A process owns a sled directory exclusively (sled locks it), so an in-process mutex held while
//! the next sequence numbers are read, checked and the writes applied makes [`Backend::commit`] a
//! compare-and-append. An append of one frame is applied as plain inserts (blobs, frame, mark),
//! of several frames as one atomic batch: sled makes a batch atomic by sealing its I/O buffer and
//! handing it to its thread pool, which on a 2-core machine costs more than the writes.
//!
//! With `sync` on, an append returns once its writes are in the write-ahead log and the log has
//! been `fdatasync`ed; concurrent appends share one write and one sync (group commit: the first
//! to need one writes every record queued before it, the others wait for it). sled itself flushes
//! on its own schedule; when the WAL is full, or before a truncate or blob delete (which a replay
//! must not undo), sled is flushed and the WAL restarts. Opening replays the WAL, so a crash
//! (power loss included) loses no acknowledged append, and never half of one.
//!
//! # Files of this module
//!
//! This file holds the type, its key layout and the [`Backend`], [`Rewrite`] and [`Inspect`]
//! implementations; `open.rs` the classification of open failures and the read-only copy;
//! `recover.rs` the replay of the WAL and the check against the heads file at open;
//! `compact.rs` [`Maintain`](super::Maintain) and the offline [`compact()`]; [`wal`] and [`heads`]
//! the two file formats beside sled's own.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use self::compact::finish_compaction;
use self::open::{open_error, open_sled, OpenFailure, ReadOnlyCopy};
use self::recover::{recover, Witness};
use self::wal::{Wal, WalRecord};
use super::{
    Backend, Blob, BlobHash, Capabilities, Inspect, LogAppend, RecordedDamage, Rewrite,
    SearchTable, SideTable,
};
use crate::error::{Error, Result};
use crate::hash::hex;

mod compact;
mod open;
mod recover;

pub use self::compact::compact;
/// The write-ahead log and the heads file, also at `ckpt::backend::{wal, heads}` (they build
/// without the `sled` feature, for fuzzing).
pub use super::{heads, wal};

/// Runs `f`, which blocks on the disk: in place on a multi-threaded tokio runtime (through
/// `block_in_place`, which hands this worker's other tasks to another thread), else on tokio's
/// blocking pool. In place spares a group write two thread handoffs (to a pool thread and back),
/// which cost more than its `fdatasync`: one writer's saves on issue 15's `long` shape, 6,296 ->
/// 8,582 saves/s (medians of 5 interleaved runs; 4,673 -> 6,194 with two busy loops beside).
async fn run_blocking<T: Send + 'static>(
    f: impl FnOnce() -> io::Result<T> + Send + 'static,
) -> io::Result<T> {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        Ok(_) => tokio::task::spawn_blocking(f)
            .await
            .map_err(io::Error::other)?,
        // Not polled by tokio at all: nothing to hand the work to.
        Err(_) => f(),
    }
}

/// The backend's name in errors.
const NAME: &str = "sled";
/// sled's segment size (a power of two).
const SEGMENT_SIZE: usize = 64 * 1024;
/// Key prefix of a frame.
const FRAME: u8 = b'e';
/// Key prefix of a log's next sequence number.
const LOG: u8 = b'l';
/// Key prefix of a blob.
const BLOB: u8 = b'b';
/// Key prefix of a derived record ([`SideTable`]).
const RECORD: u8 = b'r';
/// Key prefix of a search index entry ([`SearchTable`]).
const SEARCH: u8 = b's';
/// Key prefix of damage found at an open (acknowledged frames lost), kept to be reported by
/// every later open and `verify`.
const DAMAGE: u8 = b'x';

/// A [`Backend`] storing everything in one sled database directory; see the
/// [module documentation](self).
///
/// Only one `SledBackend` (in one process) may have a directory open at a time; share it as
/// `Arc<SledBackend>` (or `Arc<dyn Backend>`). Dropping the last reference closes the database and
/// releases the directory.
pub struct SledBackend {
    db: sled::Db,
    path: PathBuf,
    sync: bool,
    /// Held while an append (or a truncate) reads, checks and writes the high-water marks.
    append_lock: Mutex<()>,
    /// How many append batches have been applied; an append's ticket is the value after its own.
    written: AtomicU64,
    /// Every append whose ticket is at most this is durable.
    flushed: AtomicU64,
    /// Held by the one task flushing for the group.
    flush_lock: tokio::sync::Mutex<()>,
    /// With `sync`: the write-ahead log that makes appends durable, and the records of applied
    /// appends waiting for the next group write (pushed, and tickets drawn, under this lock).
    wal: Option<Arc<Mutex<Wal>>>,
    wal_pending: Mutex<Vec<Vec<u8>>>,
    /// The heads file and the heads raised since it last recorded them.
    witness: Arc<Witness>,
    /// Appends up to this ticket were in a group write that failed.
    failed: AtomicU64,
    /// How many flushes were made, to check that appends share them.
    #[cfg(test)]
    flushes: AtomicU64,
    /// For a store whose directory cannot be written: the private copy it was opened from
    /// (removed when the backend is dropped: declared last, so the database closes first).
    read_only: Option<ReadOnlyCopy>,
    /// This directory in [`OPEN_HERE`], removed on drop.
    registered: Option<PathBuf>,
}

impl fmt::Debug for SledBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Not `sled::Db`'s own Debug, which prints the whole database.
        f.debug_struct("SledBackend")
            .field("path", &self.path)
            .field("sync", &self.sync)
            .finish_non_exhaustive()
    }
}

/// An [`Error::Backend`] from the sled backend.
fn backend_error(
    context: impl Into<String>,
    source: impl std::error::Error + Send + Sync + 'static,
) -> Error {
    Error::Backend {
        backend: NAME,
        context: context.into(),
        source: Box::new(source),
    }
}

/// The key prefix of every frame of `log`: `b'e'`, the name's length (`u16` BE), the name.
fn frame_prefix(log: &str) -> Result<Vec<u8>> {
    let len = u16::try_from(log.len()).map_err(|_| {
        Error::InvalidInput(format!(
            "log name of {} bytes is too long for the sled backend (at most {} bytes)",
            log.len(),
            u16::MAX
        ))
    })?;
    let mut key = Vec::with_capacity(1 + 2 + log.len() + 8);
    key.push(FRAME);
    key.extend_from_slice(&len.to_be_bytes());
    key.extend_from_slice(log.as_bytes());
    Ok(key)
}

/// The key of frame `seq` of the log whose [`frame_prefix`] is `prefix`.
fn frame_key(prefix: &[u8], seq: u64) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + 8);
    key.extend_from_slice(prefix);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key of `log`'s next sequence number.
fn log_key(log: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(1 + log.len());
    key.push(LOG);
    key.extend_from_slice(log.as_bytes());
    key
}

/// The key of a blob.
fn blob_key(hash: &BlobHash) -> [u8; 33] {
    let mut key = [0u8; 33];
    key[0] = BLOB;
    key[1..].copy_from_slice(hash);
    key
}

// Lowercase hex, for messages.

impl SledBackend {
    /// Opens (creating it if needed) the sled database in the directory `path`.
    ///
    /// With `sync`, every append is flushed to disk before it returns (concurrent appends share a
    /// flush); without it, sled flushes on its own schedule (about every half second) and on
    /// [`Backend::flush`], and a crash may lose the latest appends (never half of one).
    ///
    /// Opening replays the write-ahead log and compares every log with the heads file (see
    /// [`heads`]): acknowledged frames that sled's files lost are recorded as damage
    /// ([`Inspect::recorded_damage`]) and their sequence numbers are never handed out again.
    ///
    /// Fails with [`Error::Busy`] when another process (or this one) has the directory open,
    /// [`Error::Corrupt`] when sled cannot read its own files (a panic inside sled included),
    /// and [`Error::Backend`] saying which of permission denied, read-only file system, no space
    /// left or an unsupported format stopped it, with what to do.
    pub fn open(path: &Path, sync: bool) -> Result<Self> {
        finish_compaction(path)?;
        std::fs::create_dir_all(path)
            .map_err(|e| open_error(path, "creating the database directory", OpenFailure::Io(e)))?;
        let (db, copy) = match open_sled(path) {
            Ok(db) => (db, None),
            Err(failure) if failure.refused_writing() && path.join("db").is_file() => {
                // A backup or a mounted snapshot: read it from a private copy (sled writes even
                // to open), and refuse every write.
                let copy = ReadOnlyCopy::of(path)?;
                let db = open_sled(&copy.dir)
                    .map_err(|f| open_error(path, "opening a copy of the database", f))?;
                (db, Some(copy))
            }
            Err(failure) => return Err(open_error(path, "opening the database", failure)),
        };
        let recover_in = copy.as_ref().map_or(path, |c| c.dir.as_path());
        let (wal, witness) = recover(&db, recover_in, sync)?;
        let registered = match copy {
            Some(_) => None,
            None => register_open_here(path),
        };
        Ok(SledBackend {
            db,
            path: path.to_path_buf(),
            sync,
            append_lock: Mutex::new(()),
            written: AtomicU64::new(0),
            flushed: AtomicU64::new(0),
            flush_lock: tokio::sync::Mutex::new(()),
            wal: wal.map(|w| Arc::new(Mutex::new(w))),
            wal_pending: Mutex::new(Vec::new()),
            witness: Arc::new(witness),
            failed: AtomicU64::new(0),
            #[cfg(test)]
            flushes: AtomicU64::new(0),
            read_only: copy,
            registered,
        })
    }

    /// Whether the store was opened read-only (its directory cannot be written: see
    /// [`SledBackend::open`]).
    pub fn is_read_only(&self) -> bool {
        self.read_only.is_some()
    }

    /// Refuses a write to a store opened read-only.
    fn check_writable(&self, doing: &str) -> Result<()> {
        match &self.read_only {
            None => Ok(()),
            Some(_) => Err(backend_error(
                format!(
                    "{doing}: the sled store at {} is read-only (its directory cannot be \
                     written: a backup or a read-only mount), so it was opened for reading \
                     only; copy the directory somewhere writable to change it",
                    self.path.display()
                ),
                io::Error::from(io::ErrorKind::ReadOnlyFilesystem),
            )),
        }
    }

    /// The database directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Takes the append lock. Nothing is left half-done under it (a batch applies or not), so a
    /// poisoned lock is taken as it is.
    fn append_lock(&self) -> MutexGuard<'_, ()> {
        self.append_lock
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The next sequence number of `log` (1 when it was never appended to): one past its last
    /// frame, or its stored high-water mark if that is higher (after a truncation, or an append
    /// whose frame a crash lost after its mark was written).
    fn read_next_seq(&self, log: &str) -> Result<u64> {
        next_seq_in(&self.db, log)
    }

    /// Checks every part of an append against the stored high-water marks (a log appearing more
    /// than once is checked against what the earlier parts leave it at) and returns each part's
    /// first sequence number. Called with the append lock held.
    fn check_appends(&self, appends: &[LogAppend]) -> Result<Vec<u64>> {
        let mut pending: std::collections::HashMap<&str, u64> = std::collections::HashMap::new();
        let mut starts = Vec::with_capacity(appends.len());
        for append in appends {
            let actual = match pending.get(append.log.as_str()) {
                Some(&next) => next,
                None => self.read_next_seq(&append.log)?,
            };
            if actual != append.expected_seq {
                return Err(Error::Conflict {
                    log: append.log.clone(),
                    expected: append.expected_seq,
                    actual,
                });
            }
            let next = u64::try_from(append.frames.len())
                .ok()
                .and_then(|len| actual.checked_add(len))
                .ok_or_else(|| {
                    Error::InvalidInput(format!(
                        "appending {} frames to log {:?} at sequence {actual} overflows the \
                         sequence numbers",
                        append.frames.len(),
                        append.log
                    ))
                })?;
            pending.insert(append.log.as_str(), next);
            starts.push(actual);
        }
        Ok(starts)
    }

    /// Returns once the append batch numbered `ticket` is durable, flushing for the whole group
    /// when no one else is.
    async fn wait_durable(&self, ticket: u64) -> Result<()> {
        if self.flushed.load(Ordering::Acquire) >= ticket {
            return Ok(());
        }
        let _leader = self.flush_lock.lock().await;
        if self.flushed.load(Ordering::Acquire) >= ticket {
            // The previous leader's flush started after our batch was applied.
            return Ok(());
        }
        if self.failed.load(Ordering::Acquire) >= ticket {
            return Err(backend_error(
                format!("making appends durable in {}", self.path.display()),
                io::Error::other("the group write that carried this append failed"),
            ));
        }
        match &self.wal {
            Some(wal) => self.write_wal_group(wal).await,
            None => self.flush_everything("flushing appends to disk").await,
        }
    }

    /// Writes every queued WAL record in one write and one fdatasync (called by the group's
    /// leader, holding the flush lock). When they do not fit, flushes sled instead, which makes
    /// everything applied durable, and restarts the WAL.
    async fn write_wal_group(&self, wal: &Arc<Mutex<Wal>>) -> Result<()> {
        let (records, target) = {
            let mut pending = lock(&self.wal_pending);
            (
                std::mem::take(&mut *pending),
                self.written.load(Ordering::Acquire),
            )
        };
        let wal = Arc::clone(wal);
        let db = self.db.clone();
        let witness = Arc::clone(&self.witness);
        let write = move || -> io::Result<()> {
            let mut wal = lock(&wal);
            if wal.fits(&records) && wal.append(&records).is_ok() {
                return Ok(());
            }
            // Too big for the WAL, or the WAL write failed: a sled flush makes everything
            // applied durable, after which the WAL may start over.
            witness.seal(&db)?;
            wal.restart()
        };
        let written = run_blocking(write)
            .await
            .map_err(|e| backend_error(format!("writing the WAL in {}", self.path.display()), e));
        if let Err(e) = written {
            // The records are gone from the queue: their writers must not be told they are
            // durable by a later group.
            self.failed.fetch_max(target, Ordering::AcqRel);
            return Err(e);
        }
        self.flushed.fetch_max(target, Ordering::AcqRel);
        #[cfg(test)]
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Before a write that the WAL cannot undo on replay (a truncate, a blob delete): makes
    /// everything applied durable in sled and empties the WAL, so no record replays data the
    /// write removes.
    async fn checkpoint_wal(&self) -> Result<()> {
        let Some(wal) = &self.wal else {
            return Ok(());
        };
        let _leader = self.flush_lock.lock().await;
        let target = {
            let mut pending = lock(&self.wal_pending);
            pending.clear();
            self.written.load(Ordering::Acquire)
        };
        let wal = Arc::clone(wal);
        let db = self.db.clone();
        let witness = Arc::clone(&self.witness);
        tokio::task::spawn_blocking(move || -> io::Result<()> {
            witness.seal(&db)?;
            lock(&wal).restart()
        })
        .await
        .map_err(|e| {
            backend_error(
                format!("checkpointing the WAL in {}", self.path.display()),
                e,
            )
        })?
        .map_err(|e| {
            backend_error(
                format!("checkpointing the WAL in {}", self.path.display()),
                e,
            )
        })?;
        self.flushed.fetch_max(target, Ordering::AcqRel);
        Ok(())
    }

    /// A batch writing those of `blobs` that are stored (`existing`: rekey replaces them) or
    /// that are not (puts are idempotent); `None` when there are none.
    fn blob_batch(
        &self,
        blobs: Vec<(BlobHash, Vec<u8>)>,
        existing: bool,
    ) -> Result<Option<sled::Batch>> {
        let mut batch = sled::Batch::default();
        let mut any = false;
        for (hash, bytes) in blobs {
            let key = blob_key(&hash);
            let present = self
                .db
                .contains_key(key)
                .map_err(|e| backend_error(format!("looking up blob {}", hex(&hash)), e))?;
            if present == existing {
                batch.insert(&key[..], bytes);
                any = true;
            }
        }
        Ok(any.then_some(batch))
    }

    /// Flushes sled, then records every batch applied before the flush started as durable.
    async fn flush_everything(&self, context: &str) -> Result<()> {
        let target = self.written.load(Ordering::Acquire);
        // sled's own flush_async hands the work to its thread pool and back, which costs more
        // than the fsync itself here; a blocking flush on tokio's blocking pool is faster.
        let db = self.db.clone();
        let witness = Arc::clone(&self.witness);
        tokio::task::spawn_blocking(move || witness.seal(&db))
            .await
            .map_err(|e| backend_error(format!("{context} in {}", self.path.display()), e))?
            .map_err(|e| backend_error(format!("{context} in {}", self.path.display()), e))?;
        self.flushed.fetch_max(target, Ordering::AcqRel);
        #[cfg(test)]
        self.flushes.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

#[async_trait]
impl Backend for SledBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn next_seq(&self, log: &str) -> Result<u64> {
        self.read_next_seq(log)
    }

    fn capabilities(&self) -> Capabilities<'_> {
        let mut caps = Capabilities::new();
        // sled lets one process open a directory.
        caps.single_process = true;
        caps.rewrite = Some(self);
        caps.maintain = Some(self);
        caps.inspect = Some(self);
        caps.side_table = Some(self);
        caps.search_table = Some(self);
        caps
    }

    /// One atomic batch for blobs and frames, and one (shared) flush.
    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()> {
        self.check_writable("appending")?;
        let ticket = {
            let _guard = self.append_lock();
            let starts = self.check_appends(&appends)?;
            // Writes in order: blobs, then each log's frames and its new next sequence number.
            let mut writes: Vec<(Vec<u8>, Vec<u8>)> = Vec::new();
            let mut record = WalRecord::default();
            let logging = self.wal.is_some();
            for (hash, bytes) in blobs {
                // Content-addressed: rewriting a present blob stores the same content again,
                // which is cheaper than looking each one up first.
                writes.push((blob_key(&hash).to_vec(), bytes));
            }
            let mut logs = Vec::new();
            let mut heads = Vec::new();
            let mut frames = 0;
            for (append, start) in appends.into_iter().zip(starts) {
                if append.frames.is_empty() {
                    // Only a check: an empty append does not create the log.
                    continue;
                }
                let prefix = frame_prefix(&append.log)?;
                let mut seq = start;
                for frame in append.frames {
                    writes.push((frame_key(&prefix, seq), frame));
                    seq += 1;
                    frames += 1;
                }
                // A log appearing twice is written twice; the later value (the higher one) wins.
                if logging {
                    record.raise(&log_key(&append.log), seq);
                }
                writes.push((log_key(&append.log), seq.to_be_bytes().to_vec()));
                heads.push((append.log.clone(), seq));
                logs.push(append.log);
            }
            if writes.is_empty() {
                return Ok(());
            }
            if logging {
                for (key, value) in writes.iter().filter(|(k, _)| k[0] != LOG) {
                    record.insert(key, value);
                }
            }
            let context = || format!("appending to logs {logs:?}");
            if frames == 1 {
                // One frame: inserts in order (blobs, frame, high-water mark). A crash between
                // them leaves at most blobs nothing references, or a complete frame the
                // high-water mark does not cover yet, which `read_next_seq` counts. sled makes a
                // batch atomic by sealing its I/O buffer, which costs more than the writes.
                let mut done: Vec<Vec<u8>> = Vec::with_capacity(writes.len());
                for (key, value) in writes {
                    if let Err(e) = self.db.insert(&key, value) {
                        // Take back a frame already written, so a failed append leaves no
                        // checkpoint behind (blobs left over are reclaimed by gc).
                        for k in done.iter().filter(|k| k[0] == FRAME) {
                            let _ = self.db.remove(k);
                        }
                        return Err(backend_error(context(), e));
                    }
                    done.push(key);
                }
            } else {
                let mut batch = sled::Batch::default();
                for (key, value) in writes {
                    batch.insert(key, value);
                }
                self.db
                    .apply_batch(batch)
                    .map_err(|e| backend_error(context(), e))?;
            }
            // Noted before the record is queued: a seal that takes the record's place (a
            // full WAL) then records the head too.
            for (log, next) in &heads {
                self.witness.raise(log, *next);
            }
            // The record joins the queue in the order the batch was applied, and its ticket is
            // drawn with it, so a group write of the queue covers exactly the tickets drawn.
            let mut pending = lock(&self.wal_pending);
            if logging {
                pending.push(record.into_bytes());
            }
            self.written.fetch_add(1, Ordering::AcqRel) + 1
        };
        if self.sync {
            self.wait_durable(ticket).await?;
        }
        Ok(())
    }

    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let prefix = frame_prefix(log)?;
        let start = frame_key(&prefix, from);
        let end = frame_key(&prefix, u64::MAX);
        let mut out = Vec::new();
        for item in self.db.range(start..=end).take(limit) {
            let (key, value) = item.map_err(|e| {
                backend_error(format!("reading log {log:?} from sequence {from}"), e)
            })?;
            let seq = key
                .get(prefix.len()..)
                .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
                .map(u64::from_be_bytes)
                .ok_or_else(|| Error::Corrupt {
                    location: format!("log {log:?}"),
                    reason: format!("frame key {} does not end in an 8-byte sequence", hex(&key)),
                })?;
            out.push((seq, value.to_vec()));
        }
        Ok(out)
    }

    async fn list_logs(&self) -> Result<Vec<String>> {
        let mut logs = Vec::new();
        for item in self.db.scan_prefix([LOG]) {
            let (key, _) = item.map_err(|e| backend_error("listing the logs", e))?;
            let name = key.get(1..).unwrap_or_default();
            let name = String::from_utf8(name.to_vec()).map_err(|_| Error::Corrupt {
                location: format!("log key {}", hex(&key)),
                reason: "the log name is not valid UTF-8".to_owned(),
            })?;
            logs.push(name);
        }
        Ok(logs)
    }

    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        self.check_writable("raising a log's next sequence number")?;
        let ticket = {
            let _guard = self.append_lock();
            if self.read_next_seq(log)? >= next_seq {
                return Ok(());
            }
            self.db
                .insert(log_key(log), &next_seq.to_be_bytes()[..])
                .map_err(|e| {
                    backend_error(format!("raising the next sequence of log {log:?}"), e)
                })?;
            self.witness.raise(log, next_seq);
            let mut pending = lock(&self.wal_pending);
            if self.wal.is_some() {
                let mut record = WalRecord::default();
                record.raise(&log_key(log), next_seq);
                pending.push(record.into_bytes());
            }
            self.written.fetch_add(1, Ordering::AcqRel) + 1
        };
        if self.sync {
            self.wait_durable(ticket).await?;
        }
        Ok(())
    }

    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        self.check_writable("truncating a log")?;
        self.checkpoint_wal().await?;
        let prefix = frame_prefix(log)?;
        let start = frame_key(&prefix, 0);
        let end = frame_key(&prefix, before);
        // Under the append lock, so that a truncate and an append are one before the other.
        let _guard = self.append_lock();
        let mut batch = sled::Batch::default();
        let mut any = false;
        for key in self.db.range(start..end).keys() {
            let key = key.map_err(|e| {
                backend_error(
                    format!("reading log {log:?} to truncate it before {before}"),
                    e,
                )
            })?;
            batch.remove(key);
            any = true;
        }
        if any {
            self.db.apply_batch(batch).map_err(|e| {
                backend_error(
                    format!("truncating log {log:?} before sequence {before}"),
                    e,
                )
            })?;
        }
        Ok(())
    }

    async fn put_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.check_writable("storing blobs")?;
        if let Some(batch) = self.blob_batch(blobs, false)? {
            self.db
                .apply_batch(batch)
                .map_err(|e| backend_error("storing blobs", e))?;
        }
        Ok(())
    }

    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut out = Vec::with_capacity(hashes.len());
        for hash in hashes {
            let value = self
                .db
                .get(blob_key(hash))
                .map_err(|e| backend_error(format!("reading blob {}", hex(hash)), e))?;
            out.push(value.map(|v| v.to_vec()));
        }
        Ok(out)
    }

    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        let mut missing = Vec::new();
        for hash in hashes {
            let present = self
                .db
                .contains_key(blob_key(hash))
                .map_err(|e| backend_error(format!("looking up blob {}", hex(hash)), e))?;
            if !present {
                missing.push(*hash);
            }
        }
        Ok(missing)
    }

    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        let mut hashes = Vec::new();
        for key in self.db.scan_prefix([BLOB]).keys() {
            let key = key.map_err(|e| backend_error("listing the blobs", e))?;
            let hash = key
                .get(1..)
                .and_then(|rest| BlobHash::try_from(rest).ok())
                .ok_or_else(|| Error::Corrupt {
                    location: format!("blob key {}", hex(&key)),
                    reason: "the key is not a 32-byte hash".to_owned(),
                })?;
            hashes.push(hash);
        }
        Ok(hashes)
    }

    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        self.check_writable("deleting blobs")?;
        if hashes.is_empty() {
            return Ok(());
        }
        self.checkpoint_wal().await?;
        let mut batch = sled::Batch::default();
        for hash in hashes {
            batch.remove(&blob_key(hash)[..]);
        }
        self.db
            .apply_batch(batch)
            .map_err(|e| backend_error(format!("deleting {} blobs", hashes.len()), e))
    }

    async fn flush(&self) -> Result<()> {
        self.flush_everything("flushing to disk").await
    }
}

#[async_trait]
impl Rewrite for SledBackend {
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.check_writable("rewriting frames")?;
        // The WAL must not replay the old bytes over the new ones after a crash.
        self.checkpoint_wal().await?;
        let prefix = frame_prefix(log)?;
        let mut batch = sled::Batch::default();
        {
            let _guard = self.append_lock();
            for (seq, bytes) in frames {
                let key = frame_key(&prefix, seq);
                let present = self
                    .db
                    .contains_key(&key)
                    .map_err(|e| backend_error(format!("looking up log {log:?} seq {seq}"), e))?;
                if present {
                    batch.insert(key, bytes);
                }
            }
            self.db
                .apply_batch(batch)
                .map_err(|e| backend_error(format!("rewriting frames of log {log:?}"), e))?;
        }
        self.flush_everything("flushing rewritten frames").await
    }

    async fn rewrite_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.check_writable("rewriting blobs")?;
        self.checkpoint_wal().await?;
        if let Some(batch) = self.blob_batch(blobs, true)? {
            self.db
                .apply_batch(batch)
                .map_err(|e| backend_error("rewriting blobs", e))?;
        }
        self.flush_everything("flushing rewritten blobs").await
    }
}

#[async_trait]
impl Inspect for SledBackend {
    async fn recorded_damage(&self) -> Result<Vec<RecordedDamage>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix([DAMAGE]) {
            let (key, value) = item.map_err(|e| backend_error("reading recorded damage", e))?;
            out.push(
                serde_json::from_slice(&value).unwrap_or_else(|e| RecordedDamage {
                    log: None,
                    lost: None,
                    detail: format!("a damage record ({}) is unreadable: {e}", hex(&key)),
                }),
            );
        }
        Ok(out)
    }

    async fn check_storage(&self) -> Result<Vec<String>> {
        // sled has no consistency check of its own; rollbacks are caught on open and recorded.
        Ok(Vec::new())
    }

    async fn log_problems(&self, _log: &str) -> Result<Vec<String>> {
        // The stored next sequence number is raised past the last frame on every read.
        Ok(Vec::new())
    }
}

impl Drop for SledBackend {
    /// A clean close leaves an empty WAL: sled is flushed (it holds everything the WAL does) and
    /// the WAL restarted, so only a crash leaves records to replay.
    fn drop(&mut self) {
        let sealed = self.witness.seal(&self.db).is_ok();
        if let (true, Some(wal)) = (sealed, &self.wal) {
            let _ = lock(wal).restart();
        }
        if let Some(dir) = &self.registered {
            lock(&OPEN_HERE).remove(dir);
        }
    }
}

/// The directories this process has open (canonical paths). sled's lock cannot tell this
/// process from another, so a second open here would be blamed on "another process".
static OPEN_HERE: Mutex<std::collections::BTreeSet<PathBuf>> =
    Mutex::new(std::collections::BTreeSet::new());

/// Records `path` as open in this process; returns what to remove when it closes.
fn register_open_here(path: &Path) -> Option<PathBuf> {
    let dir = path.canonicalize().ok()?;
    lock(&OPEN_HERE).insert(dir.clone());
    Some(dir)
}

/// Whether this process has the directory `path` open.
pub(super) fn is_open_here(path: &Path) -> bool {
    path.canonicalize()
        .is_ok_and(|dir| lock(&OPEN_HERE).contains(&dir))
}

/// Takes a mutex whose data stays consistent however a holder ended (nothing is left half-done
/// under these locks), so a poisoned one is taken as it is.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The next sequence number of `log` in `db` (1 when it was never appended to): one past its
/// last frame, or its stored high-water mark if that is higher (after a truncation, or an append
/// whose frame a crash lost after its mark was written).
/// The key of derived record `key`.
fn record_key(key: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(RECORD);
    k.extend_from_slice(key.as_bytes());
    k
}

/// Derived records live in sled's tree beside the frames, but outside the write-ahead log: they
/// are a cache, written without a sync, and a crash may lose the newest of them.
#[async_trait]
impl SideTable for SledBackend {
    async fn put_records(&self, records: Vec<(String, Vec<u8>)>) -> Result<()> {
        for (key, value) in records {
            self.db
                .insert(record_key(&key), value)
                .map_err(|e| backend_error("writing a derived record", e))?;
        }
        Ok(())
    }

    async fn get_records(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter()
            .map(|key| {
                self.db
                    .get(record_key(key))
                    .map(|v| v.map(|v| v.to_vec()))
                    .map_err(|e| backend_error("reading a derived record", e))
            })
            .collect()
    }

    async fn scan_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let mut out = Vec::new();
        for item in self.db.scan_prefix(record_key(prefix)) {
            let (key, value) = item.map_err(|e| backend_error("listing derived records", e))?;
            // A key that is not UTF-8 was not written by this code: not a record of ours.
            if let Ok(key) = std::str::from_utf8(&key[1..]) {
                out.push((key.to_owned(), value.to_vec()));
            }
        }
        Ok(out)
    }

    async fn delete_records(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            self.db
                .remove(record_key(key))
                .map_err(|e| backend_error("deleting a derived record", e))?;
        }
        Ok(())
    }

    async fn log_tails(&self) -> Result<Vec<(String, u64)>> {
        let logs = self.list_logs().await?;
        logs.into_iter()
            .map(|log| {
                let next = next_seq_in(&self.db, &log)?;
                Ok((log, next))
            })
            .collect()
    }
}

fn search_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(1 + key.len());
    k.push(SEARCH);
    k.extend_from_slice(key);
    k
}

/// Search index entries live in sled's tree beside the frames, outside the write-ahead log
/// like derived records: one call is one atomic sled batch, durable at sled's next flush.
#[async_trait]
impl SearchTable for SledBackend {
    async fn write_index(&self, put: Vec<(Vec<u8>, Vec<u8>)>, delete: Vec<Vec<u8>>) -> Result<()> {
        let mut batch = sled::Batch::default();
        for key in delete {
            batch.remove(search_key(&key));
        }
        for (key, value) in put {
            batch.insert(search_key(&key), value);
        }
        self.db
            .apply_batch(batch)
            .map_err(|e| backend_error("writing the search index", e))
    }

    async fn scan_index(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let full = search_key(prefix);
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(search_key(a)),
            _ => Bound::Included(full.clone()),
        };
        let mut out = Vec::new();
        for item in self.db.range::<Vec<u8>, _>((start, Bound::Unbounded)) {
            let (key, value) = item.map_err(|e| backend_error("reading the search index", e))?;
            if !key.starts_with(&full) || out.len() == limit {
                break;
            }
            out.push((key[1..].to_vec(), value.to_vec()));
        }
        Ok(out)
    }

    async fn get_index(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        keys.iter()
            .map(|key| {
                self.db
                    .get(search_key(key))
                    .map(|v| v.map(|v| v.to_vec()))
                    .map_err(|e| backend_error("reading the search index", e))
            })
            .collect()
    }

    async fn clear_index(&self) -> Result<()> {
        let mut batch = sled::Batch::default();
        for item in self.db.scan_prefix([SEARCH]) {
            let (key, _) = item.map_err(|e| backend_error("reading the search index", e))?;
            batch.remove(key);
        }
        self.db
            .apply_batch(batch)
            .map_err(|e| backend_error("clearing the search index", e))
    }

    async fn index_size(&self) -> Result<(u64, u64)> {
        let (mut entries, mut bytes) = (0, 0);
        for item in self.db.scan_prefix([SEARCH]) {
            let (key, value) = item.map_err(|e| backend_error("reading the search index", e))?;
            entries += 1;
            bytes += (key.len() - 1 + value.len()) as u64;
        }
        Ok((entries, bytes))
    }
}

fn next_seq_in(db: &sled::Db, log: &str) -> Result<u64> {
    let value = db
        .get(log_key(log))
        .map_err(|e| backend_error(format!("reading the next sequence of log {log:?}"), e))?;
    let mark = match value {
        None => 1,
        Some(bytes) => {
            let bytes: [u8; 8] = bytes.as_ref().try_into().map_err(|_| Error::Corrupt {
                location: format!("log {log:?}"),
                reason: format!(
                    "its stored next sequence number is {} bytes long, expected 8",
                    bytes.len()
                ),
            })?;
            u64::from_be_bytes(bytes)
        }
    };
    Ok(mark.max(last_frame_in(db, log)?.map_or(1, |s| s.saturating_add(1))))
}

/// The sequence number of the last frame of `log` in `db`, if it has one.
fn last_frame_in(db: &sled::Db, log: &str) -> Result<Option<u64>> {
    let prefix = frame_prefix(log)?;
    let last = db
        .range(frame_key(&prefix, 0)..=frame_key(&prefix, u64::MAX))
        .keys()
        .next_back()
        .transpose()
        .map_err(|e| backend_error(format!("reading the last frame of log {log:?}"), e))?;
    last.map(|key| {
        key.get(prefix.len()..)
            .and_then(|rest| <[u8; 8]>::try_from(rest).ok())
            .map(u64::from_be_bytes)
            .ok_or_else(|| Error::Corrupt {
                location: format!("log {log:?}"),
                reason: format!("frame key {} does not end in an 8-byte sequence", hex(&key)),
            })
    })
    .transpose()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::open::catching_panics;
    use super::recover::{HEADS_FILE, WAL_FILE};
    use super::*;
    use crate::backend::BackendExt;
    use crate::backend::Maintain;

    fn frames(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn part(log: &str, expected_seq: u64, items: &[&str]) -> LogAppend {
        LogAppend::new(log, expected_seq, frames(items))
    }

    fn open(sync: bool) -> (tempfile::TempDir, SledBackend) {
        let dir = tempfile::tempdir().unwrap();
        let backend = SledBackend::open(&dir.path().join("db"), sync).unwrap();
        (dir, backend)
    }

    /// Simulates a crash that loses everything sled had not flushed: the WAL as it was before
    /// a clean close is put into an empty database directory, whose open must replay it.
    async fn reopen_from_wal_only(dir: &Path, b: SledBackend) -> SledBackend {
        let wal = std::fs::read(dir.join("db").join(WAL_FILE)).unwrap();
        drop(b);
        let fresh = dir.join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::write(fresh.join(WAL_FILE), wal).unwrap();
        SledBackend::open(&fresh, true).unwrap()
    }

    #[tokio::test]
    async fn the_wal_alone_restores_every_synced_append() {
        let (dir, b) = open(true);
        b.append(vec![part("a", 1, &["1"])]).await.unwrap();
        b.commit(
            vec![part("a", 2, &["2"])],
            vec![([7; 32], b"blob".to_vec())],
        )
        .await
        .unwrap();
        b.append(vec![part("a", 3, &["3", "4"]), part("b", 1, &["x"])])
            .await
            .unwrap();
        let b = reopen_from_wal_only(dir.path(), b).await;
        assert_eq!(b.next_seq("a").await.unwrap(), 5);
        assert_eq!(b.next_seq("b").await.unwrap(), 2);
        let got: Vec<Vec<u8>> = b
            .scan("a", 1, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.1)
            .collect();
        assert_eq!(got, frames(&["1", "2", "3", "4"]));
        assert_eq!(b.get_blob(&[7; 32]).await.unwrap(), Some(b"blob".to_vec()));
        let mut logs = b.list_logs().await.unwrap();
        logs.sort();
        assert_eq!(logs, ["a", "b"]);
    }

    #[tokio::test]
    async fn the_wal_never_replays_what_a_truncate_or_blob_delete_removed() {
        let (dir, b) = open(true);
        b.commit(
            vec![part("a", 1, &["1", "2"])],
            vec![([7; 32], b"blob".to_vec())],
        )
        .await
        .unwrap();
        b.truncate("a", 3).await.unwrap();
        b.delete_blobs(&[[7; 32]]).await.unwrap();
        let b = reopen_from_wal_only(dir.path(), b).await;
        assert!(b.scan("a", 1, 10).await.unwrap().is_empty());
        assert_eq!(b.get_blob(&[7; 32]).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_frame_without_its_high_water_mark_still_counts() {
        let (_dir, b) = open(false);
        b.append(vec![part("a", 1, &["1"])]).await.unwrap();
        // As if a crash had kept the frame but not the mark written after it.
        let prefix = frame_prefix("a").unwrap();
        b.db.insert(frame_key(&prefix, 2), &b"2"[..]).unwrap();
        assert_eq!(b.next_seq("a").await.unwrap(), 3);
        let stale = b.append(vec![part("a", 2, &["again"])]).await.unwrap_err();
        assert!(
            matches!(stale, Error::Conflict { actual: 3, .. }),
            "{stale:?}"
        );
    }

    #[tokio::test]
    async fn next_seq_of_unknown_log_is_one() {
        let (_dir, b) = open(false);
        assert_eq!(b.next_seq("nope").await.unwrap(), 1);
        assert!(b.list_logs().await.unwrap().is_empty());
        assert_eq!(b.name(), "sled");
    }

    #[tokio::test]
    async fn append_then_scan_returns_frames_from_one() {
        let (_dir, b) = open(true);
        b.append(vec![part("a", 1, &["x", "y", "z"])])
            .await
            .unwrap();
        assert_eq!(b.next_seq("a").await.unwrap(), 4);
        assert_eq!(
            b.scan("a", 1, 100).await.unwrap(),
            vec![(1, b"x".to_vec()), (2, b"y".to_vec()), (3, b"z".to_vec())]
        );
        b.append(vec![part("a", 4, &["w"])]).await.unwrap();
        assert_eq!(b.scan("a", 0, 100).await.unwrap().len(), 4);
        assert_eq!(b.list_logs().await.unwrap(), vec!["a".to_owned()]);
    }

    #[tokio::test]
    async fn logs_with_prefix_names_stay_apart() {
        let (_dir, b) = open(false);
        b.append(vec![part("a", 1, &["a1"]), part("ab", 1, &["ab1", "ab2"])])
            .await
            .unwrap();
        assert_eq!(
            b.scan("a", 1, 100).await.unwrap(),
            vec![(1, b"a1".to_vec())]
        );
        assert_eq!(b.scan("ab", 1, 100).await.unwrap().len(), 2);
        b.truncate("a", 10).await.unwrap();
        assert_eq!(b.scan("ab", 1, 100).await.unwrap().len(), 2);
        let mut logs = b.list_logs().await.unwrap();
        logs.sort();
        assert_eq!(logs, vec!["a".to_owned(), "ab".to_owned()]);
    }

    #[tokio::test]
    async fn stale_expected_seq_conflicts_and_writes_nothing() {
        let (_dir, b) = open(false);
        b.append(vec![part("a", 1, &["x"])]).await.unwrap();
        match b.append(vec![part("a", 1, &["y"])]).await.unwrap_err() {
            Error::Conflict {
                log,
                expected,
                actual,
            } => {
                assert_eq!(log, "a");
                assert_eq!(expected, 1);
                assert_eq!(actual, 2);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(b.next_seq("a").await.unwrap(), 2);
        assert_eq!(b.scan("a", 1, 100).await.unwrap(), vec![(1, b"x".to_vec())]);
    }

    #[tokio::test]
    async fn multi_log_append_is_all_or_nothing() {
        let (_dir, b) = open(false);
        b.append(vec![part("b", 1, &["b1"])]).await.unwrap();
        let err = b
            .append(vec![part("a", 1, &["a1", "a2"]), part("b", 1, &["b2"])])
            .await
            .unwrap_err();
        assert!(err.is_conflict());
        assert_eq!(b.next_seq("a").await.unwrap(), 1);
        assert!(b.scan("a", 1, 100).await.unwrap().is_empty());
        assert_eq!(b.list_logs().await.unwrap(), vec!["b".to_owned()]);

        b.append(vec![part("a", 1, &["a1", "a2"]), part("b", 2, &["b2"])])
            .await
            .unwrap();
        assert_eq!(b.next_seq("a").await.unwrap(), 3);
        assert_eq!(b.next_seq("b").await.unwrap(), 3);
    }

    #[tokio::test]
    async fn same_log_twice_in_one_call_is_checked_in_order() {
        let (_dir, b) = open(false);
        b.append(vec![part("a", 1, &["1", "2"]), part("a", 3, &["3"])])
            .await
            .unwrap();
        assert_eq!(b.next_seq("a").await.unwrap(), 4);
        assert_eq!(b.scan("a", 1, 100).await.unwrap().len(), 3);
        let err = b
            .append(vec![part("a", 4, &["4"]), part("a", 4, &["4bis"])])
            .await
            .unwrap_err();
        assert!(err.is_conflict());
        assert_eq!(b.next_seq("a").await.unwrap(), 4);
    }

    #[tokio::test]
    async fn empty_append_is_only_a_check() {
        let (_dir, b) = open(true);
        b.append(vec![part("a", 1, &[])]).await.unwrap();
        assert!(b.list_logs().await.unwrap().is_empty());
        assert!(b
            .append(vec![part("a", 2, &[])])
            .await
            .unwrap_err()
            .is_conflict());
        b.append(Vec::new()).await.unwrap();
    }

    #[tokio::test]
    async fn truncate_keeps_next_seq_and_listing() {
        let (_dir, b) = open(false);
        b.append(vec![part("a", 1, &["1", "2", "3", "4"])])
            .await
            .unwrap();
        b.truncate("a", 3).await.unwrap();
        assert_eq!(
            b.scan("a", 1, 100).await.unwrap(),
            vec![(3, b"3".to_vec()), (4, b"4".to_vec())]
        );
        assert_eq!(b.next_seq("a").await.unwrap(), 5);
        b.truncate("a", u64::MAX).await.unwrap();
        assert!(b.scan("a", 1, 100).await.unwrap().is_empty());
        assert_eq!(b.next_seq("a").await.unwrap(), 5);
        assert_eq!(b.list_logs().await.unwrap(), vec!["a".to_owned()]);
        b.append(vec![part("a", 5, &["5"])]).await.unwrap();
        assert_eq!(b.scan("a", 1, 100).await.unwrap(), vec![(5, b"5".to_vec())]);
        b.truncate("nope", 10).await.unwrap();
        assert_eq!(b.list_logs().await.unwrap(), vec!["a".to_owned()]);
    }

    #[tokio::test]
    async fn scan_with_limit_and_from_in_the_middle() {
        let (_dir, b) = open(false);
        let items: Vec<String> = (1..=10).map(|i| format!("f{i}")).collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        b.append(vec![part("a", 1, &refs)]).await.unwrap();
        assert_eq!(
            b.scan("a", 4, 3).await.unwrap(),
            vec![
                (4, b"f4".to_vec()),
                (5, b"f5".to_vec()),
                (6, b"f6".to_vec())
            ]
        );
        assert_eq!(b.scan("a", 9, 100).await.unwrap().len(), 2);
        assert!(b.scan("a", 11, 100).await.unwrap().is_empty());
        assert!(b.scan("a", 1, 0).await.unwrap().is_empty());
        assert!(b.scan("nope", 1, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn reopen_after_drop_sees_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db");
        {
            let b = SledBackend::open(&path, true).unwrap();
            assert_eq!(b.path(), path.as_path());
            b.put_blobs(vec![([7u8; 32], b"blob".to_vec())])
                .await
                .unwrap();
            b.append(vec![part("a", 1, &["1", "2", "3"]), part("b", 1, &["x"])])
                .await
                .unwrap();
            b.truncate("a", 2).await.unwrap();
            b.flush().await.unwrap();
        }
        let b = SledBackend::open(&path, true).unwrap();
        assert_eq!(b.next_seq("a").await.unwrap(), 4);
        assert_eq!(b.next_seq("b").await.unwrap(), 2);
        assert_eq!(
            b.scan("a", 1, 100).await.unwrap(),
            vec![(2, b"2".to_vec()), (3, b"3".to_vec())]
        );
        assert_eq!(b.scan("b", 1, 100).await.unwrap(), vec![(1, b"x".to_vec())]);
        let mut logs = b.list_logs().await.unwrap();
        logs.sort();
        assert_eq!(logs, vec!["a".to_owned(), "b".to_owned()]);
        assert_eq!(
            b.get_blob(&[7u8; 32]).await.unwrap(),
            Some(b"blob".to_vec())
        );
        assert!(b.stored_bytes().await.unwrap().unwrap() > 0);
    }

    #[tokio::test]
    async fn second_open_of_a_held_directory_is_busy() {
        let (dir, _b) = open(false);
        match SledBackend::open(&dir.path().join("db"), false) {
            Err(Error::Busy { what }) => {
                assert!(what.contains("this process already has"), "{what}");
                assert!(what.contains(&dir.path().display().to_string()), "{what}");
            }
            other => panic!("expected Busy, got {other:?}"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_synced_appends_share_flushes() {
        let (_dir, b) = open(true);
        let b = Arc::new(b);
        let mut tasks = Vec::new();
        for t in 0..8 {
            let b = Arc::clone(&b);
            tasks.push(tokio::spawn(async move {
                let log = format!("log-{t}");
                for i in 0..100u64 {
                    b.append(vec![LogAppend::new(
                        log.clone(),
                        i + 1,
                        vec![format!("{t}:{i}").into_bytes()],
                    )])
                    .await?;
                }
                Ok::<_, Error>(())
            }));
        }
        for task in tasks {
            task.await.unwrap().unwrap();
        }
        for t in 0..8 {
            let log = format!("log-{t}");
            assert_eq!(b.next_seq(&log).await.unwrap(), 101);
            let got = b.scan(&log, 1, 1000).await.unwrap();
            assert_eq!(got.len(), 100);
            for (i, (seq, frame)) in got.into_iter().enumerate() {
                assert_eq!(seq, i as u64 + 1);
                assert_eq!(frame, format!("{t}:{i}").into_bytes());
            }
        }
        assert_eq!(b.written.load(Ordering::Acquire), 800);
        assert_eq!(b.flushed.load(Ordering::Acquire), 800);
        // Group commit: far fewer flushes than appends.
        let flushes = b.flushes.load(Ordering::Relaxed);
        assert!(flushes < 800, "{flushes} flushes for 800 appends");
        println!("{flushes} flushes for 800 synced appends");
        assert_eq!(b.list_logs().await.unwrap().len(), 8);
    }

    #[tokio::test]
    async fn a_file_in_place_of_the_directory_is_a_backend_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("file");
        std::fs::write(&file, b"not a directory").unwrap();
        match SledBackend::open(&file, true) {
            Err(Error::Backend {
                backend, context, ..
            }) => {
                assert_eq!(backend, "sled");
                assert!(context.contains(&file.display().to_string()), "{context}");
            }
            other => panic!("expected a backend error, got {other:?}"),
        }
        // And a directory below a file.
        assert!(matches!(
            SledBackend::open(&file.join("db"), true),
            Err(Error::Backend { .. })
        ));
    }

    #[tokio::test]
    async fn corrupt_next_seq_is_reported() {
        let (_dir, b) = open(false);
        b.db.insert(log_key("bad"), &b"xyz"[..]).unwrap();
        let err = b.next_seq("bad").await.unwrap_err();
        assert!(err.is_corrupt(), "{err}");
        assert!(err.to_string().contains("bad"), "{err}");
        assert!(b
            .append(vec![part("bad", 1, &["x"])])
            .await
            .unwrap_err()
            .is_corrupt());
        b.db.insert([LOG, 0xff, 0xfe], &1u64.to_be_bytes()[..])
            .unwrap();
        assert!(b.list_logs().await.unwrap_err().is_corrupt());
    }

    /// Copies the files of a closed sled directory (sled's own, not the WAL or heads file).
    fn copy_sled_files(from: &Path, to: &Path) {
        std::fs::create_dir_all(to).unwrap();
        for entry in std::fs::read_dir(from).unwrap() {
            let entry = entry.unwrap();
            let name = entry.file_name();
            if name == WAL_FILE || name == HEADS_FILE {
                continue;
            }
            if entry.file_type().unwrap().is_dir() {
                copy_sled_files(&entry.path(), &to.join(&name));
            } else {
                std::fs::copy(entry.path(), to.join(&name)).unwrap();
            }
        }
    }

    #[tokio::test]
    async fn a_rollback_of_sleds_files_is_recorded_and_never_reuses_a_position() {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("db");
        let b = SledBackend::open(&db, true).unwrap();
        b.append(vec![part("a", 1, &["1", "2", "3"]), part("b", 1, &["x"])])
            .await
            .unwrap();
        drop(b);
        // sled's files as they were after three frames of "a": what its recovery leaves when
        // it truncates its log at damage written after them.
        let old = dir.path().join("old");
        copy_sled_files(&db, &old);
        let b = SledBackend::open(&db, true).unwrap();
        b.append(vec![part("a", 4, &["4", "5"])]).await.unwrap();
        drop(b);
        std::fs::remove_dir_all(db.join("db")).ok();
        for entry in std::fs::read_dir(&db).unwrap() {
            let entry = entry.unwrap();
            if entry.file_name() != HEADS_FILE && entry.file_name() != WAL_FILE {
                let path = entry.path();
                if path.is_dir() {
                    std::fs::remove_dir_all(path).unwrap();
                } else {
                    std::fs::remove_file(path).unwrap();
                }
            }
        }
        copy_sled_files(&old, &db);
        let b = SledBackend::open(&db, true).unwrap();
        let damage = b.recorded_damage().await.unwrap();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].log.as_deref(), Some("a"));
        assert_eq!(damage[0].lost, Some((4, 6)));
        assert!(damage[0].detail.contains("rolled"), "{}", damage[0].detail);
        // The lost positions are never handed out again, and the record survives reopening.
        assert_eq!(b.next_seq("a").await.unwrap(), 6);
        assert_eq!(b.next_seq("b").await.unwrap(), 2);
        drop(b);
        let b = SledBackend::open(&db, true).unwrap();
        assert_eq!(b.recorded_damage().await.unwrap(), damage);
        assert_eq!(b.next_seq("a").await.unwrap(), 6);
    }

    #[tokio::test]
    async fn a_damaged_wal_record_loses_only_its_own_saves_and_says_which() {
        let (dir, b) = open(true);
        // One append per group write: each awaited before the next.
        b.append(vec![part("a", 1, &["1"])]).await.unwrap();
        b.append(vec![part("a", 2, &["2"])]).await.unwrap();
        b.append(vec![part("b", 1, &["x"])]).await.unwrap();
        b.append(vec![part("a", 3, &["3"])]).await.unwrap();
        b.append(vec![part("b", 2, &["y"])]).await.unwrap();
        let mut bytes = std::fs::read(dir.path().join("db").join(WAL_FILE)).unwrap();
        let parsed = wal::parse(&bytes);
        assert_eq!(parsed.records.len(), 5);
        // Damage the second record (frame 2 of "a"): a byte of its payload.
        let second = wal::HEADER_LEN as usize + 28 + parsed.records[0].len();
        bytes[second + 28 + 3] ^= 0x55;
        drop(b);
        let fresh = dir.path().join("fresh");
        std::fs::create_dir_all(&fresh).unwrap();
        std::fs::write(fresh.join(WAL_FILE), &bytes).unwrap();
        let b = SledBackend::open(&fresh, true).unwrap();
        let frames: Vec<u64> = b
            .scan("a", 1, 10)
            .await
            .unwrap()
            .into_iter()
            .map(|f| f.0)
            .collect();
        assert_eq!(frames, [1, 3], "the records after the damaged one are kept");
        assert_eq!(b.scan("b", 1, 10).await.unwrap().len(), 2);
        let damage = b.recorded_damage().await.unwrap();
        assert_eq!(damage.len(), 1, "{damage:?}");
        assert_eq!(damage[0].log.as_deref(), Some("a"));
        assert_eq!(damage[0].lost, Some((2, 3)));
        assert_eq!(b.next_seq("a").await.unwrap(), 4);
    }

    #[test]
    fn a_panic_inside_sled_is_reported_as_corruption() {
        let got = catching_panics(|| -> u8 { panic!("tried to serialize Uninitialized") });
        assert_eq!(got, Err("tried to serialize Uninitialized".to_owned()));
        let error = open_error(
            Path::new("/x"),
            "opening",
            OpenFailure::Panic(got.unwrap_err()),
        );
        assert!(error.is_corrupt(), "{error}");
        assert!(error.to_string().contains("/x"), "{error}");
    }
}
