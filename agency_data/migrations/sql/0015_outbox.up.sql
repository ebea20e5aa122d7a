-- The transactional outbox: a message published inside a transaction (tx.publish) is a row
-- written by that transaction, so it exists if and only if the transaction committed. A relay
-- (agency_data.outbox) moves committed rows to Redis Streams or pub/sub channels in id order
-- and marks them sent; sent rows are pruned after outbox.keep_sent seconds.
--
-- A row is relayed only once every transaction older than its own has ended (its xid below
-- the oldest one still running), so a message is never passed over by the relay while an
-- earlier one could still commit: each destination gets its messages in one order, the same
-- for every consumer, and a row's successive changes in the order they committed.
CREATE TABLE outbox (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL DEFAULT 'default',
    kind        text NOT NULL CONSTRAINT outbox_kind_valid CHECK (kind IN ('stream', 'channel')),
    destination text NOT NULL
                CONSTRAINT outbox_destination_valid CHECK (length(destination) BETWEEN 1 AND 256),
    -- json, not jsonb: the message is relayed byte for byte as it was published (jsonb would
    -- rewrite numbers such as 1.2345678901234567e19 and reorder keys).
    message     json NOT NULL,
    -- What consumers deduplicate on (a message relayed twice keeps its id).
    message_id  uuid NOT NULL DEFAULT gen_random_uuid(),
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id(),
    created_at  timestamptz NOT NULL DEFAULT clock_timestamp(),
    sent_at     timestamptz,
    -- A message Redis refused (a key of another type, say): set aside, with why, so that it
    -- neither blocks the others nor makes them be sent again round after round.
    failed_at   timestamptz,
    error       text
);
CREATE INDEX outbox_unsent ON outbox (id) WHERE sent_at IS NULL AND failed_at IS NULL;
CREATE INDEX outbox_sent ON outbox (sent_at) WHERE sent_at IS NOT NULL;
ALTER TABLE outbox ENABLE ROW LEVEL SECURITY;
ALTER TABLE outbox FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON outbox
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
-- The relay runs as the owner (every tenant's messages), with or without BYPASSRLS; only in a
-- session that names no tenant, so that where one role does everything a tenant's view still
-- sees and writes only its own rows.
CREATE POLICY owner_relays_all ON outbox TO CURRENT_USER
    USING (coalesce(current_setting('agency_data.tenant', true), '') = '')
    WITH CHECK (coalesce(current_setting('agency_data.tenant', true), '') = '');
