//! Builds of a PostgreSQL projection: a new version built beside the
//! active one while writers go on, readers switched over in one step; a
//! rebuild request; an in-place reset.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::*;
use sqlx::PgPool;
use strata_core::error::BoxError;
use strata_projections::postgres::{self, PgDaemon, ProjectionStatus};
use strata_projections::{ProjectionError, RunnerOptions};
use strata_store_postgres::testing::fresh_database;

/// Every build of `name` that is not retired.
async fn builds(pool: &PgPool, name: &str) -> Result<Vec<ProjectionStatus>, BoxError> {
    Ok(postgres::status(pool, Some(name)).await?)
}

/// Wait until the builds of `name` satisfy `done`.
async fn wait_for_builds(
    pool: &PgPool,
    name: &str,
    done: impl Fn(&[ProjectionStatus]) -> bool,
) -> Result<Vec<ProjectionStatus>, BoxError> {
    let started = Instant::now();
    loop {
        let now = builds(pool, name).await?;
        if done(&now) {
            return Ok(now);
        }
        if started.elapsed() > Duration::from_secs(30) {
            return Err(format!("gave up waiting; builds {now:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The model matches the store: every counter stream counted once per
/// event it holds.
async fn assert_matches_store(pool: &PgPool, name: &str) -> Result<(), BoxError> {
    let expected: Vec<(String, i64, i64)> = sqlx::query_as(
        "SELECT stream_id, count(*), max(stream_version) FROM strata.events
         WHERE category = 'counter' GROUP BY stream_id ORDER BY stream_id",
    )
    .fetch_all(pool)
    .await?;
    assert_eq!(counts(pool, name).await?, expected);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_version_is_built_under_load_and_readers_switch_in_one_step() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let head = append(&store, 20, 100, 1).await?;
    let v1 = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts::new("model"))?;
    let (stop_v1, v1_task) = spawn_daemon(v1);
    postgres::wait_for(store.pool(), "model", head, Duration::from_secs(20)).await?;

    // Writers keep appending to every stream.
    let writing = Arc::new(AtomicBool::new(true));
    let writer = tokio::spawn({
        let (store, writing) = (store.clone(), writing.clone());
        async move {
            let mut last = 0;
            while writing.load(Ordering::SeqCst) {
                last = append(&store, 20, 1, 1).await?;
            }
            Ok::<u64, BoxError>(last)
        }
    });
    // A reader polls the model through the readers' views: it must never
    // see it empty, partial (a stream counted off its version), or going
    // back in time (fewer events than before).
    let reading = Arc::new(AtomicBool::new(true));
    let polls = Arc::new(AtomicU64::new(0));
    let reader = tokio::spawn({
        let (pool, reading, polls) = (store.pool().clone(), reading.clone(), polls.clone());
        async move {
            let mut seen = 0;
            while reading.load(Ordering::SeqCst) {
                let (streams, total, consistent): (i64, i64, Option<bool>) = sqlx::query_as(
                    "SELECT count(*), coalesce(sum(n), 0)::int8, bool_and(n = last_version) FROM model.counts",
                )
                .fetch_one(&pool)
                .await?;
                if streams != 20 || consistent != Some(true) || total < seen {
                    return Err::<(), BoxError>(
                        format!("a reader saw {streams} streams, {total} events (after {seen}), consistent: {consistent:?}")
                            .into(),
                    );
                }
                seen = total;
                polls.fetch_add(1, Ordering::SeqCst);
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            Ok(())
        }
    });

    // Version 2 is built beside version 1, which keeps serving.
    let v2 = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts {
            version: 2,
            ..Counts::new("model")
        })?;
    let (stop_v2, v2_task) = spawn_daemon(v2);
    let during = wait_for_builds(store.pool(), "model", |b| {
        b.len() == 2 && b[1].stage == "building" && b[1].position > 0
    })
    .await?;
    assert_eq!(
        (
            during[0].version,
            during[0].stage.as_str(),
            during[1].state.as_str()
        ),
        (1, "active", "rebuilding"),
        "{during:?}"
    );
    let polls_during = polls.load(Ordering::SeqCst);
    let after = wait_for_builds(store.pool(), "model", |b| b.len() == 1 && b[0].version == 2).await?;
    assert_eq!(after[0].stage, "active");
    assert!(
        polls.load(Ordering::SeqCst) > polls_during,
        "the reader kept reading"
    );

    writing.store(false, Ordering::SeqCst);
    let head = writer.await??;
    postgres::wait_for(store.pool(), "model", head, Duration::from_secs(20)).await?;
    reading.store(false, Ordering::SeqCst);
    reader.await??;
    assert_matches_store(store.pool(), "model").await?;
    let old_schema: i64 = sqlx::query_scalar("SELECT count(*) FROM pg_namespace WHERE nspname = 'model__g1'")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(old_schema, 0, "the retired build's schema is dropped");

    stop_v1.send(()).ok();
    stop_v2.send(()).ok();
    v1_task.await??;
    v2_task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuild_request_builds_again_and_a_reset_empties_in_place() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let head = append(&store, 5, 10, 1).await?;
    let projection = Counts::new("again");
    let calls = projection.calls.clone();
    let daemon = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(projection)?;
    let (stop, task) = spawn_daemon(daemon);
    postgres::wait_for(store.pool(), "again", head, Duration::from_secs(20)).await?;
    assert_eq!(calls.load(Ordering::SeqCst), 50);

    // A rebuild: a second generation of the same version, from 0.
    postgres::rebuild(store.pool(), "again").await?;
    let rebuilt = wait_for_builds(store.pool(), "again", |b| b.len() == 1 && b[0].generation == 2).await?;
    assert_eq!((rebuilt[0].version, rebuilt[0].events_applied), (1, 50));
    assert_eq!(calls.load(Ordering::SeqCst), 100, "every event applied again");
    assert_matches_store(store.pool(), "again").await?;

    // A reset: the same generation, emptied and refilled.
    postgres::reset(store.pool(), "again").await?;
    let head = append(&store, 5, 1, 1).await?;
    postgres::wait_for(store.pool(), "again", head, Duration::from_secs(20)).await?;
    let reset = builds(store.pool(), "again").await?;
    assert_eq!(
        (reset[0].generation, reset[0].events_applied),
        (2, 55),
        "{reset:?}"
    );
    assert_eq!(calls.load(Ordering::SeqCst), 155);
    assert_matches_store(store.pool(), "again").await?;

    let missing = postgres::rebuild(store.pool(), "nothing").await;
    assert!(
        matches!(missing, Err(ProjectionError::NotFound(_))),
        "{missing:?}"
    );
    stop.send(()).ok();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_old_version_leaves_a_newer_active_one_alone() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let head = append(&store, 2, 3, 1).await?;
    let v2 = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts {
            version: 2,
            ..Counts::new("ahead")
        })?;
    let (stop_v2, v2_task) = spawn_daemon(v2);
    postgres::wait_for(store.pool(), "ahead", head, Duration::from_secs(20)).await?;

    // A daemon still on version 1 (a rolling deploy) builds nothing.
    let old = Counts::new("ahead");
    let old_calls = old.calls.clone();
    let v1 = PgDaemon::new(store.clone())
        .with_options(RunnerOptions {
            lease: Duration::from_millis(300),
            ..fast_options()
        })
        .register(old)?;
    let (stop_v1, v1_task) = spawn_daemon(v1);
    let head = append(&store, 2, 1, 1).await?;
    postgres::wait_for(store.pool(), "ahead", head, Duration::from_secs(20)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let now = builds(store.pool(), "ahead").await?;
    assert_eq!(
        (now.len(), now[0].version, now[0].generation),
        (1, 2, 1),
        "{now:?}"
    );
    assert_eq!(old_calls.load(Ordering::SeqCst), 0);
    assert_matches_store(store.pool(), "ahead").await?;

    stop_v1.send(()).ok();
    stop_v2.send(()).ok();
    v1_task.await??;
    v2_task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_build_does_not_take_over_while_the_active_one_is_ahead() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let head = append(&store, 2, 5, 1).await?;
    let v1 = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts::new("ahead_of"))?;
    let (stop_v1, v1_task) = spawn_daemon(v1);
    postgres::wait_for(store.pool(), "ahead_of", head, Duration::from_secs(20)).await?;
    stop_v1.send(()).ok();
    v1_task.await??;
    // As if the active build had applied events that a new build has not
    // read yet: about 100 transactions ahead (a position is the writing
    // transaction's id << 20, and the runners' own writes move it on).
    let ahead: i64 = sqlx::query_scalar(
        "UPDATE strata.projections SET position = position + (100::int8 << 20)
         WHERE name = 'ahead_of' RETURNING position",
    )
    .fetch_one(store.pool())
    .await?;

    let v2 = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts {
            version: 2,
            ..Counts::new("ahead_of")
        })?;
    let (stop_v2, v2_task) = spawn_daemon(v2);
    // The new build serves readers only from a position at or past the
    // active one's.
    let started = Instant::now();
    let mut held = 0;
    loop {
        let now = builds(store.pool(), "ahead_of").await?;
        let v2 = now.iter().find(|b| b.version == 2);
        if let Some(v2) = v2 {
            if v2.stage == "active" {
                assert!(v2.position >= ahead as u64, "readers went back: {now:?}");
                break;
            }
            held += 1;
        }
        assert!(started.elapsed() < Duration::from_secs(30), "no switch: {now:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(held > 0, "the new build was seen building");
    let head = append(&store, 2, 1, 1).await?;
    postgres::wait_for(store.pool(), "ahead_of", head, Duration::from_secs(20)).await?;
    assert_matches_store(store.pool(), "ahead_of").await?;
    stop_v2.send(()).ok();
    v2_task.await??;
    Ok(())
}
