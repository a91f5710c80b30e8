//! A ReAct agent from `ckpt::prebuilt`, with a scripted model (no network) and two tools, on the
//! in-memory store: prints the conversation and the checkpoint saved after every step.
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
    use ckpt::graph::{Outcome, RunConfig};
    use ckpt::prebuilt::{
        create_react_agent, AgentConfig, AgentState, AssistantTurn, Role, ScriptedChatModel, Tool,
        ToolCall,
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

    pub async fn main() -> Result<(), Box<dyn Error>> {
        // What a real model might reply, scripted: look up both facts, add, answer.
        let model = Arc::new(ScriptedChatModel::new(vec![
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
            AssistantTurn::text("Alice and Bob have 7 pieces of fruit together."),
        ]));
        let store = Store::memory();
        let agent = create_react_agent(
            model.clone(),
            vec![Arc::new(Calculator), Arc::new(Lookup)],
            AgentConfig::default()
                .system_prompt("You answer questions using the tools.")
                .checkpointer(Arc::new(store.clone())),
        )?;

        let state = match agent
            .invoke(
                AgentState::new("How many fruits do Alice and Bob have together?"),
                RunConfig::execution_id("fruit"),
            )
            .await?
        {
            Outcome::Finished(state) => state,
            other => return Err(format!("expected the run to finish, got {other:?}").into()),
        };

        println!("conversation:");
        for m in &state.messages {
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
        println!(
            "model calls: {}, iterations: {}",
            model.call_count(),
            state.iterations
        );

        println!("checkpoints of execution \"fruit\" (oldest first):");
        let mut history = store.history("fruit", HistoryQuery::default()).await?;
        history.reverse();
        for h in &history {
            println!(
                "  v{} {:<6} step {} next {}",
                h.version, h.node_name, h.metadata["step"], h.metadata["next"]
            );
        }

        if state.final_answer() != Some("Alice and Bob have 7 pieces of fruit together.")
            || history.len() != 5
        {
            return Err(format!("unexpected result {state:?}").into());
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
