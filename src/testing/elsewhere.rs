//! [`Elsewhere`]: a backend handle that behaves like the same storage opened by another process.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{Backend, BlobHash, CompactReport, LogAppend, RecordedDamage};
use crate::Result;

/// Forwards every call to the backend it wraps, but is a different `Arc`: a [`crate::Store`] on
/// it shares no in-process lock or cache with stores on the wrapped backend, exactly as a store
/// in another process would not. Lets scenarios race two "processes" on storage (sled) that only
/// one process can open.
#[derive(Debug)]
pub struct Elsewhere {
    inner: Arc<dyn Backend>,
    atomic_across_logs: bool,
}

impl Elsewhere {
    /// `backend` as another process sees it.
    pub fn new(backend: Arc<dyn Backend>) -> Self {
        Elsewhere {
            inner: backend,
            atomic_across_logs: true,
        }
    }

    /// `backend` as another process sees it, behaving like a backend that cannot append to
    /// several logs atomically (Redis Cluster): it says so, and refuses such appends.
    pub fn without_cross_log_atomicity(backend: Arc<dyn Backend>) -> Self {
        Elsewhere {
            inner: backend,
            atomic_across_logs: false,
        }
    }

    fn check(&self, appends: &[LogAppend]) -> Result<()> {
        let first = appends.first().map(|a| a.log.as_str());
        if !self.atomic_across_logs && appends.iter().any(|a| Some(a.log.as_str()) != first) {
            return Err(crate::Error::InvalidInput(
                "this backend cannot append to several logs atomically".into(),
            ));
        }
        Ok(())
    }
}

#[async_trait]
impl Backend for Elsewhere {
    fn name(&self) -> &'static str {
        self.inner.name()
    }
    async fn next_seq(&self, log: &str) -> Result<u64> {
        self.inner.next_seq(log).await
    }
    async fn append(&self, appends: Vec<LogAppend>) -> Result<()> {
        self.check(&appends)?;
        self.inner.append(appends).await
    }
    async fn append_with_blobs(
        &self,
        appends: Vec<LogAppend>,
        blobs: Vec<(BlobHash, Vec<u8>)>,
    ) -> Result<()> {
        self.check(&appends)?;
        self.inner.append_with_blobs(appends, blobs).await
    }
    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.inner.scan(log, from, limit).await
    }
    async fn list_logs(&self) -> Result<Vec<String>> {
        self.inner.list_logs().await
    }
    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        self.inner.raise_next_seq(log, next_seq).await
    }
    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        self.inner.truncate(log, before).await
    }
    async fn put_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.inner.put_blobs(blobs).await
    }
    async fn get_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        self.inner.get_blob(hash).await
    }
    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.get_blobs(hashes).await
    }
    async fn has_blob(&self, hash: &BlobHash) -> Result<bool> {
        self.inner.has_blob(hash).await
    }
    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        self.inner.missing_blobs(hashes).await
    }
    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        self.inner.list_blobs().await
    }
    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        self.inner.delete_blobs(hashes).await
    }
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.inner.rewrite_frames(log, frames).await
    }
    async fn rewrite_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.inner.rewrite_blobs(blobs).await
    }
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
    fn puts_blobs_with_append(&self) -> bool {
        self.inner.puts_blobs_with_append()
    }
    /// Never: this wrapper stands for another process sharing the storage.
    fn single_process(&self) -> bool {
        false
    }

    fn atomic_across_logs(&self) -> bool {
        self.atomic_across_logs && self.inner.atomic_across_logs()
    }
    async fn wait_for_append(&self, log: &str, next_seq: u64, timeout: Duration) -> Result<()> {
        self.inner.wait_for_append(log, next_seq, timeout).await
    }
    async fn recorded_damage(&self) -> Result<Vec<RecordedDamage>> {
        self.inner.recorded_damage().await
    }
    async fn check_storage(&self) -> Result<Vec<String>> {
        self.inner.check_storage().await
    }
    async fn log_problems(&self, log: &str) -> Result<Vec<String>> {
        self.inner.log_problems(log).await
    }
    async fn stored_bytes(&self) -> Result<Option<u64>> {
        self.inner.stored_bytes().await
    }
    async fn compact(&self) -> Result<CompactReport> {
        self.inner.compact().await
    }
}
