//! `ckpt clear`: deletes every checkpoint of an execution, after confirmation.

use clap::Args;
use serde::Serialize;

use ckpt::HistoryQuery;

use super::delete::{confirm, open_store};
use super::fmt;
use super::{say, CliResult, Context, Failure, Global};

/// Options of `ckpt clear`.
#[derive(Debug, Args)]
pub struct ClearArgs {
    /// The execution whose checkpoints are all deleted (versions are never reused: later saves
    /// continue above the cleared ones)
    #[arg(value_name = "EXEC")]
    pub exec: String,
    /// Clear without asking. Required when stdin is not a terminal (scripts, pipes); on a
    /// terminal, without it ckpt shows what will go and asks [y/N]
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the result as one JSON document: {"execution": ..., "checkpoints_deleted": N,
    /// "versions": [...]}
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    execution: String,
    checkpoints_deleted: usize,
    versions: Vec<u64>,
}

/// Runs `ckpt clear`.
pub async fn run(args: ClearArgs, global: &Global) -> CliResult {
    let exec = args.exec;
    let store = open_store(global).await?;
    let headers = store
        .history(&exec, HistoryQuery::default())
        .await
        .with_context(|| format!("reading the history of execution {exec}"))?;
    let (Some(newest), Some(oldest)) = (headers.first(), headers.last()) else {
        return Err(Failure::new(format!(
            "execution {exec} has no live checkpoints (see `ckpt executions`); nothing deleted"
        ))
        .into());
    };
    let question = format!(
        "clear {exec}: delete {} checkpoint{} (versions {}..{}, latest node {}, saved {})?",
        headers.len(),
        if headers.len() == 1 { "" } else { "s" },
        oldest.version,
        newest.version,
        newest.node_name,
        fmt::utc(newest.timestamp)
    );
    confirm(&question, args.yes)?;
    store
        .clear(&exec)
        .await
        .with_context(|| format!("clearing execution {exec}"))?;
    store.flush().await.context("flushing the store")?;
    let mut versions: Vec<u64> = headers.iter().map(|h| h.version).collect();
    versions.sort_unstable();
    if args.json {
        let report = Report {
            execution: exec,
            checkpoints_deleted: versions.len(),
            versions,
        };
        say!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        say!(
            "cleared {exec}: {} checkpoint{} deleted; run `ckpt gc` to reclaim their space",
            versions.len(),
            if versions.len() == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}
