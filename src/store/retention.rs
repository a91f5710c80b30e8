//! Retention: which checkpoints a [`RetentionPolicy`] lets go, [`Store::prune`] to delete them,
//! and [`Store::spawn_retention`] to do it (and gc) in the background.
//!
//! Two kinds of checkpoint are never pruned, whatever the policy says: an execution's latest
//! checkpoint (runs resume from it) and one whose metadata has `"interrupted": true` (a run is
//! waiting on it). An untouched execution is dropped whole (cleared) only if its latest
//! checkpoint is not interrupted, and only if nothing was saved to it between the plan and the
//! clear. What remains loads, lists and resumes as before: pruning only appends delete and clear
//! events, and gc later reclaims their space.

use std::time::{Duration, SystemTime};

use super::trace::op_span;
use super::write::Marker;
use super::Store;
use crate::checkpoint::CheckpointHeader;
use crate::error::{Error, Result};
use crate::HistoryQuery;
use tracing::field::Empty;

/// What to keep. With no rule set, nothing is pruned.
///
/// ```
/// use std::time::Duration;
/// use ckpt::RetentionPolicy;
/// // Keep the newest 20 checkpoints of each execution (older ones only once a day old), and drop
/// // executions nobody saved to for a week.
/// let policy = RetentionPolicy::default()
///     .keep_latest(20)
///     .older_than(Duration::from_secs(86_400))
///     .drop_untouched(Duration::from_secs(7 * 86_400));
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RetentionPolicy {
    keep_latest: Option<usize>,
    older_than: Option<Duration>,
    drop_untouched: Option<Duration>,
}

impl RetentionPolicy {
    /// Keep the newest `n` live checkpoints of each execution (`n` must be at least 1).
    pub fn keep_latest(mut self, n: usize) -> Self {
        self.keep_latest = Some(n);
        self
    }

    /// Only prune checkpoints saved longer ago than `age` (with [`Self::keep_latest`]: only those
    /// both beyond the newest `n` and older than `age`).
    pub fn older_than(mut self, age: Duration) -> Self {
        self.older_than = Some(age);
        self
    }

    /// Drop (clear) every execution whose latest checkpoint is older than `age`, unless that
    /// checkpoint is interrupted.
    pub fn drop_untouched(mut self, age: Duration) -> Self {
        self.drop_untouched = Some(age);
        self
    }

    fn check(&self) -> Result<()> {
        if self.keep_latest == Some(0) {
            return Err(Error::InvalidInput(
                "keep_latest(0) would delete the latest checkpoint, which is never pruned; \
                 keep at least 1, or use drop_untouched to drop whole executions"
                    .into(),
            ));
        }
        Ok(())
    }

    fn prunes_checkpoints(&self) -> bool {
        self.keep_latest.is_some() || self.older_than.is_some()
    }
}

/// What a policy does to one execution (see [`Store::retention_plan`]).
#[derive(Debug, Clone, PartialEq)]
pub struct ExecutionPlan {
    /// The execution.
    pub execution_id: String,
    /// Whether the whole execution is dropped (cleared).
    pub drop: bool,
    /// The checkpoints to delete, oldest first (empty when dropped).
    pub delete: Vec<CheckpointHeader>,
    /// Live checkpoints left afterwards.
    pub kept: usize,
    /// Versions the policy matched but that are kept because they are interrupted.
    pub kept_interrupted: Vec<u64>,
    /// The newest version when planned: a drop applies only if it is still the newest.
    latest_version: u64,
}

/// What [`Store::prune`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PruneReport {
    /// Checkpoints deleted.
    pub checkpoints_deleted: u64,
    /// Executions dropped whole.
    pub executions_dropped: u64,
    /// Executions the policy would have dropped, left alone because a save arrived meanwhile.
    pub executions_spared: u64,
}

fn interrupted(h: &CheckpointHeader) -> bool {
    h.metadata.get("interrupted") == Some(&serde_json::Value::Bool(true))
}

fn older(h: &CheckpointHeader, age: Duration, now: SystemTime) -> bool {
    now.duration_since(h.timestamp).is_ok_and(|a| a >= age)
}

/// The plan for one execution, from its live headers newest first (non-empty).
fn plan_execution(
    execution_id: &str,
    headers: Vec<CheckpointHeader>,
    policy: &RetentionPolicy,
    now: SystemTime,
) -> ExecutionPlan {
    let latest = &headers[0];
    let latest_version = latest.version;
    let total = headers.len();
    if policy
        .drop_untouched
        .is_some_and(|age| older(latest, age, now) && !interrupted(latest))
    {
        return ExecutionPlan {
            execution_id: execution_id.to_owned(),
            drop: true,
            delete: Vec::new(),
            kept: 0,
            kept_interrupted: Vec::new(),
            latest_version,
        };
    }
    let mut delete = Vec::new();
    let mut kept_interrupted = Vec::new();
    if policy.prunes_checkpoints() {
        for (i, h) in headers.into_iter().enumerate().skip(1) {
            let beyond = policy.keep_latest.is_none_or(|n| i >= n);
            let old = policy.older_than.is_none_or(|age| older(&h, age, now));
            if !(beyond && old) {
                continue;
            }
            if interrupted(&h) {
                kept_interrupted.push(h.version);
            } else {
                delete.push(h);
            }
        }
    }
    delete.reverse();
    kept_interrupted.reverse();
    ExecutionPlan {
        execution_id: execution_id.to_owned(),
        drop: false,
        kept: total - delete.len(),
        delete,
        kept_interrupted,
        latest_version,
    }
}

impl Store {
    /// What `policy` would prune now, per execution with live checkpoints (by id), changing
    /// nothing: a dry run of [`Store::prune`].
    pub async fn retention_plan(&self, policy: &RetentionPolicy) -> Result<Vec<ExecutionPlan>> {
        let span = op_span!("ckpt.retention_plan", self; count = Empty);
        let op = async { self.retention_plan_at(policy, SystemTime::now()).await };
        let plans: Vec<_> = self.traced(&span, op).await?;
        span.record("count", plans.len());
        Ok(plans)
    }

    /// [`Store::retention_plan`] as of `now` (ages are measured from it).
    pub async fn retention_plan_at(
        &self,
        policy: &RetentionPolicy,
        now: SystemTime,
    ) -> Result<Vec<ExecutionPlan>> {
        let span = op_span!("ckpt.retention_plan_at", self; count = Empty);
        let op = async {
            policy.check()?;
            let mut logs = self.execution_logs().await?;
            logs.sort();
            let mut plans = Vec::new();
            for exec in logs {
                let headers = self.history(&exec, HistoryQuery::default()).await?;
                if !headers.is_empty() {
                    plans.push(plan_execution(&exec, headers, policy, now));
                }
            }
            Ok(plans)
        };
        let plans: Vec<_> = self.traced(&span, op).await?;
        span.record("count", plans.len());
        Ok(plans)
    }

    /// The plan for one execution, `None` when it has no live checkpoints.
    pub async fn retention_plan_for(
        &self,
        execution_id: &str,
        policy: &RetentionPolicy,
    ) -> Result<Option<ExecutionPlan>> {
        let span = op_span!("ckpt.retention_plan_for", self; execution_id, count = Empty);
        let op = async {
            policy.check()?;
            let headers = self.history(execution_id, HistoryQuery::default()).await?;
            Ok((!headers.is_empty())
                .then(|| plan_execution(execution_id, headers, policy, SystemTime::now())))
        };
        let plan: Option<ExecutionPlan> = self.traced(&span, op).await?;
        if let Some(p) = &plan {
            span.record("count", p.delete.len());
        }
        Ok(plan)
    }

    /// Applies `policy`: deletes the checkpoints it lets go and drops untouched executions (see
    /// [`RetentionPolicy`] for what is never pruned). Space is reclaimed by the next
    /// [`Store::gc`].
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// use ckpt::{Checkpoint, RetentionPolicy, Store};
    /// let store = Store::memory();
    /// for step in 0..5 {
    ///     store.save(Checkpoint::new("run-1", "step", &serde_json::json!({ "step": step }))?).await?;
    /// }
    /// let report = store.prune(&RetentionPolicy::default().keep_latest(2)).await?;
    /// assert_eq!(report.checkpoints_deleted, 3);
    /// assert_eq!(store.list("run-1").await?.len(), 2);
    /// # Ok::<(), ckpt::Error>(())
    /// # }).unwrap();
    /// ```
    pub async fn prune(&self, policy: &RetentionPolicy) -> Result<PruneReport> {
        let span = op_span!("ckpt.prune", self; count = Empty, executions_dropped = Empty);
        let op = async {
            let plans = self.retention_plan(policy).await?;
            self.apply_retention(&plans).await
        };
        let report: PruneReport = self.traced(&span, op).await?;
        span.record("count", report.checkpoints_deleted);
        span.record("executions_dropped", report.executions_dropped);
        Ok(report)
    }

    /// Carries out plans made by [`Store::retention_plan`].
    pub async fn apply_retention(&self, plans: &[ExecutionPlan]) -> Result<PruneReport> {
        let span =
            op_span!("ckpt.apply_retention", self; count = Empty, executions_dropped = Empty);
        let op = async {
            let mut report = PruneReport::default();
            for plan in plans {
                if plan.drop {
                    let marker = Marker::ClearIfLatest(plan.latest_version);
                    if self.append_marker(&plan.execution_id, marker).await? {
                        report.executions_dropped += 1;
                    } else {
                        report.executions_spared += 1;
                    }
                    continue;
                }
                for h in &plan.delete {
                    match self.delete(&h.id).await {
                        Ok(()) => report.checkpoints_deleted += 1,
                        // Deleted meanwhile by someone else: the goal is reached.
                        Err(e) if e.is_not_found() => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            Ok(report)
        };
        let report: PruneReport = self.traced(&span, op).await?;
        span.record("count", report.checkpoints_deleted);
        span.record("executions_dropped", report.executions_dropped);
        Ok(report)
    }

    /// Prunes with `policy`, then runs gc, every `every`, until the returned handle is dropped
    /// (or [`RetentionTask::stop`]ped). Needs a tokio runtime. A failed round is reported to the
    /// handle ([`RetentionTask::last_error`]) and retried at the next.
    pub fn spawn_retention(&self, policy: RetentionPolicy, every: Duration) -> RetentionTask {
        let store = self.clone();
        let last_error = std::sync::Arc::new(std::sync::Mutex::new(None));
        let errors = last_error.clone();
        let handle = tokio::spawn(async move {
            let mut ticker = tokio::time::interval(every);
            ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                ticker.tick().await;
                let round = async {
                    store.prune(&policy).await?;
                    match store.gc().await {
                        // Another process is collecting: its gc does the job.
                        Ok(_) | Err(Error::Busy { .. }) => Ok(()),
                        Err(e) => Err(e),
                    }
                };
                let outcome = round.await.err().map(|e| e.to_string());
                if let Ok(mut slot) = errors.lock() {
                    *slot = outcome;
                }
            }
        });
        RetentionTask { handle, last_error }
    }
}

/// A background retention task ([`Store::spawn_retention`]); stops when dropped.
#[derive(Debug)]
pub struct RetentionTask {
    handle: tokio::task::JoinHandle<()>,
    last_error: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

impl RetentionTask {
    /// The error of the last round, if it failed.
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    /// Stops the task.
    pub fn stop(self) {}
}

impl Drop for RetentionTask {
    fn drop(&mut self) {
        self.handle.abort();
    }
}
