//! Snapshots that `snapshot_every` asks for are saved off the command's
//! path (or on it, when asked), and a batch of commands appended together
//! snapshots as a single command would.

use std::future::Future;
use std::time::Duration;

use strata_core::testing::DelayedAppends;
use strata_core::testing::fixtures::bank::{self, BankAccount, BankCommand};
use strata_core::{CommandHandler, CommandHandlerOptions, EventStore, InMemoryEventStore, StreamId};

type Store = DelayedAppends<InMemoryEventStore>;
type Handler = CommandHandler<BankAccount, Store>;
type TestResult = Result<(), Box<dyn std::error::Error>>;

fn setup(snapshot_every: u64, in_background: bool) -> (Store, Handler) {
    let store = DelayedAppends::new(InMemoryEventStore::new(), Duration::ZERO);
    let options = CommandHandlerOptions {
        snapshot_every: Some(snapshot_every),
        snapshot_in_background: in_background,
        ..CommandHandlerOptions::default()
    };
    let handler = Handler::with_options(store.clone(), bank::upcasters(), options);
    (store, handler)
}

fn open() -> BankCommand {
    BankCommand::Open { owner: "ada".into() }
}

fn deposit() -> BankCommand {
    BankCommand::Deposit { amount: 5 }
}

/// `what`, or an error if it hangs: a guard against a deadlock, not a
/// measure of speed.
async fn soon<T>(what: impl Future<Output = T>) -> Result<T, Box<dyn std::error::Error>> {
    Ok(tokio::time::timeout(Duration::from_secs(10), what).await?)
}

async fn snapshot_version(store: &Store) -> Result<Option<u64>, strata_core::Error> {
    let stream = StreamId::for_aggregate("account", "ada")?;
    Ok(store
        .inner()
        .load_snapshot(&stream)
        .await?
        .map(|s| s.stream_version))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_is_saved_off_the_command_path_by_default() -> TestResult {
    let (store, handler) = setup(2, true);
    let held = store.hold_next_snapshot();
    handler.execute("ada", open()).await?;
    // This command crosses version 2: its outcome comes back while the
    // snapshot's save is still held.
    let outcome = soon(handler.execute("ada", deposit())).await??;
    assert_eq!(outcome.stream_version, 2);
    soon(held.entered()).await?;
    assert_eq!(snapshot_version(&store).await?, None);
    held.release();
    soon(async {
        while snapshot_version(&store).await.ok().flatten() != Some(2) {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_background_the_outcome_waits_for_the_snapshot() -> TestResult {
    let (store, handler) = setup(2, false);
    let held = store.hold_next_snapshot();
    handler.execute("ada", open()).await?;
    let command = tokio::spawn({
        let handler = handler.clone();
        async move { handler.execute("ada", deposit()).await }
    });
    soon(held.entered()).await?;
    assert!(!command.is_finished(), "the outcome waits for the save");
    held.release();
    soon(command).await???;
    assert_eq!(snapshot_version(&store).await?, Some(2));
    Ok(())
}

#[tokio::test]
async fn a_batch_snapshots_at_its_end_as_one_command_would() -> TestResult {
    let (store, handler) = setup(3, false);
    let held = store.hold_next();
    let first = tokio::spawn({
        let handler = handler.clone();
        async move { handler.execute("ada", open()).await }
    });
    soon(held.entered()).await?;
    // Five deposits queue behind the held append and go in one batch,
    // versions 2 to 6, crossing 3 and 6.
    let queued: Vec<_> = (0..5)
        .map(|_| {
            let handler = handler.clone();
            tokio::spawn(async move { handler.execute("ada", deposit()).await })
        })
        .collect();
    while store.appends() < 1 {
        tokio::task::yield_now().await;
    }
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    held.release();
    first.await??;
    for q in queued {
        q.await??;
    }
    assert_eq!(store.appends(), 2, "the deposits went in one batch");
    assert_eq!(snapshot_version(&store).await?, Some(6));
    // A load from that snapshot is the replayed state.
    let uncached = Handler::with_options(
        store.clone(),
        bank::upcasters(),
        CommandHandlerOptions {
            snapshot_every: Some(3),
            cache: None,
            ..CommandHandlerOptions::default()
        },
    );
    let (state, version) = uncached.load("ada").await?;
    assert_eq!((state.balance, version), (25, 6));
    Ok(())
}
