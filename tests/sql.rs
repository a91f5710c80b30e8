//! The SQL backends beyond the conformance suite: schema versioning, passwords kept out of
//! errors, URL options, index use on long logs, and real processes: two writers saving to one
//! execution at once, a writer killed with SIGKILL, and (PostgreSQL) the server itself stopped
//! with `pg_ctl stop -m immediate` and restarted under a writer.
//!
//! The PostgreSQL tests need `CKPT_TEST_POSTGRES_URL` (see `scripts/postgres-server.sh`); the
//! server-restart test starts a cluster of its own with that script, so that the shared server
//! of the other tests is not disturbed.

#![cfg(all(feature = "sqlite", feature = "postgres", feature = "testing"))]

use ckpt::backend::BackendExt;
use std::collections::{BTreeMap, HashSet};
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt::backend::sql::postgres::PostgresBackend;
use ckpt::backend::sql::sqlite::SqliteBackend;
use ckpt::backend::{Backend, ConnectOptions, LogAppend, Notify};
use ckpt::testing::rng::XorShift64;
use ckpt::testing::{Harness, PostgresHarness, SqliteHarness};
use ckpt::url::StoreUrl;
use ckpt::{Checkpoint, Store};
use sqlx::Connection;

mod common;

use common::{chain, PgCluster};

/// Set in a child process: what it should do (see [`child_writer`]).
const CHILD_ENV: &str = "CKPT_SQL_CHILD";

fn state_for(writer: &str, step: u64) -> serde_json::Value {
    let text: String = (0..300)
        .map(|i| (b'a' + ((step * 7 + i) % 26) as u8) as char)
        .collect();
    serde_json::json!({ "writer": writer, "step": step, "text": text })
}

// ---- schema versions ----

/// One damaged byte in the schema's text can still parse: `id INTEGER$PRIMARY KEY` makes `id`
/// an ordinary column, no longer the row id, and every log's id reads NULL, so its frames are
/// silently not found while SQLite's integrity check passes. The open refuses such a file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_schema_whose_text_was_damaged() {
    let h = SqliteHarness::new();
    let store = h.open().await;
    save(&store, "e", 1).await;
    store.flush().await.unwrap();
    drop(store);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut bytes = std::fs::read(h.path()).unwrap();
    let needle = b"logs (id INTEGER PRIMARY KEY";
    let at = bytes
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("the schema text in the file")
        + b"logs (id INTEGER".len();
    bytes[at] = b'$';
    std::fs::write(h.path(), &bytes).unwrap();
    let err = Store::open(&h.url()).await.unwrap_err();
    assert!(matches!(err, ckpt::Error::Corrupt { .. }), "{err}");
    let text = chain(&err);
    assert!(
        text.contains("schema") && text.contains("INTEGER$PRIMARY"),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_newer_schema() {
    let h = SqliteHarness::new();
    let store = h.open().await;
    save(&store, "e", 1).await;
    drop(store);
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", h.path().display()))
        .await
        .unwrap();
    sqlx::query("UPDATE ckpt_schema SET version = 99")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    let err = chain(&Store::open(&h.url()).await.unwrap_err());
    assert!(
        err.contains("schema version is 99") && err.contains("newer"),
        "{err}"
    );
    assert!(err.contains("SQLite"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_refuses_a_newer_schema() {
    let h = PostgresHarness::new();
    let store = h.open().await;
    save(&store, "e", 1).await;
    drop(store);
    let mut conn = sqlx::PgConnection::connect(&ckpt::testing::postgres_test_url())
        .await
        .unwrap();
    sqlx::query(&format!(
        "UPDATE {}.ckpt_schema SET version = 99",
        h.schema()
    ))
    .execute(&mut conn)
    .await
    .unwrap();
    let err = chain(&Store::open(h.url()).await.unwrap_err());
    assert!(
        err.contains("schema version is 99") && err.contains("newer"),
        "{err}"
    );
    assert!(
        err.contains("PostgreSQL") && err.contains(h.schema()),
        "{err}"
    );
    // Nothing was written: the version is still the one set by hand.
    let version: i32 = sqlx::query_scalar(&format!(
        "SELECT MAX(version) FROM {}.ckpt_schema",
        h.schema()
    ))
    .fetch_one(&mut conn)
    .await
    .unwrap();
    assert_eq!(version, 99);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_worth_of_opens_create_the_schema_once() {
    let h = PostgresHarness::new();
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = h.url().to_owned();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap();
    }
    let s = SqliteHarness::new();
    let opens: Vec<_> = (0..6)
        .map(|_| {
            let url = s.url();
            tokio::spawn(async move { Store::open(&url).await })
        })
        .collect();
    for open in opens {
        open.await.unwrap().unwrap();
    }
}

/// Writes an entry to the store's search table and reads it back.
async fn search_table_works(store: &Store, what: &str) {
    let table = store
        .backend()
        .capabilities()
        .search_table
        .unwrap_or_else(|| panic!("{what}: no search table"));
    table
        .write_index(vec![(b"k\x00".to_vec(), b"v".to_vec())], Vec::new())
        .await
        .unwrap_or_else(|e| panic!("{what}: write_index: {e}"));
    let got = table.scan_index(b"k", None, 10).await.unwrap();
    assert_eq!(got, [(b"k\x00".to_vec(), b"v".to_vec())], "{what}");
}

/// A store made before the search index's table existed (dropped here) gains it at its next
/// open, without a schema version change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_without_the_search_table_gains_it_at_open() {
    let h = SqliteHarness::new();
    save(&h.open().await, "e", 1).await;
    let mut conn = sqlx::SqliteConnection::connect(&format!("sqlite://{}", h.path().display()))
        .await
        .unwrap();
    sqlx::query("DROP TABLE search_index")
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    search_table_works(&h.open().await, "sqlite").await;

    let h = PostgresHarness::new();
    save(&h.open().await, "e", 1).await;
    let mut conn = sqlx::PgConnection::connect(&ckpt::testing::postgres_test_url())
        .await
        .unwrap();
    sqlx::query(&format!("DROP TABLE {}.search_index", h.schema()))
        .execute(&mut conn)
        .await
        .unwrap();
    conn.close().await.unwrap();
    search_table_works(&h.open().await, "postgres").await;
}

// ---- passwords and URL options ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_appear_in_errors() {
    for url in [
        // Nothing listens on port 1: connection refused until the timeout.
        "postgres://bob:s3cr3t-pw@127.0.0.1:1/app?timeout=1s",
        // An unresolvable host fails at once.
        "postgres://bob:s3cr3t-pw@no-such-host.invalid/app",
        "postgres://bob@127.0.0.1:1/app?password=s3cr3t-pw&timeout=1s",
        "postgresql://bob:s3cr3t%2Dpw@127.0.0.1:1/app?timeout=1s&sslmode=require",
    ] {
        let started = Instant::now();
        let err = Store::open(url).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{url}: connect errors must be fast"
        );
        let shown = chain(&err);
        let debug = format!("{err:?}");
        for text in [&shown, &debug] {
            assert!(!text.contains("s3cr3t"), "{url}: {text}");
            assert!(text.contains("PostgreSQL"), "{url}: {text}");
        }
        assert!(
            shown.contains("bob"),
            "{url}: the redacted URL is named: {shown}"
        );
    }
}

/// The CLI with the store URL from `CKPT_STORE` and the password from `PGPASSWORD` (read by the
/// driver): the error names the server, never the password. (Only with the `cli` feature, which
/// builds the binary.)
#[cfg(feature = "cli")]
#[test]
fn passwords_from_the_environment_stay_out_of_cli_errors() {
    let out = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .arg("demo")
        .env("CKPT_STORE", "postgres://bob@127.0.0.1:1/app?timeout=1s")
        .env("PGPASSWORD", "s3cr3t-from-env")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!all.contains("s3cr3t"), "{all}");
    assert!(
        all.contains("PostgreSQL") && all.contains("127.0.0.1:1"),
        "{all}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_options_are_checked() {
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let cases = [
        (format!("sqlite://{}?colour=red", db.display()), "colour"),
        (format!("sqlite://{}?sync=maybe", db.display()), "sync"),
        (format!("sqlite://{}?timeout=soon", db.display()), "timeout"),
        (
            "postgres://bob:pw-secret@127.0.0.1:1/app?colour=red".to_owned(),
            "colour",
        ),
        (
            "postgres://bob@127.0.0.1:1/app?schema=Bad-Name".to_owned(),
            "schema",
        ),
        (
            "postgres://bob@127.0.0.1:1/app?max_connections=lots".to_owned(),
            "max_connections",
        ),
    ];
    for (url, option) in cases {
        let err = Store::open(&url).await.unwrap_err();
        assert!(
            matches!(err, ckpt::Error::InvalidUrl { .. }),
            "{url}: {err:?}"
        );
        let text = err.to_string();
        assert!(text.contains(option), "{url}: {text}");
        assert!(!text.contains("pw-secret"), "{url}: {text}");
        if option == "colour" {
            for accepted in ["max_connections", "acquire_timeout", "timeout"] {
                assert!(text.contains(accepted), "{url}: {text}");
            }
        }
    }
    // Known options are accepted, and the builder's settings too.
    let ok = format!(
        "sqlite://{}?sync=false&max_connections=2&min_connections=0&max_lifetime=10m&acquire_timeout=5s&timeout=30s",
        db.display()
    );
    Store::builder(&ok)
        .max_connections(3)
        .timeout(Duration::from_secs(20))
        .open()
        .await
        .unwrap();
}

// ---- unreachable servers ----

/// Opening a PostgreSQL URL where nothing listens fails at once and says so: the OS's
/// "connection refused" and the address, not a timeout after 30 s of retries.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_open_fails_fast_on_a_refused_connection() {
    let port = common::free_port();
    let url = format!("postgres://bob@127.0.0.1:{port}/app");
    let text = common::open_fails_fast(Store::builder(&url), port, &url).await;
    assert!(text.to_lowercase().contains("refused"), "{text}");
}

/// A server that accepts the TCP connection and never answers: the open gives up after
/// `acquire_timeout` (from the URL or the builder), not after the whole `timeout`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_open_honours_acquire_timeout_against_a_silent_server() {
    let (silent, port) = common::silent_listener();
    let base = format!("postgres://bob@127.0.0.1:{port}/app");
    for (url, builder_timeout, shown) in [
        (format!("{base}?acquire_timeout=1s"), None, "1s"),
        (base.clone(), Some(Duration::from_millis(500)), "500ms"),
    ] {
        let mut builder = Store::builder(&url);
        if let Some(t) = builder_timeout {
            builder = builder.acquire_timeout(t);
        }
        let text = common::open_fails_fast(builder, port, &url).await;
        assert!(
            text.contains(&format!("acquire timeout of {shown}")),
            "{text}"
        );
    }
    drop(silent);
}

// ---- opening without creating ----

/// `create_if_missing(false)`: a PostgreSQL schema without ckpt's tables is `NotFound` and is
/// not created (nor its tables); once a store exists there, it opens. SQLite: no file, no store,
/// and the file is not created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_without_creating_refuses_a_missing_store() {
    let h = PostgresHarness::new();
    let e = Store::builder(h.url())
        .create_if_missing(false)
        .open()
        .await
        .expect_err("the schema does not exist yet");
    assert!(e.is_not_found(), "{e:?}");
    assert!(e.to_string().contains(h.schema()), "{e}");
    let mut conn = sqlx::PgConnection::connect(&std::env::var("CKPT_TEST_POSTGRES_URL").unwrap())
        .await
        .unwrap();
    let schemas: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = $1")
        .bind(h.schema())
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(schemas, 0, "a read-only open created the schema");
    drop(h.open().await);
    let store = Store::builder(h.url())
        .create_if_missing(false)
        .open()
        .await
        .expect("an existing (empty) store opens");
    assert!(store.executions().await.unwrap().is_empty());

    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("x.db");
    let url = format!("sqlite://{}", db.display());
    let e = Store::builder(&url)
        .create_if_missing(false)
        .open()
        .await
        .expect_err("no file");
    assert!(e.is_not_found(), "{e:?}");
    assert!(!db.exists());
    drop(Store::open(&url).await.unwrap());
    Store::builder(&url)
        .create_if_missing(false)
        .open()
        .await
        .expect("the file exists now");
}

// ---- long logs ----

async fn sqlite_backend(url: &str) -> SqliteBackend {
    match StoreUrl::parse(url).unwrap() {
        StoreUrl::Sqlite(raw) => SqliteBackend::open(&raw, &ConnectOptions::default())
            .await
            .unwrap(),
        other => panic!("not an SQLite URL: {other:?}"),
    }
}

async fn postgres_backend(url: &str) -> PostgresBackend {
    match StoreUrl::parse(url).unwrap() {
        StoreUrl::Postgres(raw) => PostgresBackend::open(&raw, &ConnectOptions::default())
            .await
            .unwrap(),
        other => panic!("not a PostgreSQL URL: {other:?}"),
    }
}

/// Appends 100,000 small frames to `log`, 10,000 per append.
async fn fill(backend: &dyn Backend, log: &str) {
    for chunk in 0..10u64 {
        let frames = (0..10_000u64)
            .map(|i| (chunk * 10_000 + i + 1).to_be_bytes().to_vec())
            .collect();
        backend
            .append(vec![LogAppend::new(log, chunk * 10_000 + 1, frames)])
            .await
            .unwrap();
    }
    assert_eq!(backend.next_seq(log).await.unwrap(), 100_001);
}

async fn assert_one_frame_read(backend: &dyn Backend, log: &str) {
    let got = backend.scan(log, 54_321, 1).await.unwrap();
    assert_eq!(got, vec![(54_321, 54_321u64.to_be_bytes().to_vec())]);
    let got = backend.scan(log, 99_999, 10).await.unwrap();
    assert_eq!(got.len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reads_one_event_of_a_long_log_through_the_index() {
    let h = SqliteHarness::new();
    let backend = sqlite_backend(&format!("{}?sync=false", h.url())).await;
    fill(&backend, "long").await;
    assert_one_frame_read(&backend, "long").await;
    // The plan of the very statement scan runs: a search of the primary key, no table scan,
    // no sort.
    let mut conn = sqlx::SqliteConnection::connect(&h.url()).await.unwrap();
    let plan: Vec<String> = sqlx::query(&format!(
        "EXPLAIN QUERY PLAN {}",
        ckpt::backend::sql::sqlite::SCAN_SQL
    ))
    .bind("long")
    .bind(54_321i64)
    .bind(1i64)
    .fetch_all(&mut conn)
    .await
    .unwrap()
    .iter()
    .map(|row| sqlx::Row::get::<String, _>(row, "detail"))
    .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("SEARCH f USING INTEGER PRIMARY KEY"),
        "{plan}"
    );
    assert!(
        !plan.contains("SCAN") && !plan.contains("TEMP B-TREE"),
        "{plan}"
    );
}

/// A SQLite frame's key holds a sequence number of 32 bits: a log that would pass it is refused
/// with an error naming the limit, and the log stays as it was; up to the limit it works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_refuses_a_log_past_its_sequence_limit() {
    let h = SqliteHarness::new();
    let backend = sqlite_backend(&h.url()).await;
    let last = u64::from(u32::MAX);
    backend.raise_next_seq("edge", last).await.unwrap();
    backend
        .append(vec![LogAppend::new("edge", last, vec![b"last".to_vec()])])
        .await
        .unwrap();
    assert_eq!(
        backend.scan("edge", last, 10).await.unwrap(),
        vec![(last, b"last".to_vec())]
    );
    assert!(backend.scan("edge", last + 1, 10).await.unwrap().is_empty());
    assert!(backend.scan("edge", u64::MAX, 10).await.unwrap().is_empty());
    let e = backend
        .append(vec![LogAppend::new("edge", last + 1, vec![b"x".to_vec()])])
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 4294967295 frames per log"), "{e}");
    let e = backend
        .raise_next_seq("other", last + 2)
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("at most 4294967295 frames per log"), "{e}");
    assert_eq!(backend.next_seq("edge").await.unwrap(), last + 1);
    assert_eq!(backend.next_seq("other").await.unwrap(), 1);
    // A neighbouring log's frames are not in this one's key range.
    backend
        .append(vec![LogAppend::new("next", 1, vec![b"n".to_vec()])])
        .await
        .unwrap();
    assert_eq!(backend.scan("edge", 0, 10).await.unwrap().len(), 1);
    backend.truncate("edge", last + 1).await.unwrap();
    assert!(backend.scan("edge", 0, 10).await.unwrap().is_empty());
    assert_eq!(backend.scan("next", 0, 10).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_reads_one_event_of_a_long_log_through_the_index() {
    let h = PostgresHarness::new();
    let backend = postgres_backend(h.url()).await;
    fill(&backend, "long").await;
    assert_one_frame_read(&backend, "long").await;
    let mut conn = sqlx::PgConnection::connect(&ckpt::testing::postgres_test_url())
        .await
        .unwrap();
    sqlx::query(&format!("ANALYZE {}.frames", h.schema()))
        .execute(&mut conn)
        .await
        .unwrap();
    // EXPLAIN of the very statement scan runs, with its parameters as a prepared statement.
    let sql = ckpt::backend::sql::postgres::scan_sql(h.schema());
    sqlx::query(&format!("PREPARE scan_plan(text, bigint, bigint) AS {sql}"))
        .execute(&mut conn)
        .await
        .unwrap();
    let plan: Vec<String> = sqlx::query_scalar("EXPLAIN EXECUTE scan_plan('long', 54321, 1)")
        .fetch_all(&mut conn)
        .await
        .unwrap();
    let plan = plan.join("\n");
    assert!(plan.contains("Index Scan using frames_pkey"), "{plan}");
    assert!(
        !plan.contains("Seq Scan") && !plan.contains("Sort"),
        "{plan}"
    );
}

// ---- concurrent appends, watching ----

/// 40 logs, two appends racing at sequence 1 on each, all at once (SQLite commits them in shared
/// transactions): exactly one per log wins, the other gets a conflict, and the winners' frames
/// (and blobs) are all there.
async fn racing_appends_have_one_winner_per_log(backend: Arc<dyn Backend>) {
    let tasks: Vec<_> = (0..80u8)
        .map(|i| {
            let backend = backend.clone();
            tokio::spawn(async move {
                let log = format!("race-{}", i / 2);
                let append = LogAppend::new(log.clone(), 1, vec![vec![i], vec![i, i]]);
                let blob = ([i; 32], vec![i; 10]);
                (i, backend.commit(vec![append], vec![blob]).await)
            })
        })
        .collect();
    let mut winners = BTreeMap::new();
    for task in tasks {
        let (i, result) = task.await.unwrap();
        match result {
            Ok(()) => assert!(
                winners.insert(i / 2, i).is_none(),
                "two winners on log {}",
                i / 2
            ),
            Err(e) => assert!(e.is_conflict(), "{e}"),
        }
    }
    assert_eq!(winners.len(), 40);
    for (log, i) in winners {
        let frames = backend.scan(&format!("race-{log}"), 1, 10).await.unwrap();
        assert_eq!(frames, vec![(1, vec![i]), (2, vec![i, i])]);
        assert_eq!(backend.get_blob(&[i; 32]).await.unwrap(), Some(vec![i; 10]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_racing_appends_have_one_winner_per_log() {
    let h = SqliteHarness::new();
    racing_appends_have_one_winner_per_log(Arc::new(sqlite_backend(&h.url()).await)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_racing_appends_have_one_winner_per_log() {
    let h = PostgresHarness::new();
    racing_appends_have_one_winner_per_log(Arc::new(postgres_backend(h.url()).await)).await;
}

/// A waiter on one backend wakes when another backend (as another process would) appends: the
/// notification arrives long before the wait's timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_wait_for_append_wakes_on_a_notification() {
    let h = PostgresHarness::new();
    let watcher = Arc::new(postgres_backend(h.url()).await);
    let writer = postgres_backend(h.url()).await;
    // Connects the listener.
    watcher
        .wait_for_append("w", 1, Duration::from_millis(10))
        .await
        .unwrap();
    let timeout = Duration::from_secs(120);
    let started = Instant::now();
    let waiting = {
        let watcher = watcher.clone();
        tokio::spawn(async move { watcher.wait_for_append("w", 1, timeout).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        !waiting.is_finished(),
        "returned before anything was appended"
    );
    writer
        .commit(
            vec![LogAppend::new("w", 1, vec![b"x".to_vec()])],
            Vec::new(),
        )
        .await
        .unwrap();
    waiting.await.unwrap().unwrap();
    assert!(
        started.elapsed() < timeout / 2,
        "woke only at the timeout: no notification"
    );
}

// ---- real processes ----

async fn save(store: &Store, exec: &str, step: u64) -> Checkpoint {
    let cp = Checkpoint::new(exec, "step", &state_for("parent", step)).unwrap();
    store.save(cp).await.unwrap()
}

/// The child half of the process tests: only does anything when `CKPT_SQL_CHILD` is set, to
/// `URL|EXECUTION|WRITER|SAVES` (`SAVES` 0: until killed). Prints `ack VERSION STEP` after each
/// save returned.
#[test]
fn child_writer() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let parts: Vec<&str> = spec.split('|').collect();
    let [url, exec, writer, saves] = parts[..] else {
        panic!("bad {CHILD_ENV}: {spec}");
    };
    let saves: u64 = saves.parse().unwrap();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let store = Store::open(url).await.expect("child opens the store");
        let mut step = 1;
        while saves == 0 || step <= saves {
            let cp = Checkpoint::new(exec, writer, &state_for(writer, step)).unwrap();
            let saved = store.save(cp).await.expect("save");
            println!("ack {} {step}", saved.version);
            step += 1;
        }
    });
}

fn spawn_writer(url: &str, exec: &str, writer: &str, saves: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "child_writer", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{url}|{exec}|{writer}|{saves}"))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap()
}

/// Reads `ack VERSION STEP` lines from a child to the end of its output; kills it (SIGKILL)
/// when `stop` says so, and reads on: every complete line written before the kill is an
/// acknowledged save (the newest ones, written just before the kill, are the most at risk). A
/// line the kill cut short is not.
fn collect_acks(child: &mut Child, mut stop: impl FnMut(usize) -> bool) -> Vec<(u64, u64)> {
    let mut stdout = BufReader::new(child.stdout.take().unwrap());
    let mut acks = Vec::new();
    let mut killed = false;
    let mut line = String::new();
    loop {
        line.clear();
        if stdout.read_line(&mut line).unwrap() == 0 || !line.ends_with('\n') {
            break;
        }
        // The first line follows libtest's `test child_writer ... ` on the same line.
        let Some(rest) = line.rfind("ack ").map(|at| line[at + 4..].trim_end()) else {
            continue;
        };
        let (v, s) = rest.split_once(' ').unwrap();
        acks.push((v.parse().unwrap(), s.parse().unwrap()));
        if !killed && stop(acks.len()) {
            child.kill().unwrap(); // SIGKILL on Unix
            killed = true;
        }
    }
    child.wait().unwrap();
    acks
}

/// Every acknowledged save of each writer loads with its exact state, each version once;
/// versions strictly increase and the log has no gap.
async fn check_acks(store: &Store, exec: &str, acks: &BTreeMap<String, Vec<(u64, u64)>>) {
    let list = store.list(exec).await.unwrap();
    let versions: Vec<u64> = list.iter().map(|c| c.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions out of order: {versions:?}"
    );
    let mut seen = HashSet::new();
    for (writer, acked) in acks {
        for (version, step) in acked {
            assert!(
                seen.insert(*version),
                "version {version} acknowledged twice"
            );
            let cp = store
                .at_version(exec, *version)
                .await
                .unwrap_or_else(|e| panic!("acknowledged version {version} lost: {e}"));
            let state: serde_json::Value = cp.state().unwrap();
            assert_eq!(state, state_for(writer, *step), "version {version}");
        }
    }
    let frames = store.backend().scan(exec, 1, 1_000_000).await.unwrap();
    let next = store.backend().next_seq(exec).await.unwrap();
    let seqs: Vec<u64> = frames.iter().map(|(s, _)| *s).collect();
    assert_eq!(seqs, (1..next).collect::<Vec<u64>>(), "gaps in the log");
}

async fn two_processes_save_to_one_execution(url: &str) {
    let exec = "shared";
    let mut a = spawn_writer(url, exec, "a", 150);
    let mut b = spawn_writer(url, exec, "b", 150);
    let handle_b = std::thread::spawn(move || collect_acks(&mut b, |_| false));
    let acks_a = collect_acks(&mut a, |_| false);
    let acks_b = handle_b.join().unwrap();
    assert_eq!(acks_a.len(), 150, "writer a did not finish");
    assert_eq!(acks_b.len(), 150, "writer b did not finish");
    let store = Store::open(url).await.unwrap();
    assert_eq!(store.list(exec).await.unwrap().len(), 300);
    let acks = BTreeMap::from([("a".to_owned(), acks_a), ("b".to_owned(), acks_b)]);
    check_acks(&store, exec, &acks).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_two_processes_save_to_one_execution() {
    let h = SqliteHarness::new();
    two_processes_save_to_one_execution(&h.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_two_processes_save_to_one_execution() {
    let h = PostgresHarness::new();
    h.open().await;
    two_processes_save_to_one_execution(h.url()).await;
}

/// Four rounds of: a writer saves in a loop and is killed with SIGKILL after a seeded random
/// number of acknowledged saves (`CKPT_CRASH_SEED=N` repeats a run; the seed is printed); then
/// every acknowledged save, to the last line the writer printed, loads with its exact state.
async fn sigkill_keeps_every_acknowledged_save(url: &str) {
    let exec = "crash";
    let seed = std::env::var("CKPT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        });
    eprintln!("crash seed {seed} (CKPT_CRASH_SEED={seed} repeats this run)");
    let mut rng = XorShift64::from_state(seed | 1);
    let mut acks: BTreeMap<String, Vec<(u64, u64)>> = BTreeMap::new();
    for round in 0..4usize {
        let writer = format!("w{round}");
        let mut child = spawn_writer(url, exec, &writer, 0);
        let target = 1 + (rng.next_u64() % 250) as usize;
        let got = collect_acks(&mut child, |n| n == target);
        assert!(
            got.len() >= target,
            "seed {seed} round {round}: the writer stopped after {} saves",
            got.len()
        );
        eprintln!(
            "round {round}: killed after ack {target}, {} acks in all",
            got.len()
        );
        acks.insert(writer, got);
    }
    let store = Store::open(url).await.unwrap();
    check_acks(&store, exec, &acks).await;
    let next = store
        .save(Checkpoint::new(exec, "after", &state_for("after", 0)).unwrap())
        .await
        .unwrap();
    let newest = acks.values().flatten().map(|a| a.0).max().unwrap();
    assert!(next.version > newest);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sigkill_keeps_every_acknowledged_save() {
    let h = SqliteHarness::new();
    sigkill_keeps_every_acknowledged_save(&h.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sigkill_keeps_every_acknowledged_save() {
    let h = PostgresHarness::new();
    h.open().await;
    sigkill_keeps_every_acknowledged_save(h.url()).await;
}

// ---- the PostgreSQL server restarting under a writer ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_server_restart_under_a_writer_loses_no_acknowledged_save() {
    let cluster = PgCluster::start();
    // The writer retries through the outage: a generous timeout.
    let url = format!("{}?timeout=120s&acquire_timeout=120s", cluster.url);
    let exec = "restart";
    Store::open(&url).await.unwrap();
    let mut child = spawn_writer(&url, exec, "w", 0);
    let log = format!("{}/../server.log", cluster.data);
    let mut restarted_at = None;
    let acks = collect_acks(&mut child, |n| {
        if n == 100 {
            // Mid-run: the server dies without a clean shutdown, then comes back.
            cluster.pg_ctl(&["stop", "-m", "immediate"]);
            std::thread::sleep(Duration::from_millis(500));
            cluster.pg_ctl(&["-l", &log, "-w", "-t", "60", "start"]);
            restarted_at = Some(n);
        }
        n == 250
    });
    assert_eq!(restarted_at, Some(100));
    assert!(
        acks.len() >= 250,
        "the writer did not carry on after the restart"
    );
    let store = Store::open(&url).await.unwrap();
    check_acks(&store, exec, &BTreeMap::from([("w".to_owned(), acks)])).await;
}
