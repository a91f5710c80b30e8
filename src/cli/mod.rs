//! The `ckpt` command line: global options, the subcommands (one module each), and how errors
//! are reported.
//!
//! Adding a subcommand: write `src/cli/NAME.rs` with an `Args` struct (clap derive) and an
//! `async fn run(args, &Global) -> CliResult`, then add a variant to [`Command`] and a line to
//! [`Command::run`].

mod bench;
mod clear;
mod compact;
mod copy;
mod delete;
mod demo;
mod diff;
mod error;
mod executions;
mod export;
mod fmt;
mod fork;
mod gc;
mod grep;
mod history;
mod import;
mod keys;
mod log;
mod progress;
mod prune;
mod reindex;
mod salvage;
mod search;
mod show;
mod stats;
mod ui;
mod verbose;
mod verify;
mod watch;

use std::process::ExitCode;

use clap::{ArgAction, Args, Parser, Subcommand};

pub use error::{CliResult, Context, Failure};

use ckpt::Store;

/// The store used when neither `--store` nor `CKPT_STORE` names one: the embedded sled database
/// in `./ckpt-data`.
pub const DEFAULT_STORE: &str = "./ckpt-data";

/// Milliseconds since the Unix epoch (0 if the clock is before it): unique-enough ids per run.
pub fn unix_millis() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis())
}

/// Writes one line to stdout, returning an error (instead of panicking) when stdout is gone.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}
pub(crate) use say;

/// Durable, time-travelling execution state for agent and workflow runtimes.
///
/// ckpt saves a checkpoint after every step of an execution into an append-only, checksummed,
/// content-addressed log, and loads, lists and resumes from any of them.
#[derive(Debug, Parser)]
#[command(name = "ckpt", version, propagate_version = true)]
#[command(
    after_help = "Store URLs: memory:// (in process, gone on exit), sled://PATH or a plain \
directory PATH (embedded, durable; sled://PATH?sync=false skips the flush after each save)."
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Options every subcommand takes.
#[derive(Debug, Clone, Args)]
pub struct Global {
    /// Where checkpoints are stored: memory://, sled://PATH[?sync=false], a directory path
    /// (sled), sqlite://PATH, postgres://..., redis://..., redis+cluster://...; add
    /// ?key_env=VAR for an encrypted store [default: ./ckpt-data; for `bench`, a fresh
    /// temporary directory]
    #[arg(long, global = true, env = "CKPT_STORE", value_name = "URL")]
    pub store: Option<String>,

    /// Print the store's spans on stderr as they close (operations with their execution,
    /// version, bytes, outcome and time; -vv adds every backend call), and its metrics when
    /// the command ends. stdout is unchanged
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
}

impl Global {
    /// The store URL to use: `--store`, else `CKPT_STORE`, else [`DEFAULT_STORE`].
    pub fn store_url(&self) -> &str {
        self.store.as_deref().unwrap_or(DEFAULT_STORE)
    }
}

/// Opens the store at `url` for a command that reads or changes what is stored, never creating
/// one: a missing store (a mistyped path, `sqlite://` of a file that is not there, a database
/// never written to) is an error saying so, instead of a new empty store and a misleading "no
/// executions". Only the commands that write new checkpoints create a store: `demo`, `import`,
/// `copy` (its target) and `bench`.
pub(crate) async fn open_existing(url: &str) -> CliResult<Store> {
    opened(
        url,
        Store::builder(url).create_if_missing(false).open().await,
    )
}

/// Opens the store at `url`, creating it if it does not exist (commands that write).
pub(crate) async fn open_or_create(url: &str) -> CliResult<Store> {
    opened(url, Store::open(url).await)
}

/// Remembers a store the command opened (other than through [`open_existing`] and
/// [`open_or_create`]), so that `-v` prints its metrics when the command ends.
pub(crate) fn watch_metrics(url: &str, store: &Store) {
    verbose::opened(url, store);
}

/// The outcome of opening `url`, its error saying which store (without its password) and, for
/// a missing store, what to do.
fn opened(url: &str, outcome: ckpt::Result<Store>) -> CliResult<Store> {
    let shown = ckpt::url::redact(url);
    match outcome {
        Ok(store) => {
            verbose::opened(url, &store);
            Ok(store)
        }
        Err(e) if e.is_not_found() => Err(e).context(format!(
            "no store at {shown}: create one with `ckpt demo` or `ckpt import`, or check \
             --store / CKPT_STORE"
        )),
        Err(e) => Err(e).context(format!("opening the store {shown}")),
    }
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// List every execution: checkpoints, latest version, last node, last saved, stored size.
    Executions(executions::ExecutionsArgs),
    /// Show an execution's checkpoints, newest first: version, id, node, time, size, metadata.
    History(history::HistoryArgs),
    /// Show one checkpoint (ID or EXEC@VERSION): its header and its state, or a part of it.
    Show(show::ShowArgs),
    /// Show the structural difference between the states of two checkpoints.
    Diff(diff::DiffArgs),
    /// Show an execution's checkpoints oldest first; with -p, each with its diff to the previous.
    Log(log::LogArgs),
    /// Find the versions whose state contains a text (or matches PATH=VALUE), and the first.
    Grep(grep::GrepArgs),
    /// Find checkpoints of every execution by text in their state, metadata (step>10), node,
    /// time and execution-id prefix; newest first, a page at a time.
    Search(search::SearchArgs),
    /// Print checkpoints of an execution as they are saved (a live tail).
    Watch(watch::WatchArgs),
    /// Start a new execution from a copy of a checkpoint.
    Fork(fork::ForkArgs),
    /// Delete one checkpoint (asks for confirmation on a terminal; --yes for scripts).
    Delete(delete::DeleteArgs),
    /// Delete every checkpoint of an execution (asks for confirmation on a terminal; --yes for scripts).
    Clear(clear::ClearArgs),
    /// Apply retention: keep the latest N and/or delete checkpoints older than a duration.
    Prune(prune::PruneArgs),
    /// Reclaim the space of deleted and cleared checkpoints; report what was freed.
    Gc(gc::GcArgs),
    /// Build (or rebuild) the search index that answers `ckpt search` without reading every
    /// state; --drop removes it.
    Reindex(reindex::ReindexArgs),
    /// Check every frame, blob and live checkpoint; list what is damaged and what is readable
    /// (exit 1 on damage, 3 on a missing or wrong key).
    Verify(verify::VerifyArgs),
    /// Rewrite the store's storage so that nothing deleted (cleared, collected) can be read from its files.
    Compact(compact::CompactArgs),
    /// Print a new random encryption key (64 hex digits) and its id.
    Keygen(keys::KeygenArgs),
    /// Seal everything again with the store's newest key, so older keys can be dropped.
    Rekey(keys::RekeyArgs),
    /// Logical bytes offered vs bytes stored, per execution and in total.
    Stats(stats::StatsArgs),
    /// Write executions, exactly as stored, to a portable, checksummed bundle file.
    Export(export::ExportArgs),
    /// Read a bundle file into the store, keeping ids, versions, timestamps and metadata.
    Import(import::ImportArgs),
    /// Copy executions from one store to another (any backends), exactly as stored.
    Copy(copy::CopyArgs),
    /// Copy every readable checkpoint of a damaged store into another store; report what was left.
    Salvage(salvage::SalvageArgs),
    /// Serve a local web time-travel debugger over the store: executions, timelines with
    /// branches, states, diffs, grep, live updates. Prints the URL (with its access token)
    Ui(ui::UiArgs),
    /// Run a small research agent that saves a checkpoint after every step, crashes half way,
    /// and resumes from its latest checkpoint; then print its history.
    Demo(demo::DemoArgs),
    /// Measure saves and loads on a workload; print a summary, or one JSON line with --json.
    ///
    /// The conversation workload: --threads executions save concurrently, each --steps times;
    /// at step n the state holds every earlier message plus one new one of --message-bytes
    /// random letters. Then it times reads (medians): the latest checkpoint of each execution,
    /// a list of one execution, 50 random old versions, and 20 histories of 20 headers.
    ///
    /// JSON keys: workload, store, threads, steps, saves, seconds, saves_per_s,
    /// load_latest_ms, load_latest_cold_ms (from a store that has cached nothing), load_random_ms,
    /// list_ms, history_ms, bytes_logical (state offered),
    /// bytes_written (frames and blobs handed to the backend), bytes_stored (on disk: the
    /// directory of a sled store; null when the backend cannot tell). Refuses to write to
    /// executions that already have checkpoints.
    Bench(bench::BenchArgs),
}

impl Command {
    /// The execution ids, and the checkpoint ids as typed, that the command was given
    /// (`show` and `diff` get theirs checked by clap, as [`CheckpointId`] values).
    fn given_names(&self) -> (Vec<&str>, Vec<&str>) {
        fn one(s: &str) -> Vec<&str> {
            vec![s]
        }
        fn many(v: &[String]) -> Vec<&str> {
            v.iter().map(String::as_str).collect()
        }
        match self {
            Command::History(a) => (one(&a.execution), vec![]),
            Command::Log(a) => (one(&a.execution), vec![]),
            Command::Grep(a) => (one(&a.execution), vec![]),
            Command::Watch(a) => (one(&a.execution), vec![]),
            Command::Clear(a) => (one(&a.exec), vec![]),
            Command::Prune(a) => (a.exec.iter().map(String::as_str).collect(), vec![]),
            Command::Export(a) => (many(&a.executions), vec![]),
            Command::Copy(a) => (many(&a.executions), vec![]),
            Command::Fork(a) => (one(&a.new_exec), one(&a.id)),
            Command::Delete(a) => (vec![], one(&a.id)),
            _ => (vec![], vec![]),
        }
    }

    /// Checks the names the command was given before it runs, with the library's checks
    /// (whose messages show a long name shortened, see [`ckpt::checkpoint::shorten`]), so
    /// that no later message ("reading the history of NAME") echoes a name pasted by mistake
    /// in full.
    fn check_names(&self) -> CliResult {
        let (executions, checkpoints) = self.given_names();
        for exec in executions {
            ckpt::checkpoint::validate_execution_id(exec)?;
        }
        for id in checkpoints {
            delete::parse_id(id)?;
        }
        Ok(())
    }

    async fn run(self, global: &Global) -> CliResult {
        self.check_names()?;
        match self {
            Command::Demo(args) => demo::run(args, global).await,
            Command::Keygen(args) => keys::keygen(args, global).await,
            Command::Compact(args) => compact::run(args, global).await,
            Command::Rekey(args) => keys::rekey(args, global).await,
            Command::Bench(args) => bench::run(args, global).await,
            Command::Export(args) => export::run(args, global).await,
            Command::Import(args) => import::run(args, global).await,
            Command::Copy(args) => copy::run(args, global).await,
            Command::Salvage(args) => salvage::run(args, global).await,
            Command::Executions(args) => executions::run(args, global).await,
            Command::History(args) => history::run(args, global).await,
            Command::Show(args) => show::run(args, global).await,
            Command::Diff(args) => diff::run(args, global).await,
            Command::Log(args) => log::run(args, global).await,
            Command::Grep(args) => grep::run(args, global).await,
            Command::Search(args) => search::run(args, global).await,
            Command::Watch(args) => watch::run(args, global).await,
            Command::Fork(args) => fork::run(args, global).await,
            Command::Delete(args) => delete::run(args, global).await,
            Command::Clear(args) => clear::run(args, global).await,
            Command::Prune(args) => prune::run(args, global).await,
            Command::Gc(args) => gc::run(args, global).await,
            Command::Reindex(args) => reindex::run(args, global).await,
            Command::Verify(args) => verify::run(args, global).await,
            Command::Stats(args) => stats::run(args, global).await,
            Command::Ui(args) => ui::run(args, global).await,
        }
    }
}

/// Prints clap's error (or help, or version) and returns its exit code; a value clap refused is
/// shown shortened (clap repeats it whole: a 10 KB execution id would fill the screen).
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::{ContextKind, ContextValue};
    let long = match e.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) if v.len() > ckpt::checkpoint::SHOWN_NAME_CHARS => v,
        _ => e.exit(),
    };
    let text = e
        .render()
        .to_string()
        .replace(long.as_str(), &ckpt::checkpoint::shorten(long));
    eprint!("{text}");
    ExitCode::from(2)
}

/// Parses the command line, runs the command, and reports any error: `error: ...` on stderr,
/// then one `  caused by: ...` line per source, and exit code 1 (2 for usage errors, from clap;
/// `verify` has its own, see there).
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    verbose::install(cli.global.verbose);
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
        .and_then(|runtime| runtime.block_on(cli.command.run(&cli.global)));
    verbose::report();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // A closed pipe (`ckpt demo | head`) is the reader's choice, not a failure to report.
        Err(e) if error::is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            error::report(e.as_ref());
            ExitCode::from(error::exit_code(e.as_ref()))
        }
    }
}
