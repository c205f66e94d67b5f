//! Connections the store keeps for its statements (see the crate docs,
//! "Connections").
//!
//! A statement on a sqlx pool costs two extra round trips beside its own:
//! the pool pings an idle connection before handing it out, and pings it
//! again, on a task of its own, when it comes back. So the store's
//! statements run on pool connections it keeps checked out between
//! statements instead, for as long as they work. While kept, they are not
//! closed for age or idleness as idle pooled ones are.
//!
//! A kept connection is not checked before use. If its statement fails
//! because the connection is gone (the server restarted, an administrator
//! ended the backend, its Tokio runtime ended), the connection is closed
//! and the statement runs once more on a connection from the pool, which
//! the pool does check. Running a statement twice is safe: the store's
//! statements are reads, or appends, which are idempotent by event id (the
//! store answers a repeated one from what the first stored), or record a
//! command with `ON CONFLICT DO NOTHING`. A transaction's statements are
//! not retried, only its `BEGIN`.
//!
//! A statement whose future is dropped before it ends leaves its
//! connection in an unknown state: it goes back to the pool, which checks
//! it, and is not kept.

use std::sync::{Arc, Mutex, MutexGuard};

use sqlx::pool::PoolConnection;
use sqlx::postgres::{PgArguments, PgRow, PgTransactionManager};
use sqlx::query::QueryAs;
use sqlx::{FromRow, PgConnection, PgPool, Postgres, TransactionManager};
use tokio::task::JoinHandle;

use crate::error::is_connection_error;

/// The pool, and the connections kept beside it (see the [module
/// docs](self)).
#[derive(Debug)]
pub(crate) struct Conns {
    pool: PgPool,
    kept: Arc<Kept>,
    /// At most this many idle connections are kept.
    keep: usize,
    /// The task that gives the kept connections back when the pool is
    /// closed, so that `PgPool::close` does not wait for them for ever.
    watcher: Mutex<Option<JoinHandle<()>>>,
}

type Kept = Mutex<Vec<PoolConnection<Postgres>>>;

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

impl Drop for Conns {
    fn drop(&mut self) {
        if let Some(watcher) = lock(&self.watcher).take() {
            watcher.abort();
        }
        // A pooled connection goes back to its pool on a task; outside a
        // Tokio runtime (a store dropped after its runtime) sqlx cannot
        // spawn one and panics: then the connections leave the pool.
        let kept = std::mem::take(&mut *lock(&self.kept));
        if tokio::runtime::Handle::try_current().is_err() {
            for conn in kept {
                if self.pool.options().get_min_connections() == 0 {
                    drop(conn.detach());
                } else {
                    // Detaching would spawn a task to replace it.
                    std::mem::forget(conn);
                }
            }
        }
    }
}

/// A connection in use: kept by the store, or checked out of the pool.
#[derive(Debug)]
pub(crate) enum Conn {
    Kept(PoolConnection<Postgres>),
    Pooled(PoolConnection<Postgres>),
}

impl Conn {
    pub(crate) fn get(&mut self) -> &mut PgConnection {
        match self {
            Conn::Kept(conn) => conn,
            Conn::Pooled(conn) => conn,
        }
    }

    /// Close the connection rather than return it to the pool.
    pub(crate) fn close(self) {
        let (Conn::Kept(mut conn) | Conn::Pooled(mut conn)) = self;
        conn.close_on_drop();
    }
}

/// Run `$run`, a statement run on connection `$conn` (an expression that
/// may be evaluated twice), on a kept connection of `$conns` (a `&Conns`),
/// or on one from the pool if none is idle or the kept one turns out to be
/// gone; keep the connection afterwards unless it failed. Evaluates to the
/// statement's `Result<_, sqlx::Error>`.
macro_rules! on_conn {
    ($conns:expr, |$conn:ident| $run:expr) => {{
        let conns: &$crate::conns::Conns = $conns;
        let mut done = None;
        if let Some(mut conn) = conns.take_kept() {
            let result = {
                let $conn = conn.get();
                $run.await
            };
            match result {
                Err(e) if $crate::error::is_connection_error(&e) => {
                    tracing::debug!(error = %e, "a kept connection is gone, trying a fresh one");
                    conn.close();
                }
                result => {
                    conns.put_back(conn);
                    done = Some(result);
                }
            }
        }
        match done {
            Some(result) => result,
            None => match conns.acquire().await {
                Err(e) => Err(e),
                Ok(mut conn) => {
                    let result = {
                        let $conn = conn.get();
                        $run.await
                    };
                    conns.after(conn, &result);
                    result
                }
            },
        }
    }};
}
pub(crate) use on_conn;

impl Conns {
    /// Keep at most a quarter of the pool's connections (at least one)
    /// checked out.
    pub(crate) fn new(pool: PgPool) -> Self {
        let keep = (pool.options().get_max_connections() as usize / 4).max(1);
        Conns {
            pool,
            kept: Arc::default(),
            keep,
            watcher: Mutex::new(None),
        }
    }

    /// The pool the connections come from.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.pool
    }

    fn lock(&self) -> MutexGuard<'_, Vec<PoolConnection<Postgres>>> {
        lock(&self.kept)
    }

    /// Start the task that empties the keep once the pool is closed, if it
    /// is not running (it ends with the runtime it runs on).
    fn watch_for_close(&self) {
        let mut watcher = lock(&self.watcher);
        if watcher.as_ref().is_some_and(|w| !w.is_finished()) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (closed, kept) = (self.pool.close_event(), Arc::downgrade(&self.kept));
        *watcher = Some(runtime.spawn(async move {
            closed.await;
            if let Some(kept) = kept.upgrade() {
                let given_back = std::mem::take(&mut *lock(&kept));
                drop(given_back);
            }
        }));
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
        on_conn!(self, |conn| query().fetch_optional(conn))
    }

    /// [`fetch_optional`](Self::fetch_optional) for any number of rows.
    pub(crate) async fn fetch_all<'q, O>(
        &self,
        query: impl Fn() -> QueryAs<'q, Postgres, O, PgArguments>,
    ) -> Result<Vec<O>, sqlx::Error>
    where
        O: Send + Unpin + for<'r> FromRow<'r, PgRow>,
    {
        on_conn!(self, |conn| query().fetch_all(conn))
    }

    /// A kept connection, if one is idle and the pool is open.
    pub(crate) fn take_kept(&self) -> Option<Conn> {
        let mut kept = self.lock();
        if self.pool.is_closed() {
            kept.clear();
            return None;
        }
        kept.pop().map(Conn::Kept)
    }

    /// A connection from the pool (checked by it).
    pub(crate) async fn acquire(&self) -> Result<Conn, sqlx::Error> {
        Ok(Conn::Pooled(self.pool.acquire().await?))
    }

    /// After a statement on `conn` ended with `result`: keep `conn`, unless
    /// the statement failed because the connection is gone.
    pub(crate) fn after<T>(&self, conn: Conn, result: &Result<T, sqlx::Error>) {
        match result {
            Err(e) if is_connection_error(e) => conn.close(),
            _ => self.put_back(conn),
        }
    }

    /// Keep `conn` for the next statement, if there is room; else it goes
    /// back to the pool (once the lock is released).
    pub(crate) fn put_back(&self, conn: Conn) {
        let (Conn::Kept(conn) | Conn::Pooled(conn)) = conn;
        self.watch_for_close();
        let mut kept = self.lock();
        if kept.len() >= self.keep || self.pool.is_closed() {
            drop(kept);
            drop(conn);
            return;
        }
        kept.push(conn);
        // Closed since the check above: the watcher may have emptied the
        // keep already.
        if self.pool.is_closed() {
            let given_back = std::mem::take(&mut *kept);
            drop(kept);
            drop(given_back);
        }
    }
}

/// A transaction on one of the store's connections (a unit of work's).
/// Committed or rolled back, its connection is kept; if that fails, or if
/// the transaction is dropped before, it rolls back as sqlx's own
/// transactions do (a `ROLLBACK` queued for the connection's next use) and
/// its connection goes back to the pool, which sends the `ROLLBACK` as it
/// checks it.
#[derive(Debug)]
pub(crate) struct Tx {
    conns: Arc<Conns>,
    conn: Option<Conn>,
}

impl Tx {
    /// `BEGIN` on a kept connection, or on one from the pool if none is
    /// idle or the kept one is gone.
    pub(crate) async fn begin(conns: &Arc<Conns>) -> Result<Tx, sqlx::Error> {
        let on = |conn| Tx {
            conns: Arc::clone(conns),
            conn: Some(conn),
        };
        if let Some(mut conn) = conns.take_kept() {
            match PgTransactionManager::begin(conn.get(), None).await {
                Ok(()) => return Ok(on(conn)),
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "a kept connection is gone, trying a fresh one");
                    conn.close();
                }
                Err(e) => {
                    conns.put_back(conn);
                    return Err(e);
                }
            }
        }
        let mut conn = conns.acquire().await?;
        let begun = PgTransactionManager::begin(conn.get(), None).await;
        match begun {
            Ok(()) => Ok(on(conn)),
            Err(e) => {
                match is_connection_error(&e) {
                    true => conn.close(),
                    false => conns.put_back(conn),
                }
                Err(e)
            }
        }
    }

    /// The transaction's connection.
    pub(crate) fn conn(&mut self) -> &mut PgConnection {
        self.conn
            .as_mut()
            .expect("a transaction has its connection until it ends")
            .get()
    }

    /// `COMMIT`.
    pub(crate) async fn commit(self) -> Result<(), sqlx::Error> {
        self.end(true).await
    }

    /// `ROLLBACK`.
    pub(crate) async fn rollback(self) -> Result<(), sqlx::Error> {
        self.end(false).await
    }

    async fn end(mut self, commit: bool) -> Result<(), sqlx::Error> {
        let conn = self.conn();
        match commit {
            true => PgTransactionManager::commit(conn).await?,
            false => PgTransactionManager::rollback(conn).await?,
        }
        // Ended: the connection is in no transaction any more.
        if let Some(conn) = self.conn.take() {
            self.conns.put_back(conn);
        }
        Ok(())
    }
}

impl Drop for Tx {
    fn drop(&mut self) {
        if let Some(mut conn) = self.conn.take() {
            PgTransactionManager::start_rollback(conn.get());
        }
    }
}
