//! Crash consistency: a daemon in a child process is killed with SIGKILL
//! at random moments while it catches up on 20,000 events (28,000 by the end)
//! and restarted each time; at the end its read model equals a clean
//! replay of the same events into a fresh database, row for row.

mod common;

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use sqlx::PgPool;
use strata_core::error::BoxError;
use strata_projections::RunnerOptions;
use strata_projections::postgres::{self, PgDaemon};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::fresh_database_url;

/// Where the child finds its database.
const CHILD_URL: &str = "STRATA_CRASH_TEST_DATABASE_URL";

fn options() -> RunnerOptions {
    RunnerOptions {
        batch_size: 200,
        max_wait: Duration::from_millis(50),
        max_attempts: 3,
        retry_backoff: Duration::from_millis(20),
        // Short, so that each new child takes over soon after a kill.
        lease: Duration::from_millis(500),
    }
}

/// The daemon the crash test runs as its child process (this test binary,
/// run again with this test selected); it runs until killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "the child process of the crash test, which runs it"]
async fn crash_child_daemon() -> Result<(), BoxError> {
    let url =
        std::env::var(CHILD_URL).map_err(|_| format!("{CHILD_URL} is not set: the crash test runs this"))?;
    let store = PgEventStore::connect(&url).await?;
    PgDaemon::new(store)
        .with_options(options())
        .register(Counts::new("crash"))?
        .run(std::future::pending())
        .await?;
    Ok(())
}

/// A child process, killed when dropped (so a failing test leaves none).
struct Daemon(Child);

impl Daemon {
    fn start(url: &str) -> Result<Self, BoxError> {
        let child = Command::new(std::env::current_exe()?)
            .args(["--exact", "crash_child_daemon", "--ignored", "--test-threads=1"])
            .env(CHILD_URL, url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        Ok(Daemon(child))
    }

    /// SIGKILL; it must still have been running.
    fn kill(mut self) -> Result<(), BoxError> {
        if let Some(status) = self.0.try_wait()? {
            return Err(format!("the daemon had exited by itself: {status}").into());
        }
        self.0.kill()?;
        self.0.wait()?;
        Ok(())
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn random_below(n: u64) -> u64 {
    RandomState::new().build_hasher().finish() % n
}

/// The same events, in the same order, to both stores; the last position
/// of each.
async fn append_both(
    a: &PgEventStore,
    b: &PgEventStore,
    streams: usize,
    per_stream: usize,
) -> Result<(u64, u64), BoxError> {
    Ok((
        append(a, streams, per_stream, 1).await?,
        append(b, streams, per_stream, 1).await?,
    ))
}

async fn position(pool: &PgPool) -> Result<u64, BoxError> {
    Ok(postgres::status(pool, Some("crash"))
        .await?
        .first()
        .map_or(0, |s| s.position))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_daemon_killed_at_random_moments_leaves_the_model_equal_to_a_clean_replay() -> Result<(), BoxError>
{
    init_tracing();
    let (url, _db) = fresh_database_url().await?;
    let (clean_url, _clean_db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    let clean = PgEventStore::connect(&clean_url).await?;
    // 20,000 counter events in 100 streams to catch up on.
    let (mut head, mut clean_head) = append_both(&store, &clean, 100, 200).await?;

    let mut kills = 0;
    let mut moments = Vec::new();
    while kills < 24 {
        let daemon = Daemon::start(&url)?;
        // The previous child's lease runs out first (500 ms); then a random
        // moment of work.
        tokio::time::sleep(Duration::from_millis(400 + random_below(800))).await;
        daemon.kill()?;
        kills += 1;
        moments.push(position(store.pool()).await?);
        eprintln!("kill {kills}: position {} head {head}", moments.last().unwrap());
        // More events now and then, so there is always work to be killed in.
        if kills % 3 == 0 {
            (head, clean_head) = append_both(&store, &clean, 100, 10).await?;
        }
    }
    let during = moments.iter().filter(|p| **p > 0 && **p < head).count();
    assert!(
        during >= 10,
        "most kills must land while catching up; positions at the kills: {moments:?}, head {head}"
    );

    // A last run to the head, then a clean replay of the same events.
    let daemon = Daemon::start(&url)?;
    postgres::wait_for(store.pool(), "crash", head, Duration::from_secs(120)).await?;
    daemon.kill()?;
    let replay = PgDaemon::new(clean.clone())
        .with_options(options())
        .register(Counts::new("crash"))?;
    let (stop, task) = spawn_daemon(replay);
    postgres::wait_for(clean.pool(), "crash", clean_head, Duration::from_secs(120)).await?;
    stop.send(()).ok();
    task.await??;

    let killed = counts(store.pool(), "crash").await?;
    let replayed = counts(clean.pool(), "crash").await?;
    assert_eq!(replayed.len(), 100);
    let differing: Vec<_> = killed.iter().zip(&replayed).filter(|(k, r)| k != r).collect();
    assert!(
        killed.len() == replayed.len() && differing.is_empty(),
        "row for row, (killed, replayed): {differing:?}"
    );
    for (stream, n, last_version) in &killed {
        assert_eq!(n, last_version, "{stream}: applied once each");
    }
    let applied = |pool: PgPool| async move {
        Ok::<u64, BoxError>(postgres::status(&pool, Some("crash")).await?[0].events_applied)
    };
    assert_eq!(applied(store.pool().clone()).await?, 20_000 + 8 * 100 * 10);
    assert_eq!(applied(clean.pool().clone()).await?, 20_000 + 8 * 100 * 10);
    Ok(())
}
