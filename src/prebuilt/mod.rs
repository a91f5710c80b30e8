//! Prebuilt agents on top of the durable graph runtime ([`crate::graph`]).
//!
//! Bring a [`ChatModel`] (anything that turns a conversation into an [`AssistantTurn`]) and some
//! [`Tool`]s, and get a compiled, checkpointable graph:
//!
//! - [`create_react_agent`]: the ReAct loop. Node `"agent"` asks the model; when it asks for tools,
//!   node `"tools"` runs them and the loop goes back to `"agent"`, until the model answers without
//!   tool calls or [`AgentConfig::max_iterations`] model calls were made.
//! - [`create_planner_agent`]: plan-and-execute. Node `"plan"` asks the model for a plan (one step
//!   per line), node `"execute"` carries out one step at a time (with node `"tools"` for the tool
//!   calls of a step), and node `"answer"` asks the model for the final answer.
//!
//! With [`AgentConfig::checkpointer`], a checkpoint is saved after every node, so an agent that
//! crashed can be continued with [`crate::graph::CompiledGraph::resume_latest`] without re-running
//! the tools that already ran. [`ScriptedChatModel`] replays a fixed script (for tests and
//! examples); no network model is included.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! use std::sync::Arc;
//! use ckpt::graph::RunConfig;
//! use ckpt::prebuilt::{create_react_agent, AgentConfig, AgentState, AssistantTurn, ScriptedChatModel};
//!
//! let model = Arc::new(ScriptedChatModel::new(vec![AssistantTurn::text("Hello!")]));
//! let agent = create_react_agent(model, Vec::new(), AgentConfig::default())?;
//! let out = agent.invoke(AgentState::new("Hi"), RunConfig::execution_id("chat-1")).await?;
//! assert_eq!(out.state().final_answer(), Some("Hello!"));
//! # Ok(()) }
//! ```

mod planner;
mod react;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::store::CheckpointStore;

pub use planner::{create_planner_agent, PlannerState};
pub use react::{create_react_agent, AgentState};

/// Who wrote a [`Message`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Instructions for the model.
    System,
    /// The person using the agent.
    User,
    /// The model.
    Assistant,
    /// The result of a tool call.
    Tool,
}

/// A model's request to call a tool.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ToolCall {
    /// The call's id; the [`Role::Tool`] message with its result carries it as `tool_call_id`.
    pub id: String,
    /// The tool's name ([`Tool::name`]).
    pub name: String,
    /// The arguments, as JSON.
    pub arguments: serde_json::Value,
}

impl ToolCall {
    /// A call of tool `name` with `arguments`, identified by `id`.
    pub fn new(
        id: impl Into<String>,
        name: impl Into<String>,
        arguments: serde_json::Value,
    ) -> Self {
        ToolCall {
            id: id.into(),
            name: name.into(),
            arguments,
        }
    }
}

/// One message of a conversation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Who wrote it.
    pub role: Role,
    /// Its text.
    pub content: String,
    /// For a [`Role::Tool`] message: the id of the [`ToolCall`] it answers.
    pub tool_call_id: Option<String>,
    /// For a [`Role::Assistant`] message: the tools the model asked to call.
    pub tool_calls: Vec<ToolCall>,
}

impl Message {
    fn plain(role: Role, content: impl Into<String>) -> Self {
        Message {
            role,
            content: content.into(),
            tool_call_id: None,
            tool_calls: Vec::new(),
        }
    }

    /// A system message.
    pub fn system(content: impl Into<String>) -> Self {
        Self::plain(Role::System, content)
    }

    /// A user message.
    pub fn user(content: impl Into<String>) -> Self {
        Self::plain(Role::User, content)
    }

    /// An assistant message with text and tool calls.
    pub fn assistant(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        Message {
            tool_calls,
            ..Self::plain(Role::Assistant, content)
        }
    }

    /// The result of tool call `tool_call_id`.
    pub fn tool(tool_call_id: impl Into<String>, content: impl Into<String>) -> Self {
        Message {
            tool_call_id: Some(tool_call_id.into()),
            ..Self::plain(Role::Tool, content)
        }
    }
}

/// What the model is told about a tool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name.
    pub name: String,
    /// What it does (and what arguments it takes).
    pub description: String,
}

/// One reply of the model: text and/or tool calls.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AssistantTurn {
    /// The text.
    pub content: String,
    /// The tools it asks to call (empty for a final answer).
    pub tool_calls: Vec<ToolCall>,
}

impl AssistantTurn {
    /// A reply with text only.
    pub fn text(content: impl Into<String>) -> Self {
        AssistantTurn {
            content: content.into(),
            tool_calls: Vec::new(),
        }
    }

    /// A reply asking for tool calls.
    pub fn tool_calls(content: impl Into<String>, tool_calls: Vec<ToolCall>) -> Self {
        AssistantTurn {
            content: content.into(),
            tool_calls,
        }
    }

    fn into_message(self) -> Message {
        Message::assistant(self.content, self.tool_calls)
    }
}

/// A chat model: given the conversation and the tools it may call, returns its next turn.
#[async_trait]
pub trait ChatModel: Send + Sync {
    /// The model's reply to `messages`, possibly asking for some of `tools`.
    async fn complete(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<AssistantTurn, BoxError>;
}

/// A tool an agent can call.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Its name (what the model puts in [`ToolCall::name`]).
    fn name(&self) -> &str;
    /// What it does, for the model.
    fn description(&self) -> &str;
    /// Runs it; an error is reported to the model as the tool's result, not as a crash.
    async fn call(&self, arguments: serde_json::Value) -> Result<String, BoxError>;
}

/// A [`ChatModel`] that replays a fixed list of turns, in order, and records what it was asked.
/// When the script is used up, [`ChatModel::complete`] fails with "the script has no more turns".
#[derive(Debug, Default)]
pub struct ScriptedChatModel {
    turns: Mutex<VecDeque<AssistantTurn>>,
    calls: Mutex<Vec<Vec<Message>>>,
}

/// Locks a mutex, ignoring poisoning (the data is a plain log, valid after any panic).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl ScriptedChatModel {
    /// A model that returns `turns` one per call.
    pub fn new(turns: Vec<AssistantTurn>) -> Self {
        ScriptedChatModel {
            turns: Mutex::new(turns.into()),
            calls: Mutex::new(Vec::new()),
        }
    }

    /// The messages of every call so far, oldest first (including failed calls).
    pub fn calls(&self) -> Vec<Vec<Message>> {
        lock(&self.calls).clone()
    }

    /// How many times the model was called.
    pub fn call_count(&self) -> usize {
        lock(&self.calls).len()
    }

    /// How many scripted turns are left.
    pub fn remaining(&self) -> usize {
        lock(&self.turns).len()
    }
}

#[async_trait]
impl ChatModel for ScriptedChatModel {
    async fn complete(
        &self,
        messages: &[Message],
        _tools: &[ToolSpec],
    ) -> Result<AssistantTurn, BoxError> {
        lock(&self.calls).push(messages.to_vec());
        lock(&self.turns)
            .pop_front()
            .ok_or_else(|| "the script has no more turns".into())
    }
}

/// How a prebuilt agent is built: its iteration limit, checkpointer and system prompt.
#[derive(Clone)]
pub struct AgentConfig {
    /// At most this many model calls in the agent loop (the ReAct `"agent"` node, the planner's
    /// `"execute"` node); 10 by default.
    pub max_iterations: usize,
    /// Saves a checkpoint after every node to this store.
    pub checkpointer: Option<Arc<dyn CheckpointStore>>,
    /// Sent to the model as the first (system) message of every call; not stored in the state.
    pub system_prompt: Option<String>,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_iterations: 10,
            checkpointer: None,
            system_prompt: None,
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("max_iterations", &self.max_iterations)
            .field("checkpointer", &self.checkpointer.is_some())
            .field("system_prompt", &self.system_prompt)
            .finish()
    }
}

impl AgentConfig {
    /// Sets [`AgentConfig::max_iterations`].
    pub fn max_iterations(mut self, n: usize) -> Self {
        self.max_iterations = n;
        self
    }

    /// Sets [`AgentConfig::checkpointer`].
    pub fn checkpointer(mut self, store: Arc<dyn CheckpointStore>) -> Self {
        self.checkpointer = Some(store);
        self
    }

    /// Sets [`AgentConfig::system_prompt`].
    pub fn system_prompt(mut self, prompt: impl Into<String>) -> Self {
        self.system_prompt = Some(prompt.into());
        self
    }

    pub(crate) fn compile_config(&self) -> crate::graph::CompileConfig {
        let mut c = crate::graph::CompileConfig::default();
        if let Some(store) = &self.checkpointer {
            c = c.checkpointer(store.clone());
        }
        c
    }
}

/// What the agent nodes share: the model, the tools, the system prompt.
#[derive(Clone)]
pub(crate) struct Toolbox {
    model: Arc<dyn ChatModel>,
    tools: Arc<Vec<Arc<dyn Tool>>>,
    specs: Arc<Vec<ToolSpec>>,
    system_prompt: Option<Arc<str>>,
}

impl Toolbox {
    pub(crate) fn new(
        model: Arc<dyn ChatModel>,
        tools: Vec<Arc<dyn Tool>>,
        config: &AgentConfig,
    ) -> Self {
        let specs = tools
            .iter()
            .map(|t| ToolSpec {
                name: t.name().to_owned(),
                description: t.description().to_owned(),
            })
            .collect();
        Toolbox {
            model,
            tools: Arc::new(tools),
            specs: Arc::new(specs),
            system_prompt: config.system_prompt.as_deref().map(Arc::from),
        }
    }

    /// Asks the model (the system prompt first, if any), offering the tools if `with_tools`.
    pub(crate) async fn ask(
        &self,
        messages: &[Message],
        with_tools: bool,
    ) -> Result<Message, BoxError> {
        let specs: &[ToolSpec] = if with_tools { &self.specs } else { &[] };
        let turn = match &self.system_prompt {
            Some(p) => {
                let mut all = Vec::with_capacity(messages.len() + 1);
                all.push(Message::system(p.as_ref()));
                all.extend_from_slice(messages);
                self.model.complete(&all, specs).await?
            }
            None => self.model.complete(messages, specs).await?,
        };
        Ok(turn.into_message())
    }

    /// Runs every tool call of `calls`, in order, and returns one [`Role::Tool`] message per call.
    /// An unknown tool or a failing tool becomes a message saying so.
    pub(crate) async fn run_tools(&self, calls: &[ToolCall]) -> Vec<Message> {
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            let content = match self.tools.iter().find(|t| t.name() == call.name) {
                None => {
                    let known: Vec<&str> = self.tools.iter().map(|t| t.name()).collect();
                    format!(
                        "error: unknown tool {:?}; the available tools are {known:?}",
                        call.name
                    )
                }
                Some(tool) => match tool.call(call.arguments.clone()).await {
                    Ok(text) => text,
                    Err(e) => format!("error: tool {:?} failed: {e}", call.name),
                },
            };
            out.push(Message::tool(&call.id, content));
        }
        out
    }
}
