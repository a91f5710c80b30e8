//! The tree of an execution's checkpoints: every save names its parent (the newest live
//! checkpoint, or the one [`Store::save_with_parent`] was given), so after a time travel the
//! versions of one execution form branches. These answers walk the parent links in the
//! projection; no state is read.
//!
//! Only readable live checkpoints take part, as in [`Store::history`]: a deleted or unreadable
//! checkpoint ends the path through it, and its children count as roots of what is left.

use super::index::{ExecIndex, SaveEntry};
use super::trace::op_span;
use super::{HistoryQuery, Store};
use crate::checkpoint::{validate_execution_id, CheckpointHeader, CheckpointId};
use crate::error::{Error, Result};
use tracing::field::Empty;

impl Store {
    /// The checkpoints whose parent is `id`, oldest first: one for a straight run, several where
    /// the execution branched at `id`. [`Error::NotFound`] when `id` is not a live checkpoint.
    pub async fn children(&self, id: &CheckpointId) -> Result<Vec<CheckpointHeader>> {
        let span = op_span!(
            "ckpt.children", self;
            execution_id = id.execution_id(),
            version = id.version(),
            count = Empty
        );
        let op = async {
            let idx = self.live_index(id).await?;
            Ok(idx
                .readable()
                .filter(|(_, e)| parent_in_execution(e) == Some(id.version()))
                .map(|(v, e)| self.header(&idx.log, v, e))
                .collect())
        };
        let found: Vec<_> = self.traced(&span, op).await?;
        span.record("count", found.len());
        Ok(found)
    }

    /// The leaves of an execution's tree, newest first: the checkpoints no other live checkpoint
    /// names as its parent. One for an execution that never branched; the newest save
    /// ([`Store::latest`]) is always one of them. Empty for an unknown execution.
    pub async fn heads(&self, execution_id: &str) -> Result<Vec<CheckpointHeader>> {
        let span = op_span!("ckpt.heads", self; execution_id, count = Empty);
        let op = async {
            validate_execution_id(execution_id)?;
            let idx = self.index(execution_id).await?;
            let readable: Vec<(u64, &SaveEntry)> = idx.readable().collect();
            let (Some(&(first, _)), Some(&(last, _))) = (readable.first(), readable.last()) else {
                return Ok(Vec::new());
            };
            let parents: Vec<u64> = readable
                .iter()
                .filter_map(|(_, e)| parent_in_execution(e))
                .collect();
            let span = last - first + 1;
            let is_head: Box<dyn Fn(u64) -> bool> = if span <= 4 * readable.len() as u64 {
                // Versions are dense (the usual case): one flag per version, set for a parent.
                let mut is_parent = vec![false; span as usize];
                for p in parents.iter().filter(|p| (first..=last).contains(*p)) {
                    if let Some(flag) = is_parent.get_mut((p - first) as usize) {
                        *flag = true;
                    }
                }
                Box::new(move |v| {
                    !v.checked_sub(first)
                        .and_then(|i| is_parent.get(i as usize))
                        .copied()
                        .unwrap_or(false)
                })
            } else {
                // Sparse (most versions deleted): a set.
                let parents: std::collections::HashSet<u64> = parents.into_iter().collect();
                Box::new(move |v| !parents.contains(&v))
            };
            Ok(readable
                .iter()
                .rev()
                .filter(|(v, _)| is_head(*v))
                .map(|(v, e)| self.header(&idx.log, *v, e))
                .collect())
        };
        let found: Vec<_> = self.traced(&span, op).await?;
        span.record("count", found.len());
        Ok(found)
    }

    /// The branch ending at `id`: `id`, its parent, its parent's parent... back to the root of
    /// the execution (or to a parent that is no longer live or readable, or in another execution
    /// after a fork), newest first and filtered by `query` like [`Store::history`]. Versions of
    /// other branches are left out. [`Error::NotFound`] when `id` is not a live checkpoint.
    pub async fn branch(
        &self,
        id: &CheckpointId,
        query: HistoryQuery,
    ) -> Result<Vec<CheckpointHeader>> {
        let span = op_span!(
            "ckpt.branch", self;
            execution_id = id.execution_id(),
            version = id.version(),
            count = Empty
        );
        let op = async {
            let idx = self.live_index(id).await?;
            let mut out = Vec::new();
            let mut at = Some(id.version());
            while let Some(version) = at {
                let Some(entry) = readable_entry(&idx, version) else {
                    break;
                };
                if out.len() >= query.limit.unwrap_or(usize::MAX) {
                    break;
                }
                if query.matches(version, &entry.header) {
                    out.push(self.header(&idx.log, version, entry));
                }
                // Parents are older than their children: a link that does not go down is damage,
                // and must not loop.
                at = parent_in_execution(entry).filter(|p| *p < version);
            }
            Ok(out)
        };
        let found: Vec<_> = self.traced(&span, op).await?;
        span.record("count", found.len());
        Ok(found)
    }

    /// The projection of `id`'s execution, once `id` is known to be a readable live checkpoint.
    async fn live_index(
        &self,
        id: &CheckpointId,
    ) -> Result<tokio::sync::OwnedMutexGuard<ExecIndex>> {
        validate_execution_id(id.execution_id())?;
        let idx = self.index(id.execution_id()).await?;
        if readable_entry(&idx, id.version()).is_none() {
            return Err(Error::not_found(format!("checkpoint {id}")));
        }
        Ok(idx)
    }
}

/// The save's parent version when the parent is in the same execution.
fn parent_in_execution(entry: &SaveEntry) -> Option<u64> {
    entry
        .header
        .parent
        .as_ref()
        .filter(|p| p.execution.is_none())
        .map(|p| p.version)
}

fn readable_entry(idx: &ExecIndex, version: u64) -> Option<&SaveEntry> {
    idx.live_entry(version)
        .filter(|_| idx.unreadable_because(version).is_none())
}
