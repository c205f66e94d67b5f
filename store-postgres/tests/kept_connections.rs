//! Appends run on connections the store keeps between statements, unchecked
//! (see the crate docs, "Connections"). A kept connection that is gone
//! must cost nothing but a retry on a fresh one, and closing the pool must
//! not wait for the kept ones.

use std::time::Duration;

use serde_json::json;
use sqlx::Connection;
use strata_core::error::BoxError;
use strata_core::{EventStore, ExpectedVersion, StreamId};
use strata_store_postgres::testing::{fresh_database_url, new_event};
use strata_store_postgres::{PgEventStore, PgEventStoreOptions};
use uuid::Uuid;

/// End every backend of the store's database but the caller's: the store's
/// kept and pooled connections alike. Returns how many were ended.
async fn terminate_all(url: &str) -> Result<i64, BoxError> {
    let mut admin = sqlx::PgConnection::connect(url).await?;
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
         WHERE datname = current_database() AND pid <> pg_backend_pid()",
    )
    .fetch_one(&mut admin)
    .await?;
    admin.close().await?;
    // The backends end asynchronously.
    tokio::time::sleep(Duration::from_millis(100)).await;
    Ok(ended)
}

async fn versions(store: &PgEventStore, stream: &StreamId) -> Result<Vec<u64>, BoxError> {
    let events = store.read_stream(stream, 1, usize::MAX).await?;
    Ok(events.iter().map(|e| e.stream_version).collect())
}

#[tokio::test]
async fn appends_go_on_after_their_connections_are_terminated() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStoreOptions::new(&url)
        .max_connections(4)
        .connect()
        .await?;
    let stream = StreamId::new("kept-1")?;
    let mut version = 0u64;
    // Each kind of append statement, each right after every connection of
    // the store was ended: a single event at a version the store knows,
    // one at a version it must read, a batch, and a command's append.
    for round in 0..4 {
        let ended = terminate_all(&url).await?;
        if round > 0 {
            assert!(
                ended >= 1,
                "round {round}: the kept connection must have been ended"
            );
        }
        let result = match round {
            0 | 1 => {
                let expected = match round {
                    0 => ExpectedVersion::Exact(version),
                    _ => ExpectedVersion::Any,
                };
                store
                    .append(&stream, expected, vec![new_event("A", json!(round))])
                    .await?
            }
            2 => {
                let events = vec![new_event("A", json!(2)), new_event("A", json!(3))];
                store
                    .append(&stream, ExpectedVersion::Exact(version), events)
                    .await?
            }
            _ => {
                store
                    .append_command(
                        &stream,
                        ExpectedVersion::Exact(version),
                        vec![new_event("A", json!(4))],
                        Uuid::now_v7(),
                    )
                    .await?
            }
        };
        version = result.stream_version;
    }
    assert_eq!(version, 5);
    assert_eq!(versions(&store, &stream).await?, (1..=5).collect::<Vec<_>>());
    Ok(())
}

#[tokio::test]
async fn kept_connections_close_with_the_pool() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStoreOptions::new(&url)
        .max_connections(4)
        .connect()
        .await?;
    let stream = StreamId::new("kept-2")?;
    for v in 0..3 {
        store
            .append(&stream, ExpectedVersion::Exact(v), vec![new_event("A", json!(v))])
            .await?;
    }
    // The store keeps a connection: the close must not wait for it.
    tokio::time::timeout(Duration::from_secs(10), store.pool().close())
        .await
        .map_err(|_| "closing the pool waits for the store's kept connection")?;
    // And the kept connection is not used any more.
    let refused = store
        .append(&stream, ExpectedVersion::Exact(3), vec![new_event("A", json!(3))])
        .await;
    assert!(
        matches!(refused, Err(strata_core::Error::Connection(_))),
        "an append on a closed pool: {refused:?}"
    );
    Ok(())
}

/// A unit of work runs on a kept connection too. One whose `COMMIT` fails
/// (a deferred unique constraint) or that is dropped uncommitted must not
/// leave its connection looking as if still in a transaction to the next
/// unit.
#[tokio::test]
async fn units_of_work_leave_their_connection_clean_however_they_end() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStoreOptions::new(&url)
        .max_connections(4)
        .connect()
        .await?;
    sqlx::query("CREATE TABLE inbox (id int, CONSTRAINT once UNIQUE (id) DEFERRABLE INITIALLY DEFERRED)")
        .execute(store.pool())
        .await?;
    let stream = StreamId::new("kept-3")?;
    let mut version = 0;
    for round in 0..6 {
        let unit = store
            .begin()
            .await?
            .append(
                &stream,
                ExpectedVersion::Exact(version),
                vec![new_event("A", json!(round))],
            )
            .await?;
        let strata_store_postgres::UnitAppend::Appended(mut unit) = unit else {
            panic!("round {round}: the events were new");
        };
        // The same id twice: refused only at COMMIT.
        let id = if round % 3 == 0 { 1000 + round } else { round };
        for _ in 0..(1 + usize::from(round % 3 == 0)) {
            sqlx::query("INSERT INTO inbox VALUES ($1)")
                .bind(id)
                .execute(unit.connection())
                .await?;
        }
        match round % 3 {
            0 => assert!(
                unit.commit().await.is_err(),
                "round {round}: the commit must fail"
            ),
            1 => drop(unit),
            _ => {
                unit.commit().await?;
                version += 1;
            }
        }
    }
    assert_eq!(
        versions(&store, &stream).await?,
        (1..=version).collect::<Vec<_>>()
    );
    let rows: i64 = sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(store.pool())
        .await?;
    assert_eq!(rows, 2, "the committed units' rows only");
    Ok(())
}

/// Reads and a unit of work's `BEGIN` are retried on a fresh connection
/// too.
#[tokio::test]
async fn reads_and_units_go_on_after_their_connections_are_terminated() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStoreOptions::new(&url)
        .max_connections(4)
        .connect()
        .await?;
    let stream = StreamId::new("kept-4")?;
    store
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("A", json!(1))])
        .await?;
    assert!(terminate_all(&url).await? >= 1);
    assert_eq!(versions(&store, &stream).await?, vec![1]);
    assert!(terminate_all(&url).await? >= 1);
    let unit = store
        .begin()
        .await?
        .append(&stream, ExpectedVersion::Exact(1), vec![new_event("A", json!(2))])
        .await?;
    let strata_store_postgres::UnitAppend::Appended(unit) = unit else {
        panic!("the event was new");
    };
    unit.commit().await?;
    assert_eq!(versions(&store, &stream).await?, vec![1, 2]);
    Ok(())
}
