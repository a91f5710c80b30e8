//! Replay: run a recorded execution again from any of its checkpoints, as a new branch (or a new
//! execution), and compare it step by step with what was recorded.
//!
//! In [`ReplayMode::Recorded`] every journaled task ([`super::NodeContext::task`]) returns the
//! result the recorded run journaled (so a ReAct agent replays with the recorded model replies
//! and tool outputs, offline and deterministic) and a task the journal does not hold stops the
//! replay and is reported; in [`ReplayMode::Live`] tasks run again. Answers to interrupts are
//! replayed in both modes. Static interrupts (`interrupt_before`/`interrupt_after`) do not pause
//! a replay.
//!
//! The report ([`ReplayReport`]) lists each step (node, whether node and state equal the
//! recorded run's at that step) and, at the first divergence, the paths that differ with their
//! recorded and new values ([`crate::diff`], what `ckpt diff` prints).

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;

use super::context::{NotRecorded, StepShared};
use super::run::RunState;
use super::{CompiledGraph, GraphError, GraphState, Outcome, RunConfig};
use crate::checkpoint::{Checkpoint, CheckpointId};
use crate::diff::{diff_values, Diff};
use crate::store::CheckpointStore;

/// How a replay treats journaled tasks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplayMode {
    /// Tasks return the results the recorded run journaled; nothing with side effects runs.
    Recorded,
    /// Tasks run again.
    Live,
}

/// What to replay against and where the replay goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayOptions {
    pub(crate) mode: ReplayMode,
    pub(crate) into: Option<String>,
    pub(crate) recorded_head: Option<CheckpointId>,
    pub(crate) recursion_limit: Option<usize>,
}

impl ReplayOptions {
    /// A replay with recorded task results ([`ReplayMode::Recorded`]).
    pub fn recorded() -> Self {
        ReplayOptions {
            mode: ReplayMode::Recorded,
            into: None,
            recorded_head: None,
            recursion_limit: None,
        }
    }

    /// A replay whose tasks run again ([`ReplayMode::Live`]).
    pub fn live() -> Self {
        ReplayOptions {
            mode: ReplayMode::Live,
            ..ReplayOptions::recorded()
        }
    }

    /// Replays into a new execution (a fork of the starting checkpoint) instead of a new branch
    /// of the same execution.
    pub fn into_execution(mut self, execution_id: impl Into<String>) -> Self {
        self.into = Some(execution_id.into());
        self
    }

    /// Compares with the branch that ends at `head` (by default: from the starting checkpoint,
    /// its oldest child at every step, which is the run as first recorded).
    pub fn recorded_head(mut self, head: CheckpointId) -> Self {
        self.recorded_head = Some(head);
        self
    }

    /// At most `n` steps (default: the recorded steps plus 100).
    pub fn recursion_limit(mut self, n: usize) -> Self {
        self.recursion_limit = Some(n);
        self
    }
}

/// One step of a replay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayStep {
    /// 1 for the first step after the starting checkpoint.
    pub index: usize,
    /// The node that ran.
    pub node: String,
    /// The checkpoint the replay saved.
    pub checkpoint: CheckpointId,
    /// The recorded checkpoint at the same step, if the recorded run had one.
    pub recorded: Option<CheckpointId>,
    /// Its node.
    pub recorded_node: Option<String>,
    /// Whether the state equals the recorded state at this step.
    pub same_state: bool,
}

impl ReplayStep {
    /// Same node and same state as recorded.
    pub fn matches(&self) -> bool {
        self.same_state && self.recorded_node.as_deref() == Some(self.node.as_str())
    }
}

/// Where a replay first differs from the recorded run.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The step (1 for the first after the starting checkpoint).
    pub index: usize,
    /// What differs, in words.
    pub reason: String,
    /// The node the replay ran there (`None` when the replay ended before this step).
    pub node: Option<String>,
    /// The node the recorded run ran there (`None` when it ended before this step).
    pub recorded_node: Option<String>,
    /// The replay's checkpoint at this step.
    pub checkpoint: Option<CheckpointId>,
    /// The recorded checkpoint at this step.
    pub recorded: Option<CheckpointId>,
    /// The state paths that differ: recorded (old) to replayed (new).
    pub diff: Diff,
}

/// The result of [`CompiledGraph::replay`]: every step compared with the recorded run.
#[derive(Debug)]
pub struct ReplayReport<S> {
    /// The execution the replay ran in.
    pub execution_id: String,
    /// The recorded checkpoint it started from.
    pub from: CheckpointId,
    /// Its mode.
    pub mode: ReplayMode,
    /// Every step it ran.
    pub steps: Vec<ReplayStep>,
    /// The first difference from the recorded run, if any.
    pub divergence: Option<Divergence>,
    /// Tasks the replay asked for that the journal did not hold (recorded mode).
    pub missing_tasks: Vec<NotRecorded>,
    /// How the replay ended.
    pub outcome: Result<Outcome<S>, GraphError>,
}

impl<S> ReplayReport<S> {
    /// Whether the replay did exactly what was recorded: every step the same node and state,
    /// as many steps, every task recorded, and no error.
    pub fn is_faithful(&self) -> bool {
        self.divergence.is_none() && self.missing_tasks.is_empty() && self.outcome.is_ok()
    }

    /// Panics with the report when the replay is not faithful: turns a stored execution into
    /// a regression test (see [`replay_regression`]).
    #[track_caller]
    pub fn assert_faithful(&self) {
        if !self.is_faithful() {
            panic!("the replay diverged from the recorded run:\n{self}");
        }
    }
}

impl<S> fmt::Display for ReplayReport<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "replay of {} from {} ({:?} mode): {} step(s)",
            self.execution_id,
            self.from,
            self.mode,
            self.steps.len()
        )?;
        for s in &self.steps {
            let mark = if s.matches() { "=" } else { "≠" };
            let recorded = match (&s.recorded, &s.recorded_node) {
                (Some(id), Some(node)) => format!("recorded {id} {node}"),
                _ => "not in the recorded run".to_owned(),
            };
            writeln!(
                f,
                "  {mark} step {} {} -> {} ({recorded})",
                s.index, s.node, s.checkpoint
            )?;
        }
        match &self.divergence {
            None => writeln!(f, "no divergence")?,
            Some(d) => {
                writeln!(f, "first divergence at step {}: {}", d.index, d.reason)?;
                for line in d.diff.lines("    ", false) {
                    writeln!(f, "{line}")?;
                }
            }
        }
        for m in &self.missing_tasks {
            writeln!(f, "not recorded: {m}")?;
        }
        match &self.outcome {
            Ok(Outcome::Finished(_)) => write!(f, "outcome: finished"),
            Ok(Outcome::Interrupted { checkpoint, .. }) => {
                write!(f, "outcome: interrupted at {checkpoint}")
            }
            Err(e) => write!(f, "outcome: failed: {e}"),
        }
    }
}

/// What a running replay compares with, and what it found so far.
pub(crate) struct Track {
    pub mode: ReplayMode,
    /// The recorded checkpoint the replay started from.
    from: CheckpointId,
    /// The recorded run after `from`, in order.
    path: Vec<Checkpoint>,
    steps: Vec<ReplayStep>,
    divergence: Option<Divergence>,
    missing: Vec<NotRecorded>,
}

impl Track {
    /// The recorded checkpoint the replay's step `index` (0-based) started from: what its
    /// tasks and answers are read from.
    pub fn recorded_base(&self, index: usize) -> Option<CheckpointId> {
        match index {
            0 => Some(self.from.clone()),
            i => self.path.get(i - 1).map(|c| c.id.clone()),
        }
    }

    /// Compares the checkpoint the replay saved at step `index` (0-based) with the recorded one.
    pub fn record_step(
        &mut self,
        index: usize,
        node: &str,
        saved: &Checkpoint,
    ) -> Result<(), GraphError> {
        let recorded = self.path.get(index);
        let new = saved.state_json()?;
        let diff = match recorded {
            Some(r) => diff_values(&r.state_json()?, &new),
            None => Diff::default(),
        };
        let step = ReplayStep {
            index: index + 1,
            node: node.to_owned(),
            checkpoint: saved.id.clone(),
            recorded: recorded.map(|r| r.id.clone()),
            recorded_node: recorded.map(|r| r.node_name.clone()),
            same_state: recorded.is_some() && diff.is_empty(),
        };
        if self.divergence.is_none() && !step.matches() {
            let reason = match &step.recorded_node {
                None => format!(
                    "the recorded run ended after {} step(s); the replay ran {node:?}",
                    self.path.len()
                ),
                Some(r) if r != node => {
                    format!("the replay ran node {node:?} where the recorded run ran {r:?}")
                }
                Some(_) => format!("the state after {node:?} differs: {}", diff.summary()),
            };
            self.divergence = Some(Divergence {
                index: index + 1,
                reason,
                node: Some(node.to_owned()),
                recorded_node: step.recorded_node.clone(),
                checkpoint: Some(saved.id.clone()),
                recorded: step.recorded.clone(),
                diff,
            });
        }
        self.steps.push(step);
        Ok(())
    }

    /// Takes the tasks a step asked for that the journal did not hold.
    pub fn note_missing(&mut self, shared: &StepShared) {
        if let Ok(mut m) = shared.missing.lock() {
            self.missing.append(&mut m);
        }
    }

    /// The report, once the replay ended with `outcome`.
    fn report<S>(
        mut self,
        execution_id: String,
        outcome: Result<Outcome<S>, GraphError>,
    ) -> ReplayReport<S> {
        let ran = self.steps.len();
        if self.divergence.is_none() && (ran < self.path.len() || outcome.is_err()) {
            let next = self.path.get(ran);
            let why = match &outcome {
                Ok(Outcome::Finished(_)) => "finished".to_owned(),
                Ok(Outcome::Interrupted { .. }) => "was interrupted".to_owned(),
                Err(e) => format!("failed ({e})"),
            };
            let reason = match next {
                Some(next) => format!(
                    "the replay {why} after {ran} step(s); the recorded run went on with {:?}",
                    next.node_name
                ),
                None => {
                    format!("the replay {why} after {ran} step(s), where the recorded run ended")
                }
            };
            self.divergence = Some(Divergence {
                index: ran + 1,
                reason,
                node: None,
                recorded_node: next.map(|n| n.node_name.clone()),
                checkpoint: None,
                recorded: next.map(|n| n.id.clone()),
                diff: Diff::default(),
            });
        }
        ReplayReport {
            execution_id,
            from: self.from,
            mode: self.mode,
            steps: self.steps,
            divergence: self.divergence,
            missing_tasks: self.missing,
            outcome,
        }
    }
}

/// The recorded run after `from`: the branch ending at `head`, or by default the oldest child
/// at every step. One `list` of the execution (its states rebuilt in one pass), not a load per
/// step.
async fn recorded_path(
    store: &Arc<dyn CheckpointStore>,
    from: &CheckpointId,
    head: Option<&CheckpointId>,
) -> Result<Vec<Checkpoint>, GraphError> {
    let exec = from.execution_id();
    let all = store.list(exec).await?;
    let index: HashMap<u64, usize> = all
        .iter()
        .enumerate()
        .map(|(i, c)| (c.version, i))
        .collect();
    let parent_of = |c: &Checkpoint| {
        c.parent
            .as_ref()
            .filter(|p| p.execution_id() == exec)
            .map(CheckpointId::version)
    };
    let mut path = Vec::new();
    match head {
        Some(head) => {
            let mut at = *index
                .get(&head.version())
                .filter(|_| head.execution_id() == exec)
                .ok_or_else(|| crate::Error::not_found(format!("checkpoint {head}")))?;
            while all[at].version != from.version() {
                let Some(parent) = parent_of(&all[at]).and_then(|p| index.get(&p)) else {
                    return Err(GraphError::InvalidCheckpoint {
                        id: head.clone(),
                        reason: format!("it does not descend from {from}"),
                    });
                };
                path.push(all[at].clone());
                at = *parent;
            }
            path.reverse();
        }
        None => {
            // Listed oldest first: the first child seen of each parent is its oldest.
            let mut oldest_child: HashMap<u64, usize> = HashMap::new();
            for (i, c) in all.iter().enumerate() {
                if let Some(p) = parent_of(c) {
                    oldest_child.entry(p).or_insert(i);
                }
            }
            let mut at = from.version();
            while let Some(&i) = oldest_child.get(&at) {
                path.push(all[i].clone());
                at = all[i].version;
            }
        }
    }
    Ok(path)
}

impl<S: GraphState> CompiledGraph<S> {
    /// Runs execution `execution_id` again from its checkpoint `from`, as a new branch of the
    /// execution (or in a new one, [`ReplayOptions::into_execution`]), with the current graph
    /// code, and compares every step with the recorded run: see [`ReplayMode`] and
    /// [`ReplayReport`].
    ///
    /// Errors are for a replay that cannot start (no checkpointer, `from` not found or not a
    /// run position); how the replay itself ended, failures included, is in the report.
    pub async fn replay(
        &self,
        execution_id: &str,
        from: &CheckpointId,
        options: ReplayOptions,
    ) -> Result<ReplayReport<S>, GraphError> {
        if from.execution_id() != execution_id {
            return Err(GraphError::InvalidCheckpoint {
                id: from.clone(),
                reason: format!("it is not a checkpoint of execution {execution_id:?}"),
            });
        }
        let store = self.store()?.clone();
        let start = self.resolve(store.load(from).await?).await?;
        let path = recorded_path(&store, &start.id, options.recorded_head.as_ref()).await?;
        let limit = options.recursion_limit.unwrap_or(path.len() + 100);
        let (exec, mut cursor) = match &options.into {
            Some(new_exec) => {
                let forked = store.fork(&start.id, new_exec).await?;
                (new_exec.clone(), self.cursor_from(&forked)?)
            }
            None => {
                let mut cursor = self.cursor_from(&start)?;
                cursor.branch_from = Some(start.id.clone());
                // A new branch, fenced like any run: nobody else may save meanwhile.
                cursor.fence = store.latest(execution_id).await?.map(|c| c.id);
                (execution_id.to_owned(), cursor)
            }
        };
        // The replay goes through the recorded run's static pauses.
        cursor.honour_interrupt();
        let mut run = RunState::new(
            RunConfig::execution_id(exec.clone()).recursion_limit(limit),
            None,
        );
        run.track = Some(Track {
            mode: options.mode,
            from: start.id.clone(),
            path,
            steps: Vec::new(),
            divergence: None,
            missing: Vec::new(),
        });
        let outcome = self.run_loop(cursor, &mut run).await;
        let track = run.track.take().ok_or(GraphError::NoCheckpointer)?;
        Ok(track.report(exec, outcome))
    }
}

/// Replays stored execution `execution_id` of `source` with `app` (its current code) from the
/// execution's first checkpoint in [`ReplayMode::Recorded`], in a scratch in-memory copy (the
/// source is not written to), and returns the report: call [`ReplayReport::assert_faithful`]
/// in a test to turn a recorded run into a regression test.
pub async fn replay_regression<S: GraphState>(
    app: &CompiledGraph<S>,
    source: &crate::Store,
    execution_id: &str,
) -> Result<ReplayReport<S>, GraphError> {
    let scratch = crate::Store::memory();
    source.copy_to(&scratch, &[execution_id.to_owned()]).await?;
    let first = scratch
        .history(execution_id, crate::HistoryQuery::default())
        .await?
        .pop()
        .ok_or_else(|| GraphError::NoCheckpoint(execution_id.to_owned()))?;
    let scratch: Arc<dyn CheckpointStore> = Arc::new(scratch);
    app.with_checkpointer(scratch)
        .replay(execution_id, &first.id, ReplayOptions::recorded())
        .await
}
