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
