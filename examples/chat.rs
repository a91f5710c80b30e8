//! A multi-turn chat in ONE execution: the prebuilt ReAct agent with a deterministic model (no
//! network) and one tool, on the durable sled store in a temp dir. Each `invoke` on the
//! finished execution `chat-1` is a new turn: its message is appended to the conversation
//! (`AgentState`'s `Reducible::merge_input`), so turn three can answer from turns one and two.
//! Then the execution's log: one continuous chain with an `__input__` checkpoint per turn, each
//! checkpoint naming the run (`run_id`) that saved it, and `get_state_history`.
//!
//! ```sh
//! cargo run --example chat
//! ```

#[cfg(all(feature = "graph", feature = "sled"))]
mod demo {
    use std::error::Error;
    use std::sync::Arc;

    use async_trait::async_trait;
    use ckpt::graph::{Outcome, RunConfig, INPUT};
    use ckpt::prebuilt::{
        create_react_agent, AgentConfig, AgentState, AssistantTurn, ChatModel, Message, Role, Tool,
        ToolCall, ToolSpec,
    };
    use ckpt::{BoxError, CheckpointStore, HistoryQuery, Store};
    use serde_json::json;

    /// Answers from the conversation alone: greets a name it is told, asks the `multiply`
    /// tool for "A times B", reports a tool's result, and recalls the name and the last result.
    struct Model;

    #[async_trait]
    impl ChatModel for Model {
        async fn complete(
            &self,
            messages: &[Message],
            _tools: &[ToolSpec],
        ) -> Result<AssistantTurn, BoxError> {
            let last = messages.last().ok_or("the conversation is empty")?;
            let said = |role: Role| messages.iter().filter(move |m| m.role == role);
            let name = said(Role::User)
                .find_map(|m| m.content.split("I'm ").nth(1))
                .map(|rest| rest.trim_end_matches(['.', '!']));
            let text = last.content.as_str();
            if last.role == Role::Tool {
                return Ok(AssistantTurn::text(format!("That makes {text}.")));
            }
            if let Some((a, b)) = text.split_once(" times ") {
                let number = |s: &str| s.chars().filter(char::is_ascii_digit).collect::<String>();
                let (a, b) = (number(a).parse::<i64>()?, number(b).parse::<i64>()?);
                let call = ToolCall::new("call-1", "multiply", json!({ "a": a, "b": b }));
                return Ok(AssistantTurn::tool_calls("", vec![call]));
            }
            if text.contains("my name") {
                let product = said(Role::Tool).next_back().map(|m| m.content.as_str());
                return Ok(AssistantTurn::text(format!(
                    "You are {}, and the last thing I computed was {}.",
                    name.unwrap_or("a stranger"),
                    product.unwrap_or("nothing")
                )));
            }
            Ok(AssistantTurn::text(match name {
                Some(name) => format!("Nice to meet you, {name}!"),
                None => format!("You said: {text}"),
            }))
        }
    }

    /// Multiplies `{"a": .., "b": ..}`.
    struct Multiply;

    #[async_trait]
    impl Tool for Multiply {
        fn name(&self) -> &str {
            "multiply"
        }
        fn description(&self) -> &str {
            "Multiplies two integers. Arguments: {\"a\": 1, \"b\": 2}"
        }
        async fn call(&self, arguments: serde_json::Value) -> Result<String, BoxError> {
            let a = arguments["a"].as_i64().ok_or("a is not an integer")?;
            let b = arguments["b"].as_i64().ok_or("b is not an integer")?;
            Ok(a.checked_mul(b).ok_or("overflow")?.to_string())
        }
    }

    const TURNS: [&str; 3] = [
        "Hello, I'm Ada.",
        "What is 12 times 7?",
        "Do you remember my name, and what you computed?",
    ];

    pub async fn main() -> Result<(), Box<dyn Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("db");
        let store = Store::open(path.to_str().ok_or("temp dir path is not UTF-8")?).await?;
        let checkpointer: Arc<dyn CheckpointStore> = Arc::new(store.clone());
        let app = create_react_agent(
            Arc::new(Model),
            vec![Arc::new(Multiply)],
            AgentConfig::default().checkpointer(checkpointer),
        )?;

        let mut last = AgentState::default();
        for (i, prompt) in TURNS.iter().enumerate() {
            let config = RunConfig::execution_id("chat-1");
            last = match app.invoke(AgentState::new(*prompt), config).await? {
                Outcome::Finished(state) => state,
                other => return Err(format!("turn {} did not finish: {other:?}", i + 1).into()),
            };
            println!("turn {}: user      {prompt}", i + 1);
            let answer = last
                .final_answer()
                .ok_or("the agent stopped without an answer")?;
            println!("        assistant {answer}");
        }
        println!("conversation: {} messages", last.messages.len());

        // One execution, one log: each checkpoint a child of the one before, and each turn
        // opening with its input checkpoint. (The versions in between are the model and tool
        // calls journaled on each step's base checkpoint: writes, not checkpoints.)
        let cps = store.list("chat-1").await?;
        println!("execution chat-1, oldest first:");
        for cp in &cps {
            let run_id = cp.metadata["run_id"].as_str().unwrap_or("?");
            let parent = cp.parent.as_ref().map(|p| format!("v{}", p.version()));
            println!(
                "  v{:<2} {:<9} step {} run {} parent {:<3} journaled calls {}",
                cp.version,
                cp.node_name,
                cp.metadata["step"],
                &run_id[..run_id.len().min(8)],
                parent.as_deref().unwrap_or("-"),
                store.writes(&cp.id).await?.len()
            );
        }
        let inputs = cps.iter().filter(|c| c.node_name == INPUT).count();
        let chained = cps
            .windows(2)
            .all(|w| w[1].parent.as_ref() == Some(&w[0].id));
        println!("{inputs} input checkpoints; one chain: {chained}");

        println!("get_state_history(chat-1), newest first:");
        for snap in app
            .get_state_history("chat-1", HistoryQuery::default())
            .await?
        {
            let last = snap.values.messages.last();
            println!(
                "  {:<9} next {:<10} messages {}, last: {:?}",
                snap.node,
                format!("{:?}", snap.next),
                snap.values.messages.len(),
                last.map_or("", |m| m.content.as_str())
            );
        }

        let recalled = last
            .final_answer()
            .is_some_and(|a| a.contains("Ada") && a.contains("84"));
        if inputs != 3 || !chained || !recalled || last.messages.len() != 8 {
            return Err(format!("unexpected chat: {last:?} ({inputs} inputs)").into());
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
