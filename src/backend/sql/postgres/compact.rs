//! Compaction ([`Maintain`]): `VACUUM FULL` of the schema's tables, retiring the WAL segments that
//! held deleted rows, and the caveats for what the server keeps anyway (recycled segments,
//! archiving, `wal_keep_size`, replication slots, standbys).

use async_trait::async_trait;

use super::{PostgresBackend, NAME};
use crate::backend::{CompactReport, Maintain};
use crate::error::Result;

/// The tables of a store's schema, which [`Maintain::compact`] rewrites (the search index too:
/// its entries may hold words of deleted checkpoints).
const TABLES: [&str; 5] = ["logs", "frames", "blobs", "ckpt_schema", "search_index"];
/// The SQLSTATE of a refused privilege.
const INSUFFICIENT_PRIVILEGE: &str = "42501";

/// For an error the server raised (not a lost connection): whether it refused a privilege, and
/// its message.
pub(super) fn refused(e: &sqlx::Error) -> Option<(bool, String)> {
    e.as_database_error().map(|d| {
        (
            d.code().is_some_and(|c| c == INSUFFICIENT_PRIVILEGE),
            d.message().to_owned(),
        )
    })
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
                .fetch_one(self.db.pool())
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

impl PostgresBackend {
    /// Runs a maintenance statement (`VACUUM FULL`, `CHECKPOINT`) with the simple protocol, so
    /// outside any transaction block, as `VACUUM` requires. No timeout: a rewrite of a large
    /// table takes as long as it takes, and the server finishes it even if the client gave up.
    async fn maintenance(&self, sql: &str) -> std::result::Result<(), sqlx::Error> {
        sqlx::raw_sql(sql).execute(self.db.pool()).await.map(|_| ())
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
                .fetch_all(self.db.pool())
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
                .fetch_all(self.db.pool())
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
        .fetch_one(self.db.pool())
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
                .fetch_all(self.db.pool())
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
                sqlx::query_scalar("SELECT count(*) FROM pg_stat_replication")
                    .fetch_one(self.db.pool())
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
}
