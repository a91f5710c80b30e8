//! The inspecting subcommands of the `ckpt` binary (executions, history, show, diff, log, grep,
//! watch), run against a sled store built with the library: known states, known answers.

use std::process::Output;

use serde_json::{json, Value};
use tempfile::TempDir;

use ckpt::{Checkpoint, Store};

mod common;

const EXEC: &str = "exec-1";
const LONG: &str =
    "The answer is forty-two, reached after a long and careful search of the haystack \
                    for the needle that was there all along.";

/// The states of `exec-1`, versions 1 to 4 (4 is deleted, then 5 saved).
fn states() -> Vec<(&'static str, Value, i64, &'static str)> {
    vec![
        (
            "plan",
            json!({"question": "why?", "messages": ["hello"], "step": 1,
                   "plan": {"steps": [{"name": "search", "done": false}]}}),
            1,
            "loop",
        ),
        (
            "search",
            json!({"question": "why?", "messages": ["hello", "found: needle in a haystack"],
                   "step": 2, "plan": {"steps": [{"name": "search", "done": true}]}}),
            2,
            "loop",
        ),
        (
            "answer",
            json!({"answer": "42", "messages": ["hello", "found: needle in a haystack", LONG],
                   "step": 3, "plan": {"steps": [{"name": "search", "done": true}]}}),
            3,
            "tool",
        ),
        (
            "plan",
            json!({"answer": "42", "messages": ["hello"], "step": 4,
                   "plan": {"steps": [{"name": "search", "done": true}]}}),
            4,
            "loop",
        ),
        (
            "plan",
            json!({"answer": "42", "messages": ["hello", "found: needle in a haystack", LONG],
                   "step": 5, "plan": {"steps": [{"name": "search", "done": true}]}}),
            5,
            "loop",
        ),
    ]
}

/// A sled store in a temporary directory holding `exec-1` (versions 1, 2, 3, 5; 4 deleted) and
/// `exec-2` (one checkpoint). The store is closed before this returns.
fn fixture() -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store").to_str().unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(&path).await.unwrap();
        for (node, state, step, source) in states() {
            let cp = Checkpoint::new(EXEC, node, &state)
                .unwrap()
                .with_metadata("step", step)
                .with_metadata("source", source);
            let saved = store.save(cp).await.unwrap();
            assert_eq!(saved.version, step as u64);
        }
        store
            .delete(&format!("{EXEC}@4").parse().unwrap())
            .await
            .unwrap();
        store
            .save(Checkpoint::new("exec-2", "only", &json!({"x": 1})).unwrap())
            .await
            .unwrap();
        store.flush().await.unwrap();
    });
    drop(runtime);
    (dir, path)
}

fn ckpt(store: &str, args: &[&str]) -> Output {
    common::cli::command()
        .arg("--store")
        .arg(store)
        .args(args)
        .env("NO_COLOR", "1")
        .output()
        .expect("the ckpt binary runs")
}

/// Runs a command that must succeed; returns its stdout.
fn ok(store: &str, args: &[&str]) -> String {
    let out = ckpt(store, args);
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "ckpt {args:?} failed\nstdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

/// Runs a command that must fail with exit code 1; returns its stderr.
fn fails(store: &str, args: &[&str]) -> String {
    let out = ckpt(store, args);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "ckpt {args:?}\nstdout:\n{}\nstderr:\n{stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    stderr
}

fn json_of(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}):\n{text}"))
}

#[test]
fn executions_lists_each_execution() {
    let (_dir, store) = fixture();
    let out = ok(&store, &["executions"]);
    let row = out.lines().find(|l| l.starts_with("exec-1 ")).expect(&out);
    let cols: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cols[..4], ["exec-1", "4", "5", "plan"], "{out}");
    assert!(out.lines().any(|l| l.starts_with("exec-2 ")), "{out}");

    let doc = json_of(&ok(&store, &["executions", "--json"]));
    let list = doc.as_array().unwrap();
    assert_eq!(list.len(), 2);
    let e = &list[0];
    assert_eq!(e["execution_id"], "exec-1");
    assert_eq!(e["checkpoints"], 4);
    assert_eq!(e["latest_version"], 5);
    assert_eq!(e["latest_id"], "exec-1@5");
    assert_eq!(e["last_node"], "plan");
    assert!(e["stored_bytes"].as_u64().unwrap() > 0);
    assert!(e["last_saved_ms"].as_u64().unwrap() > 1_600_000_000_000);
    assert_eq!(list[1]["execution_id"], "exec-2");
}

#[test]
fn history_is_newest_first_and_filters() {
    let (_dir, store) = fixture();
    let out = ok(&store, &["history", EXEC]);
    let versions: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(versions, ["5", "3", "2", "1"], "{out}");
    assert!(out.contains("exec-1@3  answer"), "{out}");
    assert!(out.contains("source=tool step=3"), "{out}");

    // step=3 is the number 3.
    let doc = json_of(&ok(
        &store,
        &["history", EXEC, "--where", "step=3", "--json"],
    ));
    let list = doc.as_array().unwrap();
    assert_eq!(list.len(), 1, "{doc}");
    assert_eq!(list[0]["id"], "exec-1@3");
    assert_eq!(list[0]["version"], 3);
    assert_eq!(list[0]["node"], "answer");
    assert_eq!(list[0]["parent"], "exec-1@2");
    assert_eq!(list[0]["metadata"], json!({"step": 3, "source": "tool"}));
    assert!(list[0]["state_size"].as_u64().unwrap() > 0);
    // The string "3" is not the number 3.
    let out = ok(&store, &["history", EXEC, "--where", "step=\"3\""]);
    assert!(out.contains("no checkpoints of exec-1 match"), "{out}");

    let doc = json_of(&ok(
        &store,
        &[
            "history",
            EXEC,
            "--where",
            "source=loop",
            "--limit",
            "2",
            "--json",
        ],
    ));
    let ids: Vec<&str> = doc
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["exec-1@5", "exec-1@2"]);
    let doc = json_of(&ok(
        &store,
        &["history", EXEC, "--before", "3", "--node", "plan", "--json"],
    ));
    assert_eq!(doc.as_array().unwrap().len(), 1);
    assert_eq!(doc[0]["id"], "exec-1@1");
}

#[test]
fn show_prints_header_state_and_paths() {
    let (_dir, store) = fixture();
    let out = ok(&store, &["show", "exec-1@2"]);
    assert!(out.starts_with("checkpoint exec-1@2\n"), "{out}");
    assert!(out.contains("node      search"), "{out}");
    assert!(out.contains("parent    exec-1@1"), "{out}");
    assert!(out.contains("metadata  source=loop step=2"), "{out}");
    assert!(out.contains("\"found: needle in a haystack\""), "{out}");

    let out = ok(&store, &["show", "exec-1@2", "--path", "plan.steps.0"]);
    assert!(out.contains("state at plan.steps.0:"), "{out}");
    assert!(out.contains("\"done\": true"), "{out}");
    assert!(!out.contains("haystack"), "{out}");

    let doc = json_of(&ok(&store, &["show", "exec-1@3", "--json"]));
    assert_eq!(doc["id"], "exec-1@3");
    assert_eq!(doc["execution_id"], "exec-1");
    assert_eq!(doc["node"], "answer");
    assert_eq!(doc["version"], 3);
    assert_eq!(doc["parent"], "exec-1@2");
    assert_eq!(doc["state"], states()[2].1);
    let doc = json_of(&ok(
        &store,
        &["show", "exec-1@3", "--path", "messages.2", "--json"],
    ));
    assert_eq!(doc["path"], "messages.2");
    assert_eq!(doc["value"], LONG);

    let err = fails(&store, &["show", "exec-1@2", "--path", "messages.7"]);
    assert!(
        err.contains("`7`") && err.contains("`messages` is an array of 2 elements"),
        "{err}"
    );
    let err = fails(&store, &["show", "exec-1@2", "--path", "plan.nope.x"]);
    assert!(
        err.contains("`nope`") && err.contains("`plan` is a map with keys steps"),
        "{err}"
    );
    let err = fails(&store, &["show", "exec-1@4"]);
    assert!(
        err.contains("no checkpoint exec-1@4") && err.contains("ckpt history exec-1"),
        "{err}"
    );
    let err = fails(&store, &["show", "nope@1"]);
    assert!(err.contains("no checkpoint nope@1"), "{err}");
}

#[test]
fn diff_reports_exactly_what_changed() {
    let (_dir, store) = fixture();
    let doc = json_of(&ok(&store, &["diff", "exec-1@1", "exec-1@3", "--json"]));
    assert_eq!(doc["from"], "exec-1@1");
    assert_eq!(doc["to"], "exec-1@3");
    assert_eq!(
        doc["added"],
        json!([
            {"path": "answer", "value": "42"},
            {"path": "messages.1", "value": "found: needle in a haystack"},
            {"path": "messages.2", "value": LONG},
        ])
    );
    assert_eq!(
        doc["removed"],
        json!([{"path": "question", "value": "why?"}])
    );
    assert_eq!(
        doc["changed"],
        json!([
            {"path": "plan.steps.0.done", "old": false, "new": true},
            {"path": "step", "old": 1, "new": 3},
        ])
    );

    let out = ok(&store, &["diff", "exec-1@1", "exec-1@3"]);
    assert!(out.contains("3 added, 1 removed, 2 changed"), "{out}");
    assert!(out.contains("+ answer: \"42\""), "{out}");
    assert!(out.contains("- question: \"why?\""), "{out}");
    assert!(out.contains("~ plan.steps.0.done: false -> true"), "{out}");
    assert!(out.contains("~ step: 1 -> 3"), "{out}");
    // The long message is shortened to 60 characters.
    let extra = LONG.chars().count() - 60;
    assert!(out.contains(&format!("…(+{extra} chars)")), "{out}");
    assert!(!out.contains("all along"), "{out}");
    assert!(
        !out.contains('\x1b'),
        "no colour when not a terminal: {out}"
    );

    let out = ok(&store, &["diff", "exec-1@3", "exec-1@3"]);
    assert!(out.contains("the states are equal"), "{out}");
    let err = fails(&store, &["diff", "exec-1@1", "exec-1@9"]);
    assert!(err.contains("no checkpoint exec-1@9"), "{err}");
}

#[test]
fn log_is_oldest_first_with_diffs_to_the_previous_live_version() {
    let (_dir, store) = fixture();
    let out = ok(&store, &["log", EXEC]);
    let versions: Vec<&str> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(versions, ["1", "2", "3", "5"], "{out}");

    let out = ok(&store, &["log", EXEC, "-p"]);
    assert!(out.contains("exec-1@2  search"), "{out}");
    assert!(out.contains("~ plan.steps.0.done: false -> true"), "{out}");
    assert!(
        out.contains("+ messages.1: \"found: needle in a haystack\""),
        "{out}"
    );
    // Version 4 was deleted: 5 is compared with 3.
    assert!(
        out.contains("(since exec-1@3: 0 added, 0 removed, 1 changed)"),
        "{out}"
    );
    assert!(out.contains("~ step: 3 -> 5"), "{out}");

    let doc = json_of(&ok(&store, &["log", EXEC, "-p", "--limit", "2", "--json"]));
    let list = doc.as_array().unwrap();
    assert_eq!(list.len(), 2);
    assert_eq!(list[0]["id"], "exec-1@3");
    assert_eq!(list[0]["previous"], "exec-1@2");
    assert_eq!(list[1]["id"], "exec-1@5");
    assert_eq!(list[1]["previous"], "exec-1@3");
    assert_eq!(
        list[1]["diff"],
        json!({"added": [], "removed": [], "changed": [{"path": "step", "old": 3, "new": 5}]})
    );
    let doc = json_of(&ok(&store, &["log", EXEC, "-p", "--json"]));
    assert_eq!(doc[0]["previous"], Value::Null);
    assert_eq!(doc[0]["diff"]["added"].as_array().unwrap().len(), 4);

    let err = fails(&store, &["log", "nope"]);
    assert!(err.contains("no execution \"nope\""), "{err}");
}

#[test]
fn grep_finds_the_first_version_a_text_appeared() {
    let (_dir, store) = fixture();
    let out = ok(&store, &["grep", EXEC, "needle"]);
    assert!(out.contains("first seen in exec-1@2 (search, "), "{out}");
    let versions: Vec<&str> = out
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(versions, ["2", "3", "5"], "{out}");
    assert!(out.contains("messages.1"), "{out}");

    let doc = json_of(&ok(
        &store,
        &["grep", EXEC, "plan.steps.0.done=true", "--json"],
    ));
    assert_eq!(doc["mode"], "path");
    assert_eq!(doc["first"]["id"], "exec-1@2");
    assert_eq!(doc["matches"].as_array().unwrap().len(), 3);
    let doc = json_of(&ok(&store, &["grep", EXEC, "step=3", "--json"]));
    assert_eq!(doc["matches"].as_array().unwrap().len(), 1);
    assert_eq!(doc["first"]["id"], "exec-1@3");
    assert_eq!(doc["first"]["node"], "answer");
    let doc = json_of(&ok(&store, &["grep", EXEC, "question", "--json"]));
    assert_eq!(doc["mode"], "text");
    assert_eq!(doc["matches"][0]["paths"], json!(["question"]));
    assert_eq!(doc["matches"].as_array().unwrap().len(), 2);

    let err = fails(&store, &["grep", EXEC, "zebra"]);
    assert!(
        err.contains("no version of exec-1 contains \"zebra\""),
        "{err}"
    );
    let err = fails(&store, &["grep", "nope", "x"]);
    assert!(err.contains("no execution \"nope\""), "{err}");
}

#[test]
fn search_finds_checkpoints_across_executions() {
    let (_dir, store) = fixture();
    // Newest first across executions; the deleted version 4 is not there.
    let out = ok(&store, &["search", "needle"]);
    let ids: Vec<&str> = out
        .lines()
        .skip(1)
        .take_while(|l| !l.is_empty())
        .map(|l| l.split_whitespace().next().unwrap())
        .collect();
    assert_eq!(ids, ["exec-1@5", "exec-1@3", "exec-1@2"], "{out}");
    assert!(out.contains("messages.1"), "{out}");
    // exec-2@1 and exec-1@1 were read too, and did not match.
    assert!(out.contains("3 results (scan: 5 states read)"), "{out}");

    let doc = json_of(&ok(
        &store,
        &[
            "search", "hay", "--where", "step>=3", "--node", "answer", "--json",
        ],
    ));
    assert_eq!(doc["method"], "scan");
    let hits = doc["hits"].as_array().unwrap();
    assert_eq!(hits.len(), 1, "{doc}");
    assert_eq!(hits[0]["id"], "exec-1@3");
    assert_eq!(hits[0]["path"], "messages.1");
    assert!(hits[0]["snippet"].as_str().unwrap().contains("haystack"));

    // Without text: metadata alone, two pages of two.
    let first = json_of(&ok(
        &store,
        &["search", "--where", "source=loop", "--limit", "2", "--json"],
    ));
    let ids: Vec<&str> = first["hits"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["exec-1@5", "exec-1@2"], "{first}");
    let cursor = first["next_cursor"].as_str().unwrap();
    let next = json_of(&ok(
        &store,
        &[
            "search",
            "--where",
            "source=loop",
            "--limit",
            "2",
            "--cursor",
            cursor,
            "--json",
        ],
    ));
    assert_eq!(next["hits"][0]["id"], "exec-1@1", "{next}");
    assert_eq!(next["next_cursor"], Value::Null);
    let doc = json_of(&ok(
        &store,
        &["search", "--exec-prefix", "exec-2", "--json"],
    ));
    assert_eq!(doc["hits"][0]["id"], "exec-2@1");

    let err = fails(&store, &["search", "zebra"]);
    assert!(err.contains("no checkpoint matches"), "{err}");
    let err = fails(&store, &["search", "--where", "nooperator"]);
    assert!(err.contains("has no operator"), "{err}");
    let err = fails(&store, &["search", "x", "--cursor", "garbage"]);
    assert!(err.contains("is not one a search returned"), "{err}");
}

#[test]
fn reindex_makes_search_answer_from_the_index() {
    let (_dir, store) = fixture();
    let scanned = json_of(&ok(&store, &["search", "needle", "--json"]));
    assert_eq!(scanned["method"], "scan");

    let report = json_of(&ok(&store, &["reindex", "--json"]));
    assert_eq!(report["executions"], 2, "{report}");
    assert_eq!(report["checkpoints"], 5, "{report}");
    assert!(report["entries"].as_u64().unwrap() > 0, "{report}");

    // The same hits, now from the index, reading only the states of real candidates.
    let indexed = json_of(&ok(&store, &["search", "needle", "--json"]));
    assert_eq!(indexed["method"], "index", "{indexed}");
    assert_eq!(indexed["hits"], scanned["hits"]);
    assert_eq!(indexed["states_read"], 3, "{indexed}");
    let out = ok(&store, &["search", "needle"]);
    assert!(out.contains("3 results (index: 3 states read)"), "{out}");
    let meta = json_of(&ok(&store, &["search", "--where", "step>=3", "--json"]));
    assert_eq!(
        (&meta["method"], &meta["states_read"]),
        (&json!("index"), &json!(0))
    );

    // verify checks it; --drop returns to scanning.
    let out = ok(&store, &["verify"]);
    assert!(!out.contains("index"), "{out}");
    let human = ok(&store, &["reindex", "--drop"]);
    assert!(human.contains("dropped"), "{human}");
    let dropped = json_of(&ok(&store, &["search", "needle", "--json"]));
    assert_eq!(dropped["method"], "scan");
    assert_eq!(dropped["hits"], scanned["hits"]);
    let help = ok(&store, &["reindex", "--help"]);
    assert!(help.contains("--drop") && help.contains("--json"), "{help}");
}

#[test]
fn watch_help_and_count_zero() {
    // sled admits one process at a time, so a second process cannot save while `watch` runs;
    // the live behaviour is covered by the library's watch tests.
    let (_dir, store) = fixture();
    let help = ok(&store, &["watch", "--help"]);
    assert!(
        help.contains("--count <N>") && help.contains("--json"),
        "{help}"
    );
    let out = ok(&store, &["watch", EXEC, "--count", "0"]);
    assert_eq!(out, "");
}

#[test]
fn every_subcommand_documents_its_options() {
    let (_dir, store) = fixture();
    for (cmd, options) in [
        ("executions", &["--json"][..]),
        (
            "history",
            &["--limit", "--before", "--where", "--node", "--json"],
        ),
        ("show", &["--path", "--json"]),
        ("diff", &["--json"]),
        ("log", &["--patch", "--limit", "--json"]),
        ("grep", &["PATTERN", "--json"]),
    ] {
        let help = ok(&store, &[cmd, "--help"]);
        for o in options {
            assert!(help.contains(o), "{cmd} --help lacks {o}:\n{help}");
        }
    }
}

/// A sled store whose execution `exec` branched: versions 1 <- 2 <- 3, and 1 <- 4 <- 5 (4 saved
/// with version 1 as its named parent, 5 a plain save after it).
fn branched_store(exec: &str) -> (TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store").to_str().unwrap().to_owned();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(&path).await.unwrap();
        let mut ids = Vec::new();
        for step in 1..=3 {
            let cp = Checkpoint::new(exec, "step", &json!({ "step": step })).unwrap();
            ids.push(store.save(cp).await.unwrap().id);
        }
        let cp = Checkpoint::new(exec, "retry", &json!({ "step": 20 })).unwrap();
        let v4 = store.save_with_parent(cp, &ids[0]).await.unwrap();
        assert_eq!(v4.version, 4);
        let cp = Checkpoint::new(exec, "retry", &json!({ "step": 30 })).unwrap();
        store.save(cp).await.unwrap();
        store.flush().await.unwrap();
    });
    drop(runtime);
    (dir, path)
}

/// `history --branch` lists one branch of an execution that branched (a save with a named
/// parent), newest first, and `--json` carries every entry's parent.
#[test]
fn history_shows_one_branch() {
    let (_dir, path) = branched_store("b");
    let doc = json_of(&ok(&path, &["history", "b", "--branch", "4", "--json"]));
    let entries = doc.as_array().expect("an array");
    let versions: Vec<u64> = entries
        .iter()
        .map(|e| e["version"].as_u64().unwrap())
        .collect();
    assert_eq!(versions, [4, 1]);
    assert_eq!(entries[0]["parent"], json!("b@1"));
    assert_eq!(entries[1]["parent"], Value::Null);
    let all = json_of(&ok(&path, &["history", "b", "--json"]));
    assert_eq!(
        all.as_array().map(Vec::len),
        Some(5),
        "history lists every branch"
    );
    let text = ok(&path, &["history", "b", "--branch", "b@3"]);
    assert!(
        text.contains("b@3") && text.contains("b@2") && !text.contains("b@4"),
        "{text}"
    );
    let err = fails(&path, &["history", "b", "--branch", "other@1"]);
    assert!(err.contains("another execution"), "{err}");
}

/// `log --graph` draws the tree: two branches off version 1, each in its own lane, joining at 1.
#[test]
fn log_graph_draws_the_branches() {
    let (_dir, path) = branched_store("g");
    let out = ok(&path, &["log", "g", "--graph"]);
    let rows: Vec<String> = out
        .lines()
        .map(|l| l.split("  ").next().unwrap_or("").to_owned())
        .collect();
    assert_eq!(
        rows,
        ["* g@5", "* g@4", "| * g@3", "| * g@2", "|/", "* g@1"],
        "{out}"
    );
}

/// `show` lists what is attached to a checkpoint (pending writes, task results, interrupts and
/// answers), in text and in `--json`; a checkpoint without writes shows none.
#[test]
fn show_lists_the_writes_of_a_checkpoint() {
    let (_dir, path) = branched_store("w");
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let store = Store::open(&path).await.unwrap();
        let id = ckpt::CheckpointId::new("w", 2).unwrap();
        let journal = ckpt::Write::new("tools", "__journal__", &json!({"reply": "forty-two"}))
            .unwrap()
            .with_metadata("key", "model");
        store.put_writes(&id, vec![journal]).await.unwrap();
        store.flush().await.unwrap();
    });
    drop(runtime);
    let doc = json_of(&ok(&path, &["show", "w@2", "--json"]));
    let writes = doc["writes"].as_array().expect("a writes array");
    assert_eq!(writes.len(), 1, "{doc}");
    assert_eq!(writes[0]["seq"], json!(6));
    assert_eq!(writes[0]["task"], json!("tools"));
    assert_eq!(writes[0]["channel"], json!("__journal__"));
    assert_eq!(writes[0]["metadata"]["key"], json!("model"));
    assert_eq!(writes[0]["value"]["reply"], json!("forty-two"));
    let text = ok(&path, &["show", "w@2"]);
    assert!(
        text.contains("writes (1)") && text.contains("forty-two"),
        "{text}"
    );
    let none = json_of(&ok(&path, &["show", "w@3", "--json"]));
    assert_eq!(none["writes"], json!([]));
    assert!(!ok(&path, &["show", "w@3"]).contains("writes ("));
    // A write is not a checkpoint: history still lists five.
    let all = json_of(&ok(&path, &["history", "w", "--json"]));
    assert_eq!(all.as_array().map(Vec::len), Some(5));
}

#[test]
fn verbose_prints_spans_and_metrics_on_stderr_only() {
    let (_dir, store) = fixture();
    let args = ["show", "exec-1@3"];
    let quiet = ckpt(&store, &args);
    assert!(quiet.status.success());
    assert!(quiet.stderr.is_empty(), "{:?}", quiet.stderr);
    let stderr_of = |flag: &str| {
        let mut with_flag = vec![flag];
        with_flag.extend(args);
        let out = ckpt(&store, &with_flag);
        assert!(out.status.success());
        // Whatever -v prints, a script reading stdout sees the same thing.
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&quiet.stdout),
            "ckpt {flag} changed stdout"
        );
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let verbose = stderr_of("-v");
    let load = verbose
        .lines()
        .find(|l| l.contains("ckpt.load{"))
        .unwrap_or_else(|| panic!("no ckpt.load span:\n{verbose}"));
    for field in [
        "execution_id=\"exec-1\"",
        "version=3",
        "backend=\"sled\"",
        "outcome=\"ok\"",
        "close time.busy=",
    ] {
        assert!(load.contains(field), "{field} missing from {load}");
    }
    let metrics = verbose
        .lines()
        .find(|l| l.starts_with("ckpt metrics for "))
        .unwrap_or_else(|| panic!("no metrics:\n{verbose}"));
    assert!(metrics.contains(" loads=1 "), "{metrics}");
    assert!(metrics.contains(" saves=0 "), "{metrics}");
    // The checkpoint's state is on stdout, and only there.
    assert!(String::from_utf8_lossy(&quiet.stdout).contains("forty-two"));
    assert!(!verbose.contains("forty-two"), "{verbose}");
    assert!(!verbose.contains("ckpt.backend."), "{verbose}");
    // -vv: the backend calls too.
    let very = stderr_of("-vv");
    assert!(very.contains("ckpt.backend.scan{"), "{very}");
    assert!(!very.contains("forty-two"), "{very}");
}
