//! [`Faulty`]: a backend wrapper that injects faults, so that tests can check what the store does
//! when its backend fails under it.
//!
//! # What a fault can be
//!
//! The [backend contract](crate::backend) decides what a failing backend may leave behind, and
//! the wrapper only produces outcomes the contract allows (anything else would test the store
//! against a backend it never has to handle):
//!
//! - [`Fault::FailBefore`]: the call fails without reaching the backend (a refused connection).
//! - [`Fault::FailAfter`]: the call reaches the backend and takes effect, then the caller gets an
//!   error (a timeout after the server committed): the outcome is ambiguous to the caller.
//! - [`Fault::Tear`]: what a crash in the middle of a write may leave. An append is all or nothing
//!   on every backend (the contract says so, and a backend that cannot append to several logs
//!   atomically refuses such appends), so no prefix of an append's frames ever lands; what can
//!   land is the blobs of a [`Backend::commit`] without its frames (backends that cannot write
//!   both at once put the blobs first), and a prefix of the blobs of a `put_blobs` or
//!   `delete_blobs`. Any other call torn fails as [`Fault::FailBefore`].
//! - [`Fault::Delay`]: the call waits, then goes on normally (reorders concurrent tasks).
//!
//! Faults come from a script ([`FaultControl::on_nth`]: "the 2nd append fails after landing"),
//! from a seeded generator ([`FaultControl::seeded`], active while [`FaultControl::arm`]ed), and
//! [`FaultControl::hold`] stops a chosen call before it reaches the backend until the test lets
//! it go, so a test can run something else in that window every time instead of hoping for it.
//!
//! Calls that touch only the store's reserved logs (the gc log) are neither counted nor faulted
//! unless [`FaultControl::fault_reserved_logs`] says so: a gc whose end mark fails blocks saves
//! for its whole lease, which is the lease's job, but would stall a test for ten minutes.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::oneshot;

use super::rng::XorShift;
use super::Harness;
use crate::backend::{
    Backend, Blob, BlobHash, Capabilities, CompactReport, Inspect, LogAppend, Maintain, Notify,
    RecordedDamage, Rewrite,
};
use crate::{Error, Result, Store};

/// One method of [`Backend`] or of its capability traits ([`Rewrite`], [`Notify`], [`Maintain`],
/// [`Inspect`]), to name the calls faults apply to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[allow(missing_docs)] // each variant is the method of the same name
pub enum Call {
    NextSeq,
    Commit,
    Scan,
    ListLogs,
    RaiseNextSeq,
    Truncate,
    PutBlobs,
    GetBlobs,
    MissingBlobs,
    ListBlobs,
    DeleteBlobs,
    Flush,
    RewriteFrames,
    RewriteBlobs,
    WaitForAppend,
    StoredBytes,
    ServerMemory,
    Compact,
    RecordedDamage,
    CheckStorage,
    LogProblems,
}

impl Call {
    /// Every method that does I/O, each once. `name` and `capabilities` are answered by the
    /// wrapped backend and never faulted.
    pub const ALL: [Call; 21] = [
        Call::NextSeq,
        Call::Commit,
        Call::Scan,
        Call::ListLogs,
        Call::RaiseNextSeq,
        Call::Truncate,
        Call::PutBlobs,
        Call::GetBlobs,
        Call::MissingBlobs,
        Call::ListBlobs,
        Call::DeleteBlobs,
        Call::Flush,
        Call::RewriteFrames,
        Call::RewriteBlobs,
        Call::WaitForAppend,
        Call::StoredBytes,
        Call::ServerMemory,
        Call::Compact,
        Call::RecordedDamage,
        Call::CheckStorage,
        Call::LogProblems,
    ];

    /// Whether the method writes.
    pub fn writes(self) -> bool {
        matches!(
            self,
            Call::Commit
                | Call::RaiseNextSeq
                | Call::Truncate
                | Call::PutBlobs
                | Call::DeleteBlobs
                | Call::RewriteFrames
                | Call::RewriteBlobs
        )
    }

    /// The method's name in [`Backend`] or its capability trait.
    pub fn method(self) -> &'static str {
        match self {
            Call::NextSeq => "next_seq",
            Call::Commit => "commit",
            Call::Scan => "scan",
            Call::ListLogs => "list_logs",
            Call::RaiseNextSeq => "raise_next_seq",
            Call::Truncate => "truncate",
            Call::PutBlobs => "put_blobs",
            Call::GetBlobs => "get_blobs",
            Call::MissingBlobs => "missing_blobs",
            Call::ListBlobs => "list_blobs",
            Call::DeleteBlobs => "delete_blobs",
            Call::Flush => "flush",
            Call::RewriteFrames => "rewrite_frames",
            Call::RewriteBlobs => "rewrite_blobs",
            Call::WaitForAppend => "wait_for_append",
            Call::StoredBytes => "stored_bytes",
            Call::ServerMemory => "server_memory",
            Call::Compact => "compact",
            Call::RecordedDamage => "recorded_damage",
            Call::CheckStorage => "check_storage",
            Call::LogProblems => "log_problems",
        }
    }
}

/// What happens to one call; see [`Faulty`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Fails without reaching the backend.
    FailBefore,
    /// Reaches the backend, takes effect, then fails.
    FailAfter,
    /// Leaves what a crash mid-write may leave (see the module documentation), then fails.
    Tear,
    /// Waits this long, then goes on normally.
    Delay(Duration),
}

/// A fault that was injected, for messages and for tests that need to know what happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Injected {
    /// The call it hit.
    pub call: Call,
    /// What it did.
    pub fault: Fault,
}

/// Whether `e` is an error [`Faulty`] made up (rather than one the backend or store raised).
pub fn is_injected(e: &Error) -> bool {
    matches!(e, Error::Backend { context, .. } if context.starts_with(INJECTED))
}

const INJECTED: &str = "injected fault";

fn injected_error(backend: &'static str, call: Call, fault: Fault) -> Error {
    let when = match fault {
        Fault::FailAfter => "after it took effect",
        Fault::Tear => "torn part way",
        _ => "before it reached the backend",
    };
    Error::Backend {
        backend,
        context: format!("{INJECTED}: {} failed {when}", call.method()),
        source: format!("{fault:?}").into(),
    }
}

/// A call stopped by [`FaultControl::hold`]: [`Hold::reached`] waits until the call arrives,
/// [`Hold::release`] (or dropping the `Hold`) lets it go on to the backend.
#[derive(Debug)]
pub struct Hold {
    reached: Option<oneshot::Receiver<()>>,
    release: Option<oneshot::Sender<()>>,
}

impl Hold {
    /// Waits until the held call has arrived (and is waiting). Returns false if it never can:
    /// the wrapper was dropped first.
    pub async fn reached(&mut self) -> bool {
        match self.reached.take() {
            Some(rx) => rx.await.is_ok(),
            None => true,
        }
    }

    /// Lets the held call go on.
    pub fn release(mut self) {
        if let Some(tx) = self.release.take() {
            let _ = tx.send(());
        }
    }
}

struct PendingHold {
    call: Call,
    nth: u64,
    reached: oneshot::Sender<()>,
    release: oneshot::Receiver<()>,
}

struct Scripted {
    call: Call,
    nth: u64,
    fault: Fault,
}

#[derive(Default)]
struct State {
    armed: bool,
    rng: Option<XorShift>,
    /// Faults per 1000 eligible calls while armed.
    per_mille: u64,
    /// The same for calls that write (appends, truncates, blob puts and deletes, rewrites).
    writes_per_mille: u64,
    fault_reserved: bool,
    script: Vec<Scripted>,
    holds: Vec<PendingHold>,
    counts: HashMap<Call, u64>,
    injected: Vec<Injected>,
    landed: u64,
}

/// The faults a [`Faulty`] injects, shared by every wrapper made with it (so a schedule runs on
/// across reopens of the storage).
#[derive(Default)]
pub struct FaultControl {
    state: Mutex<State>,
}

impl fmt::Debug for FaultControl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.lock();
        f.debug_struct("FaultControl")
            .field("armed", &s.armed)
            .field("per_mille", &s.per_mille)
            .field("scripted", &s.script.len())
            .field("injected", &s.injected.len())
            .finish()
    }
}

impl FaultControl {
    /// A control that injects nothing until told to.
    pub fn new() -> Arc<Self> {
        Arc::new(FaultControl::default())
    }

    /// A control that, while [armed](Self::arm), faults about `per_mille` of every 1000 calls,
    /// choosing the calls and the faults from `seed` (the same seed and the same calls give the
    /// same faults).
    pub fn seeded(seed: u64, per_mille: u64) -> Arc<Self> {
        let control = FaultControl::default();
        {
            let mut s = control.lock();
            s.rng = Some(XorShift::new(seed));
            s.per_mille = per_mille.min(1000);
            s.writes_per_mille = s.per_mille;
        }
        Arc::new(control)
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        match self.state.lock() {
            Ok(s) => s,
            Err(poisoned) => poisoned.into_inner(),
        }
    }

    /// Faults about `per_mille` of every 1000 calls that write (appends, truncates, blob puts
    /// and deletes, rewrites) instead of the rate given to [`FaultControl::seeded`], which then
    /// applies to reads: writes are where an outcome can be ambiguous, reads are many more.
    pub fn writes_per_mille(&self, per_mille: u64) {
        self.lock().writes_per_mille = per_mille.min(1000);
    }

    /// Starts injecting seeded faults.
    pub fn arm(&self) {
        self.lock().armed = true;
    }

    /// Stops injecting seeded faults (scripted faults and holds stay).
    pub fn disarm(&self) {
        self.lock().armed = false;
    }

    /// Also counts and faults calls that touch only the store's reserved logs (the gc log).
    pub fn fault_reserved_logs(&self) {
        self.lock().fault_reserved = true;
    }

    /// The `nth` call (1 for the next) to `call` from now on gets `fault`.
    pub fn on_nth(&self, call: Call, nth: u64, fault: Fault) {
        let mut s = self.lock();
        let nth = s.counts.get(&call).copied().unwrap_or(0) + nth.max(1);
        s.script.push(Scripted { call, nth, fault });
    }

    /// Stops the `nth` call (1 for the next) to `call` from now on before it reaches the backend,
    /// until the returned [`Hold`] releases it.
    pub fn hold(&self, call: Call, nth: u64) -> Hold {
        let (reached_tx, reached_rx) = oneshot::channel();
        let (release_tx, release_rx) = oneshot::channel();
        let mut s = self.lock();
        let nth = s.counts.get(&call).copied().unwrap_or(0) + nth.max(1);
        s.holds.push(PendingHold {
            call,
            nth,
            reached: reached_tx,
            release: release_rx,
        });
        Hold {
            reached: Some(reached_rx),
            release: Some(release_tx),
        }
    }

    /// The faults injected so far, oldest first; empties the record.
    pub fn take_injected(&self) -> Vec<Injected> {
        std::mem::take(&mut self.lock().injected)
    }

    /// How many appends to execution logs (not reserved ones) have reached the backend and
    /// succeeded there, whatever the caller was told. A failed store call during which this did
    /// not move cannot have changed any execution.
    pub fn landed_appends(&self) -> u64 {
        self.lock().landed
    }

    /// How many calls to `call` were counted (see the module documentation on reserved logs).
    pub fn calls(&self, call: Call) -> u64 {
        self.lock().counts.get(&call).copied().unwrap_or(0)
    }

    /// Counts the call and decides its fault; takes the hold meant for it, if any.
    fn decide(&self, call: Call, reserved: bool) -> (Option<Fault>, Option<PendingHold>) {
        let mut s = self.lock();
        if reserved && !s.fault_reserved {
            return (None, None);
        }
        let n = {
            let count = s.counts.entry(call).or_insert(0);
            *count += 1;
            *count
        };
        let hold = s
            .holds
            .iter()
            .position(|h| h.call == call && h.nth == n)
            .map(|i| s.holds.swap_remove(i));
        let scripted = s
            .script
            .iter()
            .position(|f| f.call == call && f.nth == n)
            .map(|i| s.script.swap_remove(i).fault);
        let fault = match scripted {
            Some(f) => Some(f),
            None if s.armed => {
                let per_mille = if call.writes() {
                    s.writes_per_mille
                } else {
                    s.per_mille
                };
                s.rng.as_mut().and_then(|rng| {
                    if rng.below(1000) >= per_mille {
                        return None;
                    }
                    Some(match rng.below(10) {
                        0..=3 => Fault::FailBefore,
                        4..=6 => Fault::FailAfter,
                        7..=8 => Fault::Tear,
                        _ => Fault::Delay(Duration::from_micros(rng.below(3000))),
                    })
                })
            }
            None => None,
        };
        if let Some(fault) = fault {
            s.injected.push(Injected { call, fault });
        }
        (fault, hold)
    }

    fn note_landed(&self) {
        self.lock().landed += 1;
    }
}

/// What a call does once it has passed [`Faulty::enter`].
enum Then {
    /// Go on normally.
    Forward,
    /// Go on, then fail ([`Fault::FailAfter`]).
    FailAfter,
    /// Tear it ([`Fault::Tear`]); calls that cannot be torn have failed in `enter` already.
    Tear,
}

/// Wraps a backend and injects the faults its [`FaultControl`] decides; forwards everything else
/// unchanged, capabilities included. What a fault may leave behind follows the backend contract (`src/testing/faulty.rs` says how).
pub struct Faulty<B: Backend + ?Sized> {
    inner: Arc<B>,
    control: Arc<FaultControl>,
}

impl<B: Backend + ?Sized> fmt::Debug for Faulty<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Faulty")
            .field("inner", &self.inner)
            .field("control", &self.control)
            .finish()
    }
}

impl<B: Backend + ?Sized> Faulty<B> {
    /// `inner`, with no faults yet: add them through [`Faulty::control`].
    pub fn new(inner: Arc<B>) -> Self {
        Self::with_control(inner, FaultControl::new())
    }

    /// `inner`, faulted by `control` (which other wrappers may share).
    pub fn with_control(inner: Arc<B>, control: Arc<FaultControl>) -> Self {
        Faulty { inner, control }
    }

    /// What decides the faults.
    pub fn control(&self) -> &Arc<FaultControl> {
        &self.control
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &Arc<B> {
        &self.inner
    }

    /// Runs the part of a fault that comes before the call: a hold, a delay, or failing outright.
    /// `tearable`: the call has a torn form (else a tear fails it here).
    async fn enter(&self, call: Call, reserved: bool, tearable: bool) -> Result<Then> {
        let (fault, hold) = self.control.decide(call, reserved);
        if let Some(hold) = hold {
            let _ = hold.reached.send(());
            // A dropped `Hold` releases the call too.
            let _ = hold.release.await;
        }
        let fail = || {
            Err(injected_error(
                self.inner.name(),
                call,
                fault.unwrap_or(Fault::FailBefore),
            ))
        };
        match fault {
            None => Ok(Then::Forward),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(Then::Forward)
            }
            Some(Fault::FailBefore) => fail(),
            Some(Fault::Tear) if !tearable => fail(),
            Some(Fault::Tear) => Ok(Then::Tear),
            Some(Fault::FailAfter) => Ok(Then::FailAfter),
        }
    }

    /// The result of a call that went on to the backend.
    fn leave<T>(&self, call: Call, then: &Then, result: Result<T>) -> Result<T> {
        match (then, result) {
            (Then::FailAfter, Ok(_)) => {
                Err(injected_error(self.inner.name(), call, Fault::FailAfter))
            }
            (_, result) => result,
        }
    }

    /// The wrapped backend's capabilities, which this wrapper offers only when the wrapped one
    /// has them (reaching one it lacks would be a bug of the wrapper, reported as lacking).
    fn inner_rewrite(&self) -> Result<&dyn Rewrite> {
        (self.inner.capabilities().rewrite).ok_or_else(|| lacking(self.inner.name(), "rewrite"))
    }

    fn inner_notify(&self) -> Result<&dyn Notify> {
        (self.inner.capabilities().notify).ok_or_else(|| lacking(self.inner.name(), "notify"))
    }

    fn inner_maintain(&self) -> Result<&dyn Maintain> {
        (self.inner.capabilities().maintain).ok_or_else(|| lacking(self.inner.name(), "maintain"))
    }

    fn inner_inspect(&self) -> Result<&dyn Inspect> {
        (self.inner.capabilities().inspect).ok_or_else(|| lacking(self.inner.name(), "inspect"))
    }

    fn torn(&self, call: Call) -> Error {
        injected_error(self.inner.name(), call, Fault::Tear)
    }
}

fn reserved(log: &str) -> bool {
    log.starts_with('\u{1}')
}

fn all_reserved(appends: &[LogAppend]) -> bool {
    !appends.is_empty() && appends.iter().all(|a| reserved(&a.log))
}

/// The capability a [`Faulty`] advertises only when its wrapped backend has it: reaching here
/// without it is a bug of the wrapper, reported as the backend lacking it.
fn lacking(backend: &'static str, operation: &'static str) -> Error {
    Error::NotSupported { operation, backend }
}

#[async_trait]
impl<B: Backend + ?Sized> Backend for Faulty<B> {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    /// The wrapped backend's flags; each optional capability it has is offered by the wrapper
    /// itself, so those calls are faulted too.
    fn capabilities(&self) -> Capabilities<'_> {
        let inner = self.inner.capabilities();
        let mut caps = inner;
        caps.rewrite = inner.rewrite.map(|_| self as &dyn Rewrite);
        caps.notify = inner.notify.map(|_| self as &dyn Notify);
        caps.maintain = inner.maintain.map(|_| self as &dyn Maintain);
        caps.inspect = inner.inspect.map(|_| self as &dyn Inspect);
        caps
    }

    async fn next_seq(&self, log: &str) -> Result<u64> {
        let then = self.enter(Call::NextSeq, reserved(log), false).await?;
        let r = self.inner.next_seq(log).await;
        self.leave(Call::NextSeq, &then, r)
    }

    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()> {
        let only_reserved = all_reserved(&appends);
        let then = self.enter(Call::Commit, only_reserved, true).await?;
        if let Then::Tear = then {
            // The blobs land, the frames do not: what a backend that puts the blobs first
            // leaves when it dies between its two steps.
            if !blobs.is_empty() {
                self.inner.put_blobs(blobs).await?;
            }
            return Err(self.torn(Call::Commit));
        }
        let r = self.inner.commit(appends, blobs).await;
        if r.is_ok() && !only_reserved {
            self.control.note_landed();
        }
        self.leave(Call::Commit, &then, r)
    }

    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let then = self.enter(Call::Scan, reserved(log), false).await?;
        let r = self.inner.scan(log, from, limit).await;
        self.leave(Call::Scan, &then, r)
    }

    async fn list_logs(&self) -> Result<Vec<String>> {
        let then = self.enter(Call::ListLogs, false, false).await?;
        let r = self.inner.list_logs().await;
        self.leave(Call::ListLogs, &then, r)
    }

    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        let then = self.enter(Call::RaiseNextSeq, reserved(log), false).await?;
        let r = self.inner.raise_next_seq(log, next_seq).await;
        self.leave(Call::RaiseNextSeq, &then, r)
    }

    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        let then = self.enter(Call::Truncate, reserved(log), false).await?;
        let r = self.inner.truncate(log, before).await;
        self.leave(Call::Truncate, &then, r)
    }

    async fn put_blobs(&self, mut blobs: Vec<Blob>) -> Result<()> {
        let then = self.enter(Call::PutBlobs, false, true).await?;
        if let Then::Tear = then {
            blobs.truncate(blobs.len() / 2);
            if !blobs.is_empty() {
                self.inner.put_blobs(blobs).await?;
            }
            return Err(self.torn(Call::PutBlobs));
        }
        let r = self.inner.put_blobs(blobs).await;
        self.leave(Call::PutBlobs, &then, r)
    }

    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        let then = self.enter(Call::GetBlobs, false, false).await?;
        let r = self.inner.get_blobs(hashes).await;
        self.leave(Call::GetBlobs, &then, r)
    }

    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        let then = self.enter(Call::MissingBlobs, false, false).await?;
        let r = self.inner.missing_blobs(hashes).await;
        self.leave(Call::MissingBlobs, &then, r)
    }

    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        let then = self.enter(Call::ListBlobs, false, false).await?;
        let r = self.inner.list_blobs().await;
        self.leave(Call::ListBlobs, &then, r)
    }

    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        let then = self.enter(Call::DeleteBlobs, false, true).await?;
        if let Then::Tear = then {
            let prefix = &hashes[..hashes.len() / 2];
            if !prefix.is_empty() {
                self.inner.delete_blobs(prefix).await?;
            }
            return Err(self.torn(Call::DeleteBlobs));
        }
        let r = self.inner.delete_blobs(hashes).await;
        self.leave(Call::DeleteBlobs, &then, r)
    }

    async fn flush(&self) -> Result<()> {
        let then = self.enter(Call::Flush, false, false).await?;
        let r = self.inner.flush().await;
        self.leave(Call::Flush, &then, r)
    }
}

#[async_trait]
impl<B: Backend + ?Sized> Rewrite for Faulty<B> {
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        let then = self
            .enter(Call::RewriteFrames, reserved(log), false)
            .await?;
        let r = async { self.inner_rewrite()?.rewrite_frames(log, frames).await }.await;
        self.leave(Call::RewriteFrames, &then, r)
    }

    async fn rewrite_blobs(&self, blobs: Vec<Blob>) -> Result<()> {
        let then = self.enter(Call::RewriteBlobs, false, false).await?;
        let r = async { self.inner_rewrite()?.rewrite_blobs(blobs).await }.await;
        self.leave(Call::RewriteBlobs, &then, r)
    }
}

#[async_trait]
impl<B: Backend + ?Sized> Notify for Faulty<B> {
    async fn wait_for_append(&self, log: &str, next_seq: u64, timeout: Duration) -> Result<()> {
        let then = self
            .enter(Call::WaitForAppend, reserved(log), false)
            .await?;
        let r = async {
            self.inner_notify()?
                .wait_for_append(log, next_seq, timeout)
                .await
        }
        .await;
        self.leave(Call::WaitForAppend, &then, r)
    }
}

#[async_trait]
impl<B: Backend + ?Sized> Maintain for Faulty<B> {
    async fn server_memory(&self) -> Result<Option<u64>> {
        let then = self.enter(Call::ServerMemory, false, false).await?;
        let r = async { self.inner_maintain()?.server_memory().await }.await;
        self.leave(Call::ServerMemory, &then, r)
    }

    async fn stored_bytes(&self) -> Result<Option<u64>> {
        let then = self.enter(Call::StoredBytes, false, false).await?;
        let r = async { self.inner_maintain()?.stored_bytes().await }.await;
        self.leave(Call::StoredBytes, &then, r)
    }

    async fn compact(&self) -> Result<CompactReport> {
        let then = self.enter(Call::Compact, false, false).await?;
        let r = async { self.inner_maintain()?.compact().await }.await;
        self.leave(Call::Compact, &then, r)
    }
}

#[async_trait]
impl<B: Backend + ?Sized> Inspect for Faulty<B> {
    async fn recorded_damage(&self) -> Result<Vec<RecordedDamage>> {
        let then = self.enter(Call::RecordedDamage, false, false).await?;
        let r = async { self.inner_inspect()?.recorded_damage().await }.await;
        self.leave(Call::RecordedDamage, &then, r)
    }

    async fn check_storage(&self) -> Result<Vec<String>> {
        let then = self.enter(Call::CheckStorage, false, false).await?;
        let r = async { self.inner_inspect()?.check_storage().await }.await;
        self.leave(Call::CheckStorage, &then, r)
    }

    async fn log_problems(&self, log: &str) -> Result<Vec<String>> {
        let then = self.enter(Call::LogProblems, reserved(log), false).await?;
        let r = async { self.inner_inspect()?.log_problems(log).await }.await;
        self.leave(Call::LogProblems, &then, r)
    }
}

/// Wraps `store`'s backend in a [`Faulty`] driven by `control`: a store with the same keys whose
/// backend calls fail as `control` decides. It shares no in-process lock or cache with `store`.
pub fn faulty_store(store: &Store, control: Arc<FaultControl>) -> Store {
    store.with_same_keys(Arc::new(Faulty::with_control(
        store.backend().clone(),
        control,
    )))
}

/// A [`Harness`] whose every store runs on `H`'s storage through a [`Faulty`] backend, all
/// sharing one [`FaultControl`] (so a seeded schedule runs on across reopens).
pub struct FaultyHarness<H> {
    inner: H,
    control: Arc<FaultControl>,
    name: &'static str,
}

impl<H: Harness> FaultyHarness<H> {
    /// `inner`'s storage, faulted by `control`; `name` names it in messages (`sled+faults`).
    pub fn new(name: &'static str, inner: H, control: Arc<FaultControl>) -> Self {
        FaultyHarness {
            inner,
            control,
            name,
        }
    }

    /// What decides the faults.
    pub fn control(&self) -> &Arc<FaultControl> {
        &self.control
    }
}

#[async_trait]
impl<H: Harness> Harness for FaultyHarness<H> {
    async fn open(&self) -> Store {
        let plain = self.inner.open().await;
        faulty_store(&plain, self.control.clone())
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn allows_concurrent_opens(&self) -> bool {
        self.inner.allows_concurrent_opens()
    }
}

#[cfg(test)]
mod tests {
    //! A wrapper that forgets to forward a capability, or forwards one past its own faults,
    //! still compiles and silently changes what the store does: these tests catch that.

    use std::sync::Mutex;

    use super::*;
    use crate::backend::BackendExt;
    use crate::testing::Elsewhere;

    /// Records which of its methods ran; answers every capability flag with the non-default
    /// value and offers every optional capability.
    #[derive(Debug, Default)]
    struct Recorder {
        calls: Mutex<Vec<&'static str>>,
    }

    impl Recorder {
        fn saw(&self, method: &'static str) {
            if let Ok(mut calls) = self.calls.lock() {
                calls.push(method);
            }
        }

        fn take(&self) -> Vec<&'static str> {
            self.calls
                .lock()
                .map(|mut c| std::mem::take(&mut *c))
                .unwrap_or_default()
        }
    }

    #[async_trait]
    impl Backend for Recorder {
        fn name(&self) -> &'static str {
            "recorder"
        }
        fn capabilities(&self) -> Capabilities<'_> {
            let mut caps = Capabilities::new();
            caps.blobs_with_append = true;
            caps.atomic_across_logs = false;
            caps.single_process = true;
            caps.rewrite = Some(self);
            caps.notify = Some(self);
            caps.maintain = Some(self);
            caps.inspect = Some(self);
            caps
        }
        async fn next_seq(&self, _: &str) -> Result<u64> {
            self.saw("next_seq");
            Ok(7)
        }
        async fn commit(&self, _: Vec<LogAppend>, _: Vec<Blob>) -> Result<()> {
            self.saw("commit");
            Ok(())
        }
        async fn scan(&self, _: &str, _: u64, _: usize) -> Result<Vec<(u64, Vec<u8>)>> {
            self.saw("scan");
            Ok(vec![(3, vec![1])])
        }
        async fn list_logs(&self) -> Result<Vec<String>> {
            self.saw("list_logs");
            Ok(vec!["l".into()])
        }
        async fn raise_next_seq(&self, _: &str, _: u64) -> Result<()> {
            self.saw("raise_next_seq");
            Ok(())
        }
        async fn truncate(&self, _: &str, _: u64) -> Result<()> {
            self.saw("truncate");
            Ok(())
        }
        async fn put_blobs(&self, _: Vec<Blob>) -> Result<()> {
            self.saw("put_blobs");
            Ok(())
        }
        async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
            self.saw("get_blobs");
            Ok(hashes.iter().map(|_| Some(vec![2])).collect())
        }
        async fn missing_blobs(&self, _: &[BlobHash]) -> Result<Vec<BlobHash>> {
            self.saw("missing_blobs");
            Ok(Vec::new())
        }
        async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
            self.saw("list_blobs");
            Ok(Vec::new())
        }
        async fn delete_blobs(&self, _: &[BlobHash]) -> Result<()> {
            self.saw("delete_blobs");
            Ok(())
        }
        async fn flush(&self) -> Result<()> {
            self.saw("flush");
            Ok(())
        }
    }

    #[async_trait]
    impl Rewrite for Recorder {
        async fn rewrite_frames(&self, _: &str, _: Vec<(u64, Vec<u8>)>) -> Result<()> {
            self.saw("rewrite_frames");
            Ok(())
        }
        async fn rewrite_blobs(&self, _: Vec<Blob>) -> Result<()> {
            self.saw("rewrite_blobs");
            Ok(())
        }
    }

    #[async_trait]
    impl Notify for Recorder {
        async fn wait_for_append(&self, _: &str, _: u64, _: Duration) -> Result<()> {
            self.saw("wait_for_append");
            Ok(())
        }
    }

    #[async_trait]
    impl Maintain for Recorder {
        async fn server_memory(&self) -> Result<Option<u64>> {
            self.saw("server_memory");
            Ok(Some(7))
        }
        async fn stored_bytes(&self) -> Result<Option<u64>> {
            self.saw("stored_bytes");
            Ok(Some(42))
        }
        async fn compact(&self) -> Result<CompactReport> {
            self.saw("compact");
            Ok(CompactReport::new("recorder"))
        }
    }

    #[async_trait]
    impl Inspect for Recorder {
        async fn recorded_damage(&self) -> Result<Vec<RecordedDamage>> {
            self.saw("recorded_damage");
            Ok(Vec::new())
        }
        async fn check_storage(&self) -> Result<Vec<String>> {
            self.saw("check_storage");
            Ok(Vec::new())
        }
        async fn log_problems(&self, _: &str) -> Result<Vec<String>> {
            self.saw("log_problems");
            Ok(Vec::new())
        }
    }

    /// Calls `call` on `backend` with arguments every wrapper passes through (one log, one blob).
    /// An optional capability the backend does not offer fails the call.
    async fn invoke(backend: &dyn Backend, call: Call) -> Result<()> {
        let log = "exec".to_string();
        let one = || vec![LogAppend::new(log.clone(), 1, vec![vec![0]])];
        let hash = [9u8; 32];
        let caps = backend.capabilities();
        let missing = || lacking("test", call.method());
        match call {
            Call::NextSeq => backend.next_seq(&log).await.map(drop),
            Call::Commit => backend.commit(one(), vec![(hash, vec![1])]).await,
            Call::Scan => backend.scan(&log, 1, 10).await.map(drop),
            Call::ListLogs => backend.list_logs().await.map(drop),
            Call::RaiseNextSeq => backend.raise_next_seq(&log, 5).await,
            Call::Truncate => backend.truncate(&log, 2).await,
            Call::PutBlobs => backend.put_blobs(vec![(hash, vec![1])]).await,
            Call::GetBlobs => backend.get_blobs(&[hash]).await.map(drop),
            Call::MissingBlobs => backend.missing_blobs(&[hash]).await.map(drop),
            Call::ListBlobs => backend.list_blobs().await.map(drop),
            Call::DeleteBlobs => backend.delete_blobs(&[hash]).await,
            Call::Flush => backend.flush().await,
            Call::RewriteFrames => {
                let rewrite = caps.rewrite.ok_or_else(missing)?;
                rewrite.rewrite_frames(&log, vec![(1, vec![2])]).await
            }
            Call::RewriteBlobs => {
                let rewrite = caps.rewrite.ok_or_else(missing)?;
                rewrite.rewrite_blobs(vec![(hash, vec![2])]).await
            }
            // A wrapper that slept instead of forwarding would sleep this long: the test would
            // hang visibly instead of passing.
            Call::WaitForAppend => {
                let notify = caps.notify.ok_or_else(missing)?;
                notify
                    .wait_for_append(&log, 1, Duration::from_secs(3600))
                    .await
            }
            Call::StoredBytes => {
                let maintain = caps.maintain.ok_or_else(missing)?;
                maintain.stored_bytes().await.map(drop)
            }
            Call::ServerMemory => {
                let maintain = caps.maintain.ok_or_else(missing)?;
                maintain.server_memory().await.map(drop)
            }
            Call::Compact => {
                let maintain = caps.maintain.ok_or_else(missing)?;
                maintain.compact().await.map(drop)
            }
            Call::RecordedDamage => {
                let inspect = caps.inspect.ok_or_else(missing)?;
                inspect.recorded_damage().await.map(drop)
            }
            Call::CheckStorage => {
                let inspect = caps.inspect.ok_or_else(missing)?;
                inspect.check_storage().await.map(drop)
            }
            Call::LogProblems => {
                let inspect = caps.inspect.ok_or_else(missing)?;
                inspect.log_problems("log").await.map(drop)
            }
        }
    }

    /// Every method called on the wrapper reaches the wrapped backend as that same method (not
    /// as the pieces a convenience makes of it), and the capabilities are the wrapped one's.
    async fn forwards_everything(what: &str, wrap: impl Fn(Arc<Recorder>) -> Arc<dyn Backend>) {
        let recorder = Arc::new(Recorder::default());
        let wrapper = wrap(recorder.clone());
        assert_eq!(wrapper.name(), "recorder", "{what}: name");
        let caps = wrapper.capabilities();
        assert!(
            caps.blobs_with_append,
            "{what}: blobs_with_append is not forwarded"
        );
        assert!(
            !caps.atomic_across_logs,
            "{what}: atomic_across_logs is not forwarded"
        );
        // Elsewhere stands for another process: it must never claim the storage alone.
        assert_eq!(
            caps.single_process,
            what != "Elsewhere",
            "{what}: single_process"
        );
        for call in Call::ALL {
            let result = invoke(wrapper.as_ref(), call).await;
            assert!(result.is_ok(), "{what}: {}: {result:?}", call.method());
            assert_eq!(
                recorder.take(),
                vec![call.method()],
                "{what}: {} did not reach the wrapped backend as itself",
                call.method()
            );
        }
        let maintain = wrapper.capabilities().maintain;
        let bytes = match maintain {
            Some(m) => m.stored_bytes().await.ok().flatten(),
            None => None,
        };
        assert_eq!(bytes, Some(42), "{what}: stored_bytes answer");
    }

    #[tokio::test]
    async fn faulty_forwards_every_method() {
        forwards_everything("Faulty", |r| Arc::new(Faulty::new(r))).await;
    }

    #[tokio::test]
    async fn elsewhere_forwards_every_method() {
        forwards_everything("Elsewhere", |r| Arc::new(Elsewhere::new(r))).await;
    }

    /// The optional calls go through the wrapper's own faults, not straight to the wrapped
    /// backend's capability.
    #[tokio::test]
    async fn faulty_faults_the_optional_capabilities_too() {
        let recorder = Arc::new(Recorder::default());
        let faulty = Faulty::new(recorder.clone());
        for call in Call::ALL {
            faulty.control().on_nth(call, 1, Fault::FailBefore);
            let result = invoke(&faulty, call).await;
            assert!(
                matches!(&result, Err(e) if is_injected(e)),
                "{}: {result:?}",
                call.method()
            );
            assert!(
                recorder.take().is_empty(),
                "{} reached the backend",
                call.method()
            );
        }
        // The conveniences are made of the faulted primitives.
        faulty
            .control()
            .on_nth(Call::GetBlobs, 1, Fault::FailBefore);
        assert!(faulty.get_blob(&[1; 32]).await.is_err());
    }

    /// The `fn` names declared in the body of the item that starts with `start`.
    fn methods_in(source: &str, start: &str) -> Vec<String> {
        let Some(at) = source.find(start) else {
            panic!("{start:?} not found");
        };
        let mut depth = 0i32;
        let mut body = String::new();
        for c in source[at..].chars() {
            body.push(c);
            match c {
                '{' => depth += 1,
                '}' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                _ => {}
            }
        }
        let mut names: Vec<String> = body
            .split("fn ")
            .skip(1)
            .filter_map(|rest| {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                (!name.is_empty()).then_some(name)
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// A method added to `Backend` or a capability trait must be added to [`Call`] too: this
    /// fails until it is (the compiler makes every wrapper define it, but not list it).
    #[test]
    fn every_backend_method_is_listed() {
        let source = include_str!("../backend/mod.rs");
        let mut trait_methods: Vec<String> = [
            "pub trait Backend",
            "pub trait Rewrite",
            "pub trait Notify",
            "pub trait Maintain",
            "pub trait Inspect",
        ]
        .iter()
        .flat_map(|start| methods_in(source, start))
        .collect();
        trait_methods.sort();
        let mut listed: Vec<String> = Call::ALL
            .iter()
            .map(|c| c.method().to_string())
            .chain(["name", "capabilities"].iter().map(|s| s.to_string()))
            .collect();
        listed.sort();
        assert_eq!(
            trait_methods, listed,
            "Call::ALL against the backend traits"
        );
    }
}
