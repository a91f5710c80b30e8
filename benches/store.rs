//! Criterion benchmarks of the store, on a durable sled store (`sync=true`: every save waits
//! for the disk) in a temporary directory, and on memory for comparison.
//!
//! - `save/conversation`: one save of a conversation that grows by one 600-byte message (random
//!   letters) per save. So that the state does not grow without bound over criterion's many
//!   iterations, a conversation ends after 200 messages and the next save starts a new
//!   execution: the states saved range from 1 to 200 messages (0.6 to 120 KB).
//! - `load_latest/warm`: the latest checkpoint of a 200-message conversation, from the store that
//!   saved it. `load_latest/cold`: the same from a new `Store` over the same backend each time
//!   (what a restarted process pays: the log is folded and the state rebuilt).
//! - `load_old` and `history_20` use one execution of 10,000 checkpoints, built once in setup
//!   (in batches of 250 saves). Its state is `{messages, step}` where each step appends one
//!   100-byte message, and the list restarts empty every 50 steps: states stay under ~6 KB so
//!   setup is fast, while saves remain the typical one-message delta. `load_old` loads a random
//!   version (a snapshot plus a chain of deltas); `history_20` reads the 20 newest headers;
//!   `load_latest/cold_of_10k` loads its latest checkpoint from a new `Store` each time.
//!
//! - `reopen_20k`: issue 15's long shape: one execution of 20,000 checkpoints of a small state
//!   (~140 bytes: a step, a status, a few fields that change each step), built once in setup;
//!   each iteration opens the store from its URL (sled directory, SQLite file), reads the latest
//!   checkpoint (or the 20 newest headers, or a version near the head) and closes the store:
//!   what a process start pays before its first answer (`reopen_20k/open`: the open alone). On PostgreSQL too when
//!   `CKPT_TEST_POSTGRES_URL` names a server.
//!
//! - `many`: issue 15's many-executions shape, as `ckpt bench --workload many` builds it:
//!   executions of 5 saves of a ~1 KB state (a 600-letter input set at the first step, a
//!   420-letter output replaced at every step, a step and a status). `many/save` is one save,
//!   a new execution every 5 saves (so a fifth of the saves are an execution's first);
//!   `many/executions_after_reopen` opens a store of 2,000 such executions from its URL and lists
//!   them (`Store::executions`).
//! - `tools`: issue 15's tool-loop shape, as `ckpt bench --workload tools` builds it: each save
//!   appends a 20 KB tool output to a list and replaces a 2 KB scratchpad. `tools/save` is one
//!   save, a new execution every 150 saves (states grow to ~3 MB); `tools/open_and_latest` opens
//!   a store holding one execution of 150 such saves and reads its latest checkpoint (~3 MB).
//!
//! The `reopen_20k`, `many` and `tools` groups run on sled, SQLite, and PostgreSQL when
//! `CKPT_TEST_POSTGRES_URL` names a server (each run in a schema of its own).
//!
//! Sample sizes are small (20 samples, 3 s) so that `cargo bench` finishes in a few minutes.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use serde::Serialize;
use tempfile::TempDir;
use tokio::runtime::Runtime;

use ckpt::{Checkpoint, CheckpointId, HistoryQuery, Store};

const LONG_EXEC: &str = "long-exec";
const LONG_STEPS: u64 = 10_000;
const LONG_WINDOW: usize = 50;
const LONG_BATCH: u64 = 250;
const CONVERSATION_CAP: usize = 200;

#[derive(Serialize)]
struct Conversation<'a> {
    messages: &'a [String],
    step: u64,
}

/// xorshift64* (no `rand` dependency needed).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn letters(&mut self, len: usize) -> String {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        (0..len)
            .map(|_| char::from(ALPHABET[(self.next() >> 32) as usize % ALPHABET.len()]))
            .collect()
    }
}

/// A store to benchmark, with the directory that holds it.
struct Fixture {
    name: &'static str,
    store: Store,
    _dir: Option<TempDir>,
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

fn fixtures(rt: &Runtime) -> Vec<Fixture> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("db");
    let url = path.to_str().expect("a UTF-8 temporary path").to_owned();
    let sled = rt.block_on(Store::open(&url)).expect("open sled");
    vec![
        Fixture {
            name: "sled",
            store: sled,
            _dir: Some(dir),
        },
        Fixture {
            name: "memory",
            store: Store::memory(),
            _dir: None,
        },
    ]
}

/// Saves a conversation of `n` messages of 600 bytes to `exec`, one save per message.
async fn conversation(store: &Store, exec: &str, n: usize, rng: &mut XorShift) {
    let mut messages = Vec::with_capacity(n);
    for step in 1..=n as u64 {
        messages.push(rng.letters(600));
        let state = Conversation {
            messages: &messages,
            step,
        };
        let cp = Checkpoint::new(exec, "chat", &state).expect("checkpoint");
        store.save(cp).await.expect("save");
    }
}

/// The 10,000-checkpoint execution (see the module documentation).
async fn long_execution(store: &Store) {
    let mut rng = XorShift::new(10_000);
    let mut messages: Vec<String> = Vec::with_capacity(LONG_WINDOW);
    let mut batch = Vec::with_capacity(LONG_BATCH as usize);
    for step in 1..=LONG_STEPS {
        if messages.len() == LONG_WINDOW {
            messages.clear();
        }
        messages.push(rng.letters(100));
        let state = Conversation {
            messages: &messages,
            step,
        };
        let cp = Checkpoint::new(LONG_EXEC, "chat", &state)
            .expect("checkpoint")
            .with_metadata("step", step);
        batch.push(cp);
        if batch.len() as u64 == LONG_BATCH {
            store
                .save_batch(std::mem::take(&mut batch))
                .await
                .expect("save batch");
        }
    }
    let latest = store.latest(LONG_EXEC).await.expect("latest");
    assert_eq!(latest.map(|c| c.version), Some(LONG_STEPS));
}

fn bench_save(c: &mut Criterion, rt: &Runtime, fixtures: &[Fixture]) {
    let mut group = c.benchmark_group("save");
    for f in fixtures {
        #[derive(Default)]
        struct Conv {
            exec: u64,
            messages: Vec<String>,
            rng: Option<XorShift>,
        }
        let conv = Rc::new(RefCell::new(Conv::default()));
        group.bench_function(format!("conversation/{}", f.name), |b| {
            b.to_async(rt).iter_custom(|iters| {
                let store = f.store.clone();
                let conv = conv.clone();
                async move {
                    let mut c = std::mem::take(&mut *conv.borrow_mut());
                    let mut rng = c.rng.take().unwrap_or_else(|| XorShift::new(1));
                    let start = Instant::now();
                    for _ in 0..iters {
                        if c.messages.len() == CONVERSATION_CAP || c.exec == 0 {
                            c.exec += 1;
                            c.messages.clear();
                        }
                        c.messages.push(rng.letters(600));
                        let state = Conversation {
                            messages: &c.messages,
                            step: c.messages.len() as u64,
                        };
                        let cp = Checkpoint::new(&format!("save-{}", c.exec), "chat", &state)
                            .expect("checkpoint");
                        store.save(cp).await.expect("save");
                    }
                    let elapsed = start.elapsed();
                    c.rng = Some(rng);
                    *conv.borrow_mut() = c;
                    elapsed
                }
            })
        });
    }
    group.finish();
}

fn bench_load_latest(c: &mut Criterion, rt: &Runtime, fixtures: &[Fixture]) {
    let mut group = c.benchmark_group("load_latest");
    for f in fixtures {
        let exec = "latest-exec";
        rt.block_on(conversation(
            &f.store,
            exec,
            CONVERSATION_CAP,
            &mut XorShift::new(2),
        ));
        group.bench_function(format!("warm/{}", f.name), |b| {
            b.to_async(rt).iter(|| {
                let store = f.store.clone();
                async move { store.latest(exec).await.expect("latest").expect("saved") }
            })
        });
        group.bench_function(format!("cold/{}", f.name), |b| {
            b.to_async(rt).iter(|| {
                let store = Store::with_backend(f.store.backend().clone());
                async move { store.latest(exec).await.expect("latest").expect("saved") }
            })
        });
    }
    group.finish();
}

fn bench_long_execution(c: &mut Criterion, rt: &Runtime, fixtures: &[Fixture]) {
    for f in fixtures {
        rt.block_on(long_execution(&f.store));
    }
    let mut group = c.benchmark_group("load_old");
    for f in fixtures {
        let mut rng = XorShift::new(3);
        group.bench_function(format!("random_of_10k/{}", f.name), |b| {
            b.to_async(rt).iter(|| {
                let version = 1 + rng.next() % LONG_STEPS;
                let store = f.store.clone();
                async move { store.at_version(LONG_EXEC, version).await.expect("load") }
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("load_latest");
    for f in fixtures {
        // A new `Store` each time (nothing cached): the index of 10,000 checkpoints is folded
        // from the log and the latest state rebuilt, as a restarted process does.
        group.bench_function(format!("cold_of_10k/{}", f.name), |b| {
            b.to_async(rt).iter(|| {
                let store = Store::with_backend(f.store.backend().clone());
                async move {
                    store
                        .latest(LONG_EXEC)
                        .await
                        .expect("latest")
                        .expect("saved")
                }
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("tree_of_10k");
    for f in fixtures {
        let middle = CheckpointId::new(LONG_EXEC, LONG_STEPS / 2).expect("id");
        let latest = CheckpointId::new(LONG_EXEC, LONG_STEPS).expect("id");
        group.bench_function(format!("heads/{}", f.name), |b| {
            b.to_async(rt).iter(|| {
                let store = f.store.clone();
                async move { store.heads(LONG_EXEC).await.expect("heads") }
            })
        });
        group.bench_function(format!("children/{}", f.name), |b| {
            b.to_async(rt).iter(|| {
                let (store, middle) = (f.store.clone(), middle.clone());
                async move { store.children(&middle).await.expect("children") }
            })
        });
        group.bench_function(format!("branch_100/{}", f.name), |b| {
            b.to_async(rt).iter(|| {
                let (store, latest) = (f.store.clone(), latest.clone());
                async move {
                    let path = store
                        .branch(&latest, HistoryQuery::default().limit(100))
                        .await
                        .expect("branch");
                    assert_eq!(path.len(), 100);
                    path
                }
            })
        });
    }
    group.finish();
    let mut group = c.benchmark_group("history_20");
    for f in fixtures {
        group.bench_function(format!("of_10k/{}", f.name), |b| {
            b.to_async(rt).iter(|| {
                let store = f.store.clone();
                async move {
                    let h = store
                        .history(LONG_EXEC, HistoryQuery::default().limit(20))
                        .await
                        .expect("history");
                    assert_eq!(h.len(), 20);
                    h
                }
            })
        });
    }
    group.finish();
}

const REOPEN_STEPS: u64 = 20_000;
const REOPEN_EXEC: &str = "long";

/// A small state of the long shape at `step` (~140 bytes of MessagePack).
fn small_state(step: u64) -> serde_json::Value {
    serde_json::json!({
        "step": step,
        "status": if step.is_multiple_of(3) { "waiting" } else { "running" },
        "attempt": step % 7,
        "last_tool": format!("tool-{}", step % 11),
        "score": (step % 100) as f64 / 100.0,
        "note": format!("step {step} of a long run"),
    })
}

/// URLs of empty stores named `tag` on each backend measured by the shape groups: sled and
/// SQLite in `dir`, and PostgreSQL (a schema of its own) when `CKPT_TEST_POSTGRES_URL` names a
/// server (`scripts/servers.sh start` prints the variable).
fn shape_urls(dir: &TempDir, tag: &str) -> Vec<(&'static str, String)> {
    let mut urls = vec![
        (
            "sled",
            format!(
                "sled://{}",
                dir.path().join(format!("{tag}-sled")).display()
            ),
        ),
        (
            "sqlite",
            format!(
                "sqlite://{}",
                dir.path().join(format!("{tag}.db")).display()
            ),
        ),
    ];
    if let Ok(url) = std::env::var("CKPT_TEST_POSTGRES_URL") {
        let schema = format!("bench_{tag}_{}", std::process::id());
        let sep = if url.contains('?') { '&' } else { '?' };
        urls.push(("postgres", format!("{url}{sep}schema={schema}")));
    }
    urls
}

/// Stores (their URLs, and the directory holding them) with one execution of
/// [`REOPEN_STEPS`] small checkpoints.
fn reopen_fixtures(rt: &Runtime) -> (Vec<(&'static str, String)>, TempDir) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let urls = shape_urls(&dir, "reopen");
    for (_, url) in &urls {
        rt.block_on(async {
            let store = Store::open(url).await.expect("open");
            for first in (1..=REOPEN_STEPS).step_by(500) {
                let batch = (first..first + 500)
                    .map(|step| {
                        Checkpoint::new(REOPEN_EXEC, "step", &small_state(step))
                            .expect("checkpoint")
                            .with_metadata("step", step)
                    })
                    .collect();
                store.save_batch(batch).await.expect("save batch");
            }
            store.flush().await.expect("flush");
        });
    }
    (urls, dir)
}

fn bench_reopen(c: &mut Criterion, rt: &Runtime) {
    let (urls, _dir) = reopen_fixtures(rt);
    let mut group = c.benchmark_group("reopen_20k");
    group.sample_size(10);
    for (name, url) in &urls {
        // The open alone: what the reads below add to it is the rest.
        group.bench_function(format!("open/{name}"), |b| {
            b.to_async(rt)
                .iter(|| async move { drop(Store::open(url).await.expect("open")) })
        });
        group.bench_function(format!("open_and_latest/{name}"), |b| {
            b.to_async(rt).iter(|| async move {
                let store = Store::open(url).await.expect("open");
                let latest = store.latest(REOPEN_EXEC).await.expect("latest");
                assert_eq!(latest.map(|c| c.version), Some(REOPEN_STEPS));
                drop(store);
            })
        });
        group.bench_function(format!("open_and_history_20/{name}"), |b| {
            b.to_async(rt).iter(|| async move {
                let store = Store::open(url).await.expect("open");
                let query = HistoryQuery::default().limit(20);
                let history = store.history(REOPEN_EXEC, query).await.expect("history");
                assert_eq!(history.len(), 20);
                drop(store);
            })
        });
        group.bench_function(format!("open_and_at_version/{name}"), |b| {
            b.to_async(rt).iter(|| async move {
                let store = Store::open(url).await.expect("open");
                let cp = store.at_version(REOPEN_EXEC, REOPEN_STEPS - 10).await;
                assert_eq!(cp.expect("at_version").version, REOPEN_STEPS - 10);
                drop(store);
            })
        });
    }
    group.finish();
}

/// Saves per execution of the `many` shape.
const MANY_STEPS: u32 = 5;
/// Executions of the store `many/executions_after_reopen` lists.
const MANY_EXECUTIONS: u32 = 2_000;
/// Letters of the `many` state's input and output (as `ckpt bench --workload many`).
const MANY_INPUT: usize = 600;
const MANY_OUTPUT: usize = 420;
/// Saves per execution of the `tools` shape, and the letters of its tool outputs and
/// scratchpad (as `ckpt bench --workload tools`).
const TOOLS_STEPS: u32 = 150;
const TOOLS_OUTPUT: usize = 20_000;
const TOOLS_SCRATCHPAD: usize = 2_000;

/// State of the `many` shape (the fields of `ckpt bench`'s).
#[derive(Serialize)]
struct Request<'a> {
    input: &'a str,
    step: u32,
    status: String,
    output: &'a str,
    user: String,
}

/// State of the `tools` shape (the fields of `ckpt bench`'s).
#[derive(Serialize)]
struct ToolLoop<'a> {
    step: u32,
    tool_outputs: &'a [String],
    scratchpad: &'a str,
}

/// Where a `many` writer is: the execution it saves to, that execution's input, its next step.
struct ManyCursor {
    exec: u32,
    input: String,
    step: u32,
    rng: XorShift,
}

impl ManyCursor {
    fn new(seed: u64) -> Self {
        ManyCursor {
            exec: 0,
            input: String::new(),
            step: MANY_STEPS,
            rng: XorShift::new(seed),
        }
    }

    /// The next checkpoint of the shape, on an execution named `{prefix}-{n}`: step 1 of a new
    /// execution after the last step of the previous one.
    fn next(&mut self, prefix: &str) -> Checkpoint {
        if self.step == MANY_STEPS {
            self.exec += 1;
            self.step = 0;
            self.input = self.rng.letters(MANY_INPUT);
        }
        self.step += 1;
        let output = self.rng.letters(MANY_OUTPUT);
        let state = Request {
            input: &self.input,
            step: self.step,
            status: format!("step {} of {MANY_STEPS}", self.step),
            output: &output,
            user: format!("user-{}", self.exec),
        };
        Checkpoint::new(&format!("{prefix}-{}", self.exec), "respond", &state)
            .expect("checkpoint")
            .with_metadata("source", "loop")
            .with_metadata("step", self.step)
    }
}

/// Where a `tools` writer is: its execution, the outputs so far, the next step.
struct ToolsCursor {
    exec: u32,
    outputs: Vec<String>,
    rng: XorShift,
}

impl ToolsCursor {
    fn new(seed: u64) -> Self {
        ToolsCursor {
            exec: 0,
            outputs: Vec::new(),
            rng: XorShift::new(seed),
        }
    }

    /// The next checkpoint of the shape, on an execution named `{prefix}-{n}`: a new execution
    /// after [`TOOLS_STEPS`] saves (and at the start).
    fn next(&mut self, prefix: &str) -> Checkpoint {
        if self.exec == 0 || self.outputs.len() == TOOLS_STEPS as usize {
            self.exec += 1;
            self.outputs.clear();
        }
        self.outputs.push(self.rng.letters(TOOLS_OUTPUT));
        let scratchpad = self.rng.letters(TOOLS_SCRATCHPAD);
        let step = self.outputs.len() as u32;
        let state = ToolLoop {
            step,
            tool_outputs: &self.outputs,
            scratchpad: &scratchpad,
        };
        Checkpoint::new(&format!("{prefix}-{}", self.exec), "tools", &state)
            .expect("checkpoint")
            .with_metadata("source", "loop")
            .with_metadata("step", step)
    }
}

/// One save per iteration to the store at `url` (opened on first use, so that a filtered-out
/// bench costs nothing), each checkpoint the next `make` gives from the cursor it keeps across
/// criterion's batches. Only the save is timed: building the checkpoint (random text, encoding
/// the state) is left out.
fn bench_saves<C: 'static>(
    group: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    rt: &Runtime,
    id: String,
    url: &str,
    cursor: C,
    make: fn(&mut C) -> Checkpoint,
) {
    let cursor = Rc::new(RefCell::new(Some(cursor)));
    let store = std::cell::OnceCell::new();
    group.bench_function(id, |b| {
        let store = store.get_or_init(|| rt.block_on(Store::open(url)).expect("open"));
        b.to_async(rt).iter_custom(|iters| {
            let store = store.clone();
            let cursor = cursor.clone();
            async move {
                let mut c = cursor.borrow_mut().take().expect("the cursor");
                let mut elapsed = Duration::ZERO;
                for _ in 0..iters {
                    let cp = make(&mut c);
                    let start = Instant::now();
                    store.save(cp).await.expect("save");
                    elapsed += start.elapsed();
                }
                *cursor.borrow_mut() = Some(c);
                elapsed
            }
        })
    });
}

/// Fills the store at `url` with [`MANY_EXECUTIONS`] executions of the `many` shape (in
/// batches: setup, not measured).
async fn many_executions(url: &str) {
    let store = Store::open(url).await.expect("open");
    let mut cursor = ManyCursor::new(6);
    let per_batch = 100 * MANY_STEPS;
    for _ in 0..MANY_EXECUTIONS * MANY_STEPS / per_batch {
        let batch = (0..per_batch).map(|_| cursor.next("listed")).collect();
        store.save_batch(batch).await.expect("save batch");
    }
    store.flush().await.expect("flush");
}

/// Saves one execution of [`TOOLS_STEPS`] saves of the `tools` shape (`cold-1`) to the store at
/// `url`.
async fn tools_execution(url: &str) {
    let store = Store::open(url).await.expect("open");
    let mut cursor = ToolsCursor::new(7);
    for _ in 0..TOOLS_STEPS {
        store.save(cursor.next("cold")).await.expect("save");
    }
    store.flush().await.expect("flush");
}

/// The `many` shape: saves, and listing a store of [`MANY_EXECUTIONS`] after a reopen.
fn bench_many(c: &mut Criterion, rt: &Runtime) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut group = c.benchmark_group("many");
    group.sample_size(10);
    // The saves go to stores of their own: the listed ones hold exactly their executions.
    let saves = shape_urls(&dir, "many_saves");
    for ((name, url), (_, saves_url)) in shape_urls(&dir, "many").into_iter().zip(saves) {
        bench_saves(
            &mut group,
            rt,
            format!("save/{name}"),
            &saves_url,
            ManyCursor::new(5),
            |c| c.next("save"),
        );
        let filled = std::cell::OnceCell::new();
        group.bench_function(format!("executions_after_reopen/{name}"), |b| {
            filled.get_or_init(|| rt.block_on(many_executions(&url)));
            let url = &url;
            b.to_async(rt).iter(|| async move {
                let store = Store::open(url).await.expect("open");
                let listed = store.executions().await.expect("executions");
                assert_eq!(listed.len(), MANY_EXECUTIONS as usize);
                drop(store);
            })
        });
    }
    group.finish();
}

/// The `tools` shape: saves, and the latest of a 150-save execution after a reopen.
fn bench_tools(c: &mut Criterion, rt: &Runtime) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut group = c.benchmark_group("tools");
    group.sample_size(10);
    for (name, url) in shape_urls(&dir, "tools") {
        bench_saves(
            &mut group,
            rt,
            format!("save/{name}"),
            &url,
            ToolsCursor::new(8),
            |c| c.next("save"),
        );
        let filled = std::cell::OnceCell::new();
        group.bench_function(format!("open_and_latest/{name}"), |b| {
            filled.get_or_init(|| rt.block_on(tools_execution(&url)));
            let url = &url;
            b.to_async(rt).iter(|| async move {
                let store = Store::open(url).await.expect("open");
                let latest = store.latest("cold-1").await.expect("latest");
                assert_eq!(latest.map(|c| c.version), Some(u64::from(TOOLS_STEPS)));
                drop(store);
            })
        });
    }
    group.finish();
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    bench_reopen(c, &rt);
    bench_many(c, &rt);
    bench_tools(c, &rt);
    let fixtures = fixtures(&rt);
    bench_save(c, &rt, &fixtures);
    bench_load_latest(c, &rt, &fixtures);
    bench_long_execution(c, &rt, &fixtures);
    rt.block_on(async {
        for f in &fixtures {
            f.store.flush().await.expect("flush");
        }
    });
}

criterion_group! {
    name = store;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(store);
