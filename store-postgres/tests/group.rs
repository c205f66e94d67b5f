//! Group commit: appends that wait for an in-flight statement go together
//! in one statement, and each keeps its own expected-version check and
//! outcome.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::{Duration, Instant};

use serde_json::json;
use sqlx::{Connection, PgConnection};
use strata_core::error::BoxError;
use strata_core::testing::contract::read_all_settled;
use strata_core::{AppendResult, Error, EventStore, ExpectedVersion, NewEvent, Result, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{fresh_database_url, new_event};
use tokio::task::JoinHandle;

/// The transaction id part of a global position: events appended by one
/// statement share it.
fn xid(position: u64) -> u64 {
    position >> 20
}

type Append<'a> = Pin<Box<dyn Future<Output = Result<AppendResult>> + Send + 'a>>;

/// Poll an append once: it takes an in-flight slot or joins the queue
/// before its first wait, so after this it has its place.
async fn poll_once(append: &mut Append<'_>) {
    std::future::poll_fn(|cx| {
        assert!(
            append.as_mut().poll(cx).is_pending(),
            "the append finished while the table was locked"
        );
        Poll::Ready(())
    })
    .await;
}

/// A store with one append statement in flight at a time, and a lock on
/// the events table held by another connection: the first append blocks
/// in the server holding the slot, every later one queues.
struct Held {
    store: PgEventStore,
    locker: PgConnection,
    url: String,
}

impl Held {
    async fn new(url: &str) -> Result<Self, BoxError> {
        let url = url.to_owned();
        let store = strata_store_postgres::PgEventStoreOptions::new(url.clone())
            .max_concurrent_appends(1)
            .connect()
            .await?;
        let mut locker = PgConnection::connect(&url).await?;
        sqlx::query("BEGIN").execute(&mut locker).await?;
        sqlx::query("LOCK TABLE strata.events IN SHARE MODE")
            .execute(&mut locker)
            .await?;
        Ok(Held { store, locker, url })
    }

    /// Start an append to the stream `first` and wait until it is blocked
    /// on the lock, holding the store's only slot.
    async fn first_append_blocked(&self) -> Result<JoinHandle<Result<AppendResult>>, BoxError> {
        let store = self.store.clone();
        let first = tokio::spawn(async move {
            let stream = StreamId::new("first")?;
            store
                .append(
                    &stream,
                    ExpectedVersion::NoStream,
                    vec![new_event("A", json!({}))],
                )
                .await
        });
        let mut watcher = PgConnection::connect(&self.url).await?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let waiting: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity
                 WHERE datname = current_database() AND wait_event_type = 'Lock'",
            )
            .fetch_one(&mut watcher)
            .await?;
            if waiting > 0 {
                return Ok(first);
            }
            assert!(
                Instant::now() < deadline,
                "the first append never reached the lock"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn release(mut self) -> Result<PgEventStore, BoxError> {
        sqlx::query("COMMIT").execute(&mut self.locker).await?;
        Ok(self.store)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_appends_share_one_statement_and_keep_their_own_outcomes() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    // Prepare the streams the members will meet, before anything is locked.
    let setup = PgEventStore::connect(&url).await?;
    let known = StreamId::new("known")?;
    let again = vec![new_event("Opened", json!({"n": 0}))];
    let stored = setup
        .append(&known, ExpectedVersion::NoStream, again.clone())
        .await?;
    drop(setup);

    let held = Held::new(&url).await?;
    let store = held.store.clone();
    let first = held.first_append_blocked().await?;

    let (a, b, c, d, e) = (
        StreamId::new("a")?,
        StreamId::new("b")?,
        StreamId::new("c")?,
        StreamId::new("d")?,
        StreamId::new("e")?,
    );
    let batch = vec![new_event("A", json!({"i": 1})), new_event("A", json!({"i": 2}))];
    let cancelled_event = new_event("A", json!({"cancelled": true}));
    let mut ok_batch: Append = Box::pin(store.append(&a, ExpectedVersion::NoStream, batch));
    let mut ok_any: Append =
        Box::pin(store.append(&b, ExpectedVersion::Any, vec![new_event("A", json!({}))]));
    let mut wrong: Append =
        Box::pin(store.append(&c, ExpectedVersion::Exact(5), vec![new_event("A", json!({}))]));
    let mut must_exist: Append =
        Box::pin(store.append(&d, ExpectedVersion::StreamExists, vec![new_event("A", json!({}))]));
    let mut repeat: Append = Box::pin(store.append(&known, ExpectedVersion::NoStream, again));
    let mut cancelled: Append =
        Box::pin(store.append(&e, ExpectedVersion::Any, vec![cancelled_event.clone()]));
    for append in [
        &mut ok_batch,
        &mut ok_any,
        &mut wrong,
        &mut must_exist,
        &mut repeat,
        &mut cancelled,
    ] {
        poll_once(append).await;
    }
    // Its caller gave up while it waited: it must not be written.
    drop(cancelled);
    let _store = held.release().await?;

    let first = first.await??;
    let (ok_batch, ok_any, wrong, must_exist, repeat) =
        tokio::join!(ok_batch, ok_any, wrong, must_exist, repeat);
    let (ok_batch, ok_any) = (ok_batch?, ok_any?);
    assert_eq!(ok_batch.stream_version, 2);
    assert_eq!(ok_batch.positions.len(), 2);
    assert_eq!(ok_any.stream_version, 1);
    // The two members that were written went in one statement, not the
    // first append's.
    assert_eq!(xid(ok_batch.positions[0]), xid(ok_any.positions[0]));
    assert_eq!(xid(ok_batch.positions[0]), xid(ok_batch.positions[1]));
    assert_ne!(xid(first.positions[0]), xid(ok_any.positions[0]));
    assert!(
        matches!(wrong, Err(Error::Conflict { ref stream, expected: ExpectedVersion::Exact(5), actual: 0 }) if stream == "c"),
        "{wrong:?}"
    );
    assert!(
        matches!(must_exist, Err(Error::Conflict { ref stream, actual: 0, .. }) if stream == "d"),
        "{must_exist:?}"
    );
    assert_eq!(
        repeat?, stored,
        "a re-append of a stored batch answers what was stored"
    );

    // What the members were told is what the log holds.
    let log = read_all_settled(&store, 5).await?;
    let at: HashMap<u64, (String, u64)> = log
        .iter()
        .map(|e| (e.global_position, (e.stream_id.to_string(), e.stream_version)))
        .collect();
    assert_eq!(at[&ok_batch.positions[0]], ("a".to_string(), 1));
    assert_eq!(at[&ok_batch.positions[1]], ("a".to_string(), 2));
    assert_eq!(at[&ok_any.positions[0]], ("b".to_string(), 1));
    assert_eq!(log.len(), 5, "known, first, a x2, b: {log:?}");
    assert!(log.iter().all(|e| e.event_id != cancelled_event.event_id));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_group_appends_its_members_alone() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let setup = PgEventStore::connect(&url).await?;
    let taken = new_event("A", json!({}));
    setup
        .append(
            &StreamId::new("owner")?,
            ExpectedVersion::NoStream,
            vec![taken.clone()],
        )
        .await?;
    drop(setup);

    let held = Held::new(&url).await?;
    let store = held.store.clone();
    let first = held.first_append_blocked().await?;
    let (x, y, thief) = (StreamId::new("x")?, StreamId::new("y")?, StreamId::new("thief")?);
    let mut good_x: Append =
        Box::pin(store.append(&x, ExpectedVersion::NoStream, vec![new_event("A", json!({}))]));
    let mut good_y: Append =
        Box::pin(store.append(&y, ExpectedVersion::Any, vec![new_event("A", json!({}))]));
    // An event id another stream holds: the group statement fails on the
    // unique event id index, as a whole.
    let mut bad: Append = Box::pin(store.append(&thief, ExpectedVersion::Any, vec![taken.clone()]));
    for append in [&mut good_x, &mut good_y, &mut bad] {
        poll_once(append).await;
    }
    let _store = held.release().await?;
    first.await??;
    let (good_x, good_y, bad) = tokio::join!(good_x, good_y, bad);
    assert_eq!(good_x?.stream_version, 1);
    assert_eq!(good_y?.stream_version, 1);
    assert!(
        matches!(bad, Err(Error::DuplicateEventId { event_id, ref stored_stream, stored_version: 1 })
            if event_id == taken.event_id && stored_stream == "owner"),
        "{bad:?}"
    );
    assert!(store.read_stream(&thief, 1, 10).await?.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grouped_appends_under_load_lose_nothing_and_keep_stream_order() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = strata_store_postgres::PgEventStoreOptions::new(url)
        .max_concurrent_appends(1)
        .connect()
        .await?;
    const TASKS: usize = 32;
    const APPENDS: usize = 25;
    const STREAMS: usize = 8;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let store = store.clone();
            tokio::spawn(async move {
                let stream = StreamId::new(format!("s-{}", t % STREAMS))?;
                let mut told = Vec::new();
                for i in 0..APPENDS {
                    let events: Vec<NewEvent> =
                        (0..1 + i % 3).map(|n| new_event("A", json!({"n": n}))).collect();
                    let ids: Vec<_> = events.iter().map(|e| e.event_id).collect();
                    let result = store.append(&stream, ExpectedVersion::Any, events).await?;
                    told.push((stream.to_string(), ids, result));
                }
                Ok::<_, Error>(told)
            })
        })
        .collect();
    let mut told = Vec::new();
    for task in tasks {
        told.extend(task.await??);
    }
    let expected_events: usize = told.iter().map(|(_, ids, _)| ids.len()).sum();
    let log = read_all_settled(&store, expected_events).await?;
    assert_eq!(log.len(), expected_events);

    // Every event once, where its append said.
    let by_id: HashMap<_, _> = log.iter().map(|e| (e.event_id, e)).collect();
    assert_eq!(by_id.len(), expected_events);
    for (stream, ids, result) in &told {
        let last = result.stream_version;
        for (n, id) in ids.iter().enumerate() {
            let stored = by_id[id];
            assert_eq!(stored.stream_id.as_str(), stream);
            assert_eq!(stored.global_position, result.positions[n]);
            assert_eq!(stored.stream_version, last + 1 - (ids.len() - n) as u64);
        }
    }
    // Each stream: versions 1..=n, in increasing positions.
    let mut streams: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &log {
        streams
            .entry(e.stream_id.as_str())
            .or_default()
            .push(e.stream_version);
    }
    for (stream, versions) in streams {
        assert_eq!(
            versions,
            (1..=versions.len() as u64).collect::<Vec<_>>(),
            "{stream}"
        );
    }
    // And grouping happened: some transaction wrote several streams.
    let mut streams_per_xid: HashMap<u64, HashSet<&str>> = HashMap::new();
    for e in &log {
        streams_per_xid
            .entry(xid(e.global_position))
            .or_default()
            .insert(e.stream_id.as_str());
    }
    assert!(
        streams_per_xid.values().any(|s| s.len() > 1),
        "no append statement carried more than one stream"
    );
    Ok(())
}
