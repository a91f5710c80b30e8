//! Versions, ids, parents and timestamps, and the projections that read them: list, latest, at_version, history, and what NotFound names.

use crate::testing::helpers::{
    assert_cp_eq, assert_cps_eq, assert_not_found, header_heads, heads, must, save_n, save_one,
    versions,
};
use crate::testing::Harness;
use crate::{Checkpoint, CheckpointId, HistoryQuery};

/// Versions strictly increase; ids are `EXECUTION@VERSION` and parse back (also with `@` in the
/// execution id); each save's parent is the previous checkpoint; timestamps do not decrease.
pub async fn versions_ids_parents_and_timestamps(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let saved = save_n(&store, "ids", 8).await;
    for (i, cp) in saved.iter().enumerate() {
        let what = format!("[{name}] save #{i} ({})", cp.id);
        assert!(cp.is_saved() && cp.version > 0, "{what}: not marked saved");
        assert_eq!(cp.execution_id, "ids", "{what}");
        assert_eq!(
            cp.id,
            must(CheckpointId::new("ids", cp.version), &what),
            "{what}"
        );
        assert_eq!(cp.id.to_string(), format!("ids@{}", cp.version), "{what}");
        assert_eq!(
            cp.id.to_string().parse::<CheckpointId>().ok(),
            Some(cp.id.clone()),
            "{what}"
        );
        let expected_parent = i.checked_sub(1).map(|p| saved[p].id.clone());
        assert_eq!(cp.parent, expected_parent, "{what}: parent");
        if i > 0 {
            assert!(
                cp.version > saved[i - 1].version,
                "{what}: version not increasing: {:?}",
                versions(&saved)
            );
            assert!(
                cp.timestamp >= saved[i - 1].timestamp,
                "{what}: timestamp went back"
            );
        }
    }

    let at = must(
        store
            .save(must(Checkpoint::new("team@corp", "n", &1), "at"))
            .await,
        "save team@corp",
    );
    assert_eq!(
        at.id.to_string(),
        format!("team@corp@{}", at.version),
        "[{name}]"
    );
    let parsed: CheckpointId = must(at.id.to_string().parse(), "parse");
    assert_eq!(
        (parsed.execution_id(), parsed.version()),
        ("team@corp", at.version),
        "[{name}]"
    );
    assert_cp_eq(
        &must(store.load(&parsed).await, "load team@corp"),
        &at,
        format!("[{name}] load by parsed id"),
    );
}

/// `list` is oldest first, `latest` is the newest, `at_version` and `load` give each checkpoint;
/// two interleaved executions do not see each other; an unknown execution is empty.
pub async fn list_latest_and_at_version(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 1..=5 {
        a.push(save_one(&store, "list-a", i).await);
        b.push(save_one(&store, "list-b", i).await);
    }
    for (exec, saved) in [("list-a", &a), ("list-b", &b)] {
        let what = format!("[{name}] {exec}");
        assert_cps_eq(
            &must(store.list(exec).await, &what),
            saved,
            format!("{what}: list"),
        );
        let latest = must(store.latest(exec).await, &what);
        assert_eq!(latest.as_ref(), saved.last(), "{what}: latest");
        for cp in saved {
            assert_cp_eq(
                &must(store.at_version(exec, cp.version).await, &what),
                cp,
                format!("{what}: at_version"),
            );
            assert_cp_eq(
                &must(store.load(&cp.id).await, &what),
                cp,
                format!("{what}: load"),
            );
        }
    }
    assert!(
        must(store.list("list-nobody").await, "list").is_empty(),
        "[{name}] unknown execution listed"
    );
    assert!(
        must(store.latest("list-nobody").await, "latest").is_none(),
        "[{name}] unknown execution has a latest"
    );
    let history = must(
        store.history("list-nobody", HistoryQuery::default()).await,
        "history",
    );
    assert!(history.is_empty(), "[{name}] unknown execution has history");
}

/// Loading an unknown version, version 0, an unknown execution, a deleted checkpoint, and
/// deleting or forking unknown ids: `NotFound`, naming the id.
pub async fn not_found_names_what_was_missing(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let saved = save_n(&store, "nf", 2).await;
    let high = saved[1].version + 100;
    let unknown = must(CheckpointId::new("nf", high), "id");
    assert_not_found(
        store.load(&unknown).await,
        &format!("nf@{high}"),
        format!("[{name}] load unknown version"),
    );
    assert_not_found(
        store.at_version("nf", high).await,
        &format!("nf@{high}"),
        format!("[{name}] at_version"),
    );
    assert_not_found(
        store.at_version("nf", 0).await,
        "nf@0",
        format!("[{name}] version 0"),
    );
    let ghost = must(CheckpointId::new("nf-ghost", 1), "id");
    assert_not_found(
        store.load(&ghost).await,
        "nf-ghost@1",
        format!("[{name}] load unknown execution"),
    );
    assert_not_found(
        store.delete(&ghost).await,
        "nf-ghost@1",
        format!("[{name}] delete unknown"),
    );
    assert_not_found(
        store.delete(&unknown).await,
        &format!("nf@{high}"),
        format!("[{name}] delete unknown version"),
    );
    assert_not_found(
        store.fork(&ghost, "nf-fork").await,
        "nf-ghost@1",
        format!("[{name}] fork unknown"),
    );
    must(store.delete(&saved[0].id).await, "delete");
    let id = saved[0].id.to_string();
    assert_not_found(
        store.load(&saved[0].id).await,
        &id,
        format!("[{name}] load deleted"),
    );
    assert_cps_eq(
        &must(store.list("nf").await, "list"),
        &saved[1..],
        format!("[{name}] list after the errors"),
    );
}

/// History is newest first; `limit`, `before`, `metadata` (one or several), `node` and their
/// combinations filter it; headers equal the loaded checkpoints' headers.
pub async fn history_is_newest_first_and_filters(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    // #1..#6: odd ones are node "plan", kind "odd"; even ones node "act", kind "even".
    let s = save_n(&store, "hist", 6).await;
    let _other = save_n(&store, "hist-other", 3).await;
    let hist = |q: HistoryQuery| {
        let store = store.clone();
        async move { header_heads(&must(store.history("hist", q).await, "history")) }
    };
    let pick = |idx: &[usize]| heads(idx.iter().map(|&i| &s[i]));
    let q = HistoryQuery::default;

    assert_eq!(
        hist(q()).await,
        pick(&[5, 4, 3, 2, 1, 0]),
        "[{name}] default"
    );
    assert_eq!(hist(q().limit(2)).await, pick(&[5, 4]), "[{name}] limit 2");
    assert_eq!(hist(q().limit(0)).await, pick(&[]), "[{name}] limit 0");
    assert_eq!(
        hist(q().limit(100)).await,
        pick(&[5, 4, 3, 2, 1, 0]),
        "[{name}] limit 100"
    );
    assert_eq!(
        hist(q().before(s[3].version)).await,
        pick(&[2, 1, 0]),
        "[{name}] before #4"
    );
    assert_eq!(
        hist(q().before(s[0].version)).await,
        pick(&[]),
        "[{name}] before the first"
    );
    assert_eq!(
        hist(q().metadata("kind", "even")).await,
        pick(&[5, 3, 1]),
        "[{name}] kind=even"
    );
    assert_eq!(
        hist(q().metadata("kind", "even").metadata("step", 4)).await,
        pick(&[3]),
        "[{name}] kind=even, step=4"
    );
    assert_eq!(
        hist(q().metadata("step", 3)).await,
        pick(&[2]),
        "[{name}] step=3 (a number)"
    );
    assert_eq!(
        hist(q().metadata("step", "3")).await,
        pick(&[]),
        "[{name}] step=\"3\" (a string)"
    );
    assert_eq!(
        hist(q().metadata("kind", "none")).await,
        pick(&[]),
        "[{name}] kind=none"
    );
    assert_eq!(
        hist(q().metadata("missing", 1)).await,
        pick(&[]),
        "[{name}] missing key"
    );
    assert_eq!(
        hist(q().node("plan")).await,
        pick(&[4, 2, 0]),
        "[{name}] node plan"
    );
    assert_eq!(
        hist(q().node("nobody")).await,
        pick(&[]),
        "[{name}] node nobody"
    );
    assert_eq!(
        hist(q().node("act").before(s[5].version).limit(1)).await,
        pick(&[3]),
        "[{name}] node act, before #6, limit 1"
    );
    assert_eq!(
        hist(
            q().node("plan")
                .metadata("kind", "odd")
                .before(s[4].version)
                .limit(5)
        )
        .await,
        pick(&[2, 0]),
        "[{name}] node plan, kind=odd, before #5"
    );

    let full = must(store.history("hist", q()).await, "history");
    for header in &full {
        let loaded = must(store.load(&header.id).await, "load");
        assert_eq!(
            header_heads(std::slice::from_ref(header)),
            heads([&loaded]),
            "[{name}] header vs load"
        );
        assert!(
            header.stored_size > 0,
            "[{name}] {}: stored_size is 0",
            header.id
        );
    }
}
