-- Projections (read models) and their runners, as strata-projections keeps
-- them. One row per build of a projection: a build is one version's read
-- model, made from position 0 into its own schema. Exactly one build per
-- name is `active` (the one readers see, through views in the schema named
-- after the projection), at most one is `building` (a new version, or a
-- rebuild, catching up beside it), and replaced ones are `retired`.
--
-- The runner that applies a build holds its lease: `owner`, `token` (raised
-- at every takeover) and `lease_until`. Every batch commits the read model's
-- changes and the new `position` in one transaction, whose last statement
-- only updates this row when the token is still the runner's and the lease
-- has not run out: a runner that lost its lease cannot commit.
--
-- Operators change `state`, `skip_event_id`, `reset_requested` and
-- `rebuild_requested` (the strata CLI does); whichever runner applies the
-- build obeys at its next batch.

CREATE TABLE strata.projections (
    name text NOT NULL CHECK (name ~ '^[a-z][a-z0-9_]{0,39}$'),
    generation integer NOT NULL CHECK (generation > 0),
    version integer NOT NULL CHECK (version > 0),
    schema_name text NOT NULL,
    stage text NOT NULL CHECK (stage IN ('building', 'active', 'retired')),
    state text NOT NULL DEFAULT 'running' CHECK (state IN ('running', 'paused', 'faulted')),
    position bigint NOT NULL DEFAULT 0 CHECK (position >= 0),
    categories text[] NOT NULL DEFAULT '{}',
    event_types text[] NOT NULL DEFAULT '{}',
    events_applied bigint NOT NULL DEFAULT 0,
    owner text,
    token bigint NOT NULL DEFAULT 0,
    lease_until timestamptz,
    heartbeat_at timestamptz,
    fault_event_id uuid,
    fault_position bigint,
    fault_error text,
    fault_attempts integer,
    faulted_at timestamptz,
    last_error text,
    skip_event_id uuid,
    reset_requested boolean NOT NULL DEFAULT false,
    rebuild_requested boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now(),
    activated_at timestamptz,
    updated_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation)
);

CREATE UNIQUE INDEX projections_one_active ON strata.projections (name) WHERE stage = 'active';
CREATE UNIQUE INDEX projections_one_building ON strata.projections (name) WHERE stage = 'building';

-- Events an operator told a projection to pass over, with why it failed.
CREATE TABLE strata.projection_skips (
    name text NOT NULL,
    generation integer NOT NULL,
    event_id uuid NOT NULL,
    global_position bigint NOT NULL,
    error text,
    skipped_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, generation, event_id),
    FOREIGN KEY (name, generation) REFERENCES strata.projections ON DELETE CASCADE
);
