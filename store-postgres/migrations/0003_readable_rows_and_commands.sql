-- Every row of strata.events must be readable by every strata reader, and
-- command ids name one outcome.
--
-- 1. Constraints refuse rows that strata could not read back, whoever
--    writes them (a DBA, a migration, another service), as far as a check
--    costs next to nothing: a stream id or event type strata refuses, a
--    negative schema version or position, metadata that is not an object.
--    Checks that walk the JSON (metadata field types, nesting depth,
--    numbers beyond a 64-bit float) measured 30 to 50 us per row, a fifth
--    of an append; strata validates its own events before writing, and
--    readers report any other unreadable row as an undecodable event and go
--    on past it. The constraints are added NOT VALID and then validated:
--    rows stored before this migration that break them are kept (readers
--    report them the same way), and the migration does not fail on them.
--
-- 2. strata.commands records the outcome of every command submitted with a
--    command id: the events it appended (written in the same statement as
--    the events), or a refusal, or no change. Its primary key makes the
--    first outcome the only one.

ALTER TABLE strata.events
    ADD CONSTRAINT events_position_valid CHECK (global_position > 0) NOT VALID,
    ADD CONSTRAINT events_stream_id_valid CHECK (
        octet_length(stream_id) BETWEEN 1 AND 512
        AND stream_id !~ '[\u0001-\u001f\u007f-\u009f]') NOT VALID,
    ADD CONSTRAINT events_event_type_valid CHECK (
        octet_length(event_type) BETWEEN 1 AND 256
        AND event_type !~ '[\u0001-\u001f\u007f-\u009f]') NOT VALID,
    ADD CONSTRAINT events_schema_version_valid CHECK (schema_version >= 0) NOT VALID,
    ADD CONSTRAINT events_metadata_valid CHECK (jsonb_typeof(metadata) = 'object') NOT VALID;

-- Validate what can be: a constraint that old rows break stays NOT VALID
-- (still enforced on new rows), with a notice.
DO $$
DECLARE
    c text;
BEGIN
    FOREACH c IN ARRAY ARRAY['events_position_valid', 'events_stream_id_valid', 'events_event_type_valid',
                             'events_schema_version_valid', 'events_metadata_valid']
    LOOP
        BEGIN
            EXECUTE format('ALTER TABLE strata.events VALIDATE CONSTRAINT %I', c);
        EXCEPTION WHEN check_violation THEN
            RAISE NOTICE 'strata.events holds rows that break %; they stay, and readers report them', c;
        END;
    END LOOP;
END;
$$;

CREATE TABLE strata.commands (
    command_id    uuid        PRIMARY KEY,
    stream_id     text        NOT NULL,
    -- 'appended': versions first_version..version of stream_id;
    -- 'unchanged' or 'refused': decided on stream_id at version.
    decision      text        NOT NULL CHECK (decision IN ('appended', 'unchanged', 'refused')),
    first_version bigint      CHECK ((decision = 'appended') = (first_version IS NOT NULL)),
    version       bigint      NOT NULL CHECK (version >= 0),
    refusal       jsonb       CHECK ((decision = 'refused') = (refusal IS NOT NULL)),
    recorded_at   timestamptz NOT NULL DEFAULT now()
);
