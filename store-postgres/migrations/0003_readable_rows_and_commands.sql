-- Every row of strata.events must be readable by every strata reader, and
-- command ids name one outcome.
--
-- 1. A constraint refuses rows that strata could not read back, whoever
--    writes them (a DBA, a migration, another service), as far as a check
--    costs next to nothing: an empty or over-long stream id or event type,
--    a negative schema version or position. Costlier checks were measured
--    and left out: walking the JSON (metadata of the wrong shape, nesting
--    depth, numbers beyond a 64-bit float) cost 30 to 50 us per row, and
--    jsonb_typeof(metadata) about 25 us, against an append of about 250 us;
--    with them and regular expressions for control characters in ids, a
--    single append fell from about 0.9 to about 0.65 of a plain INSERT.
--    strata validates its
--    own events before writing, and readers report any other unreadable
--    row as an undecodable event, with its id and position, and go on past
--    it. The constraint is added NOT VALID and then validated: rows stored
--    before this migration that break it are kept (readers report them the
--    same way), and the migration does not fail on them.
--
-- 2. strata.commands records the outcome of every command submitted with a
--    command id: the events it appended (written in the same statement as
--    the events), or a refusal, or no change. Its primary key makes the
--    first outcome the only one.

ALTER TABLE strata.events ADD CONSTRAINT events_row_readable CHECK (
    global_position > 0
    AND schema_version >= 0
    AND octet_length(stream_id) BETWEEN 1 AND 512
    AND octet_length(event_type) BETWEEN 1 AND 256
) NOT VALID;

-- Validate it if the rows stored so far allow; else it stays NOT VALID
-- (still enforced on new rows), with a notice.
DO $$
BEGIN
    ALTER TABLE strata.events VALIDATE CONSTRAINT events_row_readable;
EXCEPTION WHEN check_violation THEN
    RAISE NOTICE 'strata.events holds rows that break events_row_readable; they stay, and readers report them';
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
