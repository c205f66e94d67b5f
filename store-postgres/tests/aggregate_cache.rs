//! The command handler's aggregate cache on PostgreSQL: two handlers, each
//! with its own cache and its own connection pool (two processes, as far
//! as the store can tell), interleave commands on one stream.

use std::collections::HashSet;
use std::time::Duration;

use strata_core::error::BoxError;
use strata_core::testing::fixtures::counter::Counter;
use strata_core::{
    CacheOptions, CommandContext, CommandHandler, CommandHandlerOptions, EventStore, Upcasters, Uuid,
};
use strata_store_postgres::PgEventStoreOptions;
use strata_store_postgres::testing::fresh_database_url;

const HANDLERS: usize = 2;
const TASKS: usize = 4;
const COMMANDS: usize = 25;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_cached_handlers_on_one_stream_lose_nothing() -> Result<(), BoxError> {
    let (url, _db) = fresh_database_url().await?;
    let options = CommandHandlerOptions {
        max_retries: 1000,
        min_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(10),
        cache: Some(CacheOptions::default()),
        ..CommandHandlerOptions::default()
    };
    let mut handlers = Vec::new();
    for _ in 0..HANDLERS {
        let store = PgEventStoreOptions::new(url.clone())
            .max_connections(TASKS as u32 + 1)
            .connect()
            .await?;
        handlers.push(CommandHandler::<Counter, _>::with_options(
            store,
            Upcasters::new(),
            options.clone(),
        ));
    }

    let mut tasks = Vec::new();
    for (h, handler) in handlers.iter().enumerate() {
        for t in 0..TASKS {
            let handler = handler.clone();
            tasks.push(tokio::spawn(async move {
                let mut appended = Vec::new();
                for i in 0..COMMANDS {
                    // Uneven pauses, so the two caches fall behind each other.
                    tokio::time::sleep(Duration::from_micros(
                        ((h * 7 + t * 13 + i * 31) % 17) as u64 * 100,
                    ))
                    .await;
                    let ctx = CommandContext::with_id(Uuid::now_v7());
                    let outcome = handler.execute_with("shared", 1 + i as u64, ctx).await?;
                    appended.extend(outcome.events.into_iter().map(|e| (e.event_id, 1 + i as u64)));
                }
                Ok::<_, BoxError>(appended)
            }));
        }
    }
    let mut reported = Vec::new();
    for task in tasks {
        reported.extend(task.await??);
    }
    assert_eq!(reported.len(), HANDLERS * TASKS * COMMANDS);

    let store = handlers[0].store().clone();
    let stream = CommandHandler::<Counter, strata_store_postgres::PgEventStore>::stream_id("shared")?;
    let stored = store.read_stream_to_end(&stream, 1, 1000).await?;
    let versions: Vec<u64> = stored.iter().map(|e| e.stream_version).collect();
    assert_eq!(versions, (1..=reported.len() as u64).collect::<Vec<_>>());
    let stored_ids: HashSet<Uuid> = stored.iter().map(|e| e.event_id).collect();
    let reported_ids: HashSet<Uuid> = reported.iter().map(|(id, _)| *id).collect();
    assert_eq!(stored_ids.len(), stored.len(), "an event is stored twice");
    assert_eq!(stored_ids, reported_ids, "accepted and stored events differ");

    let total: u64 = reported.iter().map(|(_, n)| n).sum();
    let uncached = CommandHandler::<Counter, _>::new(store);
    assert_eq!(
        uncached.load("shared").await?,
        (Counter { total }, stored.len() as u64)
    );
    for handler in &handlers {
        assert_eq!(
            handler.load("shared").await?,
            (Counter { total }, stored.len() as u64)
        );
    }
    let stale_refreshes: u64 = handlers
        .iter()
        .map(|h| h.cache_stats().map_or(0, |s| s.stale_refreshes))
        .sum();
    assert!(stale_refreshes > 0, "the handlers must have collided");
    Ok(())
}
