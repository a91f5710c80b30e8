//! [`Harness`]es on the Redis test servers: [`RedisHarness`] (one server) and
//! [`RedisClusterHarness`] (a Redis Cluster).
//!
//! They read the servers' URLs from `CKPT_TEST_REDIS_URL` and `CKPT_TEST_REDIS_CLUSTER_URL`,
//! which `scripts/servers.sh start` prints, and panic (never skip) when a variable is unset or its
//! server does not answer. Each harness works under a fresh random key prefix, so harnesses
//! running at the same time on one server never see each other's data.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};

use async_trait::async_trait;

use super::Harness;
use crate::Store;

/// The variable holding the single server's URL (`redis://127.0.0.1:PORT/0`).
pub const REDIS_URL_VAR: &str = "CKPT_TEST_REDIS_URL";
/// The variable holding the Cluster's URL (`redis+cluster://127.0.0.1:P1,...`).
pub const REDIS_CLUSTER_URL_VAR: &str = "CKPT_TEST_REDIS_CLUSTER_URL";

const HOW_TO_START: &str = "start the servers with `eval \"$(scripts/servers.sh start)\"` \
                            or run scripts/test-all.sh";

/// The URL in `var`, panicking with how to start the servers when it is unset.
pub fn test_server_url(var: &str) -> String {
    match std::env::var(var) {
        Ok(url) if !url.trim().is_empty() => url,
        _ => panic!("{var} is not set: {HOW_TO_START}"),
    }
}

/// `base` with a fresh random `prefix=t_...` (and `extra` options, if any) in its query.
pub fn isolated_url(base: &str, extra: &str) -> String {
    let mut h = RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.write_u32(std::process::id());
    let sep = if base.contains('?') { '&' } else { '?' };
    let mut url = format!("{base}{sep}prefix=t_{:016x}", h.finish());
    if !extra.is_empty() {
        url.push('&');
        url.push_str(extra);
    }
    url
}

/// Opens `url`, panicking with an actionable message when the server does not answer.
async fn open_or_panic(url: &str, var: &str) -> Store {
    match Store::open(url).await {
        Ok(store) => store,
        Err(e) => panic!(
            "cannot open the Redis test store {} (from {var}): {e}; {HOW_TO_START}",
            crate::url::redact(url)
        ),
    }
}

/// A [`Harness`] on the single Redis server named by `CKPT_TEST_REDIS_URL`, under a key prefix of
/// its own.
#[derive(Debug, Clone)]
pub struct RedisHarness {
    url: String,
}

impl RedisHarness {
    /// A harness under a fresh prefix. Panics when `CKPT_TEST_REDIS_URL` is unset.
    pub fn new() -> Self {
        Self::with_options("")
    }

    /// A harness under a fresh prefix, with extra URL options (`ttl=3s`, ...).
    pub fn with_options(extra: &str) -> Self {
        RedisHarness {
            url: isolated_url(&test_server_url(REDIS_URL_VAR), extra),
        }
    }

    /// The store URL every [`Harness::open`] opens (it may hold a password: do not print it).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Default for RedisHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Harness for RedisHarness {
    async fn open(&self) -> Store {
        open_or_panic(&self.url, REDIS_URL_VAR).await
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn allows_concurrent_opens(&self) -> bool {
        true
    }
}

/// A [`Harness`] on the Redis Cluster named by `CKPT_TEST_REDIS_CLUSTER_URL`, under a key prefix
/// of its own.
#[derive(Debug, Clone)]
pub struct RedisClusterHarness {
    url: String,
}

impl RedisClusterHarness {
    /// A harness under a fresh prefix. Panics when `CKPT_TEST_REDIS_CLUSTER_URL` is unset.
    pub fn new() -> Self {
        Self::with_options("")
    }

    /// A harness under a fresh prefix, with extra URL options (`shard=execution`, ...).
    pub fn with_options(extra: &str) -> Self {
        RedisClusterHarness {
            url: isolated_url(&test_server_url(REDIS_CLUSTER_URL_VAR), extra),
        }
    }

    /// The store URL every [`Harness::open`] opens (it may hold a password: do not print it).
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Default for RedisClusterHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl Harness for RedisClusterHarness {
    async fn open(&self) -> Store {
        open_or_panic(&self.url, REDIS_CLUSTER_URL_VAR).await
    }

    fn name(&self) -> &'static str {
        "redis-cluster"
    }

    fn allows_concurrent_opens(&self) -> bool {
        true
    }
}
