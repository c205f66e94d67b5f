//! Command handling: load, decide, append, and retry on conflict.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tracing::Instrument;
use uuid::Uuid;

use crate::aggregate::Aggregate;
use crate::error::{Error, Preview};
use crate::event::{Envelope, Event, MAX_JSON_DEPTH, Metadata, NewEvent, StreamId, json_depth};
use crate::store::{CommandDecision, CommandRecord, EventStore, ExpectedVersion, FoldEvent, Snapshot};
use crate::upcast::Upcasters;

mod batch;
mod cache;

use batch::{Job, Lines};

use cache::AggregateCache;
pub use cache::{CacheOptions, CacheStats};

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
    /// Save the snapshots `snapshot_every` asks for on a task of their own
    /// (default `true`), so a command's caller does not wait for them: the
    /// command's outcome comes back once its events are appended. Needs a
    /// Tokio runtime; without one, or with `false`, a snapshot is saved
    /// before the outcome is returned. A snapshot not saved (a failure, or
    /// a process ending first) only makes later loads read more events.
    pub snapshot_in_background: bool,
    /// Page size when reading a stream.
    pub read_batch: usize,
    /// At most this many commands for one stream are decided together and
    /// appended in one write (default 100; 1 appends each on its own,
    /// still one at a time per stream). See [`CommandHandler`].
    pub max_batch: usize,
    /// Keep the last known state and version of each stream in memory,
    /// within these bounds, and decide commands on it instead of loading
    /// the stream each time. On by default, with [`CacheOptions::default`];
    /// `None` turns it off (every command then loads its stream).
    ///
    /// A command decides on the cached state and appends at the cached
    /// version; if the store refuses that version (another handler or
    /// process appended meanwhile), the handler reads only the events after
    /// it, folds them on, and decides again (a retry, with the same budget
    /// and back-off as without the cache). Before an outcome that appends
    /// nothing (a refusal, or no change) is returned or recorded, the
    /// events after the cached version are read the same way, since no
    /// append checks it. [`load`](CommandHandler::load) and
    /// [`decide`](CommandHandler::decide) start from the cached state and
    /// read the events after it, so they never return a state behind
    /// what a load without the cache would. The cache is shared by every
    /// clone of the handler; [`CommandHandler::cache_stats`] counts what it
    /// did. A failure of the store drops the stream's entry.
    pub cache: Option<CacheOptions>,
}

impl Default for CommandHandlerOptions {
    fn default() -> Self {
        CommandHandlerOptions {
            max_retries: 10,
            min_backoff: Duration::from_millis(2),
            max_backoff: Duration::from_millis(250),
            snapshot_every: None,
            snapshot_in_background: true,
            read_batch: 1000,
            max_batch: 100,
            cache: Some(CacheOptions::default()),
        }
    }
}

/// A point in an aggregate's past, for [`CommandHandler::load_as_of`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum AsOf {
    /// Just after the event at this stream version (0: before the first).
    Version(u64),
    /// Just before the first event recorded after this instant.
    Time(DateTime<Utc>),
}

/// What a command carries besides itself: its id and the metadata its
/// events inherit.
#[derive(Debug, Clone, Default)]
pub struct CommandContext {
    /// A caller-chosen id. The first outcome of the command (its events, a
    /// refusal, or no change) is recorded in the store under this id, and
    /// submitting the same id again, from any process, appends nothing and
    /// returns that outcome; submitting it for another stream is
    /// [`CommandError::CommandIdReused`]. Without one, a fresh id is
    /// generated and no de-duplication happens.
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
    /// The command id (the caller's, or a fresh one) and the metadata its
    /// events carry: causation is the command, correlation the caller's or
    /// the command id.
    fn into_metadata(self) -> (Uuid, Metadata) {
        let command_id = self.command_id.unwrap_or_else(Uuid::now_v7);
        let metadata = Metadata {
            correlation_id: Some(self.correlation_id.unwrap_or(command_id)),
            causation_id: Some(command_id),
            traceparent: self.traceparent,
            tenant_id: self.tenant_id,
            headers: self.headers,
        };
        (command_id, metadata)
    }

    /// A context with a caller-chosen command id (enables de-duplication).
    pub fn with_id(command_id: Uuid) -> Self {
        CommandContext {
            command_id: Some(command_id),
            ..Self::default()
        }
    }
}

/// A command decided by [`CommandHandler::decide`], not appended.
#[derive(Debug, Clone)]
pub struct Decided<E> {
    /// The aggregate's stream.
    pub stream_id: StreamId,
    /// What to append with: the version the decision was made on.
    pub expected: ExpectedVersion,
    /// The events to append, encoded (empty if the command changes nothing).
    pub events: Vec<NewEvent>,
    /// The same events, typed.
    pub decided: Vec<E>,
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
    /// The aggregate refused the command (now, or when its command id was
    /// first submitted).
    #[error("command refused: {0}")]
    Domain(E),
    /// Conflicts went on after every retry.
    #[error("gave up after {attempts} attempts: {last}")]
    TooManyConflicts {
        /// The contended stream.
        stream: String,
        /// Attempts made.
        attempts: usize,
        /// The last conflict.
        last: Error,
    },
    /// The command id was first submitted for another stream: an id names
    /// one command, and nothing was done.
    #[error(
        "command id {command_id} was first used for stream `{}`, not `{}`: a command id names one command",
        Preview(first_stream),
        Preview(stream)
    )]
    CommandIdReused {
        /// The command id.
        command_id: Uuid,
        /// The stream it was first submitted for.
        first_stream: String,
        /// The stream it was submitted for now.
        stream: String,
    },
    /// The store failed, or a stored event could not be read.
    #[error(transparent)]
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
/// version the command was decided on; on a conflict the aggregate is
/// reloaded and the command decided again, up to
/// [`CommandHandlerOptions::max_retries`] times with exponential back-off.
/// With the aggregate cache ([`CommandHandlerOptions::cache`], on by
/// default), commands decide on the cached state instead, and a conflict
/// reads only the events after the cached version.
///
/// Commands for one stream wait their turn in the handler: they never
/// conflict with each other within a process. The commands that queue up
/// while an append is in flight are then decided one after another, each
/// on the state the ones before it left, and appended together, in one
/// write, up to [`CommandHandlerOptions::max_batch`] at a time; each keeps
/// its own outcome (see [`execute_with`](Self::execute_with)).
///
/// Clones share the store, the options, the cache and the command lines.
pub struct CommandHandler<A: Aggregate, S> {
    inner: Arc<Inner<A, S>>,
    lines: Arc<Lines<A>>,
}

/// What a handler's clones and its batches share.
struct Inner<A: Aggregate, S> {
    store: S,
    upcasters: Upcasters,
    options: CommandHandlerOptions,
    cache: Option<AggregateCache<A>>,
}

impl<A: Aggregate, S> Clone for CommandHandler<A, S> {
    fn clone(&self) -> Self {
        CommandHandler {
            inner: Arc::clone(&self.inner),
            lines: Arc::clone(&self.lines),
        }
    }
}

impl<A: Aggregate, S: fmt::Debug> fmt::Debug for CommandHandler<A, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommandHandler")
            .field("aggregate", &A::TYPE)
            .field("store", &self.inner.store)
            .field("options", &self.inner.options)
            .finish_non_exhaustive()
    }
}

impl<A: Aggregate, S: EventStore> CommandHandler<A, S> {
    /// A handler with default options and the upcasters declared with the
    /// event type ([`Event::upcasters`]).
    ///
    /// # Panics
    ///
    /// If those upcasters do not lift every event type to its current
    /// version (see [`try_with_options`](Self::try_with_options)).
    pub fn new(store: S) -> Self {
        Self::with_options(store, Upcasters::new(), CommandHandlerOptions::default())
    }

    /// A handler with explicit options, and `upcasters` added to those
    /// declared with the event type ([`Event::upcasters`]; a step given
    /// here replaces a declared one).
    ///
    /// # Panics
    ///
    /// If the upcasters do not lift every event type to its current
    /// version: a mistake to find at start-up, not on the first old event.
    /// [`try_with_options`](Self::try_with_options) returns it instead.
    pub fn with_options(store: S, upcasters: Upcasters, options: CommandHandlerOptions) -> Self {
        match Self::try_with_options(store, upcasters, options) {
            Ok(handler) => handler,
            Err(e) => panic!("command handler for aggregate `{}`: {e}", A::TYPE),
        }
    }

    /// [`with_options`](Self::with_options), answering an incomplete upcaster
    /// chain ([`Upcasters::check`]) with an error instead of a panic.
    pub fn try_with_options(
        store: S,
        upcasters: Upcasters,
        options: CommandHandlerOptions,
    ) -> Result<Self, Error> {
        let upcasters = A::Event::upcasters().merge(upcasters);
        upcasters.check::<A::Event>()?;
        Ok(CommandHandler {
            inner: Arc::new(Inner {
                store,
                upcasters,
                cache: options.cache.map(|c| AggregateCache::new(c, A::TYPE)),
                options,
            }),
            lines: Arc::default(),
        })
    }

    /// The store this handler writes to.
    pub fn store(&self) -> &S {
        &self.inner.store
    }

    /// What the aggregate cache did so far, for this handler and its
    /// clones; `None` when the cache is off ([`CommandHandlerOptions::cache`]).
    pub fn cache_stats(&self) -> Option<CacheStats> {
        self.inner.cache.as_ref().map(AggregateCache::stats)
    }

    /// The stream of aggregate `id`.
    pub fn stream_id(id: &str) -> Result<StreamId, Error> {
        StreamId::for_aggregate(A::TYPE, id)
    }

    /// Load aggregate `id`: its latest usable snapshot (when snapshots are
    /// enabled) plus the events after it. Returns the state and the stream
    /// version it reflects. A version missing from the stored stream is
    /// [`Error::StreamCorrupted`]: folding on past it would give a wrong
    /// state.
    ///
    /// With the aggregate cache on, a cached stream is read only after its
    /// cached version (one read, usually empty), and the state returned is
    /// cached.
    pub async fn load(&self, id: &str) -> Result<(A, u64), Error> {
        let stream = Self::stream_id(id)?;
        if self.inner.cache.is_none() {
            return self.inner.load_stream(&stream).await;
        }
        match self.inner.current(&stream).await {
            Ok((state, version)) => Ok((Arc::unwrap_or_clone(state), version)),
            Err(e) => {
                self.inner.forget(&stream);
                Err(e)
            }
        }
    }

    /// Load aggregate `id` as it was at a past point: the events up to
    /// that point folded through the same upcasters as
    /// [`load`](Self::load). Returns the state and the stream version it
    /// reflects.
    ///
    /// - [`AsOf::Version`]`(n)`: the events with versions 1 to `n`. A
    ///   snapshot is used only if it is at version `n` or below. Version 0
    ///   is the default state; a version past the stream's end is the state
    ///   at its end, with that end's version (not an error).
    /// - [`AsOf::Time`]`(t)`: the events up to the first one recorded after
    ///   `t` (its [`RecordedEvent::recorded_at`](crate::RecordedEvent)),
    ///   folded from the start, without snapshots (a snapshot does not say
    ///   when its last event was recorded). A time before the first event
    ///   is the default state at version 0.
    ///
    /// A missing stream is the default state at version 0, as for `load`;
    /// a missing version before the point is [`Error::StreamCorrupted`].
    ///
    /// ```
    /// use serde::{Deserialize, Serialize};
    /// use strata_core::{Aggregate, AsOf, CommandHandler, Event, InMemoryEventStore};
    ///
    /// #[derive(Debug, Clone, Serialize, Deserialize, Event)]
    /// enum CounterEvent { Added { n: u32 } }
    ///
    /// #[derive(Debug, Clone, Default, Serialize, Deserialize)]
    /// struct Counter { total: u32 }
    ///
    /// # #[derive(Debug, Serialize, Deserialize, thiserror::Error)]
    /// # #[error("never")]
    /// # struct Never;
    /// impl Aggregate for Counter {
    ///     const TYPE: &'static str = "counter";
    ///     type Command = u32;
    ///     type Event = CounterEvent;
    ///     type Error = Never;
    ///     fn decide(&self, n: &u32) -> Result<Vec<CounterEvent>, Never> {
    ///         Ok(vec![CounterEvent::Added { n: *n }])
    ///     }
    ///     fn apply(&mut self, CounterEvent::Added { n }: &CounterEvent) { self.total += n }
    /// }
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let handler = CommandHandler::<Counter, _>::new(InMemoryEventStore::new());
    /// for n in [1, 2, 3] {
    ///     handler.execute("c1", n).await?;
    /// }
    /// let (then, version) = handler.load_as_of("c1", AsOf::Version(2)).await?;
    /// assert_eq!((then.total, version), (3, 2));
    /// let (now, version) = handler.load_as_of("c1", AsOf::Time(chrono::Utc::now())).await?;
    /// assert_eq!((now.total, version), (6, 3));
    /// # Ok(()) }
    /// ```
    pub async fn load_as_of(&self, id: &str, at: AsOf) -> Result<(A, u64), Error> {
        let stream = Self::stream_id(id)?;
        match at {
            AsOf::Version(n) => {
                let (state, version) = match self.inner.snapshot(&stream).await? {
                    Some((state, version)) if version <= n => (state, version),
                    _ => (A::default(), 0),
                };
                self.inner.fold(&stream, state, version, Some(at)).await
            }
            AsOf::Time(_) => self.inner.fold(&stream, A::default(), 0, Some(at)).await,
        }
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
    ///
    /// The command waits behind the stream's commands already in this
    /// handler (or its clones), then runs in a batch with those queued
    /// beside it. In a batch, each command is decided on the state the ones
    /// before it left and keeps its own outcome: a refused command appends
    /// nothing and does not stop the others; a batch whose append conflicts
    /// is decided again as a whole; a command whose id was recorded before
    /// (even in the same batch) gets that first outcome. If the store
    /// refuses the batch's events for what they hold (too large, say), each
    /// command is appended on its own, so only the faulty one fails.
    pub async fn execute_with(
        &self,
        id: &str,
        command: A::Command,
        ctx: CommandContext,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        let stream = Self::stream_id(id)?;
        let explicit_id = ctx.command_id.is_some();
        let (command_id, metadata) = ctx.into_metadata();
        let correlation_id = metadata.correlation_id.unwrap_or(command_id);
        let span = tracing::info_span!(
            "command",
            aggregate = A::TYPE,
            stream = %stream,
            command_id = %command_id,
            correlation_id = %correlation_id,
        );
        let job = Job {
            command,
            command_id,
            explicit_id,
            metadata,
        };
        let (run, index) = self.lines.enqueue(&self.inner, &stream, job);
        let mut finish = batch::Finish::<A>(Some(run.clone()));
        let replies = batch::Quiet::new(run).instrument(span).await;
        finish.0 = None;
        batch::take::<A>(&replies, index)
    }

    /// Decide `command` against aggregate `id` without appending, for a
    /// caller that appends the events in a unit of work of its own,
    /// atomically with its own writes (a consumer's inbox row, say).
    ///
    /// Append [`Decided::events`] at [`Decided::expected`]; on a conflict,
    /// decide again. With a command id in `ctx`, the events' ids derive
    /// from it, so appending the same decision twice is an idempotent
    /// re-append; no command record is kept (the caller's own writes
    /// de-duplicate). A refusal is [`CommandError::Domain`].
    ///
    /// With the aggregate cache on, it decides on the cached state caught
    /// up with the store, as [`load`](Self::load) does.
    pub async fn decide(
        &self,
        id: &str,
        command: &A::Command,
        ctx: CommandContext,
    ) -> Result<Decided<A::Event>, CommandError<A::Error>> {
        let stream = Self::stream_id(id)?;
        let explicit_id = ctx.command_id.is_some();
        let (command_id, metadata) = ctx.into_metadata();
        let (state, version) = match self.inner.current(&stream).await {
            Ok(current) => current,
            Err(e) => {
                self.inner.forget(&stream);
                return Err(e.into());
            }
        };
        let decided = state.decide(command).map_err(CommandError::Domain)?;
        let events = encode_events::<A::Event>(&decided, command_id, explicit_id, &metadata)?;
        Ok(Decided {
            stream_id: stream,
            expected: ExpectedVersion::Exact(version),
            events,
            decided,
        })
    }

    /// Save a snapshot of aggregate `id` now, at its current version,
    /// whatever [`CommandHandlerOptions::snapshot_every`] says (for an
    /// operator, or a job that snapshots long streams off the command
    /// path). Returns the version snapshotted, or `None` for a stream with
    /// no events (nothing is saved). Loads read snapshots only when
    /// `snapshot_every` is set.
    ///
    /// A state that cannot be encoded, or that nests deeper than a reader
    /// accepts, is [`Error::Serialization`], and nothing is saved.
    pub async fn snapshot_now(&self, id: &str) -> Result<Option<u64>, Error> {
        let stream = Self::stream_id(id)?;
        let (state, version) = self.load(id).await?;
        if version == 0 {
            return Ok(None);
        }
        self.inner.save_snapshot(&stream, version, &state).await?;
        Ok(Some(version))
    }
}

impl<A: Aggregate, S: EventStore> Inner<A, S> {
    async fn load_stream(&self, stream: &StreamId) -> Result<(A, u64), Error> {
        let (state, version) = self.snapshot(stream).await?.unwrap_or_default();
        self.fold(stream, state, version, None).await
    }

    /// The state and version of the stream's latest usable snapshot, when
    /// snapshots are enabled.
    async fn snapshot(&self, stream: &StreamId) -> Result<Option<(A, u64)>, Error> {
        if self.options.snapshot_every.is_none() {
            return Ok(None);
        }
        let snapshot = match self.store.load_snapshot(stream).await {
            Ok(snapshot) => snapshot,
            // A snapshot is only a shortcut: replay instead.
            Err(e @ Error::Serialization { .. }) => {
                tracing::warn!(stream = %stream, error = %e, "ignoring unreadable snapshot");
                None
            }
            Err(e) => return Err(e),
        };
        Ok(match snapshot {
            Some(s) if s.schema_version == A::SNAPSHOT_VERSION => {
                match serde_json::from_value::<A>(s.state) {
                    Ok(state) => Some((state, s.stream_version)),
                    Err(e) => {
                        tracing::warn!(stream = %stream, error = %e, "ignoring undecodable snapshot");
                        None
                    }
                }
            }
            _ => None,
        })
    }

    /// Fold the events after `version` into `state`, up to the end of the
    /// stream or up to `until`.
    async fn fold(
        &self,
        stream: &StreamId,
        mut state: A,
        mut version: u64,
        until: Option<AsOf>,
    ) -> Result<(A, u64), Error> {
        // Page by page: a long stream is never held in memory whole.
        let batch = self.options.read_batch.max(1);
        loop {
            let wanted = match until {
                Some(AsOf::Version(last)) if version >= last => break,
                Some(AsOf::Version(last)) => {
                    usize::try_from(last - version).map_or(batch, |left| left.min(batch))
                }
                _ => batch,
            };
            let full = if let Some(AsOf::Time(t)) = until {
                // Only this reader needs each event's time.
                let page = self.store.read_stream(stream, version + 1, wanted).await?;
                let full = page.len() == wanted;
                for recorded in page {
                    if recorded.recorded_at > t {
                        return Ok((state, version));
                    }
                    self.apply_stored(stream, &mut state, &mut version, recorded.into())
                        .await?;
                }
                full
            } else {
                let page = self
                    .store
                    .read_stream_for_fold(stream, version + 1, wanted)
                    .await?;
                let full = page.len() == wanted;
                for event in page {
                    self.apply_stored(stream, &mut state, &mut version, event).await?;
                }
                full
            };
            if !full {
                break;
            }
        }
        Ok((state, version))
    }

    /// Fold `stored`, the event after `version`, into `state`. An event
    /// that does not decode is read again whole, so that a row the store
    /// cannot read either is reported as such, naming the event
    /// ([`Error::UndecodableEvent`]).
    async fn apply_stored(
        &self,
        stream: &StreamId,
        state: &mut A,
        version: &mut u64,
        stored: FoldEvent,
    ) -> Result<(), Error> {
        if stored.stream_version != *version + 1 {
            return Err(Error::StreamCorrupted {
                stream: stream.to_string(),
                missing_version: *version + 1,
            });
        }
        let at = stored.stream_version;
        let event: A::Event = match stored.decode(&self.upcasters) {
            Ok(event) => event,
            Err(error) => {
                return Err(match self.store.read_stream(stream, at, 1).await {
                    Err(named) => named,
                    Ok(_) => error,
                });
            }
        };
        *version = at;
        state.apply(&event);
        Ok(())
    }

    /// The state to decide on and its version: the cached one, not checked
    /// against the store (`fresh` false), or else the stream loaded (and
    /// cached, with the cache on).
    async fn lookup(&self, stream: &StreamId) -> Result<(Arc<A>, u64, bool), Error> {
        let Some(cache) = &self.cache else {
            let (state, version) = self.load_stream(stream).await?;
            return Ok((Arc::new(state), version, true));
        };
        if let Some((state, version)) = cache.get(stream) {
            return Ok((state, version, false));
        }
        let (state, version) = self.load_stream(stream).await?;
        let state = Arc::new(state);
        cache.put(stream, Arc::clone(&state), version);
        Ok((state, version, true))
    }

    /// The stream's current state and version, from the cache when it holds
    /// the stream (then caught up with the store).
    async fn current(&self, stream: &StreamId) -> Result<(Arc<A>, u64), Error> {
        let (state, version, fresh) = self.lookup(stream).await?;
        if fresh {
            return Ok((state, version));
        }
        self.catch_up(stream, state, version).await
    }

    /// Bring `state` at `version` up to date, reading only the events after
    /// it (after the cached version if that is later), and cache the
    /// result.
    async fn catch_up(&self, stream: &StreamId, state: Arc<A>, version: u64) -> Result<(Arc<A>, u64), Error> {
        let from = version;
        let (mut state, mut version, behind) = match self.cache.as_ref().and_then(|c| c.peek(stream)) {
            Some((cached, cached_version)) if cached_version > version => (cached, cached_version, true),
            _ => (state, version, false),
        };
        let batch = self.options.read_batch.max(1);
        let page = self
            .store
            .read_stream_for_fold(stream, version + 1, batch)
            .await?;
        if !page.is_empty() {
            let full = page.len() == batch;
            let mut owned = Arc::unwrap_or_clone(state);
            for stored in page {
                self.apply_stored(stream, &mut owned, &mut version, stored)
                    .await?;
            }
            if full {
                (owned, version) = self.fold(stream, owned, version, None).await?;
            }
            state = Arc::new(owned);
        } else if !behind {
            return Ok((state, version));
        }
        tracing::debug!(stream = %stream, from, to = version, "cached state was behind the store, caught up");
        if let Some(cache) = &self.cache {
            cache.count_stale_refresh();
            cache.put(stream, Arc::clone(&state), version);
        }
        Ok((state, version))
    }

    /// Drop the cached state of `stream`, after a failure that leaves it in
    /// doubt.
    fn forget(&self, stream: &StreamId) {
        if let Some(cache) = &self.cache {
            cache.remove(stream);
        }
    }

    /// The outcome recorded for an earlier submission of the same command
    /// id, as the first submission returned it.
    async fn recorded_outcome(
        &self,
        stream: &StreamId,
        first: CommandRecord,
    ) -> Result<CommandOutcome<A::Event>, CommandError<A::Error>> {
        if first.stream_id != *stream {
            return Err(CommandError::CommandIdReused {
                command_id: first.command_id,
                first_stream: first.stream_id.to_string(),
                stream: stream.to_string(),
            });
        }
        tracing::debug!("command id seen before, returning its first outcome");
        let (stream_version, events) = match first.decision {
            CommandDecision::Refused { refusal, .. } => {
                let refusal = serde_json::from_value(refusal)
                    .map_err(|e| Error::decode(format!("refusal of command {}", first.command_id), e))?;
                return Err(CommandError::Domain(refusal));
            }
            CommandDecision::Unchanged { version } => (version, Vec::new()),
            CommandDecision::Appended {
                first_version,
                last_version,
            } => {
                let mut events = Vec::new();
                let mut next = first_version;
                while next <= last_version {
                    let left = usize::try_from(last_version + 1 - next).unwrap_or(usize::MAX);
                    let page = self
                        .store
                        .read_stream(stream, next, left.min(self.options.read_batch.max(1)))
                        .await?;
                    if page.is_empty() {
                        return Err(Error::StreamCorrupted {
                            stream: stream.to_string(),
                            missing_version: next,
                        }
                        .into());
                    }
                    for recorded in page {
                        next = recorded.stream_version + 1;
                        events.push(recorded.decode::<A::Event>(&self.upcasters)?);
                    }
                }
                (last_version, events)
            }
        };
        Ok(CommandOutcome {
            stream_id: stream.clone(),
            stream_version,
            events,
            retries: 0,
            deduplicated: true,
        })
    }

    /// Snapshot `state`, at version `after`, if the append from `before`
    /// crossed a multiple of [`CommandHandlerOptions::snapshot_every`]: on
    /// a task of its own when [`CommandHandlerOptions::snapshot_in_background`]
    /// says so and a Tokio runtime runs this, else here.
    async fn maybe_snapshot(self: &Arc<Self>, stream: &StreamId, before: u64, after: u64, state: &Arc<A>) {
        let Some(every) = self.options.snapshot_every.filter(|&n| n > 0) else {
            return;
        };
        if after / every == before / every {
            return;
        }
        let save = {
            let (inner, stream, state) = (Arc::clone(self), stream.clone(), Arc::clone(state));
            async move {
                // The events are committed; a missing snapshot only costs a
                // longer load.
                if let Err(e) = inner.save_snapshot(&stream, after, &state).await {
                    tracing::warn!(stream = %stream, version = after, error = %e, "snapshot not saved");
                }
            }
        };
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) if self.options.snapshot_in_background => {
                runtime.spawn(save.instrument(tracing::debug_span!("snapshot")));
            }
            _ => save.await,
        }
    }

    /// Save `state` as the snapshot of `stream` at `version`.
    async fn save_snapshot(&self, stream: &StreamId, version: u64, state: &A) -> Result<(), Error> {
        let what = || format!("snapshot of `{}`", A::TYPE);
        let value = serde_json::to_value(state).map_err(|e| Error::encode(what(), e))?;
        let depth = json_depth(&value);
        if depth > MAX_JSON_DEPTH {
            let e = <serde_json::Error as serde::ser::Error>::custom(format!(
                "the state nests {depth} levels deep, over the {MAX_JSON_DEPTH} a reader accepts"
            ));
            return Err(Error::encode(what(), e));
        }
        self.store
            .save_snapshot(Snapshot {
                stream_id: stream.clone(),
                stream_version: version,
                schema_version: A::SNAPSHOT_VERSION,
                state: value,
            })
            .await
    }
}

/// `events`, encoded with `metadata`; their ids derive from `command_id`
/// when the caller chose it (`explicit_id`), else they are fresh.
fn encode_events<E: Event>(
    events: &[E],
    command_id: Uuid,
    explicit_id: bool,
    metadata: &Metadata,
) -> Result<Vec<NewEvent>, Error> {
    events
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let mut new = NewEvent::from_event(e, metadata.clone())?;
            if explicit_id {
                new.event_id = derived_event_id(command_id, i as u64);
            }
            Ok(new)
        })
        .collect()
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
