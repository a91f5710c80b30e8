//! Stores written by earlier versions of ckpt's formats are still read, and keep working.
//!
//! `tests/fixtures/format1/store.sqlite` was written by the ckpt of commit 60a7b79, the last
//! to write save frames in format 1 (MessagePack headers), with its own CLI: `ckpt demo`, a
//! `fork` of the demo's version 3, a `delete` of its version 2, and `bench --workload tools`
//! (12 steps, 600-byte outputs, blobs) and `--workload long` (30 steps). `checkpoints.json` is
//! what that ckpt's `show --json` printed for every live checkpoint.

#![cfg(feature = "sqlite")]

use std::collections::BTreeMap;
use std::path::Path;
use std::time::UNIX_EPOCH;

use ckpt::{Checkpoint, Store};
use serde_json::Value as Json;

fn fixture() -> (tempfile::TempDir, String) {
    let dir = tempfile::tempdir().unwrap();
    let from = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1/store.sqlite");
    let to = dir.path().join("store.sqlite");
    std::fs::copy(from, &to).unwrap();
    let url = format!("sqlite://{}", to.display());
    (dir, url)
}

/// What the old ckpt printed, by checkpoint id.
fn expected() -> BTreeMap<String, Json> {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/format1/checkpoints.json");
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// Checks that every checkpoint the old ckpt wrote reads back as it printed it.
async fn check_old_checkpoints(store: &Store) {
    let expected = expected();
    assert_eq!(expected.len(), 48, "the fixture's live checkpoints");
    for (id, want) in &expected {
        let (exec, version) = id.rsplit_once('@').unwrap();
        let cp = store
            .at_version(exec, version.parse().unwrap())
            .await
            .unwrap();
        assert_eq!(cp.node_name, want["node"], "{id}");
        assert_eq!(
            Json::Object(cp.metadata.clone().into_iter().collect()),
            want["metadata"]
        );
        let parent = cp.parent.as_ref().map(|p| Json::from(p.to_string()));
        assert_eq!(parent.unwrap_or(Json::Null), want["parent"], "{id}");
        let ms = cp.timestamp.duration_since(UNIX_EPOCH).unwrap().as_millis() as u64;
        assert_eq!(Json::from(ms), want["timestamp_ms"], "{id}");
        assert_eq!(cp.state_json().unwrap(), want["state"], "{id}");
    }
}

/// The first byte of every frame of `exec`'s log: its format.
async fn frame_formats(store: &Store, exec: &str) -> Vec<u8> {
    let frames = store.backend().scan(exec, 1, 10_000).await.unwrap();
    frames.iter().map(|(_, f)| f[0]).collect()
}

#[tokio::test]
async fn a_store_of_format_1_frames_reads_and_grows_in_format_2() {
    let (_dir, url) = fixture();
    let store = Store::open(&url).await.unwrap();
    check_old_checkpoints(&store).await;
    let demo = store
        .executions()
        .await
        .unwrap()
        .into_iter()
        .find(|e| e.execution_id.starts_with("demo-"))
        .unwrap()
        .execution_id;
    assert!(store.at_version(&demo, 2).await.is_err(), "deleted before");

    // New saves on top of the old ones: deltas on format 1 states, a fork of an old version.
    let mut added = Vec::new();
    for exec in store.executions().await.unwrap() {
        let exec = exec.execution_id;
        let before = frame_formats(&store, &exec).await;
        assert!(before.iter().all(|&f| f == 1), "{exec}: {before:?}");
        for step in 0..3 {
            let latest = store.latest(&exec).await.unwrap().unwrap();
            let mut state = latest.state_json().unwrap();
            state["added"] = Json::from(format!("step {step} after format 1"));
            let cp = Checkpoint::new(&exec, "later", &state)
                .unwrap()
                .with_metadata("step", step);
            let saved = store.save(cp).await.unwrap();
            added.push((saved.id.clone(), state));
        }
        let after = frame_formats(&store, &exec).await;
        assert_eq!(after[..before.len()], before[..]);
        assert_eq!(after[before.len()..], [2, 2, 2], "{exec}");
    }
    let fork = store
        .fork(&format!("{demo}@3").parse().unwrap(), "forked-again")
        .await
        .unwrap();
    assert_eq!(frame_formats(&store, "forked-again").await, [2]);

    // Everything reads back, in this store and in a fresh one, and verifies.
    for store in [store.clone(), Store::open(&url).await.unwrap()] {
        check_old_checkpoints(&store).await;
        for (id, state) in &added {
            let cp = store.load(id).await.unwrap();
            assert_eq!(&cp.state_json().unwrap(), state, "{id}");
        }
        let forked = store.load(&fork.id).await.unwrap();
        assert_eq!(
            forked.state_json().unwrap(),
            store
                .at_version(&demo, 3)
                .await
                .unwrap()
                .state_json()
                .unwrap()
        );
        let report = store.verify().await.unwrap();
        assert!(report.is_ok(), "{report:?}");
        for exec in &report.executions {
            assert!(
                exec.damaged_frames.is_empty() && exec.unreadable.is_empty(),
                "{exec:?}"
            );
            assert!(exec.log_problems.is_empty(), "{exec:?}");
        }
        assert_eq!(report.executions.len(), 5);
    }
}

/// Every frame of a SQLite database as `(log, seq, frame)`, read with the schema version it has.
async fn sqlite_frames(url: &str) -> Vec<(String, i64, Vec<u8>)> {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let version: i64 = sqlx::query_scalar("SELECT MAX(version) FROM ckpt_schema")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    let sql = match version {
        1 => "SELECT log, seq, frame FROM frames ORDER BY log, seq",
        2 => {
            "SELECT l.log, f.id & 4294967295, f.frame FROM frames f \
             JOIN logs l ON f.id >> 32 = l.id ORDER BY l.log, f.id"
        }
        v => panic!("schema version {v}"),
    };
    let rows = sqlx::query_as(sql).fetch_all(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    rows
}

/// One number a query returns.
async fn sqlite_number(url: &str, sql: &str) -> i64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let out = sqlx::query_scalar(sql).fetch_one(&mut conn).await.unwrap();
    conn.close().await.unwrap();
    out
}

/// Runs a statement; returns the rows it changed.
async fn sqlite_exec(url: &str, sql: &str) -> u64 {
    use sqlx::Connection;
    let mut conn = sqlx::SqliteConnection::connect(url).await.unwrap();
    let changed = sqlx::query(sql)
        .execute(&mut conn)
        .await
        .unwrap()
        .rows_affected();
    conn.close().await.unwrap();
    changed
}

/// Schema version 1 (frames keyed by log name and sequence) is upgraded to version 2 (one integer
/// key) by the first open, in place: every frame keeps its log, sequence number and bytes, every
/// log its next sequence number, and a log whose frames had lost their `logs` row gets one.
#[tokio::test]
async fn a_schema_1_sqlite_file_is_upgraded_in_place() {
    let (_dir, url) = fixture();
    // Damage version 1 allowed: the frames of "long" without their log row.
    assert_eq!(
        sqlite_exec(&url, "DELETE FROM logs WHERE log LIKE 'bench-long%'").await,
        1
    );
    let before = sqlite_frames(&url).await;
    let next_before = sqlite_number(&url, "SELECT SUM(next_seq) FROM logs").await;
    assert_eq!(before.len(), 30 + 12 + 7 + 1, "the fixture's frames");

    let store = Store::open(&url).await.unwrap();
    check_old_checkpoints(&store).await;
    drop(store);
    assert_eq!(
        sqlite_number(&url, "SELECT MAX(version) FROM ckpt_schema").await,
        2
    );
    assert_eq!(sqlite_frames(&url).await, before);
    // The rows kept their next sequence number; the lost row came back one past its last frame.
    assert_eq!(
        sqlite_number(&url, "SELECT SUM(next_seq) FROM logs").await,
        next_before + 31
    );
    let store = Store::open(&url).await.unwrap();
    check_old_checkpoints(&store).await;
    for exec in store.executions().await.unwrap() {
        let exec = exec.execution_id;
        let latest = store.latest(&exec).await.unwrap().unwrap();
        let saved = store
            .save(Checkpoint::new(&exec, "after", &serde_json::json!({"n": 1})).unwrap())
            .await
            .unwrap();
        assert!(saved.version > latest.version, "{exec}");
        assert_eq!(saved.parent.as_ref(), Some(&latest.id), "{exec}");
    }
    assert!(store.verify().await.unwrap().is_ok());
}

/// A version 1 file with a frame version 2 cannot key is refused, unchanged, naming the way out.
#[tokio::test]
async fn a_schema_1_file_version_2_cannot_hold_is_refused_unchanged() {
    let (_dir, url) = fixture();
    assert_eq!(
        sqlite_exec(
            &url,
            "UPDATE frames SET seq = 5000000000 WHERE log = 'forked' AND seq = 1",
        )
        .await,
        1
    );
    let before = sqlite_frames(&url).await;
    let e = Store::open(&url).await.unwrap_err();
    let chain = std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(": ");
    assert!(
        chain.contains("schema version 1 to 2")
            && chain.contains("1 frames")
            && chain.contains("ckpt export"),
        "{chain}"
    );
    assert_eq!(
        sqlite_number(&url, "SELECT MAX(version) FROM ckpt_schema").await,
        1
    );
    assert_eq!(sqlite_frames(&url).await, before);
}
