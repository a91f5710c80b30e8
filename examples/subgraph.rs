//! Subgraphs with `ckpt::graph`: a `review` graph (draft, then ask a person to approve) used as
//! one node of a `publish` graph, on the embedded sled store. The child's checkpoints are an
//! execution of their own under the parent's name (`post-1/review`); its question pauses the
//! parent, and the parent's answer resumes the child where it stopped.
//!
//! ```sh
//! cargo run --example subgraph
//! ```

#[cfg(all(feature = "graph", feature = "sled"))]
mod demo {
    use std::error::Error;
    use std::sync::Arc;

    use ckpt::graph::{
        Command, CompileConfig, CompiledGraph, NodeContext, Outcome, RunConfig, StateGraph, END,
    };
    use ckpt::{BoxError, CheckpointStore, Store};
    use serde::{Deserialize, Serialize};

    /// The parent's state: a post going through the pipeline.
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    struct Post {
        topic: String,
        body: String,
        status: String,
    }

    /// The child's state: a draft and its review.
    #[derive(Clone, Debug, Default, Serialize, Deserialize)]
    struct Review {
        topic: String,
        draft: String,
        verdict: String,
    }

    fn review_graph() -> Result<CompiledGraph<Review>, Box<dyn Error>> {
        let mut g = StateGraph::<Review>::new();
        g.add_node("draft", |mut r: Review| async move {
            r.draft = format!("Ten facts about {}.", r.topic);
            println!("  [review] draft: {:?}", r.draft);
            Ok::<_, std::io::Error>(r)
        });
        g.add_node_with_context("approve", |mut r: Review, ctx: NodeContext| async move {
            // Pauses the child, and with it the parent, until a person answers.
            r.verdict = ctx.interrupt(&format!("publish {:?}?", r.draft))?;
            println!("  [review] verdict: {}", r.verdict);
            Ok::<_, BoxError>(r)
        });
        g.add_edge("draft", "approve").add_edge("approve", END);
        g.set_entry_point("draft");
        Ok(g.compile(CompileConfig::default())?)
    }

    fn publish_graph(
        store: Arc<dyn CheckpointStore>,
    ) -> Result<CompiledGraph<Post>, Box<dyn Error>> {
        let mut g = StateGraph::<Post>::new();
        // The child's input from the parent's state, and its result back into it.
        g.add_subgraph(
            "review",
            review_graph()?,
            |p: &Post| Review {
                topic: p.topic.clone(),
                ..Review::default()
            },
            |mut p: Post, r: Review| {
                p.body = r.draft;
                p.status = r.verdict;
                p
            },
        );
        g.add_node("publish", |mut p: Post| async move {
            if p.status == "yes" {
                p.status = "published".into();
            }
            println!("  [publish] {}: {:?}", p.status, p.body);
            Ok::<_, std::io::Error>(p)
        });
        g.add_edge("review", "publish").add_edge("publish", END);
        g.set_entry_point("review");
        Ok(g.compile(CompileConfig::default().checkpointer(store))?)
    }

    async fn print_log(store: &Store, exec: &str) -> Result<(), Box<dyn Error>> {
        println!("checkpoints of {exec}:");
        for cp in store.list(exec).await? {
            let from = cp
                .metadata
                .get("parent_checkpoint")
                .and_then(|v| v.as_str())
                .map(|p| format!(" (started from {p})"))
                .unwrap_or_default();
            println!(
                "  v{:<2} {:<10} next {}{from}",
                cp.version, cp.node_name, cp.metadata["next"]
            );
        }
        Ok(())
    }

    pub async fn main() -> Result<(), Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("store");
        let store = Store::open(path.to_str().ok_or("temp dir path is not UTF-8")?).await?;
        let app = publish_graph(Arc::new(store.clone()))?;

        println!("run: invoke post-1");
        let input = Post {
            topic: "owls".into(),
            ..Post::default()
        };
        let Outcome::Interrupted { interrupts, .. } =
            app.invoke(input, RunConfig::execution_id("post-1")).await?
        else {
            return Err("expected the review to ask".into());
        };
        for i in &interrupts {
            println!("paused: node {:?} asks {}", i.node, i.value);
        }
        print_log(&store, "post-1").await?;
        print_log(&store, "post-1/review").await?;

        println!("answer: yes");
        let out = app
            .resume_with_command("post-1", Command::resume("yes"))
            .await?;
        let Outcome::Finished(post) = out else {
            return Err("expected the run to finish".into());
        };
        println!("finished: {} {:?}", post.status, post.body);
        print_log(&store, "post-1").await?;
        print_log(&store, "post-1/review").await?;
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
    eprintln!("this example needs the `graph` and `sled` features");
}
