//! The command handler's aggregate cache: it never lets a command decide
//! on a state behind the store, catches up by reading only the events
//! after the cached version, evicts the least recently used streams, and
//! leaves refusals and command-id de-duplication as they were.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use strata_core::store::{CommandDecision, CommandRecord};
use strata_core::testing::DelayedAppends;
use strata_core::testing::fixtures::bank::{self, BankAccount, BankCommand, BankError, BankEvent};
use strata_core::{
    Aggregate, AppendResult, CacheOptions, CommandContext, CommandError, CommandHandler,
    CommandHandlerOptions, EventStore, ExpectedVersion, InMemoryEventStore, NewEvent, RecordedEvent,
    Snapshot, StreamId, Subscription, Uuid,
};

type Handler<S> = CommandHandler<BankAccount, S>;
type TestResult = Result<(), Box<dyn std::error::Error>>;

fn cached(cache: CacheOptions) -> CommandHandlerOptions {
    CommandHandlerOptions {
        max_retries: 1000,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        cache: Some(cache),
        ..CommandHandlerOptions::default()
    }
}

fn cached_handler<S: EventStore>(store: S) -> Handler<S> {
    Handler::with_options(store, bank::upcasters(), cached(CacheOptions::default()))
}

fn open() -> BankCommand {
    BankCommand::Open { owner: "ada".into() }
}

fn deposit(amount: u64) -> BankCommand {
    BankCommand::Deposit { amount }
}

/// Wraps the in-memory store and notes the first version of every
/// `read_stream` call: which part of a stream a handler read.
#[derive(Debug, Clone, Default)]
struct CountingReads {
    inner: InMemoryEventStore,
    reads: Arc<Mutex<Vec<u64>>>,
}

impl CountingReads {
    /// The first versions read since the last call.
    fn take_reads(&self) -> Vec<u64> {
        std::mem::take(&mut *self.reads.lock().expect("not poisoned"))
    }
}

impl EventStore for CountingReads {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> strata_core::Result<AppendResult> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> strata_core::Result<Vec<RecordedEvent>> {
        self.reads.lock().expect("not poisoned").push(from_version);
        self.inner.read_stream(stream, from_version, max_count).await
    }

    async fn stream_version(&self, stream: &StreamId) -> strata_core::Result<u64> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> strata_core::Result<Vec<RecordedEvent>> {
        self.inner.read_all(after_position, max_count).await
    }

    async fn read_event(&self, event_id: Uuid) -> strata_core::Result<Option<RecordedEvent>> {
        self.inner.read_event(event_id).await
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> strata_core::Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> strata_core::Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream).await
    }

    fn subscribe(&self, after_position: u64) -> Subscription {
        self.inner.subscribe(after_position)
    }

    async fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> strata_core::Result<AppendResult> {
        self.inner
            .append_command(stream, expected, events, command_id)
            .await
    }

    async fn append_commands(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        records: Vec<CommandRecord>,
    ) -> strata_core::Result<AppendResult> {
        self.inner
            .append_commands(stream, expected, events, records)
            .await
    }

    async fn record_command(&self, record: CommandRecord) -> strata_core::Result<Option<CommandRecord>> {
        self.inner.record_command(record).await
    }

    async fn read_command(&self, command_id: Uuid) -> strata_core::Result<Option<CommandRecord>> {
        self.inner.read_command(command_id).await
    }
}

/// A tiny xorshift generator: random enough for delays and amounts, with
/// no dependency.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

const HANDLERS: usize = 2;
const TASKS: usize = 8;
const COMMANDS: usize = 50;

/// What one task saw accepted: each command's amount (negative for a
/// withdrawal) and event ids.
type Accepted = Vec<(i128, Vec<Uuid>)>;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_cached_handlers_interleaving_on_one_stream_lose_nothing() -> TestResult {
    let store = InMemoryEventStore::new();
    // Two handlers with caches of their own stand in for two processes.
    let handlers: Vec<_> = (0..HANDLERS)
        .map(|_| {
            let slow = DelayedAppends::new(store.clone(), Duration::from_micros(500));
            Handler::with_options(slow, bank::upcasters(), cached(CacheOptions::default()))
        })
        .collect();
    handlers[0].execute("acc", open()).await?;

    let mut tasks = Vec::new();
    for (h, handler) in handlers.iter().enumerate() {
        for t in 0..TASKS {
            let handler = handler.clone();
            let stream = Handler::<InMemoryEventStore>::stream_id("acc")?;
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((h * TASKS + t + 1) as u64) << 8);
            tasks.push(tokio::spawn(async move {
                let mut accepted = Accepted::new();
                let mut refused = 0;
                for _ in 0..COMMANDS {
                    tokio::time::sleep(Duration::from_micros(rng.next() % 1500)).await;
                    // As many withdrawals as deposits, a little larger: the
                    // balance hovers near zero and many are refused, which
                    // a state behind the store would get wrong.
                    let (command, signed) = if rng.next() % 2 == 0 {
                        let amount = 1 + rng.next() % 30;
                        (BankCommand::Withdraw { amount }, -i128::from(amount))
                    } else {
                        let amount = 1 + rng.next() % 20;
                        (deposit(amount), i128::from(amount))
                    };
                    let command_id = Uuid::now_v7();
                    // The stream's version when the command is submitted:
                    // it must be decided on this state or a later one.
                    let submitted_at = handler.store().stream_version(&stream).await?;
                    match handler
                        .execute_with("acc", command, CommandContext::with_id(command_id))
                        .await
                    {
                        Ok(outcome) => {
                            assert!(!outcome.deduplicated);
                            accepted.push((signed, outcome.events.iter().map(|e| e.event_id).collect()));
                        }
                        Err(CommandError::Domain(BankError::InsufficientFunds { .. })) => {
                            refused += 1;
                            let record = handler.store().read_command(command_id).await?;
                            let Some(CommandRecord {
                                decision: CommandDecision::Refused { version, .. },
                                ..
                            }) = record
                            else {
                                panic!("refusal of {command_id} not recorded: {record:?}");
                            };
                            assert!(
                                version >= submitted_at,
                                "refused on version {version}, behind version {submitted_at} it was submitted at"
                            );
                        }
                        Err(e) => return Err(e),
                    }
                }
                Ok::<_, CommandError<BankError>>((accepted, refused))
            }));
        }
    }
    let (mut accepted, mut refused) = (Accepted::new(), 0);
    for task in tasks {
        let (a, r) = task.await??;
        accepted.extend(a);
        refused += r;
    }
    assert_eq!(accepted.len() + refused, HANDLERS * TASKS * COMMANDS);
    assert!(refused > 0 && accepted.len() > 1, "both outcomes are exercised");

    let stream = Handler::<InMemoryEventStore>::stream_id("acc")?;
    let stored = store.read_stream_to_end(&stream, 1, 100).await?;
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    assert_eq!(
        versions,
        (1..=stored.len() as u64).collect::<Vec<_>>(),
        "versions are contiguous"
    );
    // Every accepted command's events are stored, once; nothing else is
    // (but the opening).
    let stored_ids: Vec<Uuid> = stored.iter().skip(1).map(|e| e.event_id).collect();
    let unique: HashSet<Uuid> = stored_ids.iter().copied().collect();
    assert_eq!(unique.len(), stored_ids.len(), "an event is stored twice");
    let reported: HashSet<Uuid> = accepted.iter().flat_map(|(_, ids)| ids.iter().copied()).collect();
    assert_eq!(reported, unique, "accepted and stored events differ");

    // The final state is a clean replay of the log, and what the accepted
    // commands add up to; both caches serve it.
    let upcasters = bank::upcasters();
    let events: Vec<BankEvent> = stored
        .iter()
        .map(|e| e.decode::<BankEvent>(&upcasters).map(|e| e.event))
        .collect::<Result<_, _>>()?;
    let replayed = BankAccount::replay(&events);
    let sum: i128 = accepted.iter().map(|(amount, _)| amount).sum();
    assert_eq!(i128::from(replayed.balance), sum);
    let uncached = Handler::with_options(store.clone(), bank::upcasters(), CommandHandlerOptions::default());
    assert_eq!(
        uncached.load("acc").await?,
        (replayed.clone(), stored.len() as u64)
    );
    for handler in &handlers {
        assert_eq!(
            handler.load("acc").await?,
            (replayed.clone(), stored.len() as u64)
        );
    }
    let stale_refreshes: u64 = handlers
        .iter()
        .map(|h| h.cache_stats().expect("cache on").stale_refreshes)
        .sum();
    assert!(stale_refreshes > 0, "the handlers must have collided");
    Ok(())
}

#[tokio::test]
async fn a_stale_cache_reads_only_the_events_after_its_version() -> TestResult {
    let store = CountingReads::default();
    let cached = cached_handler(store.clone());
    let other = Handler::new(store.inner.clone());
    cached.execute("acc", open()).await?;
    for _ in 0..4 {
        cached.execute("acc", deposit(1)).await?;
    }
    assert_eq!(store.take_reads(), vec![1], "one load, on the first command");
    // Another process moves the stream on to version 8.
    for _ in 0..3 {
        other.execute("acc", deposit(10)).await?;
    }
    store.take_reads();

    // The cache (at 5) conflicts, reads from 6 only, and decides again.
    let outcome = cached.execute("acc", deposit(100)).await?;
    assert_eq!((outcome.stream_version, outcome.retries), (9, 1));
    assert_eq!(store.take_reads(), vec![6]);
    let stats = cached.cache_stats().expect("cache on");
    assert_eq!((stats.misses, stats.stale_refreshes), (1, 1));

    // `load` and `decide` catch up the same way: only after the cached version.
    other.execute("acc", deposit(1000)).await?;
    store.take_reads();
    let (state, version) = cached.load("acc").await?;
    assert_eq!((state.balance, version), (1134, 10));
    assert_eq!(store.take_reads(), vec![10]);
    other.execute("acc", deposit(1)).await?;
    store.take_reads();
    let decided = cached
        .decide("acc", &deposit(1), CommandContext::default())
        .await?;
    assert_eq!(decided.expected, ExpectedVersion::Exact(11));
    assert_eq!(store.take_reads(), vec![11]);
    assert_eq!(cached.cache_stats().expect("cache on").stale_refreshes, 3);
    Ok(())
}

#[tokio::test]
async fn a_refusal_on_a_stale_cache_is_decided_again_on_the_current_state() -> TestResult {
    let store = InMemoryEventStore::new();
    let cached = cached_handler(store.clone());
    cached.execute("acc", open()).await?;
    // Another process deposits: the cached balance (0) is behind.
    Handler::new(store).execute("acc", deposit(100)).await?;
    let outcome = cached
        .execute("acc", BankCommand::Withdraw { amount: 50 })
        .await?;
    assert_eq!((outcome.stream_version, outcome.retries), (3, 0));
    assert_eq!(cached.load("acc").await?.0.balance, 50);
    assert_eq!(cached.cache_stats().expect("cache on").stale_refreshes, 1);
    Ok(())
}

#[tokio::test]
async fn a_refusal_leaves_the_cache_as_it_was() -> TestResult {
    let store = CountingReads::default();
    let cached = cached_handler(store.clone());
    cached.execute("acc", open()).await?;
    cached.execute("acc", deposit(10)).await?;
    let before = cached.cache_stats().expect("cache on");
    let err = cached
        .execute("acc", BankCommand::Withdraw { amount: 50 })
        .await
        .unwrap_err();
    assert_eq!(
        err.domain(),
        Some(&BankError::InsufficientFunds {
            balance: 10,
            requested: 50
        })
    );
    let after = cached.cache_stats().expect("cache on");
    assert_eq!((after.entries, after.bytes), (before.entries, before.bytes));
    assert_eq!(after.misses, before.misses);
    // The next command decides on the cached state: no load from the start.
    store.take_reads();
    let outcome = cached.execute("acc", deposit(5)).await?;
    assert_eq!(outcome.stream_version, 3);
    assert_eq!(store.take_reads(), Vec::<u64>::new());
    let last = cached.cache_stats().expect("cache on");
    assert_eq!((last.hits, last.misses), (after.hits + 1, after.misses));
    assert_eq!(cached.load("acc").await?.0.balance, 15);
    Ok(())
}

#[tokio::test]
async fn command_ids_are_deduplicated_with_the_cache_on() -> TestResult {
    let store = InMemoryEventStore::new();
    let cached = cached_handler(store.clone());
    cached.execute("acc", open()).await?;
    let ctx = CommandContext::with_id(Uuid::now_v7());
    let first = cached.execute_with("acc", deposit(7), ctx.clone()).await?;
    let again = cached.execute_with("acc", deposit(7), ctx.clone()).await?;
    assert!(!first.deduplicated && again.deduplicated);
    assert_eq!(again.stream_version, first.stream_version);
    // From another process too, and a refusal keeps being the answer.
    let other = cached_handler(store.clone());
    assert!(other.execute_with("acc", deposit(7), ctx).await?.deduplicated);
    let refused_ctx = CommandContext::with_id(Uuid::now_v7());
    let withdraw = BankCommand::Withdraw { amount: 50 };
    assert!(
        cached
            .execute_with("acc", withdraw.clone(), refused_ctx.clone())
            .await
            .unwrap_err()
            .domain()
            .is_some()
    );
    cached.execute("acc", deposit(100)).await?;
    assert!(
        cached
            .execute_with("acc", withdraw, refused_ctx)
            .await
            .unwrap_err()
            .domain()
            .is_some()
    );
    assert_eq!(cached.load("acc").await?, Handler::new(store).load("acc").await?);
    assert_eq!(cached.load("acc").await?.0.balance, 107);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_of_one_command_id_append_once_with_the_cache_on() -> TestResult {
    let store = InMemoryEventStore::new();
    let handler = cached_handler(DelayedAppends::new(store.clone(), Duration::from_millis(5)));
    handler.execute("acc", open()).await?;
    let ctx = CommandContext::with_id(Uuid::now_v7());
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (handler, ctx) = (handler.clone(), ctx.clone());
            tokio::spawn(async move { handler.execute_with("acc", deposit(3), ctx).await })
        })
        .collect();
    let mut outcomes = HashMap::new();
    for r in runs {
        let outcome = r.await??;
        outcomes.insert(outcome.events[0].event_id, outcome.stream_version);
    }
    assert_eq!(outcomes.len(), 1, "{outcomes:?}");
    assert_eq!(handler.load("acc").await?.1, 2);
    // The outcome is recorded: another process gets it back.
    let again = Handler::new(store.clone())
        .execute_with("acc", deposit(3), ctx)
        .await?;
    assert!(again.deduplicated && outcomes.contains_key(&again.events[0].event_id));
    assert_eq!(Handler::new(store).load("acc").await?.0.balance, 3);
    Ok(())
}

/// Streams `a`, `b` and `c` opened in that order, with `a` used again just
/// before `c`: the least recently used is `b`.
async fn open_three_using_a_again(handler: &Handler<InMemoryEventStore>) -> TestResult {
    handler.execute("a", open()).await?;
    handler.execute("b", open()).await?;
    handler.load("a").await?;
    handler.execute("c", open()).await?;
    Ok(())
}

/// `a` and `c` are cached and `b` is not: a load of `a` is a hit, of `b` a
/// miss.
async fn assert_b_was_evicted(handler: &Handler<InMemoryEventStore>) -> TestResult {
    let before = handler.cache_stats().expect("cache on");
    handler.load("a").await?;
    let after_a = handler.cache_stats().expect("cache on");
    assert_eq!(
        (after_a.hits, after_a.misses),
        (before.hits + 1, before.misses),
        "a, used recently, is cached"
    );
    handler.load("b").await?;
    let after_b = handler.cache_stats().expect("cache on");
    assert_eq!(
        after_b.misses,
        after_a.misses + 1,
        "b, the least recently used, was evicted"
    );
    Ok(())
}

#[tokio::test]
async fn eviction_by_entries_drops_the_least_recently_used() -> TestResult {
    let handler = Handler::with_options(
        InMemoryEventStore::new(),
        bank::upcasters(),
        cached(CacheOptions {
            max_entries: 2,
            ..CacheOptions::default()
        }),
    );
    open_three_using_a_again(&handler).await?;
    let stats = handler.cache_stats().expect("cache on");
    assert_eq!((stats.entries, stats.evictions), (2, 1));
    assert_b_was_evicted(&handler).await
}

#[tokio::test]
async fn eviction_by_bytes_drops_the_least_recently_used() -> TestResult {
    // An entry weighs its state's JSON plus its stream id.
    let opened = BankAccount::replay(&[BankEvent::Opened { owner: "ada".into() }]);
    let weight = serde_json::to_string(&opened)?.len() + "account-a".len();
    let handler = Handler::with_options(
        InMemoryEventStore::new(),
        bank::upcasters(),
        cached(CacheOptions {
            max_bytes: 2 * weight + weight / 2,
            ..CacheOptions::default()
        }),
    );
    open_three_using_a_again(&handler).await?;
    let stats = handler.cache_stats().expect("cache on");
    assert_eq!((stats.entries, stats.bytes), (2, 2 * weight as u64));
    assert!(stats.evictions >= 1);
    assert_b_was_evicted(&handler).await
}

#[tokio::test]
async fn the_cache_is_on_by_default_and_can_be_turned_off() -> TestResult {
    assert_eq!(
        CommandHandlerOptions::default().cache,
        Some(CacheOptions::default())
    );
    let store = CountingReads::default();
    let handler = Handler::new(store.clone());
    handler.execute("acc", open()).await?;
    handler.execute("acc", deposit(1)).await?;
    assert_eq!(handler.cache_stats().map(|s| (s.hits, s.misses)), Some((1, 1)));
    // The second command decided on the cached state: no read.
    assert_eq!(store.take_reads(), vec![1]);

    let options = CommandHandlerOptions {
        cache: None,
        ..CommandHandlerOptions::default()
    };
    let handler = Handler::with_options(store.clone(), bank::upcasters(), options);
    handler.execute("acc", deposit(1)).await?;
    handler.execute("acc", deposit(1)).await?;
    assert!(handler.cache_stats().is_none());
    // Every command loads the stream from its start.
    assert_eq!(store.take_reads(), vec![1, 1]);
    Ok(())
}

#[tokio::test]
async fn a_failure_drops_the_stream_from_the_cache() -> TestResult {
    let store = InMemoryEventStore::new();
    let cached = cached_handler(store.clone());
    for id in ["acc", "b", "c"] {
        cached.execute(id, open()).await?;
    }
    let entries = || cached.cache_stats().expect("cache on").entries;
    assert_eq!(entries(), 3);
    // An event no upcaster knows lands after the cached version of `acc`
    // and of `c`.
    for id in ["acc", "c"] {
        let unknown = NewEvent {
            event_type: "Frozen".into(),
            ..NewEvent::from_event(&BankEvent::Closed, Default::default())?
        };
        let stream = Handler::<InMemoryEventStore>::stream_id(id)?;
        store
            .append(&stream, ExpectedVersion::Exact(1), vec![unknown])
            .await?;
    }
    let err = cached.execute("acc", deposit(1)).await.unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::Store(strata_core::Error::UnknownEventType { .. })
        ),
        "{err:?}"
    );
    assert_eq!(entries(), 2, "a failed command drops its stream");
    assert!(cached.load("c").await.is_err());
    assert_eq!(entries(), 1, "a failed load drops its stream");
    cached.execute("b", deposit(1)).await?;
    Ok(())
}
