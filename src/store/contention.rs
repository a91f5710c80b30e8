//! How writers of this process share a log: contention policy, in the store only.
//!
//! Backends answer compare-and-append honestly and nothing more; the store decides how writers
//! that meet on one log behave, the same on every backend. Two rules, both per backend handle
//! (a [`crate::testing::Elsewhere`] handle, standing for another process, shares neither):
//! - **losers go first** ([`Turns`]): a task whose append conflicted gets in line, and other tasks
//!   of this process wait briefly before appending to that log, so a winner cannot starve a
//!   retrying loser;
//! - **read the tail after the appends in flight** ([`InFlight`]): reading a log's next sequence
//!   number waits (briefly) for this process's appends to it that are on their way, so a writer
//!   does not build a save on a tail that is about to move and is certain to conflict.
//!
//! Delaying an append or a read never changes its correctness: the backend still decides.

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;

use crate::backend::Backend;
use crate::error::{Error, Result};

/// The contention state of one backend handle, shared by every store on it in this process.
#[derive(Debug, Default)]
pub(crate) struct Contention {
    /// Saves hold it shared from their first blob put to their append; gc holds it exclusively,
    /// so gc never sweeps a blob whose event is still on its way (see `reclaim`).
    pub(crate) gc_lock: Arc<tokio::sync::RwLock<()>>,
    turns: Turns,
    /// Per log, this process's appends in flight. A counter and a notification, not a lock: an
    /// append never waits on anything, so an idle reader (an unpolled watch) cannot hold a
    /// writer up. Entries are removed when unused.
    in_flight: Mutex<HashMap<String, Arc<InFlight>>>,
}

/// A backend handle and its contention state, both held weakly (see [`Contention::of`]).
type Shared = (Weak<dyn Backend>, Weak<Contention>);

/// Longest a read of a log's next sequence number waits for this process's appends in flight.
const SETTLE_MAX: Duration = Duration::from_secs(1);

impl Contention {
    /// The contention state shared by every store on `backend` (the same `Arc`) in this process.
    pub(crate) fn of(backend: &Arc<dyn Backend>) -> Arc<Contention> {
        static SHARED: Mutex<Vec<Shared>> = Mutex::new(Vec::new());
        let mut shared = SHARED.lock().unwrap_or_else(PoisonError::into_inner);
        shared.retain(|(b, c)| b.strong_count() > 0 && c.strong_count() > 0);
        for (b, c) in shared.iter() {
            if let (Some(b), Some(c)) = (b.upgrade(), c.upgrade()) {
                if Arc::ptr_eq(&b, backend) {
                    return c;
                }
            }
        }
        let contention = Arc::new(Contention::default());
        shared.push((Arc::downgrade(backend), Arc::downgrade(&contention)));
        contention
    }

    /// Runs `commit`, an append to `logs`, after every earlier loser of this process on those
    /// logs had its turn, counted as in flight on each log while it runs; records its outcome.
    pub(crate) async fn commit<F>(&self, logs: &[String], commit: F) -> Result<()>
    where
        F: Future<Output = Result<()>>,
    {
        if logs.is_empty() {
            return commit.await;
        }
        self.turns.wait_turn(logs).await;
        let result = self.in_flight(logs, commit).await;
        match &result {
            Ok(()) => self.turns.record(logs, None),
            Err(Error::Conflict { log, .. }) => self.turns.record(&[], Some(log)),
            Err(_) => {}
        }
        result
    }

    /// Waits until the appends of this process to `log` in flight now have ended, or
    /// [`SETTLE_MAX`] passed. A writer in line for `log` reading its tail is retrying: it keeps
    /// its place.
    pub(crate) async fn settled(&self, log: &str) {
        self.turns.keep_place(log);
        let mark = self
            .in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .get(log)
            .cloned();
        if let Some(mark) = mark {
            let _ = tokio::time::timeout(SETTLE_MAX, mark.idle()).await;
            self.turns.keep_place(log);
        }
    }

    /// Counts `op` as an append of this process in flight to each of `logs` while it runs.
    async fn in_flight<T>(&self, logs: &[String], op: impl Future<Output = T>) -> T {
        let logs: BTreeSet<&str> = logs.iter().map(String::as_str).collect();
        let marks: Vec<Arc<InFlight>> = {
            let mut map = self
                .in_flight
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            logs.iter()
                .map(|log| map.entry((*log).to_owned()).or_default().clone())
                .collect()
        };
        // Decrements (and wakes waiters) even if `op` is cancelled.
        let done = marks
            .iter()
            .map(|m| m.start())
            .collect::<Vec<InFlightGuard<'_>>>();
        let out = op.await;
        drop(done);
        drop(marks);
        self.in_flight
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .retain(|_, m| Arc::strong_count(m) > 1);
        out
    }
}

impl crate::Store {
    /// The next sequence number of `log`, read after this process's appends in flight to it.
    pub(crate) async fn tail(&self, log: &str) -> Result<u64> {
        self.inner.contention.settled(log).await;
        self.inner.traced.next_seq(log).await
    }

    /// [`Backend::commit`] under the store's contention policy (see the module docs). Boxed
    /// (as the backend's own futures are) so that callers holding borrows across it stay `Send`.
    pub(crate) fn commit(
        &self,
        appends: Vec<crate::backend::LogAppend>,
        blobs: Vec<crate::backend::Blob>,
    ) -> BoxFuture<'_, Result<()>> {
        Box::pin(async move {
            let logs: Vec<String> = appends.iter().map(|a| a.log.clone()).collect();
            let backend = &self.inner.traced;
            let result = self
                .inner
                .contention
                .commit(&logs, backend.commit(appends, blobs))
                .await;
            // Whatever moved a log, the search index looks at it before the next search.
            self.note_moved_for_index(&logs);
            result
        })
    }

    /// [`Store::commit`] without blobs.
    pub(crate) fn append(
        &self,
        appends: Vec<crate::backend::LogAppend>,
    ) -> BoxFuture<'_, Result<()>> {
        self.commit(appends, Vec::new())
    }
}

/// One log's appends in flight in this process, each under the ticket it drew when it began.
#[derive(Debug, Default)]
struct InFlight {
    /// The next ticket.
    next: AtomicU64,
    /// The tickets of the appends in flight.
    active: Mutex<BTreeSet<u64>>,
    done: tokio::sync::Notify,
}

impl InFlight {
    fn start(&self) -> InFlightGuard<'_> {
        let ticket = self.next.fetch_add(1, Ordering::SeqCst);
        self.active().insert(ticket);
        InFlightGuard(self, ticket)
    }

    fn active(&self) -> std::sync::MutexGuard<'_, BTreeSet<u64>> {
        // A set of numbers: no invariant a panic could break half-way.
        self.active.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Returns once every append in flight when it was called has ended. Appends that begin
    /// later are not waited for, so steady traffic from other writers cannot hold a reader up.
    async fn idle(&self) {
        let began_before = self.next.load(Ordering::SeqCst);
        loop {
            let notified = self.done.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.active().first().is_none_or(|t| *t >= began_before) {
                return;
            }
            notified.await;
        }
    }
}

/// Ends one append in flight (its ticket) when dropped.
struct InFlightGuard<'a>(&'a InFlight, u64);

impl Drop for InFlightGuard<'_> {
    fn drop(&mut self) {
        self.0.active().remove(&self.1);
        self.0.done.notify_waiters();
    }
}

/// How long a writer that lost a compare-and-append keeps its place in line without showing
/// signs of life (losing again, or reading the log's tail to retry): longer than the store's
/// longest backoff between retries (25 ms) plus a re-read of the log and preparing the save again
/// on a loaded machine (sealing, a scan). Only a writer that died in line costs others this long.
const TURN_EXPIRY: Duration = Duration::from_millis(150);

/// In-process fairness between writers contending on one log.
///
/// The store retries a conflicting save after a backoff, while the writer that just won goes on
/// at once; against a backend that answers after a round trip (not within one task poll, as an
/// in-memory one does), the winner then wins again and again and a loser can run out of retries.
/// So a task whose append conflicted gets in line for the log, and an append by any other task
/// of this process waits (briefly, bounded by [`TURN_EXPIRY`]) while an earlier loser is in line.
/// Delaying an append never changes its outcome's correctness: the database still decides.
#[derive(Debug, Default)]
struct Turns {
    lines: std::sync::Mutex<std::collections::HashMap<String, Line>>,
    changed: tokio::sync::Notify,
}

/// The losers waiting on one log, oldest first, each with when it last lost.
type Line = std::collections::VecDeque<(tokio::task::Id, tokio::time::Instant)>;

impl Turns {
    fn lines(&self) -> std::sync::MutexGuard<'_, std::collections::HashMap<String, Line>> {
        // The map holds no invariant a panic could break half-way.
        self.lines
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether the current task may append to `log` now: nobody is in line before it.
    fn my_turn(&self, log: &str, me: tokio::task::Id) -> bool {
        let mut lines = self.lines();
        let Some(line) = lines.get_mut(log) else {
            return true;
        };
        let now = tokio::time::Instant::now();
        line.retain(|(_, at)| now.duration_since(*at) < TURN_EXPIRY);
        match line.front() {
            None => {
                lines.remove(log);
                true
            }
            Some((first, _)) => *first == me,
        }
    }

    /// Waits until no other task of this process is in line before the current one on any of
    /// `logs`. A line that makes no progress for [`TURN_EXPIRY`] (its first task died or gave up)
    /// loses its first task, so the wait is bounded.
    async fn wait_turn(&self, logs: &[String]) {
        let Some(me) = tokio::task::try_id() else {
            return;
        };
        for log in logs {
            loop {
                let changed = self.changed.notified();
                tokio::pin!(changed);
                changed.as_mut().enable();
                if self.my_turn(log, me) {
                    break;
                }
                // Woken by any change of any line; at the latest when the first task expires.
                let _ = tokio::time::timeout(TURN_EXPIRY, changed).await;
            }
        }
    }

    /// Refreshes the current task's place in line for `log`, if it has one: it is alive and
    /// about to try again.
    fn keep_place(&self, log: &str) {
        let Some(me) = tokio::task::try_id() else {
            return;
        };
        let mut lines = self.lines();
        if let Some(entry) = lines
            .get_mut(log)
            .and_then(|line| line.iter_mut().find(|(id, _)| *id == me))
        {
            entry.1 = tokio::time::Instant::now();
        }
    }

    /// Records the outcome of the current task's append to `logs`: a conflict on `lost` puts it in
    /// line for that log (or refreshes its place); success takes it out of line everywhere.
    fn record(&self, logs: &[String], lost: Option<&str>) {
        let Some(me) = tokio::task::try_id() else {
            return;
        };
        let now = tokio::time::Instant::now();
        let mut lines = self.lines();
        match lost {
            Some(log) => {
                let line = lines.entry(log.to_owned()).or_default();
                match line.iter_mut().find(|(id, _)| *id == me) {
                    Some(entry) => entry.1 = now,
                    None => line.push_back((me, now)),
                }
            }
            None => {
                let mut removed = false;
                for log in logs {
                    if let Some(line) = lines.get_mut(log) {
                        let before = line.len();
                        line.retain(|(id, _)| *id != me);
                        removed |= line.len() != before;
                        if line.is_empty() {
                            lines.remove(log);
                        }
                    }
                }
                if !removed {
                    return;
                }
            }
        }
        drop(lines);
        self.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A task whose append conflicted goes first: another task's append waits until the loser
    /// has appended.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn losers_go_first() {
        let turns = std::sync::Arc::new(Turns::default());
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let loser = {
            let turns = turns.clone();
            tokio::spawn(async move {
                turns.record(&[], Some("log"));
                let _ = lost_tx.send(());
                let _ = go_rx.await;
                turns.wait_turn(&["log".into()]).await;
                turns.record(&["log".into()], None);
            })
        };
        lost_rx.await.unwrap();
        let other = {
            let turns = turns.clone();
            tokio::spawn(async move { turns.wait_turn(&["log".into()]).await })
        };
        // Well within TURN_EXPIRY, after which a silent loser loses its place.
        tokio::time::sleep(Duration::from_millis(5)).await;
        assert!(!other.is_finished(), "went before the loser");
        go_tx.send(()).unwrap();
        loser.await.unwrap();
        other.await.unwrap();
        // Nobody in line: no wait.
        turns.wait_turn(&["log".into(), "other".into()]).await;
    }

    /// A loser that reads the tail to retry keeps its place in line past the expiry; one that
    /// stops showing signs of life loses it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retrying_loser_keeps_its_place() {
        let contention = Arc::new(Contention::default());
        let (lost_tx, lost_rx) = tokio::sync::oneshot::channel();
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let loser = {
            let contention = contention.clone();
            tokio::spawn(async move {
                contention.turns.record(&[], Some("log"));
                let _ = lost_tx.send(());
                // Retrying for longer than the expiry, reading the tail as it goes.
                for _ in 0..4 {
                    tokio::time::sleep(TURN_EXPIRY / 2).await;
                    contention.settled("log").await;
                }
                let _ = go_rx.await;
                contention.commit(&["log".into()], async { Ok(()) }).await
            })
        };
        lost_rx.await.unwrap();
        let other = {
            let contention = contention.clone();
            tokio::spawn(async move { contention.turns.wait_turn(&["log".into()]).await })
        };
        tokio::time::sleep(TURN_EXPIRY * 2).await;
        assert!(
            !other.is_finished(),
            "went before a loser that was still retrying"
        );
        go_tx.send(()).unwrap();
        loser.await.unwrap().unwrap();
        other.await.unwrap();
    }

    /// A read of the tail waits for this process's append in flight to the same log, and not
    /// for one to another log.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_wait_for_appends_in_flight() {
        let contention = Arc::new(Contention::default());
        let (go_tx, go_rx) = tokio::sync::oneshot::channel::<()>();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel::<()>();
        let writer = {
            let contention = contention.clone();
            tokio::spawn(async move {
                contention
                    .commit(&["log".into()], async {
                        let _ = started_tx.send(());
                        let _ = go_rx.await;
                        Ok(())
                    })
                    .await
            })
        };
        started_rx.await.unwrap();
        contention.settled("other").await;
        let reader = {
            let contention = contention.clone();
            tokio::spawn(async move { contention.settled("log").await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(
            !reader.is_finished(),
            "read the tail under an append in flight"
        );
        go_tx.send(()).unwrap();
        writer.await.unwrap().unwrap();
        reader.await.unwrap();
    }
}
