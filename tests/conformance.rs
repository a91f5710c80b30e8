//! The conformance suite (`ckpt::testing`) on every backend of this crate.

#![cfg(feature = "testing")]

ckpt::conformance_tests!(memory, ckpt::testing::MemoryHarness::new());

#[cfg(feature = "sled")]
ckpt::conformance_tests!(sled, ckpt::testing::SledHarness::new());

#[cfg(feature = "sqlite")]
ckpt::conformance_tests!(sqlite, ckpt::testing::SqliteHarness::new());

#[cfg(feature = "postgres")]
ckpt::conformance_tests!(postgres, ckpt::testing::PostgresHarness::new());

// The same suite through encryption at rest.
ckpt::conformance_tests!(
    memory_encrypted,
    ckpt::testing::Encrypted::new("memory+key", ckpt::testing::MemoryHarness::new())
);

#[cfg(feature = "sled")]
ckpt::conformance_tests!(
    sled_encrypted,
    ckpt::testing::Encrypted::new("sled+key", ckpt::testing::SledHarness::new())
);

#[cfg(feature = "sqlite")]
ckpt::conformance_tests!(
    sqlite_encrypted,
    ckpt::testing::Encrypted::new("sqlite+key", ckpt::testing::SqliteHarness::new())
);

#[cfg(feature = "redis")]
ckpt::conformance_tests!(redis, ckpt::testing::RedisHarness::new());

#[cfg(feature = "redis")]
ckpt::conformance_tests!(redis_cluster, ckpt::testing::RedisClusterHarness::new());

#[cfg(feature = "redis")]
ckpt::conformance_tests!(
    redis_encrypted,
    ckpt::testing::Encrypted::new("redis+key", ckpt::testing::RedisHarness::new())
);

#[cfg(feature = "postgres")]
ckpt::conformance_tests!(
    postgres_encrypted,
    ckpt::testing::Encrypted::new("postgres+key", ckpt::testing::PostgresHarness::new())
);

#[cfg(feature = "redis")]
ckpt::conformance_tests!(
    redis_cluster_encrypted,
    ckpt::testing::Encrypted::new(
        "redis-cluster+key",
        ckpt::testing::RedisClusterHarness::new()
    )
);
