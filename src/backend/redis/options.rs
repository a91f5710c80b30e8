//! The Redis backend's URL and settings: the driver URL (one server or one per Cluster node), the
//! options this backend reads (`prefix=`, `ttl=`, `timeout=`, `shard=`, `max_connections=`,
//! `tls_ca=`) and how [`ConnectOptions`] override them.

use std::time::Duration;

use crate::backend::retry;
use crate::backend::ConnectOptions;
use crate::error::{Error, Result};
use crate::url::{redact, RawUrl};

/// The prefix when the URL names none.
const DEFAULT_PREFIX: &str = "ckpt";
/// How long one call may take, retries included, when neither the URL nor the builder says.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Idle dedicated connections kept for blocking reads (`XREAD BLOCK`) when not configured.
const DEFAULT_WAITERS: usize = 4;
/// The URL options this backend accepts, for error messages.
const ACCEPTED: &str = "prefix=NAME, ttl=DURATION, timeout=DURATION, shard=store|execution, \
                        max_connections=N, tls_ca=PATH (durations like 500ms, 30s, 5m, 24h, 2d)";

/// How a store's logs map to Cluster hash slots (see the [module documentation](self)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Shard {
    /// One slot for all logs of a store: cross-execution batches are atomic.
    Store,
    /// One slot per execution: cross-slot batches are refused.
    Execution,
}

/// The settings parsed from the URL and [`ConnectOptions`].
#[derive(Debug, Clone)]
pub(super) struct Settings {
    pub(super) prefix: String,
    pub(super) ttl: Option<Duration>,
    pub(super) timeout: Duration,
    pub(super) shard: Shard,
    pub(super) waiters: usize,
    /// PEM root certificates to trust instead of the system's (`tls_ca=PATH`, TLS URLs only).
    pub(super) tls_ca: Option<std::path::PathBuf>,
}

/// A Redis URL split into what the driver connects to and the options this backend reads.
pub(super) struct ParsedUrl {
    pub(super) cluster: bool,
    /// `rediss://` or `rediss+cluster://`.
    pub(super) tls: bool,
    /// One URL per node (one for a single server), without the query options; may hold a
    /// password, so never shown.
    pub(super) driver_urls: Vec<String>,
    /// The query options, in order.
    pub(super) options: Vec<(String, String)>,
    /// A node's driver URL is `node_url.0 + "host:port" + node_url.1`; may hold a password.
    pub(super) node_url: (String, String),
    /// The URL with any password masked.
    pub(super) redacted: String,
}

impl ParsedUrl {
    pub(super) fn parse(url: &RawUrl, cluster: bool) -> Result<Self> {
        let full = url.expose();
        let invalid = |reason: String| Error::InvalidUrl {
            url: url.redacted(),
            reason,
        };
        let (scheme, rest) = full
            .split_once("://")
            .ok_or_else(|| invalid("missing scheme".into()))?;
        let (rest, fragment) = match rest.split_once('#') {
            Some((r, f)) => (r, Some(f)),
            None => (rest, None),
        };
        let (location, query) = match rest.split_once('?') {
            Some((l, q)) => (l, q),
            None => (rest, ""),
        };
        let mut options = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            options.push((k.to_ascii_lowercase(), v.to_owned()));
        }
        let tls = scheme.to_ascii_lowercase().starts_with("rediss");
        let driver_scheme = if tls { "rediss" } else { "redis" };
        let fragment = fragment.map_or(String::new(), |f| format!("#{f}"));
        let driver_urls = if cluster {
            let (userinfo, hosts) = match location.rsplit_once('@') {
                Some((u, h)) => (format!("{u}@"), h),
                None => (String::new(), location),
            };
            let hosts = hosts.trim_end_matches('/');
            let urls: Vec<String> = hosts
                .split(',')
                .filter(|h| !h.is_empty())
                .map(|h| format!("{driver_scheme}://{userinfo}{h}{fragment}"))
                .collect();
            if urls.is_empty() {
                return Err(invalid("no Cluster node given".into()));
            }
            urls
        } else {
            vec![format!("{driver_scheme}://{location}{fragment}")]
        };
        let userinfo = location
            .rsplit_once('@')
            .map_or(String::new(), |(u, _)| format!("{u}@"));
        let node_url = (format!("{driver_scheme}://{userinfo}"), fragment.clone());
        Ok(ParsedUrl {
            cluster,
            tls,
            driver_urls,
            options,
            node_url,
            redacted: redact(full),
        })
    }

    /// The settings: the URL's options, overridden by `options`.
    pub(super) fn settings(&self, options: &ConnectOptions) -> Result<Settings> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: self.redacted.clone(),
            reason,
        };
        let mut s = Settings {
            prefix: DEFAULT_PREFIX.to_owned(),
            ttl: None,
            timeout: DEFAULT_TIMEOUT,
            shard: Shard::Store,
            waiters: DEFAULT_WAITERS,
            tls_ca: None,
        };
        for (k, v) in &self.options {
            let bad = |what: &str| invalid(format!("{k} must be {what}, got {v:?}"));
            match k.as_str() {
                "prefix" => {
                    let ok = !v.is_empty()
                        && v.len() <= 64
                        && v.chars()
                            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
                    if !ok {
                        return Err(bad("1 to 64 letters, digits, '_', '-' or '.'"));
                    }
                    s.prefix = v.clone();
                }
                "ttl" => s.ttl = Some(parse_duration(v).ok_or_else(|| bad("a duration > 0"))?),
                "timeout" => s.timeout = parse_duration(v).ok_or_else(|| bad("a duration > 0"))?,
                "shard" => {
                    s.shard = match v.to_ascii_lowercase().as_str() {
                        "store" => Shard::Store,
                        "execution" => Shard::Execution,
                        _ => return Err(bad("store or execution")),
                    }
                }
                "tls_ca" => {
                    if !self.tls {
                        return Err(invalid(
                            "tls_ca is for TLS URLs (rediss:// or rediss+cluster://)".into(),
                        ));
                    }
                    if v.is_empty() {
                        return Err(bad("the path of a PEM file of root certificates"));
                    }
                    s.tls_ca = Some(v.into());
                }
                "max_connections" => {
                    s.waiters = v
                        .parse()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| bad("a number > 0"))?;
                }
                _ => {
                    return Err(invalid(format!(
                        "unknown option {k:?}; Redis URLs accept {ACCEPTED}"
                    )))
                }
            }
        }
        if let Some(t) = options.timeout {
            s.timeout = t;
        }
        if let Some(t) = options.ttl {
            s.ttl = Some(t);
        }
        if let Some(n) = options.max_connections {
            s.waiters = usize::try_from(n).unwrap_or(usize::MAX).max(1);
        }
        if s.timeout.is_zero() || s.ttl.is_some_and(|t| t < Duration::from_millis(1)) {
            return Err(invalid("timeout and ttl must be at least 1ms".into()));
        }
        Ok(s)
    }
}

/// A duration as [`retry::parse_duration`] reads it (`500ms`, `30s`, `5m`, `24h`, `2d`), or a bare
/// number of seconds (this backend's URLs always took one); `None` if malformed or zero.
fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let d = if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        Duration::from_secs(text.parse().ok()?)
    } else {
        retry::parse_duration(text).ok()?
    };
    (!d.is_zero()).then_some(d)
}

/// Every setting a URL may carry, for tests of option handling.
#[cfg(test)]
mod tests {
    use super::*;

    fn settings(url: &str, options: &ConnectOptions) -> Result<Settings> {
        let cluster = url.contains("+cluster");
        let raw = match crate::url::StoreUrl::parse(url)? {
            crate::url::StoreUrl::Redis(u) | crate::url::StoreUrl::RedisCluster(u) => u,
            other => panic!("not a redis url: {other:?}"),
        };
        ParsedUrl::parse(&raw, cluster)?.settings(options)
    }

    #[test]
    fn durations_take_the_documented_units() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("30"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("30s"), Some(Duration::from_secs(30)));
        assert_eq!(parse_duration("5m"), Some(Duration::from_secs(300)));
        assert_eq!(parse_duration("24h"), Some(Duration::from_secs(86_400)));
        assert_eq!(parse_duration("2d"), Some(Duration::from_secs(172_800)));
        assert_eq!(parse_duration("0s"), None);
        assert_eq!(parse_duration("3w"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn options_come_from_the_url_and_the_builder_wins() {
        let s = settings(
            "redis://h:1/0?prefix=app&ttl=24h&timeout=5s&shard=execution",
            &ConnectOptions::default(),
        )
        .unwrap();
        assert_eq!(s.prefix, "app");
        assert_eq!(s.ttl, Some(Duration::from_secs(86_400)));
        assert_eq!(s.timeout, Duration::from_secs(5));
        assert_eq!(s.shard, Shard::Execution);
        let o = ConnectOptions {
            ttl: Some(Duration::from_secs(7)),
            timeout: Some(Duration::from_secs(9)),
            ..ConnectOptions::default()
        };
        let s = settings("redis://h:1/0?ttl=24h&timeout=5s", &o).unwrap();
        assert_eq!(s.ttl, Some(Duration::from_secs(7)));
        assert_eq!(s.timeout, Duration::from_secs(9));
    }

    #[test]
    fn unknown_options_are_named_with_the_accepted_ones() {
        let e = settings(
            "redis://:hunter2@h:1/0?colour=red",
            &ConnectOptions::default(),
        )
        .unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, Error::InvalidUrl { .. }), "{msg}");
        assert!(msg.contains("colour") && msg.contains("prefix="), "{msg}");
        assert!(!msg.contains("hunter2"), "{msg}");
        for bad in [
            "ttl=soon",
            "timeout=0",
            "prefix=a:b",
            "shard=node",
            "prefix=",
        ] {
            let url = format!("redis+cluster://h:1,h:2?{bad}");
            assert!(
                matches!(
                    settings(&url, &ConnectOptions::default()),
                    Err(Error::InvalidUrl { .. })
                ),
                "{bad}"
            );
        }
    }

    #[test]
    fn cluster_urls_become_one_driver_url_per_node() {
        let raw =
            match crate::url::StoreUrl::parse("rediss+cluster://u:pw@a:1,b:2?prefix=x").unwrap() {
                crate::url::StoreUrl::RedisCluster(u) => u,
                other => panic!("{other:?}"),
            };
        let p = ParsedUrl::parse(&raw, true).unwrap();
        assert_eq!(
            p.driver_urls,
            vec!["rediss://u:pw@a:1", "rediss://u:pw@b:2"]
        );
        assert!(!p.redacted.contains("pw@"), "{}", p.redacted);
    }
}
