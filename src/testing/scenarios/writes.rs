//! Writes attached to checkpoints (pending writes, journaled results, interrupts and answers):
//! their own events in the log, never counted as checkpoints, living and dying with their
//! checkpoint.

use crate::testing::helpers::{assert_not_found, must, nth_checkpoint};
use crate::testing::Harness;
use crate::{CheckpointId, HistoryQuery, Store, Write};

fn write(task: &str, channel: &str, value: &serde_json::Value) -> Write {
    must(Write::new(task, channel, value), "Write::new").with_metadata("n", 1)
}

/// `(task, channel, value)` of each write, in order.
fn summary(writes: &[Write]) -> Vec<(String, String, serde_json::Value)> {
    writes
        .iter()
        .map(|w| (w.task.clone(), w.channel.clone(), w.value_json()))
        .collect()
}

async fn assert_writes(store: &Store, id: &CheckpointId, want: &[Write], what: &str) {
    let got = must(store.writes(id).await, what);
    assert_eq!(
        summary(&got),
        summary(want),
        "{what}: writes of {id} (task, channel, value)"
    );
    for (g, w) in got.iter().zip(want) {
        assert_eq!(g.metadata, w.metadata, "{what}: metadata");
        assert!(
            g.seq > id.version(),
            "{what}: a write's seq follows its checkpoint"
        );
    }
}

/// Writes are appended to a live checkpoint atomically, read back in order with their values
/// (long values through blobs too), survive a reopen, are not checkpoints (list, history,
/// executions, latest and the next save's parent ignore them), are refused on a checkpoint
/// that is not live (writing nothing), and are gone with their checkpoint (delete, clear),
/// gc included.
pub async fn writes_belong_to_their_checkpoint(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let exec = "writes";
    let v1 = must(store.save(nth_checkpoint(exec, 1)).await, "save");
    let v2 = must(store.save(nth_checkpoint(exec, 2)).await, "save");
    let long = "journal ".repeat(2_000);
    let first = vec![
        write("tools", "__journal__", &serde_json::json!({"reply": "42"})),
        write("tools", "__journal__", &serde_json::json!({"long": long})),
    ];
    let stored = must(store.put_writes(&v1.id, first.clone()).await, "put_writes");
    assert_eq!(
        stored.iter().map(|w| w.seq).collect::<Vec<_>>(),
        [3, 4],
        "[{name}] writes take the log's next sequence numbers"
    );
    let second = vec![write("agent", "__interrupt__", &serde_json::json!("ok?"))];
    must(store.put_writes(&v2.id, second.clone()).await, "put_writes");
    let what = format!("[{name}]");
    assert_writes(&store, &v1.id, &first, &what).await;
    assert_writes(&store, &v2.id, &second, &what).await;
    // Not checkpoints.
    assert_eq!(
        must(store.list(exec).await, "list").len(),
        2,
        "[{name}] list"
    );
    let history = must(
        store.history(exec, HistoryQuery::default()).await,
        "history",
    );
    assert_eq!(history.len(), 2, "[{name}] history");
    let summary_count = must(store.executions().await, "executions")
        .into_iter()
        .find(|e| e.execution_id == exec)
        .map(|e| e.checkpoints);
    assert_eq!(summary_count, Some(2), "[{name}] executions count");
    let latest = must(store.latest(exec).await, "latest").map(|c| c.version);
    assert_eq!(latest, Some(2), "[{name}] latest");
    let v6 = must(store.save(nth_checkpoint(exec, 3)).await, "save");
    assert_eq!(v6.version, 6, "[{name}] the next save's version");
    assert_eq!(
        v6.parent.as_ref(),
        Some(&v2.id),
        "[{name}] the next save's parent"
    );
    assert_eq!(
        must(store.load(&v6.id).await, "load").state_value(),
        nth_checkpoint(exec, 3).state_value(),
        "[{name}] a delta over writes loads"
    );
    // Refused on what is not live, writing nothing.
    let never = must(CheckpointId::new(exec, 99), "id");
    assert_not_found(
        store.put_writes(&never, second.clone()).await,
        "99",
        format!("[{name}] writes to a version never saved"),
    );
    assert_not_found(
        store.writes(&never).await,
        "99",
        format!("[{name}] writes of a version never saved"),
    );
    drop(store);
    let store = h.open().await;
    let what = format!("[{name}] after reopen");
    assert_writes(&store, &v1.id, &first, &what).await;
    assert_writes(&store, &v2.id, &second, &what).await;
    assert_eq!(
        must(store.list(exec).await, "list").len(),
        3,
        "{what}: list"
    );
    // Gone with their checkpoint, kept with the others through gc.
    must(store.delete(&v1.id).await, "delete");
    assert_not_found(
        store.writes(&v1.id).await,
        "1",
        format!("[{name}] writes of a deleted checkpoint"),
    );
    assert_not_found(
        store.put_writes(&v1.id, second.clone()).await,
        "1",
        format!("[{name}] writes to a deleted checkpoint"),
    );
    must(store.gc().await, "gc");
    let what = format!("[{name}] after gc");
    assert_writes(&store, &v2.id, &second, &what).await;
    let report = must(store.verify().await, "verify");
    assert!(report.is_ok(), "{what}: verify: {report:?}");
    must(store.clear(exec).await, "clear");
    assert_not_found(
        store.writes(&v2.id).await,
        "2",
        format!("[{name}] writes after clear"),
    );
    let v = must(store.save(nth_checkpoint(exec, 4)).await, "save");
    assert!(
        must(store.writes(&v.id).await, "writes").is_empty(),
        "[{name}] a new checkpoint has no writes"
    );
}
