//! The search index: a projection of the logs kept in the backend's [`SearchTable`], so that
//! [`Store::search`] answers from postings instead of reading every state.
//!
//! This module owns the index's keys, how a save's delta becomes entries, how the index is
//! brought up to date with the logs, rebuilt and dropped, and how a query is answered from it.
//!
//! # What is indexed
//! For every live checkpoint: its header in time order (`t`), by node (`n`) and by each metadata
//! value (`m`), and per execution where its headers are (`h`). For text, per execution, every
//! word (as [`super::search`] splits strings) with the **first version** whose save added a
//! string holding it (`w` by word, `d` by execution): a save indexes only the words of the
//! strings its delta adds that the execution has not had before, so a growing conversation
//! costs the words of its new message, not its whole state.
//!
//! A word's first version is a lower bound: every checkpoint whose state holds the word is at or
//! above it. So the postings give candidates, and each candidate's state is read to check the
//! text (and to show where it matched) before it is returned, as a database rechecks a lossy
//! index. A word removed later, or held only on another branch, costs a read, never a wrong hit.
//!
//! # Kept true
//! Each execution's entry `c` names the log position the index covers and how many live
//! checkpoints were below it. Before every search the index is compared with the logs' tails:
//! an execution that moved is indexed from where the index stopped, and one that lost a
//! checkpoint (delete, clear, prune) is indexed again from its live checkpoints, which also
//! reclaims the entries of what it lost. Saves of this process feed the index as they land (a
//! background task writes them in batches, off the save's path); whatever that misses (a crash,
//! another process's saves) the next search catches up. `verify` rebuilds every execution's
//! entries in memory and compares.
//!
//! Encrypted stores are never indexed: their search decrypts while scanning.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::Arc;
use std::time::SystemTime;

use futures_util::stream::{self, StreamExt};
use tokio::sync::{mpsc, oneshot};

use super::search::{self, Op, Position, SearchHit, SearchMethod, SearchPage, SearchQuery};
use super::{from_micros, HistoryQuery, Store};
use crate::backend::SearchTable;
use crate::checkpoint::{CheckpointHeader, CheckpointId, Metadata};
use crate::error::{Error, Result};

/// Marks a store as indexed; its value is the format version.
const ON_KEY: &[u8] = b"!on";
const FORMAT: u8 = 1;
/// `c` EXEC → next sequence covered, live checkpoints below it.
const COVERED: u8 = b'c';
/// `d` EXEC VERSION → the words that version was the first to hold, `0`-separated.
const DICT: u8 = b'd';
/// `w` WORD EXEC → first version.
const WORD: u8 = b'w';
/// `h` EXEC VERSION → micros.
const HEAD: u8 = b'h';
/// `t` POSITION → node and metadata.
const TIME: u8 = b't';
/// `n` NODE POSITION.
const NODE: u8 = b'n';
/// `m` KEY VALUE POSITION.
const META: u8 = b'm';

/// Executions whose entries a text search reads at once.
const PARALLEL_READS: usize = 16;
/// Entries read per scan call.
const SCAN_CHUNK: usize = 4096;
/// A word matching more postings than this does not drive a search (a rarer one does).
const MAX_WORD_POSTINGS: usize = 200_000;
/// A metadata range matching more checkpoints than this is filtered in time order instead.
const MAX_RANGE_POSTINGS: usize = 20_000;
/// Executions whose word sets the indexer keeps in memory.
const CACHED_EXECUTIONS: usize = 64;
/// Saves waiting for the indexer before savers wait for it.
const QUEUE: usize = 4096;
/// Most saves the indexer writes in one backend call.
const BATCH: usize = 1024;
/// On a backend where listing the logs is costly (Redis: a `SCAN` of every key), how long a
/// search trusts the last comparison of every log with the index; the logs this store moved
/// are compared at every search.
const FULL_CHECK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// How long the indexer gathers saves before it writes them.
const LINGER: std::time::Duration = std::time::Duration::from_millis(20);

// ---------------------------------------------------------------------------------------------
// Keys

/// Appends `s` so that the encodings sort as the strings do and end unambiguously: `0x00`
/// becomes `0x00 0xff`, and `0x00 0x01` ends it.
fn push_str(buf: &mut Vec<u8>, s: &str) {
    for b in s.bytes() {
        if b == 0 {
            buf.extend([0, 0xff]);
        } else {
            buf.push(b);
        }
    }
    buf.extend([0, 1]);
}

/// The string [`push_str`] wrote at the start of `bytes`, and what follows it.
fn read_str(bytes: &[u8]) -> Option<(String, &[u8])> {
    let mut out = Vec::new();
    let mut i = 0;
    loop {
        match *bytes.get(i)? {
            0 => match *bytes.get(i + 1)? {
                0xff => out.push(0),
                1 => return Some((String::from_utf8(out).ok()?, &bytes[i + 2..])),
                _ => return None,
            },
            b => out.push(b),
        }
        i += if bytes[i] == 0 { 2 } else { 1 };
    }
}

fn push_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

fn read_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*head), rest))
}

/// Where a checkpoint sorts in results: newest first, then execution id, then newest version.
fn push_position(buf: &mut Vec<u8>, micros: u64, exec: &str, version: u64) {
    buf.extend((u64::MAX - micros).to_be_bytes());
    push_str(buf, exec);
    buf.extend((u64::MAX - version).to_be_bytes());
}

fn read_position(bytes: &[u8]) -> Option<(u64, String, u64)> {
    let (inv_time, rest) = read_u64(bytes)?;
    let (exec, rest) = read_str(rest)?;
    let (inv_version, rest) = read_u64(rest)?;
    rest.is_empty()
        .then(|| (u64::MAX - inv_time, exec, u64::MAX - inv_version))
}

fn key(family: u8) -> Vec<u8> {
    vec![family]
}

fn covered_key(exec: &str) -> Vec<u8> {
    let mut k = key(COVERED);
    push_str(&mut k, exec);
    k
}

fn dict_key(exec: &str, version: u64) -> Vec<u8> {
    let mut k = key(DICT);
    push_str(&mut k, exec);
    k.extend(version.to_be_bytes());
    k
}

/// The words of a `d` entry's value.
fn dict_words(value: &[u8]) -> impl Iterator<Item = String> + '_ {
    value
        .split(|b| *b == 0)
        .filter(|w| !w.is_empty())
        .filter_map(|w| std::str::from_utf8(w).ok().map(str::to_owned))
}

fn word_key(word: &str, exec: &str) -> Vec<u8> {
    let mut k = key(WORD);
    push_str(&mut k, word);
    push_str(&mut k, exec);
    k
}

fn head_key(exec: &str, version: u64) -> Vec<u8> {
    let mut k = key(HEAD);
    push_str(&mut k, exec);
    k.extend(version.to_be_bytes());
    k
}

fn time_key(micros: u64, exec: &str, version: u64) -> Vec<u8> {
    let mut k = key(TIME);
    push_position(&mut k, micros, exec, version);
    k
}

fn node_prefix(node: &str) -> Vec<u8> {
    let mut k = key(NODE);
    push_str(&mut k, node);
    k
}

fn meta_prefix(name: &str) -> Vec<u8> {
    let mut k = key(META);
    push_str(&mut k, name);
    k
}

/// A metadata value in an order that keeps numbers, and strings, in their own order.
fn push_value(buf: &mut Vec<u8>, v: &serde_json::Value) {
    use serde_json::Value as J;
    match v {
        J::Null => buf.push(0),
        J::Bool(b) => buf.extend([1, u8::from(*b)]),
        J::Number(n) => {
            buf.push(2);
            buf.extend(sortable_f64(n.as_f64().unwrap_or(0.0)));
        }
        J::String(s) => {
            buf.push(3);
            push_str(buf, s);
        }
        other => {
            buf.push(4);
            push_str(buf, &other.to_string());
        }
    }
}

fn sortable_f64(x: f64) -> [u8; 8] {
    let bits = x.to_bits();
    let flipped = if bits >> 63 == 1 {
        !bits
    } else {
        bits | (1 << 63)
    };
    flipped.to_be_bytes()
}

/// One checkpoint's header as the index keeps it.
#[derive(Debug, Clone, PartialEq)]
struct Head {
    exec: String,
    version: u64,
    micros: u64,
    node: String,
    metadata: Metadata,
}

impl Head {
    fn of(h: &CheckpointHeader) -> Self {
        Head {
            exec: h.execution_id.clone(),
            version: h.version,
            micros: micros(h.timestamp),
            node: h.node_name.clone(),
            metadata: h.metadata.clone(),
        }
    }

    /// Every entry of this header: `h`, `t`, `n` and one `m` per metadata key.
    fn entries(&self) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let mut pos = Vec::new();
        push_position(&mut pos, self.micros, &self.exec, self.version);
        let body = rmp_serde::to_vec(&(&self.node, &self.metadata))
            .map_err(|e| Error::codec("encoding a search index entry", e))?;
        let mut out = vec![
            (
                head_key(&self.exec, self.version),
                self.micros.to_be_bytes().to_vec(),
            ),
            ([&[TIME][..], &pos].concat(), body),
            ([node_prefix(&self.node), pos.clone()].concat(), Vec::new()),
        ];
        for (name, value) in &self.metadata {
            let mut k = meta_prefix(name);
            push_value(&mut k, value);
            k.extend(&pos);
            out.push((k, Vec::new()));
        }
        Ok(out)
    }

    fn from_time_entry(key: &[u8], value: &[u8]) -> Option<Self> {
        let (micros, exec, version) = read_position(key.strip_prefix(&[TIME])?)?;
        let (node, metadata): (String, Metadata) = rmp_serde::from_slice(value).ok()?;
        Some(Head {
            exec,
            version,
            micros,
            node,
            metadata,
        })
    }

    fn position(&self) -> Position {
        Position {
            nanos: u128::from(self.micros) * 1000,
            execution_id: self.exec.clone(),
            version: self.version,
        }
    }

    fn hit(self) -> SearchHit {
        SearchHit {
            id: CheckpointId::new_unchecked(self.exec.as_str().into(), self.version),
            node_name: self.node,
            timestamp: from_micros(self.micros),
            path: None,
            snippet: None,
        }
    }
}

fn micros(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// Where the index stands for one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Covered {
    /// The log's next sequence number when it was last indexed.
    next: u64,
    /// Live checkpoints below `next` then.
    live: u64,
}

impl Default for Covered {
    /// Nothing indexed: a log's first frame is 1.
    fn default() -> Self {
        Covered { next: 1, live: 0 }
    }
}

impl Covered {
    fn encode(self) -> Vec<u8> {
        let mut v = Vec::new();
        push_varint(&mut v, self.next);
        push_varint(&mut v, self.live);
        v
    }

    fn decode(bytes: &[u8]) -> Option<Self> {
        let (next, rest) = read_varint(bytes)?;
        let (live, _) = read_varint(rest)?;
        Some(Covered { next, live })
    }
}

/// The words of every string in `value` (map keys excepted, as the scan does).
pub(super) fn words_of(value: &rmpv::Value, out: &mut BTreeSet<String>) {
    match value {
        rmpv::Value::String(s) => add_words(&String::from_utf8_lossy(s.as_bytes()), out),
        rmpv::Value::Array(items) => items.iter().for_each(|v| words_of(v, out)),
        rmpv::Value::Map(entries) => entries.iter().for_each(|(_, v)| words_of(v, out)),
        _ => {}
    }
}

/// Adds the words of `text` (as [`search::words`] lowercases them), allocating only for a word
/// not yet in `out` (most words of a message are).
fn add_words(text: &str, out: &mut BTreeSet<String>) {
    for (start, end) in search::word_spans(text) {
        let word = &text[start..end];
        if word
            .bytes()
            .all(|b| b.is_ascii() && !b.is_ascii_uppercase())
        {
            if !out.contains(word) {
                out.insert(word.to_owned());
            }
        } else {
            out.insert(word.to_lowercase());
        }
    }
}

/// The words of the strings a delta adds.
pub(super) fn words_of_ops(ops: &[crate::codec::tree::Op]) -> BTreeSet<String> {
    use crate::codec::tree::Op;
    let mut out = BTreeSet::new();
    for op in ops {
        match op {
            Op::Set(_, v) => words_of(v, &mut out),
            Op::Splice(_, _, items) => items.iter().for_each(|v| words_of(v, &mut out)),
            Op::Remove(_) => {}
        }
    }
    out
}

// ---------------------------------------------------------------------------------------------
// Maintenance

/// What a save added, as the save hands it to the indexer, which splits its strings into
/// words off the save's path.
pub(super) enum Added {
    /// The operations of its delta on the state before it.
    Ops(Vec<crate::codec::tree::Op>),
    /// Its whole state (an execution's first save).
    State(Arc<rmpv::Value>),
}

impl Added {
    fn words(&self) -> BTreeSet<String> {
        match self {
            Added::Ops(ops) => words_of_ops(ops),
            Added::State(state) => {
                let mut out = BTreeSet::new();
                words_of(state, &mut out);
                out
            }
        }
    }
}

/// A landed save, as the indexer takes it: its header and what it added.
pub(super) struct SavedWords {
    head: Head,
    added: Added,
}

impl SavedWords {
    pub(super) fn new(
        cp: &crate::Checkpoint,
        header: &crate::codec::frame::SaveHeader,
        added: Added,
    ) -> Self {
        SavedWords {
            head: Head {
                exec: cp.execution_id.clone(),
                version: cp.version,
                micros: header.timestamp_us,
                node: header.node.clone(),
                metadata: header.metadata.clone(),
            },
            added,
        }
    }
}

enum Job {
    Saved(Vec<SavedWords>),
    Flush(oneshot::Sender<()>),
}

/// What one execution's indexing knows: where it stands and the words it has.
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
    /// Held while entries are computed and written, so the background writer and a catch-up
    /// never interleave on one execution.
    writing: tokio::sync::Mutex<HashMap<String, ExecWords>>,
    /// Logs this store appended to since the last catch-up: checked by every catch-up, when
    /// the others are checked less often (see [`Store::needs_full_check`]).
    moved: std::sync::Mutex<HashSet<String>>,
    /// When every log was last compared with the index.
    last_full_check: std::sync::Mutex<Option<std::time::Instant>>,
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

impl Store {
    fn search_table(&self) -> Option<&dyn SearchTable> {
        self.inner.traced.capabilities().search_table
    }

    /// Whether this store keeps a search index: read from the backend once, then known.
    pub(super) async fn index_on(&self) -> Result<bool> {
        if let Some(on) = *lock(&self.inner.search_index.on) {
            return Ok(on);
        }
        let on = match self.search_table() {
            Some(table) => table.get_index(&[ON_KEY.to_vec()]).await?[0].is_some(),
            None => false,
        };
        *lock(&self.inner.search_index.on) = Some(on);
        Ok(on)
    }

    /// Whether the store is indexed now, read again from the backend: another store (in this
    /// process or another) may have built or dropped the index since. A search and gc ask
    /// this; saves go by [`Store::index_on`], and the indexer checks before it writes.
    async fn index_on_now(&self) -> Result<bool> {
        let on = match self.search_table() {
            Some(table) => table.get_index(&[ON_KEY.to_vec()]).await?[0].is_some(),
            None => false,
        };
        *lock(&self.inner.search_index.on) = Some(on);
        Ok(on)
    }

    /// Whether this store has not yet read whether it is indexed.
    pub(super) fn search_index_unknown(&self) -> bool {
        lock(&self.inner.search_index.on).is_none()
    }

    /// Whether saves should compute the words they add (the store is known to be indexed).
    pub(super) fn indexing_saves(&self) -> bool {
        lock(&self.inner.search_index.on).unwrap_or(false)
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
        let mut cache = self.inner.search_index.writing.lock().await;
        cache.clear();
        table.clear_index().await?;
        table
            .write_index(vec![(ON_KEY.to_vec(), vec![FORMAT])], Vec::new())
            .await?;
        *lock(&self.inner.search_index.on) = Some(true);
        let mut report = ReindexReport::default();
        for exec in self.execution_logs().await? {
            report.checkpoints += self.index_execution(table, &exec, &mut cache).await?;
            report.executions += 1;
        }
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
        let mut cache = self.inner.search_index.writing.lock().await;
        cache.clear();
        table.clear_index().await?;
        *lock(&self.inner.search_index.on) = Some(false);
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
            self.inner.search_index.flush_now.notify_one();
            let _ = rx.await;
        }
    }

    /// Sends a job, starting the indexer if there is none (or its runtime went away). Returns
    /// whether it was sent.
    async fn send_job(&self, job: Job) -> bool {
        let sender = {
            let mut queue = lock(&self.inner.search_index.queue);
            match &*queue {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    let store = Store {
                        inner: self.inner.clone(),
                    };
                    // The indexer holds the store only weakly, so dropping the last store ends it.
                    let weak = Arc::downgrade(&store.inner);
                    drop(store);
                    let flush_now = self.inner.search_index.flush_now.clone();
                    tokio::spawn(run_indexer(weak, rx, flush_now));
                    *queue = Some(tx.clone());
                    tx
                }
            }
        };
        sender.send(job).await.is_ok()
    }

    /// Indexes the saves of one batch where the index stands just below them; leaves the rest
    /// to the next catch-up.
    async fn write_saved(&self, table: &dyn SearchTable, saved: Vec<SavedWords>) -> Result<()> {
        let mut cache = self.inner.search_index.writing.lock().await;
        let execs: BTreeSet<&str> = saved.iter().map(|s| s.head.exec.as_str()).collect();
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
            *lock(&self.inner.search_index.on) = Some(false);
            cache.clear();
            return Ok(());
        }
        for (exec, covered) in missing.into_iter().zip(found) {
            let covered = covered
                .as_deref()
                .and_then(Covered::decode)
                .unwrap_or_default();
            let stale = cache.get(exec).is_none_or(|c| c.covered != covered);
            if stale {
                let words = self.read_words(table, exec).await?;
                remember(&mut cache, exec, ExecWords { covered, words });
            }
        }
        let mut puts = Vec::new();
        let mut touched = Vec::new();
        for s in saved {
            let Some(entry) = cache.get_mut(&s.head.exec) else {
                continue;
            };
            if entry.covered.next != s.head.version {
                continue;
            }
            let h = &s.head;
            puts.extend(h.entries()?);
            let mut first = Vec::new();
            for w in s.added.words() {
                if !entry.words.contains(&w) {
                    entry.words.insert(w.clone());
                    first.push(w);
                }
            }
            puts.extend(word_entries(&h.exec, &first, h.version));
            entry.covered = Covered {
                next: h.version + 1,
                live: entry.covered.live + 1,
            };
            puts.push((covered_key(&h.exec), entry.covered.encode()));
            touched.push(h.exec.clone());
        }
        if puts.is_empty() {
            return Ok(());
        }
        if let Err(e) = table.write_index(puts, Vec::new()).await {
            // What this process believes was written is not: read it again next time.
            for exec in touched {
                cache.remove(&exec);
            }
            return Err(e);
        }
        Ok(())
    }

    async fn read_words(&self, table: &dyn SearchTable, exec: &str) -> Result<HashSet<String>> {
        let mut prefix = key(DICT);
        push_str(&mut prefix, exec);
        let mut words = HashSet::new();
        for (_, v) in scan_all(table, &prefix).await? {
            words.extend(dict_words(&v));
        }
        Ok(words)
    }

    /// Notes logs this store appended to, for the next catch-up (indexed stores only).
    pub(super) fn note_moved_for_index(&self, logs: &[String]) {
        if self.indexing_saves() {
            lock(&self.inner.search_index.moved).extend(
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
        let last = *lock(&self.inner.search_index.last_full_check);
        match last {
            Some(t) if caps.side_table.is_some_and(|s| s.gets_beat_scans()) => {
                t.elapsed() >= FULL_CHECK_EVERY
            }
            _ => true,
        }
    }

    /// Brings the index up to date with the logs: executions that moved are indexed from
    /// where the index stopped (or again, when they lost checkpoints), those gone are dropped.
    async fn catch_up(&self, table: &dyn SearchTable) -> Result<()> {
        self.flush_index().await;
        let moved: HashSet<String> = std::mem::take(&mut *lock(&self.inner.search_index.moved));
        let result = if self.needs_full_check() {
            let started = std::time::Instant::now();
            let done = self.catch_up_all(table).await;
            if done.is_ok() {
                *lock(&self.inner.search_index.last_full_check) = Some(started);
            }
            done
        } else {
            self.catch_up_moved(table, &moved).await
        };
        if result.is_err() {
            lock(&self.inner.search_index.moved).extend(moved);
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
        let mut cache = self.inner.search_index.writing.lock().await;
        for (exec, c) in execs.into_iter().zip(covered) {
            let tail = self.inner.traced.next_seq(exec).await?;
            let c = c.as_deref().and_then(Covered::decode);
            if c.is_none_or(|c| c.next != tail) {
                self.index_execution(table, exec, &mut cache).await?;
            }
        }
        Ok(())
    }

    /// Compares every log with the index and catches up those behind; drops the entries of
    /// executions whose log is gone.
    async fn catch_up_all(&self, table: &dyn SearchTable) -> Result<()> {
        let tails = self.log_tails().await?;
        let covered: HashMap<String, Covered> = scan_all(table, &[COVERED])
            .await?
            .into_iter()
            .filter_map(|(k, v)| {
                let (exec, _) = read_str(&k[1..])?;
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
        let mut cache = self.inner.search_index.writing.lock().await;
        for exec in behind {
            self.index_execution(table, exec, &mut cache).await?;
        }
        for exec in gone {
            let deletes = self.entries_of(table, exec).await?;
            table.write_index(Vec::new(), deletes).await?;
            cache.remove(exec.as_str());
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

    /// Indexes `exec` from where the index stands, or from scratch when it lost checkpoints
    /// below that; returns the checkpoints indexed.
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
        let (mut covered, mut words, mut deletes) = match stored {
            Some(c) if c.next <= next && live_below(c.next) == c.live => {
                (c, self.read_words(table, exec).await?, Vec::new())
            }
            _ => (
                Covered::default(),
                HashSet::new(),
                self.entries_of(table, exec).await?,
            ),
        };
        let mut puts = Vec::new();
        let mut indexed = 0;
        let mut new: Vec<&CheckpointHeader> =
            heads.iter().filter(|h| h.version >= covered.next).collect();
        new.sort_by_key(|h| h.version);
        for h in new {
            puts.extend(self.entries_of_checkpoint(h, &mut words).await?);
            covered.live += 1;
            indexed += 1;
            if puts.len() >= SCAN_CHUNK {
                // Bound memory on long executions: what is written stays valid, since `c` is
                // written last.
                table
                    .write_index(std::mem::take(&mut puts), std::mem::take(&mut deletes))
                    .await?;
            }
        }
        covered.next = next;
        puts.push((covered_key(exec), covered.encode()));
        table.write_index(puts, deletes).await?;
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

    /// Brings the search index up to date with the logs, when the store is indexed: what gc
    /// runs so that the entries of deleted checkpoints go with them.
    pub(super) async fn reclaim_index(&self) -> Result<()> {
        match self.search_table() {
            Some(table) if self.index_on_now().await? => self.catch_up(table).await,
            _ => Ok(()),
        }
    }

    /// Every entry of `exec`'s: its words both ways, its headers in every order, its `c`.
    async fn entries_of(&self, table: &dyn SearchTable, exec: &str) -> Result<Vec<Vec<u8>>> {
        let mut out = vec![covered_key(exec)];
        let mut dict = key(DICT);
        push_str(&mut dict, exec);
        for (k, v) in scan_all(table, &dict).await? {
            out.extend(dict_words(&v).map(|w| word_key(&w, exec)));
            out.push(k);
        }
        let mut head = key(HEAD);
        push_str(&mut head, exec);
        let heads = scan_all(table, &head).await?;
        // Every `h` key goes, even one that does not decode.
        out.extend(heads.iter().map(|(k, _)| k.clone()));
        let times = time_keys(exec, head.len(), &heads);
        let bodies = table.get_index(&times).await?;
        for (time, body) in times.into_iter().zip(bodies) {
            if let Some(h) = body.and_then(|b| Head::from_time_entry(&time, &b)) {
                out.extend(h.entries()?.into_iter().map(|(k, _)| k));
            }
            out.push(time);
        }
        Ok(out)
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
        self.flush_index().await;
        let mut problems = Vec::new();
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
            let mut held: BTreeMap<Vec<u8>, Vec<u8>> = BTreeMap::new();
            for k in self.entries_of(table, exec).await? {
                held.insert(k, Vec::new());
            }
            let keys: Vec<Vec<u8>> = held.keys().cloned().collect();
            for (k, v) in keys.iter().zip(table.get_index(&keys).await?) {
                held.insert(k.clone(), v.unwrap_or_default());
            }
            held.remove(&covered_key(exec));
            if held != expected {
                let missing = expected.keys().filter(|k| !held.contains_key(*k)).count();
                let extra = held.keys().filter(|k| !expected.contains_key(*k)).count();
                let wrong = expected
                    .iter()
                    .filter(|(k, v)| held.get(*k).is_some_and(|h| h != *v))
                    .count();
                problems.push(format!(
                    "the search index of execution {exec:?} differs from its log ({missing} \
                     entries missing, {extra} extra, {wrong} wrong): run `ckpt reindex`"
                ));
            }
        }
        Ok(problems)
    }

    /// The entries of `exec` a rebuild would write (less its `c`).
    async fn expected_entries(&self, exec: &str) -> Result<BTreeMap<Vec<u8>, Vec<u8>>> {
        let mut heads = self.live_heads(exec).await?;
        heads.sort_by_key(|h| h.version);
        let mut out = BTreeMap::new();
        let mut words = HashSet::new();
        for h in &heads {
            out.extend(self.entries_of_checkpoint(h, &mut words).await?);
        }
        Ok(out)
    }

    /// The entries of one checkpoint, read from its state: its header, and the words its
    /// execution had not held before (`words`, which it extends).
    async fn entries_of_checkpoint(
        &self,
        h: &CheckpointHeader,
        words: &mut HashSet<String>,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let cp = self.load(&h.id).await?;
        let mut found = BTreeSet::new();
        words_of(cp.state_value(), &mut found);
        let first: Vec<String> = found
            .into_iter()
            .filter(|w| words.insert(w.clone()))
            .collect();
        let mut out = word_entries(&h.execution_id, &first, h.version);
        out.extend(Head::of(h).entries()?);
        Ok(out)
    }

    // -----------------------------------------------------------------------------------------
    // Queries

    /// Answers `query` from the index, or `None` when the store keeps none.
    pub(super) async fn search_indexed(&self, query: &SearchQuery) -> Result<Option<SearchPage>> {
        let Some(table) = self.search_table() else {
            return Ok(None);
        };
        if query.scan_only || !self.index_on_now().await? || self.crypto().await?.cipher().is_some()
        {
            return Ok(None);
        }
        self.catch_up(table).await?;
        let page = if query.terms.is_empty() {
            self.search_headers(table, query).await?
        } else {
            match self.text_candidates(table, query).await? {
                Some(candidates) => self.search_text(table, query, candidates).await?,
                None => return Ok(None),
            }
        };
        Ok(Some(page))
    }

    /// Per execution, the lowest version whose state can hold every word of the query; `None`
    /// when no word is selective enough to drive the search.
    async fn text_candidates(
        &self,
        table: &dyn SearchTable,
        query: &SearchQuery,
    ) -> Result<Option<HashMap<String, u64>>> {
        let mut words: Vec<&str> = query.terms.iter().flat_map(|t| t.words()).collect();
        words.sort_unstable();
        words.dedup();
        let mut sets: Vec<HashMap<String, u64>> = Vec::new();
        for w in words {
            let mut prefix = key(WORD);
            prefix.extend(w.as_bytes());
            let mut firsts: HashMap<String, u64> = HashMap::new();
            let mut seen = 0;
            let mut after: Option<Vec<u8>> = None;
            let mut too_many = false;
            loop {
                let chunk = table
                    .scan_index(&prefix, after.as_deref(), SCAN_CHUNK)
                    .await?;
                let done = chunk.len() < SCAN_CHUNK;
                for (k, v) in &chunk {
                    let Some((_, rest)) = read_str(&k[1..]) else {
                        continue;
                    };
                    let (Some((exec, _)), Some((version, _))) = (read_str(rest), read_varint(v))
                    else {
                        continue;
                    };
                    if query
                        .execution_prefix
                        .as_ref()
                        .is_some_and(|p| !exec.starts_with(p.as_str()))
                    {
                        continue;
                    }
                    let first = firsts.entry(exec).or_insert(version);
                    *first = (*first).min(version);
                }
                seen += chunk.len();
                after = chunk.last().map(|(k, _)| k.clone());
                if done {
                    break;
                }
                if seen > MAX_WORD_POSTINGS {
                    too_many = true;
                    break;
                }
            }
            if !too_many {
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

    /// Reads the candidates' states, newest first, until a page of matches is full.
    async fn search_text(
        &self,
        table: &dyn SearchTable,
        query: &SearchQuery,
        candidates: HashMap<String, u64>,
    ) -> Result<SearchPage> {
        // The candidates' headers from the index (no projection is folded), past each one's
        // lowest possible version; several executions at a time, since each is a round trip
        // to a server backend.
        let heads_of = |(exec, first): (String, u64)| async move {
            let mut prefix = key(HEAD);
            push_str(&mut prefix, &exec);
            let after = first.checked_sub(1).map(|v| {
                let mut k = prefix.clone();
                k.extend(v.to_be_bytes());
                k
            });
            let found = scan_from(table, &prefix, after).await?;
            let times = time_keys(&exec, prefix.len(), &found);
            let bodies = table.get_index(&times).await?;
            Ok::<_, Error>(
                times
                    .iter()
                    .zip(bodies)
                    .filter_map(|(k, v)| Head::from_time_entry(k, &v?))
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

    /// A page of checkpoints that pass the header conditions, from the headers the index keeps
    /// in time order, by node or by a metadata value.
    async fn search_headers(
        &self,
        table: &dyn SearchTable,
        query: &SearchQuery,
    ) -> Result<SearchPage> {
        let limit = query.page_size();
        let mut hits: Vec<Head> = Vec::new();
        let keep = |h: &Head| self.head_passes(query, h);
        // A range on a metadata value, when it is selective, is read whole (keys only) and
        // sorted; headers are read in that order until the page is full.
        if let Some(mut times) = self.range_times(table, query).await? {
            times.sort_unstable();
            let mut more = false;
            'pages: for chunk in times.chunks(limit * 2 + 8) {
                let bodies = table.get_index(chunk).await?;
                let heads = chunk
                    .iter()
                    .zip(bodies)
                    .filter_map(|(k, v)| Head::from_time_entry(k, &v?));
                for h in heads.filter(|h| keep(h)) {
                    if hits.len() == limit {
                        more = true;
                        break 'pages;
                    }
                    hits.push(h);
                }
            }
            return Ok(header_page(hits, more));
        }
        // Otherwise walk an order that is newest first: by node or by a metadata equality
        // when there is one, else every checkpoint.
        let prefix = self.ordered_prefix(query);
        let mut after = self.start_after(query, &prefix);
        let mut more = false;
        'walk: loop {
            let chunk = table
                .scan_index(&prefix, after.as_deref(), SCAN_CHUNK.min(limit * 8 + 8))
                .await?;
            let done = chunk.is_empty();
            after = chunk.last().map(|(k, _)| k.clone());
            let heads = self.heads_of(table, &prefix, chunk).await?;
            for h in heads {
                if query
                    .since
                    .is_some_and(|t| u128::from(h.micros) * 1000 < search::nanos(t))
                {
                    break 'walk;
                }
                if !keep(&h) {
                    continue;
                }
                if hits.len() == limit {
                    more = true;
                    break 'walk;
                }
                hits.push(h);
            }
            if done {
                break;
            }
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
            && query.time_matches(from_micros(h.micros))
            && query.metadata_matches(&h.metadata)
    }

    /// The key prefix whose entries list, newest first, a superset of the matches.
    fn ordered_prefix(&self, query: &SearchQuery) -> Vec<u8> {
        // A metadata value is usually rarer than a node (a graph has few nodes).
        if let Some(c) = query.metadata.iter().find(|c| c.op == Op::Eq) {
            let mut k = meta_prefix(&c.key);
            push_value(&mut k, &c.value);
            return k;
        }
        if let Some(node) = &query.node {
            return node_prefix(node);
        }
        key(TIME)
    }

    /// Where to start walking `prefix`: after the cursor, or at the `until` bound.
    fn start_after(&self, query: &SearchQuery, prefix: &[u8]) -> Option<Vec<u8>> {
        if let Some(c) = &query.cursor {
            let mut k = prefix.to_vec();
            push_position(&mut k, (c.nanos / 1000) as u64, &c.execution_id, c.version);
            return Some(k);
        }
        query.until.map(|t| {
            // Every key at or after `until` sorts before this one (an id never starts 0xff).
            let mut k = prefix.to_vec();
            k.extend((u64::MAX - micros(t)).to_be_bytes());
            k.push(0xff);
            k
        })
    }

    /// The headers behind entries of an ordered prefix (read from `t` unless they are `t`).
    async fn heads_of(
        &self,
        table: &dyn SearchTable,
        prefix: &[u8],
        chunk: Vec<(Vec<u8>, Vec<u8>)>,
    ) -> Result<Vec<Head>> {
        if prefix == [TIME] {
            return Ok(chunk
                .iter()
                .filter_map(|(k, v)| Head::from_time_entry(k, v))
                .collect());
        }
        let times: Vec<Vec<u8>> = chunk
            .iter()
            .map(|(k, _)| [&[TIME][..], &k[prefix.len()..]].concat())
            .collect();
        let bodies = table.get_index(&times).await?;
        Ok(times
            .iter()
            .zip(bodies)
            .filter_map(|(k, v)| Head::from_time_entry(k, &v?))
            .collect())
    }

    /// The `t` keys (in result order when sorted) of the checkpoints whose metadata falls in
    /// the query's first range, when there are few enough of them (no equality or node
    /// condition, which walk in order instead).
    async fn range_times(
        &self,
        table: &dyn SearchTable,
        query: &SearchQuery,
    ) -> Result<Option<Vec<Vec<u8>>>> {
        if query.node.is_some() || query.metadata.iter().any(|c| c.op == Op::Eq) {
            return Ok(None);
        }
        let Some(c) = query
            .metadata
            .iter()
            .find(|c| matches!(c.op, Op::Lt | Op::Le | Op::Gt | Op::Ge))
        else {
            return Ok(None);
        };
        let tag = match &c.value {
            serde_json::Value::Number(_) => 2,
            serde_json::Value::String(_) => 3,
            _ => return Ok(None),
        };
        let mut prefix = meta_prefix(&c.key);
        prefix.push(tag);
        let mut bound = meta_prefix(&c.key);
        push_value(&mut bound, &c.value);
        let after = matches!(c.op, Op::Gt | Op::Ge).then(|| {
            // Just below every entry with the bound's value.
            let mut k = bound.clone();
            decrement(&mut k);
            k
        });
        let below = matches!(c.op, Op::Lt | Op::Le);
        let mut out = Vec::new();
        let mut after = after;
        loop {
            let chunk = table
                .scan_index(&prefix, after.as_deref(), SCAN_CHUNK)
                .await?;
            let done = chunk.len() < SCAN_CHUNK;
            after = chunk.last().map(|(k, _)| k.clone());
            let mut past = false;
            for (k, _) in &chunk {
                if below && k.as_slice() > bound.as_slice() && !k.starts_with(&bound) {
                    past = true;
                    break;
                }
                // The position is the key's last part: find it after the value.
                if let Some(pos) = position_after_value(&k[prefix.len() - 1..]) {
                    out.push([&[TIME][..], pos].concat());
                }
            }
            if out.len() > MAX_RANGE_POSTINGS {
                return Ok(None);
            }
            if done || past {
                break;
            }
        }
        Ok(Some(out))
    }
}

/// The position bytes after an encoded metadata value (tags 2 and 3).
fn position_after_value(value_and_pos: &[u8]) -> Option<&[u8]> {
    let (tag, rest) = value_and_pos.split_first()?;
    match tag {
        2 => rest.get(8..),
        3 => read_str(rest).map(|(_, r)| r),
        _ => None,
    }
}

/// The greatest key below `k` that still precedes every extension of `k` (for an exclusive
/// start): `k` less one in its last byte, followed by `0xff`s.
fn decrement(k: &mut Vec<u8>) {
    while let Some(last) = k.pop() {
        if last > 0 {
            k.push(last - 1);
            k.extend([0xff; 16]);
            return;
        }
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

/// The entries of the words `version` of `exec` was the first to hold: one `w` each, and one
/// `d` listing them (none when there are none).
fn word_entries(exec: &str, words: &[String], version: u64) -> Vec<(Vec<u8>, Vec<u8>)> {
    if words.is_empty() {
        return Vec::new();
    }
    let mut v = Vec::new();
    push_varint(&mut v, version);
    let mut out: Vec<(Vec<u8>, Vec<u8>)> = words
        .iter()
        .map(|w| (word_key(w, exec), v.clone()))
        .collect();
    out.push((dict_key(exec, version), words.join("\0").into_bytes()));
    out
}

fn remember(cache: &mut HashMap<String, ExecWords>, exec: &str, words: ExecWords) {
    if cache.len() >= CACHED_EXECUTIONS && !cache.contains_key(exec) {
        cache.clear();
    }
    cache.insert(exec.to_owned(), words);
}

/// The `t` keys that `exec`'s `h` entries (keys `head_len` bytes of prefix, then the version)
/// point at; entries that do not decode are left out.
fn time_keys(exec: &str, head_len: usize, heads: &[(Vec<u8>, Vec<u8>)]) -> Vec<Vec<u8>> {
    heads
        .iter()
        .filter_map(|(k, v)| {
            let (version, _) = read_u64(k.get(head_len..)?)?;
            let (micros, _) = read_u64(v)?;
            Some(time_key(micros, exec, version))
        })
        .collect()
}

async fn scan_all(table: &dyn SearchTable, prefix: &[u8]) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    scan_from(table, prefix, None).await
}

/// Every entry under `prefix` after `after` (from the start of the prefix without one).
async fn scan_from(
    table: &dyn SearchTable,
    prefix: &[u8],
    mut after: Option<Vec<u8>>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    let mut out = Vec::new();
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
        // entries); a search's flush wakes it at once.
        let mut jobs = vec![job];
        if !matches!(jobs[0], Job::Flush(_)) {
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
        for job in jobs {
            match job {
                Job::Saved(s) => saved.extend(s),
                Job::Flush(tx) => flushes.push(tx),
            }
        }
        if let Some(table) = store.search_table() {
            if let Err(e) = store.write_saved(table, saved).await {
                tracing::warn!(
                    error = %e,
                    "ckpt: the search index missed saves; the next search catches up"
                );
            }
        }
        for tx in flushes {
            let _ = tx.send(());
        }
    }
}

/// Decodes an entry as the index reads it from its table, by the family its key names: what
/// the fuzz target `search_index` feeds. Bytes that are not an entry decode to nothing (the
/// index is checked against the logs, never trusted); it must never panic. Returns how many
/// parts decoded.
pub(crate) fn decode_index_entry(key: &[u8], value: &[u8]) -> usize {
    let Some((family, rest)) = key.split_first() else {
        return 0;
    };
    let mut parts = 0;
    let mut count = |ok: bool| parts += usize::from(ok);
    match *family {
        COVERED => {
            count(read_str(rest).is_some());
            count(Covered::decode(value).is_some());
        }
        DICT => {
            if let Some((_, version)) = read_str(rest) {
                count(read_u64(version).is_some());
            }
            count(dict_words(value).count() > 0);
        }
        WORD => {
            if let Some((_, exec)) = read_str(rest) {
                count(read_str(exec).is_some());
            }
            count(read_varint(value).is_some());
        }
        HEAD => {
            if let Some((_, version)) = read_str(rest) {
                count(read_u64(version).is_some());
            }
            count(read_u64(value).is_some());
        }
        TIME => count(Head::from_time_entry(key, value).is_some()),
        NODE => {
            if let Some((_, pos)) = read_str(rest) {
                count(read_position(pos).is_some());
            }
        }
        META => {
            if let Some((_, value_and_pos)) = read_str(rest) {
                if let Some(pos) = position_after_value(value_and_pos) {
                    count(read_position(pos).is_some());
                }
            }
        }
        _ => {}
    }
    parts
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_sort_as_encoded_and_read_back() {
        let names = ["", "a", "a\0", "a\0b", "ab", "b", "é"];
        let mut encoded: Vec<Vec<u8>> = names
            .iter()
            .map(|n| {
                let mut k = Vec::new();
                push_str(&mut k, n);
                k.push(7);
                k
            })
            .collect();
        let sorted = encoded.clone();
        encoded.sort();
        assert_eq!(encoded, sorted, "encodings keep the strings' order");
        for (n, k) in names.iter().zip(&sorted) {
            let (back, rest) = read_str(k).expect("reads back");
            assert_eq!((back.as_str(), rest), (*n, &[7u8][..]));
        }
        assert_eq!(read_str(&[b'a', 0, 2]), None, "a bad escape is refused");
        assert_eq!(read_str(b"abc"), None, "an unterminated string is refused");
    }

    #[test]
    fn numbers_and_positions_sort_as_results_do() {
        let xs = [-1e9, -2.5, -0.0, 0.0, 1.0, 1.5, 10.0, 1e12];
        let keys: Vec<[u8; 8]> = xs.iter().map(|x| sortable_f64(*x)).collect();
        let mut sorted = keys.clone();
        sorted.sort();
        assert_eq!(keys, sorted);
        let mut a = Vec::new();
        push_position(&mut a, 2_000, "x", 1);
        let mut b = Vec::new();
        push_position(&mut b, 1_000, "a", 9);
        assert!(a < b, "newer first whatever the execution");
        assert_eq!(read_position(&a), Some((2_000, "x".into(), 1)));
        for n in [0, 1, 127, 128, 300, u64::MAX] {
            let mut v = Vec::new();
            push_varint(&mut v, n);
            assert_eq!(read_varint(&v), Some((n, &[][..])));
        }
        assert_eq!(read_varint(&[0x80; 11]), None);
    }

    #[test]
    fn entries_decode_and_garbage_decodes_to_nothing() {
        let head = Head {
            exec: "e\0x".into(),
            version: 3,
            micros: 99,
            node: "n".into(),
            metadata: [("step".to_owned(), serde_json::json!(2))].into(),
        };
        for (k, v) in head.entries().expect("entries") {
            assert!(decode_index_entry(&k, &v) > 0, "{k:?}");
        }
        for (k, v) in word_entries("e", &["ab".into(), "cd".into()], 4) {
            assert!(decode_index_entry(&k, &v) > 0, "{k:?}");
        }
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 40) as usize;
            let bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            let split = if len == 0 { 0 } else { (next() as usize) % len };
            let mut key = bytes[..split].to_vec();
            if let Some(first) = key.first_mut() {
                *first = b"cdwhtnm"[(*first as usize) % 7];
            }
            decode_index_entry(&key, &bytes[split..]);
        }
    }
}
