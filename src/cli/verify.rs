//! `ckpt verify`: checks every frame checksum and blob hash, then that every live checkpoint
//! can be rebuilt; exits 1 listing what is damaged.

use clap::Args;
use serde::Serialize;

use ckpt::codec::blob;

use super::delete::open_store;
use super::{say, CliResult, Context, Failure, Global};

/// Frames read per backend scan.
const PAGE: usize = 1024;

/// Options of `ckpt verify`.
///
/// Three passes: every frame of every execution's log (its checksum, which covers the
/// execution id and sequence number, its format, and a save's body); every stored blob (its
/// content hashes to its address); then every live checkpoint of every execution is rebuilt,
/// which finds logical damage (a delta that does not apply, a blob a live checkpoint needs that
/// is missing). Exits 0 when everything checks, 1 otherwise, after listing each problem.
#[derive(Debug, Args)]
#[command(
    after_help = "Three passes: every frame of every execution's log (its checksum, which covers the execution id and sequence number, its format, and a save's body); every stored blob (its content hashes to its address); then every live checkpoint of every execution is rebuilt, which finds logical damage (a delta that does not apply, a blob a live checkpoint needs that is missing). Exits 0 when everything checks, 1 otherwise, after listing each problem."
)]
pub struct VerifyArgs {
    /// Print the result as one JSON document: {"ok": bool, "executions", "frames_checked",
    /// "blobs_checked", "checkpoints_checked", "problems": [{"kind": "frame"|"blob"|"checkpoints",
    /// "message"}]}
    #[arg(long)]
    pub json: bool,
}

/// One thing found wrong.
#[derive(Debug, Serialize)]
struct Problem {
    /// `frame`, `blob` or `checkpoints`.
    kind: &'static str,
    /// The error, naming the execution and sequence, or the blob hash.
    message: String,
}

/// What `--json` prints.
#[derive(Debug, Serialize)]
struct Report {
    ok: bool,
    executions: usize,
    frames_checked: u64,
    blobs_checked: u64,
    checkpoints_checked: u64,
    problems: Vec<Problem>,
}

/// Runs `ckpt verify`.
pub async fn run(args: VerifyArgs, global: &Global) -> CliResult {
    let store = open_store(global).await?;
    let backend = store.backend().clone();
    let mut logs = store.execution_logs().await.context("listing the logs")?;
    logs.sort();
    let mut report = Report {
        ok: true,
        executions: logs.len(),
        frames_checked: 0,
        blobs_checked: 0,
        checkpoints_checked: 0,
        problems: Vec::new(),
    };

    let blobs = backend.list_blobs().await.context("listing the blobs")?;
    // Drawn only when stderr is a terminal (indicatif hides it otherwise).
    let progress = super::progress::bar((2 * logs.len() + blobs.len()) as u64, "verifying");
    for log in &logs {
        progress.inc(1);
        let mut from = 0;
        loop {
            let page = backend
                .scan(log, from, PAGE)
                .await
                .with_context(|| format!("reading the log of execution {log:?} from seq {from}"))?;
            let Some(&(last, _)) = page.last() else {
                break;
            };
            for (seq, bytes) in &page {
                report.frames_checked += 1;
                let checked = store.verify_frame(log, *seq, bytes).await;
                if let Err(e) = checked {
                    report.problems.push(Problem {
                        kind: "frame",
                        message: e.to_string(),
                    });
                }
            }
            if page.len() < PAGE {
                break;
            }
            from = last + 1;
        }
    }

    for hash in blobs {
        progress.inc(1);
        report.blobs_checked += 1;
        let stored = backend
            .get_blob(&hash)
            .await
            .with_context(|| format!("reading blob {}", blob::hex(&hash)))?;
        let problem = match stored {
            None => Some(format!(
                "blob {}: listed but could not be read (removed while verifying?)",
                blob::hex(&hash)
            )),
            Some(bytes) => store
                .verify_blob(&hash, &bytes)
                .await
                .err()
                .map(|e| e.to_string()),
        };
        if let Some(message) = problem {
            report.problems.push(Problem {
                kind: "blob",
                message,
            });
        }
    }

    for log in &logs {
        progress.inc(1);
        match store.list(log).await {
            Ok(checkpoints) => report.checkpoints_checked += checkpoints.len() as u64,
            Err(e) => report.problems.push(Problem {
                kind: "checkpoints",
                message: format!("execution {log:?}: its live checkpoints cannot be rebuilt: {e}"),
            }),
        }
    }
    progress.finish_and_clear();
    report.ok = report.problems.is_empty();

    if args.json {
        say!("{}", serde_json::to_string_pretty(&report)?)?;
    } else {
        say!(
            "checked {} frame(s) in {} execution(s), {} blob(s), {} live checkpoint(s)",
            report.frames_checked,
            report.executions,
            report.blobs_checked,
            report.checkpoints_checked
        )?;
        if report.ok {
            say!("ok: no damage found")?;
        } else {
            say!("{} problem(s):", report.problems.len())?;
            for p in &report.problems {
                say!("  {:<11}  {}", p.kind, p.message)?;
            }
        }
    }
    if report.ok {
        Ok(())
    } else {
        Err(Failure::new(format!(
            "the store is damaged: {} problem(s), listed above",
            report.problems.len()
        ))
        .into())
    }
}
