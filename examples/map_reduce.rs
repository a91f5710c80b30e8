//! Map-reduce with dynamic fan-out (`SendTo`) on the durable sled store in a temp dir: `plan`
//! sends one `generate` task per subject; the tasks run concurrently in ONE step (one
//! checkpoint), each task's output is recorded as a pending write on the step's base checkpoint
//! as soon as it finishes, and their updates merge in send order (an append reducer), whatever
//! order they finished in; then `best` picks one joke. One task fails on its first call: the
//! run stops, and `resume_latest` re-runs only that task.
//!
//! ```sh
//! cargo run --example map_reduce
//! ```

#[cfg(all(feature = "graph", feature = "sled"))]
mod demo {
    use std::collections::BTreeMap;
    use std::error::Error;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use ckpt::graph::{
        reduce, CompileConfig, GraphError, NodeContext, Outcome, Reducible, RunConfig, SendTo,
        StateGraph, END,
    };
    use ckpt::{CheckpointStore, Store};
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    struct Jokes {
        subjects: Vec<String>,
        jokes: Vec<String>,
        best: Option<String>,
    }

    /// What a node returns: jokes to append, or the best one.
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    struct JokesUpdate {
        jokes: Vec<String>,
        best: Option<String>,
    }

    impl Reducible for Jokes {
        type Update = JokesUpdate;
        fn apply(&mut self, u: JokesUpdate) {
            reduce::append(&mut self.jokes, u.jokes);
            reduce::set(&mut self.best, u.best);
        }
    }

    fn joke(subject: &str) -> String {
        match subject {
            "cats" => "Cats never debug: they knock the bug off the table.".into(),
            "penguins" => "Penguins never get lost: they go with the floe.".into(),
            "compilers" => "My compiler and I argue a lot: it keeps raising issues.".into(),
            other => format!("Nothing is funny about {other}."),
        }
    }

    /// How many times each subject's task ran.
    type Runs = Arc<Mutex<BTreeMap<String, usize>>>;

    fn build(
        runs: &Runs,
        store: Arc<dyn CheckpointStore>,
    ) -> Result<ckpt::graph::CompiledGraph<Jokes>, GraphError> {
        let mut g = StateGraph::<Jokes>::with_reducers();
        g.add_update_node("plan", |s: Jokes| async move {
            println!("  plan: one task per subject {:?}", s.subjects);
            Ok::<_, std::io::Error>(JokesUpdate::default())
        });
        g.add_send_edges("plan", |s: &Jokes| {
            let n = s.subjects.len();
            let sends = s.subjects.iter().enumerate();
            sends
                .map(|(i, subject)| SendTo::new("generate", &(subject, n - i)))
                .collect()
        });
        let r = runs.clone();
        g.add_send_node(
            "generate",
            move |(subject, delay): (String, usize), ctx: NodeContext| {
                let run = {
                    let mut runs = r.lock().unwrap_or_else(|e| e.into_inner());
                    let n = runs.entry(subject.clone()).or_insert(0);
                    *n += 1;
                    *n
                };
                async move {
                    // The first task sent takes longest: they finish in reverse order.
                    tokio::time::sleep(Duration::from_millis(40 * delay as u64)).await;
                    if subject == "penguins" && run == 1 {
                        println!("  {} ({subject}): failed", ctx.task_name());
                        return Err(std::io::Error::other("the joke model timed out"));
                    }
                    println!("  {} ({subject}): done", ctx.task_name());
                    Ok(JokesUpdate {
                        jokes: vec![joke(&subject)],
                        best: None,
                    })
                }
            },
        );
        g.add_edge("generate", "best");
        g.add_update_node("best", |s: Jokes| async move {
            let best = s.jokes.iter().max_by_key(|j| j.len()).cloned();
            println!("  best: {best:?}");
            Ok::<_, std::io::Error>(JokesUpdate {
                jokes: vec![],
                best,
            })
        });
        g.add_edge("best", END);
        g.set_entry_point("plan");
        g.compile(CompileConfig::default().checkpointer(store))
    }

    pub async fn main() -> Result<(), Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("db");
        let store = Store::open(path.to_str().ok_or("temp dir path is not UTF-8")?).await?;
        let runs = Runs::default();
        let app = build(&runs, Arc::new(store.clone()))?;
        let subjects = ["cats", "penguins", "compilers"].map(String::from).to_vec();
        let input = Jokes {
            subjects,
            ..Jokes::default()
        };

        println!("run 1: invoke jokes-1");
        match app.invoke(input, RunConfig::execution_id("jokes-1")).await {
            Err(GraphError::Node { node, source }) => {
                println!("run 1 stopped: {node} failed: {source}")
            }
            other => return Err(format!("expected a task to fail, got {other:?}").into()),
        }
        let base = store
            .latest("jokes-1")
            .await?
            .ok_or("no checkpoint saved")?;
        println!(
            "latest checkpoint: v{} {:?}, next {}",
            base.version, base.node_name, base.metadata["next"]
        );
        println!("  its pending writes (what a resume finds):");
        for w in store.writes(&base.id).await? {
            println!("    {:<11} {:<9} {}", w.task, w.channel, w.value_json());
        }

        println!("run 2: resume_latest(jokes-1)");
        let state = match app.resume_latest("jokes-1").await? {
            Outcome::Finished(state) => state,
            other => return Err(format!("expected the run to finish, got {other:?}").into()),
        };
        println!("jokes, in send order:");
        for j in &state.jokes {
            println!("  {j}");
        }
        println!("best: {}", state.best.as_deref().unwrap_or("-"));
        let runs = runs.lock().unwrap_or_else(|e| e.into_inner()).clone();
        println!("task runs: {runs:?}");

        println!("checkpoints of jokes-1 (the send step is one checkpoint):");
        for cp in store.list("jokes-1").await? {
            let writes = store.writes(&cp.id).await?;
            let tasks: Vec<String> = writes
                .iter()
                .map(|w| format!("{}:{}", w.task, w.channel.trim_matches('_')))
                .collect();
            println!(
                "  v{:<2} {:<9} step {} next {:<35} writes {tasks:?}",
                cp.version,
                cp.node_name,
                cp.metadata["step"],
                cp.metadata["next"].to_string()
            );
        }
        let expected: BTreeMap<String, usize> = [("cats", 1), ("compilers", 1), ("penguins", 2)]
            .map(|(s, n)| (s.to_owned(), n))
            .into();
        if runs != expected || state.jokes.len() != 3 || !state.jokes[0].starts_with("Cats") {
            return Err(format!("unexpected result {state:?} after runs {runs:?}").into());
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
