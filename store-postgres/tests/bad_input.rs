//! Bad input gets a typed error, loses nothing and panics nowhere.

use serde::{Deserialize, Serialize};
use serde_json::json;
use strata_core::error::BoxError;
use strata_core::{Error, Event, EventStore, ExpectedVersion, StreamId, Upcasters};
use strata_store_postgres::PgEventStore;
use strata_store_postgres::testing::{fresh_database, fresh_database_with, new_event};

#[derive(Debug, Clone, Serialize, Deserialize, Event)]
enum AccountEvent {
    Opened { owner: String },
    Deposited { amount: u64 },
}

#[tokio::test]
async fn stored_payload_that_no_longer_decodes_is_a_serialization_error() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    sqlx::query(
        "INSERT INTO strata.events
             (global_position, stream_id, stream_version, event_id, event_type, schema_version, payload, metadata,
              category)
         VALUES (1, 'account-1', 1, $1, 'Deposited', 1, '{\"amount\": \"lots\"}', '{}', 'account')",
    )
    .bind(uuid::Uuid::now_v7())
    .execute(store.pool())
    .await?;
    let events = store.read_stream(&StreamId::new("account-1")?, 1, 10).await?;
    assert_eq!(events.len(), 1);
    let err = events[0].decode::<AccountEvent>(&Upcasters::new()).unwrap_err();
    assert!(
        matches!(err, Error::Serialization { op: "decode", .. }),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn unknown_event_type_is_a_typed_error() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let stream = StreamId::new("account-2")?;
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![new_event("Closed", json!({"why": "moved"}))],
        )
        .await?;
    let events = store.read_stream(&stream, 1, 10).await?;
    let err = events[0].decode::<AccountEvent>(&Upcasters::new()).unwrap_err();
    assert!(
        matches!(err, Error::UnknownEventType { ref event_type, .. } if event_type == "Closed"),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn oversized_payload_is_refused_and_nothing_is_stored() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| o.max_event_size(1024)).await?;
    let stream = StreamId::new("account-3")?;
    let small = new_event("Opened", json!({"owner": "ada"}));
    let big = new_event("Opened", json!({"owner": "x".repeat(2000)}));
    let err = store
        .append(&stream, ExpectedVersion::Any, vec![small, big])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    assert_eq!(store.stream_version(&stream).await?, 0);
    assert!(store.read_all(0, 10).await?.is_empty());
    Ok(())
}

#[tokio::test]
async fn stream_ids_with_odd_characters_round_trip() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let ids = [
        "it's \"quoted\"",
        "with spaces  and\ttab",
        "ünïcødé-流-🦀",
        "100% _like_ \\escape",
        "x'; drop table strata.events; --",
        "$1 $$ :name ?",
    ];
    for id in ids {
        let Ok(stream) = StreamId::new(id) else {
            // A tab is a control character: refused before reaching the store.
            assert!(id.contains('\t'));
            continue;
        };
        store
            .append(
                &stream,
                ExpectedVersion::NoStream,
                vec![new_event("Opened", json!({"owner": id}))],
            )
            .await?;
        let events = store.read_stream(&stream, 1, 10).await?;
        assert_eq!(events.len(), 1, "{id:?}");
        assert_eq!(events[0].stream_id.as_str(), id);
        assert_eq!(events[0].payload, json!({"owner": id}));
        assert_eq!(store.stream_version(&stream).await?, 1);
    }
    assert!(matches!(
        StreamId::new("nul\0inside"),
        Err(Error::InvalidStreamId { .. })
    ));
    // Everything survived the injection attempt.
    let log = strata_core::testing::contract::read_all_settled(&store, ids.len() - 1).await?;
    assert_eq!(log.len(), ids.len() - 1);
    Ok(())
}

#[tokio::test]
async fn odd_payloads_round_trip() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let stream = StreamId::new("odd-payloads")?;
    let payloads = [
        json!(null),
        json!(-9_223_372_036_854_775_807i64),
        json!({"text": "quote ' and \" and \\u0001 \u{1} control"}),
        json!([1.5e300, -0.0, "🦀"]),
    ];
    let events: Vec<_> = payloads.iter().map(|p| new_event("Odd", p.clone())).collect();
    store.append(&stream, ExpectedVersion::NoStream, events).await?;
    let read: Vec<_> = store
        .read_stream(&stream, 1, 10)
        .await?
        .into_iter()
        .map(|e| e.payload)
        .collect();
    assert_eq!(read.len(), payloads.len());
    assert_eq!(read[0], json!(null));
    assert_eq!(read[2], payloads[2]);
    Ok(())
}

#[tokio::test]
async fn unreachable_server_is_a_connection_error() -> Result<(), BoxError> {
    let url = "postgres://postgres@127.0.0.1:1/none?connect_timeout=2";
    let err = strata_store_postgres::PgEventStoreOptions::new(url)
        .acquire_timeout(std::time::Duration::from_secs(3))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(err.is_retriable());
    assert!(
        err.to_string()
            .contains("the last attempt got: Connection refused"),
        "{err}"
    );
    Ok(())
}

#[tokio::test]
async fn malformed_url_is_a_typed_error() -> Result<(), BoxError> {
    for url in [
        "not a url",
        "postgres://host:notaport/db",
        "mysql://localhost/db",
        "",
        "user:secret@localhost/db",
    ] {
        let err = PgEventStore::connect(url).await.unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{url}: {err:?}");
        assert!(!err.is_retriable(), "{url}: a bad url is not worth retrying");
    }
    Ok(())
}

#[tokio::test]
async fn stored_events_cannot_be_changed_or_removed() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let stream = StreamId::new("ledger-1")?;
    store
        .append(
            &stream,
            ExpectedVersion::NoStream,
            vec![
                new_event("Opened", json!({"owner": "ada"})),
                new_event("Deposited", json!({"amount": 5})),
            ],
        )
        .await?;
    for statement in [
        "UPDATE strata.events SET payload = '{}' WHERE stream_version = 1",
        "DELETE FROM strata.events WHERE stream_version = 2",
        "DELETE FROM strata.events WHERE false",
        "TRUNCATE strata.events",
    ] {
        let err = sqlx::query(statement).execute(store.pool()).await.unwrap_err();
        let db = err.as_database_error().expect("a database error");
        assert_eq!(db.code().as_deref(), Some("23001"), "{statement}: {db}");
        assert!(db.message().contains("append-only"), "{statement}: {db}");
    }
    let events = store.read_stream(&stream, 1, 10).await?;
    assert_eq!(events.len(), 2);
    assert_eq!(events[0].payload, json!({"owner": "ada"}));
    Ok(())
}

#[tokio::test]
async fn wrong_password_unknown_role_or_database_are_configuration_errors() -> Result<(), BoxError> {
    let (store, db) = fresh_database().await?;
    // scripts/pg-ephemeral.sh makes this role give a password.
    sqlx::query(
        "DO $$ BEGIN
             CREATE ROLE strata_password_check LOGIN PASSWORD 'right';
         EXCEPTION WHEN duplicate_object THEN NULL;
         END $$",
    )
    .execute(store.pool())
    .await?;
    let url = strata_store_postgres::testing::database_url()?;
    let host = url.split_once('@').map_or("", |(_, rest)| rest);
    let host = host.split_once('/').map_or(host, |(h, _)| h);
    for (url, says) in [
        (
            format!("postgres://strata_password_check:wrong@{host}/{db}"),
            "password authentication failed for user \"strata_password_check\" [SQLSTATE 28P01]",
        ),
        (
            format!("postgres://no_such_role@{host}/{db}"),
            "role \"no_such_role\" does not exist [SQLSTATE 28000]",
        ),
        (
            format!("postgres://postgres@{host}/no_such_db"),
            "database \"no_such_db\" does not exist [SQLSTATE 3D000]",
        ),
    ] {
        let err = PgEventStore::connect(&url).await.unwrap_err();
        assert!(matches!(err, Error::Configuration(_)), "{url}: {err:?}");
        assert!(!err.is_retriable());
        assert_eq!(err.to_string(), format!("invalid configuration: {says}"));
    }
    Ok(())
}

#[tokio::test]
async fn a_server_that_never_answers_is_reported_as_such() -> Result<(), BoxError> {
    // A listening socket that accepts and never speaks.
    let silent = std::net::TcpListener::bind("127.0.0.1:0")?;
    let url = format!("postgres://postgres@{}/none", silent.local_addr()?);
    let err = strata_store_postgres::PgEventStoreOptions::new(url)
        .acquire_timeout(std::time::Duration::from_millis(500))
        .connect()
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connection(_)), "{err:?}");
    assert!(err.to_string().ends_with("the server did not answer"), "{err}");
    Ok(())
}

#[tokio::test]
async fn the_event_type_counts_toward_the_size_limit() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| o.max_event_size(1024)).await?;
    let stream = StreamId::new("sized")?;
    let payload = json!({"text": "x".repeat(900)});
    let fits = new_event("T", payload.clone());
    store
        .append(&stream, ExpectedVersion::NoStream, vec![fits])
        .await?;
    let over = new_event(&"T".repeat(200), payload);
    let err = store
        .append(&stream, ExpectedVersion::Exact(1), vec![over])
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::PayloadTooLarge { limit: 1024, .. }),
        "{err:?}"
    );
    Ok(())
}
