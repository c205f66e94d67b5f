//! `strata projections` against a fresh database, with a projection daemon
//! running in the test process: what `status` shows of running, faulted
//! and rebuilding projections, and the requests an operator writes.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use sqlx::{PgConnection, PgPool};
use strata_core::error::BoxError;
use strata_core::testing::fixtures::counter::{CounterEvent, added};
use strata_core::{Envelope, EventStore, ExpectedVersion, LogFilter, Metadata, NewEvent, StreamId, Uuid};
use strata_projections::postgres::{self, PgDaemon, PgProjection};
use strata_projections::{Projection, ProjectionError, RunnerOptions};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::fresh_database_url;
use tokio::sync::{Notify, oneshot};

/// Counts each counter's events, in table `counts`.
struct Counts {
    name: &'static str,
    /// Fail on events adding this number.
    poison: Option<u64>,
    /// Hold the builds after the first one inside `apply`.
    gate: Option<Arc<Gate>>,
}

/// Holds `apply` of every build but the projection's first (generation 1)
/// while `closed` is set.
#[derive(Default)]
struct Gate {
    closed: AtomicBool,
    /// Notified each time `apply` is held.
    held: Notify,
}

impl Counts {
    fn new(name: &'static str) -> Self {
        Counts {
            name,
            poison: None,
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
        LogFilter::categories(["counter"])
    }
}

#[async_trait]
impl PgProjection for Counts {
    async fn setup(&self, tx: &mut PgConnection) -> Result<(), BoxError> {
        sqlx::query("CREATE TABLE counts (stream_id text PRIMARY KEY, n bigint NOT NULL)")
            .execute(tx)
            .await?;
        Ok(())
    }

    async fn apply(&self, tx: &mut PgConnection, event: &Envelope<CounterEvent>) -> Result<(), BoxError> {
        if let Some(gate) = &self.gate {
            // The runner names the build's schema, `{name}__g{generation}`.
            let schema: String = sqlx::query_scalar("SELECT current_setting('search_path')")
                .fetch_one(&mut *tx)
                .await?;
            if schema != format!("{}__g1", self.name) && gate.closed.load(Ordering::SeqCst) {
                gate.held.notify_one();
                while gate.closed.load(Ordering::SeqCst) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
        let CounterEvent::Added { n, .. } = &event.event;
        if Some(*n) == self.poison {
            return Err(format!("cannot count {n}").into());
        }
        sqlx::query(
            "INSERT INTO counts VALUES ($1, 1) ON CONFLICT (stream_id) DO UPDATE SET n = counts.n + 1",
        )
        .bind(event.stream_id.as_str())
        .execute(tx)
        .await?;
        Ok(())
    }
}

fn options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 100,
        max_wait: Duration::from_millis(50),
        max_attempts: 2,
        retry_backoff: Duration::from_millis(10),
        lease: Duration::from_secs(2),
    }
}

/// Run `daemon` until the sender is used or dropped.
fn spawn_daemon(
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

/// Add `n` to counter `id`, in a transaction of its own; its position.
async fn add(store: &PgEventStore, id: &str, n: u64) -> Result<u64, BoxError> {
    let event = NewEvent::from_event(&added(n), Metadata::default())?;
    let stream = StreamId::for_aggregate("counter", id)?;
    let appended = store.append(&stream, ExpectedVersion::Any, vec![event]).await?;
    Ok(appended.positions[0])
}

/// `strata args`, which must succeed, without blocking the daemon's threads.
async fn strata(url: &str, args: &[&str]) -> Result<String, BoxError> {
    let (url, args) = owned(url, args);
    tokio::task::spawn_blocking(move || common::strata(&url, &borrowed(&args))).await?
}

/// `strata args`, which must fail with status 1: its standard error.
async fn strata_fails(url: &str, args: &[&str]) -> Result<String, BoxError> {
    let (url, args) = owned(url, args);
    tokio::task::spawn_blocking(move || common::strata_fails(&url, &borrowed(&args))).await?
}

fn owned(url: &str, args: &[&str]) -> (String, Vec<String>) {
    (url.to_owned(), args.iter().map(|a| a.to_string()).collect())
}

fn borrowed(args: &[String]) -> Vec<&str> {
    args.iter().map(String::as_str).collect()
}

/// `strata projections status --json`, parsed.
async fn status_json(url: &str) -> Result<Vec<Value>, BoxError> {
    Ok(serde_json::from_str(
        &strata(url, &["projections", "status", "--json"]).await?,
    )?)
}

/// The build of `name` at `generation` in a status array.
fn build<'a>(builds: &'a [Value], name: &str, generation: i64) -> &'a Value {
    builds
        .iter()
        .find(|b| b["name"] == name && b["generation"] == generation)
        .unwrap_or_else(|| panic!("no build {name} g{generation} in {builds:#?}"))
}

/// A JSON number as a `u64` (0 when it is none).
fn number(value: &Value) -> u64 {
    value.as_u64().unwrap_or(0)
}

/// A build's state and stage.
fn state_and_stage(build: &Value) -> (&str, &str) {
    (
        build["state"].as_str().unwrap_or("?"),
        build["stage"].as_str().unwrap_or("?"),
    )
}

/// The rows of a status table, by column name: cells are cut at the
/// columns of the header (every cell is left-aligned under its header).
fn table(text: &str) -> Vec<HashMap<String, String>> {
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut at = 0;
    for word in header.split_whitespace() {
        let start = at + header[at..].find(word).expect("in the header");
        starts.push((start, word));
        at = start + word.len();
    }
    lines
        .map(|line| {
            starts
                .iter()
                .enumerate()
                .map(|(i, (start, column))| {
                    let end = starts
                        .get(i + 1)
                        .map_or(line.len(), |next| next.0.min(line.len()));
                    let cell = line.get(*start..end).unwrap_or("").trim();
                    (column.to_string(), cell.to_owned())
                })
                .collect()
        })
        .collect()
}

/// The table row of `name` at `generation`.
fn row<'a>(rows: &'a [HashMap<String, String>], name: &str, generation: i64) -> &'a HashMap<String, String> {
    rows.iter()
        .find(|r| r["NAME"] == name && r["GEN"] == generation.to_string())
        .unwrap_or_else(|| panic!("no row {name} g{generation} in {rows:#?}"))
}

/// Poll `strata projections status --json` until `done` holds (20 s at
/// most); the builds it last showed.
async fn wait_for_status(url: &str, done: impl Fn(&[Value]) -> bool) -> Result<Vec<Value>, BoxError> {
    let started = Instant::now();
    loop {
        let builds = status_json(url).await?;
        if done(&builds) {
            return Ok(builds);
        }
        if started.elapsed() > Duration::from_secs(20) {
            return Err(format!("gave up waiting; the status was {builds:#?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The readers' view of a projection's counts.
async fn counts(pool: &PgPool, name: &str) -> Result<Vec<(String, i64)>, BoxError> {
    Ok(sqlx::query_as(&format!(
        "SELECT stream_id, n FROM {name}.counts ORDER BY stream_id"
    ))
    .fetch_all(pool)
    .await?)
}

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_running_faulted_and_rebuilding_projections_and_skip_and_rebuild_finish()
-> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    for id in ["a", "b", "c"] {
        for _ in 0..3 {
            add(&store, id, 1).await?;
        }
    }
    let poison_position = add(&store, "b", 13).await?;
    let mut head = 0;
    for id in ["a", "b", "c"] {
        head = add(&store, id, 1).await?;
    }
    let gate = Arc::new(Gate::default());
    let daemon = PgDaemon::new(store.clone())
        .with_options(options())
        .register(Counts::new("steady"))?
        .register(Counts {
            poison: Some(13),
            ..Counts::new("picky")
        })?
        .register(Counts {
            gate: Some(gate.clone()),
            ..Counts::new("rebuilt")
        })?;
    let owner = daemon.owner().to_owned();
    let (stop, task) = spawn_daemon(daemon);
    let checked = async {
        postgres::wait_for(store.pool(), "steady", head, WAIT).await?;
        postgres::wait_for(store.pool(), "rebuilt", head, WAIT).await?;
        wait_for_status(&url, |b| {
            b.iter().any(|b| b["name"] == "picky" && b["state"] == "faulted")
        })
        .await?;

        // A rebuild whose new build is held at its first event.
        gate.closed.store(true, Ordering::SeqCst);
        let said = strata(&url, &["projections", "rebuild", "rebuilt"]).await?;
        assert!(
            said.starts_with("rebuild requested for projection `rebuilt`"),
            "{said}"
        );
        assert_eq!(said.lines().count(), 1, "{said}");
        tokio::time::timeout(WAIT, gate.held.notified()).await?;
        // The active build keeps serving readers meanwhile.
        head = add(&store, "a", 1).await?;
        postgres::wait_for(store.pool(), "rebuilt", head, WAIT).await?;
        postgres::wait_for(store.pool(), "steady", head, WAIT).await?;
        assert_eq!(
            counts(store.pool(), "rebuilt").await?[0],
            ("counter-a".to_owned(), 5)
        );

        let builds = status_json(&url).await?;
        assert_eq!(builds.len(), 4, "{builds:#?}");
        let steady = build(&builds, "steady", 1);
        assert_eq!(state_and_stage(steady), ("running", "active"));
        // Caught up: at or past the last event (a caught-up build moves to
        // the log's horizon, which can be past it) with no lag.
        assert_eq!(steady["head"], head, "{steady:#?}");
        assert!(number(&steady["position"]) >= head, "{steady:#?}");
        assert_eq!(steady["lag_events"], 0, "{steady:#?}");
        assert_eq!(steady["owner"], owner.as_str());
        let picky = build(&builds, "picky", 1);
        assert_eq!(picky["state"], "faulted");
        assert_eq!(picky["fault_position"], poison_position);
        assert!(
            picky["position"].as_u64().ok_or("no position")? < poison_position,
            "{picky:#?}"
        );
        assert_eq!(picky["lag_events"], 5, "the poison event and the 4 after it");
        assert!(
            picky["last_error"]
                .as_str()
                .unwrap_or("")
                .contains("cannot count 13"),
            "{picky:#?}"
        );
        let poison_id = picky["fault_event_id"]
            .as_str()
            .ok_or("no fault event id")?
            .to_owned();
        let active = build(&builds, "rebuilt", 1);
        assert_eq!(state_and_stage(active), ("running", "active"));
        assert!(number(&active["position"]) >= head, "{active:#?}");
        let building = build(&builds, "rebuilt", 2);
        assert_eq!(state_and_stage(building), ("rebuilding", "building"));
        assert_eq!(building["position"], 0, "held at its first event");
        assert_eq!(building["lag_events"], 14, "{building:#?}");

        // The same in the table.
        let rows = table(&strata(&url, &["projections", "status"]).await?);
        assert_eq!(rows.len(), 4, "{rows:#?}");
        let steady = row(&rows, "steady", 1);
        assert_eq!((&*steady["STATE"], &*steady["STAGE"]), ("running", "active"));
        assert_eq!(steady["HEAD"], head.to_string());
        assert!(steady["POSITION"].parse::<u64>()? >= head, "{steady:?}");
        assert_eq!(steady["LAG"], "0");
        assert_eq!(steady["OWNER"], owner);
        assert!(steady["LEASE"].starts_with("current"), "{steady:?}");
        assert_eq!(steady["ERROR"], "-");
        let picky = row(&rows, "picky", 1);
        assert_eq!(picky["STATE"], "faulted");
        assert_eq!(picky["LAG"], "5");
        assert_eq!(
            picky["ERROR"],
            format!("at event {poison_id}: cannot count 13"),
            "{picky:?}"
        );
        assert_eq!(row(&rows, "rebuilt", 1)["STATE"], "running");
        let building = row(&rows, "rebuilt", 2);
        assert_eq!(
            (&*building["STATE"], &*building["STAGE"]),
            ("rebuilding", "building")
        );
        assert_eq!(building["POSITION"], "0");
        // One projection's status alone.
        let rows = table(&strata(&url, &["projections", "status", "picky"]).await?);
        assert_eq!(rows.len(), 1, "{rows:#?}");

        // Skipping another event is refused; skipping this one lets it go on.
        let other = Uuid::now_v7().to_string();
        let err = strata_fails(&url, &["projections", "skip", "picky", "--event", &other]).await?;
        assert_eq!(
            err,
            format!("error: projection `picky` is not faulted at event {other}\n")
        );
        let said = strata(&url, &["projections", "skip", "picky", "--event", &poison_id]).await?;
        assert_eq!(
            said,
            format!("skip of event {poison_id} requested for projection `picky`\n")
        );
        postgres::wait_for(store.pool(), "picky", head, WAIT).await?;
        let picky = wait_for_status(&url, |b| build(b, "picky", 1)["lag_events"] == 0).await?;
        let picky = build(&picky, "picky", 1);
        assert_eq!(picky["state"], "running");
        assert!(number(&picky["position"]) >= head, "{picky:#?}");
        assert_eq!(picky["fault_event_id"], Value::Null);
        let skipped: Vec<(Uuid, i64)> = sqlx::query_as(
            "SELECT event_id, global_position FROM strata.projection_skips WHERE name = 'picky'",
        )
        .fetch_all(store.pool())
        .await?;
        assert_eq!(skipped, [(poison_id.parse::<Uuid>()?, poison_position as i64)]);
        let steady = counts(store.pool(), "steady").await?;
        let mut expected = steady.clone();
        expected[1].1 -= 1;
        assert_eq!(
            counts(store.pool(), "picky").await?,
            expected,
            "all but the skipped event"
        );

        // Released, the new build catches up and replaces the active one.
        gate.closed.store(false, Ordering::SeqCst);
        let builds = wait_for_status(&url, |b| {
            let rebuilt: Vec<_> = b.iter().filter(|b| b["name"] == "rebuilt").collect();
            rebuilt.len() == 1 && rebuilt[0]["generation"] == 2 && rebuilt[0]["stage"] == "active"
        })
        .await?;
        let rebuilt = build(&builds, "rebuilt", 2);
        assert_eq!(rebuilt["state"], "running");
        assert!(number(&rebuilt["position"]) >= head, "{rebuilt:#?}");
        assert_eq!(rebuilt["events_applied"], 14);
        assert_eq!(counts(store.pool(), "rebuilt").await?, steady, "the full model");
        let rows = table(&strata(&url, &["projections", "status", "rebuilt"]).await?);
        assert_eq!(rows.len(), 1, "{rows:#?}");
        assert_eq!(
            (&*rows[0]["GEN"], &*rows[0]["STATE"], &*rows[0]["STAGE"]),
            ("2", "running", "active")
        );
        Ok::<_, BoxError>(())
    }
    .await;
    gate.closed.store(false, Ordering::SeqCst);
    stop.send(()).ok();
    task.await??;
    checked
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_resume_and_reset_through_the_binary_and_unknown_names_fail() -> Result<(), BoxError> {
    let (url, db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    let missing = strata_fails(&url, &["projections", "status", "counts"]).await?;
    assert_eq!(missing, "error: no projection named `counts`\n");
    for id in ["a", "b"] {
        add(&store, id, 1).await?;
    }
    let head = add(&store, "a", 1).await?;
    let daemon = PgDaemon::new(store.clone())
        .with_options(options())
        .register(Counts::new("counts"))?;
    let (stop, task) = spawn_daemon(daemon);
    let checked = async {
        postgres::wait_for(store.pool(), "counts", head, WAIT).await?;
        assert_eq!(strata(&url, &["projections", "list"]).await?, "counts\n");

        let said = strata(&url, &["projections", "pause", "counts"]).await?;
        assert!(said.starts_with("pause requested for projection `counts`"), "{said}");
        let builds = status_json(&url).await?;
        assert_eq!(build(&builds, "counts", 1)["state"], "paused");
        let rows = table(&strata(&url, &["projections", "status"]).await?);
        assert_eq!(row(&rows, "counts", 1)["STATE"], "paused");
        // Paused, it applies nothing.
        let head = add(&store, "b", 1).await?;
        let held = postgres::wait_for(store.pool(), "counts", head, Duration::from_millis(500)).await;
        assert!(matches!(held, Err(ProjectionError::Timeout { .. })), "{held:?}");
        assert_eq!(build(&status_json(&url).await?, "counts", 1)["lag_events"], 1);

        let said = strata(&url, &["projections", "resume", "counts"]).await?;
        assert_eq!(said, "resume requested for projection `counts`\n");
        postgres::wait_for(store.pool(), "counts", head, WAIT).await?;
        let builds = status_json(&url).await?;
        let counts_build = build(&builds, "counts", 1);
        assert_eq!(counts_build["state"], "running");
        assert_eq!(counts_build["lag_events"], 0);
        let full = vec![("counter-a".to_owned(), 2), ("counter-b".to_owned(), 2)];
        assert_eq!(counts(store.pool(), "counts").await?, full);

        // A read model damaged behind the runner's back is built again in
        // place by a reset.
        sqlx::query("DELETE FROM counts.counts")
            .execute(store.pool())
            .await?;
        let said = strata(&url, &["projections", "reset", "counts"]).await?;
        assert!(said.starts_with("reset requested for projection `counts`"), "{said}");
        let started = Instant::now();
        while counts(store.pool(), "counts").await? != full {
            assert!(started.elapsed() < WAIT, "the reset did not rebuild the model");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let builds = status_json(&url).await?;
        assert_eq!(builds.len(), 1, "in place: {builds:#?}");
        assert_eq!(build(&builds, "counts", 1)["events_applied"], 4);

        // Wrong names and ids: one line each, exit status 1.
        let uuid = Uuid::now_v7().to_string();
        for command in ["pause", "resume", "reset", "rebuild", "status"] {
            let err = strata_fails(&url, &["projections", command, "nothing"]).await?;
            assert_eq!(err, "error: no projection named `nothing`\n", "{command}");
        }
        let err = strata_fails(&url, &["projections", "skip", "nothing", "--event", &uuid]).await?;
        assert_eq!(err, "error: no projection named `nothing`\n");
        let err = strata_fails(&url, &["projections", "pause", "Not-A-Name"]).await?;
        assert_eq!(
            err,
            "error: invalid projection name `Not-A-Name`: a projection name must start with a lower-case ASCII letter\n"
        );
        let err = strata_fails(&url, &["projections", "skip", "counts", "--event", "nope"]).await?;
        assert!(err.starts_with("error: invalid value 'nope' for '--event <ID>'"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        let err = strata_fails(&url, &["projections", "skip", "counts"]).await?;
        assert!(err.contains("--event <ID>"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        // Without a subcommand: the subcommands in one line, or, when
        // nothing at all was given, the help.
        let err = strata_fails(&url, &["projections"]).await?;
        assert_eq!(
            err,
            "error: 'strata projections' requires a subcommand but one was not provided \
             [subcommands: list, status, pause, resume, reset, rebuild, skip, help]\n"
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_strata"))
            .arg("projections")
            .env_remove("DATABASE_URL")
            .output()?;
        let help = String::from_utf8(out.stderr)?;
        assert!(!out.status.success());
        assert!(help.contains("Usage: strata projections") && help.contains("rebuild"), "{help}");
        let unmigrated = url.replace(&db, "postgres");
        let err = strata_fails(&unmigrated, &["projections", "list"]).await?;
        assert!(err.ends_with("run `strata migrate`\n"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        Ok::<_, BoxError>(())
    }
    .await;
    stop.send(()).ok();
    task.await??;
    checked
}
