//! `ckpt compact`: rewrites the store's storage so that nothing deleted can be read from its files.

use clap::Args;

use ckpt::url::StoreUrl;
use ckpt::CompactReport;

use super::{fmt, say, CliResult, Context, Global};

/// What `ckpt compact` does, per backend (also its `--help` epilogue).
const ABOUT: &str = "Run `ckpt gc` first: it removes cleared and deleted checkpoints from the store; compact then makes \
what gc removed unreadable from the backend's files. sled: rewrites the directory with only live keys (offline: no other \
process may have the store open). SQLite: VACUUM, then empties the WAL. PostgreSQL: VACUUM FULL of the store's tables, \
then (if the role may) a WAL switch and a CHECKPOINT so old WAL segments are removed; with wal_recycle=on (the default) \
they are renamed for reuse and keep their bytes until overwritten. Redis (every node of a Cluster): BGREWRITEAOF when the \
AOF is on, BGSAVE when snapshots are configured, waiting for each to finish. What could not be done is printed as a \
caveat with how to fix it. Replicas, backups and archives keep their own copies: compact cannot reach them.";

/// Options of `ckpt compact`.
///
/// Run `ckpt gc` first (it removes cleared and deleted checkpoints from the store); `ckpt
/// compact` then makes what gc removed unreadable from the backend's files, as far as the server
/// allows, and lists what it could not do.
#[derive(Debug, Args)]
#[command(after_help = ABOUT)]
pub struct CompactArgs {
    /// Print the result as one JSON document: {"backend", "steps", "caveats", "bytes_before",
    /// "bytes_after"} (the byte counts are null when the backend cannot measure what it stores)
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt compact`.
pub async fn run(args: CompactArgs, global: &Global) -> CliResult {
    // Compaction never reads what the store holds, so an encrypted store needs no key here.
    let url = ckpt::url::strip_key_env(global.store_url());
    let parsed = StoreUrl::parse(&url)?;
    if let Err(e) = parsed.check_files_exist() {
        return Err(e).context(format!(
            "no store at {}: nothing to compact; check --store / CKPT_STORE",
            ckpt::url::redact(&url)
        ));
    }
    let report = match parsed {
        // sled compacts offline only: the store rewrites the directory without opening it.
        StoreUrl::Sled { .. } => ckpt::Store::compact_offline(&url)
            .await
            .context("compacting the store")?,
        _ => {
            let store = super::open_existing(&url).await?;
            store.compact().await.context("compacting the store")?
        }
    };
    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?)?;
        return Ok(());
    }
    print_report(&report)
}

fn print_report(report: &CompactReport) -> CliResult {
    let size = |n: Option<u64>| n.map_or_else(|| "unknown".to_owned(), fmt::bytes);
    say!(
        "compacted ({}): {} -> {}",
        report.backend,
        size(report.bytes_before),
        size(report.bytes_after)
    )?;
    for step in &report.steps {
        say!("  done:    {step}")?;
    }
    for caveat in &report.caveats {
        say!("  caveat:  {caveat}")?;
    }
    if report.caveats.is_empty() {
        say!("no caveats: nothing deleted remains readable in the files compact can reach")?;
    }
    Ok(())
}
