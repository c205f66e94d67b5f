//! Command handling: load, decide, append, and retry on conflict.

use std::collections::BTreeMap;
use std::marker::PhantomData;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use tracing::Instrument;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::error::Error;
use crate::event::{Envelope, Event, Metadata, NewEvent, RecordedEvent, StreamId};
use crate::store::{EventStore, ExpectedVersion, Snapshot};
use crate::upcast::Upcasters;

/// Tuning of a [`CommandHandler`].
#[derive(Debug, Clone)]
pub struct CommandHandlerOptions {
    /// How many times a command is decided again after a version conflict.
    pub max_retries: usize,
    /// First back-off delay after a conflict (doubled each time, with jitter).
    pub min_backoff: Duration,
    /// Longest back-off delay.
    pub max_backoff: Duration,
    /// Save a snapshot each time the stream crosses a multiple of this many
    /// events. With `None` the handler neither saves nor loads snapshots
    /// (saving a query per load when no snapshots exist).
    pub snapshot_every: Option<u64>,
    /// Page size when reading a stream.
    pub read_batch: usize,
}

impl Default for CommandHandlerOptions {
    fn default() -> Self {
        CommandHandlerOptions {
            max_retries: 10,
            min_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(250),
            snapshot_every: None,
            read_batch: 1000,
        }
    }
}

/// What a command carries besides itself: its id and the metadata its
/// events inherit.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// A caller-chosen id. Submitting the same id again appends nothing and
    /// returns the first outcome. Without one, a fresh id is generated and
    /// no de-duplication happens.
    pub command_id: Option<Uuid>,
    /// Correlation id; defaults to the command id.
    pub correlation_id: Option<Uuid>,
    /// W3C `traceparent` of the caller.
    pub traceparent: Option<String>,
    /// Tenant id.
    pub tenant_id: Option<String>,
    /// Free-form headers copied onto every event.
    pub headers: BTreeMap<String, String>,
}

impl CommandContext {
    /// A context with a caller-chosen command id (enables de-duplication).
    pub fn with_id(command_id: Uuid) -> Self {
        CommandContext {
            command_id: Some(command_id),
            ..Self::default()
        }
    }
}

/// The result of a command that was accepted.
#[derive(Debug, Clone)]
pub struct CommandOutcome<E> {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// The stream version after this command's events.
    pub stream_version: u64,
    /// The events the command produced (empty if it changed nothing).
    pub events: Vec<Envelope<E>>,
    /// How many times the command was decided again after a conflict.
    pub retries: usize,
    /// Whether this outcome is that of an earlier submission of the same
    /// command id, returned without deciding again.
    pub deduplicated: bool,
}

/// Why a command did not produce events.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError<E: std::error::Error + 'static> {
    /// The aggregate refused the command.
    #[error("command refused")]
    Domain(#[source] E),
    /// Conflicts went on after every retry.
    #[error("stream `{stream}` still conflicted after {attempts} attempts")]
    TooManyConflicts {
        /// The contended stream.
        stream: String,
        /// Attempts made.
        attempts: usize,
        /// The last conflict.
        #[source]
        last: Error,
    },
    /// The store failed, or a stored event could not be read.
    #[error("event store failure")]
    Store(#[from] Error),
}

impl<E: std::error::Error + 'static> CommandError<E> {
    /// The domain error, if the aggregate refused the command.
    pub fn domain(&self) -> Option<&E> {
        match self {
            CommandError::Domain(e) => Some(e),
            _ => None,
        }
    }
}

/// Loads aggregates, runs commands against them and appends the result.
///
/// Each command runs in a `tracing` span `command` with the aggregate type,
/// stream, command id and correlation id. The append is guarded by the
/// version that was loaded; on a conflict the aggregate is reloaded and the
/// command decided again, up to [`CommandHandlerOptions::max_retries`]
/// times with exponential back-off.
#[derive(Debug, Clone)]
pub struct CommandHandler<A, S> {
    store: S,
    upcasters: Upcasters,
    options: CommandHandlerOptions,
    _aggregate: PhantomData<fn() -> A>,
}

impl<A: Aggregate, S: EventStore> CommandHandler<A, S> {
    /// A handler with default options and no upcasters.
    pub fn new(store: S) -> Self {
        Self::with_options(store, Upcasters::new(), CommandHandlerOptions::default())
    }

    /// A handler with explicit upcasters and options.
    pub fn with_options(store: S, upcasters: Upcasters, options: CommandHandlerOptions) -> Self {
        CommandHandler {
            store,
            upcasters,
            options,
            _aggregate: PhantomData,
        }
    }

    /// The store this handler writes to.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// The stream of aggregate `id`.
    pub fn stream_id(id: &str) -> Result<StreamId, Error> {
        StreamId::for_aggregate(A::TYPE, id)
    }

    /// Load aggregate `id`: its latest usable snapshot (when snapshots are
    /// enabled) plus the events after it. Returns the state and the stream version it reflects.
    pub async fn load(&self, id: &str) -> Result<(A, u64), Error> {
        self.load_stream(&Self::stream_id(id)?).await
    }

    async fn load_stream(&self, stream: &StreamId) -> Result<(A, u64), Error> {
        let snapshot = match self.options.snapshot_every {
            Some(_) => self.store.load_snapshot(stream).await?,
            None => None,
        };
        let (mut state, mut version) = match snapshot {
            Some(s) if s.schema_version == A::SNAPSHOT_VERSION => {
                match serde_json::from_value::<A>(s.state) {
                    Ok(state) => (state, s.stream_version),
                    Err(e) => {
                        tracing::warn!(stream = %stream, error = %e, "ignoring undecodable snapshot");
                        (A::default(), 0)
                    }
                }
            }
            _ => (A::default(), 0),
        };
        // Page by page: a long stream is never held in memory whole.
        let batch = self.options.read_batch.max(1);
        loop {
            let page = self.store.read_stream(stream, version + 1, batch).await?;
            let full = page.len() == batch;
            for recorded in page {
                version = recorded.stream_version;
                let event: A::Event =
                    self.upcasters
                        .decode(&recorded.event_type, recorded.schema_version, recorded.payload)?;
                state.apply(&event);
            }
            if !full {
                break;
            }
        }
        Ok((state, version))
    }

    /// Run `command` against aggregate `id` with a fresh command id.
    pub async fn execute(
        &self,
        id: &str,
        command: A::Command,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        self.execute_with(id, command, CommandContext::default()).await
    }

    /// Run `command` against aggregate `id` with the given context.
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        ctx: CommandContext,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let stream = Self::stream_id(id)?;
        let explicit_id = ctx.command_id.is_some();
        let command_id = ctx.command_id.unwrap_or_else(Uuid::now_v7);
        let correlation_id = ctx.correlation_id.unwrap_or(command_id);
        let span = tracing::info_span!(
            "command",
            aggregate = A::TYPE,
            stream = %stream,
            command_id = %command_id,
            correlation_id = %correlation_id,
        );
        let metadata = Metadata {
            correlation_id: Some(correlation_id),
            causation_id: Some(command_id),
            traceparent: ctx.traceparent,
            tenant_id: ctx.tenant_id,
            headers: ctx.headers,
        };
        self.run(stream, command, command_id, explicit_id, metadata)
            .instrument(span)
            .await
    }

    async fn run(
        &self,
        stream: StreamId,
        command: A::Command,
        command_id: Uuid,
        explicit_id: bool,
        metadata: Metadata,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        if explicit_id {
            if let Some(outcome) = self.earlier_outcome(&stream, command_id).await? {
                return Ok(outcome);
            }
        }
        let mut delays = ExponentialBuilder::default()
            .with_min_delay(self.options.min_backoff)
            .with_max_delay(self.options.max_backoff)
            .with_jitter()
            .without_max_times()
            .build();
        let mut retries = 0;
        loop {
            let (mut state, version) = self.load_stream(&stream).await?;
            let events = state.decide(&command).map_err(CommandError::Domain)?;
            if events.is_empty() {
                return Ok(CommandOutcome {
                    stream_id: stream,
                    stream_version: version,
                    events: Vec::new(),
                    retries,
                    deduplicated: false,
                });
            }
            let mut new_events = Vec::with_capacity(events.len());
            let mut ids = Vec::with_capacity(events.len());
            for (i, e) in events.iter().enumerate() {
                let mut new = NewEvent::from_event(e, metadata.clone())?;
                if explicit_id {
                    new.event_id = derived_event_id(command_id, i as u64);
                }
                ids.push(new.event_id);
                new_events.push(new);
            }
            match self
                .store
                .append(&stream, ExpectedVersion::Exact(version), new_events)
                .await
            {
                Ok(result) => {
                    for e in &events {
                        state.apply(e);
                    }
                    self.maybe_snapshot(&stream, version, result.stream_version, &state)
                        .await;
                    let envelopes = ids
                        .into_iter()
                        .zip(events)
                        .zip(result.positions.iter().copied())
                        .enumerate()
                        .map(|(i, ((event_id, event), position))| Envelope {
                            event_id,
                            stream_id: stream.clone(),
                            stream_version: version + 1 + i as u64,
                            global_position: Some(position),
                            event_type: event.event_type().to_owned(),
                            schema_version: A::Event::current_version(event.event_type()),
                            metadata: metadata.clone(),
                            recorded_at: None,
                            event,
                        })
                        .collect();
                    return Ok(CommandOutcome {
                        stream_id: stream,
                        stream_version: result.stream_version,
                        events: envelopes,
                        retries,
                        deduplicated: false,
                    });
                }
                Err(conflict @ Error::Conflict { .. }) => {
                    if explicit_id {
                        if let Some(outcome) = self.earlier_outcome(&stream, command_id).await? {
                            return Ok(outcome);
                        }
                    }
                    if retries >= self.options.max_retries {
                        return Err(CommandError::TooManyConflicts {
                            stream: stream.to_string(),
                            attempts: retries + 1,
                            last: conflict,
                        });
                    }
                    retries += 1;
                    let delay = delays.next().unwrap_or(self.options.max_backoff);
                    tracing::debug!(retries, ?delay, "version conflict, deciding again");
                    futures_timer::Delay::new(delay).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
    }

    /// The stored outcome of an earlier submission of `command_id`, if any.
    async fn earlier_outcome(
        &self,
        stream: &StreamId,
        command_id: Uuid,
    ) -> Result<Option<CommandOutcome<A::Event>>, Error> {
        let Some(first) = self.store.read_event(derived_event_id(command_id, 0)).await? else {
            return Ok(None);
        };
        let mut recorded: Vec<RecordedEvent> = Vec::new();
        let mut from = first.stream_version;
        'pages: loop {
            let page = self
                .store
                .read_stream(&first.stream_id, from, self.options.read_batch)
                .await?;
            let full = page.len() == self.options.read_batch;
            for e in page {
                if e.event_id != derived_event_id(command_id, recorded.len() as u64) {
                    break 'pages;
                }
                from = e.stream_version + 1;
                recorded.push(e);
            }
            if !full {
                break;
            }
        }
        let events = recorded
            .iter()
            .map(|r| r.decode::<A::Event>(&self.upcasters))
            .collect::<Result<Vec<_>, _>>()?;
        tracing::debug!(
            events = events.len(),
            "command id seen before, returning its outcome"
        );
        Ok(Some(CommandOutcome {
            stream_id: stream.clone(),
            stream_version: recorded.last().map_or(first.stream_version, |e| e.stream_version),
            events,
            retries: 0,
            deduplicated: true,
        }))
    }

    async fn maybe_snapshot(&self, stream: &StreamId, before: u64, after: u64, state: &A) {
        let Some(every) = self.options.snapshot_every.filter(|&n| n > 0) else {
            return;
        };
        if after / every == before / every {
            return;
        }
        let saved = match serde_json::to_value(state) {
            Ok(value) => {
                self.store
                    .save_snapshot(Snapshot {
                        stream_id: stream.clone(),
                        stream_version: after,
                        schema_version: A::SNAPSHOT_VERSION,
                        state: value,
                    })
                    .await
            }
            Err(e) => Err(Error::encode(A::TYPE, e)),
        };
        // The events are committed; a missing snapshot only costs a longer load.
        if let Err(e) = saved {
            tracing::warn!(error = %e, "snapshot not saved");
        }
    }
}

/// The id of the `index`-th event produced by command `command_id`: stable
/// across retries and processes, so a re-submitted command's events are
/// recognised by the store. It is a UUID v7 carrying the command id's
/// timestamp when the command id is itself a v7.
pub fn derived_event_id(command_id: Uuid, index: u64) -> Uuid {
    let mut bytes = *Uuid::new_v5(&command_id, &index.to_be_bytes()).as_bytes();
    if command_id.get_version_num() == 7 {
        bytes[..6].copy_from_slice(&command_id.as_bytes()[..6]);
    }
    uuid::Builder::from_bytes(bytes)
        .with_version(uuid::Version::SortRand)
        .with_variant(uuid::Variant::RFC4122)
        .into_uuid()
}
