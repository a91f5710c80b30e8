//! `ckpt ui`: a local web time-travel debugger over any store the CLI opens.
//!
//! This module owns the server: its options, the random token and CSRF token it guards every
//! request with, the router, and serving. The JSON API lives in [`api`], the guard in
//! [`guard`], the page in `assets/` (static files embedded in the binary; vanilla JS, no build
//! step). `API.md` next to this file is the contract between the server and the page; the
//! README's API table is made from it.

mod api;
mod guard;
mod json;

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use axum::Router;
use clap::Args;

use super::{say, CliResult, Context as _, Global};
use ckpt::Store;

/// Options of `ckpt ui`.
#[derive(Debug, Args)]
pub struct UiArgs {
    /// The address to listen on. The default is loopback on a free port; any other address
    /// lets other machines reach the page (every request still needs the printed token)
    #[arg(long, value_name = "ADDR:PORT", default_value = "127.0.0.1:0")]
    pub bind: SocketAddr,
    /// Let the page fork executions, delete checkpoints and prune (each after a confirmation
    /// in the page). Without it the page and the API only read
    #[arg(long)]
    pub allow_writes: bool,
}

/// What every request handler shares.
pub(crate) struct Ui {
    store: Store,
    /// Every request must carry it (query, bearer header or cookie).
    token: String,
    /// Writes must also carry it in `X-Ckpt-Csrf`: a page elsewhere can make the browser send
    /// the cookie, but cannot read this token.
    csrf: String,
    writes: bool,
    /// The `Host` values a request may name: the server's own address, so that a web page
    /// whose domain was rebound to 127.0.0.1 (DNS rebinding) is refused.
    hosts: Vec<String>,
    /// The store's URL without its password, for the page's title.
    store_shown: String,
}

type Shared = Arc<Ui>;

/// A fresh random token: 32 hex digits (128 bits) from the operating system's generator.
fn random_token() -> String {
    ckpt::crypto::Key::generate().to_hex()[..32].to_owned()
}

/// The `Host` header values that name `addr`.
fn host_names(addr: SocketAddr) -> Vec<String> {
    let port = addr.port();
    let mut hosts = vec![
        format!("127.0.0.1:{port}"),
        format!("localhost:{port}"),
        format!("[::1]:{port}"),
    ];
    hosts.push(addr.to_string());
    hosts
}

/// The routes: the page, its two files, and the API (see `API.md`).
fn router(ui: Shared) -> Router {
    Router::new()
        .route("/", get(page))
        .route("/app.js", get(script))
        .route("/app.css", get(style))
        .route("/api/info", get(api::info))
        .route("/api/executions", get(api::executions))
        .route("/api/executions/{exec}/timeline", get(api::timeline))
        .route("/api/executions/{exec}/diff", get(api::diff))
        .route("/api/executions/{exec}/grep", get(api::grep))
        .route("/api/executions/{exec}/events", get(api::events))
        .route("/api/executions/{exec}/fork", post(api::fork))
        .route("/api/executions/{exec}/prune", post(api::prune))
        .route(
            "/api/checkpoints/{exec}/{version}",
            get(api::checkpoint).delete(api::delete),
        )
        .fallback(api::not_found)
        .layer(axum::middleware::from_fn_with_state(
            ui.clone(),
            guard::guard,
        ))
        .with_state(ui)
}

async fn page() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        include_str!("assets/index.html"),
    )
}

async fn script() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("assets/app.js"),
    )
}

async fn style() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("assets/app.css"),
    )
}

/// Runs `ckpt ui`: opens the store, listens, prints the URL (with its token) and serves until
/// the process is stopped.
pub async fn run(args: UiArgs, global: &Global) -> CliResult {
    let url = global.store_url();
    let store = super::open_existing(url).await?;
    let listener = tokio::net::TcpListener::bind(args.bind)
        .await
        .with_context(|| format!("listening on {}", args.bind))?;
    let addr = listener
        .local_addr()
        .context("reading the address listened on")?;
    let token = random_token();
    let ui = Arc::new(Ui {
        store,
        token: token.clone(),
        csrf: random_token(),
        writes: args.allow_writes,
        hosts: host_names(addr),
        store_shown: ckpt::url::redact(url),
    });
    let shown_host = if addr.ip().is_unspecified() {
        format!("127.0.0.1:{}", addr.port())
    } else {
        addr.to_string()
    };
    say!(
        "ckpt ui: serving {} at http://{shown_host}/?token={token}{}",
        ui.store_shown,
        if args.allow_writes {
            " (writes allowed)"
        } else {
            ""
        }
    )?;
    axum::serve(listener, router(ui))
        .await
        .context("serving the page")?;
    Ok(())
}
