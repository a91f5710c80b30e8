//! The guard every request passes: the `Host` it names, the token it carries, and for a write,
//! `--allow-writes` and the CSRF token. It also sets the headers every response has (no
//! caching, no sniffing, no framing, no referrer: the token is in the page's first URL) and
//! times API calls (`Server-Timing`).

use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::api::ApiError;
use super::Shared;

/// The cookie `GET /?token=` sets, so that the page's own requests carry the token.
const COOKIE: &str = "ckpt_ui";
/// The header a write carries its CSRF token in.
pub(crate) const CSRF_HEADER: &str = "x-ckpt-csrf";

/// Refuses a request that does not pass (see the module's doc); passes the others on.
pub(crate) async fn guard(State(ui): State<Shared>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let is_api = req.uri().path().starts_with("/api/");
    let mut response = match check(&ui, &req) {
        Ok(set_cookie) => {
            let mut r = next.run(req).await;
            if set_cookie {
                let cookie = format!("{COOKIE}={}; Path=/; HttpOnly; SameSite=Strict", ui.token);
                if let Ok(v) = HeaderValue::from_str(&cookie) {
                    r.headers_mut().insert(header::SET_COOKIE, v);
                }
            }
            r
        }
        Err(e) => e.into_response(),
    };
    let h = response.headers_mut();
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; \
             img-src 'self' data:; frame-ancestors 'none'",
        ),
    );
    if is_api {
        let ms = started.elapsed().as_secs_f64() * 1000.0;
        if let Ok(v) = HeaderValue::from_str(&format!("app;dur={ms:.2}")) {
            h.insert("server-timing", v);
        }
    }
    response
}

/// Whether `req` may pass: `Ok(true)` when it brought the token in its query, so that the
/// response sets the cookie.
fn check(ui: &super::Ui, req: &Request) -> Result<bool, ApiError> {
    let host = req
        .headers()
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        .unwrap_or("");
    if !ui.hosts.iter().any(|h| h.eq_ignore_ascii_case(host)) {
        return Err(ApiError::new(
            StatusCode::FORBIDDEN,
            format!(
                "this server answers requests for {} only (the request named host {host:?})",
                ui.hosts.first().map_or("", String::as_str)
            ),
        ));
    }
    let from_query = query_token(req.uri().query().unwrap_or(""));
    let given = from_query
        .clone()
        .or_else(|| bearer(req.headers()))
        .or_else(|| cookie(req.headers()));
    if !given.is_some_and(|t| same(&t, &ui.token)) {
        return Err(ApiError::new(
            StatusCode::UNAUTHORIZED,
            "a token is needed: open the URL `ckpt ui` printed (it ends in ?token=...), or send \
             `Authorization: Bearer TOKEN`",
        ));
    }
    if is_write(req.method()) {
        if !ui.writes {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "writes are off: start `ckpt ui` with --allow-writes to fork, delete or prune",
            ));
        }
        let csrf = req
            .headers()
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !same(csrf, &ui.csrf) {
            return Err(ApiError::new(
                StatusCode::FORBIDDEN,
                "a write needs the header X-Ckpt-Csrf with the `csrf` of GET /api/info",
            ));
        }
    }
    Ok(from_query.is_some() && req.uri().path() == "/")
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The `token` parameter of a query string.
fn query_token(query: &str) -> Option<String> {
    form_urlencoded_pairs(query)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v)
}

/// The pairs of a query string, percent-decoded.
fn form_urlencoded_pairs(query: &str) -> impl Iterator<Item = (String, String)> + '_ {
    query.split('&').filter_map(|pair| {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        Some((percent_decode(k)?, percent_decode(v)?))
    })
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

fn bearer(headers: &HeaderMap) -> Option<String> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    v.strip_prefix("Bearer ").map(|t| t.trim().to_owned())
}

fn cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_owned())
}

/// Compares two tokens in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_token_from_a_query() {
        assert_eq!(query_token("a=1&token=ab%2Bc&b=2").as_deref(), Some("ab+c"));
        assert_eq!(query_token("a=1"), None);
        assert_eq!(query_token("token=%zz"), None);
    }

    #[test]
    fn compares_tokens_whole() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
        assert!(!same("", "a"));
    }

    #[test]
    fn reads_the_cookie_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("x=1; ckpt_ui=tok; y=2"),
        );
        assert_eq!(cookie(&h).as_deref(), Some("tok"));
    }
}
