//! Rows no reader could read back: the schema refuses them, and where old
//! rows hold them, every global-log reader names the row and goes on.

use std::time::Duration;

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::json;
use strata_core::error::BoxError;
use strata_core::event::MAX_JSON_DEPTH;
use strata_core::testing::contract::{nested_payload, read_all_settled};
use strata_core::{Aggregate, CommandHandler, Error, Event, EventStore, ExpectedVersion, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{
    drop_row_checks, fresh_database, fresh_database_with, insert_row, new_event,
};

/// Positions below any strata hands out (transaction id << 20), so below
/// the horizon, in order.
fn position(n: i64) -> i64 {
    n
}

/// Rows other writers could store before migration 0003, each of which no
/// strata reader can read, with what makes it so.
fn bad_rows() -> Vec<(&'static str, i32, String, &'static str)> {
    let deep = nested_payload(200).to_string();
    vec![
        ("wrong metadata", 1, "{}".into(), r#"{"correlation_id": 5}"#),
        ("huge number", 1, "[1e400]".into(), "{}"),
        ("negative schema version", -1, "{}".into(), "{}"),
        ("bad stream id", 1, "{}".into(), "{}"),
        ("deep payload", 1, deep, "{}"),
    ]
}

#[tokio::test]
async fn the_schema_refuses_rows_no_reader_could_read() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    for (n, (what, schema_version, payload, metadata)) in bad_rows().into_iter().enumerate() {
        let stream = if what == "bad stream id" {
            "ctl\u{1}".to_owned()
        } else {
            format!("s-{n}")
        };
        let err = insert_row(
            &store,
            position(n as i64),
            &stream,
            schema_version,
            &payload,
            metadata,
        )
        .await
        .expect_err(what);
        let db = err.as_database_error().ok_or(what)?;
        assert_eq!(db.code().as_deref(), Some("23514"), "{what}: {db}");
    }
    // Right at the limit is fine.
    let deepest = nested_payload(MAX_JSON_DEPTH).to_string();
    insert_row(
        &store,
        position(9),
        "s-9",
        1,
        &deepest,
        r#"{"headers": {"a": "b"}}"#,
    )
    .await?;
    Ok(())
}

#[tokio::test]
async fn an_event_too_deep_to_read_is_refused_at_append_and_nothing_is_stored() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let stream = StreamId::new("deep")?;
    let err = store
        .append(
            &stream,
            ExpectedVersion::Any,
            vec![
                new_event("Fine", json!(1)),
                new_event("Deep", nested_payload(128)),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(err, Error::PayloadTooDeep { depth: 128, .. }), "{err:?}");
    assert_eq!(store.stream_version(&stream).await?, 0);
    // The deepest accepted payload reads back on every path.
    let deepest = nested_payload(MAX_JSON_DEPTH);
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event("Deep", deepest.clone())],
        )
        .await?;
    assert_eq!(store.read_stream(&stream, 1, 10).await?[0].payload, deepest);
    assert_eq!(read_all_settled(&store, 1).await?[0].payload, deepest);
    let mut feed = store.subscribe(0);
    let delivered = tokio::time::timeout(Duration::from_secs(20), feed.next())
        .await?
        .ok_or("ended")??;
    assert_eq!(delivered.payload, deepest);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readers_of_the_log_name_each_unreadable_row_and_go_on_past_it() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| o.poll_interval(Duration::from_millis(100))).await?;
    drop_row_checks(&store).await?;
    // good, bad, good, bad, ... good: every bad row between two good ones.
    let mut expected = Vec::new();
    let mut n = 0;
    let good = |n: &mut i64| {
        *n += 1;
        let at = position(*n);
        (at, format!("good-{n}"))
    };
    for (what, schema_version, payload, metadata) in bad_rows() {
        let (at, stream) = good(&mut n);
        let id = insert_row(&store, at, &stream, 1, "{}", "{}").await?;
        expected.push(Ok(id));
        n += 1;
        let stream = if what == "bad stream id" {
            "ctl\u{1}".to_owned()
        } else {
            format!("bad-{n}")
        };
        let id = insert_row(&store, position(n), &stream, schema_version, &payload, metadata).await?;
        expected.push(Err((id, position(n) as u64)));
    }
    let (at, stream) = good(&mut n);
    expected.push(Ok(insert_row(&store, at, &stream, 1, "{}", "{}").await?));
    // Appended by strata after them all: still reachable.
    let tail = StreamId::new("after")?;
    store
        .append(
            &tail,
            ExpectedVersion::NoStream,
            vec![new_event("Fine", json!(1))],
        )
        .await?;
    read_all_settled(&store, 1).await?;

    // read_all: pages end before a bad row, which is then named; going on
    // after its position reaches everything behind it.
    let mut after = 0;
    let mut seen = Vec::new();
    loop {
        match store.read_all(after, 100).await {
            Ok(page) if page.is_empty() => break,
            Ok(page) => {
                for e in page {
                    after = e.global_position;
                    seen.push(Ok(e.event_id));
                }
            }
            Err(Error::UndecodableEvent {
                event_id,
                global_position,
                reason,
            }) => {
                assert!(!reason.to_string().is_empty());
                after = global_position;
                seen.push(Err((event_id, global_position)));
            }
            Err(e) => return Err(e.into()),
        }
    }
    let appended = seen.pop().ok_or("the appended event is missing")?;
    assert_eq!(seen, expected);

    // A subscription delivers the same sequence, then follows on.
    let mut feed = store.subscribe(0);
    let mut delivered = Vec::new();
    while delivered.len() < expected.len() + 1 {
        let item = tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await?
            .ok_or("ended")?;
        delivered.push(match item {
            Ok(e) => Ok(e.event_id),
            Err(Error::UndecodableEvent {
                event_id,
                global_position,
                ..
            }) => Err((event_id, global_position)),
            Err(e) => return Err(e.into()),
        });
    }
    assert_eq!(delivered.pop(), Some(appended));
    assert_eq!(delivered, expected);
    Ok(())
}

/// Counts `Odd` events.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Odds(u64);

#[derive(Debug, Clone, Serialize, Deserialize)]
enum OddEvent {
    Odd(serde_json::Value),
}

impl Event for OddEvent {
    fn event_type(&self) -> &'static str {
        "Odd"
    }
}

#[derive(Debug, Serialize, Deserialize, thiserror::Error)]
#[error("never")]
struct Never;

impl Aggregate for Odds {
    const TYPE: &'static str = "odds";
    type Command = ();
    type Event = OddEvent;
    type Error = Never;

    fn decide(&self, (): &()) -> Result<Vec<OddEvent>, Never> {
        Ok(vec![OddEvent::Odd(json!(self.0))])
    }

    fn apply(&mut self, _: &OddEvent) {
        self.0 += 1;
    }
}

#[tokio::test]
async fn an_unreadable_row_in_a_stream_fails_its_load_naming_the_event() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    drop_row_checks(&store).await?;
    let id = insert_row(&store, position(1), "odds-1", 1, "[1e400]", "{}").await?;
    let handler = CommandHandler::<Odds, PgEventStore>::new(store.clone());
    let err = handler.load("1").await.unwrap_err();
    assert!(
        matches!(err, Error::UndecodableEvent { event_id, .. } if event_id == id),
        "{err:?}"
    );
    let message = handler.execute("1", ()).await.unwrap_err().to_string();
    assert!(
        message.contains(&id.to_string()) && message.contains("number out of range"),
        "{message}"
    );
    Ok(())
}
