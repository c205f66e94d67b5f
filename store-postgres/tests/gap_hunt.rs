//! The global log skips nothing: concurrent writers, transactions held open
//! and rolled back, a subscriber that must see every committed event
//! exactly once, and a naive reader that shows why the horizon is needed.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::json;
use sqlx::{Connection, PgPool};
use strata_core::error::BoxError;
use strata_core::{EventStore, ExpectedVersion, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{append_in, fresh_database_with, new_event};
use tokio::sync::Mutex;
use uuid::Uuid;

const WRITERS: u64 = 16;
const ROUNDS: u64 = 25;
const STREAMS_PER_WRITER: u64 = 4;

/// Small deterministic pseudo-random numbers (xorshift), one per writer.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// A reader without the horizon: what a sequence-based store does.
async fn naive_read(pool: &PgPool, after: i64) -> Result<Vec<(i64, Uuid)>, sqlx::Error> {
    sqlx::query_as(
        "SELECT global_position, event_id FROM strata.events
         WHERE global_position > $1 ORDER BY global_position LIMIT 1000",
    )
    .bind(after)
    .fetch_all(pool)
    .await
}

/// One writer: appends to its own streams in its own transactions, some
/// committed at once, some held open, some rolled back. Returns the ids it
/// committed, per stream in version order.
async fn writer(
    store: PgEventStore,
    w: u64,
    committed: Arc<Mutex<HashMap<Uuid, (StreamId, u64)>>>,
) -> Result<(), BoxError> {
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (w + 1).wrapping_mul(0x2545_F491_4F6C_DD1D));
    for round in 0..ROUNDS {
        let stream = StreamId::new(format!("gap-{w}-{}", rng.below(STREAMS_PER_WRITER)))?;
        let batch: Vec<_> = (0..1 + rng.below(3))
            .map(|i| new_event("Written", json!({"writer": w, "round": round, "i": i})))
            .collect();
        let mut conn = store.pool().acquire().await?;
        let mut tx = conn.begin().await?;
        let result = append_in(&mut tx, &stream, ExpectedVersion::Any, batch.clone()).await?;
        // Hold the transaction open for a while: later transactions of
        // other writers commit meanwhile, with larger positions.
        tokio::time::sleep(Duration::from_millis(rng.below(40))).await;
        if rng.below(5) == 0 {
            tx.rollback().await?;
        } else {
            tx.commit().await?;
            let first = result.stream_version + 1 - batch.len() as u64;
            let mut committed = committed.lock().await;
            for (i, e) in batch.iter().enumerate() {
                committed.insert(e.event_id, (stream.clone(), first + i as u64));
            }
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn subscriber_sees_every_committed_event_once_and_naive_reader_skips() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| {
        o.max_connections(40)
            .read_batch(7)
            .poll_interval(Duration::from_millis(50))
    })
    .await?;
    let committed = Arc::new(Mutex::new(HashMap::new()));

    // The subscriber, from the start of the log.
    let mut feed = store.subscribe(0);
    let received = Arc::new(Mutex::new(Vec::new()));
    let subscriber = {
        let received = received.clone();
        tokio::spawn(async move {
            while let Some(item) = feed.next().await {
                received.lock().await.push(item?);
            }
            Ok::<_, BoxError>(())
        })
    };

    // The naive reader, polling without the horizon.
    let naive_checkpoint = Arc::new(AtomicU64::new(0));
    let naive_seen = Arc::new(Mutex::new(HashSet::new()));
    let naive = {
        let pool = store.pool().clone();
        let checkpoint = naive_checkpoint.clone();
        let seen = naive_seen.clone();
        tokio::spawn(async move {
            loop {
                let after = checkpoint.load(Ordering::SeqCst) as i64;
                for (position, id) in naive_read(&pool, after).await? {
                    seen.lock().await.insert(id);
                    checkpoint.store(position as u64, Ordering::SeqCst);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            #[allow(unreachable_code)]
            Ok::<_, BoxError>(())
        })
    };

    // A laggard: appends first (smallest transaction id), then holds its
    // transaction open until the naive reader has moved past its position
    // on the strength of later commits.
    let laggard = {
        let store = store.clone();
        let checkpoint = naive_checkpoint.clone();
        let committed = committed.clone();
        tokio::spawn(async move {
            let stream = StreamId::new("gap-laggard")?;
            let event = new_event("Written", json!({"laggard": true}));
            let mut conn = store.pool().acquire().await?;
            let mut tx = conn.begin().await?;
            let result = append_in(&mut tx, &stream, ExpectedVersion::NoStream, vec![event.clone()]).await?;
            let position = result.positions[0];
            let deadline = Instant::now() + Duration::from_secs(10);
            while checkpoint.load(Ordering::SeqCst) <= position {
                assert!(
                    Instant::now() < deadline,
                    "the naive reader never moved past the laggard"
                );
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            tx.commit().await?;
            committed.lock().await.insert(event.event_id, (stream, 1));
            Ok::<_, BoxError>(())
        })
    };
    // Let the laggard take its transaction id before the others start.
    tokio::time::sleep(Duration::from_millis(100)).await;

    let writers: Vec<_> = (0..WRITERS)
        .map(|w| tokio::spawn(writer(store.clone(), w, committed.clone())))
        .collect();
    for w in writers {
        w.await??;
    }
    laggard.await??;

    let committed = committed.lock().await.clone();
    let deadline = Instant::now() + Duration::from_secs(20);
    while received.lock().await.len() < committed.len() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Give a duplicate or a rolled-back event the chance to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    subscriber.abort();
    naive.abort();
    let received = received.lock().await.clone();

    let ids: Vec<Uuid> = received.iter().map(|e| e.event_id).collect();
    let unique: HashSet<Uuid> = ids.iter().copied().collect();
    assert_eq!(unique.len(), ids.len(), "an event was delivered twice");
    let expected: HashSet<Uuid> = committed.keys().copied().collect();
    let missing = expected.difference(&unique).count();
    let extra = unique.difference(&expected).count();
    assert_eq!(missing, 0, "the subscriber missed {missing} committed events");
    assert_eq!(extra, 0, "the subscriber saw {extra} rolled back events");
    assert!(
        received
            .windows(2)
            .all(|w| w[0].global_position < w[1].global_position),
        "global positions are not increasing"
    );
    let mut per_stream: BTreeMap<&str, Vec<u64>> = BTreeMap::new();
    for e in &received {
        assert_eq!(committed[&e.event_id], (e.stream_id.clone(), e.stream_version));
        per_stream
            .entry(e.stream_id.as_str())
            .or_default()
            .push(e.stream_version);
    }
    for (stream, versions) in per_stream {
        let contiguous: Vec<u64> = (1..=versions.len() as u64).collect();
        assert_eq!(
            versions, contiguous,
            "stream {stream} out of order in the global log"
        );
    }

    let naive_seen = naive_seen.lock().await;
    let naive_missed = expected.iter().filter(|id| !naive_seen.contains(id)).count();
    assert!(
        naive_missed >= 1,
        "the naive reader was expected to skip the laggard's event"
    );
    Ok(())
}

#[tokio::test]
async fn late_commit_is_read_after_it_commits_not_skipped() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| o).await?;
    let early = StreamId::new("early")?;
    let late = StreamId::new("late")?;

    let mut conn = store.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    let held = append_in(
        &mut tx,
        &early,
        ExpectedVersion::NoStream,
        vec![new_event("E", json!(1))],
    )
    .await?;
    let after = store
        .append(&late, ExpectedVersion::NoStream, vec![new_event("E", json!(2))])
        .await?;
    assert!(held.positions[0] < after.positions[0]);

    // Committed but behind the open transaction: held back, not returned.
    assert!(store.read_all(0, 10).await?.is_empty());
    let horizon = store.horizon().await?;
    assert_eq!(horizon.held_back_events, 1);
    assert!(horizon.oldest_transaction_age_seconds.is_some());
    assert!(horizon.readable_below <= held.positions[0]);
    // The naive reader already moves past the held position.
    let naive = naive_read(store.pool(), 0).await?;
    assert_eq!(naive.len(), 1);

    tx.commit().await?;
    // Transactions of tests running in parallel (in other databases of the
    // same server) hold the horizon too: wait for them, never skip.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut all = store.read_all(0, 10).await?;
    while all.len() < 2 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
        all = store.read_all(0, 10).await?;
    }
    let streams: Vec<&str> = all.iter().map(|e| e.stream_id.as_str()).collect();
    assert_eq!(streams, ["early", "late"]);
    assert!(
        naive_read(store.pool(), naive[0].0).await?.is_empty(),
        "naive reader skips it"
    );
    Ok(())
}

#[tokio::test]
async fn append_in_refuses_a_transaction_that_already_wrote() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| o).await?;
    let mut conn = store.pool().acquire().await?;
    let mut tx = conn.begin().await?;
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *tx)
        .await?;
    let stream = StreamId::new("s")?;
    assert!(
        append_in(
            &mut tx,
            &stream,
            ExpectedVersion::Any,
            vec![new_event("E", json!(1))]
        )
        .await
        .is_err()
    );
    Ok(())
}
