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

/// The name of an event stream, usually `"{aggregate type}-{aggregate id}"`,
/// and its category.
///
/// Any Unicode text is accepted except the empty string, control characters
/// (NUL cannot be stored by PostgreSQL) and ids over [`MAX_STREAM_ID_LEN`]
/// bytes.
///
/// The category (the aggregate type) is stored with every event, so that
/// readers of the global log can filter on it exactly
/// ([`LogFilter`](crate::store::LogFilter)). It is a prefix of the id:
/// [`for_aggregate`](StreamId::for_aggregate) and
/// [`in_category`](StreamId::in_category) say where it ends (so `("order",
/// "line-1")` and `("order-line", "1")` have different categories);
/// [`new`](StreamId::new) takes the text before the first `-` (or the whole
/// id). Two ids with the same text and different categories are different
/// values, but name the same stream in a store.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct StreamId {
    id: String,
    #[serde(skip)]
    category_len: usize,
}

impl StreamId {
    /// Validate and wrap a stream id; its category is the text before the
    /// first `-`, or the whole id (when there is no `-`, or it comes first).
    pub fn new(id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let category_len = id.find('-').filter(|&at| at > 0).unwrap_or(id.len());
        Self::checked(id, category_len)
    }

    /// The stream of one aggregate instance: `"{aggregate_type}-{id}"`, in
    /// category `aggregate_type`.
    pub fn for_aggregate(aggregate_type: &str, id: &str) -> Result<Self> {
        Self::in_category(aggregate_type, [aggregate_type, "-", id].concat())
    }

    /// Stream `id` in `category`, which must be a non-empty prefix of it,
    /// followed by `-` or the end of the id.
    pub fn in_category(category: &str, id: impl Into<String>) -> Result<Self> {
        let id = id.into();
        let follows = id
            .strip_prefix(category)
            .map(|rest| rest.is_empty() || rest.starts_with('-'));
        if category.is_empty() || follows != Some(true) {
            return Err(Error::InvalidStreamId {
                stream: id,
                reason: "the category must be a non-empty prefix of the stream id, followed by `-`",
            });
        }
        Self::checked(id, category.len())
    }

    fn checked(id: String, category_len: usize) -> Result<Self> {
        let reason = name_problem(
            &id,
            MAX_STREAM_ID_LEN,
            [
                "stream id is empty",
                "stream id is longer than 512 bytes",
                "stream id contains a control character",
            ],
        );
        match reason {
            Some(reason) => Err(Error::InvalidStreamId { stream: id, reason }),
            None => Ok(StreamId { id, category_len }),
        }
    }

    /// The id as text.
    pub fn as_str(&self) -> &str {
        &self.id
    }

    /// The stream's category (its aggregate type).
    pub fn category(&self) -> &str {
        &self.id[..self.category_len]
    }
}

/// What is wrong with a name (a stream id, an event type) that must be
/// non-empty, at most `max` bytes and free of control characters (NUL
/// cannot be stored by PostgreSQL): one of `reasons`, in that order.
fn name_problem(name: &str, max: usize, reasons: [&'static str; 3]) -> Option<&'static str> {
    if name.is_empty() {
        Some(reasons[0])
    } else if name.len() > max {
        Some(reasons[1])
    } else if has_control_character(name) {
        Some(reasons[2])
    } else {
        None
    }
}

/// Printable ASCII, the common case, is told a byte at a time; anything
/// else is looked at a character at a time.
fn has_control_character(name: &str) -> bool {
    !name.bytes().all(|b| (0x20..0x7f).contains(&b)) && name.chars().any(char::is_control)
}

impl fmt::Display for StreamId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.id)
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
/// # `#[derive(Event)]` (feature `derive`, on by default)
///
/// ```
/// use serde::{Deserialize, Serialize};
/// use strata_core::{BoxError, Event, Value};
///
/// #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Event)]
/// enum AccountEvent {
///     Opened { owner: String },
///     // Stored as "MoneyDeposited", whatever the variant is called later.
///     // Schema v2; v1 called the field `value`, and this lifts it.
///     #[strata(rename = "MoneyDeposited", version = 2, upcast(from = 1, with = deposited_v1))]
///     Deposited { amount: u64 },
///     Closed,
/// }
///
/// fn deposited_v1(mut v: Value) -> Result<Value, BoxError> {
///     let amount = v["value"].take();
///     Ok(strata_core::json!({ "amount": amount }))
/// }
///
/// # fn main() -> strata_core::Result<()> {
/// let e = AccountEvent::Deposited { amount: 5 };
/// assert_eq!(e.event_type(), "MoneyDeposited");
/// assert_eq!(AccountEvent::current_version("MoneyDeposited"), 2);
/// // Every reader gets the upcasters declared with the type.
/// let old = strata_core::json!({ "value": 5 });
/// assert_eq!(AccountEvent::upcasters().decode::<AccountEvent>("MoneyDeposited", 1, old)?, e);
/// # Ok(()) }
/// ```
///
/// A chain with a missing step does not compile:
///
/// ```compile_fail
/// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, strata_core::Event)]
/// enum E {
///     #[strata(version = 3, upcast(from = 1, with = up))]
///     Moved { to: u32 },
/// }
/// fn up(v: strata_core::Value) -> Result<strata_core::Value, strata_core::BoxError> { Ok(v) }
/// ```
///
/// and neither does a serde shape other than the externally tagged one:
///
/// ```compile_fail
/// #[derive(Clone, Debug, serde::Serialize, serde::Deserialize, strata_core::Event)]
/// #[serde(tag = "type")]
/// enum E {
///     Moved { to: u32 },
/// }
/// ```
///
/// Each variant is one event type, named after the variant (or its
/// `#[serde(rename)]`); `#[strata(rename = "...")]` keeps the stored name
/// stable when the variant is renamed. `#[strata(version = N)]` sets the
/// schema version, and `#[strata(upcast(from = K, with = f))]` declares the
/// step from `K` to `K + 1`, a `fn(Value) -> Result<Value, BoxError>`. A
/// chain that does not reach the current version does not compile. The
/// command handler, the property laws and every other reader apply the
/// declared upcasters without wiring ([`Event::upcasters`]).
///
/// # By hand
///
/// The default [`encode`](Event::encode)/[`decode`](Event::decode) use
/// serde's default ("externally tagged") enum representation: the variant
/// name is the stored event type and the variant's content is the payload.
/// Override both for any other shape.
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

    /// Every event type name this type is stored as, where it can say
    /// (`#[derive(Event)]` lists them): [`Upcasters::check`] uses it to
    /// find incomplete chains at start-up. Empty by default.
    fn event_types() -> &'static [&'static str] {
        &[]
    }

    /// The upcasters declared with this type (`#[derive(Event)]` registers
    /// its `upcast` steps). The command handler and the property laws start
    /// from these and add the ones they are given. None by default.
    fn upcasters() -> Upcasters {
        Upcasters::new()
    }

    /// This event's payload as JSON, without its type name.
    ///
    /// The default takes serde's externally tagged form `{"Type": payload}`
    /// (or `"Type"` for a unit variant) and keeps the payload, where `Type`
    /// must be [`event_type`](Event::event_type). Any other shape (a
    /// variant name that differs from `event_type()`, a struct, an
    /// internally tagged enum) would not decode back to the same event, and
    /// is [`Error::UnencodableEvent`]: override `encode` and `decode`
    /// together for such types (or derive them).
    fn encode(&self) -> Result<Value> {
        encode_tagged(self, self.event_type(), self.event_type())
    }

    /// Build an event from its type name and a payload at the current schema
    /// version. An unknown type is [`Error::UnknownEventType`].
    fn decode(event_type: &str, schema_version: u32, payload: Value) -> Result<Self> {
        decode_tagged(event_type, event_type, schema_version, payload)
    }

    /// [`decode`](Event::decode) from the payload's JSON text, as a store
    /// that keeps it as text hands it over. The default parses the text and
    /// calls `decode`; `#[derive(Event)]` reads the event straight from
    /// the text, without building a [`Value`] first (what makes a replay
    /// cheap).
    fn decode_json(event_type: &str, schema_version: u32, payload: &str) -> Result<Self> {
        let value = serde_json::from_str(payload)
            .map_err(|e| Error::decode(format!("payload of `{event_type}`"), e))?;
        Self::decode(event_type, schema_version, value)
    }
}

/// The payload of `event`, whose serde form must be the externally tagged
/// `{tag: payload}` (or `"tag"` for a unit variant); `event_type` names it
/// in errors. Any other form is [`Error::UnencodableEvent`]. Used by the
/// default [`Event::encode`] and by `#[derive(Event)]`.
pub fn encode_tagged<E: Serialize>(event: &E, tag: &str, event_type: &str) -> Result<Value> {
    let value = serde_json::to_value(event).map_err(|e| Error::encode(format!("`{event_type}`"), e))?;
    let unfaithful = |reason: String| Error::UnencodableEvent {
        event_type: event_type.to_owned(),
        reason,
    };
    match value {
        Value::String(name) if name == tag => Ok(Value::Null),
        Value::String(name) => Err(unfaithful(format!(
            "it serializes as the unit variant `{name}`, but it is stored as `{tag}`"
        ))),
        Value::Object(mut map) if map.len() == 1 => match map.remove(tag) {
            Some(payload) => Ok(payload),
            None => {
                let key = map.keys().next().map_or("", String::as_str);
                Err(unfaithful(format!(
                    "it serializes as {{\"{key}\": ...}}, which names no variant `{tag}` \
                     (a variant renamed apart from event_type(), or a struct with one field)"
                )))
            }
        },
        other => Err(unfaithful(format!(
            "the default encoding takes an externally tagged enum variant, but it serializes as {}; \
             override Event::encode and Event::decode",
            json_kind(&other)
        ))),
    }
}

/// Decode `payload` as the variant serde calls `tag`, for the stored
/// `event_type`: the inverse of [`encode_tagged`]. `{"tag": null}` reads as
/// a unit variant too (and as a newtype variant holding `None`).
pub fn decode_tagged<E: DeserializeOwned>(
    tag: &str,
    event_type: &str,
    schema_version: u32,
    payload: Value,
) -> Result<E> {
    let mut map = serde_json::Map::with_capacity(1);
    map.insert(tag.to_owned(), payload);
    serde_json::from_value(Value::Object(map)).map_err(|e| tagged_error(event_type, schema_version, e))
}

/// [`decode_tagged`] from the payload's JSON text: the text is wrapped as
/// `{"tag": payload}` and read straight into `E`.
pub fn decode_tagged_json<E: DeserializeOwned>(
    tag: &str,
    event_type: &str,
    schema_version: u32,
    payload: &str,
) -> Result<E> {
    let tag_json = serde_json::to_string(tag).map_err(|e| Error::encode("event tag", e))?;
    let mut tagged = String::with_capacity(tag_json.len() + payload.len() + 3);
    tagged.push('{');
    tagged.push_str(&tag_json);
    tagged.push(':');
    tagged.push_str(payload);
    tagged.push('}');
    serde_json::from_str(&tagged).map_err(|e| tagged_error(event_type, schema_version, e))
}

/// A decoding error of a tagged payload: serde's enum visitor reports a
/// missing variant as `unknown variant`, which is an unknown event type.
fn tagged_error(event_type: &str, schema_version: u32, e: serde_json::Error) -> Error {
    if e.is_data() && e.to_string().starts_with("unknown variant") {
        Error::UnknownEventType {
            event_type: event_type.to_owned(),
            schema_version,
        }
    } else {
        Error::decode(format!("payload of `{event_type}`"), e)
    }
}

fn json_kind(value: &Value) -> String {
    match value {
        Value::Null => "null".to_owned(),
        Value::Bool(_) => "a boolean".to_owned(),
        Value::Number(_) => "a number".to_owned(),
        Value::String(_) => "a string".to_owned(),
        Value::Array(_) => "an array".to_owned(),
        Value::Object(map) => format!("an object with {} fields", map.len()),
    }
}

/// Longest event type name accepted, in bytes.
pub const MAX_EVENT_TYPE_LEN: usize = 256;

/// Deepest nesting of arrays and objects accepted in a payload.
///
/// JSON parsers limit nesting (serde_json, which reads every stored event
/// back, stops at 128 levels); an event that could be stored but not read
/// would stop every reader of the log at it. 64 leaves room for the
/// envelopes a payload travels in (a JSON line of the CLI, a message on a
/// bus).
pub const MAX_JSON_DEPTH: usize = 64;

/// How deeply `value` nests arrays and objects (a scalar is 0, `[]` is 1),
/// counted without recursion, so any depth is measured safely.
pub fn json_depth(value: &Value) -> usize {
    let mut deepest = 0;
    let mut stack = vec![(value, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().map(|c| (c, depth + 1))),
            Value::Object(map) => stack.extend(map.values().map(|c| (c, depth + 1))),
            _ => continue,
        }
        deepest = deepest.max(depth + 1);
    }
    deepest
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

    /// Check that this event can be stored and read back by every reader:
    /// [`check_shape`](Self::check_shape), then its type name plus
    /// [`encoded_size`](Self::encoded_size) must be at most `limit` bytes
    /// ([`Error::PayloadTooLarge`]).
    pub fn validate(&self, limit: usize) -> Result<()> {
        self.check_shape()?;
        self.check_encoded_size(self.encoded_size(), limit)
    }

    /// Check what does not depend on a size limit, before anything
    /// serializes the payload: the type name is valid
    /// ([`Error::InvalidEventType`]) and the payload nests at most
    /// [`MAX_JSON_DEPTH`] levels ([`Error::PayloadTooDeep`]).
    pub fn check_shape(&self) -> Result<()> {
        let ty = &self.event_type;
        let reason = name_problem(
            ty,
            MAX_EVENT_TYPE_LEN,
            [
                "event type is empty",
                "event type is longer than 256 bytes",
                "event type contains a control character",
            ],
        );
        if let Some(reason) = reason {
            return Err(Error::InvalidEventType {
                event_type: ty.clone(),
                reason,
            });
        }
        let depth = json_depth(&self.payload);
        if depth > MAX_JSON_DEPTH {
            return Err(Error::PayloadTooDeep {
                event_id: self.event_id,
                event_type: ty.clone(),
                depth,
                limit: MAX_JSON_DEPTH,
            });
        }
        Ok(())
    }

    /// [`Error::PayloadTooLarge`] if the type name plus `encoded_size`, the
    /// encoded size of payload and metadata as the caller measured it (a
    /// store that serializes them anyway), exceeds `limit` bytes.
    pub fn check_encoded_size(&self, encoded_size: usize, limit: usize) -> Result<()> {
        let size = self.event_type.len() + encoded_size;
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

    /// [`Error::RepeatedEventId`] if an id appears twice in `batch`.
    pub fn check_unique_ids(batch: &[NewEvent]) -> Result<()> {
        if batch.len() < 2 {
            return Ok(());
        }
        let mut seen = std::collections::HashSet::with_capacity(batch.len());
        match batch.iter().find(|e| !seen.insert(e.event_id)) {
            Some(e) => Err(Error::RepeatedEventId { event_id: e.event_id }),
            None => Ok(()),
        }
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

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Good {
        Opened { owner: String },
        Tagged(Option<u32>),
        Closed,
    }

    impl Event for Good {
        fn event_type(&self) -> &'static str {
            match self {
                Good::Opened { .. } => "Opened",
                Good::Tagged(_) => "Tagged",
                Good::Closed => "Closed",
            }
        }
    }

    fn round_trip<E: Event + PartialEq>(e: &E) -> Result<E> {
        E::decode(e.event_type(), 1, e.encode()?)
    }

    #[test]
    fn default_encoding_round_trips_every_variant_shape() -> Result<()> {
        for e in [
            Good::Opened { owner: "ada".into() },
            Good::Tagged(None),
            Good::Tagged(Some(3)),
            Good::Closed,
        ] {
            assert_eq!(round_trip(&e)?, e);
        }
        assert_eq!(Good::Closed.encode()?, Value::Null);
        assert_eq!(
            Good::Opened { owner: "a".into() }.encode()?,
            json!({"owner": "a"})
        );
        Ok(())
    }

    /// `event_type()` names the variant apart from its serde name.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Renamed {
        Deposited { amount: u64 },
        Closed,
    }

    impl Event for Renamed {
        fn event_type(&self) -> &'static str {
            match self {
                Renamed::Deposited { .. } => "MoneyDeposited",
                Renamed::Closed => "AccountClosed",
            }
        }
    }

    /// A struct with a single field: `{"amount": 5}` looks like a tagged enum.
    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Deposited {
        amount: u64,
    }

    impl Event for Deposited {
        fn event_type(&self) -> &'static str {
            "Deposited"
        }
    }

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    #[serde(tag = "type")]
    enum Internal {
        Opened { owner: String },
    }

    impl Event for Internal {
        fn event_type(&self) -> &'static str {
            "Opened"
        }
    }

    fn unencodable<E: Event>(e: E) -> String {
        match e.encode() {
            Err(err @ Error::UnencodableEvent { .. }) => err.to_string(),
            other => panic!("{e:?} must not encode, got {other:?}"),
        }
    }

    #[test]
    fn shapes_that_would_lose_the_payload_are_typed_errors() {
        let message = unencodable(Renamed::Deposited { amount: 5 });
        assert!(message.contains("MoneyDeposited"), "{message}");
        unencodable(Renamed::Closed);
        unencodable(Deposited { amount: 5 });
        unencodable(Internal::Opened { owner: "ada".into() });
        let err = NewEvent::from_event(&Deposited { amount: 5 }, Metadata::default()).unwrap_err();
        assert!(matches!(err, Error::UnencodableEvent { .. }), "{err:?}");
    }

    #[test]
    fn depth_counts_nested_containers_without_recursion() {
        assert_eq!(json_depth(&json!(1)), 0);
        assert_eq!(json_depth(&json!([])), 1);
        assert_eq!(json_depth(&json!({"a": [1, {"b": []}], "c": 2})), 4);
        let mut deep = json!(null);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(json_depth(&deep), 100_000);
        // Drop it iteratively too: serde_json's drop of such a value recurses.
        let mut v = deep;
        while let Value::Array(mut items) = v {
            v = items.pop().unwrap_or(Value::Null);
        }
    }

    #[test]
    fn validation_counts_the_type_and_refuses_bad_names() -> Result<()> {
        let mut e = NewEvent::from_event(&Good::Closed, Metadata::default())?;
        let size = e.encoded_size();
        e.validate(size + e.event_type.len())?;
        let err = e.validate(size + e.event_type.len() - 1).unwrap_err();
        assert!(matches!(err, Error::PayloadTooLarge { .. }), "{err:?}");
        e.event_type = String::new();
        assert!(matches!(e.validate(1 << 20), Err(Error::InvalidEventType { .. })));
        e.event_type = "a\nb".into();
        assert!(matches!(e.validate(1 << 20), Err(Error::InvalidEventType { .. })));
        let twice = vec![e.clone(), e.clone()];
        assert!(matches!(
            NewEvent::check_unique_ids(&twice),
            Err(Error::RepeatedEventId { event_id }) if event_id == e.event_id
        ));
        Ok(())
    }
}
