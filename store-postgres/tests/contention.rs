//! Many writers on one stream through the command handler: no lost write,
//! no hole, no duplicate; with default options, every command succeeds.

use std::collections::HashSet;
use std::time::Duration;

use strata_core::error::BoxError;
use strata_core::testing::fixtures::counter::Counter;
use strata_core::{CommandHandler, CommandHandlerOptions, EventStore, Upcasters, Uuid};
use strata_store_postgres::testing::{fresh_database, fresh_database_url, fresh_database_with};
use strata_store_postgres::{PgEventStore, PgEventStoreOptions};

type Handler = CommandHandler<Counter, PgEventStore>;

/// `tasks` writers per handler, each sending `commands` commands to one
/// stream: the events the outcomes report, and the retries they counted.
async fn write(handlers: &[Handler], tasks: usize, commands: usize) -> Result<(Vec<Uuid>, usize), BoxError> {
    let mut running = Vec::new();
    for handler in handlers {
        for _ in 0..tasks {
            let handler = handler.clone();
            running.push(tokio::spawn(async move {
                let (mut appended, mut retries) = (Vec::new(), 0);
                for _ in 0..commands {
                    let outcome = handler.execute("shared", 1).await?;
                    retries += outcome.retries;
                    appended.extend(outcome.events.into_iter().map(|e| e.event_id));
                }
                Ok::<_, BoxError>((appended, retries))
            }));
        }
    }
    let (mut reported, mut retries) = (Vec::new(), 0);
    for task in running {
        let (appended, r) = task.await??;
        reported.extend(appended);
        retries += r;
    }
    assert_eq!(reported.len(), handlers.len() * tasks * commands);
    Ok((reported, retries))
}

/// The stream holds exactly the `reported` events, versions 1 to n, and
/// folds to their count.
async fn check(handler: &Handler, reported: &[Uuid]) -> Result<(), BoxError> {
    let store = handler.store();
    let stream = Handler::stream_id("shared")?;
    let stored = store.read_stream_to_end(&stream, 1, 1000).await?;
    assert_eq!(store.stream_version(&stream).await?, reported.len() as u64);
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (1..=reported.len() as u64).collect::<Vec<_>>());
    let ids: HashSet<_> = stored.iter().map(|e| e.event_id).collect();
    assert_eq!(ids.len(), stored.len(), "duplicate event ids");
    assert!(
        reported.iter().all(|id| ids.contains(id)),
        "an appended event is missing"
    );
    let (counter, version) = handler.load("shared").await?;
    assert_eq!(
        (counter.total, version),
        (reported.len() as u64, reported.len() as u64)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_commands_on_one_stream_lose_nothing() -> Result<(), BoxError> {
    let (store, _db) = fresh_database_with(|o| o.max_connections(70)).await?;
    let options = CommandHandlerOptions {
        max_retries: 1000,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(20),
        snapshot_every: Some(50),
        ..CommandHandlerOptions::default()
    };
    let handler = Handler::with_options(store, Upcasters::new(), options);
    let (reported, _) = write(std::slice::from_ref(&handler), 64, 100).await?;
    check(&handler, &reported).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn sixty_four_writers_on_one_stream_all_succeed_with_default_options() -> Result<(), BoxError> {
    let (store, _db) = fresh_database().await?;
    let handler = Handler::new(store);
    let (reported, retries) = write(std::slice::from_ref(&handler), 64, 100).await?;
    assert_eq!(retries, 0, "commands within one handler wait their turn");
    check(&handler, &reported).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_processes_of_thirty_two_writers_all_succeed_with_default_options() -> Result<(), BoxError> {
    // Two handlers, each with its own pool: two processes, as far as the
    // store can tell. Their batches conflict and are decided again.
    let (url, _db) = fresh_database_url().await?;
    let mut handlers = Vec::new();
    for _ in 0..2 {
        let store = PgEventStoreOptions::new(url.clone()).connect().await?;
        handlers.push(Handler::new(store));
    }
    let (reported, retries) = write(&handlers, 32, 50).await?;
    eprintln!("two processes: {retries} retries after conflicts");
    check(&handlers[0], &reported).await
}
