//! `ckpt gc`: reclaims the space of deleted and cleared checkpoints and reports what was freed.

use clap::Args;
use serde::Serialize;

use super::delete::open_store;
use super::fmt;
use super::{say, CliResult, Context, Global};

/// Options of `ckpt gc`.
///
/// Removes the log frames of deleted and cleared checkpoints that no live checkpoint depends
/// on, and every blob no remaining frame references. Never removes anything a live checkpoint
/// needs. Safe while other processes save (they wait, or redo a save that raced it); one gc at a time.
#[derive(Debug, Args)]
#[command(
    after_help = "Removes the log frames of deleted and cleared checkpoints that no live checkpoint depends on, and every blob no remaining frame references. Never removes anything a live checkpoint needs. Safe while other processes save (they wait, or redo a save that raced it); one gc at a time."
)]
pub struct GcArgs {
    /// Print the result as one JSON document: {"frames_removed", "blobs_removed",
    /// "blobs_kept", "stored_bytes_before", "stored_bytes_after", "bytes_freed"} (the byte
    /// counts are null when the backend cannot measure what it stores)
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    frames_removed: u64,
    blobs_removed: u64,
    blobs_kept: u64,
    stored_bytes_before: Option<u64>,
    stored_bytes_after: Option<u64>,
    bytes_freed: Option<u64>,
}

/// Runs `ckpt gc`.
pub async fn run(args: GcArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let before = store
        .stored_bytes()
        .await
        .context("measuring the store before gc")?;
    let gc = store.gc().await.context("collecting garbage")?;
    store.flush().await.context("flushing the store")?;
    let after = store
        .stored_bytes()
        .await
        .context("measuring the store after gc")?;
    let freed = before.zip(after).map(|(b, a)| b.saturating_sub(a));
    if args.json {
        let report = Report {
            frames_removed: gc.frames_removed,
            blobs_removed: gc.blobs_removed,
            blobs_kept: gc.blobs_kept,
            stored_bytes_before: before,
            stored_bytes_after: after,
            bytes_freed: freed,
        };
        say!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    let size = |n: Option<u64>| n.map_or_else(|| "unknown".to_owned(), fmt::bytes);
    say!("frames removed  {}", gc.frames_removed)?;
    say!("blobs removed   {}", gc.blobs_removed)?;
    say!("blobs kept      {}", gc.blobs_kept)?;
    say!(
        "bytes freed     {} (stored {} before, {} after)",
        size(freed),
        size(before),
        size(after)
    )?;
    Ok(())
}
