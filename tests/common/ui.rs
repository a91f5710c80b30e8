//! `ckpt ui` for tests: a fixture store with branches, and the server run as a user runs it
//! (the binary, its URL read from its first line), stopped when dropped.

use std::io::{BufRead, BufReader};
use std::process::{Child, Stdio};

use ckpt::{Checkpoint, CheckpointId, Store};
use serde_json::json;

use super::cli::command;
use super::http::{self, Response};

/// The execution with branches, and its fork.
pub const RUN: &str = "agent-run";
pub const FORK: &str = "agent-fork";
/// A state value that must be shown as text.
pub const SCRIPT: &str = "<script>alert(1)</script>";

/// Fills the store at `url`: `agent-run` v1..v5 in a line (v3 holds [`SCRIPT`], v4 is marked
/// interrupted), v6 a branch from v2 (its parent), and `agent-fork` forked from v3. Returns the
/// store's ids by name for the tests: (v2, v6).
pub async fn fill(url: &str) -> (CheckpointId, CheckpointId) {
    let store = Store::open(url).await.expect("open the fixture store");
    let mut messages: Vec<serde_json::Value> = Vec::new();
    let mut ids = Vec::new();
    for step in 1..=5u64 {
        let text = match step {
            3 => SCRIPT.to_owned(),
            _ => format!("message {step} about the order zanzibar-{step}"),
        };
        messages.push(
            json!({"role": if step % 2 == 1 { "user" } else { "assistant" }, "content": text}),
        );
        let node = if step % 2 == 1 { "agent" } else { "tools" };
        let mut cp = Checkpoint::new(RUN, node, &json!({"messages": messages, "step": step}))
            .expect("checkpoint")
            .with_metadata("step", step);
        if step == 4 {
            cp = cp.with_metadata("interrupted", true);
        }
        ids.push(store.save(cp).await.expect("save").id);
    }
    let v2 = ids[1].clone();
    let branch = Checkpoint::new(
        RUN,
        "agent",
        &json!({"messages": [messages[0], messages[1], {"role": "user", "content": "a different question"}], "step": 3}),
    )
    .expect("checkpoint")
    .with_metadata("step", 3)
    .with_metadata("source", "update");
    let v6 = store
        .save_with_parent(branch, &v2)
        .await
        .expect("save the branch")
        .id;
    store.fork(&ids[2], FORK).await.expect("fork");
    // The step after v5 failed (written last: a write takes a log position, and the
    // tests name the versions before it): the graph runtime writes its error to `__error__`.
    let failure = ckpt::Write::new("agent", "__error__", &"the model timed out").expect("write");
    store
        .put_writes(&ids[4], vec![failure])
        .await
        .expect("put the failure");
    store.flush().await.expect("flush");
    (v2, v6)
}

/// A running `ckpt ui`.
pub struct Ui {
    child: Child,
    /// `127.0.0.1:PORT`.
    pub addr: String,
    pub token: String,
    /// The URL it printed.
    pub url: String,
}

impl Ui {
    /// Starts `ckpt --store URL ui --bind 127.0.0.1:0 EXTRA` and reads its URL.
    pub fn start(store: &str, extra: &[&str]) -> Ui {
        let mut child = command()
            .args(["--store", store, "ui", "--bind", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start ckpt ui");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout"))
            .read_line(&mut line)
            .expect("read the first line");
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        let rest = url.trim_start_matches("http://");
        let (addr, query) = rest.split_once('/').expect("a path");
        let token = query.trim_start_matches("?token=").to_owned();
        Ui {
            child,
            addr: addr.to_owned(),
            token,
            url,
        }
    }

    /// `GET path` with the token as a bearer header.
    pub fn get(&self, path: &str) -> Response {
        let auth = format!("Bearer {}", self.token);
        http::request(&self.addr, "GET", path, &[("Authorization", &auth)], None)
    }

    /// `method path` with the token, the CSRF header `csrf` (when given) and a JSON body.
    pub fn write(
        &self,
        method: &str,
        path: &str,
        csrf: Option<&str>,
        body: &serde_json::Value,
    ) -> Response {
        let auth = format!("Bearer {}", self.token);
        let mut headers = vec![
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/json"),
        ];
        if let Some(c) = csrf {
            headers.push(("X-Ckpt-Csrf", c));
        }
        let body = body.to_string();
        http::request(&self.addr, method, path, &headers, Some(body.as_bytes()))
    }

    /// The CSRF token of `/api/info`.
    pub fn csrf(&self) -> String {
        self.get("/api/info").json()["csrf"]
            .as_str()
            .expect("csrf")
            .to_owned()
    }
}

impl Drop for Ui {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
