//! The JSON API of `ckpt ui` (see `API.md`): executions, an execution's timeline, a
//! checkpoint, a diff, grep, live events, and the three writes. Every answer is read from the
//! store through its public API, as the other subcommands read it.

use std::convert::Infallible;
use std::time::Duration;

use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{Stream, StreamExt};
use serde::Deserialize;
use serde_json::{json, Value};

use super::json::{micros, rfc3339, tree, write_marks, Head, WriteMarks};
use super::Shared;
use crate::cli::grep::Pattern;
use ckpt::{CheckpointHeader, CheckpointId, HistoryQuery, RetentionPolicy};

/// An API error: a status and a sentence, sent as `{"error": ...}`.
#[derive(Debug)]
pub(crate) struct ApiError {
    status: StatusCode,
    message: String,
}

impl ApiError {
    pub(crate) fn new(status: StatusCode, message: impl Into<String>) -> Self {
        ApiError {
            status,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, message)
    }

    fn not_found(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::NOT_FOUND, message)
    }

    /// `e` while doing `what`: its status from its kind, its message with its causes.
    fn from_store(what: &str, e: ckpt::Error) -> Self {
        let status = if e.is_not_found() {
            StatusCode::NOT_FOUND
        } else if e.is_conflict() {
            StatusCode::CONFLICT
        } else if matches!(e, ckpt::Error::InvalidInput(_)) {
            StatusCode::BAD_REQUEST
        } else {
            StatusCode::INTERNAL_SERVER_ERROR
        };
        let mut message = format!("{what}: {e}");
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(&format!(": {s}"));
            source = s.source();
        }
        ApiError::new(status, message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.status, Json(json!({"error": self.message}))).into_response()
    }
}

type ApiResult<T = Json<Value>> = Result<T, ApiError>;

/// An extracted part of the request, or a 400 saying what was wrong with it (axum's own
/// answer is plain text; the page reads `{"error"}`).
fn given<T>(part: Result<T, impl std::fmt::Display>) -> ApiResult<T> {
    part.map_err(|e| ApiError::bad_request(format!("a bad request: {e}")))
}

/// Any path the API does not have.
pub(crate) async fn not_found() -> ApiError {
    ApiError::not_found("no such page or API call: see the API table in the README")
}

/// `GET /api/info`.
pub(crate) async fn info(State(ui): State<Shared>) -> Json<Value> {
    Json(json!({
        "store": ui.store_shown,
        "writes": ui.writes,
        "csrf": ui.csrf,
        "version": env!("CARGO_PKG_VERSION"),
    }))
}

#[derive(Deserialize)]
pub(crate) struct ExecutionsQuery {
    #[serde(default)]
    q: String,
    #[serde(default)]
    offset: usize,
    limit: Option<usize>,
}

/// Most executions (or versions) one call returns.
const MAX_EXECUTIONS: usize = 1000;
const MAX_VERSIONS: usize = 5000;

/// `GET /api/executions`: the executions whose id contains `q`, newest activity first.
pub(crate) async fn executions(
    State(ui): State<Shared>,
    query: Result<Query<ExecutionsQuery>, QueryRejection>,
) -> ApiResult {
    let Query(q) = given(query)?;
    let limit = q.limit.unwrap_or(100).clamp(1, MAX_EXECUTIONS);
    let mut all = ui
        .store
        .executions()
        .await
        .map_err(|e| ApiError::from_store("listing the executions", e))?;
    let needle = q.q.to_lowercase();
    if !needle.is_empty() {
        all.retain(|s| s.execution_id.to_lowercase().contains(&needle));
    }
    all.sort_by(|a, b| {
        b.last_timestamp
            .cmp(&a.last_timestamp)
            .then_with(|| a.execution_id.cmp(&b.execution_id))
    });
    let page: Vec<Value> = all
        .iter()
        .skip(q.offset)
        .take(limit)
        .map(|s| {
            json!({
                "execution_id": s.execution_id,
                "checkpoints": s.checkpoints,
                "latest_version": s.latest_version,
                "latest_node": s.latest_node,
                "last_time": rfc3339(s.last_timestamp),
                "last_time_us": micros(s.last_timestamp),
                "bytes": s.log_bytes,
                "damaged": !s.damaged_frames.is_empty() || !s.unreadable_versions.is_empty(),
            })
        })
        .collect();
    Ok(Json(json!({
        "total": all.len(),
        "offset": q.offset,
        "limit": limit,
        "executions": page,
    })))
}

/// Every live header of `exec`, newest first, or 404 when it has none.
async fn headers_of(ui: &Shared, exec: &str) -> ApiResult<Vec<CheckpointHeader>> {
    let headers = ui
        .store
        .history(exec, HistoryQuery::default())
        .await
        .map_err(|e| ApiError::from_store(&format!("reading the history of {exec}"), e))?;
    if headers.is_empty() {
        return Err(ApiError::not_found(format!(
            "no execution {exec:?}: it has no checkpoints (it never existed, was cleared, or all \
             its checkpoints were deleted)"
        )));
    }
    Ok(headers)
}

async fn marks_of(ui: &Shared, exec: &str) -> ApiResult<WriteMarks> {
    let heads = ui
        .store
        .write_heads(exec)
        .await
        .map_err(|e| ApiError::from_store(&format!("reading the writes of {exec}"), e))?;
    Ok(write_marks(heads))
}

#[derive(Deserialize)]
pub(crate) struct TimelineQuery {
    before: Option<u64>,
    limit: Option<usize>,
}

/// `GET /api/executions/{exec}/timeline`: a page of headers, newest first.
pub(crate) async fn timeline(
    State(ui): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<TimelineQuery>, QueryRejection>,
) -> ApiResult {
    let Path(exec) = given(path)?;
    let Query(q) = given(query)?;
    let limit = q.limit.unwrap_or(200).clamp(1, MAX_VERSIONS);
    let headers = headers_of(&ui, &exec).await?;
    let marks = marks_of(&ui, &exec).await?;
    let below = headers
        .iter()
        .filter(|h| q.before.is_none_or(|b| h.version < b));
    let page: Vec<&CheckpointHeader> = below.take(limit + 1).collect();
    let more = page.len() > limit;
    let page = &page[..page.len().min(limit)];
    Ok(Json(json!({
        "execution_id": exec,
        "total": headers.len(),
        "versions": page.iter().map(|h| Head::from(*h).to_json(&marks)).collect::<Vec<_>>(),
        "next_before": if more { page.last().map(|h| h.version) } else { None },
    })))
}

fn checkpoint_id(exec: &str, version: u64) -> ApiResult<CheckpointId> {
    CheckpointId::new(exec, version).map_err(|e| ApiError::bad_request(e.to_string()))
}

/// The header of live checkpoint `id`, or 404.
async fn header_of(ui: &Shared, id: &CheckpointId) -> ApiResult<CheckpointHeader> {
    let exec = id.execution_id();
    let found = ui
        .store
        .history(
            exec,
            HistoryQuery::default().before(id.version() + 1).limit(1),
        )
        .await
        .map_err(|e| ApiError::from_store(&format!("reading the history of {exec}"), e))?;
    found
        .into_iter()
        .find(|h| h.version == id.version())
        .ok_or_else(|| missing(id))
}

fn missing(id: &CheckpointId) -> ApiError {
    ApiError::not_found(format!(
        "no checkpoint {id}: it never existed, was deleted, or its execution was cleared"
    ))
}

/// `GET /api/checkpoints/{exec}/{version}`: header, state, parent, children, pending writes.
pub(crate) async fn checkpoint(
    State(ui): State<Shared>,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> ApiResult {
    let Path((exec, version)) = given(path)?;
    let id = checkpoint_id(&exec, version)?;
    let headers = headers_of(&ui, &exec).await?;
    let marks = marks_of(&ui, &exec).await?;
    let header = headers
        .iter()
        .find(|h| h.version == version)
        .ok_or_else(|| missing(&id))?;
    let cp = ui
        .store
        .load(&id)
        .await
        .map_err(|e| match e.is_not_found() {
            true => missing(&id),
            false => ApiError::from_store(&format!("loading {id}"), e),
        })?;
    let parent = match &header.parent {
        Some(p) if p.execution_id() == exec => headers
            .iter()
            .find(|h| h.version == p.version())
            .map(|h| Head::from(h).to_json(&marks)),
        Some(p) => match header_of(&ui, p).await {
            Ok(h) => Some(Head::from(&h).to_json(&WriteMarks::new())),
            Err(_) => None,
        },
        None => None,
    };
    // Oldest first, as a tree's children read.
    let children: Vec<Value> = headers
        .iter()
        .rev()
        .filter(|h| h.parent.as_ref() == Some(&id))
        .map(|h| Head::from(h).to_json(&marks))
        .collect();
    let writes = ui
        .store
        .writes(&id)
        .await
        .map_err(|e| ApiError::from_store(&format!("reading the writes of {id}"), e))?;
    let writes: Vec<Value> = writes
        .iter()
        .map(|w| {
            json!({
                "task": w.task,
                "channel": w.channel,
                "time": rfc3339(w.timestamp),
                "value": tree(w.value_tree()),
            })
        })
        .collect();
    Ok(Json(json!({
        "header": Head::from(header).to_json(&marks),
        "state": tree(cp.state_value()),
        "parent": parent,
        "children": children,
        "pending_writes": writes,
    })))
}

#[derive(Deserialize)]
pub(crate) struct DiffQuery {
    from: Option<u64>,
    to: u64,
}

/// `GET /api/executions/{exec}/diff?to=B[&from=A]`: what changed from A (default: B's parent,
/// else the live version before B) to B.
pub(crate) async fn diff(
    State(ui): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<DiffQuery>, QueryRejection>,
) -> ApiResult {
    let Path(exec) = given(path)?;
    let Query(q) = given(query)?;
    let headers = headers_of(&ui, &exec).await?;
    let marks = marks_of(&ui, &exec).await?;
    let to_id = checkpoint_id(&exec, q.to)?;
    let to = headers
        .iter()
        .find(|h| h.version == q.to)
        .ok_or_else(|| missing(&to_id))?;
    let from_version = match q.from {
        Some(v) => v,
        None => match &to.parent {
            Some(p) if p.execution_id() == exec => p.version(),
            _ => headers
                .iter()
                .find(|h| h.version < q.to)
                .map(|h| h.version)
                .ok_or_else(|| {
                    ApiError::bad_request(format!(
                        "{to_id} has no earlier version to compare with: name one with from="
                    ))
                })?,
        },
    };
    let from_id = checkpoint_id(&exec, from_version)?;
    let from = headers
        .iter()
        .find(|h| h.version == from_version)
        .ok_or_else(|| missing(&from_id))?;
    let load = |id: CheckpointId| {
        let ui = ui.clone();
        async move {
            ui.store
                .load(&id)
                .await
                .map(|cp| tree(cp.state_value()))
                .map_err(|e| ApiError::from_store(&format!("loading {id}"), e))
        }
    };
    let old = load(from_id).await?;
    let new = load(to_id).await?;
    let d = ckpt::diff::diff_values(&old, &new);
    let mut doc = d.to_json();
    doc["from"] = Head::from(from).to_json(&marks);
    doc["to"] = Head::from(to).to_json(&marks);
    doc["summary"] = json!(d.summary());
    Ok(Json(doc))
}

#[derive(Deserialize)]
pub(crate) struct GrepQuery {
    q: String,
}

/// `GET /api/executions/{exec}/grep?q=PATTERN`: `ckpt grep` over the execution's versions.
pub(crate) async fn grep(
    State(ui): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    query: Result<Query<GrepQuery>, QueryRejection>,
) -> ApiResult {
    let Path(exec) = given(path)?;
    let Query(q) = given(query)?;
    if q.q.is_empty() {
        return Err(ApiError::bad_request(
            "give a text to find, or PATH=VALUE (q=...)",
        ));
    }
    headers_of(&ui, &exec).await?;
    let pattern = Pattern::parse(&q.q);
    let all = ui
        .store
        .list(&exec)
        .await
        .map_err(|e| ApiError::from_store(&format!("reading the checkpoints of {exec}"), e))?;
    let mut matches = Vec::new();
    for cp in &all {
        if let Some(paths) = pattern.matches(
            &cp.state_json()
                .map_err(|e| ApiError::from_store(&format!("reading the state of {}", cp.id), e))?,
        ) {
            matches.push(json!({
                "version": cp.version,
                "id": cp.id.to_string(),
                "node": cp.node_name,
                "time": rfc3339(cp.timestamp),
                "paths": paths,
            }));
        }
    }
    Ok(Json(json!({
        "mode": match pattern { Pattern::Text(_) => "text", Pattern::Path { .. } => "path" },
        "pattern": q.q,
        "first": matches.first().map(|m| m["version"].clone()),
        "matches": matches,
    })))
}

/// `GET /api/executions/{exec}/events`: server-sent events, one per checkpoint saved from now.
pub(crate) async fn events(
    State(ui): State<Shared>,
    path: Result<Path<String>, PathRejection>,
) -> ApiResult<Sse<impl Stream<Item = Result<Event, Infallible>>>> {
    let Path(exec) = given(path)?;
    ckpt::checkpoint::validate_execution_id(&exec)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let none = WriteMarks::new();
    let stream = ui.store.watch(&exec).map(move |item| {
        Ok(match item {
            Ok(cp) => Event::default()
                .event("checkpoint")
                .data(Head::from(&cp).to_json(&none).to_string()),
            Err(e) => Event::default()
                .event("failure")
                .data(json!({"error": e.to_string()}).to_string()),
        })
    });
    Ok(Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

#[derive(Deserialize)]
pub(crate) struct ForkBody {
    version: u64,
    new_execution: String,
}

/// `POST /api/executions/{exec}/fork`: a new execution from a copy of a checkpoint.
pub(crate) async fn fork(
    State(ui): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<ForkBody>, JsonRejection>,
) -> ApiResult<(StatusCode, Json<Value>)> {
    let Path(exec) = given(path)?;
    let Json(body) = given(body)?;
    let id = checkpoint_id(&exec, body.version)?;
    ckpt::checkpoint::validate_execution_id(&body.new_execution)
        .map_err(|e| ApiError::bad_request(e.to_string()))?;
    let forked = ui
        .store
        .fork(&id, &body.new_execution)
        .await
        .map_err(|e| ApiError::from_store(&format!("forking {id}"), e))?;
    Ok((
        StatusCode::CREATED,
        Json(json!({"id": forked.id.to_string(), "execution_id": forked.execution_id})),
    ))
}

/// `DELETE /api/checkpoints/{exec}/{version}`.
pub(crate) async fn delete(
    State(ui): State<Shared>,
    path: Result<Path<(String, u64)>, PathRejection>,
) -> ApiResult {
    let Path((exec, version)) = given(path)?;
    let id = checkpoint_id(&exec, version)?;
    header_of(&ui, &id).await?;
    ui.store
        .delete(&id)
        .await
        .map_err(|e| ApiError::from_store(&format!("deleting {id}"), e))?;
    Ok(Json(json!({"deleted": id.to_string()})))
}

#[derive(Deserialize)]
pub(crate) struct PruneBody {
    keep_latest: usize,
}

/// `POST /api/executions/{exec}/prune`: keeps the latest N checkpoints (and what they need).
pub(crate) async fn prune(
    State(ui): State<Shared>,
    path: Result<Path<String>, PathRejection>,
    body: Result<Json<PruneBody>, JsonRejection>,
) -> ApiResult {
    let Path(exec) = given(path)?;
    let Json(body) = given(body)?;
    if body.keep_latest == 0 {
        return Err(ApiError::bad_request(
            "keep_latest must be at least 1 (to remove every checkpoint, clear the execution \
             with `ckpt clear`)",
        ));
    }
    let policy = RetentionPolicy::default().keep_latest(body.keep_latest);
    let plan = ui
        .store
        .retention_plan_for(&exec, &policy)
        .await
        .map_err(|e| ApiError::from_store(&format!("planning the prune of {exec}"), e))?;
    let Some(plan) = plan else {
        return Err(ApiError::not_found(format!("no execution {exec:?}")));
    };
    let report = ui
        .store
        .apply_retention(&[plan])
        .await
        .map_err(|e| ApiError::from_store(&format!("pruning {exec}"), e))?;
    Ok(Json(json!({"deleted": report.checkpoints_deleted})))
}
