//! `ckpt watch`: a live tail of an execution's new checkpoints.

use clap::Args;
use futures_util::StreamExt as _;

use super::fmt;
use super::show::{open_store, Head};
use super::{say, CliResult, Context as _, Global};

/// Options of `ckpt watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The execution id (it need not exist yet)
    #[arg(value_name = "EXEC")]
    pub execution: String,
    /// Stop after N checkpoints (for scripts and tests); without it, runs until interrupted
    #[arg(long, value_name = "N")]
    pub count: Option<u64>,
    /// Print one JSON object per line instead, per checkpoint: id, execution_id, node,
    /// version, time (UTC), timestamp_ms, parent, metadata, state_size, and state
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt watch`.
pub async fn run(args: WatchArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    ckpt::checkpoint::validate_execution_id(&args.execution)?;
    if args.count == Some(0) {
        return Ok(());
    }
    let mut stream = store.watch(&args.execution);
    let mut seen = 0u64;
    while let Some(item) = stream.next().await {
        let cp = match item {
            Ok(cp) => cp,
            Err(e) => {
                // The stream goes on after an error; report it and keep watching.
                eprintln!("warning: while watching {}: {e}", args.execution);
                continue;
            }
        };
        if args.json {
            let mut v = Head::from(&cp).to_json();
            v["state"] = cp
                .state_json()
                .with_context(|| format!("reading the state of {}", cp.id))?;
            say!("{v}")?;
        } else {
            let line = format!(
                "{}  {}  {}  {}  {}",
                cp.id,
                cp.node_name,
                fmt::utc(cp.timestamp),
                fmt::bytes(cp.state_size()),
                fmt::metadata(&cp.metadata)
            );
            say!("{}", line.trim_end())?;
        }
        seen += 1;
        if args.count.is_some_and(|n| seen >= n) {
            break;
        }
    }
    Ok(())
}
