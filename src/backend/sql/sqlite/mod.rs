//! The SQLite [`Backend`] (`sqlite://PATH`): one database file, shareable by several processes.
//! Reads go through a pool of sqlx connections; writes through the writer thread's own
//! (rusqlite) connection.
//!
//! # Layout
//!
//! Schema version 2 (`writer.rs` creates it, and migrates a version 1 database in place at open):
//!
//! | table | key | columns |
//! | --- | --- | --- |
//! | `logs` | `id` (the rowid), `log` unique | the log's name and next sequence number; a row per log ever appended to (a truncate keeps it), never deleted |
//! | `frames` | `id` = the log's id × 2³² + the frame's sequence number (the rowid) | the frame |
//! | `blobs` | `hash` | the blob |
//! | `records` | `key` | a derived record ([`SideTable`]) |
//! | `search_index` | `key` (a BLOB) | a search index entry ([`SearchTable`]) |
//! | `ckpt_schema` | | the schema version |
//!
//! A frame's key is one integer instead of version 1's `(log name, seq)`: a row no longer repeats
//! the log's name, and appends at the end of a log fill B-tree pages whole (SQLite's append
//! fast path for rowids), so issue 15's `long` shape (20,000 frames of ~195 bytes) takes 21% fewer
//! bytes. The price is a limit of 2³² - 1 frames per log and 2³¹ - 1 logs per database, both
//! checked on append with an error.
//!
//! # Writes: one writer, group commit
//!
//! Every write goes through one writer thread (`writer.rs`) owning one connection. It takes every
//! write queued while it was busy and commits them in one `BEGIN IMMEDIATE` transaction (one fsync
//! for all): each write runs inside its own savepoint, so a write that conflicts (its
//! compare-and-append fails) is rolled back alone while the others commit. Should a statement fail
//! in a way that may poison the transaction, the whole transaction is rolled back and its writes
//! are retried one by one. `BEGIN IMMEDIATE` takes SQLite's write lock first, so the
//! compare-and-append is fenced across processes too; the primary key `(log, seq)` is the last
//! line of defence.
//!
//! Reads use a pool of connections: the database runs in WAL mode, so they never wait for the
//! writer. `synchronous=FULL` (the default) makes each commit durable; `sync=false` relaxes it to
//! `NORMAL` (a power loss may lose the latest saves, never half of one).
//!
//! # URL options
//!
//! The [pool options](super), plus `sync=true|false`. `max_connections` sizes the read pool.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use tokio::sync::{mpsc, oneshot};

use super::{frames_of, from_db_seq, parse_options, to_hash, DriverError};
use crate::backend::retry::{self, GaveUp};
use crate::backend::{
    prefix_end, Backend, Blob, BlobHash, Capabilities, CompactReport, ConnectOptions, Inspect,
    LogAppend, Maintain, RecordedDamage, Rewrite, SearchTable, SideTable,
};
use writer::{Job, WriteOp};

mod writer;
use crate::error::{Error, Result};
use crate::url::{parse_bool, RawUrl};

/// The backend's name in errors.
const NAME: &str = "SQLite";
/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: i64 = 2;
/// Default size of the read pool.
const DEFAULT_READERS: u32 = 4;
/// Hashes per `IN (...)` query (SQLite allows 32766 parameters; stay far below).
const HASH_CHUNK: usize = 500;

/// The highest sequence number a frame can have: the low 32 bits of its key.
pub(super) const MAX_SEQ: u64 = u32::MAX as u64;
/// The highest log id: its key's high bits, kept clear of the sign bit.
pub(super) const MAX_LOG_ID: i64 = i32::MAX as i64;

/// The key of frame `seq` of the log with id `log_id` (`seq <= MAX_SEQ`).
pub(super) fn frame_key(log_id: i64, seq: u64) -> i64 {
    (log_id << 32) | (seq.min(MAX_SEQ) as i64)
}

/// The statement [`Backend::scan`] runs: a range of frame keys (?1 log, ?2 first seq, at most
/// `MAX_SEQ + 1`, ?3 limit).
pub const SCAN_SQL: &str = "SELECT f.id & 4294967295, f.frame FROM logs l, frames f \
     WHERE l.log = ?1 AND f.id BETWEEN (l.id << 32) + ?2 AND (l.id << 32) + 4294967295 \
     ORDER BY f.id LIMIT ?3";

/// The sequence number of the last frame of the log whose row is `l` (NULL when it has none).
macro_rules! last_seq_of_l {
    () => {
        "(SELECT f.id & 4294967295 FROM frames f \
          WHERE f.id BETWEEN (l.id << 32) AND (l.id << 32) + 4294967295 \
          ORDER BY f.id DESC LIMIT 1)"
    };
}

/// A log's next sequence number: the stored one, but never at or below its last frame. A stored
/// number that was lowered (by hand, or by damage) would otherwise make every append conflict
/// with a log that cannot move, and hand out versions that exist; `Store::verify` reports it
/// (see [`Inspect::log_problems`]). 1 for a log without a row (frames need one).
const NEXT_SEQ_SQL: &str = concat!(
    "SELECT COALESCE((SELECT MAX(l.next_seq, COALESCE(",
    last_seq_of_l!(),
    " + 1, 1)) FROM logs l WHERE l.log = ?1), 1)"
);

/// A [`Backend`] on one SQLite file; see the [module documentation](self).
pub struct SqliteBackend {
    path: PathBuf,
    sync: bool,
    readers: SqlitePool,
    writer: mpsc::UnboundedSender<Job>,
    timeout: Duration,
    /// The connection [`Backend::next_seq`] reads on without yielding (see there).
    tail_reader: std::sync::Mutex<rusqlite::Connection>,
}

impl fmt::Debug for SqliteBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SqliteBackend")
            .field("path", &self.path)
            .field("sync", &self.sync)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An [`Error::Backend`] from this backend.
fn db_error(context: impl Into<String>, e: &sqlx::Error) -> Error {
    Error::Backend {
        backend: NAME,
        context: context.into(),
        source: Box::new(DriverError::new(e, &[])),
    }
}

/// Whether `e` is SQLite's "busy" or "locked": another connection holds the lock.
fn is_busy(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .and_then(|d| d.code())
        .is_some_and(|c| {
            let c = c.parse::<i64>().unwrap_or(0) & 0xff;
            c == 5 || c == 6
        })
}

impl SqliteBackend {
    /// Opens (creating it if needed) the SQLite database a `sqlite://PATH[?options]` URL names,
    /// creating or checking its schema.
    ///
    /// Fails with [`Error::InvalidUrl`] on an unknown or malformed option, and with
    /// [`Error::Backend`] when the file cannot be opened or its schema is newer than this code.
    pub async fn open(url: &RawUrl, options: &ConnectOptions) -> Result<Self> {
        let full = url.expose();
        let parsed = parse_options(full, &url.redacted(), &["sync"], &[], options)?;
        let mut sync = true;
        for (key, value) in &parsed.own {
            if key == "sync" {
                sync = parse_bool(value).ok_or_else(|| Error::InvalidUrl {
                    url: url.redacted(),
                    reason: format!("sync must be true or false, got {value:?}"),
                })?;
            }
        }
        let path = PathBuf::from(location(full));
        let (writer, ready) = writer::spawn(path.clone(), sync, parsed.pool.timeout)?;
        match tokio::time::timeout(parsed.pool.timeout, ready).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(writer_gone("opening the database")),
            Err(_) => return Err(timed_out("opening the database", parsed.pool.timeout)),
        }
        // No busy wait on this one: it blocks its caller's thread, so it gives up at once and the
        // pooled (async) read takes over.
        let tail_reader = writer::connect(&path, sync, Duration::ZERO)
            .map_err(|e| writer::sql_error("opening the database", &e))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(parsed.pool.max_connections.unwrap_or(DEFAULT_READERS))
            .min_connections(parsed.pool.min_connections)
            .max_lifetime(parsed.pool.max_lifetime)
            .acquire_timeout(parsed.pool.acquire_timeout)
            // A local file: no ping needed before each use.
            .test_before_acquire(false)
            .connect_lazy_with(connect_options(&path, sync, parsed.pool.timeout));
        Ok(SqliteBackend {
            path,
            sync,
            readers,
            writer,
            timeout: parsed.pool.timeout,
            tail_reader: std::sync::Mutex::new(tail_reader),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Hands `op` to the writer thread and waits for its outcome (at most the call timeout).
    async fn write(&self, op: WriteOp, what: &str) -> Result<()> {
        let (reply, outcome) = oneshot::channel();
        self.writer
            .send(Job { op, reply })
            .map_err(|_| writer_gone(what))?;
        match tokio::time::timeout(self.timeout, outcome).await {
            Ok(Ok(result)) => result,
            Ok(Err(_)) => Err(writer_gone(what)),
            Err(_) => Err(timed_out(what, self.timeout)),
        }
    }

    /// Runs a read, retrying while another connection holds a lock, within the call timeout.
    async fn read<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let deadline = tokio::time::Instant::now() + self.timeout;
        let busy = |e: &sqlx::Error| is_busy(e) || matches!(e, sqlx::Error::PoolTimedOut);
        retry::retrying(deadline, retry::SQL, f, busy)
            .await
            .map_err(|gave_up| match gave_up {
                GaveUp::Failed(e) => db_error(what, &e),
                GaveUp::TimedOut => timed_out(what, self.timeout),
            })
    }
}

impl SqliteBackend {
    /// [`Backend::next_seq`] read on the dedicated connection, blocking the calling thread for
    /// the lookup; `None` when the database is busy (or the connection is in use by a panicked
    /// reader), to read through the pool instead.
    fn next_seq_now(&self, log: &str) -> Option<Result<u64>> {
        let conn = self.tail_reader.try_lock().ok()?;
        let next: rusqlite::Result<i64> = conn
            .prepare_cached(NEXT_SEQ_SQL)
            .and_then(|mut s| s.query_row([log], |row| row.get(0)));
        match next {
            Ok(next) => Some(from_db_seq(next, &format!("log {log:?}"))),
            Err(e) if writer::is_busy(&e) => None,
            Err(e) => Some(Err(writer::sql_error(
                format!("reading the next sequence of log {log:?}"),
                &e,
            ))),
        }
    }
}

/// The file part of a `sqlite://PATH?...` URL.
fn location(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_once('?').map_or(rest, |(l, _)| l)
}

/// The connection settings of the read pool's connections (the writer's and the tail reader's
/// are `writer::connect`'s, the same).
/// The most bytes the WAL keeps after a checkpoint (`PRAGMA journal_size_limit`). Above the
/// ~4 MB SQLite's automatic checkpoint lets it reach, so that the WAL is not cut back and grown
/// again between checkpoints: a commit that overwrites WAL pages already on disk syncs its data
/// alone, where one that grows the file also syncs the file system's metadata (1.33x the save
/// rate on issue 15's `long` shape). The cost: while the store is open its WAL file keeps up to
/// this size (a flush, compact or the last close empties it); past it, a checkpoint still cuts
/// it back, so a burst does not keep its peak size.
pub(super) const JOURNAL_SIZE_LIMIT: &str = "8388608";

fn connect_options(path: &Path, sync: bool, timeout: Duration) -> SqliteConnectOptions {
    // Built from the path, not by handing sqlx the URL, whose options are ckpt's.
    SqliteConnectOptions::new()
        .filename(path)
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(if sync {
            SqliteSynchronous::Full
        } else {
            SqliteSynchronous::Normal
        })
        .busy_timeout(timeout)
        // See [`JOURNAL_SIZE_LIMIT`].
        .pragma("journal_size_limit", JOURNAL_SIZE_LIMIT)
        // Deleted rows (cleared checkpoints, collected blobs) are overwritten, not left in free
        // pages: after gc and a flush (which empties the WAL), nothing of them is in the files.
        .pragma("secure_delete", "ON")
}

fn writer_gone(what: &str) -> Error {
    Error::Backend {
        backend: NAME,
        context: what.to_owned(),
        source: "the writer thread has stopped".into(),
    }
}

fn timed_out(what: &str, timeout: Duration) -> Error {
    Error::Backend {
        backend: NAME,
        context: what.to_owned(),
        source: format!("no answer within the timeout of {timeout:?}").into(),
    }
}

/// The refusal to use a database whose schema is newer than this code's.
pub(crate) fn newer_schema(found: i64) -> Error {
    Error::Backend {
        backend: NAME,
        context: "opening the database".into(),
        source: format!(
            "its schema version is {found}, newer than the {SCHEMA_VERSION} this ckpt knows: \
             it was written by a newer ckpt; upgrade ckpt to use it (nothing was written)"
        )
        .into(),
    }
}

/// The size of a file, 0 when it does not exist.
fn file_len(path: &Path) -> Result<u64> {
    match std::fs::metadata(path) {
        Ok(m) => Ok(m.len()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
        Err(e) => Err(Error::Backend {
            backend: NAME,
            context: format!("measuring {}", path.display()),
            source: Box::new(e),
        }),
    }
}

#[async_trait]
impl Backend for SqliteBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    /// Answered without yielding when possible (a primary-key lookup in a local file takes
    /// microseconds): a caller polling once, as [`crate::Store::watch`] does to learn where "now"
    /// is, gets the answer. Falls back to the pool when the file is locked.
    async fn next_seq(&self, log: &str) -> Result<u64> {
        if let Some(next) = self.next_seq_now(log) {
            return next;
        }
        let next: Vec<i64> = self
            .read(&format!("reading the next sequence of log {log:?}"), || {
                sqlx::query_scalar(NEXT_SEQ_SQL)
                    .bind(log)
                    .fetch_all(&self.readers)
            })
            .await?;
        from_db_seq(next.first().copied().unwrap_or(1), &format!("log {log:?}"))
    }

    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()> {
        if appends.is_empty() && blobs.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::Append { appends, blobs }, "appending")
            .await
    }

    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        // Past the last possible frame: an empty range, not an overflowing key.
        let from = from.min(MAX_SEQ + 1) as i64;
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .read(&format!("reading log {log:?}"), || {
                sqlx::query_as(SCAN_SQL)
                    .bind(log)
                    .bind(from)
                    .bind(limit)
                    .fetch_all(&self.readers)
            })
            .await?;
        frames_of(rows, log)
    }

    async fn list_logs(&self) -> Result<Vec<String>> {
        self.read("listing the logs", || {
            sqlx::query_scalar("SELECT log FROM logs").fetch_all(&self.readers)
        })
        .await
    }

    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        let op = WriteOp::RaiseNextSeq {
            log: log.to_owned(),
            next_seq,
        };
        self.write(op, &format!("raising the next sequence of log {log:?}"))
            .await
    }

    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        let op = WriteOp::Truncate {
            log: log.to_owned(),
            before,
        };
        self.write(op, &format!("truncating log {log:?}")).await
    }

    async fn put_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        let op = WriteOp::Append {
            appends: Vec::new(),
            blobs,
        };
        self.write(op, "storing blobs").await
    }

    /// One query per 500 hashes.
    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut found = std::collections::HashMap::with_capacity(hashes.len());
        for chunk in hashes.chunks(HASH_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT hash, data FROM blobs WHERE hash IN ({placeholders})");
            let rows: Vec<(Vec<u8>, Vec<u8>)> = self
                .read("reading blobs", || {
                    let mut query = sqlx::query_as(&sql);
                    for hash in chunk {
                        query = query.bind(&hash[..]);
                    }
                    query.fetch_all(&self.readers)
                })
                .await?;
            for (hash, data) in rows {
                found.insert(to_hash(&hash)?, data);
            }
        }
        Ok(hashes.iter().map(|h| found.get(h).cloned()).collect())
    }

    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        let mut present = std::collections::HashSet::new();
        for chunk in hashes.chunks(HASH_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT hash FROM blobs WHERE hash IN ({placeholders})");
            let found: Vec<Vec<u8>> = self
                .read("looking up blobs", || {
                    let mut query = sqlx::query_scalar(&sql);
                    for hash in chunk {
                        query = query.bind(&hash[..]);
                    }
                    query.fetch_all(&self.readers)
                })
                .await?;
            for hash in found {
                present.insert(to_hash(&hash)?);
            }
        }
        Ok(hashes
            .iter()
            .filter(|h| !present.contains(*h))
            .copied()
            .collect())
    }

    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        let hashes: Vec<Vec<u8>> = self
            .read("listing blobs", || {
                sqlx::query_scalar("SELECT hash FROM blobs").fetch_all(&self.readers)
            })
            .await?;
        hashes.iter().map(|h| to_hash(h)).collect()
    }

    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::DeleteBlobs(hashes.to_vec()), "deleting blobs")
            .await
    }

    /// Commits are already durable (`synchronous=FULL`, unless `sync=false`); this also moves the
    /// WAL into the database file and empties it, so the file alone holds everything.
    async fn flush(&self) -> Result<()> {
        self.write(WriteOp::Checkpoint, "flushing").await
    }

    fn capabilities(&self) -> Capabilities<'_> {
        let mut caps = Capabilities::new();
        // The append's transaction inserts blobs with `ON CONFLICT DO NOTHING`: a save's few new
        // blobs are cheaper to send than to ask about (a pool read) first.
        caps.blobs_with_append = true;
        caps.rewrite = Some(self);
        caps.maintain = Some(self);
        caps.inspect = Some(self);
        caps.side_table = Some(self);
        caps.search_table = Some(self);
        caps
    }
}

/// Records go through the writer like every write, so they ride in the next group commit.
#[async_trait]
impl SideTable for SqliteBackend {
    async fn put_records(&self, records: Vec<(String, Vec<u8>)>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        self.write(WriteOp::PutRecords(records), "writing derived records")
            .await
    }

    async fn get_records(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(HASH_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT key, value FROM records WHERE key IN ({placeholders})");
            let rows: Vec<(String, Vec<u8>)> = self
                .read("reading derived records", || {
                    let mut query = sqlx::query_as(&sql);
                    for key in chunk {
                        query = query.bind(key);
                    }
                    query.fetch_all(&self.readers)
                })
                .await?;
            found.extend(rows);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn scan_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.read("listing derived records", || {
            sqlx::query_as("SELECT key, value FROM records WHERE substr(key, 1, length(?1)) = ?1")
                .bind(prefix)
                .fetch_all(&self.readers)
        })
        .await
    }

    async fn delete_records(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.write(
            WriteOp::DeleteRecords(keys.to_vec()),
            "deleting derived records",
        )
        .await
    }

    async fn log_tails(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64, Option<i64>)> = self
            .read("listing the logs", || {
                sqlx::query_as(concat!(
                    "SELECT l.log, l.next_seq, ",
                    last_seq_of_l!(),
                    " FROM logs l"
                ))
                .fetch_all(&self.readers)
            })
            .await?;
        rows.into_iter()
            .map(|(log, next, last)| {
                let next = next.max(last.map_or(1, |l| l.saturating_add(1))).max(1);
                let next = from_db_seq(next, &format!("log {log:?}"))?;
                Ok((log, next))
            })
            .collect()
    }
}

/// The statement [`SearchTable::scan_index`] runs: a range of keys from ?1 (inclusive, or
/// exclusive when `after` gave it), below ?2 when `bounded` (the end of the prefix), at most ?3
/// (?2 when unbounded) rows. A range, not a filter, so it reads only the rows it returns.
fn scan_index_sql(exclusive: bool, bounded: bool) -> String {
    let from = if exclusive { ">" } else { ">=" };
    if bounded {
        format!(
            "SELECT key, value FROM search_index WHERE key {from} ?1 AND key < ?2 \
             ORDER BY key LIMIT ?3"
        )
    } else {
        format!("SELECT key, value FROM search_index WHERE key {from} ?1 ORDER BY key LIMIT ?2")
    }
}

/// Index writes go through the writer like every write, so they ride in the next group commit
/// (each call in a savepoint of its own: all or nothing, in the order the calls were made).
#[async_trait]
impl SearchTable for SqliteBackend {
    async fn write_index(&self, put: Vec<(Vec<u8>, Vec<u8>)>, delete: Vec<Vec<u8>>) -> Result<()> {
        if put.is_empty() && delete.is_empty() {
            return Ok(());
        }
        self.write(
            WriteOp::WriteIndex { put, delete },
            "writing the search index",
        )
        .await
    }

    async fn scan_index(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let (from, exclusive) = match after {
            Some(a) if a >= prefix => (a, true),
            _ => (prefix, false),
        };
        let end = prefix_end(prefix);
        let sql = scan_index_sql(exclusive, end.is_some());
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.read("reading the search index", || {
            let query = sqlx::query_as(&sql).bind(from);
            let query = match &end {
                Some(end) => query.bind(end.as_slice()),
                None => query,
            };
            query.bind(limit).fetch_all(&self.readers)
        })
        .await
    }

    /// One query per 500 keys.
    async fn get_index(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let mut found = std::collections::HashMap::with_capacity(keys.len());
        for chunk in keys.chunks(HASH_CHUNK) {
            let placeholders = vec!["?"; chunk.len()].join(", ");
            let sql = format!("SELECT key, value FROM search_index WHERE key IN ({placeholders})");
            let rows: Vec<(Vec<u8>, Vec<u8>)> = self
                .read("reading the search index", || {
                    let mut query = sqlx::query_as(&sql);
                    for key in chunk {
                        query = query.bind(key.as_slice());
                    }
                    query.fetch_all(&self.readers)
                })
                .await?;
            found.extend(rows);
        }
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn clear_index(&self) -> Result<()> {
        self.write(WriteOp::ClearIndex, "clearing the search index")
            .await
    }

    async fn index_size(&self) -> Result<(u64, u64)> {
        let (entries, bytes): (i64, i64) = self
            .read("measuring the search index", || {
                sqlx::query_as(
                    "SELECT COUNT(*), COALESCE(SUM(length(key) + length(value)), 0) \
                     FROM search_index",
                )
                .fetch_one(&self.readers)
            })
            .await?;
        Ok((entries.max(0) as u64, bytes.max(0) as u64))
    }
}

#[async_trait]
impl Rewrite for SqliteBackend {
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let op = WriteOp::RewriteFrames {
            log: log.to_owned(),
            frames,
        };
        self.write(op, &format!("rewriting frames of log {log:?}"))
            .await
    }

    async fn rewrite_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.write(WriteOp::RewriteBlobs(blobs), "rewriting blobs")
            .await
    }
}

#[async_trait]
impl Inspect for SqliteBackend {
    async fn recorded_damage(&self) -> Result<Vec<RecordedDamage>> {
        // SQLite's commits never roll back silently: damage shows in `check_storage`.
        Ok(Vec::new())
    }

    /// `PRAGMA integrity_check`: a damaged page can hide rows from every query (a scan of a
    /// log returns fewer frames, without an error), which only this check finds.
    async fn check_storage(&self) -> Result<Vec<String>> {
        let rows: Vec<(String,)> = self
            .read("checking the database file's integrity", || {
                sqlx::query_as("PRAGMA integrity_check").fetch_all(&self.readers)
            })
            .await?;
        Ok(rows
            .into_iter()
            .map(|(line,)| line)
            .filter(|line| line != "ok")
            .map(|line| format!("SQLite's integrity check: {line}"))
            .collect())
    }

    /// A stored next sequence number at or below the last frame (which [`Backend::next_seq`]
    /// and appends then ignore).
    async fn log_problems(&self, log: &str) -> Result<Vec<String>> {
        let row: Option<(i64, Option<i64>)> = self
            .read(&format!("checking log {log:?}"), || {
                sqlx::query_as(concat!(
                    "SELECT l.next_seq, ",
                    last_seq_of_l!(),
                    " FROM logs l WHERE l.log = ?1"
                ))
                .bind(log)
                .fetch_optional(&self.readers)
            })
            .await?;
        Ok(super::lowered_next_seq(row))
    }
}

#[async_trait]
impl Maintain for SqliteBackend {
    /// Not a server that keeps everything in memory.
    async fn server_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The database file plus its WAL.
    async fn stored_bytes(&self) -> Result<Option<u64>> {
        let mut wal = self.path.clone().into_os_string();
        wal.push("-wal");
        Ok(Some(file_len(&self.path)? + file_len(Path::new(&wal))?))
    }

    /// `VACUUM` and an emptied WAL (see the writer's `compact`). Deleted rows were already
    /// overwritten (`secure_delete`); this also gives their space back to the file system.
    async fn compact(&self) -> Result<CompactReport> {
        let mut report = CompactReport::new(NAME);
        report.bytes_before = self.stored_bytes().await?;
        self.write(WriteOp::Compact, "compacting").await?;
        report.step(format!(
            "VACUUM rebuilt {} with only its live rows (deleted rows were already overwritten: \
             secure_delete)",
            self.path.display()
        ));
        report.step("wal_checkpoint(TRUNCATE) emptied the WAL");
        report.bytes_after = self.stored_bytes().await?;
        Ok(report)
    }
}
