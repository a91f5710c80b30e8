//! `ckpt export`: executions into a bundle file (see `ckpt::bundle`), exactly as stored.

use std::path::PathBuf;

use clap::Args;
use serde_json::json;

use super::{fmt, say, CliResult, Context, Failure, Global};

/// Options of `ckpt export`.
#[derive(Debug, Args)]
pub struct ExportArgs {
    /// Executions to export
    #[arg(required_unless_present = "all", conflicts_with = "all")]
    pub executions: Vec<String>,
    /// Export every execution of the store
    #[arg(long)]
    pub all: bool,
    /// The bundle file to write (refused if it exists)
    #[arg(short, long, value_name = "FILE")]
    pub output: PathBuf,
    /// Print the result as JSON
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt export`.
pub async fn run(args: ExportArgs, global: &Global) -> CliResult {
    if args.output.exists() {
        return Err(Failure::new(format!(
            "{} exists; choose another file (export never overwrites)",
            args.output.display()
        ))
        .into());
    }
    let store = super::open_existing(global.store_url()).await?;
    let bundle = if args.all {
        store.export_all().await?
    } else {
        store.export(&args.executions).await?
    };
    let bytes = bundle.encode();
    std::fs::write(&args.output, &bytes)
        .with_context(|| format!("writing {}", args.output.display()))?;
    let frames: usize = bundle.logs.iter().map(|l| l.frames.len()).sum();
    if args.json {
        say!(
            "{}",
            json!({
                "file": args.output.display().to_string(),
                "executions": bundle.logs.len(),
                "frames": frames,
                "blobs": bundle.blobs.len(),
                "bytes": bytes.len(),
                "sealed": bundle.sealed_for.is_some(),
            })
        )?;
    } else {
        say!(
            "exported {} executions ({} log frames, {} blobs) to {} ({}){}",
            bundle.logs.len(),
            frames,
            bundle.blobs.len(),
            args.output.display(),
            fmt::bytes(bytes.len() as u64),
            if bundle.sealed_for.is_some() {
                "; sealed: only a store given one of this store's keys can import it"
            } else {
                ""
            }
        )?;
    }
    Ok(())
}
