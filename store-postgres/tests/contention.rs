//! Many writers on one stream through the command handler: no lost write,
//! no hole, no duplicate.

use std::collections::HashSet;
use std::time::Duration;

use strata_core::error::BoxError;
use strata_core::testing::fixtures::counter::Counter;
use strata_core::{CommandHandler, CommandHandlerOptions, EventStore, Upcasters};
use strata_store_postgres::testing::fresh_database_with;

const TASKS: usize = 64;
const COMMANDS_PER_TASK: usize = 100;

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
    let handler = CommandHandler::<Counter, _>::with_options(store.clone(), Upcasters::new(), options);

    let mut tasks = Vec::new();
    for _ in 0..TASKS {
        let handler = handler.clone();
        tasks.push(tokio::spawn(async move {
            let mut appended = Vec::new();
            for _ in 0..COMMANDS_PER_TASK {
                let outcome = handler.execute("shared", 1).await?;
                appended.extend(outcome.events.into_iter().map(|e| e.event_id));
            }
            Ok::<_, BoxError>(appended)
        }));
    }
    let mut reported = Vec::new();
    for task in tasks {
        reported.extend(task.await??);
    }
    assert_eq!(reported.len(), TASKS * COMMANDS_PER_TASK);

    let stream = CommandHandler::<Counter, strata_store_postgres::PgEventStore>::stream_id("shared")?;
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
