//! The store contract suite: checks any [`EventStore`] can run against
//! itself to show it honours the trait's contract.
//!
//! ```no_run
//! # async fn demo() -> strata_core::Result<()> {
//! use strata_core::InMemoryEventStore;
//! strata_core::testing::contract::run_all(|| async { Ok(InMemoryEventStore::new()) }).await
//! # }
//! ```
//!
//! Each check gets a fresh, empty store from the factory. A violated rule
//! panics with a message naming it, as a failed assertion does.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::time::Duration;

use futures_util::future::{Either, join_all, select};
use futures_util::{FutureExt, StreamExt};
use serde_json::json;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{MAX_JSON_DEPTH, Metadata, NewEvent, RecordedEvent, StreamId};
use crate::store::{
    CommandDecision, CommandRecord, EventStore, ExpectedVersion, LogFilter, LogItem, Snapshot, Subscription,
};

/// How long a subscription may take to deliver an event that is readable,
/// and how long appended events may take to become readable.
const DELIVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// The global log from the start, once it holds at least `expected` events.
///
/// `read_all` may lag behind appends that already returned: a store such as
/// PostgreSQL only reads below the oldest transaction still running anywhere
/// on its server. This waits (up to 20 s) instead of failing on that lag.
pub async fn read_all_settled<S: EventStore>(store: &S, expected: usize) -> Result<Vec<RecordedEvent>> {
    let mut waited = Duration::ZERO;
    loop {
        let log = store.read_all(0, expected.max(1) * 2 + 1000).await?;
        if log.len() >= expected || waited >= DELIVERY_TIMEOUT {
            return Ok(log);
        }
        let pause = Duration::from_millis(20);
        futures_timer::Delay::new(pause).await;
        waited += pause;
    }
}

/// Run every check, each on a fresh store from `factory`.
pub async fn run_all<S, F, Fut>(factory: F) -> Result<()>
where
    S: EventStore,
    F: Fn() -> Fut,
    Fut: Future<Output = Result<S>>,
{
    expected_version_rules(&factory().await?).await?;
    concurrent_appends_conflict(&factory().await?).await?;
    stream_and_global_order(&factory().await?).await?;
    batched_reads(&factory().await?).await?;
    appends_are_atomic(&factory().await?).await?;
    idempotent_reappend(&factory().await?).await?;
    snapshots(&factory().await?).await?;
    subscription_catches_up_then_follows(&factory().await?).await?;
    metadata_and_odd_stream_ids_round_trip(&factory().await?).await?;
    unreadable_events_are_refused(&factory().await?).await?;
    command_records(&factory().await?).await?;
    batched_command_records(&factory().await?).await?;
    filtered_reads(&factory().await?).await?;
    Ok(())
}

/// A test event with a recognisable payload.
pub fn event(n: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "ContractEvent".to_owned(),
        schema_version: 1,
        payload: json!({ "n": n }),
        metadata: Metadata::default(),
    }
}

fn events(range: std::ops::Range<u64>) -> Vec<NewEvent> {
    range.map(event).collect()
}

fn stream(name: &str) -> Result<StreamId> {
    StreamId::new(format!("contract-{name}"))
}

fn conflict_actual(result: Result<impl std::fmt::Debug>) -> u64 {
    match result {
        Err(Error::Conflict { actual, .. }) => actual,
        other => panic!("expected a version conflict, got {other:?}"),
    }
}

/// Any, NoStream, StreamExists and Exact(n) admit and refuse the right
/// versions, and a conflict reports the actual version.
pub async fn expected_version_rules<S: EventStore>(store: &S) -> Result<()> {
    let s = stream("expected")?;
    assert_eq!(
        conflict_actual(
            store
                .append(&s, ExpectedVersion::StreamExists, events(0..1))
                .await
        ),
        0
    );
    assert_eq!(
        conflict_actual(store.append(&s, ExpectedVersion::Exact(1), events(0..1)).await),
        0
    );
    let r = store.append(&s, ExpectedVersion::NoStream, events(0..2)).await?;
    assert_eq!(r.stream_version, 2);
    assert_eq!(r.positions.len(), 2);
    assert!(r.positions[0] < r.positions[1], "positions must increase");
    assert_eq!(
        conflict_actual(store.append(&s, ExpectedVersion::NoStream, events(2..3)).await),
        2
    );
    assert_eq!(
        conflict_actual(store.append(&s, ExpectedVersion::Exact(1), events(2..3)).await),
        2
    );
    assert_eq!(
        conflict_actual(store.append(&s, ExpectedVersion::Exact(3), events(2..3)).await),
        2
    );
    assert_eq!(
        store
            .append(&s, ExpectedVersion::Exact(2), events(2..3))
            .await?
            .stream_version,
        3
    );
    assert_eq!(
        store
            .append(&s, ExpectedVersion::StreamExists, events(3..4))
            .await?
            .stream_version,
        4
    );
    assert_eq!(
        store
            .append(&s, ExpectedVersion::Any, events(4..5))
            .await?
            .stream_version,
        5
    );
    let fresh = stream("expected-any")?;
    assert_eq!(
        store
            .append(&fresh, ExpectedVersion::Any, events(0..1))
            .await?
            .stream_version,
        1
    );
    // An empty batch stores nothing but still checks the expectation.
    assert_eq!(
        store
            .append(&s, ExpectedVersion::Exact(5), Vec::new())
            .await?
            .stream_version,
        5
    );
    assert_eq!(
        conflict_actual(store.append(&s, ExpectedVersion::Exact(4), Vec::new()).await),
        5
    );
    assert_eq!(store.stream_version(&s).await?, 5);
    assert_eq!(store.read_stream(&s, 1, 100).await?.len(), 5);
    let versions: Vec<u64> = store
        .read_stream(&s, 1, 100)
        .await?
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, vec![1, 2, 3, 4, 5]);
    Ok(())
}

/// Of many concurrent appends expecting the same version, exactly one wins;
/// the others conflict; `Any` appends all succeed with contiguous versions.
pub async fn concurrent_appends_conflict<S: EventStore>(store: &S) -> Result<()> {
    let s = stream("race")?;
    store.append(&s, ExpectedVersion::NoStream, events(0..1)).await?;
    let attempts =
        join_all((0..16).map(|i| store.append(&s, ExpectedVersion::Exact(1), events(i..i + 2)))).await;
    let winners = attempts.iter().filter(|r| r.is_ok()).count();
    assert_eq!(winners, 1, "exactly one concurrent append may win: {attempts:?}");
    for r in attempts {
        if let Err(e) = r {
            assert!(
                matches!(e, Error::Conflict { actual: 3, .. }),
                "losers must see a conflict at version 3: {e:?}"
            );
        }
    }
    let any = stream("race-any")?;
    let results = join_all((0..16).map(|i| store.append(&any, ExpectedVersion::Any, events(i..i + 1)))).await;
    for r in results {
        r?;
    }
    let versions: Vec<u64> = store
        .read_stream(&any, 1, 100)
        .await?
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, (1..=16).collect::<Vec<_>>());
    Ok(())
}

/// Streams read in version order; the global log holds every event once,
/// with increasing positions and each stream in version order.
pub async fn stream_and_global_order<S: EventStore>(store: &S) -> Result<()> {
    let names: Vec<StreamId> = (0..5)
        .map(|i| stream(&format!("order-{i}")))
        .collect::<Result<_>>()?;
    let mut appended = Vec::new();
    for round in 0..6u64 {
        for s in &names {
            let batch = events(round * 10..round * 10 + 1 + round % 3);
            appended.extend(batch.iter().map(|e| e.event_id));
            store.append(s, ExpectedVersion::Any, batch).await?;
        }
    }
    let all = read_all_settled(store, appended.len()).await?;
    assert_eq!(
        all.len(),
        appended.len(),
        "the global log must hold every appended event"
    );
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position),
        "positions must increase"
    );
    let ids: HashSet<Uuid> = all.iter().map(|e| e.event_id).collect();
    assert_eq!(ids, appended.iter().copied().collect::<HashSet<_>>());
    check_stream_order(&all);
    for s in &names {
        let read = store.read_stream(s, 1, 1000).await?;
        assert!(
            read.iter()
                .enumerate()
                .all(|(i, e)| e.stream_version == i as u64 + 1 && e.stream_id == *s)
        );
        assert_eq!(store.stream_version(s).await?, read.len() as u64);
    }
    assert!(store.read_stream(&stream("missing")?, 1, 10).await?.is_empty());
    assert_eq!(store.stream_version(&stream("missing")?).await?, 0);
    Ok(())
}

fn check_stream_order(log: &[RecordedEvent]) {
    let mut last: HashMap<&StreamId, u64> = HashMap::new();
    for e in log {
        let prev = last.insert(&e.stream_id, e.stream_version).unwrap_or(0);
        assert_eq!(
            e.stream_version,
            prev + 1,
            "stream {} out of order in the global log",
            e.stream_id
        );
    }
}

/// Reading the global log page by page yields the whole log once; stream
/// reads honour `from_version` and `max_count`.
pub async fn batched_reads<S: EventStore>(store: &S) -> Result<()> {
    let a = stream("batch-a")?;
    let b = stream("batch-b")?;
    store
        .append(&a, ExpectedVersion::NoStream, events(0..120))
        .await?;
    store
        .append(&b, ExpectedVersion::NoStream, events(0..130))
        .await?;
    // Once readable, events stay readable: paging below sees them all.
    let whole = read_all_settled(store, 250).await?;
    let mut paged = Vec::new();
    let mut after = 0;
    loop {
        let page = store.read_all(after, 7).await?;
        assert!(page.len() <= 7, "a page must respect max_count");
        let Some(last) = page.last() else { break };
        after = last.global_position;
        paged.extend(page);
    }
    assert_eq!(paged, whole);
    assert_eq!(paged.len(), 250);
    let middle = store.read_stream(&a, 50, 20).await?;
    assert_eq!(
        middle.iter().map(|e| e.stream_version).collect::<Vec<_>>(),
        (50..70).collect::<Vec<_>>()
    );
    assert_eq!(middle[0].payload, json!({ "n": 49 }));
    assert_eq!(store.read_stream_to_end(&b, 100, 9).await?.len(), 31);
    assert!(store.read_stream(&a, 121, 10).await?.is_empty());
    let tail = store.read_all(paged[200].global_position, 1000).await?;
    assert_eq!(tail, paged[201..].to_vec());
    Ok(())
}

/// A batch that cannot be stored whole stores nothing.
pub async fn appends_are_atomic<S: EventStore>(store: &S) -> Result<()> {
    let a = stream("atomic-a")?;
    let b = stream("atomic-b")?;
    let first = events(0..1);
    store.append(&a, ExpectedVersion::NoStream, first.clone()).await?;
    let mut batch = events(1..4);
    batch[2].event_id = first[0].event_id;
    let err = store
        .append(&b, ExpectedVersion::Any, batch.clone())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DuplicateEventId { .. }), "{err:?}");
    assert_eq!(
        store.stream_version(&b).await?,
        0,
        "nothing of a refused batch may be stored"
    );
    for e in &batch[..2] {
        assert!(store.read_event(e.event_id).await?.is_none());
    }
    Ok(())
}

/// Re-appending a stored batch returns the original outcome and stores
/// nothing; a partly stored batch is refused.
pub async fn idempotent_reappend<S: EventStore>(store: &S) -> Result<()> {
    let s = stream("idem")?;
    let batch = events(0..3);
    let first = store.append(&s, ExpectedVersion::NoStream, batch.clone()).await?;
    let again = store.append(&s, ExpectedVersion::NoStream, batch.clone()).await?;
    assert_eq!(first, again, "a re-append must return the original outcome");
    let any = store.append(&s, ExpectedVersion::Any, batch.clone()).await?;
    assert_eq!(first, any);
    assert_eq!(store.stream_version(&s).await?, 3);
    let mut overlapping = events(3..5);
    overlapping.push(batch[1].clone());
    let err = store
        .append(&s, ExpectedVersion::Any, overlapping)
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::DuplicateEventId {
                stored_version: 2,
                ..
            }
        ),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&s).await?, 3);
    let found = store
        .read_event(batch[2].event_id)
        .await?
        .expect("stored event by id");
    assert_eq!(
        (found.stream_version, found.global_position),
        (3, first.positions[2])
    );
    assert!(store.read_event(Uuid::now_v7()).await?.is_none());
    Ok(())
}

/// The latest snapshot wins; an older one does not replace it.
pub async fn snapshots<S: EventStore>(store: &S) -> Result<()> {
    let s = stream("snap")?;
    assert!(store.load_snapshot(&s).await?.is_none());
    let snap = |v: u64| Snapshot {
        stream_id: s.clone(),
        stream_version: v,
        schema_version: 2,
        state: json!({ "at": v }),
    };
    store.save_snapshot(snap(5)).await?;
    assert_eq!(store.load_snapshot(&s).await?, Some(snap(5)));
    store.save_snapshot(snap(3)).await?;
    assert_eq!(
        store.load_snapshot(&s).await?,
        Some(snap(5)),
        "an older snapshot must not win"
    );
    store.save_snapshot(snap(8)).await?;
    assert_eq!(store.load_snapshot(&s).await?, Some(snap(8)));
    assert!(store.load_snapshot(&stream("snap-other")?).await?.is_none());
    Ok(())
}

async fn next_within(sub: &mut Subscription) -> Result<RecordedEvent> {
    let timeout = futures_timer::Delay::new(DELIVERY_TIMEOUT);
    match select(sub.next(), timeout).await {
        Either::Left((Some(item), _)) => item,
        Either::Left((None, _)) => Err(Error::Closed),
        Either::Right(_) => panic!("subscription delivered nothing within {DELIVERY_TIMEOUT:?}"),
    }
}

/// A subscription delivers what is stored, then what is appended later,
/// each event once and in log order; one started mid-log starts there.
pub async fn subscription_catches_up_then_follows<S: EventStore>(store: &S) -> Result<()> {
    let a = stream("sub-a")?;
    let b = stream("sub-b")?;
    store
        .append(&a, ExpectedVersion::NoStream, events(0..600))
        .await?;
    let mut sub = store.subscribe(0);
    let mut seen = Vec::new();
    for _ in 0..600 {
        seen.push(next_within(&mut sub).await?);
    }
    // Live: append while the subscriber waits.
    let appends = async {
        for i in 0..20 {
            store.append(&b, ExpectedVersion::Any, events(i..i + 1)).await?;
            futures_timer::Delay::new(Duration::from_millis(2)).await;
        }
        Ok::<_, Error>(())
    };
    let receive = async {
        let mut live = Vec::new();
        for _ in 0..20 {
            live.push(next_within(&mut sub).await?);
        }
        Ok::<_, Error>(live)
    };
    let (appended, live) = futures_util::future::join(appends, receive).await;
    appended?;
    seen.extend(live?);
    assert!(
        seen.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    assert_eq!(
        seen,
        store.read_all(0, 10_000).await?,
        "the subscriber must see the log exactly"
    );
    check_stream_order(&seen);
    assert!(
        sub.next().now_or_never().is_none(),
        "nothing more may be delivered"
    );
    let mut mid = store.subscribe(seen[599].global_position);
    assert_eq!(next_within(&mut mid).await?, seen[600]);
    Ok(())
}

/// Metadata and awkward (but valid) stream ids survive storage unchanged.
pub async fn metadata_and_odd_stream_ids_round_trip<S: EventStore>(store: &S) -> Result<()> {
    let mut e = event(1);
    e.metadata = Metadata {
        correlation_id: Some(Uuid::now_v7()),
        causation_id: Some(Uuid::now_v7()),
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tenant_id: Some("tenant-7".into()),
        headers: [("source".to_owned(), "contract".to_owned())].into(),
    };
    for name in [
        "it's \"quoted\"",
        "spaces and / slashes %_",
        "ünïcødé-流-🚀",
        "'; drop table events; --",
    ] {
        let s = StreamId::new(name)?;
        let mut one = e.clone();
        one.event_id = Uuid::now_v7();
        store
            .append(&s, ExpectedVersion::NoStream, vec![one.clone()])
            .await?;
        let read = store.read_stream(&s, 1, 10).await?;
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].stream_id.as_str(), name);
        assert_eq!(read[0].metadata, one.metadata);
        assert_eq!(read[0].payload, one.payload);
        assert_eq!(read[0].event_type, one.event_type);
    }
    Ok(())
}

/// A payload `depth` arrays deep.
pub fn nested_payload(depth: usize) -> serde_json::Value {
    let mut v = json!(1);
    for _ in 0..depth {
        v = json!([v]);
    }
    v
}

/// What no reader could read back is refused at append, whole batch and
/// all, with a typed error: a payload nested deeper than
/// [`MAX_JSON_DEPTH`], an empty or over-long event type, an id repeated in
/// the batch. The deepest accepted payload reads back.
pub async fn unreadable_events_are_refused<S: EventStore>(store: &S) -> Result<()> {
    let s = stream("unreadable")?;
    let refused = |mut e: NewEvent, change: &dyn Fn(&mut NewEvent)| {
        change(&mut e);
        vec![event(0), e]
    };
    type Case = (Vec<NewEvent>, fn(&Error) -> bool);
    let cases: Vec<Case> = vec![
        (
            refused(event(1), &|e| e.payload = nested_payload(MAX_JSON_DEPTH + 1)),
            |e| matches!(e, Error::PayloadTooDeep { depth, .. } if *depth == MAX_JSON_DEPTH + 1),
        ),
        (refused(event(1), &|e| e.payload = nested_payload(1_000)), |e| {
            matches!(e, Error::PayloadTooDeep { .. })
        }),
        (refused(event(1), &|e| e.event_type.clear()), |e| {
            matches!(e, Error::InvalidEventType { .. })
        }),
        (refused(event(1), &|e| e.event_type = "T".repeat(8 << 20)), |e| {
            matches!(e, Error::InvalidEventType { .. })
        }),
        (
            {
                let e = event(1);
                vec![e.clone(), event(2), e]
            },
            |e| matches!(e, Error::RepeatedEventId { .. }),
        ),
    ];
    for (batch, expected) in cases {
        let err = store
            .append(&s, ExpectedVersion::Any, batch)
            .await
            .expect_err("an unreadable event must be refused");
        assert!(expected(&err), "wrong error: {err:?}");
        assert!(err.to_string().len() < 400, "the message must stay short: {err}");
    }
    assert_eq!(
        store.stream_version(&s).await?,
        0,
        "a refused batch stores nothing"
    );
    let mut deepest = event(0);
    deepest.payload = nested_payload(MAX_JSON_DEPTH);
    store
        .append(&s, ExpectedVersion::NoStream, vec![deepest.clone()])
        .await?;
    let read = store.read_stream(&s, 1, 10).await?;
    assert_eq!(read[0].payload, deepest.payload);
    let log = read_all_settled(store, 1).await?;
    assert_eq!(log.last().map(|e| e.event_id), Some(deepest.event_id));
    Ok(())
}

/// A command id names one outcome: the first record wins, whether it
/// appended events ([`EventStore::append_command`], atomically with them)
/// or not ([`EventStore::record_command`]); later attempts store nothing.
/// [`EventStore::read_commands`] reads several at once.
pub async fn command_records<S: EventStore>(store: &S) -> Result<()> {
    let s = stream("commands")?;
    let appending = Uuid::now_v7();
    assert!(store.read_command(appending).await?.is_none());
    let result = store
        .append_command(&s, ExpectedVersion::NoStream, events(0..2), appending)
        .await?;
    assert_eq!(result.stream_version, 2);
    let record = store
        .read_command(appending)
        .await?
        .expect("recorded with its events");
    assert_eq!(record.stream_id, s);
    assert_eq!(
        record.decision,
        CommandDecision::Appended {
            first_version: 1,
            last_version: 2
        }
    );
    // Again, with other events: nothing stored, the first record stays.
    let err = store
        .append_command(&s, ExpectedVersion::Any, events(2..3), appending)
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CommandAlreadyRecorded { command_id } if command_id == appending),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&s).await?, 2);
    let refusal = CommandRecord {
        command_id: appending,
        stream_id: s.clone(),
        decision: CommandDecision::Refused {
            version: 2,
            refusal: json!("no"),
        },
    };
    assert_eq!(store.record_command(refusal).await?, Some(record));

    // A conflicting append records nothing: the id stays free.
    let late = Uuid::now_v7();
    let err = store
        .append_command(&s, ExpectedVersion::Exact(1), events(3..4), late)
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert!(store.read_command(late).await?.is_none());

    // An outcome without events: recorded once, then returned.
    let refused = CommandRecord {
        command_id: late,
        stream_id: s.clone(),
        decision: CommandDecision::Refused {
            version: 2,
            refusal: json!({"InsufficientFunds": {"balance": 0}}),
        },
    };
    assert_eq!(store.record_command(refused.clone()).await?, None);
    assert_eq!(store.read_command(late).await?, Some(refused.clone()));
    let unchanged = CommandRecord {
        decision: CommandDecision::Unchanged { version: 2 },
        ..refused.clone()
    };
    assert_eq!(store.record_command(unchanged).await?, Some(refused));
    let err = store
        .append_command(&s, ExpectedVersion::Exact(2), events(3..4), late)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::CommandAlreadyRecorded { .. }), "{err:?}");
    assert_eq!(store.stream_version(&s).await?, 2);

    // Several at once: the recorded ones, nothing for an unknown id.
    let mut many = store.read_commands(&[late, Uuid::now_v7(), appending]).await?;
    many.sort_by_key(|r| r.command_id != appending);
    let expected = vec![
        store.read_command(appending).await?.expect("recorded"),
        store.read_command(late).await?.expect("recorded"),
    ];
    assert_eq!(many, expected);
    assert!(store.read_commands(&[]).await?.is_empty());

    // Of concurrent first submissions of one id, exactly one is recorded.
    let raced = Uuid::now_v7();
    let appends = (0..4).map(|i| {
        let s = s.clone();
        async move {
            store
                .append_command(&s, ExpectedVersion::Any, events(10 + i..11 + i), raced)
                .await
                .map(|_| ())
        }
    });
    let records = (0..4).map(|v| {
        store.record_command(CommandRecord {
            command_id: raced,
            stream_id: s.clone(),
            decision: CommandDecision::Unchanged { version: v },
        })
    });
    let (appended, recorded) = futures_util::future::join(join_all(appends), join_all(records)).await;
    let appended = appended.iter().filter(|r| r.is_ok()).count();
    let mut recorded_now = 0;
    for r in recorded {
        recorded_now += usize::from(r?.is_none());
    }
    assert_eq!(
        appended + recorded_now,
        1,
        "exactly one first outcome per command id"
    );
    assert_eq!(
        store.stream_version(&s).await?,
        2 + appended as u64,
        "only the winning append may store events"
    );
    Ok(())
}

/// Several commands' outcomes stored with one append
/// ([`EventStore::append_commands`]): all or nothing, with the version
/// checked; records that do not fit the append are refused before anything
/// is stored; an id recorded before stores nothing; a re-append of the
/// same batch returns its first result.
pub async fn batched_command_records<S: EventStore>(store: &S) -> Result<()> {
    let s = stream("batched")?;
    let (a, b, c) = (Uuid::now_v7(), Uuid::now_v7(), Uuid::now_v7());
    let record = |command_id, decision| CommandRecord {
        command_id,
        stream_id: s.clone(),
        decision,
    };
    let records = vec![
        record(
            a,
            CommandDecision::Appended {
                first_version: 1,
                last_version: 2,
            },
        ),
        record(
            b,
            CommandDecision::Refused {
                version: 2,
                refusal: json!("no"),
            },
        ),
        record(
            c,
            CommandDecision::Appended {
                first_version: 3,
                last_version: 3,
            },
        ),
    ];
    let batch = events(0..3);

    // Records that do not fit: nothing stored, ids left free.
    let other = StreamId::new("contract-elsewhere")?;
    let misfits = [
        (ExpectedVersion::Any, records.clone()),
        (ExpectedVersion::Exact(1), records.clone()),
        (
            ExpectedVersion::Exact(0),
            vec![records[0].clone(), records[0].clone()],
        ),
        (
            ExpectedVersion::Exact(0),
            vec![CommandRecord {
                stream_id: other,
                ..records[1].clone()
            }],
        ),
    ];
    for (expected, misfit) in misfits {
        let err = store
            .append_commands(&s, expected, batch.clone(), misfit)
            .await
            .unwrap_err();
        assert!(matches!(err, Error::InvalidCommandRecord { .. }), "{err:?}");
    }
    assert_eq!(store.stream_version(&s).await?, 0);
    assert!(store.read_command(a).await?.is_none());

    // A conflict stores nothing either.
    store
        .append_commands(&s, ExpectedVersion::Exact(0), vec![event(9)], Vec::new())
        .await?;
    let err = store
        .append_commands(&s, ExpectedVersion::Exact(0), batch.clone(), records.clone())
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    assert!(store.read_command(a).await?.is_none());
    assert!(store.read_command(b).await?.is_none());

    // At the right version: events and records together.
    let shifted: Vec<CommandRecord> = records
        .iter()
        .map(|r| {
            let decision = match r.decision.clone() {
                CommandDecision::Appended {
                    first_version,
                    last_version,
                } => CommandDecision::Appended {
                    first_version: first_version + 1,
                    last_version: last_version + 1,
                },
                CommandDecision::Refused { version, refusal } => CommandDecision::Refused {
                    version: version + 1,
                    refusal,
                },
                other => other,
            };
            record(r.command_id, decision)
        })
        .collect();
    let result = store
        .append_commands(&s, ExpectedVersion::Exact(1), batch.clone(), shifted.clone())
        .await?;
    assert_eq!(result.stream_version, 4);
    assert_eq!(result.positions.len(), 3);
    for r in &shifted {
        assert_eq!(store.read_command(r.command_id).await?.as_ref(), Some(r));
    }
    // The same batch again: its first result, nothing more stored.
    let again = store
        .append_commands(&s, ExpectedVersion::Exact(1), batch, shifted.clone())
        .await?;
    assert_eq!(again, result);
    // New events under an id recorded before: nothing stored.
    let err = store
        .append_commands(
            &s,
            ExpectedVersion::Exact(4),
            vec![event(10)],
            vec![record(
                c,
                CommandDecision::Appended {
                    first_version: 5,
                    last_version: 5,
                },
            )],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::CommandAlreadyRecorded { command_id } if command_id == c),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&s).await?, 4);
    // Records without events: the version is checked, then they are stored.
    let d = Uuid::now_v7();
    let unchanged = record(d, CommandDecision::Unchanged { version: 4 });
    let err = store
        .append_commands(
            &s,
            ExpectedVersion::Exact(3),
            Vec::new(),
            vec![record(d, CommandDecision::Unchanged { version: 3 })],
        )
        .await
        .unwrap_err();
    assert!(err.is_conflict(), "{err:?}");
    let result = store
        .append_commands(&s, ExpectedVersion::Exact(4), Vec::new(), vec![unchanged.clone()])
        .await?;
    assert_eq!(result.stream_version, 4);
    assert!(result.positions.is_empty());
    assert_eq!(store.read_command(d).await?, Some(unchanged));
    assert_eq!(store.stream_version(&s).await?, 4);
    Ok(())
}

/// Filtered reads of the global log return exactly the wanted events, in
/// order, by the category stored with each event (not a prefix of the
/// stream id) and by event type; the position examined moves past the
/// unwanted ones, so a reader never reads them again; subscriptions do the
/// same, live.
pub async fn filtered_reads<S: EventStore>(store: &S) -> Result<()> {
    // ("order", "line-1") and ("order-line", "1"): one text, two categories.
    let order = StreamId::for_aggregate("order", "line-1x")?;
    let line = StreamId::for_aggregate("order-line", "1")?;
    let other = StreamId::for_aggregate("invoice", "1")?;
    assert_eq!((order.category(), line.category()), ("order", "order-line"));
    let typed = |ty: &str, n: u64| NewEvent {
        event_type: ty.to_owned(),
        ..event(n)
    };
    let mut expected_orders = Vec::new();
    for round in 0..5 {
        let e = typed("Placed", round);
        expected_orders.push(e.event_id);
        store.append(&order, ExpectedVersion::Any, vec![e]).await?;
        store
            .append(
                &line,
                ExpectedVersion::Any,
                vec![typed("Placed", round), typed("Shipped", round)],
            )
            .await?;
        store
            .append(&other, ExpectedVersion::Any, vec![typed("Shipped", round)])
            .await?;
    }
    let all = read_all_settled(store, 20).await?;
    let last = all.last().map(|e| e.global_position).expect("events");

    // Paged through, two at a time, from the start.
    let only_orders = LogFilter::categories(["order"]);
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        let page = store.read_all_filtered(after, 2, &only_orders).await?;
        assert!(page.scanned_to >= after, "the examined position never goes back");
        assert!(page.events.iter().all(|e| e.stream_id.category() == "order"));
        seen.extend(page.events.iter().map(|e| e.event_id));
        after = page.scanned_to;
        if page.reached_end {
            break;
        }
    }
    assert_eq!(seen, expected_orders, "every wanted event, once, in order");
    assert!(after >= last, "the examined position reaches the end of the log");

    let shipped_lines = LogFilter::categories(["order-line", "invoice"]).with_event_types(["Shipped"]);
    let page = store.read_all_filtered(0, 100, &shipped_lines).await?;
    assert_eq!(page.events.len(), 10);
    assert!(page.events.iter().all(|e| e.event_type == "Shipped"));
    assert!(
        page.events
            .windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    let none = store
        .read_all_filtered(0, 100, &LogFilter::categories(["nothing"]))
        .await?;
    assert!(none.events.is_empty());
    assert!(
        none.scanned_to >= last,
        "nothing wanted, but the log was examined"
    );

    // Live: wanted events arrive, and progress past the unwanted ones.
    let mut feed = store.subscribe_filtered(last, only_orders);
    store
        .append(&other, ExpectedVersion::Any, vec![typed("Shipped", 9)])
        .await?;
    let wanted = typed("Placed", 9);
    let wanted_id = wanted.event_id;
    store.append(&order, ExpectedVersion::Any, vec![wanted]).await?;
    let mut passed = 0;
    loop {
        let item = match select(feed.next(), futures_timer::Delay::new(DELIVERY_TIMEOUT).boxed()).await {
            Either::Left((Some(item), _)) => item?,
            _ => panic!("the filtered subscription did not deliver the wanted event"),
        };
        match item {
            LogItem::Event(e) => {
                assert_eq!(e.event_id, wanted_id);
                assert!(e.global_position > passed);
                break;
            }
            LogItem::Passed(p) => passed = passed.max(p),
        }
    }
    Ok(())
}
