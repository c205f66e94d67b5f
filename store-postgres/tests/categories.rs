//! Stream categories are stored with each event; events stored before
//! there was a category column get one from the migration.

use std::borrow::Cow;

use serde_json::json;
use sqlx::migrate::Migrator;
use strata_core::error::BoxError;
use strata_core::testing::contract::read_all_settled;
use strata_core::{EventStore, ExpectedVersion, LogFilter, StreamId};
use strata_store_postgres::testing::{empty_database_url, fresh_database, new_event};
use strata_store_postgres::{MIGRATOR, PgEventStore};

#[tokio::test]
async fn events_stored_before_categories_get_one_from_the_migration() -> Result<(), BoxError> {
    let (url, _db) = empty_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    // The schema as it was before migration 0004.
    let before = Migrator {
        migrations: Cow::Owned(
            MIGRATOR
                .migrations
                .iter()
                .filter(|m| m.version < 4)
                .cloned()
                .collect(),
        ),
        ..Migrator::DEFAULT
    };
    before.run(store.pool()).await?;
    for (position, stream) in [(1i64, "order-line-1"), (2, "invoice"), (3, "-odd")] {
        sqlx::query(
            "INSERT INTO strata.events
                 (global_position, stream_id, stream_version, event_id, event_type, schema_version, payload)
             VALUES ($1, $2, 1, $3, 'Old', 1, '{}')",
        )
        .bind(position)
        .bind(stream)
        .bind(uuid::Uuid::now_v7())
        .execute(store.pool())
        .await?;
    }
    store.migrate().await?;
    let categories: Vec<String> =
        sqlx::query_scalar("SELECT category FROM strata.events ORDER BY global_position")
            .fetch_all(store.pool())
            .await?;
    assert_eq!(categories, ["order", "invoice", "-odd"]);

    // And new events carry theirs, read back exactly.
    let line = StreamId::for_aggregate("order-line", "2")?;
    store
        .append(&line, ExpectedVersion::NoStream, vec![new_event("New", json!(1))])
        .await?;
    let log = read_all_settled(&store, 4).await?;
    let read: Vec<&str> = log.iter().map(|e| e.stream_id.category()).collect();
    assert_eq!(read, ["order", "invoice", "-odd", "order-line"]);
    let page = store
        .read_all_filtered(0, 10, &LogFilter::categories(["order"]))
        .await?;
    assert_eq!(
        page.events.len(),
        1,
        "only the legacy order event: {:?}",
        page.events
    );
    Ok(())
}

/// A filtered read stops below a transaction that is still open, as
/// `read_all` does: an event committed after it is neither returned nor
/// passed over, and is read once the older transaction ends.
#[tokio::test]
async fn a_filtered_read_stops_below_an_open_older_transaction() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let orders = LogFilter::categories(["order"]);
    let first = store
        .append(
            &StreamId::for_aggregate("order", "1")?,
            ExpectedVersion::NoStream,
            vec![new_event("Placed", json!(1))],
        )
        .await?
        .positions[0];

    let mut older = store.pool().begin().await?;
    sqlx::query("SELECT pg_current_xact_id()")
        .execute(&mut *older)
        .await?;
    let second = store
        .append(
            &StreamId::for_aggregate("order", "2")?,
            ExpectedVersion::NoStream,
            vec![new_event("Placed", json!(2))],
        )
        .await?
        .positions[0];

    for max_count in [1, 100] {
        let page = store.read_all_filtered(0, max_count, &orders).await?;
        let read: Vec<u64> = page.events.iter().map(|e| e.global_position).collect();
        assert_eq!(read, [first], "page of {max_count}");
        assert!(
            page.scanned_to < second,
            "page of {max_count}: examined up to {}, past the held-back event at {second}",
            page.scanned_to
        );
        let again = store
            .read_all_filtered(page.scanned_to, max_count, &orders)
            .await?;
        assert!(again.events.is_empty(), "page of {max_count}: {:?}", again.events);
        assert!(again.scanned_to < second, "page of {max_count}");
    }

    older.rollback().await?;
    let page = store.read_all_filtered(first, 100, &orders).await?;
    let read: Vec<u64> = page.events.iter().map(|e| e.global_position).collect();
    assert_eq!(read, [second]);
    assert!(page.reached_end && page.scanned_to >= second);
    Ok(())
}
