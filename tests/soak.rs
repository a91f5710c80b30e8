//! Crash soak: a child process saves in a loop (three executions; on sled, a gc now and then) and
//! prints each save as it returns; the parent SIGKILLs it at a random moment (after a random
//! number of acknowledgements and a random sub-millisecond delay, so the kill lands inside a
//! save, a group sync or a gc), and on PostgreSQL and Redis sometimes SIGKILLs the server too
//! and restarts it. After every round the parent drains the child's output to its end, reopens
//! the store, checks that every save acknowledged in that round (and a sample of the earlier
//! ones) loads with exactly its state, that every execution's latest loads, and that the store
//! records no damage; every 50 rounds, and at the end, `Store::verify` must pass too, and at
//! the end every acknowledged save is checked.
//!
//! Each backend's soak is one test here, short by default (`CKPT_SOAK_ROUNDS`, default 4);
//! `scripts/soak.sh BACKEND ROUNDS` runs a long one and prints the figures the README quotes.
//! `CKPT_SOAK_SEED` replays a run (the seed is printed).

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ckpt::testing::rng::XorShift;
use ckpt::{Checkpoint, Store};
use serde_json::{json, Value};

const CHILD_URL: &str = "CKPT_SOAK_CHILD_URL";
const CHILD_ROUND: &str = "CKPT_SOAK_CHILD_ROUND";
const EXECUTIONS: [&str; 3] = ["soak-a", "soak-b", "soak-c"];

/// One acknowledged save.
#[derive(Debug, Clone)]
struct Ack {
    exec: String,
    version: u64,
    round: u64,
    step: u64,
}

fn state_for(round: u64, exec: &str, step: u64) -> Value {
    let text: String = (0..300 + step % 200)
        .map(|i| (b'a' + ((round * 31 + step * 7 + i) % 26) as u8) as char)
        .collect();
    json!({ "exec": exec, "round": round, "step": step, "text": text })
}

/// The child half: does anything only when started by a soak below.
#[tokio::test]
async fn soak_child_writer() {
    let Ok(url) = std::env::var(CHILD_URL) else {
        return;
    };
    let round: u64 = std::env::var(CHILD_ROUND).unwrap().parse().unwrap();
    let store = open_patiently(&url).await;
    for step in 1u64.. {
        let exec = EXECUTIONS[(step % 3) as usize];
        let cp = Checkpoint::new(exec, "loop", &state_for(round, exec, step)).unwrap();
        let saved = store.save(cp).await.expect("save");
        // Printed only once save returned: the save is acknowledged.
        println!("ack {exec} {} {round} {step}", saved.version);
        // A gc now and then, where a kill inside it cannot stall the next writer: on a backend
        // one process holds at a time (sled) a dead gc is ended at once; on a shared one
        // (SQLite, PostgreSQL, Redis) writers wait out its lease (10 minutes), which a soak
        // cannot afford.
        if step % 61 == 0 && store.backend().capabilities().single_process {
            store.gc().await.expect("gc");
        }
    }
}

/// Opens the store, waiting while a killed server restarts or a killed child's lock goes.
async fn open_patiently(url: &str) -> Store {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match Store::open(url).await {
            Ok(store) => return store,
            Err(e) if Instant::now() > deadline => panic!("cannot open {url}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    }
}

/// A backend's server, which a round may kill and restart.
trait Server {
    fn url(&self) -> String;
    /// SIGKILLs the server and starts it again on the same data.
    fn kill_and_restart(&mut self);
}

struct Embedded(String);

impl Server for Embedded {
    fn url(&self) -> String {
        self.0.clone()
    }
    fn kill_and_restart(&mut self) {}
}

struct Redis {
    dir: tempfile::TempDir,
    port: u16,
    server: common::Server,
}

impl Redis {
    fn start() -> Redis {
        let dir = tempfile::tempdir().unwrap();
        let port = common::free_port();
        let server = common::Server(common::start_server(dir.path(), port, &[]));
        Redis { dir, port, server }
    }
}

impl Server for Redis {
    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/0", self.port)
    }
    fn kill_and_restart(&mut self) {
        let _ = self.server.0.kill();
        let _ = self.server.0.wait();
        self.server = common::Server(common::start_server(self.dir.path(), self.port, &[]));
    }
}

struct Postgres(common::PgCluster);

impl Server for Postgres {
    fn url(&self) -> String {
        self.0.url.clone()
    }
    fn kill_and_restart(&mut self) {
        // The postmaster's pid is the first line of postmaster.pid.
        let pid_file = Path::new(&self.0.data).join("postmaster.pid");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let pid = pid.lines().next().unwrap().trim().to_owned();
        let status = Command::new("kill").args(["-9", &pid]).status().unwrap();
        assert!(status.success(), "kill -9 {pid}");
        // Until the orphaned backend processes notice and exit, a new postmaster refuses to
        // start (their shared memory is still attached): try until it starts.
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut words = self.0.ctl.split_whitespace();
            let started = Command::new(words.next().unwrap())
                .args(words)
                .args([
                    "-D",
                    &self.0.data,
                    "-w",
                    "-t",
                    "30",
                    "-l",
                    "/dev/null",
                    "start",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap()
                .success();
            if started {
                return;
            }
            assert!(Instant::now() < deadline, "PostgreSQL did not restart");
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn spawn_child(url: &str, round: u64) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "soak_child_writer",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_URL, url)
        .env(CHILD_ROUND, round.to_string())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn parse_ack(line: &str) -> Option<Ack> {
    // The test harness writes `test soak_child_writer ... ` before the first line, without a
    // newline: an ack may follow it on the same line.
    let at = line.find("ack ")?;
    let mut words = line[at + "ack ".len()..].split(' ');
    Some(Ack {
        exec: words.next()?.to_owned(),
        version: words.next()?.parse().ok()?,
        round: words.next()?.parse().ok()?,
        step: words.next()?.parse().ok()?,
    })
}

/// Checks that each of `acks` loads with exactly its state.
async fn check_acks(store: &Store, acks: &[Ack]) {
    for ack in acks {
        let cp = store
            .at_version(&ack.exec, ack.version)
            .await
            .unwrap_or_else(|e| panic!("acknowledged {}@{} lost: {e}", ack.exec, ack.version));
        let state: Value = cp.state().unwrap();
        assert_eq!(
            state,
            state_for(ack.round, &ack.exec, ack.step),
            "{}@{}",
            ack.exec,
            ack.version
        );
    }
}

/// Every execution's latest checkpoint loads and the store records no damage; with `full`,
/// `Store::verify` also passes (every frame, blob and live checkpoint checked: the store grows
/// with every round, so a long soak does this every [`VERIFY_EVERY`] rounds and at the end).
async fn check_store(store: &Store, full: bool) {
    for exec in EXECUTIONS {
        if let Err(e) = store.latest(exec).await {
            panic!("{exec}: its latest checkpoint does not load: {e}");
        }
    }
    let damage = store.recorded_damage().await.unwrap();
    assert!(damage.is_empty(), "damage recorded: {damage:?}");
    if full {
        let report = store.verify().await.expect("verify");
        assert!(report.is_ok(), "verify: {:?}", report.problems());
    }
}

/// How often a long soak runs a full verify.
const VERIFY_EVERY: u64 = 50;

fn rounds() -> u64 {
    std::env::var("CKPT_SOAK_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4)
}

fn soak(name: &str, server: &mut dyn Server, kills_server: bool) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let seed: u64 = std::env::var("CKPT_SOAK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("soak {name}: seed {seed}");
    let mut rng = XorShift::from_state(seed);
    let mut acks: Vec<Ack> = Vec::new();
    let mut server_kills = 0;
    let rounds = rounds();
    for round in 0..rounds {
        let mut child = spawn_child(&server.url(), round);
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let kill_after = rng.below(150);
        let mut this_round = Vec::new();
        while (this_round.len() as u64) < kill_after {
            let Some(line) = lines.next() else { break };
            this_round.extend(parse_ack(&line.unwrap()));
        }
        std::thread::sleep(Duration::from_micros(rng.below(1500)));
        child.kill().unwrap(); // SIGKILL
                               // Whatever the child printed before it died is an acknowledged save too.
        for line in lines {
            this_round.extend(parse_ack(&line.unwrap()));
        }
        let status = child.wait().unwrap();
        assert!(
            this_round.len() as u64 >= kill_after,
            "round {round}: the child acknowledged {} saves and exited ({status}) before the kill",
            this_round.len()
        );
        if kills_server && rng.below(4) == 0 {
            server.kill_and_restart();
            server_kills += 1;
        }
        rt.block_on(async {
            let store = open_patiently(&server.url()).await;
            check_acks(&store, &this_round).await;
            let sample: Vec<Ack> = (0..20.min(acks.len()))
                .map(|_| acks[rng.below(acks.len() as u64) as usize].clone())
                .collect();
            check_acks(&store, &sample).await;
            check_store(&store, round % VERIFY_EVERY == 0 || round + 1 == rounds).await;
        });
        acks.extend(this_round);
        if (round + 1) % 100 == 0 {
            eprintln!(
                "soak {name}: {} rounds, {} acknowledged saves",
                round + 1,
                acks.len()
            );
        }
    }
    rt.block_on(async {
        let store = open_patiently(&server.url()).await;
        check_acks(&store, &acks).await;
        check_store(&store, true).await;
    });
    let servers = if kills_server {
        format!(" ({server_kills} with the server killed too)")
    } else {
        String::new()
    };
    println!(
        "soak {name}: {rounds} rounds{servers}, {} acknowledged saves checked, 0 lost",
        acks.len()
    );
}

#[cfg(feature = "sled")]
#[test]
fn soak_sled() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("store").to_str().unwrap().to_owned();
    soak("sled", &mut Embedded(url), false);
}

#[cfg(feature = "sqlite")]
#[test]
fn soak_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    soak("sqlite", &mut Embedded(url), false);
}

#[cfg(feature = "postgres")]
#[test]
fn soak_postgres() {
    soak("postgres", &mut Postgres(common::PgCluster::start()), true);
}

#[cfg(feature = "redis")]
#[test]
fn soak_redis() {
    soak("redis", &mut Redis::start(), true);
}
