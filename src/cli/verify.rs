//! `ckpt verify`: checks every frame, blob and live checkpoint (`Store::verify`), lists what is
//! damaged and what is still readable, and exits with a code that tells damage from
//! configuration.

use clap::Args;
use serde_json::json;

use ckpt::store::VerifyReport;
use ckpt::Error;

use super::{say, CliResult, Failure, Global};

/// Exit code: the store holds damage (listed on stdout).
pub const EXIT_DAMAGED: u8 = 1;
/// Exit code: the store could not be checked because of configuration: a missing or wrong key,
/// a URL that is not understood, no store there.
pub const EXIT_CONFIG: u8 = 3;
/// Exit code: the store could not be checked because it could not be read (a backend failure:
/// a server that does not answer, a file that cannot be opened).
pub const EXIT_UNREADABLE: u8 = 4;

/// Options of `ckpt verify`.
#[derive(Debug, Args)]
#[command(
    after_help = "Checks every frame of every execution's log (its checksum, which \
covers the execution id and sequence number, its seal in an encrypted store, its encoding, and \
that no frame is missing: a hole, or a lost tail below the log's next sequence number), every \
stored blob (its content hashes to its address), and rebuilds every live checkpoint. Lists each \
damaged place, then per execution the versions that are still readable.

Exit codes:
  0  no damage found
  1  damage found (listed on stdout), or the store is too damaged to open
  3  configuration: the store's key is missing or wrong (?key_env=VAR), the URL is not \
understood, or there is no store there; nothing was checked and nothing is known to be damaged
  4  the store could not be read (a backend failure: server unreachable, I/O error)
  2  usage error (bad arguments)"
)]
pub struct VerifyArgs {
    /// Print the result as one JSON document: {"ok": bool, "executions", "frames_checked",
    /// "blobs_checked", "checkpoints_checked", "problems": [{"kind":
    /// "frame"|"log"|"checkpoint"|"blob", "message"}], "readable": [{"execution", "readable":
    /// [versions], "unreadable": [versions], "damaged_frames": [seqs]}]}
    #[arg(long)]
    pub json: bool,
}

/// Runs `ckpt verify`.
pub async fn run(args: VerifyArgs, global: &Global) -> CliResult {
    let url = global.store_url();
    let shown = ckpt::url::redact(url);
    let store = ckpt::Store::builder(url)
        .create_if_missing(false)
        .open()
        .await
        .map_err(|e| {
            let what = if e.is_not_found() {
                format!(
                    "no store at {shown}: create one with `ckpt demo` or `ckpt import`, or \
                     check --store / CKPT_STORE"
                )
            } else {
                format!("opening the store {shown}")
            };
            classified(what, e)
        })?;
    super::watch_metrics(url, &store);
    let report = store
        .verify()
        .await
        .map_err(|e| classified("verifying the store".into(), e))?;
    if args.json {
        say!("{}", serde_json::to_string_pretty(&to_json(&report))?)?;
    } else {
        print_human(&report)?;
    }
    if report.is_ok() {
        return Ok(());
    }
    let damaged = report.executions.iter().filter(|e| e.is_damaged()).count();
    Err(Failure::new(format!(
        "the store is damaged: {} problem(s) in {damaged} execution(s) and {} blob(s), listed \
         above with what is still readable (`ckpt salvage --to URL` copies it out)",
        report.problems().len(),
        report.damaged_blobs.len()
    ))
    .with_exit_code(EXIT_DAMAGED)
    .into())
}

/// `e` as a failure whose exit code says what kind of problem stopped verification.
fn classified(what: String, e: Error) -> Box<dyn std::error::Error + Send + Sync> {
    let (code, kind) = match &e {
        Error::Corrupt { .. } => (EXIT_DAMAGED, "damage"),
        Error::Decrypt { .. }
        | Error::InvalidUrl { .. }
        | Error::InvalidInput(_)
        | Error::NotFound { .. } => (EXIT_CONFIG, "configuration, not damage"),
        _ => (EXIT_UNREADABLE, "the store could not be read"),
    };
    Failure::new(format!("{what} ({kind})"))
        .caused_by(e)
        .with_exit_code(code)
        .into()
}

fn print_human(report: &VerifyReport) -> CliResult {
    say!(
        "checked {} frame(s) in {} execution(s), {} blob(s), {} live checkpoint(s)",
        report.frames_checked,
        report.executions.len(),
        report.blobs_checked,
        report.checkpoints_checked
    )?;
    if report.is_ok() {
        say!("ok: no damage found")?;
        return Ok(());
    }
    let problems = report.problems();
    say!("{} problem(s):", problems.len())?;
    for (kind, message) in &problems {
        say!("  {kind:<11}  {message}")?;
    }
    say!("still readable:")?;
    for e in &report.executions {
        let live = e.readable.len() + e.unreadable.len();
        let what = if e.readable.is_empty() {
            format!("nothing (of {live} live checkpoint(s))")
        } else {
            format!(
                "version(s) {} ({} of {live} live checkpoint(s))",
                ckpt::store::seq_list(&e.readable),
                e.readable.len()
            )
        };
        let mark = if e.is_damaged() { "  (damaged)" } else { "" };
        say!("  {}: {what}{mark}", e.execution_id)?;
    }
    Ok(())
}

fn to_json(report: &VerifyReport) -> serde_json::Value {
    let problems: Vec<_> = report
        .problems()
        .into_iter()
        .map(|(kind, message)| json!({ "kind": kind, "message": message }))
        .collect();
    let readable: Vec<_> = report
        .executions
        .iter()
        .map(|e| {
            json!({
                "execution": e.execution_id,
                "readable": e.readable,
                "unreadable": e.unreadable.iter().map(|u| u.version).collect::<Vec<_>>(),
                "damaged_frames": e.damaged_frames.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "ok": report.is_ok(),
        "executions": report.executions.len(),
        "frames_checked": report.frames_checked,
        "blobs_checked": report.blobs_checked,
        "checkpoints_checked": report.checkpoints_checked,
        "problems": problems,
        "readable": readable,
    })
}
