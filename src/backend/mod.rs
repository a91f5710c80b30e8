//! The storage primitives every backend implements, and nothing more.
//!
//! A backend stores two kinds of things: named append-only **logs** of opaque event frames, and
//! content-addressed **blobs**. It knows nothing of checkpoints, ids, versions or projections: those
//! are computed above it, in [`crate::store`], in one place, so backends cannot drift apart. Nor
//! does it retry conflicts or order contending writers: that policy lives in the store too.
//!
//! The contract every backend follows, and how to add one, are written on [`Backend`].
//! The layout: `memory.rs`; `sled/` (with its write-ahead log and heads file); `sql/` (`sqlite/`,
//! `postgres/`); `redis/`; `retry.rs` (what backends share for transient errors).

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;

use crate::error::Result;

pub mod memory;
#[cfg(feature = "redis")]
pub mod redis;
pub mod retry;
#[cfg(feature = "sled")]
pub mod sled;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub mod sql;
// The sled backend's write-ahead log and heads file live in its folder, but they are plain file
// formats with no sled dependency: declared here, at their old paths, so that they build (and are
// fuzzed) without the `sled` feature. `backend::sled::{wal, heads}` name them too.
#[path = "sled/heads.rs"]
pub mod heads;
#[path = "sled/wal.rs"]
pub mod wal;

/// Connection settings for the server backends, set with [`crate::StoreBuilder`]; each `Some`
/// overrides the same option in the URL's query. Backends that have no use for a setting ignore it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConnectOptions {
    /// Most connections a pool keeps open (`max_connections=`).
    pub max_connections: Option<u32>,
    /// Connections a pool keeps open when idle (`min_connections=`).
    pub min_connections: Option<u32>,
    /// Longest a pooled connection is reused before it is replaced (`max_lifetime=30m`).
    pub max_lifetime: Option<Duration>,
    /// Longest a call waits for a free connection (`acquire_timeout=5s`).
    pub acquire_timeout: Option<Duration>,
    /// Longest one backend call may take, retries included, before it fails (`timeout=30s`).
    pub timeout: Option<Duration>,
    /// Expire an execution this long after its last save (`ttl=24h`; backends with expiry).
    pub ttl: Option<Duration>,
}

/// A blob's content address: defined in [`crate::hash`] (which depends on nothing), re-exported
/// here where backends have always named it.
pub use crate::hash::BlobHash;

/// What [`Maintain::compact`] (and [`crate::Store::compact`]) did, and what it could not do.
///
/// `caveats` empty means: nothing deleted before the call can be read from the files the backend
/// controls. Copies outside them (replicas, backups, archived WAL, snapshots taken by the
/// operator) are never covered.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct CompactReport {
    /// The backend (`sled`, `PostgreSQL`, ...).
    pub backend: String,
    /// What was done, one line each (on a Redis Cluster, prefixed by the node's address).
    pub steps: Vec<String>,
    /// What may still hold deleted data after the call, each with how the operator fixes it.
    pub caveats: Vec<String>,
    /// Bytes the store occupied before, when the backend can tell.
    pub bytes_before: Option<u64>,
    /// Bytes the store occupies after, when the backend can tell.
    pub bytes_after: Option<u64>,
}

impl CompactReport {
    /// An empty report for `backend`.
    pub fn new(backend: impl Into<String>) -> Self {
        CompactReport {
            backend: backend.into(),
            ..CompactReport::default()
        }
    }

    /// Records something done.
    pub fn step(&mut self, text: impl Into<String>) {
        self.steps.push(text.into());
    }

    /// Records something that may still hold deleted data, and what to do about it.
    pub fn caveat(&mut self, text: impl Into<String>) {
        self.caveats.push(text.into());
    }
}

/// Damage a backend found in its own storage and recorded, so that every later open and
/// [`crate::Store`] check reports it: for example acknowledged frames that sled's recovery rolled
/// back after its files were damaged. The lost sequence numbers are never handed out again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RecordedDamage {
    /// The log (execution) it concerns, when known.
    pub log: Option<String>,
    /// The sequence numbers lost, `from..to`, when known.
    pub lost: Option<(u64, u64)>,
    /// What was found, where, and what it means.
    pub detail: String,
}

/// How long a log's frames live on a backend with per-log expiry (Redis `ttl=`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Expiry {
    /// The backend's configured expiry applies (an execution's log).
    #[default]
    Configured,
    /// Never expires: the store's own logs (the gc log, an encrypted store's descriptor), which
    /// must outlive every execution.
    Never,
}

/// One log's part of an atomic [`Backend::commit`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogAppend {
    /// The log (one per execution).
    pub log: String,
    /// The sequence number the first frame must get: the log's next sequence number as the writer
    /// last saw it.
    pub expected_seq: u64,
    /// The frames, in order; the i-th gets `expected_seq + i`.
    pub frames: Vec<Vec<u8>>,
    /// How long the log lives after this append, on backends with expiry (others ignore it).
    pub expiry: Expiry,
}

impl LogAppend {
    /// Frames for `log`, the first at `expected_seq`, under the backend's configured expiry.
    pub fn new(log: impl Into<String>, expected_seq: u64, frames: Vec<Vec<u8>>) -> Self {
        LogAppend {
            log: log.into(),
            expected_seq,
            frames,
            expiry: Expiry::Configured,
        }
    }

    /// The same append, never expiring (see [`Expiry::Never`]).
    pub fn never_expiring(mut self) -> Self {
        self.expiry = Expiry::Never;
        self
    }
}

/// A blob and its content address, as [`Backend::put_blobs`] and [`Backend::commit`] take them.
pub type Blob = (BlobHash, Vec<u8>);

/// What a backend can do beyond the required primitives, said once, in one value
/// ([`Backend::capabilities`]). Build it from [`Capabilities::new`] and set what applies:
///
/// ```
/// # use ckpt::backend::Capabilities;
/// let mut caps = Capabilities::new();
/// caps.single_process = true;
/// assert!(caps.atomic_across_logs && caps.rewrite.is_none());
/// ```
#[derive(Clone, Copy)]
#[non_exhaustive]
pub struct Capabilities<'a> {
    /// Whether [`Backend::commit`] is atomic across different logs, as the contract asks. A
    /// backend that can only make one log's append atomic (Redis Cluster: logs live in different
    /// hash slots) says false and refuses multi-log commits; the store then cannot fence saves
    /// against a gc running in another process (see `store::reclaim`). Default true.
    pub atomic_across_logs: bool,
    /// Whether [`Backend::commit`] sends its blobs in the same round trip as the append and skips
    /// blobs already stored on its own (`SET NX`, `ON CONFLICT DO NOTHING`). The store then sends
    /// a save's few new blobs without first asking which are missing, saving a round trip per
    /// save. Default false.
    pub blobs_with_append: bool,
    /// Whether no other process can reach this storage while this backend is open (sled locks
    /// its directory). The store then knows that a gc another process began and never ended is
    /// dead, and ends it at once instead of waiting out its lease. Default false; a wrapper that
    /// stands for another process (a test double) must say false.
    pub single_process: bool,
    /// Re-sealing stored bytes in place, for [`crate::Store::rekey`]; `None` refuses rekey.
    pub rewrite: Option<&'a dyn Rewrite>,
    /// Waking a watcher when another process appends ([`crate::Store::watch`]); `None` makes
    /// watchers poll.
    pub notify: Option<&'a dyn Notify>,
    /// Size on the medium and compaction; `None` reports no size and a compaction caveat.
    pub maintain: Option<&'a dyn Maintain>,
    /// The engine's own consistency checks and recorded damage, for [`crate::Store::verify`];
    /// `None` finds nothing.
    pub inspect: Option<&'a dyn Inspect>,
    /// A table of derived records beside the logs, where the store keeps each execution's
    /// projection so that a reopen does not fold the whole log; `None`: every projection is
    /// folded from its log.
    pub side_table: Option<&'a dyn SideTable>,
    /// An ordered table of byte keys where the store keeps its search index (see
    /// `store::search_index`); `None`: search always scans.
    pub search_table: Option<&'a dyn SearchTable>,
}

impl Capabilities<'_> {
    /// The required primitives only: atomic across logs, nothing optional.
    pub fn new() -> Self {
        Capabilities {
            atomic_across_logs: true,
            blobs_with_append: false,
            single_process: false,
            rewrite: None,
            notify: None,
            maintain: None,
            inspect: None,
            side_table: None,
            search_table: None,
        }
    }
}

impl Default for Capabilities<'_> {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Capabilities<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Capabilities")
            .field("atomic_across_logs", &self.atomic_across_logs)
            .field("blobs_with_append", &self.blobs_with_append)
            .field("single_process", &self.single_process)
            .field("rewrite", &self.rewrite.is_some())
            .field("notify", &self.notify.is_some())
            .field("maintain", &self.maintain.is_some())
            .field("inspect", &self.inspect.is_some())
            .field("side_table", &self.side_table.is_some())
            .field("search_table", &self.search_table.is_some())
            .finish()
    }
}

/// The primitives a storage engine provides. Every method is required; what a backend can do
/// beyond them it says in [`Backend::capabilities`]. Conveniences ([`BackendExt`]) and every
/// derived operation live above the trait, in [`crate::store`].
///
/// # Contract
///
/// An implementation:
/// - **must** number the frames of a log with consecutive sequence numbers starting at 1, and report
///   the next one with [`Backend::next_seq`] (1 for a log never appended to);
/// - **must** make [`Backend::commit`] compare-and-append: for every [`LogAppend`] in the call, the
///   log's next sequence number must equal `expected_seq`, otherwise no frame at all is written and
///   the call returns [`crate::Error::Conflict`]. When every check passes, all frames of all logs in
///   the call become visible together (all or nothing), at `expected_seq`, `expected_seq + 1`, ...;
///   a backend that cannot do this across logs says so in [`Capabilities::atomic_across_logs`] and
///   refuses such calls;
/// - **must** make an append durable before returning (unless the user relaxed durability, e.g.
///   `sled://...?sync=false`), and make every blob put before an append at least as durable as it;
/// - **must** never reuse a sequence number: [`Backend::truncate`] removes frames but keeps the
///   log's next sequence number, and the log stays listed by [`Backend::list_logs`];
/// - **must** return frames and blobs byte for byte as given; verification (checksums, hashes) is
///   done above the backend, which only reports what it holds;
/// - **must** treat [`Backend::put_blobs`] as idempotent: putting a hash that exists is a no-op;
/// - **must** honour [`LogAppend::expiry`] if it expires logs at all: the store's own logs are
///   marked [`Expiry::Never`];
/// - **must** be safe to share between tasks and between [`crate::Store`]s (`Arc<dyn Backend>`);
/// - **must**, if it offers [`Maintain`], leave none of the deleted frames and blobs readable in
///   its files after [`Maintain::compact`] as far as its server lets it, and report what it could
///   not do (see [`CompactReport`]).
///
/// # Adding a backend
///
/// 1. A folder or file under `src/backend/` behind a cargo feature, holding a type that implements
///    every method of [`Backend`] (twelve primitives, a name and [`Backend::capabilities`]), plus
///    whichever of [`Rewrite`], [`Notify`], [`Maintain`] and [`Inspect`] it can do, announced in
///    its capabilities. Transient-error retries inside one call use [`retry`] (backoff, the
///    retry-until-deadline loop, durations in URL options).
/// 2. A URL scheme in [`crate::url`] that opens it.
/// 3. A `ckpt::testing::Harness` (feature `testing`) for it and one line in a test file:
///    `ckpt::conformance_tests!(mine, MyHarness::new());` — the backend is done when the whole
///    suite passes (and, for a new storage engine, the crash and corruption tests run on it).
#[async_trait]
pub trait Backend: Send + Sync + fmt::Debug + 'static {
    /// A short name for messages (`memory`, `sled`, ...).
    fn name(&self) -> &'static str;

    /// What this backend can do beyond the required primitives (see [`Capabilities`]).
    fn capabilities(&self) -> Capabilities<'_>;

    /// The sequence number the next frame appended to `log` will get (1 for an unknown log).
    async fn next_seq(&self, log: &str) -> Result<u64>;

    /// Stores `blobs`, then atomically appends frames to one or more logs, each fenced by its
    /// expected sequence number. Returns [`crate::Error::Conflict`] (writing no frame; the blobs
    /// may be stored) when any log has moved on. Backends that can write both in one atomic
    /// write (and one flush) do; others put the blobs first, so a failed append leaves at most
    /// unreferenced blobs, which gc reclaims.
    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()>;

    /// Up to `limit` frames of `log` with sequence numbers `>= from`, in ascending order.
    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>>;

    /// Every log that has been appended to, in no particular order.
    async fn list_logs(&self) -> Result<Vec<String>>;

    /// Raises the next sequence number of `log` to `next_seq` if it is lower (never lowers it),
    /// creating the log if needed; writes no frame. Lets frames copied from another store keep
    /// their sequence numbers when the source's log no longer starts at 1.
    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()>;

    /// Removes the frames of `log` with sequence numbers `< before`; keeps its next sequence number.
    async fn truncate(&self, log: &str, before: u64) -> Result<()>;

    /// Stores blobs under their hashes; a hash already present is left as it is.
    async fn put_blobs(&self, blobs: Vec<Blob>) -> Result<()>;

    /// The blobs stored under `hashes`, in the same order (`None` where nothing is stored).
    /// Backends on a network **should** fetch them in one round trip (a state's many leaves are
    /// read at once on a cold load).
    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Those of `hashes` that are not stored (in any order), so writers can skip sending content
    /// the backend already has.
    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>>;

    /// The hashes of every stored blob.
    async fn list_blobs(&self) -> Result<Vec<BlobHash>>;

    /// Deletes blobs; unknown hashes are ignored.
    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()>;

    /// Makes everything written so far durable.
    async fn flush(&self) -> Result<()>;
}

/// Conveniences over the [`Backend`] primitives, for every backend (bring it into scope:
/// `use ckpt::backend::BackendExt`).
#[async_trait]
pub trait BackendExt: Backend {
    /// [`Backend::commit`] with no blobs.
    async fn append(&self, appends: Vec<LogAppend>) -> Result<()> {
        self.commit(appends, Vec::new()).await
    }

    /// The blob stored under `hash`, if any.
    async fn get_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        Ok(self
            .get_blobs(std::slice::from_ref(hash))
            .await?
            .into_iter()
            .next()
            .flatten())
    }

    /// Whether a blob is stored under `hash`.
    async fn has_blob(&self, hash: &BlobHash) -> Result<bool> {
        Ok(self
            .missing_blobs(std::slice::from_ref(hash))
            .await?
            .is_empty())
    }
}

impl<B: Backend + ?Sized> BackendExt for B {}

/// Re-sealing stored bytes in place: the capability [`crate::Store::rekey`] needs
/// ([`Capabilities::rewrite`]).
#[async_trait]
pub trait Rewrite: Send + Sync {
    /// Replaces the bytes of existing frames of `log` (sequence numbers that hold no frame are
    /// skipped), durably and atomically per call. Content and place stay the same: only the
    /// sealing changes.
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()>;

    /// Replaces the stored bytes of existing blobs (unknown hashes are skipped), durably.
    async fn rewrite_blobs(&self, blobs: Vec<Blob>) -> Result<()>;
}

/// Waking watchers when another process appends ([`Capabilities::notify`]): PostgreSQL
/// `LISTEN`, Redis `XREAD BLOCK`.
#[async_trait]
pub trait Notify: Send + Sync {
    /// Waits until `log` may have a frame numbered `next_seq` or later, or until `timeout` has
    /// passed, whichever is first. Returning early is always allowed: the caller rechecks.
    async fn wait_for_append(&self, log: &str, next_seq: u64, timeout: Duration) -> Result<()>;
}

/// Size and compaction of the backend's files ([`Capabilities::maintain`]).
#[async_trait]
pub trait Maintain: Send + Sync {
    /// Bytes the backend occupies on its medium, when it can tell.
    async fn stored_bytes(&self) -> Result<Option<u64>>;

    /// Memory the server uses, for backends on a server that keeps everything in memory
    /// (Redis: `used_memory`, what such a store really costs); `None` for the others.
    async fn server_memory(&self) -> Result<Option<u64>>;

    /// Rewrites the backend's storage so that frames and blobs deleted before the call
    /// (truncated logs, deleted blobs: what [`crate::Store::gc`] removed) can no longer be read
    /// from its files, as far as the server allows.
    ///
    /// An implementation **must** leave live data untouched and readable, and **must** report
    /// in [`CompactReport::caveats`] whatever may still hold deleted bytes (a setting that keeps
    /// old files, a step the server refused), each with what the operator can do; it **may**
    /// skip a step it lacks the rights for instead of failing, saying so in a caveat. It fails
    /// only when it could not even start, or a step it must wait for did not finish. It **may**
    /// take long and block writers while it runs (a table rewrite). A backend whose compaction
    /// needs the store closed returns [`crate::Error::InvalidInput`] saying how to run it.
    async fn compact(&self) -> Result<CompactReport>;
}

/// The storage engine's own view of damage ([`Capabilities::inspect`]), for
/// [`crate::Store::verify`] and every open.
#[async_trait]
pub trait Inspect: Send + Sync {
    /// Damage this backend found in its own files and recorded (see [`RecordedDamage`]), oldest
    /// first. A backend whose engine can roll acknowledged writes back silently (sled) **must**
    /// detect such a rollback when it opens and record it here.
    async fn recorded_damage(&self) -> Result<Vec<RecordedDamage>>;

    /// What the storage engine's own consistency check finds wrong, one sentence each (SQLite:
    /// `PRAGMA integrity_check`, which finds a damaged b-tree that hides rows from every query
    /// without an error). May read the whole store.
    async fn check_storage(&self) -> Result<Vec<String>>;

    /// What the backend finds wrong in how it keeps `log` that its frames cannot show, one
    /// sentence each (e.g. a stored next sequence number below the last frame, which the
    /// backend must then ignore: [`Backend::next_seq`] never answers below the last frame + 1).
    async fn log_problems(&self, log: &str) -> Result<Vec<String>>;
}

/// Records derived from the logs, kept beside them ([`Capabilities::side_table`]): the store
/// keeps each execution's projection there (key `p/<execution>`), so that opening a long
/// execution reads one record and the log's tail instead of the whole log, and listing
/// executions reads one table.
///
/// Records are a cache. The store checks each against its log before trusting it (it names the
/// log position it was made at, and the hash of the frame there), so a lost, stale or damaged
/// record costs time, never data. An implementation:
/// - **must** replace a record whole: a reader gets the old bytes or the new, never a mix;
/// - **may** lose records written shortly before a crash (they need not be durable when
///   [`SideTable::put_records`] returns), and **may** drop them all at any time;
/// - **must** keep them out of the logs and blobs: they are never returned by
///   [`Backend::scan`], [`Backend::list_logs`] or [`Backend::list_blobs`].
#[async_trait]
pub trait SideTable: Send + Sync {
    /// Stores records, each replacing any record under the same key.
    async fn put_records(&self, records: Vec<(String, Vec<u8>)>) -> Result<()>;

    /// The records under `keys`, in the same order (`None` where there is none).
    async fn get_records(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Every record whose key starts with `prefix`, in no particular order.
    async fn scan_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>>;

    /// Deletes records; unknown keys are ignored.
    async fn delete_records(&self, keys: &[String]) -> Result<()>;

    /// Every log with its next sequence number, in one call: what [`Backend::list_logs`] and
    /// [`Backend::next_seq`] of each would say.
    async fn log_tails(&self) -> Result<Vec<(String, u64)>>;

    /// Whether [`SideTable::get_records`] of many known keys costs less than one
    /// [`SideTable::scan_records`] of their prefix: true where a scan visits every key of the
    /// database whatever the prefix (Redis `SCAN`), false (the default) where a prefix scan is
    /// one range read.
    fn gets_beat_scans(&self) -> bool {
        false
    }
}

/// An ordered table of byte keys and values beside the logs ([`Capabilities::search_table`]),
/// where the store keeps its search index: postings, checkpoint headers in time order, and per
/// execution the log position the index covers. What the keys mean is the store's business
/// (`store::search_index`); the backend only keeps them in order.
///
/// The index is derived from the logs and checked against them before every search (each
/// execution's entry names the log position it was made at), so a lost write costs time, never
/// a wrong answer. An implementation:
/// - **must** apply one [`SearchTable::write_index`] call all or nothing (deletes, then puts),
///   and calls from one task in the order they were made: a crash may lose the newest calls,
///   never half of one, nor an older call while keeping a newer;
/// - **must** order keys by their bytes (`memcmp`, shorter first on a tie) in
///   [`SearchTable::scan_index`];
/// - **may** keep writes in memory until [`Backend::flush`] (they need not be durable when the
///   call returns);
/// - **must** keep the entries out of the logs, blobs and side records: they are never
///   returned by [`Backend::scan`], [`Backend::list_blobs`] or [`SideTable::scan_records`];
/// - **must** store no more than it is given: the store never puts state text into the table
///   of an encrypted store, and the table must not add any.
#[async_trait]
pub trait SearchTable: Send + Sync {
    /// Deletes the keys in `delete`, then stores `put`, each replacing any value under its key,
    /// all or nothing.
    async fn write_index(&self, put: Vec<(Vec<u8>, Vec<u8>)>, delete: Vec<Vec<u8>>) -> Result<()>;

    /// Up to `limit` entries whose key starts with `prefix` and is greater than `after` (when
    /// given), in ascending key order.
    async fn scan_index(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>>;

    /// The values under `keys`, in the same order (`None` where there is none).
    async fn get_index(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>>;

    /// Deletes every entry of the table.
    async fn clear_index(&self) -> Result<()>;

    /// Entries and bytes (keys plus values) the table holds, for figures and `ckpt stats`.
    async fn index_size(&self) -> Result<(u64, u64)>;
}

/// The smallest byte string greater than every string that starts with `prefix` (`None` when
/// there is none: `prefix` is empty or all `0xff`), for backends that scan a prefix as a range.
pub fn prefix_end(prefix: &[u8]) -> Option<Vec<u8>> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return Some(end);
        }
    }
    None
}
