//! The search index: a projection of the logs kept in the backend's [`SearchTable`], so that
//! [`Store::search`] answers from postings instead of reading every state.
//!
//! This module owns how a save's delta becomes index data, how the index is brought up to date
//! with the logs, folded, rebuilt and dropped, and how a query is answered from it; `format`
//! owns the bytes, `view` reading them back.
//!
//! # What is indexed
//! For every live checkpoint its header (time, node, metadata), and for text, per execution,
//! every word (as [`super::search`] splits strings) with the **first version** whose save added
//! a string holding it: a save indexes the words of the strings its delta adds, so a growing
//! conversation costs the words of its new message, not its whole state.
//!
//! A word's first version is a lower bound: every checkpoint whose state holds the word is at or
//! above it. So the postings give candidate executions; their live checkpoints come from the
//! store's own projection (as `history` gives them), and each candidate's state is read to check
//! the text (and to show where it matched) before it is returned, as a database rechecks a lossy
//! index. A word removed later, or held only on another branch, costs a read, never a wrong hit.
//!
//! # How it is kept: a tail and a main index
//! Written entry by entry, an index costs a save one backend write per word and header; here it
//! costs one per batch. The indexer writes what a batch of saves added as one compressed
//! **tail segment** (`u`), with each execution's coverage (`c`). When the tail has grown to an
//! eighth of the **main index** (and at least [`FOLD_MIN`]), it is **folded**: the main index
//! and the tail are merged into a new main index: an execution table, blocks of words with
//! their postings in word order (`M… w`, keyed by their last word, so a word is one range read)
//! and blocks of headers in result order (`M… t`, newest first). A search reads the main
//! index's blocks it needs and the tail (decoded once, kept in memory while it is unchanged).
//!
//! Which main index is current is the last frame of a reserved log ([`SEARCH_LOG`]): a fold
//! writes its blocks under a fresh number, then appends that number with the backend's
//! compare-and-append, so of two folds racing (two processes) one wins and the other removes
//! its blocks. Only then are the old main index and the folded tail segments deleted; a search
//! that saw the current main index change while it read starts again.
//!
//! A segment can **reset** an execution: everything older about it (in the main index or
//! earlier segments) no longer counts. That is how an execution that lost checkpoints (delete,
//! clear, prune) is indexed again from its live checkpoints, and how the index forgets an
//! execution whose log is gone; the next fold drops what a reset replaced.
//!
//! # Kept true
//! Each execution's entry `c` names the log position the index covers and how many live
//! checkpoints were below it. Before every search the index is compared with the logs' tails:
//! an execution that moved is indexed from where the index stopped, and one that lost a
//! checkpoint is reset. Saves of this process feed the index as they land (a background task
//! writes them in batches, off the save's path); whatever that misses (a crash, another
//! process's saves) the next search catches up. `gc` catches up and folds, so nothing of what
//! it reclaimed stays in the index; `verify` rebuilds every execution's entries in memory and
//! compares.
//!
//! Encrypted stores are never indexed: their search decrypts while scanning.

mod format;
mod view;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::stream::{self, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::search::{self, Position, SearchHit, SearchMethod, SearchPage, SearchQuery};
use super::{HistoryQuery, Store};
use crate::backend::{LogAppend, SearchTable};
use crate::checkpoint::CheckpointHeader;
use crate::error::{Error, Result};
pub(crate) use format::decode_index_entry;
use format::{covered_key, Covered, Head, SegmentBuilder, COVERED, FORMAT, ON_KEY};
use view::{MainRef, Overlay};

/// The reserved log whose last frame names the current main index (execution ids cannot
/// contain control characters, so no execution can share its name).
pub(crate) const SEARCH_LOG: &str = "\u{1}search";

/// Executions whose candidates a text search reads at once.
const PARALLEL_READS: usize = 16;
/// Entries read per scan call.
const SCAN_CHUNK: usize = 4096;
/// A word matching more postings than this does not drive a search (a rarer one does).
const MAX_WORD_POSTINGS: usize = 200_000;
/// Executions whose word sets the indexer keeps in memory (a word the indexer does not know an
/// execution had is posted again: the lowest version counts, so that costs bytes, not answers).
const CACHED_EXECUTIONS: usize = 256;
/// Saves waiting for the indexer before savers wait for it.
const QUEUE: usize = 4096;
/// Most saves the indexer writes in one segment.
const BATCH: usize = 1024;
/// A segment written while indexing a log is cut at about this many postings.
const SEGMENT_WEIGHT: usize = 200_000;
/// The tail is folded once it holds this many bytes, or an eighth of the main index if more...
const FOLD_MIN: u64 = 1 << 20;
/// ... but never more than this (a search reads the whole tail).
const FOLD_MAX: u64 = 2 << 20;
/// How often a search starts again when a fold replaced the main index while it read.
const READ_RETRIES: usize = 4;
/// On a backend where listing the logs is costly (Redis: a `SCAN` of every key), how long a
/// search trusts the last comparison of every log with the index; the logs this store moved
/// are compared at every search.
const FULL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the indexer gathers saves before it writes them.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

pub(super) fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Whether a tail of `tail` bytes should be folded into a main index of `main` bytes.
fn fold_due(tail: u64, main: u64) -> bool {
    tail >= (main / 8).clamp(FOLD_MIN, FOLD_MAX)
}

/// Calls `f` with the bytes of every string in `value` that is indexed: map keys excepted, as
/// the scan does.
fn each_string(value: &rmpv::Value, f: &mut dyn FnMut(&[u8])) {
    match value {
        rmpv::Value::String(s) => f(s.as_bytes()),
        rmpv::Value::Array(items) => items.iter().for_each(|v| each_string(v, f)),
        rmpv::Value::Map(entries) => entries.iter().for_each(|(_, v)| each_string(v, f)),
        _ => {}
    }
}

/// Calls `f` with the words of every indexed string in `value`, lowercased as
/// [`search::words`] does.
fn each_word(value: &rmpv::Value, f: &mut dyn FnMut(&str)) {
    each_string(value, &mut |s| each_word_in(&String::from_utf8_lossy(s), f));
}

/// Calls `f` with the words of `text`, allocating only for a word that needs lowercasing.
fn each_word_in(text: &str, f: &mut dyn FnMut(&str)) {
    for (start, end) in search::word_spans(text) {
        let word = &text[start..end];
        if word
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        {
            f(word);
        } else {
            f(&word.to_lowercase());
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Maintenance

/// What a save added, as the save gives it to [`SavedWords::new`].
pub(super) enum Added {
    /// The operations of its delta on the state before it.
    Ops(Vec<crate::codec::tree::Op>),
    /// Its whole state (an execution's first save).
    State(Arc<rmpv::Value>),
}

/// A landed save, as the save hands it to the indexer: its header and the strings its delta
/// added, packed into one buffer.
///
/// The indexer runs on another thread, and freeing there what the save's thread allocated
/// contends with the saves for the allocator's locks: a header and a delta's values are a
/// dozen allocations, a buffer is one. (Measured on the memory store: the saves' slowdown
/// with the index on was about a fifth, most of it the allocator's locks.) The strings are
/// copied, not split into words, which the indexer does off the save's path.
pub(super) struct SavedWords {
    /// The header, then the added strings (see [`SavedWords::unpack`]).
    packed: Vec<u8>,
    /// A whole state the save added: walking it to copy its strings would cost the save as
    /// much as the indexer's splitting, so the indexer walks it (a reference, not a copy).
    state: Option<Arc<rmpv::Value>>,
}

impl SavedWords {
    pub(super) fn new(
        cp: &crate::Checkpoint,
        header: &crate::codec::frame::SaveHeader,
        added: Added,
    ) -> Self {
        let mut packed = Vec::with_capacity(256);
        format::push_bytes(&mut packed, cp.execution_id.as_bytes());
        format::push_varint(&mut packed, cp.version);
        format::push_varint(&mut packed, header.timestamp_us);
        format::push_bytes(&mut packed, header.node.as_bytes());
        // Written in place: it is read back by `rmp_serde`, which finds its own end. A map of
        // JSON values always encodes; should it not, nothing is packed: the indexer skips the
        // save (and its execution's next ones) and the next search indexes them from the log.
        if rmp_serde::encode::write(&mut packed, &header.metadata).is_err() {
            return SavedWords {
                packed: Vec::new(),
                state: None,
            };
        }
        let state = match added {
            Added::Ops(ops) => {
                for op in &ops {
                    use crate::codec::tree::Op;
                    match op {
                        Op::Set(_, v) => pack_strings(&mut packed, v),
                        Op::Splice(_, _, items) => {
                            items.iter().for_each(|v| pack_strings(&mut packed, v));
                        }
                        Op::Remove(_) => {}
                    }
                }
                None
            }
            Added::State(state) => Some(state),
        };
        SavedWords { packed, state }
    }

    /// The header, and the strings added (as lengths and bytes), `None` if the buffer is not
    /// what [`SavedWords::new`] writes (it never leaves this process, so that is a bug; the
    /// next catch-up indexes the save from its log).
    fn unpack(&self) -> Option<(Head, &[u8])> {
        let mut r = format::Reader::new(&self.packed);
        let exec = r.string()?;
        let version = r.varint()?;
        let micros = r.varint()?;
        let node = r.string()?;
        let mut rest = r.rest();
        let metadata = rmp_serde::from_read(&mut rest).ok()?;
        let head = Head {
            exec,
            version,
            micros,
            node,
            metadata,
        };
        Some((head, rest))
    }

    /// Calls `f` with every word of the strings it added (a word may come more than once).
    fn each_word(&self, strings: &[u8], f: &mut dyn FnMut(&str)) {
        if let Some(state) = &self.state {
            each_word(state, f);
        }
        let mut r = format::Reader::new(strings);
        while let Some(s) = r.bytes() {
            each_word_in(&String::from_utf8_lossy(s), f);
        }
    }
}

/// Appends the indexed strings of `value` as lengths and bytes.
fn pack_strings(buf: &mut Vec<u8>, value: &rmpv::Value) {
    each_string(value, &mut |s| format::push_bytes(buf, s));
}

enum Job {
    Saved(Vec<SavedWords>),
    Flush(oneshot::Sender<()>),
    /// A search found the tail long enough to fold.
    Fold,
}

/// What one execution's indexing knows: where it stands and the words it has (as far as this
/// process saw them).
struct ExecWords {
    covered: Covered,
    words: HashSet<String>,
}

/// The index's state in one store (shared by its clones).
#[derive(Default)]
pub(super) struct IndexState {
    /// `None` until read from the table; then whether the store is indexed.
    on: std::sync::Mutex<Option<bool>>,
    queue: std::sync::Mutex<Option<mpsc::Sender<Job>>>,
    /// Wakes the indexer from its gathering when a search waits for it.
    flush_now: Arc<tokio::sync::Notify>,
    /// Held while index data is computed and written, so the background writer, a catch-up
    /// and a fold never interleave.
    writing: tokio::sync::Mutex<HashMap<String, ExecWords>>,
    /// Logs this store appended to since the last catch-up: checked by every catch-up, when
    /// the others are checked less often (see [`Store::needs_full_check`]).
    moved: std::sync::Mutex<HashSet<String>>,
    /// When every log was last compared with the index.
    last_full_check: std::sync::Mutex<Option<std::time::Instant>>,
    /// Every log's tail when the index was last found to cover them all: while the logs stay
    /// there, a catch-up need not read the index's coverage entries again.
    covered_tails: std::sync::Mutex<Option<HashMap<String, u64>>>,
    /// Tail bytes this store wrote since it last folded (or saw the tail).
    tail_bytes: AtomicU64,
    /// The main index's size when this store last read or wrote it.
    main_bytes: AtomicU64,
    /// What this store last read of the index (see `view`).
    pub(super) cache: view::Cache,
}

/// What [`Store::reindex`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ReindexReport {
    /// Executions indexed.
    pub executions: u64,
    /// Checkpoints indexed.
    pub checkpoints: u64,
    /// Entries the index holds afterwards.
    pub entries: u64,
    /// Bytes (keys and values) the index holds afterwards.
    pub bytes: u64,
}

/// One execution's data in the index, as a rebuild would make it: its live headers by version
/// and, per word, the first version holding it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct ExecEntries {
    pub(crate) heads: BTreeMap<u64, Head>,
    pub(crate) words: BTreeMap<String, u64>,
}

impl ExecEntries {
    /// Entries missing, extra and wrong in `self` against `expected`.
    fn differences(&self, expected: &ExecEntries) -> (usize, usize, usize) {
        fn diff<K: Ord, V: PartialEq>(
            held: &BTreeMap<K, V>,
            want: &BTreeMap<K, V>,
        ) -> (usize, usize, usize) {
            let missing = want.keys().filter(|k| !held.contains_key(*k)).count();
            let extra = held.keys().filter(|k| !want.contains_key(*k)).count();
            let wrong = want
                .iter()
                .filter(|(k, v)| held.get(*k).is_some_and(|h| h != *v))
                .count();
            (missing, extra, wrong)
        }
        let (m1, e1, w1) = diff(&self.heads, &expected.heads);
        let (m2, e2, w2) = diff(&self.words, &expected.words);
        (m1 + m2, e1 + e2, w1 + w2)
    }
}

impl Store {
    fn search_table(&self) -> Option<&dyn SearchTable> {
        self.inner.traced.capabilities().search_table
    }

    fn search_state(&self) -> &IndexState {
        &self.inner.search_index
    }

    /// Whether this store keeps a search index: read from the backend once, then known.
    pub(super) async fn index_on(&self) -> Result<bool> {
        if let Some(on) = *lock(&self.search_state().on) {
            return Ok(on);
        }
        self.index_on_now().await.map(|(on, _)| on)
    }

    /// Whether the store is indexed now, and in which format, read again from the backend:
    /// another store (in this process or another) may have built or dropped the index since.
    /// A search and gc ask this; saves go by [`Store::index_on`], and the indexer checks
    /// before it writes.
    async fn index_on_now(&self) -> Result<(bool, u8)> {
        let format = match self.search_table() {
            Some(table) => table.get_index(&[ON_KEY.to_vec()]).await?[0]
                .as_ref()
                .map(|v| v.first().copied().unwrap_or(0)),
            None => None,
        };
        *lock(&self.search_state().on) = Some(format.is_some());
        Ok((format.is_some(), format.unwrap_or(0)))
    }

    /// Whether this store has not yet read whether it is indexed.
    pub(super) fn search_index_unknown(&self) -> bool {
        lock(&self.search_state().on).is_none()
    }

    /// Whether saves should compute the words they add (the store is known to be indexed).
    pub(super) fn indexing_saves(&self) -> bool {
        lock(&self.search_state().on).unwrap_or(false)
    }

    /// Builds the search index from every execution's log (dropping any index there was), and
    /// marks the store as indexed, so that every store opening it keeps the index up to date
    /// and [`Store::search`] answers from it ([`SearchMethod::Index`]).
    ///
    /// Fails with [`Error::InvalidInput`] on an encrypted store (its search scans: an index
    /// would hold its words in plaintext) and on a backend without a search table.
    pub async fn reindex(&self) -> Result<ReindexReport> {
        let table = self.indexable_table().await?;
        self.flush_index().await;
        let mut cache = self.search_state().writing.lock().await;
        cache.clear();
        self.clear_all(table).await?;
        table
            .write_index(vec![(ON_KEY.to_vec(), vec![FORMAT])], Vec::new())
            .await?;
        *lock(&self.search_state().on) = Some(true);
        let mut report = ReindexReport::default();
        for exec in self.execution_logs().await? {
            report.checkpoints += self.index_execution(table, &exec, &mut cache).await?;
            report.executions += 1;
            self.fold_if_due(table).await?;
        }
        self.fold(table).await?;
        drop(cache);
        (report.entries, report.bytes) = table.index_size().await?;
        Ok(report)
    }

    /// Removes the search index: searches scan again, and saves stop feeding it.
    pub async fn drop_index(&self) -> Result<()> {
        let Some(table) = self.search_table() else {
            return Ok(());
        };
        self.flush_index().await;
        let mut cache = self.search_state().writing.lock().await;
        cache.clear();
        self.clear_all(table).await?;
        *lock(&self.search_state().on) = Some(false);
        Ok(())
    }

    /// Deletes every entry, and the frames naming main indexes.
    async fn clear_all(&self, table: &dyn SearchTable) -> Result<()> {
        table.clear_index().await?;
        let next = self.inner.traced.next_seq(SEARCH_LOG).await?;
        if next > 1 {
            self.inner.traced.truncate(SEARCH_LOG, next).await?;
        }
        self.search_state()
            .tail_bytes
            .store(0, AtomicOrdering::Relaxed);
        self.search_state()
            .main_bytes
            .store(0, AtomicOrdering::Relaxed);
        self.search_state().cache.clear();
        Ok(())
    }

    /// Entries and bytes of the search index (`None` when the store is not indexed).
    pub async fn index_size(&self) -> Result<Option<(u64, u64)>> {
        match self.search_table() {
            Some(table) if self.index_on().await? => Ok(Some(table.index_size().await?)),
            _ => Ok(None),
        }
    }

    async fn indexable_table(&self) -> Result<&dyn SearchTable> {
        if self.crypto().await?.cipher().is_some() {
            return Err(Error::InvalidInput(
                "this store is encrypted: its search decrypts states while scanning, and keeps \
                 no index (an index would hold the words of its states in plaintext)"
                    .into(),
            ));
        }
        self.search_table().ok_or_else(|| {
            Error::InvalidInput(format!(
                "the {} backend keeps no search index; its search scans",
                self.inner.traced.name()
            ))
        })
    }

    /// Hands landed saves to the background indexer (started on first use).
    pub(super) async fn index_saved(&self, saved: Vec<SavedWords>) {
        if !saved.is_empty() {
            self.send_job(Job::Saved(saved)).await;
        }
    }

    /// Waits until the indexer has written everything handed to it so far.
    pub(super) async fn flush_index(&self) {
        let (tx, rx) = oneshot::channel();
        if self.send_job(Job::Flush(tx)).await {
            self.search_state().flush_now.notify_one();
            let _ = rx.await;
        }
    }

    /// Sends a job, starting the indexer if there is none (or its runtime went away). Returns
    /// whether it was sent.
    async fn send_job(&self, job: Job) -> bool {
        let sender = {
            let mut queue = lock(&self.search_state().queue);
            match &*queue {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    // The indexer holds the store only weakly, so dropping the last store ends it.
                    let weak = Arc::downgrade(&self.inner);
                    let flush_now = self.search_state().flush_now.clone();
                    tokio::spawn(run_indexer(weak, rx, flush_now));
                    *queue = Some(tx.clone());
                    tx
                }
            }
        };
        sender.send(job).await.is_ok()
    }

    /// Writes one tail segment (when it holds anything) with `covered` entries, all or nothing.
    async fn write_segment(
        &self,
        table: &dyn SearchTable,
        segment: SegmentBuilder,
        covered: Vec<(Vec<u8>, Vec<u8>)>,
        delete: Vec<Vec<u8>>,
    ) -> Result<()> {
        let mut puts = covered;
        if !segment.is_empty() {
            let bytes = segment.build().encode()?;
            self.search_state()
                .tail_bytes
                .fetch_add(bytes.len() as u64, AtomicOrdering::Relaxed);
            let at = self
                .search_state()
                .cache
                .next_tail_micros(micros(SystemTime::now()));
            let key = format::tail_key(at, format::nonce());
            puts.push((key, bytes));
        }
        if puts.is_empty() && delete.is_empty() {
            return Ok(());
        }
        table.write_index(puts, delete).await
    }

    /// Indexes the saves of one batch where the index stands just below them; leaves the rest
    /// to the next catch-up.
    async fn write_saved(&self, table: &dyn SearchTable, saved: Vec<SavedWords>) -> Result<()> {
        let mut cache = self.search_state().writing.lock().await;
        let saved: Vec<(Head, &[u8], &SavedWords)> = saved
            .iter()
            .filter_map(|s| s.unpack().map(|(head, strings)| (head, strings, s)))
            .collect();
        let execs: BTreeSet<&str> = saved.iter().map(|(h, ..)| h.exec.as_str()).collect();
        // Another process may have moved the index: read where it stands unless none can.
        let single = self.inner.traced.capabilities().single_process;
        let missing: Vec<&str> = execs
            .iter()
            .copied()
            .filter(|e| !single || !cache.contains_key(*e))
            .collect();
        let mut keys: Vec<Vec<u8>> = missing.iter().map(|e| covered_key(e)).collect();
        // Another store may have dropped the index (`ckpt reindex --drop`): then this one
        // stops feeding it, rather than leave entries in a store that keeps none.
        keys.push(ON_KEY.to_vec());
        let mut found = table.get_index(&keys).await?;
        if found.pop().flatten().is_none() {
            *lock(&self.search_state().on) = Some(false);
            cache.clear();
            return Ok(());
        }
        for (exec, covered) in missing.into_iter().zip(found) {
            let covered = covered
                .as_deref()
                .and_then(Covered::decode)
                .unwrap_or_default();
            if cache.get(exec).is_none_or(|c| c.covered != covered) {
                // Words this process does not know the execution had are posted again.
                let words = HashSet::new();
                remember(&mut cache, exec, ExecWords { covered, words });
            }
        }
        let (segment, covered) = compute(|| words_of_saves(&mut cache, &saved));
        let touched: Vec<String> = segment.execs().to_vec();
        if let Err(e) = self
            .write_segment(table, segment, covered.into_iter().collect(), Vec::new())
            .await
        {
            // What this process believes was written is not: read it again next time.
            for exec in touched {
                cache.remove(&exec);
            }
            return Err(e);
        }
        let folded = self.fold_if_due(table).await;
        drop(cache);
        folded
    }

    /// Notes logs this store appended to, for the next catch-up (indexed stores only).
    pub(super) fn note_moved_for_index(&self, logs: &[String]) {
        if self.indexing_saves() {
            lock(&self.search_state().moved).extend(
                logs.iter()
                    .filter(|l| !super::reclaim::is_reserved_log(l))
                    .cloned(),
            );
        }
    }

    /// Whether the next catch-up compares every log with the index, or only those this store
    /// moved: every time where listing the logs is cheap (other stores, in this process or
    /// others, may have written); at most every [`FULL_CHECK_EVERY`] where listing is costly
    /// (Redis), so another store's changes show within that time.
    fn needs_full_check(&self) -> bool {
        let caps = self.inner.traced.capabilities();
        let last = *lock(&self.search_state().last_full_check);
        match last {
            Some(t) if caps.side_table.is_some_and(|s| s.gets_beat_scans()) => {
                t.elapsed() >= FULL_CHECK_EVERY
            }
            _ => true,
        }
    }

    /// Brings the index up to date with the logs: executions that moved are indexed from
    /// where the index stopped (or again, when they lost checkpoints), those gone are reset.
    async fn catch_up(&self, table: &dyn SearchTable) -> Result<()> {
        self.flush_index().await;
        let moved: HashSet<String> = std::mem::take(&mut *lock(&self.search_state().moved));
        let result = if self.needs_full_check() {
            let started = std::time::Instant::now();
            let done = self.catch_up_all(table).await;
            if done.is_ok() {
                *lock(&self.search_state().last_full_check) = Some(started);
            }
            done
        } else {
            self.catch_up_moved(table, &moved).await
        };
        if result.is_err() {
            lock(&self.search_state().moved).extend(moved);
        }
        result
    }

    /// Compares the executions in `moved` with the index and catches up those behind.
    async fn catch_up_moved(&self, table: &dyn SearchTable, moved: &HashSet<String>) -> Result<()> {
        if moved.is_empty() {
            return Ok(());
        }
        let execs: Vec<&String> = moved.iter().collect();
        let keys: Vec<Vec<u8>> = execs.iter().map(|e| covered_key(e)).collect();
        let covered = table.get_index(&keys).await?;
        let mut cache = self.search_state().writing.lock().await;
        for (exec, c) in execs.into_iter().zip(covered) {
            let tail = self.inner.traced.next_seq(exec).await?;
            let c = c.as_deref().and_then(Covered::decode);
            if c.is_none_or(|c| c.next != tail) {
                self.index_execution(table, exec, &mut cache).await?;
            }
        }
        Ok(())
    }

    /// Compares every log with the index and catches up those behind; resets executions whose
    /// log is gone.
    async fn catch_up_all(&self, table: &dyn SearchTable) -> Result<()> {
        let tails = self.log_tails().await?;
        if lock(&self.search_state().covered_tails).as_ref() == Some(&tails) {
            return Ok(());
        }
        self.catch_up_tails(table, &tails).await?;
        *lock(&self.search_state().covered_tails) = Some(tails);
        Ok(())
    }

    /// Catches up every execution of `tails` the index does not cover.
    async fn catch_up_tails(
        &self,
        table: &dyn SearchTable,
        tails: &HashMap<String, u64>,
    ) -> Result<()> {
        let covered: HashMap<String, Covered> = scan_all(table, &[COVERED])
            .await?
            .into_iter()
            .filter_map(|(k, v)| {
                let (exec, _) = format::read_str(&k[1..])?;
                Some((exec, Covered::decode(&v)?))
            })
            .collect();
        let behind: Vec<&String> = tails
            .iter()
            .filter(|(exec, tail)| covered.get(*exec).is_none_or(|c| c.next != **tail))
            .map(|(exec, _)| exec)
            .collect();
        let gone: Vec<&String> = covered.keys().filter(|e| !tails.contains_key(*e)).collect();
        if behind.is_empty() && gone.is_empty() {
            return Ok(());
        }
        let mut cache = self.search_state().writing.lock().await;
        for exec in behind {
            self.index_execution(table, exec, &mut cache).await?;
        }
        if !gone.is_empty() {
            let mut segment = SegmentBuilder::default();
            for exec in &gone {
                segment.reset(exec);
                cache.remove(exec.as_str());
            }
            let deletes = gone.iter().map(|e| covered_key(e)).collect();
            self.write_segment(table, segment, Vec::new(), deletes)
                .await?;
        }
        Ok(())
    }

    /// Every execution's log tail.
    async fn log_tails(&self) -> Result<HashMap<String, u64>> {
        let mut tails: HashMap<String, u64> = match self.inner.traced.capabilities().side_table {
            Some(side) => side.log_tails().await?.into_iter().collect(),
            None => {
                let mut out = HashMap::new();
                for log in self.inner.traced.list_logs().await? {
                    let next = self.inner.traced.next_seq(&log).await?;
                    out.insert(log, next);
                }
                out
            }
        };
        tails.retain(|log, _| !super::reclaim::is_reserved_log(log));
        Ok(tails)
    }

    /// Indexes `exec` from where the index stands, or resets it and indexes its live
    /// checkpoints when it lost checkpoints below that; returns the checkpoints indexed.
    async fn index_execution(
        &self,
        table: &dyn SearchTable,
        exec: &str,
        cache: &mut HashMap<String, ExecWords>,
    ) -> Result<u64> {
        let next = self.inner.traced.next_seq(exec).await?;
        let stored = table.get_index(&[covered_key(exec)]).await?[0]
            .as_deref()
            .and_then(Covered::decode);
        let heads = self.live_heads(exec).await?;
        let live_below = |n: u64| heads.iter().filter(|h| h.version < n).count() as u64;
        let mut segment = SegmentBuilder::default();
        let (mut covered, mut words) = match stored {
            Some(c) if c.next <= next && live_below(c.next) == c.live => {
                let words = match cache.remove(exec) {
                    Some(known) if known.covered == c => known.words,
                    _ => HashSet::new(),
                };
                (c, words)
            }
            _ => {
                segment.reset(exec);
                (Covered::default(), HashSet::new())
            }
        };
        let mut indexed = 0;
        let mut new: Vec<&CheckpointHeader> =
            heads.iter().filter(|h| h.version >= covered.next).collect();
        new.sort_by_key(|h| h.version);
        for h in new {
            self.add_checkpoint(&mut segment, h, &mut words).await?;
            covered.live += 1;
            indexed += 1;
            if segment.weight() >= SEGMENT_WEIGHT {
                // Bound memory on long executions: what is written stays valid, since `c` is
                // written last.
                let full = std::mem::take(&mut segment);
                self.write_segment(table, full, Vec::new(), Vec::new())
                    .await?;
            }
        }
        covered.next = next;
        let c = vec![(covered_key(exec), covered.encode())];
        self.write_segment(table, segment, c, Vec::new()).await?;
        remember(cache, exec, ExecWords { covered, words });
        Ok(indexed)
    }

    /// The live checkpoints of `exec` (none when it has none, or no log).
    async fn live_heads(&self, exec: &str) -> Result<Vec<CheckpointHeader>> {
        match self.history(exec, HistoryQuery::default()).await {
            Ok(heads) => Ok(heads),
            Err(Error::NotFound { .. }) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    /// Adds one checkpoint, read from its state: its header, and the words its execution had
    /// not held before (`words`, which it extends).
    async fn add_checkpoint(
        &self,
        segment: &mut SegmentBuilder,
        h: &CheckpointHeader,
        words: &mut HashSet<String>,
    ) -> Result<()> {
        let cp = self.load(&h.id).await?;
        each_word(cp.state_value(), &mut |w| {
            if !words.contains(w) {
                segment.word(w, &h.execution_id, h.version);
                words.insert(w.to_owned());
            }
        });
        segment.head(&Head::of(h));
        Ok(())
    }

    /// Brings the search index up to date with the logs and folds it, when the store is
    /// indexed: what gc runs, so that nothing of what it reclaimed stays in the index.
    pub(super) async fn reclaim_index(&self) -> Result<()> {
        match self.search_table() {
            Some(table) if self.index_on_now().await?.0 => {
                self.catch_up(table).await?;
                let _cache = self.search_state().writing.lock().await;
                self.fold(table).await
            }
            _ => Ok(()),
        }
    }

    /// Folds the tail into the main index if it has grown enough (the caller holds `writing`).
    async fn fold_if_due(&self, table: &dyn SearchTable) -> Result<()> {
        let tail = self.search_state().tail_bytes.load(AtomicOrdering::Relaxed);
        let main = self.search_state().main_bytes.load(AtomicOrdering::Relaxed);
        if fold_due(tail, main) {
            self.fold(table).await?;
        }
        Ok(())
    }

    /// Merges the tail into a new main index, and makes it current (see the module docs).
    /// Losing a race with another store's fold is not an error: that fold took the tail.
    async fn fold(&self, table: &dyn SearchTable) -> Result<()> {
        let backend = &self.inner.traced;
        let next = backend.next_seq(SEARCH_LOG).await?;
        let current = self.main_at(next).await?;
        let tail = view::read_tail(table).await?;
        let overlay = compute(|| Overlay::build(&tail));
        let folded = view::fold(table, current.as_ref(), &overlay).await?;
        let frame = folded.main.frame();
        let commit = backend
            .commit(
                vec![LogAppend::new(SEARCH_LOG, next, vec![frame]).never_expiring()],
                Vec::new(),
            )
            .await;
        match commit {
            Ok(()) => {}
            Err(Error::Conflict { .. }) => {
                table.write_index(Vec::new(), folded.keys).await?;
                return Ok(());
            }
            Err(e) => {
                // Whether the frame landed is unknown: its blocks stay (a later fold or
                // `reindex` removes them if they are not current).
                return Err(e);
            }
        }
        let mut old = tail.iter().map(|(k, _)| k.clone()).collect::<Vec<_>>();
        if let Some(cur) = &current {
            old.extend(view::main_keys(table, cur).await?);
        }
        for chunk in old.chunks(SCAN_CHUNK) {
            table.write_index(Vec::new(), chunk.to_vec()).await?;
        }
        backend.truncate(SEARCH_LOG, next).await?;
        self.search_state()
            .tail_bytes
            .store(0, AtomicOrdering::Relaxed);
        self.search_state()
            .main_bytes
            .store(folded.main.bytes, AtomicOrdering::Relaxed);
        Ok(())
    }

    /// The main index named by the search log's frame below `next` (`None` when none is).
    async fn main_at(&self, next: u64) -> Result<Option<MainRef>> {
        if next <= 1 {
            return Ok(None);
        }
        if let Some(m) = self
            .search_state()
            .cache
            .main_ref()
            .filter(|m| m.seq == next - 1)
        {
            return Ok(Some(m));
        }
        let frames = self.inner.traced.scan(SEARCH_LOG, next - 1, 1).await?;
        let main = frames
            .into_iter()
            .find(|(seq, _)| *seq == next - 1)
            .and_then(|(seq, bytes)| MainRef::decode(seq, &bytes));
        if let Some(m) = &main {
            self.search_state()
                .main_bytes
                .store(m.bytes, AtomicOrdering::Relaxed);
        }
        Ok(main)
    }

    /// The current main index (`None` when there is none yet).
    async fn current_main(&self) -> Result<Option<MainRef>> {
        let next = self.inner.traced.next_seq(SEARCH_LOG).await?;
        self.main_at(next).await
    }

    /// Every execution's data as the index holds it, decoded (for `verify` and tests), and how
    /// many entries did not decode.
    pub(crate) async fn index_contents(&self) -> Result<(BTreeMap<String, ExecEntries>, usize)> {
        let Some(table) = self.search_table() else {
            return Ok((BTreeMap::new(), 0));
        };
        for _ in 0..READ_RETRIES {
            let main = self.current_main().await?;
            let tail = view::read_tail(table).await?;
            let overlay = Overlay::build(&tail);
            let (mut out, mut damaged) = match &main {
                Some(m) => view::main_contents(table, m, &overlay).await?,
                None => (BTreeMap::new(), 0),
            };
            damaged += tail.iter().filter(|(_, s)| s.is_none()).count();
            overlay.add_contents(&mut out);
            if self.current_main().await? == main {
                return Ok((out, damaged));
            }
        }
        Err(busy_folding())
    }

    /// The entries every execution should have, rebuilt from its log, compared with those the
    /// index holds: one sentence per execution that differs (for `verify`).
    pub(super) async fn index_problems(&self) -> Result<Vec<String>> {
        let Some(table) = self.search_table() else {
            return Ok(Vec::new());
        };
        if !self.index_on().await? {
            return Ok(Vec::new());
        }
        if self.index_on_now().await?.1 != FORMAT {
            return Ok(vec![
                "the search index was built by an older ckpt, in a format this one does not \
                 read: run `ckpt reindex` (a search rebuilds it too)"
                    .into(),
            ]);
        }
        self.flush_index().await;
        let mut problems = Vec::new();
        let (held, damaged) = self.index_contents().await?;
        if damaged > 0 {
            problems.push(format!(
                "{damaged} entries of the search index do not decode: run `ckpt reindex`"
            ));
        }
        let tails = self.log_tails().await?;
        for (exec, tail) in &tails {
            let stored = table.get_index(&[covered_key(exec)]).await?[0]
                .as_deref()
                .and_then(Covered::decode);
            // An execution the index has not caught up with yet is not wrong: the next
            // search indexes it.
            if stored.is_none_or(|c| c.next != *tail) {
                continue;
            }
            let expected = self.expected_entries(exec).await?;
            let empty = ExecEntries::default();
            let (missing, extra, wrong) = held.get(exec).unwrap_or(&empty).differences(&expected);
            if missing + extra + wrong > 0 {
                problems.push(format!(
                    "the search index of execution {exec:?} differs from its log ({missing} \
                     entries missing, {extra} extra, {wrong} wrong): run `ckpt reindex`"
                ));
            }
        }
        Ok(problems)
    }

    /// The entries of `exec` a rebuild would make.
    async fn expected_entries(&self, exec: &str) -> Result<ExecEntries> {
        let mut heads = self.live_heads(exec).await?;
        heads.sort_by_key(|h| h.version);
        let mut segment = SegmentBuilder::default();
        let mut words = HashSet::new();
        for h in &heads {
            self.add_checkpoint(&mut segment, h, &mut words).await?;
        }
        let mut out = BTreeMap::new();
        Overlay::build(&[(Vec::new(), Some(Arc::new(segment.build())))]).add_contents(&mut out);
        Ok(out.remove(exec).unwrap_or_default())
    }

    // -----------------------------------------------------------------------------------------
    // Queries

    /// Answers `query` from the index, or `None` when the store keeps none.
    pub(super) async fn search_indexed(&self, query: &SearchQuery) -> Result<Option<SearchPage>> {
        let Some(table) = self.search_table() else {
            return Ok(None);
        };
        if query.scan_only || self.crypto().await?.cipher().is_some() {
            return Ok(None);
        }
        match self.index_on_now().await? {
            (false, _) => return Ok(None),
            // Built by an older ckpt, in a format this one no longer reads: built again.
            (true, format) if format != FORMAT => {
                self.reindex().await?;
            }
            _ => {}
        }
        self.catch_up(table).await?;
        for _ in 0..READ_RETRIES {
            let main = self.current_main().await?;
            let overlay = self.overlay(table).await?;
            let page = if query.terms.is_empty() {
                Some(
                    self.search_headers(table, main.as_ref(), &overlay, query)
                        .await?,
                )
            } else {
                match self
                    .text_candidates(table, main.as_ref(), &overlay, query)
                    .await?
                {
                    Some(candidates) => Some(self.search_text(query, candidates).await?),
                    None => None,
                }
            };
            if self.current_main().await? == main {
                return Ok(page);
            }
        }
        Err(busy_folding())
    }

    /// The tail as this store last read it, read again if it changed; asks the indexer to fold
    /// it when it has grown enough.
    async fn overlay(&self, table: &dyn SearchTable) -> Result<Arc<Overlay>> {
        let overlay = self.search_state().cache.overlay(table).await?;
        let main = self.search_state().main_bytes.load(AtomicOrdering::Relaxed);
        if fold_due(overlay.bytes, main) {
            self.send_job(Job::Fold).await;
        }
        Ok(overlay)
    }

    /// Per execution, the lowest version whose state can hold every word of the query; `None`
    /// when no word is selective enough to drive the search.
    async fn text_candidates(
        &self,
        table: &dyn SearchTable,
        main: Option<&MainRef>,
        overlay: &Overlay,
        query: &SearchQuery,
    ) -> Result<Option<HashMap<String, u64>>> {
        let mut words: Vec<&str> = query.terms.iter().flat_map(|t| t.words()).collect();
        words.sort_unstable();
        words.dedup();
        let execs = match main {
            Some(m) => self.search_state().cache.main_execs(table, m).await?,
            None => Arc::new(Vec::new()),
        };
        let mut sets: Vec<HashMap<String, u64>> = Vec::new();
        for w in words {
            let mut firsts: HashMap<String, u64> = HashMap::new();
            let mut add = |exec: &str, version: u64| {
                if query
                    .execution_prefix
                    .as_ref()
                    .is_some_and(|p| !exec.starts_with(p.as_str()))
                {
                    return;
                }
                let first = firsts.entry(exec.to_owned()).or_insert(version);
                *first = (*first).min(version);
            };
            let mut too_many = false;
            if let Some(m) = main {
                let found = view::main_postings(table, m, &execs, w, MAX_WORD_POSTINGS).await?;
                match found {
                    Some(postings) => {
                        for (exec, version) in postings {
                            let exec = &execs[exec as usize];
                            if !overlay.reset.contains(exec) {
                                add(exec, version);
                            }
                        }
                    }
                    None => too_many = true,
                }
            }
            overlay.postings(w, &mut add);
            if !too_many && firsts.len() <= MAX_WORD_POSTINGS {
                sets.push(firsts);
            }
        }
        let Some((first, rest)) = sets.split_first() else {
            return Ok(None);
        };
        let mut out = first.clone();
        for set in rest {
            out.retain(|exec, v| match set.get(exec) {
                Some(w) => {
                    *v = (*v).max(*w);
                    true
                }
                None => false,
            });
        }
        Ok(Some(out))
    }

    /// Reads the candidates' live checkpoints (from the store's projections, as `history`
    /// gives them) at or above their first possible version, then their states, newest first,
    /// until a page of matches is full.
    async fn search_text(
        &self,
        query: &SearchQuery,
        candidates: HashMap<String, u64>,
    ) -> Result<SearchPage> {
        let heads_of = |(exec, first): (String, u64)| async move {
            let mut history = HistoryQuery::default().at_or_above(first);
            if let Some(node) = &query.node {
                history = history.node(node.clone());
            }
            let found = match self.history(&exec, history).await {
                Ok(found) => found,
                Err(Error::NotFound { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            Ok::<_, Error>(
                found
                    .into_iter()
                    .filter(|h| h.version >= first)
                    .map(|h| Head::of(&h))
                    .filter(|h| self.head_passes(query, h))
                    .collect::<Vec<_>>(),
            )
        };
        let mut heads = Vec::new();
        let mut reads = stream::iter(candidates)
            .map(heads_of)
            .buffer_unordered(PARALLEL_READS);
        while let Some(found) = reads.next().await {
            heads.extend(found?);
        }
        let mut candidates: Vec<(Position, SearchHit)> =
            heads.into_iter().map(|h| (h.position(), h.hit())).collect();
        candidates.sort_by(|(a, _), (b, _)| search::order(a, b));
        let mut page = self.check_candidates(query, candidates).await?;
        page.method = SearchMethod::Index;
        Ok(page)
    }

    /// A page of checkpoints that pass the header conditions, walking every header newest
    /// first (the main index's blocks and the tail's, merged).
    async fn search_headers(
        &self,
        table: &dyn SearchTable,
        main: Option<&MainRef>,
        overlay: &Overlay,
        query: &SearchQuery,
    ) -> Result<SearchPage> {
        let limit = query.page_size();
        let start = self.start_after(query);
        let wanted = |s: &format::Summary| block_may_match(query, s);
        let mut walk = view::HeadWalk::new(table, main, overlay, start).only(&wanted);
        let mut hits: Vec<Head> = Vec::new();
        let mut more = false;
        while let Some(h) = walk.next().await? {
            if query
                .since
                .is_some_and(|t| u128::from(h.micros) * 1000 < search::nanos(t))
            {
                break;
            }
            if !self.head_passes(query, &h) {
                continue;
            }
            if hits.len() == limit {
                more = true;
                break;
            }
            hits.push(h);
        }
        Ok(header_page(hits, more))
    }

    /// Whether a header from the index passes every condition of `query` but the text.
    fn head_passes(&self, query: &SearchQuery, h: &Head) -> bool {
        let pos = h.position();
        query
            .cursor
            .as_ref()
            .is_none_or(|c| search::order(&pos, c) == std::cmp::Ordering::Greater)
            && query
                .execution_prefix
                .as_ref()
                .is_none_or(|p| h.exec.starts_with(p.as_str()))
            && query.node.as_ref().is_none_or(|n| *n == h.node)
            && query.time_matches(super::from_micros(h.micros))
            && query.metadata_matches(&h.metadata)
    }

    /// Where a walk of headers starts: after the cursor, or at the `until` bound (as position
    /// bytes: a header sorts after them when its position's bytes are greater).
    fn start_after(&self, query: &SearchQuery) -> Option<Vec<u8>> {
        if let Some(c) = &query.cursor {
            let mut k = Vec::new();
            format::push_position(&mut k, (c.nanos / 1000) as u64, &c.execution_id, c.version);
            return Some(k);
        }
        query.until.map(|t| {
            // Every position at or after `until` sorts before this one (an id never starts 0xff).
            let mut k = (u64::MAX - micros(t)).to_be_bytes().to_vec();
            k.push(0xff);
            k
        })
    }
}

/// Whether a block of headers with summary `s` may hold one that passes the node and metadata
/// conditions of `query` (false only when none can).
fn block_may_match(query: &SearchQuery, s: &format::Summary) -> bool {
    use serde_json::Value;
    if let (Some(node), Some(nodes)) = (&query.node, &s.nodes) {
        if !nodes.contains(node) {
            return false;
        }
    }
    query.metadata.iter().all(|c| {
        if c.op == search::Op::Ne {
            return true;
        }
        // Only `!=` holds for a header without the key.
        let Some(r) = s.range(&c.key) else {
            return false;
        };
        if r.other {
            return true;
        }
        let within = |lo: Option<std::cmp::Ordering>, hi: Option<std::cmp::Ordering>| {
            use std::cmp::Ordering::*;
            // `lo`: the block's least value against the bound; `hi`: its greatest.
            match c.op {
                search::Op::Eq => lo != Some(Greater) && hi != Some(Less),
                search::Op::Lt => lo == Some(Less),
                search::Op::Le => lo != Some(Greater),
                search::Op::Gt => hi == Some(Greater),
                search::Op::Ge => hi != Some(Less),
                search::Op::Ne => true,
            }
        };
        match &c.value {
            Value::Number(n) => match (n.as_f64(), r.numbers) {
                (Some(x), Some((lo, hi))) => within(lo.partial_cmp(&x), hi.partial_cmp(&x)),
                (Some(_), None) => false,
                (None, _) => true,
            },
            Value::String(x) => match &r.strings {
                Some((lo, hi)) => within(Some(lo.as_str().cmp(x)), Some(hi.as_str().cmp(x))),
                None => false,
            },
            _ => true,
        }
    })
}

fn busy_folding() -> Error {
    Error::Busy {
        what: "the search index was folded again and again while this search read it; \
               search again"
            .into(),
    }
}

fn header_page(hits: Vec<Head>, more: bool) -> SearchPage {
    let next_cursor = (more && !hits.is_empty())
        .then(|| hits.last().map(|h| search::format_cursor(&h.position())))
        .flatten();
    SearchPage {
        states_read: 0,
        hits: hits.into_iter().map(Head::hit).collect(),
        next_cursor,
        method: SearchMethod::Index,
    }
}

fn remember(cache: &mut HashMap<String, ExecWords>, exec: &str, words: ExecWords) {
    if cache.len() >= CACHED_EXECUTIONS && !cache.contains_key(exec) {
        cache.clear();
    }
    cache.insert(exec.to_owned(), words);
}

async fn scan_all(table: &dyn SearchTable, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
    let mut after: Option<Vec<u8>> = None;
    loop {
        let chunk = table
            .scan_index(prefix, after.as_deref(), SCAN_CHUNK)
            .await?;
        let done = chunk.len() < SCAN_CHUNK;
        after = chunk.last().map(|(k, _)| k.clone());
        out.extend(chunk);
        if done {
            return Ok(out);
        }
    }
}

/// The segment and coverage entries of a batch of landed saves: each save that lands just where
/// its execution's index stands adds its header and the words its execution did not have.
fn words_of_saves(
    cache: &mut HashMap<String, ExecWords>,
    saved: &[(Head, &[u8], &SavedWords)],
) -> (SegmentBuilder, BTreeMap<Vec<u8>, Vec<u8>>) {
    let mut segment = SegmentBuilder::default();
    let mut covered = BTreeMap::new();
    for (h, strings, s) in saved {
        let Some(entry) = cache.get_mut(&h.exec) else {
            continue;
        };
        if entry.covered.next != h.version {
            continue;
        }
        segment.head(h);
        let known = &mut entry.words;
        s.each_word(strings, &mut |w| {
            if !known.contains(w) {
                segment.word(w, &h.exec, h.version);
                known.insert(w.to_owned());
            }
        });
        entry.covered = Covered {
            next: h.version + 1,
            live: entry.covered.live + 1,
        };
        covered.insert(covered_key(&h.exec), entry.covered.encode());
    }
    (segment, covered)
}

/// Runs CPU-bound index work (splitting a batch into words, decoding a tail) without holding
/// up the application's other tasks: on a multi-threaded tokio runtime through
/// `block_in_place`, which hands this worker's other tasks, and the polling of sockets and
/// timers, to another thread for the while; elsewhere in place.
///
/// A batch of 40 saves measured about 1 ms of it, and a fold kept saves waiting for up to
/// 50 ms: more than tokio asks a task to run between two awaits.
fn compute<T>(f: impl FnOnce() -> T) -> T {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The background indexer: writes the saves handed to it in batches, until the store is gone.
async fn run_indexer(
    store: std::sync::Weak<super::Inner>,
    mut rx: mpsc::Receiver<Job>,
    flush_now: Arc<tokio::sync::Notify>,
) {
    while let Some(job) = rx.recv().await {
        // Saves arrive one by one: gather them for a moment, so that one backend write (one
        // transaction, one sled batch) carries many. The indexer sleeps meanwhile rather than
        // taking each save as it comes (a wake-up per save costs the saver as much as the
        // writing); a search's flush wakes it at once.
        let mut jobs = vec![job];
        if matches!(jobs[0], Job::Saved(_)) {
            tokio::select! {
                _ = tokio::time::sleep(LINGER) => {}
                _ = flush_now.notified() => {}
            }
        }
        while jobs.len() < BATCH {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let Some(inner) = store.upgrade() else {
            return;
        };
        let store = Store { inner };
        let mut saved = Vec::new();
        let mut flushes = Vec::new();
        let mut fold = false;
        for job in jobs {
            match job {
                Job::Saved(s) => saved.extend(s),
                Job::Flush(tx) => flushes.push(tx),
                Job::Fold => fold = true,
            }
        }
        if let Some(table) = store.search_table() {
            let written = if saved.is_empty() {
                Ok(())
            } else {
                store.write_saved(table, saved).await
            };
            if let Err(e) = written {
                tracing::warn!(
                    error = %e,
                    "ckpt: the search index missed saves; the next search catches up"
                );
            }
            if fold && store.indexing_saves() {
                let _writing = store.search_state().writing.lock().await;
                if let Err(e) = store.fold(table).await {
                    tracing::warn!(error = %e, "ckpt: folding the search index failed");
                }
            }
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::frame::SaveHeader;
    use crate::codec::tree;

    fn header(cp: &crate::Checkpoint) -> SaveHeader {
        SaveHeader {
            node: cp.node_name.clone(),
            metadata: cp.metadata.clone(),
            timestamp_us: 1_700_000_000_123_456,
            parent: None,
            state_size: 0,
            delta_base: None,
        }
    }

    fn words_of(s: &SavedWords) -> (Head, Vec<String>) {
        let (head, strings) = s.unpack().expect("unpacks");
        let mut words = Vec::new();
        s.each_word(strings, &mut |w| words.push(w.to_owned()));
        (head, words)
    }

    #[test]
    fn a_packed_save_gives_back_its_header_and_the_words_its_delta_added() {
        let before = rmpv::Value::Map(vec![(
            "messages".into(),
            rmpv::Value::Array(vec!["Old words".into()]),
        )]);
        let mut cp = crate::Checkpoint::new(
            "conv-\u{e9}",
            "chat",
            &serde_json::json!({"messages": ["Old words", {"role": "Kept", "content": "New ZANZIBAR-7 Été"}]}),
        )
        .expect("checkpoint")
        .with_metadata("user", "alice")
        .with_metadata("step", 12u64);
        cp.version = 7;
        let ops = tree::diff(&before, &cp.state);
        let saved = SavedWords::new(&cp, &header(&cp), Added::Ops(ops));
        assert!(
            saved.state.is_none(),
            "a delta's strings are copied, not referenced"
        );
        let (head, words) = words_of(&saved);
        assert_eq!(head.exec, "conv-\u{e9}");
        assert_eq!(head.version, 7);
        assert_eq!(head.micros, 1_700_000_000_123_456);
        assert_eq!(head.node, "chat");
        assert_eq!(head.metadata, cp.metadata);
        // The delta's strings only (not "old"), map keys excepted ("role"), lowercased.
        assert_eq!(words, ["new", "zanzibar", "7", "été", "kept"]);
    }

    #[test]
    fn a_packed_first_save_walks_its_whole_state() {
        let cp = crate::Checkpoint::new("e", "start", &serde_json::json!({"q": "Hello world"}))
            .expect("checkpoint");
        let saved = SavedWords::new(&cp, &header(&cp), Added::State(cp.state.clone()));
        let (head, words) = words_of(&saved);
        assert_eq!((head.exec.as_str(), head.node.as_str()), ("e", "start"));
        assert!(head.metadata.is_empty());
        assert_eq!(words, ["hello", "world"]);
    }

    #[test]
    fn a_damaged_pack_is_refused_not_misread() {
        let cp = crate::Checkpoint::new("e", "n", &serde_json::json!({})).expect("checkpoint");
        let mut saved = SavedWords::new(&cp, &header(&cp), Added::Ops(Vec::new()));
        saved.packed.truncate(3);
        assert!(saved.unpack().is_none());
    }
}
