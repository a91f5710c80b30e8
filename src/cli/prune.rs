//! `ckpt prune`: retention. Deletes the live checkpoints beyond the newest N of an execution
//! and/or older than a duration, never the latest one and never one a run is waiting on.

use std::time::Duration;

use clap::{ArgGroup, Args};
use serde::Serialize;

use ckpt::backend::retry::parse_duration;
use ckpt::{ExecutionPlan, RetentionPolicy};

use super::delete::{confirm, open_store};
use super::fmt;
use super::{say, CliResult, Context, Failure, Global};

/// Options of `ckpt prune`.
///
/// A checkpoint is deleted when it matches the given rules: with --keep-latest N, when it is
/// not among the newest N live checkpoints of its execution; with --older-than DURATION, when
/// it was saved longer than DURATION ago; with both, only when both hold. Two kinds are never
/// deleted, whatever the rules say: the latest checkpoint of an execution (runs resume from
/// it), and a checkpoint whose metadata has "interrupted": true (a run is waiting on it).
#[derive(Debug, Args)]
#[command(
    after_help = "A checkpoint is deleted when it matches the given rules: with --keep-latest N, when it is not among the newest N live checkpoints of its execution; with --older-than DURATION, when it was saved longer than DURATION ago; with both, only when both hold. Two kinds are never deleted, whatever the rules say: the latest checkpoint of an execution (runs resume from it), and a checkpoint whose metadata has \"interrupted\": true (a run is waiting on it)."
)]
#[command(group(ArgGroup::new("target").required(true).args(["exec", "all"])))]
#[command(group(ArgGroup::new("rule").required(true).multiple(true).args(["keep_latest", "older_than", "drop_untouched"])))]
pub struct PruneArgs {
    /// The execution to prune
    #[arg(value_name = "EXEC")]
    pub exec: Option<String>,
    /// Prune every execution in the store
    #[arg(long)]
    pub all: bool,
    /// Keep the newest N live checkpoints of each execution (at least 1 is always kept: the
    /// latest)
    #[arg(long, value_name = "N")]
    pub keep_latest: Option<usize>,
    /// Delete checkpoints saved longer ago than this: a number and a unit, s (seconds),
    /// m (minutes), h (hours) or d (days), e.g. 30s, 15m, 12h, 7d
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub older_than: Option<Duration>,
    /// Drop (clear) whole executions whose latest checkpoint is older than this, unless that
    /// checkpoint is interrupted (same units as --older-than)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub drop_untouched: Option<Duration>,
    /// List what would be deleted, and change nothing (no confirmation needed)
    #[arg(long)]
    pub dry_run: bool,
    /// Delete without asking. Required when stdin is not a terminal (scripts, pipes) unless
    /// --dry-run; on a terminal, without it ckpt lists what will go and asks [y/N]
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the result as one JSON document: {"dry_run": bool, "deleted_total": N,
    /// "executions": [{"execution", "dropped": bool, "deleted": [versions], "kept": N,
    /// "kept_interrupted": [versions]}]}
    #[arg(long)]
    pub json: bool,
}

/// What happens to one execution.
#[derive(Debug, Serialize)]
struct ExecPlan {
    execution: String,
    /// Whether the whole execution is dropped (--drop-untouched).
    dropped: bool,
    /// Versions deleted (or, with --dry-run, that would be), oldest first.
    deleted: Vec<u64>,
    /// Live checkpoints left afterwards.
    kept: usize,
    /// Versions the rules matched but that were kept because their metadata says
    /// `"interrupted": true`.
    kept_interrupted: Vec<u64>,
}

impl ExecPlan {
    fn of(plan: &ExecutionPlan) -> Self {
        ExecPlan {
            execution: plan.execution_id.clone(),
            dropped: plan.drop,
            deleted: plan.delete.iter().map(|h| h.version).collect(),
            kept: plan.kept,
            kept_interrupted: plan.kept_interrupted.clone(),
        }
    }
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    dry_run: bool,
    deleted_total: usize,
    executions: Vec<ExecPlan>,
}

fn policy(args: &PruneArgs) -> RetentionPolicy {
    let mut policy = RetentionPolicy::default();
    if let Some(n) = args.keep_latest {
        policy = policy.keep_latest(n);
    }
    if let Some(age) = args.older_than {
        policy = policy.older_than(age);
    }
    if let Some(age) = args.drop_untouched {
        policy = policy.drop_untouched(age);
    }
    policy
}

fn versions(v: &[u64]) -> String {
    v.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")
}

/// Runs `ckpt prune`.
pub async fn run(args: PruneArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let execs: Vec<String> = match &args.exec {
        Some(exec) => vec![exec.clone()],
        None => store
            .executions()
            .await
            .context("listing the executions")?
            .into_iter()
            .map(|s| s.execution_id)
            .collect(),
    };
    let mut plans = Vec::new();
    let policy = policy(&args);
    for exec in &execs {
        let plan = store
            .retention_plan_for(exec, &policy)
            .await
            .with_context(|| format!("reading the history of execution {exec}"))?;
        match plan {
            Some(plan) => plans.push(plan),
            None if args.exec.is_some() => {
                return Err(Failure::new(format!(
                    "execution {exec} has no live checkpoints (see `ckpt executions`); nothing deleted"
                ))
                .into());
            }
            None => {}
        }
    }
    let total: usize = plans.iter().map(|p| p.delete.len()).sum();
    let dropped = plans.iter().filter(|p| p.drop).count();

    if total + dropped > 0 && !args.dry_run {
        if !args.yes {
            let mut err = std::io::stderr().lock();
            for p in &plans {
                use std::io::Write as _;
                if p.drop {
                    writeln!(err, "  all of execution {} (untouched)", p.execution_id)
                        .context("writing the list of checkpoints to delete")?;
                }
                for h in &p.delete {
                    writeln!(
                        err,
                        "  {}  node {}  saved {}",
                        h.id,
                        h.node_name,
                        fmt::utc(h.timestamp)
                    )
                    .context("writing the list of checkpoints to delete")?;
                }
            }
        }
        let execs_touched = plans
            .iter()
            .filter(|p| p.drop || !p.delete.is_empty())
            .count();
        let what = match (total, dropped) {
            (t, 0) => format!("these {t} checkpoint{}", if t == 1 { "" } else { "s" }),
            (0, d) => format!("these {d} execution{} whole", if d == 1 { "" } else { "s" }),
            (t, d) => format!(
                "these {t} checkpoint{} and {d} whole execution{}",
                if t == 1 { "" } else { "s" },
                if d == 1 { "" } else { "s" }
            ),
        };
        confirm(
            &format!(
                "delete {what} from {execs_touched} execution{}?",
                if execs_touched == 1 { "" } else { "s" }
            ),
            args.yes,
        )?;
        store
            .apply_retention(&plans)
            .await
            .context("deleting (what was deleted before the error stays deleted)")?;
        store.flush().await.context("flushing the store")?;
    }
    let plans: Vec<ExecPlan> = plans.iter().map(ExecPlan::of).collect();

    if args.json {
        let report = Report {
            dry_run: args.dry_run,
            deleted_total: total,
            executions: plans,
        };
        say!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let verb = if args.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    for p in &plans {
        if p.dropped {
            say!("{}: {verb} the whole execution (untouched)", p.execution)?;
            continue;
        }
        let mut line = format!("{}: {verb} {}", p.execution, p.deleted.len());
        if !p.deleted.is_empty() {
            line.push_str(&format!(" (versions {})", versions(&p.deleted)));
        }
        line.push_str(&format!(", {} kept", p.kept));
        if !p.kept_interrupted.is_empty() {
            line.push_str(&format!(
                " (interrupted, kept: {})",
                versions(&p.kept_interrupted)
            ));
        }
        say!("{line}")?;
    }
    if plans.is_empty() {
        say!("no executions: nothing to prune")?;
    } else if args.dry_run {
        say!("dry run: {total} checkpoint(s) would be deleted; nothing changed")?;
    } else if total > 0 {
        say!("{total} checkpoint(s) deleted; run `ckpt gc` to reclaim their space")?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_duration;
    use std::time::Duration;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("7").is_err());
        assert!(parse_duration("7w").is_err());
        assert!(parse_duration("s").is_err());
    }
}
