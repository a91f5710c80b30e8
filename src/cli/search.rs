//! `ckpt search`: checkpoints of every execution whose state contains a text, filtered by
//! metadata, node, time and execution-id prefix, newest first, a page at a time.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::Args;
use serde_json::{json, Value};

use ckpt::backend::retry::parse_duration;
use ckpt::{SearchMethod, SearchQuery};

use super::diff::show_path;
use super::fmt::{self, Table};
use super::show::open_store;
use super::{say, CliResult, Context as _, Failure, Global};

/// Options of `ckpt search`.
#[derive(Debug, Args)]
pub struct SearchArgs {
    /// Words to find in any string of a state (each must begin a word there, case-insensitive:
    /// `ord` finds "Order"); a part in double quotes is a phrase (consecutive words). Leave it
    /// out to list checkpoints by the other conditions alone. Exit code 1 when nothing matches
    #[arg(value_name = "TEXT")]
    pub text: Option<String>,
    /// A metadata condition: KEY=VALUE, KEY!=VALUE, KEY>VALUE, KEY>=VALUE, KEY<VALUE or
    /// KEY<=VALUE (VALUE read as JSON when it parses: step>10 compares numbers); repeatable,
    /// all must hold
    #[arg(long = "where", value_name = "CONDITION")]
    pub conditions: Vec<String>,
    /// Only checkpoints saved by this node
    #[arg(long)]
    pub node: Option<String>,
    /// Only checkpoints saved within this long before now: a number and a unit, s, m, h or
    /// d (e.g. 7d)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub since: Option<Duration>,
    /// Only checkpoints saved longer ago than this (same units as --since)
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub before: Option<Duration>,
    /// Only executions whose id starts with this
    #[arg(long, value_name = "PREFIX")]
    pub exec_prefix: Option<String>,
    /// At most this many results (a page; the next page's cursor is printed)
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// Continue after a page: the cursor it printed
    #[arg(long)]
    pub cursor: Option<String>,
    /// Print one JSON document instead: {"query", "method" ("scan", or "index" on a store
    /// `ckpt reindex` indexed), "states_read", "hits":
    /// [{"id", "execution", "version", "node", "time", "path", "snippet"}], "next_cursor"}
    #[arg(long)]
    pub json: bool,
}

fn ago(age: Duration) -> SystemTime {
    SystemTime::now().checked_sub(age).unwrap_or(UNIX_EPOCH)
}

/// The library query the options describe.
fn query(args: &SearchArgs) -> CliResult<SearchQuery> {
    let mut q = match &args.text {
        Some(text) => SearchQuery::text(text),
        None => SearchQuery::new(),
    };
    for c in &args.conditions {
        q = q.metadata(c)?;
    }
    if let Some(node) = &args.node {
        q = q.node(node.clone());
    }
    if let Some(age) = args.since {
        q = q.since(ago(age));
    }
    if let Some(age) = args.before {
        q = q.until(ago(age));
    }
    if let Some(prefix) = &args.exec_prefix {
        q = q.execution_prefix(prefix.clone());
    }
    if let Some(cursor) = &args.cursor {
        q = q.cursor(cursor)?;
    }
    Ok(q.limit(args.limit))
}

/// Runs `ckpt search`.
pub async fn run(args: SearchArgs, global: &Global) -> CliResult {
    let q = query(&args)?;
    let store = open_store(global).await?;
    let page = store.search(&q).await.context("searching the store")?;
    let method = match page.method {
        SearchMethod::Scan => "scan",
        _ => "index",
    };
    if args.json {
        let hits: Vec<Value> = page
            .hits
            .iter()
            .map(|h| {
                json!({
                    "id": h.id.to_string(),
                    "execution": h.id.execution_id(),
                    "version": h.id.version(),
                    "node": h.node_name,
                    "time": fmt::utc(h.timestamp),
                    "path": h.path,
                    "snippet": h.snippet,
                })
            })
            .collect();
        let doc = json!({
            "query": {
                "text": args.text,
                "where": args.conditions,
                "node": args.node,
                "exec_prefix": args.exec_prefix,
            },
            "method": method,
            "states_read": page.states_read,
            "hits": hits,
            "next_cursor": page.next_cursor,
        });
        say!("{doc}")?;
    } else if !page.hits.is_empty() {
        let mut table = Table::new(&["ID", "NODE", "TIME (UTC)", "WHERE", "SNIPPET"]);
        for h in &page.hits {
            table.row(vec![
                h.id.to_string(),
                h.node_name.clone(),
                fmt::utc(h.timestamp),
                h.path.as_deref().map(show_path).unwrap_or("-").to_owned(),
                h.snippet.clone().unwrap_or_default().replace('\n', " "),
            ]);
        }
        for line in table.lines("") {
            say!("{line}")?;
        }
        say!("")?;
        say!(
            "{} result{} ({method}: {} states read){}",
            page.hits.len(),
            if page.hits.len() == 1 { "" } else { "s" },
            page.states_read,
            match &page.next_cursor {
                Some(c) => format!("; more with --cursor {c}"),
                None => String::new(),
            }
        )?;
    }
    if page.hits.is_empty() {
        return Err(Failure::new("no checkpoint matches the search".to_owned()).into());
    }
    Ok(())
}
