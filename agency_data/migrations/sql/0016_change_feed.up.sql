-- Commit order, for the outbox and the change feed.
--
-- A transaction that writes an outbox message or a captured change gets, as it commits, the
-- next number of one sequence (commit_order.seq), taken under an advisory lock that is held
-- until the commit has become visible. So commits become visible to readers in seq order:
-- whoever reads commit_order sees every commit below the highest seq it sees, and a cursor
-- (a seq) never passes over a transaction that commits later. Row ids and xids do not give
-- this order (an xid is taken at a transaction's first write, not at its commit), which is why
-- 0015's relay could send a row's later change first.
--
-- The price: transactions that publish or change a captured table commit one at a time (their
-- WAL flushes no longer share one fsync). Other transactions are not affected.
CREATE SEQUENCE commit_order_seq;
CREATE TABLE commit_order (
    seq          bigint PRIMARY KEY,
    xid          xid8 NOT NULL UNIQUE,
    committed_at timestamptz NOT NULL DEFAULT clock_timestamp()
);
-- The pruner's question: the last commit older than changes.keep.
CREATE INDEX commit_order_committed_at ON commit_order (committed_at);

-- Fired, deferred, by each outbox or changes row at commit; does its work once per transaction.
CREATE FUNCTION agency_data_order_commit() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    me text := pg_current_xact_id()::text;
    flag text := 'agency_data.ordered_' || TG_TABLE_NAME;
BEGIN
    IF current_setting(flag, true) IS NOT DISTINCT FROM me THEN
        RETURN NULL;
    END IF;
    PERFORM set_config(flag, me, true);
    -- Relays (agency_data_outbox) or change-feed readers (agency_data_changes) of every
    -- process wake at once: sent only on commit, once per channel and transaction.
    PERFORM pg_notify('agency_data_' || TG_TABLE_NAME, '');
    IF current_setting('agency_data.ordered', true) IS NOT DISTINCT FROM me THEN
        RETURN NULL;  -- numbered already (the transaction wrote to both tables)
    END IF;
    PERFORM set_config('agency_data.ordered', me, true);
    -- 0x61676F63: the commit-order lock (no other part of the layer takes it).
    PERFORM pg_advisory_xact_lock(1634168675);
    INSERT INTO commit_order (seq, xid) VALUES (nextval('commit_order_seq'), me::xid8);
    RETURN NULL;
END
$$;

CREATE CONSTRAINT TRIGGER outbox_commit_order AFTER INSERT ON outbox
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION agency_data_order_commit();
-- The relay walks commits in order and finds each one's unsent messages by xid.
CREATE INDEX outbox_unsent_xid ON outbox (xid) WHERE sent_at IS NULL AND failed_at IS NULL;
DROP INDEX outbox_unsent;

-- Where the relays have got to: every outbox message of a commit below seq is sent (or set
-- aside). One row, written by whichever relay holds the relay lock.
CREATE TABLE outbox_relay (
    one boolean PRIMARY KEY DEFAULT true CONSTRAINT outbox_relay_one CHECK (one),
    seq bigint NOT NULL DEFAULT 0
);
INSERT INTO outbox_relay DEFAULT VALUES;
-- What 0015 left unsent is ordered by id, as its relay would have sent it.
INSERT INTO commit_order (seq, xid)
    SELECT nextval('commit_order_seq'), xid FROM outbox
    WHERE sent_at IS NULL AND failed_at IS NULL
    GROUP BY xid ORDER BY min(id);

-- The change feed: one row per insert, update or delete of a captured table (dl.changes.track),
-- written by the change's own transaction, read in commit order (commit_order) by cursor.
CREATE TABLE changes (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id   text NOT NULL,
    table_name  text NOT NULL,
    -- truncate: every row of the table in the tenant is gone (row_id is empty).
    op          text NOT NULL
                CONSTRAINT changes_op_valid CHECK (op IN ('insert', 'update', 'delete', 'truncate')),
    row_id      text NOT NULL,
    -- The captured columns' values before and after (null for an insert's old, a delete's new).
    old         jsonb,
    new         jsonb,
    xid         xid8 NOT NULL DEFAULT pg_current_xact_id()
);
-- A reader takes each commit's changes in id order, a page at a time.
CREATE INDEX changes_xid ON changes (xid, id);
ALTER TABLE changes ENABLE ROW LEVEL SECURITY;
ALTER TABLE changes FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON changes
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
-- The capture trigger and the pruner run as the owner, for every tenant, in sessions that name
-- no tenant (see 0015's owner_relays_all).
CREATE POLICY owner_captures_all ON changes TO CURRENT_USER
    USING (coalesce(current_setting('agency_data.tenant', true), '') = '')
    WITH CHECK (coalesce(current_setting('agency_data.tenant', true), '') = '');
CREATE CONSTRAINT TRIGGER changes_commit_order AFTER INSERT ON changes
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION agency_data_order_commit();

-- How far the pruner has deleted: the changes of every commit up to pruned_seq are gone, so a
-- cursor below it has missed some (ChangesLost).
CREATE TABLE change_feed (
    one        boolean PRIMARY KEY DEFAULT true CONSTRAINT change_feed_one CHECK (one),
    pruned_seq bigint NOT NULL DEFAULT 0
);
INSERT INTO change_feed DEFAULT VALUES;

-- Named consumers' cursors: the feed keeps what they have not read, up to changes.max_rows.
CREATE TABLE change_consumers (
    tenant_id  text NOT NULL DEFAULT 'default'
               CONSTRAINT change_consumers_tenant_id_valid
               CHECK (tenant_id ~ '^[A-Za-z0-9_.:-]{1,64}$'),
    name       text NOT NULL
               CONSTRAINT change_consumers_name_valid CHECK (name ~ '^[A-Za-z0-9_.:-]{1,128}$'),
    seq        bigint NOT NULL,
    change_id  bigint NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT clock_timestamp(),
    -- Set when the feed's cap pruned changes this consumer had not read.
    lost_at    timestamptz,
    PRIMARY KEY (tenant_id, name)
);
ALTER TABLE change_consumers ENABLE ROW LEVEL SECURITY;
ALTER TABLE change_consumers FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON change_consumers
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
CREATE POLICY owner_prunes_all ON change_consumers TO CURRENT_USER
    USING (coalesce(current_setting('agency_data.tenant', true), '') = '')
    WITH CHECK (coalesce(current_setting('agency_data.tenant', true), '') = '');

-- The capture trigger (one per captured table, installed by dl.changes.track): TG_ARGV[0] is
-- the table's key column, the rest the columns left out of the feed's values (so that each
-- value is one expression, with no query: the trigger runs on every write of the table). An
-- update that changes none of the columns kept is not a change of the feed.
CREATE FUNCTION agency_data_capture_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    whole jsonb;
    before jsonb;
    after jsonb;
BEGIN
    IF TG_OP <> 'INSERT' THEN
        whole := to_jsonb(OLD);
        before := whole - TG_ARGV[1:];
    END IF;
    IF TG_OP <> 'DELETE' THEN
        whole := to_jsonb(NEW);
        after := whole - TG_ARGV[1:];
    END IF;
    IF TG_OP = 'UPDATE' AND before = after THEN
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND OLD.tenant_id IS DISTINCT FROM NEW.tenant_id THEN
        -- A row moved to another tenant: it leaves the old tenant's feed and enters the new.
        INSERT INTO changes (tenant_id, table_name, op, row_id, old, new)
            VALUES (OLD.tenant_id, TG_TABLE_NAME, 'delete', to_jsonb(OLD) ->> TG_ARGV[0],
                    before, NULL),
                   (NEW.tenant_id, TG_TABLE_NAME, 'insert', whole ->> TG_ARGV[0], NULL, after);
        RETURN NULL;
    END IF;
    INSERT INTO changes (tenant_id, table_name, op, row_id, old, new)
        VALUES (whole ->> 'tenant_id', TG_TABLE_NAME, lower(TG_OP), whole ->> TG_ARGV[0],
                before, after);
    RETURN NULL;
END
$$;

-- TRUNCATE fires no row trigger: one 'truncate' change for each tenant with rows in the table,
-- written before they go (installed with the capture trigger).
CREATE FUNCTION agency_data_capture_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    EXECUTE format(
        'INSERT INTO changes (tenant_id, table_name, op, row_id) '
        'SELECT DISTINCT tenant_id, %L, %L, %L FROM %I.%I',
        TG_TABLE_NAME, 'truncate', '', TG_TABLE_SCHEMA, TG_TABLE_NAME);
    RETURN NULL;
END
$$;
