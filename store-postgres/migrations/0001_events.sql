-- The event log and snapshots of strata.
--
-- `global_position` is not a sequence: the append computes it as
-- `(writing transaction id << 20) | index in the batch`, which is what makes
-- the horizon read of the global log gap-free (see the crate docs).

CREATE SCHEMA IF NOT EXISTS strata;

CREATE TABLE strata.events (
    global_position bigint      PRIMARY KEY,
    stream_id       text        NOT NULL,
    stream_version  bigint      NOT NULL CHECK (stream_version > 0),
    event_id        uuid        NOT NULL UNIQUE,
    event_type      text        NOT NULL,
    schema_version  int         NOT NULL,
    payload         jsonb       NOT NULL,
    metadata        jsonb       NOT NULL DEFAULT '{}',
    recorded_at     timestamptz NOT NULL DEFAULT now(),
    -- Enforces the expected version and serves stream reads.
    CONSTRAINT events_stream_version_key UNIQUE (stream_id, stream_version)
);

CREATE TABLE strata.snapshots (
    stream_id      text        PRIMARY KEY,
    stream_version bigint      NOT NULL,
    schema_version int         NOT NULL,
    state          jsonb       NOT NULL,
    taken_at       timestamptz NOT NULL DEFAULT now()
);
