//! Exactly-once journaled tasks under a real SIGKILL (issue 14, part 3): a child process (this
//! test binary, re-run with env vars) runs an 8-step graph on a durable sled store; each step's
//! node calls three tasks (`ctx.task`), each appending `<step>:<task>` to a side-effect file and
//! printing it. The parent kills the child at a seeded random moment after a random number of
//! effects, restarts it to continue the same execution and kills it again (1 to 3 kills a round),
//! then finishes the execution in-process with `start_or_resume`. It checks:
//!
//! - after every kill, the log's journal (checkpointed steps, and the `__journal__` writes on the
//!   latest checkpoint) holds a prefix of the tasks in order, every journaled task's effect is in
//!   the file (a result is journaled after its effect and before the node goes on), and at most
//!   one effect is not journaled: the task in flight, which is the next task in order;
//! - after every restart, no journaled task's effect happened again, and the duplicated effects
//!   number at most the kills so far;
//! - at the end, every task's effect happened, the state equals an uninterrupted run's, and the
//!   execution is one straight branch of one checkpoint per step (plus the input).
//!
//! 20 rounds by default; `CKPT_SOAK_ROUNDS=N` runs N, and the ignored `soak_500_rounds` runs 500.
//! The seed is printed; `CKPT_TASKS_CRASH_SEED=N` repeats a run (kill moments stay timing-bound).

#![cfg(all(feature = "sled", feature = "graph"))]

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write as _};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ckpt::graph::{CompileConfig, CompiledGraph, NodeContext, Outcome, RunConfig, StateGraph, END};
use ckpt::testing::rng::XorShift64;
use ckpt::{CheckpointStore, Store};
use serde::{Deserialize, Serialize};

const STORE_ENV: &str = "CKPT_TASKS_CRASH_STORE";
const EFFECTS_ENV: &str = "CKPT_TASKS_CRASH_EFFECTS";
const EXEC: &str = "tasks-crash";
const STEPS: u32 = 8;
const TASKS: [&str; 3] = ["fetch", "charge", "notify"];
/// The runtime's channel for task results (`ckpt::graph` keeps the name crate-private).
const JOURNAL: &str = "__journal__";

/// One task's effect: (step, index in [`TASKS`]).
type Effect = (u32, usize);

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    n: u32,
    values: Vec<u64>,
    /// An order-sensitive fold of every task result.
    fold: u64,
}

/// What task `index` of step `step` returns: fixed, so the final state can be compared.
fn task_value(step: u32, index: usize) -> u64 {
    ((u64::from(step) << 8) | index as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 16
}

/// Appends the effect line with one write (O_APPEND: a kill leaves it whole or absent).
fn append_effect(path: &Path, step: u32, task: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)?;
    f.write_all(format!("{step}:{task}\n").as_bytes())?;
    f.flush()
}

/// "step" loops on itself until `n == STEPS`; each run calls the three tasks in order. A task
/// sleeps ~1 ms (work before its effect, so kills also land before it), appends its effect and,
/// in the child (`report`), prints it as `effect <step>:<task>` for the parent to count.
fn graph(
    effects: PathBuf,
    report: bool,
    store: Option<Arc<dyn CheckpointStore>>,
) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node_with_context("step", move |mut s: St, ctx: NodeContext| {
        let effects = effects.clone();
        async move {
            let step = s.n + 1;
            for (index, task) in TASKS.iter().enumerate() {
                let effects = effects.clone();
                let v: u64 = ctx
                    .task(task, async move {
                        tokio::time::sleep(Duration::from_micros(500)).await;
                        append_effect(&effects, step, task)?;
                        if report {
                            println!("effect {step}:{task}");
                        }
                        Ok::<_, std::io::Error>(task_value(step, index))
                    })
                    .await?;
                s.values.push(v);
                s.fold = s.fold.wrapping_mul(31).wrapping_add(v);
            }
            s.n = step;
            Ok::<_, ckpt::BoxError>(s)
        }
    });
    g.add_conditional_edges("step", |s: &St| {
        if s.n >= STEPS {
            END.into()
        } else {
            "step".into()
        }
    });
    g.set_entry_point("step");
    let mut config = CompileConfig::default();
    if let Some(store) = store {
        config = config.checkpointer(store);
    }
    g.compile(config).expect("the graph compiles")
}

fn parse_effect(text: &str) -> Option<Effect> {
    let (step, task) = text.trim().split_once(':')?;
    Some((step.parse().ok()?, TASKS.iter().position(|t| *t == task)?))
}

/// How many times each effect happened, from the file's complete lines.
fn effect_counts(path: &Path) -> BTreeMap<Effect, usize> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = text.rfind('\n').map_or("", |i| &text[..=i]);
    let mut counts = BTreeMap::new();
    for line in complete.lines() {
        let effect = parse_effect(line).unwrap_or_else(|| panic!("bad effect line {line:?}"));
        *counts.entry(effect).or_insert(0) += 1;
    }
    counts
}

fn duplicates(counts: &BTreeMap<Effect, usize>) -> usize {
    counts.values().map(|c| c - 1).sum()
}

/// Every task in run order.
fn all_effects() -> Vec<Effect> {
    (1..=STEPS)
        .flat_map(|s| (0..TASKS.len()).map(move |i| (s, i)))
        .collect()
}

/// The tasks whose results the log holds: those of checkpointed steps, and those journaled on
/// the latest checkpoint (the base of the step in flight). Each journaled value is checked.
async fn journaled(store: &Store) -> BTreeSet<Effect> {
    let Some(latest) = store.latest(EXEC).await.expect("latest") else {
        return BTreeSet::new();
    };
    let s: St = latest.state().expect("a state");
    let mut done: BTreeSet<Effect> = all_effects()
        .into_iter()
        .filter(|(st, _)| *st <= s.n)
        .collect();
    let step = s.n + 1;
    for w in store.writes(&latest.id).await.expect("writes") {
        if w.channel != JOURNAL {
            continue;
        }
        assert_eq!(w.task, "step", "a journal write of another node: {w:?}");
        let key = w
            .metadata
            .get("key")
            .and_then(|k| k.as_str())
            .expect("a key");
        let index = TASKS.iter().position(|t| *t == key).expect("a known task");
        assert_eq!(
            w.metadata.get("n").and_then(|n| n.as_u64()),
            Some(0),
            "{w:?}"
        );
        assert_eq!(
            w.value::<u64>().expect("a u64"),
            task_value(step, index),
            "{w:?}"
        );
        assert!(
            done.insert((step, index)),
            "task {step}:{key} journaled twice"
        );
    }
    done
}

/// The child half: only does anything when started by `run_rounds`.
#[tokio::test]
async fn crash_child() {
    let (Ok(dir), Ok(effects)) = (std::env::var(STORE_ENV), std::env::var(EFFECTS_ENV)) else {
        return;
    };
    let store: Arc<dyn CheckpointStore> =
        Arc::new(Store::open(&dir).await.expect("child opens the store"));
    let out = graph(PathBuf::from(effects), true, Some(store))
        .start_or_resume(St::default(), RunConfig::execution_id(EXEC))
        .await
        .expect("child run");
    assert!(out.is_finished());
}

fn seed() -> u64 {
    std::env::var("CKPT_TASKS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
        | 1
}

/// Starts a child on `store_dir`; once it reported `after` effects, waits `then` and kills it.
/// Returns whether the kill stopped it (false: it finished the run first).
fn run_child_and_kill(store_dir: &Path, effects: &Path, after: usize, then: Duration) -> bool {
    let mut child = Command::new(std::env::current_exe().expect("test binary"))
        .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
        .env(STORE_ENV, store_dir)
        .env(EFFECTS_ENV, effects)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn the child");
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut seen = 0;
    let mut line = String::new();
    while seen < after {
        line.clear();
        if stdout.read_line(&mut line).expect("read the child") == 0 {
            break; // it ended before reporting `after` effects
        }
        // The harness writes `test crash_child ... ` before the first line, without a newline.
        if line.contains("effect ") {
            seen += 1;
        }
    }
    if seen == after {
        std::thread::sleep(then);
        let _ = child.kill(); // SIGKILL on Unix; fails only if it already ended
    }
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    let status = child.wait().expect("reap the child");
    assert!(
        status.success() || status.code().is_none(),
        "the child failed by itself: {status}, output {}",
        String::from_utf8_lossy(&rest)
    );
    !status.success()
}

async fn run_rounds(rounds: usize) {
    // The reference: one uninterrupted run, no checkpointer (tasks just run).
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_effects = ref_dir.path().join("effects");
    let reference = match graph(ref_effects.clone(), false, None)
        .invoke(St::default(), RunConfig::execution_id(EXEC))
        .await
        .unwrap()
    {
        Outcome::Finished(s) => s,
        other => panic!("reference run did not finish: {other:?}"),
    };
    assert_eq!(reference.n, STEPS);
    assert_eq!(reference.values.len(), all_effects().len());
    let expected: BTreeMap<Effect, usize> = all_effects().into_iter().map(|e| (e, 1)).collect();
    assert_eq!(effect_counts(&ref_effects), expected);

    let seed = seed();
    println!(
        "graph_tasks_crash seed {seed} (CKPT_TASKS_CRASH_SEED={seed} repeats it), {rounds} rounds"
    );
    let mut rng = XorShift64::from_state(seed);
    let started = Instant::now();
    let (mut total_kills, mut total_dups) = (0, 0);
    for round in 0..rounds {
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("db");
        let effects = dir.path().join("effects");
        let planned = 1 + (rng.next_u64() % 3) as usize;
        let mut kills = 0;
        // Effects whose results were journaled at some kill: they must never happen again.
        let mut frozen: BTreeMap<Effect, usize> = BTreeMap::new();
        // Effects in flight at some kill (done, not journaled): the only ones that may repeat.
        let mut in_flight: BTreeSet<Effect> = BTreeSet::new();
        let mut done = BTreeSet::new();
        for _ in 0..planned {
            let remaining = all_effects().len() - done.len();
            if remaining == 0 {
                break;
            }
            let after = 1 + (rng.next_u64() % remaining as u64) as usize;
            let then = Duration::from_micros(rng.next_u64() % 3_000);
            let killed = run_child_and_kill(&store_dir, &effects, after, then);
            let counts = effect_counts(&effects);
            check_restart(round, &counts, &frozen, kills);
            if !killed {
                break; // the child finished the run before the kill
            }
            kills += 1;

            let store = Store::open(store_dir.to_str().unwrap()).await.unwrap();
            done = journaled(&store).await;
            drop(store);
            // Journaled after its effect: every journaled task's effect is in the file.
            for e in &done {
                assert!(
                    counts.contains_key(e),
                    "round {round}: {e:?} journaled without its effect"
                );
            }
            // At most the task in flight has an effect without a result, and it is the next
            // task in order (the node waits for each result to be journaled before going on).
            let unjournaled: Vec<Effect> = counts
                .keys()
                .filter(|e| !done.contains(e))
                .copied()
                .collect();
            let next = all_effects().into_iter().find(|e| !done.contains(e));
            assert!(
                unjournaled.is_empty() || (unjournaled.len() == 1 && Some(unjournaled[0]) == next),
                "round {round}, kill {kills}: effects {unjournaled:?} not journaled (next task {next:?}), journaled {done:?}"
            );
            in_flight.extend(unjournaled);
            frozen = counts
                .into_iter()
                .filter(|(e, _)| done.contains(e))
                .collect();
            println!(
                "round {round}: kill {kills} after {after} effects + {then:?}: {} tasks journaled",
                done.len()
            );
        }

        // Finish in-process: the same execution, continued from its latest checkpoint.
        let store = Arc::new(Store::open(store_dir.to_str().unwrap()).await.unwrap());
        let out = graph(effects.clone(), false, Some(store.clone()))
            .start_or_resume(St::default(), RunConfig::execution_id(EXEC))
            .await
            .unwrap();
        let Outcome::Finished(state) = out else {
            panic!("round {round}: the continued run did not finish: {out:?}");
        };
        assert_eq!(state, reference, "round {round}: final state");
        let counts = effect_counts(&effects);
        check_restart(round, &counts, &frozen, kills);
        for e in all_effects() {
            assert!(
                counts.contains_key(&e),
                "round {round}: task {e:?} never ran"
            );
        }
        for (e, c) in &counts {
            assert!(
                *c == 1 || in_flight.contains(e),
                "round {round}: {e:?} ran {c} times but was never in flight at a kill"
            );
        }
        assert_eq!(
            counts.len(),
            all_effects().len(),
            "round {round}: unknown effects"
        );
        assert_eq!(
            store.list(EXEC).await.unwrap().len(),
            STEPS as usize + 1,
            "round {round}: the input and one checkpoint per step"
        );
        assert_eq!(
            store.heads(EXEC).await.unwrap().len(),
            1,
            "round {round}: crash recovery does not branch"
        );
        total_kills += kills;
        total_dups += duplicates(&counts);
    }
    println!(
        "{rounds} rounds, {total_kills} kills, {total_dups} effects repeated, in {:?}",
        started.elapsed()
    );
}

/// After a run that followed `kills` kills: no journaled effect happened again, and the repeated
/// effects number at most the kills.
fn check_restart(
    round: usize,
    counts: &BTreeMap<Effect, usize>,
    frozen: &BTreeMap<Effect, usize>,
    kills: usize,
) {
    for (e, before) in frozen {
        assert_eq!(
            counts.get(e),
            Some(before),
            "round {round}: task {e:?} ran again after its result was journaled"
        );
    }
    assert!(
        duplicates(counts) <= kills,
        "round {round}: {} repeated effects after {kills} kills: {counts:?}",
        duplicates(counts)
    );
}

fn rounds_from_env(default: usize) -> usize {
    std::env::var("CKPT_SOAK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

#[tokio::test]
async fn sigkill_between_tasks_runs_each_once() {
    run_rounds(rounds_from_env(20)).await;
}

#[tokio::test]
#[ignore = "soak: 500 rounds (minutes); run with --ignored"]
async fn soak_500_rounds() {
    run_rounds(rounds_from_env(500)).await;
}
