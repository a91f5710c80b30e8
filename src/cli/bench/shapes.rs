//! The workload shapes of issue 15, each one measured the same way as
//! `benches/langgraph_shapes.py` measures LangGraph's `AsyncSqliteSaver`, so that the two can be
//! compared in one run on one machine:
//!
//! - `long`: one execution of 20,000 saves of a small state (~140 bytes as MessagePack: a step
//!   counter, a status string, a node name, a few numbers and a 52-letter cursor, all changed at
//!   every step), one writer.
//! - `many`: 2,000 executions of 5 saves of a ~1 KB state (a 600-letter input set at the first
//!   step, a 420-letter output replaced at every step, a step and a status), 4 writers each taking
//!   the next execution not yet started and saving its steps one after the other.
//! - `tools`: 4 executions of 150 saves, 4 writers; each save appends a ~20 KB tool output to a
//!   list and replaces a ~2 KB scratchpad (the final states are ~3 MB).
//!
//! Each measures the save rate and what the store occupies; then warm reads (the latest of up to
//! 50 executions, every execution listed), and reads from a store that has cached nothing: the
//! store is closed and opened again (`Store::open` of the same URL; `memory://` can only be
//! [`Store::reopened`]), and the open plus the first `latest`, the first `history` of 20, the
//! first `at_version` of a random version and the first `executions()` are each timed from their
//! own reopen, [`COLD_RUNS`] times each (medians reported).

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use ckpt::url::{redact, StoreUrl};
use ckpt::{Checkpoint, HistoryQuery, Store};

use super::super::{unix_millis, CliResult, Context, Failure, Global};
use super::{
    dir_size, emit, median_ms, round3, BenchArgs, Report, ScratchDir, Workload, XorShift,
    HISTORY_LIMIT,
};

/// Reopens per cold measure (latest, history, at_version, executions).
const COLD_RUNS: usize = 3;
/// Executions whose latest is read warm (the first ones; fewer when there are fewer).
const WARM_LATEST: usize = 50;
/// Letters of the `long` state's cursor, of the `many` state's input and output, and of the
/// `tools` state's scratchpad: chosen so the states are the sizes issue 15 measured (~140 B,
/// ~1,080 B).
const LONG_CURSOR: usize = 52;
const MANY_INPUT: usize = 600;
const MANY_OUTPUT: usize = 420;
const TOOLS_SCRATCHPAD: usize = 2_000;

/// The sizes of a run: the shape's defaults unless given on the command line.
#[derive(Debug, Clone, Copy)]
struct Sizes {
    executions: u32,
    threads: u32,
    steps: u32,
    tool_bytes: u32,
}

impl Sizes {
    fn of(args: &BenchArgs) -> Sizes {
        let (executions, threads, steps) = match args.workload {
            Workload::Long => (1, 1, 20_000),
            Workload::Many => (2_000, 4, 5),
            // (Conversation never comes here: `bench::run` runs it.)
            Workload::Tools | Workload::Conversation => (4, 4, 150),
        };
        Sizes {
            executions: args.executions.unwrap_or(executions),
            threads: args.threads.unwrap_or(threads),
            steps: args.steps.unwrap_or(steps),
            tool_bytes: args.tool_bytes,
        }
    }
}

/// State of the `long` workload (every field changes at every step).
#[derive(Serialize)]
struct Small<'a> {
    step: u32,
    status: String,
    node: &'static str,
    tokens: u64,
    retries: u32,
    score: f64,
    cursor: &'a str,
    done: bool,
}

/// State of the `many` workload.
#[derive(Serialize)]
struct Request<'a> {
    input: &'a str,
    step: u32,
    status: String,
    output: &'a str,
    user: String,
}

/// State of the `tools` workload.
#[derive(Serialize)]
struct ToolLoop<'a> {
    step: u32,
    tool_outputs: &'a [String],
    scratchpad: &'a str,
}

/// Opens the store the run measures, again and again.
struct Opener {
    url: String,
    key: Option<ckpt::crypto::Key>,
    /// `memory://` lives as long as a handle on its backend: it is never closed, only
    /// [`Store::reopened`].
    memory: bool,
}

impl Opener {
    async fn open(&self) -> ckpt::Result<Store> {
        let mut builder = Store::builder(&self.url);
        if let Some(key) = &self.key {
            builder = builder.encryption(key.clone());
        }
        let store = builder.open().await?;
        super::super::watch_metrics(&self.url, &store);
        Ok(store)
    }

    /// Closes `store` and opens its storage again, as a new process would; returns the new
    /// store and how long the open took.
    async fn reopen(&self, store: Store) -> ckpt::Result<(Store, Duration)> {
        let started = Instant::now();
        if self.memory {
            let fresh = store.reopened();
            super::super::watch_metrics(&self.url, &fresh);
            return Ok((fresh, started.elapsed()));
        }
        // Closed before the clock starts: sled flushes on close, and holds a lock on its
        // directory until then.
        drop(store);
        let started = Instant::now();
        let fresh = self.open().await?;
        Ok((fresh, started.elapsed()))
    }
}

/// Runs the `long`, `many` or `tools` workload.
pub(super) async fn run(args: BenchArgs, global: &Global) -> CliResult {
    let sizes = Sizes::of(&args);
    let workload = args.workload;
    // Without a store, a fresh sled database in a scratch directory removed afterwards.
    let scratch;
    let url = match &global.store {
        Some(url) => url.clone(),
        None => {
            scratch = ScratchDir::create()?;
            scratch.url()?
        }
    };
    let parsed = StoreUrl::parse(&url)?;
    let opener = Opener {
        url: url.clone(),
        key: args.encrypt.then(ckpt::crypto::Key::generate),
        memory: matches!(parsed, StoreUrl::Memory),
    };
    let store = opener.open().await?;
    let stamp = unix_millis();
    let names: Arc<Vec<String>> = Arc::new(
        (1..=sizes.executions)
            .map(|n| format!("bench-{}-{n}-{stamp}", workload.name()))
            .collect(),
    );
    {
        // Checked through a handle of its own, so the measured store starts with nothing cached
        // (a first save of a new execution pays whatever it pays).
        let probe = store.reopened();
        for exec in [names.first(), names.last()].into_iter().flatten() {
            if let Some(latest) = probe.latest(exec).await? {
                return Err(Failure::new(format!(
                    "execution {exec} already has checkpoints (latest {}); the benchmark only \
                     writes to new executions: run it again, or use another --store",
                    latest.id
                ))
                .into());
            }
        }
    }

    // Saves.
    let memory_before = store.server_memory().await?;
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(sizes.threads as usize);
    for _ in 0..sizes.threads {
        tasks.push(tokio::spawn(writer(
            store.clone(),
            workload,
            sizes,
            names.clone(),
            next.clone(),
            args.seed,
        )));
    }
    let mut bytes_logical = 0;
    let mut offered = Vec::new();
    for task in tasks {
        let (logical, states) = task.await.context("a benchmark task failed")??;
        bytes_logical += logical;
        offered.extend(states);
    }
    let elapsed = started.elapsed();
    let content = compressed_content(offered)?;
    let saves = u64::from(sizes.executions) * u64::from(sizes.steps);
    let memory_after = store.server_memory().await?;

    // Warm reads.
    let t = Instant::now();
    let listed = store.executions().await?;
    let list_executions = t.elapsed();
    check_listing(&listed, &names, sizes.steps)?;
    drop(listed);
    let mut latest = Vec::new();
    for exec in names.iter().take(WARM_LATEST) {
        let t = Instant::now();
        let cp = store.latest(exec).await?;
        latest.push(t.elapsed());
        check_latest(exec, cp.map(|c| c.version), sizes.steps)?;
    }

    // What it cost, measured before any reopen (a sled open writes a little).
    store.flush().await?;
    let stats = store.write_stats();
    let bytes_written = stats.frame_bytes + stats.blob_bytes;
    let (store, bytes_stored) = match &parsed {
        StoreUrl::Sled { path, .. } => {
            drop(store);
            let path = path.clone();
            let bytes = tokio::task::spawn_blocking(move || dir_size(&path))
                .await
                .context("measuring the store directory")?
                .context("measuring the store directory")?;
            (opener.open().await?, Some(bytes))
        }
        _ => {
            let bytes = store.stored_bytes().await?;
            (store, bytes)
        }
    };

    // Cold reads, each from its own reopen.
    let mut rng = XorShift::new(args.seed ^ 0x5eed_f00d_4ead_0002);
    let mut cold = Cold::default();
    let mut store = store;
    for _ in 0..COLD_RUNS {
        let exec = &names[(rng.next() % names.len() as u64) as usize];

        let (fresh, open) = opener.reopen(store).await?;
        let t = Instant::now();
        let cp = fresh.latest(exec).await?;
        let read = t.elapsed();
        check_latest(exec, cp.map(|c| c.version), sizes.steps)?;
        cold.open.push(open);
        cold.latest.push(read);
        cold.open_latest.push(open + read);

        let (fresh, open) = opener.reopen(fresh).await?;
        let t = Instant::now();
        let headers = fresh
            .history(exec, HistoryQuery::default().limit(HISTORY_LIMIT))
            .await?;
        cold.open_history.push(open + t.elapsed());
        cold.open.push(open);
        let expected = HISTORY_LIMIT.min(sizes.steps as usize);
        if headers.len() != expected
            || headers.first().map(|h| h.version) != Some(sizes.steps.into())
        {
            return Err(Failure::new(format!(
                "execution {exec}: a history of {HISTORY_LIMIT} after a reopen has {} headers, \
                 the newest {:?} (expected {expected}, the newest {})",
                headers.len(),
                headers.first().map(|h| h.version),
                sizes.steps
            ))
            .into());
        }

        let version = 1 + rng.next() % u64::from(sizes.steps);
        let (fresh, open) = opener.reopen(fresh).await?;
        let t = Instant::now();
        let cp = fresh.at_version(exec, version).await?;
        cold.open_at_version.push(open + t.elapsed());
        cold.open.push(open);
        if cp.version != version {
            return Err(Failure::new(format!(
                "execution {exec}: version {version} loaded after a reopen is version {}",
                cp.version
            ))
            .into());
        }

        let (fresh, open) = opener.reopen(fresh).await?;
        let t = Instant::now();
        let listed = fresh.executions().await?;
        cold.open_executions.push(open + t.elapsed());
        cold.open.push(open);
        check_listing(&listed, &names, sizes.steps)?;
        store = fresh;
    }
    drop(store);

    let seconds = elapsed.as_secs_f64();
    let report = Report {
        workload: workload.name(),
        store: redact(&url),
        encrypted: args.encrypt,
        threads: sizes.threads,
        steps: sizes.steps,
        executions: sizes.executions,
        saves,
        seconds: round3(seconds),
        saves_per_s: round3(saves as f64 / seconds.max(1e-9)),
        load_latest_ms: median_ms(latest),
        load_latest_cold_ms: Some(median_ms(cold.latest)),
        load_random_ms: None,
        list_ms: None,
        history_ms: None,
        bytes_logical,
        bytes_written,
        bytes_stored,
        bytes_content_zstd: content.map(|c| c.each),
        bytes_content_zstd_stream: content.map(|c| c.stream),
        reopen_ms: Some(median_ms(cold.open)),
        reopen_latest_ms: Some(median_ms(cold.open_latest)),
        reopen_history_ms: Some(median_ms(cold.open_history)),
        reopen_at_version_ms: Some(median_ms(cold.open_at_version)),
        list_executions_ms: Some(round3(list_executions.as_secs_f64() * 1e3)),
        reopen_list_executions_ms: Some(median_ms(cold.open_executions)),
        redis_used_memory_delta: memory_before
            .zip(memory_after)
            .map(|(before, after)| after as i64 - before as i64),
    };
    emit(&report, args.json)
}

/// Samples of the cold reads.
#[derive(Default)]
struct Cold {
    open: Vec<Duration>,
    latest: Vec<Duration>,
    open_latest: Vec<Duration>,
    open_history: Vec<Duration>,
    open_at_version: Vec<Duration>,
    open_executions: Vec<Duration>,
}

/// One writer: takes the next execution nobody has started and saves all its steps, until none
/// is left; returns the bytes of state it offered, and (small states only) the states'
/// MessagePack encodings, for [`compressed_content`].
async fn writer(
    store: Store,
    workload: Workload,
    sizes: Sizes,
    names: Arc<Vec<String>>,
    next: Arc<AtomicUsize>,
    seed: u64,
) -> ckpt::Result<(u64, Vec<Vec<u8>>)> {
    let mut logical = 0;
    let mut offered = Vec::new();
    loop {
        let n = next.fetch_add(1, Ordering::Relaxed);
        let Some(exec) = names.get(n) else {
            return Ok((logical, offered));
        };
        let mut rng = XorShift::new(seed.wrapping_add(n as u64));
        // What the execution keeps from step to step.
        let input = match workload {
            Workload::Many => rng.letters(MANY_INPUT),
            _ => String::new(),
        };
        let mut outputs: Vec<String> = Vec::new();
        for step in 1..=sizes.steps {
            let checkpoint = match workload {
                Workload::Long => {
                    let node = ["plan", "act", "observe"][step as usize % 3];
                    let cursor = rng.letters(LONG_CURSOR);
                    let state = Small {
                        step,
                        status: format!("running step {step}"),
                        node,
                        tokens: u64::from(step) * 37,
                        retries: step % 4,
                        score: f64::from(step % 1000) / 1000.0,
                        cursor: &cursor,
                        done: false,
                    };
                    Checkpoint::new(exec, node, &state)?
                }
                Workload::Many => {
                    let output = rng.letters(MANY_OUTPUT);
                    let state = Request {
                        input: &input,
                        step,
                        status: format!("step {step} of {}", sizes.steps),
                        output: &output,
                        user: format!("user-{n}"),
                    };
                    Checkpoint::new(exec, "respond", &state)?
                }
                Workload::Tools | Workload::Conversation => {
                    outputs.push(rng.letters(sizes.tool_bytes as usize));
                    let scratchpad = rng.letters(TOOLS_SCRATCHPAD);
                    let state = ToolLoop {
                        step,
                        tool_outputs: &outputs,
                        scratchpad: &scratchpad,
                    };
                    Checkpoint::new(exec, "tools", &state)?
                }
            };
            let checkpoint = checkpoint
                .with_metadata("source", "loop")
                .with_metadata("step", step);
            logical += checkpoint.state_size();
            if workload.has_small_states() {
                offered.push(ckpt::codec::value::encode(checkpoint.state_value()));
            }
            store.save(checkpoint).await?;
        }
    }
}

/// What the offered states weigh compressed: the yardstick of issue 15's bytes goal.
#[derive(Debug, Clone, Copy)]
struct Content {
    /// Every distinct state compressed on its own (zstd level 3): what a store that keeps each
    /// state once, compressed, would write.
    each: u64,
    /// All the states in the order offered, compressed as one stream (zstd level 3, with a
    /// window that spans many states): close to the content's own entropy, a bound no store of
    /// separately readable checkpoints reaches.
    stream: u64,
}

/// Measures [`Content`] of the states a run offered (`None` when it kept none: large states).
fn compressed_content(offered: Vec<Vec<u8>>) -> Result<Option<Content>, Failure> {
    if offered.is_empty() {
        return Ok(None);
    }
    let compress = |bytes: &[u8]| {
        zstd::bulk::compress(bytes, 3)
            .map(|c| c.len() as u64)
            .map_err(|e| Failure::new(format!("compressing the offered states: {e}")))
    };
    let mut seen = HashSet::new();
    let mut each = 0;
    let mut stream = Vec::new();
    for state in &offered {
        stream.extend_from_slice(state);
        if seen.insert(state.as_slice()) {
            each += compress(state)?;
        }
    }
    Ok(Some(Content {
        each,
        stream: compress(&stream)?,
    }))
}

/// Checks that a latest checkpoint is the last of `steps` saves.
fn check_latest(exec: &str, version: Option<u64>, steps: u32) -> CliResult {
    if version != Some(u64::from(steps)) {
        return Err(Failure::new(format!(
            "execution {exec}: latest version is {version:?} after {steps} saves"
        ))
        .into());
    }
    Ok(())
}

/// Checks that `executions()` lists every execution of the run with all its saves.
fn check_listing(listed: &[ckpt::ExecutionSummary], names: &[String], steps: u32) -> CliResult {
    let ours: HashSet<&str> = names.iter().map(String::as_str).collect();
    let mut found = 0;
    for summary in listed {
        if !ours.contains(summary.execution_id.as_str()) {
            continue;
        }
        found += 1;
        if summary.checkpoints != steps as usize || summary.latest_version != u64::from(steps) {
            return Err(Failure::new(format!(
                "execution {}: listed with {} checkpoints, the latest version {}, after {steps} \
                 saves",
                summary.execution_id, summary.checkpoints, summary.latest_version
            ))
            .into());
        }
    }
    if found != names.len() {
        return Err(Failure::new(format!(
            "{found} of the run's {} executions are listed",
            names.len()
        ))
        .into());
    }
    Ok(())
}
