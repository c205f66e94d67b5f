//! Connections the store keeps for its append statements (see the crate
//! docs, "Connections").
//!
//! A statement on a sqlx pool costs two extra round trips beside its own:
//! the pool pings an idle connection before handing it out, and pings it
//! again, on a task of its own, when it comes back. So appends run on
//! connections the store keeps between statements instead: taken from the
//! pool once, then detached from it (the pool may open others in their
//! place), and kept for as long as they work. Being outside the pool, they
//! are not closed for age or idleness as pooled ones are.
//!
//! A kept connection is not checked before use. If its statement fails
//! because the connection is gone (the server restarted, an administrator
//! ended the backend, its Tokio runtime ended), the connection is dropped
//! and the statement runs once more on a connection from the pool, which
//! the pool does check. Running an append statement twice is safe:
//! appends are idempotent by event id, and the store answers a repeated one
//! from what the first stored.
//!
//! A statement whose future is dropped before it ends leaves its
//! connection in an unknown state: a kept one is closed, a pooled one goes
//! back to the pool, which checks it; neither is kept.

use std::sync::{Mutex, MutexGuard};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgRow};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgConnection, PgPool, Postgres};

use crate::error::is_connection_error;

/// The pool, and the connections kept beside it (see the [module
/// docs](self)).
#[derive(Debug)]
pub(crate) struct Conns {
    pool: PgPool,
    kept: Mutex<Vec<PgConnection>>,
    /// At most this many idle connections are kept.
    keep: usize,
}

/// A connection in use: kept by the store, or checked out of the pool.
enum Conn {
    Kept(PgConnection),
    Pooled(PoolConnection<Postgres>),
}

impl Conn {
    fn get(&mut self) -> &mut PgConnection {
        match self {
            Conn::Kept(conn) => conn,
            Conn::Pooled(conn) => conn,
        }
    }
}

/// Run `$run` (a query run on `$conn`) on a kept connection of `$conns`,
/// or on one from the pool if none is idle or the kept one turns out to
/// be gone; keep the connection afterwards unless it failed.
macro_rules! on_a_connection {
    ($conns:ident, |$conn:ident| $run:expr) => {{
        if let Some(kept) = $conns.take_kept() {
            let mut conn = Conn::Kept(kept);
            let result = {
                let $conn = conn.get();
                $run.await
            };
            match result {
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "a kept connection is gone, trying a fresh one");
                }
                result => {
                    $conns.put_back(conn);
                    return result;
                }
            }
        }
        let mut conn = Conn::Pooled($conns.pool.acquire().await?);
        let result = {
            let $conn = conn.get();
            $run.await
        };
        match &result {
            Err(e) if is_connection_error(e) => {
                if let Conn::Pooled(mut conn) = conn {
                    conn.close_on_drop();
                }
            }
            _ => $conns.put_back(conn),
        }
        result
    }};
}

impl Conns {
    /// Keep at most a quarter of the pool's connections (at least one).
    pub(crate) fn new(pool: PgPool) -> Self {
        let keep = (pool.options().get_max_connections() as usize / 4).max(1);
        Conns {
            pool,
            kept: Mutex::new(Vec::new()),
            keep,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Vec<PgConnection>> {
        self.kept.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Run the query `query` makes, at most one row back, on a kept
    /// connection, or on one from the pool if none is idle or the kept one
    /// turns out to be gone.
    pub(crate) async fn fetch_optional<'q, O>(
        &self,
        query: impl Fn() -> QueryAs<'q, Postgres, O, PgArguments>,
    ) -> Result<Option<O>, sqlx::Error>
    where
        O: Send + Unpin + for<'r> FromRow<'r, PgRow>,
    {
        on_a_connection!(self, |conn| query().fetch_optional(conn))
    }

    /// [`fetch_optional`](Self::fetch_optional) for any number of rows.
    pub(crate) async fn fetch_all<'q, O>(
        &self,
        query: impl Fn() -> QueryAs<'q, Postgres, O, PgArguments>,
    ) -> Result<Vec<O>, sqlx::Error>
    where
        O: Send + Unpin + for<'r> FromRow<'r, PgRow>,
    {
        on_a_connection!(self, |conn| query().fetch_all(conn))
    }

    /// A kept connection, if one is idle and the pool is open.
    fn take_kept(&self) -> Option<PgConnection> {
        let mut kept = self.lock();
        if self.pool.is_closed() {
            kept.clear();
            return None;
        }
        kept.pop()
    }

    /// Keep `conn` for the next statement, if there is room; else a pooled
    /// one goes back to the pool and a kept one is closed (dropped once the
    /// lock is released).
    fn put_back(&self, conn: Conn) {
        let mut kept = self.lock();
        if kept.len() >= self.keep || self.pool.is_closed() {
            drop(kept);
            drop(conn);
            return;
        }
        kept.push(match conn {
            Conn::Kept(conn) => conn,
            Conn::Pooled(conn) => conn.detach(),
        });
    }
}
