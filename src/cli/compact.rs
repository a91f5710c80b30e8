//! `ckpt compact`: rewrites a sled store's files so nothing deleted remains in them.

use clap::Args;
use serde::Serialize;

use ckpt::url::StoreUrl;

use super::{say, CliResult, Context, Failure, Global};

/// Options of `ckpt compact`.
///
/// sled keeps deleted values in its files until their space is reused. Run `ckpt gc` first
/// (it removes cleared and deleted checkpoints from the store), then `ckpt compact` rewrites the
/// directory with only what is live, so none of the removed state can be read from the files.
/// No other process may have the store open (sled allows one anyway).
#[derive(Debug, Args)]
#[command(
    after_help = "sled keeps deleted values in its files until their space is reused. Run `ckpt gc` first (it removes cleared and deleted checkpoints from the store), then `ckpt compact` rewrites the directory with only what is live, so none of the removed state can be read from the files. No other process may have the store open (sled allows one anyway)."
)]
pub struct CompactArgs {
    /// Print the result as one JSON document: {"bytes_before", "bytes_after"}
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    bytes_before: u64,
    bytes_after: u64,
}

/// Runs `ckpt compact`.
pub async fn run(args: CompactArgs, global: &Global) -> CliResult {
    let url = ckpt::url::strip_key_env(global.store_url());
    let path =
        match StoreUrl::parse(&url)? {
            StoreUrl::Sled { path, .. } => path,
            _ => return Err(Failure::new(
                "compact rewrites sled stores; SQLite and PostgreSQL reclaim deleted rows with \
                 VACUUM, and Redis frees memory at once"
                    .to_string(),
            )
            .into()),
        };
    let report = tokio::task::spawn_blocking(move || compact_sled(&path))
        .await
        .context("compacting")?
        .context("compacting the store")?;
    if args.json {
        let r = Report {
            bytes_before: report.bytes_before,
            bytes_after: report.bytes_after,
        };
        say!("{}", serde_json::to_string(&r)?)?;
    } else {
        say!(
            "compacted: {} -> {} bytes",
            report.bytes_before,
            report.bytes_after
        )?;
    }
    Ok(())
}

#[cfg(feature = "sled")]
fn compact_sled(path: &std::path::Path) -> ckpt::Result<ckpt::backend::sled::CompactReport> {
    ckpt::backend::sled::compact(path)
}

#[cfg(not(feature = "sled"))]
fn compact_sled(_: &std::path::Path) -> ckpt::Result<Report> {
    Err(ckpt::Error::InvalidInput(
        "this build of ckpt has no sled backend".into(),
    ))
}
