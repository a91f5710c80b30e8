//! [`StoreBuilder`]: opening a store from a URL with settings the URL does not carry.

use std::sync::Arc;
use std::time::Duration;

use super::Store;
use crate::backend::{Backend, ConnectOptions};
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
}

impl StoreBuilder {
    pub(crate) fn new(url: &str) -> Self {
        StoreBuilder {
            url: url.to_owned(),
            options: ConnectOptions::default(),
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

    /// The connection settings made so far.
    pub fn options(&self) -> &ConnectOptions {
        &self.options
    }

    /// Opens the store.
    pub async fn open(self) -> Result<Store> {
        let backend = open_backend(StoreUrl::parse(&self.url)?, &self.options).await?;
        Ok(Store::with_backend(backend))
    }
}

/// The backend a parsed URL names, opened.
async fn open_backend(url: StoreUrl, options: &ConnectOptions) -> Result<Arc<dyn Backend>> {
    let _ = options;
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
        StoreUrl::Sqlite(url) => Err(not_built(&url.redacted(), "SQLite", "sqlite")),
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
