//! Model-based property test: random sequences of saves, batches, deletes, clears, forks, gcs,
//! retention, rekeys (encrypted runs) and reopens are applied both to a [`Store`] (on each backend, through its conformance harness) and
//! to a plain in-memory model; after every operation every projection of the store (list, latest,
//! history, at_version, load of removed ids, executions) must equal the model's. The model holds
//! the states it generated, never what the store returned, so a store that changes a state on
//! its way in or out is caught.
//!
//! The `faulty_*` runs put a seeded [`ckpt::testing::Faulty`] backend under the store: while an
//! operation runs, backend calls fail before reaching the backend, fail after their write
//! landed, tear (blobs without frames) or are delayed. An operation that failed must have
//! changed nothing when none of its appends landed, and must be stored whole (with exactly the
//! generated state) when one did; the projections are then read once with faults (any answer
//! that is not an injected error must equal the model) and once without.
//!
//! States are conversations whose messages have random lengths, some long enough to be stored as
//! blobs, so that deltas, snapshots, blob sharing and gc truncation all happen.

#![cfg(feature = "testing")]

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use ckpt::testing::rng::XorShift64;
use ckpt::testing::{is_injected, FaultControl, FaultyHarness, Harness};
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
    /// Time travel: save, as a child of the `nth` live checkpoint of `exec` (modulo), its state
    /// plus one message: a branch unless it is the latest.
    Branch {
        exec: usize,
        nth: usize,
        msg_len: usize,
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
    /// Attach `count` writes (values of `len` bytes) to the `nth` live checkpoint of `exec`.
    Write {
        exec: usize,
        nth: usize,
        count: usize,
        len: usize,
    },
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
        2 => (exec(), any::<usize>(), msg_len()).prop_map(|(exec, nth, msg_len)| Op::Branch { exec, nth, msg_len }),
        1 => exec().prop_map(|exec| Op::Clear { exec }),
        2 => (exec(), any::<usize>(), exec()).prop_map(|(exec, nth, to)| Op::Fork { exec, nth, to }),
        1 => Just(Op::Reopen),
        1 => Just(Op::Gc),
        2 => proptest::collection::vec((exec(), msg_len()), 0..=3).prop_map(|execs| Op::SaveBatch { execs }),
        1 => (1..5usize, proptest::bool::weighted(0.3)).prop_map(|(keep, drop_all)| Op::Prune { keep, drop_all }),
        1 => Just(Op::Rekey),
        1 => exec().prop_map(|exec| Op::Tally { exec }),
        2 => (exec(), any::<usize>(), 1..3usize, msg_len())
            .prop_map(|(exec, nth, count, len)| Op::Write { exec, nth, count, len }),
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
    /// The values written to each checkpoint, in order (those of removed checkpoints are gone
    /// with them: see `check`).
    writes: BTreeMap<CheckpointId, Vec<serde_json::Value>>,
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

    /// Records a checkpoint the store saved (or forked) into `exec`, after checking that it is
    /// what was asked for: `given`'s node and metadata, the `state` the model generated (never
    /// the state the store returned: that would make the model agree with any store), a version
    /// above every version `exec` ever had, and the newest live checkpoint as parent.
    fn record(
        &mut self,
        saved: &Checkpoint,
        given: &Checkpoint,
        state: &serde_json::Value,
    ) -> Result<(), TestCaseError> {
        let parent = self.live(&saved.execution_id).last().map(|c| c.id.clone());
        self.record_with_parent(saved, given, state, parent)
    }

    /// [`Model::record`] of a checkpoint whose parent must be `parent` (a fork's source).
    fn record_with_parent(
        &mut self,
        saved: &Checkpoint,
        given: &Checkpoint,
        state: &serde_json::Value,
        parent: Option<CheckpointId>,
    ) -> Result<(), TestCaseError> {
        let exec = saved.execution_id.clone();
        prop_assert_eq!(&exec, &given.execution_id, "execution of {}", saved.id);
        let high = self.high.get(&exec).copied().unwrap_or(0);
        prop_assert!(
            saved.version > high,
            "{}: version not above {high}",
            saved.id
        );
        prop_assert_eq!(
            saved.id.clone(),
            ok(CheckpointId::new(&exec, saved.version), "id")?
        );
        prop_assert_eq!(&saved.parent, &parent, "parent of {}", saved.id);
        prop_assert_eq!(
            (&saved.node_name, &saved.metadata),
            (&given.node_name, &given.metadata),
            "node and metadata of {}",
            saved.id
        );
        prop_assert_eq!(
            &ok(saved.state_json(), "state_json")?,
            state,
            "state of {} is not the state saved",
            saved.id
        );
        self.high.insert(exec.clone(), saved.version);
        let m = ModelCp {
            id: saved.id.clone(),
            version: saved.version,
            node: given.node_name.clone(),
            metadata: given.metadata.clone(),
            parent,
            timestamp: saved.timestamp,
            state: state.clone(),
        };
        self.live.entry(exec).or_default().push(m);
        Ok(())
    }
}

/// `len` bytes of text unique to `n`.
fn text(n: u64, len: usize) -> String {
    let mut s = format!("m{n}:");
    s.truncate(len);
    let mut rng = XorShift64::from_state(n.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
    while s.len() < len {
        s.push(char::from(b'a' + (rng.next_u64() % 26) as u8));
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

/// The fault injection of one operation of a run (none on runs without faults).
struct Faults<'a> {
    control: Option<&'a FaultControl>,
    /// Appends that had landed when the operation began.
    landed_before: u64,
}

impl<'a> Faults<'a> {
    fn new(control: Option<&'a FaultControl>) -> Self {
        Faults {
            control,
            landed_before: control.map_or(0, |c| c.landed_appends()),
        }
    }

    /// Whether `e` is a fault this run injected.
    fn injected(&self, e: &ckpt::Error) -> bool {
        self.control.is_some() && is_injected(e)
    }

    /// After a store call failed with `e`: stops injecting (the caller reads what happened next)
    /// and says whether the call changed the store anyway, i.e. an append of it reached the
    /// backend before the error (a fault after the write landed). Then it must be stored whole;
    /// otherwise nothing of it may be. An error that was not injected fails the case.
    fn failed(&self, e: ckpt::Error, what: &str) -> Result<bool, TestCaseError> {
        match self.control {
            Some(control) if is_injected(&e) => {
                control.disarm();
                Ok(control.landed_appends() > self.landed_before)
            }
            _ => Err(TestCaseError::fail(format!(
                "{what}: unexpected error: {e}"
            ))),
        }
    }
}

/// The checkpoints a batch that failed after its append landed stored, in the batch's order:
/// each execution's checkpoints above the highest version the model knows.
async fn landed_batch(
    store: &Store,
    model: &Model,
    batch: &[Checkpoint],
) -> Result<Vec<Checkpoint>, TestCaseError> {
    let mut new: BTreeMap<String, std::collections::VecDeque<Checkpoint>> = BTreeMap::new();
    for given in batch {
        let exec = &given.execution_id;
        if new.contains_key(exec) {
            continue;
        }
        let high = model.high.get(exec).copied().unwrap_or(0);
        let list = ok(store.list(exec).await, "list after a failed batch")?;
        new.insert(
            exec.clone(),
            list.into_iter().filter(|c| c.version > high).collect(),
        );
    }
    let mut out = Vec::with_capacity(batch.len());
    for given in batch {
        match new.get_mut(&given.execution_id).and_then(|q| q.pop_front()) {
            Some(cp) => out.push(cp),
            None => {
                return Err(TestCaseError::fail(format!(
                    "a batch landed, but {} lacks some of its checkpoints",
                    given.execution_id
                )))
            }
        }
    }
    if let Some((exec, extra)) = new.iter().find(|(_, q)| !q.is_empty()) {
        return Err(TestCaseError::fail(format!(
            "a batch landed, and {exec} has {} checkpoints it did not hold",
            extra.len()
        )));
    }
    Ok(out)
}

async fn apply(
    store: &Store,
    model: &mut Model,
    op: &Op,
    faults: &Faults<'_>,
) -> Result<(), TestCaseError> {
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
            match store.save(cp.clone()).await {
                Ok(saved) => model.record(&saved, &cp, &state)?,
                Err(e) => {
                    if faults.failed(e, "save")? {
                        let saved = ok(store.latest(exec).await, "latest after a failed save")?;
                        let Some(saved) = saved else {
                            return Err(TestCaseError::fail(format!(
                                "save to {exec} landed but {exec} has no latest"
                            )));
                        };
                        model.record(&saved, &cp, &state)?;
                    }
                }
            }
        }
        Op::Branch { exec, nth, msg_len } => {
            let exec = EXECS[*exec];
            let live = model.live(exec);
            if live.is_empty() {
                return Ok(());
            }
            let parent = live[*nth % live.len()].clone();
            let state = model.grow(&parent.state, *msg_len);
            let cp = model.checkpoint(exec, &state)?;
            match store.save_with_parent(cp.clone(), &parent.id).await {
                Ok(saved) => model.record_with_parent(&saved, &cp, &state, Some(parent.id))?,
                Err(e) => {
                    if faults.failed(e, "save with a parent")? {
                        let saved = ok(store.latest(exec).await, "latest after a failed save")?;
                        let Some(saved) = saved else {
                            return Err(TestCaseError::fail(format!(
                                "save to {exec} landed but {exec} has no latest"
                            )));
                        };
                        model.record_with_parent(&saved, &cp, &state, Some(parent.id))?;
                    }
                }
            }
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
                match store.delete(&id).await {
                    Err(e) if faults.injected(&e) => {
                        // Nothing to delete: it cannot have landed (`check` would see it).
                        faults.failed(e, "delete")?;
                    }
                    other => expect_not_found(other, &format!("delete {id}"))?,
                }
            } else {
                let victim = live[*nth % live.len()].id.clone();
                if let Err(e) = store.delete(&victim).await {
                    if !faults.failed(e, "delete")? {
                        return Ok(());
                    }
                }
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
            if let Err(e) = store.clear(exec).await {
                if !faults.failed(e, "clear")? {
                    return Ok(());
                }
            }
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
                    if let Err(e) = &result {
                        if faults.injected(e) {
                            return Ok(());
                        }
                    }
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
            let result = match result {
                Err(e) if faults.injected(&e) => {
                    if !faults.failed(e, "fork")? {
                        return Ok(());
                    }
                    match ok(store.latest(to).await, "latest after a failed fork")? {
                        Some(fork) => Ok(fork),
                        None => {
                            return Err(TestCaseError::fail(format!(
                                "fork into {to} landed but {to} has no latest"
                            )))
                        }
                    }
                }
                other => other,
            };
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
            let mut given = ok(
                Checkpoint::new(to, &source.node, &source.state),
                "Checkpoint::new",
            )?;
            given.metadata = source.metadata.clone();
            model.record_with_parent(&fork, &given, &source.state, Some(source.id.clone()))?;
        }
        Op::Write {
            exec,
            nth,
            count,
            len,
        } => {
            let exec = EXECS[*exec];
            let live = model.live(exec);
            if live.is_empty() {
                return Ok(());
            }
            let target = live[*nth % live.len()].id.clone();
            let mut values = Vec::new();
            let mut writes = Vec::new();
            for _ in 0..*count {
                model.counter += 1;
                let value = json!({ "n": model.counter, "text": text(model.counter, *len) });
                writes.push(ok(
                    ckpt::Write::new("task", "channel", &value),
                    "Write::new",
                )?);
                values.push(value);
            }
            match store.put_writes(&target, writes).await {
                Ok(stored) => prop_assert_eq!(stored.len(), values.len()),
                Err(e) => {
                    if !faults.failed(e, "put_writes")? {
                        return Ok(());
                    }
                }
            }
            model.writes.entry(target).or_default().extend(values);
        }
        Op::Reopen | Op::Gc | Op::Rekey => unreachable!("handled by the caller"),
        Op::SaveBatch { execs } => {
            let mut pending: BTreeMap<&str, serde_json::Value> = BTreeMap::new();
            let mut batch = Vec::new();
            let mut states = Vec::new();
            for (exec, msg_len) in execs {
                let exec = EXECS[*exec];
                let base = match pending.get(exec) {
                    Some(s) => s.clone(),
                    None => model.latest_state(exec),
                };
                let state = model.grow(&base, *msg_len);
                batch.push(model.checkpoint(exec, &state)?);
                states.push(state.clone());
                pending.insert(exec, state);
            }
            let out = match store.save_batch(batch.clone()).await {
                Ok(out) => out,
                Err(e) => {
                    if !faults.failed(e, "save_batch")? {
                        return Ok(());
                    }
                    landed_batch(store, model, &batch).await?
                }
            };
            prop_assert_eq!(out.len(), batch.len());
            let mut last: BTreeMap<String, u64> = BTreeMap::new();
            for ((saved, given), state) in out.iter().zip(&batch).zip(&states) {
                prop_assert_eq!(&saved.execution_id, &given.execution_id, "batch order");
                let exec = saved.execution_id.clone();
                if let Some(prev) = last.get(&exec) {
                    prop_assert_eq!(saved.version, prev + 1, "batch versions not consecutive");
                }
                model.record(saved, given, state)?;
                last.insert(exec, saved.version);
            }
        }
    }
    Ok(())
}

/// Compares every projection of the store with the model.
/// The tree the model expects: the heads of `exec` (live checkpoints no live checkpoint of it
/// names as parent), newest first, and the branch ending at its latest, newest first.
fn model_tree(expected: &[ModelCp]) -> (Vec<u64>, Vec<u64>) {
    let live: BTreeMap<&CheckpointId, &ModelCp> = expected.iter().map(|c| (&c.id, c)).collect();
    let parents: Vec<&CheckpointId> = expected.iter().filter_map(|c| c.parent.as_ref()).collect();
    let heads = expected
        .iter()
        .rev()
        .filter(|c| !parents.contains(&&c.id))
        .map(|c| c.version)
        .collect();
    let mut branch = Vec::new();
    let mut at = expected.last();
    while let Some(c) = at {
        branch.push(c.version);
        at = c.parent.as_ref().and_then(|p| live.get(p).copied());
    }
    (heads, branch)
}

async fn check(store: &Store, model: &Model) -> Result<(), TestCaseError> {
    for exec in EXECS {
        let expected = model.live(exec);
        let (heads, branch) = model_tree(expected);
        let got: Vec<u64> = ok(store.heads(exec).await, "heads")?
            .iter()
            .map(|h| h.version)
            .collect();
        prop_assert_eq!(got, heads, "heads of {}", exec);
        if let Some(latest) = expected.last() {
            let got: Vec<u64> = ok(
                store.branch(&latest.id, HistoryQuery::default()).await,
                "branch",
            )?
            .iter()
            .map(|h| h.version)
            .collect();
            prop_assert_eq!(got, branch, "branch of {}", latest.id);
        }
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
            let writes: Vec<serde_json::Value> = ok(store.writes(&cp.id).await, "writes")?
                .iter()
                .map(ckpt::Write::value_json)
                .collect();
            let want = model.writes.get(&cp.id).cloned().unwrap_or_default();
            prop_assert_eq!(writes, want, "writes of {}", cp.id);
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
    run_with_keys(harness, ops, None, None).await
}

/// Whether seeded faults are injected while `op` runs. Prune deletes in several appends, so a
/// fault part way leaves an outcome the model does not predict; reopens and rekeys are setup.
fn faulted(op: &Op) -> bool {
    !matches!(op, Op::Prune { .. } | Op::Reopen | Op::Rekey)
}

/// [`run`]; with `keys` (the two keys the harness's stores open with), [`Op::Rekey`] re-keys;
/// with `faults` (the control of the harness's [`FaultyHarness`]), faults are injected while
/// each operation runs (see [`faulted`]) and while the projections are read once, then the
/// projections are read again without faults and must equal the model's.
async fn run_with_keys(
    harness: &dyn Harness,
    ops: &[Op],
    keys: Option<&[ckpt::crypto::Key; 2]>,
    faults: Option<&FaultControl>,
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
                let f = Faults::new(faults);
                arm(faults, op);
                if let Err(e) = s.gc().await {
                    // gc changes no projection, whatever part of it ran.
                    f.failed(e, "gc").map_err(context)?;
                }
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
                let f = Faults::new(faults);
                arm(faults, op);
                let applied = apply(s, &mut model, op, &f).await;
                disarm(faults);
                applied.map_err(context)?;
            }
        }
        disarm(faults);
        let s = store
            .as_ref()
            .ok_or_else(|| TestCaseError::fail("no store"))?;
        if faults.is_some() {
            arm(faults, op);
            match check(s, &model).await {
                // A read that failed on an injected fault is fine; one that served anything but
                // the model is not.
                Err(e) if e.to_string().contains("injected fault") => {}
                other => other.map_err(context)?,
            }
            disarm(faults);
        }
        check(s, &model).await.map_err(context)?;
    }
    Ok(())
}

fn arm(faults: Option<&FaultControl>, op: &Op) {
    if let Some(f) = faults {
        if faulted(op) {
            f.arm();
        }
    }
}

fn disarm(faults: Option<&FaultControl>) {
    if let Some(f) = faults {
        f.disarm();
    }
}

fn run_blocking(harness: &dyn Harness, ops: &[Op]) -> Result<(), TestCaseError> {
    runtime()?.block_on(run(harness, ops))
}

/// Faults per 1000 reads while an operation runs (most make a handful), and per 1000 writes:
/// a write is where a fault can leave an outcome the caller cannot see.
const FAULTS_PER_MILLE: u64 = 30;
/// See [`FAULTS_PER_MILLE`].
const WRITE_FAULTS_PER_MILLE: u64 = 250;

/// The model over `inner`'s storage behind a [`ckpt::testing::Faulty`] backend whose faults
/// come from `seed`.
fn run_faulty<H: Harness>(
    name: &'static str,
    inner: H,
    ops: &[Op],
    seed: u64,
) -> Result<(), TestCaseError> {
    let control = FaultControl::seeded(seed, FAULTS_PER_MILLE);
    control.writes_per_mille(WRITE_FAULTS_PER_MILLE);
    let harness = FaultyHarness::new(name, inner, control.clone());
    runtime()?.block_on(run_with_keys(&harness, ops, None, Some(&control)))
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
    runtime()?.block_on(run_with_keys(&harness, ops, Some(&harness.keys), None))
}

/// `default` cases, chosen per run so that this file takes about a minute on two cores;
/// `CKPT_MODEL_CASES=N` runs N of each (for a long hunt).
fn config(default: u32) -> ProptestConfig {
    let cases = std::env::var("CKPT_MODEL_CASES")
        .ok()
        .and_then(|c| c.parse().ok())
        .unwrap_or(default);
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
    #![proptest_config(config(48))]

    #[test]
    fn memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_blocking(&ckpt::testing::MemoryHarness::new(), &ops)?;
    }

    #[test]
    fn faulty_memory_store_matches_the_model(
        ops in proptest::collection::vec(op(), 1..max_ops()),
        seed in any::<u64>(),
    ) {
        run_faulty("memory+faults", ckpt::testing::MemoryHarness::new(), &ops, seed)?;
    }
}

proptest! {
    #![proptest_config(config(32))]

    #[test]
    fn encrypted_memory_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_rekeyed(ckpt::testing::MemoryHarness::new(), &ops)?;
    }
}

// Every sled save is an fsync: fewer cases.
#[cfg(feature = "sled")]
proptest! {
    #![proptest_config(config(24))]

    #[test]
    fn sled_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_blocking(&ckpt::testing::SledHarness::new(), &ops)?;
    }

    #[test]
    fn faulty_sled_store_matches_the_model(
        ops in proptest::collection::vec(op(), 1..max_ops()),
        seed in any::<u64>(),
    ) {
        run_faulty("sled+faults", ckpt::testing::SledHarness::new(), &ops, seed)?;
    }
}

#[cfg(feature = "sled")]
proptest! {
    #![proptest_config(config(16))]

    #[test]
    fn encrypted_sled_store_matches_the_model(ops in proptest::collection::vec(op(), 1..max_ops())) {
        run_rekeyed(ckpt::testing::SledHarness::new(), &ops)?;
    }
}

/// The SQL backends cost a database (file or schema) per case: fewer cases, unless
/// `CKPT_MODEL_CASES` asks for more.
fn sql_config() -> ProptestConfig {
    config(24)
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
    config(24)
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
