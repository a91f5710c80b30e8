//! Storage cost: deltas keep a growing conversation small, long delta chains load every version, and a growing long string costs what changed.

use serde_json::json;

use crate::testing::helpers::{assert_cp_eq, assert_cps_eq, conv_state, must, text};
use crate::testing::Harness;
use crate::Checkpoint;

/// 100 saves of a conversation that gains one 600-byte message per save write far less than the
/// ~3 MB of whole states (frames + blobs < 150 kB), and every version loads back exactly.
pub async fn deltas_keep_storage_small(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut saved = Vec::new();
    let mut states = Vec::new();
    for n in 1..=100u64 {
        let state = conv_state("eff", n, 600);
        let cp = must(Checkpoint::new("eff", "chat", &state), "cp");
        saved.push(must(store.save(cp).await, "save"));
        states.push(state);
    }
    let stats = store.write_stats();
    assert_eq!(stats.frames, 100, "[{name}] frames written: {stats:?}");
    assert!(
        stats.frame_bytes + stats.blob_bytes < 150_000,
        "[{name}] too many bytes written: {stats:?}"
    );
    for (cp, state) in saved.iter().zip(&states) {
        let loaded = must(store.at_version("eff", cp.version).await, "at_version");
        assert_eq!(
            &must(loaded.state_json(), "json"),
            state,
            "[{name}] state of {}",
            cp.id
        );
    }
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("eff").await, "list"),
        &saved,
        format!("[{name}] all 100 after reopen"),
    );
}

/// 250 small saves to one execution (longer than any delta chain may grow), then the first 120
/// deleted and gc run: gc truncates the log's head, and every remaining version loads exactly,
/// also after a reopen; saving continues on top.
pub async fn long_delta_chains_load_every_version(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let state = |n: u64| json!({ "step": n, "recent": [n.saturating_sub(2), n.saturating_sub(1), n], "note": text("chain", n % 7, 30) });
    let mut saved = Vec::new();
    for n in 1..=250 {
        saved.push(must(
            store
                .save(must(Checkpoint::new("chain", "n", &state(n)), "cp"))
                .await,
            "save",
        ));
    }
    for cp in &saved[..120] {
        must(store.delete(&cp.id).await, "delete");
    }
    let live = &saved[120..];
    let report = must(store.gc().await, "gc");
    assert!(
        report.frames_removed > 0,
        "[{name}] gc kept the head of a 250-save log: {report:?}"
    );
    for (cp, n) in live.iter().zip(121..) {
        let loaded = must(store.at_version("chain", cp.version).await, "at_version");
        assert_eq!(
            must(loaded.state_json(), "json"),
            state(n),
            "[{name}] state of {}",
            cp.id
        );
        assert_cp_eq(&loaded, cp, format!("[{name}] {} after gc", cp.id));
    }
    assert_cps_eq(
        &must(store.list("chain").await, "list"),
        live,
        format!("[{name}] list after gc"),
    );
    drop(store);
    let store = h.open().await;
    assert_cps_eq(
        &must(store.list("chain").await, "list"),
        live,
        format!("[{name}] list after reopen"),
    );
    let next = must(
        store
            .save(must(Checkpoint::new("chain", "n", &state(251)), "cp"))
            .await,
        "save",
    );
    assert_eq!(
        next.parent.as_ref(),
        live.last().map(|c| &c.id),
        "[{name}] parent after gc + reopen"
    );
    assert_cp_eq(
        &must(store.load(&next.id).await, "load"),
        &next,
        format!("[{name}] save after gc + reopen"),
    );
}

/// A long string that grows a little with every save (a transcript, a scratchpad) is stored as
/// content-defined chunks: each save costs its new chunks and a manifest, not the whole string
/// again; every version loads exactly, after gc and after a reopen.
pub async fn growing_long_strings_cost_what_changed(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut doc = text("transcript", 0, 400_000);
    let mut saved = Vec::new();
    let before = store.write_stats();
    for i in 1..=6u64 {
        doc.push_str(&text("transcript", i, 2_000));
        let cp = must(
            Checkpoint::new("grow", "n", &json!({ "doc": doc, "i": i })),
            "checkpoint",
        );
        saved.push(must(store.save(cp).await, "save"));
    }
    let after = store.write_stats();
    let written = (after.frame_bytes + after.blob_bytes) - (before.frame_bytes + before.blob_bytes);
    // The first save stores ~400 KB (compressed to ~300 KB); five more saves of whole copies
    // would add ~1.5 MB. Chunking keeps each at a few chunks (~32 KB each) and a manifest.
    assert!(
        written < 800_000,
        "[{name}] six saves of a growing 400 KB string wrote {written} bytes"
    );
    must(store.delete(&saved[0].id).await, "delete");
    must(store.gc().await, "gc");
    for cp in &saved[1..] {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load"),
            cp,
            format!("[{name}] {} after gc", cp.id),
        );
    }
    drop(store);
    let store = h.open().await;
    for cp in &saved[1..] {
        assert_cp_eq(
            &must(store.load(&cp.id).await, "load after reopen"),
            cp,
            format!("[{name}] {} after reopen", cp.id),
        );
    }
}
