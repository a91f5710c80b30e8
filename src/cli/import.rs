//! `ckpt import`: a bundle file into the store, keeping ids, versions, timestamps and metadata.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use ckpt::bundle::Bundle;

use super::{say, CliResult, Context, Global};

/// Options of `ckpt import`.
#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The bundle file (written by `ckpt export`)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt import`. The whole file is verified before anything is written (see
/// [`Bundle::read_from`] for the bounds on what is read), and executions that already exist in
/// the store are refused.
pub async fn run(args: ImportArgs, global: &Global) -> CliResult {
    // Streamed and checked as it is read (magic and format first, entry lengths bounded), and
    // whole before the store is even opened: a bundle that does not verify writes nothing.
    let file = std::fs::File::open(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let bundle = Bundle::read_from(std::io::BufReader::with_capacity(1 << 16, file))
        .with_context(|| format!("reading bundle {}", args.file.display()))?;
    let store = super::open_or_create(global.store_url()).await?;
    let report = store
        .import(&bundle)
        .await
        .context("importing; nothing was written if the bundle or a name was refused")?;
    if args.json {
        say!(
            "{}",
            json!({
                "executions": report.executions,
                "frames": report.frames,
                "blobs": report.blobs,
                "names": bundle.logs.iter().map(|l| l.name.as_str()).collect::<Vec<_>>(),
            })
        )?;
    } else {
        say!(
            "imported {} executions ({} log frames, {} new blobs): {}",
            report.executions,
            report.frames,
            report.blobs,
            bundle
                .logs
                .iter()
                .map(|l| l.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        )?;
    }
    Ok(())
}
