//! What a node sees of its run ([`NodeContext`]): its execution, step and run id, interrupts
//! that ask a person for a value ([`NodeContext::interrupt`], answered with [`Command`]), and
//! journaled tasks ([`NodeContext::task`]) whose results are recorded in the log so that a node
//! run again (after a crash, a failure, an answer or a resume) does not repeat them.
//!
//! Everything a step records is a [`Write`] attached to the checkpoint the step started from
//! (its *base*), on one of the runtime's channels below: a branch's result, a task's result, an
//! interrupt, an answer. None of them is a checkpoint.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::{Arc, Mutex};

use serde::de::DeserializeOwned;
use serde::Serialize;

use futures_util::future::BoxFuture;

use super::{GraphError, StreamMode, StreamModes};
use crate::checkpoint::{CheckpointId, Write};
use crate::error::BoxError;
use crate::store::CheckpointStore;

/// The channel of a fan-out branch's result (task: the branch).
pub const BRANCH: &str = "__branch__";
/// The channel of a journaled task's result (task: the node; metadata `key`, `n`).
pub const JOURNAL: &str = "__journal__";
/// The channel of an interrupt a node raised (task: the node; metadata `id`, `index`).
pub const INTERRUPT: &str = "__interrupt__";
/// The channel of an interrupt's answer (task: the node; metadata `id`, `index`).
pub const RESUME: &str = "__resume__";
/// The channel of the output of one task of a step that ran several (a send, or nodes reached
/// from several tasks): task the task's key; metadata `kind` (`state` or `update`) and, for a
/// send, `input` (a hash of its input).
pub const TASK: &str = "__task__";
/// The channel of the error a node failed with, its retries used up (task: the node; value: the
/// error and its causes, as text).
pub const ERROR: &str = "__error__";

/// An interrupt a node raised and nobody answered yet: what [`super::Outcome::Interrupted`]
/// lists. Answer it with [`Command::resume`] (the only one) or [`Command::resume_by_id`].
#[derive(Debug, Clone, PartialEq)]
pub struct Interrupt {
    /// Stable across runs of the same step: answer by this id.
    pub id: String,
    /// The node (or fan-out branch) that raised it.
    pub node: String,
    /// Its place among the node's interrupts (0 for the first `ctx.interrupt` call).
    pub index: u64,
    /// What the node asked, as JSON.
    pub value: serde_json::Value,
}

/// How to continue a run paused by [`NodeContext::interrupt`]: the answers, written to the log
/// before the node runs again (see [`super::CompiledGraph::resume_with_command`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// The answer to the one pending interrupt.
    Resume(serde_json::Value),
    /// Answers by interrupt id (several pending interrupts: parallel branches, or a node that
    /// asks again).
    ResumeById(BTreeMap<String, serde_json::Value>),
}

impl Command {
    /// Answers the one pending interrupt with `answer` (any `Serialize`; a value that cannot be
    /// turned into JSON becomes `null`).
    pub fn resume(answer: impl Serialize) -> Self {
        Command::Resume(serde_json::to_value(answer).unwrap_or(serde_json::Value::Null))
    }

    /// Answers the interrupt `id`; chain [`Command::and`] for more.
    pub fn resume_by_id(id: impl Into<String>, answer: impl Serialize) -> Self {
        Command::ResumeById(BTreeMap::new()).and(id, answer)
    }

    /// Adds the answer to interrupt `id` (turning a [`Command::Resume`] into answers by id is
    /// refused when run, since its target is unknown: use `resume_by_id` throughout).
    pub fn and(self, id: impl Into<String>, answer: impl Serialize) -> Self {
        let answer = serde_json::to_value(answer).unwrap_or(serde_json::Value::Null);
        match self {
            Command::ResumeById(mut map) => {
                map.insert(id.into(), answer);
                Command::ResumeById(map)
            }
            Command::Resume(first) => {
                let mut map = BTreeMap::new();
                map.insert(String::new(), first);
                map.insert(id.into(), answer);
                Command::ResumeById(map)
            }
        }
    }
}

/// The error a node returns (through `?`) when [`NodeContext::interrupt`] pauses it; the runtime
/// recognises it, records the interrupt and ends the run as interrupted. Never retried.
#[derive(Debug, Clone, thiserror::Error)]
#[error("interrupted: node {node:?} waits for an answer to interrupt {id}")]
pub struct Interrupted {
    /// The interrupt's id.
    pub id: String,
    /// The node.
    pub node: String,
}

/// The error a task returns in a [`super::ReplayMode::Recorded`] replay when the journal holds
/// no result for it: the replay stops at that node and reports it.
#[derive(Debug, Clone, thiserror::Error)]
#[error("replay: task {key:?} (call {n}) of node {node:?} has no recorded result")]
pub struct NotRecorded {
    /// The node.
    pub node: String,
    /// The task's key.
    pub key: String,
    /// Which call of that key in the node (0 for the first).
    pub n: u64,
}

/// How tasks behave in a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TaskMode {
    /// A journaled result is returned, anything else runs and is journaled.
    Live,
    /// Only journaled results (from the recorded run) are returned; nothing runs.
    Recorded,
}

/// What one step's base checkpoint holds, by task: results, interrupts and answers. Updated as
/// the step records more, so a retried node finds what the failed attempt journaled.
#[derive(Debug, Default)]
pub(crate) struct StepRecord {
    /// (task, key, n) -> the write holding its result.
    pub journal: HashMap<(String, String, u64), Write>,
    /// (task, index) -> (id, value) of raised interrupts.
    pub interrupts: BTreeMap<(String, u64), (String, serde_json::Value)>,
    /// (task, index) -> answer.
    pub answers: HashMap<(String, u64), serde_json::Value>,
    /// Interrupts raised in this step that the log does not hold yet.
    pub unwritten: Vec<(String, u64)>,
    /// branch -> the write holding its result (a state).
    pub branches: BTreeMap<String, Write>,
    /// task key -> the write holding its output (a state or an update).
    pub tasks: BTreeMap<String, Write>,
    /// node -> the error it last failed with.
    pub errors: BTreeMap<String, String>,
}

impl StepRecord {
    /// Sorts a checkpoint's writes into a record.
    pub fn from_writes(writes: Vec<Write>) -> Self {
        let mut rec = StepRecord::default();
        for w in writes {
            let meta_u64 = |k: &str| w.metadata.get(k).and_then(serde_json::Value::as_u64);
            let meta_str = |k: &str| {
                w.metadata
                    .get(k)
                    .and_then(|v| v.as_str())
                    .map(str::to_owned)
            };
            match w.channel.as_str() {
                BRANCH => {
                    rec.branches.entry(w.task.clone()).or_insert(w);
                }
                TASK => {
                    rec.tasks.entry(w.task.clone()).or_insert(w);
                }
                JOURNAL => {
                    if let (Some(key), Some(n)) = (meta_str("key"), meta_u64("n")) {
                        rec.journal.entry((w.task.clone(), key, n)).or_insert(w);
                    }
                }
                INTERRUPT => {
                    if let (Some(id), Some(index)) = (meta_str("id"), meta_u64("index")) {
                        rec.interrupts
                            .entry((w.task.clone(), index))
                            .or_insert((id, w.value_json()));
                    }
                }
                ERROR => {
                    // Writes come oldest first: the last failure is kept.
                    let text = w.value_json();
                    let text = text
                        .as_str()
                        .map_or_else(|| text.to_string(), str::to_owned);
                    rec.errors.insert(w.task.clone(), text);
                }
                RESUME => {
                    if let Some(index) = meta_u64("index") {
                        rec.answers
                            .entry((w.task.clone(), index))
                            .or_insert_with(|| w.value_json());
                    }
                }
                _ => {}
            }
        }
        rec
    }

    /// The interrupts raised and not answered, in (node, index) order.
    pub fn pending_interrupts(&self) -> Vec<Interrupt> {
        self.interrupts
            .iter()
            .filter(|(k, _)| !self.answers.contains_key(*k))
            .map(|((node, index), (id, value))| Interrupt {
                id: id.clone(),
                node: node.clone(),
                index: *index,
                value: value.clone(),
            })
            .collect()
    }
}

/// What a node emitted for the stream ([`NodeContext::emit`], [`NodeContext::emit_token`]).
pub(crate) struct Emitted {
    pub node: String,
    pub task: String,
    pub step: u64,
    pub what: EmittedKind,
}

pub(crate) enum EmittedKind {
    Custom(serde_json::Value),
    Token(String),
}

/// Sends what nodes emit to the run's stream (waiting while its buffer is full).
pub(crate) type EmitFn = Arc<dyn Fn(Emitted) -> BoxFuture<'static, ()> + Send + Sync>;

/// What the nodes of one step share: where they write, what the base already holds, and how
/// tasks behave.
pub(crate) struct StepShared {
    pub execution_id: String,
    pub step: u64,
    pub run_id: String,
    pub store: Option<Arc<dyn CheckpointStore>>,
    /// The checkpoint the step started from: what its writes attach to.
    pub base: Option<CheckpointId>,
    pub record: Mutex<StepRecord>,
    pub mode: TaskMode,
    /// In a recorded replay whose step started from another checkpoint than the recorded
    /// step: recorded results used are journaled on this step's base too.
    pub copy_journal: bool,
    /// In a recorded replay: the tasks the journal did not hold.
    pub missing: Mutex<Vec<NotRecorded>>,
    /// Where emitted values and tokens go, and which of them the stream wants.
    pub emit: Option<EmitFn>,
    pub modes: StreamModes,
}

impl StepShared {
    /// The step's record (recovered from a panic elsewhere: it holds plain maps).
    pub(crate) fn record(&self) -> std::sync::MutexGuard<'_, StepRecord> {
        match self.record.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Appends `write` to the base checkpoint (nothing without a checkpointer).
    async fn put(&self, write: Write) -> Result<(), GraphError> {
        match (&self.store, &self.base) {
            (Some(store), Some(base)) => {
                store.put_writes(base, vec![write]).await?;
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// What a node is given besides its state: which run and step it is in, and the means to ask a
/// person ([`NodeContext::interrupt`]) and to run side effects once ([`NodeContext::task`]).
/// Cheap to clone; a clone shares the call counters.
#[derive(Clone)]
pub struct NodeContext {
    shared: Arc<StepShared>,
    node: Arc<str>,
    /// What the task's records (journal, interrupts) are keyed by: the node, or for a send
    /// `node[index]`.
    task: Arc<str>,
    calls: Arc<Mutex<Calls>>,
}

#[derive(Default)]
struct Calls {
    /// Calls of each task key so far in this attempt.
    tasks: HashMap<String, u64>,
    /// Interrupts so far in this attempt.
    interrupts: u64,
}

impl std::fmt::Debug for NodeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeContext")
            .field("execution_id", &self.shared.execution_id)
            .field("node", &self.node)
            .field("step", &self.shared.step)
            .field("run_id", &self.shared.run_id)
            .finish()
    }
}

impl NodeContext {
    /// The context of one task of a step, keyed `task` (a send's `node[index]`).
    pub(crate) fn for_task(shared: Arc<StepShared>, node: &str, task: &str) -> Self {
        NodeContext {
            shared,
            node: node.into(),
            task: task.into(),
            calls: Arc::default(),
        }
    }

    /// The task running: the node, or for a task started by a [`super::SendTo`] the node and
    /// its place among the step's tasks (`node[index]`). What the task records (interrupts,
    /// journaled results) is keyed by it.
    pub fn task_name(&self) -> &str {
        &self.task
    }

    /// The execution this run belongs to.
    pub fn execution_id(&self) -> &str {
        &self.shared.execution_id
    }

    /// The node (or fan-out branch) running.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// The step number (1 for the first node of an execution).
    pub fn step(&self) -> u64 {
        self.shared.step
    }

    /// This run's id ([`super::RunConfig::run_id`]): new for every invoke, resume or replay.
    pub fn run_id(&self) -> &str {
        &self.shared.run_id
    }

    /// The checkpoint this step started from (what its interrupts and task results attach
    /// to); `None` without a checkpointer.
    pub fn base(&self) -> Option<&CheckpointId> {
        self.shared.base.as_ref()
    }

    /// Sends `value` (anything `Serialize`, as JSON) to the run's stream as a
    /// [`super::GraphEvent::Custom`] event, when the stream carries [`StreamMode::Custom`];
    /// otherwise does nothing. Waits while the stream's buffer is full.
    pub fn emit<T: Serialize + ?Sized>(
        &self,
        value: &T,
    ) -> impl Future<Output = ()> + Send + 'static {
        let event = self.wants(StreamMode::Custom).map(|emit| {
            let value = serde_json::to_value(value).unwrap_or(serde_json::Value::Null);
            (emit, self.emitted(EmittedKind::Custom(value)))
        });
        async move {
            if let Some((emit, event)) = event {
                emit(event).await;
            }
        }
    }

    /// Sends a piece of a model's reply to the run's stream as a [`super::GraphEvent::Token`]
    /// event, when the stream carries [`StreamMode::Tokens`]; otherwise does nothing.
    pub fn emit_token(&self, text: &str) -> impl Future<Output = ()> + Send + 'static {
        let event = self
            .wants(StreamMode::Tokens)
            .map(|emit| (emit, self.emitted(EmittedKind::Token(text.to_owned()))));
        async move {
            if let Some((emit, event)) = event {
                emit(event).await;
            }
        }
    }

    /// Whether the run's stream carries model tokens ([`StreamMode::Tokens`]): a node may then
    /// ask its model to stream.
    pub fn streams_tokens(&self) -> bool {
        self.wants(StreamMode::Tokens).is_some()
    }

    /// The run's checkpointer, if it has one.
    pub(crate) fn store(&self) -> Option<&Arc<dyn CheckpointStore>> {
        self.shared.store.as_ref()
    }

    fn wants(&self, mode: StreamMode) -> Option<EmitFn> {
        self.shared
            .emit
            .as_ref()
            .filter(|_| self.shared.modes.has(mode))
            .cloned()
    }

    fn emitted(&self, what: EmittedKind) -> Emitted {
        Emitted {
            node: self.node.to_string(),
            task: self.task.to_string(),
            step: self.shared.step,
            what,
        }
    }

    fn calls(&self) -> std::sync::MutexGuard<'_, Calls> {
        match self.calls.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        }
    }

    /// Asks for a value: the first time, the node stops (return the error with `?`) and the
    /// run ends as [`super::Outcome::Interrupted`], listing this interrupt with `value`; once
    /// answered ([`super::CompiledGraph::resume_with_command`]) the node runs again from its
    /// start and this call returns the answer. Several calls in one node are matched to their
    /// answers in order. Needs a checkpointer ([`GraphError::NoCheckpointer`] otherwise).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use ckpt::graph::{Command, CompileConfig, NodeContext, Outcome, RunConfig, StateGraph, END};
    /// use ckpt::{CheckpointStore, Store};
    ///
    /// async fn ask(mut s: Vec<String>, ctx: NodeContext) -> Result<Vec<String>, ckpt::BoxError> {
    ///     let name: String = ctx.interrupt(&"what is your name?")?;
    ///     s.push(format!("hello, {name}"));
    ///     Ok(s)
    /// }
    ///
    /// let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    /// let mut g = StateGraph::<Vec<String>>::new();
    /// g.add_node_with_context("ask", ask).add_edge("ask", END).set_entry_point("ask");
    /// let app = g.compile(CompileConfig::default().checkpointer(store))?;
    /// let out = app.invoke(Vec::new(), RunConfig::execution_id("hi")).await?;
    /// let Outcome::Interrupted { interrupts, .. } = out else { panic!("not paused") };
    /// assert_eq!(interrupts[0].value, "what is your name?");
    /// let out = app.resume_with_command("hi", Command::resume("Ada")).await?;
    /// assert_eq!(out.state(), &vec!["hello, Ada".to_string()]);
    /// # Ok(()) }
    /// ```
    pub fn interrupt<Q: Serialize + ?Sized, A: DeserializeOwned>(
        &self,
        value: &Q,
    ) -> Result<A, BoxError> {
        let index = {
            let mut calls = self.calls();
            calls.interrupts += 1;
            calls.interrupts - 1
        };
        self.interrupt_at(index, value)
    }

    /// [`NodeContext::interrupt`] keyed by `key` instead of the call's place in the node (a
    /// subgraph's interrupts, keyed by their own ids): the same key finds the same answer
    /// however many interrupts came before it.
    pub(crate) fn interrupt_keyed<Q: Serialize + ?Sized, A: DeserializeOwned>(
        &self,
        key: &str,
        value: &Q,
    ) -> Result<A, BoxError> {
        let hash = blake3::hash(key.as_bytes());
        let mut first = [0u8; 8];
        first.copy_from_slice(&hash.as_bytes()[..8]);
        // The top bit set: never the place of an ordinary call.
        self.interrupt_at(u64::from_le_bytes(first) | 1 << 63, value)
    }

    fn interrupt_at<Q: Serialize + ?Sized, A: DeserializeOwned>(
        &self,
        index: u64,
        value: &Q,
    ) -> Result<A, BoxError> {
        let key = (self.task.to_string(), index);
        let mut record = self.shared.record();
        if let Some(answer) = record.answers.get(&key) {
            return serde_json::from_value(answer.clone()).map_err(|e| {
                format!(
                    "the answer to interrupt {index} of node {:?} does not fit the type the node \
                     asks for: {e}",
                    self.task
                )
                .into()
            });
        }
        if self.shared.store.is_none() {
            return Err(Box::new(GraphError::NoCheckpointer));
        }
        let value = serde_json::to_value(value)
            .map_err(|e| format!("the interrupt's value cannot be written as JSON: {e}"))?;
        let id = self.interrupt_id(index);
        if !record.interrupts.contains_key(&key) {
            record.unwritten.push(key.clone());
            record.interrupts.insert(key, (id.clone(), value));
        }
        Err(Box::new(Interrupted {
            id,
            node: self.task.to_string(),
        }))
    }

    /// Runs `work` once per recorded result: when the log holds this task's result (the node
    /// ran before, from the same checkpoint), returns it without running `work`; otherwise runs
    /// it and appends its result to the log before returning it. A failure is not recorded
    /// (the task runs again next time). `key` names the task within the node; calling the same
    /// key several times in one run of the node journals each call separately, matched in
    /// order. Give external services [`NodeContext::task_key`] as an idempotency key: at most
    /// the one task in flight at a crash runs twice.
    ///
    /// The result is an ordinary serde value, stored through the codec like any state.
    pub fn task<T, E, F>(
        &self,
        key: &str,
        work: F,
    ) -> impl Future<Output = Result<T, BoxError>> + Send + 'static
    where
        T: Serialize + DeserializeOwned + Send + 'static,
        E: Into<BoxError>,
        F: Future<Output = Result<T, E>> + Send + 'static,
    {
        let n = {
            let mut calls = self.calls();
            let n = calls.tasks.entry(key.to_owned()).or_insert(0);
            *n += 1;
            *n - 1
        };
        let shared = self.shared.clone();
        let node = self.task.to_string();
        let key = key.to_owned();
        async move {
            let recorded = shared
                .record()
                .journal
                .get(&(node.clone(), key.clone(), n))
                .cloned();
            if let Some(w) = recorded {
                let out: T = w.value().map_err(|e| {
                    format!(
                        "the recorded result of task {key:?} of node {node:?} does not fit the \
                         type the node asks for: {e}"
                    )
                })?;
                if shared.copy_journal {
                    // The replay's own branch keeps the result too, so it can be replayed.
                    shared.put(w).await?;
                }
                return Ok(out);
            }
            if shared.mode == TaskMode::Recorded {
                let missing = NotRecorded { node, key, n };
                if let Ok(mut m) = shared.missing.lock() {
                    m.push(missing.clone());
                }
                return Err(Box::new(missing) as BoxError);
            }
            let out = work.await.map_err(Into::into)?;
            if shared.store.is_some() && shared.base.is_some() {
                let w = Write::new(&node, JOURNAL, &out)
                    .map_err(GraphError::from)?
                    .with_metadata("key", key.as_str())
                    .with_metadata("n", n);
                shared.put(w.clone()).await?;
                shared.record().journal.insert((node, key, n), w);
            }
            Ok(out)
        }
    }

    /// The idempotency key the next [`NodeContext::task`] call with `key` will run under: the
    /// same every time this node runs from the same checkpoint, so an external service that
    /// deduplicates on it sees a task re-run after a crash as the same request.
    pub fn task_key(&self, key: &str) -> String {
        let n = self.calls().tasks.get(key).copied().unwrap_or(0);
        self.place_hash(&[key.as_bytes(), &n.to_le_bytes()], 16)
    }

    fn base_version(&self) -> u64 {
        self.shared.base.as_ref().map_or(0, CheckpointId::version)
    }

    /// The id of this node's interrupt `index` in this step: stable across runs of the step.
    fn interrupt_id(&self, index: u64) -> String {
        self.place_hash(&[&index.to_le_bytes()], 8)
    }

    /// Hex of the first `bytes` of a hash of this node's place (execution, base checkpoint,
    /// node) and `extra`, each part length-prefixed: the same in every run of the step.
    fn place_hash(&self, extra: &[&[u8]], bytes: usize) -> String {
        let base = self.base_version().to_le_bytes();
        let place: [&[u8]; 3] = [
            self.shared.execution_id.as_bytes(),
            &base,
            self.task.as_bytes(),
        ];
        let mut h = blake3::Hasher::new();
        for part in place.iter().chain(extra) {
            h.update(&(part.len() as u64).to_le_bytes());
            h.update(part);
        }
        crate::hash::hex(&h.finalize().as_bytes()[..bytes])
    }
}

/// The write recording interrupt `i` (raised, not yet written) of a step.
pub(crate) fn interrupt_write(i: &Interrupt) -> Result<Write, GraphError> {
    Ok(Write::new(&i.node, INTERRUPT, &i.value)?
        .with_metadata("id", i.id.as_str())
        .with_metadata("index", i.index))
}

/// The write answering interrupt `i`.
pub(crate) fn answer_write(i: &Interrupt, answer: &serde_json::Value) -> Result<Write, GraphError> {
    Ok(Write::new(&i.node, RESUME, answer)?
        .with_metadata("id", i.id.as_str())
        .with_metadata("index", i.index))
}

/// Whether a node's error is the pause of [`NodeContext::interrupt`].
pub(crate) fn is_interrupt(e: &BoxError) -> bool {
    e.downcast_ref::<Interrupted>().is_some()
}
