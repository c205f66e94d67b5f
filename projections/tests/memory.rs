//! The in-memory projection daemon, no server needed: catch-up and live,
//! upcasting, filtered feeds, atomic batches, a poison event parked and
//! skipped, pause, reset, read-your-writes and shutdown.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

use strata_core::error::BoxError;
use strata_core::testing::fixtures::bank::BankEvent;
use strata_core::testing::fixtures::counter::{CounterEvent, added};
use strata_core::{
    Envelope, EventStore, ExpectedVersion, InMemoryEventStore, LogFilter, Metadata, NewEvent, StreamId, Uuid,
    json,
};
use strata_projections::memory::{MemoryDaemon, MemoryProjection, MemoryStatus, ReadModel, RunState};
use strata_projections::{Projection, ProjectionError, RunnerOptions};
use tokio::sync::{Notify, oneshot};

/// What `Counts` builds: events per stream, and every event it was given.
#[derive(Debug, Clone, Default, PartialEq)]
struct Tally {
    per_stream: BTreeMap<String, u64>,
    /// Events handed to `apply`, counted before it fails on a poison one:
    /// a failed batch that was published anyway shows here.
    given: u64,
    /// Events handed to `apply` that were not of the `counter` category.
    foreign: u64,
}

/// Counts the events of the `counter` category per stream.
struct Counts {
    name: &'static str,
    filter: LogFilter,
    /// Fail on events adding this number.
    poison: Option<u64>,
    /// Panic on events adding this number.
    panic_on: Option<u64>,
    /// Calls of `apply`, published or not.
    calls: Arc<AtomicU64>,
    /// Calls of `apply` with the poison event.
    poison_calls: Arc<AtomicU64>,
    /// When set, `apply` of an event adding `gate.n` waits for the gate.
    gate: Option<Arc<Gate>>,
}

/// Holds one `apply` until released, telling the test it was entered.
struct Gate {
    n: u64,
    entered: Notify,
    released: Mutex<bool>,
    release: Condvar,
}

impl Gate {
    fn new(n: u64) -> Arc<Self> {
        Arc::new(Gate {
            n,
            entered: Notify::new(),
            released: Mutex::new(false),
            release: Condvar::new(),
        })
    }

    fn open(&self) {
        *self.released.lock().expect("gate") = true;
        self.release.notify_all();
    }
}

impl Counts {
    fn new(name: &'static str) -> Self {
        Counts {
            name,
            filter: LogFilter::categories(["counter"]),
            poison: None,
            panic_on: None,
            calls: Arc::new(AtomicU64::new(0)),
            poison_calls: Arc::new(AtomicU64::new(0)),
            gate: None,
        }
    }
}

impl Projection for Counts {
    type Event = CounterEvent;

    fn name(&self) -> &str {
        self.name
    }

    fn filter(&self) -> LogFilter {
        self.filter.clone()
    }
}

impl MemoryProjection for Counts {
    type Model = Tally;

    fn apply(&self, model: &mut Tally, event: &Envelope<CounterEvent>) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let CounterEvent::Added { n, .. } = &event.event;
        if let Some(gate) = self.gate.as_ref().filter(|g| g.n == *n) {
            gate.entered.notify_one();
            let mut released = gate.released.lock().expect("gate");
            while !*released {
                released = gate.release.wait(released).expect("gate");
            }
        }
        model.given += 1;
        if event.stream_id.category() != "counter" {
            model.foreign += 1;
        }
        if Some(*n) == self.poison {
            self.poison_calls.fetch_add(1, Ordering::SeqCst);
            return Err(format!("cannot count {n}").into());
        }
        if Some(*n) == self.panic_on {
            panic!("will not count {n}");
        }
        *model.per_stream.entry(event.stream_id.to_string()).or_default() += 1;
        Ok(())
    }
}

fn fast_options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 7,
        max_wait: Duration::from_millis(50),
        max_attempts: 3,
        retry_backoff: Duration::from_millis(10),
        ..RunnerOptions::default()
    }
}

const WAIT: Duration = Duration::from_secs(10);

/// Append `per_stream` events adding `n` to each of `streams` counters,
/// each followed by one event of another category; the last position.
async fn append(
    store: &InMemoryEventStore,
    streams: usize,
    per_stream: usize,
    n: u64,
) -> Result<u64, BoxError> {
    let mut last = 0;
    for s in 0..streams {
        let events: Vec<NewEvent> = (0..per_stream)
            .map(|_| NewEvent::from_event(&added(n), Metadata::default()))
            .collect::<Result<_, _>>()?;
        let stream = StreamId::for_aggregate("counter", &s.to_string())?;
        store.append(&stream, ExpectedVersion::Any, events).await?;
        last = append_to(store, "other", &s.to_string(), 1).await?;
    }
    Ok(last)
}

/// Append one event adding `n` to stream `id` of `category`; its position.
async fn append_to(store: &InMemoryEventStore, category: &str, id: &str, n: u64) -> Result<u64, BoxError> {
    let event = NewEvent::from_event(&added(n), Metadata::default())?;
    let stream = StreamId::for_aggregate(category, id)?;
    Ok(store
        .append(&stream, ExpectedVersion::Any, vec![event])
        .await?
        .positions[0])
}

/// Events of the `counter` category up to `position`.
async fn counter_events_up_to(store: &InMemoryEventStore, position: u64) -> Result<u64, BoxError> {
    let all = store.read_all(0, usize::MAX).await?;
    Ok(all
        .iter()
        .filter(|e| e.global_position <= position && e.stream_id.category() == "counter")
        .count() as u64)
}

type Stop = oneshot::Sender<()>;
type Task = tokio::task::JoinHandle<Result<(), ProjectionError>>;

fn spawn(daemon: MemoryDaemon) -> (Stop, Task) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

async fn stop(stop: Stop, task: Task) -> Result<(), BoxError> {
    stop.send(()).ok();
    tokio::time::timeout(WAIT, task).await???;
    Ok(())
}

/// Poll the status until `done` holds.
async fn wait_until<M>(
    model: &ReadModel<M>,
    done: impl Fn(&MemoryStatus) -> bool,
) -> Result<MemoryStatus, BoxError> {
    let started = std::time::Instant::now();
    loop {
        let status = model.control().status().await?;
        if done(&status) {
            return Ok(status);
        }
        if started.elapsed() > WAIT {
            return Err(format!("gave up waiting; last status {status:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn assert_counts(tally: &Tally, streams: usize, per_stream: u64) {
    assert_eq!(tally.per_stream.len(), streams, "{tally:?}");
    for (stream, n) in &tally.per_stream {
        assert_eq!(*n, per_stream, "stream {stream}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_catches_up_then_follows_live() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    append(&store, 10, 20, 1).await?;
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let counts = daemon.register(Counts::new("counts"))?;
    let (stop_tx, task) = spawn(daemon);

    let head = append(&store, 10, 1, 1).await?;
    counts.wait_for(head, WAIT).await?;
    counts.read(|t| assert_counts(t, 10, 21));

    // Live: one more event each, read back through the projection.
    let head = append(&store, 10, 1, 1).await?;
    counts.wait_for(head, WAIT).await?;
    counts.read(|t| assert_counts(t, 10, 22));

    let status = counts.control().status().await?;
    assert_eq!(status.state, RunState::Running);
    assert_eq!(status.events_applied, 220, "only the counter category is applied");
    assert_eq!((status.position, status.head, status.lag_events), (head, head, 0));
    assert_eq!(status.last_error, None);
    stop(stop_tx, task).await
}

/// Sums deposits; remembers the schema versions it was given.
struct Deposits;

impl Projection for Deposits {
    type Event = BankEvent;

    fn name(&self) -> &str {
        "deposits"
    }
}

impl MemoryProjection for Deposits {
    type Model = (u64, Vec<u32>);

    fn apply(&self, model: &mut (u64, Vec<u32>), event: &Envelope<BankEvent>) -> Result<(), BoxError> {
        if let BankEvent::Deposited { amount } = event.event {
            model.0 += amount;
            model.1.push(event.schema_version);
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_event_reaches_the_projection_upcast() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    let account = StreamId::for_aggregate("account", "1")?;
    // A `Deposited` as schema v1 wrote it (`value`), then one at v2.
    let v1 = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Deposited".to_owned(),
        schema_version: 1,
        payload: json!({ "value": 7 }),
        metadata: Metadata::default(),
    };
    let v2 = NewEvent::from_event(&BankEvent::Deposited { amount: 5 }, Metadata::default())?;
    assert_eq!(v2.schema_version, 2);
    let head = store
        .append(&account, ExpectedVersion::Any, vec![v1, v2])
        .await?
        .positions[1];

    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let deposits = daemon.register(Deposits)?;
    let (stop_tx, task) = spawn(daemon);
    deposits.wait_for(head, WAIT).await?;
    assert_eq!(deposits.read(|m| m.clone()), (12, vec![2, 2]));
    assert_eq!(deposits.control().status().await?.last_error, None);
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_filtered_projection_is_given_only_its_events_and_still_reaches_the_head() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    // Three counter events among 300 of other categories (of the same
    // event type, so that only the category tells them apart).
    for i in 0..100 {
        if i % 40 == 0 {
            append_to(&store, "counter", "1", 1).await?;
        }
        append_to(&store, "other", "1", 1).await?;
        append_to(&store, "noise", &i.to_string(), 1).await?;
    }
    let head = append_to(&store, "other", "2", 1).await?;
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let counts = daemon.register(Counts::new("filtered"))?;
    let (stop_tx, task) = spawn(daemon);

    counts.wait_for(head, WAIT).await?;
    counts.read(|t| {
        assert_eq!((t.given, t.foreign), (3, 0), "{t:?}");
        assert_counts(t, 1, 3);
    });
    // Live, events it does not want still move it to the head.
    let head = append_to(&store, "noise", "x", 1).await?;
    counts.wait_for(head, WAIT).await?;
    let status = counts.control().status().await?;
    assert_eq!(
        (status.position, status.lag_events, status.events_applied),
        (head, 0, 3)
    );
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_parks_its_projection_alone_until_skipped() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    append(&store, 3, 5, 1).await?;
    let poisoned_id;
    let poisoned = {
        let event = NewEvent::from_event(&added(13), Metadata::default())?;
        poisoned_id = event.event_id;
        let stream = StreamId::for_aggregate("counter", "1")?;
        store
            .append(&stream, ExpectedVersion::Any, vec![event])
            .await?
            .positions[0]
    };
    let head = append(&store, 3, 5, 1).await?;
    let picky = Counts {
        poison: Some(13),
        ..Counts::new("picky")
    };
    let tries = picky.poison_calls.clone();
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let picky = daemon.register(picky)?;
    let tolerant = daemon.register(Counts::new("tolerant"))?;
    let (stop_tx, task) = spawn(daemon);

    // The other projection reaches the head.
    tolerant.wait_for(head, WAIT).await?;
    // This one parks at the poison event, tried `max_attempts` times, with
    // the events before it applied and nothing of the failed batch.
    let status = wait_until(&picky, |s| s.state == RunState::Faulted).await?;
    assert_eq!(status.fault_event_id, Some(poisoned_id));
    assert_eq!(status.fault_position, Some(poisoned));
    assert!(status.position < poisoned, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("cannot count 13"),
        "{status:?}"
    );
    let snapshot = picky.snapshot();
    assert_eq!(snapshot.position, status.position);
    assert_eq!(
        snapshot.given,
        counter_events_up_to(&store, snapshot.position).await?
    );
    let before_poison = counter_events_up_to(&store, poisoned - 1).await?;
    assert_eq!(
        snapshot.given, before_poison,
        "the good prefix of the batch is published"
    );
    assert_eq!(tries.load(Ordering::SeqCst), 3, "max_attempts tries");
    let stuck = picky.wait_for(head, Duration::from_millis(200)).await;
    assert!(matches!(stuck, Err(ProjectionError::Timeout { .. })), "{stuck:?}");

    // Resuming tries the event again, and it parks again.
    picky.control().resume();
    let started = std::time::Instant::now();
    while tries.load(Ordering::SeqCst) < 6 && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let status = wait_until(&picky, |s| s.state == RunState::Faulted).await?;
    assert_eq!(tries.load(Ordering::SeqCst), 6, "{status:?}");
    assert_eq!(status.fault_event_id, Some(poisoned_id));

    // Skipping another event is refused; skipping this one lets it go on.
    let wrong = picky.control().skip(Uuid::now_v7());
    assert!(
        matches!(wrong, Err(ProjectionError::NotFaultedAt { .. })),
        "{wrong:?}"
    );
    picky.control().skip(poisoned_id)?;
    picky.wait_for(head, WAIT).await?;
    let (picky_tally, tolerant_tally) = (picky.read(Tally::clone), tolerant.read(Tally::clone));
    assert_eq!(
        picky_tally.per_stream["counter-1"] + 1,
        tolerant_tally.per_stream["counter-1"],
        "only the skipped event is missing"
    );
    assert_eq!(
        picky_tally.per_stream["counter-0"],
        tolerant_tally.per_stream["counter-0"]
    );
    let skipped = picky.control().skipped();
    assert_eq!(skipped.len(), 1, "{skipped:?}");
    assert_eq!(
        (skipped[0].event_id, skipped[0].position),
        (poisoned_id, poisoned)
    );
    assert!(
        skipped[0]
            .error
            .as_deref()
            .unwrap_or("")
            .contains("cannot count 13")
    );
    let status = picky.control().status().await?;
    assert_eq!(
        (status.state, status.fault_event_id, status.last_error),
        (RunState::Running, None, None)
    );
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_that_cannot_be_decoded_parks_the_projection_like_a_failing_one() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    append(&store, 2, 3, 1).await?;
    let bad = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Added".to_owned(),
        schema_version: 1,
        payload: json!({ "not": "a counter event" }),
        metadata: Metadata::default(),
    };
    let bad_id = bad.event_id;
    let stream = StreamId::for_aggregate("counter", "0")?;
    let bad_position = store
        .append(&stream, ExpectedVersion::Any, vec![bad])
        .await?
        .positions[0];
    let head = append(&store, 2, 3, 1).await?;
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let counts = daemon.register(Counts::new("strict"))?;
    let (stop_tx, task) = spawn(daemon);

    let status = wait_until(&counts, |s| s.state == RunState::Faulted).await?;
    assert_eq!(
        (status.fault_event_id, status.fault_position),
        (Some(bad_id), Some(bad_position))
    );
    assert!(status.last_error.is_some(), "{status:?}");
    counts.control().skip(bad_id)?;
    counts.wait_for(head, WAIT).await?;
    counts.read(|t| assert_eq!(t.per_stream["counter-0"], 6));
    assert_eq!(counts.control().skipped()[0].event_id, bad_id);
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_apply_parks_its_projection_and_the_daemon_goes_on() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    append(&store, 1, 2, 1).await?;
    let panicked_at = append_to(&store, "counter", "0", 66).await?;
    let head = append(&store, 1, 2, 1).await?;
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let fragile = daemon.register(Counts {
        panic_on: Some(66),
        ..Counts::new("fragile")
    })?;
    let sturdy = daemon.register(Counts::new("sturdy"))?;
    let (stop_tx, task) = spawn(daemon);

    let status = wait_until(&fragile, |s| s.state == RunState::Faulted).await?;
    assert_eq!(status.fault_position, Some(panicked_at));
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("will not count 66"),
        "{status:?}"
    );
    sturdy.wait_for(head, WAIT).await?;
    // A fresh append still reaches the sturdy one: its runner lives on.
    let head = append_to(&store, "counter", "0", 1).await?;
    sturdy.wait_for(head, WAIT).await?;
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_never_see_a_model_that_does_not_match_its_position() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    // Counter events only: positions 1..=n, so `given` must equal the position.
    let mut head = 0;
    for s in 0..20 {
        let events: Vec<NewEvent> = (0..100)
            .map(|_| NewEvent::from_event(&added(1), Metadata::default()))
            .collect::<Result<_, _>>()?;
        let stream = StreamId::for_aggregate("counter", &s.to_string())?;
        head = *store
            .append(&stream, ExpectedVersion::Any, events)
            .await?
            .positions
            .last()
            .expect("positions");
    }
    // One event a batch: as many publications as events.
    let options = RunnerOptions {
        batch_size: 1,
        ..fast_options()
    };
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(options);
    let counts = daemon.register(Counts::new("consistent"))?;
    // A thread of its own, reading as fast as it can.
    let reader = std::thread::spawn({
        let counts = counts.clone();
        move || {
            let started = std::time::Instant::now();
            loop {
                let snapshot = counts.snapshot();
                if snapshot.given != snapshot.position {
                    return Err(format!(
                        "model {} at position {}",
                        snapshot.given, snapshot.position
                    ));
                }
                if snapshot.position == head {
                    return Ok(());
                }
                if started.elapsed() > WAIT {
                    return Err(format!("stuck at {}", snapshot.position));
                }
            }
        }
    });
    let (stop_tx, task) = spawn(daemon);
    let read = tokio::task::spawn_blocking(move || reader.join()).await?;
    read.map_err(|_| "the reader panicked")??;
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_projection_applies_nothing_until_resumed() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    let head = append(&store, 2, 2, 1).await?;
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let paused = daemon.register(Counts::new("paused"))?;
    let (stop_tx, task) = spawn(daemon);
    paused.wait_for(head, WAIT).await?;

    paused.control().pause();
    assert_eq!(paused.control().status().await?.state, RunState::Paused);
    let head = append(&store, 2, 1, 1).await?;
    let held = paused.wait_for(head, Duration::from_millis(300)).await;
    assert!(matches!(held, Err(ProjectionError::Timeout { .. })), "{held:?}");
    paused.read(|t| assert_counts(t, 2, 2));
    let status = paused.control().status().await?;
    assert_eq!((status.lag_events, status.head), (2, head), "{status:?}");

    paused.control().resume();
    paused.wait_for(head, WAIT).await?;
    paused.read(|t| assert_counts(t, 2, 3));
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reset_rebuilds_the_model_from_position_zero() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    let head = append(&store, 3, 4, 1).await?;
    let projection = Counts::new("reset");
    let calls = projection.calls.clone();
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let counts = daemon.register(projection)?;
    let (stop_tx, task) = spawn(daemon);
    counts.wait_for(head, WAIT).await?;
    assert_eq!(calls.load(Ordering::SeqCst), 12);

    counts.control().reset();
    // Every event is applied again, to an empty model.
    let started = std::time::Instant::now();
    while calls.load(Ordering::SeqCst) < 24 && started.elapsed() < WAIT {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    counts.wait_for(head, WAIT).await?;
    assert_eq!(calls.load(Ordering::SeqCst), 24);
    counts.read(|t| {
        assert_counts(t, 3, 4);
        assert_eq!(t.given, 12);
    });
    let status = counts.control().status().await?;
    assert_eq!((status.events_applied, status.position), (12, head));
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wait_for_returns_once_passed_and_times_out_with_a_typed_error() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    let head = append(&store, 1, 3, 1).await?;
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let counts = daemon.register(Counts::new("waited"))?;
    let (stop_tx, task) = spawn(daemon);

    counts.wait_for(head, WAIT).await?;
    // Already passed: at once.
    tokio::time::timeout(Duration::from_millis(100), counts.wait_for(1, WAIT)).await??;
    // Never reached.
    let started = std::time::Instant::now();
    let missed = counts.wait_for(head + 10, Duration::from_millis(150)).await;
    match missed {
        Err(ProjectionError::Timeout {
            name,
            position,
            reached,
            waited,
        }) => {
            assert_eq!((name.as_str(), position, reached), ("waited", head + 10, head));
            assert!(waited >= Duration::from_millis(150), "{waited:?}");
        }
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(started.elapsed() < Duration::from_secs(2));
    // A wait in progress returns when a later append is applied.
    let waiter = tokio::spawn({
        let counts = counts.clone();
        async move { counts.wait_for(head + 1, WAIT).await }
    });
    let next = append_to(&store, "counter", "0", 1).await?;
    assert_eq!(next, head + 1);
    waiter.await??;
    stop(stop_tx, task).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_batch_in_flight() -> Result<(), BoxError> {
    let store = InMemoryEventStore::new();
    for _ in 0..3 {
        append_to(&store, "counter", "0", 1).await?;
    }
    append_to(&store, "counter", "0", 5).await?;
    for _ in 0..10 {
        append_to(&store, "counter", "0", 1).await?;
    }
    let gate = Gate::new(5);
    let projection = Counts {
        gate: Some(gate.clone()),
        ..Counts::new("inflight")
    };
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let counts = daemon.register(projection)?;
    let (stop_tx, task) = spawn(daemon);

    // The first batch (positions 1..=7) is inside `apply` of position 4.
    tokio::time::timeout(WAIT, gate.entered.notified()).await?;
    stop_tx.send(()).ok();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!task.is_finished(), "the daemon returned with a batch in flight");
    gate.open();
    tokio::time::timeout(WAIT, task).await???;
    let snapshot = counts.snapshot();
    assert_eq!(
        (snapshot.position, snapshot.given),
        (7, 7),
        "the whole batch, and no other"
    );
    Ok(())
}

#[tokio::test]
async fn registration_refuses_bad_names_and_duplicates() -> Result<(), BoxError> {
    let mut daemon = MemoryDaemon::new(InMemoryEventStore::new());
    daemon.register(Counts::new("once"))?;
    let twice = daemon.register(Counts::new("once"));
    assert!(matches!(twice, Err(ProjectionError::Duplicate(_))), "{twice:?}");
    let bad = daemon.register(Counts::new("Not-A-Name"));
    assert!(matches!(bad, Err(ProjectionError::InvalidName { .. })), "{bad:?}");
    assert_eq!(daemon.control("once")?.name(), "once");
    let missing = daemon.control("nothing");
    assert!(
        matches!(missing, Err(ProjectionError::NotFound(_))),
        "{missing:?}"
    );
    Ok(())
}

/// A metrics recorder for this test binary: each metric's value (a
/// histogram's: how many values it recorded), by name and `projection`.
#[derive(Default)]
struct Recorded(Mutex<BTreeMap<String, Arc<Metric>>>);

#[derive(Default)]
struct Metric(Mutex<f64>);

impl metrics::CounterFn for Metric {
    fn increment(&self, value: u64) {
        *self.0.lock().expect("metric") += value as f64;
    }

    fn absolute(&self, value: u64) {
        let mut v = self.0.lock().expect("metric");
        *v = v.max(value as f64);
    }
}

impl metrics::GaugeFn for Metric {
    fn increment(&self, value: f64) {
        *self.0.lock().expect("metric") += value;
    }

    fn decrement(&self, value: f64) {
        *self.0.lock().expect("metric") -= value;
    }

    fn set(&self, value: f64) {
        *self.0.lock().expect("metric") = value;
    }
}

impl metrics::HistogramFn for Metric {
    fn record(&self, _: f64) {
        *self.0.lock().expect("metric") += 1.0;
    }
}

impl Recorded {
    fn metric(&self, key: &metrics::Key) -> Arc<Metric> {
        let label = key
            .labels()
            .find(|l| l.key() == "projection")
            .map_or(String::new(), |l| l.value().to_owned());
        let name = format!("{}{{projection={label}}}", key.name());
        self.0.lock().expect("metrics").entry(name).or_default().clone()
    }

    fn value(&self, name: &str, projection: &str) -> Option<f64> {
        let map = self.0.lock().expect("metrics");
        let metric = map.get(&format!("{name}{{projection={projection}}}"))?;
        Some(*metric.0.lock().expect("metric"))
    }
}

impl metrics::Recorder for &'static Recorded {
    fn describe_counter(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_gauge(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}
    fn describe_histogram(&self, _: metrics::KeyName, _: Option<metrics::Unit>, _: metrics::SharedString) {}

    fn register_counter(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.metric(key))
    }

    fn register_gauge(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.metric(key))
    }

    fn register_histogram(&self, key: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.metric(key))
    }
}

/// The recorder of this test binary, installed once.
fn recorded() -> &'static Recorded {
    static RECORDED: std::sync::OnceLock<&'static Recorded> = std::sync::OnceLock::new();
    RECORDED.get_or_init(|| {
        let recorded: &'static Recorded = Box::leak(Box::default());
        metrics::set_global_recorder(recorded).expect("no other recorder in this test binary");
        recorded
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_runner_publishes_its_metrics_by_projection() -> Result<(), BoxError> {
    let metrics = recorded();
    let store = InMemoryEventStore::new();
    append(&store, 2, 3, 1).await?;
    append_to(&store, "counter", "0", 13).await?;
    append(&store, 2, 3, 1).await?;
    let mut daemon = MemoryDaemon::new(store.clone()).with_options(fast_options());
    let metered = daemon.register(Counts {
        poison: Some(13),
        ..Counts::new("metered")
    })?;
    let (stop_tx, task) = spawn(daemon);
    let status = wait_until(&metered, |s| s.state == RunState::Faulted).await?;

    let value = |name: &str| metrics.value(name, "metered");
    assert_eq!(
        value("strata_projection_events_applied_total"),
        Some(status.events_applied as f64)
    );
    assert_eq!(value("strata_projection_position"), Some(status.position as f64));
    assert_eq!(value("strata_projection_errors_total"), Some(3.0), "one per try");
    assert!(value("strata_projection_batch_seconds").unwrap_or(0.0) >= 1.0);
    // While it is parked, the lag is counted again (within a second or
    // so): events appended now show in it.
    append(&store, 1, 4, 1).await?;
    let status = metered.control().status().await?;
    let started = std::time::Instant::now();
    while value("strata_projection_lag_events") != Some(status.lag_events as f64) {
        assert!(
            started.elapsed() < WAIT,
            "lag {:?}, status {status:?}",
            value("strata_projection_lag_events")
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(status.lag_events > 4, "{status:?}");
    assert_eq!(value("strata_projection_head"), Some(status.head as f64));
    assert_eq!(
        value("strata_projection_lag_positions"),
        Some((status.head - status.position) as f64)
    );
    assert!(value("strata_projection_lag_seconds").is_some_and(|s| s >= 0.0));
    let fetched = value("strata_projection_events_fetched_total").unwrap_or(0.0);
    assert!(
        fetched >= status.events_applied as f64 + 1.0,
        "the poison event is fetched too: {fetched}"
    );
    stop(stop_tx, task).await
}
