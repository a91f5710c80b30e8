//! The Redis [`Backend`]: one server (`redis://`, `rediss://`) or a Redis Cluster
//! (`redis+cluster://host1:port,host2:port`, `rediss+cluster://...`).
//!
//! This module owns the key layout, the Lua compare-and-append script, the retry policy and the
//! URL options of the Redis backend; everything above the primitive [`Backend`] trait lives in
//! [`crate::store`].
//!
//! # Key layout
//!
//! Every key starts with the store's prefix `P` (`?prefix=`, default `ckpt`; letters, digits,
//! `_`, `-` and `.`). Each log (one per execution) `L` is two keys sharing one hash tag, so they
//! always live in one Cluster hash slot and one Lua script can check and append atomically:
//!
//! | key | type | holds |
//! |---|---|---|
//! | `{P}:L:s` | stream | the frames; entry id `<seq>-1`, one field `f` |
//! | `{P}:L:n` | string | the log's next sequence number (kept by truncate; exists iff the log does) |
//! | `P:b:<32 raw hash bytes>` | string | one blob (no hash tag: blobs spread over the Cluster) |
//!
//! The entry id `<seq>-1` makes `XRANGE key <from> + COUNT n` exactly "frames `>= from`", and
//! `XREAD ... <seq-1>-1` exactly "frames `>= seq`".
//!
//! # Cluster: one slot per store, or one per execution
//!
//! By default (`shard=store`) the hash tag is `{P}`: all logs of a store share one slot, so an
//! atomic multi-execution [`crate::Store::save_batch`] is one script, as on a single server.
//! Blobs, the bulk of the data, are still spread over every node. With `shard=execution` the tag
//! is `{P:L}`: each execution's log gets its own slot (spreading log traffic over the Cluster), and
//! an append spanning logs in different slots is refused with [`Error::InvalidInput`] before
//! anything is written, because no Redis primitive makes writes in several slots atomic. A prefix
//! must always be opened with the same `shard` setting.
//!
//! # Durability
//!
//! A save is acknowledged when Redis has executed the script; it is on disk when the server runs
//! with `appendonly yes` and `appendfsync always` (what `scripts/redis-server.sh` starts). Other
//! server settings trade durability away, and [`Backend::flush`] cannot change that.
//!
//! # Expiry (`ttl=`)
//!
//! With a TTL, each append (and `raise_next_seq`) re-arms `PEXPIRE ttl` on the log's two keys in
//! the same script, so an execution disappears whole (frames and next sequence number together)
//! `ttl` after its last save; a save to it afterwards starts a new execution at version 1.
//!
//! Blobs never expire: they are shared between executions, and a delta save does not touch the
//! blobs its base snapshot references, so a per-blob TTL could expire a blob a live execution
//! still needs. An expired execution's blobs become unreferenced instead, and the next
//! [`crate::Store::gc`] deletes them (gc only sees the logs that still exist). So: once expired,
//! no key of the execution remains; after the next gc, no blob remains that only expired
//! executions referenced; live executions never lose anything. Between the expiry and that gc,
//! the expired execution's blobs still take memory.
//!
//! # Watching
//!
//! [`Backend::wait_for_append`] is `XREAD BLOCK <timeout> STREAMS <stream> <next_seq - 1>-1` on a
//! connection of its own (never the shared one, which a blocking read would stall), taken from a
//! small pool of idle ones: a save by any process or machine wakes the watcher at once.
//!
//! # Size
//!
//! [`Backend::stored_bytes`] is the sum of `MEMORY USAGE` over the store's keys (found with
//! `SCAN`), so it includes Redis's per-key overhead; [`used_memory`] reads the server's whole
//! `used_memory` (for benchmarks).
//!
//! # Compaction
//!
//! A deleted key stays in the append-only file (as the commands that wrote it) and in the RDB
//! snapshot until they are rewritten. [`Backend::compact`] visits every server (each node of a
//! Cluster, primaries and replicas, found with `CLUSTER NODES`): `BGREWRITEAOF` when the AOF is
//! on, `BGSAVE` when snapshots are scheduled (or one was taken since the server started), each
//! waited for; Redis 7 deletes the old AOF files right after the rewrite, in the background.
//! Commands a managed service refuses (`CONFIG`, `BGREWRITEAOF`) become caveats. Replicas of a
//! single server, and copies the operator or provider made, are not reached.
//!
//! # Failures
//!
//! Transient errors (connection refused or dropped, timeouts, `MOVED`/`ASK`, `TRYAGAIN`,
//! `CLUSTERDOWN`, `LOADING`, `BUSY`) are retried with exponential backoff and jitter until the
//! call's `timeout` (default 30 s) has passed. An append whose outcome is unknown (the connection
//! broke after the script was sent) is never applied twice: the retried script answers with a
//! conflict if the first attempt landed, and the log is then read back: if it holds exactly this
//! append's frames at the expected position, the append succeeded. A failed append leaves
//! nothing half-visible (the script is atomic). Errors and `Debug` output show the URL without
//! its password.
//!
//! Within one process, `next_seq` waits for appends to the same log that are in flight through
//! this backend, so writers sharing it do not build saves on a tail about to move (which would
//! only conflict).
//!
//! # URL options
//!
//! `prefix=NAME`, `ttl=DURATION`, `timeout=DURATION` (`500ms`, `30s`, `5m`, `24h`, `2d`; a bare
//! number is seconds), `shard=store|execution`, `max_connections=N` (the most idle dedicated
//! connections kept for blocking `watch` reads), and for TLS URLs `tls_ca=PATH` (a PEM file of
//! root certificates to trust instead of the system's). [`ConnectOptions`] overrides the URL.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures_util::future::join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{AsyncConnectionConfig, Client, Cmd, FromRedisValue, RedisError, Script, Value};

use super::retry;
use super::{
    Backend, Blob, BlobHash, Capabilities, CompactReport, ConnectOptions, Expiry, LogAppend,
    Maintain, Notify, Rewrite,
};
use crate::error::{Error, Result};
use crate::url::{redact, RawUrl};

/// The backend's name in messages.
const NAME: &str = "redis";
/// The prefix when the URL names none.
const DEFAULT_PREFIX: &str = "ckpt";
/// How long one call may take, retries included, when neither the URL nor the builder says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle dedicated connections kept for blocking reads (`XREAD BLOCK`) when not configured.
const DEFAULT_WAITERS: usize = 4;
/// Keys asked for per `SCAN` step.
const SCAN_COUNT: usize = 1000;
/// Longest [`Backend::compact`] waits for one node's background AOF rewrite or snapshot.
const BACKGROUND_TIMEOUT: Duration = Duration::from_secs(600);
/// How often compaction polls `INFO persistence` while a background job runs.
const BACKGROUND_POLL: Duration = Duration::from_millis(50);
/// The URL options this backend accepts, for error messages.
const ACCEPTED: &str = "prefix=NAME, ttl=DURATION, timeout=DURATION, shard=store|execution, \
                        max_connections=N, tls_ca=PATH (durations like 500ms, 30s, 5m, 24h, 2d)";

/// The compare-and-append script. KEYS: per log part, its stream and next-seq keys. ARGV: the TTL
/// in ms (0: none), then per part its expected seq, frame count and frames. Checks every part
/// (a log appearing twice is checked against the state the earlier part leaves) before writing
/// anything; returns 0, or `{part index (1-based), actual next seq}` on a conflict. Both keys get
/// the same expiry (or none), so they expire together and a store reopened without `ttl=` makes
/// its logs permanent again.
const APPEND_LUA: &str = r"
local ttl = tonumber(ARGV[1])
local parts = #KEYS / 2
local nexts = {}
local new_log = {}
local plan = {}
local pos = 2
for i = 1, parts do
  local nkey = KEYS[2 * i]
  local cur = nexts[nkey]
  if cur == nil then
    local stored = redis.call('GET', nkey)
    new_log[nkey] = (stored == false)
    cur = tonumber(stored or '1')
  end
  local expected = tonumber(ARGV[pos])
  local count = tonumber(ARGV[pos + 1])
  if cur ~= expected then return {i, cur} end
  plan[i] = {pos + 2, count, expected}
  nexts[nkey] = cur + count
  pos = pos + 2 + count
end
for i = 1, parts do
  local p = plan[i]
  if p[2] > 0 then
    local skey = KEYS[2 * i - 1]
    local nkey = KEYS[2 * i]
    if new_log[nkey] then
      -- No next-seq key: the log is new or expired; a stream left without one is stale.
      redis.call('DEL', skey)
      new_log[nkey] = false
    end
    for j = 0, p[2] - 1 do
      redis.call('XADD', skey, string.format('%d-1', p[3] + j), 'f', ARGV[p[1] + j])
    end
    redis.call('SET', nkey, string.format('%d', p[3] + p[2]))
    if ttl > 0 then
      redis.call('PEXPIRE', skey, ttl)
      redis.call('PEXPIRE', nkey, ttl)
    else
      -- SET cleared the next-seq key's TTL; the stream must not keep one either.
      redis.call('PERSIST', skey)
    end
  end
end
return 0
";

/// Raises a log's next seq (never lowers it), creating the log. KEYS: stream, next. ARGV: the new
/// next seq, the TTL in ms (0: none).
const RAISE_LUA: &str = r"
local stored = redis.call('GET', KEYS[2])
if stored == false then redis.call('DEL', KEYS[1]) end
local cur = tonumber(stored or '0')
local want = math.max(tonumber(ARGV[1]), 1)
if cur < want then redis.call('SET', KEYS[2], string.format('%d', want)) end
local ttl = tonumber(ARGV[2])
if ttl > 0 then
  redis.call('PEXPIRE', KEYS[2], ttl)
  if redis.call('EXISTS', KEYS[1]) == 1 then redis.call('PEXPIRE', KEYS[1], ttl) end
else
  redis.call('PERSIST', KEYS[2])
  redis.call('PERSIST', KEYS[1])
end
return 0
";

/// Replaces entries of one stream in place (rekey). KEYS: the stream. ARGV: pairs of sequence
/// number and new frame. A stream entry cannot be changed, and ids cannot go back, so the stream
/// is rebuilt with the same ids (and expiry), the given frames replacing theirs; sequence numbers
/// it does not hold are skipped. Returns how many entries were replaced.
const REWRITE_LUA: &str = r"
local repl = {}
for i = 1, #ARGV, 2 do repl[ARGV[i] .. '-1'] = ARGV[i + 1] end
local entries = redis.call('XRANGE', KEYS[1], '-', '+')
local n = 0
for _, e in ipairs(entries) do if repl[e[1]] then n = n + 1 end end
if n == 0 then return 0 end
local pttl = redis.call('PTTL', KEYS[1])
redis.call('DEL', KEYS[1])
for _, e in ipairs(entries) do
  redis.call('XADD', KEYS[1], e[1], 'f', repl[e[1]] or e[2][2])
end
if pttl > 0 then redis.call('PEXPIRE', KEYS[1], pttl) end
return n
";

/// How a store's logs map to Cluster hash slots (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shard {
    /// One slot for all logs of a store: cross-execution batches are atomic.
    Store,
    /// One slot per execution: cross-slot batches are refused.
    Execution,
}

/// The settings parsed from the URL and [`ConnectOptions`].
#[derive(Debug, Clone)]
struct Settings {
    prefix: String,
    ttl: Option<Duration>,
    timeout: Duration,
    shard: Shard,
    waiters: usize,
    /// PEM root certificates to trust instead of the system's (`tls_ca=PATH`, TLS URLs only).
    tls_ca: Option<std::path::PathBuf>,
}

/// The connection the backend shares between all calls.
// One per backend, so the size difference between the variants costs nothing.
#[allow(clippy::large_enum_variant)]
enum Conn {
    /// One server through a [`ConnectionManager`], which reconnects by itself.
    Single {
        client: Client,
        manager: ConnectionManager,
    },
    /// A Cluster through the async cluster client (follows `MOVED`/`ASK` by itself).
    Cluster {
        client: ClusterClient,
        conn: ClusterConnection,
    },
}

/// A connection reserved for one blocking read at a time.
enum Waiter {
    Single(MultiplexedConnection),
    Cluster(ClusterConnection),
}

/// A [`Backend`] on Redis; see the [module documentation](self).
pub struct RedisBackend {
    conn: Conn,
    settings: Settings,
    /// The URL with any password masked, for messages.
    url: String,
    append_script: Script,
    raise_script: Script,
    rewrite_script: Script,
    /// Idle dedicated connections for `wait_for_append`.
    waiters: Mutex<Vec<Waiter>>,
    /// How to reach one Cluster node directly (compaction visits each): the driver URL before
    /// and after `host:port`. Holds the password: never shown.
    node_url: (String, String),
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.url)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl RedisBackend {
    /// Connects to the server (`cluster` false) or Cluster named by `url`, with `options`
    /// overriding the URL's query options. Fails with [`Error::InvalidUrl`] on an unknown or
    /// malformed option, and [`Error::Backend`] when no server answers within the timeout.
    pub async fn connect(url: &RawUrl, cluster: bool, options: &ConnectOptions) -> Result<Self> {
        let parsed = ParsedUrl::parse(url, cluster)?;
        let settings = parsed.settings(options)?;
        let conn = tokio::time::timeout(settings.timeout, connect(&parsed, &settings))
            .await
            .map_err(|_| Error::Backend {
                backend: NAME,
                context: format!("connecting to {}", url.redacted()),
                source: format!("no answer within {:?}", settings.timeout).into(),
            })?
            .map_err(|e| backend_error(format!("connecting to {}", url.redacted()), e))?;
        Ok(RedisBackend {
            conn,
            settings,
            url: url.redacted(),
            append_script: Script::new(APPEND_LUA),
            raise_script: Script::new(RAISE_LUA),
            rewrite_script: Script::new(REWRITE_LUA),
            waiters: Mutex::new(Vec::new()),
            node_url: parsed.node_url.clone(),
        })
    }

    /// A direct connection to one Cluster node, with the URL's credentials and TLS settings.
    async fn connect_node(&self, node: &ClusterNode) -> Result<NodeConn> {
        let name = format!("{}:{}", node.host, node.port);
        let url = format!("{}{name}{}", self.node_url.0, self.node_url.1);
        let connect = || async {
            let client = match &self.settings.tls_ca {
                Some(path) => {
                    let root = std::fs::read(path).map_err(|e| {
                        RedisError::from((
                            redis::ErrorKind::InvalidClientConfig,
                            "cannot read the tls_ca file",
                            format!("{}: {e}", path.display()),
                        ))
                    })?;
                    let certs = redis::TlsCertificates {
                        client_tls: None,
                        root_cert: Some(root),
                    };
                    Client::build_with_tls(url.as_str(), certs)?
                }
                None => Client::open(url.as_str())?,
            };
            let config = AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.settings.timeout.min(Duration::from_secs(5))))
                .set_response_timeout(Some(self.settings.timeout));
            client
                .get_multiplexed_async_connection_with_config(&config)
                .await
        };
        self.retrying(|| format!("connecting to Cluster node {name}"), connect)
            .await
            .map(NodeConn::Direct)
    }

    /// Compacts one server (see [`Backend::compact`]); `name` prefixes its lines in `report`.
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
    async fn background(
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

    /// The hash-tagged key stem of `log`: `{P}:L` or `{P:L}`.
    fn log_stem(&self, log: &str) -> String {
        match self.settings.shard {
            Shard::Store => format!("{{{}}}:{log}", self.settings.prefix),
            Shard::Execution => format!("{{{}:{log}}}", self.settings.prefix),
        }
    }

    fn stream_key(&self, log: &str) -> String {
        format!("{}:s", self.log_stem(log))
    }

    fn next_key(&self, log: &str) -> String {
        format!("{}:n", self.log_stem(log))
    }

    /// The SCAN pattern of every next-seq key, and the text around a log's name in it.
    fn next_key_pattern(&self) -> (String, String, &'static str) {
        let p = &self.settings.prefix;
        match self.settings.shard {
            Shard::Store => (format!("{{{p}}}:*:n"), format!("{{{p}}}:"), ":n"),
            Shard::Execution => (format!("{{{p}:*}}:n"), format!("{{{p}:"), "}:n"),
        }
    }

    /// The SCAN pattern of every log key of this store.
    fn log_key_pattern(&self) -> String {
        let p = &self.settings.prefix;
        match self.settings.shard {
            Shard::Store => format!("{{{p}}}:*"),
            Shard::Execution => format!("{{{p}:*"),
        }
    }

    fn blob_key_prefix(&self) -> Vec<u8> {
        format!("{}:b:", self.settings.prefix).into_bytes()
    }

    fn blob_key(&self, hash: &BlobHash) -> Vec<u8> {
        let mut key = self.blob_key_prefix();
        key.extend_from_slice(hash);
        key
    }

    /// `SET key value <condition>` for every blob, pipelined and retried: `NX` stores new ones
    /// (idempotent puts), `XX` replaces existing ones (rekey).
    async fn set_blobs(
        &self,
        blobs: &[(BlobHash, Vec<u8>)],
        condition: &str,
        doing: &str,
    ) -> Result<()> {
        let cmds: Vec<Cmd> = blobs
            .iter()
            .map(|(hash, bytes)| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.blob_key(hash))
                    .arg(bytes.as_slice())
                    .arg(condition);
                cmd
            })
            .collect();
        let _: Vec<Value> = self
            .retrying(
                || format!("{doing} {} blobs", blobs.len()),
                || self.query_many(&cmds),
            )
            .await?;
        Ok(())
    }

    /// Runs a prepared script on the shared connection (one server or Cluster), retried.
    async fn run_script(
        &self,
        inv: &redis::ScriptInvocation<'_>,
        what: impl Fn() -> String,
    ) -> Result<Value> {
        self.retrying(what, || async {
            match &self.conn {
                Conn::Single { manager, .. } => inv.invoke_async(&mut manager.clone()).await,
                Conn::Cluster { conn, .. } => inv.invoke_async(&mut conn.clone()).await,
            }
        })
        .await
    }

    fn ttl_ms(&self) -> u64 {
        self.settings
            .ttl
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    /// The expiry an append arms: none when it writes to a log the store says never expires
    /// (its own logs: the gc log, an encrypted store's descriptor).
    fn ttl_for(&self, appends: &[LogAppend]) -> u64 {
        let never = |a: &LogAppend| !a.frames.is_empty() && a.expiry == Expiry::Never;
        if appends.iter().any(never) {
            0
        } else {
            self.ttl_ms()
        }
    }

    /// Runs `op` until it succeeds, fails permanently, or the call's timeout has passed; transient
    /// failures are retried with exponential backoff and jitter.
    async fn retrying<T, F, Fut>(&self, what: impl Fn() -> String, mut op: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = redis::RedisResult<T>>,
    {
        let deadline = Instant::now() + self.settings.timeout;
        let mut attempt = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = match tokio::time::timeout(remaining, op()).await {
                Ok(outcome) => outcome,
                Err(_) => return Err(self.timed_out(&what())),
            };
            match outcome {
                Ok(v) => return Ok(v),
                Err(e) if is_transient(&e) && Instant::now() < deadline => {
                    retry::REDIS.pause_until(attempt, deadline).await;
                    attempt += 1;
                }
                Err(e) => return Err(backend_error(format!("{} on {}", what(), self.url), e)),
            }
        }
    }

    fn timed_out(&self, what: &str) -> Error {
        Error::Backend {
            backend: NAME,
            context: format!("{what} on {}", self.url),
            source: format!(
                "no success within the timeout of {:?} (set timeout= in the URL or StoreBuilder::timeout)",
                self.settings.timeout
            )
            .into(),
        }
    }

    /// One command on the shared connection.
    async fn query<T: FromRedisValue>(&self, cmd: &Cmd) -> redis::RedisResult<T> {
        match &self.conn {
            Conn::Single { manager, .. } => cmd.query_async(&mut manager.clone()).await,
            Conn::Cluster { conn, .. } => cmd.query_async(&mut conn.clone()).await,
        }
    }

    /// Several independent single-key commands with one round trip: a pipeline on one server;
    /// on a Cluster (where a pipeline cannot span slots) concurrent requests, which the
    /// multiplexed node connections pipeline by themselves.
    async fn query_many<T: FromRedisValue>(&self, cmds: &[Cmd]) -> redis::RedisResult<Vec<T>> {
        if cmds.is_empty() {
            return Ok(Vec::new());
        }
        match &self.conn {
            Conn::Single { manager, .. } => {
                let mut pipe = redis::pipe();
                for cmd in cmds {
                    pipe.add_command(cmd.clone());
                }
                pipe.query_async(&mut manager.clone()).await
            }
            Conn::Cluster { conn, .. } => {
                let futures = cmds.iter().map(|cmd| {
                    let mut conn = conn.clone();
                    async move { cmd.query_async::<T>(&mut conn).await }
                });
                join_all(futures).await.into_iter().collect()
            }
        }
    }

    /// Every key matching `pattern`, by `SCAN` (never `KEYS`); on a Cluster, on every primary.
    async fn scan_keys(&self, pattern: &[u8]) -> redis::RedisResult<Vec<Vec<u8>>> {
        match &self.conn {
            Conn::Single { manager, .. } => {
                scan_node(pattern, |cmd| {
                    let mut conn = manager.clone();
                    async move { cmd.query_async(&mut conn).await }
                })
                .await
            }
            Conn::Cluster { conn, .. } => {
                let mut keys = Vec::new();
                for (host, port) in primaries(conn).await? {
                    let conn = conn.clone();
                    let found = scan_node(pattern, |cmd| {
                        let mut conn = conn.clone();
                        let route = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                            host: host.clone(),
                            port,
                        });
                        async move {
                            let v = conn.route_command(cmd, route).await?;
                            FromRedisValue::from_redis_value(v).map_err(RedisError::from)
                        }
                    })
                    .await?;
                    keys.extend(found);
                }
                // A node may report keys of slots it is giving away; keep each key once.
                let unique: BTreeSet<Vec<u8>> = keys.into_iter().collect();
                Ok(unique.into_iter().collect())
            }
        }
    }

    /// The appends as one script call: keys and arguments in the order `APPEND_LUA` reads them.
    fn append_invocation(&self, appends: &[LogAppend]) -> redis::ScriptInvocation<'_> {
        let mut inv = self.append_script.prepare_invoke();
        inv.arg(self.ttl_for(appends));
        for a in appends {
            inv.key(self.stream_key(&a.log)).key(self.next_key(&a.log));
            inv.arg(a.expected_seq).arg(a.frames.len());
            for frame in &a.frames {
                inv.arg(frame.as_slice());
            }
        }
        inv
    }

    /// Refuses, before anything is written, an append a Cluster cannot make atomic: logs in
    /// more than one hash slot (only possible with `shard=execution`).
    fn check_one_slot(&self, appends: &[LogAppend]) -> Result<()> {
        if !matches!(self.conn, Conn::Cluster { .. }) || self.settings.shard == Shard::Store {
            return Ok(());
        }
        let slots: BTreeSet<u16> = appends
            .iter()
            .map(|a| key_slot(self.next_key(&a.log).as_bytes()))
            .collect();
        if slots.len() > 1 {
            let logs: Vec<&str> = appends.iter().map(|a| a.log.as_str()).collect();
            return Err(Error::InvalidInput(format!(
                "an atomic save across executions {logs:?} is not supported on Redis Cluster \
                 with shard=execution (their logs live in different hash slots, which no Redis \
                 command can update atomically); save them separately, or use shard=store \
                 (the default), which keeps every log of a store in one slot"
            )));
        }
        Ok(())
    }

    /// The append script until it answers, retrying transient failures until the timeout.
    /// `maybe_applied`: an earlier attempt may have landed unheard; a conflict is then checked
    /// against the log, and the append counts as done if the log holds exactly its frames.
    async fn append_retrying(&self, appends: &[LogAppend], mut maybe_applied: bool) -> Result<()> {
        let what = || {
            let logs: Vec<&str> = appends.iter().map(|a| a.log.as_str()).collect();
            format!("appending to logs {logs:?}")
        };
        let deadline = Instant::now() + self.settings.timeout;
        let mut attempt = 0u32;
        loop {
            let remaining = deadline.saturating_duration_since(Instant::now());
            let outcome = match tokio::time::timeout(remaining, self.try_append(appends)).await {
                Ok(outcome) => outcome,
                // The abandoned attempt may have reached the server.
                Err(_) => return self.give_up(appends, true, self.timed_out(&what())).await,
            };
            let e = match outcome {
                Ok(None) => return Ok(()),
                Ok(Some((part, actual))) => {
                    if maybe_applied {
                        if let Ok(true) = self.append_landed(appends).await {
                            return Ok(());
                        }
                    }
                    return Err(conflict(appends, part, actual));
                }
                Err(e) => e,
            };
            maybe_applied |= is_ambiguous(&e);
            if !is_transient(&e) || Instant::now() >= deadline {
                let err = backend_error(format!("{} on {}", what(), self.url), e);
                return self.give_up(appends, maybe_applied, err).await;
            }
            retry::REDIS.pause_until(attempt, deadline).await;
            attempt += 1;
        }
    }

    /// Ends a failed append with `err`, unless an attempt may have landed unheard and the log,
    /// read once more (briefly), holds exactly its frames: a save that landed is not reported
    /// as failed.
    async fn give_up(&self, appends: &[LogAppend], maybe_applied: bool, err: Error) -> Result<()> {
        if maybe_applied {
            let grace = self.settings.timeout.min(Duration::from_secs(2));
            if let Ok(Ok(true)) = tokio::time::timeout(grace, self.append_landed(appends)).await {
                return Ok(());
            }
        }
        Err(err)
    }

    /// [`Backend::append_with_blobs`] once the logs are marked in flight: on one server one
    /// pipeline, on a Cluster the blobs first.
    async fn append_blobs_first(
        &self,
        appends: &[LogAppend],
        blobs: Vec<(BlobHash, Vec<u8>)>,
    ) -> Result<()> {
        let Conn::Single { manager, .. } = &self.conn else {
            self.put_blobs(blobs).await?;
            return self.append_retrying(appends, false).await;
        };
        let first = tokio::time::timeout(
            self.settings.timeout,
            self.try_append_pipelined(manager, appends, &blobs),
        )
        .await;
        match first {
            Ok(Ok(None)) => Ok(()),
            Ok(Ok(Some((part, actual)))) => Err(conflict(appends, part, actual)),
            // The script was not loaded (a restarted server), or a transient failure: the blobs
            // may be stored; do both again the slow way, remembering the append may have landed.
            Ok(Err(e)) if is_transient(&e) || is_no_script(&e) => {
                self.put_blobs(blobs).await?;
                self.append_retrying(appends, is_ambiguous(&e)).await
            }
            Ok(Err(e)) => Err(backend_error(
                format!("appending with {} blobs on {}", blobs.len(), self.url),
                e,
            )),
            Err(_) => {
                self.put_blobs(blobs).await?;
                self.append_retrying(appends, true).await
            }
        }
    }

    /// One server: `SET NX` of every blob, then the append script (`EVALSHA`), in one pipeline.
    async fn try_append_pipelined(
        &self,
        manager: &ConnectionManager,
        appends: &[LogAppend],
        blobs: &[(BlobHash, Vec<u8>)],
    ) -> redis::RedisResult<Option<(usize, u64)>> {
        let mut pipe = redis::pipe();
        for (hash, bytes) in blobs {
            pipe.cmd("SET")
                .arg(self.blob_key(hash))
                .arg(bytes.as_slice())
                .arg("NX");
        }
        let mut eval = redis::cmd("EVALSHA");
        eval.arg(self.append_script.get_hash())
            .arg(2 * appends.len());
        for a in appends {
            eval.arg(self.stream_key(&a.log)).arg(self.next_key(&a.log));
        }
        eval.arg(self.ttl_for(appends));
        for a in appends {
            eval.arg(a.expected_seq).arg(a.frames.len());
            for frame in &a.frames {
                eval.arg(frame.as_slice());
            }
        }
        pipe.add_command(eval);
        let mut replies: Vec<Value> = pipe.query_async(&mut manager.clone()).await?;
        let reply = replies
            .pop()
            .ok_or_else(|| unexpected("an empty reply to the append pipeline".into()))?;
        append_reply(reply)
    }

    /// One attempt of the append script: `Ok(None)` when applied, `Ok(Some((part, actual)))` on a
    /// conflict of part `part` (0-based).
    async fn try_append(&self, appends: &[LogAppend]) -> redis::RedisResult<Option<(usize, u64)>> {
        let inv = self.append_invocation(appends);
        let reply: Value = match &self.conn {
            Conn::Single { manager, .. } => inv.invoke_async(&mut manager.clone()).await?,
            Conn::Cluster { conn, .. } => inv.invoke_async(&mut conn.clone()).await?,
        };
        append_reply(reply)
    }

    /// After an append whose outcome is unknown: whether the logs hold exactly its frames at the
    /// expected positions (it was applied). The script is all or nothing, so the first part with
    /// frames decides.
    async fn append_landed(&self, appends: &[LogAppend]) -> redis::RedisResult<bool> {
        let Some(first) = appends.iter().find(|a| !a.frames.is_empty()) else {
            return Ok(false);
        };
        let got = self
            .scan_once(&first.log, first.expected_seq, first.frames.len())
            .await?;
        Ok(got.len() == first.frames.len()
            && got
                .iter()
                .zip(&first.frames)
                .enumerate()
                .all(|(i, ((seq, bytes), frame))| {
                    *seq == first.expected_seq + i as u64 && bytes == frame
                }))
    }

    /// One `XRANGE` of `log` from `from`, at most `limit` entries.
    async fn scan_once(
        &self,
        log: &str,
        from: u64,
        limit: usize,
    ) -> redis::RedisResult<Vec<(u64, Vec<u8>)>> {
        let mut cmd = redis::cmd("XRANGE");
        cmd.arg(self.stream_key(log))
            .arg(format!("{from}-0"))
            .arg("+")
            .arg("COUNT")
            .arg(limit.min(i64::MAX as usize));
        let entries: Vec<(String, Vec<Vec<u8>>)> = self.query(&cmd).await?;
        entries
            .into_iter()
            .map(|(id, mut fields)| {
                let seq = parse_entry_id(&id)?;
                // Fields come as [name, value]: the frame is the value of the only field.
                let frame = if fields.len() >= 2 {
                    fields.swap_remove(1)
                } else {
                    return Err(unexpected(format!("stream entry {id} has no frame field")));
                };
                Ok((seq, frame))
            })
            .collect()
    }

    /// A dedicated connection for one blocking read: an idle one, or a new one.
    async fn take_waiter(&self) -> redis::RedisResult<Waiter> {
        if let Some(w) = self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(w);
        }
        match &self.conn {
            Conn::Single { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.settings.timeout))
                    .set_response_timeout(None);
                Ok(Waiter::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Conn::Cluster { client, .. } => {
                Ok(Waiter::Cluster(client.get_async_connection().await?))
            }
        }
    }

    fn return_waiter(&self, waiter: Waiter) {
        let mut idle = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.settings.waiters {
            idle.push(waiter);
        }
    }

    /// `XREAD BLOCK` on a dedicated connection; returns when an entry `>= next_seq` exists or
    /// `timeout` has passed.
    async fn block_for(
        &self,
        log: &str,
        next_seq: u64,
        timeout: Duration,
    ) -> redis::RedisResult<()> {
        let mut waiter = self.take_waiter().await?;
        let block_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.stream_key(log))
            .arg(format!("{}-1", next_seq.saturating_sub(1)));
        // The server answers at the latest after `block_ms`; the guard only covers a lost answer.
        let guard = timeout + Duration::from_secs(2);
        let result = match &mut waiter {
            Waiter::Single(c) => tokio::time::timeout(guard, cmd.query_async::<Value>(c)).await,
            Waiter::Cluster(c) => tokio::time::timeout(guard, cmd.query_async::<Value>(c)).await,
        };
        match result {
            Ok(Ok(_)) => {
                self.return_waiter(waiter);
                Ok(())
            }
            // Drop the connection: a failed or abandoned blocking read may still be pending on it.
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(()),
        }
    }
}

/// Connects the shared connection.
async fn connect(parsed: &ParsedUrl, settings: &Settings) -> redis::RedisResult<Conn> {
    let certs = match &settings.tls_ca {
        Some(path) => Some(redis::TlsCertificates {
            client_tls: None,
            root_cert: Some(std::fs::read(path).map_err(|e| {
                RedisError::from((
                    redis::ErrorKind::InvalidClientConfig,
                    "cannot read the tls_ca file",
                    format!("{}: {e}", path.display()),
                ))
            })?),
        }),
        None => None,
    };
    if parsed.cluster {
        let mut builder = ClusterClientBuilder::new(parsed.driver_urls.clone())
            .connection_timeout(settings.timeout.min(Duration::from_secs(5)))
            .response_timeout(settings.timeout);
        if let Some(certs) = certs {
            builder = builder.certs(certs);
        }
        let client = builder.build()?;
        let conn = client.get_async_connection().await?;
        Ok(Conn::Cluster { client, conn })
    } else {
        let url = parsed.driver_urls.first().cloned().unwrap_or_default();
        let client = match certs {
            Some(certs) => Client::build_with_tls(url, certs)?,
            None => Client::open(url)?,
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(settings.timeout.min(Duration::from_secs(5))))
            .set_response_timeout(Some(settings.timeout))
            .set_number_of_retries(3)
            .set_max_delay(Duration::from_millis(500));
        let mut manager = client.get_connection_manager_with_config(config).await?;
        // Loaded now so that pipelined appends (EVALSHA) find it; reloaded on NOSCRIPT.
        Script::new(APPEND_LUA).load_async(&mut manager).await?;
        Ok(Conn::Single { client, manager })
    }
}

/// `SCAN`s one node for `pattern` until its cursor returns to 0; `send` runs one `SCAN` command.
async fn scan_node<F, Fut>(pattern: &[u8], mut send: F) -> redis::RedisResult<Vec<Vec<u8>>>
where
    F: FnMut(Cmd) -> Fut,
    Fut: Future<Output = redis::RedisResult<(u64, Vec<Vec<u8>>)>>,
{
    let mut cursor = 0u64;
    let mut keys = Vec::new();
    loop {
        let mut cmd = redis::cmd("SCAN");
        cmd.arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(SCAN_COUNT);
        let (next, batch) = send(cmd).await?;
        keys.extend(batch);
        if next == 0 {
            return Ok(keys);
        }
        cursor = next;
    }
}

/// One node of a Cluster as `CLUSTER NODES` lists it.
struct ClusterNode {
    host: String,
    port: u16,
    /// `master`, `slave`, `myself`, `fail`, `fail?`, `handshake`, `noaddr`, ...
    flags: Vec<String>,
}

impl ClusterNode {
    fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }
}

/// Every node of the Cluster (primaries and replicas), from `CLUSTER NODES` (on every Redis
/// version with Cluster, unlike `CLUSTER SHARDS`).
async fn cluster_nodes(conn: &ClusterConnection) -> redis::RedisResult<Vec<ClusterNode>> {
    let mut conn = conn.clone();
    let reply = conn
        .route_command(
            redis::cmd("CLUSTER").arg("NODES").clone(),
            RoutingInfo::SingleNode(SingleNodeRoutingInfo::RandomPrimary),
        )
        .await?;
    let text: String = FromRedisValue::from_redis_value(reply)?;
    Ok(parse_cluster_nodes(&text))
}

/// The nodes of a `CLUSTER NODES` reply: `<id> <ip:port@cport[,hostname]> <flags> ...` per line.
fn parse_cluster_nodes(text: &str) -> Vec<ClusterNode> {
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
            continue;
        };
        let addr = addr.split(['@', ',']).next().unwrap_or_default();
        let Some((host, port)) = addr.rsplit_once(':') else {
            continue;
        };
        let Ok(port) = port.parse() else {
            continue;
        };
        out.push(ClusterNode {
            host: host.to_owned(),
            port,
            flags: flags.split(',').map(str::to_owned).collect(),
        });
    }
    out
}

/// The address of every primary of the Cluster that is not marked failed (it cannot answer).
async fn primaries(conn: &ClusterConnection) -> redis::RedisResult<Vec<(String, u16)>> {
    let out: Vec<(String, u16)> = cluster_nodes(conn)
        .await?
        .into_iter()
        .filter(|n| n.has("master") && !n.has("fail"))
        .map(|n| (n.host, n.port))
        .collect();
    if out.is_empty() {
        return Err(unexpected(
            "CLUSTER NODES lists no reachable primary".into(),
        ));
    }
    Ok(out)
}

/// A connection to one server for compaction: the shared one of a single server, or a direct
/// one to a Cluster node (primary or replica, which the Cluster client does not route to).
enum NodeConn {
    Managed(ConnectionManager),
    Direct(MultiplexedConnection),
}

impl NodeConn {
    async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> redis::RedisResult<T> {
        match self {
            NodeConn::Managed(m) => cmd.query_async(m).await,
            NodeConn::Direct(c) => cmd.query_async(c).await,
        }
    }

    /// The `key:value` lines of `INFO section`.
    async fn info(&mut self, section: &str) -> redis::RedisResult<HashMap<String, String>> {
        let text: String = self.query(redis::cmd("INFO").arg(section)).await?;
        Ok(text
            .lines()
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned()))
            .collect())
    }
}

/// Whether `info` says none of `jobs` runs (a missing field counts as not running: older
/// servers lack some).
fn idle(info: &HashMap<String, String>, jobs: &[&str]) -> bool {
    jobs.iter()
        .all(|k| info.get(*k).is_none_or(|v| v.as_str() == "0"))
}

/// The `INFO persistence` fields that are 1 while a background job runs or waits to.
const BACKGROUND_JOBS: [&str; 3] = [
    "aof_rewrite_in_progress",
    "aof_rewrite_scheduled",
    "rdb_bgsave_in_progress",
];

/// The Redis Cluster hash slot of `key` (CRC16 of the hash tag, or of the key, mod 16384).
fn key_slot(key: &[u8]) -> u16 {
    let tag = match key.iter().position(|&b| b == b'{') {
        Some(open) => match key[open + 1..].iter().position(|&b| b == b'}') {
            Some(len) if len > 0 => &key[open + 1..open + 1 + len],
            _ => key,
        },
        None => key,
    };
    crc16_xmodem(tag) % 16384
}

/// CRC16/XMODEM, the checksum Redis Cluster hashes keys with.
fn crc16_xmodem(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &byte in data {
        crc ^= u16::from(byte) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The append script's reply: `None` when applied, else the conflicting part (0-based) and the
/// log's actual next sequence number.
fn append_reply(reply: Value) -> redis::RedisResult<Option<(usize, u64)>> {
    match reply {
        Value::Int(0) => Ok(None),
        other => {
            let (part, actual): (usize, u64) = FromRedisValue::from_redis_value(other)?;
            Ok(Some((part.saturating_sub(1), actual)))
        }
    }
}

/// The [`Error::Conflict`] of part `part` of `appends`.
fn conflict(appends: &[LogAppend], part: usize, actual: u64) -> Error {
    match appends.get(part).or(appends.first()) {
        Some(a) => Error::Conflict {
            log: a.log.clone(),
            expected: a.expected_seq,
            actual,
        },
        None => Error::InvalidInput("a conflict reported for an empty append".into()),
    }
}

/// Whether `e` says the server does not know the script (its script cache starts empty).
fn is_no_script(e: &RedisError) -> bool {
    e.code() == Some("NOSCRIPT")
}

/// The sequence number of stream entry id `<seq>-1`.
fn parse_entry_id(id: &str) -> redis::RedisResult<u64> {
    id.split_once('-')
        .and_then(|(ms, _)| ms.parse().ok())
        .ok_or_else(|| unexpected(format!("stream entry id {id:?} is not <seq>-1")))
}

/// A reply of a shape this backend never writes.
fn unexpected(what: String) -> RedisError {
    RedisError::from((
        redis::ErrorKind::UnexpectedReturnType,
        "unexpected reply",
        what,
    ))
}

/// Whether `e` may go away by itself (a restart, a failover, a resharding), so retrying helps.
fn is_transient(e: &RedisError) -> bool {
    !matches!(e.retry_method(), redis::RetryMethod::NoRetry) || e.is_timeout()
}

/// Whether the server may have executed the command that failed with `e` (the request may have
/// been sent before the connection broke).
fn is_ambiguous(e: &RedisError) -> bool {
    e.is_io_error() || e.is_timeout() || e.is_connection_dropped()
}

fn backend_error(context: String, e: RedisError) -> Error {
    Error::Backend {
        backend: NAME,
        context,
        source: Box::new(e),
    }
}

/// A Redis URL split into what the driver connects to and the options this backend reads.
struct ParsedUrl {
    cluster: bool,
    /// `rediss://` or `rediss+cluster://`.
    tls: bool,
    /// One URL per node (one for a single server), without the query options; may hold a
    /// password, so never shown.
    driver_urls: Vec<String>,
    /// The query options, in order.
    options: Vec<(String, String)>,
    /// A node's driver URL is `node_url.0 + "host:port" + node_url.1`; may hold a password.
    node_url: (String, String),
    /// The URL with any password masked.
    redacted: String,
}

impl ParsedUrl {
    fn parse(url: &RawUrl, cluster: bool) -> Result<Self> {
        let full = url.expose();
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.redacted(),
            reason,
        };
        let (scheme, rest) = full
            .split_once("://")
            .ok_or_else(|| invalid("missing scheme".into()))?;
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (location, query) = match rest.split_once('?') {
            Some((l, q)) => (l, q),
            None => (rest, ""),
        };
        let mut options = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            options.push((k.to_ascii_lowercase(), v.to_owned()));
        }
        let tls = scheme.to_ascii_lowercase().starts_with("rediss");
        let driver_scheme = if tls { "rediss" } else { "redis" };
        let fragment = fragment.map_or(String::new(), |f| format!("#{f}"));
        let driver_urls = if cluster {
            let (userinfo, hosts) = match location.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h),
                None => (String::new(), location),
            };
            let hosts = hosts.trim_end_matches('/');
            let urls: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{driver_scheme}://{userinfo}{h}{fragment}"))
                .collect();
            if urls.is_empty() {
                return Err(invalid("no Cluster node given".into()));
            }
            urls
        } else {
            vec![format!("{driver_scheme}://{location}{fragment}")]
        };
        let userinfo = location
            .rsplit_once('@')
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        let node_url = (format!("{driver_scheme}://{userinfo}"), fragment.clone());
        Ok(ParsedUrl {
            cluster,
            tls,
            driver_urls,
            options,
            node_url,
            redacted: redact(full),
        })
    }

    /// The settings: the URL's options, overridden by `options`.
    fn settings(&self, options: &ConnectOptions) -> Result<Settings> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: self.redacted.clone(),
            reason,
        };
        let mut s = Settings {
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: None,
            timeout: DEFAULT_TIMEOUT,
            shard: Shard::Store,
            waiters: DEFAULT_WAITERS,
            tls_ca: None,
        };
        for (k, v) in &self.options {
            let bad = |what: &str| invalid(format!("{k} must be {what}, got {v:?}"));
            match k.as_str() {
                "prefix" => {
                    let ok = !v.is_empty()
                        && v.len() <= 64
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                    if !ok {
                        return Err(bad("1 to 64 letters, digits, '_', '-' or '.'"));
                    }
                    s.prefix = v.clone();
                }
                "ttl" => s.ttl = Some(parse_duration(v).ok_or_else(|| bad("a duration > 0"))?),
                "timeout" => s.timeout = parse_duration(v).ok_or_else(|| bad("a duration > 0"))?,
                "shard" => {
                    s.shard = match v.to_ascii_lowercase().as_str() {
                        "store" => Shard::Store,
                        "execution" => Shard::Execution,
                        _ => return Err(bad("store or execution")),
                    }
                }
                "tls_ca" => {
                    if !self.tls {
                        return Err(invalid(
                            "tls_ca is for TLS URLs (rediss:// or rediss+cluster://)".into(),
                        ));
                    }
                    if v.is_empty() {
                        return Err(bad("the path of a PEM file of root certificates"));
                    }
                    s.tls_ca = Some(v.into());
                }
                "max_connections" => {
                    s.waiters = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("a number > 0"))?;
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option {k:?}; Redis URLs accept {ACCEPTED}"
                    )))
                }
            }
        }
        if let Some(t) = options.timeout {
            s.timeout = t;
        }
        if let Some(t) = options.ttl {
            s.ttl = Some(t);
        }
        if let Some(n) = options.max_connections {
            s.waiters = usize::try_from(n).unwrap_or(usize::MAX).max(1);
        }
        if s.timeout.is_zero() || s.ttl.is_some_and(|t| t < Duration::from_millis(1)) {
            return Err(invalid("timeout and ttl must be at least 1ms".into()));
        }
        Ok(s)
    }
}

/// A duration as [`retry::parse_duration`] reads it (`500ms`, `30s`, `5m`, `24h`, `2d`), or a bare
/// number of seconds (this backend's URLs always took one); `None` if malformed or zero.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let d = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(text.parse().ok()?)
    } else {
        retry::parse_duration(text).ok()?
    };
    (!d.is_zero()).then_some(d)
}

#[async_trait]
impl Backend for RedisBackend {
    fn name(&self) -> &'static str {
        NAME
    }

    async fn next_seq(&self, log: &str) -> Result<u64> {
        let mut cmd = redis::cmd("GET");
        cmd.arg(self.next_key(log));
        let next: Option<u64> = self
            .retrying(
                || format!("reading the next sequence number of log {log:?}"),
                || self.query(&cmd),
            )
            .await?;
        Ok(next.unwrap_or(1))
    }

    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        self.retrying(
            || format!("reading log {log:?} from sequence {from}"),
            || self.scan_once(log, from, limit),
        )
        .await
    }

    async fn list_logs(&self) -> Result<Vec<String>> {
        let (pattern, head, tail) = self.next_key_pattern();
        let keys = self
            .retrying(
                || "listing logs".into(),
                || self.scan_keys(pattern.as_bytes()),
            )
            .await?;
        Ok(keys
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .filter_map(|k| {
                k.strip_prefix(head.as_str())
                    .and_then(|k| k.strip_suffix(tail))
                    .map(str::to_owned)
            })
            .collect())
    }

    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        let mut inv = self.raise_script.prepare_invoke();
        inv.key(self.stream_key(log))
            .key(self.next_key(log))
            .arg(next_seq)
            .arg(self.ttl_ms());
        self.run_script(&inv, || {
            format!("raising the next sequence number of log {log:?}")
        })
        .await?;
        Ok(())
    }

    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        let mut cmd = redis::cmd("XTRIM");
        cmd.arg(self.stream_key(log))
            .arg("MINID")
            .arg(format!("{before}-0"));
        let _: Value = self
            .retrying(
                || format!("truncating log {log:?} before {before}"),
                || self.query(&cmd),
            )
            .await?;
        Ok(())
    }

    async fn put_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.set_blobs(&blobs, "NX", "storing").await
    }

    /// One pipeline of `GET`s (on a Cluster, split by node by the driver).
    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        if hashes.is_empty() {
            return Ok(Vec::new());
        }
        let cmds: Vec<Cmd> = hashes
            .iter()
            .map(|hash| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.blob_key(hash));
                cmd
            })
            .collect();
        self.retrying(
            || format!("reading {} blobs", hashes.len()),
            || self.query_many(&cmds),
        )
        .await
    }

    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        let cmds: Vec<Cmd> = hashes
            .iter()
            .map(|hash| {
                let mut cmd = redis::cmd("EXISTS");
                cmd.arg(self.blob_key(hash));
                cmd
            })
            .collect();
        let present: Vec<bool> = self
            .retrying(
                || format!("looking up {} blobs", hashes.len()),
                || self.query_many(&cmds),
            )
            .await?;
        Ok(hashes
            .iter()
            .zip(present)
            .filter(|(_, p)| !p)
            .map(|(h, _)| *h)
            .collect())
    }

    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        let prefix = self.blob_key_prefix();
        let mut pattern = prefix.clone();
        pattern.push(b'*');
        let keys = self
            .retrying(|| "listing blobs".into(), || self.scan_keys(&pattern))
            .await?;
        Ok(keys
            .iter()
            .filter_map(|k| k.strip_prefix(prefix.as_slice()))
            .filter_map(|h| BlobHash::try_from(h).ok())
            .collect())
    }

    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        let cmds: Vec<Cmd> = hashes
            .iter()
            .map(|hash| {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(self.blob_key(hash));
                cmd
            })
            .collect();
        let _: Vec<Value> = self
            .retrying(
                || format!("deleting {} blobs", hashes.len()),
                || self.query_many(&cmds),
            )
            .await?;
        Ok(())
    }

    /// Nothing to do: an acknowledged write is as durable as the server's `appendfsync` makes it.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// On one server, the blobs and the append go in one pipeline: one round trip and one
    /// fsync per save, blobs still ahead of the frames that reference them. On a Cluster the
    /// blobs live on other nodes, so they are put (and acknowledged) first, then the append.
    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()> {
        if blobs.is_empty() {
            if appends.is_empty() {
                return Ok(());
            }
            self.check_one_slot(&appends)?;
            return self.append_retrying(&appends, false).await;
        }
        self.check_one_slot(&appends)?;
        self.append_blobs_first(&appends, blobs).await
    }

    fn capabilities(&self) -> Capabilities<'_> {
        let mut caps = Capabilities::new();
        // On one server, blobs go in the append's pipeline with `SET NX`.
        caps.blobs_with_append = matches!(self.conn, Conn::Single { .. });
        caps.atomic_across_logs =
            !(matches!(self.conn, Conn::Cluster { .. }) && self.settings.shard == Shard::Execution);
        caps.rewrite = Some(self);
        caps.notify = Some(self);
        caps.maintain = Some(self);
        caps
    }
}

#[async_trait]
impl Rewrite for RedisBackend {
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        if frames.is_empty() {
            return Ok(());
        }
        let mut inv = self.rewrite_script.prepare_invoke();
        inv.key(self.stream_key(log));
        for (seq, bytes) in &frames {
            inv.arg(*seq).arg(bytes.as_slice());
        }
        self.run_script(&inv, || format!("rewriting frames of log {log:?}"))
            .await?;
        Ok(())
    }

    async fn rewrite_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.set_blobs(&blobs, "XX", "rewriting").await
    }
}

#[async_trait]
impl Notify for RedisBackend {
    async fn wait_for_append(&self, log: &str, next_seq: u64, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        match self.block_for(log, next_seq, timeout).await {
            Ok(()) => Ok(()),
            // The server is away (restarting, failing over): wait out the rest of the timeout
            // like a poll would, so the watcher neither spins nor fails on a blip.
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(timeout.saturating_sub(started.elapsed())).await;
                Ok(())
            }
            Err(e) => Err(backend_error(
                format!("waiting for log {log:?} on {}", self.url),
                e,
            )),
        }
    }
}

#[async_trait]
impl Maintain for RedisBackend {
    /// The server's `used_memory` (`INFO memory`), summed over a Cluster's primaries.
    async fn server_memory(&self) -> Result<Option<u64>> {
        used_memory(self).await.map(Some)
    }

    /// The sum of `MEMORY USAGE` over every key of this store (its logs and blobs).
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

/// Every setting a URL may carry, for tests of option handling.
#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, options: &ConnectOptions) -> Result<Settings> {
        let cluster = url.contains("+cluster");
        let raw = match crate::url::StoreUrl::parse(url)? {
            crate::url::StoreUrl::Redis(u) | crate::url::StoreUrl::RedisCluster(u) => u,
            other => panic!("not a redis url: {other:?}"),
        };
        ParsedUrl::parse(&raw, cluster)?.settings(options)
    }

    #[test]
    fn durations_take_the_documented_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("3w"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn options_come_from_the_url_and_the_builder_wins() {
        let s = settings(
            "redis://h:1/0?prefix=app&ttl=24h&timeout=5s&shard=execution",
            &ConnectOptions::default(),
        )
        .unwrap();
        assert_eq!(s.prefix, "app");
        assert_eq!(s.ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.shard, Shard::Execution);
        let o = ConnectOptions {
            ttl: Some(Duration::from_secs(7)),
            timeout: Some(Duration::from_secs(9)),
            ..ConnectOptions::default()
        };
        let s = settings("redis://h:1/0?ttl=24h&timeout=5s", &o).unwrap();
        assert_eq!(s.ttl, Some(Duration::from_secs(7)));
        assert_eq!(s.timeout, Duration::from_secs(9));
    }

    #[test]
    fn unknown_options_are_named_with_the_accepted_ones() {
        let e = settings(
            "redis://:hunter2@h:1/0?colour=red",
            &ConnectOptions::default(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{msg}");
        assert!(msg.contains("colour") && msg.contains("prefix="), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        for bad in [
            "ttl=soon",
            "timeout=0",
            "prefix=a:b",
            "shard=node",
            "prefix=",
        ] {
            let url = format!("redis+cluster://h:1,h:2?{bad}");
            assert!(
                matches!(
                    settings(&url, &ConnectOptions::default()),
                    Err(Error::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn cluster_urls_become_one_driver_url_per_node() {
        let raw =
            match crate::url::StoreUrl::parse("rediss+cluster://u:pw@a:1,b:2?prefix=x").unwrap() {
                crate::url::StoreUrl::RedisCluster(u) => u,
                other => panic!("{other:?}"),
            };
        let p = ParsedUrl::parse(&raw, true).unwrap();
        assert_eq!(
            p.driver_urls,
            vec!["rediss://u:pw@a:1", "rediss://u:pw@b:2"]
        );
        assert!(!p.redacted.contains("pw@"), "{}", p.redacted);
    }

    #[test]
    fn slots_follow_hash_tags() {
        // Reference values from CLUSTER KEYSLOT.
        assert_eq!(key_slot(b"foo"), 12182);
        assert_eq!(key_slot(b"{user1000}.following"), key_slot(b"user1000"));
        assert_eq!(key_slot(b"{}x"), key_slot(b"{}x"));
    }
}
