//! [`StoreBuilder`]: opening a store from a URL with settings the URL does not carry.

use std::sync::Arc;
use std::time::Duration;

use super::Store;
use crate::backend::{Backend, ConnectOptions};
use crate::crypto::Key;
use crate::error::{Error, Result};
use crate::url::StoreUrl;

/// Opens a [`Store`] from a URL, with connection settings given in code. A setting made here
/// overrides the same option in the URL's query.
///
/// ```
/// # tokio::runtime::Runtime::new().unwrap().block_on(async {
/// use std::time::Duration;
/// let store = ckpt::Store::builder("memory://")
///     .max_connections(8)
///     .timeout(Duration::from_secs(10))
///     .open()
///     .await?;
/// # Ok::<(), ckpt::Error>(())
/// # }).unwrap();
/// ```
#[derive(Debug, Clone)]
#[must_use = "a builder does nothing until `open` is called"]
pub struct StoreBuilder {
    url: String,
    options: ConnectOptions,
    /// The writing key first, then older keys that still open.
    keys: Vec<Key>,
    /// Whether `open` may create a store that does not exist yet.
    create: bool,
}

impl StoreBuilder {
    pub(crate) fn new(url: &str) -> Self {
        StoreBuilder {
            url: url.to_owned(),
            options: ConnectOptions::default(),
            keys: Vec::new(),
            create: true,
        }
    }

    /// Most connections the pool keeps open (server backends).
    pub fn max_connections(mut self, n: u32) -> Self {
        self.options.max_connections = Some(n);
        self
    }

    /// Connections the pool keeps open when idle (server backends).
    pub fn min_connections(mut self, n: u32) -> Self {
        self.options.min_connections = Some(n);
        self
    }

    /// Longest a pooled connection is reused before it is replaced.
    pub fn max_lifetime(mut self, d: Duration) -> Self {
        self.options.max_lifetime = Some(d);
        self
    }

    /// Longest a call waits for a free pooled connection.
    pub fn acquire_timeout(mut self, d: Duration) -> Self {
        self.options.acquire_timeout = Some(d);
        self
    }

    /// Longest one backend call may take, retries included.
    pub fn timeout(mut self, d: Duration) -> Self {
        self.options.timeout = Some(d);
        self
    }

    /// Expire executions this long after their last save (backends with expiry: Redis).
    pub fn ttl(mut self, d: Duration) -> Self {
        self.options.ttl = Some(d);
        self
    }

    /// Encrypts everything the store writes with `key` (see [`crate::crypto`]). A new store
    /// becomes encrypted at its first write; a plaintext store refuses a key. Replaces an
    /// earlier `encryption` key (which then only decrypts).
    pub fn encryption(mut self, key: Key) -> Self {
        self.keys.insert(0, key);
        self
    }

    /// An older key that still decrypts what it sealed (key rotation: the newest writes).
    pub fn decryption_key(mut self, key: Key) -> Self {
        self.keys.push(key);
        self
    }

    /// Whether [`StoreBuilder::open`] may create the store when none exists at the URL (default
    /// true). With `false`, a missing store is [`Error::NotFound`] and nothing is created: what
    /// a tool that only reads wants, so that a mistyped path does not silently become an empty
    /// store. "Missing" means: sled, no database files in the directory; SQLite, no file;
    /// PostgreSQL, no ckpt tables in the schema; Redis, no log and no blob under the prefix.
    /// `memory://` is always new, so it is never missing.
    ///
    /// ```
    /// # tokio::runtime::Runtime::new().unwrap().block_on(async {
    /// let dir = tempfile::tempdir().unwrap();
    /// let path = dir.path().join("typo");
    /// let url = path.to_str().unwrap();
    /// let e = ckpt::Store::builder(url).create_if_missing(false).open().await.unwrap_err();
    /// assert!(e.is_not_found());
    /// assert!(!path.exists());
    /// # });
    /// ```
    pub fn create_if_missing(mut self, create: bool) -> Self {
        self.create = create;
        self
    }

    /// The connection settings made so far.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// Opens the store.
    ///
    /// The URL may name environment variables holding keys (`?key_env=CKPT_KEY`, several
    /// separated by commas: the first writes, all decrypt); the keys themselves never appear in
    /// a URL. Keys given in code come before keys from the URL.
    pub async fn open(self) -> Result<Store> {
        // The URL as messages show it (no password; `key_env` names variables, never keys).
        let span = if super::trace::wanted(tracing::Level::DEBUG) {
            tracing::debug_span!(
                "ckpt.open",
                url = tracing::field::Empty,
                backend = tracing::field::Empty,
                outcome = tracing::field::Empty,
                elapsed_us = tracing::field::Empty,
            )
        } else {
            tracing::Span::none()
        };
        if !span.is_disabled() {
            span.record("url", crate::url::redact(&self.url).as_str());
        }
        let store = super::trace::in_span(&span, self.open_untraced()).await?;
        span.record("backend", store.backend().name());
        Ok(store)
    }

    /// [`StoreBuilder::open`] outside its span.
    async fn open_untraced(self) -> Result<Store> {
        let (url, key_vars) = take_key_env(&self.url)?;
        let mut keys = self.keys;
        for var in key_vars {
            keys.push(key_from_env(&url, &var)?);
        }
        let parsed = StoreUrl::parse(&url)?;
        if !self.create {
            parsed.check_files_exist()?;
        }
        let backend = open_backend(parsed.clone(), &self.options, self.create).await?;
        if !self.create && is_redis(&parsed) && holds_nothing(backend.as_ref()).await? {
            return Err(missing(
                &crate::url::redact(&url),
                "it holds no log and no blob",
            ));
        }
        Ok(Store::with_backend_and_keys(backend, keys))
    }
}

/// `url` without its `key_env` option, and the variables that option names.
fn take_key_env(url: &str) -> Result<(String, Vec<String>)> {
    let Some((base, query)) = url.split_once('?') else {
        return Ok((url.to_owned(), Vec::new()));
    };
    let mut vars = Vec::new();
    let mut rest = Vec::new();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("key_env", names)) => {
                let names: Vec<&str> = names.split(',').map(str::trim).collect();
                if names.iter().any(|n| n.is_empty()) {
                    // Opening without the key would read as "not encrypted" and, on a new store,
                    // write plaintext the user meant to encrypt.
                    return Err(Error::InvalidUrl {
                        url: crate::url::redact(url),
                        reason: "key_env names no environment variable (an empty name); write \
                                 ?key_env=CKPT_KEY, or several separated by commas, or leave \
                                 key_env out for a store that is not encrypted"
                            .into(),
                    });
                }
                vars.extend(names.into_iter().map(String::from));
            }
            Some(("key", _)) => {
                return Err(Error::InvalidUrl {
                    url: crate::url::redact(base),
                    reason: "a key never goes in a URL (URLs end up in logs and shell history); \
                             put it in an environment variable and name it: ?key_env=CKPT_KEY"
                        .into(),
                })
            }
            _ => rest.push(pair),
        }
    }
    let url = if rest.is_empty() {
        base.to_owned()
    } else {
        format!("{base}?{}", rest.join("&"))
    };
    Ok((url, vars))
}

/// The key in environment variable `var` (64 hex digits).
fn key_from_env(url: &str, var: &str) -> Result<Key> {
    let invalid = |reason: String| Error::InvalidUrl {
        url: crate::url::redact(url),
        reason,
    };
    let value = std::env::var(var).map_err(|_| {
        invalid(format!(
            "key_env names {var}, which is not set; set it to the store's key (64 hex digits, \
             e.g. from `ckpt keygen`)"
        ))
    })?;
    Key::from_hex(&value).map_err(|e| invalid(format!("the key in {var}: {e}")))
}

/// [`Error::NotFound`] for the store at `location`, saying why it counts as missing.
fn missing(location: &str, why: &str) -> Error {
    crate::url::missing_store(location, why)
}

/// Redis keeps no schema: a store exists once it holds something. (PostgreSQL refuses a schema
/// without ckpt's tables when it opens; an empty schema that has them is a store, as a sled
/// directory with its files is.)
fn is_redis(url: &StoreUrl) -> bool {
    matches!(url, StoreUrl::Redis(_) | StoreUrl::RedisCluster(_))
}

/// Whether a store holds nothing at all: no log (own logs included) and no blob.
async fn holds_nothing(backend: &dyn Backend) -> Result<bool> {
    Ok(backend.list_logs().await?.is_empty() && backend.list_blobs().await?.is_empty())
}

/// The backend a parsed URL names, opened; `create` false: a PostgreSQL schema without ckpt's
/// tables is [`Error::NotFound`] instead of being created.
async fn open_backend(
    url: StoreUrl,
    options: &ConnectOptions,
    create: bool,
) -> Result<Arc<dyn Backend>> {
    let _ = (options, create);
    match url {
        StoreUrl::Memory => Ok(Arc::new(crate::backend::memory::MemoryBackend::new())),
        #[cfg(feature = "sled")]
        StoreUrl::Sled { path, sync } => {
            let backend = tokio::task::spawn_blocking(move || {
                crate::backend::sled::SledBackend::open(&path, sync)
            })
            .await
            .map_err(|e| Error::Backend {
                backend: "sled",
                context: "opening the database".into(),
                source: Box::new(e),
            })??;
            Ok(Arc::new(backend))
        }
        #[cfg(not(feature = "sled"))]
        StoreUrl::Sled { path, .. } => Err(not_built(&path.display().to_string(), "sled", "sled")),
        #[cfg(feature = "sqlite")]
        StoreUrl::Sqlite(url) => Ok(Arc::new(
            crate::backend::sql::sqlite::SqliteBackend::open(&url, options).await?,
        )),
        #[cfg(not(feature = "sqlite"))]
        StoreUrl::Sqlite(url) => Err(not_built(&url.redacted(), "SQLite", "sqlite")),
        #[cfg(feature = "postgres")]
        StoreUrl::Postgres(url) => {
            use crate::backend::sql::postgres::PostgresBackend;
            Ok(Arc::new(if create {
                PostgresBackend::open(&url, options).await?
            } else {
                PostgresBackend::open_existing(&url, options).await?
            }))
        }
        #[cfg(not(feature = "postgres"))]
        StoreUrl::Postgres(url) => Err(not_built(&url.redacted(), "PostgreSQL", "postgres")),
        #[cfg(feature = "redis")]
        StoreUrl::Redis(url) => Ok(Arc::new(
            crate::backend::redis::RedisBackend::connect(&url, false, options).await?,
        )),
        #[cfg(feature = "redis")]
        StoreUrl::RedisCluster(url) => Ok(Arc::new(
            crate::backend::redis::RedisBackend::connect(&url, true, options).await?,
        )),
        #[cfg(not(feature = "redis"))]
        StoreUrl::Redis(url) | StoreUrl::RedisCluster(url) => {
            Err(not_built(&url.redacted(), "Redis", "redis"))
        }
    }
}

#[allow(dead_code)]
fn not_built(url: &str, name: &str, feature: &str) -> Error {
    Error::InvalidUrl {
        url: url.to_owned(),
        reason: format!(
            "the {name} backend is not part of this build of ckpt (enable the `{feature}` feature)"
        ),
    }
}
