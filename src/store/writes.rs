//! Writes attached to checkpoints ([`Write`]): appended to the execution's log as their own
//! event kind, through the same fence, compare-and-append and codec as saves, and read back
//! per checkpoint. The projection keeps their headers (`ExecIndex::writes`); a write lives and
//! dies with its checkpoint (a delete or clear hides it, gc reclaims it with the frames before
//! the oldest live checkpoint's chain).

use std::collections::BTreeMap;

use tokio::sync::OwnedMutexGuard;

use super::index::{ExecIndex, WriteEntry};
use super::metrics::add;
use super::save::{Attempts, Expect};
use super::trace::op_span;
use super::{from_micros, now_micros, Store};
use crate::backend::LogAppend;
use crate::checkpoint::{CheckpointId, Write};
use crate::codec::frame::{Body, WriteHeader};
use crate::codec::{tree, value};
use crate::error::{Error, Result};
use tracing::field::Empty;

impl Store {
    /// Appends `writes` to live checkpoint `checkpoint`, atomically (after an error none of
    /// them is stored), and returns them as stored (with their sequence numbers and time).
    /// Durable when it returns, like a save. [`Error::NotFound`] when `checkpoint` is not live
    /// (never saved, deleted or cleared), checked when the writes land.
    pub async fn put_writes(
        &self,
        checkpoint: &CheckpointId,
        writes: Vec<Write>,
    ) -> Result<Vec<Write>> {
        let span = op_span!(
            "ckpt.put_writes", self;
            execution_id = checkpoint.execution_id(),
            version = checkpoint.version(),
            count = writes.len(),
            bytes = Empty,
            retries = Empty
        );
        let op = async {
            if writes.is_empty() {
                return Ok(Vec::new());
            }
            for w in &writes {
                w.validate()?;
            }
            let crypto = self.crypto().await?;
            crypto.check_writable()?;
            let codec = crypto.codec();
            let _shared = self.inner.gc_lock.read().await;
            let mut guards: Vec<OwnedMutexGuard<ExecIndex>> =
                vec![self.handle(checkpoint.execution_id()).lock_owned().await];
            let mut attempts = Attempts::new(Expect::Any);
            loop {
                let fence = self.fence(&mut guards).await?;
                let idx = &mut guards[0];
                if !(attempts.trust_cache && idx.synced) {
                    self.refresh_recent(idx).await?;
                }
                if idx.before_horizon(checkpoint.version()) {
                    self.refresh(idx).await?;
                }
                if idx.live_entry(checkpoint.version()).is_none() {
                    return Err(Error::not_found(format!(
                        "checkpoint {checkpoint}, which writes were attached to (it was never \
                         saved, or was deleted or cleared)"
                    )));
                }
                let log = idx.log.clone();
                let mut lifted = codec.lifting();
                let mut frames = Vec::with_capacity(writes.len());
                let mut landed = Vec::with_capacity(writes.len());
                let timestamp_us = now_micros();
                for (seq, w) in (idx.next_seq..).zip(&writes) {
                    let stored = tree::externalize(&w.value, &mut lifted);
                    let header = WriteHeader {
                        checkpoint: checkpoint.version(),
                        task: w.task.clone(),
                        channel: w.channel.clone(),
                        metadata: w.metadata.clone(),
                        timestamp_us,
                        value_size: w.value_size,
                    };
                    let frame =
                        codec
                            .frames
                            .encode_write(&log, seq, &header, &value::encode(&stored))?;
                    landed.push((seq, header, frame.len() as u64));
                    frames.push(frame);
                }
                let needed = match fence.unfenced {
                    Some(_) => lifted.blobs.clone(),
                    None => Vec::new(),
                };
                let blobs = self.encode_blobs(lifted.blobs, codec).await?;
                self.count_blobs(&blobs);
                let bytes: u64 = frames.iter().map(|f| f.len() as u64).sum();
                let tail_sum = frames.last().and_then(|f| super::persist::frame_sum(f));
                let mut appends = vec![LogAppend::new(log.to_string(), idx.next_seq, frames)];
                appends.extend(fence.append);
                let blob_bytes: u64 = blobs.iter().map(|(_, b)| b.len() as u64).sum();
                match self.commit(appends, blobs).await {
                    Ok(()) => {
                        span.record("bytes", bytes + blob_bytes);
                        if attempts.retries > 0 {
                            span.record("retries", attempts.retries);
                        }
                        if let Some(position) = fence.unfenced {
                            self.repair_after_gc(position, &needed, codec).await?;
                        }
                        self.count_frames(landed.len() as u64, bytes);
                        let idx = &mut guards[0];
                        let mut out = Vec::with_capacity(writes.len());
                        for ((seq, header, frame_len), mut w) in landed.into_iter().zip(writes) {
                            idx.apply_write(seq, header, frame_len);
                            w.seq = seq;
                            w.timestamp = from_micros(timestamp_us);
                            out.push(w);
                            idx.next_seq = seq + 1;
                        }
                        idx.tail_sum = tail_sum.map(|s| (idx.next_seq - 1, s));
                        self.note_tail(idx);
                        self.after_move(idx).await;
                        return Ok(out);
                    }
                    Err(e) => {
                        self.on_conflict(e, &mut attempts, checkpoint.execution_id())
                            .await?
                    }
                }
            }
        };
        let landed = self.traced(&span, op).await?;
        add(&self.inner.metrics.writes_saved, landed.len() as u64);
        Ok(landed)
    }

    /// The writes attached to live checkpoint `checkpoint`, oldest first, or
    /// [`Error::NotFound`] when it is not live. A write whose frame or value fails verification
    /// is [`Error::Corrupt`] naming it.
    pub async fn writes(&self, checkpoint: &CheckpointId) -> Result<Vec<Write>> {
        let span = op_span!(
            "ckpt.writes", self;
            execution_id = checkpoint.execution_id(),
            version = checkpoint.version(),
            count = Empty
        );
        let op = async { self.read_consistent(|| self.writes_once(checkpoint)).await };
        let found: Vec<_> = self.traced(&span, op).await?;
        span.record("count", found.len());
        Ok(found)
    }

    /// The writes of every live checkpoint of `execution_id`, without their values: (the
    /// checkpoint's version, the write's task, its channel), by version, oldest first. Read
    /// from the projection alone (no value is read), so a timeline can mark the checkpoints that
    /// have writes (an interrupted or failed step) without a read per checkpoint.
    pub async fn write_heads(&self, execution_id: &str) -> Result<Vec<(u64, String, String)>> {
        crate::checkpoint::validate_execution_id(execution_id)?;
        let mut idx = self.recent_index(execution_id).await?;
        if !idx.is_complete() {
            self.refresh(&mut idx).await?;
        }
        Ok(idx
            .writes
            .iter()
            .filter(|((version, _), _)| idx.live_entry(*version).is_some())
            .map(|((version, _), e)| (*version, e.header.task.clone(), e.header.channel.clone()))
            .collect())
    }

    async fn writes_once(&self, checkpoint: &CheckpointId) -> Result<Vec<Write>> {
        let mut idx = self.recent_index(checkpoint.execution_id()).await?;
        if idx.before_horizon(checkpoint.version()) {
            self.refresh(&mut idx).await?;
        }
        if idx.live_entry(checkpoint.version()).is_none() {
            return Err(Error::not_found(format!("checkpoint {checkpoint}")));
        }
        let entries: BTreeMap<u64, WriteEntry> = idx
            .writes_of(checkpoint.version())
            .map(|(seq, e)| (seq, e.clone()))
            .collect();
        let log = idx.log.clone();
        drop(idx);
        let mut out = Vec::with_capacity(entries.len());
        for (seq, bytes) in self.scan_runs(&log, entries.keys().copied()).await? {
            let Some(entry) = entries.get(&seq) else {
                continue;
            };
            let stored = match self.decode_write(&log, seq, &bytes)? {
                Body::Snapshot(v) => v,
                Body::Delta { .. } => {
                    return Err(Error::corrupt(
                        format!("execution {log:?} seq {seq}"),
                        "a write stored as a delta",
                    ))
                }
            };
            let h = &entry.header;
            out.push(Write {
                task: h.task.clone(),
                channel: h.channel.clone(),
                metadata: h.metadata.clone(),
                seq,
                timestamp: from_micros(h.timestamp_us),
                value: std::sync::Arc::new(self.resolve(&log, seq, &stored).await?),
                value_size: h.value_size,
            });
        }
        if out.len() != entries.len() {
            let missing: Vec<u64> = entries
                .keys()
                .filter(|s| !out.iter().any(|w| w.seq == **s))
                .copied()
                .collect();
            return Err(Error::corrupt(
                format!("checkpoint {checkpoint}"),
                format!(
                    "the frames of its writes at seq {} are missing from the log",
                    super::seq_list(&missing)
                ),
            ));
        }
        Ok(out)
    }

    /// The frames at `seqs` (ascending), read in runs of consecutive sequence numbers.
    async fn scan_runs(
        &self,
        log: &str,
        seqs: impl Iterator<Item = u64>,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for seq in seqs {
            match runs.last_mut() {
                Some((_, end)) if *end == seq => *end += 1,
                _ => runs.push((seq, seq + 1)),
            }
        }
        let mut out = Vec::new();
        for (from, to) in runs {
            out.extend(self.scan_range(log, from, to).await?);
        }
        Ok(out)
    }
}
