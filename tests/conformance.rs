//! The conformance suite (`ckpt::testing`) on every backend of this crate.

#![cfg(feature = "testing")]

ckpt::conformance_tests!(memory, ckpt::testing::MemoryHarness::new());

#[cfg(feature = "sled")]
ckpt::conformance_tests!(sled, ckpt::testing::SledHarness::new());

#[cfg(feature = "sqlite")]
ckpt::conformance_tests!(sqlite, ckpt::testing::SqliteHarness::new());

#[cfg(feature = "postgres")]
ckpt::conformance_tests!(postgres, ckpt::testing::PostgresHarness::new());
