//! The compiled graph: the execution loop, checkpoints, interrupts, resume and streaming.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::join_all;
use futures_util::Stream;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::context::{
    self, is_interrupt, Command, EmitFn, Emitted, EmittedKind, Interrupt, NodeContext, NotRecorded,
    StepRecord, StepShared, TaskMode,
};
use super::reduce::{NodeInput, Output};
use super::replay::Track;
use super::{
    CompileConfig, Durability, Edge, GraphError, GraphEvent, GraphState, InputFn, NodeSpec,
    Outcome, RunConfig, StreamMode, END, INPUT,
};
use crate::checkpoint::{Checkpoint, CheckpointId, Write};
use crate::error::BoxError;
use crate::store::CheckpointStore;

type EventTx<S> = mpsc::Sender<Result<GraphEvent<S>, GraphError>>;

/// A validated graph, ready to run. Cheap to clone.
pub struct CompiledGraph<S> {
    inner: Arc<Inner<S>>,
}

impl<S> Clone for CompiledGraph<S> {
    fn clone(&self) -> Self {
        CompiledGraph {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<S> {
    nodes: BTreeMap<String, NodeSpec<S>>,
    edges: BTreeMap<String, Edge<S>>,
    /// Every node that is a branch of a fan-out.
    branches: BTreeSet<String>,
    entry: String,
    config: CompileConfig,
    /// How a new run of a finished execution merges its input into the last state (`None`:
    /// the input replaces it).
    merge_input: Option<InputFn<S>>,
}

/// One task of a step that runs several nodes: the nodes reached from the tasks of the step
/// before (each once), and every [`super::SendTo`].
#[derive(Clone)]
pub(super) struct Task {
    pub(super) node: String,
    /// A send's input (`None`: the node is given the state).
    input: Option<Arc<[u8]>>,
    /// What the task's records are keyed by: the node, or for a send `node[index]`.
    pub(super) key: String,
}

impl Task {
    /// A hash of a send's input, recorded with its output so that a recorded output is only
    /// reused for the same input.
    fn input_hash(&self) -> Option<String> {
        self.input
            .as_ref()
            .map(|b| crate::hash::hex(&blake3::hash(b).as_bytes()[..16]))
    }
}

/// The step after a node (or a step's tasks): one node (or [`END`]), or several tasks.
pub(super) enum Plan {
    Node(String),
    Tasks(Pending),
}

/// A step of several tasks, and the nodes of the step before that led to it (its
/// checkpoint's `ran` metadata: a resume computes the tasks again from them).
#[derive(Clone)]
pub(super) struct Pending {
    pub(super) ran: Vec<String>,
    pub(super) tasks: Arc<Vec<Task>>,
}

/// Where a run stands between two steps.
pub(super) struct Cursor<S> {
    state: S,
    /// The node to run next, or [`END`] (ignored when `fan` is set).
    next: String,
    /// When the next step is the fan-out leaving this node: its branches run next.
    fan: Option<String>,
    /// When the next step runs several tasks (sends, or nodes reached from several tasks).
    pub(super) tasks: Option<Pending>,
    /// The step of the last node that ran (0 before the first).
    step: u64,
    /// The checkpoint holding `state`, if one was saved, and whether it records an interrupt
    /// that was already honoured (resuming from it must not pause again).
    last: Option<(CheckpointId, String, bool)>,
    /// The checkpoint a time travel resumed from, when it is not the execution's latest: the
    /// run's first checkpoint names it as its parent, so the run is a new branch from there.
    pub(super) branch_from: Option<CheckpointId>,
    /// The execution's latest checkpoint when the run started (`None`: it had none): the run's
    /// first save lands only if it is still the latest, so two workers cannot interleave.
    pub(super) fence: Option<CheckpointId>,
}

impl<S> Cursor<S> {
    /// Whether nothing runs next from here: the run ended.
    fn finished(&self) -> bool {
        self.fan.is_none() && self.tasks.is_none() && self.next == END
    }

    /// Marks the position's static interrupt as honoured: the run goes on without pausing.
    pub(super) fn honour_interrupt(&mut self) {
        if let Some((_, _, honoured)) = &mut self.last {
            *honoured = true;
        }
    }

    /// A fresh run's position: `state` about to enter `entry`.
    fn start(state: S, entry: String) -> Self {
        Cursor {
            state,
            next: entry,
            fan: None,
            tasks: None,
            step: 0,
            last: None,
            branch_from: None,
            fence: None,
        }
    }
}

/// The events of a streamed run ([`CompiledGraph::stream`]); the run waits when its buffer is
/// full, so nothing is dropped. Ends after `Finished`, `Interrupted` or an error.
pub struct GraphStream<S> {
    rx: mpsc::Receiver<Result<GraphEvent<S>, GraphError>>,
}

impl<S> Stream for GraphStream<S> {
    type Item = Result<GraphEvent<S>, GraphError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
    }
}

fn is_pending_write(cp: &Checkpoint) -> bool {
    cp.metadata.get("pending_write") == Some(&serde_json::Value::Bool(true))
}

fn next_list(next: &str) -> Vec<String> {
    if next == END {
        Vec::new()
    } else {
        vec![next.to_owned()]
    }
}

impl<S: GraphState> CompiledGraph<S> {
    pub(super) fn new(
        nodes: BTreeMap<String, NodeSpec<S>>,
        edges: BTreeMap<String, Edge<S>>,
        entry: String,
        config: CompileConfig,
        merge_input: Option<InputFn<S>>,
    ) -> Self {
        let branches = edges
            .values()
            .filter_map(|e| match e {
                Edge::FanOut { branches, .. } => Some(branches.iter().cloned()),
                _ => None,
            })
            .flatten()
            .collect();
        CompiledGraph {
            inner: Arc::new(Inner {
                nodes,
                edges,
                branches,
                entry,
                config,
                merge_input,
            }),
        }
    }

    /// The same graph (nodes, edges, interrupts), saving to `store` instead.
    pub fn with_checkpointer(&self, store: Arc<dyn CheckpointStore>) -> Self {
        let mut config = self.inner.config.clone();
        config.checkpointer = Some(store);
        CompiledGraph {
            inner: Arc::new(Inner {
                nodes: self.inner.nodes.clone(),
                edges: self.inner.edges.clone(),
                branches: self.inner.branches.clone(),
                entry: self.inner.entry.clone(),
                config,
                merge_input: self.inner.merge_input.clone(),
            }),
        }
    }

    pub(super) fn store(&self) -> Result<&Arc<dyn CheckpointStore>, GraphError> {
        self.inner
            .config
            .checkpointer
            .as_ref()
            .ok_or(GraphError::NoCheckpointer)
    }

    /// Runs the graph from its entry point with `input`, until [`super::END`] or an interrupt.
    ///
    /// With a checkpointer, an execution id that already has checkpoints is **continued**:
    /// - when its latest checkpoint did not finish (a crash, a failure, a pause), the run goes
    ///   on from there (like [`CompiledGraph::resume_latest`]; `input` is then ignored), so
    ///   invoking again after a crash picks up where the run stopped;
    /// - when it finished, a **new run of the same execution** starts (a new turn of a chat):
    ///   `input` is merged into the last state ([`super::Reducible::merge_input`] for a graph
    ///   with reducers; otherwise it replaces the state), saved as a new input checkpoint after
    ///   the last one, and the graph runs from its entry point. The history stays one log;
    ///   every checkpoint's metadata names the run that saved it (`run_id`).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use ckpt::graph::{reduce, CompileConfig, Reducible, RunConfig, StateGraph, END};
    /// use ckpt::{CheckpointStore, Store};
    ///
    /// #[derive(Clone, Default, serde::Serialize, serde::Deserialize)]
    /// struct Chat { messages: Vec<String> }
    ///
    /// impl Reducible for Chat {
    ///     type Update = Vec<String>;
    ///     fn apply(&mut self, new: Vec<String>) { reduce::append(&mut self.messages, new) }
    ///     fn merge_input(&mut self, input: Chat) { self.apply(input.messages) }
    /// }
    ///
    /// let mut g = StateGraph::<Chat>::new();
    /// g.add_update_node("echo", |c: Chat| async move {
    ///     let last = c.messages.last().cloned().unwrap_or_default();
    ///     Ok::<_, std::io::Error>(vec![format!("echo: {last}")])
    /// });
    /// g.add_edge("echo", END).set_entry_point("echo");
    /// let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    /// let app = g.compile(CompileConfig::default().checkpointer(store.clone()))?;
    ///
    /// let turn = |text: &str| Chat { messages: vec![text.to_owned()] };
    /// app.invoke(turn("hi"), RunConfig::execution_id("chat")).await?;
    /// let out = app.invoke(turn("bye"), RunConfig::execution_id("chat")).await?;
    /// assert_eq!(out.state().messages, ["hi", "echo: hi", "bye", "echo: bye"]);
    /// assert_eq!(store.list("chat").await?.len(), 4); // two turns: an input and a step each
    /// # Ok(()) }
    /// ```
    pub async fn invoke(&self, input: S, config: RunConfig) -> Result<Outcome<S>, GraphError> {
        self.invoke_with(input, config, None).await
    }

    /// Runs execution `config`'s id to its end whatever state it is in: starts it with `input`
    /// when it has no checkpoint, continues it from its latest checkpoint when it stopped
    /// (a crash, a failure, a pause), and returns its final state without running anything
    /// when it finished. The call a worker that may be restarted repeats until it succeeds:
    /// unlike [`CompiledGraph::invoke`], it never starts a second run of an execution that
    /// finished just before the worker was killed.
    pub async fn start_or_resume(
        &self,
        input: S,
        config: RunConfig,
    ) -> Result<Outcome<S>, GraphError> {
        if let Some(store) = &self.inner.config.checkpointer {
            if let Some(cp) = store.latest(&config.execution_id).await? {
                let cursor = self.position(cp).await?;
                return self
                    .run_loop(cursor, &mut RunState::new(config, None))
                    .await;
            }
        }
        self.invoke(input, config).await
    }

    /// Like [`CompiledGraph::invoke`], reporting every step as a [`super::GraphEvent`] on a
    /// bounded channel of [`RunConfig::buffer`] events: the run (in a spawned task, so this must
    /// be called inside a tokio runtime) waits when the consumer is slow. An error is the last
    /// item. Dropping the stream does not stop the run.
    pub fn stream(&self, input: S, config: RunConfig) -> GraphStream<S> {
        let (tx, rx) = mpsc::channel(config.buffer.max(1));
        let app = self.clone();
        let watcher = tx.clone();
        tokio::spawn(async move {
            let run = tokio::spawn(async move {
                let res = app.invoke_with(input, config, Some(tx.clone())).await;
                if let Err(e) = res {
                    let _ = tx.send(Err(e)).await;
                }
            });
            if let Err(e) = run.await {
                let _ = watcher.send(Err(GraphError::Task(e.to_string()))).await;
            }
        });
        GraphStream { rx }
    }

    /// Continues execution `execution_id` from checkpoint `checkpoint` (any checkpoint of it,
    /// not only the latest): from its saved state, with its saved next node. New checkpoints are
    /// appended to the same execution; when `checkpoint` is not the latest, the first of them
    /// names it as its parent, so the run is a new branch of the execution's tree
    /// ([`ckpt::Store::heads`](crate::Store::heads)). An interrupt recorded on that checkpoint is
    /// not repeated.
    pub async fn resume(
        &self,
        execution_id: &str,
        checkpoint: &CheckpointId,
    ) -> Result<Outcome<S>, GraphError> {
        self.resume_with(
            execution_id,
            checkpoint,
            RunConfig::execution_id(execution_id),
        )
        .await
    }

    /// [`CompiledGraph::resume`] with a run configuration (its execution id must be the
    /// checkpoint's).
    pub async fn resume_with(
        &self,
        execution_id: &str,
        checkpoint: &CheckpointId,
        config: RunConfig,
    ) -> Result<Outcome<S>, GraphError> {
        if checkpoint.execution_id() != execution_id || config.execution_id != execution_id {
            return Err(GraphError::InvalidCheckpoint {
                id: checkpoint.clone(),
                reason: format!("it is not a checkpoint of execution {execution_id:?}"),
            });
        }
        let store = self.store()?;
        let given = store.load(checkpoint).await?;
        let latest = store.latest(execution_id).await?.map(|c| c.id);
        let branches = !is_pending_write(&given) && latest.as_ref() != Some(&given.id);
        let cp = self.resolve(given).await?;
        let mut cursor = self.cursor_from(&cp)?;
        if branches {
            cursor.branch_from = Some(cp.id.clone());
        }
        cursor.fence = latest;
        self.run_loop(cursor, &mut RunState::new(config, None))
            .await
    }

    /// Crash recovery: continues execution `execution_id` from its latest checkpoint
    /// ([`GraphError::NoCheckpoint`] if it has none).
    pub async fn resume_latest(&self, execution_id: &str) -> Result<Outcome<S>, GraphError> {
        let cp = self
            .store()?
            .latest(execution_id)
            .await?
            .ok_or_else(|| GraphError::NoCheckpoint(execution_id.to_owned()))?;
        let cursor = self.position(cp).await?;
        let mut run = RunState::new(RunConfig::execution_id(execution_id), None);
        self.run_loop(cursor, &mut run).await
    }

    /// Answers the interrupts pending on execution `execution_id`'s latest checkpoint
    /// ([`NodeContext::interrupt`]) and continues the run: the answers are written to the log
    /// first (a crash after this call began does not lose them), then the interrupted node(s)
    /// run again, and each `ctx.interrupt` call that was answered returns its answer.
    ///
    /// [`GraphError::InvalidCommand`] when nothing is pending, when [`Command::Resume`] is
    /// given while several interrupts are pending (answer them by id), or when an id is not
    /// pending.
    pub async fn resume_with_command(
        &self,
        execution_id: &str,
        command: Command,
    ) -> Result<Outcome<S>, GraphError> {
        self.resume_with_command_config(RunConfig::execution_id(execution_id), command)
            .await
    }

    /// [`CompiledGraph::resume_with_command`] with a run configuration.
    pub async fn resume_with_command_config(
        &self,
        config: RunConfig,
        command: Command,
    ) -> Result<Outcome<S>, GraphError> {
        let execution_id = config.execution_id.clone();
        let (latest, cp, pending) = self
            .latest_pending(&execution_id)
            .await?
            .ok_or_else(|| GraphError::NoCheckpoint(execution_id.clone()))?;
        if pending.is_empty() {
            return Err(GraphError::InvalidCommand {
                execution: execution_id,
                reason: format!(
                    "no interrupt is waiting for an answer at its latest checkpoint {}",
                    cp.id
                ),
            });
        }
        self.answer_and_run(config, latest, cp, pending, command, false)
            .await
    }

    /// [`CompiledGraph::resume_with_command`] at `checkpoint`, any checkpoint of the execution
    /// `config` names that has interrupts waiting (the one an [`Outcome::Interrupted`] names,
    /// even when the execution has moved on since: a run resumed from an old checkpoint that
    /// paused at its first step): the answers are written there, and the run continues from
    /// it, as a new branch when it is not the latest.
    pub async fn resume_with_command_at(
        &self,
        config: RunConfig,
        checkpoint: &CheckpointId,
        command: Command,
    ) -> Result<Outcome<S>, GraphError> {
        let store = self.store()?;
        let execution_id = config.execution_id.clone();
        if checkpoint.execution_id() != execution_id {
            return Err(GraphError::InvalidCheckpoint {
                id: checkpoint.clone(),
                reason: format!("it is not a checkpoint of execution {execution_id:?}"),
            });
        }
        let latest = store
            .latest(&execution_id)
            .await?
            .ok_or_else(|| GraphError::NoCheckpoint(execution_id.clone()))?
            .id;
        let given = store.load(checkpoint).await?;
        let branches = !is_pending_write(&given) && given.id != latest;
        let cp = self.resolve(given).await?;
        let pending = StepRecord::from_writes(store.writes(&cp.id).await?).pending_interrupts();
        if pending.is_empty() {
            return Err(GraphError::InvalidCommand {
                execution: execution_id,
                reason: format!("no interrupt is waiting for an answer at checkpoint {checkpoint}"),
            });
        }
        self.answer_and_run(config, latest, cp, pending, command, branches)
            .await
    }

    /// The interrupts waiting for an answer at `checkpoint` (of any execution).
    pub(super) async fn interrupts_at(
        &self,
        checkpoint: &CheckpointId,
    ) -> Result<Vec<Interrupt>, GraphError> {
        let store = self.store()?;
        let cp = self.resolve(store.load(checkpoint).await?).await?;
        Ok(StepRecord::from_writes(store.writes(&cp.id).await?).pending_interrupts())
    }

    /// Writes the answers `command` gives to the `pending` interrupts of `cp` and runs on from
    /// `cp` (as a new branch of the execution's tree when `branches`), fenced on `latest`,
    /// the execution's latest.
    async fn answer_and_run(
        &self,
        config: RunConfig,
        latest: CheckpointId,
        cp: Checkpoint,
        pending: Vec<Interrupt>,
        command: Command,
        branches: bool,
    ) -> Result<Outcome<S>, GraphError> {
        let store = self.store()?;
        let execution_id = config.execution_id.clone();
        let invalid = |reason: String| GraphError::InvalidCommand {
            execution: execution_id.clone(),
            reason,
        };
        let answers: Vec<(&Interrupt, serde_json::Value)> = match command {
            Command::Resume(answer) => match pending.as_slice() {
                [one] => vec![(one, answer)],
                many => {
                    return Err(invalid(format!(
                    "{} interrupts are waiting ({}); answer them by id with Command::resume_by_id",
                    many.len(),
                    many.iter()
                        .map(|i| format!("{} from {:?}", i.id, i.node))
                        .collect::<Vec<_>>()
                        .join(", ")
                )))
                }
            },
            Command::ResumeById(map) => {
                let mut out = Vec::with_capacity(map.len());
                for (id, answer) in map {
                    let Some(i) = pending.iter().find(|i| i.id == id) else {
                        return Err(invalid(format!(
                            "no pending interrupt has id {id:?}; pending: {}",
                            pending
                                .iter()
                                .map(|i| i.id.as_str())
                                .collect::<Vec<_>>()
                                .join(", ")
                        )));
                    };
                    out.push((i, answer));
                }
                out
            }
        };
        let writes = answers
            .iter()
            .map(|(i, a)| context::answer_write(i, a))
            .collect::<Result<Vec<_>, _>>()?;
        store.put_writes(&cp.id, writes).await?;
        let mut cursor = self.cursor_from(&cp)?;
        if branches {
            cursor.branch_from = Some(cp.id.clone());
        }
        cursor.fence = Some(latest);
        self.run_loop(cursor, &mut RunState::new(config, None))
            .await
    }

    /// The interrupts waiting for an answer at execution `execution_id`'s latest checkpoint.
    pub async fn pending_interrupts(
        &self,
        execution_id: &str,
    ) -> Result<Vec<Interrupt>, GraphError> {
        Ok(self
            .latest_pending(execution_id)
            .await?
            .map(|(_, _, pending)| pending)
            .unwrap_or_default())
    }

    /// `execution_id`'s latest checkpoint's id, the run position it records, and the
    /// interrupts waiting there (`None`: the execution has no checkpoint).
    async fn latest_pending(
        &self,
        execution_id: &str,
    ) -> Result<Option<(CheckpointId, Checkpoint, Vec<Interrupt>)>, GraphError> {
        let store = self.store()?;
        let Some(cp) = store.latest(execution_id).await? else {
            return Ok(None);
        };
        let latest = cp.id.clone();
        let cp = self.resolve(cp).await?;
        let pending = StepRecord::from_writes(store.writes(&cp.id).await?).pending_interrupts();
        Ok(Some((latest, cp, pending)))
    }

    /// The run position of `latest`, an execution's latest checkpoint, with the run fenced on
    /// it.
    pub(super) async fn position(&self, latest: Checkpoint) -> Result<Cursor<S>, GraphError> {
        let fence = latest.id.clone();
        let cp = self.resolve(latest).await?;
        let mut cursor = self.cursor_from(&cp)?;
        cursor.fence = Some(fence);
        Ok(cursor)
    }

    /// Saves `state` as a new checkpoint of `checkpoint`'s execution, a child of `checkpoint`
    /// (of its fan-out step's checkpoint for a pending write; a new branch when it is not the
    /// latest), with the same next node(s) as `checkpoint`, and returns its id;
    /// [`CompiledGraph::resume`] from it continues with the new state. An interrupt honoured
    /// at `checkpoint` counts as honoured at the new one too.
    ///
    /// The save is fenced like a run's: it lands only if the execution's latest checkpoint is
    /// still the one this call read, else [`GraphError::Conflict`] (a worker is advancing the
    /// execution); and a run that started before it gets [`GraphError::Conflict`] at its next
    /// save.
    pub async fn update_state(
        &self,
        checkpoint: &CheckpointId,
        state: S,
    ) -> Result<CheckpointId, GraphError> {
        let store = self.store()?;
        let source = store.load(checkpoint).await?;
        let source = self.resolve(source).await?;
        let cursor = self.cursor_from(&source)?;
        let interrupted = cursor.last.as_ref().is_some_and(|(_, _, i)| *i);
        // The tasks of a step of several follow from the new state.
        let cursor = match &cursor.tasks {
            Some(p) => {
                let ran = p.ran.clone();
                self.after(ran, cursor.step, state.clone(), cursor.last.clone())?
            }
            None => cursor,
        };
        let meta = StepMeta {
            node: source.node_name.clone(),
            step: cursor.step,
            next: self.next_names(&cursor),
            source: "update",
            interrupted,
            ran: cursor.tasks.as_ref().map(|p| p.ran.clone()),
        };
        let cp = meta
            .checkpoint(&source.execution_id, &state, None)?
            .with_metadata("updated_from", checkpoint.to_string());
        let latest = store.latest(&source.execution_id).await?.map(|c| c.id);
        let saved = fenced_save(store.clone(), cp, Some(source.id.clone()), latest).await?;
        Ok(saved.id)
    }

    /// A pending write saved as a checkpoint (metadata `pending_write: true`, by ckpt versions
    /// before pending writes became [`Write`]s) is not a run position: the position is the
    /// checkpoint the fan-out step started from. (Such a step's branches all run again: their
    /// old results are not read.)
    pub(super) async fn resolve(&self, cp: Checkpoint) -> Result<Checkpoint, GraphError> {
        if !is_pending_write(&cp) {
            return Ok(cp);
        }
        let base = cp
            .metadata
            .get("fan_out_base")
            .and_then(serde_json::Value::as_u64)
            .ok_or_else(|| GraphError::InvalidCheckpoint {
                id: cp.id.clone(),
                reason: "it is a pending write without a \"fan_out_base\" version".into(),
            })?;
        let id = CheckpointId::new(&cp.execution_id, base)?;
        Ok(self.store()?.load(&id).await?)
    }

    /// The node(s) that run after `cur`, as a checkpoint's `next` metadata lists them (a node
    /// sent several tasks is listed once per task).
    fn next_names(&self, cur: &Cursor<S>) -> Vec<String> {
        if let Some(p) = &cur.tasks {
            return p.tasks.iter().map(|t| t.node.clone()).collect();
        }
        match &cur.fan {
            Some(from) => self.fan_branches(from),
            None => next_list(&cur.next),
        }
    }

    /// The position after a step of the nodes `ran` left `state`: the step of several tasks
    /// their edges lead to, or the one node (or [`END`]).
    fn after(
        &self,
        ran: Vec<String>,
        step: u64,
        state: S,
        last: Option<(CheckpointId, String, bool)>,
    ) -> Result<Cursor<S>, GraphError> {
        let (next, tasks) = match self.plan(&ran, &state)? {
            Plan::Node(n) => (n, None),
            Plan::Tasks(p) => (END.to_owned(), Some(p)),
        };
        Ok(Cursor {
            state,
            next,
            fan: None,
            tasks,
            step,
            last,
            branch_from: None,
            fence: None,
        })
    }

    fn fan_branches(&self, from: &str) -> Vec<String> {
        match self.inner.edges.get(from) {
            Some(Edge::FanOut { branches, .. }) => branches.clone(),
            _ => Vec::new(),
        }
    }

    /// The run position a checkpoint records.
    pub(super) fn cursor_from(&self, cp: &Checkpoint) -> Result<Cursor<S>, GraphError> {
        let invalid = |reason: String| GraphError::InvalidCheckpoint {
            id: cp.id.clone(),
            reason,
        };
        let next: Vec<String> = cp
            .metadata
            .get("next")
            .and_then(|v| serde_json::from_value(v.clone()).ok())
            .ok_or_else(|| {
                invalid("its metadata has no \"next\" list; it was not saved by a graph".into())
            })?;
        let step = cp
            .metadata
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let interrupted = cp.metadata.get("interrupted") == Some(&serde_json::Value::Bool(true));
        let last = Some((cp.id.clone(), cp.node_name.clone(), interrupted));
        if cp.metadata.get("tasks") == Some(&serde_json::Value::Bool(true)) {
            // A step of several tasks: computed again from the nodes that led to it.
            let ran = match cp.metadata.get("ran") {
                Some(v) => serde_json::from_value(v.clone()).map_err(|_| {
                    invalid("its \"ran\" metadata is not a list of node names".into())
                })?,
                None => vec![cp.node_name.clone()],
            };
            let mut cursor = self.after(ran, step, cp.state()?, last)?;
            cursor.fence = Some(cp.id.clone());
            return Ok(cursor);
        }
        let fan = match self.inner.edges.get(&cp.node_name) {
            Some(Edge::FanOut { branches, .. }) if !next.is_empty() && *branches == next => {
                Some(cp.node_name.clone())
            }
            _ => None,
        };
        let next = match next.as_slice() {
            _ if fan.is_some() => END.to_owned(),
            [] => END.to_owned(),
            [one] if self.inner.nodes.contains_key(one) => one.clone(),
            [one] => {
                return Err(invalid(format!(
                    "its next node {one:?} is not in this graph"
                )))
            }
            _ => return Err(invalid(format!("it has several next nodes {next:?}"))),
        };
        Ok(Cursor {
            state: cp.state()?,
            next,
            fan,
            tasks: None,
            step,
            last,
            branch_from: None,
            fence: Some(cp.id.clone()),
        })
    }

    async fn invoke_with(
        &self,
        input: S,
        config: RunConfig,
        events: Option<EventTx<S>>,
    ) -> Result<Outcome<S>, GraphError> {
        self.start_with(input, config, events, false).await
    }

    /// [`CompiledGraph::invoke`]; with `replace`, a new run always starts, from `input` alone
    /// (a subgraph's next run), whatever the graph's reducers and wherever the execution
    /// stands.
    pub(super) async fn start_with(
        &self,
        input: S,
        config: RunConfig,
        events: Option<EventTx<S>>,
        replace: bool,
    ) -> Result<Outcome<S>, GraphError> {
        let mut run = RunState::new(config, events);
        let Some(store) = &self.inner.config.checkpointer else {
            let cursor = Cursor::start(input, self.inner.entry.clone());
            return self.run_loop(cursor, &mut run).await;
        };
        let mut start = Cursor::start(input, self.inner.entry.clone());
        if let Some(cp) = store.latest(&run.config.execution_id).await? {
            let last = self.position(cp).await?;
            if !last.finished() && !replace {
                return self.run_loop(last, &mut run).await;
            }
            // A new turn: the input merges into where the last run ended, and the new run's
            // input checkpoint follows it (fenced on it).
            let mut state = last.state;
            match &self.inner.merge_input {
                Some(merge) if !replace => merge(&mut state, start.state),
                _ => state = start.state,
            }
            start.state = state;
            start.step = last.step;
            start.fence = last.fence;
        }
        // The run's input is a checkpoint too: the first step's base (what its tasks and
        // interrupts attach to), and where a replay of the whole run starts. Its save expects
        // the execution's latest to be the cursor's fence (none for a fresh execution).
        let input_cp = StepMeta {
            node: INPUT.to_owned(),
            step: start.step,
            next: next_list(&start.next),
            source: "input",
            interrupted: self.inner.config.interrupt_before.contains(&start.next),
            ran: None,
        };
        self.run_saving(start, &mut run, Some(input_cp)).await
    }

    /// What the step about to run from `cur` finds recorded on its base checkpoint: on the
    /// first step of a run (it may have run before: a crash, a failure, an answer), or in a
    /// replay (the recorded run's base for this step).
    async fn step_record(
        &self,
        cur: &Cursor<S>,
        run: &RunState<S>,
        resuming: bool,
        index: usize,
    ) -> Result<(StepRecord, TaskMode, bool), GraphError> {
        let Some(store) = &self.inner.config.checkpointer else {
            return Ok((StepRecord::default(), TaskMode::Live, false));
        };
        if let Some(track) = &run.track {
            let recorded_base = track.recorded_base(index);
            let mut record = match &recorded_base {
                Some(base) => StepRecord::from_writes(store.writes(base).await?),
                None => StepRecord::default(),
            };
            let elsewhere = recorded_base.as_ref() != cur.last.as_ref().map(|(id, _, _)| id);
            // A replay runs every node again: only tasks (when recorded) and answers carry over.
            record.branches.clear();
            record.tasks.clear();
            let mode = match track.mode {
                super::ReplayMode::Recorded => TaskMode::Recorded,
                super::ReplayMode::Live => {
                    record.journal.clear();
                    TaskMode::Live
                }
            };
            return Ok((record, mode, mode == TaskMode::Recorded && elsewhere));
        }
        let record = match (&cur.last, resuming) {
            (Some((base, _, _)), true) => StepRecord::from_writes(store.writes(base).await?),
            _ => StepRecord::default(),
        };
        Ok((record, TaskMode::Live, false))
    }

    pub(super) async fn run_loop(
        &self,
        cur: Cursor<S>,
        run: &mut RunState<S>,
    ) -> Result<Outcome<S>, GraphError> {
        self.run_saving(cur, run, None).await
    }

    /// Runs from `cur` (first saving `input`, a fresh run's input checkpoint) until the end, an
    /// interrupt or an error; whatever the durability mode, every checkpoint the run made has
    /// landed (or failed) when this returns.
    async fn run_saving(
        &self,
        mut cur: Cursor<S>,
        run: &mut RunState<S>,
        input: Option<StepMeta>,
    ) -> Result<Outcome<S>, GraphError> {
        let mut saver = self.inner.config.checkpointer.as_ref().map(|store| {
            // A replay compares each step with its checkpoint as it goes.
            let mode = match run.track {
                Some(_) => Durability::Sync,
                None => run.config.durability,
            };
            Saver {
                store: store.clone(),
                mode,
                execution_id: run.config.execution_id.clone(),
                fence: cur.fence.take(),
                branch_from: cur.branch_from.take(),
                in_flight: None,
                held: None,
            }
        });
        match self.steps(&mut cur, run, &mut saver, input).await {
            Ok(Stopped::Finished) => {
                if run.events.is_some() {
                    run.emit(GraphEvent::Finished {
                        state: cur.state.clone(),
                    })
                    .await;
                }
                Ok(Outcome::Finished(cur.state))
            }
            Ok(Stopped::Interrupted {
                checkpoint,
                next,
                interrupts,
            }) => {
                run.interrupted(checkpoint, cur.state, next, interrupts)
                    .await
            }
            Err(e) => {
                // What the run reached before it failed lands (in exit mode: is saved now), so
                // that a resume starts there; an error saving it says more than the failure.
                if let Some(saver) = &mut saver {
                    if let Some(saved) = saver.settle(&cur.state, run).await? {
                        cur.last = Some(position_of(&saved));
                    }
                    // The failed step's base is in the store now, in every mode.
                    if let Some((base, _, _)) = &cur.last {
                        record_failure(&saver.store, base, &e).await;
                    }
                }
                Err(e)
            }
        }
    }

    /// The run loop proper; `cur` is where it stands (on an error: the base of the step that
    /// failed).
    async fn steps(
        &self,
        cur: &mut Cursor<S>,
        run: &mut RunState<S>,
        saver: &mut Option<Saver>,
        input: Option<StepMeta>,
    ) -> Result<Stopped, GraphError> {
        let cfg = &self.inner.config;
        let exec = run.config.execution_id.clone();
        let exec = exec.as_str();
        if let (Some(meta), Some(saver)) = (input, saver.as_mut()) {
            let pause = meta.interrupted;
            if let Some(saved) = saver.save(meta, &cur.state, run).await? {
                cur.last = Some(position_of(&saved));
            }
            if pause {
                let id = settled(cur, saver, run).await?;
                let next = next_list(&cur.next);
                return Ok(Stopped::interrupted(id, next));
            }
        }
        run.emit_values(cur.step, &cur.state).await;
        let emit = run.emitter();
        let mut ran = 0usize;
        loop {
            if let Some(saver) = saver.as_mut() {
                // A background save that already failed stops the run before its next node.
                if saver.save_ended() {
                    settled(cur, saver, run).await?;
                }
            }
            if cur.finished() {
                if let Some(saver) = saver.as_mut() {
                    saver.settle(&cur.state, run).await?;
                }
                return Ok(Stopped::Finished);
            }
            let node = match (&cur.fan, &cur.tasks) {
                (Some(from), _) => from.clone(),
                (None, Some(p)) => tasks_label(&p.tasks),
                (None, None) => cur.next.clone(),
            };
            let honoured = cur.last.as_ref().is_some_and(|(_, _, i)| *i);
            // A replay goes through the recorded run's static pauses.
            let statics = run.track.is_none();
            // Interrupts on fan-out branches are refused at compile time.
            if statics && !honoured && self.pauses_before(cur) {
                // Make sure a checkpoint records the pause (and that it was honoured).
                let saver = saver.as_mut().ok_or(GraphError::NoCheckpointer)?;
                let (node_name, source) = match &cur.last {
                    Some((_, name, _)) => (name.clone(), "interrupt"),
                    None => (INPUT.to_owned(), "input"),
                };
                let next = self.next_names(cur);
                let meta = StepMeta {
                    node: node_name,
                    step: cur.step,
                    next: next.clone(),
                    source,
                    interrupted: true,
                    ran: cur.tasks.as_ref().map(|p| p.ran.clone()),
                };
                saver.save(meta, &cur.state, run).await?;
                let id = settled(cur, saver, run).await?;
                return Ok(Stopped::interrupted(id, next));
            }
            if ran >= run.config.recursion_limit {
                return Err(GraphError::RecursionLimit {
                    limit: run.config.recursion_limit,
                });
            }
            // A step that may record to its base (tasks, interrupts, branch and task results)
            // needs the base in the store first; so does a replay's, which it compares with.
            let records = cur.fan.is_some()
                || cur.tasks.is_some()
                || run.track.is_some()
                || self.inner.nodes.get(&node).is_some_and(|n| n.context);
            if records && cur.last.is_none() {
                if let Some(saver) = saver.as_mut() {
                    settled(cur, saver, run).await?;
                }
            }
            let resuming = ran == 0;
            let index = ran;
            ran += 1;
            let step = cur.step + 1;
            // Every await of the step runs in its span, the save after it included.
            let mut trace = StepSpan::new(exec, step, &node);
            let base = cur.last.as_ref().map(|(id, _, _)| id.clone());
            let (record, mode, copy_journal) = self
                .step_record(cur, run, resuming, index)
                .instrument(trace.span.clone())
                .await?;
            let shared = Arc::new(StepShared {
                execution_id: exec.to_owned(),
                step,
                run_id: run.run_id.clone(),
                store: cfg.checkpointer.clone(),
                base: base.clone(),
                record: std::sync::Mutex::new(record),
                mode,
                copy_journal,
                missing: std::sync::Mutex::new(Vec::new()),
                emit: emit.clone(),
                modes: run.config.stream,
            });
            let result = async {
                match (&cur.fan, &cur.tasks) {
                    (Some(_), _) => {
                        self.run_fan_out(&node, step, &cur.state, &shared, run)
                            .await
                    }
                    (None, Some(p)) => {
                        let tasks = p.tasks.clone();
                        self.run_tasks(&tasks, step, &cur.state, &shared, run).await
                    }
                    (None, None) => self.run_single(&node, step, &cur.state, &shared, run).await,
                }
            }
            .instrument(trace.span.clone())
            .await;
            if let Some(track) = &mut run.track {
                track.note_missing(&shared);
            }
            let done = match result {
                Ok(done) => done,
                Err(Stop::Interrupted(next)) => {
                    let id = base.ok_or(GraphError::NoCheckpointer)?;
                    let pending = self
                        .record_interrupts(&shared, &id)
                        .instrument(trace.span.clone())
                        .await?;
                    trace.outcome = "interrupted";
                    return Ok(Stopped::Interrupted {
                        checkpoint: id,
                        next,
                        interrupts: pending,
                    });
                }
                Err(Stop::Failed(e)) => return Err(e),
            };
            let fan = if cur.fan.is_none()
                && cur.tasks.is_none()
                && matches!(self.inner.edges.get(&node), Some(Edge::FanOut { .. }))
            {
                Some(node.clone())
            } else {
                None
            };
            let (next, tasks) = match done.next {
                Plan::Node(n) => (n, None),
                Plan::Tasks(p) => (END.to_owned(), Some(p)),
            };
            let next_cur = Cursor {
                state: done.state,
                next,
                fan,
                tasks,
                step,
                last: None,
                branch_from: None,
                fence: None,
            };
            run.emit_values(step, &next_cur.state).await;
            let next_names = self.next_names(&next_cur);
            let pause_before = statics && self.pauses_before(&next_cur);
            let pause = (statics && done.pause_after) || pause_before;
            *cur = next_cur;
            if let Some(saver) = saver.as_mut() {
                let meta = StepMeta {
                    node: node.clone(),
                    step,
                    next: next_names.clone(),
                    source: done.source,
                    interrupted: pause,
                    ran: cur.tasks.as_ref().map(|p| p.ran.clone()),
                };
                let saved = saver
                    .save(meta, &cur.state, run)
                    .instrument(trace.span.clone())
                    .await?;
                if let Some(saved) = saved {
                    trace.span.record("version", saved.version);
                    if let Some(track) = &mut run.track {
                        track.record_step(index, &node, &saved)?;
                    }
                    cur.last = Some(position_of(&saved));
                }
                if pause {
                    let id = settled(cur, saver, run)
                        .instrument(trace.span.clone())
                        .await?;
                    trace.outcome = "ok";
                    return Ok(Stopped::interrupted(id, next_names));
                }
            }
            trace.outcome = "ok";
        }
    }

    /// Whether the step about to run from `cur` has a node that pauses before it runs.
    fn pauses_before(&self, cur: &Cursor<S>) -> bool {
        let before = &self.inner.config.interrupt_before;
        if before.is_empty() || cur.fan.is_some() {
            return false;
        }
        match &cur.tasks {
            Some(p) => p.tasks.iter().any(|t| before.contains(&t.node)),
            None => cur.next != END && before.contains(&cur.next),
        }
    }

    /// One node's step: runs it, and picks the next step from what it returned.
    async fn run_single(
        &self,
        node: &str,
        step: u64,
        state: &S,
        shared: &Arc<StepShared>,
        run: &RunState<S>,
    ) -> Result<StepDone<S>, Stop> {
        let out = self
            .run_node_reported(node, node, None, step, state, shared, &run.events)
            .await
            .map_err(|e| Stop::from_node(e, vec![node.to_owned()]))?;
        let state = match out {
            Output::State(s) => s,
            update => {
                let mut s = state.clone();
                update.apply_to(&mut s);
                s
            }
        };
        let next = match self.inner.edges.get(node) {
            Some(Edge::FanOut { .. }) => Plan::Node(END.to_owned()),
            // Only sends make a step of several tasks after one node.
            Some(Edge::Sends(_)) => self
                .plan(&[node.to_owned()], &state)
                .map_err(Stop::Failed)?,
            _ => Plan::Node(self.route(node, &state).map_err(Stop::Failed)?),
        };
        let pause_after = self.inner.config.interrupt_after.contains(node);
        Ok(StepDone {
            state,
            next,
            source: "loop",
            pause_after,
        })
    }

    /// A step of several tasks: runs those without a recorded output concurrently, records
    /// each output as it finishes (a pending write on the base), and merges them all into the
    /// state in task order (a whole state first, then the updates).
    async fn run_tasks(
        &self,
        tasks: &[Task],
        step: u64,
        state: &S,
        shared: &Arc<StepShared>,
        run: &RunState<S>,
    ) -> Result<StepDone<S>, Stop> {
        let failed = |e: GraphError| Stop::Failed(e);
        let mut outputs: Vec<Option<Output<S>>> = Vec::with_capacity(tasks.len());
        {
            let record = shared.record();
            for t in tasks {
                let recorded = record.tasks.get(&t.key).filter(|w| {
                    let hash = w.metadata.get("input").and_then(|v| v.as_str());
                    hash.map(str::to_owned) == t.input_hash()
                });
                let out = match (recorded, self.inner.nodes.get(&t.node)) {
                    (Some(w), Some(spec)) => Some((spec.decode)(w).map_err(|e| failed(e.into()))?),
                    _ => None,
                };
                outputs.push(out);
            }
        }
        let runs = tasks
            .iter()
            .enumerate()
            .filter(|(i, _)| outputs[*i].is_none())
            .map(|(i, t)| async move {
                let out = self
                    .run_node_reported(
                        &t.node,
                        &t.key,
                        t.input.as_ref(),
                        step,
                        state,
                        shared,
                        &run.events,
                    )
                    .await?;
                if let (Some(store), Some(base)) = (&shared.store, &shared.base) {
                    // The pending write: this task is not run again on resume.
                    let mut w = out.write(&t.key, context::TASK)?;
                    if let Some(hash) = t.input_hash() {
                        w = w.with_metadata("input", hash);
                    }
                    store.put_writes(base, vec![w]).await?;
                }
                Ok::<_, GraphError>((i, out))
            });
        // Every task runs to its end (and is recorded) even when another fails or pauses.
        let mut failure = None;
        let mut paused = false;
        for res in join_all(runs).await {
            match res {
                Ok((i, out)) => outputs[i] = Some(out),
                Err(e) if is_interrupt_error(&e) => paused = true,
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(Stop::Failed(e));
        }
        if paused {
            return Err(Stop::Interrupted(
                tasks.iter().map(|t| t.node.clone()).collect(),
            ));
        }
        let outputs: Vec<Output<S>> = outputs.into_iter().flatten().collect();
        let whole: Vec<&str> = tasks
            .iter()
            .zip(&outputs)
            .filter(|(_, o)| matches!(o, Output::State(_)))
            .map(|(t, _)| t.key.as_str())
            .collect();
        if whole.len() > 1 {
            return Err(failed(GraphError::InvalidUpdate {
                step,
                reason: format!(
                    "tasks {} each returned a whole state; tasks that run in the same step must return updates (add_update_node, add_send_node) for the state's reducers to merge",
                    whole.join(", ")
                ),
            }));
        }
        let mut merged = state.clone();
        let (wholes, updates): (Vec<_>, Vec<_>) = outputs
            .into_iter()
            .partition(|o| matches!(o, Output::State(_)));
        for out in wholes.into_iter().chain(updates) {
            out.apply_to(&mut merged);
        }
        let mut ran: Vec<String> = Vec::new();
        for t in tasks {
            if !ran.contains(&t.node) {
                ran.push(t.node.clone());
            }
        }
        let next = self.plan(&ran, &merged).map_err(failed)?;
        let after = &self.inner.config.interrupt_after;
        let pause_after = ran.iter().any(|n| after.contains(n));
        Ok(StepDone {
            state: merged,
            next,
            source: "loop",
            pause_after,
        })
    }

    /// A fan-out step: runs the branches that have no recorded result concurrently, records
    /// each result as it finishes (a pending write on the base), and merges them all.
    async fn run_fan_out(
        &self,
        from: &str,
        step: u64,
        state: &S,
        shared: &Arc<StepShared>,
        run: &RunState<S>,
    ) -> Result<StepDone<S>, Stop> {
        let (branches, join, merge) = match self.inner.edges.get(from) {
            Some(Edge::FanOut {
                branches,
                join,
                merge,
            }) => (branches, join, merge),
            _ => return Err(Stop::Failed(GraphError::NoOutgoingEdge(from.to_owned()))),
        };
        let mut done: BTreeMap<String, S> = BTreeMap::new();
        let recorded: Vec<(String, Write)> = shared
            .record()
            .branches
            .iter()
            .map(|(b, w)| (b.clone(), w.clone()))
            .collect();
        for (branch, w) in recorded {
            if branches.contains(&branch) {
                done.insert(branch, w.value().map_err(|e| Stop::Failed(e.into()))?);
            }
        }
        let runs = branches
            .iter()
            .filter(|b| !done.contains_key(*b))
            .map(|branch| async move {
                let out = self
                    .run_node_reported(branch, branch, None, step, state, shared, &run.events)
                    .await?
                    .onto(state);
                if let (Some(store), Some(base)) = (&shared.store, &shared.base) {
                    // The pending write: this branch is not run again on resume.
                    let w = Write::new(branch, context::BRANCH, &out)?;
                    store.put_writes(base, vec![w]).await?;
                }
                Ok::<_, GraphError>((branch.clone(), out))
            });
        // Every branch runs to its end (and is recorded) even when another fails or pauses.
        let mut failure = None;
        let mut paused = false;
        for res in join_all(runs).await {
            match res {
                Ok((branch, out)) => {
                    done.insert(branch, out);
                }
                Err(e) if is_interrupt_error(&e) => paused = true,
                Err(e) => {
                    failure.get_or_insert(e);
                }
            }
        }
        if let Some(e) = failure {
            return Err(Stop::Failed(e));
        }
        if paused {
            return Err(Stop::Interrupted(branches.clone()));
        }
        let results = branches
            .iter()
            .filter_map(|b| done.remove(b).map(|s| (b.clone(), s)))
            .collect();
        let merged = merge(state.clone(), results);
        Ok(StepDone {
            state: merged,
            next: Plan::Node(join.clone()),
            source: "join",
            pause_after: false,
        })
    }

    /// Writes the interrupts raised in this step that the log does not hold yet, and returns
    /// every interrupt of the step still waiting for an answer.
    async fn record_interrupts(
        &self,
        shared: &StepShared,
        base: &CheckpointId,
    ) -> Result<Vec<Interrupt>, GraphError> {
        let store = self.store()?;
        let (fresh, pending) = {
            let mut r = shared.record();
            (std::mem::take(&mut r.unwritten), r.pending_interrupts())
        };
        let writes = pending
            .iter()
            .filter(|i| fresh.contains(&(i.node.clone(), i.index)))
            .map(context::interrupt_write)
            .collect::<Result<Vec<_>, _>>()?;
        store.put_writes(base, writes).await?;
        Ok(pending)
    }

    /// Runs one task (node `node`, keyed `key`; given `sent`, a send's input, or else `state`),
    /// reporting its start and (with the state it makes of `state`) its end to a stream.
    #[allow(clippy::too_many_arguments)]
    async fn run_node_reported(
        &self,
        node: &str,
        key: &str,
        sent: Option<&Arc<[u8]>>,
        step: u64,
        state: &S,
        shared: &Arc<StepShared>,
        events: &Option<EventTx<S>>,
    ) -> Result<Output<S>, GraphError> {
        let Some(tx) = events else {
            return self.run_node(node, key, sent, state, shared).await;
        };
        let debug = shared.modes.has(StreamMode::Debug);
        // A dropped stream does not stop the run.
        if debug {
            let _ = tx
                .send(Ok(GraphEvent::NodeStart {
                    node: node.to_owned(),
                    step,
                }))
                .await;
        }
        let out = self.run_node(node, key, sent, state, shared).await?;
        if shared.modes.has(StreamMode::Updates) {
            let _ = tx
                .send(Ok(GraphEvent::Update {
                    node: node.to_owned(),
                    task: key.to_owned(),
                    step,
                    update: out.json(),
                }))
                .await;
        }
        if debug {
            let _ = tx
                .send(Ok(GraphEvent::NodeEnd {
                    node: node.to_owned(),
                    step,
                    state: out.onto(state),
                }))
                .await;
        }
        Ok(out)
    }

    /// Runs one task with its node's retry policy (an interrupt, or a task a replay cannot
    /// answer, is not retried). Each attempt gets a fresh context over the step's shared
    /// record, so a retry finds what earlier attempts journaled. A node's failure is reported
    /// under the task's key.
    async fn run_node(
        &self,
        node: &str,
        key: &str,
        sent: Option<&Arc<[u8]>>,
        state: &S,
        shared: &Arc<StepShared>,
    ) -> Result<Output<S>, GraphError> {
        let NodeSpec { f, retry, .. } =
            self.inner
                .nodes
                .get(node)
                .ok_or_else(|| GraphError::UnknownNode {
                    node: node.to_owned(),
                    context: "the run".into(),
                })?;
        let mut attempt = 1;
        loop {
            let ctx = NodeContext::for_task(shared.clone(), node, key);
            let input = match sent {
                Some(bytes) => NodeInput::Sent(bytes.clone()),
                None => NodeInput::State(state.clone()),
            };
            match f(input, ctx).await {
                Ok(out) => return Ok(out),
                Err(source) if attempt >= retry.attempts() || !retriable(&source) => {
                    return Err(GraphError::Node {
                        node: key.to_owned(),
                        source,
                    })
                }
                Err(_) => {
                    tokio::time::sleep(retry.delay_after(attempt)).await;
                    attempt += 1;
                }
            }
        }
    }

    /// The step after the nodes `ran` (in order) left `state`: each one's edge gives a node
    /// (run once, however many lead to it) or sends (one task each); [`END`] adds nothing.
    /// Nothing to run is [`END`]; one node reached by an edge runs alone; anything else is a
    /// step of several tasks.
    fn plan(&self, ran: &[String], state: &S) -> Result<Plan, GraphError> {
        let mut tasks: Vec<Task> = Vec::new();
        let mut sends = false;
        for node in ran {
            match self.inner.edges.get(node) {
                Some(Edge::Sends(f)) => {
                    for send in f(state) {
                        let input = self.checked_send(node, send.node.as_str(), send.input)?;
                        let key = format!("{}[{}]", send.node, tasks.len());
                        tasks.push(Task {
                            node: send.node,
                            input: Some(input),
                            key,
                        });
                        sends = true;
                    }
                }
                Some(Edge::FanOut { .. }) if ran.len() > 1 => {
                    return Err(GraphError::InvalidFanOut {
                        from: node.clone(),
                        reason: "it ran as one of several tasks of a step (sends, or parallel edges); a fan-out (add_fan_out) must follow a node that runs alone".into(),
                    });
                }
                _ => {
                    let to = self.route(node, state)?;
                    if to != END && !tasks.iter().any(|t| t.input.is_none() && t.node == to) {
                        tasks.push(Task {
                            key: to.clone(),
                            node: to,
                            input: None,
                        });
                    }
                }
            }
        }
        Ok(match tasks.as_slice() {
            [] => Plan::Node(END.to_owned()),
            [one] if !sends => Plan::Node(one.node.clone()),
            _ => Plan::Tasks(Pending {
                ran: ran.to_vec(),
                tasks: Arc::new(tasks),
            }),
        })
    }

    /// A send's input, if it names a node a send may run.
    fn checked_send(
        &self,
        from: &str,
        to: &str,
        input: Result<Arc<[u8]>, String>,
    ) -> Result<Arc<[u8]>, GraphError> {
        let invalid = |reason: String| GraphError::InvalidSend {
            from: from.to_owned(),
            reason,
        };
        if !self.inner.nodes.contains_key(to) {
            return Err(invalid(format!(
                "it names node {to:?}, which is not in this graph"
            )));
        }
        if self.inner.branches.contains(to) {
            return Err(invalid(format!(
                "it names node {to:?}, a branch of a fan-out (add_fan_out), which only its fan-out runs"
            )));
        }
        input.map_err(|e| invalid(format!("its input for node {to:?} cannot be encoded: {e}")))
    }

    /// The node after `node`, given the state it returned.
    fn route(&self, node: &str, state: &S) -> Result<String, GraphError> {
        match self.inner.edges.get(node) {
            Some(Edge::To(to)) => Ok(to.clone()),
            Some(Edge::Conditional(f)) => {
                let to = f(state);
                if self.inner.nodes.get(&to).is_some_and(|n| n.sent_only) {
                    return Err(GraphError::SentOnly {
                        node: to,
                        context: format!("the conditional edge of node {node:?}"),
                    });
                }
                // A fan-out branch is only reached through its fan-out.
                if to == END
                    || (self.inner.nodes.contains_key(&to) && !self.inner.branches.contains(&to))
                {
                    Ok(to)
                } else {
                    Err(GraphError::InvalidRoute {
                        from: node.to_owned(),
                        to,
                    })
                }
            }
            Some(Edge::FanOut { .. } | Edge::Sends(_)) | None => {
                Err(GraphError::NoOutgoingEdge(node.to_owned()))
            }
        }
    }
}

/// How a run ended without an error; the caller adds the state.
enum Stopped {
    Finished,
    Interrupted {
        checkpoint: CheckpointId,
        next: Vec<String>,
        interrupts: Vec<Interrupt>,
    },
}

impl Stopped {
    /// A static pause at `checkpoint` (no interrupt waits for an answer).
    fn interrupted(checkpoint: CheckpointId, next: Vec<String>) -> Self {
        Stopped::Interrupted {
            checkpoint,
            next,
            interrupts: Vec::new(),
        }
    }
}

/// A cursor's `last`: the checkpoint, its node, and whether it records a pause.
fn position_of(cp: &Checkpoint) -> (CheckpointId, String, bool) {
    let interrupted = cp.metadata.get("interrupted") == Some(&serde_json::Value::Bool(true));
    (cp.id.clone(), cp.node_name.clone(), interrupted)
}

/// Makes sure `cur`'s position is in the store and returns its checkpoint.
async fn settled<S: GraphState>(
    cur: &mut Cursor<S>,
    saver: &mut Saver,
    run: &RunState<S>,
) -> Result<CheckpointId, GraphError> {
    if let Some(saved) = saver.settle(&cur.state, run).await? {
        cur.last = Some(position_of(&saved));
    }
    match &cur.last {
        Some((id, _, _)) => Ok(id.clone()),
        None => Err(GraphError::NoCheckpointer),
    }
}

/// A run position's checkpoint, but for the state.
struct StepMeta {
    node: String,
    step: u64,
    next: Vec<String>,
    source: &'static str,
    interrupted: bool,
    /// When the next step runs several tasks: the nodes that led to it (`ran`), from which a
    /// resume computes the tasks again.
    ran: Option<Vec<String>>,
}

impl StepMeta {
    /// The checkpoint, saved by run `run_id` when given.
    fn checkpoint<S: GraphState>(
        self,
        exec: &str,
        state: &S,
        run: Option<&RunTags>,
    ) -> Result<Checkpoint, GraphError> {
        let mut cp = Checkpoint::new(exec, &self.node, state)?
            .with_metadata("step", self.step)
            .with_metadata("next", self.next)
            .with_metadata("source", self.source);
        if let Some(run) = run {
            cp = cp.with_metadata("run_id", run.run_id.as_str());
            if let Some(parent) = &run.parent_checkpoint {
                cp = cp.with_metadata("parent_checkpoint", parent.as_str());
            }
        }
        if self.interrupted {
            cp = cp.with_metadata("interrupted", true);
        }
        if let Some(ran) = self.ran {
            cp = cp.with_metadata("tasks", true).with_metadata("ran", ran);
        }
        Ok(cp)
    }
}

/// What every checkpoint of a run records about it: the run's id, and for a subgraph's run the
/// parent's checkpoint its step started from.
struct RunTags {
    run_id: String,
    parent_checkpoint: Option<String>,
}

/// How a run's positions reach the store ([`Durability`]), each save fenced on the one before.
/// A graph step's span, `ckpt.graph.step` (debug level): the execution, the step's number, its
/// node (or tasks), the version of the checkpoint saved after it when it is saved at once
/// ([`Durability::Sync`]), and its `outcome`, recorded when the step ends: `ok`,
/// `interrupted`, or `failed` for any other end (an error returned from the step's middle).
/// Never the state, nor what the node returned.
struct StepSpan {
    span: tracing::Span,
    outcome: &'static str,
    /// When the step began, for `elapsed_us` (read only when the span is enabled).
    start: Option<std::time::Instant>,
}

impl StepSpan {
    fn new(execution_id: &str, step: u64, node: &str) -> Self {
        // Nothing built when nobody listens: see `store::trace::wanted`.
        let span = if crate::store::trace::wanted(tracing::Level::DEBUG) {
            tracing::debug_span!(
                "ckpt.graph.step",
                execution_id,
                step,
                node,
                version = tracing::field::Empty,
                outcome = tracing::field::Empty,
                elapsed_us = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        let start = (!span.is_disabled()).then(std::time::Instant::now);
        StepSpan {
            span,
            outcome: "failed",
            start,
        }
    }
}

impl Drop for StepSpan {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            self.span.record("outcome", self.outcome);
            let us = u64::try_from(start.elapsed().as_micros()).unwrap_or(u64::MAX);
            self.span.record("elapsed_us", us);
        }
    }
}

struct Saver {
    store: Arc<dyn CheckpointStore>,
    mode: Durability,
    execution_id: String,
    /// What the execution's latest checkpoint must be for the next save to land: the run's
    /// previous save, or the latest when the run started.
    fence: Option<CheckpointId>,
    /// The parent of the run's first save, when that is not the fence (a new branch).
    branch_from: Option<CheckpointId>,
    /// [`Durability::Async`]: the save of the newest position, landing in the background.
    in_flight: Option<tokio::task::JoinHandle<Result<Checkpoint, GraphError>>>,
    /// [`Durability::Exit`]: the newest position, not saved.
    held: Option<StepMeta>,
}

impl Saver {
    /// Hands over the run's new position (`meta` with `state`). Sync mode saves it and returns
    /// it as saved; async mode waits for the save before (failing with its error), then
    /// starts this one; exit mode keeps it until [`Saver::settle`].
    async fn save<S: GraphState>(
        &mut self,
        meta: StepMeta,
        state: &S,
        run: &RunState<S>,
    ) -> Result<Option<Checkpoint>, GraphError> {
        match self.mode {
            Durability::Sync => {
                let cp = meta.checkpoint(&self.execution_id, state, Some(&run.tags()))?;
                let saved = fenced_save(
                    self.store.clone(),
                    cp,
                    self.branch_from.take(),
                    self.fence.take(),
                )
                .await?;
                self.landed(&saved, run).await;
                Ok(Some(saved))
            }
            Durability::Async => {
                self.settle(state, run).await?;
                let (store, exec) = (self.store.clone(), self.execution_id.clone());
                let (parent, fence) = (self.branch_from.take(), self.fence.take());
                // Encoding the state is part of the save: off the step's critical path too.
                let state = state.clone();
                let tags = run.tags();
                // In the step's span (the caller's), which stays open until the save lands.
                self.in_flight = Some(tokio::spawn(
                    async move {
                        let cp = meta.checkpoint(&exec, &state, Some(&tags))?;
                        fenced_save(store, cp, parent, fence).await
                    }
                    .in_current_span(),
                ));
                Ok(None)
            }
            Durability::Exit => {
                self.held = Some(meta);
                Ok(None)
            }
        }
    }

    /// Makes the newest position handed over durable, and returns it as saved (`None`:
    /// nothing was pending). `state` is the newest position's.
    async fn settle<S: GraphState>(
        &mut self,
        state: &S,
        run: &RunState<S>,
    ) -> Result<Option<Checkpoint>, GraphError> {
        let saved = if let Some(task) = self.in_flight.take() {
            task.await.map_err(|e| GraphError::Task(e.to_string()))??
        } else if let Some(meta) = self.held.take() {
            let cp = meta.checkpoint(&self.execution_id, state, Some(&run.tags()))?;
            fenced_save(
                self.store.clone(),
                cp,
                self.branch_from.take(),
                self.fence.take(),
            )
            .await?
        } else {
            return Ok(None);
        };
        self.landed(&saved, run).await;
        Ok(Some(saved))
    }

    /// Whether a background save has already ended (a failure then stops the run at once).
    fn save_ended(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|t| t.is_finished())
    }

    async fn landed<S: GraphState>(&mut self, saved: &Checkpoint, run: &RunState<S>) {
        self.fence = Some(saved.id.clone());
        if run.wants(StreamMode::Debug) {
            run.emit(GraphEvent::CheckpointSaved {
                id: saved.id.clone(),
                version: saved.version,
            })
            .await;
        }
    }
}

/// Saves `cp` only if the execution's latest checkpoint is still `fence` (`None`: it has none),
/// as a child of `parent` when given (else of `fence`); a lost race is [`GraphError::Conflict`].
async fn fenced_save(
    store: Arc<dyn CheckpointStore>,
    cp: Checkpoint,
    parent: Option<CheckpointId>,
    fence: Option<CheckpointId>,
) -> Result<Checkpoint, GraphError> {
    let execution_id = cp.execution_id.clone();
    let res = match &parent {
        Some(parent) => {
            store
                .save_with_parent_after(cp, parent, fence.as_ref())
                .await
        }
        None => store.save_after(cp, fence.as_ref()).await,
    };
    match res {
        Ok(saved) => Ok(saved),
        Err(e) if e.is_conflict() => {
            // Best effort: the conflict itself is the error to report.
            let found = store
                .latest(&execution_id)
                .await
                .ok()
                .flatten()
                .map(|c| c.id);
            Err(GraphError::Conflict {
                execution_id,
                expected: fence,
                found,
            })
        }
        Err(e) => Err(e.into()),
    }
}

/// Records that a node failed with `error` in the step that started from `base`, for
/// [`CompiledGraph::get_state`]'s pending tasks. Best effort: the run fails with `error` either
/// way, and a store that cannot take this write would only add its own error to it.
async fn record_failure(store: &Arc<dyn CheckpointStore>, base: &CheckpointId, error: &GraphError) {
    // Only a node's own failure is a task's error; a store error, a lost race or a routing
    // mistake is the run's.
    let GraphError::Node { node: task, .. } = error else {
        return;
    };
    // The causes a message does not already include (a node's error names its source).
    let text = crate::error::cause_chain(error);
    if let Ok(write) = Write::new(task, super::context::ERROR, &text) {
        let _ = store.put_writes(base, vec![write]).await;
    }
}

/// What a step produced.
struct StepDone<S> {
    /// The new state.
    state: S,
    /// What runs next.
    next: Plan,
    /// The checkpoint's `source`.
    source: &'static str,
    /// Whether to pause after it.
    pause_after: bool,
}

/// The checkpoint node name of a step of several tasks: its nodes (each once), or the first
/// and how many others when they do not fit a name.
fn tasks_label(tasks: &[Task]) -> String {
    let mut nodes: Vec<&str> = Vec::new();
    for t in tasks {
        if !nodes.contains(&t.node.as_str()) {
            nodes.push(&t.node);
        }
    }
    let all = nodes.join(",");
    if all.len() <= crate::checkpoint::MAX_NAME_LEN {
        all
    } else {
        format!("{}+{}", nodes[0], nodes.len() - 1)
    }
}

/// Why a step did not produce a state.
enum Stop {
    /// Nodes asked for values; the run pauses before these nodes.
    Interrupted(Vec<String>),
    Failed(GraphError),
}

impl Stop {
    fn from_node(e: GraphError, next: Vec<String>) -> Self {
        if is_interrupt_error(&e) {
            Stop::Interrupted(next)
        } else {
            Stop::Failed(e)
        }
    }
}

/// Whether a node failed by pausing at [`NodeContext::interrupt`].
fn is_interrupt_error(e: &GraphError) -> bool {
    matches!(e, GraphError::Node { source, .. } if is_interrupt(source))
}

/// Whether a node's error may be retried: not a pause, nor a task a replay has no result for.
fn retriable(e: &BoxError) -> bool {
    !is_interrupt(e) && e.downcast_ref::<NotRecorded>().is_none()
}

/// One call's run: its configuration and id, where its events go, and (in a replay) what it
/// is compared with.
pub(super) struct RunState<S> {
    pub(super) config: RunConfig,
    pub(super) run_id: String,
    events: Option<EventTx<S>>,
    pub(super) track: Option<Track>,
}

impl<S: GraphState> RunState<S> {
    pub(super) fn new(config: RunConfig, events: Option<EventTx<S>>) -> Self {
        let run_id = config.run_id.clone().unwrap_or_else(new_run_id);
        RunState {
            config,
            run_id,
            events,
            track: None,
        }
    }

    async fn emit(&self, ev: GraphEvent<S>) {
        if let Some(tx) = &self.events {
            // A dropped stream does not stop the run.
            let _ = tx.send(Ok(ev)).await;
        }
    }

    /// What every checkpoint of this run records about it.
    fn tags(&self) -> RunTags {
        RunTags {
            run_id: self.run_id.clone(),
            parent_checkpoint: self.config.parent_checkpoint.clone(),
        }
    }

    /// Whether this run streams and its stream carries `mode`.
    fn wants(&self, mode: StreamMode) -> bool {
        self.events.is_some() && self.config.stream.has(mode)
    }

    /// [`StreamMode::Values`]: the state after `step`.
    async fn emit_values(&self, step: u64, state: &S) {
        if self.wants(StreamMode::Values) {
            self.emit(GraphEvent::Values {
                step,
                state: state.clone(),
            })
            .await;
        }
    }

    /// Where nodes' emitted values and tokens go (`None`: the stream carries neither).
    fn emitter(&self) -> Option<EmitFn> {
        let tx = self.events.clone()?;
        if !(self.wants(StreamMode::Custom) || self.wants(StreamMode::Tokens)) {
            return None;
        }
        Some(Arc::new(move |e: Emitted| {
            let tx = tx.clone();
            Box::pin(async move {
                let (node, task, step) = (e.node, e.task, e.step);
                let ev = match e.what {
                    EmittedKind::Custom(value) => GraphEvent::Custom {
                        node,
                        task,
                        step,
                        value,
                    },
                    EmittedKind::Token(text) => GraphEvent::Token {
                        node,
                        task,
                        step,
                        text,
                    },
                };
                // A dropped stream does not stop the run.
                let _ = tx.send(Ok(ev)).await;
            })
        }))
    }

    async fn interrupted(
        &self,
        checkpoint: CheckpointId,
        state: S,
        next: Vec<String>,
        interrupts: Vec<Interrupt>,
    ) -> Result<Outcome<S>, GraphError> {
        self.emit(GraphEvent::Interrupted {
            checkpoint: checkpoint.clone(),
            next: next.clone(),
            interrupts: interrupts.clone(),
        })
        .await;
        Ok(Outcome::Interrupted {
            checkpoint,
            state,
            next,
            interrupts,
        })
    }
}

/// A new random run id (32 hex digits).
fn new_run_id() -> String {
    static COUNTER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let mut h = blake3::Hasher::new();
    h.update(&std::process::id().to_le_bytes());
    h.update(
        &std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
            .to_le_bytes(),
    );
    h.update(
        &COUNTER
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            .to_le_bytes(),
    );
    crate::hash::hex(&h.finalize().as_bytes()[..16])
}
