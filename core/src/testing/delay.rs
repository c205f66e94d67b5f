//! A store wrapper that widens the window between load and append, so
//! concurrent writers really do collide in tests and demos, and that can
//! hold an append until a test lets it go.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;

use uuid::Uuid;

use crate::error::Result;
use crate::event::{NewEvent, RecordedEvent, StreamId};
use crate::store::{
    AppendResult, CommandRecord, EventStore, ExpectedVersion, FoldEvent, Snapshot, Subscription,
};

/// Wraps an [`EventStore`] and waits `delay` before every append (with or
/// without command records), as a slow network would. Everything else
/// passes straight through. Clones share the count of appends and the
/// holds.
#[derive(Debug, Clone)]
pub struct DelayedAppends<S> {
    inner: S,
    delay: Duration,
    appends: Arc<AtomicUsize>,
    holds: Arc<Mutex<VecDeque<Held>>>,
    snapshot_holds: Arc<Mutex<VecDeque<Held>>>,
}

/// An append held by [`DelayedAppends::hold_next`]: it waits until
/// [`release`](Held::release).
#[derive(Debug, Clone)]
pub struct Held {
    entered: watch::Sender<bool>,
    released: watch::Sender<bool>,
}

impl Held {
    /// Wait until the held append has been called and is waiting.
    pub async fn entered(&self) {
        let _ = self.entered.subscribe().wait_for(|&entered| entered).await;
    }

    /// Let the held append go on.
    pub fn release(&self) {
        self.released.send_replace(true);
    }

    async fn wait(&self) {
        self.entered.send_replace(true);
        let _ = self.released.subscribe().wait_for(|&released| released).await;
    }
}

impl<S> DelayedAppends<S> {
    /// Wrap `inner`, delaying each append by `delay`.
    pub fn new(inner: S, delay: Duration) -> Self {
        DelayedAppends {
            inner,
            delay,
            appends: Arc::default(),
            holds: Arc::default(),
            snapshot_holds: Arc::default(),
        }
    }

    /// How many appends were called so far, of every kind.
    pub fn appends(&self) -> usize {
        self.appends.load(Ordering::SeqCst)
    }

    /// Hold the next append that has not been held yet: it is counted,
    /// then waits until the returned [`Held`] is released, then waits the
    /// delay and goes on. Holds are taken by appends in the order they
    /// were made.
    pub fn hold_next(&self) -> Held {
        push_hold(&self.holds)
    }

    /// Hold the next snapshot save that has not been held yet, as
    /// [`hold_next`](Self::hold_next) does appends (without a delay).
    pub fn hold_next_snapshot(&self) -> Held {
        push_hold(&self.snapshot_holds)
    }

    /// Count an append, wait out its hold if one is set, then the delay.
    async fn before_append(&self) {
        self.appends.fetch_add(1, Ordering::SeqCst);
        wait_hold(&self.holds).await;
        futures_timer::Delay::new(self.delay).await;
    }

    /// The wrapped store.
    pub fn inner(&self) -> &S {
        &self.inner
    }
}

fn push_hold(holds: &Mutex<VecDeque<Held>>) -> Held {
    let held = Held {
        entered: watch::channel(false).0,
        released: watch::channel(false).0,
    };
    holds
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .push_back(held.clone());
    held
}

async fn wait_hold(holds: &Mutex<VecDeque<Held>>) {
    let hold = holds.lock().unwrap_or_else(|p| p.into_inner()).pop_front();
    if let Some(hold) = hold {
        hold.wait().await;
    }
}

impl<S: EventStore> EventStore for DelayedAppends<S> {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.before_append().await;
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

    async fn read_stream_for_fold(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<FoldEvent>> {
        self.inner
            .read_stream_for_fold(stream, from_version, max_count)
            .await
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
        wait_hold(&self.snapshot_holds).await;
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
        self.before_append().await;
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
        self.before_append().await;
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

    async fn read_commands(&self, command_ids: &[Uuid]) -> Result<Vec<CommandRecord>> {
        self.inner.read_commands(command_ids).await
    }
}
