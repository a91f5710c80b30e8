//! `ckpt copy`: executions from one store to another (any backends), exactly as stored.

use clap::Args;
use serde_json::json;

use ckpt::checkpoint::shorten;
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
    // All or nothing: an execution that exists in the target is found before anything is
    // copied, not half way through.
    source
        .check_copy(&target, &names)
        .await
        .context("checking the copy before writing; nothing was copied")?;
    let (mut frames, mut blobs) = (0u64, 0u64);
    let progress = super::progress::bar(names.len() as u64, "copying");
    for (done, name) in names.iter().enumerate() {
        progress.set_message(format!("copying {}", shorten(name)));
        let report = source
            .copy_to(&target, std::slice::from_ref(name))
            .await
            .with_context(|| copy_failed(&names, done, &args.to))?;
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
            "copied {} executions ({frames} log frames, {blobs} new blobs) from {} to {}: {}",
            names.len(),
            redact(&args.from),
            redact(&args.to),
            listed(&names)
        )?;
    }
    Ok(())
}

/// The error context when copying `names[done]` failed: which one, and which were copied
/// before it (they stay in the target, complete).
fn copy_failed(names: &[String], done: usize, to: &str) -> String {
    let failed = shorten(&names[done]);
    if done == 0 {
        return format!("copying execution {failed}; nothing was copied");
    }
    format!(
        "copying execution {failed}; the {done} executions before it were copied to {} and \
         stay there: {}; copy the rest by name",
        redact(to),
        listed(&names[..done])
    )
}

/// Names for a message, each shortened, at most 20 of them.
fn listed(names: &[String]) -> String {
    const SHOWN: usize = 20;
    if names.is_empty() {
        return "(none)".into();
    }
    let mut text: Vec<String> = names
        .iter()
        .take(SHOWN)
        .map(|n| shorten(n).into_owned())
        .collect();
    if names.len() > SHOWN {
        text.push(format!("and {} more", names.len() - SHOWN));
    }
    text.join(", ")
}
