//! [`PgEventStore`]: the [`EventStore`] on PostgreSQL.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use futures_util::future::BoxFuture;
use sqlx::postgres::PgArguments;
use sqlx::query::{QueryAs, QueryScalar};
use sqlx::{PgExecutor, PgPool, Postgres};
use strata_core::store::{
    CommandDecision, CommandRecord, FilteredSubscription, LogFilter, LogPage, check_command_records, follow,
    follow_filtered, idempotent_outcome,
};
use strata_core::{
    AppendResult, Error, EventStore, ExpectedVersion, FoldEvent, NewEvent, RecordedEvent, Result, Snapshot,
    StreamId, Subscription,
};
use uuid::Uuid;

use crate::conns::{Conns, on_conn};
use crate::error::{UnsupportedExpectedVersion, from_migrate, from_sqlx, is_unique_violation};
use crate::group::{Entry, Grouped, Grouper};
use crate::horizon::Horizon;
use crate::known::KnownVersions;
use crate::notify::{Notifier, Wakes};
use crate::options::{MAX_BATCH_SIZE, PgEventStoreOptions};
use crate::row::{
    CommandRow, EVENT_COLUMNS, EventRow, FOLD_COLUMNS, FilteredRow, FoldRow, IdentifiedCommandRow,
    STREAM_EVENT_COLUMNS, SnapshotRow, limit, to_events, to_i64_saturating, to_log_page, to_stream_events,
    to_u64,
};

/// How many times an append that admits its expected version is tried
/// again after a concurrent writer took the version it computed.
const MAX_APPEND_ATTEMPTS: usize = 1000;

/// Await `$op`, again while it fails on a pooled connection that a Tokio
/// runtime which has ended left behind (a store used from one
/// `#[tokio::test]` after another): such a connection fails its first I/O,
/// and the pool then drops it. At most as many tries as the pool holds
/// connections, plus one.
macro_rules! on_live_connection {
    ($self:ident . $($op:tt)+) => {{
        let mut tries = 0;
        loop {
            match $self.$($op)+.await {
                Err(e) if crate::error::is_from_ended_runtime(&e) && tries <= $self.pool().size() => {
                    tries += 1;
                    tracing::debug!(tries, "connection of an ended runtime dropped, trying again");
                }
                result => break result,
            }
        }
    }};
}

/// `sql` with every transaction id that positions or the horizon are made
/// from raised by the log base (`strata.log_base`, see migration 0005): a
/// log restored into another cluster keeps growing from where it was. The
/// base comes from `strata.xid_offset()` (migration 0007), a constant the
/// planner folds in, not from a scan of the table per statement.
pub(crate) fn with_log_base(sql: &str) -> String {
    sql.replace(
        "pg_current_xact_id()::text::bigint",
        "(pg_current_xact_id()::text::bigint + strata.xid_offset())",
    )
    .replace(
        "pg_snapshot_xmin(pg_current_snapshot())::text::bigint",
        "(pg_snapshot_xmin(pg_current_snapshot())::text::bigint + strata.xid_offset())",
    )
    .replace(
        "pg_snapshot_xmax(pg_current_snapshot())::text::bigint",
        "(pg_snapshot_xmax(pg_current_snapshot())::text::bigint + strata.xid_offset())",
    )
}

/// The common expressions of [`APPEND_SQL`] and [`APPEND_COMMAND_SQL`]:
/// read the stream's version (`cur`), check it (`ok`), insert the batch
/// (`ins`).
macro_rules! append_ctes {
    () => {
        "\
WITH cur AS MATERIALIZED (
    SELECT coalesce(max(stream_version), 0) AS v, pg_current_xact_id()::text::bigint << 20 AS base
    FROM strata.events WHERE stream_id = $1
), ok AS MATERIALIZED (
    SELECT v, base FROM cur WHERE ($7::bigint IS NULL OR v = $7) AND (NOT $8::bool OR v > 0)
), ins AS (
INSERT INTO strata.events
    (global_position, stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, category)
SELECT ok.base | e.ord, $1, ok.v + e.ord, e.id, e.ty, e.sv, e.payload::jsonb, e.metadata::jsonb, $9
FROM ok, unnest($2::uuid[], $3::text[], $4::int[], $5::text[], $6::text[])
         WITH ORDINALITY AS e(id, ty, sv, payload, metadata, ord)
)"
    };
}

/// The append, one statement and therefore one transaction: the version
/// check, the version numbering and the gap-free position all happen inside
/// it. The unique `(stream_id, stream_version)` index turns a concurrent
/// writer that got there first into a unique violation.
///
/// It answers (first position, version before the append) if the
/// expectation admitted the stream's version, else no row. Nothing comes
/// back per event: the statement is its transaction's only write, so the
/// batch's positions are `base | 1 ..= base | n`, and the versions follow
/// `v`. The position base is computed once, not per row.
static APPEND_SQL: LazyLock<String> = LazyLock::new(|| {
    with_log_base(concat!(
        append_ctes!(),
        "
SELECT base | 1, v, 'strata.events'::regclass::oid::bigint FROM ok"
    ))
});

/// [`APPEND_SQL`] that also records command `$10` as having appended the
/// batch, in the same statement: a command id already recorded fails it
/// with a unique violation on `commands_pkey`, and stores nothing.
static APPEND_COMMAND_SQL: LazyLock<String> = LazyLock::new(|| {
    with_log_base(concat!(
        append_ctes!(),
        ", cmd AS (
INSERT INTO strata.commands (command_id, stream_id, decision, first_version, version)
SELECT $10, $1, 'appended', ok.v + 1, ok.v + cardinality($2::uuid[]) FROM ok
)
SELECT base | 1, v, 'strata.events'::regclass::oid::bigint FROM ok"
    ))
});

/// [`APPEND_SQL`] that also records the outcomes of several commands:
/// `$10` their ids, `$11` their kinds, `$12` first versions, `$13`
/// versions, `$14` refusals (JSON text). It appends at an exact version, so
/// the caller knows every version in advance.
static APPEND_COMMANDS_SQL: LazyLock<String> = LazyLock::new(|| {
    with_log_base(concat!(
        append_ctes!(),
        ", cmd AS (
INSERT INTO strata.commands (command_id, stream_id, decision, first_version, version, refusal)
SELECT r.id, $1, r.kind, r.first_version, r.version, r.refusal::jsonb
FROM ok, unnest($10::uuid[], $11::text[], $12::bigint[], $13::bigint[], $14::text[])
         AS r(id, kind, first_version, version, refusal)
)
SELECT base | 1, v, 'strata.events'::regclass::oid::bigint FROM ok"
    ))
});

/// [`APPEND_SQL`] for a single event, with scalar parameters: unpacking
/// arrays costs a single-event append about a fifth of its throughput.
static APPEND_ONE_SQL: LazyLock<String> = LazyLock::new(|| {
    with_log_base("\
WITH cur AS (
    SELECT coalesce(max(stream_version), 0) AS v FROM strata.events WHERE stream_id = $1
)
INSERT INTO strata.events
    (global_position, stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, category)
SELECT (pg_current_xact_id()::text::bigint << 20) | 1, $1, cur.v + 1, $2, $3, $4, $5::jsonb, $6::jsonb, $9
FROM cur
WHERE ($7::bigint IS NULL OR cur.v = $7) AND (NOT $8::bool OR cur.v > 0)
RETURNING global_position, stream_version - 1, 'strata.events'::regclass::oid::bigint")
});

/// A single-event append after version `$7`, where the store knows that
/// version is committed in the table with OID `$8` (see [`crate::known`]),
/// or `$7` is 0: no need to read the stream's version. The unique
/// `(stream_id, stream_version)` index still refuses a taken version. No
/// row: the table is not the one with OID `$8` any more.
static APPEND_KNOWN_SQL: LazyLock<String> = LazyLock::new(|| {
    with_log_base("\
INSERT INTO strata.events
    (global_position, stream_id, stream_version, event_id, event_type, schema_version, payload, metadata, category)
SELECT (pg_current_xact_id()::text::bigint << 20) | 1, $1, $7 + 1, $2, $3, $4, $5::jsonb, $6::jsonb, $9
WHERE $8::bigint IS NULL OR 'strata.events'::regclass::oid::bigint = $8
RETURNING global_position, stream_version - 1, 'strata.events'::regclass::oid::bigint")
});

/// First delay before a subscription looks again for events it was told of
/// but could not read yet (see [`WaitState`]).
const MIN_RECHECK: Duration = Duration::from_millis(5);

/// What a subscription's wait remembers between waits.
#[derive(Debug)]
struct WaitState {
    rx: Option<tokio::sync::watch::Receiver<Wakes>>,
    /// The wake-ups seen so far.
    seen: Wakes,
    /// The position when the previous wait began.
    last_position: u64,
    /// Whether events are expected: the previous wait ended by a
    /// notification, or the subscription has only just caught up.
    expecting: bool,
    /// The current delay between looks while events are held back.
    recheck: Duration,
}

const VERSION_SQL: &str = "SELECT coalesce(max(stream_version), 0) FROM strata.events WHERE stream_id = $1";

#[derive(Debug)]
struct Inner {
    pool: PgPool,
    max_event_size: usize,
    read_batch: usize,
    poll_interval: Duration,
    notifier: Notifier,
    grouper: Arc<Grouper>,
    /// The connections the store's statements run on.
    conns: Arc<Conns>,
    known: Arc<KnownVersions>,
    /// Whether new positions are known to lie above every stored one.
    log_base_ok: std::sync::atomic::AtomicBool,
}

/// An [`EventStore`] on PostgreSQL. Cloning is cheap and shares the pool.
///
/// See the [crate docs](crate) for the schema and for why the global log
/// never skips an event.
#[derive(Debug, Clone)]
pub struct PgEventStore {
    inner: Arc<Inner>,
}

impl PgEventStore {
    /// Connect to `url` with default [`PgEventStoreOptions`].
    pub async fn connect(url: &str) -> Result<Self> {
        PgEventStoreOptions::new(url).connect().await
    }

    /// A store on an existing pool, with default options.
    pub fn from_pool(pool: PgPool) -> Self {
        PgEventStoreOptions::new(String::new()).with_pool(pool)
    }

    pub(crate) fn build(pool: PgPool, options: PgEventStoreOptions) -> Self {
        let known = Arc::new(KnownVersions::default());
        let conns = Arc::new(Conns::new(pool.clone()));
        PgEventStore {
            inner: Arc::new(Inner {
                max_event_size: options.max_event_size,
                read_batch: options.read_batch,
                poll_interval: options.poll_interval,
                notifier: Notifier::new(),
                grouper: Arc::new(Grouper::new(
                    conns.clone(),
                    known.clone(),
                    options.max_concurrent_appends,
                )),
                known,
                conns,
                pool,
                log_base_ok: std::sync::atomic::AtomicBool::new(false),
            }),
        }
    }

    /// The connections the store's statements run on.
    pub(crate) fn conns(&self) -> &Arc<Conns> {
        &self.inner.conns
    }

    /// The connection pool.
    pub fn pool(&self) -> &PgPool {
        &self.inner.pool
    }

    /// A wake-up for readers that poll the log themselves (a projection
    /// runner): it reports commits of this store and, through `LISTEN`,
    /// of every other process. Needs a Tokio runtime.
    pub fn commit_signal(&self) -> crate::notify::CommitSignal {
        crate::notify::CommitSignal::new(
            self.inner
                .notifier
                .subscribe(&self.inner.pool, self.inner.poll_interval),
        )
    }

    /// Apply the pending [`MIGRATOR`](crate::MIGRATOR) migrations (creates
    /// the `strata` schema). Safe to run concurrently and repeatedly.
    pub async fn migrate(&self) -> Result<()> {
        crate::MIGRATOR
            .run(&self.inner.pool)
            .await
            .map_err(from_migrate)?;
        // After a restore into another cluster, positions must go on from
        // the restored ones (migration 0005).
        on_conn!(&self.inner.conns, |c| sqlx::query(
            "SELECT strata.raise_log_base()"
        )
        .execute(c))
        .map_err(from_sqlx)?;
        self.inner
            .log_base_ok
            .store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Before the first append: refuse to append while new positions would
    /// fall below stored ones (a log restored into another cluster whose
    /// log base `strata migrate` has not raised yet). It compares with the
    /// next transaction id to be assigned (`pg_snapshot_xmax`), which every
    /// running or committed writer's id is below. Checked once: in one
    /// cluster, transaction ids only grow.
    pub(crate) async fn ensure_log_base(&self) -> Result<()> {
        use std::sync::atomic::Ordering;
        if self.inner.log_base_ok.load(Ordering::Acquire) {
            return Ok(());
        }
        static CHECK_SQL: LazyLock<String> = LazyLock::new(|| {
            with_log_base(
                "SELECT (SELECT coalesce(max(global_position), 0) FROM strata.events),
                        pg_snapshot_xmax(pg_current_snapshot())::text::bigint << 20",
            )
        });
        let (top, next): (i64, i64) =
            on_conn!(&self.inner.conns, |c| sqlx::query_as(&CHECK_SQL).fetch_one(c)).map_err(from_sqlx)?;
        if next <= top {
            return Err(Error::Configuration(Box::new(crate::error::LogBaseBehind {
                stored: top,
                next,
            })));
        }
        self.inner.log_base_ok.store(true, Ordering::Release);
        Ok(())
    }

    /// The readable horizon of the global log and what holds it back; also
    /// recorded as the gauges `strata_store_horizon_position`,
    /// `strata_store_held_back_events` and
    /// `strata_store_oldest_transaction_age_seconds`.
    pub async fn horizon(&self) -> Result<Horizon> {
        type Row = (
            i64,
            i64,
            Option<f64>,
            Option<i32>,
            Option<String>,
            Option<String>,
            Option<String>,
            Option<String>,
        );
        // The horizon is the oldest transaction id still running: a
        // backend's, or a prepared transaction's (which no backend shows).
        static HORIZON_SQL: LazyLock<String> = LazyLock::new(|| {
            with_log_base(
                "WITH h AS (
                 SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20 AS below
             ), holders AS (
                 SELECT backend_xid AS xid, pid, NULL::text AS gid,
                        extract(epoch FROM clock_timestamp() - xact_start)::float8 AS age,
                        datname::text AS database, usename::text AS owner, state
                 FROM pg_stat_activity
                 WHERE backend_xid IS NOT NULL
                 UNION ALL
                 SELECT transaction, NULL, gid, extract(epoch FROM clock_timestamp() - prepared)::float8,
                        database::text, owner::text, 'prepared'
                 FROM pg_prepared_xacts
             ), o AS (
                 SELECT * FROM holders ORDER BY age(xid) DESC LIMIT 1
             )
             SELECT h.below,
                    (SELECT count(*) FROM strata.events WHERE global_position >= h.below),
                    o.age, o.pid, o.gid, o.database, o.owner, o.state
             FROM h LEFT JOIN o ON true",
            )
        });
        let (below, held, age, pid, gid, database, user, state): Row =
            on_conn!(&self.inner.conns, |c| sqlx::query_as(&HORIZON_SQL).fetch_one(c)).map_err(from_sqlx)?;
        let horizon = Horizon {
            readable_below: to_u64("horizon", below)?,
            held_back_events: to_u64("held back events", held)?,
            oldest_transaction_age_seconds: age,
            oldest_transaction_pid: pid,
            oldest_prepared_gid: gid,
            oldest_transaction_database: database,
            oldest_transaction_user: user,
            oldest_transaction_state: state,
        };
        metrics::gauge!("strata_store_horizon_position").set(horizon.readable_below as f64);
        metrics::gauge!("strata_store_held_back_events").set(horizon.held_back_events as f64);
        metrics::gauge!("strata_store_oldest_transaction_age_seconds")
            .set(horizon.oldest_transaction_age_seconds.unwrap_or(0.0));
        Ok(horizon)
    }

    /// What a subscription waits on once caught up: a notification, or the
    /// poll interval, or (when events are expected but held back) a short,
    /// growing pause.
    fn waiter(
        &self,
        after_position: u64,
    ) -> impl FnMut(u64) -> BoxFuture<'static, Result<()>> + Send + 'static {
        let inner = self.inner.clone();
        // Listen now when possible, so no commit between the first read and
        // the first wait goes unnoticed; else on the first wait.
        let rx = tokio::runtime::Handle::try_current()
            .ok()
            .map(|_| inner.notifier.subscribe(&inner.pool, inner.poll_interval));
        let seen = rx.as_ref().map(|rx| *rx.borrow()).unwrap_or_default();
        let state = Arc::new(tokio::sync::Mutex::new(WaitState {
            rx,
            seen,
            last_position: after_position,
            expecting: true,
            recheck: MIN_RECHECK,
        }));
        move |position: u64| {
            let inner = inner.clone();
            let state = state.clone();
            Box::pin(async move {
                let mut st = state.lock().await;
                // Woken (or just caught up) but the read found nothing new:
                // the events are likely held back by an older transaction,
                // whose end nobody announces. Look again soon, backing off
                // to the poll interval, instead of waiting out the interval.
                let held_back = st.expecting && position == st.last_position;
                st.recheck = if held_back {
                    (st.recheck * 2).min(inner.poll_interval)
                } else {
                    MIN_RECHECK
                };
                let timeout = if held_back {
                    st.recheck
                } else {
                    inner.poll_interval
                };
                let rx = st
                    .rx
                    .get_or_insert_with(|| inner.notifier.subscribe(&inner.pool, inner.poll_interval));
                // A wake-up or the timeout, whichever comes first. Only an
                // announced commit makes events expected: `LISTEN` coming
                // back after a reconnect announces nothing.
                let woken = tokio::time::timeout(timeout, rx.changed()).await.is_ok();
                let wakes = *rx.borrow_and_update();
                let notified = woken && wakes.commits != st.seen.commits;
                st.seen = wakes;
                st.expecting = notified || held_back;
                st.last_position = position;
                Ok(())
            })
        }
    }

    /// A filtered page of the log, served by the category and type indexes,
    /// cut at the horizon like [`read_all`](EventStore::read_all). The
    /// horizon comes back with the rows, so an empty page still says how
    /// far the log was examined.
    async fn read_filtered(
        &self,
        after_position: u64,
        max_count: usize,
        filter: &LogFilter,
    ) -> Result<LogPage> {
        let mut conditions = String::new();
        if !filter.categories.is_empty() {
            conditions.push_str(" AND category = ANY($3)");
        }
        if !filter.event_types.is_empty() {
            conditions.push_str(" AND event_type = ANY($4)");
        }
        // The inner query is the plain ordered scan the indexes serve (see
        // `read_all_once` for why the horizon cuts the page outside it). It
        // selects the stored columns: converted in it, payloads would be
        // turned to text for every row the scan meets, not only for those
        // returned. The horizon comes back on every row, and on a last row
        // of NULLs, which an empty page also has. No join and no sort: they
        // cost more than the page's own scan (the rows are put in order
        // here, which costs nothing when they come in order).
        let sql = with_log_base(&format!(
            "WITH h AS MATERIALIZED (
                 SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20 AS below
             )
             SELECT (SELECT below FROM h), {EVENT_COLUMNS} FROM (
                 SELECT * FROM strata.events
                 WHERE global_position > $1{conditions}
                 ORDER BY global_position LIMIT $2
             ) p
             WHERE p.global_position < (SELECT below FROM h)
             UNION ALL
             SELECT below, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL FROM h"
        ));
        // Each row is decoded as it arrives, while the server sends the next.
        let rows: Vec<FilteredRow> = on_conn!(&self.inner.conns, |c| sqlx::query_as(&sql)
            .bind(to_i64_saturating(after_position))
            .bind(limit(max_count))
            .bind(&filter.categories)
            .bind(&filter.event_types)
            .fetch_all(c))
        .map_err(from_sqlx)?;
        let below = rows.first().map_or(0, |r| r.below);
        let mut events: Vec<EventRow> = rows.into_iter().filter_map(|r| r.event).collect();
        events.sort_by_key(EventRow::position);
        let fetched = events.len();
        let events = to_log_page(events)?;
        let full = fetched >= max_count.max(1);
        let cut = events.len() < fetched;
        let last = events.last().map_or(after_position, |e| e.global_position);
        let scanned_to = if full || cut {
            last
        } else {
            // Everything wanted below the horizon was returned.
            u64::try_from(below - 1).unwrap_or(0).max(after_position)
        };
        Ok(LogPage {
            events,
            scanned_to,
            reached_end: !full && !cut,
        })
    }

    async fn read_stream_once(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        static SQL: LazyLock<String> = LazyLock::new(|| stream_page_sql(STREAM_EVENT_COLUMNS));
        let rows: Vec<EventRow> = self.stream_page(&SQL, stream, from_version, max_count).await?;
        to_stream_events(rows, stream)
    }

    async fn read_fold_once(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<FoldEvent>> {
        static SQL: LazyLock<String> = LazyLock::new(|| stream_page_sql(FOLD_COLUMNS));
        let rows: Vec<FoldRow> = self.stream_page(&SQL, stream, from_version, max_count).await?;
        Ok(rows.into_iter().map(FoldEvent::from).collect())
    }

    /// Up to `max_count` rows of `stream` from `from_version`, by `sql`
    /// (made by [`stream_page_sql`]).
    async fn stream_page<R>(
        &self,
        sql: &str,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<R>>
    where
        R: for<'r> sqlx::FromRow<'r, sqlx::postgres::PgRow> + Send + Unpin,
    {
        on_conn!(&self.inner.conns, |c| sqlx::query_as(sql)
            .bind(stream.as_str())
            .bind(to_i64_saturating(from_version))
            .bind(limit(max_count))
            .fetch_all(c))
        .map_err(from_sqlx)
    }

    async fn read_all_once(&self, after_position: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        // Only below the horizon: every transaction with a smaller id has
        // ended, so nothing can still appear there (see the crate docs).
        // The inner query is a plain ordered index scan that stops after
        // `max_count` rows; the horizon then cuts a prefix of them. (With the
        // horizon in the same WHERE clause the planner cannot estimate the
        // range, and scans and sorts every row after the checkpoint.)
        static READ_ALL_SQL: LazyLock<String> = LazyLock::new(|| {
            with_log_base(&format!(
                "SELECT * FROM (
                     SELECT {EVENT_COLUMNS} FROM strata.events
                     WHERE global_position > $1
                     ORDER BY global_position LIMIT $2
                 ) page
                 WHERE global_position < (SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << 20)
                 ORDER BY global_position"
            ))
        });
        let rows: Vec<EventRow> = on_conn!(&self.inner.conns, |c| sqlx::query_as(&READ_ALL_SQL)
            .bind(to_i64_saturating(after_position))
            .bind(limit(max_count))
            .fetch_all(c))
        .map_err(from_sqlx)?;
        to_log_page(rows)
    }

    pub(crate) fn check_batch(&self, events: &[NewEvent]) -> Result<()> {
        if events.len() > MAX_BATCH_SIZE {
            return Err(Error::BatchTooLarge {
                size: events.len(),
                limit: MAX_BATCH_SIZE,
            });
        }
        Ok(())
    }

    pub(crate) async fn stored_with_ids(&self, events: &[NewEvent]) -> Result<Vec<RecordedEvent>> {
        let ids: Vec<Uuid> = events.iter().map(|e| e.event_id).collect();
        let rows: Vec<EventRow> = on_conn!(&self.inner.conns, |c| sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM strata.events WHERE event_id = ANY($1)"
        ))
        .bind(&ids)
        .fetch_all(c))
        .map_err(from_sqlx)?;
        to_events(rows)
    }

    /// Append, with what to record atomically with the events.
    async fn append_now(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: &[NewEvent],
        records: Records<'_>,
    ) -> Result<AppendResult> {
        self.check_batch(events)?;
        let batch = Arc::new(Batch::new(events, self.inner.max_event_size)?);
        NewEvent::check_unique_ids(events)?;
        let decisions = match records {
            Records::Decisions(decisions) => decisions,
            _ => &[],
        };
        check_command_records(stream, expected, events.len(), decisions)?;
        self.ensure_log_base().await?;
        if events.is_empty() && decisions.is_empty() {
            let actual = self.version(stream).await?;
            return if expected.admits(actual) {
                Ok(AppendResult {
                    stream_version: actual,
                    positions: Vec::new(),
                })
            } else {
                Err(conflict(stream, expected, actual))
            };
        }
        let (exact, must_exist) = expectation(expected)?;
        let (conns, known) = (&*self.inner.conns, &*self.inner.known);
        for attempt in 1.. {
            let inserted = match records {
                Records::Command(command_id) => {
                    insert_command(conns, stream, exact, must_exist, &batch, command_id).await
                }
                Records::Decisions(decisions) => {
                    insert_commands(conns, stream, exact, must_exist, &batch, decisions).await
                }
                Records::None if attempt == 1 => self.first_insert(stream, exact, must_exist, &batch).await,
                Records::None => insert_alone(conns, known, stream, exact, must_exist, &batch).await,
            };
            match inserted {
                Ok(Some((result, table))) => {
                    self.committed(stream, &result, table);
                    return Ok(result);
                }
                Ok(None) => {}
                Err(InsertError::Sql(e)) if is_unique_violation(&e) => {
                    if let Records::Command(command_id) = records
                        && self.read_command(command_id).await?.is_some()
                    {
                        return Err(Error::CommandAlreadyRecorded { command_id });
                    }
                }
                Err(InsertError::Sql(e)) => return Err(from_sqlx(e)),
                Err(InsertError::Other(e)) => return Err(e),
            }
            // Rejected: an idempotent re-append, a duplicate id, a real
            // conflict, or a concurrent writer that took our version.
            let stored = self.stored_with_ids(events).await?;
            if let Some(outcome) = idempotent_outcome(stream, events, &stored)? {
                // Stored already, perhaps by an earlier try of this very
                // append whose answer was lost (a dropped connection): it
                // may not have been announced yet. A spare wake-up is cheap.
                self.inner.notifier.appended(&self.inner.conns);
                return Ok(outcome);
            }
            if let Some(command_id) = self.first_recorded(decisions).await? {
                return Err(Error::CommandAlreadyRecorded { command_id });
            }
            let actual = self.version(stream).await?;
            if !expected.admits(actual) || attempt >= MAX_APPEND_ATTEMPTS {
                metrics::counter!("strata_store_append_conflicts_total").increment(1);
                return Err(conflict(stream, expected, actual));
            }
            tracing::debug!(stream = %stream, attempt, "append raced with another writer, trying again");
        }
        unreachable!("the append loop returns")
    }

    /// The first of `records` whose command id has a record already.
    async fn first_recorded(&self, records: &[CommandRecord]) -> Result<Option<Uuid>> {
        if records.is_empty() {
            return Ok(None);
        }
        let ids: Vec<Uuid> = records.iter().map(|r| r.command_id).collect();
        let taken: Vec<Uuid> = on_conn!(&self.inner.conns, |c| sqlx::query_scalar(
            "SELECT command_id FROM strata.commands WHERE command_id = ANY($1)"
        )
        .bind(&ids)
        .fetch_all(c))
        .map_err(from_sqlx)?;
        Ok(ids.into_iter().find(|id| taken.contains(id)))
    }

    /// After an append committed: remember its version, announce it, count it.
    pub(crate) fn committed(&self, stream: &StreamId, result: &AppendResult, table: i64) {
        self.inner.known.record(table, stream, result.stream_version);
        self.inner.notifier.appended(&self.inner.conns);
        metrics::counter!("strata_store_appended_events_total").increment(result.positions.len() as u64);
    }

    /// The store's limit on one event's size.
    pub(crate) fn max_event_size(&self) -> usize {
        self.inner.max_event_size
    }

    /// An append's first try: alone if fewer than
    /// [`PgEventStoreOptions::max_concurrent_appends`] statements are in
    /// flight, else in the next group (see [`crate::group`]).
    async fn first_insert(
        &self,
        stream: &StreamId,
        exact: Option<i64>,
        must_exist: bool,
        batch: &Arc<Batch>,
    ) -> Result<Option<(AppendResult, i64)>, InsertError> {
        let (conns, known) = (&*self.inner.conns, &*self.inner.known);
        match self.inner.grouper.enter(stream, exact, must_exist, batch) {
            Entry::Bypass => insert_alone(conns, known, stream, exact, must_exist, batch).await,
            Entry::Alone(slot) => {
                let inserted = insert_alone(conns, known, stream, exact, must_exist, batch).await;
                drop(slot);
                inserted
            }
            Entry::Queued(outcome) => match outcome.await {
                Ok(Grouped::Appended(result, table)) => Ok(Some((result, table))),
                Ok(Grouped::Rejected) => Ok(None),
                // Told to go alone, or nobody served the queue.
                Ok(Grouped::Alone) | Err(_) => {
                    insert_alone(conns, known, stream, exact, must_exist, batch).await
                }
            },
        }
    }
}

/// A page of one stream, in version order: `columns` of the rows from
/// version `$2`, at most `$3` of them.
fn stream_page_sql(columns: &str) -> String {
    format!(
        "SELECT {columns} FROM strata.events
         WHERE stream_id = $1 AND stream_version >= $2
         ORDER BY stream_version LIMIT $3"
    )
}

pub(crate) fn conflict(stream: &StreamId, expected: ExpectedVersion, actual: u64) -> Error {
    Error::Conflict {
        stream: stream.to_string(),
        expected,
        actual,
    }
}

pub(crate) async fn version_of<'e>(exec: impl PgExecutor<'e>, stream: &StreamId) -> Result<u64> {
    let v = version_query(stream).fetch_one(exec).await.map_err(from_sqlx)?;
    to_u64("stream_version", v)
}

/// The query of `stream`'s version (0 for no stream).
fn version_query(stream: &StreamId) -> QueryScalar<'_, Postgres, i64, PgArguments> {
    sqlx::query_scalar(VERSION_SQL).bind(stream.as_str())
}

impl PgEventStore {
    /// `stream`'s version, read on the store's connections.
    async fn version(&self, stream: &StreamId) -> Result<u64> {
        let v = on_conn!(&self.inner.conns, |c| version_query(stream).fetch_one(c)).map_err(from_sqlx)?;
        to_u64("stream_version", v)
    }
}

/// A batch encoded as the append's column arrays, each event validated
/// ([`NewEvent::check_shape`], then its size). Payload and metadata are
/// serialized once, to JSON text: that text is both what the size limit
/// counts and what is sent (PostgreSQL parses it into `jsonb`).
pub(crate) struct Batch {
    pub(crate) ids: Vec<Uuid>,
    pub(crate) types: Vec<String>,
    pub(crate) schema_versions: Vec<i32>,
    pub(crate) payloads: Vec<String>,
    pub(crate) metadata: Vec<String>,
}

impl Batch {
    pub(crate) fn len(&self) -> usize {
        self.ids.len()
    }

    pub(crate) fn new(events: &[NewEvent], max_event_size: usize) -> Result<Self> {
        let mut b = Batch {
            ids: Vec::with_capacity(events.len()),
            types: Vec::with_capacity(events.len()),
            schema_versions: Vec::with_capacity(events.len()),
            payloads: Vec::with_capacity(events.len()),
            metadata: Vec::with_capacity(events.len()),
        };
        for e in events {
            // Before serializing: a payload too deep for readers is refused
            // without walking it recursively.
            e.check_shape()?;
            let encode = |what: &str, r: serde_json::Result<String>| {
                r.map_err(|error| Error::encode(format!("{what} of event {}", e.event_id), error))
            };
            let payload = encode("payload", serde_json::to_string(&e.payload))?;
            let metadata = encode("metadata", serde_json::to_string(&e.metadata))?;
            e.check_encoded_size(payload.len() + metadata.len(), max_event_size)?;
            b.ids.push(e.event_id);
            b.types.push(e.event_type.clone());
            b.schema_versions.push(
                i32::try_from(e.schema_version)
                    .map_err(|_| crate::error::out_of_range("schema_version", e.schema_version))?,
            );
            b.payloads.push(payload);
            b.metadata.push(metadata);
        }
        Ok(b)
    }
}

pub(crate) enum InsertError {
    Sql(sqlx::Error),
    Other(Error),
}

/// The expected version as the append statements take it: the exact
/// version required, if any, and whether the stream must exist.
pub(crate) fn expectation(expected: ExpectedVersion) -> Result<(Option<i64>, bool)> {
    Ok(match expected {
        ExpectedVersion::Any => (None, false),
        ExpectedVersion::NoStream => (Some(0), false),
        ExpectedVersion::StreamExists => (None, true),
        ExpectedVersion::Exact(v) => (Some(to_i64_saturating(v)), false),
        other => return Err(Error::Backend(Box::new(UnsupportedExpectedVersion(other)))),
    })
}

/// Run the append statement. `None`: the expected version (see
/// [`expectation`]) did not admit the stream's version as the statement
/// saw it. Appended: the result, and the OID of `strata.events`.
pub(crate) async fn insert<'e>(
    exec: impl PgExecutor<'e>,
    stream: &StreamId,
    exact: Option<i64>,
    must_exist: bool,
    batch: &Batch,
) -> Result<Option<(AppendResult, i64)>, InsertError> {
    let row = insert_query(stream, exact, must_exist, batch)
        .fetch_optional(exec)
        .await
        .map_err(InsertError::Sql)?;
    row.map(|row| appended(row, batch.len())).transpose()
}

/// The append statement for `batch`, its parameters bound. Its row:
/// (first position, version before, table); none: the expectation failed.
fn insert_query<'q>(
    stream: &'q StreamId,
    exact: Option<i64>,
    must_exist: bool,
    batch: &'q Batch,
) -> QueryAs<'q, Postgres, (i64, i64, i64), PgArguments> {
    let query = if batch.len() == 1 {
        one_event(&APPEND_ONE_SQL, stream, batch)
    } else {
        events(&APPEND_SQL, stream, batch)
    };
    query.bind(exact).bind(must_exist).bind(stream.category())
}

/// A single-event append statement with its first six parameters bound:
/// stream, event id, type, schema version, payload, metadata.
fn one_event<'q>(
    sql: &'q str,
    stream: &'q StreamId,
    batch: &'q Batch,
) -> QueryAs<'q, Postgres, (i64, i64, i64), PgArguments> {
    sqlx::query_as(sql)
        .bind(stream.as_str())
        .bind(batch.ids[0])
        .bind(&batch.types[0])
        .bind(batch.schema_versions[0])
        .bind(&batch.payloads[0])
        .bind(&batch.metadata[0])
}

/// A batch append statement with its first six parameters bound: stream,
/// and the arrays of event ids, types, schema versions, payloads, metadata.
fn events<'q>(
    sql: &'q str,
    stream: &'q StreamId,
    batch: &'q Batch,
) -> QueryAs<'q, Postgres, (i64, i64, i64), PgArguments> {
    sqlx::query_as(sql)
        .bind(stream.as_str())
        .bind(&batch.ids)
        .bind(&batch.types)
        .bind(&batch.schema_versions)
        .bind(&batch.payloads)
        .bind(&batch.metadata)
}

/// What an append statement's answer (first position, version before,
/// table OID) means for a batch of `count` events.
fn appended(
    (first, before, table): (i64, i64, i64),
    count: usize,
) -> Result<(AppendResult, i64), InsertError> {
    let first = to_u64("global_position", first).map_err(InsertError::Other)?;
    let before = to_u64("stream_version", before).map_err(InsertError::Other)?;
    let count = count as u64;
    let result = AppendResult {
        stream_version: before + count,
        positions: (first..first + count).collect(),
    };
    Ok((result, table))
}

/// What an append records besides its events.
#[derive(Debug, Clone, Copy)]
enum Records<'a> {
    /// Nothing.
    None,
    /// That this command appended them ([`EventStore::append_command`]).
    Command(Uuid),
    /// These outcomes ([`EventStore::append_commands`]).
    Decisions(&'a [CommandRecord]),
}

/// Run [`APPEND_COMMANDS_SQL`]: the append at version `exact` (checked by
/// [`check_command_records`]) and the records of `decisions`, in one
/// statement.
async fn insert_commands(
    conns: &Conns,
    stream: &StreamId,
    exact: Option<i64>,
    must_exist: bool,
    batch: &Batch,
    decisions: &[CommandRecord],
) -> Result<Option<(AppendResult, i64)>, InsertError> {
    let n = decisions.len();
    let (mut ids, mut kinds, mut firsts, mut versions, mut refusals) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    for record in decisions {
        let (kind, first, version, refusal) =
            decision_columns(&record.decision).map_err(InsertError::Other)?;
        ids.push(record.command_id);
        kinds.push(kind);
        firsts.push(first.map(to_i64_saturating));
        versions.push(to_i64_saturating(version));
        refusals.push(refusal.map(|r| r.to_string()));
    }
    let row = conns
        .fetch_optional(|| {
            events(&APPEND_COMMANDS_SQL, stream, batch)
                .bind(exact)
                .bind(must_exist)
                .bind(stream.category())
                .bind(&ids)
                .bind(&kinds)
                .bind(&firsts)
                .bind(&versions)
                .bind(&refusals)
        })
        .await
        .map_err(InsertError::Sql)?;
    row.map(|row| appended(row, batch.len())).transpose()
}

/// A decision as the columns of its `strata.commands` row: kind, first
/// version, version and refusal.
fn decision_columns(
    decision: &CommandDecision,
) -> Result<(&'static str, Option<u64>, u64, Option<&strata_core::Value>)> {
    Ok(match decision {
        CommandDecision::Appended {
            first_version,
            last_version,
        } => ("appended", Some(*first_version), *last_version, None),
        CommandDecision::Unchanged { version } => ("unchanged", None, *version, None),
        CommandDecision::Refused { version, refusal } => ("refused", None, *version, Some(refusal)),
        other => {
            return Err(Error::Backend(
                format!("unsupported command decision {other:?}").into(),
            ));
        }
    })
}

/// Run [`APPEND_COMMAND_SQL`]: the append and the record of command
/// `command_id`, in one statement.
async fn insert_command(
    conns: &Conns,
    stream: &StreamId,
    exact: Option<i64>,
    must_exist: bool,
    batch: &Batch,
    command_id: Uuid,
) -> Result<Option<(AppendResult, i64)>, InsertError> {
    let row = conns
        .fetch_optional(|| {
            events(&APPEND_COMMAND_SQL, stream, batch)
                .bind(exact)
                .bind(must_exist)
                .bind(stream.category())
                .bind(command_id)
        })
        .await
        .map_err(InsertError::Sql)?;
    row.map(|row| appended(row, batch.len())).transpose()
}

/// An append as its own statement. A single event expected at a version
/// `known` holds as committed (or at 0) goes without reading the stream's
/// version first (see [`crate::known`]).
pub(crate) async fn insert_alone(
    conns: &Conns,
    known: &KnownVersions,
    stream: &StreamId,
    exact: Option<i64>,
    must_exist: bool,
    batch: &Batch,
) -> Result<Option<(AppendResult, i64)>, InsertError> {
    if batch.len() == 1
        && let Some(after) = exact
    {
        let table = match u64::try_from(after) {
            Ok(0) => Some(None),
            Ok(v) => known.table_holding(stream, v).map(Some),
            Err(_) => None,
        };
        if let Some(table) = table {
            match insert_known(conns, stream, after, table, batch).await? {
                Some(appended) => return Ok(Some(appended)),
                // The table was created anew: what the store knew is void.
                None => known.forget(),
            }
        }
    }
    let row = conns
        .fetch_optional(|| insert_query(stream, exact, must_exist, batch))
        .await
        .map_err(InsertError::Sql)?;
    row.map(|row| appended(row, batch.len())).transpose()
}

/// Run [`APPEND_KNOWN_SQL`] for a one-event batch. `None`: the table is not
/// the one with OID `table` any more.
async fn insert_known(
    conns: &Conns,
    stream: &StreamId,
    after: i64,
    table: Option<i64>,
    batch: &Batch,
) -> Result<Option<(AppendResult, i64)>, InsertError> {
    let row = conns
        .fetch_optional(|| {
            one_event(&APPEND_KNOWN_SQL, stream, batch)
                .bind(after)
                .bind(table)
                .bind(stream.category())
        })
        .await
        .map_err(InsertError::Sql)?;
    row.map(|row| appended(row, 1)).transpose()
}

/// Append within a transaction the caller holds, as the store's append
/// statement does, without its retry and idempotency handling: for tests
/// that delay a commit or roll back.
///
/// It must be the transaction's first write (refused otherwise): the
/// per-stream order of the global log relies on the transaction id being
/// assigned by the append itself.
#[cfg(feature = "testing")]
pub(crate) async fn append_in(
    conn: &mut sqlx::PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult> {
    let assigned: bool = sqlx::query_scalar("SELECT pg_current_xact_id_if_assigned() IS NOT NULL")
        .fetch_one(&mut *conn)
        .await
        .map_err(from_sqlx)?;
    if assigned {
        return Err(Error::Backend(
            "append_in must be the first write of its transaction".into(),
        ));
    }
    let (exact, must_exist) = expectation(expected)?;
    let batch = Batch::new(&events, usize::MAX)?;
    match insert(&mut *conn, stream, exact, must_exist, &batch).await {
        Ok(Some((result, _))) => Ok(result),
        Ok(None) => {
            let actual = version_of(&mut *conn, stream).await?;
            Err(conflict(stream, expected, actual))
        }
        Err(InsertError::Sql(e)) => Err(from_sqlx(e)),
        Err(InsertError::Other(e)) => Err(e),
    }
}

impl EventStore for PgEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        on_live_connection!(self.append_now(stream, expected, &events, Records::None))
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        on_live_connection!(self.read_stream_once(stream, from_version, max_count))
    }

    async fn read_stream_for_fold(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<FoldEvent>> {
        on_live_connection!(self.read_fold_once(stream, from_version, max_count))
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        self.version(stream).await
    }

    async fn read_all(&self, after_position: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        on_live_connection!(self.read_all_once(after_position, max_count))
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        let row: Option<EventRow> = on_conn!(&self.inner.conns, |c| sqlx::query_as(&format!(
            "SELECT {EVENT_COLUMNS} FROM strata.events WHERE event_id = $1"
        ))
        .bind(event_id)
        .fetch_optional(c))
        .map_err(from_sqlx)?;
        row.map(RecordedEvent::try_from).transpose()
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let schema_version = i32::try_from(snapshot.schema_version)
            .map_err(|_| crate::error::out_of_range("schema_version", snapshot.schema_version))?;
        on_conn!(&self.inner.conns, |c| sqlx::query(
            "INSERT INTO strata.snapshots (stream_id, stream_version, schema_version, state, taken_at)
             VALUES ($1, $2, $3, $4, now())
             ON CONFLICT (stream_id) DO UPDATE
                SET stream_version = EXCLUDED.stream_version,
                    schema_version = EXCLUDED.schema_version,
                    state = EXCLUDED.state,
                    taken_at = EXCLUDED.taken_at
                WHERE strata.snapshots.stream_version <= EXCLUDED.stream_version",
        )
        .bind(snapshot.stream_id.as_str())
        .bind(to_i64_saturating(snapshot.stream_version))
        .bind(schema_version)
        .bind(&snapshot.state)
        .execute(c))
        .map_err(from_sqlx)?;
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        let row: Option<SnapshotRow> = on_conn!(&self.inner.conns, |c| sqlx::query_as(
            "SELECT stream_id, stream_version, schema_version, state::text AS state
             FROM strata.snapshots WHERE stream_id = $1",
        )
        .bind(stream.as_str())
        .fetch_optional(c))
        .map_err(from_sqlx)?;
        row.map(Snapshot::try_from).transpose()
    }

    fn subscribe(&self, after_position: u64) -> Subscription {
        follow(
            self.clone(),
            after_position,
            self.inner.read_batch,
            self.waiter(after_position),
        )
    }

    fn subscribe_filtered(&self, after_position: u64, filter: LogFilter) -> FilteredSubscription {
        follow_filtered(
            self.clone(),
            after_position,
            self.inner.read_batch,
            filter,
            self.waiter(after_position),
        )
    }

    async fn read_all_filtered(
        &self,
        after_position: u64,
        max_count: usize,
        filter: &LogFilter,
    ) -> Result<LogPage> {
        if filter.is_all() {
            let events = self.read_all(after_position, max_count).await?;
            return Ok(LogPage {
                reached_end: events.len() < max_count.max(1),
                scanned_to: events.last().map_or(after_position, |e| e.global_position),
                events,
            });
        }
        self.read_filtered(after_position, max_count, filter).await
    }

    async fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> Result<AppendResult> {
        on_live_connection!(self.append_now(stream, expected, &events, Records::Command(command_id)))
    }

    async fn append_commands(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        records: Vec<CommandRecord>,
    ) -> Result<AppendResult> {
        on_live_connection!(self.append_now(stream, expected, &events, Records::Decisions(&records)))
    }

    async fn record_command(&self, record: CommandRecord) -> Result<Option<CommandRecord>> {
        let (decision, first_version, version, refusal) = decision_columns(&record.decision)?;
        // A concurrent first record of the same id is waited for: then
        // this one stores nothing and reads it.
        let stored = on_conn!(&self.inner.conns, |c| {
            sqlx::query(
            "INSERT INTO strata.commands (command_id, stream_id, decision, first_version, version, refusal)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (command_id) DO NOTHING",
        )
        .bind(record.command_id)
        .bind(record.stream_id.as_str())
        .bind(decision)
        .bind(first_version.map(to_i64_saturating))
        .bind(to_i64_saturating(version))
        .bind(refusal)
        .execute(c)
        })
        .map_err(from_sqlx)?
        .rows_affected();
        if stored == 1 {
            return Ok(None);
        }
        self.read_command(record.command_id)
            .await?
            .map(Some)
            .ok_or_else(|| {
                Error::Backend(format!("command {} is recorded but cannot be read", record.command_id).into())
            })
    }

    async fn read_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>> {
        let row: Option<CommandRow> = on_conn!(&self.inner.conns, |c| sqlx::query_as(
            "SELECT stream_id, decision, first_version, version, refusal::text AS refusal
             FROM strata.commands WHERE command_id = $1",
        )
        .bind(command_id)
        .fetch_optional(c))
        .map_err(from_sqlx)?;
        row.map(|row| row.into_record(command_id)).transpose()
    }

    async fn read_commands(&self, command_ids: &[Uuid]) -> Result<Vec<CommandRecord>> {
        let rows: Vec<IdentifiedCommandRow> = on_conn!(&self.inner.conns, |c| sqlx::query_as(
            "SELECT command_id, stream_id, decision, first_version, version, refusal::text AS refusal
             FROM strata.commands WHERE command_id = ANY($1)",
        )
        .bind(command_ids)
        .fetch_all(c))
        .map_err(from_sqlx)?;
        rows.into_iter().map(IdentifiedCommandRow::into_record).collect()
    }
}
