//! What the backends (and the store) share about waiting and retrying: exponential backoff with
//! jitter, the "retry transient failures until the deadline" loop, and the durations users write
//! in URLs and on the command line.
//!
//! Each caller keeps its own numbers (a `Backoff` constant), because they answer different
//! questions: a SQL server restarting, a Redis failover, two writers of one log racing in the
//! store. The shape is the same everywhere: retry number `n` waits between half and all of
//! `first * 2^n` (capped at `max`), chosen at random, so that writers retrying together spread
//! out instead of colliding again.

use std::hash::{BuildHasher, Hasher};
use std::time::Duration;

use tokio::time::Instant;

/// Exponential backoff with jitter: the wait before retry number `attempt + 1` is between half
/// and all of `first * 2^attempt`, capped at `max`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Backoff {
    /// The ceiling of the first wait.
    pub(crate) first: Duration,
    /// The largest ceiling.
    pub(crate) max: Duration,
}

/// The SQL backends' retries of transient failures: 20 ms doubling up to 1 s.
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) const SQL: Backoff = Backoff {
    first: Duration::from_millis(20),
    max: Duration::from_secs(1),
};

/// The Redis backend's retries of transient failures: 10 ms doubling up to 1 s.
#[cfg_attr(not(feature = "redis"), allow(dead_code))]
pub(crate) const REDIS: Backoff = Backoff {
    first: Duration::from_millis(10),
    max: Duration::from_secs(1),
};

/// The store's retries of a save that lost a race for a log: 100 µs doubling up to 25 ms (short,
/// because the winner has already written and the loser only needs to read the new tail).
pub(crate) const STORE_CONFLICT: Backoff = Backoff {
    first: Duration::from_micros(100),
    max: Duration::from_millis(25),
};

impl Backoff {
    /// How long to wait before retry number `attempt + 1` (`attempt` counts from 0).
    pub(crate) fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .first
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.max);
        let half = ceiling / 2;
        let nanos = u64::try_from(half.as_nanos()).unwrap_or(u64::MAX);
        half + Duration::from_nanos(random_u64() % nanos.saturating_add(1))
    }

    /// Sleeps [`Backoff::delay`]`(attempt)`, but never past `deadline`.
    #[cfg_attr(not(feature = "redis"), allow(dead_code))]
    pub(crate) async fn pause_until(&self, attempt: u32, deadline: impl Into<Instant>) {
        let left = deadline.into().saturating_duration_since(Instant::now());
        tokio::time::sleep(self.delay(attempt).min(left)).await;
    }

    /// Sleeps [`Backoff::delay`]`(attempt)`.
    pub(crate) async fn pause(&self, attempt: u32) {
        tokio::time::sleep(self.delay(attempt)).await;
    }
}

tokio::task_local! {
    /// The transient retries made so far inside the backend call in progress: set by
    /// [`counting_retries`] around each call the store makes, bumped by [`note_retry`].
    static RETRIES: std::cell::Cell<u32>;
}

/// Notes one transient retry inside the backend call in progress (a no-op outside one): the
/// store records the count on the call's span (`retries`) and in its metrics. Every retry loop
/// of a backend calls it once per retry, after its pause.
pub(crate) fn note_retry() {
    let _ = RETRIES.try_with(|n| n.set(n.get().saturating_add(1)));
}

/// Runs `call`, a backend call, and returns its output with the transient retries noted
/// inside it ([`note_retry`]). A retry made on another task or thread than the call's (the
/// SQLite writer thread) is not seen.
pub(crate) async fn counting_retries<T>(call: impl std::future::Future<Output = T>) -> (T, u32) {
    RETRIES
        .scope(std::cell::Cell::new(0), async {
            let out = call.await;
            (out, RETRIES.try_with(std::cell::Cell::get).unwrap_or(0))
        })
        .await
}

/// Why [`retrying`] gave up.
#[derive(Debug)]
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) enum GaveUp<E> {
    /// The operation failed permanently, or transiently with no time left for another pause:
    /// the last error.
    Failed(E),
    /// The deadline passed while the operation ran.
    TimedOut,
}

/// Runs `op` until it succeeds, fails with an error `is_transient` rejects, or the deadline
/// comes: after a transient failure it waits `backoff` and tries again, unless that wait would
/// reach the deadline (then the transient error is the answer: it says more than a timeout).
#[cfg_attr(not(any(feature = "sqlite", feature = "postgres")), allow(dead_code))]
pub(crate) async fn retrying<T, E, F, Fut>(
    deadline: Instant,
    backoff: Backoff,
    mut op: F,
    is_transient: impl Fn(&E) -> bool,
) -> std::result::Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = std::result::Result<T, E>>,
{
    let mut attempt = 0;
    loop {
        match tokio::time::timeout_at(deadline, op()).await {
            Ok(Ok(v)) => return Ok(v),
            Ok(Err(e)) if is_transient(&e) => {
                let delay = backoff.delay(attempt);
                if Instant::now() + delay >= deadline {
                    return Err(GaveUp::Failed(e));
                }
                tokio::time::sleep(delay).await;
                note_retry();
                attempt += 1;
            }
            Ok(Err(e)) => return Err(GaveUp::Failed(e)),
            Err(_) => return Err(GaveUp::TimedOut),
        }
    }
}

/// A cheap random number from the standard library's per-process random hasher keys (not
/// cryptographic: it only spreads retries).
pub(crate) fn random_u64() -> u64 {
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// Parses a duration as the URL options (`timeout=30s`, `ttl=24h`) and the command line
/// (`ckpt prune --older-than 7d`) write it: a whole number and a unit, `ms`, `s`, `m`, `h` or
/// `d` (`250ms`, `30s`, `15m`, `12h`, `7d`); surrounding spaces are ignored. The error says what
/// was wrong and shows examples.
///
/// ```
/// use std::time::Duration;
/// use ckpt::backend::retry::parse_duration;
/// assert_eq!(parse_duration("15m"), Ok(Duration::from_secs(900)));
/// assert!(parse_duration("15").is_err()); // a unit is required
/// ```
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let text = text.trim();
    let hint = "write e.g. 250ms, 30s, 15m, 12h or 7d";
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| format!("{text:?} has no unit: {hint}"))?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?} does not start with a number: {hint}"))?;
    let millis_per_unit: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        other => {
            return Err(format!(
                "unknown unit {other:?} in {text:?}: use ms, s, m, h or d ({hint})"
            ))
        }
    };
    n.checked_mul(millis_per_unit)
        .map(Duration::from_millis)
        .ok_or_else(|| format!("{text:?} is too long a duration"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(" 15m "), Ok(Duration::from_secs(900)));
        assert_eq!(parse_duration("12h"), Ok(Duration::from_secs(43_200)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(604_800)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        assert!(parse_duration("15").is_err());
        assert!(parse_duration("15w").is_err());
        assert!(parse_duration("s").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999d").is_err());
    }

    #[test]
    fn backoff_keeps_each_callers_numbers() {
        for attempt in 0..40 {
            let d = SQL.delay(attempt);
            assert!(d <= Duration::from_millis(1_000), "{d:?}");
            assert!(REDIS.delay(attempt) <= Duration::from_secs(1));
            assert!(STORE_CONFLICT.delay(attempt) <= Duration::from_millis(25));
        }
        // The first wait is between half and all of `first`.
        for _ in 0..100 {
            let d = SQL.delay(0);
            assert!(
                d >= Duration::from_millis(10) && d <= Duration::from_millis(20),
                "{d:?}"
            );
        }
    }
}
