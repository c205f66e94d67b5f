//! The `strata` operator binary against a fresh database.

use std::process::Command;

use serde_json::json;
use strata_core::error::BoxError;
use strata_core::{EventStore, ExpectedVersion, RecordedEvent, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{fresh_database_url, new_event};

fn strata(url: &str, args: &[&str]) -> Result<String, BoxError> {
    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(args)
        .env("DATABASE_URL", url)
        .output()?;
    if !out.status.success() {
        return Err(format!("strata {args:?} failed: {}", String::from_utf8_lossy(&out.stderr)).into());
    }
    Ok(String::from_utf8(out.stdout)?)
}

#[tokio::test]
async fn cli_migrates_then_prints_streams_tail_and_horizon() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    // Already migrated by the helper: migrating again is a no-op.
    strata(&url, &["migrate"])?;

    let store = PgEventStore::connect(&url).await?;
    let stream = StreamId::new("order-7")?;
    let batch = vec![
        new_event("Placed", json!({"sku": "a"})),
        new_event("Paid", json!({"eur": 5})),
    ];
    store.append(&stream, ExpectedVersion::NoStream, batch).await?;

    let lines = strata(
        &url,
        &["events", "stream", "--stream", "order-7", "--from-version", "2"],
    )?;
    let events: Vec<RecordedEvent> = lines
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    assert_eq!(events.len(), 1);
    assert_eq!(
        (events[0].event_type.as_str(), events[0].stream_version),
        ("Paid", 2)
    );

    let lines = strata(&url, &["events", "tail", "--from-position", "0"])?;
    assert_eq!(lines.lines().count(), 2);

    let horizon: serde_json::Value = serde_json::from_str(strata(&url, &["events", "horizon"])?.trim())?;
    assert!(horizon["readable_below"].as_u64().is_some());

    let out = Command::new(env!("CARGO_BIN_EXE_strata"))
        .args(["events", "stream", "--stream", "x", "--connect-timeout", "1"])
        .env("DATABASE_URL", "postgres://postgres@127.0.0.1:1/none")
        .output()?;
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("error: connection to the backend failed"));
    Ok(())
}
