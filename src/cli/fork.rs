//! `ckpt fork`: starts a new execution from a copy of a checkpoint.

use clap::Args;
use serde::Serialize;

use super::delete::{open_store, parse_id};
use super::{say, CliResult, Context, Global};

/// Options of `ckpt fork`.
#[derive(Debug, Args)]
pub struct ForkArgs {
    /// The checkpoint to copy, as EXEC@VERSION (e.g. exec-1@3)
    #[arg(value_name = "ID")]
    pub id: String,
    /// The new execution's id; it must have no live checkpoints
    #[arg(value_name = "NEW_EXEC")]
    pub new_exec: String,
    /// Print the result as one JSON document: {"id": NEW_ID, "parent": ID, "execution": ...,
    /// "version": N, "node": ...}
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    id: String,
    parent: String,
    execution: String,
    version: u64,
    node: String,
}

/// Runs `ckpt fork`.
pub async fn run(args: ForkArgs, global: &Global) -> CliResult {
    let id = parse_id(&args.id)?;
    let store = open_store(global).await?;
    let copy = store
        .fork(&id, &args.new_exec)
        .await
        .with_context(|| format!("forking {id} into {}", args.new_exec))?;
    store.flush().await.context("flushing the store")?;
    let parent = copy
        .parent
        .as_ref()
        .map_or_else(|| id.to_string(), |p| p.to_string());
    if args.json {
        let report = Report {
            id: copy.id.to_string(),
            parent,
            execution: copy.execution_id,
            version: copy.version,
            node: copy.node_name,
        };
        say!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        say!(
            "forked {} (node {}) from parent {parent}",
            copy.id,
            copy.node_name
        )?;
    }
    Ok(())
}
