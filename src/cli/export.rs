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
    /// Export every checkpoint that can still be read from a damaged store, leaving out (and
    /// listing) what cannot; without it, export refuses a store with damage. Salvaged
    /// checkpoints of a damaged execution keep their versions, parents, nodes, metadata and
    /// timestamps but are stored anew (see `ckpt salvage`)
    #[arg(long, requires = "all")]
    pub salvage: bool,
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
    let exported = if args.salvage {
        let (bundle, report) = store.salvage_bundle().await?;
        super::salvage::print_left(&report)?;
        Ok(bundle)
    } else if args.all {
        store.export_all().await
    } else {
        store.export(&args.executions).await
    };
    let bundle = exported.map_err(|e| match e {
        ckpt::Error::Corrupt { .. } => Failure::new(
            "the store holds damage, and a bundle carries only what verifies: nothing was \
             written; `ckpt verify` lists the damage, `ckpt export --all --salvage` or `ckpt \
             salvage --to URL` copies what is still readable",
        )
        .caused_by(e)
        .into(),
        other => Box::new(other) as super::error::BoxError,
    })?;
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
