//! The conformance suite: every behaviour a [`Store`] promises, as one scenario per function, run
//! against any storage a [`Harness`] can open.
//!
//! A backend author implements [`Harness`] (open a store on *the same* storage every time it is
//! called, so that a second call is a "reopen") and adds one line to a test file:
//!
//! ```ignore
//! // tests/conformance.rs of a crate with a backend `MyBackend`
//! struct MyHarness { backend: std::sync::Arc<MyBackend> }
//!
//! #[async_trait::async_trait]
//! impl ckpt::testing::Harness for MyHarness {
//!     async fn open(&self) -> ckpt::Store { ckpt::Store::with_backend(self.backend.clone()) }
//!     fn name(&self) -> &'static str { "mine" }
//! }
//!
//! ckpt::conformance_tests!(mine, MyHarness { backend: std::sync::Arc::new(MyBackend::new()) });
//! ```
//!
//! [`conformance_tests!`](crate::conformance_tests) expands to a module holding one
//! `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]` per scenario, each on a fresh
//! harness, so the calling crate needs `tokio` (features `macros`, `rt-multi-thread`) among its
//! dev-dependencies. Each scenario can also be called on its own (`ckpt::testing::fork_copies_the_source(&h).await`);
//! a scenario panics with a message naming the harness and what differed.
//!
//! This crate runs the suite on [`MemoryHarness`] and (feature `sled`) [`SledHarness`] in
//! `tests/conformance.rs`.

mod elsewhere;
mod faulty;
mod helpers;
#[cfg(feature = "redis")]
mod redis;
pub mod rng;
mod scenarios;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
mod sql;

use std::sync::Arc;

use async_trait::async_trait;

use crate::backend::memory::MemoryBackend;
use crate::Store;

pub use elsewhere::Elsewhere;
pub use faulty::{
    faulty_store, is_injected, Call, Fault, FaultControl, Faulty, FaultyHarness, Hold, Injected,
};
#[cfg(feature = "redis")]
pub use redis::*;
pub use scenarios::*;
#[cfg(any(feature = "sqlite", feature = "postgres"))]
pub use sql::*;

/// Storage the conformance suite runs on.
///
/// Every call to [`Harness::open`] must open the *same* underlying storage, as a process restart
/// would: a store opened later must see everything saved through stores opened earlier. Scenarios
/// drop every store (and every clone of it) before calling `open` again, because some storage
/// engines (sled) lock their directory; a harness whose storage can be open twice at the same time
/// says so with [`Harness::allows_concurrent_opens`].
#[async_trait]
pub trait Harness: Send + Sync + 'static {
    /// Opens a [`Store`] on this harness's storage; every call opens the same storage (a
    /// "reopen"). Panics when the storage cannot be opened.
    async fn open(&self) -> Store;

    /// A short name for messages (`memory`, `sled`, ...).
    fn name(&self) -> &'static str;

    /// Whether two stores returned by [`Harness::open`] may be alive at the same time (true for
    /// in-memory storage, false for sled, which locks its directory). When false, the scenarios
    /// that need two live stores build the second one with
    /// `Store::with_backend(first.backend().clone())`.
    fn allows_concurrent_opens(&self) -> bool {
        false
    }
}

/// A [`Harness`] on one shared [`MemoryBackend`]: every [`Harness::open`] is a new
/// `Store::with_backend` on the same `Arc`, so nothing cached in a store survives a reopen but
/// everything stored does.
#[derive(Debug, Clone, Default)]
pub struct MemoryHarness {
    backend: Arc<MemoryBackend>,
}

impl MemoryHarness {
    /// A harness on a new, empty memory backend.
    pub fn new() -> Self {
        MemoryHarness {
            backend: Arc::new(MemoryBackend::new()),
        }
    }

    /// The backend every store of this harness shares.
    pub fn backend(&self) -> &Arc<MemoryBackend> {
        &self.backend
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    async fn open(&self) -> Store {
        Store::with_backend(self.backend.clone())
    }

    fn name(&self) -> &'static str {
        "memory"
    }

    fn allows_concurrent_opens(&self) -> bool {
        true
    }
}

/// A [`Harness`] on a sled database in a temporary directory, removed when the harness is dropped.
/// Every [`Harness::open`] is a `Store::open` of that directory (durable saves, `sync=true`).
#[cfg(feature = "sled")]
#[derive(Debug)]
pub struct SledHarness {
    dir: tempfile::TempDir,
}

#[cfg(feature = "sled")]
impl SledHarness {
    /// A harness on a new temporary directory. Panics when none can be created.
    pub fn new() -> Self {
        let dir = match tempfile::Builder::new()
            .prefix("ckpt-conformance-")
            .tempdir()
        {
            Ok(dir) => dir,
            Err(e) => panic!("sled harness: cannot create a temporary directory: {e}"),
        };
        SledHarness { dir }
    }

    /// The database directory.
    pub fn path(&self) -> &std::path::Path {
        self.dir.path()
    }
}

#[cfg(feature = "sled")]
impl Default for SledHarness {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(feature = "sled")]
#[async_trait]
impl Harness for SledHarness {
    async fn open(&self) -> Store {
        // sled releases its directory lock when the last handle is dropped; a reopen right after a
        // drop may briefly find it still held by sled's background flusher, so retry for a while.
        let path = self.dir.path().to_string_lossy().into_owned();
        let mut last = None;
        for _ in 0..100 {
            match Store::open(&path).await {
                Ok(store) => return store,
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
        match last {
            Some(e) => panic!("sled harness: cannot open {path}: {e}"),
            None => unreachable!("the loop runs at least once"),
        }
    }

    fn name(&self) -> &'static str {
        "sled"
    }
}

/// A [`Harness`] that runs another harness's storage encrypted: every store it opens seals
/// with one random key, so the whole suite runs through encryption at rest.
pub struct Encrypted<H> {
    inner: H,
    name: &'static str,
    key: crate::crypto::Key,
}

impl<H: Harness> Encrypted<H> {
    /// `inner`'s storage, encrypted; `name` names it in messages (e.g. `sled+key`).
    pub fn new(name: &'static str, inner: H) -> Self {
        Encrypted {
            inner,
            name,
            key: crate::crypto::Key::generate(),
        }
    }

    /// The key every store of this harness seals with.
    pub fn key(&self) -> &crate::crypto::Key {
        &self.key
    }
}

#[async_trait]
impl<H: Harness> Harness for Encrypted<H> {
    async fn open(&self) -> Store {
        let plain = self.inner.open().await;
        Store::with_backend_and_keys(plain.backend().clone(), vec![self.key.clone()])
    }

    fn name(&self) -> &'static str {
        self.name
    }

    fn allows_concurrent_opens(&self) -> bool {
        self.inner.allows_concurrent_opens()
    }
}

/// Expands to a module `$name` with one `#[tokio::test(flavor = "multi_thread", worker_threads = 2)]`
/// per conformance scenario, each building a fresh harness with `$harness` (an expression of a
/// type implementing [`Harness`](crate::testing::Harness)) and running the scenario on it.
///
/// ```ignore
/// ckpt::conformance_tests!(memory, ckpt::testing::MemoryHarness::new());
/// ```
///
/// A third argument picks the scenarios a layout runs: `all` (the default) or `shard_execution`
/// (Redis Cluster's `shard=execution`, which refuses batches across executions; see
/// `__conformance_scenario_list!` in `testing/scenarios/mod.rs` for each scenario's kind).
///
/// The calling crate needs `tokio` with the `macros` and `rt-multi-thread` features.
#[macro_export]
macro_rules! conformance_tests {
    ($name:ident, $harness:expr, $layout:ident) => {
        mod $name {
            $crate::__conformance_scenario_list!(
                __conformance_scenarios! { @list ($harness) $layout; }
            );
        }
    };
    ($name:ident, $harness:expr) => {
        $crate::conformance_tests!($name, $harness, all);
    };
}

/// How long one conformance scenario may run before it counts as hung (the slowest take a few
/// seconds; a shared CI machine is slower).
pub const SCENARIO_LIMIT: std::time::Duration = std::time::Duration::from_secs(300);

/// Implementation detail of [`conformance_tests!`](crate::conformance_tests): one test per
/// scenario, from the list (`@list ($harness) layout; kind name, ...`, filtered by the layout) or
/// from names given (`$harness; name, ...`).
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_scenarios {
    (@list ($harness:expr) $layout:ident; $($kind:ident $scenario:ident,)*) => {
        $(
            $crate::__conformance_scenarios!(@one ($harness) $layout $kind $scenario);
        )*
    };
    (@one ($harness:expr) all $kind:ident $scenario:ident) => {
        $crate::__conformance_scenarios!($harness; $scenario);
    };
    (@one ($harness:expr) shard_execution any $scenario:ident) => {
        $crate::__conformance_scenarios!($harness; $scenario);
    };
    (@one ($harness:expr) shard_execution $kind:ident $scenario:ident) => {};
    ($harness:expr; $($scenario:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $scenario() {
                let harness = $harness;
                // A scenario that hangs fails, naming itself, instead of stalling the suite.
                let limit = $crate::testing::SCENARIO_LIMIT;
                if tokio::time::timeout(limit, $crate::testing::$scenario(&harness))
                    .await
                    .is_err()
                {
                    panic!(
                        "scenario {} did not finish within {} s: it hangs",
                        stringify!($scenario),
                        limit.as_secs()
                    );
                }
            }
        )*
    };
}
