-- The audit trail: a record of every change to an audited table, written by the change's own
-- transaction (a rollback leaves none), chained per tenant by SHA-256 (each record carries the
-- hash of the one before it), so that editing, removing or reordering a record breaks the
-- chain at that record. Auditing a table is switched on by agency_data_audit(table, true).

CREATE TABLE audit_log (
    tenant_id text NOT NULL,
    seq bigint NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    operation text NOT NULL,
    entity_type text NOT NULL,
    entity_id text,
    detail jsonb NOT NULL DEFAULT '{}',
    prev_hash bytea NOT NULL,
    hash bytea NOT NULL,
    PRIMARY KEY (tenant_id, seq)
);
CREATE INDEX audit_log_entity ON audit_log (tenant_id, entity_type, entity_id);
CREATE INDEX audit_log_at ON audit_log (tenant_id, at);

-- Where each tenant's chain ends: the lock on this row orders a tenant's records.
CREATE TABLE audit_heads (
    tenant_id text PRIMARY KEY,
    seq bigint NOT NULL,
    hash bytea NOT NULL
);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_heads
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());

-- Records are only ever added: no role but the owner may change or remove one (the default
-- privileges gave the application role all four), and the owner's edits break the chain.
DO $$
DECLARE
    grantee text;
BEGIN
    FOR grantee IN
        SELECT DISTINCT g.grantee FROM information_schema.role_table_grants g
        WHERE g.table_name = 'audit_log' AND g.table_schema = 'public'
          AND g.privilege_type IN ('UPDATE', 'DELETE', 'TRUNCATE')
          AND g.grantee <> (SELECT tableowner FROM pg_tables
                            WHERE schemaname = 'public' AND tablename = 'audit_log')
    LOOP
        EXECUTE format('REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM %I', grantee);
    END LOOP;
END
$$;
REVOKE DELETE, TRUNCATE ON audit_heads FROM PUBLIC;

-- A record's hash: the previous hash, then every field in a fixed text form (time in
-- microseconds since the epoch: no setting of the session changes it).
CREATE FUNCTION agency_data_audit_hash(prev bytea, r audit_log) RETURNS bytea
LANGUAGE sql IMMUTABLE PARALLEL SAFE AS $$
    SELECT sha256(prev || convert_to(concat_ws(E'\x1f',
        r.tenant_id, r.seq::text, (extract(epoch FROM r.at) * 1000000)::bigint::text,
        r.actor, r.operation, r.entity_type, coalesce(r.entity_id, ''), r.detail::text
    ), 'UTF8'))
$$;

-- The statement-level trigger of an audited table: one record per changed row, with digests
-- of the row before and after (never the values themselves).
CREATE FUNCTION agency_data_audit_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    change record;
    head audit_heads;
    entry audit_log;
    who text := coalesce(nullif(current_setting('agency_data.actor', true), ''), current_user);
BEGIN
    -- A tenant's rows together, in a fixed order: heads are locked in the same order by
    -- every transaction, so two of them never wait on each other.
    FOR change IN EXECUTE CASE TG_OP
        WHEN 'INSERT' THEN
            'SELECT n.tenant_id, n.id::text AS id, NULL::jsonb AS before, to_jsonb(n) AS after '
            'FROM new_rows n ORDER BY 1, 2'
        WHEN 'DELETE' THEN
            'SELECT o.tenant_id, o.id::text AS id, to_jsonb(o) AS before, NULL::jsonb AS after '
            'FROM old_rows o ORDER BY 1, 2'
        ELSE
            'SELECT n.tenant_id, n.id::text AS id, to_jsonb(o) AS before, to_jsonb(n) AS after '
            'FROM new_rows n JOIN old_rows o ON o.id = n.id ORDER BY 1, 2'
        END
    LOOP
        IF head.tenant_id IS DISTINCT FROM change.tenant_id THEN
            IF head.tenant_id IS NOT NULL THEN
                UPDATE audit_heads SET seq = head.seq, hash = head.hash
                WHERE tenant_id = head.tenant_id;
            END IF;
            -- Made, or locked and read, in one statement.
            INSERT INTO audit_heads AS h (tenant_id, seq, hash)
            VALUES (change.tenant_id, 0, '\x'::bytea)
            ON CONFLICT (tenant_id) DO UPDATE SET seq = h.seq
            RETURNING h.* INTO head;
        END IF;
        entry.tenant_id := change.tenant_id;
        entry.seq := head.seq + 1;
        entry.at := clock_timestamp();
        entry.actor := who;
        entry.operation := lower(TG_OP);
        entry.entity_type := TG_TABLE_NAME;
        entry.entity_id := change.id;
        entry.detail := CASE TG_ARGV[0]
            -- The row's values before and after: for tables whose history must be read back.
            WHEN 'values' THEN jsonb_strip_nulls(jsonb_build_object(
                'before', change.before, 'after', change.after))
            -- The names of the columns that changed, and digests.
            WHEN 'fields' THEN jsonb_strip_nulls(jsonb_build_object(
                'changed', (SELECT jsonb_agg(key ORDER BY key) FROM (
                    SELECT key FROM jsonb_each(coalesce(change.after, '{}'))
                    FULL JOIN jsonb_each(coalesce(change.before, '{}')) b USING (key)
                    WHERE jsonb_each.value IS DISTINCT FROM b.value) k),
                'before', encode(sha256(convert_to(change.before::text, 'UTF8')), 'hex'),
                'after', encode(sha256(convert_to(change.after::text, 'UTF8')), 'hex')))
            -- Digests only: proof of what the row was, and none of its values.
            ELSE jsonb_strip_nulls(jsonb_build_object(
                'before', encode(sha256(convert_to(change.before::text, 'UTF8')), 'hex'),
                'after', encode(sha256(convert_to(change.after::text, 'UTF8')), 'hex')))
        END;
        entry.prev_hash := head.hash;
        entry.hash := agency_data_audit_hash(head.hash, entry);
        INSERT INTO audit_log VALUES (entry.*);
        head.seq := entry.seq;
        head.hash := entry.hash;
    END LOOP;
    IF head.tenant_id IS NOT NULL THEN
        UPDATE audit_heads SET seq = head.seq, hash = head.hash WHERE tenant_id = head.tenant_id;
    END IF;
    RETURN NULL;
END
$$;

-- Switch auditing of a table (with tenant_id and id columns) on or off; detail is what a
-- record keeps of the row: 'digest', 'fields' (and the changed columns' names) or 'values'.
CREATE FUNCTION agency_data_audit(
    target regclass, enabled boolean, detail text DEFAULT 'digest'
) RETURNS void
LANGUAGE plpgsql AS $$
DECLARE
    event text;
    present text;
BEGIN
    IF detail NOT IN ('digest', 'fields', 'values') THEN
        RAISE EXCEPTION 'audit detail must be digest, fields or values, not %', detail
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH event IN ARRAY ARRAY['insert', 'update', 'delete'] LOOP
        -- Nothing to do, no lock taken, when the table is already as asked: every process
        -- that starts with audit.tables asks again.
        present := (
            SELECT pg_get_triggerdef(oid) FROM pg_trigger
            WHERE tgrelid = target AND tgname = 'agency_data_audit_' || event
        );
        CONTINUE WHEN (NOT enabled AND present IS NULL)
            OR (enabled AND present LIKE '%agency_data_audit_rows(' || quote_literal(detail) || ')%');
        EXECUTE format('DROP TRIGGER IF EXISTS agency_data_audit_%s ON %s', event, target);
        IF enabled THEN
            EXECUTE format(
                'CREATE TRIGGER agency_data_audit_%s AFTER %s ON %s REFERENCING %s '
                'FOR EACH STATEMENT EXECUTE FUNCTION agency_data_audit_rows(%L)',
                event, upper(event), target,
                CASE event
                    WHEN 'insert' THEN 'NEW TABLE AS new_rows'
                    WHEN 'delete' THEN 'OLD TABLE AS old_rows'
                    ELSE 'OLD TABLE AS old_rows NEW TABLE AS new_rows'
                END,
                detail
            );
        END IF;
    END LOOP;
END
$$;
