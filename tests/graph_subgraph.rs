//! Subgraphs (`StateGraph::add_subgraph`): a compiled graph as a node of another, its
//! checkpoints under the parent's name, its interrupts pausing the parent, its crashes resumed
//! where the child stopped, on the memory and sled stores.
#![cfg(all(feature = "graph", feature = "sled"))]

#[macro_use]
mod common;

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use ckpt::graph::{
    Command, CompileConfig, CompiledGraph, NodeContext, Outcome, RunConfig, StateGraph, END,
};
use ckpt::{BoxError, CheckpointStore};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Parent {
    topic: String,
    log: Vec<String>,
    rounds: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Child {
    topic: String,
    notes: Vec<String>,
}

#[derive(Default)]
struct Counts {
    research: AtomicUsize,
    write: AtomicUsize,
}

/// The child: `research` then `write`. `write` fails on its first call when `fail_write`,
/// and asks a person to approve the draft when `ask`.
fn child(
    counts: Arc<Counts>,
    fail_write: bool,
    ask: bool,
    config: CompileConfig,
) -> CompiledGraph<Child> {
    let mut g = StateGraph::<Child>::new();
    let c = counts.clone();
    g.add_node("research", move |mut s: Child| {
        c.research.fetch_add(1, SeqCst);
        async move {
            s.notes.push(format!("facts about {}", s.topic));
            Ok::<_, std::io::Error>(s)
        }
    });
    let c = counts;
    g.add_node_with_context("write", move |mut s: Child, ctx: NodeContext| {
        let call = c.write.fetch_add(1, SeqCst);
        async move {
            if fail_write && call == 0 {
                return Err::<Child, BoxError>("the writer crashed".into());
            }
            let verdict: String = if ask {
                ctx.interrupt(&format!("approve the draft on {}?", s.topic))?
            } else {
                "ok".into()
            };
            s.notes.push(format!("draft ({verdict})"));
            Ok(s)
        }
    });
    g.add_edge("research", "write").add_edge("write", END);
    g.set_entry_point("research");
    g.compile(config).unwrap()
}

/// The parent: `plan`, then the child as node `sub` (its notes appended to the log), looping
/// back to `plan` for `rounds` rounds, then END.
fn parent(
    store: &Arc<dyn CheckpointStore>,
    child: CompiledGraph<Child>,
    rounds: u32,
) -> CompiledGraph<Parent> {
    let mut g = StateGraph::<Parent>::new();
    g.add_node("plan", |mut s: Parent| async move {
        s.rounds += 1;
        s.log.push(format!("plan {}", s.rounds));
        Ok::<_, std::io::Error>(s)
    });
    g.add_subgraph(
        "sub",
        child,
        |s: &Parent| Child {
            topic: format!("{} #{}", s.topic, s.rounds),
            notes: vec![],
        },
        |mut s: Parent, c: Child| {
            s.log.extend(c.notes);
            s
        },
    );
    g.add_edge("plan", "sub");
    g.add_conditional_edges("sub", move |s: &Parent| {
        if s.rounds >= rounds {
            END.into()
        } else {
            "plan".into()
        }
    });
    g.set_entry_point("plan");
    g.compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap()
}

fn input() -> Parent {
    Parent {
        topic: "owls".into(),
        ..Parent::default()
    }
}

on_both_stores!(
    a_subgraph_saves_under_the_parents_name,
    an_interrupt_inside_pauses_the_parent,
    a_failure_inside_resumes_the_child_where_it_stopped,
    a_static_pause_inside_pauses_the_parent,
    the_child_is_an_execution_of_its_own,
    an_interrupt_at_an_old_checkpoint_is_answered_where_it_waits,
);

async fn a_subgraph_saves_under_the_parents_name(store: Arc<dyn CheckpointStore>) {
    let counts = Arc::new(Counts::default());
    let app = parent(
        &store,
        child(counts.clone(), false, false, CompileConfig::default()),
        2,
    );
    let out = app
        .invoke(input(), RunConfig::execution_id("p"))
        .await
        .unwrap();
    assert_eq!(
        out.state().log,
        [
            "plan 1",
            "facts about owls #1",
            "draft (ok)",
            "plan 2",
            "facts about owls #2",
            "draft (ok)"
        ]
    );
    let parent_cps = store.list("p").await.unwrap();
    let nodes: Vec<&str> = parent_cps.iter().map(|c| c.node_name.as_str()).collect();
    assert_eq!(nodes, ["__input__", "plan", "sub", "plan", "sub"]);
    // The child's two runs: one continuous log under the parent's name, each run's
    // checkpoints naming the parent's checkpoint its step started from.
    let child_cps = store.list("p/sub").await.unwrap();
    let nodes: Vec<&str> = child_cps.iter().map(|c| c.node_name.as_str()).collect();
    assert_eq!(
        nodes,
        [
            "__input__",
            "research",
            "write",
            "__input__",
            "research",
            "write"
        ]
    );
    let tag = |c: &ckpt::Checkpoint| c.metadata["parent_checkpoint"].as_str().unwrap().to_owned();
    assert!(child_cps[..3]
        .iter()
        .all(|c| tag(c) == parent_cps[1].id.to_string()));
    assert!(child_cps[3..]
        .iter()
        .all(|c| tag(c) == parent_cps[3].id.to_string()));
    // The second run started from its own input, not the first's final state.
    assert_eq!(
        child_cps[3].state::<Child>().unwrap(),
        Child {
            topic: "owls #2".into(),
            notes: vec![]
        }
    );
    assert_eq!(counts.research.load(SeqCst), 2);
}

async fn an_interrupt_inside_pauses_the_parent(store: Arc<dyn CheckpointStore>) {
    let counts = Arc::new(Counts::default());
    let app = parent(
        &store,
        child(counts.clone(), false, true, CompileConfig::default()),
        1,
    );
    let out = app
        .invoke(input(), RunConfig::execution_id("ask"))
        .await
        .unwrap();
    let Outcome::Interrupted {
        interrupts, next, ..
    } = out
    else {
        panic!("the parent did not pause: {out:?}")
    };
    assert_eq!(next, ["sub"]);
    assert_eq!(interrupts.len(), 1);
    assert_eq!(interrupts[0].node, "sub");
    assert_eq!(interrupts[0].value, "approve the draft on owls #1?");
    assert_eq!(app.pending_interrupts("ask").await.unwrap(), interrupts);
    // The child paused too, in its own execution.
    let child_latest = store.latest("ask/sub").await.unwrap().unwrap();
    assert_eq!(child_latest.node_name, "research");

    let out = app
        .resume_with_command("ask", Command::resume("yes"))
        .await
        .unwrap();
    assert!(out.is_finished(), "{out:?}");
    assert_eq!(
        out.state().log,
        ["plan 1", "facts about owls #1", "draft (yes)"]
    );
    // The child's research ran once: the answer resumed the child, not a new run of it.
    assert_eq!(counts.research.load(SeqCst), 1);
    assert_eq!(store.list("ask/sub").await.unwrap().len(), 3);
}

async fn a_failure_inside_resumes_the_child_where_it_stopped(store: Arc<dyn CheckpointStore>) {
    let counts = Arc::new(Counts::default());
    let app = parent(
        &store,
        child(counts.clone(), true, false, CompileConfig::default()),
        1,
    );
    let err = app
        .invoke(input(), RunConfig::execution_id("fail"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("the writer crashed"), "{err}");
    let out = app.resume_latest("fail").await.unwrap();
    assert_eq!(
        out.state().log,
        ["plan 1", "facts about owls #1", "draft (ok)"]
    );
    assert_eq!(
        counts.research.load(SeqCst),
        1,
        "the child's first step did not run again"
    );
    assert_eq!(counts.write.load(SeqCst), 2);
    let nodes: Vec<String> = store
        .list("fail/sub")
        .await
        .unwrap()
        .iter()
        .map(|c| c.node_name.clone())
        .collect();
    assert_eq!(nodes, ["__input__", "research", "write"]);
}

async fn a_static_pause_inside_pauses_the_parent(store: Arc<dyn CheckpointStore>) {
    let counts = Arc::new(Counts::default());
    let config = CompileConfig::default()
        .checkpointer(store.clone())
        .interrupt_before(["write"]);
    let app = parent(&store, child(counts.clone(), false, false, config), 1);
    let out = app
        .invoke(input(), RunConfig::execution_id("static"))
        .await
        .unwrap();
    let Outcome::Interrupted { interrupts, .. } = out else {
        panic!("the parent did not pause: {out:?}")
    };
    assert_eq!(interrupts[0].value["subgraph"], "static/sub");
    assert_eq!(counts.write.load(SeqCst), 0);
    let out = app
        .resume_with_command("static", Command::resume("go on"))
        .await
        .unwrap();
    assert_eq!(
        out.state().log,
        ["plan 1", "facts about owls #1", "draft (ok)"]
    );
    assert_eq!(counts.research.load(SeqCst), 1);
    assert_eq!(counts.write.load(SeqCst), 1);
}

async fn the_child_is_an_execution_of_its_own(store: Arc<dyn CheckpointStore>) {
    let counts = Arc::new(Counts::default());
    let sub = child(counts.clone(), false, false, CompileConfig::default());
    let app = parent(&store, sub.clone(), 1);
    app.invoke(input(), RunConfig::execution_id("own"))
        .await
        .unwrap();
    // Inspected, and time-travelled, with the child graph itself.
    let sub = sub.with_checkpointer(store.clone());
    let history = sub
        .get_state_history("own/sub", Default::default())
        .await
        .unwrap();
    let nodes: Vec<&str> = history.iter().map(|s| s.node.as_str()).collect();
    assert_eq!(nodes, ["write", "research", "__input__"]);
    let research = &history[1];
    let edited = Child {
        topic: "edited".into(),
        notes: vec!["hand-written facts".into()],
    };
    let id = sub
        .update_state(&research.checkpoint, edited)
        .await
        .unwrap();
    let out = sub.resume("own/sub", &id).await.unwrap();
    assert_eq!(out.state().notes, ["hand-written facts", "draft (ok)"]);
    // A new branch of the child: the edit is a child of `research`, not of the latest.
    let edit = store.load(&id).await.unwrap();
    assert_eq!(edit.parent.as_ref(), Some(&research.checkpoint));

    // Time travel in the parent. From the checkpoint the subgraph's step started from, the
    // step finds its child run (older than the child's latest now) and takes its result.
    let parent_cps = store.list("own").await.unwrap();
    let before = counts.research.load(SeqCst);
    let out = app.resume("own", &parent_cps[1].id).await.unwrap();
    assert_eq!(counts.research.load(SeqCst), before);
    assert_eq!(out.state().log[1..], ["facts about owls #1", "draft (ok)"]);
    // From the parent's input, `plan` runs again, and the subgraph's step is a new one: a
    // new child run.
    app.resume("own", &parent_cps[0].id).await.unwrap();
    assert_eq!(counts.research.load(SeqCst), before + 1);
}

/// A run resumed from an old checkpoint that pauses at its first step waits at that old
/// checkpoint, not at the execution's latest: `resume_with_command_at` answers it there, and
/// the run goes on as a new branch (what a subgraph's step re-run from an old parent
/// checkpoint relies on).
async fn an_interrupt_at_an_old_checkpoint_is_answered_where_it_waits(
    store: Arc<dyn CheckpointStore>,
) {
    let counts = Arc::new(Counts::default());
    let app = child(
        counts,
        false,
        true,
        CompileConfig::default().checkpointer(store.clone()),
    );
    let start = Child {
        topic: "bats".into(),
        notes: vec![],
    };
    let exec = RunConfig::execution_id("old");
    let Outcome::Interrupted { checkpoint, .. } = app.invoke(start, exec.clone()).await.unwrap()
    else {
        panic!("no pause")
    };
    let done = app
        .resume_with_command("old", Command::resume("first"))
        .await
        .unwrap();
    assert_eq!(done.state().notes[1], "draft (first)");
    // Back to the checkpoint before `write`: the same step from the same checkpoint finds
    // its answer there, and finishes without asking.
    let again = app.resume("old", &checkpoint).await.unwrap();
    assert_eq!(again.state().notes[1], "draft (first)");

    // A checkpoint whose step never ran: an edit of `research`'s checkpoint.
    let edited = app
        .update_state(
            &checkpoint,
            Child {
                topic: "moths".into(),
                notes: vec!["edited".into()],
            },
        )
        .await
        .unwrap();
    // Another run moves the latest on; the edit is old now.
    app.resume("old", &checkpoint).await.unwrap();
    let Outcome::Interrupted {
        checkpoint: waits_at,
        ..
    } = app.resume("old", &edited).await.unwrap()
    else {
        panic!("no pause at the edit")
    };
    assert_eq!(waits_at, edited);
    let latest = store.latest("old").await.unwrap().unwrap().id;
    assert_ne!(latest, edited);
    let err = app
        .resume_with_command("old", Command::resume("no"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no interrupt is waiting"), "{err}");
    let out = app
        .resume_with_command_at(exec, &edited, Command::resume("second"))
        .await
        .unwrap();
    assert_eq!(out.state().notes, ["edited", "draft (second)"]);
    let last = store.latest("old").await.unwrap().unwrap();
    assert_eq!(
        last.parent.as_ref(),
        Some(&edited),
        "a new branch from the edit"
    );
}
