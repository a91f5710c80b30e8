//! The save path. A save (or batch, or fork, or salvaged checkpoint) goes through named steps,
//! retried as a whole:
//!
//! 1. **fence**: where the save stands against gc, read before any blob is checked or written
//!    (a fenced append to the gc log, or on a backend that cannot fence the gc log's position);
//!    cached stored states are revalidated if a gc or rekey ran since they were read.
//! 2. **prepare**: each execution's projection is refreshed (or trusted on the first try), the
//!    caller's precondition checked, its frames encoded as snapshots or deltas on top of the
//!    newest state, and the blobs their states lift encoded (only those the backend lacks).
//! 3. **commit**: one backend call appends every frame (and the fence) and puts the blobs.
//! 4. **on conflict**: a gc that began elsewhere re-runs the save once it ends; a log that moved
//!    is looked at again, then retried with backoff until the retry bound, then given up.
//!
//! After an unfenced commit, blobs a gc took meanwhile are put back (`repair_after_gc`).

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rmpv::Value;
use tokio::sync::OwnedMutexGuard;

use super::index::{chain_cost, CachedState, Chain, ExecIndex};
use super::search_index::Added;
use super::trace::save_span;
use super::{from_micros, now_micros, reclaim, Store, MAX_CONFLICT_RETRIES};
use crate::backend::{BlobHash, LogAppend};
use crate::checkpoint::{Checkpoint, CheckpointId};
use crate::codec::frame::{ParentRef, SaveHeader};
use crate::codec::tree::{self, Lifted};
use crate::codec::{value, Codec};
use crate::error::{Error, Result};
use futures_util::FutureExt as _;

/// Longest run of deltas before a snapshot is forced; bounds the work of loading an old version.
const MAX_CHAIN: u32 = 100;
/// Deltas may add up to this many bytes before a snapshot, however small the snapshot.
const MIN_DELTA_BUDGET: u64 = 4096;
/// A plain save whose appends keep conflicting (many writers on one execution) retries at least
/// [`MAX_CONFLICT_RETRIES`] times and for at least this long before it gives up.
const CONFLICT_PATIENCE: Duration = Duration::from_secs(10);
/// How often a save is prepared again because a gc elsewhere began before it landed; each time
/// it first waits for that gc to end, so only back-to-back gc runs can use these up.
const MAX_FENCE_RETRIES: u32 = 1000;
/// A save lifting at most this many blobs, of at most [`BLIND_PUT_BYTES`] in all, sends them
/// without asking which the backend has, where the backend puts them in the append's own round
/// trip ([`crate::backend::Capabilities::blobs_with_append`]); a snapshot's many blobs are still asked about.
const BLIND_PUT_BLOBS: usize = 8;
/// See [`BLIND_PUT_BLOBS`].
const BLIND_PUT_BYTES: usize = 64 << 10;

/// A checkpoint waiting to be appended, with how it must be stored.
pub(super) struct Pending {
    pub(super) checkpoint: Checkpoint,
    pub(super) parent: Option<ParentRef>,
    /// The user named `parent` ([`Store::save_with_parent`]): it must be live when the save
    /// lands. (A salvaged checkpoint keeps a parent that may not have been salvaged.)
    pub(super) parent_must_be_live: bool,
    pub(super) force_snapshot: bool,
    /// The time to record instead of now (a salvaged checkpoint keeps its own).
    pub(super) timestamp_us: Option<u64>,
}

impl Pending {
    /// A checkpoint saved as itself: parent the execution's latest, a delta where it pays, now.
    pub(super) fn plain(checkpoint: Checkpoint) -> Self {
        Pending {
            checkpoint,
            parent: None,
            parent_must_be_live: false,
            force_snapshot: false,
            timestamp_us: None,
        }
    }

    /// A checkpoint saved as a child of `parent`, a checkpoint of its own execution that must
    /// be live when the save lands.
    fn child_of(checkpoint: Checkpoint, parent: &CheckpointId) -> Self {
        let mut pending = Pending::plain(checkpoint);
        pending.parent = Some(ParentRef {
            execution: None,
            version: parent.version(),
        });
        pending.parent_must_be_live = true;
        pending
    }
}

/// What a precondition on a save expects the execution's latest version to be.
#[derive(Clone, Copy)]
pub(super) enum Expect {
    /// No precondition: a save that races another writer is retried on top of it.
    Any,
    /// The execution's newest live version must be this (`None`: it has none), else
    /// [`Error::Conflict`].
    Latest(Option<u64>),
}

/// One execution's part of an append in flight.
struct Prepared {
    append: LogAppend,
    /// Per save: header, body length, frame length, the checkpoint as stored.
    saves: Vec<(SaveHeader, u64, u64, Checkpoint)>,
    newest_state: Option<CachedState>,
    /// Per save, when the store is indexed: what it adds, for the indexer.
    words: Vec<Added>,
}

/// Where one attempt stands against gc (step 1), read before any blob is checked or written:
/// see `reclaim`.
pub(super) struct Fence {
    /// The empty append to the gc log that fails the commit if a gc began since (`None` when
    /// the backend cannot fence).
    pub(super) append: Option<LogAppend>,
    /// Where the backend cannot fence: the gc log's position, to repair after the commit.
    pub(super) unfenced: Option<u64>,
    /// The gc position the blob addresses this attempt trusts are valid under.
    pub(super) epoch: Option<u64>,
}

/// One attempt's frames and blobs, ready to commit (step 2).
struct Batch {
    /// Per execution (in lock order): the saves the frames hold and the newest state.
    prepared: Vec<Prepared>,
    /// Per execution: the frames to append at its expected sequence number.
    appends: Vec<LogAppend>,
    /// The blobs to put, as stored.
    blobs: Vec<(BlobHash, Vec<u8>)>,
    /// Every blob the saved states lift, kept for the repair after an unfenced commit.
    needed: Vec<Lifted>,
    /// Bytes of all the frames.
    bytes: u64,
    /// Per execution: its log's next sequence number once the frames landed.
    tails: Vec<(u64, Option<[u8; 8]>)>,
}

/// How one save retries (step 4): how often and how long it may, and whether it still trusts
/// its cached projections.
pub(super) struct Attempts {
    expect: Expect,
    /// Retries because a gc elsewhere began first (bounded by [`MAX_FENCE_RETRIES`]).
    fenced_off: u32,
    /// Retries because another writer appended first (see [`Attempts::may_retry`]).
    conflicts: u32,
    /// Every time the attempt was prepared again, whatever the reason.
    pub(super) retries: u32,
    patient_until: Instant,
    /// A projection this store keeps up to date is trusted for the first try: the
    /// compare-and-append tells if the log moved, and saves it is current for skip a round trip.
    /// A precondition on the latest checkpoint that the trusted view fails is checked again on
    /// a fresh view before it is reported: another store may have moved the log to what the
    /// caller expects.
    pub(super) trust_cache: bool,
}

impl Attempts {
    pub(super) fn new(expect: Expect) -> Self {
        Attempts {
            expect,
            fenced_off: 0,
            conflicts: 0,
            retries: 0,
            patient_until: Instant::now() + CONFLICT_PATIENCE,
            trust_cache: true,
        }
    }

    /// Whether a plain save may try again after another conflict: while under the retry bound,
    /// or within its patience.
    fn may_retry(&self) -> bool {
        self.conflicts + 1 < MAX_CONFLICT_RETRIES || Instant::now() < self.patient_until
    }
}

impl Store {
    /// Saves a checkpoint and returns it as stored: with its id, version, timestamp and parent
    /// (the execution's previous live checkpoint). Durable when it returns (on a durable backend).
    ///
    /// A save that races another writer of the same execution is retried on top of it, so both
    /// are kept; use [`Store::save_after`] to fail instead.
    pub async fn save(&self, checkpoint: Checkpoint) -> Result<Checkpoint> {
        let span = save_span!("ckpt.save", self, checkpoint.execution_id.as_str());
        let exec = failure_names(&checkpoint);
        let pending = vec![Pending::plain(checkpoint)];
        // Built in place: see `trace::in_span` on the size of futures.
        self.save_one(
            &span,
            "save",
            exec.as_deref(),
            self.save_pending_in(pending, Expect::Any, &span),
        )
        .await
    }

    /// Saves a checkpoint as a child of `parent`, any live checkpoint of the same execution: a
    /// new branch when `parent` is not the newest (time travel: resume or edit an old version
    /// and go on from there). The version is still the log's next sequence number, and
    /// [`Store::latest`] is still the newest save; the parent links form a tree that
    /// [`Store::children`], [`Store::heads`] and [`Store::branch`] walk.
    ///
    /// Refused with [`Error::InvalidInput`] when `parent` belongs to another execution (use
    /// [`Store::fork`]), and with [`Error::NotFound`] when it is not a live checkpoint (never
    /// saved, deleted or cleared), checked when the save lands.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ckpt::Error> {
    /// use ckpt::{Checkpoint, Store};
    /// let store = Store::memory();
    /// let v1 = store.save(Checkpoint::new("run", "plan", &1)?).await?;
    /// let _v2 = store.save(Checkpoint::new("run", "act", &2)?).await?;
    /// // Back to version 1, and a different step from there.
    /// let v3 = store.save_with_parent(Checkpoint::new("run", "act", &20)?, &v1.id).await?;
    /// assert_eq!(v3.parent, Some(v1.id.clone()));
    /// assert_eq!(store.heads("run").await?.len(), 2);
    /// # Ok(()) }
    /// ```
    pub async fn save_with_parent(
        &self,
        checkpoint: Checkpoint,
        parent: &CheckpointId,
    ) -> Result<Checkpoint> {
        let span = save_span!(
            "ckpt.save_with_parent",
            self,
            checkpoint.execution_id.as_str()
        );
        let exec = failure_names(&checkpoint);
        let saved = async {
            if parent.execution_id() != checkpoint.execution_id {
                return Err(Error::InvalidInput(format!(
                    "the parent {parent} is a checkpoint of another execution than {:?}; a \
                     save's parent must be in its own execution (fork to start a new execution \
                     from it)",
                    checkpoint.execution_id
                )));
            }
            let pending = vec![Pending::child_of(checkpoint, parent)];
            self.save_pending_in(pending, Expect::Any, &span).await
        };
        self.save_one(&span, "save_with_parent", exec.as_deref(), saved)
            .await
    }

    /// Saves a checkpoint only if the execution's newest live checkpoint is still `parent`
    /// (`None`: the execution has none). Otherwise nothing is written and the result is
    /// [`Error::Conflict`]: optimistic concurrency for writers that must not interleave.
    pub async fn save_after(
        &self,
        checkpoint: Checkpoint,
        parent: Option<&CheckpointId>,
    ) -> Result<Checkpoint> {
        let span = save_span!("ckpt.save_after", self, checkpoint.execution_id.as_str());
        let exec = failure_names(&checkpoint);
        let saved = async {
            if let Some(p) = parent {
                if p.execution_id() != checkpoint.execution_id {
                    return Err(Error::InvalidInput(format!(
                        "save_after: parent {p} is not in execution {:?}",
                        checkpoint.execution_id
                    )));
                }
            }
            let expect = Expect::Latest(parent.map(CheckpointId::version));
            self.save_pending_in(vec![Pending::plain(checkpoint)], expect, &span)
                .await
        };
        self.save_one(&span, "save_after", exec.as_deref(), saved)
            .await
    }

    /// Saves a checkpoint as a child of `parent` (like [`Store::save_with_parent`]) only if the
    /// execution's newest live checkpoint is still `expected_latest` (`None`: the execution has
    /// none), else [`Error::Conflict`] and nothing is written: the first save of a writer that
    /// continues from an older checkpoint (a new branch) and must not interleave with another
    /// writer of the execution. With `parent == expected_latest` it is [`Store::save_after`].
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), ckpt::Error> {
    /// use ckpt::{Checkpoint, Store};
    /// let store = Store::memory();
    /// let v1 = store.save(Checkpoint::new("run", "plan", &1)?).await?;
    /// let v2 = store.save(Checkpoint::new("run", "act", &2)?).await?;
    /// // A branch from v1, as long as nobody saved after v2.
    /// let v3 = store
    ///     .save_with_parent_after(Checkpoint::new("run", "act", &20)?, &v1.id, Some(&v2.id))
    ///     .await?;
    /// assert_eq!(v3.parent, Some(v1.id.clone()));
    /// // v2 is no longer the latest: refused.
    /// let late = store
    ///     .save_with_parent_after(Checkpoint::new("run", "act", &30)?, &v1.id, Some(&v2.id))
    ///     .await;
    /// assert!(late.unwrap_err().is_conflict());
    /// # Ok(()) }
    /// ```
    pub async fn save_with_parent_after(
        &self,
        checkpoint: Checkpoint,
        parent: &CheckpointId,
        expected_latest: Option<&CheckpointId>,
    ) -> Result<Checkpoint> {
        let span = save_span!(
            "ckpt.save_with_parent_after",
            self,
            checkpoint.execution_id.as_str()
        );
        let exec = failure_names(&checkpoint);
        let saved = async {
            for (what, id) in [
                ("parent", Some(parent)),
                ("expected latest", expected_latest),
            ] {
                if let Some(id) = id {
                    if id.execution_id() != checkpoint.execution_id {
                        return Err(Error::InvalidInput(format!(
                            "save_with_parent_after: the {what} {id} is not a checkpoint of \
                             execution {:?}",
                            checkpoint.execution_id
                        )));
                    }
                }
            }
            let expect = Expect::Latest(expected_latest.map(CheckpointId::version));
            let pending = vec![Pending::child_of(checkpoint, parent)];
            self.save_pending_in(pending, expect, &span).await
        };
        self.save_one(&span, "save_with_parent_after", exec.as_deref(), saved)
            .await
    }

    /// `saved`, a save of one checkpoint, as save operation `operation` (see
    /// [`Store::traced_save`]; not an `async fn`, see `trace::in_span`).
    fn save_one<'a>(
        &'a self,
        span: &'a tracing::Span,
        operation: &'static str,
        execution_id: Option<&'a str>,
        saved: impl std::future::Future<Output = Result<Vec<Checkpoint>>> + 'a,
    ) -> impl std::future::Future<Output = Result<Checkpoint>> + 'a {
        self.traced_save(span, operation, execution_id, saved)
            .map(|saved| {
                saved?
                    .pop()
                    .ok_or_else(|| Error::InvalidInput("nothing to save".into()))
            })
    }

    /// Saves several checkpoints (of one or more executions) atomically: after an error, none of
    /// them is stored. Returned in the order given.
    pub async fn save_batch(&self, checkpoints: Vec<Checkpoint>) -> Result<Vec<Checkpoint>> {
        // A batch names its execution when it has only one (and someone may listen).
        let exec = match checkpoints.split_first() {
            Some((first, rest)) if rest.iter().all(|c| c.execution_id == first.execution_id) => {
                failure_names(first)
            }
            _ => None,
        };
        let span = save_span!("ckpt.save_batch", self, exec.as_deref());
        let pending = checkpoints.into_iter().map(Pending::plain).collect();
        let saved = self.save_pending_in(pending, Expect::Any, &span);
        self.traced_save(&span, "save_batch", exec.as_deref(), saved)
            .await
    }

    /// [`Store::save_pending_in`] outside any save span (a fork, a salvaged checkpoint).
    pub(super) async fn save_pending(
        &self,
        pending: Vec<Pending>,
        expect: Expect,
    ) -> Result<Vec<Checkpoint>> {
        self.save_pending_in(pending, expect, &tracing::Span::none())
            .await
    }

    /// Saves `pending` (grouped by execution, each group in order) atomically, as one backend
    /// call, retrying per [`Attempts`]; returns the checkpoints as stored, in the order given.
    /// Records the bytes written and the retries in `span`.
    pub(super) async fn save_pending_in(
        &self,
        pending: Vec<Pending>,
        expect: Expect,
        span: &tracing::Span,
    ) -> Result<Vec<Checkpoint>> {
        if pending.is_empty() {
            return Ok(Vec::new());
        }
        // Group by execution (order kept within each), lock executions in id order.
        let mut groups: BTreeMap<String, Vec<(usize, Pending)>> = BTreeMap::new();
        for (i, p) in pending.into_iter().enumerate() {
            p.checkpoint.validate()?;
            groups
                .entry(p.checkpoint.execution_id.clone())
                .or_default()
                .push((i, p));
        }
        let total: usize = groups.values().map(Vec::len).sum();
        let crypto = self.crypto().await?;
        crypto.check_writable()?;
        let codec = crypto.codec();
        // Taken before the execution locks, in the same order as gc, so the two cannot deadlock.
        let _shared = self.inner.gc_lock.read().await;
        let mut guards: Vec<OwnedMutexGuard<ExecIndex>> = Vec::with_capacity(groups.len());
        for exec in groups.keys() {
            guards.push(self.handle(exec).lock_owned().await);
        }
        let mut attempts = Attempts::new(expect);
        // Read once per store: whether saves feed a search index.
        if self.search_index_unknown() {
            self.index_on().await?;
        }
        loop {
            let mut indexed = Vec::new();
            let fence = self.fence(&mut guards).await?;
            let batch = self
                .prepare_batch(&mut guards, &groups, &attempts, &fence, codec)
                .await?;
            let mut appends = batch.appends;
            appends.extend(fence.append);
            let blob_bytes: u64 = batch.blobs.iter().map(|(_, b)| b.len() as u64).sum();
            match self.commit(appends, batch.blobs).await {
                Ok(()) => {
                    span.record("bytes", batch.bytes + blob_bytes);
                    if attempts.retries > 0 {
                        span.record("retries", attempts.retries);
                    }
                    if let Some(position) = fence.unfenced {
                        self.repair_after_gc(position, &batch.needed, codec).await?;
                    }
                    self.count_frames(total as u64, batch.bytes);
                    let saved = self.apply_committed(
                        &mut guards,
                        &groups,
                        batch.prepared,
                        batch.tails,
                        fence.epoch,
                        &mut indexed,
                    );
                    for idx in guards.iter_mut() {
                        self.after_move(idx).await;
                    }
                    // Off the execution locks: the indexer may be busy.
                    drop(guards);
                    drop(_shared);
                    self.index_saved(indexed).await;
                    return Ok(saved);
                }
                Err(e) => {
                    let first = groups.keys().next().map_or("", String::as_str);
                    self.on_conflict(e, &mut attempts, first).await?;
                }
            }
        }
    }

    /// Step 1: reads where the save stands against gc, and revalidates every locked
    /// execution's cached stored state that was read under another gc position.
    pub(super) async fn fence(&self, guards: &mut [OwnedMutexGuard<ExecIndex>]) -> Result<Fence> {
        // Read before any blob is checked or written: see `reclaim`.
        let append = self.gc_fence().await?;
        let unfenced = self.gc_position_unfenced().await?;
        let epoch = append.as_ref().map(|f| f.expected_seq).or(unfenced);
        for idx in guards.iter_mut() {
            if epoch != Some(idx.stored_epoch) {
                self.revalidate_stored_state(idx, epoch.unwrap_or(0))
                    .await?;
            }
        }
        Ok(Fence {
            append,
            unfenced,
            epoch,
        })
    }

    /// Step 2: brings each execution's projection up to date (unless trusted), checks the
    /// caller's precondition, encodes the frames, and the blobs they lift that must be put.
    async fn prepare_batch(
        &self,
        guards: &mut [OwnedMutexGuard<ExecIndex>],
        groups: &BTreeMap<String, Vec<(usize, Pending)>>,
        attempts: &Attempts,
        fence: &Fence,
        codec: &Codec,
    ) -> Result<Batch> {
        let mut prepared = Vec::with_capacity(groups.len());
        let mut lifted = codec.lifting();
        for (idx, group) in guards.iter_mut().zip(groups.values()) {
            let trusted = attempts.trust_cache && idx.synced;
            if !trusted {
                self.refresh_recent(idx).await?;
            }
            let old_parent = group.iter().any(|(_, p)| {
                p.parent_must_be_live
                    && p.parent
                        .as_ref()
                        .is_some_and(|r| r.execution.is_none() && idx.before_horizon(r.version))
            });
            if old_parent {
                self.refresh(idx).await?;
            }
            if let Expect::Latest(v) = attempts.expect {
                if trusted && idx.latest_live() != v {
                    self.refresh_recent(idx).await?;
                }
                let actual = idx.latest_live();
                if actual != v {
                    return Err(Error::Conflict {
                        log: idx.log.to_string(),
                        expected: v.unwrap_or(0),
                        actual: actual.unwrap_or(0),
                    });
                }
            }
            prepared.push(self.prepare(idx, group, &mut lifted, codec).await?);
        }
        let needed = match fence.unfenced {
            Some(_) => lifted.blobs.clone(),
            None => Vec::new(),
        };
        let blobs = self.encode_blobs(lifted.blobs, codec).await?;
        let appends: Vec<LogAppend> = prepared
            .iter_mut()
            .map(|p| std::mem::take(&mut p.append))
            .collect();
        let bytes: u64 = appends
            .iter()
            .flat_map(|a| &a.frames)
            .map(|f| f.len() as u64)
            .sum();
        let tails: Vec<(u64, Option<[u8; 8]>)> = appends
            .iter()
            .map(|a| {
                let sum = a.frames.last().and_then(|f| super::persist::frame_sum(f));
                (a.expected_seq + a.frames.len() as u64, sum)
            })
            .collect();
        self.count_blobs(&blobs);
        Ok(Batch {
            prepared,
            appends,
            blobs,
            needed,
            bytes,
            tails,
        })
    }

    /// After step 3 succeeded: folds the saves into the projections (with the newest state,
    /// stamped with the gc position it was prepared under), tells watchers, and returns the
    /// checkpoints as stored in the order they were given.
    fn apply_committed(
        &self,
        guards: &mut [OwnedMutexGuard<ExecIndex>],
        groups: &BTreeMap<String, Vec<(usize, Pending)>>,
        prepared: Vec<Prepared>,
        tails: Vec<(u64, Option<[u8; 8]>)>,
        epoch: Option<u64>,
        indexed: &mut Vec<super::search_index::SavedWords>,
    ) -> Vec<Checkpoint> {
        let total: usize = groups.values().map(Vec::len).sum();
        let mut out: Vec<(usize, Checkpoint)> = Vec::with_capacity(total);
        for (((idx, group), p), tail) in guards
            .iter_mut()
            .zip(groups.values())
            .zip(prepared)
            .zip(tails)
        {
            let log = idx.log.clone();
            let mut words = p.words.into_iter();
            for ((header, body_len, frame_len, cp), (i, _)) in p.saves.into_iter().zip(group) {
                let version = cp.version;
                if let Some(words) = words.next() {
                    indexed.push(super::search_index::SavedWords::new(&cp, &header, words));
                }
                idx.apply_save(version, header, body_len, frame_len);
                let _ = self.inner.saved.send((log.clone(), version));
                out.push((*i, cp));
            }
            let (tail, sum) = tail;
            idx.next_seq = tail;
            idx.tail_sum = sum.map(|s| (tail - 1, s));
            idx.newest_state = p.newest_state;
            idx.stored_epoch = epoch.unwrap_or(0);
            self.note_tail(idx);
        }
        out.sort_by_key(|(i, _)| *i);
        out.into_iter().map(|(_, cp)| cp).collect()
    }

    /// Step 4: decides what a failed commit means. `Ok(())` to prepare again (after waiting
    /// where that is due), else the error to return: the conflict itself when the caller's
    /// precondition failed, "gave up" when a plain save ran out of retries, any other error as is.
    pub(super) async fn on_conflict(
        &self,
        e: Error,
        attempts: &mut Attempts,
        exec: &str,
    ) -> Result<()> {
        let again = self.decide_on_conflict(e, attempts, exec).await;
        if again.is_ok() {
            attempts.retries += 1;
            self.note_retry();
        }
        again
    }

    /// [`Store::on_conflict`]'s decision.
    async fn decide_on_conflict(
        &self,
        e: Error,
        attempts: &mut Attempts,
        exec: &str,
    ) -> Result<()> {
        match e {
            // A gc began elsewhere: prepare again once it has ended, whatever `expect`.
            e if reclaim::is_fence_conflict(&e) && attempts.fenced_off < MAX_FENCE_RETRIES => {
                attempts.fenced_off += 1;
                self.forget_gc_fence();
                Ok(())
            }
            // The log moved since this store last looked: look, then decide.
            Error::Conflict { .. } if attempts.trust_cache => {
                attempts.trust_cache = false;
                Ok(())
            }
            // Another writer appended first: a plain save goes on top of it. A precondition on
            // the latest checkpoint looks again too, since the log also moves for writes
            // (`put_writes`) that leave the latest checkpoint as it was; the precondition is
            // checked on that fresh view and fails there if a save landed.
            Error::Conflict { .. } if attempts.may_retry() => {
                crate::backend::retry::STORE_CONFLICT
                    .pause(attempts.conflicts)
                    .await;
                attempts.conflicts += 1;
                Ok(())
            }
            Error::Conflict { .. } if matches!(attempts.expect, Expect::Any) => {
                Err(self.gave_up(exec))
            }
            e => Err(e),
        }
    }

    /// Encodes the frames of one execution's pending saves on top of its current projection.
    async fn prepare(
        &self,
        idx: &mut ExecIndex,
        group: &[(usize, Pending)],
        lifted: &mut tree::Lifting,
        codec: &crate::codec::Codec,
    ) -> Result<Prepared> {
        let log = idx.log.clone();
        let mut seq = idx.next_seq;
        let mut parent = idx.latest_live();
        // Deltas build on the newest save (live or deleted) while anything is live; gc keeps
        // exactly those saves' chains.
        // A state that cannot be rebuilt (its chain runs through a damaged frame, or it fails
        // to rebuild) is no base: the save is then a snapshot, readable whatever came before.
        let newest = idx
            .newest_save()
            .filter(|(_, e)| parent.is_some() && e.chain.needs.is_none())
            .map(|(v, e)| (v, e.chain));
        // Whether the base's words are all in the search index: not when it was deleted (its
        // words went with it), so a save on it hands the indexer its whole state.
        let mut base_indexed = newest.is_some_and(|(v, _)| idx.live_entry(v).is_some());
        let mut base: Option<(CachedState, Chain)> = match newest {
            Some((v, chain)) => match self.state_of(idx, v).await {
                Ok(state) => Some((state, chain)),
                Err(e) if self.is_damage(&e) => None,
                Err(e) => return Err(e),
            },
            None => None,
        };
        let mut frames = Vec::with_capacity(group.len());
        let mut saves = Vec::with_capacity(group.len());
        let indexing = self.indexing_saves();
        let mut words = Vec::new();
        for (_, p) in group {
            let cp = &p.checkpoint;
            if p.parent_must_be_live {
                check_parent_is_live(idx, p.parent.as_ref())?;
            }
            let timestamp_us = p.timestamp_us.unwrap_or_else(now_micros);
            let header = |delta_base: Option<u64>| SaveHeader {
                node: cp.node_name.clone(),
                metadata: cp.metadata.clone(),
                timestamp_us,
                parent: p.parent.clone().or(parent.map(|version| ParentRef {
                    execution: None,
                    version,
                })),
                state_size: cp.state_size,
                delta_base,
            };
            let snapshot = |body: Vec<u8>| -> Result<(SaveHeader, u64, Vec<u8>, Chain)> {
                let header = header(None);
                let frame = codec.frames.encode_save(&log, seq, &header, &body)?;
                let cost = chain_cost(body.len() as u64, frame.len() as u64);
                Ok((header, body.len() as u64, frame, Chain::snapshot(seq, cost)))
            };
            let (stored, header, body_len, frame, chain) = match &base {
                Some((b, chain)) if !p.force_snapshot && chain.len < MAX_CHAIN => {
                    let raw = tree::diff(&b.logical, &cp.state);
                    let ops = tree::externalize_ops(&raw, lifted);
                    if indexing {
                        // The indexer splits the delta's strings into words, off this path.
                        words.push(if base_indexed {
                            Added::Ops(raw)
                        } else {
                            Added::State(cp.state.clone())
                        });
                    }
                    let mut stored = Value::clone(&b.stored);
                    tree::apply(&mut stored, &ops).map_err(|e| {
                        Error::corrupt(
                            format!("checkpoint {log}@{}", b.version),
                            format!("cached state does not take its own delta: {e}"),
                        )
                    })?;
                    let delta = value::encode(&tree::ops_to_value(&ops));
                    match smaller_snapshot(&stored, delta.len() as u64, cp.state_size()) {
                        Some(body) => {
                            let (header, body_len, frame, chain) = snapshot(body)?;
                            (stored, header, body_len, frame, chain)
                        }
                        None => {
                            let header = header(Some(b.version));
                            let frame = codec.frames.encode_save(&log, seq, &header, &delta)?;
                            // The budget counts bytes as stored: a LangGraph delta compresses to
                            // a third, a snapshot of blob references hardly at all.
                            let cost = chain_cost(delta.len() as u64, frame.len() as u64);
                            if chain.delta_bytes + cost
                                <= chain.snapshot_bytes.max(MIN_DELTA_BUDGET)
                            {
                                (
                                    stored,
                                    header,
                                    delta.len() as u64,
                                    frame,
                                    chain.extend(cost),
                                )
                            } else {
                                let (header, body_len, frame, chain) =
                                    snapshot(value::encode(&stored))?;
                                (stored, header, body_len, frame, chain)
                            }
                        }
                    }
                }
                _ => {
                    if indexing {
                        words.push(match &base {
                            // A snapshot after others (a chain ran long) adds only what differs
                            // from its base; tokenizing the whole state would cost as much as
                            // the save.
                            Some((b, _)) if base_indexed => {
                                Added::Ops(tree::diff(&b.logical, &cp.state))
                            }
                            _ => Added::State(cp.state.clone()),
                        });
                    }
                    let stored = tree::externalize(&cp.state, lifted);
                    let (header, body_len, frame, chain) = snapshot(value::encode(&stored))?;
                    (stored, header, body_len, frame, chain)
                }
            };
            let mut saved = cp.clone();
            saved.version = seq;
            saved.id = CheckpointId::new_unchecked(log.clone(), seq);
            saved.timestamp = from_micros(timestamp_us);
            saved.parent = self.parent_id(&log, &header.parent);
            saves.push((header, body_len, frame.len() as u64, saved));
            frames.push(frame);
            let state = CachedState {
                version: seq,
                logical: cp.state.clone(),
                stored: Arc::new(stored),
            };
            base = Some((state, chain));
            base_indexed = true;
            parent = Some(seq);
            seq += 1;
        }
        Ok(Prepared {
            append: LogAppend::new(log.to_string(), idx.next_seq, frames),
            newest_state: base.map(|(s, _)| s),
            saves,
            words,
        })
    }

    /// The stored form of the lifted leaves and chunks the backend does not have yet (each once).
    pub(super) async fn encode_blobs(
        &self,
        lifted: Vec<Lifted>,
        codec: &crate::codec::Codec,
    ) -> Result<Vec<(BlobHash, Vec<u8>)>> {
        let mut seen = HashSet::with_capacity(lifted.len());
        let lifted: Vec<Lifted> = lifted
            .into_iter()
            .filter(|(h, _)| seen.insert(*h))
            .collect();
        if lifted.is_empty() {
            return Ok(Vec::new());
        }
        let bytes: usize = lifted.iter().map(|(_, c)| c.len()).sum();
        if self.inner.traced.capabilities().blobs_with_append
            && lifted.len() <= BLIND_PUT_BLOBS
            && bytes <= BLIND_PUT_BYTES
        {
            // A delta's few new leaves: cheaper to send than to ask about.
            return lifted
                .into_iter()
                .map(|(hash, content)| Ok((hash, codec.blobs.encode(&hash, &content)?)))
                .collect();
        }
        let hashes: Vec<BlobHash> = lifted.iter().map(|(h, _)| *h).collect();
        let missing: HashSet<BlobHash> = self
            .inner
            .backend
            .missing_blobs(&hashes)
            .await?
            .into_iter()
            .collect();
        let mut stored = Vec::with_capacity(missing.len());
        for (hash, content) in lifted {
            if missing.contains(&hash) {
                stored.push((hash, codec.blobs.encode(&hash, &content)?));
            }
        }
        Ok(stored)
    }

    pub(super) fn count_blobs(&self, blobs: &[(BlobHash, Vec<u8>)]) {
        let s = &self.inner.stats;
        s.blobs.fetch_add(blobs.len() as u64, Ordering::Relaxed);
        let bytes: usize = blobs.iter().map(|(_, b)| b.len()).sum();
        s.blob_bytes.fetch_add(bytes as u64, Ordering::Relaxed);
    }

    pub(super) async fn append_one(&self, log: &str, seq: u64, frame: Vec<u8>) -> Result<()> {
        let len = frame.len() as u64;
        self.append(vec![LogAppend::new(log, seq, vec![frame])])
            .await?;
        self.count_frames(1, len);
        Ok(())
    }

    pub(super) fn count_frames(&self, n: u64, bytes: u64) {
        self.inner.stats.frames.fetch_add(n, Ordering::Relaxed);
        self.inner
            .stats
            .frame_bytes
            .fetch_add(bytes, Ordering::Relaxed);
    }

    pub(super) fn gave_up(&self, log: &str) -> Error {
        Error::Backend {
            backend: self.inner.traced.name(),
            context: format!(
                "execution {log:?}: gave up after {MAX_CONFLICT_RETRIES} conflicting appends from other writers"
            ),
            source: "too much contention".into(),
        }
    }
}

/// The execution id a failed save of `checkpoint` is logged with, kept only when a subscriber
/// may log it (the checkpoint itself is gone into the save by then).
fn failure_names(checkpoint: &Checkpoint) -> Option<String> {
    super::trace::wanted(tracing::Level::ERROR).then(|| checkpoint.execution_id.clone())
}

/// Refuses a save whose named parent (in its own execution) is not a live checkpoint there.
fn check_parent_is_live(idx: &ExecIndex, parent: Option<&ParentRef>) -> Result<()> {
    match parent {
        Some(ParentRef {
            execution: None,
            version,
        }) if idx.live_entry(*version).is_none() => Err(Error::not_found(format!(
            "checkpoint {}@{version}, named as the parent of a save (it was never saved, or was \
             deleted or cleared)",
            idx.log
        ))),
        _ => Ok(()),
    }
}

/// The encoding of state `stored` when it is no larger than its delta of `delta_len` bytes:
/// a small state whose every field changes (a step counter, a status, a cursor) costs more as
/// ops, each naming its path, than whole, and a snapshot also ends the delta chain.
/// Encoded only when it may be smaller: the stored form is at most about `state_size` (the
/// state's own MessagePack size), so a delta under half of that always wins.
fn smaller_snapshot(stored: &Value, delta_len: u64, state_size: u64) -> Option<Vec<u8>> {
    if delta_len.saturating_mul(2) < state_size {
        return None;
    }
    let snapshot = value::encode(stored);
    (snapshot.len() as u64 <= delta_len).then_some(snapshot)
}
