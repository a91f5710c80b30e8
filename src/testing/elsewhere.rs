//! [`Elsewhere`]: a backend handle that behaves like the same storage opened by another process.

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::{Backend, Blob, BlobHash, Capabilities, LogAppend};
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
    /// The wrapped backend's, except that it is never single-process (it stands for another
    /// process sharing the storage) and, when built so, not atomic across logs. The optional
    /// capabilities are the wrapped backend's own.
    fn capabilities(&self) -> Capabilities<'_> {
        let mut caps = self.inner.capabilities();
        caps.single_process = false;
        caps.atomic_across_logs &= self.atomic_across_logs;
        caps
    }
    async fn next_seq(&self, log: &str) -> Result<u64> {
        self.inner.next_seq(log).await
    }
    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()> {
        self.check(&appends)?;
        self.inner.commit(appends, blobs).await
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
    async fn put_blobs(&self, blobs: Vec<Blob>) -> Result<()> {
        self.inner.put_blobs(blobs).await
    }
    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        self.inner.get_blobs(hashes).await
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
    async fn flush(&self) -> Result<()> {
        self.inner.flush().await
    }
}
