//! gc and retention: what a sweep reclaims and what it must keep, with other stores, racing saves, a gc elsewhere, a dead gc and retention.

use crate::backend::BackendExt;
use std::time::Duration;

use serde_json::json;

use super::faults::gc_during_a_held_save;
use crate::backend::LogAppend;
use crate::testing::helpers::{assert_cp_eq, assert_cps_eq, must, nth_checkpoint, save_n, text};
use crate::testing::Harness;
use crate::{Checkpoint, Error, Store};

/// A state with a long (blob) string unique to `(tag, i)`.
fn blob_state(tag: &str, i: u64) -> serde_json::Value {
    json!({ "step": i, "text": text(tag, i, 400), "short": format!("{tag}-{i}") })
}

pub(super) async fn save_blobs(store: &Store, exec: &str, n: u64) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    for i in 1..=n {
        let cp = must(Checkpoint::new(exec, "n", &blob_state(exec, i)), exec);
        out.push(must(store.save(cp).await, exec));
    }
    out
}

/// After clearing one execution, deleting in another, and clearing and saving again in a third, gc
/// removes blobs (and frames, truncating the third's log), every live checkpoint still loads with
/// its exact state, the blob count shrinks by what gc reports, a
/// second gc removes nothing, and saving and reopening afterwards work.
pub async fn gc_reclaims_cleared_and_deleted(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let a = save_blobs(&store, "gc-a", 4).await;
    let b = save_blobs(&store, "gc-b", 5).await;
    let c = save_blobs(&store, "gc-c", 2).await;
    // gc-d: saved, cleared and saved again, so gc truncates the head of a log that has live checkpoints.
    let d_old = save_blobs(&store, "gc-d", 3).await;
    must(store.clear("gc-d").await, "clear");
    let d = save_blobs(&store, "gc-d", 2).await;
    must(store.clear("gc-a").await, "clear");
    must(store.delete(&b[1].id).await, "delete");
    must(store.delete(&b[3].id).await, "delete");
    let live_b = vec![b[0].clone(), b[2].clone(), b[4].clone()];
    let blobs_before = must(store.backend().list_blobs().await, "list_blobs").len() as u64;

    let report = must(store.gc().await, "gc");
    let blobs_after = must(store.backend().list_blobs().await, "list_blobs").len() as u64;
    let what = format!("[{name}] gc {report:?}, blobs {blobs_before} -> {blobs_after}");
    assert!(report.blobs_removed > 0, "{what}: nothing removed");
    assert!(
        report.frames_removed > (a.len() + d_old.len()) as u64,
        "{what}: cleared frames kept"
    );
    assert_eq!(
        blobs_after,
        blobs_before - report.blobs_removed,
        "{what}: report vs backend"
    );
    assert_eq!(report.blobs_kept, blobs_after, "{what}: blobs_kept");
    assert!(
        must(store.list("gc-a").await, "list").is_empty(),
        "{what}: cleared execution back"
    );
    assert_cps_eq(
        &must(store.list("gc-b").await, "list"),
        &live_b,
        format!("{what}: gc-b"),
    );
    assert_cps_eq(
        &must(store.list("gc-c").await, "list"),
        &c,
        format!("{what}: gc-c"),
    );
    assert_cps_eq(
        &must(store.list("gc-d").await, "list"),
        &d,
        format!("{what}: gc-d"),
    );
    for cp in live_b.iter().chain(&c).chain(&d) {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load"),
            cp,
            format!("{what}: load"),
        );
    }

    let again = must(store.gc().await, "second gc");
    assert_eq!(
        (again.blobs_removed, again.frames_removed),
        (0, 0),
        "[{name}] second gc removed more: {again:?}"
    );

    let a2 = must(
        store
            .save(must(
                Checkpoint::new("gc-a", "n", &blob_state("gc-a", 9)),
                "cp",
            ))
            .await,
        "save",
    );
    assert!(
        a2.version > a[3].version,
        "[{name}] version reused after gc"
    );
    assert_eq!(a2.parent, None, "[{name}] parent after clear + gc");
    let b2 = must(
        store
            .save(must(
                Checkpoint::new("gc-b", "n", &blob_state("gc-b", 9)),
                "cp",
            ))
            .await,
        "save",
    );
    assert_eq!(
        b2.parent.as_ref(),
        Some(&b[4].id),
        "[{name}] parent after gc"
    );
    drop(store);

    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("gc-a").await, "list"),
        &[a2],
        format!("[{name}] gc-a after reopen"),
    );
    let all_b: Vec<Checkpoint> = live_b.iter().cloned().chain([b2]).collect();
    assert_cps_eq(
        &must(store.list("gc-b").await, "list"),
        &all_b,
        format!("[{name}] gc-b after reopen"),
    );
    assert_cps_eq(
        &must(store.list("gc-c").await, "list"),
        &c,
        format!("[{name}] gc-c after reopen"),
    );
    assert_cps_eq(
        &must(store.list("gc-d").await, "list"),
        &d,
        format!("[{name}] gc-d after reopen"),
    );
    let d3 = save_blobs(&store, "gc-d", 1).await;
    assert_eq!(
        d3[0].parent.as_ref(),
        Some(&d[1].id),
        "[{name}] parent after gc truncated the log"
    );
    assert!(
        d3[0].version > d[1].version,
        "[{name}] version after gc truncated the log"
    );
}

/// gc keeps a blob that a cleared execution shares with a live one, and the blobs of a fork whose
/// source execution was cleared; both still load, also after a reopen.
pub async fn gc_keeps_blobs_shared_with_live_checkpoints(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let shared = text("shared", 1, 500);
    let save = |exec: &'static str, state: serde_json::Value| {
        let store = store.clone();
        async move {
            must(
                store
                    .save(must(Checkpoint::new(exec, "n", &state), exec))
                    .await,
                exec,
            )
        }
    };
    save(
        "sh-a",
        json!({ "text": shared, "own": text("sh-a", 1, 400) }),
    )
    .await;
    let b = save("sh-b", json!({ "text": shared, "n": 1 })).await;
    let src = save("sh-src", json!({ "doc": text("sh-src", 1, 900) })).await;
    let fork = must(store.fork(&src.id, "sh-fork").await, "fork");
    must(store.clear("sh-a").await, "clear");
    must(store.clear("sh-src").await, "clear");
    let report = must(store.gc().await, "gc");
    assert!(
        report.blobs_removed >= 1,
        "[{name}] the cleared execution's own blob was kept: {report:?}"
    );
    assert_cp_eq(
        &must(store.load(&b.id).await, "load"),
        &b,
        format!("[{name}] shared blob after gc"),
    );
    assert_cp_eq(
        &must(store.load(&fork.id).await, "load"),
        &fork,
        format!("[{name}] fork after gc"),
    );
    drop(store);
    let store = h.open().await;
    assert_cp_eq(
        &must(store.load(&b.id).await, "load"),
        &b,
        format!("[{name}] shared blob after reopen"),
    );
    assert_cp_eq(
        &must(store.load(&fork.id).await, "load"),
        &fork,
        format!("[{name}] fork after reopen"),
    );
}

/// gc run by one store while a second store on the same backend is alive: blobs the first
/// removes are stored again when the second saves the same content afterwards, and the second
/// store's reads stay right.
pub async fn gc_does_not_break_other_stores(h: &dyn Harness) {
    let name = h.name();
    let one = h.open().await;
    let two = one.with_same_keys(one.backend().clone());
    let shared = json!({ "doc": text("gc-other", 1, 800) });
    let first = must(
        two.save(must(Checkpoint::new("gco-x", "n", &shared), "cp"))
            .await,
        "save",
    );
    assert_cp_eq(
        &must(two.load(&first.id).await, "load"),
        &first,
        format!("[{name}] load before gc"),
    );
    must(two.clear("gco-x").await, "clear");
    let report = must(one.gc().await, "gc");
    assert!(
        report.blobs_removed >= 1,
        "[{name}] gc kept the cleared execution's blob: {report:?}"
    );
    let again = must(
        two.save(must(Checkpoint::new("gco-y", "n", &shared), "cp"))
            .await,
        "save after gc",
    );
    let later = must(
        two.save(must(Checkpoint::new("gco-x", "n", &shared), "cp"))
            .await,
        "save after gc",
    );
    for store in [&one, &two] {
        for cp in [&again, &later] {
            assert_cp_eq(
                &must(store.load(&cp.id).await, "load"),
                cp,
                format!("[{name}] {} after gc", cp.id),
            );
        }
    }
    drop((one, two));
    let store = h.open().await;
    for cp in [&again, &later] {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load"),
            cp,
            format!("[{name}] {} after reopen", cp.id),
        );
    }
}

/// gc running again and again while other tasks save (long, unique states: new blobs), delete
/// and clear never removes anything a live checkpoint needs: afterwards, and after a reopen,
/// every live checkpoint loads with its exact state.
pub async fn gc_racing_saves_keeps_every_live_checkpoint(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut writers = Vec::new();
    for w in 0..3u64 {
        let store = store.clone();
        writers.push(tokio::spawn(async move {
            let exec = format!("gcr-{w}");
            let mut live = Vec::new();
            for i in 1..=30u64 {
                let state = json!({ "i": i, "text": text(&exec, i, 500), "all": live.len() });
                let cp = must(Checkpoint::new(&exec, "n", &state), "checkpoint");
                let saved = must(store.save(cp).await, "save while gc runs");
                live.push(saved);
                if i % 3 == 0 {
                    let gone = live.remove(live.len() / 2);
                    must(store.delete(&gone.id).await, "delete while gc runs");
                }
                if w == 2 && i == 15 {
                    must(store.clear(&exec).await, "clear while gc runs");
                    live.clear();
                }
                tokio::task::yield_now().await;
            }
            live
        }));
    }
    let collector = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut removed = 0;
            for _ in 0..15 {
                removed += must(store.gc().await, "gc while saves run").blobs_removed;
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            removed
        })
    };
    let mut live = Vec::new();
    for w in writers {
        live.extend(w.await.expect("writer task"));
    }
    let removed = collector.await.expect("gc task");
    must(store.gc().await, "final gc");
    for cp in &live {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load after gc"),
            cp,
            format!(
                "[{name}] {} after gc raced saves ({removed} blobs removed)",
                cp.id
            ),
        );
    }
    drop(store);
    let store = h.open().await;
    for cp in &live {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load after reopen"),
            cp,
            format!("[{name}] {} after reopen", cp.id),
        );
    }
}

/// gc in one process while another saves (a store on [`crate::testing::Elsewhere`]: no shared
/// lock): the saver relies on blobs that exist but that only cleared checkpoints reference, the
/// very blobs gc deletes. The gc fence must make every such save either land before gc looks, or
/// notice gc and write its blobs again: every acknowledged checkpoint loads after a final gc.
pub async fn gc_elsewhere_never_takes_what_a_save_needs(h: &dyn Harness) {
    gc_elsewhere(h, super::Elsewhere::new).await;
}

/// The same race where the saver's backend cannot append to several logs atomically (as Redis
/// Cluster): its saves cannot be fenced, so each checks the gc log after appending and puts
/// back what a gc took; every acknowledged checkpoint loads afterwards.
pub async fn gc_elsewhere_is_repaired_without_cross_log_atomicity(h: &dyn Harness) {
    gc_elsewhere(h, super::Elsewhere::without_cross_log_atomicity).await;
}

async fn gc_elsewhere(
    h: &dyn Harness,
    elsewhere: fn(std::sync::Arc<dyn crate::backend::Backend>) -> super::Elsewhere,
) {
    let name = h.name();
    let here = h.open().await;
    gc_during_a_held_save(name, &here, elsewhere).await;
    let there = here.with_same_keys(std::sync::Arc::new(elsewhere(here.backend().clone())));
    let steps = 120u64;
    let pool = |i: u64| text("pooled", i, 700);
    let (tx, mut rx) = tokio::sync::mpsc::channel::<u64>(4);
    // The churn starts once the collector has run a gc, so that on a loaded machine it cannot
    // finish before the collector is first scheduled.
    let (collecting, started) = tokio::sync::oneshot::channel::<()>();
    // Makes blob `pool(i)` exist with nothing live referencing it, then hands `i` over.
    let churn = {
        let store = here.clone();
        tokio::spawn(async move {
            let _ = started.await;
            for i in 0..steps {
                let cp = must(
                    Checkpoint::new("churn", "n", &json!({ "p": pool(i) })),
                    "cp",
                );
                must(store.save(cp).await, "churn save");
                must(store.clear("churn").await, "churn clear");
                if tx.send(i).await.is_err() {
                    break;
                }
            }
        })
    };
    let saver = {
        let store = there.clone();
        tokio::spawn(async move {
            let mut saved = Vec::new();
            while let Some(i) = rx.recv().await {
                let state = json!({ "p": pool(i), "i": i });
                let cp = must(Checkpoint::new("user", "n", &state), "cp");
                saved.push(must(store.save(cp).await, "save while gc runs elsewhere"));
            }
            saved
        })
    };
    let collector = {
        let store = here.clone();
        let done = churn;
        tokio::spawn(async move {
            let mut runs = 0u32;
            let mut collecting = Some(collecting);
            while !done.is_finished() {
                match store.gc().await {
                    Ok(_) => runs += 1,
                    Err(Error::Busy { .. }) => {}
                    Err(e) => panic!("gc: {e}"),
                }
                if runs > 0 {
                    if let Some(tx) = collecting.take() {
                        let _ = tx.send(());
                    }
                }
                // A pause between gcs: a save elsewhere waits for a moment when no gc runs, and
                // back-to-back gcs starved it on a loaded machine (the scenario hung for 300 s
                // on an encrypted Cluster store); hundreds of gcs still race the 120 saves.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            runs
        })
    };
    let saved = saver.await.expect("saver task");
    let runs = collector.await.expect("gc task");
    must(here.gc().await, "final gc");
    assert_eq!(
        saved.len() as u64,
        steps,
        "[{name}] every save was acknowledged"
    );
    assert!(runs > 0, "[{name}] gc never ran");
    let fresh = here.with_same_keys(here.backend().clone());
    for cp in &saved {
        match fresh.load(&cp.id).await {
            Ok(loaded) => assert_cp_eq(&loaded, cp, format!("[{name}] {}", cp.id)),
            Err(e) => panic!(
                "[{name}] {} was acknowledged but does not load after gc ran elsewhere \
                 ({runs} gc runs): {e}",
                cp.id
            ),
        }
    }
}

/// A gc that died (a begin mark, no end) blocks saves only until its lease runs out; then a
/// writer ends it, and both saves and the next gc go on. A live gc makes another gc `Busy`.
pub async fn a_dead_gc_is_ended_after_its_lease(h: &dyn Harness) {
    use crate::codec::frame::{encode_gc, GcMark};
    let name = h.name();
    let store = h.open().await;
    if !store.backend().capabilities().atomic_across_logs {
        return;
    }
    let backend = store.backend().clone();
    let gc_log = "\u{1}gc";
    let next = must(backend.next_seq(gc_log).await, "next_seq");
    let now_us = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64);
    // Marks as a live gc of this process writes them (where one process holds the storage at
    // a time, sled, a live gc can only be one of this process).
    let this_process = Some(crate::store::reclaim::process_id());
    let begin = |lease_us| GcMark {
        begin: true,
        time_us: now_us,
        lease_us,
        owner: this_process,
    };
    // A gc elsewhere that holds a long lease: gc here is Busy.
    let frame = must(encode_gc(gc_log, next, begin(3_600_000_000)), "encode");
    let append = LogAppend::new(gc_log, next, vec![frame]).never_expiring();
    must(backend.append(vec![append]).await, "append a begin mark");
    match store.gc().await {
        Err(Error::Busy { what }) => assert!(what.contains("gc"), "[{name}] {what}"),
        other => panic!("[{name}] gc while another holds its lease: {other:?}"),
    }
    // It ends; then one that dies with a short lease.
    let end = GcMark {
        begin: false,
        time_us: now_us,
        lease_us: 0,
        owner: this_process,
    };
    let frame = must(encode_gc(gc_log, next + 1, end), "encode");
    let append = LogAppend::new(gc_log, next + 1, vec![frame]).never_expiring();
    must(backend.append(vec![append]).await, "append an end mark");
    let frame = must(encode_gc(gc_log, next + 2, begin(300_000)), "encode");
    let append = LogAppend::new(gc_log, next + 2, vec![frame]).never_expiring();
    must(
        backend.append(vec![append]).await,
        "append a dying begin mark",
    );
    let fresh = store.with_same_keys(std::sync::Arc::new(super::Elsewhere::new(backend.clone())));
    let saved = must(
        fresh.save(nth_checkpoint("after-dead-gc", 1)).await,
        "save after a dead gc's lease",
    );
    assert_eq!(saved.version, 1, "[{name}] saved");
    let after = must(backend.next_seq(gc_log).await, "next_seq");
    assert_eq!(after, next + 4, "[{name}] the writer ended the dead gc");
    must(store.gc().await, "gc after the dead one was ended");
    if backend.capabilities().single_process {
        // The storage is this process's alone: a gc another process began (and never ended,
        // killed part way) is dead whatever its lease, and the next save ends it at once.
        let next = must(backend.next_seq(gc_log).await, "next_seq");
        let killed = GcMark {
            owner: Some(crate::store::reclaim::process_id() ^ 1),
            ..begin(3_600_000_000)
        };
        let frame = must(encode_gc(gc_log, next, killed), "encode");
        let append = LogAppend::new(gc_log, next, vec![frame]).never_expiring();
        must(
            backend.append(vec![append]).await,
            "append a killed gc's mark",
        );
        let fresh = store.with_same_keys(backend.clone());
        let saved = tokio::time::timeout(
            std::time::Duration::from_secs(20),
            fresh.save(nth_checkpoint("after-killed-gc", 1)),
        )
        .await
        .unwrap_or_else(|_| panic!("[{name}] a save waited for a killed gc's lease"));
        must(saved, "save after a killed gc");
        assert_eq!(
            must(backend.next_seq(gc_log).await, "next_seq"),
            next + 2,
            "[{name}] the save ended the killed gc"
        );
    }
    let executions = must(store.executions().await, "executions");
    assert!(
        executions
            .iter()
            .all(|e| !e.execution_id.starts_with('\u{1}')),
        "[{name}] the gc log is not an execution"
    );
}

/// Retention keeps exactly what it must: the newest N, every interrupted checkpoint and every
/// latest one; drops untouched executions unless a run waits on their latest, and spares one
/// saved to after the plan; what remains loads and lists as before; the background task prunes
/// on its own.
pub async fn retention_keeps_what_it_must(h: &dyn Harness) {
    use crate::RetentionPolicy;
    let name = h.name();
    let store = h.open().await;
    let mut a = Vec::new();
    for i in 1..=6u64 {
        let mut cp = nth_checkpoint("ret-a", i);
        if i == 3 {
            cp = cp.with_metadata("interrupted", true);
        }
        a.push(must(store.save(cp).await, "save"));
    }
    save_n(&store, "ret-b", 1).await;
    let b_latest = must(
        store
            .save(nth_checkpoint("ret-b", 2).with_metadata("interrupted", true))
            .await,
        "save",
    );
    save_n(&store, "ret-c", 1).await;

    let report = must(
        store
            .prune(&RetentionPolicy::default().keep_latest(2))
            .await,
        "prune",
    );
    assert_eq!(report.checkpoints_deleted, 3, "[{name}] keep_latest(2)");
    let kept = vec![a[2].clone(), a[4].clone(), a[5].clone()];
    assert_cps_eq(
        &must(store.list("ret-a").await, "list"),
        &kept,
        format!("[{name}] ret-a after keep_latest(2)"),
    );
    for cp in &kept {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load"),
            cp,
            format!("[{name}] {}", cp.id),
        );
    }
    assert_eq!(
        must(store.list("ret-b").await, "list").len(),
        2,
        "[{name}] ret-b had only 2 (one is the latest)"
    );

    let report = must(
        store
            .prune(&RetentionPolicy::default().drop_untouched(Duration::ZERO))
            .await,
        "prune untouched",
    );
    assert_eq!(
        report.executions_dropped, 2,
        "[{name}] ret-a and ret-c dropped"
    );
    assert!(
        must(store.list("ret-a").await, "list").is_empty(),
        "[{name}] ret-a gone"
    );
    assert_eq!(
        must(store.latest("ret-b").await, "latest").map(|c| c.id),
        Some(b_latest.id.clone()),
        "[{name}] an interrupted latest keeps its execution"
    );

    // A save between the plan and the drop spares the execution.
    save_n(&store, "ret-d", 2).await;
    let plans = must(
        store
            .retention_plan(&RetentionPolicy::default().drop_untouched(Duration::ZERO))
            .await,
        "plan",
    );
    assert!(
        plans.iter().any(|p| p.execution_id == "ret-d" && p.drop),
        "[{name}] plan"
    );
    let fresh = must(
        store.save(nth_checkpoint("ret-d", 3)).await,
        "save after plan",
    );
    let report = must(store.apply_retention(&plans).await, "apply");
    assert_eq!(report.executions_spared, 1, "[{name}] ret-d spared");
    assert_eq!(
        must(store.latest("ret-d").await, "latest").map(|c| c.id),
        Some(fresh.id),
        "[{name}] the save after the plan survives"
    );

    let refused = store
        .prune(&RetentionPolicy::default().keep_latest(0))
        .await;
    assert!(
        matches!(refused, Err(Error::InvalidInput(_))),
        "[{name}] keep_latest(0): {refused:?}"
    );

    let task = store.spawn_retention(
        RetentionPolicy::default().keep_latest(1),
        Duration::from_millis(20),
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let left = must(store.list("ret-d").await, "list").len();
        if left == 1 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "[{name}] the background task left {left} checkpoints (last error: {:?})",
            task.last_error()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(task.last_error(), None, "[{name}] background retention");
    task.stop();
}
