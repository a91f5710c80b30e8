//! `ckpt show`: one checkpoint's header and its state (or a part of it, `--path`), and the
//! helpers the other inspecting subcommands share: opening the store, loading a checkpoint with
//! an actionable error, selecting a dot path, and a checkpoint header as JSON.

use std::time::{SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{json, Value};

use ckpt::{Checkpoint, CheckpointHeader, CheckpointId, HistoryQuery, Metadata, Store};

use super::fmt::{self, Table};
use super::{say, CliResult, Context as _, Failure, Global};

/// Options of `ckpt show`.
#[derive(Debug, Args)]
pub struct ShowArgs {
    /// The checkpoint, as EXEC@VERSION (e.g. exec-1@17)
    #[arg(value_name = "ID")]
    pub id: CheckpointId,
    /// Show only this part of the state: dot-separated, numbers index arrays and keys index
    /// maps (e.g. messages.3 or plan.steps.0.done)
    #[arg(long, value_name = "PATH")]
    pub path: Option<String>,
    /// Print one JSON document instead: the header (id, execution_id, node, version, time,
    /// timestamp_ms, parent, metadata, state_size), "state" (or, with --path, "path" and
    /// "value") and "writes" (pending writes, task results, interrupts and answers attached to
    /// the checkpoint: seq, task, channel, metadata, value)
    #[arg(long)]
    pub json: bool,
}

/// Opens the existing store the global options name, saying which on failure (see
/// [`super::open_existing`]: a missing store is an error, never created).
pub(crate) async fn open_store(global: &Global) -> CliResult<Store> {
    super::open_existing(global.store_url()).await
}

/// Loads a checkpoint; a missing one is an error saying why it may be missing and what to run.
pub(crate) async fn load_checkpoint(store: &Store, id: &CheckpointId) -> CliResult<Checkpoint> {
    match store.load(id).await {
        Ok(cp) => Ok(cp),
        Err(e) if e.is_not_found() => Err(Failure::new(format!(
            "no checkpoint {id}: it never existed, was deleted, or its execution was cleared; \
             see `ckpt history {}`",
            id.execution_id()
        ))
        .into()),
        Err(e) => Err(e).with_context(|| format!("loading checkpoint {id}")),
    }
}

/// Fails unless `execution` has at least one live checkpoint.
pub(crate) async fn require_execution(store: &Store, execution: &str) -> CliResult {
    let any = store
        .history(execution, HistoryQuery::default().limit(1))
        .await
        .with_context(|| format!("reading the history of {execution}"))?;
    if any.is_empty() {
        return Err(Failure::new(format!(
            "no execution {execution:?}: it has no checkpoints (it never existed, was cleared, or \
             all its checkpoints were deleted); see `ckpt executions`"
        ))
        .into());
    }
    Ok(())
}

/// Milliseconds since the Unix epoch (0 before it).
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The header fields every JSON output of a checkpoint carries.
pub(crate) struct Head<'a> {
    pub id: &'a CheckpointId,
    pub node: &'a str,
    pub version: u64,
    pub timestamp: SystemTime,
    pub parent: Option<&'a CheckpointId>,
    pub metadata: &'a Metadata,
    pub state_size: u64,
}

impl<'a> From<&'a Checkpoint> for Head<'a> {
    fn from(c: &'a Checkpoint) -> Self {
        Head {
            id: &c.id,
            node: &c.node_name,
            version: c.version,
            timestamp: c.timestamp,
            parent: c.parent.as_ref(),
            metadata: &c.metadata,
            state_size: c.state_size(),
        }
    }
}

impl<'a> From<&'a CheckpointHeader> for Head<'a> {
    fn from(h: &'a CheckpointHeader) -> Self {
        Head {
            id: &h.id,
            node: &h.node_name,
            version: h.version,
            timestamp: h.timestamp,
            parent: h.parent.as_ref(),
            metadata: &h.metadata,
            state_size: h.state_size,
        }
    }
}

impl Head<'_> {
    /// `{"id", "execution_id", "node", "version", "time" (UTC), "timestamp_ms", "parent",
    /// "metadata", "state_size"}`.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id.to_string(),
            "execution_id": self.id.execution_id(),
            "node": self.node,
            "version": self.version,
            "time": fmt::utc(self.timestamp),
            "timestamp_ms": millis(self.timestamp),
            "parent": self.parent.map(ToString::to_string),
            "metadata": self.metadata,
            "state_size": self.state_size,
        })
    }
}

/// What kind of JSON value this is, for messages: `an array of 4 elements`, `a string`, ...
fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(_) => "a boolean".into(),
        Value::Number(_) => "a number".into(),
        Value::String(_) => "a string".into(),
        Value::Array(a) => format!(
            "an array of {} element{}",
            a.len(),
            if a.len() == 1 { "" } else { "s" }
        ),
        Value::Object(m) => {
            let keys: Vec<&str> = m.keys().take(8).map(String::as_str).collect();
            let more = if m.len() > keys.len() { ", ..." } else { "" };
            format!("a map with keys {}{more}", keys.join(", "))
        }
    }
}

/// Splits a dot path into segments; the empty path (or `.`) is the whole value.
pub(crate) fn segments(path: &str) -> Vec<&str> {
    let path = path.trim();
    if path.is_empty() || path == "." {
        return Vec::new();
    }
    path.split('.').collect()
}

/// The part of `root` at a dot path, or a message naming the first segment that does not exist
/// and what kind of value was there.
pub(crate) fn select<'v>(root: &'v Value, path: &str) -> Result<&'v Value, String> {
    let mut current = root;
    let mut walked = String::new();
    for seg in segments(path) {
        let here = if walked.is_empty() {
            "the state".to_owned()
        } else {
            format!("`{walked}`")
        };
        let next = match current {
            Value::Object(m) => m.get(seg),
            Value::Array(a) => seg.parse::<usize>().ok().and_then(|i| a.get(i)),
            _ => None,
        };
        match next {
            Some(v) => current = v,
            None => {
                let why = match current {
                    Value::Array(_) if seg.parse::<usize>().is_err() => {
                        "is not an array index".to_owned()
                    }
                    Value::Array(_) | Value::Object(_) => "does not exist".to_owned(),
                    _ => "cannot be looked up".to_owned(),
                };
                return Err(format!(
                    "segment `{seg}` of path {path:?} {why}: {here} is {}",
                    kind(current)
                ));
            }
        }
        if !walked.is_empty() {
            walked.push('.');
        }
        walked.push_str(seg);
    }
    Ok(current)
}

/// Runs `ckpt show`.
pub async fn run(args: ShowArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let cp = load_checkpoint(&store, &args.id).await?;
    let state = cp
        .state_json()
        .with_context(|| format!("reading the state of {}", cp.id))?;
    let part = match &args.path {
        Some(path) => Some(
            select(&state, path)
                .map_err(|why| Failure::new(format!("in checkpoint {}: {why}", cp.id)))?,
        ),
        None => None,
    };
    let writes = store
        .writes(&cp.id)
        .await
        .with_context(|| format!("reading the writes of {}", cp.id))?;
    if args.json {
        let mut doc = Head::from(&cp).to_json();
        doc["writes"] = writes
            .iter()
            .map(|w| {
                json!({
                    "seq": w.seq,
                    "task": w.task,
                    "channel": w.channel,
                    "metadata": w.metadata,
                    "value": w.value_json(),
                })
            })
            .collect();
        match (&args.path, part) {
            (Some(path), Some(v)) => {
                doc["path"] = json!(path);
                doc["value"] = v.clone();
            }
            _ => doc["state"] = state.clone(),
        }
        say!("{doc}")?;
        return Ok(());
    }
    say!("checkpoint {}", cp.id)?;
    let mut table = Table::new(&["", ""]);
    let rows: [(&str, String); 6] = [
        ("node", cp.node_name.clone()),
        ("version", cp.version.to_string()),
        ("time", format!("{} UTC", fmt::utc(cp.timestamp))),
        (
            "parent",
            cp.parent
                .as_ref()
                .map_or_else(|| "(none)".to_owned(), ToString::to_string),
        ),
        ("metadata", fmt::metadata(&cp.metadata)),
        ("state", fmt::bytes(cp.state_size())),
    ];
    for (k, v) in rows {
        table.row(vec![k.to_owned(), v]);
    }
    // Skip the (empty) title row.
    for line in table.lines("  ").into_iter().skip(1) {
        say!("{line}")?;
    }
    say!("")?;
    let (title, value) = match (&args.path, part) {
        (Some(path), Some(v)) => (format!("state at {path}:"), v),
        _ => ("state:".to_owned(), &state),
    };
    say!("{title}")?;
    let pretty = serde_json::to_string_pretty(value).context("formatting the state as JSON")?;
    say!("{pretty}")?;
    if !writes.is_empty() {
        say!("")?;
        say!(
            "writes ({}): pending writes, task results, interrupts and answers",
            writes.len()
        )?;
        let mut table = Table::new(&["seq", "task", "channel", "metadata", "value"]);
        for w in &writes {
            table.row(vec![
                w.seq.to_string(),
                w.task.clone(),
                w.channel.clone(),
                fmt::metadata(&w.metadata),
                ckpt::diff::shorten(&w.value_json()),
            ]);
        }
        for line in table.lines("  ") {
            say!("{line}")?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selects_paths_and_explains_misses() {
        let v = json!({"messages": ["a", "b"], "plan": {"steps": [{"done": true}]}});
        assert_eq!(select(&v, "messages.1").ok(), Some(&json!("b")));
        assert_eq!(select(&v, "plan.steps.0.done").ok(), Some(&json!(true)));
        assert_eq!(select(&v, "").ok(), Some(&v));
        let e = select(&v, "messages.5").unwrap_err();
        assert!(
            e.contains("`5`") && e.contains("`messages` is an array of 2 elements"),
            "{e}"
        );
        let e = select(&v, "plan.nope.x").unwrap_err();
        assert!(
            e.contains("`nope`") && e.contains("`plan` is a map with keys steps"),
            "{e}"
        );
        let e = select(&v, "plan.steps.0.done.x").unwrap_err();
        assert!(e.contains("`plan.steps.0.done` is a boolean"), "{e}");
    }
}
