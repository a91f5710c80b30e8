//! The prebuilt agents (`ckpt::prebuilt`) on the memory and sled stores, with scripted models.
#![cfg(all(feature = "graph", feature = "sled"))]

use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use ckpt::error::BoxError;
use ckpt::graph::{Command, GraphError, Outcome, RunConfig};
use ckpt::prebuilt::{
    create_planner_agent, create_react_agent, AgentConfig, AgentState, Approval, AssistantTurn,
    ChatModel, Message, PlannerState, Role, ScriptedChatModel, Tool, ToolCall, ToolSpec,
};
use ckpt::{Checkpoint, CheckpointHeader, CheckpointId, CheckpointStore, Store, Write};
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

/// The node names of an execution's checkpoints, oldest first.
async fn node_names(store: &Store, exec: &str) -> Vec<String> {
    store
        .list(exec)
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.node_name)
        .collect()
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
async fn any_model_streams_its_whole_text_as_one_token() {
    let model = ScriptedChatModel::new(vec![
        AssistantTurn::text("all at once"),
        add_call("c1", 1.0, 2.0),
        AssistantTurn::text(""),
    ]);
    let mut tokens = Vec::new();
    let mut sink = |t: &str| tokens.push(t.to_owned());
    let turn = model
        .complete_streaming(&[Message::user("hi")], &[], &mut sink)
        .await
        .unwrap();
    assert_eq!(turn, AssistantTurn::text("all at once"));
    let turn = model
        .complete_streaming(&[Message::user("hi")], &[], &mut sink)
        .await
        .unwrap();
    assert_eq!(turn.tool_calls.len(), 1);
    // An empty reply hands over nothing.
    model
        .complete_streaming(&[Message::user("hi")], &[], &mut sink)
        .await
        .unwrap();
    assert_eq!(tokens, ["all at once", "let me add"]);
}

#[test]
fn a_tools_schema_reaches_its_spec() {
    struct Schemaless;
    #[async_trait]
    impl Tool for Schemaless {
        fn name(&self) -> &str {
            "now"
        }
        fn description(&self) -> &str {
            "the time"
        }
        async fn call(&self, _: serde_json::Value) -> Result<String, BoxError> {
            Ok("noon".into())
        }
    }
    let spec = ToolSpec::of(&Schemaless);
    assert_eq!(spec, ToolSpec::new("now", "the time"));
    assert_eq!(
        spec.parameters_schema(),
        json!({"type": "object", "properties": {}})
    );
    // A spec saved before `parameters` existed still reads.
    let old: ToolSpec = serde_json::from_value(json!({"name": "a", "description": "b"})).unwrap();
    assert_eq!(old.parameters, None);
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
        // Versions are the log's sequence numbers: between two checkpoints, the step's
        // journaled calls (the model's reply, the tool's result) were written to the first.
        let versions: Vec<u64> = saved.iter().map(|c| c.version).collect();
        assert_eq!(versions, [1, 3, 5, 7], "{kind}");
        let mut journaled = Vec::new();
        for c in &saved {
            for w in store.writes(&c.id).await.unwrap() {
                assert_eq!(w.channel, "__journal__", "{kind}");
                journaled.push((c.version, w.seq, w.metadata["key"].clone()));
            }
        }
        assert_eq!(
            journaled,
            [
                (1, 2, json!("model")),
                (3, 4, json!("tool:c1")),
                (5, 6, json!("model"))
            ],
            "{kind}"
        );
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
        let nodes = node_names(&store, "crash").await;
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
        let nodes = node_names(&store, "plan").await;
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

/// How a [`Probe`] tool behaves on its first call (later calls echo).
enum FirstCall {
    /// Echoes, like every later call.
    Echo,
    /// Fails with "flaky".
    Fail,
    /// Tells the test it started, then never returns: the test drops the run there, like a
    /// process killed while the tool was in flight.
    Hang(Mutex<Option<tokio::sync::oneshot::Sender<()>>>),
}

/// A tool named `name` that returns `"<name>(<arguments>) #<call number>"` and counts its calls.
struct Probe {
    name: &'static str,
    first: FirstCall,
    calls: AtomicUsize,
}

impl Probe {
    fn new(name: &'static str, first: FirstCall) -> Arc<Self> {
        Arc::new(Probe {
            name,
            first,
            calls: AtomicUsize::new(0),
        })
    }

    fn calls(&self) -> usize {
        self.calls.load(SeqCst)
    }
}

#[async_trait]
impl Tool for Probe {
    fn name(&self) -> &str {
        self.name
    }
    fn description(&self) -> &str {
        "a probe"
    }
    async fn call(&self, arguments: serde_json::Value) -> Result<String, BoxError> {
        let n = self.calls.fetch_add(1, SeqCst) + 1;
        if n == 1 {
            match &self.first {
                FirstCall::Echo => {}
                FirstCall::Fail => return Err("flaky".into()),
                FirstCall::Hang(started) => {
                    let tx = started.lock().unwrap().take();
                    if let Some(tx) = tx {
                        let _ = tx.send(());
                    }
                    std::future::pending::<()>().await;
                }
            }
        }
        Ok(format!("{}({arguments}) #{n}", self.name))
    }
}

/// A store whose next save of a checkpoint of node `node` fails once (when armed), as if the
/// process died after the node returned and before its checkpoint was written.
struct SaveFails {
    inner: Arc<Store>,
    node: Mutex<Option<&'static str>>,
}

impl SaveFails {
    fn new(inner: Arc<Store>, node: &'static str) -> Arc<Self> {
        Arc::new(SaveFails {
            inner,
            node: Mutex::new(Some(node)),
        })
    }

    fn check(&self, cp: &Checkpoint) -> ckpt::Result<()> {
        let mut node = self.node.lock().unwrap();
        if *node == Some(cp.node_name.as_str()) {
            *node = None;
            return Err(ckpt::Error::InvalidInput(format!(
                "injected: the save of {:?} failed",
                cp.node_name
            )));
        }
        Ok(())
    }
}

#[async_trait]
impl CheckpointStore for SaveFails {
    async fn save(&self, checkpoint: Checkpoint) -> ckpt::Result<Checkpoint> {
        self.check(&checkpoint)?;
        self.inner.save(checkpoint).await
    }
    async fn save_with_parent(
        &self,
        checkpoint: Checkpoint,
        parent: &CheckpointId,
    ) -> ckpt::Result<Checkpoint> {
        self.check(&checkpoint)?;
        self.inner.save_with_parent(checkpoint, parent).await
    }
    async fn load(&self, id: &CheckpointId) -> ckpt::Result<Checkpoint> {
        self.inner.load(id).await
    }
    async fn list(&self, execution_id: &str) -> ckpt::Result<Vec<Checkpoint>> {
        self.inner.list(execution_id).await
    }
    async fn delete(&self, id: &CheckpointId) -> ckpt::Result<()> {
        self.inner.delete(id).await
    }
    async fn clear(&self, execution_id: &str) -> ckpt::Result<()> {
        self.inner.clear(execution_id).await
    }
    async fn latest(&self, execution_id: &str) -> ckpt::Result<Option<Checkpoint>> {
        self.inner.latest(execution_id).await
    }
    async fn put_writes(
        &self,
        checkpoint: &CheckpointId,
        writes: Vec<Write>,
    ) -> ckpt::Result<Vec<Write>> {
        self.inner.put_writes(checkpoint, writes).await
    }
    async fn writes(&self, checkpoint: &CheckpointId) -> ckpt::Result<Vec<Write>> {
        self.inner.writes(checkpoint).await
    }
    async fn children(&self, checkpoint: &CheckpointId) -> ckpt::Result<Vec<CheckpointHeader>> {
        self.inner.children(checkpoint).await
    }
    async fn fork(
        &self,
        checkpoint: &CheckpointId,
        new_execution: &str,
    ) -> ckpt::Result<Checkpoint> {
        self.inner.fork(checkpoint, new_execution).await
    }
}

/// A turn asking for probes `a`, `b` and `c` (call ids `c1`, `c2`, `c3`).
fn three_calls() -> AssistantTurn {
    AssistantTurn::tool_calls(
        "three tools",
        vec![
            ToolCall::new("c1", "a", json!({ "x": 1 })),
            ToolCall::new("c2", "b", json!({ "x": 2 })),
            ToolCall::new("c3", "c", json!({ "x": 3 })),
        ],
    )
}

/// The journaled task keys on a checkpoint, in the order they were written.
async fn journal_keys(store: &Store, id: &CheckpointId) -> Vec<String> {
    store
        .writes(id)
        .await
        .unwrap()
        .into_iter()
        .filter(|w| w.channel == "__journal__")
        .map(|w| w.metadata["key"].as_str().unwrap().to_owned())
        .collect()
}

fn tool_contents(s: &AgentState) -> Vec<(String, String)> {
    s.messages
        .iter()
        .filter(|m| m.role == Role::Tool)
        .map(|m| (m.tool_call_id.clone().unwrap(), m.content.clone()))
        .collect()
}

#[tokio::test]
async fn react_agent_killed_during_the_third_tool_reruns_only_that_tool() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let (tx, started) = tokio::sync::oneshot::channel();
        let (a, b) = (
            Probe::new("a", FirstCall::Echo),
            Probe::new("b", FirstCall::Echo),
        );
        let c = Probe::new("c", FirstCall::Hang(Mutex::new(Some(tx))));
        let tools: Vec<Arc<dyn Tool>> = vec![a.clone(), b.clone(), c.clone()];
        let model = Arc::new(ScriptedChatModel::new(vec![
            three_calls(),
            AssistantTurn::text("done"),
        ]));
        let config = AgentConfig::default().checkpointer(store.clone());
        let agent = create_react_agent(model.clone(), tools.clone(), config.clone()).unwrap();
        // The run is dropped while tool "c" is in flight: nothing after that point happens.
        tokio::select! {
            biased;
            _ = started => {}
            out = agent.invoke(AgentState::new("go"), RunConfig::execution_id("kill")) => {
                panic!("{kind}: the run ended while tool c hung: {out:?}")
            }
        }
        assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 1), "{kind}");
        let saved = store.list("kill").await.unwrap();
        let nodes: Vec<&str> = saved.iter().map(|c| c.node_name.as_str()).collect();
        assert_eq!(nodes, ["__input__", "agent"], "{kind}");
        // The model's reply is journaled on the input, the two finished tools on "agent".
        assert_eq!(
            journal_keys(&store, &saved[0].id).await,
            ["model"],
            "{kind}"
        );
        assert_eq!(
            journal_keys(&store, &saved[1].id).await,
            ["tool:c1", "tool:c2"],
            "{kind}"
        );

        // A new process: the same tools and model, a new agent.
        let agent = create_react_agent(model.clone(), tools, config).unwrap();
        let s = finished(agent.resume_latest("kill").await.unwrap());
        assert_eq!(
            (a.calls(), b.calls(), c.calls()),
            (1, 1, 2),
            "{kind}: only the tool in flight ran again"
        );
        assert_eq!(model.call_count(), 2, "{kind}");
        assert_eq!(
            tool_contents(&s),
            [
                ("c1".to_owned(), "a({\"x\":1}) #1".to_owned()),
                ("c2".to_owned(), "b({\"x\":2}) #1".to_owned()),
                ("c3".to_owned(), "c({\"x\":3}) #2".to_owned()),
            ],
            "{kind}"
        );
        assert_eq!(s.final_answer(), Some("done"), "{kind}");
    }
}

#[tokio::test]
async fn react_agent_model_reply_is_not_asked_again_after_a_crash_before_its_checkpoint() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let (a, b, c) = (
            Probe::new("a", FirstCall::Echo),
            Probe::new("b", FirstCall::Echo),
            Probe::new("c", FirstCall::Echo),
        );
        let tools: Vec<Arc<dyn Tool>> = vec![a.clone(), b.clone(), c.clone()];
        // Were the model asked again, the second turn would end the run without tools.
        let model = Arc::new(ScriptedChatModel::new(vec![
            three_calls(),
            AssistantTurn::text("done"),
        ]));
        let failing = SaveFails::new(store.clone(), "agent");
        let agent = create_react_agent(
            model.clone(),
            tools.clone(),
            AgentConfig::default().checkpointer(failing),
        )
        .unwrap();
        let err = agent
            .invoke(AgentState::new("go"), RunConfig::execution_id("lost"))
            .await
            .unwrap_err();
        assert!(matches!(err, GraphError::Store(_)), "{kind}: {err:?}");
        assert_eq!(model.call_count(), 1, "{kind}");

        let agent = create_react_agent(
            model.clone(),
            tools,
            AgentConfig::default().checkpointer(store.clone()),
        )
        .unwrap();
        let s = finished(agent.resume_latest("lost").await.unwrap());
        assert_eq!(
            model.call_count(),
            2,
            "{kind}: the first reply came from the journal"
        );
        assert_eq!((a.calls(), b.calls(), c.calls()), (1, 1, 1), "{kind}");
        assert_eq!(s.messages[1].content, "three tools", "{kind}");
        assert_eq!(s.final_answer(), Some("done"), "{kind}");
        let nodes = node_names(&store, "lost").await;
        assert_eq!(nodes, ["__input__", "agent", "tools", "agent"], "{kind}");
    }
}

#[tokio::test]
async fn planner_agent_model_replies_are_journaled() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let calc = Arc::new(Calculator::default());
        let model = Arc::new(ScriptedChatModel::new(vec![
            AssistantTurn::text("1. add 2 and 3"),
            add_call("c1", 2.0, 3.0),
            AssistantTurn::text("the sum is 5"),
            AssistantTurn::text("5"),
        ]));
        // The save after the first "execute" (which asked for the tool) is lost.
        let failing = SaveFails::new(store.clone(), "execute");
        let agent = create_planner_agent(
            model.clone(),
            vec![calc.clone()],
            AgentConfig::default().checkpointer(failing),
        )
        .unwrap();
        let err = agent
            .invoke(PlannerState::new("2+3"), RunConfig::execution_id("pj"))
            .await
            .unwrap_err();
        assert!(matches!(err, GraphError::Store(_)), "{kind}: {err:?}");
        assert_eq!(model.call_count(), 2, "{kind}");

        let agent = create_planner_agent(
            model.clone(),
            vec![calc.clone()],
            AgentConfig::default().checkpointer(store.clone()),
        )
        .unwrap();
        let s = finished(agent.resume_latest("pj").await.unwrap());
        assert_eq!(
            model.call_count(),
            4,
            "{kind}: no reply was asked for twice"
        );
        assert_eq!(calc.calls.load(SeqCst), 1, "{kind}");
        assert_eq!(s.results, ["the sum is 5"], "{kind}");
        assert_eq!(s.answer.as_deref(), Some("5"), "{kind}");
        assert_eq!(s.iterations, 2, "{kind}");
    }
}

fn approving(store: Arc<Store>) -> AgentConfig {
    AgentConfig::default()
        .checkpointer(store)
        .approve_tool_calls(true)
}

fn interrupted<S: std::fmt::Debug>(out: Outcome<S>) -> (Vec<String>, Vec<ckpt::graph::Interrupt>) {
    match out {
        Outcome::Interrupted {
            next, interrupts, ..
        } => (next, interrupts),
        other => panic!("expected an interrupted run, got {other:?}"),
    }
}

#[tokio::test]
async fn react_agent_approved_tool_runs_once() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let calc = Arc::new(Calculator::default());
        let model = Arc::new(ScriptedChatModel::new(vec![
            add_call("c1", 2.0, 3.0),
            AssistantTurn::text("5"),
        ]));
        let agent = create_react_agent(model.clone(), vec![calc.clone()], approving(store.clone()))
            .unwrap();
        let out = agent
            .invoke(AgentState::new("2+3?"), RunConfig::execution_id("yes"))
            .await
            .unwrap();
        let (next, pending) = interrupted(out);
        assert_eq!(next, ["tools"], "{kind}");
        assert_eq!(pending.len(), 1, "{kind}");
        assert_eq!(pending[0].node, "tools", "{kind}");
        assert_eq!(
            pending[0].value,
            json!({
                "tool": "calculator",
                "arguments": { "numbers": [2.0, 3.0] },
                "call_id": "c1"
            }),
            "{kind}"
        );
        assert_eq!(
            agent.pending_interrupts("yes").await.unwrap(),
            pending,
            "{kind}"
        );
        assert_eq!(
            calc.calls.load(SeqCst),
            0,
            "{kind}: nothing ran before the answer"
        );

        let s = finished(
            agent
                .resume_with_command("yes", Command::resume(true))
                .await
                .unwrap(),
        );
        assert_eq!(calc.calls.load(SeqCst), 1, "{kind}");
        assert_eq!(s.messages[2], Message::tool("c1", "5"), "{kind}");
        assert_eq!(s.final_answer(), Some("5"), "{kind}");
        assert_eq!(model.call_count(), 2, "{kind}");
        assert!(
            agent.pending_interrupts("yes").await.unwrap().is_empty(),
            "{kind}"
        );
    }
}

#[tokio::test]
async fn react_agent_refused_tool_never_runs_and_the_model_is_told() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let calc = Arc::new(Calculator::default());
        let model = Arc::new(ScriptedChatModel::new(vec![
            add_call("c1", 2.0, 3.0),
            AssistantTurn::text("ok, I will not add"),
        ]));
        let agent = create_react_agent(model.clone(), vec![calc.clone()], approving(store.clone()))
            .unwrap();
        let out = agent
            .invoke(AgentState::new("2+3?"), RunConfig::execution_id("no"))
            .await
            .unwrap();
        assert_eq!(interrupted(out).1.len(), 1, "{kind}");
        let s = finished(
            agent
                .resume_with_command("no", Command::resume(Approval::refuse("not today")))
                .await
                .unwrap(),
        );
        assert_eq!(calc.calls.load(SeqCst), 0, "{kind}: the tool never ran");
        let refusal = Message::tool("c1", "the user refused this tool call: not today");
        assert_eq!(s.messages[2], refusal, "{kind}");
        assert_eq!(model.calls()[1].last(), Some(&refusal), "{kind}");
        assert_eq!(s.final_answer(), Some("ok, I will not add"), "{kind}");
    }
}

#[tokio::test]
async fn react_agent_two_tool_calls_one_approved_one_refused() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let calc = Arc::new(Calculator::default());
        let model = Arc::new(ScriptedChatModel::new(vec![
            AssistantTurn::tool_calls(
                "two sums",
                vec![
                    ToolCall::new("c1", "calculator", json!({ "numbers": [1, 2] })),
                    ToolCall::new("c2", "calculator", json!({ "numbers": [3, 4] })),
                ],
            ),
            AssistantTurn::text("1 + 2 = 3"),
        ]));
        let agent = create_react_agent(model.clone(), vec![calc.clone()], approving(store.clone()))
            .unwrap();
        let out = agent
            .invoke(AgentState::new("sums"), RunConfig::execution_id("two"))
            .await
            .unwrap();
        let (_, first) = interrupted(out);
        assert_eq!(first.len(), 1, "{kind}: asked one at a time");
        assert_eq!(
            (first[0].index, &first[0].value["call_id"]),
            (0, &json!("c1")),
            "{kind}"
        );

        // The first answer runs the first tool, then the node asks about the second call.
        let out = agent
            .resume_with_command("two", Command::resume(true))
            .await
            .unwrap();
        let (next, second) = interrupted(out);
        assert_eq!(next, ["tools"], "{kind}");
        assert_eq!(second.len(), 1, "{kind}");
        assert_eq!(second[0].index, 1, "{kind}");
        assert_eq!(
            second[0].value,
            json!({ "tool": "calculator", "arguments": { "numbers": [3, 4] }, "call_id": "c2" }),
            "{kind}"
        );
        assert_ne!(second[0].id, first[0].id, "{kind}");
        assert_eq!(calc.calls.load(SeqCst), 1, "{kind}");

        // Answered as raw JSON, by id.
        let s = finished(
            agent
                .resume_with_command(
                    "two",
                    Command::resume_by_id(
                        second[0].id.clone(),
                        json!({ "approve": false, "reason": "one sum is enough" }),
                    ),
                )
                .await
                .unwrap(),
        );
        assert_eq!(calc.calls.load(SeqCst), 1, "{kind}: c1 ran once, c2 never");
        assert_eq!(
            tool_contents(&s),
            [
                ("c1".to_owned(), "3".to_owned()),
                (
                    "c2".to_owned(),
                    "the user refused this tool call: one sum is enough".to_owned()
                ),
            ],
            "{kind}"
        );
        assert_eq!(model.call_count(), 2, "{kind}");
        assert_eq!(s.final_answer(), Some("1 + 2 = 3"), "{kind}");
    }
}

#[tokio::test]
async fn react_agent_tool_error_is_journaled_as_the_tool_result() {
    let (stores, _dir) = stores().await;
    for (kind, store) in stores {
        let (flaky, b) = (
            Probe::new("a", FirstCall::Fail),
            Probe::new("b", FirstCall::Echo),
        );
        let model = Arc::new(ScriptedChatModel::new(vec![
            AssistantTurn::tool_calls(
                "",
                vec![
                    ToolCall::new("c1", "a", json!({})),
                    ToolCall::new("c2", "b", json!({})),
                ],
            ),
            AssistantTurn::text("a failed"),
        ]));
        let agent = create_react_agent(
            model.clone(),
            vec![flaky.clone(), b.clone()],
            approving(store.clone()),
        )
        .unwrap();
        let out = agent
            .invoke(AgentState::new("go"), RunConfig::execution_id("err"))
            .await
            .unwrap();
        interrupted(out);
        // Tool a fails, then the node pauses to ask about b.
        let out = agent
            .resume_with_command("err", Command::resume(Approval::approve()))
            .await
            .unwrap();
        interrupted(out);
        assert_eq!(flaky.calls(), 1, "{kind}");
        // The node runs again: a's error comes from the journal (a would succeed now).
        let s = finished(
            agent
                .resume_with_command("err", Command::resume(true))
                .await
                .unwrap(),
        );
        assert_eq!((flaky.calls(), b.calls()), (1, 1), "{kind}");
        assert_eq!(
            tool_contents(&s),
            [
                (
                    "c1".to_owned(),
                    "error: tool \"a\" failed: flaky".to_owned()
                ),
                ("c2".to_owned(), "b({}) #1".to_owned()),
            ],
            "{kind}"
        );
    }
}

#[tokio::test]
async fn approval_needs_a_checkpointer_and_unreadable_answers_refuse() {
    let model = Arc::new(ScriptedChatModel::new(Vec::new()));
    let err = create_react_agent(
        model.clone(),
        Vec::new(),
        AgentConfig::default().approve_tool_calls(true),
    )
    .err()
    .unwrap();
    assert!(matches!(err, GraphError::NoCheckpointer), "{err:?}");
    let err = create_planner_agent(
        model,
        Vec::new(),
        AgentConfig::default().approve_tool_calls(true),
    )
    .err()
    .unwrap();
    assert!(matches!(err, GraphError::NoCheckpointer), "{err:?}");

    assert_eq!(Approval::from_answer(&json!(true)), Approval::approve());
    assert_eq!(
        Approval::from_answer(&json!({ "approve": true, "note": 1 })),
        Approval::approve()
    );
    assert!(!Approval::from_answer(&json!(false)).approve);
    assert!(!Approval::from_answer(&json!({ "approve": "yes" })).approve);
    let odd = Approval::from_answer(&json!("sure"));
    assert!(!odd.approve);
    assert!(odd.reason.unwrap().contains("\"sure\""));
}
