-- strata.events is append-only. The store never changes or removes an event,
-- and its guarantees rely on that: stream versions stay contiguous (an append
-- checks only the stream's last version), and a subscriber that has passed a
-- position never looks back. These triggers refuse UPDATE, DELETE and
-- TRUNCATE on the table, whoever sends them.
--
-- Removing events on purpose (erasing personal data, say) stays possible, as
-- a deliberate act: ALTER TABLE strata.events DISABLE TRIGGER <name>, change,
-- then ENABLE it again. Prefer storing such data encrypted and discarding
-- the key.

CREATE FUNCTION strata.refuse_event_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'strata.events is append-only: % refused', TG_OP
        USING ERRCODE = 'restrict_violation',
              HINT = 'events are never changed or removed; see migration 0002_append_only.sql';
END;
$$;

CREATE TRIGGER events_no_update_or_delete
    BEFORE UPDATE OR DELETE ON strata.events
    FOR EACH STATEMENT EXECUTE FUNCTION strata.refuse_event_change();

CREATE TRIGGER events_no_truncate
    BEFORE TRUNCATE ON strata.events
    FOR EACH STATEMENT EXECUTE FUNCTION strata.refuse_event_change();
