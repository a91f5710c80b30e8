//! gc's sweep: frames no live checkpoint needs are truncated from each log, blobs no remaining
//! frame references are deleted. The fence that makes this safe against saves in other
//! processes is `reclaim`'s; keeping cached stored states honest after a gc or rekey moved
//! blobs is here (`revalidate_stored_state`, `forget_stored_states`).

use std::collections::HashSet;
use std::time::Duration;

use super::index::ExecIndex;
use super::metrics::add;
use super::trace::op_span;
use super::{reclaim, BlobCache, GcReport, Store};
use crate::backend::BlobHash;
use crate::codec::tree;
use crate::error::{Error, Result};
use tracing::field::Empty;

impl Store {
    /// Reclaims space: removes log frames of cleared and deleted checkpoints that no live
    /// checkpoint's state depends on, and every blob no remaining frame references. Never
    /// removes anything a live checkpoint needs. Safe while other tasks, processes and machines
    /// save: saves of this process wait while it runs, and saves elsewhere that raced it are
    /// fenced off and redone (see the `reclaim` module; on Redis Cluster, repaired after the
    /// fact). Returns [`Error::Busy`] while another gc runs.
    pub async fn gc(&self) -> Result<GcReport> {
        let span = op_span!(
            "ckpt.gc", self;
            frames_removed = Empty,
            blobs_removed = Empty,
            bytes = Empty
        );
        let op = async {
            let _exclusive = self.inner.gc_lock.write().await;
            let started = std::time::Instant::now();
            let begin = self.begin_gc(reclaim::DEFAULT_LEASE).await?;
            let result = self.collect_garbage(started, reclaim::DEFAULT_LEASE).await;
            let ended = self.end_gc(begin + 1).await;
            let report = result?;
            ended?;
            Ok(report)
        };
        let (report, bytes) = self.traced(&span, op).await?;
        // The search index entries of deleted checkpoints go with them (off the gc lock: this
        // reads states).
        self.reclaim_index().await?;
        let metrics = &self.inner.metrics;
        add(&metrics.gc_runs, 1);
        add(&metrics.gc_frames_reclaimed, report.frames_removed);
        add(&metrics.gc_bytes_reclaimed, bytes);
        add(&metrics.gc_blobs_reclaimed, report.blobs_removed);
        span.record("frames_removed", report.frames_removed);
        span.record("blobs_removed", report.blobs_removed);
        span.record("bytes", bytes);
        Ok(report)
    }

    /// A gc or rekey ran since `idx`'s stored form was cached. gc never deletes a blob the
    /// newest save's chain references, but a rekey moves every blob: keep the cache (stamped
    /// `epoch`) if the blobs it names are all still stored, else drop it to be rebuilt from the
    /// log. One lookup, where a rebuild would read the chain again after every gc.
    pub(super) async fn revalidate_stored_state(
        &self,
        idx: &mut ExecIndex,
        epoch: u64,
    ) -> Result<()> {
        let Some(cached) = &idx.newest_state else {
            return Ok(());
        };
        let mut refs = HashSet::new();
        tree::collect_refs(&cached.stored, &mut refs);
        let hashes: Vec<BlobHash> = refs.iter().map(|r| r.hash()).collect();
        if hashes.is_empty() || self.inner.traced.missing_blobs(&hashes).await?.is_empty() {
            idx.stored_epoch = epoch;
        } else {
            idx.newest_state = None;
        }
        Ok(())
    }

    /// Drops every cached stored form (states holding blob addresses) of this store's
    /// executions: after a rekey moved blobs, a snapshot written from one would point at
    /// addresses that no longer exist.
    pub(super) async fn forget_stored_states(&self) {
        let handles: Vec<_> = match self.inner.executions.lock() {
            Ok(map) => map.values().cloned().collect(),
            Err(_) => return,
        };
        for handle in handles {
            handle.lock().await.newest_state = None;
        }
    }

    /// gc's work, between its begin and end marks; with the report, the bytes of the frames
    /// it removed.
    pub(super) async fn collect_garbage(
        &self,
        started: std::time::Instant,
        lease: Duration,
    ) -> Result<(GcReport, u64)> {
        let backend = &self.inner.traced;
        let mut report = GcReport::default();
        let mut frame_bytes = 0u64;
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
            let write_seqs: HashSet<u64> = idx.writes.keys().map(|(_, seq)| *seq).collect();
            for (seq, bytes) in &frames {
                if *seq < keep_from {
                    report.frames_removed += 1;
                    frame_bytes += bytes.len() as u64;
                    continue;
                }
                if idx.saves.contains_key(seq) {
                    self.decode_body(&idx.log, *seq, bytes)?
                        .collect_refs(&mut referenced);
                } else if write_seqs.contains(seq) {
                    self.decode_write(&idx.log, *seq, bytes)?
                        .collect_refs(&mut referenced);
                }
            }
            if frames.first().is_some_and(|(s, _)| *s < keep_from) {
                backend.truncate(&log, keep_from).await?;
            }
            idx.saves.retain(|v, _| *v >= keep_from);
            idx.writes.retain(|(_, seq), _| *seq >= keep_from);
            if idx.saves.is_empty() {
                idx.newest_state = None;
            }
            idx.log_bytes = idx.saves.values().map(|e| e.frame_len).sum::<u64>()
                + idx.writes.values().map(|e| e.frame_len).sum::<u64>();
            // The persisted projection counted the bytes gc just removed: write it again.
            idx.persisted_at = 0;
            let _ = self.persist(&mut idx).await;
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
        Ok((report, frame_bytes))
    }

    /// The blobs `refs` name, with the chunks of every chunked leaf among them (for gc's mark).
    pub(super) async fn with_chunks(&self, refs: HashSet<tree::Ref>) -> Result<HashSet<BlobHash>> {
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
}
