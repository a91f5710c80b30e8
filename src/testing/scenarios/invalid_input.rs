//! Invalid input: refused with InvalidInput, never a panic, and without a trace.

use serde_json::json;

use crate::testing::helpers::{
    assert_cps_eq, expected_summary, must, nth_checkpoint, save_n, summary_views,
};
use crate::testing::Harness;
use crate::{Checkpoint, CheckpointId, Error, HistoryQuery};

/// Bad execution ids and node names, malformed checkpoint ids and over-deep states are refused with
/// InvalidInput (not a panic); store calls with bad ids fail; none of it leaves a trace, and the
/// store works afterwards.
pub async fn invalid_input_is_refused_and_harmless(h: &dyn Harness) {
    let name = h.name();
    let is_invalid = |r: &crate::Result<Checkpoint>| matches!(r, Err(Error::InvalidInput(_)));
    let long = "x".repeat(300);
    for bad in [
        "",
        long.as_str(),
        &"y".repeat(257),
        "tab\there",
        "nl\n",
        "nul\0",
        "del\u{7f}",
    ] {
        let r = Checkpoint::new(bad, "n", &1);
        assert!(is_invalid(&r), "[{name}] execution id {bad:?}: {r:?}");
        assert!(
            CheckpointId::new(bad, 1).is_err(),
            "[{name}] CheckpointId::new({bad:?})"
        );
    }
    assert!(
        Checkpoint::new(&"z".repeat(256), "n", &1).is_ok(),
        "[{name}] 256-byte execution id refused"
    );
    for bad in ["", "line\nbreak", &"n".repeat(257)] {
        let r = Checkpoint::new("ok", bad, &1);
        assert!(is_invalid(&r), "[{name}] node name {bad:?}: {r:?}");
    }
    for bad in [
        "no-at-sign",
        "e@",
        "e@x",
        "@5",
        "e@-1",
        "e@1.5",
        "e@99999999999999999999999",
        "",
    ] {
        assert!(
            bad.parse::<CheckpointId>().is_err(),
            "[{name}] {bad:?} parsed as a checkpoint id"
        );
    }
    let mut deep = json!(1);
    for _ in 0..200 {
        deep = json!([deep]);
    }
    let r = Checkpoint::new("ok", "n", &deep);
    assert!(is_invalid(&r), "[{name}] a 200-level state: {r:?}");

    let store = h.open().await;
    assert!(
        store.at_version("", 1).await.is_err(),
        "[{name}] at_version(\"\")"
    );
    assert!(
        store.list("a\nb").await.is_err(),
        "[{name}] list with a control character"
    );
    assert!(store.latest("").await.is_err(), "[{name}] latest(\"\")");
    assert!(
        store.history("", HistoryQuery::default()).await.is_err(),
        "[{name}] history(\"\")"
    );
    assert!(store.clear("").await.is_err(), "[{name}] clear(\"\")");
    let mut bad = nth_checkpoint("valid", 1);
    bad.execution_id = String::new();
    assert!(
        is_invalid(&store.save(bad.clone()).await),
        "[{name}] save with an empty execution id"
    );
    assert!(
        is_invalid(&store.save_after(bad, None).await),
        "[{name}] save_after with an empty execution id"
    );

    let saved = save_n(&store, "valid", 2).await;
    assert_cps_eq(
        &must(store.list("valid").await, "list"),
        &saved,
        format!("[{name}] store after errors"),
    );
    let summaries = summary_views(&must(store.executions().await, "executions"));
    assert_eq!(
        summaries,
        vec![expected_summary(&saved)],
        "[{name}] executions after errors"
    );
}
