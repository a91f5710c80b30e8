//! Time travel with `ckpt::graph` on the embedded sled store: run a counter graph, go back to an
//! old checkpoint, edit its state (`update_state` saves the edit as a child of it) and resume;
//! resume from another old checkpoint with changed code; then print the execution's tree: its
//! heads (`Store::heads`), the branch behind each head (`Store::branch`) and where it forked
//! (`Store::children`). No run overwrites another: every version still loads.
//!
//! ```sh
//! cargo run --example time_travel
//! CKPT_EXAMPLE_DIR=/tmp/tt cargo run --example time_travel   # keep the store, then:
//! cargo run --bin ckpt -- --store sled:///tmp/tt log time-travel --graph
//! ```

#[cfg(all(feature = "graph", feature = "sled"))]
mod demo {
    use std::error::Error;
    use std::path::Path;
    use std::sync::Arc;

    use ckpt::graph::{CompileConfig, CompiledGraph, RunConfig, StateGraph, END};
    use ckpt::{CheckpointHeader, CheckpointStore, HistoryQuery, Store};
    use serde::{Deserialize, Serialize};

    const EXEC: &str = "time-travel";

    /// Counts up to `target`, keeping a trail of the values it went through.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    struct Counter {
        n: u32,
        target: u32,
        trail: Vec<u32>,
    }

    /// The graph: "inc" adds `by` until the target is reached (the code we change is `by`).
    fn counter(store: &Store, by: u32) -> Result<CompiledGraph<Counter>, Box<dyn Error>> {
        let mut g = StateGraph::<Counter>::new();
        g.add_node("inc", move |mut s: Counter| async move {
            s.n += by;
            s.trail.push(s.n);
            Ok::<_, std::io::Error>(s)
        });
        g.add_conditional_edges("inc", |s: &Counter| {
            if s.n >= s.target {
                END.into()
            } else {
                "inc".into()
            }
        });
        g.set_entry_point("inc");
        let checkpointer: Arc<dyn CheckpointStore> = Arc::new(store.clone());
        Ok(g.compile(CompileConfig::default().checkpointer(checkpointer))?)
    }

    pub async fn main() -> Result<(), Box<dyn Error>> {
        // CKPT_EXAMPLE_DIR keeps the store for `ckpt log --graph`; by default it is temporary.
        match std::env::var_os("CKPT_EXAMPLE_DIR") {
            Some(dir) => run(Path::new(&dir)).await,
            None => {
                let dir = std::env::temp_dir().join(format!("ckpt-tt-{}", std::process::id()));
                let result = run(&dir).await;
                let _ = std::fs::remove_dir_all(&dir);
                result
            }
        }
    }

    async fn run(dir: &Path) -> Result<(), Box<dyn Error>> {
        let store = Store::open(dir.to_str().ok_or("the store path is not UTF-8")?).await?;
        if store.latest(EXEC).await?.is_some() {
            return Err(format!(
                "{} already holds {EXEC:?}: use an empty directory",
                dir.display()
            )
            .into());
        }
        println!("store {}, execution {EXEC}", dir.display());
        let app = counter(&store, 1)?;

        // v1 is the input (n=0), v2..v5 the four steps (n=1..4).
        let input = Counter {
            n: 0,
            target: 4,
            trail: vec![],
        };
        let first = app.invoke(input, RunConfig::execution_id(EXEC)).await?;
        println!("run:            trail {:?}", first.state().trail);

        // Back to v3 (n=2): jump the counter ahead, raise the target, resume from the edit.
        let v3 = store.at_version(EXEC, 3).await?;
        let mut past: Counter = v3.state()?;
        (past.n, past.target) = (10, 12);
        past.trail.push(10);
        let edited = app.update_state(&v3.id, past).await?;
        let second = app.resume(EXEC, &edited).await?;
        let t = &second.state().trail;
        println!("edit of v3:     trail {t:?} (the edit is {edited}, a child of v3)");

        // Back to v2 (n=1) with changed code: count by 2. A new branch from v2.
        let v2 = store.at_version(EXEC, 2).await?;
        let third = counter(&store, 2)?.resume(EXEC, &v2.id).await?;
        println!("v2, by 2:       trail {:?}", third.state().trail);

        let heads = store.heads(EXEC).await?;
        println!("heads (newest first), each with its branch back to the input:");
        for head in &heads {
            let branch = store.branch(&head.id, HistoryQuery::default()).await?;
            let n = store.load(&head.id).await?.state::<Counter>()?.n;
            println!(
                "  v{:<3} n={n:<3} {}",
                head.version,
                versions(&branch, " <- ")
            );
        }
        println!("where it forked (checkpoints with several children):");
        for h in store.history(EXEC, HistoryQuery::default()).await? {
            let children = store.children(&h.id).await?;
            if children.len() > 1 {
                println!("  v{} -> {}", h.version, versions(&children, ", "));
            }
        }
        let original: Counter = store.at_version(EXEC, 5).await?.state()?;
        println!("v5 still loads: trail {:?}", original.trail);

        let head_versions: Vec<u64> = heads.iter().map(|h| h.version).collect();
        if first.state().trail != [1, 2, 3, 4]
            || second.state().trail != [1, 2, 10, 11, 12]
            || third.state().trail != [1, 3, 5]
            || original.trail != [1, 2, 3, 4]
            || head_versions != [10, 8, 5]
        {
            return Err(format!("unexpected trails or heads {head_versions:?}").into());
        }
        Ok(())
    }

    /// "v10 <- v9 <- v2" for a branch, "v3, v9" for children.
    fn versions(headers: &[CheckpointHeader], sep: &str) -> String {
        let v: Vec<String> = headers.iter().map(|h| format!("v{}", h.version)).collect();
        v.join(sep)
    }
}

#[cfg(all(feature = "graph", feature = "sled"))]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    demo::main().await
}

#[cfg(not(all(feature = "graph", feature = "sled")))]
fn main() {
    eprintln!("this example needs the `graph` and `sled` features (both on by default)");
}
