//! Criterion benchmarks of the graph runtime's checkpointing overhead.
//!
//! One invocation runs a graph whose single trivial node loops 100 times on itself, then ends:
//! 100 steps, so 100 checkpoints with a store. Measured per invocation on no checkpointer,
//! a memory store, and a durable sled store (every save waits for the disk) in a temporary
//! directory; for a trivial state (a counter) and for a 100 KB state (a counter plus 100 KB of
//! random letters the node leaves unchanged). The per-step checkpointing overhead is
//! `(time with a store - time without) / 100`.
//!
//! `journaled_tasks`: one node that calls 100 journaled tasks ([`NodeContext::task`], each
//! returning a small value), against the same node calling nothing, on memory and durable sled:
//! the cost of one task is `(time with 100 tasks - time with none) / 100`.
//!
//! `replay_1000_steps`: a recorded run of 1,000 steps of a trivial node, replayed from its input
//! in recorded mode on a memory store (the recording is made outside the measurement, a new one
//! per sample).
//!
//! `durability`: the same 100-step counter graph in each durability mode (`Sync`, `Async`,
//! `Exit`; see `ckpt::graph::Durability`) on memory, durable sled, and PostgreSQL (a schema of
//! its own on the server `CKPT_TEST_POSTGRES_URL` names; left out when it is unset:
//! `eval "$(scripts/servers.sh start)"` starts one), against no checkpointer. Twice: with the
//! trivial node (`durability/trivial_node`: a step costs what the runtime and its saves cost,
//! so async mode shows how fast saves land back to back), and with a node that computes for
//! 500 µs (`durability/500us_node`: `(time - time without a store) / 100` is what saving adds
//! to a step's critical path, which async mode overlaps with the next step).
//!
//! `send_fan_out`: one step that sends 100 tasks ([`ckpt::graph::SendTo`]) to a trivial node
//! returning an update (a list of one number, appended by the state's reducer), against the same
//! graph sending none, on no checkpointer, memory and durable sled: a fan-out step costs
//! `time with 100 tasks - time with none` (each task's output is a pending write, then the
//! step's checkpoint).
//!
//! Every invocation uses a new execution id (invoking an existing one would continue it).
//! Sample sizes are small (10 samples, 3 s) so that `cargo bench --bench graph` finishes in
//! about two minutes.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde::{Deserialize, Serialize};
use tempfile::TempDir;
use tokio::runtime::Runtime;

use ckpt::graph::{
    reduce, CompileConfig, CompiledGraph, Durability, NodeContext, Outcome, Reducible,
    ReplayOptions, RunConfig, SendTo, StateGraph, END,
};
use ckpt::{CheckpointStore, Store};

/// The checkpointers compared: a name, and the store (none for the baseline).
type Checkpointer = (&'static str, Option<Arc<dyn CheckpointStore>>);

const STEPS: u64 = 100;
const BIG: usize = 100 * 1024;

#[derive(Clone, Serialize, Deserialize)]
struct Small {
    n: u64,
}

#[derive(Clone, Serialize, Deserialize)]
struct Big {
    n: u64,
    blob: String,
}

/// xorshift64* (no `rand` dependency needed).
fn letters(len: usize) -> String {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    (0..len)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            let r = x.wrapping_mul(0x2545_f491_4f6c_dd1d);
            char::from(b'a' + ((r >> 32) % 26) as u8)
        })
        .collect()
}

trait Counted: ckpt::graph::GraphState {
    fn n(&self) -> u64;
    fn n_mut(&mut self) -> &mut u64;
}

impl Counted for Small {
    fn n(&self) -> u64 {
        self.n
    }
    fn n_mut(&mut self) -> &mut u64 {
        &mut self.n
    }
}

impl Counted for Big {
    fn n(&self) -> u64 {
        self.n
    }
    fn n_mut(&mut self) -> &mut u64 {
        &mut self.n
    }
}

fn graph<S: Counted>(store: Option<Arc<dyn CheckpointStore>>) -> CompiledGraph<S> {
    let mut g = StateGraph::<S>::new();
    g.add_node("tick", |mut s: S| {
        *s.n_mut() += 1;
        std::future::ready(Ok::<_, std::io::Error>(s))
    });
    g.add_conditional_edges("tick", |s: &S| {
        if s.n() >= STEPS {
            END.into()
        } else {
            "tick".into()
        }
    });
    g.set_entry_point("tick");
    let mut config = CompileConfig::default();
    if let Some(store) = store {
        config = config.checkpointer(store);
    }
    g.compile(config).expect("the graph compiles")
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// The checkpointers to compare, with the directory that holds the sled one.
fn stores(rt: &Runtime) -> (Vec<Checkpointer>, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("db");
    let sled = rt
        .block_on(Store::open(path.to_str().expect("a UTF-8 temporary path")))
        .expect("open sled");
    let stores: Vec<Checkpointer> = vec![
        ("none", None),
        ("memory", Some(Arc::new(Store::memory()))),
        ("sled", Some(Arc::new(sled))),
    ];
    (stores, dir)
}

fn bench_state<S: Counted>(
    c: &mut Criterion,
    rt: &Runtime,
    name: &str,
    input: S,
    stores: &[Checkpointer],
) {
    static EXEC: AtomicU64 = AtomicU64::new(0);
    let mut group = c.benchmark_group(format!("graph_100_steps/{name}"));
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for (store_name, store) in stores {
        let app = graph::<S>(store.clone());
        group.bench_function(BenchmarkId::from_parameter(store_name), |b| {
            b.to_async(rt).iter(|| {
                let app = app.clone();
                let input = input.clone();
                async move {
                    let exec = format!("bench-{}", EXEC.fetch_add(1, Ordering::Relaxed));
                    let out = app
                        .invoke(input, RunConfig::execution_id(exec).recursion_limit(1000))
                        .await
                        .expect("the run");
                    assert!(matches!(out, Outcome::Finished(ref s) if s.n() == STEPS));
                }
            });
        });
    }
    group.finish();
}

/// A counter graph of [`STEPS`] steps whose node computes for `work` (busy, like a parser or a
/// model on the CPU: a sleep would measure the timer).
fn working_graph(store: Option<Arc<dyn CheckpointStore>>, work: Duration) -> CompiledGraph<Small> {
    let mut g = StateGraph::<Small>::new();
    g.add_node("tick", move |mut s: Small| {
        let until = std::time::Instant::now() + work;
        while std::time::Instant::now() < until {
            std::hint::spin_loop();
        }
        s.n += 1;
        std::future::ready(Ok::<_, std::io::Error>(s))
    });
    g.add_conditional_edges("tick", |s: &Small| {
        if s.n >= STEPS {
            END.into()
        } else {
            "tick".into()
        }
    });
    g.set_entry_point("tick");
    let mut config = CompileConfig::default();
    if let Some(store) = store {
        config = config.checkpointer(store);
    }
    g.compile(config).expect("the graph compiles")
}

fn bench_durability(c: &mut Criterion, rt: &Runtime, stores: &[Checkpointer]) {
    static EXEC: AtomicU64 = AtomicU64::new(0);
    let mut all: Vec<Checkpointer> = stores.to_vec();
    if let Ok(url) = std::env::var("CKPT_TEST_POSTGRES_URL") {
        let sep = if url.contains('?') { '&' } else { '?' };
        let url = format!("{url}{sep}schema=bench_graph_{}", std::process::id());
        let pg = rt.block_on(Store::open(&url)).expect("open PostgreSQL");
        all.push(("postgres", Some(Arc::new(pg))));
    }
    for (label, work) in [
        ("trivial_node", Duration::ZERO),
        ("500us_node", Duration::from_micros(500)),
    ] {
        let mut group = c.benchmark_group(format!("durability/{label}"));
        group.sample_size(10);
        group.measurement_time(Duration::from_secs(3));
        group.warm_up_time(Duration::from_millis(500));
        for (store_name, store) in &all {
            let modes: &[Durability] = match store {
                None => &[Durability::Sync],
                Some(_) => &[Durability::Sync, Durability::Async, Durability::Exit],
            };
            let app = working_graph(store.clone(), work);
            for mode in modes {
                let id = match store {
                    None => BenchmarkId::from_parameter("none"),
                    Some(_) => BenchmarkId::new(*store_name, format!("{mode:?}")),
                };
                group.bench_function(id, |b| {
                    b.to_async(rt).iter(|| {
                        let app = app.clone();
                        async move {
                            let exec = format!("dur-{}", EXEC.fetch_add(1, Ordering::Relaxed));
                            let config = RunConfig::execution_id(exec)
                                .recursion_limit(1000)
                                .durability(*mode);
                            let out = app.invoke(Small { n: 0 }, config).await.expect("the run");
                            assert!(matches!(out, Outcome::Finished(ref s) if s.n == STEPS));
                        }
                    });
                });
            }
        }
        group.finish();
    }
}

const TASKS: u64 = 100;

/// One node calling `tasks` journaled tasks, then the end.
fn task_graph(store: Arc<dyn CheckpointStore>, tasks: u64) -> CompiledGraph<Small> {
    let mut g = StateGraph::<Small>::new();
    g.add_node_with_context("work", move |mut s: Small, ctx: NodeContext| async move {
        for i in 0..tasks {
            s.n += ctx
                .task("step", async move { Ok::<_, std::io::Error>(i) })
                .await?;
        }
        Ok::<_, ckpt::BoxError>(s)
    });
    g.add_edge("work", END).set_entry_point("work");
    g.compile(CompileConfig::default().checkpointer(store))
        .expect("the graph compiles")
}

fn bench_tasks(c: &mut Criterion, rt: &Runtime, stores: &[Checkpointer]) {
    static EXEC: AtomicU64 = AtomicU64::new(0);
    let mut group = c.benchmark_group("journaled_tasks");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for (store_name, store) in stores {
        let Some(store) = store else { continue };
        for tasks in [0, TASKS] {
            let app = task_graph(store.clone(), tasks);
            let id = BenchmarkId::new(*store_name, format!("{tasks}_tasks"));
            group.bench_function(id, |b| {
                b.to_async(rt).iter(|| {
                    let app = app.clone();
                    async move {
                        let exec = format!("tasks-{}", EXEC.fetch_add(1, Ordering::Relaxed));
                        let out = app
                            .invoke(Small { n: 0 }, RunConfig::execution_id(exec))
                            .await
                            .expect("the run");
                        assert!(out.is_finished());
                    }
                });
            });
        }
    }
    group.finish();
}

const REPLAY_STEPS: u64 = 1000;

fn bench_replay(c: &mut Criterion, rt: &Runtime) {
    let mut group = c.benchmark_group("replay_1000_steps");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    group.bench_function("memory", |b| {
        b.iter_batched(
            || {
                // The recording: a new memory store holding one run of 1,000 steps.
                let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
                let app = long_graph(store.clone());
                rt.block_on(async {
                    let out = app
                        .invoke(
                            Small { n: 0 },
                            RunConfig::execution_id("rec").recursion_limit(10_000),
                        )
                        .await
                        .expect("the recording");
                    assert!(out.is_finished());
                    let input = store.list("rec").await.expect("list")[0].id.clone();
                    (app, input)
                })
            },
            |(app, input)| {
                rt.block_on(async {
                    let report = app
                        .replay("rec", &input, ReplayOptions::recorded())
                        .await
                        .expect("the replay");
                    assert!(report.is_faithful());
                    assert_eq!(report.steps.len(), REPLAY_STEPS as usize);
                })
            },
            criterion::BatchSize::PerIteration,
        );
    });
    group.finish();
}

/// A trivial node looping [`REPLAY_STEPS`] times.
fn long_graph(store: Arc<dyn CheckpointStore>) -> CompiledGraph<Small> {
    let mut g = StateGraph::<Small>::new();
    g.add_node("tick", |mut s: Small| {
        s.n += 1;
        std::future::ready(Ok::<_, std::io::Error>(s))
    });
    g.add_conditional_edges("tick", |s: &Small| {
        if s.n >= REPLAY_STEPS {
            END.into()
        } else {
            "tick".into()
        }
    });
    g.set_entry_point("tick");
    g.compile(CompileConfig::default().checkpointer(store))
        .expect("the graph compiles")
}

#[derive(Clone, Serialize, Deserialize)]
struct Fan {
    items: u64,
    out: Vec<u64>,
}

impl Reducible for Fan {
    type Update = Vec<u64>;
    fn apply(&mut self, update: Vec<u64>) {
        reduce::append(&mut self.out, update);
    }
}

const SENDS: u64 = 100;

/// `start` sends one `task` per item; each returns its item doubled; then END.
fn fan_graph(store: Option<Arc<dyn CheckpointStore>>) -> CompiledGraph<Fan> {
    let mut g = StateGraph::<Fan>::new();
    g.add_node("start", |s: Fan| {
        std::future::ready(Ok::<_, std::io::Error>(s))
    });
    g.add_send_edges("start", |s: &Fan| {
        (0..s.items).map(|i| SendTo::new("task", &i)).collect()
    });
    g.add_send_node("task", |i: u64, _ctx: NodeContext| {
        std::future::ready(Ok::<_, std::io::Error>(vec![i * 2]))
    });
    g.add_edge("task", END).set_entry_point("start");
    let mut config = CompileConfig::default();
    if let Some(store) = store {
        config = config.checkpointer(store);
    }
    g.compile(config).expect("the graph compiles")
}

fn bench_sends(c: &mut Criterion, rt: &Runtime, stores: &[Checkpointer]) {
    static EXEC: AtomicU64 = AtomicU64::new(0);
    let mut group = c.benchmark_group("send_fan_out");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(3));
    group.warm_up_time(Duration::from_millis(500));
    for (store_name, store) in stores {
        let app = fan_graph(store.clone());
        for items in [0, SENDS] {
            let id = BenchmarkId::new(*store_name, format!("{items}_tasks"));
            group.bench_function(id, |b| {
                b.to_async(rt).iter(|| {
                    let app = app.clone();
                    async move {
                        let exec = format!("sends-{}", EXEC.fetch_add(1, Ordering::Relaxed));
                        let input = Fan { items, out: vec![] };
                        let out = app
                            .invoke(input, RunConfig::execution_id(exec))
                            .await
                            .expect("the run");
                        assert_eq!(out.state().out.len() as u64, items);
                    }
                });
            });
        }
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    let (stores, _dir) = stores(&rt);
    bench_sends(c, &rt, &stores);
    bench_durability(c, &rt, &stores);
    bench_tasks(c, &rt, &stores);
    bench_replay(c, &rt);
    bench_state(c, &rt, "trivial_state", Small { n: 0 }, &stores);
    bench_state(
        c,
        &rt,
        "100kb_state",
        Big {
            n: 0,
            blob: letters(BIG),
        },
        &stores,
    );
}

criterion_group!(graph_benches, benches);
criterion_main!(graph_benches);
