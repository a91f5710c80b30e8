//! Model test of the graph runtime: random small deterministic graphs (a chain of 2..=6 nodes,
//! each applying an arithmetic or token op, with bounded conditional loop-backs) run to
//! completion on a memory store. The run must match the spec interpreted directly (`interpret`:
//! the state after every step, one checkpoint per step holding it, the final state), and
//! resuming from EVERY checkpoint of that run must finish with that final state, appending
//! exactly the checkpoints of the remaining steps.

#![cfg(feature = "graph")]

use std::sync::Arc;

use ckpt::graph::{CompileConfig, CompiledGraph, Outcome, RunConfig, StateGraph, END};
use ckpt::{CheckpointStore, Store};
use proptest::prelude::*;
use serde::{Deserialize, Serialize};

const NAMES: [&str; 6] = ["n0", "n1", "n2", "n3", "n4", "n5"];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    x: i64,
    tokens: Vec<String>,
    /// How many times each node with a loop-back ran (bounds the loops).
    counters: Vec<u32>,
}

#[derive(Clone, Debug)]
enum Op {
    Add(i64),
    Mul(i64),
    Push(String),
}

#[derive(Clone, Debug)]
struct NodeSpec {
    op: Op,
    /// Loop back to node `target` (<= this node) while this node ran at most `bound` times.
    loop_back: Option<(usize, u32)>,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (-100i64..100).prop_map(Op::Add),
        (2i64..4).prop_map(Op::Mul),
        "[a-z]{1,3}".prop_map(Op::Push),
    ]
}

fn spec() -> impl Strategy<Value = Vec<NodeSpec>> {
    prop::collection::vec(
        (
            op(),
            prop::option::of((any::<prop::sample::Index>(), 1u32..3)),
        ),
        2..=6,
    )
    .prop_map(|nodes| {
        nodes
            .into_iter()
            .enumerate()
            .map(|(i, (op, lb))| NodeSpec {
                op,
                loop_back: lb.map(|(t, bound)| (t.index(i + 1), bound)),
            })
            .collect()
    })
}

fn build(spec: &[NodeSpec], store: Arc<dyn CheckpointStore>) -> CompiledGraph<St> {
    let k = spec.len();
    let mut g = StateGraph::<St>::new();
    for (i, node) in spec.iter().enumerate() {
        let op = node.op.clone();
        let counts = node.loop_back.is_some();
        g.add_node(NAMES[i], move |mut s: St| {
            match &op {
                Op::Add(c) => s.x = s.x.wrapping_add(*c),
                Op::Mul(c) => s.x = s.x.wrapping_mul(*c),
                Op::Push(t) => s.tokens.push(format!("{i}:{t}")),
            }
            if counts {
                s.counters[i] += 1;
            }
            std::future::ready(Ok::<_, std::io::Error>(s))
        });
        let next = if i + 1 == k { END } else { NAMES[i + 1] };
        match node.loop_back {
            None => {
                g.add_edge(NAMES[i], next);
            }
            Some((target, bound)) => {
                g.add_conditional_edges(NAMES[i], move |s: &St| {
                    if s.counters[i] <= bound {
                        NAMES[target].to_owned()
                    } else {
                        next.to_owned()
                    }
                });
            }
        }
    }
    g.set_entry_point(NAMES[0]);
    g.compile(CompileConfig::default().checkpointer(store))
        .expect("the graph compiles")
}

fn input(k: usize) -> St {
    St {
        x: 1,
        tokens: Vec::new(),
        counters: vec![0; k],
    }
}

fn config(exec: &str) -> RunConfig {
    RunConfig::execution_id(exec).recursion_limit(10_000)
}

/// The spec run by hand, without the runtime: the state after each step, in order.
fn interpret(spec: &[NodeSpec]) -> Vec<St> {
    let k = spec.len();
    let mut state = input(k);
    // The run's input is its first checkpoint.
    let mut trace = vec![state.clone()];
    let mut node = 0;
    while node < k {
        let spec_node = &spec[node];
        match &spec_node.op {
            Op::Add(c) => state.x = state.x.wrapping_add(*c),
            Op::Mul(c) => state.x = state.x.wrapping_mul(*c),
            Op::Push(t) => state.tokens.push(format!("{node}:{t}")),
        }
        node = match spec_node.loop_back {
            None => node + 1,
            Some((target, bound)) => {
                state.counters[node] += 1;
                if state.counters[node] <= bound {
                    target
                } else {
                    node + 1
                }
            }
        };
        trace.push(state.clone());
    }
    trace
}

async fn check(spec: Vec<NodeSpec>) -> Result<(), TestCaseError> {
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    let app = build(&spec, store.clone());
    let exec = "model";
    let out = app.invoke(input(spec.len()), config(exec)).await.unwrap();
    let Outcome::Finished(fin) = out else {
        return Err(TestCaseError::fail(format!("not finished: {out:?}")));
    };
    let cps = store.list(exec).await.unwrap();
    // The input, then one checkpoint per step, each holding the state the spec gives after
    // that step.
    let trace = interpret(&spec);
    prop_assert_eq!(&fin, trace.last().unwrap(), "final state against the spec");
    let states: Vec<St> = cps.iter().map(|c| c.state().unwrap()).collect();
    prop_assert_eq!(&states, &trace, "checkpoints against the spec's steps");

    // Resuming appends to the same execution, so the checkpoints of the first run are listed
    // once, above, and each resume must add exactly the checkpoints of the steps after it.
    let mut total = cps.len();
    for (i, cp) in cps.iter().enumerate() {
        let out = app.resume(exec, &cp.id).await.unwrap();
        prop_assert!(
            out.is_finished(),
            "resume from checkpoint {} not finished",
            i
        );
        prop_assert_eq!(out.state(), &fin, "resume from checkpoint {}", i);
        let now = store.list(exec).await.unwrap().len();
        prop_assert_eq!(
            now - total,
            cps.len() - (i + 1),
            "new checkpoints after resuming from checkpoint {}",
            i
        );
        total = now;
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]

    #[test]
    fn resume_from_every_checkpoint_reaches_the_same_final_state(spec in spec()) {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(check(spec))?;
    }
}
