//! `ckpt ui` in a real browser: headless Chromium through WebDriver (Debian's `chromium` and
//! `chromium-driver`; `scripts/test-all.sh` installs them when missing). A store made by
//! `ckpt demo` plus an execution with a branch, a fork and a `<script>` in a state (SQLite, so
//! that this test's process can save while the server runs): the executions page, a
//! timeline with its tree, a checkpoint, a diff, grep, a checkpoint appearing live, and
//! writes through the page's confirmation. Each step saves a screenshot under
//! `target/ui-screenshots/` (the README shows two).

mod common;

use std::path::PathBuf;

use common::cli::ckpt;
use common::http::encode;
use common::ui::{fill, Ui, RUN, SCRIPT};
use common::webdriver::Browser;
use serde_json::json;

fn shot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("target/ui-screenshots")
        .join(format!("{name}.png"))
}

fn sqlite_store(dir: &tempfile::TempDir) -> String {
    let url = format!("sqlite://{}", dir.path().join("store.db").display());
    let demo = ckpt(&["--store", &url, "demo"], &[]);
    assert!(
        demo.status.success(),
        "{}",
        String::from_utf8_lossy(&demo.stderr)
    );
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(fill(&url));
    url
}

/// The versions a timeline lists, in its order.
fn listed_versions(b: &Browser) -> Vec<u64> {
    b.find_all("#timeline li.version")
        .iter()
        .map(|li| {
            b.attr(li, "data-version")
                .and_then(|v| v.parse().ok())
                .expect("data-version")
        })
        .collect()
}

#[test]
fn a_user_travels_through_an_execution() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_store(&dir);
    let ui = Ui::start(&url, &[]);
    let b = Browser::start();

    // Executions: the demo's, the run and its fork; the token leaves the address bar.
    b.goto(&ui.url);
    let rows = b.wait_for_n("#exec-table tr.exec-row", 3);
    assert_eq!(rows.len(), 3, "{}", b.page_text());
    assert!(
        !b.url().contains("token="),
        "the token stays out of the address bar"
    );
    b.screenshot(&shot("executions"));
    let filter = b.wait_for("#exec-filter");
    b.type_text(&filter, "agent-r");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while b.find_all("#exec-table tr.exec-row").len() != 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the filter left {} rows",
            b.find_all("tr.exec-row").len()
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }

    // The timeline: six versions, the branch and the interrupted step marked, and the tree.
    let link = b.wait_for(&format!("tr.exec-row[data-exec='{RUN}'] a.exec-link"));
    b.click(&link);
    b.wait_for_n("#timeline li.version", 6);
    assert_eq!(listed_versions(&b), [6, 5, 4, 3, 2, 1]);
    let v6 = b.wait_for("#timeline li.version[data-version='6']");
    let v6_text = b.text(&v6);
    assert!(
        b.find_all("#timeline li.version[data-version='6'] .badge.branch")
            .len()
            == 1,
        "v6 is a branch: {v6_text}"
    );
    assert!(
        v6_text.contains("v2"),
        "the branch names where it starts: {v6_text}"
    );
    assert_eq!(
        b.find_all("#timeline li.version[data-version='4'] .badge.interrupted")
            .len(),
        1
    );
    assert_eq!(
        b.find_all("#timeline li.version[data-version='5'] .badge.branch")
            .len(),
        0
    );
    assert_eq!(b.find_all("#tree .tree-node").len(), 6);
    b.screenshot(&shot("timeline"));

    // A checkpoint: the script in its state is text, and nothing ran.
    let v3 = b.wait_for("#timeline li.version[data-version='3'] a.version-link");
    b.click(&v3);
    b.wait_for("#checkpoint-view #state");
    let strings: Vec<String> = b
        .find_all("#state .json-string")
        .iter()
        .map(|s| b.text(s))
        .collect();
    assert!(
        strings.iter().any(|s| s.contains(SCRIPT)),
        "the script tag is shown as text: {strings:?}"
    );
    assert_eq!(b.alert_text(), None, "no script ran");
    let scripts = b.run("return document.querySelectorAll('script').length;");
    assert_eq!(scripts, json!(1), "only app.js is a script element");
    b.wait_for_text("#cp-parent", "2");
    b.wait_for_text("#cp-children", "4");
    b.screenshot(&shot("checkpoint"));

    // The branch's diff with its parent: one message added, the step changed.
    b.goto(&format!("http://{}/#{}@6", ui.addr, encode(RUN)));
    let to_parent = b.wait_for("a#diff-parent");
    b.click(&to_parent);
    b.wait_for("#diff-view");
    b.wait_for_text("#diff-summary", "1 added, 0 removed, 1 changed");
    assert_eq!(b.find_all("#diff tr.diff-row.added").len(), 1);
    assert_eq!(b.find_all("#diff tr.diff-row.changed").len(), 1);
    let paths: Vec<String> = b
        .find_all("#diff .diff-path")
        .iter()
        .map(|p| b.text(p))
        .collect();
    assert!(paths.contains(&"messages.2".to_owned()), "{paths:?}");
    b.screenshot(&shot("diff"));

    // Grep in the timeline: where a text is, and the first version it was in.
    b.goto(&format!("http://{}/#{}", ui.addr, encode(RUN)));
    let input = b.wait_for("#grep-input");
    b.type_text(&input, "zanzibar-2");
    let go = b.wait_for("#grep-go");
    b.click(&go);
    let hits = b.wait_for_n("#grep-results .grep-hit", 5);
    assert_eq!(hits.len(), 5, "v2..v6 hold it");
    b.wait_for_text("#grep-first", "2");
    b.screenshot(&shot("grep"));

    // Live: a checkpoint saved by another process appears without a reload.
    b.wait_for_text("#live", "live");
    let rt = tokio::runtime::Runtime::new().unwrap();
    let saved = rt.block_on(async {
        let store = ckpt::Store::open(&url).await.unwrap();
        let cp = ckpt::Checkpoint::new(RUN, "live-step", &json!({"n": 7})).unwrap();
        store.save(cp).await.unwrap()
    });
    let fresh = b.wait_for(&format!(
        "#timeline li.version[data-version='{}']",
        saved.version
    ));
    assert!(b.text(&fresh).contains("live-step"));
    assert_eq!(
        listed_versions(&b)[0],
        saved.version,
        "the new version is listed first"
    );
    b.screenshot(&shot("live"));
}

#[test]
fn writes_go_through_a_confirmation() {
    let dir = tempfile::tempdir().unwrap();
    let url = sqlite_store(&dir);
    {
        // Without --allow-writes there is nothing to press.
        let ui = Ui::start(&url, &[]);
        let b = Browser::start();
        b.goto(&format!("{}#{}@2", ui.url, encode(RUN)));
        b.wait_for("#checkpoint-view #state");
        assert!(b.find_all("#fork").is_empty() && b.find_all("#delete").is_empty());
    }
    let ui = Ui::start(&url, &["--allow-writes"]);
    let b = Browser::start();
    b.goto(&format!("{}#{}@2", ui.url, encode(RUN)));
    let fork = b.wait_for("#fork");
    b.click(&fork);
    let name = b.wait_for("#confirm-input");
    b.type_text(&name, "forked-in-browser");
    b.screenshot(&shot("fork-confirm"));
    let yes = b.wait_for("#confirm-yes");
    b.click(&yes);
    b.wait_for_n("#timeline li.version", 1);
    assert!(b.url().contains("forked-in-browser"), "{}", b.url());
    assert_eq!(
        ui.get("/api/executions/forked-in-browser/timeline").json()["total"],
        1
    );

    // A delete asks first; Cancel leaves the checkpoint alone.
    b.goto(&format!("{}#{}@1", ui.url, encode(RUN)));
    let delete = b.wait_for("#delete");
    b.click(&delete);
    let no = b.wait_for("#confirm-no");
    b.click(&no);
    assert_eq!(ui.get(&format!("/api/checkpoints/{RUN}/1")).status, 200);
    let delete = b.wait_for("#delete");
    b.click(&delete);
    let yes = b.wait_for("#confirm-yes");
    b.click(&yes);
    b.wait_for("#timeline-view");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while ui.get(&format!("/api/checkpoints/{RUN}/1")).status != 404 {
        assert!(
            std::time::Instant::now() < deadline,
            "the delete did not land"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
