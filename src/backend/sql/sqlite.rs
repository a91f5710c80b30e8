//! The SQLite [`Backend`] (`sqlite://PATH`), through sqlx: one database file, shareable by several
//! processes.
//!
//! # Layout
//!
//! The tables of the [SQL backends](super): `logs` and `frames` (`WITHOUT ROWID`, keyed by
//! `log` and `(log, seq)`), `blobs` keyed by hash, `ckpt_schema` with the schema version, and
//! `records` with the store's derived records ([`SideTable`]; created by any open, so an older
//! database gains it without a schema change: older code ignores it).
//!
//! # Writes: one writer, group commit
//!
//! Every write goes through one writer thread owning one connection. It takes every write queued
//! while it was busy and commits them in one `BEGIN IMMEDIATE` transaction (one fsync for all):
//! each write runs inside its own savepoint, so a write that conflicts (its compare-and-append
//! fails) is rolled back alone while the others commit. Should a statement fail in a way that may
//! poison the transaction, the whole transaction is rolled back and its writes are retried one by
//! one. `BEGIN IMMEDIATE` takes SQLite's write lock first, so the compare-and-append is fenced
//! across processes too; the primary key `(log, seq)` is the last line of defence.
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
    SqliteConnectOptions, SqliteConnection, SqliteJournalMode, SqlitePool, SqlitePoolOptions,
    SqliteSynchronous,
};
use sqlx::{Connection, Row};
use tokio::sync::{mpsc, oneshot};

use super::{end_seq, frames_of, from_db_seq, parse_options, to_db_seq, to_hash, DriverError};
use crate::backend::retry::{self, GaveUp};
use crate::backend::{
    Backend, Blob, BlobHash, Capabilities, CompactReport, ConnectOptions, Inspect, LogAppend,
    Maintain, RecordedDamage, Rewrite, SideTable,
};
use crate::error::{Error, Result};
use crate::url::{parse_bool, RawUrl};

/// The backend's name in errors.
const NAME: &str = "SQLite";
/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: i64 = 1;
/// Most writes committed in one transaction.
const MAX_GROUP: usize = 256;
/// Default size of the read pool.
const DEFAULT_READERS: u32 = 4;
/// Hashes per `IN (...)` query (SQLite allows 32766 parameters; stay far below).
const HASH_CHUNK: usize = 500;

/// The statement [`Backend::scan`] runs: a range of the primary key `(log, seq)`.
pub const SCAN_SQL: &str =
    "SELECT seq, frame FROM frames WHERE log = ?1 AND seq >= ?2 ORDER BY seq LIMIT ?3";

/// A log's next sequence number: the stored one, but never at or below its last frame. A stored
/// number that was lowered (by hand, or by damage) would otherwise make every append conflict
/// with a log that cannot move, and hand out versions that exist; `Store::verify` reports it
/// (see [`Inspect::log_problems`]).
const NEXT_SEQ_SQL: &str = "SELECT MAX(\
     COALESCE((SELECT next_seq FROM logs WHERE log = ?1), 1), \
     COALESCE((SELECT MAX(seq) + 1 FROM frames WHERE log = ?1), 1))";

/// The derived records' table ([`SideTable`]), beside schema version 1.
const RECORDS_TABLE: &str = "CREATE TABLE IF NOT EXISTS records \
     (key TEXT NOT NULL PRIMARY KEY, value BLOB NOT NULL) WITHOUT ROWID";

/// Rows per multi-row `INSERT` (3 parameters each; SQLite allows 32766).
const FRAME_CHUNK: usize = 200;

/// The fast compare-and-move of a log's next sequence number (?1 log, ?2 expected, ?3 new), when
/// `next_seq` would report exactly the stored number: it equals the expected one and no frame
/// lies at or past it. Changes no row otherwise (the caller then compares with what `next_seq`
/// reports, as the slow path).
const MOVE_NEXT_SEQ_SQL: &str = "UPDATE logs SET next_seq = ?3 \
     WHERE log = ?1 AND next_seq = ?2 \
     AND NOT EXISTS (SELECT 1 FROM frames WHERE log = ?1 AND seq >= ?2)";

/// The same for a new log (1 expected): created when it has neither a row nor a frame.
const CREATE_LOG_SQL: &str = "INSERT INTO logs (log, next_seq) \
     SELECT ?1, ?3 WHERE ?2 = 1 AND NOT EXISTS (SELECT 1 FROM frames WHERE log = ?1) \
     ON CONFLICT (log) DO NOTHING";

/// The schema, version 1.
const SCHEMA_V1: &str = "
CREATE TABLE logs (log TEXT NOT NULL PRIMARY KEY, next_seq INTEGER NOT NULL) WITHOUT ROWID;
CREATE TABLE frames (
    log TEXT NOT NULL,
    seq INTEGER NOT NULL,
    frame BLOB NOT NULL,
    PRIMARY KEY (log, seq)
) WITHOUT ROWID;
CREATE TABLE blobs (hash BLOB NOT NULL PRIMARY KEY, data BLOB NOT NULL);
INSERT INTO ckpt_schema (version) VALUES (1);
";

/// A [`Backend`] on one SQLite file; see the [module documentation](self).
pub struct SqliteBackend {
    path: PathBuf,
    sync: bool,
    readers: SqlitePool,
    writer: mpsc::UnboundedSender<Job>,
    timeout: Duration,
    /// The connection [`Backend::next_seq`] reads on without yielding (see there).
    tail_reader: std::sync::Mutex<SqliteConnection>,
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

/// One write for the writer thread, and where to send its outcome.
struct Job {
    op: WriteOp,
    reply: oneshot::Sender<Result<()>>,
}

/// The writes the writer thread performs.
enum WriteOp {
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
    /// Moves the WAL into the database file and empties it (outside any transaction).
    Checkpoint,
    /// `VACUUM`, then a checkpoint that must empty the WAL (outside any transaction).
    Compact,
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
        let connect = connect_options(&path, sync, parsed.pool.timeout);
        let (writer, ready) = spawn_writer(connect.clone(), parsed.pool.timeout)?;
        match tokio::time::timeout(parsed.pool.timeout, ready).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            Ok(Err(_)) => return Err(writer_gone("opening the database")),
            Err(_) => return Err(timed_out("opening the database", parsed.pool.timeout)),
        }
        // No busy wait on this one: it blocks its caller's thread, so it gives up at once and the
        // pooled (async) read takes over.
        let tail_reader =
            SqliteConnection::connect_with(&connect.clone().busy_timeout(Duration::ZERO))
                .await
                .map_err(|e| db_error("opening the database", &e))?;
        let readers = SqlitePoolOptions::new()
            .max_connections(parsed.pool.max_connections.unwrap_or(DEFAULT_READERS))
            .min_connections(parsed.pool.min_connections)
            .max_lifetime(parsed.pool.max_lifetime)
            .acquire_timeout(parsed.pool.acquire_timeout)
            // A local file: no ping needed before each use.
            .test_before_acquire(false)
            .connect_lazy_with(connect);
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
        let mut conn = self.tail_reader.try_lock().ok()?;
        let rows: std::result::Result<Vec<i64>, sqlx::Error> = block_on(
            sqlx::query_scalar(NEXT_SEQ_SQL)
                .bind(log)
                .fetch_all(&mut *conn),
        );
        match rows {
            Ok(rows) => Some(from_db_seq(
                rows.first().copied().unwrap_or(1),
                &format!("log {log:?}"),
            )),
            Err(e) if is_busy(&e) => None,
            Err(e) => Some(Err(db_error(
                format!("reading the next sequence of log {log:?}"),
                &e,
            ))),
        }
    }
}

/// Runs a future to completion on the calling thread. Only for futures that sqlx's SQLite worker
/// thread completes (they need no async runtime).
fn block_on<F: std::future::Future>(future: F) -> F::Output {
    use std::sync::Arc;
    use std::task::{Context, Poll, Wake, Waker};
    struct Unpark(std::thread::Thread);
    impl Wake for Unpark {
        fn wake(self: Arc<Self>) {
            self.0.unpark();
        }
    }
    let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
    let mut cx = Context::from_waker(&waker);
    let mut future = std::pin::pin!(future);
    loop {
        if let Poll::Ready(out) = future.as_mut().poll(&mut cx) {
            return out;
        }
        std::thread::park();
    }
}

/// The file part of a `sqlite://PATH?...` URL.
fn location(url: &str) -> &str {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.split_once('?').map_or(rest, |(l, _)| l)
}

/// The connection settings every connection (writer and readers) uses.
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
        // The WAL is emptied at each checkpoint past this size, so it does not keep its peak size.
        .pragma("journal_size_limit", "1048576")
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

/// Starts the writer thread: it opens its connection, creates or checks the schema (answering on
/// the returned channel), then serves writes until every sender is gone.
fn spawn_writer(
    connect: SqliteConnectOptions,
    timeout: Duration,
) -> Result<(mpsc::UnboundedSender<Job>, oneshot::Receiver<Result<()>>)> {
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel();
    // A thread with its own runtime, not a task: the writer must outlive whichever runtime opened
    // the store (tests open stores in short-lived runtimes).
    std::thread::Builder::new()
        .name("ckpt-sqlite-writer".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = ready_tx.send(Err(Error::Backend {
                        backend: NAME,
                        context: "starting the writer thread".into(),
                        source: Box::new(e),
                    }));
                    return;
                }
            };
            runtime.block_on(async move {
                let mut conn = match open_writer(&connect, timeout).await {
                    Ok(conn) => {
                        let _ = ready_tx.send(Ok(()));
                        conn
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                serve(&mut conn, rx).await;
                let _ = conn.close().await;
            });
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
async fn open_writer(
    connect: &SqliteConnectOptions,
    timeout: Duration,
) -> Result<SqliteConnection> {
    let what = format!("opening {}", connect.get_filename().display());
    let deadline = tokio::time::Instant::now() + timeout;
    let mut attempt = 0;
    loop {
        let result = async {
            let mut conn = SqliteConnection::connect_with(connect).await?;
            match migrate(&mut conn).await {
                Ok(outcome) => Ok((conn, outcome)),
                Err(e) => {
                    let _ = conn.close().await;
                    Err(e)
                }
            }
        }
        .await;
        match result {
            Ok((conn, Ok(()))) => return Ok(conn),
            Ok((_, Err(e))) => return Err(e),
            Err(e) if is_busy(&e) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(retry::SQL.delay(attempt)).await;
                attempt += 1;
            }
            Err(e) => return Err(db_error(what, &e)),
        }
    }
}

/// Creates the schema on a new database and checks the version of an existing one, under SQLite's
/// write lock (`BEGIN IMMEDIATE`), so two processes opening a new file at once create it once.
/// The outer error is the driver's; the inner one a refusal (a newer schema).
async fn migrate(conn: &mut SqliteConnection) -> std::result::Result<Result<()>, sqlx::Error> {
    sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await?;
    let outcome = async {
        sqlx::query("CREATE TABLE IF NOT EXISTS ckpt_schema (version INTEGER NOT NULL)")
            .execute(&mut *conn)
            .await?;
        let version: Option<i64> = sqlx::query_scalar("SELECT MAX(version) FROM ckpt_schema")
            .fetch_one(&mut *conn)
            .await?;
        match version {
            None => {
                sqlx::raw_sql(SCHEMA_V1).execute(&mut *conn).await?;
            }
            Some(v) if v > SCHEMA_VERSION => return Ok(Err(newer_schema(v))),
            Some(_) => {}
        }
        sqlx::query(RECORDS_TABLE).execute(&mut *conn).await?;
        Ok(Ok(()))
    }
    .await;
    match outcome {
        Ok(Ok(())) => {
            sqlx::query("COMMIT").execute(&mut *conn).await?;
            Ok(Ok(()))
        }
        other => {
            let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
            other
        }
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

/// The writer loop: takes every queued write (up to [`MAX_GROUP`]) and commits them together.
async fn serve(conn: &mut SqliteConnection, mut rx: mpsc::UnboundedReceiver<Job>) {
    while let Some(first) = rx.recv().await {
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
        commit_group(conn, writes).await;
        for job in checkpoints {
            let result = match job.op {
                WriteOp::Compact => compact(conn).await,
                _ => checkpoint(conn).await,
            };
            let _ = job.reply.send(result);
        }
    }
}

/// Commits `jobs` in one transaction, each in its own savepoint, and answers each; if the
/// transaction as a whole fails, commits them one by one instead.
async fn commit_group(conn: &mut SqliteConnection, jobs: Vec<Job>) {
    if jobs.len() > 1 {
        if let Ok(results) = run_transaction(conn, &jobs).await {
            for (job, result) in jobs.into_iter().zip(results) {
                let _ = job.reply.send(result);
            }
            return;
        }
    }
    for job in jobs.into_iter().filter(|job| !job.reply.is_closed()) {
        let result = run_transaction(conn, std::slice::from_ref(&job))
            .await
            .and_then(|mut r| r.pop().unwrap_or(Ok(())));
        let _ = job.reply.send(result);
    }
}

/// One transaction applying `jobs`: the outer error means nothing was committed; the inner
/// results are each job's own (a refused job was rolled back to its savepoint).
async fn run_transaction(conn: &mut SqliteConnection, jobs: &[Job]) -> Result<Vec<Result<()>>> {
    if let [job] = jobs {
        // Alone in its transaction, a job needs no savepoint: a refused one rolls it all back.
        let applied = match &job.op {
            WriteOp::Append { appends, blobs } if one_batch_append(appends) => {
                append_in_one_batch(conn, "BEGIN IMMEDIATE", appends, blobs).await
            }
            op => match sqlx::query("BEGIN IMMEDIATE").execute(&mut *conn).await {
                Ok(_) => apply(conn, op).await,
                Err(e) => return Err(db_error("starting a write transaction", &e)),
            },
        };
        return match applied {
            Ok(()) => match sqlx::query("COMMIT").execute(&mut *conn).await {
                Ok(_) => Ok(vec![Ok(())]),
                Err(e) => {
                    let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                    Err(db_error("writing: committing", &e))
                }
            },
            Err(e) => {
                // Fails harmlessly when the transaction never began (a busy BEGIN).
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                if is_refusal(&e) {
                    Ok(vec![Err(e)])
                } else {
                    Err(e)
                }
            }
        };
    }
    sqlx::query("BEGIN IMMEDIATE")
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("starting a write transaction", &e))?;
    let mut results = Vec::with_capacity(jobs.len());
    for job in jobs {
        match apply_in_savepoint(conn, &job.op).await {
            Ok(result) => results.push(result),
            Err(e) => {
                let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
                return Err(e);
            }
        }
    }
    if let Err(e) = sqlx::query("COMMIT").execute(&mut *conn).await {
        let _ = sqlx::query("ROLLBACK").execute(&mut *conn).await;
        return Err(db_error("writing: committing", &e));
    }
    Ok(results)
}

/// Applies one write inside a savepoint: a refusal (conflict, invalid input) rolls back to it
/// and is returned as the inner error; a database failure is the outer error (the transaction
/// may be poisoned).
async fn apply_in_savepoint(conn: &mut SqliteConnection, op: &WriteOp) -> Result<Result<()>> {
    sqlx::query("SAVEPOINT job")
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("writing: savepoint", &e))?;
    let result = apply(conn, op).await;
    let refused = result.as_ref().is_err_and(is_refusal);
    match result {
        Err(e) if !refused => Err(e),
        result => {
            if result.is_err() {
                sqlx::query("ROLLBACK TO job")
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| db_error("writing: rolling back a refused write", &e))?;
            }
            sqlx::query("RELEASE job")
                .execute(&mut *conn)
                .await
                .map_err(|e| db_error("writing: releasing a savepoint", &e))?;
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
async fn apply(conn: &mut SqliteConnection, op: &WriteOp) -> Result<()> {
    match op {
        WriteOp::Append { appends, blobs } if one_batch_append(appends) => {
            append_in_one_batch(conn, "", appends, blobs).await
        }
        WriteOp::Append { appends, blobs } => {
            insert_blobs(conn, blobs).await?;
            for append in appends {
                append_one(conn, append).await?;
            }
            Ok(())
        }
        WriteOp::RaiseNextSeq { log, next_seq } => {
            let next = to_db_seq(*next_seq, "raising a log's next sequence number")?.max(1);
            sqlx::query(
                "INSERT INTO logs (log, next_seq) VALUES (?1, ?2) \
                 ON CONFLICT (log) DO UPDATE SET next_seq = MAX(next_seq, excluded.next_seq)",
            )
            .bind(log)
            .bind(next)
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error(format!("raising the next sequence of log {log:?}"), &e))?;
            Ok(())
        }
        WriteOp::Truncate { log, before } => {
            let before = i64::try_from(*before).unwrap_or(i64::MAX);
            sqlx::query("DELETE FROM frames WHERE log = ?1 AND seq < ?2")
                .bind(log)
                .bind(before)
                .execute(&mut *conn)
                .await
                .map_err(|e| db_error(format!("truncating log {log:?}"), &e))?;
            Ok(())
        }
        WriteOp::DeleteBlobs(hashes) => {
            for hash in hashes {
                sqlx::query("DELETE FROM blobs WHERE hash = ?1")
                    .bind(&hash[..])
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| db_error("deleting blobs", &e))?;
            }
            Ok(())
        }
        WriteOp::RewriteFrames { log, frames } => {
            for (seq, bytes) in frames {
                let seq = i64::try_from(*seq).unwrap_or(i64::MAX);
                sqlx::query("UPDATE frames SET frame = ?3 WHERE log = ?1 AND seq = ?2")
                    .bind(log)
                    .bind(seq)
                    .bind(bytes.as_slice())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| db_error(format!("rewriting log {log:?}"), &e))?;
            }
            Ok(())
        }
        WriteOp::RewriteBlobs(blobs) => {
            for (hash, bytes) in blobs {
                sqlx::query("UPDATE blobs SET data = ?2 WHERE hash = ?1")
                    .bind(&hash[..])
                    .bind(bytes.as_slice())
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| db_error("rewriting blobs", &e))?;
            }
            Ok(())
        }
        WriteOp::PutRecords(records) => {
            for chunk in records.chunks(FRAME_CHUNK) {
                let rows = vec!["(?, ?)"; chunk.len()].join(", ");
                let sql = format!(
                    "INSERT INTO records (key, value) VALUES {rows} \
                     ON CONFLICT (key) DO UPDATE SET value = excluded.value"
                );
                let mut query = sqlx::query(&sql);
                for (key, value) in chunk {
                    query = query.bind(key).bind(value.as_slice());
                }
                query
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| db_error("writing derived records", &e))?;
            }
            Ok(())
        }
        WriteOp::DeleteRecords(keys) => {
            for key in keys {
                sqlx::query("DELETE FROM records WHERE key = ?1")
                    .bind(key)
                    .execute(&mut *conn)
                    .await
                    .map_err(|e| db_error("deleting derived records", &e))?;
            }
            Ok(())
        }
        WriteOp::Checkpoint | WriteOp::Compact => Ok(()),
    }
}

/// Stores blobs, leaving existing ones as they are.
async fn insert_blobs(conn: &mut SqliteConnection, blobs: &[(BlobHash, Vec<u8>)]) -> Result<()> {
    for chunk in blobs.chunks(FRAME_CHUNK) {
        let rows = vec!["(?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO blobs (hash, data) VALUES {rows} ON CONFLICT DO NOTHING");
        let mut query = sqlx::query(&sql);
        for (hash, data) in chunk {
            query = query.bind(&hash[..]).bind(data);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(|e| db_error("storing blobs", &e))?;
    }
    Ok(())
}

/// A parameter of [`append_in_one_batch`]'s batch.
enum Arg<'a> {
    Text(&'a str),
    Int(i64),
    Blob(&'a [u8]),
}

/// Whether an append can be made in one batch of statements ([`append_in_one_batch`]): one
/// log gets at most [`FRAME_CHUNK`] frames, every other part is a check (no frames).
fn one_batch_append(appends: &[LogAppend]) -> bool {
    let mut with_frames = appends.iter().filter(|a| !a.frames.is_empty());
    with_frames
        .next()
        .is_some_and(|a| a.frames.len() <= FRAME_CHUNK)
        && with_frames.next().is_none()
}

/// `prefix` (`BEGIN IMMEDIATE`, or nothing inside a savepoint), then an append that
/// [`one_batch_append`] accepts, in one batch of statements: one round trip to sqlx's worker
/// thread instead of one per statement. The fast move of the log's next sequence number (made
/// only when every check holds), the frames (inserted only when that move changed its row),
/// their count, then the blobs. When the fast path did not apply, the append is made (or refused) the slow
/// way in the same transaction, with exactly the slow path's checks and errors.
async fn append_in_one_batch(
    conn: &mut SqliteConnection,
    prefix: &str,
    appends: &[LogAppend],
    blobs: &[(BlobHash, Vec<u8>)],
) -> Result<()> {
    let Some(main) = appends.iter().find(|a| !a.frames.is_empty()) else {
        return Ok(());
    };
    let log = &main.log;
    let what = || format!("appending to log {log:?}");
    let expected = to_db_seq(main.expected_seq, &what())?;
    let end = to_db_seq(end_seq(log, main.expected_seq, main.frames.len())?, &what())?;
    let checks: Vec<&LogAppend> = appends.iter().filter(|a| a.frames.is_empty()).collect();
    // Anonymous parameters only, bound in the order they appear: sqlx numbers a batch's
    // parameters across its statements, and a statement whose numbered parameters skip
    // numbers stops binding early.
    let mut args: Vec<Arg<'_>> = Vec::new();
    let mut guard = String::new();
    for check in &checks {
        guard.push_str(
            " AND MAX(COALESCE((SELECT next_seq FROM logs WHERE log = ?), 1), \
             COALESCE((SELECT MAX(seq) + 1 FROM frames WHERE log = ?), 1)) = ?",
        );
        args.push(Arg::Text(&check.log));
        args.push(Arg::Text(&check.log));
        args.push(Arg::Int(to_db_seq(check.expected_seq, &what())?));
    }
    let mut sql = String::new();
    if !prefix.is_empty() {
        sql.push_str(prefix);
        sql.push_str("; ");
    }
    // The checks guard the move itself, so a failed one changes nothing.
    let mut head: Vec<Arg<'_>> = Vec::new();
    if main.expected_seq == 1 {
        sql.push_str(&format!(
            "INSERT INTO logs (log, next_seq) SELECT ?, ? \
             WHERE NOT EXISTS (SELECT 1 FROM frames WHERE log = ?){guard} \
             ON CONFLICT (log) DO NOTHING"
        ));
        head.extend([Arg::Text(log), Arg::Int(end), Arg::Text(log)]);
    } else {
        sql.push_str(&format!(
            "UPDATE logs SET next_seq = ? WHERE log = ? AND next_seq = ? \
             AND NOT EXISTS (SELECT 1 FROM frames WHERE log = ? AND seq >= ?){guard}"
        ));
        head.extend([
            Arg::Int(end),
            Arg::Text(log),
            Arg::Int(expected),
            Arg::Text(log),
            Arg::Int(expected),
        ]);
    }
    head.append(&mut args);
    let mut args = head;
    let rows = vec!["(?, ?, ?)"; main.frames.len()].join(", ");
    sql.push_str(&format!(
        "; INSERT INTO frames (log, seq, frame) SELECT column1, column2, column3 \
         FROM (VALUES {rows}) WHERE changes() = 1; SELECT changes()"
    ));
    for (seq, frame) in (expected..).zip(&main.frames) {
        args.extend([Arg::Text(log), Arg::Int(seq), Arg::Blob(frame)]);
    }
    let blob_chunks: Vec<&[(BlobHash, Vec<u8>)]> = blobs.chunks(FRAME_CHUNK).collect();
    if let Some(first) = blob_chunks.first() {
        let rows = vec!["(?, ?)"; first.len()].join(", ");
        sql.push_str(&format!(
            "; INSERT INTO blobs (hash, data) VALUES {rows} ON CONFLICT DO NOTHING"
        ));
        for (hash, data) in first.iter() {
            args.extend([Arg::Blob(&hash[..]), Arg::Blob(data)]);
        }
    }
    let mut query = sqlx::query_scalar::<_, i64>(&sql);
    for arg in args {
        query = match arg {
            Arg::Text(t) => query.bind(t),
            Arg::Int(i) => query.bind(i),
            Arg::Blob(b) => query.bind(b),
        };
    }
    let inserted = query
        .fetch_all(&mut *conn)
        .await
        .map_err(|e| db_error(what(), &e))?;
    for chunk in blob_chunks.iter().skip(1) {
        insert_blobs(conn, chunk).await?;
    }
    if inserted.first().copied() == Some(main.frames.len() as i64) {
        return Ok(());
    }
    // Not the common case: compare and append the slow way (the blobs are in).
    for append in appends {
        append_one(conn, append).await?;
    }
    Ok(())
}

/// The compare-and-append of one log: moves `next_seq` from `expected_seq` to past the frames
/// (creating the log when `expected_seq` is 1), then inserts the frames.
async fn append_one(conn: &mut SqliteConnection, append: &LogAppend) -> Result<()> {
    let log = &append.log;
    let what = || format!("appending to log {log:?}");
    let expected = to_db_seq(append.expected_seq, &what())?;
    let end = to_db_seq(
        end_seq(log, append.expected_seq, append.frames.len())?,
        &what(),
    )?;
    if append.frames.is_empty() {
        // Only a check: an empty append does not create the log.
        let actual = current_next_seq(conn, log).await?;
        return check(log, append.expected_seq, actual);
    }
    // The common case in one statement: the stored number is the expected one and no frame
    // lies at or past it (so `next_seq` would report exactly it), and it moves.
    let fast = if append.expected_seq == 1 {
        CREATE_LOG_SQL
    } else {
        MOVE_NEXT_SEQ_SQL
    };
    let moved = sqlx::query(fast)
        .bind(log)
        .bind(expected)
        .bind(end)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error(what(), &e))?
        .rows_affected();
    if moved == 0 {
        // Compared with the log's next sequence number as `next_seq` reports it (never at or
        // below its last frame), inside the writer's transaction, then moved.
        let actual = current_next_seq(conn, log).await?;
        check(log, append.expected_seq, actual)?;
        sqlx::query(
            "INSERT INTO logs (log, next_seq) VALUES (?1, ?2) \
             ON CONFLICT (log) DO UPDATE SET next_seq = excluded.next_seq",
        )
        .bind(log)
        .bind(end)
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error(what(), &e))?;
    }
    // Every frame in one statement: each statement is a round trip to sqlx's worker thread.
    for (first, chunk) in (expected..)
        .step_by(FRAME_CHUNK)
        .zip(append.frames.chunks(FRAME_CHUNK))
    {
        let rows = vec!["(?, ?, ?)"; chunk.len()].join(", ");
        let sql = format!("INSERT INTO frames (log, seq, frame) VALUES {rows}");
        let mut query = sqlx::query(&sql);
        for (seq, frame) in (first..).zip(chunk) {
            query = query.bind(log).bind(seq).bind(frame);
        }
        query
            .execute(&mut *conn)
            .await
            .map_err(|e| match e.as_database_error() {
                Some(d) if d.is_unique_violation() => Error::Conflict {
                    log: log.clone(),
                    expected: append.expected_seq,
                    actual: append.expected_seq,
                },
                _ => db_error(what(), &e),
            })?;
    }
    Ok(())
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

/// The log's next sequence number as the writer's transaction sees it.
async fn current_next_seq(conn: &mut SqliteConnection, log: &str) -> Result<u64> {
    let next: Option<i64> = sqlx::query_scalar(NEXT_SEQ_SQL)
        .bind(log)
        .fetch_optional(&mut *conn)
        .await
        .map_err(|e| db_error(format!("reading the next sequence of log {log:?}"), &e))?;
    from_db_seq(next.unwrap_or(1), &format!("log {log:?}"))
}

/// Moves the WAL's content into the database file and truncates the WAL.
async fn checkpoint(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("checkpointing the WAL into the database file", &e))?;
    Ok(())
}

/// Rebuilds the database file with only live rows (`VACUUM`: the file shrinks to what is live;
/// `secure_delete` has already overwritten deleted rows), then empties the WAL, which holds the
/// rebuilt pages and, from earlier writes, deleted ones. Unlike a flush, an empty WAL is required:
/// when a reader keeps SQLite from truncating it (past the busy timeout), this fails.
async fn compact(conn: &mut SqliteConnection) -> Result<()> {
    sqlx::query("VACUUM")
        .execute(&mut *conn)
        .await
        .map_err(|e| db_error("rebuilding the database file (VACUUM)", &e))?;
    let row = sqlx::query("PRAGMA wal_checkpoint(TRUNCATE)")
        .fetch_one(&mut *conn)
        .await
        .map_err(|e| db_error("checkpointing the WAL into the database file", &e))?;
    let busy: i64 = row.try_get(0).unwrap_or(1);
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
        let from = i64::try_from(from).unwrap_or(i64::MAX);
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
        caps.rewrite = Some(self);
        caps.maintain = Some(self);
        caps.inspect = Some(self);
        caps.side_table = Some(self);
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
                sqlx::query_as(
                    "SELECT l.log, l.next_seq, \
                     (SELECT MAX(seq) FROM frames f WHERE f.log = l.log) FROM logs l",
                )
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
                sqlx::query_as(
                    "SELECT next_seq, (SELECT MAX(seq) FROM frames WHERE log = ?1) \
                     FROM logs WHERE log = ?1",
                )
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
