//! # strata-store-postgres
//!
//! The PostgreSQL [`EventStore`](strata_core::EventStore) of strata:
//! [`PgEventStore`], an append-only event log with optimistic concurrency,
//! idempotent appends, snapshots, a gap-free global log and live
//! subscriptions. The `strata` operator command line (`strata migrate`,
//! `strata events stream|tail|horizon`) is the crate `strata-cli`.
//!
//! Commands with a command id record their first outcome in
//! `strata.commands`: with their events, in the append's own statement, or
//! alone for a refusal or a command that changed nothing.
//!
//! ## Quick start
//!
//! ```no_run
//! use strata_core::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
//! use strata_store_postgres::PgEventStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let store = PgEventStore::connect("postgres://postgres@localhost/app").await?;
//! store.migrate().await?;
//!
//! let stream = StreamId::new("account-42")?;
//! let event = NewEvent {
//!     event_id: uuid::Uuid::now_v7(),
//!     event_type: "Opened".into(),
//!     schema_version: 1,
//!     payload: serde_json::json!({ "owner": "ada" }),
//!     metadata: Metadata::default(),
//! };
//! let appended = store.append(&stream, ExpectedVersion::NoStream, vec![event]).await?;
//! assert_eq!(appended.stream_version, 1);
//!
//! let all = store.read_all(0, 100).await?;
//! # let _ = all;
//! # Ok(()) }
//! ```
//!
//! ## Schema
//!
//! [`MIGRATOR`] (or [`PgEventStore::migrate`]) creates the schema `strata`:
//! `strata.events` (one row per event, `UNIQUE (stream_id, stream_version)`
//! and `UNIQUE (event_id)`), `strata.snapshots` (latest snapshot per
//! stream) and `strata.commands` (the first outcome of each command id,
//! see [`EventStore::append_command`](strata_core::EventStore::append_command)).
//!
//! Every row of `strata.events` must be readable by every reader. An
//! append checks its events first ([`NewEvent::validate`](strata_core::NewEvent::validate):
//! type name, nesting depth, size), and a constraint (migration 0003)
//! refuses, from any writer, the unreadable rows that a cheap check finds:
//! an empty or over-long stream id or event type, a negative position or
//! schema version. (Costlier checks measured too slow: walking the JSON
//! cost 30 to 50 us per row, against an append of about 250 us; with a
//! metadata type check and control-character regexes, a single append fell
//! from about 0.9 to about 0.65 of a plain `INSERT`.)
//! Other unreadable rows, and rows stored before that migration, are
//! caught by the readers: payload and metadata are parsed row by row, so
//! such a row fails alone, as
//! [`Error::UndecodableEvent`](strata_core::Error::UndecodableEvent) with
//! its event id and position: a page of
//! [`read_all`](strata_core::EventStore::read_all) ends before it, and a
//! subscription delivers the error in its place and goes on.
//!
//! `strata.events` is append-only: triggers refuse `UPDATE`, `DELETE` and
//! `TRUNCATE` on it, from anyone, with SQLSTATE 23001
//! (`restrict_violation`). The guarantees below rely on it: an append
//! checks only a stream's last version, so a removed event would leave a
//! gap, and subscribers never look back. To remove events on purpose
//! (erasing personal data, say), disable the triggers for that change;
//! storing such data encrypted and discarding the key is the better way.
//!
//! ## Appends
//!
//! An append is one SQL statement, so one transaction and one round trip:
//! it reads the stream's version, checks the expected version and inserts
//! the batch (`unnest(...) WITH ORDINALITY`). Two writers computing the
//! same version collide on the unique `(stream_id, stream_version)` index;
//! the loser gets a typed [`Error::Conflict`](strata_core::Error::Conflict)
//! with the actual version (or, with `ExpectedVersion::Any`, simply tries
//! again). A batch whose event ids are all stored, as that same batch, is
//! an idempotent re-append.
//!
//! A single-event append expected at version `n` skips reading the
//! stream's version when `n` is 0, or when this store has itself seen
//! version `n` (or a later one) committed: the unique index already refuses
//! a taken `n + 1`, and an append-only log cannot lose version `n`. That
//! read is about a sixth of a single append's time on one writer. What a
//! store remembers is tied to the OID of `strata.events`, so a table
//! dropped and created again is noticed; removing events with the
//! append-only triggers disabled is not, so restart the processes using the
//! store after such surgery.
//!
//! ## Connections
//!
//! The store's statements (appends, reads, snapshots, command records,
//! units of work) run on pool connections it keeps checked out between
//! statements, not on connections checked out of the sqlx pool each time:
//! the pool checks a connection with a round trip to the server when it
//! hands it out and again when it comes back, which made a lone writer's
//! append take almost twice as long as the same `INSERT` on a held
//! connection. The store keeps up to a quarter of
//! [`max_connections`](PgEventStoreOptions::max_connections) (at least
//! one); statements beyond those check connections out of the pool as
//! before. A kept connection is not checked before use; if the server ended
//! it (as `pg_terminate_backend` does), the statement runs once more on
//! a connection from the pool, which is safe because every statement the
//! store retries is a read, an append that its event ids make idempotent,
//! or a command record written with `ON CONFLICT DO NOTHING`. Closing the
//! pool (`store.pool().close()`) gives the kept connections back (a task of
//! the store waits for it), and the store's statements then fail as on a
//! closed pool. Subscriptions' `LISTEN` and migrations use the pool
//! directly.
//!
//! ## Group commit
//!
//! A store runs at most
//! [`max_concurrent_appends`](PgEventStoreOptions::max_concurrent_appends)
//! append statements at once (default
//! [`DEFAULT_MAX_CONCURRENT_APPENDS`]). Appends of up to 32 events that
//! arrive while that many are in flight wait; when one finishes, a single
//! statement carries every waiting append, for as many streams as there
//! are (one append per stream). It checks each append's expected version
//! on its own and inserts the appends that pass, each whole; those that do
//! not get the usual conflict handling, and if the statement fails as a
//! whole, each append is tried again alone. So every append keeps its own
//! outcome, while the server does one transaction, one round trip and one
//! commit for many writers. A lone writer never waits, and larger batches
//! always go alone. The statement is still its transaction's first write,
//! so everything below holds for grouped appends too; appends in one group
//! share a transaction id, and insert in stream id order, so that groups
//! never deadlock on each other. The `metrics` histogram
//! `strata_store_append_group_size` records how many appends each grouped
//! statement carried.
//!
//! ## The global log skips nothing
//!
//! `global_position` is not a sequence. The append computes it as
//!
//! ```text
//! global_position = (pg_current_xact_id() << 20) | index of the event in its statement (1-based)
//! ```
//!
//! so positions are unique and ordered by (writing transaction id, index);
//! a batch holds at most 2^20 - 1 events ([`MAX_BATCH_SIZE`], else
//! [`Error::BatchTooLarge`](strata_core::Error::BatchTooLarge)), and
//! transaction ids stay below 2^43 (about 8.8 * 10^12 transactions).
//! [`read_all`](strata_core::EventStore::read_all) returns only positions
//! below the *horizon* `pg_snapshot_xmin(pg_current_snapshot()) << 20`,
//! the smallest transaction id still running when the read's snapshot was
//! taken.
//!
//! **Why no reader skips an event.** Every transaction whose id is below
//! `xmin` had ended (committed or rolled back) when the snapshot was taken,
//! so the read sees all of its rows or knows it never will: the set of rows
//! below the horizon can no longer change. Every transaction still running
//! then, and every one that starts later, has an id `>= xmin`, hence
//! positions above every position the read returned. So when a reader
//! moves its checkpoint to the last position it read, every event that
//! commits later lies above the checkpoint, and the reader sees each
//! committed event exactly once. (With a sequence, `position > checkpoint`
//! does skip: values are taken at insert but become visible at commit, in
//! another order. A transaction holding value 7 commits after one holding
//! 8, a reader that already moved to 8 never sees 7.) Nothing here waits
//! for time to pass, so a slow transaction delays events, never drops them.
//!
//! **After a restore into another cluster.** Transaction ids belong to a
//! cluster; a log restored with `pg_dump`/`pg_restore` into another holds
//! positions made from higher ids than the new cluster hands out. So every
//! id that positions and the horizon are made from is raised by a stored
//! offset, `strata.log_base` (migration 0005), and
//! [`PgEventStore::migrate`] raises it above every stored position, under
//! a lock that keeps appends out meanwhile. Until then the store refuses to
//! append ([`error::LogBaseBehind`], as
//! [`Error::Configuration`](strata_core::Error::Configuration)), and
//! readers see nothing past the restored horizon: nobody skips. Statements
//! read the offset from `strata.xid_offset()` (migration 0007), a SQL
//! function whose body is the offset as a constant: the planner folds it in
//! (a scan of the table in every statement cost single-event appends 9 to
//! 17 % of their rate, measured), and raising the offset redefines the function,
//! which makes PostgreSQL plan every cached statement that used it again.
//!
//! **Why a stream's events are in version order in the global log.** An
//! append runs in a transaction of its own (or of its group, which holds
//! no other append to that stream), and the append statement is the
//! transaction's first write, so its transaction id is assigned during the
//! statement. A
//! transaction can only insert version `v + 1` once the one that inserted
//! `v` has committed (before that, it sees `v - 1` and collides with `v` on
//! the unique index). The writer of `v` got its id before committing, the
//! writer of `v + 1` after that commit, so its id, and position, is larger.
//!
//! **The cost.** Any transaction that holds a transaction id (that has
//! written anything, in any table of any database of the server: transaction
//! ids and snapshots are server-wide) holds every reader back
//! while it runs: events committed after it started stay invisible to
//! `read_all` and subscriptions until it ends. Keep transactions short.
//! [`PgEventStore::horizon`] reports the horizon, how many committed events
//! it holds back and the age of the oldest running transaction, and
//! records them as the `metrics` gauges `strata_store_horizon_position`,
//! `strata_store_held_back_events` and
//! `strata_store_oldest_transaction_age_seconds`.
//!
//! ## Subscriptions
//!
//! [`subscribe`](strata_core::EventStore::subscribe) reads the log in
//! batches (see [`PgEventStoreOptions::read_batch`]) and, once caught up,
//! waits for a `strata_events` notification or the poll interval
//! ([`PgEventStoreOptions::poll_interval`]), whichever comes first. One
//! `LISTEN` connection per store serves all its subscriptions and
//! reconnects on failure; a lost notification only costs latency, because
//! reads are horizon-safe and the feed resumes from the last event it
//! delivered.
//!
//! A read that fails (the server restarting, say) is delivered as an error
//! item, and the next read waits 50 ms, doubling up to 5 s while reads go
//! on failing. A `LISTEN` connection coming back counts as a wake-up but
//! not as a commit.
//!
//! A notified event can still be unreadable for a moment: an older
//! transaction, anywhere on the server, holds the horizon below it, and its
//! end is announced by nobody. So when a wake-up (or catching up) finds
//! nothing new, the subscription looks again after 5 ms, 10 ms, 20 ms, ...
//! up to the poll interval, rather than waiting out the whole interval.
//!
//! The notification is sent after an append commits, by a task of the
//! appending store: the first append after a quiet spell is announced at
//! once, then at most one `pg_notify` goes out per 10 ms, and the store's own subscriptions are woken at once. The
//! task runs on the runtime of the append that started it; when that
//! runtime ends, the next append (from any runtime) starts a new one. It is
//! deliberately not sent inside the append: `NOTIFY` at commit takes a
//! server-wide lock that serializes committing writers, and measured with
//! 16 writers it halved append throughput. Appends made outside strata
//! (or through the test helper `testing::append_in`) send none, and their
//! events are found by the poll.
//!
//! ## Errors
//!
//! Every method returns [`strata_core::Error`]. An unreachable server, a
//! lost connection or a pool timeout is
//! [`Error::Connection`](strata_core::Error::Connection) (retriable); a
//! malformed URL, one for another database than PostgreSQL, a wrong
//! password, an unknown role or database is
//! [`Error::Configuration`](strata_core::Error::Configuration) (not
//! retriable); any other database failure is
//! [`Error::Backend`](strata_core::Error::Backend). The boxed error inside
//! is an [`error::DatabaseError`] (the `sqlx::Error`, with a message that
//! gives the server's text, SQLSTATE and hint once, and the hint to run
//! `strata migrate` when the schema is missing), or, when no first
//! connection could be opened in time, an [`error::ConnectTimeout`] saying
//! what the last attempt got.
//!
//! ## Feature flags
//!
//! - `testing`: the [`testing`] module: a fresh, migrated database per test
//!   (`DATABASE_URL` names the server) and an append within a caller-held
//!   transaction.

mod conns;
pub mod error;
mod group;
pub mod horizon;
mod known;
pub mod notify;
pub mod options;
mod row;
pub mod store;
#[cfg(feature = "testing")]
pub mod testing;
pub mod unit;

pub use horizon::Horizon;
pub use notify::CommitSignal;
pub use options::{
    DEFAULT_MAX_CONCURRENT_APPENDS, DEFAULT_MAX_EVENT_SIZE, MAX_BATCH_SIZE, PgEventStoreOptions,
};
pub use store::PgEventStore;
pub use unit::{AppendedUnit, UnitAppend, UnitOfWork};

/// The migrations of the `strata` schema, embedded from `migrations/`.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!();
