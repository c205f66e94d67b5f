//! What the PostgreSQL projection tests share: a projection that makes a
//! double apply visible, appends, and waits.
#![allow(dead_code)] // each test binary uses a part

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool};
use strata_core::error::BoxError;
use strata_core::testing::fixtures::counter::{CounterEvent, added};
use strata_core::{Envelope, EventStore, ExpectedVersion, LogFilter, Metadata, NewEvent, StreamId};
use strata_projections::postgres::{self, PgDaemon, PgProjection};
use strata_projections::{Projection, ProjectionError, RunnerOptions};
use strata_store_postgres::PgEventStore;
use tokio::sync::{Notify, oneshot};

/// Counts events per stream: applying one twice shows as a count above the
/// stream's version.
pub struct Counts {
    pub name: &'static str,
    /// The read model's version (1 unless set).
    pub version: u32,
    /// Fail on events adding this number.
    pub poison: Option<u64>,
    /// Calls of `apply`, committed or not.
    pub calls: Arc<AtomicU64>,
    /// When set, `apply` waits here (once) before doing anything.
    pub gate: Option<Arc<Gate>>,
    /// When set, `apply` sleeps this long first (a slow read model).
    pub pause: Option<Duration>,
}

pub struct Gate {
    pub entered: Notify,
    pub release: Notify,
}

impl Counts {
    pub fn new(name: &'static str) -> Self {
        Counts {
            name,
            version: 1,
            poison: None,
            calls: Arc::new(AtomicU64::new(0)),
            gate: None,
            pause: None,
        }
    }
}

impl Projection for Counts {
    type Event = CounterEvent;

    fn name(&self) -> &str {
        self.name
    }

    fn version(&self) -> u32 {
        self.version
    }

    fn filter(&self) -> LogFilter {
        LogFilter::categories(["counter"])
    }
}

#[async_trait]
impl PgProjection for Counts {
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query("CREATE TABLE counts (stream_id text PRIMARY KEY, n bigint NOT NULL, last_version bigint NOT NULL)")
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut PgConnection, event: &Envelope<CounterEvent>) -> Result<(), BoxError> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        if let Some(pause) = self.pause {
            tokio::time::sleep(pause).await;
        }
        if let Some(gate) = &self.gate {
            gate.entered.notify_one();
            gate.release.notified().await;
        }
        let CounterEvent::Added { n, .. } = &event.event;
        if Some(*n) == self.poison {
            return Err(format!("cannot count {n}").into());
        }
        sqlx::query(
            "INSERT INTO counts VALUES ($1, 1, $2)
             ON CONFLICT (stream_id) DO UPDATE SET n = counts.n + 1, last_version = excluded.last_version",
        )
        .bind(event.stream_id.as_str())
        .bind(event.stream_version as i64)
        .execute(tx)
        .await?;
        Ok(())
    }
}

/// Log output for a failing test: `RUST_LOG=strata_projections=debug`.
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
}

pub fn fast_options() -> RunnerOptions {
    init_tracing();
    RunnerOptions {
        batch_size: 100,
        max_wait: Duration::from_millis(50),
        max_attempts: 3,
        retry_backoff: Duration::from_millis(20),
        lease: Duration::from_millis(900),
    }
}

/// Append `per_stream` events (adding `n`) to each of `streams` counters,
/// and a few to another category; the last position.
pub async fn append(
    store: &PgEventStore,
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
        let result = store.append(&stream, ExpectedVersion::Any, events).await?;
        last = last.max(*result.positions.last().expect("positions"));
        let other = StreamId::for_aggregate("other", &s.to_string())?;
        let result = store
            .append(
                &other,
                ExpectedVersion::Any,
                vec![NewEvent::from_event(&added(1), Metadata::default())?],
            )
            .await?;
        last = last.max(result.positions[0]);
    }
    Ok(last)
}

/// The readers' view of the counts, by stream.
pub async fn counts(pool: &PgPool, name: &str) -> Result<Vec<(String, i64, i64)>, BoxError> {
    Ok(sqlx::query_as(&format!(
        "SELECT stream_id, n, last_version FROM {name}.counts ORDER BY stream_id"
    ))
    .fetch_all(pool)
    .await?)
}

/// Every stream counted exactly as many times as it has events.
pub async fn assert_exact(
    pool: &PgPool,
    name: &str,
    streams: usize,
    per_stream: i64,
) -> Result<(), BoxError> {
    let rows = counts(pool, name).await?;
    assert_eq!(rows.len(), streams, "{rows:?}");
    for (stream, n, last) in rows {
        assert_eq!((n, last), (per_stream, per_stream), "stream {stream}");
    }
    Ok(())
}

pub fn spawn_daemon(
    daemon: PgDaemon,
) -> (
    oneshot::Sender<()>,
    tokio::task::JoinHandle<Result<(), ProjectionError>>,
) {
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(daemon.run(async move {
        let _ = stopped.await;
    }));
    (stop, task)
}

pub async fn wait_until(
    pool: &PgPool,
    name: &str,
    done: impl Fn(&postgres::ProjectionStatus) -> bool,
) -> Result<postgres::ProjectionStatus, BoxError> {
    let started = std::time::Instant::now();
    loop {
        if let Some(s) = postgres::status(pool, Some(name)).await?.into_iter().next() {
            if done(&s) {
                return Ok(s);
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err(format!("gave up waiting; last status {s:?}").into());
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
