//! Search across executions: text, metadata, node, execution prefix, order, paging, the first
//! match, and what delete, clear, fork, gc, reopen and import change.

use std::sync::Arc;

use serde_json::json;

use crate::testing::helpers::must;
use crate::testing::Harness;
use crate::{Checkpoint, CheckpointId, SearchQuery, Store};

/// Saves a three-turn support chat to `exec` for `user`: the order id appears at turn 2.
async fn chat(store: &Store, exec: &str, user: &str, order: &str) -> Vec<Checkpoint> {
    let turns = [
        ("agent", "hello, how can I help?"),
        ("tools", &*format!("looked up order {order}: shipped")),
        ("agent", "anything else today?"),
    ];
    let mut messages = Vec::new();
    let mut out = Vec::new();
    for (step, (node, text)) in turns.iter().enumerate() {
        messages.push(json!({ "role": *node, "content": *text }));
        let cp = must(
            Checkpoint::new(exec, node, &json!({ "messages": messages.clone() })),
            "checkpoint",
        )
        .with_metadata("user", user)
        .with_metadata("step", step as u64 + 1);
        out.push(must(store.save(cp).await, format_args!("saving {exec}")));
    }
    out
}

fn ids(page: &crate::SearchPage) -> Vec<String> {
    page.hits.iter().map(|h| h.id.to_string()).collect()
}

async fn search(store: &Store, q: SearchQuery, what: &str) -> Vec<String> {
    ids(&must(store.search(&q).await, what))
}

/// Text (prefix words, phrases), metadata equality and ranges, node, execution prefix, all
/// combined; results newest first with their path and snippet; pages that cover every match
/// once; the first version where a text appeared.
pub async fn search_finds_text_metadata_and_nodes(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    chat(&store, "s-alice-1", "alice", "A-1077").await;
    chat(&store, "s-bob-1", "bob", "B-2001").await;
    chat(&store, "t-alice-2", "alice", "A-3003").await;

    let all = search(&store, SearchQuery::new().limit(100), "all").await;
    assert_eq!(all.len(), 9, "[{name}] every checkpoint: {all:?}");

    // A word as a prefix, case-insensitive; it appeared at step 2 and stays in the state.
    let page = must(store.search(&SearchQuery::text("a-10")).await, "text");
    assert_eq!(ids(&page), ["s-alice-1@3", "s-alice-1@2"], "[{name}] text");
    let hit = &page.hits[1];
    assert_eq!(
        hit.path.as_deref(),
        Some("messages.1.content"),
        "[{name}] path"
    );
    assert!(
        hit.snippet
            .as_deref()
            .unwrap_or("")
            .contains("order A-1077"),
        "[{name}] snippet {:?}",
        hit.snippet
    );
    assert_eq!(hit.node_name, "tools", "[{name}] node of the hit");
    let upper = search(&store, SearchQuery::text("ORDER b-2"), "upper case").await;
    assert_eq!(
        upper,
        ["s-bob-1@3", "s-bob-1@2"],
        "[{name}] case and two words"
    );
    let phrase = search(&store, SearchQuery::text("\"anything else\""), "phrase").await;
    assert_eq!(phrase.len(), 3, "[{name}] phrase: {phrase:?}");
    let wrong_order = search(&store, SearchQuery::text("\"else anything\""), "phrase").await;
    assert!(wrong_order.is_empty(), "[{name}] a phrase is in order");
    let none = search(&store, SearchQuery::text("zebra"), "absent").await;
    assert!(none.is_empty(), "[{name}] absent word");

    // Metadata, node, execution prefix.
    let q = must(SearchQuery::new().metadata("user=alice"), "query");
    let q = must(q.metadata("step>=2"), "query").limit(100);
    let alice = search(&store, q, "metadata").await;
    assert_eq!(alice.len(), 4, "[{name}] user=alice, step>=2: {alice:?}");
    assert!(
        alice
            .iter()
            .all(|id| id.contains("alice") && !id.ends_with("@1")),
        "[{name}] {alice:?}"
    );
    let tools = search(&store, SearchQuery::new().node("tools").limit(100), "node").await;
    assert_eq!(tools.len(), 3, "[{name}] node: {tools:?}");
    let prefixed = SearchQuery::text("order").execution_prefix("s-").limit(100);
    let prefixed = search(&store, prefixed, "prefix").await;
    assert_eq!(prefixed.len(), 4, "[{name}] prefix: {prefixed:?}");
    assert!(prefixed.iter().all(|id| id.starts_with("s-")), "[{name}]");

    // Newest first: every hit at least as new as the next.
    let page = must(store.search(&SearchQuery::new().limit(100)).await, "all");
    assert!(
        page.hits
            .windows(2)
            .all(|w| w[0].timestamp >= w[1].timestamp),
        "[{name}] newest first"
    );

    // Pages of 2 cover the 9 checkpoints once each, in the same order.
    let mut paged = Vec::new();
    let mut q = SearchQuery::new().limit(2);
    loop {
        let page = must(store.search(&q).await, "page");
        paged.extend(ids(&page));
        match page.next_cursor {
            Some(c) => q = must(SearchQuery::new().limit(2).cursor(&c), "cursor"),
            None => break,
        }
    }
    assert_eq!(paged, all, "[{name}] paging");
    assert!(
        SearchQuery::new().cursor("not a cursor").is_err(),
        "[{name}]"
    );

    // When did it appear?
    let first = must(
        store
            .search_first("s-alice-1", &SearchQuery::text("shipped"))
            .await,
        "first",
    );
    assert_eq!(
        first.map(|h| h.id.to_string()),
        Some("s-alice-1@2".to_owned()),
        "[{name}] first"
    );
}

/// Search sees what the log says: a deleted version and a cleared execution are gone, a fork
/// is found under its own id, gc changes no answer, a reopened store and an imported copy
/// answer the same.
pub async fn search_follows_delete_clear_fork_and_gc(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let a = chat(&store, "sx-a", "alice", "A-1").await;
    chat(&store, "sx-b", "bob", "B-1").await;
    let q = || SearchQuery::text("order").limit(100);
    assert_eq!(search(&store, q(), "before").await.len(), 4, "[{name}]");

    must(store.delete(&a[2].id).await, "delete");
    let after_delete = search(&store, q(), "after delete").await;
    assert!(
        !after_delete.contains(&a[2].id.to_string()),
        "[{name}] deleted version found"
    );
    assert_eq!(after_delete.len(), 3, "[{name}] {after_delete:?}");

    let fork = must(store.fork(&a[1].id, "sx-fork").await, "fork");
    let forked = search(&store, q().execution_prefix("sx-fork"), "fork").await;
    assert_eq!(forked, [fork.id.to_string()], "[{name}] fork");

    must(store.clear("sx-b").await, "clear");
    let cleared = search(&store, q().execution_prefix("sx-b"), "clear").await;
    assert!(
        cleared.is_empty(),
        "[{name}] cleared execution found: {cleared:?}"
    );

    let before_gc = search(&store, q(), "before gc").await;
    must(store.gc().await, "gc");
    assert_eq!(
        search(&store, q(), "after gc").await,
        before_gc,
        "[{name}] gc"
    );
    assert_eq!(
        search(&store.reopened(), q(), "reopened").await,
        before_gc,
        "[{name}] reopen"
    );

    // An imported copy (with the same keys when encrypted) answers the same.
    let execs: Vec<String> = ["sx-a", "sx-fork"].map(String::from).to_vec();
    let bytes = must(store.export(&execs).await, "export").encode();
    let bundle = must(crate::bundle::Bundle::decode(&bytes), "decode");
    let other = store.with_same_keys(Arc::new(crate::backend::memory::MemoryBackend::new()));
    must(other.import(&bundle).await, "import");
    let imported: Vec<CheckpointId> = must(other.search(&q()).await, "imported")
        .hits
        .into_iter()
        .map(|h| h.id)
        .collect();
    let expected: Vec<CheckpointId> = must(store.search(&q()).await, "here")
        .hits
        .into_iter()
        .map(|h| h.id)
        .collect();
    assert_eq!(imported, expected, "[{name}] import");
}

/// The queries [`indexed_search_agrees_with_scan`] asks after every change.
fn probe_queries(since: std::time::SystemTime) -> Vec<(&'static str, SearchQuery)> {
    let meta = |c: &str| must(SearchQuery::new().metadata(c), "condition");
    vec![
        ("word", SearchQuery::text("order")),
        ("prefix", SearchQuery::text("a-7")),
        ("two words", SearchQuery::text("shipped a-77")),
        ("phrase", SearchQuery::text("\"order a\"")),
        ("branch word", SearchQuery::text("refund")),
        ("absent word", SearchQuery::text("zzyzx")),
        ("equality", meta("user=alice")),
        ("range", meta("step>=2")),
        ("below", meta("step<2")),
        ("not equal", meta("user!=bob")),
        ("node", SearchQuery::new().node("tools")),
        ("prefix only", SearchQuery::new().execution_prefix("ix-a")),
        ("everything", SearchQuery::new()),
        ("since", SearchQuery::new().since(since)),
        ("until", SearchQuery::new().until(since)),
        (
            "text and metadata",
            must(SearchQuery::text("order").metadata("user=alice"), "q"),
        ),
        ("text and node", SearchQuery::text("anything").node("agent")),
    ]
}

/// Pages through `q` (two hits a page) and returns every page.
async fn all_pages(store: &Store, q: &SearchQuery, what: &str) -> Vec<crate::SearchPage> {
    let mut pages = Vec::new();
    let mut q = q.clone().limit(2);
    loop {
        let page = must(store.search(&q).await, what);
        let next = page.next_cursor.clone();
        pages.push(page);
        match next {
            Some(c) if pages.len() < 100 => q = must(q.cursor(&c), "cursor"),
            _ => return pages,
        }
    }
}

/// Every query answers the same from the index as by scanning: the same first page, and the
/// same hits over all pages. (A page may end with a cursor where a scan had candidates left
/// that turn out not to match, so the page breaks may differ.)
async fn agrees(store: &Store, name: &str, when: &str, since: std::time::SystemTime) {
    for (what, q) in probe_queries(since) {
        let indexed = all_pages(store, &q, what).await;
        let scanned = all_pages(store, &q.clone().without_index(), what).await;
        for (i, page) in indexed.iter().enumerate() {
            assert_eq!(
                page.method,
                crate::SearchMethod::Index,
                "[{name}] {when}: {what} page {i} not from the index"
            );
        }
        assert_eq!(
            indexed[0].hits, scanned[0].hits,
            "[{name}] {when}: {what}: the first page differs from the scan"
        );
        let every = |pages: &[crate::SearchPage]| -> Vec<crate::SearchHit> {
            pages.iter().flat_map(|p| p.hits.clone()).collect()
        };
        assert_eq!(
            every(&indexed),
            every(&scanned),
            "[{name}] {when}: {what}: the hits over all pages differ from the scan"
        );
    }
}

/// Every byte the backend holds: frames, blobs, derived records and search entries.
async fn everything_stored(store: &Store) -> Vec<Vec<u8>> {
    let backend = store.backend();
    let mut out = Vec::new();
    for log in must(backend.list_logs().await, "logs") {
        for (_, frame) in must(backend.scan(&log, 0, usize::MAX).await, "frames") {
            out.push(frame);
        }
    }
    let hashes = must(backend.list_blobs().await, "blobs");
    out.extend(
        must(backend.get_blobs(&hashes).await, "blobs")
            .into_iter()
            .flatten(),
    );
    let caps = backend.capabilities();
    if let Some(side) = caps.side_table {
        for (k, v) in must(side.scan_records("").await, "records") {
            out.push(k.into_bytes());
            out.push(v);
        }
    }
    if let Some(table) = caps.search_table {
        for (k, v) in must(table.scan_index(b"", None, usize::MAX).await, "index") {
            out.push(k);
            out.push(v);
        }
    }
    out
}

fn holds(haystack: &[Vec<u8>], needle: &[u8]) -> bool {
    haystack
        .iter()
        .any(|b| b.windows(needle.len()).any(|w| w == needle))
}

/// The search index ([`Store::reindex`]) answers every query as the scan does, page by page,
/// after saves (its own and another store's), a branch, delete, fork, clear, gc, a reopen, a
/// rebuild and an import; gc takes the entries of what was deleted; verify finds a damaged index. An
/// encrypted store refuses an index and holds no plaintext word anywhere.
pub async fn indexed_search_agrees_with_scan(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let a = chat(&store, "ix-a", "alice", "A-77").await;
    chat(&store, "ix-b", "bob", "B-88").await;
    let since = a[1].timestamp;

    if must(store.is_encrypted().await, "is_encrypted") {
        match store.reindex().await {
            Err(crate::Error::InvalidInput(why)) => assert!(
                why.contains("encrypted"),
                "[{name}] the refusal says why: {why}"
            ),
            other => panic!("[{name}] an encrypted store was indexed: {other:?}"),
        }
        let page = must(store.search(&SearchQuery::text("a-77")).await, "search");
        assert_eq!(page.method, crate::SearchMethod::Scan, "[{name}]");
        assert_eq!(ids(&page), ["ix-a@3", "ix-a@2"], "[{name}] encrypted scan");
        let stored = everything_stored(&store).await;
        for word in [&b"A-77"[..], b"shipped", b"alice", b"hello"] {
            assert!(
                !holds(&stored, word),
                "[{name}] {:?} is stored in plaintext",
                String::from_utf8_lossy(word)
            );
        }
        return;
    }

    let report = must(store.reindex().await, "reindex");
    assert_eq!(
        (report.executions, report.checkpoints),
        (2, 6),
        "[{name}] reindex: {report:?}"
    );
    assert!(
        report.entries > 0 && report.bytes > 0,
        "[{name}] {report:?}"
    );
    agrees(&store, name, "after reindex", since).await;

    // Saves after the index exists feed it (the words of their deltas only).
    let c = chat(&store, "ix-c", "carol", "A-7799").await;
    agrees(&store, name, "after saves", since).await;

    // A branch from version 1, adding a word the first branch never had.
    let branch = must(
        Checkpoint::new(
            "ix-a",
            "agent",
            &json!({"messages": [{"role": "agent", "content": "refund issued for A-77"}]}),
        ),
        "checkpoint",
    )
    .with_metadata("user", "alice")
    .with_metadata("step", 2);
    must(store.save_with_parent(branch, &a[0].id).await, "branch");
    agrees(&store, name, "after a branch", since).await;

    // Another store on the same backend saves: this one catches up at its next search (on
    // Redis, where listing the logs costs a `SCAN`, within a second).
    let other = store.reopened();
    chat(&other, "ix-d", "dave", "D-5").await;
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    agrees(&store, name, "after another store's saves", since).await;
    agrees(&other, name, "in the other store", since).await;

    must(store.delete(&a[2].id).await, "delete");
    must(store.fork(&a[1].id, "ix-fork").await, "fork");
    must(store.clear("ix-c").await, "clear");
    agrees(&store, name, "after delete, fork and clear", since).await;

    // gc takes the entries of what was deleted: none names the cleared execution.
    must(store.gc().await, "gc");
    agrees(&store, name, "after gc", since).await;
    let table = store
        .backend()
        .capabilities()
        .search_table
        .unwrap_or_else(|| panic!("[{name}] an indexed store has a search table"));
    let entries = must(table.scan_index(b"", None, usize::MAX).await, "entries");
    // Keys but the per-execution position entries (`c`, which a cleared log keeps).
    let keys: Vec<Vec<u8>> = entries
        .iter()
        .filter(|(k, _)| k.first() != Some(&b'c'))
        .map(|(k, _)| k.clone())
        .collect();
    assert!(
        !holds(&keys, c[0].execution_id.as_bytes()),
        "[{name}] the cleared execution's entries survived gc"
    );
    let (contents, damaged) = must(store.index_contents().await, "contents");
    assert_eq!(damaged, 0, "[{name}]");
    assert!(
        !contents.contains_key(&c[0].execution_id),
        "[{name}] the cleared execution's entries survived gc"
    );
    assert!(
        contents
            .values()
            .all(|e| e.words.keys().all(|w| !w.contains("7799"))),
        "[{name}] the cleared execution's words survived gc"
    );
    assert!(
        contents
            .get("ix-a")
            .is_some_and(|e| e.words.contains_key("shipped")),
        "[{name}] the index holds ix-a's words: {contents:?}"
    );
    let verified = must(store.verify().await, "verify");
    assert!(
        verified.index_problems.is_empty(),
        "[{name}] {:?}",
        verified.index_problems
    );

    // A damaged index (a block of words lost) is found by verify, and a rebuild mends it.
    let word = entries
        .iter()
        .find(|(k, _)| k.first() == Some(&b'M') && k.get(9) == Some(&b'w'))
        .map(|(k, _)| k.clone())
        .unwrap_or_else(|| panic!("[{name}] a block of words in the main index"));
    must(table.write_index(Vec::new(), vec![word]).await, "damage");
    let verified = must(store.verify().await, "verify");
    assert!(
        verified
            .index_problems
            .iter()
            .any(|p| p.contains("\"ix-a\"") && p.contains("missing")),
        "[{name}] verify finds the lost words: {:?}",
        verified.index_problems
    );
    assert!(!verified.is_ok(), "[{name}] a damaged index is a problem");
    must(store.reindex().await, "reindex");
    assert!(must(store.verify().await, "verify").is_ok(), "[{name}]");
    agrees(&store.reopened(), name, "reopened after a rebuild", since).await;

    // An imported copy, in an indexed store of its own, answers as its scan does.
    let execs: Vec<String> = ["ix-a", "ix-fork"].map(String::from).to_vec();
    let bytes = must(store.export(&execs).await, "export").encode();
    let bundle = must(crate::bundle::Bundle::decode(&bytes), "decode");
    let copy = store.with_same_keys(Arc::new(crate::backend::memory::MemoryBackend::new()));
    must(copy.reindex().await, "index the copy");
    must(copy.import(&bundle).await, "import");
    agrees(&copy, name, "in an imported copy", since).await;
    let found = must(copy.search(&SearchQuery::text("refund")).await, "copy");
    assert_eq!(ids(&found), ["ix-a@4"], "[{name}] the branch came along");

    // Dropped by another store, the index is neither fed nor read by this one any more.
    let feeding = store.reopened();
    chat(&feeding, "ix-e", "erin", "E-3").await;
    must(feeding.flush().await, "flush");
    let (fed, _) = must(feeding.index_contents().await, "contents");
    assert!(
        fed.get("ix-e")
            .is_some_and(|e| e.words.contains_key("erin") || !e.heads.is_empty()),
        "[{name}] a reopened store feeds the index"
    );
    must(store.drop_index().await, "drop");
    chat(&feeding, "ix-f", "fay", "F-4").await;
    must(feeding.flush().await, "flush");
    let left = must(table.scan_index(b"", None, usize::MAX).await, "entries");
    assert!(
        left.is_empty(),
        "[{name}] a store kept feeding a dropped index: {} entries",
        left.len()
    );
    let fay = must(SearchQuery::new().metadata("user=fay"), "query");
    let page = must(feeding.search(&fay).await, "search");
    assert_eq!(
        page.method,
        crate::SearchMethod::Scan,
        "[{name}] dropped elsewhere"
    );
    assert_eq!(ids(&page), ["ix-f@3", "ix-f@2", "ix-f@1"], "[{name}]");

    // Dropped, the store scans again.
    must(store.drop_index().await, "drop");
    let page = must(store.search(&SearchQuery::text("order")).await, "search");
    assert_eq!(page.method, crate::SearchMethod::Scan, "[{name}] dropped");
    assert_eq!(
        must(store.index_size().await, "size"),
        None,
        "[{name}] dropped"
    );
}
