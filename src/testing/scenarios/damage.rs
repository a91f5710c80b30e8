//! Damage: a damaged frame is contained, named, and reported by verify.

use std::fmt::{self, Debug};

use serde_json::json;

use crate::testing::helpers::{
    assert_cp_eq, assert_cps_eq, expected_summary, header_heads, heads, must, nth_checkpoint,
    save_n, summary_views, text,
};
use crate::testing::Harness;
use crate::{Checkpoint, HistoryQuery, Store};

/// A state of `step` for the damage scenario; with `bulk`, 200 short fields that all change, a
/// change too large for a delta, so the save after it is a snapshot.
fn damage_state(step: u64, bulk: bool) -> serde_json::Value {
    // The unchanging context keeps a delta smaller than the state (else it is a snapshot).
    let mut state = json!({
        "step": step,
        "note": text("damage", step, 40),
        "context": text("context", 0, 120),
    });
    if bulk {
        let fields: serde_json::Map<String, serde_json::Value> = (0..200)
            .map(|i| {
                (
                    format!("k{i:03}"),
                    json!(format!("value {i} at step {step}, padded")),
                )
            })
            .collect();
        state["bulk"] = serde_json::Value::Object(fields);
    }
    state
}

/// Asserts `result` is [`Error::Corrupt`] and its message holds every one of `names`.
#[track_caller]
fn assert_corrupt<T: Debug>(result: crate::Result<T>, names: &[&str], what: impl fmt::Display) {
    match result {
        Ok(v) => panic!("{what}: expected Corrupt, got Ok({v:?})"),
        Err(e) => {
            assert!(e.is_corrupt(), "{what}: expected Corrupt, got {e} ({e:?})");
            let msg = e.to_string();
            for n in names {
                assert!(msg.contains(n), "{what}: {msg:?} does not name {n:?}");
            }
        }
    }
}

/// Replaces the frame at `seq` of `log` by bytes of the same length that fail verification.
async fn damage_frame(store: &Store, log: &str, seq: u64) {
    let what = format!("[{}] damaging {log} seq {seq}", store.backend().name());
    let frame = must(store.backend().scan(log, seq, 1).await, &what);
    let Some((found, bytes)) = frame.into_iter().next() else {
        panic!("{what}: no such frame");
    };
    assert_eq!(found, seq, "{what}: the frame is not there");
    let garbage: Vec<u8> = bytes.iter().map(|b| b ^ 0xA5).collect();
    let Some(rewrite) = store.backend().capabilities().rewrite else {
        panic!("{what}: the backend cannot rewrite frames");
    };
    must(
        rewrite.rewrite_frames(log, vec![(seq, garbage)]).await,
        &what,
    );
}

/// One damaged frame in the middle of a log makes unreadable exactly the versions whose state
/// needs it: versions before it load as before, the damaged version and the deltas after it
/// fail with `Corrupt` naming the execution, the version and the damaged frame, and a later
/// snapshot starts a readable stretch again. `history`, `executions` and `verify` keep working
/// and mark the damage; other executions are untouched; the next save gets a new version and
/// is readable. A damaged frame of unknown kind (no later delta shows it was a save) may have
/// been a newer save, a delete or a clear: no older version is served as the latest, nor as
/// live. Encrypted stores treat bytes that fail to open the same way.
pub async fn damage_is_contained(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut saved = Vec::new();
    for step in 1..=6 {
        // Versions 1-4: a snapshot and deltas; 5: a snapshot (everything changes); 6: a delta.
        let state = damage_state(step, step >= 5);
        let cp =
            must(Checkpoint::new("d", "work", &state), "checkpoint").with_metadata("step", step);
        saved.push(must(
            store.save(cp).await,
            format!("[{name}] save d {step}"),
        ));
    }
    let other = save_n(&store, "ok", 3).await;
    let tail = save_n(&store, "t", 3).await;
    // "m": two saves and a delete of the first (seq 3, a frame as short as any delete).
    let marked = save_n(&store, "m", 2).await;
    must(store.delete(&marked[0].id).await, "delete m@1");
    // The premise: version 5 is a snapshot, 4 a delta (checked on the frames themselves).
    must(store.crypto().await.map(drop), "crypto");
    let codec = must(store.codec(), "codec");
    let frames = must(store.backend().scan("d", 4, 2).await, "scan d");
    let bases: Vec<Option<u64>> = frames
        .iter()
        .map(
            |(seq, bytes)| match must(codec.frames.decode("d", *seq, bytes), "decode").event {
                crate::codec::frame::Event::Save(h) => h.delta_base,
                other => panic!("[{name}] d seq {seq} is {other:?}, not a save"),
            },
        )
        .collect();
    assert_eq!(
        bases,
        [Some(3), None],
        "[{name}] premise: 4 a delta, 5 a snapshot"
    );

    damage_frame(&store, "d", 3).await;
    damage_frame(&store, "t", 3).await;
    damage_frame(&store, "m", 3).await;
    drop(store);
    let store = h.open().await;

    for cp in &saved[..2] {
        let what = format!("[{name}] {} before the damage", cp.id);
        assert_cp_eq(&must(store.load(&cp.id).await, &what), cp, &what);
    }
    assert_corrupt(
        store.at_version("d", 3).await,
        &["d@3", "seq 3"],
        format!("[{name}] the damaged version"),
    );
    assert_corrupt(
        store.at_version("d", 4).await,
        &["d@4", "seq 3"],
        format!("[{name}] a delta on the damaged version"),
    );
    for cp in &saved[4..] {
        let what = format!("[{name}] {} after the snapshot", cp.id);
        assert_cp_eq(&must(store.load(&cp.id).await, &what), cp, &what);
    }
    let latest = must(store.latest("d").await, "latest d");
    assert_eq!(
        latest.as_ref().map(|c| c.version),
        Some(6),
        "[{name}] latest d"
    );
    assert_eq!(
        header_heads(&must(
            store.history("d", HistoryQuery::default()).await,
            "history d"
        )),
        heads([&saved[5], &saved[4], &saved[1], &saved[0]]),
        "[{name}] history lists the readable versions"
    );
    let damage = must(store.damage("d").await, "damage d");
    assert_eq!(
        damage.frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        [3],
        "[{name}] damaged frames of d"
    );
    assert_eq!(
        damage.unreadable,
        [(4, 3)],
        "[{name}] unreadable versions of d"
    );
    assert_corrupt(
        store.list("d").await,
        &["seq 3"],
        format!("[{name}] list d"),
    );

    let summaries = must(store.executions().await, "executions");
    let d = summaries.iter().find(|s| s.execution_id == "d");
    let d = d.unwrap_or_else(|| panic!("[{name}] executions() left the damaged one out"));
    assert_eq!(
        (
            d.checkpoints,
            d.latest_version,
            d.damaged_frames.clone(),
            d.unreadable_versions.clone()
        ),
        (4, 6, vec![3], vec![4]),
        "[{name}] the damaged execution's summary"
    );
    let ok = summaries.iter().find(|s| s.execution_id == "ok");
    let ok = ok.unwrap_or_else(|| panic!("[{name}] executions() lost a healthy execution"));
    assert_eq!(
        summary_views(std::slice::from_ref(ok)),
        [expected_summary(&other)],
        "[{name}] a healthy execution's summary"
    );
    assert!(
        !ok.is_damaged(),
        "[{name}] a healthy execution marked damaged"
    );
    assert_cps_eq(
        &must(store.list("ok").await, "list ok"),
        &other,
        format!("[{name}] ok"),
    );

    // The newest frame damaged: it may have been a save, so no older one is the latest. It is
    // longer than any delete or clear can be, so it was a save: what came before it loads.
    assert_corrupt(
        store.latest("t").await,
        &["\"t\"", "seq 3"],
        format!("[{name}] latest t"),
    );
    for cp in &tail[..2] {
        let what = format!("[{name}] {} before a damaged save", cp.id);
        assert_cp_eq(&must(store.load(&cp.id).await, &what), cp, &what);
    }
    // A damaged frame as short as a delete may have been one (it was: of m@1), or a clear: no
    // version before it is served as live.
    assert_corrupt(
        store.latest("m").await,
        &["\"m\"", "seq 3"],
        format!("[{name}] latest m"),
    );
    for cp in &marked {
        assert_corrupt(
            store.load(&cp.id).await,
            &[&cp.id.to_string(), "seq 3"],
            format!("[{name}] {} before a damaged frame of unknown kind", cp.id),
        );
    }

    let report = must(store.verify().await, "verify");
    assert!(!report.is_ok(), "[{name}] verify passed a damaged store");
    let by_exec = |exec: &str| {
        let e = report.executions.iter().find(|e| e.execution_id == exec);
        e.unwrap_or_else(|| panic!("[{name}] verify left {exec} out"))
    };
    let d = by_exec("d");
    assert_eq!(
        (
            d.damaged_frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            d.readable.clone(),
            d.unreadable.iter().map(|u| u.version).collect::<Vec<_>>(),
        ),
        (vec![3], vec![1, 2, 5, 6], vec![4]),
        "[{name}] verify of d"
    );
    assert!(!by_exec("ok").is_damaged(), "[{name}] verify of ok");
    assert_eq!(by_exec("ok").readable, [1, 2, 3], "[{name}] verify of ok");
    assert_eq!(by_exec("t").readable, [1, 2], "[{name}] verify of t");
    assert!(by_exec("m").readable.is_empty(), "[{name}] verify of m");
    assert!(report.damaged_blobs.is_empty(), "[{name}] damaged blobs");

    // Writing on: the damaged version's number is not handed out again, and what is saved
    // is readable.
    let next =
        Checkpoint::new("d", "work", &damage_state(7, true)).map(|c| c.with_metadata("step", 7));
    let next = must(
        store.save(must(next, "checkpoint")).await,
        "save after damage",
    );
    assert_eq!(next.version, 7, "[{name}] the save after the damage");
    let t4 = must(
        store.save(nth_checkpoint("t", 4)).await,
        "save t after damage",
    );
    assert_eq!(
        t4.version, 4,
        "[{name}] t's next version after a damaged tail"
    );
    drop(store);
    let store = h.open().await;
    let what = format!("[{name}] d@7 after reopen");
    assert_cp_eq(&must(store.at_version("d", 7).await, &what), &next, &what);
    let what = format!("[{name}] t@4 after reopen");
    assert_cp_eq(&must(store.at_version("t", 4).await, &what), &t4, &what);
    assert_corrupt(
        store.at_version("d", 3).await,
        &["d@3", "seq 3"],
        format!("[{name}] the damaged version after more saves"),
    );
}
