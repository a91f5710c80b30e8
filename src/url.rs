//! Store URLs: which backend, where, with which options.
//!
//! | URL | backend |
//! |---|---|
//! | `memory://` | in-process memory, gone with the process |
//! | `sled://PATH`, or a bare `PATH` | embedded sled database in directory `PATH` (the default) |
//! | `sled://PATH?sync=false` | the same, without waiting for the disk on each save |
//! | `sqlite://PATH` | SQLite database file `PATH` (feature `sqlite`) |
//! | `postgres://user@host:port/db`, `postgresql://...` | PostgreSQL (feature `postgres`) |
//! | `redis://host:port/db`, `rediss://...` | one Redis server, streams (feature `redis`) |
//! | `redis+cluster://host1:port,host2:port` | Redis Cluster (feature `redis`) |
//!
//! The server backends parse their own options from the query string (pool sizes, timeouts, TLS,
//! TTL); see each backend's module. A URL is never shown with its password: [`RawUrl`]'s `Debug`
//! and every error redact it.

use std::path::PathBuf;

use crate::error::{Error, Result};

/// A URL as the user gave it, for a backend to parse its own options from. Its `Debug` output and
/// [`RawUrl::redacted`] never show a password; [`RawUrl::expose`] returns it whole, for connecting.
#[derive(Clone, PartialEq, Eq)]
pub struct RawUrl(String);

impl RawUrl {
    /// The whole URL, password included: only for handing to a driver.
    pub fn expose(&self) -> &str {
        &self.0
    }

    /// The URL with any password replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.0)
    }
}

impl std::fmt::Debug for RawUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:?}", self.redacted())
    }
}

/// A parsed store URL.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreUrl {
    /// `memory://`
    Memory,
    /// `sled://PATH` or a bare path.
    Sled {
        /// The database directory.
        path: PathBuf,
        /// Whether each save waits for its flush to disk (default true).
        sync: bool,
    },
    /// `sqlite://PATH[?options]`.
    Sqlite(RawUrl),
    /// `postgres://...` or `postgresql://...`.
    Postgres(RawUrl),
    /// `redis://...` or `rediss://...` (TLS).
    Redis(RawUrl),
    /// `redis+cluster://host1:port,host2:port[?options]`.
    RedisCluster(RawUrl),
}

impl StoreUrl {
    /// Parses a store URL. Errors never repeat a password that was in the URL.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact(url),
            reason,
        };
        // `key_env` names where the encryption keys are, for any backend; the store builder
        // reads it (see `StoreBuilder::open`), the backends never see it.
        let without_keys = strip_option(url.trim(), "key_env");
        let url = without_keys.as_str();
        if url.is_empty() {
            return Err(invalid(
                "empty; use memory://, sled://PATH, or a directory path".into(),
            ));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
            if let Some(scheme) = known_scheme_prefix(url) {
                return Err(invalid(format!(
                    "{scheme}: must be followed by //, e.g. {}; accepted forms: {ACCEPTED_FORMS}",
                    example(scheme)
                )));
            }
            return Ok(StoreUrl::Sled {
                path: PathBuf::from(url),
                sync: true,
            });
        };
        let (location, query) = match rest.split_once('?') {
            Some((l, q)) => (l, Some(q)),
            None => (rest, None),
        };
        match scheme.to_ascii_lowercase().as_str() {
            "memory" => {
                if let Some(q) = query {
                    return Err(invalid(format!("memory:// takes no options, got {q:?}")));
                }
                Ok(StoreUrl::Memory)
            }
            "sled" => {
                if location.is_empty() {
                    return Err(invalid(
                        "sled:// needs a directory, e.g. sled://./ckpt-data".into(),
                    ));
                }
                let mut sync = true;
                for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=') {
                        Some(("sync", v)) => {
                            sync = parse_bool(v).ok_or_else(|| {
                                invalid(format!("sync must be true or false, got {v:?}"))
                            })?
                        }
                        _ => {
                            return Err(invalid(format!(
                                "unknown option {pair:?}; sled:// accepts sync=true|false"
                            )))
                        }
                    }
                }
                Ok(StoreUrl::Sled {
                    path: PathBuf::from(location),
                    sync,
                })
            }
            "sqlite" => {
                if location.is_empty() {
                    return Err(invalid(
                        "sqlite:// needs a file, e.g. sqlite://./ckpt.db".into(),
                    ));
                }
                Ok(StoreUrl::Sqlite(RawUrl(url.to_owned())))
            }
            "postgres" | "postgresql" => Ok(StoreUrl::Postgres(RawUrl(url.to_owned()))),
            "redis" | "rediss" => Ok(StoreUrl::Redis(RawUrl(url.to_owned()))),
            "redis+cluster" | "rediss+cluster" => {
                if location.is_empty() {
                    return Err(invalid(
                        "redis+cluster:// needs at least one node, e.g. redis+cluster://127.0.0.1:7000"
                            .into(),
                    ));
                }
                Ok(StoreUrl::RedisCluster(RawUrl(url.to_owned())))
            }
            other => Err(invalid(format!(
                "unknown scheme {other:?}; accepted forms: {ACCEPTED_FORMS}"
            ))),
        }
    }

    /// For the file backends (sled, SQLite): fails with [`Error::NotFound`] unless the store's
    /// files exist, without creating anything (opening them creates them). A sled store exists
    /// when its directory holds sled's `db` or `conf` file (or ckpt's `ckpt-wal`); a SQLite
    /// store when its file does. Other backends pass here: whether their store exists is known
    /// once connected (see [`crate::StoreBuilder::create_if_missing`]). A path that cannot be
    /// examined (permission denied) passes too, for the open to report what is wrong.
    pub fn check_files_exist(&self) -> Result<()> {
        match self {
            StoreUrl::Sled { path, .. } => {
                if !path.is_dir() && !absent(path) {
                    // Something is there but it is not a directory: let the open say what.
                    return Ok(());
                }
                if ["db", "conf", "ckpt-wal"]
                    .iter()
                    .all(|f| absent(&path.join(f)))
                {
                    let why = if path.is_dir() {
                        "the directory has no sled database in it (no db or conf file)"
                    } else {
                        "the directory does not exist"
                    };
                    return Err(missing_store(&path.display().to_string(), why));
                }
                Ok(())
            }
            StoreUrl::Sqlite(url) => {
                let full = url.expose();
                let rest = full.split_once("://").map_or(full, |(_, r)| r);
                let file = rest.split_once('?').map_or(rest, |(l, _)| l);
                if absent(std::path::Path::new(file)) {
                    return Err(missing_store(
                        &url.redacted(),
                        "the database file does not exist",
                    ));
                }
                Ok(())
            }
            _ => Ok(()),
        }
    }
}

/// [`Error::NotFound`] for the store at `location` (already redacted), saying why it counts as
/// missing.
pub(crate) fn missing_store(location: &str, why: &str) -> Error {
    Error::not_found(format!(
        "store {location}: {why} (opened without creating a store)"
    ))
}

/// True only when the file surely does not exist: an error other than "not found" (say,
/// permission denied) is left for the open to report as it is.
fn absent(path: &std::path::Path) -> bool {
    matches!(std::fs::symlink_metadata(path), Err(e) if e.kind() == std::io::ErrorKind::NotFound)
}

/// Every form [`StoreUrl::parse`] accepts, for error messages.
const ACCEPTED_FORMS: &str = "memory://, sled://PATH, a directory path, sqlite://PATH, \
postgres://USER@HOST:PORT/DB, redis://HOST:PORT/DB, rediss://..., redis+cluster://HOST:PORT,...";

/// The schemes [`StoreUrl::parse`] knows.
const SCHEMES: [&str; 9] = [
    "memory",
    "sled",
    "sqlite",
    "postgres",
    "postgresql",
    "redis",
    "rediss",
    "redis+cluster",
    "rediss+cluster",
];

/// The known scheme `text` starts with as `scheme:` (without the `//` a URL needs), if any:
/// `sqlite:x.db` is a mistyped URL, not a directory named so, while `./a:b` is a path.
fn known_scheme_prefix(text: &str) -> Option<&str> {
    let (head, _) = text.split_once(':')?;
    SCHEMES
        .iter()
        .any(|s| s.eq_ignore_ascii_case(head))
        .then_some(head)
}

/// A correct URL of `scheme`, to show in an error.
fn example(scheme: &str) -> &'static str {
    match scheme.to_ascii_lowercase().as_str() {
        "memory" => "memory://",
        "sled" => "sled://./ckpt-data",
        "sqlite" => "sqlite://./ckpt.db",
        "postgres" | "postgresql" => "postgres://user@localhost:5432/db",
        "rediss" => "rediss://localhost:6379/0",
        "redis+cluster" | "rediss+cluster" => "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        _ => "redis://localhost:6379/0",
    }
}

pub(crate) fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `url` with any password (`user:password@`, or a `password=` query option) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let rest = redact_query_password(rest);
    let rest = rest.as_str();
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, tail) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split_once(':').map_or(userinfo, |(u, _)| u);
            let masked = if userinfo.contains(':') {
                format!("{user}:***")
            } else {
                user.to_owned()
            };
            format!("{scheme}://{masked}@{host}{tail}")
        }
        None => format!("{scheme}://{rest}"),
    }
}

/// `url` without its `key_env` option (which the store builder reads, not the backends).
pub fn strip_key_env(url: &str) -> String {
    strip_option(url, "key_env")
}

/// `url` without the query option `name` (and without a `?` left empty).
pub(crate) fn strip_option(url: &str, name: &str) -> String {
    let Some((base, query)) = url.split_once('?') else {
        return url.to_owned();
    };
    let kept: Vec<&str> = query
        .split('&')
        .filter(|pair| !pair.is_empty() && pair.split_once('=').map_or(*pair, |(k, _)| k) != name)
        .collect();
    if kept.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", kept.join("&"))
    }
}

/// `rest` with the values of `password=` / `pass=` query options replaced by `***`.
fn redact_query_password(rest: &str) -> String {
    let Some((head, query)) = rest.split_once('?') else {
        return rest.to_owned();
    };
    let pairs: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if matches!(k.to_ascii_lowercase().as_str(), "password" | "pass") => {
                format!("{k}=***")
            }
            _ => pair.to_owned(),
        })
        .collect();
    format!("{head}?{}", pairs.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_documented_forms() {
        assert_eq!(StoreUrl::parse("memory://").unwrap(), StoreUrl::Memory);
        assert_eq!(
            StoreUrl::parse("sled://./data?sync=false").unwrap(),
            StoreUrl::Sled {
                path: "./data".into(),
                sync: false
            }
        );
        assert_eq!(
            StoreUrl::parse("/tmp/x").unwrap(),
            StoreUrl::Sled {
                path: "/tmp/x".into(),
                sync: true
            }
        );
    }

    #[test]
    fn server_urls_never_show_their_password() {
        let parsed = StoreUrl::parse("postgres://bob:hunter2@db/app").unwrap();
        assert!(matches!(parsed, StoreUrl::Postgres(_)));
        let debug = format!("{parsed:?}");
        assert!(
            !debug.contains("hunter2") && debug.contains("bob"),
            "{debug}"
        );
        let e = StoreUrl::parse("ftp://bob:hunter2@x/")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("hunter2"), "{e}");
        let e = redact("postgres://db/app?sslmode=require&password=hunter2");
        assert_eq!(e, "postgres://db/app?sslmode=require&password=***");
        assert!(!e.contains("hunter2"), "{e}");
    }

    #[test]
    fn refuses_with_reasons_and_no_passwords() {
        assert!(StoreUrl::parse("sled://x?sink=1").is_err());
        assert!(StoreUrl::parse("ftp://x").is_err());
        assert!(StoreUrl::parse("").is_err());
        assert!(StoreUrl::parse("sled://").is_err());
    }

    #[test]
    fn a_known_scheme_without_slashes_is_refused_and_other_colons_are_paths() {
        for url in [
            "sqlite:x.db",
            "sled:x",
            "postgres:/x",
            "SQLite:x.db",
            "redis:localhost",
            "redis+cluster:h:1",
            "memory:",
        ] {
            let e = StoreUrl::parse(url).unwrap_err().to_string();
            assert!(
                e.contains("must be followed by //") && e.contains("sqlite://PATH"),
                "{url}: {e}"
            );
        }
        let e = StoreUrl::parse("foo://x").unwrap_err().to_string();
        assert!(
            e.contains("unknown scheme") && e.contains("sled://PATH"),
            "{e}"
        );
        for path in ["./a:b", "a:b", "/tmp/x:1", "data"] {
            assert_eq!(
                StoreUrl::parse(path).unwrap(),
                StoreUrl::Sled {
                    path: path.into(),
                    sync: true
                },
                "{path}"
            );
        }
    }
}
