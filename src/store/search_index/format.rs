//! The search index's bytes: its keys, and the segments its values hold.
//!
//! Everything here is decoded from storage, so every reader returns `None` on bytes it does not
//! understand and never panics (the fuzz target `search_index` feeds it garbage).

use super::super::from_micros;
use super::super::search::{Position, SearchHit};
use crate::checkpoint::{CheckpointHeader, CheckpointId, Metadata};
use crate::error::{Error, Result};

/// Marks a store as indexed; its value is the format version.
pub(super) const ON_KEY: &[u8] = b"!on";
/// Version 2: a tail of segments and a main index in blocks (version 1 kept an entry per word
/// and execution; a store indexed by it is indexed again on open).
pub(super) const FORMAT: u8 = 2;
/// `c` EXEC → next sequence covered, live checkpoints below it.
pub(super) const COVERED: u8 = b'c';
/// `u` MICROS NONCE → a tail segment: what one indexer batch (or catch-up) added.
pub(super) const TAIL: u8 = b'u';
/// `M` NONCE … → the blocks of main index NONCE (see [`MainKey`]).
pub(super) const MAIN: u8 = b'M';
/// Within a main index: the execution table.
pub(super) const MAIN_EXECS: u8 = b'x';
/// Within a main index: a block of words, keyed by its last word.
pub(super) const MAIN_WORDS: u8 = b'w';
/// Within a main index: a block of headers in result order, keyed by its last position.
pub(super) const MAIN_HEADS: u8 = b't';

/// The largest segment, decompressed, that a reader accepts (a damaged one cannot make it
/// allocate more).
const MAX_SEGMENT: usize = 256 << 20;
const SEGMENT_VERSION: u8 = 1;

// ---------------------------------------------------------------------------------------------
// Key parts

/// Appends `s` so that the encodings sort as the strings do and end unambiguously: `0x00`
/// becomes `0x00 0xff`, and `0x00 0x01` ends it.
pub(super) fn push_str(buf: &mut Vec<u8>, s: &str) {
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
pub(super) fn read_str(bytes: &[u8]) -> Option<(String, &[u8])> {
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

pub(super) fn push_varint(buf: &mut Vec<u8>, mut n: u64) {
    while n >= 0x80 {
        buf.push((n as u8) | 0x80);
        n >>= 7;
    }
    buf.push(n as u8);
}

pub(super) fn read_varint(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let mut n = 0u64;
    for (i, b) in bytes.iter().enumerate().take(10) {
        n |= u64::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((n, &bytes[i + 1..]));
        }
    }
    None
}

pub(super) fn read_u64(bytes: &[u8]) -> Option<(u64, &[u8])> {
    let (head, rest) = bytes.split_first_chunk::<8>()?;
    Some((u64::from_be_bytes(*head), rest))
}

/// Where a checkpoint sorts in results: newest first, then execution id, then newest version.
pub(super) fn push_position(buf: &mut Vec<u8>, micros: u64, exec: &str, version: u64) {
    buf.extend((u64::MAX - micros).to_be_bytes());
    push_str(buf, exec);
    buf.extend((u64::MAX - version).to_be_bytes());
}

pub(super) fn read_position(bytes: &[u8]) -> Option<(u64, String, u64)> {
    let (inv_time, rest) = read_u64(bytes)?;
    let (exec, rest) = read_str(rest)?;
    let (inv_version, rest) = read_u64(rest)?;
    rest.is_empty()
        .then(|| (u64::MAX - inv_time, exec, u64::MAX - inv_version))
}

pub(super) fn covered_key(exec: &str) -> Vec<u8> {
    let mut k = vec![COVERED];
    push_str(&mut k, exec);
    k
}

/// A tail segment's key: written at `micros`, told apart by `nonce`.
pub(super) fn tail_key(micros: u64, nonce: u64) -> Vec<u8> {
    let mut k = vec![TAIL];
    k.extend(micros.to_be_bytes());
    k.extend(nonce.to_be_bytes());
    k
}

/// The keys of main index `nonce`.
pub(super) struct MainKey(pub u64);

impl MainKey {
    /// Every key of this main index starts so.
    pub(super) fn prefix(&self) -> Vec<u8> {
        let mut k = vec![MAIN];
        k.extend(self.0.to_be_bytes());
        k
    }

    pub(super) fn part(&self, part: u8) -> Vec<u8> {
        let mut k = self.prefix();
        k.push(part);
        k
    }

    pub(super) fn execs(&self) -> Vec<u8> {
        self.part(MAIN_EXECS)
    }

    pub(super) fn words(&self, last_word: &str) -> Vec<u8> {
        let mut k = self.part(MAIN_WORDS);
        push_str(&mut k, last_word);
        k
    }

    pub(super) fn heads(&self, last: &Head) -> Vec<u8> {
        let mut k = self.part(MAIN_HEADS);
        push_position(&mut k, last.micros, &last.exec, last.version);
        k
    }
}

/// A new number no other process picks (for tail keys and main indexes).
pub(super) fn nonce() -> u64 {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(&super::micros(std::time::SystemTime::now()).to_le_bytes());
    h.update(
        &COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    let mut out = [0; 8];
    out.copy_from_slice(&h.finalize().as_bytes()[..8]);
    u64::from_le_bytes(out)
}

// ---------------------------------------------------------------------------------------------
// Headers and coverage

/// One checkpoint's header as the index keeps it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Head {
    pub exec: String,
    pub version: u64,
    pub micros: u64,
    pub node: String,
    pub metadata: Metadata,
}

impl Head {
    pub(super) fn of(h: &CheckpointHeader) -> Self {
        Head {
            exec: h.execution_id.clone(),
            version: h.version,
            micros: super::micros(h.timestamp),
            node: h.node_name.clone(),
            metadata: h.metadata.clone(),
        }
    }

    pub(super) fn position(&self) -> Position {
        Position {
            nanos: u128::from(self.micros) * 1000,
            execution_id: self.exec.clone(),
            version: self.version,
        }
    }

    /// The order of results: newest first, then execution id, then newest version.
    pub(super) fn order(&self, other: &Head) -> std::cmp::Ordering {
        other
            .micros
            .cmp(&self.micros)
            .then_with(|| self.exec.cmp(&other.exec))
            .then_with(|| other.version.cmp(&self.version))
    }

    pub(super) fn hit(self) -> SearchHit {
        SearchHit {
            id: CheckpointId::new_unchecked(self.exec.as_str().into(), self.version),
            node_name: self.node,
            timestamp: from_micros(self.micros),
            path: None,
            snippet: None,
        }
    }
}

/// Where the index stands for one execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Covered {
    /// The log's next sequence number when it was last indexed.
    pub next: u64,
    /// Live checkpoints below `next` then.
    pub live: u64,
}

impl Default for Covered {
    /// Nothing indexed: a log's first frame is 1.
    fn default() -> Self {
        Covered { next: 1, live: 0 }
    }
}

impl Covered {
    pub(super) fn encode(self) -> Vec<u8> {
        let mut v = Vec::new();
        push_varint(&mut v, self.next);
        push_varint(&mut v, self.live);
        v
    }

    pub(super) fn decode(bytes: &[u8]) -> Option<Self> {
        let (next, rest) = read_varint(bytes)?;
        let (live, _) = read_varint(rest)?;
        Some(Covered { next, live })
    }
}

// ---------------------------------------------------------------------------------------------
// Segments

/// A set of index data, as one value holds it: a tail segment (what a batch of saves added), or
/// one block of a main index (its execution table, a run of words, a run of headers).
///
/// Executions are named once, in `execs`; headers and postings refer to them by position. In a
/// main index's word blocks they refer to the main index's execution table instead.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Segment {
    pub execs: Vec<String>,
    /// Executions (by position) whose earlier entries this segment replaces: everything older
    /// about them (the main index, earlier tail segments) no longer counts.
    pub resets: Vec<u32>,
    pub heads: Vec<SegHead>,
    /// Words in ascending order, each with its postings: (execution, first version), in
    /// ascending execution order.
    pub words: Vec<(String, Vec<(u32, u64)>)>,
}

/// A header in a segment.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct SegHead {
    pub exec: u32,
    pub version: u64,
    pub micros: u64,
    pub node: String,
    pub metadata: Metadata,
}

/// Reads what `push_varint` and `push_bytes` wrote.
pub(super) struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    pub(super) fn new(bytes: &'a [u8]) -> Self {
        Reader(bytes)
    }

    /// What is left to read.
    pub(super) fn rest(&self) -> &'a [u8] {
        self.0
    }

    pub(super) fn varint(&mut self) -> Option<u64> {
        let (n, rest) = read_varint(self.0)?;
        self.0 = rest;
        Some(n)
    }

    fn index(&mut self, bound: usize) -> Option<u32> {
        let n = self.varint()?;
        (n < bound as u64).then_some(n as u32)
    }

    pub(super) fn bytes(&mut self) -> Option<&'a [u8]> {
        let len = usize::try_from(self.varint()?).ok()?;
        if len > self.0.len() {
            return None;
        }
        let (b, rest) = self.0.split_at(len);
        self.0 = rest;
        Some(b)
    }

    pub(super) fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?.to_vec()).ok()
    }

    /// A count of items each at least `min` bytes long: no more than the bytes left allow.
    fn count(&mut self, min: usize) -> Option<usize> {
        let n = usize::try_from(self.varint()?).ok()?;
        (n.saturating_mul(min) <= self.0.len()).then_some(n)
    }
}

/// Appends `b` after its length.
pub(super) fn push_bytes(buf: &mut Vec<u8>, b: &[u8]) {
    push_varint(buf, b.len() as u64);
    buf.extend(b);
}

impl Segment {
    /// The segment's bytes: a version, then its parts, zstd-compressed.
    pub(super) fn encode(&self) -> Result<Vec<u8>> {
        let mut raw = vec![SEGMENT_VERSION];
        push_varint(&mut raw, self.execs.len() as u64);
        for e in &self.execs {
            push_bytes(&mut raw, e.as_bytes());
        }
        push_varint(&mut raw, self.resets.len() as u64);
        for r in &self.resets {
            push_varint(&mut raw, u64::from(*r));
        }
        push_varint(&mut raw, self.heads.len() as u64);
        for h in &self.heads {
            push_varint(&mut raw, u64::from(h.exec));
            push_varint(&mut raw, h.version);
            push_varint(&mut raw, h.micros);
            push_bytes(&mut raw, h.node.as_bytes());
            let meta = rmp_serde::to_vec(&h.metadata)
                .map_err(|e| Error::codec("encoding a search index header", e))?;
            push_bytes(&mut raw, &meta);
        }
        push_varint(&mut raw, self.words.len() as u64);
        for (word, postings) in &self.words {
            push_bytes(&mut raw, word.as_bytes());
            push_varint(&mut raw, postings.len() as u64);
            let mut last = 0;
            for (exec, version) in postings {
                push_varint(&mut raw, u64::from(exec.wrapping_sub(last)));
                push_varint(&mut raw, *version);
                last = *exec;
            }
        }
        let mut out = Vec::with_capacity(raw.len() / 3 + 16);
        push_varint(&mut out, raw.len() as u64);
        // This thread's zstd context (making one per segment costs more than compressing).
        let packed = crate::codec::blob::compress(&raw)
            .map_err(|e| Error::codec("compressing a search index segment", e))?;
        out.extend(packed);
        Ok(out)
    }

    /// Decodes [`Segment::encode`]'s bytes; `None` for anything else. `word_execs` is how many
    /// executions postings may name when they refer to a main index's table (`None`: this
    /// segment's own).
    pub(super) fn decode(bytes: &[u8], word_execs: Option<usize>) -> Option<Self> {
        let (len, packed) = read_varint(bytes)?;
        let len = usize::try_from(len).ok().filter(|l| *l <= MAX_SEGMENT)?;
        let raw = crate::codec::blob::decompress_bounded(packed, len).ok()?;
        if raw.len() != len {
            return None;
        }
        let mut r = Reader(&raw);
        let (&version, rest) = r.0.split_first()?;
        if version != SEGMENT_VERSION {
            return None;
        }
        r.0 = rest;
        let mut seg = Segment::default();
        for _ in 0..r.count(1)? {
            seg.execs.push(r.string()?);
        }
        let n = seg.execs.len();
        for _ in 0..r.count(1)? {
            seg.resets.push(r.index(n)?);
        }
        for _ in 0..r.count(5)? {
            let exec = r.index(n)?;
            let version = r.varint()?;
            let micros = r.varint()?;
            let node = r.string()?;
            let metadata = rmp_serde::from_slice(r.bytes()?).ok()?;
            seg.heads.push(SegHead {
                exec,
                version,
                micros,
                node,
                metadata,
            });
        }
        let bound = word_execs.unwrap_or(n);
        for _ in 0..r.count(2)? {
            let word = r.string()?;
            let mut postings = Vec::new();
            let mut last = 0u32;
            for _ in 0..r.count(2)? {
                let delta = u32::try_from(r.varint()?).ok()?;
                let exec = last.checked_add(delta)?;
                if exec as usize >= bound {
                    return None;
                }
                postings.push((exec, r.varint()?));
                last = exec;
            }
            seg.words.push((word, postings));
        }
        r.0.is_empty().then_some(seg)
    }

    /// The header `h` names, with its execution's name.
    pub(super) fn head(&self, h: &SegHead) -> Option<Head> {
        Some(Head {
            exec: self.execs.get(h.exec as usize)?.clone(),
            version: h.version,
            micros: h.micros,
            node: h.node.clone(),
            metadata: h.metadata.clone(),
        })
    }
}

/// Builds a segment from named executions.
#[derive(Default)]
pub(super) struct SegmentBuilder {
    seg: Segment,
    ids: std::collections::HashMap<String, u32>,
    words: std::collections::BTreeMap<String, std::collections::BTreeMap<u32, u64>>,
}

impl SegmentBuilder {
    pub(super) fn exec(&mut self, exec: &str) -> u32 {
        if let Some(i) = self.ids.get(exec) {
            return *i;
        }
        let i = self.seg.execs.len() as u32;
        self.seg.execs.push(exec.to_owned());
        self.ids.insert(exec.to_owned(), i);
        i
    }

    pub(super) fn reset(&mut self, exec: &str) {
        let i = self.exec(exec);
        self.seg.resets.push(i);
    }

    pub(super) fn head(&mut self, h: &Head) {
        let exec = self.exec(&h.exec);
        self.seg.heads.push(SegHead {
            exec,
            version: h.version,
            micros: h.micros,
            node: h.node.clone(),
            metadata: h.metadata.clone(),
        });
    }

    /// Notes that `version` of `exec` holds `word` (the lowest version noted wins).
    pub(super) fn word(&mut self, word: &str, exec: &str, version: u64) {
        let exec = self.exec(exec);
        let postings = match self.words.get_mut(word) {
            Some(p) => p,
            None => self.words.entry(word.to_owned()).or_default(),
        };
        let v = postings.entry(exec).or_insert(version);
        *v = (*v).min(version);
    }

    pub(super) fn is_empty(&self) -> bool {
        self.seg.execs.is_empty()
    }

    /// The executions named so far.
    pub(super) fn execs(&self) -> &[String] {
        &self.seg.execs
    }

    /// Headers plus postings held, to bound a segment's size.
    pub(super) fn weight(&self) -> usize {
        self.seg.heads.len() * 8 + self.words.values().map(|p| p.len()).sum::<usize>()
    }

    pub(super) fn build(self) -> Segment {
        let mut seg = self.seg;
        seg.words = self
            .words
            .into_iter()
            .map(|(w, p)| (w, p.into_iter().collect()))
            .collect();
        seg
    }
}

// ---------------------------------------------------------------------------------------------
// Header blocks

/// What a main index's header block holds, in brief: read before the block is decompressed, so
/// that a walk for a node or a metadata value skips blocks that cannot hold it.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Summary {
    /// The nodes of its headers (`None`: too many to list).
    pub nodes: Option<Vec<String>>,
    /// Per metadata key held by any of its headers, the values' range.
    pub keys: Vec<(String, KeyRange)>,
}

/// The values of one metadata key in a block.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct KeyRange {
    /// Some value is neither a number nor a string (or a string too long to keep).
    pub other: bool,
    /// The least and greatest number.
    pub numbers: Option<(f64, f64)>,
    /// The least and greatest string.
    pub strings: Option<(String, String)>,
}

/// Nodes listed in a summary at most; more are "any".
const SUMMARY_NODES: usize = 16;
/// Strings kept in a summary at most this long; a longer value is "other".
const SUMMARY_STRING: usize = 64;
const HEAD_BLOCK_TAG: u8 = b'Z';

impl Summary {
    pub(super) fn of(heads: &[SegHead]) -> Self {
        let mut nodes: Vec<String> = heads.iter().map(|h| h.node.clone()).collect();
        nodes.sort();
        nodes.dedup();
        let mut keys: std::collections::BTreeMap<&str, KeyRange> = Default::default();
        for h in heads {
            for (k, v) in &h.metadata {
                let r = keys.entry(k.as_str()).or_default();
                match v {
                    serde_json::Value::Number(n) => match n.as_f64() {
                        Some(x) => {
                            let (lo, hi) = r.numbers.get_or_insert((x, x));
                            *lo = lo.min(x);
                            *hi = hi.max(x);
                        }
                        None => r.other = true,
                    },
                    serde_json::Value::String(s) if s.len() <= SUMMARY_STRING => {
                        match &mut r.strings {
                            Some((lo, hi)) => {
                                if s < lo {
                                    *lo = s.clone();
                                }
                                if s > hi {
                                    *hi = s.clone();
                                }
                            }
                            None => r.strings = Some((s.clone(), s.clone())),
                        }
                    }
                    _ => r.other = true,
                }
            }
        }
        Summary {
            nodes: (nodes.len() <= SUMMARY_NODES).then_some(nodes),
            keys: keys.into_iter().map(|(k, r)| (k.to_owned(), r)).collect(),
        }
    }

    fn encode(&self, out: &mut Vec<u8>) {
        match &self.nodes {
            Some(nodes) => {
                push_varint(out, nodes.len() as u64 + 1);
                nodes.iter().for_each(|n| push_bytes(out, n.as_bytes()));
            }
            None => push_varint(out, 0),
        }
        push_varint(out, self.keys.len() as u64);
        for (k, r) in &self.keys {
            push_bytes(out, k.as_bytes());
            let flags = u8::from(r.other)
                | u8::from(r.numbers.is_some()) << 1
                | u8::from(r.strings.is_some()) << 2;
            out.push(flags);
            if let Some((lo, hi)) = r.numbers {
                out.extend(lo.to_be_bytes());
                out.extend(hi.to_be_bytes());
            }
            if let Some((lo, hi)) = &r.strings {
                push_bytes(out, lo.as_bytes());
                push_bytes(out, hi.as_bytes());
            }
        }
    }

    fn decode(r: &mut Reader<'_>) -> Option<Self> {
        let nodes = match r.varint()? {
            0 => None,
            n => {
                let n = usize::try_from(n - 1).ok()?;
                if n > r.0.len() {
                    return None;
                }
                Some((0..n).map(|_| r.string()).collect::<Option<Vec<_>>>()?)
            }
        };
        let mut keys = Vec::new();
        for _ in 0..r.count(2)? {
            let key = r.string()?;
            let (&flags, rest) = r.0.split_first()?;
            r.0 = rest;
            let mut range = KeyRange {
                other: flags & 1 != 0,
                ..KeyRange::default()
            };
            if flags & 2 != 0 {
                let (lo, rest) = r.0.split_first_chunk::<8>()?;
                let (hi, rest) = rest.split_first_chunk::<8>()?;
                range.numbers = Some((f64::from_be_bytes(*lo), f64::from_be_bytes(*hi)));
                r.0 = rest;
            }
            if flags & 4 != 0 {
                range.strings = Some((r.string()?, r.string()?));
            }
            keys.push((key, range));
        }
        Some(Summary { nodes, keys })
    }

    pub(super) fn range(&self, key: &str) -> Option<&KeyRange> {
        self.keys.iter().find(|(k, _)| k == key).map(|(_, r)| r)
    }
}

/// A main index's header block: its summary, then the segment holding its headers.
pub(super) fn encode_head_block(seg: &Segment) -> Result<Vec<u8>> {
    let mut summary = Vec::new();
    Summary::of(&seg.heads).encode(&mut summary);
    let mut out = vec![HEAD_BLOCK_TAG];
    push_bytes(&mut out, &summary);
    out.extend(seg.encode()?);
    Ok(out)
}

/// The summary of a header block and the bytes of its segment.
pub(super) fn head_block_parts(bytes: &[u8]) -> Option<(Summary, &[u8])> {
    let rest = bytes.strip_prefix(&[HEAD_BLOCK_TAG])?;
    let mut r = Reader(rest);
    let summary = r.bytes()?;
    let seg = r.0;
    let mut s = Reader(summary);
    let decoded = Summary::decode(&mut s)?;
    s.0.is_empty().then_some((decoded, seg))
}

/// The headers of a header block.
pub(super) fn decode_head_block(bytes: &[u8]) -> Option<Segment> {
    Segment::decode(head_block_parts(bytes)?.1, None)
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
        TAIL => {
            count(rest.len() == 16);
            count(Segment::decode(value, None).is_some());
        }
        MAIN => {
            let Some((_, rest)) = read_u64(rest) else {
                return 0;
            };
            match rest.split_first() {
                Some((&MAIN_EXECS, _)) => count(Segment::decode(value, None).is_some()),
                Some((&MAIN_WORDS, word)) => {
                    count(read_str(word).is_some());
                    count(Segment::decode(value, Some(64)).is_some());
                }
                Some((&MAIN_HEADS, pos)) => {
                    count(read_position(pos).is_some());
                    count(head_block_parts(value).is_some());
                    count(decode_head_block(value).is_some());
                }
                _ => {}
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
    fn positions_sort_as_results_do() {
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

    fn sample() -> Segment {
        let mut b = SegmentBuilder::default();
        b.reset("e\0x");
        b.head(&Head {
            exec: "e\0x".into(),
            version: 3,
            micros: 99,
            node: "n".into(),
            metadata: [("step".to_owned(), serde_json::json!(2))].into(),
        });
        b.word("zeta", "e\0x", 4);
        b.word("alpha", "other", 9);
        b.word("alpha", "e\0x", 5);
        b.word("alpha", "e\0x", 3);
        b.build()
    }

    #[test]
    fn segments_round_trip_with_words_sorted() {
        let seg = sample();
        assert_eq!(seg.words[0].0, "alpha");
        assert_eq!(
            seg.words[0].1,
            vec![(0, 3), (1, 9)],
            "the lowest version wins"
        );
        let bytes = seg.encode().expect("encode");
        assert_eq!(Segment::decode(&bytes, None), Some(seg.clone()));
        assert_eq!(
            Segment::decode(&bytes, Some(1)),
            None,
            "a posting past the execution table is refused"
        );
        let mut cut = bytes.clone();
        cut.truncate(bytes.len() - 1);
        assert_eq!(Segment::decode(&cut, None), None);
    }

    #[test]
    fn entries_decode_and_garbage_decodes_to_nothing() {
        let seg = sample().encode().expect("encode");
        assert_eq!(decode_index_entry(&tail_key(1, 2), &seg), 2);
        assert_eq!(
            decode_index_entry(&covered_key("e"), &Covered::default().encode()),
            2
        );
        let main = MainKey(7);
        assert_eq!(decode_index_entry(&main.words("zeta"), &seg), 2);
        let mut state = 0x9e37_79b9_7f4a_7c15_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..20_000 {
            let len = (next() % 60) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if next() % 4 == 0 {
                // Damage a real segment instead.
                bytes = seg.clone();
                let at = (next() as usize) % bytes.len();
                bytes[at] ^= 1 << (next() % 8);
            }
            let split = if bytes.is_empty() {
                0
            } else {
                (next() as usize) % bytes.len()
            };
            let mut key = bytes[..split].to_vec();
            if let Some(first) = key.first_mut() {
                *first = b"cuM"[(*first as usize) % 3];
            }
            decode_index_entry(&key, &bytes[split..]);
            Segment::decode(&bytes, None);
        }
    }
}
