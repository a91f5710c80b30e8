//! The store's public API types: the history filter, what executions, damage, gc and writes
//! report, and [`CheckpointStore`], the trait-object face of [`Store`].

use std::time::SystemTime;

use async_trait::async_trait;

use super::Store;
use crate::checkpoint::{Checkpoint, CheckpointHeader, CheckpointId, Write};
use crate::codec::frame::SaveHeader;
use crate::error::{Error, Result};

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
    /// Only versions at or above this (the search index's candidates; not public).
    pub(super) from: Option<u64>,
    pub(super) limit: Option<usize>,
    metadata: Vec<(String, serde_json::Value)>,
    node: Option<String>,
}

impl HistoryQuery {
    /// Only versions strictly below `version`.
    pub fn before(mut self, version: u64) -> Self {
        self.before = Some(version);
        self
    }

    /// Only versions at or above `version` (newest first, the walk stops below it).
    pub(super) fn at_or_above(mut self, version: u64) -> Self {
        self.from = Some(version);
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

    pub(super) fn matches(&self, version: u64, header: &SaveHeader) -> bool {
        self.matches_parts(version, &header.node, &header.metadata)
    }

    fn matches_parts(&self, version: u64, node: &str, metadata: &crate::Metadata) -> bool {
        self.before.is_none_or(|b| version < b)
            && self.node.as_ref().is_none_or(|n| n == node)
            && self
                .metadata
                .iter()
                .all(|(k, v)| metadata.get(k) == Some(v))
    }

    /// Whether `cp` passes the version, node and metadata filters (the limit aside).
    pub fn matches_checkpoint(&self, cp: &Checkpoint) -> bool {
        self.matches_parts(cp.version, &cp.node_name, &cp.metadata)
    }
}

/// A loaded checkpoint's header, for [`CheckpointStore::history`]'s default: its stored size is
/// not known there (0).
fn header_of(cp: &Checkpoint) -> CheckpointHeader {
    CheckpointHeader {
        id: cp.id.clone(),
        execution_id: cp.execution_id.clone(),
        node_name: cp.node_name.clone(),
        metadata: cp.metadata.clone(),
        version: cp.version,
        timestamp: cp.timestamp,
        parent: cp.parent.clone(),
        state_size: cp.state_size,
        stored_size: 0,
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
    /// damaged frame (they fail to load with [`Error::Corrupt`](crate::Error::Corrupt)).
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

/// What this [`Store`](crate::Store) has read to build its projections (see
/// [`Store::read_stats`](crate::Store::read_stats)): how much opening executions cost.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadStats {
    /// Frames folded into projections (a long execution opened without a persisted projection
    /// folds every frame of its log).
    pub frames_folded: u64,
    /// Projections opened from their persisted record (then only the frames after it fold).
    pub records_opened: u64,
}

/// The seed interface: what a runtime needs to checkpoint and resume, as a trait object
/// (`Arc<dyn CheckpointStore>`). [`Store`] implements it.
#[async_trait]
pub trait CheckpointStore: Send + Sync {
    /// Saves a checkpoint; returns it as stored (with id, version, timestamp and parent).
    async fn save(&self, checkpoint: Checkpoint) -> Result<Checkpoint>;
    /// Saves a checkpoint as a child of `parent`, a live checkpoint of the same execution (see
    /// [`Store::save_with_parent`]).
    async fn save_with_parent(
        &self,
        checkpoint: Checkpoint,
        parent: &CheckpointId,
    ) -> Result<Checkpoint>;
    /// Saves a checkpoint only if the execution's newest live checkpoint is still
    /// `expected_latest` (`None`: the execution has none), as its child; otherwise nothing is
    /// written and the result is [`Error::Conflict`](crate::Error::Conflict) (see
    /// [`Store::save_after`]). The graph runtime saves every step this way, so that two
    /// workers running the same execution cannot interleave.
    ///
    /// The default reads [`CheckpointStore::latest`], then calls [`CheckpointStore::save`]: it
    /// catches a writer that moved the execution before the check, not one that saves between
    /// the check and the save. [`Store`] compares and appends in one step; a wrapper around a
    /// store should forward to it.
    async fn save_after(
        &self,
        checkpoint: Checkpoint,
        expected_latest: Option<&CheckpointId>,
    ) -> Result<Checkpoint> {
        check_latest(self, &checkpoint.execution_id, expected_latest).await?;
        self.save(checkpoint).await
    }
    /// Saves a checkpoint as a child of `parent` (see [`CheckpointStore::save_with_parent`]),
    /// only if the execution's newest live checkpoint is still `expected_latest` (see
    /// [`Store::save_with_parent_after`]); the default checks first, then saves, as
    /// [`CheckpointStore::save_after`]'s does.
    async fn save_with_parent_after(
        &self,
        checkpoint: Checkpoint,
        parent: &CheckpointId,
        expected_latest: Option<&CheckpointId>,
    ) -> Result<Checkpoint> {
        check_latest(self, &checkpoint.execution_id, expected_latest).await?;
        self.save_with_parent(checkpoint, parent).await
    }
    /// Loads one checkpoint, or [`Error::NotFound`](crate::Error::NotFound).
    async fn load(&self, id: &CheckpointId) -> Result<Checkpoint>;
    /// Every live checkpoint of an execution, oldest first.
    async fn list(&self, execution_id: &str) -> Result<Vec<Checkpoint>>;
    /// Deletes one checkpoint, or [`Error::NotFound`](crate::Error::NotFound).
    async fn delete(&self, id: &CheckpointId) -> Result<()>;
    /// Removes every checkpoint of an execution.
    async fn clear(&self, execution_id: &str) -> Result<()>;
    /// The newest live checkpoint of an execution.
    async fn latest(&self, execution_id: &str) -> Result<Option<Checkpoint>> {
        Ok(self.list(execution_id).await?.pop())
    }
    /// Headers of an execution's live checkpoints, newest first, filtered by `query` (see
    /// [`Store::history`]). The default lists every checkpoint and filters them; a store that
    /// can answer from headers alone overrides it.
    async fn history(
        &self,
        execution_id: &str,
        query: HistoryQuery,
    ) -> Result<Vec<CheckpointHeader>> {
        let limit = query.limit.unwrap_or(usize::MAX);
        Ok(self
            .list(execution_id)
            .await?
            .iter()
            .rev()
            .filter(|cp| query.matches_checkpoint(cp))
            .take(limit)
            .map(header_of)
            .collect())
    }
    /// Appends writes to a live checkpoint, atomically (see [`Store::put_writes`]).
    async fn put_writes(&self, checkpoint: &CheckpointId, writes: Vec<Write>)
        -> Result<Vec<Write>>;
    /// The writes of a live checkpoint, oldest first (see [`Store::writes`]).
    async fn writes(&self, checkpoint: &CheckpointId) -> Result<Vec<Write>>;
    /// The live checkpoints whose parent is `checkpoint`, oldest first (see
    /// [`Store::children`]).
    async fn children(&self, checkpoint: &CheckpointId) -> Result<Vec<CheckpointHeader>>;
    /// Starts execution `new_execution` from a copy of `checkpoint` (see [`Store::fork`]).
    async fn fork(&self, checkpoint: &CheckpointId, new_execution: &str) -> Result<Checkpoint>;
}

/// The check of the trait's default compare-and-save: [`Error::Conflict`] unless the
/// execution's latest is `expected`.
async fn check_latest<T: CheckpointStore + ?Sized>(
    store: &T,
    execution_id: &str,
    expected: Option<&CheckpointId>,
) -> Result<()> {
    let actual = store.latest(execution_id).await?.map(|c| c.version);
    let expected = expected.map(CheckpointId::version);
    if actual == expected {
        return Ok(());
    }
    Err(Error::Conflict {
        log: execution_id.to_owned(),
        expected: expected.unwrap_or(0),
        actual: actual.unwrap_or(0),
    })
}

#[async_trait]
impl CheckpointStore for Store {
    async fn save(&self, checkpoint: Checkpoint) -> Result<Checkpoint> {
        Store::save(self, checkpoint).await
    }
    async fn save_with_parent(
        &self,
        checkpoint: Checkpoint,
        parent: &CheckpointId,
    ) -> Result<Checkpoint> {
        Store::save_with_parent(self, checkpoint, parent).await
    }
    async fn save_after(
        &self,
        checkpoint: Checkpoint,
        expected_latest: Option<&CheckpointId>,
    ) -> Result<Checkpoint> {
        Store::save_after(self, checkpoint, expected_latest).await
    }
    async fn save_with_parent_after(
        &self,
        checkpoint: Checkpoint,
        parent: &CheckpointId,
        expected_latest: Option<&CheckpointId>,
    ) -> Result<Checkpoint> {
        Store::save_with_parent_after(self, checkpoint, parent, expected_latest).await
    }
    async fn load(&self, id: &CheckpointId) -> Result<Checkpoint> {
        Store::load(self, id).await
    }
    async fn list(&self, execution_id: &str) -> Result<Vec<Checkpoint>> {
        Store::list(self, execution_id).await
    }
    async fn history(
        &self,
        execution_id: &str,
        query: HistoryQuery,
    ) -> Result<Vec<CheckpointHeader>> {
        Store::history(self, execution_id, query).await
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
    async fn put_writes(
        &self,
        checkpoint: &CheckpointId,
        writes: Vec<Write>,
    ) -> Result<Vec<Write>> {
        Store::put_writes(self, checkpoint, writes).await
    }
    async fn writes(&self, checkpoint: &CheckpointId) -> Result<Vec<Write>> {
        Store::writes(self, checkpoint).await
    }
    async fn children(&self, checkpoint: &CheckpointId) -> Result<Vec<CheckpointHeader>> {
        Store::children(self, checkpoint).await
    }
    async fn fork(&self, checkpoint: &CheckpointId, new_execution: &str) -> Result<Checkpoint> {
        Store::fork(self, checkpoint, new_execution).await
    }
}
