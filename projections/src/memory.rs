//! Read models in process memory: the embedded default, for examples,
//! development and users' unit tests, with no server.
//!
//! A [`MemoryProjection`] says how each event changes its model, a plain
//! Rust value. A [`MemoryDaemon`] runs registered projections over any
//! [`EventStore`] (the [`InMemoryEventStore`] first of all), with the
//! semantics of the PostgreSQL runner:
//!
//! - **Batches are atomic.** Up to [`RunnerOptions::batch_size`] wanted
//!   events, read with [`EventStore::read_all_filtered`] (so unwanted
//!   events are neither fetched nor decoded), are applied to a copy of the
//!   model, and the copy is published with the new position in one step:
//!   a reader ([`ReadModel::read`]) sees both change together, never half a
//!   batch.
//! - **Catch up, then follow.** From position 0 to the head, then the
//!   store's subscription wakes the runner for new events (and it reads
//!   again every [`RunnerOptions::max_wait`] anyway). The position also
//!   moves past events it does not want.
//! - **Errors are isolated.** An event whose `apply` fails (or panics), or
//!   that cannot be decoded or upcast, is tried again with back-off
//!   ([`RunnerOptions::retry_backoff`], doubling); the model and position
//!   stay at the end of the batch's good prefix. After
//!   [`RunnerOptions::max_attempts`] tries the projection parks as
//!   [`RunState::Faulted`], with the event's id, position and error, while
//!   the other projections go on. An operator then
//!   [resumes](ProjectionControl::resume) (the event is tried again),
//!   [skips](ProjectionControl::skip) that event (recorded in
//!   [`ProjectionControl::skipped`]), or [resets](ProjectionControl::reset).
//! - **Read your writes.** [`ReadModel::wait_for`] waits until the model
//!   has passed the position of an append.
//! - **Metrics**, labelled `projection`, named as the PostgreSQL runner's:
//!   the counters `strata_projection_events_applied_total`,
//!   `strata_projection_events_fetched_total` and
//!   `strata_projection_errors_total`, the histogram
//!   `strata_projection_batch_seconds`, and the gauges
//!   `strata_projection_position`, `strata_projection_head`,
//!   `strata_projection_lag_positions`, `strata_projection_lag_events`
//!   (wanted events behind) and `strata_projection_lag_seconds` (age of the
//!   oldest wanted event behind). The lag gauges are counted by reading the
//!   log after the position, at most once a second while behind.
//!
//! The model lives as long as the daemon's process: each start builds it
//! from position 0 (so [`Projection::version`] and [`RunnerOptions::lease`]
//! play no part here).
//!
//! ```
//! use std::time::Duration;
//! use serde::{Deserialize, Serialize};
//! use strata_core::error::BoxError;
//! use strata_core::{Envelope, Event, EventStore, ExpectedVersion, InMemoryEventStore, Metadata, NewEvent, StreamId};
//! use strata_projections::Projection;
//! use strata_projections::memory::{MemoryDaemon, MemoryProjection};
//!
//! #[derive(Debug, Clone, Serialize, Deserialize, Event)]
//! enum Signup { Registered { email: String } }
//!
//! /// Every registered email, in order.
//! struct Emails;
//!
//! impl Projection for Emails {
//!     type Event = Signup;
//!     fn name(&self) -> &str { "emails" }
//! }
//!
//! impl MemoryProjection for Emails {
//!     type Model = Vec<String>;
//!     fn apply(&self, model: &mut Vec<String>, event: &Envelope<Signup>) -> Result<(), BoxError> {
//!         let Signup::Registered { email } = &event.event;
//!         model.push(email.clone());
//!         Ok(())
//!     }
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), BoxError> {
//! let store = InMemoryEventStore::new();
//! let mut daemon = MemoryDaemon::new(store.clone());
//! let emails = daemon.register(Emails)?;
//! let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
//! let daemon = tokio::spawn(daemon.run(async { let _ = stopped.await; }));
//!
//! let event = NewEvent::from_event(&Signup::Registered { email: "ada@example.com".into() }, Metadata::default())?;
//! let appended = store.append(&StreamId::new("user-1")?, ExpectedVersion::NoStream, vec![event]).await?;
//! emails.wait_for(appended.positions[0], Duration::from_secs(5)).await?;
//! assert_eq!(emails.read(|m| m.clone()), ["ada@example.com"]);
//!
//! stop.send(()).ok();
//! daemon.await??;
//! # Ok(()) }
//! ```

mod control;
mod runner;

use std::future::Future;
use std::sync::{Arc, RwLock};

use futures_util::future::BoxFuture;
use strata_core::error::BoxError;
use strata_core::{Envelope, EventStore, InMemoryEventStore};
use tokio::sync::watch;
use tokio::task::JoinSet;

pub use control::{MemoryStatus, ModelSnapshot, ProjectionControl, ReadModel, RunState, SkippedEvent};

use crate::error::{ProjectionError, Result};
use crate::projection::{Projection, RunnerOptions, name_problem};
use control::{Control, StoreLag};
use runner::Runner;

/// A projection whose read model is a value in process memory.
pub trait MemoryProjection: Projection {
    /// The read model. Each batch is applied to a clone of it, published
    /// when the whole batch succeeded: keep it cheap to clone (a large
    /// model can hold its bulk behind `Arc`s, or in persistent maps).
    type Model: Default + Clone + Send + Sync + 'static;

    /// Apply one event to the model. An error (or a panic) drops the
    /// batch's copy; the model and position stay at the events before it,
    /// the event is tried again with back-off, and after
    /// [`RunnerOptions::max_attempts`] tries the projection parks as
    /// faulted at it. Runs on the daemon's tasks: keep it quick, with no
    /// I/O.
    fn apply(&self, model: &mut Self::Model, event: &Envelope<Self::Event>) -> Result<(), BoxError>;
}

type Start<S> = Box<dyn FnOnce(S, RunnerOptions, watch::Receiver<bool>) -> BoxFuture<'static, ()> + Send>;

/// Runs registered [`MemoryProjection`]s over an event store until told to
/// stop; see the [module docs](self).
pub struct MemoryDaemon<S = InMemoryEventStore> {
    store: S,
    options: RunnerOptions,
    projections: Vec<(ProjectionControl, Start<S>)>,
}

impl<S> std::fmt::Debug for MemoryDaemon<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryDaemon")
            .field("options", &self.options)
            .field(
                "projections",
                &self
                    .projections
                    .iter()
                    .map(|(c, _)| c.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl<S: EventStore + Clone> MemoryDaemon<S> {
    /// A daemon reading `store`, with default options.
    pub fn new(store: S) -> Self {
        MemoryDaemon {
            store,
            options: RunnerOptions::default(),
            projections: Vec::new(),
        }
    }

    /// Replace the runner options (batch size, waits, retries; the lease
    /// plays no part in memory).
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// Add a projection and return its read model, empty at position 0
    /// until the daemon runs. A bad name, a second projection of the same
    /// name, or an incomplete upcaster chain is refused.
    pub fn register<P: MemoryProjection>(&mut self, projection: P) -> Result<ReadModel<P::Model>> {
        let name = projection.name().to_owned();
        if let Some(reason) = name_problem(&name) {
            return Err(ProjectionError::InvalidName { name, reason });
        }
        if self.projections.iter().any(|(c, _)| c.name() == name) {
            return Err(ProjectionError::Duplicate(name));
        }
        let upcasters = projection.upcasters();
        upcasters.check::<P::Event>()?;
        let filter = projection.filter();
        let lag = StoreLag {
            store: self.store.clone(),
            filter: filter.clone(),
        };
        let control = ProjectionControl {
            inner: Arc::new(Control::new(name, Box::new(lag))),
        };
        let published = Arc::new(RwLock::new(ModelSnapshot {
            position: 0,
            model: Arc::new(P::Model::default()),
        }));
        let read_model = ReadModel {
            published: published.clone(),
            control: control.clone(),
        };
        let inner = control.inner.clone();
        let start: Start<S> = Box::new(move |store, options, stop| {
            let runner = Runner {
                store,
                options,
                projection,
                upcasters,
                filter,
                control: inner,
                published,
                stop,
            };
            Box::pin(runner.run())
        });
        self.projections.push((control, start));
        Ok(read_model)
    }

    /// The controls of the projection named `name`
    /// ([`ProjectionError::NotFound`] if none is registered).
    pub fn control(&self, name: &str) -> Result<ProjectionControl> {
        self.projections
            .iter()
            .find(|(c, _)| c.name() == name)
            .map(|(c, _)| c.clone())
            .ok_or_else(|| ProjectionError::NotFound(name.to_owned()))
    }

    /// Run every registered projection, each on its own task, until
    /// `shutdown` completes; then let each finish the batch in flight and
    /// return. Needs a Tokio runtime.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let mut runners = JoinSet::new();
        let mut names = std::collections::HashMap::new();
        for (control, start) in self.projections {
            let handle = runners.spawn(start(self.store.clone(), self.options.clone(), stop_rx.clone()));
            names.insert(handle.id(), control.name().to_owned());
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        while let Some(ended) = runners.join_next_with_id().await {
            if let Err(e) = ended {
                let name = names.get(&e.id()).map_or("?", String::as_str);
                tracing::error!(projection = name, error = %e, "a projection's runner ended abnormally");
            }
        }
        Ok(())
    }
}
