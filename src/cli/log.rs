//! `ckpt log`: an execution's checkpoints oldest first; with `-p`, each with the structural diff
//! of its state from the previous live version.

use clap::Args;
use serde_json::{json, Value};

use ckpt::{CheckpointHeader, CheckpointId, HistoryQuery};

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
    /// Draw the execution's tree of checkpoints, newest first, like `git log --graph`: a save
    /// that named an older parent (a time travel, an edited state) starts a branch
    #[arg(long, conflicts_with = "patch")]
    pub graph: bool,
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

/// The tree of `headers` (newest first) drawn like `git log --graph`: one row per checkpoint,
/// `*` in its lane, `|` for the other branches alive at that point, and a `/` where a branch
/// joins the lane of the checkpoint it grew from.
fn graph_lines(headers: &[CheckpointHeader]) -> Vec<String> {
    let listed: std::collections::HashSet<u64> = headers.iter().map(|h| h.version).collect();
    // Each lane waits for the version it continues with (a listed parent).
    let mut lanes: Vec<Option<u64>> = Vec::new();
    let mut lines = Vec::new();
    for h in headers {
        let waiting: Vec<usize> = (0..lanes.len())
            .filter(|i| lanes[*i] == Some(h.version))
            .collect();
        let col = match waiting.first() {
            Some(col) => *col,
            None => match lanes.iter().position(Option::is_none) {
                Some(free) => free,
                None => {
                    lanes.push(None);
                    lanes.len() - 1
                }
            },
        };
        let joining: Vec<usize> = waiting.iter().copied().filter(|i| *i != col).collect();
        if !joining.is_empty() {
            let mut cells: Vec<char> = lanes
                .iter()
                .flat_map(|l| [if l.is_some() { '|' } else { ' ' }, ' '])
                .collect();
            for j in &joining {
                cells[2 * j] = ' ';
                cells[2 * j - 1] = '/';
            }
            lines.push(cells.into_iter().collect());
            for j in joining {
                lanes[j] = None;
            }
            while lanes.len() > col + 1 && lanes.last() == Some(&None) {
                lanes.pop();
            }
        }
        let row: String = (0..lanes.len())
            .map(|i| match (i == col, lanes[i].is_some()) {
                (true, _) => "* ",
                (false, true) => "| ",
                (false, false) => "  ",
            })
            .collect();
        lines.push(format!(
            "{row}{}  {}  {}  {}",
            h.id,
            h.node_name,
            fmt::utc(h.timestamp),
            fmt::metadata(&h.metadata)
        ));
        lanes[col] = h
            .parent
            .as_ref()
            .filter(|p| p.execution_id() == h.execution_id && listed.contains(&p.version()))
            .map(CheckpointId::version);
        while lanes.last() == Some(&None) {
            lanes.pop();
        }
    }
    lines
}

/// Runs `ckpt log`.
pub async fn run(args: LogArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let exec = &args.execution;
    require_execution(&store, exec).await?;
    if args.graph && !args.json {
        let mut query = HistoryQuery::default();
        if let Some(n) = args.limit {
            query = query.limit(n);
        }
        let headers = store
            .history(exec, query)
            .await
            .with_context(|| format!("reading the history of {exec}"))?;
        for line in graph_lines(&headers) {
            say!("{}", line.trim_end())?;
        }
        return Ok(());
    }
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
