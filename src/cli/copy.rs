//! `ckpt copy`: executions from one store to another (any backends), exactly as stored.

use clap::Args;
use serde_json::json;

use ckpt::url::redact;

use super::{say, CliResult, Context, Failure, Global};

/// Options of `ckpt copy`.
#[derive(Debug, Args)]
pub struct CopyArgs {
    /// The source store URL
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// The target store URL
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// Executions to copy
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub executions: Vec<String>,
    /// Copy every execution of the source
    #[arg(long)]
    pub all: bool,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt copy`: exports from `--from` and imports into `--to`, one execution at a time,
/// with a progress bar on a terminal. Either store may be encrypted (`?key_env=`): what the
/// source sealed is opened with its keys and sealed again with the target's.
pub async fn run(args: CopyArgs, _global: &Global) -> CliResult {
    if args.from == args.to {
        return Err(Failure::new("--from and --to name the same store").into());
    }
    let source = super::open_existing(&args.from)
        .await
        .context("opening the source (--from)")?;
    let target = super::open_or_create(&args.to)
        .await
        .context("opening the target (--to)")?;
    let names = if args.all {
        let mut logs = source.execution_logs().await?;
        logs.sort();
        logs
    } else {
        args.executions.clone()
    };
    let (mut frames, mut blobs) = (0u64, 0u64);
    let progress = super::progress::bar(names.len() as u64, "copying");
    for name in &names {
        progress.set_message(format!("copying {name}"));
        let report = source
            .copy_to(&target, std::slice::from_ref(name))
            .await
            .with_context(|| format!("copying execution {name}"))?;
        frames += report.frames;
        blobs += report.blobs;
        progress.inc(1);
    }
    progress.finish_and_clear();
    if args.json {
        say!(
            "{}",
            json!({ "executions": names, "frames": frames, "blobs": blobs,
                    "from": redact(&args.from), "to": redact(&args.to) })
        )?;
    } else {
        say!(
            "copied {} executions ({frames} log frames, {blobs} new blobs) from {} to {}",
            names.len(),
            redact(&args.from),
            redact(&args.to)
        )?;
    }
    Ok(())
}
