//! `ckpt history`: an execution's checkpoints, newest first, optionally filtered.

use clap::Args;
use serde_json::Value;

use ckpt::HistoryQuery;

use super::fmt::{self, Table};
use super::show::{open_store, require_execution, Head};
use super::{say, CliResult, Context as _, Global};

/// Options of `ckpt history`.
#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// The execution id
    #[arg(value_name = "EXEC")]
    pub execution: String,
    /// Show at most N checkpoints (the newest)
    #[arg(long, value_name = "N")]
    pub limit: Option<usize>,
    /// Show only versions strictly below V (page back through a long history)
    #[arg(long, value_name = "V")]
    pub before: Option<u64>,
    /// Show only checkpoints whose metadata KEY equals VALUE; VALUE is read as JSON when it
    /// parses (step=3 matches the number 3, done=true the boolean) and as a string otherwise
    /// (source=loop). Repeatable: all must hold
    #[arg(long = "where", value_name = "KEY=VALUE", value_parser = parse_key_value)]
    pub filters: Vec<(String, Value)>,
    /// Show only checkpoints saved by node NAME
    #[arg(long, value_name = "NAME")]
    pub node: Option<String>,
    /// Print one JSON array instead, newest first, one object per checkpoint: id, execution_id,
    /// node, version, time (UTC), timestamp_ms, parent, metadata, state_size, stored_size
    #[arg(long)]
    pub json: bool,
    /// Only the branch ending at this checkpoint (VERSION or EXEC@VERSION): it, its parent, its
    /// parent's parent... back to the root, without the versions of other branches.
    #[arg(long, value_name = "ID")]
    pub branch: Option<String>,
}

/// A value given on the command line: JSON if it parses as JSON, else the text as a string.
pub(crate) fn parse_value(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|_| Value::String(text.to_owned()))
}

/// `KEY=VALUE`, the value read with [`parse_value`].
fn parse_key_value(s: &str) -> Result<(String, Value), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_owned(), parse_value(v))),
        _ => Err(format!(
            "{s:?} is not KEY=VALUE (e.g. step=3 or source=loop)"
        )),
    }
}

/// Tells, on stderr, which frames of `exec` are damaged and which versions cannot be loaded
/// (they are not in the history).
fn report_damage(exec: &str, damage: &ckpt::store::ExecutionDamage) {
    use std::io::Write as _;
    let mut err = std::io::stderr().lock();
    let _ = writeln!(
        err,
        "warning: execution {exec} is damaged; only its readable versions are listed"
    );
    for (seq, reason) in &damage.frames {
        let _ = writeln!(err, "  frame seq {seq} is damaged: {reason}");
    }
    for (version, needs) in &damage.unreadable {
        let _ = writeln!(
            err,
            "  version {version} cannot be loaded: its state needs the damaged frame seq {needs}"
        );
    }
}

/// The checkpoint `--branch` names: a version of `exec`, or `exec@VERSION`.
fn branch_id(exec: &str, text: &str) -> CliResult<ckpt::CheckpointId> {
    let id = match text.parse::<u64>() {
        Ok(version) => ckpt::CheckpointId::new(exec, version)
            .with_context(|| format!("--branch {text} is not a version of {exec}"))?,
        Err(_) => super::delete::parse_id(text)?,
    };
    if id.execution_id() != exec {
        return Err(super::Failure::new(format!(
            "--branch {id} is a checkpoint of another execution than {exec}"
        ))
        .into());
    }
    Ok(id)
}

/// Runs `ckpt history`.
pub async fn run(args: HistoryArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let exec = &args.execution;
    let mut query = HistoryQuery::default();
    if let Some(n) = args.limit {
        query = query.limit(n);
    }
    if let Some(v) = args.before {
        query = query.before(v);
    }
    if let Some(node) = &args.node {
        query = query.node(node.clone());
    }
    for (k, v) in &args.filters {
        query = query.metadata(k.clone(), v.clone());
    }
    let headers = match &args.branch {
        None => store.history(exec, query).await,
        Some(id) => {
            let id = branch_id(exec, id)?;
            store.branch(&id, query).await
        }
    }
    .with_context(|| format!("reading the history of {exec}"))?;
    let damage = store
        .damage(exec)
        .await
        .with_context(|| format!("reading the history of {exec}"))?;
    if headers.is_empty() && damage.is_empty() {
        // Nothing matched: say whether the execution itself is unknown.
        require_execution(&store, exec).await?;
    }
    if !damage.is_empty() {
        // On stderr: it must be seen, and must not break the JSON on stdout.
        report_damage(exec, &damage);
    }
    if args.json {
        let doc: Vec<Value> = headers
            .iter()
            .map(|h| {
                let mut v = Head::from(h).to_json();
                v["stored_size"] = h.stored_size.into();
                v
            })
            .collect();
        say!("{}", Value::Array(doc))?;
        return Ok(());
    }
    if headers.is_empty() {
        say!("no checkpoints of {exec} match")?;
        return Ok(());
    }
    let mut table = Table::new(&[">VERSION", "ID", "NODE", "TIME (UTC)", ">SIZE", "METADATA"]);
    for h in &headers {
        table.row(vec![
            h.version.to_string(),
            h.id.to_string(),
            h.node_name.clone(),
            fmt::utc(h.timestamp),
            fmt::bytes(h.state_size),
            fmt::metadata(&h.metadata),
        ]);
    }
    for line in table.lines("") {
        say!("{line}")?;
    }
    Ok(())
}
