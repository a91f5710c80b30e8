//! Model-based property test: random sequences of saves, batches, deletes, clears, forks, gcs,
//! retention, rekeys (encrypted runs) and reopens are applied both to a [`Store`] (on each backend, through its conformance harness) and
//! to a plain in-memory model; after every operation every projection of the store (list, latest,
//! history, at_version, load of removed ids, executions) must equal the model's.
//!
//! States are conversations whose messages have random lengths, some long enough to be stored as
//! blobs, so that deltas, snapshots, blob sharing and gc truncation all happen.

#![cfg(feature = "testing")]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ckpt::testing::Harness;
use ckpt::{Checkpoint, CheckpointId, HistoryQuery, Metadata, RetentionPolicy, Store};
use proptest::prelude::*;
use proptest::test_runner::TestCaseError;
use serde_json::json;

/// The executions operations pick from.
const EXECS: [&str; 3] = ["exec-0", "exec-1", "exec-2"];

#[derive(Debug, Clone)]
enum Op {
    /// Save a state gaining one message of `msg_len` bytes (or, with `same_as_prev`, the latest
    /// state unchanged) to `exec`.
    Save {
        exec: usize,
        msg_len: usize,
        same_as_prev: bool,
    },
    /// Delete the `nth` live checkpoint (modulo); with none live, delete a removed or unknown id.
    Delete { exec: usize, nth: usize },
    /// Clear `exec`.
    Clear { exec: usize },
    /// Fork the `nth` live checkpoint of `exec` into `to`.
    Fork { exec: usize, nth: usize, to: usize },
    /// Drop the store and open the storage again.
    Reopen,
    /// Collect garbage.
    Gc,
    /// Save a state whose every tally counter changed (see `Model::tally`).
    Tally { exec: usize },
    /// Save one checkpoint per `(exec, msg_len)` in one atomic batch.
    SaveBatch { execs: Vec<(usize, usize)> },
    /// Retention: keep the newest `keep` checkpoints of every execution (and every interrupted
    /// one), or with `drop_all`, drop every execution whose latest is not interrupted.
    Prune { keep: usize, drop_all: bool },
    /// Encrypted runs: another store on the same storage re-keys it (the newest key alternates),
    /// moving every blob to a new address, while the store under test keeps what it cached.
    /// Nothing changes for the model. A no-op on plaintext runs.
    Rekey,
}

fn msg_len() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 0..300usize, 2 => 300..700usize]
}

fn op() -> impl Strategy<Value = Op> {
    let exec = || 0..EXECS.len();
    prop_oneof![
        8 => (exec(), msg_len(), proptest::bool::weighted(0.15))
            .prop_map(|(exec, msg_len, same_as_prev)| Op::Save { exec, msg_len, same_as_prev }),
        2 => (exec(), any::<usize>()).prop_map(|(exec, nth)| Op::Delete { exec, nth }),
        1 => exec().prop_map(|exec| Op::Clear { exec }),
        2 => (exec(), any::<usize>(), exec()).prop_map(|(exec, nth, to)| Op::Fork { exec, nth, to }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Gc),
        2 => proptest::collection::vec((exec(), msg_len()), 0..=3).prop_map(|execs| Op::SaveBatch { execs }),
        1 => (1..5usize, proptest::bool::weighted(0.3)).prop_map(|(keep, drop_all)| Op::Prune { keep, drop_all }),
        1 => Just(Op::Rekey),
        1 => exec().prop_map(|exec| Op::Tally { exec }),
    ]
}

/// One live checkpoint as the model knows it.
#[derive(Debug, Clone, PartialEq)]
struct ModelCp {
    id: CheckpointId,
    version: u64,
    node: String,
    metadata: Metadata,
    parent: Option<CheckpointId>,
    timestamp: SystemTime,
    state: serde_json::Value,
}

impl ModelCp {
    fn of(cp: &Checkpoint) -> Result<Self, TestCaseError> {
        Ok(ModelCp {
            id: cp.id.clone(),
            version: cp.version,
            node: cp.node_name.clone(),
            metadata: cp.metadata.clone(),
            parent: cp.parent.clone(),
            timestamp: cp.timestamp,
            state: ok(cp.state_json(), "state_json")?,
        })
    }
}

#[derive(Debug, Default)]
struct Model {
    /// Live checkpoints per execution, oldest first.
    live: BTreeMap<String, Vec<ModelCp>>,
    /// The highest version the store ever returned per execution (cleared ones included).
    high: BTreeMap<String, u64>,
    /// Ids deleted or cleared.
    gone: Vec<CheckpointId>,
    /// Makes every message unique.
    counter: u64,
}

impl Model {
    fn live(&self, exec: &str) -> &[ModelCp] {
        self.live.get(exec).map_or(&[], Vec::as_slice)
    }

    fn latest_state(&self, exec: &str) -> serde_json::Value {
        self.live(exec)
            .last()
            .map_or_else(|| json!({ "messages": [], "step": 0 }), |c| c.state.clone())
    }

    /// The next state of `exec`'s conversation: `base` plus one message.
    fn grow(&mut self, base: &serde_json::Value, msg_len: usize) -> serde_json::Value {
        self.counter += 1;
        let mut messages = base["messages"].as_array().cloned().unwrap_or_default();
        messages.push(json!({ "role": if self.counter.is_multiple_of(2) { "user" } else { "assistant" }, "text": text(self.counter, msg_len) }));
        let mut next = match base {
            serde_json::Value::Object(_) => base.clone(),
            _ => json!({}),
        };
        next["messages"] = messages.into();
        next["step"] = json!(base["step"].as_u64().unwrap_or(0) + 1);
        next
    }

    /// `base` with a tally of 400 small counters, all new: a delta too big for its budget, so
    /// the store writes a snapshot built from the state it cached.
    fn tally(&mut self, base: &serde_json::Value) -> serde_json::Value {
        self.counter += 1;
        let n = self.counter;
        let mut next = match base {
            serde_json::Value::Object(_) => base.clone(),
            _ => json!({}),
        };
        next["tally"] = (0..400u64)
            .map(|i| (format!("t{i:03}"), json!(n * 1000 + i)))
            .collect::<serde_json::Map<_, _>>()
            .into();
        next
    }

    fn checkpoint(
        &self,
        exec: &str,
        state: &serde_json::Value,
    ) -> Result<Checkpoint, TestCaseError> {
        let cp = ok(
            Checkpoint::new(exec, &format!("node-{}", self.counter % 3), state),
            "Checkpoint::new",
        )?;
        let cp = cp
            .with_metadata("n", self.counter)
            .with_metadata("parity", self.counter % 2);
        // Some checkpoints are where a run waits (retention must keep them).
        Ok(if self.counter.is_multiple_of(5) {
            cp.with_metadata("interrupted", true)
        } else {
            cp
        })
    }

    /// Records a checkpoint the store saved (or forked) into `exec`, after checking its version is
    /// above every version `exec` ever had.
    fn record(&mut self, cp: &Checkpoint) -> Result<(), TestCaseError> {
        let exec = cp.execution_id.clone();
        let high = self.high.get(&exec).copied().unwrap_or(0);
        prop_assert!(cp.version > high, "{}: version not above {high}", cp.id);
        prop_assert_eq!(
            cp.id.clone(),
            ok(CheckpointId::new(&exec, cp.version), "id")?
        );
        self.high.insert(exec.clone(), cp.version);
        let m = ModelCp::of(cp)?;
        self.live.entry(exec).or_default().push(m);
        Ok(())
    }
}

/// `len` bytes of text unique to `n`.
fn text(n: u64, len: usize) -> String {
    let mut s = format!("m{n}:");
    s.truncate(len);
    let mut x = n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while s.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.push(char::from(b'a' + (x % 26) as u8));
    }
    s
}

fn ok<T>(r: ckpt::Result<T>, what: &str) -> Result<T, TestCaseError> {
    r.map_err(|e| TestCaseError::fail(format!("{what}: unexpected error: {e}")))
}

fn expect_not_found<T: std::fmt::Debug>(
    r: ckpt::Result<T>,
    what: &str,
) -> Result<(), TestCaseError> {
    match r {
        Err(e) if e.is_not_found() => Ok(()),
        other => Err(TestCaseError::fail(format!(
            "{what}: expected NotFound, got {other:?}"
        ))),
    }
}

async fn apply(store: &Store, model: &mut Model, op: &Op) -> Result<(), TestCaseError> {
    match op {
        Op::Save { exec, .. } | Op::Tally { exec } => {
            let exec = EXECS[*exec];
            let base = model.latest_state(exec);
            let state = match op {
                Op::Save {
                    same_as_prev: true, ..
                } => base,
                Op::Save { msg_len, .. } => model.grow(&base, *msg_len),
                _ => model.tally(&base),
            };
            let cp = model.checkpoint(exec, &state)?;
            let saved = ok(store.save(cp.clone()).await, "save")?;
            let parent = model.live(exec).last().map(|c| c.id.clone());
            prop_assert_eq!(&saved.parent, &parent, "parent of {}", saved.id);
            prop_assert_eq!(
                (&saved.node_name, &saved.metadata),
                (&cp.node_name, &cp.metadata)
            );
            model.record(&saved)?;
        }
        Op::Delete { exec, nth } => {
            let exec = EXECS[*exec];
            let live = model.live(exec);
            if live.is_empty() {
                let id = match model
                    .gone
                    .iter()
                    .filter(|id| id.execution_id() == exec)
                    .nth(*nth % 4)
                {
                    Some(id) => id.clone(),
                    None => ok(
                        CheckpointId::new(exec, model.high.get(exec).unwrap_or(&0) + 1000),
                        "id",
                    )?,
                };
                expect_not_found(store.delete(&id).await, &format!("delete {id}"))?;
            } else {
                let victim = live[*nth % live.len()].id.clone();
                ok(store.delete(&victim).await, "delete")?;
                model
                    .live
                    .entry(exec.to_owned())
                    .or_default()
                    .retain(|c| c.id != victim);
                model.gone.push(victim);
            }
        }
        Op::Prune { keep, drop_all } => {
            let policy = if *drop_all {
                RetentionPolicy::default().drop_untouched(Duration::ZERO)
            } else {
                RetentionPolicy::default().keep_latest(*keep)
            };
            let report = ok(store.prune(&policy).await, "prune")?;
            let mut deleted = 0;
            let mut dropped = 0;
            for live in model.live.values_mut() {
                let interrupted = |c: &ModelCp| c.metadata.get("interrupted") == Some(&json!(true));
                let newest_first: Vec<ModelCp> = live.drain(..).rev().collect();
                if *drop_all && newest_first.first().is_some_and(|c| !interrupted(c)) {
                    dropped += 1;
                    model.gone.extend(newest_first.into_iter().map(|c| c.id));
                    continue;
                }
                for (i, c) in newest_first.into_iter().enumerate() {
                    if *drop_all || i < *keep || interrupted(&c) {
                        live.insert(0, c);
                    } else {
                        deleted += 1;
                        model.gone.push(c.id);
                    }
                }
            }
            model.live.retain(|_, l| !l.is_empty());
            prop_assert_eq!(report.checkpoints_deleted, deleted, "prune: deleted");
            prop_assert_eq!(report.executions_dropped, dropped, "prune: dropped");
        }
        Op::Clear { exec } => {
            let exec = EXECS[*exec];
            ok(store.clear(exec).await, "clear")?;
            let cleared = model.live.remove(exec).unwrap_or_default();
            model.gone.extend(cleared.into_iter().map(|c| c.id));
        }
        Op::Fork { exec, nth, to } => {
            let (exec, to) = (EXECS[*exec], EXECS[*to]);
            let live = model.live(exec);
            if live.is_empty() {
                if let Some(id) = model
                    .gone
                    .iter()
                    .find(|id| id.execution_id() == exec)
                    .cloned()
                {
                    let result = store.fork(&id, to).await;
                    if to == exec {
                        prop_assert!(
                            result.is_err(),
                            "fork of {} into its own execution succeeded",
                            id
                        );
                    } else {
                        expect_not_found(result, &format!("fork of removed {id}"))?;
                    }
                }
                return Ok(());
            }
            let source = live[*nth % live.len()].clone();
            let result = store.fork(&source.id, to).await;
            if to == exec || !model.live(to).is_empty() {
                prop_assert!(
                    result.is_err(),
                    "fork of {} into {to} (not empty) succeeded",
                    source.id
                );
                return Ok(());
            }
            let fork = ok(result, "fork")?;
            prop_assert_eq!(fork.parent.as_ref(), Some(&source.id));
            prop_assert_eq!(
                (&fork.node_name, &fork.metadata),
                (&source.node, &source.metadata)
            );
            prop_assert_eq!(&ok(fork.state_json(), "state_json")?, &source.state);
            model.record(&fork)?;
        }
        Op::Reopen | Op::Gc | Op::Rekey => unreachable!("handled by the caller"),
        Op::SaveBatch { execs } => {
            let mut pending: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
            let mut batch = Vec::new();
            for (exec, msg_len) in execs {
                let exec = EXECS[*exec];
                let base = match pending.get(exec) {
                    Some(s) => s.clone(),
                    None => model.latest_state(exec),
                };
                let state = model.grow(&base, *msg_len);
                batch.push(model.checkpoint(exec, &state)?);
                pending.insert(exec, state);
            }
            let out = ok(store.save_batch(batch.clone()).await, "save_batch")?;
            prop_assert_eq!(out.len(), batch.len());
            let mut last: BTreeMap<String, Option<CheckpointId>> = BTreeMap::new();
            for (saved, given) in out.iter().zip(&batch) {
                prop_assert_eq!(&saved.execution_id, &given.execution_id, "batch order");
                prop_assert_eq!(&saved.metadata, &given.metadata, "batch order");
                let exec = saved.execution_id.clone();
                let parent = last
                    .get(&exec)
                    .cloned()
                    .unwrap_or_else(|| model.live(&exec).last().map(|c| c.id.clone()));
                prop_assert_eq!(&saved.parent, &parent, "parent of {} in a batch", saved.id);
                if let Some(Some(prev)) = last.get(&exec) {
                    prop_assert_eq!(
                        saved.version,
                        prev.version() + 1,
                        "batch versions not consecutive"
                    );
                }
                model.record(saved)?;
                last.insert(exec, Some(saved.id.clone()));
            }
        }
    }
    Ok(())
}

/// Compares every projection of the store with the model.
async fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    for exec in EXECS {
        let expected = model.live(exec);
        let list = ok(store.list(exec).await, "list")?;
        let list: Vec<ModelCp> = list.iter().map(ModelCp::of).collect::<Result<_, _>>()?;
        prop_assert_eq!(&list, &expected.to_vec(), "list of {}", exec);
        let latest = ok(store.latest(exec).await, "latest")?;
        let latest = latest.as_ref().map(ModelCp::of).transpose()?;
        prop_assert_eq!(latest.as_ref(), expected.last(), "latest of {}", exec);

        let header = |c: &ModelCp| {
            (
                c.id.clone(),
                c.version,
                c.node.clone(),
                c.metadata.clone(),
                c.parent.clone(),
                c.timestamp,
            )
        };
        let newest_first: Vec<_> = expected.iter().rev().map(header).collect();
        for limit in [None, Some(3)] {
            let q = limit.map_or_else(HistoryQuery::default, |n| HistoryQuery::default().limit(n));
            let history = ok(store.history(exec, q).await, "history")?;
            let got: Vec<_> = history
                .iter()
                .map(|h| {
                    (
                        h.id.clone(),
                        h.version,
                        h.node_name.clone(),
                        h.metadata.clone(),
                        h.parent.clone(),
                        h.timestamp,
                    )
                })
                .collect();
            let want = &newest_first[..newest_first.len().min(limit.unwrap_or(usize::MAX))];
            prop_assert_eq!(&got[..], want, "history of {} (limit {:?})", exec, limit);
        }
        for cp in expected {
            let at = ModelCp::of(&ok(store.at_version(exec, cp.version).await, "at_version")?)?;
            prop_assert_eq!(&at, cp, "at_version {}", cp.id);
        }
    }
    for id in &model.gone {
        expect_not_found(store.load(id).await, &format!("load of removed {id}"))?;
    }
    let summaries: Vec<_> = ok(store.executions().await, "executions")?
        .into_iter()
        .map(|s| {
            (
                s.execution_id,
                s.checkpoints,
                s.latest_version,
                s.latest_node,
                s.last_timestamp,
            )
        })
        .collect();
    let expected: Vec<_> = model
        .live
        .iter()
        .filter_map(|(exec, cps)| {
            let last = cps.last()?;
            Some((
                exec.clone(),
                cps.len(),
                last.version,
                last.node.clone(),
                last.timestamp,
            ))
        })
        .collect();
    prop_assert_eq!(summaries, expected, "executions");
    Ok(())
}

async fn run(harness: &dyn Harness, ops: &[Op]) -> Result<(), TestCaseError> {
    run_with_keys(harness, ops, None).await
}

/// [`run`]; with `keys` (the two keys the harness's stores open with), [`Op::Rekey`] re-keys.
async fn run_with_keys(
    harness: &dyn Harness,
    ops: &[Op],
    keys: Option<&[ckpt::crypto::Key; 2]>,
) -> Result<(), TestCaseError> {
    let mut store = Some(harness.open().await);
    let mut model = Model::default();
    let mut rekeys = 0usize;
    for (i, op) in ops.iter().enumerate() {
        let context = |e: TestCaseError| {
            TestCaseError::fail(format!("[{}] after op {i} {op:?}: {e}", harness.name()))
        };
        match op {
            Op::Reopen => {
                drop(store.take());
                store = Some(harness.open().await);
            }
            Op::Gc => {
                let s = store
                    .as_ref()
                    .ok_or_else(|| TestCaseError::fail("no store"))?;
                ok(s.gc().await, "gc").map_err(context)?;
            }
            Op::Rekey => {
                if let Some([a, b]) = keys {
                    let s = store
                        .as_ref()
                        .ok_or_else(|| TestCaseError::fail("no store"))?;
                    let ring = match rekeys % 2 {
                        0 => vec![b.clone(), a.clone()],
                        _ => vec![a.clone(), b.clone()],
                    };
                    rekeys += 1;
                    let other = Store::with_backend_and_keys(s.backend().clone(), ring);
                    ok(other.rekey().await, "rekey").map_err(context)?;
                }
            }
            op => {
                let s = store
                    .as_ref()
                    .ok_or_else(|| TestCaseError::fail("no store"))?;
                apply(s, &mut model, op).await.map_err(context)?;
            }
        }
        let s = store
            .as_ref()
            .ok_or_else(|| TestCaseError::fail("no store"))?;
        check(s, &model).await.map_err(context)?;
    }
    Ok(())
}

fn run_blocking(harness: &dyn Harness, ops: &[Op]) -> Result<(), TestCaseError> {
    runtime()?.block_on(run(harness, ops))
}

fn runtime() -> Result<tokio::runtime::Runtime, TestCaseError> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| TestCaseError::fail(format!("tokio runtime: {e}")))
}

/// `H`'s storage opened with two keys, the first writing: [`Op::Rekey`] makes the other the
/// newest from another store, so this one writes with a retired key (its saves stay readable)
/// and holds states cached under addresses the rekey removed.
struct TwoKeys<H> {
    inner: H,
    keys: [ckpt::crypto::Key; 2],
}

#[async_trait::async_trait]
impl<H: Harness> Harness for TwoKeys<H> {
    async fn open(&self) -> Store {
        let plain = self.inner.open().await;
        Store::with_backend_and_keys(plain.backend().clone(), self.keys.to_vec())
    }

    fn name(&self) -> &'static str {
        "two-keys"
    }

    fn allows_concurrent_opens(&self) -> bool {
        self.inner.allows_concurrent_opens()
    }
}

fn run_rekeyed<H: Harness>(inner: H, ops: &[Op]) -> Result<(), TestCaseError> {
    use ckpt::crypto::Key;
    let harness = TwoKeys {
        inner,
        keys: [Key::generate(), Key::generate()],
    };
    runtime()?.block_on(run_with_keys(&harness, ops, Some(&harness.keys)))
}

/// 96 cases per backend; `CKPT_MODEL_CASES=N` runs more (for a long hunt).
fn config() -> ProptestConfig {
    let cases = std::env::var("CKPT_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(96);
    ProptestConfig {
        cases,
        max_shrink_iters: 512,
        // Regressions are reported in the failure message; nothing is written into the source tree.
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

/// Sequences of up to 60 operations; `CKPT_MODEL_OPS=N` allows longer ones.
fn max_ops() -> usize {
    std::env::var("CKPT_MODEL_OPS")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(60)
}

proptest! {
    #![proptest_config(config())]

    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_blocking(&ckpt::testing::MemoryHarness::new(), &ops)?;
    }

    #[cfg(feature = "sled")]
    #[test]
    fn sled_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_blocking(&ckpt::testing::SledHarness::new(), &ops)?;
    }

    #[test]
    fn encrypted_memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_rekeyed(ckpt::testing::MemoryHarness::new(), &ops)?;
    }

    #[cfg(feature = "sled")]
    #[test]
    fn encrypted_sled_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_rekeyed(ckpt::testing::SledHarness::new(), &ops)?;
    }
}

/// The SQL backends cost a database (file or schema) per case: fewer cases, unless
/// `CKPT_MODEL_CASES` asks for more.
fn sql_config() -> ProptestConfig {
    let mut config = config();
    if std::env::var("CKPT_MODEL_CASES").is_err() {
        config.cases = 24;
    }
    config
}

proptest! {
    #![proptest_config(sql_config())]

    #[cfg(feature = "sqlite")]
    #[test]
    fn sqlite_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_blocking(&ckpt::testing::SqliteHarness::new(), &ops)?;
    }

    #[cfg(feature = "postgres")]
    #[test]
    fn postgres_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_blocking(&ckpt::testing::PostgresHarness::new(), &ops)?;
    }
}

/// The model on the Redis test servers: each case is many network round trips, so fewer cases
/// (24) unless `CKPT_MODEL_CASES` asks for more.
#[cfg(feature = "redis")]
fn redis_config() -> ProptestConfig {
    let explicit = std::env::var("CKPT_MODEL_CASES").is_ok();
    let mut c = config();
    if !explicit {
        c.cases = 24;
    }
    c
}

#[cfg(feature = "redis")]
proptest! {
    #![proptest_config(redis_config())]

    #[test]
    fn redis_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_blocking(&ckpt::testing::RedisHarness::new(), &ops)?;
    }

    #[test]
    fn redis_cluster_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_blocking(&ckpt::testing::RedisClusterHarness::new(), &ops)?;
    }
}
