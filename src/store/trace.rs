//! Tracing: a span on every store operation (`ckpt.<operation>`, debug level) and every backend
//! call (`ckpt.backend.<call>`, trace level), the one event of a failed save, and the counting
//! of [`super::Metrics`] that goes with them.
//!
//! | span | fields |
//! |---|---|
//! | `ckpt.<operation>` | as known: `execution_id`, `version`, `count` (checkpoints, headers, writes, executions), `bytes` (written to the backend, or of the states read), `retries`; always `backend`, `outcome` (`ok` or [`crate::Error::kind`]), `elapsed_us` |
//! | `ckpt.backend.<call>` | as known: `log`, `logs`, `frames`, `blobs`, `bytes`, `retries`; always `backend`, `outcome`, `elapsed_us` |
//!
//! No field and no event ever holds a state, a metadata or write value, or a key: only ids,
//! versions, counts, sizes, names of backends and error kinds. (Execution ids and node names
//! are the caller's names, as in every error message.) A failed save is logged once, here,
//! with its whole cause chain (`error`); the layers below return their errors and log nothing.
//!
//! Without a subscriber (or with one whose most verbose level is below the span's), a span
//! costs one atomic load ([`wanted`]): it is `Span::none()`, its fields are not evaluated, the
//! clock is not read for `elapsed_us`, and the futures run as they are, not instrumented. So
//! ckpt's spans and events reach a `tracing` subscriber only: tracing's `log` fallback (its
//! `log` feature, which sqlx turns on) would evaluate every field of every span on every call
//! to offer them to the `log` crate, and is bypassed.

use std::future::Future;
use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use futures_util::FutureExt as _;
use tracing::{Instrument, Span};

use super::metrics::{add, Metrics};
use super::Store;
use crate::backend::{retry, Backend, Blob, BlobHash, Capabilities, LogAppend};
use crate::checkpoint::Checkpoint;
use crate::error::{cause_chain, Error, Result};

/// Whether a subscriber may want spans or events at `level`: the most verbose level of the
/// subscribers installed reaches it (one atomic load; false with no subscriber at all).
pub(crate) fn wanted(level: tracing::Level) -> bool {
    use tracing::level_filters::{LevelFilter, STATIC_MAX_LEVEL};
    level <= STATIC_MAX_LEVEL && level <= LevelFilter::current()
}

/// The span of store operation `$name` on `$store` (debug level; `Span::none()` when not
/// [`wanted`]): the fields given (each `name = value`, or `name = Empty` to record later),
/// then `backend`, `outcome` and `elapsed_us`.
macro_rules! op_span {
    ($name:literal, $store:expr) => {
        if $crate::store::trace::wanted(tracing::Level::DEBUG) {
            tracing::debug_span!(
                $name,
                backend = $store.backend().name(),
                outcome = tracing::field::Empty,
                elapsed_us = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        }
    };
    ($name:literal, $store:expr; $($field:tt)+) => {
        if $crate::store::trace::wanted(tracing::Level::DEBUG) {
            tracing::debug_span!(
                $name,
                $($field)+,
                backend = $store.backend().name(),
                outcome = tracing::field::Empty,
                elapsed_us = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        }
    };
}
pub(super) use op_span;

/// The span of a save: its execution (when there is one), the version and bytes written,
/// retries and how many checkpoints.
macro_rules! save_span {
    ($name:literal, $store:expr, $execution_id:expr) => {
        $crate::store::trace::op_span!(
            $name, $store;
            execution_id = $execution_id,
            version = tracing::field::Empty,
            count = tracing::field::Empty,
            bytes = tracing::field::Empty,
            retries = tracing::field::Empty
        )
    };
}
pub(super) use save_span;

/// The span of a read of one checkpoint, whose size it records.
macro_rules! load_span {
    ($name:literal, $store:expr, $execution_id:expr, $version:expr) => {
        $crate::store::trace::op_span!(
            $name, $store;
            execution_id = $execution_id,
            version = $version,
            bytes = tracing::field::Empty
        )
    };
}
pub(super) use load_span;

/// An operation's `outcome`: `ok`, or the error's kind.
fn outcome<T>(result: &Result<T>) -> &'static str {
    match result {
        Ok(_) => "ok",
        Err(e) => e.kind(),
    }
}

fn micros_since(start: Instant) -> u64 {
    u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX)
}

/// `op` inside `span` (when enabled), recording its outcome and time there when it ends.
///
/// These helpers build futures from combinators, never `async fn`s that take a future: an
/// `async fn` keeps its future argument and the future it awaits apart, so each layer would
/// copy the whole operation's state (a save's is kilobytes) once more, on every call.
pub(super) fn in_span<'a, T: 'a>(
    span: &'a Span,
    op: impl Future<Output = Result<T>> + 'a,
) -> impl Future<Output = Result<T>> + 'a {
    let start = (!span.is_disabled()).then(Instant::now);
    op.instrument(span.clone()).map(move |result| {
        if let Some(start) = start {
            span.record("outcome", outcome(&result));
            span.record("elapsed_us", micros_since(start));
        }
        result
    })
}

impl Store {
    /// Store operation `op` in `span` (see [`op_span`]), recording its outcome and time;
    /// counts a conflict it ends with.
    pub(super) fn traced<'a, T: 'a>(
        &'a self,
        span: &'a Span,
        op: impl Future<Output = Result<T>> + 'a,
    ) -> impl Future<Output = Result<T>> + 'a {
        in_span(span, op).map(move |result| {
            if let Err(Error::Conflict { .. }) = &result {
                add(&self.inner.metrics.conflicts, 1);
            }
            result
        })
    }

    /// Save operation `operation` (`save`, `save_after`, ...) of `execution_id` (`None`: a
    /// batch of several) in `span` (see [`save_span`]): records the version saved (the last,
    /// for a batch) and how many, counts it, and logs its failure, once.
    pub(super) fn traced_save<'a>(
        &'a self,
        span: &'a Span,
        operation: &'static str,
        execution_id: Option<&'a str>,
        op: impl Future<Output = Result<Vec<Checkpoint>>> + 'a,
    ) -> impl Future<Output = Result<Vec<Checkpoint>>> + 'a {
        // Logged inside the span, so that the event is the span's (or, with the span
        // disabled, the caller's: a graph step).
        let logged = op.map(move |result| {
            if let Err(e) = &result {
                log_save_failure(operation, execution_id, e);
            }
            result
        });
        self.traced(span, logged).map(move |result| {
            let metrics = &self.inner.metrics;
            match &result {
                Ok(saved) => {
                    add(&metrics.saves, 1);
                    add(&metrics.checkpoints_saved, saved.len() as u64);
                    if let Some(last) = saved.last() {
                        span.record("version", last.version);
                    }
                    span.record("count", saved.len() as u64);
                }
                Err(_) => add(&metrics.save_failures, 1),
            }
            result
        })
    }

    /// Counts checkpoints read with their state, and records the size of their states.
    pub(super) fn note_loaded<'a>(
        &self,
        span: &Span,
        loaded: impl IntoIterator<Item = &'a Checkpoint>,
    ) {
        let (mut n, mut bytes) = (0u64, 0u64);
        for cp in loaded {
            n += 1;
            bytes += cp.state_size;
        }
        add(&self.inner.metrics.loads, n);
        span.record("bytes", bytes);
    }

    /// Counts a delete or clear event appended.
    pub(super) fn note_deleted(&self) {
        add(&self.inner.metrics.deletes, 1);
    }

    /// Counts one store-level retry (a save, write, delete or clear prepared again).
    pub(super) fn note_retry(&self) {
        add(&self.inner.metrics.retries, 1);
    }
}

/// The one event of a failed save: `warn` for a lost race or a busy store (the caller is
/// expected to handle them), `error` for the rest; the cause chain in `error`, and nothing of
/// the checkpoint but its execution id.
fn log_save_failure(operation: &'static str, execution_id: Option<&str>, e: &Error) {
    if !wanted(tracing::Level::ERROR) {
        return;
    }
    let kind = e.kind();
    let chain = cause_chain(e);
    if matches!(e, Error::Conflict { .. } | Error::Busy { .. }) {
        tracing::warn!(
            operation,
            execution_id,
            error_kind = kind,
            error = chain.as_str(),
            "save failed"
        );
    } else {
        tracing::error!(
            operation,
            execution_id,
            error_kind = kind,
            error = chain.as_str(),
            "save failed"
        );
    }
}

/// The backend as the store calls it: every primitive in a `ckpt.backend.<call>` span
/// (trace level) that records what went in or out (logs, frames, blobs, bytes), transient
/// retries inside the call, outcome and time, and counts the traffic in the store's metrics.
/// It forwards every call and adds nothing else: the [`Backend`] contract is the inner one's.
pub(super) struct Traced {
    pub(super) inner: Arc<dyn Backend>,
    pub(super) metrics: Arc<Metrics>,
}

impl std::fmt::Debug for Traced {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The backend's own: a traced backend is that backend.
        self.inner.fmt(f)
    }
}

/// The span of backend call `$name` on `$traced` (trace level; `Span::none()` when not
/// [`wanted`]), with the fields given (as [`op_span`]), `bytes` and `retries`.
macro_rules! call_span {
    ($name:literal, $traced:expr; $($field:tt)*) => {
        if wanted(tracing::Level::TRACE) {
            tracing::trace_span!(
                $name,
                $($field)*
                bytes = tracing::field::Empty,
                retries = tracing::field::Empty,
                backend = $traced.inner.name(),
                outcome = tracing::field::Empty,
                elapsed_us = tracing::field::Empty,
            )
        } else {
            Span::none()
        }
    };
}

fn frame_bytes(appends: &[LogAppend]) -> (u64, u64) {
    let frames = appends.iter().map(|a| a.frames.len() as u64).sum();
    let bytes = appends
        .iter()
        .flat_map(|a| &a.frames)
        .map(|f| f.len() as u64)
        .sum();
    (frames, bytes)
}

fn blob_bytes(blobs: &[Blob]) -> u64 {
    blobs.iter().map(|(_, b)| b.len() as u64).sum()
}

impl Traced {
    /// Runs backend call `call` in `span`: counts it (and its failure, and its retries),
    /// records retries, outcome and time.
    async fn call<T>(&self, span: Span, call: impl Future<Output = Result<T>>) -> Result<T> {
        add(&self.metrics.backend_calls, 1);
        let (result, retries) = if span.is_disabled() {
            retry::counting_retries(call).await
        } else {
            let start = Instant::now();
            let (result, retries) = retry::counting_retries(call).instrument(span.clone()).await;
            span.record("outcome", outcome(&result));
            span.record("elapsed_us", micros_since(start));
            (result, retries)
        };
        if retries > 0 {
            add(&self.metrics.retries, u64::from(retries));
            span.record("retries", retries);
        }
        if result.is_err() {
            add(&self.metrics.backend_errors, 1);
        }
        result
    }

    /// Counts and records `bytes` read by a call that succeeded.
    fn read(&self, span: &Span, bytes: u64) {
        add(&self.metrics.bytes_read, bytes);
        span.record("bytes", bytes);
    }
}

#[async_trait]
impl Backend for Traced {
    fn name(&self) -> &'static str {
        self.inner.name()
    }

    fn capabilities(&self) -> Capabilities<'_> {
        self.inner.capabilities()
    }

    async fn next_seq(&self, log: &str) -> Result<u64> {
        let span = call_span!("ckpt.backend.next_seq", self; log,);
        self.call(span, self.inner.next_seq(log)).await
    }

    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()> {
        let (frames, bytes) = frame_bytes(&appends);
        let (n_blobs, bytes) = (blobs.len() as u64, bytes + blob_bytes(&blobs));
        let span = call_span!(
            "ckpt.backend.commit", self;
            logs = appends.len(),
            frames,
            blobs = n_blobs,
        );
        span.record("bytes", bytes);
        self.call(span, self.inner.commit(appends, blobs)).await?;
        add(&self.metrics.frames_written, frames);
        add(&self.metrics.blobs_written, n_blobs);
        add(&self.metrics.bytes_written, bytes);
        Ok(())
    }

    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let span =
            call_span!("ckpt.backend.scan", self; log, from, frames = tracing::field::Empty,);
        let frames = self
            .call(span.clone(), self.inner.scan(log, from, limit))
            .await?;
        span.record("frames", frames.len());
        self.read(&span, frames.iter().map(|(_, f)| f.len() as u64).sum());
        Ok(frames)
    }

    async fn list_logs(&self) -> Result<Vec<String>> {
        let span = call_span!("ckpt.backend.list_logs", self; logs = tracing::field::Empty,);
        let logs = self.call(span.clone(), self.inner.list_logs()).await?;
        span.record("logs", logs.len());
        Ok(logs)
    }

    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        let span = call_span!("ckpt.backend.raise_next_seq", self; log, next_seq,);
        self.call(span, self.inner.raise_next_seq(log, next_seq))
            .await
    }

    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        let span = call_span!("ckpt.backend.truncate", self; log, before,);
        self.call(span, self.inner.truncate(log, before)).await
    }

    async fn put_blobs(&self, blobs: Vec<Blob>) -> Result<()> {
        let (n, bytes) = (blobs.len() as u64, blob_bytes(&blobs));
        let span = call_span!("ckpt.backend.put_blobs", self; blobs = n,);
        span.record("bytes", bytes);
        self.call(span, self.inner.put_blobs(blobs)).await?;
        add(&self.metrics.blobs_written, n);
        add(&self.metrics.bytes_written, bytes);
        Ok(())
    }

    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        let span = call_span!("ckpt.backend.get_blobs", self; blobs = hashes.len(),);
        let blobs = self
            .call(span.clone(), self.inner.get_blobs(hashes))
            .await?;
        self.read(&span, blobs.iter().flatten().map(|b| b.len() as u64).sum());
        Ok(blobs)
    }

    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        let span = call_span!(
            "ckpt.backend.missing_blobs", self;
            blobs = hashes.len(),
            missing = tracing::field::Empty,
        );
        let missing = self
            .call(span.clone(), self.inner.missing_blobs(hashes))
            .await?;
        span.record("missing", missing.len());
        Ok(missing)
    }

    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        let span = call_span!("ckpt.backend.list_blobs", self; blobs = tracing::field::Empty,);
        let blobs = self.call(span.clone(), self.inner.list_blobs()).await?;
        span.record("blobs", blobs.len());
        Ok(blobs)
    }

    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        let span = call_span!("ckpt.backend.delete_blobs", self; blobs = hashes.len(),);
        self.call(span, self.inner.delete_blobs(hashes)).await
    }

    async fn flush(&self) -> Result<()> {
        let span = call_span!("ckpt.backend.flush", self;);
        self.call(span, self.inner.flush()).await
    }
}
