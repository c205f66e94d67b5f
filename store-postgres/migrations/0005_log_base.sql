-- Positions only grow, across a logical dump and restore too.
--
-- A position is (transaction id << 20) | index. Transaction ids belong to a
-- cluster: restored into a new one, the log holds positions made from the
-- old cluster's ids, and the new cluster's ids are lower, so new events
-- would get lower positions than restored ones, and a reader resuming from
-- a restored checkpoint would skip them.
--
-- strata.log_base holds an offset added to every transaction id that
-- positions and the readers' horizon are made from. strata.raise_log_base()
-- raises it, when needed, above every stored position; the store runs it
-- on every migrate (strata migrate), and refuses to append while the log
-- needs it.

CREATE TABLE strata.log_base (
    single      boolean PRIMARY KEY DEFAULT true CHECK (single),
    xid_offset  bigint  NOT NULL CHECK (xid_offset >= 0)
);

INSERT INTO strata.log_base (xid_offset) VALUES (0);

CREATE FUNCTION strata.raise_log_base() RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    base bigint;
    top bigint;
    now_xid bigint;
BEGIN
    -- No append runs meanwhile (they take ROW EXCLUSIVE); reads go on.
    LOCK TABLE strata.events IN SHARE ROW EXCLUSIVE MODE;
    SELECT xid_offset INTO base FROM strata.log_base FOR UPDATE;
    SELECT coalesce(max(global_position), 0) >> 20 INTO top FROM strata.events;
    -- Every transaction that appends later has a larger id than this one.
    now_xid := pg_current_xact_id()::text::bigint;
    IF now_xid + base <= top THEN
        base := top - now_xid + 1;
        UPDATE strata.log_base SET xid_offset = base;
    END IF;
    RETURN base;
END;
$$;
