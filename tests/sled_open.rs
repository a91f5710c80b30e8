//! Opening sled stores that are not plainly writable: a read-only mount (a backup, a mounted
//! snapshot) can be inspected with every read while writes are refused; a directory another
//! process holds is reported as busy, naming the directory.

#![cfg(feature = "sled")]

use std::path::{Path, PathBuf};
use std::process::Command;

use ckpt::{Checkpoint, Error, Store};
use serde_json::json;

/// A read-only bind mount of a directory, unmounted on drop.
struct ReadOnlyMount {
    at: PathBuf,
}

impl ReadOnlyMount {
    /// Mounts `dir` read-only at `at` (the test runs as root, as CI does; a failure to mount
    /// fails the test, it is never skipped).
    fn new(dir: &Path, at: &Path) -> Self {
        std::fs::create_dir_all(at).unwrap();
        let run = |args: &[&str]| {
            let out = Command::new("mount")
                .args(args)
                .output()
                .expect("run mount");
            assert!(
                out.status.success(),
                "mount {args:?} failed (this test needs root to make a read-only mount): {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        run(&["--bind", dir.to_str().unwrap(), at.to_str().unwrap()]);
        let mount = ReadOnlyMount { at: at.to_owned() };
        run(&["-o", "remount,ro,bind", at.to_str().unwrap()]);
        mount
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.at).status();
    }
}

#[tokio::test]
async fn a_read_only_store_is_readable_and_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let source = dir.path().join("store");
    {
        let store = Store::open(source.to_str().unwrap()).await.unwrap();
        for i in 1..=3 {
            let cp = Checkpoint::new("run", "step", &json!({ "i": i, "text": "t".repeat(500) }))
                .unwrap();
            store.save(cp).await.unwrap();
        }
    }
    let before = std::fs::read(source.join("db")).unwrap();
    let mount = ReadOnlyMount::new(&source, &dir.path().join("ro"));
    let url = mount.at.to_str().unwrap().to_owned();
    assert!(
        std::fs::write(mount.at.join("probe"), b"x").is_err(),
        "the mount must be read-only"
    );

    let store = Store::open(&url).await.expect("a read-only store opens");
    let latest = store
        .latest("run")
        .await
        .unwrap()
        .expect("a latest checkpoint");
    assert_eq!(latest.version, 3);
    let state: serde_json::Value = store.at_version("run", 2).await.unwrap().state().unwrap();
    assert_eq!(state["i"], 2);
    assert_eq!(store.executions().await.unwrap().len(), 1);

    let refused = store
        .save(Checkpoint::new("run", "step", &json!({ "i": 4 })).unwrap())
        .await
        .expect_err("a save to a read-only store must fail");
    let message = refused.to_string();
    assert!(message.contains("read-only"), "{message}");
    assert!(
        message.contains(&url),
        "the message names the store: {message}"
    );
    drop(store);
    drop(mount);
    assert_eq!(
        std::fs::read(source.join("db")).unwrap(),
        before,
        "nothing was written to the store"
    );
}

#[tokio::test]
async fn a_store_held_by_another_open_is_busy_and_says_where() {
    let dir = tempfile::tempdir().unwrap();
    let url = dir.path().join("store").to_str().unwrap().to_owned();
    let _held = Store::open(&url).await.unwrap();
    match Store::open(&url).await {
        Err(Error::Busy { what }) => {
            assert!(what.contains(&url), "{what}");
            assert!(what.contains("this process already has"), "{what}");
        }
        other => panic!("expected Busy, got {other:?}"),
    }
    // Once dropped (with its clones), the directory opens again, here.
    drop(_held);
    Store::open(&url).await.unwrap();
}
