//! `ckpt grep`: the versions of an execution whose state contains a text, or whose state at a
//! dot path equals a value, and the first version it was seen in.

use clap::Args;
use serde_json::{json, Value};

use super::diff::show_path;
use super::fmt::{self, Table};
use super::history::parse_value;
use super::show::{open_store, require_execution, select, Head};
use super::{say, CliResult, Context as _, Failure, Global};

/// Options of `ckpt grep`.
#[derive(Debug, Args)]
pub struct GrepArgs {
    /// The execution id
    #[arg(value_name = "EXEC")]
    pub execution: String,
    /// A text to find anywhere in the state (in string values, map keys, or the state as
    /// JSON), or PATH=VALUE: the state at the dot path PATH (e.g. plan.steps.0.done) equals
    /// VALUE, read as JSON when it parses (step=3 is the number 3) and as a string otherwise.
    /// Exit code 1 when no version matches
    #[arg(value_name = "PATTERN")]
    pub pattern: String,
    /// Print one JSON document instead: {"execution", "pattern", "mode" ("text" or "path"),
    /// "matches": [header fields and "paths" (where the text was found)], "first": the first
    /// match or null}
    #[arg(long)]
    pub json: bool,
}

/// What to look for.
pub(crate) enum Pattern {
    /// A substring of string values, keys, or the serialized state.
    Text(String),
    /// The value at a dot path.
    Path { path: String, value: Value },
}

impl Pattern {
    pub(crate) fn parse(pattern: &str) -> Pattern {
        if let Some((path, value)) = pattern.split_once('=') {
            let is_dot_path = !path.is_empty()
                && path.split('.').all(|seg| {
                    !seg.is_empty()
                        && seg
                            .chars()
                            .all(|c| c.is_alphanumeric() || c == '_' || c == '-')
                });
            if is_dot_path {
                return Pattern::Path {
                    path: path.to_owned(),
                    value: parse_value(value),
                };
            }
        }
        Pattern::Text(pattern.to_owned())
    }

    /// Where in `state` this pattern matches (paths; an empty list when it matches only the
    /// serialized state as a whole), or `None` when it does not.
    pub(crate) fn matches(&self, state: &Value) -> Option<Vec<String>> {
        match self {
            Pattern::Path { path, value } => {
                (select(state, path).ok() == Some(value)).then(|| vec![path.clone()])
            }
            Pattern::Text(text) => {
                let mut paths = Vec::new();
                find_text(state, text, "", &mut paths);
                if !paths.is_empty() || state.to_string().contains(text.as_str()) {
                    Some(paths)
                } else {
                    None
                }
            }
        }
    }
}

/// Collects the paths of keys and scalar values containing `text`.
fn find_text(v: &Value, text: &str, path: &str, out: &mut Vec<String>) {
    let child = |path: &str, seg: &str| {
        if path.is_empty() {
            seg.to_owned()
        } else {
            format!("{path}.{seg}")
        }
    };
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = child(path, k);
                if k.contains(text) {
                    out.push(p.clone());
                }
                find_text(x, text, &p, out);
            }
        }
        Value::Array(a) => {
            for (i, x) in a.iter().enumerate() {
                let p = child(path, &i.to_string());
                find_text(x, text, &p, out);
            }
        }
        Value::String(s) => {
            if s.contains(text) {
                out.push(path.to_owned());
            }
        }
        other => {
            if other.to_string().contains(text) {
                out.push(path.to_owned());
            }
        }
    }
}

/// At most this many paths are listed per version in human output.
const SHOWN_PATHS: usize = 3;

/// Runs `ckpt grep`.
pub async fn run(args: GrepArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let exec = &args.execution;
    require_execution(&store, exec).await?;
    let pattern = Pattern::parse(&args.pattern);
    let all = store
        .list(exec)
        .await
        .with_context(|| format!("reading the checkpoints of {exec}"))?;
    let mut matches = Vec::new();
    for cp in &all {
        let state = cp
            .state_json()
            .with_context(|| format!("reading the state of {}", cp.id))?;
        if let Some(paths) = pattern.matches(&state) {
            matches.push((cp, paths));
        }
    }
    let what = match &pattern {
        Pattern::Text(t) => format!("contains {t:?}"),
        Pattern::Path { path, value } => format!("has {path} = {value}"),
    };
    if args.json {
        let list: Vec<Value> = matches
            .iter()
            .map(|(cp, paths)| {
                let mut v = Head::from(*cp).to_json();
                v["paths"] = json!(paths);
                v
            })
            .collect();
        let doc = json!({
            "execution": exec,
            "pattern": args.pattern,
            "mode": match pattern { Pattern::Text(_) => "text", Pattern::Path { .. } => "path" },
            "first": list.first().cloned(),
            "matches": list,
        });
        say!("{doc}")?;
    } else if !matches.is_empty() {
        let mut table = Table::new(&[">VERSION", "ID", "NODE", "TIME (UTC)", "WHERE"]);
        for (cp, paths) in &matches {
            let mut at: Vec<&str> = paths
                .iter()
                .take(SHOWN_PATHS)
                .map(|p| show_path(p))
                .collect();
            let more = paths.len().saturating_sub(SHOWN_PATHS);
            let more = if more > 0 {
                format!(" (+{more} more)")
            } else {
                String::new()
            };
            if at.is_empty() {
                at.push("(the state as JSON)");
            }
            table.row(vec![
                cp.version.to_string(),
                cp.id.to_string(),
                cp.node_name.clone(),
                fmt::utc(cp.timestamp),
                format!("{}{more}", at.join(", ")),
            ]);
        }
        for line in table.lines("") {
            say!("{line}")?;
        }
        if let Some((first, _)) = matches.first() {
            say!("")?;
            say!(
                "first seen in {} ({}, {} UTC); {} of {} live versions match ({what})",
                first.id,
                first.node_name,
                fmt::utc(first.timestamp),
                matches.len(),
                all.len()
            )?;
        }
    }
    if matches.is_empty() {
        return Err(Failure::new(format!(
            "no version of {exec} {what} (searched {} live version{})",
            all.len(),
            if all.len() == 1 { "" } else { "s" }
        ))
        .into());
    }
    Ok(())
}
