//! `ckpt executions`: every execution of the store, one line each.

use clap::Args;
use serde_json::json;

use super::fmt::{self, Table};
use super::show::{millis, open_store};
use super::{say, CliResult, Context as _, Global};

/// Options of `ckpt executions`.
#[derive(Debug, Args)]
pub struct ExecutionsArgs {
    /// Print one JSON array instead, one object per execution: execution_id, checkpoints,
    /// latest_version, latest_id, last_node, last_saved (UTC), last_saved_ms, stored_bytes
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt executions`.
pub async fn run(args: ExecutionsArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let executions = store.executions().await.context("listing the executions")?;
    if args.json {
        let doc: Vec<_> = executions
            .iter()
            .map(|e| {
                json!({
                    "execution_id": e.execution_id,
                    "checkpoints": e.checkpoints,
                    "latest_version": e.latest_version,
                    "latest_id": format!("{}@{}", e.execution_id, e.latest_version),
                    "last_node": e.latest_node,
                    "last_saved": fmt::utc(e.last_timestamp),
                    "last_saved_ms": millis(e.last_timestamp),
                    "stored_bytes": e.log_bytes,
                })
            })
            .collect();
        say!("{}", serde_json::Value::Array(doc))?;
        return Ok(());
    }
    if executions.is_empty() {
        say!("no executions in {}", ckpt::url::redact(global.store_url()))?;
        return Ok(());
    }
    let mut table = Table::new(&[
        "EXECUTION",
        ">CHECKPOINTS",
        ">LATEST",
        "LAST NODE",
        "LAST SAVED (UTC)",
        ">STORED",
    ]);
    for e in &executions {
        table.row(vec![
            e.execution_id.clone(),
            e.checkpoints.to_string(),
            e.latest_version.to_string(),
            e.latest_node.clone(),
            fmt::utc(e.last_timestamp),
            fmt::bytes(e.log_bytes),
        ]);
    }
    for line in table.lines("") {
        say!("{line}")?;
    }
    Ok(())
}
