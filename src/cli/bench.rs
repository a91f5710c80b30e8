//! `ckpt bench`: measures the store on a workload and reports one JSON line (`--json`) or a
//! short summary.
//!
//! The `conversation` workload: `--threads` executions save concurrently (one tokio task each,
//! on the multi-thread runtime), each `--steps` times in sequence. At step n an execution's state
//! is `{messages: [every earlier message, one new message of random letters], step: n}`, saved by
//! node `chat` with metadata `{source: "loop", step: n}`. Then it times reads: the latest
//! checkpoint of each execution, a list of one execution, 50 random old versions, and 20 histories
//! of 20 headers; flushes, closes the store, and measures what it occupies.
//!
//! The `long`, `many` and `tools` workloads (issue 15's shapes) are in [`shapes`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use serde::Serialize;

use ckpt::url::{redact, StoreUrl};
use ckpt::{Checkpoint, HistoryQuery, Store};

use super::fmt;
use super::{say, unix_millis, CliResult, Context, Failure, Global};

mod shapes;

/// Options of `ckpt bench`.
#[derive(Debug, Args)]
pub struct BenchArgs {
    /// The workload to run
    #[arg(long, value_enum, default_value_t = Workload::Conversation)]
    pub workload: Workload,
    /// Writers saving concurrently (async tasks). conversation: one execution each; long, many,
    /// tools: they share the executions, each taking the next one not yet started [default: 4;
    /// 1 for long]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=4096))]
    pub threads: Option<u32>,
    /// Saves per execution, one after the other [default: 200 for conversation, 20000 for long,
    /// 5 for many, 150 for tools]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub steps: Option<u32>,
    /// Executions of the long, many and tools workloads (conversation runs one per writer)
    /// [default: 1 for long, 2000 for many, 4 for tools]
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub executions: Option<u32>,
    /// Length in bytes of each new message (random ASCII letters) of the conversation workload
    #[arg(long, default_value_t = 600, value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub message_bytes: u32,
    /// Length in bytes of each tool output of the tools workload (random ASCII letters)
    #[arg(long, default_value_t = 20_000, value_parser = clap::value_parser!(u32).range(1..=1 << 24))]
    pub tool_bytes: u32,
    /// Seed of the pseudo-random generator (xorshift) for message text and the versions read
    #[arg(long, default_value_t = 42)]
    pub seed: u64,
    /// Encrypt the store with a fresh random key (to measure encryption's cost)
    #[arg(long)]
    pub encrypt: bool,
    /// Print the results as one JSON line
    #[arg(long)]
    pub json: bool,
}

/// The workloads `ckpt bench` knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// Chat-like executions: every save adds one message to a growing list of messages
    Conversation,
    /// One long execution (20,000 saves) of a small state (~140 bytes): save rate, stored size,
    /// and a reopened store's first latest, history of 20 and old version
    Long,
    /// Many short executions (2,000 x 5 saves) of ~1 KB states, 4 writers: save rate, stored
    /// size, listing every execution warm and after a reopen
    Many,
    /// An agent's tool loop (4 x 150 saves): each save adds a ~20 KB tool output to a list and
    /// replaces a ~2 KB scratchpad; latest warm and after a reopen
    Tools,
}

impl Workload {
    fn name(self) -> &'static str {
        match self {
            Workload::Conversation => "conversation",
            Workload::Long => "long",
            Workload::Many => "many",
            Workload::Tools => "tools",
        }
    }

    /// Whether its states are small enough to keep every one for measuring them compressed.
    fn has_small_states(self) -> bool {
        matches!(self, Workload::Long | Workload::Many)
    }
}

/// Old versions loaded at random.
const RANDOM_LOADS: usize = 50;
/// Histories read, and headers per history.
const HISTORY_RUNS: usize = 20;
const HISTORY_LIMIT: usize = 20;

/// What `--json` prints: every workload prints every key, `null` where it does not measure it.
/// Times are in milliseconds: medians where several were taken, else the one sample.
#[derive(Debug, Serialize)]
struct Report {
    workload: &'static str,
    store: String,
    encrypted: bool,
    threads: u32,
    steps: u32,
    executions: u32,
    saves: u64,
    seconds: f64,
    saves_per_s: f64,
    /// Latest of an execution in the store that saved it.
    load_latest_ms: f64,
    /// Latest of an execution in a store that has cached nothing (the open not included).
    load_latest_cold_ms: Option<f64>,
    load_random_ms: Option<f64>,
    list_ms: Option<f64>,
    history_ms: Option<f64>,
    bytes_logical: u64,
    bytes_written: u64,
    bytes_stored: Option<u64>,
    /// Small-state shapes only: the distinct states offered, each compressed on its own (zstd
    /// level 3).
    bytes_content_zstd: Option<u64>,
    /// Small-state shapes only: all the states offered, compressed as one stream.
    bytes_content_zstd_stream: Option<u64>,
    /// Opening the store again (after the first handle is closed).
    reopen_ms: Option<f64>,
    /// Open + the first `latest` of an execution.
    reopen_latest_ms: Option<f64>,
    /// Open + the first `history` of 20 headers of an execution.
    reopen_history_ms: Option<f64>,
    /// Open + the first `at_version` of a random version.
    reopen_at_version_ms: Option<f64>,
    /// `executions()` (every execution with its summary) in the store that saved them.
    list_executions_ms: Option<f64>,
    /// Open + the first `executions()`.
    reopen_list_executions_ms: Option<f64>,
    /// Redis URLs only: how much the server's `used_memory` grew over the saves (bytes).
    #[serde(skip_serializing_if = "Option::is_none")]
    redis_used_memory_delta: Option<i64>,
}

/// The state of the conversation workload.
#[derive(Serialize)]
struct Conversation<'a> {
    messages: &'a [String],
    step: u32,
}

/// Runs `ckpt bench`.
pub async fn run(args: BenchArgs, global: &Global) -> CliResult {
    if args.workload != Workload::Conversation {
        return shapes::run(args, global).await;
    }
    if args.executions.is_some() {
        return Err(Failure::new(
            "--executions applies to the long, many and tools workloads; conversation runs one \
             execution per writer (--threads)",
        )
        .into());
    }
    let threads = args.threads.unwrap_or(4);
    let steps = args.steps.unwrap_or(200);
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
    let mut builder = Store::builder(&url);
    if args.encrypt {
        builder = builder.encryption(ckpt::crypto::Key::generate());
    }
    let store = builder.open().await?;
    super::watch_metrics(&url, &store);
    let stamp = unix_millis();
    let executions: Vec<String> = (1..=threads)
        .map(|n| format!("bench-{n}-{stamp}"))
        .collect();
    for exec in &executions {
        if let Some(latest) = store.latest(exec).await? {
            return Err(Failure::new(format!(
                "execution {exec} already has checkpoints (latest {}); the benchmark only writes \
                 to new executions: run it again, or use another --store",
                latest.id
            ))
            .into());
        }
    }

    // Saves.
    let memory_before = store.server_memory().await?;
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(executions.len());
    for (n, exec) in executions.iter().enumerate() {
        let rng = XorShift::new(args.seed.wrapping_add(n as u64));
        let task = conversation(store.clone(), exec.clone(), steps, args.message_bytes, rng);
        tasks.push(tokio::spawn(task));
    }
    let mut bytes_logical = 0;
    for task in tasks {
        bytes_logical += task.await.context("a benchmark task failed")??;
    }
    let elapsed = started.elapsed();
    let saves = u64::from(threads) * u64::from(steps);
    let memory_after = store.server_memory().await?;

    // Reads.
    let mut rng = XorShift::new(args.seed ^ 0x5eed_f00d_4ead_0001);
    let mut latest = Vec::with_capacity(executions.len());
    for exec in &executions {
        let t = Instant::now();
        let cp = store.latest(exec).await?;
        latest.push(t.elapsed());
        let version = cp.map_or(0, |c| c.version);
        if version != u64::from(steps) {
            return Err(Failure::new(format!(
                "execution {exec}: latest version is {version} after {} saves",
                steps
            ))
            .into());
        }
    }
    // The same from a store that has cached nothing (as after a restart): each execution's index
    // is built from its log and its latest state rebuilt from a snapshot and deltas.
    let cold = store.reopened();
    super::watch_metrics(&url, &cold);
    let mut latest_cold = Vec::with_capacity(executions.len());
    for exec in &executions {
        let t = Instant::now();
        let cp = cold.latest(exec).await?;
        latest_cold.push(t.elapsed());
        std::hint::black_box(cp);
    }
    drop(cold);
    let t = Instant::now();
    let listed = store.list(&executions[0]).await?;
    let list = t.elapsed();
    if listed.len() != steps as usize {
        return Err(Failure::new(format!(
            "execution {}: listed {} checkpoints after {} saves",
            executions[0],
            listed.len(),
            steps
        ))
        .into());
    }
    drop(listed);
    let mut random = Vec::with_capacity(RANDOM_LOADS);
    for _ in 0..RANDOM_LOADS {
        let exec = &executions[(rng.next() % executions.len() as u64) as usize];
        let version = 1 + rng.next() % u64::from(steps);
        let t = Instant::now();
        store.at_version(exec, version).await?;
        random.push(t.elapsed());
    }
    let mut history = Vec::with_capacity(HISTORY_RUNS);
    for _ in 0..HISTORY_RUNS {
        let t = Instant::now();
        let headers = store
            .history(&executions[0], HistoryQuery::default().limit(HISTORY_LIMIT))
            .await?;
        history.push(t.elapsed());
        std::hint::black_box(headers);
    }

    // What it cost.
    store.flush().await?;
    let stats = store.write_stats();
    let bytes_written = stats.frame_bytes + stats.blob_bytes;
    let bytes_stored = match &parsed {
        StoreUrl::Sled { path, .. } => {
            drop(store);
            let path = path.clone();
            Some(
                tokio::task::spawn_blocking(move || dir_size(&path))
                    .await
                    .context("measuring the store directory")?
                    .context("measuring the store directory")?,
            )
        }
        _ => {
            let bytes = store.stored_bytes().await?;
            drop(store);
            bytes
        }
    };

    let seconds = elapsed.as_secs_f64();
    let report = Report {
        workload: args.workload.name(),
        store: redact(&url),
        encrypted: args.encrypt,
        threads,
        steps,
        executions: threads,
        saves,
        seconds: round3(seconds),
        saves_per_s: round3(saves as f64 / seconds.max(1e-9)),
        load_latest_ms: median_ms(latest),
        load_latest_cold_ms: Some(median_ms(latest_cold)),
        load_random_ms: Some(median_ms(random)),
        list_ms: Some(round3(list.as_secs_f64() * 1e3)),
        history_ms: Some(median_ms(history)),
        bytes_logical,
        bytes_written,
        bytes_stored,
        bytes_content_zstd: None,
        bytes_content_zstd_stream: None,
        reopen_ms: None,
        reopen_latest_ms: None,
        reopen_history_ms: None,
        reopen_at_version_ms: None,
        list_executions_ms: None,
        reopen_list_executions_ms: None,
        redis_used_memory_delta: memory_before
            .zip(memory_after)
            .map(|(before, after)| after as i64 - before as i64),
    };
    emit(&report, args.json)
}

/// One execution of the conversation workload; returns the bytes of state it offered.
async fn conversation(
    store: Store,
    exec: String,
    steps: u32,
    message_bytes: u32,
    mut rng: XorShift,
) -> ckpt::Result<u64> {
    let mut messages: Vec<String> = Vec::with_capacity(steps as usize);
    let mut logical = 0;
    for step in 1..=steps {
        messages.push(rng.letters(message_bytes as usize));
        let state = Conversation {
            messages: &messages,
            step,
        };
        let checkpoint = Checkpoint::new(&exec, "chat", &state)?
            .with_metadata("source", "loop")
            .with_metadata("step", step);
        logical += checkpoint.state_size();
        store.save(checkpoint).await?;
    }
    Ok(logical)
}

/// Prints the report: one JSON line with `json`, else the summary for people.
fn emit(report: &Report, json: bool) -> CliResult {
    if json {
        say!("{}", serde_json::to_string(report)?)?;
        Ok(())
    } else {
        print_summary(report)
    }
}

fn print_summary(r: &Report) -> CliResult {
    say!(
        "{} workload on {}: {} executions x {} steps = {} saves by {} writers in {:.2} s ({:.1} \
         saves/s)",
        r.workload,
        r.store,
        r.executions,
        r.steps,
        r.saves,
        r.threads,
        r.seconds,
        r.saves_per_s
    )?;
    let ms = |x: Option<f64>| x.map_or_else(|| "-".to_owned(), |x| format!("{x:.3} ms"));
    if r.workload == Workload::Conversation.name() {
        say!(
            "reads (median): latest {:.3} ms ({} from a cold store), random old version {}, \
             list of {} {}, history of {HISTORY_LIMIT} {}",
            r.load_latest_ms,
            ms(r.load_latest_cold_ms),
            ms(r.load_random_ms),
            r.steps,
            ms(r.list_ms),
            ms(r.history_ms)
        )?;
    } else {
        say!(
            "reads (median): latest {:.3} ms ({} from a cold store), every execution listed {}",
            r.load_latest_ms,
            ms(r.load_latest_cold_ms),
            ms(r.list_executions_ms),
        )?;
        say!(
            "after a reopen (open {}), open + the first: latest {}, history of {HISTORY_LIMIT} \
             {}, random old version {}, list of every execution {}",
            ms(r.reopen_ms),
            ms(r.reopen_latest_ms),
            ms(r.reopen_history_ms),
            ms(r.reopen_at_version_ms),
            ms(r.reopen_list_executions_ms),
        )?;
    }
    let stored = r
        .bytes_stored
        .map_or_else(|| "unknown".to_owned(), fmt::bytes);
    say!(
        "bytes: {} of state offered, {} written (frames and blobs), {} stored",
        fmt::bytes(r.bytes_logical),
        fmt::bytes(r.bytes_written),
        stored
    )?;
    if let Some((each, stream)) = r.bytes_content_zstd.zip(r.bytes_content_zstd_stream) {
        say!(
            "the distinct states compressed (zstd -3): {} each on its own, {} as one stream",
            fmt::bytes(each),
            fmt::bytes(stream)
        )?;
    }
    Ok(())
}

fn median_ms(mut samples: Vec<Duration>) -> f64 {
    samples.sort();
    let n = samples.len();
    let median = match n {
        0 => return 0.0,
        _ if n % 2 == 1 => samples[n / 2].as_secs_f64(),
        _ => (samples[n / 2 - 1].as_secs_f64() + samples[n / 2].as_secs_f64()) / 2.0,
    };
    round3(median * 1e3)
}

fn round3(x: f64) -> f64 {
    (x * 1e3).round() / 1e3
}

/// Total size of the files under `path`.
fn dir_size(path: &Path) -> std::io::Result<u64> {
    let mut total = 0;
    let mut pending = vec![path.to_path_buf()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let meta = entry.metadata()?;
            if meta.is_dir() {
                pending.push(entry.path());
            } else {
                total += meta.len();
            }
        }
    }
    Ok(total)
}

/// A directory under the system's temporary directory, removed on drop.
struct ScratchDir(PathBuf);

impl ScratchDir {
    fn create() -> CliResult<Self> {
        let path = std::env::temp_dir().join(format!(
            "ckpt-bench-{}-{}",
            std::process::id(),
            unix_millis()
        ));
        std::fs::create_dir_all(&path)
            .with_context(|| format!("creating a scratch directory {}", path.display()))?;
        Ok(ScratchDir(path))
    }

    fn url(&self) -> CliResult<String> {
        self.0.to_str().map(str::to_owned).ok_or_else(|| {
            Failure::new(format!(
                "the temporary directory {} is not valid UTF-8; pass --store",
                self.0.display()
            ))
            .into()
        })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// xorshift64*: small, fast, and good enough for benchmark text. Seeded through splitmix64 so
/// that any seed (0 included) gives a good start.
#[derive(Debug, Clone)]
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        let mut z = seed.wrapping_add(0x9e37_79b9_7f4a_7c15);
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        XorShift(if z == 0 { 0x2545_f491_4f6c_dd1d } else { z })
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// `len` random ASCII letters (a-z, A-Z).
    fn letters(&mut self, len: usize) -> String {
        const ALPHABET: &[u8; 52] = b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ";
        (0..len)
            .map(|_| char::from(ALPHABET[(self.next() >> 32) as usize % ALPHABET.len()]))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xorshift_is_repeatable_and_spreads() {
        let a = XorShift::new(42).letters(600);
        assert_eq!(a, XorShift::new(42).letters(600));
        assert_ne!(a, XorShift::new(43).letters(600));
        assert_eq!(a.len(), 600);
        assert!(a.bytes().all(|b| b.is_ascii_alphabetic()));
        assert!(
            a.bytes().any(|b| b.is_ascii_uppercase()) && a.bytes().any(|b| b.is_ascii_lowercase())
        );
        assert!(XorShift::new(0).next() != 0);
    }

    #[test]
    fn medians() {
        let ms = |v: &[u64]| median_ms(v.iter().map(|&x| Duration::from_millis(x)).collect());
        assert_eq!(ms(&[3, 1, 2]), 2.0);
        assert_eq!(ms(&[4, 1, 2, 3]), 2.5);
        assert_eq!(ms(&[]), 0.0);
    }
}
