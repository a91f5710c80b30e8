//! Model tests of the graph runtime: random small deterministic graphs run to completion on a
//! memory store, checked against the spec interpreted directly in plain Rust.
//!
//! - `resume_from_every_checkpoint_reaches_the_same_final_state`: a chain of 2..=6 nodes, each
//!   applying an arithmetic or token op, with bounded conditional loop-backs. The run must match
//!   the spec (`interpret`: the state after every step, one checkpoint per step holding it, the
//!   final state), and resuming from EVERY checkpoint of that run must finish with that final
//!   state, appending exactly the checkpoints of the remaining steps.
//! - `sends_match_the_model_and_resume_from_every_checkpoint`: reducers and dynamic fan-out. A
//!   chain of whole-state nodes and update nodes (add/append reducers) leads to a `fan` node
//!   whose send edge maps over 0..=6 items (one `work` task each, finishing in reverse order),
//!   optionally sending again from `work` to `sub` (nested), then a `join` node that may loop
//!   back to `fan`, then more nodes. The model (`interpret_sends`) gives every checkpoint (node,
//!   next, step, state: a send step is ONE checkpoint, its updates merged in send order), the
//!   calls each step makes, and the pending write of every send task on its step's base.
//!   Resuming from every checkpoint must append exactly the model's remaining checkpoints,
//!   re-running every node of the remaining steps except the tasks whose output is recorded
//!   on the checkpoint resumed from.
//! - `a_failed_send_task_resumes_alone`: the same graphs, one send task failing on its first
//!   call: the run stops at that step's base with the other tasks recorded, and `resume_latest`
//!   finishes with the uninterrupted result, re-running only the failed task.

#![cfg(feature = "graph")]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use ckpt::graph::{
    reduce, CompileConfig, CompiledGraph, GraphError, NodeContext, Outcome, Reducible, RunConfig,
    SendTo, StateGraph, END, INPUT,
};
use ckpt::{Checkpoint, CheckpointStore, Store};
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

// ---------------------------------------------------------------------------------------------
// Reducers and sends.

/// The state of the send model: `x` and `rounds` are added to, `log` and `outs` appended to;
/// `items` (the list `fan` maps over) is the input's.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Rs {
    x: i64,
    items: Vec<i64>,
    log: Vec<String>,
    /// What each `work` task produced: (round, value); `work`'s nested sends map over these.
    outs: Vec<(u32, i64)>,
    /// How many times `join` ran.
    rounds: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct RsUpdate {
    x: i64,
    log: Vec<String>,
    outs: Vec<(u32, i64)>,
    rounds: u32,
}

impl Reducible for Rs {
    type Update = RsUpdate;
    fn apply(&mut self, u: RsUpdate) {
        reduce::add(&mut self.x, u.x);
        reduce::append(&mut self.log, u.log);
        reduce::append(&mut self.outs, u.outs);
        reduce::add(&mut self.rounds, u.rounds);
    }
}

/// A node that runs alone: it returns the whole state, or an update of the same effect.
#[derive(Clone, Debug)]
struct Plain {
    update: bool,
    op: Op,
}

#[derive(Clone, Debug)]
struct SendSpec {
    /// Nodes `p0`, `p1`, ... before `fan` (the entry point when there are none).
    pre: Vec<Plain>,
    /// Its send edge sends one `work` task per item.
    fan: Plain,
    /// Whether `work` sends again: one `sub` task per even value of this round's `outs`.
    nested: bool,
    /// Adds 1 to `rounds`, and loops back to `fan` while `rounds < loops`.
    join: Plain,
    loops: u32,
    /// Nodes `q0`, `q1`, ... after the last `join`.
    post: Vec<Plain>,
    items: Vec<i64>,
}

const PRE: [&str; 3] = ["p0", "p1", "p2"];
const POST: [&str; 2] = ["q0", "q1"];

fn plain() -> impl Strategy<Value = Plain> {
    (any::<bool>(), op()).prop_map(|(update, op)| Plain { update, op })
}

fn send_spec(items: std::ops::Range<usize>) -> impl Strategy<Value = SendSpec> {
    (
        prop::collection::vec(plain(), 0..=PRE.len()),
        plain(),
        any::<bool>(),
        plain(),
        1u32..=2,
        prop::collection::vec(plain(), 0..=POST.len()),
        prop::collection::vec(0i64..10, items),
    )
        .prop_map(|(pre, fan, nested, join, loops, post, items)| SendSpec {
            pre,
            fan,
            nested,
            join,
            loops,
            post,
            items,
        })
}

/// Counts calls per key: a node's name, or for a task `work:ROUND:INDEX` / `sub:ROUND:INDEX`.
#[derive(Clone, Default)]
struct Calls(Arc<Mutex<BTreeMap<String, usize>>>);

impl Calls {
    fn hit(&self, key: &str) -> usize {
        let mut m = self.0.lock().unwrap();
        let n = m.entry(key.to_owned()).or_insert(0);
        *n += 1;
        *n
    }
    fn snapshot(&self) -> BTreeMap<String, usize> {
        self.0.lock().unwrap().clone()
    }
    fn total(&self) -> usize {
        self.0.lock().unwrap().values().sum()
    }
}

/// What `work` makes of item `item`, sent `index`-th.
fn work_value(index: usize, item: i64) -> i64 {
    item + index as i64
}

/// `work`'s nested sends, from the state after the `work` step: this round's even values.
fn sub_inputs(s: &Rs) -> Vec<(u32, usize, i64)> {
    s.outs
        .iter()
        .filter(|(round, v)| *round == s.rounds && v % 2 == 0)
        .enumerate()
        .map(|(j, (round, v))| (*round, j, *v))
        .collect()
}

fn fan_inputs(s: &Rs) -> Vec<(u32, usize, i64)> {
    s.items
        .iter()
        .enumerate()
        .map(|(i, item)| (s.rounds, i, *item))
        .collect()
}

/// The node after plain node `name` (`join` decides on the state it returned).
fn after_plain(spec: &SendSpec, name: &str, s: &Rs) -> &'static str {
    let first_post = POST[..spec.post.len()].first().copied().unwrap_or(END);
    match name {
        "fan" => unreachable!("fan sends"),
        "join" if s.rounds < spec.loops => "fan",
        "join" => first_post,
        _ => {
            if let Some(i) = PRE.iter().position(|p| *p == name) {
                return PRE[..spec.pre.len()].get(i + 1).copied().unwrap_or("fan");
            }
            let i = POST.iter().position(|p| *p == name).expect("a post node");
            POST[..spec.post.len()].get(i + 1).copied().unwrap_or(END)
        }
    }
}

fn yields(index: usize) -> usize {
    // Later tasks finish first: the merge order must not depend on it.
    8 - index.min(8)
}

fn build_sends(
    spec: &SendSpec,
    store: Arc<dyn CheckpointStore>,
    calls: &Calls,
    fail: Option<String>,
) -> CompiledGraph<Rs> {
    let mut g = StateGraph::<Rs>::with_reducers();
    let plains = spec
        .pre
        .iter()
        .zip(PRE)
        .chain([(&spec.fan, "fan"), (&spec.join, "join")])
        .chain(spec.post.iter().zip(POST));
    for (node, name) in plains {
        let (op, c) = (node.op.clone(), calls.clone());
        let rounds = u32::from(name == "join");
        if node.update {
            g.add_update_node(name, move |s: Rs| {
                c.hit(name);
                let mut u = RsUpdate {
                    rounds,
                    ..RsUpdate::default()
                };
                match &op {
                    Op::Add(k) => u.x = *k,
                    Op::Mul(k) => u.x = s.x * (k - 1),
                    Op::Push(t) => u.log.push(format!("{name}:{t}")),
                }
                std::future::ready(Ok::<_, std::io::Error>(u))
            });
        } else {
            g.add_node(name, move |mut s: Rs| {
                c.hit(name);
                match &op {
                    Op::Add(k) => s.x += k,
                    Op::Mul(k) => s.x *= k,
                    Op::Push(t) => s.log.push(format!("{name}:{t}")),
                }
                s.rounds += rounds;
                std::future::ready(Ok::<_, std::io::Error>(s))
            });
        }
        if name == "fan" {
            g.add_send_edges("fan", |s: &Rs| {
                fan_inputs(s)
                    .iter()
                    .map(|input| SendTo::new("work", input))
                    .collect()
            });
        } else {
            let spec = spec.clone();
            g.add_conditional_edges(name, move |s: &Rs| after_plain(&spec, name, s).to_owned());
        }
    }
    for node in ["work", "sub"] {
        if node == "sub" && !spec.nested {
            continue;
        }
        let (c, fail) = (calls.clone(), fail.clone());
        g.add_send_node(
            node,
            move |(round, i, v): (u32, usize, i64), _ctx: NodeContext| {
                let key = format!("{node}:{round}:{i}");
                let failing = c.hit(&key) == 1 && fail.as_deref() == Some(key.as_str());
                async move {
                    for _ in 0..yields(i) {
                        tokio::task::yield_now().await;
                    }
                    if failing {
                        return Err(std::io::Error::other(format!("{key} failed once")));
                    }
                    Ok(if node == "work" {
                        let w = work_value(i, v);
                        RsUpdate {
                            x: w,
                            log: vec![format!("w{round}.{i}:{v}")],
                            outs: vec![(round, w)],
                            rounds: 0,
                        }
                    } else {
                        RsUpdate {
                            x: -v,
                            log: vec![format!("s{round}.{i}:{v}")],
                            ..RsUpdate::default()
                        }
                    })
                }
            },
        );
    }
    if spec.nested {
        g.add_send_edges("work", |s: &Rs| {
            sub_inputs(s)
                .iter()
                .map(|input| SendTo::new("sub", input))
                .collect()
        });
        g.add_edge("sub", "join");
    } else {
        g.add_edge("work", "join");
    }
    g.set_entry_point(PRE[..spec.pre.len()].first().copied().unwrap_or("fan"));
    g.compile(CompileConfig::default().checkpointer(store))
        .expect("the graph compiles")
}

fn send_input(spec: &SendSpec) -> Rs {
    Rs {
        x: 1,
        items: spec.items.clone(),
        ..Rs::default()
    }
}

/// A checkpoint as the model predicts it.
#[derive(Clone, Debug, PartialEq)]
struct Cp {
    node: String,
    next: Vec<String>,
    step: u64,
    state: Rs,
}

/// The model's run: every checkpoint (`cps[k]` after step `k`; `cps[0]` the input), and for
/// each step `k >= 1`, `steps[k - 1]`: the calls it makes and, for a send step, its tasks' keys.
struct Run {
    cps: Vec<Cp>,
    steps: Vec<Step>,
}

struct Step {
    calls: Vec<String>,
    /// A send step's task keys, in send order (`work[0]`, `work[1]`, ...).
    tasks: Vec<String>,
}

enum Next {
    Node(&'static str),
    /// Tasks of one send node, with their inputs.
    Sends(&'static str, Vec<(u32, usize, i64)>),
    End,
}

impl Next {
    fn names(&self) -> Vec<String> {
        match self {
            Next::Node(n) => vec![n.to_string()],
            Next::Sends(n, inputs) => vec![n.to_string(); inputs.len()],
            Next::End => Vec::new(),
        }
    }

    /// [`END`] as a node is the end.
    fn end_at_end(self) -> Self {
        match self {
            Next::Node(n) if n == END => Next::End,
            other => other,
        }
    }
}

/// A send edge's tasks; none ends the run.
fn sends(node: &'static str, inputs: Vec<(u32, usize, i64)>) -> Next {
    if inputs.is_empty() {
        Next::End
    } else {
        Next::Sends(node, inputs)
    }
}

/// The spec run by hand, without the runtime.
fn interpret_sends(spec: &SendSpec) -> Run {
    let node_of = |name: &str| -> &Plain {
        match name {
            "fan" => &spec.fan,
            "join" => &spec.join,
            _ => match PRE.iter().position(|p| *p == name) {
                Some(i) => &spec.pre[i],
                None => &spec.post[POST.iter().position(|p| *p == name).unwrap()],
            },
        }
    };
    let mut s = send_input(spec);
    let mut next = Next::Node(PRE[..spec.pre.len()].first().copied().unwrap_or("fan"));
    let mut cps = vec![Cp {
        node: INPUT.into(),
        next: next.names(),
        step: 0,
        state: s.clone(),
    }];
    let mut steps = Vec::new();
    loop {
        let (label, step) = match next {
            Next::End => break,
            Next::Node(name) => {
                match &node_of(name).op {
                    Op::Add(k) => s.x += k,
                    Op::Mul(k) => s.x *= k,
                    Op::Push(t) => s.log.push(format!("{name}:{t}")),
                }
                if name == "join" {
                    s.rounds += 1;
                }
                next = match name {
                    "fan" => sends("work", fan_inputs(&s)),
                    _ => Next::Node(after_plain(spec, name, &s)).end_at_end(),
                };
                let step = Step {
                    calls: vec![name.to_owned()],
                    tasks: Vec::new(),
                };
                (name, step)
            }
            Next::Sends(node, inputs) => {
                // Each task's effect, merged in send order.
                let mut step = Step {
                    calls: Vec::new(),
                    tasks: Vec::new(),
                };
                for (round, i, v) in inputs {
                    step.calls.push(format!("{node}:{round}:{i}"));
                    step.tasks.push(format!("{node}[{i}]"));
                    if node == "work" {
                        let w = work_value(i, v);
                        s.x += w;
                        s.log.push(format!("w{round}.{i}:{v}"));
                        s.outs.push((round, w));
                    } else {
                        s.x -= v;
                        s.log.push(format!("s{round}.{i}:{v}"));
                    }
                }
                next = match node {
                    "work" if spec.nested => sends("sub", sub_inputs(&s)),
                    _ => Next::Node("join"),
                };
                (node, step)
            }
        };
        steps.push(step);
        cps.push(Cp {
            node: label.to_owned(),
            next: next.names(),
            step: cps.len() as u64,
            state: s.clone(),
        });
    }
    Run { cps, steps }
}

fn seen(cp: &Checkpoint) -> Result<Cp, TestCaseError> {
    let next = serde_json::from_value(cp.metadata["next"].clone())
        .map_err(|e| TestCaseError::fail(format!("next of {}: {e}", cp.id)))?;
    Ok(Cp {
        node: cp.node_name.clone(),
        next,
        step: cp.metadata["step"].as_u64().unwrap_or(u64::MAX),
        state: cp.state().map_err(|e| TestCaseError::fail(e.to_string()))?,
    })
}

fn seen_all(cps: &[Checkpoint]) -> Result<Vec<Cp>, TestCaseError> {
    cps.iter().map(seen).collect()
}

/// The calls a run of `steps` makes, by key.
fn counts<'a>(steps: impl IntoIterator<Item = &'a Step>) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for call in steps.into_iter().flat_map(|s| &s.calls) {
        *m.entry(call.clone()).or_insert(0) += 1;
    }
    m
}

/// The tasks whose output is recorded on `base` (pending writes on channel `__task__`), in the
/// order they were recorded.
async fn recorded_tasks(
    store: &Arc<dyn CheckpointStore>,
    base: &Checkpoint,
) -> Result<Vec<String>, TestCaseError> {
    let writes = store.writes(&base.id).await.unwrap();
    Ok(writes
        .into_iter()
        .filter(|w| w.channel == "__task__")
        .map(|w| w.task)
        .collect())
}

async fn check_sends(spec: SendSpec) -> Result<(), TestCaseError> {
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    let calls = Calls::default();
    let app = build_sends(&spec, store.clone(), &calls, None);
    let model = interpret_sends(&spec);
    let fin = model.cps.last().unwrap().state.clone();
    let exec = "sends";
    let out = app.invoke(send_input(&spec), config(exec)).await.unwrap();
    prop_assert!(out.is_finished(), "not finished: {:?}", out);
    prop_assert_eq!(out.state(), &fin, "final state against the model");
    let cps = store.list(exec).await.unwrap();
    prop_assert_eq!(
        seen_all(&cps)?,
        model.cps.clone(),
        "checkpoints against the model"
    );
    prop_assert_eq!(
        calls.snapshot(),
        counts(&model.steps),
        "calls against the model"
    );
    // Every send task's output is a pending write on its step's base checkpoint.
    // They finished (and were recorded) in reverse order: later tasks yield less.
    for (k, step) in model.steps.iter().enumerate() {
        let finish_order: Vec<String> = step.tasks.iter().rev().cloned().collect();
        prop_assert_eq!(
            recorded_tasks(&store, &cps[k]).await?,
            finish_order,
            "task writes on checkpoint {}",
            k
        );
    }

    // Resuming from checkpoint i appends the model's checkpoints after i and runs their steps
    // again, but for the tasks of step i + 1 when they are recorded on checkpoint i.
    let mut total = cps.len();
    for (i, cp) in cps.iter().enumerate() {
        let before = calls.total();
        let out = app.resume(exec, &cp.id).await.unwrap();
        prop_assert!(
            out.is_finished(),
            "resume from checkpoint {} not finished",
            i
        );
        prop_assert_eq!(out.state(), &fin, "resume from checkpoint {}", i);
        let now = store.list(exec).await.unwrap();
        prop_assert_eq!(
            seen_all(&now[total..])?,
            model.cps[i + 1..].to_vec(),
            "checkpoints appended by resuming from checkpoint {}",
            i
        );
        total = now.len();
        let rest = &model.steps[i..];
        let reused = rest.first().map_or(0, |s| s.tasks.len());
        let runs: usize = rest.iter().map(|s| s.calls.len()).sum::<usize>() - reused;
        prop_assert_eq!(
            calls.total() - before,
            runs,
            "calls made resuming from checkpoint {}",
            i
        );
    }
    Ok(())
}

async fn check_send_failure(
    spec: SendSpec,
    pick: prop::sample::Index,
) -> Result<(), TestCaseError> {
    let model = interpret_sends(&spec);
    let fin = model.cps.last().unwrap().state.clone();
    // Step k's tasks (k >= 1): the failing one is task `pos` of step `k`.
    let candidates: Vec<(usize, usize)> = model
        .steps
        .iter()
        .enumerate()
        .flat_map(|(k, s)| (0..s.tasks.len()).map(move |pos| (k + 1, pos)))
        .collect();
    prop_assume!(!candidates.is_empty());
    let (k, pos) = candidates[pick.index(candidates.len())];
    let step = &model.steps[k - 1];
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    let calls = Calls::default();
    let failing = step.calls[pos].clone();
    let app = build_sends(&spec, store.clone(), &calls, Some(failing.clone()));
    let exec = "fails";

    let err = app
        .invoke(send_input(&spec), config(exec))
        .await
        .expect_err("a task fails");
    prop_assert!(
        matches!(&err, GraphError::Node { node, .. } if *node == step.tasks[pos]),
        "{} is not task {}'s failure",
        err,
        step.tasks[pos]
    );
    // The run stopped at the failed step's base; every task of the step ran, and all but the
    // failed one are recorded there.
    let cps = store.list(exec).await.unwrap();
    prop_assert_eq!(
        seen_all(&cps)?,
        model.cps[..k].to_vec(),
        "checkpoints before the failure"
    );
    prop_assert_eq!(
        calls.snapshot(),
        counts(&model.steps[..k]),
        "calls before the resume"
    );
    let mut others: BTreeSet<String> = step.tasks.iter().cloned().collect();
    others.remove(&step.tasks[pos]);
    let recorded: BTreeSet<String> = recorded_tasks(&store, &cps[k - 1])
        .await?
        .into_iter()
        .collect();
    prop_assert_eq!(recorded, others, "the tasks recorded before the resume");
    let snap = app.get_state(exec).await.unwrap().unwrap();
    let finished: Vec<bool> = snap.tasks.iter().map(|t| t.finished).collect();
    let expected: Vec<bool> = (0..step.tasks.len()).map(|t| t != pos).collect();
    prop_assert_eq!(finished, expected, "the snapshot's finished tasks");
    prop_assert!(snap.tasks[pos]
        .error
        .as_deref()
        .is_some_and(|e| e.contains("failed once")));

    let out = app.resume_latest(exec).await.unwrap();
    prop_assert!(out.is_finished(), "resume_latest not finished: {:?}", out);
    prop_assert_eq!(out.state(), &fin, "the uninterrupted result");
    let mut expected = counts(&model.steps);
    *expected.get_mut(&failing).unwrap() += 1;
    prop_assert_eq!(calls.snapshot(), expected, "only the failed task ran again");
    let cps = store.list(exec).await.unwrap();
    prop_assert_eq!(seen_all(&cps)?, model.cps, "one log, as if nothing failed");
    Ok(())
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    #[test]
    fn sends_match_the_model_and_resume_from_every_checkpoint(spec in send_spec(0..7)) {
        block_on(check_sends(spec))?;
    }

    #[test]
    fn a_failed_send_task_resumes_alone(
        spec in send_spec(1..7),
        pick in any::<prop::sample::Index>(),
    ) {
        block_on(check_send_failure(spec, pick))?;
    }
}
