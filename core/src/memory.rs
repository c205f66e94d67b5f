//! The in-memory event store: the embedded default for examples, tests and
//! users' unit tests. It honours the whole [`EventStore`] contract.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};

use chrono::Utc;
use tokio::sync::watch;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{NewEvent, RecordedEvent, StreamId};
use crate::store::{
    AppendResult, CommandDecision, CommandRecord, EventStore, ExpectedVersion, Snapshot, Subscription,
    check_command_records, follow, idempotent_outcome,
};

/// Default limit on one event's encoded payload plus metadata: 1 MiB.
pub const DEFAULT_MAX_EVENT_SIZE: usize = 1 << 20;

#[derive(Debug, Default)]
struct State {
    log: Vec<RecordedEvent>,
    streams: HashMap<StreamId, Vec<usize>>,
    by_id: HashMap<Uuid, usize>,
    snapshots: HashMap<StreamId, Snapshot>,
    commands: HashMap<Uuid, CommandRecord>,
}

#[derive(Debug)]
struct Inner {
    state: Mutex<State>,
    head: watch::Sender<u64>,
    max_event_size: usize,
}

/// An [`EventStore`] held in process memory. Cloning shares the store.
///
/// Positions are contiguous from 1. Nothing survives the process.
#[derive(Debug, Clone)]
pub struct InMemoryEventStore {
    inner: Arc<Inner>,
}

impl Default for InMemoryEventStore {
    fn default() -> Self {
        Self::new()
    }
}

impl InMemoryEventStore {
    /// An empty store.
    pub fn new() -> Self {
        Self::with_max_event_size(DEFAULT_MAX_EVENT_SIZE)
    }

    /// An empty store refusing events whose payload plus metadata exceed
    /// `max_event_size` bytes.
    pub fn with_max_event_size(max_event_size: usize) -> Self {
        InMemoryEventStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State::default()),
                head: watch::channel(0).0,
                max_event_size,
            }),
        }
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding the lock cannot leave the state half-written:
        // every mutation below happens after all checks.
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Append under the lock; with a command id, also record the command,
    /// or store nothing if the id has a record; with `records`, store them
    /// too (see [`EventStore::append_commands`]).
    fn append_now(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: Option<Uuid>,
        records: Vec<CommandRecord>,
    ) -> Result<AppendResult> {
        for e in &events {
            e.validate(self.inner.max_event_size)?;
        }
        NewEvent::check_unique_ids(&events)?;
        check_command_records(stream, expected, events.len(), &records)?;
        let mut st = self.state();
        if let Some(command_id) = command_id
            && st.commands.contains_key(&command_id)
        {
            return Err(Error::CommandAlreadyRecorded { command_id });
        }
        let stored: Vec<RecordedEvent> = events
            .iter()
            .filter_map(|e| st.by_id.get(&e.event_id).map(|&i| st.log[i].clone()))
            .collect();
        if let Some(outcome) = idempotent_outcome(stream, &events, &stored)? {
            return Ok(outcome);
        }
        if let Some(taken) = records.iter().find(|r| st.commands.contains_key(&r.command_id)) {
            return Err(Error::CommandAlreadyRecorded {
                command_id: taken.command_id,
            });
        }
        let actual = st.streams.get(stream).map_or(0, |v| v.len() as u64);
        if !expected.admits(actual) {
            return Err(Error::Conflict {
                stream: stream.to_string(),
                expected,
                actual,
            });
        }
        let now = Utc::now();
        let mut positions = Vec::with_capacity(events.len());
        for (i, e) in events.into_iter().enumerate() {
            let index = st.log.len();
            let position = index as u64 + 1;
            st.by_id.insert(e.event_id, index);
            st.streams.entry(stream.clone()).or_default().push(index);
            st.log.push(RecordedEvent {
                event_id: e.event_id,
                stream_id: stream.clone(),
                stream_version: actual + 1 + i as u64,
                global_position: position,
                event_type: e.event_type,
                schema_version: e.schema_version,
                payload: e.payload,
                metadata: e.metadata,
                recorded_at: now,
            });
            positions.push(position);
        }
        let stream_version = actual + positions.len() as u64;
        if let Some(command_id) = command_id
            && !positions.is_empty()
        {
            st.commands.insert(
                command_id,
                CommandRecord {
                    command_id,
                    stream_id: stream.clone(),
                    decision: CommandDecision::Appended {
                        first_version: actual + 1,
                        last_version: stream_version,
                    },
                },
            );
        }
        for record in records {
            st.commands.insert(record.command_id, record);
        }
        let head = st.log.len() as u64;
        drop(st);
        self.inner.head.send_replace(head);
        Ok(AppendResult {
            stream_version,
            positions,
        })
    }
}

impl EventStore for InMemoryEventStore {
    async fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> Result<AppendResult> {
        self.append_now(stream, expected, events, None, Vec::new())
    }

    async fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> Result<Vec<RecordedEvent>> {
        let st = self.state();
        let Some(indexes) = st.streams.get(stream) else {
            return Ok(Vec::new());
        };
        let skip = from_version.saturating_sub(1) as usize;
        Ok(indexes
            .iter()
            .skip(skip)
            .take(max_count)
            .map(|&i| st.log[i].clone())
            .collect())
    }

    async fn stream_version(&self, stream: &StreamId) -> Result<u64> {
        Ok(self.state().streams.get(stream).map_or(0, |v| v.len() as u64))
    }

    async fn read_all(&self, after_position: u64, max_count: usize) -> Result<Vec<RecordedEvent>> {
        let st = self.state();
        let start = (after_position as usize).min(st.log.len());
        Ok(st.log[start..].iter().take(max_count).cloned().collect())
    }

    async fn read_event(&self, event_id: Uuid) -> Result<Option<RecordedEvent>> {
        let st = self.state();
        Ok(st.by_id.get(&event_id).map(|&i| st.log[i].clone()))
    }

    async fn save_snapshot(&self, snapshot: Snapshot) -> Result<()> {
        let mut st = self.state();
        let newer = st
            .snapshots
            .get(&snapshot.stream_id)
            .is_none_or(|old| old.stream_version <= snapshot.stream_version);
        if newer {
            st.snapshots.insert(snapshot.stream_id.clone(), snapshot);
        }
        Ok(())
    }

    async fn load_snapshot(&self, stream: &StreamId) -> Result<Option<Snapshot>> {
        Ok(self.state().snapshots.get(stream).cloned())
    }

    async fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> Result<AppendResult> {
        self.append_now(stream, expected, events, Some(command_id), Vec::new())
    }

    async fn append_commands(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        records: Vec<CommandRecord>,
    ) -> Result<AppendResult> {
        self.append_now(stream, expected, events, None, records)
    }

    async fn record_command(&self, record: CommandRecord) -> Result<Option<CommandRecord>> {
        let mut st = self.state();
        if let Some(first) = st.commands.get(&record.command_id) {
            return Ok(Some(first.clone()));
        }
        st.commands.insert(record.command_id, record);
        Ok(None)
    }

    async fn read_command(&self, command_id: Uuid) -> Result<Option<CommandRecord>> {
        Ok(self.state().commands.get(&command_id).cloned())
    }

    fn subscribe(&self, after_position: u64) -> Subscription {
        let head = self.inner.head.subscribe();
        follow(self.clone(), after_position, 512, move |position| {
            let mut head = head.clone();
            async move {
                head.wait_for(|&h| h > position)
                    .await
                    .map_err(|_| Error::Closed)?;
                Ok(())
            }
        })
    }
}
