//! The compiled graph: the execution loop, checkpoints, interrupts, resume and streaming.

use std::collections::{BTreeMap, BTreeSet};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::join_all;
use futures_util::Stream;
use tokio::sync::mpsc;

use super::{
    CompileConfig, Edge, GraphError, GraphEvent, GraphState, NodeFn, Outcome, RetryPolicy,
    RunConfig, END, INPUT,
};
use crate::checkpoint::{Checkpoint, CheckpointId};
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
    nodes: BTreeMap<String, (NodeFn<S>, RetryPolicy)>,
    edges: BTreeMap<String, Edge<S>>,
    /// Every node that is a branch of a fan-out.
    branches: BTreeSet<String>,
    entry: String,
    config: CompileConfig,
}

/// Where a run stands between two steps.
struct Cursor<S> {
    state: S,
    /// The node to run next, or [`END`] (ignored when `fan` is set).
    next: String,
    /// When the next step is the fan-out leaving this node: its branches run next.
    fan: Option<String>,
    /// The step of the last node that ran (0 before the first).
    step: u64,
    /// The checkpoint holding `state`, if one was saved, and whether it records an interrupt
    /// that was already honoured (resuming from it must not pause again).
    last: Option<(CheckpointId, String, bool)>,
    /// The checkpoint a time travel resumed from, when it is not the execution's latest: the
    /// run's first checkpoint names it as its parent, so the run is a new branch from there.
    branch_from: Option<CheckpointId>,
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
        nodes: BTreeMap<String, (NodeFn<S>, RetryPolicy)>,
        edges: BTreeMap<String, Edge<S>>,
        entry: String,
        config: CompileConfig,
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
            }),
        }
    }

    fn store(&self) -> Result<&Arc<dyn CheckpointStore>, GraphError> {
        self.inner
            .config
            .checkpointer
            .as_ref()
            .ok_or(GraphError::NoCheckpointer)
    }

    /// Runs the graph from its entry point with `input`, until [`super::END`] or an interrupt.
    ///
    /// With a checkpointer, an execution id that already has checkpoints is **continued** from
    /// its latest checkpoint instead (like [`CompiledGraph::resume_latest`]; `input` is then
    /// ignored): invoking again after a crash picks up where the run stopped, and invoking a
    /// finished execution returns [`Outcome::Finished`] with its final state without running
    /// anything. Use a new execution id for a new run.
    pub async fn invoke(&self, input: S, config: RunConfig) -> Result<Outcome<S>, GraphError> {
        self.invoke_with(input, config, None).await
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
        let latest = store.latest(execution_id).await?.map(|c| c.version);
        let branches = !is_pending_write(&given) && latest != Some(given.version);
        let cp = self.resolve(given).await?;
        let mut cursor = self.cursor_from(&cp)?;
        if branches {
            cursor.branch_from = Some(cp.id.clone());
        }
        self.run_loop(cursor, &config, None).await
    }

    /// Crash recovery: continues execution `execution_id` from its latest checkpoint
    /// ([`GraphError::NoCheckpoint`] if it has none).
    pub async fn resume_latest(&self, execution_id: &str) -> Result<Outcome<S>, GraphError> {
        let cp = self
            .store()?
            .latest(execution_id)
            .await?
            .ok_or_else(|| GraphError::NoCheckpoint(execution_id.to_owned()))?;
        let cp = self.resolve(cp).await?;
        let cursor = self.cursor_from(&cp)?;
        self.run_loop(cursor, &RunConfig::execution_id(execution_id), None)
            .await
    }

    /// Saves `state` as a new checkpoint of `checkpoint`'s execution, a child of `checkpoint`
    /// (of its fan-out step's checkpoint for a pending write; a new branch when it is not the
    /// latest), with the same next node(s) as `checkpoint`, and returns its id; [`CompiledGraph::resume`] from it continues with the new state. An interrupt honoured
    /// at `checkpoint` counts as honoured at the new one too.
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
        let mut cp = Checkpoint::new(&source.execution_id, &source.node_name, &state)?
            .with_metadata("step", cursor.step)
            .with_metadata("next", self.next_names(&cursor))
            .with_metadata("source", "update")
            .with_metadata("updated_from", checkpoint.to_string());
        if interrupted {
            cp = cp.with_metadata("interrupted", true);
        }
        Ok(store.save_with_parent(cp, &source.id).await?.id)
    }

    /// A pending write (a branch's result, saved during a fan-out step) is not a run position:
    /// the position is the checkpoint the fan-out step started from.
    async fn resolve(&self, cp: Checkpoint) -> Result<Checkpoint, GraphError> {
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

    /// The node(s) that run after `cur`, as a checkpoint's `next` metadata lists them.
    fn next_names(&self, cur: &Cursor<S>) -> Vec<String> {
        match &cur.fan {
            Some(from) => self.fan_branches(from),
            None => next_list(&cur.next),
        }
    }

    fn fan_branches(&self, from: &str) -> Vec<String> {
        match self.inner.edges.get(from) {
            Some(Edge::FanOut { branches, .. }) => branches.clone(),
            _ => Vec::new(),
        }
    }

    /// The branch results of the fan-out from `from` that started at checkpoint `base`, saved as
    /// pending writes after it (the first one of each branch).
    async fn pending_writes(
        &self,
        store: &Arc<dyn CheckpointStore>,
        exec: &str,
        from: &str,
        base: &CheckpointId,
    ) -> Result<BTreeMap<String, S>, GraphError> {
        let branches = self.fan_branches(from);
        let mut done = BTreeMap::new();
        for cp in store.list(exec).await? {
            if cp.version <= base.version()
                || !is_pending_write(&cp)
                || cp.metadata.get("fan_out_from").and_then(|v| v.as_str()) != Some(from)
                || cp
                    .metadata
                    .get("fan_out_base")
                    .and_then(serde_json::Value::as_u64)
                    != Some(base.version())
            {
                continue;
            }
            let Some(branch) = cp.metadata.get("branch").and_then(|v| v.as_str()) else {
                continue;
            };
            if branches.iter().any(|b| b == branch) && !done.contains_key(branch) {
                done.insert(branch.to_owned(), cp.state()?);
            }
        }
        Ok(done)
    }

    /// The run position a checkpoint records.
    fn cursor_from(&self, cp: &Checkpoint) -> Result<Cursor<S>, GraphError> {
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
        let step = cp
            .metadata
            .get("step")
            .and_then(serde_json::Value::as_u64)
            .unwrap_or(0);
        let interrupted = cp.metadata.get("interrupted") == Some(&serde_json::Value::Bool(true));
        Ok(Cursor {
            state: cp.state()?,
            next,
            fan,
            step,
            last: Some((cp.id.clone(), cp.node_name.clone(), interrupted)),
            branch_from: None,
        })
    }

    async fn invoke_with(
        &self,
        input: S,
        config: RunConfig,
        events: Option<EventTx<S>>,
    ) -> Result<Outcome<S>, GraphError> {
        if let Some(store) = &self.inner.config.checkpointer {
            if let Some(cp) = store.latest(&config.execution_id).await? {
                let cp = self.resolve(cp).await?;
                let cursor = self.cursor_from(&cp)?;
                return self.run_loop(cursor, &config, events).await;
            }
        }
        let cursor = Cursor {
            state: input,
            next: self.inner.entry.clone(),
            fan: None,
            step: 0,
            last: None,
            branch_from: None,
        };
        self.run_loop(cursor, &config, events).await
    }

    async fn run_loop(
        &self,
        mut cur: Cursor<S>,
        config: &RunConfig,
        events: Option<EventTx<S>>,
    ) -> Result<Outcome<S>, GraphError> {
        let emit = |ev: GraphEvent<S>| {
            let tx = events.clone();
            async move {
                if let Some(tx) = tx {
                    // A dropped stream does not stop the run.
                    let _ = tx.send(Ok(ev)).await;
                }
            }
        };
        let streaming = events.is_some();
        let cfg = &self.inner.config;
        let exec = config.execution_id.as_str();
        let mut ran = 0usize;
        loop {
            if cur.fan.is_none() && cur.next == END {
                if streaming {
                    emit(GraphEvent::Finished {
                        state: cur.state.clone(),
                    })
                    .await;
                }
                return Ok(Outcome::Finished(cur.state));
            }
            let node = cur.fan.clone().unwrap_or_else(|| cur.next.clone());
            let honoured = cur.last.as_ref().is_some_and(|(_, _, i)| *i);
            // Interrupts on fan-out branches are refused at compile time.
            if cur.fan.is_none() && cfg.interrupt_before.contains(&node) && !honoured {
                // Make sure a checkpoint records the pause (and that it was honoured).
                let store = self.store()?;
                let (node_name, source) = match &cur.last {
                    Some((_, name, _)) => (name.clone(), "interrupt"),
                    None => (INPUT.to_owned(), "input"),
                };
                let cp = Checkpoint::new(exec, &node_name, &cur.state)?
                    .with_metadata("step", cur.step)
                    .with_metadata("next", next_list(&node))
                    .with_metadata("source", source)
                    .with_metadata("interrupted", true);
                let saved = save_from(store, cp, cur.branch_from.take()).await?;
                emit(GraphEvent::CheckpointSaved {
                    id: saved.id.clone(),
                    version: saved.version,
                })
                .await;
                return self
                    .interrupted(saved.id, cur.state, next_list(&node), &emit)
                    .await;
            }
            if ran >= config.recursion_limit {
                return Err(GraphError::RecursionLimit {
                    limit: config.recursion_limit,
                });
            }
            let resuming = ran == 0;
            ran += 1;
            let step = cur.step + 1;
            let (state, next, source, pause_after) = if cur.fan.is_some() {
                // `node` is the node the fan-out leaves from; its branches run now.
                let (branches, join, merge) = match self.inner.edges.get(&node) {
                    Some(Edge::FanOut {
                        branches,
                        join,
                        merge,
                    }) => (branches, join, merge),
                    _ => return Err(GraphError::NoOutgoingEdge(node)),
                };
                let base = cur.last.as_ref().map(|(id, _, _)| id.clone());
                // Pending writes are saved in parallel, each on the newest: a resumed run whose
                // first step is a fan-out does not record its branch point (yet).
                cur.branch_from = None;
                let mut done = BTreeMap::new();
                if resuming {
                    if let (Some(store), Some(base)) = (&cfg.checkpointer, &base) {
                        done = self.pending_writes(store, exec, &node, base).await?;
                    }
                }
                let runs = branches
                    .iter()
                    .filter(|b| !done.contains_key(*b))
                    .map(|branch| {
                        let input = cur.state.clone();
                        let (emit, base, node, join, events) = (&emit, &base, &node, join, &events);
                        async move {
                            let out = self.run_node_reported(branch, step, input, events).await?;
                            if let (Some(store), Some(base)) = (&cfg.checkpointer, base) {
                                // The pending write: this branch is not run again on resume.
                                let cp = Checkpoint::new(exec, branch, &out)?
                                    .with_metadata("step", step)
                                    .with_metadata("next", next_list(join))
                                    .with_metadata("source", "pending_write")
                                    .with_metadata("pending_write", true)
                                    .with_metadata("branch", branch.as_str())
                                    .with_metadata("fan_out_from", node.as_str())
                                    .with_metadata("fan_out_base", base.version());
                                let saved = store.save(cp).await?;
                                emit(GraphEvent::CheckpointSaved {
                                    id: saved.id.clone(),
                                    version: saved.version,
                                })
                                .await;
                            }
                            Ok::<_, GraphError>((branch.clone(), out))
                        }
                    });
                // Every branch runs to its end (and is saved) even when another fails.
                let mut failure = None;
                for res in join_all(runs).await {
                    match res {
                        Ok((branch, out)) => {
                            done.insert(branch, out);
                        }
                        Err(e) => {
                            failure.get_or_insert(e);
                        }
                    }
                }
                if let Some(e) = failure {
                    return Err(e);
                }
                let results = branches
                    .iter()
                    .filter_map(|b| done.remove(b).map(|s| (b.clone(), s)))
                    .collect();
                let merged = merge(cur.state, results);
                (merged, join.clone(), "join", false)
            } else {
                let state = self
                    .run_node_reported(&node, step, cur.state, &events)
                    .await?;
                let next = match self.inner.edges.get(&node) {
                    Some(Edge::FanOut { .. }) => END.to_owned(),
                    _ => self.route(&node, &state)?,
                };
                (state, next, "loop", cfg.interrupt_after.contains(&node))
            };
            let fan = if cur.fan.is_none()
                && matches!(self.inner.edges.get(&node), Some(Edge::FanOut { .. }))
            {
                Some(node.clone())
            } else {
                None
            };
            let next_cur = Cursor {
                state,
                next,
                fan,
                step,
                last: None,
                branch_from: cur.branch_from.take(),
            };
            let next_names = self.next_names(&next_cur);
            let pause_before = next_cur.fan.is_none()
                && next_cur.next != END
                && cfg.interrupt_before.contains(&next_cur.next);
            cur = next_cur;
            if let Some(store) = &cfg.checkpointer {
                let mut cp = Checkpoint::new(exec, &node, &cur.state)?
                    .with_metadata("step", step)
                    .with_metadata("next", next_names.clone())
                    .with_metadata("source", source);
                if pause_after || pause_before {
                    cp = cp.with_metadata("interrupted", true);
                }
                let saved = save_from(store, cp, cur.branch_from.take()).await?;
                emit(GraphEvent::CheckpointSaved {
                    id: saved.id.clone(),
                    version: saved.version,
                })
                .await;
                cur.last = Some((saved.id, node.clone(), pause_after || pause_before));
            }
            if pause_after || pause_before {
                let id = match &cur.last {
                    Some((id, _, _)) => id.clone(),
                    None => return Err(GraphError::NoCheckpointer),
                };
                return self.interrupted(id, cur.state, next_names, &emit).await;
            }
        }
    }

    async fn interrupted<F, Fut>(
        &self,
        checkpoint: CheckpointId,
        state: S,
        next: Vec<String>,
        emit: &F,
    ) -> Result<Outcome<S>, GraphError>
    where
        F: Fn(GraphEvent<S>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        emit(GraphEvent::Interrupted {
            checkpoint: checkpoint.clone(),
            next: next.clone(),
        })
        .await;
        Ok(Outcome::Interrupted {
            checkpoint,
            state,
            next,
        })
    }

    /// Runs one node, reporting its start and (with the state it returned) its end to a stream.
    async fn run_node_reported(
        &self,
        node: &str,
        step: u64,
        state: S,
        events: &Option<EventTx<S>>,
    ) -> Result<S, GraphError> {
        let Some(tx) = events else {
            return self.run_node(node, state).await;
        };
        // A dropped stream does not stop the run.
        let _ = tx
            .send(Ok(GraphEvent::NodeStart {
                node: node.to_owned(),
                step,
            }))
            .await;
        let out = self.run_node(node, state).await?;
        let _ = tx
            .send(Ok(GraphEvent::NodeEnd {
                node: node.to_owned(),
                step,
                state: out.clone(),
            }))
            .await;
        Ok(out)
    }

    /// Runs one node with its retry policy.
    async fn run_node(&self, node: &str, state: S) -> Result<S, GraphError> {
        let (f, retry) = self
            .inner
            .nodes
            .get(node)
            .ok_or_else(|| GraphError::UnknownNode {
                node: node.to_owned(),
                context: "the run".into(),
            })?;
        let mut attempt = 1;
        loop {
            match f(state.clone()).await {
                Ok(s) => return Ok(s),
                Err(source) if attempt >= retry.attempts() => {
                    return Err(GraphError::Node {
                        node: node.to_owned(),
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

    /// The node after `node`, given the state it returned.
    fn route(&self, node: &str, state: &S) -> Result<String, GraphError> {
        match self.inner.edges.get(node) {
            Some(Edge::To(to)) => Ok(to.clone()),
            Some(Edge::Conditional(f)) => {
                let to = f(state);
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
            Some(Edge::FanOut { .. }) | None => Err(GraphError::NoOutgoingEdge(node.to_owned())),
        }
    }
}

/// Saves `cp`, a child of `parent` when one is given (the first save of a run that branches).
async fn save_from(
    store: &Arc<dyn CheckpointStore>,
    cp: Checkpoint,
    parent: Option<CheckpointId>,
) -> crate::Result<Checkpoint> {
    match parent {
        Some(parent) => store.save_with_parent(cp, &parent).await,
        None => store.save(cp).await,
    }
}
