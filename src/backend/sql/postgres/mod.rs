//! The PostgreSQL [`Backend`] (`postgres://user@host:port/db`), through sqlx.
//!
//! # Layout
//!
//! The tables of the [SQL backends](super), in the schema named by `schema=` (default `public`),
//! plus a function `ckpt_append` doing a whole compare-and-append in one statement (one round
//! trip, atomic by itself): it stores the blobs, moves each log's `next_seq` from the expected
//! value (`UPDATE logs ... WHERE next_seq = expected`; a new log is inserted with
//! `ON CONFLICT DO NOTHING`), inserts the frames (the primary key `(log, seq)` fences them) and
//! notifies the channel `ckpt_<schema>` with the log's name. A failed check raises SQLSTATE
//! `CK409`, which rolls the statement back and is reported as [`Error::Conflict`].
//!
//! The schema is created on first open and versioned (`ckpt_schema`); migrations run under a
//! transaction-scoped advisory lock, so processes opening together migrate once. A schema newer
//! than this code is refused. An open of a schema that is ready reads its version (and that
//! every table is there) in one statement, without the lock or any DDL.
//!
//! # Connections
//!
//! The connection opening makes first is kept and runs the statements that follow while it is
//! free (the pool serves the others): an open and its first reads cost one server connection,
//! not one per statement the pool could not hand back in time (see `connections.rs`). It counts
//! toward `max_connections`.
//!
//! # Failures
//!
//! Opening makes one direct connection first (the one kept), bounded by `acquire_timeout`: an address that
//! refuses the connection (nothing listens there) or cannot be resolved fails at once with the
//! operating system's error, and a server that does not answer fails after `acquire_timeout`,
//! instead of either being retried for the whole `timeout` behind a bare "timed out". Once a
//! server has been reached, transient failures (connection refused, reset or lost; pool timeout;
//! serialization failure, deadlock, admin shutdown, server starting up) are retried with
//! jittered exponential backoff, bounded by the call's `timeout`. When an append's outcome is unknown (the connection dropped
//! while its statement ran), the retry first looks for the frames it sent: if they are stored at
//! the expected position, the append had committed and succeeds without being written twice.
//!
//! # Watching
//!
//! [`Notify::wait_for_append`](crate::backend::Notify::wait_for_append) listens on the channel (one `LISTEN` connection per backend,
//! started on first use, reconnected when dropped) and wakes as soon as the log of interest is
//! appended to, by any process; without a listener it waits out the timeout (polling).
//!
//! # Compaction
//!
//! Deleted rows stay in the table files until `VACUUM FULL`, and in the WAL until the segments
//! holding them are retired. [`Maintain::compact`](crate::backend::Maintain::compact) runs `VACUUM FULL` on the schema's tables, then
//! `pg_switch_wal()` and `CHECKPOINT`, after which PostgreSQL removes every segment before the
//! new redo point. What it cannot reach is reported: `wal_recycle = on` (the default: retired
//! segments are renamed for reuse and keep their bytes until overwritten), a role that may not
//! switch the WAL or checkpoint, `archive_mode`, `wal_keep_size`, replication slots, standbys.
//! Standbys, base backups and WAL archives keep their own copies in any case.
//!
//! # URL options
//!
//! The [pool options](super), `schema=NAME` (lowercase letters, digits, `_`; created if missing),
//! and sqlx's own connection options (`sslmode`, `sslrootcert`, `application_name`, ...), which
//! are passed on. The password may come from the URL or from `PGPASSWORD`; no error, log line or
//! `Debug` output shows it.
//!
//! # Files of this module
//!
//! This file holds the type, opening (with the reachability check), the retry loop and the
//! [`Backend`], [`Rewrite`] and [`Inspect`] implementations; `connections.rs` the kept
//! connection beside the pool; `schema.rs` the tables, the statements and the migration; `append.rs` the compare-and-append and its read-back;
//! `listen.rs` [`Notify`](crate::backend::Notify) through `LISTEN`; `compact.rs`
//! [`Maintain`](crate::backend::Maintain); `options.rs` the driver URL and the secrets messages
//! must not show.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgPoolOptions};
use sqlx::Connection;
use tokio::sync::{watch, OnceCell};
use tokio::time::Instant;

use self::connections::Connections;
use self::listen::Listener;
use self::options::{driver_url, secrets_of, DRIVER_OPTIONS};
use self::schema::{scan_index_slot, valid_schema, Queries};
use super::{frames_of, from_db_seq, parse_options, to_db_seq, to_hash, DriverError};
use crate::backend::retry::{self, GaveUp};
use crate::backend::{
    prefix_end, Backend, Blob, BlobHash, Capabilities, ConnectOptions, Inspect, LogAppend,
    RecordedDamage, Rewrite, SearchTable, SideTable,
};
use crate::error::{Error, Result};
use crate::url::RawUrl;

mod append;
mod compact;
mod connections;
mod listen;
mod options;
mod schema;

pub use self::schema::{scan_sql, SCHEMA_VERSION};

/// The backend's name in errors.
const NAME: &str = "PostgreSQL";
/// Default pool size.
const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// A [`Backend`] on a PostgreSQL database; see the [module documentation](self).
pub struct PostgresBackend {
    /// The pool, and the connection opening made, kept for the statements that follow.
    db: Connections,
    /// The URL without its password, for messages.
    url: String,
    /// The password (in every form), to scrub from driver messages.
    secrets: Vec<String>,
    schema: String,
    sql: Queries,
    timeout: Duration,
    listener: OnceCell<Listener>,
    /// Dropped with the backend, which stops the listener task.
    stop: watch::Sender<()>,
    /// A search index write committed since the last `flush` (not yet durable, perhaps).
    index_unflushed: AtomicBool,
}

impl fmt::Debug for PostgresBackend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresBackend")
            .field("url", &self.url)
            .field("schema", &self.schema)
            .field("timeout", &self.timeout)
            .finish_non_exhaustive()
    }
}

/// An [`Error::Backend`] from this backend, its message scrubbed of the password.
fn backend_error(context: String, source: DriverError) -> Error {
    Error::Backend {
        backend: NAME,
        context,
        source: Box::new(source),
    }
}

/// Whether retrying `e` may succeed: the connection or the server went away or is starting, the
/// pool had no connection in time, or the transaction lost a serialization race or a deadlock.
fn is_transient(e: &sqlx::Error) -> bool {
    use std::io::ErrorKind::*;
    match e {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            ConnectionRefused
                | ConnectionReset
                | ConnectionAborted
                | BrokenPipe
                | UnexpectedEof
                | TimedOut
                | NotConnected
                | Interrupted
        ),
        sqlx::Error::PoolTimedOut => true,
        sqlx::Error::Database(d) => d.code().is_some_and(|c| {
            matches!(
                c.as_ref(),
                "40001"
                    | "40P01"
                    | "57P01"
                    | "57P02"
                    | "57P03"
                    | "08000"
                    | "08001"
                    | "08003"
                    | "08004"
                    | "08006"
                    | "53300"
            )
        }),
        _ => false,
    }
}

impl PostgresBackend {
    /// Connects to the database a `postgres://` URL names and creates (or checks) the schema.
    ///
    /// Fails with [`Error::InvalidUrl`] on an unknown or malformed option, and with
    /// [`Error::Backend`] when the server cannot be reached within the timeout (transient
    /// failures are retried until then) or the stored schema is newer than this code.
    pub async fn open(url: &RawUrl, options: &ConnectOptions) -> Result<Self> {
        Self::open_with(url, options, true).await
    }

    /// Like [`PostgresBackend::open`], but creates nothing: a schema without ckpt's tables is
    /// [`Error::NotFound`] (for tools that only read, so that a mistyped schema or database
    /// does not become a new, empty store).
    pub async fn open_existing(url: &RawUrl, options: &ConnectOptions) -> Result<Self> {
        Self::open_with(url, options, false).await
    }

    async fn open_with(url: &RawUrl, options: &ConnectOptions, create: bool) -> Result<Self> {
        let redacted = url.redacted();
        let full = url.expose();
        let parsed = parse_options(full, &redacted, &["schema"], &DRIVER_OPTIONS, options)?;
        let invalid = |reason: String| Error::InvalidUrl {
            url: redacted.clone(),
            reason,
        };
        let mut schema = "public".to_owned();
        for (key, value) in &parsed.own {
            if key == "schema" {
                if !valid_schema(value) {
                    return Err(invalid(format!(
                        "schema must be lowercase letters, digits and _ (not starting with a digit, \
                         at most 50), got {value:?}"
                    )));
                }
                schema = value.clone();
            }
        }
        let connect = PgConnectOptions::from_str(&driver_url(full, &parsed.driver))
            .map_err(|e| invalid(super::scrub(&e.to_string(), &secrets_of(full))))?;
        let secrets = secrets_of(full);
        let connect = connect.application_name("ckpt");
        let max_connections = parsed
            .pool
            .max_connections
            .unwrap_or(DEFAULT_MAX_CONNECTIONS);
        // The connection made first is kept for the statements after the open (see
        // `connections.rs`) and counts toward `max_connections`. A statement that finds it busy
        // waits for the pool alone, so the pool keeps at least two (one may be a `LISTEN`):
        // below three there is none to spare, and it is closed.
        let keep_first = max_connections >= 3;
        let pool = PgPoolOptions::new()
            .max_connections(if keep_first {
                max_connections - 1
            } else {
                max_connections
            })
            .min_connections(parsed.pool.min_connections)
            .max_lifetime(parsed.pool.max_lifetime)
            .acquire_timeout(parsed.pool.acquire_timeout)
            // No ping before each use (a round trip per call): a connection the server dropped
            // fails its statement with an I/O error, which is retried on a fresh connection.
            .test_before_acquire(false)
            .connect_lazy_with(connect.clone());
        let (stop, _) = watch::channel(());
        let backend = PostgresBackend {
            db: Connections::new(pool, parsed.pool.max_lifetime),
            url: redacted,
            secrets,
            sql: Queries::new(&schema),
            schema,
            timeout: parsed.pool.timeout,
            listener: OnceCell::new(),
            stop,
            index_unflushed: AtomicBool::new(false),
        };
        let first = backend
            .check_reachable(&connect, parsed.pool.acquire_timeout)
            .await?;
        if keep_first {
            backend.db.keep(first);
        } else {
            let _ = tokio::time::timeout(parsed.pool.acquire_timeout, first.close()).await;
        }
        backend.migrate(create).await?;
        Ok(backend)
    }

    /// Makes one connection outside the pool, as the first contact with the server. The pool
    /// retries a refused connection until its acquire timeout and then reports only that it
    /// timed out, so a server that is down, or a wrong port, would take the whole `timeout` and
    /// hide the cause. Here an I/O failure (refused, unreachable, no such host) fails at once
    /// with the OS's error, and silence fails after `acquire_timeout`; a server that answers
    /// that it is not ready (starting up, too many connections) is retried within `timeout`.
    async fn check_reachable(
        &self,
        connect: &PgConnectOptions,
        acquire: Duration,
    ) -> Result<PgConnection> {
        let what = "connecting";
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let limit = acquire.min(deadline.saturating_duration_since(Instant::now()));
            let e = match tokio::time::timeout(limit, PgConnection::connect_with(connect)).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => e,
                Err(_) => {
                    return Err(backend_error(
                        format!("{what} (on {})", self.url),
                        DriverError(format!(
                            "no answer within the acquire timeout of {limit:?}: is a PostgreSQL \
                             server listening at this address and port? (set acquire_timeout= \
                             in the URL or StoreBuilder::acquire_timeout)"
                        )),
                    ))
                }
            };
            let not_ready = matches!(e, sqlx::Error::Database(_)) && is_transient(&e);
            let delay = retry::SQL.delay(attempt);
            if !not_ready || Instant::now() + delay >= deadline {
                return Err(self.error(what, &e));
            }
            tokio::time::sleep(delay).await;
            retry::note_retry();
            attempt += 1;
        }
    }

    /// The schema the tables live in.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The notification channel appends to this schema notify.
    fn channel(&self) -> String {
        format!("ckpt_{}", self.schema)
    }

    /// An [`Error::Backend`] for `e` while doing `what`, naming the (redacted) URL.
    fn error(&self, what: &str, e: &sqlx::Error) -> Error {
        let source = match e {
            sqlx::Error::PoolTimedOut => DriverError(
                "no connection within the acquire timeout: is the server running and reachable?"
                    .into(),
            ),
            e => DriverError::new(e, &self.secrets),
        };
        backend_error(format!("{what} (on {})", self.url), source)
    }

    fn timed_out(&self, what: &str) -> Error {
        backend_error(
            format!("{what} (on {})", self.url),
            DriverError(format!(
                "no success within the timeout of {:?} (transient failures were retried)",
                self.timeout
            )),
        )
    }

    /// Runs `f` until it succeeds, retrying transient failures with backoff, within the timeout.
    async fn retry<T, F, Fut>(&self, what: &str, f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = std::result::Result<T, sqlx::Error>>,
    {
        let deadline = Instant::now() + self.timeout;
        retry::retrying(deadline, retry::SQL, f, is_transient)
            .await
            .map_err(|gave_up| match gave_up {
                GaveUp::Failed(e) => self.error(what, &e),
                GaveUp::TimedOut => self.timed_out(what),
            })
    }
}

#[async_trait]
impl Backend for PostgresBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn next_seq(&self, log: &str) -> Result<u64> {
        let next: Option<i64> = self
            .retry(&format!("reading the next sequence of log {log:?}"), || {
                sqlx::query_scalar(&self.sql.next_seq)
                    .bind(log)
                    .fetch_optional(&self.db)
            })
            .await?;
        from_db_seq(next.unwrap_or(1), &format!("log {log:?}"))
    }

    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()> {
        if appends.is_empty() && blobs.is_empty() {
            return Ok(());
        }
        self.append_call(&appends, blobs).await
    }

    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let from = i64::try_from(from).unwrap_or(i64::MAX);
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        let rows = self
            .retry(&format!("reading log {log:?}"), || {
                sqlx::query_as(&self.sql.scan)
                    .bind(log)
                    .bind(from)
                    .bind(limit)
                    .fetch_all(&self.db)
            })
            .await?;
        frames_of(rows, log)
    }

    async fn list_logs(&self) -> Result<Vec<String>> {
        self.retry("listing the logs", || {
            sqlx::query_scalar(&self.sql.list_logs).fetch_all(&self.db)
        })
        .await
    }

    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        let what = format!("raising the next sequence of log {log:?}");
        let next = to_db_seq(next_seq, &what)?.max(1);
        self.retry(&what, || {
            sqlx::query(&self.sql.raise)
                .bind(log)
                .bind(next)
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }

    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        let before = i64::try_from(before).unwrap_or(i64::MAX);
        self.retry(&format!("truncating log {log:?}"), || {
            sqlx::query(&self.sql.truncate)
                .bind(log)
                .bind(before)
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }

    async fn put_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        if blobs.is_empty() {
            return Ok(());
        }
        let mut blobs = blobs;
        blobs.sort_by_key(|a| a.0);
        let hashes: Vec<&[u8]> = blobs.iter().map(|(h, _)| &h[..]).collect();
        let datas: Vec<&[u8]> = blobs.iter().map(|(_, d)| d.as_slice()).collect();
        self.retry("storing blobs", || {
            sqlx::query(&self.sql.put_blobs)
                .bind(&hashes)
                .bind(&datas)
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }

    /// One query for all of them.
    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .retry("reading blobs", || {
                sqlx::query_as(&self.sql.get_blobs)
                    .bind(&keys)
                    .fetch_all(&self.db)
            })
            .await?;
        let mut found = HashMap::with_capacity(rows.len());
        for (hash, data) in rows {
            found.insert(to_hash(&hash)?, data);
        }
        Ok(hashes.iter().map(|h| found.get(h).cloned()).collect())
    }

    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let keys: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
        let missing: Vec<Vec<u8>> = self
            .retry("looking up blobs", || {
                sqlx::query_scalar(&self.sql.missing_blobs)
                    .bind(&keys)
                    .fetch_all(&self.db)
            })
            .await?;
        missing.iter().map(|h| to_hash(h)).collect()
    }

    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        let hashes: Vec<Vec<u8>> = self
            .retry("listing blobs", || {
                sqlx::query_scalar(&self.sql.list_blobs).fetch_all(&self.db)
            })
            .await?;
        hashes.iter().map(|h| to_hash(h)).collect()
    }

    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        if hashes.is_empty() {
            return Ok(());
        }
        let keys: Vec<&[u8]> = hashes.iter().map(|h| &h[..]).collect();
        self.retry("deleting blobs", || {
            sqlx::query(&self.sql.delete_blobs)
                .bind(&keys)
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }

    /// Saves are durable when they return; search index writes may not be (see
    /// `Queries::write_index`): one durable commit makes them so.
    async fn flush(&self) -> Result<()> {
        if self.index_unflushed.swap(false, Ordering::AcqRel) {
            let flushed = self
                .retry("flushing the search index", || {
                    sqlx::query(&self.sql.flush_index).execute(&self.db)
                })
                .await;
            if flushed.is_err() {
                self.index_unflushed.store(true, Ordering::Release);
            }
            flushed?;
        }
        Ok(())
    }

    fn capabilities(&self) -> Capabilities<'_> {
        let mut caps = Capabilities::new();
        // `ckpt_append` inserts the blobs (`ON CONFLICT DO NOTHING`) in the same statement.
        caps.blobs_with_append = true;
        caps.rewrite = Some(self);
        caps.notify = Some(self);
        caps.maintain = Some(self);
        caps.inspect = Some(self);
        caps.side_table = Some(self);
        caps.search_table = Some(self);
        caps
    }
}

#[async_trait]
impl SideTable for PostgresBackend {
    async fn put_records(&self, records: Vec<(String, Vec<u8>)>) -> Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let mut records = records;
        // One row per key (the last wins), in key order so concurrent puts lock rows alike.
        records.sort_by(|a, b| a.0.cmp(&b.0));
        records.dedup_by(|later, earlier| {
            if later.0 == earlier.0 {
                std::mem::swap(later, earlier);
                true
            } else {
                false
            }
        });
        let keys: Vec<&str> = records.iter().map(|(k, _)| k.as_str()).collect();
        let values: Vec<&[u8]> = records.iter().map(|(_, v)| v.as_slice()).collect();
        self.retry("writing derived records", || {
            sqlx::query(&self.sql.put_records)
                .bind(&keys)
                .bind(&values)
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }

    async fn get_records(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let rows: Vec<(String, Vec<u8>)> = self
            .retry("reading derived records", || {
                sqlx::query_as(&self.sql.get_records)
                    .bind(keys)
                    .fetch_all(&self.db)
            })
            .await?;
        let found: HashMap<String, Vec<u8>> = rows.into_iter().collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn scan_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        self.retry("listing derived records", || {
            sqlx::query_as(&self.sql.scan_records)
                .bind(prefix)
                .fetch_all(&self.db)
        })
        .await
    }

    async fn delete_records(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.retry("deleting derived records", || {
            sqlx::query(&self.sql.delete_records)
                .bind(keys)
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }

    async fn log_tails(&self) -> Result<Vec<(String, u64)>> {
        let rows: Vec<(String, i64)> = self
            .retry("listing the logs", || {
                sqlx::query_as(&self.sql.log_tails).fetch_all(&self.db)
            })
            .await?;
        rows.into_iter()
            .map(|(log, next)| {
                Ok((from_db_seq(next, &format!("log {log:?}"))?, log)).map(|(n, l)| (l, n))
            })
            .collect()
    }
}

/// The search index is the table `search_index` of the schema; each write is one statement
/// (one transaction), retried on transient failures (it is idempotent).
#[async_trait]
impl SearchTable for PostgresBackend {
    async fn write_index(&self, put: Vec<(Vec<u8>, Vec<u8>)>, delete: Vec<Vec<u8>>) -> Result<()> {
        if put.is_empty() && delete.is_empty() {
            return Ok(());
        }
        let mut put = put;
        // One row per key (the last wins: an upsert may not touch a row twice), in key order
        // so concurrent writes lock rows alike.
        put.reverse();
        put.sort_by(|a, b| a.0.cmp(&b.0));
        put.dedup_by(|later, earlier| later.0 == earlier.0);
        // A key also put needs no delete (the upsert replaces it), and must not get one: the
        // statement's delete and insert see the same snapshot.
        let mut delete = delete;
        delete.sort();
        delete.dedup();
        delete.retain(|k| put.binary_search_by(|(p, _)| p.cmp(k)).is_err());
        let keys: Vec<&[u8]> = put.iter().map(|(k, _)| k.as_slice()).collect();
        let values: Vec<&[u8]> = put.iter().map(|(_, v)| v.as_slice()).collect();
        let deleted: Vec<&[u8]> = delete.iter().map(Vec::as_slice).collect();
        if !put.is_empty() {
            self.index_unflushed.store(true, Ordering::Release);
        }
        self.retry("writing the search index", || {
            sqlx::query(&self.sql.write_index)
                .bind(&deleted)
                .bind(&keys)
                .bind(&values)
                .execute(&self.db)
        })
        .await?;
        Ok(())
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
        let sql = &self.sql.scan_index[scan_index_slot(exclusive, end.is_some())];
        let limit = i64::try_from(limit).unwrap_or(i64::MAX);
        self.retry("reading the search index", || {
            let query = sqlx::query_as(sql).bind(from);
            let query = match &end {
                Some(end) => query.bind(end.as_slice()),
                None => query,
            };
            query.bind(limit).fetch_all(&self.db)
        })
        .await
    }

    async fn get_index(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        let wanted: Vec<&[u8]> = keys.iter().map(Vec::as_slice).collect();
        let rows: Vec<(Vec<u8>, Vec<u8>)> = self
            .retry("reading the search index", || {
                sqlx::query_as(&self.sql.get_index)
                    .bind(&wanted)
                    .fetch_all(&self.db)
            })
            .await?;
        let found: HashMap<Vec<u8>, Vec<u8>> = rows.into_iter().collect();
        Ok(keys.iter().map(|k| found.get(k).cloned()).collect())
    }

    async fn clear_index(&self) -> Result<()> {
        self.retry("clearing the search index", || {
            sqlx::query(&self.sql.clear_index).execute(&self.db)
        })
        .await?;
        Ok(())
    }

    async fn index_size(&self) -> Result<(u64, u64)> {
        let (entries, bytes): (i64, i64) = self
            .retry("measuring the search index", || {
                sqlx::query_as(&self.sql.index_size).fetch_one(&self.db)
            })
            .await?;
        Ok((entries.max(0) as u64, bytes.max(0) as u64))
    }
}

#[async_trait]
impl Rewrite for PostgresBackend {
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let seqs: Vec<i64> = frames
            .iter()
            .map(|(s, _)| i64::try_from(*s).unwrap_or(i64::MAX))
            .collect();
        let datas: Vec<&[u8]> = frames.iter().map(|(_, f)| f.as_slice()).collect();
        self.retry(&format!("rewriting frames of log {log:?}"), || {
            sqlx::query(&self.sql.rewrite_frames)
                .bind(log)
                .bind(&seqs)
                .bind(&datas)
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }

    async fn rewrite_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        let hashes: Vec<&[u8]> = blobs.iter().map(|(h, _)| &h[..]).collect();
        let datas: Vec<&[u8]> = blobs.iter().map(|(_, d)| d.as_slice()).collect();
        self.retry("rewriting blobs", || {
            sqlx::query(&self.sql.rewrite_blobs)
                .bind(&hashes)
                .bind(&datas)
                .execute(&self.db)
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Inspect for PostgresBackend {
    async fn recorded_damage(&self) -> Result<Vec<RecordedDamage>> {
        // PostgreSQL never rolls a committed transaction back silently.
        Ok(Vec::new())
    }

    async fn check_storage(&self) -> Result<Vec<String>> {
        // PostgreSQL checks its pages as it reads them (and `amcheck` needs an extension).
        Ok(Vec::new())
    }

    /// A stored next sequence number at or below the last frame (which [`Backend::next_seq`]
    /// ignores, and the next append repairs).
    async fn log_problems(&self, log: &str) -> Result<Vec<String>> {
        let row: Option<(i64, Option<i64>)> = self
            .retry(&format!("checking log {log:?}"), || {
                sqlx::query_as(&self.sql.log_problems)
                    .bind(log)
                    .fetch_optional(&self.db)
            })
            .await?;
        Ok(super::lowered_next_seq(row))
    }
}
