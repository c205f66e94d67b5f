//! # strata-projections
//!
//! Read models built from the global log, the Q of CQRS.
//!
//! A [`Projection`] names itself, says which events it wants (by stream
//! category and event type, served by the store's filtered reads) and how
//! each event changes its read model, kept by one of two runners:
//!
//! - [`memory`]: the model is a Rust value in process memory, built by a
//!   [`memory::MemoryDaemon`] over any event store. The embedded default,
//!   for examples, development and unit tests: no server. A
//!   [`memory::MemoryProjection`] applies each event to the model; batches
//!   are published atomically with their position, and failures, status
//!   and controls work as below (see the module).
//! - [`postgres`] (feature `postgres`): the model is in PostgreSQL tables,
//!   changed by a [`postgres::PgProjection`] through the runner's
//!   transaction.
//!
//! A [`postgres::PgDaemon`] in the user's binary runs registered
//! projections:
//!
//! - **Exactly once in effect.** A batch's changes and the projection's
//!   position commit in one transaction.
//! - **One runner per projection, fenced.** Any number of daemons may
//!   register a projection; the one holding its lease applies it, the
//!   others take over when the lease runs out, and a runner that lost its
//!   lease cannot commit a batch.
//! - **Errors are isolated.** A failing event is retried with back-off,
//!   then the projection parks as `faulted` at it (its id, position and
//!   error stored) while the others go on; an operator resumes, skips the
//!   event, or resets.
//! - **Status from the database.** [`postgres::status`] needs no daemon.
//! - **Rebuilds beside the live model.** A raised version, or a
//!   [`postgres::rebuild`] request, builds into its own schema while the
//!   active build serves readers, who are switched over in one step once
//!   it has caught up.
//!
//! Events reach the projection upcast to their current schema and decoded,
//! with their envelope ([`strata_core::Envelope`]).
//!
//! ## Quick start
//!
//! The [`memory`] module's example runs a projection over the in-memory
//! store; `examples/content` (`cargo run --example content`) runs one
//! projection on either runner.
//!
//! ## Feature flags
//!
//! - `postgres` (default): the [`postgres`] module, with `sqlx` and
//!   `strata-store-postgres`.

pub mod error;
pub mod memory;
#[cfg(feature = "postgres")]
pub mod postgres;
pub mod projection;

pub use error::{ProjectionError, Result};
pub use projection::{Projection, RunnerOptions, name_problem};
