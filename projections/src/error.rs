//! The errors of projections and their runners.

use std::time::Duration;

use strata_core::error::BoxError;
use uuid::Uuid;

/// What went wrong registering, running, controlling or waiting for a
/// projection.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ProjectionError {
    /// The name cannot name a projection.
    #[error("invalid projection name `{name}`: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// Two projections of one daemon have the same name.
    #[error("projection `{0}` is registered twice")]
    Duplicate(String),
    /// No projection of that name is stored.
    #[error("no projection named `{0}`")]
    NotFound(String),
    /// An operator asked to skip an event that the projection is not
    /// stopped at.
    #[error("projection `{name}` is not faulted at event {event_id}")]
    NotFaultedAt {
        /// The projection.
        name: String,
        /// The event named.
        event_id: Uuid,
    },
    /// The projection's `setup` failed.
    #[error("setting up projection `{name}`: {source}")]
    Setup {
        /// The projection.
        name: String,
        /// What its code returned.
        source: BoxError,
    },
    /// The projection did not pass a position in time.
    #[error("projection `{name}` did not pass position {position} within {waited:?} (it is at {reached})")]
    Timeout {
        /// The projection.
        name: String,
        /// The position waited for.
        position: u64,
        /// Its position when the wait ended.
        reached: u64,
        /// How long it was waited for.
        waited: Duration,
    },
    /// The event store failed.
    #[error(transparent)]
    Store(#[from] strata_core::Error),
    /// The database failed.
    #[cfg(feature = "postgres")]
    #[error("database: {0}")]
    Database(#[from] sqlx::Error),
}

/// This crate's result type.
pub type Result<T, E = ProjectionError> = std::result::Result<T, E>;
