//! Replay with divergence reports, on the embedded sled store: record a small ReAct agent run
//! (a scripted model, a calculator tool, both called as journaled tasks), then
//!
//! 1. change code that is not a task (how the agent reads the model's final reply) and replay
//!    in `Recorded` mode: the recorded model replies and tool outputs are used (nothing is
//!    called), and the report names the first step whose state changed and how;
//! 2. change the tool and replay in `Live` mode: the tasks run again and the tool's new output
//!    flows through the run;
//! 3. check the recorded run against the original code, as a regression test would.
//!
//! ```sh
//! cargo run --example replay
//! ```

#[cfg(all(feature = "graph", feature = "sled"))]
mod demo {
    use std::error::Error;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    use ckpt::graph::{
        replay_regression, CompileConfig, CompiledGraph, NodeContext, ReplayOptions, RunConfig,
        StateGraph, END,
    };
    use ckpt::prebuilt::{
        AssistantTurn, ChatModel, Message, Role, ScriptedChatModel, ToolCall, ToolSpec,
    };
    use ckpt::{BoxError, CheckpointStore, Store};
    use serde::{Deserialize, Serialize};

    #[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
    struct Chat {
        messages: Vec<Message>,
        answer: Option<String>,
    }

    /// The parts of the agent's code a developer changes between runs.
    #[derive(Clone)]
    struct Code {
        /// How the final answer is read from the model's reply (not a task).
        shout_the_answer: bool,
        /// A bug in the calculator tool (a task).
        off_by: f64,
        /// Calls to the tool, to show what ran.
        tool_runs: Arc<AtomicUsize>,
    }

    fn script() -> Vec<AssistantTurn> {
        let add = ToolCall::new("call-1", "add", serde_json::json!({"a": 2, "b": 3}));
        vec![
            AssistantTurn::tool_calls("Let me add them.", vec![add]),
            AssistantTurn::text("The sum is 5."),
        ]
    }

    fn agent(store: &Store, model: Arc<dyn ChatModel>, code: Code) -> CompiledGraph<Chat> {
        let mut g = StateGraph::<Chat>::new();
        let reader = code.clone();
        g.add_node_with_context("agent", move |mut s: Chat, ctx: NodeContext| {
            let (model, code) = (model.clone(), reader.clone());
            async move {
                let prompt = s.messages.clone();
                let specs = vec![ToolSpec::new("add", "adds a and b")];
                // The model call is a task: recorded once, replayed from the log.
                let turn: AssistantTurn = ctx
                    .task(
                        "model",
                        async move { model.complete(&prompt, &specs).await },
                    )
                    .await?;
                if turn.tool_calls.is_empty() {
                    let answer = if code.shout_the_answer {
                        turn.content.to_uppercase()
                    } else {
                        turn.content.clone()
                    };
                    s.answer = Some(answer);
                }
                s.messages
                    .push(Message::assistant(turn.content, turn.tool_calls));
                Ok::<_, BoxError>(s)
            }
        });
        g.add_node_with_context("tools", move |mut s: Chat, ctx: NodeContext| {
            let code = code.clone();
            async move {
                let calls = s.messages.last().map(|m| m.tool_calls.clone());
                for call in calls.unwrap_or_default() {
                    let (code, args) = (code.clone(), call.arguments.clone());
                    // Each tool call is a task, keyed by its call id.
                    let out: String = ctx
                        .task(&format!("tool:{}", call.id), async move {
                            code.tool_runs.fetch_add(1, Ordering::SeqCst);
                            let a = args["a"].as_f64().unwrap_or(0.0);
                            let b = args["b"].as_f64().unwrap_or(0.0);
                            Ok::<_, BoxError>((a + b + code.off_by).to_string())
                        })
                        .await?;
                    s.messages.push(Message::tool(call.id, out));
                }
                Ok::<_, BoxError>(s)
            }
        });
        g.add_conditional_edges("agent", |s: &Chat| {
            let wants_tools = s
                .messages
                .last()
                .is_some_and(|m| m.role == Role::Assistant && !m.tool_calls.is_empty());
            if wants_tools { "tools" } else { END }.into()
        })
        .add_edge("tools", "agent")
        .set_entry_point("agent");
        let checkpointer: Arc<dyn CheckpointStore> = Arc::new(store.clone());
        g.compile(CompileConfig::default().checkpointer(checkpointer))
            .expect("the graph is valid")
    }

    fn code(shout: bool, off_by: f64) -> Code {
        Code {
            shout_the_answer: shout,
            off_by,
            tool_runs: Arc::default(),
        }
    }

    pub async fn main() -> Result<(), Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let store = Store::open(dir.path().to_str().ok_or("temp dir is not UTF-8")?).await?;
        let exec = "replay-demo";

        // Record.
        let model = Arc::new(ScriptedChatModel::new(script()));
        let original = code(false, 0.0);
        let input = Chat {
            messages: vec![Message::user("What is 2 + 3?")],
            answer: None,
        };
        let recorded = agent(&store, model.clone(), original.clone())
            .invoke(input, RunConfig::execution_id(exec))
            .await?;
        println!(
            "recorded: {:?} ({} model calls, {} tool runs)",
            recorded.state().answer,
            model.call_count(),
            original.tool_runs.load(Ordering::SeqCst)
        );
        let start = store
            .history(exec, ckpt::HistoryQuery::default())
            .await?
            .pop()
            .ok_or("nothing recorded")?
            .id;

        // 1. Code that is not a task changed: replay offline with the recorded results.
        let offline = Arc::new(ScriptedChatModel::new(Vec::new()));
        let changed = code(true, 0.0);
        let report = agent(&store, offline.clone(), changed.clone())
            .replay(exec, &start, ReplayOptions::recorded())
            .await?;
        println!("\n{report}");
        let d = report.divergence.as_ref().ok_or("expected a divergence")?;
        if offline.call_count() != 0 || changed.tool_runs.load(Ordering::SeqCst) != 0 {
            return Err("a recorded replay called the model or a tool".into());
        }
        if d.index != 3 || d.diff.changed.first().map(|c| c.0.as_str()) != Some("answer") {
            return Err(format!("unexpected divergence: {d:?}").into());
        }

        // 2. The tool changed: replay live, the tool runs again and its output flows through.
        let live_model = Arc::new(ScriptedChatModel::new(script()));
        let buggy = code(false, 1.0);
        let report = agent(&store, live_model.clone(), buggy.clone())
            .replay(exec, &start, ReplayOptions::live())
            .await?;
        println!("\n{report}");
        let d = report.divergence.as_ref().ok_or("expected a divergence")?;
        if d.index != 2 || buggy.tool_runs.load(Ordering::SeqCst) != 1 {
            return Err(format!("unexpected live replay: {d:?}").into());
        }

        // 3. The original code still reproduces the recorded run exactly.
        let regression = replay_regression(
            &agent(&store, offline.clone(), code(false, 0.0)),
            &store,
            exec,
        )
        .await?;
        regression.assert_faithful();
        println!(
            "\nregression check with the original code: {} steps, faithful",
            regression.steps.len()
        );
        println!(
            "the execution now has {} heads (the recorded run and two replays)",
            store.heads(exec).await?.len()
        );
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
    println!("this example needs the `graph` and `sled` features");
}
