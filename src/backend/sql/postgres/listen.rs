//! Watching ([`Notify`]): one `LISTEN` connection per backend, started on first use, whose task
//! forwards each notified log name to the waiters.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use sqlx::postgres::PgListener;
use tokio::sync::{broadcast, watch};
use tokio::time::Instant;

use super::PostgresBackend;
use crate::backend::{Backend, Notify};
use crate::error::Result;

/// The notification fan-out: the listener task sends each notified log name (an empty name when
/// notifications may have been lost, which wakes every waiter).
pub(super) struct Listener {
    names: broadcast::Sender<Arc<str>>,
    connected: Arc<AtomicBool>,
}

/// The listener task: forwards each notified log name until the backend is dropped. sqlx
/// reconnects (and listens again) after a lost connection; notifications sent meanwhile are lost,
/// so every waiter is woken to recheck.
pub(super) async fn listen(
    mut listener: PgListener,
    names: broadcast::Sender<Arc<str>>,
    connected: Arc<AtomicBool>,
    mut stop: watch::Receiver<()>,
) {
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            received = listener.try_recv() => match received {
                Ok(Some(n)) => {
                    connected.store(true, Ordering::Relaxed);
                    let _ = names.send(Arc::from(n.payload()));
                }
                Ok(None) => {
                    connected.store(false, Ordering::Relaxed);
                    let _ = names.send(Arc::from(""));
                }
                Err(_) => {
                    connected.store(false, Ordering::Relaxed);
                    let _ = names.send(Arc::from(""));
                    tokio::select! {
                        _ = stop.changed() => return,
                        _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                    }
                }
            },
        }
    }
}

#[async_trait]
impl Notify for PostgresBackend {
    /// Wakes when the log is notified (by any process), or after `timeout`.
    async fn wait_for_append(&self, log: &str, next_seq: u64, timeout: Duration) -> Result<()> {
        let deadline = Instant::now() + timeout;
        let Some(listener) = self.listener(timeout).await else {
            tokio::time::sleep_until(deadline).await;
            return Ok(());
        };
        // Subscribe before looking, so an append between the caller's look and ours still wakes.
        let mut names = listener.names.subscribe();
        if !listener.connected.load(Ordering::Relaxed) {
            tokio::time::sleep_until(deadline).await;
            return Ok(());
        }
        if self.next_seq(log).await? > next_seq {
            return Ok(());
        }
        loop {
            match tokio::time::timeout_at(deadline, names.recv()).await {
                Err(_) => return Ok(()),
                Ok(Ok(name)) if name.is_empty() || &*name == log => return Ok(()),
                Ok(Ok(_)) => {}
                Ok(Err(broadcast::error::RecvError::Lagged(_))) => return Ok(()),
                Ok(Err(broadcast::error::RecvError::Closed)) => {
                    tokio::time::sleep_until(deadline).await;
                    return Ok(());
                }
            }
        }
    }
}

impl PostgresBackend {
    /// The notification fan-out, started on first use; `None` when the listener cannot connect.
    pub(super) async fn listener(&self, timeout: Duration) -> Option<&Listener> {
        let start = async {
            let mut listener = PgListener::connect_with(self.db.pool()).await?;
            listener.listen(&self.channel()).await?;
            let (names, _) = broadcast::channel(1024);
            let connected = Arc::new(AtomicBool::new(true));
            tokio::spawn(listen(
                listener,
                names.clone(),
                connected.clone(),
                self.stop.subscribe(),
            ));
            Ok::<_, sqlx::Error>(Listener { names, connected })
        };
        let init = self.listener.get_or_try_init(|| async {
            match tokio::time::timeout(timeout, start).await {
                Ok(result) => result.map_err(|_| ()),
                Err(_) => Err(()),
            }
        });
        init.await.ok()
    }
}
