//! The operating subcommands of the `ckpt` binary (fork, delete, clear, prune, gc, verify,
//! stats) run against real sled stores: each test builds a store with the library, closes it
//! (sled allows one process per directory), runs the binary, and checks the result by reopening
//! the store with the library.

#![cfg(feature = "sled")]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use ckpt::{Checkpoint, CheckpointId, HistoryQuery, Store};
use serde_json::{json, Value};
use tempfile::TempDir;

mod common;

/// A long string (stored as a blob) distinct per execution and step.
fn long_text(exec: &str, step: u64) -> String {
    format!(
        "{exec}-{step}: {}",
        "lorem ipsum dolor sit amet ".repeat(16)
    )
}

fn state(exec: &str, step: u64) -> Value {
    json!({ "step": step, "notes": long_text(exec, step) })
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// Runs `f` on the store at `path`, then closes the store and its runtime.
fn with_store<R, F: Future<Output = R>>(path: &Path, f: impl FnOnce(Store) -> F) -> R {
    let rt = runtime();
    let out = rt.block_on(async {
        let url = path.to_str().expect("temp dir is UTF-8");
        let store = Store::open(url).await.expect("open the store");
        let out = f(store.clone()).await;
        store.flush().await.expect("flush");
        out
    });
    drop(rt);
    out
}

/// A store with execution `a` (versions 1-4) and `b` (versions 1-3, version 2 interrupted).
fn fixture() -> (TempDir, PathBuf) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    with_store(&path, |store| async move {
        for (step, node) in (1..=4).zip(["plan", "search", "answer", "plan"]) {
            let cp = Checkpoint::new("a", node, &state("a", step))
                .expect("checkpoint")
                .with_metadata("step", step);
            store.save(cp).await.expect("save a");
        }
        for step in 1..=3 {
            let mut cp = Checkpoint::new("b", "work", &state("b", step)).expect("checkpoint");
            if step == 2 {
                cp = cp.with_metadata("interrupted", true);
            }
            store.save(cp).await.expect("save b");
        }
    });
    (dir, path)
}

fn live(path: &Path, exec: &str) -> Vec<u64> {
    let exec = exec.to_owned();
    with_store(path, |store| async move {
        let mut v: Vec<u64> = store
            .history(&exec, HistoryQuery::default())
            .await
            .expect("history")
            .iter()
            .map(|h| h.version)
            .collect();
        v.sort_unstable();
        v
    })
}

fn ckpt(path: &Path, args: &[&str]) -> Output {
    common::cli::command()
        .arg("--store")
        .arg(path)
        .args(args)
        .output()
        .expect("the ckpt binary runs")
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Asserts success and returns stdout.
fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exit {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// Asserts exit code 1 and returns stderr.
fn fails(out: &Output) -> String {
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout:\n{}\nstderr:\n{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stderr)
}

fn json_of(out: &Output) -> Value {
    let stdout = ok(out);
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{stdout}"))
}

const REFUSAL: &str =
    "refusing to delete without confirmation: stdin is not a terminal; pass --yes";

#[test]
fn fork_prints_the_new_id_and_parent_and_the_fork_persists() {
    let (_dir, path) = fixture();
    let report = json_of(&ckpt(&path, &["fork", "a@3", "c", "--json"]));
    assert_eq!(report["parent"], "a@3", "{report}");
    assert_eq!(report["execution"], "c", "{report}");
    let new_id = report["id"].as_str().expect("id").to_owned();
    assert!(new_id.starts_with("c@"), "{report}");

    let human = ok(&ckpt(&path, &["fork", "a@2", "d"]));
    assert!(human.contains("d@") && human.contains("a@2"), "{human}");

    let (latest, source) = with_store(&path, |store| async move {
        let latest = store.latest("c").await.expect("latest").expect("c exists");
        let source = store.at_version("a", 3).await.expect("a@3");
        (latest, source)
    });
    assert_eq!(latest.id.to_string(), new_id);
    assert_eq!(
        latest.parent,
        Some("a@3".parse::<CheckpointId>().expect("id"))
    );
    assert_eq!(
        latest.state_json().expect("state"),
        source.state_json().expect("state")
    );
    // Forking into an execution that has checkpoints fails and says so.
    let err = fails(&ckpt(&path, &["fork", "a@1", "b"]));
    assert!(err.contains("already has checkpoints"), "{err}");
}

#[test]
fn delete_and_clear_refuse_without_yes_when_stdin_is_not_a_terminal() {
    let (_dir, path) = fixture();
    let err = fails(&ckpt(&path, &["delete", "a@2"]));
    assert!(err.contains(REFUSAL), "{err}");
    let err = fails(&ckpt(&path, &["clear", "a"]));
    assert!(err.contains(REFUSAL), "{err}");
    assert_eq!(live(&path, "a"), [1, 2, 3, 4]);

    let out = ok(&ckpt(&path, &["delete", "a@2", "--yes"]));
    assert!(out.contains("deleted a@2"), "{out}");
    assert_eq!(live(&path, "a"), [1, 3, 4]);

    let out = ok(&ckpt(&path, &["clear", "b", "--yes"]));
    assert!(out.contains("cleared b: 3 checkpoints deleted"), "{out}");
    assert!(live(&path, "b").is_empty());
    assert_eq!(live(&path, "a"), [1, 3, 4]);
}

#[test]
fn delete_and_clear_of_unknown_targets_fail_and_change_nothing() {
    let (_dir, path) = fixture();
    let err = fails(&ckpt(&path, &["delete", "a@99", "--yes"]));
    assert!(err.contains("no checkpoint a@99"), "{err}");
    let err = fails(&ckpt(&path, &["delete", "nope@1", "--yes"]));
    assert!(err.contains("no checkpoint nope@1"), "{err}");
    let err = fails(&ckpt(&path, &["delete", "a-without-version", "--yes"]));
    assert!(err.contains("not a checkpoint id"), "{err}");
    let err = fails(&ckpt(&path, &["clear", "nope", "--yes"]));
    assert!(err.contains("nope has no live checkpoints"), "{err}");
    assert_eq!(live(&path, "a"), [1, 2, 3, 4]);
    assert_eq!(live(&path, "b"), [1, 2, 3]);
}

#[test]
fn prune_dry_run_lists_and_changes_nothing() {
    let (_dir, path) = fixture();
    let report = json_of(&ckpt(
        &path,
        &["prune", "a", "--keep-latest", "2", "--dry-run", "--json"],
    ));
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["deleted_total"], 2);
    assert_eq!(report["executions"][0]["execution"], "a");
    assert_eq!(report["executions"][0]["deleted"], json!([1, 2]));
    let human = ok(&ckpt(
        &path,
        &["prune", "a", "--keep-latest", "2", "--dry-run"],
    ));
    assert!(
        human.contains("a: would delete 2 (versions 1, 2)"),
        "{human}"
    );
    assert_eq!(live(&path, "a"), [1, 2, 3, 4]);

    // Without --dry-run and --yes, stdin not a terminal: refused.
    let err = fails(&ckpt(&path, &["prune", "a", "--keep-latest", "2"]));
    assert!(err.contains(REFUSAL), "{err}");
    assert_eq!(live(&path, "a"), [1, 2, 3, 4]);
    // A rule and a target are required (usage error).
    assert_eq!(ckpt(&path, &["prune", "a"]).status.code(), Some(2));
    assert_eq!(
        ckpt(&path, &["prune", "--keep-latest", "1"]).status.code(),
        Some(2)
    );
}

#[test]
fn prune_keep_latest_one_keeps_the_latest_and_interrupted_ones() {
    let (_dir, path) = fixture();
    let report = json_of(&ckpt(
        &path,
        &["prune", "--all", "--keep-latest", "1", "--yes", "--json"],
    ));
    assert_eq!(report["deleted_total"], 4, "{report}");
    let b = &report["executions"][1];
    assert_eq!(b["execution"], "b");
    assert_eq!(b["deleted"], json!([1]));
    assert_eq!(b["kept_interrupted"], json!([2]));
    assert_eq!(live(&path, "a"), [4]);
    assert_eq!(live(&path, "b"), [2, 3]);
}

#[test]
fn prune_never_deletes_the_latest_even_when_everything_is_old() {
    let (_dir, path) = fixture();
    let out = ok(&ckpt(&path, &["prune", "a", "--older-than", "0s", "--yes"]));
    assert!(
        out.contains("a: deleted 3 (versions 1, 2, 3), 1 kept"),
        "{out}"
    );
    assert_eq!(live(&path, "a"), [4]);
    // Young checkpoints are not "older than a day".
    let out = ok(&ckpt(&path, &["prune", "b", "--older-than", "1d", "--yes"]));
    assert!(out.contains("b: deleted 0"), "{out}");
    assert_eq!(live(&path, "b"), [1, 2, 3]);
    let bad = ckpt(&path, &["prune", "b", "--older-than", "3 weeks", "--yes"]);
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn gc_after_clear_removes_blobs() {
    let (_dir, path) = fixture();
    ok(&ckpt(&path, &["clear", "a", "--yes"]));
    let report = json_of(&ckpt(&path, &["gc", "--json"]));
    assert!(
        report["blobs_removed"].as_u64().expect("blobs_removed") > 0,
        "{report}"
    );
    assert!(
        report["frames_removed"].as_u64().expect("frames_removed") > 0,
        "{report}"
    );
    assert!(
        report["blobs_kept"].as_u64().expect("blobs_kept") > 0,
        "{report}"
    );
    assert!(report["stored_bytes_before"].is_u64(), "{report}");
    assert_eq!(live(&path, "b"), [1, 2, 3]);
    // Nothing left to collect.
    let again = json_of(&ckpt(&path, &["gc", "--json"]));
    assert_eq!(again["blobs_removed"], 0, "{again}");
    let human = ok(&ckpt(&path, &["gc"]));
    assert!(human.contains("blobs removed   0"), "{human}");
}

#[test]
fn verify_passes_a_healthy_store_and_names_a_flipped_frame() {
    let (_dir, path) = fixture();
    let out = ok(&ckpt(&path, &["verify"]));
    assert!(out.contains("ok: no damage found"), "{out}");
    let report = json_of(&ckpt(&path, &["verify", "--json"]));
    assert_eq!(report["ok"], true);
    assert_eq!(report["frames_checked"], 7);
    assert_eq!(report["checkpoints_checked"], 7);
    assert!(
        report["blobs_checked"].as_u64().expect("blobs") >= 7,
        "{report}"
    );

    flip_frame_byte(&path, "a", 2);
    let out = ckpt(&path, &["verify"]);
    let err = fails(&out);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("execution \"a\" seq 2"), "{stdout}");
    assert!(stdout.contains("checksum mismatch"), "{stdout}");
    assert!(err.contains("damaged"), "{err}");
    let out = ckpt(&path, &["verify", "--json"]);
    assert_eq!(out.status.code(), Some(1));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(report["ok"], false);
    let frames: Vec<&Value> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .filter(|p| p["kind"] == "frame")
        .collect();
    assert_eq!(frames.len(), 1, "{report}");
}

/// Flips one byte of a frame directly in the closed sled database.
fn flip_frame_byte(path: &Path, log: &str, seq: u64) {
    let mut key = vec![b'e'];
    key.extend_from_slice(&(log.len() as u16).to_be_bytes());
    key.extend_from_slice(log.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    let mut last = None;
    for _ in 0..100 {
        match sled::Config::new()
            .path(path)
            .segment_size(64 * 1024)
            .open()
        {
            Ok(db) => {
                let mut value = db
                    .get(&key)
                    .expect("read")
                    .expect("the frame exists")
                    .to_vec();
                let middle = value.len() / 2;
                value[middle] ^= 0x55;
                db.insert(&key, value).expect("write");
                db.flush().expect("flush");
                return;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot open sled in {}: {last:?}", path.display());
}

#[test]
fn stats_totals_are_the_sums_of_the_executions() {
    let (_dir, path) = fixture();
    let report = json_of(&ckpt(&path, &["stats", "--json"]));
    let execs = report["executions"].as_array().expect("executions");
    assert_eq!(execs.len(), 2, "{report}");
    let sum = |key: &str| -> u64 {
        execs
            .iter()
            .map(|e| e[key].as_u64().expect("a number"))
            .sum()
    };
    let totals = &report["totals"];
    assert!(sum("logical_bytes") > 0, "{report}");
    assert!(sum("log_bytes") > 0, "{report}");
    assert_eq!(totals["logical_bytes"].as_u64(), Some(sum("logical_bytes")));
    assert_eq!(totals["log_bytes"].as_u64(), Some(sum("log_bytes")));
    assert_eq!(totals["checkpoints"].as_u64(), Some(sum("checkpoints")));
    assert_eq!(totals["checkpoints"], 7);
    assert!(
        totals["blob_bytes"].as_u64().expect("blob bytes") > 0,
        "{report}"
    );
    assert!(
        totals["stored_bytes"].as_u64().expect("stored bytes") > 0,
        "{report}"
    );
    let ratio = totals["ratio"].as_f64().expect("ratio");
    let expected = totals["logical_bytes"].as_f64().expect("n")
        / (totals["log_bytes"].as_f64().expect("n") + totals["blob_bytes"].as_f64().expect("n"));
    assert!((ratio - expected).abs() < 1e-9, "{report}");
    let human = ok(&ckpt(&path, &["stats"]));
    assert!(human.contains("dedup+compression ratio"), "{human}");
}

/// Runs `ckpt --store PATH ARGS` on a pseudo-terminal (util-linux `script`), typing `input`.
fn ckpt_on_a_terminal(path: &Path, args: &str, input: &str) -> Output {
    use std::io::Write as _;
    let command = format!(
        "{} --store {} {args}",
        env!("CARGO_BIN_EXE_ckpt"),
        path.display()
    );
    let mut child = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .env_remove("CKPT_STORE")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("util-linux `script` runs (it gives the command a terminal)");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("type the answer");
    child.wait_with_output().expect("script finishes")
}

#[test]
fn delete_and_clear_ask_on_a_terminal_and_obey_the_answer() {
    let (_dir, path) = fixture();
    let no = ckpt_on_a_terminal(&path, "delete a@2", "n\n");
    assert!(!no.status.success(), "answering n must fail");
    let shown = text(&no.stdout);
    assert!(
        shown.contains("[y/N]") && shown.contains("nothing deleted"),
        "{shown}"
    );
    assert_eq!(live(&path, "a"), [1, 2, 3, 4]);

    let yes = ckpt_on_a_terminal(&path, "delete a@2", "y\n");
    assert!(yes.status.success(), "{}", text(&yes.stdout));
    assert_eq!(live(&path, "a"), [1, 3, 4]);

    let no = ckpt_on_a_terminal(&path, "clear a", "\n");
    assert!(!no.status.success(), "an empty answer must not clear");
    assert_eq!(live(&path, "a"), [1, 3, 4]);
}

/// Every key of `ckpt bench --json`, for every workload.
const BENCH_KEYS: [&str; 25] = [
    "workload",
    "store",
    "encrypted",
    "threads",
    "steps",
    "executions",
    "saves",
    "seconds",
    "saves_per_s",
    "load_latest_ms",
    "load_latest_cold_ms",
    "load_random_ms",
    "list_ms",
    "history_ms",
    "bytes_logical",
    "bytes_written",
    "bytes_stored",
    "bytes_content_zstd",
    "bytes_content_zstd_stream",
    "reopen_ms",
    "reopen_latest_ms",
    "reopen_history_ms",
    "reopen_at_version_ms",
    "list_executions_ms",
    "reopen_list_executions_ms",
];

#[test]
fn bench_shapes_run_at_a_tiny_size_on_sled_and_leave_what_they_report() {
    // (workload, executions, steps, threads, state bytes per save: at least, at most)
    let tool_bytes = 1_000u64;
    for (workload, execs, steps, threads, per_save) in [
        ("long", 3u64, 20u64, 1u64, 120.0..170.0),
        ("many", 10, 5, 4, 1_000.0..1_150.0),
        // A save of step n holds n tool outputs and a 2,000-letter scratchpad.
        (
            "tools",
            2,
            4,
            4,
            2_000.0 + 2.5 * 1_000.0..2_100.0 + 2.5 * 1_050.0,
        ),
    ] {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join(workload);
        let out = ckpt(
            &path,
            &[
                "bench",
                "--workload",
                workload,
                "--executions",
                &execs.to_string(),
                "--steps",
                &steps.to_string(),
                "--tool-bytes",
                &tool_bytes.to_string(),
                "--json",
            ],
        );
        let r = json_of(&out);
        let obj = r.as_object().expect("an object");
        for key in BENCH_KEYS {
            assert!(obj.contains_key(key), "{workload}: no {key} in {r}");
        }
        assert_eq!(obj.len(), BENCH_KEYS.len(), "{workload}: {r}");
        assert_eq!(r["workload"], workload);
        assert_eq!(r["executions"], execs, "{r}");
        assert_eq!(r["steps"], steps, "{r}");
        assert_eq!(r["threads"], threads, "{workload}'s default writers: {r}");
        assert_eq!(r["saves"], execs * steps, "{r}");
        let num = |k: &str| {
            r[k].as_f64()
                .unwrap_or_else(|| panic!("{workload}: {k} is not a number in {r}"))
        };
        for k in [
            "seconds",
            "saves_per_s",
            "load_latest_ms",
            "load_latest_cold_ms",
            "reopen_ms",
            "reopen_latest_ms",
            "reopen_history_ms",
            "reopen_at_version_ms",
            "list_executions_ms",
            "reopen_list_executions_ms",
        ] {
            assert!(num(k) >= 0.0, "{workload}: {k} in {r}");
        }
        // Open + a read takes at least as long as the read alone, in the same samples.
        assert!(num("reopen_latest_ms") >= num("load_latest_cold_ms"), "{r}");
        for k in ["load_random_ms", "list_ms", "history_ms"] {
            assert!(r[k].is_null(), "{workload}: {k} is conversation's: {r}");
        }
        let per = num("bytes_logical") / num("saves");
        assert!(
            per_save.contains(&per),
            "{workload}: {per} bytes a save: {r}"
        );
        assert!(
            num("bytes_written") > 0.0 && num("bytes_stored") > 0.0,
            "{r}"
        );
        // The offered states compressed: measured for the small-state shapes only, and a
        // stream compresses better than its states one by one.
        if workload == "tools" {
            assert!(r["bytes_content_zstd"].is_null(), "{r}");
            assert!(r["bytes_content_zstd_stream"].is_null(), "{r}");
        } else {
            assert!(num("bytes_content_zstd_stream") > 0.0, "{r}");
            assert!(
                num("bytes_content_zstd") > num("bytes_content_zstd_stream"),
                "{r}"
            );
        }

        // The store holds what the bench says it saved.
        let listed = with_store(&path, |store| async move {
            store.executions().await.expect("executions")
        });
        assert_eq!(listed.len() as u64, execs, "{workload}: {listed:?}");
        for summary in &listed {
            assert!(
                summary
                    .execution_id
                    .starts_with(&format!("bench-{workload}-")),
                "{summary:?}"
            );
            assert_eq!(summary.checkpoints as u64, steps, "{summary:?}");
            assert_eq!(summary.latest_version, steps, "{summary:?}");
        }
    }
}

#[test]
fn bench_conversation_reports_null_for_the_shapes_figures_and_refuses_executions() {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("store");
    let r = json_of(&ckpt(
        &path,
        &["bench", "--threads", "2", "--steps", "3", "--json"],
    ));
    assert_eq!(r["workload"], "conversation");
    assert_eq!(r["executions"], 2, "{r}");
    assert_eq!(r["saves"], 6, "{r}");
    for k in BENCH_KEYS {
        assert!(r.get(k).is_some(), "no {k} in {r}");
    }
    for k in [
        "load_random_ms",
        "list_ms",
        "history_ms",
        "load_latest_cold_ms",
    ] {
        assert!(r[k].as_f64().is_some(), "{k} in {r}");
    }
    for k in ["reopen_ms", "reopen_latest_ms", "list_executions_ms"] {
        assert!(r[k].is_null(), "{k} in {r}");
    }
    let err = fails(&ckpt(
        &path,
        &["bench", "--executions", "3", "--steps", "2", "--json"],
    ));
    assert!(
        err.contains("--executions") && err.contains("--threads"),
        "{err}"
    );

    let help = ok(&common::cli::command()
        .args(["bench", "--help"])
        .output()
        .expect("the ckpt binary runs"));
    for word in [
        "long",
        "many",
        "tools",
        "--executions",
        "--tool-bytes",
        "20000 for long",
    ] {
        assert!(help.contains(word), "{word} missing from:\n{help}");
    }
}
