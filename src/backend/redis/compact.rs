//! Compaction ([`Maintain`]): `BGREWRITEAOF` and `BGSAVE` on every server of the deployment,
//! waited for, with what a managed service refuses reported as caveats; and [`used_memory`].

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, RedisError, Value};

use super::topology::{cluster_nodes, primaries, NodeConn};
use super::{backend_error, Conn, RedisBackend, NAME};
use crate::backend::{CompactReport, Maintain};
use crate::error::{Error, Result};

/// Longest [`Maintain::compact`] waits for one node's background AOF rewrite or snapshot.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// How often compaction polls `INFO persistence` while a background job runs.
const BACKGROUND_POLL: Duration = Duration::from_millis(50);
/// Whether `info` says none of `jobs` runs (a missing field counts as not running: older
/// servers lack some).
pub(super) fn idle(info: &HashMap<String, String>, jobs: &[&str]) -> bool {
    jobs.iter()
        .all(|k| info.get(*k).is_none_or(|v| v.as_str() == "0"))
}

/// The `INFO persistence` fields that are 1 while a background job runs or waits to.
const BACKGROUND_JOBS: [&str; 3] = [
    "aof_rewrite_in_progress",
    "aof_rewrite_scheduled",
    "rdb_bgsave_in_progress",
];

#[async_trait]
impl Maintain for RedisBackend {
    /// The server's `used_memory` (`INFO memory`), summed over a Cluster's primaries.
    async fn server_memory(&self) -> Result<Option<u64>> {
        used_memory(self).await.map(Some)
    }

    /// The sum of `MEMORY USAGE` over every key of this store (its logs, blobs and search index).
    async fn stored_bytes(&self) -> Result<Option<u64>> {
        let mut blob_pattern = self.blob_key_prefix();
        blob_pattern.push(b'*');
        let log_pattern = self.log_key_pattern();
        let mut keys = self
            .retrying(
                || "listing keys".into(),
                || self.scan_keys(log_pattern.as_bytes()),
            )
            .await?;
        keys.extend(
            self.retrying(|| "listing keys".into(), || self.scan_keys(&blob_pattern))
                .await?,
        );
        // The search index's keys (a `shard=execution` log pattern matches them already).
        let (zset, hash) = self.index_keys();
        keys.extend([zset.into_bytes(), hash.into_bytes()]);
        keys.sort();
        keys.dedup();
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|k| {
                let mut cmd = redis::cmd("MEMORY");
                cmd.arg("USAGE").arg(k.as_slice());
                cmd
            })
            .collect();
        let sizes: Vec<Option<u64>> = self
            .retrying(
                || "measuring memory usage".into(),
                || self.query_many(&cmds),
            )
            .await?;
        Ok(Some(sizes.into_iter().flatten().sum()))
    }

    /// On every server (each node of a Cluster, primaries and replicas): `BGREWRITEAOF` when the
    /// AOF is on and `BGSAVE` when snapshots are configured (or one was taken since the server
    /// started), each waited for, so that the files hold only live keys; Redis 7 then deletes
    /// the old AOF files in the background. Refused commands (managed services) are caveats.
    async fn compact(&self) -> Result<CompactReport> {
        let mut report = CompactReport::new(NAME);
        report.bytes_before = self.stored_bytes().await?;
        match &self.conn {
            Conn::Single { manager, .. } => {
                let mut conn = NodeConn::Managed(manager.clone());
                let name = self.url.split('?').next().unwrap_or_default();
                self.compact_node(name, &mut conn, &mut report).await?;
                self.replica_caveat(&mut conn, &mut report).await?;
            }
            Conn::Cluster { conn, .. } => {
                let nodes = self
                    .retrying(
                        || "listing the Cluster's nodes".into(),
                        || cluster_nodes(conn),
                    )
                    .await?;
                for node in nodes {
                    let name = format!("{}:{}", node.host, node.port);
                    if node.has("fail") || node.has("noaddr") || node.has("handshake") {
                        report.caveat(format!(
                            "{name}: not compacted, the Cluster marks it {}: its files keep \
                             deleted data; run compact again once it is back",
                            node.flags.join(",")
                        ));
                        continue;
                    }
                    let mut conn = self.connect_node(&node).await?;
                    self.compact_node(&name, &mut conn, &mut report).await?;
                }
            }
        }
        report.bytes_after = self.stored_bytes().await?;
        Ok(report)
    }
}

/// The Redis server's `used_memory` (bytes) from `INFO memory`, summed over every primary of a
/// Cluster; for benchmarks.
pub async fn used_memory(backend: &RedisBackend) -> Result<u64> {
    let mut cmd = redis::cmd("INFO");
    cmd.arg("memory");
    let texts: Vec<String> = match &backend.conn {
        Conn::Single { manager, .. } => {
            vec![cmd
                .query_async(&mut manager.clone())
                .await
                .map_err(|e| backend_error("INFO memory".into(), e))?]
        }
        Conn::Cluster { conn, .. } => {
            let mut out = Vec::new();
            let nodes = primaries(conn)
                .await
                .map_err(|e| backend_error("CLUSTER NODES".into(), e))?;
            for (host, port) in nodes {
                let v = conn
                    .clone()
                    .route_command(
                        cmd.clone(),
                        RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress { host, port }),
                    )
                    .await
                    .map_err(|e| backend_error("INFO memory".into(), e))?;
                out.push(
                    FromRedisValue::from_redis_value(v)
                        .map_err(|e| backend_error("INFO memory".into(), e.into()))?,
                );
            }
            out
        }
    };
    Ok(texts
        .iter()
        .flat_map(|t| t.lines())
        .filter_map(|l| l.strip_prefix("used_memory:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum())
}

impl RedisBackend {
    /// Compacts one server (see [`Maintain::compact`]); `name` prefixes its lines in `report`.
    async fn compact_node(
        &self,
        name: &str,
        conn: &mut NodeConn,
        report: &mut CompactReport,
    ) -> Result<()> {
        let fail = |what: &str, e: RedisError| backend_error(format!("{name}: {what}"), e);
        let info = conn
            .info("persistence")
            .await
            .map_err(|e| fail("reading INFO persistence", e))?;
        let aof = info.get("aof_enabled").is_some_and(|v| v == "1");
        let saves_since_start = info
            .get("rdb_saves")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        let schedule: Option<bool> = match conn
            .query::<Vec<String>>(redis::cmd("CONFIG").arg("GET").arg("save"))
            .await
        {
            Ok(pair) => Some(pair.get(1).is_some_and(|v| !v.trim().is_empty())),
            Err(e) if e.code().is_some() => {
                report.caveat(format!(
                    "{name}: CONFIG GET save was refused ({e}), so whether RDB snapshots \
                         hold deleted data is unknown; on a managed service, snapshots and \
                         backups follow the provider's policy: ask it, or have a new snapshot \
                         taken"
                ));
                None
            }
            Err(e) => return Err(fail("reading CONFIG GET save", e)),
        };
        if aof {
            self.background(
                name,
                conn,
                "BGREWRITEAOF",
                "aof_last_bgrewrite_status",
                report,
            )
            .await?;
        }
        // A snapshot written since the server started is a file on disk too, even when none
        // is scheduled (a manual or replication BGSAVE): rewrite it with live keys only.
        let snapshot = schedule == Some(true) || saves_since_start > 0;
        if snapshot {
            self.background(name, conn, "BGSAVE", "rdb_last_bgsave_status", report)
                .await?;
        }
        if !aof && schedule == Some(false) && saves_since_start == 0 {
            report.step(format!(
                "{name}: no AOF and no RDB snapshot configured: the server writes no data files"
            ));
        }
        Ok(())
    }

    /// Runs `command` (`BGREWRITEAOF` or `BGSAVE`) on one server and waits until it is done and
    /// `status_field` of `INFO persistence` says it succeeded. A job already running may have
    /// copied the keys before they were deleted, so it is waited for and the command is sent
    /// again. A refused command becomes a caveat.
    pub(super) async fn background(
        &self,
        name: &str,
        conn: &mut NodeConn,
        command: &str,
        status_field: &str,
        report: &mut CompactReport,
    ) -> Result<()> {
        for _ in 0..5 {
            self.wait_idle(name, conn, command).await?;
            match conn.query::<Value>(&redis::cmd(command)).await {
                Ok(_) => {
                    let info = self.wait_idle(name, conn, command).await?;
                    let status = info.get(status_field).map_or("unknown", String::as_str);
                    if status != "ok" {
                        return Err(Error::Backend {
                            backend: NAME,
                            context: format!("{name}: {command}"),
                            source: format!(
                                "the server reports {status_field}:{status}; its log says why \
                                 (often disk space or permissions on its dir): fix that and run \
                                 compact again"
                            )
                            .into(),
                        });
                    }
                    report.step(match command {
                        "BGREWRITEAOF" => format!(
                            "{name}: BGREWRITEAOF rewrote the append-only file with only live \
                             keys (Redis 7 deletes the old AOF files in the background)"
                        ),
                        _ => format!("{name}: BGSAVE rewrote the RDB snapshot with only live keys"),
                    });
                    return Ok(());
                }
                Err(e) if e.to_string().contains("in progress") => continue,
                Err(e) if e.code().is_some() => {
                    report.caveat(format!(
                        "{name}: {command} was refused ({e}): the {} keeps deleted data until \
                         the server rewrites it by itself; run {command} with enough rights, \
                         or ask the service's provider",
                        if command == "BGSAVE" {
                            "RDB snapshot"
                        } else {
                            "append-only file"
                        }
                    ));
                    return Ok(());
                }
                Err(e) => return Err(backend_error(format!("{name}: {command}"), e)),
            }
        }
        Err(Error::Busy {
            what: format!(
                "{name}: {command} kept finding another background rewrite or snapshot starting \
                 first; run compact again when the server is quieter"
            ),
        })
    }

    /// Waits until no background rewrite or snapshot runs or is scheduled on one server; returns
    /// its last `INFO persistence`.
    async fn wait_idle(
        &self,
        name: &str,
        conn: &mut NodeConn,
        command: &str,
    ) -> Result<HashMap<String, String>> {
        let deadline = Instant::now() + BACKGROUND_TIMEOUT;
        loop {
            let info = conn
                .info("persistence")
                .await
                .map_err(|e| backend_error(format!("{name}: reading INFO persistence"), e))?;
            if idle(&info, &BACKGROUND_JOBS) {
                return Ok(info);
            }
            if Instant::now() >= deadline {
                return Err(Error::Backend {
                    backend: NAME,
                    context: format!("{name}: waiting for {command}"),
                    source: format!(
                        "a background rewrite or snapshot still runs after {BACKGROUND_TIMEOUT:?}; \
                         it goes on by itself: run compact again once `INFO persistence` shows \
                         it finished"
                    )
                    .into(),
                });
            }
            tokio::time::sleep(BACKGROUND_POLL).await;
        }
    }

    /// A caveat naming the replicas of a single server: they keep their own files.
    async fn replica_caveat(&self, conn: &mut NodeConn, report: &mut CompactReport) -> Result<()> {
        let info = conn
            .info("replication")
            .await
            .map_err(|e| backend_error(format!("{}: reading INFO replication", self.url), e))?;
        let replicas = info
            .get("connected_slaves")
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        if replicas > 0 {
            report.caveat(format!(
                "{} replica(s) keep their own AOF and RDB files: run compact against each \
                 (redis://REPLICA_HOST:PORT)",
                replicas
            ));
        }
        Ok(())
    }
}
