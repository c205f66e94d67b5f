//! Decoding stored rows into core types, without panicking on odd data.

use chrono::{DateTime, Utc};
use serde_json::Value;
use sqlx::Row;
use sqlx::postgres::PgRow;
use strata_core::store::{CommandDecision, CommandRecord};
use strata_core::{Error, FoldEvent, FoldPayload, Metadata, RecordedEvent, Result, Snapshot, StreamId};
use uuid::Uuid;

use crate::error::out_of_range;

/// The columns every event query selects, in [`EventRow`] order.
/// Payload and metadata come as text and are parsed here, row by row, so
/// that a row that does not parse fails alone, naming its event, instead
/// of failing the whole query (as a `jsonb` column the driver would parse
/// them while fetching). Metadata is parsed straight into [`Metadata`].
pub(crate) const EVENT_COLUMNS: &str = "global_position, stream_id, stream_version, event_id, \
     event_type, schema_version, payload::text AS payload, metadata::text AS metadata, recorded_at, \
     category";

/// [`EVENT_COLUMNS`] for reading one stream, whose id the reader knows: the
/// id is neither sent nor decoded again for every row.
pub(crate) const STREAM_EVENT_COLUMNS: &str = "global_position, NULL::text AS stream_id, \
     stream_version, event_id, event_type, schema_version, payload::text AS payload, \
     metadata::text AS metadata, recorded_at, NULL::text AS category";

#[derive(Debug)]
pub(crate) struct EventRow {
    global_position: i64,
    stream_id: Option<String>,
    stream_version: i64,
    event_id: Uuid,
    event_type: String,
    schema_version: i32,
    /// Parsed from the row's text as it is fetched; a failure is kept, to
    /// be reported with the event's id and position.
    payload: serde_json::Result<Value>,
    metadata: serde_json::Result<Metadata>,
    recorded_at: DateTime<Utc>,
    category: Option<String>,
}

/// By position (the order of [`EVENT_COLUMNS`]), not by name: a name lookup
/// per column per row is a measurable share of reading the log. Payload
/// and metadata are parsed straight from the row's buffer, never copied to
/// a `String` first.
impl<'r> sqlx::FromRow<'r, PgRow> for EventRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        EventRow::from_row_at(row, 0)
    }
}

impl EventRow {
    /// The event's global position, as stored.
    pub(crate) fn position(&self) -> i64 {
        self.global_position
    }

    /// The event whose [`EVENT_COLUMNS`] start at column `at`. The columns'
    /// types are fixed by that list and the migrations, so they are not
    /// checked again for every row (a value that does not decode is still
    /// an error).
    pub(crate) fn from_row_at(row: &PgRow, at: usize) -> Result<Self, sqlx::Error> {
        Ok(EventRow {
            global_position: row.try_get_unchecked(at)?,
            stream_id: row.try_get_unchecked(at + 1)?,
            stream_version: row.try_get_unchecked(at + 2)?,
            event_id: row.try_get_unchecked(at + 3)?,
            event_type: row.try_get_unchecked(at + 4)?,
            schema_version: row.try_get_unchecked(at + 5)?,
            payload: serde_json::from_str(row.try_get_unchecked::<&str, _>(at + 6)?),
            metadata: serde_json::from_str(row.try_get_unchecked::<&str, _>(at + 7)?),
            recorded_at: row.try_get_unchecked(at + 8)?,
            category: row.try_get_unchecked(at + 9)?,
        })
    }
}

/// The columns a fold needs ([`EventStore::read_stream_for_fold`]): no
/// id, position, metadata or time, and the payload kept as text.
///
/// [`EventStore::read_stream_for_fold`]: strata_core::EventStore::read_stream_for_fold
pub(crate) const FOLD_COLUMNS: &str = "stream_version, event_type, schema_version, payload::text";

/// A row of [`FOLD_COLUMNS`], by position.
#[derive(Debug)]
pub(crate) struct FoldRow(FoldEvent);

impl<'r> sqlx::FromRow<'r, PgRow> for FoldRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let (version, schema_version): (i64, i32) = (row.try_get_unchecked(0)?, row.try_get_unchecked(2)?);
        let decode = |e: Error| sqlx::Error::Decode(Box::new(e));
        Ok(FoldRow(FoldEvent {
            stream_version: to_u64("stream_version", version).map_err(decode)?,
            event_type: row.try_get_unchecked(1)?,
            schema_version: u32::try_from(schema_version)
                .map_err(|_| decode(out_of_range("schema_version", schema_version)))?,
            payload: FoldPayload::Json(row.try_get_unchecked(3)?),
        }))
    }
}

impl From<FoldRow> for FoldEvent {
    fn from(row: FoldRow) -> Self {
        row.0
    }
}

/// A row of a filtered page of the log: the horizon, then the event's
/// [`EVENT_COLUMNS`], all NULL on the one row of an empty page.
#[derive(Debug)]
pub(crate) struct FilteredRow {
    pub(crate) below: i64,
    pub(crate) event: Option<EventRow>,
}

impl<'r> sqlx::FromRow<'r, PgRow> for FilteredRow {
    fn from_row(row: &'r PgRow) -> Result<Self, sqlx::Error> {
        let event = match row.try_get::<Option<i64>, _>(1)? {
            Some(_) => Some(EventRow::from_row_at(row, 1)?),
            None => None,
        };
        Ok(FilteredRow {
            below: row.try_get(0)?,
            event,
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
    /// A row that cannot be read is [`Error::UndecodableEvent`], naming the
    /// event, its position and why.
    fn into_recorded(self, stream: Option<&StreamId>) -> Result<RecordedEvent> {
        let (event_id, position) = (self.event_id, self.global_position);
        self.decode(stream).map_err(|reason| Error::UndecodableEvent {
            event_id,
            // Only a position strata reads (above 0) can be gone past.
            global_position: u64::try_from(position).unwrap_or(0),
            reason: reason.into(),
        })
    }

    fn decode(self, stream: Option<&StreamId>) -> Result<RecordedEvent> {
        let row = self;
        let stream_id = match (row.stream_id, stream) {
            (Some(id), _) => match row.category {
                Some(category) => StreamId::in_category(&category, id)?,
                None => StreamId::new(id)?,
            },
            (None, Some(stream)) => stream.clone(),
            (None, None) => return Err(Error::Backend("event row without a stream id".into())),
        };
        let metadata = row
            .metadata
            .map_err(|e| Error::decode(format!("metadata of event {}", row.event_id), e))?;
        let payload = row
            .payload
            .map_err(|e| Error::decode(format!("payload of event {}", row.event_id), e))?;
        Ok(RecordedEvent {
            event_id: row.event_id,
            stream_id,
            stream_version: to_u64("stream_version", row.stream_version)?,
            global_position: to_u64("global_position", row.global_position)?,
            event_type: row.event_type,
            schema_version: u32::try_from(row.schema_version)
                .map_err(|_| out_of_range("schema_version", row.schema_version))?,
            payload,
            metadata,
            recorded_at: row.recorded_at,
        })
    }
}

/// The events of a page of the global log, in order, up to the first row
/// that cannot be read: a page that starts with one is
/// [`Error::UndecodableEvent`], any other page ends before it (the next
/// read starts there), so one bad row never hides the good ones before it.
pub(crate) fn to_log_page(rows: Vec<EventRow>) -> Result<Vec<RecordedEvent>> {
    let mut events = Vec::with_capacity(rows.len());
    for row in rows {
        match row.into_recorded(None) {
            Ok(e) => events.push(e),
            Err(e) if events.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    Ok(events)
}

/// Rows selected with [`EVENT_COLUMNS`], all of which must be readable.
pub(crate) fn to_events(rows: Vec<EventRow>) -> Result<Vec<RecordedEvent>> {
    rows.into_iter().map(|r| r.into_recorded(None)).collect()
}

/// Rows of one stream selected with [`STREAM_EVENT_COLUMNS`]. A stream
/// cannot be read past a missing event, so any unreadable row fails it.
pub(crate) fn to_stream_events(rows: Vec<EventRow>, stream: &StreamId) -> Result<Vec<RecordedEvent>> {
    rows.into_iter().map(|r| r.into_recorded(Some(stream))).collect()
}

/// A snapshot, its state as text (see [`EVENT_COLUMNS`] for why).
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct SnapshotRow {
    stream_id: String,
    stream_version: i64,
    schema_version: i32,
    state: String,
}

impl TryFrom<SnapshotRow> for Snapshot {
    type Error = Error;

    fn try_from(row: SnapshotRow) -> Result<Self> {
        let state = serde_json::from_str(&row.state)
            .map_err(|e| Error::decode(format!("snapshot state of stream `{}`", row.stream_id), e))?;
        Ok(Snapshot {
            stream_id: StreamId::new(row.stream_id)?,
            stream_version: to_u64("stream_version", row.stream_version)?,
            schema_version: u32::try_from(row.schema_version)
                .map_err(|_| out_of_range("schema_version", row.schema_version))?,
            state,
        })
    }
}

/// A row of `strata.commands`.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct CommandRow {
    stream_id: String,
    decision: String,
    first_version: Option<i64>,
    version: i64,
    refusal: Option<String>,
}

/// A row of `strata.commands` with its command id.
#[derive(Debug, sqlx::FromRow)]
pub(crate) struct IdentifiedCommandRow {
    command_id: Uuid,
    #[sqlx(flatten)]
    row: CommandRow,
}

impl IdentifiedCommandRow {
    pub(crate) fn into_record(self) -> Result<CommandRecord> {
        self.row.into_record(self.command_id)
    }
}

impl CommandRow {
    pub(crate) fn into_record(self, command_id: Uuid) -> Result<CommandRecord> {
        let version = to_u64("version", self.version)?;
        let decision = match (self.decision.as_str(), self.first_version, self.refusal) {
            ("appended", Some(first), _) => CommandDecision::Appended {
                first_version: to_u64("first_version", first)?,
                last_version: version,
            },
            ("unchanged", _, _) => CommandDecision::Unchanged { version },
            ("refused", _, Some(refusal)) => CommandDecision::Refused {
                version,
                refusal: serde_json::from_str(&refusal)
                    .map_err(|e| Error::decode(format!("refusal of command {command_id}"), e))?,
            },
            (other, _, _) => {
                return Err(Error::Backend(
                    format!("command {command_id} has an unknown decision {other:?}").into(),
                ));
            }
        };
        Ok(CommandRecord {
            command_id,
            stream_id: StreamId::new(self.stream_id)?,
            decision,
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
            payload: Ok(Value::Null),
            metadata: Ok(Metadata::default()),
            recorded_at: Utc::now(),
            category: Some("s".into()),
        }
    }

    /// The reason an undecodable row gives, after checking it names the row.
    fn undecodable(r: EventRow) -> String {
        match RecordedEvent::try_from(r) {
            Err(Error::UndecodableEvent {
                event_id,
                global_position,
                reason,
            }) => {
                assert_eq!((event_id, global_position), (Uuid::nil(), 1 << 20 | 1));
                reason.to_string()
            }
            other => panic!("expected an undecodable event, got {other:?}"),
        }
    }

    #[test]
    fn negative_numbers_are_typed_errors() {
        let mut r = row();
        r.stream_version = -3;
        assert!(undecodable(r).contains("stream_version is out of range: -3"));
        let mut r = row();
        r.schema_version = -1;
        assert!(undecodable(r).contains("schema_version"));
    }

    #[test]
    fn odd_metadata_and_payloads_name_their_event() {
        let mut r = row();
        r.metadata = serde_json::from_str(r#"{"correlation_id": 5}"#);
        assert!(undecodable(r).starts_with("cannot decode metadata"));
        let mut r = row();
        r.payload = serde_json::from_str("[1e400]");
        assert!(undecodable(r).starts_with("cannot decode payload"));
    }

    #[test]
    fn stored_stream_id_with_control_char_is_refused() {
        let mut r = row();
        r.stream_id = Some("a\u{1}b".into());
        assert!(undecodable(r).starts_with("invalid stream id"));
    }

    #[test]
    fn a_log_page_ends_before_its_first_unreadable_row() {
        let mut bad = row();
        bad.payload = serde_json::from_str("{");
        let page = to_log_page(vec![row(), row(), bad, row()]).unwrap();
        assert_eq!(page.len(), 2);
        let mut bad = row();
        bad.payload = serde_json::from_str("{");
        assert!(matches!(
            to_log_page(vec![bad, row()]),
            Err(Error::UndecodableEvent { .. })
        ));
    }

    #[test]
    fn large_arguments_saturate() {
        assert_eq!(to_i64_saturating(u64::MAX), i64::MAX);
        assert_eq!(limit(usize::MAX), i64::MAX);
    }
}
