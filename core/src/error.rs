//! The crate's error type.
//!
//! Every error's `Display` is complete: it states what happened and why,
//! once, so `{err}` alone is enough to act on. The underlying error (a
//! driver's, serde's) stays in the variant, typed, for matching and
//! downcasting; it is not also returned by `source()`, so that reporters
//! that print the source chain do not repeat it.

use std::error::Error as StdError;
use std::fmt;

use uuid::Uuid;

use crate::store::ExpectedVersion;

/// A boxed error from a backend (database driver, broker client).
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// `Result` with [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong when storing, reading or decoding events.
///
/// Domain outcomes ([`Error::Conflict`]) are apart from input problems
/// ([`Error::InvalidStreamId`], [`Error::PayloadTooLarge`], ...), decoding
/// problems ([`Error::UnknownEventType`], [`Error::Serialization`], ...),
/// stored data that cannot be read ([`Error::UndecodableEvent`],
/// [`Error::StreamCorrupted`]) and infrastructure failures
/// ([`Error::Connection`], [`Error::Backend`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected version when the append ran.
    #[error(
        "version conflict on stream `{}`: expected {expected}, actual version is {actual}",
        Preview(stream)
    )]
    Conflict {
        /// The stream appended to.
        stream: String,
        /// What the caller expected.
        expected: ExpectedVersion,
        /// The stream's version at the time of the append (0 = no stream).
        actual: u64,
    },
    /// An event id in the batch is already stored, but not as this very batch
    /// (a re-append of the exact same batch is idempotent and not an error).
    #[error(
        "event id {event_id} is already stored in stream `{}` at version {stored_version}",
        Preview(stored_stream)
    )]
    DuplicateEventId {
        /// The duplicated id.
        event_id: Uuid,
        /// The stream that already holds it.
        stored_stream: String,
        /// The version it holds there.
        stored_version: u64,
    },
    /// The same event id appears more than once in one batch.
    #[error("event id {event_id} appears more than once in the batch")]
    RepeatedEventId {
        /// The repeated id.
        event_id: Uuid,
    },
    /// The stream id is not acceptable.
    #[error("invalid stream id `{}`: {reason}", Preview(stream))]
    InvalidStreamId {
        /// The offending id.
        stream: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// The event type name is not acceptable.
    #[error("invalid event type `{}`: {reason}", Preview(event_type))]
    InvalidEventType {
        /// The offending type name.
        event_type: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An event's type name, encoded payload and metadata exceed the
    /// store's limit.
    #[error(
        "event {event_id} of type `{}` is {size} bytes, over the limit of {limit} bytes",
        Preview(event_type)
    )]
    PayloadTooLarge {
        /// The event's id.
        event_id: Uuid,
        /// The event's type.
        event_type: String,
        /// Type name, payload and metadata, encoded, in bytes.
        size: usize,
        /// The store's limit in bytes.
        limit: usize,
    },
    /// An event's payload nests arrays and objects deeper than
    /// [`MAX_JSON_DEPTH`](crate::event::MAX_JSON_DEPTH): every reader could
    /// not read it back.
    #[error(
        "event {event_id} of type `{}` nests {depth} levels deep, over the limit of {limit}",
        Preview(event_type)
    )]
    PayloadTooDeep {
        /// The event's id.
        event_id: Uuid,
        /// The event's type.
        event_type: String,
        /// How deep its payload nests (at least `limit + 1`).
        depth: usize,
        /// The limit.
        limit: usize,
    },
    /// An append carried more events than the store accepts in one call.
    #[error("batch of {size} events is over the limit of {limit} events per append")]
    BatchTooLarge {
        /// Events in the batch.
        size: usize,
        /// The store's limit.
        limit: usize,
    },
    /// An event cannot be encoded so that decoding gives it back: storing
    /// it would lose data.
    #[error(
        "event of type `{}` cannot be encoded faithfully: {reason}",
        Preview(event_type)
    )]
    UnencodableEvent {
        /// The event's type, as `Event::event_type` names it.
        event_type: String,
        /// What makes the encoding unfaithful.
        reason: String,
    },
    /// A stored event's type is not known to the reader.
    #[error(
        "unknown event type `{}` (schema version {schema_version})",
        Preview(event_type)
    )]
    UnknownEventType {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
    },
    /// A stored event's schema version is older than the current one and no
    /// upcaster lifts it.
    #[error(
        "no upcaster lifts event type `{}` from schema version {found} (current version is {current})",
        Preview(event_type)
    )]
    UnknownSchemaVersion {
        /// The event type.
        event_type: String,
        /// The schema version reached (stored, or after the upcasters that exist).
        found: u32,
        /// The current schema version of the type, as its Rust type declares it.
        current: u32,
    },
    /// A stored event was written by a newer build: its schema version is
    /// above the current one this build knows.
    #[error(
        "event type `{}` is stored at schema version {found}, newer than this build knows \
         (its current version here is {current}): upgrade this reader",
        Preview(event_type)
    )]
    NewerSchemaVersion {
        /// The event type.
        event_type: String,
        /// The stored schema version.
        found: u32,
        /// The current schema version of the type in this build.
        current: u32,
    },
    /// A payload, metadata or snapshot failed to encode or decode as JSON.
    #[error("cannot {op} {what}: {error}")]
    Serialization {
        /// `"encode"` or `"decode"`.
        op: &'static str,
        /// The event type or snapshot that failed.
        what: String,
        /// The serde error.
        error: serde_json::Error,
    },
    /// An upcaster refused a stored payload.
    #[error("upcaster for `{}` v{from_version} failed: {error}", Preview(event_type))]
    Upcast {
        /// The event type.
        event_type: String,
        /// The version the upcaster lifts from.
        from_version: u32,
        /// What went wrong.
        error: BoxError,
    },
    /// A stored event cannot be turned into a [`RecordedEvent`]: a row
    /// written by something other than strata, say. Readers of the global
    /// log get this in its place and can go on past `global_position`.
    ///
    /// [`RecordedEvent`]: crate::event::RecordedEvent
    #[error("stored event {event_id} at position {global_position} cannot be read: {reason}")]
    UndecodableEvent {
        /// The event's id.
        event_id: Uuid,
        /// Its position in the global log.
        global_position: u64,
        /// Why it cannot be read.
        reason: BoxError,
    },
    /// A stream's stored versions are not contiguous: an event is missing.
    #[error(
        "stream `{}` is corrupted: version {missing_version} is missing",
        Preview(stream)
    )]
    StreamCorrupted {
        /// The stream.
        stream: String,
        /// The first version that is not stored although a later one is.
        missing_version: u64,
    },
    /// A command id was already recorded with an outcome, so the append
    /// that carried it stored nothing (see [`EventStore::append_command`]).
    ///
    /// [`EventStore::append_command`]: crate::store::EventStore::append_command
    #[error("command {command_id} already has a recorded outcome")]
    CommandAlreadyRecorded {
        /// The command id.
        command_id: Uuid,
    },
    /// A command record given to
    /// [`EventStore::append_commands`](crate::store::EventStore::append_commands)
    /// does not fit its append: another stream, an id given twice, or
    /// versions outside the append. Nothing was stored.
    #[error("command record {command_id} does not fit the append: {reason}")]
    InvalidCommandRecord {
        /// The record's command id.
        command_id: Uuid,
        /// What is wrong with it.
        reason: String,
    },
    /// The store was given a configuration it cannot use (a malformed or
    /// foreign database URL, a wrong password, an unknown database). Trying
    /// again cannot help.
    #[error("invalid configuration: {0}")]
    Configuration(BoxError),
    /// The backend could not be reached or the connection was lost.
    #[error("connection to the backend failed: {0}")]
    Connection(BoxError),
    /// Any other backend failure.
    #[error("backend failure: {0}")]
    Backend(BoxError),
    /// A subscription or consumer was closed.
    #[error("closed")]
    Closed,
}

impl Error {
    /// Whether this is an optimistic-concurrency conflict.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Error::Conflict { .. })
    }

    /// Whether trying the same operation again may succeed: conflicts (after a
    /// reload) and connection failures.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Error::Conflict { .. } | Error::Connection(_))
    }

    /// Whether this error is about what an append was given (an event too
    /// large or deep, a bad type name or id, a record that does not fit)
    /// rather than about the store: the same append can never succeed.
    pub fn is_invalid_input(&self) -> bool {
        matches!(
            self,
            Error::DuplicateEventId { .. }
                | Error::RepeatedEventId { .. }
                | Error::InvalidEventType { .. }
                | Error::PayloadTooLarge { .. }
                | Error::PayloadTooDeep { .. }
                | Error::BatchTooLarge { .. }
                | Error::UnencodableEvent { .. }
                | Error::Serialization { .. }
                | Error::InvalidCommandRecord { .. }
        )
    }

    /// This error again, for a second party to the same failure (the
    /// commands of one batch): the same variant where its fields can be
    /// copied, else [`Error::Backend`] with the same message.
    pub(crate) fn duplicate(&self) -> Error {
        match self {
            Error::Conflict {
                stream,
                expected,
                actual,
            } => Error::Conflict {
                stream: stream.clone(),
                expected: *expected,
                actual: *actual,
            },
            Error::StreamCorrupted {
                stream,
                missing_version,
            } => Error::StreamCorrupted {
                stream: stream.clone(),
                missing_version: *missing_version,
            },
            Error::CommandAlreadyRecorded { command_id } => Error::CommandAlreadyRecorded {
                command_id: *command_id,
            },
            Error::Configuration(e) => Error::Configuration(e.to_string().into()),
            Error::Connection(e) => Error::Connection(e.to_string().into()),
            Error::Closed => Error::Closed,
            other => Error::Backend(other.to_string().into()),
        }
    }

    /// [`Error::Serialization`] of `what` (say, "payload of event X")
    /// that failed to encode.
    pub fn encode(what: impl Into<String>, error: serde_json::Error) -> Self {
        Error::Serialization {
            op: "encode",
            what: what.into(),
            error,
        }
    }

    /// [`Error::Serialization`] of `what` that failed to decode.
    pub fn decode(what: impl Into<String>, error: serde_json::Error) -> Self {
        Error::Serialization {
            op: "decode",
            what: what.into(),
            error,
        }
    }
}

/// Displays user-supplied text (a stream id, a type name) in an error
/// message: control characters escaped, cut after 64 characters with its
/// full length in bytes, so a huge value never floods a log line.
#[derive(Debug, Clone, Copy)]
pub struct Preview<'a>(pub &'a str);

impl fmt::Display for Preview<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const SHOWN: usize = 64;
        match self.0.char_indices().nth(SHOWN) {
            None => write!(f, "{}", self.0.escape_debug()),
            Some((cut, _)) => write!(f, "{}... ({} bytes)", self.0[..cut].escape_debug(), self.0.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_ids_are_cut_in_messages() {
        let long = "x".repeat(10_000);
        let e = Error::InvalidStreamId {
            stream: long,
            reason: "stream id is longer than 512 bytes",
        };
        let text = e.to_string();
        assert!(text.len() < 200, "{text}");
        assert!(text.contains("(10000 bytes)"), "{text}");
        assert_eq!(Preview("short\u{1}").to_string(), "short\\u{1}");
    }

    #[test]
    fn display_states_the_cause_once_and_no_source_repeats_it() {
        let cause = serde_json::from_str::<u8>("300").unwrap_err();
        let cause_text = cause.to_string();
        let e = Error::decode("payload of `Deposited`", cause);
        let text = e.to_string();
        assert_eq!(text.matches(&cause_text).count(), 1, "{text}");
        assert!(e.source().is_none());
        let e = Error::Backend("database \"x\" does not exist".into());
        assert_eq!(e.to_string(), "backend failure: database \"x\" does not exist");
    }
}
