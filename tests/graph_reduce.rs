//! Partial updates with reducers, dynamic fan-out (`SendTo`, nested too) and multi-turn
//! executions of the graph runtime, on the memory and sled stores.
#![cfg(all(feature = "graph", feature = "sled"))]

#[macro_use]
mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ckpt::graph::{
    reduce, Command, CompileConfig, GraphError, NodeContext, Outcome, Reducible, ReplayOptions,
    RunConfig, SendTo, StateGraph, END,
};
use ckpt::{Checkpoint, CheckpointStore};
use serde::{Deserialize, Serialize};

/// A map-reduce state: items to map over, results appended by parallel tasks, a counter added
/// to, and a summary replaced.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Doc {
    items: Vec<String>,
    results: Vec<String>,
    count: u64,
    summary: Option<String>,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct DocUpdate {
    results: Vec<String>,
    count: u64,
    summary: Option<String>,
}

impl Reducible for Doc {
    type Update = DocUpdate;
    fn apply(&mut self, u: DocUpdate) {
        reduce::append(&mut self.results, u.results);
        reduce::add(&mut self.count, u.count);
        reduce::set(&mut self.summary, u.summary);
    }
    fn merge_input(&mut self, input: Doc) {
        self.items.extend(input.items);
    }
}

fn doc(items: &[&str]) -> Doc {
    Doc {
        items: items.iter().map(|s| s.to_string()).collect(),
        ..Doc::default()
    }
}

/// Counts calls per task input.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<BTreeMap<String, usize>>>);

impl Calls {
    fn hit(&self, key: &str) -> usize {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
    fn get(&self, key: &str) -> usize {
        self.0.lock().unwrap().get(key).copied().unwrap_or(0)
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

/// `split` sends one `upper` task per item; each sleeps longer the earlier it was sent (so they
/// finish in reverse order) and fails on its first call when the item starts with `!`;
/// `reduce` then writes the summary once.
fn map_reduce(
    calls: &Calls,
    store: Option<&Arc<dyn CheckpointStore>>,
) -> ckpt::graph::CompiledGraph<Doc> {
    let mut g = StateGraph::<Doc>::new();
    g.add_update_node("split", |_s: Doc| async move {
        Ok::<_, std::io::Error>(DocUpdate::default())
    });
    g.add_send_edges("split", |s: &Doc| {
        s.items
            .iter()
            .enumerate()
            .map(|(i, item)| SendTo::new("upper", &(i, item.clone(), s.items.len())))
            .collect()
    });
    let c = calls.clone();
    g.add_send_node(
        "upper",
        move |(i, item, n): (usize, String, usize), _ctx: NodeContext| {
            let call = c.hit(&item);
            async move {
                tokio::time::sleep(Duration::from_millis(5 * (n - i) as u64)).await;
                if item.starts_with('!') && call == 1 {
                    return Err(std::io::Error::other(format!("{item} failed once")));
                }
                Ok(DocUpdate {
                    results: vec![item.to_uppercase()],
                    count: 1,
                    summary: None,
                })
            }
        },
    );
    g.add_edge("upper", "reduce");
    let c = calls.clone();
    g.add_update_node("reduce", move |s: Doc| {
        c.hit("reduce");
        async move {
            Ok::<_, std::io::Error>(DocUpdate {
                summary: Some(s.results.join(" ")),
                ..DocUpdate::default()
            })
        }
    });
    g.add_edge("reduce", END);
    g.set_entry_point("split");
    let mut config = CompileConfig::default();
    if let Some(store) = store {
        config = config.checkpointer(store.clone());
    }
    g.compile(config).unwrap()
}

fn next_of(cp: &Checkpoint) -> Vec<String> {
    serde_json::from_value(cp.metadata["next"].clone()).unwrap()
}

on_both_stores!(
    sends_run_concurrently_and_merge_in_send_order,
    a_failed_send_step_resumes_only_the_missing_tasks,
    nested_sends_fan_out_again,
    a_send_task_can_ask_for_a_value,
    parallel_whole_states_are_refused,
    a_finished_execution_takes_a_new_turn,
    snapshots_list_each_send_task,
    a_run_with_sends_replays_faithfully,
);

async fn sends_run_concurrently_and_merge_in_send_order(store: Arc<dyn CheckpointStore>) {
    let calls = Calls::default();
    let app = map_reduce(&calls, Some(&store));
    let items = ["a", "b", "c", "d"];
    let out = app
        .invoke(doc(&items), RunConfig::execution_id("mr"))
        .await
        .unwrap();
    let s = out.state();
    // The tasks finished in reverse order; their updates merged in the order they were sent.
    assert_eq!(s.results, ["A", "B", "C", "D"]);
    assert_eq!(s.count, 4);
    assert_eq!(s.summary.as_deref(), Some("A B C D"));
    assert_eq!(
        calls.get("reduce"),
        1,
        "a node reached from every task runs once"
    );
    assert_eq!(calls.total(), 5);

    let cps = store.list("mr").await.unwrap();
    let nodes: Vec<&str> = cps.iter().map(|c| c.node_name.as_str()).collect();
    assert_eq!(nodes, ["__input__", "split", "upper", "reduce"]);
    assert_eq!(next_of(&cps[1]), ["upper"; 4]);
    assert_eq!(cps[1].metadata["tasks"], true);
    assert_eq!(next_of(&cps[2]), ["reduce"]);
    assert_eq!(cps[2].state::<Doc>().unwrap().results, ["A", "B", "C", "D"]);
    // Each task's output is a pending write of the step's base, not a checkpoint.
    let writes = store.writes(&cps[1].id).await.unwrap();
    let mut tasks: Vec<&str> = writes.iter().map(|w| w.task.as_str()).collect();
    tasks.sort();
    assert_eq!(tasks, ["upper[0]", "upper[1]", "upper[2]", "upper[3]"]);
    assert!(writes.iter().all(|w| w.channel == "__task__"));

    // The same without a checkpointer.
    let calls = Calls::default();
    let plain = map_reduce(&calls, None);
    let out = plain
        .invoke(doc(&items), RunConfig::execution_id("mr"))
        .await
        .unwrap();
    assert_eq!(out.state().results, ["A", "B", "C", "D"]);
}

async fn a_failed_send_step_resumes_only_the_missing_tasks(store: Arc<dyn CheckpointStore>) {
    let calls = Calls::default();
    let app = map_reduce(&calls, Some(&store));
    let items = ["a", "!b", "c"];
    let err = app
        .invoke(doc(&items), RunConfig::execution_id("f"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GraphError::Node { node, .. } if node == "upper[1]"),
        "{err}"
    );
    // Every task ran; the two that finished are recorded.
    assert_eq!([calls.get("a"), calls.get("!b"), calls.get("c")], [1, 1, 1]);
    let latest = store.latest("f").await.unwrap().unwrap();
    assert_eq!(latest.node_name, "split");
    let snap = app.get_state("f").await.unwrap().unwrap();
    let finished: Vec<bool> = snap.tasks.iter().map(|t| t.finished).collect();
    assert_eq!(finished, [true, false, true]);
    assert!(snap.tasks[1]
        .error
        .as_deref()
        .unwrap()
        .contains("!b failed once"));

    let out = app.resume_latest("f").await.unwrap();
    // Only the failed task ran again; the merge order is still the send order.
    assert_eq!([calls.get("a"), calls.get("!b"), calls.get("c")], [1, 2, 1]);
    assert_eq!(out.state().results, ["A", "!B", "C"]);
    assert_eq!(out.state().count, 3);

    // The same as a run that never failed (its `!b` task already had its failing call).
    let clean = Calls::default();
    clean.hit("!b");
    let uninterrupted = map_reduce(&clean, Some(&store))
        .invoke(doc(&items), RunConfig::execution_id("f-clean"))
        .await
        .unwrap();
    assert_eq!(uninterrupted.state(), out.state());
}

/// Words fan out to one task per word, each of which fans out to one task per letter: a
/// nested fan-out, whose steps merge in send order.
async fn nested_sends_fan_out_again(store: Arc<dyn CheckpointStore>) {
    let letters = Arc::new(AtomicUsize::new(0));
    let fail_once = Arc::new(AtomicUsize::new(0));
    let build = |letters: Arc<AtomicUsize>, fail_once: Arc<AtomicUsize>| {
        let mut g = StateGraph::<Doc>::new();
        g.add_update_node("start", |_s: Doc| async move {
            Ok::<_, std::io::Error>(DocUpdate::default())
        });
        g.add_send_edges("start", |s: &Doc| {
            s.items.iter().map(|w| SendTo::new("word", w)).collect()
        });
        g.add_send_node("word", |w: String, _ctx: NodeContext| async move {
            Ok::<_, std::io::Error>(DocUpdate {
                results: vec![format!("word:{w}")],
                ..DocUpdate::default()
            })
        });
        // Each word task's edge sends its letters: evaluated on the merged state.
        g.add_send_edges("word", |s: &Doc| {
            s.items
                .iter()
                .flat_map(|w| w.chars().map(|c| SendTo::new("letter", &c)))
                .collect()
        });
        g.add_send_node("letter", move |c: char, _ctx: NodeContext| {
            letters.fetch_add(1, SeqCst);
            let fail = c == 'z' && fail_once.fetch_add(1, SeqCst) == 0;
            async move {
                if fail {
                    return Err(std::io::Error::other("z failed once"));
                }
                Ok(DocUpdate {
                    results: vec![c.to_string()],
                    count: 1,
                    ..DocUpdate::default()
                })
            }
        });
        g.add_edge("letter", END);
        g.set_entry_point("start");
        g
    };
    let app = build(letters.clone(), fail_once.clone())
        .compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap();
    let err = app
        .invoke(doc(&["ab", "z"]), RunConfig::execution_id("nest"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("z failed once"), "{err}");
    assert_eq!(letters.load(SeqCst), 3);
    let out = app.resume_latest("nest").await.unwrap();
    assert_eq!(letters.load(SeqCst), 4, "only the failed letter ran again");
    assert_eq!(
        out.state().results,
        ["word:ab", "word:z", "a", "b", "z"],
        "each step's updates merge in send order"
    );
    assert_eq!(out.state().count, 3);
    let nodes: Vec<String> = store
        .list("nest")
        .await
        .unwrap()
        .iter()
        .map(|c| c.node_name.clone())
        .collect();
    assert_eq!(nodes, ["__input__", "start", "word", "letter"]);
}

async fn a_send_task_can_ask_for_a_value(store: Arc<dyn CheckpointStore>) {
    let runs = Calls::default();
    let mut g = StateGraph::<Doc>::new();
    g.add_update_node("start", |_s: Doc| async move {
        Ok::<_, std::io::Error>(DocUpdate::default())
    });
    g.add_send_edges("start", |s: &Doc| {
        s.items.iter().map(|w| SendTo::new("check", w)).collect()
    });
    let r = runs.clone();
    g.add_send_node("check", move |item: String, ctx: NodeContext| {
        r.hit(&item);
        async move {
            let verdict: String = if item == "ask" {
                ctx.interrupt(&format!("approve {item}? ({})", ctx.task_name()))?
            } else {
                "auto".into()
            };
            Ok::<_, ckpt::BoxError>(DocUpdate {
                results: vec![format!("{item}:{verdict}")],
                ..DocUpdate::default()
            })
        }
    });
    g.add_edge("check", END);
    g.set_entry_point("start");
    let app = g
        .compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap();
    let out = app
        .invoke(doc(&["x", "ask", "y"]), RunConfig::execution_id("ask"))
        .await
        .unwrap();
    let Outcome::Interrupted {
        interrupts, next, ..
    } = out
    else {
        panic!("not paused: {out:?}")
    };
    assert_eq!(next, ["check"; 3]);
    assert_eq!(interrupts.len(), 1);
    assert_eq!(interrupts[0].node, "check[1]");
    assert_eq!(interrupts[0].value, "approve ask? (check[1])");
    let out = app
        .resume_with_command("ask", Command::resume("yes"))
        .await
        .unwrap();
    assert_eq!(out.state().results, ["x:auto", "ask:yes", "y:auto"]);
    // The tasks that finished before the pause did not run again.
    assert_eq!([runs.get("x"), runs.get("ask"), runs.get("y")], [1, 2, 1]);
}

async fn parallel_whole_states_are_refused(store: Arc<dyn CheckpointStore>) {
    let mut g = StateGraph::<Doc>::new();
    g.add_node("start", |s: Doc| async move { Ok::<_, std::io::Error>(s) });
    g.add_send_edges("start", |s: &Doc| {
        s.items.iter().map(|_| SendTo::new("whole", s)).collect()
    });
    g.add_node("whole", |s: Doc| async move { Ok::<_, std::io::Error>(s) });
    g.add_edge("whole", END);
    g.set_entry_point("start");
    let app = g
        .compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap();
    // One whole state alone is fine.
    let out = app
        .invoke(doc(&["one"]), RunConfig::execution_id("one"))
        .await
        .unwrap();
    assert_eq!(out.state().items, ["one"]);
    let err = app
        .invoke(doc(&["a", "b"]), RunConfig::execution_id("two"))
        .await
        .unwrap_err();
    assert!(
        matches!(err, GraphError::InvalidUpdate { step: 2, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("whole[0], whole[1]"), "{err}");

    // A send to a node that does not exist, and edges to a node only sends may reach.
    let mut g = StateGraph::<Doc>::new();
    g.add_node("start", |s: Doc| async move { Ok::<_, std::io::Error>(s) });
    g.add_send_edges("start", |_s: &Doc| vec![SendTo::new("nowhere", &1)]);
    g.set_entry_point("start");
    let app = g.compile(CompileConfig::default()).unwrap();
    let err = app
        .invoke(doc(&[]), RunConfig::execution_id("bad"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, GraphError::InvalidSend { from, reason } if from == "start" && reason.contains("\"nowhere\"")),
        "{err}"
    );
    let mut g = StateGraph::<Doc>::new();
    g.add_node("start", |s: Doc| async move { Ok::<_, std::io::Error>(s) });
    g.add_send_node("sent", |_: u32, _ctx: NodeContext| async move {
        Ok::<_, std::io::Error>(DocUpdate::default())
    });
    g.add_edge("start", "sent").add_edge("sent", END);
    g.set_entry_point("start");
    let err = g.compile(CompileConfig::default()).err().unwrap();
    assert!(
        matches!(&err, GraphError::SentOnly { node, .. } if node == "sent"),
        "{err}"
    );
    // A send whose input does not fit the node's type fails that task with a clear message.
    let mut g = StateGraph::<Doc>::new();
    g.add_node("start", |s: Doc| async move { Ok::<_, std::io::Error>(s) });
    g.add_send_edges("start", |_s: &Doc| vec![SendTo::new("sent", &"text")]);
    g.add_send_node("sent", |_: u32, _ctx: NodeContext| async move {
        Ok::<_, std::io::Error>(DocUpdate::default())
    });
    g.add_edge("sent", END);
    g.set_entry_point("start");
    let err = g
        .compile(CompileConfig::default())
        .unwrap()
        .invoke(doc(&[]), RunConfig::execution_id("type"))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("does not fit the type it takes (u32)"),
        "{err}"
    );
}

/// A chat whose turns append to one conversation: `respond` answers the last message.
async fn a_finished_execution_takes_a_new_turn(store: Arc<dyn CheckpointStore>) {
    let fail_on = Arc::new(Mutex::new(None::<String>));
    let f = fail_on.clone();
    let mut g = StateGraph::<Doc>::new();
    g.add_update_node("respond", move |s: Doc| {
        let last = s.items.last().cloned().unwrap_or_default();
        let fail = f.lock().unwrap().take_if(|w| *w == last).is_some();
        async move {
            if fail {
                return Err(std::io::Error::other("the model is down"));
            }
            Ok(DocUpdate {
                results: vec![format!("re:{last}")],
                count: 1,
                ..DocUpdate::default()
            })
        }
    });
    g.add_edge("respond", END);
    g.set_entry_point("respond");
    let app = g
        .compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap();
    let exec = RunConfig::execution_id("chat");
    let one = app.invoke(doc(&["hi"]), exec.clone()).await.unwrap();
    assert_eq!(one.state().results, ["re:hi"]);
    // Turn two fails in its node: invoking again continues that turn (the input is not
    // merged twice), and only then is the execution finished again.
    *fail_on.lock().unwrap() = Some("how are you".into());
    app.invoke(doc(&["how are you"]), exec.clone())
        .await
        .unwrap_err();
    let two = app.invoke(doc(&["ignored"]), exec.clone()).await.unwrap();
    assert_eq!(two.state().items, ["hi", "how are you"]);
    assert_eq!(two.state().results, ["re:hi", "re:how are you"]);
    let three = app.invoke(doc(&["bye"]), exec.clone()).await.unwrap();
    assert_eq!(three.state().items, ["hi", "how are you", "bye"]);
    assert_eq!(three.state().results, ["re:hi", "re:how are you", "re:bye"]);
    assert_eq!(three.state().count, 3);

    // One continuous log: three runs, each an input then its step.
    let cps = store.list("chat").await.unwrap();
    let nodes: Vec<&str> = cps.iter().map(|c| c.node_name.as_str()).collect();
    assert_eq!(
        nodes,
        [
            "__input__",
            "respond",
            "__input__",
            "respond",
            "__input__",
            "respond"
        ]
    );
    for pair in cps.windows(2) {
        assert_eq!(pair[1].parent.as_ref(), Some(&pair[0].id));
    }
    let steps: Vec<u64> = cps
        .iter()
        .map(|c| c.metadata["step"].as_u64().unwrap())
        .collect();
    assert_eq!(steps, [0, 1, 1, 2, 2, 3]);
    let runs: Vec<&str> = cps
        .iter()
        .map(|c| c.metadata["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(runs[0], runs[1]);
    assert_ne!(runs[1], runs[2]);
    // Turn two's step was saved by the invoke that finished it.
    assert_ne!(runs[2], runs[3]);
    assert_eq!(runs[4], runs[5]);
}

async fn snapshots_list_each_send_task(store: Arc<dyn CheckpointStore>) {
    let calls = Calls::default();
    let app = map_reduce(&calls, Some(&store));
    app.invoke(doc(&["p", "q"]), RunConfig::execution_id("snap"))
        .await
        .unwrap();
    let history = app
        .get_state_history("snap", Default::default())
        .await
        .unwrap();
    let split = history.iter().find(|s| s.node == "split").unwrap();
    let tasks: Vec<(&str, &str, bool)> = split
        .tasks
        .iter()
        .map(|t| (t.node.as_str(), t.task.as_str(), t.finished))
        .collect();
    assert_eq!(
        tasks,
        [("upper", "upper[0]", true), ("upper", "upper[1]", true)]
    );
    assert_eq!(split.next, ["upper", "upper"]);
    // Time travel: resuming from the fan-out's checkpoint reuses the recorded outputs.
    let before = calls.total();
    let out = app.resume("snap", &split.checkpoint).await.unwrap();
    assert_eq!(out.state().results, ["P", "Q"]);
    assert_eq!(calls.total(), before + 1, "only reduce ran again");
}

async fn a_run_with_sends_replays_faithfully(store: Arc<dyn CheckpointStore>) {
    let calls = Calls::default();
    let app = map_reduce(&calls, Some(&store));
    app.invoke(doc(&["x", "y", "z"]), RunConfig::execution_id("replay"))
        .await
        .unwrap();
    let input = store.list("replay").await.unwrap()[0].id.clone();
    let before = calls.total();
    let report = app
        .replay("replay", &input, ReplayOptions::recorded())
        .await
        .unwrap();
    report.assert_faithful();
    // A replay runs every task again (their outputs are recomputed, not read back).
    assert_eq!(calls.total(), before + 4);
}
