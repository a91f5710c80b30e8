//! `OpenAiChatModel` (feature `openai`) against a real HTTP server on 127.0.0.1 that speaks the
//! chat-completions protocol: it checks what the client sends (path, key, body, tools) the way
//! OpenAI's API does, records every request, and answers from a script: whole replies, event
//! streams split anywhere, error statuses, dropped connections, silence.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use ckpt::error::BoxError;
use ckpt::graph::{Outcome, RunConfig};
use ckpt::prebuilt::{
    create_react_agent, AgentConfig, AgentState, AssistantTurn, ChatModel, Message,
    OpenAiChatModel, OpenAiChatModelBuilder, OpenAiError, Role, Tool, ToolCall, ToolSpec,
};
use ckpt::Store;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;

// ---------------------------------------------------------------------------------------------
// The server.

/// A request as the server read it.
#[derive(Debug, Clone)]
struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
}

/// One piece of a streamed reply.
enum Piece {
    Bytes(Vec<u8>),
    /// Sends nothing more until the test says so (or 5 s pass), recording whether it did.
    WaitFor(Arc<Notify>, Arc<AtomicBool>),
}

/// What the server answers a request with.
enum Reply {
    /// Status, extra headers, body.
    Json(u16, Vec<(&'static str, String)>, String),
    /// 200 with `text/event-stream`, each piece written (and flushed) on its own.
    Sse(Vec<Piece>),
    /// Closes the connection without answering.
    Close,
    /// Answers nothing for this long, then closes.
    Hang(Duration),
}

type Handler = Box<dyn FnOnce(&Request) -> Reply + Send>;

struct Server {
    /// The base URL, `http://127.0.0.1:PORT/v1`.
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    /// Starts a server that wants `Authorization: Bearer <key>` when `key` is given, and answers
    /// the requests that pass its checks with `script`, in order.
    async fn start(key: Option<&str>, script: Vec<Handler>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/v1", listener.local_addr().unwrap());
        let requests = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(VecDeque::from(script)));
        let key = key.map(str::to_owned);
        let log = requests.clone();
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                tokio::spawn(serve(conn, key.clone(), log.clone(), script.clone()));
            }
        });
        Server { url, requests }
    }

    fn requests(&self) -> Vec<Request> {
        self.requests.lock().unwrap().clone()
    }

    /// A model on this server with key `sk-test`, retrying fast.
    fn model(&self) -> OpenAiChatModelBuilder {
        OpenAiChatModel::builder("test-model")
            .base_url(&self.url)
            .api_key("sk-test")
            .retry_backoff(Duration::from_millis(5))
            .timeout(Duration::from_secs(20))
    }
}

/// Serves one connection: requests one after another (keep-alive) until the client closes.
async fn serve(
    mut conn: TcpStream,
    key: Option<String>,
    log: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<VecDeque<Handler>>>,
) {
    let mut buf = Vec::new();
    while let Some(req) = read_request(&mut conn, &mut buf).await {
        log.lock().unwrap().push(req.clone());
        let reply = match check(&req, key.as_deref()) {
            Err(reply) => reply,
            Ok(()) => match script.lock().unwrap().pop_front() {
                Some(handler) => handler(&req),
                None => error(
                    500,
                    "the test server's script is used up",
                    "server_error",
                    None,
                ),
            },
        };
        match reply {
            Reply::Json(status, headers, body) => {
                let mut head = format!(
                    "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
                    body.len()
                );
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                if conn.write_all(head.as_bytes()).await.is_err()
                    || conn.write_all(body.as_bytes()).await.is_err()
                {
                    return;
                }
            }
            Reply::Sse(pieces) => {
                let head = "HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n";
                if conn.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                for piece in pieces {
                    match piece {
                        Piece::Bytes(b) => {
                            let mut chunk = format!("{:x}\r\n", b.len()).into_bytes();
                            chunk.extend_from_slice(&b);
                            chunk.extend_from_slice(b"\r\n");
                            if conn.write_all(&chunk).await.is_err() {
                                return;
                            }
                            let _ = conn.flush().await;
                            tokio::time::sleep(Duration::from_millis(3)).await;
                        }
                        Piece::WaitFor(notify, released) => {
                            let woke =
                                tokio::time::timeout(Duration::from_secs(5), notify.notified())
                                    .await
                                    .is_ok();
                            released.store(woke, SeqCst);
                        }
                    }
                }
                if conn.write_all(b"0\r\n\r\n").await.is_err() {
                    return;
                }
            }
            Reply::Close => return,
            Reply::Hang(d) => {
                tokio::time::sleep(d).await;
                return;
            }
        }
    }
}

/// Reads one HTTP/1.1 request (headers, then a `content-length` body); None at the end.
async fn read_request(conn: &mut TcpStream, buf: &mut Vec<u8>) -> Option<Request> {
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let mut more = [0u8; 4096];
        let n = conn.read(&mut more).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&more[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).ok()?;
    buf.drain(..head_end + 4);
    let mut lines = head.split("\r\n");
    let mut first = lines.next()?.split(' ');
    let (method, path) = (first.next()?.to_owned(), first.next()?.to_owned());
    let headers: Vec<(String, String)> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_owned()))
        .collect();
    let len: usize = headers
        .iter()
        .find(|(k, _)| k == "content-length")
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0);
    while buf.len() < len {
        let mut more = [0u8; 4096];
        let n = conn.read(&mut more).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&more[..n]);
    }
    let body = buf.drain(..len).collect();
    Some(Request {
        method,
        path,
        headers,
        body,
    })
}

/// OpenAI's error body.
fn error(status: u16, message: &str, kind: &str, code: Option<&str>) -> Reply {
    error_with(status, message, kind, code, Vec::new())
}

fn error_with(
    status: u16,
    message: &str,
    kind: &str,
    code: Option<&str>,
    headers: Vec<(&'static str, String)>,
) -> Reply {
    Reply::Json(
        status,
        headers,
        json!({"error": {"message": message, "type": kind, "param": null, "code": code}})
            .to_string(),
    )
}

/// What OpenAI's API checks before it looks at a request: the URL, the key, a JSON body with a
/// model and well-formed messages and tools.
fn check(req: &Request, key: Option<&str>) -> Result<(), Reply> {
    if req.method != "POST" || req.path != "/v1/chat/completions" {
        let msg = format!("Unknown request URL: {} {}.", req.method, req.path);
        return Err(error(
            404,
            &msg,
            "invalid_request_error",
            Some("unknown_url"),
        ));
    }
    if let Some(key) = key {
        if req.header("authorization") != Some(&format!("Bearer {key}")) {
            let msg = "Incorrect API key provided. You can find your API key at https://platform.openai.com/account/api-keys.";
            return Err(error(
                401,
                msg,
                "invalid_request_error",
                Some("invalid_api_key"),
            ));
        }
    }
    let bad = |m: &str| Err(error(400, m, "invalid_request_error", None));
    if req.header("content-type") != Some("application/json") {
        return bad("the body must be application/json");
    }
    let body = req.json();
    if !body["model"].is_string() {
        return bad("you must provide a model parameter");
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return bad("'messages' must be a non-empty array");
    };
    for (i, m) in messages.iter().enumerate() {
        let ok = match m["role"].as_str() {
            Some("system" | "user") => m["content"].is_string(),
            Some("assistant") => {
                m["content"].is_string()
                    || (m["content"].is_null()
                        && m["tool_calls"].as_array().is_some_and(|c| {
                            c.iter().all(|c| {
                                c["id"].is_string()
                                    && c["type"] == "function"
                                    && c["function"]["name"].is_string()
                                    && c["function"]["arguments"]
                                        .as_str()
                                        .is_some_and(|a| serde_json::from_str::<Value>(a).is_ok())
                            })
                        }))
            }
            Some("tool") => m["tool_call_id"].is_string() && m["content"].is_string(),
            _ => false,
        };
        if !ok {
            return bad(&format!("Invalid value for messages[{i}]: {m}"));
        }
    }
    if let Some(tools) = body.get("tools") {
        let ok = tools.as_array().is_some_and(|t| {
            !t.is_empty()
                && t.iter().all(|t| {
                    t["type"] == "function"
                        && t["function"]["name"].is_string()
                        && t["function"]["parameters"]["type"] == "object"
                })
        });
        if !ok {
            return bad(&format!("Invalid 'tools': {tools}"));
        }
    }
    Ok(())
}

fn reply(f: impl FnOnce(&Request) -> Reply + Send + 'static) -> Handler {
    Box::new(f)
}

/// A whole chat completion with `message` as its first choice.
fn completion_of(req: &Request, message: Value) -> Reply {
    Reply::Json(
        200,
        Vec::new(),
        json!({
            "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": req.json()["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2},
        })
        .to_string(),
    )
}

fn completion(message: Value) -> Handler {
    reply(move |req| completion_of(req, message))
}

fn text(content: &str) -> Handler {
    completion(json!({"role": "assistant", "content": content}))
}

fn status(code: u16, message: &str) -> Handler {
    let message = message.to_owned();
    reply(move |_| error(code, &message, "server_error", None))
}

/// A raw 200 body.
fn raw(body: &str) -> Handler {
    let body = body.to_owned();
    reply(move |_| Reply::Json(200, Vec::new(), body))
}

/// An event with `data`.
fn event(data: Value) -> Piece {
    Piece::Bytes(format!("data: {data}\n\n").into_bytes())
}

fn chunk(delta: Value, finish: Option<&str>) -> Piece {
    event(json!({
        "id": "chatcmpl-1", "object": "chat.completion.chunk", "created": 1, "model": "test-model",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }))
}

fn done() -> Piece {
    Piece::Bytes(b"data: [DONE]\n\n".to_vec())
}

fn sse(pieces: Vec<Piece>) -> Handler {
    reply(move |_| Reply::Sse(pieces))
}

fn openai_error(e: &BoxError) -> &OpenAiError {
    e.downcast_ref::<OpenAiError>()
        .unwrap_or_else(|| panic!("expected an OpenAiError, got {e:?}"))
}

/// A port nothing listens on.
async fn closed_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap().port()
}

// ---------------------------------------------------------------------------------------------
// Whole replies.

#[tokio::test]
async fn complete_sends_the_conversation_and_tools_and_reads_the_reply() {
    let server = Server::start(
        Some("sk-test"),
        vec![completion(json!({
            "role": "assistant",
            "content": null,
            "tool_calls": [
                {"id": "call_9", "type": "function",
                 "function": {"name": "add", "arguments": "{\"a\": 2, \"b\": 3}"}},
                {"id": "call_10", "type": "function",
                 "function": {"name": "now", "arguments": ""}},
            ],
        }))],
    )
    .await;
    let model = server
        .model()
        .temperature(0.25)
        .max_tokens(64)
        .header("OpenAI-Organization", "org-1")
        .body_field("seed", json!(7))
        .body_field("model", json!("ignored: the model's own fields stay"))
        .build()
        .unwrap();
    let messages = vec![
        Message::system("You add."),
        Message::user("1 + 1?"),
        Message::assistant(
            "",
            vec![ToolCall::new("c1", "add", json!({"a": 1, "b": 1}))],
        ),
        Message::tool("c1", "2"),
        Message::assistant("It is 2.", Vec::new()),
        Message::user("And 2 + 3?"),
    ];
    let schema = json!({
        "type": "object",
        "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
        "required": ["a", "b"],
    });
    let tools = vec![
        ToolSpec::new("add", "Adds a and b.").with_parameters(schema.clone()),
        ToolSpec::new("now", "The time."),
    ];
    let turn = model.complete(&messages, &tools).await.unwrap();
    assert_eq!(
        turn,
        AssistantTurn::tool_calls(
            "",
            vec![
                ToolCall::new("call_9", "add", json!({"a": 2, "b": 3})),
                ToolCall::new("call_10", "now", json!({})),
            ]
        )
    );

    let [req] = server.requests().try_into().unwrap();
    assert_eq!(req.header("authorization"), Some("Bearer sk-test"));
    assert_eq!(req.header("openai-organization"), Some("org-1"));
    assert!(req.header("user-agent").unwrap().starts_with("ckpt/"));
    assert_eq!(
        req.json(),
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "You add."},
                {"role": "user", "content": "1 + 1?"},
                {"role": "assistant", "content": null, "tool_calls": [
                    {"id": "c1", "type": "function",
                     "function": {"name": "add", "arguments": "{\"a\":1,\"b\":1}"}},
                ]},
                {"role": "tool", "tool_call_id": "c1", "content": "2"},
                {"role": "assistant", "content": "It is 2."},
                {"role": "user", "content": "And 2 + 3?"},
            ],
            "tools": [
                {"type": "function", "function": {
                    "name": "add", "description": "Adds a and b.", "parameters": schema}},
                {"type": "function", "function": {
                    "name": "now", "description": "The time.",
                    "parameters": {"type": "object", "properties": {}}}},
            ],
            "temperature": 0.25,
            "max_tokens": 64,
            "seed": 7,
        })
    );
}

#[tokio::test]
async fn replies_in_other_servers_dialects_are_read() {
    let server = Server::start(
        None,
        vec![
            // Text as a list of parts.
            completion(json!({"role": "assistant", "content": [
                {"type": "text", "text": "Hello, "}, {"type": "text", "text": "world"}]})),
            // A refusal, no content.
            completion(json!({"role": "assistant", "content": null, "refusal": "I can't."})),
            // Arguments as an object, and no call id.
            completion(json!({"role": "assistant", "content": "", "tool_calls": [
                {"type": "function", "function": {"name": "add", "arguments": {"a": 1}}}]})),
        ],
    )
    .await;
    let model = server.model().build().unwrap();
    let hi = [Message::user("hi")];
    assert_eq!(
        model.complete(&hi, &[]).await.unwrap().content,
        "Hello, world"
    );
    assert_eq!(model.complete(&hi, &[]).await.unwrap().content, "I can't.");
    let turn = model.complete(&hi, &[]).await.unwrap();
    assert_eq!(
        turn.tool_calls,
        [ToolCall::new("call_0", "add", json!({"a": 1}))]
    );
    // No tools offered: no `tools` field (some servers reject an empty list).
    assert!(server.requests()[0].json().get("tools").is_none());
}

// ---------------------------------------------------------------------------------------------
// Keys and configuration.

#[tokio::test]
async fn the_key_comes_from_the_named_variable_and_a_missing_key_is_explained() {
    let server = Server::start(Some("sk-env"), vec![text("ok")]).await;
    // Only this test uses this variable.
    std::env::set_var("CKPT_TEST_OPENAI_KEY", "sk-env");
    let model = server
        .model()
        .api_key_env("CKPT_TEST_OPENAI_KEY")
        .build()
        .unwrap();
    assert_eq!(
        model.complete(&[Message::user("hi")], &[]).await.unwrap(),
        AssistantTurn::text("ok")
    );
    assert_eq!(
        server.requests()[0].header("authorization"),
        Some("Bearer sk-env")
    );

    // No key sent: the server's 401, and what to do.
    let keyless = server.model().without_api_key().build().unwrap();
    let e = keyless
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    match openai_error(&e) {
        OpenAiError::Status {
            status: 401,
            message,
            code,
            attempts: 1,
            ..
        } => {
            assert!(
                message.starts_with("Incorrect API key provided"),
                "{message}"
            );
            assert_eq!(code.as_deref(), Some("invalid_api_key"));
        }
        other => panic!("expected a 401, got {other:?}"),
    }
    assert!(e.to_string().contains("no API key was sent"), "{e}");
    assert_eq!(server.requests()[1].header("authorization"), None);

    // A named variable that is not set: building fails, naming it.
    let e = server
        .model()
        .api_key_env("CKPT_TEST_OPENAI_KEY_NOT_SET")
        .build()
        .unwrap_err();
    assert!(
        matches!(&e, OpenAiError::MissingApiKey { var } if var == "CKPT_TEST_OPENAI_KEY_NOT_SET"),
        "{e}"
    );
    assert!(
        e.to_string().contains("CKPT_TEST_OPENAI_KEY_NOT_SET"),
        "{e}"
    );
}

#[tokio::test]
async fn from_env_reads_the_openai_variables() {
    let server = Server::start(Some("sk-from-env"), vec![text("hello")]).await;
    // Only this test sets these variables; every other test gives its model a key explicitly.
    std::env::set_var("OPENAI_BASE_URL", &server.url);
    std::env::set_var("OPENAI_MODEL", "env-model");
    std::env::set_var("OPENAI_API_KEY", "sk-from-env");
    let model = OpenAiChatModel::from_env().unwrap();
    assert_eq!(model.base_url(), server.url);
    assert_eq!(model.model_name(), "env-model");
    assert_eq!(
        model.complete(&[Message::user("hi")], &[]).await.unwrap(),
        AssistantTurn::text("hello")
    );
    let req = &server.requests()[0];
    assert_eq!(req.json()["model"], "env-model");
    assert_eq!(req.header("authorization"), Some("Bearer sk-from-env"));
    assert!(!format!("{model:?}").contains("sk-from-env"));
}

#[tokio::test]
async fn a_wrong_base_url_is_named_with_the_servers_message() {
    let server = Server::start(None, Vec::new()).await;
    let base = server.url.trim_end_matches("/v1").to_owned();
    let model = server.model().base_url(&base).build().unwrap();
    let e = model
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Status { status: 404, .. }),
        "{e}"
    );
    let text = e.to_string();
    assert!(text.contains(&format!("{base}/chat/completions")), "{text}");
    assert!(
        text.contains("Unknown request URL: POST /chat/completions"),
        "{text}"
    );
    assert!(text.contains("/v1"), "{text}");
}

#[tokio::test]
async fn an_unreachable_server_is_named_after_bounded_tries() {
    let port = closed_port().await;
    let url = format!("http://127.0.0.1:{port}/v1");
    let model = OpenAiChatModel::builder("m")
        .base_url(&url)
        .without_api_key()
        .max_retries(1)
        .retry_backoff(Duration::from_millis(5))
        .build()
        .unwrap();
    let e = model
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    match openai_error(&e) {
        OpenAiError::Connect {
            url: u, attempts, ..
        } => {
            assert_eq!(u, &format!("{url}/chat/completions"));
            assert_eq!(*attempts, 2);
        }
        other => panic!("expected a connection error, got {other:?}"),
    }
    let text = e.to_string();
    assert!(text.contains(&format!("127.0.0.1:{port}")), "{text}");
    assert!(text.to_lowercase().contains("refused"), "{text}");
    assert!(text.contains("gave up after 2 tries"), "{text}");
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let server = Server::start(None, vec![reply(|_| Reply::Hang(Duration::from_secs(5)))]).await;
    let model = server
        .model()
        .timeout(Duration::from_millis(300))
        .max_retries(0)
        .build()
        .unwrap();
    let started = Instant::now();
    let e = model
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Timeout { attempts: 1, .. }),
        "{e}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "{:?}",
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------------------
// Retries.

#[tokio::test]
async fn a_rate_limit_then_success_is_retried_with_the_same_request() {
    let server = Server::start(
        None,
        vec![
            reply(|_| {
                error_with(
                    429,
                    "Rate limit reached",
                    "requests",
                    Some("rate_limit_exceeded"),
                    vec![("retry-after-ms", "20".into())],
                )
            }),
            text("after the wait"),
        ],
    )
    .await;
    let model = server.model().build().unwrap();
    let turn = model.complete(&[Message::user("hi")], &[]).await.unwrap();
    assert_eq!(turn.content, "after the wait");
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body, reqs[1].body);
}

#[tokio::test]
async fn server_errors_are_retried_a_bounded_number_of_times() {
    let server = Server::start(
        None,
        (0..5)
            .map(|_| status(503, "The server is overloaded"))
            .collect(),
    )
    .await;
    let model = server.model().max_retries(2).build().unwrap();
    let e = model
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            openai_error(&e),
            OpenAiError::Status { status: 503, attempts: 3, message, .. }
                if message == "The server is overloaded"
        ),
        "{e}"
    );
    assert!(e.to_string().contains("gave up after 3 tries"), "{e}");
    assert_eq!(server.requests().len(), 3);

    // With retries off, one request.
    let server = Server::start(None, vec![status(500, "boom"), text("unused")]).await;
    let model = server.model().max_retries(0).build().unwrap();
    model
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn client_errors_and_a_used_up_quota_are_not_retried() {
    let server = Server::start(
        None,
        vec![
            status(400, "Invalid 'temperature'"),
            reply(|_| {
                error(
                    429,
                    "You exceeded your current quota",
                    "insufficient_quota",
                    Some("insufficient_quota"),
                )
            }),
            text("unused"),
            text("unused"),
        ],
    )
    .await;
    let model = server.model().max_retries(3).build().unwrap();
    let e = model
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            openai_error(&e),
            OpenAiError::Status {
                status: 400,
                attempts: 1,
                ..
            }
        ),
        "{e}"
    );
    assert_eq!(server.requests().len(), 1);
    let e = model
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Status { status: 429, attempts: 1, code, .. }
            if code.as_deref() == Some("insufficient_quota")),
        "{e}"
    );
    assert!(
        e.to_string().contains("You exceeded your current quota"),
        "{e}"
    );
    assert_eq!(server.requests().len(), 2);
}

fn rate_limited(retry_after: &'static str) -> Handler {
    reply(move |_| {
        error_with(
            429,
            "Slow down",
            "requests",
            None,
            vec![("retry-after", retry_after.into())],
        )
    })
}

#[tokio::test]
async fn retry_after_is_obeyed_and_a_wait_too_long_is_not_made() {
    let server = Server::start(None, vec![rate_limited("1"), text("waited")]).await;
    let model = server
        .model()
        .retry_backoff(Duration::from_millis(1))
        .build()
        .unwrap();
    let started = Instant::now();
    assert_eq!(
        model
            .complete(&[Message::user("hi")], &[])
            .await
            .unwrap()
            .content,
        "waited"
    );
    let waited = started.elapsed();
    assert!(waited >= Duration::from_millis(950), "{waited:?}");

    let server = Server::start(None, vec![rate_limited("3600"), text("unused")]).await;
    let model = server.model().build().unwrap();
    let started = Instant::now();
    let e = model
        .complete(&[Message::user("hi")], &[])
        .await
        .unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(5));
    assert!(
        matches!(
            openai_error(&e),
            OpenAiError::Status {
                status: 429,
                attempts: 1,
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("wait 3600 s"), "{e}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let server = Server::start(None, vec![reply(|_| Reply::Close), text("second try")]).await;
    let model = server.model().build().unwrap();
    let turn = model.complete(&[Message::user("hi")], &[]).await.unwrap();
    assert_eq!(turn.content, "second try");
    assert_eq!(server.requests().len(), 2);
}

// ---------------------------------------------------------------------------------------------
// Malformed replies.

#[tokio::test]
async fn malformed_replies_are_typed_errors_not_retried() {
    let server = Server::start(
        None,
        vec![
            raw("<html>Welcome to nginx</html>"),
            raw(r#"{"id": "x", "choices": []}"#),
            raw(r#"{"choices": [{"index": 0, "finish_reason": "stop"}]}"#),
            completion(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "add", "arguments": "{\"a\": 1,"}}]})),
            completion(json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"arguments": "{}"}}]})),
        ],
    )
    .await;
    let model = server.model().max_retries(3).build().unwrap();
    let hi = [Message::user("hi")];

    let e = model.complete(&hi, &[]).await.unwrap_err();
    match openai_error(&e) {
        OpenAiError::Malformed {
            reason, excerpt, ..
        } => {
            assert!(reason.contains("not the JSON"), "{reason}");
            assert_eq!(excerpt, "<html>Welcome to nginx</html>");
        }
        other => panic!("{other:?}"),
    }
    let e = model.complete(&hi, &[]).await.unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Malformed { reason, .. } if reason.contains("no choices")),
        "{e}"
    );
    let e = model.complete(&hi, &[]).await.unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Malformed { reason, .. } if reason.contains("no message")),
        "{e}"
    );
    let e = model.complete(&hi, &[]).await.unwrap_err();
    match openai_error(&e) {
        OpenAiError::ToolArguments {
            tool,
            call_id,
            arguments,
            ..
        } => assert_eq!(
            (tool.as_str(), call_id.as_str(), arguments.as_str()),
            ("add", "call_1", "{\"a\": 1,")
        ),
        other => panic!("{other:?}"),
    }
    let e = model.complete(&hi, &[]).await.unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Malformed { reason, .. } if reason.contains("no function name")),
        "{e}"
    );
    assert_eq!(
        server.requests().len(),
        5,
        "a malformed reply is not retried"
    );

    // A tool result without the id of its call cannot be sent; nothing is sent.
    let mut orphan = Message::tool("x", "1");
    orphan.tool_call_id = None;
    let e = model
        .complete(&[Message::user("hi"), orphan], &[])
        .await
        .unwrap_err();
    assert!(
        matches!(
            openai_error(&e),
            OpenAiError::InvalidMessage { index: 1, .. }
        ),
        "{e}"
    );
    assert_eq!(server.requests().len(), 5);
}

// ---------------------------------------------------------------------------------------------
// Streaming.

#[tokio::test]
async fn streaming_hands_over_tokens_as_they_arrive_and_puts_tool_calls_together() {
    let notify = Arc::new(Notify::new());
    let released = Arc::new(AtomicBool::new(false));
    // "été" split inside its first character, and an event split inside its JSON.
    let split_event =
        "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"\u{e9}t\u{e9}\"}}]}\n\n";
    let (a, b) = split_event
        .as_bytes()
        .split_at(split_event.find('\u{e9}').unwrap() + 1);
    let server = Server::start(
        Some("sk-test"),
        vec![sse(vec![
            Piece::Bytes(b": keep-alive\n\n".to_vec()),
            chunk(json!({"role": "assistant", "content": ""}), None),
            chunk(json!({"content": "Let me "}), None),
            // Nothing more until the client has handed over the first token.
            Piece::WaitFor(notify.clone(), released.clone()),
            chunk(json!({"content": "add, "}), None),
            Piece::Bytes(a.to_vec()),
            Piece::Bytes(b.to_vec()),
            chunk(
                json!({"tool_calls": [{"index": 0, "id": "call_a", "type": "function",
                    "function": {"name": "add", "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "{\"a\": "}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 1, "id": "call_b", "type": "function",
                    "function": {"name": "now", "arguments": ""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": "2, \"b\""}}]}),
                None,
            ),
            chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": ": 3}"}}]}),
                None,
            ),
            chunk(json!({}), Some("tool_calls")),
            // The usage statistics come in a chunk without choices.
            event(json!({"choices": [], "usage": {"total_tokens": 9}})),
            done(),
        ])],
    )
    .await;
    let model = server.model().build().unwrap();
    let mut tokens = Vec::new();
    let n = notify.clone();
    let turn = model
        .complete_streaming(
            &[Message::user("add 2 and 3")],
            &[ToolSpec::new("add", "adds")],
            &mut |t: &str| {
                tokens.push(t.to_owned());
                n.notify_one();
            },
        )
        .await
        .unwrap();
    assert!(
        released.load(SeqCst),
        "the first token was not handed over before the stream went on"
    );
    assert_eq!(tokens, ["Let me ", "add, ", "\u{e9}t\u{e9}"]);
    assert_eq!(
        turn,
        AssistantTurn::tool_calls(
            "Let me add, \u{e9}t\u{e9}",
            vec![
                ToolCall::new("call_a", "add", json!({"a": 2, "b": 3})),
                ToolCall::new("call_b", "now", json!({})),
            ]
        )
    );
    let body = server.requests()[0].json();
    assert_eq!(body["stream"], true);
    assert_eq!(body["tools"][0]["function"]["name"], "add");
}

#[tokio::test]
async fn streaming_retries_before_the_first_event_and_takes_a_whole_reply() {
    let server = Server::start(
        None,
        vec![
            status(503, "overloaded"),
            sse(vec![
                chunk(json!({"content": "Hi"}), None),
                chunk(json!({"content": "!"}), Some("stop")),
                done(),
            ]),
            // A server that ignores `stream` answers with one JSON body.
            text("whole"),
        ],
    )
    .await;
    let model = server.model().build().unwrap();
    let mut tokens = Vec::new();
    let turn = model
        .complete_streaming(&[Message::user("hi")], &[], &mut |t: &str| {
            tokens.push(t.to_owned())
        })
        .await
        .unwrap();
    assert_eq!((turn.content.as_str(), tokens.len()), ("Hi!", 2));
    assert_eq!(server.requests().len(), 2);

    let mut tokens = Vec::new();
    let turn = model
        .complete_streaming(&[Message::user("hi")], &[], &mut |t: &str| {
            tokens.push(t.to_owned())
        })
        .await
        .unwrap();
    assert_eq!(turn, AssistantTurn::text("whole"));
    assert_eq!(tokens, ["whole"]);
}

#[tokio::test]
async fn a_broken_stream_is_an_error_naming_why() {
    let server = Server::start(
        None,
        vec![
            // Ends with neither [DONE] nor a finish_reason.
            sse(vec![chunk(json!({"content": "Hel"}), None)]),
            // An error event in the middle.
            sse(vec![
                chunk(json!({"content": "Hel"}), None),
                event(json!({"error": {"message": "The model crashed", "type": "server_error"}})),
            ]),
            // Arguments that are not JSON once put together.
            sse(vec![
                chunk(
                    json!({"tool_calls": [{"index": 0, "id": "c", "function": {"name": "add", "arguments": "{\"a\""}}]}),
                    Some("tool_calls"),
                ),
                done(),
            ]),
            // An event that is not JSON.
            sse(vec![Piece::Bytes(b"data: {oops\n\n".to_vec())]),
            // A finish_reason without [DONE] is a complete reply.
            sse(vec![chunk(json!({"content": "fine"}), Some("stop"))]),
        ],
    )
    .await;
    let model = server.model().max_retries(3).build().unwrap();
    let hi = [Message::user("hi")];
    let mut sink = |_: &str| {};

    let e = model
        .complete_streaming(&hi, &[], &mut sink)
        .await
        .unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Stream { reason, .. }
            if reason.contains("without `data: [DONE]`")),
        "{e}"
    );
    let e = model
        .complete_streaming(&hi, &[], &mut sink)
        .await
        .unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Stream { reason, .. }
            if reason.contains("The model crashed")),
        "{e}"
    );
    let e = model
        .complete_streaming(&hi, &[], &mut sink)
        .await
        .unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::ToolArguments { arguments, .. } if arguments == "{\"a\""),
        "{e}"
    );
    let e = model
        .complete_streaming(&hi, &[], &mut sink)
        .await
        .unwrap_err();
    assert!(
        matches!(openai_error(&e), OpenAiError::Malformed { excerpt, .. } if excerpt == "{oops"),
        "{e}"
    );
    let turn = model.complete_streaming(&hi, &[], &mut sink).await.unwrap();
    assert_eq!(turn, AssistantTurn::text("fine"));
    // Nothing was retried: a stream that started is never sent again.
    assert_eq!(server.requests().len(), 5);
}

// ---------------------------------------------------------------------------------------------
// A ReAct agent on the server.

/// Adds `a` and `b`; declares its arguments' schema.
struct Add;

#[async_trait]
impl Tool for Add {
    fn name(&self) -> &str {
        "add"
    }
    fn description(&self) -> &str {
        "Adds two numbers."
    }
    fn parameters(&self) -> Option<Value> {
        Some(json!({
            "type": "object",
            "properties": {"a": {"type": "number"}, "b": {"type": "number"}},
            "required": ["a", "b"],
        }))
    }
    async fn call(&self, args: Value) -> Result<String, BoxError> {
        let a = args["a"].as_f64().ok_or("a is not a number")?;
        let b = args["b"].as_f64().ok_or("b is not a number")?;
        Ok((a + b).to_string())
    }
}

/// What a model would do: call `add` first; once a tool result is in the conversation, answer
/// with it (so the answer proves the server read the tool message).
fn agent_turn() -> Handler {
    reply(|req| {
        let body = req.json();
        let messages = body["messages"].as_array().cloned().unwrap_or_default();
        let message = match messages.last() {
            Some(m) if m["role"] == "tool" => json!({
                "role": "assistant",
                "content": format!("2 + 3 = {}", m["content"].as_str().unwrap_or("?")),
            }),
            _ => json!({"role": "assistant", "content": "I will add.", "tool_calls": [
                {"id": "call_add", "type": "function",
                 "function": {"name": "add", "arguments": "{\"a\":2,\"b\":3}"}}]}),
        };
        completion_of(req, message)
    })
}

#[tokio::test]
async fn a_react_agent_runs_on_the_server_with_checkpoints() {
    let dir = tempfile::TempDir::new().unwrap();
    let sled = Store::open(dir.path().join("db").to_str().unwrap())
        .await
        .unwrap();
    for (kind, store) in [("memory", Store::memory()), ("sled", sled)] {
        let server = Server::start(Some("sk-test"), vec![agent_turn(), agent_turn()]).await;
        let model = Arc::new(server.model().build().unwrap());
        let agent = create_react_agent(
            model,
            vec![Arc::new(Add)],
            AgentConfig::default()
                .system_prompt("Use the tools.")
                .checkpointer(Arc::new(store.clone())),
        )
        .unwrap();
        let out = agent
            .invoke(
                AgentState::new("What is 2 + 3?"),
                RunConfig::execution_id("sum"),
            )
            .await
            .unwrap();
        let Outcome::Finished(state) = out else {
            panic!("{kind}: the run did not finish: {out:?}")
        };
        assert_eq!(state.final_answer(), Some("2 + 3 = 5"), "{kind}");

        // The checkpointed conversation.
        let latest = store.latest("sum").await.unwrap().unwrap();
        let saved: AgentState = latest.state().unwrap();
        assert_eq!(
            saved.messages,
            [
                Message::user("What is 2 + 3?"),
                Message::assistant(
                    "I will add.",
                    vec![ToolCall::new("call_add", "add", json!({"a": 2, "b": 3}))]
                ),
                Message::tool("call_add", "5"),
                Message::assistant("2 + 3 = 5", Vec::new()),
            ],
            "{kind}"
        );
        assert_eq!((saved.iterations, saved.done), (2, true), "{kind}");
        assert_eq!(saved.messages[3].role, Role::Assistant);

        // What the server was sent: the schema of the tool, then the tool call and its result.
        let reqs = server.requests();
        assert_eq!(reqs.len(), 2, "{kind}");
        let first = reqs[0].json();
        assert_eq!(
            first["messages"][0],
            json!({"role": "system", "content": "Use the tools."})
        );
        assert_eq!(
            first["tools"][0]["function"]["parameters"],
            Add.parameters().unwrap()
        );
        let second = reqs[1].json();
        assert_eq!(
            second["messages"][2],
            json!({"role": "assistant", "content": "I will add.", "tool_calls": [
                {"id": "call_add", "type": "function",
                 "function": {"name": "add", "arguments": "{\"a\":2,\"b\":3}"}}]})
        );
        assert_eq!(
            second["messages"][3],
            json!({"role": "tool", "tool_call_id": "call_add", "content": "5"})
        );
    }
}
