//! Fencing of the graph runtime across real processes: two OS processes (this test binary, run
//! again with an env var) resume the same execution at once on a SQLite file and on PostgreSQL.
//! Each worker's first step waits, on a barrier of files, until both are inside it, so both
//! are mid-step on the same checkpoint; then exactly one worker finishes and the other reports
//! `GraphError::Conflict` and saves nothing: the log never interleaves (each checkpoint is a
//! child of the one before it) and its final state is what an uninterrupted run computes.
//! Each mode ([`Durability`]) is raced.
//!
//! The PostgreSQL test needs `CKPT_TEST_POSTGRES_URL` (`eval "$(scripts/servers.sh start)"`);
//! without it, it fails.

#![cfg(all(
    feature = "graph",
    feature = "sqlite",
    feature = "postgres",
    feature = "testing"
))]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt::graph::{CompileConfig, CompiledGraph, Durability, GraphError, RunConfig, StateGraph};
use ckpt::graph::{END, INPUT};
use ckpt::testing::{PostgresHarness, SqliteHarness};
use ckpt::{CheckpointStore, Store};
use serde::{Deserialize, Serialize};

/// Set in a child: `URL|EXEC|BARRIER_DIR|WORKER|MODE`.
const CHILD_ENV: &str = "CKPT_GRAPH_FENCING_CHILD";
const STEPS: u64 = 12;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    n: u64,
    sum: u64,
}

/// `step` loops until n == 12. When `barrier` is given (a worker), its first call marks this
/// worker ready, then waits until both workers are (at most 20 s), so that both are mid-step.
fn graph(store: Arc<dyn CheckpointStore>, barrier: Option<(PathBuf, String)>) -> CompiledGraph<St> {
    let first = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let mut g = StateGraph::<St>::new();
    g.add_node("step", move |mut s: St| {
        let wait = barrier
            .clone()
            .filter(|_| first.swap(false, std::sync::atomic::Ordering::SeqCst));
        async move {
            if let Some((dir, me)) = wait {
                std::fs::write(dir.join(&me), b"ready")?;
                let deadline = Instant::now() + Duration::from_secs(20);
                while ["a", "b"].iter().any(|w| !dir.join(w).exists()) {
                    if Instant::now() > deadline {
                        return Err(std::io::Error::other("the other worker never arrived"));
                    }
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
            s.n += 1;
            s.sum += s.n * s.n;
            Ok::<_, std::io::Error>(s)
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
    g.compile(CompileConfig::default().checkpointer(store))
        .expect("the graph compiles")
}

fn mode_of(name: &str) -> Durability {
    match name {
        "Async" => Durability::Async,
        "Exit" => Durability::Exit,
        _ => Durability::Sync,
    }
}

/// The child half: a worker resuming the execution; prints `outcome finished N` or
/// `outcome conflict MESSAGE`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fencing_child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, exec, dir, me, mode] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::open(url).await.expect("child opens"));
    let app = graph(store, Some((PathBuf::from(dir), me.to_owned())));
    let config = RunConfig::execution_id(exec).durability(mode_of(mode));
    match app.start_or_resume(St::default(), config).await {
        Ok(out) => println!("outcome finished {}", out.state().n),
        Err(e @ GraphError::Conflict { .. }) => {
            println!("outcome conflict {}", e.to_string().replace('\n', " "))
        }
        Err(e) => panic!("worker {me}: {e}"),
    }
}

fn spawn_worker(
    url: &str,
    exec: &str,
    dir: &Path,
    me: &str,
    mode: Durability,
) -> std::process::Child {
    Command::new(std::env::current_exe().expect("the test binary"))
        .args([
            "--exact",
            "fencing_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(
            CHILD_ENV,
            format!("{url}|{exec}|{}|{me}|{mode:?}", dir.display()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn a worker")
}

/// The `outcome ...` line a worker printed, once it exited successfully.
fn outcome(mut child: std::process::Child, me: &str) -> String {
    let stdout = child.stdout.take().expect("piped stdout");
    // Read to the end: a closed pipe would fail the worker's last prints.
    let lines: Vec<String> = BufReader::new(stdout)
        .lines()
        .map_while(Result::ok)
        .collect();
    let line = lines.iter().find_map(|l| {
        l.find("outcome ")
            .map(|at| l[at + "outcome ".len()..].to_owned())
    });
    let status = child.wait().expect("wait for a worker");
    assert!(status.success(), "worker {me} failed: {status}");
    line.unwrap_or_else(|| panic!("worker {me} printed no outcome"))
}

async fn two_processes_cannot_interleave(url: &str) {
    let store: Arc<dyn CheckpointStore> = Arc::new(Store::open(url).await.unwrap());
    let reference = graph(store.clone(), None)
        .invoke(St::default(), RunConfig::execution_id("reference"))
        .await
        .unwrap();
    assert_eq!(reference.state().n, STEPS);
    for mode in [Durability::Sync, Durability::Async, Durability::Exit] {
        let exec = format!("fenced-{mode:?}");
        // Three steps, then a stop: the checkpoint both workers resume from.
        let stopped = graph(store.clone(), None)
            .invoke(
                St::default(),
                RunConfig::execution_id(&exec).recursion_limit(3),
            )
            .await;
        assert!(matches!(stopped, Err(GraphError::RecursionLimit { .. })));
        let before = store.list(&exec).await.unwrap();
        assert_eq!(before.len(), 4);

        let barrier = tempfile::tempdir().unwrap();
        let a = spawn_worker(url, &exec, barrier.path(), "a", mode);
        let b = spawn_worker(url, &exec, barrier.path(), "b", mode);
        let handle = std::thread::spawn(move || outcome(b, "b"));
        let out_a = outcome(a, "a");
        let out_b = handle.join().unwrap();
        let what = format!("{mode:?}: a: {out_a} / b: {out_b}");
        let outs = [&out_a, &out_b];
        let finished = outs
            .iter()
            .filter(|o| o.as_str() == format!("finished {STEPS}"))
            .count();
        let conflicts: Vec<&&String> = outs.iter().filter(|o| o.starts_with("conflict ")).collect();
        assert_eq!(finished, 1, "{what}");
        assert_eq!(conflicts.len(), 1, "{what}");
        assert!(
            conflicts[0].contains("another worker") && conflicts[0].contains(&exec),
            "{what}"
        );

        // One unbranched log: what was there, then the winner's checkpoints only.
        let cps = store.list(&exec).await.unwrap();
        for w in cps.windows(2) {
            assert_eq!(w[1].parent.as_ref(), Some(&w[0].id), "{what}: {}", w[1].id);
        }
        assert_eq!(&cps[..4], &before[..], "{what}");
        let expected = match mode {
            Durability::Exit => 5,
            _ => STEPS as usize + 1,
        };
        assert_eq!(cps.len(), expected, "{what}: the loser saved nothing");
        assert_eq!(cps[0].node_name, INPUT);
        let last: St = cps.last().unwrap().state().unwrap();
        assert_eq!(&last, reference.state(), "{what}");
        assert_eq!(cps.last().unwrap().metadata["step"], STEPS, "{what}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_processes_resuming_one_execution_cannot_interleave() {
    let h = SqliteHarness::new();
    two_processes_cannot_interleave(&h.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_processes_resuming_one_execution_cannot_interleave() {
    let h = PostgresHarness::new();
    two_processes_cannot_interleave(h.url()).await;
}
