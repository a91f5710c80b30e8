//! The ReAct agent: model, tools, model, ... until the model answers.

use std::sync::Arc;

use serde::{Deserialize, Serialize};

use super::{AgentConfig, ChatModel, Message, Role, Tool, Toolbox};
use crate::error::BoxError;
use crate::graph::{CompiledGraph, GraphError, NodeContext, Reducible, StateGraph, END};

/// The state of a ReAct agent ([`create_react_agent`]).
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AgentState {
    /// The conversation (without the system prompt).
    pub messages: Vec<Message>,
    /// Model calls made so far in this turn.
    pub iterations: usize,
    /// Whether the agent stopped (answered, or hit the iteration limit).
    pub done: bool,
    /// Why the agent stopped without an answer, e.g. "stopped after 10 iterations".
    pub error: Option<String>,
}

impl AgentState {
    /// A fresh conversation starting with the user's `prompt`.
    pub fn new(prompt: impl Into<String>) -> Self {
        AgentState {
            messages: vec![Message::user(prompt)],
            ..AgentState::default()
        }
    }

    /// The text of the last assistant message, if the agent finished without an error.
    pub fn final_answer(&self) -> Option<&str> {
        if !self.done || self.error.is_some() {
            return None;
        }
        self.messages
            .iter()
            .rev()
            .find(|m| m.role == Role::Assistant)
            .map(|m| m.content.as_str())
    }
}

/// A conversation goes on turn after turn in one execution: invoking the agent again on an
/// execution that finished appends the new input's messages to the conversation and starts the
/// turn's count of model calls afresh.
impl Reducible for AgentState {
    /// Messages to append.
    type Update = Vec<Message>;

    fn apply(&mut self, messages: Vec<Message>) {
        self.messages.extend(messages);
    }

    fn merge_input(&mut self, input: AgentState) {
        self.apply(input.messages);
        self.iterations = 0;
        self.done = false;
        self.error = None;
    }
}

/// Builds the ReAct agent graph: node `"agent"` (one model call, appending its message), then
/// `"tools"` (running the tool calls it asked for, appending one [`Role::Tool`] message each) and
/// back to `"agent"`, until the model replies without tool calls ([`END`], `done`). After
/// [`AgentConfig::max_iterations`] model calls the agent stops with
/// `error = "stopped after N iterations"`.
///
/// The model call and each tool call are journaled tasks (see [the module](super)), and with
/// [`AgentConfig::approve_tool_calls`] node `"tools"` asks before each tool call.
///
/// Invoked again on an execution that finished, it runs a new turn of the same conversation
/// (see [`AgentState`]'s [`Reducible`] impl): `app.invoke(AgentState::new("and then?"), ...)`.
///
/// A run takes up to `2 * max_iterations` steps: raise
/// [`crate::graph::RunConfig::recursion_limit`] (100 by default) for more than 50 iterations.
///
/// Fails with [`GraphError::NoCheckpointer`] when approval is asked for without a checkpointer.
pub fn create_react_agent(
    model: Arc<dyn ChatModel>,
    tools: Vec<Arc<dyn Tool>>,
    config: AgentConfig,
) -> Result<CompiledGraph<AgentState>, GraphError> {
    let toolbox = Toolbox::new(model, tools, &config);
    let max = config.max_iterations;
    let mut g = StateGraph::<AgentState>::with_reducers();
    let tb = toolbox.clone();
    g.add_node_with_context("agent", move |mut s: AgentState, ctx: NodeContext| {
        let tb = tb.clone();
        async move {
            let reply = tb.ask(&ctx, &s.messages, true).await?;
            s.iterations += 1;
            let wants_tools = !reply.tool_calls.is_empty();
            s.messages.push(reply);
            if !wants_tools {
                s.done = true;
            } else if s.iterations >= max {
                s.done = true;
                s.error = Some(format!("stopped after {} iterations", s.iterations));
            }
            Ok::<_, BoxError>(s)
        }
    });
    let tb = toolbox;
    g.add_node_with_context("tools", move |mut s: AgentState, ctx: NodeContext| {
        let tb = tb.clone();
        async move {
            let calls = s
                .messages
                .last()
                .filter(|m| m.role == Role::Assistant)
                .map(|m| m.tool_calls.clone())
                .unwrap_or_default();
            let results = tb.run_tools(&ctx, &calls).await?;
            s.messages.extend(results);
            Ok::<_, BoxError>(s)
        }
    });
    g.add_conditional_edges(
        "agent",
        |s: &AgentState| {
            if s.done {
                END.into()
            } else {
                "tools".into()
            }
        },
    );
    g.add_edge("tools", "agent");
    g.set_entry_point("agent");
    g.compile(config.compile_config()?)
}
