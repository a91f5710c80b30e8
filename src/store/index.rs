//! The projection of one execution's log: which versions exist, which are live, their headers and
//! how each one's state is stored. Built by folding the log's events in order, kept in memory and
//! advanced from the log's tail, never trusted beyond the sequence number it has seen.
//!
//! Damage is contained here: a frame that fails verification is recorded (its sequence number and
//! why) instead of stopping the fold, and a save whose delta chain runs through such a frame is
//! marked with the frame it needs. Every other version stays readable; those that need a damaged
//! frame fail to load, naming it (see `Store::state_of`).

use std::collections::BTreeMap;
use std::sync::Arc;

use rmpv::Value;

use crate::codec::frame::{Decoded, Event, SaveHeader, WriteHeader};

/// Where a save's state starts: the snapshot its delta chain begins at, and the chain's cost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chain {
    /// Sequence number of the snapshot the chain starts at.
    pub start: u64,
    /// Deltas applied after the snapshot (0 for a snapshot).
    pub len: u32,
    /// Bytes of those deltas.
    pub delta_bytes: u64,
    /// Bytes of the snapshot.
    pub snapshot_bytes: u64,
    /// A damaged frame the chain runs through (its state cannot be rebuilt), if any.
    pub needs: Option<u64>,
}

/// What a save adds to its delta chain's budget (or costs as a snapshot): its body as stored,
/// approximated by the smaller of the body's encoding and the whole frame. A delta that the
/// frame dictionary compresses (most of a LangGraph checkpoint's) counts its compressed size; one
/// that does not compress (a new message's blob reference) its body, not the header around it.
pub(crate) fn chain_cost(body_len: u64, frame_len: u64) -> u64 {
    body_len.min(frame_len)
}

impl Chain {
    pub fn snapshot(seq: u64, bytes: u64) -> Self {
        Chain {
            start: seq,
            len: 0,
            delta_bytes: 0,
            snapshot_bytes: bytes,
            needs: None,
        }
    }

    /// The chain of a delta whose base, `damaged`, could not be read.
    pub fn broken(damaged: u64, delta_bytes: u64) -> Self {
        Chain {
            start: damaged,
            len: 1,
            delta_bytes,
            snapshot_bytes: 0,
            needs: Some(damaged),
        }
    }

    pub fn extend(&self, delta_bytes: u64) -> Self {
        Chain {
            start: self.start,
            len: self.len + 1,
            delta_bytes: self.delta_bytes + delta_bytes,
            snapshot_bytes: self.snapshot_bytes,
            needs: self.needs,
        }
    }
}

/// One save, as the projection knows it.
#[derive(Debug, Clone)]
pub(crate) struct SaveEntry {
    pub header: SaveHeader,
    pub deleted: bool,
    pub chain: Chain,
    /// Bytes of the frame as stored.
    pub frame_len: u64,
}

/// One write attached to a checkpoint, as the projection knows it.
#[derive(Debug, Clone)]
pub(crate) struct WriteEntry {
    pub header: WriteHeader,
    /// Bytes of the frame as stored.
    pub frame_len: u64,
}

/// A version's state in both forms: as the user sees it, and as stored (long leaves as blob
/// references).
#[derive(Debug, Clone)]
pub(crate) struct CachedState {
    pub version: u64,
    pub logical: Arc<Value>,
    pub stored: Arc<Value>,
}

/// The projection of one execution.
#[derive(Debug)]
pub(crate) struct ExecIndex {
    pub log: Arc<str>,
    /// Every frame below this sequence number has been folded in.
    pub next_seq: u64,
    /// Saves since the last clear, live and deleted, by version.
    pub saves: BTreeMap<u64, SaveEntry>,
    pub live_count: usize,
    /// Writes since the last clear, by (the checkpoint they belong to, their sequence number).
    /// Those of a deleted checkpoint are dead with it.
    pub writes: BTreeMap<(u64, u64), WriteEntry>,
    /// The state of the newest save (live or not), which the next save is diffed against.
    pub newest_state: Option<CachedState>,
    /// The gc log position under which `newest_state`'s stored form (its blob addresses) was
    /// known to be current; 0 when unknown. A rekey moves blobs to new addresses, so a save
    /// under another position rebuilds the state from the log before writing from it.
    pub stored_epoch: u64,
    /// Whether the projection has been brought up to the log's tail at least once (a save may
    /// then skip asking for the tail: its compare-and-append finds out if the log moved).
    pub synced: bool,
    /// Frames that failed verification, by sequence number, with why (kept across clears: they
    /// are reported until gc removes them).
    pub damaged: BTreeMap<u64, String>,
    /// Of those, the frames that failed to open (in an encrypted store), with the key id they
    /// name: reading through them is [`crate::Error::Decrypt`], as it always was.
    pub sealed_damage: BTreeMap<u64, String>,
    /// Sequence number of the last clear folded in (0: none). Damage before it no longer
    /// matters to what is live.
    pub cleared_at: u64,
    /// Damaged frames known to have been saves: a later delta names them as its base. Any
    /// other damaged frame may have been a delete or a clear of what came before it.
    pub damaged_saves: std::collections::BTreeSet<u64>,
    /// The first frame folded since the projection was built (where the log starts now).
    pub first_folded: Option<u64>,
    /// 0 when the projection holds everything since the log's start (or its last clear);
    /// otherwise it was loaded from a persisted record (see `persist`) and holds only the
    /// saves and writes from this sequence number on.
    pub horizon: u64,
    /// Whether a frame folded into a partial projection touched what lies before its horizon
    /// (a delete or a write of an older version): it must be folded from the whole log.
    pub needs_complete: bool,
    /// Bytes of the frames of the saves and writes since the last clear.
    pub log_bytes: u64,
    /// The position of the record last written or read (0: none known).
    pub persisted_at: u64,
    /// The position of the summary record last written (0: none known).
    pub summarized_at: u64,
    /// The last frame folded: its sequence number and checksum.
    pub tail_sum: Option<(u64, [u8; 8])>,
    /// For a partial projection: the versions before its horizon known to be deleted, when its
    /// record listed them (an old version is then read from its own frames without a fold).
    pub deleted_below: Option<std::collections::BTreeSet<u64>>,
}

/// See [`ExecIndex::apply_damaged`].
static MAX_MARKER_LEN: std::sync::OnceLock<u64> = std::sync::OnceLock::new();

/// Missing frames recorded at each end of a long missing range (see [`ExecIndex::apply_missing`]).
const MAX_MISSING: u64 = 512;

impl ExecIndex {
    pub fn new(log: Arc<str>) -> Self {
        ExecIndex {
            log,
            next_seq: 1,
            saves: BTreeMap::new(),
            live_count: 0,
            writes: BTreeMap::new(),
            newest_state: None,
            stored_epoch: 0,
            synced: false,
            damaged: BTreeMap::new(),
            sealed_damage: BTreeMap::new(),
            cleared_at: 0,
            damaged_saves: std::collections::BTreeSet::new(),
            first_folded: None,
            horizon: 0,
            needs_complete: false,
            log_bytes: 0,
            persisted_at: 0,
            summarized_at: 0,
            tail_sum: None,
            deleted_below: None,
        }
    }

    /// Forgets everything, to be rebuilt from the log.
    pub fn reset(&mut self) {
        *self = ExecIndex::new(self.log.clone());
    }

    /// Notes that the frame at `seq` is being folded (the first one folded since the
    /// projection was built: where the log now starts).
    pub fn note_folded(&mut self, seq: u64) {
        if self.first_folded.is_none_or(|f| seq < f) {
            self.first_folded = Some(seq);
        }
    }

    /// Folds the event stored at `seq` into the projection. An event that makes no sense here
    /// (a store-internal one, a delta from a version the log never had) is recorded as damage.
    pub fn apply(&mut self, seq: u64, decoded: &Decoded, frame_len: u64) {
        match &decoded.event {
            Event::Save(header) => {
                self.apply_save(seq, header.clone(), decoded.body.len() as u64, frame_len)
            }
            Event::Delete(version) => self.apply_delete(*version),
            Event::Clear => self.apply_clear(seq),
            Event::Write(header) => self.apply_write(seq, header.clone(), frame_len),
            Event::Gc(_) | Event::Store(_) => {
                self.damaged.insert(
                    seq,
                    "a store-internal event in an execution's log".to_owned(),
                );
            }
        }
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Records that the frame at `seq` failed verification (`reason`, the check that failed):
    /// its event is unknown, and its sequence number stays used. A frame of `frame_len` bytes,
    /// longer than any delete or clear can be, was a save: it cannot have deleted what came
    /// before it.
    pub fn apply_damaged(
        &mut self,
        seq: u64,
        reason: String,
        key_id: Option<String>,
        frame_len: u64,
    ) {
        self.damaged.insert(seq, reason);
        if let Some(id) = key_id {
            self.sealed_damage.insert(seq, id);
        }
        if frame_len > *MAX_MARKER_LEN.get_or_init(|| crate::codec::frame::max_marker_len() as u64)
        {
            self.damaged_saves.insert(seq);
        }
        self.next_seq = self.next_seq.max(seq + 1);
    }

    /// Records that the frames `from..to` are missing from the log (a hole between frames, or a
    /// lost tail below the log's next sequence number): what was saved there is lost. Versions
    /// in the range fail to load, deltas built on them too, `latest` refuses to answer past
    /// them; versions before them still load (a lost delete is the one thing that cannot be
    /// told, and a lost save is by far the likelier). Ranges longer than [`MAX_MISSING`] are
    /// recorded at both ends (a damaged sequence number in a key can make one absurdly long).
    pub fn apply_missing(&mut self, from: u64, to: u64) {
        let reason = |s: u64| {
            format!(
                "its frame is missing from the log (seq {from}..={} are gone): what was saved \
                 there is lost",
                to.saturating_sub(1).max(s)
            )
        };
        let len = to.saturating_sub(from);
        let ends = if len > 2 * MAX_MISSING {
            (from..from + MAX_MISSING)
                .chain(to - MAX_MISSING..to)
                .collect::<Vec<_>>()
        } else {
            (from..to).collect()
        };
        for s in ends {
            self.damaged.entry(s).or_insert_with(|| reason(s));
            self.damaged_saves.insert(s);
        }
        self.next_seq = self.next_seq.max(to);
    }

    /// Folds a save whose body is `body_len` bytes in a frame of `frame_len` (see [`chain_cost`]).
    pub fn apply_save(&mut self, seq: u64, header: SaveHeader, body_len: u64, frame_len: u64) {
        let cost = chain_cost(body_len, frame_len);
        if header.delta_base.is_some_and(|base| base < self.horizon) {
            self.needs_complete = true;
            return;
        }
        let chain = match header.delta_base {
            None => Chain::snapshot(seq, cost),
            Some(base) => match self.saves.get(&base) {
                Some(b) => b.chain.extend(cost),
                None if self.damaged.contains_key(&base) => {
                    self.damaged_saves.insert(base);
                    Chain::broken(base, cost)
                }
                // Its base lies before the first frame the log still holds: gc never removes a
                // frame a kept delta needs, so the frames from the base on were lost.
                None if self.first_folded.is_some_and(|first| base < first) => {
                    let first = self.first_folded.unwrap_or(base + 1);
                    self.apply_missing(base, first);
                    Chain::broken(base, cost)
                }
                None => {
                    self.damaged.insert(
                        seq,
                        format!("a delta from version {base}, which is not in the log"),
                    );
                    return;
                }
            },
        };
        self.saves.insert(
            seq,
            SaveEntry {
                header,
                deleted: false,
                chain,
                frame_len,
            },
        );
        self.live_count += 1;
        self.log_bytes += frame_len;
    }

    /// Folds a write. One that names a checkpoint the log does not hold before it is damage:
    /// the store only appends writes to live checkpoints.
    pub fn apply_write(&mut self, seq: u64, header: WriteHeader, frame_len: u64) {
        if header.checkpoint < self.horizon {
            self.needs_complete = true;
            return;
        }
        if header.checkpoint >= seq
            || !(self.saves.contains_key(&header.checkpoint)
                || self.damaged.contains_key(&header.checkpoint)
                || self.first_folded.is_some_and(|f| header.checkpoint < f))
        {
            self.damaged.insert(
                seq,
                format!(
                    "a write to checkpoint version {}, which is not in the log before it",
                    header.checkpoint
                ),
            );
            return;
        }
        self.writes
            .insert((header.checkpoint, seq), WriteEntry { header, frame_len });
        self.log_bytes += frame_len;
    }

    /// The writes of live checkpoint `version`, oldest first.
    pub fn writes_of(&self, version: u64) -> impl Iterator<Item = (u64, &WriteEntry)> {
        self.writes
            .range((version, 0)..=(version, u64::MAX))
            .filter(move |_| self.live_entry(version).is_some())
            .map(|((_, seq), e)| (*seq, e))
    }

    pub fn apply_delete(&mut self, version: u64) {
        if version < self.horizon {
            // The store deletes only live versions: one the partial projection knows of as
            // deleted already is a repeat; otherwise it was live until now.
            match &mut self.deleted_below {
                Some(deleted) => {
                    if deleted.insert(version) {
                        self.live_count = self.live_count.saturating_sub(1);
                    }
                }
                None => self.needs_complete = true,
            }
            return;
        }
        if let Some(e) = self.saves.get_mut(&version) {
            if !e.deleted {
                e.deleted = true;
                self.live_count -= 1;
            }
        }
    }

    pub fn apply_clear(&mut self, seq: u64) {
        self.cleared_at = self.cleared_at.max(seq);
        self.saves.clear();
        self.writes.clear();
        self.live_count = 0;
        self.newest_state = None;
        self.log_bytes = 0;
    }

    /// Whether the projection holds every save and write since the log's start (or last clear).
    pub fn is_complete(&self) -> bool {
        self.horizon == 0
    }

    /// Whether `version` lies before a partial projection's horizon (unknown here).
    pub fn before_horizon(&self, version: u64) -> bool {
        version < self.horizon
    }

    /// Whether a partial projection can answer for the newest live save: it holds one, or none
    /// is live.
    pub fn holds_latest(&self) -> bool {
        self.is_complete() || self.live_count == 0 || self.latest_live().is_some()
    }

    /// Live saves, oldest first.
    pub fn live(&self) -> impl DoubleEndedIterator<Item = (u64, &SaveEntry)> {
        self.saves
            .iter()
            .filter(|(_, e)| !e.deleted)
            .map(|(v, e)| (*v, e))
    }

    pub fn live_entry(&self, version: u64) -> Option<&SaveEntry> {
        self.saves.get(&version).filter(|e| !e.deleted)
    }

    pub fn latest_live(&self) -> Option<u64> {
        self.live().next_back().map(|(v, _)| v)
    }

    /// The newest save, live or deleted: the base of the next delta.
    pub fn newest_save(&self) -> Option<(u64, &SaveEntry)> {
        self.saves.iter().next_back().map(|(v, e)| (*v, e))
    }

    /// Damaged frames after the last clear: they may have been saves, deletes or clears of
    /// what is live now.
    pub fn live_damage(&self) -> impl DoubleEndedIterator<Item = (u64, &String)> {
        self.damaged
            .range(self.cleared_at + 1..)
            .map(|(s, r)| (*s, r))
    }

    /// The damaged frame that stops `version` from being read: the one its chain needs, or a
    /// later one that may have been its delete (or a clear), not known to be a save.
    pub fn unreadable_because(&self, version: u64) -> Option<u64> {
        let entry = self.saves.get(&version)?;
        entry.chain.needs.or_else(|| {
            self.damaged
                .range(version.max(self.cleared_at) + 1..)
                .map(|(s, _)| *s)
                .find(|s| !self.damaged_saves.contains(s))
        })
    }

    /// Live saves that can be read: their state rebuilds (their chain needs no damaged frame)
    /// and no damaged frame after them may have deleted them. Oldest first.
    pub fn readable(&self) -> impl DoubleEndedIterator<Item = (u64, &SaveEntry)> {
        self.live()
            .filter(|(v, _)| self.unreadable_because(*v).is_none())
    }

    /// The cached state of `version`, if it is the newest save's.
    pub fn cached_state(&self, version: u64) -> Option<CachedState> {
        self.newest_state
            .as_ref()
            .filter(|c| c.version == version)
            .cloned()
    }
}
