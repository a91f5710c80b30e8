//! The conformance suite (`ckpt::testing`) on every backend of this crate.

#![cfg(feature = "testing")]

ckpt::conformance_tests!(memory, ckpt::testing::MemoryHarness::new());

#[cfg(feature = "sled")]
ckpt::conformance_tests!(sled, ckpt::testing::SledHarness::new());

#[cfg(feature = "redis")]
ckpt::conformance_tests!(redis, ckpt::testing::RedisHarness::new());

#[cfg(feature = "redis")]
ckpt::conformance_tests!(redis_cluster, ckpt::testing::RedisClusterHarness::new());
