//! Headless Chromium driven through WebDriver (Debian's `chromium` and `chromium-driver`): the
//! few commands the browser tests of `ckpt ui` use, over [`super::http`]. A chromedriver of
//! the test's own on a free port, stopped (with its browser) when the [`Browser`] is dropped.

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::http;

/// The key WebDriver names an element's reference with.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A browser session.
pub struct Browser {
    driver: Child,
    addr: String,
    session: String,
}

/// An element's reference.
#[derive(Clone, Debug)]
pub struct Element(String);

impl Browser {
    /// Starts chromedriver and a headless Chromium of 1280x900. Panics, saying how to install
    /// them, when they are missing.
    pub fn start() -> Browser {
        let port = super::free_port();
        let driver = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start chromedriver ({e}): install Debian's chromium and \
                     chromium-driver (scripts/test-all.sh does)"
                )
            });
        let addr = format!("127.0.0.1:{port}");
        let deadline = Instant::now() + Duration::from_secs(20);
        while std::net::TcpStream::connect(&addr).is_err() {
            assert!(
                Instant::now() < deadline,
                "chromedriver did not listen on {addr}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        let mut browser = Browser {
            driver,
            addr,
            session: String::new(),
        };
        let binary = std::env::var("CKPT_TEST_CHROMIUM").unwrap_or("/usr/bin/chromium".into());
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": binary,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu",
                         "--disable-dev-shm-usage", "--window-size=1280,900",
                         "--no-first-run", "--disable-extensions"],
            },
        }}});
        let created = browser.call("POST", "/session", Some(caps));
        browser.session = created["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {created}"))
            .to_owned();
        browser
    }

    /// Sends a WebDriver command; panics on an error answer.
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, value) = self.try_call(method, path, body);
        assert!(status < 300, "WebDriver {method} {path}: {status} {value}");
        value
    }

    /// Sends a WebDriver command: its status and its `value`.
    fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let body = body.map(|b| b.to_string());
        let headers = [("Content-Type", "application/json")];
        let r = http::request(
            &self.addr,
            method,
            path,
            &headers,
            body.as_deref().map(str::as_bytes),
        );
        let v: Value = serde_json::from_slice(&r.body).unwrap_or(Value::Null);
        (r.status, v["value"].clone())
    }

    fn at(&self, rest: &str) -> String {
        format!("/session/{}{rest}", self.session)
    }

    /// Opens `url`.
    pub fn goto(&self, url: &str) {
        self.call("POST", &self.at("/url"), Some(json!({ "url": url })));
    }

    /// The page's current URL.
    pub fn url(&self) -> String {
        self.call("GET", &self.at("/url"), None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// Every element matching the CSS selector, now.
    pub fn find_all(&self, css: &str) -> Vec<Element> {
        let v = self.call(
            "POST",
            &self.at("/elements"),
            Some(json!({"using": "css selector", "value": css})),
        );
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|e| e[ELEMENT].as_str().map(|s| Element(s.to_owned())))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Waits (up to 10 s) until `css` matches at least `n` elements, and returns them.
    pub fn wait_for_n(&self, css: &str, n: usize) -> Vec<Element> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self.find_all(css);
            if found.len() >= n {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "{css:?} matched {} elements, not {n}, within 10 s; the page says: {}",
                found.len(),
                self.page_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits for the first element matching `css`.
    pub fn wait_for(&self, css: &str) -> Element {
        self.wait_for_n(css, 1).remove(0)
    }

    /// Waits until the text of `css`'s first element contains `text`.
    pub fn wait_for_text(&self, css: &str, text: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(el) = self.find_all(css).first() {
                let t = self.text(el);
                if t.contains(text) {
                    return t;
                }
                assert!(
                    Instant::now() < deadline,
                    "{css:?} says {t:?}, without {text:?}, after 10 s"
                );
            } else {
                assert!(Instant::now() < deadline, "no {css:?} within 10 s");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The element's visible text.
    pub fn text(&self, el: &Element) -> String {
        self.call("GET", &self.at(&format!("/element/{}/text", el.0)), None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    /// The element's attribute `name`.
    pub fn attr(&self, el: &Element, name: &str) -> Option<String> {
        self.call(
            "GET",
            &self.at(&format!("/element/{}/attribute/{name}", el.0)),
            None,
        )
        .as_str()
        .map(str::to_owned)
    }

    /// Clicks the element.
    pub fn click(&self, el: &Element) {
        self.call(
            "POST",
            &self.at(&format!("/element/{}/click", el.0)),
            Some(json!({})),
        );
    }

    /// Types `text` into the element.
    pub fn type_text(&self, el: &Element, text: &str) {
        self.call(
            "POST",
            &self.at(&format!("/element/{}/value", el.0)),
            Some(json!({ "text": text })),
        );
    }

    /// Runs `script` (a function body) in the page and returns what it returns.
    pub fn run(&self, script: &str) -> Value {
        self.call(
            "POST",
            &self.at("/execute/sync"),
            Some(json!({"script": script, "args": []})),
        )
    }

    /// The text of an open alert, confirm or prompt, if any.
    pub fn alert_text(&self) -> Option<String> {
        let (status, v) = self.try_call("GET", &self.at("/alert/text"), None);
        (status < 300).then(|| v.as_str().unwrap_or("").to_owned())
    }

    /// The page's whole visible text (for failure messages).
    pub fn page_text(&self) -> String {
        let t = self.run("return document.body ? document.body.innerText : '';");
        let t = t.as_str().unwrap_or("");
        t.chars().take(2000).collect()
    }

    /// Saves a PNG screenshot of the window to `path`.
    pub fn screenshot(&self, path: &Path) {
        let v = self.call("GET", &self.at("/screenshot"), None);
        let png = base64_decode(v.as_str().expect("base64"));
        assert!(png.starts_with(b"\x89PNG"), "a PNG");
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).expect("screenshot directory");
        }
        std::fs::write(path, png).expect("write the screenshot");
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        if !self.session.is_empty() {
            let _ = self.try_call("DELETE", &self.at(""), None);
        }
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Standard base64 (with padding) to bytes.
fn base64_decode(s: &str) -> Vec<u8> {
    fn sextet(c: u8) -> Option<u32> {
        Some(match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' => 62,
            b'/' => 63,
            _ => return None,
        } as u32)
    }
    let mut out = Vec::with_capacity(s.len() / 4 * 3);
    let (mut acc, mut bits) = (0u32, 0);
    for c in s.bytes().filter_map(sextet) {
        acc = (acc << 6) | c;
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
        }
    }
    out
}
