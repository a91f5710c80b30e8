//! Crash consistency with a real SIGKILL: a child process saves in a loop to a durable sled store
//! and reports each acknowledged save; the parent kills it at a seeded random moment, reads the
//! child's output to its end (the newest acknowledgements, the ones most at risk, are written
//! just before the kill), reopens the store, and checks that every acknowledged save is there
//! with its exact state, in order, and that the store takes new saves.
//!
//! The seed is printed; `CKPT_CRASH_SEED=N` repeats a run.

#![cfg(feature = "sled")]

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use ckpt::testing::rng::XorShift64;
use ckpt::{Checkpoint, Store};

const CHILD_ENV: &str = "CKPT_CRASH_CHILD_DIR";
const EXEC: &str = "crash-exec";
const ROUNDS: usize = 4;

fn state_for(step: u64) -> serde_json::Value {
    let message: String = (0..400)
        .map(|i| (b'a' + ((step * 7 + i) % 26) as u8) as char)
        .collect();
    serde_json::json!({ "step": step, "last": message })
}

/// The child half: only does anything when started by `sigkill_keeps_every_acknowledged_save`.
#[tokio::test]
async fn crash_child_writer() {
    let Ok(dir) = std::env::var(CHILD_ENV) else {
        return;
    };
    let store = Store::open(&dir).await.expect("child opens the store");
    for step in 1u64.. {
        let cp = Checkpoint::new(EXEC, "loop", &state_for(step)).expect("valid checkpoint");
        let saved = store.save(cp).await.expect("save");
        // Printed only after save returned, i.e. after the flush.
        println!("ack {} {step}", saved.version);
    }
}

/// The seed of this run: `CKPT_CRASH_SEED`, else the clock.
fn seed() -> u64 {
    std::env::var("CKPT_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_nanos() as u64)
        })
}

/// Reads `ack VERSION STEP` lines from `child`; once `kill_after` have come, waits `then` and
/// kills it, then reads on to the end of its output: every complete line written before the
/// kill counts. A line cut short by the kill is not an acknowledgement.
fn acks_until_killed(child: &mut Child, kill_after: usize, then: Duration) -> Vec<(u64, u64)> {
    let mut stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
    let mut acks = Vec::new();
    let mut killed = false;
    let mut line = String::new();
    loop {
        line.clear();
        match stdout.read_line(&mut line) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) => panic!("reading the child's output: {e}"),
        }
        if !line.ends_with('\n') {
            break;
        }
        // The first ack follows libtest's `test crash_child_writer ... ` on the same line.
        let Some(rest) = line.rfind("ack ").map(|at| line[at + 4..].trim_end()) else {
            continue;
        };
        let parsed = rest
            .split_once(' ')
            .and_then(|(v, s)| Some((v.parse().ok()?, s.parse().ok()?)));
        let Some(ack) = parsed else {
            panic!("a complete line that is not an ack: {line:?}");
        };
        acks.push(ack);
        if !killed && acks.len() >= kill_after {
            std::thread::sleep(then);
            child.kill().expect("SIGKILL the child"); // SIGKILL on Unix
            killed = true;
        }
    }
    let mut rest = Vec::new();
    let _ = stdout.read_to_end(&mut rest);
    child.wait().expect("reap the child");
    assert!(
        killed,
        "the child stopped by itself after {} acks",
        acks.len()
    );
    acks
}

#[tokio::test]
async fn sigkill_keeps_every_acknowledged_save() {
    let seed = seed();
    eprintln!("crash seed {seed} (CKPT_CRASH_SEED={seed} repeats this run)");
    let mut rng = XorShift64::from_state(seed | 1);
    let dir = tempfile::tempdir().expect("tempdir");
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..ROUNDS {
        let kill_after = 1 + (rng.next_u64() % 300) as usize;
        let then = Duration::from_micros(rng.next_u64() % 5_000);
        let mut child = Command::new(std::env::current_exe().expect("test binary"))
            .args([
                "--exact",
                "crash_child_writer",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_ENV, dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn the child");
        let got = acks_until_killed(&mut child, kill_after, then);
        eprintln!(
            "round {round}: killed {then:?} after ack {kill_after}, {} acks in all",
            got.len()
        );
        acked.extend(got);
    }

    let store = Store::open(dir.path().to_str().expect("utf-8 path"))
        .await
        .expect("reopen after the kills");
    let list = store.list(EXEC).await.expect("list");
    let versions: Vec<u64> = list.iter().map(|c| c.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "seed {seed}: versions out of order"
    );
    for (version, step) in &acked {
        let cp = store
            .at_version(EXEC, *version)
            .await
            .unwrap_or_else(|e| panic!("seed {seed}: acked version {version} lost: {e}"));
        let state: serde_json::Value = cp.state().expect("state");
        // Each round restarts its step counter at 1, so compare content by step.
        assert_eq!(state, state_for(*step), "seed {seed}: version {version}");
    }
    let newest = acked.iter().map(|a| a.0).max().expect("some acks");
    let next = store
        .save(Checkpoint::new(EXEC, "after", &state_for(0)).expect("checkpoint"))
        .await
        .expect("save after the kills");
    assert!(next.version > newest, "seed {seed}: a version was reused");
}
