//! `ckpt log`: an execution's checkpoints oldest first; with `-p`, each with the structural diff
//! of its state from the previous live version.

use clap::Args;
use serde_json::{json, Value};

use ckpt::HistoryQuery;

use super::diff::{diff_values, use_color};
use super::fmt;
use super::show::{open_store, require_execution, Head};
use super::{say, CliResult, Context as _, Global};

/// Options of `ckpt log`.
#[derive(Debug, Args)]
pub struct LogArgs {
    /// The execution id
    #[arg(value_name = "EXEC")]
    pub execution: String,
    /// Follow each checkpoint with the diff of its state from the previous live version (the
    /// first checkpoint is compared with an empty state)
    #[arg(short = 'p', long = "patch")]
    pub patch: bool,
    /// Show only the N most recent checkpoints (still oldest first)
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Print one JSON array instead, oldest first, one object per checkpoint: id,
    /// execution_id, node, version, time (UTC), timestamp_ms, parent, metadata, state_size;
    /// with -p also "previous" (the id compared with, or null) and "diff" ({"added",
    /// "removed", "changed"}, as `ckpt diff --json`)
    #[arg(long)]
    pub json: bool,
}

/// An empty value of the same kind as `v` (a map for a map, an array for an array), else null:
/// what the first checkpoint's state is compared with.
fn empty_like(v: &Value) -> Value {
    match v {
        Value::Object(_) => json!({}),
        Value::Array(_) => json!([]),
        _ => Value::Null,
    }
}

/// Runs `ckpt log`.
pub async fn run(args: LogArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let exec = &args.execution;
    require_execution(&store, exec).await?;
    if !args.patch {
        let mut query = HistoryQuery::default();
        if let Some(n) = args.limit {
            query = query.limit(n);
        }
        let mut headers = store
            .history(exec, query)
            .await
            .with_context(|| format!("reading the history of {exec}"))?;
        headers.reverse();
        if args.json {
            let doc: Vec<Value> = headers.iter().map(|h| Head::from(h).to_json()).collect();
            say!("{}", Value::Array(doc))?;
            return Ok(());
        }
        let table = fmt::headers_table(&headers);
        for line in table.lines("") {
            say!("{line}")?;
        }
        return Ok(());
    }

    // One pass over the log gives every live state.
    let all = store
        .list(exec)
        .await
        .with_context(|| format!("reading the checkpoints of {exec}"))?;
    let mut states = Vec::with_capacity(all.len());
    for cp in &all {
        states.push(
            cp.state_json()
                .with_context(|| format!("reading the state of {}", cp.id))?,
        );
    }
    let skip = args.limit.map_or(0, |n| all.len().saturating_sub(n));
    let color = use_color();
    let mut doc = Vec::new();
    for (i, cp) in all.iter().enumerate().skip(skip) {
        let (previous, diff) = match i.checked_sub(1) {
            Some(p) => (Some(&all[p]), diff_values(&states[p], &states[i])),
            None => (None, diff_values(&empty_like(&states[i]), &states[i])),
        };
        if args.json {
            let mut v = Head::from(cp).to_json();
            v["previous"] = json!(previous.map(|p| p.id.to_string()));
            v["diff"] = diff.to_json();
            doc.push(v);
            continue;
        }
        let header = format!(
            "{}  {}  {}  {}",
            cp.id,
            cp.node_name,
            fmt::utc(cp.timestamp),
            fmt::metadata(&cp.metadata)
        );
        say!("{}", header.trim_end())?;
        let compared = match previous {
            Some(p) => format!("since {}", p.id),
            None => "first checkpoint".to_owned(),
        };
        if diff.is_empty() {
            say!("  ({compared}: no change)")?;
        } else {
            say!("  ({compared}: {})", diff.summary())?;
            for line in diff.lines("  ", color) {
                say!("{line}")?;
            }
        }
        say!("")?;
    }
    if args.json {
        say!("{}", Value::Array(doc))?;
    }
    Ok(())
}
