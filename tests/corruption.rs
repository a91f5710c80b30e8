//! Damaged storage: checkpoints are saved to a sled store, the store is closed, bytes are damaged
//! directly in the sled database (opened with the `sled` crate; one frame, one blob, a log's high-water mark), and the store is
//! reopened. Every read touching the damage must fail with `Error::Corrupt` naming where (the
//! execution and sequence, or the blob hash), never panic and never return wrong data; reads the
//! damage does not concern still work where the design allows.
//!
//! sled layout (see `src/backend/sled/mod.rs`): one default tree; `b'e'` + u16 BE name length + name +
//! u64 BE seq is a log frame, `b'b'` + 32-byte hash a blob, `b'l'` + name a log's next sequence.

#![cfg(feature = "sled")]

use std::fmt::Debug;
use std::path::Path;
use std::time::Duration;

use ckpt::testing::rng::XorShift64;
use ckpt::{Checkpoint, CheckpointHeader, ExecutionSummary, HistoryQuery, Store};
use serde_json::json;
use tempfile::TempDir;

const A: &str = "exec-a";
const B: &str = "exec-b";

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime")
}

/// 400 bytes of text unique to `(exec, i)`: stored as a blob of its own.
fn long_text(exec: &str, i: u64) -> String {
    let mut s = format!("{exec}/{i}:");
    let mut rng =
        XorShift64::from_state((i + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ exec.len() as u64);
    while s.len() < 400 {
        s.push(char::from(b'a' + (rng.next_u64() % 26) as u8));
    }
    s
}

fn state(exec: &str, i: u64) -> serde_json::Value {
    json!({ "step": i, "text": long_text(exec, i), "short": format!("{exec}-{i}") })
}

/// What was saved, and what the store answered, before the damage.
struct Fixture {
    dir: TempDir,
    /// Every checkpoint saved to `exec-a` (versions 1, 2, 3).
    a: Vec<Checkpoint>,
    /// The live ones.
    a_live: Vec<Checkpoint>,
    b: Vec<Checkpoint>,
    history_a: Vec<CheckpointHeader>,
    executions: Vec<ExecutionSummary>,
}

impl Fixture {
    fn path(&self) -> &Path {
        self.dir.path()
    }
}

async fn open_store(path: &Path) -> Store {
    let url = path.to_string_lossy().into_owned();
    let mut last = None;
    for _ in 0..100 {
        match Store::open(&url).await {
            Ok(store) => return store,
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("cannot open the store in {url}: {last:?}")
}

/// Three saves to `exec-a` (then, with `delete_first`, a delete of the first: frame 4) and two to
/// `exec-b`, each state holding a long string of its own; the store is closed on return.
fn fixture(rt: &tokio::runtime::Runtime, delete_first: bool) -> Fixture {
    let dir = tempfile::tempdir().expect("a temporary directory");
    rt.block_on(async {
        let store = open_store(dir.path()).await;
        let mut a = Vec::new();
        for i in 1..=3 {
            let cp = Checkpoint::new(A, "step", &state(A, i))
                .expect("checkpoint")
                .with_metadata("i", i);
            a.push(store.save(cp).await.expect("save"));
        }
        let mut b = Vec::new();
        for i in 1..=2 {
            let cp = Checkpoint::new(B, "step", &state(B, i)).expect("checkpoint");
            b.push(store.save(cp).await.expect("save"));
        }
        assert_eq!(
            a.iter().map(|c| c.version).collect::<Vec<_>>(),
            [1, 2, 3],
            "fixture versions"
        );
        let mut a_live = a.clone();
        if delete_first {
            store.delete(&a[0].id).await.expect("delete");
            a_live.remove(0);
        }
        let history_a = store
            .history(A, HistoryQuery::default())
            .await
            .expect("history");
        let executions = store.executions().await.expect("executions");
        store.flush().await.expect("flush");
        Fixture {
            a,
            a_live,
            b,
            history_a,
            executions,
            dir,
        }
    })
}

/// Opens the sled database the store wrote. The backend may configure a segment size of its own,
/// which sled requires to be given again on every open; sled's error names it, so it is taken
/// from there rather than copied from the backend's source.
fn open_sled(path: &Path) -> sled::Result<sled::Db> {
    match sled::open(path) {
        Err(sled::Error::Unsupported(message)) if message.contains("change it back to ") => {
            let size = message
                .rsplit("change it back to ")
                .next()
                .and_then(|n| n.trim().parse::<usize>().ok())
                .unwrap_or_else(|| panic!("unexpected sled error: {message}"));
            sled::Config::new().path(path).segment_size(size).open()
        }
        other => other,
    }
}

/// Opens the sled database directly (retrying while the closed store's lock is released), runs `f`,
/// flushes and closes it.
fn with_db<R>(path: &Path, f: impl FnOnce(&sled::Db) -> R) -> R {
    let mut last = None;
    for _ in 0..100 {
        match open_sled(path) {
            Ok(db) => {
                let out = f(&db);
                db.flush().expect("flush sled");
                return out;
            }
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    panic!("cannot open sled in {}: {last:?}", path.display())
}

fn frame_key(log: &str, seq: u64) -> Vec<u8> {
    let mut key = vec![b'e'];
    key.extend_from_slice(&(log.len() as u16).to_be_bytes());
    key.extend_from_slice(log.as_bytes());
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

fn log_key(log: &str) -> Vec<u8> {
    let mut key = vec![b'l'];
    key.extend_from_slice(log.as_bytes());
    key
}

/// The content address of a string leaf: blake3 of its MessagePack encoding.
fn text_hash(s: &str) -> [u8; 32] {
    ckpt::codec::blob::address(&ckpt::codec::value::encode(&rmpv::Value::from(s)))
}

fn blob_key(hash: &[u8; 32]) -> Vec<u8> {
    let mut key = vec![b'b'];
    key.extend_from_slice(hash);
    key
}

fn hex(hash: &[u8; 32]) -> String {
    hash.iter().map(|b| format!("{b:02x}")).collect()
}

fn read(path: &Path, key: &[u8]) -> Vec<u8> {
    with_db(path, |db| {
        db.get(key).expect("sled get").map(|v| v.to_vec())
    })
    .unwrap_or_else(|| panic!("no value under key {key:?}: has the sled layout changed?"))
}

fn write(path: &Path, key: &[u8], value: Option<Vec<u8>>) {
    with_db(path, |db| match value {
        Some(v) => db.insert(key, v).map(drop),
        None => db.remove(key).map(drop),
    })
    .expect("sled write");
}

/// First, middle and last byte of a value of `len` bytes.
fn positions(len: usize) -> [usize; 3] {
    [0, len / 2, len - 1]
}

#[track_caller]
fn assert_corrupt<T: Debug>(result: ckpt::Result<T>, names: &[&str], what: &str) {
    match result {
        Err(e) if e.is_corrupt() => {
            let message = e.to_string();
            for name in names {
                assert!(
                    message.contains(name),
                    "{what}: the message {message:?} does not name {name:?}"
                );
            }
        }
        other => panic!("{what}: expected Corrupt naming {names:?}, got {other:?}"),
    }
}

/// Either the right answer or Corrupt: what a read next to the damage may return.
#[track_caller]
fn assert_right_or_corrupt<T: Debug + PartialEq>(
    result: ckpt::Result<T>,
    expected: &T,
    what: &str,
) {
    match result {
        Ok(v) => assert_eq!(&v, expected, "{what}: wrong data next to damaged storage"),
        Err(e) => assert!(
            e.is_corrupt(),
            "{what}: expected the right answer or Corrupt, got {e} ({e:?})"
        ),
    }
}

/// Checks a store whose `exec-a` frame at `seq` is damaged: reads of that frame's checkpoint (or,
/// for a delete frame, of the execution) fail with Corrupt naming the execution and seq; nothing
/// returns wrong data; `exec-b` is untouched.
async fn check_frame_damage(store: &Store, fx: &Fixture, seq: u64, what: &str) {
    let names = [A, &format!("seq {seq}")];
    if let Some(cp) = fx.a.iter().find(|c| c.version == seq) {
        assert_corrupt(
            store.load(&cp.id).await,
            &names,
            &format!("{what}: load {}", cp.id),
        );
    } else {
        assert_corrupt(store.list(A).await, &names, &format!("{what}: list {A}"));
    }
    for cp in &fx.a {
        let expected = if fx.a_live.contains(cp) {
            Ok(cp.clone())
        } else {
            Err(())
        };
        match (store.load(&cp.id).await, expected) {
            (Ok(got), Ok(want)) => assert_eq!(got, want, "{what}: wrong data for {}", cp.id),
            (Ok(got), Err(())) => panic!("{what}: deleted {} loads: {got:?}", cp.id),
            // A live checkpoint loads exactly or fails as damaged: never a silent hole.
            (Err(e), Ok(_)) => assert!(e.is_corrupt(), "{what}: load {}: {e}", cp.id),
            (Err(e), Err(())) => assert!(
                e.is_corrupt() || e.is_not_found(),
                "{what}: load {}: {e}",
                cp.id
            ),
        }
    }
    assert_right_or_corrupt(store.list(A).await, &fx.a_live, &format!("{what}: list"));
    assert_right_or_corrupt(
        store.latest(A).await,
        &fx.a_live.last().cloned(),
        &format!("{what}: latest"),
    );
    // Damage is contained: history lists only readable versions (each exactly as saved), the
    // rest are named by damage(); executions() keeps working and marks the damaged execution.
    let history = store
        .history(A, HistoryQuery::default())
        .await
        .unwrap_or_else(|e| panic!("{what}: history: {e}"));
    for h in &history {
        assert!(fx.history_a.contains(h), "{what}: history made up {h:?}");
    }
    let damage = store.damage(A).await.expect("damage");
    assert!(
        damage.frames.iter().any(|(s, _)| *s == seq),
        "{what}: damage() does not name seq {seq}: {damage:?}"
    );
    let summaries = store
        .executions()
        .await
        .unwrap_or_else(|e| panic!("{what}: executions: {e}"));
    let a = summaries.iter().find(|s| s.execution_id == A);
    assert!(
        a.is_some_and(|a| a.damaged_frames.contains(&seq)),
        "{what}: executions() does not mark {A}: {summaries:?}"
    );
    let b: Vec<_> = summaries.iter().filter(|s| s.execution_id == B).collect();
    let b_expected: Vec<_> = fx
        .executions
        .iter()
        .filter(|s| s.execution_id == B)
        .collect();
    assert_eq!(b, b_expected, "{what}: the other execution's summary");
    assert_eq!(
        store.list(B).await.expect("list b"),
        fx.b,
        "{what}: the other execution"
    );
    for cp in &fx.b {
        assert_eq!(
            store.load(&cp.id).await.expect("load b"),
            *cp,
            "{what}: the other execution"
        );
    }
}

/// Checks a store whose blob holding `a[1]`'s long string is damaged or missing: loading `a[1]`
/// (and listing, which loads it) fails with Corrupt naming the blob; every other checkpoint and
/// every header still reads right.
async fn check_blob_damage(store: &Store, fx: &Fixture, hash: &[u8; 32], what: &str) {
    let hex = hex(hash);
    let names = [hex.as_str()];
    assert_corrupt(
        store.load(&fx.a[1].id).await,
        &names,
        &format!("{what}: load {}", fx.a[1].id),
    );
    assert_corrupt(store.list(A).await, &names, &format!("{what}: list"));
    for cp in [&fx.a[0], &fx.a[2]].into_iter().chain(&fx.b) {
        let loaded = store
            .load(&cp.id)
            .await
            .unwrap_or_else(|e| panic!("{what}: load {}: {e}", cp.id));
        assert_eq!(
            loaded, *cp,
            "{what}: {} does not reference the damaged blob",
            cp.id
        );
    }
    assert_eq!(
        store.latest(A).await.expect("latest").as_ref(),
        fx.a.last(),
        "{what}: latest"
    );
    assert_eq!(
        store
            .history(A, HistoryQuery::default())
            .await
            .expect("history"),
        fx.history_a,
        "{what}: history"
    );
    assert_eq!(
        store.executions().await.expect("executions"),
        fx.executions,
        "{what}: executions"
    );
    assert_eq!(
        store.list(B).await.expect("list b"),
        fx.b,
        "{what}: the other execution"
    );
}

#[test]
fn flipped_bytes_in_a_save_frame_are_corrupt() {
    let rt = runtime();
    for seq in [1, 2, 3] {
        let fx = fixture(&rt, false);
        let key = frame_key(A, seq);
        let original = read(fx.path(), &key);
        for pos in positions(original.len()) {
            let mut bad = original.clone();
            bad[pos] ^= 0x20;
            write(fx.path(), &key, Some(bad));
            let what = format!(
                "frame {A} seq {seq}, byte {pos} of {} flipped",
                original.len()
            );
            rt.block_on(async {
                let store = open_store(fx.path()).await;
                check_frame_damage(&store, &fx, seq, &what).await;
            });
            write(fx.path(), &key, Some(original.clone()));
        }
        rt.block_on(async {
            let store = open_store(fx.path()).await;
            assert_eq!(
                store.list(A).await.expect("list after repair"),
                fx.a,
                "repaired frame {seq}"
            );
        });
    }
}

#[test]
fn flipped_bytes_in_a_delete_frame_never_resurrect() {
    let rt = runtime();
    let fx = fixture(&rt, true);
    let key = frame_key(A, 4);
    let original = read(fx.path(), &key);
    for pos in positions(original.len()) {
        let mut bad = original.clone();
        bad[pos] ^= 0x01;
        write(fx.path(), &key, Some(bad));
        let what = format!("delete frame {A} seq 4, byte {pos} flipped");
        rt.block_on(async {
            let store = open_store(fx.path()).await;
            check_frame_damage(&store, &fx, 4, &what).await;
        });
    }
}

#[test]
fn truncated_missing_and_misplaced_frames_are_corrupt() {
    let rt = runtime();
    let fx = fixture(&rt, false);
    let key = frame_key(A, 2);
    let original = read(fx.path(), &key);

    write(fx.path(), &key, Some(original[..3].to_vec()));
    rt.block_on(async {
        let store = open_store(fx.path()).await;
        check_frame_damage(&store, &fx, 2, "frame truncated to 3 bytes").await;
    });

    write(fx.path(), &key, Some(Vec::new()));
    rt.block_on(async {
        let store = open_store(fx.path()).await;
        check_frame_damage(&store, &fx, 2, "frame emptied").await;
    });

    // The frame of seq 1 copied to seq 2: its checksum binds it to seq 1.
    write(fx.path(), &key, Some(read(fx.path(), &frame_key(A, 1))));
    rt.block_on(async {
        let store = open_store(fx.path()).await;
        check_frame_damage(&store, &fx, 2, "frame of seq 1 stored at seq 2").await;
    });

    // The frame of exec-b seq 2 stored as exec-a seq 2: its checksum binds it to exec-b.
    write(fx.path(), &key, Some(read(fx.path(), &frame_key(B, 2))));
    rt.block_on(async {
        let store = open_store(fx.path()).await;
        check_frame_damage(&store, &fx, 2, "frame of another execution").await;
    });

    // A frame missing from the middle of the log.
    write(fx.path(), &key, None);
    rt.block_on(async {
        let store = open_store(fx.path()).await;
        for cp in &fx.a {
            match store.load(&cp.id).await {
                Ok(got) => assert_eq!(got, *cp, "missing frame 2: wrong data for {}", cp.id),
                // The hole is damage: its version fails as Corrupt, never as not found.
                Err(e) => assert!(e.is_corrupt(), "missing frame 2: load {}: {e}", cp.id),
            }
        }
        assert!(
            store.load(&fx.a[1].id).await.is_err(),
            "missing frame 2 loads"
        );
        assert_eq!(
            store.list(B).await.expect("list b"),
            fx.b,
            "missing frame: the other execution"
        );
    });
}

#[test]
fn flipped_bytes_in_a_blob_are_corrupt() {
    let rt = runtime();
    let fx = fixture(&rt, false);
    let hash = text_hash(&long_text(A, 2));
    let key = blob_key(&hash);
    let original = read(fx.path(), &key);
    for pos in positions(original.len()) {
        let mut bad = original.clone();
        bad[pos] ^= 0x04;
        write(fx.path(), &key, Some(bad));
        let what = format!(
            "blob {}, byte {pos} of {} flipped",
            hex(&hash),
            original.len()
        );
        rt.block_on(async {
            let store = open_store(fx.path()).await;
            check_blob_damage(&store, &fx, &hash, &what).await;
        });
    }
    write(fx.path(), &key, Some(original));
    rt.block_on(async {
        let store = open_store(fx.path()).await;
        assert_eq!(
            store.list(A).await.expect("list after repair"),
            fx.a,
            "repaired blob"
        );
    });
}

#[test]
fn emptied_truncated_and_missing_blobs_are_corrupt() {
    let rt = runtime();
    let fx = fixture(&rt, false);
    let hash = text_hash(&long_text(A, 2));
    let key = blob_key(&hash);
    let original = read(fx.path(), &key);
    let cases: [(&str, Option<Vec<u8>>); 4] = [
        ("emptied", Some(Vec::new())),
        (
            "truncated to its header",
            Some(original[..original.len().min(6)].to_vec()),
        ),
        (
            "replaced by another blob",
            Some(read(fx.path(), &blob_key(&text_hash(&long_text(A, 3))))),
        ),
        ("deleted", None),
    ];
    for (how, value) in cases {
        write(fx.path(), &key, value);
        rt.block_on(async {
            let store = open_store(fx.path()).await;
            check_blob_damage(&store, &fx, &hash, &format!("blob {how}")).await;
        });
    }
    rt.block_on(async {
        let store = open_store(fx.path()).await;
        let err = store
            .load(&fx.a[1].id)
            .await
            .expect_err("a missing blob loads");
        assert!(
            err.to_string().contains(&fx.a[1].id.to_string()),
            "missing blob: {err} does not name the checkpoint"
        );
    });
}

#[test]
fn damaged_high_water_mark_is_corrupt() {
    let rt = runtime();
    let fx = fixture(&rt, false);
    write(fx.path(), &log_key(A), Some(vec![0, 0, 1]));
    rt.block_on(async {
        let store = open_store(fx.path()).await;
        assert_corrupt(store.load(&fx.a[0].id).await, &[A], "3-byte next sequence");
        assert_corrupt(
            store.save(Checkpoint::new(A, "n", &1).expect("cp")).await,
            &[A],
            "save on a damaged log",
        );
        assert_eq!(
            store.list(B).await.expect("list b"),
            fx.b,
            "the other execution"
        );
    });
}
