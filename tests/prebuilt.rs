//! The prebuilt agents (`ckpt::prebuilt`) on the memory and sled stores, with scripted models.
#![cfg(all(feature = "graph", feature = "sled"))]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;

use async_trait::async_trait;
use ckpt::error::BoxError;
use ckpt::graph::{GraphError, Outcome, RunConfig};
use ckpt::prebuilt::{
    create_planner_agent, create_react_agent, AgentConfig, AgentState, AssistantTurn, Message,
    PlannerState, Role, ScriptedChatModel, Tool, ToolCall,
};
use ckpt::Store;
use serde_json::json;
use tempfile::TempDir;

/// Adds the numbers in `{"numbers": [..]}`; counts its calls.
#[derive(Default)]
struct Calculator {
    calls: AtomicUsize,
}

#[async_trait]
impl Tool for Calculator {
    fn name(&self) -> &str {
        "calculator"
    }
    fn description(&self) -> &str {
        "adds the numbers in {\"numbers\": [...]}"
    }
    async fn call(&self, arguments: serde_json::Value) -> Result<String, BoxError> {
        self.calls.fetch_add(1, SeqCst);
        let nums = arguments["numbers"]
            .as_array()
            .ok_or("expected {\"numbers\": [...]}")?;
        let mut sum = 0.0;
        for n in nums {
            sum += n.as_f64().ok_or("not a number")?;
        }
        Ok(sum.to_string())
    }
}

fn add_call(id: &str, a: f64, b: f64) -> AssistantTurn {
    AssistantTurn::tool_calls(
        "let me add",
        vec![ToolCall::new(
            id,
            "calculator",
            json!({ "numbers": [a, b] }),
        )],
    )
}

async fn stores() -> (Vec<(&'static str, Arc<Store>)>, TempDir) {
    let dir = TempDir::new().unwrap();
    let sled = Store::open(dir.path().join("db").to_str().unwrap())
        .await
        .unwrap();
    (
        vec![
            ("memory", Arc::new(Store::memory())),
            ("sled", Arc::new(sled)),
        ],
        dir,
    )
}

fn finished<S: std::fmt::Debug>(out: Outcome<S>) -> S {
    match out {
        Outcome::Finished(s) => s,
        other => panic!("expected a finished run, got {other:?}"),
    }
}

#[tokio::test]
async fn react_agent_calls_a_tool_then_answers() {
    let model = Arc::new(ScriptedChatModel::new(vec![
        add_call("c1", 2.0, 3.0),
        AssistantTurn::text("2 + 3 = 5"),
    ]));
    let calc = Arc::new(Calculator::default());
    let agent = create_react_agent(
        model.clone(),
        vec![calc.clone()],
        AgentConfig::default().system_prompt("You add numbers."),
    )
    .unwrap();
    let s = finished(
        agent
            .invoke(
                AgentState::new("What is 2 + 3?"),
                RunConfig::execution_id("r1"),
            )
            .await
            .unwrap(),
    );
    let roles: Vec<Role> = s.messages.iter().map(|m| m.role).collect();
    assert_eq!(
        roles,
        [Role::User, Role::Assistant, Role::Tool, Role::Assistant]
    );
    assert_eq!(s.messages[1].tool_calls[0].name, "calculator");
    assert_eq!(s.messages[2], Message::tool("c1", "5"));
    assert_eq!(s.final_answer(), Some("2 + 3 = 5"));
    assert_eq!((s.iterations, s.done, s.error.as_deref()), (2, true, None));
    assert_eq!(calc.calls.load(SeqCst), 1);
    let calls = model.calls();
    assert_eq!(calls.len(), 2);
    // The system prompt comes first, and the second call saw the tool result.
    assert_eq!(calls[0][0], Message::system("You add numbers."));
    assert_eq!(calls[1].last(), Some(&Message::tool("c1", "5")));
    assert_eq!(calls[1].len(), 4);
}

#[tokio::test]
async fn react_agent_stops_at_max_iterations() {
    let model = Arc::new(ScriptedChatModel::new(
        (0..10)
            .map(|i| add_call(&format!("c{i}"), 1.0, 1.0))
            .collect(),
    ));
    let calc = Arc::new(Calculator::default());
    let agent = create_react_agent(
        model.clone(),
        vec![calc.clone()],
        AgentConfig::default().max_iterations(3),
    )
    .unwrap();
    let s = finished(
        agent
            .invoke(AgentState::new("loop"), RunConfig::execution_id("r2"))
            .await
            .unwrap(),
    );
    assert_eq!(model.call_count(), 3);
    assert_eq!(calc.calls.load(SeqCst), 2);
    assert!(s.done);
    assert_eq!(s.error.as_deref(), Some("stopped after 3 iterations"));
    assert_eq!(s.final_answer(), None);
}

#[tokio::test]
async fn react_agent_reports_unknown_and_failing_tools_and_continues() {
    let model = Arc::new(ScriptedChatModel::new(vec![
        AssistantTurn::tool_calls(
            "",
            vec![
                ToolCall::new("c1", "weather", json!({})),
                ToolCall::new("c2", "calculator", json!({ "oops": 1 })),
            ],
        ),
        AssistantTurn::text("sorry, I cannot do that"),
    ]));
    let agent = create_react_agent(
        model.clone(),
        vec![Arc::new(Calculator::default())],
        AgentConfig::default(),
    )
    .unwrap();
    let s = finished(
        agent
            .invoke(AgentState::new("weather?"), RunConfig::execution_id("r3"))
            .await
            .unwrap(),
    );
    assert_eq!(s.messages.len(), 5);
    let (unknown, failed) = (&s.messages[2], &s.messages[3]);
    assert_eq!(unknown.role, Role::Tool);
    assert_eq!(unknown.tool_call_id.as_deref(), Some("c1"));
    assert!(
        unknown.content.contains("unknown tool \"weather\""),
        "{unknown:?}"
    );
    assert!(unknown.content.contains("calculator"), "{unknown:?}");
    assert_eq!(failed.tool_call_id.as_deref(), Some("c2"));
    assert!(
        failed.content.contains("expected {\"numbers\""),
        "{failed:?}"
    );
    assert_eq!(s.final_answer(), Some("sorry, I cannot do that"));
    assert_eq!(model.call_count(), 2);
}

#[tokio::test]
async fn react_agent_checkpoints_every_step() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let model = Arc::new(ScriptedChatModel::new(vec![
            add_call("c1", 2.0, 3.0),
            AssistantTurn::text("5"),
        ]));
        let agent = create_react_agent(
            model,
            vec![Arc::new(Calculator::default())],
            AgentConfig::default().checkpointer(store.clone()),
        )
        .unwrap();
        let s = finished(
            agent
                .invoke(AgentState::new("2+3?"), RunConfig::execution_id("cp"))
                .await
                .unwrap(),
        );
        let saved = store.list("cp").await.unwrap();
        let nodes: Vec<&str> = saved.iter().map(|c| c.node_name.as_str()).collect();
        assert_eq!(nodes, ["__input__", "agent", "tools", "agent"], "{kind}");
        let versions: Vec<u64> = saved.iter().map(|c| c.version).collect();
        assert_eq!(versions, [1, 2, 3, 4], "{kind}");
        let last: AgentState = saved[3].state().unwrap();
        assert_eq!(last, s, "{kind}");
        let mid: AgentState = saved[2].state().unwrap();
        assert_eq!(mid.messages.len(), 3, "{kind}");
        assert_eq!(
            mid.messages[1].tool_calls[0].arguments,
            json!({"numbers": [2.0, 3.0]})
        );
    }
}

#[tokio::test]
async fn react_agent_crash_then_resume_latest_runs_tools_once() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let calc = Arc::new(Calculator::default());
        // One turn only: the second model call fails, like a crashed model server.
        let first = Arc::new(ScriptedChatModel::new(vec![add_call("c1", 20.0, 22.0)]));
        let agent = create_react_agent(
            first,
            vec![calc.clone()],
            AgentConfig::default().checkpointer(store.clone()),
        )
        .unwrap();
        let err = agent
            .invoke(AgentState::new("20+22?"), RunConfig::execution_id("crash"))
            .await
            .unwrap_err();
        match &err {
            GraphError::Node { node, source } => {
                assert_eq!(node, "agent", "{kind}");
                assert!(
                    source.to_string().contains("no more turns"),
                    "{kind}: {source}"
                );
            }
            other => panic!("{kind}: expected a node error, got {other:?}"),
        }
        assert_eq!(
            store.list("crash").await.unwrap().len(),
            3,
            "{kind}: input, agent, tools"
        );

        let second = Arc::new(ScriptedChatModel::new(vec![AssistantTurn::text("42")]));
        let agent = create_react_agent(
            second.clone(),
            vec![calc.clone()],
            AgentConfig::default().checkpointer(store.clone()),
        )
        .unwrap();
        let s = finished(agent.resume_latest("crash").await.unwrap());
        assert_eq!(s.final_answer(), Some("42"), "{kind}");
        assert_eq!(calc.calls.load(SeqCst), 1, "{kind}: the tool ran once");
        assert_eq!(second.call_count(), 1, "{kind}");
        assert_eq!(
            second.calls()[0].last(),
            Some(&Message::tool("c1", "42")),
            "{kind}"
        );
        let nodes: Vec<String> = store
            .list("crash")
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.node_name)
            .collect();
        assert_eq!(nodes, ["__input__", "agent", "tools", "agent"], "{kind}");
    }
}

#[tokio::test]
async fn planner_agent_runs_a_two_step_plan() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let calc = Arc::new(Calculator::default());
        let model = Arc::new(ScriptedChatModel::new(vec![
            AssistantTurn::text("1. add 2 and 3\n2. double it"),
            add_call("c1", 2.0, 3.0),
            AssistantTurn::text("the sum is 5"),
            AssistantTurn::text("doubled: 10"),
            AssistantTurn::text("The answer is 10."),
        ]));
        let agent = create_planner_agent(
            model.clone(),
            vec![calc.clone()],
            AgentConfig::default().checkpointer(store.clone()),
        )
        .unwrap();
        let s: PlannerState = finished(
            agent
                .invoke(
                    PlannerState::new("double the sum of 2 and 3"),
                    RunConfig::execution_id("plan"),
                )
                .await
                .unwrap(),
        );
        assert_eq!(s.steps, ["add 2 and 3", "double it"], "{kind}");
        assert_eq!(s.results, ["the sum is 5", "doubled: 10"], "{kind}");
        assert_eq!(s.answer.as_deref(), Some("The answer is 10."), "{kind}");
        assert!(s.done && s.error.is_none(), "{kind}");
        assert_eq!(s.iterations, 3, "{kind}");
        assert_eq!(calc.calls.load(SeqCst), 1, "{kind}");
        assert_eq!(model.remaining(), 0, "{kind}");
        // The step after the tool call saw its result; step 2 was sent as a user message.
        let calls = model.calls();
        assert_eq!(calls[2].last(), Some(&Message::tool("c1", "5")), "{kind}");
        assert!(calls[3]
            .last()
            .unwrap()
            .content
            .contains("step 2 of 2: double it"));
        let nodes: Vec<String> = store
            .list("plan")
            .await
            .unwrap()
            .into_iter()
            .map(|c| c.node_name)
            .collect();
        assert_eq!(
            nodes,
            [
                "__input__",
                "plan",
                "execute",
                "tools",
                "execute",
                "execute",
                "answer"
            ],
            "{kind}"
        );
    }
}

#[tokio::test]
async fn planner_agent_stops_at_max_iterations() {
    let model = Arc::new(ScriptedChatModel::new(vec![
        AssistantTurn::text("a\nb\nc"),
        AssistantTurn::text("did a"),
        AssistantTurn::text("did b"),
        AssistantTurn::text("partial answer"),
    ]));
    let agent = create_planner_agent(
        model.clone(),
        Vec::new(),
        AgentConfig::default().max_iterations(2),
    )
    .unwrap();
    let s = finished(
        agent
            .invoke(PlannerState::new("abc"), RunConfig::execution_id("p2"))
            .await
            .unwrap(),
    );
    assert_eq!(s.results, ["did a", "did b"]);
    assert_eq!(s.error.as_deref(), Some("stopped after 2 iterations"));
    assert_eq!(s.answer.as_deref(), Some("partial answer"));
    assert_eq!(model.call_count(), 4);
}
