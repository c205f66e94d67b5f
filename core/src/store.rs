//! The [`EventStore`] trait and the types of its contract.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::time::Duration;

use futures_util::stream::{self, BoxStream, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::event::{Event, NewEvent, RecordedEvent, StreamId};
use crate::upcast::Upcasters;

/// What the caller believes about a stream's version when appending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[non_exhaustive]
pub enum ExpectedVersion {
    /// Append whatever the version is.
    Any,
    /// The stream must not exist yet (version 0).
    NoStream,
    /// The stream must have at least one event.
    StreamExists,
    /// The stream must be at exactly this version (0 = no stream).
    Exact(u64),
}

impl ExpectedVersion {
    /// Whether a stream at `actual` satisfies this expectation.
    pub fn admits(self, actual: u64) -> bool {
        match self {
            ExpectedVersion::Any => true,
            ExpectedVersion::NoStream => actual == 0,
            ExpectedVersion::StreamExists => actual > 0,
            ExpectedVersion::Exact(v) => actual == v,
        }
    }
}

impl fmt::Display for ExpectedVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExpectedVersion::Any => f.write_str("any version"),
            ExpectedVersion::NoStream => f.write_str("no stream"),
            ExpectedVersion::StreamExists => f.write_str("an existing stream"),
            ExpectedVersion::Exact(v) => write!(f, "version {v}"),
        }
    }
}

/// What a successful append produced.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AppendResult {
    /// The stream's version after the append (its last event's version).
    pub stream_version: u64,
    /// Global positions of the appended events, in append order.
    pub positions: Vec<u64>,
}

/// An event as folding an aggregate needs it: no id, position, metadata or
/// time (see [`EventStore::read_stream_for_fold`]).
#[derive(Debug, Clone, PartialEq)]
pub struct FoldEvent {
    /// Its version in the stream.
    pub stream_version: u64,
    /// Stored type name.
    pub event_type: String,
    /// Stored schema version (before upcasting).
    pub schema_version: u32,
    /// Stored payload.
    pub payload: FoldPayload,
}

/// A stored payload, in the form the store holds it.
#[derive(Debug, Clone, PartialEq)]
pub enum FoldPayload {
    /// Parsed JSON.
    Value(Value),
    /// JSON text, read into the event without building a [`Value`] when no
    /// upcast is needed ([`Upcasters::decode_json`](crate::Upcasters::decode_json)).
    Json(String),
}

impl From<RecordedEvent> for FoldEvent {
    /// What folding needs of a recorded event, its payload kept parsed.
    fn from(e: RecordedEvent) -> Self {
        FoldEvent {
            stream_version: e.stream_version,
            event_type: e.event_type,
            schema_version: e.schema_version,
            payload: FoldPayload::Value(e.payload),
        }
    }
}

impl FoldEvent {
    /// Upcast to the current schema and decode.
    pub fn decode<E: Event>(self, upcasters: &Upcasters) -> Result<E> {
        match self.payload {
            FoldPayload::Value(value) => upcasters.decode(&self.event_type, self.schema_version, value),
            FoldPayload::Json(text) => upcasters.decode_json(&self.event_type, self.schema_version, &text),
        }
    }
}

/// The saved state of an aggregate at a stream version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// The stream the state was built from.
    pub stream_id: StreamId,
    /// The last event version folded into `state`.
    pub stream_version: u64,
    /// Schema version of `state`; a loader ignores a snapshot whose version
    /// is not the one it expects and replays from the start instead.
    pub schema_version: u32,
    /// The encoded state.
    pub state: Value,
}

/// How a command with an id ended, as its store keeps it: an id names one
/// outcome forever (see [`EventStore::append_command`]).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[non_exhaustive]
pub enum CommandDecision {
    /// It appended the events at versions `first_version..=last_version`
    /// of its stream.
    Appended {
        /// Version of its first event.
        first_version: u64,
        /// Version of its last event.
        last_version: u64,
    },
    /// It was accepted but changed nothing; the stream was at `version`.
    Unchanged {
        /// The stream version it was decided on.
        version: u64,
    },
    /// The aggregate refused it at `version`; `refusal` is the domain error,
    /// encoded as JSON.
    Refused {
        /// The stream version it was decided on.
        version: u64,
        /// The encoded refusal.
        refusal: Value,
    },
}

/// The recorded outcome of one command id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandRecord {
    /// The command id.
    pub command_id: Uuid,
    /// The stream the command was decided on.
    pub stream_id: StreamId,
    /// What it did.
    pub decision: CommandDecision,
}

/// A live, never-ending feed of the global log; see [`EventStore::subscribe`].
pub type Subscription = BoxStream<'static, Result<RecordedEvent>>;

/// Which events of the global log a reader wants: events of any of
/// `categories` (stream categories, see [`StreamId::category`]) and of any
/// of `event_types`; an empty list admits all.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogFilter {
    /// Stream categories wanted; empty: all.
    pub categories: Vec<String>,
    /// Event types wanted; empty: all.
    pub event_types: Vec<String>,
}

impl LogFilter {
    /// Every event.
    pub fn all() -> Self {
        Self::default()
    }

    /// Events of streams in these categories.
    pub fn categories<S: Into<String>>(categories: impl IntoIterator<Item = S>) -> Self {
        LogFilter {
            categories: categories.into_iter().map(Into::into).collect(),
            event_types: Vec::new(),
        }
    }

    /// Also require one of these event types.
    pub fn with_event_types<S: Into<String>>(mut self, event_types: impl IntoIterator<Item = S>) -> Self {
        self.event_types = event_types.into_iter().map(Into::into).collect();
        self
    }

    /// Whether it admits every event.
    pub fn is_all(&self) -> bool {
        self.categories.is_empty() && self.event_types.is_empty()
    }

    /// Whether `event` is wanted.
    pub fn matches(&self, event: &RecordedEvent) -> bool {
        let wanted = |list: &[String], value: &str| list.is_empty() || list.iter().any(|v| v == value);
        wanted(&self.categories, event.stream_id.category()) && wanted(&self.event_types, &event.event_type)
    }
}

/// A page of a filtered read of the global log
/// ([`EventStore::read_all_filtered`]).
#[derive(Debug, Clone, PartialEq)]
pub struct LogPage {
    /// The wanted events, in log order.
    pub events: Vec<RecordedEvent>,
    /// The log was examined up to this position (inclusive), the events not
    /// wanted included: a reader moves its checkpoint here, and never reads
    /// what it skipped again. At least the last event's position; the
    /// position read after when nothing new was readable.
    pub scanned_to: u64,
    /// Whether the read reached the end of what is readable now.
    pub reached_end: bool,
}

/// An item of a filtered subscription ([`EventStore::subscribe_filtered`]).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
// Nearly every item is an event: boxing it would cost an allocation each.
#[allow(clippy::large_enum_variant)]
pub enum LogItem {
    /// A wanted event.
    Event(RecordedEvent),
    /// Every event up to this position that was not delivered was not
    /// wanted: a checkpoint may move here.
    Passed(u64),
}

/// A live feed of the wanted events of the global log, with progress past
/// the others; see [`EventStore::subscribe_filtered`].
pub type FilteredSubscription = BoxStream<'static, Result<LogItem>>;

/// An append-only store of event streams with a global log.
///
/// # Contract
/// - **Per-stream order**: a stream's events have versions 1, 2, 3, ... with
///   no hole, in append order.
/// - **Expected version**: [`append`](EventStore::append) is atomic; it
///   stores all its events or none, and only if the stream's version admits
///   `expected` at the moment of the write (checked by the backend itself,
///   not by an earlier read). Otherwise it fails with [`Error::Conflict`]
///   carrying the actual version. With [`ExpectedVersion::Any`] it never
///   conflicts.
/// - **Idempotency by event id**: appending a batch whose ids are already
///   stored, as that same batch, returns the original [`AppendResult`] and
///   stores nothing; an id stored otherwise is [`Error::DuplicateEventId`].
/// - **Global order**: every event has a global position, strictly
///   increasing in log order (not necessarily contiguous). Events of one
///   stream appear in the global log in version order.
/// - **No event skipped**: [`read_all`](EventStore::read_all) only returns a
///   prefix of the log that can no longer change: an event committed later
///   never gets a position below one already returned. A reader that moves
///   its checkpoint to the last position it read therefore sees every event
///   exactly once.
/// - **Subscriptions** catch up from a position and then follow new events,
///   with no loss and no duplicate across the switch.
/// - **Validation**: an append checks every event with
///   [`NewEvent::validate`] (and its batch with
///   [`NewEvent::check_unique_ids`]) against the store's size limit, so
///   whatever it stores, every reader can read back; a refused batch stores
///   nothing.
/// - **Command records**: a command id names one outcome forever.
///   [`append_command`](EventStore::append_command) stores events and their
///   command's record atomically, [`record_command`](EventStore::record_command)
///   records an outcome that appended nothing, and whichever records a
///   command id first wins: later attempts store nothing.
pub trait EventStore: Send + Sync + 'static {
    /// Append `events` to `stream` if its version admits `expected`.
    /// An empty batch appends nothing but still checks `expected`.
    fn append(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Up to `max_count` events of `stream` from version `from_version`
    /// (inclusive), in version order. An unknown stream reads as empty. A
    /// stored event that cannot be read fails the read with
    /// [`Error::UndecodableEvent`].
    fn read_stream(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;

    /// The stream's current version (0 if it does not exist).
    fn stream_version(&self, stream: &StreamId) -> impl Future<Output = Result<u64>> + Send;

    /// Up to `max_count` events of the global log with a position above
    /// `after_position`, in log order (see the contract above).
    ///
    /// A stored event that cannot be read (written by something other than
    /// strata, say) ends the page just before it; reading from there fails
    /// with [`Error::UndecodableEvent`], which names the event and its
    /// position, and reading after that position goes on. One bad event
    /// never hides the others.
    fn read_all(
        &self,
        after_position: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send;

    /// One event by id, if stored.
    fn read_event(&self, event_id: Uuid) -> impl Future<Output = Result<Option<RecordedEvent>>> + Send;

    /// Store `snapshot` as its stream's latest, replacing an older one. A
    /// snapshot older than the stored one is ignored.
    fn save_snapshot(&self, snapshot: Snapshot) -> impl Future<Output = Result<()>> + Send;

    /// The latest snapshot of `stream`, if any.
    fn load_snapshot(&self, stream: &StreamId) -> impl Future<Output = Result<Option<Snapshot>>> + Send;

    /// Follow the global log from above `after_position`: first everything
    /// already readable, then new events as they become readable. The feed
    /// never ends by itself, and an error item leaves it usable: an
    /// [`Error::UndecodableEvent`] item stands in for that event and the
    /// feed goes on after it; after any other error, polling on reads again
    /// from the last event delivered, after a pause that doubles from
    /// [`RETRY_MIN`] to [`RETRY_MAX`] while reads keep failing.
    fn subscribe(&self, after_position: u64) -> Subscription;

    /// Up to `max_count` wanted events of the global log above
    /// `after_position`, in log order, with the position the log was
    /// examined to ([`LogPage::scanned_to`]): the same guarantees as
    /// [`read_all`](EventStore::read_all), the unwanted events passed over
    /// but counted as read. The default filters [`read_all`] pages; a store
    /// may serve it from indexes.
    ///
    /// [`read_all`]: EventStore::read_all
    fn read_all_filtered(
        &self,
        after_position: u64,
        max_count: usize,
        filter: &LogFilter,
    ) -> impl Future<Output = Result<LogPage>> + Send {
        async move {
            let page = self.read_all(after_position, max_count).await?;
            let reached_end = page.len() < max_count.max(1);
            let scanned_to = page.last().map_or(after_position, |e| e.global_position);
            Ok(LogPage {
                events: page.into_iter().filter(|e| filter.matches(e)).collect(),
                scanned_to,
                reached_end,
            })
        }
    }

    /// [`subscribe`](EventStore::subscribe) to the wanted events only, with
    /// [`LogItem::Passed`] items that let a checkpoint move past the others.
    /// The default filters the full subscription; a store may read only the
    /// wanted events.
    fn subscribe_filtered(&self, after_position: u64, filter: LogFilter) -> FilteredSubscription {
        self.subscribe(after_position)
            .map(move |item| {
                item.map(|e| {
                    if filter.matches(&e) {
                        LogItem::Event(e)
                    } else {
                        LogItem::Passed(e.global_position)
                    }
                })
            })
            .boxed()
    }

    /// Append `events` (at least one) as the outcome of command
    /// `command_id`: as [`append`](EventStore::append), and in the same
    /// atomic write, record [`CommandDecision::Appended`] under the id. If
    /// the id already has a record, nothing is stored and the result is
    /// [`Error::CommandAlreadyRecorded`].
    fn append_command(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        command_id: Uuid,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Append `events` to `stream` at `expected` and, in the same atomic
    /// write, store `records`: the outcomes of several commands decided one
    /// after another on the stream and appended together, each with its
    /// own record (those that appended events, and those refused or
    /// without change). `events` may be empty; the expectation is still
    /// checked and the records stored with it.
    ///
    /// - With records, `expected` must be [`ExpectedVersion::Exact`]`(v)`,
    ///   and every record must name `stream`, carry an id no other record
    ///   of the call carries, and fit the append: an
    ///   [`Appended`](CommandDecision::Appended) range within `v + 1 ..= v +
    ///   events.len()`, the version of an
    ///   [`Unchanged`](CommandDecision::Unchanged) or
    ///   [`Refused`](CommandDecision::Refused) record within `v ..= v +
    ///   events.len()`. Otherwise [`Error::InvalidCommandRecord`], and
    ///   nothing is stored ([`check_command_records`]).
    /// - If `events` (at least one) are all stored already, as this very
    ///   batch, the original [`AppendResult`] is returned and nothing is
    ///   stored, as for [`append`](EventStore::append).
    /// - Else, if any record's id already has a record, nothing is stored
    ///   and the result is [`Error::CommandAlreadyRecorded`] naming one
    ///   such id.
    fn append_commands(
        &self,
        stream: &StreamId,
        expected: ExpectedVersion,
        events: Vec<NewEvent>,
        records: Vec<CommandRecord>,
    ) -> impl Future<Output = Result<AppendResult>> + Send;

    /// Record the outcome of a command that appended nothing, unless its id
    /// already has a record. Returns `None` when this record was stored,
    /// else the record that was there first (and stores nothing).
    fn record_command(
        &self,
        record: CommandRecord,
    ) -> impl Future<Output = Result<Option<CommandRecord>>> + Send;

    /// The recorded outcome of `command_id`, if any.
    fn read_command(&self, command_id: Uuid) -> impl Future<Output = Result<Option<CommandRecord>>> + Send;

    /// The recorded outcomes of those of `command_ids` that have one, in
    /// no particular order. The default reads them one by one; a store may
    /// read them at once (the command handler asks for a whole batch's).
    fn read_commands(&self, command_ids: &[Uuid]) -> impl Future<Output = Result<Vec<CommandRecord>>> + Send {
        async move {
            let mut found = Vec::new();
            for &command_id in command_ids {
                found.extend(self.read_command(command_id).await?);
            }
            Ok(found)
        }
    }

    /// [`read_stream`](EventStore::read_stream), with only what a fold
    /// needs: the command handler loads aggregates with it. The default
    /// takes `read_stream`'s events apart; a store may select less and
    /// hand payloads over as text.
    fn read_stream_for_fold(
        &self,
        stream: &StreamId,
        from_version: u64,
        max_count: usize,
    ) -> impl Future<Output = Result<Vec<FoldEvent>>> + Send {
        async move {
            let page = self.read_stream(stream, from_version, max_count).await?;
            Ok(page.into_iter().map(FoldEvent::from).collect())
        }
    }

    /// Read a stream from `from_version` to its end, in batches of `batch`.
    fn read_stream_to_end(
        &self,
        stream: &StreamId,
        from_version: u64,
        batch: usize,
    ) -> impl Future<Output = Result<Vec<RecordedEvent>>> + Send {
        async move {
            let batch = batch.max(1);
            let mut out = Vec::new();
            let mut next = from_version.max(1);
            loop {
                let page = self.read_stream(stream, next, batch).await?;
                let done = page.len() < batch;
                if let Some(last) = page.last() {
                    next = last.stream_version + 1;
                }
                out.extend(page);
                if done {
                    return Ok(out);
                }
            }
        }
    }
}

/// First pause before a subscription reads again after a failed read.
pub const RETRY_MIN: Duration = Duration::from_millis(50);

/// Longest pause between a subscription's failed reads.
pub const RETRY_MAX: Duration = Duration::from_secs(5);

/// Build a [`Subscription`] from batched [`EventStore::read_all`] calls and
/// a `wait` future that resolves when events after the given position may
/// have become readable (a notification, a poll interval, or both).
///
/// The position only moves past events that were delivered, and past an
/// [`Error::UndecodableEvent`] item, which stands in for its event. After
/// any other failed read or wait (delivered as an `Err` item) the next read
/// waits [`RETRY_MIN`], doubling up to [`RETRY_MAX`] while failures go on,
/// and loses and repeats nothing.
pub fn follow<S, W, F>(store: S, after_position: u64, batch: usize, wait: W) -> Subscription
where
    S: EventStore + Clone,
    W: FnMut(u64) -> F + Send + 'static,
    F: Future<Output = Result<()>> + Send + 'static,
{
    follow_filtered(store, after_position, batch, LogFilter::all(), wait)
        .filter_map(|item| async move {
            match item {
                Ok(LogItem::Event(e)) => Some(Ok(e)),
                Ok(_) => None,
                Err(e) => Some(Err(e)),
            }
        })
        .boxed()
}

/// [`follow`], reading only the events `filter` wants
/// ([`EventStore::read_all_filtered`]), and after each page that passed
/// over unwanted events, a [`LogItem::Passed`] with the position it was
/// examined to.
pub fn follow_filtered<S, W, F>(
    store: S,
    after_position: u64,
    batch: usize,
    filter: LogFilter,
    wait: W,
) -> FilteredSubscription
where
    S: EventStore + Clone,
    W: FnMut(u64) -> F + Send + 'static,
    F: Future<Output = Result<()>> + Send + 'static,
{
    struct State<S, W> {
        store: S,
        filter: LogFilter,
        position: u64,
        buffer: VecDeque<LogItem>,
        wait: W,
        caught_up: bool,
        /// Failed reads or waits in a row.
        failures: u32,
    }
    let state = State {
        store,
        filter,
        position: after_position,
        buffer: VecDeque::new(),
        wait,
        caught_up: false,
        failures: 0,
    };
    let batch = batch.max(1);
    stream::unfold(state, move |mut st| async move {
        loop {
            if let Some(item) = st.buffer.pop_front() {
                st.position = match &item {
                    LogItem::Event(e) => e.global_position,
                    LogItem::Passed(p) => *p,
                };
                return Some((Ok(item), st));
            }
            if st.failures > 0 {
                futures_timer::Delay::new(retry_delay(st.failures)).await;
            }
            if st.caught_up {
                if let Err(e) = (st.wait)(st.position).await {
                    st.failures += 1;
                    return Some((Err(e), st));
                }
            }
            match st.store.read_all_filtered(st.position, batch, &st.filter).await {
                Ok(page) => {
                    st.failures = 0;
                    st.caught_up = page.reached_end;
                    let last = page.events.last().map_or(st.position, |e| e.global_position);
                    st.buffer.extend(page.events.into_iter().map(LogItem::Event));
                    if page.scanned_to > last {
                        st.buffer.push_back(LogItem::Passed(page.scanned_to));
                    }
                }
                Err(e) => {
                    match &e {
                        Error::UndecodableEvent { global_position, .. } if *global_position > st.position => {
                            // It stands in for its event: go on after it.
                            st.position = *global_position;
                            st.failures = 0;
                            st.caught_up = false;
                        }
                        _ => st.failures += 1,
                    }
                    return Some((Err(e), st));
                }
            }
        }
    })
    .boxed()
}

/// The pause before reading again after `failures` failed reads in a row.
fn retry_delay(failures: u32) -> Duration {
    RETRY_MIN
        .saturating_mul(1 << failures.saturating_sub(1).min(16))
        .min(RETRY_MAX)
}

/// Check `records` against an append of `event_count` events to `stream`
/// at `expected`, as [`EventStore::append_commands`] requires; for stores
/// to call before writing anything.
pub fn check_command_records(
    stream: &StreamId,
    expected: ExpectedVersion,
    event_count: usize,
    records: &[CommandRecord],
) -> Result<()> {
    let Some(first) = records.first() else {
        return Ok(());
    };
    let invalid = |record: &CommandRecord, reason: String| Error::InvalidCommandRecord {
        command_id: record.command_id,
        reason,
    };
    let ExpectedVersion::Exact(v) = expected else {
        return Err(invalid(
            first,
            format!("records need an exact expected version, not {expected}"),
        ));
    };
    let end = v + event_count as u64;
    let mut ids = std::collections::HashSet::with_capacity(records.len());
    for record in records {
        if record.stream_id != *stream {
            return Err(invalid(
                record,
                format!(
                    "it names stream `{}`, not the stream appended to",
                    record.stream_id
                ),
            ));
        }
        if !ids.insert(record.command_id) {
            return Err(invalid(record, "its id is given twice".into()));
        }
        let fits = match &record.decision {
            CommandDecision::Appended {
                first_version,
                last_version,
            } => v < *first_version && first_version <= last_version && *last_version <= end,
            CommandDecision::Unchanged { version } | CommandDecision::Refused { version, .. } => {
                (v..=end).contains(version)
            }
        };
        if !fits {
            return Err(invalid(
                record,
                format!(
                    "{:?} lies outside the append (versions {v} to {end})",
                    record.decision
                ),
            ));
        }
    }
    Ok(())
}

/// Decide whether a batch whose ids may already be stored is an idempotent
/// re-append. `stored` holds the events found under the batch's ids.
///
/// Returns the original outcome when the whole batch is stored, in order,
/// contiguously in `stream`; `None` when none of its ids is stored; and
/// [`Error::DuplicateEventId`] otherwise. The batch's ids must be distinct
/// (see [`NewEvent::check_unique_ids`]).
pub fn idempotent_outcome(
    stream: &StreamId,
    batch: &[NewEvent],
    stored: &[RecordedEvent],
) -> Result<Option<AppendResult>> {
    if stored.is_empty() {
        return Ok(None);
    }
    let find = |id: Uuid| stored.iter().find(|e| e.event_id == id);
    let first = batch.first().and_then(|e| find(e.event_id));
    let same_batch = first.is_some_and(|first| {
        batch.iter().enumerate().all(|(i, e)| {
            find(e.event_id).is_some_and(|s| {
                s.stream_id == *stream && s.stream_version == first.stream_version + i as u64
            })
        })
    });
    if same_batch {
        let mut events: Vec<_> = batch.iter().filter_map(|e| find(e.event_id)).collect();
        events.sort_by_key(|e| e.stream_version);
        return Ok(Some(AppendResult {
            stream_version: events.last().map_or(0, |e| e.stream_version),
            positions: events.iter().map(|e| e.global_position).collect(),
        }));
    }
    let dup = batch
        .iter()
        .find_map(|e| find(e.event_id))
        .ok_or_else(|| Error::Backend("stored events match no id of the batch".into()))?;
    Err(Error::DuplicateEventId {
        event_id: dup.event_id,
        stored_stream: dup.stream_id.to_string(),
        stored_version: dup.stream_version,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delay_doubles_up_to_the_maximum() {
        assert_eq!(retry_delay(1), RETRY_MIN);
        assert_eq!(retry_delay(2), RETRY_MIN * 2);
        assert_eq!(retry_delay(8), RETRY_MAX);
        assert_eq!(retry_delay(u32::MAX), RETRY_MAX);
    }
}
