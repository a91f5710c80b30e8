//! A durable graph-execution runtime on top of a [`CheckpointStore`].
//!
//! Build a [`StateGraph`] of async nodes (each takes the state and returns the new state, or an
//! update the state's reducers merge), connect them with static or conditional edges,
//! [`StateGraph::compile`] it, then run it with [`CompiledGraph::invoke`] or
//! [`CompiledGraph::stream`]. With a checkpointer configured, a run's
//! input is saved as its first checkpoint (node [`INPUT`]) and a checkpoint is saved after every
//! node (metadata `step`, `next`, `source`), so a run that crashed or failed can be continued with
//! [`CompiledGraph::resume_latest`], paused with interrupts, edited with
//! [`CompiledGraph::update_state`], and resumed from any earlier checkpoint
//! ([`CompiledGraph::resume`]) as a new branch of the execution's tree.
//!
//! Time travel inside a run:
//! - **Interrupts with values.** A node added with [`StateGraph::add_node_with_context`] gets a
//!   [`NodeContext`]; [`NodeContext::interrupt`] pauses the run until a person answers
//!   ([`CompiledGraph::resume_with_command`] with a [`Command`]); the answer is in the log before
//!   the node runs again.
//! - **Journaled tasks.** [`NodeContext::task`] runs a side effect once per recorded result: its
//!   result is appended to the log before the node continues, and a node that runs again (after
//!   a crash, a failure, an answer, a resume) gets the recorded result instead of running it.
//! - **Replay.** [`CompiledGraph::replay`] runs a recorded execution again from any checkpoint,
//!   with recorded task results ([`ReplayMode::Recorded`]: offline, deterministic) or live ones,
//!   and reports where the new run diverges ([`ReplayReport`]); [`replay_regression`] turns a
//!   stored run into a regression test.
//!
//! - **State snapshots.** [`CompiledGraph::get_state`], [`CompiledGraph::get_state_at`] and
//!   [`CompiledGraph::get_state_history`] read a checkpoint as a [`StateSnapshot`]: values, next
//!   nodes, pending tasks with their recorded results and errors, pending interrupts, ids and
//!   metadata.
//!
//! Agent shapes:
//! - **Partial updates and reducers.** A state that implements [`Reducible`] says how an update
//!   merges into it, field by field ([`reduce::append`], [`reduce::add`], [`reduce::replace`],
//!   or any function); [`StateGraph::add_update_node`] adds a node that returns an update.
//! - **Dynamic fan-out.** [`StateGraph::add_send_edges`] returns a [`SendTo`] per item, known
//!   only at run time; the tasks run concurrently in one step (a send node may send again),
//!   each output is recorded as a pending write as it finishes, and the updates merge in send
//!   order. A resume runs only the tasks without a recorded output.
//! - **Subgraphs.** [`StateGraph::add_subgraph`] makes a compiled graph a node; its checkpoints
//!   are the execution `PARENT/NODE` in the same store, and its interrupts pause the parent.
//! - **Multi-turn executions.** [`CompiledGraph::invoke`] on an execution that finished starts
//!   a new run of it, its input merged into the last state ([`Reducible::merge_input`]): one
//!   conversation, one log, each checkpoint naming its run (`run_id`).
//!   [`CompiledGraph::start_or_resume`] is the call for a worker that may be restarted.
//! - **Streaming modes.** [`RunConfig::stream_modes`]: the steps ([`StreamMode::Debug`]), the
//!   state after each step, each task's update, custom events ([`NodeContext::emit`]) and model
//!   tokens, on one bounded channel.
//!
//! Interrupts, answers, task results, node errors and fan-out branch results are [`crate::Write`]s attached to
//! the checkpoint their step started from, not checkpoints: `list`, `history` and `executions`
//! count only checkpoints.
//!
//! **Durability.** [`RunConfig::durability`] chooses when a run's checkpoints are saved:
//! [`Durability::Sync`] (the default) saves each step's checkpoint before the next step starts;
//! [`Durability::Async`] saves it in the background while the next step runs (in order, one save
//! in flight; a failed save fails the run at the next step boundary); [`Durability::Exit`] saves
//! only where the run ended (finished, interrupted or failed), as a child of the checkpoint it
//! started from, so a crash restarts the whole run from there. In every mode, the outcome comes
//! after every save has landed, and a step that records to its base checkpoint (tasks,
//! interrupts, fan-out branch results) runs only once that base is in the store.
//!
//! **Fencing.** Every save of a run is a compare-and-append
//! ([`CheckpointStore::save_after`], [`CheckpointStore::save_with_parent_after`]): it lands only
//! if the execution's latest checkpoint is still the run's previous save (for the first save:
//! the latest when the run started, or none for a fresh run). Two workers that resume the same
//! execution at once therefore cannot interleave: the first to save goes on, the other gets
//! [`GraphError::Conflict`] and stops without saving anything further.
//! [`CompiledGraph::update_state`] is fenced the same way, and a run that was going on when it
//! landed stops with the conflict. Writes to a step's base checkpoint are appends, not fenced:
//! two workers running the same step both record their task results and branch results there
//! (readers take the first of each), which is why their idempotency keys
//! ([`NodeContext::task_key`]) are the same.
//!
//! A node has at most one outgoing edge: static, conditional (naming one node or [`END`]), or a
//! fan-out ([`StateGraph::add_fan_out`]): several branch nodes that run concurrently in one step
//! on clones of the state, whose results a merge function combines before execution continues at
//! a join node. A branch that finishes is recorded at once as a *pending write* of its step, so a
//! run that crashed or failed in another branch resumes by running only the branches that did not
//! finish.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ckpt::graph::{CompileConfig, Outcome, RunConfig, StateGraph, END};
//! use ckpt::{CheckpointStore, Store};
//!
//! #[derive(Clone, serde::Serialize, serde::Deserialize)]
//! struct Counter { n: u32 }
//!
//! async fn inc(mut s: Counter) -> Result<Counter, std::io::Error> {
//!     s.n += 1;
//!     Ok(s)
//! }
//!
//! let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
//! let mut g = StateGraph::<Counter>::new();
//! g.add_node("inc", inc);
//! g.add_conditional_edges("inc", |s: &Counter| if s.n >= 3 { END.into() } else { "inc".into() });
//! g.set_entry_point("inc");
//! let app = g.compile(CompileConfig::default().checkpointer(store.clone()))?;
//! let out = app.invoke(Counter { n: 0 }, RunConfig::execution_id("count-1")).await?;
//! assert!(matches!(out, Outcome::Finished(Counter { n: 3 })));
//! // The input, then one checkpoint per step.
//! assert_eq!(store.list("count-1").await?.len(), 4);
//! # Ok(()) }
//! ```

mod context;
pub mod reduce;
mod replay;
mod run;
mod snapshot;
mod subgraph;

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::checkpoint::{validate_name, CheckpointId};
use crate::error::BoxError;
use crate::store::CheckpointStore;
use reduce::{DecodeFn, NodeInput, Output, UpdateOf};

pub use context::{Command, Interrupt, Interrupted, NodeContext, NotRecorded};
pub use reduce::{Reducible, SendTo};
pub use replay::{
    replay_regression, Divergence, ReplayMode, ReplayOptions, ReplayReport, ReplayStep,
};
pub use run::{CompiledGraph, GraphStream};
pub use snapshot::{PendingTask, StateSnapshot};

/// The channels of the [`crate::Write`]s the runtime attaches to a step's base checkpoint
/// (what [`crate::Store::writes`] and `ckpt show` list): for tools that read a run's log.
pub mod channels {
    pub use super::context::{BRANCH, ERROR, INTERRUPT, JOURNAL, RESUME, TASK};
}

/// The name of the virtual node that ends a run: route to it to finish.
pub const END: &str = "__end__";

/// The node name of the checkpoint saved for a run's input (before its entry node ran).
pub const INPUT: &str = "__input__";

/// What a graph's state must be: serializable (to be checkpointed), cloneable (to be retried),
/// and sendable across tasks.
pub trait GraphState: Serialize + DeserializeOwned + Clone + Send + Sync + 'static {}

impl<T: Serialize + DeserializeOwned + Clone + Send + Sync + 'static> GraphState for T {}

pub(crate) type NodeFn<S> = Arc<
    dyn Fn(NodeInput<S>, NodeContext) -> BoxFuture<'static, Result<Output<S>, BoxError>>
        + Send
        + Sync,
>;
pub(crate) type RouteFn<S> = Arc<dyn Fn(&S) -> String + Send + Sync>;
pub(crate) type SendsFn<S> = Arc<dyn Fn(&S) -> Vec<SendTo> + Send + Sync>;
pub(crate) type MergeFn<S> = Arc<dyn Fn(S, Vec<(String, S)>) -> S + Send + Sync>;
pub(crate) type InputFn<S> = Arc<dyn Fn(&mut S, S) + Send + Sync>;

/// A node as the runtime keeps it.
pub(crate) struct NodeSpec<S> {
    pub(crate) f: NodeFn<S>,
    pub(crate) retry: RetryPolicy,
    /// Whether the node was given a [`NodeContext`], through which it may record to its
    /// step's base checkpoint (tasks, interrupts).
    pub(crate) context: bool,
    /// Reads the node's recorded output back from a pending write.
    pub(crate) decode: DecodeFn<S>,
    /// Whether the node takes a [`SendTo`]'s input rather than the state: only a send reaches
    /// it.
    pub(crate) sent_only: bool,
}

impl<S> Clone for NodeSpec<S> {
    fn clone(&self) -> Self {
        NodeSpec {
            f: self.f.clone(),
            retry: self.retry,
            context: self.context,
            decode: self.decode.clone(),
            sent_only: self.sent_only,
        }
    }
}

/// Everything that can go wrong building or running a graph.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GraphError {
    /// Two nodes were added with the same name.
    #[error("duplicate node name {0:?}: every node needs a unique name")]
    DuplicateNode(String),

    /// A node was given a name the runtime reserves ([`END`], [`INPUT`]).
    #[error("node name {0:?} is reserved by the graph runtime; choose another name")]
    ReservedName(String),

    /// A node name is not acceptable as a checkpoint node name (empty, too long, control
    /// characters).
    #[error("invalid node name {node:?}: {reason}")]
    InvalidNodeName {
        /// The name.
        node: String,
        /// Why it was refused.
        reason: String,
    },

    /// An edge, the entry point or an interrupt names a node that was never added.
    #[error("unknown node {node:?} in {context}")]
    UnknownNode {
        /// The name that matches no node.
        node: String,
        /// Where it was used, e.g. `the edge "plan" -> "act"`.
        context: String,
    },

    /// No entry point was set.
    #[error("the graph has no entry point; call set_entry_point")]
    MissingEntryPoint,

    /// A node cannot be reached from the entry point.
    #[error("node {node:?} is unreachable from the entry point {entry:?}")]
    Unreachable {
        /// The unreachable node.
        node: String,
        /// The entry point.
        entry: String,
    },

    /// A node has no outgoing edge (every node needs one; an edge to [`END`] counts).
    #[error("node {0:?} has no outgoing edge; add an edge (to END to finish there) or a conditional edge")]
    NoOutgoingEdge(String),

    /// A node has more than one outgoing edge (use [`StateGraph::add_fan_out`] for parallel
    /// branches).
    #[error("node {0:?} has more than one outgoing edge; use one edge, one conditional edge, or one fan-out (add_fan_out) for parallel branches")]
    MultipleEdges(String),

    /// A fan-out is malformed (no branches, a branch listed twice, a branch that has its own
    /// edge, is the entry point, the join, or the target of another edge, or an interrupt on a
    /// branch).
    #[error("invalid fan-out from {from:?}: {reason}")]
    InvalidFanOut {
        /// The node the fan-out leaves from.
        from: String,
        /// What is wrong.
        reason: String,
    },

    /// A conditional edge returned a name that is neither a node nor [`END`].
    #[error("the conditional edge of node {from:?} routed to unknown node {to:?}")]
    InvalidRoute {
        /// The node whose conditional edge ran.
        from: String,
        /// What it returned.
        to: String,
    },

    /// A node failed (after its retries).
    #[error("node {node:?} failed: {source}")]
    Node {
        /// The node.
        node: String,
        /// Its last error.
        #[source]
        source: BoxError,
    },

    /// A [`SendTo`] cannot run: it names no node of the graph (or a fan-out branch), or its
    /// input could not be encoded.
    #[error("the send edge of node {from:?} sent an invalid task: {reason}")]
    InvalidSend {
        /// The node whose send edge ran.
        from: String,
        /// What is wrong.
        reason: String,
    },

    /// A node added with [`StateGraph::add_send_node`] is used where only a node that takes
    /// the state fits: as the entry point, or the target of an edge or a fan-out.
    #[error("node {node:?} takes the input of a send (add_send_node), so only a SendTo reaches it, not {context}")]
    SentOnly {
        /// The node.
        node: String,
        /// Where it was used.
        context: String,
    },

    /// The tasks of one step returned updates that cannot be merged: more than one whole state
    /// (only updates merge; return updates from nodes that run in parallel).
    #[error("step {step} cannot merge what its tasks returned: {reason}")]
    InvalidUpdate {
        /// The step.
        step: u64,
        /// Why.
        reason: String,
    },

    /// The checkpointer failed (or a state could not be encoded or decoded); nothing after this
    /// was saved.
    #[error("checkpoint store: {0}")]
    Store(#[from] crate::Error),

    /// An operation needs a checkpointer and the graph was compiled without one.
    #[error("this operation needs a checkpointer; compile with CompileConfig::checkpointer")]
    NoCheckpointer,

    /// The execution has no checkpoint to resume from.
    #[error("execution {0:?} has no checkpoint to resume from; invoke it with its input instead")]
    NoCheckpoint(String),

    /// A checkpoint cannot be resumed by this graph (wrong execution, metadata not written by
    /// this runtime, or naming a node this graph does not have).
    #[error("cannot resume from checkpoint {id}: {reason}")]
    InvalidCheckpoint {
        /// The checkpoint.
        id: CheckpointId,
        /// Why.
        reason: String,
    },

    /// The run took more steps than [`RunConfig::recursion_limit`] allows.
    #[error("recursion limit of {limit} steps reached without finishing; raise RunConfig::recursion_limit or check the graph for an endless loop")]
    RecursionLimit {
        /// The limit.
        limit: usize,
    },

    /// The task running a streamed graph panicked or was cancelled.
    #[error("the graph run task failed: {0}")]
    Task(String),

    /// Another worker saved to this execution since this run last looked at it (two workers
    /// resumed the same execution, or one resumed it while another still ran it): this run's
    /// checkpoint was refused, and the run stopped without saving anything further. What the
    /// other worker saved is intact; reload the execution and resume from its latest checkpoint
    /// ([`CompiledGraph::resume_latest`]), or leave it to the worker that advanced it.
    #[error("execution {execution_id:?} was advanced by another worker: this run expected its latest checkpoint to be {}, but it is {}; this run stopped without saving anything further. Reload the execution and resume from its latest checkpoint (resume_latest), or leave it to the other worker", show_id(.expected), show_id(.found))]
    Conflict {
        /// The execution.
        execution_id: String,
        /// The latest checkpoint this run expected (its previous save, or the execution's
        /// latest when the run started; `None`: no checkpoint).
        expected: Option<CheckpointId>,
        /// The execution's latest checkpoint when the conflict was reported (`None`: none, or
        /// it could not be read).
        found: Option<CheckpointId>,
    },

    /// A [`Command`] does not fit the interrupts pending on the execution's latest checkpoint.
    #[error("cannot resume execution {execution:?} with this command: {reason}")]
    InvalidCommand {
        /// The execution.
        execution: String,
        /// Why (no interrupt pending, several pending for a single answer, an unknown id).
        reason: String,
    },
}

fn show_id(id: &Option<CheckpointId>) -> String {
    match id {
        Some(id) => id.to_string(),
        None => "none".to_owned(),
    }
}

/// When a run's checkpoints are saved ([`RunConfig::durability`]).
///
/// Whatever the mode, every save is a compare-and-append against the run's previous checkpoint
/// (see [`GraphError::Conflict`]), and what a run returns (the [`Outcome`], or the stream's
/// last event) comes after every save it made has landed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum Durability {
    /// Each step's checkpoint is saved before the next step starts: a crash loses at most the
    /// step that was running.
    #[default]
    Sync,
    /// Each step's checkpoint is saved in the background while the next step runs (one save
    /// in flight at a time, so saves land in order); a failed save fails the run at the next
    /// step boundary, with the save's error. A crash loses at most the step running and the
    /// save in flight. A step that records to its base checkpoint (a node added with a
    /// [`NodeContext`], or a fan-out step) first waits for that checkpoint to land: its task
    /// results, interrupts, idempotency keys and branch results refer to it. Events report a
    /// checkpoint ([`GraphEvent::CheckpointSaved`]) once it has landed, so they may come after
    /// the next step's `NodeStart`.
    Async,
    /// Nothing is saved while the run goes well: one checkpoint is saved when the run ends
    /// (finished, interrupted or failed), holding where it stopped, as a child of the
    /// checkpoint the run started from. A crash loses the whole run: it starts again from that
    /// checkpoint (a fresh run: from its input, which is not saved either). A step that records
    /// to its base checkpoint (a node with a [`NodeContext`], a fan-out step) saves that base
    /// before it runs, so its task results, interrupts and branch results have a checkpoint
    /// to attach to.
    Exit,
}

/// How often a node is attempted, and how long to wait between attempts (doubling each time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    attempts: u32,
    backoff: Duration,
}

impl RetryPolicy {
    /// `attempts` tries in all (at least 1), waiting `backoff`, then twice that, and so on, between
    /// them.
    pub fn new(attempts: u32, backoff: Duration) -> Self {
        RetryPolicy {
            attempts: attempts.max(1),
            backoff,
        }
    }

    /// Attempts in all.
    pub fn attempts(&self) -> u32 {
        self.attempts
    }

    /// The wait before the second attempt.
    pub fn backoff(&self) -> Duration {
        self.backoff
    }

    /// The wait after failed attempt `n` (1-based).
    pub(crate) fn delay_after(&self, n: u32) -> Duration {
        self.backoff
            .saturating_mul(1u32.checked_shl(n.saturating_sub(1)).unwrap_or(u32::MAX))
    }
}

impl Default for RetryPolicy {
    /// One attempt, no retry.
    fn default() -> Self {
        RetryPolicy::new(1, Duration::ZERO)
    }
}

/// How a graph is compiled: its checkpointer (optional) and its interrupts.
#[derive(Clone, Default)]
pub struct CompileConfig {
    pub(crate) checkpointer: Option<Arc<dyn CheckpointStore>>,
    pub(crate) interrupt_before: BTreeSet<String>,
    pub(crate) interrupt_after: BTreeSet<String>,
}

impl std::fmt::Debug for CompileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CompileConfig")
            .field("checkpointer", &self.checkpointer.is_some())
            .field("interrupt_before", &self.interrupt_before)
            .field("interrupt_after", &self.interrupt_after)
            .finish()
    }
}

impl CompileConfig {
    /// Saves a checkpoint after every node to `store`.
    pub fn checkpointer(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.checkpointer = Some(store);
        self
    }

    /// Pauses before these nodes run (needs a checkpointer).
    pub fn interrupt_before<'a>(mut self, nodes: impl IntoIterator<Item = &'a str>) -> Self {
        self.interrupt_before
            .extend(nodes.into_iter().map(str::to_owned));
        self
    }

    /// Pauses after these nodes ran and their checkpoint was saved (needs a checkpointer).
    pub fn interrupt_after<'a>(mut self, nodes: impl IntoIterator<Item = &'a str>) -> Self {
        self.interrupt_after
            .extend(nodes.into_iter().map(str::to_owned));
        self
    }
}

/// How one run is made: its execution id, the step limit, and the stream's buffer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunConfig {
    pub(crate) execution_id: String,
    pub(crate) recursion_limit: usize,
    pub(crate) buffer: usize,
    pub(crate) run_id: Option<String>,
    pub(crate) durability: Durability,
    pub(crate) stream: StreamModes,
    /// A subgraph's run: the parent's checkpoint its step started from, recorded in every
    /// checkpoint of the run (metadata `parent_checkpoint`).
    pub(crate) parent_checkpoint: Option<String>,
}

/// What a [`CompiledGraph::stream`] carries ([`RunConfig::stream_modes`]). Whatever the
/// modes, the stream ends with [`GraphEvent::Finished`], [`GraphEvent::Interrupted`] or an
/// error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StreamMode {
    /// The run's steps as they happen: [`GraphEvent::NodeStart`], [`GraphEvent::NodeEnd`],
    /// [`GraphEvent::CheckpointSaved`]. The default.
    Debug,
    /// The whole state after each step, and the input first: [`GraphEvent::Values`].
    Values,
    /// What each node (or task) returned, as JSON, as soon as it returns: an update, or a
    /// whole state ([`GraphEvent::Update`]).
    Updates,
    /// What nodes emit through [`NodeContext::emit`] ([`GraphEvent::Custom`]).
    Custom,
    /// Model tokens as they are generated ([`NodeContext::emit_token`]; the prebuilt agents
    /// stream their model's reply when this is on): [`GraphEvent::Token`].
    Tokens,
}

/// A set of [`StreamMode`]s.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct StreamModes(u8);

impl StreamModes {
    fn bit(mode: StreamMode) -> u8 {
        1 << (mode as u8)
    }

    pub(crate) fn has(self, mode: StreamMode) -> bool {
        self.0 & Self::bit(mode) != 0
    }
}

impl Default for StreamModes {
    fn default() -> Self {
        StreamModes(Self::bit(StreamMode::Debug))
    }
}

impl RunConfig {
    /// A run of execution `id` (the checkpoints' execution id), with at most 100 steps and a
    /// stream buffer of 64 events.
    pub fn execution_id(id: impl Into<String>) -> Self {
        RunConfig {
            execution_id: id.into(),
            recursion_limit: 100,
            buffer: 64,
            run_id: None,
            durability: Durability::Sync,
            stream: StreamModes::default(),
            parent_checkpoint: None,
        }
    }

    /// What [`CompiledGraph::stream`] carries: any mix of [`StreamMode`]s (by default
    /// [`StreamMode::Debug`] alone). The channel stays bounded by [`RunConfig::buffer`]: a
    /// slow consumer slows the run, and nothing is dropped.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ckpt::graph::{CompileConfig, GraphEvent, NodeContext, RunConfig, StateGraph, StreamMode, END};
    /// use futures_util::StreamExt;
    ///
    /// let mut g = StateGraph::<u32>::new();
    /// g.add_node_with_context("double", |n: u32, ctx: NodeContext| async move {
    ///     ctx.emit(&format!("doubling {n}")).await;
    ///     Ok::<_, std::io::Error>(n * 2)
    /// });
    /// g.add_edge("double", END).set_entry_point("double");
    /// let app = g.compile(CompileConfig::default())?;
    /// let config = RunConfig::execution_id("s").stream_modes([StreamMode::Values, StreamMode::Custom]);
    /// let events: Vec<_> = app.stream(21, config).collect().await;
    /// let events: Vec<GraphEvent<u32>> = events.into_iter().collect::<Result<_, _>>()?;
    /// assert!(matches!(events[0], GraphEvent::Values { step: 0, state: 21 }));
    /// assert!(matches!(&events[1], GraphEvent::Custom { value, .. } if value == "doubling 21"));
    /// assert!(matches!(events[2], GraphEvent::Values { step: 1, state: 42 }));
    /// assert!(matches!(events[3], GraphEvent::Finished { state: 42 }));
    /// # Ok(()) }
    /// ```
    pub fn stream_modes(mut self, modes: impl IntoIterator<Item = StreamMode>) -> Self {
        self.stream = StreamModes(
            modes
                .into_iter()
                .fold(0, |bits, m| bits | StreamModes::bit(m)),
        );
        self
    }

    /// When this run's checkpoints are saved: after every step before the next one
    /// ([`Durability::Sync`], the default), in the background while the next step runs
    /// ([`Durability::Async`]), or only when the run ends ([`Durability::Exit`]).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use ckpt::graph::{CompileConfig, Durability, RunConfig, StateGraph, END};
    /// use ckpt::{CheckpointStore, Store};
    ///
    /// let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    /// let mut g = StateGraph::<u32>::new();
    /// g.add_node("inc", |n: u32| async move { Ok::<_, std::io::Error>(n + 1) });
    /// g.add_conditional_edges("inc", |n: &u32| if *n >= 5 { END.into() } else { "inc".into() });
    /// g.set_entry_point("inc");
    /// let app = g.compile(CompileConfig::default().checkpointer(store.clone()))?;
    ///
    /// // Saves overlap with the next step; every save has landed when invoke returns.
    /// let config = RunConfig::execution_id("async").durability(Durability::Async);
    /// assert_eq!(*app.invoke(0, config).await?.state(), 5);
    /// assert_eq!(store.list("async").await?.len(), 6); // the input and 5 steps
    ///
    /// // Only where the run ended is saved.
    /// let config = RunConfig::execution_id("exit").durability(Durability::Exit);
    /// assert_eq!(*app.invoke(0, config).await?.state(), 5);
    /// assert_eq!(store.list("exit").await?.len(), 1);
    /// # Ok(()) }
    /// ```
    pub fn durability(mut self, mode: Durability) -> Self {
        self.durability = mode;
        self
    }

    /// Names this run ([`NodeContext::run_id`]); by default every call gets a new random id.
    pub fn run_id(mut self, id: impl Into<String>) -> Self {
        self.run_id = Some(id.into());
        self
    }

    /// At most `n` nodes run in this call; one more is [`GraphError::RecursionLimit`].
    pub fn recursion_limit(mut self, n: usize) -> Self {
        self.recursion_limit = n;
        self
    }

    /// Events [`CompiledGraph::stream`] buffers before the run waits for the consumer (at least 1).
    pub fn buffer(mut self, n: usize) -> Self {
        self.buffer = n.max(1);
        self
    }
}

/// How a run ended (errors aside).
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome<S> {
    /// The run reached [`END`]; the final state.
    Finished(S),
    /// The run paused: at a static interrupt (resume it with [`CompiledGraph::resume`]), or
    /// because nodes asked for values ([`NodeContext::interrupt`]; answer with
    /// [`CompiledGraph::resume_with_command`]).
    Interrupted {
        /// The checkpoint to resume from.
        checkpoint: CheckpointId,
        /// The state at that checkpoint.
        state: S,
        /// The node(s) that run next (empty when the next step is [`END`]).
        next: Vec<String>,
        /// The interrupts nodes raised and that wait for an answer (empty at a static
        /// interrupt).
        interrupts: Vec<Interrupt>,
    },
}

impl<S> Outcome<S> {
    /// The state, finished or interrupted.
    pub fn state(&self) -> &S {
        match self {
            Outcome::Finished(s) | Outcome::Interrupted { state: s, .. } => s,
        }
    }

    /// Whether the run reached [`END`].
    pub fn is_finished(&self) -> bool {
        matches!(self, Outcome::Finished(_))
    }
}

/// What a streamed run reports, in order.
#[derive(Debug, Clone, PartialEq)]
pub enum GraphEvent<S> {
    /// A node is about to run.
    NodeStart {
        /// The node.
        node: String,
        /// Its step number in the execution (1 for the first node).
        step: u64,
    },
    /// A node returned.
    NodeEnd {
        /// The node.
        node: String,
        /// Its step number.
        step: u64,
        /// The state it returned.
        state: S,
    },
    /// [`StreamMode::Values`]: the whole state after step `step` (step 0, or the step the run
    /// started from: its input or where it resumed).
    Values {
        /// The step.
        step: u64,
        /// The state.
        state: S,
    },
    /// [`StreamMode::Updates`]: what a node (or task) returned.
    Update {
        /// The node.
        node: String,
        /// The task: the node, or a send's `node[index]`.
        task: String,
        /// Its step.
        step: u64,
        /// The update as JSON (for a node that returns whole states: the state).
        update: serde_json::Value,
    },
    /// [`StreamMode::Custom`]: a value a node emitted ([`NodeContext::emit`]).
    Custom {
        /// The node.
        node: String,
        /// The task.
        task: String,
        /// Its step.
        step: u64,
        /// The value.
        value: serde_json::Value,
    },
    /// [`StreamMode::Tokens`]: a piece of a model's reply, as generated
    /// ([`NodeContext::emit_token`]).
    Token {
        /// The node.
        node: String,
        /// The task.
        task: String,
        /// Its step.
        step: u64,
        /// The text.
        text: String,
    },
    /// A checkpoint was saved (and is durable).
    CheckpointSaved {
        /// Its id.
        id: CheckpointId,
        /// Its version.
        version: u64,
    },
    /// The run paused; the last event.
    Interrupted {
        /// The checkpoint to resume from.
        checkpoint: CheckpointId,
        /// The node(s) that run next.
        next: Vec<String>,
        /// The interrupts waiting for an answer (see [`Outcome::Interrupted`]).
        interrupts: Vec<Interrupt>,
    },
    /// The run reached [`END`]; the last event.
    Finished {
        /// The final state.
        state: S,
    },
}

pub(crate) enum Edge<S> {
    To(String),
    Conditional(RouteFn<S>),
    Sends(SendsFn<S>),
    FanOut {
        branches: Vec<String>,
        join: String,
        merge: MergeFn<S>,
    },
}

impl<S> Clone for Edge<S> {
    fn clone(&self) -> Self {
        match self {
            Edge::To(to) => Edge::To(to.clone()),
            Edge::Conditional(f) => Edge::Conditional(f.clone()),
            Edge::Sends(f) => Edge::Sends(f.clone()),
            Edge::FanOut {
                branches,
                join,
                merge,
            } => Edge::FanOut {
                branches: branches.clone(),
                join: join.clone(),
                merge: merge.clone(),
            },
        }
    }
}

/// A graph under construction: nodes, edges and an entry point. Mistakes are reported by
/// [`StateGraph::compile`].
pub struct StateGraph<S> {
    nodes: Vec<(String, NodeSpec<S>)>,
    edges: Vec<(String, Edge<S>)>,
    entry: Option<String>,
    merge_input: Option<InputFn<S>>,
    retries: Vec<(String, RetryPolicy)>,
}

impl<S: GraphState> Default for StateGraph<S> {
    fn default() -> Self {
        Self::new()
    }
}

impl<S: GraphState> StateGraph<S> {
    /// An empty graph.
    pub fn new() -> Self {
        StateGraph {
            nodes: Vec::new(),
            edges: Vec::new(),
            entry: None,
            merge_input: None,
            retries: Vec::new(),
        }
    }

    /// Adds a node: an async function from the state to the new state, attempted once.
    pub fn add_node<F, Fut, E>(&mut self, name: impl Into<String>, node: F) -> &mut Self
    where
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.add_node_with_retry(name, node, RetryPolicy::default())
    }

    /// Adds a node that is retried on error according to `retry`.
    pub fn add_node_with_retry<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        node: F,
        retry: RetryPolicy,
    ) -> &mut Self
    where
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.push_node(name, move |s: S, _ctx: NodeContext| node(s), retry, false)
    }

    /// Sets the retry policy of node `node` (added before or after this call; an unknown name
    /// is refused by [`StateGraph::compile`]).
    pub fn set_retry(&mut self, node: impl Into<String>, retry: RetryPolicy) -> &mut Self {
        self.retries.push((node.into(), retry));
        self
    }

    /// Adds a node that is also given its [`NodeContext`]: to ask a person for a value
    /// ([`NodeContext::interrupt`]) and to run side effects once ([`NodeContext::task`]).
    pub fn add_node_with_context<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        node: F,
    ) -> &mut Self
    where
        F: Fn(S, NodeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.add_node_with_context_and_retry(name, node, RetryPolicy::default())
    }

    /// [`StateGraph::add_node_with_context`], retried on error according to `retry` (a retry
    /// finds the tasks the failed attempt journaled: they do not run again).
    pub fn add_node_with_context_and_retry<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        node: F,
        retry: RetryPolicy,
    ) -> &mut Self
    where
        F: Fn(S, NodeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.push_node(name, node, retry, true)
    }

    fn push_node<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        node: F,
        retry: RetryPolicy,
        context: bool,
    ) -> &mut Self
    where
        F: Fn(S, NodeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        let name = name.into();
        let me = name.clone();
        let f: NodeFn<S> = Arc::new(move |input: NodeInput<S>, ctx: NodeContext| {
            let fut = input.decode(&me, Ok).map(|s| node(s, ctx));
            Box::pin(async move {
                match fut {
                    Ok(fut) => fut.await.map(Output::State).map_err(Into::into),
                    Err(e) => Err(e),
                }
            })
        });
        self.nodes.push((
            name,
            NodeSpec {
                f,
                retry,
                context,
                decode: reduce::state_decoder(),
                sent_only: false,
            },
        ));
        self
    }

    /// After `from` runs, `to` runs (`to` may be [`END`]).
    pub fn add_edge(&mut self, from: impl Into<String>, to: impl Into<String>) -> &mut Self {
        self.edges.push((from.into(), Edge::To(to.into())));
        self
    }

    /// After `from` runs, `route` picks the next node from the new state (or returns [`END`]).
    pub fn add_conditional_edges<F>(&mut self, from: impl Into<String>, route: F) -> &mut Self
    where
        F: Fn(&S) -> String + Send + Sync + 'static,
    {
        self.edges
            .push((from.into(), Edge::Conditional(Arc::new(route))));
        self
    }

    /// After `from` runs, `sends` picks the tasks of the next step from the new state: one
    /// [`SendTo`] per task (node and input), known only at run time (map over a list's items).
    /// They run concurrently in one step; each task's output is recorded as a pending write
    /// of the step's base checkpoint as soon as it finishes, and the outputs merge into the
    /// state in the order of the list (updates by the state's reducers: see [`Reducible`]).
    /// Execution then continues along each sent node's own edge (a node reached by several
    /// tasks runs once), and a sent node may send again (nested fan-out). An empty list ends
    /// the run there (unless other tasks of the step continue it).
    ///
    /// A resume from the step's checkpoint computes the sends again from its state (so `sends`
    /// must be a function of the state alone) and runs only the tasks without a recorded
    /// output.
    pub fn add_send_edges<F>(&mut self, from: impl Into<String>, sends: F) -> &mut Self
    where
        F: Fn(&S) -> Vec<SendTo> + Send + Sync + 'static,
    {
        self.edges.push((from.into(), Edge::Sends(Arc::new(sends))));
        self
    }

    /// After `from` runs, the `branches` run concurrently (each with its retry policy) on clones
    /// of the state `from` returned; when all have finished, `merge` combines that state and the
    /// branches' results (in the order `branches` lists them) into the new state, and execution
    /// continues at `join` (a node, or [`END`]).
    ///
    /// All branches count as one step. With a checkpointer, each branch's result is recorded as
    /// soon as it finishes, as a pending write of the step's base checkpoint (a
    /// [`crate::Write`] on channel `__branch__`, task the branch: see
    /// [`crate::Store::writes`]); the merged state is then saved as the step's checkpoint (node
    /// name `from`, metadata `source: "join"`). Resuming a run that stopped during the step
    /// reuses the pending writes and runs only the missing branches. A branch may call
    /// [`NodeContext::interrupt`]: the step pauses once every branch has finished or paused.
    ///
    /// A branch node has no edge of its own (its way out is the join), is not the entry point,
    /// and is not the target of any other edge.
    pub fn add_fan_out<I, B, M>(
        &mut self,
        from: impl Into<String>,
        branches: I,
        join: impl Into<String>,
        merge: M,
    ) -> &mut Self
    where
        I: IntoIterator<Item = B>,
        B: Into<String>,
        M: Fn(S, Vec<(String, S)>) -> S + Send + Sync + 'static,
    {
        self.edges.push((
            from.into(),
            Edge::FanOut {
                branches: branches.into_iter().map(Into::into).collect(),
                join: join.into(),
                merge: Arc::new(merge),
            },
        ));
        self
    }

    /// The node a fresh run starts at.
    pub fn set_entry_point(&mut self, node: impl Into<String>) -> &mut Self {
        self.entry = Some(node.into());
        self
    }

    /// Checks the graph and returns a runnable one.
    ///
    /// Refused, with the node named: duplicate or reserved node names, a missing or unknown entry
    /// point, an edge from or to an unknown node, a node with no outgoing edge or more than one,
    /// a node not reachable from the entry point, an interrupt on an unknown node, and
    /// interrupts without a checkpointer ([`GraphError::NoCheckpointer`]).
    ///
    /// The targets of a conditional edge are only known when it runs, so a node that has a
    /// conditional edge is assumed to reach every node; an unknown target it returns at run time
    /// is [`GraphError::InvalidRoute`].
    pub fn compile(self, config: CompileConfig) -> Result<CompiledGraph<S>, GraphError> {
        let mut nodes = BTreeMap::new();
        for (name, spec) in self.nodes {
            if name == END || name == INPUT {
                return Err(GraphError::ReservedName(name));
            }
            if let Err(e) = validate_name("node name", &name) {
                return Err(GraphError::InvalidNodeName {
                    node: name,
                    reason: e.to_string(),
                });
            }
            if nodes.contains_key(&name) {
                return Err(GraphError::DuplicateNode(name));
            }
            nodes.insert(name, spec);
        }
        for (name, retry) in self.retries {
            match nodes.get_mut(&name) {
                Some(spec) => spec.retry = retry,
                None => {
                    return Err(GraphError::UnknownNode {
                        node: name,
                        context: "set_retry".into(),
                    })
                }
            }
        }
        let sent_only = |n: &str| {
            nodes
                .get(n)
                .is_some_and(|spec: &NodeSpec<S>| spec.sent_only)
        };
        let entry = self.entry.ok_or(GraphError::MissingEntryPoint)?;
        if !nodes.contains_key(&entry) {
            return Err(GraphError::UnknownNode {
                node: entry,
                context: "the entry point".into(),
            });
        }
        if sent_only(&entry) {
            return Err(GraphError::SentOnly {
                node: entry,
                context: "the entry point".into(),
            });
        }
        let mut edges: BTreeMap<String, Edge<S>> = BTreeMap::new();
        for (from, edge) in self.edges {
            if !nodes.contains_key(&from) {
                let context = match &edge {
                    Edge::To(to) => format!("the edge {from:?} -> {to:?}"),
                    Edge::Conditional(_) => format!("the conditional edge from {from:?}"),
                    Edge::Sends(_) => format!("the send edges from {from:?}"),
                    Edge::FanOut { .. } => format!("the fan-out from {from:?}"),
                };
                return Err(GraphError::UnknownNode {
                    node: from,
                    context,
                });
            }
            if let Edge::To(to) = &edge {
                if to != END && !nodes.contains_key(to) {
                    return Err(GraphError::UnknownNode {
                        node: to.clone(),
                        context: format!("the edge {from:?} -> {to:?}"),
                    });
                }
                if sent_only(to) {
                    return Err(GraphError::SentOnly {
                        node: to.clone(),
                        context: format!("the edge {from:?} -> {to:?}"),
                    });
                }
            }
            if let Edge::FanOut { branches, join, .. } = &edge {
                for to in branches.iter().chain(std::iter::once(join)) {
                    let end_join = to == join && to == END;
                    if !end_join && !nodes.contains_key(to) {
                        return Err(GraphError::UnknownNode {
                            node: to.clone(),
                            context: format!("the fan-out from {from:?}"),
                        });
                    }
                    if sent_only(to) {
                        return Err(GraphError::SentOnly {
                            node: to.clone(),
                            context: format!("the fan-out from {from:?}"),
                        });
                    }
                }
            }
            if edges.contains_key(&from) {
                return Err(GraphError::MultipleEdges(from));
            }
            edges.insert(from, edge);
        }
        // Fan-out branches: their way out is the join, and only their fan-out leads to them.
        let mut branch_of: BTreeMap<&str, &str> = BTreeMap::new();
        for (from, edge) in &edges {
            let Edge::FanOut { branches, join, .. } = edge else {
                continue;
            };
            let invalid = |reason: String| GraphError::InvalidFanOut {
                from: from.clone(),
                reason,
            };
            if branches.is_empty() {
                return Err(invalid("it has no branches".into()));
            }
            for (i, b) in branches.iter().enumerate() {
                if branches[..i].contains(b) {
                    return Err(invalid(format!("branch {b:?} is listed twice")));
                }
                if b == join {
                    return Err(invalid(format!("branch {b:?} is also the join node")));
                }
                if *b == entry {
                    return Err(invalid(format!("branch {b:?} is the entry point")));
                }
                if edges.contains_key(b) {
                    return Err(invalid(format!(
                        "branch {b:?} has its own outgoing edge; a branch continues at the join node {join:?}"
                    )));
                }
                if config.interrupt_before.contains(b) || config.interrupt_after.contains(b) {
                    return Err(invalid(format!(
                        "branch {b:?} has an interrupt; interrupts on branches are not supported (interrupt after {from:?} or before {join:?} instead)"
                    )));
                }
                if let Some(other) = branch_of.insert(b, from) {
                    return Err(invalid(format!(
                        "branch {b:?} is also a branch of the fan-out from {other:?}"
                    )));
                }
            }
        }
        for (from, edge) in &edges {
            if let Edge::To(to) = edge {
                if let Some(fan) = branch_of.get(to.as_str()) {
                    return Err(GraphError::InvalidFanOut {
                        from: (*fan).to_owned(),
                        reason: format!(
                            "branch {to:?} is also the target of the edge {from:?} -> {to:?}"
                        ),
                    });
                }
            }
        }
        if let Some(name) = nodes
            .keys()
            .find(|n| !edges.contains_key(*n) && !branch_of.contains_key(n.as_str()))
        {
            return Err(GraphError::NoOutgoingEdge(name.clone()));
        }
        // Reachability from the entry point.
        let mut seen: HashSet<&str> = HashSet::new();
        let mut queue: VecDeque<&str> = VecDeque::from([entry.as_str()]);
        let mut everything = false;
        while let Some(n) = queue.pop_front() {
            if !seen.insert(n) {
                continue;
            }
            match edges.get(n) {
                Some(Edge::To(to)) if to != END => queue.push_back(to),
                Some(Edge::Conditional(_) | Edge::Sends(_)) => everything = true,
                Some(Edge::FanOut { branches, join, .. }) => {
                    queue.extend(branches.iter().map(String::as_str));
                    if join != END {
                        queue.push_back(join);
                    }
                }
                _ => {}
            }
        }
        if !everything {
            if let Some(name) = nodes.keys().find(|n| !seen.contains(n.as_str())) {
                return Err(GraphError::Unreachable {
                    node: name.clone(),
                    entry,
                });
            }
        }
        for (set, what) in [
            (&config.interrupt_before, "interrupt_before"),
            (&config.interrupt_after, "interrupt_after"),
        ] {
            if let Some(n) = set.iter().find(|n| !nodes.contains_key(*n)) {
                return Err(GraphError::UnknownNode {
                    node: n.clone(),
                    context: what.into(),
                });
            }
        }
        if config.checkpointer.is_none()
            && !(config.interrupt_before.is_empty() && config.interrupt_after.is_empty())
        {
            return Err(GraphError::NoCheckpointer);
        }
        Ok(CompiledGraph::new(
            nodes,
            edges,
            entry,
            config,
            self.merge_input,
        ))
    }
}

/// Nodes that return updates, and the input of a new turn, for states with reducers.
impl<S: Reducible> StateGraph<S> {
    /// An empty graph whose runs of a finished execution merge their input into its last state
    /// with [`Reducible::merge_input`] (a new turn of a chat) instead of starting from the
    /// input alone. A graph with an update node or a send node does this too.
    pub fn with_reducers() -> Self {
        let mut g = Self::new();
        g.use_reducers();
        g
    }

    fn use_reducers(&mut self) {
        if self.merge_input.is_none() {
            self.merge_input = Some(Arc::new(|state: &mut S, input: S| state.merge_input(input)));
        }
    }

    /// Adds a node that returns an update ([`Reducible::Update`]) instead of a whole state;
    /// the state's reducers merge it.
    pub fn add_update_node<F, Fut, E>(&mut self, name: impl Into<String>, node: F) -> &mut Self
    where
        F: Fn(S) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S::Update, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.push_update_node(name, move |s: S, _ctx: NodeContext| node(s), false)
    }

    /// [`StateGraph::add_update_node`] for a node that is also given its [`NodeContext`].
    pub fn add_update_node_with_context<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        node: F,
    ) -> &mut Self
    where
        F: Fn(S, NodeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S::Update, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.push_update_node(name, node, true)
    }

    /// Adds a node run by [`SendTo`] tasks: it is given a send's input (of type `I`) and its
    /// [`NodeContext`], and returns an update. Only a send reaches it (not an edge, nor the
    /// entry point).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use ckpt::graph::{reduce, CompileConfig, NodeContext, Reducible, RunConfig, SendTo, StateGraph, END};
    /// use serde::{Deserialize, Serialize};
    ///
    /// #[derive(Clone, Default, Serialize, Deserialize)]
    /// struct Words { words: Vec<String>, lengths: Vec<usize> }
    ///
    /// impl Reducible for Words {
    ///     type Update = Vec<usize>;
    ///     fn apply(&mut self, lengths: Vec<usize>) { reduce::append(&mut self.lengths, lengths) }
    /// }
    ///
    /// let mut g = StateGraph::<Words>::with_reducers();
    /// g.add_node("split", |s: Words| async move { Ok::<_, std::io::Error>(s) });
    /// // One task per word, run concurrently; their updates merge in this order.
    /// g.add_send_edges("split", |s: &Words| {
    ///     s.words.iter().map(|w| SendTo::new("measure", w)).collect()
    /// });
    /// g.add_send_node("measure", |word: String, _ctx: NodeContext| async move {
    ///     Ok::<_, std::io::Error>(vec![word.len()])
    /// });
    /// g.add_edge("measure", END);
    /// g.set_entry_point("split");
    /// let app = g.compile(CompileConfig::default())?;
    /// let words = ["a", "tiny", "graph"].map(String::from).to_vec();
    /// let out = app.invoke(Words { words, lengths: vec![] }, RunConfig::execution_id("w")).await?;
    /// assert_eq!(out.state().lengths, [1, 4, 5]);
    /// # Ok(()) }
    /// ```
    pub fn add_send_node<I, F, Fut, E>(&mut self, name: impl Into<String>, node: F) -> &mut Self
    where
        I: DeserializeOwned + Send + 'static,
        F: Fn(I, NodeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S::Update, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.use_reducers();
        let name = name.into();
        let me = name.clone();
        let f: NodeFn<S> = Arc::new(move |input: NodeInput<S>, ctx: NodeContext| {
            let fut = input
                .decode::<I>(&me, |_| {
                    Err(format!(
                        "node {me:?} takes the input of a send (add_send_node); reach it with a SendTo, not an edge"
                    )
                    .into())
                })
                .map(|i| node(i, ctx));
            Box::pin(async move { update_output::<S, E>(fut).await })
        });
        self.nodes.push((
            name,
            NodeSpec {
                f,
                retry: RetryPolicy::default(),
                context: true,
                decode: reduce::update_decoder(),
                sent_only: true,
            },
        ));
        self
    }

    fn push_update_node<F, Fut, E>(
        &mut self,
        name: impl Into<String>,
        node: F,
        context: bool,
    ) -> &mut Self
    where
        F: Fn(S, NodeContext) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<S::Update, E>> + Send + 'static,
        E: Into<BoxError>,
    {
        self.use_reducers();
        let name = name.into();
        let me = name.clone();
        let f: NodeFn<S> = Arc::new(move |input: NodeInput<S>, ctx: NodeContext| {
            let fut = input.decode(&me, Ok).map(|s| node(s, ctx));
            Box::pin(async move { update_output::<S, E>(fut).await })
        });
        self.nodes.push((
            name,
            NodeSpec {
                f,
                retry: RetryPolicy::default(),
                context,
                decode: reduce::update_decoder(),
                sent_only: false,
            },
        ));
        self
    }
}

/// Awaits an update node's future (or the error decoding its input) as an [`Output`].
async fn update_output<S: Reducible, E: Into<BoxError>>(
    fut: Result<impl Future<Output = Result<S::Update, E>>, BoxError>,
) -> Result<Output<S>, BoxError> {
    let update = fut?.await.map_err(Into::into)?;
    Ok(Output::Update(Arc::new(UpdateOf::<S>(update))))
}
