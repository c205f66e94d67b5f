//! PostgreSQL read models and the projection daemon.
//!
//! A [`PgProjection`] keeps its read model in tables of its own, which its
//! [`setup`](PgProjection::setup) creates and its
//! [`apply`](PgProjection::apply) changes, through the transaction the
//! runner hands it. The runner commits a batch's changes and the
//! projection's position in that one transaction, so a crash at any moment
//! leaves the two consistent: nothing is applied twice, nothing is lost.
//!
//! # Builds, schemas and readers
//! Each build of a projection (its first, each new version, each rebuild)
//! gets its own schema, `{name}__g{generation}`; the runner sets the
//! transaction's `search_path` to it, so the projection's SQL names its
//! tables without a schema. Readers read the schema named after the
//! projection, whose views point at the active build's tables. A new
//! version is built from position 0 beside the active one; once it has
//! caught up, the views are replaced in one transaction, and the old
//! build's schema is dropped. Readers never see a half-built model.
//!
//! # One runner per build, fenced
//! Any number of daemons may register a projection. A build is applied by
//! the daemon that holds its lease (`strata.projections.token`, raised at
//! every takeover, and `lease_until`). Every batch ends with an update of
//! the build's row that only succeeds while the token is the runner's and
//! its lease has not run out (by the server's clock), and the transaction
//! is rolled back otherwise: a runner that lost its lease, however it lost
//! it, cannot commit.

use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use sqlx::{PgConnection, PgPool, Row};
use strata_core::error::BoxError;
use strata_core::{Envelope, EventStore, LogFilter, RecordedEvent, Upcasters};
use strata_store_postgres::PgEventStore;
use tokio::sync::watch;
use tokio::task::JoinSet;
use uuid::Uuid;

use crate::error::{ProjectionError, Result};
use crate::projection::{Projection, RunnerOptions, name_problem};

/// A projection whose read model lives in PostgreSQL tables.
#[async_trait]
pub trait PgProjection: Projection {
    /// Create the read model's tables (and indexes), naming them without a
    /// schema: they are made in the schema of the build being set up. Runs
    /// once per build, in the transaction that registers the build.
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError>;

    /// Apply one event to the read model, through `tx`. An error rolls the
    /// batch back; the event is tried again with back-off, and after
    /// [`RunnerOptions::max_attempts`] tries the projection parks as
    /// `faulted` at it, while every other projection goes on.
    async fn apply(&self, tx: &mut PgConnection, event: &Envelope<Self::Event>) -> Result<(), BoxError>;
}

/// A registered projection, its event type erased.
#[async_trait]
trait Runnable: Send + Sync {
    fn name(&self) -> &str;
    fn version(&self) -> u32;
    fn filter(&self) -> &LogFilter;
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError>;
    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError>;
}

struct Registered<P> {
    projection: P,
    upcasters: Upcasters,
    filter: LogFilter,
}

#[async_trait]
impl<P: PgProjection> Runnable for Registered<P> {
    fn name(&self) -> &str {
        self.projection.name()
    }

    fn version(&self) -> u32 {
        self.projection.version()
    }

    fn filter(&self) -> &LogFilter {
        &self.filter
    }

    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        self.projection.setup(tx).await
    }

    async fn apply(&self, tx: &mut PgConnection, event: &RecordedEvent) -> Result<(), BoxError> {
        let envelope = event.decode::<P::Event>(&self.upcasters)?;
        self.projection.apply(tx, &envelope).await
    }
}

/// Runs registered projections against a PostgreSQL store until told to
/// stop; see the [module docs](self).
pub struct PgDaemon {
    store: PgEventStore,
    options: RunnerOptions,
    owner: String,
    projections: Vec<Arc<dyn Runnable>>,
}

impl std::fmt::Debug for PgDaemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgDaemon")
            .field("owner", &self.owner)
            .field("options", &self.options)
            .field(
                "projections",
                &self
                    .projections
                    .iter()
                    .map(|p| p.name().to_owned())
                    .collect::<Vec<_>>(),
            )
            .finish()
    }
}

impl PgDaemon {
    /// A daemon on `store`, with default options and an owner id unique to
    /// this daemon (process id and a random suffix).
    pub fn new(store: PgEventStore) -> Self {
        let random = Uuid::now_v7().simple().to_string();
        let owner = format!("pid{}-{}", std::process::id(), &random[random.len() - 8..]);
        PgDaemon {
            store,
            options: RunnerOptions::default(),
            owner,
            projections: Vec::new(),
        }
    }

    /// Replace the runner options.
    pub fn with_options(mut self, options: RunnerOptions) -> Self {
        self.options = options;
        self
    }

    /// The id this daemon holds leases under (shown as `owner` in status).
    pub fn owner(&self) -> &str {
        &self.owner
    }

    /// Add a projection. A bad name or a second projection of the same
    /// name is refused.
    pub fn register<P: PgProjection>(mut self, projection: P) -> Result<Self> {
        let name = projection.name().to_owned();
        if let Some(reason) = name_problem(&name) {
            return Err(ProjectionError::InvalidName { name, reason });
        }
        if self.projections.iter().any(|p| p.name() == name) {
            return Err(ProjectionError::Duplicate(name));
        }
        let upcasters = projection.upcasters();
        upcasters.check::<P::Event>()?;
        let filter = projection.filter();
        self.projections.push(Arc::new(Registered {
            projection,
            upcasters,
            filter,
        }));
        Ok(self)
    }

    /// Run every registered projection until `shutdown` completes; then
    /// finish the batches in flight, hand the leases back and return.
    ///
    /// First each projection's builds are registered; a projection whose
    /// [`setup`](PgProjection::setup) fails there ends the run at once
    /// with [`ProjectionError::Setup`] (a missing extension, say, is not
    /// worth retrying). Other failures, such as a database that cannot be
    /// reached, are retried while the daemon runs.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<()> {
        let (stop_tx, stop_rx) = watch::channel(false);
        let contexts: Vec<Context> = self
            .projections
            .iter()
            .map(|projection| Context {
                store: self.store.clone(),
                options: self.options.clone(),
                owner: self.owner.clone(),
                projection: projection.clone(),
                stop: stop_rx.clone(),
            })
            .collect();
        for ctx in &contexts {
            match ensure_builds(ctx).await {
                Err(e @ ProjectionError::Setup { .. }) => return Err(e),
                Err(e) => {
                    tracing::warn!(projection = ctx.name(), error = %e, "could not register the projection's builds yet")
                }
                Ok(_) => {}
            }
        }
        let mut supervisors = JoinSet::new();
        for ctx in contexts {
            supervisors.spawn(supervise(ctx));
        }
        shutdown.await;
        let _ = stop_tx.send(true);
        while supervisors.join_next().await.is_some() {}
        Ok(())
    }
}

#[derive(Clone)]
struct Context {
    store: PgEventStore,
    options: RunnerOptions,
    owner: String,
    projection: Arc<dyn Runnable>,
    stop: watch::Receiver<bool>,
}

impl Context {
    fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    fn name(&self) -> &str {
        self.projection.name()
    }

    fn stopping(&self) -> bool {
        *self.stop.borrow()
    }

    /// Sleep `d`, or less when the daemon is told to stop.
    async fn pause(&self, d: Duration) {
        let mut stop = self.stop.clone();
        let _ = tokio::time::timeout(d, stop.wait_for(|s| *s)).await;
    }
}

/// Keep the builds of one projection that this daemon can apply (those of
/// its version) running: register them, and try for their leases.
async fn supervise(ctx: Context) {
    // Runner tasks live in a set, so that they end with this task.
    let mut runners: JoinSet<()> = JoinSet::new();
    let mut running: HashMap<tokio::task::Id, i32> = HashMap::new();
    let mut warned_outdated = false;
    while !ctx.stopping() {
        while let Some(ended) = runners.try_join_next_with_id() {
            let id = match ended {
                Ok((id, ())) => id,
                Err(e) => e.id(),
            };
            running.remove(&id);
        }
        match ensure_builds(&ctx).await {
            Ok(Builds { mine, outdated }) => {
                if outdated && !warned_outdated {
                    tracing::warn!(
                        projection = ctx.name(),
                        version = ctx.projection.version(),
                        "a newer version of this projection is active; this daemon leaves it alone"
                    );
                    warned_outdated = true;
                }
                for generation in mine {
                    if running.values().any(|g| *g == generation) {
                        continue;
                    }
                    match acquire(&ctx, generation).await {
                        Ok(Some(lease)) => {
                            let handle = runners.spawn(run_build(ctx.clone(), lease));
                            running.insert(handle.id(), generation);
                        }
                        Ok(None) => {}
                        Err(e) => {
                            tracing::warn!(projection = ctx.name(), error = %e, "could not try for a lease")
                        }
                    }
                }
            }
            Err(e) => {
                tracing::warn!(projection = ctx.name(), error = %e, "could not register the projection's builds")
            }
        }
        ctx.pause(ctx.options.lease / 3).await;
    }
    while runners.join_next().await.is_some() {}
}

struct Builds {
    /// Generations (active or building) of this daemon's version.
    mine: Vec<i32>,
    /// A newer version is active.
    outdated: bool,
}

fn build_schema(name: &str, generation: i32) -> String {
    format!("{name}__g{generation}")
}

/// Make sure the projection has the builds it needs: a first one, a new
/// one for a raised version, a new one for a rebuild request. Serialized
/// per projection name across daemons by an advisory lock.
async fn ensure_builds(ctx: &Context) -> Result<Builds> {
    let name = ctx.name();
    let version = ctx.projection.version() as i32;
    let mut tx = ctx.pool().begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext('strata.projections'), hashtext($1))")
        .bind(name)
        .execute(&mut *tx)
        .await?;
    let rows = sqlx::query(
        "SELECT generation, version, stage, rebuild_requested, schema_name FROM strata.projections
         WHERE name = $1 AND stage <> 'retired'",
    )
    .bind(name)
    .fetch_all(&mut *tx)
    .await?;
    let mut active: Option<(i32, i32, bool)> = None;
    let mut building: Option<(i32, i32, String)> = None;
    for row in &rows {
        let (generation, v, stage): (i32, i32, String) = (row.get(0), row.get(1), row.get(2));
        if stage == "active" {
            active = Some((generation, v, row.get(3)));
        } else {
            building = Some((generation, v, row.get(4)));
        }
    }
    let next: i32 =
        sqlx::query_scalar("SELECT coalesce(max(generation), 0) + 1 FROM strata.projections WHERE name = $1")
            .bind(name)
            .fetch_one(&mut *tx)
            .await?;
    let mut outdated = false;
    match (active, &building) {
        (None, None) => create_build(ctx, &mut tx, next, "active").await?,
        (None, Some(_)) => {}
        (Some((_, v, _)), None) if v < version => create_build(ctx, &mut tx, next, "building").await?,
        (Some((generation, v, true)), None) if v == version => {
            sqlx::query(
                "UPDATE strata.projections SET rebuild_requested = false WHERE name = $1 AND generation = $2",
            )
            .bind(name)
            .bind(generation)
            .execute(&mut *tx)
            .await?;
            create_build(ctx, &mut tx, next, "building").await?;
        }
        (Some((_, v, _)), Some((generation, bv, schema))) if v < version && *bv < version => {
            // An older version was being built; this one replaces it.
            sqlx::query("UPDATE strata.projections SET stage = 'retired', updated_at = now() WHERE name = $1 AND generation = $2")
                .bind(name)
                .bind(generation)
                .execute(&mut *tx)
                .await?;
            ddl(&mut tx, format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
            create_build(ctx, &mut tx, next, "building").await?;
        }
        (Some((_, v, _)), _) if v > version => outdated = true,
        _ => {}
    }
    let mine = sqlx::query_scalar(
        "SELECT generation FROM strata.projections
         WHERE name = $1 AND version = $2 AND stage <> 'retired' ORDER BY generation",
    )
    .bind(name)
    .bind(version)
    .fetch_all(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Builds { mine, outdated })
}

/// Register a build: its row, its schema, the projection's tables in it,
/// and (for an active build) the readers' views.
async fn create_build(ctx: &Context, tx: &mut PgConnection, generation: i32, stage: &str) -> Result<()> {
    let name = ctx.name();
    let schema = build_schema(name, generation);
    let filter = ctx.projection.filter();
    sqlx::query(
        "INSERT INTO strata.projections
             (name, generation, version, schema_name, stage, categories, event_types, activated_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, CASE WHEN $5 = 'active' THEN now() END)",
    )
    .bind(name)
    .bind(generation)
    .bind(ctx.projection.version() as i32)
    .bind(&schema)
    .bind(stage)
    .bind(&filter.categories)
    .bind(&filter.event_types)
    .execute(&mut *tx)
    .await?;
    setup_schema(ctx, tx, &schema).await?;
    if stage == "active" {
        replace_views(tx, name, &schema).await?;
    }
    tracing::info!(projection = name, generation, stage, "registered a build");
    Ok(())
}

/// (Re)create a build's schema and have the projection set up its tables.
async fn setup_schema(ctx: &Context, tx: &mut PgConnection, schema: &str) -> Result<()> {
    ddl(tx, format!("DROP SCHEMA IF EXISTS \"{schema}\" CASCADE")).await?;
    ddl(tx, format!("CREATE SCHEMA \"{schema}\"")).await?;
    set_search_path(tx, schema).await?;
    ctx.projection
        .setup(tx)
        .await
        .map_err(|source| ProjectionError::Setup {
            name: ctx.name().to_owned(),
            source,
        })?;
    sqlx::query("RESET search_path").execute(&mut *tx).await?;
    Ok(())
}

/// Run one DDL statement, not kept as a prepared statement.
async fn ddl(tx: &mut PgConnection, sql: String) -> Result<()> {
    sqlx::query(&sql).persistent(false).execute(tx).await?;
    Ok(())
}

/// Name the build's schema first for the rest of the transaction, so that
/// the projection's SQL finds its tables without a schema.
async fn set_search_path(tx: &mut PgConnection, schema: &str) -> Result<()> {
    sqlx::query("SELECT set_config('search_path', format('%I', $1::text), true)")
        .bind(schema)
        .execute(tx)
        .await?;
    Ok(())
}

/// Point the readers' schema (named after the projection) at `schema`: one
/// view per table of it, all replaced in the caller's transaction.
async fn replace_views(tx: &mut PgConnection, name: &str, schema: &str) -> Result<()> {
    ddl(tx, format!("DROP SCHEMA IF EXISTS \"{name}\" CASCADE")).await?;
    ddl(tx, format!("CREATE SCHEMA \"{name}\"")).await?;
    let statements: Vec<String> = sqlx::query_scalar(
        "SELECT format('CREATE VIEW %I.%I AS SELECT * FROM %I.%I', $1::text, c.relname, $2::text, c.relname)
         FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
         WHERE n.nspname = $2 AND c.relkind IN ('r', 'p', 'v', 'm')
         ORDER BY c.relname",
    )
    .bind(name)
    .bind(schema)
    .fetch_all(&mut *tx)
    .await?;
    for statement in statements {
        ddl(tx, statement).await?;
    }
    Ok(())
}

/// A lease held on one build.
#[derive(Debug, Clone)]
struct Lease {
    generation: i32,
    token: i64,
    schema: String,
}

fn lease_interval(options: &RunnerOptions) -> sqlx::postgres::types::PgInterval {
    sqlx::postgres::types::PgInterval {
        months: 0,
        days: 0,
        microseconds: i64::try_from(options.lease.as_micros()).unwrap_or(i64::MAX),
    }
}

/// Take the build's lease if nobody holds it (or its holder's ran out).
async fn acquire(ctx: &Context, generation: i32) -> Result<Option<Lease>> {
    let row = sqlx::query(
        "UPDATE strata.projections
         SET owner = $3, token = token + 1, lease_until = clock_timestamp() + $4,
             heartbeat_at = clock_timestamp(), updated_at = clock_timestamp()
         WHERE name = $1 AND generation = $2 AND stage <> 'retired'
           AND (lease_until IS NULL OR lease_until < clock_timestamp())
         RETURNING token, schema_name",
    )
    .bind(ctx.name())
    .bind(generation)
    .bind(&ctx.owner)
    .bind(lease_interval(&ctx.options))
    .fetch_optional(ctx.pool())
    .await?;
    Ok(row.map(|row| {
        tracing::info!(projection = ctx.name(), generation, owner = %ctx.owner, "took the lease");
        Lease {
            generation,
            token: row.get(0),
            schema: row.get(1),
        }
    }))
}

/// What the build's row says, read while renewing the lease.
#[derive(Debug)]
struct Control {
    stage: String,
    state: String,
    position: u64,
    skip_event_id: Option<Uuid>,
    reset_requested: bool,
}

/// Renew the lease and read the build's row; `None` if the lease is lost.
async fn heartbeat(ctx: &Context, lease: &Lease) -> Result<Option<Control>> {
    let row = sqlx::query(
        "UPDATE strata.projections
         SET lease_until = clock_timestamp() + $4, heartbeat_at = clock_timestamp()
         WHERE name = $1 AND generation = $2 AND token = $3 AND lease_until > clock_timestamp()
         RETURNING stage, state, position, skip_event_id, reset_requested,
             (SELECT coalesce(max(global_position), 0) FROM strata.events),
             (SELECT extract(epoch FROM clock_timestamp() - e.recorded_at)::float8 FROM strata.events e
              WHERE e.global_position > strata.projections.position ORDER BY e.global_position LIMIT 1)",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .bind(lease.token)
    .bind(lease_interval(&ctx.options))
    .fetch_optional(ctx.pool())
    .await?;
    Ok(row.map(|row| {
        let control = Control {
            stage: row.get(0),
            state: row.get(1),
            position: u64::try_from(row.get::<i64, _>(2)).unwrap_or(0),
            skip_event_id: row.get(3),
            reset_requested: row.get(4),
        };
        let head = u64::try_from(row.get::<i64, _>(5)).unwrap_or(0);
        let labels = [
            ("projection", ctx.name().to_owned()),
            ("generation", lease.generation.to_string()),
        ];
        metrics::gauge!("strata_projection_position", &labels).set(control.position as f64);
        metrics::gauge!("strata_projection_head", &labels).set(head as f64);
        metrics::gauge!("strata_projection_lag_positions", &labels)
            .set(head.saturating_sub(control.position) as f64);
        let age: Option<f64> = row.get(6);
        metrics::gauge!("strata_projection_lag_seconds", &labels).set(age.unwrap_or(0.0).max(0.0));
        control
    }))
}

/// Hand the lease back, so that another daemon can take over at once.
async fn release(ctx: &Context, lease: &Lease) {
    let released = sqlx::query(
        "UPDATE strata.projections SET owner = NULL, lease_until = NULL
         WHERE name = $1 AND generation = $2 AND token = $3",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .bind(lease.token)
    .execute(ctx.pool())
    .await;
    if let Err(e) = released {
        tracing::warn!(projection = ctx.name(), error = %e, "could not hand the lease back; it runs out by itself");
    }
}

/// How a batch ended.
enum Outcome {
    Committed,
    /// The event at this index failed; nothing was committed.
    Failed(usize, String),
    /// The lease was lost (or the row changed under the runner): nothing
    /// was committed.
    Fenced,
}

/// Apply a build while its lease holds.
async fn run_build(ctx: Context, lease: Lease) {
    let name = ctx.name().to_owned();
    let mut signal = ctx.store.commit_signal();
    let idle_wait = ctx.options.max_wait.min(ctx.options.lease / 3);
    let mut failures: Option<(Uuid, u32)> = None;
    loop {
        if ctx.stopping() {
            release(&ctx, &lease).await;
            return;
        }
        let control = match heartbeat(&ctx, &lease).await {
            Ok(Some(control)) => control,
            Ok(None) => {
                tracing::warn!(projection = %name, generation = lease.generation, "lost the lease");
                return;
            }
            Err(e) => {
                tracing::warn!(projection = %name, error = %e, "could not renew the lease");
                ctx.pause(ctx.options.retry_backoff).await;
                continue;
            }
        };
        if control.stage == "retired" {
            release(&ctx, &lease).await;
            return;
        }
        if control.reset_requested {
            if let Err(e) = reset_in_place(&ctx, &lease).await {
                tracing::warn!(projection = %name, error = %e, "reset failed");
                ctx.pause(ctx.options.retry_backoff).await;
            }
            failures = None;
            continue;
        }
        if control.state != "running" {
            ctx.pause(idle_wait).await;
            continue;
        }
        let position = control.position;
        let page = ctx
            .store
            .read_all_filtered(position, ctx.options.batch_size, ctx.projection.filter())
            .await;
        let page = match page {
            Ok(page) => {
                metrics::counter!("strata_projection_events_fetched_total", "projection" => name.clone())
                    .increment(page.events.len() as u64);
                page
            }
            Err(strata_core::Error::UndecodableEvent {
                event_id,
                global_position,
                reason,
            }) => {
                let error = format!("the stored event cannot be read: {reason}");
                if control.skip_event_id == Some(event_id) {
                    let _ = skip_unreadable(&ctx, &lease, position, event_id, global_position, &error).await;
                } else {
                    failures = note_failure(
                        &ctx,
                        &lease,
                        failures,
                        position,
                        event_id,
                        global_position,
                        &error,
                    )
                    .await;
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(projection = %name, error = %e, "could not read the log");
                ctx.pause(ctx.options.retry_backoff).await;
                continue;
            }
        };
        if page.events.is_empty() {
            if page.scanned_to > position {
                // Nothing wanted, but the position moves past what was examined.
                let _ = apply_batch(&ctx, &lease, position, &[], page.scanned_to, None).await;
            }
            if page.reached_end {
                if control.stage == "building" {
                    match switch_over(&ctx, &lease).await {
                        Ok(true) => continue,
                        Ok(false) => {}
                        Err(e) => tracing::warn!(projection = %name, error = %e, "switch-over failed"),
                    }
                }
                signal.wait(idle_wait).await;
            }
            continue;
        }
        let started = Instant::now();
        let result = renewing(
            &ctx,
            &lease,
            apply_batch(
                &ctx,
                &lease,
                position,
                &page.events,
                page.scanned_to,
                control.skip_event_id,
            ),
        )
        .await;
        match result {
            Ok(Outcome::Committed) => {
                failures = None;
                metrics::histogram!("strata_projection_batch_seconds", "projection" => name.clone())
                    .record(started.elapsed().as_secs_f64());
            }
            Ok(Outcome::Fenced) => {
                tracing::warn!(projection = %name, "a batch was refused: the lease is no longer this runner's");
            }
            Ok(Outcome::Failed(index, error)) => {
                // Commit what came before the failing event, then deal with it.
                let mut at = position;
                if index > 0 {
                    let last = page.events[index - 1].global_position;
                    match apply_batch(
                        &ctx,
                        &lease,
                        position,
                        &page.events[..index],
                        last,
                        control.skip_event_id,
                    )
                    .await
                    {
                        Ok(Outcome::Committed) => at = last,
                        _ => continue,
                    }
                }
                let event = &page.events[index];
                failures = note_failure(
                    &ctx,
                    &lease,
                    failures,
                    at,
                    event.event_id,
                    event.global_position,
                    &error,
                )
                .await;
            }
            Err(e) => {
                tracing::warn!(projection = %name, error = %e, "a batch failed");
                ctx.pause(ctx.options.retry_backoff).await;
            }
        }
    }
}

/// Run `work` (a batch) while a companion task renews the lease every
/// `lease / 3`, so that a batch slower than the lease is not refused for
/// that alone. A runner that cannot renew (its lease ran out or was taken)
/// is still refused at commit.
async fn renewing<T>(ctx: &Context, lease: &Lease, work: impl Future<Output = T>) -> T {
    struct AbortOnDrop(tokio::task::JoinHandle<()>);
    impl Drop for AbortOnDrop {
        fn drop(&mut self) {
            self.0.abort();
        }
    }
    let _renewer = AbortOnDrop(tokio::spawn({
        let (ctx, lease) = (ctx.clone(), lease.clone());
        async move {
            loop {
                tokio::time::sleep(ctx.options.lease / 3).await;
                match heartbeat(&ctx, &lease).await {
                    Ok(Some(_)) => {}
                    // Lost: the batch's commit will be refused.
                    Ok(None) => return,
                    Err(e) => {
                        tracing::warn!(projection = ctx.name(), error = %e, "could not renew the lease during a batch")
                    }
                }
            }
        }
    }));
    work.await
}

/// Count a failure of the event at `global_position`; after the last try,
/// park the build as faulted there. Returns the updated failure count.
async fn note_failure(
    ctx: &Context,
    lease: &Lease,
    failures: Option<(Uuid, u32)>,
    position: u64,
    event_id: Uuid,
    global_position: u64,
    error: &str,
) -> Option<(Uuid, u32)> {
    let attempts = match failures {
        Some((id, n)) if id == event_id => n + 1,
        _ => 1,
    };
    metrics::counter!("strata_projection_errors_total", "projection" => ctx.name().to_owned()).increment(1);
    tracing::warn!(projection = ctx.name(), %event_id, global_position, attempts, error, "an event failed");
    if attempts >= ctx.options.max_attempts {
        let parked = sqlx::query(
            "UPDATE strata.projections
             SET state = 'faulted', fault_event_id = $4, fault_position = $5, fault_error = $6,
                 fault_attempts = $7, faulted_at = clock_timestamp(), last_error = $6,
                 updated_at = clock_timestamp()
             WHERE name = $1 AND generation = $2 AND token = $3 AND position = $8
               AND lease_until > clock_timestamp()",
        )
        .bind(ctx.name())
        .bind(lease.generation)
        .bind(lease.token)
        .bind(event_id)
        .bind(to_i64(global_position))
        .bind(error)
        .bind(attempts as i32)
        .bind(to_i64(position))
        .execute(ctx.pool())
        .await;
        match parked {
            Ok(_) => {
                tracing::error!(projection = ctx.name(), %event_id, global_position, error, "parked as faulted")
            }
            Err(e) => tracing::warn!(projection = ctx.name(), error = %e, "could not park the projection"),
        }
        return None;
    }
    let _ = sqlx::query(
        "UPDATE strata.projections SET last_error = $4, updated_at = clock_timestamp()
         WHERE name = $1 AND generation = $2 AND token = $3",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .bind(lease.token)
    .bind(error)
    .execute(ctx.pool())
    .await;
    ctx.pause(ctx.options.backoff(attempts + 1)).await;
    Some((event_id, attempts))
}

fn to_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Apply `events` (all after `position`) and move the build's position to
/// `to`, in one transaction that commits only while the lease holds and
/// the position is still `position`. The event `skip` (an operator's
/// choice) is recorded as skipped instead of applied.
async fn apply_batch(
    ctx: &Context,
    lease: &Lease,
    position: u64,
    events: &[RecordedEvent],
    to: u64,
    skip: Option<Uuid>,
) -> Result<Outcome> {
    let mut tx = ctx.pool().begin().await?;
    set_search_path(&mut tx, &lease.schema).await?;
    let mut skipped = false;
    for (index, event) in events.iter().enumerate() {
        if skip == Some(event.event_id) {
            record_skip(&mut tx, ctx, lease, event.event_id, event.global_position).await?;
            skipped = true;
            continue;
        }
        if let Err(e) = ctx.projection.apply(&mut tx, event).await {
            return Ok(Outcome::Failed(index, e.to_string()));
        }
    }
    let applied = events.len() - usize::from(skipped);
    let updated = sqlx::query(
        "UPDATE strata.projections
         SET position = $5, events_applied = events_applied + $6,
             skip_event_id = CASE WHEN $7 THEN NULL ELSE skip_event_id END,
             fault_event_id = NULL, fault_position = NULL, fault_error = NULL, fault_attempts = NULL,
             last_error = NULL, lease_until = clock_timestamp() + $8, heartbeat_at = clock_timestamp(),
             updated_at = clock_timestamp()
         WHERE name = $1 AND generation = $2 AND token = $3 AND position = $4
           AND state = 'running' AND stage <> 'retired' AND lease_until > clock_timestamp()",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .bind(lease.token)
    .bind(to_i64(position))
    .bind(to_i64(to))
    .bind(applied as i64)
    .bind(skipped)
    .bind(lease_interval(&ctx.options))
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        tx.rollback().await?;
        return Ok(Outcome::Fenced);
    }
    tx.commit().await?;
    if applied > 0 {
        metrics::counter!("strata_projection_events_applied_total", "projection" => ctx.name().to_owned())
            .increment(applied as u64);
    }
    metrics::gauge!(
        "strata_projection_position",
        "projection" => ctx.name().to_owned(),
        "generation" => lease.generation.to_string()
    )
    .set(to as f64);
    Ok(Outcome::Committed)
}

async fn record_skip(
    tx: &mut PgConnection,
    ctx: &Context,
    lease: &Lease,
    event_id: Uuid,
    global_position: u64,
) -> Result<()> {
    sqlx::query(
        "INSERT INTO strata.projection_skips (name, generation, event_id, global_position, error)
         SELECT name, generation, $3, $4, fault_error FROM strata.projections
         WHERE name = $1 AND generation = $2
         ON CONFLICT DO NOTHING",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .bind(event_id)
    .bind(to_i64(global_position))
    .execute(&mut *tx)
    .await?;
    tracing::warn!(projection = ctx.name(), %event_id, global_position, "skipped an event, as an operator asked");
    Ok(())
}

/// Pass over an event that cannot be read, as an operator asked.
async fn skip_unreadable(
    ctx: &Context,
    lease: &Lease,
    position: u64,
    event_id: Uuid,
    global_position: u64,
    error: &str,
) -> Result<Outcome> {
    let mut tx = ctx.pool().begin().await?;
    record_skip(&mut tx, ctx, lease, event_id, global_position).await?;
    let updated = sqlx::query(
        "UPDATE strata.projections
         SET position = $5, skip_event_id = NULL, fault_event_id = NULL, fault_position = NULL,
             fault_error = NULL, fault_attempts = NULL, last_error = $6, updated_at = clock_timestamp()
         WHERE name = $1 AND generation = $2 AND token = $3 AND position = $4
           AND lease_until > clock_timestamp()",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .bind(lease.token)
    .bind(to_i64(position))
    .bind(to_i64(global_position))
    .bind(error)
    .execute(&mut *tx)
    .await?;
    if updated.rows_affected() != 1 {
        return Ok(Outcome::Fenced);
    }
    tx.commit().await?;
    Ok(Outcome::Committed)
}

/// Empty the build and start it again from position 0, in place.
async fn reset_in_place(ctx: &Context, lease: &Lease) -> Result<()> {
    let mut tx = ctx.pool().begin().await?;
    let row = sqlx::query(
        "SELECT stage FROM strata.projections
         WHERE name = $1 AND generation = $2 AND token = $3 AND lease_until > clock_timestamp()
         FOR UPDATE",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .bind(lease.token)
    .fetch_optional(&mut *tx)
    .await?;
    let Some(row) = row else { return Ok(()) };
    let stage: String = row.get(0);
    setup_schema(ctx, &mut tx, &lease.schema).await?;
    if stage == "active" {
        replace_views(&mut tx, ctx.name(), &lease.schema).await?;
    }
    sqlx::query(
        "UPDATE strata.projections
         SET position = 0, events_applied = 0, reset_requested = false, state = 'running',
             skip_event_id = NULL, fault_event_id = NULL, fault_position = NULL, fault_error = NULL,
             fault_attempts = NULL, last_error = NULL, updated_at = clock_timestamp()
         WHERE name = $1 AND generation = $2",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    tracing::info!(
        projection = ctx.name(),
        generation = lease.generation,
        "reset to position 0"
    );
    Ok(())
}

/// Make a caught-up build the active one: retire the active build, point
/// the readers' views at this one, in one transaction; then drop the
/// retired build's schema. False if this runner may not (lost lease).
async fn switch_over(ctx: &Context, lease: &Lease) -> Result<bool> {
    let mut tx = ctx.pool().begin().await?;
    let rows = sqlx::query(
        "SELECT generation, stage, token, lease_until > clock_timestamp(), schema_name, position
         FROM strata.projections WHERE name = $1 AND stage IN ('active', 'building')
         ORDER BY generation FOR UPDATE",
    )
    .bind(ctx.name())
    .fetch_all(&mut *tx)
    .await?;
    let mine = rows.iter().find(|r| {
        r.get::<i32, _>(0) == lease.generation
            && r.get::<String, _>(1) == "building"
            && r.get::<i64, _>(2) == lease.token
            && r.get::<Option<bool>, _>(3) == Some(true)
    });
    let Some(mine) = mine else {
        return Ok(false);
    };
    // Readers must not go back in time: while the active build is ahead
    // (writers went on since this build's last page), catch up further.
    // The active build's row is locked here, so it cannot move on before
    // this transaction ends, and after it its next batch is refused.
    let position: i64 = mine.get(5);
    if rows
        .iter()
        .any(|r| r.get::<String, _>(1) == "active" && r.get::<i64, _>(5) > position)
    {
        return Ok(false);
    }
    let old: Option<String> = rows
        .iter()
        .find(|r| r.get::<String, _>(1) == "active")
        .map(|r| r.get(4));
    sqlx::query(
        "UPDATE strata.projections SET stage = 'retired', owner = NULL, lease_until = NULL, updated_at = now()
         WHERE name = $1 AND stage = 'active'",
    )
    .bind(ctx.name())
    .execute(&mut *tx)
    .await?;
    sqlx::query(
        "UPDATE strata.projections SET stage = 'active', activated_at = now(), updated_at = now()
         WHERE name = $1 AND generation = $2",
    )
    .bind(ctx.name())
    .bind(lease.generation)
    .execute(&mut *tx)
    .await?;
    replace_views(&mut tx, ctx.name(), &lease.schema).await?;
    tx.commit().await?;
    tracing::info!(
        projection = ctx.name(),
        generation = lease.generation,
        "switched readers over"
    );
    if let Some(old) = old {
        if let Err(e) = sqlx::query(&format!("DROP SCHEMA IF EXISTS \"{old}\" CASCADE"))
            .persistent(false)
            .execute(ctx.pool())
            .await
        {
            tracing::warn!(projection = ctx.name(), schema = %old, error = %e, "could not drop the retired build");
        }
    }
    Ok(true)
}

/// One build of a projection, as stored: what `strata projections status`
/// shows.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct ProjectionStatus {
    /// The projection's name.
    pub name: String,
    /// The build's number.
    pub generation: i32,
    /// The projection version it builds.
    pub version: i32,
    /// `running`, `paused`, `faulted`, or `rebuilding` (a build not yet
    /// serving readers).
    pub state: String,
    /// `active` or `building`.
    pub stage: String,
    /// Everything up to here is applied.
    pub position: u64,
    /// The last position of the log.
    pub head: u64,
    /// Wanted events after `position` (counted up to a million).
    pub lag_events: u64,
    /// Age of the oldest wanted event after `position`, in seconds.
    pub lag_seconds: f64,
    /// Events applied by this build.
    pub events_applied: u64,
    /// The daemon holding the lease, if any.
    pub owner: Option<String>,
    /// Whether that lease is current.
    pub lease_current: bool,
    /// Its last heartbeat.
    pub heartbeat_at: Option<chrono::DateTime<chrono::Utc>>,
    /// The event it is parked at, when faulted.
    pub fault_event_id: Option<Uuid>,
    /// That event's position.
    pub fault_position: Option<u64>,
    /// The last error.
    pub last_error: Option<String>,
}

/// The status of every projection's current builds, or of one projection.
pub async fn status(pool: &PgPool, name: Option<&str>) -> Result<Vec<ProjectionStatus>> {
    let rows = sqlx::query(
        "SELECT p.name, p.generation, p.version, p.state, p.stage, p.position, h.head, l.n, l.age,
                p.events_applied, p.owner, coalesce(p.lease_until > clock_timestamp(), false),
                p.heartbeat_at, p.fault_event_id, p.fault_position, p.last_error
         FROM strata.projections p
         CROSS JOIN (SELECT coalesce(max(global_position), 0) AS head FROM strata.events) h
         CROSS JOIN LATERAL (
             SELECT count(*) AS n, extract(epoch FROM clock_timestamp() - min(recorded_at))::float8 AS age
             FROM (SELECT e.recorded_at FROM strata.events e
                   WHERE e.global_position > p.position
                     AND (cardinality(p.categories) = 0 OR e.category = ANY(p.categories))
                     AND (cardinality(p.event_types) = 0 OR e.event_type = ANY(p.event_types))
                   ORDER BY e.global_position LIMIT 1000000) w
         ) l
         WHERE p.stage <> 'retired' AND ($1::text IS NULL OR p.name = $1)
         ORDER BY p.name, p.generation",
    )
    .bind(name)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .iter()
        .map(|r| {
            let stage: String = r.get(4);
            let state: String = r.get(3);
            ProjectionStatus {
                name: r.get(0),
                generation: r.get(1),
                version: r.get(2),
                state: if stage == "building" && state == "running" {
                    "rebuilding".to_owned()
                } else {
                    state
                },
                stage,
                position: u64::try_from(r.get::<i64, _>(5)).unwrap_or(0),
                head: u64::try_from(r.get::<i64, _>(6)).unwrap_or(0),
                lag_events: u64::try_from(r.get::<i64, _>(7)).unwrap_or(0),
                lag_seconds: r.get::<Option<f64>, _>(8).unwrap_or(0.0).max(0.0),
                events_applied: u64::try_from(r.get::<i64, _>(9)).unwrap_or(0),
                owner: r.get(10),
                lease_current: r.get(11),
                heartbeat_at: r.get(12),
                fault_event_id: r.get(13),
                fault_position: r.get::<Option<i64>, _>(14).and_then(|p| u64::try_from(p).ok()),
                last_error: r.get(15),
            }
        })
        .collect())
}

/// Stop applying events to the projection's builds until [`resume`].
pub async fn pause(pool: &PgPool, name: &str) -> Result<()> {
    control(pool, name, "SET state = 'paused'", "stage <> 'retired'").await
}

/// Apply events again: after [`pause`], or after a fault (the failing
/// event is tried again).
pub async fn resume(pool: &PgPool, name: &str) -> Result<()> {
    control(pool, name, "SET state = 'running'", "stage <> 'retired'").await
}

/// Empty the active build and rebuild it from position 0 in place (for
/// development: readers see it empty, then filling).
pub async fn reset(pool: &PgPool, name: &str) -> Result<()> {
    control(pool, name, "SET reset_requested = true", "stage = 'active'").await
}

/// Build the active version again from position 0, beside the active
/// build, and switch readers over once it has caught up.
pub async fn rebuild(pool: &PgPool, name: &str) -> Result<()> {
    control(pool, name, "SET rebuild_requested = true", "stage = 'active'").await
}

/// Pass over the event the projection is parked at, recording that it was
/// skipped, and go on.
pub async fn skip(pool: &PgPool, name: &str, event_id: Uuid) -> Result<()> {
    let updated = sqlx::query(
        "UPDATE strata.projections SET skip_event_id = $2, state = 'running', updated_at = now()
         WHERE name = $1 AND stage <> 'retired' AND fault_event_id = $2",
    )
    .bind(name)
    .bind(event_id)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        exists(pool, name).await?;
        return Err(ProjectionError::NotFaultedAt {
            name: name.to_owned(),
            event_id,
        });
    }
    Ok(())
}

/// Write an operator's request to the projection's builds that `stages`
/// selects; a projection without such a build is [`ProjectionError::NotFound`].
async fn control(pool: &PgPool, name: &str, set: &str, stages: &str) -> Result<()> {
    let updated = sqlx::query(&format!(
        "UPDATE strata.projections {set}, updated_at = now() WHERE name = $1 AND {stages}"
    ))
    .bind(name)
    .execute(pool)
    .await?;
    if updated.rows_affected() == 0 {
        return Err(ProjectionError::NotFound(name.to_owned()));
    }
    Ok(())
}

async fn exists(pool: &PgPool, name: &str) -> Result<()> {
    let found: Option<i32> = sqlx::query_scalar("SELECT 1 FROM strata.projections WHERE name = $1 LIMIT 1")
        .bind(name)
        .fetch_optional(pool)
        .await?;
    match found {
        Some(_) => Ok(()),
        None => Err(ProjectionError::NotFound(name.to_owned())),
    }
}

/// Wait until the projection's active build has passed `position` (read
/// your writes: pass the position of the caller's append), polling. A
/// projection not registered yet is waited for too; one still missing at
/// the timeout is [`ProjectionError::NotFound`].
pub async fn wait_for(pool: &PgPool, name: &str, position: u64, timeout: Duration) -> Result<()> {
    let started = Instant::now();
    let mut pause = Duration::from_millis(5);
    loop {
        let reached: Option<i64> = sqlx::query_scalar(
            "SELECT position FROM strata.projections WHERE name = $1 AND stage = 'active'",
        )
        .bind(name)
        .fetch_optional(pool)
        .await?;
        let found = reached.is_some();
        let reached = u64::try_from(reached.unwrap_or(0)).unwrap_or(0);
        if found && reached >= position {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            if !found {
                return Err(ProjectionError::NotFound(name.to_owned()));
            }
            return Err(ProjectionError::Timeout {
                name: name.to_owned(),
                position,
                reached,
                waited: started.elapsed(),
            });
        }
        tokio::time::sleep(pause.min(timeout.saturating_sub(started.elapsed()))).await;
        pause = (pause * 2).min(Duration::from_millis(100));
    }
}

/// The names of every projection stored.
pub async fn names(pool: &PgPool) -> Result<Vec<String>> {
    let names: Vec<String> = sqlx::query_scalar("SELECT DISTINCT name FROM strata.projections ORDER BY name")
        .fetch_all(pool)
        .await?;
    Ok(names)
}
