//! `ckpt keygen` and `ckpt rekey`: encryption keys.

use clap::Args;
use serde::Serialize;

use super::delete::open_store;
use super::{say, CliResult, Context, Global};

/// Options of `ckpt keygen`.
///
/// Prints a new random 256-bit key as 64 hex digits, and its id. Keep it in a secret store or an
/// environment variable, and open stores with `?key_env=VAR` in the URL.
#[derive(Debug, Args)]
#[command(
    after_help = "Prints a new random 256-bit key as 64 hex digits, and its id. Keep it in a secret store or an environment variable, and open stores with ?key_env=VAR in the URL, e.g. CKPT_KEY=$(ckpt keygen --quiet) ckpt --store 'sled://./data?key_env=CKPT_KEY' demo"
)]
pub struct KeygenArgs {
    /// Print only the key (for `VAR=$(ckpt keygen --quiet)`)
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// Runs `ckpt keygen`.
pub async fn keygen(args: KeygenArgs, _global: &Global) -> CliResult {
    let key = ckpt::crypto::Key::generate();
    if args.quiet {
        say!("{}", key.to_hex())?;
    } else {
        say!("{}", key.to_hex())?;
        say!(
            "key id {} (the id appears in errors; the key never does)",
            key.id()
        )?;
    }
    Ok(())
}

/// Options of `ckpt rekey`.
///
/// Seals every frame and blob again with the store's newest key. Open the store with the new key
/// first and the old ones after it: --store 'URL?key_env=NEW_KEY,OLD_KEY'. Afterwards the old
/// keys are no longer needed. Saves and gc wait while it runs; it can be run again if
/// interrupted.
#[derive(Debug, Args)]
#[command(
    after_help = "Seals every frame and blob again with the store's newest key. Open the store with the new key first and the old ones after it: --store 'URL?key_env=NEW_KEY,OLD_KEY'. Afterwards the old keys are no longer needed. Saves and gc wait while it runs; it can be run again if interrupted."
)]
pub struct RekeyArgs {
    /// Print the result as one JSON document: {"frames", "blobs"} re-sealed
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Serialize)]
struct Report {
    frames: u64,
    blobs: u64,
    blobs_removed: u64,
}

/// Runs `ckpt rekey`.
pub async fn rekey(args: RekeyArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let report = store.rekey().await.context("re-sealing the store")?;
    if args.json {
        let r = Report {
            frames: report.frames,
            blobs: report.blobs,
            blobs_removed: report.blobs_removed,
        };
        say!("{}", serde_json::to_string(&r)?)?;
    } else {
        say!(
            "re-sealed {} frames and {} blobs with the newest key (and removed {} blobs under \
             old addresses); the older keys are no longer needed",
            report.frames,
            report.blobs,
            report.blobs_removed
        )?;
    }
    Ok(())
}
