//! Answers read from projections alone, without rebuilding any state: history (headers
//! filtered newest first), the executions with their summaries, one execution's damage, and the
//! executions that have a log.

use std::time::UNIX_EPOCH;

use super::{from_micros, reclaim, ExecutionDamage, ExecutionSummary, HistoryQuery, Store};
use crate::checkpoint::{validate_execution_id, CheckpointHeader};
use crate::error::Result;

impl Store {
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
                log_bytes: idx.saves.values().map(|e| e.frame_len).sum::<u64>()
                    + idx.writes.values().map(|e| e.frame_len).sum::<u64>(),
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
}
