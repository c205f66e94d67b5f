//! Subscriptions are woken by the commit notification, not only by polling.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use strata_core::error::BoxError;
use strata_core::{EventStore, ExpectedVersion, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{fresh_database_with, new_event, wait_until_listening};

/// A store that polls only every 600 s (so only a notification, or the
/// store's own look-again, can wake its subscriptions in time), a second
/// store on the same database standing in for another process, and a
/// subscription of the first that has read `stream`'s first event, which
/// the writer appended.
async fn rarely_polling_subscription(
    stream: &StreamId,
) -> Result<(PgEventStore, PgEventStore, strata_core::Subscription), BoxError> {
    let (store, _db) = fresh_database_with(|o| o.poll_interval(Duration::from_secs(600))).await?;
    let writer = PgEventStore::from_pool(
        PgPoolOptions::new()
            .max_connections(2)
            .connect_with((*store.pool().connect_options()).clone())
            .await?,
    );
    writer
        .append(stream, ExpectedVersion::NoStream, vec![new_event("A", json!(1))])
        .await?;
    let mut feed = store.subscribe(0);
    let first = tokio::time::timeout(Duration::from_secs(20), feed.next())
        .await?
        .ok_or("feed ended")??;
    assert_eq!(first.stream_version, 1);
    Ok((store, writer, feed))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_is_woken_by_notify_long_before_the_poll_interval() -> Result<(), BoxError> {
    let stream = StreamId::new("notified")?;
    // Only the `NOTIFY` the other store sends can reach the listener.
    let (store, writer, mut feed) = rarely_polling_subscription(&stream).await?;

    // Caught up and waiting, with `LISTEN` in place: only a notification
    // can wake it in time. (A wake-up announcing a commit that the read
    // then does not find makes the subscription look again quickly, which
    // would find the event without any notification: `LISTEN` coming up
    // must not count as one.)
    wait_until_listening(&store, &mut feed).await?;
    let append = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        writer
            .append(&stream, ExpectedVersion::Exact(1), vec![new_event("A", json!(2))])
            .await
    });
    let second = tokio::time::timeout(Duration::from_secs(30), feed.next())
        .await
        .map_err(|_| "no notification woke the subscription")?
        .ok_or("feed ended")??;
    assert_eq!(second.stream_version, 2);
    append.await??;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscription_survives_the_loss_of_its_listener_connection() -> Result<(), BoxError> {
    let stream = StreamId::new("reconnect")?;
    // Only a re-established LISTEN can wake the subscription in time.
    let (_store, writer, mut feed) = rarely_polling_subscription(&stream).await?;

    // The listener connects in the background: wait for it, then kill it.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let killed = loop {
        let killed: i64 = sqlx::query_scalar(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(writer.pool())
        .await?;
        if killed > 0 || std::time::Instant::now() > deadline {
            break killed;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(killed, 1, "the subscription's LISTEN connection must be found");

    // Events appended right after the loss, and later, all arrive, once each.
    for version in 2..=4u64 {
        if version == 4 {
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        writer
            .append(
                &stream,
                ExpectedVersion::Exact(version - 1),
                vec![new_event("A", json!(version))],
            )
            .await?;
        let next = tokio::time::timeout(Duration::from_secs(30), feed.next())
            .await
            .map_err(|_| format!("event {version} not delivered after the listener was lost"))?
            .ok_or("feed ended")??;
        assert_eq!(next.stream_version, version);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn event_held_back_by_an_older_transaction_arrives_when_that_transaction_ends() -> Result<(), BoxError>
{
    let (store, _db) = fresh_database_with(|o| o.poll_interval(Duration::from_secs(600))).await?;
    let stream = StreamId::new("held-back")?;
    let mut feed = store.subscribe(0);

    // An older transaction takes a transaction id and stays open.
    let mut older = store.pool().begin().await?;
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await?;

    // The event commits and is announced, but is not readable yet.
    store
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("A", json!(1))])
        .await?;
    let early = tokio::time::timeout(Duration::from_millis(300), feed.next()).await;
    assert!(
        early.is_err(),
        "nothing may be read past an open older transaction"
    );

    // It ends, announced by nobody; the subscription must look again by itself.
    older.rollback().await?;
    let event = tokio::time::timeout(Duration::from_secs(10), feed.next())
        .await
        .map_err(|_| "the held-back event waited for the poll interval")?
        .ok_or("feed ended")??;
    assert_eq!(event.stream_version, 1);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_backs_off_while_reads_fail_then_resumes() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| o.poll_interval(Duration::from_millis(10))).await?;
    let stream = StreamId::new("backoff")?;
    store
        .append(&stream, ExpectedVersion::NoStream, vec![new_event("A", json!(1))])
        .await?;
    let mut feed = store.subscribe(0);
    tokio::time::timeout(Duration::from_secs(20), feed.next())
        .await?
        .ok_or("feed ended")??;

    // Every read fails while the table is away.
    sqlx::query("ALTER TABLE strata.events RENAME TO events_away")
        .execute(store.pool())
        .await?;
    let started = std::time::Instant::now();
    let mut errors = Vec::new();
    while started.elapsed() < Duration::from_millis(1500) {
        if let Ok(item) = tokio::time::timeout(Duration::from_millis(50), feed.next()).await {
            errors.push(item.ok_or("feed ended")?.expect_err("nothing to read"));
        }
    }
    // Read 10 ms apart, 1.5 s of failures would be about 150 errors; with
    // the pause doubling from 50 ms, a handful.
    assert!(
        (1..=8).contains(&errors.len()),
        "{} errors in 1.5 s",
        errors.len()
    );
    assert!(errors[0].to_string().contains("strata.events"), "{}", errors[0]);

    sqlx::query("ALTER TABLE strata.events_away RENAME TO events")
        .execute(store.pool())
        .await?;
    store
        .append(&stream, ExpectedVersion::Exact(1), vec![new_event("A", json!(2))])
        .await?;
    let next = loop {
        match tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await?
            .ok_or("feed ended")?
        {
            Ok(e) => break e,
            Err(_) => continue,
        }
    };
    assert_eq!(next.stream_version, 2, "nothing lost, nothing repeated");
    Ok(())
}
