//! The events that are not saves: delete (a tombstone), clear (every checkpoint of an
//! execution gone) and fork (a new execution started from a copy of a checkpoint, through the
//! save path). Delete and clear append a marker on top of the current projection, retrying when
//! another writer appended first.

use super::save::{Expect, Pending};
use super::trace::op_span;
use super::{Store, MAX_CONFLICT_RETRIES};
use crate::checkpoint::{validate_execution_id, Checkpoint, CheckpointId};
use crate::codec::frame::ParentRef;
use crate::error::{Error, Result};
use tracing::field::Empty;
use tracing::Span;

/// An event that marks checkpoints gone.
#[derive(Clone, Copy)]
pub(super) enum Marker {
    Delete(u64),
    Clear,
    /// Clear, but only while `version` is still the latest live checkpoint.
    ClearIfLatest(u64),
}

impl Store {
    /// Deletes one checkpoint (a tombstone in the log); the others are untouched.
    pub async fn delete(&self, id: &CheckpointId) -> Result<()> {
        let span = op_span!(
            "ckpt.delete", self;
            execution_id = id.execution_id(),
            version = id.version(),
            retries = Empty
        );
        let marker = Marker::Delete(id.version());
        let op = self.append_marker_in(id.execution_id(), marker, &span);
        self.traced(&span, op).await.map(drop)
    }

    /// Removes every checkpoint of an execution from every projection. Versions are never
    /// reused: a later save continues above the cleared ones.
    pub async fn clear(&self, execution_id: &str) -> Result<()> {
        let span = op_span!("ckpt.clear", self; execution_id, retries = Empty);
        let op = async {
            validate_execution_id(execution_id)?;
            self.append_marker_in(execution_id, Marker::Clear, &span)
                .await
        };
        self.traced(&span, op).await.map(drop)
    }

    /// Appends a delete or clear event on top of the execution's current projection, retrying
    /// when another writer appended first. Returns whether an event was appended.
    pub(super) async fn append_marker(&self, exec: &str, marker: Marker) -> Result<bool> {
        self.append_marker_in(exec, marker, &tracing::Span::none())
            .await
    }

    /// [`Store::append_marker`], recording its retries in `span`.
    async fn append_marker_in(&self, exec: &str, marker: Marker, span: &Span) -> Result<bool> {
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
            let sum = super::persist::frame_sum(&frame);
            match self.append_one(exec, seq, frame).await {
                Ok(()) => {
                    match marker {
                        Marker::Delete(version) => idx.apply_delete(version),
                        Marker::Clear | Marker::ClearIfLatest(_) => idx.apply_clear(seq),
                    }
                    idx.next_seq = seq + 1;
                    idx.tail_sum = sum.map(|s| (seq, s));
                    self.after_move(&mut idx).await;
                    self.note_tail(&idx);
                    self.note_deleted();
                    return Ok(true);
                }
                Err(Error::Conflict { .. }) => {
                    crate::backend::retry::STORE_CONFLICT.pause(attempt).await;
                    self.note_retry();
                    span.record("retries", attempt + 1);
                }
                Err(e) => return Err(e),
            }
        }
        Err(self.gave_up(exec))
    }

    /// Starts execution `new_execution` from a copy of checkpoint `id` (its state, node and
    /// metadata); the copy's parent is `id`. `new_execution` must have no live checkpoints.
    pub async fn fork(&self, id: &CheckpointId, new_execution: &str) -> Result<Checkpoint> {
        let span = op_span!(
            "ckpt.fork", self;
            execution_id = id.execution_id(),
            version = id.version(),
            new_execution,
            new_version = Empty,
            bytes = Empty,
            retries = Empty
        );
        let op = async {
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
                parent_must_be_live: false,
                force_snapshot: true,
                timestamp_us: None,
            };
            let mut saved = self
                .save_pending_in(vec![pending], Expect::Latest(None), &span)
                .await
                .map_err(|e| match e {
                    Error::Conflict { .. } => Error::InvalidInput(format!(
                        "cannot fork {id} into {new_execution:?}: that execution already has \
                         checkpoints"
                    )),
                    other => other,
                })?;
            saved
                .pop()
                .ok_or_else(|| Error::InvalidInput("nothing to save".into()))
        };
        let forked = self.traced(&span, op).await?;
        span.record("new_version", forked.version);
        Ok(forked)
    }
}
