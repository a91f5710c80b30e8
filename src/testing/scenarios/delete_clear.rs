//! Delete and clear: what they hide, what they keep, and that versions are never reused.

use crate::testing::helpers::{
    assert_cp_eq, assert_cps_eq, assert_not_found, expected_summary, header_heads, heads, must,
    save_n, save_one, summary_views,
};
use crate::testing::Harness;
use crate::{Checkpoint, HistoryQuery, Store};

/// Deleting one checkpoint: it no longer loads (NotFound), list/history skip it, latest and every
/// other checkpoint (also of another execution) are untouched, deleting it again is NotFound; all
/// of which holds after a reopen.
pub async fn delete_hides_exactly_one_checkpoint(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let saved = save_n(&store, "del", 5).await;
    let other = save_n(&store, "del-other", 2).await;
    must(store.delete(&saved[2].id).await, "delete");
    check_one_deleted(&store, &format!("[{name}]"), &saved, &other).await;
    drop(store);
    let store = h.open().await;
    check_one_deleted(&store, &format!("[{name}] after reopen"), &saved, &other).await;
}

/// The checks of [`delete_hides_exactly_one_checkpoint`]: `saved[2]` of `del` is deleted.
async fn check_one_deleted(store: &Store, what: &str, saved: &[Checkpoint], other: &[Checkpoint]) {
    let live: Vec<Checkpoint> = [0, 1, 3, 4].iter().map(|&i| saved[i].clone()).collect();
    let gone = saved[2].id.to_string();
    assert_not_found(
        store.load(&saved[2].id).await,
        &gone,
        format!("{what}: load deleted"),
    );
    assert_not_found(
        store.at_version("del", saved[2].version).await,
        &gone,
        format!("{what}: at_version"),
    );
    assert_cps_eq(
        &must(store.list("del").await, what),
        &live,
        format!("{what}: list"),
    );
    let history = must(store.history("del", HistoryQuery::default()).await, what);
    assert_eq!(
        header_heads(&history),
        heads(live.iter().rev()),
        "{what}: history"
    );
    assert_eq!(
        must(store.latest("del").await, what).as_ref(),
        Some(&saved[4]),
        "{what}: latest"
    );
    for cp in &live {
        assert_cp_eq(
            &must(store.load(&cp.id).await, what),
            cp,
            format!("{what}: load"),
        );
    }
    assert_cps_eq(
        &must(store.list("del-other").await, what),
        other,
        format!("{what}: other execution"),
    );
    let summaries = summary_views(&must(store.executions().await, what));
    assert_eq!(
        summaries,
        vec![expected_summary(&live), expected_summary(other)],
        "{what}: executions"
    );
    assert_not_found(
        store.delete(&saved[2].id).await,
        &gone,
        format!("{what}: delete twice"),
    );
}

/// Deleting the latest makes the previous live checkpoint the latest, and the next save's parent;
/// deleting every checkpoint empties the execution, and a later save has no parent and a version
/// above every earlier one. States saved on top of deleted ones still load after a reopen.
pub async fn delete_of_the_latest_moves_latest_back(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let s = save_n(&store, "dl", 3).await;
    must(store.delete(&s[2].id).await, "delete #3");
    assert_eq!(
        must(store.latest("dl").await, "latest").as_ref(),
        Some(&s[1]),
        "[{name}] latest after delete"
    );
    let history = must(
        store.history("dl", HistoryQuery::default().limit(1)).await,
        "history",
    );
    assert_eq!(
        header_heads(&history),
        heads([&s[1]]),
        "[{name}] history head after delete"
    );

    let next = save_one(&store, "dl", 4).await;
    assert_eq!(
        next.parent.as_ref(),
        Some(&s[1].id),
        "[{name}] parent of the save after deleting the latest"
    );
    assert!(
        next.version > s[2].version,
        "[{name}] version {} reused",
        next.version
    );
    assert_cps_eq(
        &must(store.list("dl").await, "list"),
        &[s[0].clone(), s[1].clone(), next.clone()],
        format!("[{name}] list"),
    );

    for cp in [&next, &s[1], &s[0]] {
        must(store.delete(&cp.id).await, "delete");
    }
    assert!(
        must(store.latest("dl").await, "latest").is_none(),
        "[{name}] latest of an all-deleted execution"
    );
    assert!(
        must(store.list("dl").await, "list").is_empty(),
        "[{name}] list of an all-deleted execution"
    );
    let execs = must(store.executions().await, "executions");
    assert!(
        execs.iter().all(|e| e.execution_id != "dl"),
        "[{name}] all-deleted execution still summarised"
    );

    let again = save_one(&store, "dl", 5).await;
    assert_eq!(again.parent, None, "[{name}] parent when nothing is live");
    assert!(
        again.version > next.version,
        "[{name}] version reused after deleting everything"
    );
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("dl").await, "list"),
        &[again],
        format!("[{name}] list after reopen"),
    );
    assert_not_found(
        store.load(&next.id).await,
        &next.id.to_string(),
        format!("[{name}] deleted after reopen"),
    );
}

/// Clearing removes one execution from every projection (list, latest, load, history,
/// executions) and leaves another untouched; clearing an unknown or already cleared execution is
/// Ok; all of it holds after a reopen.
pub async fn clear_removes_only_its_execution(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let a = save_n(&store, "clr", 3).await;
    let b = save_n(&store, "clr-keep", 2).await;
    must(store.clear("clr").await, "clear");
    must(store.clear("clr").await, "clear again");
    must(store.clear("clr-never-existed").await, "clear unknown");
    check_cleared(&store, &format!("[{name}]"), &a, &b).await;
    drop(store);
    let store = h.open().await;
    check_cleared(&store, &format!("[{name}] after reopen"), &a, &b).await;
}

/// The checks of [`clear_removes_only_its_execution`]: `clr` (once `cleared`) is cleared, `clr-keep`
/// holds `kept`.
async fn check_cleared(store: &Store, what: &str, cleared: &[Checkpoint], kept: &[Checkpoint]) {
    assert!(
        must(store.list("clr").await, what).is_empty(),
        "{what}: list of a cleared execution"
    );
    assert!(
        must(store.latest("clr").await, what).is_none(),
        "{what}: latest of a cleared execution"
    );
    let history = must(store.history("clr", HistoryQuery::default()).await, what);
    assert!(history.is_empty(), "{what}: history of a cleared execution");
    for cp in cleared {
        assert_not_found(
            store.load(&cp.id).await,
            &cp.id.to_string(),
            format!("{what}: load cleared"),
        );
    }
    assert_cps_eq(
        &must(store.list("clr-keep").await, what),
        kept,
        format!("{what}: other execution"),
    );
    let summaries = summary_views(&must(store.executions().await, what));
    assert_eq!(
        summaries,
        vec![expected_summary(kept)],
        "{what}: executions"
    );
}

/// After a clear, new saves get versions above every version before the clear (also across a
/// reopen, and across a second clear), and start without a parent.
pub async fn clear_never_reuses_versions(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let first = save_n(&store, "reuse", 4).await;
    must(store.clear("reuse").await, "clear");
    let again = save_one(&store, "reuse", 1).await;
    assert!(
        again.version > first[3].version,
        "[{name}] version {} reused after clear",
        again.version
    );
    assert_eq!(
        again.parent, None,
        "[{name}] first save after a clear has a parent"
    );
    assert_cps_eq(
        &must(store.list("reuse").await, "list"),
        std::slice::from_ref(&again),
        format!("[{name}] list"),
    );
    must(store.clear("reuse").await, "second clear");
    drop(store);

    let store = h.open().await;
    let third = save_one(&store, "reuse", 1).await;
    assert!(
        third.version > again.version,
        "[{name}] version {} reused after clear + reopen",
        third.version
    );
    assert_cps_eq(
        &must(store.list("reuse").await, "list"),
        std::slice::from_ref(&third),
        format!("[{name}] list"),
    );
    assert_not_found(
        store.load(&again.id).await,
        &again.id.to_string(),
        format!("[{name}] cleared id"),
    );
}
