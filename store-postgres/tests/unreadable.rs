//! Rows no reader could read back: the schema refuses them, and where old
//! rows hold them, every global-log reader names the row and goes on.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use strata_core::error::BoxError;
use strata_core::event::MAX_JSON_DEPTH;
use strata_core::testing::contract::{nested_payload, read_all_settled};
use strata_core::testing::fixtures::bank::{BankAccount, BankCommand};
use strata_core::{CommandHandler, Error, EventStore, ExpectedVersion, StreamId};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{
    drop_row_check, fresh_database, fresh_database_with, insert_row, new_event,
};

/// Positions below any strata hands out (transaction id << 20), so below
/// the horizon, in order.
fn position(n: i64) -> i64 {
    n
}

/// Rows another writer could store, none of which a strata reader can
/// read: what makes it so, schema version, payload, metadata, and whether
/// the schema refuses it (else only readers can catch it).
fn bad_rows() -> Vec<(&'static str, i32, String, &'static str, bool)> {
    let deep = nested_payload(200).to_string();
    vec![
        ("metadata not an object", 1, "{}".into(), "[1]", false),
        ("negative schema version", -1, "{}".into(), "{}", true),
        ("empty stream id", 1, "{}".into(), "{}", true),
        ("control character in the stream id", 1, "{}".into(), "{}", false),
        (
            "wrong metadata field",
            1,
            "{}".into(),
            r#"{"correlation_id": 5}"#,
            false,
        ),
        ("huge number", 1, "[1e400]".into(), "{}", false),
        ("deep payload", 1, deep, "{}", false),
    ]
}

fn stream_of(what: &str, n: i64) -> String {
    match what {
        "empty stream id" => String::new(),
        "control character in the stream id" => "ctl\u{1}".to_owned(),
        _ => format!("bad-{n}"),
    }
}

#[tokio::test]
async fn the_schema_refuses_unreadable_rows_where_a_check_is_cheap() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    for (n, (what, schema_version, payload, metadata, refused)) in bad_rows().into_iter().enumerate() {
        let n = n as i64 + 1;
        let inserted = insert_row(
            &store,
            position(n),
            &stream_of(what, n),
            schema_version,
            &payload,
            metadata,
        )
        .await;
        match inserted {
            Err(err) if refused => {
                let db = err.as_database_error().ok_or(what)?;
                assert_eq!(db.code().as_deref(), Some("23514"), "{what}: {db}");
            }
            Ok(_) if !refused => {}
            other => panic!("{what}: {other:?}"),
        }
    }
    insert_row(
        &store,
        position(100),
        "fine",
        1,
        "{}",
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
    drop_row_check(&store).await?;
    // good, bad, good, bad, ... good: every bad row between two good ones.
    let mut expected = Vec::new();
    let mut n = 0;
    let good = |n: &mut i64| {
        *n += 1;
        let at = position(*n);
        (at, format!("good-{n}"))
    };
    for (what, schema_version, payload, metadata, _) in bad_rows() {
        let (at, stream) = good(&mut n);
        let id = insert_row(&store, at, &stream, 1, "{}", "{}").await?;
        expected.push(Ok(id));
        n += 1;
        let id = insert_row(
            &store,
            position(n),
            &stream_of(what, n),
            schema_version,
            &payload,
            metadata,
        )
        .await?;
        expected.push(Err((id, position(n) as u64)));
    }
    let (at, stream) = good(&mut n);
    expected.push(Ok(insert_row(&store, at, &stream, 1, "{}", "{}").await?));
    // Appended by strata after them all: still reachable.
    let tail = StreamId::new("after")?;
    let tail_position = store
        .append(
            &tail,
            ExpectedVersion::NoStream,
            vec![new_event("Fine", json!(1))],
        )
        .await?
        .positions[0];
    // Wait until it is below the horizon, which a transaction of another
    // test on the same server can hold back for a while.
    let started = std::time::Instant::now();
    while store.read_all(tail_position - 1, 1).await?.is_empty() {
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "the appended event never became readable"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

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

#[tokio::test]
async fn an_unreadable_row_in_a_stream_fails_its_load_naming_the_event() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    drop_row_check(&store).await?;
    let id = insert_row(&store, position(1), "account-1", 1, "[1e400]", "{}").await?;
    let handler = CommandHandler::<BankAccount, PgEventStore>::new(store.clone());
    let err = handler.load("1").await.unwrap_err();
    assert!(
        matches!(err, Error::UndecodableEvent { event_id, .. } if event_id == id),
        "{err:?}"
    );
    let message = handler
        .execute("1", BankCommand::Deposit { amount: 1 })
        .await
        .unwrap_err()
        .to_string();
    assert!(
        message.contains(&id.to_string()) && message.contains("number out of range"),
        "{message}"
    );
    Ok(())
}
