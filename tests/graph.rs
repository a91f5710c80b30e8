//! The graph runtime (`ckpt::graph`) on the memory and sled stores.
#![cfg(all(feature = "graph", feature = "sled"))]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ckpt::graph::{
    CompileConfig, GraphError, GraphEvent, Outcome, RetryPolicy, RunConfig, StateGraph, END,
};
use ckpt::{Checkpoint, CheckpointId, CheckpointStore, Store};
use futures_util::future::BoxFuture;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tempfile::TempDir;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    log: Vec<String>,
    n: u32,
}

type NodeOut = BoxFuture<'static, Result<St, std::io::Error>>;

/// A node that appends its name to the log; fails on its first `fail_first` calls.
fn node(
    name: &'static str,
    calls: Arc<AtomicUsize>,
    fail_first: usize,
) -> impl Fn(St) -> NodeOut + Send + Sync + 'static {
    move |mut s: St| {
        let call = calls.fetch_add(1, SeqCst);
        Box::pin(async move {
            if call < fail_first {
                return Err(std::io::Error::other(format!(
                    "{name} failed (call {call})"
                )));
            }
            s.log.push(name.to_owned());
            s.n += 1;
            Ok(s)
        })
    }
}

fn counters(n: usize) -> Vec<Arc<AtomicUsize>> {
    (0..n).map(|_| Arc::new(AtomicUsize::new(0))).collect()
}

fn counts(c: &[Arc<AtomicUsize>]) -> Vec<usize> {
    c.iter().map(|c| c.load(SeqCst)).collect()
}

const NAMES: [&str; 6] = ["n1", "n2", "n3", "n4", "n5", "n6"];

/// n1 -> n2 -> ... -> nK -> END; node `fail` (index) fails on its first call.
fn linear(k: usize, calls: &[Arc<AtomicUsize>], fail: Option<usize>) -> StateGraph<St> {
    let mut g = StateGraph::<St>::new();
    for i in 0..k {
        let fails = usize::from(fail == Some(i));
        g.add_node(NAMES[i], node(NAMES[i], calls[i].clone(), fails));
        g.add_edge(NAMES[i], if i + 1 == k { END } else { NAMES[i + 1] });
    }
    g.set_entry_point("n1");
    g
}

fn expected(k: usize) -> St {
    St {
        log: NAMES[..k].iter().map(|s| s.to_string()).collect(),
        n: k as u32,
    }
}

fn with_store(store: &Arc<dyn CheckpointStore>) -> CompileConfig {
    CompileConfig::default().checkpointer(store.clone())
}

async fn finished(out: Result<Outcome<St>, GraphError>) -> St {
    match out {
        Ok(Outcome::Finished(s)) => s,
        other => panic!("expected Finished, got {other:?}"),
    }
}

fn interrupted(out: Result<Outcome<St>, GraphError>) -> (CheckpointId, St, Vec<String>) {
    match out {
        Ok(Outcome::Interrupted {
            checkpoint,
            state,
            next,
            ..
        }) => (checkpoint, state, next),
        other => panic!("expected Interrupted, got {other:?}"),
    }
}

fn next_of(cp: &Checkpoint) -> Vec<String> {
    serde_json::from_value(cp.metadata["next"].clone()).expect("next is a list")
}

/// Runs each scenario on a memory store and on a sled store in a temporary directory.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let store: std::sync::Arc<dyn ckpt::CheckpointStore> =
                        std::sync::Arc::new(ckpt::Store::memory());
                    super::$name(store).await;
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test]
                async fn $name() {
                    let dir = tempfile::TempDir::new().expect("temp dir");
                    let store = ckpt::Store::open(dir.path().to_str().expect("utf-8 path"))
                        .await
                        .expect("open sled");
                    let store: std::sync::Arc<dyn ckpt::CheckpointStore> = std::sync::Arc::new(store);
                    super::$name(store).await;
                }
            )*
        }
    };
}

on_both_stores!(
    linear_graph_checkpoints_every_step,
    conditional_loop_terminates,
    crash_recovery_resumes_without_rerunning,
    interrupt_before_update_state_resume,
    interrupt_before_entry_saves_input_checkpoint,
    interrupt_after_pauses_after_saving,
    time_travel_from_an_old_version,
    stream_yields_events_in_order,
    stream_backpressure_loses_nothing,
);

async fn linear_graph_checkpoints_every_step(store: Arc<dyn CheckpointStore>) {
    let calls = counters(3);
    let app = linear(3, &calls, None).compile(with_store(&store)).unwrap();
    let s = finished(
        app.invoke(St::default(), RunConfig::execution_id("lin"))
            .await,
    )
    .await;
    assert_eq!(s, expected(3));

    let cps = store.list("lin").await.unwrap();
    assert_eq!(cps.len(), 4, "the input and one checkpoint per step");
    let nodes: Vec<_> = cps.iter().map(|c| c.node_name.as_str()).collect();
    assert_eq!(nodes, ["__input__", "n1", "n2", "n3"]);
    let nexts: Vec<_> = cps.iter().map(next_of).collect();
    assert_eq!(
        nexts,
        [vec!["n1"], vec!["n2"], vec!["n3"], Vec::<&str>::new()]
    );
    assert_eq!(cps[0].metadata["source"], "input");
    for (i, cp) in cps.iter().enumerate() {
        assert_eq!(cp.metadata["step"], i as u64);
        assert_eq!(cp.state::<St>().unwrap(), expected(i));
        if i == 0 {
            assert_eq!(cp.parent, None);
        } else {
            assert_eq!(cp.metadata["source"], "loop");
            assert!(cp.version > cps[i - 1].version);
            assert_eq!(cp.parent, Some(cps[i - 1].id.clone()));
        }
    }

    // Invoking a finished execution starts a new run of it (a graph without reducers starts
    // from the new input), continuing the same log: a new input checkpoint after the last one,
    // and the step numbers go on.
    let again = finished(
        app.invoke(St::default(), RunConfig::execution_id("lin"))
            .await,
    )
    .await;
    assert_eq!(again, expected(3));
    assert_eq!(counts(&calls), [2, 2, 2]);
    let cps = store.list("lin").await.unwrap();
    assert_eq!(cps.len(), 8);
    assert_eq!(cps[4].node_name, "__input__");
    assert_eq!(cps[4].parent, Some(cps[3].id.clone()));
    let steps: Vec<u64> = cps
        .iter()
        .map(|c| c.metadata["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [0, 1, 2, 3, 3, 4, 5, 6]);
    // Each run's checkpoints name it.
    let run_of = |c: &Checkpoint| c.metadata["run_id"].as_str().unwrap().to_owned();
    assert!(cps[..4].iter().all(|c| run_of(c) == run_of(&cps[0])));
    assert!(cps[4..].iter().all(|c| run_of(c) == run_of(&cps[4])));
    assert_ne!(run_of(&cps[0]), run_of(&cps[4]));
}

async fn conditional_loop_terminates(store: Arc<dyn CheckpointStore>) {
    let calls = counters(1);
    let mut g = StateGraph::<St>::new();
    g.add_node("inc", node("inc", calls[0].clone(), 0));
    g.add_conditional_edges(
        "inc",
        |s: &St| {
            if s.n >= 5 {
                END.into()
            } else {
                "inc".into()
            }
        },
    );
    g.set_entry_point("inc");
    let app = g.compile(with_store(&store)).unwrap();
    let s = finished(
        app.invoke(St::default(), RunConfig::execution_id("loop"))
            .await,
    )
    .await;
    assert_eq!(s.n, 5);
    assert_eq!(calls[0].load(SeqCst), 5);
    let cps = store.list("loop").await.unwrap();
    assert_eq!(cps.len(), 6, "the input and five steps");
    assert_eq!(next_of(&cps[4]), ["inc"]);
    assert!(next_of(&cps[5]).is_empty());
}

async fn crash_recovery_resumes_without_rerunning(store: Arc<dyn CheckpointStore>) {
    // The reference: an uninterrupted run.
    let ref_calls = counters(6);
    let reference = linear(6, &ref_calls, None)
        .compile(with_store(&store))
        .unwrap();
    let want = finished(
        reference
            .invoke(St::default(), RunConfig::execution_id("ref"))
            .await,
    )
    .await;
    assert_eq!(want, expected(6));

    let calls = counters(6);
    let app = linear(6, &calls, Some(2))
        .compile(with_store(&store))
        .unwrap();
    match app
        .invoke(St::default(), RunConfig::execution_id("crash"))
        .await
    {
        Err(GraphError::Node { node, source }) => {
            assert_eq!(node, "n3");
            assert!(source.to_string().contains("n3 failed"));
        }
        other => panic!("expected a node error, got {other:?}"),
    }
    assert_eq!(store.list("crash").await.unwrap().len(), 3, "input, n1, n2");
    assert_eq!(counts(&calls), [1, 1, 1, 0, 0, 0]);

    let got = finished(app.resume_latest("crash").await).await;
    assert_eq!(got, want);
    // No node before the failure ran twice; the failed node ran once more.
    assert_eq!(counts(&calls), [1, 1, 2, 1, 1, 1]);
    let cps = store.list("crash").await.unwrap();
    assert_eq!(cps.len(), 7);
    for w in cps.windows(2) {
        assert_eq!(w[1].parent, Some(w[0].id.clone()));
    }
    assert_eq!(
        cps.last().unwrap().state::<St>().unwrap(),
        store
            .latest("ref")
            .await
            .unwrap()
            .unwrap()
            .state::<St>()
            .unwrap()
    );
}

fn plan_act(plan: Arc<AtomicUsize>, act: Arc<AtomicUsize>) -> StateGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node("plan", node("plan", plan, 0));
    g.add_node("act", node("act", act, 0));
    g.add_edge("plan", "act");
    g.add_edge("act", END);
    g.set_entry_point("plan");
    g
}

async fn interrupt_before_update_state_resume(store: Arc<dyn CheckpointStore>) {
    let calls = counters(2);
    let app = plan_act(calls[0].clone(), calls[1].clone())
        .compile(
            with_store(&store)
                .interrupt_before(["act"])
                .interrupt_after([]),
        )
        .unwrap();
    let (cp, state, next) = interrupted(
        app.invoke(St::default(), RunConfig::execution_id("ib"))
            .await,
    );
    assert_eq!(next, ["act"]);
    assert_eq!(state.log, ["plan"]);
    assert_eq!(counts(&calls), [1, 0]);
    let saved = store.load(&cp).await.unwrap();
    assert_eq!(saved.node_name, "plan");
    assert_eq!(next_of(&saved), ["act"]);

    let mut edited = state.clone();
    edited.log.push("human".into());
    let updated = app.update_state(&cp, edited).await.unwrap();
    let up = store.load(&updated).await.unwrap();
    assert_eq!(up.parent, Some(cp.clone()));
    assert_eq!(next_of(&up), ["act"]);
    assert_eq!(up.metadata["source"], "update");

    let s = finished(app.resume("ib", &updated).await).await;
    assert_eq!(s.log, ["plan", "human", "act"]);
    assert_eq!(counts(&calls), [1, 1]);
    let last = store.latest("ib").await.unwrap().unwrap();
    assert_eq!(last.node_name, "act");
    assert_eq!(last.parent, Some(updated));
}

async fn interrupt_before_entry_saves_input_checkpoint(store: Arc<dyn CheckpointStore>) {
    let calls = counters(2);
    let app = plan_act(calls[0].clone(), calls[1].clone())
        .compile(with_store(&store).interrupt_before(["plan"]))
        .unwrap();
    let input = St {
        log: vec!["input".into()],
        n: 0,
    };
    let (cp, state, next) = interrupted(
        app.invoke(input.clone(), RunConfig::execution_id("ie"))
            .await,
    );
    assert_eq!(state, input);
    assert_eq!(next, ["plan"]);
    assert_eq!(counts(&calls), [0, 0]);
    let saved = store.load(&cp).await.unwrap();
    assert_eq!(saved.node_name, "__input__");
    assert_eq!(saved.metadata["source"], "input");
    // Invoking again continues from the input checkpoint and runs the entry node.
    let s = finished(
        app.invoke(St::default(), RunConfig::execution_id("ie"))
            .await,
    )
    .await;
    assert_eq!(s.log, ["input", "plan", "act"]);
    assert_eq!(counts(&calls), [1, 1]);
}

async fn interrupt_after_pauses_after_saving(store: Arc<dyn CheckpointStore>) {
    let calls = counters(2);
    let app = plan_act(calls[0].clone(), calls[1].clone())
        .compile(with_store(&store).interrupt_after(["plan"]))
        .unwrap();
    let (cp, state, next) = interrupted(
        app.invoke(St::default(), RunConfig::execution_id("ia"))
            .await,
    );
    assert_eq!(state.log, ["plan"]);
    assert_eq!(next, ["act"]);
    assert_eq!(counts(&calls), [1, 0]);
    assert_eq!(store.latest("ia").await.unwrap().unwrap().id, cp);
    let s = finished(app.resume("ia", &cp).await).await;
    assert_eq!(s.log, ["plan", "act"]);
    assert_eq!(counts(&calls), [1, 1]);
}

async fn time_travel_from_an_old_version(store: Arc<dyn CheckpointStore>) {
    let calls = counters(4);
    let app = linear(4, &calls, None).compile(with_store(&store)).unwrap();
    finished(
        app.invoke(St::default(), RunConfig::execution_id("tt"))
            .await,
    )
    .await;
    let old = store.list("tt").await.unwrap();
    assert_eq!(old.len(), 5, "the input and four steps");
    let v2 = old[2].id.clone();
    assert_eq!(v2.version(), old[2].version);

    let mut edited = old[2].state::<St>().unwrap();
    edited.log.push("edited".into());
    let forked = app.update_state(&v2, edited).await.unwrap();
    let f = store.load(&forked).await.unwrap();
    // The edit is a child of the version it edits: a new branch of the execution's tree.
    assert_eq!(f.parent, Some(v2.clone()));
    assert_eq!(next_of(&f), ["n3"]);

    let s = finished(app.resume("tt", &forked).await).await;
    assert_eq!(s.log, ["n1", "n2", "edited", "n3", "n4"]);
    assert_eq!(counts(&calls), [1, 1, 2, 2]);

    let all = store.list("tt").await.unwrap();
    assert_eq!(all.len(), 8);
    assert_eq!(all[6].parent, Some(forked.clone()));
    assert_eq!(all[7].parent, Some(all[6].id.clone()));
    // Resuming from an old version (not the latest) branches there too.
    let again = finished(app.resume("tt", &old[3].id).await).await;
    assert_eq!(again.log, ["n1", "n2", "n3", "n4"]);
    let all = store.list("tt").await.unwrap();
    assert_eq!(all.len(), 9);
    assert_eq!(
        all[8].parent,
        Some(old[3].id.clone()),
        "a resume from v4 branches at v4"
    );
    // The old versions are untouched and still load.
    for cp in &old {
        assert_eq!(
            store.load(&cp.id).await.unwrap().state::<St>().unwrap(),
            cp.state::<St>().unwrap()
        );
    }
    assert_eq!(
        store.load(&all[7].id).await.unwrap().state::<St>().unwrap(),
        s
    );
}

async fn stream_yields_events_in_order(store: Arc<dyn CheckpointStore>) {
    let calls = counters(2);
    let app = linear(2, &calls, None).compile(with_store(&store)).unwrap();
    let events: Vec<GraphEvent<St>> = app
        .stream(St::default(), RunConfig::execution_id("st"))
        .map(|e| e.unwrap())
        .collect()
        .await;
    let cps = store.list("st").await.unwrap();
    let want = vec![
        GraphEvent::CheckpointSaved {
            id: cps[0].id.clone(),
            version: cps[0].version,
        },
        GraphEvent::NodeStart {
            node: "n1".into(),
            step: 1,
        },
        GraphEvent::NodeEnd {
            node: "n1".into(),
            step: 1,
            state: expected(1),
        },
        GraphEvent::CheckpointSaved {
            id: cps[1].id.clone(),
            version: cps[1].version,
        },
        GraphEvent::NodeStart {
            node: "n2".into(),
            step: 2,
        },
        GraphEvent::NodeEnd {
            node: "n2".into(),
            step: 2,
            state: expected(2),
        },
        GraphEvent::CheckpointSaved {
            id: cps[2].id.clone(),
            version: cps[2].version,
        },
        GraphEvent::Finished { state: expected(2) },
    ];
    assert_eq!(events, want);
}

async fn stream_backpressure_loses_nothing(store: Arc<dyn CheckpointStore>) {
    let calls = counters(6);
    let app = linear(6, &calls, None).compile(with_store(&store)).unwrap();
    let mut stream = app.stream(St::default(), RunConfig::execution_id("bp").buffer(1));
    let mut seen = Vec::new();
    while let Some(ev) = stream.next().await {
        let ev = ev.unwrap();
        if let GraphEvent::NodeEnd { step, .. } = &ev {
            // The run cannot get ahead of a slow consumer by more than the buffer.
            let started: usize = counts(&calls).iter().sum();
            assert!(
                started <= *step as usize + 1,
                "{started} nodes ran by step {step}"
            );
        }
        seen.push(ev);
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert_eq!(
        seen.len(),
        1 + 6 * 3 + 1,
        "the input's checkpoint, 3 per step, the end"
    );
    assert!(matches!(
        &seen[0],
        GraphEvent::CheckpointSaved { version: 1, .. }
    ));
    let seen = &seen[1..];
    for (i, name) in NAMES.iter().enumerate() {
        let step = i as u64 + 1;
        assert_eq!(
            seen[i * 3],
            GraphEvent::NodeStart {
                node: name.to_string(),
                step
            }
        );
        assert!(
            matches!(&seen[i * 3 + 1], GraphEvent::NodeEnd { node, step: s, .. } if node == name && *s == step)
        );
        assert!(matches!(
            &seen[i * 3 + 2],
            GraphEvent::CheckpointSaved { .. }
        ));
    }
    assert_eq!(seen[18], GraphEvent::Finished { state: expected(6) });
}

#[test]
fn compile_errors_name_the_node() {
    fn err(g: StateGraph<St>, config: CompileConfig) -> GraphError {
        match g.compile(config) {
            Err(e) => e,
            Ok(_) => panic!("expected a compile error"),
        }
    }
    let c = || Arc::new(AtomicUsize::new(0));

    // Unknown node in an edge (target, then source).
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_edge("a", "ghost")
        .set_entry_point("a");
    let e = err(g, CompileConfig::default());
    assert!(
        matches!(&e, GraphError::UnknownNode { node, .. } if node == "ghost"),
        "{e}"
    );
    assert!(e.to_string().contains("\"ghost\""), "{e}");

    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_edge("a", END)
        .add_edge("phantom", "a")
        .set_entry_point("a");
    let e = err(g, CompileConfig::default());
    assert!(e.to_string().contains("\"phantom\""), "{e}");

    // Entry point missing, then unknown.
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0)).add_edge("a", END);
    assert!(matches!(
        err(g, CompileConfig::default()),
        GraphError::MissingEntryPoint
    ));
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_edge("a", END)
        .set_entry_point("nowhere");
    let e = err(g, CompileConfig::default());
    assert!(
        matches!(&e, GraphError::UnknownNode { node, .. } if node == "nowhere"),
        "{e}"
    );
    assert!(e.to_string().contains("\"nowhere\""), "{e}");

    // Unreachable node.
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_node("island", node("island", c(), 0));
    g.add_edge("a", END)
        .add_edge("island", END)
        .set_entry_point("a");
    let e = err(g, CompileConfig::default());
    assert!(
        matches!(&e, GraphError::Unreachable { node, .. } if node == "island"),
        "{e}"
    );
    assert!(e.to_string().contains("\"island\""), "{e}");

    // A node with no way out.
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_node("sink", node("sink", c(), 0));
    g.add_edge("a", "sink").set_entry_point("a");
    let e = err(g, CompileConfig::default());
    assert!(
        matches!(&e, GraphError::NoOutgoingEdge(n) if n == "sink"),
        "{e}"
    );
    assert!(e.to_string().contains("\"sink\""), "{e}");

    // Duplicate node names.
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_node("a", node("a", c(), 0));
    g.add_edge("a", END).set_entry_point("a");
    let e = err(g, CompileConfig::default());
    assert!(
        matches!(&e, GraphError::DuplicateNode(n) if n == "a"),
        "{e}"
    );
    assert!(e.to_string().contains("\"a\""), "{e}");

    // Reserved names.
    for reserved in [END, "__input__"] {
        let mut g = StateGraph::<St>::new();
        g.add_node("a", node("a", c(), 0))
            .add_node(reserved, node("x", c(), 0));
        g.add_edge("a", END).set_entry_point("a");
        let e = err(g, CompileConfig::default());
        assert!(
            matches!(&e, GraphError::ReservedName(n) if n == reserved),
            "{e}"
        );
        assert!(e.to_string().contains(reserved), "{e}");
    }

    // Two edges out of one node (fan-out is not supported).
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_node("b", node("b", c(), 0));
    g.add_edge("a", "b")
        .add_edge("a", END)
        .add_edge("b", END)
        .set_entry_point("a");
    let e = err(g, CompileConfig::default());
    assert!(
        matches!(&e, GraphError::MultipleEdges(n) if n == "a"),
        "{e}"
    );

    // Interrupt on an unknown node; interrupts without a checkpointer.
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_edge("a", END)
        .set_entry_point("a");
    let e = err(g, with_store(&store).interrupt_before(["nope"]));
    assert!(e.to_string().contains("\"nope\""), "{e}");
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", c(), 0))
        .add_edge("a", END)
        .set_entry_point("a");
    let e = err(g, CompileConfig::default().interrupt_after(["a"]));
    assert!(matches!(e, GraphError::NoCheckpointer), "{e}");
}

#[tokio::test]
async fn retry_policy_attempts() {
    for (attempts, ok) in [(3, true), (2, false)] {
        let calls = Arc::new(AtomicUsize::new(0));
        let mut g = StateGraph::<St>::new();
        g.add_node_with_retry(
            "flaky",
            node("flaky", calls.clone(), 2),
            RetryPolicy::new(attempts, Duration::from_millis(5)),
        );
        g.add_edge("flaky", END).set_entry_point("flaky");
        let app = g.compile(CompileConfig::default()).unwrap();
        let started = std::time::Instant::now();
        let out = app
            .invoke(St::default(), RunConfig::execution_id("retry"))
            .await;
        if ok {
            assert_eq!(finished(out).await.log, ["flaky"]);
            // Backoff doubles: 5 ms then 10 ms.
            assert!(started.elapsed() >= Duration::from_millis(15));
        } else {
            assert!(
                matches!(out, Err(GraphError::Node { ref node, .. }) if node == "flaky"),
                "{out:?}"
            );
        }
        assert_eq!(calls.load(SeqCst), attempts as usize);
    }
}

#[tokio::test]
async fn recursion_limit_stops_an_endless_loop() {
    let calls = Arc::new(AtomicUsize::new(0));
    let mut g = StateGraph::<St>::new();
    g.add_node("spin", node("spin", calls.clone(), 0));
    g.add_conditional_edges("spin", |_: &St| "spin".to_string());
    g.set_entry_point("spin");
    let app = g.compile(CompileConfig::default()).unwrap();
    let out = app
        .invoke(
            St::default(),
            RunConfig::execution_id("spin").recursion_limit(10),
        )
        .await;
    assert!(
        matches!(out, Err(GraphError::RecursionLimit { limit: 10 })),
        "{out:?}"
    );
    assert_eq!(calls.load(SeqCst), 10);
}

#[tokio::test]
async fn without_checkpointer_runs_in_memory() {
    let calls = counters(3);
    let app = linear(3, &calls, None)
        .compile(CompileConfig::default())
        .unwrap();
    let s = finished(
        app.invoke(St::default(), RunConfig::execution_id("mem"))
            .await,
    )
    .await;
    assert_eq!(s, expected(3));
    let id = CheckpointId::new("mem", 1).unwrap();
    assert!(matches!(
        app.resume("mem", &id).await,
        Err(GraphError::NoCheckpointer)
    ));
    assert!(matches!(
        app.resume_latest("mem").await,
        Err(GraphError::NoCheckpointer)
    ));
    assert!(matches!(
        app.update_state(&id, St::default()).await,
        Err(GraphError::NoCheckpointer)
    ));
}

#[tokio::test]
async fn conditional_edge_to_unknown_node_is_an_error() {
    let mut g = StateGraph::<St>::new();
    g.add_node("a", node("a", Arc::new(AtomicUsize::new(0)), 0));
    g.add_conditional_edges("a", |_: &St| "elsewhere".to_string());
    g.set_entry_point("a");
    let app = g.compile(CompileConfig::default()).unwrap();
    let out = app
        .invoke(St::default(), RunConfig::execution_id("route"))
        .await;
    assert!(
        matches!(&out, Err(GraphError::InvalidRoute { from, to }) if from == "a" && to == "elsewhere"),
        "{out:?}"
    );
}

#[tokio::test]
async fn resume_latest_without_checkpoints_is_an_error() {
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    let calls = counters(1);
    let app = linear(1, &calls, None).compile(with_store(&store)).unwrap();
    assert!(matches!(
        app.resume_latest("none").await,
        Err(GraphError::NoCheckpoint(e)) if e == "none"
    ));
}

/// A checkpointer whose saves always fail.
struct FailingStore;

#[async_trait]
impl CheckpointStore for FailingStore {
    async fn save(&self, _: Checkpoint) -> ckpt::Result<Checkpoint> {
        Err(ckpt::Error::Backend {
            backend: "failing",
            context: "saving".into(),
            source: "disk on fire".into(),
        })
    }
    async fn save_with_parent(&self, cp: Checkpoint, _: &CheckpointId) -> ckpt::Result<Checkpoint> {
        self.save(cp).await
    }
    async fn load(&self, id: &CheckpointId) -> ckpt::Result<Checkpoint> {
        Err(ckpt::Error::NotFound {
            what: id.to_string(),
        })
    }
    async fn list(&self, _: &str) -> ckpt::Result<Vec<Checkpoint>> {
        Ok(Vec::new())
    }
    async fn delete(&self, id: &CheckpointId) -> ckpt::Result<()> {
        Err(ckpt::Error::NotFound {
            what: id.to_string(),
        })
    }
    async fn clear(&self, _: &str) -> ckpt::Result<()> {
        Ok(())
    }
    async fn put_writes(
        &self,
        _: &CheckpointId,
        _: Vec<ckpt::Write>,
    ) -> ckpt::Result<Vec<ckpt::Write>> {
        Err(ckpt::Error::Backend {
            backend: "failing",
            context: "writing".into(),
            source: "disk on fire".into(),
        })
    }
    async fn writes(&self, id: &CheckpointId) -> ckpt::Result<Vec<ckpt::Write>> {
        Err(ckpt::Error::NotFound {
            what: id.to_string(),
        })
    }
    async fn children(&self, id: &CheckpointId) -> ckpt::Result<Vec<ckpt::CheckpointHeader>> {
        Err(ckpt::Error::NotFound {
            what: id.to_string(),
        })
    }
    async fn fork(&self, id: &CheckpointId, _: &str) -> ckpt::Result<Checkpoint> {
        Err(ckpt::Error::NotFound {
            what: id.to_string(),
        })
    }
}

#[tokio::test]
async fn failing_checkpointer_stops_the_run() {
    let store: Arc<dyn CheckpointStore> = Arc::new(FailingStore);
    let calls = counters(3);
    let app = linear(3, &calls, None).compile(with_store(&store)).unwrap();
    let out = app
        .invoke(St::default(), RunConfig::execution_id("fail"))
        .await;
    match out {
        Err(GraphError::Store(e)) => assert!(e.to_string().contains("failing")),
        other => panic!("expected a store error, got {other:?}"),
    }
    // The input's save failed: no node ran.
    assert_eq!(counts(&calls), [0, 0, 0]);

    // Streaming reports the error as the last item.
    let events: Vec<_> = app
        .stream(St::default(), RunConfig::execution_id("fail"))
        .collect()
        .await;
    assert!(matches!(events.last(), Some(Err(GraphError::Store(_)))));
    assert!(!events
        .iter()
        .any(|e| matches!(e, Ok(GraphEvent::CheckpointSaved { .. }))));
}

#[tokio::test]
async fn sled_state_survives_reopening() {
    let dir = TempDir::new().unwrap();
    let path = dir.path().to_str().unwrap().to_owned();
    let calls = counters(6);
    {
        let store: Arc<dyn CheckpointStore> = Arc::new(Store::open(&path).await.unwrap());
        let app = linear(6, &calls, Some(3))
            .compile(with_store(&store))
            .unwrap();
        assert!(app
            .invoke(St::default(), RunConfig::execution_id("reopen"))
            .await
            .is_err());
    }
    // A new process (a new store on the same directory) recovers the run.
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::open(&path).await.unwrap());
    let app = linear(6, &calls, Some(3))
        .compile(with_store(&store))
        .unwrap();
    let s = finished(app.resume_latest("reopen").await).await;
    assert_eq!(s, expected(6));
    assert_eq!(counts(&calls), [1, 1, 1, 2, 1, 1]);
}
