-- The log base (migration 0005) as a constant the planner folds in.
--
-- Every append, and every reader's horizon, adds the log base to a
-- transaction id. Read from strata.log_base, that is a scan of the table
-- in every statement: 9 to 17 % of single-event appends' rate, measured. So
-- strata.xid_offset() returns the base as a constant: a SQL function whose
-- body is a single constant is inlined when a statement is planned, and
-- PostgreSQL plans a cached statement again once a function it inlined is
-- redefined. strata.raise_log_base() redefines it whenever it raises the
-- base, in the same transaction and under the same lock that keeps appends
-- out; strata.log_base stays the record of the base.

DO $$
BEGIN
    EXECUTE format(
        'CREATE FUNCTION strata.xid_offset() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS %L',
        format('SELECT %s::bigint', (SELECT xid_offset FROM strata.log_base)));
END;
$$;

CREATE OR REPLACE FUNCTION strata.raise_log_base() RETURNS bigint
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
    IF strata.xid_offset() IS DISTINCT FROM base THEN
        EXECUTE format(
            'CREATE OR REPLACE FUNCTION strata.xid_offset() RETURNS bigint LANGUAGE sql STABLE PARALLEL SAFE AS %L',
            format('SELECT %s::bigint', base));
    END IF;
    RETURN base;
END;
$$;
