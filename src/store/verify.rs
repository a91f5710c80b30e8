//! [`Store::verify`]: every frame, every blob and every live checkpoint checked, and what is
//! damaged listed next to what is still readable.
//!
//! Damage (bytes that fail their checksum, hash or seal; frames missing from a log; a version
//! whose state cannot be rebuilt) is reported, never returned as an error: the report is the
//! answer. What stops verification instead is an error: a missing or wrong key
//! ([`Error::Decrypt`] from the key check, a store opened without its key), which is a matter of
//! configuration, not of the stored bytes, or a backend that cannot be read.

use super::index::ExecIndex;
use super::persist::RecordCheck;
use super::read::{check_base, damage_reason, maybe_deleted, needs_damaged};
use super::trace::op_span;
use super::{Store, FETCH_BATCH, SCAN_PAGE};
use crate::backend::BlobHash;
use crate::codec::blob;
use crate::codec::frame::Body;
use crate::error::{Error, Result};
use rmpv::Value;
use tracing::field::Empty;

/// What [`Store::verify`] found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VerifyReport {
    /// Every execution with a log, by id.
    pub executions: Vec<ExecutionVerify>,
    /// Frames read and checked.
    pub frames_checked: u64,
    /// Blobs read and checked.
    pub blobs_checked: u64,
    /// Live checkpoints rebuilt (state and every blob it needs).
    pub checkpoints_checked: u64,
    /// Blobs whose bytes fail their hash or seal, or that are listed but cannot be read.
    pub damaged_blobs: Vec<DamagedBlob>,
    /// Damage the backend found in its own files and recorded (acknowledged saves a rollback
    /// of sled's files lost, damaged write-ahead-log records), reported until the store is
    /// replaced: see [`crate::backend::RecordedDamage`].
    pub recorded_damage: Vec<crate::backend::RecordedDamage>,
    /// What the storage engine's own consistency check found (see
    /// [`crate::backend::Inspect::check_storage`]).
    pub storage_problems: Vec<String>,
    /// Executions whose search index entries differ from what their logs give (see
    /// [`Store::reindex`]): the data is intact, searches may miss or return stale headers.
    pub index_problems: Vec<String>,
}

/// One execution, as [`Store::verify`] found it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExecutionVerify {
    /// The execution id.
    pub execution_id: String,
    /// Frames in its log.
    pub frames: u64,
    /// Frames that fail verification: sequence number and the check that failed.
    pub damaged_frames: Vec<(u64, String)>,
    /// Damage to the log itself, one sentence each: frames missing from it (a gap, or a lost
    /// tail below the log's next sequence number), or bookkeeping the backend found wrong.
    pub log_problems: Vec<String>,
    /// Live versions that load (their state rebuilt and every blob verified), oldest first.
    pub readable: Vec<u64>,
    /// Live versions that cannot be loaded, and why.
    pub unreadable: Vec<UnreadableVersion>,
}

/// A live version that cannot be loaded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnreadableVersion {
    /// The version.
    pub version: u64,
    /// Why: the damaged frame or blob it needs.
    pub reason: String,
}

/// A blob that fails verification.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DamagedBlob {
    /// Its address.
    pub hash: BlobHash,
    /// The check that failed.
    pub reason: String,
}

impl ExecutionVerify {
    /// Whether anything of this execution is damaged.
    pub fn is_damaged(&self) -> bool {
        !(self.damaged_frames.is_empty()
            && self.log_problems.is_empty()
            && self.unreadable.is_empty())
    }
}

impl VerifyReport {
    /// Whether nothing is damaged.
    pub fn is_ok(&self) -> bool {
        self.damaged_blobs.is_empty()
            && self.recorded_damage.is_empty()
            && self.storage_problems.is_empty()
            && self.index_problems.is_empty()
            && !self.executions.iter().any(|e| e.is_damaged())
    }

    /// Every damaged place, one line each, with its kind (`frame`, `log`, `checkpoint`, `blob`
    /// `lost`: what the backend recorded as lost, `storage`: what the storage engine's own
    /// check found, or `index`: a search index that differs from the logs): `("frame", "execution \"a\" seq 4: checksum mismatch")`.
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        for e in &self.executions {
            let exec = &e.execution_id;
            for (seq, reason) in &e.damaged_frames {
                out.push(("frame", format!("execution {exec:?} seq {seq}: {reason}")));
            }
            for p in &e.log_problems {
                out.push(("log", format!("execution {exec:?}: {p}")));
            }
            for u in &e.unreadable {
                out.push((
                    "checkpoint",
                    format!("{exec}@{} cannot be loaded: {}", u.version, u.reason),
                ));
            }
        }
        for b in &self.damaged_blobs {
            out.push(("blob", format!("blob {}: {}", blob::hex(&b.hash), b.reason)));
        }
        for d in &self.recorded_damage {
            out.push(("lost", d.detail.clone()));
        }
        for p in &self.storage_problems {
            out.push(("storage", p.clone()));
        }
        for p in &self.index_problems {
            out.push(("index", p.clone()));
        }
        out
    }
}

impl Store {
    /// Checks everything the store holds: every frame of every execution's log (checksum, seal,
    /// encoding, that none is missing), every blob (its content hashes to its address, its seal
    /// opens), and that every live checkpoint rebuilds. Lists what is damaged and, per
    /// execution, which versions are still readable.
    ///
    /// Damage is in the report, not an error. Errors: [`Error::Decrypt`] when the store's key
    /// is missing or wrong (nothing could be checked: a configuration problem, not damage), and
    /// backend failures.
    pub async fn verify(&self) -> Result<VerifyReport> {
        let span = op_span!(
            "ckpt.verify", self;
            count = Empty,
            frames = Empty,
            blobs = Empty,
            damaged = Empty
        );
        let op = async {
            self.crypto().await?.check_writable()?;
            let mut logs = self.execution_logs().await?;
            logs.sort();
            let mut report = VerifyReport::default();
            for log in logs {
                let exec = self.verify_execution(&log).await?;
                report.frames_checked += exec.frames;
                report.checkpoints_checked += exec.readable.len() as u64;
                report.executions.push(exec);
            }
            let (checked, damaged) = self.verify_blobs().await?;
            report.blobs_checked = checked;
            report.damaged_blobs = damaged;
            report.recorded_damage = self.recorded_damage().await?;
            report.storage_problems = match self.backend().capabilities().inspect {
                Some(inspect) => inspect.check_storage().await?,
                None => Vec::new(),
            };
            report.index_problems = self.index_problems().await?;
            Ok(report)
        };
        let report: VerifyReport = self.traced(&span, op).await?;
        span.record("count", report.executions.len());
        span.record("frames", report.frames_checked);
        span.record("blobs", report.blobs_checked);
        span.record("damaged", !report.is_ok());
        Ok(report)
    }

    async fn verify_execution(&self, log: &str) -> Result<ExecutionVerify> {
        let mut idx = self.index(log).await?;
        let mut out = ExecutionVerify {
            execution_id: log.to_owned(),
            ..ExecutionVerify::default()
        };
        let next_seq = self.tail(log).await?;
        let mut frames = Vec::new();
        let mut from = 0;
        loop {
            let page = self.inner.traced.scan(log, from, SCAN_PAGE).await?;
            let Some(&(last, _)) = page.last() else { break };
            let full = page.len() == SCAN_PAGE;
            frames.extend(page);
            if !full {
                break;
            }
            from = last + 1;
        }
        out.frames = frames.len() as u64;
        for (seq, bytes) in &frames {
            if let Err(e) = self.verify_frame(log, *seq, bytes).await {
                if !self.is_damage(&e) {
                    return Err(e);
                }
                out.damaged_frames.push((*seq, damage_reason(&e)));
            }
        }
        // Damage only the projection sees (a delta from a version the log never had). Frames
        // the projection found missing are reported below, as the log's problems.
        let present: std::collections::HashSet<u64> = frames.iter().map(|(s, _)| *s).collect();
        for (seq, reason) in &idx.damaged {
            if present.contains(seq) && !out.damaged_frames.iter().any(|(s, _)| s == seq) {
                out.damaged_frames.push((*seq, reason.clone()));
            }
        }
        out.damaged_frames.sort_by_key(|(s, _)| *s);
        out.log_problems = missing_frames(&frames, next_seq);
        if let Some(inspect) = self.backend().capabilities().inspect {
            out.log_problems.extend(inspect.log_problems(log).await?);
        }
        let rewrite = match self.check_record(&idx).await? {
            RecordCheck::Fine => false,
            RecordCheck::Unusable => true,
            RecordCheck::Wrong(problem) => {
                out.log_problems.push(problem);
                true
            }
        };
        if rewrite {
            // From the whole log, so the next open reads a record checked just now.
            idx.persisted_at = 0;
            let _ = self.persist(&mut idx).await;
        }
        self.replay_live(&idx, &frames, &mut out).await?;
        self.verify_writes(&idx, &frames, &mut out).await?;
        Ok(out)
    }

    /// Checks that the value of every write of a live checkpoint rebuilds (its blobs are there
    /// and verify); one that does not is reported as a damaged frame.
    async fn verify_writes(
        &self,
        idx: &ExecIndex,
        frames: &[(u64, Vec<u8>)],
        out: &mut ExecutionVerify,
    ) -> Result<()> {
        let live: std::collections::HashSet<u64> = idx
            .writes
            .keys()
            .filter(|(cp, _)| idx.live_entry(*cp).is_some())
            .map(|(_, seq)| *seq)
            .collect();
        for (seq, bytes) in frames.iter().filter(|(s, _)| live.contains(s)) {
            let checked = match self.decode_write(&idx.log, *seq, bytes) {
                Ok(crate::codec::frame::Body::Snapshot(v)) => {
                    self.resolve(&idx.log, *seq, &v).await.map(drop)
                }
                Ok(_) => Ok(()),
                Err(e) => Err(e),
            };
            match checked {
                Ok(()) => {}
                Err(e) if self.is_damage(&e) => {
                    if !out.damaged_frames.iter().any(|(s, _)| s == seq) {
                        out.damaged_frames.push((*seq, damage_reason(&e)));
                    }
                }
                Err(e) => return Err(e),
            }
        }
        out.damaged_frames.sort_by_key(|(s, _)| *s);
        Ok(())
    }

    /// Rebuilds every live version in order from the frames, as [`Store::list`] does, but
    /// carries on past a version that fails: the next snapshot starts a readable stretch again.
    async fn replay_live(
        &self,
        idx: &ExecIndex,
        frames: &[(u64, Vec<u8>)],
        out: &mut ExecutionVerify,
    ) -> Result<()> {
        let Some((first, _)) = idx.live().next() else {
            return Ok(());
        };
        let start = idx.saves[&first].chain.start;
        let mut state: Option<Value> = None;
        let mut applied: Option<u64> = None;
        let mut broken: Option<String> = None;
        for (seq, bytes) in frames.iter().filter(|(s, _)| *s >= start) {
            let Some(entry) = idx.saves.get(seq) else {
                continue;
            };
            let rebuilt = match entry.chain.needs {
                Some(needed) => Err(needs_damaged(idx, *seq, needed)),
                None => self.apply_frame(idx, *seq, bytes, state.take(), applied, &broken),
            };
            let result = match rebuilt {
                Ok(s) => {
                    applied = Some(*seq);
                    broken = None;
                    let resolved = if entry.deleted {
                        Ok(Value::Nil)
                    } else {
                        self.resolve(&idx.log, *seq, &s).await
                    };
                    state = Some(s);
                    resolved.map(drop)
                }
                Err(e) => {
                    broken = Some(format!("version {seq} cannot be rebuilt: {e}"));
                    state = None;
                    Err(e)
                }
            };
            if entry.deleted {
                continue;
            }
            let result = match idx.unreadable_because(*seq) {
                Some(d) if result.is_ok() => Err(maybe_deleted(idx, *seq, d)),
                _ => result,
            };
            match result {
                Ok(()) => out.readable.push(*seq),
                Err(e) if self.is_damage(&e) => out.unreadable.push(UnreadableVersion {
                    version: *seq,
                    reason: e.to_string(),
                }),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// The stored-form state of save `seq` from its frame and the state before it.
    fn apply_frame(
        &self,
        idx: &ExecIndex,
        seq: u64,
        bytes: &[u8],
        state: Option<Value>,
        applied: Option<u64>,
        broken: &Option<String>,
    ) -> Result<Value> {
        let body = self.decode_body(&idx.log, seq, bytes)?;
        if let (Body::Delta { base, .. }, Some(why)) = (&body, broken) {
            return Err(Error::corrupt(
                format!("checkpoint {}@{seq}", idx.log),
                format!("its state is stored as changes on top of version {base}, and {why}"),
            ));
        }
        check_base(&idx.log, seq, &body, applied)?;
        self.apply_body(&idx.log, seq, state, body)
    }

    /// Every stored blob checked; returns how many, and those that fail.
    async fn verify_blobs(&self) -> Result<(u64, Vec<DamagedBlob>)> {
        let hashes = self.inner.traced.list_blobs().await?;
        let mut damaged = Vec::new();
        for group in hashes.chunks(FETCH_BATCH) {
            let stored = self.inner.traced.get_blobs(group).await?;
            for (hash, bytes) in group.iter().zip(stored) {
                let reason = match bytes {
                    None => Some("listed but could not be read (removed while verifying?)".into()),
                    Some(bytes) => match self.verify_blob(hash, &bytes).await {
                        Ok(()) => None,
                        Err(e) if self.is_damage(&e) => Some(damage_reason(&e)),
                        Err(e) => return Err(e),
                    },
                };
                if let Some(reason) = reason {
                    damaged.push(DamagedBlob {
                        hash: *hash,
                        reason,
                    });
                }
            }
        }
        Ok((hashes.len() as u64, damaged))
    }
}

/// Frames missing from a log holding `frames` whose next sequence number is `next_seq`. A log
/// only ever loses a prefix legitimately (gc truncates frames no live checkpoint needs, and a
/// cleared log entirely), so a hole between frames, or below the next sequence number after
/// the last one, is lost data: acknowledged saves (or deletes, or clears) that vanished.
fn missing_frames(frames: &[(u64, Vec<u8>)], next_seq: u64) -> Vec<String> {
    let mut out = Vec::new();
    let mut seqs = frames.iter().map(|(s, _)| *s);
    let Some(mut prev) = seqs.next() else {
        return out;
    };
    for seq in seqs {
        if seq > prev + 1 {
            out.push(format!(
                "frame(s) seq {} are missing between seq {prev} and seq {seq}: what was saved \
                 there is lost",
                range(prev + 1, seq - 1)
            ));
        }
        prev = seq;
    }
    if next_seq > prev + 1 {
        out.push(format!(
            "frame(s) seq {} are missing after its last frame (seq {prev}), below its next \
             sequence number {next_seq}: a lost tail (what was saved there is gone)",
            range(prev + 1, next_seq - 1)
        ));
    }
    out
}

fn range(first: u64, last: u64) -> String {
    if first == last {
        first.to_string()
    } else {
        format!("{first}-{last}")
    }
}
