//! `ckpt salvage`: every readable checkpoint of a damaged store, copied into another store.

use clap::Args;
use serde_json::json;

use ckpt::store::{seq_list, SalvageReport};
use ckpt::url::redact;
use ckpt::Store;

use super::{say, CliResult, Context, Failure, Global};

/// Options of `ckpt salvage`.
#[derive(Debug, Args)]
#[command(
    after_help = "Copies every execution of the store (--store) into the target (--to, \
any backend, which must not hold any of them yet). A healthy execution is copied exactly, \
frame for frame, as `ckpt copy` does. Of a damaged one, every live checkpoint that still loads \
is saved again in the target with its own version, parent, node, metadata, timestamp and \
state (deleted checkpoints are not copied), and the target's log continues after the source's \
last version, so no version is handed out twice. Prints what was copied and what was left \
(with the damage it needs). Exits 0 when everything live was copied, 1 when something was \
left. `ckpt export --all --salvage -o FILE` writes the same into a bundle."
)]
pub struct SalvageArgs {
    /// The target store URL (e.g. sqlite:///tmp/rescued.db, or a new directory)
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Print the result as JSON: {"executions": [{"execution", "exact", "copied": [versions],
    /// "left": [{"version", "reason"}], "damaged_frames": [seqs]}], "complete": bool}
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt salvage`.
pub async fn run(args: SalvageArgs, global: &Global) -> CliResult {
    let from = global.store_url();
    if from == args.to {
        return Err(Failure::new("--store and --to name the same store").into());
    }
    let source = Store::open(from)
        .await
        .with_context(|| format!("opening the damaged store {}", redact(from)))?;
    let target = Store::open(&args.to)
        .await
        .with_context(|| format!("opening the target {}", redact(&args.to)))?;
    super::watch_metrics(from, &source);
    super::watch_metrics(&args.to, &target);
    let report = source
        .salvage_to(&target)
        .await
        .with_context(|| format!("salvaging into {}", redact(&args.to)))?;
    target.flush().await.context("flushing the target")?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&to_json(&report))?)?;
    } else {
        for e in &report.executions {
            let how = if e.exact { "exactly" } else { "saved again" };
            say!(
                "{}: copied {} version(s) {}{}",
                e.execution_id,
                e.copied.len(),
                if e.copied.is_empty() {
                    String::new()
                } else {
                    format!("{} ", seq_list(&e.copied))
                },
                how
            )?;
        }
        print_left(&report)?;
    }
    if report.is_complete() {
        return Ok(());
    }
    let left: usize = report.executions.iter().map(|e| e.left.len()).sum();
    Err(Failure::new(format!(
        "{left} checkpoint(s) could not be read and were left behind (listed above); everything \
         else was copied to {}",
        redact(&args.to)
    ))
    .into())
}

/// Lists, on stdout, the checkpoints a salvage left behind and the damage each needs.
pub(crate) fn print_left(report: &SalvageReport) -> CliResult {
    for e in &report.executions {
        for (version, reason) in &e.left {
            say!("left {}@{version}: {reason}", e.execution_id)?;
        }
    }
    Ok(())
}

fn to_json(report: &SalvageReport) -> serde_json::Value {
    let executions: Vec<_> = report
        .executions
        .iter()
        .map(|e| {
            json!({
                "execution": e.execution_id,
                "exact": e.exact,
                "copied": e.copied,
                "left": e.left.iter().map(|(v, r)| json!({"version": v, "reason": r}))
                    .collect::<Vec<_>>(),
                "damaged_frames": e.damaged_frames,
            })
        })
        .collect();
    json!({ "executions": executions, "complete": report.is_complete() })
}
