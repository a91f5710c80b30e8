//! The SQLite backend's writer: one OS thread that owns the one write connection, creates or
//! checks the schema, and commits every write in group transactions.
//!
//! The connection is rusqlite's, not sqlx's: sqlx runs each statement of a connection on a worker
//! thread of its own and hands the results back through channels, so every statement of a save
//! (`BEGIN`, the compare-and-append, `COMMIT`) cost two thread switches, which were most of a
//! save's CPU. Here the thread that takes the jobs runs SQLite itself: a job costs one handoff in
//! (the job channel) and one out (its reply). Both drivers link the same `libsqlite3-sys`.
//!
//! # Group commit
//!
//! The thread takes every write queued while it was busy (up to [`MAX_GROUP`]) and commits them
//! in one `BEGIN IMMEDIATE` transaction (one fsync for all): each write runs inside its own
//! savepoint, so a write that is refused (its compare-and-append fails) is rolled back alone
//! while the others commit. Should a statement fail in a way that may poison the transaction,
//! the whole transaction is rolled back and its writes are retried one by one. A write alone in
//! its transaction needs no savepoint: a refused one rolls the transaction back.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rusqlite::{ffi, params, Connection, OpenFlags, OptionalExtension};
use tokio::sync::{mpsc, oneshot};

use super::{
    frame_key, newer_schema, JOURNAL_SIZE_LIMIT, MAX_LOG_ID, MAX_SEQ, NAME, NEXT_SEQ_SQL,
    SCHEMA_VERSION,
};
use crate::backend::retry;
use crate::backend::sql::{end_seq, from_db_seq, to_db_seq, DriverError};
use crate::backend::{BlobHash, LogAppend};
use crate::error::{Error, Result};

/// Most writes committed in one transaction.
const MAX_GROUP: usize = 256;
/// Prepared statements the writer's connection keeps (see [`connect`]).
const STATEMENT_CACHE: usize = 32;

/// The fast compare-and-move of a log's next sequence number (?1 log, ?2 expected, ?3 new), when
/// `next_seq` would report exactly the stored number: it equals the expected one and no frame
/// lies at or past it. Returns the log's id; changes and returns no row otherwise (the caller
/// then compares with what `next_seq` reports, as the slow path).
const MOVE_NEXT_SEQ_SQL: &str = "UPDATE logs SET next_seq = ?3 \
     WHERE log = ?1 AND next_seq = ?2 \
     AND NOT EXISTS (SELECT 1 FROM frames \
         WHERE id BETWEEN (logs.id << 32) + ?2 AND (logs.id << 32) + 4294967295) \
     RETURNING id";

/// The same for a new log (1 expected): created when it has no row (a log with frames has one).
const CREATE_LOG_SQL: &str = "INSERT INTO logs (log, next_seq) \
     SELECT ?1, ?3 WHERE ?2 = 1 \
     ON CONFLICT (log) DO NOTHING RETURNING id";

/// Sets a log's next sequence number, creating its row if needed; returns the log's id.
const SET_NEXT_SEQ_SQL: &str = "INSERT INTO logs (log, next_seq) VALUES (?1, ?2) \
     ON CONFLICT (log) DO UPDATE SET next_seq = excluded.next_seq RETURNING id";

/// The derived records' table ([`crate::backend::SideTable`]), beside schema version 1.
const RECORDS_TABLE: &str = "CREATE TABLE IF NOT EXISTS records \
     (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID";

/// The search index's table ([`crate::backend::SearchTable`]), beside schema version 2 like the
/// records: a store written before it gains it at its next open, and older code ignores it.
/// Keys are BLOBs, which SQLite compares with `memcmp` (shorter first on a tie), the order the
/// table must keep.
const SEARCH_TABLE: &str = "CREATE TABLE IF NOT EXISTS search_index \
     (key BLOB NOT NULL PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID";

/// The schema, version 2 (see the [module documentation](super) for its keys).
const SCHEMA_V2: &str = "
CREATE TABLE logs (id INTEGER PRIMARY KEY, log TEXT NOT NULL UNIQUE, next_seq INTEGER NOT NULL);
CREATE TABLE frames (id INTEGER PRIMARY KEY, frame BLOB NOT NULL);
CREATE TABLE blobs (hash BLOB NOT NULL PRIMARY KEY, data BLOB NOT NULL);
INSERT INTO ckpt_schema (version) VALUES (2);
";

/// Frames of a version 1 database that version 2 cannot key (a sequence number outside
/// `0..=MAX_SEQ`): a migration refuses to run while there are any.
const V1_UNKEYABLE_SQL: &str = "SELECT COUNT(*) FROM frames WHERE seq < 0 OR seq > 4294967295";

/// Version 1 to 2, in the open's transaction: the same rows under the new keys. A log with
/// frames but no row (version 1 allowed it after damage) gets a row with the next sequence
/// number reads reported, one past its last frame.
const MIGRATE_V1_TO_V2: &str = "
CREATE TABLE logs_v2 (id INTEGER PRIMARY KEY, log TEXT NOT NULL UNIQUE, next_seq INTEGER NOT NULL);
INSERT INTO logs_v2 (log, next_seq) SELECT log, next_seq FROM logs ORDER BY log;
INSERT INTO logs_v2 (log, next_seq)
    SELECT log, MAX(seq) + 1 FROM frames WHERE log NOT IN (SELECT log FROM logs_v2)
    GROUP BY log ORDER BY log;
CREATE TABLE frames_v2 (id INTEGER PRIMARY KEY, frame BLOB NOT NULL);
INSERT INTO frames_v2 (id, frame)
    SELECT (l.id << 32) + f.seq, f.frame FROM frames f JOIN logs_v2 l ON l.log = f.log
    ORDER BY l.id, f.seq;
DROP TABLE frames;
DROP TABLE logs;
ALTER TABLE logs_v2 RENAME TO logs;
ALTER TABLE frames_v2 RENAME TO frames;
INSERT INTO ckpt_schema (version) VALUES (2);
";

/// One write for the writer thread, and where to send its outcome.
pub(super) struct Job {
    pub(super) op: WriteOp,
    pub(super) reply: oneshot::Sender<Result<()>>,
}

/// The writes the writer thread performs.
pub(super) enum WriteOp {
    Append {
        appends: Vec<LogAppend>,
        blobs: Vec<(BlobHash, Vec<u8>)>,
    },
    RaiseNextSeq {
        log: String,
        next_seq: u64,
    },
    Truncate {
        log: String,
        before: u64,
    },
    DeleteBlobs(Vec<BlobHash>),
    /// Replaces existing frames' bytes (rekey).
    RewriteFrames {
        log: String,
        frames: Vec<(u64, Vec<u8>)>,
    },
    /// Replaces existing blobs' bytes (rekey).
    RewriteBlobs(Vec<(BlobHash, Vec<u8>)>),
    /// Stores derived records, replacing those under the same keys.
    PutRecords(Vec<(String, Vec<u8>)>),
    /// Deletes derived records.
    DeleteRecords(Vec<String>),
    /// Deletes search index entries, then stores others (one call of
    /// [`crate::backend::SearchTable::write_index`]: one savepoint, all or nothing).
    WriteIndex {
        put: Vec<(Vec<u8>, Vec<u8>)>,
        delete: Vec<Vec<u8>>,
    },
    /// Deletes every search index entry.
    ClearIndex,
    /// Moves the WAL into the database file and empties it (outside any transaction).
    Checkpoint,
    /// `VACUUM`, then a checkpoint that must empty the WAL (outside any transaction).
    Compact,
}

/// An [`Error::Backend`] from a rusqlite failure.
pub(super) fn sql_error(context: impl Into<String>, e: &rusqlite::Error) -> Error {
    Error::Backend {
        backend: NAME,
        context: context.into(),
        source: Box::new(DriverError::new(e, &[])),
    }
}

/// Whether `e` is SQLite's "busy" or "locked": another connection holds the lock.
pub(super) fn is_busy(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(rusqlite::ErrorCode::DatabaseBusy | rusqlite::ErrorCode::DatabaseLocked)
    )
}

/// Whether `e` is a primary-key or unique constraint failing.
fn is_unique_violation(e: &rusqlite::Error) -> bool {
    matches!(
        e,
        rusqlite::Error::SqliteFailure(f, _)
            if f.extended_code == ffi::SQLITE_CONSTRAINT_PRIMARYKEY
                || f.extended_code == ffi::SQLITE_CONSTRAINT_UNIQUE
    )
}

/// Opens a connection to `path` (created if missing) with the settings every connection of this
/// backend uses: WAL, `synchronous=FULL` (`NORMAL` when `sync` is false), `busy` as the busy
/// timeout, and the same pragmas as the read pool's connections.
pub(super) fn connect(path: &Path, sync: bool, busy: Duration) -> rusqlite::Result<Connection> {
    let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
        | OpenFlags::SQLITE_OPEN_CREATE
        | OpenFlags::SQLITE_OPEN_NO_MUTEX
        | OpenFlags::SQLITE_OPEN_URI;
    let conn = Connection::open_with_flags(path, flags)?;
    // rusqlite keeps 16 prepared statements by default; the writer prepares about 20 in all
    // (the save path's dozen, transaction control, and rarer ones: truncate, rewrite, records),
    // so a rare write would evict one the next save needs again.
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    conn.busy_timeout(busy)?;
    let synchronous = if sync { "FULL" } else { "NORMAL" };
    // In the order sqlx's connect options run them for the pool's connections.
    // `journal_size_limit`: see [`JOURNAL_SIZE_LIMIT`]. `secure_delete`: deleted rows (cleared
    // checkpoints, collected blobs) are overwritten, not left in free pages.
    conn.execute_batch(&format!(
        "PRAGMA journal_mode = WAL; PRAGMA foreign_keys = ON; \
         PRAGMA synchronous = {synchronous}; PRAGMA journal_size_limit = {JOURNAL_SIZE_LIMIT}; \
         PRAGMA secure_delete = ON;"
    ))?;
    Ok(conn)
}

/// Starts the writer thread: it opens its connection, creates or checks the schema (answering on
/// the returned channel), then serves writes until every sender is gone.
pub(super) fn spawn(
    path: PathBuf,
    sync: bool,
    timeout: Duration,
) -> Result<(mpsc::UnboundedSender<Job>, oneshot::Receiver<Result<()>>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    // A thread, not a task: it blocks on SQLite, and it must outlive whichever runtime opened the
    // store (tests open stores in short-lived runtimes).
    std::thread::Builder::new()
        .name("ckpt-sqlite-writer".into())
        .spawn(move || {
            let conn = match open(&path, sync, timeout) {
                Ok(conn) => {
                    let _ = ready_tx.send(Ok(()));
                    conn
                }
                Err(e) => {
                    let _ = ready_tx.send(Err(e));
                    return;
                }
            };
            serve(&conn, rx);
        })
        .map_err(|e| Error::Backend {
            backend: NAME,
            context: "starting the writer thread".into(),
            source: Box::new(e),
        })?;
    Ok((tx, ready_rx))
}

/// Opens the writer's connection and migrates the schema, retrying while another process holds
/// the database locked.
fn open(path: &Path, sync: bool, timeout: Duration) -> Result<Connection> {
    let deadline = Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        let result =
            connect(path, sync, timeout).and_then(|conn| migrate(&conn).map(|m| (conn, m)));
        match result {
            Ok((conn, Ok(()))) => return Ok(conn),
            Ok((_, Err(refused))) => return Err(refused),
            Err(e) if is_busy(&e) && Instant::now() < deadline => {
                std::thread::sleep(retry::SQL.delay(attempt));
                attempt += 1;
            }
            Err(e) => return Err(sql_error(format!("opening {}", path.display()), &e)),
        }
    }
}

/// Creates the schema on a new database and checks the version of an existing one, under SQLite's
/// write lock (`BEGIN IMMEDIATE`), so two processes opening a new file at once create it once.
/// The outer error is the driver's; the inner one a refusal (a newer schema).
fn migrate(conn: &Connection) -> rusqlite::Result<Result<()>> {
    conn.execute_batch("BEGIN IMMEDIATE")?;
    let outcome = (|| {
        conn.execute_batch("CREATE TABLE IF NOT EXISTS ckpt_schema (version INTEGER NOT NULL)")?;
        let version: Option<i64> =
            conn.query_row("SELECT MAX(version) FROM ckpt_schema", [], |row| row.get(0))?;
        match version {
            None => conn.execute_batch(SCHEMA_V2)?,
            Some(v) if v > SCHEMA_VERSION => return Ok(Err(newer_schema(v))),
            Some(1) => {
                let unkeyable: i64 = conn.query_row(V1_UNKEYABLE_SQL, [], |row| row.get(0))?;
                if unkeyable > 0 {
                    return Ok(Err(unmigratable(unkeyable)));
                }
                conn.execute_batch(MIGRATE_V1_TO_V2)?;
            }
            Some(_) => {}
        }
        conn.execute_batch(RECORDS_TABLE)?;
        conn.execute_batch(SEARCH_TABLE)?;
        Ok(check_shape(conn))
    })();
    match outcome {
        Ok(Ok(())) => {
            conn.execute_batch("COMMIT")?;
            Ok(Ok(()))
        }
        other => {
            let _ = conn.execute_batch("ROLLBACK");
            other
        }
    }
}

/// The writer loop: takes every queued write (up to [`MAX_GROUP`]) and commits them together.
fn serve(conn: &Connection, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.blocking_recv() {
        let mut jobs = vec![first];
        while jobs.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let (checkpoints, writes): (Vec<Job>, Vec<Job>) = jobs
            .into_iter()
            // A caller that gave up (timed out) no longer wants its write made.
            .filter(|job| !job.reply.is_closed())
            .partition(|job| matches!(job.op, WriteOp::Checkpoint | WriteOp::Compact));
        commit_group(conn, writes);
        for job in checkpoints {
            let result = match job.op {
                WriteOp::Compact => compact(conn),
                _ => checkpoint(conn),
            };
            let _ = job.reply.send(result);
        }
    }
}

/// Commits `jobs` in one transaction, each in its own savepoint, and answers each; if the
/// transaction as a whole fails, commits them one by one instead.
fn commit_group(conn: &Connection, jobs: Vec<Job>) {
    if jobs.len() > 1 {
        if let Ok(results) = run_transaction(conn, &jobs) {
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
            return;
        }
    }
    for job in jobs.into_iter().filter(|job| !job.reply.is_closed()) {
        let result = run_transaction(conn, std::slice::from_ref(&job))
            .and_then(|mut r| r.pop().unwrap_or(Ok(())));
        let _ = job.reply.send(result);
    }
}

/// Runs one fixed statement (cached: the writer runs the same few again and again).
fn exec(conn: &Connection, sql: &str) -> rusqlite::Result<usize> {
    conn.prepare_cached(sql)?.execute([])
}

/// Rolls back the open transaction, if any (after a busy `BEGIN` there is none).
fn roll_back(conn: &Connection) {
    if !conn.is_autocommit() {
        let _ = exec(conn, "ROLLBACK");
    }
}

/// One transaction applying `jobs`: the outer error means nothing was committed; the inner
/// results are each job's own (a refused job was rolled back to its savepoint, or, alone, with
/// the transaction).
fn run_transaction(conn: &Connection, jobs: &[Job]) -> Result<Vec<Result<()>>> {
    exec(conn, "BEGIN IMMEDIATE").map_err(|e| sql_error("starting a write transaction", &e))?;
    let mut results = Vec::with_capacity(jobs.len());
    if let [job] = jobs {
        match apply(conn, &job.op) {
            Ok(()) => results.push(Ok(())),
            Err(e) if is_refusal(&e) => {
                roll_back(conn);
                return Ok(vec![Err(e)]);
            }
            Err(e) => {
                roll_back(conn);
                return Err(e);
            }
        }
    } else {
        for job in jobs {
            match apply_in_savepoint(conn, &job.op) {
                Ok(result) => results.push(result),
                Err(e) => {
                    roll_back(conn);
                    return Err(e);
                }
            }
        }
    }
    if let Err(e) = exec(conn, "COMMIT") {
        roll_back(conn);
        return Err(sql_error("writing: committing", &e));
    }
    Ok(results)
}

/// Applies one write inside a savepoint: a refusal (conflict, invalid input) rolls back to it
/// and is returned as the inner error; a database failure is the outer error (the transaction
/// may be poisoned).
fn apply_in_savepoint(conn: &Connection, op: &WriteOp) -> Result<Result<()>> {
    exec(conn, "SAVEPOINT job").map_err(|e| sql_error("writing: savepoint", &e))?;
    let result = apply(conn, op);
    let refused = result.as_ref().is_err_and(is_refusal);
    match result {
        Err(e) if !refused => Err(e),
        result => {
            if result.is_err() {
                exec(conn, "ROLLBACK TO job")
                    .map_err(|e| sql_error("writing: rolling back a refused write", &e))?;
            }
            exec(conn, "RELEASE job")
                .map_err(|e| sql_error("writing: releasing a savepoint", &e))?;
            Ok(result)
        }
    }
}

/// Whether `e` refuses one write (its compare-and-append failed, or its input is bad) rather
/// than failing the transaction it ran in.
fn is_refusal(e: &Error) -> bool {
    matches!(
        e,
        Error::Conflict { .. } | Error::InvalidInput(_) | Error::Corrupt { .. }
    )
}

/// Applies one write on the writer's connection (inside a transaction).
fn apply(conn: &Connection, op: &WriteOp) -> Result<()> {
    match op {
        WriteOp::Append { appends, blobs } => {
            insert_blobs(conn, blobs)?;
            for append in appends {
                append_one(conn, append)?;
            }
            Ok(())
        }
        WriteOp::RaiseNextSeq { log, next_seq } => {
            let next = to_db_seq(*next_seq, "raising a log's next sequence number")?.max(1);
            check_seq_limit(log, *next_seq)?;
            conn.prepare_cached(
                "INSERT INTO logs (log, next_seq) VALUES (?1, ?2) \
                 ON CONFLICT (log) DO UPDATE SET next_seq = MAX(next_seq, excluded.next_seq)",
            )
            .and_then(|mut s| s.execute(params![log, next]))
            .map_err(|e| sql_error(format!("raising the next sequence of log {log:?}"), &e))?;
            Ok(())
        }
        WriteOp::Truncate { log, before } => {
            let before = (*before).min(MAX_SEQ + 1) as i64;
            conn.prepare_cached(
                "DELETE FROM frames WHERE id >= (SELECT id << 32 FROM logs WHERE log = ?1) \
                 AND id < (SELECT (id << 32) + ?2 FROM logs WHERE log = ?1)",
            )
            .and_then(|mut s| s.execute(params![log, before]))
            .map_err(|e| sql_error(format!("truncating log {log:?}"), &e))?;
            Ok(())
        }
        WriteOp::DeleteBlobs(hashes) => {
            for hash in hashes {
                conn.prepare_cached("DELETE FROM blobs WHERE hash = ?1")
                    .and_then(|mut s| s.execute(params![&hash[..]]))
                    .map_err(|e| sql_error("deleting blobs", &e))?;
            }
            Ok(())
        }
        WriteOp::RewriteFrames { log, frames } => {
            // A sequence number past MAX_SEQ has no frame to rewrite.
            for (seq, bytes) in frames.iter().filter(|(seq, _)| *seq <= MAX_SEQ) {
                conn.prepare_cached(
                    "UPDATE frames SET frame = ?3 \
                     WHERE id = (SELECT (id << 32) + ?2 FROM logs WHERE log = ?1)",
                )
                .and_then(|mut s| s.execute(params![log, *seq as i64, bytes]))
                .map_err(|e| sql_error(format!("rewriting log {log:?}"), &e))?;
            }
            Ok(())
        }
        WriteOp::RewriteBlobs(blobs) => {
            for (hash, bytes) in blobs {
                conn.prepare_cached("UPDATE blobs SET data = ?2 WHERE hash = ?1")
                    .and_then(|mut s| s.execute(params![&hash[..], bytes]))
                    .map_err(|e| sql_error("rewriting blobs", &e))?;
            }
            Ok(())
        }
        WriteOp::PutRecords(records) => {
            for (key, value) in records {
                conn.prepare_cached(
                    "INSERT INTO records (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut s| s.execute(params![key, value]))
                .map_err(|e| sql_error("writing derived records", &e))?;
            }
            Ok(())
        }
        WriteOp::DeleteRecords(keys) => {
            for key in keys {
                conn.prepare_cached("DELETE FROM records WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key]))
                    .map_err(|e| sql_error("deleting derived records", &e))?;
            }
            Ok(())
        }
        WriteOp::WriteIndex { put, delete } => {
            for key in delete {
                conn.prepare_cached("DELETE FROM search_index WHERE key = ?1")
                    .and_then(|mut s| s.execute(params![key]))
                    .map_err(|e| sql_error("writing the search index: deleting entries", &e))?;
            }
            for (key, value) in put {
                conn.prepare_cached(
                    "INSERT INTO search_index (key, value) VALUES (?1, ?2) \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                )
                .and_then(|mut s| s.execute(params![key, value]))
                .map_err(|e| sql_error("writing the search index: storing entries", &e))?;
            }
            Ok(())
        }
        WriteOp::ClearIndex => {
            exec(conn, "DELETE FROM search_index")
                .map_err(|e| sql_error("clearing the search index", &e))?;
            Ok(())
        }
        WriteOp::Checkpoint | WriteOp::Compact => Ok(()),
    }
}

/// Stores blobs, leaving existing ones as they are.
fn insert_blobs(conn: &Connection, blobs: &[(BlobHash, Vec<u8>)]) -> Result<()> {
    if blobs.is_empty() {
        return Ok(());
    }
    let mut insert = conn
        .prepare_cached("INSERT INTO blobs (hash, data) VALUES (?1, ?2) ON CONFLICT DO NOTHING")
        .map_err(|e| sql_error("storing blobs", &e))?;
    for (hash, data) in blobs {
        insert
            .execute(params![&hash[..], data])
            .map_err(|e| sql_error("storing blobs", &e))?;
    }
    Ok(())
}

/// The compare-and-append of one log: moves `next_seq` from `expected_seq` to past the frames
/// (creating the log when `expected_seq` is 1), then inserts the frames. An append without
/// frames is only a check (it does not create the log).
fn append_one(conn: &Connection, append: &LogAppend) -> Result<()> {
    let log = &append.log;
    let what = || format!("appending to log {log:?}");
    let expected = to_db_seq(append.expected_seq, &what())?;
    let end = to_db_seq(
        end_seq(log, append.expected_seq, append.frames.len())?,
        &what(),
    )?;
    if append.frames.is_empty() {
        let actual = current_next_seq(conn, log)?;
        return check(log, append.expected_seq, actual);
    }
    check_seq_limit(log, end as u64)?;
    // The common case in one statement: the stored number is the expected one and no frame
    // lies at or past it (so `next_seq` would report exactly it), and it moves.
    let fast = if append.expected_seq == 1 {
        CREATE_LOG_SQL
    } else {
        MOVE_NEXT_SEQ_SQL
    };
    let moved: Option<i64> = conn
        .prepare_cached(fast)
        .and_then(|mut s| {
            s.query_row(params![log, expected, end], |row| row.get(0))
                .optional()
        })
        .map_err(|e| sql_error(what(), &e))?;
    let log_id = match moved {
        Some(id) => id,
        None => {
            // Compared with the log's next sequence number as `next_seq` reports it (never at
            // or below its last frame), inside the writer's transaction, then moved.
            let actual = current_next_seq(conn, log)?;
            check(log, append.expected_seq, actual)?;
            conn.prepare_cached(SET_NEXT_SEQ_SQL)
                .and_then(|mut s| s.query_row(params![log, end], |row| row.get(0)))
                .map_err(|e| sql_error(what(), &e))?
        }
    };
    check_log_id_limit(log_id)?;
    let mut insert = conn
        .prepare_cached("INSERT INTO frames (id, frame) VALUES (?1, ?2)")
        .map_err(|e| sql_error(what(), &e))?;
    for (seq, frame) in (append.expected_seq..).zip(&append.frames) {
        insert
            .execute(params![frame_key(log_id, seq), frame])
            .map_err(|e| {
                if is_unique_violation(&e) {
                    Error::Conflict {
                        log: log.clone(),
                        expected: append.expected_seq,
                        actual: append.expected_seq,
                    }
                } else {
                    sql_error(what(), &e)
                }
            })?;
    }
    Ok(())
}

/// Refuses a sequence number past what a frame key holds (see [`MAX_SEQ`]).
fn check_seq_limit(log: &str, next_seq: u64) -> Result<()> {
    if next_seq <= MAX_SEQ + 1 {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "log {log:?} would reach sequence number {next_seq}; a SQLite store holds at most \
         {MAX_SEQ} frames per log (use PostgreSQL for longer logs)"
    )))
}

/// Refuses a log id past what a frame key holds (see [`MAX_LOG_ID`]); the new log's row is
/// rolled back with the refused append.
fn check_log_id_limit(log_id: i64) -> Result<()> {
    if (1..=MAX_LOG_ID).contains(&log_id) {
        return Ok(());
    }
    Err(Error::InvalidInput(format!(
        "a SQLite store holds at most {MAX_LOG_ID} logs and this one has no id left (log id \
         {log_id}); start a new store, or use PostgreSQL"
    )))
}

/// The tables this backend makes, whose shape [`check_shape`] compares.
const TABLES: [&str; 6] = [
    "ckpt_schema",
    "logs",
    "frames",
    "blobs",
    "records",
    "search_index",
];

/// How SQLite describes `conn`'s tables: per table whether it exists and has a rowid, its
/// columns (name, type, not null, primary key position) and its indexes (unique, origin).
fn shape(conn: &Connection) -> rusqlite::Result<Vec<String>> {
    let mut out = Vec::new();
    for table in TABLES {
        let mut kind =
            conn.prepare_cached("SELECT type, ncol, wr FROM pragma_table_list WHERE name = ?1")?;
        let rows = kind.query_map([table], |r| {
            Ok(format!(
                "{table}: {} of {} columns, without rowid {}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, i64>(2)?
            ))
        })?;
        for row in rows {
            out.push(row?);
        }
        let mut columns = conn.prepare_cached(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1) ORDER BY cid",
        )?;
        let rows = columns.query_map([table], |r| {
            Ok(format!(
                "{table}.{} {} not null {} key {}",
                r.get::<_, String>(0)?,
                r.get::<_, String>(1)?,
                r.get::<_, i64>(2)?,
                r.get::<_, i64>(3)?
            ))
        })?;
        for row in rows {
            out.push(row?);
        }
        let mut indexes = conn.prepare_cached(
            "SELECT name, \"unique\", origin FROM pragma_index_list(?1) ORDER BY name",
        )?;
        let rows = indexes.query_map([table], |r| {
            Ok(format!(
                "{table} index {} unique {} from {}",
                r.get::<_, String>(0)?,
                r.get::<_, i64>(1)?,
                r.get::<_, String>(2)?
            ))
        })?;
        for row in rows {
            out.push(row?);
        }
    }
    Ok(out)
}

/// Refuses a file whose tables are not shaped as this code makes them. A damaged byte in the
/// schema's text can still parse (`id INTEGER PRIMARY KEY` read as a column of type
/// `INTEGER$PRIMARY`, no longer the row id), and SQLite's integrity check does not look at it:
/// every row would then read wrong, silently.
fn check_shape(conn: &Connection) -> Result<()> {
    let expected = (|| {
        let fresh = Connection::open_in_memory()?;
        fresh.execute_batch("CREATE TABLE ckpt_schema (version INTEGER NOT NULL)")?;
        fresh.execute_batch(SCHEMA_V2)?;
        fresh.execute_batch(RECORDS_TABLE)?;
        fresh.execute_batch(SEARCH_TABLE)?;
        shape(&fresh)
    })();
    let found = shape(conn);
    match (expected, found) {
        (Ok(expected), Ok(found)) if expected == found => Ok(()),
        (Ok(expected), Ok(found)) => {
            let wrong: Vec<&String> = found.iter().filter(|f| !expected.contains(f)).collect();
            let missing: Vec<&String> = expected.iter().filter(|e| !found.contains(e)).collect();
            Err(Error::corrupt(
                "the SQLite file's schema",
                format!(
                    "its tables are not shaped as ckpt makes them (found {wrong:?} where \
                     {missing:?} was expected): the file is damaged; restore it from a backup \
                     (nothing was written)"
                ),
            ))
        }
        (Err(e), _) | (_, Err(e)) => Err(Error::corrupt(
            "the SQLite file's schema",
            format!("its tables cannot be described: {e}"),
        )),
    }
}

/// The refusal to migrate a version 1 database holding frames version 2 cannot key.
fn unmigratable(frames: i64) -> Error {
    Error::Backend {
        backend: NAME,
        context: "upgrading the database from schema version 1 to 2".into(),
        source: format!(
            "{frames} frames have a sequence number outside 0..={MAX_SEQ}, which version 2 \
             cannot store; export the store with the ckpt that wrote it (ckpt export) and \
             import the file into a new store (nothing was changed)"
        )
        .into(),
    }
}

/// A conflict unless `actual == expected`.
fn check(log: &str, expected: u64, actual: u64) -> Result<()> {
    if actual == expected {
        Ok(())
    } else {
        Err(Error::Conflict {
            log: log.to_owned(),
            expected,
            actual,
        })
    }
}

/// The log's next sequence number as `conn` sees it (inside the writer's transaction, or on the
/// backend's tail reader).
pub(super) fn current_next_seq(conn: &Connection, log: &str) -> Result<u64> {
    let next: i64 = conn
        .prepare_cached(NEXT_SEQ_SQL)
        .and_then(|mut s| s.query_row(params![log], |row| row.get(0)))
        .map_err(|e| sql_error(format!("reading the next sequence of log {log:?}"), &e))?;
    from_db_seq(next, &format!("log {log:?}"))
}

/// Moves the WAL's content into the database file and truncates the WAL.
fn checkpoint(conn: &Connection) -> Result<()> {
    conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(()))
        .map_err(|e| sql_error("checkpointing the WAL into the database file", &e))
}

/// Rebuilds the database file with only live rows (`VACUUM`: the file shrinks to what is live;
/// `secure_delete` has already overwritten deleted rows), then empties the WAL, which holds the
/// rebuilt pages and, from earlier writes, deleted ones. Unlike a flush, an empty WAL is required:
/// when a reader keeps SQLite from truncating it (past the busy timeout), this fails.
fn compact(conn: &Connection) -> Result<()> {
    conn.execute_batch("VACUUM")
        .map_err(|e| sql_error("rebuilding the database file (VACUUM)", &e))?;
    let busy: i64 = conn
        .query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |row| {
            Ok(row.get(0).unwrap_or(1))
        })
        .map_err(|e| sql_error("checkpointing the WAL into the database file", &e))?;
    if busy != 0 {
        return Err(Error::Busy {
            what: "another connection kept reading the SQLite database, so its WAL (which may \
                   hold deleted pages) could not be emptied; run compact again when fewer \
                   processes use the store"
                .into(),
        });
    }
    Ok(())
}
