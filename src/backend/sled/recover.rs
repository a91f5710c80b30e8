//! Recovery at open: replaying the write-ahead log ([`super::wal`]) into sled, and checking sled's
//! logs against the heads file ([`super::heads`]), the witness of every acknowledged head, so that
//! lost acknowledged frames are recorded as damage instead of served.

use std::collections::{HashMap, HashSet};
use std::io;
use std::path::Path;
use std::sync::Mutex;

use super::heads::Heads;
use super::open::{open_error, OpenFailure};
use super::wal::{self, Wal, WalWrite};
use super::{backend_error, lock, log_key, next_seq_in, DAMAGE, FRAME};
use crate::backend::RecordedDamage;
use crate::error::{Error, Result};

/// The WAL's file name in the database directory, and its size (pre-zeroed; a full WAL costs
/// one sled flush and restarts).
pub(super) const WAL_FILE: &str = "ckpt-wal";
const WAL_SIZE: u64 = 128 * 1024;

/// The heads file (see [`super::heads`]) and the heads raised since it last recorded them.
#[derive(Debug)]
pub(super) struct Witness {
    heads: Mutex<Heads>,
    /// Heads of appends applied to sled since the heads file last recorded them.
    raised: Mutex<HashMap<String, u64>>,
}

impl Witness {
    /// Notes that `log`'s head is now `next_seq` (called under the append lock).
    pub(super) fn raise(&self, log: &str, next_seq: u64) {
        let mut raised = lock(&self.raised);
        match raised.get_mut(log) {
            Some(head) => *head = (*head).max(next_seq),
            None => {
                raised.insert(log.to_owned(), next_seq);
            }
        }
    }

    /// Makes everything applied durable in sled's files, then records the heads that covers;
    /// after it the WAL may restart, since every head it held is in the heads file.
    pub(super) fn seal(&self, db: &sled::Db) -> io::Result<()> {
        // Taken before the flush: every append noted here was applied before it, so the flush
        // covers it. Appends noted later stay for the next seal.
        let raised = std::mem::take(&mut *lock(&self.raised));
        let result = db
            .flush()
            .map_err(io::Error::other)
            .and_then(|_| lock(&self.heads).record(&raised));
        if result.is_err() {
            for (log, head) in raised {
                self.raise(&log, head);
            }
        }
        result
    }
}

/// The heads file's name in the database directory.
pub(super) const HEADS_FILE: &str = "ckpt-heads";

/// The log name and sequence number of a frame key.
fn parse_frame_key(key: &[u8]) -> Option<(String, u64)> {
    let (&kind, rest) = key.split_first()?;
    if kind != FRAME {
        return None;
    }
    let len = u16::from_be_bytes(rest.get(..2)?.try_into().ok()?) as usize;
    let name = std::str::from_utf8(rest.get(2..2 + len)?).ok()?;
    let seq = u64::from_be_bytes(rest.get(2 + len..)?.try_into().ok()?);
    Some((name.to_owned(), seq))
}

/// Replays the WAL (if one is kept or left) and checks every log against the heads file,
/// recording what was lost; returns the WAL when `sync`, restarted, and the witness.
pub(super) fn recover(db: &sled::Db, dir: &Path, sync: bool) -> Result<(Option<Wal>, Witness)> {
    let heads_path = dir.join(HEADS_FILE);
    let (heads, parsed_heads) = Heads::open(&heads_path)
        .map_err(|e| open_error(dir, "opening the heads file", OpenFailure::Io(e)))?;
    let witness = Witness {
        heads: Mutex::new(heads),
        raised: Mutex::new(HashMap::new()),
    };
    let mut found: Vec<RecordedDamage> = parsed_heads
        .damage
        .iter()
        .map(|(offset, len)| RecordedDamage {
            log: None,
            lost: None,
            detail: format!(
                "{len} bytes of the heads file {} at offset {offset} were damaged: a rollback \
                 of sled's files below the heads they held cannot be detected",
                heads_path.display()
            ),
        })
        .collect();
    let wal_path = dir.join(WAL_FILE);
    let mut wal = None;
    if sync || wal_path.exists() {
        let context = || format!("recovering the write-ahead log {}", wal_path.display());
        let (opened, parsed) =
            Wal::open(&wal_path, WAL_SIZE).map_err(|e| backend_error(context(), e))?;
        replay(db, &parsed, &witness, &wal_path, &mut found)?;
        wal = Some(opened);
    }
    check_heads(db, &witness, &mut found)?;
    record_damage(db, &found)?;
    witness
        .seal(db)
        .map_err(|e| backend_error(format!("recovering the store in {}", dir.display()), e))?;
    if let Some(wal) = &mut wal {
        wal.restart().map_err(|e| {
            backend_error(
                format!("restarting the write-ahead log {}", wal_path.display()),
                e,
            )
        })?;
    }
    Ok((wal.filter(|_| sync), witness))
}

/// Applies the WAL's records to sled (idempotent: replaying one again changes nothing). Damage
/// the WAL reports is recorded in `found`, with the versions it lost where the records after it
/// show them (a log's first frame after the damage starting above the log's tail).
pub(super) fn replay(
    db: &sled::Db,
    parsed: &wal::Parsed,
    witness: &Witness,
    wal_path: &Path,
    found: &mut Vec<RecordedDamage>,
) -> Result<()> {
    // The damage being read past, the logs seen since, and whether any showed a loss.
    let mut current: Option<(&wal::WalDamage, HashSet<String>, bool)> = None;
    let close = |current: Option<(&wal::WalDamage, HashSet<String>, bool)>,
                 found: &mut Vec<RecordedDamage>| {
        if let Some((damage, _, false)) = current {
            found.push(RecordedDamage {
                log: None,
                lost: None,
                detail: format!(
                    "{} at offset {} of the write-ahead log {} were damaged; they held \
                     acknowledged saves of unknown executions, which are lost",
                    damage.what,
                    damage.offset,
                    wal_path.display()
                ),
            });
        }
    };
    for (i, record) in parsed.records.iter().enumerate() {
        // A damaged header loses nothing: its records were read.
        for damage in parsed
            .damage
            .iter()
            .filter(|d| d.next_record == i && d.len > 0)
        {
            close(current.take(), found);
            current = Some((damage, HashSet::new(), false));
        }
        let writes = wal::parse_record(record).map_err(|reason| Error::Corrupt {
            location: format!("the write-ahead log {}", wal_path.display()),
            reason,
        })?;
        let mut batch = sled::Batch::default();
        for write in writes {
            match write {
                WalWrite::Insert(key, value) => {
                    if let (Some((damage, seen, shown)), Some((log, seq))) =
                        (&mut current, parse_frame_key(&key))
                    {
                        if seen.insert(log.clone()) {
                            let next = next_seq_in(db, &log)?;
                            if seq > next {
                                *shown = true;
                                found.push(lost_in_wal(&log, next, seq, damage, wal_path));
                            }
                        }
                    }
                    batch.insert(key, value);
                }
                WalWrite::Raise(key, new) => {
                    let current_mark = db
                        .get(&key)
                        .map_err(|e| backend_error("replaying the write-ahead log", e))?;
                    if current_mark.is_none_or(|c| c.as_ref() < &new[..]) {
                        batch.insert(&key[..], &new[..]);
                    }
                    if let Ok(name) = std::str::from_utf8(&key[1..]) {
                        witness.raise(name, u64::from_be_bytes(new));
                    }
                }
            }
        }
        db.apply_batch(batch)
            .map_err(|e| backend_error("replaying the write-ahead log", e))?;
    }
    close(current, found);
    Ok(())
}

/// The damage record of versions `from..to` of `log`, lost with damaged WAL records.
fn lost_in_wal(
    log: &str,
    from: u64,
    to: u64,
    damage: &wal::WalDamage,
    wal_path: &Path,
) -> RecordedDamage {
    RecordedDamage {
        log: Some(log.to_owned()),
        lost: Some((from, to)),
        detail: format!(
            "acknowledged saves at positions {from}..={} of execution {log:?} were in {} at \
             offset {} of the write-ahead log {}, which were damaged; they are lost",
            to - 1,
            damage.what,
            damage.offset,
            wal_path.display()
        ),
    }
}

/// Compares every log's tail in sled with the head the heads file recorded for it. A log below
/// its head lost acknowledged frames (sled's recovery rolled its files back): that is recorded
/// in `found`, and the log's high-water mark is raised to the head so that the lost positions
/// are never handed out again.
fn check_heads(db: &sled::Db, witness: &Witness, found: &mut Vec<RecordedDamage>) -> Result<()> {
    let heads: Vec<(String, u64)> = lock(&witness.heads)
        .heads()
        .iter()
        .map(|(log, head)| (log.clone(), *head))
        .collect();
    for (log, head) in heads {
        let next = match next_seq_in(db, &log) {
            Ok(next) => next,
            // A damaged mark or key: every read of that log reports it; the store still opens.
            Err(e) if e.is_corrupt() => continue,
            Err(e) => return Err(e),
        };
        if next >= head {
            continue;
        }
        found.push(RecordedDamage {
            log: Some(log.clone()),
            lost: Some((next, head)),
            detail: format!(
                "acknowledged saves at positions {next}..={} of execution {log:?} are missing \
                 from sled's files, which recorded the log up to {}: sled's recovery rolled its \
                 files back (they were damaged); those saves are lost, and their positions are \
                 never used again",
                head - 1,
                head - 1
            ),
        });
        db.insert(log_key(&log), &head.to_be_bytes()[..])
            .map_err(|e| backend_error(format!("raising the next sequence of log {log:?}"), e))?;
    }
    Ok(())
}

/// Stores damage found at this open, for every later open and `verify` to report.
fn record_damage(db: &sled::Db, found: &[RecordedDamage]) -> Result<()> {
    for damage in found {
        let id = db
            .generate_id()
            .map_err(|e| backend_error("recording damage found at open", e))?;
        let mut key = vec![DAMAGE];
        key.extend_from_slice(&id.to_be_bytes());
        let value = serde_json::to_vec(damage)
            .map_err(|e| backend_error("recording damage found at open", e))?;
        db.insert(key, value)
            .map_err(|e| backend_error("recording damage found at open", e))?;
    }
    Ok(())
}
