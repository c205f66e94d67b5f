//! `perf`: the PostgreSQL event store against a raw sqlx baseline.
//!
//! Needs `DATABASE_URL` (a server where it may create a database); run it
//! through `scripts/bench`, which starts a throw-away server. Every figure is
//! measured for the framework and for a baseline that does the same
//! database work with plain sqlx statements (the same rows inserted into an
//! identically indexed table, the same rows read). Each raw writer holds
//! one connection for the whole measurement, as plain code running
//! statement after statement would: a sqlx pool checks a connection with a
//! round trip to the server each time it hands one out and again when it
//! comes back, which would slow the raw side. Each of five rounds runs
//! the two back to back, alternating which goes first. Each figure is
//! printed as one JSON line with `name`, `unit`, `framework` and `raw` (the
//! median rates), `ratio` (the median of the per-round ratios framework /
//! raw; higher is better) and `ratio_min`/`ratio_max`.
//!
//! `load_10k_stream_no_snapshot` loads a 10,000-event stream; its baseline
//! reads only what a fold needs (version, type, schema version, payload) in
//! pages of 1,000 rows (the handler's default `read_batch`), each page the
//! rows after the last version read, and folds them into a `Counter` with
//! the same serde types.
//!
//! The command figures run `execute(id, 1)` on the `Counter` aggregate
//! through one handler (clones of it), on fresh aggregates each round, and
//! report, summed over all rounds, `commands`, `failed` (a failed command
//! is counted, not fatal) and `conflicts` (the retries the commands took).
//! Unless said otherwise, the baseline does as many raw single-event
//! appends to one stream as the figure runs commands, one INSERT per
//! transaction, on one connection. The raw events of the command figures
//! carry the metadata a command's events do (a fresh id as correlation and
//! causation), so both sides store rows of the same size.
//!
//! - `command_long_stream_1_writer`: 2,000 commands on one stream, one at
//!   a time; also the median latency of the first and of the last tenth of
//!   them (`first_10pct_p50_ms`, `last_10pct_p50_ms`) and `flatness`, last
//!   over first, each the median over rounds.
//! - `command_one_stream_8_writers`: 8 writers × 200 commands on one
//!   stream.
//! - `command_one_stream_2_processes`: the same in two processes at once,
//!   3,200 commands (the second process is this program run again with
//!   `--child-writers`).
//! - `command_distinct_streams_16_writers`: 16 writers × 500 commands, each
//!   on a stream of its own; the baseline has 16 writers on 16
//!   connections, each appending single events to a raw stream of its own.
//!
//! The projection figures run in a database of their own:
//! `projection_catch_up` rebuilds a read model (one upsert per event) from
//! the whole log through the daemon, against a raw sqlx loop doing the same
//! work (pages below the horizon, the same upserts, a checkpoint update in
//! each page's transaction); `projection_live_lag_16_writers` reports how
//! long after an append's commit the read model's commit covers it, while
//! 16 writers append as fast as they can (p50 and p99; no baseline, no
//! ratio), and `..._paced` the same with each writer appending once every
//! 10 ms.
//!
//! Arguments: `--quick` does a tenth of the work; `--keep` keeps the
//! database; `--max-concurrent-appends=N` sets the store's option of that
//! name (its default otherwise); `--no-aggregate-cache` turns the command
//! handler's aggregate cache off (it is on by default) in the command figures;
//! `--child-writers=...` runs the second process of
//! `command_one_stream_2_processes` (internal); any other argument selects
//! the figures whose name contains it.

use std::future::Future;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgConnection, PgPool};
use strata_core::testing::fixtures::counter::{Counter, CounterEvent, added};
use strata_core::{
    Aggregate, CommandHandler, CommandHandlerOptions, Envelope, EventStore, ExpectedVersion, LogFilter,
    Metadata, NewEvent, Snapshot, StreamId, Upcasters,
};
use strata_projections::postgres::{PgDaemon, PgProjection};
use strata_projections::{Projection, RunnerOptions};
use strata_store_postgres::{PgEventStore, PgEventStoreOptions};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use uuid::Uuid;

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Res<T> = Result<T, BoxError>;

const ROUNDS: usize = 5;

/// The environment variable that gives `--child-writers` its database.
const CHILD_DB: &str = "STRATA_PERF_CHILD_DB";

type Handler = CommandHandler<Counter, PgEventStore>;

/// Whether the server commits durably (`fsync` and `synchronous_commit`
/// on), read from the server at start; printed with every figure.
static DURABLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();

fn new_event(n: u64) -> NewEvent {
    NewEvent::from_event(&added(n), Metadata::default()).expect("encodable event")
}

/// An event with the metadata a command's events carry: the command's id
/// (a fresh UUID v7) as correlation and causation. The raw side of the
/// command figures writes these, so its rows are the framework's size.
fn command_event(n: u64) -> NewEvent {
    let id = Uuid::now_v7();
    let metadata = Metadata {
        correlation_id: Some(id),
        causation_id: Some(id),
        ..Metadata::default()
    };
    NewEvent::from_event(&added(n), metadata).expect("encodable event")
}

/// One measured side: operations, elapsed time, per-operation latencies.
#[derive(Debug, Default, Clone)]
struct Sample {
    ops: u64,
    elapsed: Duration,
    latencies: Vec<Duration>,
}

impl Sample {
    fn rate(&self) -> f64 {
        self.ops as f64 / self.elapsed.as_secs_f64()
    }

    fn percentile_ms(&self, p: f64) -> Option<f64> {
        percentile_ms(&self.latencies, p)
    }
}

fn percentile_ms(latencies: &[Duration], p: f64) -> Option<f64> {
    if latencies.is_empty() {
        return None;
    }
    let mut l = latencies.to_vec();
    l.sort();
    let i = ((l.len() as f64 - 1.0) * p).round() as usize;
    Some(l[i].as_secs_f64() * 1000.0)
}

fn median(samples: &[Sample]) -> Sample {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.rate().total_cmp(&b.rate()));
    sorted.swap_remove(sorted.len() / 2)
}

/// Both sides of a figure, measured round by round, each round running the
/// two back to back (which side goes first alternates), so that a drift in
/// the machine's load hits both sides of a round alike.
#[derive(Debug, Default)]
struct Rounds {
    fw: Vec<Sample>,
    raw: Vec<Sample>,
}

impl Rounds {
    async fn run(
        &mut self,
        raw: impl Future<Output = Res<Sample>>,
        fw: impl Future<Output = Res<Sample>>,
    ) -> Res<()> {
        let (r, f) = if self.fw.len() % 2 == 0 {
            let r = raw.await?;
            (r, fw.await?)
        } else {
            let f = fw.await?;
            (raw.await?, f)
        };
        self.raw.push(r);
        self.fw.push(f);
        Ok(())
    }

    fn framework(&self) -> Sample {
        median(&self.fw)
    }

    /// Per-round ratios framework / raw, sorted.
    fn ratios(&self) -> Vec<f64> {
        let mut r: Vec<f64> = self
            .fw
            .iter()
            .zip(&self.raw)
            .map(|(f, r)| f.rate() / r.rate())
            .collect();
        r.sort_by(f64::total_cmp);
        r
    }
}

/// Print a figure: the median rate of each side, and as `ratio` the median
/// of the per-round ratios (with their range).
fn report(name: &str, unit: &str, rounds: &Rounds, extra: Value) {
    let (framework, raw) = (median(&rounds.fw), median(&rounds.raw));
    let ratios = rounds.ratios();
    let mut line = json!({
        "name": name,
        "unit": unit,
        "durable": DURABLE.get().copied().unwrap_or(false),
        "framework": round(framework.rate()),
        "raw": round(raw.rate()),
        "ratio": round3(ratios[ratios.len() / 2]),
        "ratio_min": round3(ratios[0]),
        "ratio_max": round3(ratios[ratios.len() - 1]),
        "rounds": ratios.len(),
        "ops": framework.ops,
    });
    if let Some(p50) = framework.percentile_ms(0.5) {
        line["framework_p50_ms"] = json!(round3(p50));
        line["framework_p99_ms"] = json!(round3(framework.percentile_ms(0.99).unwrap_or(p50)));
        line["raw_p50_ms"] = json!(round3(raw.percentile_ms(0.5).unwrap_or(0.0)));
        line["raw_p99_ms"] = json!(round3(raw.percentile_ms(0.99).unwrap_or(0.0)));
    }
    if let (Value::Object(line), Value::Object(extra)) = (&mut line, extra) {
        line.extend(extra);
    }
    println!("{line}");
}

fn round(x: f64) -> f64 {
    (x * 10.0).round() / 10.0
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

/// Run `writers` tasks of `per_writer` operations each; `op(writer, i)`
/// performs one operation and its latency is recorded.
async fn run_writers<F, Fut>(writers: usize, per_writer: usize, op: F) -> Res<Sample>
where
    F: Fn(usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Res<()>> + Send,
{
    let start = Instant::now();
    let tasks: Vec<_> = (0..writers)
        .map(|w| {
            let op = op.clone();
            tokio::spawn(async move {
                let mut latencies = Vec::with_capacity(per_writer);
                for i in 0..per_writer {
                    let t = Instant::now();
                    op(w, i).await?;
                    latencies.push(t.elapsed());
                }
                Ok::<_, BoxError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await??);
    }
    Ok(Sample {
        ops: (writers * per_writer) as u64,
        elapsed: start.elapsed(),
        latencies,
    })
}

/// The raw baseline's tables: copies of the framework's (made by its
/// migrations), columns, constraints and indexes, with a plain identity
/// column for the position and versions the caller computes.
const RAW_SCHEMA: &str = "
CREATE SCHEMA raw;
CREATE TABLE raw.events (LIKE strata.events INCLUDING ALL);
ALTER TABLE raw.events ALTER COLUMN global_position ADD GENERATED ALWAYS AS IDENTITY;
CREATE TABLE raw.snapshots (LIKE strata.snapshots INCLUDING ALL);";

const RAW_INSERT: &str = "INSERT INTO raw.events
    (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, category)
    VALUES ($1, $2, $3, $4, $5, $6, $7, split_part($1, '-', 1))";

const RAW_INSERT_BATCH: &str = "INSERT INTO raw.events
    (stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, category)
    SELECT $1, $2 + e.ord, e.id, e.ty, e.sv, e.payload, e.metadata, split_part($1, '-', 1)
    FROM unnest($3::uuid[], $4::text[], $5::int[], $6::jsonb[], $7::jsonb[])
        WITH ORDINALITY AS e(id, ty, sv, payload, metadata, ord)";

const RAW_READ_STREAM: &str = "SELECT global_position, stream_version, event_id, event_type, schema_version,
    payload, metadata, recorded_at FROM raw.events WHERE stream_id = $1 AND stream_version >= $2
    ORDER BY stream_version";

type RawRow = (
    i64,
    i64,
    Uuid,
    String,
    i32,
    Value,
    Value,
    // The raw side decodes `recorded_at` as the framework does.
    chrono::DateTime<chrono::Utc>,
);

/// A row of the raw global log: a reader of the log needs each event's
/// stream, which a stream read knows already.
type RawLogRow = (
    i64,
    String,
    i64,
    Uuid,
    String,
    i32,
    Value,
    Value,
    chrono::DateTime<chrono::Utc>,
);

async fn raw_insert<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    stream: &str,
    version: i64,
    e: &NewEvent,
) -> Res<()> {
    sqlx::query(RAW_INSERT)
        .bind(stream)
        .bind(version)
        .bind(e.event_id)
        .bind(&e.event_type)
        .bind(e.schema_version as i32)
        .bind(&e.payload)
        .bind(serde_json::to_value(&e.metadata)?)
        .execute(exec)
        .await?;
    Ok(())
}

async fn raw_insert_batch<'e>(
    exec: impl sqlx::PgExecutor<'e>,
    stream: &str,
    after: i64,
    events: &[NewEvent],
) -> Res<()> {
    let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
    let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
    let versions: Vec<i32> = events.iter().map(|e| e.schema_version as i32).collect();
    let payloads: Vec<&Value> = events.iter().map(|e| &e.payload).collect();
    let metadata = events
        .iter()
        .map(|e| serde_json::to_value(&e.metadata))
        .collect::<Result<Vec<_>, _>>()?;
    sqlx::query(RAW_INSERT_BATCH)
        .bind(stream)
        .bind(after)
        .bind(ids)
        .bind(types)
        .bind(versions)
        .bind(payloads)
        .bind(metadata)
        .execute(exec)
        .await?;
    Ok(())
}

/// Read `raw.events` page by page with `sql` (`$1`: the position to read
/// after; `$2`: `category`, if given) until a page comes back empty,
/// counting the rows.
async fn raw_read_pages(pool: &PgPool, sql: &str, category: Option<&str>) -> Res<Sample> {
    let mut conn = pool.acquire().await?;
    let start = Instant::now();
    let mut after = 0i64;
    let mut n = 0u64;
    loop {
        let mut query = sqlx::query_as::<_, RawLogRow>(sql).bind(after);
        if let Some(category) = category {
            query = query.bind(category);
        }
        let rows = query.fetch_all(&mut *conn).await?;
        let Some(last) = rows.last() else { break };
        after = last.0;
        n += rows.len() as u64;
    }
    Ok(Sample {
        ops: n,
        elapsed: start.elapsed(),
        latencies: Vec::new(),
    })
}

/// Read a stream the raw way and fold it like the aggregate would.
async fn raw_load(conn: &mut PgConnection, stream: &str, from: i64, mut total: u64) -> Res<(u64, i64)> {
    let rows: Vec<RawRow> = sqlx::query_as(RAW_READ_STREAM)
        .bind(stream)
        .bind(from)
        .fetch_all(conn)
        .await?;
    let mut version = from - 1;
    for row in rows {
        let CounterEvent::Added { n, .. } = decode(&row.3, row.5)?;
        total += n;
        version = row.1;
    }
    Ok((total, version))
}

/// A stored counter event, decoded with its serde types.
fn decode(event_type: &str, payload: Value) -> Res<CounterEvent> {
    Ok(serde_json::from_value(json!({ event_type: payload }))?)
}

/// Load a raw stream as the command handler does: only the columns a fold
/// needs, in pages of the handler's default `read_batch` rows, each page
/// the rows after the last version read (until a page is not full), each
/// event checked to follow the last and folded into a `Counter`.
async fn raw_fold(conn: &mut PgConnection, stream: &str) -> Res<(Counter, i64)> {
    let batch = CommandHandlerOptions::default().read_batch;
    let (mut state, mut last) = (Counter::default(), 0i64);
    loop {
        let rows: Vec<(i64, String, i32, Value)> = sqlx::query_as(
            "SELECT stream_version, event_type, schema_version, payload FROM raw.events
             WHERE stream_id = $1 AND stream_version > $2 ORDER BY stream_version LIMIT $3",
        )
        .bind(stream)
        .bind(last)
        .bind(batch as i64)
        .fetch_all(&mut *conn)
        .await?;
        let full = rows.len() == batch;
        for (version, event_type, schema, payload) in rows {
            let current = <CounterEvent as strata_core::Event>::current_version(&event_type);
            if version != last + 1 || schema != current as i32 {
                return Err(format!("{stream}: event {version} (schema {schema}) after {last}").into());
            }
            state.apply(&decode(&event_type, payload)?);
            last = version;
        }
        if !full {
            return Ok((state, last));
        }
    }
}

/// A raw writer's connection (only its writer locks it).
type Held = Arc<tokio::sync::Mutex<sqlx::pool::PoolConnection<sqlx::Postgres>>>;

/// [`run_writers`] for the raw side: `op(conn, w, i)`, writer `w` on a
/// connection of `pool` it holds for the whole measurement (taken before
/// the clock starts).
async fn raw_writers<F, Fut>(pool: PgPool, writers: usize, per_writer: usize, op: F) -> Res<Sample>
where
    F: Fn(Held, usize, usize) -> Fut + Clone + Send + 'static,
    Fut: Future<Output = Res<()>> + Send,
{
    let mut held: Vec<Held> = Vec::with_capacity(writers);
    for _ in 0..writers {
        held.push(Arc::new(tokio::sync::Mutex::new(pool.acquire().await?)));
    }
    run_writers(writers, per_writer, move |w, i| op(Arc::clone(&held[w]), w, i)).await
}

/// Single-event appends by `writers` writers, each on a connection of
/// `pool` it holds and a fresh raw stream of its own (versions 1, 2, ...),
/// one INSERT per transaction, of events made by `event`.
async fn raw_appends(
    pool: PgPool,
    writers: usize,
    per_writer: usize,
    event: fn(u64) -> NewEvent,
) -> Res<Sample> {
    let tag = Uuid::now_v7();
    raw_writers(pool, writers, per_writer, move |conn, w, i| async move {
        let mut conn = conn.lock().await;
        raw_insert(&mut **conn, &format!("raw-{tag}-{w}"), i as i64 + 1, &event(1)).await
    })
    .await
}

/// What commands did: how many were run, how many failed, how many
/// retries after conflicts they took.
#[derive(Debug, Default, Clone, Copy)]
struct Counts {
    commands: u64,
    failed: u64,
    retries: u64,
}

impl Counts {
    fn add(&mut self, other: Counts) {
        self.commands += other.commands;
        self.failed += other.failed;
        self.retries += other.retries;
    }

    fn json(&self) -> Value {
        json!({ "commands": self.commands, "failed": self.failed, "conflicts": self.retries })
    }
}

/// `per_writer` commands (`execute(id, 1)`) by each of `ids.len()`
/// writers through clones of `handler`, writer `w` on aggregate `ids[w]`.
/// A failed command is counted, not fatal; the sample counts the commands
/// that succeeded.
async fn run_commands(handler: Handler, ids: Vec<String>, per_writer: usize) -> Res<(Sample, Counts)> {
    let (retries, failed) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (r, f) = (retries.clone(), failed.clone());
    let writers = ids.len();
    let mut sample = run_writers(writers, per_writer, move |w, _| {
        let (handler, id, retries, failed) = (handler.clone(), ids[w].clone(), r.clone(), f.clone());
        async move {
            match handler.execute(&id, 1).await {
                Ok(outcome) => retries.fetch_add(outcome.retries as u64, Ordering::Relaxed),
                Err(e) if failed.fetch_add(1, Ordering::Relaxed) == 0 => {
                    let pid = std::process::id();
                    eprintln!("perf (pid {pid}): a command failed (the others are only counted): {e}");
                    0
                }
                Err(_) => 0,
            };
            Ok(())
        }
    })
    .await?;
    let counts = Counts {
        commands: sample.ops,
        failed: failed.load(Ordering::Relaxed),
        retries: retries.load(Ordering::Relaxed),
    };
    sample.ops -= counts.failed;
    Ok((sample, counts))
}

/// Rounds of `raw` against `fw`, the commands' counts summed.
async fn command_rounds<R, F>(raw: impl Fn() -> R, fw: impl Fn() -> F) -> Res<(Rounds, Counts)>
where
    R: Future<Output = Res<Sample>>,
    F: Future<Output = Res<(Sample, Counts)>>,
{
    let (mut rounds, mut counts) = (Rounds::default(), Counts::default());
    for _ in 0..ROUNDS {
        let fw = fw();
        let counted = async {
            let (sample, c) = fw.await?;
            counts.add(c);
            Ok(sample)
        };
        rounds.run(raw(), counted).await?;
    }
    Ok((rounds, counts))
}

/// The command figures' handler: no snapshots, the aggregate cache on
/// (the default) unless `--no-aggregate-cache`.
fn command_handler(store: PgEventStore) -> Handler {
    let options = CommandHandlerOptions {
        snapshot_every: None,
        cache: (!std::env::args().any(|a| a == "--no-aggregate-cache"))
            .then(strata_core::CacheOptions::default),
        ..CommandHandlerOptions::default()
    };
    CommandHandler::with_options(store, Upcasters::new(), options)
}

/// The store, with `--max-concurrent-appends=N` applied.
async fn connect_store(url: &str) -> Res<PgEventStore> {
    let mut options = PgEventStoreOptions::new(url).max_connections(20);
    if let Some(n) =
        std::env::args().find_map(|a| a.strip_prefix("--max-concurrent-appends=").map(str::to_owned))
    {
        options = options.max_concurrent_appends(n.parse()?);
    }
    Ok(options.connect().await?)
}

/// Open `writers` connections of the handler's pool before a measurement
/// (concurrent loads of an aggregate that does not exist).
async fn warm_up(handler: &Handler, writers: usize) -> Res<()> {
    let handler = handler.clone();
    run_writers(writers, 1, move |_, _| {
        let handler = handler.clone();
        async move {
            handler.load("warm-up").await?;
            Ok(())
        }
    })
    .await?;
    Ok(())
}

/// The second process of `command_one_stream_2_processes`, run as
/// `perf --child-writers=<aggregate id>,<writers>,<per writer>` with the
/// database's URL in `STRATA_PERF_CHILD_DB`: it connects, prints `ready`,
/// waits for a line on stdin, runs its writers through a handler of its
/// own and prints their counts and latencies as one JSON line.
async fn child_writers(spec: &str) -> Res<()> {
    let [id, writers, per_writer] = spec.splitn(3, ',').collect::<Vec<_>>()[..] else {
        return Err(format!("--child-writers={spec}: want <aggregate id>,<writers>,<per writer>").into());
    };
    let writers: usize = writers.parse()?;
    let handler = command_handler(connect_store(&std::env::var(CHILD_DB)?).await?);
    warm_up(&handler, writers).await?;
    println!("ready");
    BufReader::new(tokio::io::stdin()).lines().next_line().await?;
    let (sample, counts) = run_commands(handler, vec![id.to_owned(); writers], per_writer.parse()?).await?;
    let latencies: Vec<u64> = sample.latencies.iter().map(|l| l.as_micros() as u64).collect();
    let mut line = counts.json();
    line["latencies_us"] = json!(latencies);
    println!("{line}");
    Ok(())
}

struct Bench {
    store: PgEventStore,
    pool: PgPool,
    /// A pool of one connection, for the raw baselines on one connection.
    serial: PgPool,
    /// The database's URL, for the second process.
    url: String,
}

impl Bench {
    fn sid(&self, name: String) -> StreamId {
        StreamId::new(name).expect("valid stream id")
    }

    /// Single-event appends by `writers` writers on their own streams.
    async fn single_appends(&self, writers: usize, per_writer: usize) -> Res<Rounds> {
        let mut rounds = Rounds::default();
        for _ in 0..ROUNDS {
            let tag = Uuid::now_v7();
            let raw = raw_appends(self.pool.clone(), writers, per_writer, new_event);
            let store = self.store.clone();
            let streams: Vec<StreamId> = (0..writers).map(|w| self.sid(format!("fw-{tag}-{w}"))).collect();
            let fw = run_writers(writers, per_writer, move |w, i| {
                let (store, stream) = (store.clone(), streams[w].clone());
                async move {
                    store
                        .append(&stream, ExpectedVersion::Exact(i as u64), vec![new_event(1)])
                        .await?;
                    Ok(())
                }
            });
            rounds.run(raw, fw).await?;
        }
        Ok(rounds)
    }

    /// Batches of `size` events by `writers` writers on their own streams;
    /// the samples count events.
    async fn batch_appends(&self, writers: usize, batches: usize, size: usize) -> Res<Rounds> {
        let mut rounds = Rounds::default();
        let per_event = |sample: Res<Sample>| {
            sample.map(|mut s| {
                s.ops *= size as u64;
                s
            })
        };
        for _ in 0..ROUNDS {
            let tag = Uuid::now_v7();
            let raw = raw_writers(
                self.pool.clone(),
                writers,
                batches,
                move |conn, w, i| async move {
                    let events: Vec<_> = (0..size).map(|n| new_event(n as u64)).collect();
                    let mut conn = conn.lock().await;
                    let stream = format!("raw-{tag}-{w}");
                    raw_insert_batch(&mut **conn, &stream, (i * size) as i64, &events).await
                },
            );
            let store = self.store.clone();
            let streams: Vec<StreamId> = (0..writers).map(|w| self.sid(format!("fw-{tag}-{w}"))).collect();
            let fw = run_writers(writers, batches, move |w, i| {
                let (store, stream) = (store.clone(), streams[w].clone());
                async move {
                    let events: Vec<_> = (0..size).map(|n| new_event(n as u64)).collect();
                    store
                        .append(&stream, ExpectedVersion::Exact((i * size) as u64), events)
                        .await?;
                    Ok(())
                }
            });
            rounds
                .run(async { per_event(raw.await) }, async { per_event(fw.await) })
                .await?;
        }
        Ok(rounds)
    }

    /// Full command round trips (load, decide, append) over 64 aggregates
    /// per writer.
    async fn commands(&self, writers: usize, per_writer: usize) -> Res<Rounds> {
        let mut rounds = Rounds::default();
        for _ in 0..ROUNDS {
            let tag = Uuid::now_v7();
            let raw = raw_writers(
                self.pool.clone(),
                writers,
                per_writer,
                move |conn, w, i| async move {
                    let stream = format!("raw-{tag}-{w}-{}", i % 64);
                    let mut conn = conn.lock().await;
                    let (total, version) = raw_load(&mut conn, &stream, 1, 0).await?;
                    let event = command_event(total % 7 + 1);
                    raw_insert(&mut **conn, &stream, version + 1, &event).await
                },
            );
            let handler = command_handler(self.store.clone());
            let fw = run_writers(writers, per_writer, move |w, i| {
                let handler = handler.clone();
                async move {
                    let id = format!("{tag}-{w}-{}", i % 64);
                    handler.execute(&id, 1).await?;
                    Ok(())
                }
            });
            rounds.run(raw, fw).await?;
        }
        Ok(rounds)
    }

    /// `writers` × `per_writer` commands through one handler, on one fresh
    /// aggregate per round (`one_stream`) or one fresh aggregate per
    /// writer, against `raw`.
    async fn command_figure<R: Future<Output = Res<Sample>>>(
        &self,
        writers: usize,
        per_writer: usize,
        one_stream: bool,
        raw: impl Fn() -> R,
    ) -> Res<(Rounds, Counts)> {
        let handler = command_handler(self.store.clone());
        warm_up(&handler, writers).await?;
        command_rounds(raw, || {
            let tag = Uuid::now_v7();
            let ids = (0..writers)
                .map(|w| {
                    if one_stream {
                        tag.to_string()
                    } else {
                        format!("{tag}-{w}")
                    }
                })
                .collect();
            run_commands(handler.clone(), ids, per_writer)
        })
        .await
    }

    /// `writers` × `per_writer` commands on one fresh aggregate in this
    /// process and as many in a second one (this program, run with
    /// `--child-writers`), started together; the sample covers both.
    async fn two_processes(
        &self,
        handler: Handler,
        writers: usize,
        per_writer: usize,
    ) -> Res<(Sample, Counts)> {
        let id = Uuid::now_v7().to_string();
        let mut child = tokio::process::Command::new(std::env::current_exe()?)
            .arg(format!("--child-writers={id},{writers},{per_writer}"))
            .args(
                std::env::args()
                    .filter(|a| a == "--no-aggregate-cache" || a.starts_with("--max-concurrent-appends=")),
            )
            .env(CHILD_DB, &self.url)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()?;
        let mut start_signal = child.stdin.take().ok_or("the child has no stdin")?;
        let mut lines = BufReader::new(child.stdout.take().ok_or("the child has no stdout")?).lines();
        if lines.next_line().await?.as_deref() != Some("ready") {
            return Err("the child process did not get ready".into());
        }
        let start = Instant::now();
        start_signal.write_all(b"go\n").await?;
        let (mut sample, mut counts) = run_commands(handler, vec![id; writers], per_writer).await?;
        let line = lines
            .next_line()
            .await?
            .ok_or("the child process printed no result")?;
        sample.elapsed = start.elapsed();
        if !child.wait().await?.success() {
            return Err("the child process failed".into());
        }
        let theirs: Value = serde_json::from_str(&line)?;
        let field = |name: &str| {
            theirs[name]
                .as_u64()
                .ok_or(format!("the child's {name} is missing"))
        };
        let child_counts = Counts {
            commands: field("commands")?,
            failed: field("failed")?,
            retries: field("conflicts")?,
        };
        counts.add(child_counts);
        sample.ops += child_counts.commands - child_counts.failed;
        let latencies = theirs["latencies_us"]
            .as_array()
            .ok_or("the child's latencies are missing")?;
        sample.latencies.extend(
            latencies
                .iter()
                .filter_map(Value::as_u64)
                .map(Duration::from_micros),
        );
        Ok((sample, counts))
    }

    /// Fill one framework stream and one raw stream with `len` events.
    async fn long_streams(&self, len: usize) -> Res<(StreamId, String)> {
        let tag = Uuid::now_v7();
        let fw = self.sid(format!("counter-long-{tag}"));
        let raw = format!("raw-long-{tag}");
        for chunk in 0..len.div_ceil(1000) {
            let n = (len - chunk * 1000).min(1000);
            let events: Vec<_> = (0..n).map(|i| new_event(i as u64)).collect();
            self.store
                .append(&fw, ExpectedVersion::Exact((chunk * 1000) as u64), events.clone())
                .await?;
            let fresh: Vec<_> = events.iter().map(|_| new_event(1)).collect();
            raw_insert_batch(&self.pool, &raw, (chunk * 1000) as i64, &fresh).await?;
        }
        Ok((fw, raw))
    }

    /// Loading a `len`-event stream, without or with a snapshot at its end.
    async fn loads(&self, len: usize, snapshot: bool, loads: usize) -> Res<Rounds> {
        let (fw_stream, raw_stream) = self.long_streams(len).await?;
        let id = fw_stream.as_str().trim_start_matches("counter-").to_owned();
        let options = CommandHandlerOptions {
            snapshot_every: snapshot.then_some(1_000_000),
            // Each load reads the store: the cache would serve it from memory.
            cache: None,
            ..CommandHandlerOptions::default()
        };
        let handler =
            CommandHandler::<Counter, _>::with_options(self.store.clone(), Upcasters::new(), options);
        if snapshot {
            let (state, version) = handler.load(&id).await?;
            self.store
                .save_snapshot(Snapshot {
                    stream_id: fw_stream.clone(),
                    stream_version: version,
                    schema_version: Counter::SNAPSHOT_VERSION,
                    state: serde_json::to_value(&state)?,
                })
                .await?;
            sqlx::query("INSERT INTO raw.snapshots (stream_id, stream_version, schema_version, state) VALUES ($1, $2, 1, $3)")
                .bind(&raw_stream)
                .bind(len as i64)
                .bind(serde_json::to_value(&state)?)
                .execute(&self.pool)
                .await?;
        }
        let mut rounds = Rounds::default();
        for _ in 0..ROUNDS {
            let raw_stream = raw_stream.clone();
            let raw = raw_writers(self.pool.clone(), 1, loads, move |conn, _, _| {
                let stream = raw_stream.clone();
                async move {
                    let mut conn = conn.lock().await;
                    if !snapshot {
                        raw_fold(&mut conn, &stream).await?;
                        return Ok(());
                    }
                    let (version, state): (i64, Value) = sqlx::query_as(
                        "SELECT stream_version, state FROM raw.snapshots WHERE stream_id = $1",
                    )
                    .bind(&stream)
                    .fetch_one(&mut **conn)
                    .await?;
                    raw_load(
                        &mut conn,
                        &stream,
                        version + 1,
                        serde_json::from_value::<Counter>(state)?.total,
                    )
                    .await?;
                    Ok(())
                }
            });
            let handler = handler.clone();
            let id = id.clone();
            let fw = run_writers(1, loads, move |_, _| {
                let (handler, id) = (handler.clone(), id.clone());
                async move {
                    handler.load(&id).await?;
                    Ok(())
                }
            });
            rounds.run(raw, fw).await?;
        }
        Ok(rounds)
    }

    /// Loading a snapshotted 10k-event stream against loading a snapshotted
    /// 1k-event one, both through the framework, round by round: the ratio
    /// shows whether a snapshot makes loading independent of length.
    async fn snapshot_length_independence(&self, loads: usize) -> Res<Rounds> {
        let options = CommandHandlerOptions {
            snapshot_every: Some(1_000_000),
            // Each load reads the store: the cache would serve it from memory.
            cache: None,
            ..CommandHandlerOptions::default()
        };
        let handler =
            CommandHandler::<Counter, _>::with_options(self.store.clone(), Upcasters::new(), options);
        let mut ids = Vec::new();
        for len in [1_000, 10_000] {
            let (stream, _) = self.long_streams(len).await?;
            let id = stream.as_str().trim_start_matches("counter-").to_owned();
            let (state, version) = handler.load(&id).await?;
            self.store
                .save_snapshot(Snapshot {
                    stream_id: stream,
                    stream_version: version,
                    schema_version: Counter::SNAPSHOT_VERSION,
                    state: serde_json::to_value(&state)?,
                })
                .await?;
            ids.push(id);
        }
        let mut rounds = Rounds::default();
        for _ in 0..ROUNDS {
            let load = |id: String| {
                let handler = handler.clone();
                run_writers(1, loads, move |_, _| {
                    let (handler, id) = (handler.clone(), id.clone());
                    async move {
                        handler.load(&id).await?;
                        Ok(())
                    }
                })
            };
            rounds.run(load(ids[0].clone()), load(ids[1].clone())).await?;
        }
        Ok(rounds)
    }

    /// Units of work of one writer: one event and one side-table row, one
    /// commit; raw: the same two inserts in one transaction.
    async fn unit_of_work_appends(&self, units: usize) -> Res<Rounds> {
        sqlx::query("CREATE TABLE IF NOT EXISTS side (id uuid PRIMARY KEY)")
            .execute(&self.pool)
            .await?;
        let mut rounds = Rounds::default();
        for _ in 0..ROUNDS {
            let tag = Uuid::now_v7();
            let raw = async {
                let mut conn = self.pool.acquire().await?;
                let start = Instant::now();
                let mut latencies = Vec::with_capacity(units);
                let stream = format!("raw-{tag}");
                for i in 0..units {
                    let began = Instant::now();
                    let mut tx = sqlx::Connection::begin(&mut *conn).await?;
                    raw_insert(&mut *tx, &stream, i as i64 + 1, &new_event(1)).await?;
                    sqlx::query("INSERT INTO side VALUES ($1)")
                        .bind(Uuid::now_v7())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    latencies.push(began.elapsed());
                }
                Ok(Sample {
                    ops: units as u64,
                    elapsed: start.elapsed(),
                    latencies,
                })
            };
            let fw = async {
                let start = Instant::now();
                let mut latencies = Vec::with_capacity(units);
                let stream = self.sid(format!("fw-{tag}"));
                for i in 0..units {
                    let began = Instant::now();
                    let unit = self
                        .store
                        .begin()
                        .await?
                        .append(&stream, ExpectedVersion::Exact(i as u64), vec![new_event(1)])
                        .await?;
                    let strata_store_postgres::UnitAppend::Appended(mut unit) = unit else {
                        return Err("the batch was stored already".into());
                    };
                    sqlx::query("INSERT INTO side VALUES ($1)")
                        .bind(Uuid::now_v7())
                        .execute(unit.connection())
                        .await?;
                    unit.commit().await?;
                    latencies.push(began.elapsed());
                }
                Ok(Sample {
                    ops: units as u64,
                    elapsed: start.elapsed(),
                    latencies,
                })
            };
            rounds.run(raw, fw).await?;
        }
        Ok(rounds)
    }

    /// Read every event of one category out of ten, `events` in all; raw:
    /// the same rows by an indexed query on the category.
    async fn read_category(&self, events: usize) -> Res<Rounds> {
        let tag = Uuid::now_v7().simple().to_string();
        let per_stream = 100;
        for s in 0..events / per_stream {
            let category = format!("c{}x{tag}", s % 10);
            let fw_stream = StreamId::for_aggregate(&category, &s.to_string())?;
            let batch: Vec<NewEvent> = (0..per_stream).map(|_| new_event(1)).collect();
            self.store
                .append(&fw_stream, ExpectedVersion::NoStream, batch.clone())
                .await?;
            raw_insert_batch(&self.pool, &format!("{category}-{s}"), 0, &batch).await?;
        }
        // Both tables with fresh statistics, so that neither side's plan
        // depends on when autovacuum last looked.
        sqlx::query("ANALYZE strata.events, raw.events")
            .execute(&self.pool)
            .await?;
        let wanted = format!("c0x{tag}");
        let mut rounds = Rounds::default();
        for _ in 0..ROUNDS {
            let raw = raw_read_pages(
                &self.pool,
                "SELECT global_position, stream_id, stream_version, event_id, event_type,
                     schema_version, payload, metadata, recorded_at FROM raw.events
                 WHERE global_position > $1 AND category = $2
                 ORDER BY global_position LIMIT 1000",
                Some(&wanted),
            );
            let fw = async {
                let start = Instant::now();
                let filter = strata_core::LogFilter::categories([wanted.as_str()]);
                let mut after = 0u64;
                let mut n = 0u64;
                loop {
                    let page = self.store.read_all_filtered(after, 1000, &filter).await?;
                    n += page.events.len() as u64;
                    after = page.scanned_to;
                    if page.reached_end {
                        break;
                    }
                }
                Ok(Sample {
                    ops: n,
                    elapsed: start.elapsed(),
                    latencies: Vec::new(),
                })
            };
            rounds.run(raw, fw).await?;
        }
        Ok(rounds)
    }

    /// Reading the whole global log from position 0 in pages of 1000.
    async fn read_log(&self) -> Res<Rounds> {
        let mut rounds = Rounds::default();
        for _ in 0..ROUNDS {
            let raw = raw_read_pages(
                &self.pool,
                "SELECT global_position, stream_id, stream_version, event_id, event_type,
                     schema_version, payload, metadata, recorded_at FROM raw.events WHERE global_position > $1
                 ORDER BY global_position LIMIT 1000",
                None,
            );
            let fw = async {
                let start = Instant::now();
                let mut after = 0u64;
                let mut n = 0u64;
                loop {
                    let page = self.store.read_all(after, 1000).await?;
                    let Some(last) = page.last() else { break };
                    after = last.global_position;
                    n += page.len() as u64;
                }
                Ok(Sample {
                    ops: n,
                    elapsed: start.elapsed(),
                    latencies: Vec::new(),
                })
            };
            rounds.run(raw, fw).await?;
        }
        Ok(rounds)
    }
}

/// The read model both sides of the projection figures build: per stream,
/// how many events and the sum of what they add.
const COUNTS_TABLE: &str =
    "CREATE TABLE counts (stream_id text PRIMARY KEY, n bigint NOT NULL, total bigint NOT NULL)";

const COUNTS_UPSERT: &str = "INSERT INTO counts VALUES ($1, 1, $2)
    ON CONFLICT (stream_id) DO UPDATE SET n = counts.n + 1, total = counts.total + excluded.total";

/// The framework's side: a projection of every event into `counts`.
struct BenchCounts {
    name: String,
}

impl Projection for BenchCounts {
    type Event = CounterEvent;

    fn name(&self) -> &str {
        &self.name
    }

    fn filter(&self) -> LogFilter {
        LogFilter::all()
    }
}

#[async_trait]
impl PgProjection for BenchCounts {
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query(COUNTS_TABLE).execute(tx).await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut PgConnection, event: &Envelope<CounterEvent>) -> Result<(), BoxError> {
        let CounterEvent::Added { n, .. } = &event.event;
        sqlx::query(COUNTS_UPSERT)
            .bind(event.stream_id.as_str())
            .bind(*n as i64)
            .execute(tx)
            .await?;
        Ok(())
    }
}

/// The projection figures' store, in a database of its own, so that the
/// log holds only what they append.
struct ProjectionBench {
    store: PgEventStore,
    pool: PgPool,
}

const PROJECTION_BATCH: usize = 500;

impl ProjectionBench {
    /// `events` counter events over 1,000 streams, appended in batches of 100;
    /// the last position.
    async fn fill(&self, events: usize) -> Res<u64> {
        let mut last = 0;
        let tag = Uuid::now_v7().simple().to_string();
        for (i, chunk) in (0..events).collect::<Vec<_>>().chunks(100).enumerate() {
            let stream = StreamId::for_aggregate("counter", &format!("{tag}-{}", i % 1000))?;
            let batch: Vec<_> = chunk.iter().map(|n| new_event(*n as u64 % 7 + 1)).collect();
            let result = self.store.append(&stream, ExpectedVersion::Any, batch).await?;
            last = last.max(*result.positions.last().expect("positions"));
        }
        Ok(last)
    }

    /// Wait until projection `name` has passed `position`, polling its row
    /// every millisecond; when it did.
    async fn reached(&self, name: &str, position: u64) -> Res<Instant> {
        loop {
            let at: Option<i64> = sqlx::query_scalar(
                "SELECT position FROM strata.projections WHERE name = $1 AND stage = 'active'",
            )
            .bind(name)
            .fetch_optional(&self.pool)
            .await?;
            if at.is_some_and(|p| p as u64 >= position) {
                return Ok(Instant::now());
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }

    /// A daemon running one fresh `BenchCounts`; the stop switch and task.
    fn daemon(&self, name: &str) -> Res<(tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>)> {
        let daemon = PgDaemon::new(self.store.clone())
            .with_options(RunnerOptions {
                batch_size: PROJECTION_BATCH,
                ..RunnerOptions::default()
            })
            .register(BenchCounts {
                name: name.to_owned(),
            })?;
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(async move {
            let _ = daemon
                .run(async move {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok((stop, task))
    }

    /// The raw loop: pages of the log below the horizon, in position order,
    /// each decoded, upserted and checkpointed in one transaction.
    async fn raw_catch_up(&self, schema: &str) -> Res<Sample> {
        self.pool
            .execute(
                format!(
                    "CREATE SCHEMA {schema}; SET search_path = {schema};
                     {COUNTS_TABLE}; CREATE TABLE checkpoint (position bigint NOT NULL);
                     INSERT INTO checkpoint VALUES (0); RESET search_path"
                )
                .as_str(),
            )
            .await?;
        let mut conn = self.pool.acquire().await?;
        let start = Instant::now();
        let mut after = 0i64;
        let mut n = 0u64;
        loop {
            let mut tx = sqlx::Connection::begin(&mut *conn).await?;
            sqlx::query("SELECT set_config('search_path', $1, true)")
                .bind(schema)
                .execute(&mut *tx)
                .await?;
            let rows: Vec<RawLogRow> = sqlx::query_as(
                "SELECT global_position, stream_id, stream_version, event_id, event_type, schema_version,
                     payload, metadata, recorded_at FROM strata.events
                 WHERE global_position > $1
                   AND global_position < pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20
                 ORDER BY global_position LIMIT $2",
            )
            .bind(after)
            .bind(PROJECTION_BATCH as i64)
            .fetch_all(&mut *tx)
            .await?;
            let Some(last) = rows.last().map(|r| r.0) else {
                break;
            };
            for row in &rows {
                let CounterEvent::Added { n, .. } = serde_json::from_value(json!({ &row.4: &row.6 }))?;
                sqlx::query(COUNTS_UPSERT)
                    .bind(&row.1)
                    .bind(n as i64)
                    .execute(&mut *tx)
                    .await?;
            }
            sqlx::query("UPDATE checkpoint SET position = $1")
                .bind(last)
                .execute(&mut *tx)
                .await?;
            tx.commit().await?;
            n += rows.len() as u64;
            after = last;
        }
        Ok(Sample {
            ops: n,
            elapsed: start.elapsed(),
            latencies: Vec::new(),
        })
    }

    /// The framework: a new projection, through the daemon, from 0 to `head`.
    async fn framework_catch_up(&self, name: &str, head: u64, events: usize) -> Res<Sample> {
        let start = Instant::now();
        let (stop, task) = self.daemon(name)?;
        let done = self.reached(name, head).await?;
        let _ = stop.send(());
        task.await?;
        Ok(Sample {
            ops: events as u64,
            elapsed: done - start,
            latencies: Vec::new(),
        })
    }

    async fn catch_up(&self, events: usize) -> Res<Rounds> {
        let head = self.fill(events).await?;
        sqlx::query("ANALYZE strata.events").execute(&self.pool).await?;
        let mut rounds = Rounds::default();
        for round in 0..ROUNDS {
            let (raw_schema, name) = (format!("raw_{round}"), format!("catch_up_{round}"));
            let raw = self.raw_catch_up(&raw_schema);
            let fw = self.framework_catch_up(&name, head, events);
            rounds.run(raw, fw).await?;
        }
        Ok(rounds)
    }

    /// Milliseconds from each append's commit to the read model's commit
    /// covering it, with `writers` appending single events, each as fast as
    /// it can or one every `pace`.
    async fn live_lag(
        &self,
        name: &str,
        writers: usize,
        per_writer: usize,
        pace: Option<Duration>,
    ) -> Res<Vec<f64>> {
        let (stop, task) = self.daemon(name)?;
        // Caught up with what is there first.
        let current: i64 = sqlx::query_scalar("SELECT coalesce(max(global_position), 0) FROM strata.events")
            .fetch_one(&self.pool)
            .await?;
        self.reached(name, current as u64).await?;
        // A poller notes when the projection's position moves.
        let polling = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
        let poller = tokio::spawn({
            let (pool, polling, name) = (self.pool.clone(), polling.clone(), name.to_owned());
            async move {
                let mut seen: Vec<(Instant, u64)> = Vec::new();
                while polling.load(std::sync::atomic::Ordering::SeqCst) {
                    let at: i64 = sqlx::query_scalar(
                        "SELECT position FROM strata.projections WHERE name = $1 AND stage = 'active'",
                    )
                    .bind(&name)
                    .fetch_one(&pool)
                    .await?;
                    if seen.last().is_none_or(|(_, p)| *p != at as u64) {
                        seen.push((Instant::now(), at as u64));
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Ok::<_, BoxError>(seen)
            }
        });
        let tag = Uuid::now_v7().simple().to_string();
        let appenders: Vec<_> = (0..writers)
            .map(|w| {
                let store = self.store.clone();
                let stream = StreamId::for_aggregate("counter", &format!("live-{tag}-{w}"));
                tokio::spawn(async move {
                    let stream = stream?;
                    let mut committed = Vec::with_capacity(per_writer);
                    for i in 0..per_writer {
                        let result = store
                            .append(&stream, ExpectedVersion::Exact(i as u64), vec![new_event(1)])
                            .await?;
                        committed.push((result.positions[0], Instant::now()));
                        if let Some(pace) = pace {
                            tokio::time::sleep(pace).await;
                        }
                    }
                    Ok::<_, BoxError>(committed)
                })
            })
            .collect();
        let mut committed = Vec::new();
        for a in appenders {
            committed.extend(a.await??);
        }
        let last = committed.iter().map(|c| c.0).max().unwrap_or(0);
        self.reached(name, last).await?;
        polling.store(false, std::sync::atomic::Ordering::SeqCst);
        let seen = poller.await??;
        let _ = stop.send(());
        task.await?;
        let mut lags: Vec<f64> = committed
            .iter()
            .map(|(position, at)| {
                let covered = seen
                    .iter()
                    .find(|(_, p)| p >= position)
                    .map_or(*at, |(when, _)| *when);
                covered.saturating_duration_since(*at).as_secs_f64() * 1000.0
            })
            .collect();
        lags.sort_by(f64::total_cmp);
        Ok(lags)
    }
}

#[tokio::main]
async fn main() -> Res<()> {
    if let Some(spec) = std::env::args().find_map(|a| a.strip_prefix("--child-writers=").map(str::to_owned)) {
        return child_writers(&spec).await;
    }
    let url = std::env::var("DATABASE_URL").map_err(|_| "DATABASE_URL is not set; run scripts/bench")?;
    let quick = std::env::args().any(|a| a == "--quick");
    // Other arguments select figures by a part of their name.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    let wanted = |name: &str| filters.is_empty() || filters.iter().any(|f| name.contains(f.as_str()));
    let scale = if quick { 10 } else { 1 };
    let admin = PgPoolOptions::new().max_connections(1).connect(&url).await?;
    let db = format!("strata_bench_{}", Uuid::now_v7().simple());
    admin.execute(format!("CREATE DATABASE {db}").as_str()).await?;
    let db_url = match url.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{db}"),
        None => return Err("DATABASE_URL has no database name".into()),
    };
    let store = connect_store(&db_url).await?;
    store.migrate().await?;
    let pool = PgPoolOptions::new().max_connections(20).connect(&db_url).await?;
    let serial = PgPoolOptions::new().max_connections(1).connect(&db_url).await?;
    pool.execute(RAW_SCHEMA).await?;
    let (fsync, sync_commit): (String, String) =
        sqlx::query_as("SELECT current_setting('fsync'), current_setting('synchronous_commit')")
            .fetch_one(&pool)
            .await?;
    let _ = DURABLE.set(fsync == "on" && sync_commit == "on");
    let bench = Bench {
        store,
        pool,
        serial,
        url: db_url.clone(),
    };

    if wanted("append_single_1_writer") {
        let rounds = bench.single_appends(1, 1500 / scale).await?;
        report("append_single_1_writer", "events/s", &rounds, json!({}));
    }
    if wanted("append_single_16_writers") {
        let rounds = bench.single_appends(16, 200 / scale).await?;
        report("append_single_16_writers", "events/s", &rounds, json!({}));
    }
    if wanted("append_batch100_1_writer") {
        let rounds = bench.batch_appends(1, 40 / scale, 100).await?;
        report("append_batch100_1_writer", "events/s", &rounds, json!({}));
    }
    if wanted("append_batch100_8_writers") {
        let rounds = bench.batch_appends(8, 15 / scale, 100).await?;
        report("append_batch100_8_writers", "events/s", &rounds, json!({}));
    }
    if wanted("command_round_trip_1_writer") {
        let rounds = bench.commands(1, 1000 / scale).await?;
        report("command_round_trip_1_writer", "commands/s", &rounds, json!({}));
    }
    if wanted("command_round_trip_16_writers") {
        let rounds = bench.commands(16, 150 / scale).await?;
        report("command_round_trip_16_writers", "commands/s", &rounds, json!({}));
    }
    let serial_appends = |n: usize| raw_appends(bench.serial.clone(), 1, n, command_event);
    let one_connection =
        "single-event appends to one raw stream, one INSERT per transaction, on one connection";
    if wanted("command_long_stream_1_writer") {
        let n = 2000 / scale;
        let (rounds, counts) = bench.command_figure(1, n, true, || serial_appends(n)).await?;
        let mut extra = counts.json();
        extra["baseline"] = json!(format!("{n} {one_connection}"));
        // Per round: the median latency of the first and of the last tenth
        // of the commands, in order.
        let (mut first, mut last, mut flatness) = (Vec::new(), Vec::new(), Vec::new());
        for sample in &rounds.fw {
            let (all, tenth) = (&sample.latencies, (sample.latencies.len() / 10).max(1));
            let p50 = |l: &[Duration]| percentile_ms(l, 0.5).unwrap_or(0.0);
            let (f, l) = (p50(&all[..tenth]), p50(&all[all.len() - tenth..]));
            first.push(f);
            last.push(l);
            flatness.push(l / f);
        }
        for (key, mut values) in [
            ("first_10pct_p50_ms", first),
            ("last_10pct_p50_ms", last),
            ("flatness", flatness),
        ] {
            values.sort_by(f64::total_cmp);
            extra[key] = json!(round3(values[values.len() / 2]));
        }
        report("command_long_stream_1_writer", "commands/s", &rounds, extra);
    }
    if wanted("command_one_stream_8_writers") {
        let n = 200 / scale;
        let (rounds, counts) = bench.command_figure(8, n, true, || serial_appends(8 * n)).await?;
        let mut extra = counts.json();
        extra["baseline"] = json!(format!("{} {one_connection}", 8 * n));
        report("command_one_stream_8_writers", "commands/s", &rounds, extra);
    }
    if wanted("command_one_stream_2_processes") {
        let n = 200 / scale;
        let handler = command_handler(bench.store.clone());
        warm_up(&handler, 8).await?;
        let (rounds, counts) = command_rounds(
            || serial_appends(16 * n),
            || bench.two_processes(handler.clone(), 8, n),
        )
        .await?;
        let mut extra = counts.json();
        extra["processes"] = json!(2);
        extra["baseline"] = json!(format!("{} {one_connection}", 16 * n));
        report("command_one_stream_2_processes", "commands/s", &rounds, extra);
    }
    if wanted("command_distinct_streams_16_writers") {
        let n = 500 / scale;
        let raw = || raw_appends(bench.pool.clone(), 16, n, command_event);
        let (rounds, counts) = bench.command_figure(16, n, false, raw).await?;
        let mut extra = counts.json();
        extra["baseline"] = json!("16 writers on 16 connections, single-event appends to a raw stream each");
        report(
            "command_distinct_streams_16_writers",
            "commands/s",
            &rounds,
            extra,
        );
    }
    if wanted("load_10k_stream_no_snapshot") {
        let rounds = bench.loads(10_000, false, 20 / scale.min(4)).await?;
        let extra = json!({
            "stream_length": 10_000,
            "baseline": "the columns a fold needs, in pages of 1000 after the last version, folded into a Counter",
        });
        report("load_10k_stream_no_snapshot", "loads/s", &rounds, extra);
    }
    if wanted("load_10k_stream_with_snapshot") {
        let rounds = bench.loads(10_000, true, 400 / scale).await?;
        let extra = json!({ "stream_length": 10_000 });
        report("load_10k_stream_with_snapshot", "loads/s", &rounds, extra);
    }
    if wanted("load_with_snapshot_10k_vs_1k") {
        let rounds = bench.snapshot_length_independence(400 / scale).await?;
        let extra = json!({ "baseline": "the framework loading a snapshotted 1k-event stream" });
        report("load_with_snapshot_10k_vs_1k", "loads/s", &rounds, extra);
    }
    if wanted("append_unit_of_work_1_writer") {
        let rounds = bench.unit_of_work_appends(1500 / scale).await?;
        let extra = json!({ "baseline": "the same statements in a caller's transaction" });
        report("append_unit_of_work_1_writer", "units/s", &rounds, extra);
    }
    if wanted("read_category_1_of_10") {
        let rounds = bench.read_category(100_000 / scale).await?;
        let extra = json!({ "baseline": "an indexed query on the category" });
        report("read_category_1_of_10", "events/s", &rounds, extra);
    }
    if wanted("read_global_log_from_0") {
        // The log the figures above left behind, topped up when they were skipped.
        let (stored,): (i64,) = sqlx::query_as("SELECT count(*) FROM strata.events")
            .fetch_one(&bench.pool)
            .await?;
        if stored < 20_000 {
            bench.batch_appends(8, 10, 100).await?;
        }
        let rounds = bench.read_log().await?;
        report(
            "read_global_log_from_0",
            "events/s",
            &rounds,
            json!({ "events": rounds.framework().ops }),
        );
    }

    drop(bench);

    let projection_db = format!("{db}_projections");
    let projection_figures = [
        "projection_catch_up",
        "projection_live_lag_16_writers",
        "projection_live_lag_16_writers_paced",
    ];
    if projection_figures.iter().any(|f| wanted(f)) {
        admin
            .execute(format!("CREATE DATABASE {projection_db}").as_str())
            .await?;
        let url = match db_url.rsplit_once('/') {
            Some((base, _)) => format!("{base}/{projection_db}"),
            None => return Err("DATABASE_URL has no database name".into()),
        };
        let store = PgEventStoreOptions::new(url.clone())
            .max_connections(20)
            .connect()
            .await?;
        store.migrate().await?;
        let pool = PgPoolOptions::new().max_connections(4).connect(&url).await?;
        let bench = ProjectionBench { store, pool };
        if wanted("projection_catch_up") {
            let events = 20_000 / scale;
            let rounds = bench.catch_up(events).await?;
            let extra = json!({
                "events": events,
                "batch": PROJECTION_BATCH,
                "baseline": "a sqlx loop: pages below the horizon, the same upserts, a checkpoint per page",
            });
            report("projection_catch_up", "events/s", &rounds, extra);
        }
        for (figure, pace) in [
            ("projection_live_lag_16_writers", None),
            (
                "projection_live_lag_16_writers_paced",
                Some(Duration::from_millis(10)),
            ),
        ] {
            if !wanted(figure) {
                continue;
            }
            let per_writer = 200 / scale;
            let lags = bench.live_lag(figure, 16, per_writer, pace).await?;
            let at = |p: f64| round3(lags[((lags.len() as f64 - 1.0) * p).round() as usize]);
            println!(
                "{}",
                json!({
                    "name": figure,
                    "unit": "ms",
                    "durable": DURABLE.get().copied().unwrap_or(false),
                    "p50_ms": at(0.5),
                    "p99_ms": at(0.99),
                    "max_ms": at(1.0),
                    "events": lags.len(),
                    "writers": 16,
                    "pace_ms": pace.map(|p| p.as_millis() as u64),
                    "measured": "append commit to the read model's commit, its position polled every millisecond",
                })
            );
        }
        drop(bench);
    }

    if std::env::args().any(|a| a == "--keep") {
        eprintln!("perf: kept database {db}");
    } else {
        admin
            .execute(format!("DROP DATABASE {db} WITH (FORCE)").as_str())
            .await?;
        admin
            .execute(format!("DROP DATABASE IF EXISTS {projection_db} WITH (FORCE)").as_str())
            .await?;
    }
    Ok(())
}
