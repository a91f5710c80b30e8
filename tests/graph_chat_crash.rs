//! A three-turn chat with the ReAct agent in one execution, killed (SIGKILL) in turn two: a
//! child process (this test binary, re-run with an env var) runs turn one, then turn two up to
//! the model call after the tool's result; the parent kills it there, continues turn two with
//! `invoke` on the same execution, then runs turn three. The tool ran once, and the
//! conversation is one continuous log.

#![cfg(all(feature = "sled", feature = "graph"))]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use async_trait::async_trait;
use ckpt::graph::RunConfig;
use ckpt::prebuilt::{
    create_react_agent, AgentConfig, AgentState, AssistantTurn, ChatModel, Message, Role, Tool,
    ToolCall, ToolSpec,
};
use ckpt::{BoxError, CheckpointStore, Store};

const STORE_ENV: &str = "CKPT_CHAT_CRASH_STORE";
const EXEC: &str = "chat";

/// Answers from the conversation alone, so that any process gives the same replies: asked
/// about the weather it calls `weather`; given a tool's result it reports it (in the child,
/// it first announces the call and hangs, to be killed there); otherwise it echoes.
struct Model {
    hang_on_tool_result: bool,
}

#[async_trait]
impl ChatModel for Model {
    async fn complete(
        &self,
        messages: &[Message],
        _: &[ToolSpec],
    ) -> Result<AssistantTurn, BoxError> {
        let last = messages.last().ok_or("no messages")?;
        match last.role {
            Role::Tool => {
                if self.hang_on_tool_result {
                    println!("model called after the tool");
                    std::future::pending::<()>().await;
                }
                Ok(AssistantTurn::text(format!(
                    "the weather is {}",
                    last.content
                )))
            }
            _ if last.content.contains("weather") => Ok(AssistantTurn::tool_calls(
                "",
                vec![ToolCall::new(
                    "w1",
                    "weather",
                    serde_json::json!({"city": "Oslo"}),
                )],
            )),
            _ => Ok(AssistantTurn::text(format!("echo: {}", last.content))),
        }
    }
}

/// Counts its calls in a file, so that calls in the killed child count too.
struct Weather {
    calls_file: std::path::PathBuf,
    calls: AtomicUsize,
}

#[async_trait]
impl Tool for Weather {
    fn name(&self) -> &str {
        "weather"
    }
    fn description(&self) -> &str {
        "the weather in a city"
    }
    async fn call(&self, _: serde_json::Value) -> Result<String, BoxError> {
        self.calls.fetch_add(1, SeqCst);
        let mut text = std::fs::read_to_string(&self.calls_file).unwrap_or_default();
        text.push('x');
        std::fs::write(&self.calls_file, text)?;
        Ok("sunny".into())
    }
}

fn agent(
    store: Arc<dyn CheckpointStore>,
    dir: &Path,
    hang: bool,
) -> ckpt::graph::CompiledGraph<AgentState> {
    let tool = Arc::new(Weather {
        calls_file: dir.join("tool-calls"),
        calls: AtomicUsize::new(0),
    });
    create_react_agent(
        Arc::new(Model {
            hang_on_tool_result: hang,
        }),
        vec![tool],
        AgentConfig::default().checkpointer(store),
    )
    .unwrap()
}

/// The child half: only does anything when started by the test below.
#[tokio::test]
async fn chat_child() {
    let Ok(dir) = std::env::var(STORE_ENV) else {
        return;
    };
    let dir = Path::new(&dir);
    let store: Arc<dyn CheckpointStore> =
        Arc::new(Store::open(dir.join("db").to_str().unwrap()).await.unwrap());
    let app = agent(store, dir, true);
    let config = RunConfig::execution_id(EXEC);
    app.invoke(AgentState::new("hello"), config.clone())
        .await
        .unwrap();
    println!("turn one done");
    // Hangs in its second model call; killed there.
    app.invoke(AgentState::new("what is the weather?"), config)
        .await
        .unwrap();
}

#[tokio::test]
async fn three_turn_chat_resumes_after_a_kill_in_turn_two() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["--exact", "chat_child", "--nocapture", "--test-threads=1"])
        .env(STORE_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut lines = BufReader::new(stdout).lines();
    let mut seen = Vec::new();
    for line in lines.by_ref() {
        let line = line.unwrap();
        seen.push(line.clone());
        if line.ends_with("model called after the tool") {
            break;
        }
    }
    assert!(
        seen.iter().any(|l| l.ends_with("turn one done")),
        "the child did not get to turn two: {seen:?}"
    );
    // SIGKILL: no destructor, no flush.
    child.kill().unwrap();
    child.wait().unwrap();
    let calls_file = dir.path().join("tool-calls");
    assert_eq!(std::fs::read_to_string(&calls_file).unwrap(), "x");

    let store: Arc<dyn CheckpointStore> = Arc::new(
        Store::open(dir.path().join("db").to_str().unwrap())
            .await
            .unwrap(),
    );
    let app = agent(store.clone(), dir.path(), false);
    let config = RunConfig::execution_id(EXEC);
    // Turn two did not finish: invoking continues it (this input is not merged).
    let two = app
        .invoke(AgentState::new("not merged"), config.clone())
        .await
        .unwrap();
    assert_eq!(two.state().final_answer(), Some("the weather is sunny"));
    assert_eq!(
        std::fs::read_to_string(&calls_file).unwrap(),
        "x",
        "the tool's result was in the log: it did not run again"
    );
    let three = app.invoke(AgentState::new("thanks"), config).await.unwrap();
    let s = three.state();
    assert_eq!(s.final_answer(), Some("echo: thanks"));
    let transcript: Vec<(Role, &str)> = s
        .messages
        .iter()
        .map(|m| (m.role, m.content.as_str()))
        .collect();
    assert_eq!(
        transcript,
        [
            (Role::User, "hello"),
            (Role::Assistant, "echo: hello"),
            (Role::User, "what is the weather?"),
            (Role::Assistant, ""),
            (Role::Tool, "sunny"),
            (Role::Assistant, "the weather is sunny"),
            (Role::User, "thanks"),
            (Role::Assistant, "echo: thanks"),
        ]
    );
    assert_eq!(s.iterations, 1, "the count of model calls is per turn");

    // One log: three runs, each starting with its input checkpoint, each a child of the one
    // before; turn two's checkpoints come from two runs (the killed one and its continuation).
    let cps = store.list(EXEC).await.unwrap();
    let nodes: Vec<&str> = cps.iter().map(|c| c.node_name.as_str()).collect();
    assert_eq!(
        nodes,
        [
            "__input__",
            "agent",
            "__input__",
            "agent",
            "tools",
            "agent",
            "__input__",
            "agent"
        ]
    );
    for pair in cps.windows(2) {
        assert_eq!(pair[1].parent.as_ref(), Some(&pair[0].id));
    }
    let runs: Vec<&str> = cps
        .iter()
        .map(|c| c.metadata["run_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        runs[2], runs[4],
        "the killed run saved turn two's input and tools step"
    );
    assert_ne!(runs[4], runs[5], "its continuation saved the last step");
    assert_eq!(runs[6], runs[7]);
    assert_ne!(runs[5], runs[6]);
}
