//! The read path: a projection brought up to its log's tail (`handle`, `index`, `refresh`),
//! a version's state rebuilt from its snapshot and deltas (`state_of`, `decode_body`,
//! `apply_body`) and its blob references resolved (`resolve`, `fetch_*`), and the reads built on
//! them: load, at_version, latest, list. Damage met on the way is contained here too: a frame
//! that fails verification makes only the versions that need it unreadable, with an error that
//! says which are still readable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use rmpv::Value;
use tokio::sync::{broadcast, OwnedMutexGuard};

use super::index::{CachedState, ExecIndex, SaveEntry};
use super::trace::{load_span, op_span};
use super::{encryption, from_micros, poisoned, seq_list, Store, FETCH_BATCH, SCAN_PAGE};
use crate::backend::{BackendExt, BlobHash};
use crate::checkpoint::{validate_execution_id, Checkpoint, CheckpointHeader, CheckpointId};
use crate::codec::frame::{self, Body, ParentRef};
use crate::codec::{blob, tree, value};
use crate::error::{Error, Result};

/// Executions whose projection (and newest state) a store keeps in memory; beyond this, idle
/// ones are dropped and rebuilt from their log when next used.
const MAX_CACHED_EXECUTIONS: usize = 1024;

impl Store {
    /// Loads one checkpoint with its state. [`Error::NotFound`] if it never existed, was
    /// deleted, or its execution was cleared.
    pub async fn load(&self, id: &CheckpointId) -> Result<Checkpoint> {
        let span = load_span!("ckpt.load", self, id.execution_id(), id.version());
        self.read_version(&span, id.execution_id(), id.version())
            .await
    }

    /// The checkpoint of `execution_id` at `version`.
    pub async fn at_version(&self, execution_id: &str, version: u64) -> Result<Checkpoint> {
        let span = load_span!("ckpt.at_version", self, execution_id, version);
        self.read_version(&span, execution_id, version).await
    }

    /// [`Store::at_version`] in `span`.
    async fn read_version(
        &self,
        span: &tracing::Span,
        execution_id: &str,
        version: u64,
    ) -> Result<Checkpoint> {
        let read = async {
            validate_execution_id(execution_id)?;
            self.read_consistent(|| self.at_version_once(execution_id, version))
                .await
        };
        let cp = self.traced(span, read).await?;
        self.note_loaded(span, [&cp]);
        Ok(cp)
    }

    pub(super) async fn at_version_once(
        &self,
        execution_id: &str,
        version: u64,
    ) -> Result<Checkpoint> {
        let mut idx = self.recent_index(execution_id).await?;
        if idx.before_horizon(version) {
            if let Some(cp) = self.old_version_from_frames(&idx, version).await? {
                return Ok(cp);
            }
            self.refresh(&mut idx).await?;
        }
        if let Some(reason) = idx.damaged.get(&version) {
            return Err(damage_error(
                &idx,
                version,
                format!("checkpoint {execution_id}@{version}"),
                format!(
                    "its frame (execution {execution_id:?} seq {version}) is damaged: {reason}"
                ),
            ));
        }
        let Some(entry) = idx.live_entry(version).cloned() else {
            drop(idx);
            return Err(self.lost_or_not_found(execution_id, version).await);
        };
        if let Some(d) = idx.unreadable_because(version) {
            if entry.chain.needs.is_none() {
                return Err(maybe_deleted(&idx, version, d));
            }
        }
        let state = self.state_of(&mut idx, version).await?.logical;
        Ok(self.checkpoint(&idx.log, version, &entry, state))
    }

    /// A version before a partial projection's horizon, read from its own frames: its save and
    /// the delta chain back to its snapshot, found by following each delta's base through a
    /// few widening scans, without folding the log. `Ok(None)` when the frames cannot tell (the
    /// projection does not know which old versions were deleted, a frame is missing or
    /// damaged, the chain is longer than saves make it): the caller folds the whole log.
    async fn old_version_from_frames(
        &self,
        idx: &ExecIndex,
        version: u64,
    ) -> Result<Option<Checkpoint>> {
        /// Saves followed back before giving up (a chain is at most 100 deltas long).
        const MAX_FOLLOWED: usize = 256;
        let Some(deleted) = &idx.deleted_below else {
            return Ok(None);
        };
        // A damaged frame folded since the record may have been this version's delete: what
        // it means for old versions is for the whole fold to tell.
        if !idx.damaged.is_empty() {
            return Ok(None);
        }
        if version <= idx.cleared_at || deleted.contains(&version) {
            return Err(self.lost_or_not_found(&idx.log, version).await);
        }
        // Frames `lo..=version` read so far, and the saves of the chain, newest first.
        let mut frames: HashMap<u64, Vec<u8>> = HashMap::new();
        let mut lo = version + 1;
        let mut width = 128;
        let mut chain: Vec<(u64, frame::SaveHeader, Vec<u8>)> = Vec::new();
        let mut want = version;
        loop {
            if want < lo {
                let from = lo.saturating_sub(width).min(want).max(1);
                frames.extend(self.scan_range(&idx.log, from, lo).await?);
                lo = from;
                width = width.saturating_mul(2);
            }
            let Some(bytes) = frames.remove(&want) else {
                return Ok(None);
            };
            let decoded = match self.codec()?.frames.decode(&idx.log, want, &bytes) {
                Ok(d) => d,
                Err(e) if self.is_damage(&e) => return Ok(None),
                Err(e) => return Err(e),
            };
            let frame::Event::Save(header) = decoded.event else {
                // The version is another event (a write, a delete): no checkpoint there.
                return match want == version {
                    true => Err(self.lost_or_not_found(&idx.log, version).await),
                    false => Ok(None),
                };
            };
            let base = header.delta_base;
            chain.push((want, header, decoded.body));
            match base {
                None => break,
                Some(b) if b < want && chain.len() < MAX_FOLLOWED => want = b,
                Some(_) => return Ok(None),
            }
        }
        let mut state = None;
        let mut applied = None;
        for (seq, header, body) in chain.iter().rev() {
            let body = frame::decode_body(&idx.log, *seq, header, body)?;
            check_base(&idx.log, *seq, &body, applied)?;
            state = Some(self.apply_body(&idx.log, *seq, state, body)?);
            applied = Some(*seq);
        }
        let (Some(stored), Some((_, header, body))) = (state, chain.into_iter().next()) else {
            return Ok(None);
        };
        let logical = Arc::new(self.resolve(&idx.log, version, &stored).await?);
        let entry = SaveEntry {
            header,
            deleted: false,
            chain: super::index::Chain::snapshot(version, body.len() as u64),
            frame_len: 0,
        };
        Ok(Some(self.checkpoint(&idx.log, version, &entry, logical)))
    }

    /// The error for a version the log does not hold: [`Error::Corrupt`] when the backend
    /// recorded it as lost (a rollback of its files), else [`Error::NotFound`].
    pub(super) async fn lost_or_not_found(&self, execution_id: &str, version: u64) -> Error {
        let not_found = Error::not_found(format!("checkpoint {execution_id}@{version}"));
        let Ok(recorded) = self.recorded_damage().await else {
            return not_found;
        };
        recorded
            .into_iter()
            .find(|d| {
                d.log.as_deref() == Some(execution_id)
                    && d.lost
                        .is_some_and(|(from, to)| (from..to).contains(&version))
            })
            .map_or(not_found, |d| {
                Error::corrupt(format!("checkpoint {execution_id}@{version}"), d.detail)
            })
    }

    /// The newest live checkpoint of an execution, if any.
    pub async fn latest(&self, execution_id: &str) -> Result<Option<Checkpoint>> {
        let span = op_span!(
            "ckpt.latest", self;
            execution_id,
            version = tracing::field::Empty,
            bytes = tracing::field::Empty
        );
        let read = async {
            validate_execution_id(execution_id)?;
            self.read_consistent(|| self.latest_once(execution_id))
                .await
        };
        let latest = self.traced(&span, read).await?;
        if let Some(cp) = &latest {
            span.record("version", cp.version);
        }
        self.note_loaded(&span, &latest);
        Ok(latest)
    }

    pub(super) async fn latest_once(&self, execution_id: &str) -> Result<Option<Checkpoint>> {
        let mut idx = self.recent_index(execution_id).await?;
        let latest = idx.latest_live();
        // A damaged frame after the newest live save may have been a newer save: answering with
        // an older one would silently roll the execution back.
        if let Some((seq, reason)) = idx.live_damage().next_back() {
            if latest.is_none_or(|v| seq > v) {
                return Err(damage_error(
                    &idx,
                    seq,
                    format!("execution {execution_id:?}"),
                    format!(
                        "its newest frame (seq {seq}) is damaged ({reason}), so its latest \
                         checkpoint cannot be told; {}",
                        readable_hint(&idx)
                    ),
                ));
            }
        }
        let Some(version) = latest else {
            return Ok(None);
        };
        let entry = idx.saves[&version].clone();
        let state = self.state_of(&mut idx, version).await?.logical;
        Ok(Some(self.checkpoint(&idx.log, version, &entry, state)))
    }

    /// Every live checkpoint of an execution with its state, oldest first (empty if none).
    pub async fn list(&self, execution_id: &str) -> Result<Vec<Checkpoint>> {
        let span = op_span!(
            "ckpt.list", self;
            execution_id,
            count = tracing::field::Empty,
            bytes = tracing::field::Empty
        );
        let read = async {
            validate_execution_id(execution_id)?;
            self.read_consistent(|| self.list_once(execution_id)).await
        };
        let list = self.traced(&span, read).await?;
        span.record("count", list.len());
        self.note_loaded(&span, &list);
        Ok(list)
    }

    pub(super) async fn list_once(&self, execution_id: &str) -> Result<Vec<Checkpoint>> {
        let idx = self.index(execution_id).await?;
        // A damaged frame may have been a live save: a list without it would be silently short.
        let damaged: Vec<u64> = idx.live_damage().map(|(s, _)| s).collect();
        if let Some((seq, reason)) = idx.live_damage().next() {
            return Err(damage_error(
                &idx,
                seq,
                format!("execution {execution_id:?}"),
                format!(
                    "frame(s) seq {} are damaged (seq {seq}: {reason}), so not every live \
                     checkpoint can be listed; {}",
                    seq_list(&damaged),
                    readable_hint(&idx)
                ),
            ));
        }
        let Some((first, _)) = idx.live().next() else {
            return Ok(Vec::new());
        };
        let start = idx.saves[&first].chain.start;
        let frames = self.scan_range(&idx.log, start, idx.next_seq).await?;
        let mut state: Option<Value> = None;
        let mut applied = None;
        let mut out = Vec::with_capacity(idx.live_count);
        for (seq, bytes) in &frames {
            let Some(entry) = idx.saves.get(seq) else {
                continue;
            };
            let body = self.decode_body(&idx.log, *seq, bytes)?;
            check_base(&idx.log, *seq, &body, applied)?;
            state = Some(self.apply_body(&idx.log, *seq, state, body)?);
            applied = Some(*seq);
            if !entry.deleted {
                if let Some(s) = &state {
                    let logical = Arc::new(self.resolve(&idx.log, *seq, s).await?);
                    out.push(self.checkpoint(&idx.log, *seq, entry, logical));
                }
            }
        }
        Ok(out)
    }

    pub(super) fn handle(&self, exec: &str) -> Arc<tokio::sync::Mutex<ExecIndex>> {
        let mut map = match self.inner.executions.lock() {
            Ok(m) => m,
            Err(p) => p.into_inner(),
        };
        if map.len() >= MAX_CACHED_EXECUTIONS && !map.contains_key(exec) {
            // Projections are rebuilt from the log on demand: forget those nobody is using,
            // but not those whose summary record is queued (a handful: they are written 64 at a
            // time), which a forgotten projection could not write: the next listing would fold
            // their logs.
            let dirty = self.inner.dirty_records.lock();
            let queued = |exec: &str| dirty.as_ref().is_ok_and(|d| d.contains(exec));
            map.retain(|exec, idx| Arc::strong_count(idx) > 1 || queued(exec));
        }
        map.entry(exec.to_owned())
            .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(ExecIndex::new(exec.into()))))
            .clone()
    }

    /// Whether this store already knows `version` of `exec` to be gone (deleted or cleared),
    /// from its projection in memory, without reading anything: `false` when it does not know
    /// (the projection is busy, or was never built). A watch asks before it yields a checkpoint
    /// it read earlier.
    pub(crate) fn known_gone(&self, exec: &str, version: u64) -> bool {
        let handle = match self.inner.executions.lock() {
            Ok(m) => m.get(exec).cloned(),
            Err(p) => p.into_inner().get(exec).cloned(),
        };
        let Some(handle) = handle else {
            return false;
        };
        let Ok(idx) = handle.try_lock() else {
            return false;
        };
        idx.cleared_at > version || idx.saves.get(&version).is_some_and(|e| e.deleted)
    }

    /// Whether this store's projection of `exec` in memory has met damage (`false` when it has
    /// none in memory, or it is busy).
    pub(super) fn known_damaged(&self, exec: &str) -> bool {
        let handle = match self.inner.executions.lock() {
            Ok(m) => m.get(exec).cloned(),
            Err(p) => p.into_inner().get(exec).cloned(),
        };
        handle.is_some_and(|h| h.try_lock().is_ok_and(|idx| !idx.damaged.is_empty()))
    }

    /// The execution's whole projection, brought up to the log's tail.
    pub(super) async fn index(&self, exec: &str) -> Result<OwnedMutexGuard<ExecIndex>> {
        let mut idx = self.handle(exec).lock_owned().await;
        self.refresh(&mut idx).await?;
        Ok(idx)
    }

    /// The execution's projection brought up to the log's tail, possibly partial (loaded from
    /// its persisted record, see `persist`): it holds the newest live save and the saves near
    /// it. Callers that need a version before its horizon call [`Store::refresh`] on it.
    pub(super) async fn recent_index(&self, exec: &str) -> Result<OwnedMutexGuard<ExecIndex>> {
        let mut idx = self.handle(exec).lock_owned().await;
        self.refresh_recent(&mut idx).await?;
        Ok(idx)
    }

    /// Brings `idx` up to the log's tail and makes it whole (a partial projection is folded
    /// again from the whole log).
    pub(super) async fn refresh(&self, idx: &mut ExecIndex) -> Result<()> {
        if !idx.is_complete() {
            idx.reset();
        }
        self.fold_tail(idx).await?;
        self.after_move(idx).await;
        Ok(())
    }

    /// Brings `idx` up to the log's tail, starting a fresh projection from its persisted
    /// record when there is a usable one.
    pub(super) async fn refresh_recent(&self, idx: &mut ExecIndex) -> Result<()> {
        let fresh = idx.next_seq == 1 && !idx.synced;
        let mut known_tail = None;
        let mut first_page = None;
        if fresh {
            self.crypto().await?;
            let tail = self.tail(&idx.log).await?;
            // A log never appended to has no record worth a read: a new execution's first save.
            if tail > 1 {
                first_page = self.load_record(idx).await?;
            }
            known_tail = Some(tail);
        }
        self.fold_tail_to(idx, known_tail, first_page).await?;
        if idx.needs_complete || !idx.holds_latest() {
            idx.reset();
            self.fold_tail(idx).await?;
        }
        self.after_move(idx).await;
        Ok(())
    }

    /// Folds any frames appended since the projection was last brought up to date. A gap (frames
    /// removed by gc before this projection saw them) rebuilds it from the log.
    async fn fold_tail(&self, idx: &mut ExecIndex) -> Result<()> {
        self.fold_tail_to(idx, None, None).await
    }

    /// [`Store::fold_tail`] to `tail` when the caller has just read it, starting with
    /// `first_page` when the caller has read the frames from `idx.next_seq` on (at most
    /// [`SCAN_PAGE`], as a scan returns them).
    async fn fold_tail_to(
        &self,
        idx: &mut ExecIndex,
        tail: Option<u64>,
        mut first_page: Option<super::persist::Frames>,
    ) -> Result<()> {
        self.crypto().await?;
        let tail = match tail {
            Some(t) => t,
            None => self.tail(&idx.log).await?,
        };
        if tail == idx.next_seq {
            idx.synced = true;
            return Ok(());
        }
        if tail < idx.next_seq {
            idx.reset();
            first_page = None;
        }
        let mut rebuilt = idx.next_seq == 1;
        // The last frame folded: frames after it must follow it without a hole (gc removes only
        // a prefix of a log; on a fresh fold the first frame may start anywhere).
        let mut previous = (!rebuilt).then(|| idx.next_seq - 1);
        loop {
            let from = idx.next_seq;
            let page = match first_page.take() {
                Some(page) => page,
                None => self.inner.traced.scan(&idx.log, from, SCAN_PAGE).await?,
            };
            let gap = page.first().map_or(from < tail, |(s, _)| *s != from);
            if gap && !rebuilt {
                idx.reset();
                rebuilt = true;
                previous = None;
                continue;
            }
            let Some((last, _)) = page.last() else { break };
            let last = *last;
            self.inner
                .stats
                .frames_folded
                .fetch_add(page.len() as u64, std::sync::atomic::Ordering::Relaxed);
            for (seq, bytes) in &page {
                if let Some(p) = previous.filter(|p| *seq > p + 1) {
                    idx.apply_missing(p + 1, *seq);
                }
                previous = Some(*seq);
                idx.note_folded(*seq);
                match self.codec()?.frames.decode(&idx.log, *seq, bytes) {
                    Ok(decoded) => idx.apply(*seq, &decoded, bytes.len() as u64),
                    // Contained: only the versions that need this frame become unreadable.
                    Err(e) if self.is_damage(&e) => {
                        let key_id = match &e {
                            Error::Decrypt { key_id, .. } => Some(key_id.clone()),
                            _ => None,
                        };
                        idx.apply_damaged(*seq, damage_reason(&e), key_id, bytes.len() as u64)
                    }
                    Err(e) => return Err(e),
                }
            }
            idx.next_seq = last + 1;
            idx.tail_sum = page
                .last()
                .and_then(|(seq, bytes)| Some((*seq, super::persist::frame_sum(bytes)?)));
            if page.len() < SCAN_PAGE {
                break;
            }
        }
        // Frames end below the log's next sequence number: a lost tail (a log keeps its last
        // frame until gc removes all of it).
        if let Some(p) = previous.filter(|p| tail > p + 1) {
            idx.apply_missing(p + 1, tail);
        }
        idx.next_seq = idx.next_seq.max(tail);
        idx.synced = true;
        self.note_tail(idx);
        Ok(())
    }

    /// Records the tail `idx` has reached, for watchers starting later.
    pub(super) fn note_tail(&self, idx: &ExecIndex) {
        let mut tails = match self.inner.known_tails.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        if tails.len() >= MAX_CACHED_EXECUTIONS * 16 {
            tails.clear();
        }
        tails.insert(idx.log.clone(), idx.next_seq);
    }

    /// The log tail of `exec` as this store last saw it, if it has looked.
    pub(crate) fn known_tail(&self, exec: &str) -> Option<u64> {
        let tails = match self.inner.known_tails.lock() {
            Ok(t) => t,
            Err(p) => p.into_inner(),
        };
        tails.get(exec).copied()
    }

    pub(super) async fn scan_range(
        &self,
        log: &str,
        from: u64,
        to: u64,
    ) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        let mut next = from;
        while next < to {
            let want = ((to - next) as usize).min(SCAN_PAGE);
            let page = self.inner.traced.scan(log, next, want).await?;
            let Some((last, _)) = page.last() else { break };
            next = last + 1;
            out.extend(page.into_iter().filter(|(s, _)| *s < to));
        }
        Ok(out)
    }

    /// The state of `version` (a save in `idx`), from the cache or rebuilt from its chain.
    pub(super) async fn state_of(&self, idx: &mut ExecIndex, version: u64) -> Result<CachedState> {
        if let Some(s) = idx.cached_state(version) {
            return Ok(s);
        }
        // Before the frames: a save trusts the addresses read here only under this position.
        let epoch = self.gc_epoch_now().await?;
        let chain = idx
            .saves
            .get(&version)
            .map(|e| e.chain)
            .ok_or_else(|| Error::not_found(format!("checkpoint {}@{version}", idx.log)))?;
        if let Some(needed) = chain.needs {
            return Err(needs_damaged(idx, version, needed));
        }
        let frames = self.scan_range(&idx.log, chain.start, version + 1).await?;
        let mut state = None;
        let mut applied = None;
        for (seq, bytes) in &frames {
            if idx.saves.contains_key(seq) {
                let body = self.decode_body(&idx.log, *seq, bytes)?;
                check_base(&idx.log, *seq, &body, applied)?;
                state = Some(self.apply_body(&idx.log, *seq, state, body)?);
                applied = Some(*seq);
            }
        }
        // The chain must end at the version itself: a log that no longer returns its frame
        // (a damaged page hides it) would otherwise yield the state before it.
        let stored = state.filter(|_| applied == Some(version)).ok_or_else(|| {
            Error::corrupt(
                format!("execution {:?} seq {version}", idx.log),
                "the save's frame is missing from the log",
            )
        })?;
        let logical = Arc::new(self.resolve(&idx.log, version, &stored).await?);
        let state = CachedState {
            version,
            logical,
            stored: Arc::new(stored),
        };
        if idx.newest_save().is_some_and(|(v, _)| v == version) {
            idx.newest_state = Some(state.clone());
            idx.stored_epoch = epoch;
        }
        Ok(state)
    }

    /// The logical states of several versions of one execution, rebuilt in one pass over its
    /// log: a chain the versions share is read and applied once (a search checks runs of
    /// candidates of one execution, each of which a load would rebuild from its snapshot).
    /// Only versions that read cleanly are returned; the caller loads any other one by one, so
    /// that it gets the error a load gives.
    pub(super) async fn states_along(
        &self,
        exec: &str,
        versions: &std::collections::BTreeSet<u64>,
    ) -> Result<HashMap<u64, Arc<Value>>> {
        let mut idx = self.recent_index(exec).await?;
        if versions.first().is_some_and(|v| idx.before_horizon(*v)) {
            self.refresh(&mut idx).await?;
        }
        let wanted: Vec<(u64, u64)> = versions
            .iter()
            .filter_map(|&v| {
                let entry = idx.live_entry(v)?;
                let clean = !idx.damaged.contains_key(&v) && idx.unreadable_because(v).is_none();
                clean.then_some((v, entry.chain.start))
            })
            .collect();
        let (Some(start), Some(&(last, _))) = (wanted.iter().map(|(_, s)| *s).min(), wanted.last())
        else {
            return Ok(HashMap::new());
        };
        let frames = self.scan_range(&idx.log, start, last + 1).await?;
        let mut out = HashMap::new();
        let mut state = None;
        let mut applied = None;
        // Saves follow one another in the log (each delta is on the save before it), so one
        // pass from the oldest chain's snapshot passes through every wanted version.
        for (seq, bytes) in &frames {
            if !idx.saves.contains_key(seq) {
                continue;
            }
            let step = self.decode_body(&idx.log, *seq, bytes).and_then(|body| {
                check_base(&idx.log, *seq, &body, applied)?;
                self.apply_body(&idx.log, *seq, state.take(), body)
            });
            let Ok(next) = step else {
                // A frame between the versions does not read: what was rebuilt stands, the
                // rest is loaded one by one.
                break;
            };
            applied = Some(*seq);
            if wanted.binary_search_by_key(seq, |(v, _)| *v).is_ok() {
                out.insert(*seq, Arc::new(self.resolve(&idx.log, *seq, &next).await?));
            }
            state = Some(next);
        }
        Ok(out)
    }

    pub(super) fn decode_body(&self, log: &str, seq: u64, bytes: &[u8]) -> Result<Body> {
        let decoded = self.codec()?.frames.decode(log, seq, bytes)?;
        match decoded.event {
            frame::Event::Save(h) => frame::decode_body(log, seq, &h, &decoded.body),
            _ => Err(Error::corrupt(
                format!("execution {log:?} seq {seq}"),
                "expected a save, found another event",
            )),
        }
    }

    /// A write's value (stored form, as a snapshot body) from its frame.
    pub(super) fn decode_write(&self, log: &str, seq: u64, bytes: &[u8]) -> Result<Body> {
        let decoded = self.codec()?.frames.decode(log, seq, bytes)?;
        match decoded.event {
            frame::Event::Write(_) => decoded.body(log, seq)?.ok_or_else(|| {
                Error::corrupt(
                    format!("execution {log:?} seq {seq}"),
                    "a write without a value",
                )
            }),
            _ => Err(Error::corrupt(
                format!("execution {log:?} seq {seq}"),
                "expected a write, found another event",
            )),
        }
    }

    pub(super) fn apply_body(
        &self,
        log: &str,
        seq: u64,
        state: Option<Value>,
        body: Body,
    ) -> Result<Value> {
        match (body, state) {
            (Body::Snapshot(v), _) => Ok(v),
            (Body::Delta { ops, .. }, Some(mut s)) => {
                tree::apply(&mut s, &ops).map_err(|e| {
                    Error::corrupt(
                        format!("execution {log:?} seq {seq}"),
                        format!("delta does not apply: {e}"),
                    )
                })?;
                Ok(s)
            }
            (Body::Delta { base, .. }, None) => Err(Error::corrupt(
                format!("execution {log:?} seq {seq}"),
                format!("delta from version {base}, whose state is not in the log"),
            )),
        }
    }

    /// Replaces blob references in a stored-form state by the (verified) content.
    pub(super) async fn resolve(&self, log: &str, version: u64, stored: &Value) -> Result<Value> {
        let mut refs = HashSet::new();
        tree::collect_refs(stored, &mut refs);
        if refs.is_empty() {
            return Ok(stored.clone());
        }
        let missing: Vec<tree::Ref> = {
            let cache = self.inner.blob_cache.lock().map_err(|_| poisoned())?;
            refs.into_iter()
                .filter(|r| !cache.values.contains_key(&r.hash()))
                .collect()
        };
        // Fetched leaves are kept here too: the cache may evict them before substitution.
        let mut fetched: HashMap<BlobHash, Value> = HashMap::with_capacity(missing.len());
        let referrer = format!("checkpoint {log}@{version}");
        let leaves: Vec<BlobHash> = missing
            .iter()
            .filter_map(|r| match r {
                tree::Ref::Leaf(h) => Some(*h),
                tree::Ref::Chunked(_) => None,
            })
            .collect();
        // A cold load reads a state's many leaves in a few round trips, not one each.
        for group in leaves.chunks(FETCH_BATCH) {
            for (hash, content) in group.iter().zip(self.fetch_blobs(&referrer, group).await?) {
                let leaf = value::decode(&content)
                    .map_err(|e| Error::corrupt(format!("blob {}", blob::hex(hash)), e))?;
                fetched.insert(*hash, leaf);
            }
        }
        for r in &missing {
            if let tree::Ref::Chunked(h) = r {
                fetched.insert(*h, self.fetch_chunked(log, version, h).await?);
            }
        }
        let mut cache = self.inner.blob_cache.lock().map_err(|_| poisoned())?;
        let resolved = tree::substitute(stored, &|h| {
            fetched.get(h).or_else(|| cache.values.get(h)).cloned()
        });
        for (h, leaf) in fetched {
            cache.insert(h, leaf);
        }
        resolved.ok_or_else(|| {
            Error::corrupt(
                format!("checkpoint {log}@{version}"),
                "a blob reference could not be resolved",
            )
        })
    }

    /// Reads and verifies blob `hash`, which `referrer` needs.
    pub(super) async fn fetch_blob(&self, referrer: &str, hash: &BlobHash) -> Result<Vec<u8>> {
        let codec = self.crypto().await?.codec();
        let stored = self.inner.traced.get_blob(hash).await?.ok_or_else(|| {
            Error::corrupt(
                format!("blob {}", blob::hex(hash)),
                format!("missing, but referenced by {referrer}"),
            )
        })?;
        codec.blobs.decode(hash, &stored)
    }

    /// Reads and verifies the blobs `hashes` (in one backend call), which `referrer` needs.
    pub(super) async fn fetch_blobs(
        &self,
        referrer: &str,
        hashes: &[BlobHash],
    ) -> Result<Vec<Vec<u8>>> {
        let codec = self.crypto().await?.codec();
        let stored = self.inner.traced.get_blobs(hashes).await?;
        if stored.len() != hashes.len() {
            return Err(Error::Backend {
                backend: self.inner.traced.name(),
                context: format!("reading {} blobs", hashes.len()),
                source: format!("{} came back (a bug in the backend)", stored.len()).into(),
            });
        }
        hashes
            .iter()
            .zip(stored)
            .map(|(hash, stored)| {
                let stored = stored.ok_or_else(|| {
                    Error::corrupt(
                        format!("blob {}", blob::hex(hash)),
                        format!("missing, but referenced by {referrer}"),
                    )
                })?;
                codec.blobs.decode(hash, &stored)
            })
            .collect()
    }

    /// Reads and verifies the manifest `hash`.
    pub(super) async fn fetch_manifest(
        &self,
        referrer: &str,
        hash: &BlobHash,
    ) -> Result<tree::Manifest> {
        let content = self.fetch_blob(referrer, hash).await?;
        tree::Manifest::decode(&content)
            .map_err(|e| Error::corrupt(format!("blob {}", blob::hex(hash)), e))
    }

    /// Reassembles the leaf whose chunks manifest `hash` lists, verifying every chunk.
    pub(super) async fn fetch_chunked(
        &self,
        log: &str,
        version: u64,
        hash: &BlobHash,
    ) -> Result<Value> {
        let referrer = format!("checkpoint {log}@{version}");
        let manifest = self.fetch_manifest(&referrer, hash).await?;
        let mut chunks = Vec::with_capacity(manifest.chunks.len());
        for group in manifest.chunks.chunks(FETCH_BATCH) {
            chunks.extend(self.fetch_blobs(&referrer, group).await?);
        }
        manifest
            .assemble(chunks)
            .map_err(|e| Error::corrupt(format!("blob {}", blob::hex(hash)), e))
    }

    pub(super) fn checkpoint(
        &self,
        log: &Arc<str>,
        version: u64,
        entry: &SaveEntry,
        state: Arc<Value>,
    ) -> Checkpoint {
        let h = &entry.header;
        Checkpoint {
            id: CheckpointId::new_unchecked(log.clone(), version),
            execution_id: log.to_string(),
            node_name: h.node.clone(),
            metadata: h.metadata.clone(),
            version,
            timestamp: from_micros(h.timestamp_us),
            parent: self.parent_id(log, &h.parent),
            state,
            state_size: h.state_size,
        }
    }

    pub(super) fn header(
        &self,
        log: &Arc<str>,
        version: u64,
        entry: &SaveEntry,
    ) -> CheckpointHeader {
        let h = &entry.header;
        CheckpointHeader {
            id: CheckpointId::new_unchecked(log.clone(), version),
            execution_id: log.to_string(),
            node_name: h.node.clone(),
            metadata: h.metadata.clone(),
            version,
            timestamp: from_micros(h.timestamp_us),
            parent: self.parent_id(log, &h.parent),
            state_size: h.state_size,
            stored_size: entry.frame_len,
        }
    }

    pub(super) fn parent_id(
        &self,
        log: &Arc<str>,
        parent: &Option<ParentRef>,
    ) -> Option<CheckpointId> {
        parent.as_ref().map(|p| match &p.execution {
            None => CheckpointId::new_unchecked(log.clone(), p.version),
            Some(e) => CheckpointId::new_unchecked(e.as_str().into(), p.version),
        })
    }

    /// Checkpoints of `exec` with versions `>= from` that are live now, and the sequence number to
    /// continue from (used by [`Watch`]).
    pub(crate) async fn saved_since(
        &self,
        exec: &str,
        from: u64,
    ) -> Result<(Vec<Checkpoint>, u64)> {
        let (versions, next): (Vec<u64>, u64) = {
            let idx = self.index(exec).await?;
            let v = idx
                .live()
                .filter(|(v, _)| *v >= from)
                .map(|(v, _)| v)
                .collect();
            (v, idx.next_seq)
        };
        let mut out = Vec::with_capacity(versions.len());
        for v in versions {
            match self.at_version(exec, v).await {
                Ok(cp) => out.push(cp),
                Err(Error::NotFound { .. }) => {}
                Err(e) => return Err(e),
            }
        }
        Ok((out, next.max(from)))
    }

    /// The version of the first save of `exec` stamped at or after `since_us`, or the log's
    /// tail if there is none.
    pub(crate) async fn first_save_since(&self, exec: &str, since_us: u64) -> Result<u64> {
        let idx = self.index(exec).await?;
        let mut first = idx.next_seq;
        for (version, entry) in idx.saves.iter().rev() {
            if entry.header.timestamp_us < since_us {
                break;
            }
            first = *version;
        }
        Ok(first)
    }

    pub(crate) fn subscribe(&self) -> broadcast::Receiver<(Arc<str>, u64)> {
        self.inner.saved.subscribe()
    }

    /// Whether `e`, met reading stored bytes, is damage to contain (the bytes fail
    /// verification) rather than a failure of the whole read. A frame that does not open in a
    /// store whose key was checked is damage; in a store opened without its key (locked), every
    /// frame fails alike, and that is the key's problem, reported as such.
    ///
    /// A frame sealed with a key this store was not given is not damage but a key missing from
    /// the configuration: that error stands too.
    pub(super) fn is_damage(&self, e: &Error) -> bool {
        match e {
            Error::Corrupt { .. } => true,
            Error::Decrypt { key_id, .. } => {
                let sealed = matches!(
                    self.inner.crypto.get(),
                    Some(encryption::Crypto::Sealed(..))
                );
                let known = key_id == "?"
                    || self
                        .inner
                        .keys
                        .iter()
                        .any(|k| k.id().to_string() == *key_id);
                sealed && known
            }
            _ => false,
        }
    }
}

/// What a damaged frame's error says failed (the frame's place is known to the reader).
pub(super) fn damage_reason(e: &Error) -> String {
    match e {
        Error::Corrupt { reason, .. } | Error::Decrypt { reason, .. } => reason.clone(),
        other => other.to_string(),
    }
}

/// The error of a read stopped at `location` by the damaged frame `seq`: [`Error::Decrypt`]
/// (naming the key id) when the frame failed to open, [`Error::Corrupt`] otherwise.
pub(super) fn damage_error(idx: &ExecIndex, seq: u64, location: String, reason: String) -> Error {
    match idx.sealed_damage.get(&seq) {
        Some(key_id) => Error::Decrypt {
            location,
            key_id: key_id.clone(),
            reason,
        },
        None => Error::corrupt(location, reason),
    }
}

/// The error of loading `version`, whose delta chain runs through the damaged frame `needed`.
pub(super) fn needs_damaged(idx: &ExecIndex, version: u64, needed: u64) -> Error {
    let reason = idx.damaged.get(&needed).map_or("", String::as_str);
    damage_error(
        idx,
        needed,
        format!("checkpoint {}@{version}", idx.log),
        format!(
            "its state is stored as changes on top of execution {:?} seq {needed}, which is \
             damaged ({reason}); {}",
            idx.log,
            readable_hint(idx)
        ),
    )
}

/// The error of loading `version`, which the damaged frame `damaged` after it may have deleted.
pub(super) fn maybe_deleted(idx: &ExecIndex, version: u64, damaged: u64) -> Error {
    let reason = idx.damaged.get(&damaged).map_or("", String::as_str);
    damage_error(
        idx,
        damaged,
        format!("checkpoint {}@{version}", idx.log),
        format!(
            "execution {:?} seq {damaged}, after it, is damaged ({reason}) and may have been \
             its delete or a clear: it is not served; {}",
            idx.log,
            readable_hint(idx)
        ),
    )
}

/// Refuses a delta applied on top of anything but its own base (a frame missing in between
/// would otherwise serve one version's state as another's).
pub(super) fn check_base(log: &str, seq: u64, body: &Body, applied: Option<u64>) -> Result<()> {
    match body {
        Body::Delta { base, .. } if applied != Some(*base) => Err(Error::corrupt(
            format!("execution {log:?} seq {seq}"),
            format!(
                "a delta from version {base}, but the state before it is {}",
                applied.map_or("none".to_owned(), |v| format!("version {v}'s"))
            ),
        )),
        _ => Ok(()),
    }
}

/// "versions 1-3, 7 are readable", for messages about a damaged execution.
pub(super) fn readable_hint(idx: &ExecIndex) -> String {
    let readable: Vec<u64> = idx.readable().map(|(v, _)| v).collect();
    if readable.is_empty() {
        "no version of it is readable".to_owned()
    } else {
        format!(
            "readable: version(s) {} (Store::at_version, ckpt show)",
            seq_list(&readable)
        )
    }
}
