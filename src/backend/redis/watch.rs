//! Blocking reads for [`Notify`]: `XREAD BLOCK` on a dedicated connection from a small pool, never
//! on the shared one (which a blocking read would stall).

use std::sync::PoisonError;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use redis::{AsyncConnectionConfig, Value};

use super::{backend_error, is_transient, Conn, RedisBackend, Waiter};
use crate::backend::Notify;
use crate::error::Result;

#[async_trait]
impl Notify for RedisBackend {
    async fn wait_for_append(&self, log: &str, next_seq: u64, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        match self.block_for(log, next_seq, timeout).await {
            Ok(()) => Ok(()),
            // The server is away (restarting, failing over): wait out the rest of the timeout
            // like a poll would, so the watcher neither spins nor fails on a blip.
            Err(e) if is_transient(&e) => {
                tokio::time::sleep(timeout.saturating_sub(started.elapsed())).await;
                Ok(())
            }
            Err(e) => Err(backend_error(
                format!("waiting for log {log:?} on {}", self.url),
                e,
            )),
        }
    }
}

impl RedisBackend {
    /// A dedicated connection for one blocking read: an idle one, or a new one.
    async fn take_waiter(&self) -> redis::RedisResult<Waiter> {
        if let Some(w) = self
            .waiters
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
        {
            return Ok(w);
        }
        match &self.conn {
            Conn::Single { client, .. } => {
                let config = AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(self.settings.timeout))
                    .set_response_timeout(None);
                Ok(Waiter::Single(
                    client
                        .get_multiplexed_async_connection_with_config(&config)
                        .await?,
                ))
            }
            Conn::Cluster { client, .. } => {
                Ok(Waiter::Cluster(client.get_async_connection().await?))
            }
        }
    }

    fn return_waiter(&self, waiter: Waiter) {
        let mut idle = self.waiters.lock().unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.settings.waiters {
            idle.push(waiter);
        }
    }

    /// `XREAD BLOCK` on a dedicated connection; returns when an entry `>= next_seq` exists or
    /// `timeout` has passed.
    async fn block_for(
        &self,
        log: &str,
        next_seq: u64,
        timeout: Duration,
    ) -> redis::RedisResult<()> {
        let mut waiter = self.take_waiter().await?;
        let block_ms = u64::try_from(timeout.as_millis())
            .unwrap_or(u64::MAX)
            .max(1);
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(1)
            .arg("BLOCK")
            .arg(block_ms)
            .arg("STREAMS")
            .arg(self.stream_key(log))
            .arg(format!("{}-1", next_seq.saturating_sub(1)));
        // The server answers at the latest after `block_ms`; the guard only covers a lost answer.
        let guard = timeout + Duration::from_secs(2);
        let result = match &mut waiter {
            Waiter::Single(c) => tokio::time::timeout(guard, cmd.query_async::<Value>(c)).await,
            Waiter::Cluster(c) => tokio::time::timeout(guard, cmd.query_async::<Value>(c)).await,
        };
        match result {
            Ok(Ok(_)) => {
                self.return_waiter(waiter);
                Ok(())
            }
            // Drop the connection: a failed or abandoned blocking read may still be pending on it.
            Ok(Err(e)) => Err(e),
            Err(_) => Ok(()),
        }
    }
}
