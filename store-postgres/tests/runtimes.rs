//! A store is used from several Tokio runtimes in turn (as `#[tokio::test]`
//! functions sharing one store do): the end of the runtime that first used
//! it must not break it.

use std::time::Duration;

use futures_util::StreamExt;
use serde_json::json;
use strata_core::error::BoxError;
use strata_core::{EventStore, ExpectedVersion, StreamId};
use strata_store_postgres::PgEventStoreOptions;
use strata_store_postgres::testing::{fresh_database_url, new_event, wait_until_listening};

fn runtime(multi_thread: bool) -> std::io::Result<tokio::runtime::Runtime> {
    if multi_thread {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    }
}

#[test]
fn a_store_outlives_the_current_thread_runtime_that_first_used_it() -> Result<(), BoxError> {
    outlive_the_first_runtime(false)
}

#[test]
fn a_store_outlives_the_multi_thread_runtime_that_first_used_it() -> Result<(), BoxError> {
    outlive_the_first_runtime(true)
}

fn outlive_the_first_runtime(multi_thread: bool) -> Result<(), BoxError> {
    let stream = StreamId::new("runtimes")?;
    let first = runtime(multi_thread)?;
    let (url, _db) = first.block_on(fresh_database_url())?;
    let store = first.block_on(PgEventStoreOptions::new(&url).connect())?;
    // The first append starts the store's notification publisher here.
    first.block_on(store.append(&stream, ExpectedVersion::NoStream, vec![new_event("A", json!(1))]))?;
    drop(first);

    let second = runtime(multi_thread)?;
    second.block_on(async {
        // Another process, polling only every 600 s: only the store's
        // notification can wake it in time.
        let watcher = PgEventStoreOptions::new(&url)
            .poll_interval(Duration::from_secs(600))
            .connect()
            .await?;
        let mut feed = watcher.subscribe(0);
        let seen = tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await?
            .ok_or("ended")??;
        assert_eq!(seen.stream_version, 1);
        wait_until_listening(&watcher, &mut feed).await?;

        store
            .append(&stream, ExpectedVersion::Exact(1), vec![new_event("A", json!(2))])
            .await?;
        let next = tokio::time::timeout(Duration::from_secs(20), feed.next())
            .await
            .map_err(|_| "no notification from the store once its first runtime had ended")?
            .ok_or("ended")??;
        assert_eq!(next.stream_version, 2);
        Ok::<_, BoxError>(())
    })?;
    Ok(())
}
