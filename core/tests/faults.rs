//! Stored data the handler and subscriptions must not trust: a stream with
//! a hole, a log read that keeps failing, an event no reader can decode.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use strata_core::error::BoxError;
use strata_core::store::{CommandRecord, follow};
use strata_core::testing::fixtures::bank::{BankAccount, BankCommand};
use strata_core::{
    AppendResult, CommandError, CommandHandler, Error, EventStore, ExpectedVersion, InMemoryEventStore,
    NewEvent, RecordedEvent, Result, Snapshot, StreamId, Subscription,
};
use uuid::Uuid;

/// What a [`Faulty`] store does wrong.
#[derive(Debug, Clone, Copy)]
enum Fault {
    /// Stream reads leave out this version, as if a row had been moved.
    Hole(u64),
    /// Every read of the global log fails.
    FailingLog,
    /// The event at this position of the global log cannot be decoded.
    Undecodable(u64),
}

#[derive(Debug, Clone)]
struct Faulty {
    inner: InMemoryEventStore,
    fault: Fault,
    log_reads: Arc<AtomicUsize>,
}

impl Faulty {
    fn new(fault: Fault) -> Self {
        Faulty {
            inner: InMemoryEventStore::new(),
            fault,
            log_reads: Arc::default(),
        }
    }
}

impl EventStore for Faulty {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let mut page = self.inner.read_stream(stream, from_version, max_count).await?;
        if let Fault::Hole(missing) = self.fault {
            page.retain(|e| e.stream_version != missing);
        }
        Ok(page)
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(&self, after_position: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        self.log_reads.fetch_add(1, Ordering::Relaxed);
        match self.fault {
            Fault::FailingLog => Err(Error::Connection("the server went away".into())),
            Fault::Undecodable(bad) if after_position < bad => {
                let mut page = self.inner.read_all(after_position, max_count).await?;
                if page.first().is_some_and(|e| e.global_position == bad) {
                    return Err(Error::UndecodableEvent {
                        event_id: page[0].event_id,
                        global_position: bad,
                        reason: "metadata is not an object".into(),
                    });
                }
                page.retain(|e| e.global_position < bad);
                Ok(page)
            }
            _ => self.inner.read_all(after_position, max_count).await,
        }
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        self.inner.read_event(event_id).await
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        self.inner.save_snapshot(snapshot).await
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        self.inner.load_snapshot(stream).await
    }

    fn subscribe(&self, after_position: u64) -> Subscription {
        // Caught up: wait a moment, as a poll would.
        follow(self.clone(), after_position, 2, |_| async {
            futures_timer::Delay::new(Duration::from_millis(1)).await;
            Ok(())
        })
    }

    async fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> Result<AppendResult> {
        self.inner
            .append_command(stream, expected, events, command_id)
            .await
    }

    async fn append_commands(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        records: Vec<CommandRecord>,
    ) -> Result<AppendResult> {
        self.inner
            .append_commands(stream, expected, events, records)
            .await
    }

    async fn record_command(&self, record: CommandRecord) -> Result<Option<CommandRecord>> {
        self.inner.record_command(record).await
    }

    async fn read_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>> {
        self.inner.read_command(command_id).await
    }
}

#[tokio::test]
async fn a_hole_in_a_stream_is_a_typed_corruption_error() -> Result<(), BoxError> {
    let store = Faulty::new(Fault::Hole(2));
    let intact = CommandHandler::<BankAccount, _>::new(store.inner.clone());
    intact
        .execute("acc", BankCommand::Open { owner: "ada".into() })
        .await?;
    intact.execute("acc", BankCommand::Deposit { amount: 5 }).await?;
    intact.execute("acc", BankCommand::Deposit { amount: 7 }).await?;
    // The same stream, read with version 2 gone.
    let handler = CommandHandler::<BankAccount, _>::new(store.clone());
    let err = handler.load("acc").await.unwrap_err();
    assert!(
        matches!(err, Error::StreamCorrupted { ref stream, missing_version: 2 } if stream == "account-acc"),
        "{err:?}"
    );
    assert!(err.to_string().contains("version 2 is missing"), "{err}");
    let err = handler
        .execute("acc", BankCommand::Withdraw { amount: 7 })
        .await
        .unwrap_err();
    assert!(
        matches!(err, CommandError::Store(Error::StreamCorrupted { .. })),
        "{err:?}"
    );
    let stream = StreamId::new("account-acc")?;
    assert_eq!(
        store.stream_version(&stream).await?,
        3,
        "nothing appended on a corrupted stream"
    );
    Ok(())
}

#[tokio::test]
async fn a_failing_log_read_is_retried_with_back_off() -> Result<(), BoxError> {
    let store = Faulty::new(Fault::FailingLog);
    let mut feed = store.subscribe(0);
    let started = Instant::now();
    let mut errors = 0;
    while started.elapsed() < Duration::from_secs(1) {
        match tokio::time::timeout(Duration::from_millis(100), feed.next()).await {
            Ok(Some(Err(e))) => {
                assert!(matches!(e, Error::Connection(_)), "{e:?}");
                errors += 1;
            }
            Ok(other) => panic!("only errors expected, got {other:?}"),
            Err(_) => {}
        }
    }
    // 50 ms, 100 ms, 200 ms, 400 ms apart: a handful, not thousands.
    let reads = store.log_reads.load(Ordering::Relaxed);
    assert!(errors >= 2, "errors must still be delivered: {errors}");
    assert!(reads <= 8, "{reads} failed reads in one second: no back-off");
    Ok(())
}

#[tokio::test]
async fn an_undecodable_event_stands_in_its_place_and_the_feed_goes_on() -> Result<(), BoxError> {
    let store = Faulty::new(Fault::Undecodable(3));
    let handler = CommandHandler::<BankAccount, _>::new(store.clone());
    handler
        .execute("acc", BankCommand::Open { owner: "ada".into() })
        .await?;
    for amount in 1..=4 {
        handler.execute("acc", BankCommand::Deposit { amount }).await?;
    }
    let mut feed = store.subscribe(0);
    let mut seen = Vec::new();
    for _ in 0..5 {
        match tokio::time::timeout(Duration::from_secs(5), feed.next()).await? {
            Some(Ok(e)) => seen.push(Ok(e.global_position)),
            Some(Err(Error::UndecodableEvent { global_position, .. })) => seen.push(Err(global_position)),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(seen, vec![Ok(1), Ok(2), Err(3), Ok(4), Ok(5)]);
    Ok(())
}
