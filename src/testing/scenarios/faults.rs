//! Under injected faults (see `testing::faulty`): batches stay all or nothing, and a gc racing a held save.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::json;

use crate::testing::helpers::{assert_cp_eq, must, text};
use crate::testing::Harness;
use crate::{Checkpoint, CheckpointId, Store};

/// A checkpoint of `exec` whose state holds a long, unique text (stored as a blob).
fn blob_checkpoint(exec: &str, i: u64) -> Checkpoint {
    let state = json!({ "i": i, "text": text(exec, i, 900) });
    must(Checkpoint::new(exec, "n", &state), "checkpoint").with_metadata("i", i)
}

/// `(version, state)` of each checkpoint, to compare what is stored with what was generated.
fn versioned_states(cps: &[Checkpoint]) -> Vec<(u64, serde_json::Value)> {
    cps.iter()
        .map(|c| (c.version, must(c.state_json(), "state_json")))
        .collect()
}

/// A batch whose append fails (the Nth append from now; before reaching the backend, torn with
/// its blobs stored and no frame, or after it landed) is all or nothing, exactly: when the
/// append did not land, no execution changed; when it landed (the caller got an error), every
/// checkpoint of the batch is stored with the state it was given. Stores opened later, this
/// one, and later batches (their parents and versions) all agree.
pub async fn save_batch_is_all_or_nothing_under_faults(h: &dyn Harness) {
    use super::{faulty_store, is_injected, Call, Fault, FaultControl};
    let name = h.name();
    let base = h.open().await;
    let control = FaultControl::new();
    let store = faulty_store(&base, control.clone());
    let execs: [&str; 3] = if store.backend().capabilities().atomic_across_logs {
        ["fault-a", "fault-b", "fault-a"]
    } else {
        ["fault-a", "fault-a", "fault-a"]
    };
    let mut expected: BTreeMap<&str, Vec<(u64, serde_json::Value)>> = BTreeMap::new();
    let pre = must(
        store.save(blob_checkpoint("fault-a", 0)).await,
        "first save",
    );
    expected.insert("fault-a", versioned_states(&[pre]));
    let mut n = 1u64;
    let rounds = [
        (1, Fault::FailBefore),
        (1, Fault::Tear),
        (2, Fault::FailAfter),
        (3, Fault::Tear),
        (1, Fault::FailAfter),
        (2, Fault::FailBefore),
    ];
    for (round, (nth, fault)) in rounds.into_iter().enumerate() {
        control.on_nth(Call::Commit, nth, fault);
        for attempt in 1..=nth {
            let what =
                format!("[{name}] round {round} ({fault:?} on append {nth}), batch {attempt}");
            let batch: Vec<Checkpoint> = execs
                .iter()
                .map(|e| {
                    n += 1;
                    blob_checkpoint(e, n)
                })
                .collect();
            let landed_before = control.landed_appends();
            let result = store.save_batch(batch.clone()).await;
            let landed = control.landed_appends() > landed_before;
            match (&result, attempt == nth) {
                (Ok(out), false) => {
                    assert!(
                        landed,
                        "{what}: acknowledged, yet no append reached the backend"
                    );
                    assert_eq!(out.len(), batch.len(), "{what}: checkpoints returned");
                }
                (Err(e), true) if is_injected(e) => {
                    let should_land = fault == Fault::FailAfter;
                    assert_eq!(landed, should_land, "{what}: did the append land");
                }
                (other, _) => panic!("{what}: unexpected outcome {other:?}"),
            }
            if landed {
                for (exec, cp) in execs.iter().zip(&batch) {
                    let list = expected.entry(exec).or_default();
                    let version = list.last().map_or(1, |(v, _)| v + 1);
                    list.push((version, must(cp.state_json(), "state_json")));
                }
            }
            let fresh = base.with_same_keys(base.backend().clone());
            for (view, s) in [("this store", &store), ("a fresh store", &fresh)] {
                for exec in ["fault-a", "fault-b"] {
                    let want = expected.get(exec).cloned().unwrap_or_default();
                    let got = versioned_states(&must(s.list(exec).await, &what));
                    assert_eq!(got, want, "{what}: {exec} as {view} sees it");
                }
            }
        }
    }
    assert!(
        control.take_injected().len() == rounds.len(),
        "[{name}] not every scripted fault was injected"
    );
    // The blobs torn batches left behind are unreferenced: gc takes them and nothing else.
    must(store.gc().await, "gc after the faults");
    let after = must(
        store.save(blob_checkpoint("fault-a", n + 1)).await,
        "save after the faults",
    );
    let before = expected
        .get("fault-a")
        .and_then(|l| l.last())
        .map(|(v, _)| *v);
    assert_eq!(
        after.parent.as_ref().map(CheckpointId::version),
        before,
        "[{name}] parent of the save after the faults"
    );
    expected
        .entry("fault-a")
        .or_default()
        .push((after.version, must(after.state_json(), "state_json")));
    drop(store);
    drop(base);
    let store = h.open().await;
    for exec in ["fault-a", "fault-b"] {
        let want = expected.get(exec).cloned().unwrap_or_default();
        let got = versioned_states(&must(store.list(exec).await, exec));
        assert_eq!(got, want, "[{name}] {exec} after gc and a reopen");
    }
}

/// The gc race of [`gc_elsewhere_never_takes_what_a_save_needs`] set up every time: a save in
/// another process (a store on `elsewhere`) checks that the blobs of its state are stored (they
/// are, referenced only by a cleared checkpoint) and is held before its append while a gc here
/// runs to completion and deletes exactly those blobs; then the save goes on. The fence (or,
/// without cross-log atomicity, the repair after the append) must leave the acknowledged
/// checkpoint whole.
pub(super) async fn gc_during_a_held_save(
    name: &str,
    here: &Store,
    elsewhere: fn(std::sync::Arc<dyn crate::backend::Backend>) -> super::Elsewhere,
) {
    use super::{Call, FaultControl, Faulty};
    // More blobs than a save sends without asking which are stored (see `BLIND_PUT_BLOBS`).
    let pool: Vec<String> = (0..12).map(|i| text("held-pool", i, 700)).collect();
    let churn = must(
        Checkpoint::new("held-churn", "n", &json!({ "p": pool })),
        "cp",
    );
    must(here.save(churn).await, "churn save");
    must(here.clear("held-churn").await, "churn clear");
    let control = FaultControl::new();
    let there = here.with_same_keys(Arc::new(Faulty::with_control(
        Arc::new(elsewhere(here.backend().clone())),
        control.clone(),
    )));
    let mut hold = control.hold(Call::Commit, 1);
    let state = json!({ "p": pool, "held": true });
    let cp = must(Checkpoint::new("held-user", "n", &state), "cp");
    let saver = tokio::spawn(async move { there.save(cp).await });
    assert!(
        hold.reached().await,
        "[{name}] the save never reached its append"
    );
    let report = must(here.gc().await, "gc while a save is held");
    assert!(
        report.blobs_removed >= pool.len() as u64,
        "[{name}] gc removed {} blobs, not the {} the held save relies on: the race was not set up",
        report.blobs_removed,
        pool.len()
    );
    hold.release();
    let saved = must(
        saver.await.expect("saver task"),
        format_args!("[{name}] the held save"),
    );
    let fresh = here.with_same_keys(here.backend().clone());
    for when in ["after the held save", "after another gc"] {
        match fresh.load(&saved.id).await {
            Ok(loaded) => assert_cp_eq(&loaded, &saved, format!("[{name}] {} {when}", saved.id)),
            Err(e) => panic!(
                "[{name}] {} was acknowledged but does not load {when}: a gc took its blobs \
                 between its blob check and its append: {e}",
                saved.id
            ),
        }
        must(here.gc().await, "gc");
    }
    must(here.clear("held-user").await, "clear");
}
