//! Persisted projections: each execution's projection kept as a derived record in the backend's
//! side table ([`crate::backend::SideTable`]), so that opening a long execution reads one record
//! and the log's tail instead of folding the whole log, and listing executions reads one table.
//!
//! A record holds the projection's summary (live count, newest live save, bytes) and its
//! *window*: every save and write from the `horizon` on, where the horizon is the start of the
//! delta chain of the oldest of the newest [`WINDOW`] live saves, so every state in the window
//! rebuilds from frames the window knows. A projection loaded from a record is *partial*: what
//! lies before its horizon is not in memory, and the operations that need it (a full history,
//! an old version, verify, gc...) fold the whole log first (`Store::index`).
//!
//! A record is a cache and is never trusted blindly: it names the log position it was made at
//! and the checksum of the frame just before it, and is used only when the log still has that
//! frame there (a rekey, a rollback or a log recreated after expiry all change it). It is
//! written only for projections without damage, sealed like a frame in an encrypted store, and
//! checksummed with its execution bound in. Losing one costs a fold, never data.

use std::io::Cursor;
use std::sync::Arc;

use rmpv::Value;

use super::index::{Chain, ExecIndex, SaveEntry, WriteEntry};
use super::{poisoned, Store, SCAN_PAGE};
use crate::codec::frame::{self, Event};
use crate::codec::value;
use crate::error::Result;

/// Key prefix of an execution's record in the side table.
pub(super) const RECORD_PREFIX: &str = "p/";
/// Key prefix of an execution's summary record (its record's head alone, kept current for
/// listing: cheap to write after every few saves, where the window is not).
pub(super) const SUMMARY_PREFIX: &str = "s/";
/// The record format this code writes and reads (others are ignored: rebuilt).
const FORMAT: u64 = 1;
/// Live saves a partial projection keeps at least (history(20) and time travel near the head
/// are answered without a fold).
const WINDOW: usize = 64;
/// Frames a projection may move past its record before the record is written again.
pub(super) const PERSIST_EVERY: u64 = 256;
/// Executions whose record waits to be written with others' (in one call) before a flush.
const DIRTY_BATCH: usize = 64;
/// Most deleted versions before its horizon a record lists; with more, an old version is read
/// after a fold.
const MAX_DELETED_BELOW: usize = 4096;

/// What [`Store::check_record`] found.
pub(super) enum RecordCheck {
    /// None, one behind the log, or one that agrees with it.
    Fine,
    /// One that does not open or decode (a retired key, damage): every read ignores it.
    Unusable,
    /// One that states something else than the log: why.
    Wrong(String),
}

/// Frames of a log as a scan returns them: `(seq, bytes)`, ascending.
pub(super) type Frames = Vec<(u64, Vec<u8>)>;

/// An execution's summary as a record states it (what [`Store::executions`] lists).
#[derive(Debug, Clone, PartialEq)]
pub(super) struct RecordHead {
    /// The log position the record was made at: every frame below it is folded in.
    pub position: u64,
    /// Checksum of the frame at `position - 1` (none when the log was empty).
    pub tail_sum: Option<[u8; 8]>,
    pub live_count: usize,
    /// The newest live save: version, node, timestamp.
    pub latest: Option<(u64, String, u64)>,
    pub log_bytes: u64,
    pub cleared_at: u64,
    pub first_folded: Option<u64>,
    pub horizon: u64,
}

/// The key of `exec`'s record.
pub(super) fn record_key(exec: &str) -> String {
    format!("{RECORD_PREFIX}{exec}")
}

/// Where a record is bound in its checksum (and seal): no log can have this name.
fn record_place(exec: &str) -> String {
    format!("\u{1}projection/{exec}")
}

/// The key of `exec`'s summary record.
fn summary_key(exec: &str) -> String {
    format!("{SUMMARY_PREFIX}{exec}")
}

/// Where a summary record is bound, as [`record_place`].
fn summary_place(exec: &str) -> String {
    format!("\u{1}summary/{exec}")
}

/// The checksum a frame carries in its last 8 bytes.
pub(super) fn frame_sum(frame: &[u8]) -> Option<[u8; 8]> {
    frame
        .len()
        .checked_sub(8)
        .and_then(|at| frame[at..].try_into().ok())
}

impl ExecIndex {
    /// Whether the projection can be written as a record: brought up to its log's tail, without
    /// damage, and knowing the checksum of its last frame.
    fn persistable(&self) -> bool {
        self.synced
            && self.damaged.is_empty()
            && self.damaged_saves.is_empty()
            && self.sealed_damage.is_empty()
            && (self.next_seq == 1 || self.tail_sum.is_some_and(|(s, _)| s + 1 == self.next_seq))
    }

    /// The horizon a record of this projection keeps: the chain start of the oldest of the
    /// newest [`WINDOW`] live saves (never above the newest save's chain start, the base of
    /// the next delta).
    fn window_horizon(&self) -> u64 {
        let floor = self.horizon.max(1);
        let oldest_kept = self.live().rev().take(WINDOW).last();
        oldest_kept
            .into_iter()
            .chain(self.newest_save())
            .map(|(_, e)| e.chain.start)
            .min()
            .map_or(self.next_seq.max(floor), |s| s.max(floor))
    }

    fn head(&self) -> RecordHead {
        self.head_at(self.window_horizon())
    }

    fn head_at(&self, horizon: u64) -> RecordHead {
        RecordHead {
            position: self.next_seq,
            tail_sum: self.tail_sum.map(|(_, s)| s),
            live_count: self.live_count,
            latest: self
                .latest_live()
                .and_then(|v| self.saves.get(&v).map(|e| (v, e)))
                .map(|(v, e)| (v, e.header.node.clone(), e.header.timestamp_us)),
            log_bytes: self.log_bytes,
            cleared_at: self.cleared_at,
            first_folded: self.first_folded,
            horizon,
        }
    }

    /// A summary record's payload: a head alone (its horizon unused).
    fn summary_payload(&self) -> Vec<u8> {
        let head = RecordHead {
            horizon: 0,
            ..self.head_at(0)
        };
        value::encode(&head_value(&head))
    }

    /// The record's payload: its head, then its window.
    fn record_payload(&self) -> Vec<u8> {
        let head = self.head();
        let horizon = head.horizon;
        let head_value = head_value(&head);
        let saves = self
            .saves
            .range(horizon..)
            .map(|(v, e)| {
                Value::Array(vec![
                    (*v).into(),
                    frame::save_header_value(&e.header),
                    e.deleted.into(),
                    e.chain.start.into(),
                    e.chain.len.into(),
                    e.chain.delta_bytes.into(),
                    e.chain.snapshot_bytes.into(),
                    e.frame_len.into(),
                ])
            })
            .collect();
        let writes = self
            .writes
            .range((horizon, 0)..)
            .map(|((v, seq), e)| {
                Value::Array(vec![
                    (*v).into(),
                    (*seq).into(),
                    frame::write_header_value(&e.header),
                    e.frame_len.into(),
                ])
            })
            .collect();
        let mut out = value::encode(&head_value);
        out.extend(value::encode(&Value::Array(vec![
            Value::Array(saves),
            Value::Array(writes),
            self.deleted_before(horizon).map_or(Value::Nil, |d| {
                Value::Array(d.into_iter().map(Value::from).collect())
            }),
        ])));
        out
    }

    /// The deleted versions before `horizon`, when known and not too many.
    fn deleted_before(&self, horizon: u64) -> Option<Vec<u64>> {
        let in_window = self
            .saves
            .range(..horizon)
            .filter(|(_, e)| e.deleted)
            .map(|(v, _)| *v);
        let known: Vec<u64> = if self.is_complete() {
            in_window.collect()
        } else {
            let below = self.deleted_below.as_ref()?;
            below.iter().copied().chain(in_window).collect()
        };
        (known.len() <= MAX_DELETED_BELOW).then_some(known)
    }
}

/// A record's head as the MessagePack value that starts its payload.
fn head_value(head: &RecordHead) -> Value {
    Value::Array(vec![
        FORMAT.into(),
        head.position.into(),
        head.tail_sum
            .map_or(Value::Nil, |s| Value::Binary(s.to_vec())),
        (head.live_count as u64).into(),
        head.latest.clone().map_or(Value::Nil, |(v, node, ts)| {
            Value::Array(vec![v.into(), node.into(), ts.into()])
        }),
        head.log_bytes.into(),
        head.cleared_at.into(),
        head.first_folded.map_or(Value::Nil, Value::from),
        head.horizon.into(),
    ])
}

/// Reads a record's head from the front of its payload; the cursor is left at its window.
fn read_head(cursor: &mut Cursor<&[u8]>) -> std::result::Result<RecordHead, String> {
    let head = value::read_prefix(cursor).map_err(|e| e.to_string())?;
    let Value::Array(f) = head else {
        return Err("head is not an array".into());
    };
    if f.len() != 9 || f[0].as_u64() != Some(FORMAT) {
        return Err("unknown record format".into());
    }
    let int = |i: usize| {
        f[i].as_u64()
            .ok_or_else(|| format!("field {i} is not an integer"))
    };
    let tail_sum = match &f[2] {
        Value::Nil => None,
        Value::Binary(b) => Some(<[u8; 8]>::try_from(b.as_slice()).map_err(|_| "tail sum")?),
        _ => return Err("tail sum".into()),
    };
    let latest = match &f[4] {
        Value::Nil => None,
        Value::Array(l) if l.len() == 3 => Some((
            l[0].as_u64().ok_or("latest version")?,
            l[1].as_str().ok_or("latest node")?.to_owned(),
            l[2].as_u64().ok_or("latest time")?,
        )),
        _ => return Err("latest".into()),
    };
    Ok(RecordHead {
        position: int(1)?,
        tail_sum,
        live_count: usize::try_from(int(3)?).map_err(|_| "live count")?,
        latest,
        log_bytes: int(5)?,
        cleared_at: int(6)?,
        first_folded: match &f[7] {
            Value::Nil => None,
            v => Some(v.as_u64().ok_or("first folded")?),
        },
        horizon: int(8)?,
    })
}

/// The window of a record: its saves and writes, and the deleted versions before it.
type Window = (
    Vec<(u64, SaveEntry)>,
    Vec<((u64, u64), WriteEntry)>,
    Option<std::collections::BTreeSet<u64>>,
);

fn read_window(cursor: &mut Cursor<&[u8]>) -> std::result::Result<Window, String> {
    let window = value::read_prefix(cursor).map_err(|e| e.to_string())?;
    let Value::Array(mut parts) = window else {
        return Err("window is not an array".into());
    };
    if parts.len() != 3 {
        return Err("window is not [saves, writes, deleted]".into());
    }
    let deleted_below = match parts.remove(2) {
        Value::Nil => None,
        Value::Array(d) => Some(
            d.iter()
                .map(|v| v.as_u64().ok_or("deleted version"))
                .collect::<std::result::Result<_, _>>()?,
        ),
        _ => return Err("deleted versions are not an array".into()),
    };
    let (Value::Array(writes), Value::Array(saves)) = (parts.remove(1), parts.remove(0)) else {
        return Err("window parts are not arrays".into());
    };
    let mut out_saves = Vec::with_capacity(saves.len());
    for s in saves {
        let Value::Array(mut f) = s else {
            return Err("save is not an array".into());
        };
        if f.len() != 8 {
            return Err("save has the wrong length".into());
        }
        let int = |f: &[Value], i: usize| f[i].as_u64().ok_or_else(|| format!("save field {i}"));
        let header = match frame::header_from_value(std::mem::replace(&mut f[1], Value::Nil))? {
            Event::Save(h) => h,
            _ => return Err("a save entry with another event's header".into()),
        };
        let entry = SaveEntry {
            header,
            deleted: f[2].as_bool().ok_or("deleted flag")?,
            chain: Chain {
                start: int(&f, 3)?,
                len: u32::try_from(int(&f, 4)?).map_err(|_| "chain length")?,
                delta_bytes: int(&f, 5)?,
                snapshot_bytes: int(&f, 6)?,
                needs: None,
            },
            frame_len: int(&f, 7)?,
        };
        out_saves.push((int(&f, 0)?, entry));
    }
    let mut out_writes = Vec::with_capacity(writes.len());
    for w in writes {
        let Value::Array(mut f) = w else {
            return Err("write is not an array".into());
        };
        if f.len() != 4 {
            return Err("write has the wrong length".into());
        }
        let header = match frame::header_from_value(std::mem::replace(&mut f[2], Value::Nil))? {
            Event::Write(h) => h,
            _ => return Err("a write entry with another event's header".into()),
        };
        let v = f[0].as_u64().ok_or("write checkpoint")?;
        let seq = f[1].as_u64().ok_or("write seq")?;
        let frame_len = f[3].as_u64().ok_or("write frame length")?;
        out_writes.push(((v, seq), WriteEntry { header, frame_len }));
    }
    Ok((out_saves, out_writes, deleted_below))
}

impl Store {
    fn side_table(&self) -> Option<&dyn crate::backend::SideTable> {
        self.inner.traced.capabilities().side_table
    }

    /// Opens `exec`'s record: `None` when it does not verify or open (it is then ignored).
    fn open_record(&self, exec: &str, bytes: &[u8]) -> Option<Vec<u8>> {
        let codec = self.codec().ok()?;
        codec
            .frames
            .decode_record(&record_place(exec), 0, bytes)
            .ok()
    }

    /// The head a summary record of `exec` states (see [`Store::executions`]), `None` when it
    /// is unusable.
    pub(super) fn summary_head(&self, exec: &str, bytes: &[u8]) -> Option<RecordHead> {
        let codec = self.codec().ok()?;
        let payload = codec
            .frames
            .decode_record(&summary_place(exec), 0, bytes)
            .ok()?;
        read_head(&mut Cursor::new(&payload[..])).ok()
    }

    /// Loads `exec`'s record into the fresh projection `idx` after checking it against the
    /// log. When it held, `idx` is partial, at the record's position, and the result is the
    /// log's first page of frames from there on (read with the frame the check needs, so the
    /// fold after it need not read them again); `None` when there is no usable record (`idx`
    /// is left fresh).
    pub(super) async fn load_record(&self, idx: &mut ExecIndex) -> Result<Option<Frames>> {
        let Some(side) = self.side_table() else {
            return Ok(None);
        };
        let exec = idx.log.clone();
        // A record that cannot be read is a cache miss, not an error.
        let Ok(mut got) = side.get_records(&[record_key(&exec)]).await else {
            return Ok(None);
        };
        let Some(Some(bytes)) = got.pop() else {
            return Ok(None);
        };
        let Some(payload) = self.open_record(&exec, &bytes) else {
            return Ok(None);
        };
        let mut cursor = Cursor::new(&payload[..]);
        let Ok(head) = read_head(&mut cursor) else {
            return Ok(None);
        };
        let Ok((saves, writes, deleted_below)) = read_window(&mut cursor) else {
            return Ok(None);
        };
        // The record holds only while the log still has the frame it was made after.
        let after = if head.position > 1 {
            let mut page = self
                .inner
                .backend
                .scan(&exec, head.position - 1, SCAN_PAGE + 1)
                .await?;
            let holds = page.first().is_some_and(|(seq, bytes)| {
                *seq == head.position - 1 && frame_sum(bytes) == head.tail_sum
            });
            if !holds {
                return Ok(None);
            }
            page.remove(0);
            page
        } else if head.tail_sum.is_some() {
            return Ok(None);
        } else {
            self.inner.traced.scan(&exec, 1, SCAN_PAGE).await?
        };
        idx.reset();
        idx.next_seq = head.position;
        idx.live_count = head.live_count;
        idx.log_bytes = head.log_bytes;
        idx.cleared_at = head.cleared_at;
        idx.first_folded = head.first_folded;
        idx.horizon = head.horizon;
        idx.tail_sum = head.tail_sum.map(|s| (head.position - 1, s));
        idx.persisted_at = head.position;
        idx.saves = saves.into_iter().collect();
        idx.writes = writes.into_iter().collect();
        idx.deleted_below = deleted_below;
        // Never complete, even when the window reaches back to the log's start: a whole
        // projection is one folded from the frames (which finds damage the record cannot show).
        idx.horizon = idx.horizon.max(1);
        self.inner
            .stats
            .records_opened
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Ok(Some(after))
    }

    /// Writes `idx`'s record now, if it can be written.
    pub(super) async fn persist(&self, idx: &mut ExecIndex) -> Result<()> {
        let Some(side) = self.side_table() else {
            return Ok(());
        };
        if !idx.persistable() || idx.persisted_at == idx.next_seq {
            return Ok(());
        }
        let record = self.encode_record(idx)?;
        let summary = self.encode_summary(idx)?;
        side.put_records(vec![
            (record_key(&idx.log), record),
            (summary_key(&idx.log), summary),
        ])
        .await?;
        idx.persisted_at = idx.next_seq;
        idx.summarized_at = idx.next_seq;
        Ok(())
    }

    fn encode_summary(&self, idx: &ExecIndex) -> Result<Vec<u8>> {
        self.codec()?
            .frames
            .encode_record(&summary_place(&idx.log), 0, idx.summary_payload())
    }

    fn encode_record(&self, idx: &ExecIndex) -> Result<Vec<u8>> {
        self.codec()?
            .frames
            .encode_record(&record_place(&idx.log), 0, idx.record_payload())
    }

    /// After `idx` moved (a save, a fold): writes its record (and summary) when it is
    /// [`PERSIST_EVERY`] frames behind, else queues its summary, to be written with other
    /// executions' ([`DIRTY_BATCH`] at a time, and on [`Store::flush`] and
    /// [`Store::executions`]), so that listing executions finds current summaries. Never
    /// fails: a record is a cache.
    pub(super) async fn after_move(&self, idx: &mut ExecIndex) {
        if self.side_table().is_none() || !idx.persistable() {
            return;
        }
        if idx.next_seq >= idx.persisted_at + PERSIST_EVERY {
            let _ = self.persist(idx).await;
        } else if idx.summarized_at != idx.next_seq {
            let full = {
                let Ok(mut dirty) = self.inner.dirty_records.lock() else {
                    return;
                };
                dirty.insert(idx.log.clone());
                dirty.len() >= DIRTY_BATCH
            };
            if full {
                let store = self.clone();
                tokio::spawn(async move {
                    let _ = store.write_dirty_records().await;
                });
            }
        }
    }

    /// Writes the summaries of the executions queued by [`Store::after_move`] (those whose
    /// projection is busy stay queued).
    pub(super) async fn write_dirty_records(&self) -> Result<()> {
        let Some(side) = self.side_table() else {
            return Ok(());
        };
        let _writing = self.inner.summary_writes.lock().await;
        // Each execution leaves the queue only once its projection is locked here: while
        // queued it is never forgotten (see `Store::handle`), and a save after it queues it
        // again.
        let queued: Vec<Arc<str>> = {
            let dirty = self.inner.dirty_records.lock().map_err(|_| poisoned())?;
            dirty.iter().cloned().collect()
        };
        let mut records = Vec::with_capacity(queued.len());
        let mut written = Vec::with_capacity(queued.len());
        for exec in queued {
            let handle = self.handle(&exec);
            // A busy projection (a save under way) stays queued.
            let Ok(mut idx) = handle.try_lock_owned() else {
                continue;
            };
            if let Ok(mut dirty) = self.inner.dirty_records.lock() {
                dirty.remove(&exec);
            }
            if idx.persistable() && idx.summarized_at != idx.next_seq {
                records.push((summary_key(&exec), self.encode_summary(&idx)?));
                idx.summarized_at = idx.next_seq;
                written.push(idx);
            }
        }
        if let Err(e) = side.put_records(records).await {
            if let Ok(mut dirty) = self.inner.dirty_records.lock() {
                dirty.extend(written.iter().map(|idx| idx.log.clone()));
            }
            for mut idx in written {
                idx.summarized_at = 0;
            }
            return Err(e);
        }
        Ok(())
    }

    /// Checks `exec`'s record (if any) against `idx`, its projection folded from the whole
    /// log: what it states wrongly, for [`Store::verify`]. A record behind the log, or one that
    /// does not open (every read ignores it), is not wrong.
    pub(super) async fn check_record(&self, idx: &ExecIndex) -> Result<RecordCheck> {
        let Some(side) = self.side_table() else {
            return Ok(RecordCheck::Fine);
        };
        let Some(Some(bytes)) = side.get_records(&[record_key(&idx.log)]).await?.pop() else {
            return Ok(RecordCheck::Fine);
        };
        // A record that does not open (sealed with a key a rekey retired, damaged) is ignored
        // by every read: stale, not wrong. The caller rewrites it.
        let Some(payload) = self.open_record(&idx.log, &bytes) else {
            return Ok(RecordCheck::Unusable);
        };
        let mut cursor = Cursor::new(&payload[..]);
        let Ok(head) = read_head(&mut cursor) else {
            return Ok(RecordCheck::Unusable);
        };
        if head.position != idx.next_seq || !idx.persistable() {
            return Ok(RecordCheck::Fine);
        }
        let mine = idx.head();
        let window = read_window(&mut cursor);
        let same_window = window.is_ok_and(|(saves, writes, deleted)| {
            let horizon = head.horizon;
            let deleted_agree = deleted.is_none_or(|d| {
                d.iter().copied().collect::<Vec<_>>()
                    == idx
                        .saves
                        .range(..horizon)
                        .filter(|(_, e)| e.deleted)
                        .map(|(v, _)| *v)
                        .collect::<Vec<_>>()
            });
            deleted_agree
                && saves.iter().all(|(v, e)| {
                    idx.saves.get(v).is_some_and(|m| {
                        m.header == e.header && m.deleted == e.deleted && m.chain == e.chain
                    })
                })
                && writes
                    .iter()
                    .all(|(k, e)| idx.writes.get(k).is_some_and(|m| m.header == e.header))
        });
        let agrees = head.live_count == mine.live_count
            && head.latest == mine.latest
            && head.cleared_at == mine.cleared_at
            && same_window;
        if agrees {
            return Ok(RecordCheck::Fine);
        }
        Ok(RecordCheck::Wrong(format!(
            "its persisted projection (at seq {}) disagrees with its log: it states {} live \
                 checkpoints and newest {:?}, the log {} and {:?}; it was rewritten from \
                 the log",
            head.position,
            head.live_count,
            head.latest.map(|l| l.0),
            mine.live_count,
            mine.latest.map(|l| l.0)
        )))
    }
}

/// Opens and decodes a plaintext store's record of `exec` as a reopen reads it (for the fuzz
/// target, through [`crate::fuzzing`]). Never panics.
pub(crate) fn decode_record(exec: &str, bytes: &[u8]) -> std::result::Result<(), String> {
    let payload = crate::codec::frame::FrameCodec::plain()
        .decode_record(&record_place(exec), 0, bytes)
        .map_err(|e| e.to_string())?;
    let mut cursor = Cursor::new(&payload[..]);
    read_head(&mut cursor)?;
    read_window(&mut cursor)?;
    Ok(())
}
