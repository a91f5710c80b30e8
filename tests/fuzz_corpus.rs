//! The fuzz seed corpus as an ordinary test: every file under `fuzz/corpus/<target>/` is fed to
//! the same decoder calls as the fuzz target of that name (reimplemented here, a few lines each),
//! which must not panic; seeds named `valid-*` must decode, seeds named `invalid-*` must be
//! refused. Inputs the fuzzer found (any other name) only have to not panic.
//!
//! The valid seeds are written by `write_seed_corpus` (ignored; run it to regenerate:
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus`).

use ckpt::backend::BackendExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use ckpt::backend::{heads, wal};
use ckpt::codec::frame::{self, Body, Event};
use ckpt::codec::{blob, tree, value};
use ckpt::url::{redact, StoreUrl};
use ckpt::CheckpointId;
use rmpv::Value;

/// The log and sequence number the `frame` target decodes every input at.
const FRAME_LOG: &str = "fuzz-exec";
const FRAME_SEQ: u64 = 7;
/// The hash the `blob` target checks every whole input against.
const FIXED_HASH: [u8; 32] = [0x42; 32];

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/corpus")
        .join(target)
}

fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let entry = entry.unwrap();
            let name = entry.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(entry.path()).unwrap())
        })
        .collect();
    files.sort();
    assert!(
        files.iter().any(|(n, _)| n.starts_with("valid-")),
        "no valid seeds in {}",
        dir.display()
    );
    files
}

/// Runs `check` on every seed of `target`: it must not panic, must succeed on `valid-*` seeds
/// and fail on `invalid-*` seeds. Reports every offending file at once.
fn run_corpus(target: &str, check: impl Fn(&str, &[u8]) -> Result<(), String>) {
    let mut failures = Vec::new();
    for (name, data) in corpus(target) {
        match catch_unwind(AssertUnwindSafe(|| check(&name, &data))) {
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                failures.push(format!("{target}/{name}: panicked: {msg}"));
            }
            Ok(Err(e)) if name.starts_with("valid-") => {
                failures.push(format!("{target}/{name}: a valid seed was refused: {e}"));
            }
            Ok(Ok(())) if name.starts_with("invalid-") => {
                failures.push(format!("{target}/{name}: an invalid seed was accepted"));
            }
            Ok(_) => {}
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

// ---- frame ----

fn decode_frame(bytes: &[u8]) -> Result<(), String> {
    let decoded = frame::decode(FRAME_LOG, FRAME_SEQ, bytes).map_err(|e| e.to_string())?;
    if let Event::Save(header) = &decoded.event {
        frame::decode_body(FRAME_LOG, FRAME_SEQ, header, &decoded.body)
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Appends the checksum `frame` documents: blake3(len(log) u32 LE, log, seq u64 LE, bytes)[..8].
fn seal(unsealed: &[u8]) -> Vec<u8> {
    let mut h = blake3::Hasher::new();
    h.update(&(FRAME_LOG.len() as u32).to_le_bytes());
    h.update(FRAME_LOG.as_bytes());
    h.update(&FRAME_SEQ.to_le_bytes());
    h.update(unsealed);
    let mut out = unsealed.to_vec();
    out.extend_from_slice(&h.finalize().as_bytes()[..8]);
    out
}

#[test]
fn frame_corpus() {
    run_corpus("frame", |name, data| {
        let direct = decode_frame(data);
        let sealed = decode_frame(&seal(data));
        // `valid-unsealed-*` seeds are frames without their checksum: valid once sealed.
        if name.contains("unsealed") {
            sealed
        } else {
            direct
        }
    });
}

// ---- blob ----

fn decode_blob(hash: &[u8; 32], stored: &[u8]) -> Result<(), String> {
    let content = blob::decode(hash, stored).map_err(|e| e.to_string())?;
    value::decode(&content)?;
    Ok(())
}

fn base_state() -> Value {
    value::from_serialize(&serde_json::json!({
        "messages": ["hi", "there"],
        "step": 3,
        "nested": {"k": [1, {"x": null}]},
    }))
    .unwrap()
    .0
}

fn has_float(v: &Value) -> bool {
    match v {
        Value::F32(_) | Value::F64(_) => true,
        Value::Array(a) => a.iter().any(has_float),
        Value::Map(m) => m.iter().any(|(k, v)| has_float(k) || has_float(v)),
        _ => false,
    }
}

fn decode_ops(data: &[u8]) -> Result<(), String> {
    let ops = tree::ops_from_value(value::decode(data)?)?;
    let _ = tree::ops_to_value(&ops);
    let base = base_state();
    let mut changed = base.clone();
    if tree::apply(&mut changed, &ops).is_ok() && !has_float(&changed) {
        let diff = tree::diff(&base, &changed);
        let mut again = base.clone();
        tree::apply(&mut again, &diff).expect("a diff applies to its own base");
        assert_eq!(
            again, changed,
            "a diff applied to its base gives the new state"
        );
    }
    Ok(())
}

#[test]
fn blob_corpus() {
    run_corpus("blob", |name, data| {
        let fixed = decode_blob(&FIXED_HASH, data);
        let prefixed = match data.split_first_chunk::<32>() {
            Some((hash, stored)) => decode_blob(hash, stored),
            None => Err("shorter than a hash".into()),
        };
        let ops = decode_ops(data);
        let manifest = tree::Manifest::decode(data).map(|m| {
            let chunks = data
                .chunks(7)
                .take(m.chunks.len())
                .map(<[u8]>::to_vec)
                .collect();
            let _ = m.assemble(chunks);
        });
        if name.contains("-manifest-") {
            manifest
        } else if name.contains("-ops-") {
            ops
        } else if name.contains("-fixed-") {
            fixed
        } else {
            prefixed
        }
    });
}

// ---- value ----

#[test]
fn value_corpus() {
    run_corpus("value", |_, data| {
        let v = value::decode(data)?;
        let json = value::to_json(&v);
        serde_json::to_string(&json).map_err(|e| e.to_string())?;
        value::decode(&value::encode(&v)).expect("a decoded value decodes after encoding");
        Ok(())
    });
}

// ---- id ----

#[test]
fn id_corpus() {
    run_corpus("id", |_, data| {
        let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
        let id: CheckpointId = text.parse().map_err(|e: ckpt::Error| e.to_string())?;
        let printed = id.to_string();
        assert_eq!(
            printed.parse::<CheckpointId>().ok(),
            Some(id),
            "{printed:?}"
        );
        Ok(())
    });
}

// ---- sealed ----

#[test]
fn sealed_corpus() {
    run_corpus("sealed", |name, data| {
        let frame = ckpt::fuzzing::decode_sealed_frame(data).map_err(|e| e.to_string());
        let blob = match data.split_first_chunk::<32>() {
            Some((hash, stored)) => {
                ckpt::fuzzing::decode_sealed_blob(hash, stored).map_err(|e| e.to_string())
            }
            None => Err("shorter than an address".into()),
        };
        match name {
            n if n.contains("frame") => frame,
            n if n.contains("blob") => blob,
            _ => frame.or(blob),
        }
    });
}

#[test]
#[ignore = "writes fuzz/corpus/sealed; run by hand to regenerate the seeds"]
fn write_sealed_seeds() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/sealed");
    std::fs::create_dir_all(&dir).unwrap();
    let (frame, blob) = ckpt::fuzzing::seeds().unwrap();
    std::fs::write(dir.join("valid-frame"), &frame).unwrap();
    std::fs::write(dir.join("valid-blob"), &blob).unwrap();
    let mut flipped = frame.clone();
    flipped[10] ^= 1;
    std::fs::write(dir.join("invalid-frame-flipped"), &flipped).unwrap();
    let mut cut = blob.clone();
    cut.truncate(blob.len() - 4);
    std::fs::write(dir.join("invalid-blob-truncated"), &cut).unwrap();
    // A plaintext frame where a sealed one must be.
    let plain =
        ckpt::codec::frame::encode_delete(ckpt::fuzzing::LOG, ckpt::fuzzing::SEQ, 1).unwrap();
    std::fs::write(dir.join("invalid-frame-plaintext"), &plain).unwrap();
    // The store-internal events, for the frame target.
    let frames = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/frame");
    let mark = frame::GcMark {
        begin: true,
        time_us: 1_764_000_000_000_000,
        lease_us: 600_000_000,
        owner: Some(42),
    };
    let gc = frame::encode_gc(FRAME_LOG, FRAME_SEQ, mark).unwrap();
    std::fs::write(frames.join("valid-sealed-gc-1"), gc).unwrap();
    let d = frame::StoreDescriptor {
        store_id: [7; 16],
        key_check: vec![1; 60],
    };
    let store = frame::encode_store(FRAME_LOG, FRAME_SEQ, &d).unwrap();
    std::fs::write(frames.join("valid-sealed-store-1"), store).unwrap();
}

// ---- url ----

#[test]
fn url_corpus() {
    run_corpus("url", |_, data| {
        let text = std::str::from_utf8(data).map_err(|e| e.to_string())?;
        let _ = redact(text);
        let parsed = StoreUrl::parse(text).map_err(|e| e.to_string())?;
        // A parsed URL never shows a password in its Debug form.
        if text.contains("hunter2") && format!("{parsed:?}").contains("hunter2") {
            return Err("Debug shows the password".into());
        }
        Ok(())
    });
}

// ---- wal ----

#[test]
fn wal_corpus() {
    run_corpus("wal", |name, data| {
        let parsed = wal::parse(data);
        for record in &parsed.records {
            wal::parse_record(record)?;
        }
        let half = wal::parse(&data[..data.len() / 2]);
        assert!(half.records.len() <= parsed.records.len());
        if name.contains("-record-") {
            return wal::parse_record(data).map(drop);
        }
        match parsed.generation {
            Some(_) if !parsed.records.is_empty() => Ok(()),
            _ => Err("no verified records".into()),
        }
    });
}

/// Writes the WAL seeds: a real WAL file with records, its torn copy, and record payloads.
#[test]
#[ignore = "writes fuzz/corpus/wal; run by hand to regenerate the seeds"]
fn write_wal_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let wal_bytes = rt.block_on(async {
        let store = ckpt::Store::open(store_dir.to_str().unwrap())
            .await
            .unwrap();
        for i in 0..3 {
            let state = serde_json::json!({ "i": i, "text": "w".repeat(300 + i) });
            let cp = ckpt::Checkpoint::new("wal-seed", "n", &state).unwrap();
            store.save(cp).await.unwrap();
        }
        // Read while the store is open: a clean close empties the WAL.
        std::fs::read(store_dir.join("ckpt-wal")).unwrap()
    });
    let parsed = wal::parse(&wal_bytes);
    assert_eq!(parsed.records.len(), 3);
    let used = &wal_bytes[..parsed.end as usize];
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/wal");
    std::fs::create_dir_all(&out).unwrap();
    // Format 2 (group numbers); the format-1 seeds of earlier versions stay in the corpus.
    std::fs::write(out.join("valid-v2-three-saves"), used).unwrap();
    std::fs::write(
        out.join("valid-v2-torn-last-record"),
        &used[..used.len() - 5],
    )
    .unwrap();
    // Damage in the first record, before two later groups: read past, the rest kept.
    let mut damaged = used.to_vec();
    damaged[wal::HEADER_LEN as usize + 30] ^= 0x11;
    assert_eq!(wal::parse(&damaged).records.len(), 2);
    std::fs::write(out.join("valid-v2-damaged-first-record"), &damaged).unwrap();
    std::fs::write(out.join("invalid-empty"), b"").unwrap();
    std::fs::write(out.join("invalid-zeroed"), vec![0u8; 64]).unwrap();
    std::fs::write(out.join("valid-record-first"), &parsed.records[0]).unwrap();
    let mut bad = parsed.records[0].clone();
    bad[0] = 9;
    std::fs::write(out.join("invalid-record-unknown-kind"), bad).unwrap();
}

// ---- heads ----

#[test]
fn heads_corpus() {
    run_corpus("heads", |_, data| {
        let parsed = heads::parse(data);
        let half = heads::parse(&data[..data.len() / 2]);
        assert!(half.heads.len() <= parsed.heads.len());
        match (parsed.recognised, parsed.heads.is_empty()) {
            (true, false) => Ok(()),
            _ => Err("no verified heads".into()),
        }
    });
}

/// Writes the heads-file seeds: a real heads file of a store with two executions, torn and
/// damaged copies.
#[test]
#[ignore = "writes fuzz/corpus/heads; run by hand to regenerate the seeds"]
fn write_heads_seeds() {
    let dir = tempfile::tempdir().unwrap();
    let store_dir = dir.path().join("db");
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let store = ckpt::Store::open(store_dir.to_str().unwrap())
            .await
            .unwrap();
        for exec in ["heads-a", "heads-b"] {
            let cp = ckpt::Checkpoint::new(exec, "n", &serde_json::json!({ "x": exec })).unwrap();
            store.save(cp).await.unwrap();
            store.flush().await.unwrap();
        }
    });
    let bytes = std::fs::read(store_dir.join("ckpt-heads")).unwrap();
    assert_eq!(heads::parse(&bytes).heads.len(), 2);
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/heads");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("valid-two-executions"), &bytes).unwrap();
    std::fs::write(out.join("valid-torn"), &bytes[..bytes.len() - 3]).unwrap();
    let mut damaged = bytes.clone();
    damaged[12] ^= 0x04;
    std::fs::write(out.join("valid-damaged-first-record"), &damaged).unwrap();
    std::fs::write(out.join("invalid-empty"), b"").unwrap();
    std::fs::write(out.join("invalid-magic-only"), b"ckpthds1").unwrap();
}

// ---- bundle ----

#[test]
fn bundle_corpus() {
    run_corpus("bundle", |_, data| {
        let bundle = ckpt::bundle::Bundle::decode(data).map_err(|e| e.to_string())?;
        let again = ckpt::bundle::Bundle::decode(&bundle.encode()).map_err(|e| e.to_string())?;
        assert_eq!(again, bundle, "a decoded bundle must re-encode to itself");
        Ok(())
    });
}

/// Writes the bundle seeds: an export of a small real store, and damaged copies of it.
#[test]
#[ignore = "writes fuzz/corpus/bundle; run by hand to regenerate the seeds"]
fn write_bundle_seeds() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = rt.block_on(async {
        let store = ckpt::Store::memory();
        for i in 0..3 {
            let state = serde_json::json!({ "i": i, "text": "b".repeat(300 + i) });
            let cp = ckpt::Checkpoint::new("bundle-seed", "n", &state).unwrap();
            store.save(cp).await.unwrap();
        }
        store.export_all().await.unwrap().encode()
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bundle");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("valid-three-saves"), &bytes).unwrap();
    std::fs::write(
        out.join("valid-empty"),
        ckpt::bundle::Bundle::default().encode(),
    )
    .unwrap();
    std::fs::write(out.join("invalid-truncated"), &bytes[..bytes.len() - 10]).unwrap();
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 1;
    std::fs::write(out.join("invalid-flipped"), flipped).unwrap();
}

/// Writes the seed of a sealed bundle (format 2): an export of a small encrypted store.
#[test]
#[ignore = "writes fuzz/corpus/bundle; run by hand to regenerate the seeds"]
fn write_sealed_bundle_seed() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let bytes = rt.block_on(async {
        let store = ckpt::Store::builder("memory://")
            .encryption(ckpt::crypto::Key::generate())
            .open()
            .await
            .unwrap();
        for i in 0..2 {
            let state = serde_json::json!({ "i": i, "text": "s".repeat(300 + i) });
            let cp = ckpt::Checkpoint::new("sealed-seed", "n", &state).unwrap();
            store.save(cp).await.unwrap();
        }
        store.export_all().await.unwrap().encode()
    });
    let out = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus/bundle");
    std::fs::create_dir_all(&out).unwrap();
    std::fs::write(out.join("valid-sealed"), &bytes).unwrap();
}

// ---- the seeds ----

/// Writes the `valid-*` and `invalid-*` seeds. Valid frames, blobs and deltas are taken from a
/// real store (a memory store after saves, deltas, long values, a delete, a fork and a clear),
/// frames re-encoded at the `frame` target's log and sequence number. The `valid-*-format1-*`
/// frame seeds are saves in format 1, written by this function before format 2 and kept as
/// they are (nothing writes format 1 any more).
#[tokio::test]
#[ignore = "writes fuzz/corpus; run by hand to regenerate the seeds"]
async fn write_seed_corpus() {
    use ckpt::{Checkpoint, Store};

    let store = Store::memory();
    let long = "the quick brown fox jumps over the lazy dog ".repeat(12);
    let mut messages: Vec<String> = Vec::new();
    let mut ids = Vec::new();
    for step in 1..=4u32 {
        messages.push(format!(
            "message {step}: {}",
            if step % 2 == 0 { &long } else { "short" }
        ));
        let state = serde_json::json!({ "messages": messages, "step": step, "score": 0.5 });
        let cp = Checkpoint::new("exec-1", "chat", &state)
            .unwrap()
            .with_metadata("step", step)
            .with_metadata("source", "loop");
        ids.push(store.save(cp).await.unwrap().id);
    }
    let journal = ckpt::Write::new("tools", "__journal__", &serde_json::json!({"reply": long}))
        .unwrap()
        .with_metadata("key", "call-1");
    store.put_writes(&ids[2], vec![journal]).await.unwrap();
    store.delete(&ids[1]).await.unwrap();
    store.fork(&ids[2], "exec-2").await.unwrap();
    store.clear("exec-1").await.unwrap();

    let write = |target: &str, name: &str, bytes: &[u8]| {
        let dir = corpus_dir(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(name), bytes).unwrap();
    };

    let backend = store.backend();
    let mut kinds = std::collections::BTreeMap::<String, usize>::new();
    let mut ops_seeds = 0;
    for log in ["exec-1", "exec-2"] {
        for (seq, bytes) in backend.scan(log, 1, 100).await.unwrap() {
            let decoded = frame::decode(log, seq, &bytes).unwrap();
            let (kind, frame) = match &decoded.event {
                Event::Save(h) => {
                    let body = frame::decode_body(log, seq, h, &decoded.body).unwrap();
                    if let Body::Delta { ops, .. } = &body {
                        ops_seeds += 1;
                        write(
                            "blob",
                            &format!("valid-ops-{ops_seeds}"),
                            &value::encode(&tree::ops_to_value(ops)),
                        );
                    }
                    if let Body::Snapshot(v) = &body {
                        write(
                            "value",
                            &format!("valid-snapshot-{log}-{seq}"),
                            &value::encode(v),
                        );
                    }
                    let kind = match (&body, &h.parent) {
                        (Body::Delta { .. }, _) => "save-delta",
                        (Body::Snapshot(_), Some(p)) if p.execution.is_some() => "save-fork",
                        (Body::Snapshot(_), _) => "save-snapshot",
                    };
                    (
                        kind,
                        frame::encode_save(FRAME_LOG, FRAME_SEQ, h, &decoded.body).unwrap(),
                    )
                }
                Event::Delete(v) => (
                    "delete",
                    frame::encode_delete(FRAME_LOG, FRAME_SEQ, *v).unwrap(),
                ),
                Event::Clear => ("clear", frame::encode_clear(FRAME_LOG, FRAME_SEQ).unwrap()),
                Event::Gc(m) => ("gc", frame::encode_gc(FRAME_LOG, FRAME_SEQ, *m).unwrap()),
                Event::Store(d) => (
                    "store",
                    frame::encode_store(FRAME_LOG, FRAME_SEQ, d).unwrap(),
                ),
                Event::Write(h) => (
                    "write",
                    frame::encode_write(FRAME_LOG, FRAME_SEQ, h, &decoded.body).unwrap(),
                ),
            };
            let n = kinds.entry(kind.to_owned()).or_default();
            *n += 1;
            write("frame", &format!("valid-sealed-{kind}-{n}"), &frame);
            if *n == 1 {
                write(
                    "frame",
                    &format!("valid-unsealed-{kind}"),
                    &frame[..frame.len() - 8],
                );
            }
        }
    }
    // A large snapshot, compressed in its frame.
    let header = frame::SaveHeader {
        node: "plan".into(),
        metadata: Default::default(),
        timestamp_us: 1_700_000_000_000_000,
        parent: None,
        state_size: 5000,
        delta_base: None,
    };
    let big = Body::Snapshot(Value::from("abc".repeat(1000))).encode();
    let compressed = frame::encode_save(FRAME_LOG, FRAME_SEQ, &header, &big).unwrap();
    assert_eq!(compressed[1], 1, "compressed");
    write("frame", "valid-sealed-save-compressed", &compressed);
    write(
        "frame",
        "valid-unsealed-save-compressed",
        &compressed[..compressed.len() - 8],
    );
    let delete = frame::encode_delete(FRAME_LOG, FRAME_SEQ, 3).unwrap();
    write("frame", "invalid-empty", b"");
    write("frame", "invalid-short", &[1, 0, 0xc0]);
    write(
        "frame",
        "invalid-wrong-seq",
        &frame::encode_delete(FRAME_LOG, FRAME_SEQ + 1, 3).unwrap(),
    );
    let mut flipped = delete.clone();
    flipped[2] ^= 0x10;
    write("frame", "invalid-flipped-bit", &flipped);
    write("frame", "invalid-unsealed-format-3", &[3, 0, 0x91, 0x03]);
    write(
        "frame",
        "invalid-unsealed-format-2-unknown-fields",
        &[2, 0, 0x91, 0x03],
    );
    // A compact save header cut after its node name, and one whose parent is 9 versions
    // before the frame's own (7).
    write(
        "frame",
        "invalid-unsealed-format-2-cut",
        &[2, 0, 0x05, 0x01, b'n'],
    );
    write(
        "frame",
        "invalid-unsealed-format-2-parent-before-first",
        &[2, 0, 0x01, 0x01, b'n', 0x01, 0x01, 0x09, 0xc0],
    );
    write("frame", "invalid-unsealed-flags", &[1, 7, 0x91, 0x03]);
    write(
        "frame",
        "invalid-unsealed-zstd-garbage",
        &[
            1, 1, 0xff, 0xff, 0xff, 0x3f, 0x28, 0xb5, 0x2f, 0xfd, 1, 2, 3,
        ],
    );
    write(
        "frame",
        "invalid-unsealed-delete-trailing",
        &[1, 0, 0x92, 0x02, 0x03, 0xc0],
    );
    write(
        "frame",
        "invalid-unsealed-unknown-kind",
        &[1, 0, 0x91, 0x09],
    );

    // Blobs: the store's own (hash, then stored bytes), and a few by hand.
    for (i, hash) in backend.list_blobs().await.unwrap().iter().enumerate() {
        let stored = backend.get_blob(hash).await.unwrap().unwrap();
        write(
            "blob",
            &format!("valid-blob-store-{i}"),
            &[&hash[..], &stored].concat(),
        );
    }
    for (name, content) in [
        ("raw", value::encode(&Value::from("short leaf"))),
        ("zstd", value::encode(&Value::from("zzzz".repeat(500)))),
        ("binary", value::encode(&Value::Binary((0..=255).collect()))),
    ] {
        let stored = blob::encode(&content).unwrap();
        write(
            "blob",
            &format!("valid-blob-{name}"),
            &[&blob::address(&content)[..], &stored].concat(),
        );
    }
    let content = value::encode(&Value::from("fixed"));
    let mut wrong_hash = blob::address(&content);
    wrong_hash[0] ^= 1;
    write(
        "blob",
        "invalid-blob-wrong-hash",
        &[&wrong_hash[..], &blob::encode(&content).unwrap()].concat(),
    );
    write(
        "blob",
        "invalid-blob-huge-length",
        &[
            &[0u8; 32][..],
            &[1, 1, 0xff, 0xff, 0xff, 0xff, 0x28, 0xb5, 0x2f, 0xfd],
        ]
        .concat(),
    );
    write(
        "blob",
        "invalid-blob-codec-9",
        &[&[0u8; 32][..], &[1, 9, 0, 0, 0, 0]].concat(),
    );
    write("blob", "invalid-blob-short", &[1, 0, 0]);
    let ops = vec![
        tree::Op::Set(vec![Value::from("step")], Value::from(9u64)),
        tree::Op::Remove(vec![Value::from("nested"), Value::from("k")]),
        tree::Op::Splice(vec![Value::from("messages")], 1, vec![Value::from("new")]),
        tree::Op::Set(vec![], Value::from(1u64)),
    ];
    write(
        "blob",
        "valid-ops-by-hand",
        &value::encode(&tree::ops_to_value(&ops)),
    );
    write(
        "blob",
        "invalid-ops-not-array",
        &value::encode(&Value::from(5u64)),
    );
    write("blob", "invalid-ops-code-9", &[0x91, 0x92, 0x09, 0x90]);

    // Values.
    let hand: Vec<(&str, Vec<u8>)> = vec![
        ("valid-nil", vec![0xc0]),
        (
            "valid-map",
            value::from_serialize(
                &serde_json::json!({"a": [1, -2, 3.5, null, true], "b": {"c": "d"}}),
            )
            .map(|(v, _)| value::encode(&v))
            .unwrap(),
        ),
        ("valid-ext-ref", value::encode(&tree::reference(&[7; 32]))),
        (
            "valid-binary-keys",
            value::encode(&Value::Map(vec![
                (Value::Binary(vec![1, 2]), Value::F32(f32::NAN)),
                (Value::from(-5i64), Value::from(u64::MAX)),
            ])),
        ),
        ("valid-invalid-utf8-string", vec![0xa2, 0xff, 0xfe]),
        ("valid-nested-60", [vec![0x91; 60], vec![0xc0]].concat()),
        (
            "invalid-nested-deep",
            [vec![0x91; 1000], vec![0xc0]].concat(),
        ),
        ("invalid-trailing", vec![0xc0, 0xc0]),
        (
            "invalid-truncated",
            vec![0xdb, 0xff, 0xff, 0xff, 0xff, b'a'],
        ),
        ("invalid-empty", vec![]),
        // Map keys that are maps: `to_json` renders each such key as JSON text, escaped again at
        // every level, so its output grows about 4x per level (found by the fuzzer at 30 levels:
        // 110 bytes took 64 s and 1.6 GB). Kept short here; it only has to not panic.
        (
            "slow-nested-map-keys-16",
            [vec![0x81; 16], vec![0xa1, b'"'], vec![0xc0; 16]].concat(),
        ),
        // 0xc1 is never used by MessagePack; rmpv reads it as nil, so no claim either way.
        ("reserved-marker", vec![0xc1]),
    ];
    for (name, bytes) in hand {
        write("value", name, &bytes);
    }

    // Ids and URLs.
    for (name, text) in [
        ("valid-simple", "exec-1@17"),
        ("valid-at-in-execution", "user@example.com@3"),
        ("valid-unicode", "exécution ☃ 1@0"),
        ("valid-leading-zeros", "x@007"),
        ("valid-max", "x@18446744073709551615"),
        ("invalid-no-at", "exec-1"),
        ("invalid-no-version", "exec-1@"),
        ("invalid-no-execution", "@5"),
        ("invalid-negative", "x@-1"),
        ("invalid-too-large", "x@18446744073709551616"),
        ("invalid-control", "a\u{7}b@1"),
        ("invalid-plus", "x@+1"),
    ] {
        write("id", name, text.as_bytes());
    }
    write(
        "id",
        "invalid-long",
        format!("{}@1", "x".repeat(300)).as_bytes(),
    );
    for (name, text) in [
        ("valid-memory", "memory://"),
        ("valid-sled", "sled://./ckpt-data"),
        ("valid-sled-options", "sled:///var/lib/ckpt?sync=false"),
        ("valid-path", "/tmp/ckpt data"),
        ("valid-relative", "ckpt-data"),
        ("invalid-ftp", "ftp://x"),
        (
            "valid-postgres-password",
            "postgres://bob:hunter2@db:5432/app?sslmode=require",
        ),
        ("valid-redis", "redis://:secret@localhost:6379/0"),
        (
            "valid-redis-cluster",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001?ttl=24h",
        ),
        ("valid-sqlite", "sqlite://./ckpt.db"),
        ("invalid-sqlite-empty", "sqlite://"),
        ("invalid-sled-empty", "sled://"),
        ("invalid-sled-option", "sled://x?sink=1"),
        ("invalid-memory-option", "memory://?x=1"),
        ("invalid-empty", ""),
        ("invalid-blank", "   "),
    ] {
        write("url", name, text.as_bytes());
    }
}

// ---- search_index ----

/// The `search_index` target's input: the first byte is the key's length, then the key, then
/// the value.
fn search_entry_input(key: &[u8], value: &[u8]) -> Vec<u8> {
    let len = u8::try_from(key.len()).expect("a seed key under 256 bytes");
    [&[len][..], key, value].concat()
}

#[test]
fn search_index_corpus() {
    run_corpus(
        "search_index",
        |_, data| match ckpt::fuzzing::decode_search_entry(data) {
            0 => Err("no part of the entry decodes".into()),
            _ => Ok(()),
        },
    );
}

/// Writes the search index seeds: the first two entries of every family of a small indexed
/// store, and garbage.
#[test]
#[ignore = "writes fuzz/corpus/search_index; run by hand to regenerate the seeds"]
fn write_search_index_seeds() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let entries = rt.block_on(async {
        let store = ckpt::Store::memory();
        store.reindex().await.unwrap();
        for step in 1..=3u64 {
            let state = serde_json::json!({ "messages": ["where is order A-1077?", format!("step {step}")] });
            let cp = ckpt::Checkpoint::new("search-seed", "chat", &state)
                .unwrap()
                .with_metadata("user", "alice")
                .with_metadata("step", step);
            store.save(cp).await.unwrap();
        }
        let page = store
            .search(&ckpt::SearchQuery::text("order"))
            .await
            .unwrap();
        assert_eq!(page.method, ckpt::SearchMethod::Index);
        let table = store.backend().capabilities().search_table.unwrap();
        // The tail's segments, then (after gc folds them) the main index's blocks.
        let mut entries = table.scan_index(b"", None, usize::MAX).await.unwrap();
        store.gc().await.unwrap();
        entries.extend(table.scan_index(b"", None, usize::MAX).await.unwrap());
        entries
    });
    let out = corpus_dir("search_index");
    std::fs::create_dir_all(&out).unwrap();
    let mut per_family = std::collections::BTreeMap::<String, usize>::new();
    for (key, value) in entries {
        // A main index's entries by their part (`Mx`, `Mw`, `Mt`), after its number.
        let family = match key[0] {
            b'M' => format!("M{}", key[9] as char),
            b => (b as char).to_string(),
        };
        let n = per_family.entry(family.clone()).or_default();
        if *n < 2 && key[0] != b'!' {
            let name = format!("valid-{family}-{n}");
            std::fs::write(out.join(name), search_entry_input(&key, &value)).unwrap();
            *n += 1;
        }
    }
    std::fs::write(out.join("invalid-empty"), b"").unwrap();
    std::fs::write(out.join("invalid-unknown-family"), b"\x03zzzvalue").unwrap();
    std::fs::write(out.join("invalid-word-key-unterminated"), b"\x04wabc").unwrap();
}
