//! A replay runs every node again, send tasks included (as it does fan-out branches): a
//! replay of a map-reduce run with changed `upper` code must run the `upper` tasks and report
//! the divergence.
#![cfg(feature = "graph")]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use ckpt::graph::{
    reduce, CompileConfig, CompiledGraph, NodeContext, Reducible, ReplayOptions, RunConfig, SendTo,
    StateGraph, END,
};
use ckpt::{CheckpointStore, Store};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Words {
    words: Vec<String>,
    out: Vec<String>,
}

impl Reducible for Words {
    type Update = Vec<String>;
    fn apply(&mut self, out: Vec<String>) {
        reduce::append(&mut self.out, out);
    }
}

/// `split` sends one `upper` task per word; `upper` upper-cases it (or, in the changed code,
/// lower-cases it), counting its calls.
fn app(
    store: Arc<dyn CheckpointStore>,
    changed: bool,
    calls: Arc<AtomicUsize>,
) -> CompiledGraph<Words> {
    let mut g = StateGraph::<Words>::with_reducers();
    g.add_update_node("split", |_s: Words| async move {
        Ok::<_, std::io::Error>(vec![])
    });
    g.add_send_edges("split", |s: &Words| {
        s.words.iter().map(|w| SendTo::new("upper", w)).collect()
    });
    g.add_send_node("upper", move |w: String, _ctx: NodeContext| {
        calls.fetch_add(1, SeqCst);
        async move {
            Ok::<_, std::io::Error>(vec![if changed {
                w.to_lowercase()
            } else {
                w.to_uppercase()
            }])
        }
    });
    g.add_edge("upper", END);
    g.set_entry_point("split");
    g.compile(CompileConfig::default().checkpointer(store))
        .unwrap()
}

#[tokio::test]
async fn a_replay_runs_send_tasks_again() {
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    let calls = Arc::new(AtomicUsize::new(0));
    let words = Words {
        words: vec!["a".into(), "b".into()],
        out: vec![],
    };
    let out = app(store.clone(), false, calls.clone())
        .invoke(words, RunConfig::execution_id("w"))
        .await
        .unwrap();
    assert_eq!(out.state().out, ["A", "B"]);
    assert_eq!(calls.load(SeqCst), 2);

    let input = store.list("w").await.unwrap()[0].id.clone();
    let changed_calls = Arc::new(AtomicUsize::new(0));
    let report = app(store.clone(), true, changed_calls.clone())
        .replay("w", &input, ReplayOptions::live())
        .await
        .unwrap();
    assert_eq!(
        changed_calls.load(SeqCst),
        2,
        "the replay ran the changed upper tasks"
    );
    assert!(!report.is_faithful(), "the changed code diverges: {report}");
    assert_eq!(report.outcome.unwrap().state().out, ["a", "b"]);
}
