//! Parallel branches (`StateGraph::add_fan_out`) of the graph runtime, with pending writes, on
//! the memory and sled stores.
#![cfg(all(feature = "graph", feature = "sled"))]

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use ckpt::graph::{CompileConfig, GraphError, Outcome, RunConfig, StateGraph, END};
use ckpt::{Checkpoint, CheckpointStore};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    log: Vec<String>,
}

type NodeOut = BoxFuture<'static, Result<St, std::io::Error>>;

/// A node that sleeps `ms`, then appends its name; fails on its first `fail_first` calls.
fn node(
    name: &'static str,
    calls: Arc<AtomicUsize>,
    ms: u64,
    fail_first: usize,
) -> impl Fn(St) -> NodeOut + Send + Sync + 'static {
    move |mut s: St| {
        let call = calls.fetch_add(1, SeqCst);
        Box::pin(async move {
            tokio::time::sleep(Duration::from_millis(ms)).await;
            if call < fail_first {
                return Err(std::io::Error::other(format!("{name} failed")));
            }
            s.log.push(name.to_owned());
            Ok(s)
        })
    }
}

/// A branch node that first waits until every branch has started (so it can only finish if
/// they run at the same time), then behaves as [`node`].
fn meeting_node(
    name: &'static str,
    calls: Arc<AtomicUsize>,
    ms: u64,
    all_started: Arc<tokio::sync::Barrier>,
) -> impl Fn(St) -> NodeOut + Send + Sync + 'static {
    let inner = node(name, calls, ms, 0);
    move |s: St| {
        let all_started = all_started.clone();
        let rest = inner(s);
        Box::pin(async move {
            all_started.wait().await;
            rest.await
        })
    }
}

/// The state before the step, then what each branch appended, in declared order.
fn merge(mut base: St, results: Vec<(String, St)>) -> St {
    let n = base.log.len();
    for (_, s) in results {
        base.log.extend(s.log.into_iter().skip(n));
    }
    base
}

const BRANCHES: [&str; 3] = ["b1", "b2", "b3"];
const SLEEPS: [u64; 3] = [200, 150, 100];

struct Calls {
    start: Arc<AtomicUsize>,
    branches: Vec<Arc<AtomicUsize>>,
    done: Arc<AtomicUsize>,
}

impl Calls {
    fn new() -> Self {
        Calls {
            start: Arc::default(),
            branches: (0..3).map(|_| Arc::default()).collect(),
            done: Arc::default(),
        }
    }

    fn branches(&self) -> Vec<usize> {
        self.branches.iter().map(|c| c.load(SeqCst)).collect()
    }
}

/// start -> {b1, b2, b3} -> done -> END; branch `fail` (index) fails on its first call.
fn fan_graph(calls: &Calls, fail: Option<usize>) -> StateGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node("start", node("start", calls.start.clone(), 0, 0));
    for (i, b) in BRANCHES.iter().enumerate() {
        let fails = usize::from(fail == Some(i));
        g.add_node(*b, node(b, calls.branches[i].clone(), SLEEPS[i], fails));
    }
    g.add_node("done", node("done", calls.done.clone(), 0, 0));
    g.add_fan_out("start", BRANCHES, "done", merge)
        .add_edge("done", END)
        .set_entry_point("start");
    g
}

fn expected() -> St {
    St {
        log: ["start", "b1", "b2", "b3", "done"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

fn with_store(store: &Arc<dyn CheckpointStore>) -> CompileConfig {
    CompileConfig::default().checkpointer(store.clone())
}

fn finished(out: Result<Outcome<St>, GraphError>) -> St {
    match out {
        Ok(Outcome::Finished(s)) => s,
        other => panic!("expected Finished, got {other:?}"),
    }
}

fn next_of(cp: &Checkpoint) -> Vec<String> {
    serde_json::from_value(cp.metadata["next"].clone()).expect("next is a list")
}

fn is_pending(cp: &Checkpoint) -> bool {
    cp.metadata.get("pending_write") == Some(&serde_json::Value::Bool(true))
}

on_both_stores!(
    fan_out_runs_concurrently_and_merges_in_order,
    branch_failure_resumes_only_the_missing_branch,
    interrupt_after_the_fan_out_source,
);

async fn fan_out_runs_concurrently_and_merges_in_order(store: Arc<dyn CheckpointStore>) {
    let calls = Calls::new();
    // The same graph as `fan_graph`, whose branches meet before they finish: run one after
    // another, the first would wait for the others forever.
    let all_started = Arc::new(tokio::sync::Barrier::new(BRANCHES.len()));
    let mut g = StateGraph::<St>::new();
    g.add_node("start", node("start", calls.start.clone(), 0, 0));
    for (i, b) in BRANCHES.iter().enumerate() {
        let branch = meeting_node(b, calls.branches[i].clone(), SLEEPS[i], all_started.clone());
        g.add_node(*b, branch);
    }
    g.add_node("done", node("done", calls.done.clone(), 0, 0));
    g.add_fan_out("start", BRANCHES, "done", merge)
        .add_edge("done", END)
        .set_entry_point("start");
    let app = g.compile(with_store(&store)).unwrap();
    let out = tokio::time::timeout(
        Duration::from_secs(60),
        app.invoke(St::default(), RunConfig::execution_id("fan")),
    )
    .await
    .expect("the branches did not run at the same time");
    let out = finished(out);
    assert_eq!(out, expected());
    assert_eq!(calls.branches(), [1, 1, 1]);

    let list = store.list("fan").await.unwrap();
    let nodes: Vec<&str> = list.iter().map(|c| c.node_name.as_str()).collect();
    // The input, start, the merge, done: the branches' results are not checkpoints.
    assert_eq!(nodes, ["__input__", "start", "start", "done"]);
    assert!(list.iter().all(|c| !is_pending(c)));
    let start = &list[1];
    assert_eq!(next_of(start), BRANCHES);
    assert_eq!(start.metadata["step"], 1);
    // They are pending writes of the step's base, in the order the branches finished.
    let writes = store.writes(&start.id).await.unwrap();
    let tasks: Vec<&str> = writes.iter().map(|w| w.task.as_str()).collect();
    assert_eq!(tasks, ["b3", "b2", "b1"]);
    for w in &writes {
        assert_eq!(w.channel, "__branch__");
        assert!(w.seq > start.version);
        assert_eq!(w.value::<St>().unwrap().log, ["start", w.task.as_str()]);
    }
    assert_eq!(list[2].metadata["source"], "join");
    assert_eq!(list[2].metadata["step"], 2);
    assert_eq!(list[2].parent, Some(start.id.clone()));
    assert_eq!(next_of(&list[2]), ["done"]);
    assert_eq!(
        list[2].state::<St>().unwrap().log,
        ["start", "b1", "b2", "b3"]
    );
    assert_eq!(list[3].metadata["step"], 3);
    assert!(next_of(&list[3]).is_empty());

    // Resuming a finished execution runs nothing.
    let again = finished(app.resume_latest("fan").await);
    assert_eq!(again, expected());
    assert_eq!(calls.branches(), [1, 1, 1]);
}

/// The branches whose results a step's writes hold, in the order they were written.
fn branch_results(writes: &[ckpt::Write]) -> Vec<&str> {
    writes
        .iter()
        .filter(|w| w.channel == "__branch__")
        .map(|w| w.task.as_str())
        .collect()
}

async fn branch_failure_resumes_only_the_missing_branch(store: Arc<dyn CheckpointStore>) {
    for (exec, by_invoke) in [("crash-resume", false), ("crash-invoke", true)] {
        let calls = Calls::new();
        let app = fan_graph(&calls, Some(1))
            .compile(with_store(&store))
            .unwrap();
        let err = app
            .invoke(St::default(), RunConfig::execution_id(exec))
            .await
            .unwrap_err();
        assert!(
            matches!(&err, GraphError::Node { node, .. } if node == "b2"),
            "{err}"
        );
        // b1 and b3 finished, and were saved as pending writes of start's checkpoint.
        let list = store.list(exec).await.unwrap();
        assert_eq!(
            list.len(),
            2,
            "the input and start: pending writes are not checkpoints"
        );
        let writes = store.writes(&list[1].id).await.unwrap();
        let pending: Vec<&str> = branch_results(&writes);
        assert_eq!(pending, ["b3", "b1"]);
        // b2's failure is recorded beside them (what get_state shows as its error).
        let failures: Vec<(&str, String)> = writes
            .iter()
            .filter(|w| w.channel == "__error__")
            .map(|w| (w.task.as_str(), w.value_json().to_string()))
            .collect();
        assert_eq!(failures.len(), 1, "{failures:?}");
        assert_eq!(failures[0].0, "b2");
        assert_eq!(calls.branches(), [1, 1, 1]);

        let out = if by_invoke {
            app.invoke(St::default(), RunConfig::execution_id(exec))
                .await
        } else {
            app.resume_latest(exec).await
        };
        assert_eq!(finished(out), expected());
        // Only b2 ran again.
        assert_eq!(calls.branches(), [1, 2, 1]);
        assert_eq!(calls.start.load(SeqCst), 1);
        assert_eq!(calls.done.load(SeqCst), 1);

        let list = store.list(exec).await.unwrap();
        let nodes: Vec<&str> = list.iter().map(|c| c.node_name.as_str()).collect();
        assert_eq!(nodes, ["__input__", "start", "start", "done"]);
        assert_eq!(list[2].metadata["source"], "join");
        let writes = store.writes(&list[1].id).await.unwrap();
        let pending: Vec<&str> = branch_results(&writes);
        assert_eq!(pending, ["b3", "b1", "b2"], "b2's result joined the others");
    }
}

async fn interrupt_after_the_fan_out_source(store: Arc<dyn CheckpointStore>) {
    let calls = Calls::new();
    let app = fan_graph(&calls, None)
        .compile(with_store(&store).interrupt_after(["start"]))
        .unwrap();
    let out = app
        .invoke(St::default(), RunConfig::execution_id("pause"))
        .await
        .unwrap();
    let Outcome::Interrupted {
        checkpoint, next, ..
    } = out
    else {
        panic!("expected Interrupted, got {out:?}");
    };
    assert_eq!(next, BRANCHES);
    assert_eq!(calls.branches(), [0, 0, 0]);
    let out = finished(app.resume("pause", &checkpoint).await);
    assert_eq!(out, expected());
    assert_eq!(calls.branches(), [1, 1, 1]);
}

#[tokio::test]
async fn fan_out_without_checkpointer() {
    let calls = Calls::new();
    let app = fan_graph(&calls, None)
        .compile(CompileConfig::default())
        .unwrap();
    let out = finished(
        app.invoke(St::default(), RunConfig::execution_id("x"))
            .await,
    );
    assert_eq!(out, expected());
}

#[tokio::test]
async fn fan_out_compile_errors() {
    let calls = Calls::new();
    let err = |g: StateGraph<St>| match g.compile(CompileConfig::default()) {
        Err(e) => e,
        Ok(_) => panic!("expected a compile error"),
    };
    let base = || {
        let mut g = StateGraph::<St>::new();
        g.add_node("start", node("start", calls.start.clone(), 0, 0))
            .add_node("b1", node("b1", calls.branches[0].clone(), 0, 0))
            .add_node("b2", node("b2", calls.branches[1].clone(), 0, 0))
            .add_node("done", node("done", calls.done.clone(), 0, 0))
            .add_edge("done", END)
            .set_entry_point("start");
        g
    };

    // Unknown branch.
    let mut g = base();
    g.add_fan_out("start", ["b1", "b2", "nope"], "done", merge);
    let e = err(g);
    assert!(
        matches!(&e, GraphError::UnknownNode { node, .. } if node == "nope"),
        "{e}"
    );

    // Unknown join.
    let mut g = base();
    g.add_fan_out("start", ["b1", "b2"], "nowhere", merge);
    let e = err(g);
    assert!(
        matches!(&e, GraphError::UnknownNode { node, .. } if node == "nowhere"),
        "{e}"
    );

    // A branch with its own edge.
    let mut g = base();
    g.add_fan_out("start", ["b1", "b2"], "done", merge)
        .add_edge("b2", "done");
    let e = err(g);
    assert!(
        matches!(&e, GraphError::InvalidFanOut { from, reason } if from == "start" && reason.contains("\"b2\"")),
        "{e}"
    );

    // The fan-out source with another edge.
    let mut g = base();
    g.add_fan_out("start", ["b1", "b2"], "done", merge)
        .add_edge("start", "done");
    let e = err(g);
    assert!(
        matches!(&e, GraphError::MultipleEdges(n) if n == "start"),
        "{e}"
    );

    // A branch that is the entry point.
    let mut g = base();
    g.add_fan_out("start", ["b1", "b2"], "done", merge)
        .set_entry_point("b1");
    let e = err(g);
    assert!(matches!(&e, GraphError::InvalidFanOut { .. }), "{e}");

    // Branches and join count as reachable, and branches need no edge: this compiles.
    let mut g = base();
    g.add_fan_out("start", ["b1", "b2"], "done", merge);
    assert!(g.compile(CompileConfig::default()).is_ok());
}
