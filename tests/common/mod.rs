//! Helpers shared by the integration tests: grepping a store's raw files, and throwaway
//! servers of a test's own (a `redis-server`, a PostgreSQL cluster).
// Each test binary uses a part of these.
#![allow(dead_code)]

#[cfg(feature = "cli")]
pub mod cli;
pub mod http;
#[cfg(feature = "cli")]
pub mod ui;
#[cfg(feature = "cli")]
pub mod webdriver;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The files under `dir` (recursively) whose bytes contain `needle`.
pub fn grep_dir(dir: &Path, needle: &[u8]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            // A server may remove a file or directory while we walk.
            let Ok(entries) = std::fs::read_dir(&p) else {
                continue;
            };
            for entry in entries.flatten() {
                stack.push(entry.path());
            }
        } else if let Ok(bytes) = std::fs::read(&p) {
            if bytes.windows(needle.len()).any(|w| w == needle) {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}

/// A free TCP port on 127.0.0.1 (the listener is closed again before returning).
pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// A listener on 127.0.0.1 that never answers (the kernel completes the handshake into the
/// backlog; nothing ever reads or answers), and its port. It listens while it lives.
pub fn silent_listener() -> (TcpListener, u16) {
    let silent = TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().expect("addr").port();
    (silent, port)
}

/// An error with its sources, as the CLI shows it.
pub fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(&format!("\n  caused by: {s}"));
        source = s.source();
    }
    text
}

/// Opens `builder`, whose server at `127.0.0.1:{port}` refuses or never answers, and asserts the
/// open fails within 10 s (not after the 30 s default timeout a retried failure would use up)
/// with an error naming the address; returns the error with its sources, for the caller to check
/// what it says. The fail-fast tests of every networked backend share it.
pub async fn open_fails_fast(builder: ckpt::StoreBuilder, port: u16, what: &str) -> String {
    let started = Instant::now();
    let Err(e) = builder.open().await else {
        panic!("{what}: nothing answers on {port}, yet the open succeeded");
    };
    let elapsed = started.elapsed();
    let text = chain(&e);
    assert!(
        text.contains(&format!("127.0.0.1:{port}")),
        "{what}: {text}"
    );
    assert!(
        elapsed < Duration::from_secs(10),
        "{what}: {elapsed:?}: {text}"
    );
    text
}

/// A `redis-server` of the test's own, durable (`appendfsync always`), in `dir`; `extra`
/// arguments come last, so they override these. Panics when it cannot start.
pub fn start_server(dir: &Path, port: u16, extra: &[&str]) -> Child {
    let child = Command::new("redis-server")
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .arg("--dir")
        .arg(dir)
        .args([
            "--save",
            "",
            "--appendonly",
            "yes",
            "--appendfsync",
            "always",
            "--daemonize",
            "no",
        ])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start redis-server ({e}): install it (apt-get install redis-server) or run scripts/test-all.sh")
        });
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "redis-server on {port} did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// Kills the server with SIGKILL when dropped, so a failing test leaves no server behind.
pub struct Server(pub Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A throwaway PostgreSQL cluster started with `scripts/postgres-server.sh`, stopped (and
/// removed) on drop. Panics when it cannot start.
pub struct PgCluster {
    dir: tempfile::TempDir,
    /// `postgres://USER@127.0.0.1:PORT/ckpt_test`; the user is a superuser.
    pub url: String,
    /// The data directory.
    pub data: String,
    /// A command prefix running `pg_ctl` as the cluster's owner.
    pub ctl: String,
}

impl PgCluster {
    pub fn start() -> PgCluster {
        let dir = tempfile::Builder::new()
            .prefix("ckpt-pg-")
            .tempdir()
            .unwrap();
        let out = Command::new(pg_script())
            .args(["start", &dir.path().join("pg").to_string_lossy()])
            .stderr(Stdio::null())
            .output()
            .unwrap();
        assert!(out.status.success(), "the start script failed");
        let mut vars = BTreeMap::new();
        for line in String::from_utf8(out.stdout).unwrap().lines() {
            let Some((k, v)) = line.strip_prefix("export ").and_then(|l| l.split_once('=')) else {
                continue;
            };
            vars.insert(k.to_owned(), v.trim_matches('\'').to_owned());
        }
        PgCluster {
            url: vars["CKPT_TEST_POSTGRES_URL"].clone(),
            data: vars["CKPT_TEST_POSTGRES_DIR"].clone(),
            ctl: vars["CKPT_TEST_POSTGRES_CTL"].clone(),
            dir,
        }
    }

    /// Runs `pg_ctl ARGS` on the cluster.
    pub fn pg_ctl(&self, args: &[&str]) {
        let mut words = self.ctl.split_whitespace();
        let program = words.next().unwrap();
        let status = Command::new(program)
            .args(words)
            .args(["-D", &self.data])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "pg_ctl {args:?} failed");
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        let _ = Command::new(pg_script())
            .args(["stop", &self.dir.path().join("pg").to_string_lossy()])
            .stderr(Stdio::null())
            .status();
    }
}

fn pg_script() -> String {
    format!("{}/scripts/postgres-server.sh", env!("CARGO_MANIFEST_DIR"))
}

/// One test module per store, `memory` and `sled` (a temporary directory), each running every
/// scenario named (an `async fn(Arc<dyn CheckpointStore>)` of the calling file) on a
/// two-thread runtime.
#[allow(unused_macros)] // each test binary uses a part of this module
macro_rules! on_both_stores {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let store: std::sync::Arc<dyn ckpt::CheckpointStore> =
                        std::sync::Arc::new(ckpt::Store::memory());
                    super::$name(store).await;
                }
            )*
        }
        mod sled {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let dir = tempfile::TempDir::new().expect("temp dir");
                    let store = ckpt::Store::open(dir.path().to_str().expect("utf-8 path"))
                        .await
                        .expect("open sled");
                    let store: std::sync::Arc<dyn ckpt::CheckpointStore> = std::sync::Arc::new(store);
                    super::$name(store).await;
                }
            )*
        }
    };
}
