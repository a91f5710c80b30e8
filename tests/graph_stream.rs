//! Streaming modes of the graph runtime (`RunConfig::stream_modes`): whole values after each
//! step, per-task updates, custom events from nodes, and model tokens, over the bounded
//! channel, on the memory and sled stores.
#![cfg(all(feature = "graph", feature = "sled"))]

#[macro_use]
mod common;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use ckpt::graph::{
    reduce, CompileConfig, GraphEvent, NodeContext, Reducible, RunConfig, SendTo, StateGraph,
    StreamMode, END,
};
use ckpt::prebuilt::{
    create_react_agent, AgentConfig, AgentState, AssistantTurn, ChatModel, Message, ToolSpec,
};
use ckpt::{BoxError, CheckpointStore};
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
struct Tally {
    items: Vec<u32>,
    squares: Vec<u32>,
}

impl Reducible for Tally {
    type Update = Vec<u32>;
    fn apply(&mut self, squares: Vec<u32>) {
        reduce::append(&mut self.squares, squares);
    }
}

/// `start` emits a custom event per item and sends one `square` task per item; `square`
/// returns its square as an update; then END.
fn graph(store: &Arc<dyn CheckpointStore>) -> ckpt::graph::CompiledGraph<Tally> {
    let mut g = StateGraph::<Tally>::new();
    g.add_node_with_context("start", |s: Tally, ctx: NodeContext| async move {
        for i in &s.items {
            ctx.emit(&serde_json::json!({ "planned": i })).await;
        }
        Ok::<_, std::io::Error>(s)
    });
    g.add_send_edges("start", |s: &Tally| {
        s.items.iter().map(|i| SendTo::new("square", i)).collect()
    });
    g.add_send_node("square", |i: u32, _ctx: NodeContext| async move {
        Ok::<_, std::io::Error>(vec![i * i])
    });
    g.add_edge("square", END);
    g.set_entry_point("start");
    g.compile(CompileConfig::default().checkpointer(store.clone()))
        .unwrap()
}

async fn collect<S: Clone + Send + 'static>(
    stream: ckpt::graph::GraphStream<S>,
) -> Vec<GraphEvent<S>> {
    stream
        .map(|e| e.expect("no error"))
        .collect::<Vec<_>>()
        .await
}

on_both_stores!(
    values_mode_streams_the_state_after_each_step,
    updates_mode_streams_each_tasks_output,
    custom_events_come_from_nodes,
    modes_combine_and_a_slow_consumer_loses_nothing,
    model_tokens_stream_from_the_react_agent,
);

async fn values_mode_streams_the_state_after_each_step(store: Arc<dyn CheckpointStore>) {
    let app = graph(&store);
    let input = Tally {
        items: vec![1, 2, 3],
        squares: vec![],
    };
    let config = RunConfig::execution_id("values").stream_modes([StreamMode::Values]);
    let events = collect(app.stream(input.clone(), config)).await;
    let done = Tally {
        items: vec![1, 2, 3],
        squares: vec![1, 4, 9],
    };
    assert_eq!(
        events,
        [
            GraphEvent::Values {
                step: 0,
                state: input.clone()
            },
            GraphEvent::Values {
                step: 1,
                state: input
            },
            GraphEvent::Values {
                step: 2,
                state: done.clone()
            },
            GraphEvent::Finished { state: done },
        ]
    );
}

async fn updates_mode_streams_each_tasks_output(store: Arc<dyn CheckpointStore>) {
    let app = graph(&store);
    let input = Tally {
        items: vec![3, 4],
        squares: vec![],
    };
    let config = RunConfig::execution_id("updates").stream_modes([StreamMode::Updates]);
    let events = collect(app.stream(input, config)).await;
    let mut updates: Vec<(String, String, u64, serde_json::Value)> = events
        .iter()
        .filter_map(|e| match e {
            GraphEvent::Update {
                node,
                task,
                step,
                update,
            } => Some((node.clone(), task.clone(), *step, update.clone())),
            _ => None,
        })
        .collect();
    // The first is the whole state `start` returned; the two tasks finish in any order.
    assert_eq!(updates[0].0, "start");
    assert_eq!(
        updates[0].3,
        serde_json::json!({"items": [3, 4], "squares": []})
    );
    updates[1..].sort_by(|a, b| a.1.cmp(&b.1));
    assert_eq!(
        updates[1..],
        [
            (
                "square".into(),
                "square[0]".into(),
                2,
                serde_json::json!([9])
            ),
            (
                "square".into(),
                "square[1]".into(),
                2,
                serde_json::json!([16])
            ),
        ]
    );
    assert_eq!(events.len(), 4, "three updates and the end: {events:?}");
    assert!(matches!(events.last(), Some(GraphEvent::Finished { .. })));
}

async fn custom_events_come_from_nodes(store: Arc<dyn CheckpointStore>) {
    let app = graph(&store);
    let input = Tally {
        items: vec![5, 6],
        squares: vec![],
    };
    let config = RunConfig::execution_id("custom").stream_modes([StreamMode::Custom]);
    let events = collect(app.stream(input.clone(), config)).await;
    let custom: Vec<(String, u64, serde_json::Value)> = events
        .iter()
        .filter_map(|e| match e {
            GraphEvent::Custom {
                node, step, value, ..
            } => Some((node.clone(), *step, value.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        custom,
        [
            ("start".into(), 1, serde_json::json!({"planned": 5})),
            ("start".into(), 1, serde_json::json!({"planned": 6})),
        ]
    );
    assert_eq!(events.len(), 3);
    // Without the mode (the default), emitting does nothing.
    let events = collect(app.stream(input, RunConfig::execution_id("quiet"))).await;
    assert!(events
        .iter()
        .all(|e| !matches!(e, GraphEvent::Custom { .. })));
    assert!(events
        .iter()
        .any(|e| matches!(e, GraphEvent::NodeStart { .. })));
}

async fn modes_combine_and_a_slow_consumer_loses_nothing(store: Arc<dyn CheckpointStore>) {
    let app = graph(&store);
    let items: Vec<u32> = (0..20).collect();
    let input = Tally {
        items: items.clone(),
        squares: vec![],
    };
    let config = RunConfig::execution_id("slow").buffer(1).stream_modes([
        StreamMode::Values,
        StreamMode::Updates,
        StreamMode::Custom,
        StreamMode::Debug,
    ]);
    let mut stream = app.stream(input, config);
    let mut events = Vec::new();
    while let Some(e) = stream.next().await {
        tokio::time::sleep(Duration::from_millis(1)).await;
        events.push(e.unwrap());
    }
    let count = |f: fn(&GraphEvent<Tally>) -> bool| events.iter().filter(|e| f(e)).count();
    assert_eq!(count(|e| matches!(e, GraphEvent::Values { .. })), 3);
    assert_eq!(count(|e| matches!(e, GraphEvent::Custom { .. })), 20);
    assert_eq!(count(|e| matches!(e, GraphEvent::Update { .. })), 21);
    assert_eq!(count(|e| matches!(e, GraphEvent::NodeStart { .. })), 21);
    assert_eq!(count(|e| matches!(e, GraphEvent::NodeEnd { .. })), 21);
    assert_eq!(
        count(|e| matches!(e, GraphEvent::CheckpointSaved { .. })),
        3
    );
    let Some(GraphEvent::Finished { state }) = events.last() else {
        panic!("did not finish: {:?}", events.last())
    };
    let squares: Vec<u32> = items.iter().map(|i| i * i).collect();
    assert_eq!(state.squares, squares);
}

/// Streams its reply in three pieces.
struct Streaming;

#[async_trait]
impl ChatModel for Streaming {
    async fn complete(&self, _: &[Message], _: &[ToolSpec]) -> Result<AssistantTurn, BoxError> {
        Ok(AssistantTurn::text("Hello, world!"))
    }
    async fn complete_streaming(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        on_token: &mut (dyn for<'t> FnMut(&'t str) + Send),
    ) -> Result<AssistantTurn, BoxError> {
        for piece in ["Hello", ", world", "!"] {
            on_token(piece);
        }
        self.complete(messages, tools).await
    }
}

async fn model_tokens_stream_from_the_react_agent(store: Arc<dyn CheckpointStore>) {
    let agent = create_react_agent(
        Arc::new(Streaming),
        vec![],
        AgentConfig::default().checkpointer(store.clone()),
    )
    .unwrap();
    let config = RunConfig::execution_id("tokens").stream_modes([StreamMode::Tokens]);
    let events = collect(agent.stream(AgentState::new("hi"), config)).await;
    let tokens: Vec<(&str, &str)> = events
        .iter()
        .filter_map(|e| match e {
            GraphEvent::Token { node, text, .. } => Some((node.as_str(), text.as_str())),
            _ => None,
        })
        .collect();
    assert_eq!(
        tokens,
        [("agent", "Hello"), ("agent", ", world"), ("agent", "!")]
    );
    let Some(GraphEvent::Finished { state }) = events.last() else {
        panic!("did not finish")
    };
    assert_eq!(state.final_answer(), Some("Hello, world!"));
    assert_eq!(events.len(), 4);
}
