//! An in-memory [`Backend`], for tests and ephemeral runs.
//!
//! Everything lives in the process's memory behind one mutex: nothing is written anywhere and
//! nothing survives the process. It follows the whole [backend contract](super), except that
//! "durable" means "visible to every later call in this process".

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;

use super::{
    Backend, Blob, BlobHash, Capabilities, CompactReport, LogAppend, Maintain, Rewrite,
    SearchTable, SideTable,
};
use crate::error::{Error, Result};

/// Bytes counted by [`MemoryBackend`]'s `stored_bytes` for a frame's key (its sequence number).
const SEQ_KEY_LEN: u64 = 8;
/// Bytes counted by [`MemoryBackend`]'s `stored_bytes` for a blob's key (its hash).
const BLOB_KEY_LEN: u64 = 32;

/// A [`Backend`] that keeps everything in memory; see the [module documentation](self).
///
/// Cheap to create; share it as `Arc<MemoryBackend>` (or `Arc<dyn Backend>`) to give several
/// stores the same data.
#[derive(Debug, Default)]
pub struct MemoryBackend {
    state: Mutex<State>,
    /// The search table, under a lock of its own: the indexer's batch writes must not hold
    /// up appends.
    index: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

/// Everything the backend holds.
#[derive(Debug, Default)]
struct State {
    logs: HashMap<String, Log>,
    blobs: HashMap<BlobHash, Vec<u8>>,
    records: HashMap<String, Vec<u8>>,
}

/// One log: its high-water mark and the frames not truncated away.
#[derive(Debug)]
struct Log {
    next_seq: u64,
    frames: BTreeMap<u64, Vec<u8>>,
}

impl Default for Log {
    fn default() -> Self {
        Log {
            next_seq: 1,
            frames: BTreeMap::new(),
        }
    }
}

impl MemoryBackend {
    /// An empty backend.
    pub fn new() -> Self {
        Self::default()
    }

    /// Locks the state. A panic while the lock was held cannot leave the state half-changed (every
    /// change is made after all checks, with infallible map operations), so a poisoned lock is
    /// taken as it is rather than turned into a panic here.
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Locks the search table (poison taken as it is, as [`MemoryBackend::state`] does).
    fn index(&self) -> MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        self.index.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Checks every append of a call against `logs` (the same log may appear more than once: each part
/// is then checked against the log as the earlier parts leave it) and returns the first sequence
/// number of each part, or the conflict.
fn check_appends(logs: &HashMap<String, Log>, appends: &[LogAppend]) -> Result<Vec<u64>> {
    let mut pending: HashMap<&str, u64> = HashMap::new();
    let mut starts = Vec::with_capacity(appends.len());
    for append in appends {
        let actual = match pending.get(append.log.as_str()) {
            Some(&next) => next,
            None => logs.get(&append.log).map_or(1, |log| log.next_seq),
        };
        if actual != append.expected_seq {
            return Err(Error::Conflict {
                log: append.log.clone(),
                expected: append.expected_seq,
                actual,
            });
        }
        let next = u64::try_from(append.frames.len())
            .ok()
            .and_then(|len| actual.checked_add(len))
            .ok_or_else(|| {
                Error::InvalidInput(format!(
                    "appending {} frames to log {:?} at sequence {actual} overflows the sequence numbers",
                    append.frames.len(),
                    append.log
                ))
            })?;
        pending.insert(append.log.as_str(), next);
        starts.push(actual);
    }
    Ok(starts)
}

#[async_trait]
impl Backend for MemoryBackend {
    fn name(&self) -> &'static str {
        "memory"
    }

    async fn next_seq(&self, log: &str) -> Result<u64> {
        Ok(self.state().logs.get(log).map_or(1, |log| log.next_seq))
    }

    fn capabilities(&self) -> Capabilities<'_> {
        let mut caps = Capabilities::new();
        caps.rewrite = Some(self);
        caps.maintain = Some(self);
        caps.side_table = Some(self);
        caps.search_table = Some(self);
        caps
    }

    async fn commit(&self, appends: Vec<LogAppend>, blobs: Vec<Blob>) -> Result<()> {
        let mut state = self.state();
        // Blobs first (as if in an earlier call): a conflicting append may leave them stored.
        for (hash, bytes) in blobs {
            state.blobs.entry(hash).or_insert(bytes);
        }
        let starts = check_appends(&state.logs, &appends)?;
        for (append, start) in appends.into_iter().zip(starts) {
            if append.frames.is_empty() {
                // Only a check: an empty append does not create the log.
                continue;
            }
            let log = state.logs.entry(append.log).or_default();
            let mut seq = start;
            for frame in append.frames {
                log.frames.insert(seq, frame);
                seq += 1;
            }
            log.next_seq = seq;
        }
        Ok(())
    }

    async fn scan(&self, log: &str, from: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>> {
        let state = self.state();
        Ok(state.logs.get(log).map_or_else(Vec::new, |log| {
            log.frames
                .range(from..)
                .take(limit)
                .map(|(&seq, frame)| (seq, frame.clone()))
                .collect()
        }))
    }

    async fn list_logs(&self) -> Result<Vec<String>> {
        Ok(self.state().logs.keys().cloned().collect())
    }

    async fn raise_next_seq(&self, log: &str, next_seq: u64) -> Result<()> {
        let mut state = self.state();
        let entry = state.logs.entry(log.to_owned()).or_default();
        entry.next_seq = entry.next_seq.max(next_seq);
        Ok(())
    }

    async fn truncate(&self, log: &str, before: u64) -> Result<()> {
        if let Some(log) = self.state().logs.get_mut(log) {
            // `split_off` keeps `>= before` in the returned map.
            log.frames = log.frames.split_off(&before);
        }
        Ok(())
    }

    async fn put_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        let mut state = self.state();
        for (hash, bytes) in blobs {
            state.blobs.entry(hash).or_insert(bytes);
        }
        Ok(())
    }

    async fn get_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<Option<Vec<u8>>>> {
        let state = self.state();
        Ok(hashes.iter().map(|h| state.blobs.get(h).cloned()).collect())
    }

    async fn missing_blobs(&self, hashes: &[BlobHash]) -> Result<Vec<BlobHash>> {
        let state = self.state();
        Ok(hashes
            .iter()
            .filter(|h| !state.blobs.contains_key(*h))
            .copied()
            .collect())
    }

    async fn list_blobs(&self) -> Result<Vec<BlobHash>> {
        Ok(self.state().blobs.keys().copied().collect())
    }

    async fn delete_blobs(&self, hashes: &[BlobHash]) -> Result<()> {
        let mut state = self.state();
        for hash in hashes {
            state.blobs.remove(hash);
        }
        Ok(())
    }

    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

#[async_trait]
impl SideTable for MemoryBackend {
    async fn put_records(&self, records: Vec<(String, Vec<u8>)>) -> Result<()> {
        self.state().records.extend(records);
        Ok(())
    }

    async fn get_records(&self, keys: &[String]) -> Result<Vec<Option<Vec<u8>>>> {
        let state = self.state();
        Ok(keys.iter().map(|k| state.records.get(k).cloned()).collect())
    }

    async fn scan_records(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>> {
        let state = self.state();
        Ok(state
            .records
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn delete_records(&self, keys: &[String]) -> Result<()> {
        let mut state = self.state();
        for k in keys {
            state.records.remove(k);
        }
        Ok(())
    }

    async fn log_tails(&self) -> Result<Vec<(String, u64)>> {
        let state = self.state();
        Ok(state
            .logs
            .iter()
            .map(|(name, log)| (name.clone(), log.next_seq))
            .collect())
    }
}

#[async_trait]
impl SearchTable for MemoryBackend {
    async fn write_index(&self, put: Vec<(Vec<u8>, Vec<u8>)>, delete: Vec<Vec<u8>>) -> Result<()> {
        let mut index = self.index();
        for key in delete {
            index.remove(&key);
        }
        index.extend(put);
        Ok(())
    }

    async fn scan_index(
        &self,
        prefix: &[u8],
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        use std::ops::Bound;
        let index = self.index();
        let start = match after {
            Some(a) if a >= prefix => Bound::Excluded(a.to_vec()),
            _ => Bound::Included(prefix.to_vec()),
        };
        Ok(index
            .range((start, Bound::Unbounded))
            .take_while(|(k, _)| k.starts_with(prefix))
            .take(limit)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect())
    }

    async fn get_index(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>> {
        let index = self.index();
        Ok(keys.iter().map(|k| index.get(k).cloned()).collect())
    }

    async fn clear_index(&self) -> Result<()> {
        self.index().clear();
        Ok(())
    }

    async fn index_size(&self) -> Result<(u64, u64)> {
        let index = self.index();
        let bytes = index.iter().map(|(k, v)| (k.len() + v.len()) as u64).sum();
        Ok((index.len() as u64, bytes))
    }
}

#[async_trait]
impl Rewrite for MemoryBackend {
    async fn rewrite_frames(&self, log: &str, frames: Vec<(u64, Vec<u8>)>) -> Result<()> {
        if let Some(log) = self.state().logs.get_mut(log) {
            for (seq, bytes) in frames {
                if let Some(frame) = log.frames.get_mut(&seq) {
                    *frame = bytes;
                }
            }
        }
        Ok(())
    }

    async fn rewrite_blobs(&self, blobs: Vec<(BlobHash, Vec<u8>)>) -> Result<()> {
        let mut state = self.state();
        for (hash, bytes) in blobs {
            if let Some(blob) = state.blobs.get_mut(&hash) {
                *blob = bytes;
            }
        }
        Ok(())
    }
}

#[async_trait]
impl Maintain for MemoryBackend {
    /// Not a server that keeps everything in memory.
    async fn server_memory(&self) -> Result<Option<u64>> {
        Ok(None)
    }

    /// The bytes of every frame and blob, plus their keys: per log its name and an 8-byte next
    /// sequence number, per frame an 8-byte sequence number, per blob its 32-byte hash.
    async fn stored_bytes(&self) -> Result<Option<u64>> {
        let state = self.state();
        let mut total: u64 = 0;
        for (name, log) in &state.logs {
            total = total.saturating_add(name.len() as u64 + SEQ_KEY_LEN);
            for frame in log.frames.values() {
                total = total.saturating_add(frame.len() as u64 + SEQ_KEY_LEN);
            }
        }
        for blob in state.blobs.values() {
            total = total.saturating_add(blob.len() as u64 + BLOB_KEY_LEN);
        }
        Ok(Some(total))
    }

    /// Deleted frames and blobs are dropped from memory at once, and nothing is ever in a file.
    async fn compact(&self) -> Result<CompactReport> {
        let bytes = self.stored_bytes().await?;
        let mut report = CompactReport::new("memory");
        report.step("nothing to rewrite: memory keeps no files and frees deleted data at once");
        report.bytes_before = bytes;
        report.bytes_after = bytes;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::BackendExt;

    fn frames(items: &[&str]) -> Vec<Vec<u8>> {
        items.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn part(log: &str, expected_seq: u64, items: &[&str]) -> LogAppend {
        LogAppend::new(log, expected_seq, frames(items))
    }

    #[tokio::test]
    async fn next_seq_of_unknown_log_is_one() {
        let b = MemoryBackend::new();
        assert_eq!(b.next_seq("nope").await.unwrap(), 1);
        assert!(b.list_logs().await.unwrap().is_empty());
        assert_eq!(b.name(), "memory");
    }

    #[tokio::test]
    async fn append_then_scan_returns_frames_from_one() {
        let b = MemoryBackend::new();
        b.append(vec![part("a", 1, &["x", "y", "z"])])
            .await
            .unwrap();
        assert_eq!(b.next_seq("a").await.unwrap(), 4);
        let got = b.scan("a", 1, 100).await.unwrap();
        assert_eq!(
            got,
            vec![(1, b"x".to_vec()), (2, b"y".to_vec()), (3, b"z".to_vec())]
        );
        b.append(vec![part("a", 4, &["w"])]).await.unwrap();
        assert_eq!(b.scan("a", 0, 100).await.unwrap().len(), 4);
        assert_eq!(b.list_logs().await.unwrap(), vec!["a".to_owned()]);
    }

    #[tokio::test]
    async fn stale_expected_seq_conflicts_and_writes_nothing() {
        let b = MemoryBackend::new();
        b.append(vec![part("a", 1, &["x"])]).await.unwrap();
        let err = b.append(vec![part("a", 1, &["y"])]).await.unwrap_err();
        match err {
            Error::Conflict {
                log,
                expected,
                actual,
            } => {
                assert_eq!(log, "a");
                assert_eq!(expected, 1);
                assert_eq!(actual, 2);
            }
            other => panic!("expected a conflict, got {other:?}"),
        }
        assert_eq!(b.next_seq("a").await.unwrap(), 2);
        assert_eq!(b.scan("a", 1, 100).await.unwrap(), vec![(1, b"x".to_vec())]);
        // An expected sequence ahead of the log conflicts too.
        assert!(b
            .append(vec![part("a", 5, &["y"])])
            .await
            .unwrap_err()
            .is_conflict());
    }

    #[tokio::test]
    async fn multi_log_append_is_all_or_nothing() {
        let b = MemoryBackend::new();
        b.append(vec![part("b", 1, &["b1"])]).await.unwrap();
        let err = b
            .append(vec![part("a", 1, &["a1", "a2"]), part("b", 1, &["b2"])])
            .await
            .unwrap_err();
        assert!(err.is_conflict());
        assert_eq!(b.next_seq("a").await.unwrap(), 1);
        assert!(b.scan("a", 1, 100).await.unwrap().is_empty());
        assert_eq!(b.list_logs().await.unwrap(), vec!["b".to_owned()]);

        b.append(vec![part("a", 1, &["a1", "a2"]), part("b", 2, &["b2"])])
            .await
            .unwrap();
        assert_eq!(b.next_seq("a").await.unwrap(), 3);
        assert_eq!(b.next_seq("b").await.unwrap(), 3);
        let mut logs = b.list_logs().await.unwrap();
        logs.sort();
        assert_eq!(logs, vec!["a".to_owned(), "b".to_owned()]);
    }

    #[tokio::test]
    async fn same_log_twice_in_one_call_is_checked_in_order() {
        let b = MemoryBackend::new();
        b.append(vec![part("a", 1, &["1", "2"]), part("a", 3, &["3"])])
            .await
            .unwrap();
        assert_eq!(b.next_seq("a").await.unwrap(), 4);
        // The second part repeats the first part's expected sequence: a conflict, nothing written.
        let err = b
            .append(vec![part("a", 4, &["4"]), part("a", 4, &["4bis"])])
            .await
            .unwrap_err();
        assert!(err.is_conflict());
        assert_eq!(b.next_seq("a").await.unwrap(), 4);
    }

    #[tokio::test]
    async fn empty_append_is_only_a_check() {
        let b = MemoryBackend::new();
        b.append(vec![part("a", 1, &[])]).await.unwrap();
        assert!(b.list_logs().await.unwrap().is_empty());
        assert!(b
            .append(vec![part("a", 2, &[])])
            .await
            .unwrap_err()
            .is_conflict());
        b.append(Vec::new()).await.unwrap();
    }

    #[tokio::test]
    async fn truncate_keeps_next_seq_and_listing() {
        let b = MemoryBackend::new();
        b.append(vec![part("a", 1, &["1", "2", "3", "4"])])
            .await
            .unwrap();
        b.truncate("a", 3).await.unwrap();
        assert_eq!(
            b.scan("a", 1, 100).await.unwrap(),
            vec![(3, b"3".to_vec()), (4, b"4".to_vec())]
        );
        assert_eq!(b.next_seq("a").await.unwrap(), 5);
        b.truncate("a", 100).await.unwrap();
        assert!(b.scan("a", 1, 100).await.unwrap().is_empty());
        assert_eq!(b.next_seq("a").await.unwrap(), 5);
        assert_eq!(b.list_logs().await.unwrap(), vec!["a".to_owned()]);
        // Sequence numbers are never reused.
        b.append(vec![part("a", 5, &["5"])]).await.unwrap();
        assert_eq!(b.scan("a", 1, 100).await.unwrap(), vec![(5, b"5".to_vec())]);
        // Truncating an unknown log does nothing.
        b.truncate("nope", 10).await.unwrap();
        assert_eq!(b.list_logs().await.unwrap(), vec!["a".to_owned()]);
    }

    #[tokio::test]
    async fn scan_with_limit_and_from_in_the_middle() {
        let b = MemoryBackend::new();
        let items: Vec<String> = (1..=10).map(|i| format!("f{i}")).collect();
        let refs: Vec<&str> = items.iter().map(String::as_str).collect();
        b.append(vec![part("a", 1, &refs)]).await.unwrap();
        let got = b.scan("a", 4, 3).await.unwrap();
        assert_eq!(
            got,
            vec![
                (4, b"f4".to_vec()),
                (5, b"f5".to_vec()),
                (6, b"f6".to_vec())
            ]
        );
        assert_eq!(b.scan("a", 9, 100).await.unwrap().len(), 2);
        assert!(b.scan("a", 11, 100).await.unwrap().is_empty());
        assert!(b.scan("a", 1, 0).await.unwrap().is_empty());
        assert!(b.scan("nope", 1, 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn stored_bytes_counts_frames_blobs_and_keys() {
        let b = MemoryBackend::new();
        assert_eq!(b.stored_bytes().await.unwrap(), Some(0));
        b.append(vec![part("ab", 1, &["xyz"])]).await.unwrap();
        b.put_blobs(vec![([0u8; 32], vec![0u8; 5])]).await.unwrap();
        // log: 2 + 8; frame: 3 + 8; blob: 5 + 32.
        assert_eq!(b.stored_bytes().await.unwrap(), Some(10 + 11 + 37));
        b.flush().await.unwrap();
    }
}
