//! `ckpt ui`'s HTTP API against the real server (the binary, on a free port) over real stores:
//! what it answers on every backend, what it refuses (no token, another host, writes without
//! `--allow-writes` or the CSRF token), and live events.
//!
//! The PostgreSQL and Redis cases need the test servers (`scripts/servers.sh`); they fail,
//! saying so, without them.

mod common;

use common::http::{self, encode};
use common::ui::{fill, Ui, FORK, RUN, SCRIPT};
use serde_json::{json, Value};

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Runtime::new().expect("runtime")
}

fn versions(timeline: &Value) -> Vec<u64> {
    timeline["versions"]
        .as_array()
        .expect("versions")
        .iter()
        .map(|h| h["version"].as_u64().expect("version"))
        .collect()
}

/// Everything a reading page asks, checked against the fixture of `common::ui::fill`.
fn check_reads(ui: &Ui) {
    let info = ui.get("/api/info");
    assert_eq!(info.status, 200, "{}", info.text());
    assert_eq!(info.json()["writes"], false);
    assert!(info
        .header("server-timing")
        .is_some_and(|t| t.starts_with("app;dur=")));

    // Executions, newest activity first: the fork was made last.
    let list = ui.get("/api/executions").json();
    assert_eq!(list["total"], 2, "{list}");
    let ids: Vec<&str> = list["executions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["execution_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, [FORK, RUN]);
    let run = &list["executions"][1];
    assert_eq!(run["checkpoints"], 6);
    assert_eq!(run["latest_version"], 6);
    assert_eq!(run["damaged"], false);
    let filtered = ui.get("/api/executions?q=FORK").json();
    assert_eq!(filtered["total"], 1);
    assert_eq!(filtered["executions"][0]["execution_id"], FORK);
    let paged = ui.get("/api/executions?offset=1&limit=1").json();
    assert_eq!(paged["executions"][0]["execution_id"], RUN);

    // The timeline, a page at a time, with parent links and marks.
    let first = ui
        .get(&format!("/api/executions/{RUN}/timeline?limit=4"))
        .json();
    assert_eq!(first["total"], 6);
    assert_eq!(versions(&first), [6, 5, 4, 3]);
    assert_eq!(first["next_before"], 3);
    let v6 = &first["versions"][0];
    assert_eq!(
        v6["parent"]["version"], 2,
        "the branch names its parent: {v6}"
    );
    assert_eq!(v6["metadata"]["source"], "update");
    assert_eq!(first["versions"][2]["interrupted"], true);
    assert_eq!(first["versions"][1]["interrupted"], false);
    assert_eq!(first["versions"][1]["failed"], true, "v5's step failed");
    assert_eq!(first["versions"][1]["writes"], 1);
    assert_eq!(first["versions"][2]["failed"], false);
    let v5 = ui.get(&format!("/api/checkpoints/{RUN}/5")).json();
    assert_eq!(v5["pending_writes"][0]["channel"], "__error__");
    assert_eq!(v5["pending_writes"][0]["value"], "the model timed out");
    let rest = ui
        .get(&format!("/api/executions/{RUN}/timeline?limit=4&before=3"))
        .json();
    assert_eq!(versions(&rest), [2, 1]);
    assert_eq!(rest["next_before"], Value::Null);
    let fork = ui.get(&format!("/api/executions/{FORK}/timeline")).json();
    assert_eq!(fork["versions"][0]["parent"]["id"], format!("{RUN}@3"));

    // A checkpoint: its state (a script tag is data), parent and children.
    let cp = ui.get(&format!("/api/checkpoints/{RUN}/3"));
    assert_eq!(cp.status, 200, "{}", cp.text());
    assert!(cp
        .header("content-type")
        .is_some_and(|t| t.starts_with("application/json")));
    let cp = cp.json();
    assert_eq!(cp["state"]["messages"][2]["content"], SCRIPT);
    assert_eq!(cp["header"]["node"], "agent");
    assert_eq!(cp["parent"]["version"], 2);
    let v2 = ui.get(&format!("/api/checkpoints/{RUN}/2")).json();
    let children: Vec<u64> = v2["children"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["version"].as_u64().unwrap())
        .collect();
    assert_eq!(
        children,
        [3, 6],
        "v2 has the line and the branch as children"
    );
    assert_eq!(v2["pending_writes"], json!([]));

    // A diff, by default against the parent: the branch replaced the third message.
    let d = ui.get(&format!("/api/executions/{RUN}/diff?to=6")).json();
    assert_eq!(d["from"]["version"], 2);
    assert_eq!(d["to"]["version"], 6);
    assert_eq!(d["summary"], "1 added, 0 removed, 1 changed", "{d}");
    assert_eq!(d["added"][0]["path"], "messages.2");
    let d = ui
        .get(&format!("/api/executions/{RUN}/diff?from=1&to=5"))
        .json();
    assert_eq!(d["added"].as_array().unwrap().len(), 4, "{d}");

    // Grep: the versions that hold a text, and the first.
    let g = ui
        .get(&format!(
            "/api/executions/{RUN}/grep?q={}",
            encode("zanzibar-2")
        ))
        .json();
    assert_eq!(g["mode"], "text");
    assert_eq!(g["first"], 2);
    let found: Vec<u64> = g["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["version"].as_u64().unwrap())
        .collect();
    assert_eq!(found, [2, 3, 4, 5, 6]);
    assert_eq!(g["matches"][0]["paths"], json!(["messages.1.content"]));
    let g = ui
        .get(&format!(
            "/api/executions/{RUN}/grep?q={}",
            encode("step=3")
        ))
        .json();
    assert_eq!(g["mode"], "path");
    assert_eq!(g["first"], 3);
    assert_eq!(
        g["matches"].as_array().unwrap().len(),
        2,
        "v3 and the branch v6"
    );

    // What is not there, and what makes no sense, says so.
    for (path, status) in [
        (format!("/api/checkpoints/{RUN}/99"), 404),
        ("/api/checkpoints/nobody/1".to_owned(), 404),
        ("/api/executions/nobody/timeline".to_owned(), 404),
        (format!("/api/checkpoints/{RUN}/x"), 400),
        (format!("/api/executions/{RUN}/diff"), 400),
        (format!("/api/executions/{RUN}/diff?to=1"), 400),
        (format!("/api/executions/{RUN}/grep?q="), 400),
        ("/api/nothing".to_owned(), 404),
    ] {
        let r = ui.get(&path);
        assert_eq!(r.status, status, "{path}: {}", r.text());
        let message = r.json()["error"].as_str().unwrap_or("").to_owned();
        assert!(
            message.len() > 10,
            "{path}: an error a person can read: {message:?}"
        );
    }
}

#[test]
fn answers_on_sled() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled://{}", dir.path().join("store").display());
    runtime().block_on(fill(&url));
    check_reads(&Ui::start(&url, &[]));
}

#[test]
fn answers_on_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    runtime().block_on(fill(&url));
    check_reads(&Ui::start(&url, &[]));
}

#[test]
fn answers_on_postgres() {
    let base = ckpt::testing::postgres_test_url();
    let sep = if base.contains('?') { '&' } else { '?' };
    let url = format!("{base}{sep}schema=ui_{}", std::process::id());
    runtime().block_on(fill(&url));
    check_reads(&Ui::start(&url, &[]));
}

#[test]
fn answers_on_redis() {
    let base = ckpt::testing::test_server_url(ckpt::testing::REDIS_URL_VAR);
    let url = ckpt::testing::isolated_url(&base, "");
    runtime().block_on(fill(&url));
    check_reads(&Ui::start(&url, &[]));
}

#[test]
fn refuses_requests_without_the_token_or_for_another_host() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled://{}", dir.path().join("store").display());
    runtime().block_on(fill(&url));
    let ui = Ui::start(&url, &[]);
    for path in ["/", "/app.js", "/api/info", "/api/executions"] {
        let r = http::request(&ui.addr, "GET", path, &[], None);
        assert_eq!(r.status, 401, "{path} without a token");
        let r = http::request(
            &ui.addr,
            "GET",
            path,
            &[("Authorization", "Bearer 0123456789abcdef0123456789abcdef")],
            None,
        );
        assert_eq!(r.status, 401, "{path} with a wrong token");
    }
    let r = http::request(&ui.addr, "GET", "/api/info?token=nope", &[], None);
    assert_eq!(r.status, 401);
    assert!(r.json()["error"].as_str().unwrap().contains("?token="));

    // The printed URL opens the page and sets the cookie the page's own requests carry.
    let page = http::request(&ui.addr, "GET", &format!("/?token={}", ui.token), &[], None);
    assert_eq!(page.status, 200);
    let cookie = page.header("set-cookie").expect("a cookie").to_owned();
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
        "{cookie}"
    );
    let pair = cookie.split(';').next().unwrap();
    let r = http::request(
        &ui.addr,
        "GET",
        "/api/executions",
        &[("Cookie", pair)],
        None,
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["total"], 2);

    // A page whose domain was rebound to 127.0.0.1 names its own host: refused.
    let auth = format!("Bearer {}", ui.token);
    let r = http::request(
        &ui.addr,
        "GET",
        "/api/executions",
        &[("Host", "evil.example:80"), ("Authorization", &auth)],
        None,
    );
    assert_eq!(r.status, 403, "{}", r.text());
}

#[test]
fn the_page_is_static_and_never_writes_data_as_html() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled://{}", dir.path().join("store").display());
    runtime().block_on(fill(&url));
    let ui = Ui::start(&url, &[]);
    let page = ui.get("/");
    assert_eq!(page.status, 200);
    let html = page.text();
    assert!(html.contains("app.js") && html.contains("app.css"));
    assert!(
        !html.contains(RUN),
        "the page holds no data; the API sends it as JSON"
    );
    let csp = page.header("content-security-policy").expect("a CSP");
    assert!(csp.contains("script-src 'self'"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let js = ui.get("/app.js");
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .unwrap()
        .starts_with("text/javascript"));
    for sink in [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
    ] {
        assert!(
            !js.text().contains(sink),
            "app.js uses {sink}: data must go in as text"
        );
    }
    assert_eq!(ui.get("/app.css").status, 200);
}

#[test]
fn writes_need_allow_writes_and_the_csrf_token() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sled://{}", dir.path().join("store").display());
    runtime().block_on(fill(&url));
    let fork = json!({"version": 2, "new_execution": "from-the-page"});
    {
        let ui = Ui::start(&url, &[]);
        let csrf = ui.csrf();
        let r = ui.write(
            "POST",
            &format!("/api/executions/{RUN}/fork"),
            Some(&csrf),
            &fork,
        );
        assert_eq!(r.status, 403, "{}", r.text());
        assert!(r.json()["error"]
            .as_str()
            .unwrap()
            .contains("--allow-writes"));
        let r = ui.write(
            "DELETE",
            &format!("/api/checkpoints/{RUN}/1"),
            Some(&csrf),
            &json!({}),
        );
        assert_eq!(r.status, 403);
    }
    let ui = Ui::start(&url, &["--allow-writes"]);
    assert_eq!(ui.get("/api/info").json()["writes"], true);
    let csrf = ui.csrf();
    let r = ui.write("POST", &format!("/api/executions/{RUN}/fork"), None, &fork);
    assert_eq!(r.status, 403, "no CSRF token: {}", r.text());
    let r = ui.write(
        "POST",
        &format!("/api/executions/{RUN}/fork"),
        Some("wrong"),
        &fork,
    );
    assert_eq!(r.status, 403, "a wrong CSRF token");
    assert_eq!(
        ui.get("/api/executions").json()["total"],
        2,
        "nothing written"
    );

    let r = ui.write(
        "POST",
        &format!("/api/executions/{RUN}/fork"),
        Some(&csrf),
        &fork,
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["id"], "from-the-page@1");
    let t = ui.get("/api/executions/from-the-page/timeline").json();
    assert_eq!(t["versions"][0]["parent"]["id"], format!("{RUN}@2"));
    let r = ui.write(
        "POST",
        &format!("/api/executions/{RUN}/fork"),
        Some(&csrf),
        &json!({"version": 99, "new_execution": "x"}),
    );
    assert_eq!(r.status, 404, "{}", r.text());

    let r = ui.write(
        "DELETE",
        &format!("/api/checkpoints/{RUN}/1"),
        Some(&csrf),
        &json!({}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(ui.get(&format!("/api/checkpoints/{RUN}/1")).status, 404);
    let r = ui.write(
        "DELETE",
        &format!("/api/checkpoints/{RUN}/1"),
        Some(&csrf),
        &json!({}),
    );
    assert_eq!(r.status, 404, "deleting it again: {}", r.text());

    let r = ui.write(
        "POST",
        &format!("/api/executions/{RUN}/prune"),
        Some(&csrf),
        &json!({"keep_latest": 2}),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert!(r.json()["deleted"].as_u64().unwrap() >= 1);
    let left = ui.get(&format!("/api/executions/{RUN}/timeline")).json();
    assert!(left["total"].as_u64().unwrap() < 5, "{left}");
    let r = ui.write(
        "POST",
        &format!("/api/executions/{RUN}/prune"),
        Some(&csrf),
        &json!({"keep_latest": 0}),
    );
    assert_eq!(r.status, 400);
}

#[test]
fn streams_checkpoints_saved_by_another_process() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let rt = runtime();
    rt.block_on(fill(&url));
    let ui = Ui::start(&url, &[]);
    let auth = format!("Bearer {}", ui.token);
    let mut events = http::open_stream(
        &ui.addr,
        &format!("/api/executions/{RUN}/events"),
        &[("Authorization", &auth)],
    );
    // The server subscribes when the request arrives; a save a moment later is after it.
    std::thread::sleep(std::time::Duration::from_millis(300));
    let saved = rt.block_on(async {
        let store = ckpt::Store::open(&url).await.unwrap();
        let cp = ckpt::Checkpoint::new(RUN, "live", &json!({"n": 1})).unwrap();
        store.save(cp).await.unwrap()
    });
    let mut line = String::new();
    let mut event = None;
    while std::io::BufRead::read_line(&mut events, &mut line).expect("read the stream") > 0 {
        if let Some(data) = line.trim_end().strip_prefix("data:") {
            event = Some(serde_json::from_str::<Value>(data.trim()).expect("JSON data"));
            break;
        }
        line.clear();
    }
    let event = event.expect("an event");
    assert_eq!(event["version"], saved.version, "{event}");
    assert_eq!(event["node"], "live");
}

#[test]
fn opens_an_encrypted_store_and_never_shows_its_key() {
    let dir = tempfile::tempdir().unwrap();
    let key = ckpt::crypto::Key::generate().to_hex();
    std::env::set_var("CKPT_UI_TEST_KEY", &key);
    let url = format!(
        "sled://{}?key_env=CKPT_UI_TEST_KEY",
        dir.path().join("store").display()
    );
    runtime().block_on(fill(&url));
    assert!(
        common::grep_dir(dir.path(), SCRIPT.as_bytes()).is_empty(),
        "the fixture is sealed on disk"
    );
    let ui = Ui::start(&url, &[]);
    let cp = ui.get(&format!("/api/checkpoints/{RUN}/3")).json();
    assert_eq!(
        cp["state"]["messages"][2]["content"], SCRIPT,
        "the server decrypts"
    );
    for path in [
        "/".to_owned(),
        "/app.js".to_owned(),
        "/api/info".to_owned(),
        "/api/executions".to_owned(),
        format!("/api/executions/{RUN}/timeline"),
        format!("/api/checkpoints/{RUN}/3"),
    ] {
        let r = ui.get(&path);
        assert_eq!(r.status, 200, "{path}");
        assert!(!r.text().contains(&key), "{path} shows the key");
    }
}
