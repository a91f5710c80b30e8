//! Durability modes ([`Durability`]) and fencing ([`GraphError::Conflict`]) of the graph runtime,
//! on the memory and sled stores: async mode saves what sync mode saves, a failed background
//! save fails the run, exit mode saves only where the run ended (and resumes from there), steps
//! that record to their base find it saved in every mode, and two workers that run the same
//! execution at once cannot interleave: one finishes, the other gets `Conflict` and stops.
//! (Two OS processes on SQLite and PostgreSQL: `tests/graph_fencing.rs`.)
#![cfg(all(feature = "graph", feature = "sled"))]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ckpt::graph::{
    Command, CompileConfig, CompiledGraph, Durability, GraphError, GraphEvent, NodeContext,
    Outcome, RunConfig, StateGraph, END, INPUT,
};
use ckpt::{Checkpoint, CheckpointId, CheckpointStore};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const MODES: [Durability; 3] = [Durability::Sync, Durability::Async, Durability::Exit];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    n: u32,
    log: Vec<String>,
}

/// Runs each scenario on a memory store and on a sled store in a temporary directory.
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store: std::sync::Arc<dyn ckpt::CheckpointStore> =
                        std::sync::Arc::new(ckpt::Store::memory());
                    super::$name(store).await;
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::TempDir::new().expect("temp dir");
                    let store = ckpt::Store::open(dir.path().to_str().expect("utf-8 path"))
                        .await
                        .expect("open sled");
                    let store: std::sync::Arc<dyn ckpt::CheckpointStore> =
                        std::sync::Arc::new(store);
                    super::$name(store).await;
                }
            )*
        }
    };
}

on_both_stores!(
    async_saves_what_sync_saves,
    async_reports_each_save_once_it_landed,
    a_failed_background_save_fails_the_run,
    exit_saves_only_where_the_run_finished,
    exit_saves_where_the_run_failed_and_resumes_there,
    exit_saves_where_the_run_paused,
    recording_steps_attach_to_saved_bases_in_every_mode,
    two_workers_resuming_one_execution_cannot_interleave,
    two_workers_starting_one_execution_cannot_interleave,
    update_state_stops_a_running_worker,
    the_trait_default_refuses_a_stale_save,
);

fn push(s: &mut St, what: &str) {
    s.n += 1;
    s.log.push(what.to_owned());
}

/// plain `a` -> `tools` (a context node: one journaled task) -> fan-out {b1, b2} from `tools`,
/// joined at `c` -> `c` loops back to `a` until n >= 12, then END. Every kind of step: plain,
/// recording (tasks, branch results), joins.
fn mixed(store: &Arc<dyn CheckpointStore>, effects: Arc<AtomicUsize>) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node("a", |mut s: St| async move {
        push(&mut s, "a");
        Ok::<_, std::io::Error>(s)
    });
    g.add_node_with_context("tools", move |mut s: St, ctx: NodeContext| {
        let effects = effects.clone();
        async move {
            let n = s.n;
            let got: u32 = ctx
                .task("double", async move {
                    effects.fetch_add(1, SeqCst);
                    Ok::<_, std::io::Error>(n * 2)
                })
                .await?;
            push(&mut s, &format!("tools:{got}"));
            Ok::<_, ckpt::BoxError>(s)
        }
    });
    for b in ["b1", "b2"] {
        g.add_node(b, move |mut s: St| async move {
            push(&mut s, b);
            Ok::<_, std::io::Error>(s)
        });
    }
    g.add_node("c", |mut s: St| async move {
        push(&mut s, "c");
        Ok::<_, std::io::Error>(s)
    });
    g.add_edge("a", "tools");
    g.add_fan_out("tools", ["b1", "b2"], "c", |mut base: St, results| {
        for (_, r) in results {
            base.n = base.n.max(r.n);
            base.log.push(r.log.last().cloned().unwrap_or_default());
        }
        base
    });
    g.add_conditional_edges(
        "c",
        |s: &St| {
            if s.n >= 12 {
                END.into()
            } else {
                "a".into()
            }
        },
    );
    g.set_entry_point("a");
    g.compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap()
}

/// What a checkpoint holds that must not depend on the durability mode: node, state, metadata,
/// and its parent as a position in the list (`None`: no parent).
fn shape(cps: &[Checkpoint]) -> Vec<(String, St, serde_json::Value, Option<usize>)> {
    cps.iter()
        .map(|c| {
            let parent = c
                .parent
                .as_ref()
                .map(|p| cps.iter().position(|o| &o.id == p).expect("parent listed"));
            // Each run has its own id; everything else must match.
            let mut metadata = c.metadata.clone();
            assert!(
                metadata.remove("run_id").is_some(),
                "a run's checkpoint names it"
            );
            (
                c.node_name.clone(),
                c.state().unwrap(),
                serde_json::to_value(&metadata).unwrap(),
                parent,
            )
        })
        .collect()
}

/// Each checkpoint (but the first) is a child of the one before it: one unbranched log.
fn assert_linear(cps: &[Checkpoint], what: &str) {
    for w in cps.windows(2) {
        assert_eq!(
            w[1].parent.as_ref(),
            Some(&w[0].id),
            "{what}: {} is not a child of {}: {:?}",
            w[1].id,
            w[0].id,
            cps.iter()
                .map(|c| (c.id.to_string(), c.parent.as_ref().map(|p| p.to_string())))
                .collect::<Vec<_>>()
        );
    }
}

async fn async_saves_what_sync_saves(store: Arc<dyn CheckpointStore>) {
    let effects = Arc::new(AtomicUsize::new(0));
    let app = mixed(&store, effects.clone());
    let mut finals = Vec::new();
    for (exec, mode) in [("sync", Durability::Sync), ("async", Durability::Async)] {
        let out = app
            .invoke(
                St::default(),
                RunConfig::execution_id(exec).durability(mode),
            )
            .await
            .unwrap();
        finals.push(out);
    }
    assert_eq!(finals[0], finals[1]);
    assert!(finals[0].is_finished());
    let sync = store.list("sync").await.unwrap();
    let asynced = store.list("async").await.unwrap();
    assert_eq!(sync.len(), 13, "the input and 12 steps");
    assert_eq!(shape(&sync), shape(&asynced));
    assert_linear(&asynced, "async");
    // The journaled task ran once per `tools` step, in each mode, and its results are on the
    // checkpoints its steps started from.
    assert_eq!(effects.load(SeqCst), 6);
    for cps in [&sync, &asynced] {
        let mut journaled = 0;
        for cp in cps.iter() {
            journaled += store
                .writes(&cp.id)
                .await
                .unwrap()
                .iter()
                .filter(|w| w.channel == "__journal__")
                .count();
        }
        assert_eq!(journaled, 3);
    }
}

async fn async_reports_each_save_once_it_landed(store: Arc<dyn CheckpointStore>) {
    let app = mixed(&store, Arc::new(AtomicUsize::new(0)));
    let events: Vec<_> = app
        .stream(
            St::default(),
            RunConfig::execution_id("events").durability(Durability::Async),
        )
        .collect()
        .await;
    let saved: Vec<CheckpointId> = events
        .iter()
        .filter_map(|e| match e {
            Ok(GraphEvent::CheckpointSaved { id, .. }) => Some(id.clone()),
            _ => None,
        })
        .collect();
    let listed: Vec<CheckpointId> = store
        .list("events")
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.id)
        .collect();
    assert_eq!(saved, listed, "every save reported once, in order");
    assert!(
        matches!(events.last(), Some(Ok(GraphEvent::Finished { .. }))),
        "{:?}",
        events.last()
    );
    let last_saved = events
        .iter()
        .rposition(|e| matches!(e, Ok(GraphEvent::CheckpointSaved { .. })))
        .unwrap();
    assert_eq!(
        last_saved,
        events.len() - 2,
        "Finished waits for the last save"
    );
}

/// Forwards to a store, but every save after the first `ok` fails.
struct FailAfter {
    inner: Arc<dyn CheckpointStore>,
    ok: AtomicUsize,
}

impl FailAfter {
    fn allow(&self) -> ckpt::Result<()> {
        let left = self.ok.load(SeqCst);
        if left == 0 {
            return Err(ckpt::Error::Backend {
                backend: "failing",
                context: "saving".into(),
                source: "disk on fire".into(),
            });
        }
        self.ok.store(left - 1, SeqCst);
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for FailAfter {
    async fn save(&self, cp: Checkpoint) -> ckpt::Result<Checkpoint> {
        self.allow()?;
        self.inner.save(cp).await
    }
    async fn save_with_parent(&self, cp: Checkpoint, p: &CheckpointId) -> ckpt::Result<Checkpoint> {
        self.allow()?;
        self.inner.save_with_parent(cp, p).await
    }
    async fn save_after(
        &self,
        cp: Checkpoint,
        latest: Option<&CheckpointId>,
    ) -> ckpt::Result<Checkpoint> {
        self.allow()?;
        self.inner.save_after(cp, latest).await
    }
    async fn save_with_parent_after(
        &self,
        cp: Checkpoint,
        p: &CheckpointId,
        latest: Option<&CheckpointId>,
    ) -> ckpt::Result<Checkpoint> {
        self.allow()?;
        self.inner.save_with_parent_after(cp, p, latest).await
    }
    async fn load(&self, id: &CheckpointId) -> ckpt::Result<Checkpoint> {
        self.inner.load(id).await
    }
    async fn list(&self, e: &str) -> ckpt::Result<Vec<Checkpoint>> {
        self.inner.list(e).await
    }
    async fn delete(&self, id: &CheckpointId) -> ckpt::Result<()> {
        self.inner.delete(id).await
    }
    async fn clear(&self, e: &str) -> ckpt::Result<()> {
        self.inner.clear(e).await
    }
    async fn latest(&self, e: &str) -> ckpt::Result<Option<Checkpoint>> {
        self.inner.latest(e).await
    }
    async fn put_writes(
        &self,
        id: &CheckpointId,
        w: Vec<ckpt::Write>,
    ) -> ckpt::Result<Vec<ckpt::Write>> {
        self.inner.put_writes(id, w).await
    }
    async fn writes(&self, id: &CheckpointId) -> ckpt::Result<Vec<ckpt::Write>> {
        self.inner.writes(id).await
    }
    async fn children(&self, id: &CheckpointId) -> ckpt::Result<Vec<ckpt::CheckpointHeader>> {
        self.inner.children(id).await
    }
    async fn fork(&self, id: &CheckpointId, e: &str) -> ckpt::Result<Checkpoint> {
        self.inner.fork(id, e).await
    }
}

/// `inc` loops until n >= `until`, counting its calls; each call takes `pause`.
fn counter(
    store: Arc<dyn CheckpointStore>,
    calls: Arc<AtomicUsize>,
    until: u32,
    pause: Duration,
) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node("inc", move |mut s: St| {
        calls.fetch_add(1, SeqCst);
        async move {
            tokio::time::sleep(pause).await;
            push(&mut s, "inc");
            Ok::<_, std::io::Error>(s)
        }
    });
    g.add_conditional_edges("inc", move |s: &St| {
        if s.n >= until {
            END.into()
        } else {
            "inc".into()
        }
    });
    g.set_entry_point("inc");
    g.compile(CompileConfig::default().checkpointer(store))
        .unwrap()
}

async fn a_failed_background_save_fails_the_run(store: Arc<dyn CheckpointStore>) {
    // The input and three steps land; the fourth step's save fails.
    let failing: Arc<dyn CheckpointStore> = Arc::new(FailAfter {
        inner: store.clone(),
        ok: AtomicUsize::new(4),
    });
    let calls = Arc::new(AtomicUsize::new(0));
    let app = counter(failing, calls.clone(), 20, Duration::from_millis(2));
    let out = app
        .invoke(
            St::default(),
            RunConfig::execution_id("fails").durability(Durability::Async),
        )
        .await;
    match &out {
        Err(GraphError::Store(e)) => assert!(e.to_string().contains("failing"), "{e}"),
        other => panic!("expected the save's error, got {other:?}"),
    }
    // The save of step 4 ran alongside step 5, and failed at the boundary after it (or
    // before it, when the failure was already known): no later step ran.
    let ran = calls.load(SeqCst);
    assert!((4..=5).contains(&ran), "{ran} steps ran");
    let cps = store.list("fails").await.unwrap();
    assert_eq!(cps.len(), 4, "the input and the three steps saved before");
    assert_linear(&cps, "fails");
    // Resuming from what landed finishes the run.
    let app = counter(store.clone(), calls.clone(), 20, Duration::ZERO);
    let s = app.resume_latest("fails").await.unwrap();
    assert_eq!(s.state().n, 20);
}

async fn exit_saves_only_where_the_run_finished(store: Arc<dyn CheckpointStore>) {
    let calls = Arc::new(AtomicUsize::new(0));
    let app = counter(store.clone(), calls.clone(), 5, Duration::ZERO);
    let out = app
        .invoke(
            St::default(),
            RunConfig::execution_id("exit").durability(Durability::Exit),
        )
        .await
        .unwrap();
    assert_eq!(out.state().n, 5);
    let cps = store.list("exit").await.unwrap();
    assert_eq!(cps.len(), 1, "only where the run ended");
    assert_eq!(cps[0].node_name, "inc");
    assert_eq!(cps[0].metadata["step"], 5);
    assert_eq!(cps[0].metadata["next"], serde_json::json!([]));
    assert_eq!(cps[0].parent, None);
    assert_eq!(cps[0].state::<St>().unwrap(), *out.state());
    // It is a finished execution like any other.
    let again = app.resume_latest("exit").await.unwrap();
    assert_eq!(again, out);
    assert_eq!(calls.load(SeqCst), 5);

    // A run that continues an execution saves one checkpoint, a child of where it started.
    let app = counter(store.clone(), calls.clone(), 8, Duration::ZERO);
    let sync_run = app
        .invoke(
            St::default(),
            RunConfig::execution_id("exit-2").recursion_limit(3),
        )
        .await;
    assert!(matches!(sync_run, Err(GraphError::RecursionLimit { .. })));
    let before = store.list("exit-2").await.unwrap();
    assert_eq!(before.len(), 4);
    let out = app
        .invoke(
            St::default(),
            RunConfig::execution_id("exit-2").durability(Durability::Exit),
        )
        .await
        .unwrap();
    assert_eq!(out.state().n, 8);
    let after = store.list("exit-2").await.unwrap();
    assert_eq!(after.len(), 5);
    assert_eq!(after[4].parent.as_ref(), Some(&before[3].id));
    assert_eq!(after[4].metadata["step"], 8);
}

async fn exit_saves_where_the_run_failed_and_resumes_there(store: Arc<dyn CheckpointStore>) {
    // `inc` fails on its fourth call, once.
    let calls = Arc::new(AtomicUsize::new(0));
    let mut g = StateGraph::<St>::new();
    let c = calls.clone();
    g.add_node("inc", move |mut s: St| {
        let call = c.fetch_add(1, SeqCst);
        async move {
            if call == 3 {
                return Err(std::io::Error::other("flaky"));
            }
            push(&mut s, "inc");
            Ok(s)
        }
    });
    g.add_conditional_edges(
        "inc",
        |s: &St| {
            if s.n >= 6 {
                END.into()
            } else {
                "inc".into()
            }
        },
    );
    g.set_entry_point("inc");
    let app = g
        .compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap();
    let config = RunConfig::execution_id("exit-fail").durability(Durability::Exit);
    let out = app.invoke(St::default(), config.clone()).await;
    assert!(matches!(out, Err(GraphError::Node { .. })), "{out:?}");
    let cps = store.list("exit-fail").await.unwrap();
    assert_eq!(cps.len(), 1, "where the run stopped, only");
    assert_eq!(cps[0].state::<St>().unwrap().n, 3);
    assert_eq!(cps[0].metadata["next"], serde_json::json!(["inc"]));
    // Invoking it again continues from there: the three steps do not run again.
    let out = app.invoke(St::default(), config).await.unwrap();
    assert_eq!(out.state().n, 6);
    assert_eq!(calls.load(SeqCst), 7, "3 + the failed call + 3");
    let cps = store.list("exit-fail").await.unwrap();
    assert_eq!(cps.len(), 2);
    assert_eq!(cps[1].parent.as_ref(), Some(&cps[0].id));
}

async fn exit_saves_where_the_run_paused(store: Arc<dyn CheckpointStore>) {
    let mut g = StateGraph::<St>::new();
    for (name, next) in [("n1", "n2"), ("n2", "n3"), ("n3", END)] {
        g.add_node(name, move |mut s: St| async move {
            push(&mut s, name);
            Ok::<_, std::io::Error>(s)
        });
        g.add_edge(name, next);
    }
    g.set_entry_point("n1");
    let app = g
        .compile(
            CompileConfig::default()
                .checkpointer(store.clone())
                .interrupt_before(["n3"]),
        )
        .unwrap();
    let config = RunConfig::execution_id("exit-pause").durability(Durability::Exit);
    let out = app.invoke(St::default(), config.clone()).await.unwrap();
    let Outcome::Interrupted {
        checkpoint, next, ..
    } = &out
    else {
        panic!("not paused: {out:?}");
    };
    assert_eq!(next, &["n3"]);
    let cps = store.list("exit-pause").await.unwrap();
    assert_eq!(cps.len(), 1);
    assert_eq!(&cps[0].id, checkpoint);
    assert_eq!(cps[0].metadata["interrupted"], true);
    assert_eq!(cps[0].state::<St>().unwrap().log, ["n1", "n2"]);
    let done = app
        .resume_with("exit-pause", checkpoint, config)
        .await
        .unwrap();
    assert_eq!(done.state().log, ["n1", "n2", "n3"]);
    assert_eq!(store.list("exit-pause").await.unwrap().len(), 2);
}

/// plain `p1` -> `ask` (a task, then an interrupt) -> plain `p2` -> END.
fn asking(store: &Arc<dyn CheckpointStore>, effects: Arc<AtomicUsize>) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node("p1", |mut s: St| async move {
        push(&mut s, "p1");
        Ok::<_, std::io::Error>(s)
    });
    g.add_node_with_context("ask", move |mut s: St, ctx: NodeContext| {
        let effects = effects.clone();
        async move {
            let quote: u32 = ctx
                .task("quote", async move {
                    Ok::<_, std::io::Error>(effects.fetch_add(1, SeqCst) as u32 + 40)
                })
                .await?;
            let ok: bool = ctx.interrupt(&quote)?;
            push(&mut s, &format!("ask:{quote}:{ok}"));
            Ok::<_, ckpt::BoxError>(s)
        }
    });
    g.add_node("p2", |mut s: St| async move {
        push(&mut s, "p2");
        Ok::<_, std::io::Error>(s)
    });
    g.add_edge("p1", "ask")
        .add_edge("ask", "p2")
        .add_edge("p2", END);
    g.set_entry_point("p1");
    g.compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap()
}

async fn recording_steps_attach_to_saved_bases_in_every_mode(store: Arc<dyn CheckpointStore>) {
    for mode in MODES {
        let exec = format!("ask-{mode:?}");
        let effects = Arc::new(AtomicUsize::new(0));
        let app = asking(&store, effects.clone());
        let config = RunConfig::execution_id(&exec).durability(mode);
        let out = app.invoke(St::default(), config.clone()).await.unwrap();
        let Outcome::Interrupted {
            checkpoint,
            interrupts,
            ..
        } = &out
        else {
            panic!("{mode:?}: not paused: {out:?}");
        };
        assert_eq!(interrupts.len(), 1, "{mode:?}");
        assert_eq!(interrupts[0].value, 40, "{mode:?}");
        // The interrupted step's base is in the store, with the task's result and the
        // interrupt on it.
        let base = store.load(checkpoint).await.unwrap();
        assert_eq!(base.state::<St>().unwrap().log, ["p1"], "{mode:?}");
        let channels: Vec<String> = store
            .writes(checkpoint)
            .await
            .unwrap()
            .into_iter()
            .map(|w| w.channel)
            .collect();
        assert_eq!(channels, ["__journal__", "__interrupt__"], "{mode:?}");
        assert_eq!(
            store.latest(&exec).await.unwrap().map(|c| c.id).as_ref(),
            Some(checkpoint),
            "{mode:?}: nothing after the pause"
        );
        let done = app
            .resume_with_command_config(config, Command::resume(true))
            .await
            .unwrap();
        assert_eq!(done.state().log, ["p1", "ask:40:true", "p2"], "{mode:?}");
        assert_eq!(effects.load(SeqCst), 1, "{mode:?}: the task ran once");
        let cps = store.list(&exec).await.unwrap();
        let nodes: Vec<&str> = cps.iter().map(|c| c.node_name.as_str()).collect();
        match mode {
            Durability::Exit => assert_eq!(nodes, ["p1", "p2"], "{mode:?}"),
            _ => assert_eq!(nodes, [INPUT, "p1", "ask", "p2"], "{mode:?}"),
        }
        assert_linear(&cps, &exec);
    }
}

/// `inc` loops until n >= 8; its first call by each of two workers waits (up to 5 s) until
/// both are inside it, so both are mid-step on the same base when one of them saves.
fn racing(store: Arc<dyn CheckpointStore>, gate: Arc<tokio::sync::Barrier>) -> CompiledGraph<St> {
    let first = Arc::new(AtomicUsize::new(0));
    let mut g = StateGraph::<St>::new();
    g.add_node("inc", move |mut s: St| {
        let gate = gate.clone();
        let waits = first.fetch_add(1, SeqCst) == 0;
        async move {
            if waits {
                let _ = tokio::time::timeout(Duration::from_secs(5), gate.wait()).await;
            }
            push(&mut s, "inc");
            Ok::<_, std::io::Error>(s)
        }
    });
    g.add_conditional_edges(
        "inc",
        |s: &St| {
            if s.n >= 8 {
                END.into()
            } else {
                "inc".into()
            }
        },
    );
    g.set_entry_point("inc");
    g.compile(CompileConfig::default().checkpointer(store))
        .unwrap()
}

/// Exactly one of two outcomes finished; the other is a Conflict on `exec` that explains
/// itself.
fn one_winner(exec: &str, a: Result<Outcome<St>, GraphError>, b: Result<Outcome<St>, GraphError>) {
    let what = format!("{exec}: {a:?} / {b:?}");
    let (won, lost) = match (a, b) {
        (Ok(w), Err(l)) | (Err(l), Ok(w)) => (w, l),
        _ => panic!("{what}: expected one winner and one conflict"),
    };
    assert!(won.is_finished(), "{what}");
    assert_eq!(won.state().n, 8, "{what}");
    match &lost {
        GraphError::Conflict {
            execution_id,
            found,
            ..
        } => {
            assert_eq!(execution_id, exec, "{what}");
            assert!(found.is_some(), "{what}");
        }
        other => panic!("{what}: the loser's error is not a conflict: {other}"),
    }
    let msg = lost.to_string();
    assert!(
        msg.contains("another worker") && msg.contains("resume"),
        "{msg}"
    );
}

async fn two_workers_resuming_one_execution_cannot_interleave(store: Arc<dyn CheckpointStore>) {
    for mode in MODES {
        let exec = format!("race-{mode:?}");
        // Two steps, then a stop: the execution both workers resume.
        let warmup = counter(store.clone(), Arc::default(), 8, Duration::ZERO);
        let stopped = warmup
            .invoke(
                St::default(),
                RunConfig::execution_id(&exec).recursion_limit(2),
            )
            .await;
        assert!(matches!(stopped, Err(GraphError::RecursionLimit { .. })));
        let gate = Arc::new(tokio::sync::Barrier::new(2));
        let workers = [0, 1].map(|_| {
            let app = racing(store.clone(), gate.clone());
            let config = RunConfig::execution_id(&exec).durability(mode);
            tokio::spawn(async move { app.invoke(St::default(), config).await })
        });
        let [a, b] = workers;
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        one_winner(&exec, a, b);
        let cps = store.list(&exec).await.unwrap();
        assert_linear(&cps, &exec);
        let last: St = cps.last().unwrap().state().unwrap();
        assert_eq!(last.n, 8, "{mode:?}");
        assert_eq!(last.log.len(), 8, "{mode:?}: {last:?}");
        let expected = match mode {
            Durability::Exit => 4,
            _ => 9,
        };
        assert_eq!(cps.len(), expected, "{mode:?}: the loser saved nothing");
    }
}

async fn two_workers_starting_one_execution_cannot_interleave(store: Arc<dyn CheckpointStore>) {
    for mode in MODES {
        let exec = format!("fresh-race-{mode:?}");
        let gate = Arc::new(tokio::sync::Barrier::new(2));
        let workers = [0, 1].map(|_| {
            let app = racing(store.clone(), gate.clone());
            let config = RunConfig::execution_id(&exec).durability(mode);
            tokio::spawn(async move { app.invoke(St::default(), config).await })
        });
        let [a, b] = workers;
        let (a, b) = (a.await.unwrap(), b.await.unwrap());
        one_winner(&exec, a, b);
        let cps = store.list(&exec).await.unwrap();
        assert_linear(&cps, &exec);
        assert_eq!(cps.last().unwrap().state::<St>().unwrap().log.len(), 8);
        let expected = match mode {
            Durability::Exit => 1,
            _ => 9,
        };
        assert_eq!(cps.len(), expected, "{mode:?}");
    }
}

async fn update_state_stops_a_running_worker(store: Arc<dyn CheckpointStore>) {
    for mode in [Durability::Sync, Durability::Async] {
        let exec = format!("edit-{mode:?}");
        let calls = Arc::new(AtomicUsize::new(0));
        let app = counter(store.clone(), calls.clone(), 50, Duration::from_millis(20));
        let run = {
            let app = app.clone();
            let config = RunConfig::execution_id(&exec).durability(mode);
            tokio::spawn(async move { app.invoke(St::default(), config).await })
        };
        // Wait for a few steps, then edit the latest checkpoint under the running worker.
        let latest = loop {
            tokio::time::sleep(Duration::from_millis(10)).await;
            let cps = store.list(&exec).await.unwrap();
            if cps.len() >= 3 {
                break cps.last().unwrap().clone();
            }
        };
        let mut edited: St = latest.state().unwrap();
        edited.log.push("edited".into());
        // The worker may save between this call's read of the latest and its save: then the
        // edit is the one refused, and is tried again.
        let update = loop {
            match app.update_state(&latest.id, edited.clone()).await {
                Ok(id) => break id,
                Err(GraphError::Conflict { .. }) => continue,
                Err(e) => panic!("{mode:?}: update_state: {e}"),
            }
        };
        let out = run.await.unwrap();
        assert!(
            matches!(&out, Err(GraphError::Conflict { found: Some(f), .. }) if *f == update),
            "{mode:?}: {out:?}"
        );
        // The edit is the latest: resuming continues from it.
        let cps = store.list(&exec).await.unwrap();
        assert_eq!(
            cps.last().unwrap().id,
            update,
            "{mode:?}: the worker saved after"
        );
        let done = app.resume_latest(&exec).await.unwrap();
        assert_eq!(done.state().n, 50);
        assert!(done.state().log.contains(&"edited".to_string()));
    }
}

/// A `CheckpointStore` that implements only what the trait requires: the fenced saves are the
/// trait's defaults (check the latest, then save).
struct Plain(Arc<dyn CheckpointStore>);

#[async_trait]
impl CheckpointStore for Plain {
    async fn save(&self, cp: Checkpoint) -> ckpt::Result<Checkpoint> {
        self.0.save(cp).await
    }
    async fn save_with_parent(&self, cp: Checkpoint, p: &CheckpointId) -> ckpt::Result<Checkpoint> {
        self.0.save_with_parent(cp, p).await
    }
    async fn load(&self, id: &CheckpointId) -> ckpt::Result<Checkpoint> {
        self.0.load(id).await
    }
    async fn list(&self, e: &str) -> ckpt::Result<Vec<Checkpoint>> {
        self.0.list(e).await
    }
    async fn delete(&self, id: &CheckpointId) -> ckpt::Result<()> {
        self.0.delete(id).await
    }
    async fn clear(&self, e: &str) -> ckpt::Result<()> {
        self.0.clear(e).await
    }
    async fn put_writes(
        &self,
        id: &CheckpointId,
        w: Vec<ckpt::Write>,
    ) -> ckpt::Result<Vec<ckpt::Write>> {
        self.0.put_writes(id, w).await
    }
    async fn writes(&self, id: &CheckpointId) -> ckpt::Result<Vec<ckpt::Write>> {
        self.0.writes(id).await
    }
    async fn children(&self, id: &CheckpointId) -> ckpt::Result<Vec<ckpt::CheckpointHeader>> {
        self.0.children(id).await
    }
    async fn fork(&self, id: &CheckpointId, e: &str) -> ckpt::Result<Checkpoint> {
        self.0.fork(id, e).await
    }
}

async fn the_trait_default_refuses_a_stale_save(store: Arc<dyn CheckpointStore>) {
    let plain: Arc<dyn CheckpointStore> = Arc::new(Plain(store.clone()));
    let calls = Arc::new(AtomicUsize::new(0));
    let app = counter(plain.clone(), calls, 6, Duration::ZERO);
    let stopped = app
        .invoke(
            St::default(),
            RunConfig::execution_id("plain").recursion_limit(2),
        )
        .await;
    assert!(matches!(stopped, Err(GraphError::RecursionLimit { .. })));
    let cps = store.list("plain").await.unwrap();
    assert_eq!(cps.len(), 3);
    assert_linear(&cps, "plain");
    // Another writer moved the execution on since `cps[1]`: refused, nothing written.
    let stale = plain
        .save_after(
            Checkpoint::new("plain", "x", &St::default()).unwrap(),
            Some(&cps[1].id),
        )
        .await;
    assert!(
        stale.as_ref().is_err_and(ckpt::Error::is_conflict),
        "{stale:?}"
    );
    let branch = plain
        .save_with_parent_after(
            Checkpoint::new("plain", "x", &St::default()).unwrap(),
            &cps[0].id,
            None,
        )
        .await;
    assert!(
        branch.as_ref().is_err_and(ckpt::Error::is_conflict),
        "{branch:?}"
    );
    assert_eq!(store.list("plain").await.unwrap().len(), 3);
    // A run through the defaults finishes, unbranched.
    let done = app.resume_latest("plain").await.unwrap();
    assert_eq!(done.state().n, 6);
    assert_linear(&store.list("plain").await.unwrap(), "plain");
}
