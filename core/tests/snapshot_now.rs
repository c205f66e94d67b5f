//! `CommandHandler::snapshot_now`: a snapshot taken on request, at the
//! current version, whatever `snapshot_every` says, and read by loads.

use strata_core::testing::fixtures::bank::{self, BankAccount, BankCommand};
use strata_core::{CommandHandler, CommandHandlerOptions, EventStore, InMemoryEventStore, StreamId};

type Handler = CommandHandler<BankAccount, InMemoryEventStore>;
type TestResult = Result<(), Box<dyn std::error::Error>>;

fn handler(store: &InMemoryEventStore, snapshot_every: Option<u64>) -> Handler {
    Handler::with_options(
        store.clone(),
        bank::upcasters(),
        CommandHandlerOptions {
            snapshot_every,
            ..CommandHandlerOptions::default()
        },
    )
}

#[tokio::test]
async fn a_snapshot_taken_now_is_at_the_current_version_and_loads_start_from_it() -> TestResult {
    let store = InMemoryEventStore::new();
    // Snapshots off for commands: only the request saves one.
    let commands = handler(&store, None);
    commands
        .execute("ada", BankCommand::Open { owner: "ada".into() })
        .await?;
    for amount in [5, 7, 11] {
        commands.execute("ada", BankCommand::Deposit { amount }).await?;
    }
    let stream = StreamId::for_aggregate("account", "ada")?;
    assert!(store.load_snapshot(&stream).await?.is_none());

    assert_eq!(commands.snapshot_now("ada").await?, Some(4));
    let snapshot = store.load_snapshot(&stream).await?.expect("saved");
    assert_eq!(snapshot.stream_version, 4);
    let (state, _) = commands.load("ada").await?;
    assert_eq!(snapshot.state, serde_json::to_value(&state)?);

    // A loader with snapshots on starts from it: doctored, it shows.
    let mut doctored = snapshot.clone();
    doctored.state["balance"] = serde_json::json!(1000);
    store.save_snapshot(doctored).await?;
    commands
        .execute("ada", BankCommand::Deposit { amount: 1 })
        .await?;
    let (loaded, version) = handler(&store, Some(1_000_000)).load("ada").await?;
    assert_eq!((loaded.balance, version), (1001, 5));
    Ok(())
}

#[tokio::test]
async fn a_stream_without_events_is_not_snapshotted() -> TestResult {
    let store = InMemoryEventStore::new();
    assert_eq!(handler(&store, None).snapshot_now("nobody").await?, None);
    let stream = StreamId::for_aggregate("account", "nobody")?;
    assert!(store.load_snapshot(&stream).await?.is_none());
    Ok(())
}

/// An aggregate whose state nests as deep as its events say.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
struct Nest {
    inner: serde_json::Value,
}

#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, strata_core::Event)]
enum NestEvent {
    Deepened { levels: u32 },
}

#[derive(Debug, serde::Serialize, serde::Deserialize, thiserror::Error)]
#[error("never")]
struct Never;

impl strata_core::Aggregate for Nest {
    const TYPE: &'static str = "nest";
    type Command = u32;
    type Event = NestEvent;
    type Error = Never;

    fn decide(&self, levels: &u32) -> Result<Vec<NestEvent>, Never> {
        Ok(vec![NestEvent::Deepened { levels: *levels }])
    }

    fn apply(&mut self, NestEvent::Deepened { levels }: &NestEvent) {
        for _ in 0..*levels {
            self.inner = serde_json::json!([self.inner.take()]);
        }
    }
}

#[tokio::test]
async fn a_state_too_deep_to_read_back_is_refused_and_not_saved() -> TestResult {
    let store = InMemoryEventStore::new();
    let nests = CommandHandler::<Nest, _>::new(store.clone());
    nests.execute("n", 200).await?;
    let refused = nests.snapshot_now("n").await;
    assert!(
        matches!(refused, Err(strata_core::Error::Serialization { .. })),
        "{refused:?}"
    );
    assert!(
        store
            .load_snapshot(&StreamId::for_aggregate("nest", "n")?)
            .await?
            .is_none()
    );
    Ok(())
}
