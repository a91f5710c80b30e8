//! Clearing an execution, running gc and compacting leaves no byte of its state in the store's
//! files: a recognizable secret is saved, found by grepping the raw files, cleared, collected,
//! compacted (`ckpt compact`, the real binary), and then found nowhere; what else the store
//! holds still loads.
#![cfg(all(feature = "sled", feature = "sqlite"))]

use std::process::Command;

mod common;

use ckpt::{Checkpoint, Store};
use common::grep_dir;
use serde_json::json;

const SECRET: &str = "PATIENT-RECORD-7731-do-not-keep";

/// Saves an unrelated execution `keep` (returned) and five checkpoints of `secret` holding the
/// secret inline in the frame, as a blob and as a chunked leaf; flushes.
async fn save_secrets(store: &Store) -> Checkpoint {
    let kept = store
        .save(Checkpoint::new("keep", "n", &json!({ "doc": "unrelated ".repeat(100) })).unwrap())
        .await
        .unwrap();
    for i in 0..5 {
        let state = json!({
            "short": format!("{SECRET}-{i}"),
            "long": format!("{SECRET} {}", "x".repeat(400 + i)),
            "huge": format!("{SECRET} {}", "y".repeat(70_000 + i)),
        });
        store
            .save(Checkpoint::new("secret", "n", &state).unwrap())
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
    kept
}

async fn open(path: &str) -> Store {
    for _ in 0..100 {
        if let Ok(s) = Store::open(path).await {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("cannot open {path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clear_gc_and_compact_leave_no_trace_of_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store");
    let url = path.display().to_string();
    let store = open(&url).await;
    let kept = save_secrets(&store).await;
    assert!(
        !grep_dir(&path, SECRET.as_bytes()).is_empty(),
        "the grep does not find what is in the files"
    );
    store.clear("secret").await.unwrap();
    let report = store.gc().await.unwrap();
    assert!(
        report.blobs_removed > 0 && report.frames_removed > 0,
        "{report:?}"
    );
    store.flush().await.unwrap();
    drop(store);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let out = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .args(["--store", &url, "compact", "--json"])
        .env_remove("CKPT_STORE")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let hits = grep_dir(dir.path(), SECRET.as_bytes());
    assert!(hits.is_empty(), "the secret survives in {hits:?}");

    let store = open(&url).await;
    assert_eq!(
        store.load(&kept.id).await.unwrap().state_json().unwrap(),
        kept.state_json().unwrap()
    );
    assert!(store.list("secret").await.unwrap().is_empty());
    store
        .save(Checkpoint::new("secret", "n", &json!({ "fresh": true })).unwrap())
        .await
        .unwrap();
}

/// SQLite overwrites deleted rows (`secure_delete`) and a flush empties its WAL: after clear, gc
/// and flush, the file holds nothing of the secret; what else it holds still loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_clear_and_gc_leave_no_trace_of_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("ckpt.db").display());
    let store = Store::open(&url).await.unwrap();
    let kept = save_secrets(&store).await;
    assert!(
        !grep_dir(dir.path(), SECRET.as_bytes()).is_empty(),
        "the grep does not find what is in the files"
    );
    store.clear("secret").await.unwrap();
    store.gc().await.unwrap();
    store.flush().await.unwrap();
    let hits = grep_dir(dir.path(), SECRET.as_bytes());
    assert!(hits.is_empty(), "the secret survives in {hits:?}");
    assert_eq!(
        store.load(&kept.id).await.unwrap().state_json().unwrap(),
        kept.state_json().unwrap()
    );
}
