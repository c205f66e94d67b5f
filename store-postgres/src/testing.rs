//! Test support (feature `testing`): a fresh database per test, and an
//! append inside a caller-held transaction.
//!
//! Every function reads the server to use from the `DATABASE_URL`
//! environment variable and fails with a clear message when it is unset,
//! so a test suite without a database fails instead of passing silently.

use std::str::FromStr;

use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions, Connection, PgConnection};
use strata_core::error::BoxError;
use strata_core::{AppendResult, ExpectedVersion, Metadata, NewEvent, Result, StreamId};

use crate::options::PgEventStoreOptions;
use crate::store::PgEventStore;

/// The value of `DATABASE_URL`, or an error saying how to get a server.
pub fn database_url() -> Result<String, BoxError> {
    std::env::var("DATABASE_URL").map_err(|_| {
        "DATABASE_URL is not set: these tests need PostgreSQL; run `scripts/test`, or source \
         scripts/pg-ephemeral.sh and call pg_ephemeral_start first"
            .into()
    })
}

/// Create a uniquely named, empty database on the `DATABASE_URL` server
/// and return its URL and name.
pub async fn empty_database_url() -> Result<(String, String), BoxError> {
    let admin_url = database_url()?;
    let name = format!("strata_test_{}", uuid::Uuid::now_v7().simple());
    let mut admin = PgConnection::connect(&admin_url).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&mut admin)
        .await?;
    admin.close().await?;
    let url = PgConnectOptions::from_str(&admin_url)?
        .database(&name)
        .to_url_lossy()
        .to_string();
    Ok((url, name))
}

/// Create a uniquely named, migrated database on the `DATABASE_URL` server
/// and return its URL and name.
pub async fn fresh_database_url() -> Result<(String, String), BoxError> {
    let (url, name) = empty_database_url().await?;
    let store = PgEventStoreOptions::new(url.clone())
        .max_connections(1)
        .connect()
        .await?;
    store.migrate().await?;
    store.pool().close().await;
    Ok((url, name))
}

/// A store on a fresh, migrated database (see [`fresh_database_url`]),
/// and the database's name.
pub async fn fresh_database() -> Result<(PgEventStore, String), BoxError> {
    fresh_database_with(|options| options).await
}

/// Like [`fresh_database`], with options adjusted by `tune` (pool size,
/// poll interval, ...).
pub async fn fresh_database_with(
    tune: impl FnOnce(PgEventStoreOptions) -> PgEventStoreOptions,
) -> Result<(PgEventStore, String), BoxError> {
    let (url, name) = fresh_database_url().await?;
    let store = tune(PgEventStoreOptions::new(url)).connect().await?;
    Ok((store, name))
}

/// Append with the store's own statement inside a transaction the caller
/// holds (begun with `BEGIN`, not yet committed), so a test can delay the
/// commit or roll back. No retry and no idempotency handling: a rejected
/// expected version is [`strata_core::Error::Conflict`], a unique violation
/// a backend error (and the transaction must be rolled back).
///
/// It must be the transaction's first write, or it is refused.
pub async fn append_in(
    conn: &mut PgConnection,
    stream: &StreamId,
    expected: ExpectedVersion,
    events: Vec<NewEvent>,
) -> Result<AppendResult> {
    crate::store::append_in(conn, stream, expected, events).await
}

/// Drop the constraint that keeps some unreadable rows out of
/// `strata.events` (migration 0003), so a test can store rows as something
/// other than strata could have before it: legacy rows that readers must
/// report and go past.
pub async fn drop_row_check(store: &PgEventStore) -> Result<(), BoxError> {
    sqlx::query("ALTER TABLE strata.events DROP CONSTRAINT events_row_readable")
        .execute(store.pool())
        .await?;
    Ok(())
}

/// Insert one row into `strata.events` by hand, as another writer would:
/// version 1 of `stream` (in the category before its first `-`), at
/// `position`, with `payload` and `metadata` given as JSON text. Returns
/// the event id.
pub async fn insert_row(
    store: &PgEventStore,
    position: i64,
    stream: &str,
    schema_version: i32,
    payload: &str,
    metadata: &str,
) -> Result<uuid::Uuid, sqlx::Error> {
    let id = uuid::Uuid::now_v7();
    sqlx::query(
        "INSERT INTO strata.events
             (global_position, stream_id, stream_version, event_id, event_type, schema_version, payload, metadata,
              category)
         VALUES ($1, $2, 1, $3, 'Odd', $4, $5::jsonb, $6::jsonb, split_part($2, '-', 1))",
    )
    .bind(position)
    .bind(stream)
    .bind(id)
    .bind(schema_version)
    .bind(payload)
    .bind(metadata)
    .execute(store.pool())
    .await?;
    Ok(id)
}

/// Wait (up to 20 s) until the `LISTEN` connection of `store`'s
/// subscriptions is up, then poll `feed` for 300 ms, so that it takes the
/// wake-up that follows and is left waiting: from then on only a
/// notification (or the poll interval) wakes it. Fails if `feed` delivers
/// anything meanwhile.
pub async fn wait_until_listening(
    store: &PgEventStore,
    feed: &mut strata_core::Subscription,
) -> Result<(), BoxError> {
    use futures_util::StreamExt;
    use std::time::Duration;
    for _ in 0..400 {
        let listening: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM pg_stat_activity
             WHERE datname = current_database() AND query ILIKE 'LISTEN%'",
        )
        .fetch_one(store.pool())
        .await?;
        if listening > 0 {
            return match tokio::time::timeout(Duration::from_millis(300), feed.next()).await {
                Err(_) => Ok(()),
                Ok(item) => Err(format!("the feed was expected to wait, it delivered {item:?}").into()),
            };
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("no LISTEN connection within 20 s".into())
}

/// An event of type `event_type` with a fresh id, schema version 1 and
/// empty metadata.
pub fn new_event(event_type: &str, payload: serde_json::Value) -> NewEvent {
    NewEvent {
        event_id: uuid::Uuid::now_v7(),
        event_type: event_type.to_owned(),
        schema_version: 1,
        payload,
        metadata: Metadata::default(),
    }
}
