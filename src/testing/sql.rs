//! Conformance harnesses for the SQL backends: [`SqliteHarness`] (a file in a temporary
//! directory) and [`PostgresHarness`] (a fresh schema on the server named by
//! `CKPT_TEST_POSTGRES_URL`).

use async_trait::async_trait;

use super::Harness;
use crate::Store;

/// The environment variable naming the PostgreSQL server the tests use.
#[cfg(feature = "postgres")]
pub const POSTGRES_URL_ENV: &str = "CKPT_TEST_POSTGRES_URL";

/// What to do when the test PostgreSQL server is missing.
#[cfg(feature = "postgres")]
const START_SERVERS: &str = "start the servers with `eval \"$(scripts/servers.sh start)\"` \
                             or run scripts/test-all.sh";

/// A name no other harness of any process uses: `prefix` + time, process id and a counter.
pub fn unique_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    format!(
        "{prefix}{:x}_{:x}_{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// A [`Harness`] on an SQLite file in a temporary directory, removed when the harness is dropped.
/// Every [`Harness::open`] is a `Store::open("sqlite://...")` of that file.
#[cfg(feature = "sqlite")]
#[derive(Debug)]
pub struct SqliteHarness {
    dir: tempfile::TempDir,
}

#[cfg(feature = "sqlite")]
impl SqliteHarness {
    /// A harness on a new temporary directory. Panics when none can be created.
    pub fn new() -> Self {
        match tempfile::Builder::new().prefix("ckpt-sqlite-").tempdir() {
            Ok(dir) => SqliteHarness { dir },
            Err(e) => panic!("sqlite harness: cannot create a temporary directory: {e}"),
        }
    }

    /// The database file.
    pub fn path(&self) -> std::path::PathBuf {
        self.dir.path().join("ckpt.db")
    }

    /// The store URL of the database file.
    pub fn url(&self) -> String {
        format!("sqlite://{}", self.path().display())
    }
}

#[cfg(feature = "sqlite")]
impl Default for SqliteHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "sqlite")]
#[async_trait]
impl Harness for SqliteHarness {
    async fn open(&self) -> Store {
        let url = self.url();
        match Store::open(&url).await {
            Ok(store) => store,
            Err(e) => panic!("sqlite harness: cannot open {url}: {e}"),
        }
    }

    fn name(&self) -> &'static str {
        "sqlite"
    }

    fn allows_concurrent_opens(&self) -> bool {
        true
    }
}

/// A [`Harness`] on a schema of its own (`t_...`, created on first open) on the PostgreSQL server
/// named by `CKPT_TEST_POSTGRES_URL`, with a small pool. Panics, saying how to start the server,
/// when the variable is unset or the server cannot be reached.
#[cfg(feature = "postgres")]
#[derive(Debug, Clone)]
pub struct PostgresHarness {
    url: String,
    schema: String,
}

#[cfg(feature = "postgres")]
impl PostgresHarness {
    /// A harness on a new schema. Panics when `CKPT_TEST_POSTGRES_URL` is unset.
    pub fn new() -> Self {
        Self::with_options("max_connections=4")
    }

    /// A harness on a new schema, with `options` (`key=value&...`) added to the URL.
    pub fn with_options(options: &str) -> Self {
        let base = postgres_test_url();
        let sep = if base.contains('?') { '&' } else { '?' };
        let schema = unique_name("t_");
        let options = if options.is_empty() {
            String::new()
        } else {
            format!("&{options}")
        };
        PostgresHarness {
            url: format!("{base}{sep}schema={schema}{options}"),
            schema,
        }
    }

    /// The store URL (with the harness's schema).
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The harness's schema.
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

/// The test server's URL from `CKPT_TEST_POSTGRES_URL`; panics, saying how to start the server,
/// when it is unset.
#[cfg(feature = "postgres")]
pub fn postgres_test_url() -> String {
    match std::env::var(POSTGRES_URL_ENV) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!(
            "{POSTGRES_URL_ENV} is not set: the PostgreSQL tests need a server; {START_SERVERS}"
        ),
    }
}

#[cfg(feature = "postgres")]
impl Default for PostgresHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "postgres")]
#[async_trait]
impl Harness for PostgresHarness {
    async fn open(&self) -> Store {
        match Store::builder(&self.url)
            .timeout(std::time::Duration::from_secs(60))
            .open()
            .await
        {
            Ok(store) => store,
            Err(e) => panic!(
                "postgres harness: cannot open {}: {e}; is the server running? {START_SERVERS}",
                crate::url::redact(&self.url)
            ),
        }
    }

    fn name(&self) -> &'static str {
        "postgres"
    }

    fn allows_concurrent_opens(&self) -> bool {
        true
    }
}
