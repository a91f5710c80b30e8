//! What the SQL backends ([`sqlite`] and [`postgres`]) share: the URL options they understand,
//! how they wrap driver errors (never with a password in them), and the bounded, jittered backoff
//! their retries use.
//!
//! Both store the same three tables: `logs`, one row per log ever appended to with its next
//! sequence number (so a truncate keeps it); `frames`, whose primary key (PostgreSQL:
//! `(log, seq)`; SQLite: one integer made of the log's id and the sequence number) fences
//! concurrent appends and serves every scan; and `blobs (hash, data)`. A `ckpt_schema` table
//! holds the schema version, so that a store written by a newer ckpt is refused instead of being
//! written to. Beside them, without a version change (an older store gains them at its next
//! open, older code ignores them): `records (key, value)` ([`SideTable`](super::SideTable)) and
//! `search_index (key, value)` ([`SearchTable`](super::SearchTable)), whose binary keys both
//! databases order bytewise.
//!
//! # URL options
//!
//! | option | meaning | default |
//! |---|---|---|
//! | `max_connections=N` | most pooled connections (on PostgreSQL, from 3 on, with the one opening made and keeps) | 4 (SQLite readers), 10 (PostgreSQL) |
//! | `min_connections=N` | connections kept open when idle | 0 |
//! | `max_lifetime=30m` | longest a connection is reused | 30m |
//! | `acquire_timeout=10s` | longest a call waits for a connection; on PostgreSQL also the longest the first connection at open may take | 10s (at most `timeout`) |
//! | `timeout=30s` | longest one backend call may take, retries included | 30s |
//!
//! Durations are written `250ms`, `30s`, `15m`, `12h` or `1d`. Settings made with
//! [`crate::StoreBuilder`] override the URL's.

use std::fmt;
use std::time::Duration;

use super::retry::parse_duration;
use super::ConnectOptions;
use crate::error::{Error, Result};

#[cfg(feature = "postgres")]
pub mod postgres;
#[cfg(feature = "sqlite")]
pub mod sqlite;

/// The pool options every SQL backend accepts, by their URL names.
pub(crate) const POOL_OPTIONS: [&str; 5] = [
    "max_connections",
    "min_connections",
    "max_lifetime",
    "acquire_timeout",
    "timeout",
];

/// Default for `timeout`.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
/// Default (and upper bound when `timeout` is shorter) for `acquire_timeout`.
const DEFAULT_ACQUIRE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default for `max_lifetime`.
const DEFAULT_MAX_LIFETIME: Duration = Duration::from_secs(30 * 60);

/// Pool settings after merging the URL's options with the builder's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct PoolSettings {
    pub max_connections: Option<u32>,
    pub min_connections: u32,
    pub max_lifetime: Duration,
    pub acquire_timeout: Duration,
    pub timeout: Duration,
}

/// A store URL split into its location (everything before `?`), the pool settings, the
/// backend's own options (`key`, `value`, in order) and the options passed on to the driver.
#[derive(Debug, Clone)]
pub(crate) struct ParsedOptions {
    pub pool: PoolSettings,
    pub own: Vec<(String, String)>,
    /// Only PostgreSQL hands options to its driver.
    #[cfg_attr(not(feature = "postgres"), allow(dead_code))]
    pub driver: Vec<(String, String)>,
}

/// Parses the query of `url` (whole URL, password included; errors are built with `redacted`).
/// `own` are the backend's options beside the pool's; `driver` the ones handed to the driver
/// untouched. Any other option is refused, naming it and listing the accepted ones.
pub(crate) fn parse_options(
    url: &str,
    redacted: &str,
    own: &[&str],
    driver: &[&str],
    builder: &ConnectOptions,
) -> Result<ParsedOptions> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: redacted.to_owned(),
        reason,
    };
    let query = url.split_once('?').map_or("", |(_, q)| q);
    let mut pool = PoolSettings {
        max_connections: None,
        min_connections: 0,
        max_lifetime: DEFAULT_MAX_LIFETIME,
        acquire_timeout: DEFAULT_ACQUIRE_TIMEOUT,
        timeout: DEFAULT_TIMEOUT,
    };
    let mut acquire_set = false;
    let mut parsed_own = Vec::new();
    let mut parsed_driver = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        let number = |v: &str| {
            v.parse::<u32>()
                .map_err(|_| invalid(format!("{key} must be a whole number, got {v:?}")))
        };
        let duration = |v: &str| parse_duration(v).map_err(|e| invalid(format!("{key}: {e}")));
        match key {
            "max_connections" => pool.max_connections = Some(number(value)?.max(1)),
            "min_connections" => pool.min_connections = number(value)?,
            "max_lifetime" => pool.max_lifetime = duration(value)?,
            "acquire_timeout" => {
                pool.acquire_timeout = duration(value)?;
                acquire_set = true;
            }
            "timeout" => pool.timeout = duration(value)?,
            k if own.contains(&k) => parsed_own.push((k.to_owned(), value.to_owned())),
            k if driver.contains(&k)
                || k.starts_with("options[") && driver.contains(&"options") =>
            {
                parsed_driver.push((k.to_owned(), value.to_owned()))
            }
            k => {
                let mut accepted: Vec<&str> = POOL_OPTIONS.to_vec();
                accepted.extend_from_slice(own);
                accepted.extend_from_slice(driver);
                return Err(invalid(format!(
                    "unknown option {k:?}; accepted options: {}",
                    accepted.join(", ")
                )));
            }
        }
    }
    apply_builder(&mut pool, &mut acquire_set, builder);
    if !acquire_set {
        pool.acquire_timeout = pool.acquire_timeout.min(pool.timeout);
    }
    Ok(ParsedOptions {
        pool,
        own: parsed_own,
        driver: parsed_driver,
    })
}

/// The builder's settings, which win over the URL's.
fn apply_builder(pool: &mut PoolSettings, acquire_set: &mut bool, builder: &ConnectOptions) {
    if let Some(n) = builder.max_connections {
        pool.max_connections = Some(n.max(1));
    }
    if let Some(n) = builder.min_connections {
        pool.min_connections = n;
    }
    if let Some(d) = builder.max_lifetime {
        pool.max_lifetime = d;
    }
    if let Some(d) = builder.acquire_timeout {
        pool.acquire_timeout = d;
        *acquire_set = true;
    }
    if let Some(d) = builder.timeout {
        pool.timeout = d;
    }
}

/// A driver error as text, with every occurrence of the password removed: what the SQL backends
/// put in [`Error::Backend`]'s `source`, so that neither `Display` nor `Debug` of an error can
/// show a password, whatever the driver put in its message.
#[derive(Clone, PartialEq, Eq)]
pub(crate) struct DriverError(pub(crate) String);

impl DriverError {
    /// `error`'s message (with its sources), scrubbed of `secrets`.
    pub(crate) fn new(error: &dyn std::error::Error, secrets: &[String]) -> Self {
        let mut text = error.to_string();
        let mut source = error.source();
        while let Some(s) = source {
            let more = s.to_string();
            // Many drivers repeat their source's message in their own.
            if !text.contains(&more) {
                text.push_str(": ");
                text.push_str(&more);
            }
            source = s.source();
        }
        DriverError(scrub(&text, secrets))
    }
}

/// `text` with every one of `secrets` replaced by `***` (secrets shorter than 3 bytes would
/// mangle ordinary text and are left alone; such a password is no secret anyway).
pub(crate) fn scrub(text: &str, secrets: &[String]) -> String {
    let mut text = text.to_owned();
    for s in secrets.iter().filter(|s| s.len() >= 3) {
        text = text.replace(s.as_str(), "***");
    }
    text
}

impl fmt::Display for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for DriverError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl std::error::Error for DriverError {}

/// A sequence number as the databases store it (a signed 64-bit integer).
pub(crate) fn to_db_seq(seq: u64, what: &str) -> Result<i64> {
    i64::try_from(seq).map_err(|_| {
        Error::InvalidInput(format!(
            "{what}: sequence number {seq} is beyond what the SQL backends store (at most {})",
            i64::MAX
        ))
    })
}

/// A sequence number read back from a database.
pub(crate) fn from_db_seq(seq: i64, location: &str) -> Result<u64> {
    u64::try_from(seq).map_err(|_| Error::corrupt(location, format!("negative sequence {seq}")))
}

/// Scanned `(seq, frame)` rows of `log` as the backend returns them.
pub(crate) fn frames_of(rows: Vec<(i64, Vec<u8>)>, log: &str) -> Result<Vec<(u64, Vec<u8>)>> {
    rows.into_iter()
        .map(|(seq, frame)| Ok((from_db_seq(seq, &format!("log {log:?}"))?, frame)))
        .collect()
}

/// A blob hash read back from a database.
pub(crate) fn to_hash(bytes: &[u8]) -> Result<super::BlobHash> {
    bytes.try_into().map_err(|_| {
        Error::corrupt(
            "blobs table",
            format!("a hash of {} bytes instead of 32", bytes.len()),
        )
    })
}

/// The first sequence number after appending `count` frames at `expected`, refusing overflow.
pub(crate) fn end_seq(log: &str, expected: u64, count: usize) -> Result<u64> {
    u64::try_from(count)
        .ok()
        .and_then(|n| expected.checked_add(n))
        .filter(|end| i64::try_from(*end).is_ok())
        .ok_or_else(|| {
            Error::InvalidInput(format!(
                "appending {count} frames to log {log:?} at sequence {expected} overflows the sequence numbers"
            ))
        })
}

/// What `log_problems` reports from a log's stored next sequence number and its last frame (a
/// row of `(next_seq, MAX(seq))`): a stored number at or below the last frame was lowered.
fn lowered_next_seq(row: Option<(i64, Option<i64>)>) -> Vec<String> {
    match row {
        Some((stored, Some(last))) if stored <= last => vec![format!(
            "its stored next sequence number ({stored}) is at or below its last frame (seq \
             {last}): it was lowered; versions continue above seq {last}"
        )],
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_merge_with_the_builder_winning() {
        let builder = ConnectOptions {
            max_connections: Some(7),
            ..ConnectOptions::default()
        };
        let url = "sqlite://x.db?max_connections=2&timeout=5s&sync=false";
        let parsed = parse_options(url, url, &["sync"], &[], &builder).unwrap();
        assert_eq!(parsed.pool.max_connections, Some(7));
        assert_eq!(parsed.pool.timeout, Duration::from_secs(5));
        assert_eq!(parsed.pool.acquire_timeout, Duration::from_secs(5));
        assert_eq!(parsed.own, vec![("sync".to_owned(), "false".to_owned())]);
    }

    #[test]
    fn unknown_options_are_named_with_the_accepted_ones() {
        let url = "postgres://h/db?colour=red";
        let e = parse_options(
            url,
            url,
            &["schema"],
            &["sslmode"],
            &ConnectOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("colour") && e.contains("schema") && e.contains("sslmode"));
        assert!(e.contains("max_connections"), "{e}");
        let e = parse_options(
            "postgres://h/db?timeout=soon",
            "",
            &[],
            &[],
            &ConnectOptions::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("timeout"), "{e}");
    }

    #[test]
    fn driver_errors_are_scrubbed() {
        let io = std::io::Error::other("cannot reach bob:hunter2@db");
        let e = DriverError::new(&io, &["hunter2".to_owned()]);
        assert!(!e.to_string().contains("hunter2"));
        assert!(!format!("{e:?}").contains("hunter2"));
    }
}
