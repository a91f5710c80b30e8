//! Crash recovery of the graph runtime with a real SIGKILL: a child process (this test binary,
//! re-run with an env var) runs a 50-step graph on a durable sled store, each step appending its
//! step number to a side-effect file; the parent kills it mid-run at a random step, then continues
//! the same execution in-process with `start_or_resume` and checks the final state and that no step whose
//! checkpoint was saved before the kill ran again. The child prints each save as it returns, and
//! the parent reads them all (to the end of the child's output): every acknowledged checkpoint
//! must have survived, exactly.

#![cfg(all(feature = "sled", feature = "graph"))]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ckpt::graph::{
    CompileConfig, CompiledGraph, Durability, GraphEvent, Outcome, RunConfig, StateGraph, END,
    INPUT,
};
use ckpt::testing::rng::XorShift64;
use ckpt::{Checkpoint, CheckpointId, CheckpointStore, Store};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

const STORE_ENV: &str = "CKPT_GRAPH_CRASH_STORE";
const EFFECTS_ENV: &str = "CKPT_GRAPH_CRASH_EFFECTS";
const ASYNC_STORE_ENV: &str = "CKPT_GRAPH_ASYNC_CRASH_STORE";
const EXEC: &str = "crash-exec";
const STEPS: u32 = 50;

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct St {
    n: u32,
    seen: Vec<u32>,
    sum: u64,
}

/// The 50-step graph: "step" loops on itself until `n == 50`. Each run of the node appends its
/// step number to `effects` (the side effect), then sleeps ~2 ms so a kill lands mid-run.
fn graph(effects: PathBuf, store: Option<Arc<dyn CheckpointStore>>) -> CompiledGraph<St> {
    let mut g = StateGraph::<St>::new();
    g.add_node("step", move |mut s: St| {
        let effects = effects.clone();
        async move {
            s.n += 1;
            s.seen.push(s.n);
            s.sum += u64::from(s.n) * u64::from(s.n);
            let mut f = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&effects)?;
            // One write: `writeln!` may split the line in two, and a kill between them would
            // leave "30" that the resumed run's "30\n" extends to "3030".
            f.write_all(format!("{}\n", s.n).as_bytes())?;
            f.flush()?;
            drop(f);
            tokio::time::sleep(Duration::from_millis(2)).await;
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
    let mut config = CompileConfig::default();
    if let Some(store) = store {
        config = config.checkpointer(store);
    }
    g.compile(config).expect("the graph compiles")
}

fn effect_lines(path: &Path) -> Vec<u32> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    // Only complete lines: the child may be killed mid-write (a single small write, but be safe).
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .map(|l| l.parse().expect("a step number"))
        .collect()
}

/// `(version, step)` of a `saved VERSION STEP` line.
fn parse_saved(line: &str) -> Option<(u64, u32)> {
    // The test harness writes `test crash_child ... ` before the first line, without a newline.
    let at = line.find("saved ")?;
    let (version, step) = line[at + "saved ".len()..].split_once(' ')?;
    Some((version.parse().ok()?, step.parse().ok()?))
}

/// A store that prints `saved VERSION STEP` once each save has returned (is acknowledged).
struct Reporting(Arc<dyn CheckpointStore>);

#[async_trait::async_trait]
impl CheckpointStore for Reporting {
    async fn save(&self, checkpoint: Checkpoint) -> ckpt::Result<Checkpoint> {
        let saved = self.0.save(checkpoint).await?;
        let step = saved.state::<St>().map_or(0, |s| s.n);
        println!("saved {} {step}", saved.version);
        Ok(saved)
    }
    async fn save_with_parent(
        &self,
        checkpoint: Checkpoint,
        parent: &CheckpointId,
    ) -> ckpt::Result<Checkpoint> {
        let saved = self.0.save_with_parent(checkpoint, parent).await?;
        let step = saved.state::<St>().map_or(0, |s| s.n);
        println!("saved {} {step}", saved.version);
        Ok(saved)
    }
    async fn save_after(
        &self,
        checkpoint: Checkpoint,
        expected_latest: Option<&CheckpointId>,
    ) -> ckpt::Result<Checkpoint> {
        let saved = self.0.save_after(checkpoint, expected_latest).await?;
        let step = saved.state::<St>().map_or(0, |s| s.n);
        println!("saved {} {step}", saved.version);
        Ok(saved)
    }
    async fn load(&self, id: &CheckpointId) -> ckpt::Result<Checkpoint> {
        self.0.load(id).await
    }
    async fn list(&self, execution_id: &str) -> ckpt::Result<Vec<Checkpoint>> {
        self.0.list(execution_id).await
    }
    async fn delete(&self, id: &CheckpointId) -> ckpt::Result<()> {
        self.0.delete(id).await
    }
    async fn clear(&self, execution_id: &str) -> ckpt::Result<()> {
        self.0.clear(execution_id).await
    }
    async fn latest(&self, execution_id: &str) -> ckpt::Result<Option<Checkpoint>> {
        self.0.latest(execution_id).await
    }
    async fn put_writes(
        &self,
        checkpoint: &CheckpointId,
        writes: Vec<ckpt::Write>,
    ) -> ckpt::Result<Vec<ckpt::Write>> {
        self.0.put_writes(checkpoint, writes).await
    }
    async fn writes(&self, checkpoint: &CheckpointId) -> ckpt::Result<Vec<ckpt::Write>> {
        self.0.writes(checkpoint).await
    }
    async fn children(
        &self,
        checkpoint: &CheckpointId,
    ) -> ckpt::Result<Vec<ckpt::CheckpointHeader>> {
        self.0.children(checkpoint).await
    }
    async fn fork(
        &self,
        checkpoint: &CheckpointId,
        new_execution: &str,
    ) -> ckpt::Result<Checkpoint> {
        self.0.fork(checkpoint, new_execution).await
    }
}

/// The child half: only does anything when started by `sigkill_mid_graph_resumes_exactly`.
#[tokio::test]
async fn crash_child() {
    let (Ok(dir), Ok(effects)) = (std::env::var(STORE_ENV), std::env::var(EFFECTS_ENV)) else {
        return;
    };
    let store: Arc<dyn CheckpointStore> =
        Arc::new(Store::open(&dir).await.expect("child opens the store"));
    let app = graph(PathBuf::from(effects), Some(Arc::new(Reporting(store))));
    let out = app
        .start_or_resume(St::default(), RunConfig::execution_id(EXEC))
        .await
        .expect("child run");
    assert!(out.is_finished());
}

/// The child half of `sigkill_mid_async_graph_keeps_every_reported_save`: the same run in
/// async mode, printing `saved VERSION STEP` for each save the stream reports (saves land in
/// order: the input is step 0, then one per step).
#[tokio::test]
async fn async_crash_child() {
    let (Ok(dir), Ok(effects)) = (std::env::var(ASYNC_STORE_ENV), std::env::var(EFFECTS_ENV))
    else {
        return;
    };
    let store: Arc<dyn CheckpointStore> =
        Arc::new(Store::open(&dir).await.expect("child opens the store"));
    let app = graph(PathBuf::from(effects), Some(store));
    let config = RunConfig::execution_id(EXEC).durability(Durability::Async);
    let mut events = app.stream(St::default(), config);
    let mut step = 0;
    while let Some(ev) = events.next().await {
        match ev.expect("child run") {
            GraphEvent::CheckpointSaved { version, .. } => {
                println!("saved {version} {step}");
                step += 1;
            }
            GraphEvent::Finished { .. } => return,
            _ => {}
        }
    }
    panic!("the stream ended without finishing");
}

/// Async mode under SIGKILL: every checkpoint the run reported as saved is in the store with
/// its state, at most the one save in flight landed unreported, the log is unbranched, and
/// continuing the execution finishes with the state of an uninterrupted run; a step whose save
/// was reported never runs again.
#[tokio::test]
async fn sigkill_mid_async_graph_keeps_every_reported_save() {
    let ref_dir = tempfile::tempdir().unwrap();
    let reference = graph(ref_dir.path().join("effects"), None)
        .invoke(St::default(), RunConfig::execution_id(EXEC))
        .await
        .unwrap();
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("async graph_crash seed: {seed}");
    let mut rng = XorShift64::from_state(seed);
    for round in 0..2 {
        let target = 5 + (rng.next_u64() % 36) as usize;
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("db");
        let effects = dir.path().join("effects");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "async_crash_child",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(ASYNC_STORE_ENV, &store_dir)
            .env(EFFECTS_ENV, &effects)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let mut reported: Vec<(u64, u32)> = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while reported.len() < target {
            let Some(line) = lines.next() else {
                panic!("round {round}: the child exited before its save {target}");
            };
            reported.extend(parse_saved(&line.unwrap()));
        }
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 2500));
        child.kill().unwrap();
        for line in lines {
            reported.extend(parse_saved(&line.unwrap()));
        }
        child.wait().unwrap();
        let before = effect_lines(&effects);

        let store = Store::open(store_dir.to_str().unwrap()).await.unwrap();
        let saved = store.list(EXEC).await.unwrap();
        for w in saved.windows(2) {
            assert_eq!(w[1].parent.as_ref(), Some(&w[0].id), "round {round}");
        }
        for (version, step) in &reported {
            let cp = store
                .at_version(EXEC, *version)
                .await
                .unwrap_or_else(|e| panic!("round {round}: reported version {version} lost: {e}"));
            assert_eq!(cp.state::<St>().unwrap().n, *step, "round {round}");
        }
        let n = reported.len();
        assert!(
            saved.len() == n || saved.len() == n + 1,
            "round {round}: {} saved, {n} reported",
            saved.len()
        );
        let checkpointed = saved.len() as u32 - 1;
        assert!(
            checkpointed < STEPS,
            "round {round}: the kill came too late"
        );
        // Side effects: steps 1..=L, L at most two past the last saved step (the step whose
        // save was in flight, and the one running).
        let l = before.len() as u32;
        assert_eq!(before, (1..=l).collect::<Vec<_>>(), "round {round}");
        assert!(
            (checkpointed..=checkpointed + 2).contains(&l),
            "round {round}: {l} side effects, {checkpointed} checkpoints"
        );

        let store: Arc<dyn CheckpointStore> = Arc::new(store);
        let out = graph(effects.clone(), Some(store.clone()))
            .start_or_resume(
                St::default(),
                RunConfig::execution_id(EXEC).durability(Durability::Async),
            )
            .await
            .unwrap();
        assert_eq!(out.state(), reference.state(), "round {round}: final state");
        let after = effect_lines(&effects);
        let reported_steps = n as u32 - 1;
        for step in 1..=STEPS {
            let c = after.iter().filter(|s| **s == step).count();
            assert!(
                (1..=2).contains(&c),
                "round {round}: step {step} ran {c} times"
            );
            assert!(
                c == 1 || step > reported_steps,
                "round {round}: step {step} ran again though its save was reported"
            );
        }
    }
}

#[tokio::test]
async fn sigkill_mid_graph_resumes_exactly() {
    // The reference: one uninterrupted run, no checkpointer.
    let ref_dir = tempfile::tempdir().unwrap();
    let ref_effects = ref_dir.path().join("effects");
    let reference = match graph(ref_effects.clone(), None)
        .invoke(St::default(), RunConfig::execution_id(EXEC))
        .await
        .unwrap()
    {
        Outcome::Finished(s) => s,
        other => panic!("reference run did not finish: {other:?}"),
    };
    assert_eq!(reference.n, STEPS);
    assert_eq!(effect_lines(&ref_effects), (1..=STEPS).collect::<Vec<_>>());

    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64
        | 1;
    println!("graph_crash seed: {seed}");
    let mut rng = XorShift64::from_state(seed);

    for round in 0..2 {
        let target = 5 + (rng.next_u64() % 36) as usize; // 5..=40
        let dir = tempfile::tempdir().unwrap();
        let store_dir = dir.path().join("db");
        let effects = dir.path().join("effects");
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "crash_child", "--nocapture", "--test-threads=1"])
            .env(STORE_ENV, &store_dir)
            .env(EFFECTS_ENV, &effects)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        // (version, step) of each save, as the child reports it returned.
        let mut acked: Vec<(u64, u32)> = Vec::new();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        while acked.len() < target {
            let Some(line) = lines.next() else {
                panic!("round {round}: the child exited before its save {target}");
            };
            acked.extend(parse_saved(&line.unwrap()));
        }
        // A random moment inside the next step (each sleeps ~2 ms).
        std::thread::sleep(Duration::from_micros(rng.next_u64() % 2500));
        child.kill().unwrap(); // SIGKILL on Unix
                               // Saves reported before the kill are still in the pipe: read them all.
        for line in lines {
            acked.extend(parse_saved(&line.unwrap()));
        }
        child.wait().unwrap();
        let before = effect_lines(&effects);

        let store = Store::open(store_dir.to_str().unwrap()).await.unwrap();
        let saved = store.list(EXEC).await.unwrap();
        // Steps checkpointed: every checkpoint but the run's input.
        let checkpointed = saved.iter().filter(|c| c.node_name != INPUT).count() as u32;
        println!(
            "round {round}: target {target}, {} acknowledged saves, {} side effects and \
             {checkpointed} checkpoints at the kill",
            acked.len(),
            before.len()
        );
        assert!(
            checkpointed < STEPS,
            "round {round}: the kill landed after the run finished"
        );
        // Every acknowledged save survived with its step; at most one more (saved, not yet
        // reported) may have.
        for (version, step) in &acked {
            let cp = store.at_version(EXEC, *version).await.unwrap_or_else(|e| {
                panic!("round {round}: acknowledged version {version} lost: {e}")
            });
            assert_eq!(
                cp.state::<St>().unwrap().n,
                *step,
                "round {round}: version {version}"
            );
        }
        let acked_steps = acked.iter().filter(|(_, step)| *step > 0).count() as u32;
        assert!(
            checkpointed == acked_steps || checkpointed == acked_steps + 1,
            "round {round}: {checkpointed} checkpoints but {acked_steps} acknowledged: {acked:?}, saved {:?}", saved.iter().map(|c| (c.version, c.state::<St>().unwrap().n)).collect::<Vec<_>>()
        );
        // Side effects before the kill: exactly steps 1..=L, with L the checkpointed step or the
        // one after it (running when killed).
        let l = before.len() as u32;
        assert_eq!(before, (1..=l).collect::<Vec<_>>(), "round {round}");
        assert!(
            l == checkpointed || l == checkpointed + 1,
            "round {round}: {l} side effects but {checkpointed} checkpoints"
        );
        if let Some(last) = saved.last() {
            let s: St = last.state().unwrap();
            assert_eq!(
                s.n, checkpointed,
                "round {round}: the last checkpoint's step"
            );
        }

        let store: Arc<dyn CheckpointStore> = Arc::new(store);
        let out = graph(effects.clone(), Some(store.clone()))
            .start_or_resume(St::default(), RunConfig::execution_id(EXEC))
            .await
            .unwrap();
        let Outcome::Finished(state) = out else {
            panic!("round {round}: the continued run did not finish: {out:?}");
        };
        assert_eq!(state, reference, "round {round}: final state");
        assert_eq!(
            store.list(EXEC).await.unwrap().len(),
            STEPS as usize + 1,
            "round {round}: the input and one checkpoint per step"
        );

        let after = effect_lines(&effects);
        let mut counts = vec![0usize; STEPS as usize + 1];
        for step in &after {
            counts[*step as usize] += 1;
        }
        let mut duplicated = Vec::new();
        for step in 1..=STEPS {
            let c = counts[step as usize];
            assert!(c >= 1, "round {round}: step {step} never ran");
            if c > 1 {
                assert_eq!(c, 2, "round {round}: step {step} ran {c} times");
                assert!(
                    step > acked_steps,
                    "round {round}: step {step} ran again though its save was acknowledged"
                );
                duplicated.push(step);
            }
        }
        assert!(
            duplicated.len() <= 1,
            "round {round}: steps {duplicated:?} ran twice"
        );
        assert_eq!(
            after.len(),
            STEPS as usize + duplicated.len(),
            "round {round}"
        );
    }
}
