//! `ckpt delete`: deletes one checkpoint, after confirmation. Also the confirmation prompt that
//! `clear` and `prune` share.

use std::io::{BufRead as _, IsTerminal as _, Write as _};

use clap::Args;
use serde::Serialize;

use ckpt::{CheckpointHeader, CheckpointId, HistoryQuery, Store};

use super::fmt;
use super::{say, CliResult, Context, Failure, Global};

/// Options of `ckpt delete`.
#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// The checkpoint to delete, as EXEC@VERSION (e.g. exec-1@3)
    #[arg(value_name = "ID")]
    pub id: String,
    /// Delete without asking. Required when stdin is not a terminal (scripts, pipes); on a
    /// terminal, without it ckpt shows the checkpoint and asks [y/N]
    #[arg(long, short = 'y')]
    pub yes: bool,
    /// Print the result as one JSON document: {"deleted": ID, "node": ..., "saved": ...}
    #[arg(long)]
    pub json: bool,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    deleted: String,
    node: String,
    saved: String,
}

pub(crate) use super::show::open_store;

/// Parses an `EXEC@VERSION` argument.
pub(crate) fn parse_id(text: &str) -> CliResult<CheckpointId> {
    text.parse::<CheckpointId>().with_context(|| {
        format!(
            "{} is not a checkpoint id: write EXEC@VERSION, e.g. exec-1@3",
            ckpt::checkpoint::quote_name(text)
        )
    })
}

/// The header of a live checkpoint, or an error saying it does not exist.
pub(crate) async fn live_header(store: &Store, id: &CheckpointId) -> CliResult<CheckpointHeader> {
    let exec = id.execution_id();
    let found = store
        .history(
            exec,
            HistoryQuery::default().before(id.version() + 1).limit(1),
        )
        .await
        .with_context(|| format!("reading the history of execution {exec}"))?;
    match found.into_iter().next() {
        Some(h) if h.version == id.version() => Ok(h),
        _ => Err(Failure::new(format!(
            "no checkpoint {id}: it never existed, or was deleted or cleared (list the live ones \
             with `ckpt history {exec}`); nothing deleted"
        ))
        .into()),
    }
}

/// Asks before a destructive change. With `yes`, goes ahead. Otherwise, when stdin is a
/// terminal, prints `question` and ` [y/N] ` on stderr and reads a line: only `y` or `yes`
/// goes ahead; anything else is an error ("nothing deleted"). When stdin is not a terminal,
/// refuses.
pub(crate) fn confirm(question: &str, yes: bool) -> CliResult {
    if yes {
        return Ok(());
    }
    let stdin = std::io::stdin();
    if !stdin.is_terminal() {
        return Err(Failure::new(
            "refusing to delete without confirmation: stdin is not a terminal; pass --yes",
        )
        .into());
    }
    {
        let mut err = std::io::stderr().lock();
        write!(err, "{question} [y/N] ").context("writing the confirmation prompt")?;
        err.flush().context("writing the confirmation prompt")?;
    }
    let mut answer = String::new();
    stdin
        .lock()
        .read_line(&mut answer)
        .context("reading the answer to the confirmation prompt")?;
    match answer.trim().to_ascii_lowercase().as_str() {
        "y" | "yes" => Ok(()),
        _ => Err(Failure::new("not confirmed: nothing deleted").into()),
    }
}

/// Runs `ckpt delete`.
pub async fn run(args: DeleteArgs, global: &Global) -> CliResult {
    let id = parse_id(&args.id)?;
    let store = open_store(global).await?;
    let header = live_header(&store, &id).await?;
    let saved = fmt::utc(header.timestamp);
    confirm(
        &format!("delete {id} (node {}, saved {saved})?", header.node_name),
        args.yes,
    )?;
    store
        .delete(&id)
        .await
        .with_context(|| format!("deleting {id}"))?;
    store.flush().await.context("flushing the store")?;
    if args.json {
        let report = Report {
            deleted: id.to_string(),
            node: header.node_name,
            saved,
        };
        say!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        say!(
            "deleted {id} (node {}, saved {saved}); run `ckpt gc` to reclaim its space",
            header.node_name
        )?;
    }
    Ok(())
}
