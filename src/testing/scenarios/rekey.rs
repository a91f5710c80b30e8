//! Key rotation: rekey reseals everything in place, and loads in another store survive it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::gc::save_blobs;
use crate::testing::helpers::{assert_cp_eq, must, text};
use crate::testing::Harness;
use crate::{Checkpoint, Error, Store};

/// Key rotation on this backend: a store sealed with one key is opened with a new key before
/// it, rekeyed, and then opens with the new key alone (every live checkpoint exactly as saved)
/// and not with the old one; no blob keeps an address keyed under the old key. A writer that
/// cached a state before the rekey (its blob addresses now gone) writes a correct snapshot
/// from it afterwards: it rebuilds what it cached.
pub async fn rekey_reseals_everything_in_place(h: &dyn Harness) {
    use crate::crypto::Key;
    let name = h.name();
    let backend = h.open().await.backend().clone();
    let (k1, k2) = (Key::generate(), Key::generate());
    let old = Store::with_backend_and_keys(backend.clone(), vec![k1.clone()]);
    let mut live = save_blobs(&old, "rk-a", 4).await;
    live.extend(save_blobs(&old, "rk-b", 2).await);
    must(old.delete(&live[0].id).await, "delete");
    live.remove(0);
    // A state with a long leaf (a blob) and many small fields, saved under k1; a writer that
    // already has k2 first caches it by saving a small change.
    let counters = |n: u64| -> serde_json::Value {
        (0..500)
            .map(|i| (format!("k{i:03}"), json!(n * 1000 + i)))
            .collect::<serde_json::Map<_, _>>()
            .into()
    };
    let long = text("rk-c", 1, 2_000);
    let first = json!({"long": long, "n": counters(0)});
    must(
        old.save(must(Checkpoint::new("rk-c", "n", &first), "cp"))
            .await,
        "save rk-c",
    );
    let writer = Store::with_backend_and_keys(backend.clone(), vec![k2.clone(), k1.clone()]);
    let mut small = first.clone();
    small["n"]["k000"] = json!(-1);
    must(
        writer
            .save(must(Checkpoint::new("rk-c", "n", &small), "cp"))
            .await,
        "save rk-c",
    );
    let before: HashSet<_> = must(backend.list_blobs().await, "list_blobs")
        .into_iter()
        .collect();

    let rotated = Store::with_backend_and_keys(backend.clone(), vec![k2.clone(), k1.clone()]);
    let report = must(rotated.rekey().await, "rekey");
    assert!(
        report.frames >= 8 && report.blobs >= before.len() as u64,
        "[{name}] rekey re-sealed {report:?}"
    );
    let after = must(backend.list_blobs().await, "list_blobs");
    assert!(
        after.iter().all(|h| !before.contains(h)) && report.blobs_removed >= before.len() as u64,
        "[{name}] blobs kept addresses keyed under the old key: {report:?}"
    );
    // Every counter changes: the delta outgrows its budget, so the writer stores a snapshot
    // built from its cached state.
    let big_change = json!({"long": long, "n": counters(1)});
    let snapshot = must(
        writer
            .save(must(Checkpoint::new("rk-c", "n", &big_change), "cp"))
            .await,
        "save after rekey",
    );
    let new_only = Store::with_backend_and_keys(backend.clone(), vec![k2]);
    let frame = must(backend.scan("rk-c", snapshot.version, 1).await, "scan");
    let codec = must(new_only.crypto().await, "crypto").codec().clone();
    let decoded = must(
        codec.frames.decode("rk-c", snapshot.version, &frame[0].1),
        "decode",
    );
    assert!(
        matches!(decoded.event, crate::codec::frame::Event::Save(ref h) if h.delta_base.is_none()),
        "[{name}] the writer stored a delta, not the snapshot this checks"
    );
    live.push(snapshot);

    for cp in &live {
        assert_cp_eq(
            &must(new_only.load(&cp.id).await, "load with the new key"),
            cp,
            format!("[{name}] {} after rekey", cp.id),
        );
    }
    let old_only = Store::with_backend_and_keys(backend.clone(), vec![k1]);
    assert!(
        matches!(old_only.load(&live[0].id).await, Err(Error::Decrypt { .. })),
        "[{name}] the old key still opens the store after rekey"
    );
    must(new_only.gc().await, "gc after rekey");
}

/// Readers in another "process" (stores of their own, nothing cached) load while rekeys keep
/// moving every blob to new addresses: a load that read frames before a rekey rewrote them and
/// fetches their blobs after it deleted the old addresses waits for the rekey and reads again,
/// so no load fails and every one returns the state saved.
pub async fn loads_survive_a_rekey_elsewhere(h: &dyn Harness) {
    use crate::crypto::Key;
    let name = h.name();
    let backend = h.open().await.backend().clone();
    let (k1, k2) = (Key::generate(), Key::generate());
    let writer = Store::with_backend_and_keys(backend.clone(), vec![k1.clone(), k2.clone()]);
    let saved = save_blobs(&writer, "rr", 6).await;
    let want = must(saved[5].state_json(), "state");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let rekeys = {
        let (backend, stop) = (backend.clone(), stop.clone());
        let rings = [vec![k2.clone(), k1.clone()], vec![k1.clone(), k2.clone()]];
        tokio::spawn(async move {
            let mut n = 0usize;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) || n < 2 {
                let other = Store::with_backend_and_keys(backend.clone(), rings[n % 2].clone());
                must(other.rekey().await, "rekey");
                n += 1;
            }
            n
        })
    };
    let deadline = std::time::Instant::now() + Duration::from_millis(1500);
    let mut loads = 0;
    while std::time::Instant::now() < deadline {
        let reader = Store::with_backend_and_keys(backend.clone(), vec![k1.clone(), k2.clone()]);
        let got = must(reader.latest("rr").await, "load during a rekey elsewhere");
        let got = must(got.expect("rr has checkpoints").state_json(), "state");
        assert_eq!(got, want, "[{name}] load {loads} during rekeys");
        loads += 1;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let rekeyed = must(
        rekeys.await.map_err(|e| Error::InvalidInput(e.to_string())),
        "join",
    );
    assert!(
        rekeyed >= 2 && loads > 0,
        "[{name}] {rekeyed} rekeys, {loads} loads"
    );
}
