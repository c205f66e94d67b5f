//! Units of work: strata's append and the caller's own writes in one
//! PostgreSQL transaction.
//!
//! The global log's no-skip proof needs the append to be its transaction's
//! first write (so the transaction id is assigned while the append reads
//! the stream's version), and one append statement per transaction (a
//! second one, to another stream, would read that stream after the id was
//! assigned). The types hold that: a [`UnitOfWork`] offers nothing but
//! [`append`](UnitOfWork::append), which consumes it; only the
//! [`AppendedUnit`] it returns gives out the connection for the caller's
//! writes, and it cannot append again.
//!
//! ```no_run
//! # async fn f(store: strata_store_postgres::PgEventStore, events: Vec<strata_core::NewEvent>)
//! # -> Result<(), Box<dyn std::error::Error>> {
//! use strata_core::{ExpectedVersion, StreamId};
//! use strata_store_postgres::UnitAppend;
//!
//! let stream = StreamId::new("order-7")?;
//! match store.begin().await?.append(&stream, ExpectedVersion::Exact(3), events).await? {
//!     UnitAppend::Appended(mut unit) => {
//!         sqlx::query("INSERT INTO inbox (message_id) VALUES ($1)")
//!             .bind(uuid::Uuid::now_v7())
//!             .execute(unit.connection())
//!             .await?;
//!         unit.commit().await?;
//!     }
//!     // The same events were committed before, with their unit's writes.
//!     UnitAppend::AlreadyStored(_) => {}
//! }
//! # Ok(()) }
//! ```
//!
//! Writing before the append does not compile: a fresh unit has no
//! connection to give,
//!
//! ```compile_fail
//! # async fn f(store: strata_store_postgres::PgEventStore) -> Result<(), Box<dyn std::error::Error>> {
//! let mut unit = store.begin().await?;
//! sqlx::query("INSERT INTO inbox VALUES (1)").execute(unit.connection()).await?;
//! # Ok(()) }
//! ```
//!
//! and neither does a second append:
//!
//! ```compile_fail
//! # async fn f(store: strata_store_postgres::PgEventStore, s: strata_core::StreamId) -> Result<(), Box<dyn std::error::Error>> {
//! use strata_core::ExpectedVersion::Any;
//! if let strata_store_postgres::UnitAppend::Appended(unit) = store.begin().await?.append(&s, Any, vec![]).await? {
//!     unit.append(&s, Any, vec![]).await?;
//! }
//! # Ok(()) }
//! ```

use sqlx::PgConnection;
use strata_core::store::idempotent_outcome;
use strata_core::{AppendResult, ExpectedVersion, NewEvent, Result, StreamId};

use crate::conns::Tx;
use crate::error::{from_sqlx, is_unique_violation};
use crate::store::{Batch, InsertError, PgEventStore, conflict, expectation, insert, version_of};

/// A transaction that has not written yet: its first write will be an
/// append. See the [module docs](self).
#[derive(Debug)]
pub struct UnitOfWork {
    store: PgEventStore,
    tx: Tx,
}

/// A unit of work whose events are appended, not yet committed: the
/// caller's writes go through [`connection`](AppendedUnit::connection),
/// then [`commit`](AppendedUnit::commit) makes all of it durable at once.
/// Dropping it rolls everything back.
#[derive(Debug)]
pub struct AppendedUnit {
    store: PgEventStore,
    tx: Tx,
    stream: StreamId,
    result: AppendResult,
    table: i64,
}

/// What [`UnitOfWork::append`] did. (Not `#[non_exhaustive]`: these two
/// are the whole contract, and callers match on both.)
#[derive(Debug)]
pub enum UnitAppend {
    /// The events are appended in the unit, which waits for the caller's
    /// writes and its commit.
    Appended(AppendedUnit),
    /// The same batch (the same event ids, in order, in this stream) was
    /// stored before, by a unit that committed: nothing was written, the
    /// unit is rolled back, and this is the original outcome. Whatever that
    /// unit wrote beside its events is stored too.
    AlreadyStored(AppendResult),
}

impl PgEventStore {
    /// Begin a unit of work on one of the store's connections (see the
    /// crate docs, "Connections").
    pub async fn begin(&self) -> Result<UnitOfWork> {
        let tx = Tx::begin(self.conns()).await.map_err(from_sqlx)?;
        Ok(UnitOfWork {
            store: self.clone(),
            tx,
        })
    }
}

impl UnitOfWork {
    /// Append `events` to `stream` if its version admits `expected`, as the
    /// unit's first write, with the checks of
    /// [`EventStore::append`](strata_core::EventStore::append). A conflict
    /// ([`Error::Conflict`](strata_core::Error::Conflict), with the actual version), a duplicate id or
    /// any failure rolls the unit back: begin a new one to try again. Unlike
    /// `append`, a unit does not retry by itself: a concurrent writer that
    /// takes the version first is a conflict even with
    /// [`ExpectedVersion::Any`], since the caller's writes must be made
    /// again too.
    pub async fn append(
        mut self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<UnitAppend> {
        self.store.check_batch(&events)?;
        let batch = Batch::new(&events, self.store.max_event_size())?;
        NewEvent::check_unique_ids(&events)?;
        self.store.ensure_log_base().await?;
        let (exact, must_exist) = expectation(expected)?;
        if events.is_empty() {
            let actual = version_of(self.tx.conn(), stream).await?;
            if !expected.admits(actual) {
                return Err(conflict(stream, expected, actual));
            }
            let result = AppendResult {
                stream_version: actual,
                positions: Vec::new(),
            };
            return Ok(UnitAppend::Appended(self.appended(stream, result, 0)));
        }
        match insert(self.tx.conn(), stream, exact, must_exist, &batch).await {
            Ok(Some((result, table))) => Ok(UnitAppend::Appended(self.appended(stream, result, table))),
            // Rejected: the expectation failed (the statement wrote nothing,
            // but the transaction's id may be assigned: this unit cannot
            // append again), or a unique index refused the batch (the
            // transaction is aborted). Either way the unit is rolled back;
            // the batch may be stored already, as a re-run of this one.
            Ok(None) => self.rejected(stream, expected, &events).await,
            Err(InsertError::Sql(e)) if is_unique_violation(&e) => {
                self.rejected(stream, expected, &events).await
            }
            Err(InsertError::Sql(e)) => Err(from_sqlx(e)),
            Err(InsertError::Other(e)) => Err(e),
        }
    }

    /// Roll back, then tell an idempotent re-run ([`UnitAppend::AlreadyStored`])
    /// from a conflict or a duplicate id, as `append` does.
    async fn rejected(
        self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
    ) -> Result<UnitAppend> {
        let store = self.store.clone();
        drop(self);
        let stored = store.stored_with_ids(events).await?;
        if let Some(outcome) = idempotent_outcome(stream, events, &stored)? {
            return Ok(UnitAppend::AlreadyStored(outcome));
        }
        let actual = strata_core::EventStore::stream_version(&store, stream).await?;
        Err(conflict(stream, expected, actual))
    }

    fn appended(self, stream: &StreamId, result: AppendResult, table: i64) -> AppendedUnit {
        AppendedUnit {
            store: self.store,
            tx: self.tx,
            stream: stream.clone(),
            result,
            table,
        }
    }
}

impl AppendedUnit {
    /// What the append will have done once committed: the stream's version
    /// and the events' positions.
    pub fn result(&self) -> &AppendResult {
        &self.result
    }

    /// The unit's connection, for the caller's own reads and writes in the
    /// same transaction.
    pub fn connection(&mut self) -> &mut PgConnection {
        self.tx.conn()
    }

    /// Commit the events and the caller's writes together.
    pub async fn commit(self) -> Result<AppendResult> {
        self.tx.commit().await.map_err(from_sqlx)?;
        if !self.result.positions.is_empty() {
            self.store.committed(&self.stream, &self.result, self.table);
        }
        Ok(self.result)
    }

    /// Roll back the events and the caller's writes.
    pub async fn rollback(self) -> Result<()> {
        self.tx.rollback().await.map_err(from_sqlx)
    }
}
