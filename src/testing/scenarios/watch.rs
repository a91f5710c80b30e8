//! Watch: new saves arrive in order, from the moment of the call.

use std::time::Duration;

use futures_util::StreamExt;

use crate::testing::helpers::{assert_cp_eq, assert_cps_eq, must, save_n, save_one};
use crate::testing::Harness;
use crate::{Checkpoint, Watch};

async fn next_within(w: &mut Watch, what: &str) -> Checkpoint {
    match tokio::time::timeout(Duration::from_secs(10), w.next()).await {
        Err(_) => panic!("{what}: nothing within 10 s"),
        Ok(None) => panic!("{what}: the stream ended"),
        Ok(Some(Err(e))) => panic!("{what}: the stream yielded an error: {e}"),
        Ok(Some(Ok(cp))) => cp,
    }
}

async fn assert_quiet(w: &mut Watch, what: &str) {
    if let Ok(item) = tokio::time::timeout(Duration::from_millis(300), w.next()).await {
        panic!("{what}: unexpected item {item:?}");
    }
}

/// A watch yields, in version order and with their states, the checkpoints saved after it started:
/// by a spawned task through the same store, then by a second store on the same backend; not
/// those saved before it, nor those of other executions, nor one deleted before it was read.
pub async fn watch_yields_new_saves_in_order(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    save_n(&store, "watch", 2).await;
    let mut w = store.watch("watch");
    // The first poll; see `watch_starts_at_the_call` for saves made before it.
    assert_quiet(&mut w, &format!("[{name}] saves made before the watch")).await;
    let s = store.clone();
    let writer = tokio::spawn(async move {
        let mut out = Vec::new();
        for i in 3..=5 {
            out.push(save_one(&s, "watch", i).await);
        }
        out
    });
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(next_within(&mut w, &format!("[{name}] item {i} from the same store")).await);
    }
    let saved = writer
        .await
        .unwrap_or_else(|e| panic!("[{name}] writer panicked: {e}"));
    assert_cps_eq(
        &got,
        &saved,
        format!("[{name}] watched saves of the same store"),
    );

    let other = store.with_same_keys(store.backend().clone());
    let writer = tokio::spawn(async move {
        let mut out = Vec::new();
        for i in 6..=8 {
            out.push(save_one(&other, "watch", i).await);
        }
        out
    });
    let mut got = Vec::new();
    for i in 0..3 {
        got.push(next_within(&mut w, &format!("[{name}] item {i} from another store")).await);
    }
    let saved = writer
        .await
        .unwrap_or_else(|e| panic!("[{name}] writer panicked: {e}"));
    assert_cps_eq(
        &got,
        &saved,
        format!("[{name}] watched saves of another store"),
    );
    save_one(&store, "watch-elsewhere", 1).await;
    assert_quiet(&mut w, &format!("[{name}] save to another execution")).await;

    let doomed = save_one(&store, "watch", 9).await;
    let kept = save_one(&store, "watch", 10).await;
    must(store.delete(&doomed.id).await, "delete");
    let got = next_within(&mut w, &format!("[{name}] after a delete")).await;
    assert_cp_eq(
        &got,
        &kept,
        format!("[{name}] a checkpoint deleted before it was read is skipped"),
    );
    assert_quiet(&mut w, &format!("[{name}] nothing after the delete")).await;
}

/// A watch starts when `watch()` is called, not when the stream is first polled: a save by
/// another writer in between is yielded (before a later save of the watching store), and one
/// saved just before the call is not.
pub async fn watch_starts_at_the_call(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let other = store.with_same_keys(store.backend().clone());
    save_n(&other, "ws", 1).await;
    let mut w = store.watch("ws");
    let a = save_one(&other, "ws", 2).await;
    let b = save_one(&store, "ws", 3).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match tokio::time::timeout(Duration::from_secs(5), w.next()).await {
            Ok(Some(Ok(cp))) => got.push(cp),
            Ok(other) => panic!("[{name}] the watch yielded {other:?}"),
            Err(_) => break,
        }
    }
    assert_cps_eq(
        &got,
        &[a, b],
        format!("[{name}] saves after watch() but before the first poll"),
    );
    assert_quiet(&mut w, &format!("[{name}] nothing more")).await;
}

/// A watch whose consumer stopped polling it half way through a read (a timeout around
/// `next()`, a `select!` that took another branch) does not hold anything a writer needs: a save
/// to the watched execution still lands, and the watch then yields it.
pub async fn an_unpolled_watch_does_not_stall_writers(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    save_n(&store, "unpolled", 2).await;
    let mut w = store.watch("unpolled");
    // One poll: the watch starts reading the execution, and (on a backend that answers over
    // the network) is left waiting for the answer, inside the stream.
    let first = futures_util::FutureExt::now_or_never(w.next());
    assert!(
        first.is_none(),
        "[{name}] the watch yielded {first:?} before anything was saved"
    );
    let saved = match tokio::time::timeout(Duration::from_secs(10), save_one(&store, "unpolled", 3))
        .await
    {
        Ok(cp) => cp,
        Err(_) => panic!("[{name}] a save waited 10 s behind an unpolled watch"),
    };
    let got = next_within(&mut w, &format!("[{name}] the save made while unpolled")).await;
    assert_cp_eq(&got, &saved, format!("[{name}] the watch after a pause"));
}
