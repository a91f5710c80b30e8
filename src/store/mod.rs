//! The projection layer: every operation a user asks for, derived from the backend primitives.
//!
//! A [`Store`] turns checkpoints into events appended to one log per execution, and answers load,
//! list, latest, history, fork and the rest by folding those logs (module `index`). Projections are
//! cached in memory, but the log is the truth: every answer first checks the log's tail, so a
//! reopened store, or a second `Store` on the same backend, sees the same thing.
//!
//! States are stored as snapshots or deltas ([`crate::codec::tree`]): a save records only what
//! changed since the previous save, and a snapshot is written when the deltas since the last one
//! outweigh it (or the chain grows long), so loading any version reads one snapshot and a bounded
//! number of small deltas.

mod builder;
mod compact;
mod contention;
mod encryption;
mod index;
pub(crate) mod reclaim;
mod retention;
mod transcode;
mod transfer;
mod verify;
mod watch;

use crate::backend::BackendExt;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use rmpv::Value;
use tokio::sync::{broadcast, OwnedMutexGuard, RwLock};

use crate::backend::memory::MemoryBackend;
use crate::backend::{Backend, BlobHash, LogAppend};
use crate::checkpoint::{validate_execution_id, Checkpoint, CheckpointHeader, CheckpointId};
use crate::codec::frame::{self, Body, ParentRef, SaveHeader};
use crate::codec::tree::{self, Lifted};
use crate::codec::{blob, value};
use crate::error::{Error, Result};
use index::{CachedState, Chain, ExecIndex, SaveEntry};

pub use crate::backend::CompactReport;
pub use builder::StoreBuilder;
pub use encryption::RekeyReport;
pub use retention::{ExecutionPlan, PruneReport, RetentionPolicy, RetentionTask};
pub use transfer::{ImportReport, SalvageReport, SalvagedExecution};
pub use verify::{DamagedBlob, ExecutionVerify, UnreadableVersion, VerifyReport};
pub use watch::Watch;

/// Longest run of deltas before a snapshot is forced; bounds the work of loading an old version.
const MAX_CHAIN: u32 = 100;
/// Deltas may add up to this many bytes before a snapshot, however small the snapshot.
const MIN_DELTA_BUDGET: u64 = 4096;
/// Blobs read per backend call when a state is rebuilt.
const FETCH_BATCH: usize = 256;
/// How often a conflicting append is retried before the conflict is returned.
const MAX_CONFLICT_RETRIES: u32 = 32;
/// A plain save whose appends keep conflicting (many writers on one execution) retries at least
/// [`MAX_CONFLICT_RETRIES`] times and for at least this long before it gives up.
const CONFLICT_PATIENCE: Duration = Duration::from_secs(10);
/// How often a save is prepared again because a gc elsewhere began before it landed; each time
/// it first waits for that gc to end, so only back-to-back gc runs can use these up.
const MAX_FENCE_RETRIES: u32 = 1000;
/// Executions whose projection (and newest state) a store keeps in memory; beyond this, idle
/// ones are dropped and rebuilt from their log when next used.
const MAX_CACHED_EXECUTIONS: usize = 1024;
/// A save lifting at most this many blobs, of at most [`BLIND_PUT_BYTES`] in all, sends them
/// without asking which the backend has, where the backend puts them in the append's own round
/// trip ([`crate::backend::Capabilities::blobs_with_append`]); a snapshot's many blobs are still asked about.
const BLIND_PUT_BLOBS: usize = 8;
/// See [`BLIND_PUT_BLOBS`].
const BLIND_PUT_BYTES: usize = 64 << 10;
/// Frames read per backend scan.
const SCAN_PAGE: usize = 1024;
/// Decoded blobs kept in memory (content-addressed, so never stale).
const BLOB_CACHE_BYTES: usize = 64 << 20;

/// A filter for [`Store::history`]: newest first, optionally before a version, limited, and
/// restricted to checkpoints whose metadata holds given values.
///
/// ```
/// use ckpt::HistoryQuery;
/// let q = HistoryQuery::default().before(100).limit(20).metadata("source", "loop");
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistoryQuery {
    before: Option<u64>,
    limit: Option<usize>,
    metadata: Vec<(String, serde_json::Value)>,
    node: Option<String>,
}

impl HistoryQuery {
    /// Only versions strictly below `version`.
    pub fn before(mut self, version: u64) -> Self {
        self.before = Some(version);
        self
    }

    /// At most `n` headers.
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n);
        self
    }

    /// Only checkpoints whose metadata has `key` equal to `value` (repeatable: all must hold).
    pub fn metadata(mut self, key: impl Into<String>, value: impl Into<serde_json::Value>) -> Self {
        self.metadata.push((key.into(), value.into()));
        self
    }

    /// Only checkpoints saved by node `name`.
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.node = Some(name.into());
        self
    }

    fn matches(&self, version: u64, header: &SaveHeader) -> bool {
        self.before.is_none_or(|b| version < b)
            && self.node.as_ref().is_none_or(|n| *n == header.node)
            && self
                .metadata
                .iter()
                .all(|(k, v)| header.metadata.get(k) == Some(v))
    }
}

/// One execution, as [`Store::executions`] lists it.
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionSummary {
    /// The execution id.
    pub execution_id: String,
    /// Live checkpoints.
    pub checkpoints: usize,
    /// Version of the newest live checkpoint.
    pub latest_version: u64,
    /// Node of the newest live checkpoint.
    pub latest_node: String,
    /// When the newest live checkpoint was saved.
    pub last_timestamp: SystemTime,
    /// Bytes of this execution's frames in the log (blobs are shared, so not counted).
    pub log_bytes: u64,
    /// Frames of this execution's log that failed verification, by sequence number (empty for a
    /// healthy execution). The counts and the latest above describe only what can be read.
    pub damaged_frames: Vec<u64>,
    /// Live versions whose state cannot be rebuilt because their delta chain runs through a
    /// damaged frame (they fail to load with [`Error::Corrupt`]).
    pub unreadable_versions: Vec<u64>,
}

impl ExecutionSummary {
    /// Whether any frame of the execution failed verification.
    pub fn is_damaged(&self) -> bool {
        !self.damaged_frames.is_empty()
    }
}

/// What is damaged in one execution, as [`Store::damage`] reports it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionDamage {
    /// Frames that failed verification: sequence number and the check that failed.
    pub frames: Vec<(u64, String)>,
    /// Live versions whose delta chain needs a damaged frame: version and the frame it needs.
    pub unreadable: Vec<(u64, u64)>,
}

impl ExecutionDamage {
    /// Whether nothing is damaged.
    pub fn is_empty(&self) -> bool {
        self.frames.is_empty() && self.unreadable.is_empty()
    }
}

/// What [`Store::gc`] reclaimed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GcReport {
    /// Log frames removed (deleted and cleared checkpoints no live checkpoint depends on).
    pub frames_removed: u64,
    /// Blobs removed because no remaining frame references them.
    pub blobs_removed: u64,
    /// Blobs kept.
    pub blobs_kept: u64,
}

/// Bytes this store handed to its backend since it was opened.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Frames appended.
    pub frames: u64,
    /// Bytes of those frames.
    pub frame_bytes: u64,
    /// Blobs put (only those the store did not know to exist).
    pub blobs: u64,
    /// Bytes of those blobs, as stored (compressed).
    pub blob_bytes: u64,
}

/// The seed interface: what a runtime needs to checkpoint and resume, as a trait object
/// (`Arc<dyn CheckpointStore>`). [`Store`] implements it.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Saves a checkpoint; returns it as stored (with id, version, timestamp and parent).
    async fn save(&self, checkpoint: Checkpoint) -> Result<Checkpoint>;
    /// Loads one checkpoint, or [`Error::NotFound`].
    async fn load(&self, id: &CheckpointId) -> Result<Checkpoint>;
    /// Every live checkpoint of an execution, oldest first.
    async fn list(&self, execution_id: &str) -> Result<Vec<Checkpoint>>;
    /// Deletes one checkpoint, or [`Error::NotFound`].
    async fn delete(&self, id: &CheckpointId) -> Result<()>;
    /// Removes every checkpoint of an execution.
    async fn clear(&self, execution_id: &str) -> Result<()>;
    /// The newest live checkpoint of an execution.
    async fn latest(&self, execution_id: &str) -> Result<Option<Checkpoint>> {
        Ok(self.list(execution_id).await?.pop())
    }
}

/// A checkpoint store on any backend. Cheap to clone: clones share caches and the backend.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), ckpt::Error> {
/// use ckpt::{Checkpoint, HistoryQuery, Store};
///
/// let store = Store::open("memory://").await?;
/// let mut ids = Vec::new();
/// for step in 1..=3 {
///     let state = serde_json::json!({ "messages": vec!["hi"; step], "step": step });
///     let cp = Checkpoint::new("exec-1", "chat", &state)?.with_metadata("step", step);
///     ids.push(store.save(cp).await?.id);
/// }
/// let latest = store.latest("exec-1").await?.expect("saved above");
/// assert_eq!(latest.state_json()?["step"], 3);
/// assert_eq!(latest.parent, Some(ids[1].clone()));
///
/// let old = store.load(&ids[0]).await?;
/// assert_eq!(old.state_json()?["messages"].as_array().map(Vec::len), Some(1));
///
/// let history = store.history("exec-1", HistoryQuery::default().limit(2)).await?;
/// assert_eq!(history.iter().map(|h| h.version).collect::<Vec<_>>(), [ids[2].version(), ids[1].version()]);
///
/// let fork = store.fork(&ids[0], "exec-2").await?;
/// assert_eq!(fork.parent, Some(ids[0].clone()));
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    backend: Arc<dyn Backend>,
    executions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ExecIndex>>>>,
    blob_cache: Mutex<BlobCache>,
    /// Saves hold it shared from their first blob put to their append; gc holds it exclusively,
    /// so gc never sweeps a blob whose event is still on its way. Shared by every store of this
    /// process on the same backend.
    gc_lock: Arc<RwLock<()>>,
    /// How this process's writers share logs (see `contention`); shared like `gc_lock`.
    contention: Arc<contention::Contention>,
    /// The gc log's next sequence number as last read while no gc ran; 0 when unknown (see
    /// `reclaim`).
    gc_next: AtomicU64,
    /// The keys the store was opened with (the first writes).
    keys: Vec<crate::crypto::Key>,
    /// How the store seals, found on first use (see `encryption`).
    crypto: tokio::sync::OnceCell<encryption::Crypto>,
    saved: broadcast::Sender<(Arc<str>, u64)>,
    /// Per execution, the log tail this store last saw (for [`Store::watch`], which must start
    /// where the store is without waiting for the backend).
    known_tails: Mutex<HashMap<Arc<str>, u64>>,
    stats: Stats,
}

#[derive(Default)]
struct Stats {
    frames: AtomicU64,
    frame_bytes: AtomicU64,
    blobs: AtomicU64,
    blob_bytes: AtomicU64,
}

/// Decoded leaves by address, bounded in bytes (emptied when full: cheap, and good enough for
/// the access pattern of replaying one execution at a time).
#[derive(Default)]
struct BlobCache {
    values: HashMap<BlobHash, Value>,
    bytes: usize,
}

impl BlobCache {
    fn insert(&mut self, hash: BlobHash, leaf: Value) {
        let len = leaf_bytes(&leaf);
        if self.bytes + len > BLOB_CACHE_BYTES {
            *self = BlobCache::default();
        }
        if self.values.insert(hash, leaf).is_none() {
            self.bytes += len;
        }
    }
}

fn leaf_bytes(leaf: &Value) -> usize {
    match leaf {
        Value::String(s) => s.as_bytes().len(),
        Value::Binary(b) => b.len(),
        _ => 16,
    }
}

/// A checkpoint waiting to be appended, with how it must be stored.
struct Pending {
    checkpoint: Checkpoint,
    parent: Option<ParentRef>,
    force_snapshot: bool,
    /// The time to record instead of now (a salvaged checkpoint keeps its own).
    timestamp_us: Option<u64>,
}

/// What a precondition on a save expects the execution's latest version to be.
#[derive(Clone, Copy)]
enum Expect {
    Any,
    Latest(Option<u64>),
}

/// An event that marks checkpoints gone.
#[derive(Clone, Copy)]
enum Marker {
    Delete(u64),
    Clear,
    /// Clear, but only while `version` is still the latest live checkpoint.
    ClearIfLatest(u64),
}

/// One execution's part of an append in flight.
struct Prepared {
    append: LogAppend,
    /// Per save: header, body length, frame length, the checkpoint as stored.
    saves: Vec<(SaveHeader, u64, u64, Checkpoint)>,
    newest_state: Option<CachedState>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("backend", &self.inner.backend)
            .finish()
    }
}

impl Store {
    /// Opens the store a URL names: `memory://`, `sled://PATH` (options: `?sync=false`), or a
    /// bare directory path (sled). See [`crate::url`].
    pub async fn open(url: &str) -> Result<Store> {
        Store::builder(url).open().await
    }

    /// A [`StoreBuilder`] for `url`: connection settings (pool sizes, timeouts, TTL) in code.
    pub fn builder(url: &str) -> StoreBuilder {
        StoreBuilder::new(url)
    }

    /// A store in memory: for tests and ephemeral runs.
    pub fn memory() -> Store {
        Store::with_backend(Arc::new(MemoryBackend::new()))
    }

    /// A store on a backend. Several stores may share one backend; each sees the others' writes.
    pub fn with_backend(backend: Arc<dyn Backend>) -> Store {
        Store::with_backend_and_keys(backend, Vec::new())
    }

    /// A new store on `backend` with this store's keys (and nothing else of it: no cache, no
    /// lock), as another process opening the same storage would be.
    pub fn with_same_keys(&self, backend: Arc<dyn Backend>) -> Store {
        Store::with_backend_and_keys(backend, self.inner.keys.clone())
    }

    /// A store on a backend, sealing with `keys[0]` and opening with any of `keys` (see
    /// [`crate::crypto`]); with no keys, [`Store::with_backend`].
    pub fn with_backend_and_keys(
        backend: Arc<dyn Backend>,
        keys: Vec<crate::crypto::Key>,
    ) -> Store {
        let (saved, _) = broadcast::channel(1024);
        Store {
            inner: Arc::new(Inner {
                gc_lock: shared_gc_lock(&backend),
                contention: contention::Contention::of(&backend),
                gc_next: AtomicU64::new(0),
                keys,
                crypto: tokio::sync::OnceCell::new(),
                backend,
                executions: Mutex::new(HashMap::new()),
                blob_cache: Mutex::new(BlobCache::default()),
                saved,
                known_tails: Mutex::new(HashMap::new()),
                stats: Stats::default(),
            }),
        }
    }

    /// Damage the backend recorded in its own files (none when it cannot record any).
    pub async fn recorded_damage(&self) -> Result<Vec<crate::backend::RecordedDamage>> {
        match self.inner.backend.capabilities().inspect {
            Some(inspect) => inspect.recorded_damage().await,
            None => Ok(Vec::new()),
        }
    }

    /// Bytes the backend occupies on its medium, when it can tell.
    pub async fn stored_bytes(&self) -> Result<Option<u64>> {
        match self.inner.backend.capabilities().maintain {
            Some(maintain) => maintain.stored_bytes().await,
            None => Ok(None),
        }
    }

    /// Memory the backend's server uses, when it keeps everything in memory (Redis); `None`
    /// for the others.
    pub async fn server_memory(&self) -> Result<Option<u64>> {
        match self.inner.backend.capabilities().maintain {
            Some(maintain) => maintain.server_memory().await,
            None => Ok(None),
        }
    }

    /// The backend this store writes to.
    pub fn backend(&self) -> &Arc<dyn Backend> {
        &self.inner.backend
    }

    /// What this store has written so far.
    pub fn write_stats(&self) -> WriteStats {
        let s = &self.inner.stats;
        WriteStats {
            frames: s.frames.load(Ordering::Relaxed),
            frame_bytes: s.frame_bytes.load(Ordering::Relaxed),
            blobs: s.blobs.load(Ordering::Relaxed),
            blob_bytes: s.blob_bytes.load(Ordering::Relaxed),
        }
    }

    /// Saves a checkpoint and returns it as stored: with its id, version, timestamp and parent
    /// (the execution's previous live checkpoint). Durable when it returns (on a durable backend).
    ///
    /// A save that races another writer of the same execution is retried on top of it, so both
    /// are kept; use [`Store::save_after`] to fail instead.
    pub async fn save(&self, checkpoint: Checkpoint) -> Result<Checkpoint> {
        let mut saved = self
            .save_pending(vec![Pending::plain(checkpoint)], Expect::Any)
            .await?;
        saved
            .pop()
            .ok_or_else(|| Error::InvalidInput("nothing to save".into()))
    }

    /// Saves a checkpoint only if the execution's newest live checkpoint is still `parent`
    /// (`None`: the execution has none). Otherwise nothing is written and the result is
    /// [`Error::Conflict`]: optimistic concurrency for writers that must not interleave.
    pub async fn save_after(
        &self,
        checkpoint: Checkpoint,
        parent: Option<&CheckpointId>,
    ) -> Result<Checkpoint> {
        if let Some(p) = parent {
            if p.execution_id() != checkpoint.execution_id {
                return Err(Error::InvalidInput(format!(
                    "save_after: parent {p} is not in execution {:?}",
                    checkpoint.execution_id
                )));
            }
        }
        let expect = Expect::Latest(parent.map(CheckpointId::version));
        let mut saved = self
            .save_pending(vec![Pending::plain(checkpoint)], expect)
            .await?;
        saved
            .pop()
            .ok_or_else(|| Error::InvalidInput("nothing to save".into()))
    }

    /// Saves several checkpoints (of one or more executions) atomically: after an error, none of
    /// them is stored. Returned in the order given.
    pub async fn save_batch(&self, checkpoints: Vec<Checkpoint>) -> Result<Vec<Checkpoint>> {
        self.save_pending(
            checkpoints.into_iter().map(Pending::plain).collect(),
            Expect::Any,
        )
        .await
    }

    /// Loads one checkpoint with its state. [`Error::NotFound`] if it never existed, was
    /// deleted, or its execution was cleared.
    pub async fn load(&self, id: &CheckpointId) -> Result<Checkpoint> {
        self.at_version(id.execution_id(), id.version()).await
    }

    /// The checkpoint of `execution_id` at `version`.
    pub async fn at_version(&self, execution_id: &str, version: u64) -> Result<Checkpoint> {
        validate_execution_id(execution_id)?;
        self.read_consistent(|| self.at_version_once(execution_id, version))
            .await
    }

    async fn at_version_once(&self, execution_id: &str, version: u64) -> Result<Checkpoint> {
        let mut idx = self.index(execution_id).await?;
        if let Some(reason) = idx.damaged.get(&version) {
            return Err(damage_error(
                &idx,
                version,
                format!("checkpoint {execution_id}@{version}"),
                format!(
                    "its frame (execution {execution_id:?} seq {version}) is damaged: {reason}"
                ),
            ));
        }
        let Some(entry) = idx.live_entry(version).cloned() else {
            drop(idx);
            return Err(self.lost_or_not_found(execution_id, version).await);
        };
        if let Some(d) = idx.unreadable_because(version) {
            if entry.chain.needs.is_none() {
                return Err(maybe_deleted(&idx, version, d));
            }
        }
        let state = self.state_of(&mut idx, version).await?.logical;
        Ok(self.checkpoint(&idx.log, version, &entry, state))
    }

    /// The error for a version the log does not hold: [`Error::Corrupt`] when the backend
    /// recorded it as lost (a rollback of its files), else [`Error::NotFound`].
    async fn lost_or_not_found(&self, execution_id: &str, version: u64) -> Error {
        let not_found = Error::not_found(format!("checkpoint {execution_id}@{version}"));
        let Ok(recorded) = self.recorded_damage().await else {
            return not_found;
        };
        recorded
            .into_iter()
            .find(|d| {
                d.log.as_deref() == Some(execution_id)
                    && d.lost
                        .is_some_and(|(from, to)| (from..to).contains(&version))
            })
            .map_or(not_found, |d| {
                Error::corrupt(format!("checkpoint {execution_id}@{version}"), d.detail)
            })
    }

    /// The newest live checkpoint of an execution, if any.
    pub async fn latest(&self, execution_id: &str) -> Result<Option<Checkpoint>> {
        validate_execution_id(execution_id)?;
        self.read_consistent(|| self.latest_once(execution_id))
            .await
    }

    async fn latest_once(&self, execution_id: &str) -> Result<Option<Checkpoint>> {
        let mut idx = self.index(execution_id).await?;
        let latest = idx.latest_live();
        // A damaged frame after the newest live save may have been a newer save: answering with
        // an older one would silently roll the execution back.
        if let Some((seq, reason)) = idx.live_damage().next_back() {
            if latest.is_none_or(|v| seq > v) {
                return Err(damage_error(
                    &idx,
                    seq,
                    format!("execution {execution_id:?}"),
                    format!(
                        "its newest frame (seq {seq}) is damaged ({reason}), so its latest \
                         checkpoint cannot be told; {}",
                        readable_hint(&idx)
                    ),
                ));
            }
        }
        let Some(version) = latest else {
            return Ok(None);
        };
        let entry = idx.saves[&version].clone();
        let state = self.state_of(&mut idx, version).await?.logical;
        Ok(Some(self.checkpoint(&idx.log, version, &entry, state)))
    }

    /// Every live checkpoint of an execution with its state, oldest first (empty if none).
    pub async fn list(&self, execution_id: &str) -> Result<Vec<Checkpoint>> {
        validate_execution_id(execution_id)?;
        self.read_consistent(|| self.list_once(execution_id)).await
    }

    async fn list_once(&self, execution_id: &str) -> Result<Vec<Checkpoint>> {
        let idx = self.index(execution_id).await?;
        // A damaged frame may have been a live save: a list without it would be silently short.
        let damaged: Vec<u64> = idx.live_damage().map(|(s, _)| s).collect();
        if let Some((seq, reason)) = idx.live_damage().next() {
            return Err(damage_error(
                &idx,
                seq,
                format!("execution {execution_id:?}"),
                format!(
                    "frame(s) seq {} are damaged (seq {seq}: {reason}), so not every live \
                     checkpoint can be listed; {}",
                    seq_list(&damaged),
                    readable_hint(&idx)
                ),
            ));
        }
        let Some((first, _)) = idx.live().next() else {
            return Ok(Vec::new());
        };
        let start = idx.saves[&first].chain.start;
        let frames = self.scan_range(&idx.log, start, idx.next_seq).await?;
        let mut state: Option<Value> = None;
        let mut applied = None;
        let mut out = Vec::with_capacity(idx.live_count);
        for (seq, bytes) in &frames {
            let Some(entry) = idx.saves.get(seq) else {
                continue;
            };
            let body = self.decode_body(&idx.log, *seq, bytes)?;
            check_base(&idx.log, *seq, &body, applied)?;
            state = Some(self.apply_body(&idx.log, *seq, state, body)?);
            applied = Some(*seq);
            if !entry.deleted {
                if let Some(s) = &state {
                    let logical = Arc::new(self.resolve(&idx.log, *seq, s).await?);
                    out.push(self.checkpoint(&idx.log, *seq, entry, logical));
                }
            }
        }
        Ok(out)
    }

    /// Headers of live checkpoints, newest first, filtered by `query`. No state is read, so this
    /// is fast on long executions.
    ///
    /// Only readable versions are listed: in an execution with damaged frames, versions whose
    /// state needs one are left out ([`Store::damage`] lists them and the damaged frames).
    pub async fn history(
        &self,
        execution_id: &str,
        query: HistoryQuery,
    ) -> Result<Vec<CheckpointHeader>> {
        validate_execution_id(execution_id)?;
        let idx = self.index(execution_id).await?;
        Ok(idx
            .readable()
            .rev()
            .filter(|(v, e)| query.matches(*v, &e.header))
            .take(query.limit.unwrap_or(usize::MAX))
            .map(|(v, e)| self.header(&idx.log, v, e))
            .collect())
    }

    /// Deletes one checkpoint (a tombstone in the log); the others are untouched.
    pub async fn delete(&self, id: &CheckpointId) -> Result<()> {
        self.append_marker(id.execution_id(), Marker::Delete(id.version()))
            .await
            .map(drop)
    }

    /// Removes every checkpoint of an execution from every projection. Versions are never
    /// reused: a later save continues above the cleared ones.
    pub async fn clear(&self, execution_id: &str) -> Result<()> {
        validate_execution_id(execution_id)?;
        self.append_marker(execution_id, Marker::Clear)
            .await
            .map(drop)
    }

    /// Appends a delete or clear event on top of the execution's current projection, retrying
    /// when another writer appended first. Returns whether an event was appended.
    async fn append_marker(&self, exec: &str, marker: Marker) -> Result<bool> {
        let crypto = self.crypto().await?;
        crypto.check_writable()?;
        let codec = crypto.codec();
        let handle = self.handle(exec);
        let mut idx = handle.lock().await;
        for attempt in 0..MAX_CONFLICT_RETRIES {
            self.refresh(&mut idx).await?;
            let seq = idx.next_seq;
            let frame = match marker {
                Marker::Delete(version) if idx.live_entry(version).is_none() => {
                    return Err(Error::not_found(format!("checkpoint {exec}@{version}")));
                }
                Marker::Delete(version) => codec.frames.encode_delete(exec, seq, version)?,
                // Nothing to clear: no event.
                Marker::Clear if idx.saves.is_empty() => return Ok(false),
                Marker::ClearIfLatest(version) if idx.latest_live() != Some(version) => {
                    return Ok(false)
                }
                Marker::Clear | Marker::ClearIfLatest(_) => codec.frames.encode_clear(exec, seq)?,
            };
            match self.append_one(exec, seq, frame).await {
                Ok(()) => {
                    match marker {
                        Marker::Delete(version) => idx.apply_delete(version),
                        Marker::Clear | Marker::ClearIfLatest(_) => idx.apply_clear(seq),
                    }
                    idx.next_seq = seq + 1;
                    self.note_tail(&idx);
                    return Ok(true);
                }
                Err(Error::Conflict { .. }) => backoff(attempt).await,
                Err(e) => return Err(e),
            }
        }
        Err(self.gave_up(exec))
    }

    /// Starts execution `new_execution` from a copy of checkpoint `id` (its state, node and
    /// metadata); the copy's parent is `id`. `new_execution` must have no live checkpoints.
    pub async fn fork(&self, id: &CheckpointId, new_execution: &str) -> Result<Checkpoint> {
        validate_execution_id(new_execution)?;
        if new_execution == id.execution_id() {
            return Err(Error::InvalidInput(format!(
                "cannot fork {id} into its own execution; name a new execution id"
            )));
        }
        let source = self.load(id).await?;
        let copy = Checkpoint {
            id: CheckpointId::new_unchecked(new_execution.into(), 0),
            execution_id: new_execution.to_owned(),
            version: 0,
            parent: None,
            ..source
        };
        let pending = Pending {
            checkpoint: copy,
            parent: Some(ParentRef {
                execution: Some(id.execution_id().to_owned()),
                version: id.version(),
            }),
            force_snapshot: true,
            timestamp_us: None,
        };
        let mut saved = self
            .save_pending(vec![pending], Expect::Latest(None))
            .await
            .map_err(|e| match e {
                Error::Conflict { .. } => Error::InvalidInput(format!(
                "cannot fork {id} into {new_execution:?}: that execution already has checkpoints"
            )),
                other => other,
            })?;
        saved
            .pop()
            .ok_or_else(|| Error::InvalidInput("nothing to save".into()))
    }

    /// Every execution with at least one live checkpoint, or with damaged frames, by id.
    ///
    /// A damaged execution is listed with what can be read (its readable live checkpoints and
    /// the newest of them; version 0, no node and the Unix epoch when none is readable) and
    /// marked with its damaged frames and unreadable versions; the others are untouched by it.
    pub async fn executions(&self) -> Result<Vec<ExecutionSummary>> {
        let mut logs = self.execution_logs().await?;
        logs.sort();
        let mut out = Vec::new();
        for log in logs {
            let idx = self.index(&log).await?;
            let damaged_frames: Vec<u64> = idx.damaged.keys().copied().collect();
            let unreadable_versions: Vec<u64> = idx
                .live()
                .filter(|(v, _)| idx.unreadable_because(*v).is_some())
                .map(|(v, _)| v)
                .collect();
            let latest = idx.readable().next_back();
            if latest.is_none() && damaged_frames.is_empty() && unreadable_versions.is_empty() {
                continue;
            }
            let (latest_version, latest_node, last_timestamp) = match latest {
                Some((v, e)) => (v, e.header.node.clone(), from_micros(e.header.timestamp_us)),
                None => (0, String::new(), UNIX_EPOCH),
            };
            out.push(ExecutionSummary {
                execution_id: log.clone(),
                checkpoints: idx.readable().count(),
                latest_version,
                latest_node,
                last_timestamp,
                log_bytes: idx.saves.values().map(|e| e.frame_len).sum(),
                damaged_frames,
                unreadable_versions,
            });
        }
        Ok(out)
    }

    /// The damaged frames of an execution and the live versions that cannot be read because of
    /// them (empty when the execution is healthy, or unknown).
    pub async fn damage(&self, execution_id: &str) -> Result<ExecutionDamage> {
        validate_execution_id(execution_id)?;
        let idx = self.index(execution_id).await?;
        Ok(ExecutionDamage {
            frames: idx.damaged.iter().map(|(s, r)| (*s, r.clone())).collect(),
            unreadable: idx
                .live()
                .filter_map(|(v, _)| idx.unreadable_because(v).map(|d| (v, d)))
                .collect(),
        })
    }

    /// Every execution that has a log in the backend, live checkpoints or not, in no particular
    /// order (the backend's logs, less the store's own).
    pub async fn execution_logs(&self) -> Result<Vec<String>> {
        let mut logs = self.inner.backend.list_logs().await?;
        logs.retain(|log| !reclaim::is_reserved_log(log));
        Ok(logs)
    }

    /// A stream of the checkpoints saved to `execution_id` from now on, by this store or any
    /// other writer of the same backend (this store's saves wake it at once, other writers' within
    /// 50 ms). "Now" is the log tail as this store last saw it, or as the backend reports it at
    /// this call; a backend that cannot answer without waiting (a network server) is asked at the
    /// stream's first poll instead. Ends only when dropped.
    pub fn watch(&self, execution_id: &str) -> Watch {
        Watch::new(self.clone(), execution_id, Duration::from_millis(50))
    }

    /// Reclaims space: removes log frames of cleared and deleted checkpoints that no live
    /// checkpoint's state depends on, and every blob no remaining frame references. Never
    /// removes anything a live checkpoint needs. Safe while other tasks, processes and machines
    /// save: saves of this process wait while it runs, and saves elsewhere that raced it are
    /// fenced off and redone (see the `reclaim` module; on Redis Cluster, repaired after the
    /// fact). Returns [`Error::Busy`] while another gc runs.
    pub async fn gc(&self) -> Result<GcReport> {
        let _exclusive = self.inner.gc_lock.write().await;
        let started = std::time::Instant::now();
        let begin = self.begin_gc(reclaim::DEFAULT_LEASE).await?;
        let result = self.collect_garbage(started, reclaim::DEFAULT_LEASE).await;
        let ended = self.end_gc(begin + 1).await;
        let report = result?;
        ended?;
        Ok(report)
    }

    /// A gc or rekey ran since `idx`'s stored form was cached. gc never deletes a blob the
    /// newest save's chain references, but a rekey moves every blob: keep the cache (stamped
    /// `epoch`) if the blobs it names are all still stored, else drop it to be rebuilt from the
    /// log. One lookup, where a rebuild would read the chain again after every gc.
    async fn revalidate_stored_state(&self, idx: &mut ExecIndex, epoch: u64) -> Result<()> {
        let Some(cached) = &idx.newest_state else {
            return Ok(());
        };
        let mut refs = HashSet::new();
        tree::collect_refs(&cached.stored, &mut refs);
        let hashes: Vec<BlobHash> = refs.iter().map(|r| r.hash()).collect();
        if hashes.is_empty() || self.inner.backend.missing_blobs(&hashes).await?.is_empty() {
            idx.stored_epoch = epoch;
        } else {
            idx.newest_state = None;
        }
        Ok(())
    }

    /// Drops every cached stored form (states holding blob addresses) of this store's
    /// executions: after a rekey moved blobs, a snapshot written from one would point at
    /// addresses that no longer exist.
    async fn forget_stored_states(&self) {
        let handles: Vec<_> = match self.inner.executions.lock() {
            Ok(map) => map.values().cloned().collect(),
            Err(_) => return,
        };
        for handle in handles {
            handle.lock().await.newest_state = None;
        }
    }

    /// gc's work, between its begin and end marks.
    async fn collect_garbage(
        &self,
        started: std::time::Instant,
        lease: Duration,
    ) -> Result<GcReport> {
        let backend = &self.inner.backend;
        let mut report = GcReport::default();
        let mut referenced = HashSet::new();
        for log in self.execution_logs().await? {
            let handle = self.handle(&log);
            let mut idx = handle.lock().await;
            self.refresh(&mut idx).await?;
            // Keep from the snapshot the oldest live checkpoint's chain starts at; with nothing
            // live, nothing (the next save is then a snapshot, see `prepare`).
            let keep_from = match idx.live_damage().next() {
                // What a damaged frame held is unknown (perhaps the snapshot a live chain
                // starts at): keep the whole log for salvage and inspection.
                Some(_) => 1,
                None => idx
                    .live()
                    .next()
                    .map_or(idx.next_seq, |(_, e)| e.chain.start),
            };
            let frames = self.scan_range(&idx.log, 1, idx.next_seq).await?;
            for (seq, bytes) in &frames {
                if *seq < keep_from {
                    report.frames_removed += 1;
                    continue;
                }
                if idx.saves.contains_key(seq) {
                    match self.decode_body(&idx.log, *seq, bytes)? {
                        Body::Snapshot(v) => tree::collect_refs(&v, &mut referenced),
                        Body::Delta { ops, .. } => tree::collect_op_refs(&ops, &mut referenced),
                    }
                }
            }
            if frames.first().is_some_and(|(s, _)| *s < keep_from) {
                backend.truncate(&log, keep_from).await?;
            }
            idx.saves.retain(|v, _| *v >= keep_from);
            if idx.saves.is_empty() {
                idx.newest_state = None;
            }
        }
        let referenced = self.with_chunks(referenced).await?;
        let mut dead = Vec::new();
        for hash in backend.list_blobs().await? {
            if referenced.contains(&hash) {
                report.blobs_kept += 1;
            } else {
                dead.push(hash);
            }
        }
        report.blobs_removed = dead.len() as u64;
        if started.elapsed() > lease / 2 {
            // Writers elsewhere may soon end this gc as abandoned; deleting now could race them.
            return Err(Error::Busy {
                what: format!(
                    "gc ran longer than half its lease ({} s) before deleting blobs; nothing was \
                     deleted, run gc again",
                    lease.as_secs()
                ),
            });
        }
        backend.delete_blobs(&dead).await?;
        backend.flush().await?;
        if let Ok(mut cache) = self.inner.blob_cache.lock() {
            *cache = BlobCache::default();
        }
        Ok(report)
    }

    /// Makes everything written durable (saves already are, unless durability was relaxed).
    pub async fn flush(&self) -> Result<()> {
        self.inner.backend.flush().await
    }

    // ---- saving ----

    async fn save_pending(&self, pending: Vec<Pending>, expect: Expect) -> Result<Vec<Checkpoint>> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        // Group by execution (order kept within each), lock executions in id order.
        let mut groups: BTreeMap<String, Vec<(usize, Pending)>> = BTreeMap::new();
        for (i, p) in pending.into_iter().enumerate() {
            p.checkpoint.validate()?;
            groups
                .entry(p.checkpoint.execution_id.clone())
                .or_default()
                .push((i, p));
        }
        let total: usize = groups.values().map(Vec::len).sum();
        let crypto = self.crypto().await?;
        crypto.check_writable()?;
        let codec = crypto.codec();
        // Taken before the execution locks, in the same order as gc, so the two cannot deadlock.
        let _shared = self.inner.gc_lock.read().await;
        let mut guards: Vec<OwnedMutexGuard<ExecIndex>> = Vec::with_capacity(groups.len());
        for exec in groups.keys() {
            guards.push(self.handle(exec).lock_owned().await);
        }
        let mut fenced_off = 0;
        let mut attempt = 0;
        let patient_until = std::time::Instant::now() + CONFLICT_PATIENCE;
        let may_retry = |attempt: u32| {
            attempt + 1 < MAX_CONFLICT_RETRIES || std::time::Instant::now() < patient_until
        };
        // A projection this store keeps up to date is trusted for the first try: the
        // compare-and-append tells if the log moved, and saves it is current for skip a round trip.
        // (Not when the caller states what the latest must be: that is checked on a fresh view.)
        let mut trust_cache = matches!(expect, Expect::Any);
        loop {
            // Read before any blob is checked or written: see `reclaim`.
            let fence = self.gc_fence().await?;
            let unfenced = self.gc_position_unfenced().await?;
            let epoch = fence.as_ref().map(|f| f.expected_seq).or(unfenced);
            for idx in guards.iter_mut() {
                if epoch != Some(idx.stored_epoch) {
                    self.revalidate_stored_state(idx, epoch.unwrap_or(0))
                        .await?;
                }
            }
            let mut prepared = Vec::with_capacity(groups.len());
            let mut lifted = codec.lifting();
            for (idx, group) in guards.iter_mut().zip(groups.values()) {
                if !(trust_cache && idx.synced) {
                    self.refresh(idx).await?;
                }
                if let Expect::Latest(v) = expect {
                    let actual = idx.latest_live();
                    if actual != v {
                        return Err(Error::Conflict {
                            log: idx.log.to_string(),
                            expected: v.unwrap_or(0),
                            actual: actual.unwrap_or(0),
                        });
                    }
                }
                prepared.push(self.prepare(idx, group, &mut lifted, codec).await?);
            }
            let needed = match unfenced {
                Some(_) => lifted.blobs.clone(),
                None => Vec::new(),
            };
            let blobs = self.encode_blobs(lifted.blobs, codec).await?;
            let mut appends: Vec<LogAppend> = prepared
                .iter_mut()
                .map(|p| std::mem::take(&mut p.append))
                .collect();
            let bytes: u64 = appends
                .iter()
                .flat_map(|a| &a.frames)
                .map(|f| f.len() as u64)
                .sum();
            let tails: Vec<u64> = appends
                .iter()
                .map(|a| a.expected_seq + a.frames.len() as u64)
                .collect();
            self.count_blobs(&blobs);
            appends.extend(fence);
            match self.commit(appends, blobs).await {
                Ok(()) => {
                    if let Some(position) = unfenced {
                        self.repair_after_gc(position, &needed, codec).await?;
                    }
                    self.count_frames(total as u64, bytes);
                    let mut out: Vec<(usize, Checkpoint)> = Vec::with_capacity(total);
                    for (((idx, group), p), tail) in guards
                        .iter_mut()
                        .zip(groups.values())
                        .zip(prepared)
                        .zip(tails)
                    {
                        let log = idx.log.clone();
                        for ((header, body_len, frame_len, cp), (i, _)) in
                            p.saves.into_iter().zip(group)
                        {
                            let version = cp.version;
                            idx.apply_save(version, header, body_len, frame_len);
                            let _ = self.inner.saved.send((log.clone(), version));
                            out.push((*i, cp));
                        }
                        idx.next_seq = tail;
                        idx.newest_state = p.newest_state;
                        idx.stored_epoch = epoch.unwrap_or(0);
                        self.note_tail(idx);
                    }
                    out.sort_by_key(|(i, _)| *i);
                    return Ok(out.into_iter().map(|(_, cp)| cp).collect());
                }
                // A gc began elsewhere: prepare again once it has ended, whatever `expect`.
                Err(e) if reclaim::is_fence_conflict(&e) && fenced_off < MAX_FENCE_RETRIES => {
                    fenced_off += 1;
                    self.forget_gc_fence();
                }
                // The log moved since this store last looked: look, then decide.
                Err(Error::Conflict { .. }) if trust_cache => trust_cache = false,
                Err(Error::Conflict { .. })
                    if matches!(expect, Expect::Any) && may_retry(attempt) =>
                {
                    backoff(attempt).await;
                    attempt += 1;
                }
                Err(Error::Conflict { .. }) if matches!(expect, Expect::Any) => {
                    return Err(self.gave_up(groups.keys().next().map_or("", String::as_str)))
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Encodes the frames of one execution's pending saves on top of its current projection.
    async fn prepare(
        &self,
        idx: &mut ExecIndex,
        group: &[(usize, Pending)],
        lifted: &mut tree::Lifting,
        codec: &crate::codec::Codec,
    ) -> Result<Prepared> {
        let log = idx.log.clone();
        let mut seq = idx.next_seq;
        let mut parent = idx.latest_live();
        // Deltas build on the newest save (live or deleted) while anything is live; gc keeps
        // exactly those saves' chains.
        // A state that cannot be rebuilt (its chain runs through a damaged frame, or it fails
        // to rebuild) is no base: the save is then a snapshot, readable whatever came before.
        let newest = idx
            .newest_save()
            .filter(|(_, e)| parent.is_some() && e.chain.needs.is_none())
            .map(|(v, e)| (v, e.chain));
        let mut base: Option<(CachedState, Chain)> = match newest {
            Some((v, chain)) => match self.state_of(idx, v).await {
                Ok(state) => Some((state, chain)),
                Err(e) if self.is_damage(&e) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let mut frames = Vec::with_capacity(group.len());
        let mut saves = Vec::with_capacity(group.len());
        for (_, p) in group {
            let cp = &p.checkpoint;
            let (stored, body, delta_base, chain) = match &base {
                Some((b, chain)) if !p.force_snapshot && chain.len < MAX_CHAIN => {
                    let ops = tree::externalize_ops(&tree::diff(&b.logical, &cp.state), lifted);
                    let mut stored = Value::clone(&b.stored);
                    tree::apply(&mut stored, &ops).map_err(|e| {
                        Error::corrupt(
                            format!("checkpoint {log}@{}", b.version),
                            format!("cached state does not take its own delta: {e}"),
                        )
                    })?;
                    let delta = value::encode(&tree::ops_to_value(&ops));
                    let len = delta.len() as u64;
                    if chain.delta_bytes + len <= chain.snapshot_bytes.max(MIN_DELTA_BUDGET) {
                        (stored, delta, Some(b.version), chain.extend(len))
                    } else {
                        let snapshot = value::encode(&stored);
                        let chain = Chain::snapshot(seq, snapshot.len() as u64);
                        (stored, snapshot, None, chain)
                    }
                }
                _ => {
                    let stored = tree::externalize(&cp.state, lifted);
                    let snapshot = value::encode(&stored);
                    let chain = Chain::snapshot(seq, snapshot.len() as u64);
                    (stored, snapshot, None, chain)
                }
            };
            let timestamp_us = p.timestamp_us.unwrap_or_else(now_micros);
            let header = SaveHeader {
                node: cp.node_name.clone(),
                metadata: cp.metadata.clone(),
                timestamp_us,
                parent: p.parent.clone().or(parent.map(|version| ParentRef {
                    execution: None,
                    version,
                })),
                state_size: cp.state_size,
                delta_base,
            };
            let frame = codec.frames.encode_save(&log, seq, &header, &body)?;
            let mut saved = cp.clone();
            saved.version = seq;
            saved.id = CheckpointId::new_unchecked(log.clone(), seq);
            saved.timestamp = from_micros(timestamp_us);
            saved.parent = self.parent_id(&log, &header.parent);
            saves.push((header, body.len() as u64, frame.len() as u64, saved));
            frames.push(frame);
            let state = CachedState {
                version: seq,
                logical: cp.state.clone(),
                stored: Arc::new(stored),
            };
            base = Some((state, chain));
            parent = Some(seq);
            seq += 1;
        }
        Ok(Prepared {
            append: LogAppend::new(log.to_string(), idx.next_seq, frames),
            newest_state: base.map(|(s, _)| s),
            saves,
        })
    }

    /// The stored form of the lifted leaves and chunks the backend does not have yet (each once).
    async fn encode_blobs(
        &self,
        lifted: Vec<Lifted>,
        codec: &crate::codec::Codec,
    ) -> Result<Vec<(BlobHash, Vec<u8>)>> {
        let mut seen = HashSet::with_capacity(lifted.len());
        let lifted: Vec<Lifted> = lifted
            .into_iter()
            .filter(|(h, _)| seen.insert(*h))
            .collect();
        if lifted.is_empty() {
            return Ok(Vec::new());
        }
        let bytes: usize = lifted.iter().map(|(_, c)| c.len()).sum();
        if self.inner.backend.capabilities().blobs_with_append
            && lifted.len() <= BLIND_PUT_BLOBS
            && bytes <= BLIND_PUT_BYTES
        {
            // A delta's few new leaves: cheaper to send than to ask about.
            return lifted
                .into_iter()
                .map(|(hash, content)| Ok((hash, codec.blobs.encode(&hash, &content)?)))
                .collect();
        }
        let hashes: Vec<BlobHash> = lifted.iter().map(|(h, _)| *h).collect();
        let missing: HashSet<BlobHash> = self
            .inner
            .backend
            .missing_blobs(&hashes)
            .await?
            .into_iter()
            .collect();
        let mut stored = Vec::with_capacity(missing.len());
        for (hash, content) in lifted {
            if missing.contains(&hash) {
                stored.push((hash, codec.blobs.encode(&hash, &content)?));
            }
        }
        Ok(stored)
    }

    fn count_blobs(&self, blobs: &[(BlobHash, Vec<u8>)]) {
        let s = &self.inner.stats;
        s.blobs.fetch_add(blobs.len() as u64, Ordering::Relaxed);
        let bytes: usize = blobs.iter().map(|(_, b)| b.len()).sum();
        s.blob_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    async fn append_one(&self, log: &str, seq: u64, frame: Vec<u8>) -> Result<()> {
        let len = frame.len() as u64;
        self.append(vec![LogAppend::new(log, seq, vec![frame])])
            .await?;
        self.count_frames(1, len);
        Ok(())
    }

    fn count_frames(&self, n: u64, bytes: u64) {
        self.inner.stats.frames.fetch_add(n, Ordering::Relaxed);
        self.inner
            .stats
            .frame_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    fn gave_up(&self, log: &str) -> Error {
        Error::Backend {
            backend: self.inner.backend.name(),
            context: format!(
                "execution {log:?}: gave up after {MAX_CONFLICT_RETRIES} conflicting appends from other writers"
            ),
            source: "too much contention".into(),
        }
    }

    // ---- reading ----

    fn handle(&self, exec: &str) -> Arc<tokio::sync::Mutex<ExecIndex>> {
        let mut map = match self.inner.executions.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= MAX_CACHED_EXECUTIONS && !map.contains_key(exec) {
            // Projections are rebuilt from the log on demand: forget those nobody is using.
            map.retain(|_, idx| Arc::strong_count(idx) > 1);
        }
        map.entry(exec.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(ExecIndex::new(exec.into()))))
            .clone()
    }

    /// The execution's projection, brought up to the log's tail.
    async fn index(&self, exec: &str) -> Result<OwnedMutexGuard<ExecIndex>> {
        let mut idx = self.handle(exec).lock_owned().await;
        self.refresh(&mut idx).await?;
        Ok(idx)
    }

    /// Folds any frames appended since the projection was last brought up to date. A gap (frames
    /// removed by gc before this projection saw them) rebuilds it from the log.
    async fn refresh(&self, idx: &mut ExecIndex) -> Result<()> {
        self.crypto().await?;
        let tail = self.tail(&idx.log).await?;
        if tail == idx.next_seq {
            idx.synced = true;
            return Ok(());
        }
        if tail < idx.next_seq {
            idx.reset();
        }
        let mut rebuilt = idx.next_seq == 1;
        // The last frame folded: frames after it must follow it without a hole (gc removes only
        // a prefix of a log; on a fresh fold the first frame may start anywhere).
        let mut previous = (!rebuilt).then(|| idx.next_seq - 1);
        loop {
            let from = idx.next_seq;
            let page = self.inner.backend.scan(&idx.log, from, SCAN_PAGE).await?;
            let gap = page.first().map_or(from < tail, |(s, _)| *s != from);
            if gap && !rebuilt {
                idx.reset();
                rebuilt = true;
                previous = None;
                continue;
            }
            let Some((last, _)) = page.last() else { break };
            let last = *last;
            for (seq, bytes) in &page {
                if let Some(p) = previous.filter(|p| *seq > p + 1) {
                    idx.apply_missing(p + 1, *seq);
                }
                previous = Some(*seq);
                idx.note_folded(*seq);
                match self.codec()?.frames.decode(&idx.log, *seq, bytes) {
                    Ok(decoded) => idx.apply(*seq, &decoded, bytes.len() as u64),
                    // Contained: only the versions that need this frame become unreadable.
                    Err(e) if self.is_damage(&e) => {
                        let key_id = match &e {
                            Error::Decrypt { key_id, .. } => Some(key_id.clone()),
                            _ => None,
                        };
                        idx.apply_damaged(*seq, damage_reason(&e), key_id, bytes.len() as u64)
                    }
                    Err(e) => return Err(e),
                }
            }
            idx.next_seq = last + 1;
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        // Frames end below the log's next sequence number: a lost tail (a log keeps its last
        // frame until gc removes all of it).
        if let Some(p) = previous.filter(|p| tail > p + 1) {
            idx.apply_missing(p + 1, tail);
        }
        idx.next_seq = idx.next_seq.max(tail);
        idx.synced = true;
        self.note_tail(idx);
        Ok(())
    }

    /// Records the tail `idx` has reached, for watchers starting later.
    fn note_tail(&self, idx: &ExecIndex) {
        let mut tails = match self.inner.known_tails.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        if tails.len() >= MAX_CACHED_EXECUTIONS * 16 {
            tails.clear();
        }
        tails.insert(idx.log.clone(), idx.next_seq);
    }

    /// The log tail of `exec` as this store last saw it, if it has looked.
    pub(crate) fn known_tail(&self, exec: &str) -> Option<u64> {
        let tails = match self.inner.known_tails.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        tails.get(exec).copied()
    }

    async fn scan_range(&self, log: &str, from: u64, to: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut next = from;
        while next < to {
            let want = ((to - next) as usize).min(SCAN_PAGE);
            let page = self.inner.backend.scan(log, next, want).await?;
            let Some((last, _)) = page.last() else { break };
            next = last + 1;
            out.extend(page.into_iter().filter(|(s, _)| *s < to));
        }
        Ok(out)
    }

    /// The state of `version` (a save in `idx`), from the cache or rebuilt from its chain.
    async fn state_of(&self, idx: &mut ExecIndex, version: u64) -> Result<CachedState> {
        if let Some(s) = idx.cached_state(version) {
            return Ok(s);
        }
        // Before the frames: a save trusts the addresses read here only under this position.
        let epoch = self.gc_epoch_now().await?;
        let chain = idx
            .saves
            .get(&version)
            .map(|e| e.chain)
            .ok_or_else(|| Error::not_found(format!("checkpoint {}@{version}", idx.log)))?;
        if let Some(needed) = chain.needs {
            return Err(needs_damaged(idx, version, needed));
        }
        let frames = self.scan_range(&idx.log, chain.start, version + 1).await?;
        let mut state = None;
        let mut applied = None;
        for (seq, bytes) in &frames {
            if idx.saves.contains_key(seq) {
                let body = self.decode_body(&idx.log, *seq, bytes)?;
                check_base(&idx.log, *seq, &body, applied)?;
                state = Some(self.apply_body(&idx.log, *seq, state, body)?);
                applied = Some(*seq);
            }
        }
        let stored = state.ok_or_else(|| {
            Error::corrupt(
                format!("execution {:?} seq {version}", idx.log),
                "the save's frame is missing from the log",
            )
        })?;
        let logical = Arc::new(self.resolve(&idx.log, version, &stored).await?);
        let state = CachedState {
            version,
            logical,
            stored: Arc::new(stored),
        };
        if idx.newest_save().is_some_and(|(v, _)| v == version) {
            idx.newest_state = Some(state.clone());
            idx.stored_epoch = epoch;
        }
        Ok(state)
    }

    fn decode_body(&self, log: &str, seq: u64, bytes: &[u8]) -> Result<Body> {
        let decoded = self.codec()?.frames.decode(log, seq, bytes)?;
        match decoded.event {
            frame::Event::Save(h) => frame::decode_body(log, seq, &h, &decoded.body),
            _ => Err(Error::corrupt(
                format!("execution {log:?} seq {seq}"),
                "expected a save, found another event",
            )),
        }
    }

    fn apply_body(&self, log: &str, seq: u64, state: Option<Value>, body: Body) -> Result<Value> {
        match (body, state) {
            (Body::Snapshot(v), _) => Ok(v),
            (Body::Delta { ops, .. }, Some(mut s)) => {
                tree::apply(&mut s, &ops).map_err(|e| {
                    Error::corrupt(
                        format!("execution {log:?} seq {seq}"),
                        format!("delta does not apply: {e}"),
                    )
                })?;
                Ok(s)
            }
            (Body::Delta { base, .. }, None) => Err(Error::corrupt(
                format!("execution {log:?} seq {seq}"),
                format!("delta from version {base}, whose state is not in the log"),
            )),
        }
    }

    /// Replaces blob references in a stored-form state by the (verified) content.
    async fn resolve(&self, log: &str, version: u64, stored: &Value) -> Result<Value> {
        let mut refs = HashSet::new();
        tree::collect_refs(stored, &mut refs);
        if refs.is_empty() {
            return Ok(stored.clone());
        }
        let missing: Vec<tree::Ref> = {
            let cache = self.inner.blob_cache.lock().map_err(|_| poisoned())?;
            refs.into_iter()
                .filter(|r| !cache.values.contains_key(&r.hash()))
                .collect()
        };
        // Fetched leaves are kept here too: the cache may evict them before substitution.
        let mut fetched: HashMap<BlobHash, Value> = HashMap::with_capacity(missing.len());
        let referrer = format!("checkpoint {log}@{version}");
        let leaves: Vec<BlobHash> = missing
            .iter()
            .filter_map(|r| match r {
                tree::Ref::Leaf(h) => Some(*h),
                tree::Ref::Chunked(_) => None,
            })
            .collect();
        // A cold load reads a state's many leaves in a few round trips, not one each.
        for group in leaves.chunks(FETCH_BATCH) {
            for (hash, content) in group.iter().zip(self.fetch_blobs(&referrer, group).await?) {
                let leaf = value::decode(&content)
                    .map_err(|e| Error::corrupt(format!("blob {}", blob::hex(hash)), e))?;
                fetched.insert(*hash, leaf);
            }
        }
        for r in &missing {
            if let tree::Ref::Chunked(h) = r {
                fetched.insert(*h, self.fetch_chunked(log, version, h).await?);
            }
        }
        let mut cache = self.inner.blob_cache.lock().map_err(|_| poisoned())?;
        let resolved = tree::substitute(stored, &|h| {
            fetched.get(h).or_else(|| cache.values.get(h)).cloned()
        });
        for (h, leaf) in fetched {
            cache.insert(h, leaf);
        }
        resolved.ok_or_else(|| {
            Error::corrupt(
                format!("checkpoint {log}@{version}"),
                "a blob reference could not be resolved",
            )
        })
    }

    /// Reads and verifies blob `hash`, which `referrer` needs.
    async fn fetch_blob(&self, referrer: &str, hash: &BlobHash) -> Result<Vec<u8>> {
        let codec = self.crypto().await?.codec();
        let stored = self.inner.backend.get_blob(hash).await?.ok_or_else(|| {
            Error::corrupt(
                format!("blob {}", blob::hex(hash)),
                format!("missing, but referenced by {referrer}"),
            )
        })?;
        codec.blobs.decode(hash, &stored)
    }

    /// Reads and verifies the blobs `hashes` (in one backend call), which `referrer` needs.
    async fn fetch_blobs(&self, referrer: &str, hashes: &[BlobHash]) -> Result<Vec<Vec<u8>>> {
        let codec = self.crypto().await?.codec();
        let stored = self.inner.backend.get_blobs(hashes).await?;
        if stored.len() != hashes.len() {
            return Err(Error::Backend {
                backend: self.inner.backend.name(),
                context: format!("reading {} blobs", hashes.len()),
                source: format!("{} came back (a bug in the backend)", stored.len()).into(),
            });
        }
        hashes
            .iter()
            .zip(stored)
            .map(|(hash, stored)| {
                let stored = stored.ok_or_else(|| {
                    Error::corrupt(
                        format!("blob {}", blob::hex(hash)),
                        format!("missing, but referenced by {referrer}"),
                    )
                })?;
                codec.blobs.decode(hash, &stored)
            })
            .collect()
    }

    /// Reads and verifies the manifest `hash`.
    async fn fetch_manifest(&self, referrer: &str, hash: &BlobHash) -> Result<tree::Manifest> {
        let content = self.fetch_blob(referrer, hash).await?;
        tree::Manifest::decode(&content)
            .map_err(|e| Error::corrupt(format!("blob {}", blob::hex(hash)), e))
    }

    /// Reassembles the leaf whose chunks manifest `hash` lists, verifying every chunk.
    async fn fetch_chunked(&self, log: &str, version: u64, hash: &BlobHash) -> Result<Value> {
        let referrer = format!("checkpoint {log}@{version}");
        let manifest = self.fetch_manifest(&referrer, hash).await?;
        let mut chunks = Vec::with_capacity(manifest.chunks.len());
        for group in manifest.chunks.chunks(FETCH_BATCH) {
            chunks.extend(self.fetch_blobs(&referrer, group).await?);
        }
        manifest
            .assemble(chunks)
            .map_err(|e| Error::corrupt(format!("blob {}", blob::hex(hash)), e))
    }

    /// The blobs `refs` name, with the chunks of every chunked leaf among them (for gc's mark).
    async fn with_chunks(&self, refs: HashSet<tree::Ref>) -> Result<HashSet<BlobHash>> {
        let mut out = HashSet::with_capacity(refs.len());
        for r in refs {
            out.insert(r.hash());
            if let tree::Ref::Chunked(h) = r {
                // A manifest that cannot be read stops gc: its chunks would look unreferenced.
                let manifest = self.fetch_manifest("a live checkpoint (gc)", &h).await?;
                out.extend(manifest.chunks);
            }
        }
        Ok(out)
    }

    fn checkpoint(
        &self,
        log: &Arc<str>,
        version: u64,
        entry: &SaveEntry,
        state: Arc<Value>,
    ) -> Checkpoint {
        let h = &entry.header;
        Checkpoint {
            id: CheckpointId::new_unchecked(log.clone(), version),
            execution_id: log.to_string(),
            node_name: h.node.clone(),
            metadata: h.metadata.clone(),
            version,
            timestamp: from_micros(h.timestamp_us),
            parent: self.parent_id(log, &h.parent),
            state,
            state_size: h.state_size,
        }
    }

    fn header(&self, log: &Arc<str>, version: u64, entry: &SaveEntry) -> CheckpointHeader {
        let h = &entry.header;
        CheckpointHeader {
            id: CheckpointId::new_unchecked(log.clone(), version),
            execution_id: log.to_string(),
            node_name: h.node.clone(),
            metadata: h.metadata.clone(),
            version,
            timestamp: from_micros(h.timestamp_us),
            parent: self.parent_id(log, &h.parent),
            state_size: h.state_size,
            stored_size: entry.frame_len,
        }
    }

    fn parent_id(&self, log: &Arc<str>, parent: &Option<ParentRef>) -> Option<CheckpointId> {
        parent.as_ref().map(|p| match &p.execution {
            None => CheckpointId::new_unchecked(log.clone(), p.version),
            Some(e) => CheckpointId::new_unchecked(e.as_str().into(), p.version),
        })
    }

    /// Checkpoints of `exec` with versions `>= from` that are live now, and the sequence number to
    /// continue from (used by [`Watch`]).
    pub(crate) async fn saved_since(
        &self,
        exec: &str,
        from: u64,
    ) -> Result<(Vec<Checkpoint>, u64)> {
        let (versions, next): (Vec<u64>, u64) = {
            let idx = self.index(exec).await?;
            let v = idx
                .live()
                .filter(|(v, _)| *v >= from)
                .map(|(v, _)| v)
                .collect();
            (v, idx.next_seq)
        };
        let mut out = Vec::with_capacity(versions.len());
        for v in versions {
            match self.at_version(exec, v).await {
                Ok(cp) => out.push(cp),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((out, next.max(from)))
    }

    /// The version of the first save of `exec` stamped at or after `since_us`, or the log's
    /// tail if there is none.
    pub(crate) async fn first_save_since(&self, exec: &str, since_us: u64) -> Result<u64> {
        let idx = self.index(exec).await?;
        let mut first = idx.next_seq;
        for (version, entry) in idx.saves.iter().rev() {
            if entry.header.timestamp_us < since_us {
                break;
            }
            first = *version;
        }
        Ok(first)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<(Arc<str>, u64)> {
        self.inner.saved.subscribe()
    }
}

impl Store {
    /// Whether `e`, met reading stored bytes, is damage to contain (the bytes fail
    /// verification) rather than a failure of the whole read. A frame that does not open in a
    /// store whose key was checked is damage; in a store opened without its key (locked), every
    /// frame fails alike, and that is the key's problem, reported as such.
    ///
    /// A frame sealed with a key this store was not given is not damage but a key missing from
    /// the configuration: that error stands too.
    fn is_damage(&self, e: &Error) -> bool {
        match e {
            Error::Corrupt { .. } => true,
            Error::Decrypt { key_id, .. } => {
                let sealed = matches!(
                    self.inner.crypto.get(),
                    Some(encryption::Crypto::Sealed(..))
                );
                let known = key_id == "?"
                    || self
                        .inner
                        .keys
                        .iter()
                        .any(|k| k.id().to_string() == *key_id);
                sealed && known
            }
            _ => false,
        }
    }
}

/// What a damaged frame's error says failed (the frame's place is known to the reader).
fn damage_reason(e: &Error) -> String {
    match e {
        Error::Corrupt { reason, .. } | Error::Decrypt { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The error of a read stopped at `location` by the damaged frame `seq`: [`Error::Decrypt`]
/// (naming the key id) when the frame failed to open, [`Error::Corrupt`] otherwise.
fn damage_error(idx: &ExecIndex, seq: u64, location: String, reason: String) -> Error {
    match idx.sealed_damage.get(&seq) {
        Some(key_id) => Error::Decrypt {
            location,
            key_id: key_id.clone(),
            reason,
        },
        None => Error::corrupt(location, reason),
    }
}

/// The error of loading `version`, whose delta chain runs through the damaged frame `needed`.
fn needs_damaged(idx: &ExecIndex, version: u64, needed: u64) -> Error {
    let reason = idx.damaged.get(&needed).map_or("", String::as_str);
    damage_error(
        idx,
        needed,
        format!("checkpoint {}@{version}", idx.log),
        format!(
            "its state is stored as changes on top of execution {:?} seq {needed}, which is \
             damaged ({reason}); {}",
            idx.log,
            readable_hint(idx)
        ),
    )
}

/// The error of loading `version`, which the damaged frame `damaged` after it may have deleted.
fn maybe_deleted(idx: &ExecIndex, version: u64, damaged: u64) -> Error {
    let reason = idx.damaged.get(&damaged).map_or("", String::as_str);
    damage_error(
        idx,
        damaged,
        format!("checkpoint {}@{version}", idx.log),
        format!(
            "execution {:?} seq {damaged}, after it, is damaged ({reason}) and may have been \
             its delete or a clear: it is not served; {}",
            idx.log,
            readable_hint(idx)
        ),
    )
}

/// Refuses a delta applied on top of anything but its own base (a frame missing in between
/// would otherwise serve one version's state as another's).
fn check_base(log: &str, seq: u64, body: &Body, applied: Option<u64>) -> Result<()> {
    match body {
        Body::Delta { base, .. } if applied != Some(*base) => Err(Error::corrupt(
            format!("execution {log:?} seq {seq}"),
            format!(
                "a delta from version {base}, but the state before it is {}",
                applied.map_or("none".to_owned(), |v| format!("version {v}'s"))
            ),
        )),
        _ => Ok(()),
    }
}

/// "versions 1-3, 7 are readable", for messages about a damaged execution.
fn readable_hint(idx: &ExecIndex) -> String {
    let readable: Vec<u64> = idx.readable().map(|(v, _)| v).collect();
    if readable.is_empty() {
        "no version of it is readable".to_owned()
    } else {
        format!(
            "readable: version(s) {} (Store::at_version, ckpt show)",
            seq_list(&readable)
        )
    }
}

/// Sorted numbers (versions, sequence numbers) written as ranges: `1-3, 7`.
pub fn seq_list(seqs: &[u64]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < seqs.len() {
        let mut j = i;
        while j + 1 < seqs.len() && seqs[j + 1] == seqs[j] + 1 {
            j += 1;
        }
        out.push(if i == j {
            seqs[i].to_string()
        } else {
            format!("{}-{}", seqs[i], seqs[j])
        });
        i = j + 1;
    }
    out.join(", ")
}

impl Pending {
    fn plain(checkpoint: Checkpoint) -> Self {
        Pending {
            checkpoint,
            parent: None,
            force_snapshot: false,
            timestamp_us: None,
        }
    }
}

/// The gc lock of `backend`, shared by every store of this process on it.
fn shared_gc_lock(backend: &Arc<dyn Backend>) -> Arc<RwLock<()>> {
    type Locks = Mutex<HashMap<usize, std::sync::Weak<RwLock<()>>>>;
    static LOCKS: std::sync::OnceLock<Locks> = std::sync::OnceLock::new();
    let key = Arc::as_ptr(backend) as *const () as usize;
    let mut locks = match LOCKS.get_or_init(Locks::default).lock() {
        Ok(l) => l,
        Err(p) => p.into_inner(),
    };
    locks.retain(|_, w| w.strong_count() > 0);
    if let Some(lock) = locks.get(&key).and_then(std::sync::Weak::upgrade) {
        return lock;
    }
    let lock = Arc::new(RwLock::new(()));
    locks.insert(key, Arc::downgrade(&lock));
    lock
}

/// Waits before retrying a conflicting append: exponential (0.1 ms doubling, at most 25 ms) with
/// jitter, so writers that collided do not collide again in lockstep.
async fn backoff(attempt: u32) {
    let ceiling_us = (100u64 << attempt.min(8)).min(25_000);
    let jitter = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::from(d.subsec_nanos()));
    tokio::time::sleep(Duration::from_micros(
        ceiling_us / 2 + jitter % (ceiling_us / 2 + 1),
    ))
    .await;
}

fn poisoned() -> Error {
    Error::InvalidInput("an earlier panic left a store lock poisoned; reopen the store".into())
}

fn now_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn from_micros(us: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_micros(us)
}

#[async_trait]
impl CheckpointStore for Store {
    async fn save(&self, checkpoint: Checkpoint) -> Result<Checkpoint> {
        Store::save(self, checkpoint).await
    }
    async fn load(&self, id: &CheckpointId) -> Result<Checkpoint> {
        Store::load(self, id).await
    }
    async fn list(&self, execution_id: &str) -> Result<Vec<Checkpoint>> {
        Store::list(self, execution_id).await
    }
    async fn delete(&self, id: &CheckpointId) -> Result<()> {
        Store::delete(self, id).await
    }
    async fn clear(&self, execution_id: &str) -> Result<()> {
        Store::clear(self, execution_id).await
    }
    async fn latest(&self, execution_id: &str) -> Result<Option<Checkpoint>> {
        Store::latest(self, execution_id).await
    }
}
