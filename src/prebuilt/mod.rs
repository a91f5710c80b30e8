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
//! With [`AgentConfig::checkpointer`], a checkpoint is saved after every node, and every model
//! call and every tool call is a journaled task ([`crate::graph::NodeContext::task`]): its result
//! is written to the log as soon as it returns. An agent that crashed is continued with
//! [`crate::graph::CompiledGraph::resume_latest`]; a node that runs again gets the recorded
//! results of the calls it already made, so a crash in the middle of a step with three tool calls
//! re-runs only the calls that had not returned (at most the one in flight). The tasks' keys are
//! `"model"` for the model call of a node and `"tool:<call id>"` for a tool call.
//!
//! A tool's error is journaled like its success (as the text the tool returned, with a flag), not
//! retried: the agent feeds it to the model as the tool's result, so the recorded conversation
//! holds it, and a replay ([`crate::graph::ReplayMode::Recorded`]) shows the model the same
//! error. A model's error is not journaled: the node fails, and the call is made again when the
//! run is resumed.
//!
//! With [`AgentConfig::approve_tool_calls`], the `"tools"` node asks a person before each tool
//! call (see [`Approval`]). [`ScriptedChatModel`] replays a fixed script (for tests and
//! examples); `OpenAiChatModel` (feature `openai`) calls any OpenAI-compatible chat-completions
//! API: OpenAI, or a local vLLM, Ollama or llama.cpp server.
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

#[cfg(feature = "openai")]
mod openai;
mod planner;
mod react;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::error::BoxError;
use crate::graph::{GraphError, NodeContext};
use crate::store::CheckpointStore;

#[cfg(feature = "openai")]
pub use openai::{OpenAiChatModel, OpenAiChatModelBuilder, OpenAiError};
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
///
/// ```
/// use ckpt::prebuilt::ToolSpec;
/// use serde_json::json;
///
/// let spec = ToolSpec::new("add", "Adds a and b.").with_parameters(json!({
///     "type": "object",
///     "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
///     "required": ["a", "b"],
/// }));
/// assert_eq!(spec.parameters_schema()["required"], json!(["a", "b"]));
/// assert_eq!(ToolSpec::new("now", "The time.").parameters_schema(),
///            json!({"type": "object", "properties": {}}));
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ToolSpec {
    /// The tool's name.
    pub name: String,
    /// What it does (and what arguments it takes).
    pub description: String,
    /// The JSON schema of its arguments (an object schema), if it has one. Models that take
    /// schemas (OpenAI's `tools[].function.parameters`) are sent
    /// [`ToolSpec::parameters_schema`]; without one the description is all the model knows.
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
}

impl ToolSpec {
    /// A tool named `name` doing `description`, without an argument schema.
    pub fn new(name: impl Into<String>, description: impl Into<String>) -> Self {
        ToolSpec {
            name: name.into(),
            description: description.into(),
            parameters: None,
        }
    }

    /// Sets [`ToolSpec::parameters`], the JSON schema of the arguments.
    pub fn with_parameters(mut self, schema: serde_json::Value) -> Self {
        self.parameters = Some(schema);
        self
    }

    /// [`ToolSpec::parameters`], or the schema of an object with any properties when there is
    /// none (what APIs that require a schema accept for "no declared arguments").
    pub fn parameters_schema(&self) -> serde_json::Value {
        self.parameters
            .clone()
            .unwrap_or_else(|| serde_json::json!({"type": "object", "properties": {}}))
    }

    /// The spec [`crate::prebuilt`]'s agents send for `tool`.
    pub fn of(tool: &dyn Tool) -> Self {
        ToolSpec {
            name: tool.name().to_owned(),
            description: tool.description().to_owned(),
            parameters: tool.parameters(),
        }
    }
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

    /// Like [`ChatModel::complete`], also handing `on_token` the reply's text as it is
    /// generated, piece by piece; the pieces concatenated are the returned turn's `content`.
    ///
    /// The default calls [`ChatModel::complete`] and hands over the whole text at once (nothing
    /// when it is empty), so a caller can stream from any model; a model that can stream
    /// (such as `OpenAiChatModel`, feature `openai`) overrides it.
    async fn complete_streaming(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        on_token: &mut (dyn for<'t> FnMut(&'t str) + Send),
    ) -> Result<AssistantTurn, BoxError> {
        let turn = self.complete(messages, tools).await?;
        if !turn.content.is_empty() {
            on_token(&turn.content);
        }
        Ok(turn)
    }
}

/// A tool an agent can call.
#[async_trait]
pub trait Tool: Send + Sync {
    /// Its name (what the model puts in [`ToolCall::name`]).
    fn name(&self) -> &str;
    /// What it does, for the model.
    fn description(&self) -> &str;
    /// The JSON schema of its arguments (an object schema), for models that take one
    /// ([`ToolSpec::parameters`]). None by default: the model then has only the description
    /// to go by, so say there what the arguments are.
    fn parameters(&self) -> Option<serde_json::Value> {
        None
    }
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
    /// Asks a person before each tool call (off by default; needs a checkpointer). See
    /// [`AgentConfig::approve_tool_calls`].
    pub approve_tool_calls: bool,
}

impl Default for AgentConfig {
    fn default() -> Self {
        AgentConfig {
            max_iterations: 10,
            checkpointer: None,
            system_prompt: None,
            approve_tool_calls: false,
        }
    }
}

impl std::fmt::Debug for AgentConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentConfig")
            .field("max_iterations", &self.max_iterations)
            .field("checkpointer", &self.checkpointer.is_some())
            .field("system_prompt", &self.system_prompt)
            .field("approve_tool_calls", &self.approve_tool_calls)
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

    /// Before each tool call, the `"tools"` node (of both agents) pauses the run with
    /// [`crate::graph::NodeContext::interrupt`], asking
    /// `{"tool": name, "arguments": arguments, "call_id": id}`; the run ends as
    /// [`crate::graph::Outcome::Interrupted`] listing that question. Answer with
    /// [`crate::graph::CompiledGraph::resume_with_command`] and
    /// [`crate::graph::Command::resume`] of an [`Approval`] (or plain `true` / `false`): the tool
    /// runs only when approved; a refusal becomes the tool's result for the model. Several tool
    /// calls in one step are asked one at a time, in order: each answer runs the node again
    /// (the calls already approved and run are not run again), which asks the next question.
    /// An unknown tool is not asked about (nothing would run).
    ///
    /// The agent's constructor fails with [`GraphError::NoCheckpointer`] when this is set
    /// without [`AgentConfig::checkpointer`]: the questions and answers live in the log.
    pub fn approve_tool_calls(mut self, on: bool) -> Self {
        self.approve_tool_calls = on;
        self
    }

    pub(crate) fn compile_config(&self) -> Result<crate::graph::CompileConfig, GraphError> {
        let mut c = crate::graph::CompileConfig::default();
        match &self.checkpointer {
            Some(store) => c = c.checkpointer(store.clone()),
            None if self.approve_tool_calls => return Err(GraphError::NoCheckpointer),
            None => {}
        }
        Ok(c)
    }
}

/// A person's answer to the question [`AgentConfig::approve_tool_calls`] asks before a tool
/// call. As JSON (what [`crate::graph::Command::resume`] carries), the answer may be:
///
/// - `true` (run the tool) or `false` (refuse it);
/// - `{"approve": true}`, or `{"approve": false, "reason": "..."}` (what this type serializes
///   to; the reason is optional and is passed on to the model);
///
/// anything else refuses the call (the tool does not run), with a reason that quotes the answer:
/// an answer the agent cannot read is never taken for a yes. A refused call's result, as the
/// model sees it, is `the user refused this tool call` followed by `: <reason>` when one is given.
///
/// ```
/// use ckpt::prebuilt::Approval;
/// use serde_json::json;
///
/// assert_eq!(serde_json::to_value(Approval::refuse("too expensive")).unwrap(),
///            json!({"approve": false, "reason": "too expensive"}));
/// assert!(Approval::from_answer(&json!(true)).approve);
/// assert!(!Approval::from_answer(&json!("yes please")).approve);
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    /// Whether the tool may run.
    pub approve: bool,
    /// Why (told to the model on a refusal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl Approval {
    /// Lets the tool run.
    pub fn approve() -> Self {
        Approval {
            approve: true,
            reason: None,
        }
    }

    /// Refuses the call, telling the model `reason`.
    pub fn refuse(reason: impl Into<String>) -> Self {
        Approval {
            approve: false,
            reason: Some(reason.into()),
        }
    }

    /// Reads an answer as the type's documentation says (anything unreadable refuses).
    pub fn from_answer(answer: &serde_json::Value) -> Self {
        if let Some(approve) = answer.as_bool() {
            return Approval {
                approve,
                reason: None,
            };
        }
        match serde_json::from_value::<Approval>(answer.clone()) {
            Ok(a) => a,
            Err(_) => Approval::refuse(format!(
                "the answer {answer} is not an approval (true, false, or {{\"approve\": bool, \"reason\": \"...\"}})"
            )),
        }
    }

    /// The tool message content a refusal becomes.
    fn refusal_text(&self) -> String {
        match self.reason.as_deref() {
            Some(r) if !r.is_empty() => format!("the user refused this tool call: {r}"),
            _ => "the user refused this tool call".to_owned(),
        }
    }
}

/// The task key of a node's model call.
const MODEL_TASK: &str = "model";

/// The task key of tool call `id`.
fn tool_task(id: &str) -> String {
    format!("tool:{id}")
}

/// What the agent nodes share: the model, the tools, the system prompt.
#[derive(Clone)]
pub(crate) struct Toolbox {
    model: Arc<dyn ChatModel>,
    tools: Arc<Vec<Arc<dyn Tool>>>,
    specs: Arc<Vec<ToolSpec>>,
    system_prompt: Option<Arc<str>>,
    approve: bool,
}

impl Toolbox {
    pub(crate) fn new(
        model: Arc<dyn ChatModel>,
        tools: Vec<Arc<dyn Tool>>,
        config: &AgentConfig,
    ) -> Self {
        let specs = tools.iter().map(|t| ToolSpec::of(t.as_ref())).collect();
        Toolbox {
            model,
            tools: Arc::new(tools),
            specs: Arc::new(specs),
            system_prompt: config.system_prompt.as_deref().map(Arc::from),
            approve: config.approve_tool_calls,
        }
    }

    /// Asks the model (the system prompt first, if any), offering the tools if `with_tools`, as
    /// the node's journaled task `"model"`: when the node runs again from the same checkpoint,
    /// the recorded reply is returned and the model is not called.
    pub(crate) async fn ask(
        &self,
        ctx: &NodeContext,
        messages: &[Message],
        with_tools: bool,
    ) -> Result<Message, BoxError> {
        let model = self.model.clone();
        let specs = with_tools.then(|| self.specs.clone());
        let mut all = Vec::with_capacity(messages.len() + 1);
        if let Some(p) = &self.system_prompt {
            all.push(Message::system(p.as_ref()));
        }
        all.extend_from_slice(messages);
        if !ctx.streams_tokens() {
            let turn: AssistantTurn = ctx
                .task(MODEL_TASK, async move {
                    let specs: &[ToolSpec] = specs.as_deref().map_or(&[], Vec::as_slice);
                    model.complete(&all, specs).await
                })
                .await?;
            return Ok(turn.into_message());
        }
        // The model streams: its tokens reach the run's stream as they come (a recorded reply
        // is returned whole, without tokens). The model's callback cannot wait, so tokens pass
        // through an unbounded queue to a forwarder that waits on the bounded stream.
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let call = ctx.task(MODEL_TASK, async move {
            let specs: &[ToolSpec] = specs.as_deref().map_or(&[], Vec::as_slice);
            let mut on_token = |t: &str| {
                let _ = tx.send(t.to_owned());
            };
            model.complete_streaming(&all, specs, &mut on_token).await
        });
        let forward = async {
            while let Some(t) = rx.recv().await {
                ctx.emit_token(&t).await;
            }
        };
        let (turn, ()) = tokio::join!(call, forward);
        Ok(turn?.into_message())
    }

    /// Runs every tool call of `calls`, in order, and returns one [`Role::Tool`] message per call.
    /// Each call is the node's journaled task `"tool:<call id>"`; its result (success or error)
    /// is recorded, so a node that runs again does not repeat it. An unknown tool or a failing
    /// tool becomes a message saying so; with approval on, each call is first put to a person
    /// ([`AgentConfig::approve_tool_calls`]), and the error of that pause (or of the log) is
    /// returned.
    pub(crate) async fn run_tools(
        &self,
        ctx: &NodeContext,
        calls: &[ToolCall],
    ) -> Result<Vec<Message>, BoxError> {
        let mut out = Vec::with_capacity(calls.len());
        for call in calls {
            let Some(tool) = self.tools.iter().find(|t| t.name() == call.name) else {
                let known: Vec<&str> = self.tools.iter().map(|t| t.name()).collect();
                out.push(Message::tool(
                    &call.id,
                    format!(
                        "error: unknown tool {:?}; the available tools are {known:?}",
                        call.name
                    ),
                ));
                continue;
            };
            if self.approve {
                let answer: serde_json::Value = ctx.interrupt(&serde_json::json!({
                    "tool": call.name,
                    "arguments": call.arguments,
                    "call_id": call.id,
                }))?;
                let approval = Approval::from_answer(&answer);
                if !approval.approve {
                    out.push(Message::tool(&call.id, approval.refusal_text()));
                    continue;
                }
            }
            let (tool, arguments) = (tool.clone(), call.arguments.clone());
            // The tool's error is a result too (the model is told), so it is journaled: the
            // outer Result is the task's (never an error), the inner one the tool's.
            let result: Result<String, String> = ctx
                .task(&tool_task(&call.id), async move {
                    Ok::<_, std::convert::Infallible>(
                        tool.call(arguments).await.map_err(|e| e.to_string()),
                    )
                })
                .await?;
            let content = match result {
                Ok(text) => text,
                Err(e) => format!("error: tool {:?} failed: {e}", call.name),
            };
            out.push(Message::tool(&call.id, content));
        }
        Ok(out)
    }
}
