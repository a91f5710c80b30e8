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
