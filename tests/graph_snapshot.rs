//! State snapshots (`CompiledGraph::get_state`, `get_state_at`, `get_state_history`): values,
//! next nodes, pending tasks with their results and errors, pending interrupts, the checkpoint,
//! its parent and metadata, on the memory and sled stores.
#![cfg(all(feature = "graph", feature = "sled"))]

use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::Arc;

use ckpt::graph::{
    Command, CompileConfig, GraphError, NodeContext, Outcome, RunConfig, StateGraph, END, INPUT,
};
use ckpt::{CheckpointStore, HistoryQuery, Store};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
struct St {
    log: Vec<String>,
}

fn push(mut s: St, what: &str) -> St {
    s.log.push(what.to_owned());
    s
}

/// Runs `scenario` on a memory store and on a sled store in a scratch directory.
async fn on_each_store<F, Fut>(scenario: F)
where
    F: Fn(Arc<dyn CheckpointStore>) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    scenario(Arc::new(Store::memory())).await;
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled://{}", dir.path().join("store").display());
    scenario(Arc::new(Store::open(&url).await.unwrap())).await;
}

fn chain(store: &Arc<dyn CheckpointStore>) -> ckpt::graph::CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    for (node, next) in [("a", "b"), ("b", "c"), ("c", END)] {
        g.add_node(node, move |s: St| async move {
            Ok::<_, std::io::Error>(push(s, node))
        });
        g.add_edge(node, next);
    }
    g.set_entry_point("a");
    g.compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_run_reads_back_step_by_step() {
    on_each_store(|store| async move {
        let app = chain(&store);
        assert!(app.get_state("run").await.unwrap().is_none());
        app.invoke(St::default(), RunConfig::execution_id("run"))
            .await
            .unwrap();

        let now = app.get_state("run").await.unwrap().unwrap();
        let latest = store.latest("run").await.unwrap().unwrap();
        assert_eq!(now.values.log, ["a", "b", "c"]);
        assert_eq!(now.checkpoint, latest.id);
        assert_eq!(now.parent, latest.parent);
        assert_eq!(now.node, "c");
        assert_eq!(now.metadata, latest.metadata);
        assert_eq!(now.metadata["step"], 3);
        assert_eq!(now.created_at, latest.timestamp);
        assert!(now.next.is_empty() && now.tasks.is_empty() && now.interrupts.is_empty());

        let history = app
            .get_state_history("run", HistoryQuery::default())
            .await
            .unwrap();
        let nodes: Vec<_> = history.iter().map(|s| s.node.as_str()).collect();
        assert_eq!(nodes, ["c", "b", "a", INPUT]);
        let next: Vec<_> = history.iter().map(|s| s.next.clone()).collect();
        assert_eq!(
            next,
            [
                vec![],
                vec!["c".to_owned()],
                vec!["b".to_owned()],
                vec!["a".to_owned()]
            ]
        );
        // Each snapshot's parent is the one after it in the list (one branch, newest first).
        for pair in history.windows(2) {
            assert_eq!(pair[0].parent.as_ref(), Some(&pair[1].checkpoint));
        }
        assert_eq!(history[2].tasks[0].node, "b");
        assert_eq!(history[2].tasks[0].error, None);
        let at = app.get_state_at(&history[1].checkpoint).await.unwrap();
        assert_eq!(at, history[1]);

        // The store's filters.
        let only_b = app
            .get_state_history("run", HistoryQuery::default().node("b"))
            .await
            .unwrap();
        assert_eq!(only_b.len(), 1);
        assert_eq!(only_b[0].values.log, ["a", "b"]);
        let two = app
            .get_state_history("run", HistoryQuery::default().limit(2))
            .await
            .unwrap();
        assert_eq!(two, history[..2]);
        let before = app
            .get_state_history(
                "run",
                HistoryQuery::default().before(history[1].checkpoint.version()),
            )
            .await
            .unwrap();
        assert_eq!(before, history[2..]);
        let step2 = app
            .get_state_history("run", HistoryQuery::default().metadata("step", 2))
            .await
            .unwrap();
        assert_eq!(step2.len(), 1);
        assert_eq!(step2[0].node, "b");
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_node_is_a_pending_task_with_its_error_until_it_succeeds() {
    on_each_store(|store| async move {
        let broken = Arc::new(AtomicBool::new(true));
        let mut g = StateGraph::<St>::new();
        g.add_node("fetch", |s: St| async move {
            Ok::<_, std::io::Error>(push(s, "fetch"))
        });
        let flag = broken.clone();
        g.add_node("parse", move |s: St| {
            let flag = flag.clone();
            async move {
                if flag.load(SeqCst) {
                    return Err(std::io::Error::other("unexpected token at byte 17"));
                }
                Ok(push(s, "parse"))
            }
        });
        g.add_edge("fetch", "parse").add_edge("parse", END);
        g.set_entry_point("fetch");
        let app = g
            .compile(CompileConfig::default().checkpointer(store.clone()))
            .unwrap();
        let err = app
            .invoke(St::default(), RunConfig::execution_id("fails"))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("parse"), "{err}");

        let now = app.get_state("fails").await.unwrap().unwrap();
        assert_eq!(now.node, "fetch");
        assert_eq!(now.next, ["parse"]);
        assert_eq!(now.tasks.len(), 1);
        let task = &now.tasks[0];
        assert_eq!(task.node, "parse");
        assert!(!task.finished);
        let error = task.error.as_deref().expect("the failure is recorded");
        assert!(error.contains("unexpected token at byte 17"), "{error}");
        // Not a checkpoint: the history holds the input and fetch only.
        assert_eq!(store.list("fails").await.unwrap().len(), 2);

        broken.store(false, SeqCst);
        let out = app.resume_latest("fails").await.unwrap();
        assert!(matches!(out, Outcome::Finished(_)));
        let now = app.get_state("fails").await.unwrap().unwrap();
        assert_eq!(now.node, "parse");
        assert!(now.tasks.is_empty());
        // The failed attempt stays in the history, at the checkpoint it started from.
        let history = app
            .get_state_history("fails", HistoryQuery::default().node("fetch"))
            .await
            .unwrap();
        assert!(history[0].tasks[0].error.is_some());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn interrupts_are_pending_on_their_task_until_answered() {
    on_each_store(|store| async move {
        let mut g = StateGraph::<St>::new();
        g.add_node("plan", |s: St| async move {
            Ok::<_, std::io::Error>(push(s, "plan"))
        });
        g.add_node_with_context("approve", |s: St, ctx: NodeContext| async move {
            let answer: String = ctx.interrupt("ship it?")?;
            Ok::<_, ckpt::BoxError>(push(s, &answer))
        });
        g.add_edge("plan", "approve").add_edge("approve", END);
        g.set_entry_point("plan");
        let app = g
            .compile(CompileConfig::default().checkpointer(store.clone()))
            .unwrap();
        let out = app
            .invoke(St::default(), RunConfig::execution_id("ask"))
            .await
            .unwrap();
        assert!(matches!(out, Outcome::Interrupted { .. }));

        let now = app.get_state("ask").await.unwrap().unwrap();
        assert_eq!(now.next, ["approve"]);
        assert_eq!(now.interrupts.len(), 1);
        assert_eq!(now.interrupts[0].value, serde_json::json!("ship it?"));
        assert_eq!(now.tasks[0].node, "approve");
        assert_eq!(now.tasks[0].interrupts, now.interrupts);
        assert_eq!(now.tasks[0].error, None);

        app.resume_with_command("ask", Command::resume("yes"))
            .await
            .unwrap();
        let now = app.get_state("ask").await.unwrap().unwrap();
        assert_eq!(now.values.log, ["plan", "yes"]);
        assert!(now.interrupts.is_empty() && now.next.is_empty());
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_step_shows_which_branches_finished_and_which_failed() {
    on_each_store(|store| async move {
        let mut g = StateGraph::<St>::new();
        g.add_node("start", |s: St| async move {
            Ok::<_, std::io::Error>(push(s, "start"))
        });
        g.add_node("good", |s: St| async move {
            Ok::<_, std::io::Error>(push(s, "good"))
        });
        g.add_node("bad", |_: St| async move {
            Err::<St, _>(std::io::Error::other("the bad branch broke"))
        });
        g.add_node("done", |s: St| async move {
            Ok::<_, std::io::Error>(push(s, "done"))
        });
        g.add_fan_out("start", ["good", "bad"], "done", |s: St, results| {
            let mut s = s;
            for (_, r) in results {
                s.log.extend(r.log);
            }
            s
        })
        .add_edge("done", END)
        .set_entry_point("start");
        let app = g
            .compile(CompileConfig::default().checkpointer(store.clone()))
            .unwrap();
        app.invoke(St::default(), RunConfig::execution_id("fan"))
            .await
            .unwrap_err();
        let now = app.get_state("fan").await.unwrap().unwrap();
        assert_eq!(now.node, "start");
        assert_eq!(now.next, ["good", "bad"]);
        let good = &now.tasks[0];
        let bad = &now.tasks[1];
        assert_eq!((good.node.as_str(), good.finished), ("good", true));
        assert_eq!(good.error, None);
        assert_eq!((bad.node.as_str(), bad.finished), ("bad", false));
        assert!(
            bad.error
                .as_deref()
                .unwrap_or("")
                .contains("the bad branch broke"),
            "{bad:?}"
        );
    })
    .await;
}

/// In every durability mode the failed step's base is stored before its error is recorded on
/// it: the snapshot shows the error whether saves were in the background or held to the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_is_recorded_in_every_durability_mode() {
    use ckpt::graph::Durability;
    on_each_store(|store| async move {
        for (i, mode) in [Durability::Sync, Durability::Async, Durability::Exit]
            .into_iter()
            .enumerate()
        {
            let mut g = StateGraph::<St>::new();
            g.add_node(
                "a",
                |s: St| async move { Ok::<_, std::io::Error>(push(s, "a")) },
            );
            g.add_node("b", |_: St| async move {
                Err::<St, _>(std::io::Error::other("b is broken"))
            });
            g.add_edge("a", "b").add_edge("b", END).set_entry_point("a");
            let app = g
                .compile(CompileConfig::default().checkpointer(store.clone()))
                .unwrap();
            let exec = format!("mode-{i}");
            app.invoke(
                St::default(),
                RunConfig::execution_id(exec.as_str()).durability(mode),
            )
            .await
            .unwrap_err();
            let now = app.get_state(&exec).await.unwrap().unwrap();
            assert_eq!(now.values.log, ["a"], "{mode:?}");
            assert_eq!(now.next, ["b"], "{mode:?}");
            let error = now.tasks[0].error.as_deref().unwrap_or("");
            assert!(error.contains("b is broken"), "{mode:?}: {:?}", now.tasks);
        }
    })
    .await;
}

#[tokio::test]
async fn without_a_checkpointer_there_is_no_state_to_read() {
    let mut g = StateGraph::<St>::new();
    g.add_node("a", |s: St| async move { Ok::<_, std::io::Error>(s) });
    g.add_edge("a", END).set_entry_point("a");
    let app = g.compile(CompileConfig::default()).unwrap();
    assert!(matches!(
        app.get_state("x").await,
        Err(GraphError::NoCheckpointer)
    ));
}
