//! The compiled graph: the execution loop, checkpoints, interrupts, resume and streaming.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

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
    entry: String,
    config: CompileConfig,
}

/// Where a run stands between two steps.
struct Cursor<S> {
    state: S,
    /// The node to run next, or [`END`].
    next: String,
    /// The step of the last node that ran (0 before the first).
    step: u64,
    /// The checkpoint holding `state`, if one was saved, and whether it records an interrupt
    /// that was already honoured (resuming from it must not pause again).
    last: Option<(CheckpointId, String, bool)>,
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
        CompiledGraph {
            inner: Arc::new(Inner {
                nodes,
                edges,
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
    /// appended to the same execution. An interrupt recorded on that checkpoint is not repeated.
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
        let cp = self.store()?.load(checkpoint).await?;
        let cursor = self.cursor_from(&cp)?;
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
        let cursor = self.cursor_from(&cp)?;
        self.run_loop(cursor, &RunConfig::execution_id(execution_id), None)
            .await
    }

    /// Saves `state` as a new checkpoint of `checkpoint`'s execution (its parent is the
    /// execution's latest checkpoint) with the same next node(s) as `checkpoint`, and returns its
    /// id; [`CompiledGraph::resume`] from it continues with the new state. An interrupt honoured
    /// at `checkpoint` counts as honoured at the new one too.
    pub async fn update_state(
        &self,
        checkpoint: &CheckpointId,
        state: S,
    ) -> Result<CheckpointId, GraphError> {
        let store = self.store()?;
        let source = store.load(checkpoint).await?;
        let cursor = self.cursor_from(&source)?;
        let interrupted = cursor.last.as_ref().is_some_and(|(_, _, i)| *i);
        let mut cp = Checkpoint::new(&source.execution_id, &source.node_name, &state)?
            .with_metadata("step", cursor.step)
            .with_metadata("next", next_list(&cursor.next))
            .with_metadata("source", "update")
            .with_metadata("updated_from", checkpoint.to_string());
        if interrupted {
            cp = cp.with_metadata("interrupted", true);
        }
        Ok(store.save(cp).await?.id)
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
        let next = match next.as_slice() {
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
            step,
            last: Some((cp.id.clone(), cp.node_name.clone(), interrupted)),
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
                let cursor = self.cursor_from(&cp)?;
                return self.run_loop(cursor, &config, events).await;
            }
        }
        let cursor = Cursor {
            state: input,
            next: self.inner.entry.clone(),
            step: 0,
            last: None,
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
            if cur.next == END {
                if streaming {
                    emit(GraphEvent::Finished {
                        state: cur.state.clone(),
                    })
                    .await;
                }
                return Ok(Outcome::Finished(cur.state));
            }
            let node = cur.next.clone();
            let honoured = cur.last.as_ref().is_some_and(|(_, _, i)| *i);
            if cfg.interrupt_before.contains(&node) && !honoured {
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
                let saved = store.save(cp).await?;
                emit(GraphEvent::CheckpointSaved {
                    id: saved.id.clone(),
                    version: saved.version,
                })
                .await;
                return self.interrupted(saved.id, cur.state, &node, &emit).await;
            }
            if ran >= config.recursion_limit {
                return Err(GraphError::RecursionLimit {
                    limit: config.recursion_limit,
                });
            }
            ran += 1;
            let step = cur.step + 1;
            emit(GraphEvent::NodeStart {
                node: node.clone(),
                step,
            })
            .await;
            let state = self.run_node(&node, cur.state).await?;
            if streaming {
                emit(GraphEvent::NodeEnd {
                    node: node.clone(),
                    step,
                    state: state.clone(),
                })
                .await;
            }
            let next = self.route(&node, &state)?;
            let pause_after = cfg.interrupt_after.contains(&node);
            let pause_before = next != END && cfg.interrupt_before.contains(&next);
            let mut last = None;
            if let Some(store) = &cfg.checkpointer {
                let mut cp = Checkpoint::new(exec, &node, &state)?
                    .with_metadata("step", step)
                    .with_metadata("next", next_list(&next))
                    .with_metadata("source", "loop");
                if pause_after || pause_before {
                    cp = cp.with_metadata("interrupted", true);
                }
                let saved = store.save(cp).await?;
                emit(GraphEvent::CheckpointSaved {
                    id: saved.id.clone(),
                    version: saved.version,
                })
                .await;
                last = Some((saved.id, node.clone(), pause_after || pause_before));
            }
            cur = Cursor {
                state,
                next,
                step,
                last,
            };
            if pause_after || pause_before {
                let id = match &cur.last {
                    Some((id, _, _)) => id.clone(),
                    None => return Err(GraphError::NoCheckpointer),
                };
                return self.interrupted(id, cur.state, &cur.next, &emit).await;
            }
        }
    }

    async fn interrupted<F, Fut>(
        &self,
        checkpoint: CheckpointId,
        state: S,
        next: &str,
        emit: &F,
    ) -> Result<Outcome<S>, GraphError>
    where
        F: Fn(GraphEvent<S>) -> Fut,
        Fut: std::future::Future<Output = ()>,
    {
        let next = next_list(next);
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
                if to == END || self.inner.nodes.contains_key(&to) {
                    Ok(to)
                } else {
                    Err(GraphError::InvalidRoute {
                        from: node.to_owned(),
                        to,
                    })
                }
            }
            None => Err(GraphError::NoOutgoingEdge(node.to_owned())),
        }
    }
}
