//! Compaction: making what gc removed unreadable from the backend's files.
//!
//! gc removes frames and blobs from the store, but most storage engines keep deleted bytes in
//! their files until the space is reused (sled's segments, PostgreSQL's dead tuples and WAL,
//! Redis's append-only file). [`Store::compact`] asks the backend to rewrite its storage (see
//! [`crate::backend::Maintain::compact`] for the contract), so that clearing an execution and
//! collecting it leaves nothing of its state a reader of the raw files could recover.
//! [`Store::compact_offline`] does the same for a store no process has open (sled, whose
//! compaction rewrites its directory).

use super::trace::op_span;
use super::Store;
use crate::backend::CompactReport;
use crate::error::{Error, Result};
use crate::url::{redact, strip_key_env, StoreUrl};

impl Store {
    /// Rewrites the backend's storage so that nothing deleted can be read from its files, as far
    /// as the server allows; returns what was done and, in [`CompactReport::caveats`], what may
    /// still hold deleted data and how to fix it. Copies outside the backend's files (replicas,
    /// backups, archives) are never covered.
    ///
    /// Run [`Store::gc`] first: compaction only makes unreadable what is already deleted, and
    /// cleared or deleted checkpoints are removed from the store by gc. Pending writes are
    /// flushed first.
    ///
    /// May take long and slow or block writers while it runs (PostgreSQL's `VACUUM FULL` locks
    /// each table it rewrites). sled compacts offline only: there it returns
    /// [`crate::Error::InvalidInput`]; close the store and run `ckpt compact`.
    pub async fn compact(&self) -> Result<CompactReport> {
        let span = op_span!("ckpt.compact", self);
        let op = async {
            let backend = &self.inner.traced;
            backend.flush().await?;
            match backend.capabilities().maintain {
                Some(maintain) => maintain.compact().await,
                None => {
                    let mut report = CompactReport::new(backend.name());
                    report.caveat(format!(
                        "the {} backend cannot compact: deleted data may remain in its storage until \
                         it reuses the space",
                        backend.name()
                    ));
                    Ok(report)
                }
            }
        };
        self.traced(&span, op).await
    }

    /// Compacts the store `url` names while no process has it open, as [`Store::compact`] does
    /// for an open one: for sled, whose compaction rewrites the database directory (see
    /// `ckpt::backend::sled::compact`) and so cannot run on an open store. Never reads what
    /// the store holds, so an encrypted store needs no key (a `key_env` option is ignored).
    ///
    /// Other URLs are refused with [`Error::InvalidInput`]: open the store and call
    /// [`Store::compact`]. So is a sled URL in a build without the `sled` feature.
    pub async fn compact_offline(url: &str) -> Result<CompactReport> {
        let span = if super::trace::wanted(tracing::Level::DEBUG) {
            tracing::debug_span!(
                "ckpt.compact_offline",
                outcome = tracing::field::Empty,
                elapsed_us = tracing::field::Empty
            )
        } else {
            tracing::Span::none()
        };
        let op = async {
            let url = strip_key_env(url);
            match StoreUrl::parse(&url)? {
                StoreUrl::Sled { path, .. } => {
                    tokio::task::spawn_blocking(move || compact_sled(&path))
                        .await
                        .map_err(|e| Error::Backend {
                            backend: "sled",
                            context: "compacting".into(),
                            source: e.into(),
                        })?
                }
                _ => Err(Error::InvalidInput(format!(
                    "offline compaction is for sled stores only; open {} and call Store::compact",
                    redact(&url)
                ))),
            }
        };
        super::trace::in_span(&span, op).await
    }
}

#[cfg(feature = "sled")]
fn compact_sled(path: &std::path::Path) -> Result<CompactReport> {
    crate::backend::sled::compact(path)
}

#[cfg(not(feature = "sled"))]
fn compact_sled(_: &std::path::Path) -> Result<CompactReport> {
    Err(Error::InvalidInput(
        "this build of ckpt has no sled backend".into(),
    ))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::{Checkpoint, Store};

    #[tokio::test]
    async fn memory_has_nothing_to_rewrite() {
        let store = Store::memory();
        store
            .save(Checkpoint::new("e", "n", &json!({ "a": 1 })).unwrap())
            .await
            .unwrap();
        let report = store.compact().await.unwrap();
        assert_eq!(report.backend, "memory");
        assert!(report.caveats.is_empty(), "{report:?}");
        assert_eq!(report.bytes_before, report.bytes_after);
    }

    #[tokio::test]
    async fn offline_compaction_is_for_sled_only() {
        let err = Store::compact_offline("memory://").await.unwrap_err();
        assert!(matches!(err, crate::Error::InvalidInput(_)), "{err}");
    }
}
