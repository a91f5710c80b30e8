//! State snapshots: a run's checkpoint as a person debugging it asks for it (the values, what
//! runs next, what those tasks left behind: results, errors, interrupts waiting for an answer),
//! read from the store alone, for the latest checkpoint or any earlier one.

use std::time::SystemTime;

use super::context::StepRecord;
use super::{CompiledGraph, GraphError, GraphState, Interrupt};
use crate::checkpoint::{Checkpoint, CheckpointId, Metadata};
use crate::store::HistoryQuery;

/// One checkpoint of a graph's execution, as [`CompiledGraph::get_state`] and
/// [`CompiledGraph::get_state_history`] return it.
#[derive(Debug, Clone, PartialEq)]
pub struct StateSnapshot<S> {
    /// The state (the graph's channels' values) at this checkpoint.
    pub values: S,
    /// The node(s) that run next from here (empty: the run ended here).
    pub next: Vec<String>,
    /// What each of those nodes left at this checkpoint: a recorded result (a fan-out branch
    /// that finished), the error it last failed with, the interrupts it waits on.
    pub tasks: Vec<PendingTask>,
    /// Every interrupt raised here and not answered yet, in (node, index) order: answer them
    /// with [`CompiledGraph::resume_with_command`].
    pub interrupts: Vec<Interrupt>,
    /// This checkpoint.
    pub checkpoint: CheckpointId,
    /// The checkpoint before it on its branch (or the fork source).
    pub parent: Option<CheckpointId>,
    /// The node that saved it ([`super::INPUT`] for a run's input).
    pub node: String,
    /// Its metadata (`step`, `next`, `source`, `run_id`, ... and the caller's own keys).
    pub metadata: Metadata,
    /// When it was saved.
    pub created_at: SystemTime,
}

/// A node that runs next from a checkpoint, with what it left there.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PendingTask {
    /// The node.
    pub node: String,
    /// The task's name: the node, or for a send `node[index]` (its place among the step's
    /// tasks), as errors and interrupts name it.
    pub task: String,
    /// A fan-out branch or a task whose result is recorded: a resume does not run it again.
    pub finished: bool,
    /// The error its last attempt from this checkpoint failed with (retries used up), with its
    /// causes, if it failed.
    pub error: Option<String>,
    /// The interrupts it raised here that wait for an answer.
    pub interrupts: Vec<Interrupt>,
}

impl<S: GraphState> CompiledGraph<S> {
    /// The snapshot of `execution_id`'s latest checkpoint (`None`: it has none).
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use std::sync::Arc;
    /// use ckpt::graph::{CompileConfig, RunConfig, StateGraph, END};
    /// use ckpt::{CheckpointStore, Store};
    ///
    /// let store: Arc<dyn CheckpointStore> = Arc::new(Store::memory());
    /// let mut g = StateGraph::<u32>::new();
    /// g.add_node("double", |n: u32| async move { Ok::<_, std::io::Error>(n * 2) });
    /// g.add_edge("double", END);
    /// g.set_entry_point("double");
    /// let app = g.compile(CompileConfig::default().checkpointer(store))?;
    /// app.invoke(21, RunConfig::execution_id("snap")).await?;
    ///
    /// let now = app.get_state("snap").await?.expect("saved");
    /// assert_eq!((now.values, now.node.as_str()), (42, "double"));
    /// assert!(now.next.is_empty() && now.tasks.is_empty());
    /// let history = app.get_state_history("snap", Default::default()).await?;
    /// assert_eq!(history.iter().map(|s| s.values).collect::<Vec<_>>(), [42, 21]);
    /// assert_eq!(history[1].next, ["double"]);
    /// # Ok(()) }
    /// ```
    pub async fn get_state(
        &self,
        execution_id: &str,
    ) -> Result<Option<StateSnapshot<S>>, GraphError> {
        match self.store()?.latest(execution_id).await? {
            Some(cp) => Ok(Some(self.snapshot_of(cp).await?)),
            None => Ok(None),
        }
    }

    /// The snapshot of one checkpoint.
    pub async fn get_state_at(
        &self,
        checkpoint: &CheckpointId,
    ) -> Result<StateSnapshot<S>, GraphError> {
        let cp = self.store()?.load(checkpoint).await?;
        self.snapshot_of(cp).await
    }

    /// Snapshots of `execution_id`'s checkpoints, newest first, filtered as the store's
    /// history is ([`HistoryQuery`]: before a version, a limit, metadata equalities, a node).
    /// Every branch's checkpoints are listed, by version.
    pub async fn get_state_history(
        &self,
        execution_id: &str,
        query: HistoryQuery,
    ) -> Result<Vec<StateSnapshot<S>>, GraphError> {
        let store = self.store()?;
        let headers = store.history(execution_id, query).await?;
        let mut out = Vec::with_capacity(headers.len());
        for header in headers {
            let cp = store.load(&header.id).await?;
            out.push(self.snapshot_of(cp).await?);
        }
        Ok(out)
    }

    /// Reads what a checkpoint's step left (its writes) into a snapshot.
    async fn snapshot_of(&self, cp: Checkpoint) -> Result<StateSnapshot<S>, GraphError> {
        let cp = self.resolve(cp).await?;
        let store = self.store()?;
        let record = StepRecord::from_writes(store.writes(&cp.id).await?);
        let interrupts = record.pending_interrupts();
        let next: Vec<String> = match cp.metadata.get("next") {
            Some(v) => {
                serde_json::from_value(v.clone()).map_err(|_| GraphError::InvalidCheckpoint {
                    id: cp.id.clone(),
                    reason: "its \"next\" metadata is not a list of node names".into(),
                })?
            }
            None => {
                return Err(GraphError::InvalidCheckpoint {
                    id: cp.id.clone(),
                    reason: "its metadata has no \"next\" list; it was not saved by a graph".into(),
                })
            }
        };
        // A step of several tasks lists each (sends are keyed by their place).
        let keyed: Vec<(String, String)> = match self.cursor_from(&cp).ok().and_then(|c| c.tasks) {
            Some(p) => p
                .tasks
                .iter()
                .map(|t| (t.node.clone(), t.key.clone()))
                .collect(),
            None => next.iter().map(|n| (n.clone(), n.clone())).collect(),
        };
        let tasks = keyed
            .into_iter()
            .map(|(node, task)| PendingTask {
                finished: record.branches.contains_key(&node) || record.tasks.contains_key(&task),
                error: record.errors.get(&task).cloned(),
                interrupts: interrupts
                    .iter()
                    .filter(|i| i.node == task)
                    .cloned()
                    .collect(),
                node,
                task,
            })
            .collect();
        Ok(StateSnapshot {
            values: cp.state()?,
            next,
            tasks,
            interrupts,
            parent: cp.parent.clone(),
            node: cp.node_name.clone(),
            created_at: cp.timestamp,
            metadata: cp.metadata.clone(),
            checkpoint: cp.id,
        })
    }
}
