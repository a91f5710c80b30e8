//! `ckpt stats`: logical bytes offered vs bytes stored, per execution and in total.

use ckpt::backend::BackendExt;
use clap::Args;
use serde::Serialize;

use ckpt::codec::blob;
use ckpt::HistoryQuery;

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

/// One execution.
#[derive(Debug, Serialize)]
struct ExecStats {
    execution: String,
    checkpoints: usize,
    logical_bytes: u64,
    log_bytes: u64,
    damaged_frames: Vec<u64>,
    unreadable_versions: Vec<u64>,
}

/// The whole store.
#[derive(Debug, Serialize)]
struct Totals {
    checkpoints: usize,
    logical_bytes: u64,
    log_bytes: u64,
    blobs: u64,
    blob_bytes: u64,
    stored_bytes: Option<u64>,
    ratio: Option<f64>,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    executions: Vec<ExecStats>,
    totals: Totals,
}

/// Runs `ckpt stats`.
pub async fn run(args: StatsArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let mut execs = Vec::new();
    for summary in store.executions().await.context("listing the executions")? {
        let damaged_frames = summary.damaged_frames;
        let unreadable_versions = summary.unreadable_versions;
        let exec = summary.execution_id;
        let headers = store
            .history(&exec, HistoryQuery::default())
            .await
            .with_context(|| format!("reading the history of execution {exec}"))?;
        execs.push(ExecStats {
            checkpoints: headers.len(),
            logical_bytes: headers.iter().map(|h| h.state_size).sum(),
            log_bytes: summary.log_bytes,
            execution: exec,
            damaged_frames,
            unreadable_versions,
        });
    }
    let backend = store.backend();
    let (mut blobs, mut blob_bytes) = (0u64, 0u64);
    for hash in backend.list_blobs().await.context("listing the blobs")? {
        let stored = backend
            .get_blob(&hash)
            .await
            .with_context(|| format!("reading blob {}", blob::hex(&hash)))?;
        if let Some(bytes) = stored {
            blobs += 1;
            blob_bytes += bytes.len() as u64;
        }
    }
    let stored_bytes = store.stored_bytes().await.context("measuring the store")?;
    let logical_bytes: u64 = execs.iter().map(|e| e.logical_bytes).sum();
    let log_bytes: u64 = execs.iter().map(|e| e.log_bytes).sum();
    let kept = log_bytes + blob_bytes;
    let totals = Totals {
        checkpoints: execs.iter().map(|e| e.checkpoints).sum(),
        logical_bytes,
        log_bytes,
        blobs,
        blob_bytes,
        stored_bytes,
        ratio: (kept > 0).then(|| logical_bytes as f64 / kept as f64),
    };
    if args.json {
        let report = Report {
            executions: execs,
            totals,
        };
        say!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
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
