//! `ckpt stats`: logical bytes offered vs bytes stored, per execution and in total.

use clap::Args;

use ckpt::store::StatsReport;

use super::delete::open_store;
use super::fmt::{self, Table};
use super::{say, CliResult, Context, Global};

/// Options of `ckpt stats`.
///
/// Per execution (a damaged one counts what can be read, and is marked): live checkpoints, logical bytes (the sum of the encoded sizes of their
/// states, what was offered) and log bytes (its save frames; long values live in shared blobs).
/// In total: logical bytes, log bytes, blob bytes (every stored blob, compressed), the bytes
/// the store occupies on its medium (unknown for backends that cannot tell), and the
/// dedup+compression ratio: logical / (log + blob bytes).
#[derive(Debug, Args)]
#[command(
    after_help = "Per execution: live checkpoints, logical bytes (the sum of the encoded sizes of their states, what was offered) and log bytes (its save frames; long values live in shared blobs). In total: logical bytes, log bytes, blob bytes (every stored blob, compressed), the bytes the store occupies on its medium (unknown for backends that cannot tell), and the dedup+compression ratio: logical / (log + blob bytes)."
)]
pub struct StatsArgs {
    /// Print the result as one JSON document: {"executions": [{"execution", "checkpoints",
    /// "logical_bytes", "log_bytes", "damaged_frames", "unreadable_versions"}], "totals": {"checkpoints", "logical_bytes", "log_bytes",
    /// "blobs", "blob_bytes", "stored_bytes", "ratio"}} (stored_bytes and ratio may be null)
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt stats`.
pub async fn run(args: StatsArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let report = store
        .stats()
        .await
        .context("computing the store's statistics")?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let StatsReport {
        executions: execs,
        totals,
    } = report;
    let mut table = Table::new(&["EXECUTION", ">CHECKPOINTS", ">LOGICAL", ">LOG"]);
    for e in &execs {
        let mark = if e.damaged_frames.is_empty() {
            ""
        } else {
            " (damaged)"
        };
        table.row(vec![
            format!("{}{mark}", e.execution),
            e.checkpoints.to_string(),
            fmt::bytes(e.logical_bytes),
            fmt::bytes(e.log_bytes),
        ]);
    }
    table.row(vec![
        "total".into(),
        totals.checkpoints.to_string(),
        fmt::bytes(totals.logical_bytes),
        fmt::bytes(totals.log_bytes),
    ]);
    for line in table.lines("") {
        say!("{line}")?;
    }
    for e in execs.iter().filter(|e| !e.damaged_frames.is_empty()) {
        say!(
            "damaged: {}: frame(s) {} fail verification{}; counted: its readable checkpoints \
             (see `ckpt verify`)",
            e.execution,
            ckpt::store::seq_list(&e.damaged_frames),
            if e.unreadable_versions.is_empty() {
                String::new()
            } else {
                format!(
                    ", version(s) {} cannot be loaded",
                    ckpt::store::seq_list(&e.unreadable_versions)
                )
            }
        )?;
    }
    say!("")?;
    say!(
        "logical bytes            {}",
        fmt::bytes(totals.logical_bytes)
    )?;
    say!("log bytes                {}", fmt::bytes(totals.log_bytes))?;
    say!(
        "blob bytes               {} in {} blob(s)",
        fmt::bytes(totals.blob_bytes),
        totals.blobs
    )?;
    say!(
        "stored on the medium     {}",
        totals
            .stored_bytes
            .map_or_else(|| "unknown".to_owned(), fmt::bytes)
    )?;
    say!(
        "dedup+compression ratio  {}",
        totals
            .ratio
            .map_or_else(|| "n/a (nothing stored)".to_owned(), |r| format!("{r:.2}x"))
    )?;
    Ok(())
}
