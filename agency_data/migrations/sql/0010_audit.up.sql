-- The audit trail. A change to an audited table adds a record to audit_pending in the
-- change's own transaction (a rollback leaves none); the sealer (agency_data_audit_seal, run by
-- every DataLayer in the background and before each verify or show) then numbers the
-- committed records of each tenant and chains them into audit_log by SHA-256, each carrying the
-- hash of the one before it, so that editing, removing or reordering a sealed record breaks the
-- chain at that record. Writers never wait on the chain: they only insert, so auditing adds no
-- lock that two transactions could take in opposite orders.
--
-- The application role can neither write these tables nor call the sealer's internals: records
-- come only from the triggers and from agency_data_audit_append, which run as the owner (SECURITY
-- DEFINER) and let the application record only its own tenant's reads and session writes.

CREATE TABLE audit_pending (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    tenant_id text NOT NULL,
    at timestamptz NOT NULL DEFAULT clock_timestamp(),
    actor text NOT NULL,
    operation text NOT NULL,
    entity_type text NOT NULL,
    entity_id text,
    detail jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX audit_pending_tenant ON audit_pending (tenant_id, id);

CREATE TABLE audit_log (
    tenant_id text NOT NULL,
    seq bigint NOT NULL,
    at timestamptz NOT NULL,
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

-- How long each tenant's chain is; its row lock orders the sealers of one tenant. Records up
-- to pruned_seq were removed by retention (agency_data_audit_prune): the chain then starts
-- after them, from the hash of the last one removed.
CREATE TABLE audit_heads (
    tenant_id text PRIMARY KEY,
    seq bigint NOT NULL,
    pruned_seq bigint NOT NULL DEFAULT 0,
    pruned_hash bytea NOT NULL DEFAULT '\x'
);

-- Each tenant sees only its own records. The owner (who runs migrations, the sealer and every
-- chain's check) reads and seals every tenant's: an owner role that bypasses row-level security
-- needs no policy for it; one that does not (a single role for everything) needs owner_reads_all.
ALTER TABLE audit_pending ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_pending FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_pending
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
CREATE POLICY owner_reads_all ON audit_pending TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE audit_log ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_log FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_log
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
CREATE POLICY owner_reads_all ON audit_log TO CURRENT_USER USING (true) WITH CHECK (true);

ALTER TABLE audit_heads ENABLE ROW LEVEL SECURITY;
ALTER TABLE audit_heads FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON audit_heads
    USING (tenant_id = agency_data_current_tenant())
    WITH CHECK (tenant_id = agency_data_current_tenant());
CREATE POLICY owner_reads_all ON audit_heads TO CURRENT_USER USING (true) WITH CHECK (true);

-- Read-only to every role but the owner (the default privileges gave the application role all
-- four): records are added through the functions below, which run as the owner.
DO $$
DECLARE
    grant_row record;
BEGIN
    FOR grant_row IN
        SELECT DISTINCT g.grantee, g.table_name FROM information_schema.role_table_grants g
        WHERE g.table_name IN ('audit_pending', 'audit_log', 'audit_heads')
          AND g.table_schema = 'public'
          AND g.privilege_type IN ('INSERT', 'UPDATE', 'DELETE', 'TRUNCATE')
          AND g.grantee <> (SELECT tableowner FROM pg_tables
                            WHERE schemaname = 'public' AND tablename = g.table_name)
    LOOP
        EXECUTE format('REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON %I FROM %I',
                       grant_row.table_name, grant_row.grantee);
    END LOOP;
END
$$;

-- What a record's hash covers: every field, as a JSON array (unambiguous: strings quoted and
-- escaped, a null apart from an empty string), the time in microseconds since the epoch (no
-- setting of the session changes it), after a format tag.
CREATE FUNCTION agency_data_audit_fields(
    tenant_id text, seq bigint, at timestamptz, actor text, operation text,
    entity_type text, entity_id text, detail jsonb
) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT convert_to(jsonb_build_array(
        'agency-data audit v1', tenant_id, seq, (extract(epoch FROM at) * 1000000)::bigint,
        actor, operation, entity_type, entity_id, detail
    )::text, 'UTF8')
$$;

-- A record's hash: SHA-256 of the previous record's hash followed by the record's fields.
CREATE FUNCTION agency_data_audit_hash(prev bytea, r audit_log) RETURNS bytea
LANGUAGE sql STABLE PARALLEL SAFE AS $$
    SELECT sha256(prev || agency_data_audit_fields(
        r.tenant_id, r.seq, r.at, r.actor, r.operation, r.entity_type, r.entity_id, r.detail))
$$;

-- Who a record names when the caller named nobody: the role that logged in.
CREATE FUNCTION agency_data_audit_actor() RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT coalesce(nullif(current_setting('agency_data.actor', true), ''), session_user)
$$;

-- Chain the committed, not yet sealed records: for each tenant (only the one named, if any),
-- take its head's lock (skipping a tenant another sealer holds), number its records in the
-- order they were added, link their hashes and move them into audit_log. Returns how many
-- records were sealed.
CREATE FUNCTION agency_data_audit_seal(only_tenant text DEFAULT NULL, most integer DEFAULT 10000)
RETURNS bigint
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    tenant text;
    length bigint;
    link bytea;
    ids bigint[];
    fields bytea[];
    covered bytea;
    prevs bytea[];
    hashes bytea[];
    k integer;
    sealed bigint := 0;
BEGIN
    FOR tenant IN
        SELECT DISTINCT p.tenant_id FROM audit_pending p
        WHERE only_tenant IS NULL OR p.tenant_id = only_tenant
        ORDER BY 1
    LOOP
        INSERT INTO audit_heads (tenant_id, seq) VALUES (tenant, 0)
        ON CONFLICT (tenant_id) DO NOTHING;
        SELECT h.seq INTO length FROM audit_heads h WHERE h.tenant_id = tenant
        FOR UPDATE SKIP LOCKED;
        CONTINUE WHEN NOT FOUND;  -- another sealer is at it
        link := coalesce(
            (SELECT a.hash FROM audit_log a WHERE a.tenant_id = tenant AND a.seq = length),
            '\x'::bytea);
        -- What each record's hash covers, in one query; only the links go one by one.
        SELECT array_agg(p.id ORDER BY p.id),
               array_agg(agency_data_audit_fields(
                   tenant, length + p.n, p.at, p.actor, p.operation, p.entity_type,
                   p.entity_id, p.detail) ORDER BY p.id)
        INTO ids, fields
        FROM (
            SELECT q.*, row_number() OVER (ORDER BY q.id) AS n
            FROM (SELECT * FROM audit_pending q WHERE q.tenant_id = tenant
                  ORDER BY q.id LIMIT most) q
        ) p;
        k := coalesce(cardinality(ids), 0);
        CONTINUE WHEN k = 0;
        prevs := '{}';
        hashes := '{}';
        -- FOREACH walks the array once (fields[i] would scan it from the start each time).
        FOREACH covered IN ARRAY fields LOOP
            prevs := prevs || link;
            link := sha256(link || covered);
            hashes := hashes || link;
        END LOOP;
        INSERT INTO audit_log
            (tenant_id, seq, at, actor, operation, entity_type, entity_id, detail, prev_hash, hash)
        SELECT p.tenant_id, length + x.k, p.at, p.actor, p.operation, p.entity_type,
               p.entity_id, p.detail, x.prev, x.hash
        -- Unnested side by side: subscripting these arrays row by row would be quadratic.
        FROM unnest(ids, prevs, hashes) WITH ORDINALITY AS x(pending, prev, hash, k)
        JOIN audit_pending p ON p.id = x.pending;
        DELETE FROM audit_pending p WHERE p.id = ANY(ids);
        UPDATE audit_heads h SET seq = length + k WHERE h.tenant_id = tenant;
        sealed := sealed + k;
    END LOOP;
    RETURN sealed;
END
$$;

-- Add one record from the application, in the caller's transaction: the owner may record
-- anything (admin and migration actions, in the system trail); any other role only its own
-- tenant's reads and session writes.
CREATE FUNCTION agency_data_audit_append(
    tenant text, operation text, entity_type text, entity_id text, detail jsonb
) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    -- Inside this function current_user is the owner; session_user is who called.
    IF NOT pg_has_role(session_user, current_user, 'MEMBER') AND (
        tenant IS DISTINCT FROM agency_data_current_tenant()
        OR NOT (operation = 'read' OR operation LIKE 'session.%')
    ) THEN
        RAISE EXCEPTION 'the application may record only its own tenant''s reads and session '
            'writes, not % of tenant %', operation, tenant
            USING ERRCODE = 'insufficient_privilege';
    END IF;
    INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, detail)
    VALUES (tenant, agency_data_audit_actor(), operation, entity_type, entity_id,
            coalesce(detail, '{}'::jsonb));
END
$$;

-- The statement-level triggers of an audited table (with tenant_id and id columns): one record
-- per changed row, keeping what TG_ARGV[0] says of the row before and after:
--   digest: SHA-256 of each version's binary form (record_send), none of its values;
--   fields: the digests and the names of the columns an update changed;
--   values: both versions in full, for tables whose history must be read back.
-- An update that changes a row's id is recorded as the old row's delete and the new one's
-- insert. The queries are written out per operation (not built and EXECUTEd) so that their
-- plans are kept between calls.
CREATE FUNCTION agency_data_audit_rows() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    kept text := TG_ARGV[0];
    who text := agency_data_audit_actor();
BEGIN
    IF TG_OP = 'INSERT' THEN
        INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, detail)
        SELECT n.tenant_id, who, 'insert', TG_TABLE_NAME, n.id::text,
               CASE kept
                   WHEN 'values' THEN jsonb_build_object('after', to_jsonb(n))
                   ELSE jsonb_build_object('after', encode(sha256(record_send(n)), 'hex'))
               END
        FROM new_rows n ORDER BY n.tenant_id, n.id;
    ELSIF TG_OP = 'DELETE' THEN
        INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, detail)
        SELECT o.tenant_id, who, 'delete', TG_TABLE_NAME, o.id::text,
               CASE kept
                   WHEN 'values' THEN jsonb_build_object('before', to_jsonb(o))
                   ELSE jsonb_build_object('before', encode(sha256(record_send(o)), 'hex'))
               END
        FROM old_rows o ORDER BY o.tenant_id, o.id;
    ELSE
        INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, detail)
        SELECT coalesce(n.tenant_id, o.tenant_id), who,
               CASE WHEN o.id IS NULL THEN 'insert' WHEN n.id IS NULL THEN 'delete'
                    ELSE 'update' END,
               TG_TABLE_NAME, coalesce(n.id, o.id)::text,
               jsonb_strip_nulls(CASE kept
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
               END)
        FROM new_rows n FULL JOIN old_rows o ON o.id = n.id
        ORDER BY 1, 5;
    END IF;
    RETURN NULL;
END
$$;

-- TRUNCATE empties a table for every tenant at once (only the owner may): recorded in the
-- system trail.
CREATE FUNCTION agency_data_audit_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
BEGIN
    INSERT INTO audit_pending (tenant_id, actor, operation, entity_type, entity_id, detail)
    VALUES ('(system)', agency_data_audit_actor(), 'truncate', TG_TABLE_NAME, NULL, '{}');
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
    IF enabled AND (
        SELECT count(*) FROM pg_attribute
        WHERE attrelid = target AND attname IN ('tenant_id', 'id') AND NOT attisdropped
    ) < 2 THEN
        RAISE EXCEPTION 'cannot audit %: its rows need a tenant_id and an id column', target
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOREACH event IN ARRAY ARRAY['insert', 'update', 'delete', 'truncate'] LOOP
        -- Nothing to do, no lock taken, when the table is already as asked: every process
        -- that starts with audit.tables asks again.
        present := (
            SELECT pg_get_triggerdef(oid) FROM pg_trigger
            WHERE tgrelid = target AND tgname = 'agency_data_audit_' || event
        );
        CONTINUE WHEN (NOT enabled AND present IS NULL)
            OR (enabled AND event = 'truncate' AND present IS NOT NULL)
            OR (enabled AND present LIKE '%agency_data_audit_rows(' || quote_literal(detail) || ')%');
        changed := true;
        EXECUTE format('DROP TRIGGER IF EXISTS agency_data_audit_%s ON %s', event, target);
        IF enabled AND event = 'truncate' THEN
            EXECUTE format(
                'CREATE TRIGGER agency_data_audit_truncate AFTER TRUNCATE ON %s '
                'FOR EACH STATEMENT EXECUTE FUNCTION agency_data_audit_truncate()', target);
        ELSIF enabled THEN
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

-- Retention: remove a tenant's oldest records made before a time (at most ``most``, from the
-- start of its chain), keeping the last one's hash in its head so the rest still verifies.
-- Returns the records removed, as JSON, for the caller to archive first (in its transaction).
CREATE FUNCTION agency_data_audit_prune(tenant text, made_before timestamptz, most integer)
RETURNS SETOF jsonb
LANGUAGE plpgsql SECURITY DEFINER SET search_path = public, pg_temp AS $$
DECLARE
    last audit_log;
BEGIN
    PERFORM 1 FROM audit_heads h WHERE h.tenant_id = tenant FOR UPDATE;
    SELECT * INTO last FROM (
        SELECT a.* FROM audit_log a WHERE a.tenant_id = tenant ORDER BY a.seq LIMIT most
    ) oldest WHERE oldest.at < made_before ORDER BY oldest.seq DESC LIMIT 1;
    IF last.seq IS NULL THEN
        RETURN;
    END IF;
    -- Only a run of records from the start: one made later than a removed one stays, and so
    -- does everything after it.
    SELECT * INTO last FROM audit_log a
    WHERE a.tenant_id = tenant AND a.seq <= last.seq
      AND NOT EXISTS (SELECT 1 FROM audit_log b WHERE b.tenant_id = tenant
                      AND b.seq <= a.seq AND b.at >= made_before)
    ORDER BY a.seq DESC LIMIT 1;
    IF last.seq IS NULL THEN
        RETURN;
    END IF;
    UPDATE audit_heads h SET pruned_seq = last.seq, pruned_hash = last.hash
    WHERE h.tenant_id = tenant;
    RETURN QUERY
        DELETE FROM audit_log a WHERE a.tenant_id = tenant AND a.seq <= last.seq
        RETURNING to_jsonb(a) - 'prev_hash' - 'hash'
            || jsonb_build_object('hash', encode(a.hash, 'hex'));
END
$$;
REVOKE EXECUTE ON FUNCTION agency_data_audit_prune(text, timestamptz, integer) FROM PUBLIC;

-- Only the owner switches auditing; the sealer and append check their callers themselves.
REVOKE EXECUTE ON FUNCTION agency_data_audit(regclass, boolean, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION agency_data_audit_rows() FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION agency_data_audit_truncate() FROM PUBLIC;
