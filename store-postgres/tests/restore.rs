//! Positions only grow, across a logical dump and restore into another
//! cluster: two throw-away servers (`DATABASE_URL`, `DATABASE_URL_2`; see
//! scripts/pg-ephemeral.sh), `pg_dump` from one, `pg_restore` into the
//! other.

use std::process::Command;
use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use strata_core::error::BoxError;
use strata_core::testing::contract::read_all_settled;
use strata_core::{Error, EventStore, ExpectedVersion, StreamId};
use strata_store_postgres::testing::{database_url, fresh_database_url, insert_row, new_event};
use strata_store_postgres::{PgEventStore, PgEventStoreOptions};

/// A PostgreSQL client program: from `PG_BINDIR` (set by
/// scripts/pg-ephemeral.sh), else from `PATH`.
fn pg_program(name: &str) -> String {
    match std::env::var("PG_BINDIR") {
        Ok(dir) => format!("{dir}/{name}"),
        Err(_) => name.to_owned(),
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), BoxError> {
    let out = Command::new(pg_program(program)).args(args).output()?;
    if !out.status.success() {
        return Err(format!("{program} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn positions_keep_growing_after_a_restore_into_another_cluster() -> Result<(), BoxError> {
    let second = std::env::var("DATABASE_URL_2")
        .map_err(|_| "DATABASE_URL_2 is not set: this test needs a second server; run scripts/test")?;
    let (url, db) = fresh_database_url().await?;
    let old = PgEventStore::connect(&url).await?;
    // The old cluster's transaction ids run well ahead of the new one's.
    sqlx::query(
        "CREATE PROCEDURE burn(n int) LANGUAGE plpgsql AS $$
         BEGIN FOR i IN 1..n LOOP PERFORM pg_current_xact_id(); COMMIT; END LOOP; END $$",
    )
    .execute(old.pool())
    .await?;
    sqlx::query("CALL burn(3000)").execute(old.pool()).await?;
    let stream = StreamId::new("order-1")?;
    for n in 0..3 {
        old.append(
            &stream,
            ExpectedVersion::Exact(n),
            vec![new_event("Placed", json!(n))],
        )
        .await?;
    }
    let before = read_all_settled(&old, 3).await?;
    let checkpoint = before.last().ok_or("no events")?.global_position;
    old.pool().close().await;

    // Dump, and restore into a database of the other cluster.
    let dump = std::env::temp_dir().join(format!("{db}.dump"));
    let dump = dump.to_str().ok_or("temp path")?;
    let plain_url = |server: &str| -> Result<String, BoxError> {
        let (base, _) = server.rsplit_once('/').ok_or("no database in the url")?;
        Ok(format!("{base}/{db}"))
    };
    run(
        "pg_dump",
        &["-Fc", "-f", dump, "-d", &plain_url(&database_url()?)?],
    )?;
    let admin = PgEventStore::connect(&second).await?;
    sqlx::query(&format!("CREATE DATABASE \"{db}\""))
        .execute(admin.pool())
        .await?;
    let restored_url = plain_url(&second)?;
    run("pg_restore", &["--no-owner", "-d", &restored_url, dump])?;
    let _ = std::fs::remove_file(dump);

    let new = PgEventStore::connect(&restored_url).await?;
    // Before the log base is raised, appending is refused.
    let err = new
        .append(
            &stream,
            ExpectedVersion::Exact(3),
            vec![new_event("Placed", json!(3))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Configuration(_)), "{err:?}");
    assert!(err.to_string().contains("run `strata migrate`"), "{err}");

    new.migrate().await?;
    // A reader resuming from the restored checkpoint sees what comes next.
    let mut feed = new.subscribe(checkpoint);
    let appended = new
        .append(
            &stream,
            ExpectedVersion::Exact(3),
            vec![new_event("Placed", json!(3))],
        )
        .await?;
    assert!(
        appended.positions[0] > checkpoint,
        "{appended:?} is not above {checkpoint}"
    );
    let next = tokio::time::timeout(Duration::from_secs(20), feed.next())
        .await
        .map_err(|_| "the new event never reached the resumed reader")?
        .ok_or("feed ended")??;
    assert_eq!(next.stream_version, 4);
    let all = read_all_settled(&new, 4).await?;
    assert_eq!(all.len(), 4, "the restored log and the new event, from 0");
    assert!(
        all.windows(2)
            .all(|w| w[0].global_position < w[1].global_position)
    );
    Ok(())
}

/// The log base is folded into the statements a store prepares (migration
/// 0007): once raised, statements prepared before must use the new base,
/// on the store's own connections, for appends and for readers' horizon.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_raised_log_base_reaches_statements_prepared_before() -> Result<(), BoxError> {
    let (url, _) = fresh_database_url().await?;
    let store = PgEventStoreOptions::new(url.clone())
        .max_connections(4)
        .connect()
        .await?;
    let stream = StreamId::new("order-1")?;
    // More than five runs of each statement: PostgreSQL then keeps a
    // generic plan of it.
    for n in 0..8 {
        store
            .append(
                &stream,
                ExpectedVersion::Exact(n),
                vec![new_event("Placed", json!(n))],
            )
            .await?;
        read_all_settled(&store, n as usize + 1).await?;
    }
    // A row far above what this cluster's transaction ids give, as a
    // restore from a cluster with a busier past leaves; then the base is
    // raised above it, from a connection of its own.
    let xid: i64 = sqlx::query_scalar("SELECT pg_current_xact_id()::text::bigint")
        .fetch_one(store.pool())
        .await?;
    let high = ((xid + 1_000_000) << 20) | 1;
    insert_row(&store, high, "restored-1", 1, r#"{"n": 1}"#, "{}").await?;
    let admin = sqlx::PgPool::connect(&url).await?;
    let base: i64 = sqlx::query_scalar("SELECT strata.raise_log_base()")
        .fetch_one(&admin)
        .await?;
    assert!(base > 0, "the base was not raised");

    let appended = store
        .append(
            &stream,
            ExpectedVersion::Exact(8),
            vec![new_event("Placed", json!(8))],
        )
        .await?;
    assert!(
        appended.positions[0] as i64 > high,
        "position {} is not above the restored {high}: a statement kept the old base",
        appended.positions[0]
    );
    let all = read_all_settled(&store, 10).await?;
    assert_eq!(
        all.len(),
        10,
        "the first appends, the restored row, the last append"
    );
    assert_eq!(all[9].global_position, appended.positions[0]);
    Ok(())
}
