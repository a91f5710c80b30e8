//! [`Watch`]: a live stream of one execution's new checkpoints.
//!
//! Saves made through the same [`Store`] wake the watcher at once (an in-process broadcast);
//! saves by other writers of the backend are found by checking the log's tail every poll
//! interval. Either way the log is read, so what the stream yields is what is stored.

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_util::stream::{BoxStream, Stream, StreamExt};
use futures_util::FutureExt;
use tokio::sync::broadcast::{self, error::RecvError};

use super::Store;
use crate::checkpoint::Checkpoint;
use crate::error::Result;

/// The checkpoints saved to one execution after [`Store::watch`] was called, in version order.
/// A checkpoint deleted before the watcher reads it is skipped. Errors are yielded and the stream
/// goes on.
pub struct Watch {
    inner: BoxStream<'static, Result<Checkpoint>>,
}

struct State {
    store: Store,
    execution: Arc<str>,
    rx: broadcast::Receiver<(Arc<str>, u64)>,
    /// The first version not yet yielded; found on the first poll.
    cursor: Option<u64>,
    /// The log tail the store knew of when watching began, if it had looked at this execution.
    known_tail: Option<u64>,
    /// When `watch()` was called (µs since the Unix epoch): with no known tail, the first poll
    /// starts at the first save made since.
    called_us: u64,
    pending: VecDeque<Checkpoint>,
    poll: Duration,
}

impl Watch {
    pub(crate) fn new(store: Store, execution: &str, poll: Duration) -> Self {
        // Subscribe now, so in-process saves made before the first poll are not missed.
        let state = State {
            rx: store.subscribe(),
            known_tail: tail_now(&store, execution),
            called_us: super::now_micros(),
            store,
            execution: execution.into(),
            cursor: None,
            pending: VecDeque::new(),
            poll,
        };
        let inner = futures_util::stream::unfold(state, |mut s| async move {
            let item = s.next_item().await;
            Some((item, s))
        })
        .boxed();
        Watch { inner }
    }
}

/// The execution's tail as of now, without waiting: the tail this store last saw (so its own
/// saves in flight are not skipped), else the backend's if it answers at once (memory and sled
/// do), else unknown (found at the first poll).
fn tail_now(store: &Store, execution: &str) -> Option<u64> {
    store.known_tail(execution).or_else(|| {
        store
            .backend()
            .next_seq(execution)
            .now_or_never()
            .and_then(Result::ok)
    })
}

impl State {
    async fn next_item(&mut self) -> Result<Checkpoint> {
        loop {
            if let Some(cp) = self.pending.pop_front() {
                // Read earlier (its read runs in its own task, maybe while the consumer was
                // away): one deleted since, by this store, is skipped.
                if self.store.known_gone(&self.execution, cp.version) {
                    continue;
                }
                return Ok(cp);
            }
            let cursor = match self.cursor {
                Some(c) => c,
                None => {
                    let c = self.start_cursor().await?;
                    self.cursor = Some(c);
                    c
                }
            };
            let (found, next) = self.saved_since(cursor).await?;
            self.cursor = Some(next);
            if !found.is_empty() {
                self.pending.extend(found);
                continue;
            }
            self.wait(next).await;
        }
    }

    /// Where watching began: the tail the store knew of at [`Store::watch`] (so saves in flight
    /// then, or made by other writers before the first poll, are not missed), else (a network
    /// backend, an execution this store had not looked at) the first save stamped at or after
    /// the call, by the writers' clocks; earlier if this store saved in between.
    async fn start_cursor(&mut self) -> Result<u64> {
        let mut cursor = match self.known_tail {
            Some(tail) => tail,
            None => {
                let (store, exec, since) =
                    (self.store.clone(), self.execution.clone(), self.called_us);
                detached(&self.store, async move {
                    store.first_save_since(&exec, since).await
                })
                .await?
            }
        };
        while let Ok((exec, version)) = self.rx.try_recv() {
            if exec == self.execution {
                cursor = cursor.min(version);
            }
        }
        Ok(cursor)
    }

    /// The live checkpoints saved at or after `cursor`, and the log's next sequence number.
    async fn saved_since(&self, cursor: u64) -> Result<(Vec<Checkpoint>, u64)> {
        let (store, exec) = (self.store.clone(), self.execution.clone());
        detached(&self.store, async move {
            store.saved_since(&exec, cursor).await
        })
        .await
    }

    /// Waits for a save to the execution at or after `next`: one made through this process's
    /// stores (broadcast), or one the backend reports (a notification, or the poll interval).
    async fn wait(&mut self, next: u64) {
        let backend = self.store.backend().clone();
        let execution = self.execution.clone();
        let poll = self.poll;
        let deadline = async move {
            let waited = match backend.capabilities().notify {
                Some(notify) => notify.wait_for_append(&execution, next, poll).await,
                // No notifications: poll.
                None => {
                    tokio::time::sleep(poll).await;
                    Ok(())
                }
            };
            if waited.is_err() {
                // A failing backend must not turn the watch into a busy loop.
                tokio::time::sleep(poll).await;
            }
        };
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                msg = self.rx.recv() => match msg {
                    Ok((exec, _)) if exec != self.execution => continue,
                    Ok(_) | Err(RecvError::Lagged(_)) => return,
                    Err(RecvError::Closed) => {
                        (&mut deadline).await;
                        return;
                    }
                },
            }
        }
    }
}

/// Runs a read of the store in its own task. A watch's pending read lives inside the stream, so
/// it only advances while the stream is polled; a read that holds the execution's lock (as every
/// read of the projection does) must not be parked there while the consumer does something else
/// (or saves to the same execution: that would wait for the lock forever). In its own task the
/// read runs to its end and lets go of the lock whether or not the stream is polled.
async fn detached<T: Send + 'static>(
    store: &Store,
    read: impl std::future::Future<Output = Result<T>> + Send + 'static,
) -> Result<T> {
    tokio::spawn(read)
        .await
        .map_err(|e| crate::Error::Backend {
            backend: store.backend().name(),
            context: "a watch's read of the store".into(),
            source: Box::new(e),
        })?
}

impl Stream for Watch {
    type Item = Result<Checkpoint>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.inner.as_mut().poll_next(cx)
    }
}
