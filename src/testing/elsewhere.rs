//! [`Elsewhere`]: a backend handle that behaves like the same storage opened by another process.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;

use crate::backend::{Backend, BlobHash, LogAppend};
use crate::Result;

/// Forwards every call to the backend it wraps, but is a different `Arc`: a [`crate::Store`] on
/// it shares no in-process lock or cache with stores on the wrapped backend, exactly as a store
/// in another process would not. Lets scenarios race two "processes" on storage (sled) that only
/// one process can open.
#[derive(Debug)]
pub struct Elsewhere(pub Arc<dyn Backend>);

#[async_trait]
impl Backend for Elsewhere {
    fn name(&self) -> &'static str {
        self.0.name()
    }
    async fn next_seq(&self, log: &str) -> Result<u64> {
        self.0.next_seq(log).await
    }
    async fn append(&self, appends: Vec<LogAppend>) -> Result<()> {
        self.0.append(appends).await
    }
    async fn append_with_blobs(
        &self,
        appends: Vec<LogAppend>,
        blobs: Vec<(BlobHash, Vec<u8>)>,
    ) -> Result<()> {
        self.0.append_with_blobs(appends, blobs).await
    }
    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        self.0.scan(log, from, limit).await
    }
    async fn list_logs(&self) -> Result<Vec<String>> {
        self.0.list_logs().await
    }
    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        self.0.raise_next_seq(log, next_seq).await
    }
    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        self.0.truncate(log, before).await
    }
    async fn put_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.0.put_blobs(blobs).await
    }
    async fn get_blob(&self, hash: &BlobHash) -> Result<Option<Vec<u8>>> {
        self.0.get_blob(hash).await
    }
    async fn has_blob(&self, hash: &BlobHash) -> Result<bool> {
        self.0.has_blob(hash).await
    }
    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        self.0.missing_blobs(hashes).await
    }
    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        self.0.list_blobs().await
    }
    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        self.0.delete_blobs(hashes).await
    }
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        self.0.rewrite_frames(log, frames).await
    }
    async fn rewrite_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        self.0.rewrite_blobs(blobs).await
    }
    async fn flush(&self) -> Result<()> {
        self.0.flush().await
    }
    fn atomic_across_logs(&self) -> bool {
        self.0.atomic_across_logs()
    }
    async fn wait_for_append(&self, log: &str, next_seq: u64, timeout: Duration) -> Result<()> {
        self.0.wait_for_append(log, next_seq, timeout).await
    }
    async fn stored_bytes(&self) -> Result<Option<u64>> {
        self.0.stored_bytes().await
    }
}
