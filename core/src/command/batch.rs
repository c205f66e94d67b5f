//! The per-stream command line of a [`CommandHandler`](super::CommandHandler):
//! commands for one stream wait their turn, and those that queued up while
//! an append was in flight are decided in order and appended together.
//!
//! Each stream with commands in flight has a line: a chain of batches, each
//! a shared future that first waits for the batch before it. A command
//! joins the last batch if that one has not started (and has room), else it
//! starts a new batch behind it. Every command's caller polls the batch it
//! is in, and a batch polls the one before it, so a batch goes on as long
//! as anyone waits for it or for a later one: a caller that gives up does
//! not strand the others. When the last one gives up, the batch is
//! finished on a task of the runtime ([`Finish`]).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::task::{Context, Poll};

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::FutureExt;
use futures_util::future::{BoxFuture, Shared};
use futures_util::task::{ArcWake, waker};
use tracing::Instrument;
use uuid::Uuid;

use super::{CommandError, CommandOutcome, Inner, encode_events};
use crate::aggregate::Aggregate;
use crate::error::Error;
use crate::event::{Envelope, Event, Metadata, StreamId};
use crate::store::{AppendResult, CommandDecision, CommandRecord, EventStore, ExpectedVersion};

/// One submitted command.
pub(super) struct Job<A: Aggregate> {
    pub(super) command: A::Command,
    pub(super) command_id: Uuid,
    /// Whether the caller chose the id (then the outcome is recorded).
    pub(super) explicit_id: bool,
    pub(super) metadata: Metadata,
}

/// What a command's caller gets.
pub(super) type Reply<A> =
    Result<CommandOutcome<<A as Aggregate>::Event>, CommandError<<A as Aggregate>::Error>>;

/// The replies of a batch, in the order its commands joined; each caller
/// takes its own.
pub(super) type Replies<A> = Arc<Vec<Mutex<Option<Reply<A>>>>>;

/// A batch: runs once, polled by every caller waiting on it.
pub(super) type Run<A> = Shared<BoxFuture<'static, Replies<A>>>;

struct Line<A: Aggregate> {
    /// The last batch of the line.
    generation: u64,
    run: Run<A>,
    /// Its commands, while it has not started (others may still join).
    open: Option<Arc<Mutex<Vec<Job<A>>>>>,
}

/// The lines of all streams with commands in flight, shared by a handler's
/// clones.
pub(super) struct Lines<A: Aggregate> {
    lines: Mutex<HashMap<StreamId, Line<A>>>,
    generations: AtomicU64,
}

impl<A: Aggregate> Default for Lines<A> {
    fn default() -> Self {
        Lines {
            lines: Mutex::new(HashMap::new()),
            generations: AtomicU64::new(0),
        }
    }
}

/// Drives a batch to its end on a task of its own if its caller stops
/// waiting first, so it does not stay half-done (holding a connection,
/// say) until the next command for its stream comes.
pub(super) struct Finish<A: Aggregate>(pub(super) Option<Run<A>>);

impl<A: Aggregate> Drop for Finish<A> {
    fn drop(&mut self) {
        if let Some(run) = self.0.take()
            && run.peek().is_none()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(run.map(drop));
        }
    }
}

/// Polls a batch (a [`Shared`] future) without the wake-up a shared future
/// gives the task that completes it.
///
/// A shared future that completes wakes every task waiting on it, the one
/// polling it as well. Tokio then schedules that task again and wakes an
/// idle worker for it: a spurious poll on the other worker per command
/// (measured on one writer: two futex calls and about one and a half
/// context switches more per command than a bare append). Here the
/// shared future gets a waker that, while this poll runs, only notes a
/// wake, and passes it on afterwards if the poll is still pending; a wake
/// at any other time passes straight through.
pub(super) struct Quiet<F> {
    inner: F,
    gate: Option<Arc<Gate>>,
}

impl<F> Quiet<F> {
    pub(super) fn new(inner: F) -> Self {
        Quiet { inner, gate: None }
    }
}

/// The waker a [`Quiet`] future hands on: its poller's waker, held back
/// while the poll runs.
struct Gate {
    waker: std::task::Waker,
    state: AtomicU8,
}

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

impl ArcWake for Gate {
    fn wake_by_ref(gate: &Arc<Self>) {
        match gate
            .state
            .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) | Err(WOKEN) => {}
            Err(_) => gate.waker.wake_by_ref(),
        }
    }
}

impl<F: Future + Unpin> Future for Quiet<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.get_mut();
        let gate = match &this.gate {
            Some(gate) if gate.waker.will_wake(cx.waker()) => Arc::clone(gate),
            _ => {
                let gate = Arc::new(Gate {
                    waker: cx.waker().clone(),
                    state: AtomicU8::new(IDLE),
                });
                this.gate = Some(Arc::clone(&gate));
                gate
            }
        };
        gate.state.store(POLLING, Ordering::Release);
        let gated = waker(Arc::clone(&gate));
        let polled = Pin::new(&mut this.inner).poll(&mut Context::from_waker(&gated));
        if gate.state.swap(IDLE, Ordering::AcqRel) == WOKEN && polled.is_pending() {
            cx.waker().wake_by_ref();
        }
        polled
    }
}

/// A lock whose holder cannot leave the data half-changed.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// Take reply `index` of `replies`.
pub(super) fn take<A: Aggregate>(replies: &Replies<A>, index: usize) -> Reply<A> {
    replies
        .get(index)
        .and_then(|slot| lock(slot).take())
        .unwrap_or_else(|| {
            Err(CommandError::Store(Error::Backend(
                "a command's reply was taken twice".into(),
            )))
        })
}

impl<A: Aggregate> Lines<A> {
    /// Put `job` in `stream`'s line: the batch it will run in, and its
    /// place there.
    pub(super) fn enqueue<S: EventStore>(
        self: &Arc<Self>,
        inner: &Arc<Inner<A, S>>,
        stream: &StreamId,
        job: Job<A>,
    ) -> (Run<A>, usize) {
        let max = inner.options.max_batch.max(1);
        let mut lines = lock(&self.lines);
        let before = match lines.get(stream) {
            Some(line) => {
                if let Some(open) = &line.open {
                    let mut jobs = lock(open);
                    if jobs.len() < max {
                        jobs.push(job);
                        return (line.run.clone(), jobs.len() - 1);
                    }
                }
                Some(line.run.clone())
            }
            None => None,
        };
        let generation = self.generations.fetch_add(1, Ordering::Relaxed);
        let open = Arc::new(Mutex::new(vec![job]));
        let run = run_batch(
            Arc::clone(inner),
            Arc::downgrade(self),
            stream.clone(),
            generation,
            before,
            Arc::clone(&open),
        )
        .boxed()
        .shared();
        let line = Line {
            generation,
            run: run.clone(),
            open: Some(open),
        };
        lines.insert(stream.clone(), line);
        (run, 0)
    }
}

/// A batch: wait for the one before, close the batch to newcomers, run
/// its commands, and take the line down if no batch came after.
async fn run_batch<A: Aggregate, S: EventStore>(
    inner: Arc<Inner<A, S>>,
    lines: Weak<Lines<A>>,
    stream: StreamId,
    generation: u64,
    before: Option<Run<A>>,
    open: Arc<Mutex<Vec<Job<A>>>>,
) -> Replies<A> {
    if let Some(before) = before {
        Quiet::new(before).await;
    }
    if let Some(lines) = lines.upgrade()
        && let Some(line) = lock(&lines.lines).get_mut(&stream)
        && line.generation == generation
    {
        line.open = None;
    }
    let jobs = std::mem::take(&mut *lock(&open));
    let count = jobs.len();
    metrics::histogram!("strata_command_batch_commands", "aggregate" => A::TYPE).record(count as f64);
    let span = tracing::debug_span!("command_batch", aggregate = A::TYPE, stream = %stream, commands = count);
    // A panic in the aggregate's code fails this batch's commands, not the
    // line: the batches behind it go on.
    let running = AssertUnwindSafe(inner.run_jobs(&stream, jobs).instrument(span));
    let replies = match running.catch_unwind().await {
        Ok(replies) => replies,
        Err(panic) => {
            inner.forget(&stream);
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            tracing::error!(stream = %stream, panic = %message, "a command batch panicked");
            (0..count)
                .map(|_| {
                    let e = format!("a command of its batch panicked (deciding or applying): {message}");
                    Err(CommandError::Store(Error::Backend(e.into())))
                })
                .collect()
        }
    };
    if let Some(lines) = lines.upgrade() {
        let mut lines = lock(&lines.lines);
        // Unless a later batch took its place at the end of the line.
        if lines.get(&stream).is_some_and(|l| l.generation == generation) {
            lines.remove(&stream);
        }
    }
    Arc::new(replies.into_iter().map(|r| Mutex::new(Some(r))).collect())
}

/// A command of a batch, decided on the state its predecessors left.
enum Decision<A: Aggregate> {
    Appended {
        events: Vec<A::Event>,
        ids: Vec<Uuid>,
        /// The version of its first event.
        first: u64,
    },
    Unchanged {
        version: u64,
    },
    Refused {
        version: u64,
        refusal: A::Error,
        /// The refusal encoded, when it is to be recorded.
        encoded: Option<serde_json::Value>,
    },
}

impl<A: Aggregate, S: EventStore> Inner<A, S> {
    /// Run a batch's commands. Commands that repeat an id of the batch wait
    /// for a later round, where they find the first one's record.
    async fn run_jobs(self: &Arc<Self>, stream: &StreamId, jobs: Vec<Job<A>>) -> Vec<Reply<A>> {
        let mut replies: Vec<Option<Reply<A>>> = jobs.iter().map(|_| None).collect();
        let mut rounds: VecDeque<Vec<usize>> = VecDeque::new();
        let mut seen: HashMap<Uuid, usize> = HashMap::new();
        for (i, job) in jobs.iter().enumerate() {
            let round = match job.explicit_id {
                true => {
                    let n = seen.entry(job.command_id).or_default();
                    *n += 1;
                    *n - 1
                }
                false => 0,
            };
            if rounds.len() <= round {
                rounds.resize_with(round + 1, Vec::new);
            }
            rounds[round].push(i);
        }
        while let Some(round) = rounds.pop_front() {
            if let Some(split) = self.run_round(stream, &jobs, round, &mut replies).await {
                // One command's events cannot be stored: each on its own,
                // so the others go on.
                for i in split.into_iter().rev() {
                    rounds.push_front(vec![i]);
                }
            }
        }
        replies
            .into_iter()
            .map(|r| {
                r.unwrap_or_else(|| {
                    Err(CommandError::Store(Error::Backend(
                        "a command got no outcome".into(),
                    )))
                })
            })
            .collect()
    }

    /// Decide `live` (commands with distinct ids) in order on the stream's
    /// state and append them together, deciding again on a conflict.
    /// Returns the commands to run one by one instead, when their
    /// append was refused for what it held and there are several.
    async fn run_round(
        self: &Arc<Self>,
        stream: &StreamId,
        jobs: &[Job<A>],
        live: Vec<usize>,
        replies: &mut [Option<Reply<A>>],
    ) -> Option<Vec<usize>> {
        let mut live = self.answer_recorded(stream, jobs, live, replies).await;
        // Built at the first conflict: most rounds have none.
        let mut delays = None;
        let mut retries = 0;
        // The state to decide on next, when already known: caught up after
        // a conflict or before outcomes without events.
        let mut known = None;
        while !live.is_empty() {
            let (state, version, fresh) = match known.take() {
                Some((state, version)) => (state, version, true),
                None => match self.lookup(stream).await {
                    Ok(found) => found,
                    Err(e) => return self.fail(stream, &live, e, replies, CommandError::Store),
                },
            };
            // Decide each command on the state the ones before it left.
            let mut next: Option<A> = None;
            let mut at = version;
            let mut new_events = Vec::new();
            let mut decided = Vec::with_capacity(live.len());
            for &i in &live {
                let job = &jobs[i];
                let current = next.as_ref().unwrap_or(&state);
                let decision = match current.decide(&job.command) {
                    Ok(events) if events.is_empty() => Decision::Unchanged { version: at },
                    Ok(events) => {
                        match encode_events::<A::Event>(
                            &events,
                            job.command_id,
                            job.explicit_id,
                            &job.metadata,
                        ) {
                            Ok(encoded) => {
                                let state = next.get_or_insert_with(|| A::clone(&state));
                                for e in &events {
                                    state.apply(e);
                                }
                                let first = at + 1;
                                at += events.len() as u64;
                                let ids = encoded.iter().map(|e| e.event_id).collect();
                                new_events.extend(encoded);
                                Decision::Appended { events, ids, first }
                            }
                            // This command's events cannot be encoded.
                            Err(e) => {
                                replies[i] = Some(Err(e.into()));
                                continue;
                            }
                        }
                    }
                    Err(refusal) => {
                        let encoded = match job.explicit_id.then(|| serde_json::to_value(&refusal)) {
                            Some(Err(e)) => {
                                let e = Error::encode(format!("refusal of command {}", job.command_id), e);
                                replies[i] = Some(Err(e.into()));
                                continue;
                            }
                            Some(Ok(value)) => Some(value),
                            None => None,
                        };
                        Decision::Refused {
                            version: at,
                            refusal,
                            encoded,
                        }
                    }
                };
                decided.push((i, decision));
            }
            if decided.len() != live.len() {
                live = decided.iter().map(|(i, _)| *i).collect();
            }
            if decided.is_empty() {
                return None;
            }
            // No append will check the version a cached state was decided
            // on: check that no event came after it.
            if new_events.is_empty() && !fresh {
                match self.catch_up(stream, Arc::clone(&state), version).await {
                    Ok((current, current_version)) if current_version != version => {
                        known = Some((current, current_version));
                        continue;
                    }
                    Ok(_) => {}
                    Err(e) => return self.fail(stream, &live, e, replies, CommandError::Store),
                }
            }
            let records = records(stream, jobs, &decided);
            let expected = ExpectedVersion::Exact(version);
            let written = if records.is_empty() && new_events.is_empty() {
                Ok(AppendResult {
                    stream_version: version,
                    positions: Vec::new(),
                })
            } else if records.is_empty() {
                self.store.append(stream, expected, new_events).await
            } else {
                self.store
                    .append_commands(stream, expected, new_events, records)
                    .await
            };
            match written {
                Ok(result) => {
                    let state = match next {
                        Some(next) => Arc::new(next),
                        None => state,
                    };
                    self.answer(
                        stream, jobs, decided, version, at, state, result, retries, replies,
                    )
                    .await;
                    return None;
                }
                // A command of the batch was decided first elsewhere (or by
                // a try of this append whose answer was lost).
                Err(Error::CommandAlreadyRecorded { .. }) => {
                    self.forget(stream);
                    let before = live.len();
                    live = self.answer_recorded(stream, jobs, live, replies).await;
                    if live.len() == before {
                        let e = Error::Backend("the store names a command record it cannot find".into());
                        return self.fail(stream, &live, e, replies, CommandError::Store);
                    }
                }
                Err(conflict @ Error::Conflict { .. }) => {
                    if retries >= self.options.max_retries {
                        let attempts = retries + 1;
                        return self.fail(stream, &live, conflict, replies, |last| {
                            CommandError::TooManyConflicts {
                                stream: stream.to_string(),
                                attempts,
                                last,
                            }
                        });
                    }
                    retries += 1;
                    metrics::counter!("strata_command_conflicts_total", "aggregate" => A::TYPE).increment(1);
                    let delay = delays
                        .get_or_insert_with(|| {
                            ExponentialBuilder::default()
                                .with_min_delay(self.options.min_backoff)
                                .with_max_delay(self.options.max_backoff)
                                .with_jitter()
                                .without_max_times()
                                .build()
                        })
                        .next()
                        .unwrap_or(self.options.max_backoff);
                    tracing::debug!(
                        retries,
                        ?delay,
                        commands = live.len(),
                        "version conflict, deciding again"
                    );
                    futures_timer::Delay::new(delay).await;
                    // Without the cache, the next round loads the stream.
                    if self.cache.is_some() {
                        match self.catch_up(stream, state, version).await {
                            Ok(current) => known = Some(current),
                            Err(e) => return self.fail(stream, &live, e, replies, CommandError::Store),
                        }
                    }
                }
                Err(e) if e.is_invalid_input() && live.len() > 1 => return Some(live),
                Err(e) => return self.fail(stream, &live, e, replies, CommandError::Store),
            }
        }
        None
    }

    /// Answer the commands of `live` whose id has a record with that
    /// first outcome; the others are returned.
    async fn answer_recorded(
        &self,
        stream: &StreamId,
        jobs: &[Job<A>],
        live: Vec<usize>,
        replies: &mut [Option<Reply<A>>],
    ) -> Vec<usize> {
        if !live.iter().any(|&i| jobs[i].explicit_id) {
            return live;
        }
        let (with_ids, mut rest): (Vec<usize>, Vec<usize>) =
            live.into_iter().partition(|&i| jobs[i].explicit_id);
        let ids: Vec<Uuid> = with_ids.iter().map(|&i| jobs[i].command_id).collect();
        let mut found: HashMap<Uuid, CommandRecord> = match self.store.read_commands(&ids).await {
            Ok(records) => records.into_iter().map(|r| (r.command_id, r)).collect(),
            Err(e) => {
                self.fail(stream, &with_ids, e, replies, CommandError::Store);
                return rest;
            }
        };
        for i in with_ids {
            match found.remove(&jobs[i].command_id) {
                Some(first) => replies[i] = Some(self.recorded_outcome(stream, first).await),
                None => rest.push(i),
            }
        }
        // In the order the commands came.
        rest.sort_unstable();
        rest
    }

    /// Answer every command of `live` with `error`, made into each one's
    /// error by `wrap`, and forget the stream's cached state.
    fn fail(
        &self,
        stream: &StreamId,
        live: &[usize],
        error: Error,
        replies: &mut [Option<Reply<A>>],
        wrap: impl Fn(Error) -> CommandError<A::Error>,
    ) -> Option<Vec<usize>> {
        self.forget(stream);
        if let Some((&first, others)) = live.split_first() {
            for &i in others {
                replies[i] = Some(Err(wrap(error.duplicate())));
            }
            replies[first] = Some(Err(wrap(error)));
        }
        None
    }

    /// After the batch's append: cache and snapshot the state, and answer
    /// each command with its own outcome.
    #[allow(clippy::too_many_arguments)]
    async fn answer(
        self: &Arc<Self>,
        stream: &StreamId,
        jobs: &[Job<A>],
        decided: Vec<(usize, Decision<A>)>,
        version: u64,
        at: u64,
        state: Arc<A>,
        result: AppendResult,
        retries: usize,
        replies: &mut [Option<Reply<A>>],
    ) {
        // The store may answer a re-appended batch with where it first
        // went: then the versions shift, and this state is not the one at
        // that version.
        let appended = at - version;
        let base = result.stream_version.saturating_sub(appended);
        if appended > 0 {
            self.maybe_snapshot(stream, version, result.stream_version, &state)
                .await;
        }
        if let Some(cache) = &self.cache {
            if base == version {
                cache.put(stream, state, at);
            } else {
                cache.remove(stream);
            }
        }
        let mut positions = result.positions.into_iter();
        for (i, decision) in decided {
            let job = &jobs[i];
            replies[i] = Some(match decision {
                Decision::Appended { events, ids, first } => {
                    let first = first - version + base;
                    let count = events.len() as u64;
                    let envelopes = ids
                        .into_iter()
                        .zip(events)
                        .zip(positions.by_ref())
                        .enumerate()
                        .map(|(n, ((event_id, event), position))| Envelope {
                            event_id,
                            stream_id: stream.clone(),
                            stream_version: first + n as u64,
                            global_position: Some(position),
                            event_type: event.event_type().to_owned(),
                            schema_version: A::Event::current_version(event.event_type()),
                            metadata: job.metadata.clone(),
                            recorded_at: None,
                            event,
                        })
                        .collect();
                    Ok(CommandOutcome {
                        stream_id: stream.clone(),
                        stream_version: first + count - 1,
                        events: envelopes,
                        retries,
                        deduplicated: false,
                    })
                }
                Decision::Unchanged { version } => Ok(CommandOutcome {
                    stream_id: stream.clone(),
                    stream_version: version,
                    events: Vec::new(),
                    retries,
                    deduplicated: false,
                }),
                Decision::Refused { refusal, .. } => Err(CommandError::Domain(refusal)),
            });
        }
    }
}

/// The records of the decided commands that carry a caller's id.
fn records<A: Aggregate>(
    stream: &StreamId,
    jobs: &[Job<A>],
    decided: &[(usize, Decision<A>)],
) -> Vec<CommandRecord> {
    decided
        .iter()
        .filter(|(i, _)| jobs[*i].explicit_id)
        .map(|(i, decision)| CommandRecord {
            command_id: jobs[*i].command_id,
            stream_id: stream.clone(),
            decision: match decision {
                Decision::Appended { events, first, .. } => CommandDecision::Appended {
                    first_version: *first,
                    last_version: first + events.len() as u64 - 1,
                },
                Decision::Unchanged { version } => CommandDecision::Unchanged { version: *version },
                Decision::Refused { version, encoded, .. } => CommandDecision::Refused {
                    version: *version,
                    refusal: encoded.clone().unwrap_or_default(),
                },
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::pin::Pin;
    use std::sync::Arc;
    use std::sync::Mutex;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::{Context, Poll, Waker};

    use futures_util::FutureExt;
    use futures_util::task::{ArcWake, waker};

    use super::Quiet;

    /// Counts the wakes of a task.
    #[derive(Default)]
    struct Wakes(AtomicUsize);

    impl ArcWake for Wakes {
        fn wake_by_ref(wakes: &Arc<Self>) {
            wakes.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn poll_with<F: Future + Unpin>(future: &mut F, wakes: &Arc<Wakes>) -> Poll<F::Output> {
        let waker = waker(Arc::clone(wakes));
        Pin::new(future).poll(&mut Context::from_waker(&waker))
    }

    /// Pending until polled twice; wakes its poller during the first poll
    /// if `wake_at_once`, else keeps the waker in `kept`.
    struct Twice {
        polls: usize,
        wake_at_once: bool,
        kept: Arc<Mutex<Option<Waker>>>,
    }

    impl Future for Twice {
        type Output = u8;

        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<u8> {
            self.polls += 1;
            if self.polls > 1 {
                return Poll::Ready(7);
            }
            if self.wake_at_once {
                cx.waker().wake_by_ref();
            } else {
                *self.kept.lock().unwrap() = Some(cx.waker().clone());
            }
            Poll::Pending
        }
    }

    fn twice(wake_at_once: bool) -> (Twice, Arc<Mutex<Option<Waker>>>) {
        let kept = Arc::new(Mutex::new(None));
        let future = Twice {
            polls: 0,
            wake_at_once,
            kept: Arc::clone(&kept),
        };
        (future, kept)
    }

    #[test]
    fn a_batch_that_completes_does_not_wake_its_poller() {
        // Without the wrapper, the shared future wakes the task that
        // completes it.
        let wakes = Arc::new(Wakes::default());
        let mut plain = async { 5 }.boxed().shared();
        assert_eq!(poll_with(&mut plain, &wakes), Poll::Ready(5));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);

        let wakes = Arc::new(Wakes::default());
        let mut quiet = Quiet::new(async { 5 }.boxed().shared());
        assert_eq!(poll_with(&mut quiet, &wakes), Poll::Ready(5));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn a_wake_during_a_pending_poll_is_passed_on() {
        let wakes = Arc::new(Wakes::default());
        let mut quiet = Quiet::new(twice(true).0.boxed().shared());
        assert_eq!(poll_with(&mut quiet, &wakes), Poll::Pending);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_with(&mut quiet, &wakes), Poll::Ready(7));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
    }

    #[test]
    fn a_wake_after_the_poll_passes_straight_through() {
        let wakes = Arc::new(Wakes::default());
        let (future, kept) = twice(false);
        let mut quiet = Quiet::new(future.boxed().shared());
        assert_eq!(poll_with(&mut quiet, &wakes), Poll::Pending);
        assert_eq!(wakes.0.load(Ordering::SeqCst), 0);
        kept.lock().unwrap().take().expect("a kept waker").wake();
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(poll_with(&mut quiet, &wakes), Poll::Ready(7));
    }
}
