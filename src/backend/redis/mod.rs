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
//! | `P:r:<key>` | string | a derived record ([`SideTable`]: an execution's persisted projection), with the store's `ttl` |
//! | `{P:s}:z` | sorted set | the search index's keys ([`SearchTable`]), all at score 0, so ordered bytewise |
//! | `{P:s}:h` | hash | the search index's values, by key |
//!
//! The search index's two keys share the hash tag `{P:s}` in both Cluster layouts, so one Lua
//! script writes (or reads) both atomically; no log's key has that form with a `:z` or `:h`
//! ending, and `list_logs` only matches `:n` keys. They never expire: the store checks every
//! entry against the logs, and `ttl` would expire them apart from the logs anyway.
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
//! [`Notify::wait_for_append`](super::Notify::wait_for_append) is `XREAD BLOCK <timeout> STREAMS <stream> <next_seq - 1>-1` on a
//! connection of its own (never the shared one, which a blocking read would stall), taken from a
//! small pool of idle ones: a save by any process or machine wakes the watcher at once.
//!
//! # Size
//!
//! [`Maintain::stored_bytes`](super::Maintain::stored_bytes) is the sum of `MEMORY USAGE` over the store's keys (found with
//! `SCAN`), so it includes Redis's per-key overhead; [`used_memory`] reads the server's whole
//! `used_memory` (for benchmarks).
//!
//! # Compaction
//!
//! A deleted key stays in the append-only file (as the commands that wrote it) and in the RDB
//! snapshot until they are rewritten. [`Maintain::compact`](super::Maintain::compact) visits every server (each node of a
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
//!
//! # Files of this module
//!
//! This file holds the type, the key layout, the retry loop and the [`Backend`] and [`Rewrite`]
//! implementations; `options.rs` the URL and its options; `scripts.rs` the Lua scripts and the
//! append path that runs them; `topology.rs` one server versus a Cluster (connections, routing,
//! `SCAN` on every primary, slot checks); `compact.rs` [`Maintain`](super::Maintain) and
//! [`used_memory`]; `watch.rs` the blocking reads of [`Notify`](super::Notify).

use std::future::Future;
use std::sync::Mutex;
use std::time::Instant;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Client, Cmd, RedisError, Script, Value};

use self::options::{ParsedUrl, Settings, Shard};
use self::scripts::{
    APPEND_LUA, INDEX_SCAN_LUA, INDEX_SIZE_LUA, INDEX_WRITE_LUA, RAISE_LUA, REWRITE_LUA,
};
use self::topology::connect;
use super::retry;
use super::{
    prefix_end, Backend, Blob, BlobHash, Capabilities, ConnectOptions, LogAppend, Rewrite,
    SearchTable, SideTable,
};
use crate::error::{Error, Result};
use crate::url::RawUrl;

mod compact;
mod options;
mod scripts;
mod topology;
mod watch;

pub use self::compact::used_memory;

/// The backend's name in messages.
const NAME: &str = "redis";
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
    index_write_script: Script,
    index_scan_script: Script,
    index_size_script: Script,
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
            index_write_script: Script::new(INDEX_WRITE_LUA),
            index_scan_script: Script::new(INDEX_SCAN_LUA),
            index_size_script: Script::new(INDEX_SIZE_LUA),
            waiters: Mutex::new(Vec::new()),
            node_url: parsed.node_url.clone(),
        })
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
                    retry::note_retry();
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
        caps.side_table = Some(self);
        caps.search_table = Some(self);
        caps
    }
}

impl RedisBackend {
    /// The key of derived record `key` (a plain key, like a blob's: records spread over a
    /// Cluster's nodes).
    fn record_key(&self, key: &str) -> String {
        format!("{}:r:{key}", self.settings.prefix)
    }
}

/// Records are plain keys `<prefix>:r:<key>`, written with the store's `ttl` when it has one
/// (re-armed by every write), so an execution's record expires about when its log does.
#[async_trait]
impl SideTable for RedisBackend {
    async fn put_records(&self, records: Vec<(String, Vec<u8>)>) -> Result<()> {
        let ttl = self.ttl_ms();
        let cmds: Vec<Cmd> = records
            .iter()
            .map(|(key, value)| {
                let mut cmd = redis::cmd("SET");
                cmd.arg(self.record_key(key)).arg(value.as_slice());
                if ttl > 0 {
                    cmd.arg("PX").arg(ttl);
                }
                cmd
            })
            .collect();
        let _: Vec<Value> = self
            .retrying(
                || format!("writing {} derived records", records.len()),
                || self.query_many(&cmds),
            )
            .await?;
        Ok(())
    }

    async fn get_records(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.record_key(key));
                cmd
            })
            .collect();
        self.retrying(
            || format!("reading {} derived records", keys.len()),
            || self.query_many(&cmds),
        )
        .await
    }

    async fn scan_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let head = self.record_key("");
        let pattern = format!("{}*", self.record_key(&escape_glob(prefix)));
        let found = self
            .retrying(
                || "listing derived records".into(),
                || self.scan_keys(pattern.as_bytes()),
            )
            .await?;
        let keys: Vec<String> = found
            .into_iter()
            .filter_map(|k| String::from_utf8(k).ok())
            .filter_map(|k| k.strip_prefix(head.as_str()).map(str::to_owned))
            .filter(|k| k.starts_with(prefix))
            .collect();
        let values = self.get_records(&keys).await?;
        // A record that expired between the scan and the read is simply not there.
        Ok(keys
            .into_iter()
            .zip(values)
            .filter_map(|(k, v)| Some((k, v?)))
            .collect())
    }

    async fn delete_records(&self, keys: &[String]) -> Result<()> {
        let cmds: Vec<Cmd> = keys
            .iter()
            .map(|key| {
                let mut cmd = redis::cmd("DEL");
                cmd.arg(self.record_key(key));
                cmd
            })
            .collect();
        let _: Vec<Value> = self
            .retrying(
                || format!("deleting {} derived records", keys.len()),
                || self.query_many(&cmds),
            )
            .await?;
        Ok(())
    }

    /// `SCAN` walks every key of the database, blobs included, whatever the pattern: a
    /// pipeline of GETs by key is cheaper.
    fn gets_beat_scans(&self) -> bool {
        true
    }

    async fn log_tails(&self) -> Result<Vec<(String, u64)>> {
        let logs = self.list_logs().await?;
        let cmds: Vec<Cmd> = logs
            .iter()
            .map(|log| {
                let mut cmd = redis::cmd("GET");
                cmd.arg(self.next_key(log));
                cmd
            })
            .collect();
        let tails: Vec<Option<u64>> = self
            .retrying(
                || format!("reading the next sequence numbers of {} logs", logs.len()),
                || self.query_many(&cmds),
            )
            .await?;
        // A log that expired since the listing has no tail: it is gone, not at 1.
        Ok(logs
            .into_iter()
            .zip(tails)
            .filter_map(|(log, tail)| Some((log, tail?)))
            .collect())
    }
}

/// Keys of the search index fetched per `HMGET`.
const INDEX_GET_CHUNK: usize = 1000;

impl RedisBackend {
    /// The search index's sorted set of keys and hash of values: one hash tag, `{P:s}`, in both
    /// layouts, so that one script reaches both on a Cluster.
    pub(super) fn index_keys(&self) -> (String, String) {
        let p = &self.settings.prefix;
        (format!("{{{p}:s}}:z"), format!("{{{p}:s}}:h"))
    }
}

/// `ZRANGEBYLEX` bounds: `mark` (`[` inclusive, `(` exclusive) then the key's bytes.
fn lex_bound(mark: u8, key: &[u8]) -> Vec<u8> {
    let mut bound = Vec::with_capacity(1 + key.len());
    bound.push(mark);
    bound.extend_from_slice(key);
    bound
}

/// The index is a sorted set of its keys (all at score 0: members then sort bytewise, shorter
/// first on a tie) beside a hash of their values, both under the hash tag `{P:s}`; writes and
/// scans are Lua scripts, so each sees and leaves the two consistent. Entries never expire.
#[async_trait]
impl SearchTable for RedisBackend {
    async fn write_index(&self, put: Vec<(Vec<u8>, Vec<u8>)>, delete: Vec<Vec<u8>>) -> Result<()> {
        if put.is_empty() && delete.is_empty() {
            return Ok(());
        }
        let (zset, hash) = self.index_keys();
        let mut inv = self.index_write_script.prepare_invoke();
        inv.key(&zset).key(&hash).arg(delete.len());
        for key in &delete {
            inv.arg(key.as_slice());
        }
        for (key, value) in &put {
            inv.arg(key.as_slice()).arg(value.as_slice());
        }
        // Idempotent: a retry after an unheard success leaves the same entries.
        self.run_script(&inv, || {
            format!(
                "writing the search index ({} entries put, {} deleted)",
                put.len(),
                delete.len()
            )
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
        let min = match after {
            Some(a) if a >= prefix => lex_bound(b'(', a),
            _ => lex_bound(b'[', prefix),
        };
        let max = prefix_end(prefix).map_or_else(|| b"+".to_vec(), |end| lex_bound(b'(', &end));
        let (zset, hash) = self.index_keys();
        let mut inv = self.index_scan_script.prepare_invoke();
        inv.key(&zset)
            .key(&hash)
            .arg(min)
            .arg(max)
            .arg(limit.min(i64::MAX as usize));
        let reply = self
            .run_script(&inv, || "reading the search index".into())
            .await?;
        let flat: Vec<Option<Vec<u8>>> =
            redis::FromRedisValue::from_redis_value(reply).map_err(|e| {
                backend_error(
                    format!("reading the search index on {}", self.url),
                    e.into(),
                )
            })?;
        let mut out = Vec::with_capacity(flat.len() / 2);
        let mut items = flat.into_iter();
        while let (Some(key), Some(value)) = (items.next(), items.next()) {
            // Both are written by one script: a key without a value was not written by ckpt
            // (and the store checks every entry anyway): skipped.
            if let (Some(key), Some(value)) = (key, value) {
                out.push((key, value));
            }
        }
        Ok(out)
    }

    /// `HMGET`s of 1000 keys, pipelined.
    async fn get_index(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let (_, hash) = self.index_keys();
        let cmds: Vec<Cmd> = keys
            .chunks(INDEX_GET_CHUNK)
            .map(|chunk| {
                let mut cmd = redis::cmd("HMGET");
                cmd.arg(&hash);
                for key in chunk {
                    cmd.arg(key.as_slice());
                }
                cmd
            })
            .collect();
        let values: Vec<Vec<Option<Vec<u8>>>> = self
            .retrying(
                || format!("reading {} search index entries", keys.len()),
                || self.query_many(&cmds),
            )
            .await?;
        Ok(values.into_iter().flatten().collect())
    }

    async fn clear_index(&self) -> Result<()> {
        let (zset, hash) = self.index_keys();
        let mut cmd = redis::cmd("DEL");
        cmd.arg(&zset).arg(&hash);
        let _: Value = self
            .retrying(|| "clearing the search index".into(), || self.query(&cmd))
            .await?;
        Ok(())
    }

    /// Walks the hash with `HSCAN` in a script step by step (values stay on the server, and no
    /// step blocks the server for long); a write during the walk may be counted twice or not
    /// at all.
    async fn index_size(&self) -> Result<(u64, u64)> {
        let (_, hash) = self.index_keys();
        let (mut entries, mut bytes) = (0u64, 0u64);
        let mut cursor = "0".to_owned();
        loop {
            let mut inv = self.index_size_script.prepare_invoke();
            inv.key(&hash).arg(&cursor);
            let reply = self
                .run_script(&inv, || "measuring the search index".into())
                .await?;
            let (next, n, b): (String, u64, u64) = redis::FromRedisValue::from_redis_value(reply)
                .map_err(|e| {
                backend_error(
                    format!("measuring the search index on {}", self.url),
                    e.into(),
                )
            })?;
            entries += n;
            bytes += b;
            if next == "0" {
                return Ok((entries, bytes));
            }
            cursor = next;
        }
    }
}

/// `text` with the glob characters of a `SCAN MATCH` pattern escaped.
fn escape_glob(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
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
