-- Every event's stream category (the aggregate type), stored at append, so
-- that readers can filter the global log on it exactly: a prefix of the
-- stream id is not a safe filter ("order-line-1" is stream "line-1" of
-- category "order", or stream "1" of "order-line"). Events stored before
-- this migration get the text before the first '-' of their stream id (the
-- whole id when there is none), as StreamId::new reads it.
--
-- Indexes on (category, position) and (event_type, position) serve
-- filtered reads of the log in position order.

ALTER TABLE strata.events ADD COLUMN category text;

-- The append-only trigger is lifted for this one backfill.
ALTER TABLE strata.events DISABLE TRIGGER events_no_update_or_delete;
UPDATE strata.events
SET category = CASE WHEN position('-' IN stream_id) > 1 THEN split_part(stream_id, '-', 1) ELSE stream_id END;
ALTER TABLE strata.events ENABLE TRIGGER events_no_update_or_delete;

ALTER TABLE strata.events ALTER COLUMN category SET NOT NULL;

CREATE INDEX events_category_position ON strata.events (category, global_position);
CREATE INDEX events_type_position ON strata.events (event_type, global_position);
