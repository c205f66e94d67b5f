//! What a PostgreSQL projection is fed: only the events it wants (the rows
//! fetched are counted through the runner's metrics), with its position
//! moving past the others, and old events upcast to their current schema.

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use async_trait::async_trait;
use common::*;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata as MetricMetadata, SharedString, Unit};
use sqlx::PgConnection;
use strata_core::error::BoxError;
use strata_core::testing::fixtures::bank::BankEvent;
use strata_core::testing::fixtures::counter::added;
use strata_core::{Envelope, EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use strata_projections::Projection;
use strata_projections::postgres::{self, PgDaemon, PgProjection};
use strata_store_postgres::testing::{fresh_database, new_event};

/// Counters and gauges by name and `projection` label, as the runner
/// reports them.
#[derive(Default)]
struct Counting {
    counters: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<(String, String), Arc<AtomicU64>>>,
}

impl Counting {
    fn get(&self, name: &str, projection: &str) -> u64 {
        let counters = self.counters.lock().expect("not poisoned");
        counters
            .get(&(name.to_owned(), projection.to_owned()))
            .map_or(0, |c| c.load(Ordering::SeqCst))
    }

    fn gauge(&self, name: &str, projection: &str) -> Option<f64> {
        let gauges = self.gauges.lock().expect("not poisoned");
        gauges
            .get(&(name.to_owned(), projection.to_owned()))
            .map(|g| f64::from_bits(g.load(Ordering::SeqCst)))
    }
}

fn key_of(key: &Key) -> (String, String) {
    let projection = key
        .labels()
        .find(|l| l.key() == "projection")
        .map_or(String::new(), |l| l.value().to_owned());
    (key.name().to_owned(), projection)
}

impl metrics::Recorder for Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}

    fn register_counter(&self, key: &Key, _: &MetricMetadata<'_>) -> Counter {
        let mut counters = self.counters.lock().expect("not poisoned");
        Counter::from_arc(counters.entry(key_of(key)).or_default().clone())
    }

    fn register_gauge(&self, key: &Key, _: &MetricMetadata<'_>) -> Gauge {
        let mut gauges = self.gauges.lock().expect("not poisoned");
        Gauge::from_arc(gauges.entry(key_of(key)).or_default().clone())
    }

    fn register_histogram(&self, _: &Key, _: &MetricMetadata<'_>) -> Histogram {
        Histogram::noop()
    }
}

/// This test binary's recorder, installed once.
fn recorder() -> &'static Counting {
    static RECORDER: OnceLock<&'static Counting> = OnceLock::new();
    RECORDER.get_or_init(|| {
        let recorder: &'static Counting = Box::leak(Box::default());
        metrics::set_global_recorder(recorder).expect("the only recorder of this binary");
        recorder
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_of_one_category_is_fed_only_its_events_and_moves_past_the_others()
-> Result<(), BoxError> {
    let recorder = recorder();
    let (store, _db) = fresh_database().await?;
    // 50 counter events among 450 of the same type in nine other
    // categories, which also hold the log's last events.
    append(&store, 5, 10, 1).await?;
    let mut head = 0;
    for category in 0..9 {
        for s in 0..5 {
            let events: Vec<NewEvent> = (0..10)
                .map(|_| NewEvent::from_event(&added(1), Metadata::default()))
                .collect::<Result<_, _>>()?;
            let stream = StreamId::for_aggregate(&format!("noise{category}"), &s.to_string())?;
            head = *store
                .append(&stream, ExpectedVersion::Any, events)
                .await?
                .positions
                .last()
                .expect("positions");
        }
    }
    let projection = Counts::new("one_category");
    let calls = projection.calls.clone();
    let daemon = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(projection)?;
    let (stop, task) = spawn_daemon(daemon);

    postgres::wait_for(store.pool(), "one_category", head, Duration::from_secs(20)).await?;
    assert_eq!(
        recorder.get("strata_projection_events_fetched_total", "one_category"),
        50,
        "rows fetched"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 50, "events decoded and applied");
    assert_exact(store.pool(), "one_category", 5, 10).await?;
    let status = postgres::status(store.pool(), Some("one_category")).await?;
    assert!(
        status[0].position >= head && status[0].lag_events == 0,
        "{status:?}"
    );
    // The gauges follow at the next lease renewal.
    let started = std::time::Instant::now();
    let gauge = |name| recorder.gauge(name, "one_category");
    while gauge("strata_projection_lag_positions") != Some(0.0) {
        let lag = gauge("strata_projection_lag_positions");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the lag gauge stays at {lag:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(gauge("strata_projection_head") >= Some(head as f64));
    assert!(gauge("strata_projection_position") >= Some(head as f64));
    assert_eq!(gauge("strata_projection_lag_seconds"), Some(0.0));

    stop.send(()).ok();
    task.await??;
    Ok(())
}

/// Sums deposits per account, remembering the schema versions it saw.
struct Deposits {
    seen: Arc<Mutex<Vec<(u32, u64)>>>,
}

impl Projection for Deposits {
    type Event = BankEvent;

    fn name(&self) -> &str {
        "deposits"
    }
}

#[async_trait]
impl PgProjection for Deposits {
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query("CREATE TABLE balances (account text PRIMARY KEY, deposited bigint NOT NULL)")
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut PgConnection, event: &Envelope<BankEvent>) -> Result<(), BoxError> {
        if let BankEvent::Deposited { amount } = event.event {
            self.seen
                .lock()
                .expect("not poisoned")
                .push((event.schema_version, amount));
            sqlx::query(
                "INSERT INTO balances VALUES ($1, $2)
                 ON CONFLICT (account) DO UPDATE SET deposited = balances.deposited + excluded.deposited",
            )
            .bind(event.stream_id.as_str())
            .bind(amount as i64)
            .execute(tx)
            .await?;
        }
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_sees_events_stored_at_an_old_schema_at_their_current_one() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let account = StreamId::for_aggregate("account", "a1")?;
    // `Deposited` was stored as v1 `{"value": n}`, then as v2 `{"amount": n}`.
    let v1 = new_event("Deposited", serde_json::json!({ "value": 7 }));
    let v2 = NewEvent::from_event(&BankEvent::Deposited { amount: 5 }, Metadata::default())?;
    assert_eq!((v1.schema_version, v2.schema_version), (1, 2));
    let head = store
        .append(&account, ExpectedVersion::NoStream, vec![v1, v2])
        .await?
        .positions[1];

    let seen = Arc::new(Mutex::new(Vec::new()));
    let daemon = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Deposits { seen: seen.clone() })?;
    let (stop, task) = spawn_daemon(daemon);
    postgres::wait_for(store.pool(), "deposits", head, Duration::from_secs(20)).await?;

    assert_eq!(*seen.lock().expect("not poisoned"), [(2, 7), (2, 5)]);
    let deposited: i64 =
        sqlx::query_scalar("SELECT deposited FROM deposits.balances WHERE account = 'account-a1'")
            .fetch_one(store.pool())
            .await?;
    assert_eq!(deposited, 12);

    stop.send(()).ok();
    task.await??;
    Ok(())
}
