//! Model test of subgraphs: a random parent chain (2..=5 arithmetic or token ops) with a
//! random child chain (1..=4 ops) as one of its nodes, optionally a child node that asks a
//! person for a number. The run must match the spec interpreted directly (the final state, the
//! parent's checkpoints, the child's); resuming the parent from EVERY one of its checkpoints
//! must finish with the same final state, and so must resuming the child execution on its own
//! from every checkpoint of its first run.

#![cfg(feature = "graph")]

use std::sync::Arc;

use ckpt::graph::{
    Command, CompileConfig, CompiledGraph, NodeContext, Outcome, RunConfig, StateGraph, END,
};
use ckpt::{BoxError, CheckpointStore, Store};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    x: i64,
    tokens: Vec<String>,
}

#[derive(Clone, Debug)]
enum Op {
    Add(i64),
    Mul(i64),
    Push(String),
    /// Asks a person; the answer is added.
    Ask,
}

fn apply(op: &Op, s: &mut St, at: &str, answer: i64) {
    match op {
        Op::Add(c) => s.x = s.x.wrapping_add(*c),
        Op::Mul(c) => s.x = s.x.wrapping_mul(*c),
        Op::Push(t) => s.tokens.push(format!("{at}:{t}")),
        Op::Ask => s.x = s.x.wrapping_add(answer),
    }
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (-50i64..50).prop_map(Op::Add),
        (2i64..4).prop_map(Op::Mul),
        "[a-z]{1,3}".prop_map(Op::Push),
    ]
}

#[derive(Clone, Debug)]
struct Spec {
    parent: Vec<Op>,
    /// The parent node that is the subgraph.
    at: usize,
    child: Vec<Op>,
}

fn spec() -> impl Strategy<Value = Spec> {
    (
        prop::collection::vec(op(), 2..=5),
        any::<prop::sample::Index>(),
        prop::collection::vec(op(), 1..=4),
        prop::option::of(any::<prop::sample::Index>()),
    )
        .prop_map(|(parent, at, mut child, ask)| {
            if let Some(i) = ask {
                let i = i.index(child.len());
                child[i] = Op::Ask;
            }
            Spec {
                at: at.index(parent.len()),
                parent,
                child,
            }
        })
}

const ANSWER: i64 = 7;

fn chain(
    ops: &[Op],
    prefix: &'static str,
    store: Option<Arc<dyn CheckpointStore>>,
) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    let names: Vec<String> = (0..ops.len()).map(|i| format!("{prefix}{i}")).collect();
    for (i, op) in ops.iter().enumerate() {
        let op = op.clone();
        let at = names[i].clone();
        g.add_node_with_context(&names[i], move |mut s: St, ctx: NodeContext| {
            let (op, at) = (op.clone(), at.clone());
            async move {
                let answer = match op {
                    Op::Ask => ctx.interrupt::<_, i64>(&format!("a number for {at}?"))?,
                    _ => 0,
                };
                apply(&op, &mut s, &at, answer);
                Ok::<_, BoxError>(s)
            }
        });
        let next = names.get(i + 1).map_or(END, String::as_str);
        g.add_edge(&names[i], next);
    }
    g.set_entry_point(&names[0]);
    let mut config = CompileConfig::default();
    if let Some(store) = store {
        config = config.checkpointer(store);
    }
    g.compile(config).expect("the chain compiles")
}

/// The parent chain with node `at` replaced by the child graph (input: the parent's `x`, no
/// tokens; output: the child's `x`, its tokens appended).
fn build(spec: &Spec, store: Arc<dyn CheckpointStore>) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    let names: Vec<String> = (0..spec.parent.len()).map(|i| format!("p{i}")).collect();
    for (i, op) in spec.parent.iter().enumerate() {
        if i == spec.at {
            g.add_subgraph(
                &names[i],
                chain(&spec.child, "c", None),
                |s: &St| St {
                    x: s.x,
                    tokens: vec![],
                },
                |mut s: St, c: St| {
                    s.x = c.x;
                    s.tokens.extend(c.tokens);
                    s
                },
            );
        } else {
            let op = op.clone();
            let at = names[i].clone();
            g.add_node(&names[i], move |mut s: St| {
                apply(&op, &mut s, &at, 0);
                std::future::ready(Ok::<_, std::io::Error>(s))
            });
        }
        let next = names.get(i + 1).map_or(END, String::as_str);
        g.add_edge(&names[i], next);
    }
    g.set_entry_point(&names[0]);
    g.compile(CompileConfig::default().checkpointer(store))
        .expect("the graph compiles")
}

/// The spec by hand: the parent's states (input, then after each step) and the child's.
fn interpret(spec: &Spec) -> (Vec<St>, Vec<St>) {
    let mut s = St {
        x: 1,
        tokens: vec![],
    };
    let mut parent = vec![s.clone()];
    let mut child_trace = Vec::new();
    for (i, op) in spec.parent.iter().enumerate() {
        if i == spec.at {
            let mut c = St {
                x: s.x,
                tokens: vec![],
            };
            child_trace.push(c.clone());
            for (j, op) in spec.child.iter().enumerate() {
                apply(op, &mut c, &format!("c{j}"), ANSWER);
                child_trace.push(c.clone());
            }
            s.x = c.x;
            s.tokens.extend(c.tokens);
        } else {
            apply(op, &mut s, &format!("p{i}"), 0);
        }
        parent.push(s.clone());
    }
    (parent, child_trace)
}

/// Runs (or resumes) to the end, answering the child's question with [`ANSWER`].
async fn finish(app: &CompiledGraph<St>, exec: &str, mut out: Outcome<St>) -> St {
    loop {
        match out {
            Outcome::Finished(s) => return s,
            Outcome::Interrupted { checkpoint, .. } => {
                out = app
                    .resume_with_command_at(
                        RunConfig::execution_id(exec),
                        &checkpoint,
                        Command::resume(ANSWER),
                    )
                    .await
                    .expect("resume with the answer");
            }
        }
    }
}

async fn check(spec: Spec) -> Result<(), TestCaseError> {
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    let app = build(&spec, store.clone());
    let (parent_trace, child_trace) = interpret(&spec);
    let input = parent_trace[0].clone();
    let out = app
        .invoke(input, RunConfig::execution_id("m"))
        .await
        .unwrap();
    let fin = finish(&app, "m", out).await;
    prop_assert_eq!(&fin, parent_trace.last().unwrap(), "final state");
    let cps = store.list("m").await.unwrap();
    let states: Vec<St> = cps.iter().map(|c| c.state().unwrap()).collect();
    prop_assert_eq!(&states, &parent_trace, "the parent's checkpoints");
    let child_exec = format!("m/p{}", spec.at);
    let child_cps = store.list(&child_exec).await.unwrap();
    let child_states: Vec<St> = child_cps.iter().map(|c| c.state().unwrap()).collect();
    prop_assert_eq!(&child_states, &child_trace, "the child's checkpoints");

    // Every parent checkpoint resumes to the same end (a new child run where the subgraph
    // step is ahead).
    for (i, cp) in cps.iter().enumerate() {
        let out = app.resume("m", &cp.id).await.unwrap();
        let again = finish(&app, "m", out).await;
        prop_assert_eq!(&again, &fin, "resume the parent from checkpoint {}", i);
    }
    // The child's first run, resumed on its own from each of its checkpoints.
    let child = chain(&spec.child, "c", Some(store.clone()));
    for (i, cp) in child_cps.iter().enumerate() {
        let out = child.resume(&child_exec, &cp.id).await.unwrap();
        let end = finish(&child, &child_exec, out).await;
        prop_assert_eq!(
            &end,
            child_trace.last().unwrap(),
            "resume the child from {}",
            i
        );
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn subgraph_runs_match_the_spec_and_resume_from_anywhere(spec in spec()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(check(spec))?;
    }
}
