//! Fork: what it copies and which sources and targets it refuses.

use crate::testing::helpers::{
    assert_cp_eq, assert_cps_eq, assert_not_found, must, save_n, save_one,
};
use crate::testing::Harness;
use crate::{CheckpointId, Error};

/// A fork starts a new execution with the source's state, node and metadata, the source as
/// parent and a version of its own; saves continue from it; the source is untouched, and the fork
/// outlives a clear of its source.
pub async fn fork_copies_the_source(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let src = save_n(&store, "fork-src", 3).await;
    let fork = must(store.fork(&src[1].id, "fork-dst").await, "fork");
    let what = format!("[{name}] fork of {}", src[1].id);
    assert_eq!(fork.execution_id, "fork-dst", "{what}");
    assert_eq!(
        fork.id,
        must(CheckpointId::new("fork-dst", fork.version), "id"),
        "{what}"
    );
    assert!(fork.is_saved(), "{what}: not saved");
    assert_eq!(fork.node_name, src[1].node_name, "{what}: node");
    assert_eq!(fork.metadata, src[1].metadata, "{what}: metadata");
    assert_eq!(fork.parent.as_ref(), Some(&src[1].id), "{what}: parent");
    assert_eq!(fork.state_value(), src[1].state_value(), "{what}: state");
    assert_cps_eq(
        &must(store.list("fork-dst").await, "list"),
        std::slice::from_ref(&fork),
        format!("{what}: list"),
    );
    assert_cp_eq(
        &must(store.load(&fork.id).await, "load"),
        &fork,
        format!("{what}: load"),
    );

    let next = save_one(&store, "fork-dst", 10).await;
    assert_eq!(
        next.parent.as_ref(),
        Some(&fork.id),
        "{what}: parent of the next save"
    );
    assert!(next.version > fork.version, "{what}: next version");
    assert_cps_eq(
        &must(store.list("fork-dst").await, "list"),
        &[fork.clone(), next.clone()],
        format!("{what}: list"),
    );
    assert_cps_eq(
        &must(store.list("fork-src").await, "list"),
        &src,
        format!("{what}: source untouched"),
    );

    let fork2 = must(store.fork(&next.id, "fork-dst2").await, "fork of a fork");
    assert_eq!(
        fork2.parent.as_ref(),
        Some(&next.id),
        "{what}: fork of a fork"
    );
    must(store.delete(&next.id).await, "delete fork source");
    must(store.clear("fork-src").await, "clear the source");
    drop(store);

    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("fork-dst").await, "list"),
        std::slice::from_ref(&fork),
        format!("{what}: after reopen"),
    );
    assert_cps_eq(
        &must(store.list("fork-dst2").await, "list"),
        std::slice::from_ref(&fork2),
        format!("{what}: fork of a fork after reopen"),
    );
}

/// Forking a deleted, unknown or cleared id is NotFound; forking into an execution with live
/// checkpoints, into the source's own execution or into an invalid id is an error that writes
/// nothing; forking into a cleared execution works, above its old versions.
pub async fn fork_refuses_bad_sources_and_targets(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let src = save_n(&store, "fr-src", 2).await;
    must(store.delete(&src[0].id).await, "delete");
    assert_not_found(
        store.fork(&src[0].id, "fr-new").await,
        &src[0].id.to_string(),
        format!("[{name}] fork deleted"),
    );
    let high = must(CheckpointId::new("fr-src", 999), "id");
    assert_not_found(
        store.fork(&high, "fr-new").await,
        "fr-src@999",
        format!("[{name}] fork unknown version"),
    );
    assert!(
        must(store.list("fr-new").await, "list").is_empty(),
        "[{name}] failed fork wrote something"
    );

    let busy = save_n(&store, "fr-busy", 1).await;
    let err = store.fork(&src[1].id, "fr-busy").await;
    assert!(
        err.is_err(),
        "[{name}] fork into an execution with live checkpoints succeeded"
    );
    assert_cps_eq(
        &must(store.list("fr-busy").await, "list"),
        &busy,
        format!("[{name}] busy target untouched"),
    );
    assert!(
        store.fork(&src[1].id, "fr-src").await.is_err(),
        "[{name}] fork into its own execution"
    );
    let invalid = store.fork(&src[1].id, "").await;
    assert!(
        matches!(invalid, Err(Error::InvalidInput(_))),
        "[{name}] fork into \"\": {invalid:?}"
    );
    assert_cps_eq(
        &must(store.list("fr-src").await, "list"),
        &src[1..],
        format!("[{name}] source untouched"),
    );

    must(store.clear("fr-busy").await, "clear");
    let f = must(
        store.fork(&src[1].id, "fr-busy").await,
        "fork into a cleared execution",
    );
    assert!(
        f.version > busy[0].version,
        "[{name}] fork into a cleared execution reused a version"
    );
    assert_eq!(f.parent.as_ref(), Some(&src[1].id), "[{name}] parent");
    must(store.clear("fr-src").await, "clear source");
    assert_not_found(
        store.fork(&src[1].id, "fr-other").await,
        &src[1].id.to_string(),
        format!("[{name}] fork cleared"),
    );
    assert_cps_eq(
        &must(store.list("fr-busy").await, "list"),
        &[f],
        format!("[{name}] fork survives its source"),
    );
}
