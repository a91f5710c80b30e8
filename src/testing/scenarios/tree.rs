//! Branches inside one execution: saves that name their parent, and the tree queries (children,
//! heads, branch).

use crate::checkpoint::CheckpointHeader;
use crate::testing::helpers::{assert_cp_eq, assert_not_found, must, nth_checkpoint};
use crate::testing::Harness;
use crate::{Checkpoint, CheckpointId, Error, HistoryQuery, Store};

fn ids(headers: &[CheckpointHeader]) -> Vec<u64> {
    headers.iter().map(|h| h.version).collect()
}

/// What the tree of `exec` must look like after [`branches_form_a_tree`]'s saves: 1 <- 2 <- 3,
/// 1 <- 4 <- 5.
async fn assert_tree(store: &Store, exec: &str, what: &str) {
    let id = |v| must(CheckpointId::new(exec, v), "id");
    assert_eq!(
        ids(&must(store.heads(exec).await, "heads")),
        [5, 3],
        "{what}: heads"
    );
    assert_eq!(
        ids(&must(store.children(&id(1)).await, "children")),
        [2, 4],
        "{what}: children of 1"
    );
    assert_eq!(
        ids(&must(store.children(&id(3)).await, "children")),
        Vec::<u64>::new(),
        "{what}: children of 3"
    );
    let branch = must(
        store.branch(&id(5), HistoryQuery::default()).await,
        "branch",
    );
    assert_eq!(ids(&branch), [5, 4, 1], "{what}: branch of 5");
    assert_eq!(branch[0].parent, Some(id(4)), "{what}: parent in a header");
    assert_eq!(
        ids(&must(
            store.branch(&id(3), HistoryQuery::default()).await,
            "branch"
        )),
        [3, 2, 1],
        "{what}: branch of 3"
    );
    assert_eq!(
        ids(&must(
            store.branch(&id(5), HistoryQuery::default().limit(2)).await,
            "branch"
        )),
        [5, 4],
        "{what}: branch of 5, limit 2"
    );
    assert_eq!(
        ids(&must(
            store
                .branch(&id(5), HistoryQuery::default().before(5))
                .await,
            "branch"
        )),
        [4, 1],
        "{what}: branch of 5 before 5"
    );
    assert_eq!(
        ids(&must(
            store
                .branch(&id(5), HistoryQuery::default().node("act"))
                .await,
            "branch"
        )),
        [5, 4],
        "{what}: branch of 5 by node"
    );
    // History and latest do not change meaning: every version, newest save first.
    assert_eq!(
        ids(&must(
            store.history(exec, HistoryQuery::default()).await,
            "history"
        )),
        [5, 4, 3, 2, 1],
        "{what}: history"
    );
    let latest = must(store.latest(exec).await, "latest");
    assert_eq!(latest.map(|c| c.version), Some(5), "{what}: latest");
}

/// A save may name any live checkpoint of its execution as its parent: versions stay the log's
/// sequence numbers, the parent links form a tree, states load exactly as saved (whatever the
/// delta was built on), a plain save's parent stays the newest, and all of it survives a
/// reopen.
pub async fn branches_form_a_tree(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let exec = "tree";
    let mut saved = Vec::new();
    for i in 1..=3 {
        saved.push(must(store.save(nth_checkpoint(exec, i)).await, "save"));
    }
    let what = format!("[{name}] a save with parent 1 after 3");
    let v4 = must(
        store
            .save_with_parent(nth_checkpoint(exec, 40), &saved[0].id)
            .await,
        &what,
    );
    assert_eq!(v4.version, 4, "{what}: version");
    assert_eq!(v4.parent.as_ref(), Some(&saved[0].id), "{what}: parent");
    let v5 = must(store.save(nth_checkpoint(exec, 50)).await, "save");
    assert_eq!(
        v5.parent.as_ref(),
        Some(&v4.id),
        "[{name}] a plain save's parent"
    );
    assert_cp_eq(&must(store.load(&v4.id).await, "load"), &v4, &what);
    assert_cp_eq(
        &must(store.load(&saved[2].id).await, "load"),
        &saved[2],
        format!("[{name}] the other branch's head"),
    );
    assert_tree(&store, exec, &format!("[{name}]")).await;
    drop(store);
    let store = h.open().await;
    assert_tree(&store, exec, &format!("[{name}] after reopen")).await;
    assert_cp_eq(
        &must(store.load(&v4.id).await, "load"),
        &v4,
        format!("[{name}] after reopen: the branch's first version"),
    );
}

/// A named parent must be a live checkpoint of the same execution; a refused save writes
/// nothing. Deleting a branch's versions makes their parent a head again; the tree queries
/// refuse an id that is not live.
pub async fn a_saves_parent_must_be_live_in_its_execution(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let exec = "tree-parent";
    let v1 = must(store.save(nth_checkpoint(exec, 1)).await, "save");
    let v2 = must(store.save(nth_checkpoint(exec, 2)).await, "save");
    let other = must(store.save(nth_checkpoint("tree-other", 1)).await, "save");
    match store
        .save_with_parent(nth_checkpoint(exec, 3), &other.id)
        .await
    {
        Err(Error::InvalidInput(m)) => assert!(m.contains("fork"), "[{name}] {m}"),
        other => panic!("[{name}] a parent in another execution: {other:?}"),
    }
    let never = must(CheckpointId::new(exec, 99), "id");
    assert_not_found(
        store
            .save_with_parent(nth_checkpoint(exec, 3), &never)
            .await,
        "99",
        format!("[{name}] a parent never saved"),
    );
    must(store.delete(&v1.id).await, "delete");
    assert_not_found(
        store
            .save_with_parent(nth_checkpoint(exec, 3), &v1.id)
            .await,
        "1",
        format!("[{name}] a deleted parent"),
    );
    let history = must(
        store.history(exec, HistoryQuery::default()).await,
        "history",
    );
    assert_eq!(ids(&history), [2], "[{name}] refused saves wrote nothing");
    // A branch off 2, then its only version deleted: 2 is a head again.
    let b = must(
        store
            .save_with_parent(nth_checkpoint(exec, 4), &v2.id)
            .await,
        "save on 2",
    );
    let c = must(store.save(nth_checkpoint(exec, 5)).await, "save");
    assert_eq!(ids(&must(store.heads(exec).await, "heads")), [c.version]);
    must(store.delete(&c.id).await, "delete");
    must(store.delete(&b.id).await, "delete");
    assert_eq!(
        ids(&must(store.heads(exec).await, "heads")),
        [2],
        "[{name}] heads after deleting the branch"
    );
    assert_not_found(
        store.children(&v1.id).await,
        "1",
        format!("[{name}] children of a deleted checkpoint"),
    );
    assert_not_found(
        store.branch(&never, HistoryQuery::default()).await,
        "99",
        format!("[{name}] branch of a version never saved"),
    );
    must(store.clear(exec).await, "clear");
    assert!(
        must(store.heads(exec).await, "heads").is_empty(),
        "[{name}] heads after clear"
    );
    assert_not_found(
        store
            .save_with_parent(nth_checkpoint(exec, 6), &v2.id)
            .await,
        "2",
        format!("[{name}] a cleared parent"),
    );
    let cp = must(Checkpoint::new(exec, "n", &1), "checkpoint");
    let fresh = must(store.save(cp).await, "save");
    assert_eq!(
        fresh.parent, None,
        "[{name}] the first save after a clear is a root"
    );
}
