//! The Redis backend beyond the conformance suite: compare-and-append through the Lua script,
//! expiry, watch woken by another process, two processes appending to one execution, a server
//! killed with SIGKILL and restarted under a writer, passwords kept out of messages, URL option
//! errors, and Cluster's `shard=execution` layout.
//!
//! Needs `CKPT_TEST_REDIS_URL` and `CKPT_TEST_REDIS_CLUSTER_URL` (`eval "$(scripts/servers.sh
//! start)"`); the fault and password tests start their own `redis-server` (on PATH).

#![cfg(all(feature = "redis", feature = "testing"))]

use ckpt::backend::BackendExt;
use std::collections::HashSet;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ckpt::backend::LogAppend;
use ckpt::testing::{Harness, RedisClusterHarness, RedisHarness};
use ckpt::{Checkpoint, Error, Store};
use futures_util::StreamExt;

mod common;

use common::{free_port, open_fails_fast, silent_listener, start_server, Server};

/// Set in a child process started by a test below: what the child does, and on which store.
const CHILD_ROLE: &str = "CKPT_REDIS_CHILD_ROLE";
const CHILD_URL: &str = "CKPT_REDIS_CHILD_URL";
const CHILD_EXEC: &str = "CKPT_REDIS_CHILD_EXEC";
const CHILD_SAVES: usize = 40;

fn state_for(tag: &str, step: u64) -> serde_json::Value {
    let text: String = (0..300)
        .map(|i| (b'a' + ((step * 7 + i) % 26) as u8) as char)
        .collect();
    serde_json::json!({ "step": step, "tag": tag, "text": text })
}

/// Starts this test binary again running only `child_main`, as `role` on `url`/`exec`.
fn spawn_child(role: &str, url: &str, exec: &str) -> Child {
    let exe = std::env::current_exe().expect("the test binary's path");
    Command::new(exe)
        .args(["--exact", "child_main", "--nocapture", "--test-threads=1"])
        .env(CHILD_ROLE, role)
        .env(CHILD_URL, url)
        .env(CHILD_EXEC, exec)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawn the child test process")
}

/// The child half of the multi-process tests; does nothing unless started by `spawn_child`.
#[tokio::test]
async fn child_main() {
    let (Ok(role), Ok(url), Ok(exec)) = (
        std::env::var(CHILD_ROLE),
        std::env::var(CHILD_URL),
        std::env::var(CHILD_EXEC),
    ) else {
        return;
    };
    let store = Store::open(&url).await.expect("child opens the store");
    let saves = if role == "one" { 1 } else { CHILD_SAVES };
    for step in 0..saves {
        let step = step as u64;
        let cp = Checkpoint::new(&exec, &role, &state_for(&role, step)).expect("checkpoint");
        let saved = store.save(cp).await.expect("child save");
        // Printed only once the save is acknowledged.
        println!("ack {} {role} {step}", saved.version);
    }
}

/// The `ack VERSION ROLE STEP` lines a child printed, once it has exited successfully.
fn child_acks(child: Child) -> Vec<(u64, String, u64)> {
    let out = child.wait_with_output().expect("wait for the child");
    assert!(out.status.success(), "the child failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout)
        .lines()
        // libtest prints `test child_main ... ` before the test's own output, on the same line.
        .filter_map(|l| l.split_once("ack ").map(|(_, rest)| rest))
        .map(|l| {
            let parts: Vec<&str> = l.split(' ').collect();
            (
                parts[0].parse().expect("version"),
                parts[1].to_owned(),
                parts[2].parse().expect("step"),
            )
        })
        .collect()
}

fn part(log: &str, expected_seq: u64, frames: &[&str]) -> LogAppend {
    LogAppend::new(
        log,
        expected_seq,
        frames.iter().map(|f| f.as_bytes().to_vec()).collect(),
    )
}

/// Two raw appends at the same expected sequence number race through the Lua script: exactly
/// one lands, the other is a Conflict naming the log and the position it found, and the log
/// holds the winner's frames only.
async fn lua_append_has_one_winner(h: &dyn Harness) {
    let store = h.open().await;
    let backend = store.backend().clone();
    for round in 0..10u64 {
        let log = format!("race-{round}");
        let (a, b) = tokio::join!(
            backend.append(vec![part(&log, 1, &["a1", "a2"])]),
            backend.append(vec![part(&log, 1, &["b1"])]),
        );
        let (winner, loser): (&[&str], _) = match (&a, &b) {
            (Ok(()), Err(e)) => (&["a1", "a2"], e),
            (Err(e), Ok(())) => (&["b1"], e),
            other => panic!("[{}] expected one winner, got {other:?}", h.name()),
        };
        match loser {
            Error::Conflict {
                log: l,
                expected,
                actual,
            } => {
                assert_eq!((l.as_str(), *expected), (log.as_str(), 1));
                assert_eq!(*actual, 1 + winner.len() as u64);
            }
            other => panic!("[{}] the loser got {other:?}", h.name()),
        }
        let frames = backend.scan(&log, 1, 100).await.expect("scan");
        let want: Vec<(u64, Vec<u8>)> = winner
            .iter()
            .enumerate()
            .map(|(i, f)| (i as u64 + 1, f.as_bytes().to_vec()))
            .collect();
        assert_eq!(frames, want);
        assert_eq!(
            backend.next_seq(&log).await.expect("next"),
            want.len() as u64 + 1
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_append_conflict_one_wins() {
    lua_append_has_one_winner(&RedisHarness::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lua_append_conflict_one_wins_on_cluster() {
    lua_append_has_one_winner(&RedisClusterHarness::new()).await;
    lua_append_has_one_winner(&RedisClusterHarness::with_options("shard=execution")).await;
}

/// A save made by another process wakes a `watch` in this one (XREAD BLOCK on the stream).
async fn watch_sees_another_process(h: &RedisHarnessLike) {
    let store = Store::open(&h.url).await.expect("open");
    let exec = "watched";
    let mut w = store.watch(exec);
    // Poll the watch first, so it is waiting (the child's save comes after it started).
    let waiter =
        tokio::spawn(async move { tokio::time::timeout(Duration::from_secs(30), w.next()).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    let child = spawn_child("one", &h.url, exec);
    let acks = tokio::task::spawn_blocking(move || child_acks(child))
        .await
        .expect("join");
    assert_eq!(acks.len(), 1, "the child saved once");
    let got = waiter.await.expect("join");
    let cp = match got {
        Ok(Some(Ok(cp))) => cp,
        other => panic!("the watch did not yield the other process's save: {other:?}"),
    };
    assert_eq!(cp.version, acks[0].0);
    let state: serde_json::Value = cp.state().expect("state");
    assert_eq!(state, state_for("one", 0));
}

/// A harness's URL, for opening stores in this and other processes.
struct RedisHarnessLike {
    url: String,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_wakes_on_a_save_by_another_process() {
    let url = RedisHarness::new().url().to_owned();
    watch_sees_another_process(&RedisHarnessLike { url }).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_wakes_on_a_save_by_another_process_on_cluster() {
    let url = RedisClusterHarness::new().url().to_owned();
    watch_sees_another_process(&RedisHarnessLike { url }).await;
}

/// Two processes save to one execution at once: every acknowledged save is in the log exactly
/// once, at the version it was acknowledged with, and the versions are 1..=N without gaps.
async fn two_processes_one_execution(url: &str) {
    let exec = "shared";
    let a = spawn_child("a", url, exec);
    let b = spawn_child("b", url, exec);
    let (acks_a, acks_b) = tokio::task::spawn_blocking(move || (child_acks(a), child_acks(b)))
        .await
        .expect("join");
    assert_eq!(acks_a.len(), CHILD_SAVES);
    assert_eq!(acks_b.len(), CHILD_SAVES);
    let store = Store::open(url).await.expect("open");
    let list = store.list(exec).await.expect("list");
    let versions: Vec<u64> = list.iter().map(|c| c.version).collect();
    let want: Vec<u64> = (1..=2 * CHILD_SAVES as u64).collect();
    assert_eq!(versions, want, "versions are consecutive from 1");
    let mut seen = HashSet::new();
    for (version, role, step) in acks_a.iter().chain(&acks_b) {
        assert!(
            seen.insert(*version),
            "version {version} acknowledged twice"
        );
        let cp = &list[(*version - 1) as usize];
        assert_eq!(&cp.node_name, role, "version {version}");
        let state: serde_json::Value = cp.state().expect("state");
        assert_eq!(state, state_for(role, *step), "version {version}");
    }
    // Each writer's saves are in its own order.
    for acks in [&acks_a, &acks_b] {
        assert!(acks.windows(2).all(|w| w[0].0 < w[1].0 && w[0].2 < w[1].2));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_append_exactly_once_in_order() {
    two_processes_one_execution(RedisHarness::new().url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_append_exactly_once_in_order_on_cluster() {
    two_processes_one_execution(RedisClusterHarness::new().url()).await;
}

/// Raw Redis access to the test server, to look at keys directly.
async fn raw(url: &str) -> redis::aio::MultiplexedConnection {
    let base = url.split('?').next().unwrap_or(url);
    redis::Client::open(base)
        .expect("client")
        .get_multiplexed_async_connection()
        .await
        .expect("raw connection")
}

fn prefix_of(url: &str) -> String {
    url.split(['?', '&'])
        .find_map(|p| p.strip_prefix("prefix="))
        .expect("the harness URL has a prefix")
        .to_owned()
}

/// `ttl=2s`: an execution nobody saves to for 2 s disappears whole (both keys); one kept alive by
/// saves stays; after gc no blob remains that only the expired execution referenced, every blob
/// of the live one remains, and it loads fully.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ttl_expires_idle_executions_and_gc_reclaims_their_blobs() {
    let h = RedisHarness::with_options("ttl=2s");
    let store = h.open().await;
    let backend = store.backend().clone();
    let shared = "shared ".repeat(400);
    let live_state = |i: u64| serde_json::json!({ "shared": shared, "own": format!("{}{i}", "live ".repeat(300)) });
    let mut live = vec![store
        .save(Checkpoint::new("live", "n", &live_state(0)).expect("cp"))
        .await
        .expect("save live")];
    let live_blobs: HashSet<_> = backend
        .list_blobs()
        .await
        .expect("blobs")
        .into_iter()
        .collect();
    let idle_state = serde_json::json!({ "shared": shared, "own": "idle ".repeat(300) });
    store
        .save(Checkpoint::new("idle", "n", &idle_state).expect("cp"))
        .await
        .expect("save idle");
    let all: HashSet<_> = backend
        .list_blobs()
        .await
        .expect("blobs")
        .into_iter()
        .collect();
    let idle_only: Vec<_> = all.difference(&live_blobs).copied().collect();
    assert!(
        !idle_only.is_empty(),
        "the idle execution has a blob of its own"
    );
    assert!(live_blobs.len() >= 2, "the executions share a blob");

    // Keep "live" alive for longer than the TTL; "idle" gets no save.
    let started = Instant::now();
    let mut i = 1;
    while started.elapsed() < Duration::from_millis(3500) {
        tokio::time::sleep(Duration::from_millis(400)).await;
        live.push(
            store
                .save(Checkpoint::new("live", "n", &live_state(i)).expect("cp"))
                .await
                .expect("save live"),
        );
        i += 1;
    }
    let prefix = prefix_of(h.url());
    let mut conn = raw(h.url()).await;
    let idle_keys: i64 = redis::cmd("EXISTS")
        .arg(format!("{{{prefix}}}:idle:s"))
        .arg(format!("{{{prefix}}}:idle:n"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(
        idle_keys, 0,
        "the idle execution's stream and next-seq keys expired"
    );
    let live_keys: i64 = redis::cmd("EXISTS")
        .arg(format!("{{{prefix}}}:live:s"))
        .arg(format!("{{{prefix}}}:live:n"))
        .query_async(&mut conn)
        .await
        .expect("EXISTS");
    assert_eq!(live_keys, 2, "the live execution's keys are kept");

    let fresh = h.open().await;
    let logs = fresh.backend().list_logs().await.expect("logs");
    assert_eq!(logs, vec!["live".to_owned()]);
    let report = fresh.gc().await.expect("gc");
    assert!(report.blobs_removed >= idle_only.len() as u64, "{report:?}");
    let left: HashSet<_> = fresh
        .backend()
        .list_blobs()
        .await
        .expect("blobs")
        .into_iter()
        .collect();
    for b in &idle_only {
        assert!(
            !left.contains(b),
            "a blob only the expired execution used survived gc"
        );
    }
    for b in &live_blobs {
        assert!(
            left.contains(b),
            "gc removed a blob the live execution uses"
        );
    }
    let listed = fresh.list("live").await.expect("list live");
    assert_eq!(listed.len(), live.len());
    for (got, want) in listed.iter().zip(&live) {
        let g: serde_json::Value = got.state().expect("state");
        let w: serde_json::Value = want.state().expect("state");
        assert_eq!(g, w, "version {}", got.version);
    }
    assert!(fresh.list("idle").await.expect("list idle").is_empty());
}

/// A writer saves in a loop while the server is killed with SIGKILL and restarted: every
/// acknowledged save survives with its exact state, no save fails (each retries through the
/// outage), and the writer keeps going after the restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_of_the_server_loses_no_acknowledged_save() {
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let mut server = Server(start_server(dir.path(), port, &[]));
    let url = format!("redis://127.0.0.1:{port}/0?timeout=20s");
    let store = Store::open(&url).await.expect("open");
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let cp = Checkpoint::new("fault", "w", &state_for("w", step)).expect("cp");
                match store.save(cp).await {
                    Ok(saved) => {
                        let _ = tx.send((saved.version, step));
                    }
                    Err(e) => return Err(e),
                }
                step += 1;
            }
            Ok(step)
        })
    };
    let mut acked = Vec::new();
    while acked.len() < 100 {
        acked.push(rx.recv().await.expect("writer running"));
    }
    server.0.kill().expect("SIGKILL the server");
    server.0.wait().expect("reap");
    let before_restart = acked.len();
    tokio::time::sleep(Duration::from_millis(500)).await;
    server = Server(start_server(dir.path(), port, &[]));
    let deadline = Instant::now() + Duration::from_secs(60);
    while acked.len() < before_restart + 100 + 10 {
        match tokio::time::timeout_at(deadline.into(), rx.recv()).await {
            Ok(Some(a)) => acked.push(a),
            Ok(None) => break,
            Err(_) => panic!("the writer did not continue after the restart"),
        }
    }
    stop.store(true, Ordering::Relaxed);
    let result = writer.await.expect("join");
    while let Ok(a) = rx.try_recv() {
        acked.push(a);
    }
    assert!(
        result.is_ok(),
        "a save failed across the restart: {result:?}"
    );
    assert!(acked.len() > before_restart + 100, "the writer continued");

    let fresh = Store::open(&url).await.expect("reopen");
    for (version, step) in &acked {
        let cp = fresh
            .at_version("fault", *version)
            .await
            .unwrap_or_else(|e| panic!("acknowledged version {version} lost: {e}"));
        let state: serde_json::Value = cp.state().expect("state");
        assert_eq!(state, state_for("w", *step), "version {version}");
    }
    let versions: Vec<u64> = acked.iter().map(|a| a.0).collect();
    assert!(versions.windows(2).all(|w| w[0] < w[1]), "acks in order");
    drop(server);
}

/// A password in the URL never shows in errors or `Debug` output, whether the server refuses
/// it, is unreachable, or accepts it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_show_in_errors_or_debug() {
    const SECRET: &str = "s3cr3t-Pa55";
    let dir = tempfile::tempdir().expect("tempdir");
    let port = free_port();
    let _server = Server(start_server(dir.path(), port, &["--requirepass", SECRET]));

    let good = format!("redis://:{SECRET}@127.0.0.1:{port}/0?timeout=3s");
    let store = Store::open(&good).await.expect("open with the password");
    let debug = format!("{store:?} {:?}", store.backend());
    assert!(!debug.contains(SECRET), "{debug}");
    store
        .save(Checkpoint::new("e", "n", &state_for("p", 1)).expect("cp"))
        .await
        .expect("save");

    let urls = [
        format!("redis://:wrong-{SECRET}@127.0.0.1:{port}/0?timeout=2s"),
        format!(
            "redis://user:{SECRET}@127.0.0.1:{}/0?timeout=1s",
            free_port()
        ),
        format!("redis://:{SECRET}@127.0.0.1:{port}/0?colour=red"),
        format!(
            "redis+cluster://:{SECRET}@127.0.0.1:{}?timeout=1s",
            free_port()
        ),
    ];
    for url in &urls {
        let e = Store::open(url).await.expect_err("must fail");
        let text = format!("{e} | {e:?}");
        assert!(!text.contains(SECRET), "{text}");
    }
}

/// Where nothing listens, `redis://` and `redis+cluster://` fail at once with the OS's
/// "connection refused" and the address, not after the 30 s default timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_fails_fast_on_a_refused_connection() {
    for scheme in ["redis", "redis+cluster"] {
        let port = free_port();
        let url = format!("{scheme}://127.0.0.1:{port}");
        let text = open_fails_fast(Store::builder(&url), port, &url).await;
        assert!(text.to_lowercase().contains("refused"), "{url}: {text}");
    }
}

/// A server that accepts the TCP connection and never answers: the open gives up after
/// `timeout` (from the URL or the builder) and says so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_honours_timeout_against_a_silent_server() {
    let (silent, port) = silent_listener();
    for (url, builder_timeout, shown) in [
        (format!("redis://127.0.0.1:{port}/0?timeout=1s"), None, "1s"),
        (
            format!("redis://127.0.0.1:{port}/0"),
            Some(Duration::from_millis(700)),
            "700ms",
        ),
    ] {
        let mut builder = Store::builder(&url);
        if let Some(t) = builder_timeout {
            builder = builder.timeout(t);
        }
        let text = open_fails_fast(builder, port, &url).await;
        assert!(text.contains(shown), "{url}: {text}");
    }
    drop(silent);
}

/// `create_if_missing(false)` on a prefix that holds nothing is `NotFound`; once something was
/// saved under it, it opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opening_without_creating_refuses_an_empty_prefix() {
    for var in [
        ckpt::testing::REDIS_URL_VAR,
        ckpt::testing::REDIS_CLUSTER_URL_VAR,
    ] {
        let url = ckpt::testing::isolated_url(&ckpt::testing::test_server_url(var), "");
        let existing = || Store::builder(&url).create_if_missing(false).open();
        let e = existing().await.expect_err("nothing under the prefix");
        assert!(e.is_not_found(), "{var}: {e:?}");
        let store = Store::open(&url).await.expect("open");
        store
            .save(Checkpoint::new("e", "n", &state_for("c", 1)).expect("cp"))
            .await
            .expect("save");
        let again = existing().await.expect("a store with a save opens");
        assert_eq!(again.executions().await.expect("list").len(), 1);
    }
}

/// Unknown and malformed options are `InvalidUrl` errors naming the option and listing the
/// accepted ones; the builder's settings override the URL's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn url_options_are_checked() {
    let base = ckpt::testing::test_server_url(ckpt::testing::REDIS_URL_VAR);
    let sep = if base.contains('?') { '&' } else { '?' };
    let e = Store::open(&format!("{base}{sep}colour=red"))
        .await
        .expect_err("unknown option");
    let msg = e.to_string();
    assert!(matches!(e, Error::InvalidUrl { .. }), "{msg}");
    for needle in ["colour", "prefix=", "ttl=", "timeout=", "shard="] {
        assert!(msg.contains(needle), "{needle} missing from: {msg}");
    }
    for bad in ["ttl=tomorrow", "timeout=0s", "prefix=a*b", "shard=node"] {
        let e = Store::open(&format!("{base}{sep}{bad}"))
            .await
            .expect_err(bad);
        assert!(matches!(e, Error::InvalidUrl { .. }), "{bad}: {e}");
    }
    // ttl from the builder wins over the URL's.
    let url = ckpt::testing::isolated_url(&base, "ttl=24h");
    let store = Store::builder(&url)
        .ttl(Duration::from_secs(100))
        .open()
        .await
        .expect("open");
    store
        .save(Checkpoint::new("t", "n", &state_for("t", 0)).expect("cp"))
        .await
        .expect("save");
    let mut conn = raw(&url).await;
    let pttl: i64 = redis::cmd("PTTL")
        .arg(format!("{{{}}}:t:n", prefix_of(&url)))
        .query_async(&mut conn)
        .await
        .expect("PTTL");
    assert!(pttl > 0 && pttl <= 100_000, "PTTL {pttl}");
}

/// With `shard=execution`, each execution's log has its own slot: saves work, a batch over
/// executions in different slots is refused before anything is written, and a batch within one
/// execution is atomic as usual.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_shard_execution_refuses_cross_slot_batches() {
    let h = RedisClusterHarness::with_options("shard=execution");
    let store = h.open().await;
    let cp = |e: &str, i: u64| Checkpoint::new(e, "n", &state_for(e, i)).expect("cp");
    store.save(cp("x", 0)).await.expect("save x");
    // "x" and "y" hash to different slots (checked: the error below says why).
    let e = store
        .save_batch(vec![cp("x", 1), cp("y", 1)])
        .await
        .expect_err("cross-slot batch");
    assert!(
        matches!(&e, Error::InvalidInput(m) if m.contains("shard=execution")),
        "{e}"
    );
    assert_eq!(store.list("x").await.expect("list").len(), 1);
    assert!(store.list("y").await.expect("list").is_empty());
    let out = store
        .save_batch(vec![cp("x", 2), cp("x", 3)])
        .await
        .expect("one-execution batch");
    assert_eq!(
        out.iter().map(|c| c.version).collect::<Vec<_>>(),
        vec![2, 3]
    );
    let mut logs = h.open().await.backend().list_logs().await.expect("logs");
    logs.sort();
    assert_eq!(logs, vec!["x".to_owned()]);
}

// The conformance suite on `shard=execution` (the layout whose cross-log writes go through
// the repair path): the scenarios of kind `any` in `ckpt::__conformance_scenario_list!`, that is
// all but the three that write one batch across executions (`backend_append_is_compare_and_append`,
// `save_batch_is_all_or_nothing`, `save_batch_is_ordered_and_consecutive`), which this layout
// refuses by design (`cluster_shard_execution_refuses_cross_slot_batches` checks the refusal), and
// the two added after this list was written (`save_batch_is_all_or_nothing_under_faults`,
// `damage_is_contained`).
ckpt::conformance_tests!(
    shard_execution_conformance,
    ckpt::testing::RedisClusterHarness::with_options("shard=execution"),
    shard_execution
);

/// The Cluster's nodes, from `CKPT_TEST_REDIS_CLUSTER_URL`.
fn cluster_nodes() -> Vec<(String, u16)> {
    let url = ckpt::testing::test_server_url(ckpt::testing::REDIS_CLUSTER_URL_VAR);
    let hosts = url
        .split("://")
        .nth(1)
        .and_then(|r| r.split(['?', '/']).next())
        .expect("hosts in the cluster URL");
    let hosts = hosts.rsplit('@').next().unwrap_or(hosts);
    hosts
        .split(',')
        .map(|h| {
            let (host, port) = h.rsplit_once(':').expect("host:port");
            (host.to_owned(), port.parse().expect("port"))
        })
        .collect()
}

async fn node(host: &str, port: u16) -> redis::aio::MultiplexedConnection {
    raw(&format!("redis://{host}:{port}")).await
}

/// Moves hash slot `slot` from node `from` to node `to` the way `redis-cli --cluster reshard`
/// does: IMPORTING/MIGRATING, MIGRATE of its keys in batches, then SETSLOT NODE everywhere.
async fn move_slot(nodes: &[(String, u16)], slot: u16, from: usize, to: usize) {
    let mut src = node(&nodes[from].0, nodes[from].1).await;
    let mut dst = node(&nodes[to].0, nodes[to].1).await;
    let src_id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut src)
        .await
        .expect("id");
    let dst_id: String = redis::cmd("CLUSTER")
        .arg("MYID")
        .query_async(&mut dst)
        .await
        .expect("id");
    let setslot = |state: &str, id: &str| {
        let mut c = redis::cmd("CLUSTER");
        c.arg("SETSLOT").arg(slot).arg(state).arg(id);
        c
    };
    let _: () = setslot("IMPORTING", &src_id)
        .query_async(&mut dst)
        .await
        .expect("importing");
    let _: () = setslot("MIGRATING", &dst_id)
        .query_async(&mut src)
        .await
        .expect("migrating");
    loop {
        let keys: Vec<Vec<u8>> = redis::cmd("CLUSTER")
            .arg("GETKEYSINSLOT")
            .arg(slot)
            .arg(1)
            .query_async(&mut src)
            .await
            .expect("keys in slot");
        if keys.is_empty() {
            break;
        }
        let _: redis::Value = redis::cmd("MIGRATE")
            .arg(&nodes[to].0)
            .arg(nodes[to].1)
            .arg("")
            .arg(0)
            .arg(5000)
            .arg("KEYS")
            .arg(keys)
            .query_async(&mut src)
            .await
            .expect("migrate");
        // One key at a time, so the writer also meets the log's two keys on different nodes
        // (TRYAGAIN), then both moved but the slot not yet handed over (ASK).
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for (host, port) in nodes {
        let mut c = node(host, *port).await;
        let _: () = setslot("NODE", &dst_id)
            .query_async(&mut c)
            .await
            .expect("setslot node");
    }
}

/// The index of the node that owns `slot`.
async fn slot_owner(nodes: &[(String, u16)], slot: u16) -> usize {
    for (i, (host, port)) in nodes.iter().enumerate() {
        let mut c = node(host, *port).await;
        let owned: String = redis::cmd("CLUSTER")
            .arg("NODES")
            .query_async(&mut c)
            .await
            .expect("nodes");
        let me = owned
            .lines()
            .find(|l| l.contains("myself"))
            .expect("myself line");
        let covers = me.split_whitespace().skip(8).any(|range| {
            let (a, b) = range.split_once('-').unwrap_or((range, range));
            matches!((a.parse::<u16>(), b.parse::<u16>()), (Ok(a), Ok(b)) if a <= slot && slot <= b)
        });
        if covers {
            return i;
        }
    }
    panic!("no node owns slot {slot}");
}

/// A writer keeps saving while the slot holding its execution's log is moved to another node and
/// back (MOVED, ASK and TRYAGAIN on the way): no save fails and every acknowledged save is there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_resharding_under_a_writer_loses_nothing() {
    let h = RedisClusterHarness::with_options("timeout=30s");
    let nodes = cluster_nodes();
    let prefix = prefix_of(h.url());
    let mut any = node(&nodes[0].0, nodes[0].1).await;
    let slot: u16 = redis::cmd("CLUSTER")
        .arg("KEYSLOT")
        .arg(format!("{{{prefix}}}:moving:s"))
        .query_async(&mut any)
        .await
        .expect("keyslot");
    let store = h.open().await;
    let stop = Arc::new(AtomicBool::new(false));
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let writer = {
        let store = store.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let mut step = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let cp = Checkpoint::new("moving", "w", &state_for("m", step)).expect("cp");
                let saved = store.save(cp).await?;
                let _ = tx.send((saved.version, step));
                step += 1;
            }
            Ok::<u64, Error>(step)
        })
    };
    let mut acked = Vec::new();
    while acked.len() < 20 {
        acked.push(rx.recv().await.expect("writer running"));
    }
    let home = slot_owner(&nodes, slot).await;
    let away = (home + 1) % nodes.len();
    move_slot(&nodes, slot, home, away).await;
    assert_eq!(slot_owner(&nodes, slot).await, away, "the slot moved");
    let moved_at = acked.len();
    while acked.len() < moved_at + 20 {
        acked.push(rx.recv().await.expect("writer running after the move"));
    }
    move_slot(&nodes, slot, away, home).await;
    assert_eq!(slot_owner(&nodes, slot).await, home, "the slot moved back");
    let back_at = acked.len();
    while acked.len() < back_at + 20 {
        acked.push(rx.recv().await.expect("writer running after the move back"));
    }
    stop.store(true, Ordering::Relaxed);
    let result = writer.await.expect("join");
    while let Ok(a) = rx.try_recv() {
        acked.push(a);
    }
    assert!(
        result.is_ok(),
        "a save failed during resharding: {result:?}"
    );
    let fresh = h.open().await;
    let list = fresh.list("moving").await.expect("list");
    assert_eq!(
        list.len(),
        acked.len(),
        "every acknowledged save, nothing else"
    );
    for (version, step) in &acked {
        let cp = &list[(*version - 1) as usize];
        assert_eq!(cp.version, *version);
        let state: serde_json::Value = cp.state().expect("state");
        assert_eq!(state, state_for("m", *step), "version {version}");
    }
}

/// How the [`Proxy`] breaks the next connection that sends a script call (`EVALSHA`).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Cut {
    /// Forward the call, then close the connection before its reply: the script ran, the
    /// client does not know.
    AfterRequest,
    /// Close the connection without forwarding the call: the script never ran.
    BeforeRequest,
}

/// A TCP proxy in front of a Redis server that cuts one connection on demand (one-shot).
struct Proxy {
    port: u16,
    armed: Arc<std::sync::Mutex<Option<Cut>>>,
    cuts: Arc<std::sync::atomic::AtomicUsize>,
}

impl Proxy {
    fn start(upstream: u16) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind proxy");
        let port = listener.local_addr().expect("addr").port();
        let armed = Arc::new(std::sync::Mutex::new(None));
        let cuts = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let (a, c) = (armed.clone(), cuts.clone());
        std::thread::spawn(move || {
            for client in listener.incoming().flatten() {
                let Ok(server) = std::net::TcpStream::connect(("127.0.0.1", upstream)) else {
                    continue;
                };
                Self::pipe(client, server, a.clone(), c.clone());
            }
        });
        Proxy { port, armed, cuts }
    }

    /// Copies both ways on two threads; cuts the connection when armed and a script call passes.
    fn pipe(
        client: std::net::TcpStream,
        server: std::net::TcpStream,
        armed: Arc<std::sync::Mutex<Option<Cut>>>,
        cuts: Arc<std::sync::atomic::AtomicUsize>,
    ) {
        use std::io::{Read, Write};
        let severed = Arc::new(AtomicBool::new(false));
        let (mut c_in, mut s_out) = (
            client.try_clone().expect("clone"),
            server.try_clone().expect("clone"),
        );
        let (mut s_in, mut c_out) = (server, client);
        let sev = severed.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = c_in.read(&mut buf) {
                if n == 0 {
                    break;
                }
                let chunk = &buf[..n];
                let is_script = chunk.windows(7).any(|w| w == b"EVALSHA");
                let cut = if is_script {
                    armed.lock().map(|mut a| a.take()).unwrap_or(None)
                } else {
                    None
                };
                if let Some(cut) = cut {
                    sev.store(true, Ordering::SeqCst);
                    cuts.fetch_add(1, Ordering::SeqCst);
                    if cut == Cut::AfterRequest {
                        let _ = s_out.write_all(chunk);
                        // Give the server time to run the script before the connection goes.
                        std::thread::sleep(Duration::from_millis(200));
                    }
                    let _ = c_in.shutdown(std::net::Shutdown::Both);
                    let _ = s_out.shutdown(std::net::Shutdown::Both);
                    break;
                }
                if s_out.write_all(chunk).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 64 * 1024];
            while let Ok(n) = s_in.read(&mut buf) {
                if n == 0 || severed.load(Ordering::SeqCst) {
                    break;
                }
                if c_out.write_all(&buf[..n]).is_err() {
                    break;
                }
            }
            let _ = c_out.shutdown(std::net::Shutdown::Both);
        });
    }

    fn arm(&self, cut: Cut) {
        *self.armed.lock().expect("lock") = Some(cut);
    }
}

/// The connection breaks while an append is in flight, after the server ran the script or
/// before it saw it: either way the append returns Ok and its frames are in the log exactly
/// once (the retry finds them instead of appending again, or appends them for the first time).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_cut_off_midway_lands_exactly_once() {
    let base = ckpt::testing::test_server_url(ckpt::testing::REDIS_URL_VAR);
    let port: u16 = base
        .rsplit(':')
        .next()
        .and_then(|p| p.split('/').next())
        .and_then(|p| p.parse().ok())
        .expect("the test server's port");
    let proxy = Proxy::start(port);
    let url = ckpt::testing::isolated_url(
        &format!("redis://127.0.0.1:{}/0", proxy.port),
        "timeout=20s",
    );
    let store = Store::open(&url).await.expect("open through the proxy");
    let backend = store.backend().clone();
    let mut expected: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut next = 1u64;
    for (i, cut) in [
        Cut::AfterRequest,
        Cut::BeforeRequest,
        Cut::AfterRequest,
        Cut::BeforeRequest,
    ]
    .into_iter()
    .enumerate()
    {
        let frames = [format!("frame-{i}-a"), format!("frame-{i}-b")];
        let append = part("cut", next, &[frames[0].as_str(), frames[1].as_str()]);
        proxy.arm(cut);
        if i < 2 {
            backend
                .append(vec![append])
                .await
                .expect("append across the cut");
        } else {
            // The pipelined path: a blob and the script in one round trip.
            let blob = ([i as u8; 32], format!("blob-{i}").into_bytes());
            backend
                .commit(vec![append], vec![blob.clone()])
                .await
                .expect("append with a blob across the cut");
            assert_eq!(backend.get_blob(&blob.0).await.expect("blob"), Some(blob.1));
        }
        assert_eq!(
            proxy.cuts.load(Ordering::SeqCst),
            i + 1,
            "the proxy cut the call"
        );
        for f in &frames {
            expected.push((next, f.clone().into_bytes()));
            next += 1;
        }
        assert_eq!(backend.scan("cut", 1, 100).await.expect("scan"), expected);
        assert_eq!(backend.next_seq("cut").await.expect("next"), next);
    }
}

/// Runs `openssl` with `args` in `dir`, panicking with its output when it fails.
fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run openssl ({e}); install it (apt-get install openssl)")
        });
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `rediss://` with `tls_ca=PATH`: a server whose certificate a private CA signed is trusted
/// through that CA and refused without it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_private_ca() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    openssl(
        d,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
            "-days",
            "2",
            "-subj",
            "/CN=ckpt-test-ca",
        ],
    );
    openssl(
        d,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=localhost",
        ],
    );
    std::fs::write(
        d.join("san.ext"),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .expect("write");
    openssl(
        d,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.pem",
            "-days",
            "2",
            "-extfile",
            "san.ext",
        ],
    );
    let port = free_port();
    let port_arg = port.to_string();
    let cert = d.join("server.pem");
    let key = d.join("server.key");
    let _server = Server(start_server(
        d,
        port,
        &[
            "--port",
            "0",
            "--tls-port",
            &port_arg,
            "--tls-cert-file",
            cert.to_str().expect("utf-8 path"),
            "--tls-key-file",
            key.to_str().expect("utf-8 path"),
            "--tls-auth-clients",
            "no",
        ],
    ));
    let ca = d.join("ca.pem");
    let url = format!(
        "rediss://127.0.0.1:{port}/0?prefix=tls&timeout=5s&tls_ca={}",
        ca.display()
    );
    let store = Store::open(&url).await.expect("open over TLS");
    let saved = store
        .save(Checkpoint::new("tls", "n", &state_for("tls", 1)).expect("cp"))
        .await
        .expect("save over TLS");
    let loaded = Store::open(&url)
        .await
        .expect("reopen")
        .load(&saved.id)
        .await
        .expect("load over TLS");
    let state: serde_json::Value = loaded.state().expect("state");
    assert_eq!(state, state_for("tls", 1));
    let untrusted = Store::open(&format!("rediss://127.0.0.1:{port}/0?timeout=2s")).await;
    assert!(
        untrusted.is_err(),
        "a certificate of an unknown CA is refused"
    );
    let e = Store::open(&format!(
        "redis://127.0.0.1:{port}/0?tls_ca={}",
        ca.display()
    ))
    .await
    .expect_err("tls_ca without TLS");
    assert!(matches!(e, Error::InvalidUrl { .. }), "{e}");
}

/// A log saved with `ttl=` and then without loses its expiry on both keys (they never expire
/// apart), and a stream left without its next-seq key (as a half-expired log would be) does not
/// block the log's next first append.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_is_all_or_nothing_per_log() {
    let base = ckpt::testing::test_server_url(ckpt::testing::REDIS_URL_VAR);
    let url = ckpt::testing::isolated_url(&base, "");
    let prefix = prefix_of(&url);
    let mut conn = raw(&url).await;
    let pttl = |key: String| {
        let mut c = conn.clone();
        async move {
            let t: i64 = redis::cmd("PTTL")
                .arg(key)
                .query_async(&mut c)
                .await
                .expect("PTTL");
            t
        }
    };
    let with_ttl = Store::open(&format!("{url}&ttl=1h")).await.expect("open");
    with_ttl
        .save(Checkpoint::new("mode", "n", &state_for("m", 0)).expect("cp"))
        .await
        .expect("save");
    assert!(pttl(format!("{{{prefix}}}:mode:s")).await > 0);
    assert!(pttl(format!("{{{prefix}}}:mode:n")).await > 0);
    let without = Store::open(&url).await.expect("open");
    without
        .save(Checkpoint::new("mode", "n", &state_for("m", 1)).expect("cp"))
        .await
        .expect("save");
    assert_eq!(pttl(format!("{{{prefix}}}:mode:s")).await, -1);
    assert_eq!(pttl(format!("{{{prefix}}}:mode:n")).await, -1);

    let _: String = redis::cmd("XADD")
        .arg(format!("{{{prefix}}}:stale:s"))
        .arg("7-1")
        .arg("f")
        .arg("left over")
        .query_async(&mut conn)
        .await
        .expect("XADD");
    let backend = without.backend().clone();
    assert_eq!(backend.next_seq("stale").await.expect("next"), 1);
    backend
        .append(vec![part("stale", 1, &["fresh"])])
        .await
        .expect("append over a stale stream");
    assert_eq!(
        backend.scan("stale", 1, 10).await.expect("scan"),
        vec![(1, b"fresh".to_vec())]
    );
}

/// Log names with the characters the key layout uses (`{`, `}`, `:`, glob characters, a name
/// ending in `:n`) keep working: appended, scanned and listed exactly, on both layouts.
async fn odd_log_names_round_trip(h: &dyn Harness) {
    let store = h.open().await;
    let backend = store.backend().clone();
    let names = ["a}b", "{x}", "x:n", "x:s", "*", "[ab]?", "ü:n}:n", "plain"];
    for name in names {
        backend
            .append(vec![part(name, 1, &[name])])
            .await
            .unwrap_or_else(|e| panic!("[{}] append to {name:?}: {e}", h.name()));
    }
    for name in names {
        assert_eq!(
            backend.scan(name, 1, 10).await.expect("scan"),
            vec![(1, name.as_bytes().to_vec())],
            "[{}] {name:?}",
            h.name()
        );
        assert_eq!(backend.next_seq(name).await.expect("next"), 2);
    }
    let mut listed = backend.list_logs().await.expect("list");
    listed.sort();
    let mut want: Vec<String> = names.iter().map(|n| (*n).to_owned()).collect();
    want.sort();
    assert_eq!(listed, want, "[{}]", h.name());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_log_names_round_trip_on_every_layout() {
    odd_log_names_round_trip(&RedisHarness::new()).await;
    odd_log_names_round_trip(&RedisClusterHarness::new()).await;
    odd_log_names_round_trip(&RedisClusterHarness::with_options("shard=execution")).await;
}

/// `Store::compact` on the Cluster visits every node: each one's AOF is rewritten (the test
/// Cluster runs with `appendonly yes` and no RDB schedule), and the report names them all;
/// what the store holds still loads.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compact_on_a_cluster_rewrites_every_node() {
    let base = ckpt::testing::test_server_url(ckpt::testing::REDIS_CLUSTER_URL_VAR);
    let store = Store::open(&ckpt::testing::isolated_url(&base, ""))
        .await
        .expect("open");
    let kept = store
        .save(Checkpoint::new("kept", "n", &serde_json::json!({ "a": 1 })).expect("checkpoint"))
        .await
        .expect("save");
    let report = store.compact().await.expect("compact");
    assert_eq!(report.backend, "redis");
    assert!(report.caveats.is_empty(), "{report:#?}");
    for (host, port) in cluster_nodes() {
        let node = format!("{host}:{port}");
        assert!(
            report
                .steps
                .iter()
                .any(|s| s.starts_with(&format!("{node}: BGREWRITEAOF"))),
            "no AOF rewrite reported for {node}: {report:#?}"
        );
    }
    assert!(report.bytes_before.is_some() && report.bytes_after.is_some());
    assert_eq!(
        store
            .load(&kept.id)
            .await
            .expect("load")
            .state_json()
            .expect("state"),
        kept.state_json().expect("state")
    );
}
