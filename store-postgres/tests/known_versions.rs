//! Appends at a version the store has seen committed skip reading the
//! stream's version; they must still refuse every version they would have
//! refused with it.

use serde_json::json;
use sqlx::Connection;
use strata_core::error::BoxError;
use strata_core::{AppendResult, Error, EventStore, ExpectedVersion, Result, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{fresh_database_url, new_event};

/// Append one event to `stream`, expecting `expected`.
async fn add_one(store: &PgEventStore, stream: &StreamId, expected: ExpectedVersion) -> Result<AppendResult> {
    store
        .append(stream, expected, vec![new_event("Added", json!({}))])
        .await
}

#[tokio::test]
async fn a_version_taken_by_another_store_is_a_conflict() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let (ours, theirs) = (
        PgEventStore::connect(&url).await?,
        PgEventStore::connect(&url).await?,
    );
    let stream = StreamId::new("cart-1")?;
    for v in 0..2 {
        add_one(&ours, &stream, ExpectedVersion::Exact(v)).await?;
    }
    add_one(&theirs, &stream, ExpectedVersion::Exact(2)).await?;
    // `ours` knows version 2 is committed, not that 3 is taken.
    let err = add_one(&ours, &stream, ExpectedVersion::Exact(2))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: ExpectedVersion::Exact(2),
                actual: 3,
                ..
            }
        ),
        "{err:?}"
    );
    let err = add_one(&ours, &stream, ExpectedVersion::NoStream)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Conflict { actual: 3, .. }), "{err:?}");
    // A version it has not seen itself is read, and admitted.
    let appended = add_one(&ours, &stream, ExpectedVersion::Exact(3)).await?;
    assert_eq!(appended.stream_version, 4);
    let versions: Vec<u64> = ours
        .read_stream(&stream, 1, 10)
        .await?
        .iter()
        .map(|e| e.stream_version)
        .collect();
    assert_eq!(versions, [1, 2, 3, 4]);
    Ok(())
}

#[tokio::test]
async fn a_table_created_anew_is_noticed_and_no_gap_is_written() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let store = PgEventStore::connect(&url).await?;
    let stream = StreamId::new("cart-2")?;
    for v in 0..3 {
        add_one(&store, &stream, ExpectedVersion::Exact(v)).await?;
    }
    // Reset the schema under the running store, as a test suite might.
    let mut admin = sqlx::PgConnection::connect(&url).await?;
    sqlx::query("DROP SCHEMA strata CASCADE")
        .execute(&mut admin)
        .await?;
    sqlx::query("DELETE FROM _sqlx_migrations")
        .execute(&mut admin)
        .await?;
    store.migrate().await?;

    // The store saw version 3 committed, but in the old table: appending
    // after it now would leave versions 1 to 3 missing.
    let err = add_one(&store, &stream, ExpectedVersion::Exact(3))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            Error::Conflict {
                expected: ExpectedVersion::Exact(3),
                actual: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(store.read_stream(&stream, 1, 10).await?.is_empty());
    let appended = add_one(&store, &stream, ExpectedVersion::Exact(0)).await?;
    assert_eq!(appended.stream_version, 1);
    Ok(())
}
