#![cfg(all(
    feature = "testing",
    feature = "sled",
    feature = "sqlite",
    feature = "postgres",
    feature = "redis"
))]

//! Encryption at rest, attacked on every backend: wrong and missing keys, frames and chunks moved between places,
//! truncated ciphertext, plaintext injected into an encrypted store, key rotation, and the raw
//! files of a sled store grepped for a secret.

use ckpt::backend::BackendExt;
use std::sync::Arc;

use ckpt::backend::{Backend, BlobHash, LogAppend};
use ckpt::crypto::Key;
mod common;

use ckpt::testing::{self, Harness};
use ckpt::{Checkpoint, Error, Store};
use common::grep_dir;
use serde_json::json;

const SECRET: &str = "TOP-SECRET-LAUNCH-CODE-4f9a2c";

/// Fresh storage on every backend of this build: the attacks run on each (the server backends
/// need `scripts/servers.sh start`, and fail saying so without it).
fn harnesses() -> Vec<Box<dyn Harness>> {
    [
        "memory",
        "sled",
        "sqlite",
        "postgres",
        "redis",
        "redis-cluster",
    ]
    .into_iter()
    .map(harnesses_like)
    .collect()
}

/// A fresh harness of the kind `name`.
fn harnesses_like(name: &str) -> Box<dyn Harness> {
    match name {
        "memory" => Box::new(testing::MemoryHarness::new()),
        "sled" => Box::new(testing::SledHarness::new()),
        "sqlite" => Box::new(testing::SqliteHarness::new()),
        "postgres" => Box::new(testing::PostgresHarness::new()),
        "redis" => Box::new(testing::RedisHarness::new()),
        _ => Box::new(testing::RedisClusterHarness::new()),
    }
}

fn secret_state(i: u64) -> serde_json::Value {
    // A long leaf (a blob) and a short one (inline in the frame), both carrying the secret.
    json!({ "doc": format!("{SECRET} {i} {}", "confidential words ".repeat(40)), "note": format!("{SECRET}-{i}") })
}

async fn save(store: &Store, exec: &str, i: u64) -> Checkpoint {
    let cp = Checkpoint::new(exec, "n", &secret_state(i)).unwrap();
    store.save(cp).await.unwrap()
}

fn keyed(backend: &Arc<dyn Backend>, keys: Vec<Key>) -> Store {
    Store::with_backend_and_keys(backend.clone(), keys)
}

#[track_caller]
fn assert_decrypt<T: std::fmt::Debug>(r: ckpt::Result<T>, needle: &str) -> String {
    match r {
        Err(e @ Error::Decrypt { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(needle), "{msg:?} does not mention {needle:?}");
            msg
        }
        other => panic!("expected Error::Decrypt mentioning {needle:?}, got {other:?}"),
    }
}

/// A frame's checksum, recomputed as an attacker who moves frames around can (it is not keyed).
fn reseal_checksum(log: &str, seq: u64, frame: &[u8]) -> Vec<u8> {
    let body = &frame[..frame.len() - 8];
    let mut h = blake3::Hasher::new();
    h.update(&(log.len() as u32).to_le_bytes());
    h.update(log.as_bytes());
    h.update(&seq.to_le_bytes());
    h.update(body);
    let mut out = body.to_vec();
    out.extend_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

async fn raw_append(backend: &Arc<dyn Backend>, log: &str, frame: Vec<u8>) -> u64 {
    let seq = backend.next_seq(log).await.unwrap();
    let frame = reseal_checksum(log, seq, &frame);
    backend
        .append(vec![LogAppend::new(log, seq, vec![frame])])
        .await
        .unwrap();
    seq
}

/// A test `$name` running `$body(backend)` on the storage of every harness in turn.
macro_rules! on_every_backend {
    ($name:ident, $body:ident) => {
        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        async fn $name() {
            for h in harnesses() {
                eprintln!("{} on {}", stringify!($name), h.name());
                $body(h.open().await.backend().clone()).await;
            }
        }
    };
}

on_every_backend!(
    wrong_and_missing_keys_fail_closed,
    wrong_and_missing_keys_fail_closed_on
);

async fn wrong_and_missing_keys_fail_closed_on(backend: Arc<dyn Backend>) {
    let key = Key::generate();
    let store = keyed(&backend, vec![key.clone()]);
    let saved = save(&store, "e", 1).await;
    assert!(store.is_encrypted().await.unwrap());

    let wrong = keyed(&backend, vec![Key::generate()]);
    assert_decrypt(wrong.load(&saved.id).await, &key.id().to_string());
    assert_decrypt(
        wrong
            .save(Checkpoint::new("e", "n", &json!({})).unwrap())
            .await,
        &key.id().to_string(),
    );

    let none = Store::with_backend(backend.clone());
    assert!(none.is_encrypted().await.unwrap());
    assert_decrypt(none.load(&saved.id).await, "encrypted");
    assert_decrypt(
        none.save(Checkpoint::new("e", "n", &json!({})).unwrap())
            .await,
        "without a key",
    );
    assert_decrypt(none.clear("e").await, "without a key");
    // Nothing was written by the refused calls.
    assert_eq!(store.list("e").await.unwrap().len(), 1);
    assert_eq!(
        store.load(&saved.id).await.unwrap().state_json().unwrap(),
        saved.state_json().unwrap()
    );
}

on_every_backend!(
    frames_moved_to_another_execution_or_position_do_not_open,
    frames_moved_to_another_execution_or_position_do_not_open_on
);

async fn frames_moved_to_another_execution_or_position_do_not_open_on(backend: Arc<dyn Backend>) {
    let store = keyed(&backend, vec![Key::generate()]);
    save(&store, "alice", 1).await;
    save(&store, "bob", 1).await;
    let (_, alice_frame) = backend.scan("alice", 1, 1).await.unwrap().remove(0);
    // Alice's frame, with a valid checksum, appended to Bob's log.
    let seq = raw_append(&backend, "bob", alice_frame.clone()).await;
    let fresh = store.with_same_keys(backend.clone());
    let msg = assert_decrypt(fresh.list("bob").await, "authentication failed");
    assert!(
        msg.contains("bob") && msg.contains(&format!("seq {seq}")),
        "{msg}"
    );
    // And at another position of Alice's own log.
    raw_append(&backend, "alice", alice_frame).await;
    assert_decrypt(fresh.list("alice").await, "authentication failed");
}

on_every_backend!(
    chunks_swapped_or_truncated_do_not_open,
    chunks_swapped_or_truncated_do_not_open_on
);

async fn chunks_swapped_or_truncated_do_not_open_on(backend: Arc<dyn Backend>) {
    let store = keyed(&backend, vec![Key::generate()]);
    let a = save(&store, "a", 1).await;
    let of_a: std::collections::BTreeSet<BlobHash> =
        backend.list_blobs().await.unwrap().into_iter().collect();
    save(&store, "b", 2).await;
    let of_b: Vec<BlobHash> = backend
        .list_blobs()
        .await
        .unwrap()
        .into_iter()
        .filter(|h| !of_a.contains(h))
        .collect();
    // A chunk of a's state and one of b's (the stores hold nothing else), so each load needs
    // the chunk swapped in for it.
    let (Some(&x), Some(&y)) = (of_a.first(), of_b.first()) else {
        panic!("the long leaves of both states are blobs: {of_a:?} {of_b:?}");
    };
    let bx = backend.get_blob(&x).await.unwrap().unwrap();
    let by = backend.get_blob(&y).await.unwrap().unwrap();
    // Both loads, by a store with nothing cached, after x and y are replaced by `blobs`.
    let loads_with = |blobs: Vec<(BlobHash, Vec<u8>)>| {
        let (store, backend, id) = (&store, &backend, &a.id);
        async move {
            backend.delete_blobs(&[x, y]).await.unwrap();
            backend.put_blobs(blobs).await.unwrap();
            let fresh = store.with_same_keys(backend.clone());
            [
                fresh.load(id).await,
                fresh.latest("b").await.map(|c| c.unwrap()),
            ]
        }
    };
    let loads = loads_with(vec![(x, by), (y, bx.clone())]).await;
    assert!(
        loads
            .iter()
            .all(|r| matches!(r, Err(Error::Decrypt { .. }))),
        "a swapped chunk loaded: {loads:?}"
    );
    // Truncated: put x back, cut short.
    let loads = loads_with(vec![(x, bx[..bx.len() - 5].to_vec())]).await;
    assert!(
        loads
            .iter()
            .all(|r| matches!(r, Err(Error::Decrypt { .. }) | Err(Error::Corrupt { .. }))),
        "{loads:?}"
    );
}

on_every_backend!(
    truncated_frames_do_not_open,
    truncated_frames_do_not_open_on
);

async fn truncated_frames_do_not_open_on(backend: Arc<dyn Backend>) {
    let store = keyed(&backend, vec![Key::generate()]);
    save(&store, "t", 1).await;
    let (_, frame) = backend.scan("t", 1, 1).await.unwrap().remove(0);
    let body = &frame[..frame.len() - 8];
    // Cut 3 bytes off the ciphertext, keep a valid checksum.
    let mut cut = body[..body.len() - 3].to_vec();
    cut.extend_from_slice(&[0; 8]);
    raw_append(&backend, "t2", cut).await;
    let fresh = store.with_same_keys(backend.clone());
    assert_decrypt(fresh.list("t2").await, "t2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plaintext_injected_into_an_encrypted_store_is_refused() {
    for h in harnesses() {
        eprintln!(
            "plaintext_injected_into_an_encrypted_store_is_refused on {}",
            h.name()
        );
        let plain = h.open().await.backend().clone();
        let other = harnesses_like(h.name());
        let encrypted = other.open().await.backend().clone();
        plaintext_injected_on(plain, encrypted).await;
    }
}

async fn plaintext_injected_on(plain_backend: Arc<dyn Backend>, backend: Arc<dyn Backend>) {
    let plain = Store::with_backend(plain_backend.clone());
    save(&plain, "p", 1).await;
    let (_, plain_frame) = plain_backend.scan("p", 1, 1).await.unwrap().remove(0);
    let plain_blobs = plain_backend.list_blobs().await.unwrap();
    let plain_blob = plain_backend
        .get_blob(&plain_blobs[0])
        .await
        .unwrap()
        .unwrap();

    let store = keyed(&backend, vec![Key::generate()]);
    save(&store, "e", 1).await;
    raw_append(&backend, "injected", plain_frame).await;
    let fresh = store.with_same_keys(backend.clone());
    assert_decrypt(fresh.list("injected").await, "plaintext frame");
    // A plaintext blob under an address a frame references.
    let referenced = backend.list_blobs().await.unwrap();
    backend.delete_blobs(&referenced).await.unwrap();
    backend
        .put_blobs(
            referenced
                .iter()
                .map(|h| (*h, plain_blob.clone()))
                .collect(),
        )
        .await
        .unwrap();
    let fresh = store.with_same_keys(backend.clone());
    assert_decrypt(fresh.latest("e").await, "plaintext blob");
}

#[tokio::test]
async fn a_plaintext_store_refuses_a_key_and_urls_never_carry_one() {
    let backend: Arc<dyn Backend> = Store::memory().backend().clone();
    save(&Store::with_backend(backend.clone()), "p", 1).await;
    let keyed = keyed(&backend, vec![Key::generate()]);
    assert_decrypt(keyed.latest("p").await, "created without encryption");
    let plain = Store::with_backend(backend.clone());
    assert!(matches!(plain.rekey().await, Err(Error::InvalidInput(_))));

    let key = Key::generate();
    let e = Store::open(&format!("memory://?key={}", key.to_hex()))
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("key_env") && !e.contains(&key.to_hex()), "{e}");
    let e = Store::open("memory://?key_env=CKPT_TEST_NO_SUCH_VAR")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("CKPT_TEST_NO_SUCH_VAR"), "{e}");
}

#[tokio::test]
async fn key_env_opens_an_encrypted_store_and_keys_never_print() {
    let dir = tempfile::tempdir().unwrap();
    let key = Key::generate();
    // SAFETY of the test: only this test reads this variable.
    std::env::set_var("CKPT_TEST_KEY_ENV_A", key.to_hex());
    let url = format!(
        "sled://{}?key_env=CKPT_TEST_KEY_ENV_A",
        dir.path().display()
    );
    let store = Store::open(&url).await.unwrap();
    let saved = save(&store, "k", 1).await;
    assert!(store.is_encrypted().await.unwrap());
    let debug = format!(
        "{store:?} {key:?} {:?}",
        Store::builder(&url).encryption(key.clone())
    );
    assert!(!debug.contains(&key.to_hex()), "{debug}");
    assert!(debug.contains(&key.id().to_string()), "{debug}");
    drop(store);
    let store = reopen(&url).await;
    assert_eq!(
        store.load(&saved.id).await.unwrap().state_json().unwrap(),
        saved.state_json().unwrap()
    );
}

async fn reopen(url: &str) -> Store {
    for _ in 0..100 {
        if let Ok(s) = Store::open(url).await {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("cannot reopen {url}");
}

on_every_backend!(
    key_rotation_writes_with_the_newest_and_reads_with_all,
    key_rotation_writes_with_the_newest_and_reads_with_all_on
);

async fn key_rotation_writes_with_the_newest_and_reads_with_all_on(backend: Arc<dyn Backend>) {
    let (k1, k2) = (Key::generate(), Key::generate());
    let old = save(&keyed(&backend, vec![k1.clone()]), "r", 1).await;
    let rotated = keyed(&backend, vec![k2.clone(), k1.clone()]);
    assert_eq!(
        rotated.load(&old.id).await.unwrap().state_json().unwrap(),
        old.state_json().unwrap()
    );
    let new = save(&rotated, "r", 2).await;
    assert_eq!(
        rotated.load(&new.id).await.unwrap().state_json().unwrap(),
        new.state_json().unwrap()
    );
    // The new frame is sealed with k2: k1 alone cannot read it.
    let only_k1 = keyed(&backend, vec![k1.clone()]);
    assert_decrypt(only_k1.load(&new.id).await, &k2.id().to_string());
    // Dropping k1 before a rekey: the store names the key it needs.
    let only_k2 = keyed(&backend, vec![k2.clone()]);
    assert_decrypt(only_k2.load(&old.id).await, &k1.id().to_string());

    // Rekey under k2 (k1 still there to open); then k2 alone opens everything, k1 nothing.
    let report = rotated.rekey().await.unwrap();
    assert!(report.frames >= 1 && report.blobs >= 1, "{report:?}");
    assert_eq!(
        rotated.rekey().await.unwrap(),
        Default::default(),
        "a second rekey has nothing to do"
    );
    let only_k2 = keyed(&backend, vec![k2]);
    for cp in [&old, &new] {
        assert_eq!(
            only_k2.load(&cp.id).await.unwrap().state_json().unwrap(),
            cp.state_json().unwrap()
        );
    }
    save(&only_k2, "r", 3).await;
    assert_decrypt(keyed(&backend, vec![k1]).load(&old.id).await, "");
}

#[tokio::test]
async fn rekey_on_sled_survives_a_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().display().to_string();
    let (k1, k2) = (Key::generate(), Key::generate());
    let store = Store::builder(&path)
        .encryption(k1.clone())
        .open()
        .await
        .unwrap();
    let saved: Vec<Checkpoint> = futures_util::future::join_all((1..=4).map(|i| {
        let store = store.clone();
        async move { save(&store, &format!("s{i}"), i).await }
    }))
    .await;
    drop(store);
    let store = reopen_with(&path, vec![k2.clone(), k1]).await;
    let report = store.rekey().await.unwrap();
    assert!(report.frames >= 4, "{report:?}");
    drop(store);
    let store = reopen_with(&path, vec![k2]).await;
    for cp in &saved {
        assert_eq!(
            store.load(&cp.id).await.unwrap().state_json().unwrap(),
            cp.state_json().unwrap()
        );
    }
}

async fn reopen_with(path: &str, keys: Vec<Key>) -> Store {
    for _ in 0..100 {
        let mut b = Store::builder(path);
        for (i, k) in keys.iter().enumerate() {
            b = if i == 0 {
                b.encryption(k.clone())
            } else {
                b.decryption_key(k.clone())
            };
        }
        if let Ok(s) = b.open().await {
            return s;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    panic!("cannot reopen {path}");
}

/// The raw files of an encrypted sled store never hold the secret; a plaintext store's do
/// (which shows the grep finds what is there).
#[tokio::test]
async fn raw_sled_files_of_an_encrypted_store_hold_no_secret() {
    for encrypted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let mut builder = Store::builder(&dir.path().display().to_string());
        if encrypted {
            builder = builder.encryption(Key::generate());
        }
        let store = builder.open().await.unwrap();
        for i in 1..=5 {
            save(&store, "g", i).await;
        }
        store.flush().await.unwrap();
        drop(store);
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        let found = !grep_dir(dir.path(), SECRET.as_bytes()).is_empty();
        assert_eq!(
            found, !encrypted,
            "encrypted={encrypted}: secret found={found}"
        );
    }
}
