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
//! than this code is refused.
//!
//! # Failures
//!
//! Opening makes one direct connection first, bounded by `acquire_timeout`: an address that
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
//! [`Backend::wait_for_append`] listens on the channel (one `LISTEN` connection per backend,
//! started on first use, reconnected when dropped) and wakes as soon as the log of interest is
//! appended to, by any process; without a listener it waits out the timeout (polling).
//!
//! # Compaction
//!
//! Deleted rows stay in the table files until `VACUUM FULL`, and in the WAL until the segments
//! holding them are retired. [`Backend::compact`] runs `VACUUM FULL` on the schema's tables, then
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

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgListener, PgPool, PgPoolOptions};
use sqlx::{Connection, Executor};
use tokio::sync::{broadcast, watch, OnceCell};
use tokio::time::Instant;

use super::{end_seq, frames_of, from_db_seq, parse_options, to_db_seq, to_hash, DriverError};
use crate::backend::retry::{self, GaveUp};
use crate::backend::{
    Backend, Blob, BlobHash, Capabilities, CompactReport, ConnectOptions, Inspect, LogAppend,
    Maintain, Notify, RecordedDamage, Rewrite,
};
use crate::error::{Error, Result};
use crate::url::RawUrl;

/// The backend's name in errors.
const NAME: &str = "PostgreSQL";
/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: i32 = 1;
/// The tables of a store's schema, which [`Backend::compact`] rewrites.
const TABLES: [&str; 4] = ["logs", "frames", "blobs", "ckpt_schema"];
/// The SQLSTATE of a refused privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// For an error the server raised (not a lost connection): whether it refused a privilege, and
/// its message.
fn refused(e: &sqlx::Error) -> Option<(bool, String)> {
    e.as_database_error().map(|d| {
        (
            d.code().is_some_and(|c| c == INSUFFICIENT_PRIVILEGE),
            d.message().to_owned(),
        )
    })
}
/// Default pool size.
const DEFAULT_MAX_CONNECTIONS: u32 = 10;
/// The SQLSTATE `ckpt_append` raises when a compare fails.
const CONFLICT_STATE: &str = "CK409";
/// The options handed to sqlx.
const DRIVER_OPTIONS: [&str; 13] = [
    "sslmode",
    "sslrootcert",
    "sslcert",
    "sslkey",
    "application_name",
    "options",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "statement-cache-capacity",
];

/// A [`Backend`] on a PostgreSQL database; see the [module documentation](self).
pub struct PostgresBackend {
    pool: PgPool,
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

/// The notification fan-out: the listener task sends each notified log name (an empty name when
/// notifications may have been lost, which wakes every waiter).
struct Listener {
    names: broadcast::Sender<Arc<str>>,
    connected: Arc<AtomicBool>,
}

/// The statements, with the schema's name in them.
struct Queries {
    append: String,
    next_seq: String,
    heal_next_seq: String,
    log_problems: String,
    scan: String,
    list_logs: String,
    raise: String,
    truncate: String,
    put_blobs: String,
    rewrite_frames: String,
    rewrite_blobs: String,
    get_blobs: String,
    missing_blobs: String,
    list_blobs: String,
    delete_blobs: String,
}

impl Queries {
    fn new(s: &str) -> Self {
        Queries {
            append: format!("SELECT {s}.ckpt_append($1, $2, $3, $4, $5, $6)"),
            // Never at or below the last frame: a lowered stored number (by hand, or damage)
            // must not hand out versions that exist (`Store::verify` reports it).
            next_seq: format!(
                "SELECT GREATEST(\
                 COALESCE((SELECT next_seq FROM {s}.logs WHERE log = $1), 1), \
                 COALESCE((SELECT MAX(seq) + 1 FROM {s}.frames WHERE log = $1), 1))"
            ),
            heal_next_seq: format!(
                "UPDATE {s}.logs SET next_seq = GREATEST(next_seq, \
                 (SELECT MAX(seq) + 1 FROM {s}.frames WHERE log = $1)) \
                 WHERE log = $1 AND next_seq <= (SELECT MAX(seq) FROM {s}.frames WHERE log = $1)"
            ),
            log_problems: format!(
                "SELECT next_seq, (SELECT MAX(seq) FROM {s}.frames WHERE log = $1) \
                 FROM {s}.logs WHERE log = $1"
            ),
            scan: scan_sql(s),
            list_logs: format!("SELECT log FROM {s}.logs"),
            raise: format!(
                "INSERT INTO {s}.logs (log, next_seq) VALUES ($1, $2) ON CONFLICT (log) \
                 DO UPDATE SET next_seq = GREATEST({s}.logs.next_seq, EXCLUDED.next_seq)"
            ),
            truncate: format!("DELETE FROM {s}.frames WHERE log = $1 AND seq < $2"),
            rewrite_frames: format!(
                "UPDATE {s}.frames AS f SET frame = t.frame \
                 FROM UNNEST($2::BIGINT[], $3::BYTEA[]) AS t(seq, frame) \
                 WHERE f.log = $1 AND f.seq = t.seq"
            ),
            rewrite_blobs: format!(
                "UPDATE {s}.blobs AS b SET data = t.data \
                 FROM UNNEST($1::BYTEA[], $2::BYTEA[]) AS t(hash, data) WHERE b.hash = t.hash"
            ),
            put_blobs: format!(
                "INSERT INTO {s}.blobs (hash, data) SELECT * FROM UNNEST($1::bytea[], $2::bytea[]) \
                 ON CONFLICT DO NOTHING"
            ),
            get_blobs: format!("SELECT hash, data FROM {s}.blobs WHERE hash = ANY($1)"),
            missing_blobs: format!(
                "SELECT h FROM UNNEST($1::bytea[]) AS h \
                 WHERE NOT EXISTS (SELECT 1 FROM {s}.blobs b WHERE b.hash = h)"
            ),
            list_blobs: format!("SELECT hash FROM {s}.blobs"),
            delete_blobs: format!("DELETE FROM {s}.blobs WHERE hash = ANY($1)"),
        }
    }
}

/// The statement [`Backend::scan`] runs on schema `s`: a range of the primary key `(log, seq)`.
pub fn scan_sql(s: &str) -> String {
    format!("SELECT seq, frame FROM {s}.frames WHERE log = $1 AND seq >= $2 ORDER BY seq LIMIT $3")
}

/// The schema, version 1 (`{s}`: the schema; `{channel}`: the notification channel).
const SCHEMA_V1: &str = r#"
CREATE TABLE {s}.logs (log TEXT PRIMARY KEY, next_seq BIGINT NOT NULL);
CREATE TABLE {s}.frames (
    log TEXT NOT NULL,
    seq BIGINT NOT NULL,
    frame BYTEA NOT NULL,
    PRIMARY KEY (log, seq)
);
CREATE TABLE {s}.blobs (hash BYTEA PRIMARY KEY, data BYTEA NOT NULL);
ALTER TABLE {s}.frames ALTER COLUMN frame SET STORAGE EXTERNAL;
ALTER TABLE {s}.blobs ALTER COLUMN data SET STORAGE EXTERNAL;
CREATE FUNCTION {s}.ckpt_append(
    p_logs TEXT[], p_expected BIGINT[], p_counts BIGINT[], p_frames BYTEA[],
    p_hashes BYTEA[], p_blobs BYTEA[]
) RETURNS VOID LANGUAGE plpgsql AS $fn$
DECLARE
    i INT;
    n BIGINT;
    off BIGINT := 0;
    moved BIGINT;
    cur BIGINT;
BEGIN
    IF cardinality(p_hashes) > 0 THEN
        INSERT INTO {s}.blobs (hash, data)
            SELECT h, d FROM UNNEST(p_hashes, p_blobs) AS t(h, d) ORDER BY h
            ON CONFLICT DO NOTHING;
    END IF;
    FOR i IN 1 .. coalesce(cardinality(p_logs), 0) LOOP
        n := p_counts[i];
        IF n = 0 THEN
            -- A pure check (the store's gc fence). It must hold until commit against a writer
            -- moving the log on: the row lock does that; a log without a row yet is guarded by
            -- an advisory lock that creating its row takes exclusively, then read again.
            SELECT next_seq INTO cur FROM {s}.logs WHERE log = p_logs[i] FOR SHARE;
            IF NOT FOUND THEN
                PERFORM pg_advisory_xact_lock_shared(hashtextextended(p_logs[i], 0));
                SELECT next_seq INTO cur FROM {s}.logs WHERE log = p_logs[i] FOR SHARE;
            END IF;
            IF coalesce(cur, 1) <> p_expected[i] THEN
                RAISE EXCEPTION USING ERRCODE = 'CK409', MESSAGE = format('%s %s', i, coalesce(cur, 1));
            END IF;
            CONTINUE;
        END IF;
        UPDATE {s}.logs SET next_seq = p_expected[i] + n
            WHERE log = p_logs[i] AND next_seq = p_expected[i];
        GET DIAGNOSTICS moved = ROW_COUNT;
        IF moved = 0 AND p_expected[i] = 1 THEN
            PERFORM pg_advisory_xact_lock(hashtextextended(p_logs[i], 0));
            INSERT INTO {s}.logs (log, next_seq) VALUES (p_logs[i], 1 + n) ON CONFLICT DO NOTHING;
            GET DIAGNOSTICS moved = ROW_COUNT;
        END IF;
        IF moved = 0 THEN
            SELECT next_seq INTO cur FROM {s}.logs WHERE log = p_logs[i];
            RAISE EXCEPTION USING ERRCODE = 'CK409', MESSAGE = format('%s %s', i, coalesce(cur, 1));
        END IF;
        INSERT INTO {s}.frames (log, seq, frame)
            SELECT p_logs[i], p_expected[i] + k - 1, p_frames[off + k]
            FROM generate_series(1, n) AS k;
        off := off + n;
        PERFORM pg_notify('{channel}', p_logs[i]);
    END LOOP;
END
$fn$;
INSERT INTO {s}.ckpt_schema (version) VALUES (1);
"#;

/// What opening found of the schema.
enum Migration {
    /// Created, or already at a version this code knows.
    Ready,
    /// Written by a newer ckpt (its version).
    Newer(i32),
    /// No ckpt tables, and the open may not create them.
    Missing,
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

/// Whether a statement that failed with `e` may still have committed: only when the connection
/// was lost (an answer that never came), not when the server answered with an error or the
/// statement was never sent.
fn may_have_committed(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Io(_) | sqlx::Error::Protocol(_))
        || e.as_database_error()
            .and_then(|d| d.code())
            .is_some_and(|c| c.starts_with("57P") || c.starts_with("08"))
}

/// The failing part (1-based) and the log's actual next sequence number of a `CK409` error.
fn conflict_of(e: &sqlx::Error) -> Option<(usize, u64)> {
    let d = e.as_database_error()?;
    if d.code()?.as_ref() != CONFLICT_STATE {
        return None;
    }
    let (part, actual) = d.message().split_once(' ')?;
    Some((part.parse().ok()?, actual.parse().ok()?))
}

/// The query string of `url` without ckpt's own options, for sqlx.
fn driver_url(url: &str, driver: &[(String, String)]) -> String {
    let base = url.split_once('?').map_or(url, |(b, _)| b);
    if driver.is_empty() {
        return base.to_owned();
    }
    let query: Vec<String> = driver.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{base}?{}", query.join("&"))
}

/// Checks a `schema=` name: lowercase ASCII letters, digits and `_`, not starting with a digit,
/// so it needs no quoting and names the notification channel too.
fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
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
        let pool = PgPoolOptions::new()
            .max_connections(
                parsed
                    .pool
                    .max_connections
                    .unwrap_or(DEFAULT_MAX_CONNECTIONS),
            )
            .min_connections(parsed.pool.min_connections)
            .max_lifetime(parsed.pool.max_lifetime)
            .acquire_timeout(parsed.pool.acquire_timeout)
            // No ping before each use (a round trip per call): a connection the server dropped
            // fails its statement with an I/O error, which is retried on a fresh connection.
            .test_before_acquire(false)
            .connect_lazy_with(connect.clone());
        let (stop, _) = watch::channel(());
        let backend = PostgresBackend {
            pool,
            url: redacted,
            secrets,
            sql: Queries::new(&schema),
            schema,
            timeout: parsed.pool.timeout,
            listener: OnceCell::new(),
            stop,
        };
        backend
            .check_reachable(&connect, parsed.pool.acquire_timeout)
            .await?;
        backend.migrate(create).await?;
        Ok(backend)
    }

    /// Makes one connection outside the pool, as the first contact with the server. The pool
    /// retries a refused connection until its acquire timeout and then reports only that it
    /// timed out, so a server that is down, or a wrong port, would take the whole `timeout` and
    /// hide the cause. Here an I/O failure (refused, unreachable, no such host) fails at once
    /// with the OS's error, and silence fails after `acquire_timeout`; a server that answers
    /// that it is not ready (starting up, too many connections) is retried within `timeout`.
    async fn check_reachable(&self, connect: &PgConnectOptions, acquire: Duration) -> Result<()> {
        let what = "connecting";
        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0;
        loop {
            let limit = acquire.min(deadline.saturating_duration_since(Instant::now()));
            let e = match tokio::time::timeout(limit, PgConnection::connect_with(connect)).await {
                Ok(Ok(conn)) => {
                    let _ = tokio::time::timeout(limit, conn.close()).await;
                    return Ok(());
                }
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

    /// Runs a maintenance statement (`VACUUM FULL`, `CHECKPOINT`) with the simple protocol, so
    /// outside any transaction block, as `VACUUM` requires. No timeout: a rewrite of a large
    /// table takes as long as it takes, and the server finishes it even if the client gave up.
    async fn maintenance(&self, sql: &str) -> std::result::Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(&self.pool).await.map(|_| ())
    }

    /// The server settings that decide what compaction can remove: name and value.
    async fn wal_settings(&self) -> Result<Vec<(String, String)>> {
        self.retry("reading the WAL settings", || {
            sqlx::query_as("SELECT name, setting FROM pg_settings WHERE name = ANY($1::TEXT[])")
                .bind([
                    "wal_recycle",
                    "archive_mode",
                    "wal_keep_size",
                    "wal_keep_segments",
                ])
                .fetch_all(&self.pool)
        })
        .await
    }

    /// `VACUUM FULL` of the schema's tables this role may vacuum (the others are named in a
    /// caveat: `VACUUM` only warns about them, so they are left out beforehand).
    async fn vacuum_full(&self, report: &mut CompactReport) -> Result<()> {
        let s = &self.schema;
        let tables: Vec<(String, bool)> = self
            .retry("listing the tables to vacuum", || {
                sqlx::query_as(
                    "SELECT c.relname::TEXT, pg_has_role(c.relowner, 'USAGE') \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind = 'r' AND c.relname = ANY($2::TEXT[]) \
                     ORDER BY c.relname",
                )
                .bind(s)
                .bind(TABLES)
                .fetch_all(&self.pool)
            })
            .await?;
        let (owned, foreign): (Vec<_>, Vec<_>) = tables.into_iter().partition(|(_, own)| *own);
        for (table, _) in &foreign {
            report.caveat(format!(
                "the role does not own {s}.{table}, so VACUUM FULL skipped it and its dead rows \
                 stay in its files: run `VACUUM FULL {s}.{table}` as its owner or a superuser"
            ));
        }
        if owned.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = owned.iter().map(|(t, _)| format!("{s}.{t}")).collect();
        let list = names.join(", ");
        self.maintenance(&format!("VACUUM (FULL) {list}"))
            .await
            .map_err(|e| self.error(&format!("VACUUM FULL {list}"), &e))?;
        report.step(format!(
            "VACUUM FULL rewrote {list} with only their live rows (and their TOAST data and \
             indexes); the old files are emptied, and unlinked at the next checkpoint"
        ));
        Ok(())
    }

    /// Ends the current WAL segment and checkpoints, so that PostgreSQL retires every segment
    /// holding the deleted rows (those before the new checkpoint's redo point). Refusals
    /// (privileges, a standby) become caveats. Returns whether both ran.
    async fn retire_wal(&self, report: &mut CompactReport) -> Result<bool> {
        let switched = match self.maintenance("SELECT pg_switch_wal()").await {
            Ok(()) => {
                report.step("pg_switch_wal() closed the WAL segment holding the latest writes");
                true
            }
            Err(e) => match refused(&e) {
                Some((privilege, message)) => {
                    report.caveat(format!(
                        "pg_switch_wal() was refused ({message}){}: the current WAL segment, which \
                         may hold deleted rows, stays until it fills; run `SELECT pg_switch_wal(); \
                         CHECKPOINT;` as a superuser",
                        if privilege { ", the role may not run it" } else { "" }
                    ));
                    false
                }
                None => return Err(self.error("switching the WAL segment", &e)),
            },
        };
        match self.maintenance("CHECKPOINT").await {
            Ok(()) => {
                if switched {
                    report.step(
                        "CHECKPOINT moved the redo point past those writes, so PostgreSQL \
                         retired every older WAL segment",
                    );
                } else {
                    report.step("CHECKPOINT flushed the rewritten tables");
                }
                Ok(switched)
            }
            Err(e) => match refused(&e) {
                Some((_, message)) => {
                    report.caveat(format!(
                        "CHECKPOINT was refused ({message}): a superuser or a member of \
                         pg_checkpoint (PostgreSQL 15+) may run it; until the next automatic \
                         checkpoint (checkpoint_timeout), the WAL segments holding deleted rows \
                         and the emptied old table files stay in the data directory"
                    ));
                    Ok(false)
                }
                None => Err(self.error("checkpointing", &e)),
            },
        }
    }

    /// With `wal_recycle = off`: segments recycled while it was on wait ahead of the current
    /// one (or are the current one), renamed, with their old bytes (deleted rows among them).
    /// Moves the WAL through each (a checkpoint record, then a switch) into a segment created
    /// new, so that PostgreSQL retires them, which now unlinks them; a final checkpoint retires
    /// the last.
    async fn retire_recycled_segments(&self, report: &mut CompactReport) -> Result<()> {
        let ahead = match self.segments_ahead().await {
            Ok(n) => n,
            Err(e) => match refused(&e) {
                Some((_, message)) => {
                    report.caveat(format!(
                        "pg_ls_waldir() was refused ({message}), so WAL segments recycled while \
                         wal_recycle was on may still wait ahead of the current one with their \
                         old bytes; run compact as a superuser or a member of pg_monitor"
                    ));
                    return Ok(());
                }
                None => return Err(self.error("listing pg_wal", &e)),
            },
        };
        // The segment being written may itself be a recycled one (the switch above entered it):
        // one more than those ahead. A preallocated segment may appear ahead while this runs:
        // bounded, not until none.
        for _ in 0..=ahead {
            for sql in ["CHECKPOINT", "SELECT pg_switch_wal()"] {
                self.maintenance(sql)
                    .await
                    .map_err(|e| self.error(&format!("retiring recycled WAL: {sql}"), &e))?;
            }
        }
        self.maintenance("CHECKPOINT")
            .await
            .map_err(|e| self.error("retiring recycled WAL: CHECKPOINT", &e))?;
        report.step(format!(
            "moved the WAL through the segment being written and the {ahead} waiting ahead of it \
             (segments recycled while wal_recycle was on hold old bytes) into a new one; \
             PostgreSQL unlinked each as it retired it"
        ));
        Ok(())
    }

    /// How many WAL segment files wait ahead of the one being written.
    async fn segments_ahead(&self) -> std::result::Result<i64, sqlx::Error> {
        sqlx::query_scalar(
            "SELECT count(*) FROM pg_ls_waldir() WHERE name ~ '^[0-9A-F]{24}$' \
             AND name > pg_walfile_name(pg_current_wal_lsn())",
        )
        .fetch_one(&self.pool)
        .await
    }

    /// Caveats from the server's settings and replication: what keeps WAL, or copies of it,
    /// beyond what a checkpoint retires.
    async fn wal_caveats(
        &self,
        settings: &[(String, String)],
        report: &mut CompactReport,
    ) -> Result<()> {
        for (name, value) in settings {
            match (name.as_str(), value.as_str()) {
                ("wal_recycle", "on") => report.caveat(
                    "wal_recycle is on (the default): retired WAL segments were renamed for \
                     reuse, not deleted, and keep their old bytes (deleted rows among them) \
                     until new WAL overwrites them; set it off (`ALTER SYSTEM SET wal_recycle = \
                     off; SELECT pg_reload_conf();`) so that PostgreSQL unlinks retired \
                     segments, then run compact again: it also moves the WAL through the \
                     segments recycled before, so they are unlinked too",
                ),
                ("archive_mode", v) if v != "off" => report.caveat(format!(
                    "archive_mode is {v}: archive_command copied WAL segments holding the \
                     deleted rows elsewhere, and compact cannot reach those copies; remove them \
                     from the archive (and base backups) by hand"
                )),
                ("wal_keep_size" | "wal_keep_segments", v) if v != "0" => report.caveat(format!(
                    "{name} is {v}: PostgreSQL keeps that much old WAL (deleted rows \
                         included) for standbys; set it to 0 or run compact again after that \
                         much new WAL was written"
                )),
                _ => {}
            }
        }
        let slots: Vec<(String, String)> = self
            .retry("listing replication slots", || {
                sqlx::query_as(
                    "SELECT slot_name::TEXT, restart_lsn::TEXT FROM pg_replication_slots \
                     WHERE restart_lsn IS NOT NULL ORDER BY slot_name",
                )
                .fetch_all(&self.pool)
            })
            .await?;
        for (slot, lsn) in slots {
            report.caveat(format!(
                "replication slot {slot} keeps WAL from {lsn} on: segments after it (deleted \
                 rows among them) stay until its consumer moves on, or drop the slot"
            ));
        }
        let standbys: i64 = self
            .retry("counting standbys", || {
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_replication").fetch_one(&self.pool)
            })
            .await?;
        if standbys > 0 {
            report.caveat(format!(
                "{standbys} standby server(s) stream this WAL: they replay the rewrite, but keep \
                 their own WAL; run CHECKPOINT on each (with wal_recycle off there too)"
            ));
        }
        Ok(())
    }

    /// Creates the schema (first open, when `create`) or checks its version, under an advisory
    /// lock so that processes opening at the same time do it once.
    async fn migrate(&self, create: bool) -> Result<()> {
        let what = format!("creating or checking the schema {:?}", self.schema);
        let outcome = self.retry(&what, || self.migrate_once(create)).await?;
        match outcome {
            Migration::Missing => Err(Error::not_found(format!(
                "store {}: schema {:?} has no ckpt tables (opened without creating a store)",
                self.url, self.schema
            ))),
            Migration::Newer(found) => Err(backend_error(
                format!("opening schema {:?} (on {})", self.schema, self.url),
                DriverError(format!(
                    "its schema version is {found}, newer than the {SCHEMA_VERSION} this ckpt \
                     knows: it was written by a newer ckpt; upgrade ckpt to use it (nothing was written)"
                )),
            )),
            Migration::Ready => Ok(()),
        }
    }

    /// One migration attempt.
    fn migrate_once(
        &self,
        create: bool,
    ) -> futures_util::future::BoxFuture<'_, std::result::Result<Migration, sqlx::Error>> {
        // Boxed: sqlx's executor lifetimes defeat the Send inference of a plain async fn here.
        Box::pin(async move {
            let s = self.schema.as_str();
            // Rolled back when dropped unless committed.
            let mut tx = self.pool.begin().await?;
            sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
                .bind(format!("ckpt schema {s}"))
                .execute(&mut *tx)
                .await?;
            if !create {
                let tables: Option<i32> = sqlx::query_scalar(
                    "SELECT 1 FROM pg_tables WHERE schemaname = $1 AND tablename = 'ckpt_schema'",
                )
                .bind(s)
                .fetch_optional(&mut *tx)
                .await?;
                if tables.is_none() {
                    tx.rollback().await?;
                    return Ok(Migration::Missing);
                }
            }
            let exists: Option<i32> =
                sqlx::query_scalar("SELECT 1 FROM pg_namespace WHERE nspname = $1")
                    .bind(s)
                    .fetch_optional(&mut *tx)
                    .await?;
            if exists.is_none() {
                let create = format!("CREATE SCHEMA {s}");
                (&mut *tx).execute(create.as_str()).await?;
            }
            let create =
                format!("CREATE TABLE IF NOT EXISTS {s}.ckpt_schema (version INT NOT NULL)");
            (&mut *tx).execute(create.as_str()).await?;
            let read = format!("SELECT MAX(version) FROM {s}.ckpt_schema");
            let version: Option<i32> = sqlx::query_scalar(&read).fetch_one(&mut *tx).await?;
            match version {
                None => {
                    let ddl = SCHEMA_V1
                        .replace("{s}", s)
                        .replace("{channel}", &self.channel());
                    (&mut *tx).execute(ddl.as_str()).await?;
                }
                Some(v) if v > SCHEMA_VERSION => {
                    tx.rollback().await?;
                    return Ok(Migration::Newer(v));
                }
                Some(_) => {}
            }
            tx.commit().await?;
            Ok(Migration::Ready)
        })
    }

    /// One `ckpt_append` call, retried on transient failures; after a failure that may have
    /// committed, a conflict (or the last failure) is checked against what is stored.
    async fn append_call(
        &self,
        appends: &[LogAppend],
        blobs: Vec<(BlobHash, Vec<u8>)>,
    ) -> Result<()> {
        let what = "appending";
        let mut logs = Vec::with_capacity(appends.len());
        let mut expected = Vec::with_capacity(appends.len());
        let mut counts = Vec::with_capacity(appends.len());
        let mut frames: Vec<&[u8]> = Vec::new();
        for a in appends {
            let desc = format!("appending to log {:?}", a.log);
            expected.push(to_db_seq(a.expected_seq, &desc)?);
            to_db_seq(end_seq(&a.log, a.expected_seq, a.frames.len())?, &desc)?;
            counts.push(a.frames.len() as i64);
            logs.push(a.log.as_str());
            frames.extend(a.frames.iter().map(Vec::as_slice));
        }
        let mut blobs = blobs;
        blobs.sort_by_key(|a| a.0);
        let hashes: Vec<&[u8]> = blobs.iter().map(|(h, _)| &h[..]).collect();
        let datas: Vec<&[u8]> = blobs.iter().map(|(_, d)| d.as_slice()).collect();

        let deadline = Instant::now() + self.timeout;
        let mut attempt = 0;
        let mut ambiguous = false;
        let mut healed = false;
        loop {
            let call = sqlx::query(&self.sql.append)
                .bind(&logs)
                .bind(&expected)
                .bind(&counts)
                .bind(&frames)
                .bind(&hashes)
                .bind(&datas)
                .execute(&self.pool);
            let e = match tokio::time::timeout_at(deadline, call).await {
                Ok(Ok(_)) => return Ok(()),
                Ok(Err(e)) => e,
                Err(_) => {
                    if ambiguous && self.already_appended(appends).await.unwrap_or(false) {
                        return Ok(());
                    }
                    return Err(self.timed_out(what));
                }
            };
            if let Some((part, actual)) = conflict_of(&e) {
                if ambiguous && self.already_appended(appends).await? {
                    return Ok(());
                }
                let Some(a) = part.checked_sub(1).and_then(|i| appends.get(i)) else {
                    return Err(self.error(what, &e));
                };
                // Stored numbers only grow: one below what the writer read from `next_seq`
                // was lowered under its last frame. Move it back above it (never further) and
                // try again, so writes continue instead of conflicting forever.
                if actual < a.expected_seq && !healed {
                    healed = true;
                    self.heal_next_seq(&a.log).await?;
                    continue;
                }
                return Err(Error::Conflict {
                    log: a.log.clone(),
                    expected: a.expected_seq,
                    actual,
                });
            }
            ambiguous |= may_have_committed(&e);
            let delay = retry::SQL.delay(attempt);
            if !is_transient(&e) || Instant::now() + delay >= deadline {
                if ambiguous && self.already_appended(appends).await.unwrap_or(false) {
                    return Ok(());
                }
                return Err(self.error(what, &e));
            }
            tokio::time::sleep(delay).await;
            attempt += 1;
        }
    }

    /// Raises `log`'s stored next sequence number to its last frame + 1 if it is at or below it.
    async fn heal_next_seq(&self, log: &str) -> Result<()> {
        self.retry(
            &format!("repairing the next sequence of log {log:?}"),
            || {
                sqlx::query(&self.sql.heal_next_seq)
                    .bind(log)
                    .execute(&self.pool)
            },
        )
        .await?;
        Ok(())
    }

    /// Whether every frame of `appends` is stored at its position, byte for byte: an append whose
    /// commit was not acknowledged but happened.
    async fn already_appended(&self, appends: &[LogAppend]) -> Result<bool> {
        let mut any = false;
        for a in appends.iter().filter(|a| !a.frames.is_empty()) {
            any = true;
            let stored = self.scan(&a.log, a.expected_seq, a.frames.len()).await?;
            let same = stored.len() == a.frames.len()
                && stored
                    .iter()
                    .zip(&a.frames)
                    .enumerate()
                    .all(|(i, ((seq, bytes), sent))| {
                        *seq == a.expected_seq + i as u64 && bytes == sent
                    });
            if !same {
                return Ok(false);
            }
        }
        Ok(any)
    }

    /// The notification fan-out, started on first use; `None` when the listener cannot connect.
    async fn listener(&self, timeout: Duration) -> Option<&Listener> {
        let start = async {
            let mut listener = PgListener::connect_with(&self.pool).await?;
            listener.listen(&self.channel()).await?;
            let (names, _) = broadcast::channel(1024);
            let connected = Arc::new(AtomicBool::new(true));
            tokio::spawn(listen(
                listener,
                names.clone(),
                connected.clone(),
                self.stop.subscribe(),
            ));
            Ok::<_, sqlx::Error>(Listener { names, connected })
        };
        let init = self.listener.get_or_try_init(|| async {
            match tokio::time::timeout(timeout, start).await {
                Ok(result) => result.map_err(|_| ()),
                Err(_) => Err(()),
            }
        });
        init.await.ok()
    }
}

/// The listener task: forwards each notified log name until the backend is dropped. sqlx
/// reconnects (and listens again) after a lost connection; notifications sent meanwhile are lost,
/// so every waiter is woken to recheck.
async fn listen(
    mut listener: PgListener,
    names: broadcast::Sender<Arc<str>>,
    connected: Arc<AtomicBool>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            received = listener.try_recv() => match received {
                Ok(Some(n)) => {
                    connected.store(true, Ordering::Relaxed);
                    let _ = names.send(Arc::from(n.payload()));
                }
                Ok(None) => {
                    connected.store(false, Ordering::Relaxed);
                    let _ = names.send(Arc::from(""));
                }
                Err(_) => {
                    connected.store(false, Ordering::Relaxed);
                    let _ = names.send(Arc::from(""));
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            },
        }
    }
}

/// Every form of the password sqlx may use (from the URL's userinfo, raw and percent-decoded,
/// from a `password=` option, or from `PGPASSWORD`): only to scrub it from messages.
fn secrets_of(url: &str) -> Vec<String> {
    let mut secrets = Vec::new();
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = &rest[..rest.find(['/', '?']).unwrap_or(rest.len())];
    if let Some((userinfo, _)) = authority.rsplit_once('@') {
        if let Some((_, password)) = userinfo.split_once(':') {
            secrets.push(password.to_owned());
            secrets.push(percent_decode(password));
        }
    }
    if let Some((_, query)) = rest.split_once('?') {
        for pair in query.split('&') {
            if let Some(("password", v)) = pair.split_once('=') {
                secrets.push(v.to_owned());
                secrets.push(percent_decode(v));
            }
        }
    }
    if let Ok(p) = std::env::var("PGPASSWORD") {
        secrets.push(p);
    }
    secrets.retain(|s| !s.is_empty());
    secrets
}

/// `%XX`-decodes `text` (invalid escapes are kept as they are).
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(b)) => {
                out.push(b);
                i += 3;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
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
                    .fetch_optional(&self.pool)
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
                    .fetch_all(&self.pool)
            })
            .await?;
        frames_of(rows, log)
    }

    async fn list_logs(&self) -> Result<Vec<String>> {
        self.retry("listing the logs", || {
            sqlx::query_scalar(&self.sql.list_logs).fetch_all(&self.pool)
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
                .execute(&self.pool)
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
                .execute(&self.pool)
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
                .execute(&self.pool)
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
                    .fetch_all(&self.pool)
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
                    .fetch_all(&self.pool)
            })
            .await?;
        missing.iter().map(|h| to_hash(h)).collect()
    }

    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        let hashes: Vec<Vec<u8>> = self
            .retry("listing blobs", || {
                sqlx::query_scalar(&self.sql.list_blobs).fetch_all(&self.pool)
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
                .execute(&self.pool)
        })
        .await?;
        Ok(())
    }

    /// Every append is durable when its commit returns: nothing to do.
    async fn flush(&self) -> Result<()> {
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
        caps
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
                .execute(&self.pool)
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
                .execute(&self.pool)
        })
        .await?;
        Ok(())
    }
}

#[async_trait]
impl Notify for PostgresBackend {
    /// Wakes when the log is notified (by any process), or after `timeout`.
    async fn wait_for_append(&self, log: &str, next_seq: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let Some(listener) = self.listener(timeout).await else {
            tokio::time::sleep_until(deadline).await;
            return Ok(());
        };
        // Subscribe before looking, so an append between the caller's look and ours still wakes.
        let mut names = listener.names.subscribe();
        if !listener.connected.load(Ordering::Relaxed) {
            tokio::time::sleep_until(deadline).await;
            return Ok(());
        }
        if self.next_seq(log).await? > next_seq {
            return Ok(());
        }
        loop {
            match tokio::time::timeout_at(deadline, names.recv()).await {
                Err(_) => return Ok(()),
                Ok(Ok(name)) if name.is_empty() || &*name == log => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return Ok(()),
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(deadline).await;
                    return Ok(());
                }
            }
        }
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
                    .fetch_optional(&self.pool)
            })
            .await?;
        Ok(super::lowered_next_seq(row))
    }
}

#[async_trait]
impl Maintain for PostgresBackend {
    /// Not a server that keeps everything in memory.
    async fn server_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The on-disk size of the schema's tables, with their indexes and TOAST data.
    async fn stored_bytes(&self) -> Result<Option<u64>> {
        let bytes: i64 = self
            .retry("measuring the tables", || {
                sqlx::query_scalar(
                    "SELECT COALESCE(SUM(pg_total_relation_size(c.oid)), 0)::BIGINT \
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                     WHERE n.nspname = $1 AND c.relkind = 'r'",
                )
                .bind(&self.schema)
                .fetch_one(&self.pool)
            })
            .await?;
        Ok(Some(u64::try_from(bytes).unwrap_or(0)))
    }

    /// `VACUUM FULL` of the schema's tables, then `pg_switch_wal()` and `CHECKPOINT` so the WAL
    /// segments holding the deleted rows are retired; settings that keep old WAL, and steps the
    /// role may not run, are reported as caveats. Each table is locked (reads and writes wait)
    /// while it is rewritten.
    async fn compact(&self) -> Result<CompactReport> {
        let mut report = CompactReport::new(NAME);
        report.bytes_before = self.stored_bytes().await?;
        let settings = self.wal_settings().await?;
        let recycle_off = settings
            .iter()
            .any(|(name, value)| name == "wal_recycle" && value == "off");
        self.vacuum_full(&mut report).await?;
        if self.retire_wal(&mut report).await? && recycle_off {
            self.retire_recycled_segments(&mut report).await?;
        }
        self.wal_caveats(&settings, &mut report).await?;
        report.bytes_after = self.stored_bytes().await?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendExt;

    #[test]
    fn secrets_are_found_in_every_form() {
        let s = secrets_of("postgres://bob:p%40ss@db/app?password=other&sslmode=require");
        assert!(s.contains(&"p%40ss".to_owned()) && s.contains(&"p@ss".to_owned()));
        assert!(s.contains(&"other".to_owned()));
        assert_eq!(percent_decode("a%2Fb%zz"), "a/b%zz");
    }

    #[test]
    fn ckpt_options_are_stripped_for_the_driver() {
        let driver = vec![("sslmode".to_owned(), "require".to_owned())];
        assert_eq!(
            driver_url(
                "postgres://h/db?schema=x&sslmode=require&timeout=5s",
                &driver
            ),
            "postgres://h/db?sslmode=require"
        );
        assert_eq!(
            driver_url("postgres://h/db?schema=x", &[]),
            "postgres://h/db"
        );
        assert!(valid_schema("t_1a") && !valid_schema("1a") && !valid_schema("A"));
        assert!(!valid_schema("a;drop") && !valid_schema(""));
    }

    /// What a retry after an unacknowledged commit relies on: frames stored byte for byte at
    /// their positions count as appended, anything else does not. Needs the test server.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn already_appended_compares_the_stored_frames() {
        let base = match std::env::var("CKPT_TEST_POSTGRES_URL") {
            Ok(url) => url,
            Err(_) => panic!(
                "CKPT_TEST_POSTGRES_URL is not set: start the servers with \
                 `eval \"$(scripts/servers.sh start)\"` or run scripts/test-all.sh"
            ),
        };
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let schema = format!("u_{}_{nanos}", std::process::id());
        let url = match crate::url::StoreUrl::parse(&format!("{base}?schema={schema}")) {
            Ok(crate::url::StoreUrl::Postgres(raw)) => raw,
            other => panic!("{other:?}"),
        };
        let backend = PostgresBackend::open(&url, &ConnectOptions::default())
            .await
            .unwrap();
        let part = |seq: u64, frames: &[&[u8]]| {
            LogAppend::new("amb", seq, frames.iter().map(|f| f.to_vec()).collect())
        };
        let sent = vec![part(1, &[b"a", b"b"])];
        assert!(!backend.already_appended(&sent).await.unwrap());
        backend.append(sent.clone()).await.unwrap();
        assert!(backend.already_appended(&sent).await.unwrap());
        assert!(!backend
            .already_appended(&[part(1, &[b"a", b"x"])])
            .await
            .unwrap());
        assert!(!backend
            .already_appended(&[part(2, &[b"b", b"c"])])
            .await
            .unwrap());
        assert!(!backend.already_appended(&[part(3, &[])]).await.unwrap());
    }
}
