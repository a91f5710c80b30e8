//! Safe reclamation across processes: the gc fence.
//!
//! gc deletes blobs that no frame references and frames no live checkpoint needs. A save in
//! flight elsewhere may have checked that a blob exists (or written it) but not yet appended the
//! frame that references it; if gc ran in between, the frame would point at nothing. Within one
//! process a lock orders the two. Across processes and machines a reserved log, the **gc log**,
//! does it, through the backend's own compare-and-append:
//!
//! - gc appends a *begin* mark to the gc log before it reads anything, and an *end* mark when it
//!   is done. An even number of marks means no gc is running.
//! - Every save reads the gc log's next sequence number while no gc runs (cached between saves),
//!   *before* it checks or writes any blob, and appends its frames together with an empty,
//!   fenced append to the gc log at that number: the append succeeds only if no gc has begun
//!   since. So a frame that lands was appended before any gc began that could have missed it,
//!   and that gc sees it; a save that loses the race gets a conflict on the gc log, waits until
//!   the gc has ended, and prepares again (finding whatever gc deleted missing, and writing it).
//! - A gc that dies leaves its begin mark. Its *lease* bounds that: past it, a writer ends the gc
//!   with an end mark and carries on. gc itself stops before deleting anything once half its
//!   lease has gone by, so a slow gc never deletes while writers have moved on.
//!
//! The fence needs appends that are atomic across logs. A backend that cannot give that (Redis
//! Cluster, where each execution lives in its own hash slot) reports it with
//! [`crate::backend::Backend::atomic_across_logs`]. There a save reads the gc log's position
//! (waiting while a gc runs) before it checks blobs, appends unfenced, and reads the position
//! again: if a gc began in between, it waits for that gc to end and puts back any blob of its
//! state the gc took. What it saved is then whole again, but between the gc's sweep and the
//! repair a reader can find the new checkpoint missing a blob (`Error::Corrupt`); where appends
//! are atomic across logs that window does not exist.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::{now_micros, Store};
use crate::backend::LogAppend;
use crate::codec::frame::{self, Event, GcMark};
use crate::error::{Error, Result};

/// The reserved log holding gc marks. Execution ids cannot contain control characters, so no
/// execution can ever share its name.
pub(crate) const GC_LOG: &str = "\u{1}gc";
/// How long a gc may run before writers may end it (and it stops itself at half of this).
pub(crate) const DEFAULT_LEASE: Duration = Duration::from_secs(600);
/// How often a load is read again after gcs or rekeys elsewhere moved blobs under it.
const MAX_READ_RETRIES: usize = 8;

/// Whether `log` is one of the store's own logs rather than an execution's.
pub(crate) fn is_reserved_log(log: &str) -> bool {
    log.starts_with('\u{1}')
}

/// With `next` the gc log's next sequence number: no gc is running (an even number of marks).
fn no_gc_running(next: u64) -> bool {
    next % 2 == 1
}

impl Store {
    /// The fence a save appends with: an empty append to the gc log at its current next
    /// sequence number, read while no gc runs. `None` when the backend cannot fence.
    pub(super) async fn gc_fence(&self) -> Result<Option<LogAppend>> {
        if !self.inner.traced.capabilities().atomic_across_logs {
            return Ok(None);
        }
        let cached = self.inner.gc_next.load(Ordering::Acquire);
        let next = if cached != 0 {
            cached
        } else {
            self.wait_for_no_gc().await?
        };
        // Only a check: it writes nothing, so the save's expiry stays the execution's.
        Ok(Some(LogAppend::new(GC_LOG, next, Vec::new())))
    }

    /// For a backend that cannot fence: the gc log's position, read while no gc runs, before a
    /// save checks or writes blobs (`None` where saves are fenced instead).
    pub(super) async fn gc_position_unfenced(&self) -> Result<Option<u64>> {
        if self.inner.traced.capabilities().atomic_across_logs {
            return Ok(None);
        }
        self.wait_for_no_gc().await.map(Some)
    }

    /// After an unfenced append: if a gc began since `position`, waits for it to end and puts
    /// back every blob of `lifted` (all the save's state needs) that it took.
    pub(super) async fn repair_after_gc(
        &self,
        mut position: u64,
        lifted: &[crate::codec::tree::Lifted],
        codec: &crate::codec::Codec,
    ) -> Result<()> {
        let backend = &self.inner.traced;
        for _ in 0..super::MAX_CONFLICT_RETRIES {
            if self.tail(GC_LOG).await? == position {
                return Ok(());
            }
            position = self.wait_for_no_gc().await?;
            let hashes: Vec<_> = lifted.iter().map(|(h, _)| *h).collect();
            let missing: std::collections::HashSet<_> =
                backend.missing_blobs(&hashes).await?.into_iter().collect();
            let mut put = Vec::with_capacity(missing.len());
            for (hash, content) in lifted.iter().filter(|(h, _)| missing.contains(h)) {
                put.push((*hash, codec.blobs.encode(hash, content)?));
            }
            if !put.is_empty() {
                backend.put_blobs(put).await?;
            }
        }
        Err(Error::Busy {
            what: "gc kept running while a save put back what it needs; the save is stored, \
                   run it again to be sure its blobs are whole"
                .into(),
        })
    }

    /// Drops the cached gc position, after a save's fence failed (a gc began elsewhere).
    pub(super) fn forget_gc_fence(&self) {
        self.inner.gc_next.store(0, Ordering::Release);
    }

    /// The gc log's position to stamp a state read from the log now with (see
    /// `ExecIndex::stored_epoch`): the cached one, else read without waiting (and cached when no
    /// gc runs); 0, which no save matches, while a gc runs. Read before the frames.
    pub(super) async fn gc_epoch_now(&self) -> Result<u64> {
        let cached = self.inner.gc_next.load(Ordering::Acquire);
        if cached != 0 {
            return Ok(cached);
        }
        let next = self.tail(GC_LOG).await?;
        if !no_gc_running(next) {
            return Ok(0);
        }
        self.inner.gc_next.store(next, Ordering::Release);
        Ok(next)
    }

    /// Runs `read` (a load); when it fails on a missing or damaged blob while a gc or rekey
    /// elsewhere moved blobs under it (the gc log moved since the read began), waits for that to
    /// end and reads again. A read that fails with the gc log unmoved fails for real.
    pub(super) async fn read_consistent<T, F, Fut>(&self, mut read: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T>>,
    {
        let mut before = self.inner.gc_next.load(Ordering::Acquire);
        for _ in 0..MAX_READ_RETRIES {
            match read().await {
                Err(e) if e.is_corrupt() => {
                    let now = self.wait_for_no_gc().await?;
                    if now == before {
                        return Err(e);
                    }
                    before = now;
                }
                other => return other,
            }
        }
        read().await
    }

    /// Waits until no gc runs (ending one whose lease ran out) and returns the gc log's next
    /// sequence number.
    async fn wait_for_no_gc(&self) -> Result<u64> {
        let started = Instant::now();
        let mut attempt = 0;
        loop {
            let next = self.tail(GC_LOG).await?;
            if no_gc_running(next) {
                self.inner.gc_next.store(next, Ordering::Release);
                return Ok(next);
            }
            let mark = self.running_gc(next).await?;
            if self.is_dead(&mark) {
                self.end_gc(next).await?;
                continue;
            }
            if started.elapsed() > Duration::from_micros(mark.lease_us) {
                // Unreachable unless clocks disagree wildly; never wait forever.
                return Err(Error::Busy {
                    what: format!(
                        "a gc began at {} (unix µs) with a lease of {} s and has not ended; \
                         check the clocks of the machines sharing this store",
                        mark.time_us,
                        mark.lease_us / 1_000_000
                    ),
                });
            }
            crate::backend::retry::STORE_CONFLICT
                .pause(attempt.min(8))
                .await;
            attempt += 1;
        }
    }

    /// The begin mark of the gc that is running (the gc log's last frame).
    async fn running_gc(&self, next: u64) -> Result<GcMark> {
        let seq = next - 1;
        let frames = self.inner.traced.scan(GC_LOG, seq, 1).await?;
        let Some((_, bytes)) = frames.into_iter().find(|(s, _)| *s == seq) else {
            // Truncated or missing: treat it as a gc whose lease ran out.
            return Ok(GcMark {
                begin: true,
                time_us: 0,
                lease_us: 0,
                owner: None,
            });
        };
        match frame::decode(GC_LOG, seq, &bytes)?.event {
            Event::Gc(mark) if mark.begin => Ok(mark),
            _ => Err(Error::corrupt(
                format!("the gc log at seq {seq}"),
                "expected a gc begin mark",
            )),
        }
    }

    /// Appends a begin mark, waiting out nothing: returns its sequence number, or
    /// [`Error::Busy`] when another gc holds its lease.
    pub(super) async fn begin_gc(&self, lease: Duration) -> Result<u64> {
        for attempt in 0..super::MAX_CONFLICT_RETRIES {
            let next = self.tail(GC_LOG).await?;
            if !no_gc_running(next) {
                let mark = self.running_gc(next).await?;
                if !self.is_dead(&mark) {
                    return Err(Error::Busy {
                        what: format!(
                            "another gc is running (began at {} unix µs, lease {} s); \
                             run gc again when it has finished",
                            mark.time_us,
                            mark.lease_us / 1_000_000
                        ),
                    });
                }
                self.end_gc(next).await?;
                continue;
            }
            let mark = GcMark {
                begin: true,
                time_us: now_micros(),
                lease_us: lease.as_micros().min(u128::from(u64::MAX)) as u64,
                owner: Some(process_id()),
            };
            match self.append_gc_mark(next, mark).await {
                Ok(()) => {
                    self.forget_gc_fence();
                    return Ok(next);
                }
                Err(Error::Conflict { .. }) => {
                    crate::backend::retry::STORE_CONFLICT.pause(attempt).await
                }
                Err(e) => return Err(e),
            }
        }
        Err(Error::Busy {
            what: "the gc log kept changing; run gc again".into(),
        })
    }

    /// Appends an end mark at `seq`; a conflict means another writer ended that gc first.
    pub(super) async fn end_gc(&self, seq: u64) -> Result<()> {
        let mark = GcMark {
            begin: false,
            time_us: now_micros(),
            lease_us: 0,
            owner: Some(process_id()),
        };
        match self.append_gc_mark(seq, mark).await {
            Ok(()) | Err(Error::Conflict { .. }) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn append_gc_mark(&self, seq: u64, mark: GcMark) -> Result<()> {
        let frame = frame::encode_gc(GC_LOG, seq, mark)?;
        self.append(vec![
            LogAppend::new(GC_LOG, seq, vec![frame]).never_expiring()
        ])
        .await
    }
}

/// Whether a running gc's lease has run out, by this machine's clock.
fn lease_ended(mark: &GcMark) -> bool {
    now_micros() > mark.time_us.saturating_add(mark.lease_us)
}

/// A random id of this process, written in its gc marks.
pub(crate) fn process_id() -> u64 {
    static ID: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *ID.get_or_init(|| {
        let mut h = blake3::Hasher::new();
        h.update(&std::process::id().to_le_bytes());
        h.update(&now_micros().to_le_bytes());
        let here = 0u8;
        h.update(&(&here as *const u8 as usize).to_le_bytes());
        let bytes = h.finalize();
        u64::from_le_bytes(bytes.as_bytes()[..8].try_into().unwrap_or_default())
    })
}

impl Store {
    /// Whether the gc that wrote `mark` is dead: its lease ran out, or the backend is held by
    /// one process at a time (sled locks its directory) and the mark is another process's, so
    /// that process has exited (a gc killed part way must not stall every save for its lease).
    fn is_dead(&self, mark: &GcMark) -> bool {
        lease_ended(mark)
            || (self.inner.traced.capabilities().single_process && mark.owner != Some(process_id()))
    }
}

/// Whether an error is a save's fence failing (a gc began), not a conflict on the save's log.
pub(super) fn is_fence_conflict(e: &Error) -> bool {
    matches!(e, Error::Conflict { log, .. } if log == GC_LOG)
}
