//! Concurrency: concurrent saves, save_after races, and the backend contract (compare-and-append, blobs) under contention.

use crate::backend::BackendExt;
use serde_json::json;

use crate::backend::LogAppend;
use crate::testing::helpers::{assert_cps_eq, must, nth_checkpoint, save_n, text, versions};
use crate::testing::Harness;
use crate::{Checkpoint, CheckpointId, Error, Store};

/// 16 tasks save 10 checkpoints each to one execution through clones of one store: all 160 are
/// kept, with consecutive versions, each one's parent the one before, and each task's saves in
/// its own order.
pub async fn concurrent_saves_are_all_kept(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let mut tasks = Vec::new();
    for t in 0..16u64 {
        let store = store.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            for i in 0..10u64 {
                let state = json!({ "task": t, "i": i, "note": text("conc", t * 100 + i, 60) });
                let cp = Checkpoint::new("conc", &format!("task-{t}"), &state)
                    .map(|c| c.with_metadata("i", i));
                out.push(match cp {
                    Ok(cp) => store.save(cp).await,
                    Err(e) => Err(e),
                });
            }
            out
        }));
    }
    let mut returned = Vec::new();
    for task in tasks {
        let results = task
            .await
            .unwrap_or_else(|e| panic!("[{name}] saving task panicked: {e}"));
        returned.extend(
            results
                .into_iter()
                .map(|r| must(r, format!("[{name}] concurrent save"))),
        );
    }
    returned.sort_by_key(|c| c.version);
    let list = must(store.list("conc").await, "list");
    assert_eq!(
        list.len(),
        160,
        "[{name}] saves lost: versions {:?}",
        versions(&list)
    );
    assert_cps_eq(
        &list,
        &returned,
        format!("[{name}] list vs what save returned"),
    );
    for (i, cp) in list.iter().enumerate().skip(1) {
        assert_eq!(
            cp.version,
            list[i - 1].version + 1,
            "[{name}] versions not consecutive: {:?}",
            versions(&list)
        );
        assert_eq!(
            cp.parent.as_ref(),
            Some(&list[i - 1].id),
            "[{name}] parent of {}",
            cp.id
        );
    }
    assert_eq!(list[0].parent, None, "[{name}] parent of the first");
    for t in 0..16u64 {
        let own: Vec<u64> = list
            .iter()
            .filter(|c| c.node_name == format!("task-{t}"))
            .map(|c| c.metadata["i"].as_u64().unwrap_or(u64::MAX))
            .collect();
        assert_eq!(
            own,
            (0..10).collect::<Vec<_>>(),
            "[{name}] task {t}'s saves out of order or lost"
        );
    }
}

/// `save_after(cp, expected)` saves only when `expected` is the execution's newest live
/// checkpoint (`None`: no live checkpoint), otherwise it is a Conflict that writes nothing; a
/// parent from another execution is refused.
pub async fn save_after_checks_the_latest(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let first = must(
        store.save_after(nth_checkpoint("sa", 1), None).await,
        "save_after None",
    );
    assert_eq!(first.parent, None, "[{name}] parent");
    let second = must(
        store
            .save_after(nth_checkpoint("sa", 2), Some(&first.id))
            .await,
        "save_after first",
    );
    assert_eq!(second.parent.as_ref(), Some(&first.id), "[{name}] parent");
    let stale = store
        .save_after(nth_checkpoint("sa", 3), Some(&first.id))
        .await;
    assert!(
        stale.as_ref().is_err_and(Error::is_conflict),
        "[{name}] stale parent: {stale:?}"
    );
    let none = store.save_after(nth_checkpoint("sa", 3), None).await;
    assert!(
        none.as_ref().is_err_and(Error::is_conflict),
        "[{name}] None on a non-empty execution: {none:?}"
    );
    let foreign = must(CheckpointId::new("sa-other", second.version), "id");
    let wrong = store
        .save_after(nth_checkpoint("sa", 3), Some(&foreign))
        .await;
    assert!(
        wrong.is_err(),
        "[{name}] parent from another execution accepted"
    );
    assert_cps_eq(
        &must(store.list("sa").await, "list"),
        &[first.clone(), second.clone()],
        format!("[{name}] refused saves wrote"),
    );
    must(store.delete(&second.id).await, "delete");
    let third = must(
        store
            .save_after(nth_checkpoint("sa", 3), Some(&first.id))
            .await,
        "save_after after delete",
    );
    assert_eq!(
        third.parent.as_ref(),
        Some(&first.id),
        "[{name}] parent after delete"
    );
}

/// `save_with_parent_after(cp, parent, expected)` saves a child of `parent` only while
/// `expected` is the execution's newest live checkpoint; a store whose view is stale neither
/// refuses a save that another store's newer checkpoint makes right nor accepts one it makes
/// wrong; and a write (`put_writes`) moves the log but not the latest checkpoint, so it does not
/// fail a `save_after`.
pub async fn save_with_parent_after_checks_the_latest(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let other = store.with_same_keys(store.backend().clone());
    let v1 = must(store.save(nth_checkpoint("spa", 1)).await, "save 1");
    let v2 = must(store.save(nth_checkpoint("spa", 2)).await, "save 2");
    let branch = must(
        store
            .save_with_parent_after(nth_checkpoint("spa", 3), &v1.id, Some(&v2.id))
            .await,
        "save_with_parent_after",
    );
    assert_eq!(
        branch.parent.as_ref(),
        Some(&v1.id),
        "[{name}] branch parent"
    );
    let stale = store
        .save_with_parent_after(nth_checkpoint("spa", 4), &v1.id, Some(&v2.id))
        .await;
    assert!(
        stale.as_ref().is_err_and(Error::is_conflict),
        "[{name}] stale expected latest: {stale:?}"
    );
    let none = store
        .save_with_parent_after(nth_checkpoint("spa", 4), &v1.id, None)
        .await;
    assert!(
        none.as_ref().is_err_and(Error::is_conflict),
        "[{name}] None on a non-empty execution: {none:?}"
    );
    let foreign = must(CheckpointId::new("spa-other", v1.version), "id");
    let wrong = store
        .save_with_parent_after(nth_checkpoint("spa", 4), &foreign, Some(&branch.id))
        .await;
    assert!(
        wrong.is_err() && !wrong.as_ref().is_err_and(Error::is_conflict),
        "[{name}] parent from another execution: {wrong:?}"
    );
    // Another store moves the execution on: `store` has not seen it.
    let moved = must(
        other
            .save_after(nth_checkpoint("spa", 5), Some(&branch.id))
            .await,
        "other save_after",
    );
    let behind = store
        .save_after(nth_checkpoint("spa", 6), Some(&branch.id))
        .await;
    assert!(
        behind.as_ref().is_err_and(Error::is_conflict),
        "[{name}] a stale view accepted an overtaken latest: {behind:?}"
    );
    let w = must(crate::Write::new("t", "c", &1u32), "write");
    must(other.put_writes(&moved.id, vec![w]).await, "put_writes");
    let after_write = must(
        store
            .save_with_parent_after(nth_checkpoint("spa", 6), &v2.id, Some(&moved.id))
            .await,
        "save_with_parent_after behind a write from another store",
    );
    assert_eq!(after_write.parent.as_ref(), Some(&v2.id), "[{name}] parent");
    let listed: Vec<u64> = must(store.list("spa").await, "list")
        .iter()
        .map(|c| c.version)
        .collect();
    assert_eq!(
        listed,
        vec![
            v1.version,
            v2.version,
            branch.version,
            moved.version,
            after_write.version
        ],
        "[{name}] refused saves wrote"
    );
}

/// Two stores on one backend race `save_after` on the same expected parent (five rounds): exactly
/// one wins, the other gets Conflict, and the winner is the new latest.
pub async fn save_after_races_have_one_winner(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    save_n(&store, "race", 1).await;
    let s1 = store.with_same_keys(store.backend().clone());
    let s2 = store.with_same_keys(store.backend().clone());
    for round in 0..5u64 {
        let latest =
            must(s1.latest("race").await, "latest").unwrap_or_else(|| panic!("[{name}] no latest"));
        let race = |s: &Store, i: u64| {
            let (s, id) = (s.clone(), latest.id.clone());
            tokio::spawn(async move { s.save_after(nth_checkpoint("race", i), Some(&id)).await })
        };
        let (r1, r2) = tokio::join!(race(&s1, 10 + round), race(&s2, 20 + round));
        let (r1, r2) = match (r1, r2) {
            (Ok(r1), Ok(r2)) => (r1, r2),
            _ => panic!("[{name}] a racing task panicked"),
        };
        let what = format!("[{name}] round {round}: {r1:?} / {r2:?}");
        let winner = match (r1, r2) {
            (Ok(w), Err(e)) | (Err(e), Ok(w)) => {
                assert!(
                    e.is_conflict(),
                    "{what}: the loser's error is not a conflict"
                );
                w
            }
            _ => panic!("{what}: expected exactly one winner"),
        };
        assert_eq!(
            winner.parent.as_ref(),
            Some(&latest.id),
            "{what}: winner's parent"
        );
        assert_eq!(
            must(store.latest("race").await, "latest").as_ref(),
            Some(&winner),
            "{what}: latest"
        );
        assert_eq!(
            must(store.list("race").await, "list").len() as u64,
            round + 2,
            "{what}: count"
        );
    }
}

/// The backend primitive: `append` is compare-and-append (a second append at the same expected
/// sequence is a Conflict and the log keeps only the first frame), atomic across logs, numbers
/// frames consecutively, and `truncate` keeps the next sequence number; all durable across a
/// reopen.
pub async fn backend_append_is_compare_and_append(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let backend = store.backend().clone();
    let log = "raw-append";
    let seq = must(backend.next_seq(log).await, "next_seq");
    assert_eq!(seq, 1, "[{name}] next_seq of a log never appended to");
    let append = |log: &str, expected_seq: u64, frames: &[&str]| {
        append_owned(
            log,
            expected_seq,
            frames.iter().map(|f| f.as_bytes().to_vec()).collect(),
        )
    };
    must(
        backend.append(append(log, 1, &["first"])).await,
        "first append",
    );
    let second = backend.append(append(log, 1, &["second"])).await;
    assert!(
        second.as_ref().is_err_and(Error::is_conflict),
        "[{name}] second append at seq 1: {second:?}"
    );
    assert_eq!(
        must(backend.next_seq(log).await, "next_seq"),
        2,
        "[{name}] next_seq after one append"
    );
    assert_eq!(
        must(backend.scan(log, 1, 10).await, "scan"),
        vec![(1, b"first".to_vec())],
        "[{name}] log"
    );

    let mut both = append("raw-other", 1, &["x"]);
    both.extend(append(log, 1, &["stale"]));
    let result = backend.append(both).await;
    assert!(
        result.as_ref().is_err_and(Error::is_conflict),
        "[{name}] multi-log append with a stale part: {result:?}"
    );
    assert_eq!(
        must(backend.next_seq("raw-other").await, "next_seq"),
        1,
        "[{name}] partial multi-log append"
    );
    assert!(
        must(backend.scan("raw-other", 1, 10).await, "scan").is_empty(),
        "[{name}] partial multi-log append"
    );

    let mut both = append("raw-other", 1, &["x"]);
    both.extend(append(log, 2, &["a", "b"]));
    must(backend.append(both).await, "multi-log append");
    let expected: Vec<(u64, Vec<u8>)> = vec![
        (1, b"first".to_vec()),
        (2, b"a".to_vec()),
        (3, b"b".to_vec()),
    ];
    assert_eq!(
        must(backend.scan(log, 1, 10).await, "scan"),
        expected,
        "[{name}] frames numbered consecutively"
    );
    assert_eq!(
        must(backend.scan(log, 2, 1).await, "scan"),
        expected[1..2].to_vec(),
        "[{name}] scan from, limit"
    );
    must(backend.truncate(log, 3).await, "truncate");
    assert_eq!(
        must(backend.scan(log, 1, 10).await, "scan"),
        expected[2..].to_vec(),
        "[{name}] truncate"
    );
    assert_eq!(
        must(backend.next_seq(log).await, "next_seq"),
        4,
        "[{name}] truncate moved next_seq"
    );
    let stale = backend.append(append(log, 1, &["reuse"])).await;
    assert!(
        stale.as_ref().is_err_and(Error::is_conflict),
        "[{name}] append reusing a truncated seq: {stale:?}"
    );

    let racers: Vec<_> = (0..8u8)
        .map(|i| {
            let b = backend.clone();
            tokio::spawn(
                async move { b.append(append_owned("raw-append", 4, vec![vec![i]])).await },
            )
        })
        .collect();
    let mut wins = 0;
    for r in racers {
        match r.await {
            Ok(Ok(())) => wins += 1,
            Ok(Err(e)) => assert!(e.is_conflict(), "[{name}] racing append: {e}"),
            Err(e) => panic!("[{name}] racing append panicked: {e}"),
        }
    }
    assert_eq!(wins, 1, "[{name}] racing appends at the same seq");
    let mut logs = must(backend.list_logs().await, "list_logs");
    logs.sort();
    assert_eq!(logs, ["raw-append", "raw-other"], "[{name}] list_logs");
    let tail = must(backend.scan(log, 1, 10).await, "scan");
    drop((backend, store));

    let store = h.open().await;
    let backend = store.backend();
    assert_eq!(
        must(backend.scan(log, 1, 10).await, "scan"),
        tail,
        "[{name}] log after reopen"
    );
    assert_eq!(
        must(backend.next_seq(log).await, "next_seq"),
        5,
        "[{name}] next_seq after reopen"
    );
}

fn append_owned(log: &str, expected_seq: u64, frames: Vec<Vec<u8>>) -> Vec<LogAppend> {
    vec![LogAppend::new(log, expected_seq, frames)]
}

/// The backend's blobs: get/has of a missing hash, put, idempotent put (the first content stays),
/// get_blobs (in order, `None` where missing, repeats), list, delete (unknown hashes ignored), durable across a reopen.
pub async fn backend_blobs_follow_the_contract(h: &dyn Harness) {
    let name = h.name();
    let store = h.open().await;
    let b = store.backend().clone();
    let (h1, h2, h9) = ([1u8; 32], [2u8; 32], [9u8; 32]);
    assert_eq!(
        must(b.get_blob(&h1).await, "get"),
        None,
        "[{name}] missing blob"
    );
    assert!(
        !must(b.has_blob(&h1).await, "has"),
        "[{name}] has missing blob"
    );
    must(
        b.put_blobs(vec![(h1, b"one".to_vec()), (h2, b"two".to_vec())])
            .await,
        "put",
    );
    must(
        b.put_blobs(vec![(h1, b"other".to_vec())]).await,
        "put again",
    );
    assert_eq!(
        must(b.get_blob(&h1).await, "get"),
        Some(b"one".to_vec()),
        "[{name}] put is not idempotent"
    );
    assert!(must(b.has_blob(&h2).await, "has"), "[{name}] has");
    assert_eq!(
        must(b.get_blobs(&[h2, h9, h1, h2]).await, "get_blobs"),
        vec![
            Some(b"two".to_vec()),
            None,
            Some(b"one".to_vec()),
            Some(b"two".to_vec())
        ],
        "[{name}] get_blobs: in order, None where missing"
    );
    assert!(
        must(b.get_blobs(&[]).await, "get_blobs").is_empty(),
        "[{name}] get_blobs of nothing"
    );
    let mut all = must(b.list_blobs().await, "list");
    all.sort();
    assert_eq!(all, vec![h1, h2], "[{name}] list_blobs");
    assert!(
        must(b.list_logs().await, "list_logs").is_empty(),
        "[{name}] blobs show up as logs"
    );
    must(b.delete_blobs(&[h1, h9]).await, "delete");
    assert_eq!(
        must(b.list_blobs().await, "list"),
        vec![h2],
        "[{name}] after delete"
    );
    assert_eq!(
        must(b.get_blob(&h1).await, "get"),
        None,
        "[{name}] deleted blob"
    );
    must(b.flush().await, "flush");
    drop((b, store));
    let store = h.open().await;
    assert_eq!(
        must(store.backend().list_blobs().await, "list"),
        vec![h2],
        "[{name}] blobs after reopen"
    );
    assert_eq!(
        must(store.backend().get_blob(&h2).await, "get"),
        Some(b"two".to_vec()),
        "[{name}] blob after reopen"
    );
}

/// Two stores on one backend save concurrently (plain `save`, which retries on conflict): every
/// save of both is kept, in one chain of consecutive versions.
pub async fn concurrent_plain_saves_from_two_stores(h: &dyn Harness) {
    saves_from_several_stores(h, "plain2", 2, 10).await;
}

/// Eight stores on one backend save 25 checkpoints each to one execution at the same time: plain
/// `save` is documented to keep both sides of a race, so none of the 200 may fail (with a
/// conflict or anything else), however often it has to retry.
pub async fn plain_saves_survive_contention(h: &dyn Harness) {
    saves_from_several_stores(h, "plain8", 8, 25).await;
}

/// `stores` stores on one backend, one task each, save `saves` checkpoints each to `exec`: all are
/// kept, with consecutive versions and chained parents.
async fn saves_from_several_stores(h: &dyn Harness, exec: &'static str, stores: u64, saves: u64) {
    let name = h.name();
    let store = h.open().await;
    let writers: Vec<_> = (0..stores)
        .map(|w| {
            let s = store.with_same_keys(store.backend().clone());
            tokio::spawn(async move {
                let mut out = Vec::new();
                for i in 1..=saves {
                    out.push(s.save(nth_checkpoint(exec, w * 1000 + i)).await);
                }
                out
            })
        })
        .collect();
    let mut returned = Vec::new();
    let mut failed = Vec::new();
    for w in writers {
        let results = w
            .await
            .unwrap_or_else(|e| panic!("[{name}] writer panicked: {e}"));
        for r in results {
            match r {
                Ok(cp) => returned.push(cp),
                Err(e) => failed.push(e.to_string()),
            }
        }
    }
    assert!(
        failed.is_empty(),
        "[{name}] {} of {} plain saves from {stores} stores failed, e.g. {}",
        failed.len(),
        stores * saves,
        failed[0]
    );
    returned.sort_by_key(|c| c.version);
    let list = must(store.list(exec).await, "list");
    assert_eq!(
        list.len() as u64,
        stores * saves,
        "[{name}] saves lost: {:?}",
        versions(&list)
    );
    assert_cps_eq(&list, &returned, format!("[{name}] list vs returned"));
    for (i, cp) in list.iter().enumerate().skip(1) {
        assert_eq!(
            cp.version,
            list[i - 1].version + 1,
            "[{name}] versions {:?}",
            versions(&list)
        );
        assert_eq!(
            cp.parent.as_ref(),
            Some(&list[i - 1].id),
            "[{name}] parent of {}",
            cp.id
        );
    }
}
