//! Durable execution with `ckpt::graph`: a small plan/act agent on the embedded sled store. The
//! `act` node fails once (a simulated crash); the run is then recovered with `resume_latest`,
//! without re-running the steps that had already completed.
//!
//! ```sh
//! cargo run --example durable_execution
//! ```

#[cfg(all(feature = "graph", feature = "sled"))]
mod demo {
    use std::error::Error;
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use ckpt::graph::{CompileConfig, GraphError, Outcome, RunConfig, StateGraph, END};
    use ckpt::{CheckpointStore, HistoryQuery, Store};
    use serde::{Deserialize, Serialize};

    /// The agent's state: a task broken into steps, and what has been done so far.
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    struct Agent {
        todo: Vec<String>,
        done: Vec<String>,
        plans: u32,
    }

    static CRASHED: AtomicBool = AtomicBool::new(false);
    static ACT_CALLS: AtomicUsize = AtomicUsize::new(0);
    static PLAN_CALLS: AtomicUsize = AtomicUsize::new(0);

    async fn plan(mut s: Agent) -> Result<Agent, std::io::Error> {
        PLAN_CALLS.fetch_add(1, Ordering::SeqCst);
        s.plans += 1;
        if s.todo.is_empty() {
            s.todo = vec!["search".into(), "summarize".into(), "reply".into()];
        }
        println!("  plan  (#{}): todo {:?}", s.plans, s.todo);
        Ok(s)
    }

    async fn act(mut s: Agent) -> Result<Agent, std::io::Error> {
        ACT_CALLS.fetch_add(1, Ordering::SeqCst);
        if s.done.len() == 1 && !CRASHED.swap(true, Ordering::SeqCst) {
            println!(
                "  act: simulated crash while working on {:?}",
                s.todo.first()
            );
            return Err(std::io::Error::other("the tool server went away"));
        }
        if !s.todo.is_empty() {
            let task = s.todo.remove(0);
            println!("  act: did {task:?}");
            s.done.push(task);
        }
        Ok(s)
    }

    fn build() -> StateGraph<Agent> {
        let mut g = StateGraph::<Agent>::new();
        g.add_node("plan", plan);
        g.add_node("act", act);
        g.add_edge("plan", "act");
        g.add_conditional_edges("act", |s: &Agent| {
            if s.todo.is_empty() {
                END.into()
            } else {
                "plan".into()
            }
        });
        g.set_entry_point("plan");
        g
    }

    pub async fn main() -> Result<(), Box<dyn Error>> {
        let dir = std::env::temp_dir().join(format!("ckpt-example-{}", std::process::id()));
        let result = run(&dir).await;
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn run(dir: &std::path::Path) -> Result<(), Box<dyn Error>> {
        let path = dir.to_str().ok_or("temp dir path is not UTF-8")?;
        let store = Store::open(path).await?;
        let checkpointer: Arc<dyn CheckpointStore> = Arc::new(store.clone());
        let app = build().compile(CompileConfig::default().checkpointer(checkpointer))?;

        println!("run 1: invoke exec-1 on {}", dir.display());
        match app
            .invoke(Agent::default(), RunConfig::execution_id("exec-1"))
            .await
        {
            Err(GraphError::Node { node, source }) => {
                println!("run 1 stopped: node {node:?} failed: {source}")
            }
            other => return Err(format!("expected the simulated crash, got {other:?}").into()),
        }
        let saved = store.list("exec-1").await?;
        println!("{} checkpoints survived the crash:", saved.len());
        for cp in &saved {
            println!(
                "  {} after {:?}, next {}",
                cp.id, cp.node_name, cp.metadata["next"]
            );
        }
        let (plans_before, acts_before) = (
            PLAN_CALLS.load(Ordering::SeqCst),
            ACT_CALLS.load(Ordering::SeqCst),
        );

        println!("run 2: resume_latest(exec-1)");
        let state = match app.resume_latest("exec-1").await? {
            Outcome::Finished(state) => state,
            other => return Err(format!("expected the run to finish, got {other:?}").into()),
        };
        println!(
            "finished: done {:?} after {} plans",
            state.done, state.plans
        );
        println!(
            "nodes run by the recovery: plan {}, act {} (the completed steps were not re-run)",
            PLAN_CALLS.load(Ordering::SeqCst) - plans_before,
            ACT_CALLS.load(Ordering::SeqCst) - acts_before,
        );

        println!("history of exec-1 (newest first):");
        for h in store.history("exec-1", HistoryQuery::default()).await? {
            println!(
                "  v{:<2} {:<5} step {} next {}",
                h.version, h.node_name, h.metadata["step"], h.metadata["next"]
            );
        }
        if state.done != ["search", "summarize", "reply"] {
            return Err(format!("unexpected final state {state:?}").into());
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
