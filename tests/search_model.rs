//! Property test of the search index against the scan: random saves (adding and removing
//! words), branches, deletes, clears, gcs (which fold the index's tail into its main index) and
//! rebuilds are applied to an indexed store; after each, every query of a fixed set must give
//! the same pages from the index as from a scan of the logs, which reads every state.

use ckpt::{Checkpoint, SearchMethod, SearchQuery, Store};
use proptest::prelude::*;
use serde_json::json;

const EXECS: [&str; 3] = ["run-a", "run-b", "other-c"];
const WORDS: [&str; 6] = ["alpha", "alps", "beta", "gamma", "order", "ordinal"];

#[derive(Debug, Clone)]
enum Op {
    /// Save to `exec` a state of its messages plus one of `words` (or, with `replace`, only
    /// that message: the words before are gone from the state).
    Save {
        exec: usize,
        words: Vec<usize>,
        replace: bool,
        user: u8,
    },
    /// Save a child of the execution's first live checkpoint (a branch).
    Branch {
        exec: usize,
        word: usize,
    },
    Delete {
        exec: usize,
        nth: usize,
    },
    Clear {
        exec: usize,
    },
    Gc,
    Reindex,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..3usize, prop::collection::vec(0..6usize, 1..4), prop::bool::weighted(0.2), 0..3u8)
            .prop_map(|(exec, words, replace, user)| Op::Save { exec, words, replace, user }),
        1 => (0..3usize, 0..6usize).prop_map(|(exec, word)| Op::Branch { exec, word }),
        1 => (0..3usize, 0..8usize).prop_map(|(exec, nth)| Op::Delete { exec, nth }),
        1 => (0..3usize).prop_map(|exec| Op::Clear { exec }),
        1 => Just(Op::Gc),
        1 => Just(Op::Reindex),
    ]
}

fn queries() -> Vec<SearchQuery> {
    let mut out: Vec<SearchQuery> = WORDS.iter().map(|w| SearchQuery::text(w)).collect();
    out.push(SearchQuery::text("ord")); // a prefix of two words
    out.push(SearchQuery::text("alpha gamma"));
    out.push(SearchQuery::text("\"beta gamma\""));
    out.push(SearchQuery::text("alp").execution_prefix("run-"));
    out.push(SearchQuery::new().metadata("user=u1").expect("query"));
    out.push(SearchQuery::new().metadata("step>2").expect("query"));
    out.push(SearchQuery::text("order").node("chat"));
    out.push(SearchQuery::new());
    out
}

/// Every page of `q` (pages of 2, so cursors are used), as checkpoint ids.
async fn pages(store: &Store, q: &SearchQuery) -> (Vec<String>, Vec<SearchMethod>) {
    let mut ids = Vec::new();
    let mut methods = Vec::new();
    let mut q = q.clone().limit(2);
    loop {
        let page = store.search(&q).await.expect("search");
        methods.push(page.method);
        ids.extend(page.hits.iter().map(|h| h.id.to_string()));
        match page.next_cursor {
            Some(c) => q = q.cursor(&c).expect("cursor"),
            None => return (ids, methods),
        }
    }
}

async fn run(ops: Vec<Op>) -> Result<(), TestCaseError> {
    let store = Store::memory();
    store.reindex().await.expect("index");
    let mut messages: [Vec<String>; 3] = Default::default();
    let mut step = 0u64;
    for (i, op) in ops.iter().enumerate() {
        match op {
            Op::Save {
                exec,
                words,
                replace,
                user,
            } => {
                let text: Vec<&str> = words.iter().map(|w| WORDS[*w]).collect();
                if *replace {
                    messages[*exec].clear();
                }
                messages[*exec].push(text.join(" "));
                step += 1;
                let cp = Checkpoint::new(
                    EXECS[*exec],
                    "chat",
                    &json!({ "messages": messages[*exec] }),
                )
                .expect("checkpoint")
                .with_metadata("user", format!("u{user}"))
                .with_metadata("step", step % 5);
                store.save(cp).await.expect("save");
            }
            Op::Branch { exec, word } => {
                let Some(first) = store.list(EXECS[*exec]).await.expect("list").pop() else {
                    continue;
                };
                let cp =
                    Checkpoint::new(EXECS[*exec], "tool", &json!({ "messages": [WORDS[*word]] }))
                        .expect("checkpoint");
                store.save_with_parent(cp, &first.id).await.expect("branch");
            }
            Op::Delete { exec, nth } => {
                let live = store.list(EXECS[*exec]).await.expect("list");
                if !live.is_empty() {
                    store
                        .delete(&live[nth % live.len()].id)
                        .await
                        .expect("delete");
                }
            }
            Op::Clear { exec } => {
                store.clear(EXECS[*exec]).await.expect("clear");
                messages[*exec].clear();
            }
            Op::Gc => {
                store.gc().await.expect("gc");
            }
            Op::Reindex => {
                store.reindex().await.expect("reindex");
            }
        }
        for q in queries() {
            let (indexed, methods) = pages(&store, &q).await;
            let (scanned, _) = pages(&store, &q.clone().without_index()).await;
            prop_assert!(
                methods.iter().all(|m| *m == SearchMethod::Index),
                "after op {i} ({op:?}): {q:?} did not use the index"
            );
            prop_assert_eq!(
                indexed,
                scanned,
                "after op {} ({:?}): {:?} differs from the scan",
                i,
                op,
                q
            );
        }
    }
    let report = store.verify().await.expect("verify");
    prop_assert!(
        report.index_problems.is_empty(),
        "{:?}",
        report.index_problems
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]

    #[test]
    fn the_index_answers_as_the_scan_does(ops in prop::collection::vec(op(), 1..24)) {
        let rt = tokio::runtime::Runtime::new().expect("runtime");
        rt.block_on(run(ops))?;
    }
}
