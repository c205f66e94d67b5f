//! Decoding stored rows into core types, without panicking on odd data.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use strata_core::{Error, Metadata, RecordedEvent, Result, Snapshot, StreamId};
use uuid::Uuid;

use crate::error::out_of_range;

/// The columns every event query selects, in [`EventRow`] order.
/// Metadata comes as text: it is parsed once, straight into [`Metadata`].
pub(crate) const EVENT_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, \
     event_type, schema_version, payload, metadata::text AS metadata, recorded_at";

/// [`EVENT_COLUMNS`] for reading one stream, whose id the reader knows: the
/// id is neither sent nor decoded again for every row.
pub(crate) const STREAM_EVENT_COLUMNS: &str = "global_position, NULL::text AS stream_id, \
     stream_version, event_id, event_type, schema_version, payload, metadata::text AS metadata, \
     recorded_at";

#[derive(Debug)]
pub(crate) struct EventRow {
    global_position: i64,
    stream_id: Option<String>,
    stream_version: i64,
    event_id: Uuid,
    event_type: String,
    schema_version: i32,
    payload: Value,
    metadata: String,
    recorded_at: DateTime<Utc>,
}

/// By position (the order of [`EVENT_COLUMNS`]), not by name: a name lookup
/// per column per row is a measurable share of reading the log.
impl<'r> sqlx::FromRow<'r, PgRow> for EventRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        Ok(EventRow {
            global_position: row.try_get(0)?,
            stream_id: row.try_get(1)?,
            stream_version: row.try_get(2)?,
            event_id: row.try_get(3)?,
            event_type: row.try_get(4)?,
            schema_version: row.try_get(5)?,
            payload: row.try_get(6)?,
            metadata: row.try_get(7)?,
            recorded_at: row.try_get(8)?,
        })
    }
}

impl TryFrom<EventRow> for RecordedEvent {
    type Error = Error;

    fn try_from(row: EventRow) -> Result<Self> {
        row.into_recorded(None)
    }
}

impl EventRow {
    /// The stored event; `stream` stands in for a stream id not selected.
    fn into_recorded(self, stream: Option<&StreamId>) -> Result<RecordedEvent> {
        let row = self;
        let stream_id = match (row.stream_id, stream) {
            (Some(id), _) => StreamId::new(id)?,
            (None, Some(stream)) => stream.clone(),
            (None, None) => return Err(Error::Backend("event row without a stream id".into())),
        };
        let metadata: Metadata =
            serde_json::from_str(&row.metadata).map_err(|source| Error::Serialization {
                op: "decode",
                what: format!("metadata of event {}", row.event_id),
                source,
            })?;
        Ok(RecordedEvent {
            event_id: row.event_id,
            stream_id,
            stream_version: to_u64("stream_version", row.stream_version)?,
            global_position: to_u64("global_position", row.global_position)?,
            event_type: row.event_type,
            schema_version: u32::try_from(row.schema_version)
                .map_err(|_| out_of_range("schema_version", row.schema_version))?,
            payload: row.payload,
            metadata,
            recorded_at: row.recorded_at,
        })
    }
}

pub(crate) fn to_events(rows: Vec<EventRow>) -> Result<Vec<RecordedEvent>> {
    rows.into_iter().map(|r| r.into_recorded(None)).collect()
}

/// Rows of one stream selected with [`STREAM_EVENT_COLUMNS`].
pub(crate) fn to_stream_events(rows: Vec<EventRow>, stream: &StreamId) -> Result<Vec<RecordedEvent>> {
    rows.into_iter().map(|r| r.into_recorded(Some(stream))).collect()
}

#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    stream_id: String,
    stream_version: i64,
    schema_version: i32,
    state: Value,
}

impl TryFrom<SnapshotRow> for Snapshot {
    type Error = Error;

    fn try_from(row: SnapshotRow) -> Result<Self> {
        Ok(Snapshot {
            stream_id: StreamId::new(row.stream_id)?,
            stream_version: to_u64("stream_version", row.stream_version)?,
            schema_version: u32::try_from(row.schema_version)
                .map_err(|_| out_of_range("schema_version", row.schema_version))?,
            state: row.state,
        })
    }
}

pub(crate) fn to_u64(what: &'static str, v: i64) -> Result<u64> {
    u64::try_from(v).map_err(|_| out_of_range(what, v))
}

/// A `u64` argument as a PostgreSQL `bigint`, saturating: every stored
/// value is below `i64::MAX`, so a larger bound means "no bound".
pub(crate) fn to_i64_saturating(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// A count as a `LIMIT`.
pub(crate) fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row() -> EventRow {
        EventRow {
            global_position: 1 << 20 | 1,
            stream_id: Some("s-1".into()),
            stream_version: 1,
            event_id: Uuid::nil(),
            event_type: "Added".into(),
            schema_version: 1,
            payload: Value::Null,
            metadata: "{}".to_owned(),
            recorded_at: Utc::now(),
        }
    }

    #[test]
    fn negative_numbers_are_typed_errors() {
        let mut r = row();
        r.stream_version = -3;
        assert!(matches!(RecordedEvent::try_from(r), Err(Error::Backend(_))));
        let mut r = row();
        r.schema_version = -1;
        assert!(matches!(RecordedEvent::try_from(r), Err(Error::Backend(_))));
    }

    #[test]
    fn odd_metadata_is_a_serialization_error() {
        let mut r = row();
        r.metadata = r#"{"correlation_id": 5}"#.to_owned();
        assert!(matches!(
            RecordedEvent::try_from(r),
            Err(Error::Serialization { .. })
        ));
    }

    #[test]
    fn stored_stream_id_with_control_char_is_refused() {
        let mut r = row();
        r.stream_id = Some("a\u{1}b".into());
        assert!(matches!(
            RecordedEvent::try_from(r),
            Err(Error::InvalidStreamId { .. })
        ));
    }

    #[test]
    fn large_arguments_saturate() {
        assert_eq!(to_i64_saturating(u64::MAX), i64::MAX);
        assert_eq!(limit(usize::MAX), i64::MAX);
    }
}
