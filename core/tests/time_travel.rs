//! Time travel: `CommandHandler::load_as_of` folds an aggregate up to a
//! past version or instant, through the upcasters, without snapshots newer
//! than that point.

use std::time::Duration;

use serde_json::json;
use strata_core::testing::fixtures::bank::{self, BankAccount, BankCommand};
use strata_core::{
    AsOf, CommandHandler, CommandHandlerOptions, EventStore, ExpectedVersion, InMemoryEventStore, Metadata,
    NewEvent, StreamId,
};
use uuid::Uuid;

type Handler = CommandHandler<BankAccount, InMemoryEventStore>;
type TestResult = Result<(), Box<dyn std::error::Error>>;

/// A handler reading two events per page, so that folds cross pages.
fn handler(store: &InMemoryEventStore, snapshot_every: Option<u64>) -> Handler {
    Handler::with_options(
        store.clone(),
        bank::upcasters(),
        CommandHandlerOptions {
            snapshot_every,
            // Saved before each outcome, so the test knows where they are.
            snapshot_in_background: false,
            read_batch: 2,
            ..CommandHandlerOptions::default()
        },
    )
}

/// Ada's open account holding `balance`.
fn ada_with(balance: u64) -> BankAccount {
    BankAccount {
        owner: Some("ada".into()),
        open: true,
        balance,
    }
}

/// A `Deposited` event as schema v1 stored it, `{"value": n}`: only the
/// upcaster makes it readable.
async fn append_deposited_v1(store: &InMemoryEventStore, after: u64, value: u64) -> TestResult {
    let event = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Deposited".into(),
        schema_version: 1,
        payload: json!({ "value": value }),
        metadata: Metadata::default(),
    };
    store
        .append(
            &StreamId::new("account-acc")?,
            ExpectedVersion::Exact(after),
            vec![event],
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn load_as_of_a_version_folds_the_events_up_to_it_through_the_upcasters() -> TestResult {
    let store = InMemoryEventStore::new();
    let accounts = handler(&store, None);
    accounts
        .execute("acc", BankCommand::Open { owner: "ada".into() })
        .await?;
    append_deposited_v1(&store, 1, 42).await?;
    accounts
        .execute("acc", BankCommand::Deposit { amount: 10 })
        .await?;
    accounts
        .execute("acc", BankCommand::Withdraw { amount: 2 })
        .await?;

    let at = |v| accounts.load_as_of("acc", AsOf::Version(v));
    assert_eq!(at(0).await?, (BankAccount::default(), 0));
    assert_eq!(at(1).await?, (ada_with(0), 1));
    assert_eq!(at(2).await?, (ada_with(42), 2), "the v1 event, upcast");
    assert_eq!(at(3).await?, (ada_with(52), 3));
    assert_eq!(at(4).await?, (ada_with(50), 4));
    assert_eq!(at(4).await?, accounts.load("acc").await?);
    // Past the end: the state at the end, with the end's version.
    assert_eq!(at(99).await?, (ada_with(50), 4));

    // A missing stream reads as `load` reads it.
    let missing = accounts.load("nobody").await?;
    assert_eq!(missing, (BankAccount::default(), 0));
    assert_eq!(accounts.load_as_of("nobody", AsOf::Version(3)).await?, missing);
    assert_eq!(
        accounts
            .load_as_of("nobody", AsOf::Time(chrono::Utc::now()))
            .await?,
        missing
    );
    Ok(())
}

#[tokio::test]
async fn load_as_of_a_time_stops_at_the_first_event_recorded_after_it() -> TestResult {
    let store = InMemoryEventStore::new();
    let accounts = handler(&store, None);
    let pause = || tokio::time::sleep(Duration::from_millis(5));
    accounts
        .execute("acc", BankCommand::Open { owner: "ada".into() })
        .await?;
    pause().await;
    append_deposited_v1(&store, 1, 42).await?;
    pause().await;
    accounts
        .execute("acc", BankCommand::Deposit { amount: 10 })
        .await?;
    let recorded: Vec<_> = store
        .read_stream(&StreamId::new("account-acc")?, 1, 10)
        .await?
        .iter()
        .map(|e| e.recorded_at)
        .collect();
    let [opened, deposited_v1, deposited] = recorded[..] else {
        panic!("three events: {recorded:?}");
    };
    assert!(opened < deposited_v1 && deposited_v1 < deposited, "{recorded:?}");

    let at = |t| accounts.load_as_of("acc", AsOf::Time(t));
    let before = opened - chrono::Duration::milliseconds(1);
    assert_eq!(at(before).await?, (BankAccount::default(), 0));
    assert_eq!(
        at(opened).await?,
        (ada_with(0), 1),
        "an event at the instant counts"
    );
    // Between the second and third events' `recorded_at`.
    let between = deposited_v1 + (deposited - deposited_v1) / 2;
    assert_eq!(at(between).await?, (ada_with(42), 2), "the v1 event, upcast");
    assert_eq!(at(deposited).await?, (ada_with(52), 3));
    Ok(())
}

#[tokio::test]
async fn load_as_of_uses_no_snapshot_newer_than_the_point() -> TestResult {
    let store = InMemoryEventStore::new();
    let accounts = handler(&store, Some(2));
    accounts
        .execute("acc", BankCommand::Open { owner: "ada".into() })
        .await?;
    for _ in 0..4 {
        accounts
            .execute("acc", BankCommand::Deposit { amount: 10 })
            .await?;
    }
    let stream = StreamId::new("account-acc")?;
    let mut snapshot = store
        .load_snapshot(&stream)
        .await?
        .expect("a snapshot every 2 events");
    assert_eq!(snapshot.stream_version, 4);
    // A doctored snapshot shows where it is used.
    snapshot.state["balance"] = json!(1000);
    store.save_snapshot(snapshot).await?;

    let at = |v| accounts.load_as_of("acc", AsOf::Version(v));
    assert_eq!(
        at(3).await?,
        (ada_with(20), 3),
        "the snapshot is newer: folded from the start"
    );
    assert_eq!(
        at(4).await?,
        (ada_with(1000), 4),
        "the snapshot at the point is used"
    );
    assert_eq!(at(5).await?, (ada_with(1010), 5), "and one below it");
    // A time cut folds from the start.
    assert_eq!(
        accounts.load_as_of("acc", AsOf::Time(chrono::Utc::now())).await?,
        (ada_with(40), 5)
    );
    Ok(())
}
