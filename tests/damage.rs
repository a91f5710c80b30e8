//! Damage on real SQLite files, through the library and the `ckpt` binary: rows edited with
//! sqlx the way a failing disk or a careless hand would, then `verify` (and its exit codes),
//! `executions`, `stats`, `history`, `export` and `salvage` checked against what was stored.

#![cfg(feature = "sqlite")]

use std::path::{Path, PathBuf};
use std::process::Output;

use ckpt::{Checkpoint, HistoryQuery, Store};
use serde_json::{json, Value};
use sqlx::Connection;
use tempfile::TempDir;

mod common;

use common::cli::ckpt;

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn url(path: &Path) -> String {
    format!("sqlite://{}", path.display())
}

/// A state with a long string (a blob) and short fields; `bulk` changes 200 fields at once, so
/// the save is a snapshot.
fn state(exec: &str, step: u64, bulk: bool) -> Value {
    let mut s = json!({ "step": step, "text": format!("{exec} step {step} ").repeat(30) });
    if bulk {
        for i in 0..200 {
            s[format!("k{i:03}")] = json!(format!("value {i} at step {step}, padded"));
        }
    }
    s
}

/// Saves `n` checkpoints to `exec` (versions 1..=n; from `snapshot_at` on with bulk fields).
async fn save(store: &Store, exec: &str, n: u64, snapshot_at: u64) -> Vec<Checkpoint> {
    let mut out = Vec::new();
    for step in 1..=n {
        let cp = Checkpoint::new(exec, "work", &state(exec, step, step >= snapshot_at))
            .expect("checkpoint")
            .with_metadata("step", step);
        out.push(store.save(cp).await.expect("save"));
    }
    out
}

/// A new SQLite store (`store.db` in a temporary directory, sealed with `key` if given) holding,
/// for each `(exec, n, snapshot_at)`, the checkpoints [`save`] saves; returns the directory (the
/// store lives as long as it), the database and what was saved, in the order given.
fn store_with(
    key: Option<&ckpt::crypto::Key>,
    saves: &[(&str, u64, u64)],
) -> (TempDir, PathBuf, Vec<Vec<Checkpoint>>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = dir.path().join("store.db");
    let saved = rt().block_on(async {
        let mut builder = Store::builder(&url(&db));
        if let Some(key) = key {
            builder = builder.encryption(key.clone());
        }
        let store = builder.open().await.expect("open");
        let mut saved = Vec::new();
        for (exec, n, snapshot_at) in saves {
            saved.push(save(&store, exec, *n, *snapshot_at).await);
        }
        saved
    });
    (dir, db, saved)
}

/// Asserts that the binary exited with `code`, showing what it printed otherwise.
#[track_caller]
fn assert_exit(out: &Output, code: i32, what: &str) {
    assert_eq!(
        out.status.code(),
        Some(code),
        "{what}{}{}",
        stdout(out),
        stderr(out)
    );
}

async fn sql(path: &Path, statement: &str) -> u64 {
    let mut conn = sqlx::SqliteConnection::connect(&url(path))
        .await
        .expect("connect");
    sqlx::query(statement)
        .execute(&mut conn)
        .await
        .expect(statement)
        .rows_affected()
}

/// Finding 9: a deleted tail frame row (version 6 gone, `logs.next_seq` still 7) is a lost
/// tail for `verify`, not a healthy store.
#[test]
fn verify_reports_a_lost_tail_frame() {
    let (_dir, db, _) = store_with(None, &[("a", 6, 100), ("b", 2, 100)]);
    let healthy = ckpt(&["--store", &url(&db), "verify"], &[]);
    assert_eq!(healthy.status.code(), Some(0), "{}", stderr(&healthy));
    assert_eq!(
        rt().block_on(sql(
            &db,
            "DELETE FROM frames WHERE id = (SELECT (id << 32) + 6 FROM logs WHERE log = 'a')"
        )),
        1
    );

    let out = ckpt(&["--store", &url(&db), "verify"], &[]);
    assert_exit(&out, 1, "");
    let text = stdout(&out);
    assert!(
        text.contains("seq 6") && text.contains("lost tail"),
        "{text}"
    );
    assert!(text.contains("b: version(s) 1-2"), "{text}");
    let report: Value =
        serde_json::from_slice(&ckpt(&["--store", &url(&db), "verify", "--json"], &[]).stdout)
            .expect("JSON");
    assert_eq!(report["ok"], false, "{report}");
    let kinds: Vec<&Value> = report["problems"]
        .as_array()
        .expect("problems")
        .iter()
        .map(|p| &p["kind"])
        .collect();
    assert_eq!(kinds, [&json!("log")], "{report}");
}

/// Finding 9: a lowered `logs.next_seq` (below the last frame) is reported by `verify`, and
/// the next save goes on above the last frame instead of giving up on "contention".
#[test]
fn a_lowered_next_seq_is_reported_and_writes_continue_above_it() {
    let (_dir, db, saved) = store_with(None, &[("a", 6, 100)]);
    let saved = &saved[0];
    assert_eq!(
        rt().block_on(sql(&db, "UPDATE logs SET next_seq = 5 WHERE log = 'a'")),
        1
    );

    let out = ckpt(&["--store", &url(&db), "verify"], &[]);
    assert_exit(&out, 1, "");
    assert!(stdout(&out).contains("lowered"), "{}", stdout(&out));

    rt().block_on(async {
        let store = Store::open(&url(&db)).await.expect("reopen");
        let latest = store.latest("a").await.expect("latest").expect("some");
        assert_eq!(latest.version, 6);
        let cp = Checkpoint::new("a", "work", &state("a", 7, false)).expect("checkpoint");
        let next = store
            .save(cp)
            .await
            .expect("the save after a lowered next_seq");
        assert_eq!(next.version, 7, "a version that exists was handed out");
        for cp in saved {
            let loaded = store.load(&cp.id).await.expect("load");
            assert_eq!(loaded.state_value(), cp.state_value(), "{}", cp.id);
        }
    });
    // The append moved the stored number back above the last frame.
    let out = ckpt(&["--store", &url(&db), "verify"], &[]);
    assert_exit(&out, 0, "");
}

/// Finding 5: a missing or wrong key is configuration (exit 3), not damage (exit 1).
#[test]
fn verify_tells_a_key_problem_from_damage() {
    let key = ckpt::crypto::Key::generate();
    let other = ckpt::crypto::Key::generate();
    let (_dir, db, _) = store_with(Some(&key), &[("a", 3, 100)]);
    let (k, o) = (key.to_hex(), other.to_hex());
    let env = [("CKPT_K", k.as_str()), ("CKPT_O", o.as_str())];
    let keyed = format!("{}?key_env=CKPT_K", url(&db));
    let wrong = format!("{}?key_env=CKPT_O", url(&db));
    let ok = ckpt(&["--store", &keyed, "verify"], &env);
    assert_eq!(ok.status.code(), Some(0), "{}", stderr(&ok));
    for (store, what) in [(url(&db), "no key"), (wrong, "the wrong key")] {
        let out = ckpt(&["--store", &store, "verify"], &env);
        assert_exit(&out, 3, &format!("{what}: "));
        let msg = stderr(&out);
        assert!(msg.contains("configuration, not damage"), "{what}: {msg}");
        assert!(
            !stdout(&out).contains("damaged"),
            "{what}: {}",
            stdout(&out)
        );
        assert!(
            !msg.contains(&k) && !msg.contains(&o),
            "{what}: a key in {msg}"
        );
    }
    rt().block_on(sql(
        &db,
        "UPDATE frames SET frame = zeroblob(length(frame)) WHERE id = (SELECT (id << 32) + 2 FROM logs WHERE log = 'a')",
    ));
    let out = ckpt(&["--store", &keyed, "verify"], &env);
    assert_exit(&out, 1, "");
    assert!(
        stdout(&out).contains("execution \"a\" seq 2"),
        "{}",
        stdout(&out)
    );
}

/// Finding 4 through the binary: one damaged frame leaves `executions`, `stats` and `history`
/// working (and marking it); `export` refuses, `export --salvage` and `salvage` copy every
/// readable checkpoint with its version; finding 9: a damaged blob fails `export`.
#[test]
fn a_damaged_frame_is_contained_and_salvaged() {
    // a: 1 snapshot, 2-4 deltas, 5 a snapshot, 6 a delta.
    let (dir, db, saved) = store_with(None, &[("a", 6, 5), ("b", 3, 100)]);
    let (a, b) = (&saved[0], &saved[1]);
    let store_url = url(&db);
    let store = store_url.as_str();
    rt().block_on(sql(
        &db,
        "UPDATE frames SET frame = zeroblob(length(frame)) WHERE id = (SELECT (id << 32) + 3 FROM logs WHERE log = 'a')",
    ));

    let out = ckpt(&["--store", store, "executions", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let list: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(list[0]["execution_id"], "a", "{list}");
    assert_eq!(list[0]["damaged_frames"], json!([3]), "{list}");
    assert_eq!(list[0]["unreadable_versions"], json!([4]), "{list}");
    assert_eq!(list[0]["checkpoints"], 4, "{list}");
    assert_eq!(list[1]["execution_id"], "b", "{list}");
    assert_eq!(list[1]["checkpoints"], 3, "{list}");
    assert_eq!(list[1]["damaged_frames"], json!([]), "{list}");
    let out = ckpt(&["--store", store, "executions"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(
        stdout(&out).contains("frame(s) 3 damaged; version(s) 4 unreadable"),
        "{}",
        stdout(&out)
    );

    let out = ckpt(&["--store", store, "stats"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("a (damaged)"), "{}", stdout(&out));

    let out = ckpt(&["--store", store, "history", "a", "--json"], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    let versions: Vec<u64> = serde_json::from_slice::<Vec<Value>>(&out.stdout)
        .expect("JSON")
        .iter()
        .map(|h| h["version"].as_u64().expect("version"))
        .collect();
    assert_eq!(versions, [6, 5, 2, 1]);
    assert!(
        stderr(&out).contains("frame seq 3 is damaged"),
        "{}",
        stderr(&out)
    );
    assert!(
        stderr(&out).contains("version 4 cannot be loaded"),
        "{}",
        stderr(&out)
    );

    let bundle = dir.path().join("a.ckpt");
    let out = ckpt(
        &[
            "--store",
            store,
            "export",
            "--all",
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success(), "export of a damaged store succeeded");
    assert!(stderr(&out).contains("seq 3"), "{}", stderr(&out));
    assert!(!bundle.exists(), "a bundle was written");

    let salvaged = dir.path().join("salvaged.ckpt");
    let out = ckpt(
        &[
            "--store",
            store,
            "export",
            "--all",
            "--salvage",
            "-o",
            salvaged.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout(&out).contains("left a@4"), "{}", stdout(&out));

    let target = url(&dir.path().join("rescued.db"));
    let out = ckpt(
        &["--store", store, "salvage", "--to", &target, "--json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(
        report["executions"][0]["copied"],
        json!([1, 2, 5, 6]),
        "{report}"
    );
    assert_eq!(report["executions"][0]["left"][0]["version"], 4, "{report}");
    assert_eq!(report["executions"][1]["exact"], true, "{report}");
    let imported = dir.path().join("imported.db");
    let out = ckpt(
        &[
            "--store",
            &url(&imported),
            "import",
            salvaged.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    for rescued in [target.clone(), url(&imported)] {
        rt().block_on(async {
            let store = Store::open(&rescued).await.expect("open the rescued store");
            for cp in a.iter().filter(|c| ![3, 4].contains(&c.version)) {
                let got = store.load(&cp.id).await.expect("a salvaged checkpoint");
                assert_eq!(
                    (got.state_value(), &got.metadata, got.timestamp, &got.parent),
                    (cp.state_value(), &cp.metadata, cp.timestamp, &cp.parent),
                    "{rescued}: {}",
                    cp.id
                );
            }
            assert!(
                store.at_version("a", 4).await.is_err(),
                "{rescued}: a@4 appeared"
            );
            let bs = store.list("b").await.expect("b");
            assert_eq!(bs.len(), b.len());
            for (got, want) in bs.iter().zip(b) {
                assert_eq!(
                    (got.id.clone(), got.state_value()),
                    (want.id.clone(), want.state_value())
                );
            }
            let next = Checkpoint::new("a", "work", &json!({"after": true})).expect("checkpoint");
            let next = store.save(next).await.expect("save in the rescued store");
            assert_eq!(next.version, 7, "{rescued}: a version was handed out again");
            let history = store
                .history("a", HistoryQuery::default())
                .await
                .expect("history");
            assert_eq!(history.len(), 5, "{rescued}");
        });
    }
    let out = ckpt(&["--store", &target, "verify"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", stdout(&out));
}

/// Finding 9: `export` of a store with a damaged blob fails naming it, and writes nothing (it
/// used to exit 0 and put the damaged blob in the bundle).
#[test]
fn export_refuses_a_damaged_blob() {
    let (dir, db, _) = store_with(None, &[("b", 3, 100)]);
    let changed = rt().block_on(sql(
        &db,
        "UPDATE blobs SET data = zeroblob(length(data)) \
         WHERE hash = (SELECT hash FROM blobs ORDER BY hash LIMIT 1)",
    ));
    assert_eq!(changed, 1);
    let bundle = dir.path().join("b.ckpt");
    let out = ckpt(
        &[
            "--store",
            &url(&db),
            "export",
            "--all",
            "-o",
            bundle.to_str().unwrap(),
        ],
        &[],
    );
    assert!(!out.status.success(), "export bundled a damaged blob");
    assert!(stderr(&out).contains("blob"), "{}", stderr(&out));
    assert!(!bundle.exists(), "a bundle was written");
}

/// Finding 9 on PostgreSQL: a lowered `logs.next_seq` is reported by `Store::verify`, and the
/// next save goes on above the last frame (the append repairs the stored number).
#[cfg(all(feature = "postgres", feature = "testing"))]
#[test]
fn postgres_a_lowered_next_seq_is_reported_and_writes_continue_above_it() {
    let h = ckpt::testing::PostgresHarness::new();
    rt().block_on(async {
        let store = Store::open(h.url()).await.expect("open");
        save(&store, "a", 6, 100).await;
        let mut conn = sqlx::PgConnection::connect(&ckpt::testing::postgres_test_url())
            .await
            .expect("connect");
        let lowered = sqlx::query(&format!(
            "UPDATE {}.logs SET next_seq = 5 WHERE log = 'a'",
            h.schema()
        ))
        .execute(&mut conn)
        .await
        .expect("lower next_seq");
        assert_eq!(lowered.rows_affected(), 1);

        let store = Store::open(h.url()).await.expect("reopen");
        let report = store.verify().await.expect("verify");
        let problems = report.problems();
        assert!(
            problems
                .iter()
                .any(|(kind, m)| *kind == "log" && m.contains("lowered")),
            "{problems:?}"
        );
        let cp = Checkpoint::new("a", "work", &state("a", 7, false)).expect("checkpoint");
        let next = store
            .save(cp)
            .await
            .expect("the save after a lowered next_seq");
        assert_eq!(next.version, 7, "a version that exists was handed out");
        assert!(store.verify().await.expect("verify").is_ok());
    });
}
