//! The command handler: retries, de-duplication by command id, metadata,
//! snapshots and upcasting on load.

use std::time::Duration;

use serde_json::json;
use strata_core::testing::DelayedAppends;
use strata_core::testing::fixtures::bank::{self, BankAccount, BankCommand, BankError};
use strata_core::{
    CommandContext, CommandError, CommandHandler, CommandHandlerOptions, Error, EventStore, ExpectedVersion,
    InMemoryEventStore, Metadata, NewEvent, Snapshot, StreamId,
};
use uuid::Uuid;

type Handler<S> = CommandHandler<BankAccount, S>;

fn options(max_retries: usize, snapshot_every: Option<u64>) -> CommandHandlerOptions {
    CommandHandlerOptions {
        max_retries,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
        snapshot_every,
        ..CommandHandlerOptions::default()
    }
}

/// Ada's open account holding `balance`.
fn ada_with(balance: u64) -> BankAccount {
    BankAccount {
        owner: Some("ada".into()),
        open: true,
        balance,
    }
}

async fn open(handler: &Handler<impl EventStore>, id: &str) -> Result<(), CommandError<BankError>> {
    handler
        .execute(id, BankCommand::Open { owner: "ada".into() })
        .await?;
    Ok(())
}

/// A `Deposited` event as schema v1 stored it: `{"value": n}`.
fn deposited_v1(value: u64) -> NewEvent {
    NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Deposited".into(),
        schema_version: 1,
        payload: json!({ "value": value }),
        metadata: Metadata::default(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writers_resolve_conflicts_by_retry() -> Result<(), Box<dyn std::error::Error>> {
    // Eight handlers on one store, as eight processes would be: commands
    // within one handler wait their turn and never collide.
    let store = DelayedAppends::new(InMemoryEventStore::new(), Duration::from_millis(3));
    let handler = Handler::with_options(store.clone(), bank::upcasters(), options(1000, None));
    open(&handler, "acc").await?;
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let handler = Handler::with_options(store.clone(), bank::upcasters(), options(1000, None));
            tokio::spawn(async move {
                let mut retries = 0;
                for _ in 0..10 {
                    retries += handler
                        .execute("acc", BankCommand::Deposit { amount: 1 })
                        .await?
                        .retries;
                }
                Ok::<_, CommandError<BankError>>(retries)
            })
        })
        .collect();
    let mut retries = 0;
    for t in tasks {
        retries += t.await??;
    }
    let (state, version) = handler.load("acc").await?;
    assert_eq!(state.balance, 80, "every deposit must land exactly once");
    assert_eq!(version, 81);
    assert!(retries > 0, "writers this slow must have collided");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicts_beyond_max_retries_are_reported() -> Result<(), Box<dyn std::error::Error>> {
    let store = DelayedAppends::new(InMemoryEventStore::new(), Duration::from_millis(20));
    let handler = Handler::with_options(store.clone(), bank::upcasters(), options(0, None));
    let other = Handler::with_options(store, bank::upcasters(), options(0, None));
    open(&handler, "acc").await?;
    let (a, b) = tokio::join!(
        handler.execute("acc", BankCommand::Deposit { amount: 1 }),
        other.execute("acc", BankCommand::Deposit { amount: 2 }),
    );
    let failure = [a, b]
        .into_iter()
        .find_map(Result::err)
        .expect("one writer must lose");
    assert!(
        matches!(
            failure,
            CommandError::TooManyConflicts {
                attempts: 1,
                last: Error::Conflict { .. },
                ..
            }
        ),
        "{failure:?}"
    );
    Ok(())
}

#[tokio::test]
async fn domain_errors_append_nothing() -> Result<(), Box<dyn std::error::Error>> {
    let handler = Handler::new(InMemoryEventStore::new());
    open(&handler, "acc").await?;
    let err = handler
        .execute("acc", BankCommand::Withdraw { amount: 5 })
        .await
        .unwrap_err();
    assert_eq!(
        err.domain(),
        Some(&BankError::InsufficientFunds {
            balance: 0,
            requested: 5
        })
    );
    assert_eq!(handler.load("acc").await?.1, 1);
    Ok(())
}

#[tokio::test]
async fn same_command_id_appends_once_and_returns_first_outcome() -> Result<(), Box<dyn std::error::Error>> {
    let handler = Handler::new(InMemoryEventStore::new());
    open(&handler, "acc").await?;
    let ctx = CommandContext::with_id(Uuid::now_v7());
    let first = handler
        .execute_with("acc", BankCommand::Deposit { amount: 7 }, ctx.clone())
        .await?;
    assert!(!first.deduplicated);
    let second = handler
        .execute_with("acc", BankCommand::Deposit { amount: 7 }, ctx.clone())
        .await?;
    assert!(second.deduplicated);
    assert_eq!(second.stream_version, first.stream_version);
    let ids = |o: &strata_core::CommandOutcome<_>| o.events.iter().map(|e| e.event_id).collect::<Vec<_>>();
    assert_eq!(ids(&second), ids(&first));
    assert_eq!(second.events[0].event, first.events[0].event);
    // Later commands move on; the replayed id still answers with its outcome.
    handler.execute("acc", BankCommand::Deposit { amount: 1 }).await?;
    let third = handler
        .execute_with("acc", BankCommand::Deposit { amount: 7 }, ctx)
        .await?;
    assert_eq!(third.stream_version, first.stream_version);
    assert_eq!(handler.load("acc").await?.0.balance, 8);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_submissions_of_one_command_id_append_once() -> Result<(), Box<dyn std::error::Error>> {
    let store = DelayedAppends::new(InMemoryEventStore::new(), Duration::from_millis(5));
    let handler = Handler::with_options(store, bank::upcasters(), options(100, None));
    open(&handler, "acc").await?;
    let ctx = CommandContext::with_id(Uuid::now_v7());
    let runs: Vec<_> = (0..4)
        .map(|_| {
            let (handler, ctx) = (handler.clone(), ctx.clone());
            tokio::spawn(async move {
                handler
                    .execute_with("acc", BankCommand::Deposit { amount: 3 }, ctx)
                    .await
            })
        })
        .collect();
    let mut outcomes = Vec::new();
    for r in runs {
        let outcome = r.await??;
        outcomes.push((outcome.stream_version, outcome.events[0].event_id));
    }
    // Losers either find the stored outcome or re-append the very same batch,
    // which the store treats as idempotent: every caller sees one outcome.
    assert!(outcomes.windows(2).all(|w| w[0] == w[1]), "{outcomes:?}");
    assert_eq!(handler.load("acc").await?, (ada_with(3), 2));
    Ok(())
}

#[tokio::test]
async fn metadata_flows_from_command_to_events() -> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryEventStore::new();
    let handler = Handler::new(store.clone());
    let command_id = Uuid::now_v7();
    let correlation = Uuid::now_v7();
    let ctx = CommandContext {
        command_id: Some(command_id),
        correlation_id: Some(correlation),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        tenant_id: Some("t1".into()),
        headers: [("origin".to_owned(), "test".to_owned())].into(),
    };
    let outcome = handler
        .execute_with("acc", BankCommand::Open { owner: "ada".into() }, ctx)
        .await?;
    let stored = store.read_stream(&StreamId::new("account-acc")?, 1, 10).await?;
    let meta = &stored[0].metadata;
    assert_eq!(meta.causation_id, Some(command_id));
    assert_eq!(meta.correlation_id, Some(correlation));
    assert_eq!(
        meta.traceparent.as_deref(),
        Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
    );
    assert_eq!(meta.tenant_id.as_deref(), Some("t1"));
    assert_eq!(meta.headers.get("origin").map(String::as_str), Some("test"));
    assert_eq!(outcome.events[0].metadata, *meta);
    assert_eq!(stored[0].event_id.get_version_num(), 7, "event ids are UUID v7");
    // Without an explicit id, correlation defaults to the generated command id.
    let plain = handler.execute("acc", BankCommand::Deposit { amount: 1 }).await?;
    assert_eq!(
        plain.events[0].metadata.correlation_id,
        plain.events[0].metadata.causation_id
    );
    Ok(())
}

#[tokio::test]
async fn load_uses_snapshot_plus_tail() -> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryEventStore::new();
    // Without the aggregate cache, which would serve loads from memory.
    let uncached = CommandHandlerOptions {
        cache: None,
        snapshot_in_background: false,
        ..options(0, Some(4))
    };
    let handler = Handler::with_options(store.clone(), bank::upcasters(), uncached);
    open(&handler, "acc").await?;
    for _ in 0..9 {
        handler
            .execute("acc", BankCommand::Deposit { amount: 10 })
            .await?;
    }
    let stream = StreamId::new("account-acc")?;
    let snapshot = store
        .load_snapshot(&stream)
        .await?
        .expect("a snapshot every 4 events");
    assert_eq!(snapshot.stream_version, 8);
    assert_eq!(handler.load("acc").await?, (ada_with(90), 10));
    // A doctored snapshot proves the loader starts from it.
    let mut doctored = snapshot.clone();
    doctored.state["balance"] = json!(1000);
    doctored.stream_version = 9;
    store.save_snapshot(doctored).await?;
    assert_eq!(handler.load("acc").await?.0.balance, 1010);
    // A snapshot of another schema version is ignored: full replay.
    store
        .save_snapshot(Snapshot {
            stream_version: 10,
            schema_version: 99,
            state: json!("junk"),
            ..snapshot
        })
        .await?;
    assert_eq!(handler.load("acc").await?, (ada_with(90), 10));
    Ok(())
}

#[tokio::test]
async fn load_upcasts_old_events_and_reports_unknown_ones() -> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryEventStore::new();
    let handler = Handler::with_options(store.clone(), bank::upcasters(), options(0, None));
    open(&handler, "acc").await?;
    let stream = StreamId::new("account-acc")?;
    let v1 = deposited_v1(42);
    store.append(&stream, ExpectedVersion::Exact(1), vec![v1]).await?;
    assert_eq!(handler.load("acc").await?.0.balance, 42);
    let unknown = NewEvent {
        event_id: Uuid::now_v7(),
        event_type: "Frozen".into(),
        ..NewEvent::from_event(&bank::BankEvent::Closed, Metadata::default())?
    };
    store
        .append(&stream, ExpectedVersion::Exact(2), vec![unknown])
        .await?;
    let err = handler.load("acc").await.unwrap_err();
    assert!(
        matches!(err, Error::UnknownEventType { ref event_type, .. } if event_type == "Frozen"),
        "{err:?}"
    );
    let err = handler
        .execute("acc", BankCommand::Deposit { amount: 1 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Store(Error::UnknownEventType { .. })),
        "{err:?}"
    );
    Ok(())
}

#[tokio::test]
async fn invalid_aggregate_ids_are_typed_errors() {
    let handler = Handler::new(InMemoryEventStore::new());
    let err = handler.execute("bad\0id", BankCommand::Close).await.unwrap_err();
    assert!(
        matches!(err, CommandError::Store(Error::InvalidStreamId { .. })),
        "{err:?}"
    );
}

/// A switch: `Set(on)` changes the state only if it differs, so a command
/// can be accepted and produce no events.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
struct Switch {
    on: bool,
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, strata_core::Event)]
enum SwitchEvent {
    Flipped { on: bool },
}

#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("switch is jammed")]
struct Jammed;

impl strata_core::Aggregate for Switch {
    const TYPE: &'static str = "switch";
    type Command = bool;
    type Event = SwitchEvent;
    type Error = Jammed;

    fn decide(&self, on: &bool) -> Result<Vec<SwitchEvent>, Jammed> {
        Ok(if self.on == *on {
            Vec::new()
        } else {
            vec![SwitchEvent::Flipped { on: *on }]
        })
    }

    fn apply(&mut self, SwitchEvent::Flipped { on }: &SwitchEvent) {
        self.on = *on;
    }
}

#[tokio::test]
async fn a_refused_command_id_keeps_its_refusal_after_the_state_changed()
-> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryEventStore::new();
    // Two handlers on one store stand in for two processes.
    let (first, second) = (Handler::new(store.clone()), Handler::new(store.clone()));
    open(&first, "acc").await?;
    let ctx = CommandContext::with_id(Uuid::now_v7());
    let refused = BankError::InsufficientFunds {
        balance: 0,
        requested: 5,
    };
    let err = first
        .execute_with("acc", BankCommand::Withdraw { amount: 5 }, ctx.clone())
        .await
        .unwrap_err();
    assert_eq!(err.domain(), Some(&refused));
    first.execute("acc", BankCommand::Deposit { amount: 10 }).await?;
    // Now the withdrawal would pass; the id still answers with its refusal.
    let err = second
        .execute_with("acc", BankCommand::Withdraw { amount: 5 }, ctx)
        .await
        .unwrap_err();
    assert_eq!(err.domain(), Some(&refused));
    assert_eq!(second.load("acc").await?, (ada_with(10), 2));
    Ok(())
}

#[tokio::test]
async fn a_command_id_that_changed_nothing_keeps_that_outcome() -> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryEventStore::new();
    let switches = CommandHandler::<Switch, _>::new(store.clone());
    let ctx = CommandContext::with_id(Uuid::now_v7());
    let first = switches.execute_with("s", false, ctx.clone()).await?;
    assert!(first.events.is_empty() && !first.deduplicated);
    switches.execute("s", true).await?;
    // Now `false` would flip the switch; the id answers with "no change".
    let again = CommandHandler::<Switch, _>::new(store)
        .execute_with("s", false, ctx)
        .await?;
    assert!(again.events.is_empty() && again.deduplicated, "{again:?}");
    assert_eq!(again.stream_version, 0);
    assert_eq!(switches.load("s").await?, (Switch { on: true }, 1));
    Ok(())
}

#[tokio::test]
async fn a_command_id_reused_for_another_stream_is_refused() -> Result<(), Box<dyn std::error::Error>> {
    let handler = Handler::new(InMemoryEventStore::new());
    let id = Uuid::now_v7();
    handler
        .execute_with(
            "a",
            BankCommand::Open { owner: "ada".into() },
            CommandContext::with_id(id),
        )
        .await?;
    let err = handler
        .execute_with(
            "b",
            BankCommand::Open { owner: "bob".into() },
            CommandContext::with_id(id),
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            CommandError::CommandIdReused { command_id, ref first_stream, ref stream }
                if command_id == id && first_stream == "account-a" && stream == "account-b"
        ),
        "{err:?}"
    );
    assert_eq!(
        handler.load("b").await?.1,
        0,
        "nothing written for the second stream"
    );
    Ok(())
}

#[tokio::test]
async fn command_errors_say_why() -> Result<(), Box<dyn std::error::Error>> {
    let store = InMemoryEventStore::new();
    let handler = Handler::new(store.clone());
    open(&handler, "acc").await?;
    let err = handler
        .execute("acc", BankCommand::Withdraw { amount: 5 })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "command refused: insufficient funds: balance 0, requested 5"
    );
    // A deposit at a version no upcaster lifts: the message names the missing step.
    let v1 = NewEvent {
        schema_version: 0,
        ..deposited_v1(42)
    };
    store
        .append(
            &StreamId::new("account-acc")?,
            ExpectedVersion::Exact(1),
            vec![v1],
        )
        .await?;
    let err = handler
        .execute("acc", BankCommand::Deposit { amount: 1 })
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "no upcaster lifts event type `Deposited` from schema version 0 (current version is 2)"
    );
    Ok(())
}
