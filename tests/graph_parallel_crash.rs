//! Crash recovery of parallel branches (`StateGraph::add_fan_out`) with a real SIGKILL: a child
//! process (this test binary, re-run with env vars) runs start -> {b1, b2, b3} -> done on a sled
//! store, each node appending its name to a side-effect file when it finishes. The parent kills
//! the child once b1 and b3 have finished (their pending writes saved) while b2 is still sleeping,
//! then continues the same execution in-process: only b2 (and the join) may run again.

#![cfg(all(feature = "sled", feature = "graph"))]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt::graph::{CompileConfig, CompiledGraph, Outcome, RunConfig, StateGraph, END};
use ckpt::{CheckpointStore, Store};
use futures_util::future::BoxFuture;
use serde::{Deserialize, Serialize};

const STORE_ENV: &str = "CKPT_GRAPH_PAR_CRASH_STORE";
const EFFECTS_ENV: &str = "CKPT_GRAPH_PAR_CRASH_EFFECTS";
const EXEC: &str = "par-crash";
const BRANCHES: [&str; 3] = ["b1", "b2", "b3"];
const SLEEPS: [u64; 3] = [50, 400, 100];

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    log: Vec<String>,
}

type NodeOut = BoxFuture<'static, Result<St, std::io::Error>>;

/// A node that sleeps `ms`, then appends `name` to the side-effect file and to the state's log.
/// A line in the file therefore means the node finished.
fn node(
    name: &'static str,
    effects: PathBuf,
    ms: u64,
) -> impl Fn(St) -> NodeOut + Send + Sync + 'static {
    move |mut s: St| {
        let effects = effects.clone();
        Box::pin(async move {
            if ms > 0 {
                tokio::time::sleep(Duration::from_millis(ms)).await;
            }
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&effects)?;
            // One write, so a kill cannot leave half a line for the next run to extend.
            f.write_all(format!("{name}\n").as_bytes())?;
            f.flush()?;
            drop(f);
            s.log.push(name.to_owned());
            Ok(s)
        })
    }
}

/// The state before the step, then what each branch appended, in declared order.
fn merge(mut base: St, results: Vec<(String, St)>) -> St {
    let n = base.log.len();
    for (_, s) in results {
        base.log.extend(s.log.into_iter().skip(n));
    }
    base
}

/// start -> {b1, b2, b3} -> done -> END.
fn graph(effects: &Path, store: Option<Arc<dyn CheckpointStore>>) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node("start", node("start", effects.to_path_buf(), 0));
    for (b, ms) in BRANCHES.iter().zip(SLEEPS) {
        g.add_node(*b, node(b, effects.to_path_buf(), ms));
    }
    g.add_node("done", node("done", effects.to_path_buf(), 0));
    g.add_fan_out("start", BRANCHES, "done", merge)
        .add_edge("done", END)
        .set_entry_point("start");
    let mut config = CompileConfig::default();
    if let Some(store) = store {
        config = config.checkpointer(store);
    }
    g.compile(config).expect("the graph compiles")
}

/// The complete lines of the side-effect file.
fn effect_lines(path: &Path) -> Vec<String> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete.lines().map(str::to_owned).collect()
}

fn count(lines: &[String], name: &str) -> usize {
    lines.iter().filter(|l| *l == name).count()
}

/// The child half: only does anything when started by `sigkill_during_fan_out_resumes_missing_branch`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn par_crash_child() {
    let (Ok(dir), Ok(effects)) = (std::env::var(STORE_ENV), std::env::var(EFFECTS_ENV)) else {
        return;
    };
    let store: Arc<dyn CheckpointStore> =
        Arc::new(Store::open(&dir).await.expect("child opens the store"));
    let app = graph(Path::new(&effects), Some(store));
    let out = app
        .start_or_resume(St::default(), RunConfig::execution_id(EXEC))
        .await
        .expect("child run");
    assert!(out.is_finished());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_during_fan_out_resumes_missing_branch() {
    // The reference: one uninterrupted run, no checkpointer.
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_effects = ref_dir.path().join("effects");
    let reference = match graph(&ref_effects, None)
        .invoke(St::default(), RunConfig::execution_id(EXEC))
        .await
        .unwrap()
    {
        Outcome::Finished(s) => s,
        other => panic!("reference run did not finish: {other:?}"),
    };
    assert_eq!(reference.log, ["start", "b1", "b2", "b3", "done"]);

    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("db");
    let effects = dir.path().join("effects");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "par_crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(STORE_ENV, &store_dir)
        .env(EFFECTS_ENV, &effects)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();

    // Wait until b1 and b3 have finished (their lines are appended right before returning).
    let started = Instant::now();
    loop {
        let lines = effect_lines(&effects);
        if count(&lines, "b1") >= 1 && count(&lines, "b3") >= 1 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the child exited early ({status}) before b1 and b3 finished");
        }
        if started.elapsed() > Duration::from_secs(10) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("b1 and b3 did not finish within 10 s: {lines:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    // Let their pending writes be saved, then kill while b2 is still sleeping.
    std::thread::sleep(Duration::from_millis(30));
    child.kill().unwrap(); // SIGKILL on Unix
    child.wait().unwrap();
    let before = effect_lines(&effects);
    println!("side effects at the kill: {before:?}");
    assert_eq!(
        before,
        ["start", "b1", "b3"],
        "b2 must still be sleeping when the child is killed"
    );

    // sled's lock may linger briefly after the kill.
    let opened = Instant::now();
    let store = loop {
        match Store::open(store_dir.to_str().unwrap()).await {
            Ok(store) => break store,
            Err(e) if opened.elapsed() < Duration::from_secs(2) => {
                println!("retrying the open: {e}");
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(e) => panic!("could not reopen the store: {e}"),
        }
    };

    let saved = store.list(EXEC).await.unwrap();
    let nodes: Vec<&str> = saved.iter().map(|c| c.node_name.as_str()).collect();
    assert_eq!(
        nodes,
        ["__input__", "start"],
        "pending writes are not checkpoints"
    );
    let writes = store.writes(&saved[1].id).await.unwrap();
    let pending: Vec<&str> = writes.iter().map(|w| w.task.as_str()).collect();
    println!("checkpoints at the kill: {nodes:?}, pending writes: {pending:?}");
    assert_eq!(count_str(&pending, "b1"), 1, "pending writes: {pending:?}");
    assert_eq!(count_str(&pending, "b3"), 1, "pending writes: {pending:?}");
    assert_eq!(count_str(&pending, "b2"), 0, "pending writes: {pending:?}");
    assert_eq!(pending.len(), 2, "pending writes: {pending:?}");
    for w in &writes {
        assert_eq!(w.channel, "__branch__");
    }

    // Continue the same execution in-process with the same graph.
    let store: Arc<dyn CheckpointStore> = Arc::new(store);
    let out = graph(&effects, Some(store.clone()))
        .start_or_resume(St::default(), RunConfig::execution_id(EXEC))
        .await
        .unwrap();
    let Outcome::Finished(state) = out else {
        panic!("the continued run did not finish: {out:?}");
    };
    assert_eq!(state, reference, "final state");

    let after = effect_lines(&effects);
    println!("side effects after the continued run: {after:?}");
    for name in ["start", "b1", "b2", "b3", "done"] {
        assert_eq!(count(&after, name), 1, "{name} in {after:?}");
    }
    assert_eq!(after.len(), 5, "{after:?}");
}

fn count_str(items: &[&str], name: &str) -> usize {
    items.iter().filter(|i| **i == name).count()
}
