//! A store wrapper that widens the window between load and append, so
//! concurrent writers really do collide in tests and demos.

use std::time::Duration;

use uuid::Uuid;

use crate::error::Result;
use crate::event::{NewEvent, RecordedEvent, StreamId};
use crate::store::{AppendResult, CommandRecord, EventStore, ExpectedVersion, Snapshot, Subscription};

/// Wraps an [`EventStore`] and waits `delay` before every append (with or
/// without a command record), as a slow network would. Everything else
/// passes straight through.
#[derive(Debug, Clone)]
pub struct DelayedAppends<S> {
    inner: S,
    delay: Duration,
}

impl<S> DelayedAppends<S> {
    /// Wrap `inner`, delaying each append by `delay`.
    pub fn new(inner: S, delay: Duration) -> Self {
        DelayedAppends { inner, delay }
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

impl<S: EventStore> EventStore for DelayedAppends<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        futures_timer::Delay::new(self.delay).await;
        self.inner.append(stream, expected, events).await
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        self.inner.read_stream(stream, from_version, max_count).await
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        self.inner.stream_version(stream).await
    }

    async fn read_all(&self, after_position: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        self.inner.read_all(after_position, max_count).await
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
        self.inner.subscribe(after_position)
    }

    async fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> Result<AppendResult> {
        futures_timer::Delay::new(self.delay).await;
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
        futures_timer::Delay::new(self.delay).await;
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
