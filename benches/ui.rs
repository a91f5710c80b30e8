//! `ckpt ui`'s two heavy pages against the real server (the binary on a sled store):
//! the executions page of a store with 2,000 executions, and pages of the timeline of a
//! 20,000-version execution (the newest page, and one deep in it), plus that execution's
//! checkpoint view (which lists the checkpoint's children). Criterion times the whole
//! request over loopback; the server's own time (its `Server-Timing` header) is printed as a
//! median per call, with the first (cold) call of each.
//!
//! `cargo bench --bench ui`.

#[path = "../tests/common/http.rs"]
#[allow(dead_code)]
mod http;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ckpt::{Checkpoint, Store};
use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;

const EXECUTIONS: usize = 2_000;
const LONG: &str = "long-run";
const VERSIONS: usize = 20_000;

/// Fills a sled store: 2,000 executions of 3 checkpoints, and one of 20,000.
fn fill(url: &str) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let store = Store::open(url).await.expect("open");
        for e in 0..EXECUTIONS {
            let exec = format!("exec-{e:05}");
            let batch: Vec<Checkpoint> = (0..3)
                .map(|s| {
                    Checkpoint::new(
                        &exec,
                        "step",
                        &json!({"step": s, "note": format!("execution {e} step {s}")}),
                    )
                    .expect("checkpoint")
                    .with_metadata("step", s)
                })
                .collect();
            store.save_batch(batch).await.expect("save");
        }
        for chunk in 0..VERSIONS / 500 {
            let batch: Vec<Checkpoint> = (0..500)
                .map(|i| {
                    let n = chunk * 500 + i;
                    Checkpoint::new(
                        LONG,
                        if n % 2 == 0 { "agent" } else { "tools" },
                        &json!({"step": n, "last": format!("message {n}")}),
                    )
                    .expect("checkpoint")
                    .with_metadata("step", n)
                })
                .collect();
            store.save_batch(batch).await.expect("save");
        }
        store.flush().await.expect("flush");
    });
}

struct Server {
    child: Child,
    addr: String,
    auth: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(url: &str) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_ckpt"))
        .args(["--store", url, "ui", "--bind", "127.0.0.1:0"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("start ckpt ui");
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("its URL");
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .expect("a URL")
        .to_owned();
    let (addr, token) = url
        .trim_start_matches("http://")
        .split_once("/?token=")
        .expect("a token");
    Server {
        addr: addr.to_owned(),
        auth: format!("Bearer {token}"),
        child,
    }
}

/// The server's time for one call, in milliseconds, from its `Server-Timing` header.
fn get(s: &Server, path: &str) -> f64 {
    let r = http::request(&s.addr, "GET", path, &[("Authorization", &s.auth)], None);
    assert_eq!(r.status, 200, "{path}: {}", r.text());
    r.header("server-timing")
        .and_then(|t| t.strip_prefix("app;dur="))
        .and_then(|ms| ms.parse().ok())
        .expect("Server-Timing")
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn bench(c: &mut Criterion) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let url = format!("sled://{}", dir.path().join("store").display());
    fill(&url);
    let server = start(&url);
    let calls = [
        ("executions_2000", "/api/executions?limit=100".to_owned()),
        (
            "timeline_20000_newest",
            format!("/api/executions/{LONG}/timeline?limit=200"),
        ),
        (
            "timeline_20000_deep",
            format!("/api/executions/{LONG}/timeline?limit=200&before=5000"),
        ),
        (
            "checkpoint_of_20000",
            format!("/api/checkpoints/{LONG}/10000"),
        ),
    ];
    let mut group = c.benchmark_group("ui");
    for (name, path) in &calls {
        let cold = get(&server, path);
        let warm = median((0..21).map(|_| get(&server, path)).collect());
        eprintln!("ui/{name}: server time cold {cold:.1} ms, warm median {warm:.1} ms");
        group.bench_function(*name, |b| b.iter(|| get(&server, path)));
    }
    group.finish();
}

criterion_group! {
    name = ui;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = bench
}
criterion_main!(ui);
