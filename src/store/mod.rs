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
//!
//! The files follow the data path. This one owns the [`Store`] handle, its shared state and its
//! constructors; `types` the API's plain types; `save` the way in (fence, prepare, commit, on
//! conflict); `write` the other events (delete, clear, fork); `read` the way out (projection
//! refresh, state rebuild, blob fetch); `query` the answers read from projections alone
//! (history, executions, damage); `gc` and `reclaim` the sweep and its fence across processes;
//! `verify`, `stats` and `compact` the whole-store projections and maintenance the CLI calls;
//! `trace` the spans on every operation and backend call, `metrics` the counters they keep.

mod builder;
mod compact;
mod contention;
mod encryption;
mod gc;
mod index;
mod metrics;
mod persist;
pub(crate) use persist::decode_record;
mod query;
mod read;
pub(crate) mod reclaim;
mod retention;
mod save;
mod search;
mod search_index;
mod stats;
pub(crate) mod trace;
mod transcode;
mod transfer;
mod tree;
mod types;
mod verify;
mod watch;
mod write;
mod writes;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rmpv::Value;
use tokio::sync::{broadcast, RwLock};

use crate::backend::memory::MemoryBackend;
use crate::backend::{Backend, BlobHash};
use crate::error::{Error, Result};
use index::ExecIndex;
use trace::op_span;

pub use crate::backend::CompactReport;
pub use builder::StoreBuilder;
pub use encryption::RekeyReport;
pub use metrics::{Metrics, MetricsSnapshot};
pub use retention::{ExecutionPlan, PruneReport, RetentionPolicy, RetentionTask};
pub use search::{SearchHit, SearchMethod, SearchPage, SearchQuery};
pub(crate) use search_index::decode_index_entry;
pub use search_index::ReindexReport;
pub use stats::{ExecutionStats, StatsReport, StatsTotals};
pub use transfer::{ImportReport, SalvageReport, SalvagedExecution};
pub use types::{
    CheckpointStore, ExecutionDamage, ExecutionSummary, GcReport, HistoryQuery, ReadStats,
    WriteStats,
};
pub use verify::{DamagedBlob, ExecutionVerify, UnreadableVersion, VerifyReport};
pub use watch::Watch;

/// Blobs read per backend call when a state is rebuilt.
const FETCH_BATCH: usize = 256;
/// How often a conflicting append is retried before the conflict is returned.
const MAX_CONFLICT_RETRIES: u32 = 32;
/// Frames read per backend scan.
const SCAN_PAGE: usize = 1024;
/// Decoded blobs kept in memory (content-addressed, so never stale).
const BLOB_CACHE_BYTES: usize = 64 << 20;

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
    /// The backend as the store calls it: every call in a span, counted (see `trace`). Every
    /// call the store makes goes through it.
    traced: Arc<dyn Backend>,
    /// The backend as it was given ([`Store::backend`]), shared with other stores on it.
    backend: Arc<dyn Backend>,
    /// What this store and its clones did (see `metrics`).
    metrics: Arc<Metrics>,
    executions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<ExecIndex>>>>,
    blob_cache: Mutex<BlobCache>,
    /// Saves hold it shared from their first blob put to their append; gc holds it exclusively,
    /// so gc never sweeps a blob whose event is still on its way. Shared by every store of this
    /// process on the same backend.
    gc_lock: Arc<RwLock<()>>,
    /// How this process's writers share logs (see `contention`), which also holds `gc_lock`.
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
    /// Executions whose first persisted projection waits to be written (see `persist`).
    dirty_records: Mutex<std::collections::HashSet<Arc<str>>>,
    /// Held while queued summary records are written, so that a listing (which writes what is
    /// queued first) waits for a write already under way instead of reading records it has
    /// not written yet and folding their logs.
    summary_writes: tokio::sync::Mutex<()>,
    stats: Stats,
    /// The search index's writer and caches (see `search_index`).
    search_index: search_index::IndexState,
}

#[derive(Default)]
struct Stats {
    frames: AtomicU64,
    frame_bytes: AtomicU64,
    blobs: AtomicU64,
    blob_bytes: AtomicU64,
    frames_folded: AtomicU64,
    records_opened: AtomicU64,
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

    /// A new store on this store's backend with its keys and nothing else of it (no cached
    /// projection, state or blob), as this process would find the storage after a restart:
    /// for a cold read, or to reattach to a `memory://` store whose first handle is gone.
    pub fn reopened(&self) -> Store {
        self.with_same_keys(self.inner.backend.clone())
    }

    /// A store on a backend, sealing with `keys[0]` and opening with any of `keys` (see
    /// [`crate::crypto`]); with no keys, [`Store::with_backend`].
    pub fn with_backend_and_keys(
        backend: Arc<dyn Backend>,
        keys: Vec<crate::crypto::Key>,
    ) -> Store {
        let (saved, _) = broadcast::channel(1024);
        // The gc lock and the contention state are the backend's, in this process.
        let contention = contention::Contention::of(&backend);
        let metrics = Arc::new(Metrics::default());
        let traced: Arc<dyn Backend> = Arc::new(trace::Traced {
            inner: backend.clone(),
            metrics: metrics.clone(),
        });
        Store {
            inner: Arc::new(Inner {
                gc_lock: contention.gc_lock.clone(),
                contention,
                gc_next: AtomicU64::new(0),
                keys,
                crypto: tokio::sync::OnceCell::new(),
                traced,
                backend,
                metrics,
                executions: Mutex::new(HashMap::new()),
                blob_cache: Mutex::new(BlobCache::default()),
                saved,
                known_tails: Mutex::new(HashMap::new()),
                dirty_records: Mutex::new(std::collections::HashSet::new()),
                summary_writes: tokio::sync::Mutex::new(()),
                stats: Stats::default(),
                search_index: Default::default(),
            }),
        }
    }

    /// Damage the backend recorded in its own files (none when it cannot record any).
    pub async fn recorded_damage(&self) -> Result<Vec<crate::backend::RecordedDamage>> {
        let span = op_span!("ckpt.recorded_damage", self; count = tracing::field::Empty);
        let op = async {
            match self.inner.traced.capabilities().inspect {
                Some(inspect) => inspect.recorded_damage().await,
                None => Ok(Vec::new()),
            }
        };
        let found: Vec<_> = self.traced(&span, op).await?;
        span.record("count", found.len());
        Ok(found)
    }

    /// Bytes the backend occupies on its medium, when it can tell.
    pub async fn stored_bytes(&self) -> Result<Option<u64>> {
        let span = op_span!("ckpt.stored_bytes", self);
        let op = async {
            match self.inner.traced.capabilities().maintain {
                Some(maintain) => maintain.stored_bytes().await,
                None => Ok(None),
            }
        };
        self.traced(&span, op).await
    }

    /// Memory the backend's server uses, when it keeps everything in memory (Redis); `None`
    /// for the others.
    pub async fn server_memory(&self) -> Result<Option<u64>> {
        let span = op_span!("ckpt.server_memory", self);
        let op = async {
            match self.inner.traced.capabilities().maintain {
                Some(maintain) => maintain.server_memory().await,
                None => Ok(None),
            }
        };
        self.traced(&span, op).await
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

    /// What this store has read to build projections since it was opened (shared by clones).
    pub fn read_stats(&self) -> ReadStats {
        let s = &self.inner.stats;
        ReadStats {
            frames_folded: s.frames_folded.load(Ordering::Relaxed),
            records_opened: s.records_opened.load(Ordering::Relaxed),
        }
    }

    /// A stream of the checkpoints saved to `execution_id` from now on, by this store or any
    /// other writer of the same backend (this store's saves wake it at once, other writers' within
    /// 50 ms). "Now" is the log tail as this store last saw it, or as the backend reports it at
    /// this call; a backend that cannot answer without waiting (a network server) is asked at the
    /// stream's first poll instead. Ends only when dropped.
    ///
    /// A checkpoint deleted before the watch read it is not yielded (nor one this store deleted
    /// after the read, before it was yielded); one another process deleted in that window may
    /// still be. A watch the consumer stops polling holds nothing writers need: its reads run
    /// in their own task.
    pub fn watch(&self, execution_id: &str) -> Watch {
        Watch::new(self.clone(), execution_id, Duration::from_millis(50))
    }

    /// Makes everything written durable (saves already are, unless durability was relaxed),
    /// and on an indexed store waits until the saves handed to the search indexer are written.
    pub async fn flush(&self) -> Result<()> {
        let span = op_span!("ckpt.flush", self);
        let op = async {
            // Persisted projections are a cache: one that cannot be written is no reason to fail.
            let _ = self.write_dirty_records().await;
            if self.indexing_saves() {
                self.flush_index().await;
            }
            self.inner.traced.flush().await
        };
        self.traced(&span, op).await
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
