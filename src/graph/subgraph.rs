//! Subgraphs: a compiled graph as a node of another.
//!
//! The child runs as its own execution, named after the parent's and the node
//! (`PARENT/NODE`; for a send task `PARENT/NODE[i]`), in the parent's store: its checkpoints are
//! listed next to the parent's (`ckpt executions`), and it can be inspected, resumed and
//! time-travelled on its own like any execution. Each entry of the node starts a new run of the
//! child (one continuous log of runs), and every checkpoint of that run records the parent's
//! checkpoint the step started from (metadata `parent_checkpoint`): when the parent's step runs
//! again (after a crash, a failure, an answer), the node finds its run and continues it instead
//! of starting over, or takes its result if it finished.
//!
//! An interrupt inside the child pauses the parent: each interrupt waiting in the child is
//! raised again by the node (same value), so the parent's [`Outcome::Interrupted`] lists it
//! and [`super::CompiledGraph::resume_with_command`] on the parent answers it; the child then
//! resumes with that answer. A static pause of the child (its `interrupt_before` or
//! `interrupt_after`) is raised the same way, with a value naming the child's checkpoint; any
//! answer continues it.

use std::collections::BTreeMap;
use std::sync::Arc;

use super::context::NodeContext;
use super::{Command, CompiledGraph, GraphState, Interrupt, Outcome, RunConfig, StateGraph};
use crate::checkpoint::{Checkpoint, CheckpointId};
use crate::error::BoxError;
use crate::store::{CheckpointStore, HistoryQuery};

impl<S: GraphState> StateGraph<S> {
    /// Adds `child`, a compiled graph over state `C`, as node `name`: `input` maps the parent's
    /// state to the child's input, the child runs to its end (with the parent's checkpointer),
    /// and `output` merges its final state into the parent's state.
    ///
    /// The child runs as execution `PARENT/NAME` (for a send task `PARENT/NAME[i]`) in the
    /// parent's store, one run per entry of the node, each of its checkpoints naming the
    /// parent's checkpoint the step started from (metadata `parent_checkpoint`): a step run
    /// again (after a crash, a failure, an answer) continues that run or takes its result. An
    /// interrupt inside the child is raised again by the node, pausing the parent; answering
    /// the parent ([`super::CompiledGraph::resume_with_command`]) resumes the child with that
    /// answer. A static pause inside the child pauses the parent the same way (its value names
    /// the child's checkpoint); any answer continues it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use ckpt::graph::{CompileConfig, RunConfig, StateGraph, END};
    /// use ckpt::{CheckpointStore, Store};
    ///
    /// // The child: doubles a number twice.
    /// let mut child = StateGraph::<u64>::new();
    /// child.add_node("double", |n: u64| async move { Ok::<_, std::io::Error>(n * 2) });
    /// child.add_node("again", |n: u64| async move { Ok::<_, std::io::Error>(n * 2) });
    /// child.add_edge("double", "again").add_edge("again", END).set_entry_point("double");
    /// let child = child.compile(CompileConfig::default())?;
    ///
    /// // The parent keeps (input, result) and calls the child on its input.
    /// let mut g = StateGraph::<(u64, u64)>::new();
    /// g.add_subgraph("quadruple", child, |s: &(u64, u64)| s.0, |s, out| (s.0, out));
    /// g.add_edge("quadruple", END).set_entry_point("quadruple");
    /// let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    /// let app = g.compile(CompileConfig::default().checkpointer(store.clone()))?;
    /// let out = app.invoke((5, 0), RunConfig::execution_id("p")).await?;
    /// assert_eq!(*out.state(), (5, 20));
    /// // The child's checkpoints: its input and two steps, under the parent's name.
    /// assert_eq!(store.list("p/quadruple").await?.len(), 3);
    /// # Ok(()) }
    /// ```
    pub fn add_subgraph<C, I, O>(
        &mut self,
        name: impl Into<String>,
        child: CompiledGraph<C>,
        input: I,
        output: O,
    ) -> &mut Self
    where
        C: GraphState,
        I: Fn(&S) -> C + Send + Sync + 'static,
        O: Fn(S, C) -> S + Send + Sync + 'static,
    {
        let child = Arc::new(child);
        let input = Arc::new(input);
        let output = Arc::new(output);
        self.add_node_with_context(name, move |s: S, ctx: NodeContext| {
            let (child, input, output) = (child.clone(), input.clone(), output.clone());
            async move {
                let start = input(&s);
                let out = run_child(&child, &ctx, start).await?;
                Ok::<_, BoxError>(output(s, out))
            }
        })
    }
}

/// The newest checkpoint of the child's run started from the parent's checkpoint `tag`, if
/// the step ran before: usually the child's latest; an older one when the parent travelled
/// back in time to a step whose child run was followed by others.
async fn this_steps_run(
    store: &Arc<dyn CheckpointStore>,
    exec: &str,
    tag: &str,
) -> Result<Option<Checkpoint>, BoxError> {
    let started_here = |cp: &Checkpoint| {
        cp.metadata
            .get("parent_checkpoint")
            .and_then(|v| v.as_str())
            == Some(tag)
    };
    match store.latest(exec).await? {
        None => Ok(None),
        Some(cp) if started_here(&cp) => Ok(Some(cp)),
        Some(_) => {
            let query = HistoryQuery::default()
                .metadata("parent_checkpoint", tag)
                .limit(1);
            match store.history(exec, query).await?.first() {
                Some(h) => Ok(Some(store.load(&h.id).await?)),
                None => Ok(None),
            }
        }
    }
}

/// Runs the child to its end for the node running in `ctx`: continues the run this step
/// started (or takes its result), or starts one from `input`; raises the child's interrupts
/// as the node's own.
async fn run_child<C: GraphState>(
    child: &CompiledGraph<C>,
    ctx: &NodeContext,
    input: C,
) -> Result<C, BoxError> {
    let exec = format!("{}/{}", ctx.execution_id(), ctx.task_name());
    let Some(store) = ctx.store().cloned() else {
        return match child
            .start_with(input, RunConfig::execution_id(&exec), None, true)
            .await?
        {
            Outcome::Finished(c) => Ok(c),
            Outcome::Interrupted { .. } => {
                Err(format!("subgraph {exec:?} paused, which needs a checkpointer").into())
            }
        };
    };
    let child = child.with_checkpointer(store.clone());
    let tag = ctx.base().map(ToString::to_string).unwrap_or_default();
    let mut config = RunConfig::execution_id(&exec);
    config.parent_checkpoint = Some(tag.clone());
    let mut waiting = match this_steps_run(&store, &exec, &tag).await? {
        Some(cp) => {
            let pending = child.interrupts_at(&cp.id).await?;
            if !pending.is_empty() || paused_at(&cp) {
                Waiting::On(cp.id, pending)
            } else {
                // This step's run: continue it (a finished one returns its result).
                Waiting::from(child.resume_with(&exec, &cp.id, config.clone()).await?)
            }
        }
        None => Waiting::from(child.start_with(input, config.clone(), None, true).await?),
    };
    loop {
        let (checkpoint, interrupts) = match waiting {
            Waiting::Done(c) => return Ok(c),
            Waiting::On(checkpoint, interrupts) => (checkpoint, interrupts),
        };
        let outcome = if interrupts.is_empty() {
            // A static pause: any answer continues the child from it.
            let _: serde_json::Value = ctx.interrupt_keyed(
                &checkpoint.to_string(),
                &serde_json::json!({ "subgraph": exec, "paused_at": checkpoint.to_string() }),
            )?;
            // Resuming from a pause goes past it.
            child
                .resume_with(&exec, &checkpoint, config.clone())
                .await?
        } else {
            let mut answers = BTreeMap::new();
            for i in &interrupts {
                let answer: serde_json::Value = ctx.interrupt_keyed(&i.id, &i.value)?;
                answers.insert(i.id.clone(), answer);
            }
            child
                .resume_with_command_at(config.clone(), &checkpoint, Command::ResumeById(answers))
                .await?
        };
        waiting = Waiting::from(outcome);
    }
}

/// Where the child's run stands for the node.
enum Waiting<C> {
    /// It finished (or paused after its last node): its final state.
    Done(C),
    /// It waits at this checkpoint: for answers to these interrupts, or (none) at a static
    /// pause.
    On(CheckpointId, Vec<Interrupt>),
}

impl<C> From<Outcome<C>> for Waiting<C> {
    fn from(outcome: Outcome<C>) -> Self {
        match outcome {
            Outcome::Finished(c) => Waiting::Done(c),
            Outcome::Interrupted {
                state,
                next,
                interrupts,
                ..
            } if next.is_empty() && interrupts.is_empty() => Waiting::Done(state),
            Outcome::Interrupted {
                checkpoint,
                interrupts,
                ..
            } => Waiting::On(checkpoint, interrupts),
        }
    }
}

/// Whether `cp` records a static pause the run has not gone past, before a node (a pause
/// after the last node ends the run).
fn paused_at(cp: &Checkpoint) -> bool {
    let next_empty = cp
        .metadata
        .get("next")
        .and_then(|n| n.as_array())
        .is_none_or(|n| n.is_empty());
    cp.metadata.get("interrupted") == Some(&serde_json::Value::Bool(true)) && !next_empty
}
