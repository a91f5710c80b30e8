//! Where statements run: the connection opening made (kept), or one from the pool.
//!
//! A PostgreSQL connection costs a server process and its catalog caches: on a loopback server
//! making one takes longer than every statement of a reopen together. So the connection the
//! open makes first (to check that the server answers, then the schema) is not closed but kept
//! for the statements that follow, and a statement uses the pool only while the kept connection
//! is busy with another. Sequential work (an open, then its first reads; one writer's saves)
//! thus runs on one connection with its prepared statements, instead of the pool opening a
//! second one whenever the previous statement's connection is still on its way back to it (sqlx
//! returns a connection from a spawned task, which the next statement of the same task usually
//! overtakes).
//!
//! The kept connection counts toward `max_connections` (the pool holds one fewer; with fewer than
//! three there is no kept connection). It is given up, and the pool used from then on, when a
//! statement on it fails or is cancelled (its state is unknown then) or when it has lived
//! `max_lifetime`.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use futures_util::stream::{self, BoxStream};
use futures_util::TryStreamExt;
use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgConnection, PgPool, PgQueryResult, PgRow, PgStatement, PgTypeInfo};
use sqlx::{Describe, Either, Execute, Executor, Postgres};

/// The kept connection and when it was made.
pub(super) struct Kept {
    conn: PgConnection,
    born: Instant,
}

/// The pool and the kept connection; an [`Executor`] (through `&Connections`) that runs each
/// statement on the kept connection when it is free, else on a pooled one.
#[derive(Clone)]
pub(super) struct Connections {
    pool: PgPool,
    kept: Arc<Mutex<Option<Kept>>>,
    max_lifetime: Duration,
}

impl fmt::Debug for Connections {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connections").finish_non_exhaustive()
    }
}

/// A connection taken for one statement.
pub(super) enum Taken {
    Kept(Kept),
    Pooled(PoolConnection<Postgres>),
}

impl Taken {
    pub(super) fn conn(&mut self) -> &mut PgConnection {
        match self {
            Taken::Kept(k) => &mut k.conn,
            Taken::Pooled(p) => p,
        }
    }
}

impl Connections {
    pub(super) fn new(pool: PgPool, max_lifetime: Duration) -> Self {
        Connections {
            pool,
            kept: Arc::new(Mutex::new(None)),
            max_lifetime,
        }
    }

    /// The pool, for what needs a connection of its own (transactions, `LISTEN`, maintenance).
    pub(super) fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// Keeps `conn` (made at open) for the statements that follow.
    pub(super) fn keep(&self, conn: PgConnection) {
        if let Ok(mut slot) = self.kept.lock() {
            *slot = Some(Kept {
                conn,
                born: Instant::now(),
            });
        }
    }

    /// The kept connection if it is free and young enough, else one from the pool.
    pub(super) async fn take(&self) -> Result<Taken, sqlx::Error> {
        let kept = self.kept.lock().ok().and_then(|mut slot| slot.take());
        match kept {
            Some(k) if k.born.elapsed() < self.max_lifetime => Ok(Taken::Kept(k)),
            // Too old: dropped (closed) like the pool's own.
            _ => Ok(Taken::Pooled(self.pool.acquire().await?)),
        }
    }

    /// Puts a kept connection back after a statement ran on it to its end (it succeeded, or
    /// the server refused it: a conflict, a constraint); after any other failure its state is
    /// unknown and it is dropped. A pooled connection goes back to the pool on drop.
    pub(super) fn give_back<T>(&self, taken: Taken, result: &Result<T, sqlx::Error>) {
        if let (Taken::Kept(k), true) = (taken, still_usable(result)) {
            if let Ok(mut slot) = self.kept.lock() {
                if slot.is_none() {
                    *slot = Some(k);
                }
            }
        }
    }
}

/// Whether a connection is in a known state after a statement that ended with `result`: the
/// server answered (with rows, or with an error other than the connection's own end).
fn still_usable<T>(result: &Result<T, sqlx::Error>) -> bool {
    match result {
        Ok(_) => true,
        Err(sqlx::Error::Database(e)) => !e
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
        Err(_) => false,
    }
}

/// Statements run through `&Connections` like through `&PgPool` (results are collected before
/// the connection is given back: every caller here reads them whole anyway).
impl<'p> Executor<'p> for &'_ Connections {
    type Database = Postgres;

    fn fetch_many<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxStream<'e, Result<Either<PgQueryResult, PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let connections = self.clone();
        let rows = async move {
            let mut taken = connections.take().await?;
            let rows = taken.conn().fetch_many(query).try_collect::<Vec<_>>().await;
            connections.give_back(taken, &rows);
            rows
        };
        Box::pin(
            stream::once(rows)
                .map_ok(|rows| stream::iter(rows.into_iter().map(Ok)))
                .try_flatten(),
        )
    }

    fn fetch_optional<'e, 'q: 'e, E>(
        self,
        query: E,
    ) -> BoxFuture<'e, Result<Option<PgRow>, sqlx::Error>>
    where
        E: 'q + Execute<'q, Postgres>,
    {
        let connections = self.clone();
        Box::pin(async move {
            let mut taken = connections.take().await?;
            let row = taken.conn().fetch_optional(query).await;
            connections.give_back(taken, &row);
            row
        })
    }

    fn prepare_with<'e, 'q: 'e>(
        self,
        sql: &'q str,
        parameters: &'e [PgTypeInfo],
    ) -> BoxFuture<'e, Result<PgStatement<'q>, sqlx::Error>> {
        let connections = self.clone();
        Box::pin(async move {
            let mut taken = connections.take().await?;
            let statement = taken.conn().prepare_with(sql, parameters).await;
            connections.give_back(taken, &statement);
            statement
        })
    }

    #[doc(hidden)]
    fn describe<'e, 'q: 'e>(
        self,
        sql: &'q str,
    ) -> BoxFuture<'e, Result<Describe<Postgres>, sqlx::Error>> {
        let connections = self.clone();
        Box::pin(async move {
            let mut taken = connections.take().await?;
            let described = taken.conn().describe(sql).await;
            connections.give_back(taken, &described);
            described
        })
    }
}
