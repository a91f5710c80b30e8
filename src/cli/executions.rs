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
    /// latest_version, latest_id, last_node, last_saved (UTC), last_saved_ms, stored_bytes,
    /// damaged_frames (sequence numbers of frames that fail verification), unreadable_versions
    /// (live versions that need one). In a damaged execution the counts and the latest are
    /// those of its readable checkpoints
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
                    "damaged_frames": e.damaged_frames,
                    "unreadable_versions": e.unreadable_versions,
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
    let any_damage = executions.iter().any(|e| e.is_damaged());
    let mut columns = vec![
        "EXECUTION",
        ">CHECKPOINTS",
        ">LATEST",
        "LAST NODE",
        "LAST SAVED (UTC)",
        ">STORED",
    ];
    if any_damage {
        columns.push("DAMAGE");
    }
    let mut table = Table::new(&columns);
    for e in &executions {
        let readable = e.checkpoints > 0;
        let mut row = vec![
            e.execution_id.clone(),
            e.checkpoints.to_string(),
            if readable {
                e.latest_version.to_string()
            } else {
                "-".into()
            },
            e.latest_node.clone(),
            if readable {
                fmt::utc(e.last_timestamp)
            } else {
                "-".into()
            },
            fmt::bytes(e.log_bytes),
        ];
        if any_damage {
            row.push(damage_cell(e));
        }
        table.row(row);
    }
    for line in table.lines("") {
        say!("{line}")?;
    }
    if any_damage {
        say!("")?;
        say!(
            "damaged executions list only what can be read; `ckpt history EXEC` and `ckpt verify` \
             say more, `ckpt salvage --to URL` copies the readable checkpoints out"
        )?;
    }
    Ok(())
}

/// `frames 4, 9 damaged; versions 5-6 unreadable`, or empty for a healthy execution.
pub(crate) fn damage_cell(e: &ckpt::ExecutionSummary) -> String {
    if !e.is_damaged() {
        return String::new();
    }
    let mut cell = format!(
        "frame(s) {} damaged",
        ckpt::store::seq_list(&e.damaged_frames)
    );
    if !e.unreadable_versions.is_empty() {
        cell.push_str(&format!(
            "; version(s) {} unreadable",
            ckpt::store::seq_list(&e.unreadable_versions)
        ));
    }
    cell
}
