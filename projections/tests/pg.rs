//! The PostgreSQL projection daemon against a real server: catch-up and
//! live, exactly-once effect with two daemons and a takeover, fencing of a
//! runner that lost its lease, a poison event parked and skipped.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use strata_core::error::BoxError;
use strata_core::testing::fixtures::counter::added;
use strata_core::{EventStore, ExpectedVersion, Metadata, NewEvent, StreamId};
use strata_projections::postgres::{self, PgDaemon};
use strata_projections::{ProjectionError, RunnerOptions};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::fresh_database;
use tokio::sync::{Notify, oneshot};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_catches_up_then_follows_live() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    append(&store, 10, 50, 1).await?;
    let daemon = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts::new("counts"))?;
    let (stop, task) = spawn_daemon(daemon);

    let head = append(&store, 10, 1, 1).await?;
    postgres::wait_for(store.pool(), "counts", head, Duration::from_secs(20)).await?;
    assert_exact(store.pool(), "counts", 10, 51).await?;

    // Live: one more append, read back through the projection.
    let head = append(&store, 10, 1, 1).await?;
    postgres::wait_for(store.pool(), "counts", head, Duration::from_secs(20)).await?;
    assert_exact(store.pool(), "counts", 10, 52).await?;

    let status = postgres::status(store.pool(), Some("counts")).await?;
    assert_eq!(status.len(), 1);
    assert_eq!(
        (status[0].state.as_str(), status[0].stage.as_str()),
        ("running", "active")
    );
    assert_eq!(
        status[0].events_applied, 520,
        "only the counter category is applied"
    );
    assert!(
        status[0].position >= head && status[0].lag_events == 0,
        "{status:?}"
    );

    stop.send(()).ok();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_daemons_apply_every_event_once_and_the_second_takes_over() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    append(&store, 8, 40, 1).await?;
    let first = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts::new("shared"))?;
    let second = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts::new("shared"))?;
    let first_owner = first.owner().to_owned();
    let (stop_first, first_task) = spawn_daemon(first);
    let (stop_second, second_task) = spawn_daemon(second);

    let head = append(&store, 8, 10, 1).await?;
    postgres::wait_for(store.pool(), "shared", head, Duration::from_secs(20)).await?;
    assert_exact(store.pool(), "shared", 8, 50).await?;
    let leader = postgres::status(store.pool(), Some("shared")).await?[0]
        .owner
        .clone();

    // The leader dies without handing its lease back: the other daemon
    // takes over once the lease runs out, from the checkpoint.
    let (leader_task, other_stop, other_task) = if leader.as_deref() == Some(first_owner.as_str()) {
        (first_task, stop_second, second_task)
    } else {
        (second_task, stop_first, first_task)
    };
    leader_task.abort();
    let head = append(&store, 8, 10, 1).await?;
    postgres::wait_for(store.pool(), "shared", head, Duration::from_secs(20)).await?;
    assert_exact(store.pool(), "shared", 8, 60).await?;
    let now = postgres::status(store.pool(), Some("shared")).await?;
    assert!(now[0].owner.is_some() && now[0].owner != leader, "{now:?}");

    other_stop.send(()).ok();
    other_task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_that_lost_its_lease_cannot_commit() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    append(&store, 1, 1, 1).await?;
    let gate = Arc::new(Gate {
        entered: Notify::new(),
        release: Notify::new(),
    });
    let zombie_projection = Counts {
        gate: Some(gate.clone()),
        ..Counts::new("fenced")
    };
    let zombie = PgDaemon::new(store.clone())
        .with_options(RunnerOptions {
            lease: Duration::from_secs(30),
            ..fast_options()
        })
        .register(zombie_projection)?;
    let (stop_zombie, zombie_task) = spawn_daemon(zombie);

    // The zombie holds a batch, inside `apply`; its lease runs out (made to,
    // here) and another daemon takes over and applies the event.
    tokio::time::timeout(Duration::from_secs(20), gate.entered.notified()).await?;
    sqlx::query("UPDATE strata.projections SET lease_until = clock_timestamp() - interval '1 second' WHERE name = 'fenced'")
        .execute(store.pool())
        .await?;
    let successor = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts::new("fenced"))?;
    let successor_owner = successor.owner().to_owned();
    let (stop_successor, successor_task) = spawn_daemon(successor);
    let head = append(&store, 1, 1, 1).await?;
    postgres::wait_for(store.pool(), "fenced", head, Duration::from_secs(20)).await?;
    assert_exact(store.pool(), "fenced", 1, 2).await?;

    // The zombie's batch now goes on, and its commit is refused.
    gate.release.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_exact(store.pool(), "fenced", 1, 2).await?;
    let status = postgres::status(store.pool(), Some("fenced")).await?;
    assert_eq!(status[0].owner.as_deref(), Some(successor_owner.as_str()));

    stop_zombie.send(()).ok();
    stop_successor.send(()).ok();
    zombie_task.await??;
    successor_task.await??;
    Ok(())
}

/// A daemon holding a batch (inside `apply`) with a gated projection.
async fn gated_daemon(
    store: &PgEventStore,
    name: &'static str,
) -> Result<
    (
        Arc<Gate>,
        oneshot::Sender<()>,
        tokio::task::JoinHandle<Result<(), ProjectionError>>,
    ),
    BoxError,
> {
    let gate = Arc::new(Gate {
        entered: Notify::new(),
        release: Notify::new(),
    });
    let daemon = PgDaemon::new(store.clone())
        .with_options(RunnerOptions {
            lease: Duration::from_secs(30),
            ..fast_options()
        })
        .register(Counts {
            gate: Some(gate.clone()),
            ..Counts::new(name)
        })?;
    let (stop, task) = spawn_daemon(daemon);
    tokio::time::timeout(Duration::from_secs(20), gate.entered.notified()).await?;
    Ok((gate, stop, task))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_runner_whose_lease_was_taken_cannot_commit_even_before_its_successor_does() -> Result<(), BoxError>
{
    let (store, _db) = fresh_database().await?;
    append(&store, 1, 1, 1).await?;
    let (gate, stop, task) = gated_daemon(&store, "taken").await?;
    // Another daemon takes the lease (as `acquire` does) but has not
    // committed anything: the position is still the zombie's.
    sqlx::query(
        "UPDATE strata.projections SET owner = 'another', token = token + 1,
             lease_until = clock_timestamp() + interval '1 minute'
         WHERE name = 'taken'",
    )
    .execute(store.pool())
    .await?;
    gate.release.notify_one();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        counts(store.pool(), "taken").await?.is_empty(),
        "the zombie's batch committed"
    );
    // (The position may have moved past nothing before the batch: the
    // horizon is the whole server's, and other tests' transactions hold it.)
    let status = postgres::status(store.pool(), Some("taken")).await?;
    assert_eq!(
        (status[0].events_applied, status[0].owner.as_deref()),
        (0, Some("another"))
    );
    stop.send(()).ok();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_whose_connection_is_killed_is_applied_once_later() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let head = append(&store, 1, 3, 1).await?;
    let (gate, stop, task) = gated_daemon(&store, "killed").await?;
    // The batch's transaction is open on its connection: kill it.
    let killed: Vec<bool> = sqlx::query_scalar(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity
         WHERE datname = current_database() AND state LIKE 'idle in transaction%' AND pid <> pg_backend_pid()",
    )
    .fetch_all(store.pool())
    .await?;
    assert_eq!(killed, [true], "one batch transaction was open");
    // Let this try and every later one through.
    let released = tokio::spawn({
        let gate = gate.clone();
        async move {
            loop {
                gate.release.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    postgres::wait_for(store.pool(), "killed", head, Duration::from_secs(20)).await?;
    assert_exact(store.pool(), "killed", 1, 3).await?;
    released.abort();
    stop.send(()).ok();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_parks_its_projection_alone_until_skipped() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    append(&store, 3, 5, 1).await?;
    let poisoned = store
        .append(
            &StreamId::for_aggregate("counter", "1")?,
            ExpectedVersion::Any,
            vec![NewEvent::from_event(&added(13), Metadata::default())?],
        )
        .await?
        .positions[0];
    let head = append(&store, 3, 5, 1).await?;
    let daemon = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts {
            poison: Some(13),
            ..Counts::new("picky")
        })?
        .register(Counts::new("tolerant"))?;
    let (stop, task) = spawn_daemon(daemon);

    // The other projection reaches the head.
    postgres::wait_for(store.pool(), "tolerant", head, Duration::from_secs(20)).await?;
    // This one parks at the poison event, with everything before it applied.
    let status = wait_until(store.pool(), "picky", |s| s.state == "faulted").await?;
    let poison_id = status.fault_event_id.expect("the event is named");
    assert_eq!(status.fault_position, Some(poisoned));
    assert!(status.position < poisoned, "{status:?}");
    assert!(
        status
            .last_error
            .as_deref()
            .unwrap_or("")
            .contains("cannot count 13"),
        "{status:?}"
    );
    let stuck = postgres::wait_for(store.pool(), "picky", head, Duration::from_millis(300)).await;
    assert!(matches!(stuck, Err(ProjectionError::Timeout { .. })), "{stuck:?}");

    // Skipping another event is refused; skipping this one lets it go on.
    let wrong = postgres::skip(store.pool(), "picky", uuid::Uuid::now_v7()).await;
    assert!(
        matches!(wrong, Err(ProjectionError::NotFaultedAt { .. })),
        "{wrong:?}"
    );
    postgres::skip(store.pool(), "picky", poison_id).await?;
    postgres::wait_for(store.pool(), "picky", head, Duration::from_secs(20)).await?;
    let picky = counts(store.pool(), "picky").await?;
    let tolerant = counts(store.pool(), "tolerant").await?;
    let picky_1 = picky.iter().find(|r| r.0 == "counter-1").expect("stream 1");
    let tolerant_1 = tolerant.iter().find(|r| r.0 == "counter-1").expect("stream 1");
    assert_eq!(picky_1.1 + 1, tolerant_1.1, "only the skipped event is missing");
    let skipped: Vec<uuid::Uuid> =
        sqlx::query_scalar("SELECT event_id FROM strata.projection_skips WHERE name = 'picky'")
            .fetch_all(store.pool())
            .await?;
    assert_eq!(skipped, [poison_id]);

    stop.send(()).ok();
    task.await??;
    Ok(())
}
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_projection_applies_nothing_until_resumed() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let head = append(&store, 2, 2, 1).await?;
    let daemon = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts::new("paused"))?;
    let (stop, task) = spawn_daemon(daemon);
    postgres::wait_for(store.pool(), "paused", head, Duration::from_secs(20)).await?;

    postgres::pause(store.pool(), "paused").await?;
    wait_until(store.pool(), "paused", |s| s.state == "paused").await?;
    let head = append(&store, 2, 1, 1).await?;
    let held = postgres::wait_for(store.pool(), "paused", head, Duration::from_millis(400)).await;
    assert!(matches!(held, Err(ProjectionError::Timeout { .. })), "{held:?}");
    assert_exact(store.pool(), "paused", 2, 2).await?;

    postgres::resume(store.pool(), "paused").await?;
    postgres::wait_for(store.pool(), "paused", head, Duration::from_secs(20)).await?;
    assert_exact(store.pool(), "paused", 2, 3).await?;
    let missing = postgres::pause(store.pool(), "nothing").await;
    assert!(
        matches!(missing, Err(ProjectionError::NotFound(_))),
        "{missing:?}"
    );

    stop.send(()).ok();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_slower_than_the_lease_still_commits() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let head = append(&store, 2, 30, 1).await?;
    // 60 events of 10 ms each in one batch: twice the lease.
    let daemon = PgDaemon::new(store.clone())
        .with_options(RunnerOptions {
            lease: Duration::from_millis(300),
            ..fast_options()
        })
        .register(Counts {
            pause: Some(Duration::from_millis(10)),
            ..Counts::new("slow")
        })?;
    let (stop, task) = spawn_daemon(daemon);
    postgres::wait_for(store.pool(), "slow", head, Duration::from_secs(20)).await?;
    assert_exact(store.pool(), "slow", 2, 30).await?;
    stop.send(()).ok();
    task.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_finishes_the_batch_in_flight_and_hands_the_lease_back() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    append(&store, 1, 5, 1).await?;
    let (gate, stop, task) = gated_daemon(&store, "stopping").await?;
    // Told to stop while inside its first batch.
    stop.send(()).ok();
    let released = tokio::spawn({
        let gate = gate.clone();
        async move {
            loop {
                gate.release.notify_one();
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(20), task).await???;
    released.abort();
    assert_exact(store.pool(), "stopping", 1, 5).await?;
    let status = postgres::status(store.pool(), Some("stopping")).await?;
    assert!(
        status[0].events_applied == 5 && status[0].lag_events == 0,
        "{status:?}"
    );
    assert_eq!(
        (status[0].owner.as_deref(), status[0].lease_current),
        (None, false)
    );
    Ok(())
}

/// A projection whose tables cannot be created.
struct Unready;

impl strata_projections::Projection for Unready {
    type Event = strata_core::testing::fixtures::counter::CounterEvent;

    fn name(&self) -> &str {
        "unready"
    }
}

#[async_trait::async_trait]
impl strata_projections::postgres::PgProjection for Unready {
    async fn setup(&self, tx: &mut sqlx::PgConnection) -> Result<(), BoxError> {
        sqlx::query("CREATE TABLE t (x no_such_type)").execute(tx).await?;
        Ok(())
    }

    async fn apply(
        &self,
        _: &mut sqlx::PgConnection,
        _: &strata_core::Envelope<strata_core::testing::fixtures::counter::CounterEvent>,
    ) -> Result<(), BoxError> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_projection_whose_setup_fails_ends_the_run_with_a_typed_error() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let daemon = PgDaemon::new(store.clone())
        .with_options(fast_options())
        .register(Counts::new("fine"))?
        .register(Unready)?;
    let ended = tokio::time::timeout(Duration::from_secs(20), daemon.run(std::future::pending())).await?;
    match ended {
        Err(ProjectionError::Setup { name, source }) => {
            assert_eq!(name, "unready");
            assert!(source.to_string().contains("no_such_type"), "{source}");
        }
        other => panic!("{other:?}"),
    }
    let names = postgres::names(store.pool()).await?;
    assert_eq!(names, ["fine"], "nothing of the failed setup is stored");
    Ok(())
}
