//! Search across executions ([`Store::search`]): text in any string of a state (words, prefix
//! matched, or a quoted phrase), metadata equalities and ranges, the node, a time range, an
//! execution-id prefix; results newest first, each with the path that matched and a snippet,
//! paged with a cursor.
//!
//! This module owns the query language and its evaluation by **scanning**: the headers of every
//! candidate execution are filtered first (metadata, node, time: no state is read), then the
//! states of the remaining candidates are loaded, newest first, until a page is full. It works
//! on every backend and on encrypted stores alike (states are decrypted while scanning, and
//! nothing is written), and says so ([`SearchPage::method`]). Indexes that answer without
//! reading states are the next step; they will keep this API.

use std::cmp::Ordering;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::stream::{self, StreamExt};
use serde_json::Value;

use tracing::field::Empty;

use super::trace::op_span;
use super::{HistoryQuery, Store};
use crate::checkpoint::{CheckpointHeader, CheckpointId};
use crate::error::{Error, Result};

/// Characters of state text a [`SearchHit::snippet`] shows around the match.
const SNIPPET_CONTEXT: usize = 40;

/// A search across executions: build it, then [`Store::search`] it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> ckpt::Result<()> {
/// use ckpt::{Checkpoint, SearchQuery, Store};
/// use serde_json::json;
///
/// let store = Store::memory();
/// let state = json!({"messages": ["where is order A-1077?", "it shipped today"]});
/// store.save(Checkpoint::new("support-7", "agent", &state)?.with_metadata("user", "alice")).await?;
/// store.save(Checkpoint::new("support-8", "agent", &json!({"messages": ["hi"]}))?).await?;
///
/// let page = store.search(&SearchQuery::text("order a-10").metadata("user=alice")?).await?;
/// assert_eq!(page.hits.len(), 1);
/// assert_eq!(page.hits[0].id.to_string(), "support-7@1");
/// assert_eq!(page.hits[0].path.as_deref(), Some("messages.0"));
/// # Ok(()) }
/// ```
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SearchQuery {
    text: Option<String>,
    pub(super) terms: Vec<Term>,
    pub(super) metadata: Vec<Condition>,
    pub(super) node: Option<String>,
    pub(super) since: Option<SystemTime>,
    pub(super) until: Option<SystemTime>,
    pub(super) execution_prefix: Option<String>,
    limit: Option<usize>,
    pub(super) cursor: Option<Position>,
    pub(super) scan_only: bool,
}

/// One part of a text query: all must match.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Term {
    /// A word: a prefix of a word of some string in the state.
    Word(String),
    /// Consecutive words in one string (the last one a prefix).
    Phrase(Vec<String>),
}

/// A metadata condition: `key` compared with `value`.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Condition {
    pub(super) key: String,
    pub(super) op: Op,
    pub(super) value: Value,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Op {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// Where a page ended: results are ordered by time (newest first), then execution id, then
/// version (newest first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Position {
    pub(super) nanos: u128,
    pub(super) execution_id: String,
    pub(super) version: u64,
}

/// How a search was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum SearchMethod {
    /// Every candidate state was read (decrypted when the store is encrypted): correct on
    /// every backend, slower than an index on large stores.
    Scan,
    /// The store's search index ([`Store::reindex`]) chose the candidates: only their states
    /// were read, to check the text and show where it matched.
    Index,
}

/// One checkpoint that matched.
#[derive(Debug, Clone, PartialEq)]
pub struct SearchHit {
    /// The checkpoint.
    pub id: CheckpointId,
    /// The node that saved it.
    pub node_name: String,
    /// When it was saved.
    pub timestamp: SystemTime,
    /// The dot path of the string where the text matched (`None` without a text query).
    pub path: Option<String>,
    /// The matching text with some context (`None` without a text query).
    pub snippet: Option<String>,
}

/// A page of results ([`Store::search`]).
#[derive(Debug, Clone, PartialEq)]
pub struct SearchPage {
    /// The matches, newest first.
    pub hits: Vec<SearchHit>,
    /// Pass to [`SearchQuery::cursor`] for the next page; `None` when this page is the last.
    pub next_cursor: Option<String>,
    /// How the search was answered.
    pub method: SearchMethod,
    /// Checkpoints whose state was read.
    pub states_read: usize,
}

impl SearchQuery {
    /// A query with no condition: every checkpoint, newest first.
    pub fn new() -> Self {
        SearchQuery::default()
    }

    /// Checkpoints whose state contains `text` ([`SearchQuery::with_text`]).
    pub fn text(text: &str) -> Self {
        SearchQuery::new().with_text(text)
    }

    /// Adds a text condition: every word must begin a word of some string of the state
    /// (case-insensitive: `ord` matches `Order`), and a quoted part (`"left the building"`)
    /// must appear as consecutive words of one string. Words are runs of letters and digits.
    pub fn with_text(mut self, text: &str) -> Self {
        self.terms = parse_terms(text);
        self.text = Some(text.to_owned());
        self
    }

    /// Adds a metadata condition written `KEY=VALUE`, `KEY!=VALUE`, `KEY>VALUE`, `KEY>=VALUE`,
    /// `KEY<VALUE` or `KEY<=VALUE`; the value is read as JSON when it parses (`step>10` is a
    /// number) and as a string otherwise. Ranges compare numbers as numbers and strings by
    /// their bytes. [`Error::InvalidInput`] when there is no operator or no key.
    pub fn metadata(mut self, condition: &str) -> Result<Self> {
        self.metadata.push(parse_condition(condition)?);
        Ok(self)
    }

    /// Only checkpoints saved by node `name`.
    pub fn node(mut self, name: impl Into<String>) -> Self {
        self.node = Some(name.into());
        self
    }

    /// Only checkpoints saved at or after `t`.
    pub fn since(mut self, t: SystemTime) -> Self {
        self.since = Some(t);
        self
    }

    /// Only checkpoints saved before `t`.
    pub fn until(mut self, t: SystemTime) -> Self {
        self.until = Some(t);
        self
    }

    /// Only executions whose id starts with `prefix`.
    pub fn execution_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.execution_prefix = Some(prefix.into());
        self
    }

    /// At most `n` hits per page (20 by default, at least 1).
    pub fn limit(mut self, n: usize) -> Self {
        self.limit = Some(n.max(1));
        self
    }

    /// Continues after a page: `cursor` is its [`SearchPage::next_cursor`].
    /// [`Error::InvalidInput`] when it was not made by a search.
    pub fn cursor(mut self, cursor: &str) -> Result<Self> {
        self.cursor = Some(parse_cursor(cursor)?);
        Ok(self)
    }

    /// Answers by scanning even when the store keeps a search index: to check the index, or
    /// to search while it is rebuilt.
    pub fn without_index(mut self) -> Self {
        self.scan_only = true;
        self
    }

    pub(super) fn page_size(&self) -> usize {
        self.limit.unwrap_or(20)
    }

    /// Whether a checkpoint's header passes the conditions that need no state.
    pub(super) fn header_matches(&self, h: &CheckpointHeader) -> bool {
        self.time_matches(h.timestamp) && self.metadata_matches(&h.metadata)
    }

    /// Whether `t` is in the query's time range.
    pub(super) fn time_matches(&self, t: SystemTime) -> bool {
        self.since.is_none_or(|s| t >= s) && self.until.is_none_or(|u| t < u)
    }

    /// Whether `metadata` passes every metadata condition.
    pub(super) fn metadata_matches(&self, metadata: &crate::checkpoint::Metadata) -> bool {
        self.metadata.iter().all(|c| c.holds(metadata.get(&c.key)))
    }

    /// Where the text matches `state` (its first term's path and a snippet); `Some(None)` with
    /// no text condition; `None` when it does not match.
    fn text_match(&self, state: &Value) -> Option<Option<(String, String)>> {
        if self.terms.is_empty() {
            return Some(None);
        }
        let mut strings = Vec::new();
        collect_strings(state, &mut String::new(), &mut strings);
        let found = |term: &Term| strings.iter().any(|(_, s)| term.find(s).is_some());
        if !self.terms.iter().all(found) {
            return None;
        }
        // The place to show: the string that holds the most terms (the first such), at its
        // first match of them.
        let (path, text, at) = strings
            .iter()
            .filter_map(|(p, s)| {
                let hits: Vec<usize> = self.terms.iter().filter_map(|t| t.find(s)).collect();
                let at = hits.iter().min().copied()?;
                Some((hits.len(), p, s, at))
            })
            .fold(
                None,
                |best: Option<(usize, &String, &&str, usize)>, c| match best {
                    Some(b) if b.0 >= c.0 => Some(b),
                    _ => Some(c),
                },
            )
            .map(|(_, p, s, at)| (p, s, at))?;
        Some(Some((path.clone(), snippet(text, at))))
    }
}

impl Term {
    /// The words a matching string must hold (as prefixes).
    pub(super) fn words(&self) -> Vec<&str> {
        match self {
            Term::Word(w) => vec![w.as_str()],
            Term::Phrase(ws) => ws.iter().map(String::as_str).collect(),
        }
    }

    /// The byte offset in `s` where this term matches.
    fn find(&self, s: &str) -> Option<usize> {
        match self {
            Term::Word(w) if s.is_ascii() => find_ascii_word(s, w),
            Term::Word(w) => word_spans(s)
                .find(|&(st, en)| lowered_starts_with(&s[st..en], w))
                .map(|(st, _)| st),
            Term::Phrase(phrase) => {
                let spans: Vec<(usize, usize)> = word_spans(s).collect();
                let last = phrase.len() - 1;
                spans.windows(phrase.len()).find_map(|win| {
                    let all = win
                        .iter()
                        .zip(phrase)
                        .enumerate()
                        .all(|(i, (&(a, b), p))| lowered_is(&s[a..b], p, i == last));
                    all.then(|| win[0].0)
                })
            }
        }
    }
}

/// Where the first word of the ASCII string `s` that starts with `w` (lowercase) begins: a
/// jump from one occurrence of `w`'s first letter (either case) to the next, rather than
/// splitting every word (in ASCII, lowercasing keeps byte positions, and a word is a run of
/// ASCII letters and digits).
fn find_ascii_word(s: &str, w: &str) -> Option<usize> {
    let (bytes, w) = (s.as_bytes(), w.as_bytes());
    let first = *w.first()?;
    let mut from = 0;
    while let Some(found) = memchr::memchr2(first, first.to_ascii_uppercase(), &bytes[from..]) {
        let at = from + found;
        let starts_word = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        if starts_word
            && bytes.len() - at >= w.len()
            && bytes[at..at + w.len()].eq_ignore_ascii_case(w)
        {
            return Some(at);
        }
        from = at + 1;
    }
    None
}

/// Whether `word`, lowercased as [`words`] does, equals `w` (or starts with it, for a prefix).
fn lowered_is(word: &str, w: &str, prefix: bool) -> bool {
    if prefix {
        lowered_starts_with(word, w)
    } else if word.is_ascii() {
        word.len() == w.len() && lowered_starts_with(word, w)
    } else {
        word.to_lowercase() == w
    }
}

/// Whether `word`, lowercased as [`words`] does, starts with `prefix` (already lowercase),
/// without allocating for ASCII words (the common case of a scan).
fn lowered_starts_with(word: &str, prefix: &str) -> bool {
    if word.is_ascii() {
        word.len() >= prefix.len()
            && word.as_bytes()[..prefix.len()]
                .iter()
                .zip(prefix.as_bytes())
                .all(|(a, b)| a.to_ascii_lowercase() == *b)
    } else {
        word.to_lowercase().starts_with(prefix)
    }
}

impl Condition {
    fn holds(&self, found: Option<&Value>) -> bool {
        let Some(found) = found else {
            return self.op == Op::Ne;
        };
        let order = compare(found, &self.value);
        match self.op {
            Op::Eq => found == &self.value || order == Some(Ordering::Equal),
            Op::Ne => !(found == &self.value || order == Some(Ordering::Equal)),
            Op::Lt => order == Some(Ordering::Less),
            Op::Le => matches!(order, Some(Ordering::Less | Ordering::Equal)),
            Op::Gt => order == Some(Ordering::Greater),
            Op::Ge => matches!(order, Some(Ordering::Greater | Ordering::Equal)),
        }
    }
}

/// Numbers as numbers, strings by bytes; anything else is not ordered.
fn compare(a: &Value, b: &Value) -> Option<Ordering> {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64()?.partial_cmp(&y.as_f64()?),
        (Value::String(x), Value::String(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn parse_condition(text: &str) -> Result<Condition> {
    // Two-character operators first, so `a>=1` is not read as `a>` `=1`.
    const OPS: [(&str, Op); 6] = [
        (">=", Op::Ge),
        ("<=", Op::Le),
        ("!=", Op::Ne),
        ("=", Op::Eq),
        (">", Op::Gt),
        ("<", Op::Lt),
    ];
    let found = OPS
        .iter()
        .filter_map(|(s, op)| text.find(s).map(|at| (at, *s, *op)))
        .min_by_key(|(at, s, _)| (*at, std::cmp::Reverse(s.len())));
    let Some((at, s, op)) = found else {
        return Err(Error::InvalidInput(format!(
            "metadata condition {text:?} has no operator: write KEY=VALUE, KEY!=VALUE, KEY>VALUE, KEY>=VALUE, KEY<VALUE or KEY<=VALUE"
        )));
    };
    let key = text[..at].trim();
    if key.is_empty() {
        return Err(Error::InvalidInput(format!(
            "metadata condition {text:?} has no key before {s:?}"
        )));
    }
    let raw = text[at + s.len()..].trim();
    let value = serde_json::from_str(raw).unwrap_or_else(|_| Value::String(raw.to_owned()));
    Ok(Condition {
        key: key.to_owned(),
        op,
        value,
    })
}

/// Lowercase words (runs of letters and digits) with their byte offsets.
pub(super) fn words(s: &str) -> Vec<(usize, String)> {
    word_spans(s)
        .map(|(st, en)| (st, s[st..en].to_lowercase()))
        .collect()
}

/// The byte ranges of the words (runs of letters and digits) of `s`, in order.
pub(super) fn word_spans(s: &str) -> impl Iterator<Item = (usize, usize)> + '_ {
    let mut chars = s.char_indices().peekable();
    std::iter::from_fn(move || {
        let start = loop {
            let (i, c) = chars.next()?;
            if c.is_alphanumeric() {
                break i;
            }
        };
        let mut end = s.len();
        while let Some(&(i, c)) = chars.peek() {
            if !c.is_alphanumeric() {
                end = i;
                break;
            }
            chars.next();
        }
        Some((start, end))
    })
}

fn parse_terms(text: &str) -> Vec<Term> {
    let mut terms = Vec::new();
    for (i, part) in text.split('"').enumerate() {
        let ws: Vec<String> = words(part).into_iter().map(|(_, w)| w).collect();
        if i % 2 == 1 && ws.len() > 1 {
            terms.push(Term::Phrase(ws));
        } else {
            terms.extend(ws.into_iter().map(Term::Word));
        }
    }
    terms
}

/// Every string of `v` (values, and map keys as their own path) with its dot path.
fn collect_strings<'a>(v: &'a Value, path: &mut String, out: &mut Vec<(String, &'a str)>) {
    let mut child = |path: &mut String, key: &str, v: &'a Value| {
        let len = path.len();
        if !path.is_empty() {
            path.push('.');
        }
        path.push_str(key);
        collect_strings(v, path, out);
        path.truncate(len);
    };
    match v {
        Value::String(s) => out.push((path.clone(), s.as_str())),
        Value::Array(items) => {
            for (i, item) in items.iter().enumerate() {
                child(path, &i.to_string(), item);
            }
        }
        Value::Object(map) => {
            for (k, item) in map {
                child(path, k, item);
            }
        }
        _ => {}
    }
}

/// `text` around byte `at`, cut on character boundaries, with `…` where it was cut.
fn snippet(text: &str, at: usize) -> String {
    let mut start = at.saturating_sub(SNIPPET_CONTEXT);
    while !text.is_char_boundary(start) {
        start -= 1;
    }
    let mut end = (at + SNIPPET_CONTEXT * 2).min(text.len());
    while !text.is_char_boundary(end) {
        end += 1;
    }
    let mut out = String::new();
    if start > 0 {
        out.push('…');
    }
    out.push_str(&text[start..end]);
    if end < text.len() {
        out.push('…');
    }
    out
}

pub(super) fn nanos(t: SystemTime) -> u128 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos())
}

pub(super) fn position(h: &CheckpointHeader) -> Position {
    Position {
        nanos: nanos(h.timestamp),
        execution_id: h.execution_id.clone(),
        version: h.version,
    }
}

/// The results' order: newest first, then by execution id, then newest version first.
pub(super) fn order(a: &Position, b: &Position) -> Ordering {
    b.nanos
        .cmp(&a.nanos)
        .then_with(|| a.execution_id.cmp(&b.execution_id))
        .then_with(|| b.version.cmp(&a.version))
}

pub(super) fn format_cursor(p: &Position) -> String {
    format!("{}:{}:{}", p.nanos, p.version, p.execution_id)
}

fn parse_cursor(text: &str) -> Result<Position> {
    let bad = || {
        Error::InvalidInput(format!(
            "search cursor {:?} is not one a search returned (NANOS:VERSION:EXECUTION)",
            crate::checkpoint::shorten(text)
        ))
    };
    let mut parts = text.splitn(3, ':');
    let nanos = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let version = parts.next().and_then(|p| p.parse().ok()).ok_or_else(bad)?;
    let execution_id = parts.next().filter(|e| !e.is_empty()).ok_or_else(bad)?;
    Ok(Position {
        nanos,
        execution_id: execution_id.to_owned(),
        version,
    })
}

impl Store {
    /// Searches every execution (or those with a prefix) for checkpoints that match `query`,
    /// newest first, one page at a time ([`SearchPage::next_cursor`]). See [`SearchQuery`] for
    /// the conditions.
    ///
    /// It scans ([`SearchMethod::Scan`]): the headers of the candidate executions are filtered
    /// first (metadata, node, time: no state is read), then the remaining candidates' states
    /// are read, newest first, until the page is full. It works alike on every backend and on
    /// encrypted stores (states are decrypted in memory; nothing is written).
    pub async fn search(&self, query: &SearchQuery) -> Result<SearchPage> {
        let span = op_span!("ckpt.search", self; count = Empty, states_read = Empty);
        let op = async {
            match self.search_indexed(query).await? {
                Some(page) => Ok(page),
                None => self.search_scan(query).await,
            }
        };
        let page = self.traced(&span, op).await?;
        span.record("count", page.hits.len());
        span.record("states_read", page.states_read);
        Ok(page)
    }

    async fn search_scan(&self, query: &SearchQuery) -> Result<SearchPage> {
        let mut candidates = Vec::new();
        for summary in self.executions().await? {
            let exec = summary.execution_id;
            if query
                .execution_prefix
                .as_ref()
                .is_some_and(|p| !exec.starts_with(p.as_str()))
            {
                continue;
            }
            let mut history = HistoryQuery::default();
            if let Some(node) = &query.node {
                history = history.node(node.clone());
            }
            for h in self.history(&exec, history).await? {
                if query.header_matches(&h) {
                    candidates.push((position(&h), h));
                }
            }
        }
        candidates.sort_by(|(a, _), (b, _)| order(a, b));
        let candidates = candidates
            .into_iter()
            .map(|(p, h)| {
                let hit = SearchHit {
                    id: h.id,
                    node_name: h.node_name,
                    timestamp: h.timestamp,
                    path: None,
                    snippet: None,
                };
                (p, hit)
            })
            .collect();
        self.check_candidates(query, candidates).await
    }

    /// Reads the states of `candidates` (sorted in result order), past the query's cursor,
    /// until a page of those matching the text is full.
    pub(super) async fn check_candidates(
        &self,
        query: &SearchQuery,
        candidates: Vec<(Position, SearchHit)>,
    ) -> Result<SearchPage> {
        let after = |p: &Position| {
            query
                .cursor
                .as_ref()
                .is_none_or(|c| order(p, c) == Ordering::Greater)
        };
        let limit = query.page_size();
        let mut hits = Vec::new();
        let mut states_read = 0;
        let mut next_cursor = None;
        let rest: Vec<(Position, SearchHit)> =
            candidates.into_iter().filter(|(p, _)| after(p)).collect();
        let mut states = HashMap::new();
        for (i, (pos, h)) in rest.iter().enumerate() {
            let matched = if query.terms.is_empty() {
                Some(None)
            } else {
                if !states.contains_key(&(pos.execution_id.as_str(), pos.version)) {
                    // The next candidates, as many as the page still needs, are read together.
                    let ahead = &rest[i..rest.len().min(i + limit - hits.len())];
                    states = self.states_ahead(ahead).await?;
                }
                states_read += 1;
                let state = match states.get(&(pos.execution_id.as_str(), pos.version)) {
                    Some(Some(s)) => crate::codec::value::to_json(s),
                    _ => self.load(&h.id).await?.state_json()?,
                };
                query.text_match(&state)
            };
            let Some(place) = matched else { continue };
            let (path, snippet) = place.map_or((None, None), |(p, s)| (Some(p), Some(s)));
            hits.push(SearchHit {
                path,
                snippet,
                ..h.clone()
            });
            if hits.len() == limit {
                if i + 1 < rest.len() {
                    next_cursor = Some(format_cursor(pos));
                }
                break;
            }
        }
        Ok(SearchPage {
            hits,
            next_cursor,
            method: SearchMethod::Scan,
            states_read,
        })
    }

    /// The states of `candidates`, read execution by execution in one pass each (`None` for a
    /// candidate that did not read so: the caller loads it by itself).
    #[allow(clippy::type_complexity)]
    async fn states_ahead<'a>(
        &self,
        candidates: &'a [(Position, SearchHit)],
    ) -> Result<HashMap<(&'a str, u64), Option<Arc<rmpv::Value>>>> {
        let mut by_exec: BTreeMap<&str, BTreeSet<u64>> = BTreeMap::new();
        for (p, _) in candidates {
            by_exec
                .entry(p.execution_id.as_str())
                .or_default()
                .insert(p.version);
        }
        // A few executions at a time (each holds only its own projection's lock). On an
        // error, the one-by-one loads say what is wrong.
        let read = |(exec, versions): (&'a str, BTreeSet<u64>)| async move {
            let mut found = self.states_along(exec, &versions).await.unwrap_or_default();
            versions
                .into_iter()
                .map(|v| ((exec, v), found.remove(&v)))
                .collect::<Vec<_>>()
        };
        let mut reads = stream::iter(by_exec).map(read).buffer_unordered(4);
        let mut out = HashMap::new();
        while let Some(found) = reads.next().await {
            out.extend(found);
        }
        Ok(out)
    }

    /// The first (oldest) checkpoint of `execution_id` that matches `query` (its other
    /// conditions than the execution prefix and the cursor apply): "when did this appear?".
    pub async fn search_first(
        &self,
        execution_id: &str,
        query: &SearchQuery,
    ) -> Result<Option<SearchHit>> {
        let mut history = HistoryQuery::default();
        if let Some(node) = &query.node {
            history = history.node(node.clone());
        }
        let mut headers = self.history(execution_id, history).await?;
        headers.reverse();
        for h in headers.into_iter().filter(|h| query.header_matches(h)) {
            let place = if query.terms.is_empty() {
                Some(None)
            } else {
                let state = self.load(&h.id).await?.state_json()?;
                query.text_match(&state)
            };
            if let Some(place) = place {
                let (path, snippet) = place.map_or((None, None), |(p, s)| (Some(p), Some(s)));
                return Ok(Some(SearchHit {
                    id: h.id,
                    node_name: h.node_name,
                    timestamp: h.timestamp,
                    path,
                    snippet,
                }));
            }
        }
        Ok(None)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_match_as_prefixes_and_phrases_in_order() {
        let q = SearchQuery::text("ORD a-10");
        let state = json!({"a": {"b": ["nothing", "Where is Order A-1077?"]}});
        let (path, snip) = q.text_match(&state).unwrap().unwrap();
        assert_eq!(path, "a.b.1");
        assert!(snip.contains("Order A-1077"), "{snip}");
        assert!(SearchQuery::text("order b").text_match(&state).is_none());
        let phrase = SearchQuery::text("\"is order\"");
        assert!(phrase.text_match(&state).is_some());
        assert!(SearchQuery::text("\"order is\"")
            .text_match(&state)
            .is_none());
        // Every word must be somewhere; one missing word fails the match.
        assert!(SearchQuery::text("where zebra")
            .text_match(&state)
            .is_none());
        assert_eq!(SearchQuery::new().text_match(&state), Some(None));
    }

    /// The allocation-free matcher agrees with matching on [`words`] (what the index uses),
    /// non-ASCII words and a final sigma included.
    #[test]
    fn find_agrees_with_the_lowercased_words() {
        fn reference(term: &Term, s: &str) -> Option<usize> {
            let ws = words(s);
            match term {
                Term::Word(w) => ws
                    .iter()
                    .find(|(_, x)| x.starts_with(w.as_str()))
                    .map(|x| x.0),
                Term::Phrase(p) => ws.windows(p.len()).find_map(|win| {
                    let last = p.len() - 1;
                    win.iter()
                        .zip(p)
                        .enumerate()
                        .all(|(i, ((_, w), q))| {
                            if i == last {
                                w.starts_with(q.as_str())
                            } else {
                                w == q
                            }
                        })
                        .then(|| win[0].0)
                }),
            }
        }
        let strings = [
            "Where is Order A-1077? order is here",
            "ΟΔΟΣ οδος Οδός and STRASSE Straße İstanbul",
            "x",
            "",
            "a b a b c, ABC abcd",
            "naïve café ÇA ça",
            "order-7,ORDER7 xorder 7order Order",
            "Kelvin \u{212A}ELVIN İSTANBUL",
        ];
        let queries = [
            "order",
            "ORD",
            "a",
            "\"is order\"",
            "\"order is\"",
            "οδος",
            "οδοσ",
            "οδ",
            "straße",
            "stras",
            "i̇stanbul",
            "istanbul",
            "\"a b c\"",
            "\"b a b\"",
            "abc",
            "\"naïve café\"",
            "ça",
            "zebra",
            "\"order a\"",
            "\"ord is\"",
            "\"ab abcd\"",
            "7",
            "7o",
            "x",
            "kel",
            "i",
        ];
        for q in queries {
            for term in parse_terms(q) {
                for s in strings {
                    assert_eq!(term.find(s), reference(&term, s), "{q:?} in {s:?}");
                }
            }
        }
    }

    #[test]
    fn conditions_compare_numbers_and_strings() {
        let c = |t: &str| parse_condition(t).unwrap();
        assert!(c("step>10").holds(Some(&json!(11))));
        assert!(!c("step>10").holds(Some(&json!(10))));
        assert!(c("step>=10").holds(Some(&json!(10.0))));
        assert!(c("user=alice").holds(Some(&json!("alice"))));
        assert!(!c("user=alice").holds(None));
        assert!(c("user!=alice").holds(None));
        assert!(c("day<2026-12-02").holds(Some(&json!("2026-12-01"))));
        assert!(parse_condition("no operator").is_err());
        assert!(parse_condition("=3").is_err());
    }

    #[test]
    fn cursors_round_trip_and_refuse_garbage() {
        let p = Position {
            nanos: 12,
            execution_id: "a:b".into(),
            version: 3,
        };
        assert_eq!(parse_cursor(&format_cursor(&p)).unwrap(), p);
        assert!(parse_cursor("x").is_err());
        assert!(parse_cursor("1:2:").is_err());
    }

    #[test]
    fn snippets_cut_on_characters() {
        let text = "é".repeat(100);
        let s = snippet(&text, 100);
        assert!(s.starts_with('…') && s.ends_with('…'));
    }
}
