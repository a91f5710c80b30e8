//! [`OpenAiChatModel`], a [`ChatModel`] for OpenAI-compatible chat-completions APIs (feature
//! `openai`): the request and reply mapping, the retries, and the server-sent-event reader.
//! What it does, for users, is on the type (this module is private; the type is re-exported).

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::{json, Value};
use tokio::time::Instant;

use super::{AssistantTurn, ChatModel, Message, Role, ToolCall, ToolSpec};
use crate::error::BoxError;

/// The longest wait between two tries that ckpt chooses itself (the doubling stops there).
const MAX_BACKOFF: Duration = Duration::from_secs(8);
/// The longest `Retry-After` obeyed: a server asking for more is not waited for (an error
/// returned at once beats a call that hangs for minutes with no word).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(60);
/// How much of an unreadable reply an error quotes.
const EXCERPT_CHARS: usize = 300;

/// What went wrong talking to an OpenAI-compatible server. [`OpenAiChatModel`]'s
/// [`ChatModel`] methods return it boxed: `err.downcast_ref::<OpenAiError>()` gets it back.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenAiError {
    /// The environment variable that should hold the API key is not set (or is empty).
    #[error("the API key is missing: the environment variable {var} is not set (set it, name another variable with `api_key_env`, or give the key with `api_key`)")]
    MissingApiKey {
        /// The variable's name.
        var: String,
    },

    /// No model name was given ([`OpenAiChatModel::from_env`] reads it from `OPENAI_MODEL`).
    #[error("no model name: set the environment variable {var} to the model to call (e.g. gpt-4o-mini, or the name your server serves)")]
    MissingModel {
        /// The variable it was looked for in.
        var: String,
    },

    /// The configuration cannot be used: a base URL that is not an http(s) URL, a header that is
    /// not valid in HTTP, an empty model name.
    #[error("invalid OpenAI client configuration: {0}")]
    Config(String),

    /// A message of the conversation cannot be put into a request (a tool result without the
    /// id of the call it answers).
    #[error("message {index} of the conversation cannot be sent: {reason}")]
    InvalidMessage {
        /// Its position in the messages passed to the model.
        index: usize,
        /// Why.
        reason: String,
    },

    /// The server could not be reached (connection refused, DNS, TLS) or the connection broke
    /// before the reply was complete.
    #[error("cannot reach {url}: {reason}{}", attempts_note(*attempts))]
    Connect {
        /// The URL posted to.
        url: String,
        /// The transport's error, with its causes.
        reason: String,
        /// How many times the request was sent.
        attempts: u32,
    },

    /// The reply did not come (or did not end) within [`OpenAiChatModelBuilder::timeout`].
    #[error("{url} did not answer within {timeout:?}{}", attempts_note(*attempts))]
    Timeout {
        /// The URL posted to.
        url: String,
        /// The time allowed for one try.
        timeout: Duration,
        /// How many times the request was sent.
        attempts: u32,
    },

    /// The server answered with an HTTP error status.
    #[error("{url} answered HTTP {status}: {message}{}{}", hint.as_deref().map(|h| format!(" ({h})")).unwrap_or_default(), attempts_note(*attempts))]
    Status {
        /// The URL posted to.
        url: String,
        /// The HTTP status code.
        status: u16,
        /// The server's error message (`error.message` of OpenAI's error body), or the start of
        /// the body when it has none.
        message: String,
        /// OpenAI's `error.type`, e.g. `invalid_request_error`.
        error_type: Option<String>,
        /// OpenAI's `error.code`, e.g. `invalid_api_key`, `insufficient_quota`.
        code: Option<String>,
        /// What ckpt can add: no key was sent, the URL probably lacks `/v1`, the server asked
        /// for a longer wait than ckpt makes.
        hint: Option<String>,
        /// How many times the request was sent.
        attempts: u32,
    },

    /// The server answered 200 with something that is not a chat completion (not JSON, no
    /// choices, a tool call without a name, an event stream that is not one).
    #[error("the reply of {url} is not a chat completion: {reason}; it was {excerpt:?}")]
    Malformed {
        /// The URL posted to.
        url: String,
        /// What is wrong with it.
        reason: String,
        /// The start of the offending body or event.
        excerpt: String,
    },

    /// The model called a tool with arguments that are not JSON.
    #[error("the model called tool {tool:?} (call {call_id:?}) with arguments that are not JSON ({reason}): {arguments:?}")]
    ToolArguments {
        /// The tool's name.
        tool: String,
        /// The call's id.
        call_id: String,
        /// The arguments as the model wrote them.
        arguments: String,
        /// The JSON parser's error.
        reason: String,
    },

    /// A streamed reply broke off: the connection failed, the server sent an error event, or
    /// the stream ended before its end (`data: [DONE]` or a `finish_reason`).
    #[error("the stream from {url} broke off: {reason}")]
    Stream {
        /// The URL posted to.
        url: String,
        /// Why.
        reason: String,
    },
}

fn attempts_note(attempts: u32) -> String {
    if attempts > 1 {
        format!(" (gave up after {attempts} tries)")
    } else {
        String::new()
    }
}

impl OpenAiError {
    /// Whether sending the same request again may succeed.
    fn retryable(&self) -> bool {
        match self {
            OpenAiError::Connect { .. } | OpenAiError::Timeout { .. } => true,
            OpenAiError::Status {
                status, code, hint, ..
            } => {
                // A used-up quota is answered 429 too, but waiting does not refill it; and a
                // hint on a retryable status means the server asked for too long a wait.
                let quota = code.as_deref() == Some("insufficient_quota");
                matches!(status, 408 | 409 | 429 | 500..=599) && !quota && hint.is_none()
            }
            _ => false,
        }
    }

    fn set_attempts(mut self, n: u32) -> Self {
        match &mut self {
            OpenAiError::Connect { attempts, .. }
            | OpenAiError::Timeout { attempts, .. }
            | OpenAiError::Status { attempts, .. } => *attempts = n,
            _ => {}
        }
        self
    }
}

/// Where the API key comes from.
#[derive(Clone)]
enum KeySource {
    /// An environment variable; `required` when it was named explicitly (otherwise a missing
    /// key is an error only for OpenAI's own API, which always needs one).
    Env {
        var: String,
        required: bool,
    },
    Value(String),
    None,
}

/// Builds an [`OpenAiChatModel`]: [`OpenAiChatModel::builder`].
#[derive(Clone)]
pub struct OpenAiChatModelBuilder {
    base_url: String,
    model: String,
    key: KeySource,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    timeout: Duration,
    connect_timeout: Duration,
    max_retries: u32,
    retry_backoff: Duration,
    headers: Vec<(String, String)>,
    body_fields: serde_json::Map<String, Value>,
}

impl fmt::Debug for OpenAiChatModelBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let key = match &self.key {
            KeySource::Env { var, .. } => format!("from ${var}"),
            KeySource::Value(_) => "given (redacted)".to_owned(),
            KeySource::None => "none".to_owned(),
        };
        f.debug_struct("OpenAiChatModelBuilder")
            .field("base_url", &self.base_url)
            .field("model", &self.model)
            .field("api_key", &key)
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl OpenAiChatModelBuilder {
    fn new(model: String) -> Self {
        OpenAiChatModelBuilder {
            base_url: OpenAiChatModel::DEFAULT_BASE_URL.to_owned(),
            model,
            key: KeySource::Env {
                var: OpenAiChatModel::API_KEY_VAR.to_owned(),
                required: false,
            },
            temperature: None,
            max_tokens: None,
            timeout: Duration::from_secs(600),
            connect_timeout: Duration::from_secs(10),
            max_retries: 2,
            retry_backoff: Duration::from_millis(500),
            headers: Vec::new(),
            body_fields: serde_json::Map::new(),
        }
    }

    /// The API's base URL, up to and including the version (`/v1`); the request goes to
    /// `{base_url}/chat/completions`. [`OpenAiChatModel::DEFAULT_BASE_URL`] (OpenAI) by default.
    pub fn base_url(mut self, url: impl Into<String>) -> Self {
        self.base_url = url.into();
        self
    }

    /// The model to ask for (`"model"` in the request).
    pub fn model(mut self, model: impl Into<String>) -> Self {
        self.model = model.into();
        self
    }

    /// Reads the API key from environment variable `var` (when [`OpenAiChatModelBuilder::build`]
    /// runs); building fails with [`OpenAiError::MissingApiKey`] if it is not set. Without this,
    /// the key is read from `OPENAI_API_KEY` when that is set, and is required only for
    /// OpenAI's own API: local servers usually want none.
    pub fn api_key_env(mut self, var: impl Into<String>) -> Self {
        self.key = KeySource::Env {
            var: var.into(),
            required: true,
        };
        self
    }

    /// Uses `key` as the API key (sent as `Authorization: Bearer <key>`).
    pub fn api_key(mut self, key: impl Into<String>) -> Self {
        self.key = KeySource::Value(key.into());
        self
    }

    /// Sends no API key, whatever the environment holds.
    pub fn without_api_key(mut self) -> Self {
        self.key = KeySource::None;
        self
    }

    /// The sampling temperature (`"temperature"`); the server's default when not set.
    pub fn temperature(mut self, t: f64) -> Self {
        self.temperature = Some(t);
        self
    }

    /// The most tokens a reply may have (`"max_tokens"`, which every compatible server reads;
    /// OpenAI's reasoning models want `max_completion_tokens`: set it with
    /// [`OpenAiChatModelBuilder::body_field`]).
    pub fn max_tokens(mut self, n: u32) -> Self {
        self.max_tokens = Some(n);
        self
    }

    /// The longest one try may take, from sending the request to the end of the reply (of the
    /// whole stream, when streaming); 10 minutes by default.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// The longest connecting to the server may take; 10 s by default.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How many times a failed request is sent again when that may help (see
    /// [`OpenAiChatModel`]); 2 by default, 0 to never retry.
    pub fn max_retries(mut self, n: u32) -> Self {
        self.max_retries = n;
        self
    }

    /// The wait before the first retry, doubled before each next one (up to 8 s); 500 ms by
    /// default. A server's `Retry-After` replaces it.
    pub fn retry_backoff(mut self, wait: Duration) -> Self {
        self.retry_backoff = wait;
        self
    }

    /// Sends HTTP header `name: value` with every request (e.g. `OpenAI-Organization`, or a
    /// proxy's own authentication).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Adds field `name` to every request's JSON body, for what the builder has no method for:
    /// `top_p`, `seed`, `max_completion_tokens`, `response_format`, `parallel_tool_calls`, a
    /// server's own options. Fields the model sets itself (`model`, `messages`, `tools`,
    /// `stream`) cannot be replaced.
    pub fn body_field(mut self, name: impl Into<String>, value: Value) -> Self {
        self.body_fields.insert(name.into(), value);
        self
    }

    /// Checks the configuration, reads the API key and makes the HTTP client.
    pub fn build(self) -> Result<OpenAiChatModel, OpenAiError> {
        self.build_with(|var| std::env::var(var).ok())
    }

    /// [`OpenAiChatModelBuilder::build`] with `env` for the environment.
    fn build_with(
        self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<OpenAiChatModel, OpenAiError> {
        let base_url = self.base_url.trim_end_matches('/').to_owned();
        let parsed = reqwest::Url::parse(&base_url).map_err(|e| {
            OpenAiError::Config(format!("the base URL {base_url:?} is not a URL: {e}"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") {
            return Err(OpenAiError::Config(format!(
                "the base URL {base_url:?} is not an http:// or https:// URL"
            )));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(OpenAiError::Config(format!(
                "the base URL {base_url:?} has a query or fragment: give the URL the path /chat/completions is appended to"
            )));
        }
        if self.model.trim().is_empty() {
            return Err(OpenAiError::Config("the model name is empty".to_owned()));
        }
        // A hint for a 401: the variable the key was (or would have been) read from.
        let key_var = match &self.key {
            KeySource::Env { var, .. } => Some(var.clone()),
            _ => None,
        };
        let key = match self.key {
            KeySource::Value(k) => Some(k),
            KeySource::None => None,
            KeySource::Env { var, required } => match env(&var).filter(|k| !k.is_empty()) {
                Some(k) => Some(k),
                None if required || parsed.host_str() == Some("api.openai.com") => {
                    return Err(OpenAiError::MissingApiKey { var });
                }
                None => None,
            },
        };

        let mut headers = HeaderMap::new();
        for (name, value) in &self.headers {
            let n = HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| OpenAiError::Config(format!("{name:?} is not an HTTP header name")))?;
            let v = HeaderValue::from_str(value).map_err(|_| {
                OpenAiError::Config(format!("the value of header {name:?} is not valid in HTTP"))
            })?;
            headers.append(n, v);
        }
        if let Some(k) = &key {
            let mut v = HeaderValue::from_str(&format!("Bearer {k}")).map_err(|_| {
                OpenAiError::Config(
                    "the API key has characters an HTTP header cannot carry (a line break?)"
                        .to_owned(),
                )
            })?;
            v.set_sensitive(true);
            headers.insert(AUTHORIZATION, v);
        }
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));

        let client = reqwest::Client::builder()
            .connect_timeout(self.connect_timeout)
            .user_agent(concat!("ckpt/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| {
                OpenAiError::Config(format!("cannot make the HTTP client: {}", chain(&e)))
            })?;

        let mut body_fields = self.body_fields;
        for reserved in ["model", "messages", "tools", "stream"] {
            body_fields.remove(reserved);
        }
        Ok(OpenAiChatModel {
            client,
            endpoint: format!("{base_url}/chat/completions"),
            base_url,
            model: self.model,
            key_sent: key.is_some(),
            key_var,
            headers,
            temperature: self.temperature,
            max_tokens: self.max_tokens,
            body_fields,
            timeout: self.timeout,
            max_retries: self.max_retries,
            retry_backoff: self.retry_backoff,
        })
    }
}

/// A [`ChatModel`] on an OpenAI-compatible chat-completions API (feature `openai`).
///
/// It sends the conversation to `POST {base URL}/chat/completions`, the protocol
/// of OpenAI's API and of the servers that copy it: vLLM, Ollama (`http://localhost:11434/v1`),
/// llama.cpp's `llama-server` (`http://localhost:8080/v1`), LM Studio, LiteLLM and most hosted
/// model providers. It maps ckpt's [`Message`]s (system, user, assistant with tool calls, tool
/// results) and [`ToolSpec`]s (`tools: [{"type": "function", "function": {...}}]`) to the request,
/// and the reply's first choice back to an [`AssistantTurn`], parsing each tool call's
/// `function.arguments` (a JSON text) into a [`serde_json::Value`].
///
/// [`ChatModel::complete_streaming`] asks for `"stream": true` and reads the server-sent events
/// as they arrive: the text's pieces go to the callback one by one, and tool calls, which come in
/// fragments, are put together for the returned turn.
///
/// A failed request is tried again, up to [`OpenAiChatModelBuilder::max_retries`] more times,
/// when trying again can help: the server was unreachable, did not answer in time, or answered
/// 408, 409, 429 (unless the account's quota is used up) or 5xx. The waits double from
/// [`OpenAiChatModelBuilder::retry_backoff`] up to 8 s, and a `Retry-After` (or
/// `retry-after-ms`) the server sends is obeyed when it is at most 60 s (beyond that the error is
/// returned at once, saying so). A streamed reply is tried again only before its first event:
/// text handed to the callback is never taken back. Every error is an [`OpenAiError`] (inside the
/// [`BoxError`] the trait returns), naming the URL and carrying the server's own message.
///
/// A ReAct agent on OpenAI (or set `OPENAI_BASE_URL` to a local server):
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use std::sync::Arc;
///
/// use async_trait::async_trait;
/// use ckpt::error::BoxError;
/// use ckpt::graph::RunConfig;
/// use ckpt::prebuilt::{create_react_agent, AgentConfig, AgentState, OpenAiChatModel, Tool};
/// use ckpt::Store;
/// use serde_json::{json, Value};
///
/// struct Add;
///
/// #[async_trait]
/// impl Tool for Add {
///     fn name(&self) -> &str { "add" }
///     fn description(&self) -> &str { "Adds two numbers." }
///     fn parameters(&self) -> Option<Value> {
///         Some(json!({
///             "type": "object",
///             "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
///             "required": ["a", "b"],
///         }))
///     }
///     async fn call(&self, args: Value) -> Result<String, BoxError> {
///         let (a, b) = (args["a"].as_f64(), args["b"].as_f64());
///         Ok((a.ok_or("a is not a number")? + b.ok_or("b is not a number")?).to_string())
///     }
/// }
///
/// // OPENAI_MODEL=gpt-4o-mini OPENAI_API_KEY=sk-...   (OPENAI_BASE_URL for another server)
/// let model = OpenAiChatModel::from_env()?;
/// let store = Store::open("sled://agent-data").await?;
/// let agent = create_react_agent(
///     Arc::new(model),
///     vec![Arc::new(Add)],
///     AgentConfig::default()
///         .system_prompt("Use the tools for arithmetic.")
///         .checkpointer(Arc::new(store)),
/// )?;
/// let out = agent
///     .invoke(AgentState::new("What is 1234 + 4321?"), RunConfig::execution_id("sum-1"))
///     .await?;
/// println!("{}", out.state().final_answer().unwrap_or("(no answer)"));
/// # Ok(()) }
/// ```
///
/// Built in code, for a local Ollama server (no key is needed: none is read unless
/// `OPENAI_API_KEY` is set):
///
/// ```
/// use ckpt::prebuilt::OpenAiChatModel;
///
/// let model = OpenAiChatModel::builder("llama3.2")
///     .base_url("http://localhost:11434/v1")
///     .temperature(0.2)
///     .build()?;
/// assert_eq!(model.endpoint(), "http://localhost:11434/v1/chat/completions");
/// # Ok::<(), ckpt::prebuilt::OpenAiError>(())
/// ```
#[derive(Clone)]
pub struct OpenAiChatModel {
    client: reqwest::Client,
    base_url: String,
    endpoint: String,
    model: String,
    key_sent: bool,
    /// The variable the key is read from, for the hint on a 401 when none was sent.
    key_var: Option<String>,
    headers: HeaderMap,
    temperature: Option<f64>,
    max_tokens: Option<u32>,
    body_fields: serde_json::Map<String, Value>,
    timeout: Duration,
    max_retries: u32,
    retry_backoff: Duration,
}

impl fmt::Debug for OpenAiChatModel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenAiChatModel")
            .field("endpoint", &self.endpoint)
            .field("model", &self.model)
            .field(
                "api_key",
                &if self.key_sent {
                    "set (redacted)"
                } else {
                    "none"
                },
            )
            .field("temperature", &self.temperature)
            .field("max_tokens", &self.max_tokens)
            .field("timeout", &self.timeout)
            .field("max_retries", &self.max_retries)
            .finish_non_exhaustive()
    }
}

impl OpenAiChatModel {
    /// OpenAI's API, the base URL when none is given.
    pub const DEFAULT_BASE_URL: &'static str = "https://api.openai.com/v1";
    /// The environment variable the API key is read from unless told otherwise.
    pub const API_KEY_VAR: &'static str = "OPENAI_API_KEY";
    /// The environment variable [`OpenAiChatModel::from_env`] reads the base URL from.
    pub const BASE_URL_VAR: &'static str = "OPENAI_BASE_URL";
    /// The environment variable [`OpenAiChatModel::from_env`] reads the model name from.
    pub const MODEL_VAR: &'static str = "OPENAI_MODEL";

    /// A builder for model `model` on OpenAI's API, with the key from `OPENAI_API_KEY`; change
    /// [`OpenAiChatModelBuilder::base_url`] for another server.
    pub fn builder(model: impl Into<String>) -> OpenAiChatModelBuilder {
        OpenAiChatModelBuilder::new(model.into())
    }

    /// The model configured by the environment: `OPENAI_MODEL` (required), `OPENAI_BASE_URL`
    /// (OpenAI's API when unset) and `OPENAI_API_KEY` (required for OpenAI's API, sent when set
    /// for any other). For more settings, [`OpenAiChatModel::builder_from_env`].
    pub fn from_env() -> Result<Self, OpenAiError> {
        Self::builder_from_env()?.build()
    }

    /// A builder holding what [`OpenAiChatModel::from_env`] reads, to change or add to.
    pub fn builder_from_env() -> Result<OpenAiChatModelBuilder, OpenAiError> {
        builder_from(|var| std::env::var(var).ok())
    }

    /// The model asked for.
    pub fn model_name(&self) -> &str {
        &self.model
    }

    /// The base URL (without a trailing slash).
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    /// The URL requests are posted to: `{base_url}/chat/completions`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The JSON body of a request for `messages` and `tools`.
    fn request_body(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        stream: bool,
    ) -> Result<Vec<u8>, OpenAiError> {
        let mut body = serde_json::Map::new();
        body.insert("model".into(), Value::String(self.model.clone()));
        let wire: Vec<Value> = messages
            .iter()
            .enumerate()
            .map(|(i, m)| wire_message(i, m))
            .collect::<Result<_, _>>()?;
        body.insert("messages".into(), Value::Array(wire));
        if !tools.is_empty() {
            let tools = tools
                .iter()
                .map(|t| {
                    json!({
                        "type": "function",
                        "function": {
                            "name": t.name,
                            "description": t.description,
                            "parameters": t.parameters_schema(),
                        }
                    })
                })
                .collect();
            body.insert("tools".into(), Value::Array(tools));
        }
        if let Some(t) = self.temperature {
            body.insert("temperature".into(), json!(t));
        }
        if let Some(n) = self.max_tokens {
            body.insert("max_tokens".into(), json!(n));
        }
        if stream {
            body.insert("stream".into(), Value::Bool(true));
        }
        for (k, v) in &self.body_fields {
            body.insert(k.clone(), v.clone());
        }
        serde_json::to_vec(&Value::Object(body)).map_err(|e| OpenAiError::InvalidMessage {
            index: 0,
            reason: format!("the request cannot be encoded as JSON: {e}"),
        })
    }

    /// Posts `body`, trying again while that may help (see [`OpenAiChatModel`]). For a whole
    /// reply the body is read within the same try; for a stream, the response is returned as
    /// soon as its status is a success, with the deadline of its try.
    async fn post(&self, body: Vec<u8>, stream: bool) -> Result<Posted, OpenAiError> {
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let deadline = Instant::now() + self.timeout;
            let (err, retry_after) = match self.try_once(&body, stream, deadline).await {
                Ok(posted) => return Ok(posted),
                Err(e) => e,
            };
            if attempt > self.max_retries || !err.retryable() {
                return Err(err.set_attempts(attempt));
            }
            let backoff = self
                .retry_backoff
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(MAX_BACKOFF);
            tokio::time::sleep(retry_after.unwrap_or(backoff)).await;
        }
    }

    /// One try: the error, with the wait the server asked for, if any.
    async fn try_once(
        &self,
        body: &[u8],
        stream: bool,
        deadline: Instant,
    ) -> Result<Posted, (OpenAiError, Option<Duration>)> {
        let timeout = || OpenAiError::Timeout {
            url: self.endpoint.clone(),
            timeout: self.timeout,
            attempts: 1,
        };
        let request = self
            .client
            .post(&self.endpoint)
            .headers(self.headers.clone())
            .body(body.to_vec())
            .send();
        let response = match tokio::time::timeout_at(deadline, request).await {
            Err(_) => return Err((timeout(), None)),
            Ok(Err(e)) => return Err((self.transport_error(e), None)),
            Ok(Ok(r)) => r,
        };
        let status = response.status();
        // A server that ignores `"stream": true` answers with one JSON body, read whole.
        let json_body = response
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim_start().starts_with("application/json"));
        if status.is_success() && stream && !json_body {
            return Ok(Posted::Stream(response, deadline));
        }
        let retry_after = retry_after(response.headers());
        let bytes = match tokio::time::timeout_at(deadline, response.bytes()).await {
            Err(_) => return Err((timeout(), None)),
            Ok(Err(e)) => return Err((self.transport_error(e), None)),
            Ok(Ok(b)) => b,
        };
        if status.is_success() {
            return Ok(Posted::Whole(bytes.to_vec()));
        }
        Err((
            self.status_error(status.as_u16(), &bytes, retry_after),
            retry_after.filter(|d| *d <= MAX_RETRY_AFTER),
        ))
    }

    fn transport_error(&self, e: reqwest::Error) -> OpenAiError {
        if e.is_timeout() {
            return OpenAiError::Timeout {
                url: self.endpoint.clone(),
                timeout: self.timeout,
                attempts: 1,
            };
        }
        OpenAiError::Connect {
            url: self.endpoint.clone(),
            // The URL is in the error already.
            reason: chain(&e.without_url()),
            attempts: 1,
        }
    }

    /// The error for an HTTP error status, with the server's message and ckpt's hint.
    fn status_error(&self, status: u16, body: &[u8], retry_after: Option<Duration>) -> OpenAiError {
        let (message, error_type, code) = api_error(body);
        let hint = match status {
            401 | 403 if !self.key_sent => Some(match &self.key_var {
                Some(var) => format!("no API key was sent: set the environment variable {var}"),
                None => "no API key was sent: the model was built without one".to_owned(),
            }),
            404 if !self.base_url.ends_with("/v1") => Some(
                "check the base URL: OpenAI-compatible servers usually serve it under /v1"
                    .to_owned(),
            ),
            _ => match retry_after {
                Some(d) if d > MAX_RETRY_AFTER => Some(format!(
                    "the server asks to wait {} s before trying again, longer than the {} s ckpt waits",
                    d.as_secs(),
                    MAX_RETRY_AFTER.as_secs()
                )),
                _ => None,
            },
        };
        OpenAiError::Status {
            url: self.endpoint.clone(),
            status,
            message,
            error_type,
            code,
            hint,
            attempts: 1,
        }
    }

    fn malformed(&self, reason: impl Into<String>, body: &[u8]) -> OpenAiError {
        OpenAiError::Malformed {
            url: self.endpoint.clone(),
            reason: reason.into(),
            excerpt: excerpt(body),
        }
    }

    /// Reads a streamed reply to its end, handing `on_token` each piece of text.
    async fn read_stream(
        &self,
        mut response: reqwest::Response,
        deadline: Instant,
        on_token: &mut (dyn for<'t> FnMut(&'t str) + Send),
    ) -> Result<AssistantTurn, OpenAiError> {
        let broke = |reason: String| OpenAiError::Stream {
            url: self.endpoint.clone(),
            reason,
        };
        let mut events = SseParser::default();
        let mut turn = StreamedTurn::default();
        loop {
            let chunk = match tokio::time::timeout_at(deadline, response.chunk()).await {
                Err(_) => {
                    return Err(OpenAiError::Timeout {
                        url: self.endpoint.clone(),
                        timeout: self.timeout,
                        attempts: 1,
                    })
                }
                Ok(Err(e)) => return Err(broke(chain(&e.without_url()))),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(bytes))) => bytes,
            };
            for data in events
                .push(&chunk)
                .map_err(|bad| self.malformed("an event stream line is not UTF-8", &bad))?
            {
                if turn.apply(self, &data, on_token)? {
                    return turn.finish(self);
                }
            }
        }
        if let Some(data) = events
            .finish()
            .map_err(|bad| self.malformed("an event stream line is not UTF-8", &bad))?
        {
            if turn.apply(self, &data, on_token)? {
                return turn.finish(self);
            }
        }
        if turn.finish_reason.is_none() {
            return Err(broke(if turn.events == 0 {
                "the server closed the stream without sending an event".to_owned()
            } else {
                format!(
                    "the stream ended after {} event(s) without `data: [DONE]` or a finish_reason",
                    turn.events
                )
            }));
        }
        turn.finish(self)
    }
}

/// A reply that came: whole, or a stream still to read before `deadline`.
enum Posted {
    Whole(Vec<u8>),
    Stream(reqwest::Response, Instant),
}

/// `from_env`, with `env` for the environment.
fn builder_from(
    env: impl Fn(&str) -> Option<String>,
) -> Result<OpenAiChatModelBuilder, OpenAiError> {
    let model = env(OpenAiChatModel::MODEL_VAR)
        .filter(|m| !m.trim().is_empty())
        .ok_or_else(|| OpenAiError::MissingModel {
            var: OpenAiChatModel::MODEL_VAR.to_owned(),
        })?;
    let mut b = OpenAiChatModelBuilder::new(model);
    if let Some(url) = env(OpenAiChatModel::BASE_URL_VAR).filter(|u| !u.trim().is_empty()) {
        b = b.base_url(url.trim());
    }
    Ok(b)
}

#[async_trait]
impl ChatModel for OpenAiChatModel {
    async fn complete(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
    ) -> Result<AssistantTurn, BoxError> {
        let body = self.request_body(messages, tools, false)?;
        let bytes = match self.post(body, false).await? {
            Posted::Whole(b) => b,
            // Unreachable: post(.., false) reads the body. Answered as an error, not a panic.
            Posted::Stream(..) => return Err(self.malformed("an unexpected stream", b"").into()),
        };
        Ok(parse_completion(self, &bytes)?)
    }

    async fn complete_streaming(
        &self,
        messages: &[Message],
        tools: &[ToolSpec],
        on_token: &mut (dyn for<'t> FnMut(&'t str) + Send),
    ) -> Result<AssistantTurn, BoxError> {
        let body = self.request_body(messages, tools, true)?;
        match self.post(body, true).await? {
            Posted::Stream(response, deadline) => {
                Ok(self.read_stream(response, deadline, on_token).await?)
            }
            Posted::Whole(bytes) => {
                let turn = parse_completion(self, &bytes)?;
                if !turn.content.is_empty() {
                    on_token(&turn.content);
                }
                Ok(turn)
            }
        }
    }
}

/// Message `index` as the API wants it.
fn wire_message(index: usize, m: &Message) -> Result<Value, OpenAiError> {
    Ok(match m.role {
        Role::System => json!({"role": "system", "content": m.content}),
        Role::User => json!({"role": "user", "content": m.content}),
        Role::Assistant if m.tool_calls.is_empty() => {
            json!({"role": "assistant", "content": m.content})
        }
        Role::Assistant => {
            let calls: Vec<Value> = m
                .tool_calls
                .iter()
                .map(|c| {
                    json!({
                        "id": c.id,
                        "type": "function",
                        // The API carries arguments as a JSON text, not as an object.
                        "function": {"name": c.name, "arguments": c.arguments.to_string()},
                    })
                })
                .collect();
            // OpenAI takes null for "no text" beside tool calls; some servers reject "".
            let content = if m.content.is_empty() {
                Value::Null
            } else {
                Value::String(m.content.clone())
            };
            json!({"role": "assistant", "content": content, "tool_calls": calls})
        }
        Role::Tool => {
            let id = m
                .tool_call_id
                .as_deref()
                .ok_or_else(|| OpenAiError::InvalidMessage {
                    index,
                    reason: "a tool result without tool_call_id (the id of the call it answers)"
                        .to_owned(),
                })?;
            json!({"role": "tool", "tool_call_id": id, "content": m.content})
        }
    })
}

/// The parts of a chat completion that are read; everything else is ignored.
#[derive(Deserialize)]
struct Completion {
    choices: Option<Vec<Choice>>,
}

#[derive(Deserialize)]
struct Choice {
    message: Option<ReplyMessage>,
}

#[derive(Deserialize)]
struct ReplyMessage {
    content: Option<Value>,
    refusal: Option<String>,
    tool_calls: Option<Vec<ReplyToolCall>>,
}

#[derive(Deserialize)]
struct ReplyToolCall {
    id: Option<String>,
    function: Option<ReplyFunction>,
}

#[derive(Deserialize)]
struct ReplyFunction {
    name: Option<String>,
    /// A JSON text per the API; a few servers send the object itself.
    arguments: Option<Value>,
}

/// The text of a `content`: a string, or (in newer APIs) a list of parts with `text`.
fn content_text(content: Option<&Value>) -> String {
    match content {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str))
            .collect(),
        _ => String::new(),
    }
}

fn parse_completion(model: &OpenAiChatModel, body: &[u8]) -> Result<AssistantTurn, OpenAiError> {
    let completion: Completion = serde_json::from_slice(body)
        .map_err(|e| model.malformed(format!("not the JSON of a chat completion ({e})"), body))?;
    let choice = completion
        .choices
        .and_then(|c| c.into_iter().next())
        .ok_or_else(|| model.malformed("it has no choices", body))?;
    let message = choice
        .message
        .ok_or_else(|| model.malformed("its first choice has no message", body))?;
    let mut content = content_text(message.content.as_ref());
    if content.is_empty() {
        // A refusal is the model's answer as far as the conversation goes.
        content = message.refusal.unwrap_or_default();
    }
    let mut tool_calls = Vec::new();
    for (index, call) in message
        .tool_calls
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        let function = call
            .function
            .ok_or_else(|| model.malformed(format!("tool call {index} has no function"), body))?;
        let name = function.name.filter(|n| !n.is_empty()).ok_or_else(|| {
            model.malformed(format!("tool call {index} has no function name"), body)
        })?;
        let id = call_id(call.id, index);
        let arguments = match function.arguments {
            Some(Value::String(text)) => parse_arguments(&name, &id, &text)?,
            None | Some(Value::Null) => json!({}),
            Some(v) => v,
        };
        tool_calls.push(ToolCall::new(id, name, arguments));
    }
    Ok(AssistantTurn {
        content,
        tool_calls,
    })
}

/// The call's id, or one made up from its position: the agents key journaled tool calls and
/// tool results by id, and a few local servers send none.
fn call_id(id: Option<String>, index: usize) -> String {
    id.filter(|i| !i.is_empty())
        .unwrap_or_else(|| format!("call_{index}"))
}

/// A tool call's arguments; an empty text (a call without arguments, as some servers write it)
/// is `{}`.
fn parse_arguments(tool: &str, call_id: &str, text: &str) -> Result<Value, OpenAiError> {
    if text.trim().is_empty() {
        return Ok(json!({}));
    }
    serde_json::from_str(text).map_err(|e| OpenAiError::ToolArguments {
        tool: tool.to_owned(),
        call_id: call_id.to_owned(),
        arguments: text.to_owned(),
        reason: e.to_string(),
    })
}

/// The message, type and code of an error body: OpenAI's `{"error": {"message", "type",
/// "code"}}`, Ollama's `{"error": "..."}`, older vLLM's `{"message", "type", "code"}`, or
/// the start of whatever else came.
fn api_error(body: &[u8]) -> (String, Option<String>, Option<String>) {
    let text = |v: Option<&Value>| -> Option<String> {
        match v? {
            Value::String(s) => Some(s.clone()),
            Value::Null => None,
            other => Some(other.to_string()),
        }
    };
    if let Ok(v) = serde_json::from_slice::<Value>(body) {
        let err = match v.get("error") {
            Some(Value::String(s)) => return (s.clone(), None, None),
            Some(e @ Value::Object(_)) => e,
            _ => &v,
        };
        if let Some(message) = text(err.get("message")) {
            return (message, text(err.get("type")), text(err.get("code")));
        }
    }
    let e = excerpt(body);
    (
        if e.trim().is_empty() {
            "(empty body)".to_owned()
        } else {
            e
        },
        None,
        None,
    )
}

/// The wait a response asks for: `retry-after-ms` (OpenAI), or `Retry-After` in seconds.
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let number = |name: &str| -> Option<f64> {
        let v: f64 = headers.get(name)?.to_str().ok()?.trim().parse().ok()?;
        (v.is_finite() && v >= 0.0).then_some(v)
    };
    if let Some(ms) = number("retry-after-ms") {
        return Some(Duration::from_secs_f64(ms / 1000.0));
    }
    // An HTTP date is possible too; servers of this API send seconds, and a date is ignored
    // (the backoff applies).
    number("retry-after").map(|s| Duration::from_secs_f64(s.min(1e9)))
}

/// The start of `body`, as text, for an error message.
fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let mut out: String = text.chars().take(EXCERPT_CHARS).collect();
    if text.chars().nth(EXCERPT_CHARS).is_some() {
        out.push_str("...");
    }
    out
}

/// An error and its causes, on one line: reqwest's own message ("error sending request") says
/// little; the cause (connection refused, DNS, certificate) is what a person acts on.
fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut out = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        let text = s.to_string();
        // Some layers repeat their cause in their own message.
        if !out.contains(&text) {
            out.push_str(": ");
            out.push_str(&text);
        }
        source = s.source();
    }
    out
}

/// Splits a server-sent event stream into the `data` of its events, across chunks that may
/// split a line or a UTF-8 character anywhere.
#[derive(Default)]
struct SseParser {
    /// Bytes of the line not yet ended.
    line: Vec<u8>,
    /// The `data` lines of the event not yet ended, joined by `\n`.
    data: Option<String>,
}

impl SseParser {
    /// Feeds `chunk`; returns the data of the events it completed, or the bytes of a line that
    /// is not UTF-8.
    fn push(&mut self, chunk: &[u8]) -> Result<Vec<String>, Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            self.line.extend_from_slice(&rest[..pos]);
            rest = &rest[pos + 1..];
            let line = std::mem::take(&mut self.line);
            if let Some(data) = self.line_done(line)? {
                out.push(data);
            }
        }
        self.line.extend_from_slice(rest);
        Ok(out)
    }

    /// The stream ended: the data of an event it left unterminated, if any.
    fn finish(&mut self) -> Result<Option<String>, Vec<u8>> {
        let line = std::mem::take(&mut self.line);
        if !line.is_empty() {
            if let Some(data) = self.line_done(line)? {
                return Ok(Some(data));
            }
        }
        Ok(self.data.take())
    }

    fn line_done(&mut self, mut line: Vec<u8>) -> Result<Option<String>, Vec<u8>> {
        if line.last() == Some(&b'\r') {
            line.pop();
        }
        if line.is_empty() {
            return Ok(self.data.take());
        }
        let line = String::from_utf8(line).map_err(|e| e.into_bytes())?;
        // Comments (`: keep-alive`) and the other fields (`event:`, `id:`, `retry:`) carry
        // nothing this API needs.
        if let Some(value) = line.strip_prefix("data:") {
            let value = value.strip_prefix(' ').unwrap_or(value);
            match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_owned()),
            }
        }
        Ok(None)
    }
}

/// The turn being put together from a stream's chunks.
#[derive(Default)]
struct StreamedTurn {
    content: String,
    /// Tool calls by their `index`: id and name come first, the arguments in fragments.
    calls: BTreeMap<u64, PartialCall>,
    finish_reason: Option<String>,
    events: usize,
}

#[derive(Default)]
struct PartialCall {
    id: String,
    name: String,
    arguments: String,
}

#[derive(Deserialize)]
struct Chunk {
    choices: Option<Vec<ChunkChoice>>,
    error: Option<Value>,
}

#[derive(Deserialize)]
struct ChunkChoice {
    index: Option<u64>,
    delta: Option<Delta>,
    finish_reason: Option<String>,
}

#[derive(Deserialize)]
struct Delta {
    content: Option<Value>,
    tool_calls: Option<Vec<DeltaToolCall>>,
}

#[derive(Deserialize)]
struct DeltaToolCall {
    index: Option<u64>,
    id: Option<String>,
    function: Option<DeltaFunction>,
}

#[derive(Deserialize)]
struct DeltaFunction {
    name: Option<String>,
    arguments: Option<Value>,
}

impl StreamedTurn {
    /// Applies one event; true at `[DONE]`.
    fn apply(
        &mut self,
        model: &OpenAiChatModel,
        data: &str,
        on_token: &mut (dyn for<'t> FnMut(&'t str) + Send),
    ) -> Result<bool, OpenAiError> {
        if data.trim() == "[DONE]" {
            return Ok(true);
        }
        self.events += 1;
        let chunk: Chunk = serde_json::from_str(data).map_err(|e| {
            model.malformed(
                format!("an event is not a chat completion chunk ({e})"),
                data.as_bytes(),
            )
        })?;
        if let Some(err) = chunk.error {
            let (message, _, _) = api_error(json!({ "error": err }).to_string().as_bytes());
            return Err(OpenAiError::Stream {
                url: model.endpoint.clone(),
                reason: format!("the server sent an error: {message}"),
            });
        }
        // Only the first choice is read (ckpt asks for one); a chunk without choices (usage
        // statistics) carries nothing for the turn.
        for choice in chunk.choices.unwrap_or_default() {
            if choice.index.unwrap_or(0) != 0 {
                continue;
            }
            if let Some(delta) = choice.delta {
                let text = content_text(delta.content.as_ref());
                if !text.is_empty() {
                    self.content.push_str(&text);
                    on_token(&text);
                }
                for (position, d) in delta.tool_calls.unwrap_or_default().into_iter().enumerate() {
                    let call = self
                        .calls
                        .entry(d.index.unwrap_or(position as u64))
                        .or_default();
                    if let Some(id) = d.id.filter(|i| !i.is_empty()) {
                        call.id = id;
                    }
                    if let Some(f) = d.function {
                        if let Some(name) = f.name.filter(|n| !n.is_empty()) {
                            call.name = name;
                        }
                        match f.arguments {
                            Some(Value::String(s)) => call.arguments.push_str(&s),
                            Some(Value::Null) | None => {}
                            Some(v) => call.arguments.push_str(&v.to_string()),
                        }
                    }
                }
            }
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason);
            }
        }
        Ok(false)
    }

    fn finish(self, model: &OpenAiChatModel) -> Result<AssistantTurn, OpenAiError> {
        let mut tool_calls = Vec::with_capacity(self.calls.len());
        for (position, (index, call)) in self.calls.into_iter().enumerate() {
            if call.name.is_empty() {
                return Err(OpenAiError::Malformed {
                    url: model.endpoint.clone(),
                    reason: format!("streamed tool call {index} has no function name"),
                    excerpt: call.arguments,
                });
            }
            let id = call_id(Some(call.id), position);
            let arguments = parse_arguments(&call.name, &id, &call.arguments)?;
            tool_calls.push(ToolCall::new(id, call.name, arguments));
        }
        Ok(AssistantTurn {
            content: self.content,
            tool_calls,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env<'a>(vars: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<String> + 'a {
        move |name| {
            vars.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn sse_events_survive_any_split_of_the_bytes() {
        let stream = "data: {\"a\":\"h\u{e9}\"}\r\n\r\n: keep-alive\n\nevent: x\ndata: one\ndata: two\n\ndata: [DONE]\n\n";
        let bytes = stream.as_bytes();
        for split in 0..bytes.len() {
            let mut p = SseParser::default();
            let mut got = p.push(&bytes[..split]).unwrap();
            got.extend(p.push(&bytes[split..]).unwrap());
            assert_eq!(p.finish().unwrap(), None, "split at {split}");
            assert_eq!(
                got,
                ["{\"a\":\"h\u{e9}\"}", "one\ntwo", "[DONE]"],
                "split at {split}"
            );
        }
    }

    #[test]
    fn sse_unterminated_last_event_and_bad_utf8() {
        let mut p = SseParser::default();
        assert!(p.push(b"data: last").unwrap().is_empty());
        assert_eq!(p.finish().unwrap().as_deref(), Some("last"));
        let mut p = SseParser::default();
        assert_eq!(p.push(b"data: \xff\xfe\n").unwrap_err(), b"data: \xff\xfe");
    }

    #[test]
    fn api_error_reads_the_dialects() {
        let openai = br#"{"error":{"message":"Incorrect API key","type":"invalid_request_error","code":"invalid_api_key"}}"#;
        assert_eq!(
            api_error(openai),
            (
                "Incorrect API key".into(),
                Some("invalid_request_error".into()),
                Some("invalid_api_key".into())
            )
        );
        assert_eq!(
            api_error(br#"{"error":"model 'x' not found"}"#),
            ("model 'x' not found".into(), None, None)
        );
        assert_eq!(
            api_error(br#"{"object":"error","message":"bad","type":"BadRequestError","code":400}"#),
            (
                "bad".into(),
                Some("BadRequestError".into()),
                Some("400".into())
            )
        );
        assert_eq!(api_error(b"<html>502</html>").0, "<html>502</html>");
        assert_eq!(api_error(b"").0, "(empty body)");
    }

    #[test]
    fn retry_after_headers() {
        let mut h = HeaderMap::new();
        assert_eq!(retry_after(&h), None);
        h.insert("retry-after", HeaderValue::from_static("2"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(2)));
        h.insert("retry-after-ms", HeaderValue::from_static("150"));
        assert_eq!(retry_after(&h), Some(Duration::from_millis(150)));
        h.remove("retry-after-ms");
        h.insert(
            "retry-after",
            HeaderValue::from_static("Wed, 21 Oct 2015 07:28:00 GMT"),
        );
        assert_eq!(retry_after(&h), None);
    }

    #[test]
    fn builder_reads_the_environment_and_names_what_is_missing() {
        // OpenAI's own API needs a key: its variable is named.
        let err = builder_from(env(&[("OPENAI_MODEL", "gpt-4o-mini")]))
            .unwrap()
            .build_with(env(&[]))
            .unwrap_err();
        assert!(
            matches!(&err, OpenAiError::MissingApiKey { var } if var == "OPENAI_API_KEY"),
            "{err}"
        );
        assert!(err.to_string().contains("OPENAI_API_KEY"), "{err}");
        // A local server does not.
        let m = builder_from(env(&[
            ("OPENAI_MODEL", "llama3.2"),
            ("OPENAI_BASE_URL", "http://localhost:11434/v1/"),
        ]))
        .unwrap()
        .build_with(env(&[]))
        .unwrap();
        assert_eq!(m.endpoint(), "http://localhost:11434/v1/chat/completions");
        assert_eq!(m.model_name(), "llama3.2");
        assert!(!m.key_sent);
        // A key that is set is sent, and never shown.
        let m = builder_from(env(&[("OPENAI_MODEL", "gpt-4o")]))
            .unwrap()
            .build_with(env(&[("OPENAI_API_KEY", "sk-secret")]))
            .unwrap();
        assert!(m.key_sent);
        assert_eq!(m.headers[AUTHORIZATION], "Bearer sk-secret");
        assert!(!format!("{m:?}").contains("sk-secret"));
        // No model: the variable is named.
        let err = builder_from(env(&[])).unwrap_err();
        assert!(err.to_string().contains("OPENAI_MODEL"), "{err}");
        // A variable named explicitly is required, even for a local server.
        let err = OpenAiChatModel::builder("m")
            .base_url("http://127.0.0.1:1/v1")
            .api_key_env("MY_KEY")
            .build_with(env(&[("MY_KEY", "")]))
            .unwrap_err();
        assert!(
            matches!(&err, OpenAiError::MissingApiKey { var } if var == "MY_KEY"),
            "{err}"
        );
    }

    #[test]
    fn builder_rejects_unusable_settings() {
        let bad = |b: OpenAiChatModelBuilder| match b.build_with(|_| None) {
            Err(OpenAiError::Config(reason)) => reason,
            other => panic!("expected a configuration error, got {other:?}"),
        };
        let local = || OpenAiChatModel::builder("m").base_url("http://localhost/v1");
        assert!(bad(local().base_url("localhost:8080")).contains("localhost:8080"));
        assert!(bad(local().base_url("ftp://host/v1")).contains("http"));
        assert!(bad(local().base_url("http://h/v1?api-version=1")).contains("query"));
        assert!(bad(local().model(" ")).contains("model"));
        assert!(bad(local().header("bad name", "x")).contains("bad name"));
        assert!(bad(local().header("x-ok", "line\nbreak")).contains("x-ok"));
        assert!(bad(local().api_key("sk\nx")).contains("API key"));
    }

    #[test]
    fn messages_map_to_the_wire_format() {
        let call = ToolCall::new("c1", "add", json!({"a": 1}));
        assert_eq!(
            wire_message(0, &Message::assistant("", vec![call])).unwrap(),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "c1", "type": "function", "function": {"name": "add", "arguments": "{\"a\":1}"}}
            ]})
        );
        let mut orphan = Message::tool("c1", "2");
        orphan.tool_call_id = None;
        let err = wire_message(3, &orphan).unwrap_err();
        assert!(
            matches!(err, OpenAiError::InvalidMessage { index: 3, .. }),
            "{err}"
        );
    }
}
