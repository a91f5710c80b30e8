//! `ckpt export`, `ckpt import` and `ckpt copy` through the real binary, on real sled stores:
//! what arrives equals what left (ids, versions, timestamps, parents, metadata, states), damage
//! and name clashes are refused with nothing written.

#![cfg(feature = "sled")]

use std::path::Path;
use std::process::Output;

use ckpt::{Checkpoint, Store};

mod common;

fn ckpt(args: &[&str]) -> Output {
    common::cli::command()
        .args(args)
        .output()
        .expect("run ckpt")
}

fn ok(args: &[&str]) -> String {
    let out = ckpt(args);
    assert!(
        out.status.success(),
        "ckpt {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Waits until no store in this process holds `dir` any more: sled's I/O threads may keep its
/// lock for a moment after the store is dropped, and the binary needs it.
fn wait_unlocked(dir: &Path) {
    let lock_file = dir.join("db");
    for _ in 0..200 {
        let Ok(file) = std::fs::File::open(&lock_file) else {
            return;
        };
        if file.try_lock().is_ok() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    panic!("{} stayed locked", dir.display());
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

/// A sled store with two executions: deltas, long strings (blobs), a delete and a fork.
fn seed(dir: &Path) -> (Vec<Checkpoint>, Vec<Checkpoint>) {
    let lists = rt().block_on(async {
        let store = Store::open(dir.to_str().unwrap()).await.unwrap();
        let mut ids = Vec::new();
        for i in 0..5u64 {
            let state = serde_json::json!({ "i": i, "text": format!("{i}-").repeat(200) });
            let cp = Checkpoint::new("ex-a", "step", &state)
                .unwrap()
                .with_metadata("i", i);
            ids.push(store.save(cp).await.unwrap().id);
        }
        store.delete(&ids[1]).await.unwrap();
        store.fork(&ids[3], "ex-b").await.unwrap();
        (
            store.list("ex-a").await.unwrap(),
            store.list("ex-b").await.unwrap(),
        )
    });
    wait_unlocked(dir);
    lists
}

fn lists(dir: &Path) -> (Vec<Checkpoint>, Vec<Checkpoint>) {
    let lists = rt().block_on(async {
        let store = Store::open(dir.to_str().unwrap()).await.unwrap();
        (
            store.list("ex-a").await.unwrap(),
            store.list("ex-b").await.unwrap(),
        )
    });
    wait_unlocked(dir);
    lists
}

#[test]
fn export_then_import_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let expected = seed(&src);
    let file = tmp.path().join("bundle.ckpt");
    let out = ok(&[
        "--store",
        src.to_str().unwrap(),
        "export",
        "--all",
        "-o",
        file.to_str().unwrap(),
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["executions"], 2, "{out}");
    assert!(v["blobs"].as_u64().unwrap() >= 4, "{out}");
    let out = ok(&[
        "--store",
        dst.to_str().unwrap(),
        "import",
        file.to_str().unwrap(),
    ]);
    assert!(out.contains("imported 2 executions"), "{out}");
    assert_eq!(lists(&dst), expected);
    // A second import is refused and changes nothing.
    let again = ckpt(&[
        "--store",
        dst.to_str().unwrap(),
        "import",
        file.to_str().unwrap(),
    ]);
    assert_eq!(again.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(lists(&dst), expected);
    // Export never overwrites a file.
    let clash = ckpt(&[
        "--store",
        src.to_str().unwrap(),
        "export",
        "ex-a",
        "-o",
        file.to_str().unwrap(),
    ]);
    assert_eq!(clash.status.code(), Some(1));
}

#[test]
fn a_damaged_bundle_writes_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    seed(&src);
    let file = tmp.path().join("bundle.ckpt");
    ok(&[
        "--store",
        src.to_str().unwrap(),
        "export",
        "ex-a",
        "-o",
        file.to_str().unwrap(),
    ]);
    let mut bytes = std::fs::read(&file).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x01;
    std::fs::write(&file, &bytes).unwrap();
    let out = ckpt(&[
        "--store",
        dst.to_str().unwrap(),
        "import",
        file.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt") || err.contains("checksum"), "{err}");
    assert_eq!(lists(&dst), (vec![], vec![]));
    let not_a_bundle = tmp.path().join("plain.txt");
    std::fs::write(&not_a_bundle, b"hello").unwrap();
    let out = ckpt(&[
        "--store",
        dst.to_str().unwrap(),
        "import",
        not_a_bundle.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("not a ckpt bundle"));
}

#[test]
fn copy_moves_executions_between_stores() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let expected = seed(&src);
    let out = ok(&[
        "copy",
        "--from",
        src.to_str().unwrap(),
        "--to",
        dst.to_str().unwrap(),
        "ex-b",
        "--json",
    ]);
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["executions"], serde_json::json!(["ex-b"]), "{out}");
    assert_eq!(lists(&dst), (vec![], expected.1.clone()));
    ok(&[
        "copy",
        "--from",
        src.to_str().unwrap(),
        "--to",
        dst.to_str().unwrap(),
        "ex-a",
    ]);
    assert_eq!(lists(&dst), expected);
    let unknown = ckpt(&[
        "copy",
        "--from",
        src.to_str().unwrap(),
        "--to",
        dst.to_str().unwrap(),
        "nope",
    ]);
    assert_eq!(unknown.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&unknown.stderr).contains("not found"));
}

/// `copy --all` into a store that already has one of the executions copies nothing (it checks
/// the target first) and names the clash; into a fresh store it copies everything and says
/// which executions it copied.
#[test]
fn copy_all_copies_everything_or_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    let (src, dst) = (tmp.path().join("src"), tmp.path().join("dst"));
    let expected = seed(&src);
    let (src, dst_s) = (src.to_str().unwrap(), dst.to_str().unwrap());
    // ex-b is there already; ex-a, which sorts first, is not.
    ok(&["copy", "--from", src, "--to", dst_s, "ex-b"]);
    let out = ckpt(&["copy", "--from", src, "--to", dst_s, "--all"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains("already exist") && stderr.contains("\"ex-b\""),
        "{stderr}"
    );
    assert!(stderr.contains("nothing was copied"), "{stderr}");
    assert!(!stderr.contains("\"ex-a\""), "{stderr}");
    assert_eq!(lists(&dst), (vec![], expected.1.clone()), "ex-a was copied");

    let fresh = tmp.path().join("fresh");
    let out = ok(&[
        "copy",
        "--from",
        src,
        "--to",
        fresh.to_str().unwrap(),
        "--all",
    ]);
    assert!(out.contains("copied 2 executions"), "{out}");
    assert!(out.trim_end().ends_with("ex-a, ex-b"), "{out}");
    assert_eq!(lists(&fresh), expected);
}
