//! The loop that applies one memory projection: read a page of wanted
//! events, apply it to a copy of the model, publish the copy and the
//! position together; retry a failing event, then park.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use strata_core::{EventStore, LogFilter, RecordedEvent, Upcasters};
use tokio::sync::watch;
use uuid::Uuid;

use super::MemoryProjection;
use super::control::{Control, ControlState, Fault, Lag, ModelSnapshot, RunState, SkippedEvent};
use crate::projection::RunnerOptions;

/// How often, at most, the lag gauge is counted while behind.
const LAG_EVERY: Duration = Duration::from_secs(1);

pub(crate) struct Runner<S, P: MemoryProjection> {
    pub(crate) store: S,
    pub(crate) options: RunnerOptions,
    pub(crate) projection: P,
    pub(crate) upcasters: Upcasters,
    pub(crate) filter: LogFilter,
    pub(crate) control: Arc<Control>,
    pub(crate) published: Arc<RwLock<ModelSnapshot<P::Model>>>,
    pub(crate) stop: watch::Receiver<bool>,
}

/// How applying a batch to a copy of the model ended.
enum Applied<M> {
    /// Every event applied (or skipped, as asked).
    Done {
        model: M,
        applied: u64,
        skipped: Option<(Uuid, u64)>,
    },
    /// The event at this index failed, with this error; the copy is dropped.
    Failed(usize, String),
}

/// What to publish with a new position.
struct Publish<M> {
    /// The new model; `None` keeps the model (only the position moves).
    model: Option<M>,
    to: u64,
    applied: u64,
    skipped: Option<(Uuid, u64)>,
}

impl<S: EventStore + Clone, P: MemoryProjection> Runner<S, P> {
    fn name(&self) -> &str {
        &self.control.name
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Wait `d`, or less: until the daemon is told to stop or an operator
    /// asks for something (or, with `log`, until the log has something
    /// after `position` for this projection).
    async fn wait(&self, d: Duration, log: Option<u64>) {
        let mut stop = self.stop.clone();
        let log_moved = async {
            match log {
                // Only a wake-up: whatever comes is read again as a page.
                Some(position) => {
                    let mut feed = self.store.subscribe_filtered(position, self.filter.clone());
                    let _ = feed.next().await;
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.wait_for(|s| *s) => {}
            _ = self.control.changed.notified() => {}
            _ = log_moved => {}
            _ = tokio::time::sleep(d) => {}
        }
    }

    pub(crate) async fn run(self) {
        let mut failures: Option<(Uuid, u32)> = None;
        let mut lag_counted: Option<Instant> = None;
        while !self.stopping() {
            let (state, position, skip, reset) = {
                let st = self.control.lock();
                (st.state, st.position, st.skip_event_id, st.reset_requested)
            };
            if reset {
                self.reset();
                failures = None;
                continue;
            }
            if state != RunState::Running {
                self.count_lag(position, false, &mut lag_counted).await;
                self.wait(self.options.max_wait, None).await;
                continue;
            }
            let page = self
                .store
                .read_all_filtered(position, self.options.batch_size.max(1), &self.filter)
                .await;
            let page = match page {
                Ok(page) => {
                    metrics::counter!("strata_projection_events_fetched_total", "projection" => self.name().to_owned())
                        .increment(page.events.len() as u64);
                    page
                }
                Err(strata_core::Error::UndecodableEvent {
                    event_id,
                    global_position,
                    reason,
                }) => {
                    if skip == Some(event_id) {
                        self.publish(
                            position,
                            Publish {
                                model: None,
                                to: global_position,
                                applied: 0,
                                skipped: Some((event_id, global_position)),
                            },
                        );
                    } else {
                        let error = format!("the stored event cannot be read: {reason}");
                        failures = self
                            .note_failure(failures, position, event_id, global_position, &error)
                            .await;
                    }
                    continue;
                }
                Err(e) => {
                    tracing::warn!(projection = self.name(), error = %e, "could not read the log");
                    self.wait(self.options.retry_backoff, None).await;
                    continue;
                }
            };
            if page.events.is_empty() {
                if page.scanned_to > position {
                    // Nothing wanted, but the position moves past what was examined.
                    self.publish(
                        position,
                        Publish {
                            model: None,
                            to: page.scanned_to,
                            applied: 0,
                            skipped: None,
                        },
                    );
                }
                if page.reached_end {
                    self.count_lag(page.scanned_to, true, &mut lag_counted).await;
                    self.wait(self.options.max_wait, Some(page.scanned_to.max(position)))
                        .await;
                }
                continue;
            }
            let started = Instant::now();
            let base = self.snapshot().model;
            match self.apply(&base, &page.events, skip) {
                Applied::Done {
                    model,
                    applied,
                    skipped,
                } => {
                    let published = self.publish(
                        position,
                        Publish {
                            model: Some(model),
                            to: page.scanned_to,
                            applied,
                            skipped,
                        },
                    );
                    if published {
                        failures = None;
                        metrics::histogram!("strata_projection_batch_seconds", "projection" => self.name().to_owned())
                            .record(started.elapsed().as_secs_f64());
                    }
                    self.count_lag(page.scanned_to, page.reached_end, &mut lag_counted)
                        .await;
                }
                Applied::Failed(index, error) => {
                    // Publish what came before the failing event, then deal with it.
                    let mut at = position;
                    if index > 0 {
                        let last = page.events[index - 1].global_position;
                        let Applied::Done {
                            model,
                            applied,
                            skipped,
                        } = self.apply(&base, &page.events[..index], skip)
                        else {
                            // It failed otherwise the second time: read again.
                            continue;
                        };
                        let prefix = Publish {
                            model: Some(model),
                            to: last,
                            applied,
                            skipped,
                        };
                        if !self.publish(position, prefix) {
                            continue;
                        }
                        at = last;
                    }
                    let event = &page.events[index];
                    failures = self
                        .note_failure(failures, at, event.event_id, event.global_position, &error)
                        .await;
                }
            }
        }
    }

    fn snapshot(&self) -> ModelSnapshot<P::Model> {
        self.published.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Apply `events` to a copy of `base`; the event `skip` (an operator's
    /// choice) is passed over instead.
    fn apply(&self, base: &P::Model, events: &[RecordedEvent], skip: Option<Uuid>) -> Applied<P::Model> {
        let mut model = base.clone();
        let (mut applied, mut skipped) = (0, None);
        for (index, event) in events.iter().enumerate() {
            if skip == Some(event.event_id) {
                skipped = Some((event.event_id, event.global_position));
                continue;
            }
            if let Err(error) = self.apply_one(&mut model, event) {
                return Applied::Failed(index, error);
            }
            applied += 1;
        }
        Applied::Done {
            model,
            applied,
            skipped,
        }
    }

    /// Decode (upcasting) and apply one event; a panic counts as a failure.
    fn apply_one(&self, model: &mut P::Model, event: &RecordedEvent) -> Result<(), String> {
        let envelope = event
            .decode::<P::Event>(&self.upcasters)
            .map_err(|e| e.to_string())?;
        match catch_unwind(AssertUnwindSafe(|| self.projection.apply(model, &envelope))) {
            Ok(result) => result.map_err(|e| e.to_string()),
            Err(panic) => {
                let message = panic
                    .downcast_ref::<&str>()
                    .map(|s| (*s).to_owned())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "a panic without a message".to_owned());
                Err(format!("apply panicked: {message}"))
            }
        }
    }

    /// Publish a new model (or only a new position) if the projection
    /// still runs from `from`: the model, the position, the counters, the
    /// skip record and the cleared fault change together. False if an
    /// operator paused or reset it meanwhile (nothing is published).
    fn publish(&self, from: u64, p: Publish<P::Model>) -> bool {
        let mut st = self.control.lock();
        if st.state != RunState::Running || st.reset_requested || st.position != from {
            return false;
        }
        {
            let mut published = self.published.write().unwrap_or_else(|p| p.into_inner());
            published.position = p.to;
            if let Some(model) = p.model {
                published.model = Arc::new(model);
            }
        }
        if let Some((event_id, position)) = p.skipped {
            let error = st.fault.as_ref().map(|f| f.error.clone());
            st.skipped.push(SkippedEvent {
                event_id,
                position,
                error,
            });
            st.skip_event_id = None;
            tracing::warn!(projection = self.name(), %event_id, position, "skipped an event, as an operator asked");
        }
        st.position = p.to;
        st.events_applied += p.applied;
        st.fault = None;
        st.last_error = None;
        self.control.position.send_replace(p.to);
        drop(st);
        if p.applied > 0 {
            metrics::counter!("strata_projection_events_applied_total", "projection" => self.name().to_owned())
                .increment(p.applied);
        }
        metrics::gauge!("strata_projection_position", "projection" => self.name().to_owned())
            .set(p.to as f64);
        true
    }

    /// Empty the model and start again from position 0, as asked.
    fn reset(&self) {
        let mut st = self.control.lock();
        *self.published.write().unwrap_or_else(|p| p.into_inner()) = ModelSnapshot {
            position: 0,
            model: Arc::new(P::Model::default()),
        };
        let skipped = std::mem::take(&mut st.skipped);
        *st = ControlState {
            skipped,
            ..ControlState::default()
        };
        self.control.position.send_replace(0);
        drop(st);
        metrics::gauge!("strata_projection_position", "projection" => self.name().to_owned()).set(0.0);
        tracing::info!(projection = self.name(), "reset to position 0");
    }

    /// Count a failure of the event at `global_position`; after the last
    /// try, park the projection as faulted there, with the model and
    /// position at `position` (the end of the good prefix). Returns the
    /// updated failure count.
    async fn note_failure(
        &self,
        failures: Option<(Uuid, u32)>,
        position: u64,
        event_id: Uuid,
        global_position: u64,
        error: &str,
    ) -> Option<(Uuid, u32)> {
        let attempts = match failures {
            Some((id, n)) if id == event_id => n + 1,
            _ => 1,
        };
        metrics::counter!("strata_projection_errors_total", "projection" => self.name().to_owned())
            .increment(1);
        tracing::warn!(projection = self.name(), %event_id, global_position, attempts, error, "an event failed");
        let parked = {
            let mut st = self.control.lock();
            let current = st.state == RunState::Running && !st.reset_requested && st.position == position;
            st.last_error = Some(error.to_owned());
            if current && attempts >= self.options.max_attempts {
                st.state = RunState::Faulted;
                st.fault = Some(Fault {
                    event_id,
                    position: global_position,
                    error: error.to_owned(),
                });
                true
            } else {
                false
            }
        };
        if parked {
            tracing::error!(projection = self.name(), %event_id, global_position, error, "parked as faulted");
            return None;
        }
        self.wait(self.options.backoff(attempts + 1), None).await;
        Some((event_id, attempts))
    }

    /// Set the lag gauges (`strata_projection_head`, `_lag_events`,
    /// `_lag_positions`, `_lag_seconds`): nothing behind when caught up,
    /// else counted, at most every [`LAG_EVERY`].
    async fn count_lag(&self, position: u64, caught_up: bool, last: &mut Option<Instant>) {
        let lag = if caught_up {
            Lag {
                events: 0,
                head: position,
                oldest: None,
            }
        } else {
            if last.is_some_and(|t| t.elapsed() < LAG_EVERY) {
                return;
            }
            match self.control.lag(position).await {
                Ok(lag) => lag,
                Err(e) => {
                    tracing::debug!(projection = self.name(), error = %e, "could not count the lag");
                    return;
                }
            }
        };
        *last = Some(Instant::now());
        let name = self.name().to_owned();
        metrics::gauge!("strata_projection_head", "projection" => name.clone()).set(lag.head as f64);
        metrics::gauge!("strata_projection_lag_events", "projection" => name.clone()).set(lag.events as f64);
        metrics::gauge!("strata_projection_lag_positions", "projection" => name.clone())
            .set(lag.head.saturating_sub(position) as f64);
        metrics::gauge!("strata_projection_lag_seconds", "projection" => name).set(lag.seconds());
    }
}
