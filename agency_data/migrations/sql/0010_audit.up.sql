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

-- How long each tenant's chain is: the lock on this row orders a tenant's records.
CREATE TABLE audit_heads (
    tenant_id text PRIMARY KEY,
    seq bigint NOT NULL
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

-- What a record's hash covers, in a fixed text form: every field (time in microseconds since
-- the epoch: no setting of the session changes it).
CREATE FUNCTION agency_data_audit_fields(
    tenant_id text, seq bigint, at timestamptz, actor text, operation text,
    entity_type text, entity_id text, detail jsonb
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(concat_ws(E'\x1f',
        tenant_id, seq::text, (extract(epoch FROM at) * 1000000)::bigint::text,
        actor, operation, entity_type, coalesce(entity_id, ''), detail::text
    ), 'UTF8')
$$;

-- A record's hash: SHA-256 of the previous record's hash followed by the record's fields.
CREATE FUNCTION agency_data_audit_hash(prev bytea, r audit_log) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(prev || agency_data_audit_fields(
        r.tenant_id, r.seq, r.at, r.actor, r.operation, r.entity_type, r.entity_id, r.detail))
$$;

-- Add records to tenants' chains, one per element of the arrays: for each tenant (in order,
-- so that two transactions lock heads in the same order and never wait on each other), take
-- the next numbers by one update of its head (made on first use), then link the records'
-- hashes (the one step that must go record by record) and insert them in one statement.
CREATE FUNCTION agency_data_audit_chain(
    tenant_ids text[], operations text[], entity_types text[], entity_ids text[],
    details jsonb[]
) RETURNS bigint
LANGUAGE plpgsql AS $$
DECLARE
    who text := coalesce(nullif(current_setting('agency_data.actor', true), ''), current_user);
    stamp timestamptz := clock_timestamp();
    tenant text;
    items bigint[];
    first bigint;
    link bytea;
    prevs bytea[];
    hashes bytea[];
    i bigint;
BEGIN
    FOR tenant, items IN
        -- One tenant, the usual case, without a sort.
        SELECT tenant_ids[1], NULL::bigint[] WHERE tenant_ids[1] = ALL(tenant_ids)
        UNION ALL
        SELECT t, array_agg(o ORDER BY o) FROM unnest(tenant_ids) WITH ORDINALITY AS u(t, o)
        WHERE NOT tenant_ids[1] = ALL(tenant_ids)
        GROUP BY t
        ORDER BY 1
    LOOP
        IF items IS NULL THEN
            items := ARRAY(SELECT generate_series(1, cardinality(tenant_ids)));
        END IF;
        INSERT INTO audit_heads AS h (tenant_id, seq)
        VALUES (tenant, cardinality(items))
        ON CONFLICT (tenant_id) DO UPDATE SET seq = h.seq + cardinality(items)
        RETURNING h.seq - cardinality(items) INTO first;
        link := coalesce(
            (SELECT a.hash FROM audit_log a WHERE a.tenant_id = tenant AND a.seq = first),
            '\x'::bytea);
        prevs := '{}';
        hashes := '{}';
        FOR k IN 1..cardinality(items) LOOP
            i := items[k];
            prevs[k] := link;
            link := sha256(link || agency_data_audit_fields(
                tenant, first + k, stamp, who, operations[i], entity_types[i], entity_ids[i],
                details[i]));
            hashes[k] := link;
        END LOOP;
        INSERT INTO audit_log
            (tenant_id, seq, at, actor, operation, entity_type, entity_id, detail, prev_hash, hash)
        SELECT tenant, first + x.k, stamp, who, operations[x.item], entity_types[x.item],
               entity_ids[x.item], details[x.item], prevs[x.k], hashes[x.k]
        FROM unnest(items) WITH ORDINALITY AS x(item, k);
    END LOOP;
    RETURN cardinality(tenant_ids);
END
$$;

-- Add one record to a tenant's chain from the application (admin and migration actions,
-- writes to Redis, reads, erasures), in the caller's transaction.
CREATE FUNCTION agency_data_audit_append(
    tenant text, operation text, entity_type text, entity_id text, detail jsonb
) RETURNS void
LANGUAGE sql AS $$
    SELECT agency_data_audit_chain(
        ARRAY[tenant], ARRAY[operation], ARRAY[entity_type], ARRAY[entity_id],
        ARRAY[coalesce(detail, '{}'::jsonb)])
$$;

-- The statement-level trigger of an audited table: one record per changed row, keeping what
-- TG_ARGV[0] says of the row before and after:
--   digest: SHA-256 of each version's binary form (record_send), none of its values;
--   fields: the digests and the names of the columns an update changed;
--   values: both versions in full, for tables whose history must be read back.
-- The queries are written out per operation (not built and EXECUTEd) so that their plans are
-- kept between calls.
CREATE FUNCTION agency_data_audit_rows() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    kept text := TG_ARGV[0];
    c record;
BEGIN
    IF TG_OP = 'INSERT' THEN
        SELECT array_agg(n.tenant_id ORDER BY n.tenant_id, n.id) AS tenants,
               array_agg(n.id::text ORDER BY n.tenant_id, n.id) AS ids,
               array_agg(CASE kept
                   WHEN 'values' THEN jsonb_build_object('after', to_jsonb(n))
                   ELSE jsonb_build_object('after', encode(sha256(record_send(n)), 'hex'))
               END ORDER BY n.tenant_id, n.id) AS details
        INTO c FROM new_rows n;
    ELSIF TG_OP = 'DELETE' THEN
        SELECT array_agg(o.tenant_id ORDER BY o.tenant_id, o.id) AS tenants,
               array_agg(o.id::text ORDER BY o.tenant_id, o.id) AS ids,
               array_agg(CASE kept
                   WHEN 'values' THEN jsonb_build_object('before', to_jsonb(o))
                   ELSE jsonb_build_object('before', encode(sha256(record_send(o)), 'hex'))
               END ORDER BY o.tenant_id, o.id) AS details
        INTO c FROM old_rows o;
    ELSE
        SELECT array_agg(n.tenant_id ORDER BY n.tenant_id, n.id) AS tenants,
               array_agg(n.id::text ORDER BY n.tenant_id, n.id) AS ids,
               array_agg(CASE kept
                   WHEN 'values' THEN jsonb_build_object(
                       'before', to_jsonb(o), 'after', to_jsonb(n))
                   WHEN 'fields' THEN jsonb_build_object(
                       'changed', (SELECT jsonb_agg(a.key ORDER BY a.key)
                                   FROM jsonb_each(to_jsonb(n)) a
                                   JOIN jsonb_each(to_jsonb(o)) b USING (key)
                                   WHERE a.value IS DISTINCT FROM b.value),
                       'before', encode(sha256(record_send(o)), 'hex'),
                       'after', encode(sha256(record_send(n)), 'hex'))
                   ELSE jsonb_build_object(
                       'before', encode(sha256(record_send(o)), 'hex'),
                       'after', encode(sha256(record_send(n)), 'hex'))
               END ORDER BY n.tenant_id, n.id) AS details
        INTO c FROM new_rows n JOIN old_rows o ON o.id = n.id;
    END IF;
    IF c.tenants IS NOT NULL THEN
        PERFORM agency_data_audit_chain(
            c.tenants, array_fill(lower(TG_OP), ARRAY[cardinality(c.tenants)]),
            array_fill(TG_TABLE_NAME::text, ARRAY[cardinality(c.tenants)]), c.ids, c.details);
    END IF;
    RETURN NULL;
END
$$;

-- Switch auditing of a table (with tenant_id and id columns) on or off; detail is what a
-- record keeps of the row: 'digest', 'fields' (and the changed columns' names) or 'values'.
-- True if anything changed.
CREATE FUNCTION agency_data_audit(
    target regclass, enabled boolean, detail text DEFAULT 'digest'
) RETURNS boolean
LANGUAGE plpgsql AS $$
DECLARE
    event text;
    present text;
    changed boolean := false;
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
        changed := true;
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
    RETURN changed;
END
$$;
