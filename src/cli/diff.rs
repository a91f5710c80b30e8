//! `ckpt diff`: the structural difference between the states of two checkpoints (the differ
//! itself is the library's [`ckpt::diff`], which `ckpt log -p` shares).

use std::io::IsTerminal as _;

use clap::Args;
use serde_json::json;

pub(crate) use ckpt::diff::{diff_values, show_path};

use ckpt::CheckpointId;

use super::show::{load_checkpoint, open_store};
use super::{say, CliResult, Context as _, Global};

/// Options of `ckpt diff`.
#[derive(Debug, Args)]
pub struct DiffArgs {
    /// The older checkpoint, as EXEC@VERSION (e.g. exec-1@3)
    #[arg(value_name = "A")]
    pub a: CheckpointId,
    /// The newer checkpoint, as EXEC@VERSION; may be of another execution (e.g. a fork)
    #[arg(value_name = "B")]
    pub b: CheckpointId,
    /// Print one JSON document instead: {"from", "to", "added": [{"path", "value"}], "removed":
    /// [{"path", "value"}], "changed": [{"path", "old", "new"}]}
    #[arg(long)]
    pub json: bool,
}

/// Whether to colour output: stdout is a terminal and `NO_COLOR` is unset (or empty).
pub(crate) fn use_color() -> bool {
    std::io::stdout().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Runs `ckpt diff`.
pub async fn run(args: DiffArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let a = load_checkpoint(&store, &args.a).await?;
    let b = load_checkpoint(&store, &args.b).await?;
    let old = a
        .state_json()
        .with_context(|| format!("reading the state of {}", a.id))?;
    let new = b
        .state_json()
        .with_context(|| format!("reading the state of {}", b.id))?;
    let diff = diff_values(&old, &new);
    if args.json {
        let mut doc = diff.to_json();
        doc["from"] = json!(a.id.to_string());
        doc["to"] = json!(b.id.to_string());
        say!("{doc}")?;
        return Ok(());
    }
    if diff.is_empty() {
        say!("{} and {}: the states are equal", a.id, b.id)?;
        return Ok(());
    }
    say!("{} -> {}: {}", a.id, b.id, diff.summary())?;
    for line in diff.lines("  ", use_color()) {
        say!("{line}")?;
    }
    Ok(())
}
