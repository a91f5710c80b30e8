//! `ckpt demo`: the crash-and-resume story in one command.
//!
//! A small "research agent" (nodes plan, search, answer, in turn) works on a question and saves a
//! checkpoint after every step. Half way it crashes: the loop returns early and the store is
//! dropped. The demo then opens the store again from its URL, loads the execution's latest
//! checkpoint, resumes from it to the end, and prints the execution's history and what was stored.

use clap::Args;
use serde::{Deserialize, Serialize};

use ckpt::url::{redact, StoreUrl};
use ckpt::{Checkpoint, HistoryQuery, Store, WriteStats};

use super::fmt;
use super::{say, CliResult, Global};

/// Options of `ckpt demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Steps the agent runs in all; it crashes after half of them and resumes for the rest
    #[arg(long, default_value_t = 6, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub steps: u32,
}

/// The agent's state, saved after every step.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct AgentState {
    question: String,
    messages: Vec<Message>,
    step: u32,
    done: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Message {
    role: String,
    content: String,
}

const QUESTION: &str = "Why does an append-only log of checkpoints make an agent easy to resume?";
const NODES: [&str; 3] = ["plan", "search", "answer"];
const TOPICS: [&str; 4] = [
    "append-only logs",
    "content addressing",
    "delta encoding",
    "crash recovery",
];

impl AgentState {
    fn new() -> Self {
        AgentState {
            question: QUESTION.into(),
            messages: vec![Message {
                role: "user".into(),
                content: QUESTION.into(),
            }],
            step: 0,
            done: false,
        }
    }

    /// Runs the next step; returns the node that ran.
    fn advance(&mut self, steps: u32) -> &'static str {
        self.step += 1;
        let n = self.step;
        let node = NODES[((n - 1) % 3) as usize];
        let topic = TOPICS[((n - 1) / 3 % 4) as usize];
        let (role, content) = match node {
            "plan" => (
                "assistant",
                format!(
                    "Plan (step {n}): look up how {topic} helps, then fold it into the answer."
                ),
            ),
            "search" => (
                "tool",
                format!(
                    "Search results (step {n}): 3 sources on {topic}; each notes that state \
                     saved before a failure can be reloaded exactly as it was."
                ),
            ),
            _ => (
                "assistant",
                format!(
                    "Answer (step {n}): with {topic}, every step's state is kept, so a crashed \
                     run continues from its last checkpoint instead of starting over."
                ),
            ),
        };
        self.messages.push(Message {
            role: role.into(),
            content,
        });
        self.done = n >= steps;
        node
    }
}

/// Runs the agent from `state` until step `steps`, saving after every step. With `crash_after`,
/// returns early once that step is saved: the simulated crash.
async fn run_agent(
    store: &Store,
    execution: &str,
    state: &mut AgentState,
    steps: u32,
    crash_after: Option<u32>,
) -> CliResult {
    while state.step < steps {
        if crash_after.is_some_and(|c| state.step >= c) {
            return Ok(());
        }
        let node = state.advance(steps);
        let checkpoint = Checkpoint::new(execution, node, state)?
            .with_metadata("step", state.step)
            .with_metadata("source", "demo");
        let saved = store.save(checkpoint).await?;
        say!(
            "  step {:>2}  {:<6}  saved {}  ({} of state, {} messages)",
            state.step,
            node,
            saved.id,
            fmt::bytes(saved.state_size()),
            state.messages.len()
        )?;
    }
    Ok(())
}

/// The first run, which crashes half way. Returns what it wrote and, for `memory://` (which does
/// not outlive its store), the store reopened on the same in-process data; a durable store is
/// simply dropped.
async fn first_run(
    url: &str,
    is_memory: bool,
    execution: &str,
    steps: u32,
) -> CliResult<(WriteStats, Option<Store>)> {
    let store = super::open_or_create(url).await?;
    let mut state = AgentState::new();
    let crash_at = steps / 2;
    run_agent(&store, execution, &mut state, steps, Some(crash_at)).await?;
    say!("  !! crash after step {crash_at}: the process loses everything in memory")?;
    let keep = is_memory.then(|| store.reopened());
    if let Some(reopened) = &keep {
        super::watch_metrics(url, reopened);
    }
    Ok((store.write_stats(), keep))
}

/// Runs `ckpt demo`.
pub async fn run(args: DemoArgs, global: &Global) -> CliResult {
    let url = global.store_url();
    // Refuse a bad URL before telling any story.
    let is_memory = matches!(StoreUrl::parse(url)?, StoreUrl::Memory);
    let steps = args.steps;
    let execution = format!("demo-{}", super::unix_millis());
    say!(
        "research agent: {steps} step{} (plan, search, answer), execution {execution}, store {}",
        if steps == 1 { "" } else { "s" },
        redact(url)
    )?;
    say!("question: {QUESTION}")?;
    say!("")?;

    say!("run 1:")?;
    let (first_stats, memory_store) = first_run(url, is_memory, &execution, steps).await?;

    say!("")?;
    say!("run 2: reopening the store")?;
    let store = match memory_store {
        // memory:// is gone with its store: reattach to the same in-process data instead.
        Some(reopened) => reopened,
        None => {
            let store = Store::open(url).await?;
            super::watch_metrics(url, &store);
            store
        }
    };
    let mut state = match store.latest(&execution).await? {
        Some(latest) => {
            let state: AgentState = latest.state()?;
            say!("  resuming from {} (step {})", latest.id, state.step)?;
            state
        }
        None => {
            say!("  no checkpoint of {execution} to resume from; starting from the beginning")?;
            AgentState::new()
        }
    };
    run_agent(&store, &execution, &mut state, steps, None).await?;
    if let Some(last) = state.messages.last() {
        say!("  done: {}", last.content)?;
    }

    let mut history = store.history(&execution, HistoryQuery::default()).await?;
    history.reverse();
    say!("")?;
    say!("history of {execution} (oldest first):")?;
    let table = fmt::headers_table(&history);
    for line in table.lines("  ") {
        say!("{line}")?;
    }

    store.flush().await?;
    let second = store.write_stats();
    let frames = first_stats.frames + second.frames;
    let frame_bytes = first_stats.frame_bytes + second.frame_bytes;
    let blobs = first_stats.blobs + second.blobs;
    let blob_bytes = first_stats.blob_bytes + second.blob_bytes;
    let logical: u64 = history.iter().map(|h| h.state_size).sum();
    say!("")?;
    say!(
        "stored {} checkpoints holding {} of state in {}: {frames} log frames ({}) and {blobs} blobs ({})",
        history.len(),
        fmt::bytes(logical),
        fmt::bytes(frame_bytes + blob_bytes),
        fmt::bytes(frame_bytes),
        fmt::bytes(blob_bytes)
    )?;
    Ok(())
}
