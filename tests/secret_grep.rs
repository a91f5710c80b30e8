//! Clearing an execution, running gc and compacting leaves no byte of its state in the store's
//! files: a recognizable secret is saved, found by grepping the raw files, cleared, collected,
//! compacted (`ckpt compact`, the real binary), and then found nowhere; what else the store
//! holds still loads. sled and SQLite work on a temporary directory; PostgreSQL and Redis on a
//! server of the test's own, whose whole data directory is grepped.
#![cfg(all(feature = "sled", feature = "sqlite"))]

use std::path::Path;
use std::time::{Duration, Instant};

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

/// Runs the real binary: `ckpt --store URL compact --json`; returns its report.
fn ckpt_compact(url: &str) -> serde_json::Value {
    let out = common::cli::command()
        .args(["--store", url, "compact", "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The lines of `report[field]` (`steps` or `caveats`).
fn lines(report: &serde_json::Value, field: &str) -> Vec<String> {
    report[field]
        .as_array()
        .unwrap_or_else(|| panic!("no {field} in {report}"))
        .iter()
        .map(|v| v.as_str().unwrap().to_owned())
        .collect()
}

/// The files under `dir` holding the secret, once none do or after `patience`: a server may
/// delete old files in the background.
fn grep_until_clean(dir: &Path, patience: Duration) -> Vec<String> {
    let deadline = Instant::now() + patience;
    loop {
        let hits = grep_dir(dir, SECRET.as_bytes());
        if hits.is_empty() || Instant::now() >= deadline {
            return hits;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
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
    // Online compaction of sled is refused with what to do instead.
    let refused = store.compact().await.unwrap_err();
    assert!(
        matches!(&refused, ckpt::Error::InvalidInput(m) if m.contains("ckpt --store")),
        "{refused}"
    );
    drop(store);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;

    let report = ckpt_compact(&url);
    assert_eq!(report["backend"], "sled", "{report}");
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

/// PostgreSQL keeps deleted rows in its table files until `VACUUM FULL`, and in its WAL until
/// the segments holding them are retired: compact does both. The secret is written, cleared and
/// compacted with `wal_recycle = on` (the default), where retired segments are renamed for reuse
/// and keep their bytes, which compact reports; after the operator turns it off, one more
/// compact (moving the WAL through the segments recycled before) leaves nothing of the secret
/// anywhere in the data directory.
#[cfg(feature = "postgres")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_clear_gc_and_compact_leave_no_trace_of_a_secret() {
    use sqlx::Connection;

    let cluster = common::PgCluster::start();
    let data = Path::new(&cluster.data);
    let store = Store::open(&cluster.url).await.unwrap();
    let mut admin = sqlx::PgConnection::connect(&cluster.url).await.unwrap();
    let kept = save_secrets(&store).await;
    // A checkpoint writes the rows into the table files too, so the control covers both the
    // tables and the WAL. Frames and blobs are stored uncompressed (STORAGE EXTERNAL), so TOAST
    // compression does not hide the secret from the grep.
    sqlx::raw_sql("CHECKPOINT")
        .execute(&mut admin)
        .await
        .unwrap();
    let before = grep_dir(data, SECRET.as_bytes());
    assert!(
        before.iter().any(|h| h.contains("/pg_wal/"))
            && before.iter().any(|h| h.contains("/base/")),
        "the grep does not find the secret in both the WAL and the tables: {before:?}"
    );

    store.clear("secret").await.unwrap();
    let gc = store.gc().await.unwrap();
    assert!(gc.blobs_removed > 0 && gc.frames_removed > 0, "{gc:?}");
    let on_defaults = store.compact().await.unwrap();
    assert!(
        on_defaults
            .caveats
            .iter()
            .any(|c| c.contains("wal_recycle")),
        "{on_defaults:#?}"
    );
    let hits = grep_dir(data, SECRET.as_bytes());
    assert!(
        hits.iter().all(|h| h.contains("/pg_wal/")),
        "the secret survives outside the WAL: {hits:?}"
    );
    eprintln!("with wal_recycle = on, the secret is left in {hits:?}");

    // Two statements: ALTER SYSTEM refuses the implicit transaction of a multi-statement query.
    for sql in [
        "ALTER SYSTEM SET wal_recycle = off",
        "SELECT pg_reload_conf()",
    ] {
        sqlx::raw_sql(sql).execute(&mut admin).await.unwrap();
    }
    // The reload reaches each server process (the checkpointer among them) asynchronously.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let mut fresh = sqlx::PgConnection::connect(&cluster.url).await.unwrap();
        let v: String = sqlx::query_scalar("SHOW wal_recycle")
            .fetch_one(&mut fresh)
            .await
            .unwrap();
        if v == "off" {
            break;
        }
        assert!(Instant::now() < deadline, "wal_recycle is still {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    admin.close().await.unwrap();

    let report = ckpt_compact(&cluster.url);
    assert_eq!(report["backend"], "PostgreSQL", "{report}");
    assert!(lines(&report, "caveats").is_empty(), "{report:#}");
    let steps = lines(&report, "steps");
    for what in ["VACUUM FULL", "pg_switch_wal", "CHECKPOINT"] {
        assert!(
            steps.iter().any(|s| s.starts_with(what)),
            "no {what}: {report:#}"
        );
    }
    eprintln!(
        "PostgreSQL tables: {} -> {} bytes; steps {steps:#?}",
        report["bytes_before"], report["bytes_after"]
    );
    let hits = grep_until_clean(data, Duration::from_secs(2));
    assert!(hits.is_empty(), "the secret survives in {hits:?}");

    assert_eq!(
        store.load(&kept.id).await.unwrap().state_json().unwrap(),
        kept.state_json().unwrap()
    );
    assert!(store.list("secret").await.unwrap().is_empty());
}

/// Redis keeps deleted keys in its append-only file (the commands that wrote them) and in its
/// RDB snapshot until they are rewritten: compact runs `BGREWRITEAOF` and `BGSAVE`, and Redis 7
/// deletes the old AOF files in the background, after which nothing of the secret is left.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_clear_gc_and_compact_leave_no_trace_of_a_secret() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    // `rdbcompression no`: with LZF (the default) strings in an RDB file (and in the AOF's RDB
    // preamble) are compressed, which turns the secret's bytes into back references: the grep
    // would find nothing whether the secret is there or not, and prove nothing.
    let _server = common::Server(common::start_server(
        dir.path(),
        port,
        &["--save", "3600 1", "--rdbcompression", "no"],
    ));
    let url = format!("redis://127.0.0.1:{port}/0");
    let store = Store::open(&url).await.unwrap();
    let kept = save_secrets(&store).await;
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    redis::cmd("SAVE")
        .query_async::<()>(&mut conn)
        .await
        .unwrap();
    let before = grep_dir(dir.path(), SECRET.as_bytes());
    assert!(
        before.iter().any(|h| h.ends_with("dump.rdb"))
            && before.iter().any(|h| h.contains("appendonlydir")),
        "the grep does not find the secret in both the RDB file and the AOF: {before:?}"
    );

    store.clear("secret").await.unwrap();
    let gc = store.gc().await.unwrap();
    assert!(gc.blobs_removed > 0 && gc.frames_removed > 0, "{gc:?}");
    let report = ckpt_compact(&url);
    assert_eq!(report["backend"], "redis", "{report}");
    assert!(lines(&report, "caveats").is_empty(), "{report:#}");
    let steps = lines(&report, "steps");
    for what in ["BGREWRITEAOF", "BGSAVE"] {
        assert!(
            steps.iter().any(|s| s.contains(what)),
            "no {what}: {report:#}"
        );
    }
    let hits = grep_until_clean(dir.path(), Duration::from_secs(5));
    assert!(hits.is_empty(), "the secret survives in {hits:?}");

    assert_eq!(
        store.load(&kept.id).await.unwrap().state_json().unwrap(),
        kept.state_json().unwrap()
    );
    assert!(store.list("secret").await.unwrap().is_empty());
}

/// A word only the cleared execution held, as the search index keeps words (lower case).
const WORD: &str = "xylophonist7731";

/// Saves `keep` and three checkpoints of `secret` whose states hold [`WORD`] (in a short string
/// and in a long one); flushes.
async fn save_words(store: &Store) {
    store
        .save(Checkpoint::new("keep", "n", &json!({ "doc": "unrelated words" })).unwrap())
        .await
        .unwrap();
    for i in 0..3 {
        let state = json!({
            "short": format!("the {WORD} called {i}"),
            "long": format!("{} {WORD}", "z".repeat(500 + i)),
        });
        store
            .save(Checkpoint::new("secret", "n", &state).unwrap())
            .await
            .unwrap();
    }
    store.flush().await.unwrap();
}

/// The search index holds the words of the states (that is its job); clear and gc take them
/// with the checkpoints, so after compaction no file holds the word; the index still answers
/// for what is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_indexed_stores_words_leave_with_clear_gc_and_compact() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        dir.path().join("sled").display().to_string(),
        format!("sqlite://{}", dir.path().join("ckpt.db").display()),
    ] {
        let store = open(&url).await;
        store.reindex().await.unwrap();
        save_words(&store).await;
        let page = store.search(&ckpt::SearchQuery::text(WORD)).await.unwrap();
        assert_eq!(page.method, ckpt::SearchMethod::Index, "{url}");
        assert_eq!(page.hits.len(), 3, "{url}");
        store.flush().await.unwrap();
        assert!(
            !grep_dir(dir.path(), WORD.as_bytes()).is_empty(),
            "{url}: the grep does not find the indexed word"
        );
        store.clear("secret").await.unwrap();
        store.gc().await.unwrap();
        store.flush().await.unwrap();
        drop(store);
        tokio::time::sleep(Duration::from_millis(200)).await;
        ckpt_compact(&url);
        let hits = grep_dir(dir.path(), WORD.as_bytes());
        assert!(hits.is_empty(), "{url}: the word survives in {hits:?}");
        let store = open(&url).await;
        let page = store
            .search(&ckpt::SearchQuery::text("unrelated"))
            .await
            .unwrap();
        assert_eq!(page.method, ckpt::SearchMethod::Index, "{url}");
        assert_eq!(page.hits.len(), 1, "{url}");
        assert!(store.verify().await.unwrap().is_ok(), "{url}");
        drop(store);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// An encrypted store refuses a search index and searches by decrypting; no file of it holds
/// a word of its states in plaintext.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encrypted_store_writes_no_plaintext_word() {
    let dir = tempfile::tempdir().unwrap();
    for url in [
        format!("sled://{}", dir.path().join("sled").display()),
        format!("sqlite://{}", dir.path().join("ckpt.db").display()),
    ] {
        let store = Store::builder(&url)
            .encryption(ckpt::crypto::Key::generate())
            .open()
            .await
            .unwrap();
        let refused = store.reindex().await.unwrap_err();
        assert!(
            matches!(&refused, ckpt::Error::InvalidInput(m) if m.contains("encrypted")),
            "{refused}"
        );
        save_words(&store).await;
        let page = store.search(&ckpt::SearchQuery::text(WORD)).await.unwrap();
        assert_eq!(page.method, ckpt::SearchMethod::Scan, "{url}");
        assert_eq!(page.hits.len(), 3, "{url}");
        store.flush().await.unwrap();
        drop(store);
        tokio::time::sleep(Duration::from_millis(200)).await;
        let hits = grep_dir(dir.path(), WORD.as_bytes());
        assert!(hits.is_empty(), "{url}: a plaintext word in {hits:?}");
        let hits = grep_dir(dir.path(), b"unrelated");
        assert!(hits.is_empty(), "{url}: a plaintext word in {hits:?}");
    }
}
