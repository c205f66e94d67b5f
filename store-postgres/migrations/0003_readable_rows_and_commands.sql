-- Every row of strata.events must be readable by every strata reader, and
-- command ids name one outcome.
--
-- 1. Constraints refuse rows that strata could not read back, whoever
--    writes them (a DBA, a migration, another service): a stream id or
--    event type strata refuses, a negative schema version or position,
--    metadata of the wrong shape, JSON nested deeper than 64 levels or
--    holding a number beyond the range of a 64-bit float. They are added
--    NOT VALID and then validated: rows stored before this migration that
--    break them are kept (readers report each as an undecodable event and
--    go on past it), and the migration does not fail on them.
--
-- 2. strata.commands records the outcome of every command submitted with a
--    command id: the events it appended (written in the same statement as
--    the events), or a refusal, or no change. Its primary key makes the
--    first outcome the only one.

CREATE FUNCTION strata.readable_json(doc jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT NOT jsonb_path_exists(doc,
               'strict $.**{64 to last} ? (@.type() == "array" || @.type() == "object")')
       AND NOT jsonb_path_exists(doc,
               'strict $.** ? (@.type() == "number" && (@ > 1.7976931348623157e308 || @ < -1.7976931348623157e308))')
$$;

COMMENT ON FUNCTION strata.readable_json(jsonb) IS
    'whether a JSON parser limited to 64 levels of nesting and 64-bit floats reads doc back';

CREATE FUNCTION strata.valid_metadata(m jsonb) RETURNS boolean
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT jsonb_typeof(m) = 'object'
       AND coalesce(jsonb_typeof(m -> 'correlation_id') = 'null'
                    OR (jsonb_typeof(m -> 'correlation_id') = 'string'
                        AND m ->> 'correlation_id' ~* '^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$'),
                    true)
       AND coalesce(jsonb_typeof(m -> 'causation_id') = 'null'
                    OR (jsonb_typeof(m -> 'causation_id') = 'string'
                        AND m ->> 'causation_id' ~* '^([0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}|[0-9a-f]{32})$'),
                    true)
       AND coalesce(jsonb_typeof(m -> 'traceparent') IN ('null', 'string'), true)
       AND coalesce(jsonb_typeof(m -> 'tenant_id') IN ('null', 'string'), true)
       AND coalesce(jsonb_typeof(m -> 'headers') = 'object'
                    AND NOT EXISTS (SELECT 1 FROM jsonb_each(m -> 'headers') h
                                    WHERE jsonb_typeof(h.value) <> 'string'),
                    true)
       AND strata.readable_json(m)
$$;

COMMENT ON FUNCTION strata.valid_metadata(jsonb) IS
    'whether m has the shape of strata event metadata';

ALTER TABLE strata.events
    ADD CONSTRAINT events_position_valid CHECK (global_position > 0) NOT VALID,
    ADD CONSTRAINT events_stream_id_valid CHECK (
        octet_length(stream_id) BETWEEN 1 AND 512
        AND stream_id !~ '[\u0001-\u001f\u007f-\u009f]') NOT VALID,
    ADD CONSTRAINT events_event_type_valid CHECK (
        octet_length(event_type) BETWEEN 1 AND 256
        AND event_type !~ '[\u0001-\u001f\u007f-\u009f]') NOT VALID,
    ADD CONSTRAINT events_schema_version_valid CHECK (schema_version >= 0) NOT VALID,
    ADD CONSTRAINT events_metadata_valid CHECK (strata.valid_metadata(metadata)) NOT VALID,
    ADD CONSTRAINT events_payload_readable CHECK (strata.readable_json(payload)) NOT VALID;

-- Validate what can be: a constraint that old rows break stays NOT VALID
-- (still enforced on new rows), with a notice.
DO $$
DECLARE
    c text;
BEGIN
    FOREACH c IN ARRAY ARRAY['events_position_valid', 'events_stream_id_valid', 'events_event_type_valid',
                             'events_schema_version_valid', 'events_metadata_valid', 'events_payload_readable']
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
