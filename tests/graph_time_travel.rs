//! Time travel in the graph runtime (issue 14): interrupts with values, journaled tasks, and
//! replay with divergence reports, on the memory store and on sled.

#![cfg(all(feature = "graph", feature = "sled"))]

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use ckpt::graph::{
    replay_regression, Command, CompileConfig, CompiledGraph, GraphError, NodeContext, Outcome,
    ReplayMode, ReplayOptions, RetryPolicy, RunConfig, StateGraph, END,
};
use ckpt::{BoxError, CheckpointStore, Store};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    log: Vec<String>,
    n: i64,
}

macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test]
                async fn $name() {
                    let store = ckpt::Store::memory();
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
                    super::$name(store).await;
                }
            )*
        }
    };
}

on_both_stores!(
    an_interrupt_returns_its_answer_on_resume,
    interrupts_in_one_node_are_answered_in_order,
    parallel_interrupts_are_answered_by_id,
    an_answer_survives_a_crash_after_it_was_given,
    commands_that_do_not_fit_are_refused,
    a_task_runs_once_per_recorded_result,
    a_retried_node_does_not_repeat_its_journaled_tasks,
    journal_entries_are_writes_not_checkpoints,
    a_recorded_replay_is_faithful_and_offline,
    a_replay_reports_the_first_divergence,
    a_live_replay_runs_tasks_again,
    a_recorded_replay_reports_unrecorded_tasks,
    replay_into_a_new_execution,
    a_stored_run_is_a_regression_test,
    a_fan_out_resume_branches_at_its_checkpoint,
);

fn checkpointer(store: &Store) -> Arc<dyn CheckpointStore> {
    Arc::new(store.clone())
}

fn finished(out: Result<Outcome<St>, GraphError>) -> St {
    match out {
        Ok(Outcome::Finished(s)) => s,
        other => panic!("expected Finished, got {other:?}"),
    }
}

/// ask -> END: `ask` asks `questions` in turn and logs each answer.
fn asking_graph(store: &Store, questions: usize, runs: Arc<AtomicUsize>) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node_with_context("ask", move |mut s: St, ctx: NodeContext| {
        let runs = runs.clone();
        async move {
            runs.fetch_add(1, SeqCst);
            for q in 0..questions {
                let answer: String = ctx.interrupt(&format!("question {q}"))?;
                s.log.push(answer);
            }
            Ok::<_, BoxError>(s)
        }
    });
    g.add_edge("ask", END).set_entry_point("ask");
    g.compile(CompileConfig::default().checkpointer(checkpointer(store)))
        .unwrap()
}

async fn an_interrupt_returns_its_answer_on_resume(store: Store) {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = asking_graph(&store, 1, runs.clone());
    let out = app
        .invoke(St::default(), RunConfig::execution_id("ask"))
        .await
        .unwrap();
    let Outcome::Interrupted {
        checkpoint,
        next,
        interrupts,
        ..
    } = out
    else {
        panic!("expected an interrupt, got {out:?}");
    };
    assert_eq!(next, ["ask"]);
    assert_eq!(interrupts.len(), 1);
    assert_eq!(interrupts[0].node, "ask");
    assert_eq!(interrupts[0].value, "question 0");
    assert_eq!(checkpoint.version(), 1, "the run's input checkpoint");
    assert_eq!(app.pending_interrupts("ask").await.unwrap(), interrupts);
    // Invoking again without an answer asks again, with the same id, and writes nothing new.
    let again = app
        .invoke(St::default(), RunConfig::execution_id("ask"))
        .await
        .unwrap();
    let Outcome::Interrupted { interrupts: i2, .. } = again else {
        panic!("expected an interrupt again");
    };
    assert_eq!(i2, interrupts);
    assert_eq!(store.writes(&checkpoint).await.unwrap().len(), 1);

    let s = finished(app.resume_with_command("ask", Command::resume("yes")).await);
    assert_eq!(s.log, ["yes"]);
    assert_eq!(runs.load(SeqCst), 3);
    assert!(app.pending_interrupts("ask").await.unwrap().is_empty());
    // The interrupt and its answer are writes of the input checkpoint, not checkpoints.
    let writes = store.writes(&checkpoint).await.unwrap();
    let channels: Vec<&str> = writes.iter().map(|w| w.channel.as_str()).collect();
    assert_eq!(channels, ["__interrupt__", "__resume__"]);
    assert_eq!(store.list("ask").await.unwrap().len(), 2, "input and ask");
}

async fn interrupts_in_one_node_are_answered_in_order(store: Store) {
    let runs = Arc::new(AtomicUsize::new(0));
    let app = asking_graph(&store, 3, runs.clone());
    let mut out = app
        .invoke(St::default(), RunConfig::execution_id("three"))
        .await
        .unwrap();
    let mut asked = Vec::new();
    for answer in ["a", "b", "c"] {
        let Outcome::Interrupted { interrupts, .. } = out else {
            panic!("expected an interrupt, got {out:?}");
        };
        assert_eq!(interrupts.len(), 1, "one question at a time");
        asked.push(interrupts[0].value.clone());
        out = app
            .resume_with_command("three", Command::resume(answer))
            .await
            .unwrap();
    }
    assert_eq!(asked, ["question 0", "question 1", "question 2"]);
    assert_eq!(finished(Ok(out)).log, ["a", "b", "c"]);
    assert_eq!(runs.load(SeqCst), 4);
}

/// start -> (left | right) -> join -> END, where both branches ask.
fn parallel_asking(store: &Store) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node("start", |s: St| async move { Ok::<_, BoxError>(s) });
    for side in ["left", "right"] {
        g.add_node_with_context(side, move |mut s: St, ctx: NodeContext| async move {
            let answer: i64 = ctx.interrupt(&format!("{side}?"))?;
            s.n += answer;
            s.log.push(side.to_owned());
            Ok::<_, BoxError>(s)
        });
    }
    g.add_node("join", |s: St| async move { Ok::<_, BoxError>(s) });
    g.add_fan_out("start", ["left", "right"], "join", |base: St, results| {
        let mut out = base;
        for (_, r) in results {
            out.n += r.n;
            out.log.extend(r.log);
        }
        out
    })
    .add_edge("join", END)
    .set_entry_point("start");
    g.compile(CompileConfig::default().checkpointer(checkpointer(store)))
        .unwrap()
}

async fn parallel_interrupts_are_answered_by_id(store: Store) {
    let app = parallel_asking(&store);
    let out = app
        .invoke(St::default(), RunConfig::execution_id("par"))
        .await
        .unwrap();
    let Outcome::Interrupted {
        interrupts, next, ..
    } = out
    else {
        panic!("expected interrupts, got {out:?}");
    };
    assert_eq!(next, ["left", "right"]);
    let by_node: BTreeMap<&str, &str> = interrupts
        .iter()
        .map(|i| (i.node.as_str(), i.id.as_str()))
        .collect();
    assert_eq!(by_node.len(), 2);
    // One answer for two questions is refused.
    let err = app
        .resume_with_command("par", Command::resume(1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GraphError::InvalidCommand { reason, .. } if reason.contains("by id")),
        "{err}"
    );
    // Answer only the left one: the right one is still pending; the left branch's result is
    // recorded and does not run again.
    let out = app
        .resume_with_command("par", Command::resume_by_id(by_node["left"], 10))
        .await
        .unwrap();
    let Outcome::Interrupted { interrupts, .. } = out else {
        panic!("expected the right interrupt still pending, got {out:?}");
    };
    assert_eq!(interrupts.len(), 1);
    assert_eq!(interrupts[0].node, "right");
    let s = finished(
        app.resume_with_command("par", Command::resume_by_id(by_node["right"], 5))
            .await,
    );
    assert_eq!(s.n, 15, "left 10 + right 5");
    assert_eq!(s.log, ["left", "right"]);
}

async fn an_answer_survives_a_crash_after_it_was_given(store: Store) {
    // The node fails after reading its answer (the process "crashed" before finishing the step).
    let fail_once = Arc::new(AtomicUsize::new(0));
    let build = |fail: Arc<AtomicUsize>| {
        let mut g = StateGraph::<St>::new();
        g.add_node_with_context("ask", move |mut s: St, ctx: NodeContext| {
            let fail = fail.clone();
            async move {
                let answer: String = ctx.interrupt(&"go?")?;
                if fail.fetch_add(1, SeqCst) == 0 {
                    return Err::<St, BoxError>("crashed after the answer".into());
                }
                s.log.push(answer);
                Ok(s)
            }
        });
        g.add_edge("ask", END).set_entry_point("ask");
        g.compile(CompileConfig::default().checkpointer(checkpointer(&store)))
            .unwrap()
    };
    let app = build(fail_once.clone());
    app.invoke(St::default(), RunConfig::execution_id("crash"))
        .await
        .unwrap();
    let err = app
        .resume_with_command("crash", Command::resume("answered"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("crashed"), "{err}");
    // A new process (a reopened store, a new graph) finds the answer in the log.
    let store2 = store.reopened();
    let mut g = StateGraph::<St>::new();
    g.add_node_with_context("ask", |mut s: St, ctx: NodeContext| async move {
        let answer: String = ctx.interrupt(&"go?")?;
        s.log.push(answer);
        Ok::<_, BoxError>(s)
    });
    g.add_edge("ask", END).set_entry_point("ask");
    let app2 = g
        .compile(CompileConfig::default().checkpointer(checkpointer(&store2)))
        .unwrap();
    let s = finished(app2.resume_latest("crash").await);
    assert_eq!(s.log, ["answered"]);
}

async fn commands_that_do_not_fit_are_refused(store: Store) {
    let app = asking_graph(&store, 1, Arc::new(AtomicUsize::new(0)));
    let err = app
        .resume_with_command("none", Command::resume(1))
        .await
        .unwrap_err();
    assert!(matches!(err, GraphError::NoCheckpoint(_)), "{err}");
    app.invoke(St::default(), RunConfig::execution_id("fit"))
        .await
        .unwrap();
    let err = app
        .resume_with_command("fit", Command::resume_by_id("not-an-id", 1))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GraphError::InvalidCommand { reason, .. } if reason.contains("not-an-id")),
        "{err}"
    );
    // Nothing was written by the refused command: the interrupt is still pending.
    assert_eq!(app.pending_interrupts("fit").await.unwrap().len(), 1);
    finished(app.resume_with_command("fit", Command::resume("ok")).await);
    let err = app
        .resume_with_command("fit", Command::resume("again"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GraphError::InvalidCommand { reason, .. } if reason.contains("no interrupt")),
        "{err}"
    );
}

/// work -> END: `work` calls tasks "a", "b", "a" (counting runs), then fails while `fail` > 0.
fn task_graph(
    store: &Store,
    effects: Arc<Mutex<Vec<String>>>,
    fail: Arc<AtomicUsize>,
    retry: RetryPolicy,
) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node_with_context_and_retry(
        "work",
        move |mut s: St, ctx: NodeContext| {
            let (effects, fail) = (effects.clone(), fail.clone());
            async move {
                for key in ["a", "b", "a"] {
                    let effects = effects.clone();
                    let idem = ctx.task_key(key);
                    let out: String = ctx
                        .task(key, async move {
                            effects.lock().unwrap().push(format!("{key}:{idem}"));
                            Ok::<_, BoxError>(format!("{key}-result"))
                        })
                        .await?;
                    s.log.push(out);
                }
                if fail.load(SeqCst) > 0 {
                    fail.fetch_sub(1, SeqCst);
                    return Err::<St, BoxError>("failed after the tasks".into());
                }
                Ok(s)
            }
        },
        retry,
    );
    g.add_edge("work", END).set_entry_point("work");
    g.compile(CompileConfig::default().checkpointer(checkpointer(store)))
        .unwrap()
}

async fn a_task_runs_once_per_recorded_result(store: Store) {
    let effects = Arc::new(Mutex::new(Vec::new()));
    let fail = Arc::new(AtomicUsize::new(1));
    let app = task_graph(&store, effects.clone(), fail, RetryPolicy::default());
    let err = app
        .invoke(St::default(), RunConfig::execution_id("tasks"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("failed after the tasks"), "{err}");
    let first: Vec<String> = effects.lock().unwrap().clone();
    assert_eq!(first.len(), 3, "each call ran once: {first:?}");
    // The same key called twice is journaled twice, under different idempotency keys.
    assert_ne!(first[0], first[2]);
    let s = finished(app.resume_latest("tasks").await);
    assert_eq!(s.log, ["a-result", "b-result", "a-result"]);
    assert_eq!(
        *effects.lock().unwrap(),
        first,
        "no task ran again after the node failed"
    );
}

async fn a_retried_node_does_not_repeat_its_journaled_tasks(store: Store) {
    let effects = Arc::new(Mutex::new(Vec::new()));
    let fail = Arc::new(AtomicUsize::new(2));
    let app = task_graph(
        &store,
        effects.clone(),
        fail,
        RetryPolicy::new(3, std::time::Duration::ZERO),
    );
    let s = finished(
        app.invoke(St::default(), RunConfig::execution_id("retry"))
            .await,
    );
    assert_eq!(s.log.len(), 3);
    assert_eq!(
        effects.lock().unwrap().len(),
        3,
        "three attempts, each task once"
    );
}

async fn journal_entries_are_writes_not_checkpoints(store: Store) {
    let effects = Arc::new(Mutex::new(Vec::new()));
    let app = task_graph(
        &store,
        effects,
        Arc::new(AtomicUsize::new(0)),
        RetryPolicy::default(),
    );
    finished(
        app.invoke(St::default(), RunConfig::execution_id("journal"))
            .await,
    );
    let list = store.list("journal").await.unwrap();
    assert_eq!(list.len(), 2, "the input and work's checkpoint");
    let writes = store.writes(&list[0].id).await.unwrap();
    let keys: Vec<(String, String, u64)> = writes
        .iter()
        .map(|w| {
            (
                w.channel.clone(),
                w.metadata["key"].as_str().unwrap().to_owned(),
                w.metadata["n"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        keys,
        [
            ("__journal__".to_owned(), "a".to_owned(), 0),
            ("__journal__".to_owned(), "b".to_owned(), 0),
            ("__journal__".to_owned(), "a".to_owned(), 1),
        ]
    );
    assert_eq!(writes[1].value::<String>().unwrap(), "b-result");
    let summary = store.executions().await.unwrap();
    assert_eq!(summary[0].checkpoints, 2);
}

/// A scripted "agent": `think` asks a model (a task) for a number and `act` applies a tool (a
/// task) to it, `rounds` times. `prompt_bonus` stands for code that is not a task (how the
/// node reads the reply); `tool_offset` for a tool whose behaviour changed.
#[derive(Clone)]
struct Agent {
    model_calls: Arc<AtomicUsize>,
    tool_calls: Arc<AtomicUsize>,
    prompt_bonus: i64,
    tool_offset: i64,
    rounds: usize,
}

impl Agent {
    fn new(rounds: usize) -> Self {
        Agent {
            model_calls: Arc::default(),
            tool_calls: Arc::default(),
            prompt_bonus: 0,
            tool_offset: 0,
            rounds,
        }
    }

    fn compile(&self, store: &Store) -> CompiledGraph<St> {
        let mut g = StateGraph::<St>::new();
        let me = self.clone();
        g.add_node_with_context("think", move |mut s: St, ctx: NodeContext| {
            let me = me.clone();
            async move {
                let calls = me.model_calls.clone();
                let turn = s.log.len() as i64;
                let reply: i64 = ctx
                    .task("model", async move {
                        calls.fetch_add(1, SeqCst);
                        Ok::<_, BoxError>(turn * 10)
                    })
                    .await?;
                s.n = reply + me.prompt_bonus;
                Ok::<_, BoxError>(s)
            }
        });
        let me = self.clone();
        g.add_node_with_context("act", move |mut s: St, ctx: NodeContext| {
            let me = me.clone();
            async move {
                let calls = me.tool_calls.clone();
                let input = s.n;
                let out: i64 = ctx
                    .task("tool", async move {
                        calls.fetch_add(1, SeqCst);
                        Ok::<_, BoxError>(input + 1 + me.tool_offset)
                    })
                    .await?;
                s.log.push(format!("tool:{out}"));
                Ok::<_, BoxError>(s)
            }
        });
        let rounds = self.rounds;
        g.add_edge("think", "act")
            .add_conditional_edges("act", move |s: &St| {
                if s.log.len() >= rounds {
                    END.into()
                } else {
                    "think".into()
                }
            })
            .set_entry_point("think");
        g.compile(CompileConfig::default().checkpointer(checkpointer(store)))
            .unwrap()
    }
}

async fn record(store: &Store, exec: &str, rounds: usize) -> (Agent, St) {
    let agent = Agent::new(rounds);
    let s = finished(
        agent
            .compile(store)
            .invoke(St::default(), RunConfig::execution_id(exec))
            .await,
    );
    (agent, s)
}

async fn a_recorded_replay_is_faithful_and_offline(store: Store) {
    let (agent, recorded) = record(&store, "rec", 3).await;
    assert_eq!(recorded.log, ["tool:1", "tool:11", "tool:21"]);
    let input = store.list("rec").await.unwrap()[0].id.clone();
    let before = store.list("rec").await.unwrap().len();
    let input_writes = store.writes(&input).await.unwrap().len();
    // A new process: nothing may call the model or the tools.
    let fresh = Agent::new(3);
    let report = fresh
        .compile(&store)
        .replay("rec", &input, ReplayOptions::recorded())
        .await
        .unwrap();
    assert!(report.is_faithful(), "{report}");
    report.assert_faithful();
    assert_eq!(report.mode, ReplayMode::Recorded);
    assert_eq!(report.steps.len(), 6);
    assert!(report.steps.iter().all(|s| s.matches()));
    assert_eq!(fresh.model_calls.load(SeqCst), 0);
    assert_eq!(fresh.tool_calls.load(SeqCst), 0);
    assert_eq!(agent.model_calls.load(SeqCst), 3);
    assert!(matches!(&report.outcome, Ok(Outcome::Finished(s)) if *s == recorded));
    // The replay is a new branch of the same execution, from the input.
    let after = store.list("rec").await.unwrap();
    assert_eq!(after.len(), before + 6);
    let first = store.load(&report.steps[0].checkpoint).await.unwrap();
    assert_eq!(first.parent, Some(input.clone()));
    assert_eq!(store.heads("rec").await.unwrap().len(), 2);
    assert_eq!(
        store.writes(&input).await.unwrap().len(),
        input_writes,
        "the replay's first step starts at the recorded input: nothing is journaled twice there"
    );
    // The replay's branch journaled what it used: replaying it again is faithful too.
    let again = fresh
        .compile(&store)
        .replay(
            "rec",
            &input,
            ReplayOptions::recorded().recorded_head(report.steps[5].checkpoint.clone()),
        )
        .await
        .unwrap();
    assert!(again.is_faithful(), "{again}");
}

async fn a_replay_reports_the_first_divergence(store: Store) {
    let (_, _) = record(&store, "div", 3).await;
    let list = store.list("div").await.unwrap();
    // Replay from after the first think/act round, with code that reads the reply differently.
    let from = list[2].id.clone();
    let mut changed = Agent::new(3);
    changed.prompt_bonus = 5;
    let report = changed
        .compile(&store)
        .replay("div", &from, ReplayOptions::recorded())
        .await
        .unwrap();
    assert!(!report.is_faithful());
    let d = report.divergence.as_ref().expect("a divergence");
    assert_eq!(d.index, 1, "the first step after the start: {report}");
    assert_eq!(d.node.as_deref(), Some("think"));
    assert_eq!(d.diff.changed.len(), 1, "{report}");
    let (path, old, new) = &d.diff.changed[0];
    assert_eq!(path, "n");
    assert_eq!((old.as_i64(), new.as_i64()), (Some(10), Some(15)));
    assert_eq!(
        changed.model_calls.load(SeqCst),
        0,
        "recorded replies were used"
    );
    let text = report.to_string();
    assert!(text.contains("first divergence at step 1"), "{text}");
    assert!(text.contains("~ n: 10 -> 15"), "{text}");
}

async fn a_live_replay_runs_tasks_again(store: Store) {
    let (_, recorded) = record(&store, "live", 2).await;
    let input = store.list("live").await.unwrap()[0].id.clone();
    let mut changed = Agent::new(2);
    changed.tool_offset = 100;
    let report = changed
        .compile(&store)
        .replay("live", &input, ReplayOptions::live())
        .await
        .unwrap();
    assert_eq!(changed.model_calls.load(SeqCst), 2);
    assert_eq!(changed.tool_calls.load(SeqCst), 2);
    let d = report
        .divergence
        .as_ref()
        .expect("the tool's new output diverges");
    assert_eq!(d.index, 2, "{report}");
    assert_eq!(d.node.as_deref(), Some("act"));
    assert_eq!(d.diff.changed[0].0, "log.0");
    let Ok(Outcome::Finished(s)) = &report.outcome else {
        panic!("{report}");
    };
    assert_eq!(
        s.log,
        ["tool:101", "tool:111"],
        "the new output flows through"
    );
    assert_ne!(*s, recorded);
}

async fn a_recorded_replay_reports_unrecorded_tasks(store: Store) {
    let (_, _) = record(&store, "gap", 1).await;
    let input = store.list("gap").await.unwrap()[0].id.clone();
    // A routing change: two rounds where one was recorded; the second round's model call was
    // never recorded.
    let longer = Agent::new(2);
    let report = longer
        .compile(&store)
        .replay("gap", &input, ReplayOptions::recorded())
        .await
        .unwrap();
    assert_eq!(longer.model_calls.load(SeqCst), 0, "nothing ran live");
    assert_eq!(report.missing_tasks.len(), 1, "{report}");
    assert_eq!(report.missing_tasks[0].node, "think");
    assert_eq!(report.missing_tasks[0].key, "model");
    assert!(report.outcome.is_err());
    let d = report.divergence.as_ref().expect("divergence");
    assert_eq!(d.index, 3, "{report}");
}

async fn replay_into_a_new_execution(store: Store) {
    let (_, recorded) = record(&store, "src", 2).await;
    let input = store.list("src").await.unwrap()[0].id.clone();
    let before = store.list("src").await.unwrap().len();
    let report = Agent::new(2)
        .compile(&store)
        .replay(
            "src",
            &input,
            ReplayOptions::recorded().into_execution("copy"),
        )
        .await
        .unwrap();
    assert!(report.is_faithful(), "{report}");
    assert_eq!(report.execution_id, "copy");
    assert_eq!(
        store.list("src").await.unwrap().len(),
        before,
        "the source is untouched"
    );
    let copy = store.latest("copy").await.unwrap().unwrap();
    assert_eq!(copy.state::<St>().unwrap(), recorded);
}

async fn a_stored_run_is_a_regression_test(store: Store) {
    let (_, _) = record(&store, "regress", 2).await;
    let before = store.list("regress").await.unwrap().len();
    let report = replay_regression(&Agent::new(2).compile(&store), &store, "regress")
        .await
        .unwrap();
    report.assert_faithful();
    assert_eq!(
        store.list("regress").await.unwrap().len(),
        before,
        "the replay ran in a scratch copy"
    );
    let mut changed = Agent::new(2);
    changed.prompt_bonus = 1;
    let report = replay_regression(&changed.compile(&store), &store, "regress")
        .await
        .unwrap();
    let panic = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| report.assert_faithful()))
        .expect_err("a changed graph fails the regression test");
    let message = panic.downcast_ref::<String>().cloned().unwrap_or_default();
    assert!(message.contains("first divergence at step 1"), "{message}");
}

async fn a_fan_out_resume_branches_at_its_checkpoint(store: Store) {
    let app = parallel_asking(&store);
    app.invoke(St::default(), RunConfig::execution_id("fan-branch"))
        .await
        .unwrap();
    let ids: Vec<String> = app
        .pending_interrupts("fan-branch")
        .await
        .unwrap()
        .into_iter()
        .map(|i| i.id)
        .collect();
    let cmd = Command::resume_by_id(&ids[0], 1).and(&ids[1], 2);
    finished(app.resume_with_command("fan-branch", cmd).await);
    let list = store.list("fan-branch").await.unwrap();
    let start = &list[1];
    assert_eq!(start.node_name, "start");
    // Resume from the fan-out's checkpoint after the run went on: its join is a child of it.
    let out = app.resume("fan-branch", &start.id).await;
    assert!(out.is_ok(), "{out:?}");
    let children = store.children(&start.id).await.unwrap();
    assert_eq!(children.len(), 2, "the first join and the resumed one");
}
