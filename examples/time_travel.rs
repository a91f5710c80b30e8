//! Time travel with `ckpt::graph` on the embedded sled store: run a small counter graph, load
//! an earlier checkpoint (version 2), edit its state with `update_state`, resume from the edit,
//! and show that the original checkpoints still load.
//!
//! ```sh
//! cargo run --example time_travel
//! ```

#[cfg(all(feature = "graph", feature = "sled"))]
mod demo {
    use std::error::Error;
    use std::sync::Arc;

    use ckpt::graph::{CompileConfig, Outcome, RunConfig, StateGraph, END};
    use ckpt::{CheckpointStore, HistoryQuery, Store};
    use serde::{Deserialize, Serialize};

    /// Counts up to `target`, keeping a trail of the values it went through.
    #[derive(Clone, Debug, Serialize, Deserialize)]
    struct Counter {
        n: u32,
        target: u32,
        trail: Vec<u32>,
    }

    async fn inc(mut s: Counter) -> Result<Counter, std::io::Error> {
        s.n += 1;
        s.trail.push(s.n);
        Ok(s)
    }

    pub async fn main() -> Result<(), Box<dyn Error>> {
        let dir = std::env::temp_dir().join(format!("ckpt-tt-{}", std::process::id()));
        let result = run(&dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn print_history(store: &Store, exec: &str) -> Result<(), Box<dyn Error>> {
        let mut history = store.history(exec, HistoryQuery::default()).await?;
        history.reverse();
        for h in history {
            let state: Counter = store.at_version(exec, h.version).await?.state()?;
            let from = h
                .metadata
                .get("updated_from")
                .map(|v| format!(" (edited from {v})"))
                .unwrap_or_default();
            println!(
                "  v{} {} source {} n={} trail {:?}{from}",
                h.version, h.node_name, h.metadata["source"], state.n, state.trail
            );
        }
        Ok(())
    }

    async fn run(dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
        let path = dir.to_str().ok_or("temp dir path is not UTF-8")?;
        let store = Store::open(path).await?;
        let checkpointer: Arc<dyn CheckpointStore> = Arc::new(store.clone());
        let mut g = StateGraph::<Counter>::new();
        g.add_node("inc", inc);
        g.add_conditional_edges("inc", |s: &Counter| {
            if s.n >= s.target {
                END.into()
            } else {
                "inc".into()
            }
        });
        g.set_entry_point("inc");
        let app = g.compile(CompileConfig::default().checkpointer(checkpointer))?;

        let input = Counter {
            n: 0,
            target: 4,
            trail: Vec::new(),
        };
        let first = app.invoke(input, RunConfig::execution_id("count")).await?;
        println!("run on {}: {:?}", dir.display(), first.state());
        println!("history after the run:");
        print_history(&store, "count").await?;

        // Travel back to version 2 and look at it.
        let v2 = store.at_version("count", 2).await?;
        let mut past: Counter = v2.state()?;
        println!(
            "state at version 2: {past:?} (next {})",
            v2.metadata["next"]
        );

        // Change the past: jump the counter ahead and raise the target, then resume from there.
        past.n = 10;
        past.target = 12;
        past.trail.push(10);
        let edited = app.update_state(&v2.id, past).await?;
        println!("update_state saved {edited}");
        let resumed = match app.resume("count", &edited).await? {
            Outcome::Finished(s) => s,
            other => return Err(format!("expected the run to finish, got {other:?}").into()),
        };
        println!("resumed from {edited}: {resumed:?}");

        println!("history after time travel (the original versions are untouched):");
        print_history(&store, "count").await?;
        let original: Counter = store.at_version("count", 4).await?.state()?;
        println!("version 4 still loads: {original:?}");

        if original.trail != [1, 2, 3, 4] || resumed.trail != [1, 2, 10, 11, 12] {
            return Err("unexpected trails".into());
        }
        Ok(())
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
