//! Crash consistency with a real SIGKILL: a child process saves in a loop to a durable sled store
//! and reports each acknowledged save; the parent kills it mid-stream, reopens the store, and
//! checks that every acknowledged save is there with its exact state, in order, and that the
//! store takes new saves.

#![cfg(feature = "sled")]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

use ckpt::{Checkpoint, Store};

const CHILD_ENV: &str = "CKPT_CRASH_CHILD_DIR";
const EXEC: &str = "crash-exec";

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
    for step in 1.. {
        let cp = Checkpoint::new(EXEC, "loop", &state_for(step)).expect("valid checkpoint");
        let saved = store.save(cp).await.expect("save");
        // Printed only after save returned, i.e. after the flush.
        println!("ack {} {step}", saved.version);
    }
}

#[tokio::test]
async fn sigkill_keeps_every_acknowledged_save() {
    let dir = tempfile::tempdir().unwrap();
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..3 {
        let mut child = Command::new(std::env::current_exe().unwrap())
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
            .unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap());
        let mut seen = 0;
        for line in stdout.lines() {
            let line = line.unwrap();
            let Some(rest) = line.strip_prefix("ack ") else {
                continue;
            };
            let (v, s) = rest.split_once(' ').unwrap();
            acked.push((v.parse().unwrap(), s.parse().unwrap()));
            seen += 1;
            if seen == 300 + round * 97 {
                child.kill().unwrap(); // SIGKILL on Unix
                break;
            }
        }
        child.wait().unwrap();
        assert!(
            seen >= 300,
            "round {round}: the child acknowledged only {seen} saves"
        );
    }

    let store = Store::open(dir.path().to_str().unwrap()).await.unwrap();
    let list = store.list(EXEC).await.unwrap();
    let versions: Vec<u64> = list.iter().map(|c| c.version).collect();
    assert!(
        versions.windows(2).all(|w| w[0] < w[1]),
        "versions out of order"
    );
    for (version, step) in &acked {
        let cp = store
            .at_version(EXEC, *version)
            .await
            .unwrap_or_else(|e| panic!("acked version {version} lost: {e}"));
        let state: serde_json::Value = cp.state().unwrap();
        assert_eq!(state["step"], serde_json::json!(step), "version {version}");
        // The second run restarts its step counter at 1, so compare content by step.
        assert_eq!(state, state_for(*step));
    }
    let next = store
        .save(Checkpoint::new(EXEC, "after", &state_for(0)).unwrap())
        .await
        .unwrap();
    assert!(next.version > acked.iter().map(|a| a.0).max().unwrap());
}
