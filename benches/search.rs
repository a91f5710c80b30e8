//! Criterion benchmarks of search across executions (issue 17's figures), on memory, sled
//! and SQLite, and on PostgreSQL and Redis when `CKPT_TEST_POSTGRES_URL` and
//! `CKPT_TEST_REDIS_URL` name servers (each run in a schema or key prefix of its own).
//!
//! The store: 1,000 executions x 100 checkpoints of a growing conversation. Each save appends
//! one ~600-byte message of words drawn from a 5,000-word vocabulary with a Zipf distribution
//! (as words are in text; random letters would make every word unique), metadata `user`
//! (`user-0` .. `user-99`) and `step` (1..100). In one execution in ten the message of step 91
//! names the order `zanzibar-7`: it stays in the conversation, so the word is in 1% of the
//! versions (100 executions x versions 91..100). The store is indexed before it is filled, so
//! the saves feed the index; each execution is one `save_batch` of its 100 checkpoints, so
//! setup is quick.
//!
//! - `search/<backend>/text_1pct`: the first page (20 hits) of `zanzibar` (prefix of the word).
//! - `search/<backend>/metadata_eq`: the first page of `user=user-7` (1% of checkpoints).
//! - `search/<backend>/metadata_range`: the first page of `step>=100` (1%).
//! - `search/<backend>/node_and_metadata`: `--node chat --where user=user-7 --where step>50`.
//! - `save_indexed/<backend>/{off,on}`: one save of a growing conversation (the same shape;
//!   a new execution every 100 saves) into a store without, and one with, the index, in the
//!   same run: the saves' slowdown.
//!
//! After building each store it prints (to stderr) the bytes the store wrote, the index's
//! entries and bytes, and their ratio.

use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion};
use serde_json::json;
use tempfile::TempDir;
use tokio::runtime::Runtime;

use ckpt::{Checkpoint, SearchMethod, SearchQuery, Store};

const EXECUTIONS: usize = 1_000;
const STEPS: usize = 100;
const VOCABULARY: usize = 5_000;
const RARE: &str = "zanzibar-7";
const RARE_STEP: usize = 91;

/// xorshift64* (no `rand` dependency needed).
struct XorShift(u64);

impl XorShift {
    fn new(seed: u64) -> Self {
        XorShift(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Words and their cumulative Zipf weights.
struct Text {
    words: Vec<String>,
    cumulative: Vec<f64>,
}

impl Text {
    fn new() -> Self {
        let mut rng = XorShift::new(7);
        let words = (0..VOCABULARY)
            .map(|_| {
                let len = 2 + (rng.next() % 8) as usize;
                (0..len)
                    .map(|_| char::from(b'a' + (rng.next() % 26) as u8))
                    .collect()
            })
            .collect();
        let mut total = 0.0;
        let cumulative = (1..=VOCABULARY)
            .map(|k| {
                total += 1.0 / k as f64;
                total
            })
            .collect();
        Text { words, cumulative }
    }

    fn message(&self, rng: &mut XorShift) -> String {
        let total = self.cumulative[VOCABULARY - 1];
        let mut out = String::with_capacity(640);
        while out.len() < 600 {
            let x = rng.unit() * total;
            let i = self.cumulative.partition_point(|c| *c < x);
            out.push_str(&self.words[i.min(VOCABULARY - 1)]);
            out.push(' ');
        }
        out
    }
}

/// The checkpoints of execution `e`, in order.
fn conversation(text: &Text, e: usize, rng: &mut XorShift) -> Vec<Checkpoint> {
    let mut messages = Vec::with_capacity(STEPS);
    (1..=STEPS)
        .map(|step| {
            let mut m = text.message(rng);
            if step == RARE_STEP && e % 10 == 3 {
                m.push_str(&format!("about order {RARE}"));
            }
            messages.push(
                json!({"role": if step % 2 == 0 { "assistant" } else { "user" }, "content": m}),
            );
            Checkpoint::new(
                &format!("conv-{e:05}"),
                "chat",
                &json!({ "messages": messages }),
            )
            .expect("checkpoint")
            .with_metadata("user", format!("user-{}", e % 100))
            .with_metadata("step", step as u64)
        })
        .collect()
}

fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime")
}

/// The backends to measure: URLs (with what must outlive them).
fn urls(dir: &TempDir, tag: &str) -> Vec<(&'static str, String)> {
    let mut out = vec![
        ("memory", "memory://".to_owned()),
        (
            "sled",
            format!(
                "sled://{}",
                dir.path().join(format!("{tag}-sled")).display()
            ),
        ),
        (
            "sqlite",
            format!(
                "sqlite://{}",
                dir.path().join(format!("{tag}.db")).display()
            ),
        ),
    ];
    let run = format!("{tag}{}", std::process::id());
    if let Ok(url) = std::env::var("CKPT_TEST_POSTGRES_URL") {
        let sep = if url.contains('?') { '&' } else { '?' };
        out.push(("postgres", format!("{url}{sep}schema=bench_{run}")));
    }
    if let Ok(url) = std::env::var("CKPT_TEST_REDIS_URL") {
        let sep = if url.contains('?') { '&' } else { '?' };
        out.push(("redis", format!("{url}{sep}prefix=bench{run}")));
    }
    out
}

/// Opens `url`, indexes it, and fills it; prints what it wrote and what the index holds.
fn build(rt: &Runtime, name: &str, url: &str) -> Store {
    rt.block_on(async {
        let store = Store::open(url).await.expect("open");
        store.reindex().await.expect("index");
        let text = Text::new();
        let mut rng = XorShift::new(11);
        let started = Instant::now();
        for e in 0..EXECUTIONS {
            store
                .save_batch(conversation(&text, e, &mut rng))
                .await
                .expect("save");
        }
        // The index is up to date after a search.
        let page = store
            .search(&SearchQuery::text(RARE).limit(1))
            .await
            .expect("search");
        assert_eq!(page.method, SearchMethod::Index);
        let built = started.elapsed();
        let written = store.metrics().bytes_written;
        let (entries, bytes) = store.index_size().await.expect("size").expect("indexed");
        eprintln!(
            "search/{name}: {EXECUTIONS} x {STEPS} checkpoints built and indexed in {:.1} s; \
             the store wrote {:.1} MB, the index holds {entries} entries, {:.1} MB ({:.0}% of \
             the bytes written)",
            built.as_secs_f64(),
            written as f64 / 1e6,
            bytes as f64 / 1e6,
            100.0 * bytes as f64 / written as f64
        );
        store
    })
}

fn bench_search(c: &mut Criterion, rt: &Runtime) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    for (name, url) in urls(&dir, "search") {
        let store = build(rt, name, &url);
        let queries = [
            ("text_1pct", SearchQuery::text("zanzibar")),
            (
                "metadata_eq",
                SearchQuery::new().metadata("user=user-7").expect("q"),
            ),
            (
                "metadata_range",
                SearchQuery::new().metadata("step>=100").expect("q"),
            ),
            (
                "node_and_metadata",
                SearchQuery::new()
                    .node("chat")
                    .metadata("user=user-7")
                    .and_then(|q| q.metadata("step>50"))
                    .expect("q"),
            ),
        ];
        let mut group = c.benchmark_group(format!("search/{name}"));
        for (what, q) in queries {
            let page = rt.block_on(store.search(&q)).expect("search");
            assert_eq!(page.hits.len(), 20, "{name} {what}: a full page");
            assert_eq!(page.method, SearchMethod::Index);
            group.bench_function(what, |b| {
                b.iter(|| rt.block_on(store.search(&q)).expect("search"))
            });
        }
        group.finish();
    }
}

fn bench_save_slowdown(c: &mut Criterion, rt: &Runtime) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let off = urls(&dir, "off");
    let on = urls(&dir, "on");
    for ((name, off), (_, on)) in off.into_iter().zip(on) {
        let text = Text::new();
        let mut group = c.benchmark_group(format!("save_indexed/{name}"));
        for (what, url) in [("off", off), ("on", on)] {
            let store = rt.block_on(Store::open(&url)).expect("open");
            if what == "on" {
                rt.block_on(store.reindex()).expect("index");
            }
            let mut rng = XorShift::new(5);
            let mut e = 0;
            let mut pending: Vec<Checkpoint> = Vec::new();
            group.bench_function(what, |b| {
                b.iter_custom(|iters| {
                    // The checkpoints are made before the clock starts: only saves are timed.
                    let mut batch = Vec::with_capacity(iters as usize);
                    while batch.len() < iters as usize {
                        if pending.is_empty() {
                            e += 1;
                            pending = conversation(&text, e, &mut rng);
                            pending.reverse();
                        }
                        batch.extend(pending.pop());
                    }
                    let started = Instant::now();
                    rt.block_on(async {
                        for cp in batch {
                            store.save(cp).await.expect("save");
                        }
                    });
                    started.elapsed()
                })
            });
            rt.block_on(store.flush()).expect("flush");
        }
        group.finish();
    }
}

fn benches(c: &mut Criterion) {
    let rt = runtime();
    bench_save_slowdown(c, &rt);
    bench_search(c, &rt);
}

criterion_group! {
    name = search;
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3));
    targets = benches
}
criterion_main!(search);
