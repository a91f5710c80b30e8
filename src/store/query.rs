//! Answers read from projections alone, without rebuilding any state: history (headers
//! filtered newest first), the executions with their summaries, one execution's damage, and the
//! executions that have a log.

use std::collections::HashMap;
use std::time::UNIX_EPOCH;

use super::persist::{RecordHead, SUMMARY_PREFIX};
use super::trace::op_span;
use super::{from_micros, reclaim, ExecutionDamage, ExecutionSummary, HistoryQuery, Store};
use crate::backend::SideTable;
use crate::checkpoint::{validate_execution_id, CheckpointHeader};
use crate::error::Result;
use tracing::field::Empty;

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
        let span = op_span!("ckpt.history", self; execution_id, count = Empty);
        let op = async {
            validate_execution_id(execution_id)?;
            let mut idx = self.recent_index(execution_id).await?;
            let limit = query.limit.unwrap_or(usize::MAX);
            let matching = |idx: &super::index::ExecIndex| -> Vec<CheckpointHeader> {
                idx.readable()
                    .rev()
                    .take_while(|(v, _)| query.from.is_none_or(|f| *v >= f))
                    .filter(|(v, e)| query.matches(*v, &e.header))
                    .take(limit)
                    .map(|(v, e)| self.header(&idx.log, v, e))
                    .collect()
            };
            let found = matching(&idx);
            // A partial projection answers when it has found enough; older matches need the rest.
            if found.len() >= limit || idx.is_complete() {
                return Ok(found);
            }
            self.refresh(&mut idx).await?;
            Ok(matching(&idx))
        };
        let found = self.traced(&span, op).await?;
        span.record("count", found.len());
        Ok(found)
    }

    /// Every execution with at least one live checkpoint, or with damaged frames, by id.
    ///
    /// A damaged execution is listed with what can be read (its readable live checkpoints and
    /// the newest of them; version 0, no node and the Unix epoch when none is readable) and
    /// marked with its damaged frames and unreadable versions; the others are untouched by it.
    pub async fn executions(&self) -> Result<Vec<ExecutionSummary>> {
        let span = op_span!("ckpt.executions", self; count = Empty);
        let op = async {
            // This store's own projections that have no record yet are current: write them first.
            let _ = self.write_dirty_records().await;
            let (mut logs, heads) = self.logs_and_records().await?;
            logs.sort();
            let mut out = Vec::new();
            for (log, tail) in logs {
                // A record made at the log's tail is the summary: nothing to read. Unless this
                // store has found damage in the log (records are written only without it).
                let head = heads
                    .get(&log)
                    .filter(|h| tail == Some(h.position) && !self.known_damaged(&log));
                let summary = match head {
                    Some(h) => summary_of_record(&log, h),
                    None => self.summary_of_log(&log).await?,
                };
                out.extend(summary);
            }
            // The summaries folded above become records, so the next listing reads them.
            let _ = self.write_dirty_records().await;
            Ok(out)
        };
        let found = self.traced(&span, op).await?;
        span.record("count", found.len());
        Ok(found)
    }

    /// Every execution's log with its tail (when the backend tells it in the same call) and
    /// the heads of the persisted projections.
    async fn logs_and_records(
        &self,
    ) -> Result<(Vec<(String, Option<u64>)>, HashMap<String, RecordHead>)> {
        let Some(side) = self.inner.traced.capabilities().side_table else {
            let logs = self.execution_logs().await?;
            return Ok((
                logs.into_iter().map(|l| (l, None)).collect(),
                HashMap::new(),
            ));
        };
        let mut logs = side.log_tails().await?;
        logs.retain(|(log, _)| !reclaim::is_reserved_log(log));
        let records = if side.gets_beat_scans() {
            summaries_by_key(side, &logs).await
        } else {
            side.scan_records(SUMMARY_PREFIX).await.unwrap_or_default()
        };
        // Summaries of an encrypted store open with its keys, found on first use: a store
        // that has not read anything yet must find them first, or fold every log. (A wrong key
        // is left to the fold, which names it.)
        if !records.is_empty() {
            let _ = self.crypto().await;
        }
        let heads = records
            .into_iter()
            .filter_map(|(key, bytes)| {
                let exec = key.strip_prefix(SUMMARY_PREFIX)?;
                Some((exec.to_owned(), self.summary_head(exec, &bytes)?))
            })
            .collect();
        Ok((logs.into_iter().map(|(l, t)| (l, Some(t))).collect(), heads))
    }

    /// One execution's summary from its projection (`None` when it has nothing to list).
    async fn summary_of_log(&self, log: &str) -> Result<Option<ExecutionSummary>> {
        let mut idx = self.recent_index(log).await?;
        if !idx.damaged.is_empty() && !idx.is_complete() {
            self.refresh(&mut idx).await?;
        }
        let damaged_frames: Vec<u64> = idx.damaged.keys().copied().collect();
        let unreadable_versions: Vec<u64> = idx
            .live()
            .filter(|(v, _)| idx.unreadable_because(*v).is_some())
            .map(|(v, _)| v)
            .collect();
        let latest = idx.readable().next_back();
        if latest.is_none() && damaged_frames.is_empty() && unreadable_versions.is_empty() {
            return Ok(None);
        }
        let (latest_version, latest_node, last_timestamp) = match latest {
            Some((v, e)) => (v, e.header.node.clone(), from_micros(e.header.timestamp_us)),
            None => (0, String::new(), UNIX_EPOCH),
        };
        Ok(Some(ExecutionSummary {
            execution_id: log.to_owned(),
            checkpoints: idx.live_count - unreadable_versions.len(),
            latest_version,
            latest_node,
            last_timestamp,
            log_bytes: idx.log_bytes,
            damaged_frames,
            unreadable_versions,
        }))
    }

    /// The damaged frames of an execution and the live versions that cannot be read because of
    /// them (empty when the execution is healthy, or unknown).
    pub async fn damage(&self, execution_id: &str) -> Result<ExecutionDamage> {
        let span = op_span!("ckpt.damage", self; execution_id, count = Empty);
        let op = async {
            validate_execution_id(execution_id)?;
            let idx = self.index(execution_id).await?;
            Ok(ExecutionDamage {
                frames: idx.damaged.iter().map(|(s, r)| (*s, r.clone())).collect(),
                unreadable: idx
                    .live()
                    .filter_map(|(v, _)| idx.unreadable_because(v).map(|d| (v, d)))
                    .collect(),
            })
        };
        let found = self.traced(&span, op).await?;
        span.record("count", found.frames.len());
        Ok(found)
    }

    /// Every execution that has a log in the backend, live checkpoints or not, in no particular
    /// order (the backend's logs, less the store's own).
    pub async fn execution_logs(&self) -> Result<Vec<String>> {
        let span = op_span!("ckpt.execution_logs", self; count = Empty);
        let op = async {
            let mut logs = self.inner.traced.list_logs().await?;
            logs.retain(|log| !reclaim::is_reserved_log(log));
            Ok(logs)
        };
        let found = self.traced(&span, op).await?;
        span.record("count", found.len());
        Ok(found)
    }
}

/// The summary a persisted projection states (records are written only without damage).
fn summary_of_record(log: &str, head: &RecordHead) -> Option<ExecutionSummary> {
    let (version, node, timestamp_us) = head.latest.clone()?;
    Some(ExecutionSummary {
        execution_id: log.to_owned(),
        checkpoints: head.live_count,
        latest_version: version,
        latest_node: node,
        last_timestamp: from_micros(timestamp_us),
        log_bytes: head.log_bytes,
        damaged_frames: Vec::new(),
        unreadable_versions: Vec::new(),
    })
}

/// The summary records of `logs`, read by key ([`SideTable::gets_beat_scans`]); none when
/// the read fails (records are a cache: listing then folds).
async fn summaries_by_key(side: &dyn SideTable, logs: &[(String, u64)]) -> Vec<(String, Vec<u8>)> {
    let keys: Vec<String> = logs
        .iter()
        .map(|(log, _)| format!("{SUMMARY_PREFIX}{log}"))
        .collect();
    let values = side.get_records(&keys).await.unwrap_or_default();
    keys.into_iter()
        .zip(values)
        .filter_map(|(key, value)| Some((key, value?)))
        .collect()
}
