//! Reading the index back: the tail as one in-memory overlay, the main index's blocks, the
//! walk of every header newest first, and the fold that merges the two.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;

use super::format::{
    self, read_str, Head, MainKey, Segment, SegmentBuilder, MAIN_HEADS, MAIN_WORDS, TAIL,
};
use super::{lock, ExecEntries};
use crate::backend::SearchTable;
use crate::error::Result;

/// Postings per word block of a main index.
const WORD_BLOCK: usize = 8192;
/// Headers per header block of a main index.
const HEAD_BLOCK: usize = 256;
/// Blocks read per scan call while walking.
const BLOCKS_PER_READ: usize = 4;
/// Entries per write while a fold writes its blocks.
const WRITE_CHUNK: usize = 256;

/// A main index, as the search log's frame names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct MainRef {
    /// The frame's sequence number.
    pub seq: u64,
    pub nonce: u64,
    /// Its size in bytes (keys and values), for the fold's schedule.
    pub bytes: u64,
}

impl MainRef {
    pub(super) fn frame(&self) -> Vec<u8> {
        let mut f = b"ckpt-search-main".to_vec();
        f.extend(self.nonce.to_be_bytes());
        f.extend(self.bytes.to_be_bytes());
        f
    }

    pub(super) fn decode(seq: u64, frame: &[u8]) -> Option<Self> {
        let rest = frame.strip_prefix(b"ckpt-search-main")?;
        let (nonce, rest) = format::read_u64(rest)?;
        let (bytes, rest) = format::read_u64(rest)?;
        rest.is_empty().then_some(MainRef { seq, nonce, bytes })
    }

    fn key(&self) -> MainKey {
        MainKey(self.nonce)
    }
}

/// What a store last read of its index, so that a search reads only what changed.
#[derive(Default)]
pub(crate) struct Cache {
    main: std::sync::Mutex<Option<MainRef>>,
    execs: std::sync::Mutex<Option<(u64, Arc<Vec<String>>)>>,
    overlay: tokio::sync::Mutex<Arc<Overlay>>,
    last_tail_micros: std::sync::atomic::AtomicU64,
}

impl Cache {
    pub(super) fn clear(&self) {
        *lock(&self.main) = None;
        *lock(&self.execs) = None;
        if let Ok(mut o) = self.overlay.try_lock() {
            *o = Arc::default();
        }
    }

    pub(super) fn main_ref(&self) -> Option<MainRef> {
        *lock(&self.main)
    }

    /// The execution table of main index `m`.
    pub(super) async fn main_execs(
        &self,
        table: &dyn SearchTable,
        m: &MainRef,
    ) -> Result<Arc<Vec<String>>> {
        *lock(&self.main) = Some(*m);
        if let Some((nonce, execs)) = &*lock(&self.execs) {
            if *nonce == m.nonce {
                return Ok(execs.clone());
            }
        }
        let execs = Arc::new(read_execs(table, m).await?.0);
        *lock(&self.execs) = Some((m.nonce, execs.clone()));
        Ok(execs)
    }

    /// The tail, applied in order: the one last read when no segment came or went, extended
    /// when segments only came after it, decoded whole otherwise.
    pub(super) async fn overlay(&self, table: &dyn SearchTable) -> Result<Arc<Overlay>> {
        let mut cached = self.overlay.lock().await;
        let tail = super::scan_all(table, &[TAIL]).await?;
        let same = tail.len() == cached.keys.len()
            && tail.iter().zip(&cached.keys).all(|((k, _), c)| k == c);
        if same {
            return Ok(cached.clone());
        }
        let extends = tail.len() > cached.keys.len()
            && tail.iter().zip(&cached.keys).all(|((k, _), c)| k == c);
        let (mut next, skip) = if extends {
            ((**cached).clone(), cached.keys.len())
        } else {
            (Overlay::default(), 0)
        };
        for (k, v) in &tail[skip..] {
            next.bytes += (k.len() + v.len()) as u64;
            next.apply(k, Segment::decode(v, None).as_ref());
        }
        next.finish();
        if let Some((last, _)) = tail.last().and_then(|(k, _)| format::read_u64(&k[1..])) {
            self.note_tail_micros(last);
        }
        *cached = Arc::new(next);
        Ok(cached.clone())
    }

    /// The time part of a new tail segment's key: after every segment this store wrote or saw,
    /// so that its segments apply in the order it wrote them.
    pub(super) fn next_tail_micros(&self, now: u64) -> u64 {
        let mut out = now;
        let _ = self.last_tail_micros.fetch_update(
            std::sync::atomic::Ordering::AcqRel,
            std::sync::atomic::Ordering::Acquire,
            |last| {
                out = now.max(last + 1);
                Some(out)
            },
        );
        out
    }

    fn note_tail_micros(&self, seen: u64) {
        self.last_tail_micros
            .fetch_max(seen, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Every key under `prefix`.
async fn scan_keys(table: &dyn SearchTable, prefix: &[u8]) -> Result<Vec<Vec<u8>>> {
    Ok(super::scan_all(table, prefix)
        .await?
        .into_iter()
        .map(|(k, _)| k)
        .collect())
}

/// Every tail segment in key order (`None` where one does not decode).
pub(super) async fn read_tail(
    table: &dyn SearchTable,
) -> Result<Vec<(Vec<u8>, Option<Arc<Segment>>)>> {
    Ok(super::scan_all(table, &[TAIL])
        .await?
        .into_iter()
        .map(|(k, v)| (k, Segment::decode(&v, None).map(Arc::new)))
        .collect())
}

/// One execution's data in the tail.
#[derive(Debug, Clone, Default)]
struct ExecData {
    heads: BTreeMap<u64, Head>,
    words: HashMap<String, u64>,
}

/// The tail, applied segment by segment: what it says about each execution, and which
/// executions it resets (whose main-index data no longer counts).
#[derive(Debug, Clone, Default)]
pub(crate) struct Overlay {
    keys: Vec<Vec<u8>>,
    pub(super) reset: HashSet<String>,
    per_exec: HashMap<String, ExecData>,
    /// Derived by `finish`: every header in result order, and postings by word.
    heads: Vec<Head>,
    words: BTreeMap<String, Vec<(String, u64)>>,
    /// About how many bytes the tail holds.
    pub(super) bytes: u64,
}

impl Overlay {
    /// The overlay of `tail` (segments in key order).
    pub(super) fn build(tail: &[(Vec<u8>, Option<Arc<Segment>>)]) -> Self {
        let mut o = Overlay::default();
        for (k, s) in tail {
            o.apply(k, s.as_deref());
        }
        o.finish();
        o
    }

    fn apply(&mut self, key: &[u8], seg: Option<&Segment>) {
        self.keys.push(key.to_vec());
        let Some(seg) = seg else { return };
        for r in &seg.resets {
            if let Some(exec) = seg.execs.get(*r as usize) {
                self.reset.insert(exec.clone());
                self.per_exec.remove(exec);
            }
        }
        for h in &seg.heads {
            if let Some(head) = seg.head(h) {
                let data = self.per_exec.entry(head.exec.clone()).or_default();
                data.heads.insert(head.version, head);
            }
        }
        for (word, postings) in &seg.words {
            for (exec, version) in postings {
                let Some(exec) = seg.execs.get(*exec as usize) else {
                    continue;
                };
                let data = self.per_exec.entry(exec.clone()).or_default();
                let v = data.words.entry(word.clone()).or_insert(*version);
                *v = (*v).min(*version);
            }
        }
    }

    fn finish(&mut self) {
        let mut heads: Vec<Head> = self
            .per_exec
            .values()
            .flat_map(|d| d.heads.values().cloned())
            .collect();
        heads.sort_by(|a, b| a.order(b));
        self.heads = heads;
        let mut words: BTreeMap<String, Vec<(String, u64)>> = BTreeMap::new();
        for (exec, d) in &self.per_exec {
            for (w, v) in &d.words {
                words.entry(w.clone()).or_default().push((exec.clone(), *v));
            }
        }
        self.words = words;
    }

    /// Calls `add` with every posting of a word starting with `prefix`.
    pub(super) fn postings(&self, prefix: &str, mut add: impl FnMut(&str, u64)) {
        for (_, postings) in self
            .words
            .range(prefix.to_owned()..)
            .take_while(|(w, _)| w.starts_with(prefix))
        {
            for (exec, v) in postings {
                add(exec, *v);
            }
        }
    }

    /// Adds what the tail holds to `out`, after what the main index held (which a reset
    /// replaces).
    pub(super) fn add_contents(&self, out: &mut BTreeMap<String, ExecEntries>) {
        for exec in &self.reset {
            out.remove(exec);
        }
        for (exec, d) in &self.per_exec {
            let e = out.entry(exec.clone()).or_default();
            e.heads.extend(d.heads.iter().map(|(v, h)| (*v, h.clone())));
            for (w, v) in &d.words {
                let first = e.words.entry(w.clone()).or_insert(*v);
                *first = (*first).min(*v);
            }
        }
    }
}

/// The postings of every word starting with `prefix` in main index `m`: (execution in `execs`,
/// first version). `None` when there are more than `max`.
pub(super) async fn main_postings(
    table: &dyn SearchTable,
    m: &MainRef,
    execs: &[String],
    prefix: &str,
    max: usize,
) -> Result<Option<Vec<(u32, u64)>>> {
    let base = m.key().part(MAIN_WORDS);
    // The first block whose last word is at or after `prefix` holds its first word.
    let mut after = base.clone();
    after.extend(prefix.as_bytes());
    let mut out = Vec::new();
    loop {
        let blocks = table
            .scan_index(&base, Some(&after), BLOCKS_PER_READ)
            .await?;
        let done = blocks.len() < BLOCKS_PER_READ;
        for (k, v) in &blocks {
            if let Some(seg) = Segment::decode(v, Some(execs.len())) {
                for (word, postings) in &seg.words {
                    if word.starts_with(prefix) {
                        out.extend(postings.iter().copied());
                    }
                }
            }
            if out.len() > max {
                return Ok(None);
            }
            let last = read_str(&k[base.len()..]).map(|(w, _)| w);
            if last.is_none_or(|w| !w.starts_with(prefix)) {
                return Ok(Some(out));
            }
        }
        match blocks.last() {
            Some((k, _)) if !done => after = k.clone(),
            _ => return Ok(Some(out)),
        }
    }
}

/// The execution table of main index `m` (empty when it has none), and whether it was there
/// but did not decode.
async fn read_execs(table: &dyn SearchTable, m: &MainRef) -> Result<(Vec<String>, bool)> {
    Ok(
        match table.get_index(&[m.key().execs()]).await?[0].as_deref() {
            Some(v) => match Segment::decode(v, None) {
                Some(s) => (s.execs, false),
                None => (Vec::new(), true),
            },
            None => (Vec::new(), false),
        },
    )
}

/// Every key of main index `m`.
pub(super) async fn main_keys(table: &dyn SearchTable, m: &MainRef) -> Result<Vec<Vec<u8>>> {
    scan_keys(table, &m.key().prefix()).await
}

/// What main index `m` holds per execution (less what `overlay` resets), and how many of its
/// blocks did not decode.
pub(super) async fn main_contents(
    table: &dyn SearchTable,
    m: &MainRef,
    overlay: &Overlay,
) -> Result<(BTreeMap<String, ExecEntries>, usize)> {
    let key = m.key();
    let (execs, undecodable) = read_execs(table, m).await?;
    let mut damaged = usize::from(undecodable);
    let mut out: BTreeMap<String, ExecEntries> = BTreeMap::new();
    for (_, v) in super::scan_all(table, &key.part(MAIN_WORDS)).await? {
        let Some(seg) = Segment::decode(&v, Some(execs.len())) else {
            damaged += 1;
            continue;
        };
        for (word, postings) in seg.words {
            for (exec, version) in postings {
                let exec = &execs[exec as usize];
                if !overlay.reset.contains(exec) {
                    let e = out.entry(exec.clone()).or_default();
                    let first = e.words.entry(word.clone()).or_insert(version);
                    *first = (*first).min(version);
                }
            }
        }
    }
    for (_, v) in super::scan_all(table, &key.part(MAIN_HEADS)).await? {
        let Some(seg) = format::decode_head_block(&v) else {
            damaged += 1;
            continue;
        };
        for h in &seg.heads {
            if let Some(h) = seg.head(h) {
                if !overlay.reset.contains(&h.exec) {
                    out.entry(h.exec.clone())
                        .or_default()
                        .heads
                        .insert(h.version, h);
                }
            }
        }
    }
    Ok((out, damaged))
}

/// Every header newest first: the main index's blocks (less what the tail resets) merged with
/// the tail's headers, past a start position.
pub(super) struct HeadWalk<'a> {
    table: &'a dyn SearchTable,
    overlay: &'a Overlay,
    /// The main index's header blocks' key prefix, and where the next read starts.
    main: Option<(Vec<u8>, Option<Vec<u8>>)>,
    /// Main headers read and not yet returned, in order.
    buffered: std::collections::VecDeque<Head>,
    main_done: bool,
    /// The next tail header.
    tail_at: usize,
    start: Option<Vec<u8>>,
    last: Option<(String, u64)>,
    /// Whether a main block with this summary may hold a header the walk wants.
    wanted: Option<&'a (dyn Fn(&format::Summary) -> bool + Sync)>,
}

impl<'a> HeadWalk<'a> {
    pub(super) fn new(
        table: &'a dyn SearchTable,
        main: Option<&MainRef>,
        overlay: &'a Overlay,
        start: Option<Vec<u8>>,
    ) -> Self {
        let main = main.map(|m| {
            let base = m.key().part(MAIN_HEADS);
            let after = start.as_ref().map(|s| [&base[..], s].concat());
            (base, after)
        });
        let tail_at = match &start {
            Some(s) => overlay.heads.partition_point(|h| position_bytes(h) <= *s),
            None => 0,
        };
        HeadWalk {
            table,
            overlay,
            main_done: main.is_none(),
            main,
            buffered: Default::default(),
            tail_at,
            start,
            last: None,
            wanted: None,
        }
    }

    /// Skips main blocks whose summary says they hold no header `wanted` accepts.
    pub(super) fn only(mut self, wanted: &'a (dyn Fn(&format::Summary) -> bool + Sync)) -> Self {
        self.wanted = Some(wanted);
        self
    }

    async fn fill(&mut self) -> Result<()> {
        while self.buffered.is_empty() && !self.main_done {
            let Some((base, after)) = &mut self.main else {
                self.main_done = true;
                break;
            };
            let blocks = self
                .table
                .scan_index(base, after.as_deref(), BLOCKS_PER_READ)
                .await?;
            if blocks.len() < BLOCKS_PER_READ {
                self.main_done = true;
            }
            if let Some((k, _)) = blocks.last() {
                *after = Some(k.clone());
            }
            for (_, v) in blocks {
                let Some((summary, seg)) = format::head_block_parts(&v) else {
                    continue;
                };
                if self.wanted.is_some_and(|w| !w(&summary)) {
                    continue;
                }
                let Some(seg) = Segment::decode(seg, None) else {
                    continue;
                };
                for h in &seg.heads {
                    let Some(h) = seg.head(h) else { continue };
                    if self.overlay.reset.contains(&h.exec) {
                        continue;
                    }
                    if self
                        .start
                        .as_ref()
                        .is_some_and(|s| position_bytes(&h) <= *s)
                    {
                        continue;
                    }
                    self.buffered.push_back(h);
                }
            }
        }
        Ok(())
    }

    /// The next header, or `None` past the last.
    pub(super) async fn next(&mut self) -> Result<Option<Head>> {
        loop {
            self.fill().await?;
            let tail = self.overlay.heads.get(self.tail_at);
            let take_main = match (self.buffered.front(), tail) {
                (Some(m), Some(t)) => m.order(t) != std::cmp::Ordering::Greater,
                (Some(_), None) => true,
                (None, Some(_)) => false,
                (None, None) => return Ok(None),
            };
            let h = if take_main {
                self.buffered.pop_front()
            } else {
                self.tail_at += 1;
                tail.cloned()
            };
            let Some(h) = h else { return Ok(None) };
            // A tail segment folded but not yet deleted repeats headers of the main index.
            let id = (h.exec.clone(), h.version);
            if self.last.as_ref() == Some(&id) {
                continue;
            }
            self.last = Some(id);
            return Ok(Some(h));
        }
    }
}

/// A header's position bytes, as keys and walk starts hold them.
fn position_bytes(h: &Head) -> Vec<u8> {
    let mut k = Vec::new();
    format::push_position(&mut k, h.micros, &h.exec, h.version);
    k
}

/// A main index written by a fold and not yet current.
pub(super) struct Folded {
    pub main: MainRef,
    /// Every key it wrote (deleted again if it does not become current).
    pub keys: Vec<Vec<u8>>,
}

/// Writes a new main index: `current` (when there is one) less what `overlay` resets, with
/// what `overlay` holds. It is not current until the search log names it.
pub(super) async fn fold(
    table: &dyn SearchTable,
    current: Option<&MainRef>,
    overlay: &Overlay,
) -> Result<Folded> {
    let new = MainKey(format::nonce());
    let mut out = BlockWriter {
        table,
        pending: Vec::new(),
        keys: Vec::new(),
        bytes: 0,
    };
    // The execution table: the current one's executions not reset, and the tail's.
    let old_execs: Vec<String> = match current {
        Some(m) => read_execs(table, m).await?.0,
        None => Vec::new(),
    };
    let mut execs: Vec<String> = old_execs
        .iter()
        .filter(|e| !overlay.reset.contains(*e))
        .cloned()
        .chain(overlay.per_exec.keys().cloned())
        .collect();
    execs.sort();
    execs.dedup();
    let ids: HashMap<&str, u32> = execs
        .iter()
        .enumerate()
        .map(|(i, e)| (e.as_str(), i as u32))
        .collect();
    let table_seg = Segment {
        execs: execs.clone(),
        ..Segment::default()
    };
    out.put(new.execs(), table_seg.encode()?).await?;
    fold_words(&mut out, &new, current, &old_execs, &ids, overlay).await?;
    fold_heads(&mut out, &new, current, overlay).await?;
    out.flush().await?;
    Ok(Folded {
        main: MainRef {
            seq: 0,
            nonce: new.0,
            bytes: out.bytes,
        },
        keys: out.keys,
    })
}

/// The tail's postings of one word, by execution in the new table.
fn tail_postings(postings: &[(String, u64)], ids: &HashMap<&str, u32>) -> BTreeMap<u32, u64> {
    postings
        .iter()
        .filter_map(|(exec, v)| ids.get(exec.as_str()).map(|i| (*i, *v)))
        .collect()
}

/// Writes the word blocks of a fold: the current main index's words and the tail's, merged in
/// word order.
async fn fold_words(
    out: &mut BlockWriter<'_>,
    new: &MainKey,
    current: Option<&MainRef>,
    old_execs: &[String],
    ids: &HashMap<&str, u32>,
    overlay: &Overlay,
) -> Result<()> {
    let mut words = WordBlocks {
        new,
        block: Vec::new(),
        weight: 0,
    };
    let mut tail = overlay.words.iter().peekable();
    if let Some(m) = current {
        let base = m.key().part(MAIN_WORDS);
        let mut after: Option<Vec<u8>> = None;
        loop {
            let blocks = table_scan(out.table, &base, after.as_deref()).await?;
            let done = blocks.len() < BLOCKS_PER_FOLD;
            after = blocks.last().map(|(k, _)| k.clone());
            for (_, v) in blocks {
                // Decoding and merging every block of a main index is tens of milliseconds of
                // CPU: the fold lets the runtime run other tasks between blocks.
                tokio::task::yield_now().await;
                let Some(seg) = Segment::decode(&v, Some(old_execs.len())) else {
                    continue;
                };
                for (word, postings) in seg.words {
                    while let Some((w, p)) = tail.next_if(|(w, _)| **w < word) {
                        words.push(out, w.clone(), tail_postings(p, ids)).await?;
                    }
                    let mut merged: BTreeMap<u32, u64> = postings
                        .iter()
                        .filter_map(|(e, v)| {
                            let name = old_execs.get(*e as usize)?;
                            if overlay.reset.contains(name) {
                                return None;
                            }
                            ids.get(name.as_str()).map(|i| (*i, *v))
                        })
                        .collect();
                    if let Some((_, p)) = tail.next_if(|(w, _)| **w == word) {
                        for (i, v) in tail_postings(p, ids) {
                            let first = merged.entry(i).or_insert(v);
                            *first = (*first).min(v);
                        }
                    }
                    words.push(out, word, merged).await?;
                }
            }
            if done {
                break;
            }
        }
    }
    for (w, p) in tail {
        words.push(out, w.clone(), tail_postings(p, ids)).await?;
    }
    words.flush(out).await
}

/// Writes the header blocks of a fold: the current main index's headers and the tail's, merged
/// in result order.
async fn fold_heads(
    out: &mut BlockWriter<'_>,
    new: &MainKey,
    current: Option<&MainRef>,
    overlay: &Overlay,
) -> Result<()> {
    let mut walk = HeadWalk::new(out.table, current, overlay, None);
    let mut block = SegmentBuilder::default();
    let mut count = 0;
    let mut last: Option<Head> = None;
    while let Some(h) = walk.next().await? {
        block.head(&h);
        count += 1;
        last = Some(h);
        if count == HEAD_BLOCK {
            if let Some(l) = last.take() {
                let seg = std::mem::take(&mut block).build();
                out.put(new.heads(&l), format::encode_head_block(&seg)?)
                    .await?;
            }
            count = 0;
        }
    }
    if let Some(l) = last {
        out.put(new.heads(&l), format::encode_head_block(&block.build())?)
            .await?;
    }
    Ok(())
}

/// Blocks read per scan call while folding.
const BLOCKS_PER_FOLD: usize = 16;

async fn table_scan(
    table: &dyn SearchTable,
    base: &[u8],
    after: Option<&[u8]>,
) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
    table.scan_index(base, after, BLOCKS_PER_FOLD).await
}

/// The word blocks a fold is writing.
struct WordBlocks<'k> {
    new: &'k MainKey,
    block: Vec<(String, Vec<(u32, u64)>)>,
    weight: usize,
}

impl WordBlocks<'_> {
    async fn push(
        &mut self,
        out: &mut BlockWriter<'_>,
        word: String,
        postings: BTreeMap<u32, u64>,
    ) -> Result<()> {
        if postings.is_empty() {
            return Ok(());
        }
        self.weight += postings.len();
        self.block.push((word, postings.into_iter().collect()));
        if self.weight >= WORD_BLOCK {
            self.flush(out).await?;
        }
        Ok(())
    }

    async fn flush(&mut self, out: &mut BlockWriter<'_>) -> Result<()> {
        let Some((last, _)) = self.block.last() else {
            return Ok(());
        };
        let key = self.new.words(last);
        let seg = Segment {
            words: std::mem::take(&mut self.block),
            ..Segment::default()
        };
        self.weight = 0;
        out.put(key, seg.encode()?).await
    }
}

/// Writes a fold's blocks a chunk at a time.
struct BlockWriter<'a> {
    table: &'a dyn SearchTable,
    pending: Vec<(Vec<u8>, Vec<u8>)>,
    keys: Vec<Vec<u8>>,
    bytes: u64,
}

impl BlockWriter<'_> {
    async fn put(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<()> {
        // Each block was just encoded and compressed: let other tasks run between blocks.
        tokio::task::yield_now().await;
        self.bytes += (key.len() + value.len()) as u64;
        self.keys.push(key.clone());
        self.pending.push((key, value));
        if self.pending.len() >= WRITE_CHUNK {
            self.flush().await?;
        }
        Ok(())
    }

    async fn flush(&mut self) -> Result<()> {
        if !self.pending.is_empty() {
            self.table
                .write_index(std::mem::take(&mut self.pending), Vec::new())
                .await?;
        }
        Ok(())
    }
}
