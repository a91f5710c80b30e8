//! Reopen and several stores: every projection survives a reopen, and two stores on one storage see each other.

use std::fmt::Debug;

use crate::testing::helpers::{assert_cps_eq, assert_not_found, must, save_n, save_one};
use crate::testing::Harness;
use crate::{Checkpoint, CheckpointHeader, ExecutionSummary, HistoryQuery, Store};

/// Everything a store answers about some executions.
#[derive(Debug, PartialEq)]
struct Projections {
    lists: Vec<Vec<Checkpoint>>,
    latest: Vec<Option<Checkpoint>>,
    history: Vec<Vec<CheckpointHeader>>,
    loads: Vec<Checkpoint>,
    executions: Vec<ExecutionSummary>,
}

async fn capture(store: &Store, execs: &[&str]) -> Projections {
    let mut p = Projections {
        lists: Vec::new(),
        latest: Vec::new(),
        history: Vec::new(),
        loads: Vec::new(),
        executions: must(store.executions().await, "executions"),
    };
    for exec in execs {
        let list = must(store.list(exec).await, exec);
        for cp in &list {
            p.loads.push(must(store.load(&cp.id).await, &cp.id));
        }
        p.lists.push(list);
        p.latest.push(must(store.latest(exec).await, exec));
        p.history.push(must(
            store.history(exec, HistoryQuery::default()).await,
            exec,
        ));
    }
    p
}

#[track_caller]
fn assert_same_projections(actual: &Projections, expected: &Projections, what: &str) {
    for (a, e) in actual.lists.iter().zip(&expected.lists) {
        assert_cps_eq(a, e, format!("{what}: list"));
    }
    assert_cps_eq(&actual.loads, &expected.loads, format!("{what}: loads"));
    assert_eq!(actual.history, expected.history, "{what}: history");
    assert_eq!(actual.executions, expected.executions, "{what}: executions");
    assert_eq!(actual, expected, "{what}");
}

/// Saves, deletes and a fork, then a reopen: list, latest, history, load by id and executions are
/// all equal to before; saving continues above every earlier version with the right parent.
pub async fn reopen_keeps_every_projection(h: &dyn Harness) {
    let name = h.name();
    let execs = ["re-a", "re-b", "re-f"];
    let store = h.open().await;
    let a = save_n(&store, "re-a", 4).await;
    let b = save_n(&store, "re-b", 2).await;
    must(store.delete(&a[1].id).await, "delete");
    must(store.delete(&a[3].id).await, "delete latest");
    must(store.fork(&b[0].id, "re-f").await, "fork");
    let before = capture(&store, &execs).await;
    assert_eq!(
        before.lists.iter().map(Vec::len).collect::<Vec<_>>(),
        [2, 2, 1],
        "[{name}] setup"
    );
    drop(store);

    let store = h.open().await;
    let after = capture(&store, &execs).await;
    assert_same_projections(&after, &before, &format!("[{name}] after reopen"));
    let next = save_one(&store, "re-a", 5).await;
    assert!(
        next.version > a[3].version,
        "[{name}] version {} reused after reopen",
        next.version
    );
    assert_eq!(
        next.parent.as_ref(),
        Some(&a[2].id),
        "[{name}] parent after reopen"
    );
    let before = capture(&store, &execs).await;
    drop(store);
    let store = h.open().await;
    assert_same_projections(
        &capture(&store, &execs).await,
        &before,
        &format!("[{name}] after second reopen"),
    );
}

/// A second store on the same storage (a second `open` where the harness allows it, otherwise a
/// second `Store` on the same backend) sees the first one's saves, deletes and clears, and the
/// first sees the second's; parents and versions follow across them.
pub async fn two_stores_see_each_other(h: &dyn Harness) {
    let name = h.name();
    let one = h.open().await;
    let two = if h.allows_concurrent_opens() {
        h.open().await
    } else {
        one.with_same_keys(one.backend().clone())
    };
    let a = save_n(&one, "two", 2).await;
    assert_cps_eq(
        &must(two.list("two").await, "list"),
        &a,
        format!("[{name}] second store lists the first's saves"),
    );
    let b = save_one(&two, "two", 3).await;
    assert_eq!(
        b.parent.as_ref(),
        Some(&a[1].id),
        "[{name}] parent across stores"
    );
    assert!(b.version > a[1].version, "[{name}] version across stores");
    assert_eq!(
        must(one.latest("two").await, "latest").as_ref(),
        Some(&b),
        "[{name}] first store sees the second's save"
    );
    let c = save_one(&one, "two", 4).await;
    assert_eq!(
        c.parent.as_ref(),
        Some(&b.id),
        "[{name}] parent back across stores"
    );
    must(two.delete(&a[0].id).await, "delete");
    assert_not_found(
        one.load(&a[0].id).await,
        &a[0].id.to_string(),
        format!("[{name}] delete across stores"),
    );
    let expected = [a[1].clone(), b.clone(), c.clone()];
    assert_cps_eq(
        &must(one.list("two").await, "list"),
        &expected,
        format!("[{name}] first store's list"),
    );
    assert_cps_eq(
        &must(two.list("two").await, "list"),
        &expected,
        format!("[{name}] second store's list"),
    );
    must(one.clear("two").await, "clear");
    assert!(
        must(two.list("two").await, "list").is_empty(),
        "[{name}] clear across stores"
    );
    assert!(
        must(two.executions().await, "executions").is_empty(),
        "[{name}] executions after clear"
    );
}

/// The `i`-th checkpoint of [`a_long_execution_reopens_from_its_record`]: a small state.
fn long_checkpoint(i: u64) -> Checkpoint {
    let state = serde_json::json!({ "step": i, "note": format!("step {i} of a long run") });
    must(
        Checkpoint::new("long", "step", &state),
        "building a checkpoint",
    )
    .with_metadata("step", i)
}

/// Reads of `long` that a persisted projection answers alone.
async fn recent_reads(
    store: &Store,
    at: &[u64],
) -> (Option<Checkpoint>, Vec<CheckpointHeader>, Vec<Checkpoint>) {
    let latest = must(store.latest("long").await, "latest");
    let history = must(
        store
            .history("long", HistoryQuery::default().limit(20))
            .await,
        "history(20)",
    );
    let mut loads = Vec::new();
    for v in at {
        loads.push(must(
            store.at_version("long", *v).await,
            format_args!("at_version {v}"),
        ));
    }
    (latest, history, loads)
}

/// An execution of 700 checkpoints (with a delete near its head and one far back, writes and a
/// branch) reopens from its persisted projection where the backend keeps one: latest,
/// history(20) and recent versions are answered after folding only the log's tail, and equal
/// what a store that folded the whole log answers; every other read (an old version, the full
/// history, the list, executions) is unchanged. A record behind the log, damaged, or moved to
/// another execution is never trusted: the answers stay the same.
pub async fn a_long_execution_reopens_from_its_record(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut saved = Vec::new();
    for chunk in (1..=700u64).collect::<Vec<_>>().chunks(50) {
        let batch = chunk.iter().map(|i| long_checkpoint(*i)).collect();
        saved.extend(must(store.save_batch(batch).await, "save_batch"));
    }
    must(store.delete(&saved[3].id).await, "delete an old version");
    must(
        store.delete(&saved[690].id).await,
        "delete a recent version",
    );
    let head = saved[699].id.clone();
    must(
        store
            .put_writes(
                &head,
                vec![must(crate::Write::new("task-1", "out", &1), "write")],
            )
            .await,
        "put_writes",
    );
    must(
        store
            .save_with_parent(long_checkpoint(701), &saved[680].id)
            .await,
        "branch from a recent version",
    );
    let mut tail = Vec::new();
    for i in 702..=710 {
        tail.push(must(store.save(long_checkpoint(i)).await, "save"));
    }
    let recent: Vec<u64> = vec![saved[695].version, saved[680].version, tail[8].version];
    let expected_recent = recent_reads(&store, &recent).await;
    let expected = capture(&store, &["long"]).await;
    let expected_writes = must(store.writes(&head).await, "writes");
    must(store.flush().await, "flush");
    drop(store);

    let with_records = |s: &Store| s.backend().capabilities().side_table.is_some();
    let store = h.open().await;
    let before = store.read_stats();
    assert_eq!(
        recent_reads(&store, &recent).await,
        expected_recent,
        "[{name}] recent reads after reopen"
    );
    let old = must(
        store.at_version("long", saved[10].version).await,
        "old version",
    );
    assert_cps_eq(
        std::slice::from_ref(&old),
        std::slice::from_ref(&expected.lists[0][9]),
        format!("[{name}] an old version after reopen"),
    );
    assert_not_found(
        store.load(&saved[3].id).await,
        &saved[3].id.to_string(),
        format!("[{name}] deleted old version after reopen"),
    );
    let read = store.read_stats();
    if with_records(&store) {
        assert_eq!(
            read.records_opened - before.records_opened,
            1,
            "[{name}] record not opened"
        );
        let folded = read.frames_folded - before.frames_folded;
        assert!(
            folded < 300,
            "[{name}] reopen and an old version folded {folded} frames of ~720: the record \
             was not used"
        );
    }
    assert_eq!(
        must(store.writes(&head).await, "writes"),
        expected_writes,
        "[{name}] writes"
    );
    assert_same_projections(
        &capture(&store, &["long"]).await,
        &expected,
        &format!("[{name}] after reopen from a record"),
    );
    // Ten saves the record has not seen: the reopen folds them on top of it.
    for i in 711..=720 {
        tail.push(must(store.save(long_checkpoint(i)).await, "save"));
    }
    save_n(&store, "short", 3).await;
    let expected = capture(&store, &["long"]).await;
    let listed = must(store.executions().await, "executions");
    must(store.flush().await, "flush");
    drop(store);
    let store = h.open().await;
    // Listing reads the summary records written by the flush: it folds no log.
    let before = store.read_stats();
    assert_eq!(
        must(store.executions().await, "executions after reopen"),
        listed,
        "[{name}] executions after reopen"
    );
    if with_records(&store) {
        let folded = store.read_stats().frames_folded - before.frames_folded;
        assert_eq!(
            folded, 0,
            "[{name}] listing after a flush folded {folded} frames"
        );
    }
    assert_eq!(
        must(store.latest("long").await, "latest").map(|c| c.version),
        tail.last().map(|c| c.version),
        "[{name}] latest past a stale record"
    );
    assert_same_projections(
        &capture(&store, &["long"]).await,
        &expected,
        &format!("[{name}] after reopen from a stale record"),
    );
    let report = must(store.verify().await, "verify");
    assert!(
        report.is_ok(),
        "[{name}] verify after reopen: {:?}",
        report.problems()
    );
    let Some(side) = store.backend().capabilities().side_table else {
        return;
    };
    // A damaged record, then another execution's record under this one's key.
    let key = "p/long".to_owned();
    let good = must(
        side.get_records(std::slice::from_ref(&key)).await,
        "get record",
    );
    let good = good
        .into_iter()
        .next()
        .flatten()
        .expect("a record was written");
    let mut bad = good.clone();
    let middle = bad.len() / 2;
    bad[middle] ^= 0x40;
    must(store.flush().await, "flush");
    let short = must(
        side.get_records(&["p/short".to_owned()]).await,
        "get record",
    );
    drop(store);
    for (what, bytes) in [
        ("damaged", Some(bad)),
        ("moved", short.into_iter().next().flatten()),
    ] {
        let Some(bytes) = bytes else { continue };
        let store = h.open().await;
        let side = store
            .backend()
            .capabilities()
            .side_table
            .expect("side table");
        must(
            side.put_records(vec![(key.clone(), bytes)]).await,
            "put record",
        );
        assert_eq!(
            must(store.latest("long").await, "latest").map(|c| c.version),
            tail.last().map(|c| c.version),
            "[{name}] latest with a {what} record"
        );
        assert_eq!(
            store.read_stats().records_opened,
            0,
            "[{name}] a {what} record was opened"
        );
        assert_same_projections(
            &capture(&store, &["long"]).await,
            &expected,
            &format!("[{name}] with a {what} record"),
        );
        drop(store);
    }
}

/// Saves to more executions than a store keeps projections of in memory (1,024): each
/// execution's summary record must still be written, so that listing them all, in the store that
/// saved them and after a reopen, reads summaries and folds no log.
pub async fn listing_more_executions_than_are_cached_reads_summaries(h: &dyn Harness) {
    const EXECUTIONS: usize = 1_100;
    let name = h.name();
    let store = h.open().await;
    let with_records = store.backend().capabilities().side_table.is_some();
    let names: Vec<String> = (0..EXECUTIONS).map(|i| format!("many-{i:04}")).collect();
    for (i, exec) in names.iter().enumerate() {
        let cp = must(Checkpoint::new(exec, "n", &i), "checkpoint");
        must(store.save(cp).await, format!("[{name}] save {exec}"));
    }
    check_listing_reads_summaries(name, &store, &names, with_records).await;
    must(store.flush().await, "flush");
    drop(store);
    let store = h.open().await;
    check_listing_reads_summaries(name, &store, &names, with_records).await;
}

/// Lists every execution of `store`: exactly `names`, each with one checkpoint, and (on a
/// backend that keeps records) without folding any log.
async fn check_listing_reads_summaries(
    name: &str,
    store: &Store,
    names: &[String],
    with_records: bool,
) {
    let before = store.read_stats();
    let listed = must(store.executions().await, "executions");
    let ids: Vec<&str> = listed.iter().map(|s| s.execution_id.as_str()).collect();
    assert_eq!(ids, names, "[{name}] every execution listed, in order");
    assert!(listed
        .iter()
        .all(|s| s.checkpoints == 1 && s.latest_version == 1));
    if with_records {
        let folded = store.read_stats().frames_folded - before.frames_folded;
        assert_eq!(folded, 0, "[{name}] listing folded {folded} frames");
    }
}
