//! A ReAct agent from `ckpt::prebuilt`, with a scripted model (no network) and two tools, on the
//! in-memory store: prints the conversation, the checkpoint saved after every step and the model
//! and tool calls journaled on each; then runs it again asking a person (here, the program) to
//! approve each tool call, refusing one.
//!
//! ```sh
//! cargo run --example react_agent
//! ```

#[cfg(feature = "graph")]
mod demo {
    use std::error::Error;
    use std::sync::Arc;

    use async_trait::async_trait;
    use ckpt::error::BoxError;
    use ckpt::graph::{Command, Outcome, RunConfig};
    use ckpt::prebuilt::{
        create_react_agent, AgentConfig, AgentState, Approval, AssistantTurn, Message, Role,
        ScriptedChatModel, Tool, ToolCall,
    };
    use ckpt::{HistoryQuery, Store};
    use serde_json::json;

    /// Adds the numbers in `{"numbers": [...]}`.
    struct Calculator;

    #[async_trait]
    impl Tool for Calculator {
        fn name(&self) -> &str {
            "calculator"
        }
        fn description(&self) -> &str {
            "Adds numbers. Arguments: {\"numbers\": [1, 2, ...]}"
        }
        async fn call(&self, arguments: serde_json::Value) -> Result<String, BoxError> {
            let numbers = arguments["numbers"]
                .as_array()
                .ok_or("expected {\"numbers\": [...]}")?;
            let mut sum = 0.0;
            for n in numbers {
                sum += n.as_f64().ok_or_else(|| format!("{n} is not a number"))?;
            }
            Ok(sum.to_string())
        }
    }

    /// Returns canned facts.
    struct Lookup;

    #[async_trait]
    impl Tool for Lookup {
        fn name(&self) -> &str {
            "lookup"
        }
        fn description(&self) -> &str {
            "Looks up a fact. Arguments: {\"topic\": \"...\"}"
        }
        async fn call(&self, arguments: serde_json::Value) -> Result<String, BoxError> {
            Ok(match arguments["topic"].as_str() {
                Some("apples") => "Alice has 3 apples.".into(),
                Some("pears") => "Bob has 4 pears.".into(),
                other => format!("nothing is known about {other:?}"),
            })
        }
    }

    /// What a real model might reply, scripted: look up both facts, add, answer with `last`.
    fn script(last: &str) -> Arc<ScriptedChatModel> {
        Arc::new(ScriptedChatModel::new(vec![
            AssistantTurn::tool_calls(
                "I need both counts.",
                vec![
                    ToolCall::new("call-1", "lookup", json!({ "topic": "apples" })),
                    ToolCall::new("call-2", "lookup", json!({ "topic": "pears" })),
                ],
            ),
            AssistantTurn::tool_calls(
                "Now I add them.",
                vec![ToolCall::new(
                    "call-3",
                    "calculator",
                    json!({ "numbers": [3, 4] }),
                )],
            ),
            AssistantTurn::text(last),
        ]))
    }

    fn print_conversation(messages: &[Message]) {
        for m in messages {
            let who = match m.role {
                Role::System => "system",
                Role::User => "user",
                Role::Assistant => "assistant",
                Role::Tool => "tool",
            };
            let id = m.tool_call_id.as_deref().unwrap_or("");
            println!("  {who:<9} {id:<6} {}", m.content);
            for call in &m.tool_calls {
                println!(
                    "            -> {} {}({})",
                    call.id, call.name, call.arguments
                );
            }
        }
    }

    const QUESTION: &str = "How many fruits do Alice and Bob have together?";
    const ANSWER: &str = "Alice and Bob have 7 pieces of fruit together.";

    pub async fn main() -> Result<(), Box<dyn Error>> {
        let model = script(ANSWER);
        let store = Store::memory();
        let tools: Vec<Arc<dyn Tool>> = vec![Arc::new(Calculator), Arc::new(Lookup)];
        let agent = create_react_agent(
            model.clone(),
            tools.clone(),
            AgentConfig::default()
                .system_prompt("You answer questions using the tools.")
                .checkpointer(Arc::new(store.clone())),
        )?;

        let state = match agent
            .invoke(AgentState::new(QUESTION), RunConfig::execution_id("fruit"))
            .await?
        {
            Outcome::Finished(state) => state,
            other => return Err(format!("expected the run to finish, got {other:?}").into()),
        };

        println!("conversation:");
        print_conversation(&state.messages);
        println!(
            "model calls: {}, iterations: {}",
            model.call_count(),
            state.iterations
        );

        // Each step's model and tool calls are journaled on the checkpoint the step started
        // from: a step run again (after a crash) gets their results without calling again.
        println!(
            "checkpoints of execution \"fruit\" (oldest first), with the calls journaled on each:"
        );
        let mut history = store.history("fruit", HistoryQuery::default()).await?;
        history.reverse();
        for h in &history {
            let journaled: Vec<String> = store
                .writes(&h.id)
                .await?
                .iter()
                .filter_map(|w| {
                    w.metadata
                        .get("key")
                        .and_then(|k| k.as_str())
                        .map(str::to_owned)
                })
                .collect();
            println!(
                "  v{:<2} {:<9} step {} next {:<12} journaled: {}",
                h.version,
                h.node_name,
                h.metadata["step"],
                h.metadata["next"].to_string(),
                if journaled.is_empty() {
                    "-".to_owned()
                } else {
                    journaled.join(", ")
                }
            );
        }
        // The input, then agent, tools, agent, tools, agent.
        if state.final_answer() != Some(ANSWER) || history.len() != 6 {
            return Err(format!(
                "unexpected result {state:?} ({} checkpoints)",
                history.len()
            )
            .into());
        }

        // The same agent, asking before every tool call. The person approves the lookups and
        // refuses the calculator; the model is told, and answers anyway.
        println!();
        println!("with approval of tool calls:");
        let model = script("You refused the calculator, but 3 + 4 is 7: they have 7 fruits.");
        let agent = create_react_agent(
            model.clone(),
            tools,
            AgentConfig::default()
                .checkpointer(Arc::new(store.clone()))
                .approve_tool_calls(true),
        )?;
        let mut out = agent
            .invoke(
                AgentState::new(QUESTION),
                RunConfig::execution_id("fruit-approval"),
            )
            .await?;
        let mut asked = 0;
        let state = loop {
            let interrupts = match out {
                Outcome::Finished(state) => break state,
                Outcome::Interrupted { interrupts, .. } => interrupts,
            };
            let [question] = interrupts.as_slice() else {
                return Err(format!("expected one question, got {interrupts:?}").into());
            };
            asked += 1;
            let q = &question.value;
            let answer = if q["tool"] == "calculator" {
                Approval::refuse("I can add that myself")
            } else {
                Approval::approve()
            };
            println!(
                "  asked: may I call {}({}) [{}]? answer: {}",
                q["tool"].as_str().unwrap_or("?"),
                q["arguments"],
                q["call_id"].as_str().unwrap_or("?"),
                serde_json::to_string(&answer)?
            );
            out = agent
                .resume_with_command("fruit-approval", Command::resume(answer))
                .await?;
        };
        println!("  conversation:");
        print_conversation(&state.messages);
        let refused = state
            .messages
            .iter()
            .any(|m| m.content == "the user refused this tool call: I can add that myself");
        if asked != 3 || !refused || model.call_count() != 3 || state.final_answer().is_none() {
            return Err(format!("unexpected approval run {state:?} ({asked} questions)").into());
        }
        Ok(())
    }
}

#[cfg(feature = "graph")]
#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    demo::main().await
}

#[cfg(not(feature = "graph"))]
fn main() {
    eprintln!("this example needs the `graph` feature (on by default)");
}
