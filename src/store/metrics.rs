//! Counters of what a store did, for a metrics exporter: [`Metrics`] (relaxed atomics, one set
//! per [`Store`] and shared by its clones) and [`MetricsSnapshot`] (their values at one
//! moment, a plain struct). Counted where the work is known: the save family and reads in their
//! operations (`trace`), backend traffic, errors and transient retries in the traced backend
//! (`trace`), store-level retries in the save path and delete/clear, reclaimed space in gc.

use std::sync::atomic::{AtomicU64, Ordering};

use super::Store;

/// The live counters of one store, shared by its clones; read them with [`Metrics::snapshot`]
/// (or [`Store::metrics`]). Every counter only grows, from 0 when the store was opened: an
/// exporter reports them as counters (Prometheus `_total`), and rates come from their
/// differences. Counting is a relaxed atomic add, cheap enough for every save.
#[derive(Debug, Default)]
pub struct Metrics {
    pub(super) saves: AtomicU64,
    pub(super) checkpoints_saved: AtomicU64,
    pub(super) save_failures: AtomicU64,
    pub(super) writes_saved: AtomicU64,
    pub(super) loads: AtomicU64,
    pub(super) deletes: AtomicU64,
    pub(super) conflicts: AtomicU64,
    pub(super) retries: AtomicU64,
    pub(super) backend_calls: AtomicU64,
    pub(super) backend_errors: AtomicU64,
    pub(super) frames_written: AtomicU64,
    pub(super) blobs_written: AtomicU64,
    pub(super) bytes_written: AtomicU64,
    pub(super) bytes_read: AtomicU64,
    pub(super) gc_runs: AtomicU64,
    pub(super) gc_frames_reclaimed: AtomicU64,
    pub(super) gc_bytes_reclaimed: AtomicU64,
    pub(super) gc_blobs_reclaimed: AtomicU64,
}

/// What a store's [`Metrics`] counted, at one moment: every field a counter since the store
/// was opened (see [`Store::metrics`]). Field names are what an exporter names its series
/// (`ckpt_saves_total`, ...); [`MetricsSnapshot::counters`] lists them with their values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct MetricsSnapshot {
    /// Save calls that succeeded (`save`, `save_with_parent`, `save_after`,
    /// `save_with_parent_after`, `save_batch`; a batch counts once).
    pub saves: u64,
    /// Checkpoints those saves stored (a batch counts each of its checkpoints).
    pub checkpoints_saved: u64,
    /// Save calls that failed (each also logged once, see the README's "Tracing and metrics").
    pub save_failures: u64,
    /// Writes attached to checkpoints ([`Store::put_writes`]).
    pub writes_saved: u64,
    /// Checkpoints read with their state (`load`, `at_version`, `latest`, and each one `list`
    /// returned).
    pub loads: u64,
    /// Delete and clear events appended.
    pub deletes: u64,
    /// Operations that failed with [`crate::Error::Conflict`]: a precondition on the latest
    /// checkpoint (`save_after`) that another writer broke.
    pub conflicts: u64,
    /// Attempts made again: a save, write, delete or clear that lost a race for its log (or
    /// was fenced off by a gc elsewhere) and was prepared again, and backend calls retried
    /// after a transient failure (a SQL or Redis connection lost, a busy database).
    pub retries: u64,
    /// Calls to the backend's primitives (append, scan, blob puts and gets, ...).
    pub backend_calls: u64,
    /// Backend calls that failed, lost races (conflicts) included.
    pub backend_errors: u64,
    /// Log frames the backend accepted.
    pub frames_written: u64,
    /// Blobs handed to the backend (a blob it already had and skipped counts: it was sent).
    pub blobs_written: u64,
    /// Bytes of those frames and blobs, as stored (sealed, compressed).
    pub bytes_written: u64,
    /// Bytes of frames and blobs read from the backend (what caches answered is not counted).
    pub bytes_read: u64,
    /// gc runs that ended.
    pub gc_runs: u64,
    /// Log frames gc removed.
    pub gc_frames_reclaimed: u64,
    /// Bytes of those frames (a removed blob's size is not known without reading it).
    pub gc_bytes_reclaimed: u64,
    /// Blobs gc removed.
    pub gc_blobs_reclaimed: u64,
}

impl Metrics {
    /// The counters' values now (each read on its own: a snapshot taken while operations run
    /// may hold one's effect on one counter and not yet on another).
    pub fn snapshot(&self) -> MetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MetricsSnapshot {
            saves: get(&self.saves),
            checkpoints_saved: get(&self.checkpoints_saved),
            save_failures: get(&self.save_failures),
            writes_saved: get(&self.writes_saved),
            loads: get(&self.loads),
            deletes: get(&self.deletes),
            conflicts: get(&self.conflicts),
            retries: get(&self.retries),
            backend_calls: get(&self.backend_calls),
            backend_errors: get(&self.backend_errors),
            frames_written: get(&self.frames_written),
            blobs_written: get(&self.blobs_written),
            bytes_written: get(&self.bytes_written),
            bytes_read: get(&self.bytes_read),
            gc_runs: get(&self.gc_runs),
            gc_frames_reclaimed: get(&self.gc_frames_reclaimed),
            gc_bytes_reclaimed: get(&self.gc_bytes_reclaimed),
            gc_blobs_reclaimed: get(&self.gc_blobs_reclaimed),
        }
    }
}

/// Adds `n` to a counter.
pub(super) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

impl MetricsSnapshot {
    /// Every counter with its name, in the order of the fields: what an exporter iterates to
    /// publish them (`ckpt_{name}_total`), and what `ckpt -v` prints.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ckpt::Error> {
    /// let store = ckpt::Store::memory();
    /// store.save(ckpt::Checkpoint::new("run", "plan", &1)?).await?;
    /// let counters = store.metrics().counters();
    /// assert!(counters.contains(&("saves", 1)));
    /// # Ok(()) }
    /// ```
    pub fn counters(&self) -> [(&'static str, u64); 18] {
        [
            ("saves", self.saves),
            ("checkpoints_saved", self.checkpoints_saved),
            ("save_failures", self.save_failures),
            ("writes_saved", self.writes_saved),
            ("loads", self.loads),
            ("deletes", self.deletes),
            ("conflicts", self.conflicts),
            ("retries", self.retries),
            ("backend_calls", self.backend_calls),
            ("backend_errors", self.backend_errors),
            ("frames_written", self.frames_written),
            ("blobs_written", self.blobs_written),
            ("bytes_written", self.bytes_written),
            ("bytes_read", self.bytes_read),
            ("gc_runs", self.gc_runs),
            ("gc_frames_reclaimed", self.gc_frames_reclaimed),
            ("gc_bytes_reclaimed", self.gc_bytes_reclaimed),
            ("gc_blobs_reclaimed", self.gc_blobs_reclaimed),
        ]
    }
}

impl std::fmt::Display for MetricsSnapshot {
    /// `saves=3 checkpoints_saved=3 ...`: every counter, on one line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (name, value)) in self.counters().iter().enumerate() {
            if i > 0 {
                f.write_str(" ")?;
            }
            write!(f, "{name}={value}")?;
        }
        Ok(())
    }
}

impl Store {
    /// What this store (and its clones) did since it was opened: saves, loads, bytes written
    /// and read, conflicts, retries, gc reclaimed space. The counters an exporter
    /// (Prometheus, OpenTelemetry) reads; see [`MetricsSnapshot`].
    ///
    /// A store opened again ([`Store::reopened`], [`Store::with_same_keys`]) counts from 0.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.inner.metrics.snapshot()
    }

    /// The live counters behind [`Store::metrics`], for an exporter that reads them after the
    /// store itself is gone (the `ckpt` command prints them when a command ends).
    pub fn metrics_handle(&self) -> std::sync::Arc<Metrics> {
        self.inner.metrics.clone()
    }
}
