//! The crate's error type.

use std::error::Error as StdError;

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
/// problems ([`Error::UnknownEventType`], [`Error::Serialization`], ...) and
/// infrastructure failures ([`Error::Connection`], [`Error::Backend`]).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stream was not at the expected version when the append ran.
    #[error("version conflict on stream `{stream}`: expected {expected}, actual version is {actual}")]
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
    #[error("event id {event_id} is already stored in stream `{stored_stream}` at version {stored_version}")]
    DuplicateEventId {
        /// The duplicated id.
        event_id: Uuid,
        /// The stream that already holds it.
        stored_stream: String,
        /// The version it holds there.
        stored_version: u64,
    },
    /// The stream id is not acceptable.
    #[error("invalid stream id {stream:?}: {reason}")]
    InvalidStreamId {
        /// The offending id.
        stream: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An event's encoded payload and metadata exceed the store's limit.
    #[error("event {event_id} of type `{event_type}` is {size} bytes, over the limit of {limit} bytes")]
    PayloadTooLarge {
        /// The event's id.
        event_id: Uuid,
        /// The event's type.
        event_type: String,
        /// Encoded size in bytes.
        size: usize,
        /// The store's limit in bytes.
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
    /// A stored event's type is not known to the reader.
    #[error("unknown event type `{event_type}` (schema version {schema_version})")]
    UnknownEventType {
        /// The stored type name.
        event_type: String,
        /// The stored schema version.
        schema_version: u32,
    },
    /// A stored event's schema version can neither be used as is nor upcast.
    #[error(
        "no upcaster lifts event type `{event_type}` from schema version {found} (current version is {current})"
    )]
    UnknownSchemaVersion {
        /// The event type.
        event_type: String,
        /// The schema version reached (stored, or after the upcasters that exist).
        found: u32,
        /// The current schema version of the type, as its Rust type declares it.
        current: u32,
    },
    /// A payload, metadata or snapshot failed to encode or decode as JSON.
    #[error("cannot {op} `{what}`")]
    Serialization {
        /// `"encode"` or `"decode"`.
        op: &'static str,
        /// The event type or snapshot that failed.
        what: String,
        /// The serde error.
        #[source]
        source: serde_json::Error,
    },
    /// An upcaster refused a stored payload.
    #[error("upcaster for `{event_type}` v{from_version} failed")]
    Upcast {
        /// The event type.
        event_type: String,
        /// The version the upcaster lifts from.
        from_version: u32,
        /// What went wrong.
        #[source]
        source: BoxError,
    },
    /// The store was given a configuration it cannot use (a malformed or
    /// foreign database URL, say). Trying again cannot help.
    #[error("invalid configuration")]
    Configuration(#[source] BoxError),
    /// The backend could not be reached or the connection was lost.
    #[error("connection to the backend failed")]
    Connection(#[source] BoxError),
    /// Any other backend failure.
    #[error("backend failure")]
    Backend(#[source] BoxError),
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

    pub(crate) fn encode(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Serialization {
            op: "encode",
            what: what.into(),
            source,
        }
    }

    pub(crate) fn decode(what: impl Into<String>, source: serde_json::Error) -> Self {
        Error::Serialization {
            op: "decode",
            what: what.into(),
            source,
        }
    }
}
