//! The schema: the tables and the `ckpt_append` function (version [`SCHEMA_VERSION`]), the statements
//! the backend runs, named once per schema, and the migration that creates or checks them under an
//! advisory lock.

use sqlx::postgres::PgConnection;
use sqlx::{Connection, Executor, Row};

use super::{backend_error, PostgresBackend};
use crate::backend::sql::DriverError;
use crate::error::{Error, Result};

/// The schema version this code writes and understands.
pub const SCHEMA_VERSION: i32 = 1;
/// The statements, with the schema's name in them.
pub(super) struct Queries {
    pub(super) append: String,
    pub(super) next_seq: String,
    pub(super) heal_next_seq: String,
    pub(super) log_problems: String,
    pub(super) scan: String,
    pub(super) list_logs: String,
    pub(super) raise: String,
    pub(super) truncate: String,
    pub(super) put_blobs: String,
    pub(super) rewrite_frames: String,
    pub(super) rewrite_blobs: String,
    pub(super) get_blobs: String,
    pub(super) missing_blobs: String,
    pub(super) list_blobs: String,
    pub(super) delete_blobs: String,
    pub(super) put_records: String,
    pub(super) get_records: String,
    pub(super) scan_records: String,
    pub(super) delete_records: String,
    pub(super) log_tails: String,
    pub(super) write_index: String,
    pub(super) flush_index: String,
    pub(super) get_index: String,
    /// By [`scan_index_slot`].
    pub(super) scan_index: [String; 4],
    pub(super) clear_index: String,
    pub(super) index_size: String,
}

/// Which of [`Queries::scan_index`] scans from an exclusive start (`after`) and which stops
/// below the prefix's end (see [`crate::backend::prefix_end`]).
pub(super) fn scan_index_slot(exclusive: bool, bounded: bool) -> usize {
    usize::from(exclusive) * 2 + usize::from(bounded)
}

/// The range scan of the search index (`$1` the start, then the end when `bounded`, then the
/// limit): a range of the primary key, so it reads only the rows it returns. `bytea` compares
/// bytewise (`memcmp`, shorter first on a tie), whatever the collation.
fn scan_index_sql(s: &str, exclusive: bool, bounded: bool) -> String {
    let from = if exclusive { ">" } else { ">=" };
    if bounded {
        format!(
            "SELECT key, value FROM {s}.search_index WHERE key {from} $1 AND key < $2 \
             ORDER BY key LIMIT $3"
        )
    } else {
        format!("SELECT key, value FROM {s}.search_index WHERE key {from} $1 ORDER BY key LIMIT $2")
    }
}

impl Queries {
    pub(super) fn new(s: &str) -> Self {
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
            put_records: format!(
                "INSERT INTO {s}.records (key, value) SELECT * FROM UNNEST($1::text[], $2::bytea[]) \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            get_records: format!("SELECT key, value FROM {s}.records WHERE key = ANY($1)"),
            scan_records: format!(
                "SELECT key, value FROM {s}.records WHERE left(key, length($1)) = $1"
            ),
            delete_records: format!("DELETE FROM {s}.records WHERE key = ANY($1)"),
            log_tails: format!(
                "SELECT l.log, GREATEST(l.next_seq, \
                 COALESCE((SELECT MAX(seq) + 1 FROM {s}.frames f WHERE f.log = l.log), 1)) \
                 FROM {s}.logs l"
            ),
            // One statement, so one transaction: the deletes (the caller leaves out keys it also
            // puts, which the upsert replaces anyway) and the upsert touch different rows.
            //
            // A write that puts anything commits without waiting for its WAL to reach the disk
            // (`synchronous_commit` off for this transaction alone, set as its rows are read):
            // the index may lose its newest writes in a server crash, as `SearchTable` allows,
            // and the next search catches up. Waiting cost a WAL sync per index write
            // (`pg_stat_wal`: 50 writes made 50 syncs, now 1). The WAL keeps order, so a later durable commit (any
            // save) makes the earlier index writes durable too; `flush` forces one.
            write_index: format!(
                "WITH deleted AS (DELETE FROM {s}.search_index WHERE key = ANY($1::bytea[])) \
                 INSERT INTO {s}.search_index (key, value) \
                 SELECT k, v FROM UNNEST($2::bytea[], $3::bytea[]) AS u(k, v) \
                 WHERE set_config('synchronous_commit', 'off', true) IS NOT NULL \
                 ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
            ),
            // Assigning a transaction id makes its commit write (and wait for) a commit record,
            // which flushes every earlier commit's WAL with it.
            flush_index: "SELECT txid_current()".to_owned(),
            get_index: format!("SELECT key, value FROM {s}.search_index WHERE key = ANY($1)"),
            scan_index: [
                scan_index_sql(s, false, false),
                scan_index_sql(s, false, true),
                scan_index_sql(s, true, false),
                scan_index_sql(s, true, true),
            ],
            clear_index: format!("DELETE FROM {s}.search_index"),
            index_size: format!(
                "SELECT COUNT(*), COALESCE(SUM(length(key) + length(value)), 0)::BIGINT \
                 FROM {s}.search_index"
            ),
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

/// The statement [`Backend::scan`](crate::backend::Backend::scan) runs on schema `s`: a range of the primary key `(log, seq)`.
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

/// Checks a `schema=` name: lowercase ASCII letters, digits and `_`, not starting with a digit,
/// so it needs no quoting and names the notification channel too.
pub(super) fn valid_schema(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 50
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PostgresBackend {
    /// Creates the schema (first open, when `create`) or checks its version. A schema that is
    /// ready is recognised by one read-only statement; anything else (no schema yet, an older
    /// one, a half-made one) goes through [`PostgresBackend::migrate_once`], under an advisory
    /// lock so that processes opening at the same time do it once.
    pub(super) async fn migrate(&self, create: bool) -> Result<()> {
        let what = format!("creating or checking the schema {:?}", self.schema);
        let outcome = match self.retry(&what, || self.ready_schema()).await? {
            Some(outcome) => outcome,
            None => self.retry(&what, || self.migrate_once(create)).await?,
        };
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

    /// What an existing schema states, read in one round trip without a lock or DDL (every
    /// open but a store's first pays only this): [`Migration::Ready`] when it is at this
    /// version with every table, [`Migration::Newer`] when a newer ckpt wrote it, `None` when
    /// the migration must look (no schema or version table yet, an older version, no records
    /// or search index table). Sent as a simple query: no statement to prepare first.
    async fn ready_schema(&self) -> std::result::Result<Option<Migration>, sqlx::Error> {
        let s = self.schema.as_str();
        let sql = format!(
            "SELECT MAX(version), to_regclass('{s}.records') IS NOT NULL \
             AND to_regclass('{s}.search_index') IS NOT NULL FROM {s}.ckpt_schema"
        );
        // (`RawSql::fetch_optional` fails on no row: the executor's is called instead.)
        let row = match (&self.db).fetch_optional(sqlx::raw_sql(&sql)).await {
            Ok(row) => row,
            // Not there (yet), or not readable: the migration finds out and says what.
            Err(e @ sqlx::Error::Database(_)) if !super::is_transient(&e) => return Ok(None),
            Err(e) => return Err(e),
        };
        let Some(row) = row else { return Ok(None) };
        let version: Option<i32> = row.try_get(0)?;
        let side_tables: bool = row.try_get(1)?;
        Ok(match version {
            Some(v) if v > SCHEMA_VERSION => Some(Migration::Newer(v)),
            Some(SCHEMA_VERSION) if side_tables => Some(Migration::Ready),
            _ => None,
        })
    }

    /// One migration attempt, on one connection (the kept one when it is free).
    fn migrate_once(
        &self,
        create: bool,
    ) -> futures_util::future::BoxFuture<'_, std::result::Result<Migration, sqlx::Error>> {
        // Boxed: sqlx's executor lifetimes defeat the Send inference of a plain async fn here.
        Box::pin(async move {
            let mut taken = self.db.take().await?;
            let outcome = self.migrate_on(taken.conn(), create).await;
            self.db.give_back(taken, &outcome);
            outcome
        })
    }

    /// [`PostgresBackend::migrate_once`] on `conn`, in one transaction.
    fn migrate_on<'c>(
        &'c self,
        conn: &'c mut PgConnection,
        create: bool,
    ) -> futures_util::future::BoxFuture<'c, std::result::Result<Migration, sqlx::Error>> {
        Box::pin(async move {
            let s = self.schema.as_str();
            // Rolled back when dropped unless committed.
            let mut tx = conn.begin().await?;
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
            // Derived records (`SideTable`): beside schema version 1, so an older schema gains
            // the table without a version change (older code ignores it). Unlogged: a cache
            // needs no WAL, and a crash that empties it costs time, never data.
            let records = format!(
                "CREATE UNLOGGED TABLE IF NOT EXISTS {s}.records \
                 (key TEXT PRIMARY KEY, value BYTEA NOT NULL)"
            );
            (&mut *tx).execute(records.as_str()).await?;
            // The search index (`SearchTable`): beside version 1 too, for the same reasons. Not
            // unlogged: a crash would empty it, and the store may count on entries written
            // before a flush surviving one (rebuilding a large index costs a full scan).
            let search = format!(
                "CREATE TABLE IF NOT EXISTS {s}.search_index \
                 (key BYTEA PRIMARY KEY, value BYTEA NOT NULL)"
            );
            (&mut *tx).execute(search.as_str()).await?;
            tx.commit().await?;
            Ok(Migration::Ready)
        })
    }
}
