//! # ckpt: durable, time-travelling execution state
//!
//! A runtime (an LLM agent, a workflow) saves a [`Checkpoint`] after every step of an execution.
//! ckpt keeps every save as an immutable, checksummed event in a per-execution append-only log,
//! stores each long piece of state once (content-addressed with blake3, compressed with zstd),
//! records only what changed since the previous save, and derives load, list, latest, history,
//! delete, clear and fork by folding that log.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), ckpt::Error> {
//! use ckpt::{Checkpoint, Store};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct Chat { messages: Vec<String>, step: u32 }
//!
//! let store = Store::open("memory://").await?; // or "sled://./ckpt-data", or a path
//! let state = Chat { messages: vec!["hello".into()], step: 1 };
//! let saved = store.save(Checkpoint::new("exec-1", "plan", &state)?.with_metadata("step", 1)).await?;
//! let back: Chat = store.load(&saved.id).await?.state()?;
//! assert_eq!(back.messages, ["hello"]);
//! # Ok(()) }
//! ```
//!
//! Layout: [`hash`] (blob addresses and hex, depending on nothing), [`codec`] (values, blobs,
//! deltas, frames; knows no backend and no cipher), [`crypto`] (keys, and the codec's sealing
//! stage for encrypted stores), [`checkpoint`] (the model), [`store`] (the projections),
//! [`backend`] (the primitive trait and one module per backend), `testing` (the conformance
//! suite every backend runs, behind the `testing` feature).
#![warn(missing_docs)]

pub mod backend;
pub mod bundle;
pub mod checkpoint;
pub mod codec;
pub mod crypto;
pub mod diff;
pub mod error;
#[doc(hidden)]
pub mod fuzzing;
#[cfg(feature = "graph")]
pub mod graph;
pub mod hash;
#[cfg(feature = "graph")]
pub mod prebuilt;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod url;

pub use checkpoint::{Checkpoint, CheckpointHeader, CheckpointId, Metadata, Write};
pub use error::{BoxError, Error, Result};
pub use store::{
    CheckpointStore, CompactReport, ExecutionPlan, ExecutionSummary, GcReport, HistoryQuery,
    MetricsSnapshot, PruneReport, ReadStats, ReindexReport, RekeyReport, RetentionPolicy,
    RetentionTask, SearchHit, SearchMethod, SearchPage, SearchQuery, StatsReport, Store,
    StoreBuilder, Watch, WriteStats,
};
