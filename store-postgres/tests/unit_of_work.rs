//! Units of work: strata's append and the caller's own writes commit or
//! roll back together, with the append's usual checks.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use strata_core::error::BoxError;
use strata_core::testing::contract::read_all_settled;
use strata_core::testing::fixtures::bank::{BankAccount, BankCommand};
use strata_core::{CommandContext, CommandHandler, Error, EventStore, ExpectedVersion, StreamId};
use strata_store_postgres::testing::{fresh_database, fresh_database_with, new_event};
use strata_store_postgres::{PgEventStore, UnitAppend};
use uuid::Uuid;

async fn with_inbox() -> Result<PgEventStore, BoxError> {
    let (store, _db) = fresh_database().await?;
    sqlx::query("CREATE TABLE inbox (message_id uuid PRIMARY KEY)")
        .execute(store.pool())
        .await?;
    Ok(store)
}

async fn inbox_count(store: &PgEventStore) -> Result<i64, BoxError> {
    Ok(sqlx::query_scalar("SELECT count(*) FROM inbox")
        .fetch_one(store.pool())
        .await?)
}

/// The unit's append, which must have appended.
fn appended(outcome: UnitAppend) -> strata_store_postgres::AppendedUnit {
    match outcome {
        UnitAppend::Appended(unit) => unit,
        other => panic!("expected an append, got {other:?}"),
    }
}

#[tokio::test]
async fn events_and_the_callers_writes_commit_or_roll_back_together() -> Result<(), BoxError> {
    let store = with_inbox().await?;
    let stream = StreamId::new("order-1")?;
    let batch = vec![new_event("Placed", json!({"sku": "a"}))];

    // Rolled back (here: dropped): neither the events nor the inbox row.
    let mut unit = appended(
        store
            .begin()
            .await?
            .append(&stream, ExpectedVersion::NoStream, batch.clone())
            .await?,
    );
    sqlx::query("INSERT INTO inbox VALUES ($1)")
        .bind(Uuid::now_v7())
        .execute(unit.connection())
        .await?;
    drop(unit);
    assert_eq!(store.stream_version(&stream).await?, 0);
    assert_eq!(inbox_count(&store).await?, 0);

    // Committed: both.
    let mut unit = appended(
        store
            .begin()
            .await?
            .append(&stream, ExpectedVersion::NoStream, batch.clone())
            .await?,
    );
    assert_eq!(unit.result().stream_version, 1);
    sqlx::query("INSERT INTO inbox VALUES ($1)")
        .bind(Uuid::now_v7())
        .execute(unit.connection())
        .await?;
    let result = unit.commit().await?;
    assert_eq!(store.stream_version(&stream).await?, 1);
    assert_eq!(inbox_count(&store).await?, 1);
    let log = read_all_settled(&store, 1).await?;
    assert_eq!(log[0].global_position, result.positions[0]);

    // The same batch again: already stored, nothing written.
    match store
        .begin()
        .await?
        .append(&stream, ExpectedVersion::NoStream, batch)
        .await?
    {
        UnitAppend::AlreadyStored(original) => assert_eq!(original, result),
        other => panic!("expected the original outcome, got {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_unit_conflicts_as_an_append_does() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let stream = StreamId::new("order-2")?;
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event("Placed", json!(1))],
        )
        .await?;
    // A stale expectation.
    let err = store
        .begin()
        .await?
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event("Placed", json!(2))],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 1, .. }), "{err:?}");

    // A concurrent writer takes the version while the unit is open.
    let racing = store.begin().await?;
    let unit = appended(
        store
            .begin()
            .await?
            .append(
                &stream,
                ExpectedVersion::Exact(1),
                vec![new_event("Paid", json!(1))],
            )
            .await?,
    );
    let rival = tokio::spawn(async move {
        racing
            .append(
                &stream,
                ExpectedVersion::Exact(1),
                vec![new_event("Paid", json!(2))],
            )
            .await
    });
    tokio::time::sleep(Duration::from_millis(200)).await;
    unit.commit().await?;
    let err = rival.await?.unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 2, .. }), "{err:?}");

    // A refused batch stores nothing.
    let stream = StreamId::new("order-3")?;
    let mut bad = new_event("Deep", json!(1));
    bad.event_type.clear();
    let err = store
        .begin()
        .await?
        .append(&stream, ExpectedVersion::Any, vec![bad])
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidEventType { .. }), "{err:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_open_unit_holds_readers_back_and_is_not_skipped() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| o.poll_interval(Duration::from_millis(50))).await?;
    let mut feed = store.subscribe(0);
    let early = StreamId::new("early")?;
    let unit = appended(
        store
            .begin()
            .await?
            .append(&early, ExpectedVersion::NoStream, vec![new_event("A", json!(1))])
            .await?,
    );
    // A later append commits first; readers must not pass the open unit.
    let late = StreamId::new("late")?;
    store
        .append(&late, ExpectedVersion::NoStream, vec![new_event("B", json!(2))])
        .await?;
    assert!(
        tokio::time::timeout(Duration::from_millis(300), feed.next())
            .await
            .is_err(),
        "nothing may be read past the open unit"
    );
    unit.commit().await?;
    let mut order = Vec::new();
    for _ in 0..2 {
        let e = tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await?
            .ok_or("feed ended")??;
        order.push(e.stream_id.to_string());
    }
    assert_eq!(order, ["early", "late"]);
    Ok(())
}

#[tokio::test]
async fn a_command_decided_for_a_unit_commits_with_the_inbox_row() -> Result<(), BoxError> {
    let store = with_inbox().await?;
    let accounts = CommandHandler::<BankAccount, _>::new(store.clone());
    accounts
        .execute("acc", BankCommand::Open { owner: "ada".into() })
        .await?;
    let message = Uuid::now_v7();
    // A consumer handling message `message`: decide, then append with the
    // inbox row, in one unit. Twice, as after a redelivery.
    for delivery in 0..2 {
        let decided = accounts
            .decide(
                "acc",
                &BankCommand::Deposit { amount: 7 },
                CommandContext::with_id(message),
            )
            .await?;
        let outcome = store
            .begin()
            .await?
            .append(&decided.stream_id, decided.expected, decided.events)
            .await;
        match outcome {
            Ok(UnitAppend::Appended(mut unit)) => {
                assert_eq!(delivery, 0);
                sqlx::query("INSERT INTO inbox VALUES ($1)")
                    .bind(message)
                    .execute(unit.connection())
                    .await?;
                unit.commit().await?;
            }
            // The redelivery decides again, on the new state, but its
            // events' ids derive from the message id: already stored.
            Ok(UnitAppend::AlreadyStored(original)) => {
                assert_eq!(delivery, 1);
                assert_eq!(original.stream_version, 2);
            }
            other => panic!("delivery {delivery}: {other:?}"),
        }
    }
    assert_eq!(accounts.load("acc").await?.0.balance, 7);
    assert_eq!(inbox_count(&store).await?, 1);
    Ok(())
}
