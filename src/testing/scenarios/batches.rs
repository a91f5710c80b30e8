//! Batches and summaries: save_batch is ordered, consecutive and all or nothing; executions summarises the live checkpoints.

use crate::testing::helpers::{
    assert_cps_eq, expected_summary, must, nth_checkpoint, save_n, summary_views, versions,
};
use crate::testing::Harness;
use crate::{Checkpoint, Error};

/// A batch over two executions is returned in the order given, with consecutive versions and
/// chained parents within each execution, continuing from what was saved before; an empty batch
/// is Ok and empty.
pub async fn save_batch_is_ordered_and_consecutive(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let pre = save_n(&store, "batch-a", 1).await;
    let batch = vec![
        nth_checkpoint("batch-a", 2),
        nth_checkpoint("batch-b", 1),
        nth_checkpoint("batch-a", 3),
        nth_checkpoint("batch-b", 2),
        nth_checkpoint("batch-a", 4),
    ];
    let out = must(store.save_batch(batch.clone()).await, "save_batch");
    let shape = |cps: &[Checkpoint]| {
        cps.iter()
            .map(|c| {
                (
                    c.execution_id.clone(),
                    c.node_name.clone(),
                    c.metadata.clone(),
                    c.state_value().clone(),
                )
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(
        shape(&out),
        shape(&batch),
        "[{name}] batch returned out of order"
    );
    let a = [out[0].clone(), out[2].clone(), out[4].clone()];
    let b = [out[1].clone(), out[3].clone()];
    let what = format!(
        "[{name}] versions a {:?}, b {:?}",
        versions(&a),
        versions(&b)
    );
    assert_eq!(
        versions(&a),
        vec![a[0].version, a[0].version + 1, a[0].version + 2],
        "{what}"
    );
    assert_eq!(versions(&b), vec![b[0].version, b[0].version + 1], "{what}");
    assert!(a[0].version > pre[0].version, "{what}");
    let parents = |cps: &[Checkpoint]| cps.iter().map(|c| c.parent.clone()).collect::<Vec<_>>();
    assert_eq!(
        parents(&a),
        vec![
            Some(pre[0].id.clone()),
            Some(a[0].id.clone()),
            Some(a[1].id.clone())
        ],
        "{what}"
    );
    assert_eq!(parents(&b), vec![None, Some(b[0].id.clone())], "{what}");
    assert!(
        must(store.save_batch(Vec::new()).await, "empty batch").is_empty(),
        "[{name}] empty batch"
    );

    let all_a: Vec<Checkpoint> = pre.iter().chain(&a).cloned().collect();
    assert_cps_eq(
        &must(store.list("batch-a").await, "list"),
        &all_a,
        format!("[{name}] list a"),
    );
    assert_cps_eq(
        &must(store.list("batch-b").await, "list"),
        &b,
        format!("[{name}] list b"),
    );
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("batch-a").await, "list"),
        &all_a,
        format!("[{name}] list a after reopen"),
    );
    assert_cps_eq(
        &must(store.list("batch-b").await, "list"),
        &b,
        format!("[{name}] list b after reopen"),
    );
}

/// A batch holding one invalid checkpoint (empty, control-character or over-long execution id; at
/// the start, middle or end) fails with InvalidInput and stores none of the batch; a valid batch
/// afterwards continues where the store was.
pub async fn save_batch_is_all_or_nothing(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let pre = save_n(&store, "atom-a", 2).await;
    for (pos, bad_id) in [
        (3, String::new()),
        (0, "bell\u{7}".to_string()),
        (1, "x".repeat(300)),
    ] {
        let mut batch = vec![
            nth_checkpoint("atom-a", 10),
            nth_checkpoint("atom-b", 1),
            nth_checkpoint("atom-a", 11),
        ];
        let mut bad = nth_checkpoint("atom-a", 99);
        bad.execution_id = bad_id.clone();
        batch.insert(pos, bad);
        let what = format!("[{name}] batch with execution id {bad_id:?} at {pos}");
        let result = store.save_batch(batch).await;
        assert!(
            matches!(result, Err(Error::InvalidInput(_))),
            "{what}: {result:?}"
        );
        assert_cps_eq(
            &must(store.list("atom-a").await, &what),
            &pre,
            format!("{what}: atom-a changed"),
        );
        assert!(
            must(store.list("atom-b").await, &what).is_empty(),
            "{what}: atom-b was written"
        );
        let summaries = summary_views(&must(store.executions().await, &what));
        assert_eq!(
            summaries,
            vec![expected_summary(&pre)],
            "{what}: executions"
        );
    }
    let out = must(
        store
            .save_batch(vec![
                nth_checkpoint("atom-a", 3),
                nth_checkpoint("atom-b", 1),
            ])
            .await,
        "valid batch",
    );
    assert_eq!(
        out[0].parent.as_ref(),
        Some(&pre[1].id),
        "[{name}] parent after the failed batches"
    );
    drop(store);
    let store = h.open().await;
    let all_a: Vec<Checkpoint> = pre.iter().chain(&out[..1]).cloned().collect();
    assert_cps_eq(
        &must(store.list("atom-a").await, "list"),
        &all_a,
        format!("[{name}] atom-a after reopen"),
    );
    assert_cps_eq(
        &must(store.list("atom-b").await, "list"),
        &out[1..],
        format!("[{name}] atom-b after reopen"),
    );
}

/// `executions()` summarises every execution with live checkpoints, sorted by id: count, latest
/// version and node, last timestamp; cleared and all-deleted executions are absent. Equal after a
/// reopen (log sizes included).
pub async fn executions_summarise_live_checkpoints(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let b = save_n(&store, "ex-b", 2).await;
    let a = save_n(&store, "ex-a", 3).await;
    let _c = save_n(&store, "ex-c", 1).await;
    let d = save_n(&store, "ex-d", 2).await;
    let e = save_n(&store, "ex-e", 1).await;
    must(store.clear("ex-c").await, "clear");
    must(store.delete(&d[1].id).await, "delete");
    must(store.delete(&a[2].id).await, "delete");
    must(store.delete(&e[0].id).await, "delete");
    let summaries = must(store.executions().await, "executions");
    let expected = vec![
        expected_summary(&a[..2]),
        expected_summary(&b),
        expected_summary(&d[..1]),
    ];
    assert_eq!(summary_views(&summaries), expected, "[{name}] executions");
    assert!(
        summaries.iter().all(|s| s.log_bytes > 0),
        "[{name}] log_bytes 0: {summaries:?}"
    );
    drop(store);
    let store = h.open().await;
    assert_eq!(
        must(store.executions().await, "executions"),
        summaries,
        "[{name}] executions after reopen"
    );
}
