//! What a memory projection's runner shares with its readers and its
//! operators: the published model, the position, the state, the requests.

use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use strata_core::{EventStore, LogFilter};
use tokio::sync::{Notify, watch};
use uuid::Uuid;

use crate::error::{ProjectionError, Result};

/// Whether a projection applies events.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum RunState {
    /// It applies events as they come.
    #[default]
    Running,
    /// An operator paused it; nothing is applied until it is resumed.
    Paused,
    /// An event kept failing: it is parked at that event until an operator
    /// resumes it (the event is tried again), skips the event, or resets.
    Faulted,
}

impl RunState {
    /// `running`, `paused` or `faulted`, as the PostgreSQL runner's status
    /// spells them.
    pub fn as_str(self) -> &'static str {
        match self {
            RunState::Running => "running",
            RunState::Paused => "paused",
            RunState::Faulted => "faulted",
        }
    }
}

impl std::fmt::Display for RunState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A memory projection's status, as [`ProjectionControl::status`] reads it.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
#[non_exhaustive]
pub struct MemoryStatus {
    /// The projection's name.
    pub name: String,
    /// Whether it applies events.
    pub state: RunState,
    /// Everything up to here is applied (or was not wanted).
    pub position: u64,
    /// The last position of the log, as far as the store lets it be read.
    pub head: u64,
    /// Wanted events after `position`.
    pub lag_events: u64,
    /// Age of the oldest wanted event after `position`, in seconds.
    pub lag_seconds: f64,
    /// Events applied since the runner started or was last reset.
    pub events_applied: u64,
    /// The event it is parked at, when faulted.
    pub fault_event_id: Option<Uuid>,
    /// That event's position.
    pub fault_position: Option<u64>,
    /// The last error; cleared by the next batch that is applied.
    pub last_error: Option<String>,
}

/// An event an operator had a projection pass over
/// ([`ProjectionControl::skip`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[non_exhaustive]
pub struct SkippedEvent {
    /// The event's id.
    pub event_id: Uuid,
    /// Its position in the global log.
    pub position: u64,
    /// The error it was parked with.
    pub error: Option<String>,
}

/// The event a faulted projection is parked at.
#[derive(Debug, Clone)]
pub(crate) struct Fault {
    pub(crate) event_id: Uuid,
    pub(crate) position: u64,
    pub(crate) error: String,
}

/// The state the runner and the operators change, under one lock.
#[derive(Debug, Default)]
pub(crate) struct ControlState {
    pub(crate) state: RunState,
    pub(crate) position: u64,
    pub(crate) events_applied: u64,
    /// The event an operator asked to skip (the one it is parked at).
    pub(crate) skip_event_id: Option<Uuid>,
    pub(crate) reset_requested: bool,
    pub(crate) fault: Option<Fault>,
    pub(crate) last_error: Option<String>,
    pub(crate) skipped: Vec<SkippedEvent>,
}

/// What a projection has still to read.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lag {
    /// Wanted events after the position.
    pub(crate) events: u64,
    /// The last position of the log.
    pub(crate) head: u64,
    /// When the first of those events was recorded.
    pub(crate) oldest: Option<DateTime<Utc>>,
}

impl Lag {
    /// Age of the oldest wanted event not applied, in seconds (0 if none).
    pub(crate) fn seconds(&self) -> f64 {
        self.oldest
            .map_or(0.0, |t| (Utc::now() - t).num_milliseconds() as f64 / 1000.0)
            .max(0.0)
    }
}

/// Counts what a projection has still to read; erases the store's type.
#[async_trait]
pub(crate) trait LagReader: Send + Sync {
    /// The lag of a projection at `position`.
    async fn lag(&self, position: u64) -> Result<Lag>;
}

/// A store and a filter: the lag of one projection.
pub(crate) struct StoreLag<S> {
    pub(crate) store: S,
    pub(crate) filter: LogFilter,
}

/// Log pages read at a time when counting the lag.
const LAG_PAGE: usize = 10_000;

#[async_trait]
impl<S: EventStore> LagReader for StoreLag<S> {
    async fn lag(&self, position: u64) -> Result<Lag> {
        let mut lag = Lag {
            events: 0,
            head: position,
            oldest: None,
        };
        loop {
            match self
                .store
                .read_all_filtered(lag.head, LAG_PAGE, &self.filter)
                .await
            {
                Ok(page) => {
                    lag.events += page.events.len() as u64;
                    if lag.oldest.is_none() {
                        lag.oldest = page.events.first().map(|e| e.recorded_at);
                    }
                    let moved = page.scanned_to > lag.head;
                    lag.head = lag.head.max(page.scanned_to);
                    if page.reached_end || !moved {
                        return Ok(lag);
                    }
                }
                // It stands in for its event, which the projection will meet.
                Err(strata_core::Error::UndecodableEvent { global_position, .. })
                    if global_position > lag.head =>
                {
                    lag.events += 1;
                    lag.head = global_position;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// One projection's shared state, its model's type erased.
pub(crate) struct Control {
    pub(crate) name: String,
    state: Mutex<ControlState>,
    /// Wakes the runner when an operator asks for something.
    pub(crate) changed: Notify,
    /// The published position, for `wait_for`.
    pub(crate) position: watch::Sender<u64>,
    lag: Box<dyn LagReader>,
}

impl Control {
    pub(crate) fn new(name: String, lag: Box<dyn LagReader>) -> Self {
        Control {
            name,
            state: Mutex::new(ControlState::default()),
            changed: Notify::new(),
            position: watch::channel(0).0,
            lag,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, ControlState> {
        // Every change under this lock is a few field writes that cannot
        // panic half-way, so a poisoned lock still holds a whole state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) async fn lag(&self, position: u64) -> Result<Lag> {
        self.lag.lag(position).await
    }
}

/// Operator controls and status of one projection of a
/// [`MemoryDaemon`](super::MemoryDaemon), the counterparts of the
/// PostgreSQL runner's `status`, `pause`, `resume`, `skip`, `reset` and
/// `wait_for`. Cloning shares them. Requests are carried out by the
/// runner, so they take effect while the daemon runs.
#[derive(Clone)]
pub struct ProjectionControl {
    pub(crate) inner: Arc<Control>,
}

impl std::fmt::Debug for ProjectionControl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ProjectionControl")
            .field("name", &self.inner.name)
            .finish_non_exhaustive()
    }
}

impl ProjectionControl {
    /// The projection's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// Its state, position and errors, with the head of the log and the
    /// lag, counted by reading the wanted events after its position.
    pub async fn status(&self) -> Result<MemoryStatus> {
        let (mut status, position) = {
            let st = self.inner.lock();
            let status = MemoryStatus {
                name: self.inner.name.clone(),
                state: st.state,
                position: st.position,
                head: st.position,
                lag_events: 0,
                lag_seconds: 0.0,
                events_applied: st.events_applied,
                fault_event_id: st.fault.as_ref().map(|f| f.event_id),
                fault_position: st.fault.as_ref().map(|f| f.position),
                last_error: st.last_error.clone(),
            };
            (status, st.position)
        };
        let lag = self.inner.lag(position).await?;
        status.lag_events = lag.events;
        status.lag_seconds = lag.seconds();
        status.head = lag.head.max(position);
        Ok(status)
    }

    /// Stop applying events until [`resume`](Self::resume). Once this
    /// returns, nothing more is applied: a batch in flight is dropped, and
    /// read again on resume.
    pub fn pause(&self) {
        self.inner.lock().state = RunState::Paused;
        self.inner.changed.notify_one();
    }

    /// Apply events again: after [`pause`](Self::pause), or after a fault
    /// (the failing event is tried again, `max_attempts` more times).
    pub fn resume(&self) {
        self.inner.lock().state = RunState::Running;
        self.inner.changed.notify_one();
    }

    /// Pass over the event the projection is parked at, recording it in
    /// [`skipped`](Self::skipped), and go on. Any other event is
    /// [`ProjectionError::NotFaultedAt`].
    pub fn skip(&self, event_id: Uuid) -> Result<()> {
        {
            let mut st = self.inner.lock();
            if st.fault.as_ref().map(|f| f.event_id) != Some(event_id) {
                return Err(ProjectionError::NotFaultedAt {
                    name: self.inner.name.clone(),
                    event_id,
                });
            }
            st.skip_event_id = Some(event_id);
            st.state = RunState::Running;
        }
        self.inner.changed.notify_one();
        Ok(())
    }

    /// Empty the model and build it again from position 0. The runner does
    /// it in one step (readers see the empty model, then it filling); the
    /// projection runs afterwards, whatever its state was.
    pub fn reset(&self) {
        self.inner.lock().reset_requested = true;
        self.inner.changed.notify_one();
    }

    /// The events an operator had it skip, oldest first.
    pub fn skipped(&self) -> Vec<SkippedEvent> {
        self.inner.lock().skipped.clone()
    }

    /// The position it has applied up to.
    pub fn position(&self) -> u64 {
        *self.inner.position.borrow()
    }

    /// Wait until the projection has passed `position` (read your writes:
    /// pass the position of the caller's append). After `timeout`,
    /// [`ProjectionError::Timeout`].
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        let started = Instant::now();
        let mut rx = self.inner.position.subscribe();
        let passed = tokio::time::timeout(timeout, rx.wait_for(|p| *p >= position)).await;
        match passed {
            // The sender lives in `self`: the channel cannot close.
            Ok(_) => Ok(()),
            Err(_) => Err(ProjectionError::Timeout {
                name: self.inner.name.clone(),
                position,
                reached: self.position(),
                waited: started.elapsed(),
            }),
        }
    }
}

/// The model as published: a position and the model with everything up to
/// it applied. Cloning is cheap (the model is shared).
#[derive(Debug)]
pub struct ModelSnapshot<M> {
    /// Everything up to this position is applied to `model`.
    pub position: u64,
    /// The model.
    pub model: Arc<M>,
}

impl<M> Clone for ModelSnapshot<M> {
    fn clone(&self) -> Self {
        ModelSnapshot {
            position: self.position,
            model: self.model.clone(),
        }
    }
}

impl<M> std::ops::Deref for ModelSnapshot<M> {
    type Target = M;

    fn deref(&self) -> &M {
        &self.model
    }
}

/// The published model of one projection of a
/// [`MemoryDaemon`](super::MemoryDaemon): what
/// [`register`](super::MemoryDaemon::register) returns. Cloning shares it.
///
/// The runner applies each batch to a copy of the model and publishes the
/// copy and its position together, so a reader never sees a half-applied
/// batch, nor a model that does not match its position.
pub struct ReadModel<M> {
    pub(crate) published: Arc<RwLock<ModelSnapshot<M>>>,
    pub(crate) control: ProjectionControl,
}

impl<M> Clone for ReadModel<M> {
    fn clone(&self) -> Self {
        ReadModel {
            published: self.published.clone(),
            control: self.control.clone(),
        }
    }
}

impl<M> std::fmt::Debug for ReadModel<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReadModel")
            .field("name", &self.control.name())
            .field("position", &self.control.position())
            .finish_non_exhaustive()
    }
}

impl<M> ReadModel<M> {
    /// Answer a query from the model as published now. The runner does not
    /// wait for `f`: it publishes a new model beside the one being read.
    pub fn read<R>(&self, f: impl FnOnce(&M) -> R) -> R {
        f(&self.snapshot().model)
    }

    /// The model as published now, with its position.
    pub fn snapshot(&self) -> ModelSnapshot<M> {
        self.published.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The projection's controls and status.
    pub fn control(&self) -> &ProjectionControl {
        &self.control
    }

    /// [`ProjectionControl::wait_for`]: wait until the model has passed
    /// `position`, then read it.
    pub async fn wait_for(&self, position: u64, timeout: Duration) -> Result<()> {
        self.control.wait_for(position, timeout).await
    }
}
