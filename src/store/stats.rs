//! [`Store::stats`]: what was offered against what is stored, per execution and in total.
//!
//! A projection over the whole store (every execution's readable checkpoints, every stored
//! blob), computed here so that callers (`ckpt stats`) never walk the backend themselves.

use serde::Serialize;

use super::trace::op_span;
use super::{HistoryQuery, Store, FETCH_BATCH};
use crate::error::{Error, Result};
use tracing::field::Empty;

/// What [`Store::stats`] found. Serialises as `ckpt stats --json` prints it:
/// `{"executions": [...], "totals": {...}}`.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsReport {
    /// Every execution [`Store::executions`] lists, by id.
    pub executions: Vec<ExecutionStats>,
    /// The whole store.
    pub totals: StatsTotals,
}

/// One execution, as [`Store::stats`] counts it (a damaged one counts what can be read).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct ExecutionStats {
    /// The execution id.
    pub execution: String,
    /// Readable live checkpoints.
    pub checkpoints: usize,
    /// The sum of the encoded sizes of their states: what was offered.
    pub logical_bytes: u64,
    /// Bytes of its save frames in the log (long values live in shared blobs, not counted).
    pub log_bytes: u64,
    /// Frames that fail verification, by sequence number.
    pub damaged_frames: Vec<u64>,
    /// Live versions that cannot be loaded because of them.
    pub unreadable_versions: Vec<u64>,
}

/// The whole store, as [`Store::stats`] counts it.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct StatsTotals {
    /// Readable live checkpoints of every execution.
    pub checkpoints: usize,
    /// Logical bytes of every execution.
    pub logical_bytes: u64,
    /// Log bytes of every execution.
    pub log_bytes: u64,
    /// Stored blobs.
    pub blobs: u64,
    /// Bytes of every stored blob, as stored (compressed, sealed).
    pub blob_bytes: u64,
    /// Bytes the backend occupies on its medium, when it can tell.
    pub stored_bytes: Option<u64>,
    /// Dedup and compression: logical bytes / (log + blob bytes); `None` when nothing is stored.
    pub ratio: Option<f64>,
}

impl Store {
    /// Logical bytes (what was offered) against bytes stored, per execution and in total.
    /// Reads every execution's projection and the size of every stored blob, but no state.
    pub async fn stats(&self) -> Result<StatsReport> {
        let span = op_span!("ckpt.stats", self; count = Empty);
        let op = async {
            let mut executions = Vec::new();
            for summary in self.executions().await? {
                let exec = summary.execution_id;
                let headers = self.history(&exec, HistoryQuery::default()).await?;
                executions.push(ExecutionStats {
                    checkpoints: headers.len(),
                    logical_bytes: headers.iter().map(|h| h.state_size).sum(),
                    log_bytes: summary.log_bytes,
                    execution: exec,
                    damaged_frames: summary.damaged_frames,
                    unreadable_versions: summary.unreadable_versions,
                });
            }
            let (blobs, blob_bytes) = self.blob_sizes().await?;
            let stored_bytes = self.stored_bytes().await?;
            let logical_bytes: u64 = executions.iter().map(|e| e.logical_bytes).sum();
            let log_bytes: u64 = executions.iter().map(|e| e.log_bytes).sum();
            let kept = log_bytes + blob_bytes;
            let totals = StatsTotals {
                checkpoints: executions.iter().map(|e| e.checkpoints).sum(),
                logical_bytes,
                log_bytes,
                blobs,
                blob_bytes,
                stored_bytes,
                ratio: (kept > 0).then(|| logical_bytes as f64 / kept as f64),
            };
            Ok(StatsReport { executions, totals })
        };
        let report: StatsReport = self.traced(&span, op).await?;
        span.record("count", report.executions.len());
        Ok(report)
    }

    /// How many blobs are stored and their bytes as stored. A blob listed but gone by the time
    /// it is read (a gc elsewhere) is not counted.
    async fn blob_sizes(&self) -> Result<(u64, u64)> {
        let backend = &self.inner.traced;
        let (mut blobs, mut blob_bytes) = (0u64, 0u64);
        let hashes = backend.list_blobs().await?;
        for group in hashes.chunks(FETCH_BATCH) {
            let stored = backend.get_blobs(group).await?;
            if stored.len() != group.len() {
                return Err(Error::Backend {
                    backend: backend.name(),
                    context: format!("reading {} blobs", group.len()),
                    source: format!("{} came back (a bug in the backend)", stored.len()).into(),
                });
            }
            for bytes in stored.into_iter().flatten() {
                blobs += 1;
                blob_bytes += bytes.len() as u64;
            }
        }
        Ok((blobs, blob_bytes))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{Checkpoint, Store};

    #[tokio::test]
    async fn counts_what_was_offered_and_what_is_stored() {
        let store = Store::memory();
        let long = "x".repeat(4096);
        for step in 0..3 {
            let state = json!({ "step": step, "doc": long });
            store
                .save(Checkpoint::new("e", "n", &state).unwrap())
                .await
                .unwrap();
        }
        let report = store.stats().await.unwrap();
        assert_eq!(report.executions.len(), 1);
        let e = &report.executions[0];
        assert_eq!((e.execution.as_str(), e.checkpoints), ("e", 3));
        assert!(e.logical_bytes > 3 * 4096, "{report:?}");
        let t = &report.totals;
        assert_eq!(t.checkpoints, 3);
        assert_eq!(t.logical_bytes, e.logical_bytes);
        assert!(t.blobs >= 1 && t.blob_bytes > 0, "{report:?}");
        let json = serde_json::to_value(&report).unwrap();
        assert!(json["totals"]["ratio"].as_f64().unwrap() > 1.0, "{json}");
        assert_eq!(json["executions"][0]["execution"], "e");
    }
}
