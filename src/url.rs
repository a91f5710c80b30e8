//! Store URLs: which backend, where, with which options.
//!
//! | URL | backend |
//! |---|---|
//! | `memory://` | in-process memory, gone with the process |
//! | `sled://PATH`, or a bare `PATH` | embedded sled database in directory `PATH` (the default) |
//! | `sled://PATH?sync=false` | the same, without waiting for the disk on each save |

use std::path::PathBuf;

use crate::error::{Error, Result};

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
}

/// Schemes that name backends of later releases or of features not compiled in.
const KNOWN_ELSEWHERE: &[(&str, &str)] = &[
    ("sqlite", "SQLite"),
    ("postgres", "PostgreSQL"),
    ("postgresql", "PostgreSQL"),
    ("redis", "Redis"),
    ("rediss", "Redis (TLS)"),
    ("redis+cluster", "Redis Cluster"),
];

impl StoreUrl {
    /// Parses a store URL. Errors never repeat a password that was in the URL.
    pub fn parse(url: &str) -> Result<Self> {
        let invalid = |reason: String| Error::InvalidUrl {
            url: redact(url),
            reason,
        };
        let url = url.trim();
        if url.is_empty() {
            return Err(invalid(
                "empty; use memory://, sled://PATH, or a directory path".into(),
            ));
        }
        let Some((scheme, rest)) = url.split_once("://") else {
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
                    return Err(invalid("sled:// needs a directory, e.g. sled://./ckpt-data".into()));
                }
                let mut sync = true;
                for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
                    match pair.split_once('=') {
                        Some(("sync", v)) => sync = parse_bool(v).ok_or_else(|| {
                            invalid(format!("sync must be true or false, got {v:?}"))
                        })?,
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
            other => match KNOWN_ELSEWHERE.iter().find(|(s, _)| *s == other) {
                Some((_, name)) => Err(invalid(format!(
                    "the {name} backend is not part of this build of ckpt; available: memory://, sled://PATH"
                ))),
                None => Err(invalid(format!(
                    "unknown scheme {other:?}; use memory://, sled://PATH, or a directory path"
                ))),
            },
        }
    }
}

fn parse_bool(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Some(true),
        "false" | "0" | "no" | "off" => Some(false),
        _ => None,
    }
}

/// `url` with any password (`user:password@`) replaced by `***`.
pub fn redact(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
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
        None => url.to_owned(),
    }
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
    fn refuses_with_reasons_and_no_passwords() {
        let e = StoreUrl::parse("postgres://bob:hunter2@db/app")
            .unwrap_err()
            .to_string();
        assert!(e.contains("PostgreSQL") && !e.contains("hunter2"), "{e}");
        assert!(StoreUrl::parse("sled://x?sink=1").is_err());
        assert!(StoreUrl::parse("ftp://x").is_err());
        assert!(StoreUrl::parse("").is_err());
        assert!(StoreUrl::parse("sled://").is_err());
    }
}
