//! Stream categories are stored with each event; events stored before
//! there was a category column get one from the migration.

use std::borrow::Cow;

use serde_json::json;
use sqlx::migrate::Migrator;
use strata_core::error::BoxError;
use strata_core::testing::contract::read_all_settled;
use strata_core::{EventStore, ExpectedVersion, LogFilter, StreamId};
use strata_store_postgres::testing::{empty_database_url, new_event};
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
