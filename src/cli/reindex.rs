//! `ckpt reindex`: builds (or rebuilds, or drops) the store's search index.

use clap::Args;
use serde_json::json;

use super::delete::open_store;
use super::{say, CliResult, Context, Global};

/// Options of `ckpt reindex`.
///
/// Builds the search index from every execution's log, replacing any index there was, and
/// marks the store as indexed: from then on every store that opens it feeds the index as it
/// saves, every search brings it up to date first, gc removes the entries of what it deleted,
/// and verify checks it. Encrypted stores keep no index: their search scans.
#[derive(Debug, Args)]
#[command(
    after_help = "Builds the search index from every execution's log, replacing any index there was, and marks the store as indexed: from then on every store that opens it feeds the index as it saves, every search brings it up to date first, gc removes the entries of what it deleted, and verify checks it. Encrypted stores keep no index: their search scans."
)]
pub struct ReindexArgs {
    /// Remove the index instead: searches scan again
    #[arg(long)]
    pub drop: bool,
    /// Print one JSON document: {"executions", "checkpoints", "entries", "bytes"} (or
    /// {"dropped": true})
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt reindex`.
pub async fn run(args: ReindexArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    if args.drop {
        store
            .drop_index()
            .await
            .context("dropping the search index")?;
        store.flush().await.context("flushing the store")?;
        if args.json {
            say!("{}", json!({ "dropped": true }))?;
        } else {
            say!("search index dropped: searches scan")?;
        }
        return Ok(());
    }
    let report = store.reindex().await.context("building the search index")?;
    store.flush().await.context("flushing the store")?;
    if args.json {
        say!("{}", serde_json::to_string(&report)?)?;
    } else {
        say!(
            "indexed {} checkpoints of {} executions: {} entries, {}",
            report.checkpoints,
            report.executions,
            report.entries,
            super::fmt::bytes(report.bytes)
        )?;
    }
    Ok(())
}
