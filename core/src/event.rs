//! Events, their envelope and metadata.

use std::collections::BTreeMap;
use std::fmt;

use chrono::{DateTime, Utc};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

use crate::error::{Error, Result};
use crate::upcast::Upcasters;

/// Longest stream id accepted, in bytes.
pub const MAX_STREAM_ID_LEN: usize = 512;

/// The name of an event stream, usually `"{aggregate type}-{aggregate id}"`.
///
/// Any Unicode text is accepted except the empty string, control characters
/// (NUL cannot be stored by PostgreSQL) and ids over [`MAX_STREAM_ID_LEN`]
/// bytes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// Validate and wrap a stream id.
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let reason = if id.is_empty() {
            Some("stream id is empty")
        } else if id.len() > MAX_STREAM_ID_LEN {
            Some("stream id is longer than 512 bytes")
        } else if id.chars().any(char::is_control) {
            Some("stream id contains a control character")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(Error::InvalidStreamId { stream: id, reason }),
            None => Ok(StreamId(id)),
        }
    }

    /// The stream of one aggregate instance: `"{aggregate_type}-{id}"`.
    pub fn for_aggregate(aggregate_type: &str, id: &str) -> Result<Self> {
        Self::new(format!("{aggregate_type}-{id}"))
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for StreamId {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        StreamId::new(String::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// Metadata that travels with an event from the command to every reader.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    /// Groups every message caused, directly or not, by one original request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub correlation_id: Option<Uuid>,
    /// The id of the message (command or event) that directly caused this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub causation_id: Option<Uuid>,
    /// W3C trace context `traceparent` header.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceparent: Option<String>,
    /// The tenant the event belongs to, for multi-tenant applications.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_id: Option<String>,
    /// Free-form string headers.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
}

/// A domain event type, usually an enum with one variant per event.
///
/// The default [`encode`](Event::encode)/[`decode`](Event::decode) use
/// serde's default ("externally tagged") enum representation: the variant
/// name is the stored event type (rename it with `#[serde(rename = "...")]`
/// to keep it stable) and the variant's content is the payload. Override
/// both for any other shape.
pub trait Event: Serialize + DeserializeOwned + Clone + fmt::Debug + Send + Sync + 'static {
    /// The stable type name of this event, as stored.
    fn event_type(&self) -> &'static str;

    /// The current schema version of the named event type (1 unless it
    /// changed). Stored events of older versions are lifted to this one by
    /// [`Upcasters`] before [`decode`](Event::decode) sees them.
    fn current_version(event_type: &str) -> u32 {
        let _ = event_type;
        1
    }

    /// This event's payload as JSON, without its type name.
    fn encode(&self) -> Result<Value> {
        let value = serde_json::to_value(self).map_err(|e| Error::encode(self.event_type(), e))?;
        Ok(match value {
            Value::Object(mut map) if map.len() == 1 => map.remove(self.event_type()).unwrap_or(Value::Null),
            Value::String(_) => Value::Null,
            other => other,
        })
    }

    /// Build an event from its type name and a payload at the current schema
    /// version. An unknown type is [`Error::UnknownEventType`].
    fn decode(event_type: &str, schema_version: u32, payload: Value) -> Result<Self> {
        let tagged = if payload.is_null() {
            Value::String(event_type.to_owned())
        } else {
            let mut map = serde_json::Map::with_capacity(1);
            map.insert(event_type.to_owned(), payload);
            Value::Object(map)
        };
        serde_json::from_value(tagged).map_err(|e| {
            // serde's enum visitor reports a missing variant as `unknown variant`.
            if e.is_data() && e.to_string().starts_with("unknown variant") {
                Error::UnknownEventType {
                    event_type: event_type.to_owned(),
                    schema_version,
                }
            } else {
                Error::decode(event_type, e)
            }
        })
    }
}

/// An event ready to append: encoded, with its id and metadata.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    /// Unique id (UUID v7 unless derived from a command id); appending the
    /// same id twice is idempotent.
    pub event_id: Uuid,
    /// The stable event type name.
    pub event_type: String,
    /// Schema version of `payload`.
    pub schema_version: u32,
    /// The event's content.
    pub payload: Value,
    /// Correlation, causation, trace context, tenant, headers.
    pub metadata: Metadata,
}

impl NewEvent {
    /// Encode a typed event with a fresh UUID v7 id.
    pub fn from_event<E: Event>(event: &E, metadata: Metadata) -> Result<Self> {
        Ok(NewEvent {
            event_id: Uuid::now_v7(),
            event_type: event.event_type().to_owned(),
            schema_version: E::current_version(event.event_type()),
            payload: event.encode()?,
            metadata,
        })
    }

    /// Encoded size of payload plus metadata, in bytes (what size limits
    /// count). Counted while serializing, without allocating.
    pub fn encoded_size(&self) -> usize {
        let mut counter = ByteCounter(0);
        // Writing to a counter cannot fail, and neither can serializing a `Value`.
        let _ = serde_json::to_writer(&mut counter, &self.payload);
        let _ = serde_json::to_writer(&mut counter, &self.metadata);
        counter.0
    }

    /// [`Error::PayloadTooLarge`] if [`encoded_size`](Self::encoded_size)
    /// exceeds `limit` bytes.
    pub fn check_size(&self, limit: usize) -> Result<()> {
        self.check_encoded_size(self.encoded_size(), limit)
    }

    /// [`Error::PayloadTooLarge`] if `size`, this event's encoded size as
    /// the caller measured it, exceeds `limit` bytes.
    pub fn check_encoded_size(&self, size: usize, limit: usize) -> Result<()> {
        if size > limit {
            return Err(Error::PayloadTooLarge {
                event_id: self.event_id,
                event_type: self.event_type.clone(),
                size,
                limit,
            });
        }
        Ok(())
    }
}

struct ByteCounter(usize);

impl std::io::Write for ByteCounter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An event as stored: its envelope plus its raw payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordedEvent {
    /// Unique id.
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream, from 1, contiguous.
    pub stream_version: u64,
    /// Its position in the global log: strictly increasing in log order,
    /// not necessarily contiguous.
    pub global_position: u64,
    /// Stored type name.
    pub event_type: String,
    /// Stored schema version (before upcasting).
    pub schema_version: u32,
    /// Stored payload.
    pub payload: Value,
    /// Metadata.
    pub metadata: Metadata,
    /// When the store recorded it.
    pub recorded_at: DateTime<Utc>,
}

impl RecordedEvent {
    /// Upcast to the current schema and decode into a typed envelope.
    pub fn decode<E: Event>(&self, upcasters: &Upcasters) -> Result<Envelope<E>> {
        let event = upcasters.decode::<E>(&self.event_type, self.schema_version, self.payload.clone())?;
        Ok(Envelope {
            event_id: self.event_id,
            stream_id: self.stream_id.clone(),
            stream_version: self.stream_version,
            global_position: Some(self.global_position),
            event_type: event.event_type().to_owned(),
            schema_version: E::current_version(event.event_type()),
            metadata: self.metadata.clone(),
            recorded_at: Some(self.recorded_at),
            event,
        })
    }
}

/// A typed event with everything known about it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope<E> {
    /// Unique id (UUID v7).
    pub event_id: Uuid,
    /// The stream it belongs to.
    pub stream_id: StreamId,
    /// Its version in the stream.
    pub stream_version: u64,
    /// Its position in the global log, once stored.
    pub global_position: Option<u64>,
    /// Type name.
    pub event_type: String,
    /// Schema version of `event` (the current one after upcasting).
    pub schema_version: u32,
    /// Metadata.
    pub metadata: Metadata,
    /// When the store recorded it, once stored.
    pub recorded_at: Option<DateTime<Utc>>,
    /// The event.
    pub event: E,
}
